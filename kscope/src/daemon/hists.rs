//! The daemon's latency histograms (`[hist]`): `kscope hist`'s tracers in
//! histogram mode, read at scrape time and served as Prometheus
//! histograms. Label sets beyond `[trace] max_series` are summed under
//! `[other]`, first come first kept, so every series only grows.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use kscope_common::trace::{BlockKey, HIST_SLOTS, Hist, RunqKey, SyscallKey};

use super::config::HistConfig;
use crate::trace::{
    self, Filters, TraceError,
    block::{self, Block},
    runner::Histograms,
    runq::Runq,
    syscall::{self, Syscall},
};

/// Label value that sums the label sets over `max_series`.
const OTHER: &str = "[other]";

/// A running histogram tracer, read as label sets.
pub(crate) trait HistReading: Send {
    /// Running totals per label set (in [`HistDef::labels`] order).
    ///
    /// # Errors
    /// A failed map read.
    fn read(&self) -> Result<Vec<(Vec<String>, Hist)>, TraceError>;
}

struct Source<T: trace::HistTracer> {
    h: Histograms<T>,
    /// The key's labels.
    labels: fn(&T::Key) -> Vec<String>,
    by_cgroup: bool,
}

impl<T: trace::HistTracer> HistReading for Source<T>
where
    Histograms<T>: Send,
{
    fn read(&self) -> Result<Vec<(Vec<String>, Hist)>, TraceError> {
        Ok(self
            .h
            .read()?
            .into_iter()
            .map(|(k, h)| {
                let mut labels = (self.labels)(&k);
                if self.by_cgroup {
                    let cgroup_id = T::hist_cgroup_id(&k);
                    // A cgroup gone by now never gets a series of its own.
                    labels.push(
                        crate::cgroup::name(cgroup_id)
                            .map_or_else(|| OTHER.to_owned(), |n| n.path.clone()),
                    );
                }
                (labels, h)
            })
            .collect())
    }
}

/// One histogram the daemon can keep.
pub(crate) struct HistDef {
    /// `[hist]` key.
    pub(crate) name: &'static str,
    /// Prometheus family.
    pub(crate) metric: &'static str,
    pub(crate) help: &'static str,
    pub(crate) labels: &'static [&'static str],
    start: fn(bool) -> Result<Box<dyn HistReading>, TraceError>,
}

fn start<T: trace::HistTracer>(
    opts: &T::Opts,
    labels: fn(&T::Key) -> Vec<String>,
    by_cgroup: bool,
) -> Result<Box<dyn HistReading>, TraceError>
where
    Histograms<T>: Send,
{
    let h = Histograms::<T>::attach(opts, &Filters::default(), by_cgroup)?;
    Ok(Box::new(Source {
        h,
        labels,
        by_cgroup,
    }))
}

fn runq_labels(_k: &RunqKey) -> Vec<String> {
    Vec::new()
}

fn syscall_labels(k: &SyscallKey) -> Vec<String> {
    vec![syscall::name(k.nr).map_or_else(|| k.nr.to_string(), str::to_owned)]
}

fn block_labels(k: &BlockKey) -> Vec<String> {
    let (maj, min) = block::major_minor(k.dev);
    vec![
        block::device_name(k.dev).unwrap_or_else(|| format!("{maj}:{min}")),
        block::op_name(k.op).to_owned(),
    ]
}

/// Every histogram, in exposition order.
pub(crate) const HISTS: &[HistDef] = &[
    HistDef {
        name: "runq",
        metric: "kscope_hist_runq_latency_seconds",
        help: "Run queue latency: from a task's wakeup to its running.",
        labels: &[],
        start: |c| start::<Runq>(&(), runq_labels, c),
    },
    HistDef {
        name: "syscall",
        metric: "kscope_hist_syscall_latency_seconds",
        help: "System call latency, by system call.",
        labels: &["syscall"],
        start: |c| start::<Syscall>(&syscall::SyscallOpts::default(), syscall_labels, c),
    },
    HistDef {
        name: "block",
        metric: "kscope_hist_block_latency_seconds",
        help: "Block I/O latency from issue to completion, by device and operation.",
        labels: &["device", "op"],
        start: |c| start::<Block>(&(), block_labels, c),
    },
];

/// The running histograms by `[hist]` name, each behind a lock of its
/// own (as the tracers are), so that reading one's kernel maps holds no
/// other lock.
#[derive(Debug, Default)]
pub(crate) struct HistSlots(Mutex<BTreeMap<&'static str, Arc<Mutex<HistSlot>>>>);

impl HistSlots {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Arc<Mutex<HistSlot>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The histogram `name`, if running.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Mutex<HistSlot>>> {
        self.lock().get(name).cloned()
    }
}

/// A running histogram and the label sets it exports.
pub(crate) struct HistSlot {
    src: Box<dyn HistReading>,
    /// Whether its label sets end in `cgroup`.
    pub(crate) by_cgroup: bool,
    kept: HashSet<Vec<String>>,
    max: usize,
}

impl std::fmt::Debug for HistSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistSlot")
            .field("kept", &self.kept.len())
            .finish_non_exhaustive()
    }
}

