//! The TOML schema: every key an operator can write, with defaults that work.
//!
//! Structs here are plain data (`serde` + `#[serde(default)]`); meaning is
//! checked in `validate.rs`. Values that validation must point back at are
//! kept as `toml::Spanned` so errors can name line and column.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SIP listeners and limits.
    #[serde(default)]
    pub sip: SipConfig,
    /// The PBX: where inbound calls go, and whose requests are outbound calls.
    pub pbx: PbxConfig,
    /// Carrier trunks: where outbound calls go, and whose requests are inbound.
    #[serde(default, rename = "trunk")]
    pub trunks: Vec<TrunkConfig>,
    /// How numbers are normalised and what withheld callers get.
    #[serde(default)]
    pub screening: ScreeningConfig,
    /// The admin HTTP listener (metrics, health, later the API).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Where durable state lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// CRM integration settings for numbers without a `[[line]]`.
    #[serde(default)]
    pub defaults: LineDefaults,
    /// Per-number CRM integration settings.
    #[serde(default, rename = "line")]
    pub lines: Vec<LineConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Call tracking and the call log.
    #[serde(default)]
    pub calls: CallsConfig,
    /// CRM delivery: sinks for call events.
    #[serde(default)]
    pub crm: CrmConfig,
    /// Resolving targets written as names, and the destination blocklist.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Flood protection: per-source rate limits, bans, scanner filter.
    #[serde(default)]
    pub flood: FloodConfig,
    /// Our TLS certificate and the CA peers' certificates are checked against.
    #[serde(default)]
    pub tls: TlsConfig,
}

/// `[flood]`: per-source request density limits (as Kamailio's pike),
/// bans, and the scanner User-Agent filter. The defaults ban an unknown
/// source that sends more than `unknown_limit` messages in a window and
/// never ban a configured peer.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FloodConfig {
    /// Sampling window, in milliseconds.
    pub window_ms: u64,
    /// Messages an unknown source may send per window before it is banned.
    pub unknown_limit: u32,
    /// Requests a configured peer (trunk, PBX) may send per window; over
    /// it new calls and out-of-dialog requests get 503 with Retry-After
    /// (in-dialog requests always pass). 0: no limit.
    pub peer_limit: u32,
    /// How long a ban lasts, in seconds.
    pub ban_secs: u64,
    /// Whether a peer over its limit is banned too (off: only limited).
    pub ban_peers: bool,
    /// Whether an unknown source sending a scanner User-Agent is banned.
    pub ban_scanners: bool,
    /// User-Agent substrings (case-insensitive) whose requests are dropped
    /// without an answer.
    pub user_agents: UserAgents,
    /// Networks never counted, limited or banned.
    pub allow: Vec<IpNet>,
    /// IPv6 sources are counted and banned per prefix of this length (a
    /// host owns a /64, and can send from any address in it).
    pub ipv6_prefix: u8,
}

/// Scanner User-Agents, from the lists fail2ban's asterisk filter,
/// Kamailio's secfilter and OpenSIPS deployments block: SIPVicious
/// (`friendly-scanner`, `sipvicious`), sipcli, sip-scan, SIPVicious' forks
/// and the usual toll-fraud tools.
pub const SCANNER_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipscan",
    "sundayddr",
    "iWar",
    "VaxSIPUserAgent",
    "VaxIPUserAgent",
    "SIVuS",
    "sipsploit",
    "siparmyknife",
];

/// `[flood] user_agents`: the names as written, and one matcher for all of
/// them, built when the config is read (an Aho-Corasick automaton, ASCII
/// case ignored): every request's User-Agent is searched for every name in
/// one pass, where a search per name cost ~2,800 instructions per call on
/// the SIPp load. Empty names match nothing (validation refuses them).
#[derive(Clone)]
pub struct UserAgents {
    names: Vec<String>,
    matcher: Option<aho_corasick::AhoCorasick>,
}

impl UserAgents {
    /// The matcher of `names`; an error when they are too many or too long
    /// for one automaton.
    pub fn new(names: Vec<String>) -> Result<UserAgents, String> {
        let patterns: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| !n.is_empty())
            .collect();
        let matcher = if patterns.is_empty() {
            None
        } else {
            let built = aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(&patterns)
                .map_err(|e| format!("flood.user_agents: {e}"))?;
            Some(built)
        };
        Ok(UserAgents { names, matcher })
    }

    /// Whether `user_agent` holds one of the names, ASCII case ignored.
    pub fn matches(&self, user_agent: &[u8]) -> bool {
        self.matcher
            .as_ref()
            .is_some_and(|m| m.is_match(user_agent))
    }
}

