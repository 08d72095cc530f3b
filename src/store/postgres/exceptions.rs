//! Exceptions: the list, its audit trail, its change rows and the small
//! key/value state. A batch is one transaction of a few set-based
//! statements (arrays bound as parameters), not one round trip per entry.

use futures_util::{StreamExt, pin_mut};
use tokio_postgres::Row;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::{ToSql, Type};

use super::{PgStore, lock_changes, notify_changes};
use crate::screening::exceptions::Item;
use crate::store::rounds;
use crate::store::{
    AuditRow, Entry, ExceptionStore, Kind, ListFilter, NewEntry, Pattern, StoreError, Upserted,
    action_str, item_of,
};

pub(super) const ENTRY_COLUMNS: &str = "id, kind, value, given, comment, origin, created_at, \
                                        created_by, updated_at, expires_at, pattern, action";

fn kind_of(s: &str) -> Result<Kind, StoreError> {
    Kind::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown kind {s:?}")))
}

pub(super) fn entry(r: &Row) -> Result<Entry, StoreError> {
    Ok(Entry {
        id: r.get(0),
        kind: kind_of(r.get(1))?,
        value: r.get(2),
        given: r.get(3),
        comment: r.get(4),
        origin: r.get(5),
        created_at: r.get(6),
        created_by: r.get(7),
        updated_at: r.get(8),
        expires_at: r.get(9),
        pattern: Pattern::parse(r.get(10))
            .ok_or_else(|| StoreError::Corrupt("unknown match kind".to_string()))?,
        allow: r.get::<_, &str>(11) == "allow",
    })
}

/// One round of an upsert (each value once): inserts the new values,
/// updates the changed ones, audits both and writes their change rows, in
/// input order. Returns (added, updated).
const UPSERT_ROUND: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::bigint[], $7::text[], $8::text[])
        WITH ORDINALITY AS t(kind, value, given, comment, origin, expires_at, pattern, action, ord)
),
ins AS (
    INSERT INTO entries (kind, value, given, comment, origin, created_at, created_by,
                         expires_at, pattern, action)
    SELECT kind, value, given, comment, origin, $9, $10, expires_at, pattern, action
      FROM input
     -- An anti-join probe skips the speculative insert of values already
     -- listed (a re-import of an unchanged list: a third less time).
     WHERE NOT EXISTS (SELECT 1 FROM entries x WHERE x.value = input.value)
     ORDER BY ord
    ON CONFLICT (value) DO NOTHING
    RETURNING value
),
upd AS (
    UPDATE entries e SET comment = i.comment, expires_at = i.expires_at, updated_at = $9,
                         action = i.action
      FROM input i
     WHERE e.value = i.value
       AND (e.comment IS DISTINCT FROM i.comment OR e.expires_at IS DISTINCT FROM i.expires_at
            OR e.action IS DISTINCT FROM i.action)
    RETURNING e.value, e.origin
),
done AS (
    SELECT i.ord, 'add' AS act, i.kind, i.value, i.comment, i.origin, i.action, i.expires_at
      FROM input i JOIN ins USING (value)
    UNION ALL
    SELECT i.ord, 'update', i.kind, i.value, i.comment, upd.origin, i.action, i.expires_at
      FROM input i JOIN upd USING (value)
),
aud AS (
    INSERT INTO audit (at, actor, action, kind, value, comment, origin, entry_action)
    SELECT $9, $10, act, kind, value, comment, origin, action FROM done ORDER BY ord
),
chg AS (
    INSERT INTO changes (at, what, op, kind, value, allow, expires_at)
    SELECT $9, 'entry', 'upsert', kind, value, action = 'allow', expires_at FROM done ORDER BY ord
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd)
"#;

