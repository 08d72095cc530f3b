//! The CRM worker with a backlog, against a real webhook receiver on
//! loopback and a real SQLite outbox: a sink that takes one event per
//! request (the webhook) gets them one request each, strictly in order and
//! paced by its bucket, but the worker reads the outbox and commits the
//! deliveries once per run of due events, not once per event. (Found by
//! benches/sipp/soak.sh: at 500 calls/s, 750 events/s, the worker read 64
//! queued events and committed one fsynced transaction for every event it
//! delivered, and the backlog grew.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use sipscreen::clock::now_ms;
use sipscreen::crm::webhook::Webhook;
use sipscreen::crm::{WorkerConfig, run_worker};
use sipscreen::metrics::Metrics;
use sipscreen::store::sqlite::SqliteStore;
use sipscreen::store::{NewEvent, OutEvent, OutboxStore, StoreError};

/// The SQLite outbox, counting the worker's reads that found events and
/// its delivery commits.
struct Counting {
    inner: SqliteStore,
    reads: AtomicUsize,
    commits: AtomicUsize,
}

impl OutboxStore for Counting {
    fn enqueue(&self, events: &[NewEvent], now: i64) -> Result<(), StoreError> {
        self.inner.enqueue(events, now)
    }
    fn head(&self, sink: &str, limit: usize) -> Result<Vec<OutEvent>, StoreError> {
        let h = self.inner.head(sink, limit)?;
        if !h.is_empty() {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
        Ok(h)
    }
    fn delivered(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.delivered(ids)
    }
    fn retry_later(&self, id: i64, next_at: i64, error: &str) -> Result<(), StoreError> {
        self.inner.retry_later(id, next_at, error)
    }
    fn dead(&self, ids: &[i64], reason: &str, now: i64) -> Result<(), StoreError> {
        self.inner.dead(ids, reason, now)
    }
    fn outbox_stats(&self) -> Result<(i64, Option<i64>), StoreError> {
        self.inner.outbox_stats()
    }
    fn crm_call(&self, sink: &str, call: &str) -> Result<Option<String>, StoreError> {
        self.inner.crm_call(sink, call)
    }
    fn set_crm_call(&self, sink: &str, call: &str, crm_id: &str) -> Result<(), StoreError> {
        self.inner.set_crm_call(sink, call, crm_id)
    }
    fn outbox_retrying(&self) -> Result<i64, StoreError> {
        self.inner.outbox_retrying()
    }
    fn crm_finished(&self, sink: &str, call: &str) -> Result<bool, StoreError> {
        self.inner.crm_finished(sink, call)
    }
    fn set_crm_finished(&self, sink: &str, call: &str, at: i64) -> Result<(), StoreError> {
        self.inner.set_crm_finished(sink, call, at)
    }
}

/// What the receiver got: (X-Sipscreen-Event, body, when), in order.
type Got = Arc<Mutex<Vec<(String, String, Instant)>>>;

async fn receiver() -> (Got, SocketAddr) {
    async fn hook(State(got): State<Got>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let kind = headers
            .get("x-sipscreen-event")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = String::from_utf8_lossy(&body).into_owned();
        got.lock().unwrap().push((kind, body, Instant::now()));
        StatusCode::OK
    }
    let got = Got::default();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(got.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (got, addr)
}

/// `n` events of sink `hook`, three per call (started, answered, ended).
fn backlog(n: usize) -> Vec<NewEvent> {
    use sipscreen::events::{CallEvent, Create, Direction, Ended, EventKind};
    (0..n)
        .map(|i| {
            let call = format!("c{:04}", i / 3);
            let kind = match i % 3 {
                0 => EventKind::Started,
                1 => EventKind::Answered {
                    answer: "2027-01-15T08:00:01.000Z".into(),
                },
                _ => EventKind::Ended(Ended {
                    status: 200,
                    outcome: "completed".into(),
                    duration: 5,
                    end: "2027-01-15T08:00:06.000Z".into(),
                    answered: true,
                }),
            };
            let ev = CallEvent {
                call_id: call.clone(),
                direction: Direction::Inbound,
                line: Some("+4930901820".into()),
                client: "+4917000000001".into(),
                create: Create::Lead,
                crm_create: true,
                offer: false,
                // The event's place in the backlog, for order checks.
                source: format!("seq{i}"),
                responsible: None,
                start: "2027-01-15T08:00:00.000Z".into(),
                kind,
            };
            NewEvent {
                sink: "hook".into(),
                call,
                kind: ev.kind.name().into(),
                payload: ev.to_json(),
            }
        })
        .collect()
}

struct Run {
    got: Got,
    store: Arc<Counting>,
    /// Just before the worker (and its bucket) started.
    started: Instant,
    _dir: tempfile::TempDir,
}

/// Queues `n` events, runs a worker with the given bucket until the
/// receiver has all of them (30 s at most), then stops it.
async fn deliver(n: usize, rate_per_sec: f64, burst: u32) -> Run {
    let (got, addr) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Counting {
        inner: SqliteStore::open(&dir.path().join("sipscreen.db")).unwrap(),
        reads: AtomicUsize::new(0),
        commits: AtomicUsize::new(0),
    });
    store.enqueue(&backlog(n), now_ms()).unwrap();
    let sink = Webhook::new(
        "hook",
        &format!("http://{addr}/hook"),
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    let (trigger, shutdown) = sipscreen::shutdown::channel();
    let started = Instant::now();
    let worker = tokio::spawn(run_worker(
        Arc::new(sink),
        store.clone() as Arc<dyn OutboxStore>,
        Arc::new(Metrics::new()),
        WorkerConfig {
            rate_per_sec,
            burst,
            max_age_ms: 3_600_000,
        },
        shutdown,
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().len() < n || store.outbox_stats().unwrap().0 > 0 {
        assert!(
            Instant::now() < deadline,
            "{} of {n} events delivered, {} still queued",
            got.lock().unwrap().len(),
            store.outbox_stats().unwrap().0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    trigger.fire();
    worker.await.unwrap();
    Run {
        got,
        store,
        started,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_read_and_committed_per_run_of_events_not_per_event() {
    let n = 300;
    let run = deliver(n, 100_000.0, 100_000).await;
    let got = run.got.lock().unwrap().clone();
    // every event once, one request each, in queue order
    let want: Vec<(String, String)> = backlog(n)
        .into_iter()
        .map(|e| (e.kind, e.payload))
        .collect();
    let have: Vec<(String, String)> = got.iter().map(|(k, b, _)| (k.clone(), b.clone())).collect();
    assert_eq!(have, want);
    // 300 events in runs of at most 64: 5 reads and 5 commits; a read or
    // a commit per event is the defect
    let reads = run.store.reads.load(Ordering::SeqCst);
    let commits = run.store.commits.load(Ordering::SeqCst);
    assert!(reads <= 10, "{reads} outbox reads for {n} events");
    assert!(commits <= 10, "{commits} delivery commits for {n} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_events_still_keep_to_the_bucket() {
    // 5 at once, then 20 a second: request k (from 0) takes the bucket's
    // (k + 1)-th token, there (k + 1 - 5) / 20 s after the worker started
    let (n, rate, burst) = (25, 20.0, 5);
    let run = deliver(n, rate, burst).await;
    let got = run.got.lock().unwrap().clone();
    assert_eq!(got.len(), n);
    for (k, (_, _, at)) in got.iter().enumerate().skip(burst as usize) {
        let earliest = (k + 1 - burst as usize) as f64 / rate;
        let after = at.duration_since(run.started).as_secs_f64();
        assert!(
            after >= earliest,
            "request {k} arrived {after:.3} s after the start, the bucket allows it at {earliest:.3} s"
        );
    }
}
