//! The fleet store: one PostgreSQL database shared by several sidecars
//! (`[store] kind = "postgres"`, the URL in the environment variable named
//! by `[store] url_env`).
//!
//! The store traits are synchronous and are called from blocking threads
//! (`spawn_blocking`, the call tracker's thread, the CLI). [`PgStore`] owns
//! a small runtime of its own (two threads, which drive the connections'
//! I/O) and runs each call with [`tokio::runtime::Handle::block_on`] on the
//! caller's thread, so it never starts a runtime inside a runtime. A
//! pool of connections (deadpool-postgres) serves the calls; every write
//! is one transaction, durable when it returns (`synchronous_commit` is the
//! server's default, `on`).
//!
//! Every write to the list or the contacts directory also writes its rows
//! to the change log (`changes`, a `bigserial` sequence) in the same
//! transaction, under a transaction-level advisory lock (so sequence
//! numbers commit in order: a reader of `seq > last` never sees a later
//! number before an earlier one), and ends with one
//! `pg_notify('sipscreen_changes', <last seq>)`.
//!
//! One file per concern, as for SQLite: [`exceptions`], [`outbox`],
//! [`contacts`], [`calls`], [`tokens`]; the schema and its versions are in
//! [`migrations`], applied at open under an advisory lock.

mod calls;
mod contacts;
mod exceptions;
pub mod fleet;
pub mod listen;
pub mod migrations;
mod outbox;
mod tokens;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Change, ChangeOp, Kind, StoreError};

/// The channel every change-log write notifies, with its last sequence
/// number as the payload.
pub const CHANNEL: &str = "sipscreen_changes";

/// `pg_advisory_xact_lock` key taken by every transaction that writes
/// change rows: sequence numbers are taken and committed in one order.
pub(crate) const CHANGES_LOCK: i64 = 0x5349_5053_4348_0001;

/// How long a call waits for a pooled connection, and a new connection
/// for the server.
const WAIT: Duration = Duration::from_secs(5);

/// How to reach the database: the parsed URL (never shown) and the TLS
/// connector, also what a follower's own LISTEN connection needs.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    /// `host:port/database`, for logs and errors.
    pub shown: String,
}

/// Parses a `postgres://` URL. `sslmode=require` and `sslmode=verify-full`
/// (or `verify-ca`) encrypt and verify the server's certificate and name
/// against `ca` (PEM), else the system roots; any other mode (or none)
/// connects without TLS. Errors never repeat the URL.
pub fn target(url: &str, ca: Option<&Path>) -> Result<Target, StoreError> {
    let unusable = |why: &str| StoreError::Postgres(format!("the store URL is not usable: {why}"));
    let mut parsed = url::Url::parse(url).map_err(|e| unusable(&e.to_string()))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(unusable("it must start with postgres://"));
    }
    let mut tls = false;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, v)| {
            if k == "sslmode" {
                tls = matches!(&**v, "require" | "verify-ca" | "verify-full");
                false
            } else {
                true
            }
        })
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let mut config: tokio_postgres::Config = parsed
        .as_str()
        .parse()
        .map_err(|e: tokio_postgres::Error| unusable(&error_text(&e)))?;
    config.ssl_mode(if tls {
        SslMode::Require
    } else {
        SslMode::Disable
    });
    config.connect_timeout(WAIT);
    if config.get_application_name().is_none() {
        config.application_name("sipscreen");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = if tls {
        crate::tls::verifying_client_config(ca, "[store] ca")
            .map_err(|e| StoreError::Postgres(e.to_string()))?
    } else {
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Postgres(format!("TLS: {e}")))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    Ok(Target {
        shown: format!("{host}:{port}/{db}"),
        config,
        tls: MakeRustlsConnect::new(client),
    })
}

