//! The durable exception list: the product's data.
//!
//! [`ExceptionStore`], [`OutboxStore`], [`CallStore`], [`ContactStore`]
//! and [`TokenStore`] are the small interfaces the rest of the sidecar
//! uses; [`Store`] is all of them, chosen by `[store] kind`:
//! [`sqlite::SqliteStore`] is the embedded default, [`postgres::PgStore`]
//! is one PostgreSQL database shared by a fleet of sidecars.
//!
//! Contract of every implementation:
//! - a write returns only once it is durable (survives kill -9 and power
//!   loss), and a batch is all-or-nothing;
//! - every add, update, removal and expiry leaves an audit row with its
//!   actor and time;
//! - values are stored normalised (`+E164` for phones, lowercase e-mails)
//!   and unique; the text as given is kept beside them.
//!
//! [`service::Exceptions`] puts the store and the in-memory set together:
//! write to the store first, then publish to the set.

pub mod fleet;
pub mod follow;
pub mod migrate;
pub mod open;
pub mod postgres;
pub mod service;
pub mod sqlite;

use serde::Serialize;

/// Entry kinds are the screening layer's (a value is a phone or an e-mail
/// before it is stored).
pub use crate::screening::source::Kind;

/// An entry to add or update.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub kind: Kind,
    /// Normalised: `+4930901820` or `boss@example.com`.
    pub value: String,
    /// The text as given.
    pub given: String,
    pub comment: String,
    /// `import`, `api`, `file`, or a CRM record such as `lead:123`.
    pub origin: String,
    /// Unix milliseconds after which the entry no longer applies.
    pub expires_at: Option<i64>,
    /// An allow entry (wins over shorter blocking prefixes / the domain).
    pub allow: bool,
}

/// How an entry's value matches (derived from the value: a phone prefix
/// ends in `*`, an e-mail domain entry starts with `@`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Exact,
    Prefix,
    Domain,
}

impl Pattern {
    pub fn of(value: &str) -> Pattern {
        if value.ends_with('*') {
            Pattern::Prefix
        } else if value.starts_with('@') {
            Pattern::Domain
        } else {
            Pattern::Exact
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Exact => "exact",
            Pattern::Prefix => "prefix",
            Pattern::Domain => "domain",
        }
    }

    pub fn parse(s: &str) -> Option<Pattern> {
        match s {
            "exact" => Some(Pattern::Exact),
            "prefix" => Some(Pattern::Prefix),
            "domain" => Some(Pattern::Domain),
            _ => None,
        }
    }
}

/// `block` (the default) or `allow`.
pub fn action_str(allow: bool) -> &'static str {
    if allow { "allow" } else { "block" }
}

/// A stored entry.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Insertion order; also the paging cursor.
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub value: String,
    pub given: String,
    pub comment: String,
    pub origin: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: Option<i64>,
    pub expires_at: Option<i64>,
    /// `exact`, `prefix` or `domain`.
    #[serde(rename = "match")]
    pub pattern: Pattern,
    pub allow: bool,
}

impl Entry {
    /// The entry as the in-memory set holds it (`None`: a value the set
    /// cannot read, never written by this store).
    pub fn item(&self) -> Option<crate::screening::exceptions::Item> {
        item_of(self.kind, &self.value, self.allow)
    }
}

/// A stored value as the in-memory set holds it.
pub fn item_of(kind: Kind, value: &str, allow: bool) -> Option<crate::screening::exceptions::Item> {
    use crate::screening::exceptions::{Item, Rule};
    match kind {
        Kind::Email => Some(Item::email(value, allow)),
        Kind::Phone if value.ends_with('*') => Rule::parse_value(value, allow).map(Item::Rule),
        Kind::Phone => Item::number(crate::screening::normalize::parse_e164(value)?, allow),
    }
}

/// What one batched write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Upserted {
    /// New values.
    pub added: usize,
    /// Values already present whose comment, origin or expiry changed.
    pub updated: usize,
    /// Values already present exactly so.
    pub unchanged: usize,
}

/// Filters of a listing; newest first.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub kind: Option<Kind>,
    /// Case-insensitive substring of the comment.
    pub comment: Option<String>,
    /// Exact normalised value.
    pub value: Option<String>,
    /// Prefix of the normalised value (`+4930`, `sales@`).
    pub prefix: Option<String>,
    /// Only entries of this match kind.
    pub pattern: Option<Pattern>,
    /// Only allow (`Some(true)`) or block entries.
    pub allow: Option<bool>,
    /// Only entries with an id below this (the previous page's cursor).
    pub before: Option<i64>,
    pub limit: usize,
}

