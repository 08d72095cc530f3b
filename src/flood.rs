//! Flood protection, as Kamailio's pike and secfilter do it: every source
//! address is counted per sampling window; an unknown source over its
//! limit is banned (its messages dropped before they are even scanned), a
//! configured peer over its limit is only limited (the proxy answers its
//! new calls 503 with Retry-After and lets in-dialog requests through), so
//! a busy carrier can never lock itself out. Requests whose User-Agent is
//! a known scanner's are dropped without an answer.
//!
//! The hot path takes no lock and allocates nothing: a fixed table of
//! atomic slots, 4-way set-associative, keyed by a keyed hash of the
//! source (IPv4 address, or IPv6 prefix: `ipv6_prefix`, a /64 by default,
//! since a host can send from any address of its prefix). A slot holds its
//! window number and count in one word, and the end of a ban, so checking
//! a banned source is two loads and a relaxed add to its seen counter.
//! Bans are also kept in a map (under a mutex, touched only when a ban
//! starts, is listed, removed or expires) for `GET /api/v1/bans`. Should a
//! slot be evicted (more than 4 busy sources hashing to one set), its
//! source is counted afresh and banned again from the map's entry.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::IpNet;

use crate::clock::Clock;
use crate::config::FloodConfig;
use crate::metrics::{FloodDrop, Metrics};

/// Slots in the table (a power of two): 64 B each, 1 MiB in all.
const SLOTS: usize = 1 << 14;
/// Slots a source may occupy (one set).
const WAYS: usize = 4;

/// What to do with a message, decided before it is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Handle it as usual.
    Pass,
    /// A configured peer over its limit: refuse what may be refused.
    OverLimit,
    /// Drop it silently (already counted).
    Drop,
}

/// One counted source.
#[repr(align(64))]
#[derive(Default)]
struct Slot {
    /// Hash of the source (0: free).
    key: AtomicU64,
    /// `(window << 32) | messages in it`.
    count: AtomicU64,
    /// Unix ms the source's ban ends (0: none).
    until: AtomicI64,
    /// Messages dropped during the current ban.
    seen: AtomicU64,
}

/// A ban, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// What is banned: the address (IPv4 /32) or its IPv6 prefix.
    pub net: IpNet,
    /// The address that tripped it.
    pub address: IpAddr,
    /// Unix ms it started and ends.
    pub since_ms: i64,
    pub until_ms: i64,
    /// Messages seen from it: those in the window that tripped the ban
    /// plus those dropped since.
    pub requests: u64,
    /// One of `crate::metrics::BAN_REASONS`.
    pub reason: &'static str,
}

