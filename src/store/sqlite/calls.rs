//! Calls in progress: written by the call tracker in the same transaction
//! as the outbox events they caused, read back once at start.

use rusqlite::params;

use super::SqliteStore;
use super::outbox::insert_events;
use crate::store::{ActiveCall, CallStore, NewEvent, StoreError};

/// A row of `SELECT sip_call_id, call, state, last_ms FROM active_calls`.
fn active_call(r: &rusqlite::Row) -> rusqlite::Result<ActiveCall> {
    Ok(ActiveCall {
        sip_call_id: r.get(0)?,
        call: r.get(1)?,
        state: r.get(2)?,
        last_ms: r.get(3)?,
    })
}

impl CallStore for SqliteStore {
    fn save_calls(
        &self,
        events: &[NewEvent],
        active: &[ActiveCall],
        ended: &[Box<[u8]>],
        now: i64,
    ) -> Result<(), StoreError> {
        if events.is_empty() && active.is_empty() && ended.is_empty() {
            return Ok(());
        }
        let mut c = self.writer();
        let tx = c.transaction()?;
        insert_events(&tx, events, now)?;
        {
            let mut del = tx.prepare_cached("DELETE FROM active_calls WHERE sip_call_id = ?1")?;
            for k in ended {
                del.execute([&k[..]])?;
            }
            let mut up = tx.prepare_cached(
                "INSERT INTO active_calls (sip_call_id, call, state, last_ms, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (sip_call_id) DO UPDATE SET call = excluded.call,
                   state = excluded.state, last_ms = excluded.last_ms,
                   updated_at = excluded.updated_at",
            )?;
            for a in active {
                up.execute(params![a.sip_call_id, a.call, a.state, a.last_ms, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn active_calls(&self) -> Result<Vec<ActiveCall>, StoreError> {
        let c = self.reader();
        let mut st =
            c.prepare("SELECT sip_call_id, call, state, last_ms FROM active_calls ORDER BY rowid")?;
        let rows = st.query_map([], active_call)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn find_calls(&self, sip_call_ids: &[Box<[u8]>]) -> Result<Vec<ActiveCall>, StoreError> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT sip_call_id, call, state, last_ms FROM active_calls WHERE sip_call_id = ?1",
        )?;
        let mut out = Vec::new();
        for k in sip_call_ids {
            let mut rows = st.query_map([&k[..]], active_call)?;
            if let Some(row) = rows.next() {
                out.push(row?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OutboxStore;

    fn call(k: &str, state: &str) -> ActiveCall {
        ActiveCall {
            sip_call_id: k.as_bytes().to_vec(),
            call: format!("crm-{k}"),
            state: state.to_string(),
            last_ms: 7,
        }
    }

    fn ev(call: &str, kind: &str) -> NewEvent {
        NewEvent {
            sink: "portal".into(),
            call: call.into(),
            kind: kind.into(),
            payload: "{}".into(),
        }
    }

    // Calls and their events written together, surviving a reopen:
    // tests/store_contract.rs (both backends).

    #[test]
    fn a_failed_batch_writes_neither_events_nor_calls() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        // The call row is refused after its event was inserted: the
        // whole batch goes.
        s.writer()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON active_calls WHEN new.call = 'crm-bad'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let mut bad = call("bad", "{}");
        bad.call = "crm-bad".into();
        assert!(
            s.save_calls(&[ev("crm-bad", "call.started")], &[bad], &[], 1)
                .is_err()
        );
        assert!(s.active_calls().unwrap().is_empty());
        assert_eq!(s.outbox_stats().unwrap().0, 0);
    }
}