impl HistSlot {
    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The histograms per kept label set, the others summed under
    /// [`OTHER`] (every label).
    ///
    /// # Errors
    /// A failed map read.
    pub(crate) fn scrape(
        &mut self,
        n_labels: usize,
    ) -> Result<Vec<(Vec<String>, Hist)>, TraceError> {
        let mut rows = self.src.read()?;
        // Largest first, so a new scrape keeps the busiest sets.
        rows.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
        let mut out: HashMap<Vec<String>, Hist> = HashMap::new();
        for (labels, h) in rows {
            let key = if self.kept.contains(&labels) {
                labels
            } else if self.kept.len() < self.max {
                self.kept.insert(labels.clone());
                labels
            } else {
                vec![OTHER.to_owned(); n_labels]
            };
            trace::hist::add(out.entry(key).or_default(), &h);
        }
        let mut v: Vec<_> = out.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }
}

/// Starts the histograms `cfg` asks for that are not running. Returns
/// the names started.
///
/// # Errors
/// A histogram that cannot start; those started by this call are stopped.
pub(crate) fn start_missing(
    cfg: &HistConfig,
    max_series: usize,
    slots: &HistSlots,
) -> anyhow::Result<Vec<&'static str>> {
    let mut started = Vec::new();
    for d in HISTS {
        let running = {
            let mut s = slots.lock();
            // A changed `cgroup` setting needs a new object: stop it.
            let same = s
                .get(d.name)
                .map(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).by_cgroup == cfg.cgroup);
            if same == Some(false) {
                s.remove(d.name);
            }
            same == Some(true)
        };
        if cfg.wants(d.name) && !running {
            if started.is_empty() {
                trace::preflight("kscope daemon")?;
            }
            match (d.start)(cfg.cgroup) {
                Ok(src) => {
                    let slot = HistSlot {
                        src,
                        by_cgroup: cfg.cgroup,
                        kept: HashSet::new(),
                        max: max_series,
                    };
                    slots.lock().insert(d.name, Arc::new(Mutex::new(slot)));
                    started.push(d.name);
                }
                Err(e) => {
                    let mut s = slots.lock();
                    for n in &started {
                        s.remove(n);
                    }
                    return Err(
                        anyhow::Error::new(e).context(format!("starting the {} histogram", d.name))
                    );
                }
            }
        }
    }
    Ok(started)
}

/// Stops the histograms `cfg` no longer asks for, and applies
/// `max_series` to the others.
pub(crate) fn settle(cfg: &HistConfig, max_series: usize, slots: &HistSlots) {
    let mut s = slots.lock();
    s.retain(|name, _| cfg.wants(name));
    for slot in s.values() {
        slot.lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_max(max_series);
    }
}

/// Stops the named histograms (a reload that failed after starting them).
pub(crate) fn stop(names: &[&'static str], slots: &HistSlots) {
    let mut s = slots.lock();
    for n in names {
        s.remove(n);
    }
}

/// Bucket `i`'s upper bound in seconds, as `le`: its latencies are below
/// 2^(i+1) ns.
pub(crate) fn le_seconds(i: usize) -> f64 {
    (1u128 << (i + 1)) as f64 / 1e9
}

/// The first and last bucket that get an `le` of their own: 1.024 µs to
/// 68.7 s; lower buckets fold into the first, higher ones only into
/// `+Inf`. One fixed set for every series, as histogram_quantile wants.
pub(crate) const LE_FIRST: usize = 9;
pub(crate) const LE_LAST: usize = 35;

const _: () = assert!(LE_LAST < HIST_SLOTS);

#[cfg(test)]
mod tests {
    use super::*;

    /// Label sets with a count each, read as given.
    struct Fake(Vec<(Vec<String>, u64)>);

    impl HistReading for Fake {
        fn read(&self) -> Result<Vec<(Vec<String>, Hist)>, TraceError> {
            Ok(self
                .0
                .iter()
                .map(|(l, n)| {
                    let mut h = Hist::default();
                    h.slots[21] = *n;
                    h.count = *n;
                    h.sum_ns = *n * 3_000_000;
                    (l.clone(), h)
                })
                .collect())
        }
    }

    fn slot(rows: &[(&str, u64)], max: usize) -> HistSlot {
        HistSlot {
            src: Box::new(Fake(
                rows.iter()
                    .map(|(l, n)| (vec![(*l).to_owned()], *n))
                    .collect(),
            )),
            by_cgroup: false,
            kept: HashSet::new(),
            max,
        }
    }

    fn counts(rows: &[(Vec<String>, Hist)]) -> Vec<(String, u64)> {
        rows.iter().map(|(l, h)| (l.join(","), h.count)).collect()
    }

    #[test]
    fn label_sets_past_max_series_are_summed_under_other_busiest_kept() {
        let mut s = slot(&[("a", 1), ("b", 7), ("c", 5), ("d", 2)], 2);
        let rows = s.scrape(1).expect("scrape");
        assert_eq!(
            counts(&rows),
            [("[other]".into(), 3), ("b".into(), 7), ("c".into(), 5)]
        );
        // Kept sets stay kept when others grow past them: series only grow.
        s.src = Box::new(Fake(vec![
            (vec!["a".into()], 100),
            (vec!["b".into()], 7),
            (vec!["c".into()], 5),
        ]));
        let rows = s.scrape(1).expect("scrape");
        assert_eq!(
            counts(&rows),
            [("[other]".into(), 100), ("b".into(), 7), ("c".into(), 5)]
        );
        // Buckets and sums are summed too.
        let other = &rows[0].1;
        assert_eq!((other.slots[21], other.sum_ns), (100, 300_000_000));
    }

    #[test]
    fn le_bounds_are_the_log2_bucket_tops_in_seconds() {
        assert_eq!(le_seconds(LE_FIRST), 1.024e-6);
        assert_eq!(le_seconds(21), 0.004194304);
        assert_eq!(le_seconds(LE_LAST), 68.719476736);
    }
}
