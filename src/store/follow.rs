//! Every node current: a sidecar on a shared store follows the store's
//! change log and applies each change, in sequence order, to its
//! in-memory exception set and contacts directory.
//!
//! The follower keeps its position (the last sequence number applied) and
//! catches up with [`ChangeLog::changes_since`] whenever the store notifies
//! a later number, after its notification channel came back (a reconnect),
//! and every `poll` interval (so a missed notification costs at most
//! that). A position the log no longer has (pruned past it) is recovered by
//! a full reload built beside the serving set and swapped in.
//!
//! Applying is idempotent: the node that wrote a change already published
//! it, and applying an add or a removal again leaves the set as it is.
//!
//! The store being unreachable never stops screening: the set stays as it
//! was, [`StoreHealth`] says so (readiness, the API, metrics), and the
//! follower catches up once the store answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use super::service::Exceptions;
use super::{Change, ChangeOp, ContactStore, StoreError};
use crate::clock::now_ms;
use crate::contacts::{Contact, Directory};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Change rows read per query while catching up.
pub const PAGE: usize = 10_000;

/// A store's change log, as a follower reads it.
pub trait ChangeLog: Send + Sync + 'static {
    /// Change rows after `seq`, oldest first, at most `limit`.
    fn changes_since(&self, seq: i64, limit: usize) -> Result<Vec<Change>, StoreError>;
    /// The latest sequence number handed out (0: none yet).
    fn latest_change(&self) -> Result<i64, StoreError>;
    /// The highest sequence number pruned from the log (0: none): a node
    /// whose position is below it has missed changes and reloads.
    fn pruned_through(&self) -> Result<i64, StoreError>;
    /// Prunes rows older than `keep_ms` if no other node is pruning (an
    /// advisory lock); the number of rows removed.
    fn prune_older(&self, keep_ms: i64, now: i64) -> Result<u64, StoreError>;
}

/// Whether the store answers and this node is current: read by `/readyz`,
/// the API's refusals and the metrics.
pub struct StoreHealth {
    /// Where the store is (for messages; no password).
    pub shown: String,
    connected: AtomicBool,
    /// Listening for notifications and caught up to the last one.
    current: AtomicBool,
    /// Unix ms this node last knew it had every change.
    last_current: AtomicI64,
    /// Unix ms the store was first seen unreachable (0: reachable).
    down_since: AtomicI64,
}

