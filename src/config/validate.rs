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

    if cfg.sip.udp.is_empty() && cfg.sip.tcp.is_empty() && cfg.sip.tls.is_empty() {
        d.push(Diagnostic::new(
            none.clone(),
            "[sip] has no listener: set udp = [...], tcp = [...] or tls = [...]",
        ));
    }
    check_tls(cfg, &mut d);
    check_store(cfg, &mut d);
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
        for a in cfg.sip.udp.iter().chain(&cfg.sip.tcp).chain(&cfg.sip.tls) {
            if a.ip().is_unspecified() {
                d.push(Diagnostic::new(
                    none.clone(),
                    format!("listener {a} is a wildcard address: set sip.advertise to the address peers reach"),
                ));
                break;
            }
        }
    }

    check_families(cfg, &mut d);

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

    super::target::validate(cfg, &mut d);

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

/// IPv4 and IPv6: a peer is reached from a listener of its target's
/// family and transport, and our Via / Record-Route (the first listener's
/// address unless `advertise` names us) must be reachable in the family
/// every peer uses, or its responses and in-dialog requests go nowhere.
/// Targets written as IP literals are checked here; a name's addresses
/// are known only once resolved.
fn check_families(cfg: &Config, d: &mut Vec<Diagnostic>) {
    use super::target::{TargetHost, TargetSpec};
    let family = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
    let ours = cfg.sip.udp.first().or(cfg.sip.tcp.first());
    let mut peers = vec![(
        "pbx".to_string(),
        0..0,
        super::target_entries(&cfg.pbx.target, &cfg.pbx.targets),
        cfg.pbx.transport,
        &cfg.pbx.sources,
    )];
    for t in &cfg.trunks {
        peers.push((
            format!("trunk {:?}", t.name.get_ref()),
            t.name.span(),
            super::target_entries(&t.target, &t.targets),
            t.transport,
            &t.sources,
        ));
    }
    for (name, span, entries, peer_transport, sources) in peers {
        let literal: Vec<(std::net::IpAddr, super::TransportKind, &str)> = entries
            .iter()
            .filter_map(|e| {
                let spec = TargetSpec::parse(e.target.get_ref()).ok()?;
                let TargetHost::Ip(ip) = spec.host else {
                    return None;
                };
                Some((
                    ip,
                    spec.transport_or(peer_transport),
                    e.target.get_ref().as_str(),
                ))
            })
            .collect();
        for &(ip, transport, target) in &literal {
            let listeners = match transport {
                super::TransportKind::Udp => &cfg.sip.udp,
                super::TransportKind::Tcp => &cfg.sip.tcp,
                super::TransportKind::Tls => &cfg.sip.tls,
            };
            // No TLS listener at all is check_tls's to say.
            let none_at_all = transport == super::TransportKind::Tls && listeners.is_empty();
            if !none_at_all && !listeners.iter().any(|l| l.is_ipv4() == ip.is_ipv4()) {
                d.push(Diagnostic::new(
                    span.clone(),
                    format!(
                        "{name} target {target} is {} over {} but no {} listener is {}: add one to [sip] {}",
                        family(ip.is_ipv4()),
                        transport.as_str(),
                        transport.as_str().to_uppercase(),
                        family(ip.is_ipv4()),
                        transport.as_str()
                    ),
                ));
            }
        }
        let Some(ours) = ours.filter(|_| cfg.sip.advertise.is_none()) else {
            continue;
        };
        let other = literal
            .iter()
            .map(|(ip, _, _)| *ip)
            .chain(sources.iter().map(|n| n.addr()))
            .find(|ip| ip.is_ipv4() != ours.is_ipv4());
        if let Some(ip) = other {
            d.push(Diagnostic::new(
                span,
                format!(
                    "{name} uses {} ({ip}) but Via and Record-Route carry the first listener, {ours} ({}): list a listener of its family first, or set sip.advertise to a name both sides resolve (one sidecar between an IPv4 and an IPv6 side is not supported yet)",
                    family(ip.is_ipv4()),
                    family(ours.is_ipv4())
                ),
            ));
        }
    }
}

