//! Bitrix24 REST telephony: `telephony.externalcall.register` when a call
//! starts and `telephony.externalcall.finish` when it ends (with the
//! `CALL_ID` register answered, kept in the store). `call.answered` and
//! `call.responsible_changed` need no request of their own: finish carries
//! the responsible person at the end.
//!
//! Two ways in, as portals offer them: an inbound webhook URL
//! (`https://PORTAL/rest/USER/CODE/`, a credential, read from the
//! environment), or an installed application's OAuth tokens: the access
//! token goes as `auth`, and on `expired_token` it is refreshed with the
//! refresh token (the new refresh token is kept in the store, since
//! Bitrix24 rotates it). HTTP 503 `QUERY_LIMIT_EXCEEDED` backs off.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::{Delivery, Sink, cut};
use crate::store::{OutEvent, OutboxStore};

/// How requests are authorised.
pub enum Auth {
    /// `https://PORTAL/rest/USER/CODE/`
    Webhook(String),
    /// An installed application.
    OAuth {
        rest_url: String,
        oauth_url: String,
        client_id: String,
        client_secret: String,
        tokens: Mutex<Tokens>,
    },
}

#[derive(Clone, Default)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

pub struct Bitrix24 {
    name: String,
    auth: Auth,
    /// `USER_ID` or `USER_PHONE_INNER`.
    user_field: String,
    http: reqwest::Client,
    /// Persists a rotated refresh token.
    on_refresh: Box<dyn Fn(&str) + Send + Sync>,
}

impl Bitrix24 {
    pub fn new(
        name: &str,
        auth: Auth,
        user_field: &str,
        timeout: Duration,
        on_refresh: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("bitrix24 {name:?}: {}", super::http_error(e)))?;
        Ok(Bitrix24 {
            name: name.to_string(),
            auth,
            user_field: user_field.to_string(),
            http,
            on_refresh,
        })
    }

    /// Calls `method` with `params`; the `result` on success.
    async fn call(&self, method: &str, mut params: Value) -> Result<Value, Delivery> {
        if let Auth::OAuth { tokens, .. } = &self.auth
            && tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .access
                .is_empty()
        {
            self.refresh().await?;
        }
        for attempt in 0..2 {
            let url = match &self.auth {
                Auth::Webhook(base) => format!("{}/{method}.json", base.trim_end_matches('/')),
                Auth::OAuth {
                    rest_url, tokens, ..
                } => {
                    let t = tokens
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .access
                        .clone();
                    params["auth"] = Value::String(t);
                    format!("{}/{method}.json", rest_url.trim_end_matches('/'))
                }
            };
            let resp = self
                .http
                .post(&url)
                .json(&params)
                .send()
                .await
                .map_err(|e| Delivery::Retry {
                    error: format!("{method}: {}", super::http_error(e)),
                    rate_limited: false,
                })?;
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let error = body["error"].as_str().unwrap_or("");
            if (200..300).contains(&status) && error.is_empty() {
                return Ok(body["result"].clone());
            }
            if error == "QUERY_LIMIT_EXCEEDED" || status == 429 {
                return Err(Delivery::Retry {
                    error: format!("{method}: QUERY_LIMIT_EXCEEDED"),
                    rate_limited: true,
                });
            }
            if matches!(error, "expired_token" | "invalid_token" | "NO_AUTH_FOUND")
                && attempt == 0
                && matches!(self.auth, Auth::OAuth { .. })
            {
                self.refresh().await?;
                continue;
            }
            let what = format!(
                "{method}: HTTP {status} {error} {}",
                cut(body["error_description"].as_str().unwrap_or(&text))
            );
            return Err(if status >= 500 || status == 408 || status == 401 {
                Delivery::Retry {
                    error: what,
                    rate_limited: false,
                }
            } else {
                Delivery::Rejected(what)
            });
        }
        Err(Delivery::Retry {
            error: format!("{method}: token still refused after a refresh"),
            rate_limited: false,
        })
    }

    async fn refresh(&self) -> Result<(), Delivery> {
        let Auth::OAuth {
            oauth_url,
            client_id,
            client_secret,
            tokens,
            ..
        } = &self.auth
        else {
            return Ok(());
        };
        let refresh = tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .refresh
            .clone();
        let retry = |error: String| Delivery::Retry {
            error,
            rate_limited: false,
        };
        let resp = self
            .http
            .get(oauth_url)
            .query(&[
                ("grant_type", "refresh_token"),
                ("client_id", client_id),
                ("client_secret", client_secret),
                ("refresh_token", &refresh),
            ])
            .send()
            .await
            .map_err(|e| retry(format!("OAuth refresh: {}", super::http_error(e))))?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        match (v["access_token"].as_str(), v["refresh_token"].as_str()) {
            (Some(a), Some(r)) => {
                *tokens.lock().unwrap_or_else(|p| p.into_inner()) = Tokens {
                    access: a.to_string(),
                    refresh: r.to_string(),
                };
                (self.on_refresh)(r);
                tracing::info!(sink = %self.name, "Bitrix24 access token refreshed");
                Ok(())
            }
            _ => Err(retry(format!(
                "OAuth refresh refused: HTTP {status} {}",
                v["error"].as_str().unwrap_or("")
            ))),
        }
    }

    fn user(&self, v: &Value, params: &mut Value) {
        if let Some(r) = v["responsible"].as_str() {
            params[&self.user_field] = Value::String(r.to_string());
        }
    }
}

