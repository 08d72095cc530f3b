//! The exception list as the rest of the sidecar sees it: the durable
//! store (the truth) plus the in-memory set (what screening reads).
//!
//! Every change goes to the store first, in one durable transaction, and
//! is published to the set only once that transaction has committed: a
//! change the API acknowledged is on disk, and screening sees it before the
//! answer leaves (publishing is a pointer swap; lookups never wait).
//! Imports commit in batches of [`IMPORT_BATCH`] lines, each batch
//! all-or-nothing, so a crash or a broken upload keeps every batch before
//! it and nothing half-written. All methods block: call them from a
//! blocking thread (`spawn_blocking`), never from the SIP path.

use std::io::{BufRead, Read};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Entry, ExceptionStore, Kind, NewEntry, StoreError, Upserted, item_of};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::screening::Screener;
use crate::screening::exceptions::ExceptionSet;
use crate::screening::source::{ParsedEntry, Rejected, parse_entry, without_line_end};

/// An import line that is an E.164 number (`+` and digits, the common
/// case) and its comment, read without building a [`ParsedEntry`]: the
/// number as the normaliser reads it, the value as given, the comment.
/// `None` for every other line, which [`parse_entry`] reads (and refuses
/// with its reason if need be).
fn phone_line<'a>(text: &'a [u8], screener: &Screener) -> Option<(u64, &'a str, &'a str)> {
    let (value, comment) = match memchr::memchr(b';', text) {
        Some(p) => (&text[..p], &text[p + 1..]),
        None => (text, &b""[..]),
    };
    let value = value.trim_ascii();
    let digits = value.strip_prefix(b"+")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = screener.normalizer().normalize(value, None)?;
    let comment = std::str::from_utf8(comment.trim_ascii()).ok()?;
    // ASCII: checked above.
    let given = std::str::from_utf8(value).ok()?;
    Some((n, given, comment))
}

/// `+` and the digits of `n`.
fn e164(n: u64) -> String {
    let mut s = String::with_capacity(16);
    s.push('+');
    s.push_str(itoa::Buffer::new().format(n));
    s
}

/// Lines per import transaction.
pub const IMPORT_BATCH: usize = 20_000;
/// Refused lines listed in an import report (all are counted).
pub const MAX_REFUSED_LISTED: usize = 1000;

/// Store + set.
pub struct Exceptions {
    store: Arc<dyn ExceptionStore>,
    set: Arc<ExceptionSet>,
    metrics: Arc<Metrics>,
    /// Woken when an entry with an expiry is written.
    expiry_changed: tokio::sync::Notify,
    /// "Now" for expiry (the system clock; tests set their own).
    clock: Clock,
}

/// What an import did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ImportReport {
    /// Lines read (including blank and comment lines).
    pub lines: usize,
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Refused lines, all counted.
    pub refused: usize,
    /// The first [`MAX_REFUSED_LISTED`] refused lines.
    pub refused_lines: Vec<Rejected>,
    /// Where the importing thread's CPU time went (not in the API's answer).
    #[serde(skip)]
    pub cpu: ImportCpu,
}

/// CPU time of the importing thread per phase, in nanoseconds (thread CPU
/// clock, read once per batch; the set's background merge runs on another
/// thread and is not in it).
#[derive(Debug, Default, Clone, Copy)]
pub struct ImportCpu {
    /// Reading, parsing and normalising lines into entries.
    pub parse_ns: u64,
    /// The store's transactions: rows, index, audit, commit.
    pub store_ns: u64,
    /// Publishing committed batches to the screening set.
    pub publish_ns: u64,
}

/// This thread's CPU time so far, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the call only writes it.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl ImportReport {
    fn count(&mut self, u: Upserted) {
        self.added += u.added;
        self.updated += u.updated;
        self.unchanged += u.unchanged;
    }

    /// Books the thread's CPU time since `started` not spent storing or
    /// publishing as parsing.
    fn timed(mut self, started: u64) -> Self {
        let total = thread_cpu_ns() - started;
        self.cpu.parse_ns = total.saturating_sub(self.cpu.store_ns + self.cpu.publish_ns);
        self
    }
}