/// An error's text with its causes, without the URL (tokio-postgres never
/// repeats the connection string or password in its errors).
pub(crate) fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        let text = error_text(&e);
        let lost = match e.code() {
            Some(code) => {
                let c = code.code();
                c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
            }
            None => {
                e.is_closed()
                    || [
                        "error communicating",
                        "error connecting",
                        "timeout waiting",
                        "error performing TLS",
                    ]
                    .iter()
                    .any(|p| text.starts_with(p))
            }
        };
        if lost {
            StoreError::Unavailable(format!("postgres: {text}"))
        } else {
            StoreError::Postgres(text)
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> StoreError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => StoreError::Unavailable(format!("postgres pool: {}", error_text(&e))),
        }
    }
}

/// The PostgreSQL store.
pub struct PgStore {
    /// Drives the connections; shut down in the background on drop (a
    /// runtime dropped on an async thread would panic).
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    target: Target,
    /// This node's name on outbox leases, and their length.
    node: fleet::Node,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("at", &self.target.shown)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl PgStore {
    /// Connects to the database at `url` with a pool of `pool_size`
    /// connections and brings its schema to [`migrations::VERSION`]
    /// (refusing a newer one). Call from a blocking thread.
    pub fn open(url: &str, ca: Option<&Path>, pool_size: usize) -> Result<PgStore, StoreError> {
        Self::open_target(target(url, ca)?, pool_size)
    }

    /// [`PgStore::open`] with a parsed target.
    pub fn open_target(target: Target, pool_size: usize) -> Result<PgStore, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sipscreen-pg")
            .enable_all()
            .build()?;
        let mgr = Manager::from_config(
            target.config.clone(),
            target.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .recycle_timeout(Some(WAIT))
            .build()
            .map_err(|e| StoreError::Postgres(format!("pool: {e}")))?;
        let store = PgStore {
            handle: rt.handle().clone(),
            rt: Some(rt),
            pool,
            target,
            node: fleet::Node::new(),
        };
        store.run(async {
            let mut c = store.pool.get().await?;
            migrations::migrate(&mut c, &store.target.shown).await
        })?;
        Ok(store)
    }

    /// `host:port/database` (no user, no password).
    pub fn shown(&self) -> &str {
        &self.target.shown
    }

    /// How to reach the database (for a LISTEN connection of one's own).
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The pool (async use on [`PgStore::handle`]'s runtime only).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The store's own runtime, which drives its connections.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `f` to completion on the calling (blocking) thread, its I/O
    /// driven by the store's runtime (for work beyond the traits, e.g.
    /// `store migrate`; never call it from an async task).
    pub fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.handle.block_on(f)
    }

    /// [`PgStore::block_on`] for store calls, safe from any thread: a
    /// blocking thread (the normal case) waits on its own; an async worker
    /// of a multi-thread runtime (a call that should have been on a
    /// blocking thread: start-up, tests) is handed over to blocking with
    /// `block_in_place`; the thread of a current-thread runtime has the
    /// call run on a scoped thread. None of them panics.
    pub(crate) fn run<T: Send>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Err(_) => self.handle.block_on(f),
            Ok(RuntimeFlavor::CurrentThread) => std::thread::scope(|s| {
                s.spawn(|| self.handle.block_on(f))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            }),
            // A blocking-pool thread runs the closure as it is; a worker
            // becomes a blocking thread meanwhile.
            Ok(_) => tokio::task::block_in_place(|| self.handle.block_on(f)),
        }
    }

    /// A pooled connection.
    pub(crate) async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Change rows after `seq`, oldest first, at most `limit`.
    pub fn changes_since(&self, seq: i64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            let rows = c
                .query(
                    "SELECT seq, at, what, op, kind, value, allow, expires_at, contact
                       FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&seq, &(limit.min(i64::MAX as usize) as i64)],
                )
                .await?;
            rows.iter().map(change_of).collect()
        })
    }

    /// (oldest sequence number still in the log, latest number handed
    /// out; 0 if none yet). An empty log gives `oldest = latest + 1`: a
    /// node at position `p` has missed pruned rows when `p + 1 < oldest`.
    pub fn change_bounds(&self) -> Result<(i64, i64), StoreError> {
        self.run(async {
            let c = self.conn().await?;
            let r = c
                .query_one(
                    "SELECT (SELECT min(seq) FROM changes),
                            (SELECT CASE WHEN is_called THEN last_value ELSE 0 END
                               FROM changes_seq_seq)",
                    &[],
                )
                .await?;
            let latest: i64 = r.get(1);
            let oldest: Option<i64> = r.get(0);
            Ok((oldest.unwrap_or(latest + 1), latest))
        })
    }

    /// Deletes change rows up to and including `keep_after_seq`; the
    /// number deleted.
    pub fn prune_changes(&self, keep_after_seq: i64) -> Result<u64, StoreError> {
        self.run(async {
            let c = self.conn().await?;
            Ok(
                c.execute("DELETE FROM changes WHERE seq <= $1", &[&keep_after_seq])
                    .await?,
            )
        })
    }
}

