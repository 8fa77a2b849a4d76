//! `trace_open`: open(2), openat(2) and openat2(2) through the syscalls
//! tracepoints. The enter handler filters and stashes the arguments per
//! thread; the exit handler pairs them with the return value and emits one
//! `OpenEvent`. Field offsets are those of the tracepoints' format files
//! (/sys/kernel/tracing/events/syscalls/sys_{enter,exit}_open*/format),
//! which are fixed by the syscall ABI.
//!
//! In count mode (`COUNT_MODE`) only the exit handlers are attached: they
//! filter, then count the open under the task's comm in `OPEN_COUNTS`, and
//! submit nothing.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use kscope_common::trace::{
    COMM_LEN, GLOBAL_FAILED_ONLY, MAP_OPEN_PENDING, OpenArgs, OpenEvent, OpenKey,
};
use kscope_ebpf::same_name;

kscope_ebpf::tracer_common!(1 << 21, OpenKey);

/// Only failed opens (-x).
#[unsafe(no_mangle)]
static FAILED_ONLY: u32 = 0;

/// Arguments of in-flight opens, by thread id.
#[map(name = "OPEN_PENDING")]
static OPEN_PENDING: HashMap<u32, OpenArgs> = HashMap::with_max_entries(16_384, 0);

// The names above are the ones user space looks up.
const _: () = assert!(same_name(MAP_OPEN_PENDING, "OPEN_PENDING"));
const _: () = assert!(same_name(GLOBAL_FAILED_ONLY, "FAILED_ONLY"));

#[inline(always)]
fn enter(path: u64, flags: u64) -> u32 {
    if !passes_filters() {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let args = OpenArgs {
        path,
        flags: flags as u32,
        _pad: 0,
    };
    // A full table drops the pairing, not the syscall: the exit handler then
    // finds nothing and emits nothing, which the lost counter records.
    if OPEN_PENDING.insert(tid, args, 0).is_err() {
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
    // SAFETY: the value is copied out before the entry is removed.
    let Some(args) = (unsafe { OPEN_PENDING.get(tid) }).copied() else {
        return 0;
    };
    let _ = OPEN_PENDING.remove(tid);
    if global!(FAILED_ONLY) != 0 && ret >= 0 {
        return 0;
    }
    let flags = submit_flags();
    let Some(mut entry) = TRACE_EVENTS.reserve::<OpenEvent>(0) else {
        count_lost();
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved record of size_of::<OpenEvent>()
    // bytes that only this program writes until it is submitted.
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).ret = ret;
        (*ev).pid = (pid_tgid >> 32) as u32;
        (*ev).tid = tid;
        (*ev).uid = bpf_get_current_uid_gid() as u32;
        (*ev).flags = args.flags;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let path = &mut (*ev).path;
        if bpf_probe_read_user_str_bytes(args.path as *const u8, path).is_err() {
            path[0] = 0;
        }
    }
    entry.submit(flags);
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
