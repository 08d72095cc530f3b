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
    /// Other good entries: prefixes, ranges, allow entries, domains.
    pub other: usize,
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
    /// `[screening] max_range_numbers`.
    max_range: u64,
}

impl FileSource {
    pub fn new(path: PathBuf) -> Self {
        FileSource {
            path,
            max_range: DEFAULT_MAX_RANGE_NUMBERS,
        }
    }

    /// Refuses ranges over `max` numbers not marked large.
    pub fn with_max_range(mut self, max: u64) -> Self {
        self.max_range = max;
        self
    }
}

impl ExceptionSource for FileSource {
    fn load(&self, normalizer: &Normalizer) -> Result<LoadReport, SourceError> {
        let file = File::open(&self.path).map_err(|source| SourceError::Open {
            path: self.path.clone(),
            source,
        })?;
        load_from(
            BufReader::with_capacity(1 << 16, file),
            normalizer,
            self.max_range,
        )
        .map_err(|(line, source)| SourceError::Read {
            path: self.path.clone(),
            line,
            source,
        })
    }
}

/// Parses `VALUE; comment` lines from any reader (also used for API
/// imports). An I/O error comes back with the line it happened on.
pub fn load_from(
    mut r: impl BufRead,
    normalizer: &Normalizer,
    max_range: u64,
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
        if let Err(reason) = parse_line(text, normalizer, max_range, &mut report) {
            report.rejected.push(Rejected::new(line, text, &reason));
        }
    }
    Ok(report)
}

fn parse_line(
    text: &[u8],
    normalizer: &Normalizer,
    max_range: u64,
    report: &mut LoadReport,
) -> Result<(), String> {
    match parse_entry(text, normalizer, max_range)? {
        Some(ParsedEntry {
            value: Value::Phone(n),
            allow: false,
            ..
        }) => report.phones.push(n),
        Some(ParsedEntry {
            value: Value::Email(e),
            allow: false,
            ..
        }) => report.emails.push(e),
        Some(_) => report.other += 1,
        None => {}
    }
    Ok(())
}

/// A normalised exception value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// E.164 digits.
    Phone(u64),
    /// Every number starting with these digits (`+4930901*`): (digits,
    /// digit count).
    Prefix(u64, u32),
    /// The numbers `lo..=hi` (same digit count), stored as the minimal
    /// set of prefixes.
    Range(u64, u64),
    /// Lowercased address, `@domain` or `@*.domain`.
    Email(String),
}

pub use crate::config::DEFAULT_MAX_RANGE_NUMBERS;

/// One stored entry a value becomes: (kind, canonical value).
pub type Stored = (Kind, String);

impl Value {
    pub fn kind(&self) -> Kind {
        match self {
            Value::Phone(_) | Value::Prefix(..) | Value::Range(..) => Kind::Phone,
            Value::Email(_) => Kind::Email,
        }
    }

    /// How the store keeps it: `+4930901820`, `+4930901*`,
    /// `boss@example.com`, `@example.com`; a range is its first prefix
    /// (see [`stored`](Self::stored) for all).
    pub fn canonical(&self) -> String {
        self.stored().swap_remove(0).1
    }

    /// Every stored entry of this value: one, or a range's minimal prefix
    /// cover (a prefix of the numbers' full length is the exact number).
    pub fn stored(&self) -> Vec<Stored> {
        match self {
            Value::Phone(n) => vec![(Kind::Phone, e164_string(*n))],
            Value::Prefix(d, _) => vec![(Kind::Phone, format!("+{d}*"))],
            Value::Range(lo, hi) => {
                let len = crate::screening::prefixes::digit_count(*lo);
                crate::screening::prefixes::range_cover(*lo, *hi)
                    .into_iter()
                    .map(|(d, l)| {
                        let v = if l == len {
                            e164_string(d)
                        } else {
                            format!("+{d}*")
                        };
                        (Kind::Phone, v)
                    })
                    .collect()
            }
            Value::Email(e) => vec![(Kind::Email, e.clone())],
        }
    }

    /// How many numbers a range covers (1 for anything else).
    pub fn numbers(&self) -> u64 {
        match self {
            Value::Range(lo, hi) => hi - lo + 1,
            _ => 1,
        }
    }

    /// Refuses a range over `max` numbers unless `large` says it is meant.
    pub fn check_size(&self, max: u64, large: bool) -> Result<(), String> {
        if self.numbers() > max && !large {
            return Err(format!(
                "the range covers {} numbers, more than [screening] max_range_numbers = {max}: \
                 mark it large if that is meant",
                self.numbers()
            ));
        }
        Ok(())
    }

