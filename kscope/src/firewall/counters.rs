//! Counter aggregation and formatting: pure functions over what the per-CPU
//! map holds, so they are unit-tested without a kernel.

use std::{fmt::Write as _, time::Duration};

use kscope_common::fw::{
    Action, Counter, Family, N_ACTIONS, N_COUNTERS, N_REASON_COUNTERS, Reason, counter_index,
    reason_index,
};

use serde::Serialize;

/// Raw per-CPU contents of the counter map: `slots[index][cpu]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PerCpuCounters {
    pub slots: Vec<Vec<Counter>>,
}

/// Counters of one interface, summed over CPUs: `totals[counter_index]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    pub slots: [Counter; N_COUNTERS as usize],
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            slots: [Counter::default(); N_COUNTERS as usize],
        }
    }
}

fn add(a: Counter, b: Counter) -> Counter {
    Counter {
        packets: a.packets.wrapping_add(b.packets),
        bytes: a.bytes.wrapping_add(b.bytes),
    }
}

impl PerCpuCounters {
    /// Number of CPUs the map holds values for.
    pub fn cpus(&self) -> usize {
        self.slots.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Sums every slot over all CPUs. Missing slots count as zero.
    pub fn sum(&self) -> Totals {
        let mut t = Totals::default();
        for (slot, per_cpu) in t.slots.iter_mut().zip(&self.slots) {
            *slot = per_cpu.iter().copied().fold(Counter::default(), add);
        }
        t
    }

    /// Sums a reason map ([`kscope_common::fw::MAP_REASONS`]) over CPUs.
    pub fn sum_reasons(&self) -> ReasonTotals {
        let mut slots = vec![Counter::default(); N_REASON_COUNTERS as usize];
        for (slot, per_cpu) in slots.iter_mut().zip(&self.slots) {
            *slot = per_cpu.iter().copied().fold(Counter::default(), add);
        }
        ReasonTotals { slots }
    }

    /// The counters of one CPU.
    pub fn cpu(&self, cpu: usize) -> Totals {
        let mut t = Totals::default();
        for (slot, per_cpu) in t.slots.iter_mut().zip(&self.slots) {
            *slot = per_cpu.get(cpu).copied().unwrap_or_default();
        }
        t
    }
}

impl Totals {
    pub fn get(&self, family: Family, action: Action) -> Counter {
        self.slots[counter_index(family, action) as usize]
    }

    /// All actions of one family added up.
    pub fn family(&self, family: Family) -> Counter {
        Action::ALL
            .iter()
            .map(|&a| self.get(family, a))
            .fold(Counter::default(), add)
    }

    /// Per-second rates between an earlier snapshot and this one. Counters
    /// never go backwards, but a detach and re-attach in between resets them;
    /// that interval reads as zero rather than as a huge wrapped number.
    pub fn rates_since(&self, earlier: &Totals, elapsed: Duration) -> Rates {
        // Guard against a zero interval: a rate over nothing is zero.
        let secs = elapsed.as_secs_f64();
        let per_sec = |now: u64, then: u64| {
            if secs <= 0.0 {
                0.0
            } else {
                now.saturating_sub(then) as f64 / secs
            }
        };
        let mut slots = [(0.0, 0.0); N_COUNTERS as usize];
        for (i, slot) in slots.iter_mut().enumerate() {
            let (now, then) = (self.slots[i], earlier.slots[i]);
            *slot = (
                per_sec(now.packets, then.packets),
                per_sec(now.bytes, then.bytes),
            );
        }
        Rates { slots }
    }
}

/// Counters by family and reason, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReasonTotals {
    pub slots: Vec<Counter>,
}

impl ReasonTotals {
    pub fn get(&self, family: Family, reason: Reason) -> Counter {
        self.slots
            .get(reason_index(family, reason) as usize)
            .copied()
            .unwrap_or_default()
    }

    /// One reason, all families added up.
    pub fn reason(&self, reason: Reason) -> Counter {
        Family::ALL
            .iter()
            .map(|&f| self.get(f, reason))
            .fold(Counter::default(), add)
    }
}

