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
/// One-slot `BPF_MAP_TYPE_CGROUP_ARRAY`: the cgroup v2 directory of
/// `--cgroup`, set by user space after the load. Tasks in it or in any
/// cgroup below it pass (bpf_current_task_under_cgroup, Linux 4.9+: it
/// covers descendants on every kernel kscope runs on, 5.10 included).
pub const MAP_CGROUP: &str = "TRACE_CGROUP";
/// Load-time global: 1 = only tasks under the cgroup in `TRACE_CGROUP`.
pub const GLOBAL_CGROUP_ON: &str = "FILTER_CGROUP_ON";
/// Load-time global: 1 = the cgroup verdict of the last task seen on each
/// CPU is kept (`TRACE_CGROUP_SEEN`) and reused for that task's next event
/// until a task changes cgroups or exits (`TRACE_CGROUP_GEN`). User space
/// sets it when it can attach [`PROG_CGROUP_MOVED`] and
/// [`PROG_TASK_EXITED`], which keep the generation.
pub const GLOBAL_CGROUP_CACHE_ON: &str = "FILTER_CGROUP_CACHE_ON";
/// Per-CPU array of one `u64`: the last cgroup verdict on this CPU,
/// [`cgroup_seen`]'s word.
pub const MAP_CGROUP_SEEN: &str = "TRACE_CGROUP_SEEN";
/// Array of one `u64`: the generation of tasks' cgroups, bumped each time
/// a task changes cgroups or exits. A verdict of an older generation is
/// not reused.
pub const MAP_CGROUP_GEN: &str = "TRACE_CGROUP_GEN";
/// Bumps `TRACE_CGROUP_GEN` on `cgroup:cgroup_attach_task`, which the
/// kernel emits once a task (or a process's threads) has moved.
pub const PROG_CGROUP_MOVED: &str = "trace_cgroup_moved";
/// Bumps `TRACE_CGROUP_GEN` on `sched:sched_process_exit`, before the
/// exiting thread's id can be reused.
pub const PROG_TASK_EXITED: &str = "trace_task_exited";

/// Bits of the generation a cached verdict keeps.
pub const CGROUP_GEN_BITS: u32 = 30;

/// The word `TRACE_CGROUP_SEEN` holds for thread `tid`'s verdict `pass`
/// computed at generation `gen`: the thread id, the generation's low 30
/// bits, a valid bit (so that the zeroed word matches no thread), the
/// verdict. One word, written and read whole, so no program can see half
/// of another's.
#[must_use]
pub const fn cgroup_seen(tid: u32, generation: u64, pass: bool) -> u64 {
    (tid as u64) << 32 | (generation & ((1 << CGROUP_GEN_BITS) - 1)) << 2 | 0b10 | pass as u64
}
/// Wake the consumer once this many bytes wait in the ring buffer; below
/// that, events are submitted without a wakeup and the consumer's timer
/// (a few milliseconds) picks them up. One wakeup per event is what makes
/// printing tracers slow (an interrupt and a context switch each).
pub const GLOBAL_WAKEUP_BYTES: &str = "WAKEUP_BYTES";

/// Length of a task's comm, NUL included (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

// ---- count mode, every tracer (`-c`) ----

/// Load-time global: 1 = count mode. The programs that would submit an
/// event count it instead under the tracer's key (`OpenKey`, `ExecKey`,
/// `ConnectKey`) in `TRACE_COUNTS`, and submit nothing.
pub const GLOBAL_COUNT_MODE: &str = "COUNT_MODE";
/// Per-CPU hash, the tracer's key to [`Counts`]: count mode's totals.
pub const MAP_COUNTS: &str = "TRACE_COUNTS";
/// Per-CPU `u64`: events count mode could not count because `TRACE_COUNTS`
/// was full.
pub const MAP_UNCOUNTED: &str = "TRACE_UNCOUNTED";
/// Keys `TRACE_COUNTS` holds.
pub const COUNTS_MAX: u32 = 10_240;

