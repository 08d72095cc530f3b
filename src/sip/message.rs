//! The message scanner. `Message::scan` indexes one message in a single
//! pass: the start line, every header line as byte ranges (folded lines
//! joined), the body start. Nothing is copied: the message keeps the
//! received `Bytes` and hands out slices. Values are parsed only when asked
//! (`values.rs`).
//!
//! Scanning fails only when the bytes are not a SIP message at all (no
//! reply possible). Everything a proxy must refuse but can still answer
//! (missing headers, bad CSeq, bad Request-URI, ...) is found by
//! `validate`, which says which status to answer with.

use std::ops::Range;

use bytes::Bytes;
use smallvec::SmallVec;

use super::header::{HeaderName, classify, is_token};
use super::values::{self, NameAddr, Uri, find, is_lws, split_commas, trim};

/// Request methods the proxy tells apart; the rest are `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Refer,
    Update,
    Prack,
    Info,
    Message,
    Notify,
    Subscribe,
    Publish,
    /// Any other method. Keep it last: the metrics index a table by the
    /// discriminant.
    Other,
}

impl Method {
    /// Every method, in discriminant order (`Other` last).
    pub const ALL: [Method; Method::Other as usize + 1] = [
        Method::Invite,
        Method::Ack,
        Method::Bye,
        Method::Cancel,
        Method::Register,
        Method::Options,
        Method::Refer,
        Method::Update,
        Method::Prack,
        Method::Info,
        Method::Message,
        Method::Notify,
        Method::Subscribe,
        Method::Publish,
        Method::Other,
    ];

    /// Classifies a method token (case-sensitive, RFC 3261 §7.1).
    pub fn from_bytes(b: &[u8]) -> Method {
        match b {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"REFER" => Method::Refer,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"INFO" => Method::Info,
            b"MESSAGE" => Method::Message,
            b"NOTIFY" => Method::Notify,
            b"SUBSCRIBE" => Method::Subscribe,
            b"PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }

    /// Metric label (unknown methods collapse to `other`).
    pub fn label(self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Refer => "REFER",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Info => "INFO",
            Method::Message => "MESSAGE",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Publish => "PUBLISH",
            Method::Other => "other",
        }
    }
}

/// One header line. Offsets are absolute into the message buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the name says.
    pub name: HeaderName,
    /// Start of the line (the first byte of the name).
    pub start: u32,
    /// End of the name (before optional space and the colon).
    pub name_end: u32,
    /// The trimmed value (may span folded lines).
    pub value: (u32, u32),
    /// Just past the line's (last) line ending.
    pub end: u32,
}

impl Header {
    /// The whole line(s), ending included: what to delete to remove it.
    pub fn line(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The trimmed value.
    pub fn value_range(&self) -> Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

/// Request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: Method,
        /// The method token as written.
        method_range: Range<usize>,
        /// The Request-URI as written (may hold junk `validate` refuses).
        uri: Range<usize>,
        /// The SIP-Version as written (empty if missing).
        version: Range<usize>,
    },
    Response {
        code: u16,
        version: Range<usize>,
    },
}

/// The bytes are not a SIP message at all; nothing can be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("empty message")]
    Empty,
    #[error("start line is neither a request nor a status line")]
    StartLine,
    #[error("header line without a colon")]
    HeaderLine,
    #[error("too many header lines")]
    TooManyHeaders,
}

impl ScanError {
    /// Label for the `sip_errors` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ScanError::Empty => "scan_empty",
            ScanError::StartLine => "scan_start_line",
            ScanError::HeaderLine => "scan_header_line",
            ScanError::TooManyHeaders => "scan_too_many_headers",
        }
    }
}

/// A message the proxy must refuse: the status to answer (requests) and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    /// Status code for the reply (400, 416, 505, ...).
    pub status: u16,
    /// Short reason, also the metric label.
    pub reason: &'static str,
}

const fn bad(reason: &'static str) -> Invalid {
    Invalid {
        status: 400,
        reason,
    }
}

/// What `validate` parsed, for the steps after it.
#[derive(Debug, Clone)]
pub struct Parsed<'a> {
    /// The Request-URI (requests only).
    pub ruri: Option<Uri<'a>>,
    /// The topmost Via value.
    pub top_via: values::Via<'a>,
    /// From.
    pub from: NameAddr<'a>,
    /// To.
    pub to: NameAddr<'a>,
    /// CSeq number and method.
    pub cseq: (u32, &'a [u8]),
    /// Max-Forwards, if present.
    pub max_forwards: Option<u32>,
}

/// Header lines a message may have (more is refused, not truncated): as
/// many as a `u16` index can name with [`NONE`] left over. The size limit
/// (`[sip] max_message_bytes`, up to 1 MiB) lets a message hold tens of
/// thousands; real ones have a few dozen.
pub const MAX_HEADERS: usize = u16::MAX as usize;

/// `first` of a name no header has: never a valid index (`MAX_HEADERS`
/// keeps indices below it).
const NONE: u16 = u16::MAX;

/// Header names whose first occurrence is remembered for fast access.
const TRACKED: usize = HeaderName::Other as usize;

