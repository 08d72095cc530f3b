//! A peer's `target`: where its requests go. Accepted forms:
//!
//! - `IP:port` (`192.0.2.1:5060`, `[2001:db8::1]:5060`), or an IP alone
//!   (port 5060, 5061 for TLS);
//! - `host` or `host:port`: a DNS name (RFC 3263: without a port NAPTR ->
//!   SRV -> A/AAAA, with a port A/AAAA only);
//! - a SIP URI, `sip:host[:port][;transport=udp|tcp|tls]` or `sips:host…`
//!   (a `sips:` URI and `;transport=tls` mean TLS).
//!
//! A transport the URI names wins over the peer's `transport` key. Parsing
//! is pure: validation reports errors at the key's span, and the runtime
//! parses again what validation accepted.

use std::fmt;
use std::net::IpAddr;

/// A transport a target may name (TLS is carried for the TLS transport
/// to connect; see `validate` for whether it is available).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetTransport {
    Udp,
    Tcp,
    Tls,
}

impl TargetTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetTransport::Udp => "udp",
            TargetTransport::Tcp => "tcp",
            TargetTransport::Tls => "tls",
        }
    }

    /// The port a name without SRV uses (RFC 3263 §4.2).
    pub fn default_port(self) -> u16 {
        match self {
            TargetTransport::Tls => 5061,
            _ => 5060,
        }
    }
}

impl From<super::TransportKind> for TargetTransport {
    fn from(t: super::TransportKind) -> Self {
        match t {
            super::TransportKind::Udp => TargetTransport::Udp,
            super::TransportKind::Tcp => TargetTransport::Tcp,
            super::TransportKind::Tls => TargetTransport::Tls,
        }
    }
}

impl From<TargetTransport> for super::TransportKind {
    fn from(t: TargetTransport) -> Self {
        match t {
            TargetTransport::Udp => super::TransportKind::Udp,
            TargetTransport::Tcp => super::TransportKind::Tcp,
            TargetTransport::Tls => super::TransportKind::Tls,
        }
    }
}

/// The host part of a target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetHost {
    Ip(IpAddr),
    /// A DNS name, lower-cased, without a trailing dot.
    Name(String),
}

/// One parsed target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetSpec {
    pub host: TargetHost,
    pub port: Option<u16>,
    /// Named by the URI (`;transport=`, or `sips:`), else `None`.
    pub transport: Option<TargetTransport>,
    /// A `sips:` URI.
    pub sips: bool,
}

impl TargetSpec {
    /// Parses any accepted form.
    pub fn parse(s: &str) -> Result<TargetSpec, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("target is empty".into());
        }
        let lower = s.to_ascii_lowercase();
        let (rest, sips) = if let Some(r) = lower.strip_prefix("sips:") {
            (r, true)
        } else if let Some(r) = lower.strip_prefix("sip:") {
            (r, false)
        } else {
            (lower.as_str(), false)
        };
        let uri = rest.len() != lower.len();
        let (hostport, params) = match rest.split_once(';') {
            Some((h, p)) if uri => (h, Some(p)),
            Some(_) => {
                return Err(format!("{s:?}: parameters need a SIP URI (sip:{rest})"));
            }
            None => (rest, None),
        };
        if hostport.contains('@') {
            return Err(format!("{s:?}: a target has no user part"));
        }
        let mut transport = sips.then_some(TargetTransport::Tls);
        for p in params.into_iter().flat_map(|p| p.split(';')) {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            match name.trim() {
                "transport" => {
                    let t = match value.trim() {
                        "udp" => TargetTransport::Udp,
                        "tcp" => TargetTransport::Tcp,
                        "tls" => TargetTransport::Tls,
                        other => {
                            return Err(format!("{s:?}: transport={other} is not udp, tcp or tls"));
                        }
                    };
                    if sips && t != TargetTransport::Tls {
                        return Err(format!("{s:?}: a sips: URI is carried over TLS only"));
                    }
                    transport = Some(t);
                }
                "lr" | "" => {}
                other => return Err(format!("{s:?}: unknown URI parameter {other:?}")),
            }
        }
        let (host, port) = split_host_port(hostport).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(TargetSpec {
            host,
            port,
            transport,
            sips,
        })
    }

    /// The transport an address of it gets when DNS does not say: the
    /// URI's, else the peer's.
    pub fn transport_or(&self, peer: super::TransportKind) -> super::TransportKind {
        self.transport.map_or(peer, Into::into)
    }

    /// Whether resolving it needs DNS.
    pub fn is_name(&self) -> bool {
        matches!(self.host, TargetHost::Name(_))
    }
}

