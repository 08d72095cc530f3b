//! `GET /calls`: the call log, newest first, filtered by time, line and
//! verdict.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;

use super::page::{self, Page};
use super::{ApiError, ApiState, blocking, parse_rfc3339_ms};
use crate::calls::log::{self, CallRecord, Filter};
use crate::config::Role;
use crate::screening::normalize::e164_string;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsQuery {
    /// RFC 3339; calls that started at or after.
    since: Option<String>,
    /// RFC 3339; calls that started before.
    until: Option<String>,
    /// The line, any form (normalised).
    line: Option<String>,
    verdict: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

fn time(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|t| parse_rfc3339_ms(name, t)).transpose()
}

pub async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<CallsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<CallRecord>>, ApiError> {
    s.authorize(&headers, Role::View)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let line = match q.line.as_deref() {
        Some(l) => {
            let rt = s.proxy.runtime();
            let n = rt
                .screener
                .normalizer()
                .normalize(l.as_bytes(), None)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("line {l:?} is not a phone number"))
                })?;
            Some(e164_string(n))
        }
        None => None,
    };
    if let Some(v) = q.verdict.as_deref()
        && v != "log"
        && v != "exception"
    {
        return Err(ApiError::bad_request(format!(
            "verdict {v:?}: use log or exception"
        )));
    }
    let limit = page::limit(q.limit)?;
    let filter = Filter {
        since_ms: time("since", q.since.as_deref())?,
        until_ms: time("until", q.until.as_deref())?,
        line,
        verdict: q.verdict,
        after: q.cursor.clone(),
        limit,
    };
    let (dir, keep) = (s.calls_dir.clone(), s.calls_keep);
    let read = blocking(move || log::read(&dir, keep, &filter).map_err(ApiError::internal)).await?;
    if !read.cursor_found {
        return Err(page::foreign(q.cursor.as_deref().unwrap_or_default()));
    }
    let mut records = read.records;
    // What the CRMs answered about these calls, by sink.
    let st = s.crm.store.clone();
    let ids: Vec<String> = records.iter().map(|r| r.call_id.clone()).collect();
    let answers = blocking(move || st.crm_answers(&ids).map_err(ApiError::internal)).await?;
    for (call, sink, answer) in answers {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&answer) else {
            continue;
        };
        for r in records.iter_mut().filter(|r| r.call_id == call) {
            r.crm.get_or_insert_with(|| serde_json::json!({}))[&sink] = v.clone();
        }
    }
    Ok(Json(Page::new(records, limit, |r| r.call_id.clone())))
}
