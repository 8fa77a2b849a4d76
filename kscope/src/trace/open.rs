//! `kscope trace open`: every open(2), openat(2) and openat2(2), with its
//! result, from the syscalls tracepoints (`trace_open` in kscope-ebpf).
//!
//! Fallback policy: open and openat2 are traced where their tracepoints
//! exist; a missing one is skipped with a warning. openat is required.
//!
//! Count mode ([`OpenCounter`], `-c`) counts opens and failed opens per
//! process name in the kernel and sends nothing through the ring buffer.
//! Its table holds [`OPEN_COUNTS_MAX`] names; opens of a name that finds it
//! full are counted as uncounted ([`OpenCounter::uncounted`]), never
//! dropped silently.
//!
//! Minimum kernel: 5.8 (ring buffer; count mode creates one too, of a
//! single page).

use std::{
    collections::HashMap,
    io::{self, Cursor, Write},
    os::fd::AsFd as _,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{IterableMap as _, MapData, PerCpuArray, PerCpuHashMap},
};
use kscope_common::trace::{
    COMM_LEN, GLOBAL_COUNT_MODE, GLOBAL_FAILED_ONLY, MAP_EVENTS, MAP_OPEN_COUNTS, MAP_OPEN_PENDING,
    MAP_OPEN_UNCOUNTED, OPEN_COUNTS_MAX, OpenCounts, OpenEvent, PROG_OPEN_ENTER_OPEN,
    PROG_OPEN_ENTER_OPENAT, PROG_OPEN_ENTER_OPENAT2, PROG_OPEN_EXIT_OPEN, PROG_OPEN_EXIT_OPENAT,
    PROG_OPEN_EXIT_OPENAT2,
};

use super::{
    Filters, Stop, Summary, TraceError, decode,
    format::{self, Clock},
};
use crate::sys::bpf::{MapFdOps, dump_map};

static TRACE_OPEN_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trace_open"));

/// (enter program, exit program, syscall) for each traced syscall; the
/// first is required.
const HOOKS: &[(&str, &str, &str)] = &[
    (PROG_OPEN_ENTER_OPENAT, PROG_OPEN_EXIT_OPENAT, "openat"),
    (PROG_OPEN_ENTER_OPEN, PROG_OPEN_EXIT_OPEN, "open"),
    (PROG_OPEN_ENTER_OPENAT2, PROG_OPEN_EXIT_OPENAT2, "openat2"),
];

/// Options of `kscope trace open`.
#[derive(Clone, Debug, Default)]
pub struct OpenOpts {
    pub filters: Filters,
    /// Only failed opens (`-x`).
    pub failed_only: bool,
    /// A TIME(s) column: seconds since the start (`-T`).
    pub timestamps: bool,
    pub json: bool,
    pub duration: Option<Duration>,
}

/// Runs the tracer, writing events to `out`, until the duration passes or
/// Ctrl-C or SIGTERM. Reports readiness on stderr once attached.
///
/// # Errors
/// Missing capabilities or tracefs, the openat tracepoints missing, a
/// verifier rejection, or an output error.
pub async fn run(opts: &OpenOpts, out: &mut impl Write) -> Result<(Summary, Stop), TraceError> {
    super::preflight("kscope trace open")?;
    let mut signals = super::Signals::catch()?;
    let mut lost = super::LostWarner::default();
    let failed_only = u32::from(opts.failed_only).to_ne_bytes();
    let mut ebpf = super::load_sized(
        TRACE_OPEN_OBJ,
        &opts.filters,
        &[(GLOBAL_FAILED_ONLY, &failed_only[..])],
        // Count mode's table is not used here.
        &[(MAP_OPEN_COUNTS, 1)],
    )?;
    super::attach_syscall_pairs(&mut ebpf, HOOKS)?;
    let clock = Clock::now();
    if !opts.json {
        write_header(out, opts.timestamps)?;
    }
    let mut flags_buf = [0u8; 192];
    let result = super::consume(
        &mut ebpf,
        signals.recv(),
        opts.duration,
        |bytes| {
            let Some((ev, path)) = record(bytes) else {
                return Ok(());
            };
            if opts.json {
                write_json(out, &ev, path, &clock, &mut flags_buf)
            } else {
                write_row(out, &ev, path, &clock, opts.timestamps, &mut flags_buf)
            }
        },
        |s| lost.tick(s),
    )
    .await;
    out.flush()?;
    result
}