/// Bitrix24's `STATUS_CODE` for how a call ended.
pub fn status_code(v: &Value) -> String {
    let inbound = v["direction"] == "inbound";
    if v["answered"].as_bool() == Some(true) {
        return "200".into();
    }
    match (
        v["outcome"].as_str().unwrap_or(""),
        v["status"].as_u64().unwrap_or(0),
    ) {
        ("cancelled", _) if inbound => "304".into(),
        ("cancelled", _) => "603-S".into(),
        (_, 486 | 600) => "486".into(),
        (_, 404 | 484 | 604) => "404".into(),
        (_, 480 | 408) if inbound => "304".into(),
        (_, 480 | 408) => "480".into(),
        (_, 403 | 603) => "603".into(),
        (_, s) if s >= 500 => "503".into(),
        _ if inbound => "304".into(),
        _ => "480".into(),
    }
}

/// What one event asks of the portal.
enum Request {
    /// Nothing (answered, responsible changed).
    None,
    Register(Value),
    /// Finish; `CALL_ID` from the store, or from a register earlier in
    /// the same batch.
    Finish(Value),
}

impl Bitrix24 {
    fn request(&self, ev: &OutEvent) -> Result<Request, Delivery> {
        let v: Value = serde_json::from_str(&ev.payload)
            .map_err(|_| Delivery::Rejected("payload is not JSON".into()))?;
        Ok(match ev.kind.as_str() {
            "call.started" => {
                let mut p = json!({
                    "PHONE_NUMBER": v["client"],
                    "TYPE": if v["direction"] == "inbound" { 2 } else { 1 },
                    "LINE_NUMBER": v["line"],
                    "CRM_CREATE": i32::from(v["crm_create"].as_bool() == Some(true)),
                    "CRM_SOURCE": v["source"],
                    "SHOW": i32::from(v["offer"].as_bool() == Some(true)),
                    "EXTERNAL_CALL_ID": v["call_id"],
                    "CALL_START_DATE": v["start"],
                });
                self.user(&v, &mut p);
                Request::Register(p)
            }
            "call.ended" => {
                let mut p = json!({
                    "DURATION": v["duration"].as_u64().unwrap_or(0),
                    "STATUS_CODE": status_code(&v),
                });
                self.user(&v, &mut p);
                Request::Finish(p)
            }
            _ => Request::None,
        })
    }

    /// Whether this event's request already went out and was recorded
    /// (a redelivery after a restart or a crash between the request and
    /// the outbox update): a register with its `CALL_ID` kept, a finish
    /// marked finished. Bitrix24 answers every register with a new
    /// `CALL_ID`, so a second register would be a second call in the CRM.
    async fn done_before(
        &self,
        ev: &OutEvent,
        store: &Arc<dyn OutboxStore>,
    ) -> Result<bool, Delivery> {
        let kind = ev.kind.clone();
        if kind != "call.started" && kind != "call.ended" {
            return Ok(false);
        }
        let (st, sink, call) = (store.clone(), self.name.clone(), ev.call.clone());
        let r = tokio::task::spawn_blocking(move || {
            if kind == "call.started" {
                st.crm_call(&sink, &call).map(|id| id.is_some())
            } else {
                st.crm_finished(&sink, &call)
            }
        })
        .await;
        match r {
            Ok(Ok(done)) => {
                if done {
                    tracing::info!(sink = %self.name, event = %ev.kind, call = %ev.call, "already sent to the CRM before a restart: not sent again");
                }
                Ok(done)
            }
            _ => Err(Delivery::Retry {
                error: "cannot read the CRM call state".into(),
                rate_limited: false,
            }),
        }
    }

