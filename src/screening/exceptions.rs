//! The exception list in memory: phones (E.164 `u64`) and e-mails
//! (lowercased), read on every call, written by reloads and (later) the API.
//!
//! # Design
//!
//! - **Readers never wait.** The whole state is one immutable [`Snapshot`]
//!   behind an `arc_swap::ArcSwap`; a lookup is `load()` (lock-free) plus a
//!   probe. Writers build a new snapshot beside the old one and swap it in;
//!   readers still holding the old one finish on it.
//! - **Phones: base + delta.** The base is a compact open-addressing table
//!   of `u64` ([`PhoneTable`]): the key itself is the slot (0 = empty, no
//!   E.164 number is 0), in buckets of eight keys = one 64-byte cache line,
//!   linear probing from bucket to bucket, load factor 0.60 with an exact
//!   (not power-of-two) bucket count, bucket = `fastrange(key * φ⁻¹·2⁶⁴)`
//!   (Fibonacci hashing spreads the consecutive number blocks carriers
//!   hand out). That is ~13.3 bytes per entry. A bucket that a key had to
//!   pass on its way to a later one is marked (the top bit of its last
//!   slot: E.164 numbers need 50 bits), so a lookup reads the next bucket
//!   only when the key can be there: a miss in an unmarked bucket (93 % of
//!   buckets at this load, even full ones) reads one cache line, and so
//!   does a hit on the ~98 % of keys in their home bucket (1.03 lines per
//!   hit, 1.09 per miss on average).
//!   [`ExceptionSet::prefetch`] starts loading that line early. On
//!   Linux the table is backed by transparent huge pages (`MADV_HUGEPAGE`),
//!   so a lookup in a 10M table does not also pay a page walk.
//!   On top of the base sits a small delta: `added` (not in the base) and
//!   `removed` (in the base); a lookup checks the delta only when it is not
//!   empty. A single insert or remove copies only the delta, never the base.
//! - **Prefix rules** (block and allow prefixes, exact allow entries) are a
//!   third layer over a static longest-rule table ([`PrefixTable`], see
//!   `prefixes`), with the same delta and merges. A phone lookup probes the
//!   exact table first (an exact entry is the longest), then, only when any
//!   rule is loaded, the rule table; with a delta present it walks the
//!   delta's places longest first (`Layer::longest_with_delta`).
//! - **E-mails** use the same layering with a hash set of `Box<str>` base:
//!   addresses, `@domain` and `@*.domain` entries, an allow entry with `!`
//!   before it.
//! - **Writers serialise** on a `Mutex` (readers never touch it), copy the
//!   small delta of the kind they change, and swap.
//! - **Merging.** When a delta reaches the threshold (default 4096 entries)
//!   the writer starts a background thread (at most one at a time) that
//!   builds a new base from the snapshot of that moment, without any lock.
//!   It then takes the writer lock and rebases: the entries written
//!   meanwhile are recomputed as a delta over the new base (only keys in
//!   either delta can differ), and swaps. If a `replace_all` replaced the
//!   base meanwhile, the merge result is dropped. Readers keep reading the
//!   old snapshot throughout; writers wait only for the short rebase. If no
//!   thread can be spawned, the merge runs inline in the writer.
//! - **`replace_all`** (start, reload) builds fresh bases under the writer
//!   lock, so a single write made at the same time is applied after it.

use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::screening::prefixes::PrefixTable;
pub use crate::screening::prefixes::Rule;
use rustc_hash::FxHashSet;

/// Delta size (per kind) that triggers a merge into a new base.
pub const DEFAULT_MERGE_THRESHOLD: usize = 4096;

/// While merges are held ([`ExceptionSet::hold_merges`]), a delta is still
/// merged at this size, so that memory and the copy of the delta each
/// write makes stay bounded.
pub const HELD_MERGE_MAX: usize = 1 << 20;

/// The exception set; cheap to share (`Arc`), `Send + Sync`.
pub struct ExceptionSet {
    /// State shared with the background merge thread.
    inner: Arc<Inner>,
}

struct Inner {
    /// What readers see.
    current: ArcSwap<Snapshot>,
    /// Serialises writers (never taken by readers).
    write: Mutex<()>,
    /// A background merge is running.
    merging: AtomicBool,
    /// Delta size that triggers a merge.
    threshold: usize,
    /// Live [`MergeHold`]s: while any, merges wait for [`HELD_MERGE_MAX`].
    held: AtomicUsize,
}

