//! Checks a parsed config for what serde cannot see: references between
//! tables, duplicates, ambiguous source networks, listener sanity. Every
//! problem is collected (not only the first) with the span it belongs to.
//!
//! Line numbers themselves are normalised (and so checked) where the line
//! table is built, in `crate::screening::lines`.

use std::collections::HashSet;
use std::str::FromStr;

use toml::Spanned;

use super::{Config, Diagnostic};

/// Smallest and largest `sip.max_message_bytes` accepted.
pub const MESSAGE_LIMIT_RANGE: std::ops::RangeInclusive<usize> = 1024..=1 << 20;

/// `sip.udp_receivers` accepted.
pub const UDP_RECEIVERS_RANGE: std::ops::RangeInclusive<usize> = 1..=64;

pub(super) fn validate(cfg: &Config) -> Vec<Diagnostic> {
    let mut d = Vec::new();
    let none = 0..0;

    if cfg.sip.udp.is_empty() && cfg.sip.tcp.is_empty() {
        d.push(Diagnostic::new(
            none.clone(),
            "[sip] has no listener: set udp = [...] or tcp = [...]",
        ));
    }
    if !MESSAGE_LIMIT_RANGE.contains(&cfg.sip.max_message_bytes) {
        d.push(Diagnostic::new(
            none.clone(),
            format!(
                "sip.max_message_bytes = {} is outside {}..={}",
                cfg.sip.max_message_bytes,
                MESSAGE_LIMIT_RANGE.start(),
                MESSAGE_LIMIT_RANGE.end()
            ),
        ));
    }
    if !UDP_RECEIVERS_RANGE.contains(&cfg.sip.udp_receivers) {
        d.push(Diagnostic::new(
            none.clone(),
            format!(
                "sip.udp_receivers = {} is outside {}..={}",
                cfg.sip.udp_receivers,
                UDP_RECEIVERS_RANGE.start(),
                UDP_RECEIVERS_RANGE.end()
            ),
        ));
    }
    if cfg.sip.advertise.is_none() {
        for a in cfg.sip.udp.iter().chain(&cfg.sip.tcp) {
            if a.ip().is_unspecified() {
                d.push(Diagnostic::new(
                    none.clone(),
                    format!("listener {a} is a wildcard address: set sip.advertise to the address peers reach"),
                ));
                break;
            }
        }
    }

    let f = &cfg.flood;
    if !(100..=3_600_000).contains(&f.window_ms) {
        d.push(Diagnostic::new(
            none.clone(),
            format!("flood.window_ms = {} is outside 100..=3600000", f.window_ms),
        ));
    }
    if f.unknown_limit == 0 {
        d.push(Diagnostic::new(
            none.clone(),
            "flood.unknown_limit = 0 would ban every unknown source at its first message",
        ));
    }
    if f.ban_secs == 0 || f.ban_secs > 30 * 86400 {
        d.push(Diagnostic::new(
            none.clone(),
            format!("flood.ban_secs = {} is outside 1..=2592000", f.ban_secs),
        ));
    }
    if !(1..=128).contains(&f.ipv6_prefix) {
        d.push(Diagnostic::new(
            none.clone(),
            format!("flood.ipv6_prefix = {} is outside 1..=128", f.ipv6_prefix),
        ));
    }
    if f.user_agents.iter().any(|u| u.trim().is_empty()) {
        d.push(Diagnostic::new(
            none.clone(),
            "flood.user_agents has an empty entry: it would match every User-Agent",
        ));
    }

    check_region(&cfg.screening.default_region, &mut d);
    if let Some(r) = &cfg.defaults.region {
        check_region(r, &mut d);
    }
    for cc in &cfg.screening.bare_country_codes {
        if cc.is_empty()
            || cc.len() > 3
            || !cc.bytes().all(|b| b.is_ascii_digit())
            || cc.starts_with('0')
        {
            d.push(Diagnostic::new(
                none.clone(),
                format!("screening.bare_country_codes: {cc:?} is not a country calling code (1 to 3 digits)"),
            ));
        }
    }

    let mut names = HashSet::new();
    for t in &cfg.trunks {
        if !names.insert(t.name.get_ref().as_str()) {
            d.push(Diagnostic::new(
                t.name.span(),
                format!("trunk name {:?} is used twice", t.name.get_ref()),
            ));
        }
        if t.sources.is_empty() {
            d.push(Diagnostic::new(
                t.name.span(),
                format!(
                    "trunk {:?} has no sources: its calls would all be refused",
                    t.name.get_ref()
                ),
            ));
        }
    }
    let check_trunk = |r: &Spanned<String>, d: &mut Vec<Diagnostic>| {
        if !names.contains(r.get_ref().as_str()) {
            d.push(Diagnostic::new(
                r.span(),
                format!("no [[trunk]] is named {:?}", r.get_ref()),
            ));
        }
    };
    if let Some(t) = &cfg.defaults.trunk {
        check_trunk(t, &mut d);
    }
    for l in &cfg.lines {
        if let Some(t) = &l.trunk {
            check_trunk(t, &mut d);
        }
        if let Some(r) = &l.region {
            check_region(r, &mut d);
        }
    }

    // A source network must say one thing: PBX or one trunk.
    for t in &cfg.trunks {
        for net in &t.sources {
            if let Some(p) = cfg.pbx.sources.iter().find(|p| overlaps(p, net)) {
                d.push(Diagnostic::new(
                    t.name.span(),
                    format!(
                        "trunk {:?} source {net} overlaps pbx source {p}: a request from there would be both inbound and outbound",
                        t.name.get_ref()
                    ),
                ));
            }
        }
    }

    for tok in &cfg.admin.tokens {
        match (&tok.sha256, &tok.env) {
            (Some(h), None) => {
                let v = h.get_ref();
                if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    d.push(Diagnostic::new(
                        h.span(),
                        format!("token {:?}: sha256 must be 64 hex digits", tok.name),
                    ));
                }
            }
            (None, Some(_)) => {}
            _ => d.push(Diagnostic::new(
                none.clone(),
                format!("token {:?}: set exactly one of sha256 or env", tok.name),
            )),
        }
    }
    d
}

