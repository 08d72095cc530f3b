//! The Audit page: who changed what, when, newest first, filtered by
//! value (normalised, as the store's index has it), who and what action.
//! Filters by who and action read the store's audit pages (by cursor)
//! and keep the matches, at most [`MAX_SCAN`] rows per request; a page cut
//! short by that limit says so and links on from where it stopped.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::i18n::M;
use super::{
    BASE, ConsoleState, Nav, alert, html_page, layout, page_link, pager, select, text_input, thead,
    when,
};
use crate::api::exceptions::parse_value;
use crate::api::{ApiError, blocking, page};
use crate::store::AuditRow;

const PAGE: usize = 50;
/// Audit rows read per request at most when filtering by who or action.
const MAX_SCAN: usize = 20_000;
const CHUNK: usize = 500;

#[derive(Deserialize, Default)]
pub struct AuditForm {
    #[serde(default)]
    value: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    cursor: String,
}

impl AuditForm {
    fn link(&self, cursor: &str) -> String {
        page_link(
            "audit",
            [
                ("value", self.value.as_str()),
                ("actor", self.actor.as_str()),
                ("action", self.action.as_str()),
                ("cursor", cursor),
            ],
        )
    }
}

/// One page: the matches and where to go on (`None` at the end).
struct Found {
    rows: Vec<AuditRow>,
    next: Option<i64>,
    /// Stopped by [`MAX_SCAN`] before the page was full.
    cut: bool,
}

async fn find(s: &ConsoleState, f: &AuditForm) -> Result<Found, ApiError> {
    let value = match f.value.trim() {
        "" => None,
        v => Some(parse_value(&s.api, v)?.canonical()),
    };
    let mut before = page::id_cursor(Some(f.cursor.as_str()).filter(|c| !c.is_empty()))?;
    let actor = f.actor.trim().to_string();
    let action = f.action.trim().to_string();
    let store = s.api.exceptions.store().clone();
    blocking(move || {
        let filtered = !actor.is_empty() || !action.is_empty();
        let mut rows = Vec::new();
        let mut scanned = 0;
        loop {
            let want = if filtered { CHUNK } else { PAGE };
            let chunk = store
                .audit(value.as_deref(), before, want)
                .map_err(ApiError::internal)?;
            let n = chunk.len();
            for r in chunk {
                scanned += 1;
                before = Some(r.id);
                if (actor.is_empty() || r.actor == actor)
                    && (action.is_empty() || r.action == action)
                {
                    rows.push(r);
                    if rows.len() == PAGE {
                        return Ok(Found {
                            rows,
                            next: before,
                            cut: false,
                        });
                    }
                }
            }
            if n < want {
                return Ok(Found {
                    rows,
                    next: None,
                    cut: false,
                });
            }
            if scanned >= MAX_SCAN {
                return Ok(Found {
                    rows,
                    next: before,
                    cut: true,
                });
            }
        }
    })
    .await
}

pub async fn page(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    q: Result<Query<AuditForm>, QueryRejection>,
) -> Response {
    let (v, form) = match s.page_start(&headers, q) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let lang = v.lang;
    let t = |m: M| m.text(lang);
    let found = find(&s, &form).await;
    let status = match &found {
        Err(e) => e.status,
        Ok(_) => StatusCode::OK,
    };
    let action_name = |a: &str| match a {
        "add" => t(M::ActAdd),
        "update" => t(M::ActUpdate),
        "remove" => t(M::ActRemove),
        "expire" => t(M::ActExpire),
        _ => "",
    };
    let actions = [
        ("", t(M::Any)),
        ("add", t(M::ActAdd)),
        ("update", t(M::ActUpdate)),
        ("remove", t(M::ActRemove)),
        ("expire", t(M::ActExpire)),
    ];
    let here = form.link(&form.cursor);
    let body = html! {
        section aria-labelledby="filter-h" {
            h2 #filter-h { (t(M::FilterHeading)) }
            form.filters method="get" action={(BASE) "/audit"} role="search" {
                div { (text_input("value", t(M::FValue), &form.value)) }
                div { (text_input("actor", t(M::FActor), &form.actor)) }
                div { (select("action", t(M::FAction), &actions, &form.action)) }
                div.actions {
                    button type="submit" { (t(M::FilterButton)) }
                    a href={(BASE) "/audit"} { (t(M::ResetFilter)) }
                }
            }
        }
        @match &found {
            Err(e) => (alert(&e.message)),
            Ok(f) => {
                @if f.rows.is_empty() {
                    p #no-entries { (t(M::NoEntries)) }
                } @else {
                    div.table-wrap {
                        table #audit {
                            caption.sr-only { (t(M::AuditTitle)) }
                            (thead(lang, &[M::ColAt, M::ColActor, M::ColAction, M::ColValue,
                                M::ColComment, M::ColOrigin]))
                            tbody {
                                @for r in &f.rows {
                                    tr data-action=(r.action) {
                                        td data-label=(t(M::ColAt)) { (when(r.at)) }
                                        td data-label=(t(M::ColActor)) { (r.actor) }
                                        td data-label=(t(M::ColAction)) {
                                            @let n = action_name(&r.action);
                                            @if n.is_empty() { (r.action) } @else { (n) }
                                        }
                                        td data-label=(t(M::ColValue)) { code { (r.value) } }
                                        td data-label=(t(M::ColComment)) { (r.comment) }
                                        td data-label=(t(M::ColOrigin)) { (r.origin) }
                                    }
                                }
                            }
                        }
                    }
                }
                @if f.cut && f.next.is_some() { p.note { (t(M::AuditScanned)) } }
                (pager(
                    lang,
                    (!form.cursor.is_empty()).then(|| form.link("")),
                    f.next.map(|c| form.link(&c.to_string())),
                ))
            }
        }
    };
    html_page(
        status,
        layout(Some(&v), lang, Nav::Audit, &here, t(M::AuditTitle), body),
    )
}
