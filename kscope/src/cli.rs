//! Command-line interface definitions. Parsing lives in the library so unit
//! tests can check argument validation without running anything.

use std::{path::PathBuf, time::Duration};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::firewall::{
    Mode, Policy,
    maps::Edit,
    rules::{Cidr, LimitSpec, Per, PortSpec, Rule, SrcList},
};

/// kscope: an eBPF toolkit for Linux — XDP firewall and packet counters,
/// kernel tracing, CPU profiler.
#[derive(Debug, Parser)]
#[command(name = "kscope", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// XDP packet counter and firewall.
    #[command(subcommand)]
    Fw(FwCommand),
    /// Kernel tracing: opens, execs and TCP connects as they happen.
    #[command(subcommand)]
    Trace(TraceCommand),
    /// Latency distributions, aggregated in the kernel as log2 histograms:
    /// run queue latency, system call latency, block I/O latency.
    #[command(subcommand)]
    Hist(HistCommand),
    /// Sample on-CPU stacks (kernel and user) with a perf_event program, or
    /// weigh off-CPU stacks by the time blocked (`--off-cpu`), and show the
    /// hottest functions, folded stacks or a flame graph.
    Profile(ProfileArgs),
    /// Every BPF program on the machine with what it costs (runs per
    /// second, ns per run, share of a CPU, map memory, holders): a live
    /// screen on a terminal, JSON lines otherwise. Statistics are on only
    /// while it runs.
    Top(TopArgs),
    /// Keep the firewall and aggregate tracers running and serve their
    /// counters as Prometheus metrics (see packaging/kscope.toml).
    Daemon(DaemonArgs),
    /// Show every capability at work, step by step, in a private pair of
    /// network namespaces: the packet counter, firewall rules, the
    /// tracers, the profiler and the daemon's metrics. Each step ends with
    /// a check; exits 1 if any fails. Removes everything it made, also on
    /// Ctrl-C.
    Demo,
    /// Check what kscope can do here: each capability works, is degraded
    /// (and what is lost) or is unavailable (why, and the fix). Loads and
    /// attaches a minimal program of each kind and leaves nothing behind.
    /// Exits 0 when everything works, 1 otherwise.
    Doctor {
        /// One JSON object per check, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script to stdout, e.g.
    /// `kscope completions bash > /etc/bash_completion.d/kscope`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages into DIR: kscope.1 and one page per verb
    /// (kscope-fw.1, kscope-fw-block.1, ...).
    Man {
        /// The directory to write them to (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds between refreshes (at least 0.1).
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_watch, allow_hyphen_values = true)]
    pub interval: Duration,
    /// Order of the rows: cpu, runs, avg, mem (most first), id, name.
    #[arg(long, value_name = "KEY", value_enum, default_value = "cpu")]
    pub sort: crate::top::SortKey,
    /// Only programs whose name, type or holder's process name contains
    /// TEXT (case-insensitive).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub filter: String,
    /// One JSON object per program per interval, one per line (also when
    /// stdout is not a terminal).
    #[arg(long)]
    pub json: bool,
    /// Stop after SECS seconds; otherwise q, Ctrl-C or SIGTERM stop it.
    #[arg(short = 'd', long = "duration", value_name = "SECS", value_parser = parse_interval, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The TOML config file.
    #[arg(long, value_name = "FILE", default_value = crate::daemon::config::DEFAULT_PATH)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Trace open(2), openat(2) and openat2(2) with their results.
    Open(TraceOpenArgs),
    /// Trace TCP connects (IPv4 and IPv6) with addresses, ports and result.
    Connect(TraceConnectArgs),
    /// Trace execve(2) and execveat(2) with arguments, parent and result.
    Exec(TraceExecArgs),
}

#[derive(Debug, Args)]
pub struct TraceExecArgs {
    #[command(flatten)]
    pub(crate) common: TraceCommon,
    /// Arguments kept per exec (1-64).
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) max_args: u32,
    /// Add a TIME(s) column: seconds since the start.
    #[arg(short = 'T', long = "timestamp", conflicts_with = "count")]
    pub(crate) timestamps: bool,
}

#[derive(Debug, Args)]
pub struct TraceConnectArgs {
    #[command(flatten)]
    pub(crate) common: TraceCommon,
    /// Only these destination ports (comma-separated, e.g. 80,443).
    #[arg(short = 'P', long = "port", value_name = "PORTS", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) ports: Vec<u16>,
    /// How to observe connects: auto picks kprobe, then fentry, then the
    /// tracepoint, whichever the kernel has.
    #[arg(long, value_enum, default_value_t = crate::trace::connect::Probe::Auto)]
    pub(crate) probe: crate::trace::connect::Probe,
}

