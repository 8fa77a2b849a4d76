//! The `kscope trace` and `kscope hist` verbs, from parsed arguments to
//! output: events, counts or histograms go to the writer given (stdout),
//! the end-of-run summary to stderr.

use std::io::{self, Write};

use super::{
    Run, Stop, Summary, TraceError, block, connect, exec, hist::HistRun, open, runner, runq,
    syscall,
};
use crate::{
    cli::{HistCommand, HistCommon, TraceCommand, TraceCommon},
    output::Format,
};

/// The runtime every verb here runs on: one thread, the caller's.
fn runtime() -> Result<tokio::runtime::Runtime, TraceError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(TraceError::Runtime)
}

/// How a run that ended with `stop` ends the verb: output nobody reads
/// any more is a broken pipe, as a write to it would have been.
fn ended(stop: Stop) -> Result<(), TraceError> {
    if stop == Stop::OutputClosed {
        return Err(io::Error::from(io::ErrorKind::BrokenPipe).into());
    }
    Ok(())
}

/// `kscope trace open|exec|connect`: traces until the duration ends, a
/// signal arrives or nobody reads the output any more, then reports the
/// totals on stderr.
///
/// # Errors
/// As [`super::run`], and [`TraceError::Runtime`]. Output nobody reads any
/// more ends the run as a broken pipe ([`TraceError::Io`]), which the
/// binary treats as success.
pub fn run(cmd: TraceCommand, w: impl Write) -> Result<(), TraceError> {
    let rt = runtime()?;
    let out = io::BufWriter::with_capacity(64 * 1024, w);
    let (what, summary) = match cmd {
        TraceCommand::Open(a) => {
            let opts = open::OpenOpts {
                failed_only: a.failed,
            };
            let run = trace_run(&a.common, a.timestamps)?;
            (
                "open",
                rt.block_on(super::run::<open::Open, _>(&opts, &run, out)),
            )
        }
        TraceCommand::Exec(a) => {
            let opts = exec::ExecOpts {
                max_args: a.max_args,
            };
            let run = trace_run(&a.common, a.timestamps)?;
            (
                "exec",
                rt.block_on(super::run::<exec::Exec, _>(&opts, &run, out)),
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
                rt.block_on(super::run::<connect::Connect, _>(&opts, &run, out)),
            )
        }
    };
    let (summary, stop) = summary?;
    super::report(what, &summary);
    ended(stop)
}

fn trace_run(c: &TraceCommon, timestamps: bool) -> Result<Run, TraceError> {
    Ok(Run {
        filters: c.filters.filters(),
        duration: c.duration,
        count: c.count,
        timestamps,
        format: Format::json(c.json),
        ring_bytes: c.buffer_size.map(super::check_ring_bytes).transpose()?,
    })
}

/// `kscope hist runq|syscall|block`: measures until the duration ends or
/// a signal arrives, printing the histograms at the end (and every
/// `--interval`), then reports the totals on stderr.
///
/// # Errors
/// As [`runner::run_hist`]: capabilities, tracefs, a missing kernel
/// feature, a verifier rejection, a bad filter or syscall name, output
/// errors (a broken pipe, which the binary treats as success).
pub fn run_hist(cmd: HistCommand, w: impl Write) -> Result<(), TraceError> {
    let rt = runtime()?;
    let out = io::BufWriter::with_capacity(64 * 1024, w);
    let (what, result) = match cmd {
        HistCommand::Runq(c) => (
            "runq",
            rt.block_on(runner::run_hist::<runq::Runq, _>(&(), &hist_run(&c), out)),
        ),
        HistCommand::Block(c) => (
            "block",
            rt.block_on(runner::run_hist::<block::Block, _>(&(), &hist_run(&c), out)),
        ),
        HistCommand::Syscall(a) => {
            let opts = syscall::SyscallOpts {
                nrs: syscall::resolve(&a.names)?,
            };
            (
                "syscall",
                rt.block_on(runner::run_hist::<syscall::Syscall, _>(
                    &opts,
                    &hist_run(&a.common),
                    out,
                )),
            )
        }
    };
    let (summary, stop) = result?;
    hist_report(what, &summary);
    ended(stop)
}

fn hist_run(c: &HistCommon) -> HistRun {
    HistRun {
        filters: c.filters.filters(),
        duration: c.duration,
        interval: c.interval,
        format: Format::json(c.json),
        by_cgroup: c.per_cgroup,
    }
}

/// The end-of-run summary on stderr: `kscope hist WHAT: N latencies, M
/// lost`.
fn hist_report(what: &str, s: &Summary) {
    use std::io::Write as _;
    let mut err = io::stderr().lock();
    let _ = writeln!(
        err,
        "kscope hist {what}: {} latencies, {} lost",
        s.events, s.lost
    );
}
