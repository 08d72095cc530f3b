//! `/contacts`: the directory client -> responsible user and extension.
//! `POST` takes JSON (`[{"client", "user_id", "extension"}]`) or CSV
//! (`text/csv`: `client,user_id,extension` per line, a header line
//! allowed); every bad row is refused with its number, the rest written in
//! one transaction and published to the SIP path at once.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::page::{self, Page};
use super::{ApiError, ApiState, blocking};
use crate::config::Role;
use crate::contacts::Contact;
use crate::screening::normalize::e164_string;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    user: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Contact>>, ApiError> {
    s.authorize(&headers, Role::View)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = page::limit(q.limit)?;
    let st = s.contact_store.clone();
    let items = blocking(move || {
        st.list_contacts(q.user.as_deref(), q.cursor.as_deref(), limit)
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(Page::new(items, limit, |c| c.client.clone())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    client: String,
    user_id: String,
    #[serde(default)]
    extension: String,
}

#[derive(Serialize)]
struct Refused {
    row: usize,
    text: String,
    reason: String,
}

#[derive(Serialize)]
pub struct ImportAnswer {
    added: usize,
    updated: usize,
    refused: Vec<Refused>,
}

fn clean(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && !v.chars().any(|c| c.is_control() || c == ',')
}

/// `POST /contacts` (JSON array or CSV).
pub async fn import(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ImportAnswer>, ApiError> {
    let actor = s.authorize(&headers, Role::Edit)?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let rows: Vec<(usize, String, Row)> = if ctype.starts_with("application/json") {
        let rows: Vec<Row> = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "expected [{{\"client\", \"user_id\", \"extension\"}}]: {e}"
            ))
        })?;
        rows.into_iter()
            .enumerate()
            .map(|(i, r)| (i + 1, r.client.clone(), r))
            .collect()
    } else if ctype.starts_with("text/csv") || ctype.starts_with("text/plain") {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("the CSV is not valid UTF-8"))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .filter(|(i, l)| !(*i == 0 && l.to_ascii_lowercase().starts_with("client")))
            .map(|(i, l)| {
                let mut f = l.split(',').map(str::trim);
                let row = Row {
                    client: f.next().unwrap_or("").to_string(),
                    user_id: f.next().unwrap_or("").to_string(),
                    extension: f.next().unwrap_or("").to_string(),
                };
                (i + 1, l.to_string(), row)
            })
            .collect()
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send application/json or text/csv",
        ));
    };
    let rt = s.proxy.runtime();
    let mut good = Vec::new();
    let mut refused = Vec::new();
    for (n, text, r) in rows {
        let reason = match rt
            .screener
            .normalizer()
            .normalize(r.client.as_bytes(), None)
        {
            None => Some("client is not a phone number"),
            Some(_) if !clean(&r.user_id) => {
                Some("user_id is empty, too long or has control characters")
            }
            Some(_) if !r.extension.is_empty() && !clean(&r.extension) => {
                Some("extension is too long or has control characters")
            }
            Some(c) => {
                good.push(Contact {
                    client: e164_string(c),
                    user_id: r.user_id,
                    extension: r.extension,
                });
                None
            }
        };
        if let Some(reason) = reason {
            refused.push(Refused {
                row: n,
                text,
                reason: reason.to_string(),
            });
        }
    }
    drop(rt);
    let (st, dir) = (s.contact_store.clone(), s.contacts.clone());
    let (added, updated) = blocking(move || {
        let done = st
            .upsert_contacts(&good, &actor.name, crate::clock::now_ms())
            .map_err(ApiError::internal)?;
        dir.upsert(&good);
        Ok(done)
    })
    .await?;
    Ok(Json(ImportAnswer {
        added,
        updated,
        refused,
    }))
}

/// `DELETE /contacts/{client}`
pub async fn remove(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(client): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.authorize(&headers, Role::Edit)?;
    let n = s
        .proxy
        .runtime()
        .screener
        .normalizer()
        .normalize(client.as_bytes(), None)
        .ok_or_else(|| ApiError::bad_request(format!("{client:?} is not a phone number")))?;
    let key = e164_string(n);
    let (st, dir) = (s.contact_store.clone(), s.contacts.clone());
    let shown = key.clone();
    let gone = blocking(move || {
        let gone = st.remove_contact(&key).map_err(ApiError::internal)?;
        dir.remove(&key);
        Ok(gone)
    })
    .await?;
    if gone {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{shown} is not in the directory"),
        ))
    }
}
