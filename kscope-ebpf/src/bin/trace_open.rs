//! `trace_open`: open(2), openat(2) and openat2(2) through the syscalls
//! tracepoints. The enter handler filters, reads the path (at entry: the
//! buffer is the caller's, and another thread may rewrite it while the open
//! blocks, on a FIFO say) and stashes it per thread; the exit handler adds
//! the return value and sends the event, header plus path, as one record of
//! variable size. Field offsets are those of the tracepoints' format files
//! (/sys/kernel/tracing/events/syscalls/sys_{enter,exit}_open*/format),
//! which are fixed by the syscall ABI.
//!
//! In count mode (`COUNT_MODE`) only the exit handlers are attached: they
//! filter, then count the open under the task's comm in `OPEN_COUNTS`, and
//! submit nothing.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_user, generated::bpf_probe_read_user_str,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::TracePointContext,
};
use kscope_common::trace::{
    COMM_LEN, GLOBAL_COUNT_MODE, GLOBAL_FAILED_ONLY, MAP_OPEN_COUNTS, MAP_OPEN_PENDING,
    MAP_OPEN_SCRATCH, MAP_OPEN_UNCOUNTED, OPEN_COUNTS_MAX, OpenCounts, OpenEvent, OpenPending,
    PATH_MAX, PROG_OPEN_ENTER_OPEN, PROG_OPEN_ENTER_OPENAT, PROG_OPEN_ENTER_OPENAT2,
    PROG_OPEN_EXIT_OPEN, PROG_OPEN_EXIT_OPENAT, PROG_OPEN_EXIT_OPENAT2,
};
use kscope_ebpf::{same_name, trace::add_atomic};

kscope_ebpf::tracer_common!(1 << 21);

/// Only failed opens (-x).
#[unsafe(no_mangle)]
static FAILED_ONLY: u32 = 0;

/// Count per comm instead of emitting events (-c).
#[unsafe(no_mangle)]
static COUNT_MODE: u32 = 0;

/// Where the enter handler builds a pending entry: over 4 KiB, far more
/// than the 512-byte stack.
#[map(name = "OPEN_SCRATCH")]
static OPEN_SCRATCH: PerCpuArray<OpenPending> = PerCpuArray::with_max_entries(1, 0);

/// In-flight opens, by thread id: the event so far and its path.
/// Allocated on insert (BPF_F_NO_PREALLOC = 1): each entry is over 4 KiB,
/// and preallocating 16,384 of them would pin 67 MiB for opens that are
/// almost never in flight at once.
#[map(name = "OPEN_PENDING")]
static OPEN_PENDING: HashMap<u32, OpenPending> = HashMap::with_max_entries(16_384, 1);

/// Count mode's totals per comm.
///
/// Per-CPU rather than one shared value: the exit handler then updates
/// memory that no other CPU writes, so a process opening files on every
/// CPU at once (a build, a web server) does not bounce one cache line
/// between them. The updates are still atomic adds, because per-CPU alone
/// does not keep two programs on one CPU from interleaving (see
/// `kscope_ebpf::trace::add_atomic`). The price is memory, bounded and paid
/// at load: `OPEN_COUNTS_MAX` × possible CPUs × 16 bytes (160 KiB per CPU),
/// and user space sums the CPUs when it reads.
#[map(name = "OPEN_COUNTS")]
static OPEN_COUNTS: PerCpuHashMap<[u8; COMM_LEN], OpenCounts> =
    PerCpuHashMap::with_max_entries(OPEN_COUNTS_MAX, 0);

/// Opens count mode found no room for in `OPEN_COUNTS`.
#[map(name = "OPEN_UNCOUNTED")]
static OPEN_UNCOUNTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// The names above are the ones user space looks up.
const _: () = assert!(same_name(MAP_OPEN_SCRATCH, "OPEN_SCRATCH"));
const _: () = assert!(same_name(MAP_OPEN_PENDING, "OPEN_PENDING"));
const _: () = assert!(same_name(MAP_OPEN_COUNTS, "OPEN_COUNTS"));
const _: () = assert!(same_name(MAP_OPEN_UNCOUNTED, "OPEN_UNCOUNTED"));
const _: () = assert!(same_name(GLOBAL_COUNT_MODE, "COUNT_MODE"));
const _: () = assert!(same_name(GLOBAL_FAILED_ONLY, "FAILED_ONLY"));
const _: () = assert!(same_name(PROG_OPEN_ENTER_OPENAT, "trace_open_enter_openat"));
const _: () = assert!(same_name(PROG_OPEN_EXIT_OPENAT, "trace_open_exit_openat"));
const _: () = assert!(same_name(PROG_OPEN_ENTER_OPEN, "trace_open_enter_open"));
const _: () = assert!(same_name(PROG_OPEN_EXIT_OPEN, "trace_open_exit_open"));
const _: () = assert!(same_name(
    PROG_OPEN_ENTER_OPENAT2,
    "trace_open_enter_openat2"
));
const _: () = assert!(same_name(PROG_OPEN_EXIT_OPENAT2, "trace_open_exit_openat2"));

/// `EEXIST` from include/uapi/asm-generic/errno-base.h.
const EEXIST: i32 = 17;

/// Size of the record header; the path follows it.
const HDR: usize = core::mem::size_of::<OpenEvent>();

