//! `/bans`: sources flood protection banned (any token lists them; an
//! edit token lifts one). A ban lifted here lets the source in at once,
//! counted afresh; there is no audit table for bans, so the lift is logged
//! with the token's name.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::page::{self, Page};
use super::{ApiError, ApiState};
use crate::config::Role;
use crate::flood::Ban;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// One ban as the API shows it.
#[derive(Serialize)]
pub struct BanView {
    /// The address whose messages tripped it.
    address: String,
    /// What is banned: the address (`/32`) or its IPv6 prefix.
    network: String,
    since: String,
    until: String,
    /// Messages seen from it (the window that tripped it and the ones
    /// dropped since).
    requests: u64,
    /// `flood` or `user_agent`.
    reason: &'static str,
}

impl From<&Ban> for BanView {
    fn from(b: &Ban) -> Self {
        BanView {
            address: b.address.to_string(),
            network: b.net.to_string(),
            since: crate::clock::rfc3339(b.since_ms),
            until: crate::clock::rfc3339(b.until_ms),
            requests: b.requests,
            reason: b.reason,
        }
    }
}

/// `GET /bans`: active bans by network, paged like every list.
pub async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<BanView>>, ApiError> {
    s.authorize(&headers, Role::View)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = page::limit(q.limit)?;
    let after = q.cursor.as_deref().map(parse_target).transpose()?;
    let mut bans = s.proxy.flood().bans();
    bans.sort_by_key(|b| b.net);
    let items: Vec<BanView> = bans
        .iter()
        .filter(|b| after.is_none_or(|a| b.net > a))
        .take(limit)
        .map(BanView::from)
        .collect();
    Ok(Json(Page::new(items, limit, |b| b.network.clone())))
}

/// `DELETE /bans/{addr}`: lifts the ban covering an address (or equal to
/// a network written `addr/len`, `/` as `%2F`).
pub async fn remove(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(addr): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = s.authorize(&headers, Role::Edit)?;
    let target = parse_target(&addr)?;
    match s.proxy.flood().unban(&target) {
        Some(b) => {
            tracing::info!(actor = %actor.name, net = %b.net, reason = b.reason, "ban lifted through the API");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{target} is not banned"),
        )),
    }
}

/// An address (`192.0.2.7`, `2001:db8::1`, `[2001:db8::1]`) or a network.
fn parse_target(t: &str) -> Result<IpNet, ApiError> {
    let bare = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(t);
    bare.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .or_else(|_| bare.parse::<IpNet>().map(|n| n.trunc()))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{t:?} is not an IP address or network (e.g. 192.0.2.7, 2001:db8::/64)"
            ))
        })
}
