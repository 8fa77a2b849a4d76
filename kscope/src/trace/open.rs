//! `kscope trace open`: every open(2), openat(2) and openat2(2), with its
//! result, from the syscalls tracepoints (`trace_open` in kscope-ebpf).
//!
//! Fallback policy: open and openat2 are traced where their tracepoints
//! exist; a missing one is skipped with a warning. openat is required.
//!
//! Count mode (`-c`) counts opens and failed opens per process name (the
//! thread's comm) when they return; only the exit tracepoints are
//! attached.
//!
//! Minimum kernel: 5.8 (ring buffer; count mode creates one too, of a
//! single page).

use std::io::{self, Cursor, Write};

use kscope_common::trace::{
    Counts, GLOBAL_FAILED_ONLY, MAP_OPEN_PENDING, OpenEvent, OpenKey, PROG_OPEN_ENTER_OPEN,
    PROG_OPEN_ENTER_OPENAT, PROG_OPEN_ENTER_OPENAT2, PROG_OPEN_EXIT_OPEN, PROG_OPEN_EXIT_OPENAT,
    PROG_OPEN_EXIT_OPENAT2,
};

use super::{Attached, EventCx, EventTracer, Load, Metric, Mode, TraceError, Tracer, format};
use crate::output::{Align, Column, Row};

static TRACE_OPEN_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trace_open"));

/// (enter program, exit program, syscall) for each traced syscall; the
/// first is required.
const HOOKS: &[(&str, &str, &str)] = &[
    (PROG_OPEN_ENTER_OPENAT, PROG_OPEN_EXIT_OPENAT, "openat"),
    (PROG_OPEN_ENTER_OPEN, PROG_OPEN_EXIT_OPEN, "open"),
    (PROG_OPEN_ENTER_OPENAT2, PROG_OPEN_EXIT_OPENAT2, "openat2"),
];

/// The open tracer.
#[derive(Debug)]
pub struct Open;

/// Options of `kscope trace open`.
#[derive(Clone, Debug, Default)]
pub struct OpenOpts {
    /// Only failed opens (`-x`).
    pub(crate) failed_only: bool,
}

impl Tracer for Open {
    const NAME: &'static str = "open";

    type Opts = OpenOpts;

    type Key = OpenKey;

    fn attach(opts: &OpenOpts, load: &Load<'_>) -> Result<Attached, TraceError> {
        let failed_only = u32::from(opts.failed_only).to_ne_bytes();
        let count = matches!(load.mode, Mode::Count { .. });
        // Count mode attaches no enter program: their table is unused.
        let sizes: &[(&str, u32)] = if count { &[(MAP_OPEN_PENDING, 1)] } else { &[] };
        let mut ebpf = load.object(
            TRACE_OPEN_OBJ,
            &[(GLOBAL_FAILED_ONLY, &failed_only[..])],
            sizes,
        )?;
        let what = super::attach_syscalls(&mut ebpf, HOOKS, count)?.join(", ");
        Ok(Attached {
            ebpf,
            what,
            probe: "",
        })
    }
}

impl EventTracer for Open {
    const METRIC: Metric = Metric {
        name: "kscope_trace_opens",
        help: "open(2), openat(2) and openat2(2) calls, by process name.",
        labels: &["comm"],
        errors: Some(("kscope_trace_open_errors", "Failed opens, by process name.")),
    };

    type Event = OpenEvent;

    /// Table: `PID TID UID COMM CGROUP FD ERR FLAGS PATH` (FD is `-1` and
    /// ERR the errno's name for a failed open). JSON: `ts_unix_ns`, `pid`,
    /// `tid`, `uid`, `comm`, `cgroup_id`, `cgroup`, `container_id`, `fd` (null when the open failed), `errno` and
    /// `errno_name` (null when it succeeded), `flags` (the number),
    /// `flags_str`, `path` and `path_truncated`; `comm_b64`, `path_b64`
    /// when those are not UTF-8 (see `output`).
    fn event_columns(timestamps: bool) -> Vec<Column> {
        let mut cols: Vec<Column> = super::time_columns(timestamps).collect();
        cols.extend([
            Column::left("PID", "pid", 7),
            Column::left("TID", "tid", 7),
            Column::left("UID", "uid", 6),
            Column::left("COMM", "comm", 16),
        ]);
        cols.extend(super::cgroup_columns());
        cols.extend([
            Column::right("FD", "fd", 4).none("-1"),
            Column::table("ERR", 12, Align::Left),
            Column::json("errno"),
            Column::json("errno_name"),
            Column::json("flags"),
            Column::left("FLAGS", "flags_str", 28),
            Column::left("PATH", "path", 0),
            Column::json("path_truncated"),
        ]);
        cols
    }

    /// `tail` is the path: the record's `path_len` bytes after the header
    /// (fewer if the record is short). A path cut at `PATH_MAX - 1` bytes
    /// ends in `...` in a table and has `path_truncated` set in JSON.
    fn write_event<W: Write>(
        ev: &OpenEvent,
        tail: &[u8],
        cx: &EventCx,
        r: &mut Row<'_, W>,
    ) -> io::Result<()> {
        super::write_time(r, cx, ev.ts_ns)?;
        r.u64(ev.pid.into())?;
        r.u64(ev.tid.into())?;
        r.u64(ev.uid.into())?;
        r.text(format::cstr(&ev.comm))?;
        super::write_cgroup(r, ev.cgroup_id)?;
        if ev.ret >= 0 {
            r.i64(ev.ret)?;
            r.str("-")?;
            r.null()?;
            r.null()?;
        } else {
            let errno = -ev.ret;
            let name = format::errno_name(errno);
            r.null()?;
            match name {
                Some(n) => r.str(n)?,
                None => r.i64(errno)?,
            }
            r.i64(errno)?;
            match name {
                Some(n) => r.str(n)?,
                None => r.null()?,
            }
        }
        r.u64(ev.flags.into())?;
        let mut buf = [0u8; 192];
        r.str(flags_str(&mut buf, ev.flags)?)?;
        let path = &tail[..(ev.path_len as usize).min(tail.len())];
        let cut = ev.path_truncated != 0;
        r.text_cut(path, cut)?;
        r.bool(cut)
    }

