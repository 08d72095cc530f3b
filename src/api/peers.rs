//! `GET /peers`: every peer, its configured targets, what they resolved
//! to (TTL, expiry, SRV priority / weight) and each address's failover
//! state (up, or blocked until when, and the last failure). Any token.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;

use super::{ApiError, ApiState};
use crate::config::Role;
use crate::dns::PeerView;

#[derive(Serialize)]
pub struct Peers {
    pub peers: Vec<PeerView>,
}

pub async fn list(State(s): State<ApiState>, headers: HeaderMap) -> Result<Json<Peers>, ApiError> {
    s.authorize(&headers, Role::View)?;
    let rt = s.proxy.runtime();
    Ok(Json(Peers {
        peers: rt.routing.peers().map(|p| p.targets.view()).collect(),
    }))
}
