//! `probe_check`: kprobe, kretprobe and fentry programs that only count how
//! often they fire for one thread. They prove a kernel can attach and run
//! each kind, which the tracers fall back on.

/// Programs, one per probe kind.
pub const PROG_KPROBE: &str = "probe_check_kprobe";
pub const PROG_KRETPROBE: &str = "probe_check_kretprobe";
pub const PROG_FENTRY: &str = "probe_check_fentry";
/// Per-CPU array of `u64` hit counts, indexed by [`SLOT_KPROBE`] etc.
pub const MAP_HITS: &str = "PROBE_HITS";
/// Load-time global: only this thread id is counted.
pub const GLOBAL_TARGET_TID: &str = "PROBE_CHECK_TID";

pub const SLOT_KPROBE: u32 = 0;
pub const SLOT_KRETPROBE: u32 = 1;
pub const SLOT_FENTRY: u32 = 2;
pub const N_SLOTS: u32 = 3;

/// Kernel function every probe kind attaches to: called once per open(2)
/// family syscall, also when the path does not exist (fs/namei.c), and
/// global, so neither inlined away nor missing from BTF.
pub const TARGET_FN: &str = "do_filp_open";
