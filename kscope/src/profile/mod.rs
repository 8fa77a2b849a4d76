//! `kscope profile`: a sampling CPU profiler on perf events (`profile_perf`).
//!
//! Lifecycle: check capabilities and options, load `profile_perf`, open one
//! perf event per CPU and attach the program to each, sample until the
//! duration ends or a signal arrives, detach, read the aggregated counts and
//! stacks, symbolize, report. The program, its maps and every perf event
//! belong to a [`Sampler`]; dropping it (an early return, a panic) closes
//! them all, so nothing is left in the kernel.
//!
//! Fallback policies:
//! - No hardware cycle counter (VMs, some clouds): sample on the
//!   cpu-clock software event instead, with a one-line notice.
//! - Stacks that cannot be taken or resolved keep their samples (see
//!   [`symbolize`]); losses are counted and reported.
//! - The DWARF unwinder ([`unwind`]) cannot load (a kernel without
//!   `bpf_probe_read_user`, before 5.5, or a verifier that refuses it):
//!   a warning naming the cause, and user stacks by frame pointer.
//!
//! Minimum kernel: 4.9 (perf_event programs). Kernels before 5.11 charge
//! BPF maps to RLIMIT_MEMLOCK, which kscope lifts.

pub mod cmd;
mod kallsyms;
pub(crate) mod pprof;
mod procmaps;
pub(crate) mod report;
pub(crate) mod symbolize;
mod unwind;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray, StackTraceMap},
    programs::{
        PerfEvent, TracePoint,
        perf_event::{
            HardwareEvent, PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy,
            SoftwareEvent,
        },
        trace_point::TracePointLinkId,
    },
};
use kscope_common::profile::{
    DWARF_STACK_ID_BASE, GLOBAL_DWARF, GLOBAL_FILTER_CGROUP, GLOBAL_FILTER_PIDS,
    GLOBAL_INCLUDE_IDLE, GLOBAL_OFF_NEXT_PID, GLOBAL_STACKS, GLOBAL_TASK_STACK_OFF, LostReason,
    MAP_CGROUP, MAP_COUNTS, MAP_NEW_PIDS, MAP_PIDS, MAP_STACKS, MAP_STATS, MAP_UNWIND_PROGS,
    MAP_UNWIND_ROWS, MAP_USTACKS, PIDS_ENTRIES, PROG_PROFILE_OFFCPU, PROG_PROFILE_PERF,
    PROG_PROFILE_UNWIND, SLOT_COUNTS_FULL, SLOT_DWARF_FP_STEPS, SLOT_DWARF_STOPPED,
    SLOT_DWARF_TRUNCATED, SLOT_DWARF_WALKS, SLOT_IDLE, SLOT_SAMPLES, STACKS_KERNEL, STACKS_USER,
    Side, StackKey, UserStack, lost_slot,
};
use thiserror::Error;

use crate::sys::{self, Cap, SysError};
pub(crate) use report::{Lost, Report, UnwindReport};
use symbolize::{RawProfile, Sides};

/// [`Report::event`] of an off-CPU profile.
pub(crate) const OFF_CPU_EVENT: &str = "off-cpu";

/// The compiled `profile_offcpu` kernel object.
static PROFILE_OFFCPU_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profile_offcpu"));

/// The compiled `profile_perf` kernel object.
static PROFILE_PERF_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profile_perf"));