/// One audit row.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub actor: String,
    /// `add`, `update`, `remove`, `expire`.
    pub action: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub value: String,
    pub comment: String,
    pub origin: String,
    /// The entry's action at that time: `block` or `allow`.
    pub entry_action: String,
}

/// Store failures; the message says what went wrong, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    #[error("store: corrupt row: {0}")]
    Corrupt(String),
    #[error(
        "store {path}: schema version {found} is newer than this sipscreen knows ({known}): \
         the file was written by a later release; run that release, or restore a backup"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    /// PostgreSQL refused or failed a statement (the message has no URL
    /// or password).
    #[error("store (postgres): {0}")]
    Postgres(String),
    /// The database cannot be reached now (connection refused or lost,
    /// pool timed out): the caller may answer 503 and retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error(
        "store (postgres {database}): schema version {found} is newer than this sipscreen \
         knows ({known}): a later release migrated the database; run that release"
    )]
    PgTooNew {
        database: String,
        found: i64,
        known: i64,
    },
}

impl StoreError {
    /// Whether the database could not be reached (rather than refusing).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Every store interface: what the server, the CRM workers, the API and
/// the CLI hold (`Arc<dyn Store>`), chosen by `[store] kind`.
pub trait Store: ExceptionStore + OutboxStore + CallStore + ContactStore + TokenStore {
    /// Where the store is, for logs (a file path, or the PostgreSQL host
    /// and database: never a password).
    fn describe(&self) -> String;

    /// The PostgreSQL store behind this one, for what only a fleet has
    /// (the change-log follower, shared portal allowances).
    fn as_postgres(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<postgres::PgStore>> {
        None
    }
}

/// One row of the PostgreSQL change log: a write to the list or the
/// contacts directory, with everything a node needs to apply it to its
/// in-memory set or directory without another query.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The log's sequence number (`bigserial`): apply in this order.
    pub seq: i64,
    /// Unix milliseconds of the write.
    pub at: i64,
    pub op: ChangeOp,
}

/// What one [`Change`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOp {
    /// An entry was added or updated (its value, action and expiry now).
    Upsert {
        kind: Kind,
        value: String,
        allow: bool,
        expires_at: Option<i64>,
    },
    /// An entry was removed (by the API or its expiry).
    Remove {
        kind: Kind,
        value: String,
        allow: bool,
    },
    /// A contact was added or replaced.
    ContactUpsert(crate::contacts::Contact),
    /// A contact was removed.
    ContactRemove { client: String },
}

impl Change {
    /// The in-memory set's item of an entry change (`None` for contacts,
    /// or a value the set cannot read).
    pub fn item(&self) -> Option<crate::screening::exceptions::Item> {
        match &self.op {
            ChangeOp::Upsert {
                kind, value, allow, ..
            }
            | ChangeOp::Remove { kind, value, allow } => item_of(*kind, value, *allow),
            _ => None,
        }
    }
}

/// The durable exception list.
pub trait ExceptionStore: Send + Sync + 'static {
    /// Every entry not expired at `now`, as the in-memory set holds it.
    fn load_active(&self, now: i64) -> Result<Vec<crate::screening::exceptions::Item>, StoreError>;

    /// Adds or updates `entries` in one durable transaction, by `actor`.
    fn upsert(&self, entries: &[NewEntry], actor: &str, now: i64) -> Result<Upserted, StoreError>;

    /// Removes one value; the removed entry, or `None` if it was absent.
    fn remove(&self, value: &str, actor: &str, now: i64) -> Result<Option<Entry>, StoreError>;

    /// Removes every entry expired at `now` (audited as `expire`).
    fn expire(&self, now: i64) -> Result<Vec<Entry>, StoreError>;

    /// The earliest expiry still ahead, if any.
    fn next_expiry(&self) -> Result<Option<i64>, StoreError>;

    fn list(&self, filter: &ListFilter) -> Result<Vec<Entry>, StoreError>;

    /// Audit rows newest first, optionally for one value, below a cursor.
    fn audit(
        &self,
        value: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError>;

    /// Small key/value state (e.g. the digest of the last imported file).
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;
    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError>;
}

/// A CRM event to deliver to one sink.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    pub sink: String,
    /// The call's `X-CRM-Call-Id`.
    pub call: String,
    /// `call.started`, `call.answered`, `call.ended`, `call.responsible_changed`.
    pub kind: String,
    /// The event as JSON.
    pub payload: String,
}

