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
//!   linear probing from bucket to bucket, load factor 0.70 with an exact
//!   (not power-of-two) bucket count, bucket = `fastrange(key * φ⁻¹·2⁶⁴)`
//!   (Fibonacci hashing spreads the consecutive number blocks carriers
//!   hand out). That is ~11.4 bytes per entry; a hit or a miss reads one
//!   cache line (a miss ends at the first empty slot of the line, so the
//!   long probe runs of plain linear probing at this load are gone). On
//!   Linux the table is backed by transparent huge pages (`MADV_HUGEPAGE`),
//!   so a lookup in a 10M table does not also pay a page walk.
//!   On top of the base sits a small delta: `added` (not in the base) and
//!   `removed` (in the base); a lookup checks the delta only when it is not
//!   empty. A single insert or remove copies only the delta, never the base.
//! - **E-mails** use the same layering with a hash set of `Box<str>` base.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use rustc_hash::FxHashSet;

/// Delta size (per kind) that triggers a merge into a new base.
pub const DEFAULT_MERGE_THRESHOLD: usize = 4096;

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
}

/// One consistent state of both kinds.
struct Snapshot {
    phones: Arc<Layer<PhoneTable>>,
    emails: Arc<Layer<EmailTable>>,
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

    /// A copy with `k` present; `None` if it already was.
    fn with_inserted(&self, k: B::Key) -> Option<Self> {
        if self.contains(&k) {
            return None;
        }
        let mut next = self.clone_delta();
        if next.base.has(&k) {
            next.removed.remove(&k);
        } else {
            next.added.insert(k);
        }
        Some(next)
    }

    /// A copy with every key of `keys` present; `None` if all already were.
    fn with_all_inserted(&self, keys: impl Iterator<Item = B::Key>) -> Option<Self> {
        let mut next: Option<Self> = None;
        for k in keys {
            let cur = next.as_ref().unwrap_or(self);
            if cur.contains(&k) {
                continue;
            }
            let n = next.get_or_insert_with(|| self.clone_delta());
            if n.base.has(&k) {
                n.removed.remove(&k);
            } else {
                n.added.insert(k);
            }
        }
        next
    }

