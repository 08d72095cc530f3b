//! `/exceptions`, `/exceptions/import`, `/exceptions/{value}`, `/audit`.

use std::io::Read;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::auth::Actor;
use super::page::{self, Page};
use super::{ApiError, ApiJson, ApiState, blocking, parse_rfc3339_ms};
use crate::clock::rfc3339;
use crate::config::Role;
use crate::screening::source::Value;
use crate::store::{AuditRow, Entry, Kind, ListFilter, NewEntry, Pattern, Upserted, action_str};

/// Default and largest page size.
/// Values accepted in one `POST /exceptions`.
const MAX_VALUES: usize = 1000;
/// Entries (a range is several prefixes) written by one `POST /exceptions`.
const MAX_STORED: usize = 10_000;

/// An entry as the API shows it.
#[derive(Serialize)]
pub struct EntryView {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub value: String,
    pub given: String,
    pub comment: String,
    pub origin: String,
    pub created_at: String,
    pub created_by: String,
    pub updated_at: Option<String>,
    pub expires_at: Option<String>,
    /// `exact`, `prefix` or `domain`.
    #[serde(rename = "match")]
    pub pattern: Pattern,
    /// `block` or `allow`.
    pub action: &'static str,
}

impl From<Entry> for EntryView {
    fn from(e: Entry) -> Self {
        EntryView {
            pattern: e.pattern,
            action: action_str(e.allow),
            id: e.id,
            kind: e.kind,
            value: e.value,
            given: e.given,
            comment: e.comment,
            origin: e.origin,
            created_at: rfc3339(e.created_at),
            created_by: e.created_by,
            updated_at: e.updated_at.map(rfc3339),
            expires_at: e.expires_at.map(rfc3339),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub q: Option<String>,
    pub value: Option<String>,
    pub prefix: Option<String>,
    /// `exact`, `prefix` or `domain`.
    #[serde(rename = "match")]
    pub pattern: Option<String>,
    /// `block` or `allow`.
    pub action: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// `"block"` / `"allow"` (absent: block).
fn parse_action(a: Option<&str>) -> Result<bool, ApiError> {
    match a {
        None | Some("block") => Ok(false),
        Some("allow") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "action {other:?}: use block or allow"
        ))),
    }
}

/// A value as given (any number format, a prefix, a range, an e-mail or
/// a domain), read with the running config's normaliser.
pub fn parse_value(s: &ApiState, text: &str) -> Result<Value, ApiError> {
    if text.trim_start().starts_with('!') {
        return Err(ApiError::bad_request(format!(
            "{text:?}: the API marks an allow entry with \"action\": \"allow\", not a leading '!'"
        )));
    }
    let rt = s.proxy.runtime();
    Value::parse(text, rt.screener.normalizer())
        .map_err(|why| ApiError::bad_request(format!("{text:?}: {why}")))
}

