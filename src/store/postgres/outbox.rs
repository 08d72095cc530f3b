//! The CRM outbox, its dead-letter table and the CRM's call ids.

use super::PgStore;
use crate::store::{NewEvent, OutEvent, OutboxStore, StoreError};

/// Queues `events` inside the caller's transaction, in order (one
/// statement).
pub(super) async fn insert_events(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[NewEvent],
    now: i64,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let sink: Vec<&str> = events.iter().map(|e| e.sink.as_str()).collect();
    let call: Vec<&str> = events.iter().map(|e| e.call.as_str()).collect();
    let kind: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let payload: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    let st = tx
        .prepare_cached(
            "INSERT INTO outbox (sink, call, kind, payload, created_at, next_at)
             SELECT sink, call, kind, payload, $5, $5
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                    WITH ORDINALITY AS t(sink, call, kind, payload, ord)
              ORDER BY ord",
        )
        .await?;
    tx.execute(&st, &[&sink, &call, &kind, &payload, &now])
        .await?;
    Ok(())
}

/// A row of `SELECT id, call, kind, payload, created_at, attempts,
/// next_at FROM outbox`.
pub(super) fn out_event(r: &tokio_postgres::Row) -> OutEvent {
    OutEvent {
        id: r.get(0),
        call: r.get(1),
        kind: r.get(2),
        payload: r.get(3),
        created_at: r.get(4),
        attempts: r.get(5),
        next_at: r.get(6),
    }
}

impl OutboxStore for PgStore {
    fn enqueue(&self, events: &[NewEvent], now: i64) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.run(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            insert_events(&tx, events, now).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn head(&self, sink: &str, limit: usize) -> Result<Vec<OutEvent>, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            let rows = c
                .query(
                    "SELECT id, call, kind, payload, created_at, attempts, next_at FROM outbox
                      WHERE sink = $1 ORDER BY id LIMIT $2",
                    &[&sink, &(limit.min(i64::MAX as usize) as i64)],
                )
                .await?;
            Ok(rows.iter().map(out_event).collect())
        })
    }

    fn delivered(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.run(async {
            let c = self.conn().await?;
            c.execute("DELETE FROM outbox WHERE id = ANY($1)", &[&ids])
                .await?;
            Ok(())
        })
    }

    fn retry_later(&self, id: i64, next_at: i64, error: &str) -> Result<(), StoreError> {
        self.run(async {
            let c = self.conn().await?;
            c.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_at = $2, last_error = $3
                  WHERE id = $1",
                &[&id, &next_at, &error],
            )
            .await?;
            Ok(())
        })
    }

    fn dead(&self, ids: &[i64], reason: &str, now: i64) -> Result<(), StoreError> {
        self.run(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            tx.execute(
                "WITH gone AS (DELETE FROM outbox WHERE id = ANY($1) RETURNING *)
                 INSERT INTO dead_letter (sink, call, kind, payload, created_at, attempts,
                                          dead_at, reason)
                 SELECT sink, call, kind, payload, created_at, attempts, $2, $3
                   FROM gone ORDER BY id",
                &[&ids, &now, &reason],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn outbox_stats(&self) -> Result<(i64, Option<i64>), StoreError> {
        self.run(async {
            let c = self.conn().await?;
            let r = c
                .query_one(
                    "SELECT (SELECT count(*) FROM outbox),
                            (SELECT created_at FROM outbox ORDER BY id LIMIT 1)",
                    &[],
                )
                .await?;
            Ok((r.get(0), r.get(1)))
        })
    }

    fn outbox_retrying(&self) -> Result<i64, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            Ok(
                c.query_one("SELECT count(*) FROM outbox WHERE attempts > 0", &[])
                    .await?
                    .get(0),
            )
        })
    }

    fn crm_call(&self, sink: &str, call: &str) -> Result<Option<String>, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            Ok(c.query_opt(
                "SELECT crm_id FROM crm_calls WHERE sink = $1 AND call = $2",
                &[&sink, &call],
            )
            .await?
            .map(|r| r.get(0)))
        })
    }

    fn set_crm_call(&self, sink: &str, call: &str, crm_id: &str) -> Result<(), StoreError> {
        self.run(async {
            let c = self.conn().await?;
            c.execute(
                "INSERT INTO crm_calls (sink, call, crm_id) VALUES ($1, $2, $3)
                 ON CONFLICT (sink, call) DO UPDATE SET crm_id = excluded.crm_id",
                &[&sink, &call, &crm_id],
            )
            .await?;
            Ok(())
        })
    }

    fn crm_finished(&self, sink: &str, call: &str) -> Result<bool, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            Ok(c.query_opt(
                "SELECT finished_at IS NOT NULL FROM crm_calls WHERE sink = $1 AND call = $2",
                &[&sink, &call],
            )
            .await?
            .is_some_and(|r| r.get(0)))
        })
    }

    fn set_crm_finished(&self, sink: &str, call: &str, now: i64) -> Result<(), StoreError> {
        self.run(async {
            let c = self.conn().await?;
            c.execute(
                "UPDATE crm_calls SET finished_at = $3 WHERE sink = $1 AND call = $2",
                &[&sink, &call, &now],
            )
            .await?;
            Ok(())
        })
    }

    // Leases: the fleet's (fleet.rs).
    fn claim(&self, sink: &str, _now: i64, limit: usize) -> Result<Vec<OutEvent>, StoreError> {
        self.claim_events(sink, limit)
    }

    fn release(&self, sink: &str, calls: &[String]) -> Result<(), StoreError> {
        self.release_calls(sink, calls)
    }

    fn lease(&self) -> Option<std::time::Duration> {
        Some(self.node().lease())
    }
}
