//! Command-line interface definitions. Parsing lives in the library so unit
//! tests can check argument validation without running anything.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::firewall::Mode;

/// kscope: an eBPF toolkit for Linux — XDP firewall and packet counters,
/// kernel tracing.
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
    /// Show the packet counter at work in a private pair of network
    /// namespaces, then tear everything down.
    Demo,
}

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Trace open(2), openat(2) and openat2(2) with their results.
    Open(TraceOpenArgs),
    /// Trace TCP connects (IPv4 and IPv6) with addresses, ports and result.
    Connect(TraceConnectArgs),
}

#[derive(Debug, Args)]
pub struct TraceConnectArgs {
    #[command(flatten)]
    pub common: TraceCommon,
    /// Only these destination ports (comma-separated, e.g. 80,443).
    #[arg(short = 'P', long = "port", value_name = "PORTS", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Count connects per (pid, comm, daddr, dport) and print them at exit.
    #[arg(short = 'c', long = "count")]
    pub count: bool,
    /// How to observe connects: auto picks kprobe, then fentry, then the
    /// tracepoint, whichever the kernel has.
    #[arg(long, value_enum, default_value_t = crate::trace::connect::Probe::Auto)]
    pub probe: crate::trace::connect::Probe,
}

/// Filters and output options every tracer takes.
#[derive(Debug, Args)]
pub struct TraceCommon {
    /// Only this process (thread group) id.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Only this thread id.
    #[arg(short = 't', long = "tid", value_name = "TID")]
    pub tid: Option<u32>,
    /// Only this user id.
    #[arg(short = 'u', long = "uid", value_name = "UID")]
    pub uid: Option<u32>,
    /// Only processes whose name contains COMM (at most 15 bytes).
    #[arg(short = 'n', long = "name", value_name = "COMM")]
    pub comm: Option<String>,
    /// Stop after SECS seconds (default: until Ctrl-C or SIGTERM).
    #[arg(short = 'd', long = "duration", value_name = "SECS", value_parser = parse_interval, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// One JSON object per event, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TraceOpenArgs {
    #[command(flatten)]
    pub common: TraceCommon,
    /// Only failed opens.
    #[arg(short = 'x', long = "failed")]
    pub failed: bool,
    /// Add a TIME(s) column: seconds since the start.
    #[arg(short = 'T', long = "timestamp")]
    pub timestamps: bool,
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

/// Parses a `--watch` interval: a positive number of seconds, at most a day.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!(
            "the interval must be greater than 0 seconds, got {s}"
        ));
    }
    if secs > 86_400.0 {
        return Err(format!(
            "the interval must be at most 86400 seconds, got {s}"
        ));
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

    #[test]
    fn trace_open_flags_parse_like_opensnoop() {
        let cli = parse(&[
            "trace", "open", "-p", "12", "-u", "0", "-n", "cat", "-x", "-T", "-d", "1.5", "--json",
        ])
        .expect("parses");
        let Command::Trace(TraceCommand::Open(a)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!((a.common.pid, a.common.uid), (Some(12), Some(0)));
        assert_eq!(a.common.comm.as_deref(), Some("cat"));
        assert_eq!(a.common.duration, Some(Duration::from_millis(1500)));
        assert!(a.failed && a.timestamps && a.common.json);
        for bad in [
            &["trace", "open", "-d", "0"][..],
            &["trace", "open", "-p", "x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
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
        assert!(a.count);
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
    fn clap_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
