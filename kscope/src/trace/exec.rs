//! `kscope trace exec`: every execve(2) and execveat(2) with its arguments,
//! parent and result, from `trace_exec` in kscope-ebpf.
//!
//! Fallback policy: execveat is traced where its tracepoints exist, else
//! skipped with a warning; execve is required. Without kernel BTF the
//! parent pid cannot be located in task_struct and reads as 0 (warned once).
//! The `-n` filter matches the name the task had when it called exec.
//!
//! Minimum kernel: 5.8 (ring buffer).

use std::{
    io::{self, Write},
    time::Duration,
};

use kscope_common::trace::{
    ARGS_SIZE, ExecEvent, GLOBAL_MAX_ARGS, GLOBAL_OFF_OLD_PID, GLOBAL_OFF_REAL_PARENT,
    GLOBAL_OFF_TGID, PROG_EXEC_ENTER_EXECVE, PROG_EXEC_ENTER_EXECVEAT, PROG_EXEC_EXIT_EXECVE,
    PROG_EXEC_EXIT_EXECVEAT, PROG_EXEC_PROCESS_EXEC,
};

use aya::Ebpf;

use super::{Filters, Stop, Summary, TraceError, format};
use crate::sys::btf::Btf;

static TRACE_EXEC_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trace_exec"));

const HOOKS: &[(&str, &str, &str)] = &[
    (PROG_EXEC_ENTER_EXECVE, PROG_EXEC_EXIT_EXECVE, "execve"),
    (
        PROG_EXEC_ENTER_EXECVEAT,
        PROG_EXEC_EXIT_EXECVEAT,
        "execveat",
    ),
];

/// Options of `kscope trace exec`.
#[derive(Clone, Debug)]
pub struct ExecOpts {
    pub filters: Filters,
    /// Arguments kept per exec (1 to 64).
    pub max_args: u32,
    pub timestamps: bool,
    pub json: bool,
    pub duration: Option<Duration>,
}

fn task_offsets() -> (u32, u32) {
    match Btf::from_sys_fs(&["task_struct"]).and_then(|b| {
        Ok((
            b.member_offset("task_struct", "real_parent")?,
            b.member_offset("task_struct", "tgid")?,
        ))
    }) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("{e}; PPID will read as 0");
            (0, 0)
        }
    }
}

/// Offset of `old_pid` in sched:sched_process_exec's record, from its
/// format file; None when the file or the field is missing.
fn old_pid_offset() -> Option<u32> {
    let path =
        std::path::Path::new(crate::sys::TRACEFS).join("events/sched/sched_process_exec/format");
    let text = std::fs::read_to_string(path).ok()?;
    super::connect::parse_format(&text, &["old_pid"])?
        .first()
        .copied()
}

/// Attaches the program that follows a non-leader thread's exec to the
/// thread id it ends with. Without it (no sched_process_exec tracepoint,
/// which every supported kernel has) such execs go unreported: warned.
fn attach_process_exec(ebpf: &mut Ebpf, old_pid_off: Option<u32>) -> Result<(), TraceError> {
    if old_pid_off.is_none() {
        tracing::warn!(
            "sched:sched_process_exec has no old_pid field; execs from threads other than \
             the main one will be missed"
        );
        return Ok(());
    }
    let prog = PROG_EXEC_PROCESS_EXEC;
    let p: &mut aya::programs::TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| io::Error::other(format!("{prog} missing")))?
        .try_into()
        .map_err(|e| super::load_err(prog, e))?;
    p.load().map_err(|e| super::load_err(prog, e))?;
    p.attach("sched", "sched_process_exec")
        .map_err(|e| super::load_err(prog, e))?;
    Ok(())
}

/// Loads `trace_exec` with `filters`, keeping up to `max_args` arguments per
/// exec, and attaches it. Dropping the object detaches it.
///
/// # Errors
/// The execve tracepoints missing, or a verifier rejection.
pub fn attach(filters: &Filters, max_args: u32) -> Result<Ebpf, TraceError> {
    let (parent, tgid) = task_offsets();
    let old_pid_off = old_pid_offset();
    let (max, parent, tgid, old_pid) = (
        max_args.to_ne_bytes(),
        parent.to_ne_bytes(),
        tgid.to_ne_bytes(),
        old_pid_off.unwrap_or(0).to_ne_bytes(),
    );
    let mut ebpf = super::load(
        TRACE_EXEC_OBJ,
        filters,
        &[
            (GLOBAL_MAX_ARGS, &max[..]),
            (GLOBAL_OFF_REAL_PARENT, &parent[..]),
            (GLOBAL_OFF_TGID, &tgid[..]),
            (GLOBAL_OFF_OLD_PID, &old_pid[..]),
        ],
    )?;
    // Before the syscalls, so that no exec is seen half.
    attach_process_exec(&mut ebpf, old_pid_off)?;
    super::attach_syscall_pairs(&mut ebpf, HOOKS)?;
    Ok(ebpf)
}

