//! A peer's targets: what its configured `target`s resolve to, which of
//! those addresses are blocklisted, and the per-call choice among them.
//!
//! - [`PeerTargets`]: per peer, a snapshot of resolved destinations the
//!   proxy reads lock-free ([`PeerTargets::pick`]: no allocation, no lock,
//!   no await), published by the resolver task.
//! - `resolve`: RFC 3263 (NAPTR -> SRV -> A/AAAA) with hickory-resolver.
//! - `task`: the background refresher, honouring TTLs within bounds; a name
//!   that stops resolving keeps its last good answer.
//!
//! Failover: a stateless proxy sees a failure at once (ICMP unreachable,
//! TCP refused, a 503 from the target); [`PeerTargets::block`] takes the
//! address out of the choice for `[dns] blocklist_secs`, and the next
//! request of the call (its retransmission, or the next INVITE) goes to
//! the next address.

pub mod resolve;
mod task;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::clock::Clock;
use crate::config::target::{TargetHost, TargetSpec, TargetTransport};
use crate::config::{TargetEntry, TransportKind};
use crate::metrics::DnsMetrics;

pub use resolve::{Answer, Resolved, Resolver};
pub use task::{Started, spawn};

/// The longest a 503's `Retry-After` keeps an address out of the choice:
/// a peer's mistake (or a day's maintenance window) should not outlast an
/// operator's attention. While every address of a peer is blocked the
/// blocklist is ignored anyway.
pub const MAX_RETRY_AFTER_SECS: u64 = 3600;

/// Why an address was blocklisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Failure {
    /// ICMP port / host unreachable after a UDP send.
    Unreachable = 1,
    /// TCP connect refused, reset or timed out.
    TcpRefused = 2,
    /// The address answered 503.
    Status503 = 3,
    /// A TLS connection refused, timed out, or its handshake failed.
    TlsFailed = 4,
}

impl Failure {
    pub const ALL: [Failure; 4] = [
        Failure::Unreachable,
        Failure::TcpRefused,
        Failure::Status503,
        Failure::TlsFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Unreachable => "icmp_unreachable",
            Failure::TcpRefused => "tcp_refused",
            Failure::Status503 => "status_503",
            Failure::TlsFailed => "tls_failed",
        }
    }

    fn from_u8(v: u8) -> Option<Failure> {
        match v {
            1 => Some(Failure::Unreachable),
            2 => Some(Failure::TcpRefused),
            3 => Some(Failure::Status503),
            4 => Some(Failure::TlsFailed),
            _ => None,
        }
    }
}

/// The failover state of one resolved address, kept across snapshots
/// (a refresh that returns the same address keeps its blocklisting).
#[derive(Debug, Default)]
pub struct DestState {
    /// Unix ms until which it is skipped (0: never blocked).
    blocked_until_ms: AtomicI64,
    /// The last failure (a `Failure` as u8, 0: none) and when.
    last_error: AtomicU8,
    last_error_ms: AtomicI64,
    failures: AtomicU64,
    /// OPTIONS pings sent since the last answer.
    ping_missed: AtomicU32,
    /// Down by pings (no answer to `ping_threshold` in a row).
    down: AtomicBool,
}

impl DestState {
    fn usable(&self, now: i64) -> bool {
        !self.down.load(Ordering::Relaxed) && self.blocked_until_ms.load(Ordering::Relaxed) <= now
    }
}

/// One address a peer's requests may go to.
#[derive(Debug, Clone)]
pub struct Dest {
    pub addr: SocketAddr,
    pub transport: TransportKind,
    /// (configured priority, SRV priority): lower first.
    pub priority: (u16, u16),
    /// Share within its priority (configured weight x SRV weight).
    pub weight: u32,
    /// Which configured target it came from.
    pub from: usize,
    state: Arc<DestState>,
}

/// What the proxy reads per request.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Sorted by priority.
    pub dests: Vec<Dest>,
}

/// One configured target and its latest answer.
#[derive(Debug)]
pub struct Configured {
    pub spec: TargetSpec,
    pub priority: u16,
    pub weight: u16,
    /// The last good answer (empty: never resolved), when it was had
    /// (unix ms) and until when it is valid.
    answer: Mutex<AnswerState>,
}

#[derive(Debug, Default, Clone)]
struct AnswerState {
    answer: Option<Answer>,
    resolved_ms: i64,
    expires_ms: i64,
    stale: bool,
    error: Option<String>,
}

