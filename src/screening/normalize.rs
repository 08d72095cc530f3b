//! Phone numbers to E.164, stored as `u64` (`+4930901820` -> `4930901820`).
//!
//! Every number the sidecar compares (caller, callee, line, exception entry)
//! goes through [`Normalizer::normalize`] so that `+49 30 901820`,
//! `0049-30-901820`, `%2B4930901820;npdi` and the national `030 901820`
//! (region DE) are one key.
//!
//! Two paths:
//! - **Fast path**, no allocation, no `phonenumber`: after separators
//!   (` - . ( ) /`) and user parameters (`;…`) are dropped, `+digits` and
//!   `00digits` with 7..=15 digits whose first digit is not 0, and bare
//!   digit strings of 10..=15 digits that start with a configured bare
//!   country code. SIP trunks send nearly every number in one of these forms.
//! - **National path**: any other all-digit string is parsed by
//!   `phonenumber` with the line's region (or the default one).
//!   *Decision:* a number is accepted when the library parses it and the
//!   resulting E.164 has 7..=15 digits; `is_valid` is **not** required,
//!   because the metadata lags numbering-plan changes and a real caller
//!   refused here would be screened as anonymous, i.e. never matched
//!   against the exception list.
//!
//! The national path costs microseconds (regexes, allocations), so its
//! results (also the negative ones) are kept in a bounded cache: 16 shards,
//! each a small map behind a `Mutex` that is only ever `try_lock`ed (a
//! contended shard is skipped, the caller parses itself: never blocks), and
//! cleared whole when full (bounded memory; the cost is a burst of parses).
//! A poisoned shard is used as it is: a map is whole between the
//! statements that hold its lock, and a panic elsewhere must not turn the
//! cache off for good.
//! `benches/lookup.rs` measures both the cached and the uncached path.

use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use phonenumber::country::Id;
use rustc_hash::FxHashMap;

/// Shortest and longest E.164 number (country code included), in digits.
const E164_DIGITS: std::ops::RangeInclusive<usize> = 7..=15;
/// Bare digit strings (no `+`, no `00`) need this many digits to be read as
/// international with a configured country code.
const BARE_DIGITS: std::ops::RangeInclusive<usize> = 10..=15;
/// Longest digit string looked at (national forms carry prefixes).
const MAX_DIGITS: usize = 24;
/// Number of cache shards (a power of two).
const SHARDS: usize = 16;
/// Default number of cached national results, all shards together.
pub const DEFAULT_CACHE_ENTRIES: usize = 65_536;

/// One cache shard: packed digits and region -> result.
type Shard = FxHashMap<(u128, Id), Option<u64>>;

/// Turns SIP user parts and list entries into E.164 numbers.
pub struct Normalizer {
    /// Region for national forms when the caller names none.
    default_region: Id,
    /// Country codes that make a bare digit string international.
    bare: Vec<Vec<u8>>,
    /// Results of the national path, keyed by digits and region.
    cache: Vec<Mutex<Shard>>,
    /// Entries per shard before it is cleared (0: no cache).
    shard_capacity: usize,
}

impl Normalizer {
    /// A normalizer with the default cache size.
    pub fn new(default_region: Id, bare_country_codes: &[String]) -> Self {
        Self::with_cache(default_region, bare_country_codes, DEFAULT_CACHE_ENTRIES)
    }

    /// A normalizer caching at most about `entries` national results
    /// (0 disables the cache).
    pub fn with_cache(default_region: Id, bare_country_codes: &[String], entries: usize) -> Self {
        Normalizer {
            default_region,
            bare: bare_country_codes
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect(),
            cache: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_capacity: entries.div_ceil(SHARDS),
        }
    }

    /// The region used when none is given.
    pub fn default_region(&self) -> Id {
        self.default_region
    }

    /// E.164 of `raw` (a SIP user part or a list entry), reading national
    /// forms with `region` (default: the configured one). `None` for empty,
    /// non-numeric or anonymous users and numbers that cannot be read.
    pub fn normalize(&self, raw: &[u8], region: Option<Id>) -> Option<u64> {
        match plus_digits(raw) {
            Some(n) => n,
            None => self.normalize_any(raw, region),
        }
    }

