//! Inputs the cargo-fuzz targets (fuzz/) found to break a property, kept
//! as regression tests on the main crate's stable toolchain. Each file in
//! tests/data/fuzz/ is the minimised crash, in the target's input format;
//! each test checks the property the target checks.

use bytes::BytesMut;
use sipscreen::sip::framing::{Decoder, Frame, FramingError};

/// The `tcp_framing` target's cap.
const CAP: usize = 2048;

/// Frames from `stream` fed in pieces of `cuts` sizes (cycled; empty: all
/// at once), up to the first error, as the `tcp_framing` target does.
fn frames(stream: &[u8], cuts: &[u8]) -> (Vec<Frame>, Option<FramingError>) {
    let mut d = Decoder::new(CAP);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let step = cuts
            .get(i % cuts.len().max(1))
            .map_or(stream.len(), |&c| usize::from(c).max(1));
        i += 1;
        let end = (pos + step).min(stream.len());
        buf.extend_from_slice(&stream[pos..end]);
        pos = end;
        loop {
            match d.decode(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

/// A `tcp_framing` input: a byte n (mod 16), n chunk sizes, the stream.
fn split_input(data: &[u8]) -> (&[u8], &[u8]) {
    let n = usize::from(data[0] % 16).min(data.len() - 1);
    data[1..].split_at(n)
}

/// A response whose header block ends past the cap (and has no
/// Content-Length): it used to be refused as MissingContentLength when it
/// arrived in one read but as TooLarge when it trickled in.
#[test]
fn header_block_past_the_cap_is_too_large_however_it_arrives() {
    let data = include_bytes!("data/fuzz/tcp_framing-header-past-cap.bin");
    let (cuts, stream) = split_input(data);
    let end = stream.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(end > CAP, "the input's header block ends at {end}");
    let whole = frames(stream, &[]);
    assert_eq!(whole, (vec![], Some(FramingError::TooLarge { limit: CAP })));
    assert_eq!(frames(stream, cuts), whole);
    assert_eq!(frames(stream, &[1]), whole);
}

/// A start line longer than the 1024 bytes the decoder reads before
/// judging it: refused as Garbage when it trickled in, but accepted when
/// its line end came in the same read. Now Garbage either way.
#[test]
fn start_line_past_a_kilobyte_is_garbage_however_it_arrives() {
    let mut stream = b"OPTIONS sip:".to_vec();
    stream.resize(1100, b'a');
    stream.extend_from_slice(b"@example.com SIP/2.0\r\nContent-Length: 0\r\n\r\n");
    let whole = frames(&stream, &[]);
    assert_eq!(whole, (vec![], Some(FramingError::Garbage)));
    assert_eq!(frames(&stream, &[200]), whole);
    assert_eq!(frames(&stream, &[1]), whole);
    // One byte shorter than the limit still frames, in any pieces.
    let mut ok = b"OPTIONS sip:".to_vec();
    ok.resize(1024 - b"@e SIP/2.0\r".len(), b'a');
    ok.extend_from_slice(b"@e SIP/2.0\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(ok.iter().position(|&b| b == b'\n'), Some(1024));
    let whole = frames(&ok, &[]);
    assert_eq!(whole.1, None);
    assert_eq!(whole.0.len(), 1);
    assert_eq!(frames(&ok, &[200]), whole);
    assert_eq!(frames(&ok, &[1]), whole);
}