/// Errors from the profiler.
#[derive(Debug, Error)]
pub enum ProfileError {
    /// A system-level check failed (capabilities, procfs, sysfs).
    #[error(transparent)]
    Sys(#[from] SysError),
    /// `-C` named a CPU that is not online.
    #[error("CPU {cpu} is not online (online CPUs: {online})")]
    NoSuchCpu { cpu: u32, online: String },
    /// `-p` named a process that does not exist.
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    /// More `-p` processes than the kernel-side filter holds.
    #[error("at most {max} processes can be profiled at once, got {got}")]
    TooManyPids { max: u32, got: usize },
    /// `-F` exceeds what the kernel allows.
    #[error("-F {freq} exceeds the kernel's limit of {max} Hz (kernel.perf_event_max_sample_rate)")]
    FrequencyTooHigh { freq: u64, max: u64 },
    /// Loading the object failed.
    #[error("failed to load the profiler's object")]
    Load(#[source] aya::EbpfError),
    /// Loading the program failed (the verifier log is in the source).
    #[error("failed to load {PROG_PROFILE_PERF}")]
    Program(#[source] aya::programs::ProgramError),
    /// The object lacks a map or program kscope-common names.
    #[error("the profiler's object has no {0}")]
    Missing(&'static str),
    /// Opening a perf event or attaching the program to it failed.
    #[error("failed to sample on {event} on CPU {cpu}")]
    Attach {
        event: &'static str,
        cpu: u32,
        source: aya::programs::ProgramError,
    },
    /// Reading a map failed.
    #[error("reading {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The kernel lacks a feature (named) that a part of the profiler
    /// needs.
    #[error("the kernel lacks {0}")]
    Feature(&'static str),
    /// Installing the SIGINT and SIGTERM handlers failed.
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    /// Creating an output file (`--folded`, `--svg`) failed.
    #[error("creating {}", path.display())]
    Create {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing an output file failed.
    #[error("writing {}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `--cgroup`'s directory is missing or not a cgroup v2 directory.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// `--off-cpu` cannot run here (sched:sched_switch's format).
    #[error("off-CPU profiling: {0}")]
    OffCpu(String),
    /// Writing the report to the verb's output failed (a closed pipe among
    /// others: see [`ProfileError::is_broken_pipe`]).
    #[error(transparent)]
    Output(std::io::Error),
}

impl ProfileError {
    /// True when the report went to a pipe nobody reads any more, which
    /// the binary treats as success.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ProfileError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> ProfileError {
    move |source| ProfileError::Map { map, source }
}

/// What to profile and how.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// Samples per second per CPU.
    pub(crate) frequency: u64,
    /// Only this CPU; all online CPUs when `None`.
    pub(crate) cpu: Option<u32>,
    /// Only these processes; system-wide when empty.
    pub(crate) pids: Vec<u32>,
    /// Only tasks in this cgroup v2 directory or below it.
    pub(crate) cgroup: Option<std::path::PathBuf>,
    /// Keep idle-task samples.
    pub(crate) include_idle: bool,
    pub(crate) sides: Sides,
    /// Distinct stacks the stack map can hold.
    pub(crate) stack_storage: u32,
    /// Off-CPU time by stack (sched:sched_switch) instead of on-CPU
    /// samples: `frequency`, `cpu` and `include_idle` do not apply.
    pub(crate) off_cpu: bool,
    /// Unwind user stacks with `.eh_frame` tables in the kernel (off:
    /// frame pointers only).
    pub(crate) dwarf: bool,
    /// Rows the unwind tables can hold (16 bytes each).
    pub(crate) unwind_rows: u32,
}

/// The event samples are taken on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// PERF_COUNT_HW_CPU_CYCLES.
    Cycles,
    /// PERF_COUNT_SW_CPU_CLOCK.
    CpuClock,
    /// sched:sched_switch, for off-CPU time.
    OffCpu,
}

impl Event {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Event::Cycles => "cycles",
            Event::CpuClock => "cpu-clock",
            Event::OffCpu => OFF_CPU_EVENT,
        }
    }

    fn config(self) -> PerfEventConfig {
        match self {
            Event::Cycles => PerfEventConfig::Hardware(HardwareEvent::CpuCycles),
            // Never attached as a perf event.
            Event::CpuClock | Event::OffCpu => PerfEventConfig::Software(SoftwareEvent::CpuClock),
        }
    }
}

/// `profile_perf` loaded and attached to one perf event per CPU. Dropping
/// it detaches every event and unloads the program and its maps.
pub(crate) struct Sampler {
    ebpf: Ebpf,
    links: Vec<PerfEventLinkId>,
    /// Off-CPU mode's one attachment.
    switch_link: Option<TracePointLinkId>,
    pub(crate) event: Event,
    pub(crate) cpus: Vec<u32>,
    pub(crate) prog_id: u32,
    /// The DWARF unwinder's tables; `None` when it is off.
    unwinder: Option<unwind::Unwinder>,
}

fn render_cpus(cpus: &[u32]) -> String {
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl Sampler {
    /// Checks `opts` against the system, loads `profile_perf` and starts
    /// sampling.
    ///
    /// # Errors
    /// Missing capabilities, a CPU that is not online, a process that does
    /// not exist, a frequency above the kernel's limit, a verifier
    /// rejection, or a perf event that cannot be opened.
    pub(crate) fn start(opts: &Options) -> Result<Self, ProfileError> {
        sys::require_caps("kscope profile", &[Cap::Bpf, Cap::Perfmon])?;
        let online = sys::online_cpus()?;
        let cpus = match opts.cpu {
            Some(cpu) if !online.contains(&cpu) => {
                return Err(ProfileError::NoSuchCpu {
                    cpu,
                    online: render_cpus(&online),
                });
            }
            Some(cpu) => vec![cpu],
            None => online,
        };
        if let Some(&pid) = opts.pids.iter().find(|&&p| !sys::process_exists(p)) {
            return Err(ProfileError::NoSuchProcess(pid));
        }
        if opts.pids.len() > PIDS_ENTRIES as usize {
            return Err(ProfileError::TooManyPids {
                max: PIDS_ENTRIES,
                got: opts.pids.len(),
            });
        }
        if let Ok(max) = sys::perf_max_sample_rate()
            && !opts.off_cpu
            && opts.frequency > max
        {
            return Err(ProfileError::FrequencyTooHigh {
                freq: opts.frequency,
                max,
            });
        }
        let cgroup = opts
            .cgroup
            .as_deref()
            .map(crate::cgroup::CgroupDir::open)
            .transpose()?;
        if let Err(e) = sys::raise_memlock_rlimit() {
            tracing::debug!("raising RLIMIT_MEMLOCK: {e}");
        }

        let mut dwarf = opts.dwarf && !opts.off_cpu && opts.sides.user;
        let dwarf_on = u32::from(dwarf);
        // Where a kernel-mode sample finds the user registers; without it
        // (no kernel BTF) the walker guesses from the kernel stack pointer.
        let task_stack_off = if dwarf {
            crate::sys::btf::Btf::from_sys_fs(&["task_struct"])
                .and_then(|b| b.member_offset("task_struct", "stack"))
                .unwrap_or_else(|e| {
                    tracing::debug!("task_struct.stack: {e}");
                    0
                })
        } else {
            0
        };
        let filter = u32::from(!opts.pids.is_empty());
        let filter_cgroup = u32::from(cgroup.is_some());
        let idle = u32::from(opts.include_idle);
        let stacks = if opts.sides.kernel { STACKS_KERNEL } else { 0 }
            | if opts.sides.user { STACKS_USER } else { 0 };
        // No CO-RE relocations: no need for aya to parse the kernel's BTF.
        let mut loader = crate::sys::loader_without_kernel_btf();
        loader
            .override_global(GLOBAL_FILTER_PIDS, &filter, true)
            .override_global(GLOBAL_FILTER_CGROUP, &filter_cgroup, true)
            .override_global(GLOBAL_STACKS, &stacks, true)
            .map_max_entries(MAP_STACKS, opts.stack_storage);
        let next_pid_off;
        let obj = if opts.off_cpu {
            sys::ensure_tracefs()?;
            next_pid_off = crate::trace::runq::sched_offset("sched_switch", "next_pid")
                .map_err(|e| ProfileError::OffCpu(e.to_string()))?;
            loader.override_global(GLOBAL_OFF_NEXT_PID, &next_pid_off, true);
            PROFILE_OFFCPU_OBJ
        } else {
            loader
                .override_global(GLOBAL_INCLUDE_IDLE, &idle, true)
                .override_global(GLOBAL_DWARF, &dwarf_on, true)
                .override_global(GLOBAL_TASK_STACK_OFF, &task_stack_off, true)
                // Both preallocated: one entry each when off.
                .map_max_entries(MAP_UNWIND_ROWS, if dwarf { opts.unwind_rows } else { 1 })
                .map_max_entries(MAP_USTACKS, if dwarf { opts.stack_storage } else { 1 });
            PROFILE_PERF_OBJ
        };
        let mut ebpf = loader.load(obj).map_err(ProfileError::Load)?;
        if !opts.pids.is_empty() {
            let mut pids: BpfHashMap<&mut MapData, u32, u8> = BpfHashMap::try_from(
                ebpf.map_mut(MAP_PIDS)
                    .ok_or(ProfileError::Missing(MAP_PIDS))?,
            )
            .map_err(map_err(MAP_PIDS))?;
            for &pid in &opts.pids {
                pids.insert(pid, 1, 0).map_err(map_err(MAP_PIDS))?;
            }
        }
        if let Some(dir) = &cgroup {
            let mut slot: aya::maps::CgroupArray<&mut MapData> = ebpf
                .map_mut(MAP_CGROUP)
                .ok_or(ProfileError::Missing(MAP_CGROUP))?
                .try_into()
                .map_err(map_err(MAP_CGROUP))?;
            slot.set(0, dir.fd(), 0).map_err(map_err(MAP_CGROUP))?;
        }
        if opts.off_cpu {
            let prog: &mut TracePoint = ebpf
                .program_mut(PROG_PROFILE_OFFCPU)
                .ok_or(ProfileError::Missing(PROG_PROFILE_OFFCPU))?
                .try_into()
                .map_err(ProfileError::Program)?;
            prog.load().map_err(ProfileError::Program)?;
            let prog_id = prog.info().map(|i| i.id()).unwrap_or(0);
            let link = prog
                .attach("sched", "sched_switch")
                .map_err(ProfileError::Program)?;
            return Ok(Self {
                ebpf,
                links: Vec::new(),
                switch_link: Some(link),
                event: Event::OffCpu,
                cpus,
                prog_id,
                unwinder: None,
            });
        }
        if dwarf && let Err(e) = load_unwinder(&mut ebpf) {
            // profile_perf's tail call then finds no program and takes
            // the frame-pointer stack, as with --no-dwarf.
            tracing::warn!(
                "DWARF unwinding is off: {e:#}; user stacks are walked by frame pointer only"
            );
            dwarf = false;
        }
        // The -p processes' tables before the first sample.
        let mut unwinder = dwarf.then(|| unwind::Unwinder::new(opts.unwind_rows));
        if let Some(u) = unwinder.as_mut() {
            for &pid in &opts.pids {
                add_unwind_process(u, &mut ebpf, pid);
            }
        }
        let prog: &mut PerfEvent = ebpf
            .program_mut(PROG_PROFILE_PERF)
            .ok_or(ProfileError::Missing(PROG_PROFILE_PERF))?
            .try_into()
            .map_err(ProfileError::Program)?;
        prog.load().map_err(ProfileError::Program)?;
        let prog_id = prog.info().map(|i| i.id()).unwrap_or(0);

        let (event, links) = match attach_all(prog, Event::Cycles, &cpus, opts.frequency) {
            Ok(links) => (Event::Cycles, links),
            Err(ProfileError::Attach { source, .. }) if no_such_event(&source) => {
                tracing::warn!(
                    "no hardware CPU cycle counter here ({}); sampling on the cpu-clock software event",
                    errno_text(&source)
                );
                let links = attach_all(prog, Event::CpuClock, &cpus, opts.frequency)?;
                (Event::CpuClock, links)
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            ebpf,
            links,
            switch_link: None,
            event,
            cpus,
            prog_id,
            unwinder,
        })
    }

    /// Loads (or refreshes) the unwind tables of process `pid`.
    fn add_unwind_process(&mut self, pid: u32) {
        if let Some(u) = self.unwinder.as_mut() {
            add_unwind_process(u, &mut self.ebpf, pid);
        }
    }

    /// Releases the tables of processes that exited.
    fn reap_unwind_processes(&mut self) -> Result<(), ProfileError> {
        if let Some(u) = self.unwinder.as_mut() {
            for pid in u.pids() {
                if !sys::process_exists(pid) {
                    u.remove_process(&mut self.ebpf, pid)?;
                }
            }
        }
        Ok(())
    }

    /// The unwinder's part of the report.
    fn unwind_report(&self, stats: &[u64]) -> Option<UnwindReport> {
        let u = self.unwinder.as_ref()?.stats;
        let slot = |s: u32| stats.get(s as usize).copied().unwrap_or(0);
        Some(UnwindReport {
            table_capacity_bytes: u.capacity_bytes,
            table_peak_bytes: u.peak_bytes,
            objects: u.objects,
            rows: u.rows,
            objects_left_out: u.objects_left_out,
            processes: u.processes,
            walks: slot(SLOT_DWARF_WALKS),
            frame_pointer_steps: slot(SLOT_DWARF_FP_STEPS),
            truncated: slot(SLOT_DWARF_TRUNCATED),
            stopped: slot(SLOT_DWARF_STOPPED),
        })
    }

    fn stats(&self) -> Result<Vec<u64>, ProfileError> {
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_STATS)
                .ok_or(ProfileError::Missing(MAP_STATS))?,
        )
        .map_err(map_err(MAP_STATS))?;
        (0..arr.len())
            .map(|i| {
                arr.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(map_err(MAP_STATS))
            })
            .collect()
    }

    /// Samples counted so far, over all CPUs.
    pub(crate) fn samples(&self) -> Result<u64, ProfileError> {
        Ok(self.stats()?[SLOT_SAMPLES as usize])
    }

    /// Processes that got new stacks since the last call.
    fn take_new_pids(&mut self) -> Result<Vec<u32>, ProfileError> {
        let mut map: BpfHashMap<&mut MapData, u32, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(MAP_NEW_PIDS)
                .ok_or(ProfileError::Missing(MAP_NEW_PIDS))?,
        )
        .map_err(map_err(MAP_NEW_PIDS))?;
        let pids: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for pid in &pids {
            // The kernel adds it again when the process gets another new stack.
            let _ = map.remove(pid);
        }
        Ok(pids)
    }

