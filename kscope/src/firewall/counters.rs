//! Counter aggregation and `fw stats` output: pure functions over what the
//! per-CPU maps hold, so they are unit-tested without a kernel. Tables and
//! JSON are written through [`crate::output`].

use std::{
    io::{self, Write},
    time::Duration,
};

use kscope_common::fw::{
    Action, Counter, Family, N_ACTIONS, N_COUNTERS, N_REASON_COUNTERS, Reason, counter_index,
    reason_index,
};

use crate::output::{Column, Format, Output, Row};

/// Raw per-CPU contents of the counter map: `slots[index][cpu]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PerCpuCounters {
    pub(crate) slots: Vec<Vec<Counter>>,
}

/// Counters of one interface, summed over CPUs: `totals[counter_index]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) slots: [Counter; N_COUNTERS as usize],
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
    pub(crate) fn cpus(&self) -> usize {
        self.slots.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Sums every slot over all CPUs. Missing slots count as zero.
    pub(crate) fn sum(&self) -> Totals {
        let mut t = Totals::default();
        for (slot, per_cpu) in t.slots.iter_mut().zip(&self.slots) {
            *slot = per_cpu.iter().copied().fold(Counter::default(), add);
        }
        t
    }

    /// Sums a reason map ([`kscope_common::fw::MAP_REASONS`]) over CPUs.
    pub(crate) fn sum_reasons(&self) -> ReasonTotals {
        let mut slots = vec![Counter::default(); N_REASON_COUNTERS as usize];
        for (slot, per_cpu) in slots.iter_mut().zip(&self.slots) {
            *slot = per_cpu.iter().copied().fold(Counter::default(), add);
        }
        ReasonTotals { slots }
    }

    /// The (family, action) counters of a reason map: each reason's counts
    /// under its action, CPU by CPU.
    pub(crate) fn by_action(&self) -> PerCpuCounters {
        let cpus = self.cpus();
        let mut slots = vec![vec![Counter::default(); cpus]; N_COUNTERS as usize];
        for family in Family::ALL {
            for reason in Reason::ALL {
                let Some(from) = self.slots.get(reason_index(family, reason) as usize) else {
                    continue;
                };
                let to = &mut slots[counter_index(family, reason.action()) as usize];
                for (t, f) in to.iter_mut().zip(from) {
                    *t = add(*t, *f);
                }
            }
        }
        PerCpuCounters { slots }
    }

    /// The counters of one CPU.
    pub(crate) fn cpu(&self, cpu: usize) -> Totals {
        let mut t = Totals::default();
        for (slot, per_cpu) in t.slots.iter_mut().zip(&self.slots) {
            *slot = per_cpu.get(cpu).copied().unwrap_or_default();
        }
        t
    }
}

impl Totals {
    pub(crate) fn get(&self, family: Family, action: Action) -> Counter {
        self.slots[counter_index(family, action) as usize]
    }

    /// All actions of one family added up.
    pub(crate) fn family(&self, family: Family) -> Counter {
        Action::ALL
            .iter()
            .map(|&a| self.get(family, a))
            .fold(Counter::default(), add)
    }

