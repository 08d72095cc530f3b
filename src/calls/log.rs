//! The call log ("telephony statistics"): one JSON object per finished
//! call in `data_dir/calls.jsonl`, rotated at `[calls] log_max_bytes` to
//! `calls.jsonl.1` … `.N` (the oldest dropped). Exception calls are
//! logged too: the log is the only place they appear.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One finished call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    /// `X-CRM-Call-Id`.
    pub call_id: String,
    pub sip_call_id: String,
    pub direction: String,
    pub line: Option<String>,
    pub client: String,
    pub verdict: String,
    pub create: String,
    pub source: String,
    /// `X-CRM-Reason`: `listed`, `prefix:+4930901`, `allow:+49309018`,
    /// `verstat`, `anonymous`; absent when no entry decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `X-CRM-Attest` of an inbound call (`none` for outbound ones and
    /// in records of earlier releases).
    #[serde(default = "attest_none")]
    pub attest: String,
    pub responsible: Option<String>,
    /// RFC 3339 times; `start_ms` for filtering.
    pub start: String,
    pub start_ms: i64,
    pub answer: Option<String>,
    pub end: String,
    /// Final SIP status (200 for answered calls).
    pub status: u16,
    /// `completed`, `failed`, `cancelled`, `expired`.
    pub outcome: String,
    /// Seconds from answer to end (0 if not answered).
    pub duration: u64,
    pub transfers: Vec<Transfer>,
    /// What each CRM answered about the call, by sink (Bitrix24 register:
    /// `CRM_ENTITY_TYPE`/`_ID`, `CRM_CREATED_ENTITIES`,
    /// `LEAD_CREATION_ERROR`). Added by the API from the store: the answer
    /// may come after the call ended and its line was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm: Option<serde_json::Value>,
}

/// A [`CallRecord`] borrowed from whatever holds its fields: the tracker
/// writes a call's line from the call's state without copying each string
/// into a `CallRecord` first (a dozen allocations a call).
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub call_id: &'a str,
    pub sip_call_id: &'a str,
    pub direction: &'a str,
    pub line: Option<&'a str>,
    pub client: &'a str,
    pub verdict: &'a str,
    pub create: &'a str,
    pub source: &'a str,
    pub reason: Option<&'a str>,
    pub attest: &'a str,
    pub responsible: Option<&'a str>,
    pub start: &'a str,
    pub start_ms: i64,
    pub answer: Option<&'a str>,
    pub end: &'a str,
    pub status: u16,
    pub outcome: &'a str,
    pub duration: u64,
    pub transfers: &'a [Transfer],
    pub crm: Option<&'a serde_json::Value>,
}

impl RecordRef<'_> {
    /// Appends the record's JSON to `out`: the bytes serde writes for the
    /// [`CallRecord`] (`a_record_is_written_as_serde_writes_it`), written
    /// field by field.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut o = crate::json::Obj::new(out);
        o.str("call_id", self.call_id);
        o.str("sip_call_id", self.sip_call_id);
        o.str("direction", self.direction);
        o.opt_str("line", self.line);
        o.str("client", self.client);
        o.str("verdict", self.verdict);
        o.str("create", self.create);
        o.str("source", self.source);
        if let Some(r) = self.reason {
            o.str("reason", r);
        }
        o.str("attest", self.attest);
        o.opt_str("responsible", self.responsible);
        o.str("start", self.start);
        o.num("start_ms", self.start_ms);
        o.opt_str("answer", self.answer);
        o.str("end", self.end);
        o.num("status", u64::from(self.status));
        o.str("outcome", self.outcome);
        o.num("duration", self.duration);
        o.list("transfers", self.transfers, Transfer::write_json);
        if let Some(c) = self.crm {
            o.value("crm", c);
        }
        o.end();
    }
}