/// Opens counted per comm in the kernel, no events through the ring buffer.
///
/// Owns the loaded object: dropping it detaches every program and frees
/// the maps. Only the syscalls' exit tracepoints are attached; each open
/// that passes the filters is counted under its task's comm (the thread's
/// name, 15 bytes at most) when it returns.
///
/// Minimum kernel: 5.8.
pub struct OpenCounter {
    // Declared first, so it is dropped (and detached) first.
    _ebpf: Ebpf,
    counts: PerCpuHashMap<MapData, [u8; COMM_LEN], OpenCounts>,
    uncounted: PerCpuArray<MapData, u64>,
    cpus: usize,
}

/// One process name's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenCount {
    /// The comm, invalid UTF-8 replaced by U+FFFD.
    pub comm: String,
    /// Opens that returned while counting, failed ones included.
    pub opens: u64,
    /// Of those, the ones that returned an error.
    pub failed: u64,
}

// The daemon keeps a counter in a tokio task or behind a Mutex.
const _: () = {
    const fn send<T: Send>() {}
    send::<OpenCounter>();
};

fn map_err(what: &str, e: impl std::fmt::Display) -> TraceError {
    TraceError::Io(io::Error::other(format!("{what}: {e}")))
}

impl OpenCounter {
    /// Preflight, load with `filters` in count mode, attach; logs readiness
    /// like the tracers.
    ///
    /// # Errors
    /// As [`run`]: missing capabilities or tracefs, the openat tracepoints
    /// missing, a verifier rejection; also a bad filter.
    pub fn start(filters: &Filters) -> Result<Self, TraceError> {
        Self::start_with(filters, false)
    }

