//! Header names the proxy cares about, recognised case-insensitively in
//! full and compact form (RFC 3261 §7.3.3). Everything else is `Other` and
//! is carried through untouched.

/// A classified header name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HeaderName {
    Via,
    Route,
    RecordRoute,
    MaxForwards,
    From,
    To,
    CallId,
    CSeq,
    PAssertedIdentity,
    ContentLength,
    ContentType,
    Contact,
    ProxyRequire,
    Accept,
    Date,
    Privacy,
    /// Any `X-CRM-*` header: never forwarded unless we wrote it.
    XCrm,
    Other,
}

/// Classifies a header name (without the colon and surrounding space).
pub fn classify(name: &[u8]) -> HeaderName {
    use HeaderName::*;
    if name.len() == 1 {
        return match name[0].to_ascii_lowercase() {
            b'v' => Via,
            b'f' => From,
            b't' => To,
            b'i' => CallId,
            b'l' => ContentLength,
            b'c' => ContentType,
            b'm' => Contact,
            _ => Other,
        };
    }
    let eq = |s: &str| eq_lower(name, s.as_bytes());
    match name.len() {
        3 if eq("via") => Via,
        4 if eq("from") => From,
        2 if eq("to") => To,
        4 if eq("cseq") => CSeq,
        4 if eq("date") => Date,
        5 if eq("route") => Route,
        6 if eq("accept") => Accept,
        7 if eq("call-id") => CallId,
        7 if eq("contact") => Contact,
        7 if eq("privacy") => Privacy,
        12 if eq("record-route") => RecordRoute,
        12 if eq("max-forwards") => MaxForwards,
        12 if eq("content-type") => ContentType,
        13 if eq("proxy-require") => ProxyRequire,
        14 if eq("content-length") => ContentLength,
        19 if eq("p-asserted-identity") => PAssertedIdentity,
        _ if name.len() >= 6 && eq_lower(&name[..6], b"x-crm-") => XCrm,
        _ => Other,
    }
}

/// Whether `name` is `lit` (lower-case letters and `-`, as long as
/// `name`) ignoring case, compared 8 or 4 bytes at a time: where `lit` has
/// a letter (bit 0x40 set) the name's byte gets bit 0x20 ORed in, which
/// equals a lower-case letter only for that letter in either case; where
/// `lit` has `-` the byte must be `-`.
#[inline]
pub(super) fn eq_lower(name: &[u8], lit: &[u8]) -> bool {
    debug_assert_eq!(name.len(), lit.len());
    let n = name.len();
    let word = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().expect("4 bytes"));
    let w = |i: usize| {
        let l = word(lit, i);
        word(name, i) | ((l & 0x4040_4040_4040_4040) >> 1) == l
    };
    let h = |i: usize| {
        let l = half(lit, i);
        half(name, i) | ((l & 0x4040_4040) >> 1) == l
    };
    if n >= 8 {
        let mut i = 0;
        while i + 8 < n {
            if !w(i) {
                return false;
            }
            i += 8;
        }
        w(n - 8)
    } else if n >= 4 {
        h(0) && h(n - 4)
    } else {
        name.iter()
            .zip(lit)
            .all(|(&a, &b)| a | ((b & 0x40) >> 1) == b)
    }
}

/// True for a `token` character (RFC 3261 §25.1).
#[inline]
pub fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_compact_forms() {
        assert_eq!(classify(b"VIA"), HeaderName::Via);
        assert_eq!(classify(b"v"), HeaderName::Via);
        assert_eq!(classify(b"To"), HeaderName::To);
        assert_eq!(classify(b"t"), HeaderName::To);
        assert_eq!(classify(b"fRoM"), HeaderName::From);
        assert_eq!(classify(b"i"), HeaderName::CallId);
        assert_eq!(classify(b"l"), HeaderName::ContentLength);
        assert_eq!(classify(b"Record-Route"), HeaderName::RecordRoute);
        assert_eq!(
            classify(b"P-Asserted-Identity"),
            HeaderName::PAssertedIdentity
        );
        assert_eq!(classify(b"X-CRM-Verdict"), HeaderName::XCrm);
        assert_eq!(classify(b"x-crm-"), HeaderName::XCrm);
        assert_eq!(classify(b"X-Other"), HeaderName::Other);
        assert_eq!(classify(b"Subject"), HeaderName::Other);
    }

    /// The word-wise compare classifies every name as the
    /// byte-wise `eq_ignore_ascii_case` did, near misses included.
    #[test]
    fn word_compare_agrees_with_eq_ignore_ascii_case() {
        const NAMES: [&str; 17] = [
            "via",
            "from",
            "to",
            "cseq",
            "date",
            "route",
            "accept",
            "call-id",
            "contact",
            "privacy",
            "record-route",
            "max-forwards",
            "content-type",
            "proxy-require",
            "content-length",
            "p-asserted-identity",
            "x-crm-",
        ];
        // Every byte, not only token ones: framing and replies classify
        // names they have not checked.
        let token: Vec<u8> = (0u8..=255).collect();
        for lit in NAMES {
            let lit = lit.as_bytes();
            // The name in mixed case, then every byte replaced by every
            // token byte in turn.
            let mixed: Vec<u8> = lit
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if i % 2 == 0 {
                        b.to_ascii_uppercase()
                    } else {
                        *b
                    }
                })
                .collect();
            assert!(eq_lower(&mixed, lit));
            for i in 0..lit.len() {
                for &t in &token {
                    let mut n = mixed.clone();
                    n[i] = t;
                    assert_eq!(
                        eq_lower(&n, lit),
                        n.eq_ignore_ascii_case(lit),
                        "{:?} against {:?}",
                        String::from_utf8_lossy(&n),
                        String::from_utf8_lossy(lit)
                    );
                }
            }
        }
    }
}