    /// Stops sampling: detaches every perf event, so the counts read next
    /// are final.
    pub(crate) fn stop(&mut self) {
        if let Some(link) = self.switch_link.take()
            && let Some(prog) = self.ebpf.program_mut(PROG_PROFILE_OFFCPU)
            && let Ok(prog) = <&mut TracePoint>::try_from(prog)
            && let Err(e) = prog.detach(link)
        {
            tracing::warn!("detaching sched_switch: {e}");
        }
        let Some(prog) = self.ebpf.program_mut(PROG_PROFILE_PERF) else {
            return;
        };
        let Ok(prog) = <&mut PerfEvent>::try_from(prog) else {
            return;
        };
        for link in self.links.drain(..) {
            if let Err(e) = prog.detach(link) {
                tracing::warn!("detaching a perf event: {e}");
            }
        }
    }

    /// Reads the aggregated counts, the stacks they name, and the loss
    /// counters.
    pub(crate) fn collect(&self) -> Result<(RawProfile, Vec<u64>), ProfileError> {
        let counts_map: BpfHashMap<&MapData, StackKey, u64> = BpfHashMap::try_from(
            self.ebpf
                .map(MAP_COUNTS)
                .ok_or(ProfileError::Missing(MAP_COUNTS))?,
        )
        .map_err(map_err(MAP_COUNTS))?;
        let counts: Vec<(StackKey, u64)> = counts_map
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(MAP_COUNTS))?;
        let stack_map: StackTraceMap<&MapData> = StackTraceMap::try_from(
            self.ebpf
                .map(MAP_STACKS)
                .ok_or(ProfileError::Missing(MAP_STACKS))?,
        )
        .map_err(map_err(MAP_STACKS))?;
        let mut stacks = HashMap::new();
        if self.unwinder.is_some() {
            let ustacks: BpfHashMap<&MapData, u32, UserStack> = BpfHashMap::try_from(
                self.ebpf
                    .map(MAP_USTACKS)
                    .ok_or(ProfileError::Missing(MAP_USTACKS))?,
            )
            .map_err(map_err(MAP_USTACKS))?;
            for (key, _) in &counts {
                let Ok(id) = u32::try_from(key.user_stack_id) else {
                    continue;
                };
                if key.user_stack_id < DWARF_STACK_ID_BASE || stacks.contains_key(&id) {
                    continue;
                }
                match ustacks.get(&id, 0) {
                    Ok(st) => {
                        let ips = st.ips.iter().copied().take_while(|&ip| ip != 0);
                        stacks.insert(id, ips.collect());
                    }
                    Err(e) => tracing::debug!("stack {id}: {e}"),
                }
            }
        }
        for (key, _) in &counts {
            for id in [key.kernel_stack_id, key.user_stack_id] {
                let Ok(id) = u32::try_from(id) else { continue };
                if id >= DWARF_STACK_ID_BASE as u32 {
                    continue;
                }
                if stacks.contains_key(&id) {
                    continue;
                }
                match stack_map.get(&id, 0) {
                    Ok(st) => {
                        stacks.insert(id, st.frames().iter().map(|f| f.ip).collect());
                    }
                    Err(e) => tracing::debug!("stack {id}: {e}"),
                }
            }
        }
        Ok((RawProfile { counts, stacks }, self.stats()?))
    }
}

