//! CRM delivery: one worker per configured sink takes that sink's events
//! from the durable outbox strictly in order (a call's `finish` never
//! overtakes its `register`), paced by a leaky bucket, with retries
//! (exponential backoff with jitter) for transient failures, at once to the
//! dead-letter table for permanent ones, and for events older than
//! `[crm] max_event_age_secs`. Nothing here touches the SIP path: the
//! tracker queues events in the store, the workers read them back.

pub mod bitrix24;
pub mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{OutEvent, OutboxStore, now_ms};

/// An HTTP client error as text for logs and the outbox: its whole cause
/// chain ("error sending request: client error (Connect): tcp connect
/// error: Connection refused"), without the URL — a Bitrix24 inbound
/// webhook URL carries its secret token in the path, and a webhook URL
/// may carry one in its query.
pub fn http_error(e: reqwest::Error) -> String {
    crate::error_chain(&e.without_url())
}

/// Longest wait between retries.
const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;
/// First retry delay.
const BASE_BACKOFF_MS: i64 = 500;

/// How one delivery went.
#[derive(Debug)]
pub enum Delivery {
    /// Done (or nothing to send for this event on this sink).
    Ok,
    /// Try again later; `rate_limited` when the CRM said so (the bucket is
    /// drained too).
    Retry { error: String, rate_limited: bool },
    /// The CRM refused it for good.
    Rejected(String),
}

/// A CRM endpoint.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    fn name(&self) -> &str;
    async fn deliver(&self, ev: &OutEvent, store: &Arc<dyn OutboxStore>) -> Delivery;

    /// Events one request may carry when a backlog builds.
    fn max_batch(&self) -> usize {
        1
    }

    /// Delivers events from the front of `evs` in one request where the
    /// CRM allows it: how many were delivered, and what happened to the
    /// next one if it failed.
    async fn deliver_many(
        &self,
        evs: &[OutEvent],
        store: &Arc<dyn OutboxStore>,
    ) -> (usize, Option<Delivery>) {
        match self.deliver(&evs[0], store).await {
            Delivery::Ok => (1, None),
            d => (0, Some(d)),
        }
    }
}

/// Leaky bucket: `rate` requests a second, bursts up to `burst`.
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: f64, burst: u32) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket {
            rate: rate.max(0.001),
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// How long to wait before the next request may go (0: now; the token
    /// is then taken).
    pub fn reserve(&mut self, now: Instant) -> Duration {
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// The CRM said "too many": start from empty.
    pub fn drain(&mut self) {
        self.tokens = 0.0;
    }
}

/// Settings of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub rate_per_sec: f64,
    pub burst: u32,
    pub max_age_ms: i64,
}

/// The retry delay after `attempts` failures: doubling, capped, with up to
/// 25 % jitter so a recovering CRM is not hit by every sidecar at once.
pub fn backoff_ms(attempts: i64) -> i64 {
    let base = BASE_BACKOFF_MS
        .saturating_mul(1i64 << attempts.clamp(0, 20))
        .min(MAX_BACKOFF_MS);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base + (base / 4) * i64::from(nanos % 1000) / 1000
}

