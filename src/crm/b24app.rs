//! A Bitrix24 local application's connection: its OAuth tokens, how it
//! gets them (the authorization code exchange `sipscreen crm bitrix24
//! connect` asks for, or the portal's install call), refreshes them (the
//! portal rotates the refresh token on every refresh) and keeps them in
//! the store. One per `[[crm.bitrix24]]` sink, shared by its worker, the
//! line sync, the admin API and the install handler.
//!
//! Tokens are secrets: no error, log line, metric or API answer carries
//! one (`CrmTokens`' `Debug` leaves them out).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::CrmError;
use crate::clock::now_ms;
use crate::store::{CrmTokens, TokenStore};

/// Refresh this long before the access token's announced expiry.
const EARLY_MS: i64 = 60_000;

/// What `connect` and `status` may show: no secret.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Connection {
    pub connected: bool,
    pub member_id: String,
    pub domain: String,
    /// Unix ms the access token expires (0: unknown).
    pub expires_at: i64,
}

/// What the last line sync did (`telephony.externalLine.*`).
#[derive(Debug, Clone, serde::Serialize, PartialEq, Default)]
pub struct LinesReport {
    /// When it ran (RFC 3339).
    pub at: String,
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: usize,
    /// Why it did not complete (it is tried again).
    pub error: Option<String>,
}

/// Why an install call was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InstallError {
    /// No tokens or no `member_id` in the call.
    #[error("the install call has no {0}")]
    Incomplete(&'static str),
    /// `member_id` or `application_token` differ from the stored ones.
    #[error("the install call is not from the portal that installed the application")]
    Foreign,
    #[error("{0}")]
    Store(String),
}

/// Where an application is and who it is (`client_secret`: a secret).
pub struct AppConfig {
    pub sink: String,
    /// `https://PORTAL/rest/`
    pub rest_url: String,
    /// The OAuth server's `oauth/token/`.
    pub oauth_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Per HTTP request.
    pub timeout: Duration,
}

/// One application's connection.
pub struct App {
    pub sink: String,
    rest_url: String,
    oauth_url: String,
    client_id: String,
    client_secret: String,
    /// `None`: not connected.
    tokens: Mutex<Option<CrmTokens>>,
    store: Option<Arc<dyn TokenStore>>,
    http: reqwest::Client,
    /// One refresh at a time (a second one would present a rotated token).
    refreshing: tokio::sync::Mutex<()>,
    lines: Mutex<Option<LinesReport>>,
    /// Woken when the application gets tokens.
    pub connected_now: tokio::sync::Notify,
}