/// Count mode's value per key (on each CPU, in `TRACE_COUNTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Events counted, failed ones included.
    pub events: u64,
    /// Of those, the ones whose call returned an error.
    pub failed: u64,
}

// ---- trace_open ----

pub const PROG_OPEN_ENTER_OPENAT: &str = "trace_open_enter_openat";
pub const PROG_OPEN_EXIT_OPENAT: &str = "trace_open_exit_openat";
pub const PROG_OPEN_ENTER_OPEN: &str = "trace_open_enter_open";
pub const PROG_OPEN_EXIT_OPEN: &str = "trace_open_exit_open";
pub const PROG_OPEN_ENTER_OPENAT2: &str = "trace_open_enter_openat2";
pub const PROG_OPEN_EXIT_OPENAT2: &str = "trace_open_exit_openat2";
/// Only failed opens (`-x`).
pub const GLOBAL_FAILED_ONLY: &str = "FAILED_ONLY";

/// Longest path kept per open, NUL included: PATH_MAX
/// (include/uapi/linux/limits.h). The kernel refuses longer paths
/// (ENAMETOOLONG, getname() in fs/namei.c), so a path is cut only when the
/// open itself fails that way.
pub const PATH_MAX: usize = 4096;
/// Per-CPU array of one [`OpenPending`]: where the enter handler builds an
/// entry (too big for the 512-byte stack).
pub const MAP_OPEN_SCRATCH: &str = "OPEN_SCRATCH";

/// Arguments of in-flight opens by thread id.
pub const MAP_OPEN_PENDING: &str = "OPEN_PENDING";

/// An open's key in count mode: the task's comm (the thread's name),
/// NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OpenKey {
    pub comm: [u8; COMM_LEN],
}

/// One open(2)/openat(2)/openat2(2), reported at syscall exit.
///
/// A ring-buffer record is this header followed by `path_len` bytes of
/// path (no NUL), so a short path costs a short record: the record's size
/// varies (bpf_ringbuf_output), up to `size_of::<OpenEvent>() + PATH_MAX`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenEvent {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) at syscall exit.
    pub ts_ns: u64,
    /// The syscall's return value: a file descriptor, or -errno.
    pub ret: i64,
    /// The task's cgroup v2 id (bpf_get_current_cgroup_id): the inode
    /// number of its cgroup directory.
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// open flags (O_*).
    pub flags: u32,
    pub comm: [u8; COMM_LEN],
    /// Bytes of path after the header (`PATH_MAX - 1` at most).
    pub path_len: u32,
    /// 1 when the path was longer than `PATH_MAX - 1` bytes and was cut.
    pub path_truncated: u32,
}

/// What the enter handler keeps for the exit handler, per thread: the
/// event, its path read at entry (the syscall's own argument, before any
/// other thread can rewrite the buffer while the open blocks), and room
/// for the rest, which the exit handler fills in before sending
/// `size_of::<OpenEvent>() + path_len` bytes of it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenPending {
    pub ev: OpenEvent,
    pub path: [u8; PATH_MAX],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers and byte arrays only, no implicit padding
    // (3*8 + 4*4 + 16 + 2*4 = 64 bytes, 8-aligned).
    unsafe impl aya::Pod for super::OpenEvent {}
    // SAFETY: #[repr(C)], two u64s.
    unsafe impl aya::Pod for super::Counts {}
    // SAFETY: #[repr(C)], a byte array.
    unsafe impl aya::Pod for super::OpenKey {}
    // SAFETY: #[repr(C)], integers and byte arrays, padding explicit
    // (16 + 4 + 4 = 24 bytes, 4-aligned).
    unsafe impl aya::Pod for super::ExecKey {}
    // SAFETY: #[repr(C)], integers and byte arrays, no implicit padding
    // (16 + 16 + 4 * 3 + 2 * 2 = 48 bytes, 4-aligned).
    unsafe impl aya::Pod for super::ConnectKey {}
}

// ---- trace_connect ----

