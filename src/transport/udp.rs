//! UDP: each listening socket is read by its own OS thread(s) in a
//! blocking receive (batched: [`super::batch`]), as Kamailio's UDP
//! receivers read theirs, not by an async task. An async receive costs an
//! epoll round and a wake-up of a runtime worker per datagram (measured:
//! over a third of the CPU per call went to the scheduler); a parked
//! receiver is woken once, directly by the kernel. `on_message` never
//! blocks, so nothing else queues behind it. A panic in it is caught per
//! datagram ([`super::deliver`]): that datagram is dropped, counted and
//! logged, and the receiver goes on with the next one.
//!
//! Datagrams are copied into a large shared arena and split off as
//! `Bytes`, so a datagram costs no allocation of its own. Sending uses the
//! listening socket itself (peers see our well-known port) with
//! `MSG_DONTWAIT`: a full send buffer drops the datagram (counted), never
//! waits.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::batch::Batch;
use super::{Handler, Inbound, SendError, Sender, TransportKind, deliver};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Arena chunk; a fresh one is taken when a datagram does not fit.
const ARENA: usize = 256 * 1024;
/// How often a receiver parked in a receive looks at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);

/// One bound socket and its address (read once: `getsockname` per send
/// would be a system call per message).
struct Bound {
    socket: UdpSocket,
    addr: SocketAddr,
}

/// The bound UDP sockets.
pub struct UdpSide {
    sockets: Vec<Arc<Bound>>,
    /// Told of destinations that refused (set once `run` starts).
    handler: std::sync::OnceLock<Arc<dyn Handler>>,
    receivers: usize,
    metrics: Arc<Metrics>,
}

impl UdpSide {
    /// Binds every address (socket buffers raised to 4 MiB where allowed).
    /// `receivers`: threads reading each socket (at least one).
    pub fn bind(
        addrs: &[SocketAddr],
        receivers: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<UdpSide> {
        let mut sockets = Vec::new();
        for a in addrs {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(*a),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            let _ = s.set_recv_buffer_size(4 << 20);
            let _ = s.set_send_buffer_size(4 << 20);
            s.bind(&(*a).into())
                .map_err(|e| std::io::Error::new(e.kind(), format!("udp {a}: {e}")))?;
            s.set_read_timeout(Some(SHUTDOWN_POLL))?;
            let socket: UdpSocket = s.into();
            #[cfg(target_os = "linux")]
            if let Err(e) = super::batch::set_recverr(&socket, a.is_ipv6()) {
                tracing::warn!(addr = %a, error = %e, "IP_RECVERR refused: ICMP unreachable will not blocklist targets");
            }
            let addr = socket.local_addr()?;
            sockets.push(Arc::new(Bound { socket, addr }));
        }
        Ok(UdpSide {
            sockets,
            handler: std::sync::OnceLock::new(),
            receivers: receivers.max(1),
            metrics,
        })
    }

    /// Actual bound addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|s| s.addr).collect()
    }

