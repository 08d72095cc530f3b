//! The sink factory: the CRM sinks a `[crm]` config names, each with its
//! worker's settings, built once at start (and by `check-config` without
//! a store). Credentials come from the config or the environment; a
//! Bitrix24 application's tokens from the store (or, before its first
//! connect, a refresh token from the config as a seed).

use std::sync::Arc;
use std::time::Duration;

use super::b24app::AppConfig;
use super::bitrix24::{App, Bitrix24};
use super::webhook::Webhook;
use super::{CrmError, Sink, WorkerConfig};
use crate::config::{Bitrix24Sink, CrmConfig};
use crate::store::{CrmTokens, Store, StoreError, TokenStore};

/// Why the `[crm]` sinks cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SinkConfigError {
    #[error("sink {sink:?}: {what} (or {what}_env) is required")]
    Missing { sink: String, what: &'static str },
    #[error("sink {sink:?}: environment variable {var} is not set")]
    EnvNotSet { sink: String, var: String },
    #[error("sink name {0:?} is used twice")]
    DuplicateName(String),
    #[error("sink {0:?}: user_field must be USER_ID or USER_PHONE_INNER")]
    UserField(String),
    #[error(
        "sink {0:?}: rest_url (https://PORTAL/rest/) and the application's client_id and client_secret are required"
    )]
    AuthChoice(String),
    #[error(
        "sink {0:?}: Bitrix24 refuses the telephony methods for an inbound webhook (WRONG_AUTH_TYPE); connect a local application instead (rest_url, client_id, client_secret; see deploy/README.md)"
    )]
    WebhookRefused(String),
    /// Reading the kept refresh token failed.
    #[error("sink {sink:?}: {source}")]
    Store {
        sink: String,
        #[source]
        source: StoreError,
    },
    /// The sink's HTTP client cannot be built.
    #[error("sink {sink:?}: {error}")]
    Client { sink: String, error: CrmError },
}

/// A CRM sink and its worker's settings.
pub type SinkWorker = (Arc<dyn Sink>, WorkerConfig);

/// What [`build_sinks`] builds: every sink's worker, and the Bitrix24
/// sinks again with their config (for the connect API, the install
/// handler and the line sync).
#[derive(Default)]
pub struct Sinks {
    pub workers: Vec<SinkWorker>,
    pub bitrix24: Vec<(Arc<Bitrix24>, Bitrix24Sink)>,
}

/// Builds the CRM sinks as `serve` would, without a store, and drops
/// them (for `check-config`): a missing secret, a malformed sink or HTTP
/// clients that cannot be built (no CA roots) are reported before a
/// start. A Bitrix24 application without tokens passes: they come from
/// `connect` or the install call into the store, which this does not
/// open.
pub fn check_sinks(cfg: &CrmConfig) -> Result<usize, SinkConfigError> {
    build_sinks(cfg, None, None).map(|s| s.workers.len())
}

