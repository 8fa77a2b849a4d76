//! What `/metrics` serves, read at scrape time.
//!
//! Firewall counters, rule hits and per-program BPF stats live in the
//! kernel, so the collector reads them on every scrape instead of copying
//! them on a timer: a scrape always sees the kernel's current totals, and
//! nothing is lost between scrapes. Tracer aggregates are kept by the
//! daemon's consumers in [`State`].
//!
//! Metric names and labels (documented in the README; counter samples
//! get `_total` appended by the encoder, see [`super::expo`]):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kscope_fw_packets_total` | counter | iface, family, action, reason |
//! | `kscope_fw_bytes_total` | counter | iface, family, action, reason |
//! | `kscope_fw_rule_hits_total` | counter | iface, rule (top `[firewall] max_rule_series`, then `[other]`) |
//! | `kscope_fw_rules` | gauge | iface |
//! | `kscope_trace_events_total` | counter | tracer |
//! | `kscope_trace_lost_events_total` | counter | tracer |
//! | `kscope_trace_opens_total` | counter | comm |
//! | `kscope_trace_open_errors_total` | counter | comm |
//! | `kscope_trace_execs_total` | counter | comm, result |
//! | `kscope_trace_connects_total` | counter | daddr, dport, result |
//! | `kscope_hist_runq_latency_seconds` | histogram | |
//! | `kscope_hist_syscall_latency_seconds` | histogram | syscall |
//! | `kscope_hist_block_latency_seconds` | histogram | device, op |
//! | `kscope_bpf_program_run_time_seconds_total` | counter | id, name, type, comm (`[trace] max_series` programs, then `[other]`) |
//! | `kscope_bpf_program_run_count_total` | counter | id, name, type, comm |
//! | `kscope_bpf_program_map_bytes` | gauge | id, name, type, comm |
//! | `kscope_daemon_reloads_total` | counter | result |
//! | `kscope_daemon_config_last_reload_successful` | gauge | |
//! | `kscope_daemon_scrape_errors_total` | counter | |
//! | `kscope_daemon_scrapes_total` | counter | |

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use kscope_common::fw::{Family, Reason};

use kscope_common::trace::Counts;

use super::{
    expo::{Exposition, FamilyWriter, Format, MetricType, Value},
    rule_hits::{RuleScrape, RuleSeries},
};
use crate::{
    firewall::{
        self,
        maps::{HitCounts, RuleMaps},
    },
    sys::Chain,
    top::Collector,
    trace::runner::Counting,
};

/// The key of a tracer's entry in [`State::problems`].
pub(crate) fn tracer_problem_key(name: &str) -> String {
    format!("{name} tracer")
}

/// Label value that sums the series over a tracer's `max_series`.
const OTHER: &str = "[other]";

/// A running tracer: its kernel counter, and which label sets it exports.
pub(crate) struct TracerSlot {
    pub(crate) counter: Box<dyn Counting>,
    kept: Kept,
}

impl fmt::Debug for TracerSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracerSlot")
            .field("metric", &self.counter.metric().name)
            .field("kept", &self.kept)
            .finish_non_exhaustive()
    }
}

/// The label sets a tracer's metrics have a series for: first come, first
/// kept (largest first within one scrape), up to `max`; the rest are summed
/// under [`OTHER`], so every series only grows.
#[derive(Debug, Default)]
struct Kept {
    sets: HashSet<Vec<String>>,
    max: usize,
}

/// One scrape of a tracer: per kept label set its counts, the rest summed,
/// and the events lost.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TracerScrape {
    pub(crate) rows: Vec<(Vec<String>, Counts)>,
    pub(crate) other: Counts,
    pub(crate) lost: u64,
}

impl TracerScrape {
    /// Every event counted, kept or not.
    pub(crate) fn events(&self) -> u64 {
        self.rows
            .iter()
            .map(|(_, c)| c.events)
            .fold(self.other.events, u64::wrapping_add)
    }
}

