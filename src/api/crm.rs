//! `/crm`: the CRM sinks' state, and connecting a Bitrix24 application.
//! `GET /crm` (view): per Bitrix24 sink whether it is connected, the
//! portal's `member_id` and domain, the events queued for it, the
//! authorize URL and the last line sync. `GET /crm/{sink}/connect`
//! (edit): the authorize URL. `POST /crm/{sink}/connect` (edit,
//! `{"code": "..."}`): the server exchanges the code at the sink's
//! `oauth_url` and keeps the tokens in its store. No answer carries a
//! token.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiState, blocking};
use crate::config::Role;
use crate::crm::b24app::{App, Connection, LinesReport};

/// What the API reaches of the CRM sinks.
pub struct CrmState {
    pub apps: Vec<Arc<App>>,
    pub store: Arc<dyn crate::store::TokenStore>,
}

#[derive(Serialize)]
pub struct SinkStatus {
    name: String,
    kind: &'static str,
    #[serde(flatten)]
    connection: Connection,
    queued: i64,
    authorize_url: String,
    lines: Option<LinesReport>,
}

fn app(s: &ApiState, sink: &str) -> Result<Arc<App>, ApiError> {
    s.crm
        .apps
        .iter()
        .find(|a| a.sink == sink)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no [[crm.bitrix24]] sink named {sink:?}"),
            )
        })
}

pub async fn status(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<SinkStatus>>, ApiError> {
    s.authorize(&headers, Role::View)?;
    let mut out = Vec::new();
    for a in &s.crm.apps {
        let (st, sink) = (s.crm.store.clone(), a.sink.clone());
        let queued = blocking(move || st.outbox_depth(&sink).map_err(ApiError::internal)).await?;
        out.push(SinkStatus {
            name: a.sink.clone(),
            kind: "bitrix24",
            connection: a.connection(),
            queued,
            authorize_url: a.authorize_url(),
            lines: a.lines_report(),
        });
    }
    Ok(Json(out))
}

#[derive(Serialize)]
pub struct Authorize {
    authorize_url: String,
}

pub async fn authorize_url(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(sink): Path<String>,
) -> Result<Json<Authorize>, ApiError> {
    s.authorize(&headers, Role::Edit)?;
    Ok(Json(Authorize {
        authorize_url: app(&s, &sink)?.authorize_url(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Code {
    code: String,
}

pub async fn connect(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(sink): Path<String>,
    ApiJson(body): ApiJson<Code>,
) -> Result<Json<Connection>, ApiError> {
    let actor = s.authorize(&headers, Role::Edit)?;
    let a = app(&s, &sink)?;
    let code = body.code.trim();
    if code.is_empty() || code.len() > 512 || code.chars().any(|c| c.is_whitespace()) {
        return Err(ApiError::bad_request(
            "code: the `code` parameter of the portal's redirect, one word",
        ));
    }
    match a.exchange_code(code).await {
        Ok(c) => {
            tracing::info!(sink = %sink, actor = %actor.name, "Bitrix24 application connected through the API");
            Ok(Json(c))
        }
        // The code is short-lived and used once: say what the portal
        // answered (no secret in it).
        Err(e) => Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())),
    }
}
