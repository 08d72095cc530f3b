//! Stream transports, TCP and TLS, in one implementation generic over the
//! stream: TLS is a TCP connection with a rustls handshake first and a
//! stream wrapper after it; framing, the connection table, queues,
//! keep-alives and limits are the same code.
//!
//! Accepted and opened connections share one table keyed by the peer's
//! address (plus the RFC 5923 aliases its requests announced); a response
//! to a request that came over a connection goes back on that connection.
//! Each connection has a reader (framing + handler) and a writer draining a
//! bounded queue, so `send` never waits. A framing error closes only its
//! own connection, after writing the handler's answer. A semaphore (shared
//! by TCP and TLS) caps connections. A connection that cannot be opened
//! (refused, timed out, TLS handshake failed) hands every message queued
//! for it back to the handler ([`Handler::on_undeliverable`]).
//!
//! A panic while handling one message is caught ([`super::deliver`]) and
//! the connection goes on; one in the framing of a stream closes that
//! connection only (caught around the decode step, counted like the first).
//! Either way the accept loops and every other connection carry on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{Handler, Inbound, SendError, Sender, TransportKind, deliver, lock, panic_text};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::sip::framing::{Decoder, Frame};

/// Messages queued per connection before `send` reports it full.
const QUEUE: usize = 256;
/// How long opening a connection (and its TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection just opened: plain, or TLS after its handshake; with our
/// local address.
enum Stream {
    Plain(TcpStream, SocketAddr),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>, SocketAddr),
}

/// What connection tasks need, set once `run` starts.
struct Ctx {
    handler: Arc<dyn Handler>,
    sender: Sender,
    shutdown: Shutdown,
}

/// The listeners and connection table of one stream transport.
pub struct TcpSide {
    /// `Tcp` or `Tls`.
    kind: TransportKind,
    listeners: Mutex<Vec<TcpListener>>,
    addrs: Vec<SocketAddr>,
    conns: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
    permits: Arc<Semaphore>,
    max_message: usize,
    idle: Duration,
    metrics: Arc<Metrics>,
    ctx: OnceLock<Ctx>,
}