    /// Records that the call's finish went out (a failure is logged: the
    /// outbox row is still removed, so it is not sent again either).
    async fn keep_finished(&self, ev: &OutEvent, store: &Arc<dyn OutboxStore>) {
        let (st, sink, call) = (store.clone(), self.name.clone(), ev.call.clone());
        let now = crate::clock::now_ms();
        if !matches!(
            tokio::task::spawn_blocking(move || st.set_crm_finished(&sink, &call, now)).await,
            Ok(Ok(()))
        ) {
            tracing::error!(sink = %self.name, call = %ev.call, "recording a Bitrix24 finish failed");
        }
    }

    async fn crm_id(
        &self,
        ev: &OutEvent,
        store: &Arc<dyn OutboxStore>,
    ) -> Result<String, Delivery> {
        let (st, sink, call) = (store.clone(), self.name.clone(), ev.call.clone());
        match tokio::task::spawn_blocking(move || st.crm_call(&sink, &call)).await {
            Ok(Ok(Some(id))) => Ok(id),
            Ok(Ok(None)) => Err(Delivery::Rejected(
                "no CALL_ID: the call was never registered".into(),
            )),
            _ => Err(Delivery::Retry {
                error: "cannot read the CRM call id".into(),
                rate_limited: false,
            }),
        }
    }

    async fn keep_crm_id(
        &self,
        ev: &OutEvent,
        store: &Arc<dyn OutboxStore>,
        r: &Value,
    ) -> Delivery {
        let Some(id) = r["CALL_ID"].as_str() else {
            return Delivery::Rejected(format!(
                "register answered without CALL_ID: {}",
                cut(&r.to_string())
            ));
        };
        let (st, sink, call, id) = (
            store.clone(),
            self.name.clone(),
            ev.call.clone(),
            id.to_string(),
        );
        match tokio::task::spawn_blocking(move || st.set_crm_call(&sink, &call, &id)).await {
            Ok(Ok(())) => Delivery::Ok,
            _ => Delivery::Retry {
                error: "cannot record the CRM call id".into(),
                rate_limited: false,
            },
        }
    }
}

/// `KEY=value&…` for a batch command (PHP's http_build_query form).
fn query(p: &Value) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut parts = Vec::new();
    for (k, v) in p.as_object().into_iter().flatten() {
        let v = match v {
            // A reference to an earlier command's result: Bitrix24
            // substitutes it, so it stays unencoded.
            Value::String(s) if s.starts_with("$result[") => s.clone(),
            Value::String(s) => enc(s),
            Value::Null => continue,
            v => enc(&v.to_string()),
        };
        parts.push(format!("{}={v}", enc(k)));
    }
    parts.join("&")
}

/// How a failed batch command is handled.
fn command_error(method: &str, e: &Value) -> Delivery {
    let error = e["error"].as_str().unwrap_or("");
    let what = format!(
        "{method}: {error} {}",
        cut(e["error_description"].as_str().unwrap_or(""))
    );
    match error {
        "QUERY_LIMIT_EXCEEDED" => Delivery::Retry {
            error: what,
            rate_limited: true,
        },
        "expired_token" | "invalid_token" | "NO_AUTH_FOUND" | "INTERNAL_SERVER_ERROR" => {
            Delivery::Retry {
                error: what,
                rate_limited: false,
            }
        }
        _ => Delivery::Rejected(what),
    }
}

#[async_trait::async_trait]
impl Sink for Bitrix24 {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_batch(&self) -> usize {
        50
    }

    async fn deliver(&self, ev: &OutEvent, store: &Arc<dyn OutboxStore>) -> Delivery {
        match self.done_before(ev, store).await {
            Ok(true) => return Delivery::Ok,
            Ok(false) => {}
            Err(d) => return d,
        }
        match self.request(ev) {
            Err(d) => d,
            Ok(Request::None) => Delivery::Ok,
            Ok(Request::Register(p)) => match self.call("telephony.externalcall.register", p).await
            {
                Ok(r) => self.keep_crm_id(ev, store, &r).await,
                Err(d) => d,
            },
            Ok(Request::Finish(mut p)) => {
                match self.crm_id(ev, store).await {
                    Ok(id) => p["CALL_ID"] = Value::String(id),
                    Err(d) => return d,
                }
                match self.call("telephony.externalcall.finish", p).await {
                    Ok(_) => {
                        self.keep_finished(ev, store).await;
                        Delivery::Ok
                    }
                    Err(d) => d,
                }
            }
        }
    }

