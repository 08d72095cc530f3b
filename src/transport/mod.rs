//! Transports: bytes in, bytes out. They know nothing of SIP beyond TCP
//! framing (`crate::sip::framing`); every complete message is handed to the
//! core as an [`Inbound`] and the core answers through a [`Sender`].
//!
//! UDP listeners are read by dedicated threads in a blocking, batched
//! receive (the kernel wakes them directly, no runtime scheduling); TCP and
//! TLS (one stream implementation, `tcp.rs`) by async tasks.
//!
//! Sending never blocks the caller: UDP sends from the listening socket with
//! `MSG_DONTWAIT` (so peers see our well-known port), TCP pushes into a bounded
//! per-connection queue drained by that connection's writer task (a full
//! queue drops the message and counts it; SIP over UDP loses packets too,
//! and the sender retransmits).

pub mod batch;
pub mod panics;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

pub use crate::config::TransportKind;
use crate::sip::framing::FramingError;

/// One complete message as received.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Transport it arrived on.
    pub transport: TransportKind,
    /// Our address it arrived at.
    pub local: SocketAddr,
    /// The peer's address (the packet source, or the TCP peer).
    pub remote: SocketAddr,
    /// The message bytes (for UDP the whole datagram, for TCP one framed message).
    pub data: Bytes,
}

/// The SIP core, as the transports see it.
pub trait Handler: Send + Sync + 'static {
    /// A complete message. Must not block: it runs on the receive loop.
    fn on_message(&self, msg: Inbound, out: &Sender);

    /// Whether a stream from `remote` may be accepted or go on (false: a
    /// banned source; its connection is closed). Must be cheap: asked at
    /// accept and before every read.
    fn admit(&self, _remote: SocketAddr) -> bool {
        true
    }

    /// A TCP stream broke framing (message over the limit, garbage, bad
    /// Content-Length). `head` holds what was buffered of the offending
    /// message. The answer, if any, is written before the connection is closed.
    fn on_framing_error(
        &self,
        transport: TransportKind,
        local: SocketAddr,
        remote: SocketAddr,
        head: &[u8],
        err: &FramingError,
    ) -> Option<Bytes>;

    /// The server config for a TLS connection accepted from `remote`
    /// (its certificate, and whether a client certificate is required);
    /// `None` refuses the connection. Called once per connection.
    fn tls_accept(&self, _remote: SocketAddr) -> Option<Arc<rustls::ServerConfig>> {
        None
    }

    /// How to open TLS towards `dest` (roots, client certificate, server
    /// name); `None`: no TLS settings for it, the connection is not opened.
    fn tls_connect(&self, _dest: SocketAddr) -> Option<crate::tls::ClientTls> {
        None
    }

    /// `data` was queued for `dest` but no connection could be opened
    /// (refused, timed out, TLS handshake failed). Runs on a connection
    /// task; must not block.
    fn on_undeliverable(
        &self,
        _transport: TransportKind,
        _dest: SocketAddr,
        _data: Bytes,
        _out: &Sender,
    ) {
    }

    /// A destination refused what was sent to it: ICMP unreachable after
    /// a UDP send, or a TCP / TLS connection refused, timed out or (TLS)
    /// its handshake failed. Must not block.
    fn on_unreachable(&self, _transport: TransportKind, _dest: SocketAddr) {}
}

/// Hands `msg` to the handler, as every receive loop does. A panic in the
/// handler is caught here: counted in `sipscreen_panics_total{component}`,
/// logged with the peer (at most [`panics::PER_MINUTE`] a minute), and the
/// message dropped; the receive loop goes on
/// with the next message, so one bad message costs no other call. (The
/// profiles keep `panic = "unwind"`, which this needs.)
fn deliver(
    handler: &dyn Handler,
    msg: Inbound,
    out: &Sender,
    metrics: &crate::metrics::Metrics,
    component: &'static str,
) {
    let remote = msg.remote;
    let len = msg.data.len();
    // Unwind safety: the handler keeps no state that a half-handled
    // message leaves broken (counters, lock-free swaps, poison-tolerant
    // locks), and the message itself is dropped with the panic.
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| handler.on_message(msg, out))) {
        metrics.panic(component);
        if let Some(suppressed) = panics::caught() {
            tracing::error!(
                %remote,
                bytes = len,
                panic = panic_text(&*payload),
                not_reported_before = suppressed,
                "panic while handling a SIP message over {component}: message dropped, receiver goes on"
            );
        }
    }
}

