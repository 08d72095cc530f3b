//! The admin HTTP listener: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers), `/readyz` (503 while draining) and
//! the API under `/api/v1`, and the web console under `/console` (`/`
//! leads there). `/metrics` needs a token only with
//! `[admin] protect_metrics = true`.

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
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.shutdown.is_fired() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