impl std::ops::Deref for UserAgents {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.names
    }
}

impl std::fmt::Debug for UserAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.names.fmt(f)
    }
}

impl<'de> Deserialize<'de> for UserAgents {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UserAgents, D::Error> {
        UserAgents::new(Vec::<String>::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            window_ms: 2000,
            unknown_limit: 60,
            peer_limit: 20_000,
            ban_secs: 300,
            ban_peers: false,
            ban_scanners: true,
            user_agents: UserAgents::new(
                SCANNER_USER_AGENTS.iter().map(|s| s.to_string()).collect(),
            )
            .expect("the built-in names fit"),
            allow: Vec::new(),
            ipv6_prefix: 64,
        }
    }
}

/// `[tls]`: PEM files, re-read on every reload (SIGHUP).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Our certificate chain (leaf first) for the `[sip] tls` listeners.
    pub cert: Option<Spanned<PathBuf>>,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<Spanned<PathBuf>>,
    /// CA certificates: verify client certificates (`tls_verify_client`)
    /// and, for peers without their own `tls_ca`, servers instead of the
    /// system roots.
    pub ca: Option<Spanned<PathBuf>>,
}

/// A peer's TLS settings (`transport = "tls"`), as written in its table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTlsConfig {
    /// SNI and the name its certificate must carry (default: the target host).
    pub server_name: Option<String>,
    /// CA file its server certificate is verified against (default: `[tls]
    /// ca`, else the system roots).
    pub ca: Option<PathBuf>,
    /// Our client certificate chain and key towards it (mutual TLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Its TLS connections to us must present a certificate that `[tls]
    /// ca` verifies (Microsoft Teams Direct Routing).
    pub verify_client: bool,
}

impl PeerTlsConfig {
    /// From a peer table's `tls_server_name`, `[tls_ca, tls_cert,
    /// tls_key]` and `tls_verify_client`.
    fn of(
        server_name: &Option<String>,
        [ca, cert, key]: [&Option<PathBuf>; 3],
        verify_client: bool,
    ) -> Self {
        PeerTlsConfig {
            server_name: server_name.clone(),
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            verify_client,
        }
    }
}

/// `[dns]`: the background resolver of targets written as names (RFC
/// 3263) and the blocklist failover uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers to ask (port 53 if none given); empty: the system's
    /// (`/etc/resolv.conf`).
    pub servers: Vec<Spanned<String>>,
    /// Answers are refreshed after their TTL, but never sooner than this…
    pub min_ttl_secs: u64,
    /// …and never later than this.
    pub max_ttl_secs: u64,
    /// After a failed refresh (the last good answer is kept), try again
    /// after this long.
    pub retry_secs: u64,
    /// One DNS query may take this long.
    pub timeout_ms: u64,
    /// At start, how long "ready" waits for the first resolution of
    /// every name (then it starts anyway; see the README).
    pub start_wait_ms: u64,
    /// A target that refused (ICMP unreachable, TCP refused, a 503) is
    /// skipped for this long.
    pub blocklist_secs: u64,
    /// Send an OPTIONS to every resolved target this often (0: never),
    /// as Kamailio's dispatcher does: any answer marks it up…
    pub ping_interval_secs: u64,
    /// …and this many pings in a row without one mark it down (skipped
    /// like a blocklisted one until it answers again).
    pub ping_threshold: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            min_ttl_secs: 5,
            max_ttl_secs: 3600,
            retry_secs: 5,
            timeout_ms: 2000,
            start_wait_ms: 5000,
            blocklist_secs: 60,
            ping_interval_secs: 0,
            ping_threshold: 3,
        }
    }
}

/// One of a peer's `targets = [{ target = "...", priority = 1 }, ...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetEntry {
    /// IP:port, host[:port] or a SIP URI (`config::target`).
    pub target: Spanned<String>,
    /// Lower goes first; equal priorities share calls by `weight`.
    #[serde(default = "default_priority")]
    pub priority: u16,
    /// Share among equal priorities.
    #[serde(default = "default_weight")]
    pub weight: u16,
}

