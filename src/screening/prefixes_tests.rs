//! Tests of prefix rules: the key order, the minimal range cover, and the
//! table against a brute-force longest match.

use proptest::prelude::*;

use super::*;

fn p(s: &str) -> Rule {
    Rule::parse_value(s, false).unwrap()
}

#[test]
fn digit_count_and_truncation_agree_with_decimal_text() {
    // Every power of ten and its neighbours, and the ends.
    let mut ns = vec![0u64, 1, u64::MAX];
    for &p in &POW10 {
        ns.extend([p - 1, p, p + 1]);
    }
    for n in ns {
        assert_eq!(digit_count(n), n.to_string().len() as u32, "{n}");
    }
    // Truncation by reciprocal against division, over the padded-key range
    // (below 2^50), its largest values included.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut ns: Vec<u64> = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % (1 << 50)
        })
        .collect();
    ns.extend([
        0,
        1,
        (1 << 50) - 1,
        999_999_999_999_999,
        100_000_000_000_000,
    ]);
    for n in ns {
        for k in 0..=MAX_DIGITS {
            let d = POW10[k as usize];
            assert_eq!(truncate_digits(n, k), n / d * d, "{n} k={k}");
        }
    }
}

#[test]
fn values_round_trip_and_bad_ones_are_refused() {
    for v in ["+4930901*", "+4930901820", "+1*", "+493090182012345*"] {
        assert_eq!(p(v).value(), v);
    }
    let r = Rule::parse_value("+49309018*", true).unwrap();
    assert!(r.allow() && !r.is_exact());
    assert_eq!((r.digits(), r.len()), (49309018, 8));
    assert!(r.flipped() != r && !r.flipped().allow());
    for bad in ["+*", "*", "+49x*", "+4930901820123456*", "+0*", "4930*"] {
        assert!(Rule::parse_value(bad, false).is_none(), "{bad}");
    }
}

#[test]
fn a_prefix_covers_numbers_of_any_length_starting_with_it() {
    let r = p("+4930901*");
    for n in [4930901u64, 49309010, 4930901999999, 493090100000000] {
        assert!(r.matches(n), "{n}");
    }
    for n in [4930900u64, 4930902, 493090, 49309, 4930800000000, 1] {
        assert!(!r.matches(n), "{n}");
    }
    let e = Rule::exact(4930901820, true).unwrap();
    assert!(e.matches(4930901820));
    assert!(!e.matches(49309018200) && !e.matches(493090182));
}

#[test]
fn the_minimal_cover_of_a_range() {
    assert_eq!(
        range_cover(493090180000, 493090189999),
        [(49309018, 8)],
        "an aligned block is one prefix"
    );
    assert_eq!(range_cover(4930901820, 4930901820), [(4930901820, 10)]);
    // 120..=315 of three digits: 12, 13..19 would be 8 prefixes; the
    // minimal cover is 12*, 13*..19*, 2*, 30*, 310*..315*.
    let c = range_cover(120, 315);
    let want: Vec<(u64, u32)> = [
        (12, 2),
        (13, 2),
        (14, 2),
        (15, 2),
        (16, 2),
        (17, 2),
        (18, 2),
        (19, 2),
    ]
    .into_iter()
    .chain([(2, 1), (30, 2)])
    .chain((310..=315).map(|d| (d, 3)))
    .collect();
    assert_eq!(c, want);
}

proptest! {
    /// The cover is exactly the range (same-length numbers), prefixes
    /// apart, and minimal: no ten siblings that could be one prefix.
    #[test]
    fn covers_exactly_the_range(lo in 100_000u64..999_999, span in 0u64..200_000) {
        let hi = (lo + span).min(999_999);
        let c = range_cover(lo, hi);
        let mut covered = 0u64;
        for &(d, l) in &c {
            covered += 10u64.pow(6 - l);
            let first = d * 10u64.pow(6 - l);
            prop_assert!(first >= lo && first + 10u64.pow(6 - l) - 1 <= hi);
        }
        prop_assert_eq!(covered, hi - lo + 1);
        for w in c.windows(10) {
            let same_parent = w.iter().all(|&(d, l)| l == w[0].1 && d / 10 == w[0].0 / 10);
            prop_assert!(!same_parent, "ten siblings {:?}", w);
        }
    }

    /// The table's answer is the brute-force longest covering rule, for
    /// rules of mixed lengths, actions and exact allows.
    #[test]
    fn the_table_finds_the_longest_rule(
        rules in proptest::collection::vec((1u64..99_999, any::<bool>(), any::<bool>()), 0..300),
        queries in proptest::collection::vec(1u64..9_999_999, 1..300),
    ) {
        let rules: Vec<Rule> = rules
            .into_iter()
            .filter_map(|(d, allow, exact)| {
                if exact { Rule::exact(d * 100, allow) } else { Rule::prefix(d, digit_count(d), allow) }
            })
            .collect();
        // One rule per place: the last of each, as `build` keeps.
        let mut last = std::collections::HashMap::new();
        for r in &rules {
            last.insert(r.0 & !ALLOW, *r);
        }
        let kept: Vec<Rule> = last.into_values().collect();
        let t = PrefixTable::build(rules);
        prop_assert_eq!(t.len(), kept.len());
        for q in queries.into_iter().chain(kept.iter().map(|r| r.digits())) {
            prop_assert_eq!(t.longest(q), longest_naive(&kept, q), "query {}", q);
        }
    }
}

