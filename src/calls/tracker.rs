//! The tracker thread: owns every call's state, writes the call log and
//! queues CRM events (for `log` calls only) in the durable outbox, in
//! batches (one transaction per 100 ms at most, not one fsync per event).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use super::log::{CallLog, CallRecord, Transfer};
use super::{NewCall, RequestKind, SipEvent, ms};
use crate::clock::{now_ms, rfc3339};
use crate::config::Verdict;
use crate::events::{CallEvent, Ended, EventKind};
use crate::metrics::Metrics;
use crate::screening::normalize::e164_string;
use crate::screening::{Client, CreateTag};
use crate::store::{NewEvent, OutboxStore};

/// How often the tracker drains the channel.
/// Each wake-up costs the same whatever it finds (measured on the load
/// test: about 27 us of CPU on a VM, 2 % of the sidecar's CPU at 10 ms);
/// the channel holds far more than a tick's events at any sane rate.
const TICK: Duration = Duration::from_millis(50);

/// Calls tracked at once; beyond this, new calls are not tracked (counted).
pub const MAX_CALLS: usize = 200_000;

struct Call {
    new: NewCall,
    start: SystemTime,
    ringing: bool,
    answer: Option<SystemTime>,
    cancelled: bool,
    responsible: Option<String>,
    transfers: Vec<Transfer>,
    last: Instant,
}

/// Settings of the tracker.
pub struct TrackerConfig {
    pub max_idle: Duration,
    /// Names of the configured CRM sinks (one outbox row per sink).
    pub sinks: Vec<String>,
    /// Where transfers update the directory (lines with
    /// `update_directory_on_transfer`).
    pub directory: Option<(
        Arc<dyn crate::store::ContactStore>,
        Arc<crate::contacts::Directory>,
    )>,
}

/// The tracker's state; `run` drives it.
pub struct Tracker {
    /// By SIP Call-ID (its bytes as received).
    calls: HashMap<Box<[u8]>, Call>,
    log: CallLog,
    outbox: Arc<dyn OutboxStore>,
    metrics: Arc<Metrics>,
    cfg: TrackerConfig,
    pending: Vec<NewEvent>,
}

impl Tracker {
    pub fn new(
        log: CallLog,
        outbox: Arc<dyn OutboxStore>,
        metrics: Arc<Metrics>,
        cfg: TrackerConfig,
    ) -> Self {
        Tracker {
            calls: HashMap::new(),
            log,
            outbox,
            metrics,
            cfg,
            pending: Vec::new(),
        }
    }

    /// Runs until `stop` is set (then flushes) or every sender is gone.
    ///
    /// The thread wakes on a fixed tick and drains the channel, instead of
    /// blocking on it: a sender then never has a sleeping receiver to wake,
    /// so reporting an event costs the SIP path no system call, and the
    /// tracker costs one wake-up per tick whatever the call rate.
    pub fn run(mut self, rx: Receiver<SipEvent>, stop: Arc<AtomicBool>) {
        let mut last_flush = Instant::now();
        let mut last_sweep = Instant::now();
        loop {
            std::thread::sleep(TICK);
            let mut gone = false;
            loop {
                match rx.try_recv() {
                    Ok(ev) => self.handle(ev),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        gone = true;
                        break;
                    }
                }
            }
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                self.expire(Instant::now());
                last_sweep = Instant::now();
            }
            if last_flush.elapsed() >= Duration::from_millis(100) || self.pending.len() > 10_000 {
                self.flush();
                last_flush = Instant::now();
            }
            self.metrics.set_active_calls(self.calls.len());
            if gone || stop.load(Ordering::Relaxed) {
                for ev in rx.try_iter() {
                    self.handle(ev);
                }
                break;
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        if let Err(e) = self.log.flush() {
            tracing::error!(error = %e, "writing the call log failed");
        }
        if self.pending.is_empty() {
            return;
        }
        match self.outbox.enqueue(&self.pending, now_ms()) {
            Ok(()) => self.pending.clear(),
            // Kept and retried on the next flush; the store says why.
            Err(e) => {
                tracing::error!(error = %e, events = self.pending.len(), "queuing CRM events failed")
            }
        }
    }