fn split_host_port(hp: &str) -> Result<(TargetHost, Option<u16>), String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("port {p:?} is not 1..=65535")),
            Ok(n) => Ok(n),
        }
    };
    if let Some(r) = hp.strip_prefix('[') {
        let (ip, tail) = r
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ]")?;
        let ip: std::net::Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("[{ip}] is not an IPv6 address"))?;
        let p = match tail {
            "" => None,
            t => Some(port(t.strip_prefix(':').ok_or("junk after ]")?)?),
        };
        return Ok((TargetHost::Ip(IpAddr::V6(ip)), p));
    }
    if hp.matches(':').count() > 1 {
        return match hp.parse::<IpAddr>() {
            Ok(ip) => Ok((TargetHost::Ip(ip), None)),
            Err(_) => Err("an IPv6 address with a port is written [addr]:port".into()),
        };
    }
    let (h, p) = match hp.split_once(':') {
        Some((h, p)) => (h, Some(port(p)?)),
        None => (hp, None),
    };
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok((TargetHost::Ip(ip), p));
    }
    let name = h.strip_suffix('.').unwrap_or(h);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{h:?} is neither an IP address nor a host name"));
    }
    if name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{h:?} is not an IP address"));
    }
    Ok((TargetHost::Name(name.to_string()), p))
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = self.transport.is_none() && !self.sips;
        if !plain {
            f.write_str(if self.sips { "sips:" } else { "sip:" })?;
        }
        match &self.host {
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            TargetHost::Ip(ip) => write!(f, "{ip}")?,
            TargetHost::Name(n) => f.write_str(n)?,
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let (Some(t), false) = (self.transport, self.sips) {
            write!(f, ";transport={}", t.as_str())?;
        }
        Ok(())
    }
}

/// A peer's transport as TLS checks see it: TLS when its `transport` key
/// says so or one of its targets does (`sips:`, `;transport=tls`).
pub fn peer_transport(
    peer: super::TransportKind,
    entries: &[super::TargetEntry],
) -> super::TransportKind {
    let named_tls = entries.iter().any(|e| {
        TargetSpec::parse(e.target.get_ref())
            .is_ok_and(|t| t.transport == Some(TargetTransport::Tls))
    });
    if named_tls {
        super::TransportKind::Tls
    } else {
        peer
    }
}

/// A `[dns] servers` entry: `IP` (port 53) or `IP:port`.
pub fn parse_server(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .map_err(|_| format!("dns server {s:?} is not IP or IP:port"))
}

