//! The screening decision for one call and the `X-CRM-*` tags that carry it
//! to the PBX (the contract in DESIGN.md).
//!
//! A [`Screener`] is built once per config from the line table, the
//! normaliser and the shared exception set; [`Screener::screen`] is the hot
//! path: normalise two user parts (fast path: no allocation), one hash
//! probe for the line, one lock-free probe of the exception set.

use std::str::FromStr;
use std::sync::Arc;

use crate::config::{ConfigError, CreateFor, CreateMode, CrmMode, Diagnostic, Loaded, Verdict};
use crate::screening::exceptions::ExceptionSet;
use crate::screening::lines::{LineSettings, LineTable};
use crate::screening::normalize::{Normalizer, write_e164};

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
        })
    }

    /// Hot path: no allocation for the common cases, never blocks.
    pub fn screen(
        &self,
        direction: Direction,
        line_user: &[u8],
        client_user: Option<&[u8]>,
    ) -> Screening<'_> {
        let line = self.normalizer.normalize(line_user, None);
        let settings = self.lines.get(line);
        let client = client_user
            .filter(|u| !ANONYMOUS.iter().any(|a| u.eq_ignore_ascii_case(a)))
            .and_then(|u| self.normalizer.normalize(u, Some(settings.region)))
            .map_or(Client::Anonymous, Client::Number);
        let verdict = match client {
            Client::Number(n) if self.exceptions.contains_phone(n) => Verdict::Exception,
            Client::Number(_) => Verdict::Log,
            Client::Anonymous => self.anonymous,
        };
        Screening {
            direction,
            verdict,
            client,
            line,
            settings,
        }
    }

    /// A new e-mail from `from`: `exception` if listed. A reply to an
    /// earlier message always goes to the CRM (`log`), listed or not.
    pub fn screen_email(&self, from: &str, reply: bool) -> Verdict {
        if !reply && self.exceptions.contains_email(from) {
            Verdict::Exception
        } else {
            Verdict::Log
        }
    }

    pub fn exceptions(&self) -> &Arc<ExceptionSet> {
        &self.exceptions
    }

    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
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
        header(out, b"X-CRM-Verdict", self.verdict.as_str().as_bytes());
        header(out, b"X-CRM-Direction", self.direction.as_str().as_bytes());
        out.extend_from_slice(b"X-CRM-Client: ");
        match self.client {
            Client::Number(n) => write_e164(n, out),
            Client::Anonymous => out.extend_from_slice(b"anonymous"),
        }
        out.extend_from_slice(b"\r\n");
        if let Some(n) = self.line {
            out.extend_from_slice(b"X-CRM-Line: ");
            write_e164(n, out);
            out.extend_from_slice(b"\r\n");
        }
        if self.verdict == Verdict::Log {
            header(out, b"X-CRM-Create", self.create().as_str().as_bytes());
            if !self.settings.source.is_empty() {
                header(out, b"X-CRM-Source", self.settings.source.as_bytes());
            }
        }
        if let Some(r) = responsible {
            // Directory values come from the API: no control characters
            // may reach the wire.
            out.extend_from_slice(b"X-CRM-Responsible: ");
            out.extend(r.bytes().filter(|b| !b.is_ascii_control()));
            out.extend_from_slice(b"\r\n");
        }
        if let Some(id) = call_id {
            out.extend_from_slice(b"X-CRM-Call-Id: ");
            out.extend(id.bytes().filter(|b| !b.is_ascii_control()));
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