impl TcpSide {
    /// Binds every address for `kind` (`Tcp` or `Tls`); `permits` is
    /// the connection limit shared with the other stream transport.
    pub async fn bind(
        kind: TransportKind,
        addrs: &[SocketAddr],
        permits: Arc<Semaphore>,
        max_message: usize,
        idle: Duration,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<TcpSide> {
        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        for a in addrs {
            let l = TcpListener::bind(a).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("{} {a}: {e}", kind.as_str()))
            })?;
            bound.push(l.local_addr()?);
            listeners.push(l);
        }
        Ok(TcpSide {
            kind,
            listeners: Mutex::new(listeners),
            addrs: bound,
            conns: Mutex::new(HashMap::new()),
            permits,
            max_message,
            idle,
            metrics,
            ctx: OnceLock::new(),
        })
    }

    /// Actual bound addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// First bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addrs.first().copied()
    }

    /// Queues `data` on the connection to `dest`, opening one if needed.
    pub fn send(self: &Arc<Self>, dest: SocketAddr, data: Bytes) -> Result<(), SendError> {
        let mut conns = lock(&self.conns);
        if let Some(tx) = conns.get(&dest) {
            match tx.try_send(data) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(SendError::QueueFull(dest)),
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    conns.remove(&dest);
                    return self.open(&mut conns, dest, d);
                }
            }
        }
        self.open(&mut conns, dest, data)
    }

    fn open(
        self: &Arc<Self>,
        conns: &mut HashMap<SocketAddr, mpsc::Sender<Bytes>>,
        dest: SocketAddr,
        data: Bytes,
    ) -> Result<(), SendError> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| SendError::TooManyConnections)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx.try_send(data);
        conns.insert(dest, tx.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let opened = tokio::time::timeout(CONNECT_TIMEOUT, me.connect(dest)).await;
            match opened {
                Ok(Ok(opened)) => match opened {
                    Stream::Plain(s, local) => me.serve(s, local, dest, tx, rx, permit).await,
                    Stream::Tls(s, local) => me.serve(*s, local, dest, tx, rx, permit).await,
                },
                Ok(Err(e)) => me.unreachable(dest, &e.to_string(), tx, rx),
                Err(_) => {
                    if me.kind == TransportKind::Tls {
                        me.metrics.tls_handshake(false, "timeout");
                    }
                    me.unreachable(dest, "timed out", tx, rx);
                }
            }
        });
        Ok(())
    }

    /// Opens a connection to `dest` (and for TLS, handshakes).
    async fn connect(&self, dest: SocketAddr) -> std::io::Result<Stream> {
        let tcp = TcpStream::connect(dest).await?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr()?;
        if self.kind != TransportKind::Tls {
            return Ok(Stream::Plain(tcp, local));
        }
        let ctx = self
            .ctx
            .get()
            .ok_or_else(|| std::io::Error::other("not running"))?;
        let Some(tls) = ctx.handler.tls_connect(dest) else {
            self.metrics.tls_handshake(false, "no_config");
            self.metrics.sip_error("send_no_tls");
            return Err(std::io::Error::other("no TLS settings for this peer"));
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config);
        match connector.connect(tls.server_name, tcp).await {
            Ok(s) => {
                self.metrics.tls_handshake(false, "ok");
                Ok(Stream::Tls(
                    Box::new(tokio_rustls::TlsStream::Client(s)),
                    local,
                ))
            }
            Err(e) => {
                self.metrics
                    .tls_handshake(false, crate::tls::failure_reason(&e));
                self.metrics.sip_error("tls_handshake");
                Err(std::io::Error::new(e.kind(), format!("TLS handshake: {e}")))
            }
        }
    }

    /// A connection to `dest` could not be opened: forget it and hand
    /// what was queued for it back to the handler.
    fn unreachable(
        &self,
        dest: SocketAddr,
        why: &str,
        tx: mpsc::Sender<Bytes>,
        mut rx: mpsc::Receiver<Bytes>,
    ) {
        let kind = self.kind.as_str();
        tracing::warn!(%dest, error = why, "{kind} connection could not be opened");
        self.metrics.sip_error("tcp_connect");
        self.forget(dest, &tx);
        drop(tx);
        rx.close();
        let Some(ctx) = self.ctx.get() else { return };
        // Blocklisted first: the 503 below makes the caller try again.
        ctx.handler.on_unreachable(self.kind, dest);
        while let Ok(data) = rx.try_recv() {
            ctx.handler
                .on_undeliverable(self.kind, dest, data, &ctx.sender);
        }
    }

    /// Also reaches the connection from `conn` under `alias` (RFC 5923:
    /// the peer's Via announced it for requests towards its sent-by).
    pub fn alias(&self, conn: SocketAddr, alias: SocketAddr) {
        let mut conns = lock(&self.conns);
        if let Some(tx) = conns.get(&conn).cloned() {
            conns.entry(alias).or_insert(tx);
        }
    }

    /// Removes `dest`'s entry (and the aliases) if still this connection's.
    fn forget(&self, dest: SocketAddr, tx: &mpsc::Sender<Bytes>) {
        let mut conns = lock(&self.conns);
        if conns.get(&dest).is_some_and(|t| t.same_channel(tx)) {
            conns.remove(&dest);
        }
        conns.retain(|_, t| !t.same_channel(tx));
    }

    /// Accept loops, until shutdown.
    pub async fn run(
        self: Arc<Self>,
        handler: Arc<dyn Handler>,
        sender: Sender,
        shutdown: Shutdown,
    ) {
        let _ = self.ctx.set(Ctx {
            handler,
            sender,
            shutdown: shutdown.clone(),
        });
        let listeners = std::mem::take(&mut *lock(&self.listeners));
        let mut set = tokio::task::JoinSet::new();
        for l in listeners {
            let me = self.clone();
            let mut sd = shutdown.clone();
            set.spawn(async move {
                loop {
                    let (stream, remote) = tokio::select! {
                        _ = sd.wait() => return,
                        r = l.accept() => match r {
                            Ok(x) => x,
                            Err(e) => {
                                tracing::warn!(error = %e, "{} accept failed", me.kind.as_str());
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                    };
                    if me.ctx.get().is_some_and(|c| !c.handler.admit(remote)) {
                        tracing::debug!(%remote, "{} connection from a banned source refused", me.kind.as_str());
                        drop(stream);
                        continue;
                    }
                    let Ok(permit) = me.permits.clone().try_acquire_owned() else {
                        me.metrics.sip_error("tcp_limit");
                        drop(stream);
                        continue;
                    };
                    let me2 = me.clone();
                    tokio::spawn(async move { me2.accepted(stream, remote, permit).await });
                }
            });
        }
        while let Some(done) = set.join_next().await {
            // The loop body takes no lock that can poison and calls no
            // handler; should it panic all the same, say so.
            if let Err(e) = done {
                if e.is_panic() {
                    self.metrics.panic(self.kind.as_str());
                }
                tracing::error!(error = %e, "a {} accept loop ended", self.kind.as_str());
            }
        }
    }

    /// An accepted connection: for TLS the handshake first (bounded by
    /// the connect timeout), with the server config the handler picks for
    /// the peer; then it is entered in the table and served.
    async fn accepted(
        self: Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(remote);
        let (tx, rx) = mpsc::channel(QUEUE);
        if self.kind != TransportKind::Tls {
            lock(&self.conns).insert(remote, tx.clone());
            return self.serve(stream, local, remote, tx, rx, permit).await;
        }
        let Some(ctx) = self.ctx.get() else { return };
        let Some(config) = ctx.handler.tls_accept(remote) else {
            self.metrics.tls_handshake(true, "refused");
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let reason = match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => {
                self.metrics.tls_handshake(true, "ok");
                lock(&self.conns).insert(remote, tx.clone());
                let s = tokio_rustls::TlsStream::Server(s);
                return self.serve(s, local, remote, tx, rx, permit).await;
            }
            Ok(Err(e)) => {
                tracing::info!(%remote, error = %e, "TLS handshake from a client failed");
                crate::tls::failure_reason(&e)
            }
            Err(_) => "timeout",
        };
        self.metrics.tls_handshake(true, reason);
        self.metrics.sip_error("tls_handshake");
    }

    /// Runs one connection until it closes, errs, idles out or shutdown.
    async fn serve<S>(
        self: Arc<Self>,
        stream: S,
        local: SocketAddr,
        remote: SocketAddr,
        tx: mpsc::Sender<Bytes>,
        mut rx: mpsc::Receiver<Bytes>,
        _permit: OwnedSemaphorePermit,
    ) where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Some(ctx) = self.ctx.get() else { return };
        let gauge = self.metrics.connections(self.kind);
        gauge.inc();
        let (mut rd, mut wr) = tokio::io::split(stream);
        let writer = tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let mut decoder = Decoder::new(self.max_message);
        let mut buf = BytesMut::with_capacity(8192);
        let mut sd = ctx.shutdown.clone();
        loop {
            let drained = catch_unwind(AssertUnwindSafe(|| {
                self.drain(ctx, &mut decoder, &mut buf, &tx, local, remote)
            }));
            match drained {
                Ok(true) => {}
                Ok(false) => break,
                Err(payload) => {
                    // The stream's framing state is unknown now: close it.
                    self.metrics.panic(self.kind.as_str());
                    if let Some(suppressed) = super::panics::caught() {
                        tracing::error!(
                            %remote,
                            panic = panic_text(&*payload),
                            not_reported_before = suppressed,
                            "panic while framing a {} stream: connection closed, listener goes on",
                            self.kind.as_str()
                        );
                    }
                    break;
                }
            }
            if !ctx.handler.admit(remote) {
                tracing::debug!(%remote, "{} connection from a banned source closed", self.kind.as_str());
                break;
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(8192);
            }
            let read = tokio::select! {
                _ = sd.wait() => break,
                r = tokio::time::timeout(self.idle, rd.read_buf(&mut buf)) => r,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => {
                    tracing::debug!(%remote, "{} connection idle, closing", self.kind.as_str());
                    break;
                }
            }
        }
        self.forget(remote, &tx);
        drop(tx);
        // The writer flushes what is queued (e.g. a 513) and closes; a peer
        // that stopped reading does not keep the task alive.
        let abort = writer.abort_handle();
        if tokio::time::timeout(CONNECT_TIMEOUT, writer).await.is_err() {
            abort.abort();
        }
        gauge.dec();
    }

    /// Hands every complete message in `buf` to the handler and answers
    /// pings. `false`: a framing error, the connection is to be closed
    /// (after the handler's answer, queued here).
    fn drain(
        &self,
        ctx: &Ctx,
        decoder: &mut Decoder,
        buf: &mut BytesMut,
        tx: &mpsc::Sender<Bytes>,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> bool {
        loop {
            match decoder.decode(buf) {
                Ok(Some(Frame::Message(data))) => deliver(
                    &*ctx.handler,
                    Inbound {
                        transport: self.kind,
                        local,
                        remote,
                        data,
                    },
                    &ctx.sender,
                    &self.metrics,
                    self.kind.as_str(),
                ),
                Ok(Some(Frame::Ping)) => {
                    let _ = tx.try_send(Bytes::from_static(b"\r\n"));
                }
                Ok(Some(Frame::Pong)) => {}
                Ok(None) => return true,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "{} framing error, closing", self.kind.as_str());
                    self.metrics.sip_error(e.reason());
                    if let Some(answer) = ctx
                        .handler
                        .on_framing_error(self.kind, local, remote, buf, &e)
                    {
                        let _ = tx.try_send(answer);
                    }
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Harness;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn msg(body: &str) -> String {
        format!(
            "OPTIONS sip:x@y SIP/2.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// A panic handling a message costs that message; one while framing a
    /// stream costs that connection. Both are counted, and the listener and
    /// every other connection go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn panics_cost_a_message_or_a_connection_never_the_listener() {
        let mut h = Harness::start(false, true).await;
        let addr = h.tcp.unwrap();
        assert!(h.exposes("sipscreen_panics_total{component=\"tcp\"} 0"));

        let mut a = TcpStream::connect(addr).await.unwrap();
        a.write_all((msg("PANIC 1") + &msg("after 1")).as_bytes())
            .await
            .unwrap();
        h.handled("after 1").await;
        assert!(h.exposes("sipscreen_panics_total{component=\"tcp\"} 1"));

        // Garbage whose framing error handler panics: that connection is
        // closed.
        let mut b = TcpStream::connect(addr).await.unwrap();
        b.write_all(b"PANIC garbage\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), b.read(&mut buf))
            .await
            .expect("the broken connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(h.exposes("sipscreen_panics_total{component=\"tcp\"} 2"));

        a.write_all(msg("after 2").as_bytes()).await.unwrap();
        h.handled("after 2").await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(msg("after 3").as_bytes()).await.unwrap();
        h.handled("after 3").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !h.exposes("sipscreen_tcp_connections 2") {
            assert!(Instant::now() < deadline, "{}", h.metrics.encode());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        h.stop(Duration::from_secs(10)).await;
    }

    /// A thread that panicked holding the connection table leaves it
    /// usable: connections are still accepted and opened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poisoned_connection_table_still_works() {
        let mut h = Harness::start(false, true).await;
        let side = h.sender.tcp.clone();
        let _ = std::thread::spawn(move || {
            let _held = side.conns.lock();
            panic!("poisoning the connection table");
        })
        .join();
        assert!(h.sender.tcp.conns.is_poisoned());

        let mut a = TcpStream::connect(h.tcp.unwrap()).await.unwrap();
        a.write_all(msg("accepted").as_bytes()).await.unwrap();
        h.handled("accepted").await;

        let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        h.sender
            .send(
                crate::config::TransportKind::Tcp,
                peer.local_addr().unwrap(),
                bytes::Bytes::from_static(b"opened"),
            )
            .unwrap();
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(10), peer.accept())
            .await
            .expect("a connection is opened")
            .unwrap();
        let mut got = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
            .await
            .expect("the message arrives")
            .unwrap();
        assert_eq!(&got, b"opened");
        h.stop(Duration::from_secs(10)).await;
    }
}