#[inline(always)]
fn enter(path: u64, flags: u64) -> u32 {
    if !passes_filters() {
        return 0;
    }
    let Some(p) = OPEN_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: `p` is this CPU's scratch slot, used by nothing else until
    // this program returns; the helpers check the user addresses.
    unsafe {
        (*p).ev.flags = flags as u32;
        let n = bpf_probe_read_user_str(
            (*p).path.as_mut_ptr() as *mut c_void,
            PATH_MAX as u32,
            path as *const c_void,
        );
        // n counts the NUL. n = PATH_MAX: the buffer is full, and the path
        // was cut unless its byte PATH_MAX - 1 (where the copy put the NUL)
        // is the end of the string. A failed read leaves an empty path.
        let len = if n > 0 { (n - 1) as u32 } else { 0 };
        (*p).ev.path_len = len & (PATH_MAX as u32 - 1);
        (*p).ev.path_truncated = 0;
        if n as usize == PATH_MAX {
            let next = bpf_probe_read_user((path + PATH_MAX as u64 - 1) as *const u8);
            (*p).ev.path_truncated = u32::from(next != Ok(0));
        }
    }
    // By reference: the value is over 4 KiB, far more than the BPF stack.
    // SAFETY: `p` points at an initialized map value.
    let value: &OpenPending = unsafe { &*p };
    // A full table drops the pairing, not the syscall: the exit handler then
    // finds nothing and emits nothing, which the lost counter records.
    if OPEN_PENDING.insert(tid, value, 0).is_err() {
        count_lost();
    }
    0
}

#[inline(always)]
fn exit(ret: i64) -> u32 {
    if global!(COUNT_MODE) != 0 {
        count(ret);
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(p) = OPEN_PENDING.get_ptr_mut(tid) else {
        return 0;
    };
    if global!(FAILED_ONLY) != 0 && ret >= 0 {
        let _ = OPEN_PENDING.remove(tid);
        return 0;
    }
    let flags = submit_flags();
    // SAFETY: `p` is this thread's live entry; only this thread's enter and
    // exit handlers touch it, and they do not run at once.
    let record = unsafe {
        (*p).ev.ts_ns = bpf_ktime_get_ns();
        (*p).ev.ret = ret;
        (*p).ev.pid = (pid_tgid >> 32) as u32;
        (*p).ev.tid = tid;
        (*p).ev.uid = bpf_get_current_uid_gid() as u32;
        (*p).ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
        // The mask keeps the size provably within the value for the
        // verifier; path_len is below PATH_MAX already.
        let len = HDR + ((*p).ev.path_len as usize & (PATH_MAX - 1));
        core::slice::from_raw_parts(p as *const u8, len)
    };
    // Header and path only: a record costs what its path needs, not 4 KiB.
    if TRACE_EVENTS.output::<[u8]>(record, flags).is_err() {
        count_lost();
    }
    let _ = OPEN_PENDING.remove(tid);
    0
}

/// Count mode: one open that returned `ret`, under the current comm.
#[inline(always)]
fn count(ret: i64) {
    if !passes_filters() {
        return;
    }
    let failed = u64::from(ret < 0);
    if global!(FAILED_ONLY) != 0 && failed == 0 {
        return;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    if add(&comm, failed) {
        return;
    }
    let first = OpenCounts { opens: 1, failed };
    match OPEN_COUNTS.insert(comm, first, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        // Another CPU added this comm since the lookup; its insert zeroed
        // this CPU's slot, which `add` now finds.
        Err(e) if e == -EEXIST && add(&comm, failed) => {}
        // The map is full (E2BIG): counted, not dropped.
        Err(_) => {
            if let Some(n) = OPEN_UNCOUNTED.get_ptr_mut(0) {
                // SAFETY: this CPU's slot of a live element, only updated
                // atomically.
                unsafe { add_atomic(n, 1) };
            }
        }
    }
}

/// Adds one open to `comm`'s slot on this CPU; false if `comm` has none.
#[inline(always)]
fn add(comm: &[u8; COMM_LEN], failed: u64) -> bool {
    let Some(c) = OPEN_COUNTS.get_ptr_mut(comm) else {
        return false;
    };
    // SAFETY: this CPU's slot of a live element (nothing deletes from the
    // map while programs run), only updated atomically (see OPEN_COUNTS).
    unsafe {
        add_atomic(&raw mut (*c).opens, 1);
        if failed != 0 {
            add_atomic(&raw mut (*c).failed, failed);
        }
    }
    true
}

/// Reads the u64 argument at `offset` of a syscalls tracepoint record.
#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: offsets come from the tracepoints' format files; a failed read
    // yields 0, which the exit handler reports as an empty path.
    unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn trace_open_enter_openat(ctx: TracePointContext) -> u32 {
    enter(arg(&ctx, 24), arg(&ctx, 32))
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn trace_open_exit_openat(ctx: TracePointContext) -> u32 {
    exit(arg(&ctx, 16) as i64)
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn trace_open_enter_open(ctx: TracePointContext) -> u32 {
    enter(arg(&ctx, 16), arg(&ctx, 24))
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn trace_open_exit_open(ctx: TracePointContext) -> u32 {
    exit(arg(&ctx, 16) as i64)
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn trace_open_enter_openat2(ctx: TracePointContext) -> u32 {
    // openat2(dfd, filename, struct open_how *how, size): flags is the
    // first u64 of open_how, in user memory.
    let how = arg(&ctx, 32) as *const u64;
    // SAFETY: a checked read of user memory; failure reads as flags 0.
    let flags = unsafe { bpf_probe_read_user(how) }.unwrap_or(0);
    enter(arg(&ctx, 24), flags)
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn trace_open_exit_openat2(ctx: TracePointContext) -> u32 {
    exit(arg(&ctx, 16) as i64)
}

kscope_ebpf::program_boilerplate!();
