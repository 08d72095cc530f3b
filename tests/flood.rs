//! Flood protection end to end, with no `[flood]` configuration (the
//! defaults must do): a stranger on 127.0.0.3 floods the sidecar over UDP
//! and TCP in a tight loop while the trunk's calls go through with their
//! tags, the PBX sees none of the flood, the ban is listed and lifted
//! through the API; a scanner's User-Agent gets no answer; a peer over its
//! limit gets 503 for new calls and keeps its calls in progress.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, UdpSocket};

const EDIT: &str = "edit-token";
const VIEW: &str = "view-token";

fn options(from: SocketAddr, to: SocketAddr, id: &str, ua: &str) -> String {
    format!(
        "OPTIONS sip:probe@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-{id}\r\nMax-Forwards: 70\r\nFrom: <sip:scan@{from}>;tag={id}\r\nTo: <sip:probe@{to}>\r\nCall-ID: {id}\r\nCSeq: 1 OPTIONS\r\nUser-Agent: {ua}\r\nContent-Length: 0\r\n\r\n"
    )
}

async fn api(h: &Harness, method: reqwest::Method, token: &str, path: &str) -> (StatusCode, Value) {
    let url = format!("http://{}/api/v1{path}", h.server.admin.unwrap());
    let resp = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token)
        .send()
        .await
        .expect("HTTP answer");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A TCP connection to `to` from address `ip`.
async fn connect_from(ip: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
    s.connect(to).await.expect("the sidecar accepts")
}