/// Header of the by-reason table.
pub fn reason_header() -> String {
    format!(
        "{:<15} {:<6} {:<16} {:<6} {:>14} {:>16}",
        "IFACE", "FAMILY", "REASON", "ACTION", "PACKETS", "BYTES"
    )
}

/// By-reason rows for one interface: every non-zero (family, reason).
pub fn reason_rows(iface: &str, t: &ReasonTotals) -> String {
    let mut out = String::new();
    for f in Family::ALL {
        for r in Reason::ALL {
            let c = t.get(f, r);
            if c.packets != 0 {
                let _ = writeln!(
                    out,
                    "{iface:<15} {:<6} {:<16} {:<6} {:>14} {:>16}",
                    f.name(),
                    r.name(),
                    r.action().name(),
                    c.packets,
                    c.bytes
                );
            }
        }
    }
    out
}

#[derive(Serialize)]
struct JsonReason {
    family: &'static str,
    reason: &'static str,
    action: &'static str,
    packets: u64,
    bytes: u64,
}

fn json_reasons(t: &ReasonTotals) -> Vec<JsonReason> {
    let mut rows = Vec::new();
    for f in Family::ALL {
        for r in Reason::ALL {
            let c = t.get(f, r);
            if c.packets != 0 || c.bytes != 0 {
                rows.push(JsonReason {
                    family: f.name(),
                    reason: r.name(),
                    action: r.action().name(),
                    packets: c.packets,
                    bytes: c.bytes,
                });
            }
        }
    }
    rows
}

/// Packets and bytes per second for each slot.
#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    pub slots: [(f64, f64); N_COUNTERS as usize],
}

/// The (family, action) rows a table shows: pass and drop always, for every
/// family, so a quiet interface still shows its zeros; the other actions only
/// once they have counted something.
fn shown_rows(nonzero: impl Fn(usize) -> bool) -> Vec<(Family, Action)> {
    let mut rows = Vec::new();
    for f in Family::ALL {
        for a in Action::ALL {
            let always = matches!(a, Action::Pass | Action::Drop);
            if always || nonzero(counter_index(f, a) as usize) {
                rows.push((f, a));
            }
        }
    }
    rows
}

/// One interface's counters, ready for a table or JSON.
pub struct IfaceStats<'a> {
    pub iface: &'a str,
    pub counters: &'a PerCpuCounters,
}

/// Header of the stats table; `per_cpu` adds a CPU column.
pub fn table_header(per_cpu: bool) -> String {
    let cpu = if per_cpu {
        format!("{:>4}  ", "CPU")
    } else {
        String::new()
    };
    format!(
        "{:<15} {cpu}{:<6} {:<8} {:>14} {:>16}",
        "IFACE", "FAMILY", "ACTION", "PACKETS", "BYTES"
    )
}

/// Table rows for one interface: totals, or one block per CPU.
pub fn table_rows(s: &IfaceStats<'_>, per_cpu: bool) -> String {
    let mut out = String::new();
    let blocks: Vec<(Option<usize>, Totals)> = if per_cpu {
        (0..s.counters.cpus())
            .map(|c| (Some(c), s.counters.cpu(c)))
            .collect()
    } else {
        vec![(None, s.counters.sum())]
    };
    for (cpu, totals) in blocks {
        let nonzero = |i: usize| totals.slots[i].packets != 0;
        for (f, a) in shown_rows(nonzero) {
            let c = totals.get(f, a);
            let cpu = cpu.map(|c| format!("{c:>4}  ")).unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<15} {cpu}{:<6} {:<8} {:>14} {:>16}",
                s.iface,
                f.name(),
                a.name(),
                c.packets,
                c.bytes
            );
        }
    }
    out
}

/// Header of the `--watch` table.
pub fn rate_header() -> String {
    format!(
        "{:<15} {:<6} {:<8} {:>14} {:>16}",
        "IFACE", "FAMILY", "ACTION", "PKT/S", "BYTES/S"
    )
}

