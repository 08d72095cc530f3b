//! The in-process stand-in CRM: a real HTTP server on loopback that
//! records every request (Bitrix24 REST and `batch`, the generic webhook,
//! the OAuth token endpoint) and can answer 503 QUERY_LIMIT_EXCEEDED or
//! hang. Used by the in-process tests (tests/crm.rs) and by the real
//! binary's restart tests (tests/restart.rs).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

pub const OK: u8 = 0;
pub const LIMIT: u8 = 1;

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// A command carried inside a `batch` request (not an HTTP request).
    pub inner: bool,
    pub body: Value,
    pub at: Instant,
    pub headers: HeaderMap,
    pub raw: Bytes,
    /// What the CRM answered when it refused the request (limit mode):
    /// the HTTP status and the Bitrix24 error code. `None`: accepted.
    pub refused: Option<(StatusCode, &'static str)>,
}

#[derive(Clone, Default)]
pub struct Crm {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub mode: Arc<AtomicU8>,
    pub next_id: Arc<AtomicU64>,
    /// OAuth mode: the access token the portal accepts now.
    pub valid_token: Arc<Mutex<Option<String>>>,
    /// Refresh tokens presented to the OAuth endpoint.
    pub refreshes: Arc<Mutex<Vec<String>>>,
    /// Every register answered: (its EXTERNAL_CALL_ID, the CALL_ID given).
    pub registered: Arc<Mutex<Vec<(String, String)>>>,
    /// REST requests are answered after this long (a hung portal).
    pub delay_ms: Arc<AtomicU64>,
}

impl Crm {
    pub async fn start() -> (Crm, SocketAddr) {
        let crm = Crm::default();
        let app = Router::new()
            .route("/rest/{method}", post(rest))
            .route("/hook", post(hook))
            .route("/oauth/token/", axum::routing::get(oauth))
            .with_state(crm.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        (crm, addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Accepted requests of one Bitrix24 method, in arrival order.
    pub fn calls(&self, method: &str) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == method && s.refused.is_none())
            .map(|s| s.body)
            .collect()
    }

    /// Requests refused in limit mode, in arrival order.
    pub fn refusals(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.refused.is_some())
            .collect()
    }

    /// Bodies the webhook received, in arrival order.
    pub fn hooks(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "hook")
            .collect()
    }

    pub async fn wait_for(&self, what: &str, n: usize) {
        until(
            || self.calls(what).len() >= n,
            || {
                format!(
                    "{what}: {} of {n} requests arrived: {:?}",
                    self.calls(what).len(),
                    self.seen().iter().map(|s| &s.method).collect::<Vec<_>>()
                )
            },
        )
        .await;
    }
}