/// A connection from `ip` (a banned source) is closed by the sidecar
/// without a byte.
async fn closed_at_once(ip: &str, to: SocketAddr) {
    let mut c = connect_from(ip, to).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut c, &mut buf))
        .await
        .expect("the connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

/// Polls `/metrics` until `line` is there (a condition, with a deadline).
async fn wait_metric(h: &Harness, pred: impl Fn(&str) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = h.server.metrics.encode();
        if text.lines().any(&pred) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} never appeared:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A metric's value (0 if absent).
fn metric(h: &Harness, series: &str) -> f64 {
    h.server
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Retransmissions the fake peers needed (SIP over UDP: a datagram the
/// kernel dropped from a flooded socket buffer is sent again, as RFC
/// 3261's timers A, E and G do).
static RETRANSMITTED: AtomicU64 = AtomicU64::new(0);

/// Sends `msg` from `from` to the sidecar until `at` receives the message
/// `want` picks (500 ms, 1 s, 2 s, ... apart); every message `at` gets
/// meanwhile must belong to a legitimate call (`legit-*`, `fprobe-*`):
/// none of the flood ever gets through.
async fn exchange(
    from: &UdpSocket,
    sidecar: SocketAddr,
    msg: &str,
    at: &UdpSocket,
    want: impl Fn(&str) -> bool,
) -> String {
    let mut buf = vec![0u8; 70000];
    for attempt in 0..6u32 {
        from.send_to(msg.as_bytes(), sidecar).await.unwrap();
        let wait = Duration::from_millis(500 << attempt.min(3));
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, at.recv_from(&mut buf)).await {
            let got = String::from_utf8_lossy(&buf[..n]).into_owned();
            let id = header(&got, "Call-ID").unwrap_or_default();
            assert!(
                id.starts_with("legit-") || id.starts_with("fprobe-"),
                "a message not of a call got through:\n{got}"
            );
            if want(&got) {
                return got;
            }
        }
        RETRANSMITTED.fetch_add(1, Ordering::Relaxed);
    }
    panic!("no answer to:\n{msg}");
}

/// One whole call from the trunk, through the sidecar: INVITE (tagged at
/// the PBX), 200 back to the trunk, ACK and BYE through our Record-Route,
/// 200 to the BYE.
async fn call(h: &Harness, id: &str) {
    let trunk = h.trunk.local_addr().unwrap();
    let inv = invite(h.sip_udp, trunk, "+4930901820", "+4917099988877", id, "");
    let is = |method: &'static str| {
        move |m: &str| m.starts_with(method) && header(m, "Call-ID").as_deref() == Some(id)
    };
    let got = exchange(&h.trunk, h.sip_udp, &inv, &h.pbx, is("INVITE ")).await;
    assert_eq!(header(&got, "X-CRM-Verdict").as_deref(), Some("log"));
    assert_eq!(
        header(&got, "X-CRM-Client").as_deref(),
        Some("+4917099988877")
    );
    assert_eq!(header(&got, "X-CRM-Call-Id").map(|v| v.len()), Some(32));
    let pbx = h.pbx.local_addr().unwrap();
    let ok = response_to(&got, 200, "OK", "pbx-tag", &format!("sip:agent@{pbx}"));
    let back = exchange(&h.pbx, h.sip_udp, &ok, &h.trunk, is("SIP/2.0 200 OK")).await;
    assert!(back.contains("CSeq: 1 INVITE"), "{back}");
    for (method, cseq) in [("ACK", "1 ACK"), ("BYE", "2 BYE")] {
        let req = format!(
            "{method} sip:agent@{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {trunk};branch=z9hG4bK-{method}-{id}\r\nRoute: <sip:{};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:+4917099988877@carrier.example>;tag=f-{id}\r\nTo: <sip:+4930901820@carrier.example>;tag=pbx-tag\r\nCall-ID: {id}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n",
            h.me()
        );
        let want =
            move |m: &str| m.starts_with(method) && header(m, "Call-ID").as_deref() == Some(id);
        let fwd = exchange(&h.trunk, h.sip_udp, &req, &h.pbx, want).await;
        if method == "BYE" {
            let ok = response_to(&fwd, 200, "OK", "", "");
            let bye_ok = move |m: &str| {
                m.starts_with("SIP/2.0 200 OK")
                    && m.contains("CSeq: 2 BYE")
                    && header(m, "Call-ID").as_deref() == Some(id)
            };
            exchange(&h.pbx, h.sip_udp, &ok, &h.trunk, bye_ok).await;
        }
    }
}

/// A stranger floods in a tight loop (UDP and TCP at once) for at least
/// a second, while at least 30 calls from the trunk complete (datagrams
/// the kernel drops from the flooded socket buffer sent again, as SIP
/// over UDP does); the stranger is banned, listed, and
/// lifted; afterwards it is answered again (403, as any stranger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_leaves_the_trunks_calls_untouched() {
    let h = Harness::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood_sock = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let from = flood_sock.local_addr().unwrap();
    let target = h.sip_udp;
    let udp_flood = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let m = options(from, target, &format!("flood-{n}"), "Flooder/1.0");
                // Send errors (a full buffer) are part of a flood.
                let _ = flood_sock.send_to(m.as_bytes(), target).await;
                n += 1;
                sent.store(n, Ordering::Relaxed);
                if n.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            (n, started.elapsed())
        })
    };
    // The TCP flood: one connection from the same address, writing
    // requests until the sidecar closes it.
    let tcp_target = h.sip_tcp;
    let tcp_flood = tokio::spawn(async move {
        let mut c = connect_from("127.0.0.3", tcp_target).await;
        let local = c.local_addr().unwrap();
        let mut n = 0u64;
        loop {
            let m = options(local, tcp_target, &format!("tcp-flood-{n}"), "Flooder/1.0");
            if c.write_all(m.as_bytes()).await.is_err() {
                return n;
            }
            n += 1;
            assert!(
                n < 10_000_000,
                "the flooding TCP connection is never closed"
            );
            if n.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
        }
    });
    wait_metric(
        &h,
        |l| l == "sipscreen_bans_total{reason=\"flood\"} 1",
        "the stranger's ban",
    )
    .await;
    // Calls for at least a second of flood, and at least 30 of them.
    let calls_from = Instant::now();
    let mut calls = 0;
    while calls < 30 || calls_from.elapsed() < Duration::from_secs(1) {
        call(&h, &format!("legit-{calls}")).await;
        calls += 1;
    }
    let tcp_sent = tokio::time::timeout(WAIT, tcp_flood)
        .await
        .expect("the flooding TCP connection is closed by the sidecar")
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let (udp_sent, took) = udp_flood.await.unwrap();
    // Nothing of the flood ever reached the PBX: every datagram it got was
    // a call's (checked in `exchange`), up to a probe sent with the flood
    // over (the one receiver handles datagrams in order, so the whole
    // flood has been handled by then).
    let trunk = h.trunk.local_addr().unwrap();
    let probe = options(trunk, h.sip_udp, "fprobe-1", "Carrier/1.0");
    let is_probe = |m: &str| header(m, "Call-ID").as_deref() == Some("fprobe-1");
    exchange(&h.trunk, h.sip_udp, &probe, &h.pbx, is_probe).await;
    let rate = udp_sent as f64 / took.as_secs_f64();
    eprintln!(
        "flood: {udp_sent} UDP datagrams in {took:?} ({rate:.0}/s), {tcp_sent} TCP requests; {calls} calls from the trunk completed meanwhile ({} datagrams of theirs sent again)",
        RETRANSMITTED.load(Ordering::Relaxed)
    );
    assert!(
        rate > 2_000.0,
        "the flood must be thousands a second: {rate:.0}/s"
    );
    // A banned source's new TCP connection is closed at once.
    closed_at_once("127.0.0.3", h.sip_tcp).await;

    let dropped = metric(&h, "sipscreen_flood_dropped_total{reason=\"banned\"}");
    assert!(dropped > 1000.0, "{dropped}");
    assert_eq!(metric(&h, "sipscreen_bans_active"), 1.0);
    assert_eq!(
        metric(
            &h,
            "sipscreen_calls_screened_total{direction=\"inbound\",verdict=\"log\"}"
        ),
        f64::from(calls)
    );

    // Listed (any token), with what it did.
    let (st, v) = api(&h, reqwest::Method::GET, VIEW, "/bans").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    let b = &items[0];
    assert_eq!(b["address"], "127.0.0.3");
    assert_eq!(b["network"], "127.0.0.3/32");
    assert_eq!(b["reason"], "flood");
    assert!(b["requests"].as_u64().unwrap() > 1000, "{b}");
    let since = sipscreen::clock::parse_rfc3339(b["since"].as_str().unwrap()).unwrap();
    let until = sipscreen::clock::parse_rfc3339(b["until"].as_str().unwrap()).unwrap();
    assert_eq!(until - since, 300_000, "the default ban is 300 s");
    let (st, _) = api(&h, reqwest::Method::GET, "nope", "/bans").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Lifted with an edit token only; then the stranger is a stranger
    // again: answered 403.
    let (st, _) = api(&h, reqwest::Method::DELETE, VIEW, "/bans/127.0.0.3").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, v) = api(&h, reqwest::Method::DELETE, EDIT, "/bans/not-an-ip").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, _) = api(&h, reqwest::Method::DELETE, EDIT, "/bans/127.0.0.3").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = api(&h, reqwest::Method::DELETE, EDIT, "/bans/127.0.0.3").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, v) = api(&h, reqwest::Method::GET, VIEW, "/bans").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(metric(&h, "sipscreen_bans_active"), 0.0);
    // Handled as any stranger's request now (refused as forbidden_source;
    // whether a 403 goes out depends on the reply budget the flood used).
    let refused = metric(
        &h,
        "sipscreen_sip_errors_total{reason=\"forbidden_source\"}",
    );
    let me = h.stranger.local_addr().unwrap();
    h.stranger
        .send_to(options(me, h.sip_udp, "after", "x").as_bytes(), h.sip_udp)
        .await
        .unwrap();
    let want = format!(
        "sipscreen_sip_errors_total{{reason=\"forbidden_source\"}} {}",
        refused + 1.0
    );
    wait_metric(
        &h,
        |l| l == want,
        "the lifted source's request refused as a stranger's",
    )
    .await;
    assert_eq!(
        metric(&h, "sipscreen_flood_dropped_total{reason=\"banned\"}"),
        dropped
    );
    h.stop().await;
}

