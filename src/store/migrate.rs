//! `sipscreen store migrate --from sqlite:PATH --to postgres`: copies a
//! single machine's SQLite store into a PostgreSQL database in one
//! transaction: entries, audit, contacts, meta, the undelivered outbox
//! (in order), dead letters, CRM call ids, tokens and answers, and calls
//! in progress, with change rows for entries and contacts (so running
//! nodes see them) and one notification at the end.
//!
//! Each table streams through `COPY` into a temporary table, then one
//! `INSERT … SELECT` in the SQLite order (`ON CONFLICT … DO UPDATE` for
//! keyed tables, which only matters with `--force` into a non-empty
//! database).

use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;
use futures_util::SinkExt;

use super::StoreError;
use super::postgres::{PgStore, lock_changes, notify_changes};

/// One table to copy.
struct Table {
    name: &'static str,
    cols: &'static [&'static str],
    /// Conflict target; `None`: rows are appended.
    key: Option<&'static [&'static str]>,
    /// SQLite order of the rows.
    order: &'static str,
    /// What the report calls its rows.
    what: &'static str,
}

const TABLES: &[Table] = &[
    Table {
        name: "entries",
        cols: &[
            "kind",
            "value",
            "given",
            "comment",
            "origin",
            "created_at",
            "created_by",
            "updated_at",
            "expires_at",
            "pattern",
            "action",
        ],
        key: Some(&["value"]),
        order: "id",
        what: "entries",
    },
    Table {
        name: "audit",
        cols: &[
            "at",
            "actor",
            "action",
            "kind",
            "value",
            "comment",
            "origin",
            "entry_action",
        ],
        key: None,
        order: "id",
        what: "audit rows",
    },
    Table {
        name: "contacts",
        cols: &["client", "user_id", "extension", "updated_at", "updated_by"],
        key: Some(&["client"]),
        order: "client",
        what: "contacts",
    },
    Table {
        name: "meta",
        cols: &["key", "value"],
        key: Some(&["key"]),
        order: "key",
        what: "meta keys",
    },
    Table {
        name: "outbox",
        cols: &[
            "sink",
            "call",
            "kind",
            "payload",
            "created_at",
            "attempts",
            "next_at",
            "last_error",
        ],
        key: None,
        order: "id",
        what: "undelivered CRM events",
    },
    Table {
        name: "dead_letter",
        cols: &[
            "sink",
            "call",
            "kind",
            "payload",
            "created_at",
            "attempts",
            "dead_at",
            "reason",
        ],
        key: None,
        order: "id",
        what: "dead letters",
    },
    Table {
        name: "crm_calls",
        cols: &["sink", "call", "crm_id", "finished_at"],
        key: Some(&["sink", "call"]),
        order: "rowid",
        what: "CRM call ids",
    },
    Table {
        name: "crm_tokens",
        cols: &[
            "sink",
            "access",
            "refresh",
            "expires_at",
            "member_id",
            "application_token",
            "domain",
            "updated_at",
        ],
        key: Some(&["sink"]),
        order: "sink",
        what: "CRM tokens",
    },
    Table {
        name: "crm_answers",
        cols: &["sink", "call", "answer", "at"],
        key: Some(&["sink", "call"]),
        order: "rowid",
        what: "CRM answers",
    },
    Table {
        name: "active_calls",
        cols: &["sip_call_id", "call", "state", "last_ms", "updated_at"],
        key: Some(&["sip_call_id"]),
        order: "rowid",
        what: "calls in progress",
    },
];

/// What a migration copied: (what, rows) per table, in copy order.
#[derive(Debug, Default, Clone)]
pub struct Copied {
    pub tables: Vec<(&'static str, u64)>,
}

impl Copied {
    /// Rows copied of a table (by its report name).
    pub fn rows(&self, what: &str) -> u64 {
        self.tables
            .iter()
            .find(|(w, _)| *w == what)
            .map_or(0, |(_, n)| *n)
    }
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .tables
            .iter()
            .map(|(w, n)| format!("{n} {w}"))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// Why a migration did not happen (nothing was written).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the target database already holds {0} entries: nothing copied (pass --force to copy \
         into it anyway: values present in both take the SQLite row)"
    )]
    TargetNotEmpty(i64),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// COPY text format of one SQLite value.