/// `GET /exceptions?type=&q=&value=&prefix=&cursor=&limit=`
pub async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<EntryView>>, ApiError> {
    s.authorize(&headers, Role::View)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let page = list_page(&s, q).await?;
    Ok(Json(Page {
        items: page.items.into_iter().map(EntryView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One page of the list for a query: the filters checked and normalised,
/// read off the async threads (the API and the console list through this).
pub async fn list_page(s: &ApiState, q: ListQuery) -> Result<Page<Entry>, ApiError> {
    let kind = q
        .kind
        .as_deref()
        .filter(|k| !k.is_empty())
        .map(|k| {
            Kind::parse(k)
                .ok_or_else(|| ApiError::bad_request(format!("type {k:?}: use phone or email")))
        })
        .transpose()?;
    let value = match q.value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => Some(parse_value(s, v)?.canonical()),
        None => None,
    };
    // A phone prefix is written as the stored form is: `+4930`, also
    // accepted as `4930` or `004930`.
    let prefix = q.prefix.filter(|p| !p.trim().is_empty()).map(|p| {
        let p = p.trim().to_lowercase();
        if p.contains('@') || p.starts_with('+') || !p.bytes().all(|b| b.is_ascii_digit()) {
            p
        } else {
            format!("+{}", p.strip_prefix("00").unwrap_or(&p))
        }
    });
    let limit = page::limit(q.limit)?;
    let pattern = q
        .pattern
        .as_deref()
        .map(|p| {
            Pattern::parse(p).ok_or_else(|| {
                ApiError::bad_request(format!("match {p:?}: use exact, prefix or domain"))
            })
        })
        .transpose()?;
    let allow = match q.action.as_deref() {
        None => None,
        a => Some(parse_action(a)?),
    };
    let filter = ListFilter {
        kind,
        comment: q.q.filter(|c| !c.is_empty()),
        value,
        prefix,
        pattern,
        allow,
        before: page::id_cursor(q.cursor.as_deref().filter(|c| !c.is_empty()))?,
        limit,
    };
    let store = s.exceptions.store().clone();
    let items = blocking(move || store.list(&filter).map_err(ApiError::internal)).await?;
    Ok(Page::new(items, limit, |e| e.id.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(Default)]
pub struct AddBody {
    /// One value…
    pub value: Option<String>,
    /// …or a CRM record (`lead:123`, `deal:45`, `contact:7`, `company:9`)
    /// with all its phones and e-mails.
    pub entity: Option<String>,
    #[serde(default)]
    pub phones: Vec<String>,
    #[serde(default)]
    pub emails: Vec<String>,
    #[serde(default)]
    pub comment: String,
    /// RFC 3339 time after which the entry no longer applies.
    pub expires_at: Option<String>,
    /// Or: seconds from now.
    pub ttl_seconds: Option<u64>,
    /// `block` (default) or `allow` (wins over shorter blocking prefixes,
    /// or over the domain for an e-mail).
    pub action: Option<String>,
    /// A range covering more than `[screening] max_range_numbers` numbers
    /// is written only with `"large": true`.
    #[serde(default)]
    pub large: bool,
}

#[derive(Serialize)]
pub struct AddAnswer {
    #[serde(flatten)]
    pub counts: Upserted,
    /// The normalised values written.
    pub values: Vec<String>,
}

fn check_entity(e: &str) -> Result<(), ApiError> {
    let ok = e.split_once(':').is_some_and(|(kind, id)| {
        matches!(kind, "lead" | "deal" | "contact" | "company")
            && !id.is_empty()
            && id.len() <= 20
            && id.bytes().all(|b| b.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "entity {e:?}: write it as lead:ID, deal:ID, contact:ID or company:ID"
        )))
    }
}

/// The expiry `body` asks for (`expires_at` or `ttl_seconds`), checked
/// to be in the future.
pub fn expiry(body: &AddBody, now: i64) -> Result<Option<i64>, ApiError> {
    let at = match (&body.expires_at, body.ttl_seconds) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give expires_at or ttl_seconds, not both",
            ));
        }
        (Some(t), None) => parse_rfc3339_ms("expires_at", t)?,
        (None, Some(s)) => now.saturating_add(s.saturating_mul(1000).min(i64::MAX as u64) as i64),
        (None, None) => return Ok(None),
    };
    if at <= now {
        return Err(ApiError::bad_request("the expiry is not in the future"));
    }
    Ok(Some(at))
}

/// `POST /exceptions`: one value, or every phone and e-mail of one CRM
/// record. All values are checked before anything is written; the write
/// is one transaction.
pub async fn add(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AddBody>,
) -> Result<(StatusCode, Json<AddAnswer>), ApiError> {
    let actor = s.authorize(&headers, Role::Edit)?;
    let (status, answer) = add_values(&s, &actor, body).await?;
    Ok((status, Json(answer)))
}

/// Writes what `body` names (the API's `POST /exceptions` and the
/// console's record form): 201 when something was added, else 200.
pub async fn add_values(
    s: &ApiState,
    actor: &Actor,
    body: AddBody,
) -> Result<(StatusCode, AddAnswer), ApiError> {
    let expires_at = expiry(&body, s.exceptions.clock().now_ms())?;
    let (texts, origin): (Vec<&String>, String) = match (&body.value, &body.entity) {
        (Some(v), None) if body.phones.is_empty() && body.emails.is_empty() => {
            (vec![v], "api".to_string())
        }
        (None, Some(e)) => {
            check_entity(e)?;
            if body.phones.is_empty() && body.emails.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "entity {e:?} comes with no phones and no emails"
                )));
            }
            (body.phones.iter().chain(&body.emails).collect(), e.clone())
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either value or entity, not both",
            ));
        }
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "phones and emails go with entity, not with value",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "give value (one entry) or entity with phones and emails",
            ));
        }
    };
    if texts.len() > MAX_VALUES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_VALUES} values per request; use /exceptions/import"
        )));
    }
    let allow = parse_action(body.action.as_deref())?;
    let max_range = s.proxy.runtime().screener.max_range_numbers();
    let mut entries = Vec::with_capacity(texts.len());
    let mut bad = Vec::new();
    for t in texts {
        let checked = parse_value(s, t).and_then(|v| {
            v.check_size(max_range, body.large)
                .map_err(|why| ApiError::bad_request(format!("{t:?}: {why}")))?;
            Ok(v)
        });
        match checked {
            Ok(v) => {
                for (kind, value) in v.stored() {
                    entries.push(NewEntry {
                        kind,
                        value,
                        given: t.trim().to_string(),
                        comment: body.comment.trim().to_string(),
                        origin: origin.clone(),
                        expires_at,
                        allow,
                    });
                }
            }
            Err(e) => bad.push(e.message),
        }
    }
    if entries.len() > MAX_STORED {
        return Err(ApiError::bad_request(format!(
            "the values make {} entries, at most {MAX_STORED} per request; use /exceptions/import",
            entries.len()
        )));
    }
    if !bad.is_empty() {
        return Err(ApiError::bad_request(format!(
            "nothing written: {}",
            bad.join("; ")
        )));
    }
    let values = entries.iter().map(|e| e.value.clone()).collect();
    let ex = s.exceptions.clone();
    let name = actor.name.clone();
    let counts = blocking(move || ex.write(&entries, &name).map_err(ApiError::internal)).await?;
    let status = if counts.added > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, AddAnswer { counts, values }))
}