    /// [`normalize`](Self::normalize) without the `+digits` shortcut.
    fn normalize_any(&self, raw: &[u8], region: Option<Id>) -> Option<u64> {
        let mut buf = [0u8; MAX_DIGITS];
        let (plus, digits) = clean(raw, &mut buf)?;
        if plus {
            return international(digits);
        }
        if let Some(rest) = digits.strip_prefix(b"00") {
            return international(rest);
        }
        if BARE_DIGITS.contains(&digits.len())
            && digits[0] != b'0'
            && self.bare.iter().any(|cc| digits.starts_with(cc))
        {
            return to_u64(digits);
        }
        self.national(digits, region.unwrap_or(self.default_region))
    }

    /// The national path, through the cache.
    fn national(&self, digits: &[u8], region: Id) -> Option<u64> {
        if self.shard_capacity == 0 {
            return parse_national(digits, region);
        }
        // Digit + 1 per nibble keeps leading zeros apart ("030" != "30").
        let packed = digits
            .iter()
            .fold(0u128, |acc, d| (acc << 4) | u128::from(d - b'0' + 1));
        let key = (packed, region);
        let shard = &self.cache[(packed as usize ^ (packed >> 64) as usize) % SHARDS];
        if let Some(map) = try_lock(shard)
            && let Some(hit) = map.get(&key)
        {
            return *hit;
        }
        let result = parse_national(digits, region);
        if let Some(mut map) = try_lock(shard) {
            if map.len() >= self.shard_capacity {
                map.clear();
            }
            map.insert(key, result);
        }
        result
    }

    /// Number of cached national results (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.cache
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// The shard, unless another thread holds it (poisoned or not).
fn try_lock(shard: &Mutex<Shard>) -> Option<MutexGuard<'_, Shard>> {
    match shard.try_lock() {
        Ok(m) => Some(m),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Drops user parameters and separators, decodes a leading `%2B`; returns
/// whether a leading `+` was present and the digits (at most `MAX_DIGITS`).
/// One walk: the first `;` ends the number (no separate search for it:
/// user parts are short, a search call costs more than the walk).
fn clean<'b>(raw: &[u8], buf: &'b mut [u8; MAX_DIGITS]) -> Option<(bool, &'b [u8])> {
    // A `;` among the first three bytes is no `+` / `%2B`, so the prefix
    // can be read before the parameters are cut off.
    let (plus, rest) = if let Some(r) = raw.strip_prefix(b"+") {
        (true, r)
    } else if raw.len() >= 3 && raw[0] == b'%' && raw[1] == b'2' && matches!(raw[2], b'B' | b'b') {
        (true, &raw[3..])
    } else {
        (false, raw)
    };
    let mut n = 0;
    for &b in rest {
        match b {
            b'0'..=b'9' => {
                *buf.get_mut(n)? = b;
                n += 1;
            }
            b' ' | b'-' | b'.' | b'(' | b')' | b'/' => {}
            b';' => break,
            _ => return None,
        }
    }
    if n == 0 {
        return None;
    }
    Some((plus, &buf[..n]))
}

/// `+` and plain digits up to the end or a `;` (the form nearly every
/// trunk sends), read in one pass without the digit buffer: `Some` with
/// what the full path gives for it, `None` for any other form.
#[inline]
fn plus_digits(raw: &[u8]) -> Option<Option<u64>> {
    let rest = raw.strip_prefix(b"+")?;
    let mut n = 0;
    let mut acc = 0u64;
    for &b in rest {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            if b == b';' {
                break;
            }
            return None;
        }
        // Wraps only past 19 digits, which are refused below.
        acc = acc.wrapping_mul(10).wrapping_add(u64::from(d));
        n += 1;
    }
    // With 7 or more digits `rest[0]` is the first of them.
    Some((E164_DIGITS.contains(&n) && rest[0] != b'0').then_some(acc))
}

