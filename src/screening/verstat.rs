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
        each_semicolon(uri, |p| {
            let rest = &uri[p + 1..];
            let name = rest.get(..NAME.len())?;
            // The eight bytes as one word: setting bit 5 of the seven
            // letters folds their case; `=` is compared as it is (bit 5
            // set would also let 0x1D through).
            const FOLD: u64 = 0x0020_2020_2020_2020;
            let word = u64::from_le_bytes(name.try_into().expect("8 bytes"));
            if word | FOLD != u64::from_le_bytes(*b"verstat=") {
                return None;
            }
            let v = &rest[NAME.len()..];
            let end = v
                .iter()
                .position(|b| matches!(b, b';' | b'@' | b'>' | b'?' | b',' | b' '))
                .unwrap_or(v.len());
            Some(Attest::from_verstat(&v[..end]))
        })
    }
}

/// Calls `f` with the offset of each `;` in `s`, in order, until it returns
/// something. URIs are short: 16 bytes are compared at a time inline
/// instead of calling a search per `;`.
fn each_semicolon<T>(s: &[u8], mut f: impl FnMut(usize) -> Option<T>) -> Option<T> {
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is in the x86_64 baseline (the intrinsics need no
        // feature check); each unaligned 16-byte load starts at `i` (or
        // `at`) with `i + 16 <= s.len()` (`at + 16 == s.len()`): inside `s`.
        let semi = unsafe { _mm_set1_epi8(b';' as i8) };
        while i + 16 <= s.len() {
            let mut mask = unsafe {
                let v = _mm_loadu_si128(s.as_ptr().add(i).cast::<__m128i>());
                _mm_movemask_epi8(_mm_cmpeq_epi8(v, semi)) as u32
            };
            while mask != 0 {
                if let Some(r) = f(i + mask.trailing_zeros() as usize) {
                    return Some(r);
                }
                mask &= mask - 1;
            }
            i += 16;
        }
        // The last bytes: one more load that ends at the end (it overlaps
        // what was seen; those bits are cleared).
        if i < s.len() && s.len() >= 16 {
            let at = s.len() - 16;
            let mut mask = unsafe {
                let v = _mm_loadu_si128(s.as_ptr().add(at).cast::<__m128i>());
                _mm_movemask_epi8(_mm_cmpeq_epi8(v, semi)) as u32
            };
            mask &= u32::MAX << (i - at);
            while mask != 0 {
                if let Some(r) = f(at + mask.trailing_zeros() as usize) {
                    return Some(r);
                }
                mask &= mask - 1;
            }
            return None;
        }
    }
    // The tail (everything without SSE2).
    while i < s.len() {
        if s[i] == b';'
            && let Some(r) = f(i)
        {
            return Some(r);
        }
        i += 1;
    }
    None
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

    /// `of_uri` as it was before the inline `;` scan: one search per `;`.
    fn of_uri_searched(uri: &[u8]) -> Option<Attest> {
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

    proptest::proptest! {
        /// The inline scan finds what the search per `;` found, in URIs
        /// of every length around the 16-byte blocks.
        #[test]
        fn of_uri_agrees_with_the_searched_one(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "sip:", "+12155550112", ";", ";;", "verstat=", "VerStat=", "verstat", "verstat\u{1d}",
                "TN-Validation-Passed", "TN-Validation-Failed", "-B", "-", "@", "example.com",
                ">", "?", ",", " ", "x", "user=phone",
            ]), 0..24),
        ) {
            let uri = parts.concat();
            proptest::prop_assert_eq!(Attest::of_uri(uri.as_bytes()), of_uri_searched(uri.as_bytes()));
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
