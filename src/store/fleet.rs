//! What several sidecars on one shared store need beyond the single-node
//! traits: a request allowance per CRM portal that every node takes from
//! (the portal counts all of their requests). The embedded SQLite store is
//! one node's: it has none, and each sink keeps its bucket in memory.

use std::time::Duration;

use super::StoreError;

/// A token allowance per key (a CRM portal), refilled by elapsed time at
/// `rate` a second up to `burst`, shared by every node of a fleet.
pub trait AllowanceStore: Send + Sync + 'static {
    /// Takes one token of `key`'s allowance: how long to wait before the
    /// request it stands for may go (zero: now). A token not there yet is
    /// reserved (the allowance goes below zero), so the caller sends after
    /// the wait without asking again, and callers on every node queue up
    /// at `rate` between them.
    fn take(&self, key: &str, rate: f64, burst: u32) -> Result<Duration, StoreError>;

    /// The portal said "too many": `key`'s allowance starts from empty.
    fn drain(&self, key: &str) -> Result<(), StoreError>;
}
