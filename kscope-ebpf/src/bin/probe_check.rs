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
use kscope_common::probe_check::{N_SLOTS, SLOT_FENTRY, SLOT_KPROBE, SLOT_KRETPROBE};

#[map(name = "PROBE_HITS")]
static PROBE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_SLOTS, 0);

/// Set by the loader; 0 matches nothing (the idle task never opens files).
#[unsafe(no_mangle)]
static PROBE_CHECK_TID: u32 = 0;

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
