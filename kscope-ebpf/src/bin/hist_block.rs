//! `hist_block`: block I/O latency per device and operation, from
//! block:block_rq_issue to block:block_rq_complete, as log2 histograms in
//! `TRACE_HIST` (`tracer_common!`).
//!
//! The issue handler applies the shared filters (to the task issuing the
//! request: the submitter for direct I/O, often a kernel worker for
//! writeback) and stamps the request under its (device, sector); the
//! completion, on any CPU (often in an interrupt), adds the time since
//! under (device, operation). The records carry no request pointer on
//! every kernel, so (device, sector) is the key, as blktrace pairs them.
//! Field offsets come from the format files (ioprio and rwbs's size
//! changed across versions), set at load; 0 = unknown, and the programs
//! do nothing.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use kscope_common::trace::{
    BLOCK_HIST_MAX, BO_DONE_DEV, BO_DONE_SECTOR, BO_ISSUE_DEV, BO_ISSUE_RWBS, BO_ISSUE_SECTOR,
    BO_N, BlockKey, BlockReq, BlockStart, GLOBAL_BLOCK_OFFSETS, MAP_BLOCK_START,
    PROG_BLOCK_COMPLETE, PROG_BLOCK_ISSUE, block_op,
};

// Keys are allocated on first use (BPF_F_NO_PREALLOC = 1): a few devices.
kscope_ebpf::tracer_common!(1 << 12, BlockKey, hist(BLOCK_HIST_MAX, 1));

#[unsafe(no_mangle)]
static BLOCK_OFFSETS: [u32; BO_N] = [0; BO_N];

/// Requests issued and not yet completed. Preallocated: updated from
/// completions in interrupts.
#[map]
static BLOCK_START: HashMap<BlockReq, BlockStart> = HashMap::with_max_entries(16_384, 0);

kscope_ebpf::assert_symbol_name!(BLOCK_START, MAP_BLOCK_START);
kscope_ebpf::assert_symbol_name!(BLOCK_OFFSETS, GLOBAL_BLOCK_OFFSETS);
kscope_ebpf::assert_symbol_name!(hist_block_issue, PROG_BLOCK_ISSUE);
kscope_ebpf::assert_symbol_name!(hist_block_complete, PROG_BLOCK_COMPLETE);

/// The request at `dev_off` and `sector_off` of the record; None when an
/// offset is unknown or a read fails.
#[inline(always)]
fn request(ctx: &TracePointContext, dev_off: u32, sector_off: u32) -> Option<BlockReq> {
    if dev_off == 0 || sector_off == 0 {
        return None;
    }
    // SAFETY: offsets from the format file; a failed read is an error.
    let dev = unsafe { ctx.read_at::<u32>(dev_off as usize) }.ok()?;
    // SAFETY: as above.
    let sector = unsafe { ctx.read_at::<u64>(sector_off as usize) }.ok()?;
    Some(BlockReq {
        dev,
        _pad: 0,
        sector,
    })
}

/// bpf_ktime_get_ns: CLOCK_MONOTONIC nanoseconds.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn hist_block_issue(ctx: TracePointContext) -> u32 {
    if !passes_filters() {
        return 0;
    }
    let off = global!(BLOCK_OFFSETS);
    let Some(req) = request(&ctx, off[BO_ISSUE_DEV], off[BO_ISSUE_SECTOR]) else {
        return 0;
    };
    let rwbs_off = off[BO_ISSUE_RWBS];
    if rwbs_off == 0 {
        return 0;
    }
    // SAFETY: as in `request`; rwbs is at least 8 bytes on every kernel.
    let Ok(rwbs) = (unsafe { ctx.read_at::<[u8; 8]>(rwbs_off as usize) }) else {
        return 0;
    };
    let start = BlockStart {
        ts_ns: now_ns(),
        op: block_op(&rwbs),
        _pad: 0,
        cgroup_id: hist_cgroup(),
    };
    if BLOCK_START.insert(req, start, 0).is_err() {
        count_lost();
    }
    0
}

#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn hist_block_complete(ctx: TracePointContext) -> u32 {
    let off = global!(BLOCK_OFFSETS);
    let Some(req) = request(&ctx, off[BO_DONE_DEV], off[BO_DONE_SECTOR]) else {
        return 0;
    };
    // SAFETY: a copy of a live entry's value.
    let Some(start) = (unsafe { BLOCK_START.get(req) }).copied() else {
        return 0;
    };
    let _ = BLOCK_START.remove(req);
    let key = BlockKey {
        dev: req.dev,
        op: start.op,
        cgroup_id: start.cgroup_id,
    };
    hist_add(&key, now_ns().saturating_sub(start.ts_ns));
    0
}

kscope_ebpf::program_boilerplate!();