    /// [`start`](Self::start), counting only failed opens when
    /// `failed_only` (`-x`): then `opens` and `failed` are equal.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_with(filters: &Filters, failed_only: bool) -> Result<Self, TraceError> {
        super::preflight("kscope trace open")?;
        // Before attaching, so its read is not counted.
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| map_err(what, e))?;
        let failed_only = u32::from(failed_only).to_ne_bytes();
        let count_mode = 1u32.to_ne_bytes();
        // The ring buffer stays empty and the enter programs' table unused:
        // both shrink to their minimum.
        let page = u32::try_from(crate::sys::page_size()).unwrap_or(4096);
        let mut ebpf = super::load_sized(
            TRACE_OPEN_OBJ,
            filters,
            &[
                (GLOBAL_FAILED_ONLY, &failed_only[..]),
                (GLOBAL_COUNT_MODE, &count_mode[..]),
            ],
            &[(MAP_EVENTS, page), (MAP_OPEN_PENDING, 1)],
        )?;
        let attached = super::attach_syscalls(&mut ebpf, HOOKS, true)?;
        let counts = ebpf
            .take_map(MAP_OPEN_COUNTS)
            .ok_or_else(|| map_err(MAP_OPEN_COUNTS, "missing"))?;
        let counts = PerCpuHashMap::try_from(counts).map_err(|e| map_err(MAP_OPEN_COUNTS, e))?;
        let uncounted = ebpf
            .take_map(MAP_OPEN_UNCOUNTED)
            .ok_or_else(|| map_err(MAP_OPEN_UNCOUNTED, "missing"))?;
        let uncounted =
            PerCpuArray::try_from(uncounted).map_err(|e| map_err(MAP_OPEN_UNCOUNTED, e))?;
        tracing::info!("counting {} per process name (ready)", attached.join(", "));
        Ok(Self {
            _ebpf: ebpf,
            counts,
            uncounted,
            cpus,
        })
    }

    /// Current totals per comm, summed over CPUs (any order).
    ///
    /// # Errors
    /// A failed map read.
    pub fn counts(&self) -> Result<Vec<OpenCount>, TraceError> {
        let size = std::mem::size_of::<OpenCounts>();
        let ops = MapFdOps::new(self.counts.map().fd().as_fd(), COMM_LEN, size, self.cpus);
        let (dump, _) = dump_map(&ops, None).map_err(|e| map_err(MAP_OPEN_COUNTS, e))?;
        // Keyed by comm: a key read twice (the kernel adding names during
        // the read) must not count twice.
        let mut by_comm: HashMap<&[u8], OpenCounts> = HashMap::with_capacity(dump.len);
        for i in 0..dump.len {
            let (comm, per_cpu) = dump.entry(&ops, i);
            let mut sum = OpenCounts::default();
            for slot in per_cpu.chunks_exact(size.next_multiple_of(8)) {
                let c: OpenCounts = super::decode(slot).unwrap_or_default();
                sum.opens = sum.opens.wrapping_add(c.opens);
                sum.failed = sum.failed.wrapping_add(c.failed);
            }
            by_comm.insert(comm, sum);
        }
        Ok(by_comm
            .into_iter()
            .map(|(comm, c)| OpenCount {
                comm: String::from_utf8_lossy(format::cstr(comm)).into_owned(),
                opens: c.opens,
                failed: c.failed,
            })
            .collect())
    }

    /// Opens not counted because the map was full (summed over CPUs).
    ///
    /// # Errors
    /// A failed map read.
    pub fn uncounted(&self) -> Result<u64, TraceError> {
        let v = self
            .uncounted
            .get(&0, 0)
            .map_err(|e| map_err(MAP_OPEN_UNCOUNTED, e))?;
        Ok(v.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
    }
}

/// `kscope trace open -c`: counts until the duration passes or Ctrl-C or
/// SIGTERM, then writes the totals to `out`, most opens first. The summary
/// counts the opens counted as events and the uncounted ones as lost.
///
/// # Errors
/// As [`OpenCounter::start`], or an output error.
pub async fn run_count(
    opts: &OpenOpts,
    out: &mut impl Write,
) -> Result<(Summary, Stop), TraceError> {
    let mut signals = super::Signals::catch()?;
    let counter = OpenCounter::start_with(&opts.filters, opts.failed_only)?;
    let stop = wait_for_stop(&mut signals, opts.duration).await;
    let mut counts = counter.counts()?;
    let lost = counter.uncounted()?;
    drop(counter);
    if lost > 0 {
        tracing::warn!(
            "{lost} opens not counted: the table of {OPEN_COUNTS_MAX} process names was full"
        );
    }
    sort_counts(&mut counts);
    write_counts(out, &counts, opts.json)?;
    out.flush()?;
    let events = counts.iter().fold(0u64, |a, c| a.wrapping_add(c.opens));
    Ok((Summary { events, lost }, stop))
}

/// Waits until `duration` passes or SIGINT or SIGTERM arrives.
async fn wait_for_stop(signals: &mut super::Signals, duration: Option<Duration>) -> Stop {
    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        stop = signals.recv() => stop,
        () = sleep => Stop::Duration,
    }
}

/// Most opens first; ties by failures, then by name, so the order is stable.
pub fn sort_counts(counts: &mut [OpenCount]) {
    counts.sort_by(|a, b| {
        b.opens
            .cmp(&a.opens)
            .then(b.failed.cmp(&a.failed))
            .then_with(|| a.comm.cmp(&b.comm))
    });
}

