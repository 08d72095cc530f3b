//! The stateless screening proxy: the transports hand it every message,
//! it decides (forward, answer, drop) and sends. It keeps no per-call
//! state; everything it needs is in the message and the current
//! `Runtime`, read lock-free through an `ArcSwap`.
//!
//! - `request`: refusals, next hop, screening, the forwarded request.
//! - `response`: Via-based return path.
//! - `reply`: local answers (400, 403, 483, ...).
//! - `ident`: our address, branch / tag / call-id derivation.
//! - `ping`: OPTIONS pings to the targets, and recognising their answers.

pub mod ident;
pub mod ping;
pub mod reply;
pub mod request;
pub mod response;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::calls::{CallEvents, NewCall, RequestKind, SipEvent};
use crate::config::TransportKind;
use crate::flood::{Admit, FloodGuard};
use crate::metrics::Metrics;
use crate::runtime::{Runtime, Side};
use crate::sip::framing::FramingError;
use crate::sip::{Message, Method};
use crate::transport::{Handler, Inbound, Sender};
pub use ident::Local;
use request::{Outcome, Screened};

/// Most 403s sent to unknown sources per second; beyond it they are
/// dropped (a flood gets no amplification).
const FORBIDDEN_PER_SECOND: u64 = 50;

/// The proxy core.
pub struct Proxy {
    /// The current config generation.
    runtime: ArcSwap<Runtime>,
    /// Our address and identifier keys.
    local: Local,
    /// Counters.
    metrics: Arc<Metrics>,
    /// Where call events go (set once at start when tracking is on).
    calls: std::sync::OnceLock<CallEvents>,
    /// Reply budget for unknown sources: (second << 32) | count.
    forbidden: AtomicU64,
    /// Process start, the clock for the reply budget.
    epoch: Instant,
    /// Per-source counters and bans (kept across reloads).
    flood: FloodGuard,
}

impl Proxy {
    pub fn new(runtime: Runtime, local: Local, metrics: Arc<Metrics>) -> Proxy {
        let metrics_for_flood = metrics.clone();
        Proxy {
            runtime: ArcSwap::from_pointee(runtime),
            local,
            metrics,
            calls: std::sync::OnceLock::new(),
            forbidden: AtomicU64::new(0),
            epoch: Instant::now(),
            flood: FloodGuard::new(metrics_for_flood, crate::clock::Clock::system()),
        }
    }

    /// Flood protection: counters and bans.
    pub fn flood(&self) -> &FloodGuard {
        &self.flood
    }

    /// The generation in use.
    pub fn runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    /// Starts reporting forwarded dialog messages to the call tracker.
    pub fn track_calls(&self, events: CallEvents) {
        let _ = self.calls.set(events);
    }

