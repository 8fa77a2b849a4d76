//! Kernel tracers: `kscope trace open | exec | connect`, and the daemon's
//! aggregate tracers.
//!
//! Every tracer is one kernel object and one [`Tracer`] impl; [`runner`]
//! runs any of them, for `kscope trace` and for the daemon alike. The
//! lifecycle is the same for all: check it can run (naming a missing
//! kernel feature), load with its filters as load-time globals, attach
//! (choosing a probe kind where the tracer has several), run until the
//! duration ends or Ctrl-C or SIGTERM arrives, then detach. The loaded
//! object (and with it every attached link) lives in a value whose `Drop`
//! detaches, so an early return or a panic leaves nothing attached.
//!
//! Two modes, the same for every tracer:
//! - events: each event goes through a BPF ring buffer (Linux 5.8+) and is
//!   printed as a row. The kernel side submits without waking the consumer
//!   until [`WAKEUP_BYTES`] bytes wait, and the consumer also drains on a
//!   timer every [`POLL_INTERVAL`]: printing an event then costs close to
//!   counting it, and an event still shows within a few milliseconds.
//! - count (`-c`): the kernel counts events per the tracer's key in a
//!   per-CPU hash, and nothing goes through the ring buffer; the totals are
//!   read at the end (or, in the daemon, at every scrape).
//!
//! Loss is never silent: events that find the ring buffer full, keys that
//! find the count table full, and runs the kernel skipped because another
//! BPF program was running on that CPU (`recursion_misses`, Linux 5.12+)
//! are counted and reported on stderr as they happen and in the summary.

pub(crate) mod block;
pub mod cmd;
pub(crate) mod connect;
pub(crate) mod exec;
mod format;
pub mod hist;
pub mod open;
pub(crate) mod runner;
pub(crate) mod runq;
pub(crate) mod syscall;
mod syscalls_x86_64;

use std::{
    fmt,
    hash::Hash,
    io::{self, Write},
    time::Duration,
};

use aya::Ebpf;
use kscope_common::trace::{
    Counts, GLOBAL_CGROUP_CACHE_ON, GLOBAL_CGROUP_ON, GLOBAL_COMM, GLOBAL_COMM_LEN,
    GLOBAL_COUNT_MODE, GLOBAL_HIST_BY_CGROUP, GLOBAL_PID, GLOBAL_TID, GLOBAL_UID, GLOBAL_UID_ON,
    GLOBAL_WAKEUP_BYTES, MAP_CGROUP, MAP_COUNTS, MAP_EVENTS, MAP_HIST, MAP_HIST_SPARE,
    PROG_CGROUP_MOVED, PROG_TASK_EXITED,
};
use thiserror::Error;

use crate::{
    output::{Column, Row},
    sys::{self, Cap, SysError},
};

pub use runner::Counter;
pub(crate) use runner::{Run, run};

/// How often the consumer drains the ring buffer without a wakeup.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Bytes waiting in the ring buffer that make the kernel wake the consumer:
/// at most a quarter of the buffer, early enough that a burst never fills
/// it before the consumer runs, rare enough that a steady stream does not
/// cost a wakeup per event.
const WAKEUP_BYTES: u64 = 1 << 19;

/// Errors from the tracers.
#[derive(Debug, Error)]
pub enum TraceError {
    /// A capability, tracefs or another system precondition is missing.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The kernel lacks something this tracer needs.
    #[error("{feature} is not available on this kernel: {reason}")]
    Unsupported { feature: String, reason: String },
    /// Loading the object failed (the verifier log is in the source).
    #[error("failed to load the {tracer} tracer")]
    Load {
        tracer: &'static str,
        #[source]
        source: aya::EbpfError,
    },
    /// Loading or attaching one program failed.
    #[error("failed to load or attach {prog}")]
    Program {
        prog: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map the object must have is missing or of the wrong type.
    #[error("map {map} of the tracer object")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// A filter or option value is unusable.
    #[error("invalid filter: {0}")]
    BadFilter(String),
    /// `--cgroup`'s directory is missing or not a cgroup v2 directory.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// Reading events or writing output failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The async runtime the consumer runs on cannot start.
    #[error("starting the tokio runtime")]
    Runtime(#[source] io::Error),
}

impl TraceError {
    fn program(prog: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> Self {
        move |source| TraceError::Program { prog, source }
    }

    fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| TraceError::Map { map, source }
    }
}

/// In-kernel filters every tracer takes.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub uid: Option<u32>,
    /// Substring of the process name (at most 15 bytes, as comm is).
    pub comm: Option<String>,
    /// Only tasks in this cgroup v2 directory or below it.
    pub cgroup: Option<std::path::PathBuf>,
}

impl Filters {
    /// Checks the filters the kernel side could misread.
    ///
    /// # Errors
    /// A pid or tid of 0, which the kernel side reads as "no filter" and
    /// would trace every process.
    pub(crate) fn validate(&self) -> Result<(), TraceError> {
        for (what, v) in [("process id", self.pid), ("thread id", self.tid)] {
            if v == Some(0) {
                return Err(TraceError::BadFilter(format!(
                    "{what} 0 is the idle task, which makes no system calls"
                )));
            }
        }
        self.comm_bytes().map(|_| ())
    }