#[derive(Serialize)]
pub struct Removed {
    removed: Vec<EntryView>,
}

/// `DELETE /exceptions/{value}`: one entry (a number, `+4930901*`, an
/// e-mail or `@domain`), answered with it; or a range `A..B`, whose
/// stored prefixes are removed, answered as `{"removed": [...]}`.
pub async fn remove(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(value): Path<String>,
) -> Result<Response, ApiError> {
    let actor = s.authorize(&headers, Role::Edit)?;
    let v = parse_value(&s, &value)?;
    let range = matches!(v, Value::Range(..));
    let gone = remove_parsed(&s, &actor, &v, &value).await?;
    let views: Vec<EntryView> = gone.into_iter().map(EntryView::from).collect();
    Ok(if range {
        Json(Removed { removed: views }).into_response()
    } else {
        Json(views.into_iter().next().expect("one")).into_response()
    })
}

/// Removes one value given in any format (a range: every stored prefix of
/// it); 404 when nothing of it is listed. Never empty on success.
pub async fn remove_value(
    s: &ApiState,
    actor: &Actor,
    value: &str,
) -> Result<Vec<Entry>, ApiError> {
    remove_parsed(s, actor, &parse_value(s, value)?, value).await
}

/// [`remove_value`] of a value already parsed from `value`.
async fn remove_parsed(
    s: &ApiState,
    actor: &Actor,
    v: &Value,
    value: &str,
) -> Result<Vec<Entry>, ApiError> {
    let values: Vec<String> = v.stored().into_iter().map(|(_, v)| v).collect();
    if values.len() > MAX_STORED {
        return Err(ApiError::bad_request(format!(
            "{value:?} makes {} entries, at most {MAX_STORED} per request",
            values.len()
        )));
    }
    let ex = s.exceptions.clone();
    let shown = value.trim().to_string();
    let name = actor.name.clone();
    let gone = blocking(move || {
        let mut gone = Vec::new();
        for v in &values {
            gone.extend(ex.remove(v, &name).map_err(ApiError::internal)?);
        }
        Ok(gone)
    })
    .await?;
    if gone.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{shown} is not on the list"),
        ));
    }
    Ok(gone)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    value: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
