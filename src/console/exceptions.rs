//! The exception list page: filters, cursor paging, the entries, and for
//! an edit session "Add to list" (`VALUE; comment` lines, through the same
//! import the API runs), "Add a CRM record" (the API's add) and "Remove"
//! with a confirmation page.

use std::io::Cursor;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::i18n::{Lang, M};
use super::{
    BASE, ConsoleState, Form, Nav, Viewer, alert, csrf_field, html_page, layout, message,
    page_link, pager, select, text_input, when,
};
use crate::api::exceptions::{AddBody, ListQuery, add_values, expiry, list_page, remove_value};
use crate::api::{ApiError, blocking};
use crate::store::service::ImportReport;
use crate::store::{Entry, Kind, Upserted};

/// Entries per page.
const PAGE: usize = 50;

/// The entry kinds the type filter offers, with their names.
fn kinds() -> [(Kind, M); 2] {
    [(Kind::Phone, M::TypePhone), (Kind::Email, M::TypeEmail)]
}

fn kind_name(k: Kind, lang: Lang) -> &'static str {
    kinds()
        .iter()
        .find(|(x, _)| *x == k)
        .map_or(k.as_str(), |(_, m)| m.text(lang))
}

/// How an entry is shown: one (header, cell) per column, in order. Every
/// field of [`Entry`] the page shows is here and only here, so a new field
/// is one more row.
/// Renders one cell of an entry.
type Cell = fn(&Entry, Lang) -> Markup;

fn columns() -> [(M, Cell); 7] {
    [
        (M::ColValue, |e, _| {
            html! {
                code { (e.value) }
                @if e.given != e.value && !e.given.is_empty() {
                    br; small.given { (e.given) }
                }
            }
        }),
        (M::ColType, |e, l| html! { (kind_name(e.kind, l)) }),
        (M::ColComment, |e, _| html! { (e.comment) }),
        (M::ColOrigin, |e, _| html! { (e.origin) }),
        (M::ColAddedBy, |e, _| html! { (e.created_by) }),
        (M::ColAddedAt, |e, _| when(e.created_at)),
        (M::ColExpiry, |e, l| match e.expires_at {
            Some(t) => when(t),
            None => html! { (M::Never.text(l)) },
        }),
    ]
}

#[derive(Deserialize, Default, Clone)]
pub struct ExQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    value: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    cursor: String,
}

impl ExQuery {
    fn link(&self, cursor: &str) -> String {
        page_link(
            "exceptions",
            [
                ("q", self.q.as_str()),
                ("value", self.value.as_str()),
                ("type", self.kind.as_str()),
                ("cursor", cursor),
            ],
        )
    }
}

/// What a POST did, shown above the list.
enum Outcome {
    Imported(ImportReport, Option<String>),
    Record(Upserted, Vec<String>),
    Removed(Entry),
}

/// What the add forms show again (after a refusal or an error).
#[derive(Default)]
struct Draft {
    lines: String,
    comment: String,
    phones: String,
    emails: String,
    entity_kind: String,
    entity_id: String,
    error_import: Option<String>,
    error_record: Option<String>,
}

pub async fn page(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    q: Result<Query<ExQuery>, QueryRejection>,
) -> Response {
    let (v, q) = match s.page_start(&headers, q) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    render(&s, &v, q, None, Draft::default(), StatusCode::OK).await
}

