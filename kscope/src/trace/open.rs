//! `kscope trace open`: every open(2), openat(2) and openat2(2), with its
//! result, from the syscalls tracepoints (`trace_open` in kscope-ebpf).
//!
//! Fallback policy: open and openat2 are traced where their tracepoints
//! exist; a missing one is skipped with a warning. openat is required.
//!
//! Minimum kernel: 5.8 (ring buffer).

use std::{
    io::{self, Cursor, Write},
    time::Duration,
};

use kscope_common::trace::{
    GLOBAL_FAILED_ONLY, OpenEvent, PROG_OPEN_ENTER_OPEN, PROG_OPEN_ENTER_OPENAT,
    PROG_OPEN_ENTER_OPENAT2, PROG_OPEN_EXIT_OPEN, PROG_OPEN_EXIT_OPENAT, PROG_OPEN_EXIT_OPENAT2,
};

use super::{
    Filters, Stop, Summary, TraceError, decode,
    format::{self, Clock},
};

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
    let failed_only = u32::from(opts.failed_only).to_ne_bytes();
    let mut ebpf = super::load(
        TRACE_OPEN_OBJ,
        &opts.filters,
        &[(GLOBAL_FAILED_ONLY, &failed_only[..])],
    )?;
    super::attach_syscall_pairs(&mut ebpf, HOOKS)?;
    let clock = Clock::now();
    if !opts.json {
        write_header(out, opts.timestamps)?;
    }
    let mut flags_buf = [0u8; 192];
    let result = super::consume(
        &mut ebpf,
        &mut signals,
        opts.duration,
        |bytes| {
            let Some(ev) = decode(bytes) else {
                return Ok(());
            };
            if opts.json {
                write_json(out, &ev, &clock, &mut flags_buf)
            } else {
                write_row(out, &ev, &clock, opts.timestamps, &mut flags_buf)
            }
        },
        || Ok(()),
    )
    .await;
    out.flush()?;
    result
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

fn flags_str(buf: &mut [u8; 192], flags: u32) -> io::Result<&str> {
    let mut c = Cursor::new(&mut buf[..]);
    format::write_open_flags(&mut c, flags)?;
    let n = c.position() as usize;
    Ok(std::str::from_utf8(&buf[..n]).unwrap_or("?"))
}

/// One table row. FD is `-1` and ERR the errno's name for a failed open.
pub fn write_row(
    out: &mut impl Write,
    ev: &OpenEvent,
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
    format::write_text(out, format::cstr(&ev.path))?;
    out.write_all(b"\n")
}

/// One JSON line. Fields: `ts_unix_ns`, `pid`, `tid`, `uid`, `comm`, `fd`
/// (null when the open failed), `errno` and `errno_name` (null when it
/// succeeded), `flags` (the number), `flags_str`, `path`.
pub fn write_json(
    out: &mut impl Write,
    ev: &OpenEvent,
    clock: &Clock,
    flags_buf: &mut [u8; 192],
) -> io::Result<()> {
    write!(
        out,
        "{{\"ts_unix_ns\":{},\"pid\":{},\"tid\":{},\"uid\":{},\"comm\":",
        clock.unix_ns(ev.ts_ns),
        ev.pid,
        ev.tid,
        ev.uid
    )?;
    format::write_json_str(out, format::cstr(&ev.comm))?;
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
        ",\"flags\":{},\"flags_str\":\"{}\",\"path\":",
        ev.flags,
        flags_str(flags_buf, ev.flags)?
    )?;
    format::write_json_str(out, format::cstr(&ev.path))?;
    out.write_all(b"}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ret: i64, path: &[u8]) -> OpenEvent {
        let mut ev = OpenEvent {
            ts_ns: 0,
            ret,
            pid: 42,
            tid: 43,
            uid: 1000,
            flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u32,
            comm: [0; 16],
            path: [0; 256],
        };
        ev.comm[..3].copy_from_slice(b"cat");
        ev.path[..path.len()].copy_from_slice(path);
        ev
    }

    #[test]
    fn json_reports_fd_or_errno() {
        let clock = Clock::now();
        let mut buf = [0u8; 192];
        let mut out = Vec::new();
        write_json(&mut out, &event(3, b"/etc/hosts"), &clock, &mut buf).expect("write");
        write_json(&mut out, &event(-2, b"/nope\"x"), &clock, &mut buf).expect("write");
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

    #[test]
    fn table_rows_line_up_with_the_header() {
        let clock = Clock::now();
        let mut buf = [0u8; 192];
        let mut out = Vec::new();
        write_header(&mut out, false).expect("header");
        write_row(&mut out, &event(-13, b"/root/x"), &clock, false, &mut buf).expect("row");
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
