//! SIP over TLS with certificates made by the test: a TLS trunk to a UDP
//! PBX and back (tags, double Record-Route, responses and the in-dialog
//! BYE on the same connection), the PBX to a TLS carrier (SNI, server
//! verification, connection reuse, a failed verification answered 503),
//! mutual TLS on a trunk, and an unreachable TCP next hop answered 503.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::tls::{Ca, TlsPeer, connect_from, connector};
use common::*;
use tokio::io::AsyncReadExt;

/// Polls /metrics until it has `line` (exactly), or fails.
async fn wait_metric(h: &Harness, line: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = h.server.metrics.encode();
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no {line:?} in\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `[[trunk]]` table's `target` line replaced by `target`, and
/// `keys` added to it.
fn trunk_with(text: String, target: Option<SocketAddr>, keys: &str) -> String {
    let mut out = String::new();
    let mut in_trunk = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_trunk = line == "[[trunk]]";
        }
        if let Some(t) = target.filter(|_| in_trunk && line.starts_with("target = ")) {
            out.push_str(&format!("target = \"{t}\"\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if in_trunk && line.starts_with("trust_pai") {
            out.push_str(keys);
        }
    }
    out
}

fn toml_path(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A sidecar with a TLS listener presenting a certificate for 127.0.0.1
/// from `ca`; `trunk` keys added to the trunk, `extra` to `[tls]`.
async fn tls_sidecar(
    ca: &Ca,
    target: Option<SocketAddr>,
    trunk: impl FnOnce(&std::path::Path) -> String,
    tls_extra: impl FnOnce(&std::path::Path) -> String,
) -> Harness {
    let sidecar = ca.issue("sidecar", &["127.0.0.1", "sidecar.test"], false);
    Harness::start_edited("udp", "", "tls = [\"127.0.0.1:0\"]\n", "", |text, dir| {
        let (crt, key) = sidecar.write(dir, "sidecar");
        let keys = trunk(dir);
        let text = trunk_with(text, target, &keys);
        format!(
            "{text}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
            toml_path(&crt),
            toml_path(&key),
            tls_extra(dir)
        )
    })
    .await
}

/// Trunk keys for a TLS carrier named carrier.test whose certificate is
/// verified against `ca` (written as `file`).
fn carrier_keys<'a>(ca: &'a Ca, file: &'a str) -> impl FnOnce(&std::path::Path) -> String + 'a {
    move |dir| {
        format!(
            "transport = \"tls\"\ntls_server_name = \"carrier.test\"\ntls_ca = \"{}\"\n",
            toml_path(&ca.write(dir, file))
        )
    }
}

/// Sends `inv` from `from` to the sidecar and expects the sidecar's own
/// 503 back, with only the sender's Via.
async fn answered_503(from: &tokio::net::UdpSocket, sidecar: SocketAddr, inv: &str) -> String {
    from.send_to(inv.as_bytes(), sidecar).await.unwrap();
    let (got, _) = recv(from).await;
    rsip_parses(got.as_bytes());
    assert!(
        got.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
        "{got}"
    );
    assert_eq!(headers(&got, "Via").len(), 1, "our Via is gone: {got}");
    got
}

fn tls_invite(to: SocketAddr, from: SocketAddr, call_id: &str) -> String {
    invite(to, from, "+4930901820", "+4915112345678", call_id, "")
        .replace("SIP/2.0/UDP", "SIP/2.0/TLS")
        .replace(&format!("@{from}>"), &format!("@{from};transport=tls>"))
}

#[tokio::test]
async fn tls_trunk_to_udp_pbx_and_back_on_the_same_connection() {
    let ca = Ca::new("test ca");
    let h = tls_sidecar(
        &ca,
        None,
        |_| "transport = \"tls\"\n".into(),
        |_| String::new(),
    )
    .await;
    let tls = h.sip_tls.expect("a TLS listener");
    let mut conn = connect_from("127.0.0.2", tls, "127.0.0.1", &connector(&ca, None))
        .await
        .expect("the sidecar's certificate verifies");
    let me = conn.get_ref().0.local_addr().unwrap();
    let inv = tls_invite(tls, me, "tls-1");
    // Split over two records: framing reassembles inside the TLS stream.
    let (a, b) = inv.as_bytes().split_at(inv.len() / 2);
    write_all(&mut conn, a).await;
    write_all(&mut conn, b).await;

    let (got, _) = recv(&h.pbx).await;
    rsip_parses(got.as_bytes());
    assert_eq!(
        header(&got, "X-CRM-Verdict").as_deref(),
        Some("exception"),
        "{got}"
    );
    assert_eq!(
        header(&got, "X-CRM-Line").as_deref(),
        Some("+4930901820"),
        "{got}"
    );
    assert_eq!(
        headers(&got, "Record-Route"),
        vec![
            format!("<sip:{};lr>", h.sip_udp),
            format!("<sip:{tls};transport=tls;lr>")
        ],
        "transport changes: two entries, the PBX's side first\n{got}"
    );
    let vias = headers(&got, "Via");
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/UDP {}", h.sip_udp)),
        "{vias:?}"
    );
    assert!(
        vias[1].starts_with(&format!("SIP/2.0/TLS {me}"))
            && vias[1].contains(&format!("rport={}", me.port())),
        "the TLS return path is recorded: {vias:?}"
    );

    let ok = response_to(
        &got,
        200,
        "OK",
        "pbx1",
        &format!("sip:agent@{}", h.pbx.local_addr().unwrap()),
    );
    h.pbx.send_to(ok.as_bytes(), h.sip_udp).await.unwrap();
    let mut pending = Vec::new();
    let back = read_sip(&mut conn, &mut pending).await;
    assert!(back.starts_with("SIP/2.0 200 OK\r\n"), "{back}");
    assert_eq!(headers(&back, "Via").len(), 1, "{back}");
    assert_eq!(headers(&back, "Record-Route").len(), 2, "{back}");

    // The PBX hangs up: the route set as it got it, to the caller's
    // Contact. The BYE goes back over TLS, on the trunk's connection.
    let bye = format!(
        "BYE sip:+4915112345678@{me};transport=tls SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-tlsbye\r\nRoute: <sip:{};lr>, <sip:{tls};transport=tls;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:+4930901820@carrier.example>;tag=pbx1\r\nTo: \"Caller\" <sip:+4915112345678@carrier.example>;tag=f-tls-1\r\nCall-ID: tls-1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        h.pbx.local_addr().unwrap(),
        h.sip_udp
    );
    h.pbx.send_to(bye.as_bytes(), h.sip_udp).await.unwrap();
    let fwd = read_sip(&mut conn, &mut pending).await;
    rsip_parses(fwd.as_bytes());
    assert!(
        fwd.starts_with(&format!("BYE sip:+4915112345678@{me};transport=tls ")),
        "{fwd}"
    );
    assert!(
        headers(&fwd, "Route").is_empty(),
        "both our entries popped: {fwd}"
    );
    assert!(
        headers(&fwd, "Via")[0].starts_with(&format!("SIP/2.0/TLS {tls};branch=")),
        "{fwd}"
    );
    let ok = response_to(&fwd, 200, "OK", "", "");
    write_all(&mut conn, ok.as_bytes()).await;
    let (done, _) = recv(&h.pbx).await;
    assert!(
        done.starts_with("SIP/2.0 200 OK\r\n") && done.contains("CSeq: 1 BYE"),
        "{done}"
    );

    // CRLF keep-alive as on TCP.
    write_all(&mut conn, b"\r\n\r\n").await;
    let mut pong = [0u8; 2];
    tokio::time::timeout(WAIT, conn.read_exact(&mut pong))
        .await
        .expect("pong")
        .unwrap();
    assert_eq!(&pong, b"\r\n");

    wait_metric(
        &h,
        "sipscreen_tls_handshakes_total{direction=\"in\",result=\"ok\"} 1",
    )
    .await;
    wait_metric(&h, "sipscreen_tls_connections 1").await;
    wait_metric(
        &h,
        "sipscreen_sip_messages_total{transport=\"tls\",kind=\"request\",method=\"INVITE\",side=\"trunk\"} 1",
    )
    .await;
    drop(conn);
    wait_metric(&h, "sipscreen_tls_connections 0").await;
    h.stop().await;
}

#[tokio::test]
async fn pbx_to_a_tls_carrier_with_sni_verification_and_reuse() {
    let ca = Ca::new("carrier ca");
    let carrier = TlsPeer::bind("127.0.0.2", &ca.issue("carrier", &["carrier.test"], false)).await;
    let h = tls_sidecar(
        &ca,
        Some(carrier.addr()),
        carrier_keys(&ca, "carrier-ca"),
        |_| String::new(),
    )
    .await;
    let pbx = h.pbx.local_addr().unwrap();
    let inv = invite(
        h.sip_udp,
        pbx,
        "+4917011111111",
        "+4930901820",
        "to-tls-1",
        "",
    );
    h.pbx.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let mut conn = carrier.accept().await.expect("the sidecar's handshake");
    assert_eq!(conn.get_ref().1.server_name(), Some("carrier.test"), "SNI");
    let mut pending = Vec::new();
    let got = read_sip(&mut conn, &mut pending).await;
    rsip_parses(got.as_bytes());
    let tls = h.sip_tls.unwrap();
    assert!(
        headers(&got, "Via")[0].starts_with(&format!("SIP/2.0/TLS {tls};branch=")),
        "{got}"
    );
    assert_eq!(
        headers(&got, "Record-Route"),
        vec![
            format!("<sip:{tls};transport=tls;lr>"),
            format!("<sip:{};lr>", h.sip_udp)
        ],
        "{got}"
    );
    assert!(
        header(&got, "X-CRM-Verdict").is_none(),
        "the carrier never sees tags: {got}"
    );

    for (code, reason, tag) in [(180, "Ringing", "c1"), (200, "OK", "c1")] {
        let r = response_to(
            &got,
            code,
            reason,
            tag,
            "sip:callee@127.0.0.2:5061;transport=tls",
        );
        write_all(&mut conn, r.as_bytes()).await;
        let (back, _) = recv(&h.pbx).await;
        assert!(back.starts_with(&format!("SIP/2.0 {code} ")), "{back}");
        assert_eq!(headers(&back, "Via").len(), 1, "{back}");
    }

    // The next call takes the open connection: no second handshake.
    let inv = invite(
        h.sip_udp,
        pbx,
        "+4917011111112",
        "+4930901820",
        "to-tls-2",
        "",
    );
    h.pbx.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let got = read_sip(&mut conn, &mut pending).await;
    assert_eq!(header(&got, "Call-ID").as_deref(), Some("to-tls-2"));
    wait_metric(
        &h,
        "sipscreen_tls_handshakes_total{direction=\"out\",result=\"ok\"} 1",
    )
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_carrier_certificate_from_another_ca_is_refused_and_the_call_gets_503() {
    let ours = Ca::new("the ca we trust");
    let theirs = Ca::new("some other ca");
    let carrier = TlsPeer::bind(
        "127.0.0.2",
        &theirs.issue("carrier", &["carrier.test"], false),
    )
    .await;
    let h = tls_sidecar(
        &ours,
        Some(carrier.addr()),
        carrier_keys(&ours, "trusted"),
        |_| String::new(),
    )
    .await;
    let accept = tokio::spawn(async move { carrier.accept().await.map(|_| ()) });
    let pbx = h.pbx.local_addr().unwrap();
    let inv = invite(
        h.sip_udp,
        pbx,
        "+4917011111111",
        "+4930901820",
        "bad-ca",
        "",
    );
    let got = answered_503(&h.pbx, h.sip_udp, &inv).await;
    assert!(headers(&got, "Via")[0].contains("z9hG4bK-bad-ca"), "{got}");
    assert!(
        accept.await.unwrap().is_err(),
        "the sidecar aborted the handshake"
    );
    wait_metric(
        &h,
        "sipscreen_tls_handshakes_total{direction=\"out\",result=\"unknown_issuer\"} 1",
    )
    .await;
    wait_metric(&h, "sipscreen_sip_errors_total{reason=\"unreachable\"} 1").await;
    h.stop().await;
}

#[tokio::test]
async fn a_trunk_requiring_mutual_tls_refuses_a_client_without_certificate() {
    let ca = Ca::new("test ca");
    let clients = Ca::new("client ca");
    let trunk_cert = clients.issue("trunk", &["trunk.test"], true);
    let stranger = Ca::new("stranger ca").issue("trunk", &["trunk.test"], true);
    let h = tls_sidecar(
        &ca,
        None,
        |_| "tls_verify_client = true\n".into(),
        |dir| format!("ca = \"{}\"\n", toml_path(&clients.write(dir, "clients"))),
    )
    .await;
    let tls = h.sip_tls.unwrap();

    for (cert, reason) in [
        (None, "no_client_certificate"),
        (Some(&stranger), "unknown_issuer"),
    ] {
        let refused = match connect_from("127.0.0.2", tls, "127.0.0.1", &connector(&ca, cert)).await
        {
            // TLS 1.3: the client is done before the server has checked
            // its certificate; the refusal arrives as an alert on read.
            Ok(mut c) => {
                let inv = tls_invite(tls, c.get_ref().0.local_addr().unwrap(), "mtls-no");
                let _ = tokio::io::AsyncWriteExt::write_all(&mut c, inv.as_bytes()).await;
                let mut buf = [0u8; 64];
                tokio::time::timeout(WAIT, c.read(&mut buf))
                    .await
                    .expect("the sidecar answers")
                    .map_or(true, |n| n == 0)
            }
            Err(_) => true,
        };
        assert!(
            refused,
            "a client without a certificate from [tls] ca is refused"
        );
        wait_metric(
            &h,
            &format!("sipscreen_tls_handshakes_total{{direction=\"in\",result=\"{reason}\"}} 1"),
        )
        .await;
    }

    let mut c = connect_from(
        "127.0.0.2",
        tls,
        "127.0.0.1",
        &connector(&ca, Some(&trunk_cert)),
    )
    .await
    .expect("a client certificate from [tls] ca");
    let inv = tls_invite(tls, c.get_ref().0.local_addr().unwrap(), "mtls-ok");
    write_all(&mut c, inv.as_bytes()).await;
    let (got, _) = recv(&h.pbx).await;
    assert_eq!(header(&got, "Call-ID").as_deref(), Some("mtls-ok"), "{got}");
    // Only the trunk's call got through.
    h.nothing_more_at_pbx().await;
    h.stop().await;
}

/// The generic stream code: a TCP next hop that refuses the connection
/// gets the request answered 503 at once.
#[tokio::test]
async fn a_refused_tcp_connection_answers_the_request_503() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start_edited("tcp", "", "", "", |text, _| {
        text.lines()
            .map(|l| {
                if l.starts_with("target = ") && l.contains("127.0.0.1:") {
                    format!("target = \"{closed}\"\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    })
    .await;
    let trunk = h.trunk.local_addr().unwrap();
    let inv = invite(
        h.sip_udp,
        trunk,
        "+4930901820",
        "+4915112345678",
        "refused-1",
        "",
    );
    answered_503(&h.trunk, h.sip_udp, &inv).await;
    wait_metric(&h, "sipscreen_sip_errors_total{reason=\"unreachable\"} 1").await;
    h.stop().await;
}

/// RFC 5923: a trunk whose Via says `alias` gets requests towards its
/// sent-by on the connection it opened, not on a new one to an address
/// nobody listens on.
#[tokio::test]
async fn via_alias_lets_in_dialog_requests_reuse_the_connection() {
    let ca = Ca::new("test ca");
    let h = tls_sidecar(
        &ca,
        None,
        |_| "transport = \"tls\"\n".into(),
        |_| String::new(),
    )
    .await;
    let tls = h.sip_tls.unwrap();
    let mut conn = connect_from("127.0.0.2", tls, "127.0.0.1", &connector(&ca, None))
        .await
        .unwrap();
    // The port the trunk claims as its own: nothing listens there.
    let claimed = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let inv = tls_invite(tls, claimed, "alias-1")
        .replace("branch=z9hG4bK-alias-1", "branch=z9hG4bK-alias-1;alias");
    write_all(&mut conn, inv.as_bytes()).await;
    let (got, _) = recv(&h.pbx).await;
    assert!(headers(&got, "Via")[1].contains(";alias"), "{got}");
    let bye = format!(
        "BYE sip:+4915112345678@{claimed};transport=tls SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-aliasbye\r\nRoute: <sip:{};lr>, <sip:{tls};transport=tls;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:+4930901820@carrier.example>;tag=pbx1\r\nTo: <sip:+4915112345678@carrier.example>;tag=f-alias-1\r\nCall-ID: alias-1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        h.pbx.local_addr().unwrap(),
        h.sip_udp
    );
    h.pbx.send_to(bye.as_bytes(), h.sip_udp).await.unwrap();
    let mut pending = Vec::new();
    let fwd = read_sip(&mut conn, &mut pending).await;
    assert!(fwd.starts_with("BYE "), "{fwd}");
    wait_metric(
        &h,
        "sipscreen_tls_handshakes_total{direction=\"out\",result=\"ok\"} 0",
    )
    .await;
    h.stop().await;
}

/// A carrier certificate from the trusted CA but for another name than
/// `tls_server_name` is refused too.
#[tokio::test]
async fn a_carrier_certificate_for_another_name_is_refused() {
    let ca = Ca::new("carrier ca");
    let carrier = TlsPeer::bind("127.0.0.2", &ca.issue("other", &["other.test"], false)).await;
    let h = tls_sidecar(
        &ca,
        Some(carrier.addr()),
        carrier_keys(&ca, "carrier-ca"),
        |_| String::new(),
    )
    .await;
    let accept = tokio::spawn(async move { carrier.accept().await.map(|_| ()) });
    let pbx = h.pbx.local_addr().unwrap();
    let inv = invite(
        h.sip_udp,
        pbx,
        "+4917011111111",
        "+4930901820",
        "bad-name",
        "",
    );
    answered_503(&h.pbx, h.sip_udp, &inv).await;
    assert!(
        accept.await.unwrap().is_err(),
        "the sidecar aborted the handshake"
    );
    wait_metric(
        &h,
        "sipscreen_tls_handshakes_total{direction=\"out\",result=\"bad_name\"} 1",
    )
    .await;
    h.stop().await;
}
