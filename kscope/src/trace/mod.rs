//! Kernel tracers: `kscope trace open | exec | connect`.
//!
//! Every tracer follows one lifecycle: check it can run (naming a missing
//! kernel feature), load with its filters as load-time globals, attach,
//! consume events from a BPF ring buffer until the duration ends or Ctrl-C
//! or SIGTERM arrives, then detach. The loaded object (and with it every
//! attached link) lives in a value whose `Drop` detaches, so an early
//! return or a panic leaves nothing attached.
//!
//! Transport: a BPF ring buffer (Linux 5.8+), read through tokio's
//! `AsyncFd`. The kernel side submits without waking the consumer until
//! [`WAKEUP_BYTES`] bytes wait, and the consumer also drains on a timer
//! every [`POLL_INTERVAL`]: printing an event then costs close to counting
//! it, and an event still shows within a few milliseconds. Events that find
//! the buffer full are counted in the kernel and reported on stderr and in
//! the summary, never dropped silently.

pub mod connect;
pub mod exec;
pub mod format;
pub mod open;

use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use kscope_common::trace::{
    GLOBAL_COMM, GLOBAL_COMM_LEN, GLOBAL_PID, GLOBAL_TID, GLOBAL_UID, GLOBAL_UID_ON,
    GLOBAL_WAKEUP_BYTES, MAP_EVENTS, MAP_LOST,
};
use thiserror::Error;
use tokio::io::unix::AsyncFd;

use crate::sys::{self, Cap, SysError};

/// How often the consumer drains the ring buffer without a wakeup.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Bytes waiting in the ring buffer that make the kernel wake the consumer.
/// A quarter of the 2 MiB buffer: early enough that a burst never fills it
/// before the consumer runs, rare enough that a steady stream does not cost
/// a wakeup per event.
pub const WAKEUP_BYTES: u64 = 1 << 19;

