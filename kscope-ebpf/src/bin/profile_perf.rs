//! `profile_perf`: the CPU profiler's sampling program, attached to one
//! perf event per CPU (hardware cycles, or the cpu-clock software event).
//!
//! Each sample takes the interrupted task's kernel and user stacks into
//! `PROFILE_STACKS` and counts one in `PROFILE_COUNTS` under (pid, comm,
//! kernel stack id, user stack id). A stack that cannot be taken is not a
//! reason to drop the sample: its key carries `-errno` instead of an id,
//! and the loss is counted per side and reason in `PROFILE_STATS`. Only a
//! full counts map drops a sample, and that is counted too.
//!
//! User stacks of processes user space has loaded unwind tables for (see
//! kscope_common::profile's DWARF section) are walked here instead of by
//! `bpf_get_stackid`, which follows frame pointers only: a sample taken in
//! user mode starts a walk from the interrupted registers and tail-calls
//! `profile_unwind`, which walks up to `FRAMES_PER_CALL` frames a run and
//! tail-calls itself until the outermost frame. Where no table covers an
//! address, it takes a frame-pointer step, so stacks that mix code with
//! and without frame pointers unwind whole.
//!
//! A sample taken in kernel mode (a system call, a page fault, an
//! interrupt's own work) needs the user registers saved on kernel entry.
//! `bpf_task_pt_regs` finds them from 5.15 only; kscope runs on 5.10, so
//! `user_regs_of_kernel_sample` finds them where the kernel puts them: at
//! the top of the task's kernel stack, whose base is `task->stack` (its
//! offset from the kernel's BTF) or else the interrupted kernel `rsp`
//! (see there). Where that fails, the user stack is `bpf_get_stackid`'s,
//! by frame pointer.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomics offer no
// `fetch_add`; the intrinsic lowers to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd: see above")]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{map, perf_event},
    maps::{Array, CgroupArray, HashMap, PerCpuArray, ProgramArray, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext as _},
};
use kscope_common::profile::{
    BSEARCH_STEPS, CFA_END, CFA_NO_INFO, CFA_PLT, CFA_RBP, CFA_RSP, COUNTS_ENTRIES,
    DEFAULT_STACK_ENTRIES, DWARF_STACK_ID_BASE, EEXIST, EFAULT, FRAMES_PER_CALL, GLOBAL_DWARF,
    GLOBAL_FILTER_CGROUP, GLOBAL_FILTER_PIDS, GLOBAL_INCLUDE_IDLE, GLOBAL_STACKS,
    GLOBAL_TASK_STACK_OFF, LostReason, MAP_CGROUP, MAP_COUNTS, MAP_NEW_PIDS, MAP_PIDS, MAP_STACKS,
    MAP_STATS, MAP_UNWIND_PROCS, MAP_UNWIND_PROGS, MAP_UNWIND_ROWS, MAP_UNWIND_STATE, MAP_USTACKS,
    MAX_FRAMES, MAX_MAPPINGS, N_PROFILE_STATS, NEW_PIDS_ENTRIES, PIDS_ENTRIES, PROG_PROFILE_PERF,
    PROG_PROFILE_UNWIND, ProcUnwind, RBP_AT_CFA, RBP_UNCHANGED, SLOT_COUNTS_FULL,
    SLOT_DWARF_FP_STEPS, SLOT_DWARF_STOPPED, SLOT_DWARF_TRUNCATED, SLOT_DWARF_WALKS, SLOT_IDLE,
    SLOT_SAMPLES, STACK_ABSENT, STACKS_KERNEL, STACKS_USER, Side, StackKey, UnwindRow, UnwindState,
    UserStack, lost_slot,
};
use kscope_ebpf::assert_symbol_name;

/// `BPF_F_USER_STACK` from include/uapi/linux/bpf.h.
const BPF_F_USER_STACK: u64 = 1 << 8;

/// Resized by the loader (`--stack-storage`).
#[map]
static PROFILE_STACKS: StackTrace = StackTrace::with_max_entries(DEFAULT_STACK_ENTRIES, 0);