    /// Reads one value as given: a phone in any form the normaliser
    /// takes, a prefix (`+4930901*`, `030901*`), a range (`A..B`), an
    /// e-mail, `@domain` or `@*.domain`.
    pub fn parse(value: &str, normalizer: &Normalizer) -> Result<Value, &'static str> {
        let value = value.trim();
        if value.is_empty() {
            return Err("empty value");
        }
        if value.contains('@') {
            return check_email_entry(value).map(Value::Email);
        }
        if let Some((a, b)) = value.split_once("..") {
            let lo = number(a, normalizer)?;
            let hi = number(b, normalizer)?;
            let digits = crate::screening::prefixes::digit_count;
            if digits(lo) != digits(hi) {
                return Err("the two ends of a range must have the same number of digits");
            }
            if lo > hi {
                return Err("a range goes from the lower number to the higher");
            }
            return Ok(Value::Range(lo, hi));
        }
        if let Some(p) = value.strip_suffix('*') {
            return prefix(p, normalizer);
        }
        number(value, normalizer).map(Value::Phone)
    }
}

fn number(value: &str, normalizer: &Normalizer) -> Result<u64, &'static str> {
    normalizer
        .normalize(value.trim().as_bytes(), None)
        .ok_or("not a phone number (international +…/00…, or national for the default region) nor an e-mail")
}

/// A prefix in any number form: `+4930901`, `004930901`, national `030901`
/// (the default region's country code replaces the trunk prefix).
fn prefix(p: &str, normalizer: &Normalizer) -> Result<Value, &'static str> {
    const WHY: &str =
        "a prefix is digits before the '*' (+4930901*, 004930901*, or national 030901*)";
    let digits: String = p
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '/'))
        .collect();
    let (intl, rest) = if let Some(r) = digits.strip_prefix('+') {
        (true, r)
    } else if let Some(r) = digits.strip_prefix("00") {
        (true, r)
    } else {
        (false, digits.as_str())
    };
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WHY);
    }
    let e164 = if intl {
        rest.to_string()
    } else {
        // National: the region's country code for the trunk prefix (`0`).
        let national = rest.strip_prefix('0').ok_or(WHY)?;
        let cc = phonenumber::metadata::DATABASE
            .by_id(normalizer.default_region().as_ref())
            .map(|m| m.country_code())
            .ok_or(WHY)?;
        format!("{cc}{national}")
    };
    if e164.starts_with('0') || e164.len() > crate::screening::prefixes::MAX_DIGITS as usize {
        return Err("a prefix has 1 to 15 digits after the country code's +, the first not 0");
    }
    let d: u64 = e164.parse().map_err(|_| WHY)?;
    Ok(Value::Prefix(d, e164.len() as u32))
}

/// One `VALUE; comment` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEntry {
    pub value: Value,
    /// The value as written.
    pub given: String,
    /// Text after the first `;`, trimmed (may be empty).
    pub comment: String,
    /// A leading `!`: an allow entry.
    pub allow: bool,
}

/// Parses one line: `Ok(None)` for blank and `#` lines. `!VALUE` is an
/// allow entry; a range over `max_range` numbers must end in ` large`.
pub fn parse_entry(
    text: &[u8],
    normalizer: &Normalizer,
    max_range: u64,
) -> Result<Option<ParsedEntry>, String> {
    let (value, comment) = match memchr::memchr(b';', text) {
        Some(p) => (&text[..p], &text[p + 1..]),
        None => (text, &b""[..]),
    };
    let value = value.trim_ascii();
    if value.is_empty() {
        if text.trim_ascii().is_empty() {
            return Ok(None);
        }
        return Err("no value before the ';'".into());
    }
    if value[0] == b'#' {
        return Ok(None);
    }
    let value = std::str::from_utf8(value).map_err(|_| "not valid UTF-8")?;
    let comment =
        std::str::from_utf8(comment.trim_ascii()).map_err(|_| "comment is not valid UTF-8")?;
    let (allow, bare) = match value.strip_prefix('!') {
        Some(v) => (true, v.trim_start()),
        None => (false, value),
    };
    let (large, bare) = match bare.len().checked_sub(6) {
        Some(at) if bare.is_char_boundary(at) && bare[at..].eq_ignore_ascii_case(" large") => {
            (true, bare[..at].trim_end())
        }
        _ => (false, bare),
    };
    let parsed = Value::parse(bare, normalizer)?;
    parsed.check_size(max_range, large)?;
    Ok(Some(ParsedEntry {
        value: parsed,
        given: value.to_string(),
        comment: comment.to_string(),
        allow,
    }))
}