impl CallRecord {
    /// Appends the record's JSON to `out` ([`RecordRef::write_json`]).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.borrowed().write_json(out)
    }

    /// The record's fields, borrowed.
    pub fn borrowed(&self) -> RecordRef<'_> {
        RecordRef {
            call_id: &self.call_id,
            sip_call_id: &self.sip_call_id,
            direction: &self.direction,
            line: self.line.as_deref(),
            client: &self.client,
            verdict: &self.verdict,
            create: &self.create,
            source: &self.source,
            reason: self.reason.as_deref(),
            attest: &self.attest,
            responsible: self.responsible.as_deref(),
            start: &self.start,
            start_ms: self.start_ms,
            answer: self.answer.as_deref(),
            end: &self.end,
            status: self.status,
            outcome: &self.outcome,
            duration: self.duration,
            transfers: &self.transfers,
            crm: self.crm.as_ref(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Transfer {
    pub at: String,
    pub to: String,
}

impl Transfer {
    /// The transfer's fields into `o`, in serde's order (the call log line
    /// and the saved call state hold transfers alike).
    pub fn write_json(o: &mut crate::json::Obj<'_>, t: &Transfer) {
        o.str("at", &t.at);
        o.str("to", &t.to);
    }
}

fn attest_none() -> String {
    "none".to_string()
}

/// Appends records, rotating by size. Writes are buffered; the tracker
/// flushes every 100 ms (and at shutdown), one system call for many calls.
pub struct CallLog {
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
    /// The line being written (reused: no allocation per call).
    line: Vec<u8>,
}

/// The current log file in `dir`.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("calls.jsonl")
}

impl CallLog {
    pub fn open(dir: &Path, max_bytes: u64, keep: usize) -> std::io::Result<CallLog> {
        std::fs::create_dir_all(dir)?;
        let path = log_path(dir);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(CallLog {
            path,
            file: BufWriter::with_capacity(64 << 10, file),
            size,
            max_bytes: max_bytes.max(4096),
            keep: keep.max(1),
            line: Vec::with_capacity(1024),
        })
    }

    /// Writes one record (one `write` of a whole line).
    pub fn append(&mut self, r: &RecordRef<'_>) -> std::io::Result<()> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        let written = self.write_line(&mut line, r);
        self.line = line;
        written
    }

    fn write_line(&mut self, line: &mut Vec<u8>, r: &RecordRef<'_>) -> std::io::Result<()> {
        r.write_json(line);
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        std::fs::rename(&self.path, name(1))?;
        self.file = BufWriter::with_capacity(
            64 << 10,
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        self.size = 0;
        Ok(())
    }
}

/// Filters for [`read`].
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// E.164 with `+`.
    pub line: Option<String>,
    pub verdict: Option<String>,
    /// `inbound` or `outbound`.
    pub direction: Option<String>,
    /// `completed`, `failed`, `cancelled`, `expired`.
    pub outcome: Option<String>,
    /// Start after this call (`call_id`): the cursor of the page before.
    pub after: Option<String>,
    pub limit: usize,
}

impl Filter {
    /// Whether `r` passes the filters (the cursor and limit aside).
    pub fn matches(&self, r: &CallRecord) -> bool {
        self.since_ms.is_none_or(|s| r.start_ms >= s)
            && self.until_ms.is_none_or(|u| r.start_ms < u)
            && self
                .line
                .as_ref()
                .is_none_or(|l| r.line.as_ref() == Some(l))
            && self.verdict.as_ref().is_none_or(|v| &r.verdict == v)
            && self.direction.as_ref().is_none_or(|d| &r.direction == d)
            && self.outcome.as_ref().is_none_or(|o| &r.outcome == o)
    }
}

/// Every record matching `f` (its cursor and limit ignored), oldest file
/// first, each file in write order, handed to `visit` one at a time: for
/// counts and exports over the whole log without holding it in memory.
pub fn scan(
    dir: &Path,
    keep: usize,
    f: &Filter,
    mut visit: impl FnMut(&CallRecord),
) -> std::io::Result<()> {
    let base = log_path(dir);
    let files = (1..=keep)
        .rev()
        .map(|i| PathBuf::from(format!("{}.{i}", base.display())))
        .chain(std::iter::once(base.clone()));
    for path in files {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            if let Ok(r) = serde_json::from_str::<CallRecord>(&line)
                && f.matches(&r)
            {
                visit(&r);
            }
        }
    }
    Ok(())
}

/// Records of one page, newest first, and whether `Filter::after` was
/// found (a cursor for a call that left the log finds nothing).
pub struct Read {
    pub records: Vec<CallRecord>,
    pub cursor_found: bool,
}

