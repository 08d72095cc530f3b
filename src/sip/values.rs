//! Parsers for the header values the proxy reads: comma-separated lists,
//! Via, name-addr (From / To / P-Asserted-Identity / Route), SIP URIs.
//! All borrow from the message buffer; positions that edits need are
//! absolute byte ranges into it. Folded lines (CRLF + SP) count as spaces.

use std::ops::Range;

use super::header::{eq_lower, is_token};

/// The first byte of `hay` that `hit` marks (16 bytes at a time with
/// SSE2 on x86_64, `hit16` giving one bit per byte of a 16-byte chunk).
/// Header values are tens of bytes: this inlined loop costs a fraction of
/// a `memchr` call's set-up and dispatch, which pays off only on long
/// haystacks.
#[inline(always)]
fn find_by(hay: &[u8], hit: impl Fn(u8) -> bool, hit16: impl Fn(&[u8]) -> u32) -> Option<usize> {
    let n = hay.len();
    #[cfg(target_arch = "x86_64")]
    if n >= 16 {
        let mut i = 0;
        while i + 16 <= n {
            let m = hit16(&hay[i..]);
            if m != 0 {
                return Some(i + m.trailing_zeros() as usize);
            }
            i += 16;
        }
        if i == n {
            return None;
        }
        // The last 16 bytes, less those already looked at.
        let m = hit16(&hay[n - 16..]) >> (16 - (n - i));
        return (m != 0).then(|| i + m.trailing_zeros() as usize);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = &hit16;
    hay.iter().position(|&c| hit(c))
}

/// The first `a` in `hay` (`memchr` for short haystacks).
#[inline]
pub fn find(hay: &[u8], a: u8) -> Option<usize> {
    find_by(hay, |c| c == a, |h| sse2::eq(h, &[a]))
}

/// The first `a` or `b` in `hay`.
#[inline]
pub fn find2(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    find_by(hay, |c| c == a || c == b, |h| sse2::eq(h, &[a, b]))
}

/// The first `a`, `b` or `c` in `hay`.
#[inline]
pub fn find3(hay: &[u8], a: u8, b: u8, c: u8) -> Option<usize> {
    find_by(
        hay,
        |x| x == a || x == b || x == c,
        |h| sse2::eq(h, &[a, b, c]),
    )
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8, _mm_setzero_si128,
    };

    /// Bit i set where `h[i]` (i < 16) is one of `any`; `h` holds at
    /// least 16 bytes.
    #[inline(always)]
    pub(super) fn eq(h: &[u8], any: &[u8]) -> u32 {
        assert!(h.len() >= 16);
        // SAFETY: the assert keeps the unaligned 16-byte load inside `h`;
        // the rest are register operations of SSE2, which every x86_64
        // has.
        unsafe {
            let v = _mm_loadu_si128(h.as_ptr().cast::<__m128i>());
            let mut hit = _mm_setzero_si128();
            for &a in any {
                hit = _mm_or_si128(hit, _mm_cmpeq_epi8(v, _mm_set1_epi8(a as i8)));
            }
            _mm_movemask_epi8(hit) as u32
        }
    }

    /// Bit i set where `h[i]` (i < 16) is at most `0x20`, where it is
    /// `a`, and where it is `b`; `h` holds at least 16 bytes.
    #[inline(always)]
    pub(super) fn low_and_eq2(h: &[u8], a: u8, b: u8) -> [u32; 3] {
        assert!(h.len() >= 16);
        // SAFETY: as in `eq`: the load stays inside `h`, the rest is SSE2.
        unsafe {
            let v = _mm_loadu_si128(h.as_ptr().cast::<__m128i>());
            let space = _mm_set1_epi8(0x20);
            // max(v, 0x20) == 0x20 exactly where v <= 0x20 (unsigned).
            let low = _mm_cmpeq_epi8(_mm_max_epu8(v, space), space);
            let a = _mm_cmpeq_epi8(v, _mm_set1_epi8(a as i8));
            let b = _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8));
            [
                _mm_movemask_epi8(low) as u32,
                _mm_movemask_epi8(a) as u32,
                _mm_movemask_epi8(b) as u32,
            ]
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod sse2 {
    /// Not used off x86_64 (`find_by` walks bytes there).
    pub(super) fn eq(_: &[u8], _: &[u8]) -> u32 {
        0
    }
}

/// Linear white space, including the CR/LF of a folded line.
#[inline]
pub fn is_lws(b: u8) -> bool {
    // One compare and a bit test: bits 9, 10, 13 and 32 are `\t`, `\n`,
    // `\r` and ` `.
    b <= b' ' && (0x1_0000_2600u64 >> b) & 1 != 0
}

/// `range` with leading and trailing LWS removed.
pub fn trim(buf: &[u8], mut r: Range<usize>) -> Range<usize> {
    while r.start < r.end && is_lws(buf[r.start]) {
        r.start += 1;
    }
    while r.end > r.start && is_lws(buf[r.end - 1]) {
        r.end -= 1;
    }
    r
}

/// Splits a header value at top-level commas (not inside quotes or `<>`),
/// yielding trimmed absolute ranges. Empty elements are yielded as empty
/// ranges so callers can refuse `a,,b`.
pub fn split_commas(buf: &[u8], r: Range<usize>) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut pos = r.start;
    let end = r.end;
    let mut done = r.start >= r.end;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let start = pos;
        let i = next_comma(buf, pos, end);
        if i >= end {
            done = true;
        } else {
            pos = i + 1;
        }
        Some(trim(buf, start..i))
    })
}

/// The top-level comma ending the element that starts at `i` (or `end`),
/// jumping from one interesting byte to the next (a byte-by-byte walk
/// measured dearer under callgrind even for 60-byte values).
fn next_comma(buf: &[u8], mut i: usize, end: usize) -> usize {
    loop {
        match find3(&buf[i..end], b',', b'"', b'<') {
            None => return end,
            Some(o) => {
                i += o;
                match buf[i] {
                    b',' => return i,
                    b'"' => i = skip_quoted(buf, i + 1, end),
                    _ => i = find(&buf[i..end], b'>').map_or(end, |o| i + o + 1),
                }
                if i >= end {
                    return end;
                }
            }
        }
    }
}

