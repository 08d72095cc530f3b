//! CRM delivery: one worker per configured sink takes that sink's events
//! from the durable outbox strictly in order (a call's `finish` never
//! overtakes its `register`), paced by a leaky bucket, with retries
//! (exponential backoff with jitter) for transient failures, at once to the
//! dead-letter table for permanent ones, and for events older than
//! `[crm] max_event_age_secs`. Nothing here touches the SIP path: the
//! tracker queues events in the store, the workers read them back.

pub mod b24app;
pub mod bitrix24;
pub mod directory;
pub mod error;
pub mod factory;
pub mod install;
pub mod lines;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

// The tokio clock: pacing follows a paused clock in tests.
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{OutEvent, OutboxStore};

pub use error::{CrmError, HttpError};
pub use factory::{SinkWorker, Sinks, build_sinks};

/// Longest wait between retries.
const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;
/// First retry delay.
const BASE_BACKOFF_MS: i64 = 500;

/// How one delivery went.
#[derive(Debug)]
pub enum Delivery {
    /// Done (or nothing to send for this event on this sink).
    Ok,
    /// Try again later (when the CRM said "too many", the bucket is
    /// drained too).
    Retry(CrmError),
    /// The CRM refused it for good (or it cannot be sent at all).
    Rejected(CrmError),
}

/// A CRM endpoint.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    fn name(&self) -> &str;
    async fn deliver(&self, ev: &OutEvent, store: &Arc<dyn OutboxStore>) -> Delivery;

    /// Whether the sink can send at all (a Bitrix24 application without
    /// tokens cannot: its events wait in the outbox, untouched).
    fn connected(&self) -> bool {
        true
    }

    /// Events one request may carry when a backlog builds.
    fn max_batch(&self) -> usize {
        1
    }

    /// Whether the sink paces its requests itself (a Bitrix24 portal's
    /// bucket covers every request to it, delivery or not): the worker
    /// then leaves pacing to it instead of pacing twice.
    fn paces_itself(&self) -> bool {
        false
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
        let wait = self.until_token(now);
        if wait.is_zero() {
            self.tokens -= 1.0;
        }
        wait
    }

    /// How long until a token is there (0: one is now), none taken.
    pub fn until_token(&mut self, now: Instant) -> Duration {
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// The whole tokens there at the last [`Bucket::until_token`] or
    /// [`Bucket::reserve`]: how many requests may go now.
    pub fn whole_tokens(&self) -> usize {
        self.tokens as usize
    }

    /// The CRM said "too many": start from empty.
    pub fn drain(&mut self) {
        self.tokens = 0.0;
    }
}

