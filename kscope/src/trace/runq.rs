//! `kscope hist runq`: run queue latency, from a task's wakeup
//! (sched:sched_wakeup, sched:sched_wakeup_new) to its running
//! (sched:sched_switch), as one histogram (`hist_runq` in kscope-ebpf).
//!
//! The filters apply to the task that waited: its wait is added when it
//! next leaves the CPU, the first moment it is `current` (see the kernel
//! program). A wait whose task has not left the CPU again when the run
//! stops is not reported.
//!
//! Histogram mode only: no events, no counts.
//!
//! Minimum kernel: 5.8 (the shared ring buffer, unused here, is created).

use std::io::{self, Write};

use kscope_common::trace::{
    GLOBAL_OFF_NEXT_PID, GLOBAL_OFF_WAKEUP_NEW_PID, GLOBAL_OFF_WAKEUP_PID, MAP_HIST_SPARE,
    PROG_RUNQ_SWITCH, PROG_RUNQ_WAKEUP, PROG_RUNQ_WAKEUP_NEW, RunqKey,
};

use super::{Attached, HistTracer, Load, Mode, TraceError, Tracer, connect::parse_format};
use crate::output::{Column, Row};

static HIST_RUNQ_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hist_runq"));

/// The run queue latency tracer.
#[derive(Debug)]
pub(crate) struct Runq;

/// Offset of `field` in sched:`event`'s record, from its format file.
pub(crate) fn sched_offset(event: &str, field: &str) -> Result<u32, TraceError> {
    let path =
        std::path::Path::new(crate::sys::TRACEFS).join(format!("events/sched/{event}/format"));
    let text = std::fs::read_to_string(&path).map_err(|e| TraceError::Unsupported {
        feature: format!("tracepoint sched:{event}"),
        reason: format!("reading {}: {e}", path.display()),
    })?;
    parse_format(&text, &[field])
        .and_then(|v| v.first().copied())
        .filter(|&o| o != 0)
        .ok_or_else(|| TraceError::Unsupported {
            feature: format!("tracepoint sched:{event}"),
            reason: format!("its format has no field {field}"),
        })
}

impl Tracer for Runq {
    const NAME: &'static str = "runq";

    type Opts = ();

    type Key = RunqKey;

    fn attach(_opts: &(), load: &Load<'_>) -> Result<Attached, TraceError> {
        // Only the histogram runner loads a HistTracer.
        debug_assert!(load.mode == Mode::Hist);
        let wake = sched_offset("sched_wakeup", "pid")?.to_ne_bytes();
        let wake_new = sched_offset("sched_wakeup_new", "pid")?.to_ne_bytes();
        let next = sched_offset("sched_switch", "next_pid")?.to_ne_bytes();
        // One key without --per-cgroup: the spare table (preallocated)
        // need hold no more.
        let spare: &[(&str, u32)] = if load.hist_by_cgroup {
            &[]
        } else {
            &[(MAP_HIST_SPARE, 1)]
        };
        let mut ebpf = load.object(
            HIST_RUNQ_OBJ,
            &[
                (GLOBAL_OFF_WAKEUP_PID, &wake[..]),
                (GLOBAL_OFF_WAKEUP_NEW_PID, &wake_new[..]),
                (GLOBAL_OFF_NEXT_PID, &next[..]),
            ],
            spare,
        )?;
        // The switch first: a wakeup stamped before it is attached would
        // only wait for it.
        for (prog, tp) in [
            (PROG_RUNQ_SWITCH, "sched_switch"),
            (PROG_RUNQ_WAKEUP, "sched_wakeup"),
            (PROG_RUNQ_WAKEUP_NEW, "sched_wakeup_new"),
        ] {
            super::attach_tracepoint(&mut ebpf, prog, "sched", tp)?;
        }
        Ok(Attached {
            ebpf,
            what: "run queue".into(),
            probe: "",
        })
    }
}

/// One histogram (per cgroup with `--per-cgroup`): no key columns.
impl HistTracer for Runq {
    fn hist_key_columns() -> Vec<Column> {
        Vec::new()
    }

    fn write_hist_key<W: Write>(_key: &RunqKey, _row: &mut Row<'_, W>) -> io::Result<()> {
        Ok(())
    }

    fn hist_cgroup_id(key: &RunqKey) -> u64 {
        key.cgroup_id
    }
}
