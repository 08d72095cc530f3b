//! The admin HTTP listener: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers) and `/readyz` (503 while draining).
//! `router` is apart from serving so tests can call it without a port.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// What the handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// The registry to expose.
    pub metrics: Arc<Metrics>,
    /// Fired once draining starts (readiness goes to 503).
    pub shutdown: Shutdown,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such endpoint\n") })
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.shutdown.is_fired() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