    /// The comm filter as the kernel compares it, and its length.
    ///
    /// # Errors
    /// An empty name or one over 15 bytes.
    fn comm_bytes(&self) -> Result<([u8; 16], u32), TraceError> {
        let mut out = [0u8; 16];
        let Some(c) = &self.comm else {
            return Ok((out, 0));
        };
        if c.is_empty() || c.len() > 15 {
            return Err(TraceError::BadFilter(format!(
                "process name {c:?} must be 1-15 bytes (the kernel keeps 15)"
            )));
        }
        out[..c.len()].copy_from_slice(c.as_bytes());
        Ok((out, c.len() as u32))
    }
}

/// Checks a tracer can run: capabilities, tracefs, memlock.
///
/// # Errors
/// Missing capabilities, or tracefs neither mounted nor mountable.
pub(crate) fn preflight(what: &str) -> Result<(), TraceError> {
    sys::require_caps(what, &[Cap::Bpf, Cap::Perfmon])?;
    sys::ensure_tracefs()?;
    sys::raise_memlock();
    Ok(())
}

/// One tracer: its kernel object and how it attaches. What it produces is
/// the business of one of the two traits below: [`EventTracer`] (events
/// through the ring buffer, or counts per key: `kscope trace NAME`) or
/// [`HistTracer`] (latency histograms: `kscope hist NAME`). [`runner`]
/// does the rest.
pub trait Tracer: Sized + 'static {
    /// `kscope trace NAME` or `kscope hist NAME`, the daemon's config key
    /// and metric label.
    const NAME: &'static str;
    /// Options beyond the [`Filters`] every tracer takes.
    type Opts: Clone + fmt::Debug + Default + Send + Sync + 'static;
    /// The key of the kernel's table (kscope-common), as the kernel writes
    /// it: a count's key, or a histogram's.
    type Key: aya::Pod + Eq + Hash + fmt::Debug + Send + Sync + 'static;

    /// Loads the object through `load` and attaches its programs, choosing
    /// a probe kind where there are several. Dropping the result detaches.
    ///
    /// # Errors
    /// A missing kernel feature ([`TraceError::Unsupported`]), a verifier
    /// rejection, a bad option.
    fn attach(opts: &Self::Opts, load: &Load<'_>) -> Result<Attached, TraceError>;
}

/// A tracer of events ([`Mode::Events`]) and counts ([`Mode::Count`]):
/// how its records and keys render, and its daemon metrics.
pub trait EventTracer: Tracer {
    /// The daemon's counter families for this tracer's counts.
    const METRIC: Metric;
    /// One ring-buffer record's fixed part; a record may carry more bytes
    /// after it (open's path), handed to [`EventTracer::write_event`] as
    /// `tail`.
    type Event: aya::Pod;

    /// The columns of an event row.
    fn event_columns(timestamps: bool) -> Vec<Column>;

    /// Writes an event's cells, in [`EventTracer::event_columns`] order.
    /// `tail` is the rest of the record after `ev`.
    ///
    /// # Errors
    /// Output errors.
    fn write_event<W: Write>(
        ev: &Self::Event,
        tail: &[u8],
        cx: &EventCx,
        row: &mut Row<'_, W>,
    ) -> io::Result<()>;

    /// The columns of a count row.
    fn count_columns() -> Vec<Column>;