    /// Per-second rates between an earlier snapshot and this one. Counters
    /// never go backwards, but a detach and re-attach in between resets them;
    /// that interval reads as zero rather than as a huge wrapped number.
    pub(crate) fn rates_since(&self, earlier: &Totals, elapsed: Duration) -> Rates {
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
pub(crate) struct ReasonTotals {
    pub(crate) slots: Vec<Counter>,
}

impl ReasonTotals {
    pub(crate) fn get(&self, family: Family, reason: Reason) -> Counter {
        self.slots
            .get(reason_index(family, reason) as usize)
            .copied()
            .unwrap_or_default()
    }

    /// One reason, all families added up.
    #[cfg(test)]
    pub(crate) fn reason(&self, reason: Reason) -> Counter {
        Family::ALL
            .iter()
            .map(|&f| self.get(f, reason))
            .fold(Counter::default(), add)
    }
}

/// Packets and bytes per second for each slot.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rates {
    pub(crate) slots: [(f64, f64); N_COUNTERS as usize],
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

/// One interface's counters and its counts by reason, as `fw stats`
/// shows them.
pub(crate) struct IfaceStats<'a> {
    pub(crate) iface: &'a str,
    pub(crate) counters: &'a PerCpuCounters,
    pub(crate) reasons: &'a ReasonTotals,
}

const IFACE: Column = Column::left("IFACE", "iface", 15);
const CPU: Column = Column::right("CPU", "cpu", 4);
const FAMILY: Column = Column::left("FAMILY", "family", 6);
const ACTION: Column = Column::left("ACTION", "action", 8);
const PACKETS: Column = Column::right("PACKETS", "packets", 14);
const BYTES: Column = Column::right("BYTES", "bytes", 16);

/// A counter: `{"packets", "bytes"}`.
const COUNTER: [Column; 2] = [PACKETS, BYTES];
/// A (family, action) counter: the counters table's columns after the
/// interface, and the members of each JSON `counters` entry.
const FAMILY_ACTION: [Column; 4] = [FAMILY, ACTION, PACKETS, BYTES];
/// The by-reason table's columns after the interface, and the members of
/// each JSON `reasons` entry.
const REASON: [Column; 5] = [
    FAMILY,
    Column::left("REASON", "reason", 16),
    Column::left("ACTION", "action", 6),
    PACKETS,
    BYTES,
];
/// `families`: one counter per family.
const FAMILIES: [Column; 3] = [
    Column::json(Family::Ipv4.name()),
    Column::json(Family::Ipv6.name()),
    Column::json(Family::Other.name()),
];
/// Each `per_cpu` entry.
const CPU_COUNTERS: [Column; 2] = [Column::json("cpu"), Column::json("counters")];
/// `--watch`: the rates table's columns after the interface, and the
/// members of each JSON `rates` entry.
const RATE: [Column; 4] = [
    FAMILY,
    ACTION,
    Column::right("PKT/S", "packets_per_sec", 14),
    Column::right("BYTES/S", "bytes_per_sec", 16),
];

const _: () = assert!(FAMILIES.len() == Family::ALL.len());

/// The counters table: `IFACE [CPU] FAMILY ACTION PACKETS BYTES`, with the
/// CPU column when `per_cpu`. [`counter_rows`] fills it.
pub(crate) fn counter_table<W: Write>(w: W, per_cpu: bool) -> Output<W> {
    let mut cols = vec![IFACE];
    cols.extend(FAMILY_ACTION);
    if per_cpu {
        cols.insert(1, CPU);
        cols[2] = FAMILY.gap(2);
    }
    Output::new(w, Format::Table, cols)
}

/// One interface's rows of a [`counter_table`]: its totals, or one block
/// per CPU when `per_cpu`.
pub(crate) fn counter_rows<W: Write>(
    out: &mut Output<W>,
    iface: &str,
    counters: &PerCpuCounters,
    per_cpu: bool,
) -> io::Result<()> {
    let blocks: Vec<(Option<usize>, Totals)> = if per_cpu {
        (0..counters.cpus())
            .map(|c| (Some(c), counters.cpu(c)))
            .collect()
    } else {
        vec![(None, counters.sum())]
    };
    for (cpu, totals) in blocks {
        for (f, a) in shown_rows(|i| totals.slots[i].packets != 0) {
            let c = totals.get(f, a);
            out.row(|r| {
                r.str(iface)?;
                if let Some(cpu) = cpu {
                    r.u64(cpu as u64)?;
                }
                r.str(f.name())?;
                r.str(a.name())?;
                r.u64(c.packets)?;
                r.u64(c.bytes)
            })?;
        }
    }
    Ok(())
}

/// Writes `fw stats`.
///
/// A table: the [`counter_table`] of every interface, then, after a blank
/// line, the counts by reason (`IFACE FAMILY REASON ACTION PACKETS BYTES`,
/// non-zero rows only).
///
/// JSON: one object per interface, on one line: `iface`; `families`
/// (`ipv4`, `ipv6`, `other`, each `packets` and `bytes`, all actions
/// summed); `counters` (every non-zero family/action pair: `family`,
/// `action`, `packets`, `bytes`); `per_cpu` (only when `per_cpu`: `cpu`
/// and its `counters`); `reasons` (every non-zero family/reason pair:
/// `family`, `reason`, `action`, `packets`, `bytes`).
pub(crate) fn write_stats<W: Write>(
    mut w: W,
    format: Format,
    stats: &[IfaceStats<'_>],
    per_cpu: bool,
) -> io::Result<()> {
    if format == Format::Json {
        let mut cols = vec![
            Column::json("iface"),
            Column::json("families"),
            Column::json("counters"),
        ];
        if per_cpu {
            cols.push(Column::json("per_cpu"));
        }
        cols.push(Column::json("reasons"));
        let mut out = Output::new(w, format, cols);
        for s in stats {
            out.row(|r| json_stats(r, s, per_cpu))?;
        }
        return out.flush();
    }
    let mut out = counter_table(&mut w, per_cpu);
    out.header()?;
    for s in stats {
        counter_rows(&mut out, s.iface, s.counters, per_cpu)?;
    }
    out.flush()?;
    drop(out);
    writeln!(w)?;
    let mut out = Output::new(&mut w, format, with_iface(&REASON));
    out.header()?;
    for s in stats {
        for (f, reason, c) in by_reason(s.reasons).filter(|(_, _, c)| c.packets != 0) {
            out.row(|r| {
                r.str(s.iface)?;
                reason_cells(r, f, reason, c)
            })?;
        }
    }
    out.flush()
}

fn with_iface(cols: &[Column]) -> Vec<Column> {
    std::iter::once(IFACE).chain(cols.iter().copied()).collect()
}

/// Every (family, reason) with its counter.
fn by_reason(t: &ReasonTotals) -> impl Iterator<Item = (Family, Reason, Counter)> + '_ {
    Family::ALL
        .into_iter()
        .flat_map(move |f| Reason::ALL.into_iter().map(move |r| (f, r, t.get(f, r))))
}

/// Every (family, action) with its counter.
fn by_action(t: &Totals) -> impl Iterator<Item = (Family, Action, Counter)> + '_ {
    Family::ALL
        .into_iter()
        .flat_map(move |f| Action::ALL.into_iter().map(move |a| (f, a, t.get(f, a))))
}

