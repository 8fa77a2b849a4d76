//! The one runner every [`Tracer`](super::Tracer) goes through: `kscope trace NAME` in
//! either mode, and the daemon's counters ([`Counter`]).
//!
//! Fallback policy: losing events is never silent. Ring-buffer overruns,
//! full count tables and recursion misses (Linux 5.12+; earlier kernels do
//! not count them, and none are reported there) are summed into the lost
//! count, warned about on stderr as they grow, and reported at the end.

use std::{
    collections::HashMap,
    io::{self, Write},
    marker::PhantomData,
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use kscope_common::trace::{
    Counts, Hist, MAP_COUNTS, MAP_EVENTS, MAP_HIST, MAP_HIST_SPARE, MAP_LOST, MAP_UNCOUNTED,
};
use tokio::io::unix::AsyncFd;

use super::{
    EventCx, EventTracer, Filters, HistTracer, Load, Metric, Mode, POLL_INTERVAL, Signals, Stop,
    Summary, TraceError,
    format::Clock,
    hist::{self, HistRun},
};
use crate::{
    output::{Format, Output},
    sys::bpf::{MapFdOps, ProgStats, dump_map, prog_stats},
};

/// How `kscope trace NAME` runs, whatever the tracer.
#[derive(Clone, Debug, Default)]
pub(crate) struct Run {
    pub(crate) filters: Filters,
    /// Stop after this long (default: at SIGINT or SIGTERM).
    pub(crate) duration: Option<Duration>,
    /// Count per key in the kernel and print the totals at the end (`-c`).
    pub(crate) count: bool,
    /// A TIME(s) column (`-T`).
    pub(crate) timestamps: bool,
    pub(crate) format: Format,
    /// Ring buffer bytes (`--buffer-size`); `None` keeps the default.
    pub(crate) ring_bytes: Option<u32>,
}

/// Runs tracer `T` with `opts` as `run` says, writing rows to `w`, until
/// the duration passes or SIGINT or SIGTERM arrives. Reports readiness on
/// stderr once attached. Output is flushed after every ring-buffer drain,
/// so a terminal or a pipe sees each event within a few milliseconds.
///
/// # Errors
/// Missing capabilities or tracefs, a missing kernel feature, a verifier
/// rejection, a bad filter, or an output error.
pub(crate) async fn run<T: EventTracer, W: Write>(
    opts: &T::Opts,
    run: &Run,
    w: W,
) -> Result<(Summary, Stop), TraceError> {
    super::preflight(&format!("kscope trace {}", T::NAME))?;
    let mut signals = Signals::catch()?;
    if run.count {
        // Preflight done above.
        let counter = Counter::<T>::attach(opts, &run.filters, true)?;
        let stop = wait_for_stop(&mut signals, run.duration, &counter).await;
        let mut rows = counter.counts()?;
        let lost = counter.lost()?;
        drop(counter);
        sort_counts::<T>(&mut rows);
        let mut out = Output::new(w, run.format, T::count_columns());
        out.header()?;
        let mut events = 0u64;
        for (key, c) in &rows {
            events = events.wrapping_add(c.events);
            out.row(|r| T::write_count(key, c, r))?;
        }
        out.flush()?;
        return Ok((Summary { events, lost }, stop));
    }

    let load = Load {
        tracer: T::NAME,
        filters: &run.filters,
        mode: Mode::Events,
        ring_bytes: run.ring_bytes,
        hist_by_cgroup: false,
    };
    let mut attached = T::attach(opts, &load)?;
    tracing::info!("tracing {} (ready); Ctrl-C to stop", attached.what);
    let cx = EventCx {
        clock: Clock::now(),
        timestamps: run.timestamps,
        probe: attached.probe,
    };
    let mut out = Output::new(w, run.format, T::event_columns(run.timestamps));
    out.header()?;
    let mut warner = LostWarner::new(T::NAME);
    let panic_on_event = fault_consumer_panic();
    let result = consume(
        &mut attached.ebpf,
        signals.recv_or_closed(),
        run.duration,
        |feed| match feed {
            Feed::Event(bytes) => {
                assert!(!panic_on_event, "KSCOPE_FAULT=consumer-panic");
                match super::borrow::<T::Event>(bytes) {
                    Some(ev) => {
                        let tail = &bytes[size_of::<T::Event>()..];
                        out.row(|r| T::write_event(ev, tail, &cx, r))
                    }
                    None => Ok(()),
                }
            }
            Feed::Drained => out.flush(),
            Feed::Totals(s) => {
                warner.tick(s);
                Ok(())
            }
        },
    )
    .await;
    // Rows of the last drain, whatever stopped the run.
    out.flush()?;
    result
}

/// Test-only fault injection: with `KSCOPE_FAULT=consumer-panic`, the
/// consumer panics on its first event, so tests can check that a crashing
/// tracer still detaches everything (Drop runs during unwinding). Read once
/// per run, not per event.
fn fault_consumer_panic() -> bool {
    std::env::var_os("KSCOPE_FAULT").is_some_and(|v| v == "consumer-panic")
}

/// Waits until `duration` passes or SIGINT or SIGTERM arrives, warning
/// about lost events about once a second meanwhile.
async fn wait_for_stop<T: EventTracer>(
    signals: &mut Signals,
    duration: Option<Duration>,
    counter: &Counter<T>,
) -> Stop {
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut warner = LostWarner::new(T::NAME);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            stop = signals.recv_or_closed() => return stop,
            () = sleep => return Stop::Duration,
            _ = tick.tick() => {
                if let Ok(lost) = counter.lost() {
                    warner.tick(&Summary { events: 0, lost });
                }
            }
        }
    }
}

