//! The Calls page (the telephony statistics): the call log through the
//! API's filter and paging, each call's details, counts per day and per
//! line (exception calls marked) as server-rendered SVG with the numbers
//! as a table beside, and the CSV export of the filtered view. The first
//! page refreshes itself while open (the embedded script), so a call shows
//! up as soon as the tracker has logged it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use maud::{Markup, html};
use serde::Deserialize;

use super::i18n::{Lang, M};
use super::{
    BASE, ConsoleState, Nav, alert, html_page, layout, message, page_link, pager, raw, select,
    text_input, thead, when_text,
};
use crate::api::ApiError;
use crate::api::calls::{CallsQuery, filter, list_page};
use crate::calls::log::{self, CallRecord};

/// Calls per page.
const PAGE: usize = 50;
/// Days the per-day chart shows at most (the latest).
const CHART_DAYS: usize = 31;
/// Lines the per-line chart shows at most (the busiest).
const CHART_LINES: usize = 12;

#[derive(Deserialize, Default, Clone)]
pub struct CallsForm {
    #[serde(default)]
    line: String,
    #[serde(default)]
    verdict: String,
    #[serde(default)]
    direction: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    cursor: String,
}

/// A `datetime-local` value (`2027-01-15T08:00`, read as UTC) as RFC 3339;
/// anything else is passed on as written (the API says what is wrong).
fn utc(t: &str) -> String {
    let t = t.trim();
    match t.len() {
        10 if !t.contains('T') => format!("{t}T00:00:00Z"),
        16 if t.as_bytes()[10] == b'T' => format!("{t}:00Z"),
        19 if t.as_bytes()[10] == b'T' => format!("{t}Z"),
        _ => t.to_string(),
    }
}

impl CallsForm {
    fn pairs<'a>(&'a self, cursor: &'a str) -> [(&'a str, &'a str); 7] {
        [
            ("line", self.line.as_str()),
            ("verdict", self.verdict.as_str()),
            ("direction", self.direction.as_str()),
            ("outcome", self.outcome.as_str()),
            ("since", self.since.as_str()),
            ("until", self.until.as_str()),
            ("cursor", cursor),
        ]
    }

    fn link(&self, path: &str, cursor: &str) -> String {
        page_link(path, self.pairs(cursor))
    }

    /// The API's query for this form.
    fn query(&self, limit: usize) -> CallsQuery {
        let opt = |s: &str| (!s.trim().is_empty()).then(|| s.to_string());
        CallsQuery {
            since: opt(&self.since).map(|t| utc(&t)),
            until: opt(&self.until).map(|t| utc(&t)),
            line: opt(&self.line),
            verdict: opt(&self.verdict),
            direction: opt(&self.direction),
            outcome: opt(&self.outcome),
            cursor: opt(&self.cursor),
            limit: Some(limit),
        }
    }
}

fn verdict_name(v: &str, l: Lang) -> &str {
    match v {
        "log" => M::VerdictLog.text(l),
        "exception" => M::VerdictException.text(l),
        other => other,
    }
}

fn direction_name(d: &str, l: Lang) -> &str {
    match d {
        "inbound" => M::Inbound.text(l),
        "outbound" => M::Outbound.text(l),
        other => other,
    }
}

fn outcome_name(o: &str, l: Lang) -> &str {
    match o {
        "completed" => M::Completed.text(l),
        "failed" => M::Failed.text(l),
        "cancelled" => M::Cancelled.text(l),
        "expired" => M::Expired.text(l),
        other => other,
    }
}

/// Calls counted by a key: (logged, exception).
#[derive(Default)]
struct Counts {
    by_day: BTreeMap<String, (u64, u64)>,
    by_line: BTreeMap<String, (u64, u64)>,
}

