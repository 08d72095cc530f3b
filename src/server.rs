//! Wires the parts together: opens the store and loads the exception list
//! from it, builds the first runtime, binds the transports and the admin
//! listener, and runs until shutdown. Reloads (SIGHUP) build a complete new
//! generation beside the running one and swap it in, or log the error,
//! count it and keep the old. The exceptions file named in the config is
//! an import source: imported into the store when its content changed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::admin;
use crate::api::{ApiState, auth::Tokens};
use crate::calls::log::CallLog;
use crate::calls::tracker::{Tracker, TrackerConfig};
use crate::calls::{self, CallEvents, SipEvent};
use crate::config::{self, ConfigError};
use crate::crm::{self, SinkWorker};
use crate::metrics::Metrics;
use crate::proxy::{Local, Proxy};
use crate::runtime::Runtime;
use crate::screening::exceptions::ExceptionSet;

use crate::shutdown::Shutdown;
use crate::store::OutboxStore;
use crate::store::service::Exceptions;
use crate::transport;
use std::sync::mpsc::Receiver;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("exceptions file: {0}")]
    ExceptionsImport(#[from] crate::store::service::FileImportError),
    #[error("a start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("[admin] tokens: {0}")]
    Tokens(#[from] crate::api::auth::TokenError),
    #[error("[crm]: {0}")]
    Crm(#[from] crm::factory::SinkConfigError),
    #[error("[dns]: {0}")]
    Dns(String),
    #[error("call log: {0}")]
    CallLog(std::io::Error),
    #[error("cannot bind {what}: {source}")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running sidecar's handles (tests reach ports and state through it).
pub struct Server {
    /// The proxy core.
    pub proxy: Arc<Proxy>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The exception set shared by every generation.
    pub exceptions: Arc<ExceptionSet>,
    /// The exception list: store + set.
    pub list: Arc<Exceptions>,
    /// API tokens, swapped on reload.
    pub tokens: Arc<ArcSwap<Tokens>>,
    /// The store (exceptions, outbox).
    pub store: Arc<dyn crate::store::Store>,
    /// CRM sinks (their workers are started by `run`).
    sinks: Vec<SinkWorker>,
    /// The Bitrix24 sinks again, with their config (connect, install,
    /// line sync).
    bitrix24: Vec<(Arc<crm::bitrix24::Bitrix24>, crate::config::Bitrix24Sink)>,
    /// The lines the portals should have (sent again on reload).
    crm_lines: tokio::sync::watch::Sender<Arc<Vec<crm::lines::CrmLine>>>,
    /// Actual UDP listen addresses.
    pub udp: Vec<SocketAddr>,
    /// Actual TCP listen addresses.
    pub tcp: Vec<SocketAddr>,
    /// Actual TLS listen addresses.
    pub tls: Vec<SocketAddr>,
    /// Actual admin listen address.
    pub admin: Option<SocketAddr>,
    /// A shared store's reachability (`None`: the embedded store).
    pub store_health: Option<Arc<crate::store::follow::StoreHealth>>,
    config_path: PathBuf,
}

/// What [`Server::bind`] built and [`Bound::run`] consumes: the shared
/// handles, and the parts that only the run owns (the bound listeners and
/// the call tracker with its channel).
pub struct Bound {
    /// Shared with reloads, the admin API and tests.
    pub server: Arc<Server>,
    /// The SIP listeners, bound.
    transports: transport::Transports,
    /// The admin listener, bound.
    admin_listener: Option<tokio::net::TcpListener>,
    /// The call tracker (calls restored) and what the SIP path sends it.
    tracker: (Tracker, Receiver<SipEvent>),
    /// The Bitrix24 install handlers, bound.
    install: Vec<(Arc<crm::bitrix24::App>, tokio::net::TcpListener)>,
    /// A fleet's store and the change-log position its follower starts at.
    fleet: Option<(Arc<crate::store::postgres::PgStore>, i64)>,
}

/// Imports the config's exceptions file into the store if it changed
/// since the last import; refused lines are logged with their numbers.
fn import_file(list: &Exceptions, runtime: &Runtime) -> Result<(), ServerError> {
    let Some(path) = &runtime.loaded.config.screening.exceptions_file else {
        return Ok(());
    };
    let path = path.get_ref();
    let report = list.import_file_if_changed(path, &runtime.screener)?;
    if let Some(r) = report {
        for x in &r.refused_lines {
            tracing::warn!(file = %path.display(), line = x.line, text = %x.text, reason = %x.reason, "exception entry refused");
        }
        tracing::info!(file = %path.display(), added = r.added, updated = r.updated, refused = r.refused, "exceptions file imported into the store");
    }
    Ok(())
}

/// The targets' clock and metrics.
fn target_env(metrics: &Metrics) -> crate::runtime::TargetEnv {
    crate::runtime::TargetEnv {
        clock: crate::clock::Clock::system(),
        metrics: metrics.dns.clone(),
    }
}

/// Starts the resolver task of a generation (it ends with it).
fn start_resolver(runtime: &Runtime) -> Result<crate::dns::Started, ServerError> {
    let peers: Vec<_> = runtime.routing.peers().map(|p| p.targets.clone()).collect();
    crate::dns::spawn(&peers, &runtime.loaded.config.dns).map_err(ServerError::Dns)
}

impl Server {
    /// Loads the config at `path`, binds every listener. Nothing runs yet.
    pub async fn bind(path: &Path) -> Result<Bound, ServerError> {
        let metrics = Arc::new(Metrics::new());
        let exceptions = Arc::new(ExceptionSet::new());
        let loaded = config::load(path)?;
        let runtime = Runtime::build_with(loaded, exceptions.clone(), &target_env(&metrics))?;
        let mut resolving = start_resolver(&runtime)?;
        let tokens = Tokens::from_config(&runtime.loaded.config)?;
        let store_cfg = runtime.loaded.config.store.clone();
        let store =
            tokio::task::spawn_blocking(move || crate::store::open::open(&store_cfg)).await??;
        tracing::info!(store = %store.describe(), "store open");
        // A fleet: the change-log position before anything is loaded (what
        // is written meanwhile is applied again, harmlessly).
        let fleet = match store.clone().as_postgres() {
            Some(pg) => {
                let p = pg.clone();
                p.node().set_lease(Duration::from_secs(
                    *runtime.loaded.config.store.lease_secs.get_ref(),
                ));
                let pos = tokio::task::spawn_blocking(move || {
                    crate::store::follow::ChangeLog::latest_change(&*p)
                })
                .await??;
                Some((pg, pos))
            }
            None => None,
        };
        let contacts = Arc::new(crate::contacts::Directory::new());
        {
            let st = store.clone();
            let all =
                tokio::task::spawn_blocking(move || crate::store::ContactStore::all_contacts(&*st))
                    .await??;
            contacts.replace_all(all);
        }
        let runtime = runtime.with_contacts(contacts.clone());
        let list = Arc::new(Exceptions::new(
            store.clone(),
            exceptions.clone(),
            metrics.clone(),
        ));
        let started = std::time::Instant::now();
        let l = list.clone();
        let (p, e) = tokio::task::spawn_blocking(move || l.load()).await??;
        tracing::info!(
            phones = p,
            emails = e,
            ms = started.elapsed().as_millis() as u64,
            "exception list loaded from the store"
        );
        import_file(&list, &runtime)?;
        let (p, e) = exceptions.counts();
        let cfg = runtime.loaded.config.clone();
        let transports = transport::bind(&cfg.sip, metrics.clone())
            .await
            .map_err(|source| ServerError::Bind {
                what: "SIP listeners".to_string(),
                source,
            })?;
        let udp = transports.udp_addrs();
        let tcp = transports.tcp_addrs();
        let tls = transports.tls_addrs();
        let local = Local::new(
            cfg.sip.advertise.as_deref(),
            udp.first().copied(),
            tcp.first().copied(),
        )
        .with_tls(tls.first().copied());
        let admin_listener = match cfg.admin.listen {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|source| {
                ServerError::Bind {
                    what: format!("admin listener {a}"),
                    source,
                }
            })?),
            None => None,
        };
        let admin = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let crm::Sinks {
            workers: sinks,
            bitrix24,
        } = crm::build_sinks(&cfg.crm, Some(&store), Some(&metrics))?;
        for (s, _) in &sinks {
            metrics.register_sink(s.name());
            metrics.set_crm_connected(s.name(), s.connected());
        }
        let mut install = Vec::new();
        for (b, c) in &bitrix24 {
            if let Some(a) = c.install_listen {
                let l =
                    tokio::net::TcpListener::bind(a)
                        .await
                        .map_err(|source| ServerError::Bind {
                            what: format!("[crm.bitrix24] {:?} install_listen {a}", c.name),
                            source,
                        })?;
                let at = l.local_addr().map_err(|source| ServerError::Bind {
                    what: format!("install_listen {a}"),
                    source,
                })?;
                tracing::info!(sink = %c.name, install = %at, "Bitrix24 install handler listening");
                install.push((b.app().clone(), l));
            }
        }
        let crm_lines =
            tokio::sync::watch::Sender::new(Arc::new(crm::lines::wanted(runtime.screener.lines())));
        let data_dir = &cfg.store.data_dir;
        let call_log = CallLog::open(data_dir, cfg.calls.log_max_bytes, cfg.calls.log_keep)
            .map_err(ServerError::CallLog)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(calls::CHANNEL);
        let mut tracker = Tracker::new(
            call_log,
            store.clone(),
            metrics.clone(),
            TrackerConfig {
                max_idle: std::time::Duration::from_secs(cfg.calls.max_call_secs.max(1)),
                sinks: sinks.iter().map(|(s, _)| s.name().to_string()).collect(),
                directory: Some((store.clone(), contacts.clone())),
            },
        );
        // Calls in progress when the last run stopped, before any SIP
        // event can reach the tracker. In a fleet the store holds every
        // node's calls: each comes back to the node its next request
        // reaches (the tracker looks it up then), none is taken at start.
        let st = store.clone();
        let shared = fleet.is_some();
        let kept = tokio::task::spawn_blocking(move || {
            if shared {
                Ok(Vec::new())
            } else {
                crate::store::CallStore::active_calls(&*st)
            }
        })
        .await??;
        let found = kept.len();
        let restored = tracker.restore(kept, crate::clock::now_ms());
        if found > 0 {
            tracing::info!(
                found,
                restored,
                active = tracker.active(),
                "calls in progress restored from the store"
            );
        }
        // Targets written as names get their first answer before "ready"
        // (bounded): the first call has a target. A name that does not
        // resolve by then does not stop the start; see `unresolved`.
        let wait = Duration::from_millis(cfg.dns.start_wait_ms);
        if !resolving.first_pass(wait).await {
            tracing::warn!(
                ms = cfg.dns.start_wait_ms,
                "DNS: first resolution of the targets not finished at start, serving anyway"
            );
        }
        for peer in runtime.routing.unresolved() {
            tracing::warn!(
                peer,
                "no target of this peer resolved: its calls get 503 and /readyz is 503 until one does"
            );
        }
        let proxy = Arc::new(Proxy::new(runtime, local, metrics.clone()));
        proxy.track_calls(CallEvents::new(tx, metrics.clone()));
        // Last: everything that can refuse to start has been built.
        tracing::info!(udp = ?udp, tcp = ?tcp, tls = ?tls, admin = ?admin, phones = p, emails = e, "sipscreen ready");
        let server = Arc::new(Server {
            store,
            sinks,
            bitrix24,
            crm_lines,
            proxy,
            metrics,
            exceptions,
            list,
            tokens: Arc::new(ArcSwap::from_pointee(tokens)),
            udp,
            tcp,
            tls,
            admin,
            store_health: fleet
                .as_ref()
                .map(|(pg, _)| Arc::new(crate::store::follow::StoreHealth::new(pg.shown()))),
            config_path: path.to_path_buf(),
        });
        Ok(Bound {
            server,
            transports,
            admin_listener,
            tracker: (tracker, rx),
            install,
            fleet,
        })
    }

    /// Builds a new generation from the config file and swaps it in; on
    /// any error the running one stays. Returns the error for the caller
    /// to report.
    pub fn reload(&self) -> Result<(), ServerError> {
        let result = (|| {
            let loaded = config::load(&self.config_path)?;
            let runtime =
                Runtime::build_with(loaded, self.exceptions.clone(), &target_env(&self.metrics))?
                    .with_contacts(self.proxy.runtime().contacts.clone());
            let tokens = Tokens::from_config(&runtime.loaded.config)?;
            let old = self.proxy.runtime();
            if old.loaded.config.sip.udp != runtime.loaded.config.sip.udp
                || old.loaded.config.sip.tcp != runtime.loaded.config.sip.tcp
                || old.loaded.config.sip.tls != runtime.loaded.config.sip.tls
                || old.loaded.config.sip.udp_receivers != runtime.loaded.config.sip.udp_receivers
            {
                tracing::warn!(
                    "listener addresses or udp_receivers changed: they take effect after a restart"
                );
            }
            let (was, now) = (&old.loaded.config.store, &runtime.loaded.config.store);
            if was.data_dir != now.data_dir
                || was.kind.get_ref() != now.kind.get_ref()
                || was.url_env.as_ref().map(|v| v.get_ref())
                    != now.url_env.as_ref().map(|v| v.get_ref())
                || was.pool_size.get_ref() != now.pool_size.get_ref()
            {
                tracing::warn!("[store] changed: it takes effect after a restart");
            }
            import_file(&self.list, &runtime)?;
            // Names keep serving what they resolved to (and their
            // blocklisting) until the new generation's task refreshes them.
            for p in runtime.routing.peers() {
                if let Some(o) = old.routing.peers().find(|o| o.name == p.name) {
                    p.targets.adopt(&o.targets);
                }
            }
            start_resolver(&runtime)?;
            let lines = crm::lines::wanted(runtime.screener.lines());
            self.crm_lines.send_if_modified(|old| {
                let changed = **old != lines;
                if changed {
                    *old = Arc::new(lines);
                }
                changed
            });
            self.tokens.store(Arc::new(tokens));
            self.proxy.swap(runtime);
            Ok(())
        })();
        self.metrics.reload(result.is_ok());
        match &result {
            Ok(()) => tracing::info!(config = %self.config_path.display(), "config reloaded"),
            Err(e) => {
                tracing::error!(config = %self.config_path.display(), error = %e, "config reload refused, the running config stays")
            }
        }
        result
    }
}

impl Server {
    /// What the API reaches of the CRM sinks.
    fn crm_state(&self) -> Arc<crate::api::crm::CrmState> {
        Arc::new(crate::api::crm::CrmState {
            apps: self.bitrix24.iter().map(|(b, _)| b.app().clone()).collect(),
            store: self.store.clone(),
        })
    }
}

impl Bound {
    /// Runs until `shutdown` fires: SIP, admin, and SIGHUP reloads; then
    /// shuts down in order (listeners, tracker, outbox grace, workers).
    pub async fn run(self, shutdown: Shutdown) {
        let Bound {
            server: me,
            transports,
            admin_listener,
            tracker: (tracker, rx),
            install,
            fleet,
        } = self;
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(l) = admin_listener {
            let rt_cfg = me.proxy.runtime().loaded.config.clone();
            let cfg = rt_cfg.admin.clone();
            let router = admin::router(admin::AdminState {
                metrics: me.metrics.clone(),
                shutdown: shutdown.clone(),
                api: ApiState {
                    exceptions: me.list.clone(),
                    proxy: me.proxy.clone(),
                    tokens: me.tokens.clone(),
                    import_max_bytes: cfg.import_max_bytes,
                    calls_dir: rt_cfg.store.data_dir.clone(),
                    contacts: me.proxy.runtime().contacts.clone(),
                    contact_store: me.store.clone(),
                    calls_keep: rt_cfg.calls.log_keep,
                    crm: me.crm_state(),
                },
                protect_metrics: cfg.protect_metrics,
                json_max_bytes: cfg.json_max_bytes,
                store_health: me.store_health.clone(),
            });
            let mut sd = shutdown.clone();
            tasks.spawn(async move {
                let _ = axum::serve(l, router)
                    .with_graceful_shutdown(async move { sd.wait().await })
                    .await;
            });
        }
        tasks.spawn(me.list.clone().run_expiry(shutdown.clone()));
        if let (Some((pg, pos)), Some(health)) = (fleet, &me.store_health) {
            let cfg = me.proxy.runtime().loaded.config.store.clone();
            crate::store::follow::spawn(
                &mut tasks,
                pg,
                pos,
                me.list.clone(),
                me.proxy.runtime().contacts.clone(),
                health.clone(),
                me.metrics.clone(),
                &cfg,
                shutdown.clone(),
            );
        }
        for (app, l) in install {
            let mut sd = shutdown.clone();
            tasks.spawn(async move {
                let _ = axum::serve(l, crm::install::router(app))
                    .with_graceful_shutdown(async move { sd.wait().await })
                    .await;
            });
        }
        for (b, c) in &me.bitrix24 {
            if c.sync_directory {
                let (tx, rx) = tokio::sync::mpsc::channel(1024);
                b.set_lookups(tx);
                let p = me.proxy.clone();
                let normalize: crm::directory::Normalize = Arc::new(move |s: &str| {
                    p.runtime()
                        .screener
                        .normalizer()
                        .normalize(s.as_bytes(), None)
                        .map(crate::screening::normalize::e164_string)
                });
                tasks.spawn(crm::directory::run(
                    crm::directory::DirectorySync {
                        sink: b.clone(),
                        directory: me.proxy.runtime().contacts.clone(),
                        store: me.store.clone(),
                        normalize,
                        every: Duration::from_secs(c.directory_every_secs.max(1)),
                        rate: c.directory_rate_per_sec,
                    },
                    rx,
                    shutdown.clone(),
                ));
            }
            if c.sync_lines {
                tasks.spawn(crm::lines::run(
                    b.clone(),
                    me.crm_lines.subscribe(),
                    shutdown.clone(),
                ));
            }
        }
        tasks.spawn(sweep_bans(me.proxy.clone(), shutdown.clone()));
        let outbox: Arc<dyn OutboxStore> = me.store.clone();
        // The CRM workers stop on their own signal: after the tracker's
        // last batch is queued, they get the grace to deliver it.
        let (crm_trigger, crm_stop) = crate::shutdown::channel();
        let mut workers = tokio::task::JoinSet::new();
        for (sink, worker) in &me.sinks {
            workers.spawn(crm::run_worker(
                sink.clone(),
                outbox.clone(),
                me.metrics.clone(),
                worker.clone(),
                crm_stop.clone(),
            ));
        }
        tasks.spawn(crm::run_outbox_gauges(
            outbox.clone(),
            me.metrics.clone(),
            shutdown.clone(),
        ));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tracker = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("call-tracker".into())
                .spawn(move || tracker.run(rx, stop))
        };
        let server = me.clone();
        let mut sd = shutdown.clone();
        // Registered here, before anything is served: a SIGHUP that came
        // before the task below first ran would otherwise still have its
        // default action and end the process.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        tasks.spawn(async move {
            let Ok(mut hup) = hup else {
                return;
            };
            loop {
                tokio::select! {
                    _ = sd.wait() => return,
                    _ = hup.recv() => {
                        let s = server.clone();
                        let _ = tokio::task::spawn_blocking(move || s.reload()).await;
                    }
                }
            }
        });
        tasks.spawn(crate::proxy::ping::run(
            me.proxy.clone(),
            transports.sender(),
            shutdown.clone(),
        ));
        // Returns once shutdown fired: no new SIP work from here.
        transports.run(me.proxy.clone(), shutdown.clone()).await;
        while tasks.join_next().await.is_some() {}
        // The tracker handles what is left in its channel, then writes the
        // call log and its last batch (events, calls in progress: those
        // are kept, not ended, and restored at the next start).
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(t) = tracker {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let grace = Duration::from_secs(me.proxy.runtime().loaded.config.crm.shutdown_grace_secs);
        let left = if me.sinks.is_empty() {
            None
        } else {
            drain_outbox(&outbox, grace).await
        };
        crm_trigger.fire();
        // A request in flight finishes (bounded by its sink's timeout_ms).
        while workers.join_next().await.is_some() {}
        if let Some(left) = left.filter(|&n| n > 0) {
            tracing::info!(
                queued = left,
                "CRM events still queued at shutdown: delivered after the next start"
            );
        }
        tracing::info!("sipscreen stopped");
    }
}

/// Ends expired flood bans every second (the active-bans gauge and the
/// ban list follow; the SIP path itself already lets them through).
async fn sweep_bans(proxy: Arc<Proxy>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => proxy.flood().sweep(),
        }
    }
}

/// Waits, at most `grace`, for the CRM workers to empty the outbox;
/// stops sooner once an event waits for a retry (a sink is refusing or
/// unreachable: waiting would only retry it). Returns the events left
/// (`None`: the outbox could not be read).
async fn drain_outbox(outbox: &Arc<dyn OutboxStore>, grace: Duration) -> Option<i64> {
    let deadline = Instant::now() + grace;
    loop {
        let st = outbox.clone();
        let state = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((st.outbox_stats()?.0, st.outbox_retrying()?))
        })
        .await;
        let (depth, retrying) = match state {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading the outbox at shutdown failed");
                return None;
            }
            Err(_) => return None,
        };
        if depth == 0 || retrying > 0 || Instant::now() >= deadline {
            return Some(depth);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