async fn render(
    s: &ConsoleState,
    v: &Viewer,
    q: ExQuery,
    outcome: Option<Outcome>,
    draft: Draft,
    status: StatusCode,
) -> Response {
    let lang = v.lang;
    let t = |m: M| m.text(lang);
    let listed = list_page(
        &s.api,
        ListQuery {
            kind: Some(q.kind.clone()),
            q: Some(q.q.clone()),
            value: Some(q.value.clone()),
            prefix: None,
            cursor: Some(q.cursor.clone()),
            limit: Some(PAGE),
        },
    )
    .await;
    let status = match &listed {
        Err(e) if status.is_success() => e.status,
        _ => status,
    };
    let cols = columns();
    let here = q.link(&q.cursor);
    let type_options: Vec<(&str, &str)> = std::iter::once(("", t(M::Any)))
        .chain(kinds().iter().map(|(k, m)| (k.as_str(), m.text(lang))))
        .collect();
    let body = html! {
        @if let Some(o) = &outcome { (outcome_panel(o, lang)) }
        section aria-labelledby="filter-h" {
            h2 #filter-h { (t(M::FilterHeading)) }
            form.filters method="get" action={(BASE) "/exceptions"} role="search" {
                div { (text_input("q", t(M::FComment), &q.q)) }
                div { (text_input("value", t(M::FValue), &q.value)) }
                div { (select("type", t(M::FType), &type_options, &q.kind)) }
                div.actions {
                    button type="submit" { (t(M::FilterButton)) }
                    a href={(BASE) "/exceptions"} { (t(M::ResetFilter)) }
                }
            }
        }
        @match &listed {
            Err(e) => (alert(&e.message)),
            Ok(page) => {
                @if page.items.is_empty() {
                    p #no-entries { (t(M::NoEntries)) }
                } @else {
                    div.table-wrap {
                        table #entries {
                            caption.sr-only { (t(M::NavExceptions)) }
                            thead { tr {
                                @for (h, _) in &cols { th scope="col" { (t(*h)) } }
                                @if v.can_edit() { th scope="col" { (t(M::ColActions)) } }
                            } }
                            tbody {
                                @for e in &page.items {
                                    tr data-value=(e.value) {
                                        @for (h, cell) in &cols {
                                            td data-label=(t(*h)) { (cell(e, lang)) }
                                        }
                                        @if v.can_edit() {
                                            td data-label=(t(M::ColActions)) {
                                                a.remove href=(page_link("exceptions/remove", [("value", e.value.as_str())]))
                                                    aria-label={(t(M::RemoveAction)) ": " (e.value)} {
                                                    (t(M::RemoveAction))
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                (pager(
                    lang,
                    (!q.cursor.is_empty()).then(|| q.link("")),
                    page.next_cursor.as_ref().map(|c| q.link(c)),
                ))
            }
        }
        @if v.can_edit() {
            (add_forms(v, &draft))
        } @else {
            p.note { (t(M::ViewOnlyNote)) }
        }
    };
    html_page(
        status,
        layout(
            Some(v),
            lang,
            Nav::Exceptions,
            &here,
            t(M::NavExceptions),
            body,
        ),
    )
}

fn expiry_fields(prefix: &str, lang: Lang) -> Markup {
    let t = |m: M| m.text(lang);
    let ttl_id = format!("{prefix}-ttl");
    let on_id = format!("{prefix}-on");
    html! {
        div {
            label for=(ttl_id) { (t(M::ExpiryLabel)) }
            select id=(ttl_id) name="ttl" {
                option value="" { (t(M::ExpiryNever)) }
                option value="86400" { (t(M::Expiry1d)) }
                option value="604800" { (t(M::Expiry7d)) }
                option value="2592000" { (t(M::Expiry30d)) }
                option value="7776000" { (t(M::Expiry90d)) }
                option value="31536000" { (t(M::Expiry365d)) }
            }
        }
        div {
            label for=(on_id) { (t(M::ExpiryOn)) }
            input type="date" id=(on_id) name="expires_on";
        }
    }
}

fn add_forms(v: &Viewer, d: &Draft) -> Markup {
    let lang = v.lang;
    let t = |m: M| m.text(lang);
    let entity_kinds = [
        ("lead", t(M::Lead)),
        ("deal", t(M::Deal)),
        ("contact", t(M::Contact)),
        ("company", t(M::Company)),
    ];
    html! {
        div.forms {
            section.card aria-labelledby="add-h" {
                h2 #add-h { (t(M::AddHeading)) }
                form method="post" action={(BASE) "/exceptions/import"} {
                    (csrf_field(v))
                    @if let Some(e) = &d.error_import { (alert(e)) }
                    label for="lines" { (t(M::EntriesLabel)) }
                    textarea #lines name="lines" rows="6" aria-describedby="lines-help"
                        placeholder="+49 30 1234567; supplier" { (d.lines) }
                    p.help #lines-help { (t(M::AddHelp)) }
                    (expiry_fields("import", lang))
                    button type="submit" { (t(M::ImportButton)) }
                }
            }
            section.card aria-labelledby="record-h" {
                h2 #record-h { (t(M::RecordHeading)) }
                p.help { (t(M::RecordHelp)) }
                form method="post" action={(BASE) "/exceptions/record"} {
                    (csrf_field(v))
                    @if let Some(e) = &d.error_record { (alert(e)) }
                    div.row {
                        div { (select("entity_kind", t(M::RecordKind), &entity_kinds, &d.entity_kind)) }
                        div {
                            label for="entity_id" { (t(M::RecordId)) }
                            input #entity_id type="text" name="entity_id" inputmode="numeric"
                                pattern="[0-9]{1,20}" required value=(d.entity_id);
                        }
                    }
                    label for="phones" { (t(M::Phones)) }
                    textarea #phones name="phones" rows="3" { (d.phones) }
                    label for="emails" { (t(M::Emails)) }
                    textarea #emails name="emails" rows="2" { (d.emails) }
                    label for="comment" { (t(M::CommentLabel)) }
                    input #comment type="text" name="comment" value=(d.comment);
                    (expiry_fields("record", lang))
                    button type="submit" { (t(M::AddRecordButton)) }
                }
            }
        }
    }
}

fn counts(lang: Lang, u: Upserted, refused: Option<usize>) -> Markup {
    let t = |m: M| m.text(lang);
    html! {
        ul.counts {
            li { strong #count-added { (u.added) } " " (t(M::Added)) }
            li { strong #count-updated { (u.updated) } " " (t(M::Updated)) }
            li { strong #count-unchanged { (u.unchanged) } " " (t(M::Unchanged)) }
            @if let Some(r) = refused {
                li { strong #count-refused { (r) } " " (t(M::Refused)) }
            }
        }
    }
}

fn outcome_panel(o: &Outcome, lang: Lang) -> Markup {
    let t = |m: M| m.text(lang);
    html! {
        section.result #result role="status" aria-labelledby="result-h" {
            h2 #result-h { (t(M::ResultHeading)) }
            @match o {
                Outcome::Imported(r, error) => {
                    (counts(lang, Upserted { added: r.added, updated: r.updated, unchanged: r.unchanged }, Some(r.refused)))
                    @if let Some(e) = error { (alert(e)) }
                    @if !r.refused_lines.is_empty() {
                        h3 { (t(M::RefusedHeading)) }
                        ul.refused #refused {
                            @for x in &r.refused_lines {
                                li data-line=(x.line) {
                                    (t(M::LineNo)) " " (x.line) ": " code { (x.text) } " — " (x.reason)
                                }
                            }
                        }
                    }
                }
                Outcome::Record(u, values) => {
                    (counts(lang, *u, None))
                    ul.values { @for val in values { li { code { (val) } } } }
                }
                Outcome::Removed(e) => {
                    p #removed { (t(M::Removed)) " " code { (e.value) } @if !e.comment.is_empty() { " (" (e.comment) ")" } }
                }
            }
        }
    }
}

/// The expiry the form asks for: a period (`ttl`, seconds) or a date
/// (`expires_on`, the end of that day UTC), checked as the API checks it.
fn form_expiry(s: &ConsoleState, f: &Form) -> Result<Option<i64>, ApiError> {
    let ttl = f.text("ttl").trim();
    let on = f.text("expires_on").trim();
    let body =
        AddBody {
            ttl_seconds: if ttl.is_empty() {
                None
            } else {
                Some(ttl.parse().map_err(|_| {
                    ApiError::bad_request(format!("expiry {ttl:?} is not a period"))
                })?)
            },
            expires_at: (!on.is_empty()).then(|| format!("{on}T23:59:59Z")),
            ..AddBody::default()
        };
    expiry(&body, s.api.exceptions.clock().now_ms())
}

/// `POST /exceptions/import`: the text area through the import the API's
/// `POST /exceptions/import` runs (origin `console`); refused lines are
/// listed with their numbers and put back into the text area.
pub async fn import(State(s): State<ConsoleState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let v = match s.editor(&headers, &form) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let lines = form.text("lines").to_string();
    let expires_at = match form_expiry(&s, &form) {
        Ok(e) => e,
        Err(e) => {
            let draft = Draft {
                lines,
                error_import: Some(e.message),
                ..Draft::default()
            };
            return render(&s, &v, ExQuery::default(), None, draft, e.status).await;
        }
    };
    let ex = s.api.exceptions.clone();
    let rt = s.api.proxy.runtime_arc();
    let actor = v.session.actor.clone();
    let text = lines.clone();
    let done = blocking(move || {
        Ok(ex.import_until(
            Cursor::new(text.into_bytes()),
            rt.screener.normalizer(),
            &actor,
            "console",
            expires_at,
            |_| {},
        ))
    })
    .await;
    let (report, result) = match done {
        Ok(r) => r,
        Err(e) => return message(Some(&v), v.lang, e.status, &e.message),
    };
    tracing::info!(
        actor = %v.session.actor,
        added = report.added,
        updated = report.updated,
        refused = report.refused,
        "exceptions added in the console"
    );
    let error = result.err().map(|e| {
        tracing::error!(error = %e, "console import failed");
        e.to_string()
    });
    let status = if error.is_some() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let refused_text: Vec<&str> = report
        .refused_lines
        .iter()
        .map(|r| r.text.as_str())
        .collect();
    let draft = Draft {
        lines: refused_text.join("\n"),
        ..Draft::default()
    };
    render(
        &s,
        &v,
        ExQuery::default(),
        Some(Outcome::Imported(report, error)),
        draft,
        status,
    )
    .await
}

fn lines_of(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// `POST /exceptions/record`: every phone and e-mail of one CRM record
/// through the API's `POST /exceptions` (all checked before any is
/// written).
pub async fn record(State(s): State<ConsoleState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let v = match s.editor(&headers, &form) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let draft = |error: String| Draft {
        comment: form.text("comment").to_string(),
        phones: form.text("phones").to_string(),
        emails: form.text("emails").to_string(),
        entity_kind: form.text("entity_kind").to_string(),
        entity_id: form.text("entity_id").to_string(),
        error_record: Some(error),
        ..Draft::default()
    };
    let expires_at = match form_expiry(&s, &form) {
        Ok(e) => e,
        Err(e) => {
            return render(&s, &v, ExQuery::default(), None, draft(e.message), e.status).await;
        }
    };
    let add = AddBody {
        entity: Some(format!(
            "{}:{}",
            form.text("entity_kind").trim(),
            form.text("entity_id").trim()
        )),
        phones: lines_of(form.text("phones")),
        emails: lines_of(form.text("emails")),
        comment: form.text("comment").to_string(),
        expires_at: expires_at.map(crate::clock::rfc3339),
        ..AddBody::default()
    };
    match add_values(&s.api, &v.actor(), add).await {
        Ok((_, answer)) => {
            render(
                &s,
                &v,
                ExQuery::default(),
                Some(Outcome::Record(answer.counts, answer.values)),
                Draft::default(),
                StatusCode::OK,
            )
            .await
        }
        Err(e) => render(&s, &v, ExQuery::default(), None, draft(e.message), e.status).await,
    }
}

#[derive(Deserialize, Default)]
pub struct ValueQuery {
    #[serde(default)]
    value: String,
}

/// `GET /exceptions/remove?value=`: the confirmation (edit sessions only).
pub async fn confirm(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    q: Result<Query<ValueQuery>, QueryRejection>,
) -> Response {
    let (v, ValueQuery { value }) = match s.page_start(&headers, q) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let lang = v.lang;
    let t = |m: M| m.text(lang);
    if !v.can_edit() {
        return message(Some(&v), lang, StatusCode::FORBIDDEN, t(M::Forbidden));
    }
    let found = list_page(
        &s.api,
        ListQuery {
            kind: None,
            q: None,
            value: Some(value.clone()),
            prefix: None,
            cursor: None,
            limit: Some(1),
        },
    )
    .await;
    let entry = match found {
        Ok(p) => p.items.into_iter().next(),
        Err(e) => return message(Some(&v), lang, e.status, &e.message),
    };
    let Some(e) = entry.filter(|_| !value.trim().is_empty()) else {
        return message(
            Some(&v),
            lang,
            StatusCode::NOT_FOUND,
            &format!("{value} {}", t(M::NotListed)),
        );
    };
    let cols = columns();
    let here = page_link("exceptions/remove", [("value", value.as_str())]);
    let body = html! {
        section.card.confirm aria-labelledby="confirm-q" {
            p #confirm-q { strong { (t(M::ConfirmText)) } }
            dl {
                @for (h, cell) in &cols { dt { (t(*h)) } dd { (cell(&e, lang)) } }
            }
            form method="post" action={(BASE) "/exceptions/remove"} {
                (csrf_field(&v))
                input type="hidden" name="value" value=(e.value);
                button.danger #confirm-remove type="submit" { (t(M::ConfirmYes)) }
                " "
                a href={(BASE) "/exceptions"} { (t(M::Cancel)) }
            }
        }
    };
    html_page(
        StatusCode::OK,
        layout(
            Some(&v),
            lang,
            Nav::Exceptions,
            &here,
            t(M::ConfirmTitle),
            body,
        ),
    )
}

/// `POST /exceptions/remove`: through the API's removal.
pub async fn remove(State(s): State<ConsoleState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let v = match s.editor(&headers, &form) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match remove_value(&s.api, &v.actor(), form.text("value")).await {
        Ok(e) => {
            tracing::info!(actor = %v.session.actor, value = %e.value, "exception removed in the console");
            render(
                &s,
                &v,
                ExQuery::default(),
                Some(Outcome::Removed(e)),
                Draft::default(),
                StatusCode::OK,
            )
            .await
        }
        Err(e) => message(Some(&v), v.lang, e.status, &e.message),
    }
}
