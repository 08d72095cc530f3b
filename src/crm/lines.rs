//! The portal's external lines kept in step with the `[[line]]`s
//! (`telephony.externalLine.get` / `.add` / `.update`,
//! `api-reference/telephony/telephony-external-line-*.md`): at start,
//! once the application is connected, and after every reload. `NUMBER` is
//! the line's E.164 number (what register sends as `LINE_NUMBER`), `NAME`
//! its `name` (else the number), `CRM_AUTO_CREATE` `Y` for `create =
//! "auto"`, else `N`. Lines in the portal that the config does not name
//! are left alone.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::b24app::LinesReport;
use super::bitrix24::Bitrix24;
use crate::config::CreateMode;
use crate::screening::lines::LineTable;
use crate::screening::normalize::e164_string;
use crate::shutdown::Shutdown;

const GET: &str = "telephony.externalLine.get";
const ADD: &str = "telephony.externalLine.add";
const UPDATE: &str = "telephony.externalLine.update";

/// One line as the portal should have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmLine {
    pub number: String,
    pub name: String,
    /// `Y` or `N`.
    pub auto_create: &'static str,
}

/// The lines a config's line table asks for.
pub fn wanted(lines: &LineTable) -> Vec<CrmLine> {
    lines
        .configured()
        .into_iter()
        .map(|(n, s)| {
            let number = e164_string(n);
            CrmLine {
                name: s.name.clone().unwrap_or_else(|| number.clone()),
                number,
                auto_create: if s.create == CreateMode::Auto {
                    "Y"
                } else {
                    "N"
                },
            }
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// One sync: what was added, updated, left.
pub async fn sync(sink: &Bitrix24, want: &[CrmLine]) -> Result<LinesReport, String> {
    let err = |d: super::Delivery| match d {
        super::Delivery::Retry(e) | super::Delivery::Rejected(e) => e.to_string(),
        super::Delivery::Ok => String::new(),
    };
    let have = sink.call(GET, json!({})).await.map_err(err)?;
    let have: Vec<&Value> = have.as_array().into_iter().flatten().collect();
    let mut report = LinesReport {
        at: crate::clock::rfc3339(crate::clock::now_ms()),
        ..LinesReport::default()
    };
    for l in want {
        let params = json!({"NUMBER": l.number, "NAME": l.name, "CRM_AUTO_CREATE": l.auto_create});
        match have.iter().find(|h| text(&h["NUMBER"]) == l.number) {
            None => {
                sink.call(ADD, params).await.map_err(err)?;
                report.added.push(l.number.clone());
            }
            Some(h)
                if text(&h["NAME"]) != l.name || text(&h["CRM_AUTO_CREATE"]) != l.auto_create =>
            {
                sink.call(UPDATE, params).await.map_err(err)?;
                report.updated.push(l.number.clone());
            }
            Some(_) => report.unchanged += 1,
        }
    }
    Ok(report)
}

/// Syncs `sink`'s lines whenever the application is connected and the
/// wanted lines changed (a reload), retrying a failed sync.
pub async fn run(
    sink: Arc<Bitrix24>,
    mut want: tokio::sync::watch::Receiver<Arc<Vec<CrmLine>>>,
    mut shutdown: Shutdown,
) {
    let name = sink.app().sink.clone();
    let mut failures = 0;
    loop {
        while !sink.app().connected() {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = sink.app().connected_now.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let lines = want.borrow_and_update().clone();
        match sync(&sink, &lines).await {
            Ok(r) => {
                failures = 0;
                if r.added.is_empty() && r.updated.is_empty() {
                    tracing::info!(sink = %name, unchanged = r.unchanged, "Bitrix24 external lines match the config");
                } else {
                    tracing::info!(sink = %name, added = ?r.added, updated = ?r.updated, unchanged = r.unchanged, "Bitrix24 external lines synced with the config");
                }
                sink.app().set_lines_report(r);
                tokio::select! {
                    _ = shutdown.wait() => return,
                    changed = want.changed() => if changed.is_err() { return },
                }
            }
            Err(e) => {
                let wait = super::backoff_ms(failures).min(60_000);
                failures += 1;
                tracing::warn!(sink = %name, error = %e, retry_in_ms = wait, "syncing the Bitrix24 external lines failed");
                sink.app().set_lines_report(LinesReport {
                    at: crate::clock::rfc3339(crate::clock::now_ms()),
                    error: Some(e),
                    ..LinesReport::default()
                });
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                }
            }
        }
    }
}