/// Digits after `+` or `00`: the E.164 number itself.
fn international(digits: &[u8]) -> Option<u64> {
    if !E164_DIGITS.contains(&digits.len()) || digits[0] == b'0' {
        return None;
    }
    to_u64(digits)
}

fn to_u64(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// `phonenumber` with a region; see the module doc for what is accepted.
fn parse_national(digits: &[u8], region: Id) -> Option<u64> {
    let text = std::str::from_utf8(digits).ok()?;
    let pn = phonenumber::parse(Some(region), text).ok()?;
    let national = pn.national();
    let value = national.value();
    if value == 0 {
        return None;
    }
    let value_digits = value.ilog10() as usize + 1;
    let cc = u64::from(pn.code().value());
    let cc_digits = cc.checked_ilog10()? as usize + 1;
    let zeros = usize::from(national.zeros());
    if !E164_DIGITS.contains(&(cc_digits + zeros + value_digits)) {
        return None;
    }
    Some(cc * 10u64.pow((zeros + value_digits) as u32) + value)
}

/// `+` and the digits of `n`, as a `String` (off the hot path).
pub fn e164_string(n: u64) -> String {
    // Not `format!`: the call tracker writes several per call.
    let mut s = Vec::with_capacity(21);
    write_e164(n, &mut s);
    String::from_utf8(s).expect("`+` and ASCII digits")
}

/// The inverse of [`e164_string`]: `+4930901820` -> `4930901820`.
pub fn parse_e164(s: &str) -> Option<u64> {
    s.strip_prefix('+')?.parse().ok()
}

/// Appends `+` and the digits of `n`.
pub fn write_e164(n: u64, out: &mut Vec<u8>) {
    out.push(b'+');
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn de() -> Normalizer {
        Normalizer::new(Id::DE, &["49".to_string()])
    }

    #[test]
    fn international_forms_are_one_key() {
        let n = de();
        for raw in [
            "+4930901820",
            "+49 30 901820",
            "0049-30-901820",
            "%2B4930901820",
            "%2b49 (30) 90/18.20",
            "+4930901820;npdi",
            "+4930901820;phone-context=example.com",
            "4930901820",
        ] {
            assert_eq!(n.normalize(raw.as_bytes(), None), Some(4930901820), "{raw}");
        }
        assert_eq!(n.cached(), 0, "fast path must not touch the cache");
    }

    #[test]
    fn national_forms_use_the_region() {
        let n = de();
        assert_eq!(n.normalize(b"030 901820", None), Some(4930901820));
        assert_eq!(n.normalize(b"0151 12345678", None), Some(4915112345678));
        assert_eq!(n.normalize(b"030901820", None), Some(4930901820), "cached");
        assert_eq!(
            n.normalize(b"01 42 68 53 00", Some(Id::FR)),
            Some(33142685300)
        );
        assert_eq!(
            n.normalize(b"02 12345678", Some(Id::IT)),
            Some(390212345678)
        );
        assert!(n.cached() >= 3);
    }

    #[test]
    fn garbage_and_anonymous_are_none() {
        let n = de();
        for raw in [
            "",
            "anonymous",
            "+",
            "+0301234567",
            "+12345",
            "+1234567890123456",
            "00",
            "49a30901820",
            "%2B",
            "+49 30 90182O",
            ";npdi",
            "123",
        ] {
            assert_eq!(n.normalize(raw.as_bytes(), None), None, "{raw}");
        }
        assert_eq!(n.normalize(&[b'1'; 40], None), None);
    }

    #[test]
    fn bare_digits_need_a_configured_country_code() {
        let n = Normalizer::new(Id::DE, &[]);
        // Without "49" configured, a bare number takes the national path
        // (where `phonenumber` happens to strip the region's own code).
        assert_eq!(n.normalize(b"4930901820", None), Some(4930901820));
        assert_eq!(n.cached(), 1);
        let n = de();
        assert_eq!(n.normalize(b"4930901820", None), Some(4930901820));
        assert_eq!(n.cached(), 0);
    }

    #[test]
    fn cache_stays_bounded() {
        let n = Normalizer::with_cache(Id::DE, &[], 32);
        for i in 0..500u32 {
            let _ = n.normalize(format!("030 9{i:06}").as_bytes(), None);
            assert!(n.cached() <= 32 + SHARDS);
        }
        let uncached = Normalizer::with_cache(Id::DE, &[], 0);
        assert_eq!(uncached.normalize(b"030 901820", None), Some(4930901820));
        assert_eq!(uncached.cached(), 0);
    }

    /// A panic while a shard was held leaves the cache working.
    #[test]
    fn poisoned_shards_still_cache() {
        let n = Normalizer::new(Id::DE, &[]);
        std::thread::scope(|s| {
            for shard in &n.cache {
                let _ = s
                    .spawn(move || {
                        let _held = shard.lock();
                        panic!("poisoning a shard");
                    })
                    .join();
            }
        });
        assert!(n.cache.iter().all(|s| s.is_poisoned()));
        assert_eq!(n.normalize(b"030 901820", None), Some(4930901820));
        assert_eq!(n.cached(), 1);
        assert_eq!(n.normalize(b"030 901821", None), Some(4930901821));
        assert_eq!(n.cached(), 2);
    }

    /// `clean` as it was before the one walk: the parameters cut off by a
    /// search first.
    fn clean_before<'b>(raw: &[u8], buf: &'b mut [u8; MAX_DIGITS]) -> Option<(bool, &'b [u8])> {
        let raw = match memchr::memchr(b';', raw) {
            Some(p) => &raw[..p],
            None => raw,
        };
        let (plus, rest) = if let Some(r) = raw.strip_prefix(b"+") {
            (true, r)
        } else if raw.len() >= 3
            && raw[0] == b'%'
            && raw[1] == b'2'
            && matches!(raw[2], b'B' | b'b')
        {
            (true, &raw[3..])
        } else {
            (false, raw)
        };
        let mut n = 0;
        for &b in rest {
            match b {
                b'0'..=b'9' => {
                    *buf.get_mut(n)? = b;
                    n += 1;
                }
                b' ' | b'-' | b'.' | b'(' | b')' | b'/' => {}
                _ => return None,
            }
        }
        if n == 0 {
            return None;
        }
        Some((plus, &buf[..n]))
    }

    proptest::proptest! {
        /// The `+digits` shortcut gives what the full path gives.
        #[test]
        fn plus_digits_agrees_with_the_full_path(
            raw in proptest::collection::vec(proptest::sample::select(b"+0123456789;- x".to_vec()), 0..30),
            typical in "\\+[0-9]{0,20}(;[a-z0-9=+ -]{0,6})?",
        ) {
            let n = de();
            let plus = [b"+", &raw[..]].concat();
            for raw in [&raw[..], &plus[..], typical.as_bytes()] {
                if let Some(fast) = plus_digits(raw) {
                    proptest::prop_assert_eq!(fast, n.normalize_any(raw, None));
                }
            }
            proptest::prop_assert!(plus_digits(typical.as_bytes()).is_some());
        }

        /// The one-walk `clean` agrees with the search-first one.
        #[test]
        fn clean_agrees_with_the_search_first_one(
            raw in proptest::collection::vec(proptest::sample::select(b"+%2Bb;0123456789 -.()/x".to_vec()), 0..30),
        ) {
            let (mut a, mut b) = ([0u8; MAX_DIGITS], [0u8; MAX_DIGITS]);
            proptest::prop_assert_eq!(clean(&raw, &mut a), clean_before(&raw, &mut b));
        }
    }

    #[test]
    fn writes_e164() {
        let mut out = b"x".to_vec();
        write_e164(4930901820, &mut out);
        assert_eq!(out, b"x+4930901820");
        out.clear();
        write_e164(u64::from(u32::MAX) * 1000, &mut out);
        assert_eq!(out, format!("+{}", u64::from(u32::MAX) * 1000).as_bytes());
    }
}