/// kprobe on tcp_v4_connect and tcp_v6_connect (one program, two attachments).
pub const PROG_CONNECT_KPROBE: &str = "trace_connect_kprobe";
/// kretprobe on both, for the return value and the source address.
pub const PROG_CONNECT_KRETPROBE: &str = "trace_connect_kretprobe";
pub const PROG_CONNECT_FENTRY_V4: &str = "trace_connect_fentry_v4";
pub const PROG_CONNECT_FEXIT_V4: &str = "trace_connect_fexit_v4";
pub const PROG_CONNECT_FENTRY_V6: &str = "trace_connect_fentry_v6";
pub const PROG_CONNECT_FEXIT_V6: &str = "trace_connect_fexit_v6";
/// sock:inet_sock_set_state: SYN_SENT and the transition out of it.
pub const PROG_CONNECT_STATE: &str = "trace_connect_state";
/// syscalls:sys_enter_connect / sys_exit_connect, with the state
/// tracepoint only: report the TCP connects that fail before a SYN is sent
/// (no route, no source address, a bad address), which never reach
/// SYN_SENT and so never show in sock:inet_sock_set_state.
pub const PROG_CONNECT_SYS_ENTER: &str = "trace_connect_sys_enter";
pub const PROG_CONNECT_SYS_EXIT: &str = "trace_connect_sys_exit";
/// Byte offsets, from BTF, along `current->files->fdt->fd[fd]->
/// private_data->type`: how the syscall programs tell a stream socket's fd
/// (TCP, for AF_INET/AF_INET6) from others. All 0 = unknown: the syscall
/// programs then report nothing.
pub const GLOBAL_SOCK_PATH: &str = "SOCK_PATH";
/// Indexes into `SOCK_PATH`.
pub const SP_TASK_FILES: usize = 0;
pub const SP_FILES_FDT: usize = 1;
pub const SP_FDT_FD: usize = 2;
pub const SP_FILE_PRIVATE: usize = 3;
pub const SP_SOCKET_TYPE: usize = 4;
pub const SP_N: usize = 5;
/// Destination ports to keep (`-P`), when `PORT_FILTER_ON` is 1.
pub const MAP_PORTS: &str = "CONNECT_PORTS";
/// Hash of in-flight connects: by thread id (probes) or by struct sock
/// (tracepoint).
pub const MAP_CONNECT_PENDING: &str = "CONNECT_PENDING";
pub const GLOBAL_PORT_FILTER_ON: &str = "PORT_FILTER_ON";
/// Byte offsets in struct sock_common, from the kernel's BTF.
pub const GLOBAL_OFF_SADDR: &str = "OFF_SADDR";
pub const GLOBAL_OFF_SADDR6: &str = "OFF_SADDR6";
pub const GLOBAL_OFF_SPORT: &str = "OFF_SPORT";
/// Field offsets of sock:inet_sock_set_state, from its format file.
pub const GLOBAL_TP_OFFSETS: &str = "TP_OFFSETS";
/// Indexes into `TP_OFFSETS`.
pub const TP_SKADDR: usize = 0;
pub const TP_OLDSTATE: usize = 1;
pub const TP_NEWSTATE: usize = 2;
pub const TP_SPORT: usize = 3;
pub const TP_DPORT: usize = 4;
pub const TP_FAMILY: usize = 5;
pub const TP_PROTOCOL: usize = 6;
pub const TP_SADDR: usize = 7;
pub const TP_DADDR: usize = 8;
pub const TP_SADDR6: usize = 9;
pub const TP_DADDR6: usize = 10;
pub const TP_N: usize = 11;
/// Field names, in `TP_*` order, as the format file spells them.
pub const TP_FIELDS: [&str; TP_N] = [
    "skaddr", "oldstate", "newstate", "sport", "dport", "family", "protocol", "saddr", "daddr",
    "saddr_v6", "daddr_v6",
];

