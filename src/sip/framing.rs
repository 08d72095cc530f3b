//! SIP over a byte stream (RFC 3261 §18.3): a message is its header block
//! plus exactly Content-Length bytes of body. The decoder checks a message
//! is complete before handing it out; "not enough bytes yet" is `Ok(None)`.
//! It remembers how far it searched for the end of the header block, so a
//! message trickling in byte by byte is not rescanned from the start, and
//! it refuses a message as soon as it is known to exceed the size limit.
//! CRLF keep-alives between messages are reported as pings / pongs
//! (RFC 5626 §4.4.1).

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use super::header::{HeaderName, classify};
use super::message::parse_u64;

/// Why a stream cannot be framed; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("message larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("not a SIP message")]
    Garbage,
    #[error("bad Content-Length")]
    BadContentLength,
    #[error("no Content-Length (mandatory over TCP)")]
    MissingContentLength,
}

impl FramingError {
    /// Label for the `sip_errors` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            FramingError::TooLarge { .. } => "tcp_too_large",
            FramingError::Garbage => "tcp_garbage",
            FramingError::BadContentLength => "tcp_bad_content_length",
            FramingError::MissingContentLength => "tcp_missing_content_length",
        }
    }
}

/// One item from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete message: header block and body.
    Message(Bytes),
    /// CRLF CRLF: the peer asks for a pong.
    Ping,
    /// A lone CRLF (a pong, or stray line end): nothing to do.
    Pong,
}

/// Resumable framing state for one connection.
#[derive(Debug)]
pub struct Decoder {
    max: usize,
    /// Bytes of the current message already searched for the blank line.
    searched: usize,
    /// Header block length (incl. blank line) and Content-Length, once known.
    frame: Option<(usize, usize)>,
    /// Whether the start line was checked.
    start_checked: bool,
}

impl Decoder {
    /// A decoder refusing messages over `max` bytes.
    pub fn new(max: usize) -> Decoder {
        Decoder {
            max,
            searched: 0,
            frame: None,
            start_checked: false,
        }
    }

    /// Takes the next frame off the front of `buf`, if complete.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError> {
        if self.frame.is_none() && self.searched == 0 && !self.start_checked {
            if buf.starts_with(b"\r\n\r\n") {
                let _ = buf.split_to(4);
                return Ok(Some(Frame::Ping));
            }
            if buf.starts_with(b"\r\n") {
                if buf.len() < 4 && b"\r\n\r\n".starts_with(&buf[..]) {
                    return Ok(None); // maybe a ping still arriving
                }
                let _ = buf.split_to(2);
                return Ok(Some(Frame::Pong));
            }
            if buf.first() == Some(&b'\n') {
                let _ = buf.split_to(1);
                return Ok(Some(Frame::Pong));
            }
        }
        if !self.start_checked {
            // Only the first kilobyte is read for the start line, whether
            // or not its line end came in the same read.
            let limit = 1024.min(self.max);
            match memchr::memchr(b'\n', buf) {
                Some(nl) if nl > limit => return Err(FramingError::Garbage),
                Some(nl) => {
                    if !looks_like_start_line(&buf[..nl]) {
                        return Err(FramingError::Garbage);
                    }
                    self.start_checked = true;
                }
                None if buf.len() > limit => return Err(FramingError::Garbage),
                None => return Ok(None),
            }
        }
        let (head, body) = match self.frame {
            Some(f) => f,
            None => {
                let from = self.searched.saturating_sub(3);
                let Some(end) = memmem::find(&buf[from..], b"\r\n\r\n").map(|i| from + i + 4)
                else {
                    self.searched = buf.len();
                    if buf.len() > self.max {
                        return Err(FramingError::TooLarge { limit: self.max });
                    }
                    return Ok(None);
                };
                // Checked before the header block is read, so the error is
                // the same as when the block trickles in past the limit.
                if end > self.max {
                    return Err(FramingError::TooLarge { limit: self.max });
                }
                let cl = content_length(&buf[..end])?;
                if end.saturating_add(cl) > self.max {
                    return Err(FramingError::TooLarge { limit: self.max });
                }
                self.frame = Some((end, cl));
                (end, cl)
            }
        };
        if buf.len() < head + body {
            return Ok(None);
        }
        let msg = buf.split_to(head + body).freeze();
        self.searched = 0;
        self.frame = None;
        self.start_checked = false;
        Ok(Some(Frame::Message(msg)))
    }
}

