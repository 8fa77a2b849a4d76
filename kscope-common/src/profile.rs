//! `profile_perf`: the CPU profiler's sampling program.
//!
//! A perf_event program runs on every sample (a hardware cycle overflow or a
//! cpu-clock tick, per CPU), takes the interrupted task's kernel and user
//! stacks with `bpf_get_stackid`, and counts the sample in [`MAP_COUNTS`]
//! under a [`StackKey`]. Nothing is sent to user space per sample: user
//! space reads the aggregated counts and the stacks once sampling ends.

/// Name of the perf_event program, in the object file and in the kernel.
pub const PROG_PROFILE_PERF: &str = "profile_perf";
/// StackTrace map the stack ids in [`StackKey`] index.
pub const MAP_STACKS: &str = "PROFILE_STACKS";
/// Hash of [`StackKey`] to a `u64` sample count.
pub const MAP_COUNTS: &str = "PROFILE_COUNTS";
/// Per-CPU array of `u64` counters, indexed by the `SLOT_*` constants.
pub const MAP_STATS: &str = "PROFILE_STATS";
/// Hash whose keys are the process ids (tgids) to sample, when
/// [`GLOBAL_FILTER_PIDS`] is set.
pub const MAP_PIDS: &str = "PROFILE_PIDS";
/// Hash whose keys are process ids that got a new [`StackKey`] since user
/// space last looked; user space reads a process's memory maps when it first
/// appears here, so it can symbolize the process after it exits.
pub const MAP_NEW_PIDS: &str = "PROFILE_NEW_PIDS";

/// Load-time global (`u32`): 1 to sample only processes in [`MAP_PIDS`].
pub const GLOBAL_FILTER_PIDS: &str = "PROFILE_FILTER_PIDS";
/// One-slot `BPF_MAP_TYPE_CGROUP_ARRAY`: the cgroup v2 directory of
/// `--cgroup`, set by user space after the load, when
/// [`GLOBAL_FILTER_CGROUP`] is set.
pub const MAP_CGROUP: &str = "PROFILE_CGROUP";
/// Load-time global (`u32`): 1 to sample only tasks in the cgroup of
/// [`MAP_CGROUP`] or below it (bpf_current_task_under_cgroup).
pub const GLOBAL_FILTER_CGROUP: &str = "PROFILE_FILTER_CGROUP";
/// Load-time global (`u32`): 1 to keep samples of the idle task (pid 0).
pub const GLOBAL_INCLUDE_IDLE: &str = "PROFILE_INCLUDE_IDLE";
/// Load-time global (`u32`): which stacks to take, [`STACKS_KERNEL`] and/or
/// [`STACKS_USER`].
pub const GLOBAL_STACKS: &str = "PROFILE_STACKS_WANTED";

/// Bit of [`GLOBAL_STACKS`]: take kernel stacks.
pub const STACKS_KERNEL: u32 = 1;
/// Bit of [`GLOBAL_STACKS`]: take user stacks.
pub const STACKS_USER: u32 = 2;

/// Default size of [`MAP_STACKS`] (distinct stacks it can hold).
pub const DEFAULT_STACK_ENTRIES: u32 = 16_384;
/// Size of [`MAP_COUNTS`] (distinct keys it can hold).
pub const COUNTS_ENTRIES: u32 = 16_384;
/// Size of [`MAP_PIDS`]: at most this many `-p` processes.
pub const PIDS_ENTRIES: u32 = 1024;
/// Size of [`MAP_NEW_PIDS`].
pub const NEW_PIDS_ENTRIES: u32 = 4096;

/// A stack id for a stack that does not exist or was not asked for: the
/// kernel stack of a sample taken in user mode, the user stack of a kernel
/// thread, or either side under `-U`/`-K`. Other negative stack ids are
/// `-errno` from `bpf_get_stackid`: a lost stack.
pub const STACK_ABSENT: i32 = i32::MIN;

/// Key of [`MAP_COUNTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    /// The task's cgroup v2 id (bpf_get_current_cgroup_id): the inode
    /// number of its cgroup directory.
    pub cgroup_id: u64,
    /// Process id (tgid); 0 for the idle task.
    pub pid: u32,
    /// Id in [`MAP_STACKS`], [`STACK_ABSENT`], or `-errno`.
    pub kernel_stack_id: i32,
    /// Id in [`MAP_STACKS`], [`STACK_ABSENT`], or `-errno`.
    pub user_stack_id: i32,
    /// The sampled thread's name, NUL-padded.
    pub comm: [u8; 16],
    /// Zero: the key's bytes are its identity in the hash, so the tail
    /// that aligns it to 8 is a field, never uninitialized padding.
    pub _pad: u32,
}

