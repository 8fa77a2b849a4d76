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
//! | `kscope_bpf_program_run_time_seconds_total` | counter | id, name, type |
//! | `kscope_bpf_program_run_count_total` | counter | id, name, type |
//! | `kscope_daemon_reloads_total` | counter | result |
//! | `kscope_daemon_config_last_reload_successful` | gauge | |
//! | `kscope_daemon_scrape_errors_total` | counter | |
//! | `kscope_daemon_scrapes_total` | counter | |

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    hash::Hash,
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use kscope_common::fw::{Family, Reason};

use super::{
    expo::{Exposition, FamilyWriter, Format, MetricType, Value},
    rule_hits::{RuleScrape, RuleSeries},
};
use crate::{
    firewall::{
        self,
        maps::{HitCounts, RuleMaps},
    },
    trace::{
        format,
        open::{OpenCount, OpenCounter},
    },
};

/// Label value that sums the series over [`Bounded`]'s limit.
pub const OTHER: &str = "[other]";

/// Counts per key, at most `max` keys; the rest go to `other`.
#[derive(Debug)]
pub struct Bounded<K> {
    counts: HashMap<K, u64>,
    other: u64,
    max: usize,
}

impl<K: Hash + Eq> Bounded<K> {
    pub fn new(max: usize) -> Self {
        Self {
            counts: HashMap::new(),
            other: 0,
            max,
        }
    }

    /// Adds `n` to `key`'s count, or to `other` when `key` is new and the
    /// limit is reached. Allocates only for a new key.
    pub fn add(&mut self, key: K, n: u64) {
        if let Some(c) = self.counts.get_mut(&key) {
            *c += n;
        } else if self.counts.len() < self.max {
            self.counts.insert(key, n);
        } else {
            self.other += n;
        }
    }

    /// Replaces every count (for sources that keep totals themselves).
    pub fn set_all(&mut self, totals: impl IntoIterator<Item = (K, u64)>) {
        self.counts.clear();
        self.other = 0;
        for (k, n) in totals {
            self.add(k, n);
        }
    }

    /// Changes the limit for keys seen from now on; keys already counted
    /// stay.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, u64)> {
        self.counts.iter().map(|(k, v)| (k, *v))
    }

    pub fn other(&self) -> u64 {
        self.other
    }
}

/// An exec, by new program name and result (0 or -errno).
pub type ExecKey = ([u8; 16], i32);

/// A connect, by destination and result (`None` where the probe cannot see
/// it).
pub type ConnectKey = (IpAddr, u16, Option<i32>);

/// One tracer's totals.
#[derive(Debug)]
pub struct TracerStats<K> {
    pub events: u64,
    pub lost: u64,
    pub series: Bounded<K>,
}

impl<K: Hash + Eq> TracerStats<K> {
    pub fn new(max_series: usize) -> Self {
        Self {
            events: 0,
            lost: 0,
            series: Bounded::new(max_series),
        }
    }
}

/// The open tracer: counts per comm live in the kernel and are read at
/// scrape time. Label sets are kept first come, first kept (largest first
/// within one scrape), up to `max`; the rest are summed under [`OTHER`], so
/// every series only grows.
pub struct OpenTracer {
    pub counter: OpenCounter,
    kept: Kept,
}

impl fmt::Debug for OpenTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenTracer")
            .field("kept", &self.kept)
            .finish_non_exhaustive()
    }
}

/// The process names the open metrics have a series for.
#[derive(Debug, Default)]
struct Kept {
    names: HashSet<String>,
    max: usize,
}

/// One scrape of the open tracer: per kept comm (opens, failed), the rest
/// summed, and the opens the kernel could not count.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OpenScrape {
    pub by_comm: Vec<(String, u64, u64)>,
    pub other: (u64, u64),
    pub uncounted: u64,
}

impl OpenTracer {
    pub fn new(counter: OpenCounter, max: usize) -> Self {
        Self {
            counter,
            kept: Kept {
                names: HashSet::new(),
                max,
            },
        }
    }

    pub fn set_max(&mut self, max: usize) {
        self.kept.max = max;
    }

