//! `kscope top`: every BPF program on the machine with what it costs, as a
//! live screen, as JSON lines, and (through the same [`Collector`]) as the
//! daemon's `kscope_bpf_program_*` metrics.
//!
//! Run time and run counts come from `struct bpf_prog_info`, which the
//! kernel fills only while BPF statistics are on. [`StatsGuard`] turns them
//! on through the fd BPF_ENABLE_STATS returns (Linux 5.8+), so they stay on
//! exactly as long as the fd is open, and never through the
//! `kernel.bpf_stats_enabled` sysctl, which is left as it was found.
//!
//! One refresh costs, per program, four bpf() calls (next id, fd by id,
//! info, and the close); a program's maps are looked up when it is first
//! seen and each map's memory is read once, when the first program using
//! it is seen (kept by map id). The holders come from
//! [`sys::procfd`](crate::sys::procfd), which reads fdinfo only for fds it
//! has not seen. Nothing is allocated per refresh for programs already
//! seen.
//!
//! Fallback policy: losing a field is better than failing the view. A
//! program that goes away during a refresh is left out of it; a map whose
//! memory cannot be read counts its shape (`bpf_map_info`) instead, or 0;
//! processes whose fds cannot be read are not shown as holders.

pub mod cmd;
mod json;
pub(crate) mod screen;

use std::{
    collections::{HashMap, VecDeque},
    io,
    os::fd::{AsFd as _, OwnedFd},
    time::Instant,
};

use thiserror::Error;

use crate::sys::{self, Cap, SysError, bpf, procfd::Holders};

