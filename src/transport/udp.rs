//! UDP: one receive loop per listening socket. Datagrams are received
//! into a large shared arena and split off as `Bytes`, so a datagram costs
//! no allocation of its own. Sending uses the listening socket itself
//! (peers see our well-known port) with `try_send_to`: never waits.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;

use super::{Handler, Inbound, SendError, Sender, TransportKind};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Arena chunk; re-reserved when less than one datagram's room is left.
const ARENA: usize = 256 * 1024;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// The bound UDP sockets.
pub struct UdpSide {
    sockets: Vec<Arc<UdpSocket>>,
    metrics: Arc<Metrics>,
}

impl UdpSide {
    /// Binds every address (socket buffers raised to 4 MiB where allowed).
    pub async fn bind(addrs: &[SocketAddr], metrics: Arc<Metrics>) -> std::io::Result<UdpSide> {
        let mut sockets = Vec::new();
        for a in addrs {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(*a),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            let _ = s.set_recv_buffer_size(4 << 20);
            let _ = s.set_send_buffer_size(4 << 20);
            s.set_nonblocking(true)?;
            s.bind(&(*a).into())
                .map_err(|e| std::io::Error::new(e.kind(), format!("udp {a}: {e}")))?;
            sockets.push(Arc::new(UdpSocket::from_std(s.into())?));
        }
        Ok(UdpSide { sockets, metrics })
    }

    /// Actual bound addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// First bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.sockets.first().and_then(|s| s.local_addr().ok())
    }

    /// Sends from the first socket of `dest`'s address family.
    pub fn send(&self, dest: SocketAddr, data: Bytes) -> Result<(), SendError> {
        let sock = self
            .sockets
            .iter()
            .find(|s| s.local_addr().is_ok_and(|a| a.is_ipv4() == dest.is_ipv4()))
            .ok_or(SendError::NoSocket("udp"))?;
        match sock.try_send_to(&data, dest) {
            Ok(_) => Ok(()),
            Err(e) => Err(SendError::Udp(dest, e)),
        }
    }

    /// Receive loops, until shutdown.
    pub async fn run(
        self: Arc<Self>,
        handler: Arc<dyn Handler>,
        sender: Sender,
        shutdown: Shutdown,
    ) {
        let mut set = tokio::task::JoinSet::new();
        for sock in &self.sockets {
            let sock = sock.clone();
            let (handler, sender, mut sd) = (handler.clone(), sender.clone(), shutdown.clone());
            let metrics = self.metrics.clone();
            set.spawn(async move {
                let local = match sock.local_addr() {
                    Ok(a) => a,
                    Err(_) => return,
                };
                let mut arena = BytesMut::with_capacity(ARENA);
                loop {
                    if arena.capacity() - arena.len() < MAX_DATAGRAM {
                        arena = BytesMut::with_capacity(ARENA);
                    }
                    let res = tokio::select! {
                        _ = sd.wait() => return,
                        r = sock.recv_buf_from(&mut arena) => r,
                    };
                    match res {
                        Ok((n, remote)) => {
                            let data = arena.split_to(n).freeze();
                            if data.iter().all(|&b| b == b'\r' || b == b'\n' || b == 0) {
                                continue; // keep-alive
                            }
                            handler.on_message(
                                Inbound {
                                    transport: TransportKind::Udp,
                                    local,
                                    remote,
                                    data,
                                },
                                &sender,
                            );
                        }
                        Err(e) => {
                            // ICMP port unreachable from an earlier send and the like.
                            tracing::debug!(error = %e, "udp receive error");
                            metrics.sip_error("udp_receive");
                        }
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
    }
}
