//! The screening decision for one call and the `X-CRM-*` tags that carry it
//! to the PBX (the contract in DESIGN.md).
//!
//! A [`Screener`] is built once per config from the line table, the
//! normaliser and the shared exception set; [`Screener::screen`] is the hot
//! path: normalise two user parts (fast path: no allocation), one hash
//! probe for the line, one lock-free probe of the exception set.

use std::str::FromStr;
use std::sync::Arc;

use crate::config::{
    ConfigError, CreateFor, CreateMode, CrmMode, Diagnostic, Loaded, OnVerstatFailed, Verdict,
};
use crate::screening::exceptions::{EmailMatch, ExceptionSet, PhoneMatch, Rule};
use crate::screening::lines::{LineSettings, LineTable};
use crate::screening::normalize::{Normalizer, write_e164};
use crate::screening::verstat::Attest;

/// Which way the call goes, seen from the PBX's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a trunk to the PBX.
    Inbound,
    /// From the PBX to a trunk.
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The other party of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// E.164 digits (`+4930901820` -> `4930901820`).
    Number(u64),
    /// Withheld, absent, or not a number.
    Anonymous,
}

impl Client {
    /// Appends the client as `X-CRM-Client` and the CRM events write it:
    /// E.164 (`+4930901820`), or `anonymous`.
    pub fn write(self, out: &mut Vec<u8>) {
        match self {
            Client::Number(n) => write_e164(n, out),
            Client::Anonymous => out.extend_from_slice(b"anonymous"),
        }
    }
}

/// What the CRM should create for this call (`X-CRM-Create`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateTag {
    Lead,
    Deal,
    Offer,
    None,
}

impl CreateTag {
    pub fn as_str(self) -> &'static str {
        match self {
            CreateTag::Lead => "lead",
            CreateTag::Deal => "deal",
            CreateTag::Offer => "offer",
            CreateTag::None => "none",
        }
    }
}

/// Everything one config says about screening, plus the shared exceptions.
pub struct Screener {
    /// Numbers to E.164 (its cache lives as long as the config).
    normalizer: Normalizer,
    /// Per-line settings.
    lines: LineTable,
    /// The exception list, shared across reloads.
    exceptions: Arc<ExceptionSet>,
    /// Verdict for anonymous clients.
    anonymous: Verdict,
    /// `[screening] max_range_numbers`.
    max_range_numbers: u64,
}

/// Why a call got its verdict (`X-CRM-Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// An exact block entry.
    Listed,
    /// A blocking prefix (the longest rule covering the client).
    Prefix(Rule),
    /// An allow entry (prefix or exact) overriding shorter blocks.
    Allow(Rule),
    /// A failed STIR/SHAKEN verification (`on_verstat_failed`).
    Verstat,
    /// A withheld caller (`[screening] anonymous`).
    Anonymous,
}

impl Reason {
    /// `listed`, `prefix:+4930901`, `allow:+49309018`, `verstat`,
    /// `anonymous` (no allocation).
    pub fn write(self, out: &mut Vec<u8>) {
        match self {
            Reason::Listed => out.extend_from_slice(b"listed"),
            Reason::Prefix(r) => {
                out.extend_from_slice(b"prefix:");
                r.write_digits(out);
            }
            Reason::Allow(r) => {
                out.extend_from_slice(b"allow:");
                r.write_digits(out);
            }
            Reason::Verstat => out.extend_from_slice(b"verstat"),
            Reason::Anonymous => out.extend_from_slice(b"anonymous"),
        }
    }
}

impl Reason {
    /// Reads the written form back (an allow is read as a prefix: both
    /// are written alike).
    pub fn parse(s: &str) -> Option<Reason> {
        let rule = |d: &str, allow: bool| {
            let digits = d.strip_prefix('+')?;
            let n: u64 = digits.parse().ok()?;
            Rule::prefix(n, digits.len() as u32, allow)
        };
        match s {
            "listed" => Some(Reason::Listed),
            "verstat" => Some(Reason::Verstat),
            "anonymous" => Some(Reason::Anonymous),
            _ => match s.split_once(':')? {
                ("prefix", d) => rule(d, false).map(Reason::Prefix),
                ("allow", d) => rule(d, true).map(Reason::Allow),
                _ => None,
            },
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = Vec::with_capacity(24);
        self.write(&mut v);
        f.write_str(&String::from_utf8_lossy(&v))
    }
}

/// The outcome of screening one call.
#[derive(Debug, Clone, Copy)]
pub struct Screening<'a> {
    pub direction: Direction,
    pub verdict: Verdict,
    pub client: Client,
    /// The line's E.164 number, when the line user is one.
    pub line: Option<u64>,
    /// The line's settings (the defaults for unknown lines).
    pub settings: &'a LineSettings,
    /// Why the verdict (none for a `log` call no entry decided).
    pub reason: Option<Reason>,
    /// The trusted trunk's STIR/SHAKEN result (inbound calls).
    pub attest: Attest,
    /// `on_verstat_failed = "reject"` applies: answer 608, do not forward.
    pub reject: bool,
}