#[derive(Debug, Subcommand)]
pub enum HistCommand {
    /// Run queue latency: from a task's wakeup to its running.
    Runq(HistCommon),
    /// System call latency, one histogram per system call.
    Syscall(HistSyscallArgs),
    /// Block I/O latency, one histogram per device and operation (read,
    /// write, other), from issue to completion.
    Block(HistCommon),
}

#[derive(Debug, Args)]
pub struct HistSyscallArgs {
    #[command(flatten)]
    pub(crate) common: HistCommon,
    /// Only these system calls (names, e.g. nanosleep read); default: all.
    #[arg(value_name = "NAME")]
    pub(crate) names: Vec<String>,
}

/// The task filters every tracer and `kscope hist` take, applied in the
/// kernel.
#[derive(Debug, Args)]
pub struct TaskFilters {
    /// Only this process (thread group) id (1 or more).
    #[arg(short = 'p', long = "pid", value_name = "PID", value_parser = parse_task_id)]
    pub(crate) pid: Option<u32>,
    /// Only this thread id (1 or more).
    #[arg(short = 't', long = "tid", value_name = "TID", value_parser = parse_task_id)]
    pub(crate) tid: Option<u32>,
    /// Only this user id.
    #[arg(short = 'u', long = "uid", value_name = "UID")]
    pub(crate) uid: Option<u32>,
    /// Only processes whose name contains COMM (at most 15 bytes).
    #[arg(short = 'n', long = "name", value_name = "COMM")]
    pub(crate) comm: Option<String>,
    /// Only tasks in this cgroup v2 directory or in a cgroup below it
    /// (e.g. /sys/fs/cgroup/system.slice/docker-ID.scope).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub(crate) cgroup: Option<std::path::PathBuf>,
}

impl TaskFilters {
    pub(crate) fn filters(&self) -> crate::trace::Filters {
        crate::trace::Filters {
            pid: self.pid,
            tid: self.tid,
            uid: self.uid,
            comm: self.comm.clone(),
            cgroup: self.cgroup.clone(),
        }
    }
}

/// Filters and output options every `kscope hist` takes.
#[derive(Debug, Args)]
pub struct HistCommon {
    #[command(flatten)]
    pub(crate) filters: TaskFilters,
    /// Stop after SECS seconds (default: until Ctrl-C or SIGTERM), and
    /// print the histograms.
    #[arg(short = 'd', long = "duration", value_name = "SECS", value_parser = parse_interval, allow_hyphen_values = true)]
    pub(crate) duration: Option<Duration>,
    /// Print the histograms of each SECS seconds (what was added since the
    /// last ones), not only at the end.
    #[arg(long, value_name = "SECS", value_parser = parse_watch)]
    pub(crate) interval: Option<Duration>,
    /// One JSON object per histogram, one per line.
    #[arg(long)]
    pub(crate) json: bool,
    /// One histogram per cgroup too: each names its cgroup (CGROUP, the
    /// container id where the path names one; `cgroup_id`, `cgroup` and
    /// `container_id` in JSON).
    #[arg(long)]
    pub(crate) per_cgroup: bool,
}

/// Filters and output options every tracer takes.
#[derive(Debug, Args)]
pub(crate) struct TraceCommon {
    #[command(flatten)]
    pub(crate) filters: TaskFilters,
    /// Stop after SECS seconds (default: until Ctrl-C or SIGTERM).
    #[arg(short = 'd', long = "duration", value_name = "SECS", value_parser = parse_interval, allow_hyphen_values = true)]
    pub(crate) duration: Option<Duration>,
    /// One JSON object per event (or per count), one per line.
    #[arg(long)]
    pub(crate) json: bool,
    /// Count events per key in the kernel and print the totals at exit,
    /// most first, instead of every event.
    #[arg(short = 'c', long = "count")]
    pub(crate) count: bool,
    /// Ring buffer size in bytes: a power of two, at least a page (default
    /// per tracer: 2 MiB for open, 4 MiB for exec, 1 MiB for connect).
    /// Events that find it full are counted as lost.
    #[arg(long, value_name = "BYTES", conflicts_with = "count")]
    pub(crate) buffer_size: Option<u32>,
}

