//! The durable list end to end, one measured run per figure (these are
//! seconds-long operations, not micro-benchmarks):
//!
//! - `import`: 1M `VALUE; comment` lines through `Exceptions::import` as
//!   the API's import calls it (parse, normalise, store in batched
//!   transactions, publish to the screening set) into a running server's
//!   store (real SQLite file, `synchronous=FULL`), beside the SQLite
//!   floor: the same rows (read back from that store) inserted with one
//!   prepared `INSERT` in one transaction into a fresh file of the same
//!   schema and settings. Prints both in wall and CPU time (the
//!   import's: every thread's until the set has merged), the importing
//!   thread's CPU per phase (parse, store, publish), parsing and
//!   normalising alone, the floor's audit rows (one `INSERT … SELECT`),
//!   and the ratios.
//! - `http`: the same 1M lines over HTTP into the running server (real
//!   socket), timed from the first byte sent to the answer; the answer
//!   means committed to disk and published to the screening set, which the
//!   bench checks.
//! - `screening under import`: latency of the screening call on another
//!   thread while a 100k-line import runs, against the same with no import.
//! - `startup`: a 10M-entry store (built directly with SQL), then the real
//!   binary started on it: time to "sipscreen ready" and its resident
//!   memory.
//!
//! cargo bench --bench store            (all)
//! cargo bench --bench store -- import  (one part: import, http, concurrency, startup)

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sipscreen::screening::Direction;
use sipscreen::server::Server;
use sipscreen::shutdown;

const TOKEN: &str = "bench-token";

fn config(dir: &Path) -> std::path::PathBuf {
    use sha2::Digest;
    let text = format!(
        "[sip]\nudp = [\"127.0.0.1:0\"]\ntcp = []\n[pbx]\ntarget = \"127.0.0.1:5080\"\nsources = [\"127.0.0.1/32\"]\n\
         [[trunk]]\nname = \"c\"\ntarget = \"127.0.0.2:5070\"\nsources = [\"127.0.0.2/32\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\nimport_max_bytes = 1073741824\n\
         [[admin.tokens]]\nname = \"bench\"\nrole = \"edit\"\nsha256 = \"{}\"\n\
         [store]\ndata_dir = \"{}\"\n[log]\nlevel = \"warn\"\n",
        hex::encode(sha2::Sha256::digest(TOKEN.as_bytes())),
        dir.join("data").display()
    );
    let p = dir.join("sipscreen.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn lines(n: usize, base: u64) -> String {
    let mut s = String::with_capacity(n * 32);
    for i in 0..n as u64 {
        s.push_str(&format!("+{}; bench entry {i}\n", base + i * 7));
    }
    s
}

async fn post_import(admin: std::net::SocketAddr, body: String) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("http://{admin}/api/v1/exceptions/import"))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

fn percentiles(mut v: Vec<u64>) -> String {
    v.sort_unstable();
    let p = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    format!(
        "p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns ({} calls)",
        p(0.5),
        p(0.99),
        p(0.999),
        v[v.len() - 1],
        v.len()
    )
}

/// The entries rows of the store at `db`, in insertion order.
type Row = (
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    Option<i64>,
    String,
    String,
);

fn rows_of(db: &Path) -> Vec<Row> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare(
            "SELECT kind, value, given, comment, origin, created_at, created_by, expires_at, pattern, action
             FROM entries ORDER BY id",
        )
        .unwrap();
    st.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// CPU time of the whole process so far (user + system, every thread),
/// nanoseconds.
fn process_cpu_ns() -> u64 {
    // SAFETY: a zeroed rusage is valid; getrusage only writes it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(u.ru_utime) + ns(u.ru_stime)
}

use sipscreen::store::service::thread_cpu_ns;

/// Wall and CPU time of one measured part, seconds.
#[derive(Clone, Copy, Default)]
struct Spent {
    wall: f64,
    cpu: f64,
}