/// Index just past the closing quote of a quoted string whose body starts
/// at `i` (backslash escapes honoured), or `end` if it is not closed.
fn skip_quoted(buf: &[u8], mut i: usize, end: usize) -> usize {
    while i < end {
        match find2(&buf[i..end], b'"', b'\\') {
            None => return end,
            Some(o) if buf[i + o] == b'"' => return i + o + 1,
            Some(o) => i += o + 2,
        }
    }
    end
}

/// Value of `;name=value` (or `Some(b"")` for a bare `;name`) in a param list.
/// `name` holds no `=`, `;` or LWS.
pub fn param<'a>(params: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut start = 0;
    loop {
        // The piece up to the next `;` (a byte loop: pieces are short, a
        // `memchr` call costs more than it saves).
        let mut end = start;
        while end < params.len() && params[end] != b';' {
            end += 1;
        }
        if let Some(v) = param_value(trim_slice(&params[start..end]), name) {
            return Some(v);
        }
        if end == params.len() {
            return None;
        }
        start = end + 1;
    }
}

/// The value of one trimmed parameter `p` if it is named `name` (empty for
/// a bare name). Compares the name in place; only a candidate is looked at
/// further.
fn param_value<'a>(p: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    if p.len() >= name.len() && p[..name.len()].eq_ignore_ascii_case(name) {
        return value_after(p, name.len());
    }
    None
}

/// [`param_value`] for a `name` of lower-case letters only (the Via's
/// known parameters), compared a word at a time.
fn known_value<'a>(p: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    if p.len() >= name.len() && eq_lower(&p[..name.len()], name) {
        return value_after(p, name.len());
    }
    None
}

/// What follows a matched name `p[..n]` of a trimmed parameter: nothing
/// (a bare name: empty), or LWS, `=` and the trimmed value; `None` when
/// the parameter's name only starts with it.
#[inline]
fn value_after(p: &[u8], n: usize) -> Option<&[u8]> {
    let after = &p[n..];
    if after.is_empty() {
        return Some(after);
    }
    let mut lws = 0;
    while lws < after.len() && is_lws(after[lws]) {
        lws += 1;
    }
    // `p` is trimmed: LWS after the name is followed by something.
    if after[lws] == b'=' {
        return Some(trim_slice(&after[lws + 1..]));
    }
    None
}

fn trim_slice(s: &[u8]) -> &[u8] {
    let r = trim(s, 0..s.len());
    &s[r]
}

/// Why a value did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueError {
    Via,
    NameAddr,
    Uri,
}

/// One Via value: `SIP/2.0/UDP host:port;branch=..;received=..;rport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via<'a> {
    /// `UDP`, `TCP`, ... as written.
    pub transport: &'a [u8],
    /// sent-by host (IPv6 with brackets).
    pub host: &'a [u8],
    /// sent-by port, if given.
    pub port: Option<u16>,
    /// Parameters after the sent-by (starting at the first `;`), raw.
    pub params: &'a [u8],
    /// Absolute range of the whole value (for inserting `;received=`).
    pub range: Range<usize>,
    /// The parameters the proxy reads, found by the parse's one walk
    /// over `params` (what `param` would find).
    known: ViaParams<'a>,
}

/// `branch`, `received` and `rport` of a Via, and where a bare `;rport`
/// ends (offset into `params`, for writing `=port` after it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ViaParams<'a> {
    branch: Option<&'a [u8]>,
    received: Option<&'a [u8]>,
    rport: Option<&'a [u8]>,
    bare_rport_end: Option<usize>,
}

impl<'a> ViaParams<'a> {
    /// Records `p` (one trimmed, non-empty parameter) if it is the first
    /// `branch`, `received` or `rport`, its value read by `value_of`.
    #[inline(always)]
    fn note(&mut self, p: &'a [u8], value_of: fn(&'a [u8], &[u8]) -> Option<&'a [u8]>) {
        match p[0] | 0x20 {
            b'b' if self.branch.is_none() => self.branch = value_of(p, b"branch"),
            b'r' => {
                if self.received.is_none() {
                    self.received = value_of(p, b"received");
                }
                if self.rport.is_none() {
                    self.rport = value_of(p, b"rport");
                }
            }
            _ => {}
        }
    }

    /// One walk over `params` (starting with `;`, or empty): the known
    /// parameters, or `None` when a parameter has no name (`;;`, a
    /// trailing `;`).
    fn walk(params: &'a [u8]) -> Option<ViaParams<'a>> {
        let mut known = ViaParams::default();
        if params.is_empty() {
            return Some(known);
        }
        let mut off = 1;
        loop {
            let mut end = off;
            while end < params.len() && params[end] != b';' {
                end += 1;
            }
            let piece = &params[off..end];
            let p = trim_slice(piece);
            if p.is_empty() {
                return None;
            }
            known.note(p, known_value);
            if known.bare_rport_end.is_none() && piece.len() >= 5 {
                // `trim_ascii` (form feed too), as the proxy's search
                // before this walk did.
                let t = piece.trim_ascii();
                if t.len() == 5 && eq_lower(t, b"rport") {
                    let lead = piece.len() - piece.trim_ascii_start().len();
                    known.bare_rport_end = Some(off + lead + t.len());
                }
            }
            if end == params.len() {
                return Some(known);
            }
            off = end + 1;
        }
    }
}

