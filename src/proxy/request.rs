//! Requests: refuse what must be refused, pick the next hop, screen
//! dialog-creating INVITEs, and build the forwarded message as an edit
//! list over the received bytes (RFC 3261 §16.6 steps, stateless).
//!
//! Next hops are only ever configured peers: a trunk's requests go to the
//! PBX, the PBX's to a trunk. In-dialog requests (that carry our Route)
//! may go to the address in their Route / Request-URI only if that address
//! belongs to the peer on the other side; otherwise to that peer's target.
//! So the sidecar is never an open relay.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use bytes::Bytes;
use smallvec::SmallVec;

use super::ident::{BRANCH_PREFIX, Local};
use crate::config::TransportKind;
use crate::runtime::{Decision, Peer, Runtime, Side};
use crate::screening::Direction;
use crate::screening::verstat::Attest;
use crate::sip::values::{NameAddr, Uri, Via, split_commas};
use crate::sip::{Edits, HeaderName, Message, Method, Parsed};

/// What to do with a message.
pub enum Outcome<'r> {
    /// Send `data` to `dest`; `call` is the screened call when `data`
    /// starts a dialog.
    Forward {
        dest: SocketAddr,
        transport: TransportKind,
        data: Bytes,
        call: Option<Screened<'r>>,
    },
    /// Answer the sender with `code` (plus header lines in `extra`).
    Reply {
        code: u16,
        reason: &'static str,
        extra: Option<Vec<u8>>,
    },
    /// Answer the sender with final status `code` instead of forwarding
    /// the dialog-creating INVITE that `call` screened (608: a failed
    /// verification on a `reject` line); the call is reported as refused.
    Refused {
        code: u16,
        reason: &'static str,
        call: Screened<'r>,
    },
    /// Drop silently (counted under `reason`).
    Drop(&'static str),
}

/// A dialog-creating INVITE that was screened and tagged.
pub struct Screened<'r> {
    /// Verdict, tags and the responsible person.
    pub decision: Decision<'r>,
    /// `X-CRM-Call-Id` (hex digits).
    pub call_id: [u8; 32],
}

/// A request the proxy answers itself instead of forwarding (what a
/// stage returns to stop the others).
struct Refusal {
    code: u16,
    reason: &'static str,
    extra: Option<Vec<u8>>,
}

impl From<Refusal> for Outcome<'_> {
    fn from(r: Refusal) -> Self {
        Outcome::Reply {
            code: r.code,
            reason: r.reason,
            extra: r.extra,
        }
    }
}

fn reply(code: u16, reason: &'static str) -> Refusal {
    Refusal {
        code,
        reason,
        extra: None,
    }
}

/// Decides the fate of request `msg` that came from `remote` on `side`,
/// in four stages: refuse, find our Route entries and the next hop, edit
/// for forwarding, screen and tag.
pub fn route<'r>(
    rt: &'r Runtime,
    local: &Local,
    msg: &Message,
    remote: SocketAddr,
    in_transport: TransportKind,
    side: Side,
) -> Outcome<'r> {
    forward(rt, local, msg, remote, in_transport, side).unwrap_or_else(Outcome::from)
}

fn forward<'r>(
    rt: &'r Runtime,
    local: &Local,
    msg: &Message,
    remote: SocketAddr,
    in_transport: TransportKind,
    side: Side,
) -> Result<Outcome<'r>, Refusal> {
    let p = refuse(local, msg, side)?;
    let routes = own_routes(local, msg)?;
    let ruri = p.ruri.as_ref().ok_or_else(|| reply(400, "request_uri"))?;
    let dialog_creating = msg.method() == Some(Method::Invite) && p.to.tag().is_none();
    // Screening decides the line (and so the trunk) of PBX-originated
    // requests; only dialog-creating INVITEs are counted and tagged.
    let decision =
        (routes.popped.is_empty() || dialog_creating).then(|| decide(rt, msg, &p, ruri, side));
    let decision = match decision {
        // A trusted trunk's verification failed and the line rejects such
        // calls: 608 Rejected (RFC 8688), the call is not forwarded.
        Some(d) if dialog_creating && d.screening.reject => {
            return Ok(Outcome::Refused {
                code: 608,
                reason: "verstat_failed",
                call: screened(local, msg, &p, d),
            });
        }
        d => d,
    };
    let (dest, transport) = next_hop(rt, msg, &routes, ruri, side, decision.as_ref())?;
    let mut e = Edits::new();
    let hop = Hop {
        remote,
        in_transport,
        out_transport: transport,
    };
    forward_edits(local, msg, &p, &routes, hop, dialog_creating, &mut e);
    let call = match decision {
        Some(d) if dialog_creating => Some(tag(local, msg, &p, ruri, d, &mut e)),
        _ => None,
    };
    if msg.content_length().is_none() {
        e.insert_with(msg.header_end(), |a| {
            let _ = write!(a, "Content-Length: {}\r\n", msg.body_len());
        });
    }
    Ok(Outcome::Forward {
        dest,
        transport,
        data: e.apply(msg.buf(), msg.end()),
        call,
    })
}

