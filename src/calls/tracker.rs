//! The tracker thread: owns every call's state, writes the call log and
//! queues CRM events (for `log` calls only) in the durable outbox, in
//! batches (one transaction per 100 ms at most, not one fsync per event).
//! The same transaction writes the calls that changed and removes the ones
//! that ended ([`CallStore::save_calls`]), so a crash never leaves a
//! `call.started` queued without its call kept, nor a kept call whose
//! `call.ended` is queued. At start, [`Tracker::restore`] takes them back.
//!
//! Idle time across a restart counts from the last SIP activity the store
//! has (wall clock), not from the restore: a call silent before the stop
//! and during the downtime is idle for all of it, and its BYE, if one was
//! sent while the sidecar was down, never reached us; counting from the
//! restore would keep a dead call open for up to the downtime longer.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use super::log::{CallLog, RecordRef, Transfer};
use super::saved::{self, State};
use super::{NewCall, RequestKind, SipEvent, ms};
use crate::clock::{now_ms, rfc3339, rfc3339_bytes};
use crate::config::Verdict;
use crate::events::{CallFields, CallPart, Ended, EventKind, EventRef, WrittenCall};
use crate::metrics::Metrics;
use crate::screening::normalize::{e164_string, write_e164};
use crate::screening::{Client, CreateTag};
use crate::store::{ActiveCall, CallStore, NewEvent};

/// How often the tracker drains the channel.
/// Each wake-up costs the same whatever it finds (measured on the load
/// test: about 27 us of CPU on a VM, 2 % of the sidecar's CPU at 10 ms);
/// the channel holds far more than a tick's events at any sane rate.
const TICK: Duration = Duration::from_millis(50);

/// Rows of calls and events whose buffers a flush keeps for the next one
/// (a flush of 100 ms at 1,000 calls/s writes about 100 and 300).
const REUSED_ROWS: usize = 1024;

/// Calls tracked at once; beyond this, new calls are not tracked (counted).
pub const MAX_CALLS: usize = 200_000;

/// How long a refused INVITE's Call-ID is remembered, so that its
/// retransmissions are not logged again: 64 × T1, the time a client
/// retransmits an INVITE for (RFC 3261 timer B).
const REFUSED_MEMORY: Duration = Duration::from_secs(32);
/// How much longer than the idle limit a call must have been idle before
/// another node takes it over (its owner, if alive, ended it by then).
const STALE_MARGIN: Duration = Duration::from_secs(300);

/// How much later than ours a shared row's last activity must be to say
/// another node has the call (the row's milliseconds are ours, rounded).
const TAKEN_OVER_SLACK_MS: i64 = 1000;

/// Events of unknown calls waiting for their look-up in the store; beyond
/// this they are dropped (a flood of stray BYEs costs one query a tick).
const MAX_DEFERRED: usize = 1_000;

/// Call-IDs looked up and not found, kept so a repeated stray request is
/// not looked up again; forgotten past this many, and every minute.
const MAX_UNKNOWN: usize = 10_000;

/// A tracked call: the state the store keeps ([`State`], written from
/// here without a copy) and its activity clock.
struct Call {
    state: State,
    last: Instant,
    /// Whether the store may have the call's row (written by a flush, or
    /// restored from it): a call that ends before any flush wrote it has
    /// no row to remove.
    stored: bool,
    /// Whether the call changed since the last flush (its key is then in
    /// [`Tracker::dirty`]).
    dirty: bool,
    /// Strings each of its events and its log line repeat.
    text: Texts,
}

/// A call's line and client as E.164 (`anonymous`) and its start as RFC
/// 3339, written once per call: every event and the log line have them;
/// and, for a `log` call, the fields every CRM event of it repeats,
/// written once as JSON.
struct Texts {
    /// The start, the client and the line (if any), one after the other
    /// in one buffer (one allocation a call, not three).
    text: String,
    /// Where the start ends in `text`, and the client (the line, never
    /// empty, is what follows, if anything does).
    start_end: usize,
    client_end: usize,
    event: Option<WrittenCall>,
}

impl Texts {
    fn of(s: &State) -> Texts {
        // 24 bytes of RFC 3339 and two E.164 numbers of up to 21.
        let mut b = Vec::with_capacity(24 + 2 * 21);
        b.extend_from_slice(&rfc3339_bytes(ms(s.start)));
        let start_end = b.len();
        s.new.client.write(&mut b);
        let client_end = b.len();
        if let Some(n) = s.new.line {
            write_e164(n, &mut b);
        }
        let mut t = Texts {
            text: String::from_utf8(b).expect("ASCII digits, `+` and letters"),
            start_end,
            client_end,
            event: None,
        };
        if s.new.verdict == Verdict::Log {
            t.event = Some(t.fields(&s.new).written());
        }
        t
    }

    /// The call's start, RFC 3339.
    fn start(&self) -> &str {
        &self.text[..self.start_end]
    }

    /// The client as E.164, or `anonymous`.
    fn client(&self) -> &str {
        &self.text[self.start_end..self.client_end]
    }

    /// The line as E.164, if the call has one.
    fn line(&self) -> Option<&str> {
        (self.client_end < self.text.len()).then(|| &self.text[self.client_end..])
    }

    /// What each CRM event says of the call `n` (these its strings).
    fn fields<'a>(&'a self, n: &'a NewCall) -> CallFields<'a> {
        CallFields {
            call_id: &n.call_id,
            direction: n.direction.into(),
            line: self.line(),
            client: self.client(),
            create: n.create.into(),
            crm_create: matches!(n.create, CreateTag::Lead | CreateTag::Deal),
            offer: n.offer,
            source: &n.source,
            start: self.start(),
        }
    }
}

impl std::ops::Deref for Call {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Call {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Call {
    /// A call the proxy has just forwarded (or refused) at `start`.
    fn new(new: NewCall, start: SystemTime, last: Instant) -> Call {
        Call::kept(
            State {
                responsible: new.responsible.clone(),
                new,
                start,
                ringing: false,
                answer: None,
                cancelled: false,
                transfers: Vec::new(),
            },
            last,
            false,
        )
    }