/// Events a worker reads from the outbox at most at once.
const HEAD: usize = 64;

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
    let mut bucket = (!sink.paces_itself()).then(|| Bucket::new(cfg.rate_per_sec, cfg.burst));
    // Dead-letter moves of expired events failed in a row (the backoff's
    // exponent).
    let mut dead_failures = 0;
    let mut was_connected = None;
    // The last read of the outbox found expired events at its head: the
    // next one is not paced (moving them needs no request).
    let mut expired = false;
    loop {
        if shutdown.is_fired() {
            return;
        }
        // Not connected: the events stay queued as they are (no attempt
        // counted, no age limit), until the application gets its tokens.
        let connected = sink.connected();
        if was_connected != Some(connected) {
            metrics.set_crm_connected(&name, connected);
            if !connected {
                tracing::warn!(sink = %name, "CRM sink not connected: its events stay in the outbox until it is (sipscreen crm bitrix24 connect)");
            }
            was_connected = Some(connected);
        }
        if !connected {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        }
        // Paced: wait for a token before reading the outbox, and read only
        // as many events as the tokens let go one request each. Reading 64
        // events (payloads and all) and then waiting for the bucket read
        // the same head two to four times per delivery while a backlog
        // drained at a portal's 2 a second (~2M instructions a second).
        let mut limit = HEAD;
        if let Some(b) = bucket.as_mut()
            && !expired
        {
            let wait = b.until_token(Instant::now());
            if !wait.is_zero() {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
            if sink.max_batch() <= 1 {
                limit = b.whole_tokens().clamp(1, HEAD);
            }
        }
        let (st, n) = (store.clone(), name.clone());
        // In a fleet the events of calls this node holds a lease on; a run
        // stops halfway through the lease, so no event goes out once
        // another node may have taken its call.
        let lease_ends = store.lease().map(|l| Instant::now() + l / 2);
        let head = tokio::task::spawn_blocking(move || st.claim(&n, now_ms(), limit))
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
        expired = !old.is_empty();
        if !old.is_empty() {
            let st = store.clone();
            let ids = old.clone();
            let moved = tokio::task::spawn_blocking(move || {
                st.dead(&ids, "expired: older than [crm] max_event_age_secs", now)
            })
            .await;
            let error = match moved {
                Ok(Ok(())) => {
                    dead_failures = 0;
                    metrics.crm_dead(&name, old.len() as u64);
                    tracing::warn!(sink = %name, events = old.len(), "CRM events too old, moved to the dead-letter table");
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            // The same events come back from the head: wait before trying
            // again, as after a failed delivery.
            let wait = backoff_ms(dead_failures);
            dead_failures += 1;
            tracing::error!(sink = %name, events = old.len(), error = %error, retry_in_ms = wait, "moving expired CRM events to the dead-letter table failed");
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => continue,
            }
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
        let wait = bucket
            .as_mut()
            .map_or(Duration::ZERO, |b| b.reserve(Instant::now()));
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
            let mut run = Run {
                bucket: bucket.as_mut(),
                shutdown: &shutdown,
                lease_ends,
            };
            deliver_each(&*sink, &due, &store, &mut run).await
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
            Delivery::Retry(error) if error.pause().is_some() => {
                // The portal blocked the method until its reset: wait for
                // it with the event at the head, unchanged (no attempt
                // counted, nothing overtakes it).
                let pause = error.pause().unwrap_or_default();
                metrics.crm_delivery(&name, "rate_limited");
                tracing::warn!(sink = %name, event = %ev.kind, call = %ev.call, error = %error, "CRM method paused until its reset");
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
            Delivery::Retry(error) => {
                let rate_limited = error.is_rate_limit();
                if rate_limited && let Some(b) = bucket.as_mut() {
                    b.drain();
                }
                metrics.crm_delivery(
                    &name,
                    if rate_limited {
                        "rate_limited"
                    } else {
                        "retry"
                    },
                );
                tracing::warn!(sink = %name, event = %ev.kind, call = %ev.call, attempts = ev.attempts + 1, error_kind = error.kind(), error = %error, "CRM delivery failed, will retry");
                let next = now_ms() + backoff_ms(ev.attempts);
                let error = error.to_string();
                // Another node may take the call meanwhile (in order: this
                // event is still its first).
                let sink = name.clone();
                tokio::task::spawn_blocking(move || {
                    st.retry_later(ev.id, next, &error)?;
                    st.release(&sink, &[ev.call])
                })
                .await
            }
            Delivery::Rejected(reason) => {
                metrics.crm_delivery(&name, "rejected");
                metrics.crm_dead(&name, 1);
                tracing::error!(sink = %name, event = %ev.kind, call = %ev.call, error_kind = reason.kind(), reason = %reason, "CRM refused the event, moved to the dead-letter table");
                let reason = reason.to_string();
                let sink = name.clone();
                tokio::task::spawn_blocking(move || {
                    st.dead(&[ev.id], &reason, now_ms())?;
                    st.release(&sink, &[ev.call])
                })
                .await
            }
        };
        if let Ok(Err(e)) = done {
            tracing::error!(sink = %name, error = %e, "updating the outbox failed");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// What ends a run of single deliveries besides a failure.
struct Run<'a> {
    /// The worker's bucket (`None`: the sink paces itself).
    bucket: Option<&'a mut Bucket>,
    shutdown: &'a Shutdown,
    /// Halfway through the claim's lease (`None`: no lease).
    lease_ends: Option<Instant>,
}

impl Run<'_> {
    /// Whether the next event may go now (its token then taken).
    fn next_may_go(&mut self) -> bool {
        let now = Instant::now();
        !self.shutdown.is_fired()
            && self.lease_ends.is_none_or(|t| now < t)
            && self
                .bucket
                .as_mut()
                .is_none_or(|b| b.reserve(now).is_zero())
    }
}

/// Delivers `evs` one request each, in order, until one fails, the bucket
/// has no token for the next, the lease is half gone, or shutdown: how
/// many were delivered, and what happened to the next one if it failed.
/// The first event's token is already taken.
async fn deliver_each(
    sink: &dyn Sink,
    evs: &[OutEvent],
    store: &Arc<dyn OutboxStore>,
    run: &mut Run<'_>,
) -> (usize, Option<Delivery>) {
    for (i, ev) in evs.iter().enumerate() {
        if i > 0 && !run.next_may_go() {
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

/// Classifies an HTTP answer to `method`: 2xx ok, 408/429/5xx retry,
/// other 4xx rejected.
pub fn by_status(method: &'static str, status: u16, body: &str) -> Delivery {
    let error = || CrmError::Status {
        method,
        status,
        body: cut(body),
    };
    match status {
        200..=299 => Delivery::Ok,
        408 | 429 | 500..=599 => Delivery::Retry(error()),
        _ => Delivery::Rejected(error()),
    }
}

/// At most 200 characters of a body, for logs and the dead-letter table.
pub fn cut(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

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

    /// An outbox whose head is one long-expired event and whose
    /// dead-letter move always fails; it counts the moves tried and fires
    /// the shutdown past `LIMIT` of them (so a spinning worker stops).
    struct DeadFails {
        tries: std::sync::atomic::AtomicUsize,
        trigger: crate::shutdown::Trigger,
    }

    impl DeadFails {
        const LIMIT: usize = 1000;
    }

    impl OutboxStore for DeadFails {
        fn enqueue(&self, _: &[crate::store::NewEvent], _: i64) -> Result<(), StoreError> {
            Ok(())
        }
        fn head(&self, _: &str, _: usize) -> Result<Vec<OutEvent>, StoreError> {
            Ok(vec![OutEvent {
                id: 1,
                call: "c1".into(),
                kind: "call.started".into(),
                payload: "{}".into(),
                created_at: 0,
                attempts: 0,
                next_at: 0,
            }])
        }
        fn delivered(&self, _: &[i64]) -> Result<(), StoreError> {
            Ok(())
        }
        fn retry_later(&self, _: i64, _: i64, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        fn dead(&self, _: &[i64], _: &str, _: i64) -> Result<(), StoreError> {
            let n = self.tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n >= Self::LIMIT {
                self.trigger.fire();
            }
            Err(StoreError::Corrupt("disk full".into()))
        }
        fn outbox_stats(&self) -> Result<(i64, Option<i64>), StoreError> {
            Ok((1, Some(0)))
        }
        fn crm_call(&self, _: &str, _: &str) -> Result<Option<String>, StoreError> {
            Ok(None)
        }
        fn set_crm_call(&self, _: &str, _: &str, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        fn outbox_retrying(&self) -> Result<i64, StoreError> {
            Ok(0)
        }
        fn crm_finished(&self, _: &str, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn set_crm_finished(&self, _: &str, _: &str, _: i64) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// Never called: every event here is expired.
    struct NoSink;

    #[async_trait::async_trait]
    impl Sink for NoSink {
        fn name(&self) -> &str {
            "portal"
        }
        async fn deliver(&self, _: &OutEvent, _: &Arc<dyn OutboxStore>) -> Delivery {
            panic!("an expired event was delivered")
        }
    }

    /// An outbox of due events that delivered ones leave; counts the
    /// retries it is asked to schedule, the events read and the reads.
    struct Queue(
        std::sync::Mutex<Vec<OutEvent>>,
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    );

    impl Queue {
        fn with(n: i64) -> Queue {
            let now = now_ms();
            Queue(
                std::sync::Mutex::new(
                    (1..=n)
                        .map(|id| OutEvent {
                            id,
                            call: format!("c{id}"),
                            kind: "call.answered".into(),
                            payload: "{}".into(),
                            created_at: now,
                            attempts: 0,
                            next_at: 0,
                        })
                        .collect(),
                ),
                Default::default(),
                Default::default(),
                Default::default(),
            )
        }
    }

    impl OutboxStore for Queue {
        fn enqueue(&self, _: &[crate::store::NewEvent], _: i64) -> Result<(), StoreError> {
            Ok(())
        }
        fn head(&self, _: &str, limit: usize) -> Result<Vec<OutEvent>, StoreError> {
            let q = self.0.lock().unwrap();
            let head: Vec<OutEvent> = q.iter().take(limit).cloned().collect();
            self.2
                .fetch_add(head.len(), std::sync::atomic::Ordering::SeqCst);
            self.3.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(head)
        }
        fn delivered(&self, ids: &[i64]) -> Result<(), StoreError> {
            self.0.lock().unwrap().retain(|e| !ids.contains(&e.id));
            Ok(())
        }
        fn retry_later(&self, _: i64, _: i64, _: &str) -> Result<(), StoreError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn dead(&self, ids: &[i64], _: &str, _: i64) -> Result<(), StoreError> {
            self.delivered(ids)
        }
        fn outbox_stats(&self) -> Result<(i64, Option<i64>), StoreError> {
            Ok((0, None))
        }
        fn crm_call(&self, _: &str, _: &str) -> Result<Option<String>, StoreError> {
            Ok(None)
        }
        fn set_crm_call(&self, _: &str, _: &str, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        fn outbox_retrying(&self) -> Result<i64, StoreError> {
            Ok(0)
        }
        fn crm_finished(&self, _: &str, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn set_crm_finished(&self, _: &str, _: &str, _: i64) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// Runs a worker for `sink` at `rate`/`burst` until `store` is empty.
    async fn drain(sink: Arc<dyn Sink>, store: Arc<Queue>, rate: f64, burst: u32) {
        let (trigger, shutdown) = crate::shutdown::channel();
        let cfg = WorkerConfig {
            rate_per_sec: rate,
            burst,
            max_age_ms: 3_600_000,
        };
        let worker = tokio::spawn(run_worker(
            sink,
            store.clone(),
            Arc::new(Metrics::new()),
            cfg,
            shutdown,
        ));
        while !store.0.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        trigger.fire();
        worker.await.unwrap();
    }

    /// Accepts everything, noting when (on the tokio clock).
    #[derive(Default)]
    struct Clocked(std::sync::Mutex<Vec<Instant>>);

    #[async_trait::async_trait]
    impl Sink for Clocked {
        fn name(&self) -> &str {
            "portal"
        }
        async fn deliver(&self, _: &OutEvent, _: &Arc<dyn OutboxStore>) -> Delivery {
            self.0.lock().unwrap().push(Instant::now());
            Delivery::Ok
        }
    }

    /// A backlog goes out at the configured pace: the burst at once, then
    /// one request per 1 / rate (paused tokio clock, no real waiting).
    #[tokio::test(start_paused = true)]
    async fn a_backlog_is_delivered_at_the_rate_after_the_burst() {
        let store = Arc::new(Queue::with(9));
        let sink = Arc::new(Clocked::default());
        let t0 = Instant::now();
        drain(sink.clone(), store.clone(), 2.0, 3).await;
        let at: Vec<f64> = sink
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.duration_since(t0).as_secs_f64())
            .collect();
        assert_eq!(at.len(), 9, "{at:?}");
        // Each event read once: the worker waits for a token before it
        // reads, and reads as many as the tokens let go.
        assert_eq!(store.2.load(std::sync::atomic::Ordering::SeqCst), 9);
        for (i, t) in at.iter().enumerate() {
            // Three at once, then 0.5 s apart (a millisecond of slack for
            // the bucket's float arithmetic).
            let due = (i.saturating_sub(2)) as f64 * 0.5;
            assert!(
                (t - due).abs() < 0.001,
                "request {i} at {t} s, due at {due} s: {at:?}"
            );
        }
    }

    /// Expired events behind a delivered one (the bucket then empty) leave
    /// for the dead-letter table in reads of many, unpaced: pacing is for
    /// requests, and moving them makes none (paused tokio clock).
    #[tokio::test(start_paused = true)]
    async fn expired_events_are_moved_in_large_reads_without_pacing() {
        let store = Arc::new(Queue::with(301));
        for e in store.0.lock().unwrap().iter_mut().skip(1) {
            e.created_at -= 7_200_000;
        }
        let sink = Arc::new(Clocked::default());
        let t0 = Instant::now();
        drain(sink.clone(), store.clone(), 2.0, 1).await;
        assert_eq!(sink.0.lock().unwrap().len(), 1, "only the fresh one sent");
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}");
        // The fresh one, the first expired one (a read of one: one token),
        // then reads of 64.
        let reads = store.3.load(std::sync::atomic::Ordering::SeqCst);
        assert!(reads <= 10, "{reads} reads of the outbox");
    }

    /// A store that cannot move expired events to the dead-letter table:
    /// the worker backs off (0.5 s doubling) instead of retrying at once,
    /// and counts nothing as dead-lettered.
    #[tokio::test(start_paused = true)]
    async fn a_failing_dead_letter_move_backs_off() {
        let (trigger, shutdown) = crate::shutdown::channel();
        let store = Arc::new(DeadFails {
            tries: Default::default(),
            trigger,
        });
        let metrics = Arc::new(Metrics::new());
        let cfg = WorkerConfig {
            rate_per_sec: 10.0,
            burst: 1,
            max_age_ms: 1000,
        };
        let worker = tokio::spawn(run_worker(
            Arc::new(NoSink),
            store.clone(),
            metrics.clone(),
            cfg,
            shutdown,
        ));
        // 60 simulated seconds: 0.5 + 1 + 2 + 4 + 8 + 16 + 32 s of backoff
        // (plus jitter) fit at most 7 tries after the first.
        tokio::time::sleep(Duration::from_secs(60)).await;
        store.trigger.fire();
        worker.await.unwrap();
        let tries = store.tries.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..=8).contains(&tries),
            "{tries} dead-letter moves in 60 s"
        );
        assert!(
            !metrics
                .encode()
                .contains("sipscreen_crm_dead_letters_total{sink=\"portal\"}"),
            "nothing was dead-lettered, nothing counted"
        );
    }

    /// Refuses event 2 once with OPERATION_TIME_LIMIT (the portal's reset
    /// 30 s away); notes when each event went (on the tokio clock).
    #[derive(Default)]
    struct OperationLimited {
        sent: std::sync::Mutex<Vec<(i64, Instant)>>,
        refused: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Sink for OperationLimited {
        fn name(&self) -> &str {
            "portal"
        }
        async fn deliver(&self, ev: &OutEvent, _: &Arc<dyn OutboxStore>) -> Delivery {
            if ev.id == 2 && !self.refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Delivery::Retry(CrmError::OperationLimit {
                    method: "telephony.externalcall.register".into(),
                    wait_ms: 30_000,
                });
            }
            self.sent.lock().unwrap().push((ev.id, Instant::now()));
            Delivery::Ok
        }
    }

    /// OPERATION_TIME_LIMIT pauses the sink until the reset: the refused
    /// event is the next one sent, exactly then, nothing overtakes it, and
    /// no failed attempt is recorded (paused tokio clock).
    #[tokio::test(start_paused = true)]
    async fn an_operation_time_limit_pauses_until_the_reset_in_order() {
        let store = Arc::new(Queue::with(3));
        let sink = Arc::new(OperationLimited::default());
        let t0 = Instant::now();
        drain(sink.clone(), store.clone(), 100.0, 1).await;
        let sent = sink.sent.lock().unwrap().clone();
        let ids: Vec<i64> = sent.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2, 3]);
        let after = |i: usize| sent[i].1.duration_since(t0).as_secs_f64();
        assert!(after(0) < 0.1, "{}", after(0));
        assert!(
            (after(1) - 30.0).abs() < 0.1,
            "sent {} s after the start",
            after(1)
        );
        assert!(after(2) - after(1) < 0.1, "{}", after(2));
        assert_eq!(
            store.1.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "a pause is not a failed attempt"
        );
    }

    /// Paces its requests itself; accepts everything, noting when.
    #[derive(Default)]
    struct SelfPaced(Clocked);

    #[async_trait::async_trait]
    impl Sink for SelfPaced {
        fn name(&self) -> &str {
            "portal"
        }
        fn paces_itself(&self) -> bool {
            true
        }
        async fn deliver(&self, ev: &OutEvent, store: &Arc<dyn OutboxStore>) -> Delivery {
            self.0.deliver(ev, store).await
        }
    }

    /// A sink that paces itself (Bitrix24: one bucket per portal for every
    /// request) is not paced by the worker a second time.
    #[tokio::test(start_paused = true)]
    async fn the_worker_leaves_pacing_to_a_sink_that_paces_itself() {
        let store = Arc::new(Queue::with(5));
        let sink = Arc::new(SelfPaced::default());
        let t0 = Instant::now();
        drain(sink.clone(), store, 1.0, 1).await;
        let at = sink.0.0.lock().unwrap().clone();
        assert_eq!(at.len(), 5);
        let last = at.last().unwrap().duration_since(t0);
        assert!(
            last < Duration::from_millis(500),
            "paced by the worker: {last:?}"
        );
    }

    /// A store of another node's kind: claims hold 10 s; notes when each
    /// claim was made and which calls were given back.
    struct Leased {
        queue: Queue,
        claims: std::sync::Mutex<Vec<Instant>>,
        released: std::sync::Mutex<Vec<String>>,
    }

    impl OutboxStore for Leased {
        fn enqueue(&self, e: &[crate::store::NewEvent], now: i64) -> Result<(), StoreError> {
            self.queue.enqueue(e, now)
        }
        fn head(&self, sink: &str, limit: usize) -> Result<Vec<OutEvent>, StoreError> {
            self.queue.head(sink, limit)
        }
        fn claim(&self, sink: &str, _: i64, limit: usize) -> Result<Vec<OutEvent>, StoreError> {
            self.claims.lock().unwrap().push(Instant::now());
            self.queue.head(sink, limit)
        }
        fn release(&self, _: &str, calls: &[String]) -> Result<(), StoreError> {
            self.released.lock().unwrap().extend_from_slice(calls);
            Ok(())
        }
        fn lease(&self) -> Option<Duration> {
            Some(Duration::from_secs(10))
        }
        fn delivered(&self, ids: &[i64]) -> Result<(), StoreError> {
            self.queue.delivered(ids)
        }
        fn retry_later(&self, id: i64, next_at: i64, error: &str) -> Result<(), StoreError> {
            self.queue.retry_later(id, next_at, error)
        }
        fn dead(&self, ids: &[i64], reason: &str, now: i64) -> Result<(), StoreError> {
            self.queue.delivered(ids)?;
            self.queue.dead(ids, reason, now)
        }
        fn outbox_stats(&self) -> Result<(i64, Option<i64>), StoreError> {
            self.queue.outbox_stats()
        }
        fn outbox_retrying(&self) -> Result<i64, StoreError> {
            Ok(0)
        }
        fn crm_call(&self, _: &str, _: &str) -> Result<Option<String>, StoreError> {
            Ok(None)
        }
        fn set_crm_call(&self, _: &str, _: &str, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        fn crm_finished(&self, _: &str, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn set_crm_finished(&self, _: &str, _: &str, _: i64) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// Takes 3 s per event; refuses event 1 once for good (`Rejected`)
    /// when `refuse` is set; notes when each event went.
    #[derive(Default)]
    struct Slow {
        sent: std::sync::Mutex<Vec<(i64, Instant)>>,
        refuse: bool,
    }

    #[async_trait::async_trait]
    impl Sink for Slow {
        fn name(&self) -> &str {
            "portal"
        }
        async fn deliver(&self, ev: &OutEvent, _: &Arc<dyn OutboxStore>) -> Delivery {
            let at = Instant::now();
            tokio::time::sleep(Duration::from_secs(3)).await;
            if self.refuse && ev.id == 1 {
                return Delivery::Rejected(CrmError::NotRegistered);
            }
            self.sent.lock().unwrap().push((ev.id, at));
            Delivery::Ok
        }
    }

    async fn drain_leased(sink: Arc<Slow>, store: Arc<Leased>) {
        let (trigger, shutdown) = crate::shutdown::channel();
        let cfg = WorkerConfig {
            rate_per_sec: 1000.0,
            burst: 1000,
            max_age_ms: 3_600_000,
        };
        let worker = tokio::spawn(run_worker(
            sink,
            store.clone(),
            Arc::new(Metrics::new()),
            cfg,
            shutdown,
        ));
        while !store.queue.0.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        trigger.fire();
        worker.await.unwrap();
    }

    fn leased(n: i64) -> Arc<Leased> {
        Arc::new(Leased {
            queue: Queue::with(n),
            claims: Default::default(),
            released: Default::default(),
        })
    }

    /// In a fleet a run of deliveries stops halfway through its claim's
    /// lease and claims again: no event goes out when another node may
    /// already have taken its call (paused tokio clock).
    #[tokio::test(start_paused = true)]
    async fn a_run_stops_halfway_through_the_lease_and_claims_again() {
        let store = leased(6);
        let sink = Arc::new(Slow::default());
        drain_leased(sink.clone(), store.clone()).await;
        let sent = sink.sent.lock().unwrap().clone();
        let ids: Vec<i64> = sent.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6], "each once, in order");
        let claims = store.claims.lock().unwrap().clone();
        for (id, at) in &sent {
            let claim = claims.iter().rev().find(|c| *c <= at).expect("claimed");
            let since = at.duration_since(*claim);
            assert!(
                since < Duration::from_secs(5),
                "event {id} sent {since:?} after its claim (lease 10 s)"
            );
        }
    }

    /// An event refused for good gives its call's lease back at once.
    #[tokio::test(start_paused = true)]
    async fn a_dead_lettered_event_gives_its_call_back() {
        let store = leased(2);
        let sink = Arc::new(Slow {
            refuse: true,
            ..Slow::default()
        });
        drain_leased(sink.clone(), store.clone()).await;
        let ids: Vec<i64> = sink.sent.lock().unwrap().iter().map(|e| e.0).collect();
        assert_eq!(ids, [2]);
        assert_eq!(*store.released.lock().unwrap(), ["c1"]);
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
