//! What one config generation builds: the routing table (who is a trunk,
//! who is the PBX, where each side's requests go) and the screener. The
//! proxy holds the current `Runtime` in an `ArcSwap`; a reload builds a new
//! one beside it and swaps it in whole, or keeps the old one on any error.
//! [`Runtime::decide`] is the one place a call's verdict, tags and
//! responsible person are decided.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::{ConfigError, Diagnostic, ForwardMode, Loaded, TransportKind, target_entries};
use crate::contacts::Contact;
use crate::dns::PeerTargets;
use crate::screening::exceptions::ExceptionSet;
use crate::screening::verstat::Attest;
use crate::screening::{Client, Direction, Screener, Screening};

/// Which side of the sidecar a packet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A configured trunk (index into `Routing::trunks`).
    Trunk(usize),
    /// The PBX.
    Pbx,
    /// Anyone else: never relayed.
    Unknown,
}

impl Side {
    /// Its `side` label in the metrics.
    pub fn origin(self) -> crate::metrics::Origin {
        match self {
            Side::Trunk(_) => crate::metrics::Origin::Trunk,
            Side::Pbx => crate::metrics::Origin::Pbx,
            Side::Unknown => crate::metrics::Origin::Unknown,
        }
    }
}

/// A next hop the proxy may send to.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Trunk name, or `pbx`.
    pub name: String,
    /// Where requests for this peer go: its targets, resolved (by the
    /// `dns` task for names), with their failover state.
    pub targets: Arc<PeerTargets>,
    /// Transport towards it where neither its target URI nor DNS name one.
    pub transport: TransportKind,
    /// Networks its requests come from.
    pub sources: Vec<IpNet>,
    /// Whether its P-Asserted-Identity is believed.
    pub trust_pai: bool,
    /// How to open TLS towards it (`transport = "tls"` only).
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// Its TLS connections must present a client certificate `[tls] ca`
    /// verifies.
    pub verify_client: bool,
}

impl Peer {
    /// Whether `ip` belongs to this peer (a source network or one of its
    /// resolved targets).
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.sources.iter().any(|n| n.contains(&ip)) || self.targets.has_ip(ip)
    }

    /// Where a new request of call `call_id` goes (lock-free; `None`:
    /// no target resolved).
    pub fn next_hop(&self, call_id: &[u8]) -> Option<(SocketAddr, TransportKind)> {
        self.targets.pick(call_id)
    }
}

/// Source classification and next hops.
#[derive(Debug)]
pub struct Routing {
    /// The PBX.
    pub pbx: Peer,
    /// The trunks, in config order.
    pub trunks: Vec<Peer>,
    /// Trunk used when a line names none (`[defaults] trunk`, else the first).
    pub default_trunk: Option<usize>,
}

/// What the targets of a generation are built with: the clock their
/// blocklist reads, and the registry their metrics go to.
#[derive(Clone, Default)]
pub struct TargetEnv {
    pub clock: crate::clock::Clock,
    pub metrics: crate::metrics::DnsMetrics,
}

/// A peer's TLS client side, built when its transport is TLS; an error
/// is located at `span` (the trunk's name).
fn peer_tls(
    loaded: &Loaded,
    transport: TransportKind,
    tls: &crate::config::PeerTlsConfig,
    target: &crate::config::target::TargetHost,
    who: &str,
    span: std::ops::Range<usize>,
) -> Result<Option<Arc<crate::tls::ClientTls>>, ConfigError> {
    if transport != TransportKind::Tls {
        return Ok(None);
    }
    let ca = loaded.config.tls.ca.as_ref().map(|c| c.get_ref().as_path());
    // A name is the server name the certificate must carry (unless
    // tls_server_name says otherwise).
    let (tls, ip) = match target {
        crate::config::target::TargetHost::Ip(ip) => (tls.clone(), *ip),
        crate::config::target::TargetHost::Name(n) => {
            let mut t = tls.clone();
            t.server_name.get_or_insert_with(|| n.clone());
            (t, std::net::IpAddr::from([0, 0, 0, 0]))
        }
    };
    crate::tls::client(&tls, ca, ip)
        .map(|c| Some(Arc::new(c)))
        .map_err(|e| loaded.error(vec![Diagnostic::new(span, format!("{who}: {e}"))]))
}

/// The host of a peer's first target: the default TLS server name.
fn first_host(entries: &[crate::config::TargetEntry]) -> crate::config::target::TargetHost {
    entries
        .first()
        .and_then(|e| crate::config::target::TargetSpec::parse(e.target.get_ref()).ok())
        .map_or(
            crate::config::target::TargetHost::Ip([0, 0, 0, 0].into()),
            |t| t.host,
        )
}