/// Ends a transaction that wrote change rows: notifies the last sequence
/// number (delivered at commit).
pub async fn notify_changes(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_notify('sipscreen_changes', max(seq)::text) FROM changes",
        &[],
    )
    .await?;
    Ok(())
}

/// Takes the change-log lock for the rest of `tx`.
pub async fn lock_changes(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHANGES_LOCK])
        .await?;
    Ok(())
}

fn change_of(r: &tokio_postgres::Row) -> Result<Change, StoreError> {
    let corrupt =
        |what: &str| StoreError::Corrupt(format!("change {}: {what}", r.get::<_, i64>(0)));
    let what: &str = r.get(2);
    let op: &str = r.get(3);
    let kind = || {
        r.get::<_, Option<&str>>(4)
            .and_then(Kind::parse)
            .ok_or_else(|| corrupt("kind"))
    };
    let value = || {
        r.get::<_, Option<String>>(5)
            .ok_or_else(|| corrupt("value"))
    };
    let op = match (what, op) {
        ("entry", "upsert") => ChangeOp::Upsert {
            kind: kind()?,
            value: value()?,
            allow: r.get::<_, Option<bool>>(6).unwrap_or(false),
            expires_at: r.get(7),
        },
        ("entry", "remove") => ChangeOp::Remove {
            kind: kind()?,
            value: value()?,
            allow: r.get::<_, Option<bool>>(6).unwrap_or(false),
        },
        ("contact", "upsert") => {
            let j: serde_json::Value = r
                .get::<_, Option<serde_json::Value>>(8)
                .ok_or_else(|| corrupt("contact"))?;
            ChangeOp::ContactUpsert(
                serde_json::from_value(j).map_err(|e| corrupt(&format!("contact: {e}")))?,
            )
        }
        ("contact", "remove") => ChangeOp::ContactRemove { client: value()? },
        _ => return Err(corrupt(&format!("{what} {op}"))),
    };
    Ok(Change {
        seq: r.get(0),
        at: r.get(1),
        op,
    })
}

impl super::Store for PgStore {
    fn describe(&self) -> String {
        format!("postgres {}", self.target.shown)
    }

    fn as_postgres(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<PgStore>> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_parsed_and_never_shown() {
        let t = target(
            "postgres://alice:s3cret@db.example:6543/fleet?sslmode=disable&application_name=x",
            None,
        )
        .unwrap();
        assert_eq!(t.shown, "db.example:6543/fleet");
        assert_eq!(t.config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(t.config.get_application_name(), Some("x"));
        let t = target(
            "postgres://alice:s3cret@db.example/fleet?sslmode=verify-full",
            None,
        );
        // Without system roots this may fail; it must not show the secret.
        match t {
            Ok(t) => assert_eq!(t.config.get_ssl_mode(), SslMode::Require),
            Err(e) => assert!(!e.to_string().contains("s3cret"), "{e}"),
        }
        for bad in [
            "mysql://alice:s3cret@db/x",
            "postgres://alice:s3cret@db/x?port=notaport",
            "not a url s3cret",
        ] {
            let e = target(bad, None).err().expect("refused");
            assert!(!e.to_string().contains("s3cret"), "{e}");
            assert!(e.to_string().contains("not usable"), "{e}");
        }
    }
}
