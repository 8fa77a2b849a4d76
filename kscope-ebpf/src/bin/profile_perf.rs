//! `profile_perf`: the CPU profiler's sampling program, attached to one
//! perf event per CPU (hardware cycles, or the cpu-clock software event).
//!
//! Each sample takes the interrupted task's kernel and user stacks into
//! `PROFILE_STACKS` and counts one in `PROFILE_COUNTS` under (pid, comm,
//! kernel stack id, user stack id). A stack that cannot be taken is not a
//! reason to drop the sample: its key carries `-errno` instead of an id,
//! and the loss is counted per side and reason in `PROFILE_STATS`. Only a
//! full counts map drops a sample, and that is counted too.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomics offer no
// `fetch_add`; the intrinsic lowers to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd: see above")]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, perf_event},
    maps::{CgroupArray, HashMap, PerCpuArray, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext as _},
};
use kscope_common::profile::{
    COUNTS_ENTRIES, DEFAULT_STACK_ENTRIES, EFAULT, GLOBAL_FILTER_CGROUP, GLOBAL_FILTER_PIDS,
    GLOBAL_INCLUDE_IDLE, GLOBAL_STACKS, LostReason, MAP_CGROUP, MAP_COUNTS, MAP_NEW_PIDS, MAP_PIDS,
    MAP_STACKS, MAP_STATS, N_STATS, NEW_PIDS_ENTRIES, PIDS_ENTRIES, PROG_PROFILE_PERF,
    SLOT_COUNTS_FULL, SLOT_IDLE, SLOT_SAMPLES, STACK_ABSENT, STACKS_KERNEL, STACKS_USER, Side,
    StackKey, lost_slot,
};
use kscope_ebpf::assert_symbol_name;

/// `BPF_F_USER_STACK` from include/uapi/linux/bpf.h.
const BPF_F_USER_STACK: u64 = 1 << 8;

/// Resized by the loader (`--stack-storage`).
#[map]
static PROFILE_STACKS: StackTrace = StackTrace::with_max_entries(DEFAULT_STACK_ENTRIES, 0);

#[map]
static PROFILE_COUNTS: HashMap<StackKey, u64> = HashMap::with_max_entries(COUNTS_ENTRIES, 0);

#[map]
static PROFILE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_STATS, 0);

#[map]
static PROFILE_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(PIDS_ENTRIES, 0);

#[map]
static PROFILE_NEW_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(NEW_PIDS_ENTRIES, 0);

/// `--cgroup`'s directory, in slot 0 (set by user space).
#[map]
static PROFILE_CGROUP: CgroupArray = CgroupArray::with_max_entries(1, 0);

/// Load-time settings (see kscope_common::profile::GLOBAL_*).
#[unsafe(no_mangle)]
static PROFILE_FILTER_PIDS: u32 = 0;
#[unsafe(no_mangle)]
static PROFILE_FILTER_CGROUP: u32 = 0;
#[unsafe(no_mangle)]
static PROFILE_INCLUDE_IDLE: u32 = 0;
#[unsafe(no_mangle)]
static PROFILE_STACKS_WANTED: u32 = STACKS_KERNEL | STACKS_USER;

// The names user space uses (kscope-common) must be the ones in this file:
// a mismatch fails the build instead of the load.
assert_symbol_name!(PROFILE_STACKS, MAP_STACKS);
assert_symbol_name!(PROFILE_COUNTS, MAP_COUNTS);
assert_symbol_name!(PROFILE_STATS, MAP_STATS);
assert_symbol_name!(PROFILE_PIDS, MAP_PIDS);
assert_symbol_name!(PROFILE_NEW_PIDS, MAP_NEW_PIDS);
assert_symbol_name!(PROFILE_FILTER_PIDS, GLOBAL_FILTER_PIDS);
assert_symbol_name!(PROFILE_CGROUP, MAP_CGROUP);
assert_symbol_name!(PROFILE_FILTER_CGROUP, GLOBAL_FILTER_CGROUP);
assert_symbol_name!(PROFILE_INCLUDE_IDLE, GLOBAL_INCLUDE_IDLE);
assert_symbol_name!(PROFILE_STACKS_WANTED, GLOBAL_STACKS);
assert_symbol_name!(profile_perf, PROG_PROFILE_PERF);

