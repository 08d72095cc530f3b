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
                    audit_row(
                        &tx,
                        &Act {
                            at: now,
                            actor,
                            action: "add",
                        },
                        Subject::of(e, &e.origin),
                    )?;
                    continue;
                }
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

// The contract of these methods is tested on both backends in
// tests/store_contract.rs.
