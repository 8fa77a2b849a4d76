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
//! filter, then count the open under the task's comm in `TRACE_COUNTS`
//! (`tracer_common!`), and submit nothing.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_user, generated::bpf_probe_read_user_str,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::TracePointContext,
};
use kscope_common::trace::{
    COMM_LEN, GLOBAL_FAILED_ONLY, MAP_OPEN_PENDING, MAP_OPEN_SCRATCH, OpenEvent, OpenKey,
    OpenPending, PATH_MAX, PROG_OPEN_ENTER_OPEN, PROG_OPEN_ENTER_OPENAT, PROG_OPEN_ENTER_OPENAT2,
    PROG_OPEN_EXIT_OPEN, PROG_OPEN_EXIT_OPENAT, PROG_OPEN_EXIT_OPENAT2,
};

kscope_ebpf::tracer_common!(1 << 21, OpenKey);

/// Only failed opens (-x).
#[unsafe(no_mangle)]
static FAILED_ONLY: u32 = 0;

/// Where the enter handler builds a pending entry: over 4 KiB, far more
/// than the 512-byte stack.
#[map]
static OPEN_SCRATCH: PerCpuArray<OpenPending> = PerCpuArray::with_max_entries(1, 0);

/// In-flight opens, by thread id: the event so far and its path.
/// Allocated on insert (BPF_F_NO_PREALLOC = 1): each entry is over 4 KiB,
/// and preallocating 16,384 of them would pin 67 MiB for opens that are
/// almost never in flight at once.
#[map]
static OPEN_PENDING: HashMap<u32, OpenPending> = HashMap::with_max_entries(16_384, 1);

// The names above are the ones user space looks up.
kscope_ebpf::assert_symbol_name!(OPEN_SCRATCH, MAP_OPEN_SCRATCH);
kscope_ebpf::assert_symbol_name!(OPEN_PENDING, MAP_OPEN_PENDING);
kscope_ebpf::assert_symbol_name!(FAILED_ONLY, GLOBAL_FAILED_ONLY);
kscope_ebpf::assert_symbol_name!(trace_open_enter_openat, PROG_OPEN_ENTER_OPENAT);
kscope_ebpf::assert_symbol_name!(trace_open_exit_openat, PROG_OPEN_EXIT_OPENAT);
kscope_ebpf::assert_symbol_name!(trace_open_enter_open, PROG_OPEN_ENTER_OPEN);
kscope_ebpf::assert_symbol_name!(trace_open_exit_open, PROG_OPEN_EXIT_OPEN);
kscope_ebpf::assert_symbol_name!(trace_open_enter_openat2, PROG_OPEN_ENTER_OPENAT2);
kscope_ebpf::assert_symbol_name!(trace_open_exit_openat2, PROG_OPEN_EXIT_OPENAT2);

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
    if count_mode() {
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
        (*p).ev.cgroup_id = current_cgroup_id();
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
    if global!(FAILED_ONLY) != 0 && ret >= 0 {
        return;
    }
    let key = OpenKey {
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    count_event(&key, ret < 0);
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
