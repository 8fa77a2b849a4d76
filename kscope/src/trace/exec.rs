//! `kscope trace exec`: every execve(2) and execveat(2) with its arguments,
//! parent and result, from `trace_exec` in kscope-ebpf.
//!
//! Fallback policy: execveat is traced where its tracepoints exist, else
//! skipped with a warning; execve is required. Without kernel BTF the
//! parent pid cannot be located in task_struct and reads as 0 (warned once).
//! The `-n` filter matches the name the task had when it called exec.
//!
//! Minimum kernel: 5.8 (ring buffer).

use std::io::{self, Write};

use aya::Ebpf;
use kscope_common::trace::{
    ARGS_SIZE, Counts, ExecEvent, ExecKey, GLOBAL_MAX_ARGS, GLOBAL_OFF_OLD_PID,
    GLOBAL_OFF_REAL_PARENT, GLOBAL_OFF_TGID, PROG_EXEC_ENTER_EXECVE, PROG_EXEC_ENTER_EXECVEAT,
    PROG_EXEC_EXIT_EXECVE, PROG_EXEC_EXIT_EXECVEAT, PROG_EXEC_PROCESS_EXEC,
};

use super::{Attached, EventCx, EventTracer, Load, Metric, TraceError, Tracer, format};
use crate::{
    output::{Column, Row},
    sys::btf::Btf,
};

static TRACE_EXEC_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trace_exec"));

const HOOKS: &[(&str, &str, &str)] = &[
    (PROG_EXEC_ENTER_EXECVE, PROG_EXEC_EXIT_EXECVE, "execve"),
    (
        PROG_EXEC_ENTER_EXECVEAT,
        PROG_EXEC_EXIT_EXECVEAT,
        "execveat",
    ),
];

/// The exec tracer.
#[derive(Debug)]
pub(crate) struct Exec;

/// Options of `kscope trace exec`.
#[derive(Clone, Debug)]
pub(crate) struct ExecOpts {
    /// Arguments kept per exec (1 to 64).
    pub(crate) max_args: u32,
}

impl Default for ExecOpts {
    fn default() -> Self {
        Self { max_args: 20 }
    }
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
    super::attach_tracepoint(ebpf, PROG_EXEC_PROCESS_EXEC, "sched", "sched_process_exec")
}

impl Tracer for Exec {
    const NAME: &'static str = "exec";

    type Opts = ExecOpts;

    type Key = ExecKey;

    fn attach(opts: &ExecOpts, load: &Load<'_>) -> Result<Attached, TraceError> {
        let (parent, tgid) = task_offsets();
        let old_pid_off = old_pid_offset();
        let (max, parent, tgid, old_pid) = (
            opts.max_args.to_ne_bytes(),
            parent.to_ne_bytes(),
            tgid.to_ne_bytes(),
            old_pid_off.unwrap_or(0).to_ne_bytes(),
        );
        let mut ebpf = load.object(
            TRACE_EXEC_OBJ,
            &[
                (GLOBAL_MAX_ARGS, &max[..]),
                (GLOBAL_OFF_REAL_PARENT, &parent[..]),
                (GLOBAL_OFF_TGID, &tgid[..]),
                (GLOBAL_OFF_OLD_PID, &old_pid[..]),
            ],
            &[],
        )?;
        // Before the syscalls, so that no exec is seen half.
        attach_process_exec(&mut ebpf, old_pid_off)?;
        // Both ends in count mode too: the enter program applies the
        // filters to the task as it was before the exec.
        let what = super::attach_syscalls(&mut ebpf, HOOKS, false)?.join(", ");
        Ok(Attached {
            ebpf,
            what,
            probe: "",
        })
    }
}

impl EventTracer for Exec {
    const METRIC: Metric = Metric {
        name: "kscope_trace_execs",
        help: "execve(2) and execveat(2) calls, by new program name and result.",
        labels: &["comm", "result"],
        errors: None,
    };

    type Event = ExecEvent;

    /// Table: `PCOMM PID PPID CGROUP RET ARGS` (arguments joined by
    /// spaces; `...` right after an argument cut short, and ` ...` at the
    /// end when some were left out). JSON: `ts_unix_ns`, `pid`, `ppid`,
    /// `uid`, `comm`, `cgroup_id`, `cgroup`, `container_id`,
    /// `ret` (0 or -errno), `errno_name`, `args` (array of strings),
    /// `args_truncated` (true when any argument was cut short or left out),
    /// `args_cut` (indexes in `args` of the ones cut short).
    fn event_columns(timestamps: bool) -> Vec<Column> {
        let mut cols: Vec<Column> = super::time_columns(timestamps).collect();
        cols.extend([
            Column::left("PCOMM", "comm", 16),
            Column::left("PID", "pid", 7),
            Column::left("PPID", "ppid", 7),
            Column::json("uid"),
        ]);
        cols.extend(super::cgroup_columns());
        cols.extend(super::ret_columns());
        cols.extend([
            Column::left("ARGS", "args", 0),
            Column::json("args_truncated"),
            Column::json("args_cut"),
        ]);
        cols
    }

