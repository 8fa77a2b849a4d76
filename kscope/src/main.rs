use std::{
    io::{self, IsTerminal as _, Write},
    process::ExitCode,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser as _;
use kscope::{
    cli::{Cli, Command, FwCommand, ProfileArgs, StatsArgs, TraceCommand, TraceCommon},
    demo,
    firewall::{self, FwError, counters, maps::Edit, rules::RuleSet},
    output::{Align, Column, Format, Output},
    profile::{self, ProfileError, report},
    sys::SysError,
    trace::TraceError,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
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
    e.chain()
        .filter_map(|c| {
            c.downcast_ref::<io::Error>()
                .or_else(|| match c.downcast_ref() {
                    Some(TraceError::Io(io)) => Some(io),
                    _ => None,
                })
        })
        .any(|io| io.kind() == io::ErrorKind::BrokenPipe)
}

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
        FwError::Sys(SysError::BpffsUnavailable { .. }) => {
            "mount it with `mount -t bpf bpf /sys/fs/bpf`".into()
        }
        _ => return None,
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fw(FwCommand::Attach {
            iface,
            mode,
            default_policy,
        }) => {
            let a = firewall::attach(&iface, mode, default_policy)?;
            tracing::info!(
                "attached {} to {} ({} mode, default {}, program id {}); pinned under {}",
                kscope_common::fw::PROG_FW_XDP,
                a.iface,
                a.mode,
                a.default_policy,
                a.prog_id,
                a.pin_dir.display()
            );
            Ok(())
        }
        Command::Fw(FwCommand::Block(a)) => edit(a.iface.iface.as_deref(), &a.edits(true)),
        Command::Fw(FwCommand::Unblock(a)) => edit(a.iface.iface.as_deref(), &a.edits(false)),
        Command::Fw(FwCommand::Allow(a)) => edit(a.iface.iface.as_deref(), &a.edits(true)),
        Command::Fw(FwCommand::Disallow(a)) => edit(a.iface.iface.as_deref(), &a.edits(false)),
        Command::Fw(FwCommand::Rules { iface, json }) => rules(iface.iface.as_deref(), json),
        Command::Fw(FwCommand::Load { iface, file }) => {
            // The whole file is validated before any map is touched.
            let set = RuleSet::read(&file)?;
            let (iface, mut maps, _lock) =
                firewall::open_rules("kscope fw load", iface.iface.as_deref(), true)?;
            let start = Instant::now();
            let r = maps.load(&set)?;
            tracing::info!(
                "{iface}: loaded {} rules from {} in {:.0?} (slot {})",
                r.rules,
                file.display(),
                start.elapsed(),
                r.slot
            );
            Ok(())
        }
        Command::Fw(FwCommand::Save { iface }) => {
            let (_, maps, _) =
                firewall::open_rules("kscope fw save", iface.iface.as_deref(), false)?;
            let text = maps.rule_set()?.to_text();
            io::stdout().lock().write_all(text.as_bytes())?;
            Ok(())
        }
        Command::Fw(FwCommand::Detach { iface }) => {
            firewall::detach(&iface)?;
            tracing::info!("detached from {iface} and removed its pins");
            Ok(())
        }
        Command::Fw(FwCommand::Status { json }) => status(json),
        Command::Fw(FwCommand::Stats(args)) => stats(&args),
        Command::Trace(t) => trace(t),
        Command::Profile(args) => profile(&args),
        Command::Daemon(a) => kscope::daemon::run(&a.config),
        Command::Demo => {
            let stop = demo::stop_on_signals().context("installing signal handlers")?;
            demo::run(&mut io::stdout().lock(), stop)
        }
    }
}

