//! Fleets: two or three real `sipscreen serve` processes on one real
//! PostgreSQL server (tests/common/pg.rs), faults included: an add on one
//! node screened on the others; the server restarted during a stream of
//! writes; the LISTEN connection cut; a node SIGKILLed with CRM events
//! queued; a BYE reaching the standby after the node that had the call
//! died; the database down (degraded, writes refused, screening goes on).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::binary::{BIN, Serving, wait_until};
use common::crm::Crm;
use common::{BASE_CONFIG, Peers, header, invite, response_to};
use serde_json::{Value, json};

const EDIT: &str = "edit-token";
const VIEW: &str = "view-token";
/// The variable `[store] url_env` names.
const URL_ENV: &str = "SIPSCREEN_TEST_PG_URL";

fn recv_starting(s: &UdpSocket, start: &str) -> String {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = s.recv_from(&mut buf).expect("a datagram within the wait");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.starts_with(start) {
            return m;
        }
    }
}

/// One node: its directory (config, call log) and process.
struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
    run: Option<Serving>,
}

impl Node {
    fn serving(&self) -> &Serving {
        self.run.as_ref().expect("running")
    }
    fn admin(&self) -> SocketAddr {
        self.serving().admin()
    }
    fn sip(&self) -> SocketAddr {
        self.serving().addr("udp=[", ']')
    }
    fn start(&mut self, url: &str) {
        self.run = Some(Serving::start_env(
            Path::new(BIN),
            &self.config,
            &[(URL_ENV, url)],
        ));
    }
    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut r) = self.run.take() {
            r.child.kill().unwrap();
            r.child.wait().unwrap();
        }
    }
}