    fn write_event<W: Write>(
        ev: &ExecEvent,
        _tail: &[u8],
        cx: &EventCx,
        r: &mut Row<'_, W>,
    ) -> io::Result<()> {
        super::write_time(r, cx, ev.ts_ns)?;
        r.text(format::cstr(&ev.comm))?;
        r.u64(ev.pid.into())?;
        r.u64(ev.ppid.into())?;
        r.u64(ev.uid.into())?;
        super::write_cgroup(r, ev.cgroup_id)?;
        super::write_ret(r, Some(ev.ret))?;
        r.list(args(ev), |i| arg_cut(ev, i), ev.truncated != 0)?;
        r.bool(args_truncated(ev))?;
        let cut = (0..args(ev).count()).filter(|&i| arg_cut(ev, i));
        r.numbers(cut.map(|i| i as u64))
    }

    /// Table: `COMM RESULT EXECS`; JSON: `comm`, `result` (`ok` or the
    /// errno's name), `ret`, `execs`.
    fn count_columns() -> Vec<Column> {
        vec![
            Column::left("COMM", "comm", 16),
            Column::right("RESULT", "result", 12),
            Column::json("ret"),
            Column::right("EXECS", "execs", 12),
        ]
    }

    fn write_count<W: Write>(key: &ExecKey, c: &Counts, r: &mut Row<'_, W>) -> io::Result<()> {
        r.text(format::cstr(&key.comm))?;
        r.str(&format::result_label(Some(key.ret)))?;
        r.i64(key.ret.into())?;
        r.u64(c.events)
    }

    fn label_values(key: &ExecKey) -> Vec<String> {
        vec![
            String::from_utf8_lossy(format::cstr(&key.comm)).into_owned(),
            format::result_label(Some(key.ret)).into_owned(),
        ]
    }
}

/// True when argument `i` was cut short (at `ARG_LEN - 1` bytes, or where
/// `ARGS_SIZE` ran out).
fn arg_cut(ev: &ExecEvent, i: usize) -> bool {
    i < 64 && ev.cut_args & (1 << i) != 0
}

/// True when anything of the arguments is missing: one cut short, or some
/// left out.
fn args_truncated(ev: &ExecEvent) -> bool {
    ev.truncated != 0 || ev.cut_args != 0
}

/// The event's arguments, each without its NUL.
pub(crate) fn args(ev: &ExecEvent) -> impl Iterator<Item = &[u8]> + Clone {
    let used = (ev.args_len as usize).min(ARGS_SIZE);
    ev.args[..used].split(|&b| b == 0).take(ev.argc as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        output::Format,
        trace::render::{self, json_lines},
    };
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
        let ev = event_with(&["/bin/x", "a \"b\""], true);
        let v = &json_lines(&render::events::<Exec>(&[&ev], Format::Json, false))[0];
        assert_eq!(v["args"], serde_json::json!(["/bin/x", "a \"b\""]));
        assert_eq!(v["args_truncated"], true);
        assert_eq!(v["errno_name"], "ENOENT");
        assert_eq!(v["ret"], -2);
        assert_eq!(v["comm"], "sh");
        assert_eq!((v["pid"].as_u64(), v["ppid"].as_u64()), (Some(10), Some(1)));
    }

    #[test]
    fn rows_mark_truncation() {
        let ev = event_with(&["ls", "-l"], true);
        let text = render::events::<Exec>(&[&ev], Format::Table, false);
        let words: Vec<&str> = text
            .lines()
            .nth(1)
            .expect("row")
            .split_whitespace()
            .collect();
        assert_eq!(words, ["sh", "10", "1", "0", "ENOENT", "ls", "-l", "..."]);
        let ev = event_with(&["ls"], false);
        let text = render::events::<Exec>(&[&ev], Format::Table, false);
        assert!(
            text.lines().nth(1).is_some_and(|l| l.ends_with(" ls")),
            "{text}"
        );
    }

    #[test]
    fn cut_arguments_are_named_in_json_and_marked_in_rows() {
        let mut ev = event_with(&["/bin/x", "aaaa", "b"], false);
        ev.cut_args = 0b010;
        let v = &json_lines(&render::events::<Exec>(&[&ev], Format::Json, false))[0];
        assert_eq!(v["args_truncated"], true, "a cut argument is a truncation");
        assert_eq!(v["args_cut"], serde_json::json!([1]));
        let text = render::events::<Exec>(&[&ev], Format::Table, false);
        assert!(text.ends_with(" /bin/x aaaa... b\n"), "{text}");
        ev.cut_args = 0;
        let v = &json_lines(&render::events::<Exec>(&[&ev], Format::Json, false))[0];
        assert_eq!(v["args_truncated"], false);
        assert_eq!(v["args_cut"], serde_json::json!([]));
    }

    #[test]
    fn counts_name_the_result() {
        let mut key = ExecKey {
            ret: -13,
            ..ExecKey::default()
        };
        key.comm[..4].copy_from_slice(b"bash");
        let rows = [(
            key,
            Counts {
                events: 3,
                failed: 3,
            },
        )];
        let v = &json_lines(&render::counts::<Exec>(&rows, Format::Json))[0];
        assert_eq!(
            *v,
            serde_json::json!({"comm": "bash", "result": "EACCES", "ret": -13, "execs": 3})
        );
        assert_eq!(Exec::label_values(&key), ["bash", "EACCES"]);
    }
}