/// One TCP connect. Addresses are in network byte order (IPv4 in the first
/// four bytes); ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectEvent {
    pub ts_ns: u64,
    /// From the call to its return (probes), or from SYN_SENT to the next
    /// state (tracepoint).
    pub latency_ns: u64,
    /// The connecting task's cgroup v2 id.
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// tcp_v{4,6}_connect's return value (0 or -errno).
    pub ret: i32,
    /// 0 when RET is unknown (the tracepoint cannot see it).
    pub has_ret: u32,
    /// AF_INET or AF_INET6.
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    pub _pad2: u32,
}

/// What the entry handler keeps for the return handler.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectStart {
    pub ts_ns: u64,
    /// The struct sock pointer.
    pub sk: u64,
    /// The connecting task's cgroup v2 id.
    pub cgroup_id: u64,
    pub family: u16,
    pub dport: u16,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub daddr: [u8; 16],
    pub comm: [u8; COMM_LEN],
}

/// Load-time global: 1 = count connects per task too (`ConnectKey`'s pid
/// and comm); 0 = by destination and result only, as the daemon does.
pub const GLOBAL_COUNT_BY_TASK: &str = "COUNT_BY_TASK";

/// A connect's key in count mode. `pid` and `comm` are zero unless
/// `COUNT_BY_TASK` is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectKey {
    pub comm: [u8; COMM_LEN],
    /// Network byte order; IPv4 in the first four bytes.
    pub daddr: [u8; 16],
    pub pid: u32,
    /// As `ConnectEvent::ret`, 0 when `has_ret` is 0.
    pub ret: i32,
    pub has_ret: u32,
    pub family: u16,
    pub dport: u16,
}

#[cfg(feature = "user")]
mod connect_pod {
    // SAFETY: #[repr(C)], integers and byte arrays, padding explicit
    // (3*8+5*4+4*2+16+16+16+4 = 104 bytes).
    unsafe impl aya::Pod for super::ConnectEvent {}
}

// ---- trace_exec ----

pub const PROG_EXEC_ENTER_EXECVE: &str = "trace_exec_enter_execve";
pub const PROG_EXEC_EXIT_EXECVE: &str = "trace_exec_exit_execve";
pub const PROG_EXEC_ENTER_EXECVEAT: &str = "trace_exec_enter_execveat";
pub const PROG_EXEC_EXIT_EXECVEAT: &str = "trace_exec_exit_execveat";
/// Load-time global: how many arguments to keep (`--max-args`).
pub const GLOBAL_MAX_ARGS: &str = "MAX_ARGS";
/// sched:sched_process_exec, in the execing task after a successful exec:
/// moves the pending entry of a thread that exec'd from a non-leader
/// thread to the thread id it has now (the leader's, de_thread() in
/// fs/exec.c), so that the exit handler finds it.
pub const PROG_EXEC_PROCESS_EXEC: &str = "trace_exec_process_exec";
/// Byte offset of `old_pid` in sched:sched_process_exec's record, from its
/// format file; 0 = unknown (the program then does nothing).
pub const GLOBAL_OFF_OLD_PID: &str = "OFF_OLD_PID";
/// Per-CPU array of one [`ExecEvent`]: where the enter handler builds it.
pub const MAP_EXEC_SCRATCH: &str = "EXEC_SCRATCH";
/// Hash, thread id to [`ExecEvent`]: execs between enter and exit.
pub const MAP_EXEC_PENDING: &str = "EXEC_PENDING";
/// Byte offsets in struct task_struct (real_parent, tgid), from BTF.
pub const GLOBAL_OFF_REAL_PARENT: &str = "OFF_REAL_PARENT";
pub const GLOBAL_OFF_TGID: &str = "OFF_TGID";
/// Upper bound of `--max-args`.
pub const MAX_ARGS_LIMIT: u32 = 64;
/// Bytes of arguments kept per exec (NUL-separated).
pub const ARGS_SIZE: usize = 4096;
/// Longest single argument kept, NUL included.
pub const ARG_LEN: usize = 256;

