//! sipscreen: a SIP call-screening sidecar between a carrier trunk and a PBX.
//!
//! Map of the crate (one concept per module):
//! - `sip`: scanner, edit list, TCP framing (no tokio; fuzzable alone).
//! - `transport`: UDP and TCP listeners; bytes in, bytes out.
//! - `proxy`: the stateless proxy core: classify source, route, Via /
//!   Record-Route, local replies, tagging.
//! - `screening`: E.164 normalisation, the exception set, line settings,
//!   verdict and tags.
//! - `config`: TOML schema, load and validate with file:line:column errors.
//! - `runtime`: what a config builds (routing, screener) and its atomic
//!   swap on reload.
//! - `admin`: the HTTP listener for `/metrics`, `/healthz`, `/readyz`.
//! - `metrics`: one registry, passed in.
//! - `events`: the CRM call event type, built by `calls`, read by `crm`.
//! - `server`: wires it together (`run(config, shutdown)`).

pub mod admin;
pub mod api;
pub mod calls;
pub mod check;
pub mod client;
pub mod clock;
pub mod config;
pub mod contacts;
pub mod crm;
pub mod events;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod screening;
pub mod server;
pub mod shutdown;
pub mod sip;
pub mod store;
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