fn nonzero(c: &Counter) -> bool {
    c.packets != 0 || c.bytes != 0
}

/// The [`REASON`] cells.
fn reason_cells<W: Write>(
    r: &mut Row<'_, W>,
    f: Family,
    reason: Reason,
    c: Counter,
) -> io::Result<()> {
    r.str(f.name())?;
    r.str(reason.name())?;
    r.str(reason.action().name())?;
    r.u64(c.packets)?;
    r.u64(c.bytes)
}

/// `counters`: every non-zero (family, action) of `t`.
fn json_counters<W: Write>(r: &mut Row<'_, W>, t: &Totals) -> io::Result<()> {
    r.objects(
        &FAMILY_ACTION,
        by_action(t).filter(|(_, _, c)| nonzero(c)),
        |r, (f, a, c)| {
            r.str(f.name())?;
            r.str(a.name())?;
            r.u64(c.packets)?;
            r.u64(c.bytes)
        },
    )
}

/// One interface's `fw stats --json` object (see [`write_stats`]).
fn json_stats<W: Write>(r: &mut Row<'_, W>, s: &IfaceStats<'_>, per_cpu: bool) -> io::Result<()> {
    let t = s.counters.sum();
    r.str(s.iface)?;
    r.object(&FAMILIES, |r| {
        for f in Family::ALL {
            let c = t.family(f);
            r.object(&COUNTER, |r| {
                r.u64(c.packets)?;
                r.u64(c.bytes)
            })?;
        }
        Ok(())
    })?;
    json_counters(r, &t)?;
    if per_cpu {
        r.objects(&CPU_COUNTERS, 0..s.counters.cpus(), |r, cpu| {
            r.u64(cpu as u64)?;
            json_counters(r, &s.counters.cpu(cpu))
        })?;
    }
    r.objects(
        &REASON,
        by_reason(s.reasons).filter(|(_, _, c)| nonzero(c)),
        |r, (f, reason, c)| reason_cells(r, f, reason, c),
    )
}