/// Errors of `kscope top` and of the collector.
#[derive(Debug, Error)]
pub enum TopError {
    /// A capability is missing (CAP_SYS_ADMIN lists programs and turns
    /// statistics on).
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The kernel has no BPF_ENABLE_STATS.
    #[error(
        "per-program run time needs BPF_ENABLE_STATS, which needs Linux 5.8 or later (this kernel is {release})"
    )]
    StatsUnsupported {
        /// The running kernel's release.
        release: String,
    },
    /// BPF_ENABLE_STATS failed otherwise.
    #[error("BPF_ENABLE_STATS failed")]
    Stats(#[source] io::Error),
    /// Listing or reading programs failed.
    #[error("listing BPF programs failed")]
    List(#[source] io::Error),
    /// /proc could not be read.
    #[error("reading /proc failed")]
    Proc(#[source] io::Error),
    /// Writing output or driving the terminal failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl TopError {
    /// True for a write to a closed pipe (`kscope top --json | head`).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, TopError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Checks `what` can run: CAP_SYS_ADMIN (program ids and
/// BPF_ENABLE_STATS need it even where CAP_BPF exists).
///
/// # Errors
/// [`TopError::Sys`] naming the missing capability.
pub(crate) fn check_caps(what: &str) -> Result<(), TopError> {
    sys::require_caps(what, &[Cap::SysAdmin])?;
    Ok(())
}

/// BPF run-time statistics, on while this lives (the fd from
/// BPF_ENABLE_STATS; the kernel turns them off when the last such fd
/// closes, kernel/bpf/syscall.c `bpf_stats_release()`).
#[derive(Debug)]
pub struct StatsGuard(#[expect(dead_code, reason = "held for its Drop")] OwnedFd);

impl StatsGuard {
    /// Turns statistics on.
    ///
    /// Minimum kernel: 5.8. Needs CAP_SYS_ADMIN.
    ///
    /// # Errors
    /// [`TopError::StatsUnsupported`] before 5.8; [`TopError::Sys`] without
    /// CAP_SYS_ADMIN; [`TopError::Stats`] otherwise.
    pub fn enable() -> Result<Self, TopError> {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Ok(Self(fd)),
            Err(e) => Err(match e.io_error.raw_os_error() {
                // An unknown bpf() command.
                Some(libc::EINVAL) => TopError::StatsUnsupported {
                    release: sys::kernel_release(),
                },
                Some(libc::EPERM) => TopError::Sys(SysError::MissingCapabilities {
                    what: "BPF_ENABLE_STATS".into(),
                    needed: Cap::SysAdmin.to_string(),
                    missing: Cap::SysAdmin.to_string(),
                }),
                _ => TopError::Stats(e.io_error),
            }),
        }
    }
}

/// A program type as bpftool names it (`enum bpf_prog_type`,
/// include/uapi/linux/bpf.h).
pub(crate) fn prog_type_name(t: u32) -> &'static str {
    const NAMES: [&str; 33] = [
        "unspec",
        "socket_filter",
        "kprobe",
        "sched_cls",
        "sched_act",
        "tracepoint",
        "xdp",
        "perf_event",
        "cgroup_skb",
        "cgroup_sock",
        "lwt_in",
        "lwt_out",
        "lwt_xmit",
        "sock_ops",
        "sk_skb",
        "cgroup_device",
        "sk_msg",
        "raw_tracepoint",
        "cgroup_sock_addr",
        "lwt_seg6local",
        "lirc_mode2",
        "sk_reuseport",
        "flow_dissector",
        "cgroup_sysctl",
        "raw_tracepoint_writable",
        "cgroup_sockopt",
        "tracing",
        "struct_ops",
        "ext",
        "lsm",
        "sk_lookup",
        "syscall",
        "netfilter",
    ];
    NAMES.get(t as usize).copied().unwrap_or("unknown")
}

/// How many per-interval CPU figures a program keeps for the sparkline.
const HISTORY: usize = 120;

/// One program and what the last refresh computed for it.
#[derive(Debug)]
pub struct Prog {
    /// The program id.
    pub id: u32,
    /// bpftool's name for its type.
    pub type_name: &'static str,
    /// Its name (up to 15 bytes; kernels keep no more).
    pub name: String,
    map_ids: Vec<u32>,
    /// Bytes of the maps it uses (each map's `memlock`).
    pub map_bytes: u64,
    /// Cumulative run time since statistics went on, ns.
    pub run_time_ns: u64,
    /// Cumulative runs since statistics went on.
    pub run_count: u64,
    /// Runs per second over the last interval.
    pub runs_per_sec: f64,
    /// Average ns per run over the last interval (0 without runs).
    pub avg_ns: u64,
    /// Run time per wall time over the last interval, in percent of one CPU.
    pub cpu_pct: f64,
    /// Processes holding it open, ascending.
    pub pids: Vec<u32>,
    /// `cpu_pct` of the last intervals, oldest first, in hundredths.
    pub history: VecDeque<u64>,
    seen: u64,
}

/// Rates over `dt_ns` from two cumulative readings: (runs per second,
/// average ns per run, percent of one CPU). A zero interval gives zeros,
/// and counters that went backwards (a program replaced under the same
/// id cannot happen; stats restarted can) count as no change.
pub(crate) fn rates(
    prev_time: u64,
    prev_count: u64,
    time: u64,
    count: u64,
    dt_ns: u64,
) -> (f64, u64, f64) {
    let d_time = time.saturating_sub(prev_time);
    let d_count = count.saturating_sub(prev_count);
    if dt_ns == 0 {
        return (0.0, 0, 0.0);
    }
    let secs = dt_ns as f64 / 1e9;
    let avg = d_time.checked_div(d_count).unwrap_or(0);
    (
        d_count as f64 / secs,
        avg,
        d_time as f64 * 100.0 / dt_ns as f64,
    )
}

/// Every BPF program on the machine, refreshed on demand.
#[derive(Debug)]
pub struct Collector {
    progs: HashMap<u32, Prog>,
    order: Vec<u32>,
    /// Map id → (bytes, refresh that last saw it used).
    maps: HashMap<u32, (u64, u64)>,
    holders: Option<Holders>,
    map_ids: Vec<u32>,
    refresh: u64,
    last: Option<Instant>,
    dt_ns: u64,
}

impl Collector {
    /// A collector that also finds each program's holders in /proc when
    /// `holders` is set.
    ///
    /// # Errors
    /// [`TopError::Proc`] when /proc cannot be opened.
    pub fn new(holders: bool) -> Result<Self, TopError> {
        Ok(Self {
            progs: HashMap::new(),
            order: Vec::new(),
            maps: HashMap::new(),
            holders: if holders {
                Some(Holders::new().map_err(TopError::Proc)?)
            } else {
                None
            },
            map_ids: Vec::with_capacity(64),
            refresh: 0,
            last: None,
            dt_ns: 0,
        })
    }

    /// Reads every program again and computes the rates since the last
    /// refresh (zeros at the first).
    ///
    /// # Errors
    /// [`TopError::List`] when programs cannot be listed (EPERM without
    /// CAP_SYS_ADMIN); [`TopError::Proc`] when /proc cannot be listed.
    pub fn refresh(&mut self) -> Result<(), TopError> {
        let now = Instant::now();
        let first = self.last.is_none();
        self.dt_ns = self
            .last
            .map(|l| u64::try_from(now.duration_since(l).as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.last = Some(now);
        self.refresh += 1;
        let refresh = self.refresh;
        self.order.clear();
        let mut id = 0;
        while let Some(next) = bpf::prog_next_id(id).map_err(TopError::List)? {
            id = next;
            let fd = match bpf::prog_fd_by_id(id) {
                Ok(fd) => fd,
                // Unloaded since it was listed.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(TopError::List(e)),
            };
            let known = self.progs.contains_key(&id);
            let info = match bpf::prog_info(fd.as_fd(), (!known).then_some(&mut self.map_ids)) {
                Ok(i) => i,
                Err(_) => continue,
            };
            drop(fd);
            self.order.push(id);
            if !known {
                let map_bytes = self.map_bytes_of(refresh);
                let name_len = info.name.iter().position(|&b| b == 0).unwrap_or(16);
                let p = Prog {
                    id,
                    type_name: prog_type_name(info.type_),
                    name: String::from_utf8_lossy(&info.name[..name_len]).into_owned(),
                    map_ids: self.map_ids.clone(),
                    map_bytes,
                    // New since the last refresh: every run it made is in
                    // this interval. At the first refresh there is no
                    // interval: the counters are the baseline.
                    run_time_ns: if first { info.stats.run_time_ns } else { 0 },
                    run_count: if first { info.stats.run_cnt } else { 0 },
                    runs_per_sec: 0.0,
                    avg_ns: 0,
                    cpu_pct: 0.0,
                    pids: Vec::new(),
                    history: VecDeque::with_capacity(HISTORY),
                    seen: refresh,
                };
                self.progs.insert(id, p);
            }
            let Some(prog) = self.progs.get_mut(&id) else {
                continue;
            };
            if known {
                for m in &prog.map_ids {
                    if let Some(e) = self.maps.get_mut(m) {
                        e.1 = refresh;
                    }
                }
            }
            let (rps, avg, cpu) = rates(
                prog.run_time_ns,
                prog.run_count,
                info.stats.run_time_ns,
                info.stats.run_cnt,
                self.dt_ns,
            );
            prog.runs_per_sec = rps;
            prog.avg_ns = avg;
            prog.cpu_pct = cpu;
            prog.run_time_ns = info.stats.run_time_ns;
            prog.run_count = info.stats.run_cnt;
            prog.seen = refresh;
            if !first {
                if prog.history.len() == HISTORY {
                    prog.history.pop_front();
                }
                prog.history.push_back((cpu * 100.0).round() as u64);
            }
        }
        self.progs.retain(|_, p| p.seen == refresh);
        self.maps.retain(|_, m| m.1 == refresh);
        if let Some(h) = self.holders.as_mut() {
            let progs = &self.progs;
            h.scan(|id| progs.contains_key(&id))
                .map_err(TopError::Proc)?;
            for p in self.progs.values_mut() {
                p.pids.clear();
            }
            for holder in h.holders() {
                for id in holder.prog_ids() {
                    if let Some(p) = self.progs.get_mut(&id)
                        && !p.pids.contains(&holder.pid)
                    {
                        p.pids.push(holder.pid);
                    }
                }
            }
            for p in self.progs.values_mut() {
                p.pids.sort_unstable();
            }
        }
        Ok(())
    }

    /// The memory of the maps in `self.map_ids`, reading each map not seen
    /// before.
    fn map_bytes_of(&mut self, refresh: u64) -> u64 {
        let mut total = 0u64;
        for &m in &self.map_ids {
            let e = self
                .maps
                .entry(m)
                .or_insert_with(|| (map_bytes(m), refresh));
            e.1 = refresh;
            total = total.saturating_add(e.0);
        }
        total
    }

    /// The programs of the last refresh, in id order.
    pub fn progs(&self) -> impl Iterator<Item = &Prog> + '_ {
        self.order.iter().filter_map(|id| self.progs.get(id))
    }

    /// How many programs the last refresh saw.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when the last refresh saw no program.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The name of process `pid` if it holds a program (lossy UTF-8 left
    /// to the caller: these are the bytes of /proc/PID/comm).
    pub fn comm(&self, pid: u32) -> &[u8] {
        self.holders
            .as_ref()
            .and_then(|h| h.comm(pid))
            .unwrap_or(b"")
    }

    /// The nanoseconds between the last two refreshes (0 after the first).
    pub fn interval_ns(&self) -> u64 {
        self.dt_ns
    }
}

#[cfg(test)]
impl Collector {
    /// A collector that holds `progs` as if a refresh had seen them.
    pub(crate) fn with_progs(progs: Vec<Prog>) -> Self {
        let mut c = Self {
            progs: HashMap::new(),
            order: Vec::new(),
            maps: HashMap::new(),
            holders: None,
            map_ids: Vec::new(),
            refresh: 1,
            last: None,
            dt_ns: 0,
        };
        for p in progs {
            c.order.push(p.id);
            c.progs.insert(p.id, p);
        }
        c
    }
}

#[cfg(test)]
/// A program with these totals, for tests.
pub(crate) fn test_prog(id: u32, run_time_ns: u64, run_count: u64, map_bytes: u64) -> Prog {
    Prog {
        id,
        type_name: "xdp",
        name: format!("p{id}"),
        map_ids: Vec::new(),
        map_bytes,
        run_time_ns,
        run_count,
        runs_per_sec: 0.0,
        avg_ns: 0,
        cpu_pct: 0.0,
        pids: Vec::new(),
        history: VecDeque::new(),
        seen: 1,
    }
}

/// The memory of map `id`: its fdinfo `memlock`, else its shape, else 0.
fn map_bytes(id: u32) -> u64 {
    let Ok(fd) = bpf::map_fd_by_id(id) else {
        return 0;
    };
    if let Ok(Some(b)) = bpf::map_memlock(fd.as_fd()) {
        return b;
    }
    bpf::map_info(fd.as_fd())
        .map(|i| i.estimate_bytes())
        .unwrap_or(0)
}

/// Sort keys of `kscope top`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Share of one CPU, most first.
    Cpu,
    /// Runs per second, most first.
    Runs,
    /// Average ns per run, most first.
    Avg,
    /// Map memory, most first.
    Mem,
    /// Program id, ascending.
    Id,
    /// Name, ascending.
    Name,
}

impl SortKey {
    /// Every key, in the screen's cycling order.
    pub(crate) const ALL: [SortKey; 6] = [
        SortKey::Cpu,
        SortKey::Runs,
        SortKey::Avg,
        SortKey::Mem,
        SortKey::Id,
        SortKey::Name,
    ];

    /// The key's name on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SortKey::Cpu => "cpu",
            SortKey::Runs => "runs",
            SortKey::Avg => "avg",
            SortKey::Mem => "mem",
            SortKey::Id => "id",
            SortKey::Name => "name",
        }
    }

    /// Orders two programs; ties fall back to the id, so the order is
    /// stable from one refresh to the next.
    pub(crate) fn cmp(self, a: &Prog, b: &Prog) -> std::cmp::Ordering {
        let by = match self {
            SortKey::Cpu => b.cpu_pct.total_cmp(&a.cpu_pct),
            SortKey::Runs => b.runs_per_sec.total_cmp(&a.runs_per_sec),
            SortKey::Avg => b.avg_ns.cmp(&a.avg_ns),
            SortKey::Mem => b.map_bytes.cmp(&a.map_bytes),
            SortKey::Id => a.id.cmp(&b.id),
            SortKey::Name => a.name.cmp(&b.name),
        };
        by.then(a.id.cmp(&b.id))
    }
}