#[derive(Debug, Args)]
pub struct TraceOpenArgs {
    #[command(flatten)]
    pub(crate) common: TraceCommon,
    /// Only failed opens.
    #[arg(short = 'x', long = "failed")]
    pub(crate) failed: bool,
    /// Add a TIME(s) column: seconds since the start.
    #[arg(short = 'T', long = "timestamp", conflicts_with = "count")]
    pub(crate) timestamps: bool,
}

#[derive(Debug, Subcommand)]
pub enum FwCommand {
    /// Load the XDP program, attach it to IFACE and pin it under
    /// /sys/fs/bpf/kscope/IFACE/; it keeps running after kscope exits.
    Attach {
        /// Interface to attach to.
        iface: String,
        /// XDP mode: auto tries native (driver) mode and falls back to skb
        /// (generic) mode.
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
        /// Verdict for IP packets no rule matches; with drop, only
        /// allow-listed sources pass.
        #[arg(long = "default", value_enum, default_value_t = Policy::Pass)]
        default_policy: Policy,
        /// Token buckets the rate limiter holds (an LRU: past this many
        /// sources the least recently seen bucket is recycled).
        #[arg(long, value_name = "N", default_value_t = kscope_common::fw::LIMIT_TABLE_DEFAULT,
              value_parser = parse_limit_table)]
        limit_table: u32,
        /// Count packets per source address for `fw top`, in an LRU table of
        /// N sources (0, the default, counts nothing; see the README for the
        /// cost).
        #[arg(long, value_name = "N", default_value_t = 0, value_parser = parse_track_sources)]
        track_sources: u32,
    },
    /// Block source prefixes (IPv4 or IPv6 CIDRs; a bare address is one
    /// host) and/or destination ports.
    Block(PortCidrArgs),
    /// Remove block rules (source prefixes and/or ports).
    Unblock(PortCidrArgs),
    /// Allow source prefixes: allow wins over every block.
    Allow(CidrArgs),
    /// Remove allow rules.
    Disallow(CidrArgs),
    /// Rate-limit source prefixes: past a burst, at most --pps packets per
    /// second pass from each source (or from the whole prefix); the rest
    /// are dropped as rate-limited. Allow and block rules come first.
    Limit(LimitArgs),
    /// Remove the rate limits of source prefixes.
    Unlimit(CidrArgs),
    /// The heaviest sources by packets or bytes per second, with their
    /// verdicts and the rule they matched (needs attach --track-sources).
    Top(FwTopArgs),
    /// List every rule with its hit count (summed over CPUs).
    Rules {
        #[command(flatten)]
        iface: IfaceArg,
        /// One JSON object per rule, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Replace the whole rule set from FILE, atomically.
    Load {
        #[command(flatten)]
        iface: IfaceArg,
        /// Rule file: one rule per line (`block 10.0.0.0/8`, `allow
        /// 2001:db8::/32`, `block --port 53/udp`), `#` comments.
        file: PathBuf,
    },
    /// Print the current rule set in rule-file format.
    Save {
        #[command(flatten)]
        iface: IfaceArg,
    },
    /// Detach from IFACE and remove its pins.
    Detach {
        /// Interface to detach from.
        iface: String,
    },
    /// Packet and byte counters by IP family and XDP action, summed over CPUs.
    Stats(StatsArgs),
    /// Interfaces kscope is attached to, with mode, program id and attach time.
    Status {
        /// One JSON object per interface, one per line.
        #[arg(long)]
        json: bool,
    },
}