/// Polls `cond` until it holds; fails with `what()` after 30 s.
pub async fn until(mut cond: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "{}", what());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first Bitrix24 command a request carried, as (method, parameters
/// as text): the request itself, or a batch's first command.
pub fn first_command(s: &Seen) -> (String, std::collections::HashMap<String, String>) {
    if s.method != "batch" {
        let params = s.body.as_object().into_iter().flatten();
        let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
        return (
            s.method.clone(),
            params.map(|(k, v)| (k.clone(), text(v))).collect(),
        );
    }
    let cmd = s.body["cmd"].as_object().and_then(|c| c.values().next());
    let cmd = cmd.and_then(Value::as_str).unwrap_or("");
    let (method, q) = cmd.split_once('?').unwrap_or((cmd, ""));
    (
        method.to_string(),
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect(),
    )
}

async fn rest(
    State(crm): State<Crm>,
    Path(method): Path<String>,
    headers: HeaderMap,
    raw: Bytes,
) -> (StatusCode, String) {
    let delay = crm.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let method = method.trim_end_matches(".json").to_string();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let valid = crm.valid_token.lock().unwrap().clone();
    if let Some(t) = valid
        && body["auth"].as_str() != Some(t.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            json!({"error": "expired_token", "error_description": "The access token provided has expired."}).to_string(),
        );
    }
    let refused = (crm.mode.load(Ordering::Relaxed) == LIMIT)
        .then_some((StatusCode::SERVICE_UNAVAILABLE, "QUERY_LIMIT_EXCEEDED"));
    crm.seen.lock().unwrap().push(Seen {
        inner: false,
        method: method.clone(),
        body: body.clone(),
        at: Instant::now(),
        headers,
        raw,
        refused,
    });
    if let Some((status, code)) = refused {
        return (
            status,
            json!({"error": code, "error_description": "Too many requests"}).to_string(),
        );
    }
    if method == "batch" {
        // Commands in key order, `$result[cN][CALL_ID]` substituted, each
        // recorded as if it had come alone.
        let mut results = serde_json::Map::new();
        let cmds = body["cmd"].as_object().cloned().unwrap_or_default();
        for (key, c) in cmds {
            let c = c.as_str().unwrap_or("");
            let (inner, q) = c.split_once('?').unwrap_or((c, ""));
            let mut params = serde_json::Map::new();
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let v = match v
                    .strip_prefix("$result[")
                    .and_then(|r| r.strip_suffix("][CALL_ID]"))
                {
                    Some(r) => results[r]["CALL_ID"].as_str().unwrap().to_string(),
                    None => url::form_urlencoded::parse(format!("v={v}").as_bytes())
                        .next()
                        .map(|(_, x)| x.into_owned())
                        .unwrap_or_default(),
                };
                // Bitrix24 reads every value as text; the single-request
                // JSON sends these as numbers, so compare them alike.
                let numeric = matches!(k, "TYPE" | "CRM_CREATE" | "SHOW" | "DURATION");
                let val = match v.parse::<i64>() {
                    Ok(n) if numeric => Value::from(n),
                    _ => Value::String(v),
                };
                params.insert(k.to_string(), val);
            }
            let params = Value::Object(params);
            crm.seen.lock().unwrap().push(Seen {
                inner: true,
                method: inner.to_string(),
                body: params.clone(),
                at: Instant::now(),
                headers: HeaderMap::new(),
                raw: Bytes::new(),
                refused: None,
            });
            results.insert(key, answer(&crm, inner, &params));
        }
        return (
            StatusCode::OK,
            json!({"result": {"result": results, "result_error": {}}}).to_string(),
        );
    }
    (
        StatusCode::OK,
        json!({"result": answer(&crm, &method, &body)}).to_string(),
    )
}

fn answer(crm: &Crm, method: &str, params: &Value) -> Value {
    let n = crm.next_id.fetch_add(1, Ordering::Relaxed);
    match method {
        "telephony.externalcall.register" => {
            let id = format!("externalCall.{n}");
            let ext = params["EXTERNAL_CALL_ID"]
                .as_str()
                .unwrap_or("")
                .to_string();
            crm.registered.lock().unwrap().push((ext, id.clone()));
            json!({"CALL_ID": id, "CRM_CREATED_LEAD": 1})
        }
        _ => json!({"CALL_FAILED_CODE": "200"}),
    }
}

async fn oauth(
    State(crm): State<Crm>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, String) {
    if q.get("client_id").map(String::as_str) != Some("app.1")
        || q.get("client_secret").map(String::as_str) != Some("app-secret")
        || q.get("grant_type").map(String::as_str) != Some("refresh_token")
    {
        return (
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client"}).to_string(),
        );
    }
    let mut seen = crm.refreshes.lock().unwrap();
    seen.push(q.get("refresh_token").cloned().unwrap_or_default());
    let n = seen.len();
    *crm.valid_token.lock().unwrap() = Some(format!("acc-{n}"));
    (
        StatusCode::OK,
        json!({"access_token": format!("acc-{n}"), "refresh_token": format!("ref-{n}"), "expires_in": 3600}).to_string(),
    )
}

async fn hook(State(crm): State<Crm>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    crm.seen.lock().unwrap().push(Seen {
        inner: false,
        method: "hook".into(),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        at: Instant::now(),
        headers,
        raw,
        refused: None,
    });
    StatusCode::OK
}
