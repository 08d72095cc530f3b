//! Targets by name against a real DNS server: dnsmasq (Debian
//! `dnsmasq-base`) started by each test on a loopback port serves a test
//! zone (NAPTR, SRV, A records), the sidecar's `[dns] servers` points at
//! it, and the trunk's targets are UDP / TCP sockets on 127.0.0.2. Calls
//! are outbound (PBX -> trunk), so the trunk's target is the next hop.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sipscreen::server::Server;
use sipscreen::shutdown::{self, Trigger};
use tokio::net::{TcpListener, UdpSocket};

/// A dnsmasq serving `records` (its command-line options) for `*.test`;
/// killed when dropped.
struct Dns {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Dns {
    /// `None`: dnsmasq is not installed (outside CI; the test says so).
    fn start(records: &[String]) -> Option<Dns> {
        let bin = tools::tool("dnsmasq", "dnsmasq-base")?;
        let mut dir = tempfile::tempdir().unwrap();
        // A free port: bind one, let go, hand it to dnsmasq (retried if
        // someone took it in between).
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(&bin)
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--local=/test/",
                    "--local-ttl=1",
                    "--log-facility=-",
                ])
                .arg(format!("--port={port}"))
                .arg(format!(
                    "--pid-file={}",
                    dir.path().join("dnsmasq.pid").display()
                ))
                .args(records)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq starts");
            let mut dns = Dns {
                child,
                port,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if dns.answers() {
                    return Some(dns);
                }
                if dns.child.try_wait().unwrap().is_some() {
                    break; // port taken: try another
                }
            }
            let _ = dns.child.kill();
            let _ = dns.child.wait();
            dir = tempfile::tempdir().unwrap();
        }
        panic!("dnsmasq did not start");
    }

    /// Whether it answers a query (for `probe.test`, any answer).
    fn answers(&self) -> bool {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in ["probe", "test"] {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let _ = s.send_to(&q, ("127.0.0.1", self.port));
        let mut buf = [0u8; 512];
        s.recv(&mut buf).is_ok()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

fn srv(name: &str, target: &str, port: u16, prio: u16, weight: u16) -> String {
    format!("--srv-host={name},{target},{port},{prio},{weight}")
}

fn host(name: &str, ip: &str) -> String {
    format!("--host-record={name},{ip}")
}

/// SRV records `_sip._PROTO.carrier.test` naming `a.`, `b.`, `c.carrier.test`
/// (all 127.0.0.2) for `(port, priority, weight)` in turn.
fn srv_zone(proto: &str, targets: &[(u16, u16, u16)]) -> Vec<String> {
    let mut records = Vec::new();
    for (&(port, prio, weight), name) in targets.iter().zip(["a", "b", "c"]) {
        let target = format!("{name}.carrier.test");
        records.push(srv(
            &format!("_sip._{proto}.carrier.test"),
            &target,
            port,
            prio,
            weight,
        ));
        records.push(host(&target, "127.0.0.2"));
    }
    records
}

/// The first address of the trunk's first target in `/api/v1/peers`.
fn first_address(peers: &Value) -> &Value {
    &peers["peers"][1]["targets"][0]["addresses"][0]
}

/// The sidecar with `trunk_target` (TOML lines replacing the trunk's
/// `target = ...`) and `[dns]` pointing at `dns`.
struct Sidecar {
    server: Arc<Server>,
    trigger: Trigger,
    task: tokio::task::JoinHandle<()>,
    pbx: UdpSocket,
    sip: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    async fn start(trunk_target: &str, dns: &Dns, dns_extra: &str) -> Sidecar {
        Self::start_with(trunk_target, dns, dns_extra, "").await
    }

    /// [`start`](Self::start) with `sip` TOML lines added to `[sip]`.
    async fn start_with(trunk_target: &str, dns: &Dns, dns_extra: &str, sip: &str) -> Sidecar {
        let pbx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("exceptions.txt"), EXCEPTIONS).unwrap();
        let text = BASE_CONFIG
            .replace("{PBX}", &pbx.local_addr().unwrap().to_string())
            .replace("{PBX_TRANSPORT}", "udp")
            .replace("target = \"{TRUNK}\"", trunk_target)
            .replace("{DIR}", dir.path().to_str().unwrap())
            .replace(
                "tcp = [\"127.0.0.1:0\"]\n",
                &format!("tcp = [\"127.0.0.1:0\"]\n{sip}"),
            )
            + &format!(
                "\n[dns]\nservers = [\"127.0.0.1:{}\"]\nmin_ttl_secs = 1\nmax_ttl_secs = 1\nretry_secs = 1\ntimeout_ms = 300\n{dns_extra}",
                dns.port
            );
        let path: PathBuf = dir.path().join("sipscreen.toml");
        std::fs::write(&path, text).unwrap();
        let bound = Server::bind(&path).await.expect("server starts");
        let server = bound.server.clone();
        let (trigger, sd) = shutdown::channel();
        let task = tokio::spawn(bound.run(sd));
        Sidecar {
            sip: server.udp[0],
            server,
            trigger,
            task,
            pbx,
            _dir: dir,
        }
    }

    /// An outbound INVITE from the PBX (line +4930901820).
    fn invite(&self, call_id: &str) -> String {
        invite(
            self.sip,
            self.pbx.local_addr().unwrap(),
            "+4917099988877",
            "+4930901820",
            call_id,
            "",
        )
    }

    async fn send(&self, msg: &str) {
        self.pbx.send_to(msg.as_bytes(), self.sip).await.unwrap();
    }

    async fn peers(&self) -> Value {
        let url = format!("http://{}/api/v1/peers", self.server.admin.unwrap());
        let r = reqwest::Client::new()
            .get(url)
            .bearer_auth("view-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.server.admin.unwrap()))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn metric(&self, line_start: &str) -> Option<String> {
        let (_, m) = self.get("/metrics").await;
        m.lines()
            .find(|l| l.starts_with(line_start))
            .map(str::to_string)
    }

    async fn stop(self) {
        self.trigger.fire();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops")
            .expect("no panic");
    }
}

/// Which of `targets` gets the next datagram (and what).
async fn arrival(targets: &[&UdpSocket]) -> (usize, String) {
    let mut bufs = vec![vec![0u8; 70000]; targets.len()];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for (i, t) in targets.iter().enumerate() {
            if let Ok((n, _)) = t.try_recv_from(&mut bufs[i]) {
                return (i, String::from_utf8_lossy(&bufs[i][..n]).into_owned());
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing arrived at any target"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn udp_target() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

/// A port on 127.0.0.2 nothing listens on (UDP: ICMP port unreachable;
/// TCP: connection refused).
fn closed_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let p = s.local_addr().unwrap().port();
    drop(s);
    p
}

const TRUNK: &str = "target = \"carrier.test\"";

#[tokio::test]
async fn srv_priority_goes_first_and_weights_share_calls() {
    let (a, pa) = udp_target().await;
    let (b, pb) = udp_target().await;
    let (c, pc) = udp_target().await;
    let Some(dns) = Dns::start(&srv_zone(
        "udp",
        &[(pa, 10, 30), (pb, 10, 10), (pc, 20, 100)],
    )) else {
        return;
    };
    let s = Sidecar::start(TRUNK, &dns, "").await;
    let mut seen = [0; 3];
    for i in 0..80 {
        s.send(&s.invite(&format!("w-{i}"))).await;
        let (at, got) = arrival(&[&a, &b, &c]).await;
        assert!(got.starts_with("INVITE "), "{got}");
        seen[at] += 1;
    }
    assert_eq!(seen[2], 0, "priority 20 unused while 10 is up: {seen:?}");
    assert!(seen[0] > seen[1] && seen[1] > 0, "weights 30:10: {seen:?}");
    let peers = s.peers().await;
    let trunk = &peers["peers"][1];
    assert_eq!(trunk["name"], "carrier");
    let t = &trunk["targets"][0];
    assert_eq!(t["target"], "carrier.test");
    assert_eq!(t["dns"], true);
    assert_eq!(t["stale"], false);
    let addrs = t["addresses"].as_array().unwrap();
    assert_eq!(addrs.len(), 3, "{t}");
    assert_eq!(addrs[0]["priority"], 10);
    assert_eq!(addrs[2]["priority"], 20);
    assert_eq!(addrs[2]["address"], format!("127.0.0.2:{pc}"));
    assert_eq!(addrs[2]["state"], "up");
    assert!(t["expires_at"].is_string(), "{t}");
    s.stop().await;
}

#[tokio::test]
async fn naptr_leads_to_srv_and_its_transport() {
    let tcp = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let (udp, pu) = udp_target().await;
    let pt = tcp.local_addr().unwrap().port();
    let Some(dns) = Dns::start(&[
        // Order 10 (TCP) before order 20 (UDP), whatever the preference.
        "--naptr-record=carrier.test,20,10,S,SIP+D2U,,_sip._udp.carrier.test".to_string(),
        "--naptr-record=carrier.test,10,50,S,SIP+D2T,,_sip._tcp.carrier.test".to_string(),
        srv("_sip._tcp.carrier.test", "t.carrier.test", pt, 10, 1),
        srv("_sip._udp.carrier.test", "u.carrier.test", pu, 10, 1),
        host("t.carrier.test", "127.0.0.2"),
        host("u.carrier.test", "127.0.0.2"),
    ]) else {
        return;
    };
    let s = Sidecar::start(TRUNK, &dns, "").await;
    s.send(&s.invite("naptr-1")).await;
    let (mut stream, _) = tokio::time::timeout(WAIT, tcp.accept())
        .await
        .expect("the sidecar connects to the NAPTR's TCP target")
        .unwrap();
    let mut pending = Vec::new();
    let got = read_sip(&mut stream, &mut pending).await;
    assert!(got.starts_with("INVITE "), "{got}");
    assert!(headers(&got, "Via")[0].starts_with("SIP/2.0/TCP "), "{got}");
    let peers = s.peers().await;
    let a = &peers["peers"][1]["targets"][0]["addresses"];
    assert_eq!(a.as_array().unwrap().len(), 1, "{a}");
    assert_eq!(a[0]["transport"], "tcp");
    assert_eq!(a[0]["address"], format!("127.0.0.2:{pt}"));
    s.stop().await;
    drop(udp);
}

#[tokio::test]
async fn a_host_with_a_port_is_resolved_by_a_records_only() {
    let (a, pa) = udp_target().await;
    let (srv_target, ps) = udp_target().await;
    let Some(dns) = Dns::start(&[
        // SRV and NAPTR exist for the name, and must not be used.
        srv("_sip._udp.h.carrier.test", "other.carrier.test", ps, 10, 1),
        "--naptr-record=h.carrier.test,10,10,S,SIP+D2U,,_sip._udp.h.carrier.test".to_string(),
        host("h.carrier.test", "127.0.0.2"),
        host("other.carrier.test", "127.0.0.2"),
    ]) else {
        return;
    };
    let s = Sidecar::start(&format!("target = \"h.carrier.test:{pa}\""), &dns, "").await;
    for i in 0..5 {
        s.send(&s.invite(&format!("a-{i}"))).await;
        let (at, _) = arrival(&[&a, &srv_target]).await;
        assert_eq!(at, 0, "A record and the given port");
    }
    s.stop().await;
}

/// Sends `msg` every 50 ms (as a UAC retransmits) until one of `targets`
/// gets something; which one and what.
async fn retransmit_until(s: &Sidecar, msg: &str, targets: &[&UdpSocket]) -> (usize, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut bufs = vec![vec![0u8; 70000]; targets.len()];
    loop {
        s.send(msg).await;
        let until = tokio::time::Instant::now() + Duration::from_millis(50);
        while tokio::time::Instant::now() < until {
            for (i, t) in targets.iter().enumerate() {
                if let Ok((n, _)) = t.try_recv_from(&mut bufs[i]) {
                    return (i, String::from_utf8_lossy(&bufs[i][..n]).into_owned());
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(tokio::time::Instant::now() < deadline, "no target got it");
    }
}

#[tokio::test]
async fn icmp_unreachable_fails_over_to_the_next_target() {
    let dead = closed_port();
    let (b, pb) = udp_target().await;
    let Some(dns) = Dns::start(&srv_zone("udp", &[(dead, 10, 1), (pb, 20, 1)])) else {
        return;
    };
    let s = Sidecar::start(TRUNK, &dns, "").await;
    // The first send goes to the dead target; the retransmission, after
    // the ICMP error, to the second.
    let inv = s.invite("icmp-1");
    let (_, got) = retransmit_until(&s, &inv, &[&b]).await;
    assert!(got.starts_with("INVITE "), "{got}");
    // New calls go straight to the second while the first is blocked.
    s.send(&s.invite("icmp-2")).await;
    let (_, got) = arrival(&[&b]).await;
    assert_eq!(header(&got, "Call-ID").as_deref(), Some("icmp-2"));
    let peers = s.peers().await;
    let a = first_address(&peers);
    assert_eq!(a["address"], format!("127.0.0.2:{dead}"));
    assert_eq!(a["state"], "blocked", "{a}");
    assert_eq!(a["last_error"], "icmp_unreachable");
    assert!(a["blocked_until"].is_string());
    let line = format!(
        "sipscreen_target_failures_total{{peer=\"carrier\",target=\"udp:127.0.0.2:{dead}\",reason=\"icmp_unreachable\"}}"
    );
    assert!(s.metric(&line).await.is_some(), "{line}");
    let up = format!("sipscreen_target_up{{peer=\"carrier\",target=\"udp:127.0.0.2:{dead}\"}} 0");
    assert!(s.metric(&up).await.is_some(), "{up}");
    s.stop().await;
}

#[tokio::test]
async fn a_refused_tcp_connect_fails_over_to_the_next_target() {
    let dead = closed_port();
    let tcp = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let pt = tcp.local_addr().unwrap().port();
    let Some(dns) = Dns::start(&srv_zone("tcp", &[(dead, 10, 1), (pt, 20, 1)])) else {
        return;
    };
    let s = Sidecar::start("target = \"sip:carrier.test;transport=tcp\"", &dns, "").await;
    let inv = s.invite("tcp-1");
    // The PBX (UDP) retransmits until the second target's connection comes.
    let accepted = async {
        loop {
            s.send(&inv).await;
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), tcp.accept()).await {
                return r.unwrap().0;
            }
        }
    };
    let mut stream = tokio::time::timeout(WAIT, accepted)
        .await
        .expect("the second target gets the call");
    let got = read_sip(&mut stream, &mut Vec::new()).await;
    assert_eq!(header(&got, "Call-ID").as_deref(), Some("tcp-1"), "{got}");
    let peers = s.peers().await;
    let a = first_address(&peers);
    assert_eq!(a["state"], "blocked", "{a}");
    assert_eq!(a["last_error"], "tcp_refused");
    s.stop().await;
}

#[tokio::test]
async fn a_503_from_the_first_target_sends_the_next_invite_to_the_second() {
    let (a, pa) = udp_target().await;
    let (b, pb) = udp_target().await;
    let Some(dns) = Dns::start(&srv_zone("udp", &[(pa, 10, 1), (pb, 20, 1)])) else {
        return;
    };
    let s = Sidecar::start(TRUNK, &dns, "").await;
    let inv = s.invite("c503");
    s.send(&inv).await;
    let (at, got) = arrival(&[&a, &b]).await;
    assert_eq!(at, 0);
    let resp = response_to(&got, 503, "Service Unavailable", "a1", "");
    a.send_to(resp.as_bytes(), s.sip).await.unwrap();
    let (back, _) = recv(&s.pbx).await;
    assert!(back.starts_with("SIP/2.0 503"), "{back}");
    // The PBX tries again (a new transaction of the same call).
    let again = inv
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace("z9hG4bK-c503", "z9hG4bK-c503-2");
    s.send(&again).await;
    let (at, got) = arrival(&[&a, &b]).await;
    assert_eq!(at, 1, "after the 503 the second target: {got}");
    let peers = s.peers().await;
    let first = first_address(&peers);
    assert_eq!(first["last_error"], "status_503", "{first}");
    s.stop().await;
}

#[tokio::test]
async fn a_503_with_retry_after_keeps_its_address_out_for_that_long() {
    let (a, pa) = udp_target().await;
    let (b, pb) = udp_target().await;
    let Some(dns) = Dns::start(&srv_zone("udp", &[(pa, 10, 1), (pb, 20, 1)])) else {
        return;
    };
    let s = Sidecar::start(TRUNK, &dns, "").await;
    let inv = s.invite("ra503");
    s.send(&inv).await;
    let (at, got) = arrival(&[&a, &b]).await;
    assert_eq!(at, 0);
    // A carrier's maintenance window: 15 minutes, with a comment and a
    // parameter (RFC 3261 §20.33).
    let resp = response_to(&got, 503, "Service Unavailable", "a1", "").replacen(
        "\r\n\r\n",
        "\r\nRetry-After: 900 (maintenance);duration=60\r\n\r\n",
        1,
    );
    let sent = std::time::SystemTime::now();
    a.send_to(resp.as_bytes(), s.sip).await.unwrap();
    let (back, _) = recv(&s.pbx).await;
    assert!(back.starts_with("SIP/2.0 503"), "{back}");
    let peers = s.peers().await;
    let first = first_address(&peers);
    assert_eq!(first["state"], "blocked", "{first}");
    let until = humantime::parse_rfc3339_weak(first["blocked_until"].as_str().unwrap()).unwrap();
    let secs = until.duration_since(sent).unwrap().as_secs_f64();
    // [dns] blocklist_secs is 60 here: the 503's own time wins.
    assert!(
        (895.0..=905.0).contains(&secs),
        "blocked for {secs} s: {first}"
    );
    s.stop().await;
}

#[tokio::test]
async fn retransmission_and_cancel_go_where_the_invite_went() {
    let (a, pa) = udp_target().await;
    let (b, pb) = udp_target().await;
    let Some(dns) = Dns::start(&srv_zone("udp", &[(pa, 10, 1), (pb, 10, 1)])) else {
        return;
    };
    let s = Sidecar::start(TRUNK, &dns, "").await;
    let mut used = [false; 2];
    for i in 0..12 {
        let inv = s.invite(&format!("same-{i}"));
        s.send(&inv).await;
        let (first, _) = arrival(&[&a, &b]).await;
        used[first] = true;
        s.send(&inv).await;
        let (again, got) = arrival(&[&a, &b]).await;
        assert!(got.starts_with("INVITE "), "{got}");
        assert_eq!(again, first, "retransmission of same-{i}");
        let cancel = inv
            .replacen("INVITE sip:", "CANCEL sip:", 1)
            .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
        let cancel =
            cancel.split("Content-Type").next().unwrap().to_string() + "Content-Length: 0\r\n\r\n";
        s.send(&cancel).await;
        let (at, got) = arrival(&[&a, &b]).await;
        assert!(got.starts_with("CANCEL "), "{got}");
        assert_eq!(at, first, "CANCEL of same-{i}");
    }
    assert_eq!(used, [true, true], "equal weights use both targets");
    s.stop().await;
}

#[tokio::test]
async fn a_dns_server_that_stops_answering_leaves_the_last_good_answer() {
    let (a, pa) = udp_target().await;
    let Some(mut dns) = Dns::start(&srv_zone("udp", &[(pa, 10, 1)])) else {
        return;
    };
    let s = Sidecar::start(TRUNK, &dns, "").await;
    s.send(&s.invite("before")).await;
    arrival(&[&a]).await;
    dns.stop();
    // TTL 1 s (floor and ceiling): the refresh fails soon after.
    let stale = "sipscreen_dns_stale{peer=\"carrier\",target=\"carrier.test\"} 1";
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric(stale).await.is_none() {
        assert!(Instant::now() < deadline, "{stale} not set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failures = s
        .metric("sipscreen_dns_failures_total{peer=\"carrier\",target=\"carrier.test\"}")
        .await
        .expect("failures counted");
    assert!(!failures.ends_with(" 0"), "{failures}");
    s.send(&s.invite("after")).await;
    let (_, got) = arrival(&[&a]).await;
    assert_eq!(header(&got, "Call-ID").as_deref(), Some("after"));
    let peers = s.peers().await;
    let t = &peers["peers"][1]["targets"][0];
    assert_eq!(t["stale"], true, "{t}");
    assert!(t["dns_error"].is_string(), "{t}");
    assert_eq!(t["addresses"].as_array().unwrap().len(), 1);
    let (code, _) = s.get("/readyz").await;
    assert_eq!(code, 200, "a stale answer still serves");
    s.stop().await;
}

#[tokio::test]
async fn a_name_that_never_resolved_gets_503_and_readyz_says_degraded() {
    let Some(dns) = Dns::start(&[]) else {
        return;
    };
    let s = Sidecar::start(TRUNK, &dns, "start_wait_ms = 2000\n").await;
    let (code, body) = s.get("/readyz").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("degraded") && body.contains("carrier"),
        "{body}"
    );
    s.send(&s.invite("nowhere")).await;
    let (got, _) = recv(&s.pbx).await;
    assert!(got.starts_with("SIP/2.0 503"), "{got}");
    let peers = s.peers().await;
    let t = &peers["peers"][1]["targets"][0];
    assert!(
        t["dns_error"].as_str().unwrap().contains("carrier.test"),
        "{t}"
    );
    assert_eq!(t["addresses"].as_array().unwrap().len(), 0);
    s.stop().await;
}

/// One pass over `targets`: OPTIONS pings are answered 200 by the sockets
/// flagged `true` (and ignored by the others); every other message is
/// returned with the index of its socket.
async fn pump(targets: &[(&UdpSocket, bool)]) -> Vec<(usize, String)> {
    let mut buf = vec![0u8; 70000];
    let mut out = Vec::new();
    for (i, (t, answer)) in targets.iter().enumerate() {
        while let Ok((n, from)) = t.try_recv_from(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.starts_with("OPTIONS ") {
                if *answer {
                    let r = response_to(&m, 200, "OK", "pong", "");
                    t.send_to(r.as_bytes(), from).await.unwrap();
                }
            } else {
                out.push((i, m));
            }
        }
    }
    out
}

/// Pumps until the first target's state in /api/v1/peers is `want`.
async fn until_state(s: &Sidecar, targets: &[(&UdpSocket, bool)], want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = pump(targets).await;
        assert!(got.is_empty(), "no call was sent: {got:?}");
        let peers = s.peers().await;
        let a = first_address(&peers);
        if a["state"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "state {want} not reached: {a}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pumps until a call arrives; which target got it.
async fn call_lands(s: &Sidecar, targets: &[(&UdpSocket, bool)], call_id: &str) -> usize {
    s.send(&s.invite(call_id)).await;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((i, m)) = pump(targets).await.into_iter().next() {
            assert_eq!(header(&m, "Call-ID").as_deref(), Some(call_id), "{m}");
            return i;
        }
        assert!(Instant::now() < deadline, "{call_id} arrived nowhere");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn options_pings_mark_a_silent_target_down_and_an_answering_one_up() {
    let (a, pa) = udp_target().await;
    let (b, pb) = udp_target().await;
    let Some(dns) = Dns::start(&srv_zone("udp", &[(pa, 10, 1), (pb, 20, 1)])) else {
        return;
    };
    let s = Sidecar::start(TRUNK, &dns, "ping_interval_secs = 1\nping_threshold = 1\n").await;
    // The first target never answers its pings: down, calls go to the second.
    let silent_a = [(&a, false), (&b, true)];
    until_state(&s, &silent_a, "down").await;
    assert_eq!(call_lands(&s, &silent_a, "while-down").await, 1);
    let up = format!("sipscreen_target_up{{peer=\"carrier\",target=\"udp:127.0.0.2:{pa}\"}} 0");
    assert!(s.metric(&up).await.is_some(), "{up}");
    // It answers again: up, and calls go back to it.
    let answering = [(&a, true), (&b, true)];
    until_state(&s, &answering, "up").await;
    assert_eq!(call_lands(&s, &answering, "back-up").await, 0);
    s.stop().await;
}

#[tokio::test]
async fn a_reload_keeps_what_names_resolved_to() {
    let (a, pa) = udp_target().await;
    let Some(mut dns) = Dns::start(&srv_zone("udp", &[(pa, 10, 1)])) else {
        return;
    };
    let s = Sidecar::start(TRUNK, &dns, "").await;
    s.send(&s.invite("gen-1")).await;
    arrival(&[&a]).await;
    // DNS gone, then a reload: the new generation starts with the old
    // answers (it could not resolve anything itself).
    dns.stop();
    let srv = s.server.clone();
    tokio::task::spawn_blocking(move || srv.reload())
        .await
        .unwrap()
        .expect("reload");
    s.send(&s.invite("gen-2")).await;
    let (_, got) = arrival(&[&a]).await;
    assert_eq!(header(&got, "Call-ID").as_deref(), Some("gen-2"), "{got}");
    let (code, body) = s.get("/readyz").await;
    assert_eq!(code, 200, "{body}");
    s.stop().await;
}

/// A `sips:` target by name: `_sips._tcp` SRV, TLS to the address it
/// gives, the certificate verified against the configured name (not the
/// SRV target's), and the call arrives over TLS.
#[tokio::test]
async fn a_sips_target_resolves_sips_srv_and_verifies_the_name() {
    let ca = common::tls::Ca::new("test CA");
    let carrier =
        common::tls::TlsPeer::bind("127.0.0.2", &ca.issue("carrier", &["carrier.test"], false))
            .await;
    let pt = carrier.addr().port();
    let Some(dns) = Dns::start(&[
        srv("_sips._tcp.carrier.test", "t.carrier.test", pt, 10, 1),
        host("t.carrier.test", "127.0.0.2"),
    ]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = ca
        .issue("sidecar", &["127.0.0.1"], false)
        .write(dir.path(), "sidecar");
    let ca_file = ca.write(dir.path(), "ca");
    let s = Sidecar::start_with(
        &format!(
            "target = \"sips:carrier.test\"\ntls_ca = \"{}\"",
            ca_file.display()
        ),
        &dns,
        &format!(
            "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            crt.display(),
            key.display()
        ),
        "tls = [\"127.0.0.1:0\"]\n",
    )
    .await;
    s.send(&s.invite("tls-by-name")).await;
    let mut stream = carrier
        .accept()
        .await
        .expect("handshake: the name verifies");
    let got = read_sip(&mut stream, &mut Vec::new()).await;
    assert_eq!(
        header(&got, "Call-ID").as_deref(),
        Some("tls-by-name"),
        "{got}"
    );
    assert!(headers(&got, "Via")[0].starts_with("SIP/2.0/TLS "), "{got}");
    let peers = s.peers().await;
    let a = first_address(&peers);
    assert_eq!(a["transport"], "tls", "{a}");
    assert_eq!(a["address"], format!("127.0.0.2:{pt}"));
    s.stop().await;
}
