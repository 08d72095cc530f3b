//! The sidecar over IPv6 loopback, end to end: listeners, the trunk's
//! sources, the PBX target and the admin listener all on `[::1]`; Via
//! `sent-by`, `received` and Record-Route with bracketed literals (RFC
//! 5118); a call from the trunk to the PBX and back, ACK and BYE through
//! the Record-Route, over UDP and over TCP.
//!
//! Only one IPv6 loopback address exists (`::1`), so the PBX has no
//! source network here: every request from `::1` is the trunk's, and the
//! PBX's responses find their way by Via alone, as they do over IPv4.
//! A machine without `::1` fails this under `SIPSCREEN_CI=1` (`.ci/run`)
//! and is skipped loudly elsewhere.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{WAIT, header, headers, read_sip, recv, response_to, write_all};
use sipscreen::server::Server;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// The message scans and validates (RFC 3261 with RFC 5118 references).
/// rsip, the independent parser the IPv4 tests use, refuses IPv6
/// references in a Request-URI even in the trunk's own INVITE, so this
/// checks with our scanner as `rfc4475.rs` does for RFC 5118's messages,
/// plus the exact header values asserted below.
fn valid(msg: &[u8]) {
    let m = sipscreen::sip::Message::scan(bytes::Bytes::copy_from_slice(msg))
        .unwrap_or_else(|e| panic!("does not scan ({e}):\n{}", String::from_utf8_lossy(msg)));
    if let Err(e) = m.validate() {
        panic!("invalid ({e:?}):\n{}", String::from_utf8_lossy(msg));
    }
}

#[test]
fn rsip_refuses_ipv6_references_so_it_cannot_check_these() {
    let sent = invite(
        "[::1]:5060".parse().unwrap(),
        "[::1]:5070".parse().unwrap(),
        "UDP",
        "x",
    );
    assert!(rsip::SipMessage::try_from(sent.as_bytes()).is_err());
    valid(sent.as_bytes());
}

/// Whether `[::1]` can be bound; says so (or fails in CI) when not.
fn have_ipv6_loopback() -> bool {
    if std::net::UdpSocket::bind("[::1]:0").is_ok() {
        return true;
    }
    let msg = "no IPv6 loopback ([::1]) on this machine";
    if std::env::var_os("SIPSCREEN_CI").is_some_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

struct V6 {
    server: Arc<Server>,
    trigger: sipscreen::shutdown::Trigger,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(pbx: SocketAddr, pbx_transport: &str, trunk: SocketAddr) -> V6 {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[sip]
udp = ["[::1]:0"]
tcp = ["[::1]:0"]

[pbx]
target = "{pbx}"
transport = "{pbx_transport}"

[[trunk]]
name = "carrier6"
target = "{trunk}"
sources = ["::1/128"]

[admin]
listen = "[::1]:0"

[[admin.tokens]]
name = "crm-viewer"
role = "view"
sha256 = "5e17bb983b1ff3b4acbcaa8451a4173faa5575c682e7cf8615e2ed5e50fad7bd"

[store]
data_dir = "{}"

[[line]]
number = "+4930901820"
"#,
        dir.path().join("data").display()
    );
    let path = dir.path().join("sipscreen.toml");
    std::fs::write(&path, text).unwrap();
    let bound = Server::bind(&path).await.expect("server starts on [::1]");
    let server = bound.server.clone();
    let (trigger, sd) = sipscreen::shutdown::channel();
    let task = tokio::spawn(bound.run(sd));
    V6 {
        server,
        trigger,
        task,
        _dir: dir,
    }
}

impl V6 {
    async fn stop(self) {
        self.trigger.fire();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops")
            .unwrap();
    }
}

fn invite(sidecar: SocketAddr, me: SocketAddr, transport: &str, id: &str) -> String {
    let body =
        "v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:+4930901820@{sidecar} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {me};branch=z9hG4bK-{id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+4917099988877@carrier.example>;tag=f-{id}\r\n\
         To: <sip:+4930901820@carrier.example>\r\n\
         Call-ID: {id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:+4917099988877@{me};transport={}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        transport.to_ascii_lowercase(),
        body.len()
    )
}