/// The CRM sinks the config names, each with its worker's settings
/// (built once at start). `store`: where Bitrix24 refresh tokens are kept
/// (`None`: only checking).
pub fn build_sinks(
    cfg: &CrmConfig,
    store: Option<&Arc<dyn Store>>,
    metrics: Option<&Arc<crate::metrics::Metrics>>,
) -> Result<Sinks, SinkConfigError> {
    let worker = |rate_per_sec: f64, burst: u32| WorkerConfig {
        rate_per_sec,
        burst,
        max_age_ms: (cfg.max_event_age_secs.saturating_mul(1000)).min(i64::MAX as u64) as i64,
    };
    let env = |sink: &str,
               direct: &Option<String>,
               var: &Option<String>,
               what: &'static str|
     -> Result<String, SinkConfigError> {
        if let Some(v) = direct.as_ref().filter(|v| !v.is_empty()) {
            return Ok(v.clone());
        }
        let var = var.as_ref().ok_or_else(|| SinkConfigError::Missing {
            sink: sink.to_string(),
            what,
        })?;
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| SinkConfigError::EnvNotSet {
                sink: sink.to_string(),
                var: var.clone(),
            })
    };
    let mut out = Sinks::default();
    let mut names = std::collections::HashSet::new();
    let mut unique = |n: &str| {
        if names.insert(n.to_string()) {
            Ok(())
        } else {
            Err(SinkConfigError::DuplicateName(n.to_string()))
        }
    };
    for w in &cfg.webhook {
        unique(&w.name)?;
        let secret = match (&w.secret, &w.secret_env) {
            (None, None) => None,
            _ => Some(env(&w.name, &w.secret, &w.secret_env, "secret")?.into_bytes()),
        };
        let sink = Webhook::new(&w.name, &w.url, secret, Duration::from_millis(w.timeout_ms))
            .map_err(|error| SinkConfigError::Client {
                sink: w.name.clone(),
                error,
            })?;
        out.workers
            .push((Arc::new(sink), worker(w.rate_per_sec, w.burst)));
    }
    for b in &cfg.bitrix24 {
        unique(&b.name)?;
        if b.user_field != "USER_ID" && b.user_field != "USER_PHONE_INNER" {
            return Err(SinkConfigError::UserField(b.name.clone()));
        }
        if b.webhook_url.is_some() || b.webhook_url_env.is_some() {
            return Err(SinkConfigError::WebhookRefused(b.name.clone()));
        }
        let Some(rest) = &b.rest_url else {
            return Err(SinkConfigError::AuthChoice(b.name.clone()));
        };
        let store_err = |source| SinkConfigError::Store {
            sink: b.name.clone(),
            source,
        };
        // The tokens kept in the store; else a refresh token kept by an
        // earlier release, else one from the config (a seed: once
        // refreshed, the store has the rotated one).
        let mut seed = match store {
            Some(st) => TokenStore::crm_tokens(&**st, &b.name).map_err(store_err)?,
            None => None,
        };
        if seed.is_none() {
            let key = format!("bitrix24:{}:refresh_token", b.name);
            let kept = match store {
                Some(st) => st.meta(&key).map_err(store_err)?,
                None => None,
            };
            let configured = match (&b.refresh_token, &b.refresh_token_env) {
                (None, None) => None,
                _ => Some(env(
                    &b.name,
                    &b.refresh_token,
                    &b.refresh_token_env,
                    "refresh_token",
                )?),
            };
            seed = kept.or(configured).map(|refresh| CrmTokens {
                refresh,
                ..CrmTokens::default()
            });
        }
        let tokens: Option<Arc<dyn TokenStore>> = store.map(|s| s.clone() as Arc<dyn TokenStore>);
        let app = App::new(
            AppConfig {
                sink: b.name.clone(),
                rest_url: rest.clone(),
                oauth_url: b.oauth_url.clone(),
                client_id: env(&b.name, &b.client_id, &b.client_id_env, "client_id")?,
                client_secret: env(
                    &b.name,
                    &b.client_secret,
                    &b.client_secret_env,
                    "client_secret",
                )?,
                timeout: Duration::from_millis(b.timeout_ms),
            },
            seed,
            tokens,
        )
        .map_err(|error| SinkConfigError::Client {
            sink: b.name.clone(),
            error,
        })?;
        let sink = Arc::new(
            Bitrix24::new(
                &b.name,
                Arc::new(app),
                &b.user_field,
                Duration::from_millis(b.timeout_ms),
            )
            .map_err(|error| SinkConfigError::Client {
                sink: b.name.clone(),
                error,
            })?
            .with_default_user(b.default_user.clone())
            .with_metrics(metrics.cloned())
            .with_rate(b.rate_per_sec, b.burst)
            // In a fleet the portal's allowance is shared by every node.
            .with_allowance(store.and_then(|s| {
                s.clone()
                    .as_postgres()
                    .map(|p| p as Arc<dyn crate::store::fleet::AllowanceStore>)
            })),
        );
        out.bitrix24.push((sink.clone(), b.clone()));
        out.workers.push((sink, worker(b.rate_per_sec, b.burst)));
    }
    Ok(out)
}
