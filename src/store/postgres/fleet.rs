//! What a fleet of sidecars shares in PostgreSQL beyond the single-node
//! traits: per-call leases on the outbox, a request allowance per CRM
//! portal, the change log as a follower reads and prunes it.
//!
//! Times of leases and allowances are the database's clock
//! (`clock_timestamp()`), so nodes whose clocks differ still agree on when
//! a lease has run out and how much a portal's allowance has refilled.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::PgStore;
use super::outbox::out_event;
use crate::store::fleet::AllowanceStore;
use crate::store::follow::ChangeLog;
use crate::store::{Change, OutEvent, StoreError};

/// Version 2: outbox leases and portal allowances.
pub(crate) const V2: &str = r#"
CREATE TABLE outbox_leases (
    sink  text COLLATE "C" NOT NULL,
    call  text COLLATE "C" NOT NULL,
    node  text   NOT NULL,
    until bigint NOT NULL,
    PRIMARY KEY (sink, call)
);
CREATE INDEX outbox_leases_until ON outbox_leases (until);
CREATE TABLE crm_allowance (
    key    text COLLATE "C" PRIMARY KEY,
    tokens double precision NOT NULL,
    at     bigint NOT NULL
);
CREATE INDEX outbox_call ON outbox (sink, call, id);
"#;

/// The database's clock in unix milliseconds, in SQL.
const DB_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// `pg_try_advisory_xact_lock` key of the change-log pruning: one node
/// prunes at a time.
const PRUNE_LOCK: i64 = 0x5349_5053_4348_0002;

/// The `meta` key of the highest sequence number pruned.
const PRUNED_THROUGH: &str = "changes_pruned_through";

/// Default outbox lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// This node in the fleet: its name on leases and how long they hold.
pub struct Node {
    pub name: String,
    lease_ms: AtomicI64,
}

impl Node {
    /// A name no other process has: host, process id, a random part.
    pub fn new() -> Node {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".to_string());
        let mut r = [0u8; 4];
        let _ = getrandom::fill(&mut r);
        Node {
            name: format!("{host}:{}:{}", std::process::id(), hex::encode(r)),
            lease_ms: AtomicI64::new(DEFAULT_LEASE.as_millis() as i64),
        }
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(Ordering::Relaxed).max(0) as u64)
    }

    pub fn set_lease(&self, lease: Duration) {
        self.lease_ms.store(
            lease.as_millis().clamp(1000, i64::MAX as u128) as i64,
            Ordering::Relaxed,
        );
    }
}

impl Default for Node {
    fn default() -> Self {
        Node::new()
    }
}

impl PgStore {
    /// This node's name on leases.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// [`crate::store::OutboxStore::claim`]: the calls of the oldest
    /// events no other node holds a live lease on are locked
    /// (`FOR UPDATE SKIP LOCKED`: two nodes claiming at once take
    /// different calls, neither waits), leased to this node, and their
    /// events returned in id order.
    pub(crate) fn claim_events(
        &self,
        sink: &str,
        limit: usize,
    ) -> Result<Vec<OutEvent>, StoreError> {
        let limit = limit.min(10_000) as i64;
        let lease = self.node.lease().as_millis() as i64;
        let node = self.node.name.as_str();
        self.run(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let now: i64 = tx.query_one(&format!("SELECT {DB_NOW}"), &[]).await?.get(0);
            // The oldest `limit` events no other node holds: their calls,
            // oldest first. Every call this leases has its first event
            // among those returned (they are the oldest of its calls).
            let rows = tx
                .query(
                    "SELECT call FROM (
                       SELECT o.call, min(o.id) AS first FROM (
                         SELECT o.id, o.call FROM outbox o
                          WHERE o.sink = $1 AND NOT EXISTS (
                            SELECT 1 FROM outbox_leases l
                             WHERE l.sink = o.sink AND l.call = o.call
                               AND l.node <> $2 AND l.until > $3)
                          ORDER BY o.id LIMIT $4) o
                       GROUP BY o.call) t
                     ORDER BY first",
                    &[&sink, &node, &now, &limit],
                )
                .await?;
            let calls: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            if calls.is_empty() {
                // Idle: leases of calls long done go.
                tx.execute(
                    "DELETE FROM outbox_leases WHERE until < $1",
                    &[&(now - 10 * lease)],
                )
                .await?;
                tx.commit().await?;
                return Ok(Vec::new());
            }
            tx.execute(
                "INSERT INTO outbox_leases (sink, call, node, until)
                 SELECT $1, c, '', 0 FROM unnest($2::text[]) AS c
                 ON CONFLICT (sink, call) DO NOTHING",
                &[&sink, &calls],
            )
            .await?;
            let held: Vec<String> = tx
                .query(
                    "SELECT call FROM outbox_leases
                      WHERE sink = $1 AND call = ANY($2) AND (node = $3 OR until <= $4)
                      FOR UPDATE SKIP LOCKED",
                    &[&sink, &calls, &node, &now],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if held.is_empty() {
                tx.commit().await?;
                return Ok(Vec::new());
            }
            tx.execute(
                "UPDATE outbox_leases SET node = $3, until = $4
                  WHERE sink = $1 AND call = ANY($2)",
                &[&sink, &held, &node, &(now + lease)],
            )
            .await?;
            let evs = tx
                .query(
                    "SELECT id, call, kind, payload, created_at, attempts, next_at FROM outbox
                      WHERE sink = $1 AND call = ANY($2) ORDER BY id LIMIT $3",
                    &[&sink, &held, &limit],
                )
                .await?
                .iter()
                .map(out_event)
                .collect();
            tx.commit().await?;
            Ok(evs)
        })
    }

    /// [`crate::store::OutboxStore::release`]: this node's leases on
    /// `calls` end now.
    pub(crate) fn release_calls(&self, sink: &str, calls: &[String]) -> Result<(), StoreError> {
        if calls.is_empty() {
            return Ok(());
        }
        self.run(async {
            let c = self.conn().await?;
            c.execute(
                "DELETE FROM outbox_leases WHERE sink = $1 AND call = ANY($2) AND node = $3",
                &[&sink, &calls, &self.node.name],
            )
            .await?;
            Ok(())
        })
    }
}