/// A node's config: the shared peers and store, `extra` appended.
fn node(p: &Peers, store: &str, extra: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("exceptions.txt"), "").unwrap();
    let d = dir.path().to_str().unwrap();
    let text = BASE_CONFIG
        .replace("tcp = [\"127.0.0.1:0\"]", "tcp = []")
        .replace("{PBX}", &p.pbx.local_addr().unwrap().to_string())
        .replace("{PBX_TRANSPORT}", "udp")
        .replace("{TRUNK}", &p.trunk.local_addr().unwrap().to_string())
        .replace(
            "[store]\ndata_dir = \"{DIR}/data\"\n",
            &format!(
                "[store]\ndata_dir = \"{d}/data\"\nkind = \"postgres\"\nurl_env = \"{URL_ENV}\"\n{store}\n"
            ),
        )
        .replace("{DIR}", d)
        + extra;
    let config = dir.path().join("sipscreen.toml");
    std::fs::write(&config, text).unwrap();
    Node {
        dir,
        config,
        run: None,
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

fn verdict(admin: SocketAddr, number: &str) -> String {
    let v: Value = http()
        .post(format!("http://{admin}/api/v1/screen"))
        .bearer_auth(VIEW)
        .json(&json!({"number": number, "line": "+4930901820", "direction": "inbound"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["verdict"].as_str().unwrap_or("").to_string()
}

/// POST /exceptions: the status and the answer's text.
fn add(admin: SocketAddr, value: &str) -> (u16, String) {
    let r = http()
        .post(format!("http://{admin}/api/v1/exceptions"))
        .bearer_auth(EDIT)
        .json(&json!({"value": value, "comment": "fleet"}))
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap_or_default())
}

fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let r = http()
        .get(format!("http://{admin}{path}"))
        .bearer_auth(VIEW)
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap_or_default())
}

/// An add on A is screened `exception` on B and C: by the API and by a
/// real INVITE through C.
#[test]
fn an_add_on_one_node_is_screened_on_the_others() {
    let Some(c) = common::pg::cluster() else {
        return;
    };
    let url = c.database();
    let p = Peers::new();
    let mut nodes: Vec<Node> = (0..3).map(|_| node(&p, "", "")).collect();
    for n in &mut nodes {
        n.start(&url);
    }
    assert_eq!(verdict(nodes[1].admin(), "+4930123456"), "log");
    assert_eq!(add(nodes[0].admin(), "+4930123456").0, 201);
    for n in &nodes[1..] {
        wait_until("the add screened on another node", || {
            verdict(n.admin(), "+4930123456") == "exception"
        });
    }
    let sip = nodes[2].sip();
    let inv = invite(
        sip,
        p.trunk.local_addr().unwrap(),
        "+4930901820",
        "+4930123456",
        "fleet-inv-1",
        "",
    );
    p.trunk.send_to(inv.as_bytes(), sip).unwrap();
    let at_pbx = recv_starting(&p.pbx, "INVITE");
    assert_eq!(
        header(&at_pbx, "X-CRM-Verdict").as_deref(),
        Some("exception"),
        "{at_pbx}"
    );
}

/// Every value in `values` is screened `exception` on `node`.
fn has_all(node: &Node, values: &[String]) -> bool {
    values
        .iter()
        .all(|v| verdict(node.admin(), v) == "exception")
}

/// PostgreSQL restarted in the middle of a stream of adds on A: writes
/// during the outage are refused with 503 (nothing half-done), and once
/// it is back every node has every acknowledged add.
#[test]
fn a_database_restart_during_writes_loses_nothing_on_any_node() {
    // Its own server: stopping the shared one would fail the other tests.
    let Some(c) = common::pg::private_cluster() else {
        return;
    };
    let c = &c;
    let url = c.database();
    let p = Peers::new();
    let mut nodes: Vec<Node> = (0..3).map(|_| node(&p, "poll_secs = 1", "")).collect();
    for n in &mut nodes {
        n.start(&url);
    }
    let a = nodes[0].admin();
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for i in 0..120 {
        if i == 40 {
            c.restart();
        }
        let v = format!("+4930555{i:04}");
        let (status, body) = add(a, &v);
        match status {
            201 => acked.push(v),
            503 => refused.push(v),
            s => panic!("add {v}: {s} {body}"),
        }
    }
    assert!(acked.len() >= 80, "{} acknowledged", acked.len());
    for n in &nodes {
        wait_until("every acknowledged add on every node", || {
            has_all(n, &acked)
        });
    }
    // A refused add was not written: no node screens it.
    for v in &refused {
        for n in &nodes {
            assert_eq!(
                verdict(n.admin(), v),
                "log",
                "{v} was refused but is listed"
            );
        }
    }
}

/// The LISTEN connection cut (its backend terminated, found by
/// `application_name`): the listener reconnects and the node catches up
/// by sequence, long before its (hour-long) poll.
#[test]
fn a_cut_listen_connection_catches_up_by_sequence() {
    let Some(c) = common::pg::cluster() else {
        return;
    };
    let url = c.database();
    let db = common::pg::db_name(&url).to_string();
    let p = Peers::new();
    let mut nodes: Vec<Node> = (0..2).map(|_| node(&p, "poll_secs = 3600", "")).collect();
    for n in &mut nodes {
        n.start(&url);
    }
    for n in &nodes {
        n.serving().wait_for("listening to the change log");
    }
    let cut = c.terminate_backends(&db, "application_name = 'sipscreen-listen'");
    assert_eq!(cut, 2, "both listeners found");
    // Written while B's listener may be down: its notification is lost.
    assert_eq!(add(nodes[0].admin(), "+4930777000").0, 201);
    wait_until("the add on B after its listener reconnected", || {
        verdict(nodes[1].admin(), "+4930777000") == "exception"
    });
    nodes[1]
        .serving()
        .wait_for("listening to the change log again");
}

/// The database stopped: screening goes on with the last list, `/readyz`
/// says degraded, writes are refused with 503, the metrics show it; back,
/// the node catches up with what was written through another way in.
#[test]
fn with_the_database_down_a_node_serves_its_last_list_and_refuses_writes() {
    // Its own server: stopping the shared one would fail the other tests.
    let Some(c) = common::pg::private_cluster() else {
        return;
    };
    let c = &c;
    let url = c.database();
    let p = Peers::new();
    let mut n = node(&p, "poll_secs = 1", "");
    n.start(&url);
    let admin = n.admin();
    assert_eq!(add(admin, "+4930888000").0, 201);
    assert_eq!(get(admin, "/readyz").0, 200);
    c.stop();
    wait_until("degraded readiness", || {
        let (s, body) = get(admin, "/readyz");
        s == 503 && body.contains("the store") && body.contains("unreachable")
    });
    assert_eq!(verdict(admin, "+4930888000"), "exception");
    let (status, body) = add(admin, "+4930888001");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store is unreachable"), "{body}");
    let (_, metrics) = get(admin, "/metrics");
    assert!(metrics.contains("sipscreen_store_connected 0"), "{metrics}");
    c.start();
    // Written beside the sidecar while it was cut off from notifications.
    let other = sipscreen::store::postgres::PgStore::open(&url, None, 1).unwrap();
    let e = sipscreen::store::NewEntry {
        kind: sipscreen::store::Kind::Phone,
        value: "+4930888002".into(),
        given: "+4930888002".into(),
        comment: String::new(),
        origin: "api".into(),
        expires_at: None,
        allow: false,
    };
    sipscreen::store::ExceptionStore::upsert(&other, &[e], "t", 1).unwrap();
    wait_until("ready again and caught up", || {
        get(admin, "/readyz").0 == 200 && verdict(admin, "+4930888002") == "exception"
    });
    let (_, metrics) = get(admin, "/metrics");
    assert!(metrics.contains("sipscreen_store_connected 1"), "{metrics}");
}

/// A webhook sink at the stand-in, paced at `rate` a second, burst 1.
fn hook_sink(crm: SocketAddr, rate: f64) -> String {
    format!(
        "\n[crm]\n[[crm.webhook]]\nname = \"hook\"\nurl = \"http://{crm}/hook\"\nrate_per_sec = {rate:?}\nburst = 1\n"
    )
}

/// (call, event) of each webhook request, in arrival order.
fn hooks(crm: &Crm) -> Vec<(String, String)> {
    crm.hooks()
        .iter()
        .map(|s| {
            (
                s.body["call_id"].as_str().unwrap_or("").to_string(),
                s.headers
                    .get("x-sipscreen-event")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

/// A call through `sip` from the trunk, answered by the PBX and ACKed;
/// the 200 as the trunk got it.
fn answered_call(p: &Peers, sip: SocketAddr, id: &str, caller: &str) -> String {
    let inv = invite(
        sip,
        p.trunk.local_addr().unwrap(),
        "+4930901820",
        caller,
        id,
        "",
    );
    p.trunk.send_to(inv.as_bytes(), sip).unwrap();
    let at_pbx = recv_starting(&p.pbx, "INVITE");
    let contact = format!("sip:agent@{}", p.pbx.local_addr().unwrap());
    let r = response_to(&at_pbx, 200, "OK", "callee-tag", &contact);
    p.pbx.send_to(r.as_bytes(), sip).unwrap();
    let ok = recv_starting(&p.trunk, "SIP/2.0 200");
    in_dialog(p, sip, &ok, id, "ACK", 1, None);
    ok
}

/// An in-dialog request from the trunk to `sip`, its Route the 200's
/// Record-Route with `route_to` in place of the node that answered (the
/// address a failover moved).
fn in_dialog(
    p: &Peers,
    sip: SocketAddr,
    ok: &str,
    id: &str,
    method: &str,
    cseq: u32,
    route_to: Option<(SocketAddr, SocketAddr)>,
) {
    let mut route = header(ok, "Record-Route").expect("the sidecar record-routes");
    if let Some((from, to)) = route_to {
        route = route.replace(&from.to_string(), &to.to_string());
    }
    let req = format!(
        "{method} sip:agent@{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {trunk};branch=z9hG4bK-{method}-{id}\r\nRoute: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:x@carrier.example>;tag=f-{id}\r\nTo: <sip:y@carrier.example>;tag=callee-tag\r\nCall-ID: {id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        pbx = p.pbx.local_addr().unwrap(),
        trunk = p.trunk.local_addr().unwrap(),
    );
    p.trunk.send_to(req.as_bytes(), sip).unwrap();
    let got = recv_starting(&p.pbx, method);
    if method != "ACK" {
        let r = response_to(&got, 200, "OK", "", "");
        p.pbx.send_to(r.as_bytes(), sip).unwrap();
        recv_starting(&p.trunk, "SIP/2.0 200");
    }
}

fn outbox_depth(c: &common::pg::Cluster, url: &str) -> i64 {
    c.query_one(common::pg::db_name(url), "SELECT count(*) FROM outbox")
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// `n` calls' events reached the CRM exactly once each, in order (calls
/// by their `X-CRM-Call-Id`, as the CRM knows them).
fn once_each_in_order(seen: &[(String, String)], n: usize, kinds: &[&str]) {
    let mut calls: Vec<&String> = Vec::new();
    for (c, _) in seen {
        if !calls.contains(&c) {
            calls.push(c);
        }
    }
    assert_eq!(calls.len(), n, "{seen:?}");
    for call in calls {
        let got: Vec<&str> = seen
            .iter()
            .filter(|(c, _)| c == call)
            .map(|(_, k)| k.as_str())
            .collect();
        assert_eq!(got, kinds, "call {call}: {seen:?}");
    }
}

/// A node SIGKILLed with CRM events queued and leased to it: another
/// node delivers the rest once its lease runs out, each event exactly
/// once, each call's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_crm_events_are_delivered_by_another_once_in_order() {
    let Some(c) = common::pg::cluster() else {
        return;
    };
    let url = c.database();
    let (crm, crm_addr) = Crm::start().await;
    let p = Peers::new();
    let mut a = node(&p, "lease_secs = 2", &hook_sink(crm_addr, 2.0));
    let mut b = node(&p, "lease_secs = 2", &hook_sink(crm_addr, 50.0));
    a.start(&url);
    let sip = a.sip();
    let calls: Vec<String> = (0..4).map(|i| format!("fleet-kill-{i}")).collect();
    for (i, id) in calls.iter().enumerate() {
        let ok = answered_call(&p, sip, id, &format!("+491701234{i:03}"));
        in_dialog(&p, sip, &ok, id, "BYE", 2, None);
    }
    let all = calls.len() * 3;
    // Between two of A's requests (2 a second): the third delivered and
    // committed, the fourth not sent yet.
    wait_until("three events delivered and committed", || {
        let sent = hooks(&crm).len();
        sent >= 3 && outbox_depth(c, &url) == (all - sent) as i64
    });
    a.kill();
    assert!(
        hooks(&crm).len() < all,
        "A delivered everything before the kill"
    );
    b.start(&url);
    wait_until("the rest delivered by B", || {
        hooks(&crm).len() >= all && outbox_depth(c, &url) == 0
    });
    let seen = hooks(&crm);
    assert_eq!(seen.len(), all, "{seen:?}");
    once_each_in_order(
        &seen,
        calls.len(),
        &["call.started", "call.answered", "call.ended"],
    );
}

/// Active/standby: a call answered through A; A SIGKILLed; the BYE comes
/// through B (the address moved): B takes the call over from the store
/// and ends it, and the CRM gets its end exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bye_through_the_standby_ends_a_call_the_dead_node_had() {
    let Some(c) = common::pg::cluster() else {
        return;
    };
    let url = c.database();
    let db = common::pg::db_name(&url).to_string();
    let (crm, crm_addr) = Crm::start().await;
    let p = Peers::new();
    let mut a = node(&p, "lease_secs = 2", &hook_sink(crm_addr, 50.0));
    let mut b = node(&p, "lease_secs = 2", &hook_sink(crm_addr, 50.0));
    a.start(&url);
    b.start(&url);
    let (sip_a, sip_b) = (a.sip(), b.sip());
    let id = "fleet-failover-1";
    let ok = answered_call(&p, sip_a, id, "+4917099887766");
    wait_until(
        "the call's start and answer delivered, the call kept",
        || {
            hooks(&crm).len() == 2
                && c.query_one(&db, "SELECT count(*) FROM active_calls")
                    .as_deref()
                    == Some("1")
        },
    );
    a.kill();
    in_dialog(&p, sip_b, &ok, id, "BYE", 2, Some((sip_a, sip_b)));
    wait_until("the call's end delivered", || hooks(&crm).len() >= 3);
    wait_until("the call removed from the store", || {
        c.query_one(&db, "SELECT count(*) FROM active_calls")
            .as_deref()
            == Some("0")
    });
    // A retransmitted BYE after the end changes nothing: a later call
    // through B (its events queued after anything the BYE could cause)
    // is delivered, and the first call still has one end.
    in_dialog(&p, sip_b, &ok, id, "BYE", 2, Some((sip_a, sip_b)));
    let later = "fleet-failover-2";
    let ok2 = answered_call(&p, sip_b, later, "+4917099887767");
    in_dialog(&p, sip_b, &ok2, later, "BYE", 2, None);
    wait_until("the later call delivered", || hooks(&crm).len() >= 6);
    let seen = hooks(&crm);
    once_each_in_order(&seen, 2, &["call.started", "call.answered", "call.ended"]);
    let log = std::fs::read_to_string(b.dir.path().join("data/calls.jsonl")).unwrap_or_default();
    assert!(log.contains(id) && log.contains("completed"), "{log}");
}

/// A node whose database does not answer at start refuses to start (it
/// has no list to serve) with an error naming the cause, not the password.
#[test]
fn a_node_refuses_to_start_without_its_database() {
    let p = Peers::new();
    let n = node(&p, "", "");
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&n.config)
        .env(
            URL_ENV,
            format!("postgres://sipscreen:s3cretpw@127.0.0.1:{port}/fleet"),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("store unavailable"), "{err}");
    assert!(!err.contains("s3cretpw"), "{err}");
}
