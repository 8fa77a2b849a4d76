//! `profile_offcpu`: off-CPU time by stack (`kscope profile --off-cpu`),
//! from sched:sched_switch alone, so it runs where kprobes do not.
//!
//! At each switch the previous task is `current`: if it passes the
//! filters, its kernel and user stacks are taken and it is stamped in
//! `PROFILE_OFFCPU_START`, one shared hash keyed by thread id. When the
//! same thread is switched in again, on whichever CPU, the time since is
//! added, in microseconds, to `PROFILE_COUNTS` under the stacks it left
//! from. The maps and globals are `profile_perf`'s (same names), so user
//! space reads both objects alike. A thread still off the CPU when the
//! run stops is not counted.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd: see profile_perf")]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::{map, tracepoint},
    maps::{CgroupArray, HashMap, PerCpuArray, StackTrace},
    programs::{TracePointContext, tracing::StackIdContext as _},
};
use kscope_common::profile::{
    COUNTS_ENTRIES, DEFAULT_STACK_ENTRIES, EFAULT, GLOBAL_FILTER_CGROUP, GLOBAL_FILTER_PIDS,
    GLOBAL_OFF_NEXT_PID, GLOBAL_STACKS, LostReason, MAP_CGROUP, MAP_COUNTS, MAP_NEW_PIDS,
    MAP_OFFCPU_START, MAP_PIDS, MAP_STACKS, MAP_STATS, N_STATS, NEW_PIDS_ENTRIES,
    OFFCPU_START_ENTRIES, OffCpuStart, PIDS_ENTRIES, PROG_PROFILE_OFFCPU, SLOT_COUNTS_FULL,
    SLOT_SAMPLES, STACK_ABSENT, STACKS_KERNEL, STACKS_USER, Side, StackKey, lost_slot,
};
use kscope_ebpf::assert_symbol_name;

/// `BPF_F_USER_STACK` from include/uapi/linux/bpf.h.
const BPF_F_USER_STACK: u64 = 1 << 8;

#[map]
static PROFILE_STACKS: StackTrace = StackTrace::with_max_entries(DEFAULT_STACK_ENTRIES, 0);

/// Microseconds off the CPU per key.
#[map]
static PROFILE_COUNTS: HashMap<StackKey, u64> = HashMap::with_max_entries(COUNTS_ENTRIES, 0);

#[map]
static PROFILE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_STATS, 0);

#[map]
static PROFILE_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(PIDS_ENTRIES, 0);

#[map]
static PROFILE_NEW_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(NEW_PIDS_ENTRIES, 0);

#[map]
static PROFILE_CGROUP: CgroupArray = CgroupArray::with_max_entries(1, 0);

#[map]
static PROFILE_OFFCPU_START: HashMap<u32, OffCpuStart> =
    HashMap::with_max_entries(OFFCPU_START_ENTRIES, 0);

#[unsafe(no_mangle)]
static PROFILE_FILTER_PIDS: u32 = 0;
#[unsafe(no_mangle)]
static PROFILE_FILTER_CGROUP: u32 = 0;
#[unsafe(no_mangle)]
static PROFILE_STACKS_WANTED: u32 = STACKS_KERNEL | STACKS_USER;
#[unsafe(no_mangle)]
static PROFILE_OFF_NEXT_PID: u32 = 0;

assert_symbol_name!(PROFILE_STACKS, MAP_STACKS);
assert_symbol_name!(PROFILE_COUNTS, MAP_COUNTS);
assert_symbol_name!(PROFILE_STATS, MAP_STATS);
assert_symbol_name!(PROFILE_PIDS, MAP_PIDS);
assert_symbol_name!(PROFILE_NEW_PIDS, MAP_NEW_PIDS);
assert_symbol_name!(PROFILE_CGROUP, MAP_CGROUP);
assert_symbol_name!(PROFILE_OFFCPU_START, MAP_OFFCPU_START);
assert_symbol_name!(PROFILE_FILTER_PIDS, GLOBAL_FILTER_PIDS);
assert_symbol_name!(PROFILE_FILTER_CGROUP, GLOBAL_FILTER_CGROUP);
assert_symbol_name!(PROFILE_STACKS_WANTED, GLOBAL_STACKS);
assert_symbol_name!(PROFILE_OFF_NEXT_PID, GLOBAL_OFF_NEXT_PID);
assert_symbol_name!(profile_offcpu, PROG_PROFILE_OFFCPU);