/// One execve(2)/execveat(2), reported at syscall exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub ts_ns: u64,
    /// The task's cgroup v2 id.
    pub cgroup_id: u64,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// 0, or -errno when the exec failed.
    pub ret: i32,
    /// Arguments kept, and bytes of `args` they use.
    pub argc: u32,
    pub args_len: u32,
    /// 1 when arguments were left out after the `argc` kept
    /// (`--max-args`, or `ARGS_SIZE` full).
    pub truncated: u32,
    pub _pad: u32,
    /// Bit i set: argument i was cut short, at `ARG_LEN - 1` bytes or at
    /// the end of `ARGS_SIZE`.
    pub cut_args: u64,
    /// The task's name at exit: the new program's on success.
    pub comm: [u8; COMM_LEN],
    /// `argc` NUL-terminated arguments; `ARG_LEN` of slack at the end keeps
    /// every write in bounds for the verifier.
    pub args: [u8; ARGS_SIZE + ARG_LEN],
}

/// An exec's key in count mode: the task's name at exit (the new
/// program's on success) and the result.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExecKey {
    pub comm: [u8; COMM_LEN],
    /// 0, or -errno.
    pub ret: i32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod exec_pod {
    // SAFETY: #[repr(C)], integers and byte arrays, padding explicit.
    unsafe impl aya::Pod for super::ExecEvent {}
}

// ---- histograms, every latency tracer (`kscope hist`) ----

/// Per-CPU hash, the tracer's key to [`Hist`]: latencies aggregated in the
/// kernel, one log2 histogram per key (`tracer_common!(.., hist)`).
pub const MAP_HIST: &str = "TRACE_HIST";
/// Array of one zeroed [`Hist`], never written: what a new key of
/// `TRACE_HIST` starts from (a `Hist` is too big for the BPF stack).
pub const MAP_HIST_ZERO: &str = "TRACE_HIST_ZERO";
/// Hash (shared by the CPUs, preallocated), the tracer's key to [`Hist`]:
/// where a latency goes whose key `TRACE_HIST` could not take, because the
/// table is full or because the kernel had no memory ready for the new key
/// (`TRACE_HIST` allocates keys as they come, in atomic context: Linux 5.10
/// takes their per-CPU memory from a small reserve that a burst of new
/// keys exhausts, later kernels from per-CPU caches that are refilled
/// asynchronously). Inserting here allocates nothing. As many keys as
/// `TRACE_HIST`; user space adds the two when it reads.
pub const MAP_HIST_SPARE: &str = "TRACE_HIST_SPARE";
/// Buckets of a [`Hist`]: bucket `i` holds latencies of `i` bits, i.e.
/// from `2^i` to `2^(i+1) - 1` nanoseconds (bucket 0 also holds 0).
pub const HIST_SLOTS: usize = 64;

/// One key's latency histogram (on each CPU, in `TRACE_HIST`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hist {
    /// Latencies per log2 bucket, see [`hist_slot`].
    pub slots: [u64; HIST_SLOTS],
    /// Latencies added (the sum of `slots`).
    pub count: u64,
    /// Their sum, in nanoseconds.
    pub sum_ns: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            slots: [0; HIST_SLOTS],
            count: 0,
            sum_ns: 0,
        }
    }
}

/// The bucket of a latency of `ns` nanoseconds: its bit length less one
/// (floor(log2(ns))), 0 for 0 and 1. Shifts and compares only, no loop:
/// the kernel side runs it too.
#[inline(always)]
pub const fn hist_slot(ns: u64) -> usize {
    let mut v = ns;
    let mut r = 0;
    if v >> 32 != 0 {
        v >>= 32;
        r += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        r += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        r += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        r += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        r += 2;
    }
    if v >> 1 != 0 {
        r += 1;
    }
    r
}

/// Load-time global of every histogram tracer: 1 = key the histograms by
/// the task's cgroup too (the `cgroup_id` of their keys; 0 otherwise), for
/// the daemon's `cgroup` label.
pub const GLOBAL_HIST_BY_CGROUP: &str = "HIST_BY_CGROUP";