/// A scanned SIP message over its receive buffer.
#[derive(Debug, Clone)]
pub struct Message {
    buf: Bytes,
    start: StartLine,
    headers: SmallVec<[Header; 24]>,
    /// Index of the first header of each tracked name (`NONE`: none).
    first: [u16; TRACKED],
    /// How many headers of each tracked name (exact: at most
    /// `MAX_HEADERS`).
    count: [u16; TRACKED],
    /// Where new header lines go: the start of the blank line.
    header_end: usize,
    /// Whether a blank line ends the headers.
    terminated: bool,
    /// First byte after the blank line.
    body_start: usize,
    /// The first Content-Length, read once by the scan (`None`: absent or
    /// not a number).
    content_length: Option<usize>,
}

impl Message {
    /// Indexes `buf` (one message, as framed by the transport).
    ///
    /// One pass over the header block: [`Marks`] hands out every `\n` and
    /// `:` in order, found 64 bytes at a time, so a header line costs one
    /// mark for its colon, one for its end (plus any colons of its value)
    /// and no search of its own; the body is never looked at.
    pub fn scan(buf: Bytes) -> Result<Message, ScanError> {
        let mut m = Message {
            buf,
            start: StartLine::Response {
                code: 0,
                version: 0..0,
            },
            headers: SmallVec::new(),
            first: [NONE; TRACKED],
            count: [0u16; TRACKED],
            header_end: 0,
            terminated: false,
            body_start: 0,
            content_length: None,
        };
        let b = &m.buf[..];
        // Leading CRLFs are keep-alive leftovers (RFC 3261 §7.5).
        let mut pos = b
            .iter()
            .position(|&c| c != b'\r' && c != b'\n')
            .ok_or(ScanError::Empty)?;
        let mut marks = Marks::new(b, pos);
        let (line, next) = line_at(b, pos, marks.line_end());
        m.start = parse_start_line(b, line)?;
        pos = next;
        m.header_end = b.len();
        m.body_start = b.len();
        while pos < b.len() {
            let c = b[pos];
            if c == b'\n' || (c == b'\r' && b.get(pos + 1) == Some(&b'\n')) {
                // The blank line.
                m.header_end = pos;
                m.body_start = pos + if c == b'\n' { 1 } else { 2 };
                m.terminated = true;
                break;
            }
            if matches!(c, b' ' | b'\t') {
                // Folded continuation of the previous header.
                let (line, next) = line_at(b, pos, marks.line_end());
                let h = m.headers.last_mut().ok_or(ScanError::HeaderLine)?;
                let cont = trim(b, line);
                if !cont.is_empty() {
                    if h.value.0 == h.value.1 {
                        h.value.0 = cont.start as u32;
                    }
                    h.value.1 = cont.end as u32;
                }
                h.end = next as u32;
                pos = next;
                continue;
            }
            // The line's first mark is its colon, or it has none. The name
            // is what comes before it less trailing blanks, and must be a
            // token: what a walk over token characters, blanks and then a
            // colon accepts.
            let colon = match marks.next() {
                Some(i) if b[i] == b':' => i,
                _ => return Err(ScanError::HeaderLine),
            };
            let mut name_end = colon;
            if colon > pos && matches!(b[colon - 1], b' ' | b'\t') {
                while name_end > pos && matches!(b[name_end - 1], b' ' | b'\t') {
                    name_end -= 1;
                }
            }
            let name = &b[pos..name_end];
            let kind = classify(name);
            // A recognised name matched a literal of letters and `-` (see
            // `classify`): only the others are checked byte by byte.
            if name.is_empty()
                || (matches!(kind, HeaderName::Other | HeaderName::XCrm)
                    && !name.iter().all(|&c| is_token(c)))
            {
                return Err(ScanError::HeaderLine);
            }
            if m.headers.len() >= MAX_HEADERS {
                return Err(ScanError::TooManyHeaders);
            }
            let (line, next) = line_at(b, pos, marks.line_end());
            let value = value_at(b, colon + 1..line.end);
            let k = kind as usize;
            if k < TRACKED {
                if m.first[k] == NONE {
                    // Lossless: the scan stops at MAX_HEADERS lines.
                    m.first[k] = m.headers.len() as u16;
                }
                m.count[k] += 1;
            }
            m.headers.push(Header {
                name: kind,
                start: pos as u32,
                name_end: name_end as u32,
                value: (value.start as u32, value.end as u32),
                end: next as u32,
            });
            pos = next;
        }
        let k = HeaderName::ContentLength as usize;
        m.content_length = (m.first[k] != NONE)
            .then(|| parse_u64(&b[m.headers[usize::from(m.first[k])].value_range()]))
            .flatten()
            .map(|n| n as usize);
        Ok(m)
    }

    /// The received bytes.
    pub fn buf(&self) -> &Bytes {
        &self.buf
    }