/// `--watch` rows for one interface.
pub fn rate_rows(iface: &str, rates: &Rates) -> String {
    let mut out = String::new();
    for (f, a) in shown_rows(|i| rates.slots[i].0 != 0.0) {
        let (p, b) = rates.slots[counter_index(f, a) as usize];
        let _ = writeln!(
            out,
            "{iface:<15} {:<6} {:<8} {p:>14.1} {b:>16.1}",
            f.name(),
            a.name()
        );
    }
    out
}

#[derive(Serialize)]
struct JsonCounter {
    packets: u64,
    bytes: u64,
}

impl From<Counter> for JsonCounter {
    fn from(c: Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

#[derive(Serialize)]
struct JsonRow {
    family: &'static str,
    action: &'static str,
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct JsonFamilies {
    ipv4: JsonCounter,
    ipv6: JsonCounter,
    other: JsonCounter,
}

#[derive(Serialize)]
struct JsonCpu {
    cpu: usize,
    counters: Vec<JsonRow>,
}

/// `fw stats --json`: one object per interface, on one line.
///
/// Fields: `iface`; `families` (`ipv4`, `ipv6`, `other`, each `packets` and
/// `bytes`, all actions summed); `counters` (every non-zero family/action
/// pair); `per_cpu` (only with `--per-cpu`: `cpu` and its `counters`).
#[derive(Serialize)]
struct JsonStats<'a> {
    iface: &'a str,
    families: JsonFamilies,
    counters: Vec<JsonRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_cpu: Option<Vec<JsonCpu>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasons: Option<Vec<JsonReason>>,
}

fn json_rows(t: &Totals) -> Vec<JsonRow> {
    let mut rows = Vec::new();
    for f in Family::ALL {
        for a in Action::ALL {
            let c = t.get(f, a);
            if c.packets != 0 || c.bytes != 0 {
                rows.push(JsonRow {
                    family: f.name(),
                    action: a.name(),
                    packets: c.packets,
                    bytes: c.bytes,
                });
            }
        }
    }
    rows
}

/// Serializes one interface's stats as a single JSON line.
pub fn to_json(s: &IfaceStats<'_>, per_cpu: bool) -> String {
    to_json_inner(s, per_cpu, None)
}

/// [`to_json`] plus `reasons`: every non-zero (family, reason) as
/// `{"family", "reason", "action", "packets", "bytes"}`.
pub fn to_json_with_reasons(s: &IfaceStats<'_>, per_cpu: bool, reasons: &ReasonTotals) -> String {
    to_json_inner(s, per_cpu, Some(json_reasons(reasons)))
}

fn to_json_inner(s: &IfaceStats<'_>, per_cpu: bool, reasons: Option<Vec<JsonReason>>) -> String {
    let t = s.counters.sum();
    let per_cpu = per_cpu.then(|| {
        (0..s.counters.cpus())
            .map(|cpu| JsonCpu {
                cpu,
                counters: json_rows(&s.counters.cpu(cpu)),
            })
            .collect()
    });
    let v = JsonStats {
        iface: s.iface,
        families: JsonFamilies {
            ipv4: t.family(Family::Ipv4).into(),
            ipv6: t.family(Family::Ipv6).into(),
            other: t.family(Family::Other).into(),
        },
        counters: json_rows(&t),
        per_cpu,
        reasons,
    };
    serde_json::to_string(&v).unwrap_or_default()
}

#[derive(Serialize)]
struct JsonRate {
    family: &'static str,
    action: &'static str,
    packets_per_sec: f64,
    bytes_per_sec: f64,
}

/// `fw stats --watch --json`: one line per interface per interval.
pub fn rates_to_json(iface: &str, interval: Duration, rates: &Rates) -> String {
    let mut rows = Vec::new();
    for f in Family::ALL {
        for a in Action::ALL {
            let (p, b) = rates.slots[counter_index(f, a) as usize];
            if p != 0.0 || b != 0.0 {
                rows.push(JsonRate {
                    family: f.name(),
                    action: a.name(),
                    packets_per_sec: p,
                    bytes_per_sec: b,
                });
            }
        }
    }
    serde_json::json!({
        "iface": iface,
        "interval_secs": interval.as_secs_f64(),
        "rates": rows,
    })
    .to_string()
}

const _: () = assert!(N_ACTIONS == Action::ALL.len() as u32);
const _: () = assert!(N_REASON_COUNTERS as usize == Reason::ALL.len() * Family::ALL.len());

#[cfg(test)]
mod tests {
    use super::*;

    fn c(packets: u64, bytes: u64) -> Counter {
        Counter { packets, bytes }
    }

    fn counters_with(entries: &[(Family, Action, Vec<Counter>)]) -> PerCpuCounters {
        let mut slots = vec![vec![Counter::default(); 2]; N_COUNTERS as usize];
        for (f, a, per_cpu) in entries {
            slots[counter_index(*f, *a) as usize] = per_cpu.clone();
        }
        PerCpuCounters { slots }
    }

    #[test]
    fn sum_adds_every_cpu_of_each_slot() {
        let pc = counters_with(&[
            (Family::Ipv4, Action::Pass, vec![c(3, 300), c(4, 400)]),
            (Family::Ipv6, Action::Drop, vec![c(0, 0), c(7, 700)]),
        ]);
        let t = pc.sum();
        assert_eq!(t.get(Family::Ipv4, Action::Pass), c(7, 700));
        assert_eq!(t.get(Family::Ipv6, Action::Drop), c(7, 700));
        assert_eq!(t.get(Family::Other, Action::Pass), c(0, 0));
        assert_eq!(t.family(Family::Ipv4), c(7, 700));
    }

    #[test]
    fn uneven_cpu_counts_treat_missing_values_as_zero() {
        let mut pc = counters_with(&[]);
        pc.slots[0] = vec![c(1, 10), c(2, 20), c(3, 30)];
        pc.slots[1] = vec![c(5, 50)];
        assert_eq!(pc.cpus(), 3);
        assert_eq!(pc.cpu(2).slots[1], c(0, 0));
        assert_eq!(pc.sum().slots[0], c(6, 60));
    }

    #[test]
    fn family_total_adds_all_actions() {
        let pc = counters_with(&[
            (Family::Ipv6, Action::Pass, vec![c(1, 100), c(0, 0)]),
            (Family::Ipv6, Action::Drop, vec![c(2, 200), c(0, 0)]),
            (Family::Ipv6, Action::Aborted, vec![c(0, 0), c(4, 400)]),
        ]);
        assert_eq!(pc.sum().family(Family::Ipv6), c(7, 700));
    }

    #[test]
    fn rates_divide_by_the_interval_and_guard_zero() {
        let before = counters_with(&[(Family::Ipv4, Action::Pass, vec![c(10, 1000), c(0, 0)])]);
        let after = counters_with(&[(Family::Ipv4, Action::Pass, vec![c(30, 3000), c(0, 0)])]);
        let r = after
            .sum()
            .rates_since(&before.sum(), Duration::from_secs(2));
        assert_eq!(
            r.slots[counter_index(Family::Ipv4, Action::Pass) as usize],
            (10.0, 1000.0)
        );
        let r = after.sum().rates_since(&before.sum(), Duration::ZERO);
        assert!(r.slots.iter().all(|&s| s == (0.0, 0.0)));
        // A reset (re-attach) between snapshots reads as zero, not as a wrap.
        let r = before
            .sum()
            .rates_since(&after.sum(), Duration::from_secs(1));
        assert!(r.slots.iter().all(|&s| s == (0.0, 0.0)));
    }

    #[test]
    fn table_shows_pass_and_drop_for_every_family_and_other_actions_when_nonzero() {
        let pc = counters_with(&[
            (Family::Ipv4, Action::Pass, vec![c(3, 294), c(2, 196)]),
            (Family::Other, Action::Tx, vec![c(1, 60), c(0, 0)]),
        ]);
        let rows = table_rows(
            &IfaceStats {
                iface: "veth0",
                counters: &pc,
            },
            false,
        );
        let lines: Vec<Vec<&str>> = rows
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines.len(), 7, "{rows}");
        assert!(lines.contains(&vec!["veth0", "ipv4", "pass", "5", "490"]));
        assert!(lines.contains(&vec!["veth0", "ipv6", "drop", "0", "0"]));
        assert!(lines.contains(&vec!["veth0", "other", "tx", "1", "60"]));
        assert!(!rows.contains("redirect"));
        // Columns line up with the header.
        let header = table_header(false);
        let bytes_end = header.len();
        assert!(
            rows.lines().all(|l| l.len() == bytes_end),
            "{header}\n{rows}"
        );
    }

    #[test]
    fn per_cpu_table_has_one_block_per_cpu() {
        let pc = counters_with(&[(Family::Ipv4, Action::Pass, vec![c(3, 294), c(2, 196)])]);
        let rows = table_rows(
            &IfaceStats {
                iface: "e",
                counters: &pc,
            },
            true,
        );
        let ipv4: Vec<Vec<&str>> = rows
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|w| w[2] == "ipv4" && w[3] == "pass")
            .collect();
        assert_eq!(
            ipv4,
            vec![
                vec!["e", "0", "ipv4", "pass", "3", "294"],
                vec!["e", "1", "ipv4", "pass", "2", "196"],
            ]
        );
    }

