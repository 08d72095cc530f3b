//! Tests of prefix rules: the key order, the minimal range cover, and the
//! table against a brute-force longest match.

use proptest::prelude::*;

use super::*;

fn p(s: &str) -> Rule {
    Rule::parse_value(s, false).unwrap()
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