    /// Bytes at `r`.
    pub fn slice(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// The start line.
    pub fn start_line(&self) -> &StartLine {
        &self.start
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method (`None` for responses).
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI range (`None` for responses).
    pub fn uri_range(&self) -> Option<Range<usize>> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri.clone()),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI bytes (empty for responses).
    pub fn uri(&self) -> &[u8] {
        self.uri_range().map_or(&[], |r| &self.buf[r])
    }

    /// The status code (`None` for requests).
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// All header lines in order.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The first header named `name` (tracked names only).
    pub fn first(&self, name: HeaderName) -> Option<&Header> {
        let k = name as usize;
        (k < TRACKED && self.first[k] != NONE).then(|| &self.headers[usize::from(self.first[k])])
    }

    /// How many headers are named `name` (tracked names only).
    pub fn count(&self, name: HeaderName) -> usize {
        let k = name as usize;
        if k < TRACKED {
            usize::from(self.count[k])
        } else {
            0
        }
    }

    /// Every header named `name`, in order.
    pub fn all(&self, name: HeaderName) -> impl Iterator<Item = &Header> {
        self.of_name(name)
    }

    /// The headers named `name`, walked from the first one of a tracked
    /// name (none: no walk at all).
    fn of_name(&self, name: HeaderName) -> impl Iterator<Item = &Header> {
        self.headers[self.first_index(name)..]
            .iter()
            .filter(move |h| h.name == name)
    }

    /// Where a walk for `name` starts: its first header (tracked names),
    /// past the end if it has none, else 0.
    fn first_index(&self, name: HeaderName) -> usize {
        let k = name as usize;
        if k >= TRACKED {
            0
        } else if self.first[k] == NONE {
            self.headers.len()
        } else {
            usize::from(self.first[k])
        }
    }

    /// The value of header `h`.
    pub fn value(&self, h: &Header) -> &[u8] {
        &self.buf[h.value_range()]
    }

    /// The value of the first header named `name`.
    pub fn first_value(&self, name: HeaderName) -> Option<&[u8]> {
        self.first(name).map(|h| self.value(h))
    }

    /// Each comma-separated value of every header named `name`, with the
    /// index of the header it is in.
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = (usize, Range<usize>)> + '_ {
        let from = self.first_index(name);
        self.headers[from..]
            .iter()
            .enumerate()
            .filter(move |(_, h)| h.name == name)
            .flat_map(move |(i, h)| {
                // A value without a comma is its own one element: one
                // search instead of the comma walk.
                let (one, split) = match self.sole_element(h) {
                    Some(r) => (Some(r), None),
                    None => (None, Some(split_commas(&self.buf, h.value_range()))),
                };
                one.into_iter()
                    .chain(split.into_iter().flatten())
                    .map(move |r| (from + i, r))
            })
    }

    /// The first two comma-separated values of the headers named `name`
    /// (header index and range each): `values(name).take(2)` without its
    /// iterator chain when the first header has a value (a response's two
    /// top Vias, on two lines or, as SIPp's `[last_Via:]` writes them, on
    /// one: that chain cost about 600 instructions per response).
    pub fn first_two_values(&self, name: HeaderName) -> SmallVec<[(usize, Range<usize>); 2]> {
        let i = self.first_index(name);
        let mut out = SmallVec::new();
        if let Some(h) = self
            .headers
            .get(i)
            .filter(|h| h.name == name && h.value.0 < h.value.1)
        {
            match self.sole_element(h) {
                Some(r) => out.push((i, r)),
                None => {
                    let two = split_commas(&self.buf, h.value_range()).take(2);
                    out.extend(two.map(|r| (i, r)));
                    if out.len() == 2 {
                        return out;
                    }
                }
            }
            if let Some((j, h)) = self.headers[i + 1..]
                .iter()
                .enumerate()
                .find(|(_, h)| h.name == name && h.value.0 < h.value.1)
            {
                let r = self
                    .sole_element(h)
                    .or_else(|| split_commas(&self.buf, h.value_range()).next());
                out.extend(r.map(|r| (i + 1 + j, r)));
            }
            return out;
        }
        out.extend(self.values(name).take(2));
        out
    }

    /// The first comma-separated value of the first header named `name`
    /// (tracked names: no walk over the others).
    fn first_element(&self, name: HeaderName) -> Option<Range<usize>> {
        if (name as usize) < TRACKED {
            // A header whose value is empty has no element: the next
            // header of the name holds the first one.
            let h = self.first(name)?;
            if h.value.0 < h.value.1 {
                return self
                    .sole_element(h)
                    .or_else(|| split_commas(&self.buf, h.value_range()).next());
            }
        }
        self.values(name).next().map(|(_, r)| r)
    }

