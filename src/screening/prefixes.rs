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
//! is one predecessor search over leaves of eight boundaries (one cache
//! line: each boundary's key and the label of its rule packed in one
//! `u64`, see [`PrefixTable`]).
//!
//! The leaf is found through a direct table over the packed keys' high
//! bits: the key space from the first boundary to the last is cut into
//! equal cells (a power of two of keys each, about one cell per two
//! leaves), and each cell holds the first leaf a key in it can end in and
//! how many leaves start inside it. A lookup reads its cell (the table is
//! 4 bytes a cell, ~2 % of the leaves, mostly in L2) and then that leaf
//! and the ones starting in the cell at once (adjacent lines, addresses
//! known together, so their misses overlap): about one dependent miss.
//! The leaves are loaded with the non-temporal hint (`prefetchnta`): each
//! is read once, and without the hint the stream of them pushed the
//! cells, which every lookup reads, out of this machine's L2.
//! A cell where more than [`DIRECT_MAX`] leaves start (keys crowded in a
//! small part of the span) is searched by the static B+-tree kept beside
//! it: nodes of eight separator keys (one cache line, nine children)
//! addressed by arithmetic, one line per level. Cells, levels and leaves
//! are one allocation backed by huge pages. `benches/lookup.rs` measures a lookup
//! against a pointer chase over a buffer of the structure's size.

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

/// Number of decimal digits of `n` (`0` has one): from its bit length
/// (`bits * 1233 >> 12` is `floor(bits * log10 2)`, one short of the count
/// or exact) and one comparison, without a loop.
#[inline]
pub fn digit_count(n: u64) -> u32 {
    let bits = 64 - (n | 1).leading_zeros();
    let guess = (bits * 1233) >> 12;
    (guess + u32::from(n >= POW10[guess as usize])).max(1)
}

/// `n` with its last `k` decimal digits zeroed, for `n < 2^50` (every
/// padded key: below 10^15) and `k ≤ 15`: one multiplication by a
/// precomputed reciprocal instead of a division (see [`RECIP`]).
#[inline(always)]
fn truncate_digits(n: u64, k: u32) -> u64 {
    let (m, shift) = RECIP[k as usize];
    let q = ((u128::from(n) * u128::from(m)) >> shift) as u64;
    q * POW10[k as usize]
}

/// For each `d = 10^k` (k ≤ 15), `(ceil(2^s / d), s)` with
/// `s = 50 + ceil(log2 d)`: then `floor(n * m / 2^s) = floor(n / d)` for
/// every `n < 2^50`, since `m * d - 2^s < d` makes the error
/// `n * (m * d - 2^s) / (d * 2^s)` smaller than `1 / d`.
const RECIP: [(u64, u32); 16] = {
    let mut t = [(0u64, 0u32); 16];
    let mut k = 0;
    while k < 16 {
        let d = POW10[k];
        let mut log = 0;
        while (1u64 << log) < d {
            log += 1;
        }
        let s = 50 + log;
        let m = ((1u128 << s).div_ceil(d as u128)) as u64;
        t[k] = (m, s);
        k += 1;
    }
    t
};

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

use crate::screening::exceptions::HugeBuf;

/// One cache line of the search structure: a node's eight separator
/// keys, or a leaf's eight boundaries (see [`PrefixTable`]).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u64; 8]);

/// Children per internal node.
const FANOUT: usize = 9;

/// Bits of a packed boundary holding its label (see [`PrefixTable`]).
const LABEL_BITS: u32 = 6;
const LABEL_MASK: u64 = (1 << LABEL_BITS) - 1;
const LABEL_EXACT: u64 = 1 << 4;
const LABEL_ALLOW: u64 = 1 << 5;
/// A packed boundary of no rule; above every key (`u64::MAX` keys are
/// `> x` for every query).
const PAST: u64 = u64::MAX;

/// The static longest-rule table; see the module doc.
///
/// Each boundary is one `u64`: its key shifted up by [`LABEL_BITS`], and
/// below it the label of the rule in force from there on, in six bits:
/// its length (bits 0..4, 0 = no rule), exact (bit 4), allow (bit 5). The
/// rule itself need not be stored: the rule in force at a boundary covers
/// it, so its digits are the first `length` digits of the boundary's key
/// (a prefix interval holds exactly the keys that start with its digits).
/// A leaf is one cache line of eight boundaries, a lookup reads one line
/// per level, and every line lives in one allocation backed by huge pages.
pub struct PrefixTable {
    /// The direct table's cells (sixteen a line), the internal levels
    /// (root first), then the leaves: one mapping, so the cells too are in
    /// a huge page (one TLB entry, and physically contiguous: evenly
    /// spread over the L2 cache's sets rather than over whatever 4 KB
    /// pages the heap had, which moved a lookup's time by a fifth from one
    /// process to the next).
    lines: HugeBuf<Line>,
    /// Index in `lines` of each internal level's first node, root first.
    levels: Vec<usize>,
    /// Index in `lines` of the first leaf.
    leaves: usize,
    /// Cells of the direct table over the packed keys' high bits (in
    /// `lines` from the start, see [`PrefixTable::cell`]): cell
    /// `(x - direct_base) >> direct_shift` (clamped to the ends) holds the
    /// first leaf a key in it can end in (bits 6..32) and how many leaves
    /// after it start inside the cell (bits 0..6, saturated). None when
    /// the leaves do not fit its 26 bits.
    cell_count: usize,
    direct_base: u64,
    direct_shift: u32,
    /// The rules, sorted (membership, rebuilding).
    rules: Box<[Rule]>,
}

