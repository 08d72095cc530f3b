//! What one config generation builds: the routing table (who is a trunk,
//! who is the PBX, where each side's requests go) and the screener. The
//! proxy holds the current `Runtime` in an `ArcSwap`; a reload builds a new
//! one beside it and swaps it in whole, or keeps the old one on any error.
//! [`Runtime::decide`] is the one place a call's verdict, tags and
//! responsible person are decided.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::{ConfigError, Diagnostic, ForwardMode, Loaded, TransportKind};
use crate::contacts::Contact;
use crate::screening::exceptions::ExceptionSet;
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
    /// Where requests for this peer go.
    pub target: SocketAddr,
    /// Transport towards it.
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
    /// Whether `ip` belongs to this peer (a source network or its target).
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.target.ip() == ip || self.sources.iter().any(|n| n.contains(&ip))
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

/// A peer's TLS client side, built when its transport is TLS; an error
/// is located at `span` (the trunk's name).
fn peer_tls(
    loaded: &Loaded,
    transport: TransportKind,
    tls: &crate::config::PeerTlsConfig,
    target: SocketAddr,
    who: &str,
    span: std::ops::Range<usize>,
) -> Result<Option<Arc<crate::tls::ClientTls>>, ConfigError> {
    if transport != TransportKind::Tls {
        return Ok(None);
    }
    let ca = loaded.config.tls.ca.as_ref().map(|c| c.get_ref().as_path());
    crate::tls::client(tls, ca, target.ip())
        .map(|c| Some(Arc::new(c)))
        .map_err(|e| loaded.error(vec![Diagnostic::new(span, format!("{who}: {e}"))]))
}

impl Routing {
    fn build(loaded: &Loaded) -> Result<Routing, ConfigError> {
        let cfg = &loaded.config;
        let pbx_tls = cfg.pbx.tls();
        let pbx = Peer {
            name: "pbx".to_string(),
            target: cfg.pbx.target,
            transport: cfg.pbx.transport,
            sources: cfg.pbx.sources.clone(),
            trust_pai: true,
            tls: peer_tls(
                loaded,
                cfg.pbx.transport,
                &pbx_tls,
                cfg.pbx.target,
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
                Ok(Peer {
                    name: t.name.get_ref().clone(),
                    target: t.target,
                    transport: t.transport,
                    sources: t.sources.clone(),
                    trust_pai: t.trust_pai,
                    tls: peer_tls(loaded, t.transport, &tls, t.target, &who, t.name.span())?,
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
        let routing = Routing::build(&loaded)?;
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
        let screening = self.screener.screen(direction, line_user, client_user);
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