/// Runs the tracer, writing events to `out`, until the duration passes or
/// Ctrl-C or SIGTERM.
///
/// # Errors
/// Missing capabilities or tracefs, the execve tracepoints missing, a
/// verifier rejection, or an output error.
pub async fn run(opts: &ExecOpts, out: &mut impl Write) -> Result<(Summary, Stop), TraceError> {
    super::preflight("kscope trace exec")?;
    let mut signals = super::Signals::catch()?;
    let mut lost = super::LostWarner::default();
    let mut ebpf = attach(&opts.filters, opts.max_args)?;
    let clock = format::Clock::now();
    if !opts.json {
        write_header(out, opts.timestamps)?;
    }
    let result = super::consume(
        &mut ebpf,
        signals.recv(),
        opts.duration,
        |bytes| {
            let Some(ev) = event(bytes) else {
                return Ok(());
            };
            if opts.json {
                write_json(out, ev, &clock)
            } else {
                write_row(out, ev, &clock, opts.timestamps)
            }
        },
        |s| lost.tick(s),
    )
    .await;
    out.flush()?;
    result
}

/// Borrows an event in place (it is over 4 KiB; no copy per event).
pub fn event(bytes: &[u8]) -> Option<&ExecEvent> {
    if bytes.len() < std::mem::size_of::<ExecEvent>()
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<ExecEvent>())
    {
        return None;
    }
    // SAFETY: long enough and aligned (ring-buffer records are 8-aligned),
    // and ExecEvent is plain old data valid for any bit pattern.
    Some(unsafe { &*bytes.as_ptr().cast::<ExecEvent>() })
}

/// The event's arguments, each without its NUL.
pub fn args(ev: &ExecEvent) -> impl Iterator<Item = &[u8]> + Clone {
    let used = (ev.args_len as usize).min(ARGS_SIZE);
    ev.args[..used].split(|&b| b == 0).take(ev.argc as usize)
}

pub fn write_header(out: &mut impl Write, timestamps: bool) -> io::Result<()> {
    if timestamps {
        write!(out, "{:<14} ", "TIME(s)")?;
    }
    writeln!(
        out,
        "{:<16} {:<7} {:<7} {:>12} ARGS",
        "PCOMM", "PID", "PPID", "RET"
    )
}

fn write_ret(out: &mut impl Write, ret: i32) -> io::Result<()> {
    match format::errno_name(-i64::from(ret)).filter(|_| ret < 0) {
        Some(n) => write!(out, "{n:>12} "),
        None => write!(out, "{ret:>12} "),
    }
}

/// True when argument `i` was cut short (at `ARG_LEN - 1` bytes, or where
/// `ARGS_SIZE` ran out).
pub fn arg_cut(ev: &ExecEvent, i: usize) -> bool {
    i < 64 && ev.cut_args & (1 << i) != 0
}

/// True when anything of the arguments is missing: one cut short, or some
/// left out.
pub fn args_truncated(ev: &ExecEvent) -> bool {
    ev.truncated != 0 || ev.cut_args != 0
}

/// One row: arguments joined by spaces; `...` right after an argument
/// that was cut short, and ` ...` at the end when arguments were left out.
pub fn write_row(
    out: &mut impl Write,
    ev: &ExecEvent,
    clock: &format::Clock,
    timestamps: bool,
) -> io::Result<()> {
    if timestamps {
        write!(out, "{:<14.6} ", clock.since_start(ev.ts_ns))?;
    }
    let comm = format::cstr(&ev.comm);
    format::write_text(out, comm)?;
    write!(
        out,
        "{:w$} {:<7} {:<7} ",
        "",
        ev.pid,
        ev.ppid,
        w = 16usize.saturating_sub(comm.len())
    )?;
    write_ret(out, ev.ret)?;
    for (i, a) in args(ev).enumerate() {
        if i > 0 {
            out.write_all(b" ")?;
        }
        format::write_text(out, a)?;
        if arg_cut(ev, i) {
            out.write_all(b"...")?;
        }
    }
    if ev.truncated != 0 {
        out.write_all(b" ...")?;
    }
    out.write_all(b"\n")
}