    /// The generation in use, as an owned handle (for blocking work).
    pub fn runtime_arc(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Swaps in a new generation; calls in flight finish on the old one.
    pub fn swap(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    /// Our identity on the wire.
    pub fn local(&self) -> &Local {
        &self.local
    }

    /// Whether a 403 may still be sent this second.
    fn forbidden_allowed(&self) -> bool {
        let now = self.epoch.elapsed().as_secs();
        let cur = self.forbidden.load(Ordering::Relaxed);
        let next = if cur >> 32 == now {
            cur + 1
        } else {
            (now << 32) | 1
        };
        self.forbidden.store(next, Ordering::Relaxed);
        next & 0xffff_ffff <= FORBIDDEN_PER_SECOND
    }

    /// Answers request `msg` itself with `code` (counted under `reason`;
    /// `extra`: header lines to add); whether the answer was sent (never to
    /// an ACK, nor to unknown sources beyond the reply budget).
    fn answer(
        &self,
        msg: &Message,
        side: Side,
        (transport, remote): (TransportKind, SocketAddr),
        out: &Sender,
        (code, reason): (u16, &'static str),
        extra: Option<&[u8]>,
    ) -> bool {
        self.metrics.sip_error(reason);
        let refuse = msg.method() == Some(Method::Ack)
            || (side == Side::Unknown && !self.forbidden_allowed());
        if refuse {
            return false;
        }
        tracing::debug!(%remote, code, reason, "request refused");
        let data = reply::build(msg, code, remote, &self.local, extra.unwrap_or(b""));
        self.send(out, transport, remote, data)
    }

    fn send(&self, out: &Sender, transport: TransportKind, dest: SocketAddr, data: Bytes) -> bool {
        match out.send(transport, dest, data) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(%dest, error = %e, "send failed");
                self.metrics.sip_error(e.reason());
                false
            }
        }
    }
}

/// Reports a forwarded message to the call tracker: screened INVITEs,
/// BYE / CANCEL / REFER, and responses to INVITEs (180 and up). The
/// Call-ID travels as a slice of the received bytes; never blocks.
fn report(
    calls: &CallEvents,
    msg: &Message,
    method: Option<Method>,
    side: Side,
    screened: Option<&Screened<'_>>,
) {
    let at = std::time::SystemTime::now();
    let sip_call_id = || msg.buf().slice_ref(msg.call_id());
    if let Some(s) = screened {
        calls.send(SipEvent::Invite {
            sip_call_id: sip_call_id(),
            call: Box::new(new_call(s)),
            at,
        });
        return;
    }
    let kind = match method {
        Some(Method::Bye) => RequestKind::Bye,
        Some(Method::Cancel) => RequestKind::Cancel,
        Some(Method::Refer) => RequestKind::Refer,
        // A re-INVITE / UPDATE from the PBX naming a new connected party
        // (RFC 4916 style, P-Asserted-Identity): a transfer done by
        // re-INVITE.
        Some(Method::Invite | Method::Update) if side == Side::Pbx => {
            let Some(user) = msg
                .name_addr(crate::sip::HeaderName::PAssertedIdentity)
                .and_then(|na| crate::sip::values::Uri::parse(na.uri).ok())
                .and_then(|u| u.user)
            else {
                return;
            };
            calls.send(SipEvent::Request {
                sip_call_id: sip_call_id(),
                kind: RequestKind::Reinvite,
                refer_to: Some(String::from_utf8_lossy(user).into_owned()),
                at,
            });
            return;
        }
        Some(_) => return,
        None => {
            let Some(code) = msg.status().filter(|&c| c >= 180) else {
                return;
            };
            if msg.cseq().is_none_or(|(_, m)| m != b"INVITE") {
                return;
            }
            calls.send(SipEvent::InviteResponse {
                sip_call_id: sip_call_id(),
                code,
                at,
            });
            return;
        }
    };
    let refer_to = (kind == RequestKind::Refer)
        .then(|| refer_target(msg))
        .flatten();
    calls.send(SipEvent::Request {
        sip_call_id: sip_call_id(),
        kind,
        refer_to,
        at,
    });
}

/// What the tracker keeps of a screened INVITE.
fn new_call(s: &Screened<'_>) -> NewCall {
    let sc = &s.decision.screening;
    NewCall {
        call_id: String::from_utf8_lossy(&s.call_id).into_owned(),
        direction: sc.direction,
        verdict: sc.verdict,
        client: sc.client,
        line: sc.line,
        create: sc.create(),
        source: sc.settings.source.clone(),
        reason: sc.reason,
        attest: sc.attest,
        responsible: s.decision.responsible().map(str::to_string),
        change_responsible_on_transfer: sc.settings.change_responsible_on_transfer,
        update_directory_on_transfer: sc.settings.update_directory_on_transfer,
        offer: sc.settings.create == crate::config::CreateMode::Offer,
    }
}

/// RFC 5923: a request whose top Via carries `alias` lets requests
/// towards its sent-by reuse the connection it came on. Honoured only when
/// the sent-by is the connection's own IP (a peer cannot claim another
/// address); only configured peers get here.
fn connection_alias(msg: &Message, transport: TransportKind, remote: SocketAddr, out: &Sender) {
    let Some(via) = msg.top_via() else { return };
    if crate::sip::values::param(via.params, b"alias").is_none() {
        return;
    }
    let Some(ip) = request::ip_literal(via.host).filter(|ip| *ip == remote.ip()) else {
        return;
    };
    let default = if transport == TransportKind::Tls {
        5061
    } else {
        5060
    };
    let sent_by = SocketAddr::new(ip, via.port.unwrap_or(default));
    if sent_by != remote {
        out.alias(transport, remote, sent_by);
    }
}

/// The user part (or whole URI) of a REFER's `Refer-To` (`r`).
fn refer_target(msg: &Message) -> Option<String> {
    let h = msg.headers().iter().find(|h| {
        let name = msg.slice(h.start as usize..h.name_end as usize);
        name.eq_ignore_ascii_case(b"refer-to") || name.eq_ignore_ascii_case(b"r")
    })?;
    let na = crate::sip::values::NameAddr::parse(msg.value(h)).ok()?;
    let uri = crate::sip::values::Uri::parse(na.uri).ok()?;
    let user = uri.user.filter(|u| !u.is_empty()).unwrap_or(na.uri);
    Some(String::from_utf8_lossy(user).into_owned())
}

/// The `User-Agent` value of `msg`, if it has one.
fn user_agent(msg: &Message) -> Option<&[u8]> {
    value_named(msg, b"user-agent")
}

/// The value of the first header called `name` (a name the scanner does
/// not classify), if `msg` has one.
fn value_named<'m>(msg: &'m Message, name: &[u8]) -> Option<&'m [u8]> {
    let h = msg.headers().iter().find(|h| {
        msg.slice(h.start as usize..h.name_end as usize)
            .eq_ignore_ascii_case(name)
    })?;
    Some(msg.value(h))
}