impl TracerSlot {
    pub(crate) fn new(counter: Box<dyn Counting>, max: usize) -> Self {
        Self {
            counter,
            kept: Kept {
                sets: HashSet::new(),
                max,
            },
        }
    }

    pub(crate) fn set_max(&mut self, max: usize) {
        self.kept.max = max;
    }

    /// Reads the kernel's counts.
    ///
    /// # Errors
    /// A failed map read.
    pub(crate) fn scrape(&mut self) -> Result<TracerScrape, crate::trace::TraceError> {
        let (mut rows, lost) = self.counter.scrape()?;
        Ok(self.kept.fold(&mut rows, lost))
    }
}

impl Kept {
    fn fold(&mut self, rows: &mut Vec<(Vec<String>, Counts)>, lost: u64) -> TracerScrape {
        // Keys the daemon leaves out of the label set (the task) can make
        // two kernel keys one label set: merge them first.
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.dedup_by(|later, first| {
            if later.0 == first.0 {
                first.1.events = first.1.events.wrapping_add(later.1.events);
                first.1.failed = first.1.failed.wrapping_add(later.1.failed);
                true
            } else {
                false
            }
        });
        rows.sort_by(|a, b| b.1.events.cmp(&a.1.events).then_with(|| a.0.cmp(&b.0)));
        let mut out = TracerScrape {
            lost,
            ..TracerScrape::default()
        };
        for (labels, c) in rows.drain(..) {
            if self.sets.contains(&labels) || self.sets.len() < self.max {
                self.sets.insert(labels.clone());
                out.rows.push((labels, c));
            } else {
                out.other.events = out.other.events.wrapping_add(c.events);
                out.other.failed = out.other.failed.wrapping_add(c.failed);
            }
        }
        out
    }
}

/// What the daemon's tasks update and the collector reads.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Interfaces the daemon manages the firewall on.
    pub(crate) fw_ifaces: Vec<String>,
    /// Running tracers by name, each behind a lock of its own so that
    /// reading one's kernel maps does not hold this state's lock.
    pub(crate) tracers: BTreeMap<&'static str, Arc<Mutex<TracerSlot>>>,
    pub(crate) bpf_stats: bool,
    pub(crate) reloads_ok: u64,
    pub(crate) reloads_failed: u64,
    pub(crate) last_reload_ok: bool,
    /// Why the daemon is unhealthy, by component; empty when healthy. A
    /// tracer whose kernel counters the last scrape could not read is one
    /// (see [`tracer_problem_key`]).
    pub(crate) problems: BTreeMap<String, String>,
}

/// [`State`] behind a lock, shared by the daemon's tasks and the HTTP
/// server.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    scrape_errors: AtomicU64,
    /// Scrapes computed (requests abandoned before their turn are not).
    scrapes: AtomicU64,
    /// Rule-hit series by interface; only scrapes take this lock, never
    /// the daemon's other tasks or `/healthz`.
    rule_series: Mutex<HashMap<String, RuleSeries>>,
    /// `[firewall] max_rule_series`.
    max_rule_series: AtomicU64,
    /// The program collector and its series; only scrapes take this lock.
    prog_series: Mutex<ProgSeries>,
    /// `[trace] max_series`, which bounds the program series too.
    max_prog_series: AtomicU64,
    /// The running latency histograms, behind a lock of their own.
    pub(crate) hists: super::hists::HistSlots,
}

/// One program series of a scrape.
#[derive(Debug)]
struct ProgRow {
    id: String,
    name: String,
    type_name: &'static str,
    comm: String,
    run_time_ns: u64,
    run_count: u64,
    map_bytes: u64,
}