/// A queued event.
#[derive(Debug, Clone)]
pub struct OutEvent {
    pub id: i64,
    pub call: String,
    pub kind: String,
    pub payload: String,
    pub created_at: i64,
    pub attempts: i64,
    /// Not to be tried before this (unix ms).
    pub next_at: i64,
}

/// The durable CRM outbox: events survive restarts and crashes; each
/// sink takes its events strictly in order (so a call's `finish` never
/// overtakes its `register`).
pub trait OutboxStore: Send + Sync + 'static {
    /// Queues events in one durable transaction.
    fn enqueue(&self, events: &[NewEvent], now: i64) -> Result<(), StoreError>;
    /// The oldest `limit` events of `sink`, in order.
    fn head(&self, sink: &str, limit: usize) -> Result<Vec<OutEvent>, StoreError>;
    fn delivered(&self, ids: &[i64]) -> Result<(), StoreError>;
    fn retry_later(&self, id: i64, next_at: i64, error: &str) -> Result<(), StoreError>;
    /// Moves events to the dead-letter table.
    fn dead(&self, ids: &[i64], reason: &str, now: i64) -> Result<(), StoreError>;
    /// (queued events, oldest creation time).
    fn outbox_stats(&self) -> Result<(i64, Option<i64>), StoreError>;
    /// Queued events that failed at least once and wait for a retry.
    fn outbox_retrying(&self) -> Result<i64, StoreError>;
    /// The CRM's id for a call (Bitrix24 `CALL_ID` from register).
    fn crm_call(&self, sink: &str, call: &str) -> Result<Option<String>, StoreError>;
    fn set_crm_call(&self, sink: &str, call: &str, crm_id: &str) -> Result<(), StoreError>;
    /// Whether the CRM has been told the call ended (Bitrix24 finish).
    fn crm_finished(&self, sink: &str, call: &str) -> Result<bool, StoreError>;
    fn set_crm_finished(&self, sink: &str, call: &str, now: i64) -> Result<(), StoreError>;

    /// In a fleet: the oldest `limit` events of `sink` among the calls no
    /// other node holds a live lease on, in order (so per call strictly in
    /// order, oldest calls first), taking or renewing this node's lease on
    /// each of their calls until `now` + [`OutboxStore::lease`]. A store
    /// one process owns holds every lease: [`OutboxStore::head`].
    fn claim(&self, sink: &str, now: i64, limit: usize) -> Result<Vec<OutEvent>, StoreError> {
        let _ = now;
        self.head(sink, limit)
    }
    /// Gives back this node's leases on `calls` (after a retry is
    /// scheduled or an event dead-lettered) so another node may take them.
    fn release(&self, sink: &str, calls: &[String]) -> Result<(), StoreError> {
        let _ = (sink, calls);
        Ok(())
    }
    /// How long a claim holds (`None`: no other node takes events from
    /// this store; a claim holds for ever).
    fn lease(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A call in progress as the tracker keeps it across restarts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActiveCall {
    /// The SIP Call-ID, as received.
    pub sip_call_id: Vec<u8>,
    /// The call's `X-CRM-Call-Id`.
    pub call: String,
    /// The tracker's state of the call (JSON, the tracker's own format).
    pub state: String,
    /// Unix milliseconds of the call's last SIP activity.
    pub last_ms: i64,
}

/// Calls in progress, written only by the call tracker.
pub trait CallStore: Send + Sync + 'static {
    /// In one durable transaction: queues `events` in the outbox, removes
    /// the `ended` calls, then writes the `active` ones (so a call's
    /// `call.started` is never queued without its row, nor its
    /// `call.ended` without the row's removal). The first `new` of
    /// `active` were never written before (the tracker knows): a store may
    /// insert those without looking for a row of theirs first, and update
    /// the rest in place. What is written is the same whatever `new` is.
    fn save_calls_with_new(
        &self,
        events: &[NewEvent],
        active: &[ActiveCall],
        new: usize,
        ended: &[Box<[u8]>],
        now: i64,
    ) -> Result<(), StoreError>;
    /// [`CallStore::save_calls_with_new`] told of no new call.
    fn save_calls(
        &self,
        events: &[NewEvent],
        active: &[ActiveCall],
        ended: &[Box<[u8]>],
        now: i64,
    ) -> Result<(), StoreError> {
        self.save_calls_with_new(events, active, 0, ended, now)
    }
    /// Every call in progress.
    fn active_calls(&self) -> Result<Vec<ActiveCall>, StoreError>;
    /// Whether other nodes keep their calls here too (a fleet's
    /// PostgreSQL): a call in this node's memory may then have been ended
    /// or taken over by another node that got its BYE.
    fn shared(&self) -> bool {
        false
    }
    /// The calls in progress among `sip_call_ids` (in a fleet: another
    /// node's, whose BYE reached this one after a failover).
    fn find_calls(&self, sip_call_ids: &[Box<[u8]>]) -> Result<Vec<ActiveCall>, StoreError> {
        let _ = sip_call_ids;
        Ok(Vec::new())
    }
    /// Takes over up to `limit` calls last active before `before_ms` (in a
    /// fleet: calls of a node that died, whose BYE never came): each row is
    /// stamped active at `now_ms` in the same statement, so no other node
    /// takes it too, and returned with its previous `last_ms`. One store
    /// (every call in this node's memory) has none.
    fn stale_calls(
        &self,
        before_ms: i64,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<ActiveCall>, StoreError> {
        let _ = (before_ms, now_ms, limit);
        Ok(Vec::new())
    }
}

/// The durable contacts directory.
pub trait ContactStore: Send + Sync + 'static {
    /// Adds or replaces contacts in one transaction: (added, updated).
    fn upsert_contacts(
        &self,
        contacts: &[crate::contacts::Contact],
        actor: &str,
        now: i64,
    ) -> Result<(usize, usize), StoreError>;
    fn remove_contact(&self, client: &str) -> Result<bool, StoreError>;
    /// Contacts ordered by client, after `after`, optionally for one user.
    fn list_contacts(
        &self,
        user: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::contacts::Contact>, StoreError>;
    fn all_contacts(&self) -> Result<Vec<crate::contacts::Contact>, StoreError>;
}

/// A Bitrix24 application's tokens and who installed it. Secrets: never
/// logged, shown or put in an error.
#[derive(Clone, Default, PartialEq)]
pub struct CrmTokens {
    pub access: String,
    pub refresh: String,
    /// When the access token expires (unix ms; 0: unknown, refresh first).
    pub expires_at: i64,
    /// The portal's `member_id`, from the code exchange or the install.
    pub member_id: String,
    /// The install's `application_token` (checks later install calls).
    pub application_token: String,
    /// The portal's domain as the install or the exchange named it.
    pub domain: String,
}

impl std::fmt::Debug for CrmTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrmTokens")
            .field("expires_at", &self.expires_at)
            .field("member_id", &self.member_id)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// Where CRM applications keep their tokens, and what the CRM answered
/// about a call.
pub trait TokenStore: Send + Sync + 'static {
    fn crm_tokens(&self, sink: &str) -> Result<Option<CrmTokens>, StoreError>;
    fn set_crm_tokens(&self, sink: &str, t: &CrmTokens, now: i64) -> Result<(), StoreError>;
    /// Events queued for one sink.
    fn outbox_depth(&self, sink: &str) -> Result<i64, StoreError>;
    /// Keeps the CRM's answer about a call (JSON).
    fn set_crm_answer(
        &self,
        sink: &str,
        call: &str,
        answer: &str,
        now: i64,
    ) -> Result<(), StoreError>;
    /// The answers kept for these calls: (call, sink, answer JSON).
    fn crm_answers(&self, calls: &[String]) -> Result<Vec<(String, String, String)>, StoreError>;
}