impl Routing {
    fn build(loaded: &Loaded, env: &TargetEnv) -> Result<Routing, ConfigError> {
        let cfg = &loaded.config;
        let targets = |name: &str, transport, entries: &[crate::config::TargetEntry]| {
            PeerTargets::new(
                name,
                transport,
                entries,
                cfg.dns.blocklist_secs,
                env.clock.clone(),
                env.metrics.clone(),
            )
            .map(Arc::new)
            .map_err(|(span, msg)| loaded.error(vec![Diagnostic::new(span, msg)]))
        };
        let pbx_tls = cfg.pbx.tls();
        let pbx_entries = target_entries(&cfg.pbx.target, &cfg.pbx.targets);
        let pbx = Peer {
            name: "pbx".to_string(),
            targets: targets("pbx", cfg.pbx.transport, &pbx_entries)?,
            transport: cfg.pbx.transport,
            sources: cfg.pbx.sources.clone(),
            trust_pai: true,
            tls: peer_tls(
                loaded,
                crate::config::target::peer_transport(cfg.pbx.transport, &pbx_entries),
                &pbx_tls,
                &first_host(&pbx_entries),
                "[pbx]",
                0..0,
            )?,
            verify_client: pbx_tls.verify_client,
        };
        let trunks = cfg
            .trunks
            .iter()
            .map(|t| {
                let tls = t.tls();
                let who = format!("trunk {:?}", t.name.get_ref());
                let entries = target_entries(&t.target, &t.targets);
                Ok(Peer {
                    name: t.name.get_ref().clone(),
                    targets: targets(t.name.get_ref(), t.transport, &entries)?,
                    transport: t.transport,
                    sources: t.sources.clone(),
                    trust_pai: t.trust_pai,
                    tls: peer_tls(
                        loaded,
                        crate::config::target::peer_transport(t.transport, &entries),
                        &tls,
                        &first_host(&entries),
                        &who,
                        t.name.span(),
                    )?,
                    verify_client: tls.verify_client,
                })
            })
            .collect::<Result<Vec<Peer>, ConfigError>>()?;
        let default_trunk = match &cfg.defaults.trunk {
            Some(name) => Some(
                trunks
                    .iter()
                    .position(|t| &t.name == name.get_ref())
                    .ok_or_else(|| {
                        loaded.error(vec![Diagnostic::new(name.span(), "no such trunk")])
                    })?,
            ),
            None if trunks.is_empty() => None,
            None => Some(0),
        };
        Ok(Routing {
            pbx,
            trunks,
            default_trunk,
        })
    }

    /// Which side `ip` is on. Trunks are checked first only for speed; the
    /// config refuses networks claimed by both sides.
    pub fn classify(&self, ip: IpAddr) -> Side {
        if let Some(i) = self
            .trunks
            .iter()
            .position(|t| t.sources.iter().any(|n| n.contains(&ip)))
        {
            return Side::Trunk(i);
        }
        if self.pbx.sources.iter().any(|n| n.contains(&ip)) {
            return Side::Pbx;
        }
        Side::Unknown
    }

    /// The trunk named `name`, else the default trunk.
    pub fn trunk_for(&self, name: Option<&str>) -> Option<&Peer> {
        name.and_then(|n| self.trunks.iter().find(|t| t.name == n))
            .or_else(|| self.default_trunk.map(|i| &self.trunks[i]))
    }

    /// The trunk that owns `ip`, if any.
    pub fn trunk_owning(&self, ip: IpAddr) -> Option<&Peer> {
        self.trunks.iter().find(|t| t.owns(ip))
    }

    /// Whether `ip` belongs to any configured peer.
    pub fn is_known(&self, ip: IpAddr) -> bool {
        self.pbx.owns(ip) || self.trunks.iter().any(|t| t.owns(ip))
    }

    /// Every peer, the PBX first.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        std::iter::once(&self.pbx).chain(&self.trunks)
    }

    /// An answer to an OPTIONS ping from `addr`; whether a peer had it.
    pub fn ping_answered(&self, addr: SocketAddr) -> bool {
        let mut hit = false;
        for p in self.peers() {
            hit |= p.targets.ping_answered(addr);
        }
        hit
    }

    /// Peers none of whose targets resolved (their calls get 503).
    pub fn unresolved(&self) -> impl Iterator<Item = &str> {
        self.peers()
            .filter(|p| p.targets.is_empty())
            .map(|p| p.name.as_str())
    }

    /// Blocklists `dest` in whichever peer it belongs to (a failure seen
    /// on the SIP path); whether one had it.
    pub fn target_failed(&self, dest: SocketAddr, why: crate::dns::Failure) -> bool {
        self.target_failed_for(dest, why, None)
    }

    /// [`Routing::target_failed`] for `secs` (a 503's `Retry-After`)
    /// instead of `[dns] blocklist_secs` when given.
    pub fn target_failed_for(
        &self,
        dest: SocketAddr,
        why: crate::dns::Failure,
        secs: Option<u64>,
    ) -> bool {
        let mut hit = false;
        for p in self.peers() {
            hit |= p.targets.block_for(dest, why, secs);
        }
        hit
    }
}