    /// First bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.sockets.first().map(|s| s.addr)
    }

    /// Sends from the first socket of `dest`'s address family; never waits.
    pub fn send(&self, dest: SocketAddr, data: Bytes) -> Result<(), SendError> {
        let b = self
            .sockets
            .iter()
            .find(|s| s.addr.is_ipv4() == dest.is_ipv4())
            .ok_or(SendError::NoSocket("udp"))?;
        let send = || {
            socket2::SockRef::from(&b.socket)
                .send_to_with_flags(&data, &dest.into(), libc::MSG_DONTWAIT)
                .map(|_| ())
        };
        match send() {
            // An ICMP error of an earlier send (to anyone: unreachable,
            // fragmentation needed) is reported by the next call on the
            // socket. When the error queue says so, read who it was and
            // send this one again.
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && drain_errors(b, self.handler.get().map(|h| &**h)) > 0 =>
            {
                send().map_err(|e| SendError::Udp(dest, e))
            }
            r => r.map_err(|e| SendError::Udp(dest, e)),
        }
    }

    /// Receive threads, until shutdown. `on_message` runs on them with
    /// this runtime entered (a TCP send may spawn a connect task).
    pub async fn run(
        self: Arc<Self>,
        handler: Arc<dyn Handler>,
        sender: Sender,
        shutdown: Shutdown,
    ) {
        let _ = self.handler.set(handler.clone());
        let rt = tokio::runtime::Handle::current();
        let mut threads = Vec::new();
        for b in &self.sockets {
            for i in 0..self.receivers {
                let (bound, handler, sender) = (b.clone(), handler.clone(), sender.clone());
                let (metrics, sd, rt) = (self.metrics.clone(), shutdown.clone(), rt.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("sip-udp-{i}"))
                    .spawn(move || {
                        let _entered = rt.enter();
                        receive(&bound, &*handler, &sender, &metrics, &sd)
                    });
                match spawned {
                    Ok(t) => threads.push(t),
                    Err(e) => {
                        tracing::error!(addr = %b.addr, error = %e, "cannot start a UDP receiver")
                    }
                }
            }
        }
        let mut sd = shutdown;
        sd.wait().await;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Reads the socket's queued send errors (`IP_RECVERR`) and tells the
/// handler which destinations refused (port / host / network
/// unreachable; a "fragmentation needed" is not a refusal). How many it
/// read.
fn drain_errors(bound: &Bound, handler: Option<&dyn Handler>) -> usize {
    let mut read = 0;
    #[cfg(target_os = "linux")]
    for _ in 0..64 {
        match super::batch::recv_error(&bound.socket) {
            Ok(Some((dest, errno))) => {
                read += 1;
                tracing::debug!(%dest, errno, "udp send error reported");
                if matches!(
                    errno,
                    libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH
                ) && let Some(h) = handler
                {
                    h.on_unreachable(TransportKind::Udp, dest);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (bound, handler);
    read
}

/// One receiver: a blocking batched receive, each datagram copied into
/// the arena (a memcpy of its length: far cheaper than the system call a
/// batch saves) and handed to the handler.
fn receive(
    bound: &Bound,
    handler: &dyn Handler,
    sender: &Sender,
    metrics: &Metrics,
    sd: &Shutdown,
) {
    let mut batch = Batch::new();
    let mut arena = BytesMut::with_capacity(ARENA);
    while !sd.is_fired() {
        match batch.recv(&bound.socket) {
            Ok(n) => {
                for i in 0..n {
                    let (d, remote) = batch.get(i);
                    let Some(remote) = remote else { continue };
                    if d.iter().all(|&b| b == b'\r' || b == b'\n' || b == 0) {
                        continue; // keep-alive
                    }
                    if arena.capacity() - arena.len() < d.len() {
                        arena = BytesMut::with_capacity(ARENA.max(d.len()));
                    }
                    arena.extend_from_slice(d);
                    let data = arena.split_to(d.len()).freeze();
                    deliver(
                        handler,
                        Inbound {
                            transport: TransportKind::Udp,
                            local: bound.addr,
                            remote,
                            data,
                        },
                        sender,
                        metrics,
                        "udp",
                    );
                }
            }
            Err(e) if super::batch::nothing_received(&e) => {}
            // An ICMP error of an earlier send: queued (IP_RECVERR) and
            // read here.
            Err(_) if drain_errors(bound, Some(handler)) > 0 => {}
            Err(e) => {
                tracing::debug!(error = %e, "udp receive error");
                metrics.sip_error("udp_receive");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Harness;
    use std::time::Duration;

    /// A datagram whose handling panics is dropped, counted and logged;
    /// the receiver thread goes on with the next ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_the_handler_is_counted_and_the_receiver_goes_on() {
        let mut h = Harness::start(true, false).await;
        assert!(h.exposes("sipscreen_panics_total{component=\"udp\"} 0"));
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = h.udp.unwrap();
        for d in ["PANIC one", "after one", "PANIC two", "after two"] {
            client.send_to(d.as_bytes(), to).unwrap();
        }
        h.handled("after one").await;
        h.handled("after two").await;
        assert!(h.exposes("sipscreen_panics_total{component=\"udp\"} 2"));
        assert!(h.exposes("sipscreen_panics_total{component=\"tcp\"} 0"));
        h.stop(Duration::from_secs(10)).await;
    }
}