/// `METHOD SP … SP SIP/2.0` or `SIP/2.0 SP NNN …`, cheaply.
fn looks_like_start_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() >= 12 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        return line
            .iter()
            .position(|&b| b == b' ')
            .is_some_and(|sp| line.get(sp + 1).is_some_and(u8::is_ascii_digit));
    }
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    sp > 0
        && line[..sp].iter().all(|&b| super::header::is_token(b))
        && line.len() > 8
        && line[line.len() - 8..].eq_ignore_ascii_case(b" SIP/2.0")
}

/// The one Content-Length of a header block.
fn content_length(head: &[u8]) -> Result<usize, FramingError> {
    let mut found: Option<usize> = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            continue;
        }
        if classify(line[..colon].trim_ascii_end()) != HeaderName::ContentLength {
            continue;
        }
        let n = parse_u64(&line[colon + 1..]).ok_or(FramingError::BadContentLength)?;
        let n = usize::try_from(n).map_err(|_| FramingError::BadContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(FramingError::BadContentLength);
        }
        found = Some(n);
    }
    found.ok_or(FramingError::MissingContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nl: 5\r\n\r\nab\r\n\r";
    const B: &[u8] = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n";

    fn all(d: &mut Decoder, buf: &mut BytesMut) -> Result<Vec<Frame>, FramingError> {
        let mut out = Vec::new();
        while let Some(f) = d.decode(buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn messages_pings_and_compact_length() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"\r\n\r\n");
        buf.extend_from_slice(A);
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(B);
        let mut d = Decoder::new(65536);
        let f = all(&mut d, &mut buf).unwrap();
        assert_eq!(
            f,
            vec![
                Frame::Ping,
                Frame::Message(Bytes::from_static(A)),
                Frame::Pong,
                Frame::Message(Bytes::from_static(B))
            ]
        );
    }

    #[test]
    fn refusals() {
        let mut d = Decoder::new(100);
        let mut big = BytesMut::from(&b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 500\r\n\r\n"[..]);
        assert_eq!(
            d.decode(&mut big),
            Err(FramingError::TooLarge { limit: 100 })
        );
        let mut d = Decoder::new(65536);
        let mut two =
            BytesMut::from(&b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 5\r\nl: 6\r\n\r\n"[..]);
        assert_eq!(d.decode(&mut two), Err(FramingError::BadContentLength));
        let mut d = Decoder::new(65536);
        let mut neg =
            BytesMut::from(&b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -999\r\n\r\n"[..]);
        assert_eq!(d.decode(&mut neg), Err(FramingError::BadContentLength));
        let mut d = Decoder::new(65536);
        let mut none = BytesMut::from(&b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n"[..]);
        assert_eq!(d.decode(&mut none), Err(FramingError::MissingContentLength));
        let mut d = Decoder::new(65536);
        let mut junk = BytesMut::from(&b"\x16\x03\x01 hello\r\n"[..]);
        assert_eq!(d.decode(&mut junk), Err(FramingError::Garbage));
        let mut d = Decoder::new(200);
        let mut endless = BytesMut::from(&b"INVITE sip:a@b SIP/2.0\r\n"[..]);
        endless.extend_from_slice(&[b'a'; 300]);
        assert_eq!(
            d.decode(&mut endless),
            Err(FramingError::TooLarge { limit: 200 })
        );
    }

    proptest! {
        /// Feeding the stream in any pieces gives the same frames as at once.
        #[test]
        fn any_split_gives_the_same_frames(cuts in proptest::collection::vec(1usize..40, 0..30)) {
            let mut stream = Vec::new();
            for _ in 0..3 {
                stream.extend_from_slice(A);
                stream.extend_from_slice(b"\r\n\r\n");
                stream.extend_from_slice(B);
            }
            let mut whole = BytesMut::from(&stream[..]);
            let expect = all(&mut Decoder::new(65536), &mut whole).unwrap();
            let mut d = Decoder::new(65536);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut pos = 0;
            for c in cuts.iter().cycle().take(stream.len()) {
                if pos >= stream.len() { break; }
                let end = (pos + c).min(stream.len());
                buf.extend_from_slice(&stream[pos..end]);
                pos = end;
                got.extend(all(&mut d, &mut buf).unwrap());
            }
            buf.extend_from_slice(&stream[pos..]);
            got.extend(all(&mut d, &mut buf).unwrap());
            prop_assert_eq!(got, expect);
        }
    }
}