/// Splits `items` into rounds in which each key occurs once (the n-th
/// occurrence of a key goes to round n), so one set-based statement per
/// round does what one statement per item in order would. The keys are
/// hashed with a seeded foldhash (the call tracker's per-flush batches
/// go through here: SipHash cost it about 500 instructions a call).
pub(crate) fn rounds<'a, T, K: std::hash::Hash + Eq + ?Sized + 'a>(
    items: &'a [T],
    key: impl Fn(&'a T) -> &'a K,
) -> Vec<Vec<&'a T>> {
    let mut seen: std::collections::HashMap<&K, usize, foldhash::fast::RandomState> =
        std::collections::HashMap::with_capacity_and_hasher(items.len(), Default::default());
    let mut out: Vec<Vec<&T>> = Vec::new();
    for it in items {
        let n = seen.entry(key(it)).or_insert(0);
        if out.len() <= *n {
            out.push(Vec::new());
        }
        out[*n].push(it);
        *n += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_put_each_repeat_of_a_key_in_a_later_round() {
        let r = rounds(&["a", "b", "a", "c", "a", "b"], |s: &&str| *s);
        let r: Vec<Vec<&str>> = r
            .into_iter()
            .map(|v| v.into_iter().copied().collect())
            .collect();
        assert_eq!(r, [vec!["a", "b", "c"], vec!["a", "b"], vec!["a"]]);
    }
}