/// Delivers `sink`'s events until shutdown.
pub async fn run_worker(
    sink: Arc<dyn Sink>,
    store: Arc<dyn OutboxStore>,
    metrics: Arc<Metrics>,
    cfg: WorkerConfig,
    mut shutdown: Shutdown,
) {
    let name = sink.name().to_string();
    let mut bucket = Bucket::new(cfg.rate_per_sec, cfg.burst);
    loop {
        if shutdown.is_fired() {
            return;
        }
        let (st, n) = (store.clone(), name.clone());
        let head = tokio::task::spawn_blocking(move || st.head(&n, 64))
            .await
            .ok()
            .and_then(|r| {
                r.map_err(
                    |e| tracing::error!(sink = %name, error = %e, "reading the outbox failed"),
                )
                .ok()
            })
            .unwrap_or_default();
        let now = now_ms();
        // Too old to matter any more: dead-letter them (in order).
        let old: Vec<i64> = head
            .iter()
            .take_while(|e| now - e.created_at > cfg.max_age_ms)
            .map(|e| e.id)
            .collect();
        if !old.is_empty() {
            let st = store.clone();
            let ids = old.clone();
            let _ = tokio::task::spawn_blocking(move || {
                st.dead(&ids, "expired: older than [crm] max_event_age_secs", now)
            })
            .await;
            metrics.crm_dead(&name, old.len() as u64);
            tracing::warn!(sink = %name, events = old.len(), "CRM events too old, moved to the dead-letter table");
            continue;
        }
        let Some(ev) = head.first().cloned() else {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        };
        if ev.next_at > now {
            let wait = Duration::from_millis((ev.next_at - now).min(1000) as u64);
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        let wait = bucket.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        // The due events at the front: in one request where the sink can
        // carry several, else one request each, in order, as far as the
        // bucket allows. Either way one outbox read and one commit for the
        // run, not one per event (a crash before the commit sends the
        // run's delivered events again: at least once, as before).
        let due: Vec<OutEvent> = head.into_iter().take_while(|e| e.next_at <= now).collect();
        let (n, failed) = if sink.max_batch() > 1 && due.len() > 1 {
            sink.deliver_many(&due[..due.len().min(sink.max_batch())], &store)
                .await
        } else {
            deliver_each(&*sink, &due, &store, &mut bucket, &shutdown).await
        };
        let ok: Vec<i64> = due.iter().take(n).map(|e| e.id).collect();
        if !ok.is_empty() {
            for _ in 0..ok.len() {
                metrics.crm_delivery(&name, "ok");
            }
            let st = store.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || st.delivered(&ok)).await {
                tracing::error!(sink = %name, error = %e, "updating the outbox failed");
            }
        }
        let (Some(result), Some(ev)) = (failed, due.get(n).cloned()) else {
            continue;
        };
        let st = store.clone();
        let done = match result {
            Delivery::Ok => {
                metrics.crm_delivery(&name, "ok");
                tokio::task::spawn_blocking(move || st.delivered(&[ev.id])).await
            }
            Delivery::Retry {
                error,
                rate_limited,
            } => {
                if rate_limited {
                    bucket.drain();
                }
                metrics.crm_delivery(
                    &name,
                    if rate_limited {
                        "rate_limited"
                    } else {
                        "retry"
                    },
                );
                tracing::warn!(sink = %name, event = %ev.kind, call = %ev.call, attempts = ev.attempts + 1, error = %error, "CRM delivery failed, will retry");
                let next = now_ms() + backoff_ms(ev.attempts);
                tokio::task::spawn_blocking(move || st.retry_later(ev.id, next, &error)).await
            }
            Delivery::Rejected(reason) => {
                metrics.crm_delivery(&name, "rejected");
                metrics.crm_dead(&name, 1);
                tracing::error!(sink = %name, event = %ev.kind, call = %ev.call, reason = %reason, "CRM refused the event, moved to the dead-letter table");
                tokio::task::spawn_blocking(move || st.dead(&[ev.id], &reason, now_ms())).await
            }
        };
        if let Ok(Err(e)) = done {
            tracing::error!(sink = %name, error = %e, "updating the outbox failed");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Delivers `evs` one request each, in order, until one fails, the bucket
/// has no token for the next, or shutdown: how many were delivered, and
/// what happened to the next one if it failed. The first event's token is
/// already taken.
async fn deliver_each(
    sink: &dyn Sink,
    evs: &[OutEvent],
    store: &Arc<dyn OutboxStore>,
    bucket: &mut Bucket,
    shutdown: &Shutdown,
) -> (usize, Option<Delivery>) {
    for (i, ev) in evs.iter().enumerate() {
        if i > 0 && (shutdown.is_fired() || !bucket.reserve(Instant::now()).is_zero()) {
            return (i, None);
        }
        match sink.deliver(ev, store).await {
            Delivery::Ok => {}
            d => return (i, Some(d)),
        }
    }
    (evs.len(), None)
}

/// Keeps the outbox gauges current.
pub async fn run_outbox_gauges(
    store: Arc<dyn OutboxStore>,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) {
    loop {
        let st = store.clone();
        if let Ok(Ok((depth, oldest))) =
            tokio::task::spawn_blocking(move || st.outbox_stats()).await
        {
            let age = oldest.map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0);
            metrics.set_outbox(depth, age);
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Classifies an HTTP answer: 2xx ok, 408/429/5xx retry, other 4xx
/// rejected.
pub fn by_status(status: u16, body: &str) -> Delivery {
    match status {
        200..=299 => Delivery::Ok,
        408 | 429 | 500..=599 => Delivery::Retry {
            error: format!("HTTP {status}: {}", cut(body)),
            rate_limited: status == 429,
        },
        _ => Delivery::Rejected(format!("HTTP {status}: {}", cut(body))),
    }
}

/// At most 200 characters of a body, for logs and the dead-letter table.
pub fn cut(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 3);
        for _ in 0..3 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
        let w = b.reserve(t0);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
        assert_eq!(b.reserve(t0 + Duration::from_millis(500)), Duration::ZERO);
        b.drain();
        assert!(b.reserve(t0 + Duration::from_millis(500)) > Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        for a in 0..12 {
            let base = (BASE_BACKOFF_MS << a).min(MAX_BACKOFF_MS);
            let b = backoff_ms(a);
            assert!(b >= base && b <= base + base / 4, "{a}: {b}");
        }
    }
}