/// Client user parts that mean "withheld" (compared case-insensitively).
const ANONYMOUS: [&[u8]; 5] = [
    b"anonymous",
    b"unknown",
    b"restricted",
    b"private",
    b"withheld",
];

impl Screener {
    /// Built from a validated config; the exception set is shared across
    /// reloads. Line problems come back located in the config file.
    pub fn build(loaded: &Loaded, exceptions: Arc<ExceptionSet>) -> Result<Screener, ConfigError> {
        let cfg = &loaded.config;
        let region = cfg.screening.default_region.get_ref();
        let Ok(region) = phonenumber::country::Id::from_str(&region.to_ascii_uppercase()) else {
            let span = cfg.screening.default_region.span();
            return Err(loaded.error(vec![Diagnostic::new(
                span,
                format!("{region:?} is not an ISO 3166 region code"),
            )]));
        };
        let normalizer = Normalizer::new(region, &cfg.screening.bare_country_codes);
        let lines =
            LineTable::build(cfg, &loaded.text, &normalizer).map_err(|d| loaded.error(d))?;
        Ok(Screener {
            normalizer,
            lines,
            exceptions,
            anonymous: cfg.screening.anonymous,
            max_range_numbers: cfg.screening.max_range_numbers,
        })
    }

    /// Hot path: no allocation for the common cases, never blocks. A call
    /// with no verification result.
    pub fn screen(
        &self,
        direction: Direction,
        line_user: &[u8],
        client_user: Option<&[u8]>,
    ) -> Screening<'_> {
        self.screen_verified(direction, line_user, client_user, Attest::None)
    }

    /// [`screen`](Self::screen) with the trusted trunk's STIR/SHAKEN
    /// result: the exact entry, else the longest rule decides; then a
    /// failed verification on an inbound call does what the line's
    /// `on_verstat_failed` says.
    pub fn screen_verified(
        &self,
        direction: Direction,
        line_user: &[u8],
        client_user: Option<&[u8]>,
        attest: Attest,
    ) -> Screening<'_> {
        let line = self.normalizer.normalize(line_user, None);
        let settings = self.lines.get(line);
        let client = client_user
            .filter(|u| !ANONYMOUS.iter().any(|a| u.eq_ignore_ascii_case(a)))
            .and_then(|u| self.normalizer.normalize(u, Some(settings.region)))
            .map_or(Client::Anonymous, Client::Number);
        let (mut verdict, mut reason) = match client {
            Client::Number(n) => match self.exceptions.match_phone(n) {
                Some(PhoneMatch::Listed) => (Verdict::Exception, Some(Reason::Listed)),
                Some(PhoneMatch::Rule(r)) if r.allow() => (Verdict::Log, Some(Reason::Allow(r))),
                Some(PhoneMatch::Rule(r)) => (Verdict::Exception, Some(Reason::Prefix(r))),
                None => (Verdict::Log, None),
            },
            Client::Anonymous => (self.anonymous, Some(Reason::Anonymous)),
        };
        let attest = if direction == Direction::Inbound {
            attest
        } else {
            Attest::None
        };
        let mut reject = false;
        if attest == Attest::Failed {
            match settings.on_verstat_failed {
                OnVerstatFailed::Ignore => {}
                OnVerstatFailed::Exception if verdict == Verdict::Exception => {}
                OnVerstatFailed::Exception => {
                    verdict = Verdict::Exception;
                    reason = Some(Reason::Verstat);
                }
                OnVerstatFailed::Reject => {
                    reject = true;
                    verdict = Verdict::Exception;
                    reason = Some(Reason::Verstat);
                }
            }
        }
        Screening {
            direction,
            verdict,
            client,
            line,
            settings,
            reason,
            attest,
            reject,
        }
    }

    /// A new e-mail from `from`: `exception` if the address, its domain or
    /// a parent's `@*.` entry blocks it (the first of them found decides;
    /// an allow entry lets it through). A reply to an earlier message
    /// always goes to the CRM (`log`), listed or not.
    pub fn screen_email(&self, from: &str, reply: bool) -> Verdict {
        self.screen_email_why(from, reply).0
    }

    /// [`screen_email`](Self::screen_email) and the entry that decided.
    pub fn screen_email_why(&self, from: &str, reply: bool) -> (Verdict, Option<EmailMatch>) {
        if reply {
            return (Verdict::Log, None);
        }
        match self.exceptions.match_email(from) {
            Some(m) if !m.allow => (Verdict::Exception, Some(m)),
            other => (Verdict::Log, other),
        }
    }

    pub fn exceptions(&self) -> &Arc<ExceptionSet> {
        &self.exceptions
    }

    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    /// A range entry covering more numbers needs the "large" mark.
    pub fn max_range_numbers(&self) -> u64 {
        self.max_range_numbers
    }

    pub fn lines(&self) -> &LineTable {
        &self.lines
    }

    /// The line's (or the defaults') trunk name, if set.
    pub fn line_trunk(&self, line: Option<u64>) -> Option<&str> {
        self.lines.get(line).trunk.as_deref()
    }
}

