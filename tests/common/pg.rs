//! A throwaway PostgreSQL cluster for the tests of one test binary: Debian's
//! `initdb`/`pg_ctl` (package `postgresql`; under `SIPSCREEN_CI=1` a missing
//! tool fails the test), run as the `postgres` system user when we are root
//! (initdb refuses root; `runuser`), else as ourselves, its data and socket directories in a temp dir, listening on
//! 127.0.0.1 and a free port with trust auth for the role `sipscreen`.
//! Each test takes a fresh database ([`Cluster::database`]). The cluster is
//! stopped (`pg_ctl stop -m immediate`) and its directory removed when the
//! test binary exits. `stop`, `start`, `restart` and `terminate_backends`
//! are for fault tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The superuser role the tests connect as.
pub const ROLE: &str = "sipscreen";

pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    /// Serialises stop/start.
    state: Mutex<()>,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

/// The binary's cluster, started on first use; `None` (after saying so)
/// when PostgreSQL is not installed outside CI.
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER
        .get_or_init(|| {
            let c = new_cluster()?;
            extern "C" fn stop_at_exit() {
                if let Some(Some(c)) = CLUSTER.get() {
                    c.destroy();
                }
            }
            // Statics are never dropped: stop the server as the process ends.
            unsafe { libc::atexit(stop_at_exit) };
            Some(c)
        })
        .as_ref()
}

/// A cluster of the caller's own, stopped and removed when dropped: for a
/// test that stops or restarts the server, which would break the other
/// tests of its binary on the shared [`cluster`]. `None` as for [`cluster`].
pub fn private_cluster() -> Option<Cluster> {
    new_cluster()
}

fn new_cluster() -> Option<Cluster> {
    let dirs = pg_bin_dirs();
    let initdb = super::tools::tool_in("initdb", "postgresql", &dirs)?;
    let bin = initdb.canonicalize().unwrap_or(initdb);
    let bin = bin.parent().unwrap().to_path_buf();
    Some(Cluster::init(bin))
}

impl Drop for Cluster {
    // The shared cluster is a static (never dropped; `atexit` stops it).
    fn drop(&mut self) {
        self.destroy();
    }
}

/// `/usr/lib/postgresql/<version>/bin`, newest first.
fn pg_bin_dirs() -> Vec<PathBuf> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((n, e.path().join("bin")))
        })
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    v.into_iter().map(|(_, p)| p).collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether we are root (then the server runs as `postgres`: initdb
/// refuses root); otherwise it runs as us.
fn root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// `tool` as the server's user.
fn command(tool: &Path) -> Command {
    if root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    }
}

/// Runs `tool args` as the server's user; panics with its output on failure.
fn as_postgres(tool: &Path, args: &[&str]) -> String {
    let out = command(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{} {args:?}: {text}", tool.display());
    text
}

impl Cluster {
    fn init(bin: PathBuf) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("sipscreen-pg-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        if root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown {}", dir.display());
        }
        let data = dir.join("data");
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                ROLE,
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
        );
        let c = Cluster {
            bin,
            dir,
            port: free_port(),
            state: Mutex::new(()),
        };
        c.start();
        c
    }

    /// The cluster's directory (data, socket, log), owned by the server's
    /// user.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Gives `path` to the server's user (a key file it must own).
    pub fn give(&self, path: &Path) {
        if root() {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(path)
                .status()
                .unwrap();
            assert!(ok.success(), "chown {}", path.display());
        }
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Starts the server (waits until it accepts connections).
    pub fn start(&self) {
        let _g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        self.wait_ready();
    }

    /// Stops the server (fast: sessions are ended, committed work kept).
    pub fn stop(&self) {
        let _g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-m", "fast", "-w", "stop"],
        );
    }

    /// Stops and starts the server again on the same port.
    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    /// Polls until a connection succeeds (pg_ctl -w waited already; this
    /// checks the TCP listener the tests use).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.try_exec("postgres", "SELECT 1") {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("postgres not ready: {e}"),
                Err(_) => std::thread::yield_now(),
            }
        }
    }

    /// The URL of database `db` as the test role.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh empty database; its URL.
    pub fn database(&self) -> String {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).unwrap();
        let name = format!("t_{}", hex::encode(b));
        self.exec("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs `sql` (several statements allowed) in database `db`.
    pub fn exec(&self, db: &str, sql: &str) {
        self.try_exec(db, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn try_exec(&self, db: &str, sql: &str) -> Result<(), String> {
        let sql = sql.to_string();
        self.with_client(db, move |client| async move {
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| format!("{e}: {:?}", e.as_db_error().map(|d| d.message())))
        })?
    }

    /// The first column of the first row of `sql` in `db`, as text.
    pub fn query_one(&self, db: &str, sql: &str) -> Option<String> {
        let sql = sql.to_string();
        self.with_client(db, move |client| async move {
            let rows = client.simple_query(&sql).await.unwrap();
            rows.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
        })
        .unwrap()
    }

    /// Runs `f` with a client of database `db` on a thread of its own
    /// (callers may be on an async runtime); `Err` if no connection.
    fn with_client<T, F>(
        &self,
        db: &str,
        f: impl FnOnce(tokio_postgres::Client) -> F + Send + 'static,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        let url = self.url(db);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                let task = tokio::spawn(conn);
                let out = f(client).await;
                let _ = task.await;
                Ok(out)
            })
        })
        .join()
        .unwrap()
    }

    /// Ends the sessions on database `db` that match the SQL condition
    /// `filter` over `pg_stat_activity` (e.g. `query LIKE 'LISTEN%'`);
    /// how many.
    pub fn terminate_backends(&self, db: &str, filter: &str) -> usize {
        let n = self.query_one(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE datname = '{db}' AND pid <> pg_backend_pid() AND ({filter})"
            ),
        );
        n.and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    fn destroy(&self) {
        let _ = command(&self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The database name in a URL made by [`Cluster::database`].
pub fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}
