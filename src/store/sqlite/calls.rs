//! Calls in progress: written by the call tracker in the same transaction
//! as the outbox events they caused, read back once at start.

use std::sync::LazyLock;

use super::SqliteStore;
use super::chunked::{Bind, Chunked, Statements, chunks, step};
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

/// The removal of ended calls, many per statement.
static DELETE: LazyLock<Chunked> = LazyLock::new(|| {
    Chunked::new(
        "DELETE FROM active_calls WHERE sip_call_id IN (",
        0,
        1,
        |p| format!("?{p}"),
        ")",
    )
});

/// The write of calls never written before, many per statement: `?1`
/// the time, then each row's Call-ID, call, state and last activity (as
/// in [`UPDATE_ONE`] and [`INSERT_ONE`], by [`bind_call`]). A call found
/// there after all is left to [`write_one`].
///
/// Plain inserts and one-row updates, all `OR ROLLBACK`, instead of one
/// `INSERT … ON CONFLICT DO UPDATE`: an upsert's `DO UPDATE` may abort
/// midway, so SQLite kept a statement journal for it (a copy of every
/// page it touched, spilled to a temporary file past 64 KiB: at 1,000
/// calls a second 90 files and 4,700 writes per 10,000 calls), where `OR
/// ROLLBACK` needs none (its callers roll the whole transaction back on
/// any error anyway) and a one-row statement none either. An `UPDATE …
/// FROM (VALUES …)` for many rows was tried and dropped: with calls
/// answered a flush after their INVITE it cost ~10,700 instructions a
/// call more than the upsert (`benches/tracker.rs`, `RING=1`).
static INSERT: LazyLock<Chunked> = LazyLock::new(|| {
    Chunked::new(
        "INSERT OR ROLLBACK INTO active_calls (sip_call_id, call, state, last_ms, updated_at) VALUES ",
        1,
        4,
        |p| format!("(?{p}, ?{}, ?{}, ?{}, ?1)", p + 1, p + 2, p + 3),
        " ON CONFLICT (sip_call_id) DO NOTHING",
    )
});

/// One call written in place.
static UPDATE_ONE: &str = "UPDATE OR ROLLBACK active_calls
    SET call = ?3, state = ?4, last_ms = ?5, updated_at = ?1 WHERE sip_call_id = ?2";

/// One call that [`UPDATE_ONE`] did not find.
static INSERT_ONE: &str = "INSERT OR ROLLBACK INTO active_calls
    (sip_call_id, call, state, last_ms, updated_at) VALUES (?2, ?3, ?4, ?5, ?1)";

/// Binds a row of [`INSERT`], [`UPDATE_ONE`] or [`INSERT_ONE`] from `?p`
/// on.
fn bind_call<'r>(b: &mut Bind<'r>, p: usize, a: &'r &ActiveCall) -> rusqlite::Result<()> {
    b.blob(p, &a.sip_call_id)?;
    b.text(p + 1, &a.call)?;
    b.text(p + 2, &a.state)?;
    b.int(p + 3, a.last_ms)
}

/// Writes call `a`: updated where it is, else inserted.
fn write_one(
    c: &rusqlite::Connection,
    st: &mut Statements,
    a: &&ActiveCall,
    now: i64,
) -> rusqlite::Result<()> {
    let row = std::slice::from_ref(a);
    if step(c, st, UPDATE_ONE, &[now], 4, row, &mut bind_call)? == 0 {
        step(c, st, INSERT_ONE, &[now], 4, row, &mut bind_call)?;
    }
    Ok(())
}