    /// Table: `COMM OPENS FAILED`; JSON: `comm`, `opens`, `failed`.
    fn count_columns() -> Vec<Column> {
        vec![
            Column::left("COMM", "comm", 16),
            Column::right("OPENS", "opens", 12),
            Column::right("FAILED", "failed", 12),
        ]
    }

    fn write_count<W: Write>(key: &OpenKey, c: &Counts, r: &mut Row<'_, W>) -> io::Result<()> {
        r.text(format::cstr(&key.comm))?;
        r.u64(c.events)?;
        r.u64(c.failed)
    }

    fn label_values(key: &OpenKey) -> Vec<String> {
        vec![String::from_utf8_lossy(format::cstr(&key.comm)).into_owned()]
    }
}

fn flags_str(buf: &mut [u8; 192], flags: u32) -> io::Result<&str> {
    let mut c = Cursor::new(&mut buf[..]);
    format::write_open_flags(&mut c, flags)?;
    let n = c.position() as usize;
    Ok(std::str::from_utf8(&buf[..n]).unwrap_or("?"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        output::Format,
        trace::render::{self, json_lines},
    };

    fn event(ret: i64, path: &[u8]) -> OpenEvent {
        let mut ev = OpenEvent {
            ts_ns: 0,
            ret,
            // No cgroup has it: shown as the number.
            cgroup_id: u64::MAX,
            pid: 42,
            tid: 43,
            uid: 1000,
            flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u32,
            comm: [0; 16],
            path_len: path.len() as u32,
            path_truncated: 0,
        };
        ev.comm[..3].copy_from_slice(b"cat");
        ev
    }

    #[test]
    fn paths_come_from_the_record_tail_and_cut_ones_are_marked() {
        let long = vec![b'a'; 4095];
        let mut cut = event(-36, &long);
        cut.path_truncated = 1;
        let whole = event(3, b"/etc/hosts");
        // A record shorter than its path_len yields what it holds.
        let recs = [(&cut, &long[..]), (&whole, &b"/etc/hos"[..])];
        let text = render::records::<Open>(&recs, Format::Table, false);
        let rows: Vec<&str> = text.lines().collect();
        assert!(
            rows[1].ends_with(&format!(" {}...", "a".repeat(4095))),
            "{text}"
        );
        assert!(rows[2].ends_with(" /etc/hos"), "{text}");
        let v = json_lines(&render::records::<Open>(&recs, Format::Json, false));
        assert_eq!(v[0]["path_truncated"], true);
        assert_eq!(v[0]["path"].as_str().map(str::len), Some(4095));
        assert_eq!(v[1]["path_truncated"], false);
        assert_eq!(v[1]["path"], "/etc/hos");
    }

    #[test]
    fn json_reports_fd_or_errno() {
        let (ok, bad) = (event(3, b"/etc/hosts"), event(-2, b"/nope\"x"));
        let recs = [(&ok, &b"/etc/hosts"[..]), (&bad, &b"/nope\"x"[..])];
        let lines = json_lines(&render::records::<Open>(&recs, Format::Json, false));
        assert_eq!(lines[0]["fd"], 3);
        assert!(lines[0]["errno"].is_null());
        assert!(lines[0]["errno_name"].is_null());
        assert_eq!(lines[0]["path"], "/etc/hosts");
        assert_eq!(lines[0]["comm"], "cat");
        assert_eq!(lines[0]["flags_str"], "O_RDONLY|O_CLOEXEC");
        assert_eq!(lines[0]["flags"], libc::O_CLOEXEC);
        assert_eq!(lines[1]["errno"], 2);
        assert_eq!(lines[1]["errno_name"], "ENOENT");
        assert!(lines[1]["fd"].is_null());
        assert_eq!(lines[1]["path"], "/nope\"x");
        assert_eq!(
            (lines[1]["pid"].as_u64(), lines[1]["tid"].as_u64()),
            (Some(42), Some(43))
        );
        assert!(lines[1]["ts_unix_ns"].as_u64().is_some());
    }

    fn count(comm: &str, events: u64, failed: u64) -> (OpenKey, Counts) {
        let mut key = OpenKey::default();
        key.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        (key, Counts { events, failed })
    }

    #[test]
    fn count_json_has_the_documented_fields() {
        let rows = [count("cat", 12, 3), count("we\"ird\n", 1, 0)];
        let lines = json_lines(&render::counts::<Open>(&rows, Format::Json));
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
        let rows = [count("systemd-journal", 123_456, 7), count("é\tx", 5, 5)];
        let text = render::counts::<Open>(&rows, Format::Table);
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
        let ev = event(-13, b"/root/x");
        let text = render::records::<Open>(&[(&ev, &b"/root/x"[..])], Format::Table, true);
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
            col(lines[1], "FD").is_some_and(|s| s.starts_with("-1 ")),
            "{text}"
        );
        assert!(
            col(lines[1], "COMM").is_some_and(|s| s.starts_with("cat ")),
            "{text}"
        );
        assert!(lines[0].starts_with("TIME(s)"), "{text}");
    }
}