    /// The topmost Via value, parsed.
    pub fn top_via(&self) -> Option<values::Via<'_>> {
        let r = self.first_element(HeaderName::Via)?;
        values::Via::parse(&self.buf, r).ok()
    }

    /// From, To or P-Asserted-Identity (first value), parsed.
    pub fn name_addr(&self, name: HeaderName) -> Option<NameAddr<'_>> {
        if let Some(v) = self.sole_value(name) {
            return NameAddr::parse(v).ok();
        }
        let r = self.first_element(name)?;
        NameAddr::parse(&self.buf[r]).ok()
    }

    /// The first header's value when it holds no comma at all: then it is
    /// the header's one comma-separated element (values are trimmed), and
    /// one search for `,` replaces the comma walk (quotes, `<>`). `None` for an
    /// untracked name, no header, an empty value or any comma.
    fn sole_value(&self, name: HeaderName) -> Option<&[u8]> {
        let v = self.value(self.first(name)?);
        (!v.is_empty() && find(v, b',').is_none()).then_some(v)
    }

    /// The value of `h` as its one comma-separated element when it holds
    /// no comma at all and is not empty (values are trimmed, and quotes
    /// or `<>` only hide commas): what `split_commas` would yield alone,
    /// found with one search. `None`: walk it with `split_commas`.
    fn sole_element(&self, h: &Header) -> Option<Range<usize>> {
        let r = h.value_range();
        (!r.is_empty() && find(&self.buf[r.clone()], b',').is_none()).then_some(r)
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &[u8] {
        self.first_value(HeaderName::CallId).unwrap_or(&[])
    }

    /// CSeq number and method token.
    pub fn cseq(&self) -> Option<(u32, &[u8])> {
        let v = self.first_value(HeaderName::CSeq)?;
        // One walk: 1 to 19 digits (what `parse_u64` takes) up to the
        // first LWS, at most `u32::MAX`, then the method.
        let mut n = 0u64;
        let mut sp = 0;
        while sp < v.len() && v[sp].is_ascii_digit() {
            n = n * 10 + u64::from(v[sp] - b'0');
            if n > u64::from(u32::MAX) {
                return None;
            }
            sp += 1;
        }
        if sp == 0 || sp > 19 || sp == v.len() || !is_lws(v[sp]) {
            return None;
        }
        let m = &v[sp..];
        let r = trim(m, 0..m.len());
        Some((n as u32, &m[r]))
    }

    /// Max-Forwards (`None` if absent or not a number).
    pub fn max_forwards(&self) -> Option<u32> {
        parse_u64(self.first_value(HeaderName::MaxForwards)?)
            .map(|n| n.min(u64::from(u32::MAX)) as u32)
    }

    /// Declared Content-Length (`None` if absent or not a number).
    pub fn content_length(&self) -> Option<usize> {
        self.content_length
    }

    /// Where new header lines are inserted (start of the blank line).
    pub fn header_end(&self) -> usize {
        self.header_end
    }

    /// End of the message: body start + Content-Length (capped at the
    /// buffer), or the buffer's end when Content-Length is absent (UDP).
    /// Trailing bytes of a datagram beyond it are not part of the message.
    pub fn end(&self) -> usize {
        match self.content_length() {
            Some(n) => self.body_start.saturating_add(n).min(self.buf.len()),
            None => self.buf.len(),
        }
    }

    /// Length of the body that will be forwarded.
    pub fn body_len(&self) -> usize {
        self.end().saturating_sub(self.body_start)
    }

    /// Checks what a proxy must refuse. `Err` says which status to answer
    /// (requests) or that the message is to be dropped (responses). `Ok`
    /// hands back the values every later step needs, parsed once.
    pub fn validate(&self) -> Result<Parsed<'_>, Invalid> {
        use HeaderName::*;
        if !self.terminated {
            return Err(bad("headers_unterminated"));
        }
        let mut ruri = None;
        let mut cseq = None;
        let max_forwards;
        match &self.start {
            StartLine::Request {
                method,
                method_range,
                uri,
                version,
            } => {
                let v = &self.buf[version.clone()];
                if v.is_empty() {
                    return Err(bad("start_line"));
                }
                if !v.eq_ignore_ascii_case(b"SIP/2.0") {
                    return Err(Invalid {
                        status: 505,
                        reason: "version",
                    });
                }
                if !self.buf[method_range.clone()].iter().all(|&c| is_token(c)) {
                    return Err(bad("method"));
                }
                ruri = Some(self.validate_uri(&self.buf[uri.clone()])?);
                for (h, missing) in [
                    (Via, bad("missing_via")),
                    (From, bad("missing_from")),
                    (To, bad("missing_to")),
                    (CallId, bad("missing_call_id")),
                    (CSeq, bad("missing_cseq")),
                ] {
                    if self.count(h) == 0 {
                        return Err(missing);
                    }
                }
                let c = self.cseq().ok_or(bad("cseq"))?;
                if c.1 != &self.buf[method_range.clone()] {
                    return Err(bad("cseq_method"));
                }
                cseq = Some(c);
                max_forwards = self.max_forwards();
                if self.count(MaxForwards) > 0 && max_forwards.is_none_or(|n| n > 255) {
                    return Err(bad("max_forwards"));
                }
                if *method == Method::Invite {
                    self.validate_accept()?;
                }
            }
            StartLine::Response { code, version } => {
                if !self.buf[version.clone()].eq_ignore_ascii_case(b"SIP/2.0")
                    || !(100..=699).contains(code)
                {
                    return Err(bad("status_line"));
                }
                if self.count(Via) == 0 {
                    return Err(bad("response_headers"));
                }
                max_forwards = self.max_forwards();
            }
        }
        let cseq = match cseq {
            Some(c) => c,
            None => self.cseq().ok_or(bad("cseq"))?,
        };
        for h in [From, To, CallId, CSeq, MaxForwards, ContentLength] {
            if self.count(h) > 1 {
                return Err(bad("duplicate_header"));
            }
        }
        let from = self.single_name_addr(From)?;
        let to = self.single_name_addr(To)?;
        let mut top_via = None;
        for h in self.of_name(Via) {
            if let Some(r) = self.sole_element(h) {
                if top_via.is_none() {
                    top_via = Some(values::Via::parse(&self.buf, r).map_err(|_| bad("via"))?);
                }
                continue;
            }
            for r in split_commas(&self.buf, h.value_range()) {
                if r.is_empty() {
                    return Err(bad("via"));
                }
                if top_via.is_none() {
                    top_via = Some(values::Via::parse(&self.buf, r).map_err(|_| bad("via"))?);
                }
            }
        }
        let top_via = top_via.ok_or(bad("via"))?;
        if self.count(ContentLength) == 1 {
            match self.content_length() {
                Some(n) if self.body_start.saturating_add(n) <= self.buf.len() => {}
                _ => return Err(bad("content_length")),
            }
        }
        if let Some(d) = self.first_value(Date)
            && !d.ends_with(b"GMT")
        {
            return Err(bad("date"));
        }
        for h in self.of_name(Contact) {
            if let Some(r) = self.sole_element(h) {
                let v = &self.buf[r];
                if find(v, b'<').is_none() && find(v, b'?').is_some() {
                    return Err(bad("contact"));
                }
                continue;
            }
            for r in split_commas(&self.buf, h.value_range()) {
                let v = &self.buf[r];
                if v.is_empty() || (!v.contains(&b'<') && v.contains(&b'?')) {
                    return Err(bad("contact"));
                }
            }
        }
        Ok(Parsed {
            ruri,
            top_via,
            from,
            to,
            cseq,
            max_forwards,
        })
    }

    /// From / To: exactly one value, a valid name-addr or addr-spec.
    fn single_name_addr(&self, name: HeaderName) -> Result<NameAddr<'_>, Invalid> {
        if let Some(v) = self.sole_value(name) {
            return NameAddr::parse(v).map_err(|_| bad("name_addr"));
        }
        let h = self.first(name).ok_or(bad("name_addr"))?;
        let mut vals = split_commas(&self.buf, h.value_range());
        match (vals.next(), vals.next()) {
            (Some(r), None) => NameAddr::parse(&self.buf[r]).map_err(|_| bad("name_addr")),
            _ => Err(bad("name_addr")),
        }
    }

    fn validate_uri<'a>(&self, uri: &'a [u8]) -> Result<Uri<'a>, Invalid> {
        // `Uri::parse` refuses an empty URI, LWS and `<` in it.
        let u = Uri::parse(uri).map_err(|_| bad("request_uri"))?;
        let s = u.scheme;
        if !(s.eq_ignore_ascii_case(b"sip")
            || s.eq_ignore_ascii_case(b"sips")
            || s.eq_ignore_ascii_case(b"tel"))
        {
            return Err(Invalid {
                status: 416,
                reason: "uri_scheme",
            });
        }
        if u.headers.is_some() {
            return Err(bad("request_uri_headers"));
        }
        Ok(u)
    }

    /// An INVITE offering SDP whose Accept excludes SDP cannot be answered
    /// by any UAS (RFC 4475 §3.3.15): 406 here saves the PBX the work.
    fn validate_accept(&self) -> Result<(), Invalid> {
        if self.count(HeaderName::Accept) == 0 || self.body_len() == 0 {
            return Ok(());
        }
        let is_sdp = self
            .first_value(HeaderName::ContentType)
            .is_some_and(|ct| ct.len() >= 15 && ct[..15].eq_ignore_ascii_case(b"application/sdp"));
        if !is_sdp {
            return Ok(());
        }
        let accepts_sdp = self.values(HeaderName::Accept).any(|(_, r)| {
            let v = &self.buf[r];
            let ty = &v[..v.iter().position(|&c| c == b';').unwrap_or(v.len())];
            let ty = &ty[trim(ty, 0..ty.len())];
            ty.is_empty()
                || ty == b"*/*"
                || ty.eq_ignore_ascii_case(b"application/*")
                || ty.eq_ignore_ascii_case(b"application/sdp")
        });
        if accepts_sdp {
            Ok(())
        } else {
            Err(Invalid {
                status: 406,
                reason: "accept",
            })
        }
    }
}