fn default_priority() -> u16 {
    1
}
fn default_weight() -> u16 {
    1
}

/// A peer's targets: `target = "..."` alone, or the `targets` list.
pub fn target_entries(
    target: &Option<Spanned<String>>,
    targets: &[TargetEntry],
) -> Vec<TargetEntry> {
    let mut all: Vec<TargetEntry> = target
        .iter()
        .map(|t| TargetEntry {
            target: t.clone(),
            priority: default_priority(),
            weight: default_weight(),
        })
        .collect();
    all.extend_from_slice(targets);
    all
}

/// `[calls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallsConfig {
    /// A call with no SIP activity for this long is ended as `expired`.
    pub max_call_secs: u64,
    /// The call log (`calls.jsonl` in the data directory) is rotated at
    /// this size.
    pub log_max_bytes: u64,
    /// Rotated call logs kept (`calls.jsonl.1` … `.N`).
    pub log_keep: usize,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            max_call_secs: 4 * 3600,
            log_max_bytes: 64 << 20,
            log_keep: 5,
        }
    }
}

/// `[crm]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrmConfig {
    /// Undelivered events older than this go to the dead-letter table.
    pub max_event_age_secs: u64,
    /// At shutdown, how long the sinks may go on delivering what is queued
    /// (stopping sooner when the queue is empty or a sink is failing).
    pub shutdown_grace_secs: u64,
    /// Generic webhooks.
    pub webhook: Vec<WebhookSink>,
    /// Bitrix24 portals.
    pub bitrix24: Vec<Bitrix24Sink>,
}

impl Default for CrmConfig {
    fn default() -> Self {
        CrmConfig {
            max_event_age_secs: 24 * 3600,
            shutdown_grace_secs: 5,
            webhook: Vec::new(),
            bitrix24: Vec::new(),
        }
    }
}

/// `[[crm.webhook]]`: a JSON POST per event, signed with HMAC-SHA256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSink {
    pub name: String,
    pub url: String,
    /// Environment variable holding the HMAC secret (or `secret` itself).
    pub secret_env: Option<String>,
    pub secret: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests per second (leaky bucket) and burst.
    #[serde(default = "default_webhook_rate")]
    pub rate_per_sec: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
}

/// `[[crm.bitrix24]]`: `telephony.externalcall.register` / `.finish`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bitrix24Sink {
    pub name: String,
    /// Inbound webhook URL `https://PORTAL/rest/USER/CODE/`, or the
    /// environment variable holding it (it is a credential).
    pub webhook_url_env: Option<String>,
    pub webhook_url: Option<String>,
    /// Installed application: the portal's REST base
    /// (`https://PORTAL/rest/`) plus OAuth credentials from the environment.
    pub rest_url: Option<String>,
    /// Each credential from an environment variable (`*_env`, preferred)
    /// or written in the config.
    pub client_id_env: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret: Option<String>,
    pub refresh_token_env: Option<String>,
    pub refresh_token: Option<String>,
    /// OAuth token endpoint.
    #[serde(default = "default_oauth_url")]
    pub oauth_url: String,
    /// Which register/finish field carries the responsible person.
    #[serde(default = "default_user_field")]
    pub user_field: String,
    /// The portal user a call without a responsible person is registered
    /// for (register requires `USER_ID` or `USER_PHONE_INNER`).
    pub default_user: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Bitrix24's documented limit: 2 requests/s, burst 50.
    #[serde(default = "default_bitrix_rate")]
    pub rate_per_sec: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// The application's install handler (plain HTTP; put it behind a
    /// reverse proxy for the portal's HTTPS). None: connect by code only.
    pub install_listen: Option<std::net::SocketAddr>,
    /// Keep the portal's external lines in step with the `[[line]]`s.
    #[serde(default = "default_true")]
    pub sync_lines: bool,
    /// Fill the contacts directory from the portal's contacts, companies
    /// and leads (and look up unknown callers).
    #[serde(default = "default_true")]
    pub sync_directory: bool,
    /// Between incremental directory syncs.
    #[serde(default = "default_directory_every")]
    pub directory_every_secs: u64,
    /// The directory sync's own requests per second.
    #[serde(default = "default_directory_rate")]
    pub directory_rate_per_sec: f64,
}