#[map]
static PROFILE_COUNTS: HashMap<StackKey, u64> = HashMap::with_max_entries(COUNTS_ENTRIES, 0);

#[map]
static PROFILE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_PROFILE_STATS, 0);

#[map]
static PROFILE_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(PIDS_ENTRIES, 0);

#[map]
static PROFILE_NEW_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(NEW_PIDS_ENTRIES, 0);

/// `--cgroup`'s directory, in slot 0 (set by user space).
#[map]
static PROFILE_CGROUP: CgroupArray = CgroupArray::with_max_entries(1, 0);

/// Resized by the loader (1 entry under `--no-dwarf`).
#[map]
static PROFILE_UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, 0);

#[map]
static PROFILE_UNWIND_PROCS: HashMap<u32, ProcUnwind> = HashMap::with_max_entries(PIDS_ENTRIES, 0);

#[map]
static PROFILE_UNWIND_STATE: PerCpuArray<UnwindState> = PerCpuArray::with_max_entries(1, 0);

#[map]
static PROFILE_UNWIND_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Resized by the loader (`--stack-storage`; 1 entry under `--no-dwarf`).
#[map]
static PROFILE_USTACKS: HashMap<u32, UserStack> = HashMap::with_max_entries(1, 0);

/// Load-time settings (see kscope_common::profile::GLOBAL_*).
#[unsafe(no_mangle)]
static PROFILE_DWARF: u32 = 0;
#[unsafe(no_mangle)]
static PROFILE_TASK_STACK_OFF: u32 = 0;
#[unsafe(no_mangle)]
static PROFILE_FILTER_PIDS: u32 = 0;
#[unsafe(no_mangle)]
static PROFILE_FILTER_CGROUP: u32 = 0;
#[unsafe(no_mangle)]
static PROFILE_INCLUDE_IDLE: u32 = 0;
#[unsafe(no_mangle)]
static PROFILE_STACKS_WANTED: u32 = STACKS_KERNEL | STACKS_USER;

// The names user space uses (kscope-common) must be the ones in this file:
// a mismatch fails the build instead of the load.
assert_symbol_name!(PROFILE_STACKS, MAP_STACKS);
assert_symbol_name!(PROFILE_COUNTS, MAP_COUNTS);
assert_symbol_name!(PROFILE_STATS, MAP_STATS);
assert_symbol_name!(PROFILE_PIDS, MAP_PIDS);
assert_symbol_name!(PROFILE_NEW_PIDS, MAP_NEW_PIDS);
assert_symbol_name!(PROFILE_FILTER_PIDS, GLOBAL_FILTER_PIDS);
assert_symbol_name!(PROFILE_CGROUP, MAP_CGROUP);
assert_symbol_name!(PROFILE_FILTER_CGROUP, GLOBAL_FILTER_CGROUP);
assert_symbol_name!(PROFILE_INCLUDE_IDLE, GLOBAL_INCLUDE_IDLE);
assert_symbol_name!(PROFILE_STACKS_WANTED, GLOBAL_STACKS);
assert_symbol_name!(profile_perf, PROG_PROFILE_PERF);
assert_symbol_name!(profile_unwind, PROG_PROFILE_UNWIND);
assert_symbol_name!(PROFILE_UNWIND_ROWS, MAP_UNWIND_ROWS);
assert_symbol_name!(PROFILE_UNWIND_PROCS, MAP_UNWIND_PROCS);
assert_symbol_name!(PROFILE_UNWIND_STATE, MAP_UNWIND_STATE);
assert_symbol_name!(PROFILE_UNWIND_PROGS, MAP_UNWIND_PROGS);
assert_symbol_name!(PROFILE_USTACKS, MAP_USTACKS);
assert_symbol_name!(PROFILE_DWARF, GLOBAL_DWARF);
assert_symbol_name!(PROFILE_TASK_STACK_OFF, GLOBAL_TASK_STACK_OFF);

#[inline(always)]
fn setting(global: &'static u32) -> u32 {
    // SAFETY: a read of a load-time constant; volatile so the compiler does
    // not fold the placeholder value in.
    unsafe { core::ptr::read_volatile(global) }
}

