//! The `kscope trace` verbs, from parsed arguments to output: events (or
//! counts) go to the writer given (stdout), the end-of-run summary to
//! stderr.

use std::io::{self, Write};

use super::{Run, Stop, TraceError, connect, exec, open};
use crate::{
    cli::{TraceCommand, TraceCommon},
    output::Format,
};

/// `kscope trace open|exec|connect`: traces until the duration ends, a
/// signal arrives or nobody reads the output any more, then reports the
/// totals on stderr.
///
/// # Errors
/// As [`super::run`], and [`TraceError::Runtime`]. Output nobody reads any
/// more ends the run as a broken pipe ([`TraceError::Io`]), which the
/// binary treats as success.
pub fn run(cmd: TraceCommand, w: impl Write) -> Result<(), TraceError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(TraceError::Runtime)?;
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
    if stop == Stop::OutputClosed {
        // As a write to it would have.
        return Err(io::Error::from(io::ErrorKind::BrokenPipe).into());
    }
    Ok(())
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