fn default_directory_every() -> u64 {
    900
}

fn default_directory_rate() -> f64 {
    0.5
}

fn default_true() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    5000
}
fn default_webhook_rate() -> f64 {
    20.0
}
fn default_bitrix_rate() -> f64 {
    2.0
}
fn default_burst() -> u32 {
    50
}
fn default_oauth_url() -> String {
    "https://oauth.bitrix.info/oauth/token/".to_string()
}
fn default_user_field() -> String {
    "USER_ID".to_string()
}

/// Transport protocol of a SIP hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    #[default]
    Udp,
    Tcp,
    /// SIP over TLS (RFC 3261 §26.2): TCP framing inside a TLS stream.
    Tls,
}

impl TransportKind {
    /// Every transport, in discriminant order.
    pub const ALL: [TransportKind; 3] =
        [TransportKind::Udp, TransportKind::Tcp, TransportKind::Tls];

    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
        }
    }

    /// Whether it runs over a connection (framing, connection reuse).
    pub fn is_stream(self) -> bool {
        self != TransportKind::Udp
    }
}

/// `[sip]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// UDP listen addresses.
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses.
    pub tcp: Vec<SocketAddr>,
    /// TLS listen addresses (need `[tls] cert` and `key`).
    pub tls: Vec<SocketAddr>,
    /// Largest message accepted on any transport, in bytes (headers + body).
    pub max_message_bytes: usize,
    /// Host written into our Via and Record-Route; default: the listener's IP.
    pub advertise: Option<String>,
    /// Most TCP and TLS connections at once (accepted + opened by us).
    pub max_tcp_connections: usize,
    /// A TCP connection silent for this long is closed, in seconds.
    pub tcp_idle_timeout_secs: u64,
    /// Threads receiving (and handling) datagrams on each UDP listener.
    pub udp_receivers: usize,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            udp: vec!["127.0.0.1:5060".parse().expect("literal address")],
            tcp: vec!["127.0.0.1:5060".parse().expect("literal address")],
            tls: Vec::new(),
            max_message_bytes: 65536,
            advertise: None,
            max_tcp_connections: 4096,
            tcp_idle_timeout_secs: 600,
            udp_receivers: 1,
        }
    }
}

/// `[pbx]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PbxConfig {
    /// Where inbound calls are forwarded: IP:port, host[:port] or a SIP
    /// URI (`config::target`).
    #[serde(default)]
    pub target: Option<Spanned<String>>,
    /// Several targets with priorities (instead of, or besides, `target`).
    #[serde(default)]
    pub targets: Vec<TargetEntry>,
    /// Transport towards the PBX.
    #[serde(default)]
    pub transport: TransportKind,
    /// Source networks whose requests are outbound calls.
    #[serde(default)]
    pub sources: Vec<IpNet>,
    /// TLS towards the PBX (see [`PeerTlsConfig`]).
    pub tls_server_name: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub tls_verify_client: bool,
}

impl PbxConfig {
    /// Its TLS settings as one value.
    pub fn tls(&self) -> PeerTlsConfig {
        PeerTlsConfig::of(
            &self.tls_server_name,
            [&self.tls_ca, &self.tls_cert, &self.tls_key],
            self.tls_verify_client,
        )
    }
}

/// `[[trunk]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// Name lines refer to with `trunk = "..."`.
    pub name: Spanned<String>,
    /// Where outbound calls on this trunk are forwarded: IP:port,
    /// host[:port] or a SIP URI (`config::target`).
    #[serde(default)]
    pub target: Option<Spanned<String>>,
    /// Several targets with priorities (instead of, or besides, `target`).
    #[serde(default)]
    pub targets: Vec<TargetEntry>,
    /// Transport towards the trunk.
    #[serde(default)]
    pub transport: TransportKind,
    /// Source networks whose requests are inbound calls from this trunk.
    #[serde(default)]
    pub sources: Vec<IpNet>,
    /// Whether this carrier's P-Asserted-Identity names the caller.
    #[serde(default)]
    pub trust_pai: bool,
    /// TLS towards (and from) the trunk (see [`PeerTlsConfig`]).
    pub tls_server_name: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub tls_verify_client: bool,
}