    /// Handles one event (public for tests that drive it directly).
    pub fn handle(&mut self, ev: SipEvent) {
        match ev {
            SipEvent::Invite {
                sip_call_id,
                call: new,
                at,
            } => {
                if self.calls.contains_key(&sip_call_id[..]) {
                    return;
                }
                if self.calls.len() >= MAX_CALLS {
                    self.metrics.call_event_dropped();
                    return;
                }
                let call = Call {
                    responsible: new.responsible.clone(),
                    new: *new,
                    start: at,
                    ringing: false,
                    answer: None,
                    cancelled: false,
                    transfers: Vec::new(),
                    last: Instant::now(),
                };
                event(&mut self.pending, &self.cfg.sinks, &call, || {
                    EventKind::Started
                });
                // A copy: the slice would hold the received datagram's
                // buffer for the whole call.
                self.calls.insert(sip_call_id[..].into(), call);
            }
            SipEvent::InviteResponse {
                sip_call_id,
                code,
                at,
            } => {
                let Some(call) = self.calls.get_mut(&sip_call_id[..]) else {
                    return;
                };
                call.last = Instant::now();
                match code {
                    180..=199 => call.ringing = true,
                    200..=299 if call.answer.is_none() => {
                        call.answer = Some(at);
                        let call = &self.calls[&sip_call_id[..]];
                        event(&mut self.pending, &self.cfg.sinks, call, || {
                            EventKind::Answered {
                                answer: rfc3339(ms(at)),
                            }
                        });
                    }
                    300..=699 if call.answer.is_none() => {
                        let outcome = if call.cancelled || code == 487 {
                            "cancelled"
                        } else {
                            "failed"
                        };
                        self.finish(&sip_call_id, code, outcome, at);
                    }
                    _ => {}
                }
            }
            SipEvent::Request {
                sip_call_id,
                kind,
                refer_to,
                at,
            } => {
                let Some(call) = self.calls.get_mut(&sip_call_id[..]) else {
                    return;
                };
                call.last = Instant::now();
                match kind {
                    RequestKind::Cancel => call.cancelled = true,
                    RequestKind::Bye => {
                        let (code, outcome) = if call.answer.is_some() {
                            (200, "completed")
                        } else {
                            (487, "cancelled")
                        };
                        self.finish(&sip_call_id, code, outcome, at);
                    }
                    RequestKind::Reinvite if !new_party(call, refer_to.as_deref()) => {
                        // Not a new party (session refresh, same agent, the
                        // line itself).
                    }
                    RequestKind::Refer | RequestKind::Reinvite => {
                        let Some(to) = refer_to else { return };
                        call.transfers.push(Transfer {
                            at: rfc3339(ms(at)),
                            to: to.clone(),
                        });
                        if call.new.change_responsible_on_transfer
                            && call.new.update_directory_on_transfer
                            && let (Client::Number(n), Some((store, dir))) =
                                (call.new.client, &self.cfg.directory)
                        {
                            // The transfer target is the PBX extension; it
                            // becomes the client's user and extension.
                            let c = crate::contacts::Contact {
                                client: e164_string(n),
                                user_id: to.clone(),
                                extension: to.clone(),
                            };
                            match store.upsert_contacts(
                                std::slice::from_ref(&c),
                                "transfer",
                                now_ms(),
                            ) {
                                Ok(_) => dir.upsert(std::slice::from_ref(&c)),
                                Err(e) => {
                                    tracing::error!(error = %e, "updating the contacts directory after a transfer failed")
                                }
                            }
                        }
                        if call.new.change_responsible_on_transfer
                            && call.responsible.as_deref() != Some(to.as_str())
                        {
                            let previous = call.responsible.replace(to.clone());
                            let call = &self.calls[&sip_call_id[..]];
                            event(&mut self.pending, &self.cfg.sinks, call, || {
                                EventKind::ResponsibleChanged {
                                    previous,
                                    at: rfc3339(ms(at)),
                                }
                            });
                        }
                    }
                }
            }
        }
    }