/// `--iface`, optional when kscope is attached to exactly one interface.
#[derive(Debug, Args)]
pub struct IfaceArg {
    /// Interface whose rules to use; may be left out when kscope is attached
    /// to exactly one.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("rules").required(true).multiple(true).args(["cidrs", "ports"])))]
pub struct PortCidrArgs {
    #[command(flatten)]
    pub iface: IfaceArg,
    /// Destination ports: N, N-M, optionally /tcp or /udp (both without).
    #[arg(long = "port", value_name = "N[-M][/tcp|/udp]", value_parser = parse_port)]
    pub(crate) ports: Vec<PortSpec>,
    /// Source prefixes (host bits must be clear: 10.0.0.0/8, not 10.0.0.1/8).
    #[arg(value_name = "CIDR", value_parser = parse_cidr)]
    pub(crate) cidrs: Vec<Cidr>,
}

impl PortCidrArgs {
    /// The edits this command line asks for.
    pub fn edits(&self, add: bool) -> Vec<Edit> {
        let rules = self
            .cidrs
            .iter()
            .map(|&c| Rule::Src(SrcList::Block, c))
            .chain(self.ports.iter().map(|&p| Rule::Port(p)));
        rules
            .map(|r| if add { Edit::Add(r) } else { Edit::Remove(r) })
            .collect()
    }
}

#[derive(Debug, Args)]
pub struct CidrArgs {
    #[command(flatten)]
    pub iface: IfaceArg,
    /// Source prefixes (host bits must be clear).
    #[arg(value_name = "CIDR", required = true, value_parser = parse_cidr)]
    pub(crate) cidrs: Vec<Cidr>,
}

impl CidrArgs {
    /// The edits this command line asks for.
    pub fn edits(&self, add: bool) -> Vec<Edit> {
        self.cidrs
            .iter()
            .map(|&c| {
                let r = Rule::Src(SrcList::Allow, c);
                if add { Edit::Add(r) } else { Edit::Remove(r) }
            })
            .collect()
    }
}

#[derive(Debug, Args)]
pub struct LimitArgs {
    #[command(flatten)]
    pub iface: IfaceArg,
    /// Source prefixes (host bits must be clear).
    #[arg(value_name = "CIDR", required = true, value_parser = parse_cidr)]
    pub(crate) cidrs: Vec<Cidr>,
    /// Packets per second that pass once the burst is spent.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=u64::from(kscope_common::fw::LIMIT_MAX_PPS)))]
    pub(crate) pps: u64,
    /// Packets that may pass at once (default: one second's worth, --pps).
    #[arg(long, value_name = "M")]
    pub(crate) burst: Option<u64>,
    /// One bucket per source address, or one for the whole prefix.
    #[arg(long, value_enum, default_value_t = PerArg::Source)]
    pub(crate) per: PerArg,
    /// Police only TCP SYNs without ACK (new connections); established
    /// traffic is not touched.
    #[arg(long)]
    pub(crate) syn: bool,
}

/// `--per` of `fw limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PerArg {
    Source,
    Prefix,
}

impl LimitArgs {
    /// The edits this command line asks for.
    ///
    /// # Errors
    /// A rate or burst out of range.
    pub fn edits(&self) -> Result<Vec<Edit>, crate::firewall::rules::RuleError> {
        let per = match self.per {
            PerArg::Source => Per::Source,
            PerArg::Prefix => Per::Prefix,
        };
        let spec = LimitSpec::new(self.pps, self.burst, per, self.syn)?;
        Ok(self
            .cidrs
            .iter()
            .map(|&c| Edit::Add(Rule::Limit(c, spec)))
            .collect())
    }
}

impl CidrArgs {
    /// The edits of `fw unlimit`: only the prefixes count.
    pub fn unlimit_edits(&self) -> Vec<Edit> {
        let any = LimitSpec {
            pps: 0,
            burst: 0,
            per: Per::Source,
            syn: false,
        };
        self.cidrs
            .iter()
            .map(|&c| Edit::Remove(Rule::Limit(c, any)))
            .collect()
    }
}

#[derive(Debug, Args)]
pub struct FwTopArgs {
    #[command(flatten)]
    pub iface: IfaceArg,
    /// How many sources to show.
    #[arg(short = 'n', value_name = "N", default_value_t = 20)]
    pub n: usize,
    /// Sort by packets or bytes per second over the interval, or by the
    /// totals since each source was first seen.
    #[arg(long, value_enum, default_value_t = crate::firewall::top::By::Pps)]
    pub by: crate::firewall::top::By,
    /// Print the table again every SECS seconds (at least 0.1) until Ctrl-C;
    /// without it, one table over one second.
    #[arg(long, value_name = "SECS", value_parser = parse_watch, allow_hyphen_values = true)]
    pub watch: Option<Duration>,
    /// One JSON object per source per line.
    #[arg(long)]
    pub json: bool,
}

fn parse_track_sources(s: &str) -> Result<u32, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("not a whole number: {s:?}"))?;
    crate::firewall::check_track_sources(n)
}

fn parse_limit_table(s: &str) -> Result<u32, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("not a whole number: {s:?}"))?;
    crate::firewall::check_limit_table(n)
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
        .map_err(|e: crate::firewall::rules::RuleError| e.reason())
}