impl TrunkConfig {
    /// Its TLS settings as one value.
    pub fn tls(&self) -> PeerTlsConfig {
        PeerTlsConfig::of(
            &self.tls_server_name,
            [&self.tls_ca, &self.tls_cert, &self.tls_key],
            self.tls_verify_client,
        )
    }
}

/// Verdict given to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The call may create CRM records.
    #[default]
    Log,
    /// The call stays out of the CRM (listed number).
    Exception,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Log => "log",
            Verdict::Exception => "exception",
        }
    }
}

/// Default of `[screening] max_range_numbers`: a range covering more
/// numbers needs the explicit "large" mark.
pub const DEFAULT_MAX_RANGE_NUMBERS: u64 = 100_000;

/// `[screening]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScreeningConfig {
    /// ISO 3166 region for national-format numbers (`030…` -> `+4930…`).
    pub default_region: Spanned<String>,
    /// Verdict for withheld / anonymous / non-numeric callers.
    pub anonymous: Verdict,
    /// Optional seed list: `VALUE; comment` per line.
    pub exceptions_file: Option<Spanned<PathBuf>>,
    /// Country codes that mark a bare digit string (no `+`, no `00`) as
    /// international, e.g. `["49"]` reads `4930901820` as `+4930901820`.
    pub bare_country_codes: Vec<String>,
    /// A range entry covering more numbers needs the "large" mark
    /// (`large` in import lines, `"large": true` in the API).
    pub max_range_numbers: u64,
}

impl Default for ScreeningConfig {
    fn default() -> Self {
        ScreeningConfig {
            default_region: Spanned::new(0..0, "DE".to_string()),
            anonymous: Verdict::Log,
            exceptions_file: None,
            bare_country_codes: Vec::new(),
            max_range_numbers: DEFAULT_MAX_RANGE_NUMBERS,
        }
    }
}

/// Role of an admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    View,
    Edit,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address of the admin HTTP server; none disables it.
    pub listen: Option<SocketAddr>,
    /// API tokens (hashes only).
    pub tokens: Vec<TokenConfig>,
    /// Require a token (any role) for `/metrics` too.
    pub protect_metrics: bool,
    /// Largest accepted `POST /exceptions/import` body, in bytes.
    pub import_max_bytes: u64,
    /// Largest accepted JSON request body, in bytes.
    pub json_max_bytes: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some("127.0.0.1:8080".parse().expect("literal address")),
            tokens: Vec::new(),
            protect_metrics: false,
            import_max_bytes: 512 << 20,
            json_max_bytes: 1 << 20,
        }
    }
}

/// `[[admin.tokens]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name recorded as the actor of changes.
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// Hex SHA-256 of the token (the token itself is never stored).
    pub sha256: Option<Spanned<String>>,
    /// Or: environment variable holding the token.
    pub env: Option<String>,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory for the embedded store (created if missing).
    pub data_dir: PathBuf,
    /// `sqlite` (the embedded file, default) or `postgres` (shared by a
    /// fleet).
    pub kind: Spanned<StoreKind>,
    /// With `kind = "postgres"`: the environment variable holding the
    /// `postgres://` URL (the URL itself is never in the config).
    pub url_env: Option<Spanned<String>>,
    /// Connections in the PostgreSQL pool.
    pub pool_size: Spanned<usize>,
    /// CA certificates (PEM) the PostgreSQL server's certificate must
    /// chain to, with `sslmode=require` or `verify-full` in the URL
    /// (default: the system roots).
    pub ca: Option<Spanned<PathBuf>>,
    /// With `kind = "postgres"`: how often a node reads the change log
    /// even without a notification (a missed one costs at most this).
    pub poll_secs: Spanned<u64>,
    /// With `kind = "postgres"`: how long change-log rows are kept (a node
    /// away for longer reloads the whole list when it comes back).
    pub changes_keep_secs: u64,
    /// With `kind = "postgres"`: how long a node's claim on a call's CRM
    /// events holds; a node that dies loses its calls to another after it.
    pub lease_secs: Spanned<u64>,
}

/// `[store] kind`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Sqlite,
    Postgres,
}

