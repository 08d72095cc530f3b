//! A fleet of three nodes on one PostgreSQL server (a throwaway cluster,
//! tests/common/pg.rs), one measured run per figure:
//!
//! - `propagation`: an add written on node A (committed, notified) until
//!   both B and C screen the number as listed, each node a real store,
//!   set, follower and LISTEN connection in this process; p50/p99/max over
//!   500 adds, one at a time.
//! - `load`: a new node's start on a 1M-entry list: open the store, read
//!   the change-log position, load the set (what `serve` does before it is
//!   ready).
//! - `import`: node B's screening while node A imports 1M lines (50
//!   transactions of 20 000, as an import commits them) and B's follower
//!   applies them: the time of a lookup on B (batches of 1000 lookups of
//!   listed and unlisted numbers, p50/p99 of the batches) before and
//!   during, and how long after A's last commit B holds every entry. A and
//!   B share this process and its two cores here, so the figure is an
//!   upper bound of what another machine's import does to a node.
//! - `outbox`: 30 000 queued events (10 000 calls) delivered by 1 and by 3
//!   nodes' workers claiming with leases, to a sink that accepts at once
//!   (the store's claim/commit cost, not a CRM's).
//!
//! cargo bench --bench fleet                  (all; a release build)
//! cargo bench --profile dev --bench fleet    (a debug build, quicker to build)
//! cargo bench --bench fleet -- propagation   (one part: propagation, load, import, outbox)

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;
#[path = "../tests/common/tools.rs"]
#[allow(dead_code)]
mod tools;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sipscreen::contacts::Directory;
use sipscreen::crm::{Delivery, Sink, WorkerConfig, run_worker};
use sipscreen::metrics::Metrics;
use sipscreen::screening::exceptions::ExceptionSet;
use sipscreen::store::follow::{ChangeLog, Follower, StoreHealth};
use sipscreen::store::postgres::PgStore;
use sipscreen::store::service::Exceptions;
use sipscreen::store::{Kind, NewEntry, NewEvent, OutEvent, OutboxStore};

struct Node {
    store: Arc<PgStore>,
    list: Arc<Exceptions>,
}

/// A node as `serve` starts one: position, load, then follow (listener
/// and follower on `rt`). The load's duration.
fn start(
    url: &str,
    rt: &tokio::runtime::Runtime,
    shutdown: &sipscreen::shutdown::Shutdown,
) -> (Node, Duration) {
    let t0 = Instant::now();
    let store = Arc::new(PgStore::open(url, None, 4).unwrap());
    let pos = store.latest_change().unwrap();
    let metrics = Arc::new(Metrics::new());
    let list = Arc::new(Exceptions::new(
        store.clone(),
        Arc::new(ExceptionSet::new()),
        metrics.clone(),
    ));
    list.load().unwrap();
    let took = t0.elapsed();
    let contacts = Arc::new(Directory::new());
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    rt.spawn(sipscreen::store::postgres::listen::run(
        store.target().clone(),
        tx,
        shutdown.clone(),
    ));
    let f = Follower::new(
        store.clone(),
        list.clone(),
        contacts,
        store.clone(),
        Arc::new(StoreHealth::new(store.shown())),
        metrics,
        pos,
    );
    rt.spawn(f.run(
        rx,
        Duration::from_secs(5),
        Duration::from_secs(7 * 86400),
        shutdown.clone(),
    ));
    (Node { store, list }, took)
}

