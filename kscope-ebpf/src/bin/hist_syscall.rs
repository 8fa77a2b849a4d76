//! `hist_syscall`: per-syscall latency, from raw_syscalls:sys_enter to
//! sys_exit in the same thread, as one log2 histogram per syscall number
//! in `TRACE_HIST` (`tracer_common!`).
//!
//! The enter handler applies the shared filters and the syscall filter
//! (`SYSCALL_WANT`, when `SYSCALL_FILTER_ON`) and stamps the thread; the
//! exit handler adds the time since. A syscall that does not return
//! (exit, exit_group; execve returns in the new program, same thread) adds
//! nothing. Field offsets come from the format files, set at load.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{Array, HashMap},
    programs::TracePointContext,
};
use kscope_common::trace::{
    GLOBAL_OFF_ENTER_ID, GLOBAL_OFF_EXIT_ID, GLOBAL_SYSCALL_FILTER_ON, MAP_SYSCALL_START,
    MAP_SYSCALL_WANT, PROG_SYSCALL_ENTER, PROG_SYSCALL_EXIT, SYSCALL_NR_MAX, SyscallKey,
};

// Keys are allocated on first use (BPF_F_NO_PREALLOC = 1): a histogram per
// syscall per CPU, for the few syscalls a workload makes of the 1024.
kscope_ebpf::tracer_common!(1 << 12, SyscallKey, hist(SYSCALL_NR_MAX, 1));

#[unsafe(no_mangle)]
static SYSCALL_FILTER_ON: u32 = 0;
#[unsafe(no_mangle)]
static OFF_ENTER_ID: u32 = 0;
#[unsafe(no_mangle)]
static OFF_EXIT_ID: u32 = 0;

/// Syscalls in flight: thread id to the entry's time.
#[map]
static SYSCALL_START: HashMap<u32, u64> = HashMap::with_max_entries(16_384, 0);

/// 1 for the syscalls wanted, by number.
#[map]
static SYSCALL_WANT: Array<u32> = Array::with_max_entries(SYSCALL_NR_MAX, 0);

kscope_ebpf::assert_symbol_name!(SYSCALL_START, MAP_SYSCALL_START);
kscope_ebpf::assert_symbol_name!(SYSCALL_WANT, MAP_SYSCALL_WANT);
kscope_ebpf::assert_symbol_name!(SYSCALL_FILTER_ON, GLOBAL_SYSCALL_FILTER_ON);
kscope_ebpf::assert_symbol_name!(OFF_ENTER_ID, GLOBAL_OFF_ENTER_ID);
kscope_ebpf::assert_symbol_name!(OFF_EXIT_ID, GLOBAL_OFF_EXIT_ID);
kscope_ebpf::assert_symbol_name!(hist_syscall_enter, PROG_SYSCALL_ENTER);
kscope_ebpf::assert_symbol_name!(hist_syscall_exit, PROG_SYSCALL_EXIT);

/// The syscall number (`long id`) at `off`; None when unknown, unreadable
/// or negative.
#[inline(always)]
fn id_at(ctx: &TracePointContext, off: u32) -> Option<u32> {
    if off == 0 {
        return None;
    }
    // SAFETY: the offset is the field's, from the format file; a failed
    // read is an error, not a fault.
    let id = unsafe { ctx.read_at::<i64>(off as usize) }.ok()?;
    (0..i64::from(u32::MAX)).contains(&id).then_some(id as u32)
}

/// bpf_ktime_get_ns: CLOCK_MONOTONIC nanoseconds.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[tracepoint(category = "raw_syscalls", name = "sys_enter")]
pub fn hist_syscall_enter(ctx: TracePointContext) -> u32 {
    if !passes_filters() {
        return 0;
    }
    let Some(nr) = id_at(&ctx, global!(OFF_ENTER_ID)) else {
        return 0;
    };
    if global!(SYSCALL_FILTER_ON) != 0 && SYSCALL_WANT.get(nr).copied() != Some(1) {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if SYSCALL_START.insert(tid, now_ns(), 0).is_err() {
        count_lost();
    }
    0
}

#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn hist_syscall_exit(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: a copy of a live entry's value.
    let Some(start) = (unsafe { SYSCALL_START.get(tid) }).copied() else {
        return 0;
    };
    let _ = SYSCALL_START.remove(tid);
    let Some(nr) = id_at(&ctx, global!(OFF_EXIT_ID)) else {
        return 0;
    };
    let ns = now_ns().saturating_sub(start);
    let key = SyscallKey {
        nr,
        _pad: 0,
        cgroup_id: hist_cgroup(),
    };
    hist_add(&key, ns);
    0
}

kscope_ebpf::program_boilerplate!();
