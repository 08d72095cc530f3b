//! The embedded store: one SQLite file (`sipscreen.db` in the data
//! directory) in WAL mode with `synchronous=FULL`, so a committed
//! transaction has been fsynced to the WAL before `upsert`/`remove` return.
//! A crash (kill -9, power loss) loses at most a transaction that had not
//! returned; SQLite's recovery replays the WAL on the next open.
//!
//! Two connections: one writer (writes serialise on it) and one reader for
//! listings, so a long import never delays a `GET`. Both are behind a
//! `Mutex` and are used from blocking threads only, never on the SIP path.
//!
//! One file per concern, each implementing one trait: [`exceptions`],
//! [`outbox`], [`contacts`], [`calls`]; the schema and its versions are in
//! [`migrations`], applied at open.

mod calls;
mod chunked;
mod contacts;
mod exceptions;
pub mod migrations;
mod outbox;
mod tokens;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// File name inside the data directory.
pub const FILE_NAME: &str = "sipscreen.db";

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Writer>,
    reader: Mutex<Connection>,
}

/// The writer connection and the multi-row statements prepared on it.
struct Writer {
    /// Declared first so that they are dropped (finalized) first: SQLite
    /// does not close a connection that still has statements.
    statements: chunked::Statements,
    conn: Connection,
}

impl Deref for Writer {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl DerefMut for Writer {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
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

    /// Opens (creating if needed) the database file at `path` and brings
    /// its schema to [`migrations::VERSION`] (refusing a newer one).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        owner_only(path).map_err(|e| {
            StoreError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot create {shown} as 0600: {e}"),
            ))
        })?;
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
        // NO_MUTEX: each connection is used by one thread at a time (it is
        // behind its `Mutex`), so SQLite's own per-call mutexes (serialized
        // mode) are pure cost: 9 % of an import's CPU in a profile.
        let rw = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut writer = open(rw | OpenFlags::SQLITE_OPEN_CREATE)?;
        migrations::migrate(&mut writer, &shown)?;
        let reader = open(rw)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(Writer {
                statements: chunked::Statements::default(),
                conn: writer,
            }),
            reader: Mutex::new(reader),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // A panic mid-transaction rolled it back when the guard dropped.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates the database file readable by its owner only (it holds CRM
/// tokens), or makes an existing one so; SQLite gives its `-wal` and
/// `-shm` files the database file's mode.
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

impl super::Store for SqliteStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