/// Stage 1: what a proxy must refuse before anything else (RFC 3261 §16.3):
/// unknown sources, invalid messages, Proxy-Require, Max-Forwards 0, loops.
fn refuse<'m>(local: &Local, msg: &'m Message, side: Side) -> Result<Parsed<'m>, Refusal> {
    if side == Side::Unknown {
        return Err(reply(403, "forbidden_source"));
    }
    let p = msg
        .validate()
        .map_err(|inv| reply(inv.status, inv.reason))?;
    if msg.count(HeaderName::ProxyRequire) > 0 {
        let mut extra = b"Unsupported: ".to_vec();
        let tags: Vec<&[u8]> = msg
            .values(HeaderName::ProxyRequire)
            .map(|(_, r)| msg.slice(r))
            .collect();
        extra.extend_from_slice(&tags.join(&b", "[..]));
        extra.extend_from_slice(b"\r\n");
        return Err(Refusal {
            code: 420,
            reason: "proxy_require",
            extra: Some(extra),
        });
    }
    if p.max_forwards == Some(0) {
        return Err(reply(483, "max_forwards"));
    }
    if is_loop(local, msg) {
        return Err(reply(482, "loop"));
    }
    Ok(p)
}

/// Our own Route entries at the top (one, or two when we double
/// record-routed), and the first Route that is not ours.
struct Routes<'m> {
    /// (header index, value range) of each of ours.
    popped: SmallVec<[(usize, Range<usize>); 2]>,
    next: Option<Uri<'m>>,
}

/// Stage 2a: the Route set.
fn own_routes<'m>(local: &Local, msg: &'m Message) -> Result<Routes<'m>, Refusal> {
    let mut routes = Routes {
        popped: SmallVec::new(),
        next: None,
    };
    for (idx, r) in msg.values(HeaderName::Route) {
        let uri = NameAddr::parse(msg.slice(r.clone()))
            .ok()
            .and_then(|na| Uri::parse(na.uri).ok())
            .ok_or_else(|| reply(400, "route"))?;
        if local.is_my_uri(&uri) {
            routes.popped.push((idx, r));
        } else {
            routes.next = Some(uri);
            break;
        }
    }
    Ok(routes)
}

/// Stage 2b: the next hop. In-dialog requests follow their Route /
/// Request-URI within the other side's peer; new ones go to the PBX
/// (from a trunk) or to the line's trunk (from the PBX).
fn next_hop(
    rt: &Runtime,
    msg: &Message,
    routes: &Routes<'_>,
    ruri: &Uri<'_>,
    side: Side,
    decision: Option<&Decision<'_>>,
) -> Result<(SocketAddr, TransportKind), Refusal> {
    let call_id = msg.call_id();
    if !routes.popped.is_empty() {
        return in_dialog_hop(rt, routes.next.as_ref().unwrap_or(ruri), side, call_id)
            .ok_or_else(|| reply(503, "no_target"));
    }
    match side {
        Side::Trunk(_) => rt
            .routing
            .pbx
            .next_hop(call_id)
            .ok_or_else(|| reply(503, "no_target")),
        _ => {
            let line = decision.and_then(|d| d.screening.line);
            rt.routing
                .trunk_for(rt.screener.line_trunk(line))
                .ok_or_else(|| reply(503, "no_trunk"))?
                .next_hop(call_id)
                .ok_or_else(|| reply(503, "no_target"))
        }
    }
}

/// The addresses and transports of one forwarding.
#[derive(Clone, Copy)]
struct Hop {
    remote: SocketAddr,
    in_transport: TransportKind,
    out_transport: TransportKind,
}

