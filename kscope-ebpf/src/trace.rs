//! What every tracer shares: the ring buffer, the lost-event counter, the
//! in-kernel filters (load-time globals), the wakeup policy, and count mode
//! (`-c`): totals per key in a per-CPU hash instead of events.
//!
//! [`tracer_common!`] defines these in each tracer binary, so every kernel
//! object carries its own maps and globals and none carries another's.

use kscope_common::trace::Hist;

/// Adds `n` to the `u64` at `p` with one atomic instruction (BPF_ATOMIC
/// add, `lock xadd` on x86), so an update cannot be lost when two programs
/// touch the same per-CPU slot on one CPU.
///
/// Why per-CPU memory alone is not enough: a program is not always
/// guaranteed to run to completion before another one runs on its CPU.
/// - fentry/fexit programs run between `__bpf_prog_enter*()` and
///   `__bpf_prog_exit*()` (kernel/bpf/trampoline.c), which take
///   `rcu_read_lock()` and `migrate_disable()` but leave preemption on
///   (5.10, 6.1, 6.12 alike). On a preemptible kernel a task can be
///   preempted in the middle of a read-modify-write, and another task on
///   the same CPU can run another program on the same slot; the per-program
///   recursion guard (`prog->active`, 5.11+) only keeps the *same* program
///   from nesting. trace_connect's fentry, fexit and tracepoint programs
///   share `TRACE_LOST`.
/// - Syscall tracepoint programs run from `perf_syscall_enter()` /
///   `perf_syscall_exit()` (kernel/trace/trace_syscalls.c) through
///   `trace_call_bpf()` (kernel/trace/bpf_trace.c), with preemption
///   disabled by the tracepoint itself up to 6.12 (`__DO_TRACE()` in
///   include/linux/tracepoint.h) and explicitly since syscall tracepoints
///   became faultable (`guard(preempt_notrace)()` in perf_syscall_enter,
///   6.13+). That holds today, but it is a property of each kernel's
///   call path, not of the program type, and `bpf_prog_run_array()` itself
///   only promises `migrate_disable()` (include/linux/bpf.h).
///
/// An uncontended atomic add on a cache line no other CPU writes costs a
/// few cycles more than a plain one; correctness on every path is worth it.
///
/// # Safety
/// `p` points at a live, 8-aligned `u64` (in a map value from a lookup)
/// that is only ever accessed atomically while programs run.
#[inline(always)]
pub unsafe fn add_atomic(p: *mut u64, n: u64) {
    // The result is unused, which lets LLVM emit the plain BPF atomic add
    // that every kernel of the matrix accepts (no BPF_FETCH, which is 5.12+).
    #[cfg(target_arch = "bpf")]
    // SAFETY: the caller's promise.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, n,
        );
    }
    // The host build (kscope's build script links this library) never runs
    // kernel code; the same operation, for completeness.
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller's promise; AtomicU64 has the layout of u64.
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(p)
            .fetch_add(n, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Returns true when `pat[..len]` occurs in `comm` (both NUL-padded).
/// Bounded loops only: at most 16 × 16 byte comparisons.
#[inline(always)]
pub fn comm_contains(comm: &[u8; 16], pat: &[u8; 16], len: usize) -> bool {
    if len == 0 {
        return true;
    }
    if len > 16 {
        return false;
    }
    let mut start = 0;
    while start + len <= 16 {
        let mut j = 0;
        let mut ok = true;
        while j < len && j < 16 {
            let Some(&c) = comm.get(start + j) else {
                return false;
            };
            if c != pat[j] {
                ok = false;
                break;
            }
            j += 1;
        }
        if ok {
            return true;
        }
        start += 1;
    }
    false
}

/// The two kinds of hash a histogram lives in: this CPU's copy in a
/// per-CPU hash (`TRACE_HIST`), or the one copy in a shared hash
/// (`TRACE_HIST_SPARE`).
pub trait HistTable<K> {
    /// The value of `key` (this CPU's, for a per-CPU hash).
    fn get_ptr_mut(&self, key: &K) -> Option<*mut Hist>;
    /// Adds `key` with `value`, with update `flags`.
    ///
    /// # Errors
    /// The kernel's error, negative.
    fn insert(&self, key: &K, value: &Hist, flags: u64) -> Result<(), i32>;
}

impl<K> HistTable<K> for aya_ebpf::maps::PerCpuHashMap<K, Hist> {
    #[inline(always)]
    fn get_ptr_mut(&self, key: &K) -> Option<*mut Hist> {
        aya_ebpf::maps::PerCpuHashMap::get_ptr_mut(self, key)
    }
    #[inline(always)]
    fn insert(&self, key: &K, value: &Hist, flags: u64) -> Result<(), i32> {
        aya_ebpf::maps::PerCpuHashMap::insert(self, key, value, flags)
    }
}

impl<K> HistTable<K> for aya_ebpf::maps::HashMap<K, Hist> {
    #[inline(always)]
    fn get_ptr_mut(&self, key: &K) -> Option<*mut Hist> {
        aya_ebpf::maps::HashMap::get_ptr_mut(self, key)
    }
    #[inline(always)]
    fn insert(&self, key: &K, value: &Hist, flags: u64) -> Result<(), i32> {
        aya_ebpf::maps::HashMap::insert(self, key, value, flags)
    }
}

/// Adds a latency of `ns` nanoseconds to the histogram at `h`.
///
/// # Safety
/// `h` is a live map element (nothing deletes from the histogram tables
/// while programs run) that is only updated atomically: the programs of
/// one object may run nested or preempted on one CPU (`add_atomic` says
/// when), and the spare table is shared by the CPUs.
#[inline(always)]
pub unsafe fn hist_bump(h: *mut Hist, ns: u64) {
    // The mask keeps the index provably in bounds for the verifier;
    // hist_slot is below 64 already.
    let slot = kscope_common::trace::hist_slot(ns) & (kscope_common::trace::HIST_SLOTS - 1);
    // SAFETY: the caller's promise.
    unsafe {
        add_atomic(&raw mut (*h).slots[slot], 1);
        add_atomic(&raw mut (*h).count, 1);
        add_atomic(&raw mut (*h).sum_ns, ns);
    }
}

/// Defines, in a tracer binary, the ring buffer `TRACE_EVENTS`, the
/// `TRACE_LOST` counter, the filter globals, count mode's `TRACE_COUNTS`
/// (keyed by `$key`), `TRACE_UNCOUNTED` and `COUNT_MODE`, and:
/// - `passes_filters() -> bool`: this task passes pid, tid, uid, comm and
///   cgroup (`TRACE_CGROUP`, `FILTER_CGROUP_ON`);
/// - `current_cgroup_id() -> u64`: the task's cgroup v2 id;
/// - `submit_flags() -> u64`: wakeup flag for the record about to be
///   submitted (wake the consumer only once `WAKEUP_BYTES` are waiting);
/// - `count_lost()`: the ring buffer was full;
/// - `count_mode() -> bool`: count instead of submitting events;
/// - `count_event(&key, failed)`: count one event in count mode.
///
/// With `hist(MAX, FLAGS)`, also histogram mode's `TRACE_HIST` (per-CPU
/// hash of up to `MAX` keys, created with map flags `FLAGS`) and
/// `TRACE_HIST_ZERO`, and:
/// - `hist_add(&key, ns)`: adds one latency to `key`'s histogram, counting
///   it in `TRACE_UNCOUNTED` when the table is full.
#[macro_export]
macro_rules! tracer_common {
    ($ring_bytes:expr, $key:ty, hist($hist_max:expr, $hist_flags:expr)) => {
        $crate::tracer_common!($ring_bytes, $key);

        /// Histogram mode's latencies per key, one log2 histogram each.
        /// Per-CPU for the reason `TRACE_COUNTS` is; user space sums the
        /// CPUs when it reads.
        #[aya_ebpf::macros::map]
        static TRACE_HIST: aya_ebpf::maps::PerCpuHashMap<$key, kscope_common::trace::Hist> =
            aya_ebpf::maps::PerCpuHashMap::with_max_entries($hist_max, $hist_flags);

        #[unsafe(no_mangle)]
        static HIST_BY_CGROUP: u32 = 0;

        /// The cgroup id for a histogram key: the task's with
        /// `HIST_BY_CGROUP`, else 0.
        #[inline(always)]
        fn hist_cgroup() -> u64 {
            if global!(HIST_BY_CGROUP) != 0 {
                current_cgroup_id()
            } else {
                0
            }
        }

        /// A zeroed histogram, never written: where a new key starts.
        #[aya_ebpf::macros::map]
        static TRACE_HIST_ZERO: aya_ebpf::maps::Array<kscope_common::trace::Hist> =
            aya_ebpf::maps::Array::with_max_entries(1, 0);

        /// Where a latency goes whose key `TRACE_HIST` could not take
        /// (see kscope_common::trace::MAP_HIST_SPARE): preallocated, so an
        /// insert never allocates; shared by the CPUs, whose adds are
        /// atomic. As many keys as `TRACE_HIST` (user space shrinks it
        /// where fewer can exist).
        #[aya_ebpf::macros::map]
        static TRACE_HIST_SPARE: aya_ebpf::maps::HashMap<$key, kscope_common::trace::Hist> =
            aya_ebpf::maps::HashMap::with_max_entries($hist_max, 0);

        /// Adds a latency of `ns` nanoseconds to `key`'s histogram: this
        /// CPU's in `TRACE_HIST`, or the spare table's where the key is
        /// there already; a new key goes to `TRACE_HIST`, else to the spare
        /// table; else the latency is counted in `TRACE_UNCOUNTED`.
        #[inline(always)]
        fn hist_add(key: &$key, ns: u64) {
            if let Some(h) = TRACE_HIST.get_ptr_mut(key) {
                // SAFETY: a live element (see hist_bump).
                unsafe { $crate::trace::hist_bump(h, ns) };
                return;
            }
            // A key the spare table took stays there: looked up before an
            // insert into TRACE_HIST is tried again (and fails again, or
            // splits the key's counts between the tables, which user space
            // would add up, but at the price of a failed allocation).
            if let Some(h) = TRACE_HIST_SPARE.get_ptr_mut(key) {
                // SAFETY: as above.
                unsafe { $crate::trace::hist_bump(h, ns) };
                return;
            }
            if hist_insert(&TRACE_HIST, key, ns) || hist_insert(&TRACE_HIST_SPARE, key, ns) {
                return;
            }
            if let Some(n) = TRACE_UNCOUNTED.get_ptr_mut(0) {
                // SAFETY: this CPU's slot of a live array element, only
                // updated atomically (see count_lost).
                unsafe { $crate::trace::add_atomic(n, 1) };
            }
        }

        /// Adds `key` to `map` (either kind of hash) and `ns` to its
        /// histogram; false if the key could not be added (the table is
        /// full, or the kernel had no memory ready).
        #[inline(always)]
        fn hist_insert<M: $crate::trace::HistTable<$key>>(map: &M, key: &$key, ns: u64) -> bool {
            /// `EEXIST` from include/uapi/asm-generic/errno-base.h.
            const EEXIST: i32 = 17;
            let Some(zero) = TRACE_HIST_ZERO.get(0) else {
                return false;
            };
            match map.insert(key, zero, u64::from(aya_ebpf::bindings::BPF_NOEXIST)) {
                // Another CPU may have added it since the lookup: either
                // way the key is there now.
                Ok(()) => {}
                Err(e) if e == -EEXIST => {}
                Err(_) => return false,
            }
            let Some(h) = map.get_ptr_mut(key) else {
                return false;
            };
            // SAFETY: a live element (see hist_bump).
            unsafe { $crate::trace::hist_bump(h, ns) };
            true
        }

        $crate::assert_symbol_name!(TRACE_HIST, kscope_common::trace::MAP_HIST);
        $crate::assert_symbol_name!(TRACE_HIST_ZERO, kscope_common::trace::MAP_HIST_ZERO);
        $crate::assert_symbol_name!(TRACE_HIST_SPARE, kscope_common::trace::MAP_HIST_SPARE);
        $crate::assert_symbol_name!(HIST_BY_CGROUP, kscope_common::trace::GLOBAL_HIST_BY_CGROUP);
    };
    ($ring_bytes:expr, $key:ty) => {
        #[aya_ebpf::macros::map]
        static TRACE_EVENTS: aya_ebpf::maps::RingBuf =
            aya_ebpf::maps::RingBuf::with_byte_size($ring_bytes, 0);

        #[aya_ebpf::macros::map]
        static TRACE_LOST: aya_ebpf::maps::PerCpuArray<u64> =
            aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

        #[unsafe(no_mangle)]
        static FILTER_PID: u32 = 0;
        #[unsafe(no_mangle)]
        static FILTER_TID: u32 = 0;
        #[unsafe(no_mangle)]
        static FILTER_UID: u32 = 0;
        #[unsafe(no_mangle)]
        static FILTER_UID_ON: u32 = 0;
        #[unsafe(no_mangle)]
        static FILTER_COMM: [u8; 16] = [0; 16];
        #[unsafe(no_mangle)]
        static FILTER_COMM_LEN: u32 = 0;
        #[unsafe(no_mangle)]
        static FILTER_CGROUP_ON: u32 = 0;
        #[unsafe(no_mangle)]
        static WAKEUP_BYTES: u64 = 0;

        /// `--cgroup`'s directory, in slot 0 (set by user space).
        #[aya_ebpf::macros::map]
        static TRACE_CGROUP: aya_ebpf::maps::CgroupArray =
            aya_ebpf::maps::CgroupArray::with_max_entries(1, 0);
        #[unsafe(no_mangle)]
        static COUNT_MODE: u32 = 0;

        /// Count mode's totals per key.
        ///
        /// Per-CPU rather than one shared value: a process generating
        /// events on every CPU at once does not bounce one cache line
        /// between them. The price is memory, bounded and paid at load:
        /// `COUNTS_MAX` x possible CPUs x 16 bytes; user space shrinks the
        /// map to one entry outside count mode, and sums the CPUs when it
        /// reads.
        #[aya_ebpf::macros::map]
        static TRACE_COUNTS: aya_ebpf::maps::PerCpuHashMap<$key, kscope_common::trace::Counts> =
            aya_ebpf::maps::PerCpuHashMap::with_max_entries(kscope_common::trace::COUNTS_MAX, 0);

        /// Events count mode found no room for in `TRACE_COUNTS`.
        #[aya_ebpf::macros::map]
        static TRACE_UNCOUNTED: aya_ebpf::maps::PerCpuArray<u64> =
            aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

        /// Reads a load-time global. Volatile, so the compiler cannot fold
        /// the placeholder value in; the verifier then prunes the branches
        /// the real value rules out.
        macro_rules! global {
            ($g:ident) => {
                // SAFETY: a plain read of an initialized static.
                unsafe { core::ptr::read_volatile(&$g) }
            };
        }

        #[unsafe(no_mangle)]
        static FILTER_CGROUP_CACHE_ON: u32 = 0;
        /// This CPU's last cgroup verdict (kscope_common::trace::cgroup_seen).
        #[aya_ebpf::macros::map]
        static TRACE_CGROUP_SEEN: aya_ebpf::maps::PerCpuArray<u64> =
            aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);
        /// The generation of tasks' cgroups (kscope_common::trace::MAP_CGROUP_GEN).
        #[aya_ebpf::macros::map]
        static TRACE_CGROUP_GEN: aya_ebpf::maps::Array<u64> =
            aya_ebpf::maps::Array::with_max_entries(1, 0);

        /// A task changed cgroups: no verdict cached before is reused.
        #[aya_ebpf::macros::tracepoint(category = "cgroup", name = "cgroup_attach_task")]
        pub fn trace_cgroup_moved(_ctx: aya_ebpf::programs::TracePointContext) -> u32 {
            cgroup_gen_bump();
            0
        }

        /// A thread exits, and its id may be reused: no verdict cached
        /// before is reused.
        #[aya_ebpf::macros::tracepoint(category = "sched", name = "sched_process_exit")]
        pub fn trace_task_exited(_ctx: aya_ebpf::programs::TracePointContext) -> u32 {
            cgroup_gen_bump();
            0
        }

        #[inline(always)]
        fn cgroup_gen_bump() {
            if let Some(g) = TRACE_CGROUP_GEN.get_ptr_mut(0) {
                // SAFETY: a live array element, only updated atomically.
                unsafe { $crate::trace::add_atomic(g, 1) };
            }
        }

        /// Whether the current task (thread `tid`) is under `--cgroup`'s
        /// directory. The helper's walk costs some 8 ns; with the cache on,
        /// the verdict of the last thread seen on this CPU is reused for
        /// its next event unless any task changed cgroups or exited since
        /// it was computed. The generation is read first (x86-64 keeps
        /// loads in order; a weaker architecture would need an acquire
        /// here): a move that lands while the verdict is computed makes it
        /// older, never newer.
        #[inline(always)]
        fn in_cgroup(tid: u32) -> bool {
            if global!(FILTER_CGROUP_CACHE_ON) == 0 {
                return TRACE_CGROUP.current_task_under_cgroup(0) == Ok(true);
            }
            let (Some(g), Some(seen)) = (
                TRACE_CGROUP_GEN.get_ptr(0),
                TRACE_CGROUP_SEEN.get_ptr_mut(0),
            ) else {
                return TRACE_CGROUP.current_task_under_cgroup(0) == Ok(true);
            };
            // SAFETY: live array elements, read and written whole.
            let generation = unsafe { core::ptr::read_volatile(g) };
            let word = unsafe { core::ptr::read_volatile(seen) };
            if word & !1 == kscope_common::trace::cgroup_seen(tid, generation, false) {
                return word & 1 != 0;
            }
            let pass = TRACE_CGROUP.current_task_under_cgroup(0) == Ok(true);
            // SAFETY: as above.
            unsafe {
                core::ptr::write_volatile(
                    seen,
                    kscope_common::trace::cgroup_seen(tid, generation, pass),
                )
            };
            pass
        }

        #[inline(always)]
        fn passes_filters() -> bool {
            let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
            let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
            let want_pid = global!(FILTER_PID);
            if want_pid != 0 && pid != want_pid {
                return false;
            }
            let want_tid = global!(FILTER_TID);
            if want_tid != 0 && tid != want_tid {
                return false;
            }
            if global!(FILTER_UID_ON) != 0
                && aya_ebpf::helpers::bpf_get_current_uid_gid() as u32 != global!(FILTER_UID)
            {
                return false;
            }
            let len = global!(FILTER_COMM_LEN) as usize;
            if len != 0 {
                let Ok(comm) = aya_ebpf::helpers::bpf_get_current_comm() else {
                    return false;
                };
                let pat = global!(FILTER_COMM);
                if !$crate::trace::comm_contains(&comm, &pat, len) {
                    return false;
                }
            }
            // Last: the costliest check, and the rarest filter. An empty
            // slot (an error) passes nothing.
            if global!(FILTER_CGROUP_ON) != 0 && !in_cgroup(tid) {
                return false;
            }
            true
        }

        /// The current task's cgroup v2 id (Linux 4.18+).
        #[inline(always)]
        fn current_cgroup_id() -> u64 {
            // SAFETY: the helper has no preconditions.
            unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() }
        }

        #[inline(always)]
        fn submit_flags() -> u64 {
            let waiting = TRACE_EVENTS.query(aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64);
            if waiting >= global!(WAKEUP_BYTES) {
                aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64
            } else {
                aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64
            }
        }

        #[inline(always)]
        fn count_mode() -> bool {
            global!(COUNT_MODE) != 0
        }

        /// Count mode: one event under `key`; `failed` when its call
        /// returned an error.
        #[inline(always)]
        fn count_event(key: &$key, failed: bool) {
            /// `EEXIST` from include/uapi/asm-generic/errno-base.h.
            const EEXIST: i32 = 17;
            let failed = u64::from(failed);
            if count_add(key, failed) {
                return;
            }
            let first = kscope_common::trace::Counts { events: 1, failed };
            match TRACE_COUNTS.insert(key, &first, u64::from(aya_ebpf::bindings::BPF_NOEXIST)) {
                Ok(()) => {}
                // Another CPU added this key since the lookup; its insert
                // zeroed this CPU's slot, which `count_add` now finds.
                Err(e) if e == -EEXIST && count_add(key, failed) => {}
                // The map is full (E2BIG): counted, not dropped.
                Err(_) => {
                    if let Some(n) = TRACE_UNCOUNTED.get_ptr_mut(0) {
                        // SAFETY: this CPU's slot of a live array element,
                        // only updated atomically (see count_lost).
                        unsafe { $crate::trace::add_atomic(n, 1) };
                    }
                }
            }
        }

        /// Adds one event to `key`'s slot on this CPU; false if `key` has
        /// none.
        #[inline(always)]
        fn count_add(key: &$key, failed: u64) -> bool {
            let Some(c) = TRACE_COUNTS.get_ptr_mut(key) else {
                return false;
            };
            // SAFETY: this CPU's slot of a live element (nothing deletes
            // from the map while programs run), only updated atomically
            // (see count_lost).
            unsafe {
                $crate::trace::add_atomic(&raw mut (*c).events, 1);
                if failed != 0 {
                    $crate::trace::add_atomic(&raw mut (*c).failed, failed);
                }
            }
            true
        }

        #[inline(always)]
        fn count_lost() {
            if let Some(n) = TRACE_LOST.get_ptr_mut(0) {
                // SAFETY: this CPU's slot of a live array element, only
                // updated atomically (`add_atomic` says why per-CPU alone
                // is not enough).
                unsafe { $crate::trace::add_atomic(n, 1) };
            }
        }

        // The names user space looks up (kscope-common) are the ones above.
        $crate::assert_symbol_name!(TRACE_EVENTS, kscope_common::trace::MAP_EVENTS);
        $crate::assert_symbol_name!(TRACE_LOST, kscope_common::trace::MAP_LOST);
        $crate::assert_symbol_name!(TRACE_COUNTS, kscope_common::trace::MAP_COUNTS);
        $crate::assert_symbol_name!(TRACE_UNCOUNTED, kscope_common::trace::MAP_UNCOUNTED);
        $crate::assert_symbol_name!(COUNT_MODE, kscope_common::trace::GLOBAL_COUNT_MODE);
        $crate::assert_symbol_name!(FILTER_PID, kscope_common::trace::GLOBAL_PID);
        $crate::assert_symbol_name!(FILTER_TID, kscope_common::trace::GLOBAL_TID);
        $crate::assert_symbol_name!(FILTER_UID, kscope_common::trace::GLOBAL_UID);
        $crate::assert_symbol_name!(FILTER_UID_ON, kscope_common::trace::GLOBAL_UID_ON);
        $crate::assert_symbol_name!(FILTER_COMM, kscope_common::trace::GLOBAL_COMM);
        $crate::assert_symbol_name!(FILTER_COMM_LEN, kscope_common::trace::GLOBAL_COMM_LEN);
        $crate::assert_symbol_name!(WAKEUP_BYTES, kscope_common::trace::GLOBAL_WAKEUP_BYTES);
        $crate::assert_symbol_name!(FILTER_CGROUP_ON, kscope_common::trace::GLOBAL_CGROUP_ON);
        $crate::assert_symbol_name!(TRACE_CGROUP, kscope_common::trace::MAP_CGROUP);
        $crate::assert_symbol_name!(
            FILTER_CGROUP_CACHE_ON,
            kscope_common::trace::GLOBAL_CGROUP_CACHE_ON
        );
        $crate::assert_symbol_name!(TRACE_CGROUP_SEEN, kscope_common::trace::MAP_CGROUP_SEEN);
        $crate::assert_symbol_name!(TRACE_CGROUP_GEN, kscope_common::trace::MAP_CGROUP_GEN);
        $crate::assert_symbol_name!(trace_cgroup_moved, kscope_common::trace::PROG_CGROUP_MOVED);
        $crate::assert_symbol_name!(trace_task_exited, kscope_common::trace::PROG_TASK_EXITED);
    };
}
