//! Per-line CRM integration: `[[line]]` tables resolved over `[defaults]`,
//! keyed by the line's E.164 number.
//!
//! Built once per config (start, reload) so that the hot path is a single
//! `FxHashMap` probe; numbers without a `[[line]]` get the defaults. Every
//! problem is reported with its place in the TOML: a number that cannot be
//! normalised, the same number twice, and strings that end up in SIP
//! headers (`source`, `queue`) containing control characters (CR/LF would
//! let a config inject headers).
//!
//! A `[[line]]` number is read with that line's region (else the defaults'
//! region, else `screening.default_region`): "any format the region
//! understands". At call time the line user is read with the default region.

use std::ops::Range;
use std::str::FromStr;

use phonenumber::country::Id;
use rustc_hash::FxHashMap;

use crate::config::{Config, CreateFor, CreateMode, CrmMode, Diagnostic, ForwardMode, LineConfig};
use crate::screening::normalize::{Normalizer, write_e164};

/// The CRM integration of one line, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineSettings {
    /// What an unknown caller creates.
    pub create: CreateMode,
    /// For which calls records are created.
    pub create_for: CreateFor,
    /// Classic (lead) or simple (contact + deal).
    pub crm_mode: CrmMode,
    /// CRM source id (`X-CRM-Source`); empty: header omitted.
    pub source: String,
    /// Deal pipeline (simple CRM).
    pub pipeline: Option<String>,
    /// Queue; the first member is the default responsible person.
    pub queue: Vec<String>,
    /// A known client's call goes straight to their responsible person.
    pub forward_to_responsible: bool,
    /// `ruri`: also rewrite the Request-URI user to the extension.
    pub forward: ForwardMode,
    /// A manual transfer changes the responsible person.
    pub change_responsible_on_transfer: bool,
    /// ... and updates the contacts directory.
    pub update_directory_on_transfer: bool,
    /// Trunk for outbound calls (`None`: the router's default).
    pub trunk: Option<String>,
    /// Region for national-format client numbers on this line.
    pub region: Id,
}

/// Line settings by E.164 number, with the defaults for all others.
#[derive(Debug)]
pub struct LineTable {
    /// For numbers without a `[[line]]`.
    defaults: LineSettings,
    /// The `[[line]]` tables.
    lines: FxHashMap<u64, LineSettings>,
}

impl LineTable {
    /// Resolves and checks every line; all problems are returned at once.
    pub fn build(
        cfg: &Config,
        text: &str,
        norm: &Normalizer,
    ) -> Result<LineTable, Vec<Diagnostic>> {
        let mut diags = Vec::new();
        let d = &cfg.defaults;
        let region = match &d.region {
            Some(r) => parse_region(r.get_ref(), r.span(), &mut diags),
            None => norm.default_region(),
        };
        let defaults_span = text.find("[defaults]").map_or(0..0, |p| p..p + 10);
        let defaults = LineSettings {
            create: d.create,
            create_for: d.create_for,
            crm_mode: d.crm_mode,
            source: d.source.clone(),
            pipeline: d.pipeline.clone(),
            queue: d.queue.clone(),
            forward_to_responsible: d.forward_to_responsible,
            forward: d.forward,
            update_directory_on_transfer: d.update_directory_on_transfer,
            change_responsible_on_transfer: d.change_responsible_on_transfer,
            trunk: d.trunk.as_ref().map(|t| t.get_ref().clone()),
            region,
        };
        check_strings(&defaults, "[defaults]", defaults_span, &mut diags);

        let mut lines = FxHashMap::default();
        let mut seen: FxHashMap<u64, usize> = FxHashMap::default();
        for l in &cfg.lines {
            let s = resolve(l, &defaults, &mut diags);
            let span = l.number.span();
            let Some(n) = norm.normalize(l.number.get_ref().as_bytes(), Some(s.region)) else {
                diags.push(Diagnostic::new(
                    span,
                    format!(
                        "line number {:?} is not a phone number for region {:?}",
                        l.number.get_ref(),
                        s.region
                    ),
                ));
                continue;
            };
            let mut e164 = Vec::new();
            write_e164(n, &mut e164);
            let name = String::from_utf8_lossy(&e164).into_owned();
            check_strings(&s, &format!("line {name}"), span.clone(), &mut diags);
            if let Some(&first) = seen.get(&n) {
                let (line, _) = crate::config::line_col(text, first);
                diags.push(Diagnostic::new(
                    span,
                    format!("line {name} is configured twice (first on line {line})"),
                ));
                continue;
            }
            seen.insert(n, span.start);
            lines.insert(n, s);
        }
        if diags.is_empty() {
            Ok(LineTable { defaults, lines })
        } else {
            Err(diags)
        }
    }

    /// The settings of `line` (the defaults when it has none or is unknown).
    #[inline]
    pub fn get(&self, line: Option<u64>) -> &LineSettings {
        line.and_then(|n| self.lines.get(&n))
            .unwrap_or(&self.defaults)
    }

    /// The `[[line]]` numbers and their settings, in number order.
    pub fn configured(&self) -> Vec<(u64, &LineSettings)> {
        let mut v: Vec<(u64, &LineSettings)> = self.lines.iter().map(|(n, s)| (*n, s)).collect();
        v.sort_unstable_by_key(|(n, _)| *n);
        v
    }

