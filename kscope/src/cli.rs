//! Command-line interface definitions. Parsing lives in the library so unit
//! tests can check argument validation without running anything.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::firewall::Mode;

/// kscope: an eBPF toolkit for Linux — XDP firewall and packet counters, CPU
/// profiler.
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
    /// Sample on-CPU stacks (kernel and user) with a perf_event program and
    /// show the hottest functions, folded stacks or a flame graph.
    Profile(ProfileArgs),
    /// Show the packet counter at work in a private pair of network
    /// namespaces, then tear everything down.
    Demo,
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

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Interface to show; all attached interfaces when left out.
    pub iface: Option<String>,
    /// Print per-second rates every SECS seconds until Ctrl-C.
    #[arg(long, value_name = "SECS", value_parser = parse_interval, allow_hyphen_values = true)]
    pub watch: Option<Duration>,
    /// Show each CPU's counters instead of the sum.
    #[arg(long)]
    pub per_cpu: bool,
    /// One JSON object per interface, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Samples per second on each CPU.
    #[arg(short = 'F', long, value_name = "HZ", default_value_t = 49,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub frequency: u64,
    /// Sample only this CPU (default: every online CPU).
    #[arg(short = 'C', long, value_name = "CPU")]
    pub cpu: Option<u32>,
    /// Sample only these processes (repeat, or separate with commas).
    #[arg(short = 'p', long = "pid", value_name = "PID", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,
    /// Stop after SECS seconds (default: at Ctrl-C or SIGTERM).
    #[arg(short = 'd', long, value_name = "SECS", value_parser = parse_duration,
          allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// Write folded stacks (flamegraph.pl's input) to FILE.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,
    /// Write an SVG flame graph to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Print the aggregated stacks as one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// How many functions the table shows.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// User stacks only.
    #[arg(short = 'U', long, conflicts_with = "kernel_only")]
    pub user_only: bool,
    /// Kernel stacks only.
    #[arg(short = 'K', long)]
    pub kernel_only: bool,
    /// Keep samples of the idle task (pid 0), shown as [idle].
    #[arg(short = 'I', long)]
    pub include_idle: bool,
    /// Show progress on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Distinct stacks the kernel can store; raise it when stacks are lost
    /// with "stack map full" or "eexist".
    #[arg(long, value_name = "N", default_value_t = kscope_common::profile::DEFAULT_STACK_ENTRIES,
          value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub stack_storage: u32,
}

/// Parses `-d`: a positive number of seconds, at most a day.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_seconds(s, "duration")
}

/// Parses a `--watch` interval: a positive number of seconds, at most a day.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    parse_seconds(s, "interval")
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
        let Command::Fw(FwCommand::Attach { iface, mode }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!((iface.as_str(), mode), ("eth0", Mode::Auto));
        assert!(parse(&["fw", "attach", "eth0", "--mode", "skb"]).is_ok());
        assert!(parse(&["fw", "attach", "eth0", "--mode", "native"]).is_ok());
        let err = parse(&["fw", "attach", "eth0", "--mode", "offload"]).expect_err("bad mode");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
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
        ] {
            let err = profile(args).expect_err(&format!("{args:?}"));
            assert_eq!(err.kind(), kind, "{args:?}: {err}");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
