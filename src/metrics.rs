//! One `Metrics` struct with its own registry, passed to whoever counts.
//!
//! Label values are `&'static str` from closed sets (methods outside the
//! known list count as `other`), so counting never allocates and the number
//! of series stays bounded whatever peers send.
//!
//! Every series whose labels come from a closed set is created at 0 when
//! the registry is (sinks when they are registered), as Prometheus'
//! instrumentation guidelines ask: a series that appears with its first
//! event makes `rate()` over a fresh sidecar empty instead of 0, and the
//! alerts over it blind. The counters the SIP path bumps per message are
//! fetched once here, so counting takes no lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use rustc_hash::FxHashMap;

use crate::config::{TransportKind, Verdict};
use crate::screening::Direction;
use crate::screening::verstat::Attest;
use crate::sip::Method;

type L1 = [(&'static str, &'static str); 1];
type L2 = [(&'static str, &'static str); 2];
type L4 = [(&'static str, &'static str); 4];

/// Method slots of the message counter cache: every `Method`, then one
/// for responses.
const METHOD_SLOTS: usize = Method::Other as usize + 2;
/// Slots of the message counter cache: transport x method x side.
const MESSAGE_SLOTS: usize = TransportKind::ALL.len() * METHOD_SLOTS * 3;

/// Every reason `sip_error` is given, by where it comes from. Each is
/// exported at 0 from the start; a reason missing here is still counted
/// (created on first use), and a unit test keeps the list complete.
pub const SIP_ERROR_REASONS: &[&str] = &[
    // sip::message::ScanError
    "scan_empty",
    "scan_start_line",
    "scan_header_line",
    "scan_too_many_headers",
    // sip::Message::validate
    "headers_unterminated",
    "start_line",
    "version",
    "method",
    "request_uri",
    "uri_scheme",
    "request_uri_headers",
    "missing_via",
    "missing_from",
    "missing_to",
    "missing_call_id",
    "missing_cseq",
    "cseq",
    "cseq_method",
    "max_forwards",
    "accept",
    "status_line",
    "response_headers",
    "duplicate_header",
    "name_addr",
    "via",
    "content_length",
    "date",
    "contact",
    // proxy: requests
    "too_large",
    "forbidden_source",
    "proxy_require",
    "loop",
    "route",
    "no_trunk",
    "verstat_failed",
    "no_target",
    "peer_limit",
    // proxy: responses
    "response_unknown_source",
    "response_not_ours",
    "response_no_via",
    "response_transport",
    "response_unroutable",
    // sip::framing::FramingError
    "tcp_too_large",
    "tcp_garbage",
    "tcp_bad_content_length",
    "tcp_missing_content_length",
    // transport: SendError, receive, connect, accept
    "send_no_socket",
    "send_udp",
    "send_queue_full",
    "send_tcp_limit",
    "udp_receive",
    "tcp_connect",
    "tcp_limit",
    // transport: TLS
    "send_no_tls",
    "tls_handshake",
    // proxy: a forwarded request its next hop could not be reached for
    "unreachable",
];

/// `reason` labels of `tls_handshakes` besides `ok` (see
/// `crate::tls::failure_reason`), each exported at 0.
pub const TLS_HANDSHAKE_RESULTS: &[&str] = &[
    "ok",
    "unknown_issuer",
    "expired",
    "bad_name",
    "bad_certificate",
    "no_client_certificate",
    "alert",
    "incompatible",
    "timeout",
    "closed",
    "no_config",
    "refused",
    "other",
];

/// Components whose panics are caught and counted.
pub const PANIC_COMPONENTS: [&str; 3] = ["udp", "tcp", "tls"];

/// Finite buckets of [`TimeHistogram`]: 250 ns doubling to 131 ms.
const TIME_BUCKETS: usize = 20;
/// The first bucket's upper bound, in nanoseconds.
const TIME_BASE_NS: u64 = 250;
/// The same in seconds, the labels' base (`250e-9 × 2^i`, exact).
const TIME_BASE_SECONDS: f64 = 250e-9;

/// A histogram of durations with fixed buckets (250 ns × 2^i, i < 20, and
/// +Inf) kept in atomics: an observation is two relaxed atomic adds and
/// takes no lock. prometheus-client's `Histogram` takes a mutex per
/// observation, and every INVITE is observed, by the UDP thread and the
/// TCP and TLS tasks alike, so they would contend on it. Counts are kept
/// per bucket (the encoder makes them cumulative, and the count is their
/// total, so `_count` always equals the `+Inf` bucket); the sum in whole
/// nanoseconds, so a scrape may see the buckets and the sum an
/// observation apart, which Prometheus tolerates.
#[derive(Debug, Clone, Default)]
struct TimeHistogram {
    inner: Arc<TimeHistogramInner>,
}