/// Deletes what `cond` selects, audits each removal as `$2` by `$3` at
/// `$1`, writes its change row, and returns the removed entries.
fn delete_sql(cond: &str) -> String {
    format!(
        "WITH gone AS (DELETE FROM entries WHERE {cond} RETURNING {ENTRY_COLUMNS}),
         aud AS (
             INSERT INTO audit (at, actor, action, kind, value, comment, origin, entry_action)
             SELECT $1, $3, $2, kind, value, comment, origin, action FROM gone ORDER BY id
         ),
         chg AS (
             INSERT INTO changes (at, what, op, kind, value, allow)
             SELECT $1, 'entry', 'remove', kind, value, action = 'allow' FROM gone ORDER BY id
         )
         SELECT {ENTRY_COLUMNS} FROM gone ORDER BY id"
    )
}

impl PgStore {
    /// Upserts `entries` inside `tx` (the change lock taken): one
    /// statement per round.
    pub(super) async fn upsert_in(
        tx: &deadpool_postgres::Transaction<'_>,
        entries: &[NewEntry],
        actor: &str,
        now: i64,
    ) -> Result<Upserted, StoreError> {
        let mut out = Upserted::default();
        let st = tx.prepare_cached(UPSERT_ROUND).await?;
        for round in rounds(entries, |e| e.value.as_str()) {
            let kind: Vec<&str> = round.iter().map(|e| e.kind.as_str()).collect();
            let value: Vec<&str> = round.iter().map(|e| e.value.as_str()).collect();
            let given: Vec<&str> = round.iter().map(|e| e.given.as_str()).collect();
            let comment: Vec<&str> = round.iter().map(|e| e.comment.as_str()).collect();
            let origin: Vec<&str> = round.iter().map(|e| e.origin.as_str()).collect();
            let expires: Vec<Option<i64>> = round.iter().map(|e| e.expires_at).collect();
            let pattern: Vec<&str> = round
                .iter()
                .map(|e| Pattern::of(&e.value).as_str())
                .collect();
            let action: Vec<&str> = round.iter().map(|e| action_str(e.allow)).collect();
            let r = tx
                .query_one(
                    &st,
                    &[
                        &kind, &value, &given, &comment, &origin, &expires, &pattern, &action,
                        &now, &actor,
                    ],
                )
                .await?;
            let (added, updated) = (r.get::<_, i64>(0) as usize, r.get::<_, i64>(1) as usize);
            out.added += added;
            out.updated += updated;
            out.unchanged += round.len() - added - updated;
        }
        Ok(out)
    }

    async fn delete_where(
        &self,
        cond: &str,
        arg: &(dyn ToSql + Sync),
        actor: &str,
        action: &str,
        now: i64,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        lock_changes(&tx).await?;
        let rows = tx
            .query(&delete_sql(cond), &[&now, &action, &actor, arg])
            .await?;
        let gone = rows.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        if !gone.is_empty() {
            notify_changes(&tx).await?;
        }
        tx.commit().await?;
        Ok(gone)
    }
}