/// Holds the set's background merges (see [`ExceptionSet::hold_merges`]).
pub struct MergeHold<'a> {
    set: &'a ExceptionSet,
}

impl Drop for MergeHold<'_> {
    fn drop(&mut self) {
        let inner = &self.set.inner;
        if inner.held.fetch_sub(1, Ordering::AcqRel) == 1
            && inner.current.load().over_threshold(inner.threshold)
        {
            self.set.start_merge();
        }
    }
}

/// One consistent state of every kind.
struct Snapshot {
    /// Exact block entries.
    phones: Arc<Layer<PhoneTable>>,
    /// Prefix rules (block and allow) and exact allow entries.
    prefixes: Arc<Layer<PrefixTable>>,
    /// E-mail entries: addresses, `@domain`, `@*.domain`; `!` before an
    /// allow entry.
    emails: Arc<Layer<EmailTable>>,
}

impl Snapshot {
    fn empty() -> Snapshot {
        Snapshot {
            phones: Arc::new(Layer::new(PhoneTable::build(Vec::new()))),
            prefixes: Arc::new(Layer::new(PrefixTable::build(Vec::new()))),
            emails: Arc::new(Layer::new(EmailTable::build(Vec::new()))),
        }
    }

    fn over_threshold(&self, threshold: usize) -> bool {
        self.phones.delta_len() >= threshold
            || self.prefixes.delta_len() >= threshold
            || self.emails.delta_len() >= threshold
    }
}

/// One entry as the set holds it (see [`Item::of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An exact block entry.
    Phone(u64),
    /// A prefix (block or allow) or an exact allow entry.
    Rule(Rule),
    /// An e-mail entry's key: the lowercased address, `@domain` or
    /// `@*.domain`, with `!` before it for an allow entry.
    Email(String),
}

impl Item {
    /// An exact number: a block goes to the phone table, an allow is a
    /// one-number rule.
    pub fn number(n: u64, allow: bool) -> Option<Item> {
        if allow {
            Rule::exact(n, true).map(Item::Rule)
        } else {
            (n != 0).then_some(Item::Phone(n))
        }
    }

    /// An e-mail entry (address or domain pattern).
    pub fn email(value: &str, allow: bool) -> Item {
        let key = email_key(value);
        Item::Email(if allow { format!("!{key}") } else { key.into() })
    }
}

/// What a phone lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneMatch {
    /// An exact block entry.
    Listed,
    /// The longest rule covering the number (a prefix, or an exact allow).
    Rule(Rule),
}

/// What an e-mail lookup found: the entry (`boss@example.com`,
/// `@example.com`, `@*.example.com`) and whether it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailMatch {
    pub entry: String,
    pub allow: bool,
}

/// An immutable base plus the small delta written since it was built.
/// Invariants: `added ∩ base = ∅`, `removed ⊆ base`.
struct Layer<B: Base> {
    base: Arc<B>,
    added: FxHashSet<B::Key>,
    removed: FxHashSet<B::Key>,
}

/// What a base table must offer the layering.
trait Base: Sized + Send + Sync + 'static {
    type Key: Hash + Eq + Clone + Send + Sync + 'static;
    fn has(&self, k: &Self::Key) -> bool;
    fn build(keys: Vec<Self::Key>) -> Self;
    fn keys(&self) -> Vec<Self::Key>;
    fn len(&self) -> usize;
    fn heap_bytes(&self) -> usize;
}

impl<B: Base> Layer<B> {
    fn new(base: B) -> Self {
        Layer {
            base: Arc::new(base),
            added: FxHashSet::default(),
            removed: FxHashSet::default(),
        }
    }

    #[inline]
    fn contains(&self, k: &B::Key) -> bool {
        if self.added.is_empty() && self.removed.is_empty() {
            return self.base.has(k);
        }
        if self.removed.contains(k) {
            return false;
        }
        self.base.has(k) || self.added.contains(k)
    }

    fn delta_len(&self) -> usize {
        self.added.len() + self.removed.len()
    }

    fn len(&self) -> usize {
        self.base.len() + self.added.len() - self.removed.len()
    }

    /// Removes `k` from the draft `next` (a copy of `self` made on the
    /// first change); whether it was present.
    fn draft_remove(&self, next: &mut Option<Self>, k: &B::Key) -> bool {
        if !next.as_ref().unwrap_or(self).contains(k) {
            return false;
        }
        let n = next.get_or_insert_with(|| self.clone_delta());
        if n.base.has(k) {
            n.removed.insert(k.clone());
        } else {
            n.added.remove(k);
        }
        true
    }

