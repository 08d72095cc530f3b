//! Every RFC 4475 / RFC 5118 torture message (tests/data/rfc4475, vendored)
//! goes through the scanner and the live proxy: valid requests are
//! forwarded to the PBX, valid responses back to the trunk; invalid ones
//! are refused with the status the RFC asks of a proxy, or dropped; nothing
//! panics, and a normal call still passes afterwards.
//!
//! The RFC 5118 archive files use bare LF, two lack the final empty line
//! and three declare a Content-Length that does not match their body
//! (SOURCE.md); as SOURCE.md says, they are converted to CRLF, closed and
//! given their real Content-Length before sending.

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::*;
use sipscreen::sip::Message;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc4475")
}

struct Case {
    file: String,
    valid: bool,
    bytes: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let dir = corpus();
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap();
    manifest
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let mut bytes = std::fs::read(dir.join(f[0])).unwrap();
            // The archive's exact bytes (CR, LF, NUL, non-UTF-8): a checkout
            // that rewrote them would test something else.
            assert_eq!(
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
                f[3],
                "{}: bytes differ from the manifest's SHA-256",
                f[0]
            );
            if f[0].starts_with("rfc5118/") {
                bytes = fix_archive_artifacts(&bytes);
            }
            Case {
                file: f[0].to_string(),
                valid: f[2] == "valid",
                bytes,
            }
        })
        .collect()
}

/// CRLF line ends, a closed header block, the real Content-Length.
fn fix_archive_artifacts(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let (head, body) = match text.split_once("\n\n") {
        Some((h, b)) => (h.to_string(), b.replace('\n', "\r\n")),
        None => (text.trim_end_matches('\n').to_string(), String::new()),
    };
    let mut out = String::new();
    for line in head.split('\n') {
        if line.to_ascii_lowercase().starts_with("content-length") {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// What a proxy must answer to the invalid requests (RFC 4475 §3).
fn expected_reply(file: &str) -> Option<u16> {
    Some(match file {
        "badvers.dat" => 505,
        "unkscm.dat" | "novelsc.dat" => 416,
        "bext01.dat" => 420,
        "zeromf.dat" => 483,
        "sdp01.dat" => 406,
        // Not a SIP message at all: nothing to answer.
        "test.dat" => return None,
        _ => 400,
    })
}

#[test]
fn scanner_accepts_every_valid_message() {
    for c in cases() {
        let scanned = Message::scan(Bytes::from(c.bytes.clone()));
        if c.valid {
            let m = scanned.unwrap_or_else(|e| {
                panic!("{}: valid message refused by the scanner: {e}", c.file)
            });
            assert!(
                m.validate().is_ok(),
                "{}: valid message refused: {:?}",
                c.file,
                m.validate().err()
            );
        }
    }
}

#[tokio::test]
async fn every_torture_message_through_the_proxy() {
    let h = Harness::start().await;
    let trunk = h.trunk.local_addr().unwrap();
    let mut checked = 0;
    for c in cases() {
        let is_response = c.bytes.starts_with(b"SIP/");
        if is_response {
            // Put our Via on top, as if we had forwarded the request, and
            // send it from the PBX. Valid ones get the trunk's Via as next
            // hop; invalid ones keep their own (bcast.dat's broadcast one).
            let mut data = Vec::new();
            let nl = c.bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
            data.extend_from_slice(&c.bytes[..nl]);
            data.extend_from_slice(
                format!(
                    "Via: SIP/2.0/UDP {};branch=z9hG4bKsS0123456789abcdef\r\n",
                    h.me()
                )
                .as_bytes(),
            );
            if c.valid {
                data.extend_from_slice(
                    format!("Via: SIP/2.0/UDP {trunk};branch=z9hG4bKt\r\n").as_bytes(),
                );
            }
            data.extend_from_slice(&c.bytes[nl..]);
            h.pbx.send_to(&data, h.sip_udp).await.unwrap();
            if c.valid {
                let got = recv_bytes(&h.trunk).await;
                assert!(
                    got.starts_with(&c.bytes[..nl]),
                    "{}: response not forwarded intact:\n{}",
                    c.file,
                    String::from_utf8_lossy(&got)
                );
            } else {
                h.nothing_more_at_trunk().await;
            }
        } else {
            h.trunk.send_to(&c.bytes, h.sip_udp).await.unwrap();
            if c.valid {
                let got = recv_bytes(&h.pbx).await;
                let m = Message::scan(Bytes::from(got.clone()))
                    .unwrap_or_else(|e| panic!("{}: forwarded message does not scan: {e}", c.file));
                assert!(
                    m.validate().is_ok(),
                    "{}: forwarded message invalid: {:?}",
                    c.file,
                    m.validate().err()
                );
                let original = Message::scan(Bytes::from(c.bytes.clone())).unwrap();
                assert_eq!(m.call_id(), original.call_id(), "{}", c.file);
                // The body is forwarded byte for byte (trailing junk after
                // Content-Length dropped, as for dblreq.dat).
                let body = |m: &Message| m.buf()[m.end() - m.body_len()..m.end()].to_vec();
                assert_eq!(body(&m), body(&original), "{}: body changed", c.file);
            } else {
                h.nothing_more_at_pbx().await;
                if let Some(code) = expected_reply(&c.file) {
                    let (got, _) = recv(&h.trunk).await;
                    assert!(
                        got.starts_with(&format!("SIP/2.0 {code} ")),
                        "{}: expected {code}, got:\n{got}",
                        c.file
                    );
                    rsip_parses(got.as_bytes());
                } else {
                    h.nothing_more_at_trunk().await;
                }
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 62, "every message in the manifest was checked");
    // Still alive and serving.
    let inv = invite(
        h.sip_udp,
        trunk,
        "+4930901820",
        "+4917099999999",
        "after-torture",
        "",
    );
    h.trunk.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let (got, _) = recv(&h.pbx).await;
    assert_eq!(header(&got, "X-CRM-Verdict").as_deref(), Some("log"));
    h.stop().await;
}
