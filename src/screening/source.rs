//! Where exception entries come from, behind a small interface: for now the
//! exceptions file named in the config (`VALUE; comment` per line); the
//! durable store and the admin API plug in as further [`ExceptionSource`]s.
//!
//! The file is streamed line by line with one reused buffer, so a 10M-line
//! file costs the result vectors (8 bytes per phone) and nothing more. Every
//! refused line is reported with its 1-based number, its text (cut to 200
//! characters) and the reason; the good lines are still loaded.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use crate::screening::normalize::{Normalizer, e164_string};

/// Phone or e-mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Phone,
    Email,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Phone => "phone",
            Kind::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "phone" => Some(Kind::Phone),
            "email" | "e-mail" => Some(Kind::Email),
            _ => None,
        }
    }
}

/// Longest line text kept in a [`Rejected`] report.
const MAX_REPORTED_TEXT: usize = 200;

/// A provider of the whole exception list.
pub trait ExceptionSource {
    /// Reads every entry; phones normalised with `normalizer` (national
    /// forms with its default region).
    fn load(&self, normalizer: &Normalizer) -> Result<LoadReport, SourceError>;
}

/// What a load found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// E.164 numbers (may repeat).
    pub phones: Vec<u64>,
    /// Lowercased e-mails (may repeat).
    pub emails: Vec<String>,
    /// Lines refused, in file order.
    pub rejected: Vec<Rejected>,
}

/// One refused line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// 1-based line number.
    pub line: usize,
    /// The line as written (possibly cut).
    pub text: String,
    /// Why it was refused.
    pub reason: String,
}

impl Rejected {
    /// Line `line` with its text (lossy UTF-8, cut to 200 characters).
    pub fn new(line: usize, text: &[u8], reason: &str) -> Rejected {
        let mut shown = String::from_utf8_lossy(text).into_owned();
        if let Some((cut, _)) = shown.char_indices().nth(MAX_REPORTED_TEXT) {
            shown.truncate(cut);
        }
        Rejected {
            line,
            text: shown,
            reason: reason.to_string(),
        }
    }
}

/// A line read with `read_until(b'\n')`, without its `\n` or `\r\n`.
pub fn without_line_end(buf: &[u8]) -> &[u8] {
    let text = buf.strip_suffix(b"\n").unwrap_or(buf);
    text.strip_suffix(b"\r").unwrap_or(text)
}

/// The source could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: cannot open exceptions file: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: cannot read exceptions file: {source}", path.display())]
    Read {
        path: PathBuf,
        line: usize,
        #[source]
        source: std::io::Error,
    },
}

/// The exceptions file.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// Path as configured.
    path: PathBuf,
}

impl FileSource {
    pub fn new(path: PathBuf) -> Self {
        FileSource { path }
    }
}

impl ExceptionSource for FileSource {
    fn load(&self, normalizer: &Normalizer) -> Result<LoadReport, SourceError> {
        let file = File::open(&self.path).map_err(|source| SourceError::Open {
            path: self.path.clone(),
            source,
        })?;
        load_from(BufReader::with_capacity(1 << 16, file), normalizer).map_err(|(line, source)| {
            SourceError::Read {
                path: self.path.clone(),
                line,
                source,
            }
        })
    }
}

/// Parses `VALUE; comment` lines from any reader (also used for API
/// imports). An I/O error comes back with the line it happened on.
pub fn load_from(
    mut r: impl BufRead,
    normalizer: &Normalizer,
) -> Result<LoadReport, (usize, std::io::Error)> {
    let mut report = LoadReport::default();
    let mut buf = Vec::with_capacity(256);
    let mut line = 0;
    loop {
        buf.clear();
        line += 1;
        if r.read_until(b'\n', &mut buf).map_err(|e| (line, e))? == 0 {
            break;
        }
        let text = without_line_end(&buf);
        if let Err(reason) = parse_line(text, normalizer, &mut report) {
            report.rejected.push(Rejected::new(line, text, reason));
        }
    }
    Ok(report)
}

fn parse_line(
    text: &[u8],
    normalizer: &Normalizer,
    report: &mut LoadReport,
) -> Result<(), &'static str> {
    match parse_entry(text, normalizer)? {
        Some(ParsedEntry {
            value: Value::Phone(n),
            ..
        }) => report.phones.push(n),
        Some(ParsedEntry {
            value: Value::Email(e),
            ..
        }) => report.emails.push(e),
        None => {}
    }
    Ok(())
}

/// A normalised exception value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// E.164 digits.
    Phone(u64),
    /// Lowercased address.
    Email(String),
}

impl Value {
    pub fn kind(&self) -> Kind {
        match self {
            Value::Phone(_) => Kind::Phone,
            Value::Email(_) => Kind::Email,
        }
    }