/// One JSON line. Fields: `ts_unix_ns`, `pid`, `ppid`, `uid`, `comm`, `ret`
/// (0 or -errno), `errno_name`, `args` (array of strings),
/// `args_truncated` (true when any argument was cut short or left out),
/// `args_cut` (indexes in `args` of the ones cut short); `comm_b64` and
/// `args_b64` when those are not UTF-8 ([`format::write_json_bytes`]).
pub fn write_json(out: &mut impl Write, ev: &ExecEvent, clock: &format::Clock) -> io::Result<()> {
    write!(
        out,
        "{{\"ts_unix_ns\":{},\"pid\":{},\"ppid\":{},\"uid\":{},",
        clock.unix_ns(ev.ts_ns),
        ev.pid,
        ev.ppid,
        ev.uid
    )?;
    format::write_json_bytes(out, "comm", format::cstr(&ev.comm))?;
    write!(out, ",\"ret\":{},\"errno_name\":", ev.ret)?;
    match format::errno_name(-i64::from(ev.ret)).filter(|_| ev.ret < 0) {
        Some(n) => write!(out, "\"{n}\"")?,
        None => out.write_all(b"null")?,
    }
    out.write_all(b",")?;
    format::write_json_bytes_list(out, "args", args(ev))?;
    write!(
        out,
        ",\"args_truncated\":{},\"args_cut\":[",
        args_truncated(ev)
    )?;
    let cut = (0..args(ev).count()).filter(|&i| arg_cut(ev, i));
    for (k, i) in cut.enumerate() {
        if k > 0 {
            out.write_all(b",")?;
        }
        write!(out, "{i}")?;
    }
    out.write_all(b"]}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kscope_common::trace::ARG_LEN;

    fn event_with(argv: &[&str], truncated: bool) -> Box<ExecEvent> {
        // SAFETY: ExecEvent is plain old data; all-zero is valid.
        let mut ev: Box<ExecEvent> = Box::new(unsafe { std::mem::zeroed() });
        ev.pid = 10;
        ev.ppid = 1;
        ev.ret = -2;
        ev.comm[..2].copy_from_slice(b"sh");
        let mut off = 0;
        for a in argv {
            ev.args[off..off + a.len()].copy_from_slice(a.as_bytes());
            off += a.len() + 1;
        }
        ev.argc = argv.len() as u32;
        ev.args_len = off as u32;
        ev.truncated = u32::from(truncated);
        assert!(off <= ARGS_SIZE + ARG_LEN);
        ev
    }

    #[test]
    fn args_split_on_nul_and_keep_empty_ones() {
        let ev = event_with(&["sh", "", "-c", "echo hi"], false);
        let got: Vec<&[u8]> = args(&ev).collect();
        assert_eq!(got, vec![&b"sh"[..], b"", b"-c", b"echo hi"]);
    }

    #[test]
    fn json_lists_args_and_names_errno() {
        let clock = format::Clock::now();
        let ev = event_with(&["/bin/x", "a \"b\""], true);
        let mut out = Vec::new();
        write_json(&mut out, &ev, &clock).expect("write");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["args"], serde_json::json!(["/bin/x", "a \"b\""]));
        assert_eq!(v["args_truncated"], true);
        assert_eq!(v["errno_name"], "ENOENT");
        assert_eq!((v["pid"].as_u64(), v["ppid"].as_u64()), (Some(10), Some(1)));
    }

    #[test]
    fn cut_arguments_are_named_in_json_and_marked_in_rows() {
        let clock = format::Clock::now();
        let mut ev = event_with(&["/bin/x", "aaaa", "b"], false);
        ev.cut_args = 0b010;
        let mut out = Vec::new();
        write_json(&mut out, &ev, &clock).expect("write");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["args_truncated"], true, "a cut argument is a truncation");
        assert_eq!(v["args_cut"], serde_json::json!([1]));
        let mut out = Vec::new();
        write_row(&mut out, &ev, &clock, false).expect("write");
        let row = String::from_utf8(out).expect("utf8");
        assert!(row.ends_with(" /bin/x aaaa... b\n"), "{row}");
        ev.cut_args = 0;
        let mut out = Vec::new();
        write_json(&mut out, &ev, &clock).expect("write");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["args_truncated"], false);
        assert_eq!(v["args_cut"], serde_json::json!([]));
    }

    #[test]
    fn rows_mark_truncation() {
        let clock = format::Clock::now();
        let ev = event_with(&["ls", "-l"], true);
        let mut out = Vec::new();
        write_row(&mut out, &ev, &clock, false).expect("write");
        let row = String::from_utf8(out).expect("utf8");
        let words: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(words, ["sh", "10", "1", "ENOENT", "ls", "-l", "..."]);
    }
}