/// `-c` output, in the order given: a table (`COMM OPENS FAILED`), or with
/// `json` one object per line with the fields `comm`, `opens`, `failed`.
pub fn write_counts(out: &mut impl Write, counts: &[OpenCount], json: bool) -> io::Result<()> {
    if !json {
        writeln!(out, "{:<16} {:>12} {:>12}", "COMM", "OPENS", "FAILED")?;
    }
    for c in counts {
        if json {
            out.write_all(b"{\"comm\":")?;
            format::write_json_str(out, c.comm.as_bytes())?;
            writeln!(out, ",\"opens\":{},\"failed\":{}}}", c.opens, c.failed)?;
        } else {
            format::write_text(out, c.comm.as_bytes())?;
            writeln!(
                out,
                "{:w$} {:>12} {:>12}",
                "",
                c.opens,
                c.failed,
                w = 16usize.saturating_sub(c.comm.chars().count())
            )?;
        }
    }
    Ok(())
}

pub fn write_header(out: &mut impl Write, timestamps: bool) -> io::Result<()> {
    if timestamps {
        write!(out, "{:<14} ", "TIME(s)")?;
    }
    writeln!(
        out,
        "{:<7} {:<7} {:<6} {:<16} {:>4} {:<12} {:<28} PATH",
        "PID", "TID", "UID", "COMM", "FD", "ERR", "FLAGS"
    )
}

/// Splits a ring-buffer record into its header and its path (the
/// `path_len` bytes that follow the header; fewer if the record is short).
pub fn record(bytes: &[u8]) -> Option<(OpenEvent, &[u8])> {
    let ev: OpenEvent = decode(bytes)?;
    let rest = bytes.get(std::mem::size_of::<OpenEvent>()..)?;
    let len = (ev.path_len as usize).min(rest.len());
    Some((ev, &rest[..len]))
}

fn flags_str(buf: &mut [u8; 192], flags: u32) -> io::Result<&str> {
    let mut c = Cursor::new(&mut buf[..]);
    format::write_open_flags(&mut c, flags)?;
    let n = c.position() as usize;
    Ok(std::str::from_utf8(&buf[..n]).unwrap_or("?"))
}

/// One table row. FD is `-1` and ERR the errno's name for a failed open;
/// a path cut at `PATH_MAX - 1` bytes ends in `...`.
pub fn write_row(
    out: &mut impl Write,
    ev: &OpenEvent,
    path: &[u8],
    clock: &Clock,
    timestamps: bool,
    flags_buf: &mut [u8; 192],
) -> io::Result<()> {
    if timestamps {
        write!(out, "{:<14.6} ", clock.since_start(ev.ts_ns))?;
    }
    write!(out, "{:<7} {:<7} {:<6} ", ev.pid, ev.tid, ev.uid)?;
    let comm = format::cstr(&ev.comm);
    format::write_text(out, comm)?;
    write!(
        out,
        "{:width$} ",
        "",
        width = 16usize.saturating_sub(comm.len())
    )?;
    if ev.ret >= 0 {
        write!(out, "{:>4} {:<12} ", ev.ret, "-")?;
    } else {
        let errno = -ev.ret;
        match format::errno_name(errno) {
            Some(name) => write!(out, "{:>4} {name:<12} ", -1)?,
            None => write!(out, "{:>4} {errno:<12} ", -1)?,
        }
    }
    write!(out, "{:<28} ", flags_str(flags_buf, ev.flags)?)?;
    format::write_text(out, path)?;
    if ev.path_truncated != 0 {
        out.write_all(b"...")?;
    }
    out.write_all(b"\n")
}

