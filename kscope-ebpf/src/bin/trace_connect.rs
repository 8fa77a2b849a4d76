//! `trace_connect`: TCP connects, three ways (user space picks one):
//! - kprobe + kretprobe on tcp_v4_connect and tcp_v6_connect;
//! - fentry + fexit on the same functions;
//! - the sock:inet_sock_set_state tracepoint: SYN_SENT is entered in the
//!   connecting task (pid, comm, destination), and the next transition
//!   carries the source port, which is only bound after SYN_SENT
//!   (tcp_v4_connect() in net/ipv4/tcp_ipv4.c). No return value there.
//!
//! With the tracepoint, a connect that fails before the SYN (ENETUNREACH,
//! EADDRNOTAVAIL, EINVAL…) never enters SYN_SENT; the connect(2) syscall
//! tracepoints report those: the enter handler keeps the destination of a
//! stream socket's connect per thread, SYN_SENT in that thread drops it
//! (the state path reports that connect), and the exit handler reports
//! what is left that failed, with its errno.
//!
//! Struct offsets come from user space (kernel BTF, tracepoint format
//! files) as load-time globals, so one object fits every kernel.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, tracepoint},
    maps::HashMap,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use kscope_common::trace::{
    ConnectEvent, ConnectKey, ConnectStart, GLOBAL_COUNT_BY_TASK, GLOBAL_OFF_SADDR,
    GLOBAL_OFF_SADDR6, GLOBAL_OFF_SPORT, GLOBAL_PORT_FILTER_ON, GLOBAL_SOCK_PATH,
    GLOBAL_TP_OFFSETS, MAP_CONNECT_PENDING, MAP_PORTS, PROG_CONNECT_FENTRY_V4,
    PROG_CONNECT_FENTRY_V6, PROG_CONNECT_FEXIT_V4, PROG_CONNECT_FEXIT_V6, PROG_CONNECT_KPROBE,
    PROG_CONNECT_KRETPROBE, PROG_CONNECT_STATE, PROG_CONNECT_SYS_ENTER, PROG_CONNECT_SYS_EXIT,
    SP_FDT_FD, SP_FILE_PRIVATE, SP_FILES_FDT, SP_N, SP_SOCKET_TYPE, SP_TASK_FILES, TP_DADDR,
    TP_DADDR6, TP_DPORT, TP_FAMILY, TP_N, TP_NEWSTATE, TP_OLDSTATE, TP_PROTOCOL, TP_SADDR,
    TP_SADDR6, TP_SKADDR, TP_SPORT,
};

kscope_ebpf::tracer_common!(1 << 20, ConnectKey);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const TCP_SYN_SENT: i32 = 2;

#[unsafe(no_mangle)]
static PORT_FILTER_ON: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SADDR: u32 = 4;
#[unsafe(no_mangle)]
static OFF_SADDR6: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SPORT: u32 = 14;
#[unsafe(no_mangle)]
static TP_OFFSETS: [u32; TP_N] = [0; TP_N];
#[unsafe(no_mangle)]
static SOCK_PATH: [u32; SP_N] = [0; SP_N];
/// Count mode: key by pid and comm too.
#[unsafe(no_mangle)]
static COUNT_BY_TASK: u32 = 0;

/// SOCK_STREAM, include/linux/net.h (x86 and most architectures).
const SOCK_STREAM: i16 = 1;
/// Errnos of connect(2) that are not a failed attempt to connect: in
/// progress, already connecting or connected, not a socket, a bad fd or
/// address pointer (include/uapi/asm-generic/errno*.h).
const NOT_AN_ATTEMPT: [i64; 6] = [-115, -114, -106, -88, -9, -14];

/// Destination ports to keep (-P).
#[map]
static CONNECT_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

/// In-flight connects: by thread id (probes) or by struct sock (tracepoint).
#[map]
static CONNECT_PENDING: HashMap<u64, ConnectStart> = HashMap::with_max_entries(16_384, 0);