impl ProgRow {
    fn labels(&self) -> [(&'static str, &str); 4] {
        [
            ("id", &self.id),
            ("name", &self.name),
            ("type", self.type_name),
            ("comm", &self.comm),
        ]
    }
}

/// The programs' series: the first `max_series` programs seen keep a
/// series of their own while they stay loaded; the runs and run time of
/// the others add up under `[other]`, which never goes down (it is summed
/// from each program's increments).
#[derive(Debug, Default)]
struct ProgSeries {
    collector: Option<Collector>,
    own: HashSet<u32>,
    /// Programs counted in `[other]`: their totals at the last scrape.
    others: HashMap<u32, (u64, u64)>,
    other_time_ns: u64,
    other_count: u64,
}

impl ProgSeries {
    fn rows(&mut self, max: usize) -> Vec<ProgRow> {
        let mut rows = Vec::new();
        let Some(c) = self.collector.as_ref() else {
            return rows;
        };
        self.own.retain(|id| c.progs().any(|p| p.id == *id));
        let mut other_bytes = 0u64;
        let mut still = HashMap::with_capacity(self.others.len());
        for p in c.progs() {
            if !self.own.contains(&p.id) && !self.others.contains_key(&p.id) && self.own.len() < max
            {
                self.own.insert(p.id);
            }
            if self.own.contains(&p.id) {
                let mut comms: Vec<String> = p
                    .pids
                    .iter()
                    .map(|&pid| String::from_utf8_lossy(c.comm(pid)).into_owned())
                    .collect();
                comms.sort_unstable();
                comms.dedup();
                rows.push(ProgRow {
                    id: p.id.to_string(),
                    name: p.name.clone(),
                    type_name: p.type_name,
                    comm: comms.join(","),
                    run_time_ns: p.run_time_ns,
                    run_count: p.run_count,
                    map_bytes: p.map_bytes,
                });
            } else {
                let (t0, c0) = self.others.get(&p.id).copied().unwrap_or((0, 0));
                self.other_time_ns = self
                    .other_time_ns
                    .wrapping_add(p.run_time_ns.saturating_sub(t0));
                self.other_count = self
                    .other_count
                    .wrapping_add(p.run_count.saturating_sub(c0));
                still.insert(p.id, (p.run_time_ns, p.run_count));
                other_bytes = other_bytes.saturating_add(p.map_bytes);
            }
        }
        self.others = still;
        if !self.others.is_empty() || self.other_count > 0 {
            rows.push(ProgRow {
                id: OTHER.into(),
                name: OTHER.into(),
                type_name: OTHER,
                comm: OTHER.into(),
                run_time_ns: self.other_time_ns,
                run_count: self.other_count,
                map_bytes: other_bytes,
            });
        }
        rows
    }
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        let s = Self::default();
        s.lock().last_reload_ok = true;
        s.set_max_rule_series(super::config::DEFAULT_MAX_RULE_SERIES);
        s.set_max_prog_series(1000);
        Arc::new(s)
    }

    /// Sets `[firewall] max_rule_series` (see [`RuleSeries::set_max`]).
    pub(crate) fn set_max_rule_series(&self, max: usize) {
        self.max_rule_series.store(max as u64, Ordering::Relaxed);
    }

    /// Sets `[trace] max_series`, which also bounds the program series.
    pub(crate) fn set_max_prog_series(&self, max: usize) {
        self.max_prog_series.store(max as u64, Ordering::Relaxed);
    }