/// The message a panic was raised with.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// Locks `m` even if a thread panicked while holding it. Every lock the
/// SIP path takes guards data that is whole between statements (a map
/// insert or remove), so a panic elsewhere must not turn into a
/// poisoned-lock panic on every later message.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a send did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no {0} listener to send from")]
    NoSocket(&'static str),
    #[error("udp send to {0} failed: {1}")]
    Udp(SocketAddr, #[source] std::io::Error),
    #[error("tcp queue to {0} is full")]
    QueueFull(SocketAddr),
    #[error("tcp connection limit reached")]
    TooManyConnections,
}

impl SendError {
    /// Label for the `sip_errors` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            SendError::NoSocket(_) => "send_no_socket",
            SendError::Udp(..) => "send_udp",
            SendError::QueueFull(_) => "send_queue_full",
            SendError::TooManyConnections => "send_tcp_limit",
        }
    }
}

/// Cheap-to-clone handle for sending from any task.
#[derive(Clone)]
pub struct Sender {
    pub(crate) udp: Arc<udp::UdpSide>,
    pub(crate) tcp: Arc<tcp::TcpSide>,
    pub(crate) tls: Arc<tcp::TcpSide>,
}

impl Sender {
    /// Sends `data` to `dest` over `transport`. Never blocks: TCP to a peer
    /// without a connection opens one in the background and queues `data`.
    pub fn send(
        &self,
        transport: TransportKind,
        dest: SocketAddr,
        data: Bytes,
    ) -> Result<(), SendError> {
        match transport {
            TransportKind::Udp => self.udp.send(dest, data),
            TransportKind::Tcp => self.tcp.send(dest, data),
            TransportKind::Tls => self.tls.send(dest, data),
        }
    }

    /// RFC 5923: requests towards `alias` may use the connection from
    /// `conn` (a stream transport; no-op for UDP or a closed connection).
    pub fn alias(&self, transport: TransportKind, conn: SocketAddr, alias: SocketAddr) {
        match transport {
            TransportKind::Udp => {}
            TransportKind::Tcp => self.tcp.alias(conn, alias),
            TransportKind::Tls => self.tls.alias(conn, alias),
        }
    }

    /// Our listening address for `transport` (first listener), for Via and
    /// Record-Route.
    pub fn local_addr(&self, transport: TransportKind) -> Option<SocketAddr> {
        match transport {
            TransportKind::Udp => self.udp.local_addr(),
            TransportKind::Tcp => self.tcp.local_addr(),
            TransportKind::Tls => self.tls.local_addr(),
        }
    }
}

/// The bound listeners of every transport.
pub struct Transports {
    udp: Arc<udp::UdpSide>,
    tcp: Arc<tcp::TcpSide>,
    tls: Arc<tcp::TcpSide>,
}

/// Binds every listener in `cfg` now (fail fast; the error names the address).
pub async fn bind(
    cfg: &crate::config::SipConfig,
    metrics: Arc<crate::metrics::Metrics>,
) -> std::io::Result<Transports> {
    let udp = udp::UdpSide::bind(&cfg.udp, cfg.udp_receivers, metrics.clone())?;
    let idle = std::time::Duration::from_secs(cfg.tcp_idle_timeout_secs.max(1));
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.max_tcp_connections.max(1)));
    let stream = |kind, addrs| {
        tcp::TcpSide::bind(
            kind,
            addrs,
            permits.clone(),
            cfg.max_message_bytes,
            idle,
            metrics.clone(),
        )
    };
    let tcp = stream(TransportKind::Tcp, &cfg.tcp).await?;
    let tls = stream(TransportKind::Tls, &cfg.tls).await?;
    Ok(Transports {
        udp: Arc::new(udp),
        tcp: Arc::new(tcp),
        tls: Arc::new(tls),
    })
}

impl Transports {
    /// A handle for sending; usable before `run`.
    pub fn sender(&self) -> Sender {
        Sender {
            udp: self.udp.clone(),
            tcp: self.tcp.clone(),
            tls: self.tls.clone(),
        }
    }

    /// Actual UDP listen addresses.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.addrs()
    }

    /// Actual TCP listen addresses.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp.addrs()
    }

    /// Actual TLS listen addresses.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls.addrs()
    }

    /// Receives until `shutdown` fires, handing every message to `handler`.
    pub async fn run(self, handler: Arc<dyn Handler>, shutdown: crate::shutdown::Shutdown) {
        let sender = self.sender();
        tokio::join!(
            self.udp
                .clone()
                .run(handler.clone(), sender.clone(), shutdown.clone()),
            self.tcp
                .clone()
                .run(handler.clone(), sender.clone(), shutdown.clone()),
            self.tls.clone().run(handler, sender, shutdown),
        );
    }
}