    /// Ends calls idle for longer than the limit.
    pub fn expire(&mut self, now: Instant) {
        let idle: Vec<Box<[u8]>> = self
            .calls
            .iter()
            .filter(|(_, c)| now.duration_since(c.last) >= self.cfg.max_idle)
            .map(|(k, _)| k.clone())
            .collect();
        for k in idle {
            let answered = self.calls[&k].answer.is_some();
            self.metrics.call_expired();
            self.finish(
                &k,
                if answered { 200 } else { 408 },
                "expired",
                SystemTime::now(),
            );
        }
    }

    fn finish(&mut self, key: &[u8], status: u16, outcome: &'static str, at: SystemTime) {
        let Some(call) = self.calls.remove(key) else {
            return;
        };
        let duration = call
            .answer
            .map_or(0, |a| at.duration_since(a).map_or(0, |d| d.as_secs()));
        let rec = record(key, &call, status, outcome, at, duration);
        if let Err(e) = self.log.append(&rec) {
            tracing::error!(error = %e, "writing the call log failed");
        }
        self.metrics.call_finished(&rec.verdict, outcome);
        event(&mut self.pending, &self.cfg.sinks, &call, || {
            EventKind::Ended(Ended {
                status,
                outcome: outcome.to_string(),
                duration,
                end: rec.end,
                answered: call.answer.is_some(),
            })
        });
    }
}

/// Queues the event `kind` builds for every sink, for `log` calls only
/// (`kind`, the event's own fields, is built only then).
fn event(
    pending: &mut Vec<NewEvent>,
    sinks: &[String],
    call: &Call,
    kind: impl FnOnce() -> EventKind,
) {
    if call.new.verdict != Verdict::Log || sinks.is_empty() {
        return;
    }
    let n = &call.new;
    let ev = CallEvent {
        call_id: n.call_id.clone(),
        direction: n.direction.into(),
        line: n.line.map(e164_string),
        client: client_str(n.client),
        create: n.create.into(),
        crm_create: matches!(n.create, CreateTag::Lead | CreateTag::Deal),
        offer: n.offer,
        source: n.source.clone(),
        responsible: call.responsible.clone(),
        start: rfc3339(ms(call.start)),
        kind: kind(),
    };
    let payload = ev.to_json();
    for s in sinks {
        pending.push(NewEvent {
            sink: s.clone(),
            call: n.call_id.clone(),
            kind: ev.kind.name().to_string(),
            payload: payload.clone(),
        });
    }
}

/// Whether a re-INVITE's connected party is someone new: the call is
/// answered and the user is neither the responsible person, nor the last
/// transfer target, nor the line itself (session refreshes repeat these).
fn new_party(call: &Call, user: Option<&str>) -> bool {
    let Some(u) = user else { return false };
    let line = call.new.line.map(|n| n.to_string());
    call.answer.is_some()
        && call.responsible.as_deref() != Some(u)
        && call.transfers.last().map(|t| t.to.as_str()) != Some(u)
        && line.as_deref() != Some(u.trim_start_matches('+'))
}

fn client_str(c: Client) -> String {
    match c {
        Client::Number(n) => e164_string(n),
        Client::Anonymous => "anonymous".to_string(),
    }
}

/// The call log's record of `c`, whose SIP Call-ID is `sip_call_id`.
fn record(
    sip_call_id: &[u8],
    c: &Call,
    status: u16,
    outcome: &str,
    end: SystemTime,
    duration: u64,
) -> CallRecord {
    let n = &c.new;
    CallRecord {
        call_id: n.call_id.clone(),
        sip_call_id: String::from_utf8_lossy(sip_call_id).into_owned(),
        direction: n.direction.as_str().to_string(),
        line: n.line.map(e164_string),
        client: client_str(n.client),
        verdict: n.verdict.as_str().to_string(),
        create: n.create.as_str().to_string(),
        source: n.source.clone(),
        responsible: c.responsible.clone(),
        start: rfc3339(ms(c.start)),
        start_ms: ms(c.start),
        answer: c.answer.map(|a| rfc3339(ms(a))),
        end: rfc3339(ms(end)),
        status: if c.answer.is_some() && outcome != "expired" {
            200
        } else {
            status
        },
        outcome: outcome.to_string(),
        duration,
        transfers: c.transfers.clone(),
    }
}
