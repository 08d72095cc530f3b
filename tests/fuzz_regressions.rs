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