/// Whether a peer over its limit gets 503 for this request: new calls and
/// out-of-dialog requests do; ACK, CANCEL and in-dialog requests (To tag)
/// pass, so calls in progress are never cut by a limit.
fn refused_when_limited(msg: &Message, method: Method) -> bool {
    !matches!(method, Method::Ack | Method::Cancel)
        && msg
            .name_addr(crate::sip::HeaderName::To)
            .is_none_or(|to| to.tag().is_none())
}

/// `Retry-After: <one window, in seconds, at least 1>\r\n`.
fn retry_after_line(window_ms: u64) -> Vec<u8> {
    format!("Retry-After: {}\r\n", window_ms.div_ceil(1000).max(1)).into_bytes()
}

/// The seconds of a response's `Retry-After` (RFC 3261 §20.33:
/// `delta-seconds [comment] *(; retry-param)`), if it has one above 0.
fn retry_after(msg: &Message) -> Option<u64> {
    retry_after_secs(value_named(msg, b"retry-after")?)
}

/// The leading delta-seconds of a `Retry-After` value.
fn retry_after_secs(v: &[u8]) -> Option<u64> {
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = &v[digits..];
    let rest_ok = rest.is_empty() || matches!(rest[0], b' ' | b'\t' | b';' | b'(');
    if !rest_ok {
        return None;
    }
    // More digits than a u64 holds: a long time, capped by the blocklist.
    let secs = crate::sip::message::parse_u64(&v[..digits]).or((digits > 0).then_some(u64::MAX))?;
    (secs > 0).then_some(secs)
}

impl Handler for Proxy {
    fn admit(&self, remote: SocketAddr) -> bool {
        let rt = self.runtime.load();
        let peer = rt.routing.classify(remote.ip()) != Side::Unknown;
        !self
            .flood
            .is_banned(&rt.loaded.config.flood, remote.ip(), peer)
    }

