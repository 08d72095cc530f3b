//! Prefix rules (`+4930901*`, block or allow) and exact allow entries, and
//! the static table screening asks for the longest rule covering a number.
//!
//! # The key space
//!
//! A digit string `S` of length `L ≤ 15` is the key `pad(S) << 4 | L`,
//! where `pad(S)` is `S` padded on the right with zeros to 15 digits. The
//! order of keys is the lexicographic order of digit strings ("49" < "490"
//! < "4900" < "4901"), so the numbers a prefix `P` (length `l`) covers
//! are one interval: from `key(P)` to `pad9(P) << 4 | 15` (P followed by
//! nines). An exact entry `N` is the one-point interval `[key(N), key(N)]`.
//! Intervals of prefixes and points are nested or apart (a laminar
//! family), so the longest rule covering a number is the innermost
//! interval around its key.
//!
//! # The table
//!
//! Built once per base (like the phone table), the intervals are flattened
//! into elementary segments: a sorted array of boundary keys, each with
//! the rule in force from there to the next boundary (0: none). A lookup
//! is one predecessor search, done in a static B+-tree: leaves of eight
//! keys and their eight labels (128 bytes, two adjacent cache lines), and
//! above them levels of nodes of eight separator keys (one cache line,
//! nine children) addressed by arithmetic, no pointers. With 1M prefixes
//! (~2M boundaries) the leaves are 32 MB and the levels above them ~4 MB;
//! a lookup reads ~7 cache lines, of which only the leaf (and the lowest
//! internal level) are usually not in cache. `benches/lookup.rs` measures
//! it against a pointer chase over a buffer of the table's size.

/// Longest E.164 number, in digits.
pub const MAX_DIGITS: u32 = 15;

const POW10: [u64; 20] = {
    let mut t = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// Number of decimal digits of `n` (`0` has one).
#[inline]
pub fn digit_count(n: u64) -> u32 {
    let mut d = 1;
    while d < 20 && n >= POW10[d as usize] {
        d += 1;
    }
    d
}

const LEN_BITS: u32 = 4;
const START_MASK: u64 = (1 << 54) - 1;
const EXACT: u64 = 1 << 62;
const ALLOW: u64 = 1 << 63;

/// One rule, packed in a `u64`: its start key (bits 0..54), exact (bit 62),
/// allow (bit 63). Never 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule(u64);

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = Vec::new();
        self.write_value(&mut s);
        f.write_str(&String::from_utf8_lossy(&s))?;
        if self.allow() {
            f.write_str(" (allow)")?;
        }
        Ok(())
    }
}

/// The key of a digit string of `len` digits.
#[inline]
fn key(digits: u64, len: u32) -> u64 {
    (digits * POW10[(MAX_DIGITS - len) as usize]) << LEN_BITS | u64::from(len)
}

/// The key of an E.164 number; `None` beyond 15 digits.
#[inline]
pub fn point(n: u64) -> Option<u64> {
    let len = digit_count(n);
    (n != 0 && len <= MAX_DIGITS).then(|| key(n, len))
}

impl Rule {
    /// Every number starting with the `len` digits `digits` (1..=15 digits,
    /// the first not 0).
    pub fn prefix(digits: u64, len: u32, allow: bool) -> Option<Rule> {
        let ok = (1..=MAX_DIGITS).contains(&len) && digit_count(digits) == len && digits != 0;
        ok.then(|| Rule(key(digits, len) | if allow { ALLOW } else { 0 }))
    }

    /// Exactly the number `n` (an allow entry: exact blocks live in the
    /// phone table).
    pub fn exact(n: u64, allow: bool) -> Option<Rule> {
        let len = digit_count(n);
        Rule::prefix(n, len, allow).map(|r| Rule(r.0 | EXACT))
    }

    /// The same position with the other action.
    pub fn flipped(self) -> Rule {
        Rule(self.0 ^ ALLOW)
    }

    pub fn allow(self) -> bool {
        self.0 & ALLOW != 0
    }

    pub fn is_exact(self) -> bool {
        self.0 & EXACT != 0
    }

    /// Number of digits.
    pub fn len(self) -> u32 {
        (self.0 & ((1 << LEN_BITS) - 1)) as u32
    }

    /// Never empty (a rule has at least one digit).
    pub fn is_empty(self) -> bool {
        false
    }

    /// The digits (`4930901` for `+4930901*`).
    pub fn digits(self) -> u64 {
        ((self.0 & START_MASK) >> LEN_BITS) / POW10[(MAX_DIGITS - self.len()) as usize]
    }