#[inline(always)]
fn setting(global: &'static u32) -> u32 {
    // SAFETY: a read of a load-time constant; volatile so the compiler does
    // not fold the placeholder value in.
    unsafe { core::ptr::read_volatile(global) }
}

/// The program never fails a sample: every outcome is counted.
#[perf_event]
pub fn profile_perf(ctx: PerfEventContext) -> u32 {
    sample(&ctx);
    0
}

#[inline(always)]
fn sample(ctx: &PerfEventContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The pid filter first: with `-p`, other processes' samples, the idle
    // task's included (pid 0 is never in the map), are not this profile's,
    // not even as a count of idle samples left out.
    if setting(&PROFILE_FILTER_PIDS) != 0 && PROFILE_PIDS.get_ptr(tgid).is_none() {
        return;
    }
    // The same for `--cgroup` (the idle task is in the root cgroup only,
    // so a child cgroup leaves it out too). An empty slot passes nothing.
    if setting(&PROFILE_FILTER_CGROUP) != 0
        && PROFILE_CGROUP.current_task_under_cgroup(0) != Ok(true)
    {
        return;
    }
    // Thread id 0 is the per-CPU idle task (swapper/N).
    if pid_tgid as u32 == 0 && setting(&PROFILE_INCLUDE_IDLE) == 0 {
        bump(SLOT_IDLE);
        return;
    }
    bump(SLOT_SAMPLES);

    // SAFETY: perf_event programs may read their context's registers.
    let ip = unsafe { (*ctx.ctx).regs.rip };
    // x86_64 (like arm64) puts the kernel in the upper half of the address
    // space, so a sign bit of 0 means the sample interrupted user mode.
    let user_mode = (ip as i64) >= 0;
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
            // A sample taken in user mode has no kernel stack
            // (get_perf_callchain() in kernel/events/callchain.c).
            Err(e) if e == -EFAULT && user_mode => STACK_ABSENT,
            Err(e) => {
                bump(lost_slot(Side::Kernel, LostReason::from_errno(e)));
                e
            }
        };
    }
    if wanted & STACKS_USER != 0 {
        key.user_stack_id = match ctx.get_stackid(&PROFILE_STACKS, BPF_F_USER_STACK) {
            Ok(id) => id as i32,
            // In kernel mode, an empty user stack is a kernel thread's (it
            // has no user memory); telling it from a failed walk would need
            // task->mm, so it is taken as absent.
            Err(e) if e == -EFAULT && !user_mode => STACK_ABSENT,
            Err(e) => {
                bump(lost_slot(Side::User, LostReason::from_errno(e)));
                e
            }
        };
    }

    if let Some(n) = PROFILE_COUNTS.get_ptr_mut(key) {
        add_one(n);
        return;
    }
    match PROFILE_COUNTS.insert(key, 1, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            // A new key: tell user space this process has new stacks, so it
            // records the process's memory maps while they still exist.
            // Failure (already there, or full) needs no handling.
            let _ = PROFILE_NEW_PIDS.insert(tgid, 0, 0);
        }
        // Another CPU inserted the same key first.
        Err(_) => match PROFILE_COUNTS.get_ptr_mut(key) {
            Some(n) => add_one(n),
            None => bump(SLOT_COUNTS_FULL),
        },
    }
}

#[inline(always)]
fn add_one(n: *mut u64) {
    // SAFETY: `n` points at a live, aligned map value; other CPUs update it
    // too, so the add is atomic.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
}

#[inline(always)]
fn bump(slot: u32) {
    let Some(n) = PROFILE_STATS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: this CPU's slot; perf_event programs do not nest on one CPU
    // (bpf_prog_active in kernel/events/core.c), so the update cannot race.
    unsafe { *n += 1 };
}

kscope_ebpf::program_boilerplate!();