/// Loads (or refreshes) the unwind tables of process `pid`. A failure
/// (the process table full, among others) costs that process its tables,
/// not the profile: its stacks are walked by frame pointer.
fn add_unwind_process(u: &mut unwind::Unwinder, ebpf: &mut Ebpf, pid: u32) {
    if let Err(e) = u.add_process(ebpf, pid) {
        tracing::warn!(
            "unwind tables for process {pid}: {e:#}; its user stacks are walked by frame pointer"
        );
    }
}

/// Loads `profile_unwind` and puts it in the slot profile_perf tail-calls.
fn load_unwinder(ebpf: &mut Ebpf) -> Result<(), ProfileError> {
    let prog: &mut PerfEvent = ebpf
        .program_mut(PROG_PROFILE_UNWIND)
        .ok_or(ProfileError::Missing(PROG_PROFILE_UNWIND))?
        .try_into()
        .map_err(ProfileError::Program)?;
    prog.load().map_err(|e| {
        // Name the helper an old kernel lacks rather than the verifier's
        // "unknown func" line alone.
        if sys::parse_kernel_version(&sys::kernel_release()).is_some_and(|v| v < (5, 5)) {
            ProfileError::Feature("bpf_probe_read_user (Linux 5.5)")
        } else {
            ProfileError::Program(e)
        }
    })?;
    let fd = prog
        .fd()
        .map_err(ProfileError::Program)?
        .try_clone()
        .map_err(|e| ProfileError::Program(e.into()))?;
    let mut progs: ProgramArray<&mut MapData> = ProgramArray::try_from(
        ebpf.map_mut(MAP_UNWIND_PROGS)
            .ok_or(ProfileError::Missing(MAP_UNWIND_PROGS))?,
    )
    .map_err(map_err(MAP_UNWIND_PROGS))?;
    progs.set(0, &fd, 0).map_err(map_err(MAP_UNWIND_PROGS))?;
    Ok(())
}