    fn start(self) -> u64 {
        self.0 & START_MASK
    }

    /// Last key the rule covers.
    fn end(self) -> u64 {
        if self.is_exact() {
            return self.start();
        }
        let fill = POW10[(MAX_DIGITS - self.len()) as usize] - 1;
        (((self.start() >> LEN_BITS) + fill) << LEN_BITS) | u64::from(MAX_DIGITS)
    }

    /// Whether the rule covers the number with key `x`.
    fn covers(self, x: u64) -> bool {
        self.start() <= x && x <= self.end()
    }

    /// Writes `+4930901` (the digits with a plus; no `*`, no `!`).
    pub fn write_digits(self, out: &mut Vec<u8>) {
        crate::screening::normalize::write_e164(self.digits(), out);
    }

    /// The stored value: `+4930901*` for a prefix, `+4930901820` exact.
    pub fn write_value(self, out: &mut Vec<u8>) {
        self.write_digits(out);
        if !self.is_exact() {
            out.push(b'*');
        }
    }

    /// The stored value as a string.
    pub fn value(self) -> String {
        let mut v = Vec::with_capacity(18);
        self.write_value(&mut v);
        String::from_utf8(v).expect("digits")
    }

    /// Reads a stored value (`+4930901*`, or `+4930901820` exact).
    pub fn parse_value(s: &str, allow: bool) -> Option<Rule> {
        match s.strip_suffix('*') {
            Some(p) => {
                let digits = p.strip_prefix('+')?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Rule::prefix(digits.parse().ok()?, digits.len() as u32, allow)
            }
            None => Rule::exact(crate::screening::normalize::parse_e164(s)?, allow),
        }
    }
}

/// The minimal set of prefixes covering the numbers `lo..=hi` (same digit
/// count, `lo ≤ hi`), in order.
pub fn range_cover(lo: u64, hi: u64) -> Vec<(u64, u32)> {
    let len = digit_count(lo);
    let mut out = Vec::new();
    let mut a = lo;
    loop {
        // The largest aligned block starting at `a` that stays within `hi`.
        let mut k = 0u32;
        while k < len - 1 {
            let size = POW10[(k + 1) as usize];
            if !a.is_multiple_of(size) || a + (size - 1) > hi {
                break;
            }
            k += 1;
        }
        out.push((a / POW10[k as usize], len - k));
        let next = a + POW10[k as usize];
        if next > hi || next < a {
            break;
        }
        a = next;
    }
    out
}

/// Leaf of the B+-tree: boundary keys and the rule from each on.
#[derive(Clone, Copy)]
#[repr(C, align(128))]
struct Leaf {
    keys: [u64; 8],
    labels: [u64; 8],
}

/// Internal node: the first keys of children 1..=8 (child 0 needs none).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Node([u64; 8]);

/// Children per internal node.
const FANOUT: usize = 9;

/// The static longest-rule table; see the module doc.
pub struct PrefixTable {
    /// Internal levels, the root first.
    levels: Vec<Box<[Node]>>,
    leaves: Box<[Leaf]>,
    /// The rules, sorted (membership, rebuilding).
    rules: Box<[Rule]>,
}

impl PrefixTable {
    /// Builds the table; of rules at one position (same digits, both
    /// exact or both prefix) the last given wins.
    pub fn build(mut rules: Vec<Rule>) -> PrefixTable {
        // One rule per position: keep the last of each.
        let pos = |r: &Rule| r.0 & !ALLOW;
        let mut seen = rustc_hash::FxHashMap::default();
        for (i, r) in rules.iter().enumerate() {
            seen.insert(pos(r), i);
        }
        let mut i = 0;
        rules.retain(|r| {
            let keep = seen.get(&pos(r)) == Some(&i);
            i += 1;
            keep
        });
        rules.sort_unstable();
        let bounds = segments(&rules);
        let leaves = leaves_of(&bounds);
        let mut levels = Vec::new();
        let mut firsts: Vec<u64> = leaves.iter().map(|l| l.keys[0]).collect();
        while firsts.len() > 1 {
            let n = firsts.len().div_ceil(FANOUT);
            let mut level = Vec::with_capacity(n);
            let mut up = Vec::with_capacity(n);
            for k in 0..n {
                let mut node = Node([u64::MAX; 8]);
                for (s, slot) in node.0.iter_mut().enumerate() {
                    if let Some(&f) = firsts.get(k * FANOUT + s + 1) {
                        *slot = f;
                    }
                }
                level.push(node);
                up.push(firsts[k * FANOUT]);
            }
            levels.push(level.into_boxed_slice());
            firsts = up;
        }
        levels.reverse();
        PrefixTable {
            levels,
            leaves,
            rules: rules.into_boxed_slice(),
        }
    }