/// `hist runq`'s key: one histogram (per cgroup with `HIST_BY_CGROUP`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RunqKey {
    pub zero: u64,
    pub cgroup_id: u64,
}

/// `hist syscall`'s key: the system call's number (raw_syscalls `id`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyscallKey {
    pub nr: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
}

#[cfg(feature = "user")]
mod hist_pod {
    // SAFETY: #[repr(C)], u64s only.
    unsafe impl aya::Pod for super::Hist {}
    // SAFETY: #[repr(C)], two u64s.
    unsafe impl aya::Pod for super::RunqKey {}
    // SAFETY: #[repr(C)], integers, padding explicit (4 + 4 + 8).
    unsafe impl aya::Pod for super::SyscallKey {}
}

// ---- hist_runq ----

/// sched:sched_wakeup and sched:sched_wakeup_new: stamp the woken task.
pub const PROG_RUNQ_WAKEUP: &str = "hist_runq_wakeup";
pub const PROG_RUNQ_WAKEUP_NEW: &str = "hist_runq_wakeup_new";
/// sched:sched_switch: the next task's wait ends; the previous task's
/// measured wait is added to the histogram if it passes the filters.
pub const PROG_RUNQ_SWITCH: &str = "hist_runq_switch";
/// Hash, thread id to [`RunqPending`]: woken tasks not yet run, and
/// running tasks whose wait is not yet added.
pub const MAP_RUNQ_PENDING: &str = "RUNQ_PENDING";
/// Byte offsets of `pid` in sched_wakeup's and sched_wakeup_new's records
/// and of `next_pid` in sched_switch's, from their format files.
pub const GLOBAL_OFF_WAKEUP_PID: &str = "OFF_WAKEUP_PID";
pub const GLOBAL_OFF_WAKEUP_NEW_PID: &str = "OFF_WAKEUP_NEW_PID";
pub const GLOBAL_OFF_NEXT_PID: &str = "OFF_NEXT_PID";

/// A task's wait in `hist_runq`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RunqPending {
    /// bpf_ktime_get_ns at its wakeup; 0 once it runs.
    pub wake_ns: u64,
    /// Its last wait, from wakeup to running; valid when `has_wait` is 1.
    pub wait_ns: u64,
    pub has_wait: u64,
}

// ---- hist_syscall ----

pub const PROG_SYSCALL_ENTER: &str = "hist_syscall_enter";
pub const PROG_SYSCALL_EXIT: &str = "hist_syscall_exit";
/// Hash, thread id to the entry's bpf_ktime_get_ns.
pub const MAP_SYSCALL_START: &str = "SYSCALL_START";
/// Array, syscall number to 1 for the syscalls wanted (when
/// `SYSCALL_FILTER_ON` is 1).
pub const MAP_SYSCALL_WANT: &str = "SYSCALL_WANT";
pub const GLOBAL_SYSCALL_FILTER_ON: &str = "SYSCALL_FILTER_ON";
/// Entries of `SYSCALL_WANT`: syscall numbers below this can be filtered.
pub const SYSCALL_NR_MAX: u32 = 1024;
/// Histograms `kscope hist runq` keeps: one, or one per cgroup with
/// `--per-cgroup` (and as many in the spare table, [`MAP_HIST_SPARE`]).
pub const RUNQ_CGROUPS_MAX: u32 = 1024;
/// Byte offsets of `id` in raw_syscalls:sys_enter's and sys_exit's
/// records, from their format files.
pub const GLOBAL_OFF_ENTER_ID: &str = "OFF_ENTER_ID";
pub const GLOBAL_OFF_EXIT_ID: &str = "OFF_EXIT_ID";

// ---- hist_block ----

