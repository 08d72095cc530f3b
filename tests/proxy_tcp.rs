//! The proxy over TCP: framing by Content-Length, responses back on the
//! request's connection, double Record-Route when the transport changes,
//! keep-alive pings, and one bad connection never harming another.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to the sidecar from the trunk's address.
async fn trunk_conn(h: &Harness) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    s.connect(h.sip_tcp).await.expect("connect to the sidecar")
}

fn tcp_invite(h: &Harness, from: SocketAddr, call_id: &str) -> String {
    invite(
        h.sip_tcp,
        from,
        "+4930901820",
        "+4915112345678",
        call_id,
        "",
    )
    .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
}

#[tokio::test]
async fn tcp_trunk_to_udp_pbx_and_back() {
    let h = Harness::start().await;
    let mut conn = trunk_conn(&h).await;
    let me = conn.local_addr().unwrap();
    let inv = tcp_invite(&h, me, "tcp-1");
    // Split the INVITE over several writes: framing must reassemble it.
    let (a, b) = inv.as_bytes().split_at(inv.len() / 3);
    write_all(&mut conn, a).await;
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    write_all(&mut conn, b).await;

    let (got, _) = recv(&h.pbx).await;
    rsip_parses(got.as_bytes());
    assert_eq!(
        header(&got, "X-CRM-Verdict").as_deref(),
        Some("exception"),
        "{got}"
    );
    // Transport changes: two Record-Route entries, PBX-facing (UDP) first.
    assert_eq!(
        headers(&got, "Record-Route"),
        vec![
            format!("<sip:{};lr>", h.sip_udp),
            format!("<sip:{};transport=tcp;lr>", h.sip_tcp)
        ],
        "{got}"
    );
    let vias = headers(&got, "Via");
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/UDP {}", h.sip_udp)),
        "{vias:?}"
    );
    assert!(
        vias[1].contains(&format!("received=127.0.0.2;rport={}", me.port())),
        "TCP return path recorded: {vias:?}"
    );

    // The 200 goes back on the same connection.
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
    rsip_parses(back.as_bytes());
    assert!(back.starts_with("SIP/2.0 200 OK\r\n"), "{back}");
    assert_eq!(headers(&back, "Via").len(), 1, "{back}");

    // BYE from the trunk with both Route entries (reversed route set): both popped.
    let bye = format!(
        "BYE sip:agent@{} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bK-tcpbye\r\nRoute: <sip:{};transport=tcp;lr>, <sip:{};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:+4915112345678@carrier.example>;tag=f-tcp-1\r\nTo: <sip:+4930901820@carrier.example>;tag=pbx1\r\nCall-ID: tcp-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        h.pbx.local_addr().unwrap(),
        h.sip_tcp,
        h.sip_udp
    );
    write_all(&mut conn, bye.as_bytes()).await;
    let (fwd, _) = recv(&h.pbx).await;
    assert!(fwd.starts_with("BYE "), "{fwd}");
    assert!(headers(&fwd, "Route").is_empty(), "{fwd}");
    h.stop().await;
}

#[tokio::test]
async fn pbx_over_tcp_receives_framed_invites() {
    let h = Harness::start_with("tcp", "").await;
    let inv = invite(
        h.sip_udp,
        h.trunk.local_addr().unwrap(),
        "+4930901820",
        "+4917011111111",
        "to-tcp-pbx",
        "",
    );
    h.trunk.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let (mut pbx_conn, _) = tokio::time::timeout(WAIT, h.pbx_tcp.accept())
        .await
        .expect("sidecar connects")
        .unwrap();
    let mut pending = Vec::new();
    let got = read_sip(&mut pbx_conn, &mut pending).await;
    rsip_parses(got.as_bytes());
    assert_eq!(
        header(&got, "X-CRM-Verdict").as_deref(),
        Some("log"),
        "{got}"
    );
    assert!(
        headers(&got, "Via")[0].starts_with(&format!("SIP/2.0/TCP {}", h.sip_tcp)),
        "{got}"
    );
    // A second call reuses the connection.
    let inv = invite(
        h.sip_udp,
        h.trunk.local_addr().unwrap(),
        "+4930901820",
        "+4917011111112",
        "to-tcp-pbx-2",
        "",
    );
    h.trunk.send_to(inv.as_bytes(), h.sip_udp).await.unwrap();
    let got = read_sip(&mut pbx_conn, &mut pending).await;
    assert_eq!(header(&got, "Call-ID").as_deref(), Some("to-tcp-pbx-2"));
    h.stop().await;
}

#[tokio::test]
async fn oversize_and_garbage_close_only_their_own_connection() {
    let h = Harness::start().await;
    let mut good = trunk_conn(&h).await;
    let mut big = trunk_conn(&h).await;
    let mut junk = trunk_conn(&h).await;

    let big_addr = big.local_addr().unwrap();
    let huge = invite(
        h.sip_tcp,
        big_addr,
        "+4930901820",
        "+4917000000000",
        "tcp-big",
        &format!("X-Pad: {}\r\n", "a".repeat(70_000)),
    )
    .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    write_all(&mut big, huge.as_bytes()).await;
    let mut pending = Vec::new();
    let refused = read_sip(&mut big, &mut pending).await;
    assert!(
        refused.starts_with("SIP/2.0 513 Message Too Large\r\n"),
        "{refused}"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, big.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "oversize connection closed");

    write_all(
        &mut junk,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not sip at all\r\n\r\n",
    )
    .await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, junk.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "garbage connection closed");

    // Keep-alive ping on the good connection, then a call.
    write_all(&mut good, b"\r\n\r\n").await;
    let mut pong = [0u8; 2];
    tokio::time::timeout(WAIT, good.read_exact(&mut pong))
        .await
        .expect("pong")
        .unwrap();
    assert_eq!(&pong, b"\r\n");
    let me = good.local_addr().unwrap();
    write_all(&mut good, tcp_invite(&h, me, "tcp-good").as_bytes()).await;
    let (got, _) = recv(&h.pbx).await;
    assert_eq!(header(&got, "Call-ID").as_deref(), Some("tcp-good"));
    h.nothing_more_at_pbx().await;
    h.stop().await;
}
