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
    let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
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
        _ if name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"x-crm-") => XCrm,
        _ => Other,
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
}