    #[test]
    fn reasons_sum_over_cpus_and_show_only_nonzero_rows() {
        let mut slots = vec![vec![Counter::default(); 2]; N_REASON_COUNTERS as usize];
        slots[reason_index(Family::Ipv4, Reason::BlockedSrc) as usize] = vec![c(2, 120), c(3, 180)];
        slots[reason_index(Family::Ipv6, Reason::BlockedSrc) as usize] = vec![c(1, 80), c(0, 0)];
        let t = PerCpuCounters { slots }.sum_reasons();
        assert_eq!(t.get(Family::Ipv4, Reason::BlockedSrc), c(5, 300));
        assert_eq!(t.reason(Reason::BlockedSrc), c(6, 380));
        let rows = reason_rows("e", &t);
        let lines: Vec<Vec<&str>> = rows
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            vec![
                vec!["e", "ipv4", "blocked-src", "drop", "5", "300"],
                vec!["e", "ipv6", "blocked-src", "drop", "1", "80"],
            ]
        );
        let pc = counters_with(&[]);
        let line = to_json_with_reasons(
            &IfaceStats {
                iface: "e",
                counters: &pc,
            },
            false,
            &t,
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["reasons"][0]["reason"], "blocked-src");
        assert_eq!(v["reasons"][0]["packets"], 5);
        assert_eq!(v["reasons"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn json_reports_family_totals_and_nonzero_rows() {
        let pc = counters_with(&[
            (Family::Ipv4, Action::Pass, vec![c(3, 294), c(2, 196)]),
            (Family::Ipv6, Action::Pass, vec![c(0, 0), c(4, 472)]),
        ]);
        let line = to_json(
            &IfaceStats {
                iface: "veth0",
                counters: &pc,
            },
            false,
        );
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["iface"], "veth0");
        assert_eq!(v["families"]["ipv4"]["packets"], 5);
        assert_eq!(v["families"]["ipv4"]["bytes"], 490);
        assert_eq!(v["families"]["ipv6"]["packets"], 4);
        assert_eq!(v["families"]["other"]["packets"], 0);
        assert_eq!(v["counters"].as_array().map(Vec::len), Some(2));
        assert!(v.get("per_cpu").is_none());
        let line = to_json(
            &IfaceStats {
                iface: "veth0",
                counters: &pc,
            },
            true,
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["per_cpu"][1]["counters"][0]["packets"], 2);
    }
}