#[derive(Debug, Default)]
struct TimeHistogramInner {
    buckets: [AtomicU64; TIME_BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl TimeHistogram {
    fn observe(&self, seconds: f64) {
        // `as` saturates: NaN and negatives count as 0, huge values as +Inf.
        let ns = (seconds * 1e9) as u64;
        let mut i = time_bucket(ns).min(TIME_BUCKETS);
        // The integer guess can be one off at a bound; the bounds decide,
        // as they do for prometheus-client (`seconds <= bound`).
        while i > 0 && seconds <= time_bound(i - 1) {
            i -= 1;
        }
        while i < TIME_BUCKETS && seconds > time_bound(i) {
            i += 1;
        }
        let h = &self.inner;
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// The upper bound of finite bucket `i`, in seconds.
fn time_bound(i: usize) -> f64 {
    TIME_BASE_SECONDS * 2f64.powi(i as i32)
}

/// About the bucket of an observation of `ns` nanoseconds: the least `i`
/// with `ns <= 250 ns × 2^i` (20 and above: +Inf).
fn time_bucket(ns: u64) -> usize {
    let q = ns.div_ceil(TIME_BASE_NS);
    if q <= 1 {
        0
    } else {
        (u64::BITS - (q - 1).leading_zeros()) as usize
    }
}

impl TypedMetric for TimeHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for TimeHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.inner;
        let mut buckets = [(0.0, 0u64); TIME_BUCKETS + 1];
        for (i, b) in buckets.iter_mut().enumerate() {
            let bound = if i == TIME_BUCKETS {
                f64::INFINITY
            } else {
                time_bound(i)
            };
            *b = (bound, h.buckets[i].load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = h.sum_ns.load(Ordering::Relaxed) as f64 * 1e-9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Every metric sipscreen exports (names are prefixed `sipscreen_`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The series of `sip_messages` (SIP messages received, by transport,
    /// kind, method and side), each fetched from the family once: a family
    /// lookup hashes every label and takes a lock, per message.
    message_counters: Box<[Counter]>,
    /// INVITEs screened (by direction and verdict): the family's four
    /// series, indexed by `screened_slot`.
    screened_counters: [Counter; 4],
    /// Inbound calls by STIR/SHAKEN attestation (`A`, `B`, `C`, `failed`,
    /// `none`) and verdict (`log`, `exception`, `rejected`: answered 608):
    /// all fifteen series, indexed by `attested_slot`.
    attested_counters: [Counter; 15],
    /// Time from receiving an INVITE to handing it to the transport.
    screening_seconds: TimeHistogram,
    /// Entries in the exception set, by type. Steady: the list size; a
    /// jump to 0 after a reload means the source went empty.
    exception_entries: Family<L1, Gauge>,
    /// Config reloads by result (`ok` / `error`).
    config_reloads: Family<L1, Counter>,
    /// SIP messages refused or dropped, by reason.
    sip_errors: Family<L1, Counter>,
    /// The `sip_errors` series of [`SIP_ERROR_REASONS`], fetched once
    /// (read-only after construction: no lock per refusal).
    error_counters: FxHashMap<&'static str, Counter>,
    /// Open TCP connections. Steady: the number of peers; a climb without
    /// more peers means connections are not being closed.
    tcp_connections: Gauge,
    /// Open SIP TLS connections (after the handshake).
    tls_connections: Gauge,
    /// TLS handshakes by direction (`in`: accepted, `out`: opened) and
    /// result (`ok` or why it failed).
    tls_handshakes: Family<L2, Counter>,
    /// 1 while the last reload succeeded, 0 after a failed one.
    config_last_reload_ok: Gauge,
    /// Calls being tracked (dialogs between INVITE and end).
    calls_active: Gauge,
    /// Finished calls by verdict and outcome.
    calls_finished: Family<L2, Counter>,
    /// Calls ended because nothing was heard of them for max_call_secs.
    calls_expired: Counter,
    /// Calls in progress restored from the store at start.
    calls_restored: Counter,
    /// Call events the SIP path dropped (tracker channel full) or calls not
    /// tracked (table full). Steady: 0.
    call_events_dropped: Counter,
    /// CRM events waiting in the outbox.
    crm_outbox_depth: Gauge,
    /// 1 while the store answers (and, on PostgreSQL, the change-log
    /// listener is connected); 0: serving the last list, writes refused.
    store_connected: Gauge,
    /// How far this node's list may be behind the store, seconds.
    store_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Age of the oldest undelivered CRM event, seconds.
    crm_outbox_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// CRM delivery attempts by sink and result.
    crm_deliveries: Family<Vec<(&'static str, String)>, Counter>,
    /// Events moved to the dead-letter table, by sink.
    crm_dead_letters: Family<Vec<(&'static str, String)>, Counter>,
    /// Panics caught while handling a SIP message, by component
    /// (`udp`/`tcp`). Steady: 0; each one is a bug, logged with the peer.
    panics: Family<L1, Counter>,
    /// 1 while a CRM sink can send (a Bitrix24 application has tokens),
    /// by sink. 0: its events wait in the outbox.
    crm_connected: Family<Vec<(&'static str, String)>, Gauge>,
    /// Registers whose answer carried a `LEAD_CREATION_ERROR`, by sink.
    crm_lead_creation_errors: Family<Vec<(&'static str, String)>, Counter>,
    /// Flood protection's series.
    flood: FloodMetrics,
    /// Resolved targets and their failover state (`crate::dns`).
    pub dns: DnsMetrics,
}

/// Labels `peer` and `target` (a configured target, or a resolved
/// `transport:address`): bounded by the config and its DNS answers.
type PeerLabels = Vec<(&'static str, String)>;

/// The target metrics: DNS refreshes and per-address failover state.
#[derive(Debug, Clone, Default)]
pub struct DnsMetrics {
    /// Refreshes of a configured name that failed, by peer and target.
    pub failures: Family<PeerLabels, Counter>,
    /// 1 while a name is served from its last good answer after failing.
    pub stale: Family<PeerLabels, Gauge>,
    /// Failures seen from a resolved address, by peer, target and reason.
    pub target_failures: Family<PeerLabels, Counter>,
    /// 1 if a resolved address is in use, 0 while it is blocklisted.
    pub target_up: Family<PeerLabels, Gauge>,
}

impl DnsMetrics {
    fn register(registry: &mut Registry) -> DnsMetrics {
        let m = DnsMetrics {
            failures: Family::default(),
            stale: Family::default(),
            target_failures: Family::default(),
            target_up: Family::default(),
        };
        registry.register(
            "dns_failures",
            "Failed DNS refreshes of a peer's target name (the last good answer stays in use)",
            m.failures.clone(),
        );
        registry.register(
            "dns_stale",
            "1 while a peer's target name is served from its last good answer because refreshing it fails",
            m.stale.clone(),
        );
        registry.register(
            "target_failures",
            "Failures seen from a peer's resolved address, by reason (icmp_unreachable/tcp_refused/tls_failed/status_503)",
            m.target_failures.clone(),
        );
        registry.register(
            "target_up",
            "1 if a peer's resolved address takes calls, 0 while it is blocklisted or down by OPTIONS pings",
            m.target_up.clone(),
        );
        m
    }
}

/// Flood protection's series (`crate::flood`): bans started by reason,
/// bans active, messages dropped by reason. Every series is fetched once.
#[derive(Debug)]
pub struct FloodMetrics {
    bans: [Counter; 2],
    active: Gauge,
    dropped: [Counter; 4],
}

/// Ban reasons (the `reason` label of `bans_total`).
pub const BAN_REASONS: [&str; 2] = ["flood", "user_agent"];
/// Drop reasons (the `reason` label of `flood_dropped_total`), in
/// [`FloodDrop`] order.
pub const FLOOD_DROP_REASONS: [&str; 4] = ["banned", "flood", "user_agent", "peer_limit"];

/// Why flood protection dropped (or refused) a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodDrop {
    /// From a banned source.
    Banned = 0,
    /// The message that tripped a ban.
    Flood = 1,
    /// A scanner's User-Agent.
    UserAgent = 2,
    /// A peer's request over its limit.
    PeerLimit = 3,
}

impl FloodMetrics {
    fn register(registry: &mut Registry) -> FloodMetrics {
        let bans = Family::<L1, Counter>::default();
        registry.register(
            "bans",
            "Sources banned by flood protection, by reason (flood/user_agent)",
            bans.clone(),
        );
        let active = Gauge::default();
        registry.register(
            "bans_active",
            "Sources banned now. Steady: 0; a climb is an attack (see GET /api/v1/bans)",
            active.clone(),
        );
        let dropped = Family::<L1, Counter>::default();
        registry.register(
            "flood_dropped",
            "SIP messages dropped or refused by flood protection, by reason (banned source, flood: the message that tripped a ban, user_agent: a scanner, peer_limit: a peer over its limit, answered 503 or passed if in-dialog)",
            dropped.clone(),
        );
        FloodMetrics {
            bans: BAN_REASONS.map(|r| bans.get_or_create(&[("reason", r)]).clone()),
            active,
            dropped: FLOOD_DROP_REASONS.map(|r| dropped.get_or_create(&[("reason", r)]).clone()),
        }
    }

    /// Counts a message dropped for `reason`.
    pub fn dropped(&self, reason: FloodDrop) {
        self.dropped[reason as usize].inc();
    }

    /// Counts a ban started for `reason`; `active` bans now.
    pub fn banned(&self, reason: &str, active: usize) {
        if let Some(i) = BAN_REASONS.iter().position(|r| *r == reason) {
            self.bans[i].inc();
        }
        self.set_active(active);
    }

    pub fn set_active(&self, n: usize) {
        self.active.set(n as i64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sipscreen");
        let sip_messages = Family::<L4, Counter>::default();
        registry.register(
            "sip_messages",
            "SIP messages received, by transport, kind (request/response), method and side (trunk/pbx/unknown)",
            sip_messages.clone(),
        );
        let calls_screened = Family::<L2, Counter>::default();
        registry.register(
            "calls_screened",
            "Dialog-creating INVITEs screened, by direction and verdict",
            calls_screened.clone(),
        );
        let calls_attested = Family::<L2, Counter>::default();
        registry.register(
            "calls_attested",
            "Inbound calls by the trusted trunk's STIR/SHAKEN attestation (A/B/C/failed/none) and verdict (log/exception/rejected)",
            calls_attested.clone(),
        );
        let mut attested_counters: [Counter; 15] = Default::default();
        for a in Attest::ALL {
            for v in ATTESTED_VERDICTS {
                attested_counters[attested_slot(a, v)] = calls_attested
                    .get_or_create(&[("attest", a.as_str()), ("verdict", v)])
                    .clone();
            }
        }
        let screening_seconds = TimeHistogram::default();
        registry.register(
            "screening_duration_seconds",
            "Time from an INVITE's arrival to its forwarding (parse, classify, normalise, look up, tag, serialise)",
            screening_seconds.clone(),
        );
        let exception_entries = Family::<L1, Gauge>::default();
        registry.register(
            "exception_entries",
            "Entries in the in-memory exception set, by type (phone/email)",
            exception_entries.clone(),
        );
        let config_reloads = Family::<L1, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads, by result (ok/error)",
            config_reloads.clone(),
        );
        let sip_errors = Family::<L1, Counter>::default();
        registry.register(
            "sip_errors",
            "SIP messages refused or dropped, by reason",
            sip_errors.clone(),
        );
        let tcp_connections = Gauge::default();
        registry.register(
            "tcp_connections",
            "Open SIP TCP connections",
            tcp_connections.clone(),
        );
        let tls_connections = Gauge::default();
        registry.register(
            "tls_connections",
            "Open SIP TLS connections (handshake done)",
            tls_connections.clone(),
        );
        let tls_handshakes = Family::<L2, Counter>::default();
        registry.register(
            "tls_handshakes",
            "SIP TLS handshakes, by direction (in/out) and result (ok, or the failure reason)",
            tls_handshakes.clone(),
        );
        for d in ["in", "out"] {
            for r in TLS_HANDSHAKE_RESULTS {
                let _ = tls_handshakes.get_or_create(&[("direction", d), ("result", r)]);
            }
        }
        let config_last_reload_ok = Gauge::default();
        config_last_reload_ok.set(1);
        registry.register(
            "config_last_reload_ok",
            "1 if the last config reload succeeded (or none was tried), 0 if it failed",
            config_last_reload_ok.clone(),
        );
        let calls_active = Gauge::default();
        registry.register(
            "calls_active",
            "Calls being tracked (INVITE seen, not ended)",
            calls_active.clone(),
        );
        let calls_finished = Family::<L2, Counter>::default();
        registry.register(
            "calls_finished",
            "Finished calls, by verdict and outcome (completed/failed/cancelled/expired)",
            calls_finished.clone(),
        );
        let calls_expired = Counter::default();
        registry.register(
            "calls_expired",
            "Calls ended by the tracker after [calls] max_call_secs without SIP activity",
            calls_expired.clone(),
        );
        let calls_restored = Counter::default();
        registry.register(
            "calls_restored",
            "Calls in progress restored from the store at start (kept across a restart)",
            calls_restored.clone(),
        );
        let call_events_dropped = Counter::default();
        registry.register(
            "call_events_dropped",
            "Call events not tracked because the tracker was behind or full",
            call_events_dropped.clone(),
        );
        let crm_outbox_depth = Gauge::default();
        registry.register(
            "crm_outbox_depth",
            "CRM events waiting for delivery",
            crm_outbox_depth.clone(),
        );
        let store_connected = Gauge::default();
        registry.register(
            "store_connected",
            "1 while the store answers and this node follows its change log; 0: serving the last list, writes refused",
            store_connected.clone(),
        );
        // The embedded store is always there; a follower sets it otherwise.
        store_connected.set(1);
        let store_lag = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "store_lag_seconds",
            "0 while this node has applied every change the store notified; else seconds since it last had",
            store_lag.clone(),
        );
        let crm_outbox_oldest_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "crm_outbox_oldest_age_seconds",
            "Age of the oldest undelivered CRM event",
            crm_outbox_oldest_age.clone(),
        );
        let crm_deliveries = Family::<Vec<(&'static str, String)>, Counter>::default();
        registry.register(
            "crm_deliveries",
            "CRM delivery attempts, by sink and result (ok/retry/rate_limited/rejected)",
            crm_deliveries.clone(),
        );
        let crm_dead_letters = Family::<Vec<(&'static str, String)>, Counter>::default();
        registry.register(
            "crm_dead_letters",
            "CRM events given up and moved to the dead-letter table, by sink",
            crm_dead_letters.clone(),
        );
        let crm_connected = Family::<Vec<(&'static str, String)>, Gauge>::default();
        registry.register(
            "crm_connected",
            "1 while a CRM sink can send, 0 while it waits to be connected (its events stay queued), by sink",
            crm_connected.clone(),
        );
        let crm_lead_creation_errors = Family::<Vec<(&'static str, String)>, Counter>::default();
        registry.register(
            "crm_lead_creation_errors",
            "Calls Bitrix24 registered but could not create their lead for (LEAD_CREATION_ERROR), by sink",
            crm_lead_creation_errors.clone(),
        );
        let panics = Family::<L1, Counter>::default();
        registry.register(
            "panics",
            "Panics caught while handling a SIP message, by component (udp/tcp): the message was dropped, the receiver went on",
            panics.clone(),
        );
        let flood = FloodMetrics::register(&mut registry);
        // Known label sets start at 0, so dashboards and rate() see a
        // series before the first event.
        let mut screened_counters: [Counter; 4] = Default::default();
        for d in [Direction::Inbound, Direction::Outbound] {
            for v in [Verdict::Log, Verdict::Exception] {
                screened_counters[screened_slot(d, v)] = calls_screened
                    .get_or_create(&[("direction", d.as_str()), ("verdict", v.as_str())])
                    .clone();
            }
        }
        for v in ["log", "exception"] {
            for o in ["completed", "failed", "cancelled", "expired"] {
                let _ = calls_finished.get_or_create(&[("verdict", v), ("outcome", o)]);
            }
        }
        for r in ["ok", "error"] {
            let _ = config_reloads.get_or_create(&[("result", r)]);
        }
        for c in PANIC_COMPONENTS {
            let _ = panics.get_or_create(&[("component", c)]);
        }
        for t in ["phone", "email"] {
            let _ = exception_entries.get_or_create(&[("type", t)]);
        }
        let error_counters = SIP_ERROR_REASONS
            .iter()
            .map(|&r| (r, sip_errors.get_or_create(&[("reason", r)]).clone()))
            .collect();
        let mut message_counters = Vec::with_capacity(MESSAGE_SLOTS);
        for transport in TransportKind::ALL {
            for method in Method::ALL.map(Some).into_iter().chain([None]) {
                for side in Origin::ALL {
                    debug_assert_eq!(
                        message_counters.len(),
                        message_slot(transport, method, side)
                    );
                    let kind = if method.is_some() {
                        "request"
                    } else {
                        "response"
                    };
                    message_counters.push(
                        sip_messages
                            .get_or_create(&[
                                ("transport", transport.as_str()),
                                ("kind", kind),
                                ("method", method.map_or("response", Method::label)),
                                ("side", side.label()),
                            ])
                            .clone(),
                    );
                }
            }
        }
        let dns = DnsMetrics::register(&mut registry);
        Metrics {
            dns,
            calls_active,
            calls_finished,
            calls_expired,
            calls_restored,
            call_events_dropped,
            crm_outbox_depth,
            store_connected,
            store_lag,
            crm_outbox_oldest_age,
            crm_deliveries,
            crm_dead_letters,
            registry,
            message_counters: message_counters.into_boxed_slice(),
            screened_counters,
            attested_counters,
            screening_seconds,
            exception_entries,
            config_reloads,
            sip_errors,
            error_counters,
            tcp_connections,
            tls_connections,
            tls_handshakes,
            config_last_reload_ok,
            panics,
            flood,
            crm_connected,
            crm_lead_creation_errors,
        }
    }

    /// Counts one received SIP message (`method`: `None` for a response).
    pub fn message(&self, transport: TransportKind, method: Option<Method>, side: Origin) {
        self.message_counters[message_slot(transport, method, side)].inc();
    }

    /// Counts one screened call.
    pub fn screened(&self, direction: Direction, verdict: Verdict) {
        self.screened_counters[screened_slot(direction, verdict)].inc();
    }

    /// Counts one inbound call by attestation; `verdict` is `log`,
    /// `exception` or `rejected`.
    pub fn attested(&self, attest: Attest, verdict: &'static str) {
        self.attested_counters[attested_slot(attest, verdict)].inc();
    }

    /// Records how long one INVITE took, in seconds.
    pub fn screening_time(&self, seconds: f64) {
        self.screening_seconds.observe(seconds);
    }

    /// Sets the exception set's size.
    pub fn set_exception_entries(&self, phones: usize, emails: usize) {
        self.exception_entries
            .get_or_create(&[("type", "phone")])
            .set(phones as i64);
        self.exception_entries
            .get_or_create(&[("type", "email")])
            .set(emails as i64);
    }

    /// Counts a reload attempt.
    pub fn reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&[("result", if ok { "ok" } else { "error" })])
            .inc();
        self.config_last_reload_ok.set(i64::from(ok));
    }

    /// Counts a refused or dropped message.
    pub fn sip_error(&self, reason: &'static str) {
        match self.error_counters.get(reason) {
            Some(c) => c.inc(),
            None => self.sip_errors.get_or_create(&[("reason", reason)]).inc(),
        };
    }

    /// Reads back a SIP error counter (tests and logs).
    pub fn sip_error_count(&self, reason: &'static str) -> u64 {
        self.sip_errors
            .get(&[("reason", reason)])
            .map_or(0, |c| c.get())
    }

    /// The open TCP connection gauge (the transport moves it).
    pub fn tcp_connections(&self) -> &Gauge {
        &self.tcp_connections
    }

    /// The open connection gauge of a stream transport.
    pub fn connections(&self, transport: TransportKind) -> &Gauge {
        match transport {
            TransportKind::Tls => &self.tls_connections,
            _ => &self.tcp_connections,
        }
    }

    /// Counts a TLS handshake (`result`: `ok` or a failure reason).
    pub fn tls_handshake(&self, inbound: bool, result: &'static str) {
        let d = if inbound { "in" } else { "out" };
        self.tls_handshakes
            .get_or_create(&[("direction", d), ("result", result)])
            .inc();
    }

    pub fn set_active_calls(&self, n: usize) {
        self.calls_active.set(n as i64);
    }

    pub fn call_finished(&self, verdict: &str, outcome: &'static str) {
        let verdict = if verdict == "exception" {
            "exception"
        } else {
            "log"
        };
        self.calls_finished
            .get_or_create(&[("verdict", verdict), ("outcome", outcome)])
            .inc();
    }

    pub fn call_expired(&self) {
        self.calls_expired.inc();
    }

    pub fn calls_restored(&self, n: usize) {
        self.calls_restored.inc_by(n as u64);
    }

    pub fn call_event_dropped(&self) {
        self.call_events_dropped.inc();
    }

    /// The store's reachability and this node's lag behind its changes.
    pub fn set_store(&self, connected: bool, lag_secs: f64) {
        self.store_connected.set(i64::from(connected));
        self.store_lag.set(lag_secs);
    }

    pub fn set_outbox(&self, depth: i64, oldest_age_secs: f64) {
        self.crm_outbox_depth.set(depth);
        self.crm_outbox_oldest_age.set(oldest_age_secs);
    }

    /// Creates a sink's series at 0.
    pub fn register_sink(&self, sink: &str) {
        for r in ["ok", "retry", "rate_limited", "rejected"] {
            let _ = self
                .crm_deliveries
                .get_or_create(&vec![("sink", sink.to_string()), ("result", r.to_string())]);
        }
        let _ = self
            .crm_dead_letters
            .get_or_create(&vec![("sink", sink.to_string())]);
        // Set to the sink's state by whoever registers it.
        let _ = self
            .crm_connected
            .get_or_create(&vec![("sink", sink.to_string())]);
        let _ = self
            .crm_lead_creation_errors
            .get_or_create(&vec![("sink", sink.to_string())]);
    }

    pub fn crm_delivery(&self, sink: &str, result: &'static str) {
        self.crm_deliveries
            .get_or_create(&vec![
                ("sink", sink.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    pub fn crm_lead_creation_error(&self, sink: &str) {
        self.crm_lead_creation_errors
            .get_or_create(&vec![("sink", sink.to_string())])
            .inc();
    }

    pub fn set_crm_connected(&self, sink: &str, connected: bool) {
        self.crm_connected
            .get_or_create(&vec![("sink", sink.to_string())])
            .set(i64::from(connected));
    }

    pub fn crm_dead(&self, sink: &str, n: u64) {
        self.crm_dead_letters
            .get_or_create(&vec![("sink", sink.to_string())])
            .inc_by(n);
    }

    /// Counts a panic caught in `component` (one of [`PANIC_COMPONENTS`]).
    pub fn panic(&self, component: &'static str) {
        self.panics.get_or_create(&[("component", component)]).inc();
    }

    /// Flood protection's series.
    pub fn flood(&self) -> &FloodMetrics {
        &self.flood
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Where a message came from, as the `side` label: a configured trunk,
/// the PBX, or anyone else (the proxy's `runtime::Side` without the
/// trunk's index; metrics sit below the runtime and know no config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Trunk = 0,
    Pbx = 1,
    Unknown = 2,
}

impl Origin {
    pub const ALL: [Origin; 3] = [Origin::Trunk, Origin::Pbx, Origin::Unknown];

    pub fn label(self) -> &'static str {
        match self {
            Origin::Trunk => "trunk",
            Origin::Pbx => "pbx",
            Origin::Unknown => "unknown",
        }
    }
}

/// Index of a series in `message_counters`.
fn message_slot(transport: TransportKind, method: Option<Method>, side: Origin) -> usize {
    let t = transport as usize;
    let m = method.map_or(METHOD_SLOTS - 1, |m| m as usize);
    (t * METHOD_SLOTS + m) * Origin::ALL.len() + side as usize
}

/// The verdict labels of `calls_attested`.
pub const ATTESTED_VERDICTS: [&str; 3] = ["log", "exception", "rejected"];

/// Index of an (attestation, verdict) pair in `attested_counters`.
fn attested_slot(a: Attest, verdict: &str) -> usize {
    let a = Attest::ALL.iter().position(|&x| x == a).unwrap_or(4);
    let v = ATTESTED_VERDICTS
        .iter()
        .position(|&x| x == verdict)
        .unwrap_or(2);
    a * ATTESTED_VERDICTS.len() + v
}

/// Index of a (direction, verdict) pair in `screened_counters`.
fn screened_slot(d: Direction, v: Verdict) -> usize {
    let d = match d {
        Direction::Inbound => 0,
        Direction::Outbound => 2,
    };
    d + match v {
        Verdict::Log => 0,
        Verdict::Exception => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_free_histogram_exposes_what_prometheus_clients_would() {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        let ours = TimeHistogram::default();
        let theirs = Histogram::new(exponential_buckets(250e-9, 2.0, 20));
        // Bounds, just under and over them, the extremes, nonsense.
        let mut xs = vec![0.0, -1.0, 1e-10, 1.0, 3600.0, f64::NAN];
        for i in 0..21 {
            let b = 250e-9 * 2f64.powi(i);
            xs.extend([b, b - 1e-9, b + 1e-9]);
        }
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // whole nanoseconds from 1 ns to ~0.5 s, log-spread
            xs.push(((rng % (1 << (rng % 29 + 1))) + 1) as f64 * 1e-9);
        }
        for &x in &xs {
            ours.observe(x);
            // prometheus-client puts NaN in +Inf and sums negatives; a
            // duration is neither, and ours counts both as 0.
            theirs.observe(if x.is_nan() || x < 0.0 { 0.0 } else { x });
        }
        let text = |h: &dyn Fn(&mut Registry)| {
            let mut r = Registry::default();
            h(&mut r);
            let mut s = String::new();
            encode(&mut s, &r).unwrap();
            s
        };
        let a = text(&|r| r.register("t", "t", ours.clone()));
        let b = text(&|r| r.register("t", "t", theirs.clone()));
        let lines = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| l.starts_with("t_bucket") || l.starts_with("t_count"))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(lines(&a), lines(&b), "ours:\n{a}\ntheirs:\n{b}");
        assert_eq!(lines(&a).len(), 22);
        let sum = |s: &str| -> f64 {
            s.lines()
                .find_map(|l| l.strip_prefix("t_sum "))
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(
            (sum(&a) - sum(&b)).abs() < 1e-5,
            "{} against {}",
            sum(&a),
            sum(&b)
        );
    }

    #[test]
    fn exposition_has_every_family_with_prefix() {
        let m = Metrics::new();
        m.message(TransportKind::Udp, Some(Method::Invite), Origin::Trunk);
        m.screened(Direction::Inbound, Verdict::Exception);
        m.screening_time(1e-6);
        m.set_exception_entries(3, 1);
        m.reload(false);
        m.sip_error("max_forwards");
        let text = m.encode();
        for name in [
            "sipscreen_sip_messages_total{transport=\"udp\",kind=\"request\",method=\"INVITE\",side=\"trunk\"} 1",
            "sipscreen_calls_screened_total{direction=\"inbound\",verdict=\"exception\"} 1",
            "sipscreen_screening_duration_seconds_count 1",
            "sipscreen_exception_entries{type=\"phone\"} 3",
            "sipscreen_config_reloads_total{result=\"error\"} 1",
            "sipscreen_sip_errors_total{reason=\"max_forwards\"} 1",
            "sipscreen_config_last_reload_ok 0",
            "sipscreen_tcp_connections 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert_eq!(m.sip_error_count("max_forwards"), 1);
    }

    /// Every cached message series carries its own labels: each
    /// combination is counted a different number of times and read back.
    #[test]
    fn message_counter_cache_maps_every_combination_to_its_labels() {
        let m = Metrics::new();
        let methods = Method::ALL;
        let mut want = Vec::new();
        let mut k = 0;
        for t in TransportKind::ALL {
            for method in methods.iter().copied().map(Some).chain([None]) {
                for side in Origin::ALL {
                    k += 1;
                    for _ in 0..k {
                        m.message(t, method, side);
                    }
                    want.push(format!(
                        "sipscreen_sip_messages_total{{transport=\"{}\",kind=\"{}\",method=\"{}\",side=\"{}\"}} {k}\n",
                        t.as_str(),
                        if method.is_some() { "request" } else { "response" },
                        method.map_or("response", Method::label),
                        side.label()
                    ));
                }
            }
        }
        assert_eq!(want.len(), MESSAGE_SLOTS);
        let text = m.encode();
        for w in want {
            assert!(text.contains(&w), "missing {w} in\n{text}");
        }
        for (d, v, n) in [
            (Direction::Inbound, Verdict::Log, 1),
            (Direction::Inbound, Verdict::Exception, 2),
            (Direction::Outbound, Verdict::Log, 3),
            (Direction::Outbound, Verdict::Exception, 4),
        ] {
            for _ in 0..n {
                m.screened(d, v);
            }
        }
        let text = m.encode();
        for w in [
            "sipscreen_calls_screened_total{direction=\"inbound\",verdict=\"log\"} 1\n",
            "sipscreen_calls_screened_total{direction=\"inbound\",verdict=\"exception\"} 2\n",
            "sipscreen_calls_screened_total{direction=\"outbound\",verdict=\"log\"} 3\n",
            "sipscreen_calls_screened_total{direction=\"outbound\",verdict=\"exception\"} 4\n",
        ] {
            assert!(text.contains(w), "missing {w} in\n{text}");
        }
    }

    /// Before any event, every series of a closed label set is there at 0.
    #[test]
    fn a_fresh_registry_exports_every_known_series_at_0() {
        let text = Metrics::new().encode();
        let lines: Vec<&str> = text.lines().collect();
        let has = |l: String| assert!(lines.contains(&l.as_str()), "missing {l} in\n{text}");
        let mut messages = 0;
        for t in ["udp", "tcp", "tls"] {
            for m in Method::ALL
                .map(Method::label)
                .into_iter()
                .chain(["response"])
            {
                let kind = if m == "response" {
                    "response"
                } else {
                    "request"
                };
                for side in ["trunk", "pbx", "unknown"] {
                    has(format!(
                        "sipscreen_sip_messages_total{{transport=\"{t}\",kind=\"{kind}\",method=\"{m}\",side=\"{side}\"}} 0"
                    ));
                    messages += 1;
                }
            }
        }
        assert_eq!(messages, MESSAGE_SLOTS);
        for r in SIP_ERROR_REASONS {
            has(format!("sipscreen_sip_errors_total{{reason=\"{r}\"}} 0"));
        }
        for c in PANIC_COMPONENTS {
            has(format!("sipscreen_panics_total{{component=\"{c}\"}} 0"));
        }
        for d in ["in", "out"] {
            for r in TLS_HANDSHAKE_RESULTS {
                has(format!(
                    "sipscreen_tls_handshakes_total{{direction=\"{d}\",result=\"{r}\"}} 0"
                ));
            }
        }
        has("sipscreen_tls_connections 0".to_string());
        for a in ["A", "B", "C", "failed", "none"] {
            for v in ["log", "exception", "rejected"] {
                has(format!(
                    "sipscreen_calls_attested_total{{attest=\"{a}\",verdict=\"{v}\"}} 0"
                ));
            }
        }
        for d in ["inbound", "outbound"] {
            for v in ["log", "exception"] {
                has(format!(
                    "sipscreen_calls_screened_total{{direction=\"{d}\",verdict=\"{v}\"}} 0"
                ));
                for o in ["completed", "failed", "cancelled", "expired"] {
                    has(format!(
                        "sipscreen_calls_finished_total{{verdict=\"{v}\",outcome=\"{o}\"}} 0"
                    ));
                }
            }
        }
        for r in ["ok", "error"] {
            has(format!(
                "sipscreen_config_reloads_total{{result=\"{r}\"}} 0"
            ));
        }
        for t in ["phone", "email"] {
            has(format!("sipscreen_exception_entries{{type=\"{t}\"}} 0"));
        }
        for r in BAN_REASONS {
            has(format!("sipscreen_bans_total{{reason=\"{r}\"}} 0"));
        }
        for r in FLOOD_DROP_REASONS {
            has(format!("sipscreen_flood_dropped_total{{reason=\"{r}\"}} 0"));
        }
        has("sipscreen_bans_active 0".to_string());
        for l in [
            "sipscreen_calls_expired_total 0",
            "sipscreen_call_events_dropped_total 0",
            "sipscreen_screening_duration_seconds_count 0",
        ] {
            has(l.to_string());
        }
        // Nothing counts by itself: every counter sample is 0.
        for l in &lines {
            if let Some((series, v)) = l.rsplit_once(' ')
                && series.contains("_total")
            {
                assert_eq!(v, "0", "{l}");
            }
        }
        let m = Metrics::new();
        m.register_sink("crm1");
        let text = m.encode();
        for r in ["ok", "retry", "rate_limited", "rejected"] {
            let l = format!("sipscreen_crm_deliveries_total{{sink=\"crm1\",result=\"{r}\"}} 0");
            assert!(text.lines().any(|x| x == l), "missing {l}");
        }
        assert!(
            text.lines()
                .any(|x| x == "sipscreen_crm_dead_letters_total{sink=\"crm1\"} 0")
        );
    }

    /// Listed reasons count on their pre-made series; one not (yet) listed
    /// is counted all the same.
    #[test]
    fn sip_errors_count_listed_and_unlisted_reasons() {
        let m = Metrics::new();
        m.sip_error("loop");
        m.sip_error("loop");
        m.sip_error("not_a_listed_reason");
        assert_eq!(m.sip_error_count("loop"), 2);
        assert_eq!(m.sip_error_count("not_a_listed_reason"), 1);
        assert_eq!(m.sip_error_count("via"), 0);
        let text = m.encode();
        assert!(text.contains("sipscreen_sip_errors_total{reason=\"loop\"} 2\n"));
    }

    /// Every reason the code gives `sip_error` is in `SIP_ERROR_REASONS`:
    /// the error enums' labels, and every literal the sources hand over
    /// (`bad("…")`, `reason: "…"`, `Drop("…")`, `reply(NNN, "…")`,
    /// `sip_error("…")`).
    #[test]
    fn every_sip_error_reason_is_listed() {
        use crate::sip::framing::FramingError;
        use crate::sip::message::ScanError;
        use crate::transport::SendError;
        let addr = "127.0.0.1:5060".parse().unwrap();
        let mut given: Vec<String> = [
            ScanError::Empty.reason(),
            ScanError::StartLine.reason(),
            ScanError::HeaderLine.reason(),
            ScanError::TooManyHeaders.reason(),
            FramingError::TooLarge { limit: 1 }.reason(),
            FramingError::Garbage.reason(),
            FramingError::BadContentLength.reason(),
            FramingError::MissingContentLength.reason(),
            SendError::NoSocket("udp").reason(),
            SendError::Udp(addr, std::io::Error::other("x")).reason(),
            SendError::QueueFull(addr).reason(),
            SendError::TooManyConnections.reason(),
        ]
        .map(String::from)
        .to_vec();
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        let mut files = 0;
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") || p.ends_with("src/metrics.rs") {
                    continue;
                }
                files += 1;
                given.extend(reason_literals(&std::fs::read_to_string(&p).unwrap()));
            }
        }
        assert!(files > 20, "sources not found");
        for r in &given {
            assert!(
                SIP_ERROR_REASONS.contains(&r.as_str()),
                "sip_error reason {r:?} is not in SIP_ERROR_REASONS"
            );
        }
        for r in SIP_ERROR_REASONS {
            assert!(
                given.iter().any(|g| g == r),
                "{r} is listed but never given"
            );
        }
    }

    /// The string literals after `bad(`, `reason: `, `Drop(`, `sip_error(`
    /// and `reply(NNN, ` in `src`.
    fn reason_literals(src: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, _) in src.match_indices('"') {
            let before = src[..i].trim_end();
            let hit = ["bad(", "reason:", "Drop(", "sip_error("]
                .iter()
                .any(|p| before.ends_with(p))
                || before.strip_suffix(',').is_some_and(|b| {
                    let digits = b.trim_end_matches(|c: char| c.is_ascii_digit());
                    digits.len() + 3 == b.len() && digits.ends_with("reply(")
                });
            if hit {
                let lit = &src[i + 1..];
                out.push(lit[..lit.find('"').unwrap()].to_string());
            }
        }
        out
    }
}