    fn max_prog_series(&self) -> usize {
        usize::try_from(self.max_prog_series.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    fn max_rule_series(&self) -> usize {
        usize::try_from(self.max_rule_series.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// The state. A panic in another task while holding the lock does not
    /// make the metrics unreadable: the data is counters, always usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scrape_error(&self, what: &str, e: &(dyn std::error::Error + 'static)) {
        self.scrape_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("metrics: {what}: {}", Chain(e));
    }

    /// Records what the last scrape of the tracer `name` found: `problem`
    /// for `/healthz` to report (under `NAME tracer`), or none any more.
    /// Nothing is recorded for a tracer stopped (or restarted) while the
    /// scrape held its old `slot`.
    fn tracer_health(
        &self,
        name: &'static str,
        slot: &Arc<Mutex<TracerSlot>>,
        problem: Option<String>,
    ) {
        let mut s = self.lock();
        if !s.tracers.get(name).is_some_and(|t| Arc::ptr_eq(t, slot)) {
            return;
        }
        let key = tracer_problem_key(name);
        match problem {
            Some(p) => {
                s.problems.insert(key, p);
            }
            None => {
                s.problems.remove(&key);
            }
        }
    }
}

/// The `/metrics` collector.
#[derive(Debug)]
pub(crate) struct KscopeCollector(pub(crate) Arc<Shared>);

/// Writes counter or gauge families.
struct Out {
    enc: Exposition,
}

impl Out {
    fn family<'s>(
        &'s mut self,
        name: &str,
        help: &str,
        kind: MetricType,
    ) -> Result<FamilyWriter<'s>, fmt::Error> {
        Ok(self.enc.family(name, help, kind))
    }
}

fn counter(m: &mut FamilyWriter<'_>, labels: &[(&str, &str)], v: u64) -> fmt::Result {
    m.sample(labels, Value::Int(v));
    Ok(())
}

fn counter_f64(m: &mut FamilyWriter<'_>, labels: &[(&str, &str)], v: f64) -> fmt::Result {
    m.sample(labels, Value::Float(v));
    Ok(())
}

fn gauge(m: &mut FamilyWriter<'_>, labels: &[(&str, &str)], v: i64) -> fmt::Result {
    m.sample(labels, Value::Signed(v));
    Ok(())
}

impl KscopeCollector {
    /// One scrape, in `format`. Blocking: it reads kernel maps, so the
    /// HTTP server runs it off its event loop.
    pub(crate) fn encode(&self, format: Format) -> String {
        let mut out = Out {
            enc: Exposition::new(format),
        };
        self.0.scrapes.fetch_add(1, Ordering::Relaxed);
        let shared = &self.0;
        // Copy what is needed out of the lock so kernel reads below do not
        // hold it.
        let (ifaces, bpf_stats) = {
            let s = shared.lock();
            (s.fw_ifaces.clone(), s.bpf_stats)
        };
        // Writing into a String does not fail; the Results only carry the
        // shape of the family helpers.
        let _ = self.firewall(&mut out, &ifaces);
        let _ = self.tracers(&mut out);
        let _ = self.hists(&mut out);
        if bpf_stats {
            let _ = self.programs(&mut out);
        }
        let _ = self.daemon(&mut out);
        out.enc.finish()
    }

    /// The rule-hit series of `iface`: the cached rule list, read again
    /// only when the rule set's generation moved, and the hit counters.
    fn rule_hits(
        &self,
        iface: &str,
        series: &mut RuleSeries,
    ) -> Result<RuleScrape, firewall::FwError> {
        let maps = RuleMaps::from_pins(&firewall::pin_dir(iface))?;
        let generation = maps.generation()?;
        if !series.is_current(&generation) {
            series.set_rules(generation, maps.rules_with_keys()?);
        }
        let hits = HitCounts::new(maps.read_hits()?);
        Ok(series.scrape(&hits))
    }

