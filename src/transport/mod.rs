//! Transports: bytes in, bytes out. They know nothing of SIP beyond TCP
//! framing (`crate::sip::framing`); every complete message is handed to the
//! core as an [`Inbound`] and the core answers through a [`Sender`].
//!
//! UDP listeners are read by dedicated threads in a blocking, batched
//! receive (the kernel wakes them directly, no runtime scheduling); TCP by
//! async tasks.
//!
//! Sending never blocks the caller: UDP sends from the listening socket with
//! `MSG_DONTWAIT` (so peers see our well-known port), TCP pushes into a bounded
//! per-connection queue drained by that connection's writer task (a full
//! queue drops the message and counts it; SIP over UDP loses packets too,
//! and the sender retransmits).

mod batch;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

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
        }
    }

    /// Our listening address for `transport` (first listener), for Via and
    /// Record-Route.
    pub fn local_addr(&self, transport: TransportKind) -> Option<SocketAddr> {
        match transport {
            TransportKind::Udp => self.udp.local_addr(),
            TransportKind::Tcp => self.tcp.local_addr(),
        }
    }
}

/// The bound listeners of both transports.
pub struct Transports {
    udp: Arc<udp::UdpSide>,
    tcp: Arc<tcp::TcpSide>,
}

/// Binds every listener in `cfg` now (fail fast; the error names the address).
pub async fn bind(
    cfg: &crate::config::SipConfig,
    metrics: Arc<crate::metrics::Metrics>,
) -> std::io::Result<Transports> {
    let udp = udp::UdpSide::bind(&cfg.udp, cfg.udp_receivers, metrics.clone())?;
    let idle = std::time::Duration::from_secs(cfg.tcp_idle_timeout_secs.max(1));
    let tcp = tcp::TcpSide::bind(
        &cfg.tcp,
        cfg.max_tcp_connections,
        cfg.max_message_bytes,
        idle,
        metrics,
    )
    .await?;
    Ok(Transports {
        udp: Arc::new(udp),
        tcp: Arc::new(tcp),
    })
}

impl Transports {
    /// A handle for sending; usable before `run`.
    pub fn sender(&self) -> Sender {
        Sender {
            udp: self.udp.clone(),
            tcp: self.tcp.clone(),
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

    /// Receives until `shutdown` fires, handing every message to `handler`.
    pub async fn run(self, handler: Arc<dyn Handler>, shutdown: crate::shutdown::Shutdown) {
        let sender = self.sender();
        tokio::join!(
            self.udp
                .clone()
                .run(handler.clone(), sender.clone(), shutdown.clone()),
            self.tcp.clone().run(handler, sender, shutdown),
        );
    }
}
