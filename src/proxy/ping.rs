//! OPTIONS pings to every resolved target (`[dns] ping_interval_secs`,
//! Kamailio dispatcher style): any answer marks the address up, `[dns]
//! ping_threshold` rounds in a row without one mark it down. The pings
//! carry a branch of their own, so their answers are recognised (and
//! consumed) before response routing.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::Proxy;
use super::ident::BRANCH_PREFIX;
use crate::config::TransportKind;
use crate::shutdown::Shutdown;
use crate::sip::Message;
use crate::sip::values::Via;
use crate::transport::Sender;

/// The branch of our pings (after [`BRANCH_PREFIX`]).
const PING_MARK: &[u8] = b"ping";

/// Whether response `msg` answers one of our pings.
pub fn is_ping_answer(msg: &Message) -> bool {
    msg.top_via().is_some_and(|v| is_ping_via(&v))
}

/// Whether a response whose top Via is `v` answers one of our pings.
pub fn is_ping_via(v: &Via<'_>) -> bool {
    v.branch().is_some_and(|b| {
        b.strip_prefix(BRANCH_PREFIX)
            .is_some_and(|r| r.starts_with(PING_MARK))
    })
}

/// An OPTIONS to `dest`.
fn options(proxy: &Proxy, transport: TransportKind, dest: std::net::SocketAddr, seq: u64) -> Bytes {
    let local = proxy.local();
    let mut m = Vec::with_capacity(400);
    let _ = write!(m, "OPTIONS sip:{dest}");
    if transport == TransportKind::Tcp {
        m.extend_from_slice(b";transport=tcp");
    }
    m.extend_from_slice(b" SIP/2.0\r\n");
    m.extend_from_slice(local.via_prefix(transport));
    m.extend_from_slice(BRANCH_PREFIX);
    m.extend_from_slice(PING_MARK);
    let host = &local.host;
    let _ = write!(
        m,
        "{seq:x}\r\nMax-Forwards: 70\r\nFrom: <sip:sipscreen@{host}>;tag=ping{seq:x}\r\nTo: <sip:{dest}>\r\nCall-ID: ping-{seq:x}@{host}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    Bytes::from(m)
}

/// Pings until shutdown; the interval is read from the running config
/// each round (a reload changes it; 0 pauses the pings).
pub async fn run(proxy: Arc<Proxy>, out: Sender, mut shutdown: Shutdown) {
    let mut seq: u64 = 0;
    loop {
        let rt = proxy.runtime_arc();
        let (every, threshold) = (
            rt.loaded.config.dns.ping_interval_secs,
            rt.loaded.config.dns.ping_threshold,
        );
        if every > 0 {
            for p in rt.routing.peers() {
                for (dest, transport) in p.targets.ping_round(threshold) {
                    seq += 1;
                    if let Err(e) = out.send(transport, dest, options(&proxy, transport, dest, seq))
                    {
                        tracing::debug!(%dest, error = %e, "OPTIONS ping not sent");
                    }
                }
            }
        }
        drop(rt);
        // Paused (0): look at the config again now and then.
        let wait = Duration::from_secs(if every > 0 { every } else { 5 });
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