/// Most leaves after a cell's first that a lookup reads through the direct
/// table (all at once: their addresses are known from the cell); a cell
/// with more falls back to the tree.
const DIRECT_MAX: usize = 7;

/// Direct-table cells per leaf, at most (a power of two of cells between
/// half and all of `leaves / LEAVES_PER_CELL`): two to four leaves start
/// in a cell on evenly spread keys, and the table (four bytes a cell) is
/// about 2 % of the leaves' bytes, small enough to stay in the L2 cache.
const LEAVES_PER_CELL: usize = 2;

/// Direct-table cells (four bytes) in one line.
const CELLS_PER_LINE: usize = 16;

/// A rule's label (see [`PrefixTable`]).
fn label_of(r: u64) -> u64 {
    if r == 0 {
        return 0;
    }
    let r = Rule(r);
    let mut l = u64::from(r.len());
    if r.is_exact() {
        l |= LABEL_EXACT;
    }
    if r.allow() {
        l |= LABEL_ALLOW;
    }
    l
}

/// The rule in force from the packed boundary `b`: its label's length of
/// the boundary key's leading digits.
#[inline]
fn rule_at(b: u64) -> Option<Rule> {
    let label = b & LABEL_MASK;
    let len = (label & 15) as u32;
    if len == 0 {
        return None;
    }
    let padded = b >> (LABEL_BITS + LEN_BITS);
    let mut r = truncate_digits(padded, MAX_DIGITS - len) << LEN_BITS | u64::from(len);
    if label & LABEL_EXACT != 0 {
        r |= EXACT;
    }
    if label & LABEL_ALLOW != 0 {
        r |= ALLOW;
    }
    Some(Rule(r))
}

/// Starts loading `line` with the non-temporal hint: leaf lines are read
/// once per lookup, so they should not push the direct table (read by
/// every lookup) out of the caches.
#[inline(always)]
fn prefetch_nta(line: &Line) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads no memory architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_NTA }>(
            (line as *const Line).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = line;
}

