//! The `kscope profile` verb, from parsed arguments to output: sample
//! until the duration ends or a signal arrives, then write the files asked
//! for and the table (or the JSON report) to the writer given (stdout).
//! Progress and the summary go to stderr.

use std::{
    fs::File,
    io::{self, BufWriter, IsTerminal as _, Write},
    path::Path,
    time::Duration,
};

use super::{Options, ProfileError, Progress, report, symbolize::Sides};
use crate::cli::ProfileArgs;

/// Rows of `mib` MiB of unwind tables.
pub(crate) fn unwind_rows(mib: u32) -> u32 {
    let rows = (u64::from(mib) << 20) / size_of::<kscope_common::profile::UnwindRow>() as u64;
    u32::try_from(rows).unwrap_or(u32::MAX)
}

/// `kscope profile`.
///
/// # Errors
/// As [`super::run`]; [`ProfileError::Signals`], a `--folded`, `--svg` or
/// `--pprof` file that cannot be written, or [`ProfileError::Output`].
pub fn run(args: &ProfileArgs, mut w: impl Write) -> Result<(), ProfileError> {
    let opts = Options {
        frequency: args.frequency,
        cpu: args.cpu,
        pids: args.pids.clone(),
        cgroup: args.cgroup.clone(),
        include_idle: args.include_idle,
        sides: Sides {
            kernel: !args.user_only,
            user: !args.kernel_only,
        },
        stack_storage: args.stack_storage,
        off_cpu: args.off_cpu,
        dwarf: !args.no_dwarf,
        unwind_rows: unwind_rows(args.unwind_memory),
    };
    let stop = crate::sys::stop_on_signals().map_err(ProfileError::Signals)?;
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
    let progress: Option<Progress<'_>> = (tty || args.progress).then_some(&mut show);
    let report = super::run(&opts, args.duration, &stop, progress)?;
    if tty {
        eprint!("\r\x1b[K");
    }
    tracing::info!("{}", report::summary(&report));

    if let Some(path) = &args.folded {
        write_file(path, |w| report::write_folded(w, &report.stacks))?;
    }
    if let Some(path) = &args.svg {
        write_file(path, |w| {
            if opts.off_cpu {
                report::write_svg(w, &report.stacks, "kscope profile --off-cpu", "us")
            } else {
                report::write_svg(w, &report.stacks, "kscope profile", "samples")
            }
        })?;
    }
    if let Some(path) = &args.pprof {
        write_file(path, |w| super::pprof::write(w, &report))?;
    }
    let written = if args.json {
        serde_json::to_writer(&mut w, &report)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(w))
    } else {
        let top = report::top_functions(&report.stacks, args.top);
        report::write_table(&mut w, &top, report.samples)
    };
    written
        .and_then(|()| w.flush())
        .map_err(ProfileError::Output)
}

/// Creates `path` and writes it with `write`.
fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<(), ProfileError> {
    let file = File::create(path).map_err(|source| ProfileError::Create {
        path: path.to_path_buf(),
        source,
    })?;
    let mut w = BufWriter::new(file);
    write(&mut w)
        .and_then(|()| w.flush())
        .map_err(|source| ProfileError::Write {
            path: path.to_path_buf(),
            source,
        })
}