    /// A call of `state`, last active at `last`; `stored`: the store may
    /// have its row.
    fn kept(state: State, last: Instant, stored: bool) -> Call {
        Call {
            text: Texts::of(&state),
            state,
            last,
            stored,
            dirty: false,
        }
    }
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
    calls: HashMap<Box<[u8]>, Call, Seeded>,
    log: CallLog,
    store: Arc<dyn CallStore>,
    metrics: Arc<Metrics>,
    cfg: TrackerConfig,
    /// CRM events queued since the last flush.
    pending: Reused<NewEvent>,
    /// Calls changed since the last flush (to write; a key may be there
    /// twice, its call's `dirty` flag says whether to write it).
    dirty: Keys,
    /// Calls ended since the last flush (to remove).
    ended: Vec<Box<[u8]>>,
    /// The rows of changed calls a flush writes.
    active: Reused<ActiveCall>,
    /// Call-IDs of INVITEs refused (and logged) in the last
    /// `REFUSED_MEMORY`, at most `MAX_CALLS` of them.
    refused: HashMap<Box<[u8]>, Instant, Seeded>,
    /// In-dialog events of calls not tracked here, to look up in the store
    /// (another node's calls after a failover), in arrival order.
    deferred: Vec<SipEvent>,
    /// Call-IDs the store did not have either.
    unknown: HashSet<Box<[u8]>, Seeded>,
}

/// The tracker's maps are keyed by SIP Call-IDs, which callers choose:
/// a seeded hash (foldhash: several times cheaper than the default SipHash
/// on these short keys, still randomly seeded per map).
type Seeded = foldhash::fast::RandomState;

/// Rows a flush writes (the CRM events queued since the last one, the
/// calls that changed), each written into a row of an earlier flush: its
/// strings' buffers reused, no allocation per row once a flush's worth of
/// them exists (up to [`REUSED_ROWS`] kept).
struct Reused<T> {
    rows: Vec<T>,
    len: usize,
}

impl<T> Default for Reused<T> {
    fn default() -> Self {
        Reused {
            rows: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Default> Reused<T> {
    fn rows(&self) -> &[T] {
        &self.rows[..self.len]
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The next row, holding what an earlier flush wrote into it: the
    /// caller writes every field over.
    fn next(&mut self) -> &mut T {
        if self.len == self.rows.len() {
            self.rows.push(T::default());
        }
        self.len += 1;
        &mut self.rows[self.len - 1]
    }

    fn clear(&mut self) {
        self.len = 0;
        self.rows.truncate(REUSED_ROWS);
    }
}

impl Reused<NewEvent> {
    /// The payload of event `from` into the last one, in place of what it
    /// held.
    fn copy_payload(&mut self, from: usize) {
        let p = std::mem::take(&mut self.rows[from].payload);
        let last = &mut self.rows[self.len - 1].payload;
        last.clear();
        last.push_str(&p);
        self.rows[from].payload = p;
    }
}

/// `s` made `v`, in its own buffer.
fn set(s: &mut String, v: &str) {
    s.clear();
    s.push_str(v);
}

/// Keys end to end in one buffer, reused across flushes: no allocation
/// per key.
#[derive(Default)]
struct Keys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Keys {
    fn push(&mut self, k: &[u8]) {
        self.bytes.extend_from_slice(k);
        self.ends.push(self.bytes.len());
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter())
            .map(|(a, &b)| &self.bytes[a..b])
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// Marks `call` (whose key is `key`) changed.
fn touch(dirty: &mut Keys, call: &mut Call, key: &[u8]) {
    if !call.dirty {
        call.dirty = true;
        dirty.push(key);
    }
}

impl Tracker {
    pub fn new(
        log: CallLog,
        store: Arc<dyn CallStore>,
        metrics: Arc<Metrics>,
        cfg: TrackerConfig,
    ) -> Self {
        Tracker {
            calls: HashMap::default(),
            log,
            store,
            metrics,
            cfg,
            pending: Reused::default(),
            dirty: Keys::default(),
            ended: Vec::new(),
            active: Reused::default(),
            refused: HashMap::default(),
            deferred: Vec::new(),
            unknown: HashSet::default(),
        }
    }

    /// Calls tracked now.
    pub fn active(&self) -> usize {
        self.calls.len()
    }

    /// Takes back the calls in progress the store kept (before any SIP
    /// event is handled): their `call.started` was queued before the stop,
    /// so nothing is queued again. A call idle for `max_idle` already is
    /// ended `expired` at once. A row that cannot be read is logged and
    /// left in the store. Returns how many calls were restored.
    pub fn restore(&mut self, rows: Vec<ActiveCall>, now_ms: i64) -> usize {
        let now = Instant::now();
        let mut restored = 0;
        for row in rows {
            let state = match saved::from_json(&row.state) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(call = %row.call, sip_call_id = %String::from_utf8_lossy(&row.sip_call_id), error = %e, "a call kept in the store cannot be read; it stays there");
                    continue;
                }
            };
            let idle = Duration::from_millis((now_ms - row.last_ms).max(0) as u64);
            // Uptime shorter than the idle time: counted from now.
            let last = now.checked_sub(idle).unwrap_or(now);
            let key: Box<[u8]> = row.sip_call_id.into();
            self.calls
                .insert(key.clone(), Call::kept(state, last, true));
            restored += 1;
            if idle >= self.cfg.max_idle {
                self.expire_one(&key);
            }
        }
        self.metrics.calls_restored(restored);
        self.metrics.set_active_calls(self.calls.len());
        restored
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
        let mut last_forget = Instant::now();
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
            self.take_over();
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                self.expire(Instant::now());
                last_sweep = Instant::now();
                if last_forget.elapsed() >= Duration::from_secs(60) {
                    // A call another node had not written yet when its
                    // stray request came is looked up again.
                    self.unknown.clear();
                    self.take_over_stale(now_ms());
                    last_forget = Instant::now();
                }
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

    /// Writes the batch: events, changed and ended calls in one store
    /// transaction, then the call log (so a kill between the two loses
    /// call log lines, never a CRM event or a call's row).
    pub fn flush(&mut self) {
        let now = SystemTime::now();
        // Calls never written first (the store inserts them), then the
        // ones it has (updated in place).
        let mut new = 0;
        for fresh in [true, false] {
            for k in self.dirty.iter() {
                let Some(c) = self.calls.get_mut(k) else {
                    continue;
                };
                if !c.dirty || c.stored == fresh {
                    continue; // a second copy of the key, or the other pass's
                }
                c.dirty = false;
                // Written now (or tried: a failed write retries as a call
                // that may be there, and the removal of a row never written
                // is a no-op).
                c.stored = true;
                new += usize::from(fresh);
                let since = c.last.elapsed().as_millis() as i64;
                let a = self.active.next();
                a.sip_call_id.clear();
                a.sip_call_id.extend_from_slice(k);
                set(&mut a.call, &c.new.call_id);
                saved::write_json(&c.state, &mut a.state);
                a.last_ms = ms(now) - since;
            }
        }
        match self.store.save_calls_with_new(
            self.pending.rows(),
            self.active.rows(),
            new,
            &self.ended,
            ms(now),
        ) {
            Ok(()) => {
                self.pending.clear();
                self.dirty.clear();
                self.ended.clear();
            }
            // Kept and retried on the next flush; the store says why.
            Err(e) => {
                tracing::error!(error = %e, events = self.pending.len(), calls = self.active.len(), "queuing CRM events and keeping calls failed");
                for a in self.active.rows() {
                    if let Some(c) = self.calls.get_mut(&a.sip_call_id[..]) {
                        c.dirty = true;
                    }
                }
            }
        }
        self.active.clear();
        if let Err(e) = self.log.flush() {
            tracing::error!(error = %e, "writing the call log failed");
        }
    }

    /// Handles one event (public for tests that drive it directly). An
    /// in-dialog event of a call not tracked here waits for
    /// [`Tracker::take_over`].
    pub fn handle(&mut self, ev: SipEvent) {
        if let SipEvent::InviteResponse { sip_call_id, .. } | SipEvent::Request { sip_call_id, .. } =
            &ev
            && !self.calls.contains_key(&sip_call_id[..])
        {
            // A refused INVITE's ACK is not another node's call.
            if !self.unknown.contains(&sip_call_id[..])
                && !self.refused.contains_key(&sip_call_id[..])
                && self.deferred.len() < MAX_DEFERRED
            {
                self.deferred.push(ev);
            }
            return;
        }
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
                let mut call = Call::new(*new, at, Instant::now());
                event(&mut self.pending, &self.cfg.sinks, &call, || {
                    EventKind::Started
                });
                touch(&mut self.dirty, &mut call, &sip_call_id);
                // A copy: the slice would hold the received datagram's
                // buffer for the whole call.
                self.calls.insert(sip_call_id[..].into(), call);
            }
            SipEvent::Refused {
                sip_call_id,
                call,
                code,
                at,
            } => self.refused(&sip_call_id, *call, code, at),
            SipEvent::InviteResponse {
                sip_call_id,
                code,
                at,
            } => {
                let Some(call) = self.calls.get_mut(&sip_call_id[..]) else {
                    return;
                };
                touch(&mut self.dirty, call, &sip_call_id);
                call.last = Instant::now();
                match code {
                    180..=199 => call.ringing = true,
                    200..=299 if call.answer.is_none() => {
                        call.answer = Some(at);
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
                touch(&mut self.dirty, call, &sip_call_id);
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

    /// Looks the calls of the deferred events up in the store, in one
    /// query (on the tracker's thread, never the SIP path), takes the ones
    /// found over as [`Tracker::restore`] does, and handles the events: a
    /// BYE that reached this node after another one failed ends the call
    /// (its `call.ended` queued, its row removed). A store that cannot be
    /// read keeps them for the next tick.
    pub fn take_over(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        for ev in &self.deferred {
            if let SipEvent::InviteResponse { sip_call_id, .. }
            | SipEvent::Request { sip_call_id, .. } = ev
                && !keys.iter().any(|k| k[..] == sip_call_id[..])
            {
                keys.push(sip_call_id[..].into());
            }
        }
        // Ended here but not flushed yet: the store still has the row.
        let (just_ended, keys): (Vec<_>, Vec<_>) =
            keys.into_iter().partition(|k| self.ended.contains(k));
        self.unknown.extend(just_ended);
        let rows = match self.store.find_calls(&keys) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, calls = keys.len(), "looking up calls another node kept failed; trying again");
                return;
            }
        };
        if !rows.is_empty() {
            let n = self.restore(rows, now_ms());
            tracing::info!(calls = n, "took over calls another node kept");
        }
        if self.unknown.len() + keys.len() > MAX_UNKNOWN {
            self.unknown.clear();
        }
        for k in keys {
            if !self.calls.contains_key(&k) {
                self.unknown.insert(k);
            }
        }
        for ev in std::mem::take(&mut self.deferred) {
            self.handle(ev);
        }
    }

    /// An INVITE the proxy answered itself: one call log line (a
    /// retransmission of it, or of a call in progress, adds none), no CRM
    /// event whatever its verdict.
    fn refused(&mut self, sip_call_id: &[u8], new: NewCall, code: u16, at: SystemTime) {
        let now = Instant::now();
        if self.calls.contains_key(sip_call_id) || self.refused.contains_key(sip_call_id) {
            return;
        }
        if self.refused.len() < MAX_CALLS {
            self.refused.insert(sip_call_id.into(), now);
        }
        let call = Call::new(new, at, now);
        log_call(
            &mut self.log,
            sip_call_id,
            &call,
            code,
            "failed",
            &rfc3339(ms(at)),
            0,
        );
        self.metrics
            .call_finished(call.new.verdict.as_str(), "failed");
    }

    /// Takes over and ends the calls another node left idle for longer
    /// than the limit plus [`STALE_MARGIN`] (a node that died with calls
    /// whose BYE never came: on one store, every call is in this node's
    /// memory and there are none). The owner, when alive, has ended such a
    /// call itself well within the margin; a row is taken by one node only.
    pub fn take_over_stale(&mut self, now_ms: i64) {
        let before = now_ms - (self.cfg.max_idle + STALE_MARGIN).as_millis() as i64;
        match self.store.stale_calls(before, now_ms, 1000) {
            Ok(rows) => {
                let rows: Vec<ActiveCall> = rows
                    .into_iter()
                    .filter(|r| !self.calls.contains_key(&r.sip_call_id[..]))
                    .collect();
                if !rows.is_empty() {
                    let n = self.restore(rows, now_ms);
                    tracing::info!(calls = n, "ended calls another node left idle");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "looking up calls other nodes left idle failed")
            }
        }
    }

    /// Ends calls idle for longer than the limit, and forgets refused
    /// INVITEs whose retransmissions are over. On a shared store a call
    /// another node has ended or taken over meanwhile (its BYE or
    /// re-INVITE reached that node) is forgotten instead: ending it here
    /// too would send the CRM a second `call.ended`.
    pub fn expire(&mut self, now: Instant) {
        self.refused
            .retain(|_, at| now.duration_since(*at) < REFUSED_MEMORY);
        let idle: Vec<Box<[u8]>> = self
            .calls
            .iter()
            .filter(|(_, c)| now.duration_since(c.last) >= self.cfg.max_idle)
            .map(|(k, _)| k.clone())
            .collect();
        let elsewhere = self.handled_elsewhere(&idle);
        for k in idle {
            if elsewhere.contains(&k) {
                self.calls.remove(&k);
                tracing::info!(sip_call_id = %String::from_utf8_lossy(&k), "a call idle here was ended or taken over by another node; forgotten");
            } else {
                self.expire_one(&k);
            }
        }
    }

    /// Which of the `idle` calls another node has handled since this one
    /// last wrote them: the row is gone (ended there) or its last activity
    /// is later than ours (taken over there). Only calls this node has
    /// written (a row never written is ours alone), only on a shared
    /// store; a store that cannot be read says none, so a call is ended
    /// twice rather than never.
    fn handled_elsewhere(&self, idle: &[Box<[u8]>]) -> HashSet<Box<[u8]>> {
        let written: Vec<Box<[u8]>> = idle
            .iter()
            .filter(|k| self.calls.get(&k[..]).is_some_and(|c| c.stored && !c.dirty))
            .cloned()
            .collect();
        if written.is_empty() || !self.store.shared() {
            return HashSet::new();
        }
        let rows = match self.store.find_calls(&written) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, calls = written.len(), "looking up idle calls in the store failed; ending them here");
                return HashSet::new();
            }
        };
        // Wall time of our last activity, as the row would hold it (by the
        // real clock: `now` may be a test's future).
        let (wall, mono) = (now_ms(), Instant::now());
        written
            .into_iter()
            .filter(|k| {
                let ours = wall
                    - mono
                        .saturating_duration_since(self.calls[k].last)
                        .as_millis() as i64;
                rows.iter()
                    .find(|r| r.sip_call_id[..] == k[..])
                    .is_none_or(|r| r.last_ms > ours + TAKEN_OVER_SLACK_MS)
            })
            .collect()
    }

    fn expire_one(&mut self, k: &[u8]) {
        let answered = self.calls[k].answer.is_some();
        self.metrics.call_expired();
        self.finish(
            k,
            if answered { 200 } else { 408 },
            "expired",
            SystemTime::now(),
        );
    }

    fn finish(&mut self, key: &[u8], status: u16, outcome: &'static str, at: SystemTime) {
        let Some((key, call)) = self.calls.remove_entry(key) else {
            return;
        };
        let duration = call
            .answer
            .map_or(0, |a| at.duration_since(a).map_or(0, |d| d.as_secs()));
        let end = rfc3339(ms(at));
        log_call(&mut self.log, &key, &call, status, outcome, &end, duration);
        self.metrics
            .call_finished(call.new.verdict.as_str(), outcome);
        event(&mut self.pending, &self.cfg.sinks, &call, || {
            EventKind::Ended(Ended {
                status,
                outcome: outcome.to_string(),
                duration,
                end,
                answered: call.answer.is_some(),
            })
        });
        if call.stored {
            self.ended.push(key);
        }
    }
}

/// Queues the event `kind` builds for every sink, for `log` calls only
/// (`kind`, the event's own fields, is built only then).
fn event(
    pending: &mut Reused<NewEvent>,
    sinks: &[String],
    call: &Call,
    kind: impl FnOnce() -> EventKind,
) {
    if call.new.verdict != Verdict::Log || sinks.is_empty() {
        return;
    }
    let n = &call.new;
    let kind = kind();
    let ev = EventRef {
        call: match &call.text.event {
            Some(w) => CallPart::Written(w),
            None => CallPart::Fields(call.text.fields(n)),
        },
        responsible: call.responsible.as_deref(),
        kind: &kind,
    };
    let first = pending.len();
    for (i, s) in sinks.iter().enumerate() {
        let e = pending.next();
        set(&mut e.sink, s);
        set(&mut e.call, &n.call_id);
        set(&mut e.kind, kind.name());
        if i == 0 {
            ev.write_into(&mut e.payload);
        } else {
            pending.copy_payload(first);
        }
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

/// Writes the call log's line of `c`, whose SIP Call-ID is `sip_call_id`,
/// ended at `end` (RFC 3339); a failed write is logged.
fn log_call(
    log: &mut CallLog,
    sip_call_id: &[u8],
    c: &Call,
    status: u16,
    outcome: &str,
    end: &str,
    duration: u64,
) {
    let n = &c.new;
    let reason = n.reason.map(|r| r.to_string());
    let answer = c.answer.map(|a| rfc3339(ms(a)));
    let rec = RecordRef {
        call_id: &n.call_id,
        // A Call-ID is ASCII but for a rare stray byte: the check's fast
        // path first (the lossy conversion's own check cost ~450
        // instructions per call).
        sip_call_id: &std::str::from_utf8(sip_call_id)
            .map_or_else(|_| String::from_utf8_lossy(sip_call_id), Cow::Borrowed),
        direction: n.direction.as_str(),
        line: c.text.line(),
        client: c.text.client(),
        verdict: n.verdict.as_str(),
        create: n.create.as_str(),
        source: &n.source,
        reason: reason.as_deref(),
        attest: n.attest.as_str(),
        responsible: c.responsible.as_deref(),
        start: c.text.start(),
        start_ms: ms(c.start),
        answer: answer.as_deref(),
        end,
        status: if c.answer.is_some() && outcome != "expired" {
            200
        } else {
            status
        },
        outcome,
        duration,
        transfers: &c.transfers,
        crm: None,
    };
    if let Err(e) = log.append(&rec) {
        tracing::error!(error = %e, "writing the call log failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::log::CallRecord;
    use crate::screening::Direction;
    use crate::store::OutboxStore;
    use crate::store::sqlite::SqliteStore;
    use bytes::Bytes;

    fn tracker(dir: &std::path::Path, max_idle: Duration) -> (Tracker, Arc<SqliteStore>) {
        tracker_for(dir, max_idle, &["portal"])
    }

    /// A tracker on a SQLite store and a call log in `dir`, queueing for
    /// `sinks`.
    fn tracker_for(
        dir: &std::path::Path,
        max_idle: Duration,
        sinks: &[&str],
    ) -> (Tracker, Arc<SqliteStore>) {
        let store = Arc::new(SqliteStore::open_dir(dir).unwrap());
        let t = Tracker::new(
            CallLog::open(dir, 1 << 20, 2).unwrap(),
            store.clone(),
            Arc::new(Metrics::new()),
            TrackerConfig {
                max_idle,
                sinks: sinks.iter().map(|s| s.to_string()).collect(),
                directory: None,
            },
        );
        (t, store)
    }

    fn invite(id: &str, at: SystemTime) -> SipEvent {
        SipEvent::Invite {
            sip_call_id: Bytes::copy_from_slice(id.as_bytes()),
            call: Box::new(NewCall {
                call_id: format!("crm-{id}"),
                direction: Direction::Inbound,
                verdict: Verdict::Log,
                client: Client::Number(4917000000001),
                line: Some(4930901820),
                create: CreateTag::Lead,
                source: "CALL".into(),
                reason: None,
                attest: crate::screening::verstat::Attest::None,
                responsible: Some("101".into()),
                change_responsible_on_transfer: true,
                update_directory_on_transfer: false,
                offer: false,
            }),
            at,
        }
    }

    fn answer(id: &str, at: SystemTime) -> SipEvent {
        SipEvent::InviteResponse {
            sip_call_id: Bytes::copy_from_slice(id.as_bytes()),
            code: 200,
            at,
        }
    }

    fn request(id: &str, kind: RequestKind, to: Option<&str>, at: SystemTime) -> SipEvent {
        SipEvent::Request {
            sip_call_id: Bytes::copy_from_slice(id.as_bytes()),
            kind,
            refer_to: to.map(str::to_string),
            at,
        }
    }

    /// The payloads and the call log line the tracker writes from a call's
    /// state are the bytes of the `CallEvent`s and `CallRecord` with the
    /// call's fields (as it built them before it wrote them borrowed), for
    /// every sink, in the reused buffers of earlier flushes' events.
    #[test]
    fn events_and_the_log_line_are_the_call_s_fields() {
        use crate::events::{CallEvent, Create};
        let dir = tempfile::tempdir().unwrap();
        let (mut t, store) =
            tracker_for(dir.path(), Duration::from_secs(3600), &["portal", "hook"]);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut inv = invite("a", t0);
        if let SipEvent::Invite { call, .. } = &mut inv {
            call.reason = Some(crate::screening::Reason::Verstat);
            call.attest = crate::screening::verstat::Attest::B;
        }
        // A flush after each: every event is written into the buffers
        // of the one before.
        for ev in [
            inv,
            answer("a", at(2)),
            request("a", RequestKind::Refer, Some("205"), at(5)),
            request("a", RequestKind::Bye, None, at(20)),
        ] {
            t.handle(ev);
            t.flush();
        }
        let ev = |responsible: &str, kind: EventKind| CallEvent {
            call_id: "crm-a".into(),
            direction: crate::events::Direction::Inbound,
            line: Some("+4930901820".into()),
            client: "+4917000000001".into(),
            create: Create::Lead,
            crm_create: true,
            offer: false,
            source: "CALL".into(),
            responsible: Some(responsible.into()),
            start: rfc3339(ms(t0)),
            kind,
        };
        let want = [
            ev("101", EventKind::Started),
            ev(
                "101",
                EventKind::Answered {
                    answer: rfc3339(ms(at(2))),
                },
            ),
            ev(
                "205",
                EventKind::ResponsibleChanged {
                    previous: Some("101".into()),
                    at: rfc3339(ms(at(5))),
                },
            ),
            ev(
                "205",
                EventKind::Ended(Ended {
                    status: 200,
                    outcome: "completed".into(),
                    duration: 18,
                    end: rfc3339(ms(at(20))),
                    answered: true,
                }),
            ),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|e| ("crm-a".into(), e.kind.name().to_string(), e.to_json()))
            .collect();
        for sink in ["portal", "hook"] {
            let got: Vec<(String, String, String)> = store
                .head(sink, 10)
                .unwrap()
                .into_iter()
                .map(|e| (e.call, e.kind, e.payload))
                .collect();
            assert_eq!(got, want, "{sink}");
        }
        let rec = CallRecord {
            call_id: "crm-a".into(),
            sip_call_id: "a".into(),
            direction: "inbound".into(),
            line: Some("+4930901820".into()),
            client: "+4917000000001".into(),
            verdict: "log".into(),
            create: "lead".into(),
            source: "CALL".into(),
            reason: Some("verstat".into()),
            attest: "B".into(),
            responsible: Some("205".into()),
            start: rfc3339(ms(t0)),
            start_ms: ms(t0),
            answer: Some(rfc3339(ms(at(2)))),
            end: rfc3339(ms(at(20))),
            status: 200,
            outcome: "completed".into(),
            duration: 18,
            transfers: vec![Transfer {
                at: rfc3339(ms(at(5))),
                to: "205".into(),
            }],
            crm: None,
        };
        let line = std::fs::read_to_string(crate::calls::log::log_path(dir.path())).unwrap();
        assert_eq!(line, serde_json::to_string(&rec).unwrap() + "\n");
    }

    /// A call with an anonymous client and no line: its texts (start,
    /// client, line, kept in one buffer) are the start, `anonymous` and
    /// no line in every event and in the call log line.
    #[test]
    fn an_anonymous_call_without_a_line_is_written_so() {
        use crate::events::CallEvent;
        let dir = tempfile::tempdir().unwrap();
        let (mut t, store) = tracker_for(dir.path(), Duration::from_secs(3600), &["hook"]);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut inv = invite("b", t0);
        if let SipEvent::Invite { call, .. } = &mut inv {
            call.client = Client::Anonymous;
            call.line = None;
        }
        t.handle(inv);
        t.handle(answer("b", t0 + Duration::from_secs(2)));
        t.handle(request(
            "b",
            RequestKind::Bye,
            None,
            t0 + Duration::from_secs(3),
        ));
        t.flush();
        let events = store.head("hook", 10).unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["call.started", "call.answered", "call.ended"]);
        for e in &events {
            let ev: CallEvent = serde_json::from_str(&e.payload).unwrap();
            assert_eq!(ev.client, "anonymous", "{}", e.payload);
            assert_eq!(ev.line, None, "{}", e.payload);
            assert_eq!(ev.start, "2023-11-14T22:13:20.123Z", "{}", e.payload);
            assert_eq!(e.payload, ev.to_json());
        }
        let line = std::fs::read_to_string(crate::calls::log::log_path(dir.path())).unwrap();
        let rec: CallRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (rec.client.as_str(), rec.line.as_deref(), rec.start.as_str()),
            ("anonymous", None, "2023-11-14T22:13:20.123Z")
        );
    }

    /// A refused INVITE is one call log line with its status and no CRM
    /// event, even with a `log` verdict; its retransmissions within timer
    /// B add nothing, a new INVITE with its Call-ID after that is logged.
    #[test]
    fn a_refused_invite_is_logged_once_and_never_queued() {
        let dir = tempfile::tempdir().unwrap();
        let (mut t, store) = tracker(dir.path(), Duration::from_secs(3600));
        let refused = |at| {
            let SipEvent::Invite {
                sip_call_id, call, ..
            } = invite("r1", at)
            else {
                unreachable!()
            };
            SipEvent::Refused {
                sip_call_id,
                call,
                code: 608,
                at,
            }
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        t.handle(refused(t0));
        t.handle(refused(t0 + Duration::from_millis(500)));
        t.expire(Instant::now() + REFUSED_MEMORY - Duration::from_secs(1));
        t.handle(refused(t0 + Duration::from_secs(4)));
        t.flush();
        let recs = records(dir.path());
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(
            (recs[0].status, recs[0].outcome.as_str(), recs[0].duration),
            (608, "failed", 0)
        );
        assert_eq!(recs[0].start, recs[0].end);
        assert_eq!(t.active(), 0, "a refused call is not in progress");
        assert!(kinds(&store).is_empty(), "{:?}", kinds(&store));
        // Past timer B the Call-ID is forgotten: a new INVITE is a new call.
        t.expire(Instant::now() + REFUSED_MEMORY);
        t.handle(refused(t0 + Duration::from_secs(60)));
        t.flush();
        assert_eq!(records(dir.path()).len(), 2);
        assert!(kinds(&store).is_empty());
    }

    fn kinds(store: &SqliteStore) -> Vec<String> {
        store
            .head("portal", 100)
            .unwrap()
            .into_iter()
            .map(|e| format!("{} {}", e.call, e.kind))
            .collect()
    }

    fn records(dir: &std::path::Path) -> Vec<CallRecord> {
        let f = crate::calls::log::Filter {
            limit: 100,
            ..Default::default()
        };
        crate::calls::log::read(dir, 2, &f).unwrap().records
    }

    #[test]
    fn a_call_kept_across_a_restart_ends_on_its_bye_as_if_never_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now() - Duration::from_secs(30);
        {
            let (mut t, store) = tracker(dir.path(), Duration::from_secs(3600));
            t.handle(invite("a", t0));
            t.handle(answer("a", t0 + Duration::from_secs(2)));
            t.handle(request(
                "a",
                RequestKind::Refer,
                Some("205"),
                t0 + Duration::from_secs(5),
            ));
            t.flush();
            assert_eq!(store.active_calls().unwrap().len(), 1);
            // Stopped without ending anything.
        }
        let (mut t, store) = tracker(dir.path(), Duration::from_secs(3600));
        let kept = store.active_calls().unwrap();
        assert_eq!(t.restore(kept, now_ms()), 1);
        t.handle(request(
            "a",
            RequestKind::Bye,
            None,
            t0 + Duration::from_secs(20),
        ));
        t.flush();
        assert!(store.active_calls().unwrap().is_empty());
        let recs = records(dir.path());
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!(
            (r.outcome.as_str(), r.status, r.duration),
            ("completed", 200, 18)
        );
        assert_eq!(r.sip_call_id, "a");
        assert_eq!(r.responsible.as_deref(), Some("205"));
        assert_eq!(r.transfers.len(), 1);
        assert_eq!(r.start_ms, ms(t0));
        assert_eq!(
            kinds(&store),
            [
                "crm-a call.started",
                "crm-a call.answered",
                "crm-a call.responsible_changed",
                "crm-a call.ended"
            ]
        );
    }

    /// One batch the tracker asked the store to write: (events, calls
    /// written, calls removed).
    type Batch = (usize, Vec<Vec<u8>>, Vec<Vec<u8>>);

    /// The SQLite store, recording what the tracker asked it to write
    /// batch by batch, and answering as a fleet's store would: shared,
    /// `find_calls`, and `stale_calls` as PostgreSQL's (without the stamp).
    struct Watched {
        inner: Arc<SqliteStore>,
        batches: std::sync::Mutex<Vec<Batch>>,
    }

    impl Watched {
        fn new(inner: Arc<SqliteStore>) -> Arc<Watched> {
            Arc::new(Watched {
                inner,
                batches: Default::default(),
            })
        }
    }

    impl CallStore for Watched {
        fn save_calls_with_new(
            &self,
            events: &[NewEvent],
            active: &[ActiveCall],
            new: usize,
            ended: &[Box<[u8]>],
            now: i64,
        ) -> Result<(), crate::store::StoreError> {
            self.batches.lock().unwrap().push((
                events.len(),
                active.iter().map(|a| a.sip_call_id.clone()).collect(),
                ended.iter().map(|k| k.to_vec()).collect(),
            ));
            self.inner
                .save_calls_with_new(events, active, new, ended, now)
        }
        fn active_calls(&self) -> Result<Vec<ActiveCall>, crate::store::StoreError> {
            self.inner.active_calls()
        }
        fn shared(&self) -> bool {
            true
        }
        fn find_calls(
            &self,
            sip_call_ids: &[Box<[u8]>],
        ) -> Result<Vec<ActiveCall>, crate::store::StoreError> {
            self.inner.find_calls(sip_call_ids)
        }
        fn stale_calls(
            &self,
            before_ms: i64,
            _now_ms: i64,
            limit: usize,
        ) -> Result<Vec<ActiveCall>, crate::store::StoreError> {
            Ok(self
                .inner
                .active_calls()?
                .into_iter()
                .filter(|c| c.last_ms < before_ms)
                .take(limit)
                .collect())
        }
    }

    /// A call that ends before any flush wrote its row has no row to
    /// remove: its events are queued, and nothing else is written; a call
    /// a flush wrote is removed when it ends.
    #[test]
    fn a_call_that_ends_before_its_row_was_written_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Watched::new(Arc::new(SqliteStore::open_dir(dir.path()).unwrap()));
        let mut t = other_node(dir.path(), rec.clone());
        let t0 = SystemTime::now();
        t.handle(invite("short", t0));
        t.handle(answer("short", t0));
        t.handle(request("short", RequestKind::Bye, None, t0));
        t.handle(invite("long", t0));
        t.flush();
        t.handle(answer("long", t0));
        t.flush();
        t.handle(request("long", RequestKind::Bye, None, t0));
        t.flush();
        let b = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            *rec.batches.lock().unwrap(),
            [
                (4, vec![b("long")], vec![]),
                (1, vec![b("long")], vec![]),
                (1, vec![], vec![b("long")]),
            ]
        );
        assert!(rec.inner.active_calls().unwrap().is_empty());
        assert_eq!(records(dir.path()).len(), 2);
    }

    /// Node `a` answered call `x` 30 s ago and died without ending it
    /// (the call's row is in `store`); the time of its INVITE.
    fn died_with_a_call(dir: &std::path::Path) -> (Arc<SqliteStore>, SystemTime) {
        let t0 = SystemTime::now() - Duration::from_secs(30);
        let (mut a, store) = tracker(dir, Duration::from_secs(3600));
        a.handle(invite("x", t0));
        a.handle(answer("x", t0 + Duration::from_secs(1)));
        a.flush();
        (store, t0)
    }

    /// A second node (its own call log in `dir`) on `store`.
    fn other_node(dir: &std::path::Path, store: Arc<dyn CallStore>) -> Tracker {
        Tracker::new(
            CallLog::open(dir, 1 << 20, 2).unwrap(),
            store,
            Arc::new(Metrics::new()),
            TrackerConfig {
                max_idle: Duration::from_secs(3600),
                sinks: vec!["portal".into()],
                directory: None,
            },
        )
    }

    /// Two live nodes on one store: the call goes through `a`; its BYE
    /// reaches `b` (the carrier failed over), which ends it. `a` never
    /// hears of the call again: once it is idle for the limit, `a` finds
    /// it ended elsewhere and forgets it, with no second `call.ended` and
    /// no call log line. A call `b` took over and kept (a re-INVITE there)
    /// is left to `b` too; one that `a` alone had is ended by `a`.
    #[test]
    fn a_call_another_node_ended_or_took_is_not_ended_again_at_expiry() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let sqlite = Arc::new(SqliteStore::open_dir(a_dir.path()).unwrap());
        let shared: Arc<dyn CallStore> = Watched::new(sqlite.clone());
        let mut a = other_node(a_dir.path(), shared.clone());
        let mut b = other_node(b_dir.path(), shared);
        let t0 = SystemTime::now();
        for id in ["ended-at-b", "kept-at-b", "only-a"] {
            a.handle(invite(id, t0));
            a.handle(answer(id, t0 + Duration::from_secs(1)));
        }
        a.flush();
        b.handle(request(
            "ended-at-b",
            RequestKind::Bye,
            None,
            t0 + Duration::from_secs(5),
        ));
        b.take_over();
        b.flush();
        // A re-INVITE of "kept-at-b" reaches b, which takes the call; its
        // row then says b heard of it last, 5 s after a did.
        let reinvite = request(
            "kept-at-b",
            RequestKind::Reinvite,
            None,
            t0 + Duration::from_secs(6),
        );
        b.handle(reinvite);
        b.take_over();
        b.flush();
        assert_eq!(b.active(), 1);
        let mut row = sqlite.find_calls(&[b"kept-at-b"[..].into()]).unwrap();
        row[0].last_ms += 5000;
        sqlite.save_calls(&[], &row, &[], 1).unwrap();
        let ended = |store: &SqliteStore| {
            kinds(store)
                .into_iter()
                .filter(|k| k.ends_with("call.ended"))
                .collect::<Vec<_>>()
        };
        assert_eq!(ended(&sqlite), ["crm-ended-at-b call.ended"]);
        a.expire(Instant::now() + Duration::from_secs(3600));
        a.flush();
        assert_eq!(a.active(), 0);
        assert_eq!(
            ended(&sqlite),
            ["crm-ended-at-b call.ended", "crm-only-a call.ended"],
            "a ends only the call it alone had"
        );
        let recs = records(a_dir.path());
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(recs[0].sip_call_id, "only-a");
        // b still has its call, in the store too.
        assert_eq!(b.active(), 1);
        let rows = sqlite.active_calls().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].sip_call_id, b"kept-at-b");
    }