/// [`MAP_STATS`] slot: samples counted (after the pid and idle filters).
pub const SLOT_SAMPLES: u32 = 0;
/// [`MAP_STATS`] slot: idle-task samples dropped (no `-I`); never counted
/// under [`GLOBAL_FILTER_PIDS`], which leaves the idle task out entirely.
pub const SLOT_IDLE: u32 = 1;
/// [`MAP_STATS`] slot: samples dropped because [`MAP_COUNTS`] was full.
pub const SLOT_COUNTS_FULL: u32 = 2;
/// First of the lost-stack slots: see [`lost_slot`].
pub const SLOT_LOST_BASE: u32 = 3;

/// Which stack of a sample was lost.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Kernel = 0,
    User = 1,
}

/// Why `bpf_get_stackid` lost a stack (kernel/bpf/stackmap.c).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// `-EEXIST`: another stack already holds this stack's hash bucket.
    Collision = 0,
    /// `-EFAULT`: the stack could not be walked where one should exist
    /// (an empty kernel stack in kernel mode, an empty user stack in user
    /// mode).
    Fault = 1,
    /// `-ENOMEM`: the stack map is full.
    MapFull = 2,
    /// Any other error.
    Other = 3,
}

impl LostReason {
    pub const ALL: [LostReason; 4] = [
        LostReason::Collision,
        LostReason::Fault,
        LostReason::MapFull,
        LostReason::Other,
    ];

    /// The reason for `bpf_get_stackid`'s return value `err` (negative).
    pub const fn from_errno(err: i32) -> Self {
        match -err {
            EEXIST => LostReason::Collision,
            EFAULT => LostReason::Fault,
            ENOMEM => LostReason::MapFull,
            _ => LostReason::Other,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            LostReason::Collision => "eexist",
            LostReason::Fault => "efault",
            LostReason::MapFull => "stack_map_full",
            LostReason::Other => "other",
        }
    }
}

/// errno values from include/uapi/asm-generic/errno-base.h.
pub const EFAULT: i32 = 14;
pub const EEXIST: i32 = 17;
pub const ENOMEM: i32 = 12;

/// Number of [`LostReason`] values.
pub const N_REASONS: u32 = 4;

/// [`MAP_STATS`] slot counting `side` stacks lost for `reason`.
#[inline(always)]
pub const fn lost_slot(side: Side, reason: LostReason) -> u32 {
    SLOT_LOST_BASE + side as u32 * N_REASONS + reason as u32
}

/// Number of slots in [`MAP_STATS`].
pub const N_STATS: u32 = SLOT_LOST_BASE + 2 * N_REASONS;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers and a byte array only, 40 bytes with no
    // padding (see the size check below; the tail is `_pad`).
    unsafe impl aya::Pod for super::StackKey {}
}

// The layout the kernel and user space share: no implicit padding.
const _: () = assert!(core::mem::size_of::<StackKey>() == 8 + 4 * 3 + 16 + 4);
const _: () = assert!(core::mem::size_of::<OffCpuStart>() == 8 + 40);

// ---- profile_offcpu (`kscope profile --off-cpu`) ----
//
// The same maps and globals as `profile_perf` (so user space reads either
// object the same way), except that `PROFILE_COUNTS` holds microseconds
// blocked instead of samples, plus the two below.

/// Name of the sched:sched_switch program.
pub const PROG_PROFILE_OFFCPU: &str = "profile_offcpu";
/// Hash, thread id to [`OffCpuStart`]: threads switched out and not yet
/// back. Shared by all CPUs (a thread often wakes on another CPU than the
/// one it left), not per-CPU.
pub const MAP_OFFCPU_START: &str = "PROFILE_OFFCPU_START";
/// Load-time global (`u32`): byte offset of `next_pid` in sched_switch's
/// record, from its format file; 0 = unknown (the program does nothing).
pub const GLOBAL_OFF_NEXT_PID: &str = "PROFILE_OFF_NEXT_PID";
/// Threads [`MAP_OFFCPU_START`] holds.
pub const OFFCPU_START_ENTRIES: u32 = 65_536;

/// A switched-out thread: when it left the CPU and the stacks it left
/// from (taken then: the thread is `current` only at the switch-out).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OffCpuStart {
    pub ts_ns: u64,
    pub key: StackKey,
}

#[cfg(feature = "user")]
mod offcpu_pod {
    // SAFETY: #[repr(C)], integers and a byte array, padding explicit
    // (8 + 40 = 48 bytes, 8-aligned).
    unsafe impl aya::Pod for super::OffCpuStart {}
}
