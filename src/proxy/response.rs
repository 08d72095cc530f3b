//! Responses (RFC 3261 §16.7, stateless): the top Via must be ours, it is
//! removed, and the response goes where the next Via says (`received` /
//! `rport` first). Responses from strangers, to strangers, or not carrying
//! our Via on top are dropped: nobody can bounce traffic off the sidecar.

use std::net::SocketAddr;

use super::ident::Local;
use super::request::{Outcome, ip_literal};
use crate::config::TransportKind;
use crate::runtime::{Runtime, Side};
use crate::sip::values::Via;
use crate::sip::{Edits, HeaderName, Invalid, Message, Parsed};

/// Decides the fate of response `msg` that came from `side`.
pub fn route(rt: &Runtime, local: &Local, msg: &Message, side: Side) -> Outcome<'static> {
    route_validated(rt, local, msg, validated(msg, side))
}

/// What `validate` says of response `msg` from `side`; `None` from an
/// unknown source, which is not validated (its response is dropped).
pub fn validated(msg: &Message, side: Side) -> Option<Result<Parsed<'_>, Invalid>> {
    (side != Side::Unknown).then(|| msg.validate())
}

/// [`route`] of a response whose [`validated`] the caller already has.
pub fn route_validated(
    rt: &Runtime,
    local: &Local,
    msg: &Message,
    validated: Option<Result<Parsed<'_>, Invalid>>,
) -> Outcome<'static> {
    let Some(validated) = validated else {
        return Outcome::Drop("response_unknown_source");
    };
    // Validation parsed the top Via already: it is not parsed again.
    let top = match validated {
        Ok(parsed) => parsed.top_via,
        Err(inv) => return Outcome::Drop(inv.reason),
    };
    let vias = msg.first_two_values(HeaderName::Via);
    if !local.is_my_via(&top) {
        return Outcome::Drop("response_not_ours");
    }
    let Some(Ok(next)) = vias.get(1).map(|(_, r)| Via::parse(msg.buf(), r.clone())) else {
        return Outcome::Drop("response_no_via");
    };
    let transport = if next.transport.eq_ignore_ascii_case(b"UDP") {
        TransportKind::Udp
    } else if next.transport.eq_ignore_ascii_case(b"TCP") {
        TransportKind::Tcp
    } else if next.transport.eq_ignore_ascii_case(b"TLS") {
        TransportKind::Tls
    } else {
        return Outcome::Drop("response_transport");
    };
    let ip = match next.received() {
        Some(r) => ip_literal(r),
        None => ip_literal(next.host),
    };
    let port = match next.rport() {
        Some(Some(p)) => p,
        _ => next.port.unwrap_or(5060),
    };
    let Some(ip) = ip.filter(|ip| rt.routing.is_known(*ip)) else {
        return Outcome::Drop("response_unroutable");
    };
    let mut e = Edits::new();
    let (h0, r0) = &vias[0];
    match vias.get(1) {
        Some((h1, r1)) if h1 == h0 => e.delete(r0.start..r1.start),
        _ => e.delete(msg.headers()[*h0].line()),
    }
    for h in msg.all(HeaderName::XCrm) {
        e.delete(h.line());
    }
    Outcome::Forward {
        dest: SocketAddr::new(ip, port),
        transport,
        data: e.apply(msg.buf(), msg.end()),
        call: None,
    }
}