proptest! {
    /// Long rules (up to 15 digits) and the edges of the key space: rules
    /// of nines end where no key follows, and a rule's digits are read
    /// back from the boundary's key (the table stores only its label).
    #[test]
    fn long_rules_and_nines_answer_like_brute_force(
        rules in proptest::collection::vec(
            (100_000_000_000_000u64..999_999_999_999_999, 1u32..=15, any::<bool>(), any::<bool>(), any::<bool>()),
            1..200,
        ),
        queries in proptest::collection::vec(1u64..999_999_999_999_999, 1..200),
    ) {
        let rules: Vec<Rule> = rules
            .into_iter()
            .map(|(n, len, allow, exact, nines)| {
                let n = if nines { 999_999_999_999_999 } else { n };
                let d = n / 10u64.pow(15 - len);
                if exact { Rule::exact(d, allow).unwrap() } else { Rule::prefix(d, len, allow).unwrap() }
            })
            .collect();
        let t = PrefixTable::build(rules);
        let kept = t.rules().to_vec();
        let edges = kept.iter().flat_map(|r| {
            let d = r.digits();
            let rest = 15 - r.len();
            [d, d * 10u64.pow(rest), (d + 1) * 10u64.pow(rest) - 1, (d + 1) * 10u64.pow(rest), d.saturating_sub(1)]
        });
        for q in queries.into_iter().chain(edges) {
            prop_assert_eq!(t.longest(q), longest_naive(&kept, q), "query {}", q);
        }
    }
}

#[test]
fn allow_wins_over_a_shorter_block_and_a_longer_block_over_allow() {
    let t = PrefixTable::build(vec![
        p("+4930901*"),
        Rule::parse_value("+49309018*", true).unwrap(),
        p("+493090189*"),
        Rule::exact(4930901899, true).unwrap(),
    ]);
    assert_eq!(t.longest(4930901700), Some(p("+4930901*")));
    assert!(t.longest(4930901812).unwrap().allow());
    assert_eq!(t.longest(4930901890), Some(p("+493090189*")));
    let e = t.longest(4930901899).unwrap();
    assert!(e.is_exact() && e.allow());
    assert_eq!(t.longest(49309018990), Some(p("+493090189*")));
    assert_eq!(t.longest(4930800000), None);
    assert_eq!(t.longest(1_000_000_000_000_000), None, "beyond 15 digits");
}

#[test]
fn a_large_table_answers_like_brute_force() {
    // Enough rules for four internal levels.
    let mut x = 7u64;
    let mut rules = Vec::new();
    for _ in 0..50_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 4 + (x % 8) as u32;
        let d = 49 * 10u64.pow(len - 2) + (x >> 8) % 10u64.pow(len - 2);
        rules.push(Rule::prefix(d, len, x & 1 == 0).unwrap());
    }
    let t = PrefixTable::build(rules.clone());
    assert!(t.levels.len() >= 4, "{} levels", t.levels.len());
    let kept = t.rules().to_vec();
    for r in kept.iter().step_by(97) {
        for q in [r.digits() * 1000 + 17, r.digits(), r.digits() * 10 + 9] {
            assert_eq!(t.longest(q), longest_naive(&kept, q), "{q}");
        }
    }
}

/// The longest rule covering the key `x` (any key, not only a number's)
/// by brute force.
fn longest_naive_at(rules: &[Rule], x: u64) -> Option<Rule> {
    rules
        .iter()
        .copied()
        .filter(|r| r.covers(x))
        .max_by_key(|r| (r.len(), r.is_exact()))
}

/// Cells of the direct table a lookup answers from, and cells that fall
/// back to the tree.
fn direct_and_fallback(t: &PrefixTable) -> (usize, usize) {
    let direct = t
        .cell_list()
        .iter()
        .filter(|&&c| (c & 63) as usize <= DIRECT_MAX)
        .count();
    (direct, t.cell_count - direct)
}

