//! `probe_check`: counts, per probe kind, how often `do_filp_open` runs in
//! one thread (the load-time global `PROBE_CHECK_TID`).
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, kprobe, kretprobe, map},
    maps::PerCpuArray,
    programs::{FEntryContext, ProbeContext, RetProbeContext},
};
use kscope_common::probe_check::{
    GLOBAL_TARGET_TID, MAP_HITS, N_SLOTS, PROG_FENTRY, PROG_KPROBE, PROG_KRETPROBE, SLOT_FENTRY,
    SLOT_KPROBE, SLOT_KRETPROBE, TARGET_FN,
};
use kscope_ebpf::{assert_symbol_name, same_name};

#[map]
static PROBE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_SLOTS, 0);

/// Set by the loader; 0 matches nothing (the idle task never opens files).
#[unsafe(no_mangle)]
static PROBE_CHECK_TID: u32 = 0;

// The names user space uses (kscope-common) must be the ones in this file:
// a mismatch fails the build instead of the load or the attach.
assert_symbol_name!(PROBE_HITS, MAP_HITS);
// The kernel function the probes attach to (not an item of this file).
const _: () = assert!(same_name(TARGET_FN, "do_filp_open"));
assert_symbol_name!(PROBE_CHECK_TID, GLOBAL_TARGET_TID);
assert_symbol_name!(probe_check_kprobe, PROG_KPROBE);
assert_symbol_name!(probe_check_kretprobe, PROG_KRETPROBE);
assert_symbol_name!(probe_check_fentry, PROG_FENTRY);

#[inline(always)]
fn hit(slot: u32) -> u32 {
    // SAFETY: a read of a load-time constant; volatile so the compiler does
    // not fold the placeholder value in.
    let target = unsafe { core::ptr::read_volatile(&PROBE_CHECK_TID) };
    // The low 32 bits of pid_tgid are the thread id.
    if bpf_get_current_pid_tgid() as u32 != target {
        return 0;
    }
    let Some(n) = PROBE_HITS.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: this CPU's slot; probes on one CPU do not preempt each other
    // mid-update for the same thread.
    unsafe { *n += 1 };
    0
}

#[kprobe]
pub fn probe_check_kprobe(_ctx: ProbeContext) -> u32 {
    hit(SLOT_KPROBE)
}

#[kretprobe]
pub fn probe_check_kretprobe(_ctx: RetProbeContext) -> u32 {
    hit(SLOT_KRETPROBE)
}

#[fentry(function = "do_filp_open")]
pub fn probe_check_fentry(_ctx: FEntryContext) -> u32 {
    hit(SLOT_FENTRY)
}

kscope_ebpf::program_boilerplate!();