    /// Writes a key's totals, in [`EventTracer::count_columns`] order.
    ///
    /// # Errors
    /// Output errors.
    fn write_count<W: Write>(key: &Self::Key, c: &Counts, row: &mut Row<'_, W>) -> io::Result<()>;

    /// The key's label values, in [`Metric::labels`] order.
    fn label_values(key: &Self::Key) -> Vec<String>;
}

/// A tracer of latencies ([`Mode::Hist`], `kscope hist NAME`): one log2
/// histogram per key, and how a key renders.
pub trait HistTracer: Tracer {
    /// The columns that name a histogram's key, in its summary row and
    /// JSON object (none when the tracer keeps one histogram).
    fn hist_key_columns() -> Vec<Column>;

    /// Writes a histogram key's cells, in [`HistTracer::hist_key_columns`]
    /// order.
    ///
    /// # Errors
    /// Output errors.
    fn write_hist_key<W: Write>(key: &Self::Key, row: &mut Row<'_, W>) -> io::Result<()>;

    /// The cgroup the key holds when the kernel keys by cgroup
    /// ([`Load::hist_by_cgroup`]); 0 otherwise.
    fn hist_cgroup_id(key: &Self::Key) -> u64;
}

/// An event row's time columns: TIME(s), seconds since the start (a table
/// with `-T`), and `ts_unix_ns` (JSON). [`write_time`] writes them.
fn time_columns(timestamps: bool) -> impl Iterator<Item = Column> {
    timestamps
        .then(|| Column::table("TIME(s)", 14, crate::output::Align::Left))
        .into_iter()
        .chain([Column::json("ts_unix_ns")])
}

/// Writes [`time_columns`]' cells for an event stamped `ts_ns`
/// (bpf_ktime_get_ns).
fn write_time<W: Write>(r: &mut Row<'_, W>, cx: &EventCx, ts_ns: u64) -> io::Result<()> {
    if cx.timestamps {
        r.f64(cx.clock.since_start(ts_ns), 6)?;
    }
    r.u64(cx.clock.unix_ns(ts_ns))
}

/// The task's cgroup: CGROUP (a table: the short container id where the
/// cgroup's path names one, else the path under the cgroup2 mount, else
/// the id of a cgroup gone since), `cgroup_id`, `cgroup` (the path, null
/// when unknown) and `container_id` (null when none; JSON).
/// [`write_cgroup`] writes them.
pub(crate) fn cgroup_columns() -> [Column; 4] {
    [
        Column::table("CGROUP", 24, crate::output::Align::Left),
        Column::json("cgroup_id"),
        Column::json("cgroup"),
        Column::json("container_id"),
    ]
}

/// Writes [`cgroup_columns`]' cells for cgroup `id`.
pub(crate) fn write_cgroup<W: Write>(r: &mut Row<'_, W>, id: u64) -> io::Result<()> {
    let name = crate::cgroup::name(id);
    // The table's cell (JSON skips it).
    match &name {
        Some(n) => match &n.container_id {
            Some(c) => r.str(c.get(..12).unwrap_or(c))?,
            None => r.text(n.path.as_bytes())?,
        },
        None => r.u64(id)?,
    }
    r.u64(id)?;
    match &name {
        Some(n) => {
            r.text(n.path.as_bytes())?;
            match &n.container_id {
                Some(c) => r.str(c),
                None => r.null(),
            }
        }
        None => {
            r.null()?;
            r.null()
        }
    }
}

/// A call's result: RET (a table: the errno's name, else the number; `n/a`
/// where the probe cannot see it), `ret` and `errno_name` (JSON; null
/// where unknown, `errno_name` null for a success). [`write_ret`] writes
/// them.
fn ret_columns() -> [Column; 3] {
    [
        Column::table("RET", 12, crate::output::Align::Right).none("n/a"),
        Column::json("ret"),
        Column::json("errno_name"),
    ]
}

/// Writes [`ret_columns`]' cells for a result of 0 or -errno, `None` when
/// unknown.
fn write_ret<W: Write>(r: &mut Row<'_, W>, ret: Option<i32>) -> io::Result<()> {
    let Some(ret) = ret else {
        r.null()?;
        r.null()?;
        return r.null();
    };
    let name = format::errno_name(-i64::from(ret)).filter(|_| ret < 0);
    match name {
        Some(n) => r.str(n)?,
        None => r.i64(ret.into())?,
    }
    r.i64(ret.into())?;
    match name {
        Some(n) => r.str(n),
        None => r.null(),
    }
}

/// A tracer's counter families in the daemon: `NAME_total{labels}` from
/// each key's events and, where `errors` is set, a second family from its
/// failed ones.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) labels: &'static [&'static str],
    /// (name, help) of the failed-events family.
    pub(crate) errors: Option<(&'static str, &'static str)>,
}

/// What every event row may need besides the event.
#[derive(Clone, Copy, Debug)]
pub struct EventCx {
    pub(crate) clock: format::Clock,
    pub(crate) timestamps: bool,
    /// The probe kind in use, for tracers that have several.
    pub(crate) probe: &'static str,
}

/// A loaded and attached tracer: dropping it detaches every program.
pub struct Attached {
    pub(crate) ebpf: Ebpf,
    /// What is traced, for the ready line: `openat(2), open(2)`.
    pub(crate) what: String,
    /// The probe kind, for tracers that have several (`""` otherwise).
    pub(crate) probe: &'static str,
}

/// Whether the kernel submits events or counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    #[default]
    Events,
    /// Count per key; `by_task` asks tracers whose key can leave the task
    /// out (connect) to keep it.
    Count { by_task: bool },
    /// Add each latency to its key's log2 histogram (`TRACE_HIST`); the
    /// tracers of `kscope hist`.
    Hist,
}

/// How a tracer object is loaded: the filters, the mode, the ring size.
#[derive(Clone, Copy, Debug)]
pub struct Load<'a> {
    pub(crate) tracer: &'static str,
    pub(crate) filters: &'a Filters,
    pub(crate) mode: Mode,
    /// Ring buffer bytes (a power of two, at least a page); `None` keeps
    /// the tracer's default.
    pub(crate) ring_bytes: Option<u32>,
    /// Histogram mode: key the histograms by cgroup too
    /// (`HIST_BY_CGROUP`; objects without histograms ignore it).
    pub(crate) hist_by_cgroup: bool,
}

