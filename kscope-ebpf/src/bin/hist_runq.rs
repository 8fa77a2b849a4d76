//! `hist_runq`: run queue latency, from a task's wakeup to its running,
//! as a log2 histogram in `TRACE_HIST` (`tracer_common!`).
//!
//! sched_wakeup and sched_wakeup_new stamp the woken task in
//! `RUNQ_PENDING`, keyed by thread id in one shared hash (the task may be
//! woken on one CPU and run on another). sched_switch ends the wait of the
//! task switched in, and keeps it in the entry. The wait is added to the
//! histogram when that task next leaves the CPU (the same sched_switch
//! event, as the previous task): only then is the task `current`, so the
//! shared filters (pid, tid, uid, comm: `passes_filters`) apply to it as
//! they do in every tracer. A wakeup seen while the task still runs (it was
//! woken before it got to sleep) is dropped at that switch: it put nothing
//! on a run queue.
//!
//! Field offsets come from the tracepoints' format files (sched_switch's
//! changed across kernel versions), set at load; 0 = unknown, and the
//! program does nothing.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use kscope_common::trace::{
    GLOBAL_OFF_NEXT_PID, GLOBAL_OFF_WAKEUP_NEW_PID, GLOBAL_OFF_WAKEUP_PID, MAP_RUNQ_PENDING,
    PROG_RUNQ_SWITCH, PROG_RUNQ_WAKEUP, PROG_RUNQ_WAKEUP_NEW, RUNQ_CGROUPS_MAX, RunqKey,
    RunqPending,
};

// One key, or one per cgroup with `--per-cgroup`: allocated on first use
// (BPF_F_NO_PREALLOC = 1), so one histogram costs what one key does.
kscope_ebpf::tracer_common!(1 << 12, RunqKey, hist(RUNQ_CGROUPS_MAX, 1));

#[unsafe(no_mangle)]
static OFF_WAKEUP_PID: u32 = 0;
#[unsafe(no_mangle)]
static OFF_WAKEUP_NEW_PID: u32 = 0;
#[unsafe(no_mangle)]
static OFF_NEXT_PID: u32 = 0;

/// Tasks woken and not yet run, or running with a wait not yet added.
/// Preallocated: updated from the scheduler's tracepoints.
#[map]
static RUNQ_PENDING: HashMap<u32, RunqPending> = HashMap::with_max_entries(16_384, 0);

kscope_ebpf::assert_symbol_name!(RUNQ_PENDING, MAP_RUNQ_PENDING);
kscope_ebpf::assert_symbol_name!(OFF_WAKEUP_PID, GLOBAL_OFF_WAKEUP_PID);
kscope_ebpf::assert_symbol_name!(OFF_WAKEUP_NEW_PID, GLOBAL_OFF_WAKEUP_NEW_PID);
kscope_ebpf::assert_symbol_name!(OFF_NEXT_PID, GLOBAL_OFF_NEXT_PID);
kscope_ebpf::assert_symbol_name!(hist_runq_wakeup, PROG_RUNQ_WAKEUP);
kscope_ebpf::assert_symbol_name!(hist_runq_wakeup_new, PROG_RUNQ_WAKEUP_NEW);
kscope_ebpf::assert_symbol_name!(hist_runq_switch, PROG_RUNQ_SWITCH);

/// Reads the pid_t at `off` of the record; None when unknown or unreadable.
#[inline(always)]
fn tid_at(ctx: &TracePointContext, off: u32) -> Option<u32> {
    if off == 0 {
        return None;
    }
    // SAFETY: the offset is the field's, from the format file; a failed
    // read is an error, not a fault.
    let tid = unsafe { ctx.read_at::<i32>(off as usize) }.ok()?;
    (tid > 0).then_some(tid as u32)
}

/// bpf_ktime_get_ns: CLOCK_MONOTONIC nanoseconds.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn wakeup(ctx: &TracePointContext, off: u32) -> u32 {
    let Some(tid) = tid_at(ctx, off) else {
        return 0;
    };
    // The one filter that can be applied to a task other than `current`.
    let want_tid = global!(FILTER_TID);
    if want_tid != 0 && tid != want_tid {
        return 0;
    }
    let now = now_ns();
    if let Some(p) = RUNQ_PENDING.get_ptr_mut(tid) {
        // SAFETY: a live entry; a race with another CPU's update of the
        // same task can at worst misplace one wait.
        unsafe { (*p).wake_ns = now };
        return 0;
    }
    let entry = RunqPending {
        wake_ns: now,
        wait_ns: 0,
        has_wait: 0,
    };
    if RUNQ_PENDING.insert(tid, entry, 0).is_err() {
        count_lost();
    }
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn hist_runq_wakeup(ctx: TracePointContext) -> u32 {
    wakeup(&ctx, global!(OFF_WAKEUP_PID))
}

#[tracepoint(category = "sched", name = "sched_wakeup_new")]
pub fn hist_runq_wakeup_new(ctx: TracePointContext) -> u32 {
    wakeup(&ctx, global!(OFF_WAKEUP_NEW_PID))
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn hist_runq_switch(ctx: TracePointContext) -> u32 {
    let off = global!(OFF_NEXT_PID);
    if off == 0 {
        return 0;
    }
    // The previous task is `current` here: add its wait, if it has one,
    // and forget it (a wakeup stamped while it ran is dropped).
    let prev = bpf_get_current_pid_tgid() as u32;
    if prev != 0
        && let Some(p) = RUNQ_PENDING.get_ptr(prev)
    {
        // SAFETY: a live entry, read before it is removed.
        let (has, wait) = unsafe { ((*p).has_wait, (*p).wait_ns) };
        if has != 0 && passes_filters() {
            let key = RunqKey {
                zero: 0,
                cgroup_id: hist_cgroup(),
            };
            hist_add(&key, wait);
        }
        let _ = RUNQ_PENDING.remove(prev);
    }
    let Some(next) = tid_at(&ctx, off) else {
        return 0;
    };
    if let Some(p) = RUNQ_PENDING.get_ptr_mut(next) {
        // SAFETY: a live entry (see wakeup).
        unsafe {
            let wake = (*p).wake_ns;
            if wake != 0 {
                (*p).wait_ns = now_ns().saturating_sub(wake);
                (*p).has_wait = 1;
                (*p).wake_ns = 0;
            }
        }
    }
    0
}

kscope_ebpf::program_boilerplate!();
