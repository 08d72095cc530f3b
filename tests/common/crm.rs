//! The strict test portal: a real HTTP server on loopback that behaves
//! as Bitrix24's REST documentation (bitrix24/b24restdocs) says and
//! records every request. Used by the in-process tests (tests/crm.rs),
//! by the real binary's tests (tests/restart.rs, tests/bitrix_app.rs) and
//! as the generic webhook's receiver.
//!
//! What it enforces, and where that comes from:
//! - `api-reference/telephony/telephony-external-call-register.md`: the
//!   telephony methods "work only in the context of an application": an
//!   inbound webhook (`/rest/USER/CODE/method`) gets `WRONG_AUTH_TYPE`.
//!   `USER_ID` or `USER_PHONE_INNER` is required; every register gets its
//!   own `CALL_ID`, and `finish`/`hide` for a `CALL_ID` it never gave (or
//!   one finished already) are refused.
//! - `settings/oauth/*`: application calls carry `auth=ACCESS_TOKEN`; an
//!   access token expires (`expired_token`); `oauth/token/` exchanges an
//!   `authorization_code` once and a `refresh_token` once (rotated).
//! - `settings/how-to-call-rest-api/batch.md`: `batch` runs `cmd` in key
//!   order, answers `result` / `result_error`, substitutes
//!   `$result[key][FIELD]`, stops at the first error with `halt=1`.
//! - `limits.md`: the leaky bucket (503 `QUERY_LIMIT_EXCEEDED`, counted
//!   per HTTP request) and the per-method operating time (`time.operating`,
//!   `time.operating_reset_at`; 429 `OPERATION_TIME_LIMIT` while over).
//! - `telephony-external-line-*.md`: the portal's external lines.
//!
//! Assumptions (the documentation names no status or code for them): a
//! webhook on a telephony method is HTTP 401; an unknown `CALL_ID` is 400
//! `ERROR_NOT_FOUND`; `externalLine.add` of an existing number and
//! `update` of an unknown one are 400 `ERROR_CORE`.

use std::collections::{BTreeMap, HashMap, HashSet};
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
/// Every REST request refused with 503 QUERY_LIMIT_EXCEEDED (an outage).
pub const LIMIT: u8 = 1;

/// The application the portal knows.
pub const CLIENT_ID: &str = "app.1";
pub const CLIENT_SECRET: &str = "app-secret";
/// The refresh token the portal starts with (as if installed earlier).
pub const FIRST_REFRESH: &str = "ref-0";
pub const MEMBER_ID: &str = "member-0123";
/// The inbound webhook's path (user 1, code `hookcode`).
pub const HOOK_PATH: &str = "rest/1/hookcode/";

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// A command carried inside a `batch` request (not an HTTP request).
    pub inner: bool,
    pub body: Value,
    pub at: Instant,
    pub headers: HeaderMap,
    pub raw: Bytes,
    /// What the portal answered when it refused the request: the HTTP
    /// status and the Bitrix24 error code. `None`: accepted.
    pub refused: Option<(StatusCode, &'static str)>,
}

/// One registration.
#[derive(Clone, Debug, Default)]
pub struct Registration {
    pub external: String,
    pub user: String,
    pub shown: bool,
    pub finished: bool,
    pub hidden_for: Vec<String>,
}

/// A method's calls within the window: (when, seconds of operating time).
type Baskets = Vec<(Instant, f64)>;
/// Seconds each call of a method costs, the limit, the window.
type OperatingLimit = (HashMap<String, f64>, f64, Duration);

/// Leaky bucket state: the counter and when it was last drained.
struct Leaky {
    rate: f64,
    burst: f64,
    counter: f64,
    at: Instant,
}