impl CallStore for SqliteStore {
    fn save_calls_with_new(
        &self,
        events: &[NewEvent],
        active: &[ActiveCall],
        new: usize,
        ended: &[Box<[u8]>],
        now: i64,
    ) -> Result<(), StoreError> {
        if events.is_empty() && active.is_empty() && ended.is_empty() {
            return Ok(());
        }
        let mut w = self.writer();
        let w = &mut *w;
        let tx = w.conn.transaction()?;
        let st = &mut w.statements;
        insert_events(&tx, st, events, now)?;
        DELETE.run(&tx, st, ended, &[], |b, p, k| b.blob(p, k))?;
        let (fresh, kept) = active.split_at(new.min(active.len()));
        // The new calls inserted many per statement, each once (a call
        // twice in one batch ends as its last row: its later rows, and a
        // chunk that found a call there, are written one by one).
        for (n, round) in crate::store::rounds(fresh, |a| a.sip_call_id.as_slice())
            .iter()
            .enumerate()
        {
            if n > 0 {
                for a in round {
                    write_one(&tx, st, a, now)?;
                }
                continue;
            }
            for (size, chunk) in chunks(round) {
                let added = INSERT.run_chunk(&tx, st, size, chunk, &[now], &mut bind_call)?;
                if added < chunk.len() as u64 {
                    for a in chunk {
                        write_one(&tx, st, a, now)?;
                    }
                }
            }
        }
        for a in kept {
            write_one(&tx, st, &a, now)?;
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

    /// Batches of every statement size write, update and remove each
    /// call given, in order, calls there and new ones in one batch; a call
    /// twice in one batch ends as its last row. Told which calls are new
    /// (`hinted`), the same, a call said to be new that is there included.
    #[test]
    fn a_batch_of_any_size_writes_and_removes_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        for hinted in [false, true] {
            for n in super::super::chunked::TEST_BATCHES {
                let rows: Vec<ActiveCall> = (0..n)
                    .map(|i| ActiveCall {
                        last_ms: i as i64,
                        ..call(&format!("{hinted}-{n}-{i}"), "{}")
                    })
                    .collect();
                if hinted {
                    // The first call twice among the new ones.
                    let mut first: Vec<ActiveCall> = rows.iter().take(1).cloned().collect();
                    first
                        .iter_mut()
                        .for_each(|a| a.state = "{\"stale\":0}".into());
                    let batch = [first, rows.clone()].concat();
                    s.save_calls_with_new(&[], &batch, batch.len(), &[], 1)
                } else {
                    s.save_calls(&[], &rows, &[], 1)
                }
                .unwrap();
                assert_eq!(s.active_calls().unwrap(), rows, "{hinted} {n} written");
                // Every other call ends; the rest change, the first one twice
                // (its last row wins).
                let (ended, mut kept): (Vec<_>, Vec<_>) =
                    rows.into_iter().enumerate().partition(|(i, _)| i % 2 == 1);
                let ended: Vec<Box<[u8]>> = ended
                    .into_iter()
                    .map(|(_, a)| a.sip_call_id.into())
                    .collect();
                let mut changed: Vec<ActiveCall> = kept
                    .iter_mut()
                    .map(|(i, a)| {
                        a.state = format!("{{\"i\":{i}}}");
                        a.clone()
                    })
                    .collect();
                if let Some(first) = changed.first().cloned() {
                    changed.insert(
                        0,
                        ActiveCall {
                            state: "{\"stale\":true}".into(),
                            ..first
                        },
                    );
                }
                // New calls (inserted, after the calls that were there):
                // among the changed ones, or told apart first, with the
                // first changed call (there, its only row) said to be new
                // too.
                let added: Vec<ActiveCall> = (0..n / 3)
                    .map(|i| call(&format!("{hinted}-{n}-new-{i}"), "{\"new\":1}"))
                    .collect();
                if hinted {
                    let (there, rest) = changed.split_at(changed.len().min(2));
                    let there = there.last().cloned();
                    let new = added.len() + usize::from(there.is_some());
                    let batch = [&added[..], there.as_slice(), rest].concat();
                    s.save_calls_with_new(&[], &batch, new, &ended, 2)
                } else {
                    for (i, a) in added.iter().enumerate() {
                        changed.insert((3 * i).min(changed.len()), a.clone());
                    }
                    s.save_calls(&[], &changed, &ended, 2)
                }
                .unwrap();
                let mut want: Vec<ActiveCall> = kept.into_iter().map(|(_, a)| a).collect();
                want.extend(added);
                assert_eq!(s.active_calls().unwrap(), want, "{hinted} {n} changed");
                let keys: Vec<Box<[u8]>> =
                    want.iter().map(|a| a.sip_call_id.clone().into()).collect();
                s.save_calls(&[], &[], &keys, 3).unwrap();
                assert!(s.active_calls().unwrap().is_empty(), "{hinted} {n} removed");
            }
        }
    }

    #[test]
    fn a_failed_batch_writes_neither_events_nor_calls() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        // A batch refused by `trigger` for call `name` fails with `why`
        // and writes nothing.
        let refused = |trigger: &str, name: &str, why: &str| {
            s.writer().execute_batch(trigger).unwrap();
            let mut row = call(name, "{}");
            row.call = format!("crm-{name}");
            let err = s
                .save_calls(&[ev(&row.call, "call.started")], &[row], &[], 1)
                .unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
            assert!(s.active_calls().unwrap().is_empty());
            assert_eq!(s.outbox_stats().unwrap().0, 0);
        };
        // The call row is refused after its event was inserted: the
        // whole batch goes.
        refused(
            "CREATE TRIGGER refuse BEFORE INSERT ON active_calls WHEN new.call = 'crm-bad'
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            "bad",
            "refused",
        );
        // A row refused with the transaction rolled back by SQLite itself
        // (as `INSERT OR ROLLBACK` does) fails the batch the same way.
        refused(
            "CREATE TRIGGER roll BEFORE INSERT ON outbox WHEN new.call = 'crm-roll'
             BEGIN SELECT RAISE(ROLLBACK, 'rolled back'); END;",
            "roll",
            "rolled back",
        );
        // The statements that failed serve the next batch, with its own
        // values (none of the failed batch's bindings left in them).
        let good = call("good", "{\"ok\":1}");
        s.save_calls(
            &[ev("crm-good", "call.started")],
            std::slice::from_ref(&good),
            &[],
            2,
        )
        .unwrap();
        assert_eq!(s.active_calls().unwrap(), vec![good]);
        let head = s.head("portal", 10).unwrap();
        assert_eq!(head.len(), 1);
        assert_eq!(
            (&head[0].call[..], &head[0].kind[..]),
            ("crm-good", "call.started")
        );
    }
}