impl Load<'_> {
    /// Loads `obj` with the filters, the mode, the wakeup policy and
    /// `extra` globals (name, raw bytes) set, and the maps in `sizes`
    /// (name, max_entries) resized: a map the mode does not use shrinks to
    /// its minimum.
    ///
    /// # Errors
    /// A bad filter, no ring buffer support (Linux 5.8), or a rejection by
    /// the kernel.
    pub(crate) fn object(
        &self,
        obj: &[u8],
        extra: &[(&'static str, &[u8])],
        sizes: &[(&'static str, u32)],
    ) -> Result<Ebpf, TraceError> {
        self.filters.validate()?;
        let (comm, comm_len) = self.filters.comm_bytes()?;
        // Opened (and checked) before anything is loaded.
        let cgroup = self
            .filters
            .cgroup
            .as_deref()
            .map(crate::cgroup::CgroupDir::open)
            .transpose()?;
        let count = matches!(self.mode, Mode::Count { .. });
        let hist = self.mode == Mode::Hist;
        let f = self.filters;
        // The verdict cache needs both tracepoints that keep its
        // generation; without them each event asks the kernel.
        let cgroup_cache = cgroup.is_some()
            && CGROUP_GEN_TRACEPOINTS
                .iter()
                .all(|(_, cat, name)| tracepoint_exists(cat, name));
        let globals = [
            (GLOBAL_PID, f.pid.unwrap_or(0)),
            (GLOBAL_TID, f.tid.unwrap_or(0)),
            (GLOBAL_UID, f.uid.unwrap_or(0)),
            (GLOBAL_UID_ON, u32::from(f.uid.is_some())),
            (GLOBAL_COMM_LEN, comm_len),
            (GLOBAL_COUNT_MODE, u32::from(count)),
            (GLOBAL_CGROUP_ON, u32::from(cgroup.is_some())),
            (GLOBAL_CGROUP_CACHE_ON, u32::from(cgroup_cache)),
        ];
        let by_cgroup = u32::from(hist && self.hist_by_cgroup);
        let page = u32::try_from(sys::page_size()).unwrap_or(4096);
        let mut wakeup = WAKEUP_BYTES;
        // The tracers read kernel structs through offsets they look up
        // themselves, not CO-RE relocations, so aya need not load and parse
        // the kernel's BTF (several MiB), which EbpfLoader::new() does
        // regardless: that alone was most of the start time and the peak
        // memory.
        let mut loader = sys::loader_without_kernel_btf();
        for (name, value) in &globals {
            loader.override_global(name, value, true);
        }
        for (name, bytes) in extra {
            loader.override_global(name, *bytes, true);
        }
        if hist {
            loader.override_global(GLOBAL_HIST_BY_CGROUP, &by_cgroup, true);
        } else {
            // The histograms are not used (objects without them ignore it).
            loader.map_max_entries(MAP_HIST, 1);
            loader.map_max_entries(MAP_HIST_SPARE, 1);
        }
        if count || hist {
            // The ring buffer stays empty: its minimum is a page.
            loader.map_max_entries(MAP_EVENTS, page);
            if hist {
                loader.map_max_entries(MAP_COUNTS, 1);
            }
        } else {
            // The count table is not used.
            loader.map_max_entries(MAP_COUNTS, 1);
            if let Some(bytes) = self.ring_bytes {
                loader.map_max_entries(MAP_EVENTS, bytes);
                wakeup = wakeup.min(u64::from(bytes / 4));
            }
        }
        for &(name, size) in sizes {
            loader.map_max_entries(name, size);
        }
        loader
            .override_global(GLOBAL_COMM, &comm, true)
            .override_global(GLOBAL_WAKEUP_BYTES, &wakeup, true);
        let mut ebpf = loader.load(obj).map_err(|source| {
            // Kernels before 5.8 have no BPF_MAP_TYPE_RINGBUF; say that
            // rather than the map creation's EINVAL.
            if matches!(
                aya::sys::is_map_supported(aya::maps::MapType::RingBuf),
                Ok(false)
            ) {
                TraceError::Unsupported {
                    feature: "BPF ring buffer".into(),
                    reason: "needs Linux 5.8 or later".into(),
                }
            } else {
                TraceError::Load {
                    tracer: self.tracer,
                    source,
                }
            }
        })?;
        if let Some(dir) = &cgroup {
            // Before any program is attached: no event passes unfiltered,
            // and no verdict is cached before a move or an exit would
            // make it old.
            set_cgroup(&mut ebpf, MAP_CGROUP, dir)?;
            if cgroup_cache {
                for &(prog, cat, name) in CGROUP_GEN_TRACEPOINTS {
                    attach_tracepoint(&mut ebpf, prog, cat, name)?;
                }
            }
        }
        Ok(ebpf)
    }
}

/// The programs that keep the cgroup verdicts' generation, and their
/// tracepoints (see `GLOBAL_CGROUP_CACHE_ON`).
const CGROUP_GEN_TRACEPOINTS: &[(&str, &str, &str)] = &[
    (PROG_CGROUP_MOVED, "cgroup", "cgroup_attach_task"),
    (PROG_TASK_EXITED, "sched", "sched_process_exit"),
];

/// Whether tracefs has tracepoint `category:name`.
fn tracepoint_exists(category: &str, name: &str) -> bool {
    std::path::Path::new(sys::TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .exists()
}

/// Puts `dir` in slot 0 of the object's one-slot cgroup array `map`.
///
/// # Errors
/// The map missing, or the kernel refusing the directory.
pub(crate) fn set_cgroup(
    ebpf: &mut Ebpf,
    map: &'static str,
    dir: &crate::cgroup::CgroupDir,
) -> Result<(), TraceError> {
    let missing = || TraceError::Map {
        map,
        source: aya::maps::MapError::InvalidName { name: map.into() },
    };
    let mut array: aya::maps::CgroupArray<_> = ebpf
        .map_mut(map)
        .ok_or_else(missing)?
        .try_into()
        .map_err(TraceError::map(map))?;
    array.set(0, dir.fd(), 0).map_err(TraceError::map(map))
}

/// Checks a `--buffer-size` value: a power of two of at least a page, at
/// most 1 GiB.
///
/// # Errors
/// Any other value, named.
fn check_ring_bytes(bytes: u32) -> Result<u32, TraceError> {
    let page = u32::try_from(sys::page_size()).unwrap_or(4096);
    if bytes.is_power_of_two() && (page..=1 << 30).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(TraceError::BadFilter(format!(
            "buffer size {bytes} must be a power of two from {page} (a page) to 1073741824"
        )))
    }
}

/// Attaches (enter program, exit program, syscall) triples to the syscalls
/// tracepoints, only the exit programs when `exits_only`, and returns the
/// syscalls attached, as `name(2)`. The first triple is required; a later
/// one whose tracepoints the kernel lacks is skipped with a warning.
///
/// # Errors
/// The first syscall's tracepoints missing, or a program refused.
fn attach_syscalls(
    ebpf: &mut Ebpf,
    hooks: &[(&'static str, &'static str, &str)],
    exits_only: bool,
) -> Result<Vec<String>, TraceError> {
    let events = std::path::Path::new(sys::TRACEFS).join("events/syscalls");
    let mut attached = Vec::new();
    for (i, &(enter, exit, syscall)) in hooks.iter().enumerate() {
        let (tp_enter, tp_exit) = (
            format!("sys_enter_{syscall}"),
            format!("sys_exit_{syscall}"),
        );
        let mut progs = vec![(exit, &tp_exit)];
        if !exits_only {
            progs.insert(0, (enter, &tp_enter));
        }
        if let Some((_, tp)) = progs.iter().find(|(_, tp)| !events.join(tp).exists()) {
            if i == 0 {
                return Err(TraceError::Unsupported {
                    feature: format!("tracepoint syscalls:{tp}"),
                    reason: "not in tracefs (kernel built without CONFIG_FTRACE_SYSCALLS?)".into(),
                });
            }
            tracing::warn!("tracepoint syscalls:{tp} not found; not tracing {syscall}(2)");
            continue;
        }
        for (prog, tp) in progs {
            attach_tracepoint(ebpf, prog, "syscalls", tp)?;
        }
        attached.push(format!("{syscall}(2)"));
    }
    Ok(attached)
}

/// Loads the tracepoint program `prog` and attaches it to `category:name`.
pub(crate) fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &'static str,
    category: &str,
    name: &str,
) -> Result<(), TraceError> {
    let p: &mut aya::programs::TracePoint = program(ebpf, prog)?
        .try_into()
        .map_err(TraceError::program(prog))?;
    p.load().map_err(TraceError::program(prog))?;
    p.attach(category, name)
        .map_err(TraceError::program(prog))?;
    Ok(())
}

/// The object's program `prog`.
pub(crate) fn program<'e>(
    ebpf: &'e mut Ebpf,
    prog: &'static str,
) -> Result<&'e mut aya::programs::Program, TraceError> {
    ebpf.program_mut(prog).ok_or(TraceError::Program {
        prog,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })
}