    /// Adds `k` to the draft `next`; whether it was absent.
    fn draft_insert(&self, next: &mut Option<Self>, k: B::Key) -> bool {
        if next.as_ref().unwrap_or(self).contains(&k) {
            return false;
        }
        let n = next.get_or_insert_with(|| self.clone_delta());
        if n.base.has(&k) {
            n.removed.remove(&k);
        } else {
            n.added.insert(k);
        }
        true
    }

    fn clone_delta(&self) -> Self {
        Layer {
            base: Arc::clone(&self.base),
            added: self.added.clone(),
            removed: self.removed.clone(),
        }
    }

    /// A new base holding exactly this layer's keys.
    fn merged(&self) -> B {
        let mut keys = self.base.keys();
        keys.retain(|k| !self.removed.contains(k));
        keys.extend(self.added.iter().cloned());
        B::build(keys)
    }

    /// `self` (the current layer) expressed over `merged`, which was built
    /// from `from`. Only keys in either delta can differ between them.
    fn rebased(&self, from: &Self, merged: Arc<B>) -> Self {
        let mut next = Layer {
            base: merged,
            added: FxHashSet::default(),
            removed: FxHashSet::default(),
        };
        let candidates = self.added.iter().chain(&self.removed);
        for k in candidates.chain(&from.added).chain(&from.removed) {
            match (self.contains(k), next.base.has(k)) {
                (true, false) => next.added.insert(k.clone()),
                (false, true) => next.removed.insert(k.clone()),
                _ => false,
            };
        }
        next
    }

    fn heap_bytes(&self) -> usize {
        let per = std::mem::size_of::<B::Key>() + 8;
        self.base.heap_bytes() + (self.added.capacity() + self.removed.capacity()) * per
    }
}

impl ExceptionSet {
    /// An empty set with the default merge threshold.
    pub fn new() -> Self {
        Self::with_merge_threshold(DEFAULT_MERGE_THRESHOLD)
    }