/// block:block_rq_issue: stamps the request, keyed by (device, sector).
pub const PROG_BLOCK_ISSUE: &str = "hist_block_issue";
/// block:block_rq_complete: adds the time since its issue under
/// [`BlockKey`].
pub const PROG_BLOCK_COMPLETE: &str = "hist_block_complete";
/// Hash, [`BlockReq`] to [`BlockStart`]: requests issued, not completed.
pub const MAP_BLOCK_START: &str = "BLOCK_START";
/// Load-time global: `[u32; BO_N]`, byte offsets in the tracepoints'
/// records, from their format files; 0 = unknown (the programs then do
/// nothing).
pub const GLOBAL_BLOCK_OFFSETS: &str = "BLOCK_OFFSETS";
/// Indexes into `BLOCK_OFFSETS`.
pub const BO_ISSUE_DEV: usize = 0;
pub const BO_ISSUE_SECTOR: usize = 1;
pub const BO_ISSUE_RWBS: usize = 2;
pub const BO_DONE_DEV: usize = 3;
pub const BO_DONE_SECTOR: usize = 4;
pub const BO_N: usize = 5;
/// Histograms `hist block` can hold: (device, operation) pairs.
pub const BLOCK_HIST_MAX: u32 = 1024;

/// [`BlockKey::op`]: a read.
pub const BLOCK_OP_READ: u32 = 0;
/// [`BlockKey::op`]: a write.
pub const BLOCK_OP_WRITE: u32 = 1;
/// [`BlockKey::op`]: anything else (discard, flush, ...).
pub const BLOCK_OP_OTHER: u32 = 2;

/// `hist block`'s key: the device (the kernel's dev_t: major << 20 |
/// minor) and the operation (`BLOCK_OP_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub dev: u32,
    pub op: u32,
    /// The issuing task's cgroup with `HIST_BY_CGROUP`, else 0.
    pub cgroup_id: u64,
}

/// A request in flight: its device and first sector.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockReq {
    pub dev: u32,
    pub _pad: u32,
    pub sector: u64,
}

/// What the issue handler keeps for the completion.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockStart {
    pub ts_ns: u64,
    /// `BLOCK_OP_*`, from the issue's rwbs.
    pub op: u32,
    pub _pad: u32,
    /// As `BlockKey::cgroup_id`, taken at issue.
    pub cgroup_id: u64,
}

/// The operation of a request from its `rwbs` text (blk_fill_rwbs() in
/// kernel/trace/blktrace.c: an optional `F` for a preflush, then `W`,
/// `R`, `D`, `F` or `N`, then flag letters).
#[inline(always)]
pub const fn block_op(rwbs: &[u8; 8]) -> u32 {
    let c = if rwbs[0] == b'F' && matches!(rwbs[1], b'W' | b'R' | b'D' | b'N') {
        rwbs[1]
    } else {
        rwbs[0]
    };
    match c {
        b'R' => BLOCK_OP_READ,
        b'W' => BLOCK_OP_WRITE,
        _ => BLOCK_OP_OTHER,
    }
}

#[cfg(feature = "user")]
mod block_pod {
    // SAFETY: #[repr(C)], two u32s and a u64.
    unsafe impl aya::Pod for super::BlockKey {}
}

#[cfg(test)]
mod block_tests {
    use super::*;

    #[test]
    fn rwbs_names_the_operation() {
        let op = |s: &[u8]| {
            let mut b = [0u8; 8];
            b[..s.len()].copy_from_slice(s);
            block_op(&b)
        };
        assert_eq!(op(b"R"), BLOCK_OP_READ);
        assert_eq!(op(b"RA"), BLOCK_OP_READ);
        assert_eq!(op(b"WS"), BLOCK_OP_WRITE);
        assert_eq!(op(b"FWFS"), BLOCK_OP_WRITE);
        assert_eq!(op(b"FR"), BLOCK_OP_READ);
        assert_eq!(op(b"F"), BLOCK_OP_OTHER);
        assert_eq!(op(b"D"), BLOCK_OP_OTHER);
        assert_eq!(op(b"N"), BLOCK_OP_OTHER);
        assert_eq!(op(b""), BLOCK_OP_OTHER);
    }
}
