//! The exception-set lookup alone (hit and miss, random keys, 1M and 10M
//! entries) and number normalisation (fast path, national path with and
//! without the cache), plus one whole `Screener::screen`.
//!
//! Run: `cargo bench --bench lookup`. Prints the phone table's heap bytes
//! per entry at each size.
//!
//! `exact/*`: at 1M and 10M exact entries, one `contains_phone` for a hit
//! and for a miss against one step of a pointer chase over a buffer of the
//! phone table's size, side by side (`cargo bench --bench lookup --
//! exact/`). Each is timed alone: a load fence (`lfence`) after every
//! lookup and every chase step keeps the next one from starting early, so
//! the time is one lookup's latency (a lookup's answer comes from a branch
//! the CPU would otherwise predict and run ahead of). `lookup/*` are the
//! same lookups unfenced, back to back (throughput). Before criterion's
//! runs, each size prints a `side by side` line: lookups and chase steps
//! (fenced) in alternating blocks of 4096, the median time of each and the
//! median ratio, which a shared machine's changing load moves least.
//!
//! Instructions per lookup (valgrind): `SIPSCREEN_CALLGRIND=hit` (or
//! `miss`, `prefix`) builds the 1M set and runs 100,000 lookups inside
//! `callgrind_loop`, then exits:
//!
//! ```text
//! cargo bench --bench lookup --no-run
//! SIPSCREEN_CALLGRIND=hit valgrind --tool=callgrind --collect-atstart=no \
//!   --toggle-collect='*callgrind_loop*' target/release/deps/lookup-HASH
//! ```
//!
//! and divide the `summary` Ir by 100,000.
//!
//! `prefix/*`: with 1M prefix rules loaded, one `match_phone` against one
//! step of a pointer chase (a random cyclic permutation of cache lines)
//! over a buffer of the prefix table's size: the machine's random-access
//! latency at that size. `prefix/lookup/1M` and `prefix/chase/1M` are
//! chains (the next query depends on the previous answer); `prefix/fenced/*`
//! time each alone, as `exact/*` do. The ratio of lookup to chase is what
//! the target (≤ 2) is about: `cargo bench --bench lookup -- prefix/`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group};
use phonenumber::country::Id;
use sipscreen::screening::exceptions::{ExceptionSet, HugeBuf, Item, Rule};
use sipscreen::screening::normalize::Normalizer;
use sipscreen::screening::{Direction, Screener};

/// Query keys per run (cycled), pre-generated so generation isn't measured.
const QUERIES: usize = 1 << 20;

/// splitmix64: reproducible keys without a `rand` dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A German-looking E.164 number: +49 and 10 or 11 digits.
    fn phone(&mut self) -> u64 {
        490_000_000_000 + self.next() % 9_999_999_999_999
    }
}

/// Waits until every earlier load has completed before any later one
/// starts (x86-64 `lfence`): each timed step is then one step alone.
#[inline(always)]
fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: lfence has no operands and no effect but ordering.
    unsafe {
        std::arch::x86_64::_mm_lfence()
    };
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// The process's anonymous memory in transparent huge pages, in kB
/// (`AnonHugePages` of `/proc/self/smaps_rollup`; 0 where there is none).
fn anon_huge_kb() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("AnonHugePages:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Runs `build` and prints how much of the `bytes` it was to allocate
/// the kernel granted as huge pages (the growth of [`anon_huge_kb`]).
fn huge_pages<T>(what: &str, bytes: impl FnOnce(&T) -> usize, build: impl FnOnce() -> T) -> T {
    let before = anon_huge_kb();
    let t = build();
    let got = anon_huge_kb().saturating_sub(before);
    eprintln!(
        "huge pages {what}: {got} kB of {} kB granted",
        bytes(&t) / 1024
    );
    t
}

/// A set of `n` random exact entries, with `QUERIES` hits and misses.
fn exact_set(n: usize) -> (ExceptionSet, Vec<u64>, Vec<u64>) {
    let mut rng = Rng(n as u64);
    let keys: Vec<u64> = (0..n).map(|_| rng.phone()).collect();
    let set = huge_pages(
        &format!("exact table {n}"),
        |s: &ExceptionSet| s.phone_table_bytes(),
        || {
            let set = ExceptionSet::new();
            set.replace_all(keys.clone(), Vec::new());
            set
        },
    );
    let hits: Vec<u64> = (0..QUERIES)
        .map(|_| keys[(rng.next() % n as u64) as usize])
        .collect();
    let misses: Vec<u64> = (0..QUERIES)
        .map(|_| {
            loop {
                let k = rng.phone();
                if !set.contains_phone(k) {
                    break k;
                }
            }
        })
        .collect();
    (set, hits, misses)
}

/// Operations per timed block of [`side_by_side`].
const BLOCK: usize = 4096;

/// Blocks of `chase` steps and of `lookup`s, alternating for `rounds`
/// rounds, each operation fenced; prints the median nanoseconds per
/// operation of each and the median of the rounds' ratios. On a shared
/// machine whose load moves from second to second, criterion's runs of one
/// function after the other compare different moments; alternating blocks
/// of a millisecond or so compare the same ones.
fn side_by_side(name: &str, buf: &[[usize; 8]], queries: &[u64], mut lookup: impl FnMut(u64)) {
    let rounds = 400;
    let (mut at, mut i) = (0usize, 0usize);
    let mut chase = || at = black_box(buf[at][0]);
    let mut lookup = || {
        lookup(black_box(queries[i % queries.len()]));
        i += 1;
    };
    let time = |f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        for _ in 0..BLOCK {
            f();
            fence();
        }
        t.elapsed().as_nanos() as f64 / BLOCK as f64
    };
    let (mut c, mut l, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let a = time(&mut chase);
        let b = time(&mut lookup);
        c.push(a);
        l.push(b);
        r.push(b / a);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "side by side {name}: lookup {:.1} ns, chase {:.1} ns (medians of {rounds} alternating blocks of {BLOCK}); lookup / chase = {:.2} (median of the rounds' ratios)",
        median(&mut l),
        median(&mut c),
        median(&mut r)
    );
}