fn parse_port(s: &str) -> Result<PortSpec, String> {
    s.parse()
        .map_err(|e: crate::firewall::rules::RuleError| e.reason())
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Interface to show; all attached interfaces when left out.
    pub(crate) iface: Option<String>,
    /// Print per-second rates every SECS seconds (at least 0.1) until Ctrl-C.
    #[arg(long, value_name = "SECS", value_parser = parse_watch, allow_hyphen_values = true)]
    pub(crate) watch: Option<Duration>,
    /// Show each CPU's counters instead of the sum.
    #[arg(long)]
    pub(crate) per_cpu: bool,
    /// One JSON object per interface, one per line.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Samples per second on each CPU.
    #[arg(short = 'F', long, value_name = "HZ", default_value_t = 49,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) frequency: u64,
    /// Sample only this CPU (default: every online CPU).
    #[arg(short = 'C', long, value_name = "CPU")]
    pub(crate) cpu: Option<u32>,
    /// Sample only these processes (repeat, or separate with commas).
    #[arg(short = 'p', long = "pid", value_name = "PID", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) pids: Vec<u32>,
    /// Sample only tasks in this cgroup v2 directory or in a cgroup below
    /// it.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub(crate) cgroup: Option<PathBuf>,
    /// Stop after SECS seconds (default: at Ctrl-C or SIGTERM).
    #[arg(short = 'd', long, value_name = "SECS", value_parser = parse_duration,
          allow_hyphen_values = true)]
    pub(crate) duration: Option<Duration>,
    /// Write folded stacks (flamegraph.pl's input) to FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) folded: Option<PathBuf>,
    /// Write an SVG flame graph to FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) svg: Option<PathBuf>,
    /// Write the profile to FILE as gzipped pprof (profile.proto), for
    /// `go tool pprof`, Pyroscope or Parca.
    #[arg(long, value_name = "FILE")]
    pub(crate) pprof: Option<PathBuf>,
    /// Print the aggregated stacks as one JSON document instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// How many functions the table shows.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
    pub(crate) top: usize,
    /// User stacks only.
    #[arg(short = 'U', long, conflicts_with = "kernel_only")]
    pub(crate) user_only: bool,
    /// Kernel stacks only.
    #[arg(short = 'K', long)]
    pub(crate) kernel_only: bool,
    /// Keep samples of the idle task (pid 0), shown as [idle]. Not with
    /// -p: the idle task is no process of those.
    #[arg(short = 'I', long, conflicts_with_all = ["pids", "off_cpu"])]
    pub(crate) include_idle: bool,
    /// Off-CPU time by stack instead of on-CPU samples: how long threads
    /// were blocked or waiting, in microseconds, from sched:sched_switch.
    #[arg(long, conflicts_with_all = ["frequency", "cpu"])]
    pub(crate) off_cpu: bool,
    /// Show progress on stderr even when it is not a terminal.
    #[arg(long)]
    pub(crate) progress: bool,
    /// Distinct stacks the kernel can store; raise it when stacks are lost
    /// with "stack map full" or "eexist".
    #[arg(long, value_name = "N", default_value_t = kscope_common::profile::DEFAULT_STACK_ENTRIES,
          value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub(crate) stack_storage: u32,
    /// Walk user stacks by frame pointer only, without the unwind tables
    /// built from .eh_frame (stacks of code built without frame pointers
    /// then stop early).
    #[arg(long, conflicts_with = "kernel_only")]
    pub(crate) no_dwarf: bool,
    /// Memory for unwind tables in the kernel, allocated whole at the
    /// start; files that no longer fit are walked by frame pointer.
    #[arg(long, value_name = "MIB", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) unwind_memory: u32,
}

/// `kscope completions SHELL`: the completion script for `shell`.
///
/// # Errors
/// A failed write.
pub fn completions(
    shell: clap_complete::Shell,
    w: &mut impl std::io::Write,
) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    let mut cmd = Cli::command();
    // clap_complete panics on a failed write; render into memory first.
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "kscope", &mut buf);
    w.write_all(&buf)?;
    w.flush()
}

/// `kscope man DIR`: writes kscope.1 and one page per verb (hidden ones
/// left out) into `dir`, creating it; returns the pages' paths, sorted.
///
/// # Errors
/// The directory cannot be created or a page written.
pub fn man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                (n == "kscope.1" || n.starts_with("kscope-")) && n.ends_with(".1")
            })
        })
        .collect();
    pages.sort();
    Ok(pages)
}

/// Parses `-d`: a positive number of seconds, at most a day.
fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_seconds(s, "duration")
}

