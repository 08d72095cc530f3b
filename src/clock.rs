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

/// Unix milliseconds as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
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
