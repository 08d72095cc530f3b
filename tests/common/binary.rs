//! The real `sipscreen` binary as a child process, its log lines read
//! from stderr on a thread.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sipscreen");

/// A running `sipscreen serve`; killed when dropped.
pub struct Serving {
    pub child: Child,
    pub logs: Receiver<String>,
    /// The "sipscreen ready" log line.
    pub ready: String,
    /// The log lines before it.
    pub early: Vec<String>,
}

impl Serving {
    /// Starts `serve --config config` and waits until it is ready.
    pub fn start(config: &Path) -> Serving {
        Self::start_bin(Path::new(BIN), config)
    }

    /// The same with another build of the binary (a release build, to
    /// measure it).
    pub fn start_bin(bin: &Path, config: &Path) -> Serving {
        Self::start_env(bin, config, &[])
    }

    /// The same with extra environment variables (a store URL).
    pub fn start_env(bin: &Path, config: &Path, env: &[(&str, &str)]) -> Serving {
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, logs) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut early = Vec::new();
        let ready = wait_keeping(&logs, "sipscreen ready", &mut early);
        Serving {
            child,
            logs,
            ready,
            early,
        }
    }

    /// An address from the ready line: `after` up to `until`
    /// (`"udp=["`, `']'` or `"admin=Some("`, `')'`).
    pub fn addr(&self, after: &str, until: char) -> SocketAddr {
        self.ready
            .split(after)
            .nth(1)
            .and_then(|s| s.split(until).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {after} address in {:?}", self.ready))
    }

    pub fn admin(&self) -> SocketAddr {
        self.addr("admin=Some(", ')')
    }

    pub fn wait_for(&self, what: &str) -> String {
        wait_for(&self.logs, what)
    }

    /// Sends a signal by name (`-HUP`, `-TERM`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first log line containing `what` within 20 s.
pub fn wait_for(rx: &Receiver<String>, what: &str) -> String {
    wait_keeping(rx, what, &mut Vec::new())
}

/// As [`wait_for`], keeping the lines before it in `before`.
fn wait_keeping(rx: &Receiver<String>, what: &str, before: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if line.contains(what) {
                return line;
            }
            before.push(line);
        }
    }
    panic!("log line {what:?} did not appear; the lines meanwhile: {before:#?}");
}

/// One number from the SQLite file the binary writes (read-only, beside
/// the running process: WAL readers do not block it).
pub fn count(db: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Polls `cond` (blocking) until it holds, or fails with `what` after 20 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The edit and view tokens of [`store_config`].
pub const EDIT: &str = "edit-token";
pub const VIEW: &str = "view-token";

/// A config for the store tests written to `dir/sipscreen.toml`: loopback
/// SIP, an admin listener with an edit token [`EDIT`] and a view token
/// [`VIEW`], the data directory `dir/data`, `store` added to the
/// `[store]` table's body, one line.
pub fn store_config(dir: &Path, store: &str) -> std::path::PathBuf {
    use sha2::Digest;
    let sha = |s: &str| hex::encode(sha2::Sha256::digest(s.as_bytes()));
    let text = format!(
        r#"[sip]
udp = ["127.0.0.1:0"]
tcp = []
[pbx]
target = "127.0.0.1:5080"
sources = ["127.0.0.1/32"]
[[trunk]]
name = "carrier"
target = "127.0.0.2:5070"
sources = ["127.0.0.2/32"]
[admin]
listen = "127.0.0.1:0"
[[admin.tokens]]
name = "ops"
role = "edit"
sha256 = "{}"
[[admin.tokens]]
name = "viewer"
role = "view"
sha256 = "{}"
[store]
data_dir = "{}"
{store}
[[line]]
number = "+4930901820"
source = "WEB"
"#,
        sha(EDIT),
        sha(VIEW),
        dir.join("data").display()
    );
    let path = dir.join("sipscreen.toml");
    std::fs::write(&path, text).unwrap();
    path
}