/// Errors from the tracers.
#[derive(Debug, Error)]
pub enum TraceError {
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The kernel lacks something this tracer needs.
    #[error("{feature} is not available on this kernel: {reason}")]
    Unsupported { feature: String, reason: String },
    /// Loading the object or a program failed (verifier log included).
    #[error("failed to load {what}")]
    Load {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A filter value is unusable.
    #[error("invalid filter: {0}")]
    BadFilter(String),
    /// Reading events or writing output failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// In-kernel filters every tracer takes.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub uid: Option<u32>,
    /// Substring of the process name (at most 15 bytes, as comm is).
    pub comm: Option<String>,
}

impl Filters {
    /// The comm filter as the kernel compares it, and its length.
    pub fn comm_bytes(&self) -> Result<([u8; 16], u32), TraceError> {
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

/// Checks the tracer can run: capabilities, tracefs, memlock.
pub fn preflight(what: &str) -> Result<(), TraceError> {
    sys::require_caps(what, &[Cap::Bpf, Cap::Perfmon])?;
    sys::ensure_tracefs()?;
    sys::raise_memlock();
    Ok(())
}

/// Loads a tracer object with its filters, the wakeup policy and `extra`
/// globals (name, raw bytes) set.
pub fn load(
    obj: &[u8],
    filters: &Filters,
    extra: &[(&'static str, &[u8])],
) -> Result<Ebpf, TraceError> {
    load_sized(obj, filters, extra, &[])
}

/// [`load`], with the maps in `sizes` (name, max_entries) resized first:
/// a map a mode does not use shrinks to its minimum.
pub fn load_sized(
    obj: &[u8],
    filters: &Filters,
    extra: &[(&'static str, &[u8])],
    sizes: &[(&'static str, u32)],
) -> Result<Ebpf, TraceError> {
    let (comm, comm_len) = filters.comm_bytes()?;
    let globals = vec![
        (GLOBAL_PID, filters.pid.unwrap_or(0)),
        (GLOBAL_TID, filters.tid.unwrap_or(0)),
        (GLOBAL_UID, filters.uid.unwrap_or(0)),
        (GLOBAL_UID_ON, u32::from(filters.uid.is_some())),
        (GLOBAL_COMM_LEN, comm_len),
    ];
    let wakeup = WAKEUP_BYTES;
    // The tracers read kernel structs through offsets they look up
    // themselves, not CO-RE relocations, so aya need not load and parse the
    // kernel's BTF (several MiB), which EbpfLoader::new() does regardless:
    // that alone was most of the start time and the peak memory.
    let mut loader = sys::loader_without_kernel_btf();
    for (name, value) in &globals {
        loader.override_global(name, value, true);
    }
    for (name, bytes) in extra {
        loader.override_global(name, *bytes, true);
    }
    for &(name, size) in sizes {
        loader.map_max_entries(name, size);
    }
    loader
        .override_global(GLOBAL_COMM, &comm, true)
        .override_global(GLOBAL_WAKEUP_BYTES, &wakeup, true);
    loader.load(obj).map_err(|e| {
        if ringbuf_missing(&e) {
            TraceError::Unsupported {
                feature: "BPF ring buffer".into(),
                reason: "needs Linux 5.8 or later".into(),
            }
        } else {
            TraceError::Load {
                what: "the tracer".into(),
                source: Box::new(e),
            }
        }
    })
}

/// A load or attach failure of program `prog`.
pub(crate) fn load_err(
    prog: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> TraceError {
    TraceError::Load {
        what: prog.to_owned(),
        source: Box::new(e),
    }
}

/// Attaches (enter program, exit program, syscall) pairs to the syscalls
/// tracepoints and reports readiness on stderr. The first pair is required;
/// a later one whose tracepoints the kernel lacks is skipped with a warning.
pub(crate) fn attach_syscall_pairs(
    ebpf: &mut Ebpf,
    hooks: &[(&str, &str, &str)],
) -> Result<(), TraceError> {
    let attached = attach_syscalls(ebpf, hooks, false)?;
    tracing::info!("tracing {} (ready); Ctrl-C to stop", attached.join(", "));
    Ok(())
}

/// Attaches `hooks` as [`attach_syscall_pairs`] does, only the exit
/// programs when `exits_only`, and returns the syscalls attached, as
/// `name(2)`. Reports nothing: the caller says what it is ready for.
pub(crate) fn attach_syscalls(
    ebpf: &mut Ebpf,
    hooks: &[(&str, &str, &str)],
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
            let p: &mut aya::programs::TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| io::Error::other(format!("{prog} missing")))?
                .try_into()
                .map_err(|e| load_err(prog, e))?;
            p.load().map_err(|e| load_err(prog, e))?;
            p.attach("syscalls", tp).map_err(|e| load_err(prog, e))?;
        }
        attached.push(format!("{syscall}(2)"));
    }
    Ok(attached)
}

fn ringbuf_missing(e: &aya::EbpfError) -> bool {
    // Kernels before 5.8 reject BPF_MAP_TYPE_RINGBUF with EINVAL at map
    // creation; the error names the map.
    let text = format!("{e:#}");
    text.contains(MAP_EVENTS) && text.contains("Invalid argument")
}

/// Why a tracer stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Duration,
    Interrupt,
    Terminate,
}

/// Totals of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
}

/// Test-only fault injection: with `KSCOPE_FAULT=consumer-panic`, the
/// consumer panics on its first event, so tests can check that a crashing
/// tracer still detaches everything (Drop runs during unwinding).
fn fault_consumer_panic() -> bool {
    std::env::var_os("KSCOPE_FAULT").is_some_and(|v| v == "consumer-panic")
}

/// Reads every record waiting in `ring`, calling `on` with each one's bytes.
fn drain(
    ring: &mut RingBuf<MapData>,
    n: &mut u64,
    on: &mut impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    while let Some(item) = ring.next() {
        *n += 1;
        assert!(!fault_consumer_panic(), "KSCOPE_FAULT=consumer-panic");
        on(&item)?;
    }
    Ok(())
}

fn lost_total(lost: &PerCpuArray<MapData, u64>) -> u64 {
    lost.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// SIGINT and SIGTERM, caught from the moment this is created: a tracer
/// makes it before it reports readiness, so a signal sent right after the
/// ready line still stops it cleanly.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must run inside the tokio runtime.
    pub fn catch() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.int.recv() => Stop::Interrupt,
            _ = self.term.recv() => Stop::Terminate,
        }
    }
}

/// Consumes `ebpf`'s ring buffer until `duration` passes or `stop`
/// completes, handing each record to `on`. About once a second, and once at
/// the end, `tick` gets the totals so far (lost events included, as the
/// kernel counted them).
pub async fn consume(
    ebpf: &mut Ebpf,
    stop: impl std::future::Future<Output = Stop>,
    duration: Option<Duration>,
    mut on: impl FnMut(&[u8]) -> io::Result<()>,
    mut tick: impl FnMut(&Summary),
) -> Result<(Summary, Stop), TraceError> {
    let ring = ebpf
        .take_map(MAP_EVENTS)
        .ok_or_else(|| io::Error::other(format!("{MAP_EVENTS} missing")))?;
    let ring = RingBuf::try_from(ring).map_err(io::Error::other)?;
    let lost = ebpf
        .take_map(MAP_LOST)
        .ok_or_else(|| io::Error::other(format!("{MAP_LOST} missing")))?;
    let lost: PerCpuArray<MapData, u64> = PerCpuArray::try_from(lost).map_err(io::Error::other)?;
    // SAFETY: the ring buffer owns its map fd, which stays open and the same
    // for as long as the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summary = Summary::default();
    let mut last_tick = Instant::now();
    let mut stop = std::pin::pin!(stop);

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
            _ = poll.tick() => {
                drain(ring.get_mut(), &mut summary.events, &mut on)?;
            }
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            summary.lost = lost_total(&lost);
            tick(&summary);
        }
    };
    // Whatever arrived before the stop is still delivered.
    drain(ring.get_mut(), &mut summary.events, &mut on)?;
    summary.lost = lost_total(&lost);
    tick(&summary);
    Ok((summary, stop))
}

/// Warns on stderr each time the kernel's count of lost events grows: a
/// `tick` for [`consume`].
#[derive(Debug, Default)]
pub struct LostWarner {
    reported: u64,
}

impl LostWarner {
    pub fn tick(&mut self, s: &Summary) {
        if s.lost > self.reported {
            tracing::warn!(
                "{} events lost: the ring buffer was full",
                s.lost - self.reported
            );
            self.reported = s.lost;
        }
    }
}

/// Writes the end-of-run summary to stderr: [`summary_line`].
pub fn report(what: &str, s: &Summary) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{}", summary_line(what, s));
}

/// The end-of-run summary, `kscope trace WHAT: N events, M lost`: the one
/// line scripts (and kscope's own tests and benchmarks) read the totals
/// from. [`parse_summary`] reads it back.
pub fn summary_line(what: &str, s: &Summary) -> String {
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

/// Copies a `T` out of a ring-buffer record; `None` if the record is
/// shorter than a `T`.
pub fn decode<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the record holds at least size_of::<T>() bytes, read_unaligned
    // makes no alignment demand, and a Pod type is plain old data valid for
    // any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
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
