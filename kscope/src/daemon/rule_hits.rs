//! `kscope_fw_rule_hits_total`, bounded: at most `max` rules of an
//! interface get a series of their own; the hits of every other rule are
//! summed under `rule="[other]"`.
//!
//! Every exported series only grows, as Prometheus counters must:
//! - A rule gets its own series at the first scrape that sees it hit, if
//!   there is room then; the rules first seen hit in the same scrape are
//!   admitted largest first (so the first scrape after a start exports the
//!   top `max` rules by hits). A rule whose hits went into `[other]` stays
//!   there: moving it out would make `[other]` drop.
//! - A series stays while its rule is in the set. Removing the rule ends
//!   the series (Prometheus marks it stale) and frees its place; added
//!   back later, the rule starts a new series.
//! - `[other]` keeps what it counted: the hits of a rule removed from the
//!   set (the kernel forgets its counter) stay in it, as do hits before a
//!   counter restarted.
//! - The kernel forgets a counter only when its rule goes; a rule that
//!   keeps a series across that (removed and added back between two
//!   scrapes) continues from where it was.
//!
//! The rule list is cached and read again only when the rule set's
//! [`Generation`] moves, so a scrape reads four state entries and the hit
//! counters, not the rule maps.

use std::collections::HashMap;

use crate::firewall::{
    maps::{Generation, HitCounts, HitKey},
    rules::Rule,
};

/// One rule being followed.
#[derive(Debug)]
struct Tracked {
    rule: Rule,
    key: HitKey,
    /// Its counter at the last scrape.
    last: u64,
    /// Added to the counter in its own series (counter restarts absorbed),
    /// or `None` while its hits go to `[other]`.
    series: Option<u64>,
}

/// The rule-hit series of one interface.
#[derive(Debug)]
pub(crate) struct RuleSeries {
    generation: Option<Generation>,
    rules: Vec<Tracked>,
    max: usize,
    /// Hits `[other]` counted for rules gone or counters restarted.
    other_carry: u64,
}

/// One scrape's values.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RuleScrape {
    /// Rules with their own series, in `fw save` order.
    pub(crate) series: Vec<(Rule, u64)>,
    pub(crate) other: u64,
    /// Rules in the set.
    pub(crate) rules: usize,
}

