//! TCP framing: the first bytes of the input choose chunk sizes, the rest
//! is the stream. Fed whole or in those chunks the decoder never panics,
//! never yields a message over the cap, and yields the same frames (and
//! the same error, if any) either way.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sipscreen::sip::framing::{Decoder, Frame, FramingError};

const CAP: usize = 2048;

/// Frames from `stream` fed in pieces of `cuts` sizes (cycled); stops at
/// the first error, as the transport closes the connection there.
fn frames(stream: &[u8], cuts: &[u8]) -> (Vec<Frame>, Option<FramingError>) {
    let mut d = Decoder::new(CAP);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let step = if cuts.is_empty() {
            stream.len()
        } else {
            usize::from(cuts[i % cuts.len()]).max(1)
        };
        i += 1;
        let end = (pos + step).min(stream.len());
        buf.extend_from_slice(&stream[pos..end]);
        pos = end;
        loop {
            match d.decode(&mut buf) {
                Ok(Some(f)) => {
                    if let Frame::Message(m) = &f {
                        assert!(m.len() <= CAP, "frame of {} bytes over the cap", m.len());
                    }
                    out.push(f);
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (cuts, stream) = rest.split_at(n);
    let whole = frames(stream, &[]);
    let split = frames(stream, cuts);
    let bytewise = frames(stream, &[1]);
    assert_eq!(whole, split, "chunking changed the frames");
    assert_eq!(whole, bytewise, "byte-by-byte changed the frames");
});
