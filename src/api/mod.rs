//! The admin API, `/api/v1` (axum, JSON). Every error is
//! `{"error": "what was wrong"}` with the fitting status: 400 bad input,
//! 401 no or unknown token, 403 a view token that tries to change
//! something, 404 unknown route or value, 413 too large, 415 wrong type.
//!
//! Handlers never touch the SIP path: store work runs on blocking threads,
//! and screening requests read the same runtime snapshot live calls do.

pub mod auth;
mod bans;
pub mod calls;
mod contacts;
pub mod crm;
pub mod exceptions;
pub mod page;
mod peers;
pub mod screen;

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::config::Role;
use crate::proxy::Proxy;
use crate::store::service::Exceptions;
use auth::{Actor, Denied, Tokens};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub exceptions: Arc<Exceptions>,
    /// For the current runtime (normaliser, screener).
    pub proxy: Arc<Proxy>,
    /// Swapped on reload.
    pub tokens: Arc<ArcSwap<Tokens>>,
    /// Largest import body.
    pub import_max_bytes: u64,
    /// Where the call log is, and how many rotated files it keeps.
    pub calls_dir: std::path::PathBuf,
    pub calls_keep: usize,
    /// The contacts directory and its store.
    pub contacts: Arc<crate::contacts::Directory>,
    pub contact_store: Arc<dyn crate::store::ContactStore>,
    /// The CRM sinks' connections.
    pub crm: Arc<crm::CrmState>,
}

impl ApiState {
    /// The request's actor if its token has `need`.
    pub fn authorize(&self, headers: &HeaderMap, need: Role) -> Result<Actor, ApiError> {
        let h = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        self.tokens.load().check(h, need).map_err(|d| match d {
            Denied::Unauthenticated => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a valid token is required: Authorization: Bearer <token>",
            ),
            Denied::Forbidden => ApiError::new(
                StatusCode::FORBIDDEN,
                "this token may only view; changing the list needs an edit token",
            ),
        })
    }
}

/// `/api/v1` routes; `json_max_bytes` limits JSON bodies.
pub fn router(state: ApiState, json_max_bytes: usize) -> Router {
    Router::new()
        .route("/exceptions", get(exceptions::list).post(exceptions::add))
        .route("/exceptions/import", post(exceptions::import))
        .route("/exceptions/{value}", delete(exceptions::remove))
        .route("/audit", get(exceptions::audit))
        .route("/calls", get(calls::list))
        .route("/contacts", get(contacts::list).post(contacts::import))
        .route("/contacts/{client}", delete(contacts::remove))
        .route("/peers", get(peers::list))
        .route("/crm", get(crm::status))
        .route(
            "/crm/{sink}/connect",
            get(crm::authorize_url).post(crm::connect),
        )
        .route("/screen", post(screen::number))
        .route("/screen/email", post(screen::email))
        .route("/bans", get(bans::list))
        .route("/bans/{addr}", delete(bans::remove))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(json_max_bytes))
        .with_state(state)
}

/// An API error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A store or task failure: logged, answered as 500 without details
    /// beyond the store's own message.
    /// A store that cannot be reached is 503: nothing was changed, the
    /// caller may try again once it is back.
    pub fn internal(e: impl std::fmt::Display + 'static) -> Self {
        let any = &e as &dyn std::any::Any;
        let unavailable = any
            .downcast_ref::<crate::store::StoreError>()
            .or_else(
                || match any.downcast_ref::<crate::store::service::ImportError>() {
                    Some(crate::store::service::ImportError::Store(s)) => Some(s),
                    _ => None,
                },
            )
            .is_some_and(|s| s.is_unavailable());
        if unavailable {
            tracing::warn!(error = %e, "API request refused: the store is unreachable");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the store is unreachable: nothing was read or changed; try again once it is back (screening goes on with the last list): {e}"
                ),
            );
        }
        tracing::error!(error = %e, "API request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response()
    }
}

/// `Json` whose rejections are [`ApiError`]s: 400 with serde's message
/// (which names the field, line and column), 413, 415.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => {
                let status = match &r {
                    JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    JsonRejection::BytesRejection(_)
                        if r.status() == StatusCode::PAYLOAD_TOO_LARGE =>
                    {
                        StatusCode::PAYLOAD_TOO_LARGE
                    }
                    _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                        StatusCode::PAYLOAD_TOO_LARGE
                    }
                    _ => StatusCode::BAD_REQUEST,
                };
                Err(ApiError::new(status, r.body_text()))
            }
        }
    }
}

/// An RFC 3339 time given as `name`, as unix milliseconds.
pub fn parse_rfc3339_ms(name: &str, t: &str) -> Result<i64, ApiError> {
    crate::clock::parse_rfc3339(t).map_err(|e| {
        ApiError::bad_request(format!(
            "{name} {t:?}: {e} (use RFC 3339, e.g. 2027-01-31T00:00:00Z)"
        ))
    })
}

/// Runs blocking store work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}
