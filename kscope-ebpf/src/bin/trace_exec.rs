//! `trace_exec`: execve(2) and execveat(2) through the syscalls
//! tracepoints. The enter handler captures the arguments (bounded by
//! `MAX_ARGS` and `ARGS_SIZE`, every cut marked) and the parent's pid into
//! a per-thread entry; the exit handler adds the result and the (new) task
//! name and emits it.
//!
//! A thread other than the leader that execs successfully comes back from
//! it with the leader's thread id (de_thread() in fs/exec.c), so its entry,
//! keyed by the old id, would be missed and left behind:
//! sched:sched_process_exec, which fires in between and carries the old id
//! (`old_pid`), moves the entry to the new one.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::bpf_probe_read_user_str,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::TracePointContext,
};
use kscope_common::trace::{
    ARG_LEN, ARGS_SIZE, ExecEvent, ExecKey, GLOBAL_MAX_ARGS, GLOBAL_OFF_OLD_PID,
    GLOBAL_OFF_REAL_PARENT, GLOBAL_OFF_TGID, MAP_EXEC_PENDING, MAP_EXEC_SCRATCH, MAX_ARGS_LIMIT,
    PROG_EXEC_ENTER_EXECVE, PROG_EXEC_ENTER_EXECVEAT, PROG_EXEC_EXIT_EXECVE,
    PROG_EXEC_EXIT_EXECVEAT, PROG_EXEC_PROCESS_EXEC,
};

kscope_ebpf::tracer_common!(1 << 22, ExecKey);

#[unsafe(no_mangle)]
static MAX_ARGS: u32 = 20;
#[unsafe(no_mangle)]
static OFF_REAL_PARENT: u32 = 0;
#[unsafe(no_mangle)]
static OFF_TGID: u32 = 0;
#[unsafe(no_mangle)]
static OFF_OLD_PID: u32 = 0;

/// Where an event is built: too big for the 512-byte stack.
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// In-flight execs by thread id; allocated on insert (BPF_F_NO_PREALLOC),
/// as each entry is over 4 KiB.
#[map]
static EXEC_PENDING: HashMap<u32, ExecEvent> = HashMap::with_max_entries(1024, 1);

// The names above are the ones user space looks up.
kscope_ebpf::assert_symbol_name!(MAX_ARGS, GLOBAL_MAX_ARGS);
kscope_ebpf::assert_symbol_name!(OFF_REAL_PARENT, GLOBAL_OFF_REAL_PARENT);
kscope_ebpf::assert_symbol_name!(OFF_TGID, GLOBAL_OFF_TGID);
kscope_ebpf::assert_symbol_name!(OFF_OLD_PID, GLOBAL_OFF_OLD_PID);
kscope_ebpf::assert_symbol_name!(EXEC_SCRATCH, MAP_EXEC_SCRATCH);
kscope_ebpf::assert_symbol_name!(EXEC_PENDING, MAP_EXEC_PENDING);
kscope_ebpf::assert_symbol_name!(trace_exec_enter_execve, PROG_EXEC_ENTER_EXECVE);
kscope_ebpf::assert_symbol_name!(trace_exec_exit_execve, PROG_EXEC_EXIT_EXECVE);
kscope_ebpf::assert_symbol_name!(trace_exec_enter_execveat, PROG_EXEC_ENTER_EXECVEAT);
kscope_ebpf::assert_symbol_name!(trace_exec_exit_execveat, PROG_EXEC_EXIT_EXECVEAT);
kscope_ebpf::assert_symbol_name!(trace_exec_process_exec, PROG_EXEC_PROCESS_EXEC);

#[inline(always)]
fn ppid() -> u32 {
    let (parent_off, tgid_off) = (global!(OFF_REAL_PARENT), global!(OFF_TGID));
    if parent_off == 0 || tgid_off == 0 {
        return 0;
    }
    // SAFETY: bpf_get_current_task has no preconditions; the reads below are
    // checked by bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: as above.
    let Ok(parent) =
        (unsafe { bpf_probe_read_kernel((task + u64::from(parent_off)) as *const u64) })
    else {
        return 0;
    };
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((parent + u64::from(tgid_off)) as *const u32) }.unwrap_or(0)
}