impl<'a> Via<'a> {
    /// Parses the value at `r` (already trimmed, one comma element).
    pub fn parse(buf: &'a [u8], r: Range<usize>) -> Result<Via<'a>, ValueError> {
        let v = &buf[r.clone()];
        // Nearly every Via starts `SIP/2.0/` without blanks: one 8-byte
        // compare (bit 0x20 ORed into the three letters: either case)
        // instead of the slash and trim walks below.
        if let Some(head) = v.first_chunk::<8>()
            && u64::from_le_bytes(*head) | 0x0020_2020 == u64::from_le_bytes(*b"sip/2.0/")
        {
            if let Some(via) = Via::without_blanks(v, r.clone()) {
                return Ok(via);
            }
            return Via::after_version(v, 8, r);
        }
        let slash2 = v
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .nth(1)
            .map(|(i, _)| i)
            .ok_or(ValueError::Via)?;
        let (name, version) = split2(&v[..slash2], b'/').ok_or(ValueError::Via)?;
        if !trim_slice(name).eq_ignore_ascii_case(b"SIP") || trim_slice(version) != b"2.0" {
            return Err(ValueError::Via);
        }
        Via::after_version(v, slash2 + 1, r)
    }

    /// The common Via (up to 72 bytes), `SIP/2.0/` then the transport,
    /// one blank, the sent-by and parameters with no blank or control byte
    /// in them, read from three bit masks (bytes up to `0x20`, `;`, `:`)
    /// taken 16 bytes at a time: the transport ends at the one blank, the
    /// sent-by at the first `;` after it (its host at its first `:`), each
    /// parameter at the next `;`, and no parameter needs trimming. `None` for anything else, also for what is not a valid
    /// Via: [`Via::after_version`] then reads it (or refuses it) byte by
    /// byte. What it returns is what that walk returns (a proptest
    /// compares them).
    #[inline]
    fn without_blanks(v: &'a [u8], r: Range<usize>) -> Option<Via<'a>> {
        let [low, mut semis, colons] = via_masks(v, 8)?;
        if low.count_ones() != 1 {
            return None;
        }
        let s = low.trailing_zeros() as usize;
        let blank = 8 + s;
        if s == 0 || !matches!(v[blank], b' ' | b'\t') || !v[8..blank].iter().all(|&c| is_token(c))
        {
            return None;
        }
        let h0 = blank + 1;
        if h0 == v.len() {
            return None;
        }
        // `;` and `:` bits from the sent-by on (no `;` before it: the
        // transport is a token); bit k is `v[h0 + k]`.
        semis >>= s + 1;
        let p0 = if semis == 0 {
            v.len()
        } else {
            h0 + semis.trailing_zeros() as usize
        };
        if p0 == h0 {
            return None;
        }
        // The sent-by's first colon, if it has one, is the first `:` bit
        // after the blank.
        let (host, port) = host_port_at(&v[h0..p0], || {
            let c = (colons >> (s + 1)).trailing_zeros() as usize;
            (h0 + c < p0).then_some(c)
        })?;
        let params = &v[p0..];
        let mut known = ViaParams::default();
        if !params.is_empty() {
            // Each parameter from just past one `;` to the next.
            semis &= semis - 1;
            let mut off = 1;
            loop {
                let end = if semis == 0 {
                    params.len()
                } else {
                    h0 + semis.trailing_zeros() as usize - p0
                };
                semis &= semis.wrapping_sub(1);
                let p = &params[off..end];
                if p.is_empty() {
                    return None;
                }
                known.note(p, bare_or_value);
                if known.bare_rport_end.is_none() && p.len() == 5 && eq_lower(p, b"rport") {
                    known.bare_rport_end = Some(end);
                }
                if end == params.len() {
                    break;
                }
                off = end + 1;
            }
        }
        Some(Via {
            transport: &v[8..blank],
            host,
            port,
            params,
            range: r,
            known,
        })
    }

    /// The rest of a Via whose protocol name and version end before
    /// `v[i]`, in one forward walk: LWS, the transport token, LWS, the
    /// sent-by up to the first `;` (no LWS inside it), the parameters.
    fn after_version(v: &'a [u8], mut i: usize, r: Range<usize>) -> Result<Via<'a>, ValueError> {
        let n = v.len();
        while i < n && is_lws(v[i]) {
            i += 1;
        }
        let t0 = i;
        while i < n && is_token(v[i]) {
            i += 1;
        }
        // The transport must be a token followed by LWS.
        if i == t0 || i == n || !is_lws(v[i]) {
            return Err(ValueError::Via);
        }
        let transport = &v[t0..i];
        while i < n && is_lws(v[i]) {
            i += 1;
        }
        if i == n {
            return Err(ValueError::Via);
        }
        let s0 = i;
        // The sent-by's end less trailing LWS; LWS before another byte of
        // it refuses the Via (as `host_port` does).
        let mut s1 = s0;
        let mut blank = false;
        while i < n && v[i] != b';' {
            if is_lws(v[i]) {
                blank = true;
            } else if blank {
                return Err(ValueError::Via);
            } else {
                s1 = i + 1;
            }
            i += 1;
        }
        let (host, port) = host_port_no_lws(&v[s0..s1]).ok_or(ValueError::Via)?;
        let params = &v[i..];
        // Every parameter must have a name: `;;` or a trailing `;` is junk.
        let known = ViaParams::walk(params).ok_or(ValueError::Via)?;
        Ok(Via {
            transport,
            host,
            port,
            params,
            range: r,
            known,
        })
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.known.branch
    }

    /// The `received` parameter.
    pub fn received(&self) -> Option<&'a [u8]> {
        self.known.received
    }

    /// The `rport` parameter: `Some(None)` when present without a value.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.known.rport.map(parse_u16)
    }

    /// Offset into `params` just past the first bare `;rport` (where
    /// `=port` goes).
    pub fn bare_rport_end(&self) -> Option<usize> {
        self.known.bare_rport_end
    }
}

/// The value of a parameter `p` without blanks if it is named `name`
/// (lower-case letters): empty for a bare name, what follows `=` for
/// `name=value`; `None` when the name only starts with `name`.
#[inline]
fn bare_or_value<'a>(p: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let n = name.len();
    if p.len() < n || !eq_lower(&p[..n], name) {
        return None;
    }
    match p.get(n) {
        None => Some(&p[n..]),
        Some(b'=') => Some(&p[n + 1..]),
        Some(_) => None,
    }
}