impl Spent {
    fn show(&self) -> String {
        format!("{:.2} s wall, {:.2} s CPU", self.wall, self.cpu)
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The SQLite floor: `rows` inserted with one prepared statement in one
/// transaction into a fresh file with the store's schema and settings (the
/// rows alone), and beside it, in the same transaction, the audit rows of
/// those adds copied by one `INSERT … SELECT` (what an import also
/// writes). One thread: its CPU clock is the floor's CPU.
fn sqlite_floor(dir: &Path, rows: &[Row]) -> (Spent, Spent) {
    let db = dir.join("floor.db");
    drop(sipscreen::store::sqlite::SqliteStore::open(&db).unwrap());
    let mut c = rusqlite::Connection::open(&db).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    let t = Instant::now();
    let cpu = thread_cpu_ns();
    let tx = c.transaction().unwrap();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO entries (kind, value, given, comment, origin, created_at, created_by,
                                      expires_at, pattern, action)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .unwrap();
        for r in rows {
            st.execute(rusqlite::params![
                r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    let floor = Spent {
        wall: t.elapsed().as_secs_f64(),
        cpu: secs(thread_cpu_ns() - cpu),
    };
    let t = Instant::now();
    let cpu = thread_cpu_ns();
    let tx = c.transaction().unwrap();
    tx.execute(
        "INSERT INTO audit (at, actor, action, kind, value, comment, origin, entry_action)
         SELECT created_at, created_by, 'add', kind, value, comment, origin, action
         FROM entries ORDER BY id",
        [],
    )
    .unwrap();
    tx.commit().unwrap();
    let audit = Spent {
        wall: t.elapsed().as_secs_f64(),
        cpu: secs(thread_cpu_ns() - cpu),
    };
    (floor, audit)
}

/// CPU time of parsing and of normalising `body`'s lines on their own,
/// one thread (the split of the import's parse phase): (parse_entry
/// including normalising, normalising alone), seconds.
fn parse_phases(body: &str, screener: &sipscreen::screening::Screener) -> (f64, f64) {
    use sipscreen::screening::source::parse_entry;
    let norm = screener.normalizer();
    let cpu = thread_cpu_ns();
    let mut n = 0usize;
    for line in body.lines() {
        let e = parse_entry(line.as_bytes(), norm, screener.max_range_numbers());
        n += std::hint::black_box(e).is_ok_and(|e| e.is_some()) as usize;
    }
    let parse = secs(thread_cpu_ns() - cpu);
    assert_eq!(n, 1_000_000);
    let cpu = thread_cpu_ns();
    let mut n = 0usize;
    for line in body.lines() {
        let value = &line.as_bytes()[..memchr::memchr(b';', line.as_bytes()).unwrap()];
        n += std::hint::black_box(norm.normalize(value, None)).is_some() as usize;
    }
    let normalise = secs(thread_cpu_ns() - cpu);
    assert_eq!(n, 1_000_000);
    (parse, normalise)
}

async fn import_and_concurrency(run_import: bool, run_http: bool, run_concurrency: bool) {
    let dir = tempfile::tempdir().unwrap();
    let bound = Server::bind(&config(dir.path())).await.unwrap();
    let server = bound.server.clone();
    let (trigger, sd) = shutdown::channel();
    let task = tokio::spawn(bound.run(sd));
    let admin = server.admin.unwrap();

    if run_import {
        let body = lines(1_000_000, 4_914_000_000_000);
        let list = server.list.clone();
        let rt = server.proxy.runtime_arc();
        let (parse_alone, normalise_alone) = parse_phases(&body, &rt.screener);
        let set = server.exceptions.clone();
        let (visible, merged, cpu_thread, report) = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let process = process_cpu_ns();
            let (report, done) = list.import(
                std::io::BufReader::with_capacity(1 << 16, body.as_bytes()),
                &rt.screener,
                "bench",
                "import",
                |_| {},
            );
            done.unwrap();
            let visible = t.elapsed().as_secs_f64();
            // The set's background merges finish after the answer: wait
            // for the delta to be folded in and count their CPU too.
            let deadline = Instant::now() + Duration::from_secs(300);
            while set.delta_lens().0 >= sipscreen::screening::exceptions::DEFAULT_MERGE_THRESHOLD {
                assert!(Instant::now() < deadline, "the set never merged");
                std::thread::sleep(Duration::from_millis(2));
            }
            let merged = Spent {
                wall: t.elapsed().as_secs_f64(),
                cpu: secs(process_cpu_ns() - process),
            };
            let c = report.cpu;
            (visible, merged, c, report)
        })
        .await
        .unwrap();
        assert_eq!(report.added, 1_000_000, "{report:?}");
        assert!(
            server
                .exceptions
                .contains_phone(4_914_000_000_000 + 999_999 * 7)
        );
        let rows = rows_of(
            &dir.path()
                .join("data")
                .join(sipscreen::store::sqlite::FILE_NAME),
        );
        assert_eq!(rows.len(), 1_000_000);
        let (floor, audit) = sqlite_floor(dir.path(), &rows);
        let thread = secs(cpu_thread.parse_ns + cpu_thread.store_ns + cpu_thread.publish_ns);
        println!(
            "import: 1000000 lines through Exceptions::import -> SQLite (synchronous=FULL) -> visible: {visible:.2} s ({:.0} lines/s); set merged: {}",
            1e6 / visible,
            merged.show()
        );
        println!(
            "import CPU by phase (importing thread {thread:.2} s): parse + normalise {:.2} s (alone: parse_entry {parse_alone:.2} s, of which normalise {normalise_alone:.2} s), store {:.2} s, publish {:.2} s; background merges and other threads {:.2} s",
            secs(cpu_thread.parse_ns),
            secs(cpu_thread.store_ns),
            secs(cpu_thread.publish_ns),
            merged.cpu - thread
        );
        println!(
            "import floor: the same 1000000 rows, one prepared INSERT in one transaction into a fresh file: {}; their audit rows by one INSERT … SELECT: {}",
            floor.show(),
            audit.show()
        );
        println!(
            "import / floor: wall {:.2} (to visible; {:.2} to merged), CPU {:.2}; against floor + audit: wall {:.2}, CPU {:.2}",
            visible / floor.wall,
            merged.wall / floor.wall,
            merged.cpu / floor.cpu,
            visible / (floor.wall + audit.wall),
            merged.cpu / (floor.cpu + audit.cpu)
        );
    }

    if run_http {
        let body = lines(1_000_000, 4_915_000_000_000);
        let bytes = body.len();
        let t = Instant::now();
        let v = post_import(admin, body).await;
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(v["added"], 1_000_000, "{v}");
        assert!(
            server
                .exceptions
                .contains_phone(4_915_000_000_000 + 999_999 * 7)
        );
        println!(
            "import: 1000000 lines ({:.1} MB) over HTTP -> SQLite (synchronous=FULL) -> visible: {secs:.2} s ({:.0} lines/s)",
            bytes as f64 / 1e6,
            1e6 / secs
        );
    }

    if run_concurrency {
        let measure = |stop: Arc<AtomicBool>, server: Arc<Server>| {
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(1 << 20);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let n = format!("+4917{:09}", i % 1_000_000_000);
                    i += 1;
                    let t = Instant::now();
                    let rt = server.proxy.runtime();
                    let s =
                        rt.screener
                            .screen(Direction::Inbound, b"+4930901820", Some(n.as_bytes()));
                    std::hint::black_box(s.verdict);
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                lat
            })
        };
        let stop = Arc::new(AtomicBool::new(false));
        let idle = measure(stop.clone(), server.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        println!(
            "screening, idle:            {}",
            percentiles(idle.join().unwrap())
        );

        let stop = Arc::new(AtomicBool::new(false));
        let busy = measure(stop.clone(), server.clone());
        let t = Instant::now();
        post_import(admin, lines(100_000, 4_916_000_000_000)).await;
        let secs = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        println!(
            "screening, during a 100k-line import ({secs:.2} s): {}",
            percentiles(busy.join().unwrap())
        );
    }
    trigger.fire();
    let _ = task.await;
}

fn startup() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let db = dir.path().join("data/sipscreen.db");
    // Create the schema through the store, then bulk-fill with SQL.
    drop(sipscreen::store::sqlite::SqliteStore::open(&db).unwrap());
    let t = Instant::now();
    {
        let mut c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "synchronous", "OFF").unwrap();
        let tx = c.transaction().unwrap();
        {
            let mut st = tx
                .prepare("INSERT INTO entries (kind, value, given, comment, origin, created_at, created_by) VALUES ('phone', ?1, ?1, 'bulk', 'import', 0, 'bench')")
                .unwrap();
            for i in 0..10_000_000u64 {
                st.execute([format!("+{}", 4_915_000_000_000 + i * 13)])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    println!(
        "startup: built a 10M-entry store in {:.1} s ({:.0} MB)",
        t.elapsed().as_secs_f64(),
        std::fs::metadata(&db).unwrap().len() as f64 / 1e6
    );
    let mut best = f64::MAX;
    let mut rss = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sipscreen"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let err = BufReader::new(child.stderr.take().unwrap());
        for line in err.lines().map_while(Result::ok) {
            if line.contains("sipscreen ready") {
                break;
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(500));
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        let _ = child.kill();
        let _ = child.wait();
    }
    println!(
        "startup: 10M entries, best of 3 to \"sipscreen ready\": {best:.2} s; resident memory {:.0} MB",
        rss as f64 / 1024.0
    );
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    if want("import") || want("http") || want("concurrency") {
        rt.block_on(import_and_concurrency(
            want("import"),
            want("http"),
            want("concurrency"),
        ));
    }
    if want("startup") {
        startup();
    }
}
