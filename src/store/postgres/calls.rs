//! Calls in progress: written by the call tracker in the same transaction
//! as the outbox events they caused, read back once at start.

use super::PgStore;
use super::outbox::insert_events;
use crate::store::{ActiveCall, CallStore, NewEvent, StoreError};

/// A row of `SELECT sip_call_id, call, state, last_ms FROM active_calls`.
fn active_call(r: &tokio_postgres::Row) -> ActiveCall {
    ActiveCall {
        sip_call_id: r.get(0),
        call: r.get(1),
        state: r.get(2),
        last_ms: r.get(3),
    }
}

impl CallStore for PgStore {
    fn shared(&self) -> bool {
        true
    }

    // Every row is an upsert: PostgreSQL keeps no statement journal, so
    // which calls are new does not matter here.
    fn save_calls_with_new(
        &self,
        events: &[NewEvent],
        active: &[ActiveCall],
        _new: usize,
        ended: &[Box<[u8]>],
        now: i64,
    ) -> Result<(), StoreError> {
        if events.is_empty() && active.is_empty() && ended.is_empty() {
            return Ok(());
        }
        self.run(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            insert_events(&tx, events, now).await?;
            if !ended.is_empty() {
                let keys: Vec<&[u8]> = ended.iter().map(|k| &k[..]).collect();
                tx.execute(
                    "DELETE FROM active_calls WHERE sip_call_id = ANY($1)",
                    &[&keys],
                )
                .await?;
            }
            // One statement per round: a call written twice in one batch
            // ends as its last write.
            for round in crate::store::rounds(active, |a| a.sip_call_id.as_slice()) {
                let id: Vec<&[u8]> = round.iter().map(|a| a.sip_call_id.as_slice()).collect();
                let call: Vec<&str> = round.iter().map(|a| a.call.as_str()).collect();
                let state: Vec<&str> = round.iter().map(|a| a.state.as_str()).collect();
                let last: Vec<i64> = round.iter().map(|a| a.last_ms).collect();
                let st = tx
                    .prepare_cached(
                        "INSERT INTO active_calls (sip_call_id, call, state, last_ms, updated_at)
                         SELECT id, call, state, last_ms, $5
                           FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bigint[])
                                WITH ORDINALITY AS t(id, call, state, last_ms, ord)
                          ORDER BY ord
                         ON CONFLICT (sip_call_id) DO UPDATE SET call = excluded.call,
                           state = excluded.state, last_ms = excluded.last_ms,
                           updated_at = excluded.updated_at",
                    )
                    .await?;
                tx.execute(&st, &[&id, &call, &state, &last, &now]).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn active_calls(&self) -> Result<Vec<ActiveCall>, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            let rows = c
                .query(
                    "SELECT sip_call_id, call, state, last_ms FROM active_calls ORDER BY ord",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(active_call).collect())
        })
    }

    fn find_calls(&self, sip_call_ids: &[Box<[u8]>]) -> Result<Vec<ActiveCall>, StoreError> {
        if sip_call_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&[u8]> = sip_call_ids.iter().map(|k| &k[..]).collect();
        self.run(async {
            let c = self.conn().await?;
            let rows = c
                .query(
                    "SELECT sip_call_id, call, state, last_ms FROM active_calls
                      WHERE sip_call_id = ANY($1) ORDER BY ord",
                    &[&keys],
                )
                .await?;
            Ok(rows.iter().map(active_call).collect())
        })
    }

    fn stale_calls(
        &self,
        before_ms: i64,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<ActiveCall>, StoreError> {
        let limit = limit as i64;
        self.run(async {
            let c = self.conn().await?;
            let rows = c
                .query(
                    "WITH stale AS (
                         SELECT sip_call_id, last_ms FROM active_calls
                          WHERE last_ms < $1 ORDER BY last_ms LIMIT $3
                            FOR UPDATE SKIP LOCKED)
                     UPDATE active_calls a SET last_ms = $2 FROM stale
                      WHERE a.sip_call_id = stale.sip_call_id
                     RETURNING a.sip_call_id, a.call, a.state, stale.last_ms",
                    &[&before_ms, &now_ms, &limit],
                )
                .await?;
            Ok(rows.iter().map(active_call).collect())
        })
    }
}
