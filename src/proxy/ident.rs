//! Who we are on the wire, and the identifiers a stateless proxy derives
//! instead of remembering: the branch of forwarded requests (RFC 3261
//! §16.11: the same input Via gives the same branch, so retransmissions,
//! CANCEL and non-2xx ACK follow the INVITE), the To tag of local replies
//! and the `X-CRM-Call-Id` of a call.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::SocketAddr;

use crate::config::TransportKind;
use crate::sip::values::{Uri, Via};

/// Every branch we generate starts with this (RFC 3261 cookie + our mark).
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bKsS";

/// Our addresses and the keys for derived identifiers (per process).
#[derive(Debug, Clone)]
pub struct Local {
    /// Host written into Via / Record-Route.
    pub host: String,
    /// Our UDP listener, if any.
    pub udp: Option<SocketAddr>,
    /// Our TCP listener, if any.
    pub tcp: Option<SocketAddr>,
    /// Our TLS listener, if any.
    pub tls: Option<SocketAddr>,
    /// The key of forwarded requests' branches (SipHash-1-3).
    branch_key: (u64, u64),
    /// The key of local replies' To tags.
    reply_key: RandomState,
    /// The key of `X-CRM-Call-Id` (SipHash-1-3-128).
    call_key: (u64, u64),
    /// `Via: SIP/2.0/UDP host:port;branch=` per transport (UDP, TCP, TLS).
    via_prefix: [Vec<u8>; 3],
    /// `Record-Route: <sip:host:port;lr>\r\n` per transport (UDP, TCP, TLS).
    record_route: [Vec<u8>; 3],
}

impl Local {
    pub fn new(advertise: Option<&str>, udp: Option<SocketAddr>, tcp: Option<SocketAddr>) -> Local {
        let host = match advertise {
            Some(h) => h.to_string(),
            None => {
                let ip = udp.or(tcp).map(|a| a.ip()).unwrap_or([127, 0, 0, 1].into());
                match ip {
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                    v4 => v4.to_string(),
                }
            }
        };
        let mut l = Local {
            host,
            udp,
            tcp,
            tls: None,
            branch_key: random_key(),
            reply_key: RandomState::new(),
            call_key: random_key(),
            via_prefix: Default::default(),
            record_route: Default::default(),
        };
        l.write_prefixes();
        l
    }

    /// Adds our TLS listener (Via and Record-Route for TLS name it).
    pub fn with_tls(mut self, tls: Option<SocketAddr>) -> Local {
        self.tls = tls;
        self.write_prefixes();
        self
    }

    fn write_prefixes(&mut self) {
        for t in TransportKind::ALL {
            // RFC 5630: `sips:` is not needed for TLS on the next hop;
            // `sip:...;transport=tls` says just that.
            let (name, param) = match t {
                TransportKind::Udp => ("UDP", ""),
                TransportKind::Tcp => ("TCP", ";transport=tcp"),
                TransportKind::Tls => ("TLS", ";transport=tls"),
            };
            let port = self.port(t);
            self.via_prefix[t as usize] =
                format!("Via: SIP/2.0/{name} {}:{port};branch=", self.host).into_bytes();
            self.record_route[t as usize] =
                format!("Record-Route: <sip:{}:{port}{param};lr>\r\n", self.host).into_bytes();
        }
    }

    /// `Via: SIP/2.0/T host:port;branch=` for `transport`.
    pub fn via_prefix(&self, transport: TransportKind) -> &[u8] {
        &self.via_prefix[transport as usize]
    }

    /// Our whole Record-Route line for `transport`.
    pub fn record_route(&self, transport: TransportKind) -> &[u8] {
        &self.record_route[transport as usize]
    }

