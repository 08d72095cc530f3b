//! Schema versions: `PRAGMA user_version` says which of [`MIGRATIONS`] a
//! database has had. Each migration runs in one transaction that also
//! sets the version, so a crash leaves the database at the old version or
//! the new one, never between. A later release appends migrations and
//! never edits one already shipped.

use rusqlite::{Connection, TransactionBehavior};

use crate::store::StoreError;

/// Version 1: the schema of the releases before versioning (every
/// statement `IF NOT EXISTS`: on such a database it changes nothing, and it
/// completes one whose first start was interrupted).
const V1: &str = "
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

/// Version 2: calls in progress (restored after a restart), and whether a
/// call's Bitrix24 finish went out (so a redelivered `call.ended` is not
/// sent twice).
const V2: &str = "
CREATE TABLE active_calls (
    sip_call_id BLOB    PRIMARY KEY,
    call        TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    last_ms     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
ALTER TABLE crm_calls ADD COLUMN finished_at INTEGER;
CREATE INDEX outbox_retrying ON outbox (id) WHERE attempts > 0;
";

/// Version 3: an entry's match kind (`exact`, `prefix` for phone values
/// ending in `*`, `domain` for e-mail values starting with `@`) and action
/// (`block`, or `allow`: wins over shorter blocks); the audit keeps the
/// action an entry had. Existing entries are exact blocks.
const V3_SCREENING: &str = "
ALTER TABLE entries ADD COLUMN pattern TEXT NOT NULL DEFAULT 'exact'
    CHECK (pattern IN ('exact', 'prefix', 'domain'));
ALTER TABLE entries ADD COLUMN action TEXT NOT NULL DEFAULT 'block'
    CHECK (action IN ('block', 'allow'));
ALTER TABLE audit ADD COLUMN entry_action TEXT NOT NULL DEFAULT 'block';
";

/// Every migration in order; the schema version is its position + 1.
/// Version 4: a Bitrix24 application's tokens per sink (from the code
/// exchange or the install handler; rotated on every refresh), and what
/// the portal answered a call's register (the CRM record it linked or
/// created, a lead creation error), shown with the call log.
const V4_CRM_APP: &str = "
CREATE TABLE crm_answers (
    sink   TEXT    NOT NULL,
    call   TEXT    NOT NULL,
    answer TEXT    NOT NULL,
    at     INTEGER NOT NULL,
    PRIMARY KEY (sink, call)
);
CREATE TABLE crm_tokens (
    sink              TEXT    PRIMARY KEY,
    access            TEXT    NOT NULL,
    refresh           TEXT    NOT NULL,
    expires_at        INTEGER NOT NULL,
    member_id         TEXT    NOT NULL DEFAULT '',
    application_token TEXT    NOT NULL DEFAULT '',
    domain            TEXT    NOT NULL DEFAULT '',
    updated_at        INTEGER NOT NULL
);
";

/// Every migration in order; the schema version is its position + 1.
const MIGRATIONS: &[&str] = &[V1, V2, V3_SCREENING, V4_CRM_APP];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

fn version(c: &Connection) -> Result<i64, rusqlite::Error> {
    c.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Brings the database at `c` to [`VERSION`]; refuses one from a later
/// release. Returns the version found.
pub(super) fn migrate(c: &mut Connection, shown: &str) -> Result<i64, StoreError> {
    let found = version(c)?;
    if found > VERSION {
        return Err(StoreError::TooNew {
            path: shown.to_string(),
            found,
            known: VERSION,
        });
    }
    if found == 0 {
        let legacy: bool = c.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'entries'",
            [],
            |r| r.get(0),
        )?;
        if legacy {
            tracing::info!(store = %shown, "store from before schema versioning: it is version 1");
        }
    }
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let to = i as i64 + 1;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read again under the write lock: another process may have
        // migrated meanwhile.
        if version(&tx)? >= to {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", to)?;
        tx.commit()?;
    }
    if found != VERSION {
        tracing::info!(store = %shown, from = found, to = VERSION, "store schema migrated");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::screening::exceptions::{Item, Rule};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{
        CallStore, ContactStore, ExceptionStore, Kind, ListFilter, NewEntry, OutboxStore, Pattern,
    };

    #[test]
    fn a_database_of_the_release_before_versioning_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sipscreen.db");
        {
            // What that release created: the schema, no user_version.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(V1).unwrap();
            c.execute_batch(
                "INSERT INTO entries (kind, value, given, origin, created_at, created_by)
                   VALUES ('phone', '+4930901820', '030 901820', 'api', 1, 'alice');
                 INSERT INTO outbox (sink, call, kind, payload, created_at, next_at)
                   VALUES ('portal', 'c1', 'call.ended', '{}', 1, 1);
                 INSERT INTO crm_calls (sink, call, crm_id) VALUES ('portal', 'c1', 'ext.1');
                 INSERT INTO contacts (client, user_id, updated_at, updated_by)
                   VALUES ('+4917000000001', '7', 1, 'api');
                 INSERT INTO meta (key, value) VALUES ('file', 'abc');",
            )
            .unwrap();
            assert_eq!(version(&c).unwrap(), 0);
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.load_active(2).unwrap(), [Item::Phone(4930901820)]);
        assert_eq!(s.outbox_stats().unwrap().0, 1);
        assert_eq!(
            s.crm_call("portal", "c1").unwrap().as_deref(),
            Some("ext.1")
        );
        assert!(!s.crm_finished("portal", "c1").unwrap());
        assert_eq!(s.all_contacts().unwrap()[0].user_id, "7");
        assert_eq!(s.meta("file").unwrap().as_deref(), Some("abc"));
        // The new parts work.
        s.set_crm_finished("portal", "c1", 3).unwrap();
        assert!(s.crm_finished("portal", "c1").unwrap());
        assert!(s.active_calls().unwrap().is_empty());
        drop(s);
        let c = Connection::open(&path).unwrap();
        assert_eq!(version(&c).unwrap(), VERSION);
        assert_eq!(VERSION, 4);
    }

    /// A database of the release before match kinds and actions (v2):
    /// its entries become exact blocks, and prefix and allow entries can
    /// be written beside them.
    #[test]
    fn a_v2_database_gets_match_kinds_and_actions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sipscreen.db");
        {
            let mut c = Connection::open(&path).unwrap();
            for (i, sql) in [V1, V2].iter().enumerate() {
                let tx = c.transaction().unwrap();
                tx.execute_batch(sql).unwrap();
                tx.pragma_update(None, "user_version", i as i64 + 1)
                    .unwrap();
                tx.commit().unwrap();
            }
            c.execute_batch(
                "INSERT INTO entries (kind, value, given, origin, created_at, created_by)
                   VALUES ('phone', '+4930901820', '030 901820', 'api', 1, 'alice'),
                          ('email', 'boss@example.com', 'Boss@example.com', 'api', 1, 'alice');
                 INSERT INTO audit (at, actor, action, kind, value, comment, origin)
                   VALUES (1, 'alice', 'add', 'phone', '+4930901820', '', 'api');",
            )
            .unwrap();
            assert_eq!(version(&c).unwrap(), 2);
        }
        let s = SqliteStore::open(&path).unwrap();
        let mut items = s.load_active(2).unwrap();
        items.sort_by_key(|i| format!("{i:?}"));
        assert_eq!(
            items,
            [
                Item::email("boss@example.com", false),
                Item::Phone(4930901820)
            ]
        );
        let listed = s
            .list(&ListFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert!(
            listed
                .iter()
                .all(|e| e.pattern == Pattern::Exact && !e.allow)
        );
        assert_eq!(s.audit(None, None, 10).unwrap()[0].entry_action, "block");
        let allow = NewEntry {
            kind: Kind::Phone,
            value: "+49309018*".into(),
            given: "+49309018*".into(),
            comment: String::new(),
            origin: "api".into(),
            expires_at: None,
            allow: true,
        };
        s.upsert(&[allow], "bob", 3).unwrap();
        let got = s
            .list(&ListFilter {
                pattern: Some(Pattern::Prefix),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!((got.len(), got[0].allow), (1, true));
        assert!(
            s.load_active(4)
                .unwrap()
                .contains(&Item::Rule(Rule::parse_value("+49309018*", true).unwrap()))
        );
    }

    /// A version-2 database (the last release's) gets the tokens table
    /// and keeps its outbox and refresh token.
    #[test]
    fn a_version_2_database_gets_the_crm_tokens_table() {
        use crate::store::{CrmTokens, TokenStore};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sipscreen.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(V1).unwrap();
            c.execute_batch(V2).unwrap();
            c.execute_batch(
                "PRAGMA user_version = 2;
                 INSERT INTO outbox (sink, call, kind, payload, created_at, next_at)
                   VALUES ('portal', 'c1', 'call.started', '{}', 1, 1);
                 INSERT INTO meta (key, value) VALUES ('bitrix24:portal:refresh_token', 'r0');",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.outbox_depth("portal").unwrap(), 1);
        assert_eq!(
            s.meta("bitrix24:portal:refresh_token").unwrap().as_deref(),
            Some("r0")
        );
        assert!(s.crm_tokens("portal").unwrap().is_none());
        let t = CrmTokens {
            access: "a".into(),
            refresh: "r".into(),
            expires_at: 9,
            member_id: "m".into(),
            application_token: "at".into(),
            domain: "d".into(),
        };
        s.set_crm_tokens("portal", &t, 1).unwrap();
        assert_eq!(s.crm_tokens("portal").unwrap(), Some(t));
        drop(s);
        assert_eq!(version(&Connection::open(&path).unwrap()).unwrap(), VERSION);
    }

    #[test]
    fn a_new_database_gets_every_migration_and_reopens_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open_dir(dir.path()).unwrap());
        let path = dir.path().join("sipscreen.db");
        let schema = |c: &Connection| -> Vec<String> {
            c.prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let before = schema(&Connection::open(&path).unwrap());
        drop(SqliteStore::open_dir(dir.path()).unwrap());
        let c = Connection::open(&path).unwrap();
        assert_eq!(version(&c).unwrap(), VERSION);
        assert_eq!(schema(&c), before);
    }

    #[test]
    fn a_database_from_a_later_release_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sipscreen.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
                .unwrap();
        }
        let e = SqliteStore::open(&path).err().expect("refused");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "schema version 99 is newer than this sipscreen knows ({VERSION})"
            )) && msg.contains(&path.display().to_string()),
            "{msg}"
        );
        let c = Connection::open(&path).unwrap();
        assert_eq!(version(&c).unwrap(), 99);
        let tables: i64 = c
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 1);
    }
}