/// Stage 3: the edits every forwarded request gets: our Via, the top
/// Via's received/rport, Max-Forwards, no `X-CRM-*` from outside, our
/// Route entries popped, Record-Route on dialog-creating INVITEs.
fn forward_edits(
    local: &Local,
    msg: &Message,
    p: &Parsed<'_>,
    routes: &Routes<'_>,
    hop: Hop,
    dialog_creating: bool,
    e: &mut Edits,
) {
    let first_via = msg
        .first(HeaderName::Via)
        .map_or(msg.header_end(), |h| h.start as usize);
    e.insert_with(first_via, |a| {
        a.extend_from_slice(local.via_prefix(hop.out_transport));
        local.branch(&p.top_via, msg.uri(), msg.call_id(), p.cseq.0, a);
        a.extend_from_slice(b"\r\n");
    });
    received_edits(msg, &p.top_via, hop.remote, hop.in_transport, e);
    match p.max_forwards {
        Some(n) => {
            let h = msg.first(HeaderName::MaxForwards).expect("counted");
            e.insert_with(h.value.0 as usize, |a| push_num(a, n.min(256) - 1));
            e.delete(h.value_range());
        }
        None => e.insert(msg.header_end(), b"Max-Forwards: 70\r\n"),
    }
    for h in msg.all(HeaderName::XCrm) {
        e.delete(h.line());
    }
    delete_values(msg, &routes.popped, e);
    if dialog_creating {
        let at = msg
            .first(HeaderName::RecordRoute)
            .map_or(first_via, |h| h.start as usize);
        e.insert_with(at, |a| {
            a.extend_from_slice(local.record_route(hop.out_transport));
            if hop.out_transport != hop.in_transport {
                a.extend_from_slice(local.record_route(hop.in_transport));
            }
        });
    }
}

/// Stage 4: a dialog-creating INVITE gets its call id; towards the PBX it
/// carries the tags and, on a `forward = "ruri"` line, the responsible's
/// extension as Request-URI user. Towards a trunk nothing is added: the
/// carrier never sees the verdict.
fn tag<'r>(
    local: &Local,
    msg: &Message,
    p: &Parsed<'_>,
    ruri: &Uri<'_>,
    decision: Decision<'r>,
    e: &mut Edits,
) -> Screened<'r> {
    let s = screened(local, msg, p, decision);
    if s.decision.screening.direction == Direction::Inbound {
        let id = std::str::from_utf8(&s.call_id).expect("hex digits");
        e.insert_with(msg.header_end(), |a| s.decision.write_tags(Some(id), a));
        if let (Some(ext), Some(user)) = (s.decision.forward_to(), ruri.user) {
            let at = user.as_ptr() as usize - msg.buf().as_ptr() as usize;
            e.insert_with(at, |a| a.extend_from_slice(ext.as_bytes()));
            e.delete(at..at + user.len());
        }
    }
    s
}

/// A screened call with its `X-CRM-Call-Id` (from Call-ID and From tag).
fn screened<'r>(
    local: &Local,
    msg: &Message,
    p: &Parsed<'_>,
    decision: Decision<'r>,
) -> Screened<'r> {
    let call_id = local.call_id(msg.call_id(), p.from.tag().unwrap_or(b""));
    Screened { decision, call_id }
}

/// Screens the call: line and client by direction (RFC 3325 identity
/// from trusted trunks, and always from the PBX). From a trusted trunk the
/// STIR/SHAKEN `verstat` is read too: on the P-Asserted-Identity, else on
/// From; from any other source never.
fn decide<'r>(
    rt: &'r Runtime,
    msg: &Message,
    p: &Parsed<'_>,
    ruri: &Uri<'_>,
    side: Side,
) -> Decision<'r> {
    fn user<'a>(na: &NameAddr<'a>) -> Option<&'a [u8]> {
        Uri::parse(na.uri).ok().and_then(|u| u.user_number())
    }
    // The identity (caller user, verstat) a trusted side asserts: the
    // P-Asserted-Identity's, else From's; each header parsed once.
    let asserted = || {
        let pai = (msg.count(HeaderName::PAssertedIdentity) > 0)
            .then(|| msg.name_addr(HeaderName::PAssertedIdentity))
            .flatten();
        let who = pai.as_ref().and_then(user).or_else(|| user(&p.from));
        let attest = pai
            .and_then(|na| Attest::of_uri(na.uri))
            .or_else(|| Attest::of_uri(p.from.uri))
            .unwrap_or(Attest::None);
        (who, attest)
    };
    let ruri_user = ruri.user_number().unwrap_or(b"");
    match side {
        Side::Trunk(i) if rt.routing.trunks[i].trust_pai => {
            let (who, attest) = asserted();
            rt.decide_verified(Direction::Inbound, ruri_user, who, attest)
        }
        Side::Trunk(_) => rt.decide(Direction::Inbound, ruri_user, user(&p.from)),
        _ => {
            let line = asserted().0.unwrap_or(b"");
            rt.decide(Direction::Outbound, line, Some(ruri_user))
        }
    }
}

