//! `kscope hist block`: block I/O latency, from block:block_rq_issue to
//! block:block_rq_complete, one histogram per device and operation (read,
//! write, other) (`hist_block` in kscope-ebpf).
//!
//! The filters apply to the task that issues a request: the submitter for
//! direct and synchronous I/O, a kernel worker for most writeback.
//! Requests are paired by (device, sector); a request still in flight when
//! the run stops is not reported.
//!
//! Histogram mode only: no events, no counts.
//!
//! Minimum kernel: 5.8 (the shared ring buffer, unused here, is created).

use std::io::{self, Write};

use kscope_common::trace::{
    BLOCK_OP_READ, BLOCK_OP_WRITE, BO_DONE_DEV, BO_DONE_SECTOR, BO_ISSUE_DEV, BO_ISSUE_RWBS,
    BO_ISSUE_SECTOR, BO_N, BlockKey, GLOBAL_BLOCK_OFFSETS, PROG_BLOCK_COMPLETE, PROG_BLOCK_ISSUE,
};

use super::{Attached, HistTracer, Load, Mode, TraceError, Tracer, connect::parse_format};
use crate::output::{Column, Row};

static HIST_BLOCK_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hist_block"));

/// The block I/O latency tracer.
#[derive(Debug)]
pub(crate) struct Block;

/// Offsets of `fields` in block:`event`'s record, from its format file.
fn offsets(event: &str, fields: &[&str]) -> Result<Vec<u32>, TraceError> {
    let path =
        std::path::Path::new(crate::sys::TRACEFS).join(format!("events/block/{event}/format"));
    let text = std::fs::read_to_string(&path).map_err(|e| TraceError::Unsupported {
        feature: format!("tracepoint block:{event}"),
        reason: format!("reading {}: {e}", path.display()),
    })?;
    parse_format(&text, fields)
        .filter(|v| v.iter().all(|&o| o != 0))
        .ok_or_else(|| TraceError::Unsupported {
            feature: format!("tracepoint block:{event}"),
            reason: format!("its format lacks one of {fields:?}"),
        })
}

/// The operation's name.
pub(crate) fn op_name(op: u32) -> &'static str {
    match op {
        BLOCK_OP_READ => "read",
        BLOCK_OP_WRITE => "write",
        _ => "other",
    }
}

/// (major, minor) of the kernel's internal dev_t (MINORBITS = 20,
/// include/linux/kdev_t.h), which the block tracepoints report.
pub(crate) fn major_minor(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xf_ffff)
}

/// The device's name (`sda`, `loop0`), from /sys/dev/block/MAJ:MIN/uevent;
/// `None` when it is gone.
pub(crate) fn device_name(dev: u32) -> Option<String> {
    let (maj, min) = major_minor(dev);
    let text = std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/uevent")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::to_owned)
}

impl Tracer for Block {
    const NAME: &'static str = "block";

    type Opts = ();

    type Key = BlockKey;

    fn attach(_opts: &(), load: &Load<'_>) -> Result<Attached, TraceError> {
        // Only the histogram runner loads a HistTracer.
        debug_assert!(load.mode == Mode::Hist);
        let issue = offsets("block_rq_issue", &["dev", "sector", "rwbs"])?;
        let done = offsets("block_rq_complete", &["dev", "sector"])?;
        let mut off = [0u32; BO_N];
        off[BO_ISSUE_DEV] = issue[0];
        off[BO_ISSUE_SECTOR] = issue[1];
        off[BO_ISSUE_RWBS] = issue[2];
        off[BO_DONE_DEV] = done[0];
        off[BO_DONE_SECTOR] = done[1];
        let bytes: Vec<u8> = off.iter().flat_map(|o| o.to_ne_bytes()).collect();
        let mut ebpf = load.object(HIST_BLOCK_OBJ, &[(GLOBAL_BLOCK_OFFSETS, &bytes[..])], &[])?;
        // The completion first: a request stamped before it is attached
        // would stay.
        for (prog, tp) in [
            (PROG_BLOCK_COMPLETE, "block_rq_complete"),
            (PROG_BLOCK_ISSUE, "block_rq_issue"),
        ] {
            super::attach_tracepoint(&mut ebpf, prog, "block", tp)?;
        }
        Ok(Attached {
            ebpf,
            what: "block I/O".into(),
            probe: "",
        })
    }
}

impl HistTracer for Block {
    fn hist_cgroup_id(key: &BlockKey) -> u64 {
        key.cgroup_id
    }

    /// Table: `DEVICE` (the name, else `MAJ:MIN`) and `OP`; JSON: `device`
    /// (the name, or null), `dev` (`MAJ:MIN`) and `op` (`read`, `write`,
    /// `other`).
    fn hist_key_columns() -> Vec<Column> {
        vec![
            Column::table("DEVICE", 12, crate::output::Align::Left),
            Column::json("device"),
            Column::json("dev"),
            Column::left("OP", "op", 6),
        ]
    }

    fn write_hist_key<W: Write>(key: &BlockKey, r: &mut Row<'_, W>) -> io::Result<()> {
        let (maj, min) = major_minor(key.dev);
        let name = device_name(key.dev);
        match &name {
            Some(n) => r.str(n)?,
            None => r.str(&format!("{maj}:{min}"))?,
        }
        match &name {
            Some(n) => r.str(n)?,
            None => r.null()?,
        }
        r.str(&format!("{maj}:{min}"))?;
        r.str(op_name(key.op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_t_splits_at_20_bits() {
        assert_eq!(major_minor((7 << 20) | 3), (7, 3));
        assert_eq!(major_minor((259 << 20) | 0x1_2345), (259, 0x1_2345));
    }
}