/// A peer's targets.
#[derive(Debug)]
pub struct PeerTargets {
    /// Trunk name, or `pbx`.
    pub peer: String,
    /// The peer's `transport` key: used where neither URI nor DNS say.
    pub transport: TransportKind,
    pub configured: Vec<Configured>,
    snapshot: ArcSwap<Snapshot>,
    /// Failover state by address (snapshot builds only).
    states: Mutex<HashMap<(SocketAddr, TransportKind), Arc<DestState>>>,
    blocklist_ms: i64,
    clock: Clock,
    metrics: DnsMetrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PeerTargets {
    /// A peer's targets from validated config entries: IP literals are
    /// resolved at once, names wait for the resolver task.
    pub fn new(
        peer: &str,
        transport: TransportKind,
        entries: &[TargetEntry],
        blocklist_secs: u64,
        clock: Clock,
        metrics: DnsMetrics,
    ) -> Result<PeerTargets, (std::ops::Range<usize>, String)> {
        let mut configured = Vec::new();
        for e in entries {
            let spec = TargetSpec::parse(e.target.get_ref()).map_err(|m| (e.target.span(), m))?;
            let answer = match &spec.host {
                TargetHost::Ip(ip) => {
                    let t = spec.transport_or(transport);
                    AnswerState {
                        answer: Some(Answer::literal(
                            SocketAddr::new(
                                *ip,
                                spec.port.unwrap_or(TargetTransport::from(t).default_port()),
                            ),
                            t,
                        )),
                        expires_ms: i64::MAX,
                        ..Default::default()
                    }
                }
                TargetHost::Name(_) => AnswerState::default(),
            };
            configured.push(Configured {
                spec,
                priority: e.priority,
                weight: e.weight,
                answer: Mutex::new(answer),
            });
        }
        let t = PeerTargets {
            peer: peer.to_string(),
            transport,
            configured,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            states: Mutex::new(HashMap::new()),
            blocklist_ms: blocklist_secs.saturating_mul(1000) as i64,
            clock,
            metrics,
        };
        // Every configured target's series from the start (a literal's stay
        // 0), so the alerts over them see 0 rather than nothing.
        for c in t.configured.iter() {
            let labels = vec![("peer", t.peer.clone()), ("target", c.spec.to_string())];
            let _ = t.metrics.failures.get_or_create(&labels);
            let _ = t.metrics.stale.get_or_create(&labels);
        }
        t.publish();
        Ok(t)
    }

    /// The destination for a request of call `call_id` (RFC 3261 §16.11:
    /// the same Call-ID gets the same answer while the set and its
    /// blocklisting stay): the best priority with an address not
    /// blocklisted, weighted by a hash of the Call-ID. When every address
    /// is blocklisted the blocklist is ignored (a call is not refused for
    /// it). `None`: nothing resolved yet. No lock, no allocation.
    pub fn pick(&self, call_id: &[u8]) -> Option<(SocketAddr, TransportKind)> {
        let snap = self.snapshot.load();
        // One address is the answer blocklisted or not (see below): no
        // clock, no hash.
        if let [only] = &snap.dests[..] {
            return Some((only.addr, only.transport));
        }
        let now = self.clock.now_ms();
        let usable = |d: &Dest| d.state.usable(now);
        let (prio, skip_blocked) = match snap.dests.iter().find(|d| usable(d)) {
            Some(d) => (d.priority, true),
            None => (snap.dests.first()?.priority, false),
        };
        let group = || {
            snap.dests
                .iter()
                .filter(move |d| d.priority == prio && (!skip_blocked || usable(d)))
        };
        // A group of one (a peer with one target) is chosen whatever the
        // Call-ID hashes to: no hash.
        let mut members = group();
        let only = members.next()?;
        if members.next().is_none() {
            return Some((only.addr, only.transport));
        }
        let total: u64 = group().map(|d| u64::from(d.weight)).sum();
        let h = call_hash(call_id);
        let chosen = if total == 0 {
            let n = group().count() as u64;
            group().nth((h % n) as usize)
        } else {
            let mut at = h % total;
            group().find(|d| {
                let w = u64::from(d.weight);
                if at < w {
                    true
                } else {
                    at -= w;
                    false
                }
            })
        }?;
        Some((chosen.addr, chosen.transport))
    }

    /// Whether `ip` is one of its resolved addresses (lock-free).
    pub fn has_ip(&self, ip: std::net::IpAddr) -> bool {
        self.snapshot.load().dests.iter().any(|d| d.addr.ip() == ip)
    }

    /// The transport `addr` was resolved with (NAPTR may say TCP where the
    /// peer's `transport` key says UDP), if it is one of ours.
    pub fn transport_of(&self, addr: SocketAddr) -> Option<TransportKind> {
        let snap = self.snapshot.load();
        snap.dests
            .iter()
            .find(|d| d.addr == addr)
            .map(|d| d.transport)
    }

    /// Whether nothing is resolved (calls to it get 503).
    pub fn is_empty(&self) -> bool {
        self.snapshot.load().dests.is_empty()
    }

    /// Blocklists `addr` if it is one of ours; returns whether it was.
    /// Runs on the SIP path on a failure: no lock (the metric's label is
    /// built only then).
    pub fn block(&self, addr: SocketAddr, why: Failure) -> bool {
        self.block_for(addr, why, None)
    }

    /// [`PeerTargets::block`] for `secs` instead of `[dns] blocklist_secs`
    /// when given (a 503's `Retry-After`, RFC 3261 §21.5.4: not to be
    /// retried for that long), at most [`MAX_RETRY_AFTER_SECS`].
    pub fn block_for(&self, addr: SocketAddr, why: Failure, secs: Option<u64>) -> bool {
        let snap = self.snapshot.load();
        let Some(d) = snap.dests.iter().find(|d| d.addr == addr) else {
            return false;
        };
        let now = self.clock.now_ms();
        let was = d.state.blocked_until_ms.load(Ordering::Relaxed);
        let ms = secs.map_or(self.blocklist_ms, |s| {
            s.clamp(1, MAX_RETRY_AFTER_SECS) as i64 * 1000
        });
        d.state
            .blocked_until_ms
            .store(now.saturating_add(ms), Ordering::Relaxed);
        d.state.last_error.store(why as u8, Ordering::Relaxed);
        d.state.last_error_ms.store(now, Ordering::Relaxed);
        d.state.failures.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .target_failures
            .get_or_create(&self.failure_labels(&dest_label(d), why))
            .inc();
        if was <= now {
            tracing::warn!(peer = %self.peer, target = %addr, reason = why.as_str(), secs = ms / 1000, "target blocklisted: the next requests go to the next target");
        }
        true
    }

    /// One OPTIONS round: every address to ping; an address with
    /// `threshold` pings unanswered is marked down first.
    pub fn ping_round(&self, threshold: u32) -> Vec<(SocketAddr, TransportKind)> {
        let snap = self.snapshot.load();
        let mut out = Vec::with_capacity(snap.dests.len());
        for d in &snap.dests {
            let missed = d.state.ping_missed.fetch_add(1, Ordering::Relaxed);
            if missed >= threshold.max(1) && !d.state.down.swap(true, Ordering::Relaxed) {
                tracing::warn!(peer = %self.peer, target = %d.addr, missed, "target down: OPTIONS pings unanswered");
            }
            out.push((d.addr, d.transport));
        }
        out
    }

    /// An answer to a ping from `addr`: it is up again. Whether it is ours.
    pub fn ping_answered(&self, addr: SocketAddr) -> bool {
        let snap = self.snapshot.load();
        let mut hit = false;
        for d in snap.dests.iter().filter(|d| d.addr == addr) {
            hit = true;
            d.state.ping_missed.store(0, Ordering::Relaxed);
            if d.state.down.swap(false, Ordering::Relaxed) {
                tracing::info!(peer = %self.peer, target = %addr, "target up: it answers OPTIONS again");
            }
        }
        hit
    }

    /// Sets the `target_up` gauges (before a scrape).
    pub fn export_state(&self) {
        let now = self.clock.now_ms();
        for d in &self.snapshot.load().dests {
            let up = d.state.usable(now);
            self.metrics
                .target_up
                .get_or_create(&vec![
                    ("peer", self.peer.clone()),
                    ("target", dest_label(d)),
                ])
                .set(i64::from(up));
        }
    }

    /// Takes the answers of `old` for targets configured the same (a
    /// reload keeps serving what was resolved), with their blocklisting.
    pub fn adopt(&self, old: &PeerTargets) {
        for c in &self.configured {
            if !c.spec.is_name() {
                continue;
            }
            if let Some(o) = old.configured.iter().find(|o| o.spec == c.spec) {
                *lock(&c.answer) = lock(&o.answer).clone();
            }
        }
        *lock(&self.states) = lock(&old.states).clone();
        self.publish();
    }

    /// Stores a fresh answer for configured target `i` and republishes.
    fn answered(&self, i: usize, answer: Answer, expires_ms: i64) {
        let c = &self.configured[i];
        {
            let mut a = lock(&c.answer);
            *a = AnswerState {
                answer: Some(answer),
                resolved_ms: self.clock.now_ms(),
                expires_ms,
                stale: false,
                error: None,
            };
        }
        self.set_stale(i, false);
        self.publish();
    }

    /// Records a failed refresh of target `i`: its last good answer stays.
    fn failed(&self, i: usize, error: String) {
        let c = &self.configured[i];
        let had = {
            let mut a = lock(&c.answer);
            a.stale = a.answer.is_some();
            a.error = Some(error.clone());
            a.answer.is_some()
        };
        let labels = vec![("peer", self.peer.clone()), ("target", c.spec.to_string())];
        self.metrics.failures.get_or_create(&labels).inc();
        self.set_stale(i, had);
        if had {
            tracing::warn!(peer = %self.peer, target = %c.spec, error = %error, "DNS refresh failed: the last good answer stays in use");
        } else {
            tracing::warn!(peer = %self.peer, target = %c.spec, error = %error, "DNS name does not resolve: calls to this peer get 503 until it does");
        }
    }

    fn set_stale(&self, i: usize, stale: bool) {
        let labels = vec![
            ("peer", self.peer.clone()),
            ("target", self.configured[i].spec.to_string()),
        ];
        self.metrics
            .stale
            .get_or_create(&labels)
            .set(i64::from(stale));
    }

    /// Rebuilds the snapshot from every target's answer.
    fn publish(&self) {
        let mut states = lock(&self.states);
        let mut dests = Vec::new();
        for (i, c) in self.configured.iter().enumerate() {
            let a = lock(&c.answer);
            let Some(ans) = &a.answer else { continue };
            for r in &ans.dests {
                let state = states.entry((r.addr, r.transport)).or_default().clone();
                dests.push(Dest {
                    addr: r.addr,
                    transport: r.transport,
                    priority: (c.priority, r.priority),
                    weight: u32::from(c.weight.max(1)) * u32::from(r.weight),
                    from: i,
                    state,
                });
            }
        }
        dests.sort_by_key(|d| d.priority);
        let live: std::collections::HashSet<_> =
            dests.iter().map(|d| (d.addr, d.transport)).collect();
        // An address's series exist from its first answer (at 0 / up)
        // until it leaves the answers.
        for d in &dests {
            let target = dest_label(d);
            for why in Failure::ALL {
                let _ = self
                    .metrics
                    .target_failures
                    .get_or_create(&self.failure_labels(&target, why));
            }
        }
        states.retain(|k, _| {
            let keep = live.contains(k);
            if !keep {
                let target = addr_label(k.0, k.1);
                self.metrics.target_up.remove(&vec![
                    ("peer", self.peer.clone()),
                    ("target", target.clone()),
                ]);
                for why in Failure::ALL {
                    self.metrics
                        .target_failures
                        .remove(&self.failure_labels(&target, why));
                }
            }
            keep
        });
        self.snapshot.store(Arc::new(Snapshot { dests }));
        self.export_state();
    }

    fn failure_labels(&self, target: &str, why: Failure) -> Vec<(&'static str, String)> {
        vec![
            ("peer", self.peer.clone()),
            ("target", target.to_string()),
            ("reason", why.as_str().to_string()),
        ]
    }

    /// The peer as `GET /api/v1/peers` shows it.
    pub fn view(&self) -> PeerView {
        let now = self.clock.now_ms();
        let snap = self.snapshot.load();
        let targets = self
            .configured
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let a = lock(&c.answer).clone();
                TargetView {
                    target: c.spec.to_string(),
                    priority: c.priority,
                    weight: c.weight,
                    dns: c.spec.is_name(),
                    resolved_at: (a.resolved_ms > 0).then(|| crate::clock::rfc3339(a.resolved_ms)),
                    expires_at: (a.expires_ms > 0 && a.expires_ms < i64::MAX)
                        .then(|| crate::clock::rfc3339(a.expires_ms)),
                    ttl_secs: a.answer.as_ref().and_then(|x| x.ttl_secs),
                    stale: a.stale,
                    dns_error: a.error,
                    addresses: snap
                        .dests
                        .iter()
                        .filter(|d| d.from == i)
                        .map(|d| {
                            let until = d.state.blocked_until_ms.load(Ordering::Relaxed);
                            let err = Failure::from_u8(d.state.last_error.load(Ordering::Relaxed));
                            AddressView {
                                address: d.addr.to_string(),
                                transport: d.transport.as_str(),
                                priority: d.priority.1,
                                weight: d.weight,
                                state: if d.state.down.load(Ordering::Relaxed) {
                                    "down"
                                } else if until > now {
                                    "blocked"
                                } else {
                                    "up"
                                },
                                blocked_until: (until > now).then(|| crate::clock::rfc3339(until)),
                                failures: d.state.failures.load(Ordering::Relaxed),
                                last_error: err.map(Failure::as_str),
                                last_error_at: err.map(|_| {
                                    crate::clock::rfc3339(
                                        d.state.last_error_ms.load(Ordering::Relaxed),
                                    )
                                }),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        PeerView {
            name: self.peer.clone(),
            transport: self.transport.as_str(),
            targets,
        }
    }
}

/// The port a target without one uses (RFC 3263 §4.2).
/// `transport:address`, the `target` label of an address.
fn dest_label(d: &Dest) -> String {
    addr_label(d.addr, d.transport)
}

fn addr_label(addr: SocketAddr, transport: TransportKind) -> String {
    format!("{}:{}", transport.as_str(), addr)
}

/// FNV-1a over the Call-ID, then a finaliser (splitmix64) so nearby
/// Call-IDs spread over the weights.
fn call_hash(call_id: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in call_id {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A peer in `GET /api/v1/peers`.
#[derive(Debug, Serialize)]
pub struct PeerView {
    pub name: String,
    pub transport: &'static str,
    pub targets: Vec<TargetView>,
}

/// A configured target and what it resolved to.
#[derive(Debug, Serialize)]
pub struct TargetView {
    pub target: String,
    pub priority: u16,
    pub weight: u16,
    /// Whether it is resolved by DNS (a name) or an IP literal.
    pub dns: bool,
    pub resolved_at: Option<String>,
    pub expires_at: Option<String>,
    pub ttl_secs: Option<u32>,
    /// Served from the last good answer because refreshing fails.
    pub stale: bool,
    pub dns_error: Option<String>,
    pub addresses: Vec<AddressView>,
}

/// One resolved address and its failover state.
#[derive(Debug, Serialize)]
pub struct AddressView {
    pub address: String,
    pub transport: &'static str,
    /// SRV priority (0 without SRV).
    pub priority: u16,
    pub weight: u32,
    /// `up`, `blocked` (a failure, until `blocked_until`) or `down` (OPTIONS
    /// pings unanswered).
    pub state: &'static str,
    pub blocked_until: Option<String>,
    pub failures: u64,
    pub last_error: Option<&'static str>,
    pub last_error_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TargetEntry;
    use toml::Spanned;

    fn entry(t: &str, priority: u16, weight: u16) -> TargetEntry {
        TargetEntry {
            target: Spanned::new(0..0, t.to_string()),
            priority,
            weight,
        }
    }

    fn peer(entries: &[TargetEntry], clock: Clock) -> PeerTargets {
        let m = crate::metrics::Metrics::new();
        PeerTargets::new(
            "carrier",
            TransportKind::Udp,
            entries,
            60,
            clock,
            m.dns.clone(),
        )
        .unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn literals_resolve_at_once_and_priority_goes_first() {
        let p = peer(
            &[
                entry("127.0.0.9:5070", 2, 1),
                entry("sip:127.0.0.8:5080;transport=tcp", 1, 1),
            ],
            Clock::manual(1_000),
        );
        for id in ["a", "b", "c", "d"] {
            assert_eq!(
                p.pick(id.as_bytes()),
                Some((addr("127.0.0.8:5080"), TransportKind::Tcp))
            );
        }
        assert!(p.has_ip("127.0.0.9".parse().unwrap()));
    }

    /// The shortcuts (one address; one usable address of its priority)
    /// choose what the weighted pick would: that address, for any Call-ID,
    /// blocked or not.
    #[test]
    fn a_single_address_is_picked_without_hashing() {
        let one = peer(&[entry("127.0.0.8:5060", 1, 1)], Clock::manual(1_000));
        let two = peer(
            &[entry("127.0.0.8:5060", 1, 1), entry("127.0.0.9:5060", 1, 1)],
            Clock::manual(1_000),
        );
        for id in ["", "a", "b", "a84b4c76e66710@carrier.example"] {
            assert_eq!(one.pick(id.as_bytes()).unwrap().0, addr("127.0.0.8:5060"));
        }
        one.block(addr("127.0.0.8:5060"), Failure::Unreachable);
        two.block(addr("127.0.0.8:5060"), Failure::Unreachable);
        for id in ["", "a", "b", "a84b4c76e66710@carrier.example"] {
            assert_eq!(one.pick(id.as_bytes()).unwrap().0, addr("127.0.0.8:5060"));
            assert_eq!(two.pick(id.as_bytes()).unwrap().0, addr("127.0.0.9:5060"));
        }
    }

    #[test]
    fn a_blocked_address_is_skipped_until_its_time_is_up() {
        let clock = Clock::manual(1_000);
        let p = peer(
            &[entry("127.0.0.8:5060", 1, 1), entry("127.0.0.9:5060", 2, 1)],
            clock.clone(),
        );
        assert_eq!(p.pick(b"x").unwrap().0, addr("127.0.0.8:5060"));
        assert!(p.block(addr("127.0.0.8:5060"), Failure::Unreachable));
        assert!(!p.block(addr("127.0.0.7:5060"), Failure::Unreachable));
        assert_eq!(p.pick(b"x").unwrap().0, addr("127.0.0.9:5060"));
        clock.advance(std::time::Duration::from_secs(59));
        assert_eq!(p.pick(b"x").unwrap().0, addr("127.0.0.9:5060"));
        clock.advance(std::time::Duration::from_secs(1));
        assert_eq!(p.pick(b"x").unwrap().0, addr("127.0.0.8:5060"));
        // Everything blocked: the best is used anyway.
        p.block(addr("127.0.0.8:5060"), Failure::TcpRefused);
        p.block(addr("127.0.0.9:5060"), Failure::Status503);
        assert_eq!(p.pick(b"x").unwrap().0, addr("127.0.0.8:5060"));
        let v = p.view();
        assert_eq!(v.targets[0].addresses[0].state, "blocked");
        assert_eq!(v.targets[0].addresses[0].failures, 2);
        assert_eq!(v.targets[0].addresses[0].last_error, Some("tcp_refused"));
    }

    #[test]
    fn a_503s_retry_after_blocks_for_its_time_within_the_cap() {
        let clock = Clock::manual(1_000);
        let p = peer(
            &[entry("127.0.0.8:5060", 1, 1), entry("127.0.0.9:5060", 2, 1)],
            clock.clone(),
        );
        let best = addr("127.0.0.8:5060");
        assert!(p.block_for(best, Failure::Status503, Some(300)));
        clock.advance(std::time::Duration::from_secs(299));
        assert_eq!(p.pick(b"x").unwrap().0, addr("127.0.0.9:5060"));
        clock.advance(std::time::Duration::from_secs(1));
        assert_eq!(p.pick(b"x").unwrap().0, best);
        // A day asked for: an hour given.
        p.block_for(best, Failure::Status503, Some(86_400));
        clock.advance(std::time::Duration::from_secs(MAX_RETRY_AFTER_SECS - 1));
        assert_eq!(p.pick(b"x").unwrap().0, addr("127.0.0.9:5060"));
        clock.advance(std::time::Duration::from_secs(1));
        assert_eq!(p.pick(b"x").unwrap().0, best);
    }

    #[test]
    fn weights_share_calls_and_a_call_id_always_gets_the_same_address() {
        let p = peer(
            &[entry("127.0.0.8:5060", 1, 3), entry("127.0.0.9:5060", 1, 1)],
            Clock::manual(1_000),
        );
        let mut eight = 0;
        for i in 0..4000 {
            let id = format!("call-{i}@host");
            let first = p.pick(id.as_bytes()).unwrap().0;
            assert_eq!(p.pick(id.as_bytes()).unwrap().0, first, "deterministic");
            if first == addr("127.0.0.8:5060") {
                eight += 1;
            }
        }
        // 3:1 within a few percent.
        assert!((2850..=3150).contains(&eight), "{eight} of 4000");
    }

    #[test]
    fn an_unresolved_name_has_no_destination() {
        let p = peer(&[entry("carrier.test", 1, 1)], Clock::manual(1_000));
        assert!(p.is_empty());
        assert_eq!(p.pick(b"x"), None);
    }
}