/// Exact lookups, each timed alone, beside the pointer chase over a
/// buffer of the table's size.
fn exact(c: &mut Criterion) {
    for (label, n) in [("1M", 1_000_000usize), ("10M", 10_000_000)] {
        let (set, hits, misses) = exact_set(n);
        let bytes = set.phone_table_bytes();
        let (phones, _) = set.counts();
        eprintln!(
            "exceptions {label}: {phones} phones, table {bytes} bytes = {:.1} bytes/entry (whole set {:.1} bytes/entry); the chase runs over {bytes} bytes",
            bytes as f64 / phones as f64,
            set.heap_bytes() as f64 / phones as f64,
        );
        let buf = huge_pages(
            "chase buffer",
            |b: &HugeBuf<[usize; 8]>| b.len() * 64,
            || chase_buffer(bytes, 3),
        );
        for (kind, queries) in [("hit", &hits), ("miss", &misses)] {
            side_by_side(&format!("exact/{kind}/{label}"), &buf, queries, |k| {
                black_box(set.contains_phone(k));
            });
        }
        let mut at = 0usize;
        c.bench_function(&format!("exact/chase/{label}"), |b| {
            b.iter(|| {
                at = buf[at][0];
                fence();
                black_box(at)
            })
        });
        drop(buf);
        for (kind, queries) in [("hit", &hits), ("miss", &misses)] {
            let mut i = 0;
            c.bench_function(&format!("exact/{kind}/{label}"), |b| {
                b.iter(|| {
                    let k = queries[i & (QUERIES - 1)];
                    i += 1;
                    let r = set.contains_phone(black_box(k));
                    fence();
                    black_box(r)
                })
            });
        }
        for (kind, queries) in [("hit", &hits), ("miss", &misses)] {
            let mut i = 0;
            c.bench_function(&format!("lookup/{kind}/{label}"), |b| {
                b.iter(|| {
                    let k = queries[i & (QUERIES - 1)];
                    i += 1;
                    black_box(set.contains_phone(black_box(k)))
                })
            });
        }
    }
}

fn normalisation(c: &mut Criterion) {
    let cached = Normalizer::new(Id::DE, &["49".to_string()]);
    let uncached = Normalizer::with_cache(Id::DE, &["49".to_string()], 0);
    c.bench_function("normalize/fast/+49 30 901820", |b| {
        b.iter(|| cached.normalize(black_box(b"+49 30 901820"), None))
    });
    c.bench_function("normalize/fast/%2B4930901820;npdi", |b| {
        b.iter(|| cached.normalize(black_box(b"%2B4930901820;npdi"), None))
    });
    c.bench_function("normalize/national/cached", |b| {
        b.iter(|| cached.normalize(black_box(b"030 901820"), None))
    });
    c.bench_function("normalize/national/uncached", |b| {
        b.iter(|| uncached.normalize(black_box(b"030 901820"), None))
    });
}

fn screen(c: &mut Criterion) {
    let text = r#"
[pbx]
target = "127.0.0.1:5080"
sources = ["127.0.0.1/32"]
[[trunk]]
name = "carrier"
target = "127.0.0.2:5070"
sources = ["127.0.0.2/32"]
[[line]]
number = "+4930901820"
queue = ["101"]
"#;
    let loaded = sipscreen::config::from_toml(Path::new("bench.toml"), text.to_string()).unwrap();
    let set = Arc::new(ExceptionSet::new());
    let mut rng = Rng(7);
    set.replace_all((0..1_000_000).map(|_| rng.phone()).collect(), Vec::new());
    let screener = Screener::build(&loaded, set).unwrap();
    let mut out = Vec::with_capacity(512);
    c.bench_function("screen+tags/inbound/1M", |b| {
        b.iter(|| {
            out.clear();
            let s = screener.screen(
                Direction::Inbound,
                black_box(b"+4930901820"),
                Some(black_box(b"+4915112345678")),
            );
            s.write_tags(Some("a84b4c76e66710"), s.responsible(), &mut out);
            black_box(out.len())
        })
    });
}

