//! Wires the parts together: loads the exception list, builds the first
//! runtime, binds the transports and the admin listener, and runs until
//! shutdown. Reloads (SIGHUP) build a complete new generation beside the
//! running one and swap it in, or log the error, count it and keep the old.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::admin;
use crate::config::{self, ConfigError, Loaded};
use crate::metrics::Metrics;
use crate::proxy::{Local, Proxy};
use crate::runtime::Runtime;
use crate::screening::exceptions::ExceptionSet;
use crate::screening::source::{ExceptionSource, FileSource, LoadReport};
use crate::shutdown::Shutdown;
use crate::transport;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("exceptions file: {0}")]
    Exceptions(String),
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
    /// Actual UDP listen addresses.
    pub udp: Vec<SocketAddr>,
    /// Actual TCP listen addresses.
    pub tcp: Vec<SocketAddr>,
    /// Actual admin listen address.
    pub admin: Option<SocketAddr>,
    config_path: PathBuf,
    /// Bound listeners, taken by `run`.
    parts: Mutex<Option<(transport::Transports, Option<tokio::net::TcpListener>)>>,
}

/// Loads the exceptions file named by the config (empty list if none).
pub fn load_exceptions(
    loaded: &Loaded,
    runtime_for_normalizer: &Runtime,
) -> Result<LoadReport, ServerError> {
    match &loaded.config.screening.exceptions_file {
        Some(path) => {
            let report = FileSource::new(path.get_ref().clone())
                .load(runtime_for_normalizer.screener.normalizer())
                .map_err(|e| ServerError::Exceptions(e.to_string()))?;
            for r in &report.rejected {
                tracing::warn!(file = %path.get_ref().display(), line = r.line, text = %r.text, reason = %r.reason, "exception entry refused");
            }
            Ok(report)
        }
        None => Ok(LoadReport {
            phones: Vec::new(),
            emails: Vec::new(),
            rejected: Vec::new(),
        }),
    }
}

/// Loads and builds everything a config names, without touching anything
/// running: the runtime and the exception list it seeds.
pub fn prepare(
    path: &Path,
    exceptions: Arc<ExceptionSet>,
) -> Result<(Runtime, LoadReport), ServerError> {
    let loaded = config::load(path)?;
    let runtime = Runtime::build(loaded.clone(), exceptions)?;
    let report = load_exceptions(&loaded, &runtime)?;
    Ok((runtime, report))
}

impl Server {
    /// Loads the config at `path`, binds every listener. Nothing runs yet.
    pub async fn bind(path: &Path) -> Result<Server, ServerError> {
        let metrics = Arc::new(Metrics::new());
        let exceptions = Arc::new(ExceptionSet::new());
        let (runtime, report) = prepare(path, exceptions.clone())?;
        exceptions.replace_all(report.phones, report.emails);
        let (p, e) = exceptions.counts();
        metrics.set_exception_entries(p, e);
        let cfg = runtime.loaded.config.clone();
        let transports = transport::bind(&cfg.sip, metrics.clone())
            .await
            .map_err(|source| ServerError::Bind {
                what: "SIP listeners".to_string(),
                source,
            })?;
        let udp = transports.udp_addrs();
        let tcp = transports.tcp_addrs();
        let local = Local::new(
            cfg.sip.advertise.as_deref(),
            udp.first().copied(),
            tcp.first().copied(),
        );
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
        tracing::info!(udp = ?udp, tcp = ?tcp, admin = ?admin, phones = p, emails = e, "sipscreen ready");
        Ok(Server {
            proxy: Arc::new(Proxy::new(runtime, local, metrics.clone())),
            metrics,
            exceptions,
            udp,
            tcp,
            admin,
            config_path: path.to_path_buf(),
            parts: Mutex::new(Some((transports, admin_listener))),
        })
    }

    /// Builds a new generation from the config file and swaps it in; on
    /// any error the running one stays. Returns the error for the caller
    /// to report.
    pub fn reload(&self) -> Result<(), ServerError> {
        let result =
            prepare(&self.config_path, self.exceptions.clone()).map(|(runtime, report)| {
                let old = self.proxy.runtime();
                if old.loaded.config.sip.udp != runtime.loaded.config.sip.udp
                    || old.loaded.config.sip.tcp != runtime.loaded.config.sip.tcp
                {
                    tracing::warn!("listener addresses changed: they take effect after a restart");
                }
                self.exceptions.replace_all(report.phones, report.emails);
                self.proxy.swap(runtime);
                let (p, e) = self.exceptions.counts();
                self.metrics.set_exception_entries(p, e);
            });
        self.metrics.reload(result.is_ok());
        match &result {
            Ok(()) => tracing::info!(config = %self.config_path.display(), "config reloaded"),
            Err(e) => {
                tracing::error!(config = %self.config_path.display(), error = %e, "config reload refused, the running config stays")
            }
        }
        result
    }

    /// Runs until `shutdown` fires: SIP, admin, and SIGHUP reloads.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let parts = self.parts.lock().expect("not poisoned").take();
        let Some((transports, admin_listener)) = parts else {
            tracing::error!("Server::run called twice");
            return;
        };
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(l) = admin_listener {
            let router = admin::router(admin::AdminState {
                metrics: self.metrics.clone(),
                shutdown: shutdown.clone(),
            });
            let mut sd = shutdown.clone();
            tasks.spawn(async move {
                let _ = axum::serve(l, router)
                    .with_graceful_shutdown(async move { sd.wait().await })
                    .await;
            });
        }
        let me = self.clone();
        let mut sd = shutdown.clone();
        tasks.spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            loop {
                tokio::select! {
                    _ = sd.wait() => return,
                    _ = hup.recv() => {
                        let me = me.clone();
                        let _ = tokio::task::spawn_blocking(move || me.reload()).await;
                    }
                }
            }
        });
        transports.run(self.proxy.clone(), shutdown.clone()).await;
        while tasks.join_next().await.is_some() {}
        tracing::info!("sipscreen stopped");
    }
}
