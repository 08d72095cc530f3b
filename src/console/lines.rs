//! The Lines page: each configured number's CRM integration as the
//! running config resolved it (the `[[line]]` tables over `[defaults]`),
//! and "what would this caller get?", answered by the API's screening
//! function on the live runtime (`Runtime::decide`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::i18n::{Lang, M};
use super::{
    BASE, ConsoleState, Nav, alert, html_page, layout, page_link, select, text_input, thead,
};
use crate::api::screen::{NumberQuery, screen_number};
use crate::config::ForwardMode;
use crate::screening::lines::LineSettings;
use crate::screening::normalize::e164_string;

#[derive(Deserialize, Default)]
pub struct TryForm {
    number: Option<String>,
    #[serde(default)]
    line: String,
    #[serde(default)]
    direction: String,
}

/// An enum's config spelling (`Auto` -> `auto`).
fn spelled(v: impl std::fmt::Debug) -> String {
    format!("{v:?}").to_lowercase()
}

fn forwarding(s: &LineSettings, lang: Lang) -> &'static str {
    match (s.forward_to_responsible, s.forward) {
        (false, _) => M::ForwardOff.text(lang),
        (true, ForwardMode::Header) => M::ForwardHeader.text(lang),
        (true, ForwardMode::Ruri) => M::ForwardRuri.text(lang),
    }
}

fn settings_cells(s: &LineSettings, lang: Lang) -> Markup {
    let t = |m: M| m.text(lang);
    html! {
        td data-label=(t(M::ColCreate)) { (spelled(s.create)) }
        td data-label=(t(M::ColCreateFor)) { (spelled(s.create_for)) }
        td data-label=(t(M::ColSource)) { (s.source) }
        td data-label=(t(M::ColCrmMode)) {
            (spelled(s.crm_mode))
            @if let Some(p) = &s.pipeline { " (" (p) ")" }
        }
        td data-label=(t(M::ColQueue)) { (s.queue.join(", ")) }
        td data-label=(t(M::ColForward)) { (forwarding(s, lang)) }
    }
}

pub async fn page(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    q: Result<Query<TryForm>, QueryRejection>,
) -> Response {
    let (v, form) = match s.page_start(&headers, q) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let lang = v.lang;
    let t = |m: M| m.text(lang);
    let rt = s.api.proxy.runtime_arc();
    let table = rt.screener.lines();
    let configured: Vec<(String, &LineSettings)> = table
        .configured()
        .into_iter()
        .map(|(n, st)| (e164_string(n), st))
        .collect();
    let direction = if form.direction.is_empty() {
        "inbound".to_string()
    } else {
        form.direction.clone()
    };
    let answer = form.number.as_ref().map(|number| {
        screen_number(
            &s.api,
            &NumberQuery {
                number: number.clone(),
                line: form.line.clone(),
                direction: direction.clone(),
            },
        )
    });
    let status = match &answer {
        Some(Err(e)) => e.status,
        _ => StatusCode::OK,
    };
    let here = match &form.number {
        Some(n) => page_link(
            "lines",
            [
                ("number", n.as_str()),
                ("line", form.line.as_str()),
                ("direction", direction.as_str()),
            ],
        ),
        None => format!("{BASE}/lines"),
    };
    let directions = [("inbound", t(M::Inbound)), ("outbound", t(M::Outbound))];
    let body = html! {
        p.help { (t(M::LinesNote)) }
        div.table-wrap {
            table #lines {
                caption.sr-only { (t(M::LinesTitle)) }
                (thead(lang, &[M::ColNumber, M::ColCreate, M::ColCreateFor, M::ColSource,
                    M::ColCrmMode, M::ColQueue, M::ColForward]))
                tbody {
                    @for (n, st) in &configured {
                        tr data-line=(n) {
                            th scope="row" data-label=(t(M::ColNumber)) { code { (n) } }
                            (settings_cells(st, lang))
                        }
                    }
                    tr.defaults {
                        th scope="row" data-label=(t(M::ColNumber)) { em { (t(M::Defaults)) } }
                        (settings_cells(table.defaults(), lang))
                    }
                }
            }
        }
        section.card #try aria-labelledby="try-h" {
            h2 #try-h { (t(M::TryHeading)) }
            form.filters method="get" action={(BASE) "/lines"} {
                div { (text_input("number", t(M::TryNumber), form.number.as_deref().unwrap_or(""))) }
                div {
                    label for="line" { (t(M::TryLine)) }
                    input #line type="text" name="line" list="line-numbers" value=(form.line);
                    datalist #line-numbers {
                        @for (n, _) in &configured { option value=(n) {} }
                    }
                }
                div { (select("direction", t(M::FDirection), &directions, &direction)) }
                div.actions { button type="submit" { (t(M::TryButton)) } }
            }
            @match &answer {
                None => {}
                Some(Err(e)) => (alert(&e.message)),
                Some(Ok(a)) => {
                    div #try-result role="status" {
                        p.verdict-big {
                            (t(M::ColVerdict)) ": "
                            strong class={"verdict verdict-" (a.verdict)} #try-verdict { (a.verdict) }
                        }
                        dl.details {
                            dt { (t(M::ColClient)) } dd { code { (a.client) } }
                            dt { (t(M::ColLine)) } dd { (a.line.as_deref().unwrap_or("—")) }
                            dt { (t(M::ColCreate)) } dd { (a.create) }
                            dt { (t(M::ColSource)) } dd { (a.source) }
                            dt { (t(M::Responsible)) } dd { (a.responsible.as_deref().unwrap_or("—")) }
                            @if let Some(f) = &a.forward_to { dt { (t(M::ForwardTo)) } dd { code { (f) } } }
                        }
                        h3 { (t(M::Tags)) }
                        pre.tags { @for (k, v) in &a.tags { (k) ": " (v) "\n" } }
                    }
                }
            }
        }
    };
    html_page(
        status,
        layout(Some(&v), lang, Nav::Lines, &here, t(M::LinesTitle), body),
    )
}
