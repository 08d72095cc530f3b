//! The background resolver: one task per config generation refreshes
//! every target written as a name when its answer's TTL (bounded by
//! `[dns] min_ttl_secs` / `max_ttl_secs`) runs out, or `retry_secs` after
//! a failure (the last good answer stays in use). It holds the peers
//! weakly and ends once their generation is gone. Never on the SIP path.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{PeerTargets, Resolver};
use crate::config::DnsConfig;

/// The first pass of a started resolver.
pub struct Started {
    first: watch::Receiver<bool>,
}

impl Started {
    /// Waits until every name was tried once, at most `within`; whether
    /// the pass finished.
    pub async fn first_pass(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, self.first.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Starts refreshing the names among `peers`' targets (nothing to do, and
/// no task, when they are all IP literals).
pub fn spawn(peers: &[Arc<PeerTargets>], cfg: &DnsConfig) -> Result<Started, String> {
    let (tx, first) = watch::channel(false);
    let mut due = Vec::new();
    for (p, peer) in peers.iter().enumerate() {
        for (i, c) in peer.configured.iter().enumerate() {
            if c.spec.is_name() {
                due.push((p, i, Instant::now()));
            }
        }
    }
    if due.is_empty() {
        let _ = tx.send(true);
        return Ok(Started { first });
    }
    let resolver = Resolver::new(cfg)?;
    let weak: Vec<Weak<PeerTargets>> = peers.iter().map(Arc::downgrade).collect();
    let bounds = Bounds {
        min: cfg.min_ttl_secs.max(1),
        max: cfg.max_ttl_secs.max(1),
        retry: Duration::from_secs(cfg.retry_secs.max(1)),
    };
    tokio::spawn(run(resolver, weak, due, bounds, tx));
    Ok(Started { first })
}

#[derive(Clone, Copy)]
struct Bounds {
    min: u64,
    max: u64,
    retry: Duration,
}

async fn run(
    resolver: Resolver,
    peers: Vec<Weak<PeerTargets>>,
    mut due: Vec<(usize, usize, Instant)>,
    b: Bounds,
    first: watch::Sender<bool>,
) {
    loop {
        let now = Instant::now();
        let mut work = Vec::new();
        for (p, i, at) in &due {
            if *at > now {
                continue;
            }
            let Some(peer) = peers[*p].upgrade() else {
                continue;
            };
            let resolver = &resolver;
            let (p, i) = (*p, *i);
            work.push(async move {
                let spec = &peer.configured[i].spec;
                let r = resolver.resolve(spec, peer.transport).await;
                (p, i, peer, r)
            });
        }
        if work.is_empty() && peers.iter().all(|p| p.strong_count() == 0) {
            return; // the generation is gone
        }
        for (p, i, peer, r) in futures_util::future::join_all(work).await {
            let next = match r {
                Ok(answer) => {
                    let ttl = u64::from(answer.ttl_secs.unwrap_or(0)).clamp(b.min, b.max);
                    let expires = peer.clock.now_ms() + ttl as i64 * 1000;
                    tracing::debug!(peer = %peer.peer, target = %peer.configured[i].spec, addresses = answer.dests.len(), ttl, "target resolved");
                    peer.answered(i, answer, expires);
                    Duration::from_secs(ttl)
                }
                Err(e) => {
                    peer.failed(i, e);
                    b.retry
                }
            };
            if let Some(d) = due.iter_mut().find(|d| d.0 == p && d.1 == i) {
                d.2 = Instant::now() + next;
            }
        }
        if !*first.borrow() {
            let _ = first.send(true);
        }
        let wake = due.iter().map(|d| d.2).min().unwrap_or_else(Instant::now);
        // Wake at least every max_ttl to notice a dropped generation.
        let cap = Instant::now() + Duration::from_secs(b.max);
        tokio::time::sleep_until(wake.min(cap)).await;
    }
}