/// Most events first; ties by failures, then by the key's bytes, so the
/// order is stable.
fn sort_counts<T: EventTracer>(rows: &mut [(T::Key, Counts)]) {
    rows.sort_by(|(ka, a), (kb, b)| {
        b.events
            .cmp(&a.events)
            .then(b.failed.cmp(&a.failed))
            .then_with(|| pod_bytes(ka).cmp(pod_bytes(kb)))
    });
}

fn pod_bytes<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: a Pod value is plain old data: all of its bytes are
    // initialized, and they live as long as the borrow.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
}

/// Run statistics of every loaded program of `ebpf`, by name.
fn program_stats(ebpf: &Ebpf) -> impl Iterator<Item = (&str, ProgStats)> {
    ebpf.programs()
        .filter_map(|(name, p)| Some((name, p.fd().ok()?)))
        .filter_map(|(name, fd)| Some((name, prog_stats(fd.as_fd()).ok()?)))
}

/// Runs the kernel skipped on every program of `ebpf` (recursion misses).
fn recursion_misses(ebpf: &Ebpf) -> u64 {
    program_stats(ebpf)
        .map(|(_, s)| s.recursion_misses)
        .fold(0, u64::wrapping_add)
}

/// Takes map `name` out of the object as a `M`.
fn take<M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<M, TraceError> {
    let map = ebpf.take_map(name).ok_or(TraceError::Map {
        map: name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    M::try_from(map).map_err(TraceError::map(name))
}

fn sum_cpus(lost: &PerCpuArray<MapData, u64>) -> u64 {
    lost.get(&0, 0)
        .map(|v| v.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
        .unwrap_or(0)
}

/// What [`consume`] hands its caller.
pub(crate) enum Feed<'a> {
    /// One record's bytes.
    Event(&'a [u8]),
    /// A drain that found records is done: time to flush.
    Drained,
    /// The totals so far, lost events included, as the kernel counted
    /// them: about once a second, and once at the end.
    Totals(&'a Summary),
}

/// Reads every record waiting in `ring`, feeding each one's bytes to `on`,
/// then [`Feed::Drained`] if there were any.
fn drain(
    ring: &mut RingBuf<MapData>,
    n: &mut u64,
    on: &mut impl FnMut(Feed<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let mut got = 0;
    while let Some(item) = ring.next() {
        got += 1;
        on(Feed::Event(&item))?;
    }
    *n += got;
    if got > 0 {
        on(Feed::Drained)?;
    }
    Ok(())
}

/// Consumes `ebpf`'s ring buffer until `duration` passes or `stop`
/// completes, feeding `on` as [`Feed`] says.
///
/// # Errors
/// The object lacks its ring buffer, or `on` failed.
pub(crate) async fn consume(
    ebpf: &mut Ebpf,
    stop: impl std::future::Future<Output = Stop>,
    duration: Option<Duration>,
    mut on: impl FnMut(Feed<'_>) -> io::Result<()>,
) -> Result<(Summary, Stop), TraceError> {
    let ring: RingBuf<MapData> = take(ebpf, MAP_EVENTS)?;
    let lost: PerCpuArray<MapData, u64> = take(ebpf, MAP_LOST)?;
    // SAFETY: the ring buffer owns its map fd, which stays open and the same
    // for as long as the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| TraceError::Io(e.into_parts().1))?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summary = Summary::default();
    let mut last_tick = Instant::now();
    let mut stop = std::pin::pin!(stop);
    let totals = |summary: &mut Summary, ebpf: &Ebpf| {
        summary.lost = sum_cpus(&lost).wrapping_add(recursion_misses(ebpf));
    };

    let stop = loop {
        let sleep_until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            why = &mut stop => break why,
            _ = sleep_until => break Stop::Duration,
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut summary.events, &mut on)?;
                guard.clear_ready();
            }
            _ = poll.tick() => drain(ring.get_mut(), &mut summary.events, &mut on)?,
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            totals(&mut summary, ebpf);
            on(Feed::Totals(&summary))?;
        }
    };
    // Whatever arrived before the stop is still delivered.
    drain(ring.get_mut(), &mut summary.events, &mut on)?;
    totals(&mut summary, ebpf);
    on(Feed::Totals(&summary))?;
    Ok((summary, stop))
}

/// Warns on stderr each time the count of lost events grows.
#[derive(Debug)]
struct LostWarner {
    tracer: &'static str,
    /// What was lost and where: "events lost (ring buffer ...".
    what: &'static str,
    reported: u64,
}

impl LostWarner {
    /// For the event and count modes.
    pub(crate) fn new(tracer: &'static str) -> Self {
        Self {
            tracer,
            what: "events lost (ring buffer or count table full",
            reported: 0,
        }
    }

    /// For histogram mode.
    pub(crate) fn hist(tracer: &'static str) -> Self {
        Self {
            tracer,
            what: "latencies lost (pending or histogram tables full, or no kernel memory for a \
                   new key",
            reported: 0,
        }
    }

    pub(crate) fn tick(&mut self, s: &Summary) {
        if s.lost > self.reported {
            tracing::warn!(
                "{} tracer: {} {}, or the kernel skipped the program while another BPF program \
                 ran on that CPU)",
                self.tracer,
                s.lost - self.reported,
                self.what,
            );
            self.reported = s.lost;
        }
    }
}

/// Tracer `T` in count mode: the kernel counts its events per key, and
/// nothing goes through the ring buffer.
///
/// Owns the loaded object: dropping it detaches every program and frees
/// the maps.
///
/// Minimum kernel: 5.8.
pub struct Counter<T: EventTracer> {
    // Declared first, so it is dropped (and detached) first.
    ebpf: Ebpf,
    counts: PerCpuHashMap<MapData, T::Key, Counts>,
    uncounted: PerCpuArray<MapData, u64>,
    lost: PerCpuArray<MapData, u64>,
    cpus: usize,
    _tracer: PhantomData<fn() -> T>,
}

impl<T: EventTracer> Counter<T> {
    /// Preflight, load `T` with `filters` in count mode, attach; logs
    /// readiness like the tracers. Keys leave the task out where `T` can
    /// (the daemon's way).
    ///
    /// # Errors
    /// As [`run`]: missing capabilities or tracefs, a missing kernel
    /// feature, a verifier rejection, a bad filter.
    pub fn start(opts: &T::Opts, filters: &Filters) -> Result<Self, TraceError> {
        Self::start_with(opts, filters, false)
    }

    /// [`start`](Self::start), keeping the task in the key where `T` can
    /// leave it out when `by_task` (`kscope trace NAME -c`).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    fn start_with(opts: &T::Opts, filters: &Filters, by_task: bool) -> Result<Self, TraceError> {
        super::preflight(&format!("kscope trace {}", T::NAME))?;
        Self::attach(opts, filters, by_task)
    }

    /// [`start_with`](Self::start_with) after its preflight.
    fn attach(opts: &T::Opts, filters: &Filters, by_task: bool) -> Result<Self, TraceError> {
        // Before attaching, so its read is not counted.
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| TraceError::Io(e))?;
        let load = Load {
            tracer: T::NAME,
            filters,
            mode: Mode::Count { by_task },
            ring_bytes: None,
            hist_by_cgroup: false,
        };
        let mut attached = T::attach(opts, &load)?;
        let ebpf = &mut attached.ebpf;
        let counts = take(ebpf, MAP_COUNTS)?;
        let uncounted = take(ebpf, MAP_UNCOUNTED)?;
        let lost = take(ebpf, MAP_LOST)?;
        tracing::info!("counting {} in the kernel (ready)", attached.what);
        Ok(Self {
            ebpf: attached.ebpf,
            counts,
            uncounted,
            lost,
            cpus,
            _tracer: PhantomData,
        })
    }

    /// Current totals per key, summed over CPUs (any order).
    ///
    /// # Errors
    /// A failed map read.
    pub fn counts(&self) -> Result<Vec<(T::Key, Counts)>, TraceError> {
        let key_size = size_of::<T::Key>();
        let size = size_of::<Counts>();
        let fd = aya::maps::IterableMap::map(&self.counts).fd().as_fd();
        let ops = MapFdOps::new(fd, key_size, size, self.cpus);
        let (dump, _) = dump_map(&ops, None)?;
        // Keyed: a key read twice (the kernel adding keys during the read)
        // must not count twice.
        let mut by_key: HashMap<T::Key, Counts> = HashMap::with_capacity(dump.len);
        for i in 0..dump.len {
            let (key, per_cpu) = dump.entry(&ops, i);
            let Some(key) = super::decode::<T::Key>(key) else {
                continue;
            };
            let mut sum = Counts::default();
            for slot in per_cpu.chunks_exact(size.next_multiple_of(8)) {
                let c: Counts = super::decode(slot).unwrap_or_default();
                sum.events = sum.events.wrapping_add(c.events);
                sum.failed = sum.failed.wrapping_add(c.failed);
            }
            by_key.insert(key, sum);
        }
        Ok(by_key.into_iter().collect())
    }

    /// Events not counted: the count table was full, or the kernel skipped
    /// a program run (recursion misses).
    ///
    /// # Errors
    /// A failed map read.
    pub fn lost(&self) -> Result<u64, TraceError> {
        let full = self
            .uncounted
            .get(&0, 0)
            .map_err(TraceError::map(MAP_UNCOUNTED))?
            .iter()
            .fold(0u64, |a, &b| a.wrapping_add(b));
        Ok(full
            .wrapping_add(sum_cpus(&self.lost))
            .wrapping_add(recursion_misses(&self.ebpf)))
    }

    /// Run statistics of the counter's programs, by program name.
    pub fn program_stats(&self) -> Vec<(String, ProgStats)> {
        program_stats(&self.ebpf)
            .map(|(n, s)| (n.to_owned(), s))
            .collect()
    }

    /// Of [`lost`](Self::lost), the events the full count table left out.
    ///
    /// # Errors
    /// A failed map read.
    pub fn uncounted(&self) -> Result<u64, TraceError> {
        Ok(self
            .uncounted
            .get(&0, 0)
            .map_err(TraceError::map(MAP_UNCOUNTED))?
            .iter()
            .fold(0u64, |a, &b| a.wrapping_add(b)))
    }
}

/// Totals per key as label values, and the events lost so far.
pub(crate) type LabelledCounts = (Vec<(Vec<String>, Counts)>, u64);

/// A running [`Counter`] of any tracer, as the daemon holds it.
pub(crate) trait Counting: Send {
    /// The tracer's metric families.
    fn metric(&self) -> Metric;

    /// Totals per key, as label values in [`Metric::labels`] order (any
    /// order), and the events lost so far.
    ///
    /// # Errors
    /// A failed map read.
    fn scrape(&self) -> Result<LabelledCounts, TraceError>;
}

impl<T: EventTracer> Counting for Counter<T> {
    fn metric(&self) -> Metric {
        T::METRIC
    }

    fn scrape(&self) -> Result<LabelledCounts, TraceError> {
        let rows = self
            .counts()?
            .into_iter()
            .map(|(k, c)| (T::label_values(&k), c))
            .collect();
        Ok((rows, self.lost()?))
    }
}

/// One tracer the daemon can run.
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    /// [`Tracer::NAME`](super::Tracer::NAME): the daemon's config key.
    pub(crate) name: &'static str,
    /// [`EventTracer::METRIC`].
    pub(crate) metric: Metric,
    /// Starts its counter with the tracer's default options, keyed the
    /// daemon's way (no task in the key).
    pub(crate) start: fn(&Filters) -> Result<Box<dyn Counting>, TraceError>,
}