/// One JSON line. Fields: `ts_unix_ns`, `pid`, `tid`, `uid`, `comm`, `fd`
/// (null when the open failed), `errno` and `errno_name` (null when it
/// succeeded), `flags` (the number), `flags_str`, `path`, `path_truncated`
/// (true when the path was longer than `PATH_MAX - 1` bytes and cut);
/// `comm_b64` and `path_b64` when those are not UTF-8
/// ([`format::write_json_bytes`]).
pub fn write_json(
    out: &mut impl Write,
    ev: &OpenEvent,
    path: &[u8],
    clock: &Clock,
    flags_buf: &mut [u8; 192],
) -> io::Result<()> {
    write!(
        out,
        "{{\"ts_unix_ns\":{},\"pid\":{},\"tid\":{},\"uid\":{},",
        clock.unix_ns(ev.ts_ns),
        ev.pid,
        ev.tid,
        ev.uid
    )?;
    format::write_json_bytes(out, "comm", format::cstr(&ev.comm))?;
    if ev.ret >= 0 {
        write!(out, ",\"fd\":{},\"errno\":null,\"errno_name\":null", ev.ret)?;
    } else {
        let errno = -ev.ret;
        write!(out, ",\"fd\":null,\"errno\":{errno},\"errno_name\":")?;
        match format::errno_name(errno) {
            Some(n) => write!(out, "\"{n}\"")?,
            None => out.write_all(b"null")?,
        }
    }
    write!(
        out,
        ",\"flags\":{},\"flags_str\":\"{}\",",
        ev.flags,
        flags_str(flags_buf, ev.flags)?
    )?;
    format::write_json_bytes(out, "path", path)?;
    writeln!(out, ",\"path_truncated\":{}}}", ev.path_truncated != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ret: i64) -> OpenEvent {
        let mut ev = OpenEvent {
            ts_ns: 0,
            ret,
            pid: 42,
            tid: 43,
            uid: 1000,
            flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u32,
            comm: [0; 16],
            path_len: 0,
            path_truncated: 0,
        };
        ev.comm[..3].copy_from_slice(b"cat");
        ev
    }

    /// The ring-buffer record the kernel sends: header, then the path.
    fn wire(ev: &OpenEvent, path: &[u8]) -> Vec<u8> {
        let mut ev = *ev;
        ev.path_len = path.len() as u32;
        // SAFETY: OpenEvent is plain old data without padding.
        let hdr = unsafe {
            std::slice::from_raw_parts(
                (&raw const ev).cast::<u8>(),
                std::mem::size_of::<OpenEvent>(),
            )
        };
        [hdr, path].concat()
    }

    #[test]
    fn records_carry_exactly_their_path() {
        let rec = wire(&event(3), b"/etc/hosts");
        let (ev, path) = record(&rec).expect("record");
        assert_eq!((ev.ret, path), (3, &b"/etc/hosts"[..]));
        // A record shorter than its header is refused; one shorter than its
        // path_len yields what it holds.
        assert!(record(&rec[..10]).is_none());
        let (_, path) = record(&rec[..rec.len() - 2]).expect("record");
        assert_eq!(path, b"/etc/hos");
    }

    #[test]
    fn cut_paths_are_marked_in_text_and_json() {
        let clock = Clock::now();
        let mut buf = [0u8; 192];
        let mut ev = event(-36);
        ev.path_truncated = 1;
        let long = vec![b'a'; 4095];
        let mut out = Vec::new();
        write_row(&mut out, &ev, &long, &clock, false, &mut buf).expect("row");
        let row = String::from_utf8(out).expect("utf8");
        assert!(
            row.ends_with(&format!(" {}...\n", "a".repeat(4095))),
            "{row}"
        );
        let mut out = Vec::new();
        write_json(&mut out, &ev, &long, &clock, &mut buf).expect("json");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["path_truncated"], true);
        assert_eq!(v["path"].as_str().map(str::len), Some(4095));
        ev.path_truncated = 0;
        let mut out = Vec::new();
        write_json(&mut out, &ev, b"/x", &clock, &mut buf).expect("json");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["path_truncated"], false);
    }

    #[test]
    fn json_reports_fd_or_errno() {
        let clock = Clock::now();
        let mut buf = [0u8; 192];
        let mut out = Vec::new();
        write_json(&mut out, &event(3), b"/etc/hosts", &clock, &mut buf).expect("write");
        write_json(&mut out, &event(-2), b"/nope\"x", &clock, &mut buf).expect("write");
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(lines[0]["fd"], 3);
        assert!(lines[0]["errno"].is_null());
        assert_eq!(lines[0]["path"], "/etc/hosts");
        assert_eq!(lines[0]["comm"], "cat");
        assert_eq!(lines[0]["flags_str"], "O_RDONLY|O_CLOEXEC");
        assert_eq!(lines[1]["errno"], 2);
        assert_eq!(lines[1]["errno_name"], "ENOENT");
        assert!(lines[1]["fd"].is_null());
        assert_eq!(lines[1]["path"], "/nope\"x");
        assert_eq!(
            (lines[1]["pid"].as_u64(), lines[1]["tid"].as_u64()),
            (Some(42), Some(43))
        );
    }

    fn count(comm: &str, opens: u64, failed: u64) -> OpenCount {
        OpenCount {
            comm: comm.into(),
            opens,
            failed,
        }
    }

    #[test]
    fn counts_sort_most_opens_first_then_stably() {
        let mut c = vec![
            count("b", 2, 0),
            count("a", 9, 1),
            count("d", 2, 1),
            count("c", 2, 0),
        ];
        sort_counts(&mut c);
        let order: Vec<&str> = c.iter().map(|c| c.comm.as_str()).collect();
        assert_eq!(order, ["a", "d", "b", "c"]);
    }

    #[test]
    fn count_json_has_the_documented_fields() {
        let mut out = Vec::new();
        let rows = [count("cat", 12, 3), count("we\"ird\n", 1, 0)];
        write_counts(&mut out, &rows, true).expect("write");
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(
            lines,
            [
                serde_json::json!({"comm": "cat", "opens": 12, "failed": 3}),
                serde_json::json!({"comm": "we\"ird\n", "opens": 1, "failed": 0}),
            ]
        );
    }

    #[test]
    fn count_table_columns_line_up_with_the_header() {
        let mut out = Vec::new();
        let rows = [count("systemd-journal", 123_456, 7), count("é\tx", 5, 5)];
        write_counts(&mut out, &rows, false).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        let header: String = lines[0].iter().collect();
        // Right-aligned numbers end where their header does.
        let opens_end = header.find("OPENS").expect("OPENS") + "OPENS".len();
        for (row, opens, failed) in [(&lines[1], "123456", "7"), (&lines[2], "5", "5")] {
            assert_eq!(row.len(), lines[0].len(), "{text}");
            let cut: String = row[..opens_end].iter().collect();
            let whole: String = row.iter().collect();
            assert!(cut.ends_with(&format!(" {opens}")), "{text}");
            assert!(whole.ends_with(&format!(" {failed}")), "{text}");
        }
        // A control character cannot break the row.
        assert!(
            text.lines().nth(2).is_some_and(|l| l.starts_with("é?x ")),
            "{text}"
        );
    }

    #[test]
    fn table_rows_line_up_with_the_header() {
        let clock = Clock::now();
        let mut buf = [0u8; 192];
        let mut out = Vec::new();
        write_header(&mut out, false).expect("header");
        write_row(&mut out, &event(-13), b"/root/x", &clock, false, &mut buf).expect("row");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        fn col<'a>(header: &str, l: &'a str, name: &str) -> Option<&'a str> {
            header.find(name).map(|i| &l[i..])
        }
        let col = |l, name| col(lines[0], l, name);
        assert_eq!(col(lines[1], "PATH"), Some("/root/x"));
        assert!(
            col(lines[1], "ERR").is_some_and(|s| s.starts_with("EACCES")),
            "{text}"
        );
        assert!(
            col(lines[1], "COMM").is_some_and(|s| s.starts_with("cat ")),
            "{text}"
        );
    }
}
