//! Schema versions of the PostgreSQL store: the `schema_version` table
//! has one row per applied migration of [`MIGRATIONS`]. Migrations run at
//! open under `pg_advisory_lock(`[`MIGRATION_LOCK`]`)`, so nodes starting
//! together never race: the first applies them, the others wait, then
//! find the schema current. Each migration runs in one transaction with
//! its version row. A later release appends migrations and never edits
//! one already shipped.
//!
//! Text keys are `COLLATE "C"`: values order by code point as in SQLite,
//! so a prefix is a range on the unique index whatever the database's
//! locale.

use deadpool_postgres::Object;

use crate::store::StoreError;

/// `pg_advisory_lock` key held while migrating.
pub const MIGRATION_LOCK: i64 = 0x5349_5053_4348_0000;

/// Version 1: the schema of SQLite's version 4, plus the change log.
const V1: &str = r#"
CREATE TABLE entries (
    id         bigserial PRIMARY KEY,
    kind       text COLLATE "C" NOT NULL CHECK (kind IN ('phone', 'email')),
    value      text COLLATE "C" NOT NULL UNIQUE,
    given      text   NOT NULL,
    comment    text   NOT NULL DEFAULT '',
    origin     text   NOT NULL,
    created_at bigint NOT NULL,
    created_by text   NOT NULL,
    updated_at bigint,
    expires_at bigint,
    pattern    text   NOT NULL DEFAULT 'exact' CHECK (pattern IN ('exact', 'prefix', 'domain')),
    action     text   NOT NULL DEFAULT 'block' CHECK (action IN ('block', 'allow'))
);
CREATE INDEX entries_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE audit (
    id           bigserial PRIMARY KEY,
    at           bigint NOT NULL,
    actor        text   NOT NULL,
    action       text   NOT NULL,
    kind         text   NOT NULL,
    value        text COLLATE "C" NOT NULL,
    comment      text   NOT NULL,
    origin       text   NOT NULL,
    entry_action text   NOT NULL DEFAULT 'block'
);
CREATE INDEX audit_value ON audit (value, id);
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    sink       text COLLATE "C" NOT NULL,
    call       text COLLATE "C" NOT NULL,
    kind       text   NOT NULL,
    payload    text   NOT NULL,
    created_at bigint NOT NULL,
    attempts   bigint NOT NULL DEFAULT 0,
    next_at    bigint NOT NULL,
    last_error text
);
CREATE INDEX outbox_sink ON outbox (sink, id);
CREATE INDEX outbox_retrying ON outbox (id) WHERE attempts > 0;
CREATE TABLE dead_letter (
    id         bigserial PRIMARY KEY,
    sink       text   NOT NULL,
    call       text   NOT NULL,
    kind       text   NOT NULL,
    payload    text   NOT NULL,
    created_at bigint NOT NULL,
    attempts   bigint NOT NULL,
    dead_at    bigint NOT NULL,
    reason     text   NOT NULL
);
CREATE TABLE crm_calls (
    sink        text COLLATE "C" NOT NULL,
    call        text COLLATE "C" NOT NULL,
    crm_id      text   NOT NULL,
    finished_at bigint,
    PRIMARY KEY (sink, call)
);
CREATE TABLE contacts (
    client     text COLLATE "C" PRIMARY KEY,
    user_id    text COLLATE "C" NOT NULL,
    extension  text   NOT NULL DEFAULT '',
    updated_at bigint NOT NULL,
    updated_by text   NOT NULL
);
CREATE TABLE meta (
    key   text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE active_calls (
    sip_call_id bytea  PRIMARY KEY,
    ord         bigserial,
    call        text   NOT NULL,
    state       text   NOT NULL,
    last_ms     bigint NOT NULL,
    updated_at  bigint NOT NULL
);
CREATE TABLE crm_answers (
    sink   text COLLATE "C" NOT NULL,
    call   text COLLATE "C" NOT NULL,
    answer text   NOT NULL,
    at     bigint NOT NULL,
    PRIMARY KEY (sink, call)
);
CREATE INDEX crm_answers_call ON crm_answers (call);
CREATE TABLE crm_tokens (
    sink              text COLLATE "C" PRIMARY KEY,
    access            text   NOT NULL,
    refresh           text   NOT NULL,
    expires_at        bigint NOT NULL,
    member_id         text   NOT NULL DEFAULT '',
    application_token text   NOT NULL DEFAULT '',
    domain            text   NOT NULL DEFAULT '',
    updated_at        bigint NOT NULL
);
CREATE TABLE changes (
    seq        bigserial PRIMARY KEY,
    at         bigint NOT NULL,
    what       text   NOT NULL CHECK (what IN ('entry', 'contact')),
    op         text   NOT NULL CHECK (op IN ('upsert', 'remove')),
    kind       text,
    value      text COLLATE "C",
    allow      boolean,
    expires_at bigint,
    contact    jsonb
);
"#;

/// Every migration in order; the schema version is its position + 1.
const MIGRATIONS: &[&str] = &[V1, super::fleet::V2];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// The version of the database `c` is connected to (0: none yet).
pub async fn version(c: &Object) -> Result<i64, StoreError> {
    let exists: bool = c
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(
        c.query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .await?
            .get(0),
    )
}

/// Brings the database to [`VERSION`] under the migration lock; refuses
/// one from a later release. Returns the version found.
pub(super) async fn migrate(c: &mut Object, shown: &str) -> Result<i64, StoreError> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let r = migrate_locked(c, shown).await;
    // The lock is the session's: release it before the connection goes
    // back to the pool (a lost connection released it already).
    let unlocked = c
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let found = r?;
    unlocked?;
    Ok(found)
}

async fn migrate_locked(c: &mut Object, shown: &str) -> Result<i64, StoreError> {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    bigint PRIMARY KEY,
             applied_at bigint NOT NULL
         )",
    )
    .await?;
    let found: i64 = c
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?
        .get(0);
    if found > VERSION {
        return Err(StoreError::PgTooNew {
            database: shown.to_string(),
            found,
            known: VERSION,
        });
    }
    let now = crate::clock::now_ms();
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let to = i as i64 + 1;
        let tx = c.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
            &[&to, &now],
        )
        .await?;
        tx.commit().await?;
    }
    if found != VERSION {
        tracing::info!(store = %shown, from = found, to = VERSION, "postgres store schema migrated");
    }
    Ok(found)
}