/// Three bit masks over `v[from..]` (16 to 64 bytes, else `None`): bit
/// j set where `v[from + j]` is at most `0x20` (blanks, CR, LF, every
/// control byte), where it is `;`, and where it is `:`. SSE2 16 bytes at a
/// time on x86_64 (the last 16 bytes of `v` for a shorter tail, shifted).
#[inline]
fn via_masks(v: &[u8], from: usize) -> Option<[u64; 3]> {
    let m = v.len().checked_sub(from)?;
    if !(16..=64).contains(&m) {
        return None;
    }
    let mut masks = [0u64; 3];
    let mut j = 0;
    while j + 16 <= m {
        for (mask, bits) in masks.iter_mut().zip(via_masks16(&v[from + j..])) {
            *mask |= u64::from(bits) << j;
        }
        j += 16;
    }
    if j < m {
        let shift = 16 - (m - j);
        for (mask, bits) in masks.iter_mut().zip(via_masks16(&v[v.len() - 16..])) {
            *mask |= u64::from(bits >> shift) << j;
        }
    }
    Some(masks)
}

/// [`via_masks`] of `h[..16]`.
#[inline(always)]
fn via_masks16(h: &[u8]) -> [u32; 3] {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::low_and_eq2(h, b';', b':')
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        h[..16]
            .iter()
            .enumerate()
            .fold([0; 3], |[l, s, c], (i, &b)| {
                [
                    l | u32::from(b <= b' ') << i,
                    s | u32::from(b == b';') << i,
                    c | u32::from(b == b':') << i,
                ]
            })
    }
}

fn split2(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

/// Parses a decimal u16 (no sign, no spaces).
pub fn parse_u16(s: &[u8]) -> Option<u16> {
    if s.is_empty() || s.len() > 5 {
        return None;
    }
    let mut n = 0u32;
    for &c in s {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n * 10 + u32::from(d);
    }
    u16::try_from(n).ok()
}

/// Splits `host[:port]` (IPv6 in brackets). The host must not be empty and
/// must not hold spaces; an unbracketed host with several colons is refused.
pub fn host_port(s: &[u8]) -> Option<(&[u8], Option<u16>)> {
    if s.iter().any(|&b| is_lws(b)) {
        return None;
    }
    host_port_no_lws(s)
}

/// [`host_port`] of a value already known to hold no LWS.
fn host_port_no_lws(s: &[u8]) -> Option<(&[u8], Option<u16>)> {
    host_port_at(s, || s.iter().position(|&b| b == b':'))
}

/// [`host_port_no_lws`] where `colon` says where the first `:` of an
/// unbracketed `s` is (a parse that has found it already says so).
#[inline(always)]
fn host_port_at(s: &[u8], colon: impl FnOnce() -> Option<usize>) -> Option<(&[u8], Option<u16>)> {
    if s.is_empty() {
        return None;
    }
    if s[0] == b'[' {
        let close = s.iter().position(|&b| b == b']')?;
        let host = &s[..=close];
        return match &s[close + 1..] {
            [] => Some((host, None)),
            [b':', port @ ..] => Some((host, Some(parse_u16(port)?))),
            _ => None,
        };
    }
    match colon() {
        None => Some((s, None)),
        Some(i) => {
            let (h, p) = (&s[..i], &s[i + 1..]);
            // A second colon (unbracketed IPv6) is refused; so is a port
            // that is not a number, which any colon left in it is not.
            if h.is_empty() {
                return None;
            }
            Some((h, Some(parse_u16(p)?)))
        }
    }
}

/// Byte classes of `Uri::parse`'s walk.
const PLAIN: u8 = 0;
const BAD: u8 = 1;
const COLON: u8 = 2;
const AT: u8 = 3;
const QUESTION: u8 = 4;
const SEMI: u8 = 5;

/// The class of each byte: LWS and `<>` are refused, `:@?;` recorded.
static URI_CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    t[b' ' as usize] = BAD;
    t[b'\t' as usize] = BAD;
    t[b'\r' as usize] = BAD;
    t[b'\n' as usize] = BAD;
    t[b'<' as usize] = BAD;
    t[b'>' as usize] = BAD;
    t[b':' as usize] = COLON;
    t[b'@' as usize] = AT;
    t[b'?' as usize] = QUESTION;
    t[b';' as usize] = SEMI;
    t
};

/// Bit i set where `s[base + i]` (i < 16, inside `s`) is not `PLAIN` in
/// [`URI_CLASS`]: ten SSE2 compares on x86_64 (a 16-byte load ending at
/// the end of a shorter tail, shifted), the table elsewhere.
#[inline]
fn uri_specials(s: &[u8], base: usize) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if s.len() >= 16 {
        const SPECIAL: [u8; 10] = *b" \t\r\n<>:@?;";
        return if base + 16 <= s.len() {
            sse2::eq(&s[base..], &SPECIAL)
        } else {
            let from = s.len() - 16;
            sse2::eq(&s[from..], &SPECIAL) >> (base - from)
        };
    }
    uri_specials_plain(&s[base.min(s.len())..])
}

/// [`uri_specials`] by the table: the plain definition (and the path for
/// URIs shorter than 16 bytes).
fn uri_specials_plain(s: &[u8]) -> u32 {
    s.iter().take(16).enumerate().fold(0, |m, (i, &c)| {
        m | u32::from(URI_CLASS[usize::from(c)] != PLAIN) << i
    })
}

/// A SIP or SIPS URI (other schemes parse with `user`/`host` empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: &'a [u8],
    pub user: Option<&'a [u8]>,
    pub host: &'a [u8],
    pub port: Option<u16>,
    /// `;params` after the host, raw (starting with `;`, or empty).
    pub params: &'a [u8],
    /// `?headers`, raw without the `?`.
    pub headers: Option<&'a [u8]>,
}