    /// The innermost rule covering key `x`.
    #[inline]
    pub fn longest_at(&self, x: u64) -> Option<Rule> {
        if self.rules.is_empty() {
            return None;
        }
        let mut i = 0usize;
        for level in &self.levels {
            let node = &level[i];
            let c = node.0.iter().filter(|&&k| k <= x).count();
            i = i * FANOUT + c;
        }
        let leaf = &self.leaves[i];
        let j = leaf.keys.iter().filter(|&&k| k <= x).count();
        // Every leaf starts at or below the keys routed to it.
        let label = leaf.labels[j.max(1) - 1];
        (label != 0).then_some(Rule(label))
    }

    /// The innermost rule covering the number `n`.
    #[inline]
    pub fn longest(&self, n: u64) -> Option<Rule> {
        self.longest_at(point(n)?)
    }

    pub fn contains(&self, r: Rule) -> bool {
        self.rules.binary_search(&r).is_ok()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        self.search_bytes() + self.rules.len() * 8
    }

    /// Bytes a lookup searches: the leaves and the levels above them.
    pub fn search_bytes(&self) -> usize {
        self.leaves.len() * std::mem::size_of::<Leaf>()
            + self
                .levels
                .iter()
                .map(|l| l.len() * std::mem::size_of::<Node>())
                .sum::<usize>()
    }
}

/// Elementary segments of sorted rules: (boundary key, rule in force).
fn segments(rules: &[Rule]) -> Vec<(u64, u64)> {
    let mut order: Vec<Rule> = rules.to_vec();
    // Outer intervals first at one start: by start, then end descending.
    order.sort_unstable_by_key(|r| (r.start(), std::cmp::Reverse(r.end()), r.is_exact()));
    let mut out: Vec<(u64, u64)> = vec![(0, 0)];
    let emit = |k: u64, label: u64, out: &mut Vec<(u64, u64)>| {
        let last = out.last_mut().expect("starts with 0");
        if last.0 == k {
            last.1 = label;
            if out.len() >= 2 && out[out.len() - 2].1 == label {
                out.pop();
            }
        } else if last.1 != label {
            out.push((k, label));
        }
    };
    let mut stack: Vec<Rule> = Vec::new();
    for r in order {
        while let Some(&top) = stack.last() {
            if top.end() >= r.start() {
                break;
            }
            stack.pop();
            let under = stack.last().map_or(0, |t| t.0);
            emit(top.end() + 1, under, &mut out);
        }
        stack.push(r);
        emit(r.start(), r.0, &mut out);
    }
    while let Some(top) = stack.pop() {
        let under = stack.last().map_or(0, |t| t.0);
        emit(top.end() + 1, under, &mut out);
    }
    out
}

fn leaves_of(bounds: &[(u64, u64)]) -> Box<[Leaf]> {
    let n = bounds.len().div_ceil(8).max(1);
    let mut v: Vec<Leaf> = Vec::with_capacity(n);
    crate::screening::exceptions::advise_huge_pages(v.as_mut_ptr() as usize, n * 128);
    for chunk in bounds.chunks(8) {
        let mut leaf = Leaf {
            keys: [u64::MAX; 8],
            labels: [0; 8],
        };
        for (s, &(k, l)) in chunk.iter().enumerate() {
            leaf.keys[s] = k;
            leaf.labels[s] = l;
        }
        v.push(leaf);
    }
    if v.is_empty() {
        v.push(Leaf {
            keys: [u64::MAX; 8],
            labels: [0; 8],
        });
    }
    v.into_boxed_slice()
}

/// The longest rule covering `n` by brute force (tests).
#[cfg(test)]
pub(crate) fn longest_naive(rules: &[Rule], n: u64) -> Option<Rule> {
    let x = point(n)?;
    rules
        .iter()
        .copied()
        .filter(|r| r.covers(x))
        .max_by_key(|r| (r.len(), r.is_exact()))
}

impl Rule {
    /// Whether the rule covers the number `n`.
    pub fn matches(self, n: u64) -> bool {
        point(n).is_some_and(|x| self.covers(x))
    }
}

#[cfg(test)]
#[path = "prefixes_tests.rs"]
mod tests;