/// The line at `pos` whose `\n` is at `nl` (`None`: it runs to the end),
/// without its ending, and the start of the next line.
/// A header value `r` (after the colon, before the line ending) less
/// leading and trailing LWS: `trim`, with the common `: value` (one space,
/// then a value that neither starts nor ends with LWS) answered by three
/// byte tests.
#[inline(always)]
fn value_at(b: &[u8], r: Range<usize>) -> Range<usize> {
    if r.end > r.start + 1 && b[r.start] == b' ' && !is_lws(b[r.start + 1]) && !is_lws(b[r.end - 1])
    {
        return r.start + 1..r.end;
    }
    trim(b, r)
}

fn line_at(b: &[u8], pos: usize, nl: Option<usize>) -> (Range<usize>, usize) {
    match nl {
        Some(nl) => {
            let end = if nl > pos && b[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            (pos..end, nl + 1)
        }
        None => (pos..b.len(), b.len()),
    }
}

/// The positions of every `\n` and `:` from a starting point on, in
/// order, found one 64-byte block at a time (SSE2 on x86_64: four 16-byte
/// compares, their movemasks joined into one bit per byte) and handed out
/// by popping the lowest bit. A block is looked at only when the one
/// before it is used up, so the scan stops about where the headers do.
struct Marks<'b> {
    b: &'b [u8],
    /// Start of the current block.
    base: usize,
    /// The current block's marks not handed out yet (bit i: `b[base + i]`).
    mask: u64,
}