/// Why a tracer stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Duration,
    Interrupt,
    Terminate,
    /// Nobody reads stdout any more (`| head -1`).
    OutputClosed,
}

/// Totals of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
}

/// SIGINT and SIGTERM, caught from the moment this is created: a tracer
/// makes it before it reports readiness, so a signal sent right after the
/// ready line still stops it cleanly.
pub(crate) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must run inside the tokio runtime.
    fn catch() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub(crate) async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.int.recv() => Stop::Interrupt,
            _ = self.term.recv() => Stop::Terminate,
        }
    }

    /// Waits for the next SIGINT or SIGTERM, or until stdout's reader goes
    /// away: a tracer piped into `head -1` then stops at once instead of at
    /// its next write, which may be never.
    async fn recv_or_closed(&mut self) -> Stop {
        let closed = async {
            let mut every = tokio::time::interval(Duration::from_millis(50));
            loop {
                every.tick().await;
                if sys::stdout_closed() {
                    return Stop::OutputClosed;
                }
            }
        };
        tokio::select! {
            stop = self.recv() => stop,
            stop = closed => stop,
        }
    }
}

/// Writes the end-of-run summary to stderr: [`summary_line`].
pub(crate) fn report(what: &str, s: &Summary) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{}", summary_line(what, s));
}