    fn firewall(&self, out: &mut Out, ifaces: &[String]) -> fmt::Result {
        let mut reasons = Vec::new();
        let mut rules = Vec::new();
        {
            let max = self.0.max_rule_series();
            let mut all = self.0.rule_series.lock().unwrap_or_else(|p| p.into_inner());
            all.retain(|iface, _| ifaces.contains(iface));
            for iface in ifaces {
                match firewall::read_reasons(iface) {
                    Ok(r) => reasons.push((iface, r.sum_reasons())),
                    Err(e) => self.0.scrape_error(&format!("{iface} counters"), &e),
                }
                let series = all
                    .entry(iface.clone())
                    .or_insert_with(|| RuleSeries::new(max));
                series.set_max(max);
                match self.rule_hits(iface, series) {
                    Ok(r) => rules.push((iface, r)),
                    Err(e) => self.0.scrape_error(&format!("{iface} rules"), &e),
                }
            }
        }
        for (name, help, bytes) in [
            (
                "kscope_fw_packets",
                "Packets the XDP firewall saw, by verdict and the reason for it.",
                false,
            ),
            (
                "kscope_fw_bytes",
                "Bytes the XDP firewall saw, by verdict and the reason for it.",
                true,
            ),
        ] {
            let mut m = out.family(name, help, MetricType::Counter)?;
            for (iface, totals) in &reasons {
                for family in Family::ALL {
                    for reason in Reason::ALL {
                        let c = totals.get(family, reason);
                        let labels = [
                            ("iface", iface.as_str()),
                            ("family", family.name()),
                            ("action", reason.action().name()),
                            ("reason", reason.name()),
                        ];
                        counter(&mut m, &labels, if bytes { c.bytes } else { c.packets })?;
                    }
                }
            }
        }
        let mut m = out.family(
            "kscope_fw_rule_hits",
            "Packets each firewall rule matched since it was loaded; the rules beyond [firewall] max_rule_series are summed under rule=\"[other]\".",
            MetricType::Counter,
        )?;
        for (iface, r) in &rules {
            for (rule, hits) in &r.series {
                let rule = rule.to_string();
                counter(&mut m, &[("iface", iface), ("rule", &rule)], *hits)?;
            }
            counter(&mut m, &[("iface", iface), ("rule", OTHER)], r.other)?;
        }
        let mut m = out.family(
            "kscope_fw_rules",
            "Firewall rules in place.",
            MetricType::Gauge,
        )?;
        for (iface, r) in &rules {
            gauge(&mut m, &[("iface", iface)], r.rules as i64)?;
        }
        Ok(())
    }