impl<'a> Uri<'a> {
    /// Parses an absolute URI. `sip:`/`sips:` get user, host, port, params;
    /// `tel:` gets the number as `user`; others only the scheme.
    pub fn parse(s: &'a [u8]) -> Result<Uri<'a>, ValueError> {
        // One walk over the bytes: LWS and angle brackets anywhere refuse
        // the URI; the scheme's colon and, after it, the first `@`, `?`
        // and `;` (each also the first after the `@`) are recorded, so
        // that no part is searched again.
        const NONE: usize = usize::MAX;
        let (mut colon, mut at) = (NONE, NONE);
        // First `?` / `;` after the colon, and after the `@`.
        let (mut q_rest, mut q_host, mut semi_rest, mut semi_host) = (NONE, NONE, NONE, NONE);
        // First `:` after the scheme's, and after the `@` (a port's).
        let (mut colon_rest, mut colon_host) = (NONE, NONE);
        // The bytes that are not plain, 16 at a time: plain ones (nearly
        // all) are never looked at one by one.
        let mut base = 0;
        let mut mask = uri_specials(s, 0);
        loop {
            while mask == 0 {
                base += 16;
                if base >= s.len() {
                    break;
                }
                mask = uri_specials(s, base);
            }
            if mask == 0 {
                break;
            }
            let i = base + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            match URI_CLASS[usize::from(s[i])] {
                BAD => return Err(ValueError::Uri),
                COLON => {
                    if colon == NONE {
                        colon = i;
                    } else {
                        if colon_rest == NONE {
                            colon_rest = i;
                        }
                        if at != NONE && colon_host == NONE {
                            colon_host = i;
                        }
                    }
                }
                _ if colon == NONE => {}
                AT => {
                    if at == NONE {
                        at = i;
                    }
                }
                QUESTION => {
                    if q_rest == NONE {
                        q_rest = i;
                    }
                    if at != NONE && q_host == NONE {
                        q_host = i;
                    }
                }
                _ => {
                    if semi_rest == NONE {
                        semi_rest = i;
                    }
                    if at != NONE && semi_host == NONE {
                        semi_host = i;
                    }
                }
            }
        }
        if s.is_empty() || colon == NONE {
            return Err(ValueError::Uri);
        }
        let scheme = &s[..colon];
        if scheme.is_empty() || !scheme[0].is_ascii_alphabetic() {
            return Err(ValueError::Uri);
        }
        let mut uri = Uri {
            scheme,
            user: None,
            host: &[],
            port: None,
            params: &[],
            headers: None,
        };
        if scheme.eq_ignore_ascii_case(b"tel") {
            let end = semi_rest.min(s.len());
            uri.user = Some(&s[colon + 1..end]);
            uri.params = &s[end..];
            return Ok(uri);
        }
        if !(scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips")) {
            return Ok(uri);
        }
        // userinfo never holds an unescaped '@' but may hold '?' and ';'.
        let (host_start, q, semi, port_colon) = if at == NONE {
            (colon + 1, q_rest, semi_rest, colon_rest)
        } else {
            uri.user = Some(&s[colon + 1..at]);
            (at + 1, q_host, semi_host, colon_host)
        };
        let host_end = if q == NONE {
            s.len()
        } else {
            uri.headers = Some(&s[q + 1..]);
            q
        };
        // The first `;` of the host part, if it comes before the headers.
        let hp_end = if semi < host_end { semi } else { host_end };
        // The host's first colon is the one the walk found.
        let (host, port) = host_port_at(&s[host_start..hp_end], || {
            (port_colon < hp_end).then(|| port_colon - host_start)
        })
        .ok_or(ValueError::Uri)?;
        uri.host = host;
        uri.port = port;
        uri.params = &s[hp_end..host_end];
        Ok(uri)
    }

    /// The user part without user parameters (`;npdi`, ...).
    pub fn user_number(&self) -> Option<&'a [u8]> {
        self.user
            .map(|u| &u[..u.iter().position(|&b| b == b';').unwrap_or(u.len())])
    }

    /// Whether a `;lr` parameter is present.
    pub fn is_loose(&self) -> bool {
        param(self.params, b"lr").is_some()
    }

    /// The `transport` parameter.
    pub fn transport(&self) -> Option<&'a [u8]> {
        param(self.params, b"transport")
    }
}

/// `"Display" <uri>;params` or `uri;params` (From, To, PAI, Route, Contact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name as written (quotes kept), if any.
    pub display: Option<&'a [u8]>,
    /// The URI text.
    pub uri: &'a [u8],
    /// Header parameters after the URI, raw (starting with `;` or empty).
    pub params: &'a [u8],
}