#[inline(always)]
fn setting(global: &'static u32) -> u32 {
    // SAFETY: a read of a load-time constant; volatile so the compiler does
    // not fold the placeholder value in.
    unsafe { core::ptr::read_volatile(global) }
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn profile_offcpu(ctx: TracePointContext) -> u32 {
    switch_out(&ctx);
    switch_in(&ctx);
    0
}

/// The previous task (`current`) leaves the CPU: stamp it with its stacks.
#[inline(always)]
fn switch_out(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // The idle task is never off the CPU in this sense.
    if tid == 0 {
        return;
    }
    if setting(&PROFILE_FILTER_PIDS) != 0 && PROFILE_PIDS.get_ptr(tgid).is_none() {
        return;
    }
    if setting(&PROFILE_FILTER_CGROUP) != 0
        && PROFILE_CGROUP.current_task_under_cgroup(0) != Ok(true)
    {
        return;
    }
    let wanted = setting(&PROFILE_STACKS_WANTED);
    let mut key = StackKey {
        // SAFETY: a helper without arguments (Linux 4.18+).
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: tgid,
        kernel_stack_id: STACK_ABSENT,
        user_stack_id: STACK_ABSENT,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        _pad: 0,
    };
    if wanted & STACKS_KERNEL != 0 {
        key.kernel_stack_id = match ctx.get_stackid(&PROFILE_STACKS, 0) {
            Ok(id) => id as i32,
            Err(e) => {
                bump(lost_slot(Side::Kernel, LostReason::from_errno(e)));
                e
            }
        };
    }
    if wanted & STACKS_USER != 0 {
        key.user_stack_id = match ctx.get_stackid(&PROFILE_STACKS, BPF_F_USER_STACK) {
            Ok(id) => id as i32,
            // A kernel thread has no user stack.
            Err(e) if e == -EFAULT => STACK_ABSENT,
            Err(e) => {
                bump(lost_slot(Side::User, LostReason::from_errno(e)));
                e
            }
        };
    }
    let start = OffCpuStart {
        // SAFETY: a helper without arguments or preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        key,
    };
    if PROFILE_OFFCPU_START.insert(tid, start, 0).is_err() {
        bump(SLOT_COUNTS_FULL);
    }
}

/// The next task comes back: add the time it was away under its stacks.
#[inline(always)]
fn switch_in(ctx: &TracePointContext) {
    let off = setting(&PROFILE_OFF_NEXT_PID);
    if off == 0 {
        return;
    }
    // SAFETY: the offset is the field's, from the format file; a failed
    // read is an error, not a fault.
    let Ok(next) = (unsafe { ctx.read_at::<i32>(off as usize) }) else {
        return;
    };
    if next <= 0 {
        return;
    }
    let next = next as u32;
    // SAFETY: a copy of a live entry's value.
    let Some(start) = (unsafe { PROFILE_OFFCPU_START.get(next) }).copied() else {
        return;
    };
    let _ = PROFILE_OFFCPU_START.remove(next);
    // SAFETY: a helper without arguments or preconditions.
    let us = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.ts_ns) / 1000;
    bump(SLOT_SAMPLES);
    let key = start.key;
    if let Some(n) = PROFILE_COUNTS.get_ptr_mut(key) {
        add(n, us);
        return;
    }
    match PROFILE_COUNTS.insert(key, us, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            // As in profile_perf: user space records the process's maps.
            let _ = PROFILE_NEW_PIDS.insert(key.pid, 0, 0);
        }
        Err(_) => match PROFILE_COUNTS.get_ptr_mut(key) {
            Some(n) => add(n, us),
            None => bump(SLOT_COUNTS_FULL),
        },
    }
}

#[inline(always)]
fn add(n: *mut u64, v: u64) {
    // SAFETY: `n` points at a live, aligned map value; other CPUs update it
    // too, so the add is atomic.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, v) };
}

#[inline(always)]
fn bump(slot: u32) {
    let Some(n) = PROFILE_STATS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: this CPU's slot; BPF tracing programs do not nest on one CPU
    // (bpf_prog_active in kernel/trace/bpf_trace.c), so the update cannot
    // race.
    unsafe { *n += 1 };
}

kscope_ebpf::program_boilerplate!();