/// The end-of-run summary, `kscope trace WHAT: N events, M lost`: the one
/// line scripts (and kscope's own tests and benchmarks) read the totals
/// from. [`parse_summary`] reads it back.
fn summary_line(what: &str, s: &Summary) -> String {
    format!("kscope trace {what}: {} events, {} lost", s.events, s.lost)
}

/// Reads a [`summary_line`] of any tracer back; `None` for any other line.
pub fn parse_summary(line: &str) -> Option<Summary> {
    let rest = line.trim_end().strip_prefix("kscope trace ")?;
    let (what, rest) = rest.split_once(": ")?;
    if what.is_empty() || what.contains(char::is_whitespace) {
        return None;
    }
    let (events, lost) = rest.strip_suffix(" lost")?.split_once(" events, ")?;
    Some(Summary {
        events: events.parse().ok()?,
        lost: lost.parse().ok()?,
    })
}

/// Borrows a `T` in place in a ring-buffer record (records are 8-aligned);
/// `None` if the record is shorter than a `T` or misaligned for it.
pub(crate) fn borrow<T: aya::Pod>(bytes: &[u8]) -> Option<&T> {
    if bytes.len() < std::mem::size_of::<T>()
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return None;
    }
    // SAFETY: long enough and aligned, and a Pod type is plain old data
    // valid for any bit pattern; the borrow lives as long as the bytes.
    Some(unsafe { &*bytes.as_ptr().cast::<T>() })
}