    /// The defaults (numbers without a `[[line]]`).
    pub fn defaults(&self) -> &LineSettings {
        &self.defaults
    }

    /// Number of `[[line]]` tables.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

fn resolve(l: &LineConfig, d: &LineSettings, diags: &mut Vec<Diagnostic>) -> LineSettings {
    LineSettings {
        create: l.create.unwrap_or(d.create),
        create_for: l.create_for.unwrap_or(d.create_for),
        crm_mode: l.crm_mode.unwrap_or(d.crm_mode),
        source: l.source.clone().unwrap_or_else(|| d.source.clone()),
        pipeline: l.pipeline.clone().or_else(|| d.pipeline.clone()),
        queue: l.queue.clone().unwrap_or_else(|| d.queue.clone()),
        forward_to_responsible: l.forward_to_responsible.unwrap_or(d.forward_to_responsible),
        forward: l.forward.unwrap_or(d.forward),
        update_directory_on_transfer: l
            .update_directory_on_transfer
            .unwrap_or(d.update_directory_on_transfer),
        change_responsible_on_transfer: l
            .change_responsible_on_transfer
            .unwrap_or(d.change_responsible_on_transfer),
        trunk: l
            .trunk
            .as_ref()
            .map(|t| t.get_ref().clone())
            .or_else(|| d.trunk.clone()),
        region: match &l.region {
            Some(r) => parse_region(r.get_ref(), r.span(), diags),
            None => d.region,
        },
    }
}

fn parse_region(r: &str, span: Range<usize>, diags: &mut Vec<Diagnostic>) -> Id {
    Id::from_str(&r.to_ascii_uppercase()).unwrap_or_else(|_| {
        diags.push(Diagnostic::new(
            span,
            format!("{r:?} is not an ISO 3166 region code"),
        ));
        Id::DE
    })
}

/// Strings written into SIP headers must not carry control characters.
fn check_strings(s: &LineSettings, what: &str, span: Range<usize>, diags: &mut Vec<Diagnostic>) {
    let bad = |v: &str| v.chars().any(char::is_control) || v.trim() != v;
    if bad(&s.source) {
        diags.push(Diagnostic::new(
            span.clone(),
            format!(
                "{what}: source {:?} has control characters or surrounding spaces",
                s.source
            ),
        ));
    }
    for m in &s.queue {
        if m.is_empty() || bad(m) {
            diags.push(Diagnostic::new(
                span.clone(),
                format!("{what}: queue member {m:?} is empty or has control characters or surrounding spaces"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml;
    use std::path::Path;

    pub(crate) const BASE: &str = r#"
[pbx]
target = "127.0.0.1:5080"
sources = ["127.0.0.1/32"]

[[trunk]]
name = "carrier"
target = "127.0.0.2:5070"
sources = ["127.0.0.2/32"]

[defaults]
source = "CALL"
"#;

    fn build(extra: &str) -> Result<LineTable, String> {
        let l =
            from_toml(Path::new("c.toml"), format!("{BASE}{extra}")).map_err(|e| e.to_string())?;
        let n = Normalizer::new(Id::DE, &[]);
        LineTable::build(&l.config, &l.text, &n).map_err(|d| l.error(d).to_string())
    }

    #[test]
    fn lines_override_defaults() {
        let t = build(
            "\n[[line]]\nnumber = \"030 901820\"\ncreate = \"offer\"\nqueue = [\"101\", \"102\"]\ntrunk = \"carrier\"\n\n[[line]]\nnumber = \"+33 1 42 68 53 00\"\nregion = \"FR\"\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        let s = t.get(Some(4930901820));
        assert_eq!(s.create, CreateMode::Offer);
        assert_eq!(s.queue, ["101", "102"]);
        assert_eq!(s.source, "CALL");
        assert_eq!(s.trunk.as_deref(), Some("carrier"));
        assert_eq!(t.get(Some(33142685300)).region, Id::FR);
        assert_eq!(t.get(Some(1)), t.defaults());
        assert_eq!(t.get(None).create, CreateMode::Auto);
    }

    #[test]
    fn bad_and_duplicate_numbers_are_located() {
        let e = build("\n[[line]]\nnumber = \"+4930901820\"\n\n[[line]]\nnumber = \"030-901820\"\n\n[[line]]\nnumber = \"hello\"\n").unwrap_err();
        assert!(
            e.contains("c.toml:18:10: line +4930901820 is configured twice (first on line 15)"),
            "{e}"
        );
        assert!(
            e.contains("c.toml:21:10: line number \"hello\" is not a phone number"),
            "{e}"
        );
    }

    #[test]
    fn control_characters_are_refused() {
        let e =
            build("\n[[line]]\nnumber = \"+4930901820\"\nsource = \"A\\r\\nX-CRM-Verdict: log\"\n")
                .unwrap_err();
        assert!(e.contains("c.toml:15:10: line +4930901820: source"), "{e}");
        let e = build("queue = [\"\"]\n").unwrap_err();
        assert!(
            e.contains("c.toml:11:1: [defaults]: queue member \"\""),
            "{e}"
        );
    }
}