/// The next hop of an in-dialog request: its Route / Request-URI address
/// if that belongs to the peer on the other side, else that peer's target
/// (chosen by Call-ID, as a new request's).
fn in_dialog_hop(
    rt: &Runtime,
    hop: &Uri<'_>,
    side: Side,
    call_id: &[u8],
) -> Option<(SocketAddr, TransportKind)> {
    let addr = ip_literal(hop.host).map(|ip| SocketAddr::new(ip, hop.port.unwrap_or(5060)));
    let pick = |peer: &Peer| match addr {
        Some(a) if peer.owns(a.ip()) => {
            Some((a, peer.targets.transport_of(a).unwrap_or(peer.transport)))
        }
        _ => peer.next_hop(call_id),
    };
    match side {
        Side::Trunk(_) => pick(&rt.routing.pbx),
        _ => match addr.and_then(|a| rt.routing.trunk_owning(a.ip())) {
            Some(t) => pick(t),
            None => match rt.routing.trunk_for(None) {
                Some(t) => t.next_hop(call_id),
                None => pick(&rt.routing.pbx),
            },
        },
    }
}

/// An IP address written in a URI or Via host (IPv6 in brackets).
pub fn ip_literal(host: &[u8]) -> Option<IpAddr> {
    if let Some(v4) = dotted_quad(host) {
        return Some(IpAddr::V4(v4));
    }
    let h = std::str::from_utf8(host).ok()?;
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    h.parse().ok()
}