impl Counts {
    fn add(&mut self, r: &CallRecord) {
        let ex = r.verdict == "exception";
        let day = r.start.get(..10).unwrap_or("?").to_string();
        let line = r.line.clone().unwrap_or_default();
        for slot in [
            self.by_day.entry(day).or_default(),
            self.by_line.entry(line).or_default(),
        ] {
            if ex {
                slot.1 += 1;
            } else {
                slot.0 += 1;
            }
        }
    }
}

pub async fn page(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    q: Result<Query<CallsForm>, QueryRejection>,
) -> Response {
    let (v, form) = match s.page_start(&headers, q) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let lang = v.lang;
    let t = |m: M| m.text(lang);
    let query = form.query(PAGE);
    let listed = list_page(&s.api, &query).await;
    let counts = match filter(&s.api, &query) {
        Ok(f) => {
            let (dir, keep) = (s.api.calls_dir.clone(), s.api.calls_keep);
            crate::api::blocking(move || {
                let mut c = Counts::default();
                log::scan(&dir, keep, &f, |r| c.add(r)).map_err(ApiError::internal)?;
                Ok(c)
            })
            .await
        }
        Err(e) => Err(e),
    };
    let status = match (&listed, &counts) {
        (Err(e), _) | (_, Err(e)) => e.status,
        _ => StatusCode::OK,
    };
    let here = form.link("calls", &form.cursor);
    let any = ("", t(M::Any));
    let verdicts = [
        any,
        ("log", t(M::VerdictLog)),
        ("exception", t(M::VerdictException)),
    ];
    let directions = [
        any,
        ("inbound", t(M::Inbound)),
        ("outbound", t(M::Outbound)),
    ];
    let outcomes = [
        any,
        ("completed", t(M::Completed)),
        ("failed", t(M::Failed)),
        ("cancelled", t(M::Cancelled)),
        ("expired", t(M::Expired)),
    ];
    let live = form.cursor.is_empty();
    let body = html! {
        section aria-labelledby="filter-h" {
            h2 #filter-h { (t(M::FilterHeading)) }
            form.filters method="get" action={(BASE) "/calls"} role="search" {
                div { (text_input("line", t(M::FLine), &form.line)) }
                div { (select("verdict", t(M::FVerdict), &verdicts, &form.verdict)) }
                div { (select("direction", t(M::FDirection), &directions, &form.direction)) }
                div { (select("outcome", t(M::FOutcome), &outcomes, &form.outcome)) }
                div {
                    label for="since" { (t(M::FSince)) }
                    input #since type="datetime-local" name="since" value=(form.since);
                }
                div {
                    label for="until" { (t(M::FUntil)) }
                    input #until type="datetime-local" name="until" value=(form.until);
                }
                div.actions {
                    button type="submit" { (t(M::FilterButton)) }
                    a href={(BASE) "/calls"} { (t(M::ResetFilter)) }
                    a #export href=(form.link("calls.csv", "")) download="calls.csv" { (t(M::ExportCsv)) }
                }
            }
        }
        div #calls-live data-live=[live.then_some("1")] {
            @match &counts {
                Err(e) => (alert(&e.message)),
                Ok(c) => (charts(c, lang)),
            }
            @match &listed {
                Err(e) => (alert(&e.message)),
                Ok(page) => {
                    @if live { p.help { (t(M::LiveNote)) } }
                    @if page.items.is_empty() {
                        p #no-calls { (t(M::NoCalls)) }
                    } @else {
                        (calls_table(&page.items, lang))
                    }
                    (pager(
                        lang,
                        (!form.cursor.is_empty()).then(|| form.link("calls", "")),
                        page.next_cursor.as_ref().map(|c| form.link("calls", c)),
                    ))
                }
            }
        }
    };
    html_page(
        status,
        layout(Some(&v), lang, Nav::Calls, &here, t(M::CallsTitle), body),
    )
}