/// A request with a scanner's User-Agent gets no answer (another
/// stranger's plain request gets its 403), is counted, and bans its
/// source at once.
#[tokio::test]
async fn a_scanner_user_agent_is_dropped_without_an_answer() {
    let h = Harness::start().await;
    let other = UdpSocket::bind("127.0.0.4:0").await.unwrap();
    let me = h.stranger.local_addr().unwrap();
    h.stranger
        .send_to(
            options(me, h.sip_udp, "scan-1", "friendly-scanner").as_bytes(),
            h.sip_udp,
        )
        .await
        .unwrap();
    let o = other.local_addr().unwrap();
    other
        .send_to(
            options(o, h.sip_udp, "plain-1", "Zoiper").as_bytes(),
            h.sip_udp,
        )
        .await
        .unwrap();
    let (answer, _) = recv(&other).await;
    assert!(answer.starts_with("SIP/2.0 403"), "{answer}");
    wait_metric(
        &h,
        |l| l == "sipscreen_flood_dropped_total{reason=\"user_agent\"} 1",
        "the scanner's drop",
    )
    .await;
    // Handled and dropped: had there been an answer, it would be queued
    // on the socket by now.
    let mut buf = [0u8; 2048];
    assert!(
        h.stranger.try_recv_from(&mut buf).is_err(),
        "the scanner got an answer"
    );
    assert_eq!(
        metric(&h, "sipscreen_bans_total{reason=\"user_agent\"}"),
        1.0
    );
    let (_, v) = api(&h, reqwest::Method::GET, VIEW, "/bans").await;
    assert_eq!(v["items"][0]["address"], "127.0.0.3", "{v}");
    assert_eq!(v["items"][0]["reason"], "user_agent", "{v}");
    h.stop().await;
}