    /// The same on a store of one node (SQLite): every idle call is ended.
    #[test]
    fn on_a_store_of_one_node_every_idle_call_is_ended() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, store) = tracker(dir.path(), Duration::from_secs(3600));
        a.handle(invite("x", SystemTime::now()));
        a.flush();
        // Gone from the store behind a's back (nobody else writes there).
        store.save_calls(&[], &[], &[b"x"[..].into()], 1).unwrap();
        a.expire(Instant::now() + Duration::from_secs(3600));
        a.flush();
        assert_eq!(kinds(&store), ["crm-x call.started", "crm-x call.ended"]);
    }

    /// A node that died with a call whose BYE never comes: another node
    /// takes the call over once it has been idle past the limit and the
    /// margin, and ends it, once.
    #[test]
    fn a_call_a_dead_node_left_idle_is_ended_by_another() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = died_with_a_call(dir.path());
        let b_dir = tempfile::tempdir().unwrap();
        let mut b = other_node(b_dir.path(), Watched::new(store.clone()));
        let now = ms(SystemTime::now());
        // Idle for the limit but not the margin: the owner may be alive.
        b.take_over_stale(now + 3_600_000);
        b.flush();
        assert_eq!(store.active_calls().unwrap().len(), 1);
        assert_eq!(kinds(&store), ["crm-x call.started", "crm-x call.answered"]);
        b.take_over_stale(now + 3_600_000 + STALE_MARGIN.as_millis() as i64 + 1000);
        b.flush();
        assert!(store.active_calls().unwrap().is_empty());
        assert_eq!(
            kinds(&store),
            [
                "crm-x call.started",
                "crm-x call.answered",
                "crm-x call.ended"
            ]
        );
        // Gone from the store: nothing to take again.
        b.take_over_stale(now + 10 * 3_600_000);
        b.flush();
        assert_eq!(kinds(&store).len(), 3);
    }

    /// Two nodes on one store: the call goes through `a`, which stops
    /// without ending it (killed); its BYE reaches `b`, which never saw the
    /// call: `b` looks it up, ends it once and removes it from the store.
    #[test]
    fn a_bye_for_a_call_another_node_kept_ends_it_there() {
        let dir = tempfile::tempdir().unwrap();
        let (store, t0) = died_with_a_call(dir.path());
        let b_dir = tempfile::tempdir().unwrap();
        let mut b = other_node(b_dir.path(), store.clone());
        let bye = |at| request("x", RequestKind::Bye, None, at);
        b.handle(bye(t0 + Duration::from_secs(11)));
        // A stray BYE of a call nobody has: looked up once, dropped.
        b.handle(request("nobody", RequestKind::Bye, None, t0));
        assert_eq!(b.active(), 0, "nothing handled before the look-up");
        b.take_over();
        b.handle(request("nobody", RequestKind::Bye, None, t0));
        assert!(
            b.deferred.is_empty(),
            "an unknown call is not looked up twice"
        );
        // The BYE's retransmission once the call is gone.
        b.handle(bye(t0 + Duration::from_secs(12)));
        b.take_over();
        b.flush();
        assert!(store.active_calls().unwrap().is_empty());
        assert_eq!(
            kinds(&store),
            [
                "crm-x call.started",
                "crm-x call.answered",
                "crm-x call.ended"
            ]
        );
        let recs = records(b_dir.path());
        assert_eq!(recs.len(), 1);
        assert_eq!(
            (recs[0].outcome.as_str(), recs[0].duration),
            ("completed", 10)
        );
    }

    #[test]
    fn restored_calls_expire_counting_from_their_last_activity() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now();
        let max_idle = Duration::from_secs(60);
        {
            let (mut t, _) = tracker(dir.path(), max_idle);
            t.handle(invite("old", t0));
            t.handle(invite("recent", t0));
            t.flush();
        }
        let (mut t, store) = tracker(dir.path(), max_idle);
        let mut kept = store.active_calls().unwrap();
        // "old" was last heard of 61 s ago, "recent" 30 s ago.
        for k in &mut kept {
            k.last_ms -= if k.sip_call_id == b"old" {
                61_000
            } else {
                30_000
            };
        }
        assert_eq!(t.restore(kept, now_ms()), 2);
        t.flush();
        let recs = records(dir.path());
        assert_eq!(recs.len(), 1);
        assert_eq!(
            (recs[0].sip_call_id.as_str(), recs[0].outcome.as_str()),
            ("old", "expired")
        );
        assert_eq!(t.active(), 1);
        // 30 s of the 60 are gone: not idle at +29 s, idle at +30 s.
        let now = Instant::now();
        t.expire(now + Duration::from_secs(29));
        assert_eq!(t.active(), 1);
        t.expire(now + Duration::from_secs(30));
        assert_eq!(t.active(), 0);
        t.flush();
        assert!(store.active_calls().unwrap().is_empty());
        assert_eq!(
            kinds(&store),
            [
                "crm-old call.started",
                "crm-recent call.started",
                "crm-old call.ended",
                "crm-recent call.ended"
            ]
        );
    }

    #[test]
    fn an_unreadable_kept_call_is_reported_and_left_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (mut t, store) = tracker(dir.path(), Duration::from_secs(60));
        let bad = ActiveCall {
            sip_call_id: b"x".to_vec(),
            call: "crm-x".into(),
            state: "{\"format\":1}".into(),
            last_ms: now_ms(),
        };
        store
            .save_calls(&[], std::slice::from_ref(&bad), &[], 1)
            .unwrap();
        assert_eq!(t.restore(store.active_calls().unwrap(), now_ms()), 0);
        t.flush();
        assert_eq!(store.active_calls().unwrap(), [bad]);
    }
}