impl<'a> NameAddr<'a> {
    /// Parses one (trimmed) name-addr or addr-spec.
    pub fn parse(v: &'a [u8]) -> Result<NameAddr<'a>, ValueError> {
        let mut display = None;
        let mut i = 0;
        // A quoted display name must be closed.
        if v.first() == Some(&b'"') {
            i = 1;
            loop {
                match v.get(i) {
                    None => return Err(ValueError::NameAddr),
                    Some(b'\\') => i += 2,
                    Some(b'"') => break,
                    Some(_) => i += 1,
                }
            }
            display = Some(&v[..=i]);
            i += 1;
        }
        match find(&v[i..], b'<') {
            Some(lt) => {
                let lt = i + lt;
                let before = trim_slice(&v[i..lt]);
                if display.is_none() && !before.is_empty() {
                    // Unquoted display name: tokens separated by LWS only.
                    if !before.iter().all(|&b| is_token(b) || is_lws(b)) {
                        return Err(ValueError::NameAddr);
                    }
                    display = Some(before);
                } else if display.is_some() && !before.is_empty() {
                    return Err(ValueError::NameAddr);
                }
                let gt = lt + find(&v[lt..], b'>').ok_or(ValueError::NameAddr)?;
                let uri = &v[lt + 1..gt];
                if uri.is_empty() || is_lws(uri[0]) || is_lws(uri[uri.len() - 1]) {
                    return Err(ValueError::NameAddr);
                }
                let params = trim_slice(&v[gt + 1..]);
                if !params.is_empty() && params[0] != b';' {
                    return Err(ValueError::NameAddr);
                }
                Ok(NameAddr {
                    display,
                    uri,
                    params,
                })
            }
            None => {
                if display.is_some() {
                    return Err(ValueError::NameAddr);
                }
                // addr-spec: params after the URI belong to the header.
                let end = find(v, b';').unwrap_or(v.len());
                let uri = trim_slice(&v[..end]);
                if uri.is_empty() || uri.iter().any(|&b| is_lws(b)) {
                    return Err(ValueError::NameAddr);
                }
                Ok(NameAddr {
                    display,
                    uri,
                    params: &v[end..],
                })
            }
        }
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&'a [u8]> {
        param(self.params, b"tag")
    }

    /// The URI, parsed.
    pub fn parse_uri(&self) -> Result<Uri<'a>, ValueError> {
        Uri::parse(self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn via(s: &str) -> Result<Via<'_>, ValueError> {
        Via::parse(s.as_bytes(), 0..s.len())
    }

    #[test]
    fn via_parts() {
        let v = via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport").unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, b"192.0.2.1");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch(), Some(&b"z9hG4bK1"[..]));
        assert_eq!(v.rport(), Some(None));
        let v = via("SIP / 2.0 / TCP [2001:db8::1]:5070 ; branch = x").unwrap();
        assert_eq!(v.transport, b"TCP");
        assert_eq!(v.host, b"[2001:db8::1]");
        assert_eq!(v.branch(), Some(&b"x"[..]));
        // The common forms take the mask-driven parse (not only the walk).
        for common in [
            "SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK776asdhds;rport",
            "SIP/2.0/TCP sbc.example;branch=z9hG4bK-1;received=192.0.2.7;rport=5062",
            "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK.x",
        ] {
            let fast = Via::without_blanks(common.as_bytes(), 0..common.len());
            assert!(fast.is_some(), "{common}");
            assert_eq!(fast.map(Ok), Some(via(common)));
        }
        // Longer than 72 bytes: the walk reads it.
        let long = "SIP/2.0/TCP carrier.example;branch=z9hG4bK-1;received=192.0.2.7;rport=5062";
        assert!(Via::without_blanks(long.as_bytes(), 0..long.len()).is_none());
        assert_eq!(via(long).unwrap().rport(), Some(Some(5062)));
        let v = via("SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK776asdhds;rport").unwrap();
        assert_eq!(v.bare_rport_end(), Some(30));
        assert!(via("SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(via("SIP/2.0/UDP").is_err());
        assert!(via("SIP/3.0/UDP h").is_err());
    }

    /// The parsers as they were before the one-walk versions: the fast
    /// paths must agree with them on every input.
    mod reference {
        use super::super::*;

        pub fn param<'a>(params: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
            for p in params.split(|&b| b == b';') {
                let p = trim_slice(p);
                let (k, v) = match p.iter().position(|&b| b == b'=') {
                    Some(eq) => (trim_slice(&p[..eq]), trim_slice(&p[eq + 1..])),
                    None => (p, &p[p.len()..]),
                };
                if k.eq_ignore_ascii_case(name) {
                    return Some(v);
                }
            }
            None
        }

        /// Offset just past a bare `;name` parameter in `params` (the
        /// proxy's search before `Via::parse` recorded it).
        pub fn find_param_end(params: &[u8], name: &[u8]) -> Option<usize> {
            let mut off = 0;
            for p in params.split(|&b| b == b';') {
                let t = p.trim_ascii();
                if t.eq_ignore_ascii_case(name) {
                    let lead = p.len() - p.trim_ascii_start().len();
                    return Some(off + lead + t.len());
                }
                off += p.len() + 1;
            }
            None
        }

        /// The check `Via::parse` made of its parameters before the walk.
        pub fn params_named(params: &[u8]) -> bool {
            params.is_empty()
                || !params[1..]
                    .split(|&b| b == b';')
                    .any(|p| trim_slice(p).is_empty())
        }

        /// Transport, host, port and params of a Via.
        pub type ViaParts<'a> = (&'a [u8], &'a [u8], Option<u16>, &'a [u8]);

        /// `Via::parse` before the one forward walk.
        pub fn via(v: &[u8]) -> Option<ViaParts<'_>> {
            let slash2 = v
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'/')
                .nth(1)
                .map(|(i, _)| i)?;
            let (name, version) = split2(&v[..slash2], b'/')?;
            if !trim_slice(name).eq_ignore_ascii_case(b"SIP") || trim_slice(version) != b"2.0" {
                return None;
            }
            let rest = &v[slash2 + 1..];
            let rest = &rest[rest.iter().position(|&b| !is_lws(b))?..];
            let t_end = rest.iter().position(|&b| is_lws(b))?;
            let transport = trim_slice(&rest[..t_end]);
            if transport.is_empty() || !transport.iter().all(|&b| is_token(b)) {
                return None;
            }
            let rest = &rest[t_end..];
            let rest = &rest[rest.iter().position(|&b| !is_lws(b))?..];
            let sb_end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
            let (host, port) = host_port(trim_slice(&rest[..sb_end]))?;
            let params = &rest[sb_end..];
            params_named(params).then_some((transport, host, port, params))
        }

