use std::{
    io::{self, IsTerminal as _},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Parser as _;
use kscope::{
    cli::{Cli, Command, FwCommand},
    demo,
    firewall::FwError,
    output::Format,
    profile::ProfileError,
    sys::SysError,
    top::TopError,
    trace::TraceError,
};

fn main() -> ExitCode {
    // The demo's own children: an internal entry point, not a verb (so no
    // help, completions or manual page shows it).
    if let Some(task) = demo::ChildTask::from_args(std::env::args()) {
        return match demo::child(task) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout with exit 0; usage errors print one line
/// (clap's first) and exit 2.
fn clap_exit(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments");
            eprintln!("{first}");
            eprintln!("hint: see `kscope help` or add --help to any verb");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KSCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let color = std::env::var_os("NO_COLOR").is_none() && io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(color)
        .with_target(false)
        .without_time()
        .init();
}

/// A write to a stdout nobody reads: `kscope ... | head -1` is done, which
/// is success. The io::Error may sit inside a module's error (a
/// transparent variant hides it from the source chain).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    let broken = |io: &io::Error| io.kind() == io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>().is_some_and(broken)
            || matches!(c.downcast_ref(), Some(TraceError::Io(io)) if broken(io))
            || c.downcast_ref::<FwError>()
                .is_some_and(FwError::is_broken_pipe)
            || c.downcast_ref::<ProfileError>()
                .is_some_and(ProfileError::is_broken_pipe)
            || c.downcast_ref::<TopError>()
                .is_some_and(TopError::is_broken_pipe)
    })
}

/// The hint for errors from a missing kernel feature.
const DOCTOR: &str = "run kscope doctor";

/// A next step for errors that have one.
fn hint(e: &anyhow::Error) -> Option<String> {
    if let Some(p) = e.chain().find_map(|c| c.downcast_ref::<ProfileError>()) {
        return Some(match p {
            ProfileError::Sys(SysError::MissingCapabilities { .. }) => "run kscope as root".into(),
            ProfileError::FrequencyTooHigh { .. } => {
                "lower -F, or raise the limit with `sysctl kernel.perf_event_max_sample_rate=N`"
                    .into()
            }
            ProfileError::NoSuchCpu { .. } => "leave out -C to sample every CPU".into(),
            ProfileError::Attach { .. } => DOCTOR.into(),
            _ => return None,
        });
    }
    if let Some(t) = e.chain().find_map(|c| c.downcast_ref::<TraceError>()) {
        return Some(match t {
            TraceError::Sys(SysError::MissingCapabilities { .. }) => "run kscope as root".into(),
            TraceError::Sys(SysError::TracefsUnavailable { .. })
            | TraceError::Unsupported { .. } => DOCTOR.into(),
            _ => return None,
        });
    }
    if let Some(t) = e.chain().find_map(|c| c.downcast_ref::<TopError>()) {
        return Some(match t {
            TopError::Sys(SysError::MissingCapabilities { .. }) => "run kscope as root".into(),
            TopError::StatsUnsupported { .. } => DOCTOR.into(),
            _ => return None,
        });
    }
    let fw = e.chain().find_map(|c| c.downcast_ref::<FwError>())?;
    Some(match fw {
        FwError::AlreadyAttached { iface, .. } => format!("run `kscope fw detach {iface}` first"),
        FwError::NativeUnsupported { iface, .. } => {
            format!("retry with `kscope fw attach {iface} --mode skb`")
        }
        FwError::Busy { iface } => {
            format!("see `ip link show {iface}` and `bpftool net` for the program holding it")
        }
        FwError::NotAttached(_) | FwError::NothingAttached => {
            "`kscope fw status` lists attached interfaces".into()
        }
        FwError::NoRule(_) => "`kscope fw rules` lists the rules in place".into(),
        FwError::Sys(SysError::MissingCapabilities { .. }) => "run kscope as root".into(),
        FwError::NoXdpLink => DOCTOR.into(),
        FwError::Sys(SysError::BpffsUnavailable { .. }) => {
            "mount it with `mount -t bpf bpf /sys/fs/bpf`".into()
        }
        _ => return None,
    })
}

/// One call per verb; errors go back to `main` as they are.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    use kscope::{firewall::cmd as fw, profile::cmd as profile, trace::cmd as trace};
    let stdout = || io::stdout().lock();
    match cli.command {
        Command::Fw(FwCommand::Attach {
            iface,
            mode,
            default_policy,
            limit_table,
            track_sources,
        }) => fw::attach(
            &iface,
            mode,
            default_policy,
            kscope::firewall::Sizes {
                limit_table,
                track_sources,
            },
        )?,
        Command::Fw(FwCommand::Block(a)) => fw::edit(a.iface.iface.as_deref(), &a.edits(true))?,
        Command::Fw(FwCommand::Unblock(a)) => fw::edit(a.iface.iface.as_deref(), &a.edits(false))?,
        Command::Fw(FwCommand::Allow(a)) => fw::edit(a.iface.iface.as_deref(), &a.edits(true))?,
        Command::Fw(FwCommand::Disallow(a)) => fw::edit(a.iface.iface.as_deref(), &a.edits(false))?,
        Command::Fw(FwCommand::Limit(a)) => fw::edit(a.iface.iface.as_deref(), &a.edits()?)?,
        Command::Fw(FwCommand::Top(a)) => kscope::firewall::top::top(
            a.iface.iface.as_deref(),
            a.n,
            a.by,
            a.watch.unwrap_or(std::time::Duration::from_secs(1)),
            a.watch.is_some(),
            !a.json && io::stdout().is_terminal(),
            Format::json(a.json || (a.watch.is_some() && !io::stdout().is_terminal())),
            stdout(),
        )?,
        Command::Fw(FwCommand::Unlimit(a)) => {
            fw::edit(a.iface.iface.as_deref(), &a.unlimit_edits())?
        }
        Command::Fw(FwCommand::Rules { iface, json }) => {
            fw::rules(iface.iface.as_deref(), Format::json(json), stdout())?
        }
        Command::Fw(FwCommand::Load { iface, file }) => fw::load(iface.iface.as_deref(), &file)?,
        Command::Fw(FwCommand::Save { iface }) => fw::save(iface.iface.as_deref(), stdout())?,
        Command::Fw(FwCommand::Detach { iface }) => fw::detach(&iface)?,
        Command::Fw(FwCommand::Status { json }) => fw::status(Format::json(json), stdout())?,
        Command::Fw(FwCommand::Stats(args)) => fw::stats(&args, stdout())?,
        Command::Trace(t) => trace::run(t, stdout())?,
        Command::Hist(h) => kscope::trace::cmd::run_hist(h, stdout())?,
        Command::Profile(args) => profile::run(&args, stdout())?,
        Command::Top(a) => kscope::top::cmd::run(&a)?,
        Command::Daemon(a) => kscope::daemon::run(&a.config)?,
        Command::Demo => {
            let stop = kscope::sys::stop_on_signals().context("installing signal handlers")?;
            demo::run(&mut stdout(), stop)?
        }
        Command::Completions { shell } => kscope::cli::completions(shell, &mut stdout())?,
        Command::Man { dir } => {
            let pages = kscope::cli::man_pages(&dir)
                .with_context(|| format!("writing the manual pages to {}", dir.display()))?;
            tracing::info!("wrote {} manual pages to {}", pages.len(), dir.display());
        }
        Command::Doctor { json } => return Ok(kscope::doctor::run(Format::json(json), stdout())?),
    }
    Ok(ExitCode::SUCCESS)
}