/// 1M prefix rules of German numbers (8 to 11 digits, one in ten an
/// allow) and queries of which about half fall inside one.
pub fn prefix_rules(n: usize, seed: u64) -> (Vec<Item>, Vec<u64>) {
    let mut rng = Rng(seed);
    let mut rules = Vec::with_capacity(n);
    for _ in 0..n {
        let len = 8 + (rng.next() % 4) as u32;
        let d = 49 * 10u64.pow(len - 2) + rng.next() % 10u64.pow(len - 2);
        let allow = rng.next().is_multiple_of(10);
        rules.push(Item::Rule(Rule::prefix(d, len, allow).expect("a prefix")));
    }
    let queries = (0..QUERIES)
        .map(|i| match &rules[(rng.next() % n as u64) as usize] {
            Item::Rule(r) if i % 2 == 0 => {
                let rest = 13 - r.len();
                r.digits() * 10u64.pow(rest) + rng.next() % 10u64.pow(rest)
            }
            _ => 4_900_000_000_000 + rng.next() % 100_000_000_000,
        })
        .collect();
    (rules, queries)
}

/// A random single cycle over `bytes / 64` cache lines (Sattolo), each
/// line holding the index of the next; in the same memory as the tables
/// (a [`HugeBuf`]: its own mapping, huge pages).
fn chase_buffer(bytes: usize, seed: u64) -> HugeBuf<[usize; 8]> {
    let n = (bytes / 64).max(2);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng(seed);
    for i in (1..n).rev() {
        let j = (rng.next() % i as u64) as usize;
        order.swap(i, j);
    }
    let mut buf = HugeBuf::filled(n, [0; 8]);
    for w in 0..n {
        buf[order[w]][0] = order[(w + 1) % n];
    }
    buf
}

fn prefixes(c: &mut Criterion) {
    let n = 1_000_000;
    let (rules, queries) = prefix_rules(n, 11);
    let set = huge_pages(
        "prefix table 1M",
        |s: &ExceptionSet| s.prefix_table_bytes(),
        || {
            let set = ExceptionSet::new();
            set.replace_items(rules);
            set
        },
    );
    let bytes = set.prefix_table_bytes();
    let hits = queries
        .iter()
        .filter(|&&q| set.match_phone(q).is_some())
        .count();
    eprintln!(
        "prefixes 1M: {} rules, search structure {bytes} bytes ({:.1} per rule), {:.0} % of queries inside a rule",
        set.rule_count(),
        bytes as f64 / set.rule_count() as f64,
        100.0 * hits as f64 / queries.len() as f64
    );
    let buf = huge_pages(
        "chase buffer",
        |b: &HugeBuf<[usize; 8]>| b.len() * 64,
        || chase_buffer(bytes, 5),
    );
    side_by_side("prefix/1M", &buf, &queries, |k| {
        black_box(set.match_phone(k));
    });
    let mut at = 0usize;
    c.bench_function("prefix/chase/1M", |b| {
        b.iter(|| {
            at = buf[at][0];
            black_box(at)
        })
    });
    let mut i = 0usize;
    c.bench_function("prefix/lookup/1M", |b| {
        b.iter(|| {
            let m = set.match_phone(queries[i & (QUERIES - 1)]);
            // The next query depends on this answer: a latency chain too.
            i = i.wrapping_add(1 + usize::from(black_box(m).is_some()));
        })
    });
    c.bench_function("prefix/fenced/chase/1M", |b| {
        b.iter(|| {
            at = buf[at][0];
            fence();
            black_box(at)
        })
    });
    c.bench_function("prefix/fenced/lookup/1M", |b| {
        b.iter(|| {
            let m = set.match_phone(queries[i & (QUERIES - 1)]);
            i = i.wrapping_add(1);
            fence();
            black_box(m)
        })
    });
}

/// Lookups under callgrind.
const CALLGRIND_LOOKUPS: usize = 100_000;

/// Looks up the first `CALLGRIND_LOOKUPS` of `queries`; what callgrind
/// counts.
#[inline(never)]
fn callgrind_loop(set: &ExceptionSet, queries: &[u64]) -> usize {
    queries[..CALLGRIND_LOOKUPS]
        .iter()
        .filter(|&&q| black_box(set.match_phone(black_box(q))).is_some())
        .count()
}

fn callgrind(kind: &str) {
    let (set, queries) = match kind {
        "hit" | "miss" => {
            let (set, hits, misses) = exact_set(1_000_000);
            (set, if kind == "hit" { hits } else { misses })
        }
        "prefix" => {
            let (rules, queries) = prefix_rules(1_000_000, 11);
            let set = ExceptionSet::new();
            set.replace_items(rules);
            (set, queries)
        }
        other => panic!("SIPSCREEN_CALLGRIND={other:?}: use hit, miss or prefix"),
    };
    let found = callgrind_loop(&set, &queries);
    eprintln!("callgrind {kind}: {CALLGRIND_LOOKUPS} lookups, {found} found");
}

criterion_group!(benches, exact, normalisation, screen, prefixes);

fn main() {
    if let Ok(kind) = std::env::var("SIPSCREEN_CALLGRIND") {
        callgrind(&kind);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