/// The program never fails a sample: every outcome is counted.
#[perf_event]
pub fn profile_perf(ctx: PerfEventContext) -> u32 {
    sample(&ctx);
    0
}

#[inline(always)]
fn sample(ctx: &PerfEventContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The pid filter first: with `-p`, other processes' samples, the idle
    // task's included (pid 0 is never in the map), are not this profile's,
    // not even as a count of idle samples left out.
    if setting(&PROFILE_FILTER_PIDS) != 0 && PROFILE_PIDS.get_ptr(tgid).is_none() {
        return;
    }
    // The same for `--cgroup` (the idle task is in the root cgroup only,
    // so a child cgroup leaves it out too). An empty slot passes nothing.
    if setting(&PROFILE_FILTER_CGROUP) != 0
        && PROFILE_CGROUP.current_task_under_cgroup(0) != Ok(true)
    {
        return;
    }
    // Thread id 0 is the per-CPU idle task (swapper/N).
    if pid_tgid as u32 == 0 && setting(&PROFILE_INCLUDE_IDLE) == 0 {
        bump(SLOT_IDLE);
        return;
    }
    bump(SLOT_SAMPLES);

    // SAFETY: perf_event programs may read their context's registers.
    let ip = unsafe { (*ctx.ctx).regs.rip };
    // x86_64 (like arm64) puts the kernel in the upper half of the address
    // space, so a sign bit of 0 means the sample interrupted user mode.
    let user_mode = (ip as i64) >= 0;
    let wanted = setting(&PROFILE_STACKS_WANTED);

    let mut key = StackKey {
        // SAFETY: a helper without arguments (Linux 4.18+).
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: tgid,
        kernel_stack_id: STACK_ABSENT,
        user_stack_id: STACK_ABSENT,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        _pad: 0,
    };
    if wanted & STACKS_KERNEL != 0 {
        key.kernel_stack_id = match ctx.get_stackid(&PROFILE_STACKS, 0) {
            Ok(id) => id as i32,
            // A sample taken in user mode has no kernel stack
            // (get_perf_callchain() in kernel/events/callchain.c).
            Err(e) if e == -EFAULT && user_mode => STACK_ABSENT,
            Err(e) => {
                bump(lost_slot(Side::Kernel, LostReason::from_errno(e)));
                e
            }
        };
    }
    if wanted & STACKS_USER != 0 {
        if setting(&PROFILE_DWARF) != 0
            && PROFILE_UNWIND_PROCS.get_ptr(tgid).is_some()
            && let Some(st) = PROFILE_UNWIND_STATE.get_ptr_mut(0)
        {
            // SAFETY: perf_event programs may read their context's
            // registers.
            let regs = unsafe { &(*ctx.ctx).regs };
            let user = if user_mode {
                Some((regs.rip, regs.rsp, regs.rbp))
            } else {
                user_regs_of_kernel_sample(regs.rsp)
            };
            if let Some((ip, sp, bp)) = user {
                // SAFETY: this CPU's slot (no nesting, see `bump`).
                unsafe {
                    (*st).ip = ip;
                    (*st).sp = sp;
                    (*st).bp = bp;
                    (*st).len = 0;
                    (*st).key = key;
                    PROFILE_UNWIND_PROGS.tail_call(ctx, 0);
                }
            }
            // No user registers, or the tail call failed (no program in
            // the slot): frame pointers, as without tables.
        }
        key.user_stack_id = match ctx.get_stackid(&PROFILE_STACKS, BPF_F_USER_STACK) {
            Ok(id) => id as i32,
            // In kernel mode, an empty user stack is a kernel thread's (it
            // has no user memory); telling it from a failed walk would need
            // task->mm, so it is taken as absent.
            Err(e) if e == -EFAULT && !user_mode => STACK_ABSENT,
            Err(e) => {
                bump(lost_slot(Side::User, LostReason::from_errno(e)));
                e
            }
        };
    }

    count(&key);
}