fn attach_all(
    prog: &mut PerfEvent,
    event: Event,
    cpus: &[u32],
    frequency: u64,
) -> Result<Vec<PerfEventLinkId>, ProfileError> {
    let mut links = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        match prog.attach(
            event.config(),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Frequency(frequency),
            false,
        ) {
            Ok(link) => links.push(link),
            Err(source) => {
                for link in links {
                    let _ = prog.detach(link);
                }
                return Err(ProfileError::Attach {
                    event: event.name(),
                    cpu,
                    source,
                });
            }
        }
    }
    Ok(links)
}

fn errno_text(e: &aya::programs::ProgramError) -> String {
    match sys::errno_in(e) {
        Some(n) => format!("perf_event_open: {}", std::io::Error::from_raw_os_error(n)),
        None => e.to_string(),
    }
}

/// True when perf_event_open failed because the event does not exist here
/// (no PMU, or no such counter), as opposed to a permission or resource
/// problem.
fn no_such_event(e: &aya::programs::ProgramError) -> bool {
    matches!(
        sys::errno_in(e),
        Some(libc::ENOENT | libc::ENODEV | libc::EOPNOTSUPP | libc::EINVAL)
    )
}

/// Progress while sampling: time elapsed and samples so far.
type Progress<'a> = &'a mut dyn FnMut(Duration, u64);