/// Parses a `--watch` interval: a positive number of seconds, at most a day.
/// A pid or tid filter. 0 is refused: the kernel programs read 0 as "no
/// filter", so it would trace every task, and the idle task it names makes
/// no syscalls to trace.
fn parse_task_id(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("0 would match every task; ids start at 1".into()),
        Ok(id) => Ok(id),
        Err(e) => Err(format!("not a task id: {e}")),
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    parse_seconds(s, "interval")
}

/// Shortest `fw stats --watch` interval. Each tick reads every CPU's
/// counters of every interface and prints a table; shorter intervals only
/// busy-loop and flood the terminal (1e-9 printed about 10,000 lines a
/// second), and rates over a few milliseconds are mostly noise.
pub const MIN_WATCH: Duration = Duration::from_millis(100);

/// Parses `fw stats --watch`: seconds, from [`MIN_WATCH`] to a day.
fn parse_watch(s: &str) -> Result<Duration, String> {
    let d = parse_seconds(s, "interval")?;
    if d < MIN_WATCH {
        return Err(format!(
            "the interval must be at least {} seconds, got {s}",
            MIN_WATCH.as_secs_f64()
        ));
    }
    Ok(d)
}

fn parse_seconds(s: &str, what: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!(
            "the {what} must be greater than 0 seconds, got {s}"
        ));
    }
    if secs > 86_400.0 {
        return Err(format!("the {what} must be at most 86400 seconds, got {s}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kscope").chain(args.iter().copied()))
    }

    #[test]
    fn watch_rejects_zero_negative_and_garbage() {
        for bad in ["0", "-1", "-0.5", "abc", "nan", "inf", "100000"] {
            let err = parse(&["fw", "stats", "--watch", bad]).expect_err(bad);
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad}: {err}"
            );
        }
    }

    /// Defect: `--watch 1e-9` busy-looped at about 10,000 lines a second.
    #[test]
    fn watch_rejects_intervals_below_the_minimum() {
        for bad in ["1e-9", "0.000001", "0.05", "0.0999"] {
            let err = parse(&["fw", "stats", "--watch", bad]).expect_err(bad);
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("at least 0.1 seconds"), "{err}");
        }
        let cli = parse(&["fw", "stats", "--watch", "0.1"]).expect("the minimum itself");
        let Command::Fw(FwCommand::Stats(s)) = cli.command else {
            panic!("wrong command: {cli:?}");
        };
        assert_eq!(s.watch, Some(MIN_WATCH));
    }

    #[test]
    fn watch_accepts_fractions() {
        let cli = parse(&["fw", "stats", "eth0", "--watch", "0.5", "--json"]).expect("parses");
        let Command::Fw(FwCommand::Stats(s)) = cli.command else {
            panic!("wrong command: {cli:?}");
        };
        assert_eq!(s.watch, Some(Duration::from_millis(500)));
        assert_eq!(s.iface.as_deref(), Some("eth0"));
        assert!(s.json && !s.per_cpu);
    }

    #[test]
    fn attach_mode_defaults_to_auto_and_rejects_unknown_modes() {
        let cli = parse(&["fw", "attach", "eth0"]).expect("parses");
        let Command::Fw(FwCommand::Attach {
            iface,
            mode,
            default_policy,
            limit_table,
            track_sources,
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(
            (
                iface.as_str(),
                mode,
                default_policy,
                limit_table,
                track_sources
            ),
            ("eth0", Mode::Auto, Policy::Pass, 65_536, 0)
        );
        for (n, ok) in [
            ("0", true),
            ("4194304", true),
            ("4194305", false),
            ("x", false),
        ] {
            let r = parse(&["fw", "attach", "eth0", "--track-sources", n]);
            assert_eq!(r.is_ok(), ok, "--track-sources {n}");
        }
        for (size, ok) in [
            ("1024", true),
            ("16777216", true),
            ("1023", false),
            ("16777217", false),
            ("-1", false),
        ] {
            let r = parse(&["fw", "attach", "eth0", "--limit-table", size]);
            assert_eq!(r.is_ok(), ok, "--limit-table {size}");
        }
        assert!(parse(&["fw", "attach", "eth0", "--default", "drop"]).is_ok());
        let err = parse(&["fw", "attach", "eth0", "--default", "reject"]).expect_err("bad policy");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(parse(&["fw", "attach", "eth0", "--mode", "skb"]).is_ok());
        assert!(parse(&["fw", "attach", "eth0", "--mode", "native"]).is_ok());
        let err = parse(&["fw", "attach", "eth0", "--mode", "offload"]).expect_err("bad mode");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn limit_takes_a_rate_a_burst_and_who_shares_the_bucket() {
        let cli =
            parse(&["fw", "limit", "10.0.0.0/8", "2001:db8::/32", "--pps", "50"]).expect("parses");
        let Command::Fw(FwCommand::Limit(a)) = cli.command else {
            panic!("wrong command");
        };
        let edits = a.edits().expect("in range");
        assert_eq!(edits.len(), 2);
        let Edit::Add(Rule::Limit(c, spec)) = edits[0] else {
            panic!("{edits:?}");
        };
        assert_eq!(c.to_string(), "10.0.0.0/8");
        // The burst defaults to one second of the rate.
        assert_eq!(
            spec,
            LimitSpec {
                pps: 50,
                burst: 50,
                per: Per::Source,
                syn: false
            }
        );
        let cli = parse(&[
            "fw",
            "limit",
            "10.0.0.0/8",
            "--pps",
            "5",
            "--burst",
            "9",
            "--per",
            "prefix",
            "--syn",
        ])
        .expect("parses");
        let Command::Fw(FwCommand::Limit(a)) = cli.command else {
            panic!("wrong command");
        };
        let Edit::Add(Rule::Limit(_, spec)) = a.edits().expect("in range")[0] else {
            panic!("not a limit");
        };
        assert_eq!(
            spec,
            LimitSpec {
                pps: 5,
                burst: 9,
                per: Per::Prefix,
                syn: true
            }
        );
        for bad in [
            &["fw", "limit", "10.0.0.0/8"][..],
            &["fw", "limit", "--pps", "5"],
            &["fw", "limit", "10.0.0.0/8", "--pps", "0"],
            &["fw", "limit", "10.0.0.0/8", "--pps", "100000001"],
            &["fw", "limit", "10.0.0.1/8", "--pps", "5"],
            &["fw", "limit", "10.0.0.0/8", "--pps", "5", "--per", "host"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        // A burst is checked against the rate once both are known.
        let cli =
            parse(&["fw", "limit", "10.0.0.0/8", "--pps", "2", "--burst", "7201"]).expect("parses");
        let Command::Fw(FwCommand::Limit(a)) = cli.command else {
            panic!("wrong command");
        };
        let e = a.edits().expect_err("burst over an hour of the rate");
        assert!(e.to_string().contains("--burst must be 1 to 7200"), "{e}");
    }

    #[test]
    fn attach_and_detach_need_an_interface() {
        for verb in ["attach", "detach"] {
            let err = parse(&["fw", verb]).expect_err(verb);
            assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        }
    }

    fn profile(args: &[&str]) -> Result<ProfileArgs, clap::Error> {
        let mut all = vec!["profile"];
        all.extend_from_slice(args);
        match parse(&all)?.command {
            Command::Profile(p) => Ok(p),
            c => panic!("wrong command: {c:?}"),
        }
    }

    #[test]
    fn profile_defaults_to_49_hz_everywhere_until_stopped() {
        let p = profile(&[]).expect("parses");
        assert_eq!(p.frequency, 49);
        assert_eq!((p.cpu, p.duration), (None, None));
        assert!(p.pids.is_empty());
        assert_eq!(p.top, 20);
        assert!(!(p.user_only || p.kernel_only || p.include_idle || p.json));
    }

    #[test]
    fn profile_pids_repeat_or_take_comma_lists() {
        let p = profile(&[
            "-p", "10,20", "-p", "30", "-F", "99", "-C", "1", "-d", "2.5",
        ])
        .expect("parses");
        assert_eq!(p.pids, [10, 20, 30]);
        assert_eq!((p.frequency, p.cpu), (99, Some(1)));
        assert_eq!(p.duration, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn profile_rejects_bad_values() {
        use clap::error::ErrorKind;
        for (args, kind) in [
            (&["-F", "0"][..], ErrorKind::ValueValidation),
            (&["-F", "100001"], ErrorKind::ValueValidation),
            (&["-p", "0"], ErrorKind::ValueValidation),
            (&["-p", "abc"], ErrorKind::ValueValidation),
            (&["-d", "0"], ErrorKind::ValueValidation),
            (&["-d", "-3"], ErrorKind::ValueValidation),
            (&["-C", "-1"], ErrorKind::UnknownArgument),
            (&["-U", "-K"], ErrorKind::ArgumentConflict),
            (&["-p", "1", "-I"], ErrorKind::ArgumentConflict),
        ] {
            let err = profile(args).expect_err(&format!("{args:?}"));
            assert_eq!(err.kind(), kind, "{args:?}: {err}");
        }
    }

    #[test]
    fn trace_open_flags_parse_like_opensnoop() {
        let cli = parse(&[
            "trace", "open", "-p", "12", "-u", "0", "-n", "cat", "-x", "-T", "-d", "1.5", "--json",
        ])
        .expect("parses");
        let Command::Trace(TraceCommand::Open(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(
            (a.common.filters.pid, a.common.filters.uid),
            (Some(12), Some(0))
        );
        assert_eq!(a.common.filters.comm.as_deref(), Some("cat"));
        assert_eq!(a.common.duration, Some(Duration::from_millis(1500)));
        assert!(a.failed && a.timestamps && a.common.json);
        assert!(!a.common.count);
        for bad in [
            &["trace", "open", "-d", "0"][..],
            &["trace", "open", "-p", "x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trace_open_count_takes_filters_but_not_timestamps() {
        for args in [
            &["trace", "open", "-c"][..],
            &["trace", "open", "--count", "-x", "-n", "cat", "--json"],
        ] {
            let cli = parse(args).expect("parses");
            let Command::Trace(TraceCommand::Open(a)) = cli.command else {
                panic!("wrong command");
            };
            assert!(a.common.count, "{args:?}");
        }
        let err = parse(&["trace", "open", "-c", "-T"]).expect_err("-c with -T");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn every_tracer_counts_with_c_and_takes_a_buffer_size_only_when_printing() {
        for verb in ["open", "exec", "connect"] {
            let cli = parse(&["trace", verb, "-c"]).expect("parses");
            let Command::Trace(t) = cli.command else {
                panic!("wrong command");
            };
            let common = match t {
                TraceCommand::Open(a) => a.common,
                TraceCommand::Exec(a) => a.common,
                TraceCommand::Connect(a) => a.common,
            };
            assert!(common.count, "{verb}");
            let e = parse(&["trace", verb, "-c", "--buffer-size", "4096"]).expect_err(verb);
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
            assert!(parse(&["trace", verb, "--buffer-size", "4096"]).is_ok());
        }
        let e = parse(&["trace", "exec", "-c", "-T"]).expect_err("-c with -T");
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn trace_connect_ports_and_probe_kinds_parse() {
        let cli = parse(&[
            "trace", "connect", "-P", "80,443", "-c", "--probe", "fentry",
        ])
        .expect("parses");
        let Command::Trace(TraceCommand::Connect(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(a.ports, vec![80, 443]);
        assert!(a.common.count);
        assert_eq!(a.probe, crate::trace::connect::Probe::Fentry);
        for bad in [
            &["trace", "connect", "-P", "0"][..],
            &["trace", "connect", "-P", "70000"],
            &["trace", "connect", "--probe", "uprobe"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rule_verbs_validate_the_whole_command_line() {
        let cli = parse(&[
            "fw",
            "block",
            "--iface",
            "eth0",
            "10.0.0.0/8",
            "--port",
            "53/udp",
            "2001:db8::1",
        ])
        .expect("parses");
        let Command::Fw(FwCommand::Block(b)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(b.iface.iface.as_deref(), Some("eth0"));
        assert_eq!(b.edits(true).len(), 3);
        assert!(matches!(
            b.edits(false)[0],
            Edit::Remove(Rule::Src(SrcList::Block, _))
        ));
        for bad in [
            &["fw", "block", "10.0.0.0/8", "10.0.0.0/33"][..],
            &["fw", "block", "::1/129"],
            &["fw", "block", "1.2.3"],
            &["fw", "block", "10.0.0.1/8"],
            &["fw", "block", "--port", "65536"],
            &["fw", "block", "--port", "53/sctp"],
            &["fw", "unblock", "--port", "9-1"],
            &["fw", "allow", "192.0.2.0/33"],
        ] {
            let err = parse(bad).expect_err(&bad.join(" "));
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
        for empty in [
            &["fw", "block"][..],
            &["fw", "allow"],
            &["fw", "disallow", "--iface", "x"],
        ] {
            let err = parse(empty).expect_err(&empty.join(" "));
            assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        }
        // Allow has no --port.
        assert!(parse(&["fw", "allow", "--port", "22", "10.0.0.0/8"]).is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
