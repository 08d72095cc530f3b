//! The embedded store: one SQLite file (`sipscreen.db` in the data
//! directory) in WAL mode with `synchronous=FULL`, so a committed
//! transaction has been fsynced to the WAL before `upsert`/`remove` return.
//! A crash (kill -9, power loss) loses at most a transaction that had not
//! returned; SQLite's recovery replays the WAL on the next open.
//!
//! Two connections: one writer (writes serialise on it) and one reader for
//! listings, so a long import never delays a `GET`. Both are behind a
//! `Mutex` and are used from blocking threads only, never on the SIP path.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use super::{
    AuditRow, Entry, ExceptionStore, Kind, ListFilter, NewEntry, NewEvent, OutEvent, OutboxStore,
    StoreError, Upserted,
};

/// File name inside the data directory.
pub const FILE_NAME: &str = "sipscreen.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    id         INTEGER PRIMARY KEY,
    kind       TEXT    NOT NULL CHECK (kind IN ('phone', 'email')),
    value      TEXT    NOT NULL UNIQUE,
    given      TEXT    NOT NULL,
    comment    TEXT    NOT NULL DEFAULT '',
    origin     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT    NOT NULL,
    updated_at INTEGER,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    kind    TEXT    NOT NULL,
    value   TEXT    NOT NULL,
    comment TEXT    NOT NULL,
    origin  TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY,
    sink       TEXT    NOT NULL,
    call       TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    INTEGER NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_sink ON outbox (sink, id);
