//! The `tcp_framing` fuzz target's harness, shared with the regression
//! tests (fuzz/fuzz_targets/tcp_framing.rs includes this file by path).

use bytes::BytesMut;
use sipscreen::sip::framing::{Decoder, Frame, FramingError};

/// Size limit of the decoder under test.
pub const CAP: usize = 2048;

/// Frames from `stream` fed in pieces of `cuts` sizes (cycled; empty: all
/// at once), up to the first error, as the transport closes the
/// connection there. Panics on a message over [`CAP`].
pub fn frames(stream: &[u8], cuts: &[u8]) -> (Vec<Frame>, Option<FramingError>) {
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

/// A fuzz input: a byte n (mod 16), n chunk sizes, then the stream.
pub fn split_input(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&n, rest) = data.split_first()?;
    let n = usize::from(n % 16).min(rest.len());
    Some(rest.split_at(n))
}
