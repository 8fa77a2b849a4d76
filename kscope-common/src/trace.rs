//! Kernel tracers (`trace_open`, `trace_exec`, `trace_connect`): events,
//! map names and load-time globals shared by both sides.

/// Ring buffer carrying events to user space.
pub const MAP_EVENTS: &str = "TRACE_EVENTS";
/// Per-CPU `u64`: events dropped because the ring buffer was full.
pub const MAP_LOST: &str = "TRACE_LOST";

/// Load-time globals, set by the loader (`override_global`); 0 = no filter.
pub const GLOBAL_PID: &str = "FILTER_PID";
pub const GLOBAL_TID: &str = "FILTER_TID";
/// UID filter: only when `FILTER_UID_ON` is 1 (uid 0 is a valid filter).
pub const GLOBAL_UID: &str = "FILTER_UID";
pub const GLOBAL_UID_ON: &str = "FILTER_UID_ON";
/// Substring of the process name, NUL-padded; `FILTER_COMM_LEN` = 0 means none.
pub const GLOBAL_COMM: &str = "FILTER_COMM";
pub const GLOBAL_COMM_LEN: &str = "FILTER_COMM_LEN";
/// Wake the consumer once this many bytes wait in the ring buffer; below
/// that, events are submitted without a wakeup and the consumer's timer
/// (a few milliseconds) picks them up. One wakeup per event is what makes
/// printing tracers slow (an interrupt and a context switch each).
pub const GLOBAL_WAKEUP_BYTES: &str = "WAKEUP_BYTES";

/// Length of a task's comm, NUL included (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

// ---- trace_open ----

pub const PROG_OPEN_ENTER_OPENAT: &str = "trace_open_enter_openat";
pub const PROG_OPEN_EXIT_OPENAT: &str = "trace_open_exit_openat";
pub const PROG_OPEN_ENTER_OPEN: &str = "trace_open_enter_open";
pub const PROG_OPEN_EXIT_OPEN: &str = "trace_open_exit_open";
pub const PROG_OPEN_ENTER_OPENAT2: &str = "trace_open_enter_openat2";
pub const PROG_OPEN_EXIT_OPENAT2: &str = "trace_open_exit_openat2";
/// Only failed opens (`-x`).
pub const GLOBAL_FAILED_ONLY: &str = "FAILED_ONLY";

/// Bytes of path kept per open event, NUL included.
pub const PATH_LEN: usize = 256;

/// One open(2)/openat(2)/openat2(2), reported at syscall exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenEvent {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) at syscall exit.
    pub ts_ns: u64,
    /// The syscall's return value: a file descriptor, or -errno.
    pub ret: i64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// open flags (O_*).
    pub flags: u32,
    pub comm: [u8; COMM_LEN],
    /// The path argument as the process passed it, NUL-terminated.
    pub path: [u8; PATH_LEN],
}

/// What the enter handler keeps for the exit handler, per thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenArgs {
    /// User-space pointer to the path.
    pub path: u64,
    pub flags: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers and byte arrays only, no implicit padding
    // (8 + 8 + 4*4 + 16 + 256 bytes, 8-aligned).
    unsafe impl aya::Pod for super::OpenEvent {}
    // SAFETY: as above, with `_pad` explicit.
    unsafe impl aya::Pod for super::OpenArgs {}
}