/// `[sip] tls` needs `[tls] cert` and `key`; a client certificate needs
/// its key; `tls_verify_client` needs `[tls] ca` and a TLS listener; the
/// other `tls_*` keys only mean something with `transport = "tls"`.
/// `[store] pool_size` accepted.
pub const POOL_SIZE_RANGE: std::ops::RangeInclusive<usize> = 1..=256;

fn check_store(cfg: &Config, d: &mut Vec<Diagnostic>) {
    use super::schema::StoreKind;
    let s = &cfg.store;
    match (s.kind.get_ref(), &s.url_env) {
        (StoreKind::Postgres, None) => d.push(Diagnostic::new(
            s.kind.span(),
            "[store] kind = \"postgres\" needs url_env = \"VARIABLE\" (the environment \
             variable holding the postgres:// URL)",
        )),
        (StoreKind::Postgres, Some(v)) if v.get_ref().is_empty() || v.get_ref().contains('=') => d
            .push(Diagnostic::new(
                v.span(),
                "[store] url_env is the name of an environment variable",
            )),
        (StoreKind::Sqlite, Some(v)) => d.push(Diagnostic::new(
            v.span(),
            "[store] url_env applies only with kind = \"postgres\"",
        )),
        _ => {}
    }
    if !(1..=3600).contains(s.poll_secs.get_ref()) {
        d.push(Diagnostic::new(
            s.poll_secs.span(),
            format!(
                "[store] poll_secs = {} is outside 1..=3600",
                s.poll_secs.get_ref()
            ),
        ));
    }
    if !(2..=3600).contains(s.lease_secs.get_ref()) {
        d.push(Diagnostic::new(
            s.lease_secs.span(),
            format!(
                "[store] lease_secs = {} is outside 2..=3600",
                s.lease_secs.get_ref()
            ),
        ));
    }
    if !POOL_SIZE_RANGE.contains(s.pool_size.get_ref()) {
        d.push(Diagnostic::new(
            s.pool_size.span(),
            format!(
                "[store] pool_size = {} is outside {}..={}",
                s.pool_size.get_ref(),
                POOL_SIZE_RANGE.start(),
                POOL_SIZE_RANGE.end()
            ),
        ));
    }
}

