//! Local replies (RFC 3261 §8.2.6 / §16.7): the proxy answers requests it
//! refuses (400, 403, 483, ...) itself, statelessly. The reply copies the
//! Via headers (the top one with `received`/`rport` as a server adds
//! them), From, To (with a derived tag), Call-ID and CSeq of the request,
//! and goes back to the packet's source on the transport it came on.

use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;

use super::ident::Local;
use crate::sip::{HeaderName, Message};

/// Reason phrase for the codes we answer with.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        400 => "Bad Request",
        403 => "Forbidden",
        406 => "Not Acceptable",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        608 => "Rejected",
        _ => "Error",
    }
}

/// Builds the reply to `req` with status `code`; `extra` are whole header
/// lines (each ending in CRLF) to add, e.g. `Unsupported: foo\r\n`.
pub fn build(req: &Message, code: u16, remote: SocketAddr, local: &Local, extra: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(512);
    let _ = write!(out, "SIP/2.0 {code} {}\r\n", reason_phrase(code));
    let mut first = true;
    for (_, r) in req.values(HeaderName::Via) {
        out.extend_from_slice(b"Via: ");
        out.extend_from_slice(req.slice(r));
        if first {
            super::request::write_received(req, remote, &mut out);
            first = false;
        }
        out.extend_from_slice(b"\r\n");
    }
    for (name, h) in [
        ("From", HeaderName::From),
        ("To", HeaderName::To),
        ("Call-ID", HeaderName::CallId),
        ("CSeq", HeaderName::CSeq),
    ] {
        if let Some(v) = req.first_value(h) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            if h == HeaderName::To
                && code > 100
                && req
                    .name_addr(HeaderName::To)
                    .is_some_and(|t| t.tag().is_none())
            {
                out.extend_from_slice(b";tag=");
                let branch = req.top_via().and_then(|v| v.branch()).unwrap_or(b"");
                local.reply_tag(req.call_id(), branch, &mut out);
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"Server: sipscreen\r\nContent-Length: 0\r\n\r\n");
    Bytes::from(out)
}

/// A reply built from raw header bytes when the request did not scan
/// fully (framing errors): only Via, From, To, Call-ID and CSeq lines are
/// copied, if they can be found. `None` when no Via is present.
pub fn build_from_head(head: &[u8], code: u16) -> Option<Bytes> {
    let mut out = Vec::with_capacity(512);
    let _ = write!(out, "SIP/2.0 {code} {}\r\n", reason_phrase(code));
    let mut has_via = false;
    let end = memchr::memmem::find(head, b"\r\n\r\n").unwrap_or(head.len());
    for line in head[..end].split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = crate::sip::header::classify(line[..colon].trim_ascii_end());
        if name == HeaderName::Via {
            has_via = true;
        }
        if matches!(
            name,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
        ) {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    if !has_via || head.starts_with(b"SIP/") || head.starts_with(b"ACK ") {
        return None;
    }
    out.extend_from_slice(b"Server: sipscreen\r\nContent-Length: 0\r\n\r\n");
    Some(Bytes::from(out))
}