    /// An empty set whose deltas are merged at `threshold` entries.
    pub fn with_merge_threshold(threshold: usize) -> Self {
        ExceptionSet {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(Snapshot::empty()),
                write: Mutex::new(()),
                merging: AtomicBool::new(false),
                threshold: threshold.max(1),
                held: AtomicUsize::new(0),
            }),
        }
    }

    /// Hot path: is this E.164 number an exact block entry? Lock-free, no
    /// allocation.
    #[inline]
    pub fn contains_phone(&self, e164: u64) -> bool {
        self.inner.current.load().phones.contains(&e164)
    }

    /// Starts loading the cache line a lookup of `e164` reads, so that a
    /// [`match_phone`](Self::match_phone) issued later (after other work on
    /// the same message) finds it in cache. A hint: never blocks, reads
    /// nothing, costs a few instructions; only the exact table (a prefix
    /// lookup's line depends on its upper levels).
    #[inline]
    pub fn prefetch(&self, e164: u64) {
        self.inner.current.load().phones.base.prefetch(e164);
    }

    /// Hot path: the entry deciding this number: an exact block entry,
    /// else the longest rule covering it (an exact allow is the longest).
    /// Lock-free, no allocation; with no rules loaded, one probe as
    /// [`contains_phone`](Self::contains_phone).
    #[inline]
    pub fn match_phone(&self, e164: u64) -> Option<PhoneMatch> {
        let s = self.inner.current.load();
        if s.phones.contains(&e164) {
            return Some(PhoneMatch::Listed);
        }
        let p = &s.prefixes;
        if p.base.is_empty() && p.added.is_empty() {
            return None;
        }
        p.longest(e164).map(PhoneMatch::Rule)
    }

    /// Is this e-mail address listed as an exact entry (case-insensitive)?
    pub fn contains_email(&self, email: &str) -> bool {
        self.inner.current.load().emails.contains(&email_key(email))
    }

    /// The entry deciding the address `email`: the address itself, else its
    /// domain (`@d`), else the nearest parent with a subdomain entry
    /// (`@*.parent`). Only `@*.` entries match subdomains.
    pub fn match_email(&self, email: &str) -> Option<EmailMatch> {
        let s = self.inner.current.load();
        let key = email_key(email);
        let (_, domain) = key.rsplit_once('@')?;
        let mut probe = String::with_capacity(key.len() + 3);
        let mut find = |entry: &str| -> Option<EmailMatch> {
            for allow in [false, true] {
                probe.clear();
                if allow {
                    probe.push('!');
                }
                probe.push_str(entry);
                if s.emails.contains(&Box::from(probe.as_str())) {
                    return Some(EmailMatch {
                        entry: entry.to_string(),
                        allow,
                    });
                }
            }
            None
        };
        if let Some(m) = find(&key) {
            return Some(m);
        }
        if let Some(m) = find(&format!("@{domain}")) {
            return Some(m);
        }
        let mut rest = domain;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(m) = find(&format!("@*.{parent}")) {
                return Some(m);
            }
            rest = parent;
        }
        None
    }

    /// Replaces everything with exact block phones and e-mails.
    pub fn replace_all(&self, phones: Vec<u64>, emails: Vec<String>) {
        self.replace_parts(
            phones,
            Vec::new(),
            emails.iter().map(|e| email_key(e)).collect(),
        );
    }

    /// Replaces everything (start, reload).
    pub fn replace_items(&self, items: Vec<Item>) {
        let (mut phones, mut rules, mut emails) = (Vec::new(), Vec::new(), Vec::new());
        for i in items {
            match i {
                Item::Phone(n) => phones.push(n),
                Item::Rule(r) => rules.push(r),
                Item::Email(e) => emails.push(e.into_boxed_str()),
            }
        }
        self.replace_parts(phones, rules, emails);
    }

    fn replace_parts(&self, phones: Vec<u64>, rules: Vec<Rule>, emails: Vec<Box<str>>) {
        let _w = self.inner.lock();
        self.inner.current.store(Arc::new(Snapshot {
            phones: Arc::new(Layer::new(PhoneTable::build(phones))),
            prefixes: Arc::new(Layer::new(PrefixTable::build(rules))),
            emails: Arc::new(Layer::new(EmailTable::build(emails))),
        }));
    }

    pub fn insert_phone(&self, e164: u64) {
        if e164 != 0 {
            self.insert_items(&[Item::Phone(e164)]);
        }
    }

    /// Publishes a batch (an import, a CRM record's numbers) with one
    /// delta copy per kind instead of one per entry.
    pub fn insert_many(&self, phones: &[u64], emails: &[String]) {
        let items: Vec<Item> = phones
            .iter()
            .filter(|&&k| k != 0)
            .map(|&k| Item::Phone(k))
            .chain(emails.iter().map(|e| Item::email(e, false)))
            .collect();
        self.insert_items(&items);
    }

    /// Publishes a batch in order; an entry replaces one of the other
    /// action at its place (a later entry for the same value wins).
    pub fn insert_items(&self, items: &[Item]) {
        if items.is_empty() {
            return;
        }
        self.write(|cur, d| {
            for i in items {
                match i {
                    Item::Phone(n) => {
                        if let Some(r) = Rule::exact(*n, true) {
                            cur.prefixes.draft_remove(&mut d.prefixes, &r);
                        }
                        cur.phones.draft_insert(&mut d.phones, *n);
                    }
                    Item::Rule(r) => {
                        cur.prefixes.draft_remove(&mut d.prefixes, &r.flipped());
                        if r.is_exact() && r.allow() {
                            cur.phones.draft_remove(&mut d.phones, &r.digits());
                        }
                        cur.prefixes.draft_insert(&mut d.prefixes, *r);
                    }
                    Item::Email(k) => {
                        let flipped = match k.strip_prefix('!') {
                            Some(plain) => plain.to_string(),
                            None => format!("!{k}"),
                        };
                        cur.emails
                            .draft_remove(&mut d.emails, &flipped.into_boxed_str());
                        cur.emails
                            .draft_insert(&mut d.emails, k.clone().into_boxed_str());
                    }
                }
            }
        });
    }

    /// Removes one entry; whether it was present.
    pub fn remove_item(&self, item: &Item) -> bool {
        let mut gone = false;
        self.write(|cur, d| {
            gone = match item {
                Item::Phone(n) => cur.phones.draft_remove(&mut d.phones, n),
                Item::Rule(r) => cur.prefixes.draft_remove(&mut d.prefixes, r),
                Item::Email(k) => cur
                    .emails
                    .draft_remove(&mut d.emails, &k.clone().into_boxed_str()),
            }
        });
        gone
    }

    /// Removes a phone; whether it was listed.
    pub fn remove_phone(&self, e164: u64) -> bool {
        self.remove_item(&Item::Phone(e164))
    }

    pub fn insert_email(&self, email: &str) {
        self.insert_items(&[Item::email(email, false)]);
    }

    /// Removes an e-mail (case-insensitive); whether it was listed.
    pub fn remove_email(&self, email: &str) -> bool {
        self.remove_item(&Item::email(email, false))
    }

    /// Number of listed (phones, e-mails): exact phones and phone rules
    /// together.
    pub fn counts(&self) -> (usize, usize) {
        let s = self.inner.current.load();
        (s.phones.len() + s.prefixes.len(), s.emails.len())
    }

    /// Number of phone rules (prefixes and exact allow entries).
    pub fn rule_count(&self) -> usize {
        self.inner.current.load().prefixes.len()
    }

    /// Approximate heap bytes held by the current snapshot.
    pub fn heap_bytes(&self) -> usize {
        let s = self.inner.current.load();
        s.phones.heap_bytes() + s.prefixes.heap_bytes() + s.emails.heap_bytes()
    }

    /// Heap bytes of the phone base table alone (the 10M-entry figure).
    pub fn phone_table_bytes(&self) -> usize {
        self.inner.current.load().phones.base.heap_bytes()
    }

    /// Bytes of the prefix base table a lookup searches (its leaves and
    /// levels; the benches' pointer chase runs over a buffer this size).
    pub fn prefix_table_bytes(&self) -> usize {
        self.inner.current.load().prefixes.base.search_bytes()
    }

    /// Until the returned guard drops, writes publish as before (each
    /// visible whole at once) but start no background merge below
    /// [`HELD_MERGE_MAX`]; the drop starts one if a delta is over the
    /// threshold. An import of many batches then rebuilds the base once at
    /// its end instead of after every batch.
    pub fn hold_merges(&self) -> MergeHold<'_> {
        self.inner.held.fetch_add(1, Ordering::AcqRel);
        MergeHold { set: self }
    }

    /// Merges every delta now, in this thread (tests, benches).
    pub fn flush(&self) {
        let _w = self.inner.lock();
        let cur = self.inner.current.load_full();
        self.inner.current.store(Arc::new(Snapshot {
            phones: Arc::new(Layer::new(cur.phones.merged())),
            prefixes: Arc::new(Layer::new(cur.prefixes.merged())),
            emails: Arc::new(Layer::new(cur.emails.merged())),
        }));
    }

    /// Entries in the deltas not yet merged (phones and rules, e-mails).
    pub fn delta_lens(&self) -> (usize, usize) {
        let s = self.inner.current.load();
        (
            s.phones.delta_len() + s.prefixes.delta_len(),
            s.emails.delta_len(),
        )
    }

    /// Runs `f` on the current snapshot and a draft of changed layers
    /// under the writer lock, publishes the draft if anything changed,
    /// and starts a merge when a delta has grown past the threshold.
    fn write(&self, f: impl FnOnce(&Snapshot, &mut Draft)) -> bool {
        let w = self.inner.lock();
        let cur = self.inner.current.load_full();
        let mut d = Draft::default();
        f(&cur, &mut d);
        if d.phones.is_none() && d.prefixes.is_none() && d.emails.is_none() {
            return false;
        }
        fn pick<B: Base>(n: Option<Layer<B>>, old: &Arc<Layer<B>>) -> Arc<Layer<B>> {
            n.map_or_else(|| Arc::clone(old), Arc::new)
        }
        let next = Snapshot {
            phones: pick(d.phones, &cur.phones),
            prefixes: pick(d.prefixes, &cur.prefixes),
            emails: pick(d.emails, &cur.emails),
        };
        let big = next.over_threshold(self.inner.merge_at());
        self.inner.current.store(Arc::new(next));
        drop(w);
        if big {
            self.start_merge();
        }
        true
    }

    /// Starts the background merge unless one is running.
    fn start_merge(&self) {
        if self.inner.merging.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("exceptions-merge".into())
            .spawn(move || inner.merge_loop());
        if spawned.is_err() {
            self.inner.merge_loop();
        }
    }
}