    /// Every `[hist]` family (empty when off), as Prometheus histograms:
    /// cumulative `_bucket`s at the log2 bounds (`le` in seconds, from
    /// 1.024 µs to 68.7 s, and `+Inf`), `_sum` and `_count`.
    fn hists(&self, out: &mut Out) -> fmt::Result {
        use super::hists::{HISTS, LE_FIRST, LE_LAST, le_seconds};
        for d in HISTS {
            let slot = self.0.hists.get(d.name);
            let mut m = out.family(d.metric, d.help, MetricType::Histogram)?;
            let Some(slot) = slot else { continue };
            let (rows, by_cgroup) = {
                let mut g = slot.lock().unwrap_or_else(|p| p.into_inner());
                let by_cgroup = g.by_cgroup;
                (g.scrape(d.labels.len() + usize::from(by_cgroup)), by_cgroup)
            };
            let names: Vec<&str> = d
                .labels
                .iter()
                .copied()
                .chain(by_cgroup.then_some("cgroup"))
                .collect();
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    self.0.scrape_error(&format!("{} histogram", d.name), &e);
                    continue;
                }
            };
            let les: Vec<String> = (LE_FIRST..=LE_LAST)
                .map(|i| format!("{:?}", le_seconds(i)))
                .collect();
            for (values, h) in &rows {
                let mut labels: Vec<(&str, &str)> = names
                    .iter()
                    .copied()
                    .zip(values.iter().map(String::as_str))
                    .collect();
                let mut cum: u64 = h.slots[..LE_FIRST].iter().sum();
                for (i, le) in (LE_FIRST..=LE_LAST).zip(&les) {
                    cum += h.slots[i];
                    labels.push(("le", le));
                    m.suffixed("_bucket", &labels, Value::Int(cum));
                    labels.pop();
                }
                labels.push(("le", "+Inf"));
                m.suffixed("_bucket", &labels, Value::Int(h.count));
                labels.pop();
                m.suffixed("_sum", &labels, Value::Float(h.sum_ns as f64 / 1e9));
                m.suffixed("_count", &labels, Value::Int(h.count));
            }
        }
        Ok(())
    }

    fn tracers(&self, out: &mut Out) -> fmt::Result {
        let slots: Vec<(&'static str, Arc<Mutex<TracerSlot>>)> = self
            .0
            .lock()
            .tracers
            .iter()
            .map(|(n, s)| (*n, s.clone()))
            .collect();
        let mut scrapes = Vec::with_capacity(slots.len());
        for (name, slot) in &slots {
            let result = {
                let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
                guard.scrape().map(|s| (*name, guard.counter.metric(), s))
            };
            let problem = match result {
                Ok(s) => {
                    scrapes.push(s);
                    None
                }
                Err(e) => {
                    self.0.scrape_error(&format!("{name} tracer counts"), &e);
                    Some(format!("reading its kernel counters failed: {}", Chain(&e)))
                }
            };
            self.0.tracer_health(name, slot, problem);
        }
        for (name, help, lost) in [
            (
                "kscope_trace_events",
                "Events each running tracer counted.",
                false,
            ),
            (
                "kscope_trace_lost_events",
                "Events each running tracer lost (count table full, or the kernel skipped its \
                 program while another BPF program ran on that CPU).",
                true,
            ),
        ] {
            let mut m = out.family(name, help, MetricType::Counter)?;
            for (tracer, _, s) in &scrapes {
                counter(
                    &mut m,
                    &[("tracer", tracer)],
                    if lost { s.lost } else { s.events() },
                )?;
            }
        }
        // Every tracer's families, in registry order, present (and empty)
        // even when the tracer is off.
        for entry in crate::trace::runner::TRACERS {
            let scrape = scrapes.iter().find(|(n, _, _)| *n == entry.name);
            let metric = entry.metric;
            let families = std::iter::once((metric.name, metric.help, false))
                .chain(metric.errors.map(|(n, h)| (n, h, true)));
            for (name, help, failed) in families {
                let mut m = out.family(name, help, MetricType::Counter)?;
                let Some((_, _, s)) = scrape else { continue };
                let pick = |c: &Counts| if failed { c.failed } else { c.events };
                let mut labels: Vec<(&str, &str)> = Vec::with_capacity(metric.labels.len());
                for (values, c) in &s.rows {
                    labels.clear();
                    labels.extend(
                        metric
                            .labels
                            .iter()
                            .copied()
                            .zip(values.iter().map(String::as_str)),
                    );
                    counter(&mut m, &labels, pick(c))?;
                }
                labels.clear();
                labels.extend(metric.labels.iter().map(|l| (*l, OTHER)));
                counter(&mut m, &labels, pick(&s.other))?;
            }
        }
        Ok(())
    }

    /// Every BPF program on the system, as `kscope top` lists them (the
    /// same collector), each labelled with the processes holding it.
    fn programs(&self, out: &mut Out) -> fmt::Result {
        let max = self.0.max_prog_series();
        let mut guard = self.0.prog_series.lock().unwrap_or_else(|p| p.into_inner());
        let series = &mut *guard;
        if series.collector.is_none() {
            match Collector::new(true) {
                Ok(c) => series.collector = Some(c),
                Err(e) => {
                    self.0.scrape_error("listing BPF programs", &e);
                    return Ok(());
                }
            }
        }
        let Some(c) = series.collector.as_mut() else {
            return Ok(());
        };
        if let Err(e) = c.refresh() {
            self.0.scrape_error("listing BPF programs", &e);
            return Ok(());
        }
        let rows = series.rows(max);
        let mut m = out.family(
            "kscope_bpf_program_run_time_seconds",
            "Time each BPF program ran since stats were enabled (BPF_ENABLE_STATS).",
            MetricType::Counter,
        )?;
        for r in &rows {
            counter_f64(&mut m, &r.labels(), r.run_time_ns as f64 / 1e9)?;
        }
        let mut m = out.family(
            "kscope_bpf_program_run_count",
            "Runs of each BPF program since stats were enabled (BPF_ENABLE_STATS).",
            MetricType::Counter,
        )?;
        for r in &rows {
            counter(&mut m, &r.labels(), r.run_count)?;
        }
        let mut m = out.family(
            "kscope_bpf_program_map_bytes",
            "Memory of the maps each BPF program uses (each map's memlock).",
            MetricType::Gauge,
        )?;
        for r in &rows {
            gauge(
                &mut m,
                &r.labels(),
                i64::try_from(r.map_bytes).unwrap_or(i64::MAX),
            )?;
        }
        Ok(())
    }

    fn daemon(&self, out: &mut Out) -> fmt::Result {
        let (ok, failed, last_ok) = {
            let s = self.0.lock();
            (s.reloads_ok, s.reloads_failed, s.last_reload_ok)
        };
        let mut m = out.family(
            "kscope_daemon_reloads",
            "Config reloads (SIGHUP), by result.",
            MetricType::Counter,
        )?;
        counter(&mut m, &[("result", "success")], ok)?;
        counter(&mut m, &[("result", "failure")], failed)?;
        let mut m = out.family(
            "kscope_daemon_config_last_reload_successful",
            "1 when the last config reload succeeded (or there was none).",
            MetricType::Gauge,
        )?;
        gauge(&mut m, &[], i64::from(last_ok))?;
        let mut m = out.family(
            "kscope_daemon_scrape_errors",
            "Kernel reads that failed while serving /metrics (logged).",
            MetricType::Counter,
        )?;
        counter(&mut m, &[], self.0.scrape_errors.load(Ordering::Relaxed))?;
        let mut m = out.family(
            "kscope_daemon_scrapes",
            "Scrapes of /metrics computed, this one included (a request whose client left before its turn is not).",
            MetricType::Counter,
        )?;
        counter(&mut m, &[], self.0.scrapes.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(events: u64, failed: u64) -> Counts {
        Counts { events, failed }
    }

    fn row(labels: &[&str], events: u64, failed: u64) -> (Vec<String>, Counts) {
        (
            labels.iter().map(|s| s.to_string()).collect(),
            c(events, failed),
        )
    }

    #[test]
    fn series_are_kept_first_come_and_the_rest_summed() {
        let mut kept = Kept {
            sets: HashSet::new(),
            max: 2,
        };
        let first = kept.fold(
            &mut vec![
                row(&["small"], 1, 0),
                row(&["big"], 9, 2),
                row(&["mid"], 5, 1),
            ],
            3,
        );
        assert_eq!(first.rows, [row(&["big"], 9, 2), row(&["mid"], 5, 1)]);
        assert_eq!((first.other, first.lost), (c(1, 0), 3));
        assert_eq!(first.events(), 15);
        // "small" overtakes both, but the kept series stay: none moves to
        // [other], so no series ever goes down.
        let second = kept.fold(
            &mut vec![
                row(&["small"], 50, 0),
                row(&["big"], 10, 2),
                row(&["mid"], 6, 1),
            ],
            3,
        );
        assert_eq!(second.rows, [row(&["big"], 10, 2), row(&["mid"], 6, 1)]);
        assert_eq!(second.other, c(50, 0));
    }

    #[test]
    fn kernel_keys_that_share_a_label_set_are_merged() {
        let mut kept = Kept {
            sets: HashSet::new(),
            max: 1,
        };
        let s = kept.fold(
            &mut vec![
                row(&["a", "ok"], 2, 0),
                row(&["b", "ok"], 3, 0),
                row(&["a", "ok"], 2, 1),
            ],
            0,
        );
        assert_eq!(s.rows, [row(&["a", "ok"], 4, 1)]);
        assert_eq!(s.other, c(3, 0));
    }

    #[test]
    fn program_series_are_bounded_and_other_never_goes_down() {
        use crate::top::{Collector, test_prog};
        let mut s = ProgSeries {
            collector: Some(Collector::with_progs(vec![
                test_prog(1, 100, 10, 4096),
                test_prog(2, 200, 20, 0),
                test_prog(3, 300, 30, 8192),
            ])),
            ..ProgSeries::default()
        };
        let ids = |rows: &[ProgRow]| rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        let rows = s.rows(2);
        assert_eq!(ids(&rows), ["1", "2", OTHER]);
        let other = rows.last().expect("other");
        assert_eq!(
            (other.run_time_ns, other.run_count, other.map_bytes),
            (300, 30, 8192)
        );
        assert_eq!(rows[0].labels()[3], ("comm", ""));
        // Program 1 unloads and 4 arrives: 4 takes the free series, 3 stays
        // in [other], which adds 3's increment only.
        s.collector = Some(Collector::with_progs(vec![
            test_prog(2, 250, 25, 0),
            test_prog(3, 350, 31, 8192),
            test_prog(4, 5, 1, 0),
        ]));
        let rows = s.rows(2);
        assert_eq!(ids(&rows), ["2", "4", OTHER]);
        let other = rows.last().expect("other");
        assert_eq!((other.run_time_ns, other.run_count), (350, 31));
        // 3 unloads: [other] keeps what it counted.
        s.collector = Some(Collector::with_progs(vec![test_prog(2, 260, 26, 0)]));
        let rows = s.rows(2);
        assert_eq!(ids(&rows), ["2", OTHER]);
        let other = rows.last().expect("other");
        assert_eq!(
            (other.run_time_ns, other.run_count, other.map_bytes),
            (350, 31, 0)
        );
    }

    /// Fixed counts in place of a kernel counter: this test is about the
    /// rendering; tests/daemon.rs checks the kernel's counts.
    struct Fixed(crate::trace::Metric, Vec<(Vec<String>, Counts)>, u64);

    impl Counting for Fixed {
        fn metric(&self) -> crate::trace::Metric {
            self.0
        }

        fn scrape(&self) -> Result<crate::trace::runner::LabelledCounts, crate::trace::TraceError> {
            Ok((self.1.clone(), self.2))
        }
    }

    #[test]
    fn tracer_series_render_with_their_labels() {
        use crate::trace::{EventTracer as _, connect::Connect, exec::Exec};
        let shared = Shared::new();
        {
            let mut s = shared.lock();
            let exec = Fixed(
                Exec::METRIC,
                vec![row(&["true", "ok"], 3, 0), row(&["true", "ENOENT"], 2, 2)],
                0,
            );
            let conn = Fixed(
                Connect::METRIC,
                vec![row(&["127.0.0.1", "80", "ECONNREFUSED"], 1, 1)],
                7,
            );
            s.tracers.insert(
                "exec",
                Arc::new(Mutex::new(TracerSlot::new(Box::new(exec), 1))),
            );
            s.tracers.insert(
                "connect",
                Arc::new(Mutex::new(TracerSlot::new(Box::new(conn), 8))),
            );
        }
        let text = KscopeCollector(shared).encode(Format::OpenMetrics);
        for line in [
            "kscope_trace_execs_total{comm=\"true\",result=\"ok\"} 3",
            "kscope_trace_execs_total{comm=\"[other]\",result=\"[other]\"} 2",
            "kscope_trace_events_total{tracer=\"exec\"} 5",
            "kscope_trace_connects_total{daddr=\"127.0.0.1\",dport=\"80\",result=\"ECONNREFUSED\"} 1",
            "kscope_trace_lost_events_total{tracer=\"connect\"} 7",
            "kscope_daemon_reloads_total{result=\"failure\"} 0",
            "kscope_daemon_config_last_reload_successful 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(!text.contains("tracer=\"open\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