    /// A copy without `k`; `None` if it was not present.
    fn with_removed(&self, k: &B::Key) -> Option<Self> {
        if !self.contains(k) {
            return None;
        }
        let mut next = self.clone_delta();
        if next.base.has(k) {
            next.removed.insert(k.clone());
        } else {
            next.added.remove(k);
        }
        Some(next)
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
        let snap = Snapshot {
            phones: Arc::new(Layer::new(PhoneTable::build(Vec::new()))),
            emails: Arc::new(Layer::new(EmailTable::build(Vec::new()))),
        };
        ExceptionSet {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(snap),
                write: Mutex::new(()),
                merging: AtomicBool::new(false),
                threshold: threshold.max(1),
            }),
        }
    }

    /// Hot path: is this E.164 number listed? Lock-free, no allocation.
    #[inline]
    pub fn contains_phone(&self, e164: u64) -> bool {
        self.inner.current.load().phones.contains(&e164)
    }

    /// Is this e-mail listed (case-insensitive)?
    pub fn contains_email(&self, email: &str) -> bool {
        self.inner.current.load().emails.contains(&email_key(email))
    }

    /// Replaces everything (start, reload).
    pub fn replace_all(&self, phones: Vec<u64>, emails: Vec<String>) {
        let _w = self.inner.lock();
        let phones = PhoneTable::build(phones);
        let emails = EmailTable::build(emails.iter().map(|e| email_key(e)).collect());
        self.inner.current.store(Arc::new(Snapshot {
            phones: Arc::new(Layer::new(phones)),
            emails: Arc::new(Layer::new(emails)),
        }));
    }

    pub fn insert_phone(&self, e164: u64) {
        if e164 != 0 {
            self.write_phones(|l| l.with_inserted(e164));
        }
    }

    /// Publishes a batch (an import, a CRM record's numbers) with one
    /// delta copy per kind instead of one per entry.
    pub fn insert_many(&self, phones: &[u64], emails: &[String]) {
        if !phones.is_empty() {
            self.write_phones(|l| l.with_all_inserted(phones.iter().copied().filter(|&k| k != 0)));
        }
        if !emails.is_empty() {
            self.write_emails(|l| l.with_all_inserted(emails.iter().map(|e| email_key(e))));
        }
    }

    /// Removes a phone; whether it was listed.
    pub fn remove_phone(&self, e164: u64) -> bool {
        self.write_phones(|l| l.with_removed(&e164))
    }

    pub fn insert_email(&self, email: &str) {
        self.write_emails(|l| l.with_inserted(email_key(email)));
    }

    /// Removes an e-mail (case-insensitive); whether it was listed.
    pub fn remove_email(&self, email: &str) -> bool {
        self.write_emails(|l| l.with_removed(&email_key(email)))
    }

    /// Number of listed (phones, e-mails).
    pub fn counts(&self) -> (usize, usize) {
        let s = self.inner.current.load();
        (s.phones.len(), s.emails.len())
    }

    /// Approximate heap bytes held by the current snapshot.
    pub fn heap_bytes(&self) -> usize {
        let s = self.inner.current.load();
        s.phones.heap_bytes() + s.emails.heap_bytes()
    }

    /// Heap bytes of the phone base table alone (the 10M-entry figure).
    pub fn phone_table_bytes(&self) -> usize {
        self.inner.current.load().phones.base.heap_bytes()
    }

    /// Merges both deltas now, in this thread (tests, benches).
    pub fn flush(&self) {
        let _w = self.inner.lock();
        let cur = self.inner.current.load_full();
        self.inner.current.store(Arc::new(Snapshot {
            phones: Arc::new(Layer::new(cur.phones.merged())),
            emails: Arc::new(Layer::new(cur.emails.merged())),
        }));
    }

    /// Entries in the deltas not yet merged (phones, e-mails).
    pub fn delta_lens(&self) -> (usize, usize) {
        let s = self.inner.current.load();
        (s.phones.delta_len(), s.emails.delta_len())
    }

    fn write_phones(
        &self,
        f: impl FnOnce(&Layer<PhoneTable>) -> Option<Layer<PhoneTable>>,
    ) -> bool {
        let w = self.inner.lock();
        let cur = self.inner.current.load_full();
        let Some(next) = f(&cur.phones) else {
            return false;
        };
        let big = next.delta_len() >= self.inner.threshold;
        self.inner.current.store(Arc::new(Snapshot {
            phones: Arc::new(next),
            emails: Arc::clone(&cur.emails),
        }));
        drop(w);
        if big {
            self.start_merge();
        }
        true
    }

    fn write_emails(
        &self,
        f: impl FnOnce(&Layer<EmailTable>) -> Option<Layer<EmailTable>>,
    ) -> bool {
        let w = self.inner.lock();
        let cur = self.inner.current.load_full();
        let Some(next) = f(&cur.emails) else {
            return false;
        };
        let big = next.delta_len() >= self.inner.threshold;
        self.inner.current.store(Arc::new(Snapshot {
            phones: Arc::clone(&cur.phones),
            emails: Arc::new(next),
        }));
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

impl Inner {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panicked writer left nothing half-done.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Merges whichever delta is over the threshold until none is.
    fn merge_loop(&self) {
        loop {
            let from = self.current.load_full();
            let phones =
                (from.phones.delta_len() >= self.threshold).then(|| Arc::new(from.phones.merged()));
            let emails =
                (from.emails.delta_len() >= self.threshold).then(|| Arc::new(from.emails.merged()));
            if phones.is_none() && emails.is_none() {
                break;
            }
            let _w = self.lock();
            let cur = self.current.load_full();
            let mut next = Snapshot {
                phones: Arc::clone(&cur.phones),
                emails: Arc::clone(&cur.emails),
            };
            if let Some(m) = phones
                && Arc::ptr_eq(&cur.phones.base, &from.phones.base)
            {
                next.phones = Arc::new(cur.phones.rebased(&from.phones, m));
            }
            if let Some(m) = emails
                && Arc::ptr_eq(&cur.emails.base, &from.emails.base)
            {
                next.emails = Arc::new(cur.emails.rebased(&from.emails, m));
            }
            self.current.store(Arc::new(next));
        }
        self.merging.store(false, Ordering::Release);
        // A write between the last check and the flag reset may have found
        // the flag set and not started a merge: check once more.
        let s = self.current.load();
        if (s.phones.delta_len() >= self.threshold || s.emails.delta_len() >= self.threshold)
            && !self.merging.swap(true, Ordering::AcqRel)
        {
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
    /// keys come first (the base is never deleted from), so an empty slot
    /// ends every probe.
    buckets: Box<[Bucket]>,
    /// Number of keys.
    len: usize,
}

/// One cache line of keys.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket([u64; 8]);

/// 2⁶⁴ / φ: Fibonacci hashing.
const FIB: u64 = 0x9E37_79B9_7F4A_7C15;

/// Load factor of a built table, in eighths of a bucket: 0.70.
const LOAD: f64 = 0.70;

impl PhoneTable {
    #[inline]
    fn bucket(&self, k: u64) -> usize {
        let h = k.wrapping_mul(FIB);
        ((u128::from(h) * self.buckets.len() as u128) >> 64) as usize
    }

    /// `n` zeroed buckets; on Linux the memory is asked to be backed by
    /// transparent huge pages before it is first touched, so that a lookup
    /// in a 100 MB table costs one cache miss and no page walk.
    fn zeroed(n: usize) -> Box<[Bucket]> {
        let mut v: Vec<Bucket> = Vec::with_capacity(n);
        #[cfg(target_os = "linux")]
        if n * 64 >= 4 << 20 {
            let start = v.as_mut_ptr() as usize;
            let aligned = (start + 4095) & !4095;
            let len = (start + n * 64).saturating_sub(aligned) & !4095;
            // SAFETY: the range lies inside `v`'s allocation, page aligned;
            // MADV_HUGEPAGE is advice only and changes no contents.
            unsafe {
                libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
            }
        }
        v.resize(n, Bucket::default());
        v.into_boxed_slice()
    }
}

impl Base for PhoneTable {
    type Key = u64;

    #[inline]
    fn has(&self, &k: &u64) -> bool {
        if k == 0 {
            return false;
        }
        let n = self.buckets.len();
        let mut b = self.bucket(k);
        loop {
            // Branch-free over the line: the compiler turns it into SIMD.
            let (mut found, mut empty) = (false, false);
            for &s in &self.buckets[b].0 {
                found |= s == k;
                empty |= s == 0;
            }
            if found {
                return true;
            }
            if empty {
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
        };
        for k in keys {
            if k == 0 {
                continue;
            }
            let mut b = t.bucket(k);
            'probe: loop {
                for s in t.buckets[b].0.iter_mut() {
                    if *s == k {
                        break 'probe;
                    }
                    if *s == 0 {
                        *s = k;
                        t.len += 1;
                        break 'probe;
                    }
                }
                b += 1;
                if b == n {
                    b = 0;
                }
            }
        }
        t
    }

    fn keys(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.len);
        for b in self.buckets.iter() {
            out.extend(b.0.iter().copied().filter(|&k| k != 0));
        }
        out
    }

    fn len(&self) -> usize {
        self.len
    }

    fn heap_bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<Bucket>()
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