/// The layers a write changed (each a copy of the current one's delta).
#[derive(Default)]
struct Draft {
    phones: Option<Layer<PhoneTable>>,
    prefixes: Option<Layer<PrefixTable>>,
    emails: Option<Layer<EmailTable>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panicked writer left nothing half-done.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The delta size that starts a merge now (larger while held).
    fn merge_at(&self) -> usize {
        if self.held.load(Ordering::Acquire) > 0 {
            self.threshold.max(HELD_MERGE_MAX)
        } else {
            self.threshold
        }
    }

    /// Merges whichever delta is over the threshold until none is.
    fn merge_loop(&self) {
        fn over<B: Base>(l: &Layer<B>, t: usize) -> Option<Arc<B>> {
            (l.delta_len() >= t).then(|| Arc::new(l.merged()))
        }
        fn rebase<B: Base>(
            cur: &Arc<Layer<B>>,
            from: &Layer<B>,
            m: Option<Arc<B>>,
        ) -> Arc<Layer<B>> {
            match m {
                Some(m) if Arc::ptr_eq(&cur.base, &from.base) => Arc::new(cur.rebased(from, m)),
                _ => Arc::clone(cur),
            }
        }
        loop {
            let from = self.current.load_full();
            let at = self.merge_at();
            let phones = over(&from.phones, at);
            let prefixes = over(&from.prefixes, at);
            let emails = over(&from.emails, at);
            if phones.is_none() && prefixes.is_none() && emails.is_none() {
                break;
            }
            let _w = self.lock();
            let cur = self.current.load_full();
            self.current.store(Arc::new(Snapshot {
                phones: rebase(&cur.phones, &from.phones, phones),
                prefixes: rebase(&cur.prefixes, &from.prefixes, prefixes),
                emails: rebase(&cur.emails, &from.emails, emails),
            }));
        }
        self.merging.store(false, Ordering::Release);
        // A write between the last check and the flag reset may have found
        // the flag set and not started a merge: check once more.
        let s = self.current.load();
        if s.over_threshold(self.merge_at()) && !self.merging.swap(true, Ordering::AcqRel) {
            drop(s);
            self.merge_loop();
        }
    }
}

