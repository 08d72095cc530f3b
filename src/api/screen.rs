//! `POST /screen` and `POST /screen/email`: the verdict the sidecar would
//! give, from the code live calls use (`Runtime::decide` and
//! `Decision::write_tags` on the runtime in use, contacts directory
//! included).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiState};
use crate::config::Role;
use crate::screening::Direction;
use crate::screening::source::check_email;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberQuery {
    /// The client: caller of an inbound call, number dialled by an
    /// outbound one; empty or `anonymous` for a withheld caller.
    pub number: String,
    /// The line: the number dialled (inbound) or the PBX caller (outbound).
    pub line: String,
    pub direction: String,
}

#[derive(Serialize)]
pub struct NumberAnswer {
    pub verdict: &'static str,
    pub direction: &'static str,
    pub client: String,
    pub line: Option<String>,
    pub create: &'static str,
    pub source: String,
    pub responsible: Option<String>,
    /// The `X-CRM-*` headers an inbound INVITE would carry (without
    /// `X-CRM-Call-Id`: this is not a call).
    pub tags: BTreeMap<String, String>,
    /// On a `forward = "ruri"` line, the extension the Request-URI user
    /// becomes (the responsible's); absent when the R-URI is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_to: Option<String>,
}

/// `POST /screen {"number", "line", "direction"}`
pub async fn number(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ApiJson(q): ApiJson<NumberQuery>,
) -> Result<Json<NumberAnswer>, ApiError> {
    s.authorize(&headers, Role::View)?;
    screen_number(&s, &q).map(Json)
}

/// What a call from `q.number` on `q.line` would get, from the live
/// screening path (the API and the console's "what would this caller
/// get?" box).
pub fn screen_number(s: &ApiState, q: &NumberQuery) -> Result<NumberAnswer, ApiError> {
    let direction = match q.direction.as_str() {
        "inbound" | "in" | "incoming" => Direction::Inbound,
        "outbound" | "out" | "outgoing" => Direction::Outbound,
        d => {
            return Err(ApiError::bad_request(format!(
                "direction {d:?}: use inbound or outbound"
            )));
        }
    };
    let rt = s.proxy.runtime();
    let number = q.number.trim();
    let client = (!number.is_empty()).then_some(number.as_bytes());
    let d = rt.decide(direction, q.line.trim().as_bytes(), client);
    let sc = &d.screening;
    let mut raw = Vec::new();
    d.write_tags(None, &mut raw);
    let tags: BTreeMap<String, String> = String::from_utf8_lossy(&raw)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(NumberAnswer {
        verdict: sc.verdict.as_str(),
        direction: direction.as_str(),
        client: tags.get("X-CRM-Client").cloned().unwrap_or_default(),
        line: tags.get("X-CRM-Line").cloned(),
        create: sc.create().as_str(),
        source: sc.settings.source.clone(),
        responsible: d.responsible().map(str::to_string),
        tags,
        forward_to: d.forward_to().map(str::to_string),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailQuery {
    from: String,
    /// A reply to an earlier message (always `log`).
    #[serde(default)]
    reply: bool,
}

#[derive(Serialize)]
pub struct EmailAnswer {
    verdict: &'static str,
    from: String,
    reply: bool,
}

/// `POST /screen/email {"from", "reply"}`
pub async fn email(
    State(s): State<ApiState>,
    headers: HeaderMap,
    ApiJson(q): ApiJson<EmailQuery>,
) -> Result<Json<EmailAnswer>, ApiError> {
    s.authorize(&headers, Role::View)?;
    let from = check_email(q.from.trim())
        .map_err(|why| ApiError::bad_request(format!("from {:?}: {why}", q.from)))?;
    let verdict = s.proxy.runtime().screener.screen_email(&from, q.reply);
    Ok(Json(EmailAnswer {
        verdict: verdict.as_str(),
        from,
        reply: q.reply,
    }))
}