    /// A backlog goes as one `batch` request of up to 50 commands with
    /// `halt=1` (Bitrix24 runs them in order and stops at the first
    /// error), a finish referring to a register in the same batch by
    /// `$result[cN][CALL_ID]`.
    async fn deliver_many(
        &self,
        evs: &[OutEvent],
        store: &Arc<dyn OutboxStore>,
    ) -> (usize, Option<Delivery>) {
        let mut cmd = serde_json::Map::new();
        // Per event: its command key, if it sends one.
        let mut keys: Vec<Option<String>> = Vec::with_capacity(evs.len());
        let mut registered: std::collections::HashMap<&str, String> = Default::default();
        let mut usable = evs.len();
        for (i, ev) in evs.iter().enumerate() {
            let req = match self.done_before(ev, store).await {
                Ok(true) => Ok(Request::None),
                Ok(false) => self.request(ev),
                Err(d) => Err(d),
            };
            let req = match req {
                Ok(r) => r,
                Err(_) => {
                    usable = i;
                    break;
                }
            };
            let key = format!("c{i:02}");
            match req {
                Request::None => {
                    keys.push(None);
                    continue;
                }
                Request::Register(p) => {
                    registered.insert(&ev.call, key.clone());
                    cmd.insert(
                        key.clone(),
                        Value::String(format!("telephony.externalcall.register?{}", query(&p))),
                    );
                }
                Request::Finish(mut p) => {
                    let id = match registered.get(ev.call.as_str()) {
                        Some(k) => format!("$result[{k}][CALL_ID]"),
                        None => match self.crm_id(ev, store).await {
                            Ok(id) => id,
                            Err(_) => {
                                // Sent on its own, where the error is reported.
                                usable = i;
                                break;
                            }
                        },
                    };
                    p["CALL_ID"] = Value::String(id);
                    cmd.insert(
                        key.clone(),
                        Value::String(format!("telephony.externalcall.finish?{}", query(&p))),
                    );
                }
            }
            keys.push(Some(key));
        }
        keys.truncate(usable);
        if cmd.is_empty() || keys.is_empty() {
            return if keys.is_empty() {
                let d = self.deliver(&evs[0], store).await;
                match d {
                    Delivery::Ok => (1, None),
                    d => (0, Some(d)),
                }
            } else {
                (keys.len(), None)
            };
        }
        let r = match self
            .call("batch", json!({"halt": 1, "cmd": Value::Object(cmd)}))
            .await
        {
            Ok(r) => r,
            Err(d) => return (0, Some(d)),
        };
        let (ok, errors) = (&r["result"], &r["result_error"]);
        for (i, key) in keys.iter().enumerate() {
            let Some(key) = key else { continue };
            if let Some(res) = ok.get(key).filter(|v| !v.is_null()) {
                if evs[i].kind == "call.started"
                    && !matches!(self.keep_crm_id(&evs[i], store, res).await, Delivery::Ok)
                {
                    return (
                        i,
                        Some(Delivery::Retry {
                            error: "cannot record the CRM call id".into(),
                            rate_limited: false,
                        }),
                    );
                }
                if evs[i].kind == "call.ended" {
                    self.keep_finished(&evs[i], store).await;
                }
                continue;
            }
            let method = if evs[i].kind == "call.started" {
                "register"
            } else {
                "finish"
            };
            let d = match errors.get(key) {
                Some(e) if !e.is_null() => command_error(method, e),
                // Not run (halted) or not answered: try again.
                _ => Delivery::Retry {
                    error: format!("batch: {method} not run"),
                    rate_limited: false,
                },
            };
            return (i, Some(d));
        }
        (keys.len(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_commands_encode_values_but_keep_result_references() {
        let q = query(
            &json!({"CALL_ID": "$result[c0][CALL_ID]", "PHONE_NUMBER": "+49 30", "TYPE": 2, "LINE_NUMBER": null}),
        );
        assert_eq!(
            q,
            "CALL_ID=$result[c0][CALL_ID]&PHONE_NUMBER=%2B49+30&TYPE=2"
        );
    }

    #[test]
    fn status_codes_for_outcomes() {
        let s = |dir: &str, outcome: &str, status: u64, answered: bool| {
            status_code(
                &json!({"direction": dir, "outcome": outcome, "status": status, "answered": answered}),
            )
        };
        assert_eq!(s("inbound", "completed", 200, true), "200");
        assert_eq!(s("inbound", "cancelled", 487, false), "304");
        assert_eq!(s("outbound", "cancelled", 487, false), "603-S");
        assert_eq!(s("outbound", "failed", 486, false), "486");
        assert_eq!(s("outbound", "failed", 404, false), "404");
        assert_eq!(s("outbound", "failed", 480, false), "480");
        assert_eq!(s("inbound", "failed", 480, false), "304");
        assert_eq!(s("outbound", "failed", 503, false), "503");
    }
}