    /// Our port for `transport` (the other transport's as a fallback).
    pub fn port(&self, transport: TransportKind) -> u16 {
        let a = match transport {
            TransportKind::Udp => self.udp.or(self.tcp),
            TransportKind::Tcp => self.tcp.or(self.udp),
            TransportKind::Tls => self.tls,
        };
        a.map_or(
            if transport == TransportKind::Tls {
                5061
            } else {
                5060
            },
            |a| a.port(),
        )
    }

    /// Whether `host:port` names us.
    pub fn is_me(&self, host: &[u8], port: Option<u16>) -> bool {
        if !host.eq_ignore_ascii_case(self.host.as_bytes()) {
            return false;
        }
        let p = port.unwrap_or(5060);
        let tls = port.unwrap_or(5061);
        self.udp.is_some_and(|a| a.port() == p)
            || self.tcp.is_some_and(|a| a.port() == p)
            || self.tls.is_some_and(|a| a.port() == tls)
    }

    /// Whether a Via value is one we wrote.
    pub fn is_my_via(&self, via: &Via<'_>) -> bool {
        via.branch().is_some_and(|b| b.starts_with(BRANCH_PREFIX)) && self.is_me(via.host, via.port)
    }

    /// Whether a Route URI names us.
    pub fn is_my_uri(&self, uri: &Uri<'_>) -> bool {
        self.is_me(uri.host, uri.port)
    }

    /// Writes the branch for a request whose top Via (before ours) is
    /// `via`, with Request-URI `ruri`, Call-ID and CSeq number. An RFC 3261
    /// branch is hashed with the sent-by; an RFC 2543 one (no cookie) with
    /// the whole transaction key. One keyed SipHash-1-3 (64 bits) over the
    /// parts, each variable one preceded by its length (so that no other
    /// split of the same bytes gives the same branch).
    pub fn branch(&self, via: &Via<'_>, ruri: &[u8], call_id: &[u8], cseq: u32, out: &mut Vec<u8>) {
        let port = via.port.unwrap_or(0).to_le_bytes();
        let host_len = len32(via.host);
        let v = match via
            .branch()
            .filter(|b| b.len() > 7 && b[..7].eq_ignore_ascii_case(b"z9hG4bK"))
        {
            Some(b) => keyed_hash(
                self.branch_key,
                &[&len32(b), b, &host_len, via.host, &port, ruri],
            ),
            None => keyed_hash(
                self.branch_key,
                &[
                    &len32(via.params),
                    via.params,
                    &len32(call_id),
                    call_id,
                    &cseq.to_le_bytes(),
                    &host_len,
                    via.host,
                    &port,
                    ruri,
                ],
            ),
        };
        let mut b = [0u8; BRANCH_PREFIX.len() + 16];
        b[..BRANCH_PREFIX.len()].copy_from_slice(BRANCH_PREFIX);
        hex16(v, &mut b[BRANCH_PREFIX.len()..]);
        out.extend_from_slice(&b);
    }

    /// A To tag for a local reply: stable for retransmissions.
    pub fn reply_tag(&self, call_id: &[u8], via_branch: &[u8], out: &mut Vec<u8>) {
        let mut h = self.reply_key.build_hasher();
        h.write(call_id);
        h.write(via_branch);
        push_hex(out, h.finish());
    }

    /// The `X-CRM-Call-Id` of a call: 32 hex digits from Call-ID and From
    /// tag, the same for every retransmission of its INVITE: one keyed
    /// SipHash-1-3-128 over both (the Call-ID's length first, so that no
    /// other split of the same bytes gives the same id).
    pub fn call_id(&self, call_id: &[u8], from_tag: &[u8]) -> [u8; 32] {
        let len = call_id.len().to_ne_bytes();
        let v = keyed_hash128(self.call_key, &[&len, call_id, from_tag]);
        let mut out = [0u8; 32];
        hex16(v.h1, &mut out[..16]);
        hex16(v.h2, &mut out[16..]);
        out
    }
}

/// Inputs up to this many bytes are gathered on the stack and hashed in
/// one pass; longer ones are streamed part by part (the same hash: SipHash
/// of a stream is SipHash of its concatenation).
const GATHER: usize = 256;