fn check_tls(cfg: &Config, d: &mut Vec<Diagnostic>) {
    let t = &cfg.tls;
    let at = |s: &Option<Spanned<std::path::PathBuf>>| s.as_ref().map_or(0..0, |s| s.span());
    match (&t.cert, &t.key) {
        (Some(_), Some(_)) => {}
        (None, None) if cfg.sip.tls.is_empty() => {}
        (None, None) => d.push(Diagnostic::new(
            0..0,
            "[sip] tls listeners need [tls] cert and key (PEM files)",
        )),
        (c, _) => d.push(Diagnostic::new(
            at(c).start..at(&t.key).end,
            "[tls] needs both cert and key",
        )),
    }
    // A TLS target (`sips:`, `;transport=tls`) counts as transport = "tls".
    use super::target::peer_transport;
    let pbx_targets = super::target_entries(&cfg.pbx.target, &cfg.pbx.targets);
    let peers = std::iter::once((
        "the pbx".to_string(),
        0..0,
        peer_transport(cfg.pbx.transport, &pbx_targets),
        cfg.pbx.tls(),
    ))
    .chain(cfg.trunks.iter().map(|tr| {
        (
            format!("trunk {:?}", tr.name.get_ref()),
            tr.name.span(),
            peer_transport(
                tr.transport,
                &super::target_entries(&tr.target, &tr.targets),
            ),
            tr.tls(),
        )
    }));
    for (who, span, transport, p) in peers {
        if p.cert.is_some() != p.key.is_some() {
            d.push(Diagnostic::new(
                span.clone(),
                format!("{who}: tls_cert and tls_key go together"),
            ));
        }
        let outbound = p.server_name.is_some() || p.ca.is_some() || p.cert.is_some();
        if outbound && transport != super::TransportKind::Tls {
            d.push(Diagnostic::new(
                span.clone(),
                format!(
                    "{who}: tls_server_name, tls_ca, tls_cert and tls_key need transport = \"tls\""
                ),
            ));
        }
        if transport == super::TransportKind::Tls && cfg.sip.tls.is_empty() {
            d.push(Diagnostic::new(
                span.clone(),
                format!("{who}: transport = \"tls\" needs a [sip] tls listener (a sips: or ;transport=tls target counts; our Record-Route and Via name it for the peer's requests back)"),
            ));
        }
        if p.verify_client && (t.ca.is_none() || cfg.sip.tls.is_empty()) {
            d.push(Diagnostic::new(
                span,
                format!("{who}: tls_verify_client needs [tls] ca and a [sip] tls listener"),
            ));
        }
    }
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
    fn peers_must_share_our_address_family() {
        let e = errors("\n[sip]\nudp = [\"[::1]:5060\"]\ntcp = []\n");
        assert!(
            e.iter().any(|l| l.contains(
                "pbx target 127.0.0.1:5080 is IPv4 over udp but no UDP listener is IPv4"
            )),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|l| l.contains("trunk \"carrier\" uses IPv4 (127.0.0.2)")),
            "{e:?}"
        );
        let v6 = BASE
            .replace("127.0.0.1:5080", "[::1]:5080")
            .replace("127.0.0.1/32", "fd00::1/128")
            .replace("127.0.0.2:5070", "[2001:db8::2]:5070")
            .replace("127.0.0.2/32", "2001:db8::/64");
        let text = format!("{v6}\n[sip]\nudp = [\"[::1]:5060\"]\ntcp = [\"[::1]:5060\"]\n");
        assert!(from_toml(Path::new("c.toml"), text).is_ok());
    }

    #[test]
    fn tls_settings_must_fit_together() {
        let e = errors("\n[sip]\ntls = [\"127.0.0.1:5061\"]\n");
        assert_eq!(
            e,
            vec!["c.toml:1:1: [sip] tls listeners need [tls] cert and key (PEM files)"]
        );
        let e = errors("\n[tls]\ncert = \"a.crt\"\n");
        assert_eq!(e, vec!["c.toml:12:8: [tls] needs both cert and key"]);
        let text = BASE.replace(
            "sources = [\"127.0.0.2/32\"]",
            "sources = [\"127.0.0.2/32\"]\ntls_server_name = \"sip.example\"\ntls_cert = \"c.crt\"\ntls_verify_client = true",
        );
        let e = from_toml(Path::new("c.toml"), text)
            .unwrap_err()
            .to_string();
        let e: Vec<&str> = e.lines().collect();
        assert_eq!(
            e,
            vec![
                "c.toml:7:8: trunk \"carrier\": tls_cert and tls_key go together",
                "c.toml:7:8: trunk \"carrier\": tls_server_name, tls_ca, tls_cert and tls_key need transport = \"tls\"",
                "c.toml:7:8: trunk \"carrier\": tls_verify_client needs [tls] ca and a [sip] tls listener",
            ]
        );
        let text = BASE.replace(
            "sources = [\"127.0.0.2/32\"]",
            "sources = [\"127.0.0.2/32\"]\ntransport = \"tls\"\ntls_server_name = \"sip.example\"",
        );
        let e = from_toml(Path::new("c.toml"), text.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "c.toml:7:8: trunk \"carrier\": transport = \"tls\" needs a [sip] tls listener"
            ),
            "{e}"
        );
        let text = format!(
            "{text}\n[sip]\ntls = [\"127.0.0.1:5061\"]\n[tls]\ncert = \"a.crt\"\nkey = \"a.key\"\n"
        );
        assert!(from_toml(Path::new("c.toml"), text).is_ok());
    }

    #[test]
    fn flood_limits_are_checked() {
        let e = errors(
            "\n[flood]\nunknown_limit = 0\nban_secs = 0\nipv6_prefix = 0\nuser_agents = [\"\"]\n",
        );
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            errors("\n[flood]\nwindow_ms = 1000\nunknown_limit = 20\nallow = [\"10.0.0.0/8\"]\n")
                .is_empty()
        );
    }

    #[test]
    fn wildcard_listener_needs_advertise() {
        let e = errors("\n[sip]\nudp = [\"0.0.0.0:5060\"]\n");
        assert!(e[0].contains("set sip.advertise"), "{e:?}");
    }
}
