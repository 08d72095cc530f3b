//! Fuzz-style properties: arbitrary bytes, and valid messages with random
//! bytes flipped, cut or duplicated, go through the scanner, the validator
//! and the whole routing decision without panicking; whatever is
//! forwarded scans again and keeps the original message end.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use sipscreen::config::{self, TransportKind};
use sipscreen::proxy::Local;
use sipscreen::proxy::request::{self, Outcome};
use sipscreen::runtime::{Runtime, Side};
use sipscreen::screening::exceptions::ExceptionSet;
use sipscreen::sip::{HeaderName, Message};

const CONFIG: &str = r#"
[pbx]
target = "127.0.0.1:5080"
sources = ["127.0.0.1/32"]
[[trunk]]
name = "carrier"
target = "127.0.0.2:5070"
sources = ["127.0.0.2/32"]
trust_pai = true
"#;

const INVITE: &str = "INVITE sip:+4930901820@127.0.0.1:5060;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 69\r\n\
f: \"Caller\" <sip:+4915112345678@carrier.example;user=phone>;tag=1928301774\r\n\
To: <sip:+4930901820@carrier.example;user=phone>\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.2;lr>\r\n\
Call-ID: a84b4c76e66710@carrier.example\r\n\
CSeq: 314159 INVITE\r\n\
P-Asserted-Identity: <sip:+4915112345678@carrier.example>\r\n\
X-CRM-Verdict: log\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

fn runtime() -> Runtime {
    let loaded = config::from_toml(Path::new("p.toml"), CONFIG.to_string()).unwrap();
    let set = Arc::new(ExceptionSet::new());
    set.replace_all(vec![4915112345678], vec![]);
    Runtime::build(loaded, set).unwrap()
}

fn exercise(rt: &Runtime, local: &Local, data: Vec<u8>) {
    let Ok(m) = Message::scan(Bytes::from(data)) else {
        return;
    };
    let _ = m.validate();
    let _ = (
        m.top_via(),
        m.cseq(),
        m.max_forwards(),
        m.content_length(),
        m.end(),
        m.body_len(),
    );
    for h in [
        HeaderName::From,
        HeaderName::To,
        HeaderName::PAssertedIdentity,
    ] {
        let _ = m.name_addr(h).map(|n| (n.tag(), n.parse_uri()));
    }
    let remote: SocketAddr = "127.0.0.2:5070".parse().unwrap();
    for side in [Side::Trunk(0), Side::Pbx] {
        if m.is_request() {
            if let Outcome::Forward { data, .. } =
                request::route(rt, local, &m, remote, TransportKind::Udp, side)
            {
                let again = Message::scan(data).expect("what we forward scans");
                assert!(again.validate().is_ok(), "what we forward validates");
            }
        } else {
            let _ = sipscreen::proxy::response::route(rt, local, &m, side);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let rt = runtime();
        let local = Local::new(None, Some("127.0.0.1:5060".parse().unwrap()), None);
        exercise(&rt, &local, data);
    }

    #[test]
    fn mutated_invites_never_panic(edits in proptest::collection::vec((0usize..1000, any::<u8>(), 0u8..4), 1..6)) {
        let rt = runtime();
        let local = Local::new(None, Some("127.0.0.1:5060".parse().unwrap()), None);
        let mut data = INVITE.as_bytes().to_vec();
        for (pos, byte, kind) in edits {
            let pos = pos % (data.len() + 1);
            match kind {
                0 if pos < data.len() => data[pos] = byte,
                1 => data.insert(pos, byte),
                2 if pos < data.len() => { data.remove(pos); }
                _ => data.truncate(pos),
            }
        }
        exercise(&rt, &local, data);
    }
}

/// What the proxy makes of request `m` from the trunk (127.0.0.2:5070).
fn from_trunk<'r>(rt: &'r Runtime, m: &Message) -> Outcome<'r> {
    let local = Local::new(None, Some("127.0.0.1:5060".parse().unwrap()), None);
    request::route(
        rt,
        &local,
        m,
        "127.0.0.2:5070".parse().unwrap(),
        TransportKind::Udp,
        Side::Trunk(0),
    )
}