impl Entry {
    const fn of<T: EventTracer>() -> Self {
        Self {
            name: T::NAME,
            metric: T::METRIC,
            start: start_counter::<T>,
        }
    }
}

fn start_counter<T: EventTracer>(filters: &Filters) -> Result<Box<dyn Counting>, TraceError> {
    Ok(Box::new(Counter::<T>::start(&T::Opts::default(), filters)?))
}

/// Every tracer, one line each: the daemon starts them from here.
pub(crate) const TRACERS: &[Entry] = &[
    Entry::of::<super::open::Open>(),
    Entry::of::<super::exec::Exec>(),
    Entry::of::<super::connect::Connect>(),
];

/// Tracer `T` in histogram mode ([`Mode::Hist`]): the kernel adds each
/// latency to its key's log2 histogram, and nothing goes through the ring
/// buffer.
///
/// Owns the loaded object: dropping it detaches every program.
pub(crate) struct Histograms<T: HistTracer> {
    // Declared first, so it is dropped (and detached) first.
    ebpf: Ebpf,
    hists: PerCpuHashMap<MapData, T::Key, Hist>,
    /// Keys `hists` could not take (see `MAP_HIST_SPARE`).
    spare: aya::maps::HashMap<MapData, T::Key, Hist>,
    uncounted: PerCpuArray<MapData, u64>,
    lost: PerCpuArray<MapData, u64>,
    cpus: usize,
    _tracer: PhantomData<fn() -> T>,
}