impl StoreHealth {
    pub fn new(shown: &str) -> Self {
        StoreHealth {
            shown: shown.to_string(),
            connected: AtomicBool::new(true),
            current: AtomicBool::new(false),
            last_current: AtomicI64::new(now_ms()),
            down_since: AtomicI64::new(0),
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Since when the store is unreachable (unix ms), if it is.
    pub fn down_since(&self) -> Option<i64> {
        let t = self.down_since.load(Ordering::Relaxed);
        (t != 0).then_some(t)
    }

    /// `sipscreen_store_lag_seconds`: 0 while this node listens and has
    /// applied every change up to the last one notified; otherwise the
    /// seconds since it last had every change.
    pub fn lag_secs(&self, now: i64) -> f64 {
        if self.current.load(Ordering::Relaxed) {
            0.0
        } else {
            (now - self.last_current.load(Ordering::Relaxed)).max(0) as f64 / 1000.0
        }
    }

    fn set_connected(&self, up: bool, now: i64) {
        self.connected.store(up, Ordering::Relaxed);
        if up {
            self.down_since.store(0, Ordering::Relaxed);
        } else {
            self.current.store(false, Ordering::Relaxed);
            let _ = self
                .down_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Caught up with the log at `now`; `listening`: notifications keep it
    /// so until the next one.
    fn set_current(&self, listening: bool, now: i64) {
        self.last_current.store(now, Ordering::Relaxed);
        self.current.store(listening, Ordering::Relaxed);
    }

    fn publish(&self, metrics: &Metrics) {
        metrics.set_store(self.connected(), self.lag_secs(now_ms()));
    }
}

/// What the follower hears from its notification connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Listening (again): whatever came meanwhile must be read.
    Listening,
    /// A change up to this sequence number was committed.
    Notified(i64),
    /// The connection is gone; the listener reconnects.
    Lost,
}

/// Applies the change log to one node's set and directory.
pub struct Follower {
    log: Arc<dyn ChangeLog>,
    list: Arc<Exceptions>,
    contacts: Arc<Directory>,
    contact_store: Arc<dyn ContactStore>,
    health: Arc<StoreHealth>,
    metrics: Arc<Metrics>,
    /// The last sequence number applied.
    pos: i64,
    /// Whether the notification connection is up.
    listening: bool,
}

/// What one catch-up did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CaughtUp {
    /// Change rows applied.
    pub applied: usize,
    /// The log was pruned past the position: everything was reloaded.
    pub reloaded: bool,
}

impl Follower {
    /// Follows from `pos`: the latest sequence number read *before* the
    /// set and directory were loaded (changes committed during the load
    /// are applied again, harmlessly).
    pub fn new(
        log: Arc<dyn ChangeLog>,
        list: Arc<Exceptions>,
        contacts: Arc<Directory>,
        contact_store: Arc<dyn ContactStore>,
        health: Arc<StoreHealth>,
        metrics: Arc<Metrics>,
        pos: i64,
    ) -> Self {
        Follower {
            log,
            list,
            contacts,
            contact_store,
            health,
            metrics,
            pos,
            listening: false,
        }
    }

    /// The last sequence number applied.
    pub fn position(&self) -> i64 {
        self.pos
    }

    /// Reads and applies every change after the position (blocking).
    pub fn catch_up(&mut self) -> Result<CaughtUp, StoreError> {
        let mut done = CaughtUp::default();
        if self.log.pruned_through()? > self.pos {
            // Read the position first: what is written during the reload
            // is applied again after it.
            let latest = self.log.latest_change()?;
            let (p, e) = self.list.load()?;
            self.contacts
                .replace_all(self.contact_store.all_contacts()?);
            tracing::warn!(
                from = self.pos,
                to = latest,
                phones = p,
                emails = e,
                "the change log was pruned past this node's position: list and directory reloaded"
            );
            self.pos = latest;
            done.reloaded = true;
        }
        loop {
            let page = self.log.changes_since(self.pos, PAGE)?;
            let n = page.len();
            if let Some(last) = page.last() {
                apply(&self.list, &self.contacts, &page);
                self.pos = last.seq;
                done.applied += n;
            }
            if n < PAGE {
                break;
            }
        }
        Ok(done)
    }

    /// A catch-up that records its outcome in the health state.
    fn checked_catch_up(&mut self) -> Result<CaughtUp, StoreError> {
        let now = now_ms();
        let r = self.catch_up();
        match &r {
            Ok(_) => {
                self.health.set_connected(true, now);
                self.health.set_current(self.listening, now);
            }
            Err(e) => {
                if self.health.connected() {
                    tracing::error!(store = %self.health.shown, error = %e, "the store cannot be read: screening goes on with the last list; writes are refused until it is back");
                }
                self.health.set_connected(false, now);
            }
        }
        self.health.publish(&self.metrics);
        r
    }

    /// Follows until shutdown: catches up at once, on every `signals`
    /// message that may mean something new, and every `poll`; prunes the
    /// log of changes older than `keep` once an hour (one node at a time).
    pub async fn run(
        self,
        signals: tokio::sync::mpsc::Receiver<Signal>,
        poll: Duration,
        keep: Duration,
        mut shutdown: Shutdown,
    ) {
        let mut ticker = tokio::time::interval(poll.max(Duration::from_millis(50)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        let mut prune = tokio::time::interval(Duration::from_secs(3600));
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let keep_ms = keep.as_millis().min(i64::MAX as u128) as i64;
        let mut follower = Some(self);
        let mut signals = Some(signals);
        loop {
            let mut read = false;
            tokio::select! {
                _ = shutdown.wait() => return,
                s = async { signals.as_mut().expect("guarded").recv().await }, if signals.is_some() => {
                    let me = follower.as_mut().expect("kept");
                    match s {
                        Some(Signal::Listening) => {
                            me.listening = true;
                            read = true;
                        }
                        Some(Signal::Notified(seq)) => read = seq > me.pos,
                        Some(Signal::Lost) => {
                            me.listening = false;
                            me.health.current.store(false, Ordering::Relaxed);
                            // The database may be down too: find out now.
                            read = true;
                        }
                        // No listener (it stopped): polling only.
                        None => {
                            me.listening = false;
                            me.health.current.store(false, Ordering::Relaxed);
                            signals = None;
                        }
                    }
                }
                _ = ticker.tick() => read = true,
                _ = gauges.tick() => {
                    let me = follower.as_ref().expect("kept");
                    me.health.publish(&me.metrics);
                }
                _ = prune.tick() => {
                    let log = follower.as_ref().expect("kept").log.clone();
                    match tokio::task::spawn_blocking(move || log.prune_older(keep_ms, now_ms())).await {
                        Ok(Ok(n)) if n > 0 => tracing::info!(rows = n, "old change-log rows pruned"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "pruning the change log failed"),
                        _ => {}
                    }
                }
            }
            if !read {
                continue;
            }
            // Drain what else came meanwhile: one catch-up covers it.
            while let Some(Ok(s)) = signals.as_mut().map(|r| r.try_recv()) {
                let me = follower.as_mut().expect("kept");
                match s {
                    Signal::Listening => me.listening = true,
                    Signal::Lost => me.listening = false,
                    Signal::Notified(_) => {}
                }
            }
            let mut me = follower.take().expect("kept");
            let (me, r) = match tokio::task::spawn_blocking(move || {
                let r = me.checked_catch_up();
                (me, r)
            })
            .await
            {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "the change-log follower's catch-up panicked; it stops");
                    return;
                }
            };
            if let Ok(c) = r
                && c.applied > 0
            {
                tracing::debug!(applied = c.applied, position = me.pos, "changes applied");
            }
            follower = Some(me);
        }
    }
}

/// Applies `changes` in order to the set and the directory: runs of adds
/// go in one publication, removals one by one (each idempotent).
pub fn apply(list: &Exceptions, contacts: &Directory, changes: &[Change]) {
    let now = list.clock().now_ms();
    let mut adds = Vec::new();
    let mut contact_adds: Vec<Contact> = Vec::new();
    let mut expiring = false;
    let flush = |adds: &mut Vec<_>, contact_adds: &mut Vec<Contact>| {
        if !adds.is_empty() {
            list.set().insert_items(adds);
            adds.clear();
        }
        if !contact_adds.is_empty() {
            contacts.upsert(contact_adds);
            contact_adds.clear();
        }
    };
    for c in changes {
        match &c.op {
            ChangeOp::Upsert { expires_at, .. } => {
                expiring |= expires_at.is_some();
                if expires_at.is_some_and(|t| t <= now) {
                    continue;
                }
                adds.extend(c.item());
            }
            ChangeOp::Remove { .. } => {
                flush(&mut adds, &mut contact_adds);
                if let Some(item) = c.item() {
                    list.set().remove_item(&item);
                }
            }
            ChangeOp::ContactUpsert(contact) => contact_adds.push(contact.clone()),
            ChangeOp::ContactRemove { client } => {
                flush(&mut adds, &mut contact_adds);
                contacts.remove(client);
            }
        }
    }
    flush(&mut adds, &mut contact_adds);
    list.published(expiring);
}

/// Starts following `pg`'s change log from `pos` (read before the list
/// and directory were loaded): its listener connection and the follower,
/// as `tasks` of the server.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    tasks: &mut tokio::task::JoinSet<()>,
    pg: Arc<super::postgres::PgStore>,
    pos: i64,
    list: Arc<Exceptions>,
    contacts: Arc<Directory>,
    health: Arc<StoreHealth>,
    metrics: Arc<Metrics>,
    cfg: &crate::config::StoreConfig,
    shutdown: Shutdown,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tasks.spawn(super::postgres::listen::run(
        pg.target().clone(),
        tx,
        shutdown.clone(),
    ));
    let follower = Follower::new(pg.clone(), list, contacts, pg, health, metrics, pos);
    tasks.spawn(follower.run(
        rx,
        Duration::from_secs(*cfg.poll_secs.get_ref()),
        Duration::from_secs(cfg.changes_keep_secs),
        shutdown,
    ));
}
