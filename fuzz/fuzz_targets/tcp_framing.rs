//! TCP framing: the first bytes of the input choose chunk sizes, the rest
//! is the stream. Fed whole, in those chunks or byte by byte the decoder
//! never panics, never yields a message over the cap, and yields the same
//! frames (and the same error, if any) every way.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_support/framing.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    let Some((cuts, stream)) = harness::split_input(data) else {
        return;
    };
    let whole = harness::frames(stream, &[]);
    assert_eq!(harness::frames(stream, cuts), whole, "chunking changed the frames");
    assert_eq!(harness::frames(stream, &[1]), whole, "byte-by-byte changed the frames");
});
