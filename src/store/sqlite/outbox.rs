//! The CRM outbox, its dead-letter table and the CRM's call ids.

use rusqlite::{OptionalExtension, params};

use rusqlite::Connection;

use super::SqliteStore;
use crate::store::{NewEvent, OutEvent, OutboxStore, StoreError};

/// Queues `events` inside the caller's transaction.
pub(super) fn insert_events(
    tx: &Connection,
    events: &[NewEvent],
    now: i64,
) -> Result<(), rusqlite::Error> {
    let mut st = tx.prepare_cached(
        "INSERT INTO outbox (sink, call, kind, payload, created_at, next_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?;
    for e in events {
        st.execute(params![e.sink, e.call, e.kind, e.payload, now])?;
    }
    Ok(())
}

impl OutboxStore for SqliteStore {
    fn enqueue(&self, events: &[NewEvent], now: i64) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut c = self.writer();
        let tx = c.transaction()?;
        insert_events(&tx, events, now)?;
        tx.commit()?;
        Ok(())
    }

    fn head(&self, sink: &str, limit: usize) -> Result<Vec<OutEvent>, StoreError> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT id, call, kind, payload, created_at, attempts, next_at FROM outbox
             WHERE sink = ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = st.query_map(params![sink, limit as i64], |r| {
            Ok(OutEvent {
                id: r.get(0)?,
                call: r.get(1)?,
                kind: r.get(2)?,
                payload: r.get(3)?,
                created_at: r.get(4)?,
                attempts: r.get(5)?,
                next_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delivered(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
            for id in ids {
                st.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn retry_later(&self, id: i64, next_at: i64, error: &str) -> Result<(), StoreError> {
        self.writer().execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?2, last_error = ?3 WHERE id = ?1",
            params![id, next_at, error],
        )?;
        Ok(())
    }

    fn dead(&self, ids: &[i64], reason: &str, now: i64) -> Result<(), StoreError> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        {
            let mut mv = tx.prepare_cached(
                // dead_letter numbers its rows itself: an outbox id comes
                // again once the outbox has emptied (SQLite reuses the
                // highest rowid + 1), and was unique there only.
                "INSERT INTO dead_letter (sink, call, kind, payload, created_at, attempts, dead_at, reason)
                 SELECT sink, call, kind, payload, created_at, attempts, ?2, ?3 FROM outbox WHERE id = ?1",
            )?;
            let mut del = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
            for id in ids {
                mv.execute(params![id, now, reason])?;
                del.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn outbox_stats(&self) -> Result<(i64, Option<i64>), StoreError> {
        Ok(self
            .reader()
            .query_row("SELECT count(*), min(created_at) FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?)
    }

    fn outbox_retrying(&self) -> Result<i64, StoreError> {
        Ok(self
            .reader()
            .query_row("SELECT count(*) FROM outbox WHERE attempts > 0", [], |r| {
                r.get(0)
            })?)
    }

    fn crm_call(&self, sink: &str, call: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .reader()
            .query_row(
                "SELECT crm_id FROM crm_calls WHERE sink = ?1 AND call = ?2",
                [sink, call],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn set_crm_call(&self, sink: &str, call: &str, crm_id: &str) -> Result<(), StoreError> {
        self.writer().execute(
            "INSERT INTO crm_calls (sink, call, crm_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (sink, call) DO UPDATE SET crm_id = excluded.crm_id",
            [sink, call, crm_id],
        )?;
        Ok(())
    }

    fn crm_finished(&self, sink: &str, call: &str) -> Result<bool, StoreError> {
        Ok(self
            .reader()
            .query_row(
                "SELECT finished_at IS NOT NULL FROM crm_calls WHERE sink = ?1 AND call = ?2",
                [sink, call],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    fn set_crm_finished(&self, sink: &str, call: &str, now: i64) -> Result<(), StoreError> {
        self.writer().execute(
            "UPDATE crm_calls SET finished_at = ?3 WHERE sink = ?1 AND call = ?2",
            params![sink, call, now],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(call: &str) -> NewEvent {
        NewEvent {
            sink: "portal".into(),
            call: call.into(),
            kind: "call.ended".into(),
            payload: "{}".into(),
        }
    }

    #[test]
    fn dead_lettering_works_after_the_outbox_emptied_and_ids_came_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        s.enqueue(&[ev("a")], 1).unwrap();
        let a = s.head("portal", 10).unwrap()[0].id;
        s.dead(&[a], "refused", 2).unwrap();
        // The outbox is empty: SQLite hands out the same rowid again.
        s.enqueue(&[ev("b")], 3).unwrap();
        let b = s.head("portal", 10).unwrap()[0].id;
        assert_eq!(a, b);
        s.dead(&[b], "refused", 4).unwrap();
        assert_eq!(s.outbox_stats().unwrap().0, 0);
        let calls: Vec<String> = s
            .reader()
            .prepare("SELECT call FROM dead_letter ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(calls, ["a", "b"]);
    }
}