impl RuleSeries {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            generation: None,
            rules: Vec::new(),
            max,
            other_carry: 0,
        }
    }

    /// Changes the limit. Series already exported keep their place; a
    /// lower limit only stops new ones until enough rules are gone.
    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Whether the cached rule list is of `generation`.
    pub(crate) fn is_current(&self, generation: &Generation) -> bool {
        self.generation.as_ref() == Some(generation)
    }

    /// Replaces the rule list (read at `generation`).
    pub(crate) fn set_rules(&mut self, generation: Generation, rules: Vec<(Rule, HitKey)>) {
        let same_maps = self
            .generation
            .is_some_and(|g| g.map_id == generation.map_id);
        // Old state by rule; on new maps (a detach and attach) ids mean
        // other rules, so nothing carries over but `[other]`'s total.
        let mut old: HashMap<Rule, (u64, Option<u64>)> = HashMap::new();
        for t in std::mem::take(&mut self.rules) {
            if same_maps && (t.last > 0 || t.series.is_some()) {
                old.insert(t.rule, (t.last, t.series));
            } else if t.series.is_none() {
                self.other_carry = self.other_carry.wrapping_add(t.last);
            }
        }
        self.rules = rules
            .into_iter()
            .map(|(rule, key)| {
                let (last, series) = old.remove(&rule).unwrap_or((0, None));
                Tracked {
                    rule,
                    key,
                    last,
                    series,
                }
            })
            .collect();
        for (_, (last, series)) in old {
            if series.is_none() {
                self.other_carry = self.other_carry.wrapping_add(last);
            }
        }
        self.generation = Some(generation);
    }

    /// The series' values for the counters `hits`.
    pub(crate) fn scrape(&mut self, hits: &HitCounts) -> RuleScrape {
        let mut exported = self.rules.iter().filter(|t| t.series.is_some()).count();
        let mut other = self.other_carry;
        let mut new_hits: Vec<(usize, u64)> = Vec::new();
        for (i, t) in self.rules.iter_mut().enumerate() {
            let now = hits.of(&t.key);
            let restarted = now < t.last;
            match &mut t.series {
                Some(offset) => {
                    if restarted {
                        *offset = offset.wrapping_add(t.last);
                    }
                }
                None => {
                    if restarted {
                        self.other_carry = self.other_carry.wrapping_add(t.last);
                        other = other.wrapping_add(t.last);
                    }
                    if t.last == 0 && now > 0 && !restarted {
                        new_hits.push((i, now));
                    } else {
                        other = other.wrapping_add(now);
                    }
                }
            }
            t.last = now;
        }
        new_hits.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (i, now) in new_hits {
            if exported < self.max {
                self.rules[i].series = Some(0);
                exported += 1;
            } else {
                other = other.wrapping_add(now);
            }
        }
        RuleScrape {
            series: self
                .rules
                .iter()
                .filter_map(|t| Some((t.rule, t.series?.wrapping_add(t.last))))
                .collect(),
            other,
            rules: self.rules.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::rules::RuleSet;

    fn generation(map_id: u32, next_id: u32) -> Generation {
        Generation {
            map_id,
            slot: 0,
            next_id,
            count_v4: 0,
            count_v6: 0,
        }
    }

    /// Rules `block 10.0.0.N/32` with ids N.
    fn rules(ns: &[u32]) -> Vec<(Rule, HitKey)> {
        ns.iter()
            .map(|n| {
                let set = RuleSet::parse("t", &format!("block 10.0.0.{n}/32")).expect("rule");
                (set.rules()[0], HitKey::Id(*n))
            })
            .collect()
    }

    fn hits(pairs: &[(u32, u64)]) -> HitCounts {
        HitCounts::new(pairs.iter().copied().collect())
    }

    fn values(s: &RuleScrape) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = s.series.iter().map(|(r, n)| (r.to_string(), *n)).collect();
        v.push(("[other]".into(), s.other));
        v
    }

    /// Every series present in both scrapes is at least as large in the
    /// second.
    fn assert_monotonic(prev: &[(String, u64)], now: &[(String, u64)]) {
        for (name, was) in prev {
            if let Some((_, is)) = now.iter().find(|(n, _)| n == name) {
                assert!(
                    is >= was,
                    "{name} went down from {was} to {is}: {prev:?} -> {now:?}"
                );
            }
        }
    }

    #[test]
    fn the_first_scrape_exports_the_top_rules_and_sums_the_rest() {
        let mut s = RuleSeries::new(2);
        s.set_rules(generation(1, 10), rules(&[1, 2, 3, 4, 5]));
        let got = s.scrape(&hits(&[(1, 5), (2, 50), (3, 1), (4, 20)]));
        assert_eq!(
            values(&got),
            [
                ("block 10.0.0.2/32".into(), 50),
                ("block 10.0.0.4/32".into(), 20),
                ("[other]".into(), 6)
            ]
        );
        assert_eq!(got.rules, 5);
    }

    #[test]
    fn no_series_ever_goes_down_as_rules_overtake_come_and_go() {
        let mut s = RuleSeries::new(2);
        s.set_rules(generation(1, 10), rules(&[1, 2, 3, 4]));
        let a = values(&s.scrape(&hits(&[(1, 1), (2, 2), (3, 3)])));
        // Rule 1 overtakes everything: it stays in [other], which grows.
        let b = values(&s.scrape(&hits(&[(1, 100), (2, 2), (3, 4)])));
        assert_monotonic(&a, &b);
        assert_eq!(b.last(), Some(&("[other]".into(), 100)));
        // Rule 1 (in [other]) is removed: the kernel forgets its counter,
        // [other] keeps what it counted. Rule 2 (exported) is removed:
        // its series ends and frees a place for rule 4's first hits.
        s.set_rules(generation(1, 11), rules(&[3, 4]));
        let c = values(&s.scrape(&hits(&[(3, 5), (4, 7)])));
        assert_monotonic(&b, &c);
        assert_eq!(
            c,
            [
                ("block 10.0.0.3/32".into(), 5),
                ("block 10.0.0.4/32".into(), 7),
                ("[other]".into(), 100)
            ]
        );
        // Rule 3 removed and added back between scrapes: its counter
        // restarts, its series continues.
        s.set_rules(generation(1, 12), rules(&[3, 4]));
        let d = values(&s.scrape(&hits(&[(3, 1), (4, 7)])));
        assert_monotonic(&c, &d);
        assert_eq!(d[0], ("block 10.0.0.3/32".into(), 6));
        // The same for a rule in [other]: a new rule 5 goes there (no
        // room), then its counter restarts.
        s.set_rules(generation(1, 13), rules(&[3, 4, 5]));
        let e = values(&s.scrape(&hits(&[(3, 1), (4, 7), (5, 30)])));
        assert_eq!(e.last(), Some(&("[other]".into(), 130)));
        let f = values(&s.scrape(&hits(&[(3, 1), (4, 7), (5, 2)])));
        assert_monotonic(&e, &f);
        assert_eq!(f.last(), Some(&("[other]".into(), 132)));
        // New maps (detach, attach): old ids mean nothing any more;
        // [other] still never drops.
        s.set_rules(generation(2, 1), rules(&[1]));
        let g = values(&s.scrape(&hits(&[(1, 3)])));
        assert_monotonic(&f, &g);
        assert!(g.last().is_some_and(|o| o.1 >= 132), "{g:?}");
    }

    #[test]
    fn a_lower_limit_keeps_the_series_already_exported() {
        let mut s = RuleSeries::new(3);
        s.set_rules(generation(1, 10), rules(&[1, 2, 3, 4]));
        s.scrape(&hits(&[(1, 1), (2, 1)]));
        s.set_max(1);
        let got = values(&s.scrape(&hits(&[(1, 2), (2, 2), (3, 9)])));
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got.last(), Some(&("[other]".into(), 9)));
    }
}
