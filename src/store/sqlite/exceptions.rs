//! Exceptions: the list, its audit trail and the small key/value state.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::SqliteStore;
use crate::screening::exceptions::Item;
use crate::store::{
    AuditRow, Entry, ExceptionStore, Kind, ListFilter, NewEntry, Pattern, StoreError, Upserted,
    action_str, item_of,
};

const ENTRY_COLUMNS: &str = "id, kind, value, given, comment, origin, created_at, created_by, \
                             updated_at, expires_at, pattern, action";

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
        pattern: Pattern::parse(&r.get::<_, String>(10)?).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                10,
                rusqlite::types::Type::Text,
                "unknown match kind".into(),
            )
        })?,
        allow: r.get::<_, String>(11)? == "allow",
    })
}

/// Who did what, when: the fixed part of audit rows.
struct Act<'a> {
    at: i64,
    actor: &'a str,
    action: &'a str,
}

/// What an audit row says about the entry.
struct Subject<'a> {
    kind: Kind,
    value: &'a str,
    comment: &'a str,
    origin: &'a str,
    allow: bool,
}

impl<'a> Subject<'a> {
    /// A written entry, with the origin it has in the store.
    fn of(e: &'a NewEntry, origin: &'a str) -> Subject<'a> {
        Subject {
            kind: e.kind,
            value: &e.value,
            comment: &e.comment,
            origin,
            allow: e.allow,
        }
    }
}

fn audit_row(tx: &Connection, act: &Act<'_>, e: Subject<'_>) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO audit (at, actor, action, kind, value, comment, origin, entry_action)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        act.at,
        act.actor,
        act.action,
        e.kind.as_str(),
        e.value,
        e.comment,
        e.origin,
        action_str(e.allow)
    ])?;
    Ok(())
}

/// Audits the entries with rowids `first..=last` as added: their own
/// columns are the audit row's (an added entry's `created_at` and
/// `created_by` are the write's time and actor), copied in one statement.
fn audit_added(tx: &Connection, added: Option<(i64, i64)>) -> Result<(), rusqlite::Error> {
    let Some((first, last)) = added else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT INTO audit (at, actor, action, kind, value, comment, origin, entry_action)
         SELECT created_at, created_by, 'add', kind, value, comment, origin, action
         FROM entries WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
    )?
    .execute([first, last])?;
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
            Subject {
                kind: e.kind,
                value: &e.value,
                comment: &e.comment,
                origin: &e.origin,
                allow: e.allow,
            },
        )?;
    }
    Ok(gone)
}

impl ExceptionStore for SqliteStore {
    fn load_active(&self, now: i64) -> Result<Vec<Item>, StoreError> {
        let c = self.reader();
        let mut items = Vec::new();
        let mut st = c.prepare(
            "SELECT kind = 'phone', value, action = 'allow' FROM entries
             WHERE expires_at IS NULL OR expires_at > ?1",
        )?;
        let mut rows = st.query([now])?;
        while let Some(r) = rows.next()? {
            let kind = if r.get(0)? { Kind::Phone } else { Kind::Email };
            let v = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            let item = item_of(kind, v, r.get(2)?)
                .ok_or_else(|| StoreError::Corrupt(format!("{} value {v:?}", kind.as_str())))?;
            items.push(item);
        }
        Ok(items)
    }

