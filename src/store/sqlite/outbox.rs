//! The CRM outbox, its dead-letter table and the CRM's call ids.

use rusqlite::{OptionalExtension, params};

use std::sync::LazyLock;

use rusqlite::Connection;

use super::SqliteStore;
use super::chunked::{Chunked, Statements};
use crate::store::{NewEvent, OutEvent, OutboxStore, StoreError};

/// The outbox gauges, refreshed every second: the number of queued events
/// and the creation time of the first one queued (the lowest id: events
/// are queued with the time of their batch, in id order), without a scan
/// of the table, which took 70-90 ms a second with 200 000 queued.
const OUTBOX_STATS: &str = "SELECT (SELECT count(*) FROM outbox),
    (SELECT created_at FROM outbox ORDER BY id LIMIT 1)";

/// Events that failed at least once, counted on a partial index (only the
/// retrying rows), not by a scan of the whole outbox.
const OUTBOX_RETRYING: &str =
    "SELECT count(*) FROM outbox INDEXED BY outbox_retrying WHERE attempts > 0";

/// The outbox's multi-row `INSERT`: `?1` the time, then sink, call, kind
/// and payload of each row. `OR ROLLBACK`: a row that fails a constraint
/// rolls the whole transaction back (which its callers do on any error
/// anyway) instead of only this statement, so SQLite keeps no statement
/// journal for it: with the default `ABORT`, every page a multi-row
/// statement touches first is copied into that journal (`benches/tracker.rs`:
/// about 2,000 instructions per call).
static INSERT: LazyLock<Chunked> = LazyLock::new(|| {
    Chunked::new(
        "INSERT OR ROLLBACK INTO outbox (sink, call, kind, payload, created_at, next_at) VALUES ",
        1,
        4,
        |p| format!("(?{p}, ?{}, ?{}, ?{}, ?1, ?1)", p + 1, p + 2, p + 3),
        "",
    )
});

/// Queues `events` inside the caller's transaction, in id order.
pub(super) fn insert_events(
    tx: &Connection,
    statements: &mut Statements,
    events: &[NewEvent],
    now: i64,
) -> Result<(), rusqlite::Error> {
    INSERT.run(tx, statements, events, &[now], |b, p, e| {
        b.text(p, &e.sink)?;
        b.text(p + 1, &e.call)?;
        b.text(p + 2, &e.kind)?;
        b.text(p + 3, &e.payload)
    })
}

impl OutboxStore for SqliteStore {
    fn enqueue(&self, events: &[NewEvent], now: i64) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut w = self.writer();
        let w = &mut *w;
        let tx = w.conn.transaction()?;
        insert_events(&tx, &mut w.statements, events, now)?;
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
            .query_row(OUTBOX_STATS, [], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    fn outbox_retrying(&self) -> Result<i64, StoreError> {
        Ok(self.reader().query_row(OUTBOX_RETRYING, [], |r| r.get(0))?)
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

    #[test]
    fn the_outbox_gauges_do_not_scan_the_outbox() {
        // /metrics refreshes them every second; with a backlog of 200 000
        // events a scan of the table took 70-90 ms (found by the soak),
        // with the reader (and the CRM worker's next read) waiting.
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        assert_eq!(s.outbox_stats().unwrap(), (0, None));
        let ev = |sink: &str, i: usize| NewEvent {
            sink: sink.to_string(),
            call: format!("c{i}"),
            kind: "call.started".to_string(),
            payload: "{}".to_string(),
        };
        let a: Vec<NewEvent> = (0..500).map(|i| ev("a", i)).collect();
        let b: Vec<NewEvent> = (0..500).map(|i| ev("b", i)).collect();
        s.enqueue(&b, 2_000).unwrap();
        s.enqueue(&a, 3_000).unwrap();
        let head = s.head("b", 2).unwrap();
        s.delivered(&[head[0].id]).unwrap();
        s.retry_later(head[1].id, 9_000, "refused").unwrap();
        assert_eq!(s.outbox_stats().unwrap(), (999, Some(2_000)));
        assert_eq!(s.outbox_retrying().unwrap(), 1);
        let c = s.reader();
        for sql in [OUTBOX_STATS, OUTBOX_RETRYING] {
            let mut st = c.prepare(sql).unwrap();
            st.query_row([], |_| Ok(())).unwrap();
            let steps = st.get_status(rusqlite::StatementStatus::FullscanStep);
            assert!(steps < 10, "{steps} rows stepped through for {sql}");
        }
    }

    /// A batch of any statement size is queued whole, each row's own values in
    /// its own columns, in the order given, with the batch's time.
    #[test]
    fn a_batch_of_any_size_is_queued_in_order_with_its_values() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        for n in super::super::chunked::TEST_BATCHES {
            let evs: Vec<NewEvent> = (0..n)
                .map(|i| NewEvent {
                    sink: if i % 3 == 0 { "a" } else { "b" }.to_string(),
                    call: format!("c{n}-{i}"),
                    kind: format!("k{}", i % 5),
                    payload: format!("{{\"i\":{i}}}"),
                })
                .collect();
            s.enqueue(&evs, 1_000 + n as i64).unwrap();
            let got: Vec<(String, String, String, String, i64, i64)> = s
                .reader()
                .prepare(
                    "SELECT sink, call, kind, payload, created_at, next_at FROM outbox ORDER BY id",
                )
                .unwrap()
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let want: Vec<_> = evs
                .iter()
                .map(|e| {
                    let t = 1_000 + n as i64;
                    (
                        e.sink.clone(),
                        e.call.clone(),
                        e.kind.clone(),
                        e.payload.clone(),
                        t,
                        t,
                    )
                })
                .collect();
            assert_eq!(got, want, "a batch of {n}");
            s.writer().execute("DELETE FROM outbox", []).unwrap();
        }
    }

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