        /// Scheme, user, host, port, params and headers of a URI, by
        /// splits (what `Uri::parse` must find).
        pub type UriParts<'a> = (
            &'a [u8],
            Option<&'a [u8]>,
            &'a [u8],
            Option<u16>,
            &'a [u8],
            Option<&'a [u8]>,
        );

        pub fn uri(s: &[u8]) -> Option<UriParts<'_>> {
            if s.iter()
                .any(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'<' | b'>'))
            {
                return None;
            }
            let (scheme, rest) = split2(s, b':')?;
            if scheme.is_empty() || !scheme[0].is_ascii_alphabetic() {
                return None;
            }
            if scheme.eq_ignore_ascii_case(b"tel") {
                let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
                return Some((scheme, Some(&rest[..end]), b"", None, &rest[end..], None));
            }
            if !(scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips")) {
                return Some((scheme, None, b"", None, b"", None));
            }
            let (user, rest) = match split2(rest, b'@') {
                Some((u, r)) => (Some(u), r),
                None => (None, rest),
            };
            let (rest, headers) = match split2(rest, b'?') {
                Some((r, h)) => (r, Some(h)),
                None => (rest, None),
            };
            let semi = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
            let (host, port) = host_port(&rest[..semi])?;
            Some((scheme, user, host, port, &rest[semi..], headers))
        }

        pub fn parse_u16(s: &[u8]) -> Option<u16> {
            if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(s).ok()?.parse().ok()
        }

        pub fn host_port(s: &[u8]) -> Option<(&[u8], Option<u16>)> {
            if s.is_empty() || s.iter().any(|&b| is_lws(b)) {
                return None;
            }
            if s[0] == b'[' {
                let close = s.iter().position(|&b| b == b']')?;
                let host = &s[..=close];
                return match &s[close + 1..] {
                    [] => Some((host, None)),
                    [b':', port @ ..] => Some((host, Some(parse_u16(port)?))),
                    _ => None,
                };
            }
            match s.iter().filter(|&&b| b == b':').count() {
                0 => Some((s, None)),
                1 => {
                    let (h, p) = split2(s, b':')?;
                    if h.is_empty() {
                        return None;
                    }
                    Some((h, Some(parse_u16(p)?)))
                }
                _ => None,
            }
        }
    }

    /// Bytes SIP values are made of, separators over-represented.
    fn sip_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b';'),
                Just(b'='),
                Just(b':'),
                Just(b' '),
                Just(b'@'),
                Just(b'['),
                Just(b']'),
                Just(b'<'),
                Just(b'>'),
                Just(b'?'),
                Just(b'\t'),
                prop::sample::select(b"0123456789".to_vec()),
                prop::sample::select(b"abrBRtagnchport".to_vec()),
                any::<u8>(),
            ],
            0..40,
        )
    }

    /// Via parameter lists made of the names the proxy reads, spelled in
    /// the ways they may be (case, blanks, bare, doubled, near misses).
    fn via_param_list() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop::sample::select(vec![
            "branch=z9hG4bK1",
            "BRANCH = a",
            "branchx=1",
            "rport",
            " rport ",
            "RPort",
            "rport=5060",
            "rport=x",
            "rport\x0c",
            "received=192.0.2.1",
            "Received =h",
            "receivedx",
            "ttl=1",
            "tag=1928301774",
            "TAG = x",
            "tagx=1",
            "",
            " ",
        ]);
        proptest::collection::vec(piece, 0..6).prop_map(|ps| ps.join(";").into_bytes())
    }

    proptest! {
        #[test]
        fn param_agrees_with_the_reference(v in sip_bytes(), name in prop::sample::select(vec!["branch", "rport", "received", "tag", "lr", "b", "R"])) {
            let got = param(&v, name.as_bytes());
            let want = reference::param(&v, name.as_bytes());
            prop_assert_eq!(got, want);
            if let (Some(g), Some(w)) = (got, want) {
                prop_assert_eq!(g.as_ptr(), w.as_ptr(), "the same bytes of the input");
            }
        }

        /// The Via's one walk over its parameters finds what `param` (and
        /// the old bare-`rport` search) found, and refuses what the old
        /// check refused.
        #[test]
        fn via_params_agree_with_the_reference(v in prop_oneof![sip_bytes(), via_param_list()]) {
            let mut s = b"SIP/2.0/UDP h:1;".to_vec();
            s.extend_from_slice(&v);
            let via = Via::parse(&s, 0..s.len());
            let params = &s[15..];
            prop_assert_eq!(via.is_ok(), reference::params_named(params));
            if let Ok(via) = via {
                prop_assert_eq!(via.params, params);
                for (got, name) in [
                    (via.branch(), &b"branch"[..]),
                    (via.received(), b"received"),
                    (via.known.rport, b"rport"),
                ] {
                    let want = reference::param(params, name);
                    prop_assert_eq!(got, want);
                    if let (Some(g), Some(w)) = (got, want) {
                        prop_assert_eq!(g.as_ptr(), w.as_ptr());
                    }
                }
                prop_assert_eq!(via.bare_rport_end(), reference::find_param_end(params, b"rport"));
            }
        }

        /// The one-walk Via parse takes apart what the old one did, and
        /// refuses what it refused.
        #[test]
        fn via_agrees_with_the_reference(
            head in prop::sample::select(vec!["SIP/2.0/", "sip/2.0/", "SIP / 2.0 /", "SIP/2.0", "SIP/2.1/", "SIQ/2.0/", "Sip/2.0/ ", ""]),
            transport in prop::sample::select(vec!["UDP", "tcp", "TLS ", " UDP", "U/D", "", "UDP\t"]),
            tail in prop_oneof![sip_bytes(), via_param_list()],
        ) {
            let mut s = format!("{head}{transport}").into_bytes();
            s.extend_from_slice(&tail);
            let got = Via::parse(&s, 0..s.len()).ok().map(|v| (v.transport, v.host, v.port, v.params));
            prop_assert_eq!(got, reference::via(&s));
            let got = Via::parse(&tail, 0..tail.len()).ok().map(|v| (v.transport, v.host, v.port, v.params));
            prop_assert_eq!(got, reference::via(&tail));
        }

        /// The mask-driven parse of a Via without blanks returns what the
        /// byte walk returns, or leaves the Via to it.
        #[test]
        fn via_without_blanks_agrees_with_the_walk(
            transport in prop::sample::select(vec!["UDP", "tcp", "TLS", "U.D", "U;D", "U:D", ""]),
            blank in prop::sample::select(vec![" ", "\t", "  ", "\r", "\x0c", ""]),
            host in prop::sample::select(vec!["127.0.0.2:5070", "carrier.example", "[2001:db8::1]:5061", "h:", ":1", "h:99999", "a:b:c", "[::1", ""]),
            tail in prop_oneof![sip_bytes(), via_param_list().prop_map(|p| [b";".to_vec(), p].concat())],
            pad in 0usize..50,
        ) {
            let mut v = format!("SIP/2.0/{transport}{blank}{host}").into_bytes();
            v.extend_from_slice(&tail);
            // Lengths on both sides of every 16-byte chunk edge and of the
            // 64-byte limit.
            if pad > 0 && !v.is_empty() {
                v.extend(std::iter::repeat_n(b'x', pad));
            }
            let fast = Via::without_blanks(&v, 0..v.len());
            let walk = Via::after_version(&v, 8, 0..v.len());
            if let Some(f) = fast {
                prop_assert_eq!(Ok(f), walk);
            }
        }

        /// The masks are their plain definition at every length.
        #[test]
        fn via_masks_are_the_bytes(v in sip_bytes(), from in 0usize..8, pad in 0usize..60) {
            let mut v = v;
            v.extend(std::iter::repeat_n(b';', pad % 7).chain(std::iter::repeat_n(b'a', pad)));
            let got = via_masks(&v, from);
            let m = v.len().saturating_sub(from);
            if v.len() < from || !(16..=64).contains(&m) {
                prop_assert_eq!(got, None);
            } else {
                let mut want = [0u64; 3];
                for (j, &c) in v[from..].iter().enumerate() {
                    want[0] |= u64::from(c <= b' ') << j;
                    want[1] |= u64::from(c == b';') << j;
                    want[2] |= u64::from(c == b':') << j;
                }
                prop_assert_eq!(got, Some(want));
            }
        }

        /// `Uri::parse`'s one walk takes apart what splitting finds.
        #[test]
        fn uri_agrees_with_the_reference(
            scheme in prop::sample::select(vec!["sip:", "SIPS:", "tel:", "http:", "sip", "1x:", ":", ""]),
            user in prop::sample::select(vec!["", "+4930901820@", "a:b@", "a?b@", "a;x@", "@", "u@v@"]),
            host in prop::sample::select(vec!["127.0.0.1:5060", "carrier.example", "[::1]:5061", "[::1", "h:", ":5060", "h:1:2", "h:99999", ""]),
            tail in sip_bytes(),
        ) {
            let mut s = format!("{scheme}{user}{host}").into_bytes();
            s.extend_from_slice(&tail);
            let got = Uri::parse(&s).ok().map(|u| (u.scheme, u.user, u.host, u.port, u.params, u.headers));
            prop_assert_eq!(got, reference::uri(&s));
        }

        #[test]
        fn lws_is_the_four_bytes(b in any::<u8>()) {
            prop_assert_eq!(is_lws(b), matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
        }

        /// The inlined searches find what `memchr` finds, at every length
        /// and offset (chunk edges, the overlapping last chunk).
        #[test]
        fn finds_agree_with_memchr(
            v in proptest::collection::vec(prop::sample::select(b";,<\">ab".to_vec()), 0..80),
            from in 0usize..80,
        ) {
            let h = &v[from.min(v.len())..];
            prop_assert_eq!(find(h, b';'), memchr::memchr(b';', h));
            prop_assert_eq!(find2(h, b'"', b'>'), memchr::memchr2(b'"', b'>', h));
            prop_assert_eq!(find3(h, b',', b'"', b'<'), memchr::memchr3(b',', b'"', b'<', h));
        }

        /// The URI walk's chunked special-byte masks are the table's.
        #[test]
        fn uri_specials_agree_with_the_table(v in sip_bytes(), base in 0usize..40) {
            let base = base.min(v.len());
            prop_assert_eq!(uri_specials(&v, base), uri_specials_plain(&v[base..]));
        }

        #[test]
        fn numbers_and_host_ports_agree_with_the_reference(v in sip_bytes()) {
            prop_assert_eq!(parse_u16(&v), reference::parse_u16(&v));
            prop_assert_eq!(host_port(&v), reference::host_port(&v));
        }
    }

    #[test]
    fn commas_respect_quotes_and_brackets() {
        let s = b"<sip:a;lr>, \"x,y\" <sip:b>,,<sip:c?a=1,2>";
        let parts: Vec<&[u8]> = split_commas(s, 0..s.len()).map(|r| &s[r]).collect();
        assert_eq!(
            parts,
            vec![
                &b"<sip:a;lr>"[..],
                b"\"x,y\" <sip:b>",
                b"",
                b"<sip:c?a=1,2>"
            ]
        );
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(b"\"J \\\"Q\\\"\" <sip:+4930@h;user=phone>;tag=abc").unwrap();
        assert_eq!(n.uri, b"sip:+4930@h;user=phone");
        assert_eq!(n.tag(), Some(&b"abc"[..]));
        let n = NameAddr::parse(b"sip:caller@example.net;tag=1").unwrap();
        assert_eq!(n.uri, b"sip:caller@example.net");
        assert_eq!(n.tag(), Some(&b"1"[..]));
        let n = NameAddr::parse(b"Anonymous <sip:anonymous@anonymous.invalid>").unwrap();
        assert_eq!(n.display, Some(&b"Anonymous"[..]));
        assert!(NameAddr::parse(b"\"Mr. J. User <sip:j@example.com>").is_err());
        assert!(NameAddr::parse(b"Bell, Alexander <sip:a@example.com>").is_err());
        assert!(NameAddr::parse(b"\"W\" < sip:t@example.org >").is_err());
    }

    #[test]
    fn uri_parts() {
        let u = Uri::parse(b"sip:+49%2030;npdi@[::1]:5060;transport=tcp;lr?X=1").unwrap();
        assert_eq!(u.user, Some(&b"+49%2030;npdi"[..]));
        assert_eq!(u.user_number(), Some(&b"+49%2030"[..]));
        assert_eq!(u.host, b"[::1]");
        assert_eq!(u.port, Some(5060));
        assert!(u.is_loose());
        assert_eq!(u.transport(), Some(&b"tcp"[..]));
        assert_eq!(u.headers, Some(&b"X=1"[..]));
        assert_eq!(
            Uri::parse(b"tel:+4930;x=1").unwrap().user,
            Some(&b"+4930"[..])
        );
        assert!(Uri::parse(b"sip:user@2001:db8::10").is_err());
        assert!(Uri::parse(b"sip:user@host:99999").is_err());
        let odd = Uri::parse(b"sip:1_un?,/;;*:&it+has=1@example.com").unwrap();
        assert_eq!(odd.host, b"example.com");
        assert_eq!(odd.headers, None);
        assert_eq!(
            Uri::parse(b"soap.beep://192.0.2.103:3002").unwrap().host,
            b""
        );
    }
}