impl Screening<'_> {
    /// What the CRM creates: only for `log` calls in a direction the line
    /// creates records for.
    pub fn create(&self) -> CreateTag {
        let s = self.settings;
        let wanted = match s.create_for {
            CreateFor::All => true,
            CreateFor::Incoming => self.direction == Direction::Inbound,
            CreateFor::Outgoing => self.direction == Direction::Outbound,
        };
        if self.verdict != Verdict::Log || !wanted {
            return CreateTag::None;
        }
        match (s.create, s.crm_mode) {
            (CreateMode::Auto, CrmMode::Classic) => CreateTag::Lead,
            (CreateMode::Auto, CrmMode::Simple) => CreateTag::Deal,
            (CreateMode::Offer, _) => CreateTag::Offer,
            (CreateMode::Off, _) => CreateTag::None,
        }
    }

    /// The default responsible person: the first member of the line's queue.
    pub fn responsible(&self) -> Option<&str> {
        self.settings.queue.first().map(String::as_str)
    }

    /// Appends the `X-CRM-*` header lines, in DESIGN.md's table order, with
    /// `responsible` (the caller decides it: `runtime::Decision` knows the
    /// directory) and `X-CRM-Call-Id` when there is a call. Control
    /// characters in `call_id` and `responsible` are dropped (config
    /// strings were checked when the line table was built).
    pub fn write_tags(&self, call_id: Option<&str>, responsible: Option<&str>, out: &mut Vec<u8>) {
        // Room for all of it reserved once: the fixed text and numbers
        // (`TAGS_FIXED`) and the strings of unbounded length.
        let strings = self.settings.source.len()
            + responsible.map_or(0, str::len)
            + call_id.map_or(0, str::len);
        out.reserve(TAGS_FIXED + strings);
        // The first two lines and the third's name are one of four
        // constants.
        macro_rules! lines {
            ($v:literal, $d:literal) => {
                concat!(
                    "X-CRM-Verdict: ",
                    $v,
                    "\r\nX-CRM-Direction: ",
                    $d,
                    "\r\nX-CRM-Client: "
                )
                .as_bytes()
            };
        }
        out.extend_from_slice(match (self.verdict, self.direction) {
            (Verdict::Log, Direction::Inbound) => lines!("log", "inbound"),
            (Verdict::Log, Direction::Outbound) => lines!("log", "outbound"),
            (Verdict::Exception, Direction::Inbound) => lines!("exception", "inbound"),
            (Verdict::Exception, Direction::Outbound) => lines!("exception", "outbound"),
        });
        // Every constant between two values is one copy.
        self.client.write(out);
        if let Some(n) = self.line {
            out.extend_from_slice(b"\r\nX-CRM-Line: ");
            write_e164(n, out);
        }
        out.extend_from_slice(b"\r\n");
        if self.verdict == Verdict::Log {
            out.extend_from_slice(match self.create() {
                CreateTag::Lead => b"X-CRM-Create: lead\r\n",
                CreateTag::Deal => b"X-CRM-Create: deal\r\n",
                CreateTag::Offer => b"X-CRM-Create: offer\r\n",
                CreateTag::None => b"X-CRM-Create: none\r\n",
            });
            if !self.settings.source.is_empty() {
                header(out, b"X-CRM-Source: ", self.settings.source.as_bytes());
            }
        }
        if let Some(r) = responsible {
            // Directory values come from the API: no control characters
            // may reach the wire.
            out.extend_from_slice(b"X-CRM-Responsible: ");
            push_clean(out, r.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(id) = call_id {
            out.extend_from_slice(b"X-CRM-Call-Id: ");
            push_clean(out, id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(r) = self.reason {
            out.extend_from_slice(b"X-CRM-Reason: ");
            r.write(out);
            out.extend_from_slice(b"\r\n");
        }
        if self.direction == Direction::Inbound {
            out.extend_from_slice(match self.attest {
                Attest::A => b"X-CRM-Attest: A\r\n",
                Attest::B => b"X-CRM-Attest: B\r\n",
                Attest::C => b"X-CRM-Attest: C\r\n",
                Attest::Failed => b"X-CRM-Attest: failed\r\n",
                Attest::None => b"X-CRM-Attest: none\r\n",
            });
        }
    }
}

/// Upper bound of the tags' bytes besides `source`, `responsible` and
/// the call id: every header name and fixed value, two E.164 numbers (at
/// most 20 digits each) and the longest reason.
const TAGS_FIXED: usize = 320;

/// Appends `s` without its control characters (one copy when it has
/// none, as nearly every value).
fn push_clean(out: &mut Vec<u8>, s: &[u8]) {
    // Or-ed over all bytes (no early exit): the compiler checks many
    // bytes per instruction.
    if s.iter().fold(false, |c, b| c | b.is_ascii_control()) {
        out.extend(s.iter().filter(|b| !b.is_ascii_control()));
    } else {
        out.extend_from_slice(s);
    }
}

/// One header line; `name` ends with its `": "`.
fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