fn copy_field(out: &mut String, v: rusqlite::types::ValueRef<'_>) -> Result<(), StoreError> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => out.push_str("\\N"),
        ValueRef::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        ValueRef::Real(r) => {
            let _ = write!(out, "{r}");
        }
        ValueRef::Text(t) => {
            let t = std::str::from_utf8(t)
                .map_err(|_| StoreError::Corrupt("text that is not UTF-8".to_string()))?;
            for c in t.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c => out.push(c),
                }
            }
        }
        ValueRef::Blob(b) => {
            out.push_str("\\\\x");
            out.push_str(&hex::encode(b));
        }
    }
    Ok(())
}

/// Copies the SQLite store at `path` (a file, or a data directory holding
/// `sipscreen.db`) into `pg` in one transaction. Refuses a target that
/// holds entries unless `force`.
pub fn sqlite_to_postgres(path: &Path, pg: &PgStore, force: bool) -> Result<Copied, MigrateError> {
    let file = if path.is_dir() {
        path.join(super::sqlite::FILE_NAME)
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{}: no SQLite store there", file.display()),
        ))
        .into());
    }
    // Brings an older file to the current schema (as a start would).
    drop(super::sqlite::SqliteStore::open(&file)?);
    let src =
        rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StoreError::Open {
                path: file.display().to_string(),
                source,
            })?;
    let now = crate::clock::now_ms();
    pg.block_on(async {
        let mut c = pg.pool().get().await.map_err(StoreError::from)?;
        let tx = c.transaction().await.map_err(StoreError::from)?;
        lock_changes(&tx).await?;
        let held: i64 = tx
            .query_one("SELECT count(*) FROM entries", &[])
            .await
            .map_err(StoreError::from)?
            .get(0);
        if held > 0 && !force {
            return Err(MigrateError::TargetNotEmpty(held));
        }
        let mut copied = Copied::default();
        for t in TABLES {
            let n = copy_table(&src, &tx, t).await?;
            copied.tables.push((t.what, n));
        }
        tx.batch_execute(&format!(
            "INSERT INTO changes (at, what, op, kind, value, allow, expires_at)
             SELECT {now}, 'entry', 'upsert', kind, value, action = 'allow', expires_at
               FROM m_entries ORDER BY m_ord;
             INSERT INTO changes (at, what, op, value, contact)
             SELECT {now}, 'contact', 'upsert', client,
                    jsonb_build_object('client', client, 'user_id', user_id,
                                       'extension', extension)
               FROM m_contacts ORDER BY m_ord;"
        ))
        .await
        .map_err(StoreError::from)?;
        if copied.rows("entries") + copied.rows("contacts") > 0 {
            notify_changes(&tx).await?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(copied)
    })
}

/// Streams one table from SQLite into `m_<table>` and inserts it; the
/// rows copied.
async fn copy_table(
    src: &rusqlite::Connection,
    tx: &deadpool_postgres::Transaction<'_>,
    t: &Table,
) -> Result<u64, StoreError> {
    let cols = t.cols.join(", ");
    let tmp = format!("m_{}", t.name);
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE {tmp} ON COMMIT DROP AS SELECT {cols} FROM {} WITH NO DATA;
         ALTER TABLE {tmp} ADD COLUMN m_ord bigserial;",
        t.name
    ))
    .await?;
    let sink = tx
        .copy_in(format!("COPY {tmp} ({cols}) FROM STDIN").as_str())
        .await?;
    futures_util::pin_mut!(sink);
    let mut st = src.prepare(&format!(
        "SELECT {cols} FROM {} ORDER BY {}",
        t.name, t.order
    ))?;
    let mut rows = st.query([])?;
    let mut buf = String::with_capacity(1 << 20);
    while let Some(r) = rows.next()? {
        for i in 0..t.cols.len() {
            if i > 0 {
                buf.push('\t');
            }
            copy_field(&mut buf, r.get_ref(i)?)?;
        }
        buf.push('\n');
        if buf.len() >= 1 << 20 {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
            buf.reserve(1 << 20);
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    let n = sink.as_mut().finish().await?;
    let conflict = match t.key {
        None => String::new(),
        Some(key) => {
            let set: Vec<String> = t
                .cols
                .iter()
                .filter(|c| !key.contains(c))
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                key.join(", "),
                set.join(", ")
            )
        }
    };
    tx.batch_execute(&format!(
        "INSERT INTO {} ({cols}) SELECT {cols} FROM {tmp} ORDER BY m_ord{conflict}",
        t.name
    ))
    .await?;
    Ok(n)
}
