//! Bitrix24 REST telephony: `telephony.externalcall.register` when a call
//! starts and `telephony.externalcall.finish` when it ends (with the
//! `CALL_ID` register answered, kept in the store). `call.answered` and
//! `call.responsible_changed` need no request of their own: finish carries
//! the responsible person at the end.
//!
//! The telephony methods work only for an installed application
//! (`api-reference/telephony/telephony-external-call-register.md`; an
//! inbound webhook gets `WRONG_AUTH_TYPE`): every request carries the
//! application's access token as `auth` ([`App`]), refreshed when it
//! expires. HTTP 503 `QUERY_LIMIT_EXCEEDED` backs off; 429
//! `OPERATION_TIME_LIMIT` pauses the method until the portal's
//! `operating_reset_at` (`limits.md`), without counting a failed attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

pub use super::b24app::{App, AppConfig};
use super::{CrmError, Delivery, Sink, cut};
use crate::events::{CallEvent, Direction, Ended, EventKind};
use crate::store::fleet::AllowanceStore;
use crate::store::{OutEvent, OutboxStore};

const REGISTER: &str = "telephony.externalcall.register";
const FINISH: &str = "telephony.externalcall.finish";
const HIDE: &str = "telephony.externalcall.hide";
const BATCH: &str = "batch";

/// A method blocked without a reset time from the portal waits this long
/// (one of the limit's one-minute baskets).
const DEFAULT_PAUSE_MS: u64 = 60_000;
/// Longest pause: the limit's whole window (10 minutes).
const MAX_PAUSE_MS: u64 = 600_000;

pub struct Bitrix24 {
    name: String,
    app: Arc<App>,
    /// `USER_ID` or `USER_PHONE_INNER`.
    user_field: String,
    /// For calls without a responsible person.
    default_user: Option<String>,
    /// Counts lead creation errors.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Where a registered call's client goes to be looked up in the CRM
    /// if the directory does not know it.
    lookups: std::sync::OnceLock<tokio::sync::mpsc::Sender<String>>,
    http: reqwest::Client,
    /// Per method: the last `operating_reset_at` seen (unix seconds).
    resets: Mutex<HashMap<String, f64>>,
    /// Per method: paused until (the tokio clock).
    paused: Mutex<HashMap<String, Instant>>,
    /// The portal's leaky bucket, shared by every request to it (delivery,
    /// line sync, directory sync, lookups): together they stay within it.
    bucket: Mutex<Option<super::Bucket>>,
    /// The bucket's rate and burst.
    rate: (f64, u32),
    /// In a fleet: the portal's allowance in the shared store, which every
    /// node's requests take from (the local bucket stands in while the
    /// store cannot be reached).
    shared: Option<Arc<dyn AllowanceStore>>,
}