/// True when `filter` (empty: everything) appears in the program's name,
/// its type, or the name of a process holding it; case-insensitive.
pub(crate) fn matches(c: &Collector, p: &Prog, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let has = |hay: &[u8]| {
        let f = filter.as_bytes();
        hay.len() >= f.len() && hay.windows(f.len()).any(|w| w.eq_ignore_ascii_case(f))
    };
    has(p.name.as_bytes())
        || has(p.type_name.as_bytes())
        || p.pids.iter().any(|&pid| has(c.comm(pid)))
}

/// The programs of `c` that match `filter`, sorted by `key`.
pub(crate) fn view<'a>(c: &'a Collector, key: SortKey, filter: &str) -> Vec<&'a Prog> {
    let mut v: Vec<&Prog> = c.progs().filter(|p| matches(c, p, filter)).collect();
    v.sort_by(|a, b| key.cmp(a, b));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_over_an_interval() {
        // 1,000 runs of 2 µs each over half a second.
        let (rps, avg, cpu) = rates(5_000, 10, 5_000 + 2_000_000, 1_010, 500_000_000);
        assert_eq!(rps, 2000.0);
        assert_eq!(avg, 2000);
        assert!((cpu - 0.4).abs() < 1e-9, "{cpu}");
    }

    #[test]
    fn rates_guard_zero_interval_and_no_runs() {
        assert_eq!(rates(0, 0, 100, 1, 0), (0.0, 0, 0.0));
        assert_eq!(rates(100, 1, 100, 1, 1_000_000_000), (0.0, 0, 0.0));
        // Counters that went backwards count as no change.
        assert_eq!(rates(100, 5, 50, 2, 1_000_000_000), (0.0, 0, 0.0));
    }

    #[test]
    fn type_names_follow_bpftool() {
        assert_eq!(prog_type_name(6), "xdp");
        assert_eq!(prog_type_name(3), "sched_cls");
        assert_eq!(prog_type_name(26), "tracing");
        assert_eq!(prog_type_name(9999), "unknown");
    }

    fn prog(id: u32, name: &str, cpu: f64, runs: f64, avg: u64, mem: u64) -> Prog {
        Prog {
            id,
            type_name: "xdp",
            name: name.into(),
            map_ids: Vec::new(),
            map_bytes: mem,
            run_time_ns: 0,
            run_count: 0,
            runs_per_sec: runs,
            avg_ns: avg,
            cpu_pct: cpu,
            pids: Vec::new(),
            history: VecDeque::new(),
            seen: 0,
        }
    }

    #[test]
    fn sort_keys_order_and_break_ties_by_id() {
        let ps = [
            prog(3, "b", 1.0, 10.0, 300, 1),
            prog(1, "c", 5.0, 5.0, 100, 3),
            prog(2, "a", 1.0, 20.0, 200, 2),
        ];
        let order = |k: SortKey| {
            let mut v: Vec<&Prog> = ps.iter().collect();
            v.sort_by(|a, b| k.cmp(a, b));
            v.iter().map(|p| p.id).collect::<Vec<_>>()
        };
        assert_eq!(order(SortKey::Cpu), [1, 2, 3]);
        assert_eq!(order(SortKey::Runs), [2, 3, 1]);
        assert_eq!(order(SortKey::Avg), [3, 2, 1]);
        assert_eq!(order(SortKey::Mem), [1, 2, 3]);
        assert_eq!(order(SortKey::Id), [1, 2, 3]);
        assert_eq!(order(SortKey::Name), [2, 3, 1]);
    }
}