    /// Reads the kernel's counts.
    pub fn scrape(&mut self) -> Result<OpenScrape, crate::trace::TraceError> {
        let mut counts = self.counter.counts()?;
        let uncounted = self.counter.uncounted()?;
        Ok(self.kept.fold(&mut counts, uncounted))
    }
}

impl Kept {
    fn fold(&mut self, counts: &mut [OpenCount], uncounted: u64) -> OpenScrape {
        counts.sort_by(|a, b| b.opens.cmp(&a.opens).then_with(|| a.comm.cmp(&b.comm)));
        let mut out = OpenScrape {
            uncounted,
            ..OpenScrape::default()
        };
        for c in counts.iter() {
            if self.names.contains(&c.comm) || self.names.len() < self.max {
                self.names.insert(c.comm.clone());
                out.by_comm.push((c.comm.clone(), c.opens, c.failed));
            } else {
                out.other.0 += c.opens;
                out.other.1 += c.failed;
            }
        }
        out
    }
}

/// What the daemon's tasks update and the collector reads.
#[derive(Debug, Default)]
pub struct State {
    /// Interfaces the daemon manages the firewall on.
    pub fw_ifaces: Vec<String>,
    pub open: Option<OpenTracer>,
    pub exec: Option<TracerStats<ExecKey>>,
    pub connect: Option<TracerStats<ConnectKey>>,
    pub bpf_stats: bool,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_reload_ok: bool,
    /// Why the daemon is unhealthy, by component; empty when healthy.
    pub problems: BTreeMap<String, String>,
}

/// [`State`] behind a lock, shared by the daemon's tasks and the HTTP
/// server.
#[derive(Debug, Default)]
pub struct Shared {
    state: Mutex<State>,
    scrape_errors: AtomicU64,
    /// Scrapes computed (requests abandoned before their turn are not).
    scrapes: AtomicU64,
    /// Rule-hit series by interface; only scrapes take this lock, never
    /// the daemon's other tasks or `/healthz`.
    rule_series: Mutex<HashMap<String, RuleSeries>>,
    /// `[firewall] max_rule_series`.
    max_rule_series: AtomicU64,
}

impl Shared {
    pub fn new() -> Arc<Self> {
        let s = Self::default();
        s.lock().last_reload_ok = true;
        s.set_max_rule_series(super::config::DEFAULT_MAX_RULE_SERIES);
        Arc::new(s)
    }

    /// Sets `[firewall] max_rule_series` (see [`RuleSeries::set_max`]).
    pub fn set_max_rule_series(&self, max: usize) {
        self.max_rule_series.store(max as u64, Ordering::Relaxed);
    }