#[derive(Clone)]
pub struct Crm {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub mode: Arc<AtomicU8>,
    pub next_id: Arc<AtomicU64>,
    /// Access tokens given, with when each expires.
    tokens: Arc<Mutex<HashMap<String, Instant>>>,
    /// Refresh tokens that may be used (once each).
    refresh_ok: Arc<Mutex<HashSet<String>>>,
    /// Authorization codes that may be exchanged (once each).
    codes: Arc<Mutex<HashSet<String>>>,
    /// How long an access token lives.
    pub token_ttl: Arc<Mutex<Duration>>,
    /// Refresh tokens presented to the OAuth endpoint.
    pub refreshes: Arc<Mutex<Vec<String>>>,
    /// Grant types presented to the OAuth endpoint, in order.
    pub grants: Arc<Mutex<Vec<String>>>,
    /// Every register answered: (its EXTERNAL_CALL_ID, the CALL_ID given).
    pub registered: Arc<Mutex<Vec<(String, String)>>>,
    /// CALL_ID -> registration.
    pub calls: Arc<Mutex<HashMap<String, Registration>>>,
    /// REST requests are answered after this long (a hung portal).
    pub delay_ms: Arc<AtomicU64>,
    bucket: Arc<Mutex<Leaky>>,
    /// Per method: (when, seconds of operating time) within the window.
    operating: Arc<Mutex<HashMap<String, Baskets>>>,
    /// (seconds each call of a method costs, the limit, the window).
    pub op_cost: Arc<Mutex<OperatingLimit>>,
    /// The portal's external lines: NUMBER -> (NAME, CRM_AUTO_CREATE).
    pub lines: Arc<Mutex<BTreeMap<String, (String, String)>>>,
    /// The register answer's CRM fields, by PHONE_NUMBER.
    pub crm_answer: Arc<Mutex<HashMap<String, Value>>>,
    /// CRM records by list method (`crm.contact.list`, …): `ID`, `PHONE`
    /// (`[{"VALUE": …}]`), `ASSIGNED_BY_ID`, `DATE_MODIFY`.
    pub records: Arc<Mutex<BTreeMap<String, Vec<Value>>>>,
    /// `user.get`'s users (`ID`, `UF_PHONE_INNER`).
    pub users: Arc<Mutex<Vec<Value>>>,
    /// `searchCrmEntities` answers by PHONE_NUMBER.
    pub search: Arc<Mutex<HashMap<String, Value>>>,
}

impl Crm {
    pub async fn start() -> (Crm, SocketAddr) {
        let crm = Crm {
            seen: Default::default(),
            mode: Default::default(),
            next_id: Default::default(),
            tokens: Default::default(),
            refresh_ok: Arc::new(Mutex::new(HashSet::from([FIRST_REFRESH.to_string()]))),
            codes: Default::default(),
            token_ttl: Arc::new(Mutex::new(Duration::from_secs(3600))),
            refreshes: Default::default(),
            grants: Default::default(),
            registered: Default::default(),
            calls: Default::default(),
            delay_ms: Default::default(),
            // limits.md: 2 requests/s, 50 before blocking (not Enterprise).
            bucket: Arc::new(Mutex::new(Leaky {
                rate: 2.0,
                burst: 50.0,
                counter: 0.0,
                at: Instant::now(),
            })),
            operating: Default::default(),
            op_cost: Arc::new(Mutex::new((
                HashMap::new(),
                480.0,
                Duration::from_secs(600),
            ))),
            lines: Default::default(),
            crm_answer: Default::default(),
            records: Default::default(),
            users: Default::default(),
            search: Default::default(),
        };
        let app = Router::new()
            .route("/rest/{method}", post(app_rest))
            .route("/rest/{user}/{code}/{method}", post(hook_rest))
            .route("/hook", post(hook))
            .route("/oauth/token/", axum::routing::get(oauth).post(oauth_post))
            .with_state(crm.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        (crm, addr)
    }

    /// The bucket: `rate` requests a second drain it, `burst` fill it.
    pub fn set_bucket(&self, rate: f64, burst: u32) {
        let mut b = self.bucket.lock().unwrap();
        b.rate = rate;
        b.burst = f64::from(burst);
        b.counter = 0.0;
    }

    /// Every call of `method` costs `secs` of operating time; over
    /// `limit` seconds within `window` the method is blocked.
    pub fn set_operating(&self, method: &str, secs: f64, limit: f64, window: Duration) {
        let mut c = self.op_cost.lock().unwrap();
        c.0.insert(method.to_string(), secs);
        c.1 = limit;
        c.2 = window;
    }

    /// An authorization code the OAuth endpoint will exchange once.
    pub fn add_code(&self, code: &str) {
        self.codes.lock().unwrap().insert(code.to_string());
    }

    /// A registration the portal knows (as if registered earlier).
    pub fn known_call(&self, call_id: &str) {
        self.calls.lock().unwrap().insert(
            call_id.to_string(),
            Registration {
                user: "1".into(),
                ..Default::default()
            },
        );
    }

    /// Every access token given so far expires now.
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for t in self.tokens.lock().unwrap().values_mut() {
            *t = now;
        }
    }