/// Number of slots of `line` at or below `x` (slots are sorted).
#[inline(always)]
fn rank(line: &Line, x: u64) -> usize {
    // Branch-free over the line: the compiler turns it into SIMD.
    line.0.iter().filter(|&&k| k <= x).count()
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
        let bounds: Vec<u64> = segments(&rules)
            .into_iter()
            .map(|(k, r)| k << LABEL_BITS | label_of(r))
            .collect();
        let leaves = bounds.len().div_ceil(8).max(1);
        // Each leaf's first boundary (a leaf past the end starts with PAST).
        let leaf_firsts: Vec<u64> = (0..leaves)
            .map(|l| bounds.get(l * 8).copied().unwrap_or(PAST))
            .collect();
        let (cells, direct_base, direct_shift) = direct_table(&leaf_firsts, &bounds);
        let cell_lines = cells.len().div_ceil(CELLS_PER_LINE);
        // Level sizes, bottom up: nodes over the leaves, then over those.
        let mut sizes = Vec::new();
        let mut below = leaves;
        while below > 1 {
            below = below.div_ceil(FANOUT);
            sizes.push(below);
        }
        sizes.reverse();
        let total = cell_lines + sizes.iter().sum::<usize>() + leaves;
        let mut lines = HugeBuf::filled(total, Line([PAST; 8]));
        // SAFETY: the first `cell_lines` lines (plain `u64`s, 64-byte
        // aligned) have room for `cells.len()` `u32`s; nothing else refers
        // to them yet.
        unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u32>(), cells.len()) }
            .copy_from_slice(&cells);
        let mut levels = Vec::with_capacity(sizes.len());
        let mut at = cell_lines;
        for n in &sizes {
            levels.push(at);
            at += n;
        }
        let first_leaf = at;
        for (l, chunk) in bounds.chunks(8).enumerate() {
            lines[first_leaf + l].0[..chunk.len()].copy_from_slice(chunk);
        }
        // Each level's nodes hold the first keys of their children 1..=8,
        // filled bottom up (a child's first key is its subtree's first).
        let mut firsts: Vec<u64> = (0..leaves).map(|l| lines[first_leaf + l].0[0]).collect();
        for (d, &n) in sizes.iter().enumerate().rev() {
            let start = levels[d];
            for k in 0..n {
                for s in 0..8 {
                    if let Some(&f) = firsts.get(k * FANOUT + s + 1) {
                        lines[start + k].0[s] = f;
                    }
                }
            }
            firsts = (0..n).map(|k| firsts[k * FANOUT]).collect();
        }
        PrefixTable {
            lines,
            levels,
            leaves: first_leaf,
            cell_count: cells.len(),
            direct_base,
            direct_shift,
            rules: rules.into_boxed_slice(),
        }
    }

    /// The innermost rule covering key `x`.
    #[inline]
    pub fn longest_at(&self, x: u64) -> Option<Rule> {
        if self.rules.is_empty() {
            return None;
        }
        // Every packed boundary at key `x` sorts at or below this.
        let x = x << LABEL_BITS | LABEL_MASK;
        if let Some(cell) = self.cell(self.cell_of(x)) {
            let more = (cell & 63) as usize;
            if more <= DIRECT_MAX {
                // The leaf holding `x`'s boundary is the first or one of the
                // `more` after it: load them together, count those starting
                // at or below `x`.
                let first = self.leaves + (cell >> 6) as usize;
                let run = &self.lines[first..=first + more];
                for l in run {
                    prefetch_nta(l);
                }
                let mut j = 0;
                for l in &run[1..] {
                    j += usize::from(l.0[0] <= x);
                }
                let leaf = &run[j];
                return rule_at(leaf.0[rank(leaf, x).max(1) - 1]);
            }
        }
        let mut i = 0usize;
        for &start in &self.levels {
            i = i * FANOUT + rank(&self.lines[start + i], x);
        }
        let leaf = &self.lines[self.leaves + i];
        prefetch_nta(leaf);
        // Every leaf starts at or below the keys routed to it.
        let j = rank(leaf, x);
        rule_at(leaf.0[j.max(1) - 1])
    }

    /// The direct-table cell of the packed query `x` (any `x`: the ends
    /// clamp; with no table, 0, which `cells.get` refuses).
    #[inline(always)]
    fn cell_of(&self, x: u64) -> usize {
        let c = x.saturating_sub(self.direct_base) >> self.direct_shift;
        (c as usize).min(self.cell_count.saturating_sub(1))
    }

    /// Direct-table cell `i`, if the table has one.
    #[inline(always)]
    fn cell(&self, i: usize) -> Option<u32> {
        if i >= self.cell_count {
            return None;
        }
        // SAFETY: `build` wrote `cell_count` `u32`s from the start of
        // `lines`, which it sized for them; `i` is below that count.
        Some(unsafe { self.lines.as_ptr().cast::<u32>().add(i).read() })
    }

    /// Every cell, in order (for tests).
    #[cfg(test)]
    fn cell_list(&self) -> Vec<u32> {
        (0..self.cell_count).filter_map(|i| self.cell(i)).collect()
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

    /// Bytes a lookup searches: the direct table, the leaves and the
    /// levels above them.
    pub fn search_bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>()
    }
}

/// The direct table over leaves whose first packed keys are `firsts`, of
/// the packed boundaries `bounds` (sorted, `bounds[0]` the 0 boundary):
/// the cells, their base and shift (see [`PrefixTable`]).
fn direct_table(firsts: &[u64], bounds: &[u64]) -> (Box<[u32]>, u64, u32) {
    let leaves = firsts.len();
    if bounds.len() < 2 || leaves >= 1 << 26 {
        return (Box::new([]), 0, 0);
    }
    // Cells cover the keys from the first boundary above 0 (in leaf 0, so
    // the keys below it, clamped to cell 0, end in leaf 0) to the last
    // (the keys above it, clamped to the last cell, end in the last leaf).
    let (base, last) = (bounds[1], bounds[bounds.len() - 1]);
    let span = last - base;
    let target = (leaves / LEAVES_PER_CELL).max(1) as u64;
    let mut shift = 0;
    while (span >> shift) + 1 > target {
        shift += 1;
    }
    let n = ((span >> shift) + 1) as usize;
    let mut cells = Vec::with_capacity(n);
    // `j`: the last leaf starting at or below the cell's first key.
    let mut j = 0usize;
    for c in 0..n as u64 {
        let lo = base + (c << shift);
        let hi = lo + ((1u64 << shift) - 1);
        while j + 1 < leaves && firsts[j + 1] <= lo {
            j += 1;
        }
        let mut k = j;
        while k + 1 < leaves && firsts[k + 1] <= hi {
            k += 1;
        }
        let more = (k - j).min(63) as u32;
        cells.push((j as u32) << 6 | more);
    }
    (cells.into_boxed_slice(), base, shift)
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