// The names above and below are the ones user space looks up.
kscope_ebpf::assert_symbol_name!(PORT_FILTER_ON, GLOBAL_PORT_FILTER_ON);
kscope_ebpf::assert_symbol_name!(COUNT_BY_TASK, GLOBAL_COUNT_BY_TASK);
kscope_ebpf::assert_symbol_name!(OFF_SADDR, GLOBAL_OFF_SADDR);
kscope_ebpf::assert_symbol_name!(OFF_SADDR6, GLOBAL_OFF_SADDR6);
kscope_ebpf::assert_symbol_name!(OFF_SPORT, GLOBAL_OFF_SPORT);
kscope_ebpf::assert_symbol_name!(TP_OFFSETS, GLOBAL_TP_OFFSETS);
kscope_ebpf::assert_symbol_name!(CONNECT_PORTS, MAP_PORTS);
kscope_ebpf::assert_symbol_name!(CONNECT_PENDING, MAP_CONNECT_PENDING);
kscope_ebpf::assert_symbol_name!(trace_connect_kprobe, PROG_CONNECT_KPROBE);
kscope_ebpf::assert_symbol_name!(trace_connect_kretprobe, PROG_CONNECT_KRETPROBE);
kscope_ebpf::assert_symbol_name!(trace_connect_fentry_v4, PROG_CONNECT_FENTRY_V4);
kscope_ebpf::assert_symbol_name!(trace_connect_fexit_v4, PROG_CONNECT_FEXIT_V4);
kscope_ebpf::assert_symbol_name!(trace_connect_fentry_v6, PROG_CONNECT_FENTRY_V6);
kscope_ebpf::assert_symbol_name!(trace_connect_fexit_v6, PROG_CONNECT_FEXIT_V6);
kscope_ebpf::assert_symbol_name!(trace_connect_state, PROG_CONNECT_STATE);
kscope_ebpf::assert_symbol_name!(trace_connect_sys_enter, PROG_CONNECT_SYS_ENTER);
kscope_ebpf::assert_symbol_name!(trace_connect_sys_exit, PROG_CONNECT_SYS_EXIT);
kscope_ebpf::assert_symbol_name!(SOCK_PATH, GLOBAL_SOCK_PATH);

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn port_wanted(dport: u16) -> bool {
    // SAFETY: a plain lookup; the value is not kept.
    global!(PORT_FILTER_ON) == 0 || unsafe { CONNECT_PORTS.get(dport) }.is_some()
}

#[inline(always)]
fn read<T>(p: *const T) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel(p) }.ok()
}