/// Everything one config generation builds.
pub struct Runtime {
    /// The config it was built from.
    pub loaded: Loaded,
    /// Sources and next hops.
    pub routing: Routing,
    /// Lines, normaliser and the (shared) exception set.
    pub screener: Screener,
    /// Client -> responsible person (shared across reloads).
    pub contacts: Arc<crate::contacts::Directory>,
    /// What the `[sip] tls` listeners present (read from `[tls]` by this
    /// generation: a reload re-reads the files, new connections get them).
    pub tls: Option<crate::tls::ServerTls>,
}

impl Runtime {
    /// Builds a generation; any error leaves nothing half-built.
    pub fn build(loaded: Loaded, exceptions: Arc<ExceptionSet>) -> Result<Runtime, ConfigError> {
        Self::build_with(loaded, exceptions, &TargetEnv::default())
    }

    /// [`build`](Self::build) with the targets' clock and metrics.
    pub fn build_with(
        loaded: Loaded,
        exceptions: Arc<ExceptionSet>,
        env: &TargetEnv,
    ) -> Result<Runtime, ConfigError> {
        let routing = Routing::build(&loaded, env)?;
        let screener = Screener::build(&loaded, exceptions)?;
        let tls = server_tls(&loaded)?;
        Ok(Runtime {
            loaded,
            routing,
            screener,
            contacts: Arc::new(crate::contacts::Directory::new()),
            tls,
        })
    }

    /// Uses the shared contacts directory.
    pub fn with_contacts(mut self, contacts: Arc<crate::contacts::Directory>) -> Self {
        self.contacts = contacts;
        self
    }
}

/// The listeners' TLS side from `[tls]`, when `cert` and `key` are set;
/// the error is located at the setting whose file failed.
fn server_tls(loaded: &Loaded) -> Result<Option<crate::tls::ServerTls>, ConfigError> {
    let t = &loaded.config.tls;
    let (Some(cert), Some(key)) = (&t.cert, &t.key) else {
        return Ok(None);
    };
    let ca = t.ca.as_ref();
    crate::tls::server(
        cert.get_ref(),
        key.get_ref(),
        ca.map(|c| c.get_ref().as_path()),
    )
    .map(Some)
    .map_err(|e| {
        let span = match &e {
            crate::tls::TlsError::File { what, .. } if what.ends_with("key") => key.span(),
            crate::tls::TlsError::File { what, .. } if what.ends_with("ca") => {
                ca.map_or(0..0, |c| c.span())
            }
            _ => cert.span(),
        };
        loaded.error(vec![Diagnostic::new(span, e.to_string())])
    })
}

/// The whole decision for one call: the screening (verdict, line, client,
/// create) and the responsible person from the contacts directory. Live
/// calls (`proxy::request`) and `POST /api/v1/screen` both come through
/// [`Runtime::decide`], so the API answers what a call would get.
pub struct Decision<'r> {
    pub screening: Screening<'r>,
    /// The client's entry in the contacts directory, when the call is
    /// inbound on a line that forwards to the responsible person and the
    /// client is known.
    pub contact: Option<Arc<Contact>>,
}

impl Runtime {
    /// Screens a call (hot path: no allocation, never blocks) and looks the
    /// client up in the directory where the line asks for it.
    pub fn decide(
        &self,
        direction: Direction,
        line_user: &[u8],
        client_user: Option<&[u8]>,
    ) -> Decision<'_> {
        self.decide_verified(direction, line_user, client_user, Attest::None)
    }

    /// [`decide`](Self::decide) with the STIR/SHAKEN result a trusted
    /// trunk passed on (`Attest::None` from any other source).
    pub fn decide_verified(
        &self,
        direction: Direction,
        line_user: &[u8],
        client_user: Option<&[u8]>,
        attest: Attest,
    ) -> Decision<'_> {
        let screening = self
            .screener
            .screen_verified(direction, line_user, client_user, attest);
        let contact = match screening.client {
            Client::Number(n)
                if direction == Direction::Inbound && screening.settings.forward_to_responsible =>
            {
                self.contacts.get(n)
            }
            _ => None,
        };
        Decision { screening, contact }
    }
}

impl Decision<'_> {
    /// The contact's user, else the line queue's first member.
    pub fn responsible(&self) -> Option<&str> {
        self.contact
            .as_deref()
            .map(|c| c.user_id.as_str())
            .or(self.screening.responsible())
    }

    /// Appends the `X-CRM-*` header lines an INVITE towards the PBX
    /// carries (`X-CRM-Call-Id` only when there is a call).
    pub fn write_tags(&self, call_id: Option<&str>, out: &mut Vec<u8>) {
        self.screening.write_tags(call_id, self.responsible(), out);
    }

    /// On a `forward = "ruri"` line, the responsible's extension the
    /// Request-URI user becomes (only an extension of dial-string
    /// characters: it is written into the Request-URI as it is).
    pub fn forward_to(&self) -> Option<&str> {
        let c = self.contact.as_deref()?;
        let ok = self.screening.settings.forward == ForwardMode::Ruri
            && !c.extension.is_empty()
            && c.extension
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.+*#".contains(&b));
        ok.then_some(c.extension.as_str())
    }
}
