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

/// An e-mail whose lowercase form is longer than the address as written
/// ('İ' is 2 bytes, its lowercase "i̇" 3): the length limits were checked
/// on the given text, so the stored (lowercased) address was refused when
/// read back. Seen reading check_email; the `import_line` target's
/// round-trip property fails on this input (its 30-minute run missed it).
#[test]
fn an_accepted_email_reads_back_after_lowercasing() {
    use phonenumber::country::Id;
    use sipscreen::screening::normalize::Normalizer;
    use sipscreen::screening::source::{Value, parse_entry};

    let n = Normalizer::new(Id::DE, &[]);
    let line = include_bytes!("data/fuzz/import_line-lowercase-grows.txt");
    let line = line.strip_suffix(b"\n").unwrap();
    // 32 'İ' are 64 bytes as written but 96 lowercased: too long.
    assert_eq!(
        parse_entry(line, &n, 100_000),
        Err("e-mail local part is empty or too long".to_string())
    );
    // 21 of them (63 bytes lowercased) are fine, and read back the same.
    let ok = format!("{}@example.com; ok", "\u{130}".repeat(21));
    let entry = parse_entry(ok.as_bytes(), &n, 100_000).unwrap().unwrap();
    let again = Value::parse(&entry.value.canonical(), &n).unwrap();
    assert_eq!(again, entry.value);
}