/// Records matching `f`, newest first (current file, then `.1`, …),
/// after the cursor's call when `f.after` is given.
pub fn read(dir: &Path, keep: usize, f: &Filter) -> std::io::Result<Read> {
    let mut out = Vec::new();
    let mut cursor_found = f.after.is_none();
    let base = log_path(dir);
    let files = std::iter::once(base.clone())
        .chain((1..=keep).map(|i| PathBuf::from(format!("{}.{i}", base.display()))));
    for path in files {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut recs: Vec<CallRecord> = BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .filter(|r| f.matches(r))
            .collect();
        recs.reverse();
        if !cursor_found {
            match recs
                .iter()
                .position(|r| Some(&r.call_id) == f.after.as_ref())
            {
                Some(i) => {
                    cursor_found = true;
                    recs.drain(..=i);
                }
                None => continue,
            }
        }
        out.extend(recs);
        if out.len() >= f.limit {
            out.truncate(f.limit);
            break;
        }
    }
    Ok(Read {
        records: out,
        cursor_found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64, verdict: &str) -> CallRecord {
        CallRecord {
            call_id: format!("c{i}"),
            sip_call_id: format!("s{i}"),
            direction: "inbound".into(),
            line: Some("+4930901820".into()),
            client: "+4917000000001".into(),
            verdict: verdict.into(),
            create: "lead".into(),
            source: "CALL".into(),
            reason: (verdict == "exception").then(|| "prefix:+49170".into()),
            attest: "none".into(),
            responsible: None,
            start: String::new(),
            start_ms: i,
            answer: None,
            end: String::new(),
            status: 486,
            outcome: "failed".into(),
            duration: 0,
            transfers: vec![],
            crm: None,
        }
    }

    #[test]
    fn a_record_is_written_as_serde_writes_it() {
        for i in 0..8 {
            let mut r = rec(i, if i % 2 == 0 { "log" } else { "exception" });
            if i & 2 != 0 {
                r.line = None;
                r.responsible = Some("1\"01".into());
                r.answer = Some("2026-12-02T17:00:00.123Z".into());
                r.transfers = vec![
                    Transfer {
                        at: "a".into(),
                        to: "\\205".into(),
                    },
                    Transfer {
                        at: "b".into(),
                        to: "206".into(),
                    },
                ];
            }
            if i & 4 != 0 {
                r.source = "Wérbung\n".into();
                r.crm = Some(serde_json::json!({"portal": {"CRM_ENTITY_ID": 7}}));
                r.start_ms = -i;
            }
            let mut out = Vec::new();
            r.write_json(&mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&r).unwrap()
            );
        }
    }

    #[test]
    fn rotates_and_reads_newest_first_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CallLog::open(dir.path(), 4096, 2).unwrap();
        for i in 0..40 {
            log.append(&rec(i, if i % 2 == 0 { "log" } else { "exception" }).borrowed())
                .unwrap();
        }
        log.flush().unwrap();
        assert!(dir.path().join("calls.jsonl.1").exists());
        let all = read(
            dir.path(),
            2,
            &Filter {
                limit: 1000,
                ..Default::default()
            },
        )
        .unwrap()
        .records;
        assert_eq!(all[0].start_ms, 39);
        assert!(all.windows(2).all(|w| w[0].start_ms > w[1].start_ms));
        let ex = read(
            dir.path(),
            2,
            &Filter {
                verdict: Some("exception".into()),
                since_ms: Some(30),
                limit: 3,
                ..Default::default()
            },
        )
        .unwrap()
        .records;
        let ids: Vec<i64> = ex.iter().map(|r| r.start_ms).collect();
        assert_eq!(ids, [39, 37, 35]);
        // Pages after a cursor go on across the rotated file, and a cursor
        // of a call no longer in the log is reported.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = read(
                dir.path(),
                2,
                &Filter {
                    verdict: Some("log".into()),
                    after: after.clone(),
                    limit: 7,
                    ..Default::default()
                },
            )
            .unwrap();
            assert!(page.cursor_found);
            seen.extend(page.records.iter().map(|r| r.start_ms));
            match page.records.last() {
                Some(r) if page.records.len() == 7 => after = Some(r.call_id.clone()),
                _ => break,
            }
        }
        let want: Vec<i64> = all
            .iter()
            .filter(|r| r.verdict == "log")
            .map(|r| r.start_ms)
            .collect();
        assert_eq!(seen, want);
        let gone = read(
            dir.path(),
            2,
            &Filter {
                after: Some("no-such-call".into()),
                limit: 7,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!gone.cursor_found && gone.records.is_empty());
        // scan visits every match across the files, oldest first.
        let mut scanned = Vec::new();
        scan(
            dir.path(),
            2,
            &Filter {
                verdict: Some("exception".into()),
                ..Default::default()
            },
            |r| scanned.push(r.start_ms),
        )
        .unwrap();
        let mut want: Vec<i64> = all
            .iter()
            .filter(|r| r.verdict == "exception")
            .map(|r| r.start_ms)
            .collect();
        want.reverse();
        assert_eq!(scanned, want);
    }

    #[test]
    fn filters_by_direction_and_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CallLog::open(dir.path(), 1 << 20, 2).unwrap();
        for i in 0..6 {
            let mut r = rec(i, "log");
            if i % 2 == 1 {
                r.direction = "outbound".into();
            }
            if i % 3 == 0 {
                r.outcome = "completed".into();
            }
            log.append(&r.borrowed()).unwrap();
        }
        log.flush().unwrap();
        let got = |f: Filter| -> Vec<i64> {
            read(dir.path(), 2, &Filter { limit: 100, ..f })
                .unwrap()
                .records
                .iter()
                .map(|r| r.start_ms)
                .collect()
        };
        let out = got(Filter {
            direction: Some("outbound".into()),
            ..Default::default()
        });
        assert_eq!(out, [5, 3, 1]);
        let done_in = got(Filter {
            direction: Some("inbound".into()),
            outcome: Some("completed".into()),
            ..Default::default()
        });
        assert_eq!(done_in, [0]);
    }
}
