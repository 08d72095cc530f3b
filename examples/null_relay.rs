//! The floor of the side-by-side load test (benches/sipp/run.sh): a null
//! relay that forwards every datagram between the two SIPp instances
//! without parsing it, so that what the kernel and SIPp cost per call is
//! measured on the same load as sipscreen and Kamailio. One thread, the
//! same receive as sipscreen's UDP receiver (`recvmmsg(MSG_WAITFORONE)`,
//! up to 16 datagrams per call: `sipscreen::transport::batch`), one
//! `sendto(MSG_DONTWAIT)` per datagram from the listening socket, as
//! sipscreen sends. A datagram from the trunk's IP address goes to the PBX,
//! any other to the trunk. Not part of the sidecar.
//!
//! Usage: null_relay LISTEN TRUNK PBX
//! e.g.   null_relay 127.0.0.1:15064 127.0.0.2:15070 127.0.0.1:15080
//!
//! Runs until killed.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;

use sipscreen::transport::batch::{self, Batch};

/// Where each datagram goes: by its source's IP address.
struct Route {
    trunk: SocketAddr,
    pbx: SocketAddr,
}

impl Route {
    fn next_hop(&self, from: SocketAddr) -> SocketAddr {
        if from.ip() == self.trunk.ip() {
            self.pbx
        } else {
            self.trunk
        }
    }
}

/// Binds `listen` with sipscreen's socket buffers (4 MiB where allowed).
fn bind(listen: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&listen.into())?;
    Ok(s.into())
}

/// Forwards until `keep_going` says no (checked after every receive) or
/// the receive fails with anything but a timeout or a signal; how many
/// datagrams it forwarded (a full send buffer or an ICMP error drops one,
/// as a UDP proxy would).
fn relay(socket: &UdpSocket, route: &Route, mut keep_going: impl FnMut() -> bool) -> u64 {
    let mut batch = Batch::new();
    let sock = socket2::SockRef::from(socket);
    let mut forwarded = 0;
    loop {
        match batch.recv(socket) {
            Ok(n) => {
                for i in 0..n {
                    let (d, Some(from)) = batch.get(i) else {
                        continue;
                    };
                    let to = route.next_hop(from);
                    if sock
                        .send_to_with_flags(d, &to.into(), libc::MSG_DONTWAIT)
                        .is_ok()
                    {
                        forwarded += 1;
                    }
                }
            }
            Err(e) if batch::nothing_received(&e) => {}
            // ECONNREFUSED of an earlier send (a peer not yet up): go on.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => {
                eprintln!("null_relay: receive: {e}");
                return forwarded;
            }
        }
        if !keep_going() {
            return forwarded;
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed: Result<Vec<SocketAddr>, _> = args.iter().map(|a| a.parse()).collect();
    let (listen, trunk, pbx) = match parsed.as_deref() {
        Ok([l, t, p]) => (*l, *t, *p),
        _ => {
            eprintln!("usage: null_relay LISTEN TRUNK PBX (three IP:port addresses)");
            return ExitCode::from(2);
        }
    };
    let socket = match bind(listen) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("null_relay: bind {listen}: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "null_relay: {listen}: from {} to {pbx}, else to {trunk}",
        trunk.ip()
    );
    relay(&socket, &Route { trunk, pbx }, || true);
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Until `socket` receives a datagram (or 5 s pass).
    fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = socket.recv_from(&mut buf).expect("a forwarded datagram");
        (buf[..n].to_vec(), from)
    }

    /// Trunk -> PBX and PBX -> trunk, byte for byte, sent from the relay's
    /// own port; a burst larger than one batch arrives whole and in order.
    #[test]
    fn forwards_each_datagram_by_source_address() {
        // The trunk on 127.0.0.2 as in the load test, when the machine has
        // it (Linux routes all of 127/8 to loopback).
        let trunk = UdpSocket::bind("127.0.0.2:0")
            .or_else(|_| UdpSocket::bind("127.0.0.1:0"))
            .unwrap();
        let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let route = Route {
            trunk: trunk.local_addr().unwrap(),
            pbx: pbx.local_addr().unwrap(),
        };
        if route.trunk.ip() == route.pbx.ip() {
            eprintln!("no 127.0.0.2 here: the test cannot tell trunk from PBX");
            return;
        }
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let at = socket.local_addr().unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d2 = done.clone();
        let t = std::thread::spawn(move || {
            relay(&socket, &route, || {
                !d2.load(std::sync::atomic::Ordering::Relaxed)
            })
        });

        trunk.send_to(b"INVITE", at).unwrap();
        assert_eq!(recv(&pbx), (b"INVITE".to_vec(), at));
        pbx.send_to(b"SIP/2.0 200 OK", at).unwrap();
        assert_eq!(recv(&trunk), (b"SIP/2.0 200 OK".to_vec(), at));
        for i in 0..40 {
            trunk.send_to(format!("m{i}").as_bytes(), at).unwrap();
        }
        for i in 0..40 {
            assert_eq!(recv(&pbx).0, format!("m{i}").as_bytes());
        }

        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !t.is_finished() {
            assert!(Instant::now() < deadline, "the relay did not stop");
            std::thread::yield_now();
        }
        assert_eq!(t.join().unwrap(), 42);
    }
}