/// `[store] pool_size` when not set.
pub const DEFAULT_POOL_SIZE: usize = 8;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("data"),
            kind: Spanned::new(0..0, StoreKind::Sqlite),
            url_env: None,
            pool_size: Spanned::new(0..0, DEFAULT_POOL_SIZE),
            ca: None,
            poll_secs: Spanned::new(0..0, 5),
            changes_keep_secs: 7 * 24 * 3600,
            lease_secs: Spanned::new(0..0, 30),
        }
    }
}

/// What an unknown caller creates in the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CreateMode {
    /// Create the record automatically.
    #[default]
    Auto,
    /// Offer it to the agent in the call window.
    Offer,
    /// Create nothing.
    Off,
}

/// For which calls records are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CreateFor {
    Incoming,
    Outgoing,
    #[default]
    All,
}

/// Classic CRM creates a lead, simple CRM a contact plus a deal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CrmMode {
    #[default]
    Classic,
    Simple,
}

/// How a call for a known client reaches their responsible person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// Only `X-CRM-Responsible` (the PBX's dialplan routes on it).
    #[default]
    Header,
    /// Also rewrite the Request-URI user to the responsible's extension.
    Ruri,
}

/// `[defaults]`: CRM integration for numbers without a `[[line]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LineDefaults {
    pub create: CreateMode,
    pub create_for: CreateFor,
    pub crm_mode: CrmMode,
    /// CRM source id written as `X-CRM-Source`.
    pub source: String,
    /// Deal pipeline (simple CRM).
    pub pipeline: Option<String>,
    /// Queue; its first member is the default responsible person.
    pub queue: Vec<String>,
    pub forward_to_responsible: bool,
    /// `header` or `ruri` (with `forward_to_responsible`).
    pub forward: ForwardMode,
    pub change_responsible_on_transfer: bool,
    /// A transfer also updates the contacts directory.
    pub update_directory_on_transfer: bool,
    /// Trunk for outbound calls (default: the first `[[trunk]]`).
    pub trunk: Option<Spanned<String>>,
    /// Region for national-format numbers on this line.
    pub region: Option<Spanned<String>>,
    /// What a failed STIR/SHAKEN verification (trusted trunks) does.
    pub on_verstat_failed: OnVerstatFailed,
}

/// `on_verstat_failed`: what a call whose caller failed STIR/SHAKEN
/// verification (`verstat=TN-Validation-Failed` from a `trust_pai` trunk)
/// gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnVerstatFailed {
    /// Screened as any other call (the tag still says `failed`).
    #[default]
    Ignore,
    /// Forwarded with verdict `exception`: never reaches the CRM.
    Exception,
    /// Answered 608 Rejected (RFC 8688), not forwarded.
    Reject,
}

impl Default for LineDefaults {
    fn default() -> Self {
        LineDefaults {
            create: CreateMode::Auto,
            create_for: CreateFor::All,
            crm_mode: CrmMode::Classic,
            source: "CALL".to_string(),
            pipeline: None,
            queue: Vec::new(),
            forward_to_responsible: false,
            forward: ForwardMode::Header,
            change_responsible_on_transfer: false,
            update_directory_on_transfer: false,
            trunk: None,
            region: None,
            on_verstat_failed: OnVerstatFailed::Ignore,
        }
    }
}

/// `[[line]]`: one rented number; unset keys fall back to `[defaults]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    /// The line's number, any format the region understands.
    pub number: Spanned<String>,
    /// The line's name in the CRM (Bitrix24 `telephony.externalLine`).
    pub name: Option<String>,
    pub create: Option<CreateMode>,
    pub create_for: Option<CreateFor>,
    pub crm_mode: Option<CrmMode>,
    pub source: Option<String>,
    pub pipeline: Option<String>,
    pub queue: Option<Vec<String>>,
    pub forward_to_responsible: Option<bool>,
    pub forward: Option<ForwardMode>,
    pub change_responsible_on_transfer: Option<bool>,
    pub update_directory_on_transfer: Option<bool>,
    pub trunk: Option<Spanned<String>>,
    pub region: Option<Spanned<String>>,
    pub on_verstat_failed: Option<OnVerstatFailed>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json` (the `--log-json` flag overrides).
    pub format: LogFormat,
    /// Filter in `RUST_LOG` syntax (the environment variable overrides).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".to_string(),
        }
    }
}