/// Copies a `T` out of a ring-buffer record; `None` if the record is
/// shorter than a `T`.
fn decode<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the record holds at least size_of::<T>() bytes, read_unaligned
    // makes no alignment demand, and a Pod type is plain old data valid for
    // any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Renders events and counts as `kscope trace` would, for unit tests.
#[cfg(test)]
pub(crate) mod render {
    use super::*;
    use crate::output::{Format, Output};

    pub(crate) fn events<T: EventTracer>(
        evs: &[&T::Event],
        format: Format,
        timestamps: bool,
    ) -> String {
        let tails: Vec<(&T::Event, &[u8])> = evs.iter().map(|e| (*e, &[][..])).collect();
        records::<T>(&tails, format, timestamps)
    }

    pub(crate) fn records<T: EventTracer>(
        evs: &[(&T::Event, &[u8])],
        format: Format,
        timestamps: bool,
    ) -> String {
        let cx = EventCx {
            clock: format::Clock::now(),
            timestamps,
            probe: "kprobe",
        };
        let mut out = Output::new(Vec::new(), format, T::event_columns(timestamps));
        out.header().expect("header");
        for (ev, tail) in evs {
            out.row(|r| T::write_event(ev, tail, &cx, r)).expect("row");
        }
        String::from_utf8(std::mem::take(out.writer())).expect("utf8")
    }

    pub(crate) fn counts<T: EventTracer>(rows: &[(T::Key, Counts)], format: Format) -> String {
        let mut out = Output::new(Vec::new(), format, T::count_columns());
        out.header().expect("header");
        for (k, c) in rows {
            out.row(|r| T::write_count(k, c, r)).expect("row");
        }
        String::from_utf8(std::mem::take(out.writer())).expect("utf8")
    }

    pub(crate) fn json_lines(text: &str) -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use kscope_common::trace::{ConnectEvent, OpenEvent};

    use super::*;

    #[test]
    fn short_records_are_ignored() {
        fn check<T: aya::Pod>() {
            let n = std::mem::size_of::<T>();
            assert!(decode::<T>(&vec![0u8; n - 1]).is_none());
            assert!(decode::<T>(&vec![0u8; n]).is_some());
            // Records are padded to 8 bytes in the ring buffer: longer is fine.
            assert!(decode::<T>(&vec![0u8; n + 8]).is_some());
        }
        check::<OpenEvent>();
        check::<ConnectEvent>();
    }

    #[test]
    fn decode_reads_unaligned_records() {
        let mut buf = vec![0u8; std::mem::size_of::<OpenEvent>() + 1];
        buf[1..9].copy_from_slice(&7u64.to_ne_bytes());
        let ev: OpenEvent = decode(&buf[1..]).expect("long enough");
        assert_eq!(ev.ts_ns, 7);
    }

    #[test]
    fn summary_lines_read_back() {
        for s in [
            Summary { events: 0, lost: 0 },
            Summary {
                events: 1_070_600,
                lost: 42,
            },
            Summary {
                events: u64::MAX,
                lost: u64::MAX,
            },
        ] {
            for what in ["open", "exec", "connect"] {
                assert_eq!(parse_summary(&summary_line(what, &s)), Some(s));
            }
        }
        assert_eq!(
            parse_summary("kscope trace open: 12 events, 3 lost\n"),
            Some(Summary {
                events: 12,
                lost: 3
            })
        );
        for other in [
            "",
            "tracing openat(2) (ready); Ctrl-C to stop",
            "kscope trace open: 12 events",
            "kscope trace open: x events, 0 lost",
            "kscope trace open: -1 events, 0 lost",
            "kscope trace : 1 events, 0 lost",
            "WARN kscope trace open: 1 events, 0 lost",
        ] {
            assert_eq!(parse_summary(other), None, "{other:?}");
        }
    }
}
