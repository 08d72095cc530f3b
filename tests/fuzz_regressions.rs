//! Inputs that broke a cargo-fuzz target's property (fuzz/), kept as
//! regression tests on the stable toolchain. Files in tests/data/fuzz/ are
//! minimised crashes in the target's input format; each test checks the
//! property the target checks, through the target's own harness.

#[path = "fuzz_support/framing.rs"]
mod framing;

use framing::{CAP, frames, split_input};
use sipscreen::sip::framing::FramingError;

/// A response whose header block ends past the cap (and has no
/// Content-Length): it used to be refused as MissingContentLength when it
/// arrived in one read but as TooLarge when it trickled in.
#[test]
fn header_block_past_the_cap_is_too_large_however_it_arrives() {
    let data = include_bytes!("data/fuzz/tcp_framing-header-past-cap.bin");
    let (cuts, stream) = split_input(data).unwrap();
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