/// A peer over its limit is never banned: its new calls get 503 with
/// Retry-After (a carrier routes them elsewhere), its calls in progress
/// go on.
#[tokio::test]
async fn a_peer_over_its_limit_gets_503_for_new_calls_and_keeps_its_dialogs() {
    let h = Harness::start_with("udp", "\n[flood]\nwindow_ms = 600000\npeer_limit = 3\n").await;
    for i in 0..3 {
        let (_, got, _) = h
            .invite_from_trunk("+4917099988877", "+4930901820", &format!("lim-{i}"), "")
            .await;
        assert!(got.starts_with("INVITE "), "{got}");
    }
    let trunk = h.trunk.local_addr().unwrap();
    let inv = invite(
        h.sip_udp,
        trunk,
        "+4930901820",
        "+4917099988877",
        "lim-3",
        "",
    );
    h.trunk.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let (answer, _) = recv(&h.trunk).await;
    assert!(answer.starts_with("SIP/2.0 503"), "{answer}");
    assert_eq!(header(&answer, "Retry-After").as_deref(), Some("600"));
    // In-dialog: the BYE of the first call still reaches the PBX.
    let pbx = h.pbx.local_addr().unwrap();
    let bye = format!(
        "BYE sip:agent@{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {trunk};branch=z9hG4bK-limbye\r\nRoute: <sip:{};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:+4917099988877@carrier.example>;tag=f-lim-0\r\nTo: <sip:+4930901820@carrier.example>;tag=pbx-tag\r\nCall-ID: lim-0\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        h.me()
    );
    h.trunk.send_to(bye.as_bytes(), h.sip_udp).await.unwrap();
    let (fwd, _) = recv(&h.pbx).await;
    assert!(fwd.starts_with("BYE "), "{fwd}");
    assert_eq!(
        metric(&h, "sipscreen_flood_dropped_total{reason=\"peer_limit\"}"),
        2.0
    );
    assert_eq!(metric(&h, "sipscreen_bans_active"), 0.0);
    let (_, v) = api(&h, reqwest::Method::GET, VIEW, "/bans").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0, "{v}");
    h.stop().await;
}

/// A flood over TCP alone bans its source too: the connection is closed
/// by the sidecar, and the next one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_flood_is_banned_and_its_connection_closed() {
    let h = Harness::start().await;
    let mut c = connect_from("127.0.0.5", h.sip_tcp).await;
    let local = c.local_addr().unwrap();
    let mut n = 0u64;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = options(local, h.sip_tcp, &format!("t-{n}"), "Flooder/1.0");
            if c.write_all(m.as_bytes()).await.is_err() {
                return;
            }
            n += 1;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the flooding connection stays open after {n}"
    );
    assert!(n > 60, "closed after {n} requests: before the limit");
    let (_, v) = api(&h, reqwest::Method::GET, VIEW, "/bans").await;
    assert_eq!(v["items"][0]["address"], "127.0.0.5", "{v}");
    assert_eq!(v["items"][0]["reason"], "flood", "{v}");
    closed_at_once("127.0.0.5", h.sip_tcp).await;
    // The trunk is not affected.
    let (_, got, _) = h
        .invite_from_trunk("+4917099988877", "+4930901820", "after-tcp", "")
        .await;
    assert_eq!(header(&got, "X-CRM-Verdict").as_deref(), Some("log"));
    h.stop().await;
}