/// The [`RATE`] cells.
fn rate_cells<W: Write>(
    r: &mut Row<'_, W>,
    f: Family,
    a: Action,
    (p, b): (f64, f64),
) -> io::Result<()> {
    r.str(f.name())?;
    r.str(a.name())?;
    r.f64_exact(p, 1)?;
    r.f64_exact(b, 1)
}

/// Writes one `fw stats --watch` interval: the rates of each interface
/// over `interval`.
///
/// A table (`IFACE FAMILY ACTION PKT/S BYTES/S`, the rows a counters table
/// would show) under its header, then a blank line. JSON: one object per
/// interface, on one line: `iface`, `interval_secs`, and `rates`, every
/// non-zero (family, action) as `family`, `action`, `packets_per_sec`,
/// `bytes_per_sec`.
pub(crate) fn write_rates<W: Write>(
    mut w: W,
    format: Format,
    interval: Duration,
    rates: &[(&str, Rates)],
) -> io::Result<()> {
    if format == Format::Json {
        let cols = vec![
            Column::json("iface"),
            Column::json("interval_secs"),
            Column::json("rates"),
        ];
        let mut out = Output::new(&mut w, format, cols);
        for (iface, rates) in rates {
            out.row(|r| {
                r.str(iface)?;
                r.f64_exact(interval.as_secs_f64(), 3)?;
                let all = Family::ALL.into_iter().flat_map(|f| {
                    Action::ALL
                        .into_iter()
                        .map(move |a| (f, a, rates.slots[counter_index(f, a) as usize]))
                });
                r.objects(
                    &RATE,
                    all.filter(|(_, _, (p, b))| *p != 0.0 || *b != 0.0),
                    |r, (f, a, pb)| rate_cells(r, f, a, pb),
                )
            })?;
        }
        return out.flush();
    }
    let mut out = Output::new(&mut w, format, with_iface(&RATE));
    out.header()?;
    for (iface, rates) in rates {
        for (f, a) in shown_rows(|i| rates.slots[i].0 != 0.0) {
            out.row(|r| {
                r.str(iface)?;
                rate_cells(r, f, a, rates.slots[counter_index(f, a) as usize])
            })?;
        }
    }
    writeln!(out.writer())?;
    out.flush()
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
    fn reasons_add_up_by_their_action_per_cpu() {
        let mut slots = vec![vec![Counter::default(); 2]; N_REASON_COUNTERS as usize];
        let mut set = |f, r, per_cpu: Vec<Counter>| slots[reason_index(f, r) as usize] = per_cpu;
        set(Family::Ipv4, Reason::BlockedSrc, vec![c(1, 10), c(2, 20)]);
        set(Family::Ipv4, Reason::RateLimited, vec![c(4, 40), c(0, 0)]);
        set(Family::Ipv4, Reason::Allowed, vec![c(8, 80), c(16, 160)]);
        set(
            Family::Ipv6,
            Reason::NeighborDiscovery,
            vec![c(0, 0), c(32, 320)],
        );
        set(Family::Other, Reason::ParseError, vec![c(64, 640), c(0, 0)]);
        let a = PerCpuCounters { slots }.by_action();
        assert_eq!(a.cpu(0).get(Family::Ipv4, Action::Drop), c(5, 50));
        assert_eq!(a.cpu(1).get(Family::Ipv4, Action::Drop), c(2, 20));
        assert_eq!(a.sum().get(Family::Ipv4, Action::Pass), c(24, 240));
        assert_eq!(a.sum().get(Family::Ipv6, Action::Pass), c(32, 320));
        assert_eq!(a.sum().get(Family::Other, Action::Drop), c(64, 640));
        assert_eq!(a.sum().get(Family::Ipv6, Action::Drop), c(0, 0));
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

    fn render(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut v = Vec::new();
        f(&mut v).expect("render");
        String::from_utf8(v).expect("utf8")
    }

    fn counter_table_of(iface: &str, pc: &PerCpuCounters, per_cpu: bool) -> String {
        render(|v| {
            let mut out = counter_table(v, per_cpu);
            counter_rows(&mut out, iface, pc, per_cpu)?;
            out.flush()
        })
    }

    fn words(text: &str) -> Vec<Vec<&str>> {
        text.lines()
            .map(|l| l.split_whitespace().collect())
            .collect()
    }

    #[test]
    fn table_shows_pass_and_drop_for_every_family_and_other_actions_when_nonzero() {
        let pc = counters_with(&[
            (Family::Ipv4, Action::Pass, vec![c(3, 294), c(2, 196)]),
            (Family::Other, Action::Tx, vec![c(1, 60), c(0, 0)]),
        ]);
        let text = counter_table_of("veth0", &pc, false);
        let lines = words(&text);
        assert_eq!(lines.len(), 8, "{text}");
        assert_eq!(lines[0], ["IFACE", "FAMILY", "ACTION", "PACKETS", "BYTES"]);
        assert!(lines.contains(&vec!["veth0", "ipv4", "pass", "5", "490"]));
        assert!(lines.contains(&vec!["veth0", "ipv6", "drop", "0", "0"]));
        assert!(lines.contains(&vec!["veth0", "other", "tx", "1", "60"]));
        assert!(!text.contains("redirect"));
        // Columns line up with the header.
        assert_eq!(
            text.lines().next(),
            Some("IFACE           FAMILY ACTION          PACKETS            BYTES")
        );
        assert!(text.lines().all(|l| l.len() == 63), "{text}");
    }

    #[test]
    fn per_cpu_table_has_one_block_per_cpu() {
        let pc = counters_with(&[(Family::Ipv4, Action::Pass, vec![c(3, 294), c(2, 196)])]);
        let text = counter_table_of("e", &pc, true);
        let lines = words(&text);
        assert_eq!(
            text.lines().take(2).collect::<Vec<_>>(),
            [
                "IFACE            CPU  FAMILY ACTION          PACKETS            BYTES",
                "e                  0  ipv4   drop                  0                0",
            ]
        );
        let ipv4: Vec<&Vec<&str>> = lines
            .iter()
            .filter(|w| w[2] == "ipv4" && w[3] == "pass")
            .collect();
        assert_eq!(
            ipv4,
            [
                &vec!["e", "0", "ipv4", "pass", "3", "294"],
                &vec!["e", "1", "ipv4", "pass", "2", "196"],
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
        let pc = counters_with(&[]);
        let stats = [IfaceStats {
            iface: "e",
            counters: &pc,
            reasons: &t,
        }];
        let text = render(|v| write_stats(v, Format::Table, &stats, false));
        // The counters table, a blank line, the by-reason table.
        let (counters, reasons) = text.split_once("\n\n").expect("two tables");
        assert_eq!(words(counters).len(), 7, "{text}");
        assert_eq!(
            words(reasons),
            vec![
                vec!["IFACE", "FAMILY", "REASON", "ACTION", "PACKETS", "BYTES"],
                vec!["e", "ipv4", "blocked-src", "drop", "5", "300"],
                vec!["e", "ipv6", "blocked-src", "drop", "1", "80"],
            ]
        );
        assert_eq!(
            reasons.lines().nth(1),
            Some("e               ipv4   blocked-src      drop                5              300")
        );
        let line = render(|v| write_stats(v, Format::Json, &stats, false));
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["reasons"][0]["reason"], "blocked-src");
        assert_eq!(v["reasons"][0]["action"], "drop");
        assert_eq!(v["reasons"][0]["packets"], 5);
        assert_eq!(v["reasons"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn json_reports_family_totals_and_nonzero_rows() {
        let pc = counters_with(&[
            (Family::Ipv4, Action::Pass, vec![c(3, 294), c(2, 196)]),
            (Family::Ipv6, Action::Pass, vec![c(0, 0), c(4, 472)]),
        ]);
        let reasons = PerCpuCounters::default().sum_reasons();
        let stats = [
            IfaceStats {
                iface: "veth0",
                counters: &pc,
                reasons: &reasons,
            },
            IfaceStats {
                iface: "veth1",
                counters: &pc,
                reasons: &reasons,
            },
        ];
        let text = render(|v| write_stats(v, Format::Json, &stats, false));
        assert_eq!(text.lines().count(), 2, "one line per interface: {text}");
        let v: serde_json::Value =
            serde_json::from_str(text.lines().next().unwrap_or("")).expect("valid JSON");
        assert_eq!(v["iface"], "veth0");
        assert_eq!(v["families"]["ipv4"]["packets"], 5);
        assert_eq!(v["families"]["ipv4"]["bytes"], 490);
        assert_eq!(v["families"]["ipv6"]["packets"], 4);
        assert_eq!(v["families"]["other"]["packets"], 0);
        assert_eq!(v["counters"].as_array().map(Vec::len), Some(2));
        assert!(v.get("per_cpu").is_none());
        assert_eq!(v["reasons"], serde_json::json!([]));
        let text = render(|v| write_stats(v, Format::Json, &stats[..1], true));
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["per_cpu"][1]["cpu"], 1);
        assert_eq!(v["per_cpu"][1]["counters"][0]["packets"], 2);
    }

    /// The JSON keeps the shape and the member order it had when serde
    /// wrote it, byte for byte.
    #[test]
    fn json_lines_are_byte_for_byte_the_documented_shape() {
        let pc = counters_with(&[(Family::Ipv4, Action::Pass, vec![c(3, 294), c(2, 196)])]);
        let mut slots = vec![vec![Counter::default(); 1]; N_REASON_COUNTERS as usize];
        slots[reason_index(Family::Ipv4, Reason::PassedDefault) as usize] = vec![c(5, 490)];
        let reasons = PerCpuCounters { slots }.sum_reasons();
        let stats = [IfaceStats {
            iface: "veth0",
            counters: &pc,
            reasons: &reasons,
        }];
        let text = render(|v| write_stats(v, Format::Json, &stats, true));
        assert_eq!(
            text,
            concat!(
                r#"{"iface":"veth0","families":{"ipv4":{"packets":5,"bytes":490},"#,
                r#""ipv6":{"packets":0,"bytes":0},"other":{"packets":0,"bytes":0}},"#,
                r#""counters":[{"family":"ipv4","action":"pass","packets":5,"bytes":490}],"#,
                r#""per_cpu":[{"cpu":0,"counters":[{"family":"ipv4","action":"pass","packets":3,"bytes":294}]},"#,
                r#"{"cpu":1,"counters":[{"family":"ipv4","action":"pass","packets":2,"bytes":196}]}],"#,
                r#""reasons":[{"family":"ipv4","reason":"passed-default","action":"pass","packets":5,"bytes":490}]}"#,
                "\n"
            )
        );
    }

    #[test]
    fn watch_rates_render_as_a_table_and_as_json() {
        let before = counters_with(&[]);
        let after = counters_with(&[(Family::Ipv4, Action::Pass, vec![c(3, 300), c(0, 0)])]);
        let interval = Duration::from_millis(200);
        let rates = after.sum().rates_since(&before.sum(), interval);
        let all = [("veth0", rates)];
        let text = render(|v| write_rates(v, Format::Table, interval, &all));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "IFACE           FAMILY ACTION            PKT/S          BYTES/S"
        );
        assert!(
            lines.contains(&"veth0           ipv4   pass               15.0           1500.0"),
            "{text}"
        );
        // Pass and drop of three families, then a blank line.
        assert_eq!(lines.len(), 8, "{text}");
        assert!(text.ends_with("\n\n"), "{text:?}");
        let text = render(|v| write_rates(v, Format::Json, interval, &all));
        assert_eq!(
            text,
            concat!(
                r#"{"iface":"veth0","interval_secs":0.2,"rates":[{"family":"ipv4","action":"pass","#,
                r#""packets_per_sec":15.0,"bytes_per_sec":1500.0}]}"#,
                "\n"
            )
        );
    }
}