/// Asks the table for the keys at and around every cell's edges (the
/// first and last key of each cell, and the keys either side), and for
/// the lowest and highest keys (below and above every cell), against
/// brute force.
fn check_cell_edges(t: &PrefixTable) {
    let kept = t.rules().to_vec();
    let size = 1u64 << t.direct_shift;
    let mut keys = vec![0, 1, START_MASK, t.direct_base >> LABEL_BITS];
    for c in 0..t.cell_count as u64 {
        let lo = (t.direct_base + c * size) >> LABEL_BITS;
        let hi = (t.direct_base + c * size + size - 1) >> LABEL_BITS;
        keys.extend([
            lo.saturating_sub(1),
            lo,
            lo + 1,
            hi.saturating_sub(1),
            hi,
            hi + 1,
        ]);
    }
    // Keys are below 2^54 (15 digits and a length).
    for x in keys.into_iter().filter(|&x| x <= START_MASK) {
        assert_eq!(t.longest_at(x), longest_naive_at(&kept, x), "key {x:#x}");
    }
}

#[test]
fn the_direct_table_answers_like_brute_force_at_every_cell_edge() {
    // Short rules (one to three digits: each spans many cells), long ones
    // up to 15 digits inside and beside them, exact allows, nines at the
    // top of the key space, and stretches with no boundary (empty cells).
    let mut x = 11u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut rules = vec![p("+1*"), p("+49*"), p("+999*"), p("+999999999999999*")];
    rules.push(Rule::parse_value("+4930*", true).unwrap());
    rules.push(Rule::exact(999_999_999_999_999, true).unwrap());
    for _ in 0..3000 {
        let v = next();
        let len = 4 + (v % 12) as u32;
        let head = [1u64, 49, 4930, 999][(v >> 8) as usize % 4];
        let hl = digit_count(head);
        let d = head * 10u64.pow(len.max(hl) - hl) + (v >> 16) % 10u64.pow(len.max(hl) - hl);
        let r = if v >> 60 == 0 {
            Rule::exact(d, v & 1 == 0)
        } else {
            Rule::prefix(d, digit_count(d), v & 1 == 0)
        };
        rules.extend(r);
    }
    let t = PrefixTable::build(rules);
    let (direct, _) = direct_and_fallback(&t);
    assert!(direct > 100, "{direct} direct cells of {}", t.cell_count);
    assert!(
        t.cell_list().iter().any(|&c| c & 63 == 0),
        "some cell has no leaf starting in it"
    );
    check_cell_edges(&t);
    let kept = t.rules().to_vec();
    for r in &kept {
        let d = r.digits();
        let rest = MAX_DIGITS - r.len();
        for q in [
            d,
            d * 10u64.pow(rest),
            (d + 1) * 10u64.pow(rest) - 1,
            (d + 1) * 10u64.pow(rest),
        ] {
            assert_eq!(t.longest(q), longest_naive(&kept, q), "{q}");
        }
    }
}

#[test]
fn crowded_cells_fall_back_to_the_tree_and_answer_the_same() {
    // Nearly all rules in one narrow block, two far away: the cells are
    // spread over the whole span, so the block's few cells hold many
    // leaves each and are searched by the tree.
    let mut rules: Vec<Rule> = (0..20_000u64)
        .map(|i| Rule::prefix(4930_0000_0000 + i * 37, 12, i % 3 == 0).unwrap())
        .collect();
    rules.push(p("+1*"));
    rules.push(p("+99999*"));
    let t = PrefixTable::build(rules);
    let (direct, fallback) = direct_and_fallback(&t);
    assert!(
        direct > 0 && fallback > 0,
        "{direct} direct, {fallback} fallback"
    );
    check_cell_edges(&t);
    let kept = t.rules().to_vec();
    for r in kept.iter().step_by(7) {
        let d = r.digits();
        for q in [d * 1000, d * 1000 + 999, d * 1000 - 1, d] {
            assert_eq!(t.longest(q), longest_naive(&kept, q), "{q}");
        }
    }
}

#[test]
fn one_rule_and_no_rule() {
    let t = PrefixTable::build(vec![p("+4930*")]);
    check_cell_edges(&t);
    assert_eq!(t.longest(4930901820), Some(p("+4930*")));
    assert_eq!(t.longest(4931), None);
    let t = PrefixTable::build(Vec::new());
    assert!(t.cell_count == 0);
    assert_eq!(t.longest(4930901820), None);
}
