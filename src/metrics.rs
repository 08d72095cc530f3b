//! One `Metrics` struct with its own registry, passed to whoever counts.
//!
//! Label values are `&'static str` from closed sets (methods outside the
//! known list count as `other`), so counting never allocates and the number
//! of series stays bounded whatever peers send.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use std::sync::OnceLock;

use crate::config::{TransportKind, Verdict};
use crate::runtime::Side;
use crate::screening::Direction;
use crate::sip::Method;

type L1 = [(&'static str, &'static str); 1];
type L2 = [(&'static str, &'static str); 2];
type L4 = [(&'static str, &'static str); 4];

/// Method slots of the message counter cache: every `Method`, then one
/// for responses.
const METHOD_SLOTS: usize = Method::Other as usize + 2;
/// Slots of the message counter cache: transport x method x side.
const MESSAGE_SLOTS: usize = 2 * METHOD_SLOTS * 3;

/// Every metric sipscreen exports (names are prefixed `sipscreen_`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// SIP messages received, by transport, kind, method and side.
    sip_messages: Family<L4, Counter>,
    /// The `sip_messages` series, each fetched from the family once: a
    /// family lookup hashes every label and takes a lock, per message.
    message_counters: Box<[OnceLock<Counter>]>,
    /// INVITEs screened (by direction and verdict): the family's four
    /// series, indexed by `screened_slot`.
    screened_counters: [Counter; 4],
    /// Time from receiving an INVITE to handing it to the transport.
    screening_seconds: Histogram,
    /// Entries in the exception set, by type. Steady: the list size; a
    /// jump to 0 after a reload means the source went empty.
    exception_entries: Family<L1, Gauge>,
    /// Config reloads by result (`ok` / `error`).
    config_reloads: Family<L1, Counter>,
    /// SIP messages refused or dropped, by reason.
    sip_errors: Family<L1, Counter>,
    /// Open TCP connections. Steady: the number of peers; a climb without
    /// more peers means connections are not being closed.
    tcp_connections: Gauge,
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
    /// Age of the oldest undelivered CRM event, seconds.
    crm_outbox_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// CRM delivery attempts by sink and result.
    crm_deliveries: Family<Vec<(&'static str, String)>, Counter>,
    /// Events moved to the dead-letter table, by sink.
    crm_dead_letters: Family<Vec<(&'static str, String)>, Counter>,
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
        let screening_seconds = Histogram::new(exponential_buckets(250e-9, 2.0, 20));
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
        Metrics {
            calls_active,
            calls_finished,
            calls_expired,
            calls_restored,
            call_events_dropped,
            crm_outbox_depth,
            crm_outbox_oldest_age,
            crm_deliveries,
            crm_dead_letters,
            registry,
            sip_messages,
            message_counters: (0..MESSAGE_SLOTS).map(|_| OnceLock::new()).collect(),
            screened_counters,
            screening_seconds,
            exception_entries,
            config_reloads,
            sip_errors,
            tcp_connections,
            config_last_reload_ok,
        }
    }

    /// Counts one received SIP message (`method`: `None` for a response).
    pub fn message(&self, transport: TransportKind, method: Option<Method>, side: Side) {
        let t = transport as usize;
        let m = method.map_or(METHOD_SLOTS - 1, |m| m as usize);
        let s = match side {
            Side::Trunk(_) => 0,
            Side::Pbx => 1,
            Side::Unknown => 2,
        };
        self.message_counters[(t * METHOD_SLOTS + m) * 3 + s]
            .get_or_init(|| {
                self.sip_messages
                    .get_or_create(&[
                        ("transport", transport.as_str()),
                        (
                            "kind",
                            if method.is_some() {
                                "request"
                            } else {
                                "response"
                            },
                        ),
                        ("method", method.map_or("response", Method::label)),
                        ("side", side.label()),
                    ])
                    .clone()
            })
            .inc();
    }

    /// Counts one screened call.
    pub fn screened(&self, direction: Direction, verdict: Verdict) {
        self.screened_counters[screened_slot(direction, verdict)].inc();
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
        self.sip_errors.get_or_create(&[("reason", reason)]).inc();
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
    }

    pub fn crm_delivery(&self, sink: &str, result: &'static str) {
        self.crm_deliveries
            .get_or_create(&vec![
                ("sink", sink.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    pub fn crm_dead(&self, sink: &str, n: u64) {
        self.crm_dead_letters
            .get_or_create(&vec![("sink", sink.to_string())])
            .inc_by(n);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
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
    fn exposition_has_every_family_with_prefix() {
        let m = Metrics::new();
        m.message(TransportKind::Udp, Some(Method::Invite), Side::Trunk(0));
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
        let methods = [
            Method::Invite,
            Method::Ack,
            Method::Bye,
            Method::Cancel,
            Method::Register,
            Method::Options,
            Method::Refer,
            Method::Update,
            Method::Prack,
            Method::Info,
            Method::Message,
            Method::Notify,
            Method::Subscribe,
            Method::Publish,
            Method::Other,
        ];
        let mut want = Vec::new();
        let mut k = 0;
        for t in [TransportKind::Udp, TransportKind::Tcp] {
            for method in methods.iter().copied().map(Some).chain([None]) {
                for side in [Side::Trunk(3), Side::Pbx, Side::Unknown] {
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
}
