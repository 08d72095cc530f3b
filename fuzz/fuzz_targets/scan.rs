//! Scanner + validator on arbitrary bytes: never panics; every accessor
//! works on whatever scanned; a valid message re-serialised through an
//! empty edit list is byte-identical (up to its end).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sipscreen::sip::{Edits, HeaderName, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::scan(Bytes::copy_from_slice(data)) else {
        return;
    };
    let _ = (
        m.method(),
        m.uri(),
        m.status(),
        m.top_via(),
        m.cseq(),
        m.max_forwards(),
        m.content_length(),
        m.call_id(),
    );
    for h in [
        HeaderName::From,
        HeaderName::To,
        HeaderName::PAssertedIdentity,
        HeaderName::Contact,
    ] {
        let _ = m.name_addr(h).map(|n| (n.tag(), n.parse_uri()));
    }
    assert!(m.header_end() <= m.end(), "header end past message end");
    assert!(m.end() <= data.len(), "message end past the buffer");
    if m.validate().is_err() {
        return;
    }
    let again = Edits::new().apply(m.buf(), m.end());
    assert_eq!(&again[..], &data[..m.end()], "no edits must mean same bytes");
    let re = Message::scan(again).expect("the copy scans");
    assert!(re.validate().is_ok(), "the copy validates");
    assert_eq!(re.headers().len(), m.headers().len());
});