/// Checks every peer's targets and the `[dns]` table, each error at its
/// key.
pub(super) fn validate(cfg: &super::Config, d: &mut Vec<super::Diagnostic>) {
    use super::Diagnostic;
    let peers = std::iter::once((
        "[pbx]".to_string(),
        0..0,
        super::target_entries(&cfg.pbx.target, &cfg.pbx.targets),
    ))
    .chain(cfg.trunks.iter().map(|t| {
        (
            format!("trunk {:?}", t.name.get_ref()),
            t.name.span(),
            super::target_entries(&t.target, &t.targets),
        )
    }));
    for (what, span, entries) in peers {
        if entries.is_empty() {
            d.push(Diagnostic::new(
                span,
                format!("{what} has no target: set target = \"host:port\" or targets = [...]"),
            ));
        }
        for e in &entries {
            if let Err(msg) = TargetSpec::parse(e.target.get_ref()) {
                d.push(Diagnostic::new(e.target.span(), msg));
            }
        }
    }
    for s in &cfg.dns.servers {
        if let Err(msg) = parse_server(s.get_ref()) {
            d.push(Diagnostic::new(s.span(), msg));
        }
    }
    let dns = &cfg.dns;
    if dns.min_ttl_secs == 0 || dns.min_ttl_secs > dns.max_ttl_secs {
        d.push(Diagnostic::new(
            0..0,
            format!(
                "dns.min_ttl_secs = {} must be at least 1 and at most dns.max_ttl_secs = {}",
                dns.min_ttl_secs, dns.max_ttl_secs
            ),
        ));
    }
    if dns.retry_secs == 0 || dns.timeout_ms == 0 {
        d.push(Diagnostic::new(
            0..0,
            "dns.retry_secs and dns.timeout_ms must be at least 1",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TargetSpec {
        TargetSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_form_parses() {
        let t = p("192.0.2.1:5070");
        assert_eq!(t.host, TargetHost::Ip("192.0.2.1".parse().unwrap()));
        assert_eq!((t.port, t.transport, t.sips), (Some(5070), None, false));
        let t = p("[::1]:5060");
        assert_eq!(t.host, TargetHost::Ip("::1".parse().unwrap()));
        assert_eq!(t.port, Some(5060));
        assert_eq!(p("::1").host, TargetHost::Ip("::1".parse().unwrap()));
        let t = p("Carrier.Test.");
        assert_eq!(t.host, TargetHost::Name("carrier.test".into()));
        assert_eq!(t.port, None);
        assert!(t.is_name());
        assert_eq!(p("carrier.test:5080").port, Some(5080));
        let t = p("sip:sip.carrier.example;transport=tcp");
        assert_eq!(t.host, TargetHost::Name("sip.carrier.example".into()));
        assert_eq!(t.transport, Some(TargetTransport::Tcp));
        let t = p("sips:sip.carrier.example:5061");
        assert_eq!((t.transport, t.sips), (Some(TargetTransport::Tls), true));
        let t = p("sip:[2001:db8::5]:5062;transport=udp;lr");
        assert_eq!(t.host, TargetHost::Ip("2001:db8::5".parse().unwrap()));
        assert_eq!(
            (t.port, t.transport),
            (Some(5062), Some(TargetTransport::Udp))
        );
        assert_eq!(p("sip:[::1]").port, None);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "192.0.2.1:5070",
            "[::1]:5060",
            "carrier.test",
            "sip:carrier.test:5080;transport=tcp",
            "sips:carrier.test",
        ] {
            assert_eq!(p(s).to_string(), s);
            assert_eq!(p(&p(s).to_string()), p(s));
        }
    }

    #[test]
    fn bad_targets_say_what_is_wrong() {
        for (s, want) in [
            ("", "empty"),
            ("carrier.test:0", "not 1..=65535"),
            ("carrier.test:99999", "not 1..=65535"),
            ("sip:x.test;transport=sctp", "transport=sctp"),
            ("sips:x.test;transport=udp", "TLS only"),
            ("sip:alice@x.test", "no user part"),
            ("x.test;transport=tcp", "need a SIP URI"),
            ("::1:5060:x", "[addr]:port"),
            ("[::1", "closing ]"),
            ("bad_host!", "neither an IP"),
            ("300.1.1.1", "not an IP address"),
            ("sip:x.test;maddr=1.2.3.4", "unknown URI parameter"),
        ] {
            let e = TargetSpec::parse(s).expect_err(s);
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    fn config_errors(peers: &str) -> String {
        let text = format!("[pbx]\nsources = [\"127.0.0.1/32\"]\n{peers}");
        match crate::config::from_toml(std::path::Path::new("c.toml"), text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_target_form_and_the_targets_list_load() {
        let e = config_errors(
            "target = \"sip:pbx.test;transport=tcp\"\n[[trunk]]\nname = \"c\"\nsources = [\"127.0.0.2/32\"]\ntargets = [{ target = \"carrier.test\", priority = 1 }, { target = \"192.0.2.7:5070\", priority = 2, weight = 5 }]\n[dns]\nservers = [\"127.0.0.1:5353\", \"::1\"]\n",
        );
        assert_eq!(e, "");
    }

    #[test]
    fn target_errors_name_file_line_and_column() {
        let e = config_errors("target = \"sip:pbx.test;transport=sctp\"\n");
        assert!(e.contains("c.toml:3:10: "), "{e}");
        assert!(e.contains("transport=sctp is not udp, tcp or tls"), "{e}");
        let e = config_errors(
            "target = \"127.0.0.1:5080\"\n[[trunk]]\nname = \"c\"\nsources = [\"127.0.0.2/32\"]\ntargets = [{ target = \"sips:carrier.test\" }]\n",
        );
        assert!(e.contains("c.toml:5:8: "), "{e}");
        assert!(e.contains("needs a [sip] tls listener"), "{e}");
        let e = config_errors("");
        assert!(e.contains("[pbx] has no target"), "{e}");
        let e = config_errors("target = \"127.0.0.1:5080\"\n[dns]\nservers = [\"dns.test\"]\n");
        assert!(e.contains("c.toml:5:12: "), "{e}");
        assert!(e.contains("is not IP or IP:port"), "{e}");
    }
}