CREATE TABLE IF NOT EXISTS dead_letter (
    id         INTEGER PRIMARY KEY,
    sink       TEXT    NOT NULL,
    call       TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL,
    dead_at    INTEGER NOT NULL,
    reason     TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS crm_calls (
    sink    TEXT NOT NULL,
    call    TEXT NOT NULL,
    crm_id  TEXT NOT NULL,
    PRIMARY KEY (sink, call)
);
CREATE TABLE IF NOT EXISTS contacts (
    client     TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    extension  TEXT NOT NULL DEFAULT '',
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// The outbox gauges: queued events (counted on the `outbox_sink` index)
/// and the creation time of the first one queued (the lowest id: events
/// are queued with the time of their batch, in id order), without a scan
/// of the table, which took 70-90 ms a second with 200 000 queued.
const OUTBOX_STATS: &str = "SELECT (SELECT count(*) FROM outbox),
    (SELECT created_at FROM outbox ORDER BY id LIMIT 1)";

const ENTRY_COLUMNS: &str =
    "id, kind, value, given, comment, origin, created_at, created_by, updated_at, expires_at";

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/sipscreen.db`.
    pub fn open_dir(dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot create data directory {}: {e}", dir.display()),
            ))
        })?;
        Self::open(&dir.join(FILE_NAME))
    }

    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        let open = |flags| {
            let c =
                Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
                    path: shown.clone(),
                    source,
                })?;
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            Ok::<_, StoreError>(c)
        };
        let writer = open(OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)?;
        writer.execute_batch(SCHEMA)?;
        let reader = open(OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-transaction rolled it back when the guard dropped.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn kind_of(s: &str) -> Result<Kind, rusqlite::Error> {
    Kind::parse(s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Text,
            format!("unknown kind {s:?}").into(),
        )
    })
}

fn entry(r: &Row<'_>) -> Result<Entry, rusqlite::Error> {
    Ok(Entry {
        id: r.get(0)?,
        kind: kind_of(&r.get::<_, String>(1)?)?,
        value: r.get(2)?,
        given: r.get(3)?,
        comment: r.get(4)?,
        origin: r.get(5)?,
        created_at: r.get(6)?,
        created_by: r.get(7)?,
        updated_at: r.get(8)?,
        expires_at: r.get(9)?,
    })
}

/// Who did what, when: the fixed part of audit rows.
struct Act<'a> {
    at: i64,
    actor: &'a str,
    action: &'a str,
}

fn audit_row(
    tx: &Connection,
    act: &Act<'_>,
    kind: Kind,
    value: &str,
    comment: &str,
    origin: &str,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO audit (at, actor, action, kind, value, comment, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        act.at,
        act.actor,
        act.action,
        kind.as_str(),
        value,
        comment,
        origin
    ])?;
    Ok(())
}

/// Deletes what `sql` selects (with `RETURNING` the entry columns) and
/// audits each removal as `action`.
fn delete_returning(
    tx: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    actor: &str,
    action: &str,
    now: i64,
) -> Result<Vec<Entry>, rusqlite::Error> {
    let gone: Vec<Entry> = tx
        .prepare_cached(sql)?
        .query_map(p, entry)?
        .collect::<Result<_, _>>()?;
    for e in &gone {
        audit_row(
            tx,
            &Act {
                at: now,
                actor,
                action,
            },
            e.kind,
            &e.value,
            &e.comment,
            &e.origin,
        )?;
    }
    Ok(gone)
}

impl ExceptionStore for SqliteStore {
    fn load_active(&self, now: i64) -> Result<(Vec<u64>, Vec<String>), StoreError> {
        let c = self.reader();
        let mut phones = Vec::new();
        let mut emails = Vec::new();
        let mut st = c.prepare(
            "SELECT kind = 'phone', value FROM entries
             WHERE expires_at IS NULL OR expires_at > ?1",
        )?;
        let mut rows = st.query([now])?;
        while let Some(r) = rows.next()? {
            let phone: bool = r.get(0)?;
            let v = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            if phone {
                let n = crate::screening::normalize::parse_e164(v)
                    .ok_or_else(|| StoreError::Corrupt(format!("phone value {v:?}")))?;
                phones.push(n);
            } else {
                emails.push(v.to_string());
            }
        }
        Ok((phones, emails))
    }

    fn upsert(&self, entries: &[NewEntry], actor: &str, now: i64) -> Result<Upserted, StoreError> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let mut out = Upserted::default();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO entries (kind, value, given, comment, origin, created_at, created_by, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (value) DO NOTHING",
            )?;
            let mut update = tx.prepare_cached(
                "UPDATE entries SET comment = ?2, expires_at = ?3, updated_at = ?4
                 WHERE value = ?1 AND (comment IS NOT ?2 OR expires_at IS NOT ?3)
                 RETURNING origin",
            )?;
            for e in entries {
                let n = insert.execute(params![
                    e.kind.as_str(),
                    e.value,
                    e.given,
                    e.comment,
                    e.origin,
                    now,
                    actor,
                    e.expires_at
                ])?;
                if n == 1 {
                    out.added += 1;
                    audit_row(
                        &tx,
                        &Act {
                            at: now,
                            actor,
                            action: "add",
                        },
                        e.kind,
                        &e.value,
                        &e.comment,
                        &e.origin,
                    )?;
                    continue;
                }
                let origin: Option<String> = update
                    .query_row(params![e.value, e.comment, e.expires_at, now], |r| r.get(0))
                    .optional()?;
                match origin {
                    Some(origin) => {
                        out.updated += 1;
                        audit_row(
                            &tx,
                            &Act {
                                at: now,
                                actor,
                                action: "update",
                            },
                            e.kind,
                            &e.value,
                            &e.comment,
                            &origin,
                        )?;
                    }
                    None => out.unchanged += 1,
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn remove(&self, value: &str, actor: &str, now: i64) -> Result<Option<Entry>, StoreError> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let sql = format!("DELETE FROM entries WHERE value = ?1 RETURNING {ENTRY_COLUMNS}");
        let gone = delete_returning(&tx, &sql, [value], actor, "remove", now)?;
        tx.commit()?;
        Ok(gone.into_iter().next())
    }

    fn expire(&self, now: i64) -> Result<Vec<Entry>, StoreError> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let sql = format!(
            "DELETE FROM entries WHERE expires_at IS NOT NULL AND expires_at <= ?1
             RETURNING {ENTRY_COLUMNS}"
        );
        let gone = delete_returning(&tx, &sql, [now], "expiry", "expire", now)?;
        tx.commit()?;
        Ok(gone)
    }

    fn next_expiry(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.reader().query_row(
            "SELECT min(expires_at) FROM entries WHERE expires_at IS NOT NULL",
            [],
            |r| r.get(0),
        )?)
    }

    fn list(&self, f: &ListFilter) -> Result<Vec<Entry>, StoreError> {
        let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, cond: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&cond.replace('?', &format!("?{}", args.len())));
        };
        if let Some(k) = f.kind {
            arg(&mut sql, " AND kind = ?", k.as_str().to_string().into());
        }
        if let Some(v) = &f.value {
            arg(&mut sql, " AND value = ?", v.clone().into());
        }
        if let Some(p) = &f.prefix {
            // A range on the unique index: every string starting with `p`
            // sorts in [p, p + U+10FFFF).
            arg(&mut sql, " AND value >= ?", p.clone().into());
            arg(&mut sql, " AND value < ?", format!("{p}\u{10FFFF}").into());
        }
        if let Some(q) = &f.comment {
            arg(
                &mut sql,
                " AND instr(lower(comment), lower(?)) > 0",
                q.clone().into(),
            );
        }
        if let Some(b) = f.before {
            arg(&mut sql, " AND id < ?", b.into());
        }
        arg(
            &mut sql,
            " ORDER BY id DESC LIMIT ?",
            (f.limit as i64).into(),
        );
        let c = self.reader();
        let mut st = c.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args), entry)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn audit(
        &self,
        value: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT id, at, actor, action, kind, value, comment, origin FROM audit
             WHERE (?1 IS NULL OR value = ?1) AND (?2 IS NULL OR id < ?2)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = st.query_map(params![value, before, limit as i64], |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                kind: kind_of(&r.get::<_, String>(4)?)?,
                value: r.get(5)?,
                comment: r.get(6)?,
                origin: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .reader()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.writer().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }
}

fn contact(r: &Row<'_>) -> Result<crate::contacts::Contact, rusqlite::Error> {
    Ok(crate::contacts::Contact {
        client: r.get(0)?,
        user_id: r.get(1)?,
        extension: r.get(2)?,
    })
}

impl super::ContactStore for SqliteStore {
    fn upsert_contacts(
        &self,
        contacts: &[crate::contacts::Contact],
        actor: &str,
        now: i64,
    ) -> Result<(usize, usize), StoreError> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let (mut added, mut updated) = (0, 0);
        {
            let mut exists = tx.prepare_cached("SELECT 1 FROM contacts WHERE client = ?1")?;
            let mut up = tx.prepare_cached(
                "INSERT INTO contacts (client, user_id, extension, updated_at, updated_by)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (client) DO UPDATE SET user_id = excluded.user_id,
                   extension = excluded.extension, updated_at = excluded.updated_at,
                   updated_by = excluded.updated_by",
            )?;
            for k in contacts {
                if exists.exists([&k.client])? {
                    updated += 1;
                } else {
                    added += 1;
                }
                up.execute(params![k.client, k.user_id, k.extension, now, actor])?;
            }
        }
        tx.commit()?;
        Ok((added, updated))
    }

    fn remove_contact(&self, client: &str) -> Result<bool, StoreError> {
        Ok(self
            .writer()
            .execute("DELETE FROM contacts WHERE client = ?1", [client])?
            == 1)
    }

    fn list_contacts(
        &self,
        user: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::contacts::Contact>, StoreError> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT client, user_id, extension FROM contacts
             WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR client > ?2)
             ORDER BY client LIMIT ?3",
        )?;
        let rows = st.query_map(params![user, after, limit as i64], contact)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn all_contacts(&self) -> Result<Vec<crate::contacts::Contact>, StoreError> {
        let c = self.reader();
        let mut st = c.prepare("SELECT client, user_id, extension FROM contacts")?;
        let rows = st.query_map([], contact)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl OutboxStore for SqliteStore {
    fn enqueue(&self, events: &[NewEvent], now: i64) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut c = self.writer();
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO outbox (sink, call, kind, payload, created_at, next_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?;
            for e in events {
                st.execute(params![e.sink, e.call, e.kind, e.payload, now])?;
            }
        }
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
                "INSERT INTO dead_letter (id, sink, call, kind, payload, created_at, attempts, dead_at, reason)
                 SELECT id, sink, call, kind, payload, created_at, attempts, ?2, ?3 FROM outbox WHERE id = ?1",
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
        let first = s.head("b", 1).unwrap()[0].id;
        s.delivered(&[first]).unwrap();
        assert_eq!(s.outbox_stats().unwrap(), (999, Some(2_000)));
        let c = s.reader();
        let mut st = c.prepare(OUTBOX_STATS).unwrap();
        st.query_row([], |_| Ok(())).unwrap();
        let steps = st.get_status(rusqlite::StatementStatus::FullscanStep);
        assert!(steps < 10, "{steps} rows stepped through for the gauges");
    }

    fn phone(v: &str, comment: &str) -> NewEntry {
        NewEntry {
            kind: Kind::Phone,
            value: v.to_string(),
            given: v.to_string(),
            comment: comment.to_string(),
            origin: "api".to_string(),
            expires_at: None,
        }
    }

    #[test]
    fn upsert_counts_adds_updates_and_audits_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        let r = s
            .upsert(
                &[phone("+4930901820", "a"), phone("+4930901821", "b")],
                "alice",
                1,
            )
            .unwrap();
        assert_eq!((r.added, r.updated, r.unchanged), (2, 0, 0));
        let r = s
            .upsert(
                &[phone("+4930901820", "a"), phone("+4930901821", "c")],
                "bob",
                2,
            )
            .unwrap();
        assert_eq!((r.added, r.updated, r.unchanged), (0, 1, 1));
        let audit = s.audit(Some("+4930901821"), None, 10).unwrap();
        let got: Vec<(&str, &str, &str)> = audit
            .iter()
            .map(|a| (a.action.as_str(), a.actor.as_str(), a.comment.as_str()))
            .collect();
        assert_eq!(got, [("update", "bob", "c"), ("add", "alice", "b")]);
        let (phones, emails) = s.load_active(3).unwrap();
        assert_eq!(phones.len(), 2);
        assert!(emails.is_empty());
    }

    #[test]
    fn list_filters_and_pages_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        let many: Vec<NewEntry> = (0..25)
            .map(|i| {
                phone(
                    &format!("+49309018{i:02}"),
                    if i % 2 == 0 { "Even one" } else { "odd" },
                )
            })
            .collect();
        s.upsert(&many, "t", 1).unwrap();
        let page = |before| {
            s.list(&ListFilter {
                comment: Some("EVEN".into()),
                before,
                limit: 5,
                ..Default::default()
            })
            .unwrap()
        };
        let first = page(None);
        assert_eq!(first[0].value, "+4930901824");
        assert_eq!(first.len(), 5);
        let second = page(Some(first[4].id));
        assert_eq!(second[0].value, "+4930901814");
        let pre = s
            .list(&ListFilter {
                prefix: Some("+493090181".into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(pre.len(), 10);
    }

    #[test]
    fn remove_and_expire_leave_audit_rows() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        let mut temp = phone("+4930901899", "temp");
        temp.expires_at = Some(100);
        s.upsert(&[phone("+4930901820", "x"), temp], "t", 1)
            .unwrap();
        assert_eq!(s.next_expiry().unwrap(), Some(100));
        assert_eq!(s.load_active(150).unwrap().0, [4930901820]);
        assert!(s.expire(99).unwrap().is_empty());
        assert_eq!(s.expire(100).unwrap()[0].value, "+4930901899");
        assert_eq!(
            s.remove("+4930901820", "t", 200).unwrap().unwrap().comment,
            "x"
        );
        assert!(s.remove("+4930901820", "t", 201).unwrap().is_none());
        let actions: Vec<String> = s
            .audit(None, None, 10)
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(actions, ["remove", "expire", "add", "add"]);
    }

    #[test]
    fn reopening_finds_everything_committed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open_dir(dir.path()).unwrap();
            s.upsert(&[phone("+4930901820", "x")], "t", 1).unwrap();
            s.set_meta("file", "abc").unwrap();
        }
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        assert_eq!(s.load_active(2).unwrap().0, [4930901820]);
        assert_eq!(s.meta("file").unwrap().as_deref(), Some("abc"));
    }
}