/// An IPv4 address in dotted-quad form, as `core::net` reads one (four
/// decimal octets of up to three digits, no leading zero, nothing else),
/// without its UTF-8 check and generic parser: every request's Via and
/// every response's second Via give one (~350 instructions each that way).
/// `None` for anything else, which [`ip_literal`] then reads the long way.
fn dotted_quad(s: &[u8]) -> Option<std::net::Ipv4Addr> {
    if !(7..=15).contains(&s.len()) {
        return None;
    }
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (k, octet) in octets.iter_mut().enumerate() {
        if k > 0 {
            if s.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut n = 0u32;
        while let Some(d) = s.get(i).map(|b| b.wrapping_sub(b'0')).filter(|d| *d <= 9) {
            // Four digits are too many already (and more would overflow).
            if i - start == 3 {
                return None;
            }
            n = n * 10 + u32::from(d);
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 3 || n > 255 || (digits > 1 && s[start] == b'0') {
            return None;
        }
        *octet = n as u8;
    }
    (i == s.len()).then(|| std::net::Ipv4Addr::from(octets))
}

/// Deletes comma-separated values `vals` (header index, value range): a
/// header left with no value goes as a whole line.
fn delete_values(msg: &Message, vals: &[(usize, Range<usize>)], e: &mut Edits) {
    let mut i = 0;
    while i < vals.len() {
        let idx = vals[i].0;
        let h = &msg.headers()[idx];
        let all: SmallVec<[Range<usize>; 4]> = split_commas(msg.buf(), h.value_range()).collect();
        let mine = vals[i..].iter().take_while(|v| v.0 == idx).count();
        if mine == all.len() {
            e.delete(h.line());
        } else {
            // Popped values are the leading ones: cut up to the next value.
            e.delete(all[0].start..all[mine].start);
        }
        i += mine;
    }
}

/// The `received` / `rport` a server adds to the top Via (RFC 3261
/// §18.2.1, RFC 3581). Over TCP and TLS `rport` is always filled in, so that
/// responses find the request's connection again.
fn received_edits(
    msg: &Message,
    via: &Via<'_>,
    remote: SocketAddr,
    transport: TransportKind,
    e: &mut Edits,
) {
    let (rport_at, received) = via_fixups(msg, via, remote, transport);
    if let Some(at) = rport_at {
        e.insert_with(at, |a| {
            a.push(b'=');
            push_num(a, u32::from(remote.port()));
        });
    }
    if let Some(add_rport) = received {
        e.insert_with(via.range.end, |a| {
            a.extend_from_slice(b";received=");
            push_ip(a, remote.ip());
            if add_rport {
                a.extend_from_slice(b";rport=");
                push_num(a, u32::from(remote.port()));
            }
        });
    }
}

/// Appends `n` in decimal.
fn push_num(a: &mut Vec<u8>, n: u32) {
    a.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends an IP address as a Via `received` value: IPv6 without
/// brackets, as RFC 3261's ABNF has it (`IPv6address`; RFC 5118 §4.5 asks
/// receivers to take both forms, and `ip_literal` does).
fn push_ip(a: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Dotted quad on the stack, then one copy.
            let mut b = [0u8; 15];
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    b[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    b[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    b[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                b[n] = b'0' + o % 10;
                n += 1;
            }
            a.extend_from_slice(&b[..n]);
        }
        IpAddr::V6(v6) => {
            let _ = write!(a, "{v6}");
        }
    }
}

/// Where to put `=port` (an empty `rport` present), and whether to append
/// `;received=` (with `;rport=` too if true).
fn via_fixups(
    msg: &Message,
    via: &Via<'_>,
    remote: SocketAddr,
    transport: TransportKind,
) -> (Option<usize>, Option<bool>) {
    let rport = via.rport();
    let rport_at = match rport {
        Some(None) => {
            let base = msg.buf().as_ptr() as usize;
            let p = via.params;
            via.bare_rport_end().map(|o| p.as_ptr() as usize - base + o)
        }
        _ => None,
    };
    let add_rport = rport.is_none() && transport.is_stream();
    let needs_received = via.received().is_none()
        && (rport.is_some() || add_rport || ip_literal(via.host) != Some(remote.ip()));
    (rport_at, needs_received.then_some(add_rport))
}

/// Appends the top Via's `received`/`rport` fix-ups to a copied Via value
/// (local replies).
pub fn write_received(req: &Message, remote: SocketAddr, out: &mut Vec<u8>) {
    let Some(via) = req.top_via() else { return };
    let value_start = out.len() - via.range.len();
    let (rport_at, received) = via_fixups(req, &via, remote, TransportKind::Udp);
    if let Some(at) = rport_at {
        let at = value_start + (at - via.range.start);
        let port = format!("={}", remote.port());
        out.splice(at..at, port.into_bytes());
    }
    if received.is_some() {
        let _ = write!(out, ";received={}", remote.ip());
    }
}

/// A request that comes back through us on the same branch is a loop
/// (RFC 3261 §16.3 step 4); a spiral (new Request-URI) is not.
fn is_loop(local: &Local, msg: &Message) -> bool {
    // Built once: building a searcher costs more than one search.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(BRANCH_PREFIX));
    let finder = &*FINDER;
    if !msg
        .all(HeaderName::Via)
        .any(|h| finder.find(msg.slice(h.value_range())).is_some())
    {
        return false;
    }
    let vias: SmallVec<[Range<usize>; 8]> = msg.values(HeaderName::Via).map(|(_, r)| r).collect();
    for (i, r) in vias.iter().enumerate() {
        let Ok(v) = Via::parse(msg.buf(), r.clone()) else {
            continue;
        };
        if !local.is_my_via(&v) {
            continue;
        }
        let Some(below) = vias
            .get(i + 1)
            .and_then(|r| Via::parse(msg.buf(), r.clone()).ok())
        else {
            return true;
        };
        let mut expect = Vec::with_capacity(32);
        local.branch(
            &below,
            msg.uri(),
            msg.call_id(),
            msg.cseq().map_or(0, |c| c.0),
            &mut expect,
        );
        if v.branch() == Some(&expect[..]) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        /// The dotted-quad fast path reads exactly what `core::net` reads.
        #[test]
        fn dotted_quad_agrees_with_the_standard_parser(s in "[0-9.]{0,17}|[0-9]{1,3}(\\.[0-9]{1,4}){3}") {
            proptest::prop_assert_eq!(dotted_quad(s.as_bytes()), s.parse::<std::net::Ipv4Addr>().ok());
        }
    }

    use super::*;

    proptest::proptest! {
        /// The dotted quad written on the stack is `Ipv4Addr`'s `Display`
        /// (what `received` was written with before), after any prefix.
        #[test]
        fn push_ip_v4_is_display(ip in proptest::prelude::any::<u32>(), pre in "[a-z;=]{0,4}") {
            let ip = std::net::Ipv4Addr::from(ip);
            let mut out = pre.clone().into_bytes();
            push_ip(&mut out, IpAddr::V4(ip));
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), format!("{pre}{ip}"));
        }
    }
}