fn calls_table(items: &[CallRecord], lang: Lang) -> Markup {
    let t = |m: M| m.text(lang);
    html! {
        div.table-wrap {
            table #calls {
                caption.sr-only { (t(M::CallsTitle)) }
                (thead(lang, &[M::ColStart, M::ColDirection, M::ColLine, M::ColClient,
                    M::ColVerdict, M::ColOutcome, M::ColDuration, M::Details]))
                tbody {
                    @for r in items {
                        tr data-call=(r.call_id) data-client=(r.client) class=[(r.verdict == "exception").then_some("exception")] {
                            td data-label=(t(M::ColStart)) { (when_text(&r.start)) }
                            td data-label=(t(M::ColDirection)) { (direction_name(&r.direction, lang)) }
                            td data-label=(t(M::ColLine)) { (r.line.as_deref().unwrap_or("")) }
                            td data-label=(t(M::ColClient)) { code { (r.client) } }
                            td data-label=(t(M::ColVerdict)) {
                                span class={"verdict verdict-" (r.verdict)} { (verdict_name(&r.verdict, lang)) }
                            }
                            td data-label=(t(M::ColOutcome)) { (outcome_name(&r.outcome, lang)) " (" (r.status) ")" }
                            td data-label=(t(M::ColDuration)) { (r.duration) }
                            td data-label=(t(M::Details)) {
                                details {
                                    summary { (t(M::Details)) }
                                    dl.details {
                                        dt { "X-CRM-Call-Id" } dd { code { (r.call_id) } }
                                        dt { "SIP Call-ID" } dd { code { (r.sip_call_id) } }
                                        dt { (t(M::ColCreate)) } dd { (r.create) }
                                        dt { (t(M::ColSource)) } dd { (r.source) }
                                        dt { (t(M::ColResponsible)) } dd { (r.responsible.as_deref().unwrap_or("—")) }
                                        @if let Some(a) = &r.answer { dt { (t(M::ColAnswer)) } dd { (when_text(a)) } }
                                        dt { (t(M::ColEnd)) } dd { (when_text(&r.end)) }
                                        @for tr in &r.transfers {
                                            dt { (t(M::Transfer)) } dd { (when_text(&tr.at)) " → " (tr.to) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Both charts with their data tables.
fn charts(c: &Counts, lang: Lang) -> Markup {
    let t = |m: M| m.text(lang);
    let days: Vec<(String, (u64, u64))> = {
        let skip = c.by_day.len().saturating_sub(CHART_DAYS);
        c.by_day
            .iter()
            .skip(skip)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    let mut lines: Vec<(String, (u64, u64))> = c
        .by_line
        .iter()
        .map(|(k, v)| {
            let name = if k.is_empty() {
                t(M::NoLine).to_string()
            } else {
                k.clone()
            };
            (name, *v)
        })
        .collect();
    lines.sort_by(|a, b| (b.1.0 + b.1.1).cmp(&(a.1.0 + a.1.1)).then(a.0.cmp(&b.0)));
    lines.truncate(CHART_LINES);
    if days.is_empty() {
        return html! {};
    }
    html! {
        div.charts {
            figure.chart #chart-days {
                figcaption { (t(M::PerDay)) }
                (raw(day_svg(&days, t(M::PerDay), lang)))
                (legend(lang))
                (data_table(t(M::Day), &days, lang))
            }
            figure.chart #chart-lines {
                figcaption { (t(M::PerLine)) }
                (raw(line_svg(&lines, t(M::PerLine), lang)))
                (legend(lang))
                (data_table(t(M::ColLine), &lines, lang))
            }
        }
    }
}

fn legend(lang: Lang) -> Markup {
    html! {
        ul.legend {
            li { span.swatch.swatch-log aria-hidden="true" {} (M::LoggedCalls.text(lang)) }
            li { span.swatch.swatch-exception aria-hidden="true" {} (M::ExceptionCalls.text(lang)) }
        }
    }
}

fn data_table(key: &str, rows: &[(String, (u64, u64))], lang: Lang) -> Markup {
    let t = |m: M| m.text(lang);
    html! {
        details.data {
            summary { (key) " / " (t(M::Total)) }
            table {
                thead { tr {
                    th scope="col" { (key) }
                    @for m in [M::LoggedCalls, M::ExceptionCalls, M::Total] { th scope="col" { (t(m)) } }
                } }
                tbody {
                    @for (k, (l, e)) in rows {
                        tr { th scope="row" { (k) } td { (l) } td { (e) } td { (l + e) } }
                    }
                }
            }
        }
    }
}

/// Text safe inside SVG markup.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The pattern that marks exception bars (not colour alone).
const HATCH: &str = r##"<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" class="bar-exception"/><line x1="0" y1="0" x2="0" y2="6" class="hatch-line"/></pattern></defs>"##;

/// Stacked bars per day: logged calls below, exception calls (hatched)
/// above, the total over each bar.
fn day_svg(days: &[(String, (u64, u64))], label: &str, lang: Lang) -> String {
    let (w, h, top, bottom) = (640.0_f64, 220.0_f64, 18.0, 28.0);
    let max = days
        .iter()
        .map(|(_, (l, e))| l + e)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let slot = w / days.len() as f64;
    let bw = (slot * 0.7).clamp(2.0, 60.0);
    let scale = (h - top - bottom) / max;
    let mut s = format!(
        r#"<svg viewBox="0 0 {w} {h}" role="img" aria-label="{}" preserveAspectRatio="xMidYMid meet">{HATCH}"#,
        esc(label)
    );
    let every = days.len().div_ceil(10).max(1);
    for (i, (day, (l, e))) in days.iter().enumerate() {
        let x = i as f64 * slot + (slot - bw) / 2.0;
        let lh = *l as f64 * scale;
        let eh = *e as f64 * scale;
        let base = h - bottom;
        let _ = write!(
            s,
            r#"<g><title>{}: {} {}, {} {}</title><rect class="bar-log" x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{lh:.1}"/><rect class="bar-exception-marked" fill="url(#hatch)" x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{eh:.1}"/><text class="bar-total" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text></g>"#,
            esc(day),
            l,
            esc(M::LoggedCalls.text(lang)),
            e,
            esc(M::ExceptionCalls.text(lang)),
            base - lh,
            base - lh - eh,
            x + bw / 2.0,
            base - lh - eh - 4.0,
            l + e
        );
        if i % every == 0 {
            let _ = write!(
                s,
                r#"<text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + bw / 2.0,
                h - 10.0,
                esc(day.get(5..).unwrap_or(day))
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Horizontal bars per line: logged then exception (hatched).
fn line_svg(lines: &[(String, (u64, u64))], label: &str, lang: Lang) -> String {
    let row = 26.0_f64;
    let (w, left, right) = (640.0_f64, 150.0, 50.0);
    let h = (lines.len() as f64 * row + 8.0).max(row);
    let max = lines
        .iter()
        .map(|(_, (l, e))| l + e)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let scale = (w - left - right) / max;
    let mut s = format!(
        r#"<svg viewBox="0 0 {w} {h}" role="img" aria-label="{}" preserveAspectRatio="xMidYMid meet">{HATCH}"#,
        esc(label)
    );
    for (i, (name, (l, e))) in lines.iter().enumerate() {
        let y = i as f64 * row + 4.0;
        let lw = *l as f64 * scale;
        let ew = *e as f64 * scale;
        let _ = write!(
            s,
            r#"<g><title>{}: {} {}, {} {}</title><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect class="bar-log" x="{left}" y="{y:.1}" width="{lw:.1}" height="18"/><rect class="bar-exception-marked" fill="url(#hatch)" x="{:.1}" y="{y:.1}" width="{ew:.1}" height="18"/><text class="bar-total" x="{:.1}" y="{:.1}">{}</text></g>"#,
            esc(name),
            l,
            esc(M::LoggedCalls.text(lang)),
            e,
            esc(M::ExceptionCalls.text(lang)),
            left - 8.0,
            y + 14.0,
            esc(name),
            left + lw,
            left + lw + ew + 6.0,
            y + 14.0,
            l + e
        );
    }
    s.push_str("</svg>");
    s
}

/// One CSV field: quoted when it needs to be; a field a spreadsheet would
/// take for a formula gets a leading `'` (`+49…` numbers are left as they
/// are: digits only after the `+`).
fn csv_field(out: &mut String, v: &str) {
    let formula = v.starts_with(['=', '-', '@', '\t', '\r'])
        || (v.starts_with('+') && !v[1..].bytes().all(|b| b.is_ascii_digit()));
    let v = if formula {
        format!("'{v}")
    } else {
        v.to_string()
    };
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(&v);
    }
}

const CSV_HEADER: &str = "call_id,sip_call_id,start,answer,end,direction,line,client,verdict,outcome,status,duration,create,source,responsible,transfers\r\n";

fn csv_row(out: &mut String, r: &CallRecord) {
    let status = r.status.to_string();
    let duration = r.duration.to_string();
    let transfers = r
        .transfers
        .iter()
        .map(|t| format!("{} {}", t.at, t.to))
        .collect::<Vec<_>>()
        .join("; ");
    let fields = [
        r.call_id.as_str(),
        &r.sip_call_id,
        &r.start,
        r.answer.as_deref().unwrap_or(""),
        &r.end,
        &r.direction,
        r.line.as_deref().unwrap_or(""),
        &r.client,
        &r.verdict,
        &r.outcome,
        &status,
        &duration,
        &r.create,
        &r.source,
        r.responsible.as_deref().unwrap_or(""),
        &transfers,
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, f);
    }
    out.push_str("\r\n");
}

/// `GET /calls.csv?…`: every call of the filtered view (not only one
/// page), oldest first, streamed from the log as it is read.
pub async fn csv(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    q: Result<Query<CallsForm>, QueryRejection>,
) -> Response {
    let (v, form) = match s.page_start(&headers, q) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let f = match filter(&s.api, &form.query(1)) {
        Ok(f) => f,
        Err(e) => return message(Some(&v), v.lang, e.status, &e.message),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let (dir, keep) = (s.api.calls_dir.clone(), s.api.calls_keep);
    tokio::task::spawn_blocking(move || {
        let mut buf = String::from(CSV_HEADER);
        let mut gone = false;
        let result = log::scan(&dir, keep, &f, |r| {
            if gone {
                return;
            }
            csv_row(&mut buf, r);
            if buf.len() >= 64 << 10 {
                gone = tx
                    .blocking_send(Ok(Bytes::from(std::mem::take(&mut buf))))
                    .is_err();
            }
        });
        let last = match result {
            Ok(()) => Ok(Bytes::from(buf)),
            Err(e) => {
                tracing::error!(error = %e, "call log export failed");
                Err(e)
            }
        };
        let _ = tx.blocking_send(last);
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"calls.csv\"",
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let mut s = String::new();
        for f in ["+4930901820", "a,b", "say \"hi\"", "=SUM(A1)", "+1+1", "-x"] {
            csv_field(&mut s, f);
            s.push('|');
        }
        assert_eq!(
            s,
            "+4930901820|\"a,b\"|\"say \"\"hi\"\"\"|'=SUM(A1)|'+1+1|'-x|"
        );
    }

    #[test]
    fn local_times_are_read_as_utc() {
        assert_eq!(utc("2027-01-15T08:00"), "2027-01-15T08:00:00Z");
        assert_eq!(utc("2027-01-15T08:00:30"), "2027-01-15T08:00:30Z");
        assert_eq!(utc("2027-01-15"), "2027-01-15T00:00:00Z");
        assert_eq!(
            utc("2027-01-15T08:00:00+01:00"),
            "2027-01-15T08:00:00+01:00"
        );
    }

    #[test]
    fn svg_text_is_escaped() {
        let svg = line_svg(&[("<x>".into(), (1, 2))], "a\"b", Lang::En);
        assert!(svg.contains("&lt;x&gt;") && svg.contains("a&quot;b"));
        assert!(!svg.contains("<x>"));
    }
}