    fn on_message(&self, inb: Inbound, out: &Sender) {
        let rt = self.runtime.load();
        // Flood protection first, on the source address alone: a banned
        // source costs no scan.
        let side = rt.routing.classify(inb.remote.ip());
        let flood = &rt.loaded.config.flood;
        let peer = side != Side::Unknown;
        let request = !inb.data.starts_with(b"SIP/");
        let limited = match self.flood.admit(flood, inb.remote.ip(), peer, request) {
            Admit::Pass => false,
            Admit::OverLimit => true,
            Admit::Drop => return,
        };
        let t0 = Instant::now();
        let too_large = inb.data.len() > rt.loaded.config.sip.max_message_bytes;
        // Borrowed from the result: moving the `Message` out would copy
        // its ~600 bytes once more per datagram.
        let scanned = Message::scan(inb.data);
        let msg = match &scanned {
            Ok(m) => m,
            Err(e) => {
                self.metrics.sip_error(e.reason());
                tracing::debug!(remote = %inb.remote, error = %e, "unparseable message dropped");
                return;
            }
        };
        let method = msg.method();
        if method.is_some()
            && let Some(ua) = user_agent(msg)
            && self.flood.scanner(flood, inb.remote.ip(), peer, ua)
        {
            tracing::debug!(remote = %inb.remote, "scanner User-Agent: request dropped");
            return;
        }
        self.metrics.message(inb.transport, method, side.origin());
        if inb.transport.is_stream() && method.is_some() && side != Side::Unknown {
            connection_alias(msg, inb.transport, inb.remote, out);
        }
        let outcome = if limited && method.is_some_and(|m| refused_when_limited(msg, m)) {
            Outcome::Reply {
                code: 503,
                reason: "peer_limit",
                extra: Some(retry_after_line(flood.window_ms)),
            }
        } else if too_large {
            if method.is_some() {
                Outcome::Reply {
                    code: 513,
                    reason: "too_large",
                    extra: None,
                }
            } else {
                Outcome::Drop("too_large")
            }
        } else if method.is_some() {
            request::route(&rt, &self.local, msg, inb.remote, inb.transport, side)
        } else {
            // Validated once, for the ping check and the routing both (a
            // response that does not validate may still answer a ping).
            let validated = response::validated(msg, side);
            let ping = match &validated {
                Some(Ok(p)) => ping::is_ping_via(&p.top_via),
                _ => ping::is_ping_answer(msg),
            };
            if ping {
                rt.routing.ping_answered(inb.remote);
                return;
            }
            if msg.status() == Some(503) {
                // The target is overloaded or out of service: the next
                // request of the call goes to the next target, and none
                // to this one for its Retry-After when it gives one.
                rt.routing.target_failed_for(
                    inb.remote,
                    crate::dns::Failure::Status503,
                    retry_after(msg),
                );
            }
            response::route_validated(&rt, &self.local, msg, validated)
        };
        let from = (inb.transport, inb.remote);
        match outcome {
            Outcome::Forward {
                dest,
                transport,
                data,
                call,
            } => {
                if self.send(out, transport, dest, data) {
                    if let Some(s) = &call {
                        let sc = &s.decision.screening;
                        self.metrics.screened(sc.direction, sc.verdict);
                        if sc.direction == crate::screening::Direction::Inbound {
                            self.metrics.attested(sc.attest, sc.verdict.as_str());
                        }
                        self.metrics.screening_time(t0.elapsed().as_secs_f64());
                    }
                    if let Some(calls) = self.calls.get() {
                        report(calls, msg, method, side, call.as_ref());
                    }
                }
            }
            Outcome::Reply {
                code,
                reason,
                extra,
            } => {
                self.answer(msg, side, from, out, (code, reason), extra.as_deref());
            }
            Outcome::Refused { code, reason, call } => {
                let sc = &call.decision.screening;
                self.metrics.attested(sc.attest, "rejected");
                if self.answer(msg, side, from, out, (code, reason), None)
                    && let Some(calls) = self.calls.get()
                {
                    calls.send(SipEvent::Refused {
                        sip_call_id: msg.buf().slice_ref(msg.call_id()),
                        call: Box::new(new_call(&call)),
                        code,
                        at: std::time::SystemTime::now(),
                    });
                }
            }
            Outcome::Drop(reason) => {
                tracing::debug!(remote = %inb.remote, reason, "message dropped");
                self.metrics.sip_error(reason);
            }
        }
    }

