//! sipscreen: a SIP call-screening sidecar between a carrier trunk and a PBX.
//!
//! Map of the crate, top layer first. A module uses only modules of the
//! layers below it (`tests/layers.rs` checks it), so the graph reads
//! top-down and has no cycle:
//!
//! - `client`: the CLI's client of the admin API (the binary, `main.rs`,
//!   parses arguments and calls into the library).
//! - `server`: wiring only: binds everything a config names, runs it,
//!   reloads on SIGHUP, shuts down in order.
//! - `admin`: the HTTP listener (`/metrics`, `/healthz`, `/readyz`, and
//!   `api` under `/api/v1`). `check`: what `check-config` runs.
//! - `console`: the web console under `/console` (server-rendered pages,
//!   sessions, CSRF, English and German) over the `api` functions.
//! - `api`: the `/api/v1` handlers, tokens and roles, one paging rule.
//! - `proxy`: the stateless proxy core: classify the source, route in
//!   stages (refuse, next hop, forward edits, tag), local replies.
//! - `calls`: the call tracker thread, the call log, calls kept across a
//!   restart. `crm`: the durable outbox's workers, the Bitrix24 and webhook
//!   sinks, their factory. `transport`: UDP, TCP and TLS; bytes in, bytes out.
//!   `flood`: per-source rate limits and bans, the scanner filter (lock-free
//!   counters the proxy consults before scanning a message).
//! - `store`: the store traits (`Store`: all of them), SQLite and
//!   PostgreSQL (one file per concern, schema migrations; PostgreSQL's
//!   change log), `store migrate` and the store + set service. `runtime`: what one config
//!   builds (routing, screener, contacts), swapped whole on reload, and
//!   `Runtime::decide`, the one place a call's verdict, tags and
//!   responsible person are decided.
//! - `dns`: a peer's targets: RFC 3263 resolution in a background task,
//!   the lock-free per-call choice, the failover blocklist.
//! - `metrics`: one registry, passed in. `contacts`: the directory client
//!   -> responsible. `events`: the CRM call event type (built by `calls`,
//!   read by `crm`). `tls`: PEM certificates and keys, the rustls server
//!   and per-peer client configs built from them.
//! - `screening`: E.164 normalisation, the exception set, line settings,
//!   verdict and tags.
//! - `config`: TOML schema, load and validate with file:line:column errors.
//! - `sip` (scanner, edit list, TCP framing; no tokio, fuzzable alone),
//!   `clock` (unix ms, RFC 3339, an injectable clock), `shutdown`, `json`
//!   (the key-by-key object writer of the tracker's records).

pub mod admin;
pub mod api;
pub mod calls;
pub mod check;
pub mod client;
pub mod clock;
pub mod config;
pub mod console;
pub mod contacts;
pub mod crm;
pub mod dns;
pub mod events;
pub mod flood;
pub mod json;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod screening;
pub mod server;
pub mod shutdown;
pub mod sip;
pub mod store;
pub mod tls;
pub mod transport;

/// An error and its causes as one line, "outer: inner: innermost" (a cause
/// the message above already ends with is not repeated; hyper does that).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let part = s.to_string();
        if !msg.ends_with(&part) {
            msg.push_str(": ");
            msg.push_str(&part);
        }
        src = s.source();
    }
    msg
}
