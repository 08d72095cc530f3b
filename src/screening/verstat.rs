//! The STIR/SHAKEN verification result a carrier's verification service
//! passes on: the `verstat` parameter (3GPP TS 24.229 §7.2A.20, ATIS-1000074)
//! on the P-Asserted-Identity or From URI, as a tel-URI parameter in the
//! user part (`sip:+12155550112;verstat=TN-Validation-Passed@host`) or as a
//! URI parameter (`sip:+12155550112@host;verstat=...`). Only a trunk with
//! `trust_pai = true` is believed; from any other source the value is
//! never read.
//!
//! Values: `TN-Validation-Passed`, `TN-Validation-Failed`,
//! `No-TN-Validation`; carriers append the attestation level as `-A`,
//! `-B`, `-C` (`TN-Validation-Passed-B`). A pass without a level is read
//! as `A`, as carriers that append only lower levels mean it (Telnyx).
//! A failure with a level is still a failure. Anything else is `none`.

/// What the tag `X-CRM-Attest` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Attest {
    A,
    B,
    C,
    /// `TN-Validation-Failed`.
    Failed,
    /// No verification result (none sent, `No-TN-Validation`, an
    /// untrusted source, or a value not understood).
    #[default]
    None,
}

impl Attest {
    /// Every value, in the metrics' order.
    pub const ALL: [Attest; 5] = [
        Attest::A,
        Attest::B,
        Attest::C,
        Attest::Failed,
        Attest::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Attest::A => "A",
            Attest::B => "B",
            Attest::C => "C",
            Attest::Failed => "failed",
            Attest::None => "none",
        }
    }

    /// Reads [`as_str`](Self::as_str)'s form back.
    pub fn parse(s: &str) -> Option<Attest> {
        Attest::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Reads a `verstat` value (case-insensitive).
    pub fn from_verstat(v: &[u8]) -> Attest {
        let (base, level) = match v.len().checked_sub(2) {
            Some(at) if v[at] == b'-' => (&v[..at], Some(v[at + 1].to_ascii_uppercase())),
            _ => (v, None),
        };
        if base.eq_ignore_ascii_case(b"TN-Validation-Passed") {
            match level {
                None | Some(b'A') => Attest::A,
                Some(b'B') => Attest::B,
                Some(b'C') => Attest::C,
                Some(_) => Attest::None,
            }
        } else if base.eq_ignore_ascii_case(b"TN-Validation-Failed")
            && matches!(level, None | Some(b'A' | b'B' | b'C'))
        {
            Attest::Failed
        } else {
            Attest::None
        }
    }

    /// The `verstat` of a URI (the text inside `<>` or an addr-spec);
    /// `None` when there is none.
    pub fn of_uri(uri: &[u8]) -> Option<Attest> {
        const NAME: &[u8] = b"verstat=";
        let mut i = 0;
        while let Some(p) = memchr::memchr(b';', &uri[i..]) {
            let at = i + p + 1;
            let rest = &uri[at..];
            if rest.len() >= NAME.len() && rest[..NAME.len()].eq_ignore_ascii_case(NAME) {
                let v = &rest[NAME.len()..];
                let end = v
                    .iter()
                    .position(|b| matches!(b, b';' | b'@' | b'>' | b'?' | b',' | b' '))
                    .unwrap_or(v.len());
                return Some(Attest::from_verstat(&v[..end]));
            }
            i = at;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_attestation_levels() {
        let a = |v: &str| Attest::from_verstat(v.as_bytes());
        assert_eq!(a("TN-Validation-Passed"), Attest::A);
        assert_eq!(a("TN-Validation-Passed-A"), Attest::A);
        assert_eq!(a("tn-validation-passed-b"), Attest::B);
        assert_eq!(a("TN-Validation-Passed-C"), Attest::C);
        assert_eq!(a("TN-Validation-Failed"), Attest::Failed);
        assert_eq!(a("TN-Validation-Failed-B"), Attest::Failed);
        assert_eq!(a("No-TN-Validation"), Attest::None);
        for bad in [
            "",
            "-",
            "TN-Validation-Passed-Z",
            "TN-Validation-Passed-",
            "TN-Validation",
            "TN-Validation-Failedx",
            "TN-Validation-Passed-AB",
            "Passed",
        ] {
            assert_eq!(a(bad), Attest::None, "{bad:?}");
        }
    }

    #[test]
    fn found_in_the_user_part_or_the_uri_parameters() {
        let u = |s: &str| Attest::of_uri(s.as_bytes());
        assert_eq!(
            u("sip:+12155550112;verstat=TN-Validation-Passed@example.com;user=phone"),
            Some(Attest::A)
        );
        assert_eq!(
            u("sip:+12155550112@example.com;user=phone;VerStat=TN-Validation-Failed"),
            Some(Attest::Failed)
        );
        assert_eq!(
            u("tel:+12155550112;verstat=TN-Validation-Passed-C"),
            Some(Attest::C)
        );
        assert_eq!(
            u("sip:+12155550112@example.com;verstat=TN-Validation-Passed-B;user=phone"),
            Some(Attest::B)
        );
        assert_eq!(u("sip:+12155550112@example.com;user=phone"), None);
        assert_eq!(
            u("sip:+12155550112@example.com;xverstat=TN-Validation-Failed"),
            None
        );
        assert_eq!(
            u("sip:+12155550112@example.com;verstat="),
            Some(Attest::None)
        );
        assert_eq!(
            u("sip:+12155550112@example.com;verstat=garbage"),
            Some(Attest::None)
        );
    }
}