impl App {
    /// `seed`: the tokens kept in the store, else a refresh token from the
    /// config (an application connected before tokens were stored).
    pub fn new(
        c: AppConfig,
        seed: Option<CrmTokens>,
        store: Option<Arc<dyn TokenStore>>,
    ) -> Result<App, CrmError> {
        let http = reqwest::Client::builder()
            .timeout(c.timeout)
            .build()
            .map_err(|e| CrmError::Client(e.into()))?;
        Ok(App {
            sink: c.sink,
            rest_url: c.rest_url.trim_end_matches('/').to_string(),
            oauth_url: c.oauth_url,
            client_id: c.client_id,
            client_secret: c.client_secret,
            tokens: Mutex::new(seed.filter(|t| !t.refresh.is_empty())),
            store,
            http,
            refreshing: tokio::sync::Mutex::new(()),
            lines: Mutex::new(None),
            connected_now: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<CrmTokens>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store the tokens are kept in (`None`: checking only).
    pub fn store(&self) -> Option<&Arc<dyn TokenStore>> {
        self.store.as_ref()
    }

    pub fn lines_report(&self) -> Option<LinesReport> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_lines_report(&self, r: LinesReport) {
        *self.lines.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    pub fn connected(&self) -> bool {
        self.lock().is_some()
    }

    /// `https://PORTAL/rest/method.json`.
    pub fn method_url(&self, method: &str) -> String {
        format!("{}/{method}.json", self.rest_url)
    }

    /// Where the operator grants access: `https://PORTAL/oauth/authorize/`
    /// with the application's `client_id` (not a secret).
    pub fn authorize_url(&self) -> String {
        let portal = self
            .rest_url
            .strip_suffix("/rest")
            .unwrap_or(&self.rest_url);
        let id: String = url::form_urlencoded::byte_serialize(self.client_id.as_bytes()).collect();
        format!("{portal}/oauth/authorize/?client_id={id}")
    }

    pub fn connection(&self) -> Connection {
        match &*self.lock() {
            Some(t) => Connection {
                connected: true,
                member_id: t.member_id.clone(),
                domain: t.domain.clone(),
                expires_at: t.expires_at,
            },
            None => Connection {
                connected: false,
                member_id: String::new(),
                domain: String::new(),
                expires_at: 0,
            },
        }
    }

    /// The access token to send, if it is still good (else refresh first).
    pub fn access(&self) -> Option<String> {
        let g = self.lock();
        let t = g.as_ref()?;
        (!t.access.is_empty() && (t.expires_at == 0 || t.expires_at - EARLY_MS > now_ms()))
            .then(|| t.access.clone())
    }

    /// Refreshes the tokens, unless another task did since `stale` was
    /// the access token.
    pub async fn refresh(&self, stale: Option<&str>) -> Result<(), CrmError> {
        let _one = self.refreshing.lock().await;
        if let Some(a) = self.access()
            && Some(a.as_str()) != stale
        {
            return Ok(());
        }
        let Some(refresh) = self.lock().as_ref().map(|t| t.refresh.clone()) else {
            return Err(CrmError::NotConnected);
        };
        let (status, v) = self
            .grant(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
            .await?;
        let Some(t) = self.tokens_of(&v) else {
            return Err(CrmError::RefreshRefused {
                status,
                code: v["error"].as_str().unwrap_or("").to_string(),
            });
        };
        self.keep(t).await?;
        tracing::info!(sink = %self.sink, "Bitrix24 access token refreshed");
        Ok(())
    }

    /// Exchanges an authorization code (`grant_type=authorization_code`)
    /// and keeps the tokens.
    pub async fn exchange_code(&self, code: &str) -> Result<Connection, CrmError> {
        let _one = self.refreshing.lock().await;
        let (status, v) = self
            .grant(&[("grant_type", "authorization_code"), ("code", code)])
            .await?;
        let Some(t) = self.tokens_of(&v) else {
            return Err(CrmError::CodeRefused {
                status,
                code: v["error"].as_str().unwrap_or("").to_string(),
            });
        };
        self.keep(t).await?;
        tracing::info!(sink = %self.sink, member_id = %v["member_id"].as_str().unwrap_or(""), "Bitrix24 application connected by authorization code");
        Ok(self.connection())
    }

    /// One request to the OAuth server's token endpoint (a GET with the
    /// parameters in the query, as Bitrix24's OAuth documentation shows):
    /// its status and JSON answer.
    async fn grant(&self, params: &[(&str, &str)]) -> Result<(u16, Value), CrmError> {
        let resp = self
            .http
            .get(&self.oauth_url)
            .query(&[
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.as_str()),
            ])
            .query(params)
            .send()
            .await
            .map_err(|e| CrmError::RefreshTransport(e.into()))?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// New tokens from an OAuth answer, keeping what the answer does not
    /// name (the install's `application_token`).
    fn tokens_of(&self, v: &Value) -> Option<CrmTokens> {
        let (a, r) = (v["access_token"].as_str()?, v["refresh_token"].as_str()?);
        let old = self.lock().clone().unwrap_or_default();
        let expires_in = v["expires_in"].as_i64().unwrap_or(3600);
        Some(CrmTokens {
            access: a.to_string(),
            refresh: r.to_string(),
            expires_at: now_ms() + expires_in * 1000,
            member_id: v["member_id"]
                .as_str()
                .map_or(old.member_id, str::to_string),
            application_token: old.application_token,
            domain: v["client_endpoint"]
                .as_str()
                .and_then(|e| url::Url::parse(e).ok())
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or(old.domain),
        })
    }

    /// Stores the tokens, then uses them (a store failure keeps them in
    /// memory: the sink works on, the next start needs a new connect).
    async fn keep(&self, t: CrmTokens) -> Result<(), CrmError> {
        let stored = match &self.store {
            Some(st) => {
                let (st, sink, t2) = (st.clone(), self.sink.clone(), t.clone());
                match tokio::task::spawn_blocking(move || st.set_crm_tokens(&sink, &t2, now_ms()))
                    .await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            None => Ok(()),
        };
        *self.lock() = Some(t);
        self.connected_now.notify_waiters();
        stored.map_err(|e| {
            tracing::error!(sink = %self.sink, error = %e, "keeping the Bitrix24 tokens in the store failed");
            CrmError::TokenStore(e)
        })
    }

    /// The portal's install call: the install form (`AUTH_ID`,
    /// `REFRESH_ID`, `AUTH_EXPIRES`, `member_id`, `DOMAIN`, `APP_SID`) or
    /// the `ONAPPINSTALL` event (`auth[access_token]`, …,
    /// `auth[application_token]`). The first one connects; later ones
    /// must name the stored `member_id` and, once one is stored, the same
    /// `application_token`.
    pub async fn install(&self, form: &HashMap<String, String>) -> Result<(), InstallError> {
        let get = |a: &str, b: &str| {
            form.get(a)
                .or_else(|| form.get(b))
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let member =
            get("member_id", "auth[member_id]").ok_or(InstallError::Incomplete("member_id"))?;
        let app_token = get("application_token", "auth[application_token]");
        let access =
            get("AUTH_ID", "auth[access_token]").ok_or(InstallError::Incomplete("access token"))?;
        let refresh = get("REFRESH_ID", "auth[refresh_token]")
            .ok_or(InstallError::Incomplete("refresh token"))?;
        let expires_in = get("AUTH_EXPIRES", "auth[expires_in]")
            .and_then(|e| e.parse::<i64>().ok())
            .unwrap_or(3600);
        let domain = get("DOMAIN", "auth[domain]").unwrap_or_default();
        let _one = self.refreshing.lock().await;
        let old = self.lock().clone();
        if let Some(old) = &old
            && !old.member_id.is_empty()
        {
            let same =
                |a: &str, b: &str| subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()).into();
            let member_ok: bool = same(&old.member_id, &member);
            let token_ok: bool = old.application_token.is_empty()
                || app_token
                    .as_deref()
                    .is_some_and(|t| same(&old.application_token, t));
            if !member_ok || !token_ok {
                return Err(InstallError::Foreign);
            }
        }
        let t = CrmTokens {
            access,
            refresh,
            expires_at: now_ms() + expires_in * 1000,
            member_id: member,
            application_token: app_token
                .or_else(|| old.map(|o| o.application_token))
                .unwrap_or_default(),
            domain,
        };
        self.keep(t)
            .await
            .map_err(|e| InstallError::Store(e.to_string()))?;
        tracing::info!(sink = %self.sink, "Bitrix24 application installed: tokens kept");
        Ok(())
    }
}
