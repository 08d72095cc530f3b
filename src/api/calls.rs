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

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct CallsQuery {
    /// RFC 3339; calls that started at or after.
    pub since: Option<String>,
    /// RFC 3339; calls that started before.
    pub until: Option<String>,
    /// The line, any form (normalised).
    pub line: Option<String>,
    pub verdict: Option<String>,
    /// `inbound` or `outbound`.
    pub direction: Option<String>,
    /// `completed`, `failed`, `cancelled` or `expired`.
    pub outcome: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// A query field as given, `None` when absent or blank.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
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
    list_page(&s, &q).await.map(Json)
}

/// The log filter a query names, every field checked (empty fields are
/// no filter); the cursor and limit too.
pub fn filter(s: &ApiState, q: &CallsQuery) -> Result<Filter, ApiError> {
    let line = match given(&q.line) {
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
    let one_of = |name: &str, v: Option<&str>, allowed: &[&str]| match v {
        Some(v) if !allowed.contains(&v) => Err(ApiError::bad_request(format!(
            "{name} {v:?}: use {}",
            allowed.join(" or ")
        ))),
        v => Ok(v.map(str::to_string)),
    };
    Ok(Filter {
        since_ms: time("since", given(&q.since))?,
        until_ms: time("until", given(&q.until))?,
        line,
        verdict: one_of("verdict", given(&q.verdict), &["log", "exception"])?,
        direction: one_of("direction", given(&q.direction), &["inbound", "outbound"])?,
        outcome: one_of(
            "outcome",
            given(&q.outcome),
            &["completed", "failed", "cancelled", "expired"],
        )?,
        after: given(&q.cursor).map(str::to_string),
        limit: page::limit(q.limit)?,
    })
}

/// One page of the log for a query (the API and the console read through
/// this).
pub async fn list_page(s: &ApiState, q: &CallsQuery) -> Result<Page<CallRecord>, ApiError> {
    let filter = filter(s, q)?;
    let limit = filter.limit;
    let cursor = filter.after.clone();
    let (dir, keep) = (s.calls_dir.clone(), s.calls_keep);
    let read = blocking(move || log::read(&dir, keep, &filter).map_err(ApiError::internal)).await?;
    if !read.cursor_found {
        return Err(page::foreign(cursor.as_deref().unwrap_or_default()));
    }
    Ok(Page::new(read.records, limit, |r| r.call_id.clone()))
}
