//! The admin HTTP listener: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers), `/readyz` (503 while draining, or
//! while a peer has no resolved target) and the API under `/api/v1`, and
//! the web console under `/console` (`/` leads there). `/metrics` needs a
//! token only with `[admin] protect_metrics = true`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

use crate::api::{self, ApiState};
use crate::config::Role;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// What the handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// The registry to expose.
    pub metrics: Arc<Metrics>,
    /// Fired once draining starts (readiness goes to 503).
    pub shutdown: Shutdown,
    /// The API's state (tokens, store).
    pub api: ApiState,
    /// Whether `/metrics` needs a token.
    pub protect_metrics: bool,
    /// Largest JSON body.
    pub json_max_bytes: usize,
    /// A shared store's reachability (`None`: the embedded store).
    pub store_health: Option<Arc<crate::store::follow::StoreHealth>>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    let api = api::router(state.api.clone(), state.json_max_bytes);
    let console = crate::console::router(state.api.clone());
    let to_console = || async { Redirect::to(crate::console::BASE) };
    Router::new()
        .route("/", get(to_console))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such endpoint\n") })
        .with_state(state)
        .nest("/api/v1", api)
        .nest(crate::console::BASE, console)
}

async fn metrics(State(s): State<AdminState>, headers: HeaderMap) -> axum::response::Response {
    if s.protect_metrics
        && let Err(e) = s.api.authorize(&headers, Role::View)
    {
        return e.into_response();
    }
    // Blocklisting ends by time, not by an event: the gauges are set here.
    for p in s.api.proxy.runtime().routing.peers() {
        p.targets.export_state();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// 503 while draining, and while a peer has no resolved target. A CRM
/// sink that is not connected does not make the SIP service unready
/// (calls go through, their events wait in the outbox), but the answer
/// names it.
async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.shutdown.is_fired() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string());
    }
    let rt = s.api.proxy.runtime();
    let missing: Vec<&str> = rt.routing.unresolved().collect();
    let (mut status, mut body) = if missing.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: no target resolved for {}\n", missing.join(", ")),
        )
    };
    if let Some(h) = &s.store_health
        && let Some(since) = h.down_since()
    {
        let secs = (crate::clock::now_ms() - since).max(0) / 1000;
        let line = format!(
            "degraded: the store ({}) is unreachable for {secs} s: screening serves the last list, changes are refused\n",
            h.shown
        );
        if status == StatusCode::OK {
            body = line;
        } else {
            body.push_str(&line);
        }
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    for a in s.api.crm.apps.iter().filter(|a| !a.connected()) {
        body.push_str(&format!(
            "crm sink {:?}: not connected, events are kept in the outbox (sipscreen crm bitrix24 connect --sink {})\n",
            a.sink, a.sink
        ));
    }
    (status, body)
}
