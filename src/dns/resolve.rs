//! RFC 3263 §4 with hickory-resolver (`SIP+D2U`, `SIP+D2T`, `SIPS+D2T`;
//! `_sip._udp`, `_sip._tcp`, `_sips._tcp`): a name without port goes NAPTR ->
//! SRV -> A/AAAA; a name whose transport is given skips NAPTR; a name
//! with a port is A/AAAA only. The answer's TTL is the smallest of the
//! records it used.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::config::target::{TargetHost, TargetSpec, parse_server};
use crate::config::{DnsConfig, TransportKind};

/// One resolved address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addr: SocketAddr,
    pub transport: TransportKind,
    /// SRV priority and weight (0 and 1 without SRV).
    pub priority: u16,
    pub weight: u16,
}

/// What a target resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub dests: Vec<Resolved>,
    /// Smallest TTL of the records used (`None`: an IP literal).
    pub ttl_secs: Option<u32>,
}

impl Answer {
    /// An IP literal's answer: itself, forever.
    pub fn literal(addr: SocketAddr, transport: TransportKind) -> Answer {
        Answer {
            dests: vec![Resolved {
                addr,
                transport,
                priority: 0,
                weight: 1,
            }],
            ttl_secs: None,
        }
    }
}

/// The resolver the background task asks.
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// From `[dns]`: its servers (over UDP, TCP for truncated answers), or
    /// the system's when none are given.
    pub fn new(cfg: &DnsConfig) -> Result<Resolver, String> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        opts.attempts = 2;
        // The task does its own TTL bookkeeping; hickory's cache would
        // only hide a server that stopped answering.
        opts.cache_size = 0;
        let builder = if cfg.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| format!("system DNS config: {e}"))?
        } else {
            let mut rc = ResolverConfig::from_name_servers(Vec::new());
            for s in &cfg.servers {
                let addr = parse_server(s.get_ref())?;
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                rc.add_name_server(ns);
            }
            TokioResolver::builder_with_config(rc, TokioRuntimeProvider::default())
        };
        let inner = builder
            .with_options(opts)
            .build()
            .map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(Resolver { inner })
    }

    /// Resolves `spec` (a name) as RFC 3263 says; `peer` is the peer's
    /// `transport` key, used where neither the URI nor DNS name one.
    pub async fn resolve(&self, spec: &TargetSpec, peer: TransportKind) -> Result<Answer, String> {
        let TargetHost::Name(name) = &spec.host else {
            return Err("not a name".into());
        };
        let fqdn = format!("{name}.");
        let mut ttl = u32::MAX;
        let explicit = spec.transport.map(TransportKind::from);
        if let Some(port) = spec.port {
            let dests = self
                .addresses(&fqdn, port, explicit.unwrap_or(peer), 0, 1, &mut ttl)
                .await?;
            return finish(dests, ttl, name);
        }
        // NAPTR (§4.1) when the transport is not given.
        if explicit.is_none() {
            let mut naptrs = Vec::new();
            match self.inner.lookup(fqdn.as_str(), RecordType::NAPTR).await {
                Ok(l) => {
                    for r in l.answers() {
                        if let RData::NAPTR(n) = &r.data {
                            let service = String::from_utf8_lossy(&n.services).to_ascii_uppercase();
                            let t = match service.as_str() {
                                "SIP+D2U" => TransportKind::Udp,
                                "SIP+D2T" => TransportKind::Tcp,
                                "SIPS+D2T" => TransportKind::Tls,
                                _ => continue,
                            };
                            if !n.flags.eq_ignore_ascii_case(b"s") {
                                continue;
                            }
                            ttl = ttl.min(r.ttl);
                            naptrs.push((n.order, n.preference, t, n.replacement.to_string()));
                        }
                    }
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
                Err(e) => return Err(format!("NAPTR {name}: {e}")),
            }
            naptrs.sort_by_key(|n| (n.0, n.1));
            for (_, _, t, srv_name) in &naptrs {
                let dests = self.srv(srv_name, *t, &mut ttl).await?;
                if !dests.is_empty() {
                    return finish(dests, ttl, name);
                }
            }
        }
        // SRV (§4.2) for the given transport, else the peer's.
        let t = explicit.unwrap_or(peer);
        let srv_name = match t {
            TransportKind::Udp => format!("_sip._udp.{fqdn}"),
            TransportKind::Tcp => format!("_sip._tcp.{fqdn}"),
            TransportKind::Tls => format!("_sips._tcp.{fqdn}"),
        };
        let dests = self.srv(&srv_name, t, &mut ttl).await?;
        if !dests.is_empty() {
            return finish(dests, ttl, name);
        }
        // No SRV: the name itself on the default port.
        let port = if t == TransportKind::Tls { 5061 } else { 5060 };
        let dests = self.addresses(&fqdn, port, t, 0, 1, &mut ttl).await?;
        finish(dests, ttl, name)
    }

    /// The SRV records at `srv_name` and their addresses (empty: none).
    async fn srv(
        &self,
        srv_name: &str,
        t: TransportKind,
        ttl: &mut u32,
    ) -> Result<Vec<Resolved>, String> {
        let l = match self.inner.lookup(srv_name, RecordType::SRV).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(Vec::new()),
            Err(e) => return Err(format!("SRV {srv_name}: {e}")),
        };
        let mut records = Vec::new();
        for r in l.answers() {
            if let RData::SRV(s) = &r.data {
                *ttl = (*ttl).min(r.ttl);
                records.push((s.priority, s.weight, s.port, s.target.to_string()));
            }
        }
        let mut out = Vec::new();
        for (prio, weight, port, target) in records {
            if target == "." {
                continue; // "decidedly not available" (RFC 2782)
            }
            match self.addresses(&target, port, t, prio, weight, ttl).await {
                Ok(mut a) => out.append(&mut a),
                // One SRV target without address: the others still serve.
                Err(e) => tracing::debug!(srv = srv_name, error = %e, "SRV target skipped"),
            }
        }
        Ok(out)
    }

    /// A and AAAA of `host` on `port`.
    async fn addresses(
        &self,
        host: &str,
        port: u16,
        t: TransportKind,
        priority: u16,
        weight: u16,
        ttl: &mut u32,
    ) -> Result<Vec<Resolved>, String> {
        let l = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|e| format!("A/AAAA {}: {e}", host.trim_end_matches('.')))?;
        for r in l.as_lookup().answers() {
            *ttl = (*ttl).min(r.ttl);
        }
        Ok(l.iter()
            .map(|ip| Resolved {
                addr: SocketAddr::new(ip, port),
                transport: t,
                priority,
                weight,
            })
            .collect())
    }
}

fn finish(mut dests: Vec<Resolved>, ttl: u32, name: &str) -> Result<Answer, String> {
    if dests.is_empty() {
        return Err(format!("{name}: no address"));
    }
    dests.sort_by_key(|d| (d.priority, d.addr));
    dests.dedup();
    Ok(Answer {
        dests,
        ttl_secs: Some(if ttl == u32::MAX { 0 } else { ttl }),
    })
}