/// How often the sampling loop wakes: to notice new processes (their maps
/// are recorded then), the duration's end, a signal, and to report progress.
const TICK: Duration = Duration::from_millis(100);

/// Profiles per `opts` until `duration` passes or `stop` is set, then
/// symbolizes and returns the report.
///
/// # Errors
/// As [`Sampler::start`], and map read failures.
pub(crate) fn run(
    opts: &Options,
    duration: Option<Duration>,
    stop: &AtomicBool,
    mut progress: Option<Progress<'_>>,
) -> Result<Report, ProfileError> {
    let mut sampler = Sampler::start(opts)?;
    let mut procs = procmaps::ProcCache::new();
    let start_unix_ns = crate::sys::unix_now_ns();
    let start = Instant::now();
    let mut last_progress = start;
    loop {
        let elapsed = start.elapsed();
        if stop.load(Ordering::Relaxed) || duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        let nap = duration.map_or(TICK, |d| d.saturating_sub(elapsed).min(TICK));
        std::thread::sleep(nap);
        for pid in sampler.take_new_pids()? {
            procs.record(pid);
            crate::cgroup::remember_pid(pid);
            // A new process's tables, or a process whose mappings changed
            // (dlopen, exec): it has new stacks.
            sampler.add_unwind_process(pid);
        }
        sampler.reap_unwind_processes()?;
        if let Some(p) = progress.as_mut()
            && last_progress.elapsed() >= Duration::from_millis(500)
        {
            last_progress = Instant::now();
            p(start.elapsed(), sampler.samples()?);
        }
    }
    let duration = start.elapsed();
    sampler.stop();
    // Processes that appeared in the last tick.
    for pid in sampler.take_new_pids()? {
        procs.record(pid);
        crate::cgroup::remember_pid(pid);
    }
    let (raw, stats) = sampler.collect()?;

    let t = Instant::now();
    let mut stacks = symbolize::symbolize(&raw, &mut procs, opts.sides);
    let symbolize_secs = t.elapsed().as_secs_f64();
    stacks.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.comm.cmp(&b.comm)));

    let lost = |side| {
        let n = |r| stats[lost_slot(side, r) as usize];
        Lost {
            eexist: n(LostReason::Collision),
            efault: n(LostReason::Fault),
            stack_map_full: n(LostReason::MapFull),
            other: n(LostReason::Other),
        }
    };
    Ok(Report {
        event: sampler.event.name(),
        unit: if opts.off_cpu {
            "microseconds"
        } else {
            "samples"
        },
        frequency_hz: opts.frequency,
        cpus: sampler.cpus.clone(),
        pids: opts.pids.clone(),
        duration_secs: duration.as_secs_f64(),
        samples: stacks.iter().map(|s| s.count).sum(),
        idle_samples: stats[SLOT_IDLE as usize],
        counts_map_full: stats[SLOT_COUNTS_FULL as usize],
        lost_kernel_stacks: lost(Side::Kernel),
        lost_user_stacks: lost(Side::User),
        symbolize_secs,
        prog_id: sampler.prog_id,
        start_unix_ns,
        unwind: sampler.unwind_report(&stats),
        stacks,
    })
}