/// An e-mail entry: an address, `@domain` (that domain) or `@*.domain`
/// (its subdomains); returns it lowercased.
pub fn check_email_entry(value: &str) -> Result<String, &'static str> {
    let Some(domain) = value.strip_prefix('@') else {
        return check_email(value);
    };
    let lower = domain.to_lowercase();
    let bare = lower.strip_prefix("*.").unwrap_or(&lower);
    // The same rules as an address's domain, checked on a stand-in.
    check_email(&format!("x@{bare}"))
        .map_err(|_| "a domain entry is @domain.example or @*.domain.example")?;
    if bare.contains('*') {
        return Err("a domain entry is @domain.example or @*.domain.example");
    }
    Ok(format!("@{lower}"))
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
        load_from(text.as_bytes(), &Normalizer::new(Id::DE, &[]), 1000).unwrap()
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
        let r = load_from(&b"\xff\xfe@x.com\n+4930901820"[..], &n, 1000).unwrap();
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

    #[test]
    fn prefixes_ranges_allows_and_domains_parse() {
        let n = Normalizer::new(Id::DE, &[]);
        let e = |t: &str| parse_entry(t.as_bytes(), &n, 100_000);
        let v = |t: &str| e(t).unwrap().unwrap();
        assert_eq!(v("+49 30 901*; area").value, Value::Prefix(4930901, 7));
        assert_eq!(v("004930901*").value, Value::Prefix(4930901, 7));
        assert_eq!(
            v("030 901*").value,
            Value::Prefix(4930901, 7),
            "national with the region"
        );
        let a = v("! +49309018*; our office");
        assert!(a.allow);
        assert_eq!(
            (a.value, a.comment.as_str()),
            (Value::Prefix(49309018, 8), "our office")
        );
        let r = v("+493090180000..+493090189999");
        assert_eq!(r.value.stored(), [(Kind::Phone, "+49309018*".to_string())]);
        assert_eq!(
            v("030 90180000..030 90189999").value,
            Value::Range(493090180000, 493090189999)
        );
        assert_eq!(
            v("@NewsLetter.Example").value,
            Value::Email("@newsletter.example".into())
        );
        assert_eq!(
            v("!@*.Example.com").value,
            Value::Email("@*.example.com".into())
        );
        assert!(v("!@*.Example.com").allow);
        // A one-number range is the exact number; a ragged one several.
        assert_eq!(
            v("+4930901820..+4930901820").value.stored(),
            [(Kind::Phone, "+4930901820".to_string())]
        );
        let ragged = v("+4930901815..+4930901834").value.stored();
        let values: Vec<&str> = ragged.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            values,
            [
                "+4930901815",
                "+4930901816",
                "+4930901817",
                "+4930901818",
                "+4930901819",
                "+493090182*",
                "+4930901830",
                "+4930901831",
                "+4930901832",
                "+4930901833",
                "+4930901834"
            ]
        );
    }

    #[test]
    fn bad_patterns_and_large_ranges_are_refused_with_reasons() {
        let n = Normalizer::new(Id::DE, &[]);
        let e = |t: &str| parse_entry(t.as_bytes(), &n, 100_000).unwrap_err();
        assert!(
            e("+49x*").contains("digits before the '*'"),
            "{}",
            e("+49x*")
        );
        assert!(e("*").contains("digits before"));
        assert!(e("+4930901820..+493090182").contains("same number of digits"));
        assert!(e("+4930901829..+4930901820").contains("lower number"));
        assert!(e("@*.").contains("domain entry"));
        assert!(e("@a*b.example").contains("domain entry"));
        assert!(e("@nodot").contains("domain entry"));
        let big = "+493000000000..+493999999999";
        assert!(
            e(big).contains("covers 1000000000 numbers") && e(big).contains("large"),
            "{}",
            e(big)
        );
        let ok = parse_entry(format!("{big} LARGE; all Berlin").as_bytes(), &n, 100_000)
            .unwrap()
            .unwrap();
        assert_eq!(ok.value.stored().len(), 1, "one prefix: +493*");
        assert_eq!(ok.value.stored()[0].1, "+493*");
    }
}