    fn max_rule_series(&self) -> usize {
        usize::try_from(self.max_rule_series.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// The state. A panic in another task while holding the lock does not
    /// make the metrics unreadable: the data is counters, always usable.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scrape_error(&self, what: &str, e: &dyn fmt::Display) {
        self.scrape_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("metrics: {what}: {e}");
    }
}

/// The `/metrics` collector.
#[derive(Debug)]
pub struct KscopeCollector(pub Arc<Shared>);

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

/// A program type as bpftool names it: `BPF_PROG_TYPE_XDP` → `xdp`.
fn prog_type_name(t: impl fmt::Debug) -> String {
    let raw = format!("{t:?}");
    raw.strip_prefix("BPF_PROG_TYPE_")
        .unwrap_or(&raw)
        .to_ascii_lowercase()
}

/// An exec or connect result as a label: `ok`, an errno name, or the
/// number when it has no name.
pub fn result_label(ret: Option<i32>) -> String {
    match ret {
        None => "unknown".into(),
        Some(0) => "ok".into(),
        Some(r) => format::errno_name(-i64::from(r)).map_or_else(|| r.to_string(), str::to_owned),
    }
}

impl KscopeCollector {
    /// One scrape, in `format`. Blocking: it reads kernel maps, so the
    /// HTTP server runs it off its event loop.
    pub fn encode(&self, format: Format) -> String {
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
        let hits = HitCounts::new(maps.read_hits(None)?);
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

    fn tracers(&self, out: &mut Out) -> fmt::Result {
        let mut s = self.0.lock();
        let open = match s.open.as_mut().map(OpenTracer::scrape) {
            Some(Ok(o)) => Some(o),
            Some(Err(e)) => {
                self.0.scrape_error("open counts", &e);
                None
            }
            None => None,
        };
        let open_total = open.as_ref().map(|o| {
            let opens = o.by_comm.iter().map(|c| c.1).sum::<u64>() + o.other.0;
            (opens, o.uncounted)
        });
        let totals = [
            ("open", open_total),
            ("exec", s.exec.as_ref().map(|t| (t.events, t.lost))),
            ("connect", s.connect.as_ref().map(|t| (t.events, t.lost))),
        ];
        for (name, help, lost) in [
            (
                "kscope_trace_events",
                "Events each running tracer counted.",
                false,
            ),
            (
                "kscope_trace_lost_events",
                "Events each running tracer lost (ring buffer or count map full).",
                true,
            ),
        ] {
            let mut m = out.family(name, help, MetricType::Counter)?;
            for (tracer, t) in totals {
                if let Some((events, l)) = t {
                    counter(&mut m, &[("tracer", tracer)], if lost { l } else { events })?;
                }
            }
        }

        for (name, help, failed) in [
            (
                "kscope_trace_opens",
                "open(2), openat(2) and openat2(2) calls, by process name.",
                false,
            ),
            (
                "kscope_trace_open_errors",
                "Failed opens, by process name.",
                true,
            ),
        ] {
            let mut m = out.family(name, help, MetricType::Counter)?;
            let Some(o) = &open else { continue };
            let pick = |c: (u64, u64)| if failed { c.1 } else { c.0 };
            for (comm, opens, errors) in &o.by_comm {
                counter(&mut m, &[("comm", comm)], pick((*opens, *errors)))?;
            }
            counter(&mut m, &[("comm", OTHER)], pick(o.other))?;
        }

        let mut m = out.family(
            "kscope_trace_execs",
            "execve(2) and execveat(2) calls, by new program name and result.",
            MetricType::Counter,
        )?;
        if let Some(t) = &s.exec {
            for ((comm, ret), n) in t.series.iter() {
                let comm = String::from_utf8_lossy(format::cstr(comm));
                let result = result_label(Some(*ret));
                counter(&mut m, &[("comm", &comm), ("result", &result)], n)?;
            }
            counter(
                &mut m,
                &[("comm", OTHER), ("result", OTHER)],
                t.series.other(),
            )?;
        }

        let mut m = out.family(
            "kscope_trace_connects",
            "TCP connects, by destination and result (unknown where the probe cannot see it).",
            MetricType::Counter,
        )?;
        if let Some(t) = &s.connect {
            for ((daddr, dport, ret), n) in t.series.iter() {
                let (daddr, dport) = (daddr.to_string(), dport.to_string());
                let result = result_label(*ret);
                counter(
                    &mut m,
                    &[("daddr", &daddr), ("dport", &dport), ("result", &result)],
                    n,
                )?;
            }
            counter(
                &mut m,
                &[("daddr", OTHER), ("dport", OTHER), ("result", OTHER)],
                t.series.other(),
            )?;
        }
        Ok(())
    }

    /// Every BPF program on the system, as bpftop lists them.
    fn programs(&self, out: &mut Out) -> fmt::Result {
        let mut progs = Vec::new();
        for p in aya::programs::loaded_programs() {
            match p {
                Ok(info) => progs.push((
                    info.id().to_string(),
                    info.name_as_str().unwrap_or("").to_owned(),
                    prog_type_name(info.program_type()),
                    info.run_time().as_secs_f64(),
                    info.run_count(),
                )),
                // A program unloaded between listing and reading it.
                Err(_) => continue,
            }
        }
        let labels = |p: &(String, String, String, f64, u64)| {
            [
                ("id", p.0.clone()),
                ("name", p.1.clone()),
                ("type", p.2.clone()),
            ]
        };
        let mut m = out.family(
            "kscope_bpf_program_run_time_seconds",
            "Time each BPF program ran since stats were enabled (BPF_ENABLE_STATS).",
            MetricType::Counter,
        )?;
        for p in &progs {
            let l = labels(p);
            let l = l.each_ref().map(|(k, v)| (*k, v.as_str()));
            counter_f64(&mut m, &l, p.3)?;
        }
        let mut m = out.family(
            "kscope_bpf_program_run_count",
            "Runs of each BPF program since stats were enabled (BPF_ENABLE_STATS).",
            MetricType::Counter,
        )?;
        for p in &progs {
            let l = labels(p);
            let l = l.each_ref().map(|(k, v)| (*k, v.as_str()));
            counter(&mut m, &l, p.4)?;
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

    #[test]
    fn bounded_sums_keys_over_the_limit_into_other() {
        let mut b = Bounded::new(2);
        b.add("a", 1);
        b.add("b", 2);
        b.add("c", 4);
        b.add("a", 8);
        b.add("d", 16);
        let mut seen: Vec<_> = b.iter().map(|(k, v)| (*k, v)).collect();
        seen.sort();
        assert_eq!(seen, [("a", 9), ("b", 2)]);
        assert_eq!(b.other(), 20);
        b.set_all([("x", 1), ("y", 2), ("z", 3)]);
        assert_eq!(b.iter().count(), 2);
        assert_eq!(b.iter().map(|(_, v)| v).sum::<u64>() + b.other(), 6);
    }

    #[test]
    fn open_series_are_kept_first_come_and_the_rest_summed() {
        let c = |comm: &str, opens, failed| OpenCount {
            comm: comm.into(),
            opens,
            failed,
        };
        let mut kept = Kept {
            names: HashSet::new(),
            max: 2,
        };
        let first = kept.fold(&mut [c("small", 1, 0), c("big", 9, 2), c("mid", 5, 1)], 3);
        assert_eq!(first.by_comm, [("big".into(), 9, 2), ("mid".into(), 5, 1)]);
        assert_eq!((first.other, first.uncounted), ((1, 0), 3));
        // "small" overtakes both, but the kept series stay: none moves to
        // [other], so no series ever goes down.
        let second = kept.fold(&mut [c("small", 50, 0), c("big", 10, 2), c("mid", 6, 1)], 3);
        assert_eq!(
            second.by_comm,
            [("big".into(), 10, 2), ("mid".into(), 6, 1)]
        );
        assert_eq!(second.other, (50, 0));
    }

    #[test]
    fn results_are_labelled_by_errno_name() {
        assert_eq!(result_label(Some(0)), "ok");
        assert_eq!(result_label(Some(-libc::ECONNREFUSED)), "ECONNREFUSED");
        assert_eq!(result_label(Some(-4000)), "-4000");
        assert_eq!(result_label(None), "unknown");
    }

    #[test]
    fn program_types_are_named_as_bpftool_does() {
        #[derive(Debug)]
        #[expect(non_camel_case_types, reason = "mimics the kernel's enum")]
        enum T {
            BPF_PROG_TYPE_XDP,
            Odd,
        }
        assert_eq!(prog_type_name(T::BPF_PROG_TYPE_XDP), "xdp");
        assert_eq!(prog_type_name(T::Odd), "odd");
    }

    #[test]
    fn tracer_series_render_with_their_labels() {
        let shared = Shared::new();
        {
            let mut s = shared.lock();
            let mut exec = TracerStats::new(1);
            let mut comm = [0u8; 16];
            comm[..4].copy_from_slice(b"true");
            exec.series.add((comm, 0), 3);
            exec.series.add((comm, -libc::ENOENT), 2);
            exec.events = 5;
            s.exec = Some(exec);
            let mut conn = TracerStats::new(8);
            conn.series.add(
                (IpAddr::from([127, 0, 0, 1]), 80, Some(-libc::ECONNREFUSED)),
                1,
            );
            conn.lost = 7;
            s.connect = Some(conn);
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