/// A running pair of transports around a handler that panics on demand,
/// for the transports' own tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::sync::mpsc;

    use super::{Handler, Inbound, Sender, TransportKind, tcp, udp};
    use crate::metrics::Metrics;
    use crate::sip::framing::FramingError;

    /// Panics on a message (or a broken stream's head) containing `PANIC`;
    /// reports every other message.
    struct Probe(mpsc::UnboundedSender<Bytes>);

    fn poisoned(b: &[u8]) -> bool {
        memchr::memmem::find(b, b"PANIC").is_some()
    }

    impl Handler for Probe {
        fn on_message(&self, msg: Inbound, _out: &Sender) {
            if poisoned(&msg.data) {
                panic!("injected panic on {:?}", msg.data);
            }
            let _ = self.0.send(msg.data);
        }

        fn on_framing_error(
            &self,
            _t: TransportKind,
            _local: SocketAddr,
            _remote: SocketAddr,
            head: &[u8],
            _err: &FramingError,
        ) -> Option<Bytes> {
            if poisoned(head) {
                panic!("injected panic on a framing error");
            }
            None
        }
    }

    pub(crate) struct Harness {
        pub metrics: Arc<Metrics>,
        pub udp: Option<SocketAddr>,
        pub tcp: Option<SocketAddr>,
        /// The transports' sending handle (and through it their state).
        pub sender: Sender,
        seen: mpsc::UnboundedReceiver<Bytes>,
        trigger: crate::shutdown::Trigger,
        run: tokio::task::JoinHandle<()>,
    }

    impl Harness {
        /// Listens on loopback (UDP and / or TCP) and runs the probe.
        pub async fn start(with_udp: bool, with_tcp: bool) -> Harness {
            let metrics = Arc::new(Metrics::new());
            let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let pick = |on: bool| if on { vec![lo] } else { vec![] };
            let udp = udp::UdpSide::bind(&pick(with_udp), 1, metrics.clone()).unwrap();
            let permits = Arc::new(tokio::sync::Semaphore::new(16));
            let stream = |kind, addrs: Vec<SocketAddr>| {
                let (permits, metrics) = (permits.clone(), metrics.clone());
                async move {
                    tcp::TcpSide::bind(
                        kind,
                        &addrs,
                        permits,
                        65536,
                        Duration::from_secs(60),
                        metrics,
                    )
                    .await
                    .unwrap()
                }
            };
            let tcp = stream(TransportKind::Tcp, pick(with_tcp)).await;
            let tls = stream(TransportKind::Tls, vec![]).await;
            let transports = super::Transports {
                udp: Arc::new(udp),
                tcp: Arc::new(tcp),
                tls: Arc::new(tls),
            };
            let (udp, tcp) = (
                transports.udp_addrs().first().copied(),
                transports.tcp_addrs().first().copied(),
            );
            let sender = transports.sender();
            let (tx, seen) = mpsc::unbounded_channel();
            let (trigger, shutdown) = crate::shutdown::channel();
            let run = tokio::spawn(transports.run(Arc::new(Probe(tx)), shutdown));
            Harness {
                metrics,
                udp,
                tcp,
                sender,
                seen,
                trigger,
                run,
            }
        }

        /// Waits for the probe to report a message ending in `tail`.
        pub async fn handled(&mut self, tail: &str) {
            let got = tokio::time::timeout(Duration::from_secs(10), self.seen.recv())
                .await
                .unwrap_or_else(|_| panic!("{tail:?} was not handled"))
                .expect("transports alive");
            assert!(
                got.ends_with(tail.as_bytes()),
                "handled {:?}, not {tail:?}",
                String::from_utf8_lossy(&got)
            );
        }

        /// Whether /metrics has this exact line.
        pub fn exposes(&self, line: &str) -> bool {
            self.metrics.encode().lines().any(|l| l == line)
        }

        /// Fires shutdown; the transports must stop within `within`.
        pub async fn stop(self, within: Duration) {
            self.trigger.fire();
            tokio::time::timeout(within, self.run)
                .await
                .expect("transports stop on shutdown")
                .unwrap();
        }
    }
}