impl Bitrix24 {
    pub fn new(
        name: &str,
        app: Arc<App>,
        user_field: &str,
        timeout: Duration,
    ) -> Result<Self, CrmError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| CrmError::Client(e.into()))?;
        Ok(Bitrix24 {
            name: name.to_string(),
            app,
            user_field: user_field.to_string(),
            default_user: None,
            metrics: None,
            lookups: std::sync::OnceLock::new(),
            http,
            resets: Mutex::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
            bucket: Mutex::new(None),
            rate: (0.0, 0),
            shared: None,
        })
    }

    /// Paces every request to the portal by one leaky bucket of `rate`
    /// requests a second, bursts up to `burst`.
    pub fn with_rate(mut self, rate: f64, burst: u32) -> Self {
        *self.bucket.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(super::Bucket::new(rate, burst));
        self.rate = (rate, burst);
        self
    }

    /// Takes the tokens from `allowance` (a fleet's shared store) instead
    /// of the local bucket: the portal counts every node's requests.
    pub fn with_allowance(mut self, allowance: Option<Arc<dyn AllowanceStore>>) -> Self {
        self.shared = allowance;
        self
    }

    /// The portal's key in a shared allowance: its REST address.
    fn portal_key(&self) -> String {
        let url = self.app.method_url("");
        format!("bitrix24:{}", url.trim_end_matches("/.json"))
    }

    /// Waits for a token of the portal's bucket (none configured: at once).
    pub async fn pace(&self) {
        if let Some(shared) = &self.shared
            && self.rate.0 > 0.0
        {
            let (st, key, (rate, burst)) = (shared.clone(), self.portal_key(), self.rate);
            match tokio::task::spawn_blocking(move || st.take(&key, rate, burst)).await {
                Ok(Ok(wait)) => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(sink = %self.name, error = %e, "the portal's shared allowance cannot be read: pacing by this node's bucket")
                }
                Err(e) => {
                    tracing::warn!(sink = %self.name, error = %e, "the portal's shared allowance cannot be read: pacing by this node's bucket")
                }
            }
        }
        loop {
            let wait = match self
                .bucket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                Some(b) => b.reserve(Instant::now()),
                None => return,
            };
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// The portal said "too many": its bucket starts from empty.
    fn drain(&self) {
        if let Some(shared) = &self.shared {
            let (st, key) = (shared.clone(), self.portal_key());
            // Off the caller's path; a failure leaves the refill to time.
            tokio::task::spawn_blocking(move || st.drain(&key));
        }
        if let Some(b) = self
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            b.drain();
        }
    }

    /// Registers calls without a responsible person for `user`.
    pub fn with_default_user(mut self, user: Option<String>) -> Self {
        self.default_user = user.filter(|u| !u.is_empty());
        self
    }

    /// Counts into `metrics`.
    pub fn with_metrics(mut self, metrics: Option<Arc<crate::metrics::Metrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Registered clients go to `tx` (the directory sync's lookups).
    pub fn set_lookups(&self, tx: tokio::sync::mpsc::Sender<String>) {
        let _ = self.lookups.set(tx);
    }

    /// Keeps what register answered about the CRM record (shown with the
    /// call log); a `LEAD_CREATION_ERROR` is logged and counted.
    async fn keep_answer(&self, ev: &OutEvent, r: &Value) {
        if let Some(tx) = self.lookups.get()
            && let Ok(v) = CallEvent::from_outbox(&ev.kind, &ev.payload)
        {
            // Full: the lookup waits for the next sync instead.
            let _ = tx.try_send(v.client);
        }
        let error = r["LEAD_CREATION_ERROR"].as_str().unwrap_or("");
        if !error.is_empty() {
            tracing::warn!(sink = %self.name, call = %ev.call, error = %cut(error), "Bitrix24 could not create the lead for the call");
            if let Some(m) = &self.metrics {
                m.crm_lead_creation_error(&self.name);
            }
        }
        let keep: serde_json::Map<String, Value> = [
            "CRM_ENTITY_TYPE",
            "CRM_ENTITY_ID",
            "CRM_CREATED_LEAD",
            "CRM_CREATED_ENTITIES",
            "LEAD_CREATION_ERROR",
        ]
        .into_iter()
        .filter_map(|k| {
            let v = r.get(k)?;
            let empty =
                v.is_null() || v.as_str() == Some("") || v.as_array().is_some_and(Vec::is_empty);
            (!empty).then(|| (k.to_string(), v.clone()))
        })
        .collect();
        let Some(st) = self.app.store().cloned() else {
            return;
        };
        if keep.is_empty() {
            return;
        }
        let (sink, call, text) = (
            self.name.clone(),
            ev.call.clone(),
            Value::Object(keep).to_string(),
        );
        let now = crate::clock::now_ms();
        if !matches!(
            tokio::task::spawn_blocking(move || st.set_crm_answer(&sink, &call, &text, now)).await,
            Ok(Ok(()))
        ) {
            tracing::error!(sink = %self.name, call = %ev.call, "keeping the Bitrix24 register answer failed");
        }
    }

    /// The application this sink sends as.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Notes `time.operating_reset_at` of an answer to `method`.
    fn note_time(&self, method: &str, time: &Value) {
        if let Some(at) = time["operating_reset_at"].as_f64() {
            self.resets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(method.to_string(), at);
        }
    }

    /// `method` got `OPERATION_TIME_LIMIT`: paused until the reset the
    /// portal announced last (`limits.md`: "for the first retry, refer to
    /// `operating_reset_at` from the last successful response"), else a
    /// minute.
    fn pause(&self, method: &str) -> CrmError {
        let reset = self
            .resets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(method)
            .copied();
        let now = crate::clock::now_ms() as f64;
        let wait_ms = reset
            .map(|at| at * 1000.0 - now)
            .filter(|w| *w > 0.0)
            .map_or(DEFAULT_PAUSE_MS, |w| (w.ceil() as u64).min(MAX_PAUSE_MS));
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                method.to_string(),
                Instant::now() + Duration::from_millis(wait_ms),
            );
        tracing::warn!(sink = %self.name, method, pause_ms = wait_ms, "Bitrix24 OPERATION_TIME_LIMIT: method paused until its reset");
        CrmError::OperationLimit {
            method: method.to_string(),
            wait_ms,
        }
    }

    /// Still paused: how long.
    fn paused_for(&self, method: &str) -> Option<CrmError> {
        let until = *self
            .paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(method)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| CrmError::OperationLimit {
            method: method.to_string(),
            wait_ms: left.as_millis().max(1) as u64,
        })
    }

    /// Calls `method` with `params` as the application; the `result` on
    /// success.
    pub async fn call(&self, method: &'static str, mut params: Value) -> Result<Value, Delivery> {
        if let Some(e) = self.paused_for(method) {
            return Err(Delivery::Retry(e));
        }
        let auth_failed = |e: CrmError| Delivery::Retry(e);
        for attempt in 0..2 {
            let token = match self.app.access() {
                Some(t) => t,
                None => {
                    self.app.refresh(None).await.map_err(auth_failed)?;
                    self.app
                        .access()
                        .ok_or(Delivery::Retry(CrmError::TokenRefused { method }))?
                }
            };
            params["auth"] = Value::String(token.clone());
            self.pace().await;
            let resp = self
                .http
                .post(self.app.method_url(method))
                .json(&params)
                .send()
                .await
                .map_err(|e| {
                    Delivery::Retry(CrmError::Transport {
                        method,
                        error: e.into(),
                    })
                })?;
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let error = body["error"].as_str().unwrap_or("");
            if (200..300).contains(&status) && error.is_empty() {
                self.note_time(method, &body["time"]);
                return Ok(body["result"].clone());
            }
            if error == "OPERATION_TIME_LIMIT" {
                return Err(Delivery::Retry(self.pause(method)));
            }
            if error == "QUERY_LIMIT_EXCEEDED" || status == 429 {
                self.drain();
                return Err(Delivery::Retry(CrmError::RateLimited { method }));
            }
            if matches!(error, "expired_token" | "invalid_token" | "NO_AUTH_FOUND") && attempt == 0
            {
                self.app.refresh(Some(&token)).await.map_err(auth_failed)?;
                continue;
            }
            let what = CrmError::Refused {
                method,
                status,
                code: error.to_string(),
                description: cut(body["error_description"].as_str().unwrap_or(&text)),
            };
            return Err(if status >= 500 || status == 408 || status == 401 {
                Delivery::Retry(what)
            } else {
                Delivery::Rejected(what)
            });
        }
        Err(Delivery::Retry(CrmError::TokenRefused { method }))
    }

    /// The responsible person, else the sink's `default_user`: register
    /// needs one (a call with neither goes without, and the portal's
    /// refusal says why).
    fn user(&self, ev: &CallEvent, params: &mut Value) {
        if let Some(r) = ev.responsible.as_ref().or(self.default_user.as_ref()) {
            params[&self.user_field] = Value::String(r.clone());
        }
    }
}