/// `struct pt_regs` of arch/x86/include/asm/ptrace.h: 21 registers, of
/// which the walk needs rbp (5th) and, from the 17th on, rip, cs,
/// eflags, rsp and ss.
const PT_REGS_SIZE: u64 = 21 * 8;
const PT_REGS_BP: u64 = 4 * 8;
const PT_REGS_IP: u64 = 16 * 8;
/// x86-64's THREAD_SIZE (arch/x86/include/asm/page_64_types.h), without
/// KASAN, which doubles it.
const THREAD_SIZE: u64 = 16 * 1024;
/// `__USER_CS` and `__USER_DS` (arch/x86/include/asm/segment.h): a 64-bit
/// user task's segments as entry code saves them.
const USER_CS: u64 = 0x33;
const USER_DS: u64 = 0x2b;

/// The user registers (rip, rsp, rbp) of the current task, for a sample
/// that interrupted the kernel: the entry code saved them in the pt_regs
/// at the top of the task's kernel stack (task_pt_regs() in
/// arch/x86/include/asm/processor.h), THREAD_SIZE bytes above
/// `task->stack`. Without that member's offset (no kernel BTF), the
/// interrupted kernel `rsp` gives the stack's base, the stack being
/// THREAD_SIZE-aligned (THREAD_ALIGN, kernel/fork.c), unless the sample
/// interrupted an IRQ or exception stack. With FRED (6.9+), 16 bytes of
/// padding (TOP_OF_KERNEL_STACK_PADDING) sit above the pt_regs. The
/// result is checked: the saved segments must be user mode's and rip a
/// user address; a kernel built with KASAN (32 KiB stacks) fails it.
/// `None` and the caller keeps frame pointers.
#[inline(always)]
fn user_regs_of_kernel_sample(kernel_sp: u64) -> Option<(u64, u64, u64)> {
    let off = setting(&PROFILE_TASK_STACK_OFF);
    let base = if off != 0 {
        // SAFETY: the helper has no preconditions; the pointer is only
        // read through bpf_probe_read_kernel.
        let task = unsafe { bpf_get_current_task() };
        // SAFETY: the helper checks the address; a fault is an error.
        unsafe { bpf_probe_read_kernel((task + u64::from(off)) as *const u64) }.ok()?
    } else {
        kernel_sp & !(THREAD_SIZE - 1)
    };
    let top = base.wrapping_add(THREAD_SIZE);
    for padding in [0u64, 16] {
        let regs = top.wrapping_sub(PT_REGS_SIZE + padding);
        // SAFETY: the helper checks the address; a fault is an error.
        let Ok(tail) = (unsafe { bpf_probe_read_kernel((regs + PT_REGS_IP) as *const [u64; 5]) })
        else {
            continue;
        };
        let [ip, cs, _flags, sp, ss] = tail;
        if cs == USER_CS && ss == USER_DS && (ip as i64) > 0 {
            // SAFETY: as above.
            let bp = unsafe { bpf_probe_read_kernel((regs + PT_REGS_BP) as *const u64) }.ok()?;
            return Some((ip, sp, bp));
        }
    }
    None
}

/// Counts one sample under `key`.
#[inline(always)]
fn count(key: &StackKey) {
    let tgid = key.pid;
    if let Some(n) = PROFILE_COUNTS.get_ptr_mut(key) {
        add_one(n);
        return;
    }
    match PROFILE_COUNTS.insert(key, 1, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            // A new key: tell user space this process has new stacks, so it
            // records the process's memory maps while they still exist.
            // Failure (already there, or full) needs no handling.
            let _ = PROFILE_NEW_PIDS.insert(tgid, 0, 0);
        }
        // Another CPU inserted the same key first.
        Err(_) => match PROFILE_COUNTS.get_ptr_mut(key) {
            Some(n) => add_one(n),
            None => bump(SLOT_COUNTS_FULL),
        },
    }
}