pub struct AuditView {
    id: i64,
    at: String,
    actor: String,
    action: String,
    #[serde(rename = "type")]
    kind: Kind,
    value: String,
    comment: String,
    origin: String,
    /// The entry's action then: `block` or `allow`.
    entry_action: String,
}

impl From<AuditRow> for AuditView {
    fn from(a: AuditRow) -> Self {
        AuditView {
            entry_action: a.entry_action,
            id: a.id,
            at: rfc3339(a.at),
            actor: a.actor,
            action: a.action,
            kind: a.kind,
            value: a.value,
            comment: a.comment,
            origin: a.origin,
        }
    }
}

/// `GET /audit?value=&cursor=&limit=`
pub async fn audit(
    State(s): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<AuditView>>, ApiError> {
    s.authorize(&headers, Role::View)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let value = match q.value.as_deref() {
        Some(v) => Some(parse_value(&s, v)?.canonical()),
        None => None,
    };
    let before = page::id_cursor(q.cursor.as_deref())?;
    let limit = page::limit(q.limit)?;
    let store = s.exceptions.store().clone();
    let rows = blocking(move || {
        store
            .audit(value.as_deref(), before, limit)
            .map_err(ApiError::internal)
    })
    .await?;
    let rows: Vec<AuditView> = rows.into_iter().map(AuditView::from).collect();
    Ok(Json(Page::new(rows, limit, |a| a.id.to_string())))
}

#[derive(Serialize)]
struct ImportAnswer {
    #[serde(flatten)]
    report: crate::store::service::ImportReport,
    /// Set when the import stopped early; the counts say what was
    /// committed before.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A `Read` over body chunks handed over a bounded channel: the upload is
/// never held in memory, at most a few chunks of it.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

/// `POST /exceptions/import` (`text/plain`): `VALUE; comment` per line.
/// Streams the body into batched transactions; answers the counts and
/// every refused line (the first 1000 listed).
pub async fn import(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let actor = s.authorize(&headers, Role::Edit)?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.to_ascii_lowercase().starts_with("text/plain") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send the list as text/plain, one `VALUE; comment` per line (got {ctype:?})"),
        ));
    }
    let limit = s.import_max_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(too_large(limit));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let ex = s.exceptions.clone();
    let rt = s.proxy.runtime_arc();
    let worker = tokio::task::spawn_blocking(move || {
        let reader = std::io::BufReader::with_capacity(
            1 << 16,
            ChannelReader {
                rx,
                chunk: Bytes::new(),
            },
        );
        ex.import(reader, &rt.screener, &actor.name, "import", |_| {})
    });
    let mut stream = body.into_data_stream();
    let mut seen = 0u64;
    let mut over = false;
    while let Some(chunk) = stream.next().await {
        let item = match chunk {
            Ok(c) => {
                seen += c.len() as u64;
                if seen > limit {
                    over = true;
                    Err(std::io::Error::other("upload larger than the import limit"))
                } else {
                    Ok(c)
                }
            }
            Err(e) => Err(std::io::Error::other(format!("upload broken: {e}"))),
        };
        let stop = item.is_err();
        if tx.send(item).await.is_err() || stop {
            break;
        }
    }
    drop(tx);
    let (report, result) = worker.await.map_err(ApiError::internal)?;
    let status = match (&result, over) {
        (_, true) => StatusCode::PAYLOAD_TOO_LARGE,
        (Ok(()), false) => StatusCode::OK,
        (Err(crate::store::service::ImportError::Read { .. }), false) => StatusCode::BAD_REQUEST,
        (Err(e), false) => {
            tracing::error!(error = %e, "import failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    let error = match (result, over) {
        (_, true) => Some(format!(
            "the upload is larger than {limit} bytes ([admin] import_max_bytes); the lines before were imported"
        )),
        (Err(e), _) => Some(e.to_string()),
        (Ok(()), _) => None,
    };
    tracing::info!(
        lines = report.lines,
        added = report.added,
        updated = report.updated,
        refused = report.refused,
        "exceptions imported"
    );
    Ok((status, Json(ImportAnswer { report, error })).into_response())
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload is larger than {limit} bytes ([admin] import_max_bytes)"),
    )
}