#[inline(always)]
fn current(ts_ns: u64, sk: u64, family: u16, dport: u16, daddr: [u8; 16]) -> ConnectStart {
    let pid_tgid = bpf_get_current_pid_tgid();
    ConnectStart {
        ts_ns,
        sk,
        cgroup_id: current_cgroup_id(),
        family,
        dport,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: bpf_get_current_uid_gid() as u32,
        daddr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

#[inline(always)]
fn read_user<T>(p: *const T) -> Option<T> {
    // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
    unsafe { bpf_probe_read_user(p) }.ok()
}

/// (family, port, address) of an IPv4 or IPv6 sockaddr at `uaddr`, in
/// kernel memory or, when `user`, in the caller's; None for other families
/// or a failed read.
#[inline(always)]
fn sockaddr(uaddr: u64, user: bool) -> Option<(u16, u16, [u8; 16])> {
    let get16 = |p: u64| {
        if user {
            read_user(p as *const u16)
        } else {
            read(p as *const u16)
        }
    };
    let family = get16(uaddr)?;
    // sin_port / sin6_port: offset 2, network byte order.
    let dport = u16::from_be(get16(uaddr + 2)?);
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        // sin_addr at offset 4.
        let p = (uaddr + 4) as *const [u8; 4];
        let a = if user { read_user(p) } else { read(p) }?;
        daddr[..4].copy_from_slice(&a);
    } else if family == AF_INET6 {
        // sin6_addr at offset 8.
        let p = (uaddr + 8) as *const [u8; 16];
        daddr = if user { read_user(p) } else { read(p) }?;
    } else {
        return None;
    }
    Some((family, dport, daddr))
}

/// Entry of tcp_v{4,6}_connect(sk, uaddr, addr_len): the destination comes
/// from the sockaddr the caller passed (a kernel copy).
#[inline(always)]
fn start(sk: u64, uaddr: u64) -> u32 {
    if !passes_filters() {
        return 0;
    }
    let Some((family, dport, daddr)) = sockaddr(uaddr, false) else {
        return 0;
    };
    if !port_wanted(dport) {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() & 0xffff_ffff;
    let s = current(now_ns(), sk, family, dport, daddr);
    if CONNECT_PENDING.insert(tid, s, 0).is_err() {
        count_lost();
    }
    0
}

#[inline(always)]
fn emit(s: &ConnectStart, ret: i32, has_ret: u32, sport: u16, saddr: [u8; 16]) {
    if count_mode() {
        let by_task = global!(COUNT_BY_TASK) != 0;
        let key = ConnectKey {
            comm: if by_task { s.comm } else { [0; 16] },
            daddr: s.daddr,
            pid: if by_task { s.pid } else { 0 },
            ret,
            has_ret,
            family: s.family,
            dport: s.dport,
        };
        count_event(&key, ret < 0);
        return;
    }
    let flags = submit_flags();
    let Some(mut entry) = TRACE_EVENTS.reserve::<ConnectEvent>(0) else {
        count_lost();
        return;
    };
    let now = now_ns();
    entry.write(ConnectEvent {
        ts_ns: now,
        latency_ns: now.saturating_sub(s.ts_ns),
        cgroup_id: s.cgroup_id,
        pid: s.pid,
        tid: s.tid,
        uid: s.uid,
        ret,
        has_ret,
        family: s.family,
        sport,
        dport: s.dport,
        _pad: 0,
        saddr,
        daddr: s.daddr,
        comm: s.comm,
        _pad2: 0,
    });
    entry.submit(flags);
}

/// Return of tcp_v{4,6}_connect: the source address and port are bound by
/// now (when it succeeded).
#[inline(always)]
fn finish(ret: i32) -> u32 {
    let tid = bpf_get_current_pid_tgid() & 0xffff_ffff;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(s) = (unsafe { CONNECT_PENDING.get(tid) }).copied() else {
        return 0;
    };
    let _ = CONNECT_PENDING.remove(tid);
    let sport = read((s.sk + u64::from(global!(OFF_SPORT))) as *const u16).unwrap_or(0);
    let mut saddr = [0u8; 16];
    if s.family == AF_INET {
        if let Some(a) = read((s.sk + u64::from(global!(OFF_SADDR))) as *const [u8; 4]) {
            saddr[..4].copy_from_slice(&a);
        }
    } else if let Some(a) = read((s.sk + u64::from(global!(OFF_SADDR6))) as *const [u8; 16]) {
        saddr = a;
    }
    emit(&s, ret, 1, sport, saddr);
    0
}

#[kprobe]
pub fn trace_connect_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(sk), Some(uaddr)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    start(sk, uaddr)
}

#[kretprobe]
pub fn trace_connect_kretprobe(ctx: RetProbeContext) -> u32 {
    finish(ctx.ret::<i64>() as i32)
}

#[fentry(function = "tcp_v4_connect")]
pub fn trace_connect_fentry_v4(ctx: FEntryContext) -> u32 {
    start(ctx.arg::<u64>(0), ctx.arg::<u64>(1))
}

#[fexit(function = "tcp_v4_connect")]
pub fn trace_connect_fexit_v4(ctx: FExitContext) -> u32 {
    // fexit sees the arguments, then the return value: (sk, uaddr, addr_len, ret).
    finish(ctx.arg::<i64>(3) as i32)
}

#[fentry(function = "tcp_v6_connect")]
pub fn trace_connect_fentry_v6(ctx: FEntryContext) -> u32 {
    start(ctx.arg::<u64>(0), ctx.arg::<u64>(1))
}

#[fexit(function = "tcp_v6_connect")]
pub fn trace_connect_fexit_v6(ctx: FExitContext) -> u32 {
    finish(ctx.arg::<i64>(3) as i32)
}

#[inline(always)]
fn tp<T>(ctx: &TracePointContext, field: usize) -> Option<T> {
    let offsets = global!(TP_OFFSETS);
    let off = *offsets.get(field)? as usize;
    // SAFETY: the offset comes from the tracepoint's format file.
    unsafe { ctx.read_at::<T>(off) }.ok()
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn trace_connect_state(ctx: TracePointContext) -> u32 {
    if tp::<u16>(&ctx, TP_PROTOCOL) != Some(IPPROTO_TCP) {
        return 0;
    }
    let (Some(sk), Some(old), Some(new)) = (
        tp::<u64>(&ctx, TP_SKADDR),
        tp::<i32>(&ctx, TP_OLDSTATE),
        tp::<i32>(&ctx, TP_NEWSTATE),
    ) else {
        return 0;
    };
    let family = tp::<u16>(&ctx, TP_FAMILY).unwrap_or(0);
    if new == TCP_SYN_SENT {
        // In the connecting task, inside its connect(2): the syscall exit
        // handler must not report this one too.
        let tid = bpf_get_current_pid_tgid() & 0xffff_ffff;
        let _ = CONNECT_PENDING.remove(tid);
        // Who, and where to.
        if !passes_filters() {
            return 0;
        }
        let dport = tp::<u16>(&ctx, TP_DPORT).unwrap_or(0);
        if !port_wanted(dport) {
            return 0;
        }
        let mut daddr = [0u8; 16];
        if family == AF_INET {
            daddr[..4].copy_from_slice(&tp::<[u8; 4]>(&ctx, TP_DADDR).unwrap_or([0; 4]));
        } else {
            daddr = tp::<[u8; 16]>(&ctx, TP_DADDR6).unwrap_or([0; 16]);
        }
        let s = current(now_ns(), sk, family, dport, daddr);
        if CONNECT_PENDING.insert(sk, s, 0).is_err() {
            count_lost();
        }
    } else if old == TCP_SYN_SENT {
        // Leaving SYN_SENT (established, refused, timed out): the source
        // port is bound now.
        // SAFETY: the value is copied out before the entry is removed.
        let Some(s) = (unsafe { CONNECT_PENDING.get(sk) }).copied() else {
            return 0;
        };
        let _ = CONNECT_PENDING.remove(sk);
        let sport = tp::<u16>(&ctx, TP_SPORT).unwrap_or(0);
        let mut saddr = [0u8; 16];
        if family == AF_INET {
            saddr[..4].copy_from_slice(&tp::<[u8; 4]>(&ctx, TP_SADDR).unwrap_or([0; 4]));
        } else {
            saddr = tp::<[u8; 16]>(&ctx, TP_SADDR6).unwrap_or([0; 16]);
        }
        emit(&s, 0, 0, sport, saddr);
    }
    0
}

/// True when `fd` of the current task is a stream socket, following
/// `current->files->fdt->fd[fd]->private_data->type` with the offsets from
/// BTF; false when they are unknown or a read fails.
#[inline(always)]
fn is_stream_socket(fd: u64) -> bool {
    let o = global!(SOCK_PATH);
    if o[SP_TASK_FILES] == 0 {
        return false;
    }
    // SAFETY: bpf_get_current_task has no preconditions; every pointer
    // below is read with bpf_probe_read_kernel, which fails cleanly.
    let task = unsafe { bpf_get_current_task() };
    let at = |base: u64, off: usize| read((base + u64::from(o[off])) as *const u64);
    let ty = (|| {
        let files = at(task, SP_TASK_FILES)?;
        let fdt = at(files, SP_FILES_FDT)?;
        let fds = at(fdt, SP_FDT_FD)?;
        let file = read((fds + 8 * fd) as *const u64)?;
        let sock = at(file, SP_FILE_PRIVATE)?;
        read((sock + u64::from(o[SP_SOCKET_TYPE])) as *const i16)
    })();
    ty == Some(SOCK_STREAM)
}

#[inline(always)]
fn sys_arg(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: offsets from the syscalls tracepoints' format files, fixed by
    // the syscall ABI.
    unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0)
}

/// connect(fd, uservaddr, addrlen): fd at 16, uservaddr at 24.
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn trace_connect_sys_enter(ctx: TracePointContext) -> u32 {
    if !passes_filters() {
        return 0;
    }
    let fd = sys_arg(&ctx, 16);
    if !is_stream_socket(fd) {
        return 0;
    }
    let Some((family, dport, daddr)) = sockaddr(sys_arg(&ctx, 24), true) else {
        return 0;
    };
    if !port_wanted(dport) {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() & 0xffff_ffff;
    let s = current(now_ns(), 0, family, dport, daddr);
    if CONNECT_PENDING.insert(tid, s, 0).is_err() {
        count_lost();
    }
    0
}

/// The connect's return (ret at 16): an entry still here never reached
/// SYN_SENT; report it if the connect failed as an attempt.
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn trace_connect_sys_exit(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() & 0xffff_ffff;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(s) = (unsafe { CONNECT_PENDING.get(tid) }).copied() else {
        return 0;
    };
    let _ = CONNECT_PENDING.remove(tid);
    let ret = sys_arg(&ctx, 16) as i64;
    if ret >= 0 || NOT_AN_ATTEMPT.contains(&ret) {
        return 0;
    }
    emit(&s, ret as i32, 1, 0, [0; 16]);
    0
}

kscope_ebpf::program_boilerplate!();