impl<'b> Marks<'b> {
    fn new(b: &'b [u8], from: usize) -> Marks<'b> {
        Marks {
            b,
            base: from,
            mask: block_marks(&b[from.min(b.len())..]),
        }
    }

    /// The next `\n` or `:`.
    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.base += 64;
            if self.base >= self.b.len() {
                // Stay at the end: later calls answer `None` as well.
                self.base = self.b.len();
                return None;
            }
            self.mask = block_marks(&self.b[self.base..]);
        }
        let i = self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(self.base + i)
    }

    /// The next `\n` (colons before it are passed over).
    #[inline]
    fn line_end(&mut self) -> Option<usize> {
        loop {
            let i = self.next()?;
            if self.b[i] == b'\n' {
                return Some(i);
            }
        }
    }
}

/// Bit i set where `b[i]` (i < 64) is `\n` or `:`.
#[inline]
fn block_marks(b: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if b.len() >= 64 {
            return sse2::marks64(b);
        }
        let mut mask = 0;
        let mut i = 0;
        while i + 16 <= b.len() {
            mask |= sse2::marks16(&b[i..]) << i;
            i += 16;
        }
        mask | scalar_marks(&b[i..b.len()]) << i
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        scalar_marks(&b[..b.len().min(64)])
    }
}

/// [`block_marks`] byte by byte: the plain definition (and the tail of a
/// buffer shorter than a block). `b` holds at most 64 bytes.
fn scalar_marks(b: &[u8]) -> u64 {
    b.iter().enumerate().fold(0, |mask, (i, &c)| {
        mask | (u64::from(c == b'\n' || c == b':') << i)
    })
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };

    /// The marks of `b[..16]` (`b` holds at least 16 bytes). SSE2 is part
    /// of every x86_64, so no run-time detection is needed.
    #[inline]
    pub(super) fn marks16(b: &[u8]) -> u64 {
        assert!(b.len() >= 16);
        // SAFETY: the assert keeps the unaligned 16-byte load inside `b`;
        // the rest are register operations of SSE2, which every x86_64
        // has.
        let hit = unsafe {
            let v = _mm_loadu_si128(b.as_ptr().cast::<__m128i>());
            _mm_movemask_epi8(_mm_or_si128(
                _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8)),
                _mm_cmpeq_epi8(v, _mm_set1_epi8(b':' as i8)),
            ))
        };
        // The movemask is 16 bits wide: one per byte.
        u64::from(hit as u16)
    }

    /// The marks of `b[..64]` (`b` holds at least 64 bytes).
    #[inline]
    pub(super) fn marks64(b: &[u8]) -> u64 {
        let b = &b[..64];
        marks16(b) | marks16(&b[16..]) << 16 | marks16(&b[32..]) << 32 | marks16(&b[48..]) << 48
    }
}

fn parse_start_line(b: &[u8], line: Range<usize>) -> Result<StartLine, ScanError> {
    let l = &b[line.clone()];
    if l.len() >= 4 && l[..4].eq_ignore_ascii_case(b"SIP/") {
        // SIP-Version SP Status-Code SP Reason-Phrase
        let sp = find(l, b' ').ok_or(ScanError::StartLine)?;
        let rest = &l[sp + 1..];
        let code_end = rest.iter().position(|&c| c == b' ').unwrap_or(rest.len());
        let code = &rest[..code_end];
        if code.len() != 3 {
            // Overlarge codes (`4294967301`) still scan; validate drops them.
            let n = parse_u64(code).ok_or(ScanError::StartLine)?;
            return Ok(StartLine::Response {
                code: n.min(u64::from(u16::MAX)) as u16,
                version: line.start..line.start + sp,
            });
        }
        let code = parse_u64(code).ok_or(ScanError::StartLine)? as u16;
        return Ok(StartLine::Response {
            code,
            version: line.start..line.start + sp,
        });
    }
    let sp1 = find(l, b' ').ok_or(ScanError::StartLine)?;
    if sp1 == 0 {
        return Err(ScanError::StartLine);
    }
    let method_range = line.start..line.start + sp1;
    let rest = line.start + sp1 + 1;
    let (uri, version) = match b[rest..line.end].iter().rposition(|&c| c == b' ') {
        Some(i) => (rest..rest + i, rest + i + 1..line.end),
        None => (rest..line.end, line.end..line.end),
    };
    Ok(StartLine::Request {
        method: Method::from_bytes(&b[method_range.clone()]),
        method_range,
        uri,
        version,
    })
}