impl<T: HistTracer> Histograms<T> {
    /// Loads `T` with `filters` in histogram mode and attaches it (after
    /// [`super::preflight`]).
    ///
    /// # Errors
    /// As [`Counter::start`].
    pub(crate) fn attach(
        opts: &T::Opts,
        filters: &Filters,
        by_cgroup: bool,
    ) -> Result<Self, TraceError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| TraceError::Io(e))?;
        let load = Load {
            tracer: T::NAME,
            filters,
            mode: Mode::Hist,
            ring_bytes: None,
            hist_by_cgroup: by_cgroup,
        };
        let mut attached = T::attach(opts, &load)?;
        let ebpf = &mut attached.ebpf;
        let hists = take(ebpf, MAP_HIST)?;
        let spare = take(ebpf, MAP_HIST_SPARE)?;
        let uncounted = take(ebpf, MAP_UNCOUNTED)?;
        let lost = take(ebpf, MAP_LOST)?;
        tracing::info!(
            "measuring {} latency in the kernel (ready); Ctrl-C to stop",
            attached.what
        );
        Ok(Self {
            ebpf: attached.ebpf,
            hists,
            spare,
            uncounted,
            lost,
            cpus,
            _tracer: PhantomData,
        })
    }

    /// Running totals per key, summed over CPUs (any order), read in
    /// batches where the kernel can.
    ///
    /// # Errors
    /// A failed map read.
    pub(crate) fn read(&self) -> Result<HashMap<T::Key, Hist>, TraceError> {
        let size = size_of::<Hist>();
        let fd = aya::maps::IterableMap::map(&self.hists).fd().as_fd();
        let ops = MapFdOps::new(fd, size_of::<T::Key>(), size, self.cpus);
        let (dump, _) = dump_map(&ops, None)?;
        // Keyed: a key read twice (added during the read) counts once.
        let mut by_key = HashMap::with_capacity(dump.len);
        for i in 0..dump.len {
            let (key, per_cpu) = dump.entry(&ops, i);
            let Some(key) = super::decode::<T::Key>(key) else {
                continue;
            };
            let mut sum = Hist::default();
            for slot in per_cpu.chunks_exact(size.next_multiple_of(8)) {
                let h: Hist = super::decode(slot).unwrap_or_default();
                super::hist::add(&mut sum, &h);
            }
            by_key.insert(key, sum);
        }
        // The spare table: one copy per key, added to the key's CPUs.
        let fd = aya::maps::IterableMap::map(&self.spare).fd().as_fd();
        let ops = MapFdOps::new(fd, size_of::<T::Key>(), size, 1);
        let (dump, _) = dump_map(&ops, None)?;
        for i in 0..dump.len {
            let (key, value) = dump.entry(&ops, i);
            let (Some(key), Some(h)) = (super::decode::<T::Key>(key), super::decode::<Hist>(value))
            else {
                continue;
            };
            super::hist::add(by_key.entry(key).or_default(), &h);
        }
        Ok(by_key)
    }

    /// Latencies not counted: a full table (pending or histograms), or a
    /// program run the kernel skipped (recursion misses).
    pub(crate) fn lost(&self) -> u64 {
        sum_cpus(&self.uncounted)
            .wrapping_add(sum_cpus(&self.lost))
            .wrapping_add(recursion_misses(&self.ebpf))
    }
}