    fn on_unreachable(&self, transport: TransportKind, dest: SocketAddr) {
        let why = match transport {
            TransportKind::Udp => crate::dns::Failure::Unreachable,
            TransportKind::Tcp => crate::dns::Failure::TcpRefused,
            TransportKind::Tls => crate::dns::Failure::TlsFailed,
        };
        self.runtime.load().routing.target_failed(dest, why);
    }

    fn tls_accept(&self, remote: SocketAddr) -> Option<Arc<rustls::ServerConfig>> {
        let rt = self.runtime.load();
        let tls = rt.tls.as_ref()?;
        let peer = match rt.routing.classify(remote.ip()) {
            Side::Trunk(i) => &rt.routing.trunks[i],
            Side::Pbx => &rt.routing.pbx,
            // A stranger's handshake is not worth the CPU: it would get a
            // 403 after it.
            Side::Unknown => return None,
        };
        if peer.verify_client {
            tls.mutual.clone()
        } else {
            Some(tls.plain.clone())
        }
    }

    fn tls_connect(&self, dest: SocketAddr) -> Option<crate::tls::ClientTls> {
        let rt = self.runtime.load();
        let r = &rt.routing;
        let peer = if r.pbx.owns(dest.ip()) {
            &r.pbx
        } else {
            r.trunk_owning(dest.ip())?
        };
        peer.tls.as_deref().cloned()
    }

    /// A request whose next hop could not be reached is answered 503 for
    /// it, as the next hop would have (RFC 3261 §16.7 step 2): the 503
    /// goes the way a response from there goes, so the caller learns at
    /// once instead of after its timer B. Anything else is dropped.
    fn on_undeliverable(
        &self,
        transport: TransportKind,
        dest: SocketAddr,
        data: Bytes,
        out: &Sender,
    ) {
        self.metrics.sip_error("unreachable");
        let Ok(req) = Message::scan(data) else { return };
        if req.method().is_none_or(|m| m == Method::Ack) {
            return;
        }
        tracing::info!(%dest, transport = transport.as_str(), "next hop unreachable: request answered 503");
        let answer = reply::build(&req, 503, dest, &self.local, b"");
        let Ok(resp) = Message::scan(answer) else {
            return;
        };
        let rt = self.runtime.load();
        if let Outcome::Forward {
            dest,
            transport,
            data,
            ..
        } = response::route(&rt, &self.local, &resp, Side::Pbx)
            && self.send(out, transport, dest, data)
            && let Some(calls) = self.calls.get()
        {
            report(calls, &resp, None, Side::Pbx, None);
        }
    }

    fn on_framing_error(
        &self,
        _t: TransportKind,
        _local: SocketAddr,
        remote: SocketAddr,
        head: &[u8],
        err: &FramingError,
    ) -> Option<Bytes> {
        let rt = self.runtime.load();
        if rt.routing.classify(remote.ip()) == Side::Unknown {
            return None;
        }
        let code = if matches!(err, FramingError::TooLarge { .. }) {
            513
        } else {
            400
        };
        reply::build_from_head(head, code)
    }
}

#[cfg(test)]
mod tests {
    use super::retry_after_secs;

    #[test]
    fn retry_after_reads_the_delta_seconds_before_a_comment_or_parameters() {
        for (v, want) in [
            (&b"120"[..], Some(120)),
            (b"18000;duration=3600", Some(18000)),
            (b"120 (I'm in a meeting)", Some(120)),
            (b"30\t;duration=10", Some(30)),
            (b"99999999999999999999999", Some(u64::MAX)),
            (b"0", None),
            (b"", None),
            (b"soon", None),
            (b"12x", None),
            (b"-5", None),
        ] {
            assert_eq!(retry_after_secs(v), want, "{}", String::from_utf8_lossy(v));
        }
    }
}