/// `parts` concatenated into `buf`, if they fit.
fn gather<'b>(parts: &[&[u8]], buf: &'b mut [u8; GATHER]) -> Option<&'b [u8]> {
    let mut n = 0;
    for p in parts {
        buf.get_mut(n..n + p.len())?.copy_from_slice(p);
        n += p.len();
    }
    Some(&buf[..n])
}

/// Keyed SipHash-1-3 (64 bits) of the concatenated `parts`.
fn keyed_hash(key: (u64, u64), parts: &[&[u8]]) -> u64 {
    let h = siphasher::sip::SipHasher13::new_with_keys(key.0, key.1);
    let mut buf = [0u8; GATHER];
    match gather(parts, &mut buf) {
        Some(all) => h.hash(all),
        None => {
            let mut h = h;
            parts.iter().for_each(|p| h.write(p));
            h.finish()
        }
    }
}

/// Keyed SipHash-1-3-128 of the concatenated `parts`.
fn keyed_hash128(key: (u64, u64), parts: &[&[u8]]) -> siphasher::sip128::Hash128 {
    use siphasher::sip128::Hasher128;
    let h = siphasher::sip128::SipHasher13::new_with_keys(key.0, key.1);
    let mut buf = [0u8; GATHER];
    match gather(parts, &mut buf) {
        Some(all) => h.hash(all),
        None => {
            let mut h = h;
            parts.iter().for_each(|p| h.write(p));
            h.finish128()
        }
    }
}

/// A part's length as 4 bytes (little-endian; saturated, messages are
/// far shorter).
fn len32(p: &[u8]) -> [u8; 4] {
    u32::try_from(p.len()).unwrap_or(u32::MAX).to_le_bytes()
}

/// A key from the OS random source (per process, as `RandomState`'s).
fn random_key() -> (u64, u64) {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source");
    let (k0, k1) = b.split_at(8);
    (
        u64::from_le_bytes(k0.try_into().expect("8 bytes")),
        u64::from_le_bytes(k1.try_into().expect("8 bytes")),
    )
}