/// Runs tracer `T` in histogram mode as `run` says, writing the histograms
/// to `w` at the end and every `run.interval`, until the duration passes or
/// SIGINT or SIGTERM arrives. Reports readiness on stderr once attached.
///
/// # Errors
/// As [`run`].
pub(crate) async fn run_hist<T: HistTracer, W: Write>(
    opts: &T::Opts,
    run: &HistRun,
    mut w: W,
) -> Result<(Summary, Stop), TraceError> {
    super::preflight(&format!("kscope hist {}", T::NAME))?;
    let mut signals = Signals::catch()?;
    let hists = Histograms::<T>::attach(opts, &run.filters, run.by_cgroup)?;
    let start = Instant::now();
    let deadline = run.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = run.interval.map(|i| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + i, i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut warner = LostWarner::hist(T::NAME);
    let mut warn_tick = tokio::time::interval(Duration::from_secs(1));
    let mut prev: HashMap<T::Key, Hist> = HashMap::new();
    let mut print = |w: &mut W, cur: &HashMap<T::Key, Hist>| -> io::Result<()> {
        let mut rows: Vec<(T::Key, Hist)> = cur
            .iter()
            .map(|(k, h)| {
                let d = prev.get(k).map_or(*h, |p| hist::delta(h, p));
                (*k, d)
            })
            .filter(|(_, h)| h.count != 0)
            .collect();
        rows.sort_by(|(ka, a), (kb, b)| {
            b.count
                .cmp(&a.count)
                .then_with(|| pod_bytes(ka).cmp(pod_bytes(kb)))
        });
        let stamp = hist::Stamp {
            unix_ns: crate::sys::unix_now_ns(),
            elapsed: run.interval.map(|_| start.elapsed().as_secs_f64()),
        };
        hist::write_hists::<T, _>(&mut *w, run.format, stamp, run.by_cgroup, &rows)?;
        prev.clone_from(cur);
        Ok(())
    };
    let stop = loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let interval = async {
            match tick.as_mut() {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            stop = signals.recv_or_closed() => break stop,
            () = sleep => break Stop::Duration,
            _ = interval => {
                let cur = hists.read()?;
                print(&mut w, &cur)?;
            }
            _ = warn_tick.tick() => warner.tick(&Summary { events: 0, lost: hists.lost() }),
        }
    };
    let cur = hists.read()?;
    let lost = hists.lost();
    drop(hists);
    if stop != Stop::OutputClosed {
        print(&mut w, &cur)?;
    }
    let events = cur.values().fold(0u64, |a, h| a.wrapping_add(h.count));
    Ok((Summary { events, lost }, stop))
}