fn trace(cmd: TraceCommand) -> anyhow::Result<()> {
    use kscope::trace::{connect, exec, open};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let out = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let (what, summary) = match cmd {
        TraceCommand::Open(a) => {
            let opts = open::OpenOpts {
                failed_only: a.failed,
            };
            let run = trace_run(&a.common, a.timestamps)?;
            (
                "open",
                rt.block_on(kscope::trace::run::<open::Open, _>(&opts, &run, out)),
            )
        }
        TraceCommand::Exec(a) => {
            let opts = exec::ExecOpts {
                max_args: a.max_args,
            };
            let run = trace_run(&a.common, a.timestamps)?;
            (
                "exec",
                rt.block_on(kscope::trace::run::<exec::Exec, _>(&opts, &run, out)),
            )
        }
        TraceCommand::Connect(a) => {
            let opts = connect::ConnectOpts {
                ports: a.ports,
                probe: a.probe,
            };
            let run = trace_run(&a.common, false)?;
            (
                "connect",
                rt.block_on(kscope::trace::run::<connect::Connect, _>(&opts, &run, out)),
            )
        }
    };
    let (summary, stop) = summary?;
    kscope::trace::report(what, &summary);
    if stop == kscope::trace::Stop::OutputClosed {
        // As a write to it would have: exit 0 (see is_broken_pipe).
        return Err(io::Error::from(io::ErrorKind::BrokenPipe).into());
    }
    Ok(())
}

fn trace_run(c: &TraceCommon, timestamps: bool) -> anyhow::Result<kscope::trace::Run> {
    Ok(kscope::trace::Run {
        filters: kscope::trace::Filters {
            pid: c.pid,
            tid: c.tid,
            uid: c.uid,
            comm: c.comm.clone(),
        },
        duration: c.duration,
        count: c.count,
        timestamps,
        format: kscope::output::Format::json(c.json),
        ring_bytes: c
            .buffer_size
            .map(kscope::trace::check_ring_bytes)
            .transpose()?,
    })
}

fn edit(iface: Option<&str>, edits: &[Edit]) -> anyhow::Result<()> {
    let (iface, mut maps, _lock) = firewall::open_rules("kscope fw rule changes", iface, true)?;
    let r = maps.apply(edits)?;
    let mut msg = format!("{iface}: {} added, {} removed", r.added, r.removed);
    if r.unchanged > 0 {
        msg.push_str(&format!(", {} already in place", r.unchanged));
    }
    tracing::info!("{msg}");
    Ok(())
}

fn rules(iface: Option<&str>, json: bool) -> anyhow::Result<()> {
    use kscope::firewall::rules::{Rule, SrcList};
    let (iface, maps, _) = firewall::open_rules("kscope fw rules", iface, false)?;
    let all = maps.rules_with_hits()?;
    let cols = vec![
        Column::left("IFACE", "iface", 15),
        Column::left("RULE", "rule", 44),
        Column::json("action"),
        Column::json("kind"),
        Column::json("target"),
        Column::right("HITS", "hits", 14),
    ];
    let mut out = Output::new(io::stdout().lock(), Format::json(json), cols);
    out.header()?;
    for r in &all {
        let (action, kind, target) = match &r.rule {
            Rule::Src(SrcList::Allow, c) => ("allow", "src", c.to_string()),
            Rule::Src(SrcList::Block, c) => ("block", "src", c.to_string()),
            Rule::Port(p) => ("block", "port", p.to_string()),
        };
        out.row(|row| {
            row.str(&iface)?;
            row.display(r.rule)?;
            row.str(action)?;
            row.str(kind)?;
            row.str(&target)?;
            row.u64(r.hits)
        })?;
    }
    out.flush()?;
    Ok(())
}

fn status(json: bool) -> anyhow::Result<()> {
    let all = firewall::status()?;
    if all.is_empty() && !json {
        tracing::info!("kscope is not attached to any interface");
        return Ok(());
    }
    let cols = vec![
        Column::left("IFACE", "iface", 15),
        Column::json("ifindex"),
        Column::left("MODE", "mode", 6),
        Column::left("DEFAULT", "default_policy", 7),
        Column::right("PROG ID", "prog_id", 8),
        Column::right("LINK ID", "link_id", 8),
        Column::left("ATTACHED AT", "attached_at", 20),
        Column::json("attached_at_unix"),
        Column::json("attached"),
        Column::table("STATE", 0, Align::Left),
    ];
    let mut out = Output::new(io::stdout().lock(), Format::json(json), cols);
    out.header()?;
    for s in &all {
        out.row(|r| {
            r.str(&s.iface)?;
            r.u64(s.ifindex.into())?;
            r.str(s.mode)?;
            r.str(s.default_policy)?;
            r.u64(s.prog_id.into())?;
            r.u64(s.link_id.into())?;
            r.str(&s.attached_at)?;
            r.u64(s.attached_at_unix)?;
            r.bool(s.attached)?;
            r.str(if s.attached {
                "attached"
            } else {
                "interface gone (run fw detach to clean up)"
            })
        })?;
    }
    out.flush()?;
    Ok(())
}

fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    kscope::sys::require_caps("kscope fw stats", &[kscope::sys::Cap::Bpf])?;
    kscope::sys::ensure_bpffs()?;
    let ifaces = match &args.iface {
        Some(i) => vec![i.clone()],
        None => {
            let all = firewall::attached_ifaces()?;
            if all.is_empty() {
                bail!("kscope is not attached to any interface");
            }
            all
        }
    };
    let read_all = || -> Result<Vec<_>, FwError> {
        ifaces.iter().map(|i| firewall::read_counters(i)).collect()
    };
    let format = Format::json(args.json);
    let mut out = io::stdout().lock();
    let Some(interval) = args.watch else {
        let all = read_all()?;
        let reasons: Vec<_> = ifaces
            .iter()
            .map(|i| firewall::read_reasons(i).map(|r| r.sum_reasons()))
            .collect::<Result<_, _>>()?;
        let stats: Vec<_> = ifaces
            .iter()
            .zip(&all)
            .zip(&reasons)
            .map(|((iface, counters), reasons)| counters::IfaceStats {
                iface,
                counters,
                reasons,
            })
            .collect();
        counters::write_stats(out, format, &stats, args.per_cpu)?;
        return Ok(());
    };

    let stop = demo::stop_on_signals().context("installing signal handlers")?;
    let mut before: Vec<_> = read_all()?.iter().map(|pc| pc.sum()).collect();
    let mut at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Sleep in short steps so Ctrl-C ends the watch promptly.
        let deadline = at + interval;
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(100)));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now: Vec<_> = read_all()?.iter().map(|pc| pc.sum()).collect();
        let elapsed = at.elapsed();
        at = Instant::now();
        let rates: Vec<_> = ifaces
            .iter()
            .zip(&now)
            .zip(&before)
            .map(|((iface, n), b)| (iface.as_str(), n.rates_since(b, elapsed)))
            .collect();
        counters::write_rates(&mut out, format, elapsed, &rates)?;
        before = now;
    }
    Ok(())
}

fn profile(args: &ProfileArgs) -> anyhow::Result<()> {
    let opts = profile::Options {
        frequency: args.frequency,
        cpu: args.cpu,
        pids: args.pids.clone(),
        include_idle: args.include_idle,
        sides: profile::symbolize::Sides {
            kernel: !args.user_only,
            user: !args.kernel_only,
        },
        stack_storage: args.stack_storage,
    };
    let stop = demo::stop_on_signals().context("installing signal handlers")?;
    let tty = io::stderr().is_terminal();
    let mut show = |elapsed: Duration, samples: u64| {
        let line = format!(
            "sampling: {:.1}s elapsed, {samples} samples",
            elapsed.as_secs_f64()
        );
        // On a terminal the line is redrawn in place; elsewhere (--progress
        // into a log) each update is a line of its own.
        if tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    };
    let progress: Option<profile::Progress<'_>> = (tty || args.progress).then_some(&mut show);
    let report = profile::run(&opts, args.duration, &stop, progress)?;
    if tty {
        eprint!("\r\x1b[K");
    }
    tracing::info!("{}", report::summary(&report));

    let write_file = |path: &std::path::Path,
                      write: &dyn Fn(&mut io::BufWriter<std::fs::File>) -> io::Result<()>|
     -> anyhow::Result<()> {
        let mut w = io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        write(&mut w)
            .and_then(|()| w.flush())
            .with_context(|| format!("writing {}", path.display()))
    };
    if let Some(path) = &args.folded {
        write_file(path, &|w| report::write_folded(w, &report.stacks))?;
    }
    if let Some(path) = &args.svg {
        write_file(path, &|w| {
            report::write_svg(w, &report.stacks, "kscope profile")
        })?;
    }
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        let top = report::top_functions(&report.stacks, args.top);
        report::write_table(&mut out, &top, report.samples)?;
    }
    out.flush()?;
    Ok(())
}
