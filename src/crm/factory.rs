//! The sink factory: the CRM sinks a `[crm]` config names, each with its
//! worker's settings, built once at start (and by `check-config` without
//! a store). Credentials come from the config or the environment; a
//! Bitrix24 application's rotated refresh token from the store.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::bitrix24::{Auth, Bitrix24, Tokens};
use super::webhook::Webhook;
use super::{CrmError, Sink, WorkerConfig};
use crate::config::CrmConfig;
use crate::store::{ExceptionStore, StoreError, sqlite::SqliteStore};

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
        "sink {0:?}: set webhook_url(_env) (inbound webhook) or rest_url with the OAuth credentials, one of the two"
    )]
    AuthChoice(String),
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

/// Builds the CRM sinks as `serve` would, without a store, and drops
/// them (for `check-config`): a missing secret, a malformed sink or HTTP
/// clients that cannot be built (no CA roots) are reported before a
/// start. A Bitrix24 refresh token without its variable passes: after the
/// first refresh it is kept in the store, which this does not open.
pub fn check_sinks(cfg: &CrmConfig) -> Result<usize, SinkConfigError> {
    build_sinks(cfg, None).map(|s| s.len())
}

/// The CRM sinks the config names, each with its worker's settings
/// (built once at start). `store`: where Bitrix24 refresh tokens are kept
/// (`None`: only checking).
pub fn build_sinks(
    cfg: &CrmConfig,
    store: Option<&Arc<SqliteStore>>,
) -> Result<Vec<SinkWorker>, SinkConfigError> {
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
    let mut out: Vec<SinkWorker> = Vec::new();
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
        out.push((Arc::new(sink), worker(w.rate_per_sec, w.burst)));
    }
    for b in &cfg.bitrix24 {
        unique(&b.name)?;
        if b.user_field != "USER_ID" && b.user_field != "USER_PHONE_INNER" {
            return Err(SinkConfigError::UserField(b.name.clone()));
        }
        let hook = b.webhook_url.is_some() || b.webhook_url_env.is_some();
        let auth = match (hook, &b.rest_url) {
            (true, None) => Auth::Webhook(env(
                &b.name,
                &b.webhook_url,
                &b.webhook_url_env,
                "webhook_url",
            )?),
            (false, Some(rest)) => {
                let key = format!("bitrix24:{}:refresh_token", b.name);
                let stored = match store {
                    Some(st) => st.meta(&key).map_err(|source| SinkConfigError::Store {
                        sink: b.name.clone(),
                        source,
                    })?,
                    None => None,
                };
                let refresh = match stored {
                    Some(r) => r,
                    None => match env(
                        &b.name,
                        &b.refresh_token,
                        &b.refresh_token_env,
                        "refresh_token",
                    ) {
                        Ok(r) => r,
                        // Checking: it may be in the store.
                        Err(_) if store.is_none() => String::new(),
                        Err(e) => return Err(e),
                    },
                };
                Auth::OAuth {
                    rest_url: rest.clone(),
                    oauth_url: b.oauth_url.clone(),
                    client_id: env(&b.name, &b.client_id, &b.client_id_env, "client_id")?,
                    client_secret: env(
                        &b.name,
                        &b.client_secret,
                        &b.client_secret_env,
                        "client_secret",
                    )?,
                    // Empty access token: refreshed before the first call.
                    tokens: Mutex::new(Tokens {
                        access: String::new(),
                        refresh,
                    }),
                }
            }
            _ => {
                return Err(SinkConfigError::AuthChoice(b.name.clone()));
            }
        };
        let st = store.cloned();
        let key = format!("bitrix24:{}:refresh_token", b.name);
        let on_refresh = Box::new(move |r: &str| {
            if let Some(st) = &st
                && let Err(e) = st.set_meta(&key, r)
            {
                tracing::error!(error = %e, "keeping the refreshed Bitrix24 token failed");
            }
        });
        let sink = Bitrix24::new(
            &b.name,
            auth,
            &b.user_field,
            Duration::from_millis(b.timeout_ms),
            on_refresh,
        )
        .map_err(|error| SinkConfigError::Client {
            sink: b.name.clone(),
            error,
        })?;
        out.push((Arc::new(sink), worker(b.rate_per_sec, b.burst)));
    }
    Ok(out)
}