/// A reload applies new `[flood]` settings at once and keeps the bans in
/// force: with the scanner list emptied, a scanner's request is handled
/// as any stranger's (403), and the earlier ban is still listed.
#[tokio::test]
async fn a_reload_applies_flood_settings_and_keeps_bans() {
    let h = Harness::start().await;
    let me = h.stranger.local_addr().unwrap();
    h.stranger
        .send_to(
            options(me, h.sip_udp, "scan-r", "sipvicious").as_bytes(),
            h.sip_udp,
        )
        .await
        .unwrap();
    wait_metric(
        &h,
        |l| l == "sipscreen_bans_total{reason=\"user_agent\"} 1",
        "the scanner's ban",
    )
    .await;
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        format!("{text}\n[flood]\nuser_agents = []\n"),
    )
    .unwrap();
    h.server.reload().expect("the new config is taken");
    let other = UdpSocket::bind("127.0.0.4:0").await.unwrap();
    let o = other.local_addr().unwrap();
    other
        .send_to(
            options(o, h.sip_udp, "scan-r2", "sipvicious").as_bytes(),
            h.sip_udp,
        )
        .await
        .unwrap();
    let (answer, _) = recv(&other).await;
    assert!(answer.starts_with("SIP/2.0 403"), "{answer}");
    let (_, v) = api(&h, reqwest::Method::GET, VIEW, "/bans").await;
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["address"], "127.0.0.3");
    h.stop().await;
}

/// A banned source's TLS connection is closed before the handshake (no
/// handshake CPU spent on it, not even counted as a refused handshake as
/// an unbanned stranger's is); the trunk still gets its handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_source_gets_no_tls_handshake() {
    let ca = common::tls::Ca::new("test ca");
    let cert = ca.issue("sidecar", &["127.0.0.1"], false);
    let h = Harness::start_edited("udp", "", "tls = [\"127.0.0.1:0\"]\n", "", |text, dir| {
        let (crt, key) = cert.write(dir, "sidecar");
        format!(
            "{text}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            crt.display(),
            key.display()
        )
    })
    .await;
    let tls = h.sip_tls.expect("a TLS listener");
    let me = h.stranger.local_addr().unwrap();
    for i in 0..100 {
        let m = options(me, h.sip_udp, &format!("b-{i}"), "Flooder/1.0");
        h.stranger.send_to(m.as_bytes(), h.sip_udp).await.unwrap();
    }
    wait_metric(
        &h,
        |l| l == "sipscreen_bans_total{reason=\"flood\"} 1",
        "the stranger's ban",
    )
    .await;
    let connector = common::tls::connector(&ca, None);
    // An unbanned stranger: refused by the TLS side, and counted so.
    let _ = common::tls::connect_from("127.0.0.4", tls, "127.0.0.1", &connector).await;
    let refused = "sipscreen_tls_handshakes_total{direction=\"in\",result=\"refused\"}";
    wait_metric(
        &h,
        |l| l == format!("{refused} 1"),
        "the stranger's refusal",
    )
    .await;
    // The banned one: closed at accept, before the TLS side sees it.
    let banned = common::tls::connect_from("127.0.0.3", tls, "127.0.0.1", &connector).await;
    assert!(banned.is_err(), "a banned source got a TLS handshake");
    common::tls::connect_from("127.0.0.2", tls, "127.0.0.1", &connector)
        .await
        .expect("the trunk gets its handshake");
    wait_metric(
        &h,
        |l| l == "sipscreen_tls_handshakes_total{direction=\"in\",result=\"ok\"} 1",
        "the trunk's handshake",
    )
    .await;
    // Had the banned connection reached the TLS side, its refusal would
    // have been counted before the connection closed, which the client
    // saw above.
    assert_eq!(metric(&h, refused), 1.0, "{}", h.server.metrics.encode());
    h.stop().await;
}
