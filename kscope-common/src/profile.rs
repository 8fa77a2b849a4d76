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

// ---- DWARF unwinding of user stacks (`profile_unwind`) ----
//
// User space turns each mapped executable's and library's `.eh_frame` into
// sorted rows (kscope-unwind) and stores them in one array shared by all
// objects ([`MAP_UNWIND_ROWS`]); each process gets the list of its
// executable mappings with where their rows are ([`MAP_UNWIND_PROCS`]).
// `profile_perf` starts a walk for a user-mode sample of such a process
// and tail-calls `profile_unwind`, which unwinds [`FRAMES_PER_CALL`]
// frames per run and tail-calls itself until the walk ends (at most
// [`MAX_FRAMES`] frames), then stores the stack in [`MAP_USTACKS`] under
// an id at or above [`DWARF_STACK_ID_BASE`].

/// Name of the tail-called unwinding program.
pub const PROG_PROFILE_UNWIND: &str = "profile_unwind";
/// `BPF_MAP_TYPE_ARRAY` of [`UnwindRow`], resized by the loader.
pub const MAP_UNWIND_ROWS: &str = "PROFILE_UNWIND_ROWS";
/// Hash, process id (tgid) to [`ProcUnwind`].
pub const MAP_UNWIND_PROCS: &str = "PROFILE_UNWIND_PROCS";
/// One-slot per-CPU array of [`UnwindState`]: the walk in progress.
pub const MAP_UNWIND_STATE: &str = "PROFILE_UNWIND_STATE";
/// One-slot program array holding `profile_unwind`.
pub const MAP_UNWIND_PROGS: &str = "PROFILE_UNWIND_PROGS";
/// Hash, stack id (from [`DWARF_STACK_ID_BASE`]) to [`UserStack`].
pub const MAP_USTACKS: &str = "PROFILE_USTACKS";
/// Load-time global (`u32`): 1 to unwind with tables (off: `--no-dwarf`).
pub const GLOBAL_DWARF: &str = "PROFILE_DWARF";
/// Load-time global (`u32`): byte offset of `stack` in `struct
/// task_struct`, from the kernel's BTF; 0 = unknown.
pub const GLOBAL_TASK_STACK_OFF: &str = "PROFILE_TASK_STACK_OFF";

/// Frames of a stack walked with tables, at most.
pub const MAX_FRAMES: usize = 128;
/// Frames each run of `profile_unwind` walks before it tail-calls itself
/// (16 runs for [`MAX_FRAMES`], well under the kernel's 33).
pub const FRAMES_PER_CALL: u32 = 8;
/// Executable mappings of one process the walker knows, at most.
pub const MAX_MAPPINGS: usize = 24;
/// Steps of the binary search for a row: one object's table holds at most
/// `2^BSEARCH_STEPS` rows.
pub const BSEARCH_STEPS: u32 = 22;
/// Rows of one object's table, at most.
pub const MAX_OBJECT_ROWS: u32 = 1 << BSEARCH_STEPS;
/// User stack ids at or above this are in [`MAP_USTACKS`]; ids below are
/// `bpf_get_stackid`'s (always below the stack map's size, at most 2^20).
pub const DWARF_STACK_ID_BASE: i32 = 0x4000_0000;
/// Default size of [`MAP_UNWIND_ROWS`], in rows of 16 bytes: 16 MiB.
pub const DEFAULT_UNWIND_ROWS: u32 = 1 << 20;

/// [`UnwindRow::cfa_kind`]: no unwind information here (frame pointer).
pub const CFA_NO_INFO: u8 = 0;
/// CFA = rsp + `cfa_offset`.
pub const CFA_RSP: u8 = 1;
/// CFA = rbp + `cfa_offset`.
pub const CFA_RBP: u8 = 2;
/// The PLT expression: rsp + 8, plus 8 when `(rip & 15) >= cfa_offset`.
pub const CFA_PLT: u8 = 3;
/// A rule the walker cannot follow: the walk stops.
pub const CFA_UNSUPPORTED: u8 = 4;
/// The outermost frame (return address undefined): the walk is complete.
pub const CFA_END: u8 = 5;

/// [`UnwindRow::rbp_kind`]: the caller's rbp is the current one.
pub const RBP_UNCHANGED: u8 = 0;
/// The caller's rbp is saved at CFA + `rbp_offset`.
pub const RBP_AT_CFA: u8 = 1;
/// The caller's rbp cannot be recovered (later rbp-based rules stop).
pub const RBP_UNSUPPORTED: u8 = 2;

/// One row of an unwind table: the rule from `pc` (a file virtual address)
/// up to the next row's `pc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u64,
    pub cfa_offset: i32,
    pub rbp_offset: i16,
    pub cfa_kind: u8,
    pub rbp_kind: u8,
}

/// One executable mapping of a process: addresses `[start, end)`, whose
/// file virtual address is `address - bias`, and its object's rows
/// `[table_start, table_start + table_len)` in [`MAP_UNWIND_ROWS`]
/// (`table_len` 0: no table, frame pointers only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub table_start: u32,
    pub table_len: u32,
}

/// Value of [`MAP_UNWIND_PROCS`]: the first `len` of `maps`, sorted by
/// `start`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcUnwind {
    pub len: u32,
    pub _pad: u32,
    pub maps: [UnwindMapping; MAX_MAPPINGS],
}

/// Value of [`MAP_USTACKS`]: return addresses, leaf first, the unused
/// tail zero.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UserStack {
    pub ips: [u64; MAX_FRAMES],
}

/// The walk in progress on a CPU (perf_event programs do not nest on a
/// CPU, so one slot per CPU suffices).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindState {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Frames in `stack` so far.
    pub len: u32,
    pub _pad: u32,
    pub key: StackKey,
    pub stack: UserStack,
}

// No implicit padding: 8-byte fields, and `StackKey` (40 bytes) ends
// 8-aligned.
const _: () = assert!(core::mem::size_of::<UnwindState>() == 8 * 3 + 4 * 2 + 40 + 8 * MAX_FRAMES);

/// [`MAP_STATS`] slot: user stacks walked with unwind tables.
pub const SLOT_DWARF_WALKS: u32 = N_STATS;
/// [`MAP_STATS`] slot: frames stepped by frame pointer in such walks (no
/// table covered the address).
pub const SLOT_DWARF_FP_STEPS: u32 = N_STATS + 1;
/// [`MAP_STATS`] slot: walks cut at [`MAX_FRAMES`].
pub const SLOT_DWARF_TRUNCATED: u32 = N_STATS + 2;
/// [`MAP_STATS`] slot: walks ended by a rule the walker cannot follow or
/// a failed read before the outermost frame.
pub const SLOT_DWARF_STOPPED: u32 = N_STATS + 3;
/// Number of slots in the profiler's [`MAP_STATS`] (the lost-stack slots
/// and the unwinder's).
pub const N_PROFILE_STATS: u32 = N_STATS + 4;

#[cfg(feature = "user")]
mod unwind_pod {
    // SAFETY: #[repr(C)] integers only, 8 + 4 + 2 + 1 + 1 = 16 bytes, no
    // padding.
    unsafe impl aya::Pod for super::UnwindRow {}
    // SAFETY: #[repr(C)], integers only: 8 + 8 + 8 + 4 + 4 = 32 bytes.
    unsafe impl aya::Pod for super::UnwindMapping {}
    // SAFETY: #[repr(C)], two u32 then 8-aligned 32-byte entries.
    unsafe impl aya::Pod for super::ProcUnwind {}
    // SAFETY: #[repr(C)] array of u64.
    unsafe impl aya::Pod for super::UserStack {}
}