/// Why an import stopped early; the batches before it are committed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the upload failed at line {line}: {source}")]
    Read {
        line: usize,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why the config's exceptions file could not be imported; each names the
/// file.
#[derive(Debug, thiserror::Error)]
pub enum FileImportError {
    #[error("{path}: cannot open exceptions file: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot read exceptions file: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Import {
        path: String,
        #[source]
        source: ImportError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Exceptions {
    pub fn new(
        store: Arc<dyn ExceptionStore>,
        set: Arc<ExceptionSet>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Exceptions {
            store,
            set,
            metrics,
            expiry_changed: tokio::sync::Notify::new(),
            clock: Clock::system(),
        }
    }

    /// Uses `clock` for "now" (expiry, load).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock expiry is measured on.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn store(&self) -> &Arc<dyn ExceptionStore> {
        &self.store
    }

    pub fn set(&self) -> &Arc<ExceptionSet> {
        &self.set
    }

    /// Replaces the set with the store's active entries (start).
    pub fn load(&self) -> Result<(usize, usize), StoreError> {
        let items = self.store.load_active(self.clock.now_ms())?;
        self.set.replace_items(items);
        Ok(self.counted())
    }

    /// Counts the set after changes published by someone else (another
    /// node's, through the change log), and wakes the expiry timer if one
    /// of them has an expiry.
    pub fn published(&self, expiring: bool) {
        self.counted();
        if expiring {
            self.expiry_changed.notify_one();
        }
    }

    fn counted(&self) -> (usize, usize) {
        let (p, e) = self.set.counts();
        self.metrics.set_exception_entries(p, e);
        (p, e)
    }

    /// Adds or updates `entries` durably, then publishes them.
    pub fn write(&self, entries: &[NewEntry], actor: &str) -> Result<Upserted, StoreError> {
        let now = self.clock.now_ms();
        let done = self.store.upsert(entries, actor, now)?;
        self.publish(entries, now);
        Ok(done)
    }

    fn publish(&self, entries: &[NewEntry], now: i64) {
        let mut items = Vec::with_capacity(entries.len());
        let mut expiring = false;
        for e in entries {
            expiring |= e.expires_at.is_some();
            if e.expires_at.is_some_and(|t| t <= now) {
                continue;
            }
            items.extend(item_of(e.kind, &e.value, e.allow));
        }
        self.set.insert_items(&items);
        self.counted();
        if expiring {
            self.expiry_changed.notify_one();
        }
    }

    /// Removes one value durably, then from the set.
    pub fn remove(&self, value: &str, actor: &str) -> Result<Option<Entry>, StoreError> {
        let gone = self.store.remove(value, actor, self.clock.now_ms())?;
        if let Some(e) = &gone {
            self.unpublish(e);
        }
        Ok(gone)
    }

    fn unpublish(&self, e: &Entry) {
        if let Some(item) = e.item() {
            self.set.remove_item(&item);
        }
        self.counted();
    }

    /// Removes every entry whose time has come; how many.
    pub fn expire_due(&self) -> Result<usize, StoreError> {
        let gone = self.store.expire(self.clock.now_ms())?;
        for e in &gone {
            self.unpublish(e);
        }
        if !gone.is_empty() {
            tracing::info!(entries = gone.len(), "expired exception entries removed");
        }
        Ok(gone.len())
    }

    /// Expires entries at their time until `shutdown` fires.
    pub async fn run_expiry(self: Arc<Self>, mut shutdown: crate::shutdown::Shutdown) {
        loop {
            let me = self.clone();
            let next = tokio::task::spawn_blocking(move || me.store.next_expiry())
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            // Re-check at least once a minute (clock changes, missed wakes).
            let wait_ms = next.map_or(60_000, |t| (t - self.clock.now_ms()).clamp(0, 60_000));
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.expiry_changed.notified() => continue,
                _ = tokio::time::sleep(std::time::Duration::from_millis(wait_ms as u64)) => {}
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.expire_due()).await {
                Ok(Err(e)) => tracing::error!(error = %e, "expiring exception entries failed"),
                Err(e) => tracing::error!(error = %e, "expiry task failed"),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Imports `VALUE; comment` lines (`!VALUE` allows; prefixes, ranges,
    /// domains), read as `screener`'s config says, committing every
    /// [`IMPORT_BATCH`] lines; `progress` gets the bytes read so far after
    /// each batch. On error the report says what was committed before it.
    pub fn import(
        &self,
        r: impl BufRead,
        screener: &Screener,
        actor: &str,
        origin: &str,
        progress: impl FnMut(u64),
    ) -> (ImportReport, Result<(), ImportError>) {
        self.import_until(r, screener, actor, origin, None, progress)
    }

    /// As [`import`](Self::import), every entry written with `expires_at`
    /// (the console's "Add to list" with an expiry).
    pub fn import_until(
        &self,
        mut r: impl BufRead,
        screener: &Screener,
        actor: &str,
        origin: &str,
        expires_at: Option<i64>,
        mut progress: impl FnMut(u64),
    ) -> (ImportReport, Result<(), ImportError>) {
        let started = thread_cpu_ns();
        // Each batch is published whole once committed; the set's base is
        // rebuilt once, after the last one.
        let _hold = self.set.hold_merges();
        let mut report = ImportReport::default();
        let mut batch: Vec<NewEntry> = Vec::with_capacity(IMPORT_BATCH);
        let mut buf = Vec::with_capacity(256);
        let mut read = 0u64;
        loop {
            buf.clear();
            let n = match r.read_until(b'\n', &mut buf) {
                Ok(n) => n,
                Err(source) => {
                    let line = report.lines + 1;
                    return (
                        report.timed(started),
                        Err(ImportError::Read { line, source }),
                    );
                }
            };
            if n == 0 {
                break;
            }
            read += n as u64;
            report.lines += 1;
            let text = without_line_end(&buf);
            if let Some((n, given, comment)) = phone_line(text, screener) {
                batch.push(NewEntry {
                    kind: Kind::Phone,
                    value: e164(n),
                    given: given.to_string(),
                    comment: comment.to_string(),
                    origin: origin.to_string(),
                    expires_at,
                    allow: false,
                });
            } else {
                match parse_entry(text, screener.normalizer(), screener.max_range_numbers()) {
                    Ok(Some(ParsedEntry {
                        value,
                        given,
                        comment,
                        allow,
                    })) => {
                        for (kind, stored) in value.stored() {
                            batch.push(NewEntry {
                                kind,
                                value: stored,
                                given: given.clone(),
                                comment: comment.clone(),
                                origin: origin.to_string(),
                                expires_at,
                                allow,
                            });
                        }
                    }
                    Ok(None) => {}
                    Err(reason) => {
                        report.refused += 1;
                        if report.refused_lines.len() < MAX_REFUSED_LISTED {
                            report
                                .refused_lines
                                .push(Rejected::new(report.lines, text, &reason));
                        }
                    }
                }
            }
            if batch.len() >= IMPORT_BATCH {
                if let Err(e) = self.commit_batch(&batch, actor, &mut report) {
                    return (report.timed(started), Err(e.into()));
                }
                batch.clear();
                progress(read);
            }
        }
        if !batch.is_empty()
            && let Err(e) = self.commit_batch(&batch, actor, &mut report)
        {
            return (report.timed(started), Err(e.into()));
        }
        progress(read);
        (report.timed(started), Ok(()))
    }

    /// One import batch: stored in one transaction, then published;
    /// counted and timed in `report`.
    fn commit_batch(
        &self,
        batch: &[NewEntry],
        actor: &str,
        report: &mut ImportReport,
    ) -> Result<(), StoreError> {
        let t0 = thread_cpu_ns();
        let now = self.clock.now_ms();
        let done = self.store.upsert(batch, actor, now);
        let t1 = thread_cpu_ns();
        report.cpu.store_ns += t1 - t0;
        report.count(done?);
        self.publish(batch, now);
        report.cpu.publish_ns += thread_cpu_ns() - t1;
        Ok(())
    }

    /// Imports the config's exceptions file when its content differs from
    /// the last one imported (the file is an import source, not a second
    /// truth: entries removed through the API stay removed until the file
    /// changes). `None` when it was unchanged.
    pub fn import_file_if_changed(
        &self,
        path: &Path,
        screener: &Screener,
    ) -> Result<Option<ImportReport>, FileImportError> {
        let shown = path.display();
        let open = || {
            std::fs::File::open(path).map_err(|source| FileImportError::Open {
                path: shown.to_string(),
                source,
            })
        };
        let mut hasher = Sha256::new();
        let mut f = open()?;
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut chunk).map_err(|source| FileImportError::Read {
                path: shown.to_string(),
                source,
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&chunk[..n]);
        }
        let digest = hex::encode(hasher.finalize());
        let key = format!("exceptions_file:{}", shown);
        let last = self.store.meta(&key)?;
        if last.as_deref() == Some(digest.as_str()) {
            return Ok(None);
        }
        let reader = std::io::BufReader::with_capacity(1 << 16, open()?);
        let (report, result) = self.import(reader, screener, "config", "file", |_| {});
        result.map_err(|source| FileImportError::Import {
            path: shown.to_string(),
            source,
        })?;
        self.store.set_meta(&key, &digest)?;
        Ok(Some(report))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::Kind;
    use crate::store::sqlite::SqliteStore;

    fn entry(value: &str, expires_at: i64) -> NewEntry {
        NewEntry {
            kind: Kind::Phone,
            value: value.to_string(),
            given: value.to_string(),
            comment: "trial".to_string(),
            origin: "api".to_string(),
            expires_at: Some(expires_at),
            allow: false,
        }
    }

    fn screener(set: Arc<ExceptionSet>) -> Screener {
        let text = "[pbx]\ntarget = \"127.0.0.1:5080\"\nsources = [\"127.0.0.1/32\"]\n\
                    [[trunk]]\nname = \"c\"\ntarget = \"127.0.0.2:5070\"\nsources = [\"127.0.0.2/32\"]\n\
                    [screening]\ndefault_region = \"DE\"\n";
        let loaded = crate::config::from_toml(Path::new("t.toml"), text.to_string()).unwrap();
        Screener::build(&loaded, set).unwrap()
    }

    /// The E.164 fast path reads a line exactly as `parse_entry` does, and
    /// leaves every other line to it.
    #[test]
    fn phone_lines_read_as_parse_entry_reads_them() {
        let sc = screener(Arc::new(ExceptionSet::new()));
        let read = |l: &[u8]| {
            let fast = phone_line(l, &sc).map(|(n, g, c)| (e164(n), g.to_string(), c.to_string()));
            let full = match parse_entry(l, sc.normalizer(), sc.max_range_numbers()) {
                Ok(Some(p)) if !p.allow && p.value.stored().len() == 1 => {
                    let v = p.value.stored().swap_remove(0).1;
                    Some((v, p.given, p.comment))
                }
                _ => None,
            };
            (fast, full)
        };
        let phones: [&[u8]; 6] = [
            b"+4930901820",
            b"+4930901820; a comment ",
            b"  +4930901820  ;x;y",
            b"+4930901820;",
            b"+1234567",
            b"+123456789012345",
        ];
        for l in phones {
            let (fast, full) = read(l);
            assert!(fast.is_some(), "{:?}", String::from_utf8_lossy(l));
            assert_eq!(fast, full, "{:?}", String::from_utf8_lossy(l));
        }
        let others: [&[u8]; 13] = [
            b"+0301234",
            b"+123456",
            b"+1234567890123456",
            b"+",
            b"+49 30 901820",
            b"!+4930901820",
            b"+4930901*",
            b"+4930901820..+4930901829",
            b"030 901820",
            b"# +4930901820",
            b"+4930901820; \xff",
            b"a@example.com",
            b"",
        ];
        for l in others {
            assert_eq!(phone_line(l, &sc), None, "{:?}", String::from_utf8_lossy(l));
        }
    }

    /// An import of several batches: after each batch's commit (the
    /// progress call) screening sees exactly the lines of the batches so
    /// far, never part of the next; no merge runs during the import (the
    /// delta holds every batch), and one folds it in after.
    #[test]
    fn an_import_is_visible_batch_by_batch_and_merged_once_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let set = Arc::new(ExceptionSet::new());
        let list = Exceptions::new(store.clone(), set.clone(), Arc::new(Metrics::new()));
        let sc = screener(set.clone());
        let n = IMPORT_BATCH * 2 + IMPORT_BATCH / 2;
        let first = 4_917_000_000_000u64;
        let text: String = (0..n as u64)
            .map(|i| {
                if i % 3 == 0 {
                    // Not the fast path: international with 00.
                    format!("00{}; slow {i}\n", first + i)
                } else {
                    format!("+{}; fast {i}\n", first + i)
                }
            })
            .collect();
        let number = |i: usize| first + i as u64;
        let mut seen = Vec::new();
        let (report, done) = list.import(text.as_bytes(), &sc, "test", "import", |_| {
            let (phones, _) = set.counts();
            let batches = seen.len() + 1;
            let whole = (batches * IMPORT_BATCH).min(n);
            assert_eq!(phones, whole, "after batch {batches}");
            assert!(set.contains_phone(number(whole - 1)));
            if whole < n {
                assert!(!set.contains_phone(number(whole)), "part of the next batch");
            }
            seen.push(set.delta_lens().0);
        });
        done.unwrap();
        assert_eq!(report.added, n, "{report:?}");
        assert_eq!(report.lines, n);
        // Every batch stayed in the delta: no merge rebuilt the base.
        assert_eq!(seen, vec![IMPORT_BATCH, 2 * IMPORT_BATCH, n]);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while set.delta_lens().0 > 0 {
            assert!(std::time::Instant::now() < deadline, "never merged");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(set.counts().0, n);
        assert!((0..n).all(|i| set.contains_phone(number(i))));
        assert_eq!(store.load_active(0).unwrap().len(), n);
    }

    /// Waits (on the paused clock, which runs ahead while the runtime is
    /// idle) until `cond` holds; false if it never does.
    async fn eventually(cond: impl Fn() -> bool) -> bool {
        for _ in 0..200 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cond()
    }

    /// An entry leaves the set at its time by the clock, not before: the
    /// expiry task is driven by a paused tokio clock and a manual wall clock.
    #[tokio::test(start_paused = true)]
    async fn an_entry_expires_at_its_time_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let clock = Clock::manual(1_800_000_000_000);
        let list = Arc::new(
            Exceptions::new(
                store.clone(),
                Arc::new(ExceptionSet::new()),
                Arc::new(Metrics::new()),
            )
            .with_clock(clock.clone()),
        );
        let t0 = clock.now_ms();
        list.write(&[entry("+4917077700000", t0 + 90_000)], "test")
            .unwrap();
        let (trigger, shutdown) = crate::shutdown::channel();
        let task = tokio::spawn(list.clone().run_expiry(shutdown));
        let n = 4_917_077_700_000;
        assert!(list.set().contains_phone(n));
        // Minutes of tokio time pass, but the wall clock stands before the
        // expiry: the entry stays.
        tokio::time::sleep(Duration::from_secs(180)).await;
        assert!(list.set().contains_phone(n), "expired before its time");
        // The wall clock reaches it: gone within the task's next wake-up,
        // with its audit row.
        clock.advance(Duration::from_secs(90));
        assert!(
            eventually(|| !list.set().contains_phone(n)).await,
            "not expired at its time"
        );
        let audit = store.audit(Some("+4917077700000"), None, 10).unwrap();
        assert_eq!(audit[0].action, "expire");
        trigger.fire();
        task.await.unwrap();
    }
}