fn check_region(r: &Spanned<String>, d: &mut Vec<Diagnostic>) {
    if phonenumber::country::Id::from_str(&r.get_ref().to_ascii_uppercase()).is_err() {
        d.push(Diagnostic::new(
            r.span(),
            format!(
                "{:?} is not an ISO 3166 region code (e.g. \"DE\")",
                r.get_ref()
            ),
        ));
    }
}

fn overlaps(a: &ipnet::IpNet, b: &ipnet::IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use crate::config::from_toml;
    use std::path::Path;

    const BASE: &str = r#"
[pbx]
target = "127.0.0.1:5080"
sources = ["127.0.0.1/32"]

[[trunk]]
name = "carrier"
target = "127.0.0.2:5070"
sources = ["127.0.0.2/32"]
"#;

    fn errors(extra: &str) -> Vec<String> {
        match from_toml(Path::new("c.toml"), format!("{BASE}{extra}")) {
            Ok(_) => vec![],
            Err(e) => e.to_string().lines().map(str::to_string).collect(),
        }
    }

    #[test]
    fn unknown_trunk_reference_is_located() {
        let e = errors("\n[[line]]\nnumber = \"+4930901820\"\ntrunk = \"nope\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("c.toml:13:9: no [[trunk]] is named \"nope\""),
            "{e:?}"
        );
    }

    #[test]
    fn bad_region_and_overlap_are_both_reported() {
        let text = BASE.replace("127.0.0.2/32", "127.0.0.0/8");
        let text = format!("{text}\n[screening]\ndefault_region = \"XX\"\n");
        let e = from_toml(Path::new("c.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"XX\" is not an ISO 3166 region"), "{e}");
        assert!(e.contains("overlaps pbx source"), "{e}");
    }

    #[test]
    fn token_hash_must_be_hex() {
        let e = errors(
            "\n[admin]\n[[admin.tokens]]\nname = \"ops\"\nrole = \"edit\"\nsha256 = \"abc\"\n",
        );
        assert!(e[0].contains("sha256 must be 64 hex digits"), "{e:?}");
    }

    #[test]
    fn wildcard_listener_needs_advertise() {
        let e = errors("\n[sip]\nudp = [\"0.0.0.0:5060\"]\n");
        assert!(e[0].contains("set sip.advertise"), "{e:?}");
    }
}