impl Default for ExceptionSet {
    fn default() -> Self {
        Self::new()
    }
}

fn email_key(email: &str) -> Box<str> {
    email.trim().to_lowercase().into_boxed_str()
}

/// Open-addressing table of E.164 numbers in cache-line buckets; see the
/// module doc.
pub struct PhoneTable {
    /// Keys in place, 8 per 64-byte bucket; 0 = empty. Within a bucket the
    /// keys come first (the base is never deleted from); a full bucket some
    /// key went past has [`PASSED`] in its last slot.
    buckets: HugeBuf<Bucket>,
    /// Number of keys.
    len: usize,
    /// Keys with the top bit set (no E.164 number; a corrupt store could
    /// hold one): kept aside, the bit marks passed buckets.
    big: Box<[u64]>,
}

/// In a bucket's last slot: a key was placed past this bucket.
const PASSED: u64 = 1 << 63;

/// One cache line of keys.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket([u64; 8]);

/// 2⁶⁴ / φ: Fibonacci hashing.
const FIB: u64 = 0x9E37_79B9_7F4A_7C15;

/// Load factor of a built table: 0.60. At 0.70 (~11.4 bytes per entry)
/// a miss read 1.27 lines on average (the runs of full buckets are long);
/// at 0.60 a hit reads 1.03 lines and a miss 1.09, for 13.3 bytes per
/// entry.
const LOAD: f64 = 0.60;

impl PhoneTable {
    #[inline]
    fn bucket(&self, k: u64) -> usize {
        let h = k.wrapping_mul(FIB);
        ((u128::from(h) * self.buckets.len() as u128) >> 64) as usize
    }

    /// Starts loading the line a lookup of `k` reads first.
    #[inline]
    fn prefetch(&self, k: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let line = self.buckets[self.bucket(k)].0.as_ptr();
            // SAFETY: a prefetch is a hint: it reads nothing into the
            // program and the address lies inside the table.
            unsafe {
                std::arch::x86_64::_mm_prefetch(line.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0)
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = k;
    }

    /// `n` zeroed buckets in memory backed by huge pages (see [`HugeBuf`]),
    /// so that a lookup in a 100 MB table costs one cache miss and no page
    /// walk.
    fn zeroed(n: usize) -> HugeBuf<Bucket> {
        HugeBuf::filled(n, Bucket::default())
    }
}

/// Huge page size (x86-64, aarch64 with 4 KB pages).
const HUGE_PAGE: usize = 2 << 20;

/// A fixed-length array for the lookup tables (and the benches' floor):
/// of 4 MB or more, on Linux it is fresh memory of its own mapping
/// (`mmap`), aligned to a huge page and advised `MADV_HUGEPAGE` before its
/// first touch, so every 2 MB of it can be one transparent huge page. A
/// `Vec` of that size starts at a 4 KB boundary (a huge page lost at each
/// end), and once glibc has raised its mmap threshold (it does so on
/// freeing big blocks, up to 32 MB) it comes from heap memory touched
/// before, which the kernel has already backed with small pages.
pub struct HugeBuf<T: Copy> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    /// Bytes mapped at `ptr` (0: from the global allocator, or nothing).
    mapped: usize,
    layout: std::alloc::Layout,
}