impl ExceptionStore for PgStore {
    fn load_active(&self, now: i64) -> Result<Vec<Item>, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            // Streamed in PostgreSQL's binary COPY format: one pass, no
            // intermediate rows.
            let sql = format!(
                "COPY (SELECT kind = 'phone', value, action = 'allow' FROM entries
                        WHERE expires_at IS NULL OR expires_at > {now}) TO STDOUT (FORMAT binary)"
            );
            let stream = c.copy_out(sql.as_str()).await?;
            let rows = BinaryCopyOutStream::new(stream, &[Type::BOOL, Type::TEXT, Type::BOOL]);
            pin_mut!(rows);
            let mut items = Vec::new();
            while let Some(r) = rows.next().await {
                let r = r?;
                let kind = if r.get::<bool>(0) {
                    Kind::Phone
                } else {
                    Kind::Email
                };
                let v: &str = r.get(1);
                let item = item_of(kind, v, r.get(2))
                    .ok_or_else(|| StoreError::Corrupt(format!("{} value {v:?}", kind.as_str())))?;
                items.push(item);
            }
            Ok(items)
        })
    }

    fn upsert(&self, entries: &[NewEntry], actor: &str, now: i64) -> Result<Upserted, StoreError> {
        self.run(async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            lock_changes(&tx).await?;
            let out = Self::upsert_in(&tx, entries, actor, now).await?;
            if out.added + out.updated > 0 {
                notify_changes(&tx).await?;
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    fn remove(&self, value: &str, actor: &str, now: i64) -> Result<Option<Entry>, StoreError> {
        self.run(async {
            let value = value.to_string();
            let gone = self
                .delete_where("value = $4", &value, actor, "remove", now)
                .await?;
            Ok(gone.into_iter().next())
        })
    }

    fn expire(&self, now: i64) -> Result<Vec<Entry>, StoreError> {
        self.run(self.delete_where(
            "expires_at IS NOT NULL AND expires_at <= $4",
            &now,
            "expiry",
            "expire",
            now,
        ))
    }

    fn next_expiry(&self) -> Result<Option<i64>, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            Ok(c.query_one(
                "SELECT min(expires_at) FROM entries WHERE expires_at IS NOT NULL",
                &[],
            )
            .await?
            .get(0))
        })
    }

    fn list(&self, f: &ListFilter) -> Result<Vec<Entry>, StoreError> {
        let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE true");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut arg = |sql: &mut String, cond: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&cond.replace('?', &format!("${}", args.len())));
        };
        if let Some(k) = f.kind {
            arg(&mut sql, " AND kind = ?", Box::new(k.as_str()));
        }
        if let Some(v) = &f.value {
            arg(&mut sql, " AND value = ?", Box::new(v.clone()));
        }
        if let Some(p) = f.pattern {
            arg(&mut sql, " AND pattern = ?", Box::new(p.as_str()));
        }
        if let Some(a) = f.allow {
            arg(&mut sql, " AND action = ?", Box::new(action_str(a)));
        }
        if let Some(p) = &f.prefix {
            // A range on the unique index (COLLATE "C": code point order).
            arg(&mut sql, " AND value >= ?", Box::new(p.clone()));
            arg(
                &mut sql,
                " AND value < ?",
                Box::new(format!("{p}\u{10FFFF}")),
            );
        }
        if let Some(q) = &f.comment {
            arg(
                &mut sql,
                " AND strpos(lower(comment), lower(?)) > 0",
                Box::new(q.clone()),
            );
        }
        if let Some(b) = f.before {
            arg(&mut sql, " AND id < ?", Box::new(b));
        }
        arg(
            &mut sql,
            " ORDER BY id DESC LIMIT ?",
            Box::new(f.limit.min(i64::MAX as usize) as i64),
        );
        self.run(async {
            let c = self.conn().await?;
            let params: Vec<&(dyn ToSql + Sync)> =
                args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
            let rows = c.query(sql.as_str(), &params).await?;
            rows.iter().map(entry).collect()
        })
    }

    fn audit(
        &self,
        value: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            let rows = c
                .query(
                    "SELECT id, at, actor, action, kind, value, comment, origin, entry_action
                       FROM audit
                      WHERE ($1::text IS NULL OR value = $1) AND ($2::bigint IS NULL OR id < $2)
                      ORDER BY id DESC LIMIT $3",
                    &[&value, &before, &(limit.min(i64::MAX as usize) as i64)],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(AuditRow {
                        id: r.get(0),
                        at: r.get(1),
                        actor: r.get(2),
                        action: r.get(3),
                        kind: kind_of(r.get(4))?,
                        value: r.get(5),
                        comment: r.get(6),
                        origin: r.get(7),
                        entry_action: r.get(8),
                    })
                })
                .collect()
        })
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            Ok(
                c.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
                    .await?
                    .map(|r| r.get(0)),
            )
        })
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.run(async {
            let c = self.conn().await?;
            c.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .await?;
            Ok(())
        })
    }
}