    /// Forgets every token (as if the application were reinstalled).
    pub fn revoke_all(&self) {
        self.tokens.lock().unwrap().clear();
        self.refresh_ok.lock().unwrap().clear();
    }

    /// Issues a token pair, as an install would (access, refresh).
    pub fn issue(&self) -> (String, String) {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (a, r) = (format!("inst-acc-{n}"), format!("inst-ref-{n}"));
        let ttl = *self.token_ttl.lock().unwrap();
        self.tokens
            .lock()
            .unwrap()
            .insert(a.clone(), Instant::now() + ttl);
        self.refresh_ok.lock().unwrap().insert(r.clone());
        (a, r)
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

    /// Requests refused, in arrival order.
    pub fn refusals(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.refused.is_some())
            .collect()
    }

    /// Refusals with this Bitrix24 error code.
    pub fn refused_with(&self, code: &str) -> Vec<Seen> {
        self.refusals()
            .into_iter()
            .filter(|s| s.refused.is_some_and(|(_, c)| c == code))
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
                    self.seen()
                        .iter()
                        .map(|s| (&s.method, s.refused))
                        .collect::<Vec<_>>()
                )
            },
        )
        .await;
    }

    fn record(
        &self,
        method: &str,
        inner: bool,
        body: &Value,
        refused: Option<(StatusCode, &'static str)>,
    ) {
        self.seen.lock().unwrap().push(Seen {
            inner,
            method: method.to_string(),
            body: body.clone(),
            at: Instant::now(),
            headers: HeaderMap::new(),
            raw: Bytes::new(),
            refused,
        });
    }

    /// Takes a bucket token for one HTTP request; false: over the limit.
    fn bucket_ok(&self) -> bool {
        let mut b = self.bucket.lock().unwrap();
        let now = Instant::now();
        b.counter = (b.counter - now.duration_since(b.at).as_secs_f64() * b.rate).max(0.0);
        b.at = now;
        if b.counter + 1.0 > b.burst {
            return false;
        }
        b.counter += 1.0;
        true
    }

    /// Operating time of `method` now: (sum, reset at as unix seconds),
    /// after dropping what left the window.
    fn operating(&self, method: &str) -> (f64, f64) {
        let window = self.op_cost.lock().unwrap().2;
        let mut op = self.operating.lock().unwrap();
        let v = op.entry(method.to_string()).or_default();
        let now = Instant::now();
        v.retain(|(t, _)| now.duration_since(*t) < window);
        let sum = v.iter().map(|(_, s)| s).sum();
        let reset = v.first().map_or(now + window, |(t, _)| *t + window);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            + reset.saturating_duration_since(now).as_secs_f64();
        (sum, unix.ceil())
    }

    /// Adds a call's cost; the `time` object of the answer.
    fn charge(&self, method: &str) -> Value {
        let cost = self
            .op_cost
            .lock()
            .unwrap()
            .0
            .get(method)
            .copied()
            .unwrap_or(0.0);
        if cost > 0.0 {
            self.operating
                .lock()
                .unwrap()
                .entry(method.to_string())
                .or_default()
                .push((Instant::now(), cost));
        }
        let (operating, reset) = self.operating(method);
        json!({"duration": cost, "operating": operating, "operating_reset_at": reset})
    }

    fn over_operating(&self, method: &str) -> bool {
        let limit = self.op_cost.lock().unwrap().1;
        self.operating(method).0 > limit
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

/// A `[[crm.bitrix24]]` sink connected as the portal's application (its
/// refresh token written in the config, as a seed), with the bucket the
/// portal enforces. No line sync (tests/bitrix_app.rs has it): these
/// tests count the portal's requests.
pub fn app_sink(name: &str, crm: SocketAddr, rate: f64, burst: u32) -> String {
    format!(
        "[[crm.bitrix24]]\nname = \"{name}\"\nrest_url = \"http://{crm}/rest/\"\noauth_url = \"http://{crm}/oauth/token/\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nrefresh_token = \"{FIRST_REFRESH}\"\n\
         rate_per_sec = {rate:?}\nburst = {burst}\nsync_lines = false\nsync_directory = false\ndefault_user = \"1\"\n"
    )
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

type Answer = (StatusCode, String);

fn error(status: StatusCode, code: &str, description: &str) -> Answer {
    (
        status,
        json!({"error": code, "error_description": description}).to_string(),
    )
}

/// An inbound webhook: refused for telephony, served otherwise.
async fn hook_rest(
    State(crm): State<Crm>,
    Path((user, code, method)): Path<(String, String, String)>,
    raw: Bytes,
) -> Answer {
    let method = method.trim_end_matches(".json").to_lowercase();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    if !crm.bucket_ok() {
        crm.record(
            &method,
            false,
            &body,
            Some((StatusCode::SERVICE_UNAVAILABLE, "QUERY_LIMIT_EXCEEDED")),
        );
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "QUERY_LIMIT_EXCEEDED",
            "Too many requests",
        );
    }
    if format!("rest/{user}/{code}/") != HOOK_PATH {
        crm.record(
            &method,
            false,
            &body,
            Some((StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS")),
        );
        return error(
            StatusCode::UNAUTHORIZED,
            "INVALID_CREDENTIALS",
            "Invalid request credentials",
        );
    }
    if method.starts_with("telephony.") || method == "batch" {
        crm.record(
            &method,
            false,
            &body,
            Some((StatusCode::UNAUTHORIZED, "WRONG_AUTH_TYPE")),
        );
        return error(
            StatusCode::UNAUTHORIZED,
            "WRONG_AUTH_TYPE",
            "Current authorization type is denied for this method",
        );
    }
    let (answer, refused) = serve(&crm, &method, &body);
    crm.record(&method, false, &body, refused);
    answer
}

/// An application's call: `auth` carries its access token.
async fn app_rest(
    State(crm): State<Crm>,
    Path(method): Path<String>,
    headers: HeaderMap,
    raw: Bytes,
) -> Answer {
    let delay = crm.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let method = method.trim_end_matches(".json").to_lowercase();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let mut seen = Seen {
        inner: false,
        method: method.clone(),
        body: body.clone(),
        at: Instant::now(),
        headers,
        raw,
        refused: None,
    };
    let refuse = |crm: &Crm, mut seen: Seen, status: StatusCode, code: &'static str, d: &str| {
        seen.refused = Some((status, code));
        crm.seen.lock().unwrap().push(seen);
        error(status, code, d)
    };
    if crm.mode.load(Ordering::Relaxed) == LIMIT || !crm.bucket_ok() {
        return refuse(
            &crm,
            seen,
            StatusCode::SERVICE_UNAVAILABLE,
            "QUERY_LIMIT_EXCEEDED",
            "Too many requests",
        );
    }
    let Some(token) = body["auth"].as_str() else {
        return refuse(
            &crm,
            seen,
            StatusCode::UNAUTHORIZED,
            "NO_AUTH_FOUND",
            "Wrong authorization data",
        );
    };
    let expires = crm.tokens.lock().unwrap().get(token).copied();
    match expires {
        None => {
            return refuse(
                &crm,
                seen,
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "Unable to authorize user",
            );
        }
        Some(t) if t <= Instant::now() => {
            return refuse(
                &crm,
                seen,
                StatusCode::UNAUTHORIZED,
                "expired_token",
                "The access token provided has expired.",
            );
        }
        Some(_) => {}
    }
    if method != "batch" && crm.over_operating(&method) {
        return refuse(
            &crm,
            seen,
            StatusCode::TOO_MANY_REQUESTS,
            "OPERATION_TIME_LIMIT",
            "Method is blocked due to operation time limit.",
        );
    }
    if method == "batch" {
        crm.seen.lock().unwrap().push(seen);
        return batch(&crm, &body);
    }
    let (answer, refused) = serve(&crm, &method, &body);
    seen.refused = refused;
    crm.seen.lock().unwrap().push(seen);
    answer
}

/// One method's answer: `{result, time}` or an error (and its status and
/// code, for the record).
fn serve(crm: &Crm, method: &str, params: &Value) -> (Answer, Option<(StatusCode, &'static str)>) {
    match answer(crm, method, params) {
        Ok(result) => (
            (
                StatusCode::OK,
                json!({"result": result, "time": crm.charge(method)}).to_string(),
            ),
            None,
        ),
        Err((status, code, d)) => (error(status, code, &d), Some((status, code))),
    }
}

/// `batch`: commands in key order, `$result[key][FIELD]` substituted,
/// each recorded as if it had come alone; `halt=1` stops at the first
/// error.
fn batch(crm: &Crm, body: &Value) -> Answer {
    let halt = matches!(body["halt"].as_i64(), Some(1)) || body["halt"].as_str() == Some("1");
    let mut results = serde_json::Map::new();
    let mut errors = serde_json::Map::new();
    let mut times = serde_json::Map::new();
    let cmds = body["cmd"].as_object().cloned().unwrap_or_default();
    for (key, c) in cmds {
        let c = c.as_str().unwrap_or("");
        let (inner, q) = c.split_once('?').unwrap_or((c, ""));
        let inner = inner.to_lowercase();
        let mut params = serde_json::Map::new();
        let mut bad_ref = None;
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = url::form_urlencoded::parse(format!("k={k}").as_bytes())
                .next()
                .map(|(_, x)| x.into_owned())
                .unwrap_or_default();
            let v = if let Some(r) = v.strip_prefix("$result[") {
                // $result[key][FIELD]
                let (rk, rest) = r.split_once("][").unwrap_or((r, ""));
                let field = rest.trim_end_matches(']');
                match results.get(rk).and_then(|x| x.get(field)) {
                    Some(Value::String(s)) => s.clone(),
                    Some(x) => x.to_string(),
                    None => {
                        bad_ref = Some(rk.to_string());
                        String::new()
                    }
                }
            } else {
                url::form_urlencoded::parse(format!("v={v}").as_bytes())
                    .next()
                    .map(|(_, x)| x.into_owned())
                    .unwrap_or_default()
            };
            // Bitrix24 reads every value as text; the single-request
            // JSON sends these as numbers, so compare them alike.
            let numeric = matches!(k.as_str(), "TYPE" | "CRM_CREATE" | "SHOW" | "DURATION");
            let val = match v.parse::<i64>() {
                Ok(n) if numeric => Value::from(n),
                _ => Value::String(v),
            };
            params.insert(k, val);
        }
        let params = Value::Object(params);
        let outcome = if let Some(rk) = bad_ref {
            Err((
                StatusCode::BAD_REQUEST,
                "ERROR_BATCH_REFERENCE",
                format!("no result of {rk} to refer to"),
            ))
        } else if crm.over_operating(&inner) {
            Err((
                StatusCode::TOO_MANY_REQUESTS,
                "OPERATION_TIME_LIMIT",
                "Method is blocked due to operation time limit.".to_string(),
            ))
        } else {
            answer(crm, &inner, &params)
        };
        match outcome {
            Ok(r) => {
                crm.record(&inner, true, &params, None);
                times.insert(key.clone(), crm.charge(&inner));
                results.insert(key, r);
            }
            Err((status, code, d)) => {
                crm.record(&inner, true, &params, Some((status, code)));
                errors.insert(key, json!({"error": code, "error_description": d}));
                if halt {
                    break;
                }
            }
        }
    }
    (
        StatusCode::OK,
        json!({"result": {"result": results, "result_error": errors, "result_time": times}, "time": crm.charge("batch")})
            .to_string(),
    )
}

type Refusal = (StatusCode, &'static str, String);

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

fn answer(crm: &Crm, method: &str, params: &Value) -> Result<Value, Refusal> {
    let bad = |code: &'static str, d: &str| Err((StatusCode::BAD_REQUEST, code, d.to_string()));
    match method {
        "telephony.externalcall.register" => {
            let user = [&params["USER_ID"], &params["USER_PHONE_INNER"]]
                .into_iter()
                .map(text)
                .find(|u| !u.is_empty());
            let Some(user) = user else {
                return bad(
                    "ERROR_ARGUMENT",
                    "USER_ID or USER_PHONE_INNER should be set",
                );
            };
            if text(&params["PHONE_NUMBER"]).is_empty() || text(&params["TYPE"]).is_empty() {
                return bad("ERROR_ARGUMENT", "PHONE_NUMBER and TYPE are required");
            }
            let n = crm.next_id.fetch_add(1, Ordering::Relaxed);
            let id = format!("externalCall.{n}");
            let ext = text(&params["EXTERNAL_CALL_ID"]);
            crm.registered
                .lock()
                .unwrap()
                .push((ext.clone(), id.clone()));
            crm.calls.lock().unwrap().insert(
                id.clone(),
                Registration {
                    external: ext,
                    user,
                    shown: text(&params["SHOW"]) != "0",
                    ..Default::default()
                },
            );
            let phone = text(&params["PHONE_NUMBER"]);
            let mut r = json!({"CALL_ID": id, "CRM_CREATED_LEAD": null, "CRM_CREATED_ENTITIES": [],
                               "CRM_ENTITY_TYPE": "", "CRM_ENTITY_ID": null});
            if let Some(Value::Object(extra)) = crm.crm_answer.lock().unwrap().get(&phone) {
                for (k, v) in extra {
                    r[k] = v.clone();
                }
            }
            Ok(r)
        }
        "telephony.externalcall.finish" | "telephony.externalcall.hide" => {
            let id = text(&params["CALL_ID"]);
            let mut calls = crm.calls.lock().unwrap();
            let Some(c) = calls.get_mut(&id) else {
                return bad("ERROR_NOT_FOUND", "Call is not found");
            };
            if method.ends_with("finish") {
                if c.finished {
                    return bad("ERROR_NOT_FOUND", "Call is already finished");
                }
                c.finished = true;
                Ok(
                    json!({"CALL_ID": id, "CALL_FAILED_CODE": text(&params["STATUS_CODE"]),
                          "CALL_DURATION": text(&params["DURATION"])}),
                )
            } else {
                c.hidden_for.push(text(&params["USER_ID"]));
                Ok(json!(true))
            }
        }
        "telephony.externalline.get" => Ok(Value::Array(
            crm.lines
                .lock()
                .unwrap()
                .iter()
                .map(
                    |(n, (name, auto))| json!({"NUMBER": n, "NAME": name, "CRM_AUTO_CREATE": auto}),
                )
                .collect(),
        )),
        "telephony.externalline.add" | "telephony.externalline.update" => {
            let number = text(&params["NUMBER"]);
            if number.is_empty() {
                return bad("ERROR_CORE", "NUMBER is required");
            }
            let mut lines = crm.lines.lock().unwrap();
            let exists = lines.contains_key(&number);
            let add = method.ends_with("add");
            if add && exists {
                return bad("ERROR_CORE", "Line with this number already exists");
            }
            if !add && !exists {
                return bad("ERROR_CORE", "Line is not found");
            }
            let (name, auto) = (text(&params["NAME"]), text(&params["CRM_AUTO_CREATE"]));
            if !add && name.is_empty() && auto.is_empty() {
                return bad("ERROR_CORE", "Nothing to update");
            }
            let e = lines
                .entry(number.clone())
                .or_insert_with(|| (number.clone(), "Y".into()));
            if !name.is_empty() {
                e.0 = name;
            }
            if !auto.is_empty() {
                e.1 = auto;
            }
            let id = lines.keys().position(|k| *k == number).unwrap_or(0) + 1;
            Ok(json!({"ID": id}))
        }
        "crm.contact.list" | "crm.company.list" | "crm.lead.list" | "user.get" => {
            let start: usize = text(&params["start"]).parse().unwrap_or(0);
            let since = text(&params["filter[>DATE_MODIFY]"]);
            let rows = if method == "user.get" {
                crm.users.lock().unwrap().clone()
            } else {
                crm.records
                    .lock()
                    .unwrap()
                    .get(method)
                    .cloned()
                    .unwrap_or_default()
            };
            Ok(Value::Array(
                rows.into_iter()
                    .filter(|r| since.is_empty() || text(&r["DATE_MODIFY"]) > since)
                    .skip(start)
                    .take(50)
                    .collect(),
            ))
        }
        "telephony.externalcall.searchcrmentities" => Ok(crm
            .search
            .lock()
            .unwrap()
            .get(&text(&params["PHONE_NUMBER"]))
            .cloned()
            .unwrap_or_else(|| json!([]))),
        _ => bad("ERROR_METHOD_NOT_FOUND", "Method not found"),
    }
}

async fn oauth(
    State(crm): State<Crm>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Answer {
    token(&crm, &q)
}

async fn oauth_post(
    State(crm): State<Crm>,
    axum::extract::Query(mut q): axum::extract::Query<HashMap<String, String>>,
    raw: Bytes,
) -> Answer {
    q.extend(url::form_urlencoded::parse(&raw).into_owned());
    token(&crm, &q)
}

/// `oauth/token/`: `authorization_code` and `refresh_token` grants, each
/// code and refresh token good once.
fn token(crm: &Crm, q: &HashMap<String, String>) -> Answer {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    if get("client_id") != CLIENT_ID || get("client_secret") != CLIENT_SECRET {
        return error(StatusCode::UNAUTHORIZED, "invalid_client", "invalid client");
    }
    crm.grants
        .lock()
        .unwrap()
        .push(get("grant_type").to_string());
    match get("grant_type") {
        "refresh_token" => {
            crm.refreshes
                .lock()
                .unwrap()
                .push(get("refresh_token").to_string());
            if !crm.refresh_ok.lock().unwrap().remove(get("refresh_token")) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid refresh token",
                );
            }
        }
        "authorization_code" => {
            if !crm.codes.lock().unwrap().remove(get("code")) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid authorization code",
                );
            }
        }
        _ => return error(StatusCode::BAD_REQUEST, "unsupported_grant_type", ""),
    }
    let n = if get("grant_type") == "refresh_token" {
        crm.refreshes.lock().unwrap().len().to_string()
    } else {
        format!("code-{}", crm.next_id.fetch_add(1, Ordering::Relaxed))
    };
    let (access, refresh) = (format!("acc-{n}"), format!("ref-{n}"));
    let ttl = *crm.token_ttl.lock().unwrap();
    crm.tokens
        .lock()
        .unwrap()
        .insert(access.clone(), Instant::now() + ttl);
    crm.refresh_ok.lock().unwrap().insert(refresh.clone());
    (
        StatusCode::OK,
        json!({"access_token": access, "refresh_token": refresh, "expires_in": ttl.as_secs(),
               "member_id": MEMBER_ID, "domain": "oauth.bitrix.info", "scope": "telephony,crm,user",
               "client_endpoint": "https://portal.example/rest/", "status": "L"})
        .to_string(),
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