/// Walks [`FRAMES_PER_CALL`] frames of the walk `profile_perf` started,
/// then tail-calls itself, or stores the stack and counts the sample when
/// the walk is over.
#[perf_event]
pub fn profile_unwind(ctx: PerfEventContext) -> u32 {
    let Some(st) = PROFILE_UNWIND_STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, filled by profile_perf before the tail
    // call (no nesting on a CPU, see `bump`).
    let st = unsafe { &mut *st };
    if st.len == 0 {
        bump(SLOT_DWARF_WALKS);
    }
    // SAFETY: a map value read; user space replaces entries whole.
    // None: the process's tables went away since profile_perf looked.
    let procs = unsafe { PROFILE_UNWIND_PROCS.get(st.key.pid) };
    // One exit (one copy of `finish` for the verifier to check, not one
    // per frame and outcome): `more` says whether to go on in another run.
    let mut more = procs.is_some();
    if let Some(procs) = procs {
        for _ in 0..FRAMES_PER_CALL {
            match step(st, procs) {
                Step::More => {}
                Step::Done => {
                    more = false;
                    break;
                }
                Step::Stopped => {
                    bump(SLOT_DWARF_STOPPED);
                    more = false;
                    break;
                }
            }
        }
    }
    if more {
        // SAFETY: the slot holds this program; on success this never
        // returns.
        unsafe { PROFILE_UNWIND_PROGS.tail_call(&ctx, 0) };
        // The kernel's tail-call limit (33): keep what was walked.
        bump(SLOT_DWARF_TRUNCATED);
    }
    finish(st);
    0
}

enum Step {
    /// One more frame; the walk goes on.
    More,
    /// The outermost frame, or the frame limit: the walk is over.
    Done,
    /// The walk cannot go on (no rule, a failed read).
    Stopped,
}

/// Where `ip` is: the mapping's load bias and table.
#[inline(always)]
fn find_mapping(procs: &ProcUnwind, ip: u64) -> Option<(u64, u32, u32)> {
    let len = procs.len as usize;
    for i in 0..MAX_MAPPINGS {
        if i >= len {
            return None;
        }
        let m = &procs.maps[i];
        if ip >= m.start && ip < m.end {
            return Some((m.bias, m.table_start, m.table_len));
        }
    }
    None
}