/// The two lower-case hex digits of every byte value.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// `v` as 16 hex digits (most significant first) into `out[..16]`.
fn hex16(v: u64, out: &mut [u8]) {
    for (pair, b) in out[..16].chunks_exact_mut(2).zip(v.to_be_bytes()) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

fn push_hex(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 16];
    hex16(v, &mut buf);
    out.extend_from_slice(&buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Local {
        Local::new(
            None,
            Some("127.0.0.1:5060".parse().unwrap()),
            Some("127.0.0.1:5061".parse().unwrap()),
        )
    }

    #[test]
    fn branch_is_deterministic_and_depends_on_input() {
        let l = local();
        let s = b"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc";
        let v = Via::parse(s, 0..s.len()).unwrap();
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        l.branch(&v, b"sip:1@x", b"cid", 1, &mut a);
        l.branch(&v, b"sip:1@x", b"cid", 2, &mut b);
        l.branch(&v, b"sip:2@x", b"cid", 1, &mut c);
        assert!(a.starts_with(BRANCH_PREFIX));
        assert_eq!(
            a, b,
            "CSeq does not enter an RFC 3261 branch (CANCEL, ACK follow)"
        );
        assert_ne!(a, c);
    }

    /// The digits as they were written before the lookup table.
    fn hex16_nibbles(v: u64) -> [u8; 16] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        std::array::from_fn(|i| HEX[((v >> (60 - 4 * i)) & 0xf) as usize])
    }

    /// The X-CRM-Call-Id as it was computed before the gathered one-pass
    /// hash: streamed SipHash-1-3-128 and nibble-wise hex.
    fn call_id_streamed(l: &Local, call_id: &[u8], from_tag: &[u8]) -> [u8; 32] {
        use siphasher::sip128::Hasher128;
        let mut h = siphasher::sip128::SipHasher13::new_with_keys(l.call_key.0, l.call_key.1);
        h.write_usize(call_id.len());
        h.write(call_id);
        h.write(from_tag);
        let v = h.finish128();
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&hex16_nibbles(v.h1));
        out[16..].copy_from_slice(&hex16_nibbles(v.h2));
        out
    }

    proptest::proptest! {
        /// The one-pass hashes and the table hex agree with the plain
        /// definitions, below and above the gathered size.
        #[test]
        fn fast_paths_agree_with_the_plain_definitions(
            call_id in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            tag in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            v in proptest::prelude::any::<u64>(),
            key in proptest::prelude::any::<(u64, u64)>(),
        ) {
            let l = local();
            proptest::prop_assert_eq!(l.call_id(&call_id, &tag), call_id_streamed(&l, &call_id, &tag));
            let mut hex = [0u8; 16];
            hex16(v, &mut hex);
            proptest::prop_assert_eq!(hex, hex16_nibbles(v));
            let mut h = siphasher::sip::SipHasher13::new_with_keys(key.0, key.1);
            h.write(&call_id);
            h.write(&tag);
            proptest::prop_assert_eq!(keyed_hash(key, &[&call_id, &tag]), h.finish());
        }
    }

    #[test]
    fn rfc2543_branch_uses_the_transaction_key() {
        let l = local();
        let s = b"SIP/2.0/UDP 10.0.0.1:5060;received=10.0.0.2";
        let v = Via::parse(s, 0..s.len()).unwrap();
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        l.branch(&v, b"sip:1@x", b"cid", 1, &mut a);
        l.branch(&v, b"sip:1@x", b"cid", 2, &mut b);
        l.branch(&v, b"sip:1@x", b"cid", 1, &mut c);
        assert_ne!(a, b, "CSeq enters an RFC 2543 branch");
        assert_eq!(a, c);
        assert_eq!(a.len(), BRANCH_PREFIX.len() + 16);
        // A long Request-URI (streamed, not gathered) is still stable.
        let long = vec![b'x'; 400];
        let (mut d, mut e) = (Vec::new(), Vec::new());
        l.branch(&v, &long, b"cid", 1, &mut d);
        l.branch(&v, &long, b"cid", 1, &mut e);
        assert_eq!(d, e);
        assert_ne!(d, a);
    }

    #[test]
    fn recognises_own_address() {
        let l = local();
        assert!(l.is_me(b"127.0.0.1", Some(5061)));
        assert!(l.is_me(b"127.0.0.1", Some(5060)));
        assert!(l.is_me(b"127.0.0.1", None));
        assert!(!l.is_me(b"127.0.0.1", Some(5080)));
        assert!(!l.is_me(b"127.0.0.2", Some(5060)));
        let l = l.with_tls(Some("127.0.0.1:5071".parse().unwrap()));
        assert!(l.is_me(b"127.0.0.1", Some(5071)));
        assert_eq!(
            l.record_route(TransportKind::Tls),
            b"Record-Route: <sip:127.0.0.1:5071;transport=tls;lr>\r\n"
        );
        assert!(
            l.via_prefix(TransportKind::Tls)
                .starts_with(b"Via: SIP/2.0/TLS 127.0.0.1:5071;")
        );
        let id = l.call_id(b"abc", b"t1");
        assert_eq!(id, l.call_id(b"abc", b"t1"));
        assert_ne!(id, l.call_id(b"abc", b"t2"));
        assert!(id.iter().all(u8::is_ascii_hexdigit));
        assert_ne!(
            l.call_id(b"ab", b"c"),
            l.call_id(b"a", b"bc"),
            "Call-ID and From tag are told apart"
        );
        assert_ne!(id, local().call_id(b"abc", b"t1"), "keyed per process");
        assert_ne!(id[..16], id[16..], "both halves hashed");
    }
}