    fn upsert(&self, entries: &[NewEntry], actor: &str, now: i64) -> Result<Upserted, StoreError> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let mut out = Upserted::default();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO entries (kind, value, given, comment, origin, created_at, created_by,
                                      expires_at, pattern, action)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (value) DO NOTHING",
            )?;
            let mut update = tx.prepare_cached(
                "UPDATE entries SET comment = ?2, expires_at = ?3, updated_at = ?4, action = ?5
                 WHERE value = ?1 AND (comment IS NOT ?2 OR expires_at IS NOT ?3 OR action IS NOT ?5)
                 RETURNING origin",
            )?;
            // Added rows not audited yet: the rowids `first..=last`. Their
            // audit rows are copied from them in one statement (rows added
            // one after another get consecutive rowids), before any other
            // audit row so that the trail keeps the order of the writes.
            let mut pending: Option<(i64, i64)> = None;
            for e in entries {
                let n = insert.execute(params![
                    e.kind.as_str(),
                    e.value,
                    e.given,
                    e.comment,
                    e.origin,
                    now,
                    actor,
                    e.expires_at,
                    Pattern::of(&e.value).as_str(),
                    action_str(e.allow)
                ])?;
                if n == 1 {
                    out.added += 1;
                    let id = tx.last_insert_rowid();
                    pending = match pending {
                        Some((first, last)) if last.checked_add(1) == Some(id) => Some((first, id)),
                        other => {
                            audit_added(&tx, other)?;
                            Some((id, id))
                        }
                    };
                    continue;
                }
                // The update may change a row added earlier in this batch:
                // its add is audited with what was added.
                audit_added(&tx, pending.take())?;
                let origin: Option<String> = update
                    .query_row(
                        params![e.value, e.comment, e.expires_at, now, action_str(e.allow)],
                        |r| r.get(0),
                    )
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
                            Subject::of(e, &origin),
                        )?;
                    }
                    None => out.unchanged += 1,
                }
            }
            audit_added(&tx, pending)?;
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
        if let Some(p) = f.pattern {
            arg(&mut sql, " AND pattern = ?", p.as_str().to_string().into());
        }
        if let Some(a) = f.allow {
            arg(
                &mut sql,
                " AND action = ?",
                action_str(a).to_string().into(),
            );
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
            "SELECT id, at, actor, action, kind, value, comment, origin, entry_action FROM audit
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
                entry_action: r.get(8)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    fn phone(v: &str, comment: &str) -> NewEntry {
        NewEntry {
            kind: Kind::Phone,
            value: v.to_string(),
            given: v.to_string(),
            comment: comment.to_string(),
            origin: "api".to_string(),
            expires_at: None,
            allow: false,
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
        let items = s.load_active(3).unwrap();
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| matches!(i, Item::Phone(_))));
    }

    #[test]
    fn a_batch_audits_every_add_in_order_with_what_was_added() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        s.upsert(&[phone("+4930901800", "old")], "t", 1).unwrap();
        // Adds, an update of an earlier add, an update of an old entry and
        // adds again in one batch.
        let batch = [
            phone("+4930901801", "one"),
            phone("+4930901802", "two"),
            phone("+4930901801", "one, changed"),
            phone("+4930901803", "three"),
            phone("+4930901800", "old, changed"),
            phone("+4930901804", "four"),
        ];
        let r = s.upsert(&batch, "alice", 2).unwrap();
        assert_eq!((r.added, r.updated, r.unchanged), (4, 2, 0));
        let mut trail = s.audit(None, None, 100).unwrap();
        trail.reverse();
        let got: Vec<(&str, &str, &str, i64, &str)> = trail
            .iter()
            .map(|a| {
                (
                    a.action.as_str(),
                    a.value.as_str(),
                    a.comment.as_str(),
                    a.at,
                    a.actor.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("add", "+4930901800", "old", 1, "t"),
                ("add", "+4930901801", "one", 2, "alice"),
                ("add", "+4930901802", "two", 2, "alice"),
                ("update", "+4930901801", "one, changed", 2, "alice"),
                ("add", "+4930901803", "three", 2, "alice"),
                ("update", "+4930901800", "old, changed", 2, "alice"),
                ("add", "+4930901804", "four", 2, "alice"),
            ]
        );
        assert!(
            trail
                .iter()
                .all(|a| a.origin == "api" && a.entry_action == "block")
        );
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
        assert_eq!(s.load_active(150).unwrap(), [Item::Phone(4930901820)]);
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
        assert_eq!(s.load_active(2).unwrap(), [Item::Phone(4930901820)]);
        assert_eq!(s.meta("file").unwrap().as_deref(), Some("abc"));
    }

    #[test]
    fn changing_the_action_is_an_update_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        let mut e = phone("+4930901*", "area");
        s.upsert(std::slice::from_ref(&e), "t", 1).unwrap();
        e.allow = true;
        let r = s.upsert(std::slice::from_ref(&e), "t", 2).unwrap();
        assert_eq!((r.added, r.updated), (0, 1));
        let got = s
            .list(&ListFilter {
                limit: 5,
                ..Default::default()
            })
            .unwrap();
        assert_eq!((got[0].pattern, got[0].allow), (Pattern::Prefix, true));
        let audit = s.audit(Some("+4930901*"), None, 5).unwrap();
        let acts: Vec<(&str, &str)> = audit
            .iter()
            .map(|a| (a.action.as_str(), a.entry_action.as_str()))
            .collect();
        assert_eq!(acts, [("update", "allow"), ("add", "block")]);
        let allow_only = s
            .list(&ListFilter {
                allow: Some(false),
                limit: 5,
                ..Default::default()
            })
            .unwrap();
        assert!(allow_only.is_empty());
    }
}