/// The last row at or before `pc` of the table `[start, start + len)`.
#[inline(always)]
fn find_row(start: u32, len: u32, pc: u64) -> Option<UnwindRow> {
    let first = PROFILE_UNWIND_ROWS.get(start)?;
    if first.pc > pc {
        return None;
    }
    // rows[lo].pc <= pc, and rows[hi].pc > pc (hi may be one past the
    // table, whose last row is always an end marker).
    let mut lo = start;
    let mut hi = start.wrapping_add(len);
    for _ in 0..BSEARCH_STEPS {
        if hi.wrapping_sub(lo) <= 1 {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let row = PROFILE_UNWIND_ROWS.get(mid)?;
        if row.pc <= pc {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    PROFILE_UNWIND_ROWS.get(lo).copied()
}

#[inline(always)]
fn read_user(addr: u64) -> Option<u64> {
    // SAFETY: the helper checks the address; a fault is an error.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// Records the frame at `st.ip` and moves to its caller.
#[inline(always)]
fn step(st: &mut UnwindState, procs: &ProcUnwind) -> Step {
    let n = st.len as usize;
    let Some(slot) = st.stack.ips.get_mut(n) else {
        bump(SLOT_DWARF_TRUNCATED);
        return Step::Done;
    };
    let ip = st.ip;
    *slot = ip;
    st.len = n as u32 + 1;
    // Past the leaf, `ip` is a return address: the call is the byte
    // before it (the return address of a call that ends a function, to a
    // noreturn callee, is already the next function's).
    let pc = if n == 0 { ip } else { ip.wrapping_sub(1) };
    let row = match find_mapping(procs, ip) {
        Some((bias, start, len)) if len > 0 => find_row(start, len, pc.wrapping_sub(bias)),
        _ => None,
    };
    let row = row.unwrap_or_default();
    let (cfa, bp) = match row.cfa_kind {
        CFA_NO_INFO => {
            // No table here: the frame pointer's chain, as
            // bpf_get_stackid walks it.
            bump(SLOT_DWARF_FP_STEPS);
            if st.bp == 0 {
                return Step::Stopped;
            }
            let Some(saved) = read_user(st.bp) else {
                return Step::Stopped;
            };
            (st.bp.wrapping_add(16), saved)
        }
        CFA_END => return Step::Done,
        kind => {
            let cfa = match kind {
                CFA_RSP => st.sp.wrapping_add(row.cfa_offset as i64 as u64),
                CFA_RBP => st.bp.wrapping_add(row.cfa_offset as i64 as u64),
                CFA_PLT => {
                    let pushed = if (ip & 15) >= row.cfa_offset as u64 {
                        16
                    } else {
                        8
                    };
                    st.sp.wrapping_add(pushed)
                }
                _ => return Step::Stopped,
            };
            let bp = match row.rbp_kind {
                RBP_UNCHANGED => st.bp,
                RBP_AT_CFA => match read_user(cfa.wrapping_add(row.rbp_offset as i64 as u64)) {
                    Some(bp) => bp,
                    None => return Step::Stopped,
                },
                // Unknown from here on; a later rbp-based rule would
                // read garbage, so 0 makes it fail instead.
                _ => 0,
            };
            (cfa, bp)
        }
    };
    let Some(ra) = read_user(cfa.wrapping_sub(8)) else {
        return Step::Stopped;
    };
    if ra == 0 {
        // glibc's _start and thread starts end the chain with a zero.
        return Step::Done;
    }
    st.ip = ra;
    st.sp = cfa;
    st.bp = bp;
    Step::More
}

/// Stores the walked stack in `PROFILE_USTACKS` and counts the sample.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value would copy 1 KiB onto the 512-byte BPF stack"
)]
fn finish(st: &mut UnwindState) {
    let len = st.len as usize;
    // FNV-1a over the frames, eight bytes at a time.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..MAX_FRAMES {
        if i < len {
            h = (h ^ st.stack.ips[i]).wrapping_mul(0x0000_0100_0000_01b3);
        } else {
            // A stale frame of an earlier, deeper walk.
            st.stack.ips[i] = 0;
        }
    }
    h ^= h >> 29;
    let id = DWARF_STACK_ID_BASE | (h as i32 & 0x3fff_ffff);
    let mut key = st.key;
    key.user_stack_id = id;
    if PROFILE_USTACKS.get_ptr(id as u32).is_none() {
        match PROFILE_USTACKS.insert(id as u32, &st.stack, u64::from(BPF_NOEXIST)) {
            Ok(()) => {
                count(&key);
                return;
            }
            // Another CPU stored it first: the same frames, or a
            // collision (compared below).
            Err(e) if e == -EEXIST => {}
            Err(e) => {
                bump(lost_slot(Side::User, LostReason::from_errno(e)));
                key.user_stack_id = e;
                count(&key);
                return;
            }
        }
    }
    let stored = match PROFILE_USTACKS.get_ptr(id as u32) {
        // SAFETY: a map value; ids are never removed while sampling.
        Some(old) => same(unsafe { &*old }, &st.stack),
        None => false,
    };
    if !stored {
        bump(lost_slot(Side::User, LostReason::Collision));
        key.user_stack_id = -EEXIST;
    }
    count(&key);
}

#[inline(always)]
fn same(a: &UserStack, b: &UserStack) -> bool {
    for i in 0..MAX_FRAMES {
        if a.ips[i] != b.ips[i] {
            return false;
        }
    }
    true
}

#[inline(always)]
fn add_one(n: *mut u64) {
    // SAFETY: `n` points at a live, aligned map value; other CPUs update it
    // too, so the add is atomic.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
}

#[inline(always)]
fn bump(slot: u32) {
    let Some(n) = PROFILE_STATS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: this CPU's slot; perf_event programs do not nest on one CPU
    // (bpf_prog_active in kernel/events/core.c), so the update cannot race.
    unsafe { *n += 1 };
}

kscope_ebpf::program_boilerplate!();