impl AllowanceStore for PgStore {
    /// One statement: refill by the time since the last take (capped at
    /// the burst), take one token, return what is left; below zero, the
    /// token is reserved and the wait is the deficit at `rate`.
    fn take(&self, key: &str, rate: f64, burst: u32) -> Result<Duration, StoreError> {
        let rate = rate.max(0.001);
        let burst = f64::from(burst.max(1));
        self.run(async {
            let c = self.conn().await?;
            let left: f64 = c
                .query_one(
                    &format!(
                        "INSERT INTO crm_allowance AS a (key, tokens, at) VALUES ($1, $3::float8 - 1, {DB_NOW})
                         ON CONFLICT (key) DO UPDATE SET
                           tokens = least($3::float8, a.tokens + greatest(0, {DB_NOW} - a.at) * $2::float8 / 1000.0) - 1,
                           at = {DB_NOW}
                         RETURNING tokens"
                    ),
                    &[&key, &rate, &burst],
                )
                .await?
                .get(0);
            Ok(if left >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-left / rate)
            })
        })
    }

    fn drain(&self, key: &str) -> Result<(), StoreError> {
        self.run(async {
            let c = self.conn().await?;
            c.execute(
                &format!(
                    "UPDATE crm_allowance SET tokens = least(tokens, 0), at = {DB_NOW} WHERE key = $1"
                ),
                &[&key],
            )
            .await?;
            Ok(())
        })
    }
}

impl ChangeLog for PgStore {
    fn changes_since(&self, seq: i64, limit: usize) -> Result<Vec<Change>, StoreError> {
        PgStore::changes_since(self, seq, limit)
    }

    fn latest_change(&self) -> Result<i64, StoreError> {
        Ok(self.change_bounds()?.1)
    }

    fn pruned_through(&self) -> Result<i64, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            Ok(
                c.query_opt("SELECT value FROM meta WHERE key = $1", &[&PRUNED_THROUGH])
                    .await?
                    .and_then(|r| r.get::<_, String>(0).parse().ok())
                    .unwrap_or(0),
            )
        })
    }

    /// Under a transaction-level advisory lock (another node pruning now:
    /// nothing to do): deletes the prefix of the log older than `keep_ms`
    /// and records how far it went.
    fn prune_older(&self, keep_ms: i64, now: i64) -> Result<u64, StoreError> {
        self.run(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let locked: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
                .await?
                .get(0);
            if !locked {
                return Ok(0);
            }
            let upto: Option<i64> = tx
                .query_one(
                    "SELECT max(seq) FROM changes WHERE at < $1",
                    &[&(now - keep_ms)],
                )
                .await?
                .get(0);
            let Some(upto) = upto else {
                return Ok(0);
            };
            let n = tx
                .execute("DELETE FROM changes WHERE seq <= $1", &[&upto])
                .await?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = greatest(meta.value::bigint, excluded.value::bigint)::text",
                &[&PRUNED_THROUGH, &upto.to_string()],
            )
            .await?;
            tx.commit().await?;
            Ok(n)
        })
    }
}