/// Parses decimal digits (with surrounding LWS) into u64; `None` on
/// anything else or overflow.
pub fn parse_u64(v: &[u8]) -> Option<u64> {
    let r = trim(v, 0..v.len());
    let d = &v[r];
    if d.is_empty() || d.len() > 19 {
        return None;
    }
    // One pass: 19 digits never overflow.
    let mut n = 0u64;
    for &c in d {
        let digit = c.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n = n * 10 + u64::from(digit);
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A request whose header lines are `filler` `X-F<i>: <i>` lines, then
    /// `tail`.
    fn with_filler(filler: usize, tail: &[&str]) -> Bytes {
        let mut s = String::from("OPTIONS sip:a@b SIP/2.0\r\n");
        for i in 0..filler {
            s.push_str(&format!("X-F{i}: {i}\r\n"));
        }
        for l in tail {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        Bytes::from(s)
    }

    /// The scanner as it was before the mark stream (one `memchr` per
    /// line, a token walk for the name): what the scan must still find.
    mod reference {
        use super::super::*;

        fn next_line(b: &[u8], pos: usize) -> (Range<usize>, usize) {
            match memchr::memchr(b'\n', &b[pos..]) {
                Some(i) => line_at(b, pos, Some(pos + i)),
                None => line_at(b, pos, None),
            }
        }

        /// `Message::cseq` on a CSeq value before its one walk.
        pub fn cseq(v: &[u8]) -> Option<(u32, &[u8])> {
            let sp = v.iter().position(|&c| is_lws(c))?;
            let n = parse_u64(&v[..sp]).filter(|&n| n <= u64::from(u32::MAX))? as u32;
            let m = &v[sp..];
            let r = trim(m, 0..m.len());
            Some((n, &m[r]))
        }

        /// Start line, headers, header end, terminated, body start.
        pub type Scanned = (StartLine, Vec<Header>, usize, bool, usize);

        pub fn scan(b: &[u8]) -> Result<Scanned, ScanError> {
            let mut pos = b
                .iter()
                .position(|&c| c != b'\r' && c != b'\n')
                .ok_or(ScanError::Empty)?;
            let (line, next) = next_line(b, pos);
            let start = parse_start_line(b, line)?;
            pos = next;
            let mut headers: Vec<Header> = Vec::new();
            let (mut header_end, mut body_start, mut terminated) = (b.len(), b.len(), false);
            while pos < b.len() {
                let (line, next) = next_line(b, pos);
                if line.is_empty() {
                    header_end = pos;
                    body_start = next;
                    terminated = true;
                    break;
                }
                if matches!(b[pos], b' ' | b'\t') {
                    let h = headers.last_mut().ok_or(ScanError::HeaderLine)?;
                    let cont = trim(b, line);
                    if !cont.is_empty() {
                        if h.value.0 == h.value.1 {
                            h.value.0 = cont.start as u32;
                        }
                        h.value.1 = cont.end as u32;
                    }
                    h.end = next as u32;
                } else {
                    let l = &b[line.clone()];
                    let name_end =
                        line.start + l.iter().position(|&c| !is_token(c)).unwrap_or(l.len());
                    let mut colon = name_end;
                    while colon < line.end && matches!(b[colon], b' ' | b'\t') {
                        colon += 1;
                    }
                    if name_end == line.start || colon == line.end || b[colon] != b':' {
                        return Err(ScanError::HeaderLine);
                    }
                    let value = value_at(b, colon + 1..line.end);
                    headers.push(Header {
                        name: classify(&b[line.start..name_end]),
                        start: line.start as u32,
                        name_end: name_end as u32,
                        value: (value.start as u32, value.end as u32),
                        end: next as u32,
                    });
                }
                pos = next;
            }
            Ok((start, headers, header_end, terminated, body_start))
        }
    }

    /// What the scan found, in the reference's terms; `first`, `count`
    /// and `content_length` checked against the headers on the way.
    fn scanned(m: &Message) -> reference::Scanned {
        for k in 0..TRACKED {
            let of_k: Vec<usize> = (0..m.headers.len())
                .filter(|&i| m.headers[i].name as usize == k)
                .collect();
            assert_eq!(usize::from(m.count[k]), of_k.len());
            assert_eq!(of_k.first().map(|&i| i as u16).unwrap_or(NONE), m.first[k]);
        }
        let want_cl = m
            .first(HeaderName::ContentLength)
            .and_then(|h| parse_u64(m.value(h)))
            .map(|n| n as usize);
        assert_eq!(m.content_length, want_cl);
        (
            m.start.clone(),
            m.headers.to_vec(),
            m.header_end,
            m.terminated,
            m.body_start,
        )
    }

    /// Pieces SIP messages are made of, line ends and colons
    /// over-represented, spliced anywhere.
    fn sip_text() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            prop::sample::select(vec![
                &b"INVITE sip:a@b SIP/2.0\r\n"[..],
                b"SIP/2.0 200 OK\r\n",
                b"Via: SIP/2.0/UDP h;branch=z9\r\n",
                b"v :x\r\n",
                b"Content-Length: 4\r\n",
                b"l:  12 \r\n",
                b"X-CRM-A: 1\n",
                b"Call-ID:c@h\r\n",
                b" folded\r\n",
                b"\tmore \r\n",
                b"\r\n",
                b"\n",
                b"\r",
                b":",
                b" ",
                b"\t",
                b"Bad Name: x\r\n",
                b"To",
                b"abcdefghijklmnopqrstuvwxyz0123456789",
            ])
            .prop_map(|s| s.to_vec()),
            any::<u8>().prop_map(|c| vec![c]),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|ps| ps.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The mark-stream scan indexes every message as the
        /// line-by-line scan did, and refuses what it refused.
        #[test]
        fn scan_agrees_with_the_reference(text in sip_text(), head in 0usize..3) {
            let mut b = [&b"OPTIONS sip:x SIP/2.0\r\n"[..], b"", b"\r\n"][head].to_vec();
            b.extend_from_slice(&text);
            let got = Message::scan(Bytes::from(b.clone())).map(|m| scanned(&m));
            prop_assert_eq!(got, reference::scan(&b));
        }

        /// CSeq's one walk reads what `parse_u64` and the LWS search read.
        #[test]
        fn cseq_agrees_with_the_reference(
            digits in prop::sample::select(vec!["1", "314159", "0", "4294967295", "4294967296", "00000000000000000001", "0000000000000000001", "99999999999", "", "1a", "+1"]),
            gap in prop::sample::select(vec![" ", "\t", "  ", "", "\r\n "]),
            method in prop::sample::select(vec!["INVITE", "ACK", "", "IN VITE"]),
        ) {
            let b = format!("OPTIONS sip:x SIP/2.0\r\nCSeq: {digits}{gap}{method}\r\n\r\n");
            let m = Message::scan(Bytes::from(b)).unwrap();
            prop_assert_eq!(m.cseq(), reference::cseq(m.first_value(HeaderName::CSeq).unwrap()));
        }

        /// `values` (a comma-free value taken whole) yields what the
        /// comma walk over every header of the name yields.
        #[test]
        fn values_are_the_comma_walk(
            vals in proptest::collection::vec(prop::sample::select(vec!["a", "a, b", "\"x,y\" <sip:a>", "<sip:a,b>", ",", "a,,b", "  c ", "", "d ,"]), 0..5),
        ) {
            let mut b = String::from("OPTIONS sip:x SIP/2.0\r\n");
            for v in &vals {
                b.push_str(&format!("Route: {v}\r\nX-A: 1\r\n"));
            }
            b.push_str("\r\n");
            let m = Message::scan(Bytes::from(b)).unwrap();
            let got: Vec<_> = m.values(HeaderName::Route).collect();
            let want: Vec<_> = m
                .headers()
                .iter()
                .enumerate()
                .filter(|(_, h)| h.name == HeaderName::Route)
                .flat_map(|(i, h)| split_commas(m.buf(), h.value_range()).map(move |r| (i, r)))
                .collect();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(m.first_element(HeaderName::Route), want.first().map(|(_, r)| r.clone()));
            prop_assert_eq!(&m.first_two_values(HeaderName::Route)[..], &want[..want.len().min(2)]);
        }

        /// A value's quick trim is `trim`.
        #[test]
        fn value_at_is_trim(v in proptest::collection::vec(prop::sample::select(b" \t\r\nab:".to_vec()), 0..8), s in 0usize..8, e in 0usize..8) {
            let (s, e) = (s.min(v.len()), e.min(v.len()));
            let r = s.min(e)..e.max(s);
            prop_assert_eq!(value_at(&v, r.clone()), trim(&v, r));
        }

        /// The marks are every `\n` and `:` from the start on, in order.
        #[test]
        fn marks_are_every_newline_and_colon(
            b in proptest::collection::vec(any::<u8>().prop_map(|c| [c, b'\n', b':', b'a'][usize::from(c % 4)]), 0..300),
            from in 0usize..300,
        ) {
            let from = from.min(b.len());
            let mut marks = Marks::new(&b, from);
            let got: Vec<usize> = std::iter::from_fn(|| marks.next()).collect();
            let want: Vec<usize> = (from..b.len()).filter(|&i| b[i] == b'\n' || b[i] == b':').collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(marks.next(), None);
            for s in [0, 1, 17, 63].into_iter().filter(|&s| s <= b.len()) {
                let chunk = &b[s..b.len().min(s + 64)];
                prop_assert_eq!(block_marks(&b[s..]), scalar_marks(chunk));
            }
        }
    }

    /// Index 255 and beyond: each tracked name's first header is the one at
    /// its own index, not a neighbour's.
    #[test]
    fn first_header_of_a_name_is_found_at_any_index() {
        // The issue's case: the first Call-ID is header 255 of 256.
        let m = Message::scan(with_filler(255, &["Call-ID: the-call"])).unwrap();
        assert_eq!(m.call_id(), b"the-call");
        for filler in [253, 254, 255, 256, 1000, 5000] {
            let m = Message::scan(with_filler(
                filler,
                &["Call-ID: the-call", "Max-Forwards: 7", "Max-Forwards: 9"],
            ))
            .unwrap();
            assert_eq!(m.headers().len(), filler + 3);
            let h = m.first(HeaderName::CallId).expect("a Call-ID");
            assert_eq!(h, &m.headers()[filler], "filler {filler}");
            assert_eq!(m.call_id(), b"the-call", "filler {filler}");
            let h = m.first(HeaderName::MaxForwards).expect("a Max-Forwards");
            assert_eq!(h, &m.headers()[filler + 1], "filler {filler}");
            assert_eq!(m.max_forwards(), Some(7), "filler {filler}");
            assert_eq!(m.count(HeaderName::MaxForwards), 2);
            assert!(m.first(HeaderName::Via).is_none());
        }
    }

    /// The header count is capped where the index type ends: one more line
    /// is refused, not mapped onto another header.
    #[test]
    fn header_lines_beyond_the_cap_are_refused() {
        let m = Message::scan(with_filler(MAX_HEADERS - 1, &["Call-ID: last"])).unwrap();
        assert_eq!(m.headers().len(), MAX_HEADERS);
        assert_eq!(m.call_id(), b"last");
        assert_eq!(
            Message::scan(with_filler(MAX_HEADERS, &["Call-ID: last"])).unwrap_err(),
            ScanError::TooManyHeaders
        );
    }
}