// SAFETY: `HugeBuf` owns its elements as a `Box<[T]>` would.
unsafe impl<T: Copy + Send> Send for HugeBuf<T> {}
// SAFETY: shared access hands out only `&[T]`.
unsafe impl<T: Copy + Sync> Sync for HugeBuf<T> {}

impl<T: Copy> HugeBuf<T> {
    /// `len` copies of `fill`.
    pub fn filled(len: usize, fill: T) -> HugeBuf<T> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("table size");
        let layout = std::alloc::Layout::from_size_align(bytes, std::mem::align_of::<T>().max(64))
            .expect("table layout");
        let (raw, mapped) = match map_huge(bytes) {
            Some((raw, mapped)) => (raw.cast::<T>(), mapped),
            None if bytes == 0 => (std::ptr::NonNull::dangling().as_ptr(), 0),
            // SAFETY: `layout` has a non-zero size.
            None => (unsafe { std::alloc::alloc(layout) }.cast::<T>(), 0),
        };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        for i in 0..len {
            // SAFETY: `i < len` lies inside the allocation, aligned for `T`.
            unsafe { ptr.as_ptr().add(i).write(fill) };
        }
        HugeBuf {
            ptr,
            len,
            mapped,
            layout,
        }
    }
}

/// A fresh anonymous mapping of at least `bytes` (4 MB or more), starting
/// at a 2 MB boundary and advised `MADV_HUGEPAGE`: its start and length.
/// `None` below 4 MB, off Linux, or when the kernel refuses.
fn map_huge(bytes: usize) -> Option<(*mut u8, usize)> {
    #[cfg(target_os = "linux")]
    if bytes >= 4 << 20 {
        let len = bytes.next_multiple_of(HUGE_PAGE);
        let over = len + HUGE_PAGE;
        // SAFETY: a new private anonymous mapping; no existing memory is
        // touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                over,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let start = p as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        // SAFETY: the head and tail unmapped lie inside the mapping made
        // above and nothing refers to them; the advice changes no contents.
        unsafe {
            if aligned > start {
                libc::munmap(p, aligned - start);
            }
            let tail = start + over - (aligned + len);
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        return Some((aligned as *mut u8, len));
    }
    let _ = bytes;
    None
}

impl<T: Copy> std::ops::Deref for HugeBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialised elements at `ptr` (dangling only for 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for HugeBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as `deref`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for HugeBuf<T> {
    fn drop(&mut self) {
        let p = self.ptr.as_ptr();
        #[cfg(target_os = "linux")]
        if self.mapped != 0 {
            // SAFETY: mapped in `map_huge` with this length; `T: Copy` has
            // no destructor to run.
            unsafe { libc::munmap(p.cast(), self.mapped) };
            return;
        }
        if self.layout.size() != 0 {
            // SAFETY: allocated in `filled` with this layout; `T: Copy`
            // has no destructor to run.
            unsafe { std::alloc::dealloc(p.cast(), self.layout) };
        }
    }
}

impl Base for PhoneTable {
    type Key = u64;

    #[inline]
    fn has(&self, &k: &u64) -> bool {
        if k == 0 || k & PASSED != 0 {
            return k != 0 && self.big.contains(&k);
        }
        let n = self.buckets.len();
        let mut b = self.bucket(k);
        loop {
            let line = &self.buckets[b].0;
            // Branch-free over the line: the compiler turns it into SIMD.
            let mut found = false;
            for &s in line {
                found |= s & !PASSED == k;
            }
            if found {
                return true;
            }
            // No key went past this bucket: none of its home is further on.
            if line[7] & PASSED == 0 {
                return false;
            }
            b += 1;
            if b == n {
                b = 0;
            }
        }
    }

    fn build(keys: Vec<u64>) -> Self {
        // At least one empty slot overall, so every probe ends.
        let n = ((keys.len() as f64 / (8.0 * LOAD)).ceil() as usize + 1).max(1);
        let mut t = PhoneTable {
            buckets: Self::zeroed(n),
            len: 0,
            big: Box::new([]),
        };
        let mut big = Vec::new();
        for k in keys {
            if k == 0 {
                continue;
            }
            if k & PASSED != 0 {
                if !big.contains(&k) {
                    big.push(k);
                    t.len += 1;
                }
                continue;
            }
            let mut b = t.bucket(k);
            'probe: loop {
                for s in t.buckets[b].0.iter_mut() {
                    if *s & !PASSED == k {
                        break 'probe;
                    }
                    if *s == 0 {
                        *s = k;
                        t.len += 1;
                        break 'probe;
                    }
                }
                // Full: `k` goes past this bucket, so lookups must too.
                t.buckets[b].0[7] |= PASSED;
                b += 1;
                if b == n {
                    b = 0;
                }
            }
        }
        t.big = big.into_boxed_slice();
        t
    }

    fn keys(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.len);
        for b in self.buckets.iter() {
            out.extend(b.0.iter().map(|&k| k & !PASSED).filter(|&k| k != 0));
        }
        out.extend_from_slice(&self.big);
        out
    }

    fn len(&self) -> usize {
        self.len
    }

    fn heap_bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<Bucket>() + self.big.len() * 8
    }
}

