//! `kscope top`: checks, statistics on, then the screen or JSON lines
//! until `-d`, `q`, Ctrl-C or SIGTERM; statistics go off when it returns.

use std::{
    io::{self, BufWriter, IsTerminal as _, Write as _},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::{Collector, StatsGuard, TopError, check_caps, json, screen, view};
use crate::{cli::TopArgs, sys};

/// How often a wait looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Runs `kscope top`.
///
/// Minimum kernel: 5.8 (BPF_ENABLE_STATS). Needs CAP_SYS_ADMIN.
///
/// # Errors
/// A missing capability or kernel feature (one line naming it), or
/// writing the output failing.
pub fn run(args: &TopArgs) -> Result<(), TopError> {
    check_caps("kscope top")?;
    let stop = sys::stop_on_signals()?;
    let _stats = StatsGuard::enable()?;
    let mut c = Collector::new(true)?;
    c.refresh()?;
    let end = args.duration.map(|d| Instant::now() + d);
    if args.json || !io::stdout().is_terminal() {
        eprintln!(
            "kscope top: {} programs, a snapshot every {}s (ready)",
            c.len(),
            args.interval.as_secs_f64()
        );
        json_lines(args, &mut c, &stop, end)
    } else {
        screen::run(&mut c, args.sort, &args.filter, args.interval, &stop, end)
    }
}

/// Sleeps until `until` or until `stop` is set; true when stopped.
pub(crate) fn wait(stop: &AtomicBool, until: Instant) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        std::thread::sleep((until - now).min(POLL));
    }
}

fn json_lines(
    args: &TopArgs,
    c: &mut Collector,
    stop: &AtomicBool,
    end: Option<Instant>,
) -> Result<(), TopError> {
    let mut out = BufWriter::new(io::stdout().lock());
    let mut next = Instant::now() + args.interval;
    loop {
        // The last snapshot is taken at the end of `-d`, so a run shorter
        // than an interval still prints one.
        let (until, last) = match end {
            Some(e) if e <= next => (e, true),
            _ => (next, false),
        };
        if wait(stop, until) {
            return Ok(());
        }
        c.refresh()?;
        let ts = sys::unix_now_ns();
        for p in view(c, args.sort, &args.filter) {
            json::write_prog(&mut out, c, p, ts)?;
        }
        out.flush()?;
        if last {
            return Ok(());
        }
        next += args.interval;
        // A refresh that overran (a stopped process) skips ticks rather
        // than running them back to back.
        let now = Instant::now();
        if next < now {
            next = now + args.interval;
        }
    }
}
