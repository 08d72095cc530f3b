//! Panic reports, rate limited: a message that makes the handler panic
//! (a bug) can be sent again and again, and each panic would otherwise
//! write the standard hook's lines to stderr and an error to the log. At
//! most [`PER_MINUTE`] panics a minute are reported; the others are only
//! counted (`sipscreen_panics_total`) and summed up in the next report.
//!
//! [`install_hook`] wraps the standard panic hook with the same limit, and
//! marks on the panicking thread whether its panic was reported, so that
//! the receive loop that catches it logs it, or not, with the hook.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Panics reported per minute, at most.
pub const PER_MINUTE: u32 = 10;

/// Fixed one-minute windows (the first from the process's start): a count
/// in the current one and the panics not reported.
#[derive(Debug, Default)]
pub struct Limiter {
    /// Start of the current window, ms since the process's base instant.
    window: AtomicU64,
    reported: AtomicU32,
    suppressed: AtomicU64,
    /// Taken only to move to a new window (once a minute at most).
    turn: Mutex<()>,
}

impl Limiter {
    /// Whether a panic at `now_ms` is reported; if it is, how many were
    /// not since the last that was.
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        if now_ms.saturating_sub(self.window.load(Ordering::Acquire)) >= 60_000 {
            let _g = self.turn.lock().unwrap_or_else(|e| e.into_inner());
            if now_ms.saturating_sub(self.window.load(Ordering::Acquire)) >= 60_000 {
                self.reported.store(0, Ordering::Relaxed);
                self.window.store(now_ms, Ordering::Release);
            }
        }
        if self.reported.fetch_add(1, Ordering::Relaxed) < PER_MINUTE {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

static LIMITER: OnceLock<(Instant, Limiter)> = OnceLock::new();

thread_local! {
    /// The last panic on this thread: `Some(suppressed before it)` if it
    /// was reported by the hook, `None` if not; unset without the hook.
    static LAST: Cell<Option<Option<u64>>> = const { Cell::new(None) };
}

fn limiter() -> &'static (Instant, Limiter) {
    LIMITER.get_or_init(|| (Instant::now(), Limiter::default()))
}

fn admit_now() -> Option<u64> {
    let (base, l) = limiter();
    l.admit(base.elapsed().as_millis() as u64)
}

/// Wraps the standard panic hook (its stderr lines) with the limit.
pub fn install_hook() {
    let standard = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let verdict = admit_now();
        LAST.with(|c| c.set(Some(verdict)));
        if let Some(suppressed) = verdict {
            if suppressed > 0 {
                eprintln!("({suppressed} panics not reported in the last minute)");
            }
            standard(info);
        }
    }));
}

/// Whether the panic just caught on this thread is to be logged, and how
/// many were not before it: as the hook decided, or by the limit here
/// when no hook was installed (tests).
pub fn caught() -> Option<u64> {
    LAST.with(|c| c.take()).unwrap_or_else(admit_now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_ten_a_minute_are_reported_and_the_rest_summed_up_in_the_next() {
        let l = Limiter::default();
        let got: Vec<_> = (0..25).map(|i| l.admit(1_000 + i)).collect();
        assert_eq!(
            got.iter().filter(|g| g.is_some()).count(),
            PER_MINUTE as usize
        );
        assert!(got[..10].iter().all(|g| *g == Some(0)));
        assert!(got[10..].iter().all(Option::is_none));
        // Still in the first window (from the process's start, 0 ms).
        assert_eq!(l.admit(59_999), None);
        // The next window: reported, with the 16 that were not.
        assert_eq!(l.admit(60_000), Some(16));
        assert_eq!(l.admit(60_001), Some(0));
    }

    #[test]
    fn many_threads_together_report_ten() {
        let l = std::sync::Arc::new(Limiter::default());
        let reported: usize = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..100).filter(|_| l.admit(5).is_some()).count())
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(reported, PER_MINUTE as usize);
    }
}
