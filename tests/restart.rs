//! The real binary restarted under calls in progress: calls are brought up
//! from a fake trunk to a fake PBX (UDP on loopback) through `sipscreen
//! serve`, the stand-in Bitrix24 portal registers them, the process is
//! stopped (kill -9, or SIGTERM) and started again on the same data
//! directory and SIP port. Then BYE and CANCEL end calls as if nothing had
//! happened, a silent call expires after `max_call_secs`, and the portal
//! has seen exactly one register and one finish per call, the call log one
//! record per call.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::binary::{Serving, count, wait_until};
use common::crm::Crm;
use common::{BASE_CONFIG, EXCEPTIONS, header, invite, response_to};
use serde_json::Value;

/// Idle limit of the test's calls: the answered calls' BYE comes after a
/// restart, which takes a debug build 2 s on an idle machine (loading the
/// phone number metadata) and 5 s on a loaded one; the silent call expires
/// this long after its 200, which bounds the test's time.
const MAX_CALL_SECS: u64 = 10;

struct Peers {
    trunk: UdpSocket,
    pbx: UdpSocket,
    /// The sidecar's SIP port (the same across the restart).
    sip: SocketAddr,
}

fn recv(s: &UdpSocket) -> String {
    let mut buf = vec![0u8; 65536];
    let (n, _) = s.recv_from(&mut buf).expect("a datagram within the wait");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Receives until a message starting with `start` (retransmissions and
/// provisional responses skipped).
fn recv_starting(s: &UdpSocket, start: &str) -> String {
    loop {
        let m = recv(s);
        if m.starts_with(start) {
            return m;
        }
    }
}

/// One call's dialog as the trunk sees it.
struct Dialog {
    id: String,
    /// The INVITE as the PBX received it.
    at_pbx: String,
    /// The 200 as the trunk received it (None: not answered).
    ok: Option<String>,
    answered_at: Option<Instant>,
}

impl Peers {
    fn new() -> Peers {
        let trunk = UdpSocket::bind("127.0.0.2:0").unwrap();
        let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&trunk, &pbx] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        // A free port for the sidecar, kept across its restart.
        let sip = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Peers { trunk, pbx, sip }
    }

    /// INVITE from the trunk, forwarded to the PBX, answered with `code`.
    fn call(&self, id: &str, caller: &str, code: u16) -> Dialog {
        let inv = invite(
            self.sip,
            self.trunk.local_addr().unwrap(),
            "+4930901820",
            caller,
            id,
            "",
        );
        self.trunk.send_to(inv.as_bytes(), self.sip).unwrap();
        let at_pbx = recv_starting(&self.pbx, "INVITE");
        let contact = format!("sip:agent@{}", self.pbx.local_addr().unwrap());
        let reason = if code == 200 { "OK" } else { "Ringing" };
        let r = response_to(&at_pbx, code, reason, "callee-tag", &contact);
        self.pbx.send_to(r.as_bytes(), self.sip).unwrap();
        let got = recv_starting(&self.trunk, &format!("SIP/2.0 {code}"));
        let mut d = Dialog {
            id: id.to_string(),
            at_pbx,
            ok: None,
            answered_at: None,
        };
        if code == 200 {
            d.answered_at = Some(Instant::now());
            d.ok = Some(got);
            self.in_dialog(&d, "ACK", 1);
        }
        d
    }

    /// An in-dialog request from the trunk along the Record-Route of the
    /// 200; the PBX receives it (and answers 200 unless it is an ACK).
    fn in_dialog(&self, d: &Dialog, method: &str, cseq: u32) {
        let ok = d.ok.as_ref().expect("answered");
        let route = header(ok, "Record-Route").expect("the sidecar record-routes");
        let req = format!(
            "{method} sip:agent@{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {trunk};branch=z9hG4bK-{method}-{id}\r\nRoute: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:x@carrier.example>;tag=f-{id}\r\nTo: <sip:y@carrier.example>;tag=callee-tag\r\nCall-ID: {id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            pbx = self.pbx.local_addr().unwrap(),
            trunk = self.trunk.local_addr().unwrap(),
            id = d.id,
        );
        self.trunk.send_to(req.as_bytes(), self.sip).unwrap();
        let got = recv_starting(&self.pbx, method);
        if method != "ACK" {
            let r = response_to(&got, 200, "OK", "", "");
            self.pbx.send_to(r.as_bytes(), self.sip).unwrap();
            recv_starting(&self.trunk, "SIP/2.0 200");
        }
    }

    /// CANCEL of a ringing call; the PBX answers the INVITE 487.
    fn cancel(&self, d: &Dialog) {
        let ruri = d.at_pbx.lines().next().unwrap().split(' ').nth(1).unwrap();
        let c = format!(
            "CANCEL {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {trunk};branch=z9hG4bK-{id}\r\nMax-Forwards: 70\r\nFrom: <sip:x@carrier.example>;tag=f-{id}\r\nTo: <sip:y@carrier.example>\r\nCall-ID: {id}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
            trunk = self.trunk.local_addr().unwrap(),
            id = d.id,
        );
        self.trunk.send_to(c.as_bytes(), self.sip).unwrap();
        recv_starting(&self.pbx, "CANCEL");
        let r = response_to(&d.at_pbx, 487, "Request Terminated", "callee-tag", "");
        self.pbx.send_to(r.as_bytes(), self.sip).unwrap();
        recv_starting(&self.trunk, "SIP/2.0 487");
    }
}

/// The harness's base config on a fixed SIP port, with one Bitrix24 sink
/// at `crm` and `[crm] shutdown_grace_secs = grace`.
fn write_config(dir: &Path, p: &Peers, crm: SocketAddr, grace: u64, timeout_ms: u64) -> PathBuf {
    std::fs::write(dir.join("exceptions.txt"), EXCEPTIONS).unwrap();
    let text = BASE_CONFIG
        .replace("udp = [\"127.0.0.1:0\"]", &format!("udp = [\"{}\"]", p.sip))
        .replace("tcp = [\"127.0.0.1:0\"]", "tcp = []")
        .replace("{PBX}", &p.pbx.local_addr().unwrap().to_string())
        .replace("{PBX_TRANSPORT}", "udp")
        .replace("{TRUNK}", &p.trunk.local_addr().unwrap().to_string())
        .replace("{DIR}", dir.to_str().unwrap())
        + &format!(
            "\n[calls]\nmax_call_secs = {MAX_CALL_SECS}\n\n[crm]\nshutdown_grace_secs = {grace}\n\
             {}timeout_ms = {timeout_ms}\n",
            common::crm::app_sink("portal", crm, 50.0, 50)
        );
    let path = dir.join("sipscreen.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn call_log(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("data/calls.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ms(v: &Value) -> i64 {
    sipscreen::clock::unix_ms(humantime::parse_rfc3339(v.as_str().unwrap()).unwrap())
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Kill,
    Term,
}

async fn calls_survive_a_restart(stop: Stop) {
    let (crm, crm_addr) = Crm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let peers = Peers::new();
    let config = write_config(dir.path(), &peers, crm_addr, 5, 5000);
    let db = dir.path().join("data/sipscreen.db");

    let run = Serving::start(&config);
    let bye = ["r-bye1", "r-bye2", "r-bye3"];
    let mut answered: Vec<Dialog> = bye
        .iter()
        .enumerate()
        .map(|(i, id)| peers.call(id, &format!("+49170111111{i:02}"), 200))
        .collect();
    let silent = peers.call("r-silent", "+4917022222222", 200);
    let ringing = peers.call("r-ringing", "+4917033333333", 180);
    let all = 5;

    // Registered, and the sidecar has recorded the CALL_IDs and kept the
    // calls: past the one window no sidecar can close (the portal answered
    // but the answer is not on disk yet, where a restart registers again).
    crm.wait_for("telephony.externalcall.register", all).await;
    wait_until("the CALL_IDs and the calls on disk", || {
        count(&db, "SELECT count(*) FROM crm_calls") == all as i64
            && count(&db, "SELECT count(*) FROM outbox") == 0
            && count(&db, "SELECT count(*) FROM active_calls") == all as i64
    });

    let stopped_at = SystemTime::now();
    let mut run = run;
    match stop {
        Stop::Kill => {
            run.child.kill().unwrap();
            run.child.wait().unwrap();
        }
        Stop::Term => {
            run.signal("-TERM");
            run.wait_for("sipscreen stopped");
            let status = run.child.wait().unwrap();
            assert!(status.success(), "{status}");
            // Not ended by the shutdown: kept for the next start.
            assert_eq!(count(&db, "SELECT count(*) FROM active_calls"), all as i64);
            assert!(call_log(dir.path()).is_empty());
        }
    }
    drop(run);
    assert!(crm.calls("telephony.externalcall.finish").is_empty());

    let run = Serving::start(&config);
    let line = run
        .early
        .iter()
        .find(|l| l.contains("calls in progress restored from the store"))
        .unwrap_or_else(|| panic!("no restore line in {:#?}", run.early));
    assert!(line.contains("restored=5"), "{line}");
    let metrics = reqwest::get(format!("http://{}/metrics", run.admin()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sipscreen_calls_restored_total 5")),
        "{metrics}"
    );
    let restarted_at = SystemTime::now();

    let mut bye_at = Vec::new();
    for (i, d) in answered.iter_mut().enumerate() {
        peers.in_dialog(d, "BYE", 2 + i as u32);
        bye_at.push(d.answered_at.unwrap().elapsed());
    }
    peers.cancel(&ringing);

    // The silent one expires; then every call has its one record.
    wait_until("a call log record per call", || {
        call_log(dir.path()).len() >= all
    });
    crm.wait_for("telephony.externalcall.finish", all).await;
    // A graceful stop: whatever is queued is delivered, nothing is left.
    run.signal("-TERM");
    run.wait_for("sipscreen stopped");
    drop(run);
    assert_eq!(count(&db, "SELECT count(*) FROM outbox"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM active_calls"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letter"), 0);

    let log = call_log(dir.path());
    assert_eq!(log.len(), all, "{log:#?}");
    let rec = |id: &str| {
        let mine: Vec<&Value> = log.iter().filter(|r| r["sip_call_id"] == id).collect();
        assert_eq!(mine.len(), 1, "{id}: {log:#?}");
        mine[0].clone()
    };
    for (i, id) in bye.iter().enumerate() {
        let r = rec(id);
        assert_eq!(r["outcome"], "completed", "{r}");
        // Answered before the stop, ended after the restart.
        assert!(
            ms(&r["answer"]) <= sipscreen::clock::unix_ms(stopped_at),
            "{r}"
        );
        assert!(
            ms(&r["end"]) >= sipscreen::clock::unix_ms(restarted_at) - 1000,
            "{r}"
        );
        let d = r["duration"].as_u64().unwrap();
        assert_eq!(d, ((ms(&r["end"]) - ms(&r["answer"])) / 1000) as u64, "{r}");
        assert!(
            (d as f64 - bye_at[i].as_secs_f64()).abs() <= 1.0,
            "{id}: {d} s logged, {:?} between 200 and BYE",
            bye_at[i]
        );
    }
    let s = rec("r-silent");
    assert_eq!(s["outcome"], "expired", "{s}");
    assert!(
        ms(&s["end"]) - ms(&s["answer"]) >= MAX_CALL_SECS as i64 * 1000,
        "{s}"
    );
    let c = rec("r-ringing");
    assert_eq!(
        (c["outcome"].as_str(), c["status"].as_u64()),
        (Some("cancelled"), Some(487))
    );
    drop(silent);

    // The portal: one register per call, one finish per register.
    let registered = crm.registered.lock().unwrap().clone();
    let mut ext: Vec<&str> = registered.iter().map(|(e, _)| e.as_str()).collect();
    ext.sort();
    ext.dedup();
    assert_eq!(ext.len(), all, "a call registered twice: {registered:?}");
    assert_eq!(registered.len(), all, "{registered:?}");
    let finishes = crm.calls("telephony.externalcall.finish");
    assert_eq!(finishes.len(), all, "{finishes:#?}");
    for (ext, id) in &registered {
        let mine: Vec<&Value> = finishes.iter().filter(|f| f["CALL_ID"] == *id).collect();
        assert_eq!(mine.len(), 1, "{ext} ({id}): {finishes:#?}");
        let r = log
            .iter()
            .find(|r| r["call_id"] == *ext)
            .unwrap_or_else(|| panic!("{ext} in the call log"));
        let want = if r["outcome"] == "cancelled" {
            "304"
        } else {
            "200"
        };
        assert_eq!(mine[0]["STATUS_CODE"], want, "{r}");
        assert_eq!(mine[0]["DURATION"].as_u64(), r["duration"].as_u64(), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_progress_survive_kill_9() {
    calls_survive_a_restart(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_progress_survive_sigterm() {
    calls_survive_a_restart(Stop::Term).await;
}

/// The crash windows of delivery, replayed on a real store: the portal
/// answered (register or finish) and the sidecar recorded it, but died
/// before removing the outbox row. The redelivery after the restart must
/// not reach the portal again; a call never sent goes out as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_events_already_sent_are_not_sent_again() {
    use sipscreen::crm::bitrix24::{App, AppConfig, Bitrix24};
    use sipscreen::store::sqlite::SqliteStore;
    use sipscreen::store::{NewEvent, OutboxStore};
    use std::sync::Arc;

    let (crm, addr) = Crm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_dir(dir.path()).unwrap());
    let ev = |call: &str, kind: &str| {
        use sipscreen::events::{CallEvent, Create, Direction, Ended, EventKind};
        let kind = match kind {
            "call.started" => EventKind::Started,
            _ => EventKind::Ended(Ended {
                status: 200,
                outcome: "completed".into(),
                duration: 3,
                end: "2026-01-01T00:00:03.000Z".into(),
                answered: true,
            }),
        };
        NewEvent {
            sink: "portal".into(),
            call: call.into(),
            kind: kind.name().into(),
            payload: CallEvent {
                call_id: call.into(),
                direction: Direction::Inbound,
                line: Some("+4930901820".into()),
                client: "+4917000000001".into(),
                create: Create::Lead,
                crm_create: true,
                offer: false,
                source: "CALL".into(),
                responsible: None,
                start: "2026-01-01T00:00:00.000Z".into(),
                kind,
            }
            .to_json(),
        }
    };
    for id in ["ext.registered", "ext.finished", "ext.alone"] {
        crm.known_call(id);
    }
    // "registered": register answered and kept, row not yet removed.
    store
        .set_crm_call("portal", "registered", "ext.registered")
        .unwrap();
    // "finished": register and finish both went out.
    store
        .set_crm_call("portal", "finished", "ext.finished")
        .unwrap();
    store.set_crm_finished("portal", "finished", 1).unwrap();
    let sink: Arc<dyn sipscreen::crm::Sink> = Arc::new(
        Bitrix24::new(
            "portal",
            Arc::new(
                App::new(
                    AppConfig {
                        sink: "portal".into(),
                        rest_url: format!("http://{addr}/rest/"),
                        oauth_url: format!("http://{addr}/oauth/token/"),
                        client_id: common::crm::CLIENT_ID.into(),
                        client_secret: common::crm::CLIENT_SECRET.into(),
                        timeout: Duration::from_secs(5),
                    },
                    Some(sipscreen::store::CrmTokens {
                        refresh: common::crm::FIRST_REFRESH.into(),
                        ..Default::default()
                    }),
                    None,
                )
                .unwrap(),
            ),
            "USER_ID",
            Duration::from_secs(5),
        )
        .unwrap()
        .with_default_user(Some("1".into())),
    );
    let outbox: Arc<dyn OutboxStore> = store.clone();
    let metrics = Arc::new(sipscreen::metrics::Metrics::new());
    // Delivers what is queued, then stops the worker.
    let deliver = |events: Vec<NewEvent>| {
        let (sink, outbox, metrics) = (sink.clone(), outbox.clone(), metrics.clone());
        async move {
            outbox.enqueue(&events, sipscreen::clock::now_ms()).unwrap();
            let (trigger, sd) = sipscreen::shutdown::channel();
            let cfg = sipscreen::crm::WorkerConfig {
                rate_per_sec: 100.0,
                burst: 100,
                max_age_ms: 60_000,
            };
            let worker = tokio::spawn(sipscreen::crm::run_worker(
                sink,
                outbox.clone(),
                metrics,
                cfg,
                sd,
            ));
            let deadline = Instant::now() + Duration::from_secs(20);
            while outbox.outbox_stats().unwrap().0 > 0 {
                assert!(Instant::now() < deadline, "the outbox did not empty");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            trigger.fire();
            worker.await.unwrap();
        }
    };
    // A backlog: one batch request.
    deliver(vec![
        ev("registered", "call.started"),
        ev("finished", "call.started"),
        ev("fresh", "call.started"),
        ev("registered", "call.ended"),
        ev("finished", "call.ended"),
        ev("fresh", "call.ended"),
    ])
    .await;
    // One at a time: single requests.
    store.set_crm_call("portal", "alone", "ext.alone").unwrap();
    deliver(vec![ev("alone", "call.started")]).await;
    deliver(vec![ev("alone", "call.ended")]).await;
    deliver(vec![ev("alone", "call.ended")]).await;

    let registers: Vec<String> = crm
        .calls("telephony.externalcall.register")
        .iter()
        .map(|r| r["EXTERNAL_CALL_ID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(registers, ["fresh"]);
    let fresh_id = crm.registered.lock().unwrap()[0].1.clone();
    let mut finished: Vec<String> = crm
        .calls("telephony.externalcall.finish")
        .iter()
        .map(|f| f["CALL_ID"].as_str().unwrap().to_string())
        .collect();
    finished.sort();
    assert_eq!(finished, ["ext.alone", "ext.registered", fresh_id.as_str()]);
    assert!(crm.seen().iter().any(|s| s.method == "batch"));
    assert_eq!(
        count(
            &dir.path().join("sipscreen.db"),
            "SELECT count(*) FROM dead_letter"
        ),
        0
    );
}

/// SIGTERM while the portal hangs: the queued events get the grace, the
/// request in flight its timeout, then the process exits with everything
/// still queued and the call kept for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hung_crm_waits_the_grace_and_keeps_everything() {
    let (crm, crm_addr) = Crm::start().await;
    crm.delay_ms
        .store(60_000, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let peers = Peers::new();
    let (grace, timeout_ms) = (1, 1500);
    let config = write_config(dir.path(), &peers, crm_addr, grace, timeout_ms);
    let db = dir.path().join("data/sipscreen.db");
    let mut run = Serving::start(&config);
    peers.call("h-1", "+4917044444444", 200);
    wait_until("the call kept", || {
        count(&db, "SELECT count(*) FROM active_calls") == 1
    });
    let sent = Instant::now();
    run.signal("-TERM");
    let deadline = sent + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = run.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = sent.elapsed();
    assert!(status.success(), "{status}");
    // At least the grace; at most the grace plus the request's timeout
    // (and a second for the rest of the shutdown on a loaded machine).
    assert!(took >= Duration::from_secs(grace), "{took:?}");
    assert!(
        took <= Duration::from_secs(grace) + Duration::from_millis(timeout_ms + 1000),
        "{took:?}"
    );
    eprintln!(
        "SIGTERM to exit with a hung CRM: {took:?} (grace {grace} s, timeout {timeout_ms} ms)"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM active_calls"), 1);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE kind = 'call.started'"
        ),
        1
    );
    assert!(call_log(dir.path()).is_empty());
}