impl Base for PrefixTable {
    type Key = Rule;

    fn has(&self, r: &Rule) -> bool {
        self.contains(*r)
    }

    fn build(keys: Vec<Rule>) -> Self {
        PrefixTable::build(keys)
    }

    fn keys(&self) -> Vec<Rule> {
        self.rules().to_vec()
    }

    fn len(&self) -> usize {
        PrefixTable::len(self)
    }

    fn heap_bytes(&self) -> usize {
        PrefixTable::heap_bytes(self)
    }
}

impl Layer<PrefixTable> {
    /// The longest rule covering `n`, the delta included.
    #[inline]
    fn longest(&self, n: u64) -> Option<Rule> {
        let found = self.base.longest(n);
        if self.added.is_empty() && self.removed.is_empty() {
            return found;
        }
        self.longest_with_delta(n, found)
    }

    /// Walks the places a rule for `n` can be, longest first (the exact
    /// one, then prefixes of `len..=1` digits): an added rule there wins;
    /// the base's innermost rule `found` wins where it stands unless it
    /// was removed, and then the base's next outer ones are looked up.
    #[cold]
    fn longest_with_delta(&self, n: u64, found: Option<Rule>) -> Option<Rule> {
        let len = crate::screening::prefixes::digit_count(n);
        if len > crate::screening::prefixes::MAX_DIGITS {
            return None;
        }
        let mut base_hit = found;
        let mut below_removed = false;
        let places = std::iter::once((n, len, true))
            .chain((1..=len).rev().map(|l| (n / 10u64.pow(len - l), l, false)));
        for (digits, l, exact) in places {
            for allow in [false, true] {
                let r = if exact {
                    Rule::exact(digits, allow)
                } else {
                    Rule::prefix(digits, l, allow)
                };
                let Some(r) = r else { continue };
                if self.added.contains(&r) {
                    return Some(r);
                }
                if let Some(b) = base_hit
                    && b == r
                {
                    if !self.removed.contains(&b) {
                        return Some(b);
                    }
                    base_hit = None;
                    below_removed = true;
                } else if below_removed && self.base.has(&r) && !self.removed.contains(&r) {
                    return Some(r);
                }
            }
        }
        None
    }
}

/// Lowercased e-mails.
struct EmailTable(FxHashSet<Box<str>>);

impl Base for EmailTable {
    type Key = Box<str>;

    fn has(&self, k: &Box<str>) -> bool {
        self.0.contains(k)
    }

    fn build(keys: Vec<Box<str>>) -> Self {
        EmailTable(keys.into_iter().collect())
    }

    fn keys(&self) -> Vec<Box<str>> {
        self.0.iter().cloned().collect()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn heap_bytes(&self) -> usize {
        self.0.capacity() * (std::mem::size_of::<Box<str>>() + 1)
            + self.0.iter().map(|e| e.len()).sum::<usize>()
    }
}

#[cfg(test)]
#[path = "exceptions_tests.rs"]
mod tests;