    /// How the store keeps it: `+4930901820`, `boss@example.com`.
    pub fn canonical(&self) -> String {
        match self {
            Value::Phone(n) => e164_string(*n),
            Value::Email(e) => e.clone(),
        }
    }

    /// Reads one value as given (a phone in any form the normaliser takes,
    /// or an e-mail).
    pub fn parse(value: &str, normalizer: &Normalizer) -> Result<Value, &'static str> {
        let value = value.trim();
        if value.is_empty() {
            return Err("empty value");
        }
        if value.contains('@') {
            return check_email(value).map(Value::Email);
        }
        normalizer
            .normalize(value.as_bytes(), None)
            .map(Value::Phone)
            .ok_or("not a phone number (international +…/00…, or national for the default region) nor an e-mail")
    }
}

/// One `VALUE; comment` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEntry {
    pub value: Value,
    /// The value as written.
    pub given: String,
    /// Text after the first `;`, trimmed (may be empty).
    pub comment: String,
}

/// Parses one line: `Ok(None)` for blank and `#` lines.
pub fn parse_entry(
    text: &[u8],
    normalizer: &Normalizer,
) -> Result<Option<ParsedEntry>, &'static str> {
    let (value, comment) = match memchr::memchr(b';', text) {
        Some(p) => (&text[..p], &text[p + 1..]),
        None => (text, &b""[..]),
    };
    let value = value.trim_ascii();
    if value.is_empty() {
        if text.trim_ascii().is_empty() {
            return Ok(None);
        }
        return Err("no value before the ';'");
    }
    if value[0] == b'#' {
        return Ok(None);
    }
    let value = std::str::from_utf8(value).map_err(|_| "not valid UTF-8")?;
    let comment =
        std::str::from_utf8(comment.trim_ascii()).map_err(|_| "comment is not valid UTF-8")?;
    Ok(Some(ParsedEntry {
        value: Value::parse(value, normalizer)?,
        given: value.to_string(),
        comment: comment.to_string(),
    }))
}

/// A basic syntax check; returns the lowercased address.
pub fn check_email(value: &str) -> Result<String, &'static str> {
    // The limits hold for what is kept: lowercasing can lengthen ('İ').
    let value = value.to_lowercase();
    let (local, domain) = value.split_once('@').ok_or("e-mail without '@'")?;
    if value.len() > 254 || local.is_empty() || local.len() > 64 {
        return Err("e-mail local part is empty or too long");
    }
    if domain.contains('@') {
        return Err("e-mail with more than one '@'");
    }
    if value.chars().any(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | '"' | '(' | ')')
    }) {
        return Err("e-mail contains spaces or characters not allowed in an address");
    }
    let labels_ok = domain
        .split('.')
        .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
    if !domain.contains('.') || !labels_ok {
        return Err("e-mail domain is not a domain name (like example.com)");
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country::Id;
    use std::io::Write;

    fn load(text: &str) -> LoadReport {
        load_from(text.as_bytes(), &Normalizer::new(Id::DE, &[])).unwrap()
    }

    #[test]
    fn reads_phones_emails_and_skips_comments() {
        let r = load(
            "# seed list\n\n+49 30 901820; head office\r\n0049151-12345678\n030 901821 ;national\nBoss@Example.COM; the boss\n   \n  # indented comment\n",
        );
        assert_eq!(r.phones, [4930901820, 4915112345678, 4930901821]);
        assert_eq!(r.emails, ["boss@example.com"]);
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let r =
            load("+4930901820\nhello; friend\n; only a comment\na@b\nx@@y.com\n+12\n+4930901821\n");
        assert_eq!(r.phones, [4930901820, 4930901821]);
        let lines: Vec<usize> = r.rejected.iter().map(|x| x.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6]);
        assert_eq!(r.rejected[0].text, "hello; friend");
        assert!(r.rejected[0].reason.contains("not a phone number"));
        assert!(r.rejected[2].reason.contains("domain"));
    }

    #[test]
    fn non_utf8_lines_are_rejected_not_fatal() {
        let n = Normalizer::new(Id::DE, &[]);
        let r = load_from(&b"\xff\xfe@x.com\n+4930901820"[..], &n).unwrap();
        assert_eq!(r.phones, [4930901820]);
        assert_eq!(r.rejected[0].reason, "not valid UTF-8");
    }

    #[test]
    fn file_source_names_a_missing_path() {
        let n = Normalizer::new(Id::DE, &[]);
        let err = FileSource::new("/nonexistent/exceptions.txt".into())
            .load(&n)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/exceptions.txt: cannot open"),
            "{err}"
        );
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "+4930901820; x").unwrap();
        let r = FileSource::new(f.path().to_path_buf()).load(&n).unwrap();
        assert_eq!(r.phones, [4930901820]);
    }
}
