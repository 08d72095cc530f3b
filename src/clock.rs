//! Wall-clock time as the store, the call log and the API write it: unix
//! milliseconds, RFC 3339 text, and a [`Clock`] that tests can set.
//!
//! It sits at the bottom of the crate (no dependency on any other module),
//! so every layer can use one notion of "now".

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// Unix milliseconds now from the kernel's coarse clock (advanced every
/// tick, a few ms; read from the vDSO page, cheaper than [`now_ms`]): for
/// per-message checks that count in seconds (flood windows and bans).
pub fn coarse_now_ms() -> i64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
            return ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000;
        }
    }
    now_ms()
}

/// Unix milliseconds of a time (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds), e.g.
/// `2027-01-15T08:00:00.123Z`: the text `humantime` writes, built
/// directly in one 24-byte string (the call tracker formats several per
/// call; `Display` through `to_string` cost ~300 instructions each).
/// Times before the epoch are the epoch; times past year 9999, which
/// RFC 3339's four-digit year cannot hold (and `humantime` refused, a
/// panic in `to_string`), are its last millisecond.
pub fn rfc3339(ms: i64) -> String {
    String::from_utf8(rfc3339_bytes(ms).to_vec()).expect("ASCII digits")
}

/// [`rfc3339`]'s 24 bytes, on the stack.
pub fn rfc3339_bytes(ms: i64) -> [u8; 24] {
    /// 9999-12-31T23:59:59.999Z.
    const LAST: u64 = 253_402_300_799_999;
    let ms = (ms.max(0) as u64).min(LAST);
    let (days, in_day) = (ms / 86_400_000, ms % 86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (secs, milli) = (in_day / 1000, in_day % 1000);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, v: u64, digits: usize| {
        let mut v = v;
        for i in (at..at + digits).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, secs / 3600, 2);
    put(14, secs / 60 % 60, 2);
    put(17, secs % 60, 2);
    put(20, milli, 3);
    b
}

/// Year, month (1-12) and day (1-31) of `days` since 1970-01-01
/// (proleptic Gregorian; Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// An RFC 3339 time (`2027-01-31T00:00:00Z`, fractions and offsets
/// allowed) as unix milliseconds.
pub fn parse_rfc3339(t: &str) -> Result<i64, humantime::TimestampError> {
    humantime::parse_rfc3339_weak(t).map(unix_ms)
}

/// Where "now" comes from: the system clock, or (in tests) a clock that
/// only moves when told to.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock standing at `ms` until [`set`](Self::set) or
    /// [`advance`](Self::advance) moves it.
    pub fn manual(ms: i64) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(ms))),
        }
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(m) => m.load(Ordering::Relaxed),
            None => now_ms(),
        }
    }

    /// Unix milliseconds now, from the coarse clock ([`coarse_now_ms`])
    /// when this is the system clock.
    pub fn coarse_ms(&self) -> i64 {
        match &self.manual {
            Some(m) => m.load(Ordering::Relaxed),
            None => coarse_now_ms(),
        }
    }

    /// Moves a manual clock to `ms` (the system clock is not moved).
    pub fn set(&self, ms: i64) {
        if let Some(m) = &self.manual {
            m.store(ms, Ordering::Relaxed);
        }
    }

    /// Moves a manual clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        if let Some(m) = &self.manual {
            m.fetch_add(d.as_millis() as i64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The direct writer writes what `humantime` writes, from before
        /// the epoch (written as the epoch) to the end of year 9999.
        #[test]
        fn rfc3339_is_humantimes_text(ms in -1_000_000i64..=253_402_300_799_999) {
            let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
            proptest::prop_assert_eq!(rfc3339(ms), humantime::format_rfc3339_millis(t).to_string());
        }
    }

    #[test]
    fn rfc3339_of_calendar_edges() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
            (i64::MAX, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339(ms), text);
        }
    }

    #[test]
    fn rfc3339_round_trips_milliseconds() {
        let ms = 1_800_000_000_123;
        assert_eq!(rfc3339(ms), "2027-01-15T08:00:00.123Z");
        assert_eq!(parse_rfc3339(&rfc3339(ms)).unwrap(), ms);
        assert!(parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = Clock::manual(1_000);
        let shared = c.clone();
        assert_eq!(c.now_ms(), 1_000);
        shared.advance(Duration::from_secs(2));
        assert_eq!(c.now_ms(), 3_000);
        c.set(10);
        assert_eq!(shared.now_ms(), 10);
        let sys = Clock::system();
        assert!((sys.now_ms() - now_ms()).abs() < 1_000);
        assert!((sys.coarse_ms() - now_ms()).abs() < 1_000);
        assert_eq!(c.coarse_ms(), 10);
    }
}