/// The per-source counters and the bans (one per process, kept across
/// config reloads; limits are read from the config in use per message).
pub struct FloodGuard {
    slots: Box<[Slot]>,
    hasher: std::hash::RandomState,
    bans: Mutex<HashMap<IpNet, Ban>>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl FloodGuard {
    pub fn new(metrics: Arc<Metrics>, clock: Clock) -> FloodGuard {
        FloodGuard {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            hasher: std::hash::RandomState::new(),
            bans: Mutex::new(HashMap::new()),
            clock,
            metrics,
        }
    }

    /// Counts one message from `ip` and says what to do with it. `peer`:
    /// the source is a configured trunk or the PBX; `request`: the message
    /// is not a response (a peer's responses are never counted: they
    /// answer what we sent). Hot path: no lock, no allocation.
    pub fn admit(&self, cfg: &FloodConfig, ip: IpAddr, peer: bool, request: bool) -> Admit {
        if peer && !request || allowed(cfg, ip) {
            return Admit::Pass;
        }
        let net = key(ip, cfg.ipv6_prefix);
        let h = self.hash(&net);
        let now = self.clock.coarse_ms();
        let window = (now.max(0) as u64 / cfg.window_ms.max(1)) as u32;
        let bannable = !peer || cfg.ban_peers;
        let slot = self.slot(h, window, now);
        if bannable && slot.until.load(Relaxed) > now {
            slot.seen.fetch_add(1, Relaxed);
            self.metrics.flood().dropped(FloodDrop::Banned);
            return Admit::Drop;
        }
        let limit = if peer {
            cfg.peer_limit
        } else {
            cfg.unknown_limit
        };
        if limit == 0 {
            return Admit::Pass;
        }
        let n = count(slot, window);
        if n <= u64::from(limit) {
            return Admit::Pass;
        }
        if !bannable {
            self.metrics.flood().dropped(FloodDrop::PeerLimit);
            return Admit::OverLimit;
        }
        self.ban_slot(slot, net, ip, n, "flood", now, cfg.ban_secs);
        self.metrics.flood().dropped(FloodDrop::Flood);
        Admit::Drop
    }

    /// Whether `user_agent` is a scanner's (case-insensitive substring of
    /// one in `cfg.user_agents`). When it is, the drop is counted and an
    /// unknown source (`peer` false) is banned if `ban_scanners` says so.
    pub fn scanner(&self, cfg: &FloodConfig, ip: IpAddr, peer: bool, user_agent: &[u8]) -> bool {
        if !cfg.user_agents.matches(user_agent) || allowed(cfg, ip) {
            return false;
        }
        self.metrics.flood().dropped(FloodDrop::UserAgent);
        if !peer && cfg.ban_scanners {
            let net = key(ip, cfg.ipv6_prefix);
            let now = self.clock.coarse_ms();
            let window = (now.max(0) as u64 / cfg.window_ms.max(1)) as u32;
            let slot = self.slot(self.hash(&net), window, now);
            let n = count(slot, window);
            self.ban_slot(slot, net, ip, n, "user_agent", now, cfg.ban_secs);
        }
        true
    }

    /// Whether `ip` is banned now (a TCP connection from it is refused or
    /// closed). Lock-free; a peer is never banned unless `ban_peers`.
    pub fn is_banned(&self, cfg: &FloodConfig, ip: IpAddr, peer: bool) -> bool {
        if peer && !cfg.ban_peers || allowed(cfg, ip) {
            return false;
        }
        let h = self.hash(&key(ip, cfg.ipv6_prefix));
        let now = self.clock.coarse_ms();
        self.set(h)
            .iter()
            .any(|s| s.key.load(Relaxed) == h && s.until.load(Relaxed) > now)
    }

    /// Active bans, oldest first (expired ones are removed first).
    pub fn bans(&self) -> Vec<Ban> {
        let now = self.clock.coarse_ms();
        let mut bans = self.lock();
        self.expire(&mut bans, now);
        let mut out: Vec<Ban> = bans
            .values()
            .map(|b| {
                let mut b = b.clone();
                let h = self.hash(&b.net);
                if let Some(s) = self
                    .set(h)
                    .iter()
                    .find(|s| s.key.load(Relaxed) == h && s.until.load(Relaxed) == b.until_ms)
                {
                    b.requests += s.seen.load(Relaxed);
                }
                b
            })
            .collect();
        out.sort_by_key(|b| (b.since_ms, b.net));
        out
    }

    /// Lifts the ban covering `ip` (or equal to `net`): the source starts
    /// from a count of 0. Returns the ban lifted.
    pub fn unban(&self, target: &IpNet) -> Option<Ban> {
        let mut bans = self.lock();
        let net = bans
            .keys()
            .find(|n| {
                *n == target
                    || (target.prefix_len() == target.max_prefix_len()
                        && n.contains(&target.addr()))
            })
            .copied()?;
        let ban = bans.remove(&net)?;
        let h = self.hash(&net);
        for s in self.set(h) {
            if s.key.load(Relaxed) == h {
                s.until.store(0, Relaxed);
                s.count.store(0, Relaxed);
                s.seen.store(0, Relaxed);
            }
        }
        self.metrics.flood().set_active(bans.len());
        Some(ban)
    }

    /// Removes expired bans (the active-bans gauge follows); run every
    /// second by the server.
    pub fn sweep(&self) {
        let now = self.clock.coarse_ms();
        let mut bans = self.lock();
        self.expire(&mut bans, now);
    }

    fn expire(&self, bans: &mut HashMap<IpNet, Ban>, now: i64) {
        let before = bans.len();
        bans.retain(|_, b| b.until_ms > now);
        if bans.len() != before {
            tracing::info!(expired = before - bans.len(), "flood bans expired");
        }
        self.metrics.flood().set_active(bans.len());
    }

    /// Starts a ban (once: a ban already active for `net` stays as it is,
    /// and its slot is marked again in case it had been evicted).
    #[allow(clippy::too_many_arguments)]
    fn ban_slot(
        &self,
        slot: &Slot,
        net: IpNet,
        ip: IpAddr,
        requests: u64,
        reason: &'static str,
        now: i64,
        ban_secs: u64,
    ) {
        let mut bans = self.lock();
        if let Some(b) = bans.get(&net).filter(|b| b.until_ms > now) {
            slot.until.store(b.until_ms, Relaxed);
            return;
        }
        let until = now.saturating_add((ban_secs.max(1) * 1000) as i64);
        slot.seen.store(0, Relaxed);
        slot.until.store(until, Relaxed);
        bans.insert(
            net,
            Ban {
                net,
                address: ip,
                since_ms: now,
                until_ms: until,
                requests,
                reason,
            },
        );
        self.metrics.flood().banned(reason, bans.len());
        tracing::warn!(%ip, %net, reason, requests, ban_secs, "source banned");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpNet, Ban>> {
        self.bans.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hash(&self, net: &IpNet) -> u64 {
        let bits = match net.addr() {
            IpAddr::V4(a) => u128::from(a.to_bits()),
            IpAddr::V6(a) => a.to_bits() ^ (1 << 127),
        };
        self.hasher.hash_one((bits, net.prefix_len())) | 1
    }

    fn set(&self, h: u64) -> &[Slot] {
        let base = (h as usize) & (SLOTS - 1) & !(WAYS - 1);
        &self.slots[base..base + WAYS]
    }

    /// The slot of `h`, claiming one in its set if it has none: a free
    /// one, else one idle this window, else the least busy one that is
    /// not banned.
    fn slot(&self, h: u64, window: u32, now: i64) -> &Slot {
        let set = self.set(h);
        if let Some(s) = set.iter().find(|s| s.key.load(Relaxed) == h) {
            return s;
        }
        let score = |s: &Slot| {
            let c = s.count.load(Relaxed);
            if s.key.load(Relaxed) == 0 {
                0
            } else if s.until.load(Relaxed) > now {
                u64::MAX
            } else if (c >> 32) as u32 != window {
                1
            } else {
                2 + (c & 0xffff_ffff)
            }
        };
        let victim = set.iter().min_by_key(|s| score(s)).expect("WAYS > 0");
        victim.until.store(0, Relaxed);
        victim.seen.store(0, Relaxed);
        victim.count.store(u64::from(window) << 32, Relaxed);
        victim.key.store(h, Relaxed);
        victim
    }
}

/// Counts one message in `window`, returns the window's count so far.
fn count(slot: &Slot, window: u32) -> u64 {
    let mut cur = slot.count.load(Relaxed);
    loop {
        if (cur >> 32) as u32 == window {
            return (slot.count.fetch_add(1, Relaxed) & 0xffff_ffff) + 1;
        }
        let fresh = (u64::from(window) << 32) | 1;
        match slot
            .count
            .compare_exchange_weak(cur, fresh, Relaxed, Relaxed)
        {
            Ok(_) => return 1,
            Err(now) => cur = now,
        }
    }
}

/// What a source is counted as: its IPv4 address, or its IPv6 prefix
/// (IPv4-mapped IPv6 addresses count as the IPv4 address).
pub fn key(ip: IpAddr, ipv6_prefix: u8) -> IpNet {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpNet::from(IpAddr::V4(a)),
        IpAddr::V6(a) => ipnet::Ipv6Net::new(a, ipv6_prefix.clamp(1, 128))
            .map(|n| IpNet::V6(n.trunc()))
            .unwrap_or(IpNet::from(IpAddr::V6(a))),
    }
}

fn allowed(cfg: &FloodConfig, ip: IpAddr) -> bool {
    !cfg.allow.is_empty() && {
        let ip = ip.to_canonical();
        cfg.allow.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn guard() -> (FloodGuard, Clock, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let clock = Clock::manual(1_800_000_000_000);
        (
            FloodGuard::new(metrics.clone(), clock.clone()),
            clock,
            metrics,
        )
    }

    fn exposes(m: &Metrics, line: &str) -> bool {
        m.encode().lines().any(|l| l == line)
    }

    const STRANGER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
    const TRUNK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));

    #[test]
    fn an_unknown_source_over_the_default_limit_is_banned_until_the_ban_ends() {
        let (g, clock, m) = guard();
        let cfg = FloodConfig::default();
        for i in 0..cfg.unknown_limit {
            assert_eq!(g.admit(&cfg, STRANGER, false, true), Admit::Pass, "{i}");
        }
        assert!(exposes(&m, "sipscreen_bans_active 0"));
        assert_eq!(g.admit(&cfg, STRANGER, false, true), Admit::Drop);
        assert_eq!(g.admit(&cfg, STRANGER, false, false), Admit::Drop);
        assert!(g.is_banned(&cfg, STRANGER, false));
        let bans = g.bans();
        assert_eq!(bans.len(), 1);
        let b = &bans[0];
        assert_eq!(
            (b.address, b.net.to_string().as_str(), b.reason),
            (STRANGER, "192.0.2.7/32", "flood")
        );
        assert_eq!(b.until_ms - b.since_ms, 300_000);
        assert_eq!(b.requests, u64::from(cfg.unknown_limit) + 2);
        assert!(exposes(&m, "sipscreen_bans_total{reason=\"flood\"} 1"));
        assert!(exposes(&m, "sipscreen_bans_active 1"));
        assert!(exposes(
            &m,
            "sipscreen_flood_dropped_total{reason=\"flood\"} 1"
        ));
        assert!(exposes(
            &m,
            "sipscreen_flood_dropped_total{reason=\"banned\"} 1"
        ));

        // One second before the end it still holds; then it is over, and
        // the source starts from a fresh count.
        clock.advance(Duration::from_secs(299));
        assert_eq!(g.admit(&cfg, STRANGER, false, true), Admit::Drop);
        clock.advance(Duration::from_secs(1));
        g.sweep();
        assert!(exposes(&m, "sipscreen_bans_active 0"), "{}", m.encode());
        assert!(g.bans().is_empty());
        assert!(!g.is_banned(&cfg, STRANGER, false));
        assert_eq!(g.admit(&cfg, STRANGER, false, true), Admit::Pass);
    }

    #[test]
    fn a_slow_source_is_never_banned() {
        let (g, clock, _) = guard();
        let cfg = FloodConfig::default();
        // The limit's worth in every window, for a minute.
        for _ in 0..30 {
            for _ in 0..cfg.unknown_limit {
                assert_eq!(g.admit(&cfg, STRANGER, false, true), Admit::Pass);
            }
            clock.advance(Duration::from_millis(cfg.window_ms));
        }
        assert!(g.bans().is_empty());
    }

    #[test]
    fn a_peer_is_limited_never_banned_and_its_responses_are_not_counted() {
        let (g, clock, m) = guard();
        let cfg = FloodConfig {
            peer_limit: 100,
            ..FloodConfig::default()
        };
        for _ in 0..10_000 {
            assert_eq!(g.admit(&cfg, TRUNK, true, false), Admit::Pass);
        }
        for _ in 0..100 {
            assert_eq!(g.admit(&cfg, TRUNK, true, true), Admit::Pass);
        }
        for _ in 0..50 {
            assert_eq!(g.admit(&cfg, TRUNK, true, true), Admit::OverLimit);
        }
        assert!(g.bans().is_empty());
        assert!(!g.is_banned(&cfg, TRUNK, true));
        assert!(exposes(
            &m,
            "sipscreen_flood_dropped_total{reason=\"peer_limit\"} 50"
        ));
        clock.advance(Duration::from_millis(cfg.window_ms));
        assert_eq!(g.admit(&cfg, TRUNK, true, true), Admit::Pass);
        // With ban_peers the same peer is banned.
        let strict = FloodConfig {
            ban_peers: true,
            ..cfg.clone()
        };
        for _ in 0..100 {
            g.admit(&strict, TRUNK, true, true);
        }
        assert_eq!(g.admit(&strict, TRUNK, true, true), Admit::Drop);
        assert_eq!(g.bans()[0].address, TRUNK);
        // A peer limit of 0 is no limit.
        let open = FloodConfig {
            peer_limit: 0,
            ..FloodConfig::default()
        };
        for _ in 0..100_000 {
            assert_eq!(g.admit(&open, TRUNK, true, true), Admit::Pass);
        }
    }

    #[test]
    fn allowed_networks_are_never_counted() {
        let (g, _, _) = guard();
        let cfg = FloodConfig {
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            ..FloodConfig::default()
        };
        for _ in 0..10_000 {
            assert_eq!(g.admit(&cfg, STRANGER, false, true), Admit::Pass);
        }
        assert!(!g.scanner(&cfg, STRANGER, false, b"friendly-scanner"));
        assert!(g.bans().is_empty());
    }

    #[test]
    fn ipv6_sources_are_banned_per_prefix() {
        let (g, _, _) = guard();
        let cfg = FloodConfig::default();
        let a: IpAddr = "2001:db8:1:2::10".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::10".parse().unwrap();
        for i in 0..=cfg.unknown_limit {
            let ip = if i % 2 == 0 { a } else { b };
            g.admit(&cfg, ip, false, true);
        }
        assert!(g.is_banned(&cfg, b, false));
        assert!(!g.is_banned(&cfg, other, false));
        assert_eq!(g.bans()[0].net.to_string(), "2001:db8:1:2::/64");
        // IPv4-mapped IPv6 is the IPv4 address.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(key(mapped, 64), key(STRANGER, 64));
        // Lifting by any address inside the prefix.
        let lifted = g.unban(&IpNet::from(b)).unwrap();
        assert_eq!(lifted.address, a);
        assert!(!g.is_banned(&cfg, a, false));
        assert_eq!(g.admit(&cfg, a, false, true), Admit::Pass);
    }

    proptest::proptest! {
        /// The one-pass matcher finds exactly what a case-blind comparison
        /// of every name at every offset finds.
        #[test]
        fn user_agents_match_a_case_blind_substring_of_a_name(
            hay in "[a-cA-C-]{0,24}",
            names in proptest::collection::vec("[a-cA-C-]{0,4}", 0..4),
        ) {
            let naive = names.iter().any(|n| {
                !n.is_empty()
                    && hay
                        .as_bytes()
                        .windows(n.len())
                        .any(|w| w.eq_ignore_ascii_case(n.as_bytes()))
            });
            let agents = crate::config::UserAgents::new(names).unwrap();
            proptest::prop_assert_eq!(agents.matches(hay.as_bytes()), naive);
        }
    }

    #[test]
    fn scanner_user_agents_are_dropped_and_their_source_banned() {
        let (g, _, m) = guard();
        let cfg = FloodConfig::default();
        assert!(!g.scanner(&cfg, STRANGER, false, b"Asterisk PBX 20.1"));
        assert!(g.scanner(&cfg, STRANGER, false, b"Friendly-Scanner"));
        assert!(g.is_banned(&cfg, STRANGER, false));
        assert_eq!(g.bans()[0].reason, "user_agent");
        assert!(g.scanner(&cfg, TRUNK, true, b"sipcli/v1.8"));
        assert!(!g.is_banned(&cfg, TRUNK, true), "peers are never banned");
        assert!(exposes(
            &m,
            "sipscreen_flood_dropped_total{reason=\"user_agent\"} 2"
        ));
        assert!(exposes(&m, "sipscreen_bans_total{reason=\"user_agent\"} 1"));
        let none = FloodConfig {
            user_agents: crate::config::UserAgents::new(vec![]).unwrap(),
            ..FloodConfig::default()
        };
        assert!(!g.scanner(&none, TRUNK, true, b"friendly-scanner"));
    }

    #[test]
    fn unban_lifts_the_ban_and_restarts_the_count() {
        let (g, _, m) = guard();
        let cfg = FloodConfig::default();
        while g.admit(&cfg, STRANGER, false, true) == Admit::Pass {}
        assert!(g.unban(&"203.0.113.1/32".parse().unwrap()).is_none());
        let lifted = g.unban(&IpNet::from(STRANGER)).expect("banned");
        assert_eq!(lifted.reason, "flood");
        assert!(exposes(&m, "sipscreen_bans_active 0"));
        for _ in 0..cfg.unknown_limit {
            assert_eq!(g.admit(&cfg, STRANGER, false, true), Admit::Pass);
        }
        assert_eq!(g.admit(&cfg, STRANGER, false, true), Admit::Drop);
        assert!(exposes(&m, "sipscreen_bans_total{reason=\"flood\"} 2"));
    }

    /// Many sources at once (more than the table holds): every one that
    /// floods is banned, and the ones that keep to the limit are not.
    #[test]
    fn a_crowd_of_sources_is_counted_apart() {
        let (g, _, _) = guard();
        let cfg = FloodConfig::default();
        let quiet: IpAddr = "198.51.100.200".parse().unwrap();
        for round in 0..=cfg.unknown_limit {
            for i in 0..200u32 {
                let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
                g.admit(&cfg, ip, false, true);
            }
            if round < cfg.unknown_limit {
                assert_eq!(g.admit(&cfg, quiet, false, true), Admit::Pass);
            }
        }
        assert_eq!(g.bans().len(), 200);
        assert!(!g.is_banned(&cfg, quiet, false));
    }
}
