//! The call tracker's cost per call, off the SIP path: what the
//! `call-tracker` thread spends (SIP events handled, CRM events built,
//! calls kept in and removed from a real SQLite file with
//! `synchronous=FULL`, the call log written) on the SIPp load's shape:
//! 1,000 calls a second, each INVITE / 180 / 200, a BYE one second later,
//! one flush per 100 ms of calls (the tracker's own period), one CRM sink.
//!
//! cargo bench --bench tracker
//!
//! Prints the thread's CPU per call for handling and for flushing (median
//! of REPEAT runs, default 5). `RING=N` (default 0) answers each call N
//! flushes after its INVITE, so its row is written, then updated.
//! Instructions per call (valgrind): `SIPSCREEN_CALLGRIND=1` runs one
//! pass of CALLS calls (default 10,000), each batch handled and flushed
//! inside `callgrind_step` (the events are built outside it, as the SIP
//! path builds them in the product):
//!
//! ```text
//! cargo bench --bench tracker --no-run
//! SIPSCREEN_CALLGRIND=1 valgrind --tool=callgrind --collect-atstart=no \
//!   --toggle-collect='*callgrind_step*' target/release/deps/tracker-HASH
//! ```
//!
//! and divide the summary Ir by CALLS.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sipscreen::calls::log::CallLog;
use sipscreen::calls::tracker::{Tracker, TrackerConfig};
use sipscreen::calls::{NewCall, RequestKind, SipEvent};
use sipscreen::config::Verdict;
use sipscreen::metrics::Metrics;
use sipscreen::screening::verstat::Attest;
use sipscreen::screening::{Client, CreateTag, Direction};
use sipscreen::store::service::thread_cpu_ns;
use sipscreen::store::sqlite::SqliteStore;

/// Calls per flush: 100 ms at 1,000 calls/s.
const BATCH: usize = 100;
/// Flushes a call lasts (1 s).
const HOLD: usize = 10;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn tracker(dir: &std::path::Path) -> Tracker {
    let store = Arc::new(SqliteStore::open_dir(dir).expect("store"));
    Tracker::new(
        CallLog::open(dir, 64 << 20, 2).expect("call log"),
        store,
        Arc::new(Metrics::new()),
        TrackerConfig {
            max_idle: Duration::from_secs(3600),
            sinks: vec!["portal".into()],
            directory: None,
        },
    )
}

fn sip_call_id(i: usize) -> Bytes {
    Bytes::from(format!("{i:016x}-a84b4c76e66710@carrier.example"))
}

fn invite(i: usize, at: SystemTime) -> SipEvent {
    SipEvent::Invite {
        sip_call_id: sip_call_id(i),
        call: Box::new(NewCall {
            call_id: format!("c{i:031x}"),
            direction: Direction::Inbound,
            verdict: Verdict::Log,
            client: Client::Number(4915112345678 + i as u64),
            line: Some(4930901820),
            create: CreateTag::Lead,
            source: "ADVERTISING".into(),
            reason: None,
            attest: Attest::None,
            responsible: Some("101".into()),
            change_responsible_on_transfer: true,
            update_directory_on_transfer: false,
            offer: false,
        }),
        at,
    }
}

fn response(i: usize, code: u16, at: SystemTime) -> SipEvent {
    SipEvent::InviteResponse {
        sip_call_id: sip_call_id(i),
        code,
        at,
    }
}

fn bye(i: usize, at: SystemTime) -> SipEvent {
    SipEvent::Request {
        sip_call_id: sip_call_id(i),
        kind: RequestKind::Bye,
        refer_to: None,
        at,
    }
}

/// One batch's events (built before the timed part: on the SIP path in
/// the product). A call is answered `ring` flushes after its INVITE
/// (0: in the same one, as on the SIPp load; 1 or more: its row is
/// written first and then updated, as a call that rings for a while).
fn batch(b: usize, calls: usize, ring: usize) -> Vec<SipEvent> {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + b as u64 * 100);
    let mut evs = Vec::with_capacity(BATCH * 4);
    for i in b * BATCH..((b + 1) * BATCH).min(calls) {
        evs.push(invite(i, at));
        evs.push(response(i, 180, at));
    }
    if b >= ring {
        for i in (b - ring) * BATCH..((b - ring + 1) * BATCH).min(calls) {
            evs.push(response(i, 200, at));
        }
    }
    if b >= HOLD {
        for i in (b - HOLD) * BATCH..((b - HOLD + 1) * BATCH).min(calls) {
            evs.push(bye(i, at));
        }
    }
    evs
}

/// Thread CPU of handling and of flushing, in ns, for `calls` calls
/// answered `ring` flushes after their INVITE.
fn pass(calls: usize, ring: usize) -> (u64, u64) {
    assert!(ring < HOLD, "RING must be below {HOLD}");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = tracker(dir.path());
    let batches = calls.div_ceil(BATCH) + HOLD;
    let (mut handle, mut flush) = (0, 0);
    for b in 0..batches {
        let (h, f) = callgrind_step(&mut t, batch(b, calls, ring));
        handle += h;
        flush += f;
    }
    assert_eq!(t.active(), 0, "every call ended");
    (handle, flush)
}

/// One tick's work: the batch's events handled, then the flush; their
/// thread CPU in ns.
#[inline(never)]
fn callgrind_step(t: &mut Tracker, evs: Vec<SipEvent>) -> (u64, u64) {
    let t0 = thread_cpu_ns();
    for ev in evs {
        t.handle(ev);
    }
    let t1 = thread_cpu_ns();
    t.flush();
    (t1 - t0, thread_cpu_ns() - t1)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let calls = env("CALLS", 10_000);
    let ring = env("RING", 0);
    if std::env::var_os("SIPSCREEN_CALLGRIND").is_some() {
        std::hint::black_box(pass(calls, ring));
        return;
    }
    let (mut hs, mut fs, mut ts) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..env("REPEAT", 5) {
        let (h, f) = pass(calls, ring);
        let per = |ns: u64| ns as f64 / calls as f64 / 1000.0;
        hs.push(per(h));
        fs.push(per(f));
        ts.push(per(h + f));
    }
    println!(
        "tracker, {calls} calls, answered {ring} flushes in: CPU per call {:.1} us (handle {:.1}, flush {:.1}); runs {:?}",
        median(ts.clone()),
        median(hs),
        median(fs),
        ts.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>()
    );
}
