//! Screening: who is the client, which line, is the client listed, what
//! does the line's CRM integration say. Pure functions over immutable
//! tables plus the lock-free exception set; no I/O, no tokio.
//!
//! - `normalize`: numbers to E.164 as `u64` (fast path + `phonenumber`).
//! - `exceptions`: the in-memory exception set (lock-free reads).
//! - `prefixes`: prefix and allow rules, the longest-rule table.
//! - `verstat`: the STIR/SHAKEN verification result of a trusted trunk.
//! - `source`: where entries come from (the exceptions file for now).
//! - `lines`: per-line CRM settings, looked up by E.164.
//! - `verdict`: the verdict and the `X-CRM-*` tags.

pub mod exceptions;
pub mod lines;
pub mod normalize;
pub mod prefixes;
pub mod source;
mod verdict;
pub mod verstat;

pub use verdict::{Client, CreateTag, Direction, Reason, Screener, Screening};
