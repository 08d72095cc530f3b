//! The application's install handler (`[crm.bitrix24] install_listen`):
//! the portal POSTs the tokens there when the local application is
//! installed (`settings/app-installation/local-apps/installation-callback.md`:
//! the install form `AUTH_ID`, `REFRESH_ID`, `member_id`, `DOMAIN`, …;
//! `api-reference/common/events/on-app-install.md`: the `ONAPPINSTALL`
//! event's `auth[...]`). Plain HTTP: the portal wants HTTPS, so it sits
//! behind a reverse proxy. The first call connects the sink; later ones
//! must come from the same portal (`member_id`, `application_token`),
//! anything else is 403. Nothing of the request is logged but the outcome.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;

use super::b24app::{App, InstallError};

/// Largest install body (the portal sends a few hundred bytes).
const MAX_BODY: usize = 16 * 1024;

/// The handler's routes: a POST to any path.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .fallback(axum::routing::post(install))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

async fn install(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let mut form: HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned() {
        form.entry(k).or_insert(v);
    }
    match app.install(&form).await {
        Ok(()) => (StatusCode::OK, "installed\n"),
        Err(InstallError::Foreign) => {
            tracing::warn!(sink = %app.sink, "install call refused: not from the portal that installed the application");
            (StatusCode::FORBIDDEN, "forbidden\n")
        }
        Err(e @ InstallError::Incomplete(_)) => {
            tracing::warn!(sink = %app.sink, error = %e, "install call refused");
            (StatusCode::BAD_REQUEST, "incomplete install call\n")
        }
        Err(InstallError::Store(_)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot keep the tokens\n",
        ),
    }
}