#[test]
fn the_seed_invite_is_forwarded() {
    let rt = runtime();
    let m = Message::scan(Bytes::from_static(INVITE.as_bytes())).unwrap();
    let out = from_trunk(&rt, &m);
    let Outcome::Forward { data, dest, .. } = out else {
        panic!("not forwarded")
    };
    // In-dialog? No: no To tag, but our Route is popped and the next Route
    // (127.0.0.2, the trunk itself) is not the PBX: the PBX target is used.
    assert_eq!(dest, "127.0.0.1:5080".parse().unwrap());
    let text = String::from_utf8_lossy(&data);
    assert!(text.contains("Route: <sip:127.0.0.2;lr>\r\n"), "{text}");
    assert!(!text.contains("X-CRM-Verdict: log"), "{text}");
    assert!(text.contains("X-CRM-Verdict: exception"), "{text}");
}

/// An INVITE whose every header the proxy tracks (Via, Max-Forwards,
/// Call-ID, ...) comes after `filler` untracked headers, with `after` more
/// behind them. Returns the message and its header lines.
fn invite_behind(filler: usize, after: usize) -> (String, Vec<String>) {
    let mut lines: Vec<String> = (0..filler)
        .map(|i| format!("X-Filler-{i}: before {i}"))
        .collect();
    for l in [
        "Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-many",
        "Max-Forwards: 69",
        "From: <sip:+4915112345678@carrier.example>;tag=many",
        "To: <sip:+4930901820@carrier.example>",
        "Call-ID: many-headers@carrier.example",
        "CSeq: 7 INVITE",
        "Content-Length: 0",
    ] {
        lines.push(l.to_string());
    }
    lines.extend((0..after).map(|i| format!("X-Trailer-{i}: after {i}")));
    let mut msg = String::from("INVITE sip:+4930901820@127.0.0.1:5060 SIP/2.0\r\n");
    for l in &lines {
        msg.push_str(l);
        msg.push_str("\r\n");
    }
    msg.push_str("\r\n");
    (msg, lines)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Past header index 255 every tracked header is still found where it
    /// is: Max-Forwards is decremented in its own line, the Call-ID read
    /// from its own, and every other header leaves byte for byte (checked
    /// on the raw bytes, and the result re-parsed by rsip).
    #[test]
    fn tracked_headers_after_index_255_are_edited_in_place(filler in 256usize..700, after in 0usize..40) {
        let rt = runtime();
        let (text, lines) = invite_behind(filler, after);
        prop_assert!(lines.len() >= 263);
        let m = Message::scan(Bytes::from(text.clone())).expect("scans");
        prop_assert_eq!(m.headers().len(), lines.len());
        prop_assert_eq!(m.call_id(), b"many-headers@carrier.example");
        prop_assert_eq!(m.max_forwards(), Some(69));
        let data = match from_trunk(&rt, &m) {
            Outcome::Forward { data, .. } => data,
            Outcome::Reply { code, reason, .. } | Outcome::Refused { code, reason, .. } => {
                panic!("answered {code} ({reason})")
            }
            Outcome::Drop(reason) => panic!("dropped ({reason})"),
        };
        let fwd = String::from_utf8(data.to_vec()).unwrap();
        // What the proxy adds (its Via, Record-Route, the tags) aside, the
        // forwarded header lines are the received ones with Max-Forwards
        // one lower.
        let kept: Vec<&str> = fwd
            .split("\r\n")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter(|l| {
                !l.starts_with("Via: SIP/2.0/UDP 127.0.0.1:5060;")
                    && !l.starts_with("Record-Route:")
                    && !l.starts_with("X-CRM-")
            })
            .collect();
        let want: Vec<String> = lines
            .iter()
            .map(|l| if l == "Max-Forwards: 69" { "Max-Forwards: 68".to_string() } else { l.clone() })
            .collect();
        prop_assert_eq!(kept, want);
        prop_assert!(fwd.contains("X-CRM-Verdict: exception\r\n"), "{}", fwd);

        use rsip::headers::UntypedHeader;
        use rsip::message::HasHeaders;
        let parsed = rsip::SipMessage::try_from(fwd.as_bytes()).expect("rsip parses it");
        let (mut max_forwards, mut call_ids, mut others) = (Vec::new(), Vec::new(), 0);
        for h in parsed.headers().iter() {
            match h {
                rsip::Header::MaxForwards(v) => max_forwards.push(v.value()),
                rsip::Header::CallId(v) => call_ids.push(v.value()),
                rsip::Header::Other(name, _)
                    if name.starts_with("X-Filler-") || name.starts_with("X-Trailer-") =>
                {
                    others += 1
                }
                _ => {}
            }
        }
        prop_assert_eq!(max_forwards, vec!["68"]);
        prop_assert_eq!(call_ids, vec!["many-headers@carrier.example"]);
        prop_assert_eq!(others, filler + after);
    }
}