#[inline(always)]
fn enter(argv: u64) -> u32 {
    if !passes_filters() {
        return 0;
    }
    let Some(e) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let max_args = global!(MAX_ARGS);
    // SAFETY: `e` is this CPU's scratch slot, used by nothing else until
    // this program returns.
    unsafe {
        (*e).ts_ns = bpf_ktime_get_ns();
        (*e).pid = (pid_tgid >> 32) as u32;
        (*e).ppid = ppid();
        (*e).uid = bpf_get_current_uid_gid() as u32;
        (*e).cgroup_id = current_cgroup_id();
        (*e).ret = 0;
        (*e).argc = 0;
        (*e).args_len = 0;
        (*e).truncated = 0;
        (*e).cut_args = 0;
        let mut off: usize = 0;
        let mut i: u32 = 0;
        // One pointer past the most that can be kept, to tell whether more
        // arguments follow. Cuts are recorded in the map value, not in a
        // register, so the verifier's states stay comparable across
        // iterations.
        // Count mode keeps no arguments.
        while i <= MAX_ARGS_LIMIT && !count_mode() {
            let Ok(arg) = bpf_probe_read_user((argv + 8 * u64::from(i)) as *const u64) else {
                break;
            };
            if arg == 0 {
                break;
            }
            if i >= max_args || off >= ARGS_SIZE {
                (*e).truncated = 1;
                break;
            }
            // Masking keeps the offset provably inside args[..ARGS_SIZE],
            // and args has ARG_LEN bytes of slack past that.
            let dst = (*e).args.as_mut_ptr().add(off & (ARGS_SIZE - 1));
            let n =
                bpf_probe_read_user_str(dst as *mut c_void, ARG_LEN as u32, arg as *const c_void);
            if n <= 0 {
                // Unreadable: it and what follows are left out.
                (*e).truncated = 1;
                break;
            }
            let n = n as usize;
            // n counts the NUL. A full buffer is a cut argument unless its
            // byte ARG_LEN - 1 (where the copy put the NUL) ends the string.
            if n == ARG_LEN {
                let next = bpf_probe_read_user((arg + ARG_LEN as u64 - 1) as *const u8);
                if next != Ok(0) {
                    (*e).cut_args |= 1u64.wrapping_shl(i);
                }
            }
            if off + n > ARGS_SIZE {
                // It runs past ARGS_SIZE: kept up to there only.
                (*e).cut_args |= 1u64.wrapping_shl(i);
                off = ARGS_SIZE;
            } else {
                off += n;
            }
            i += 1;
        }
        (*e).argc = i;
        (*e).args_len = off.min(ARGS_SIZE) as u32;
    }
    let tid = pid_tgid as u32;
    // By reference: the value is over 4 KiB, far more than the BPF stack.
    // SAFETY: `e` points at an initialized map value.
    let value: &ExecEvent = unsafe { &*e };
    if EXEC_PENDING.insert(tid, value, 0).is_err() {
        count_lost();
    }
    0
}

#[inline(always)]
fn exit(ret: i64) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(p) = EXEC_PENDING.get_ptr_mut(tid) else {
        return 0;
    };
    if count_mode() {
        let key = ExecKey {
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
            ret: ret as i32,
            _pad: 0,
        };
        count_event(&key, ret < 0);
        let _ = EXEC_PENDING.remove(tid);
        return 0;
    }
    let flags = submit_flags();
    // SAFETY: `p` is this thread's live entry; only this thread's handlers
    // touch it, one at a time.
    let ev: &ExecEvent = unsafe {
        (*p).ret = ret as i32;
        (*p).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        &*p
    };
    // Straight from the map value: the helper copies it, so no kernel read
    // can fail half-way and send a zeroed event. A full ring buffer is
    // counted.
    if TRACE_EVENTS.output::<ExecEvent>(ev, flags).is_err() {
        count_lost();
    }
    let _ = EXEC_PENDING.remove(tid);
    0
}

#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: offsets from the syscalls tracepoints' format files.
    unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn trace_exec_enter_execve(ctx: TracePointContext) -> u32 {
    // execve(filename, argv, envp): argv at 24.
    enter(arg(&ctx, 24))
}

#[tracepoint(category = "syscalls", name = "sys_exit_execve")]
pub fn trace_exec_exit_execve(ctx: TracePointContext) -> u32 {
    exit(arg(&ctx, 16) as i64)
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn trace_exec_enter_execveat(ctx: TracePointContext) -> u32 {
    // execveat(fd, filename, argv, envp, flags): argv at 32.
    enter(arg(&ctx, 32))
}

#[tracepoint(category = "syscalls", name = "sys_exit_execveat")]
pub fn trace_exec_exit_execveat(ctx: TracePointContext) -> u32 {
    exit(arg(&ctx, 16) as i64)
}

/// After a successful exec, before the syscall returns: when the thread id
/// changed (a non-leader thread exec'd and took the leader's id), move the
/// pending entry to the new id.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn trace_exec_process_exec(ctx: TracePointContext) -> u32 {
    let off = global!(OFF_OLD_PID);
    if off == 0 {
        return 0;
    }
    // SAFETY: the offset comes from the tracepoint's format file.
    let Ok(old) = (unsafe { ctx.read_at::<u32>(off as usize) }) else {
        return 0;
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    if old == tid {
        return 0;
    }
    let Some(p) = EXEC_PENDING.get_ptr(old) else {
        return 0;
    };
    // SAFETY: a live map value; the update copies it before the old entry
    // is removed.
    let value: &ExecEvent = unsafe { &*p };
    if EXEC_PENDING.insert(tid, value, 0).is_err() {
        count_lost();
    }
    let _ = EXEC_PENDING.remove(old);
    0
}

kscope_ebpf::program_boilerplate!();