/// Bitrix24's `STATUS_CODE` for how a call ended.
pub fn status_code(direction: Direction, end: &Ended) -> String {
    let inbound = direction == Direction::Inbound;
    if end.answered {
        return "200".into();
    }
    match (end.outcome.as_str(), end.status) {
        ("cancelled", _) if inbound => "304".into(),
        ("cancelled", _) => "603-S".into(),
        (_, 486 | 600) => "486".into(),
        (_, 404 | 484 | 604) => "404".into(),
        (_, 480 | 408) if inbound => "304".into(),
        (_, 480 | 408) => "480".into(),
        (_, 403 | 603) => "603".into(),
        (_, 500..) => "503".into(),
        _ if inbound => "304".into(),
        _ => "480".into(),
    }
}

/// What one event asks of the portal.
enum Request {
    /// Nothing (responsible changed; answered without a card shown).
    None,
    Register(Value),
    /// A method on the registered call (finish, hide); `CALL_ID` from the
    /// store, or from a register earlier in the same batch.
    ForCall(&'static str, Value),
    /// An offered call that ended unanswered: its card hidden (hide
    /// parameters), then its finish.
    HideThenFinish(Value, Value),
}

impl Bitrix24 {
    /// The request `ev` asks for; a payload that is not a call event of
    /// its kind is refused for good (dead-lettered with the reason).
    fn request(&self, ev: &OutEvent) -> Result<Request, CrmError> {
        let v = CallEvent::from_outbox(&ev.kind, &ev.payload)?;
        Ok(match &v.kind {
            EventKind::Started => {
                let mut p = json!({
                    "PHONE_NUMBER": v.client,
                    "TYPE": if v.direction == Direction::Inbound { 2 } else { 1 },
                    "LINE_NUMBER": v.line,
                    "CRM_CREATE": i32::from(v.crm_create),
                    "CRM_SOURCE": v.source,
                    "SHOW": i32::from(v.offer),
                    "EXTERNAL_CALL_ID": v.call_id,
                    "CALL_START_DATE": v.start,
                });
                self.user(&v, &mut p);
                Request::Register(p)
            }
            EventKind::Ended(end) => {
                let mut p = json!({
                    "DURATION": end.duration,
                    "STATUS_CODE": status_code(v.direction, end),
                });
                self.user(&v, &mut p);
                // Shown and never answered (an answered call was hidden
                // on its answer): hidden now, before the finish.
                if v.offer
                    && !end.answered
                    && self.user_field == "USER_ID"
                    && let Some(u) = p.get("USER_ID").cloned()
                {
                    return Ok(Request::HideThenFinish(json!({"USER_ID": u}), p));
                }
                Request::ForCall(FINISH, p)
            }
            // The card was shown (`create = "offer"`): hidden once the
            // call is answered. Hide takes a user id, so only with
            // `user_field = "USER_ID"`.
            EventKind::Answered { .. } if v.offer && self.user_field == "USER_ID" => {
                let mut p = json!({});
                self.user(&v, &mut p);
                if p.get("USER_ID").is_none() {
                    return Ok(Request::None);
                }
                Request::ForCall(HIDE, p)
            }
            EventKind::Answered { .. } | EventKind::ResponsibleChanged { .. } => Request::None,
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
        let failed = |error| Delivery::Retry(CrmError::CallIdStore { op: "read", error });
        match r {
            Ok(Ok(done)) => {
                if done {
                    tracing::info!(sink = %self.name, event = %ev.kind, call = %ev.call, "already sent to the CRM before a restart: not sent again");
                }
                Ok(done)
            }
            Ok(Err(e)) => Err(failed(e.into())),
            Err(e) => Err(failed(e.into())),
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
        let failed = |error| Delivery::Retry(CrmError::CallIdStore { op: "read", error });
        match tokio::task::spawn_blocking(move || st.crm_call(&sink, &call)).await {
            Ok(Ok(Some(id))) => Ok(id),
            Ok(Ok(None)) => Err(Delivery::Rejected(CrmError::NotRegistered)),
            Ok(Err(e)) => Err(failed(e.into())),
            Err(e) => Err(failed(e.into())),
        }
    }

    async fn keep_crm_id(
        &self,
        ev: &OutEvent,
        store: &Arc<dyn OutboxStore>,
        r: &Value,
    ) -> Delivery {
        let Some(id) = r["CALL_ID"].as_str() else {
            return Delivery::Rejected(CrmError::NoCallId(cut(&r.to_string())));
        };
        let (st, sink, call, id) = (
            store.clone(),
            self.name.clone(),
            ev.call.clone(),
            id.to_string(),
        );
        let failed = |error| {
            Delivery::Retry(CrmError::CallIdStore {
                op: "record",
                error,
            })
        };
        match tokio::task::spawn_blocking(move || st.set_crm_call(&sink, &call, &id)).await {
            Ok(Ok(())) => {
                self.keep_answer(ev, r).await;
                Delivery::Ok
            }
            Ok(Err(e)) => failed(e.into()),
            Err(e) => failed(e.into()),
        }
    }
}

/// `KEY=value&…` for a batch command (PHP's http_build_query form).
pub fn query(p: &Value) -> String {
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
fn command_error(sink: &Bitrix24, method: &'static str, e: &Value) -> Delivery {
    let code = e["error"].as_str().unwrap_or("");
    if code == "OPERATION_TIME_LIMIT" {
        return Delivery::Retry(sink.pause(method));
    }
    let what = CrmError::Command {
        method,
        code: code.to_string(),
        description: cut(e["error_description"].as_str().unwrap_or("")),
    };
    match code {
        "QUERY_LIMIT_EXCEEDED" => Delivery::Retry(CrmError::RateLimited { method }),
        "expired_token" | "invalid_token" | "NO_AUTH_FOUND" | "INTERNAL_SERVER_ERROR" => {
            Delivery::Retry(what)
        }
        _ => Delivery::Rejected(what),
    }
}

#[async_trait::async_trait]
impl Sink for Bitrix24 {
    fn name(&self) -> &str {
        &self.name
    }

    fn paces_itself(&self) -> bool {
        self.rate.0 > 0.0
    }

    fn max_batch(&self) -> usize {
        50
    }

    fn connected(&self) -> bool {
        self.app.connected()
    }

    async fn deliver(&self, ev: &OutEvent, store: &Arc<dyn OutboxStore>) -> Delivery {
        match self.done_before(ev, store).await {
            Ok(true) => return Delivery::Ok,
            Ok(false) => {}
            Err(d) => return d,
        }
        match self.request(ev) {
            Err(e) => Delivery::Rejected(e),
            Ok(Request::None) => Delivery::Ok,
            Ok(Request::Register(p)) => match self.call(REGISTER, p).await {
                Ok(r) => self.keep_crm_id(ev, store, &r).await,
                Err(d) => d,
            },
            Ok(Request::HideThenFinish(mut hide, mut p)) => {
                let id = match self.crm_id(ev, store).await {
                    Ok(id) => id,
                    Err(d) => return d,
                };
                hide["CALL_ID"] = Value::String(id.clone());
                match self.call(HIDE, hide).await {
                    Ok(_) => {}
                    Err(Delivery::Rejected(e)) => {
                        // The card stays shown; the call is still finished.
                        tracing::warn!(sink = %self.name, call = %ev.call, error = %e, "Bitrix24 refused to hide the call's card");
                    }
                    Err(d) => return d,
                }
                p["CALL_ID"] = Value::String(id);
                match self.call(FINISH, p).await {
                    Ok(_) => {
                        self.keep_finished(ev, store).await;
                        Delivery::Ok
                    }
                    Err(d) => d,
                }
            }
            Ok(Request::ForCall(method, mut p)) => {
                match self.crm_id(ev, store).await {
                    Ok(id) => p["CALL_ID"] = Value::String(id),
                    Err(d) => return d,
                }
                match self.call(method, p).await {
                    Ok(_) => {
                        if method == FINISH {
                            self.keep_finished(ev, store).await;
                        }
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
        // Per event: its command key and method, if it sends one.
        let mut keys: Vec<Option<(String, &'static str)>> = Vec::with_capacity(evs.len());
        let mut registered: std::collections::HashMap<&str, String> = Default::default();
        let mut usable = evs.len();
        for (i, ev) in evs.iter().enumerate() {
            // Errors: sent on its own below, where they are reported.
            let req = match self.done_before(ev, store).await {
                Ok(true) => Ok(Request::None),
                Ok(false) => self.request(ev).map_err(drop),
                Err(_) => Err(()),
            };
            let req = match req {
                Ok(r) => r,
                // Sent on its own, where it is refused with the reason.
                Err(_) => {
                    usable = i;
                    break;
                }
            };
            let key = format!("c{i:02}");
            let (method, p) = match req {
                Request::None => {
                    keys.push(None);
                    continue;
                }
                // Two requests: on its own (first in a run) or in the next run.
                Request::HideThenFinish(..) => {
                    usable = i;
                    break;
                }
                Request::Register(p) => {
                    registered.insert(&ev.call, key.clone());
                    (REGISTER, p)
                }
                Request::ForCall(method, mut p) => {
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
                    (method, p)
                }
            };
            cmd.insert(
                key.clone(),
                Value::String(format!("{method}?{}", query(&p))),
            );
            keys.push(Some((key, method)));
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
            .call(BATCH, json!({"halt": 1, "cmd": Value::Object(cmd)}))
            .await
        {
            Ok(r) => r,
            Err(d) => return (0, Some(d)),
        };
        let (ok, errors) = (&r["result"], &r["result_error"]);
        for (key, method) in keys.iter().flatten() {
            self.note_time(method, &r["result_time"][key]);
        }
        for (i, key) in keys.iter().enumerate() {
            let Some((key, method)) = key else { continue };
            if let Some(res) = ok.get(key).filter(|v| !v.is_null()) {
                if *method == REGISTER {
                    match self.keep_crm_id(&evs[i], store, res).await {
                        Delivery::Ok => {}
                        d => return (i, Some(d)),
                    }
                }
                if *method == FINISH {
                    self.keep_finished(&evs[i], store).await;
                }
                continue;
            }
            let d = match errors.get(key) {
                Some(e) if !e.is_null() => command_error(self, method, e),
                // Not run (halted) or not answered: try again.
                _ => Delivery::Retry(CrmError::NotRun { method }),
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

    /// An application of a portal nobody listens on.
    fn test_app() -> App {
        App::new(
            AppConfig {
                sink: "portal".into(),
                rest_url: "http://127.0.0.1:9/rest/".into(),
                oauth_url: "http://127.0.0.1:9/oauth/token/".into(),
                client_id: "app".into(),
                client_secret: "secret".into(),
                timeout: Duration::from_secs(1),
            },
            None,
            None,
        )
        .unwrap()
    }

    /// What register and finish send for a call event, field by field.
    #[test]
    fn register_and_finish_parameters_come_from_the_event() {
        use crate::events::Create;
        let app = test_app();
        let sink = Bitrix24::new(
            "portal",
            Arc::new(app),
            "USER_PHONE_INNER",
            Duration::from_secs(1),
        )
        .unwrap();
        let ev = |kind: EventKind| {
            let e = CallEvent {
                call_id: "crm-1".into(),
                direction: Direction::Outbound,
                line: Some("+4930901820".into()),
                client: "+4917011111111".into(),
                create: Create::Lead,
                crm_create: true,
                offer: false,
                source: "WEB".into(),
                responsible: Some("205".into()),
                start: "2023-11-14T22:13:20.000Z".into(),
                kind,
            };
            OutEvent {
                id: 1,
                call: e.call_id.clone(),
                kind: e.kind.name().into(),
                payload: e.to_json(),
                created_at: 0,
                attempts: 0,
                next_at: 0,
            }
        };
        let Ok(Request::Register(p)) = sink.request(&ev(EventKind::Started)) else {
            panic!("not a register")
        };
        assert_eq!(
            p,
            json!({"PHONE_NUMBER": "+4917011111111", "TYPE": 1, "LINE_NUMBER": "+4930901820",
                   "CRM_CREATE": 1, "CRM_SOURCE": "WEB", "SHOW": 0, "EXTERNAL_CALL_ID": "crm-1",
                   "CALL_START_DATE": "2023-11-14T22:13:20.000Z", "USER_PHONE_INNER": "205"})
        );
        let ended = EventKind::Ended(Ended {
            status: 200,
            outcome: "completed".into(),
            duration: 65,
            end: "2023-11-14T22:14:27.750Z".into(),
            answered: true,
        });
        let Ok(Request::ForCall(FINISH, p)) = sink.request(&ev(ended)) else {
            panic!("not a finish")
        };
        assert_eq!(
            p,
            json!({"DURATION": 65, "STATUS_CODE": "200", "USER_PHONE_INNER": "205"})
        );
        let answered = EventKind::Answered {
            answer: "2023-11-14T22:13:22.500Z".into(),
        };
        assert!(matches!(sink.request(&ev(answered)), Ok(Request::None)));
        let mut corrupt = ev(EventKind::Started);
        corrupt.payload.truncate(10);
        assert!(matches!(
            sink.request(&corrupt),
            Err(CrmError::BadPayload(_))
        ));
    }

    /// Two users of one portal (say the line sync and the directory sync,
    /// each calling through the same sink) share its bucket: after the
    /// burst their requests go 1 / rate apart in total, not each (paused
    /// tokio clock).
    #[tokio::test(start_paused = true)]
    async fn every_request_to_a_portal_takes_from_one_bucket() {
        let app = test_app();
        let sink = Arc::new(
            Bitrix24::new("portal", Arc::new(app), "USER_ID", Duration::from_secs(1))
                .unwrap()
                .with_rate(2.0, 2),
        );
        let t0 = Instant::now();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let user = |who: &'static str| {
            let (sink, sent) = (sink.clone(), sent.clone());
            tokio::spawn(async move {
                for _ in 0..4 {
                    sink.pace().await;
                    sent.lock().unwrap().push((who, t0.elapsed().as_secs_f64()));
                }
            })
        };
        let (a, b) = (user("lines"), user("directory"));
        a.await.unwrap();
        b.await.unwrap();
        let mut at: Vec<f64> = sent.lock().unwrap().iter().map(|(_, t)| *t).collect();
        at.sort_by(f64::total_cmp);
        assert_eq!(at.len(), 8);
        // Two at once (the burst), then one every 0.5 s across both.
        for (i, t) in at.iter().enumerate() {
            let due = i.saturating_sub(1) as f64 * 0.5;
            assert!(
                (t - due).abs() < 0.01,
                "request {i} at {t} s, due {due} s: {at:?}"
            );
        }
        let users: std::collections::HashSet<_> =
            sent.lock().unwrap().iter().map(|(w, _)| *w).collect();
        assert_eq!(users.len(), 2, "both users sent");
    }

    #[test]
    fn status_codes_for_outcomes() {
        let s = |dir: Direction, outcome: &str, status: u16, answered: bool| {
            status_code(
                dir,
                &Ended {
                    status,
                    outcome: outcome.into(),
                    duration: 0,
                    end: String::new(),
                    answered,
                },
            )
        };
        use Direction::{Inbound, Outbound};
        assert_eq!(s(Inbound, "completed", 200, true), "200");
        assert_eq!(s(Inbound, "cancelled", 487, false), "304");
        assert_eq!(s(Outbound, "cancelled", 487, false), "603-S");
        assert_eq!(s(Outbound, "failed", 486, false), "486");
        assert_eq!(s(Outbound, "failed", 404, false), "404");
        assert_eq!(s(Outbound, "failed", 480, false), "480");
        assert_eq!(s(Inbound, "failed", 480, false), "304");
        assert_eq!(s(Outbound, "failed", 503, false), "503");
    }
}