fn phone(n: u64) -> NewEntry {
    let v = format!("+{n}");
    NewEntry {
        kind: Kind::Phone,
        value: v.clone(),
        given: v,
        comment: String::new(),
        origin: "bench".into(),
        expires_at: None,
        allow: false,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn propagation(c: &pg::Cluster) {
    let url = c.database();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_t, sd) = sipscreen::shutdown::channel();
    let nodes: Vec<Node> = (0..3).map(|_| start(&url, &rt, &sd).0).collect();
    // Wait until the three nodes' LISTEN connections are up (each has
    // `application_name = 'sipscreen-listen'`, idle after its LISTEN), so the first adds measure
    // propagation, not connecting.
    let db = pg::db_name(&url).to_string();
    let up = Instant::now() + Duration::from_secs(30);
    loop {
        let n = c.query_one(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND application_name = 'sipscreen-listen' AND state = 'idle' AND query ILIKE 'LISTEN %'"
            ),
        );
        if n.as_deref() == Some("3") {
            break;
        }
        assert!(Instant::now() < up, "the listeners never connected ({n:?})");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut lat = Vec::new();
    for i in 0..500u64 {
        let n = 4930_5000_0000 + i;
        let t0 = Instant::now();
        nodes[0].list.write(&[phone(n)], "bench").unwrap();
        let deadline = t0 + Duration::from_secs(10);
        while !nodes[1..]
            .iter()
            .all(|o| o.list.set().match_phone(n).is_some())
        {
            assert!(
                Instant::now() < deadline,
                "add {i} never reached the others"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        lat.push(t0.elapsed());
    }
    lat.sort();
    println!(
        "propagation (3 nodes, add on A until listed on B and C, 500 adds): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
    let _ = nodes[0].store.clone();
}

fn load(c: &pg::Cluster) {
    let url = c.database();
    let db = pg::db_name(&url).to_string();
    // A node creates the schema; the list is written with SQL (an import
    // through the API is measured by tests/pg_store.rs).
    drop(PgStore::open(&url, None, 1).unwrap());
    c.exec(
        &db,
        "INSERT INTO entries (kind, value, given, comment, origin, created_at, created_by)
         SELECT 'phone', '+49301' || lpad(i::text, 8, '0'), '+49301' || lpad(i::text, 8, '0'),
                'bench', 'bench', 1, 'bench'
           FROM generate_series(0, 999999) AS i;
         ANALYZE entries;",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_t, sd) = sipscreen::shutdown::channel();
    let (n, took) = start(&url, &rt, &sd);
    let (phones, _) = n.list.set().counts();
    assert_eq!(phones, 1_000_000);
    println!(
        "load (a new node on a 1M-entry list: open, position, load the set): {:.2} s",
        took.as_secs_f64()
    );
}

/// Per-lookup time of `n` batches of 1000 lookups on `list`, half of them
/// listed numbers; stops early when `until` says so (after one batch).
fn sample(list: &Exceptions, listed: &[u64], until: &dyn Fn() -> bool) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut k = 0usize;
    loop {
        let t0 = Instant::now();
        for _ in 0..500 {
            let n = listed[k % listed.len()];
            std::hint::black_box(list.set().match_phone(n));
            std::hint::black_box(list.set().match_phone(n + 5_000_000));
            k += 1;
        }
        out.push(t0.elapsed() / 1000);
        if until() {
            return out;
        }
    }
}

/// Writes 1M entries through `list` in 50 transactions of 20 000 (as an
/// import commits them) on a thread of its own; `done` gets the time of
/// the last commit.
fn import_1m(
    list: Arc<Exceptions>,
    done: Arc<std::sync::Mutex<Option<Instant>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for t in 0..50u64 {
            let e: Vec<NewEntry> = (0..20_000u64)
                .map(|i| phone(4930_2000_0000 + t * 20_000 + i))
                .collect();
            list.write(&e, "bench").unwrap();
        }
        *done.lock().unwrap() = Some(Instant::now());
    })
}

fn during_import(c: &pg::Cluster) {
    let url = c.database();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_t, sd) = sipscreen::shutdown::channel();
    let a = start(&url, &rt, &sd).0;
    let b = start(&url, &rt, &sd).0;
    // 10 000 numbers listed before, reaching B by its follower.
    let listed: Vec<u64> = (0..10_000u64).map(|i| 4930_6000_0000 + i).collect();
    for chunk in listed.chunks(5000) {
        let e: Vec<NewEntry> = chunk.iter().map(|&n| phone(n)).collect();
        a.list.write(&e, "bench").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.list.set().counts().0 < listed.len() {
        assert!(Instant::now() < deadline, "B never got the first entries");
        std::thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    let mut before = sample(&b.list, &listed, &|| t0.elapsed() > Duration::from_secs(3));
    let total = listed.len() + 1_000_000;
    let done = Arc::new(std::sync::Mutex::new(None::<Instant>));
    // Control: the same import by a node of another database, which B
    // does not follow: what the import's CPU (A's and the server's) does
    // to B's lookups on these shared cores, with nothing for B to apply.
    let other = start(&c.database(), &rt, &sd).0;
    let t2 = Instant::now();
    let control_done = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let control_writer = import_1m(other.list.clone(), control_done.clone());
    let mut control = sample(&b.list, &listed, &|| control_done.lock().unwrap().is_some());
    control_writer.join().unwrap();
    let control_took = t2.elapsed();
    control.sort();
    let writer = import_1m(a.list.clone(), done.clone());
    let t1 = Instant::now();
    let mut during = sample(&b.list, &listed, &|| {
        b.list.set().counts().0 >= total || t1.elapsed() > Duration::from_secs(600)
    });
    assert_eq!(
        b.list.set().counts().0,
        total,
        "B never got the whole import"
    );
    let applied = Instant::now();
    writer.join().unwrap();
    let took = t1.elapsed();
    let behind = applied.saturating_duration_since(done.lock().unwrap().expect("written"));
    before.sort();
    during.sort();
    println!(
        "import (B's lookups while A imports 1M lines and B applies them): before p50 {:.0} ns, p99 {:.0} ns ({} batches); control, another database's import, nothing to apply: p50 {:.0} ns, p99 {:.0} ns ({} batches over {:.1} s); during p50 {:.0} ns, p99 {:.0} ns ({} batches over {:.1} s); B held all 1M {:.0} ms after A's last commit",
        pct(&before, 0.5).as_nanos(),
        pct(&before, 0.99).as_nanos(),
        before.len(),
        pct(&control, 0.5).as_nanos(),
        pct(&control, 0.99).as_nanos(),
        control.len(),
        control_took.as_secs_f64(),
        pct(&during, 0.5).as_nanos(),
        pct(&during, 0.99).as_nanos(),
        during.len(),
        took.as_secs_f64(),
        ms(behind)
    );
}

/// Accepts every event at once.
struct Accept;

#[async_trait::async_trait]
impl Sink for Accept {
    fn name(&self) -> &str {
        "bench"
    }
    async fn deliver(&self, _: &OutEvent, _: &Arc<dyn OutboxStore>) -> Delivery {
        Delivery::Ok
    }
}

fn outbox(c: &pg::Cluster, nodes: usize) {
    let url = c.database();
    let stores: Vec<Arc<PgStore>> = (0..nodes)
        .map(|_| Arc::new(PgStore::open(&url, None, 4).unwrap()))
        .collect();
    let events: Vec<NewEvent> = (0..10_000)
        .flat_map(|i| {
            ["call.started", "call.answered", "call.ended"].map(|k| NewEvent {
                sink: "bench".into(),
                call: format!("call-{i}"),
                kind: k.into(),
                payload: "{}".into(),
            })
        })
        .collect();
    stores[0]
        .enqueue(&events, sipscreen::clock::now_ms())
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (trigger, sd) = sipscreen::shutdown::channel();
    let t0 = Instant::now();
    for s in &stores {
        rt.spawn(run_worker(
            Arc::new(Accept),
            s.clone(),
            Arc::new(Metrics::new()),
            WorkerConfig {
                rate_per_sec: 1e9,
                burst: 1_000_000,
                max_age_ms: 3_600_000,
            },
            sd.clone(),
        ));
    }
    while stores[0].outbox_stats().unwrap().0 > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t0.elapsed();
    trigger.fire();
    println!(
        "outbox ({nodes} node(s) claiming with leases, 30 000 events of 10 000 calls): {:.2} s, {:.0} events/s",
        took.as_secs_f64(),
        30_000.0 / took.as_secs_f64()
    );
}

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |p: &str| only.is_empty() || only.iter().any(|o| p.contains(o.as_str()));
    let Some(c) = pg::cluster() else {
        eprintln!("no PostgreSQL: nothing measured");
        return;
    };
    if want("propagation") {
        propagation(c);
    }
    if want("load") {
        load(c);
    }
    if want("import") {
        during_import(c);
    }
    if want("outbox") {
        outbox(c, 1);
        outbox(c, 3);
    }
}