fn in_dialog(
    method: &str,
    cseq: &str,
    pbx: SocketAddr,
    me: SocketAddr,
    transport: &str,
    route: &str,
    id: &str,
) -> String {
    format!(
        "{method} sip:agent@{pbx} SIP/2.0\r\nVia: SIP/2.0/{transport} {me};branch=z9hG4bK-{method}-{id}\r\nRoute: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:+4917099988877@carrier.example>;tag=f-{id}\r\nTo: <sip:+4930901820@carrier.example>;tag=pbx-tag\r\nCall-ID: {id}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// An in-dialog request as the PBX gets it: to its Contact, our Route
/// popped.
fn forwarded_in_dialog(fwd: &str, method: &str, pbx: SocketAddr) {
    valid(fwd.as_bytes());
    assert!(
        fwd.starts_with(&format!("{method} sip:agent@{pbx} SIP/2.0\r\n")),
        "{fwd}"
    );
    assert!(headers(fwd, "Route").is_empty(), "{fwd}");
}

/// The PBX's 200 to the BYE, as the trunk gets it.
fn bye_answered(back: &str) {
    assert!(back.starts_with("SIP/2.0 200 OK"), "{back}");
    assert!(back.contains("CSeq: 2 BYE"), "{back}");
}

/// What the INVITE must look like at the PBX: our bracketed Via on top,
/// the trunk's below with `rport` filled in, a bracketed Record-Route, the
/// tags.
fn check_forwarded_invite(got: &str, ours: &str, transport: &str, trunk: SocketAddr) {
    valid(got.as_bytes());
    let vias = headers(got, "Via");
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/{transport} {ours};branch=z9hG4bKsS")),
        "{got}"
    );
    assert!(ours.starts_with("[::1]:"), "{ours}");
    // rport filled in, received added without brackets (RFC 3261 ABNF).
    assert_eq!(
        vias[1],
        format!(
            "SIP/2.0/{transport} {trunk};branch=z9hG4bK-{};rport={};received=::1",
            header(got, "Call-ID").unwrap(),
            trunk.port()
        ),
        "{got}"
    );
    assert_eq!(
        header(got, "X-CRM-Verdict").as_deref(),
        Some("log"),
        "{got}"
    );
    assert_eq!(
        header(got, "X-CRM-Client").as_deref(),
        Some("+4917099988877")
    );
    assert_eq!(header(got, "X-CRM-Call-Id").map(|v| v.len()), Some(32));
}

#[tokio::test]
async fn a_call_over_ipv6_udp_with_bye_through_the_record_route() {
    if !have_ipv6_loopback() {
        return;
    }
    let trunk = UdpSocket::bind("[::1]:0").await.unwrap();
    let pbx = UdpSocket::bind("[::1]:0").await.unwrap();
    let (t, p) = (trunk.local_addr().unwrap(), pbx.local_addr().unwrap());
    let v6 = start(p, "udp", t).await;
    let sip = v6.server.udp[0];
    assert!(sip.is_ipv6(), "{sip}");
    let ours = sip.to_string();

    trunk
        .send_to(invite(sip, t, "UDP", "v6-udp").as_bytes(), sip)
        .await
        .unwrap();
    let (got, from) = recv(&pbx).await;
    assert_eq!(from, sip);
    check_forwarded_invite(&got, &ours, "UDP", t);
    assert_eq!(
        headers(&got, "Record-Route"),
        vec![format!("<sip:{ours};lr>")]
    );

    // 180 and 200 back to the trunk, our Via gone.
    for (code, reason) in [(180, "Ringing"), (200, "OK")] {
        let r = response_to(&got, code, reason, "pbx-tag", &format!("sip:agent@{p}"));
        pbx.send_to(r.as_bytes(), sip).await.unwrap();
        let (back, from) = recv(&trunk).await;
        assert_eq!(from, sip);
        valid(back.as_bytes());
        assert!(back.starts_with(&format!("SIP/2.0 {code} ")), "{back}");
        let vias = headers(&back, "Via");
        assert_eq!(vias.len(), 1, "{back}");
        assert!(vias[0].contains("branch=z9hG4bK-v6-udp"), "{back}");
    }

    // ACK and BYE through our Record-Route to the PBX's Contact.
    let route = format!("<sip:{ours};lr>");
    for (method, cseq) in [("ACK", "1 ACK"), ("BYE", "2 BYE")] {
        let req = in_dialog(method, cseq, p, t, "UDP", &route, "v6-udp");
        trunk.send_to(req.as_bytes(), sip).await.unwrap();
        let (fwd, from) = recv(&pbx).await;
        assert_eq!(from, sip);
        forwarded_in_dialog(&fwd, method, p);
        if method == "BYE" {
            let ok = response_to(&fwd, 200, "OK", "", "");
            pbx.send_to(ok.as_bytes(), sip).await.unwrap();
            let (back, _) = recv(&trunk).await;
            bye_answered(&back);
        }
    }

    // The admin listener answers over IPv6 too.
    let admin = v6.server.admin.unwrap();
    assert!(admin.is_ipv6(), "{admin}");
    let resp = reqwest::Client::new()
        .get(format!("http://{admin}/api/v1/bans"))
        .bearer_auth("view-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["items"], serde_json::json!([]));
    v6.stop().await;
}

#[tokio::test]
async fn a_call_over_ipv6_tcp_with_bye_through_the_record_route() {
    if !have_ipv6_loopback() {
        return;
    }
    let trunk_listener = TcpListener::bind("[::1]:0").await.unwrap();
    let pbx_listener = TcpListener::bind("[::1]:0").await.unwrap();
    let p = pbx_listener.local_addr().unwrap();
    let v6 = start(p, "tcp", trunk_listener.local_addr().unwrap()).await;
    let sip = v6.server.tcp[0];
    assert!(sip.is_ipv6(), "{sip}");
    let ours = sip.to_string();

    let mut conn = TcpStream::connect(sip).await.unwrap();
    let t = conn.local_addr().unwrap();
    let mut from_sidecar = Vec::new();
    write_all(&mut conn, invite(sip, t, "TCP", "v6-tcp").as_bytes()).await;
    let (mut pbx_conn, _) = tokio::time::timeout(WAIT, pbx_listener.accept())
        .await
        .expect("the sidecar connects to the PBX")
        .unwrap();
    let mut at_pbx = Vec::new();
    let got = read_sip(&mut pbx_conn, &mut at_pbx).await;
    check_forwarded_invite(&got, &ours, "TCP", t);
    assert_eq!(
        headers(&got, "Record-Route"),
        vec![format!("<sip:{ours};transport=tcp;lr>")]
    );

    let ok = response_to(
        &got,
        200,
        "OK",
        "pbx-tag",
        &format!("sip:agent@{p};transport=tcp"),
    );
    write_all(&mut pbx_conn, ok.as_bytes()).await;
    let back = read_sip(&mut conn, &mut from_sidecar).await;
    valid(back.as_bytes());
    assert!(back.starts_with("SIP/2.0 200 OK"), "{back}");
    assert_eq!(headers(&back, "Via").len(), 1, "{back}");

    let route = format!("<sip:{ours};transport=tcp;lr>");
    for (method, cseq) in [("ACK", "1 ACK"), ("BYE", "2 BYE")] {
        let req = in_dialog(method, cseq, p, t, "TCP", &route, "v6-tcp");
        write_all(&mut conn, req.as_bytes()).await;
        let fwd = read_sip(&mut pbx_conn, &mut at_pbx).await;
        forwarded_in_dialog(&fwd, method, p);
        if method == "BYE" {
            let ok = response_to(&fwd, 200, "OK", "", "");
            write_all(&mut pbx_conn, ok.as_bytes()).await;
            let back = read_sip(&mut conn, &mut from_sidecar).await;
            bye_answered(&back);
        }
    }
    v6.stop().await;
}
