//! What a flood costs the real binary: a banned source sends 100 000
//! datagrams; the sidecar's CPU time (every thread's, from
//! /proc/PID/task/*/schedstat, nanoseconds; kernel receive included)
//! divided by the datagrams it dropped. Printed, and bounded.
//!
//! cargo test --test flood_cpu -- --nocapture
//!
//! `SIPSCREEN_FLOOD_BIN=target/release/sipscreen` measures that build
//! instead of the test's (debug) one.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::binary::Serving;

/// CPU nanoseconds used so far by every thread of `pid`.
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = t.unwrap().path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn metrics(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

const DROPPED: &str = "sipscreen_flood_dropped_total{reason=\"banned\"}";

/// Waits until the sidecar has dropped `n` banned datagrams (or none more
/// arrive for a while: UDP may lose some in the kernel).
fn wait_dropped(admin: SocketAddr, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (0, Instant::now());
    loop {
        let d = value(&metrics(admin), DROPPED);
        if d >= n {
            return d;
        }
        if d != last.0 {
            last = (d, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) || Instant::now() > deadline {
            return d;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_banned_flood_costs_bounded_cpu_per_datagram() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sipscreen.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nudp = [\"127.0.0.1:0\"]\ntcp = []\n[pbx]\ntarget = \"127.0.0.1:5080\"\nsources = [\"127.0.0.1/32\"]\n[[trunk]]\nname = \"carrier\"\ntarget = \"127.0.0.2:5070\"\nsources = [\"127.0.0.2/32\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[store]\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let bin = std::env::var_os("SIPSCREEN_FLOOD_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| common::binary::BIN.into());
    let run = Serving::start_bin(&bin, &config);
    let sip = run.addr("udp=[", ']');
    let admin = run.admin();
    let sock = UdpSocket::bind("127.0.0.3:0").unwrap();
    let from = sock.local_addr().unwrap();
    let msg = format!(
        "OPTIONS sip:probe@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-f\r\nMax-Forwards: 70\r\nFrom: <sip:scan@{from}>;tag=f\r\nTo: <sip:probe@{sip}>\r\nCall-ID: flood\r\nCSeq: 1 OPTIONS\r\nUser-Agent: Flooder/1.0\r\nContent-Length: 0\r\n\r\n"
    );
    // Get banned (the default limit is 60 per 2 s).
    for _ in 0..100 {
        sock.send_to(msg.as_bytes(), sip).unwrap();
    }
    let before_drops = wait_dropped(admin, 39);
    assert!(before_drops >= 1, "the source is not banned");
    let pid = run.child.id();
    let cpu0 = cpu_ns(pid);
    const N: u64 = 100_000;
    let t0 = Instant::now();
    for i in 0..N {
        sock.send_to(msg.as_bytes(), sip).unwrap();
        if i.is_multiple_of(256) {
            // Let the receiver keep up (the socket buffer is 4 MiB, the
            // kernel drops the rest: that costs the sidecar nothing).
            std::thread::yield_now();
        }
    }
    let sent_in = t0.elapsed();
    let dropped = wait_dropped(admin, before_drops + N) - before_drops;
    let cpu = cpu_ns(pid) - cpu0;
    let per = cpu as f64 / dropped.max(1) as f64 / 1000.0;
    eprintln!(
        "flood cpu ({}): {dropped} of {N} datagrams dropped as banned (sent in {sent_in:?}, {:.0}/s); sidecar CPU {:.1} ms = {per:.2} us per dropped datagram",
        bin.display(),
        N as f64 / sent_in.as_secs_f64(),
        cpu as f64 / 1e6
    );
    assert!(
        dropped > N / 10,
        "only {dropped} of {N} reached the sidecar"
    );
    // A debug build; the release figure is about a tenth (README).
    assert!(per < 25.0, "{per:.2} us per dropped datagram");
}
