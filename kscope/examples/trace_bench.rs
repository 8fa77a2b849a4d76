//! `cargo xtask bench trace`: `kscope trace open` next to bpftrace (and BCC's
//! opensnoop where it runs), measured in one run. Needs root. Not a test.
//!
//! - startup: from spawning the tool to its readiness line (kscope: the
//!   "(ready)" line on stderr; bpftrace: a `BEGIN` printf, which runs once
//!   every probe is attached), the median of 5 starts;
//! - peak RSS: VmHWM of the tool's process after the overhead runs;
//! - overhead: extra ns per openat(2) of a missing path, against the same
//!   loop with no tracer, with the tool printing each event into a pipe that
//!   is read and discarded, or only counting in the kernel (kscope's `-c`,
//!   bpftrace's `count()`);
//! - throughput: the highest offered rate (opens/s, from one paced
//!   generator thread) that kscope delivered with zero loss.

use std::{
    ffi::CString,
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use kscope::trace::{Summary, parse_summary};

const OPENS: u64 = 400_000;
const MISSING: &str = "/nonexistent/kscope-trace-bench";

/// A running tracer whose output is read on threads: the readiness stream
/// is kept (for kscope's summary line), the other thrown away.
struct Tool {
    child: Child,
    startup: Duration,
    watched: mpsc::Receiver<String>,
}

/// How long a tool may take to exit once asked to (bpftrace prints its maps
/// first), and to hand over its output: past that, the bench kills it and
/// says so in its row, instead of waiting for ever on a busy machine.
const EXIT_LIMIT: Duration = Duration::from_secs(60);

/// Waits for `child` at most `limit`; past it, SIGTERM, then SIGKILL five
/// seconds later, and an error that says so.
fn wait_bounded(child: &mut Child, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (signal, grace) in [
        (libc::SIGTERM, Duration::from_secs(5)),
        (libc::SIGKILL, Duration::from_secs(5)),
    ] {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let sent = Instant::now();
        while sent.elapsed() < grace {
            if child.try_wait()?.is_some() {
                anyhow::bail!(
                    "did not exit within {} s (stopped with signal {signal})",
                    limit.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    anyhow::bail!("did not exit within {} s, nor on SIGKILL", limit.as_secs())
}

fn spawn(cmd: &mut Command, ready_on_stderr: bool) -> anyhow::Result<Tool> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (watch, discard): (Box<dyn std::io::Read + Send>, Box<dyn std::io::Read + Send>) =
        if ready_on_stderr {
            (Box::new(stderr), Box::new(stdout))
        } else {
            (Box::new(stdout), Box::new(stderr))
        };
    let (done, watched) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(watch);
        let mut all = String::new();
        let mut line = String::new();
        let mut sent = false;
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if !sent && (line.contains("(ready)") || line.trim() == "kscope-bench-ready") {
                let _ = tx.send(());
                sent = true;
            }
            if all.len() < 1 << 16 {
                all.push_str(&line);
            }
            line.clear();
        }
        let _ = done.send(all);
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut d = discard;
        while d.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = wait_bounded(&mut child, Duration::ZERO);
        anyhow::bail!("the tool did not report readiness within 30 s (stopped)");
    }
    Ok(Tool {
        child,
        startup: start.elapsed(),
        watched,
    })
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Time per openat(2) of a missing path over `n` calls.
fn open_loop(n: u64) -> Duration {
    let path = CString::new(MISSING).expect("path");
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: a valid NUL-terminated path; a (never expected) success is closed.
        let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
        if fd >= 0 {
            // SAFETY: fd was just returned by openat.
            unsafe { libc::close(fd) };
        }
    }
    start.elapsed() / u32::try_from(n).unwrap_or(u32::MAX)
}

/// Stops the tool with SIGINT; returns what its watched stream printed.
fn stop(mut t: Tool) -> anyhow::Result<String> {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(t.child.id() as i32, libc::SIGINT) };
    wait_bounded(&mut t.child, EXIT_LIMIT).context("after SIGINT")?;
    t.watched
        .recv_timeout(EXIT_LIMIT)
        .context("its output did not end (a child still holds it?)")
}

/// `cmd`'s output, the command stopped if it runs past [`EXIT_LIMIT`].
fn bounded_output(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = out.as_mut() {
            let _ = std::io::Read::read_to_end(s, &mut v);
        }
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = err.as_mut() {
            let _ = std::io::Read::read_to_end(s, &mut v);
        }
        v
    });
    let status = wait_bounded(&mut child, EXIT_LIMIT).map_err(std::io::Error::other)?;
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The summary line among a tracer's stderr lines.
fn summary(stderr: &str) -> anyhow::Result<Summary> {
    stderr
        .lines()
        .find_map(parse_summary)
        .with_context(|| format!("no summary line in:\n{stderr}"))
}

struct Row {
    tool: String,
    startup_ms: Option<f64>,
    rss_mib: Option<f64>,
    overhead_ns: Option<f64>,
}

/// Median per-call time of `runs` loops of `n` openat(2).
fn open_median(runs: usize, n: u64) -> Duration {
    let mut v: Vec<Duration> = (0..runs).map(|_| open_loop(n)).collect();
    v.sort();
    v[runs / 2]
}

/// Times a tool is started: the row shows the median (odd, so it is one of
/// them; a single start moves by tens of ms when the machine is busy).
const STARTS: usize = 5;

fn measure(tool: &str, cmd: &mut Command, on_stderr: bool, base: Duration) -> anyhow::Result<Row> {
    let mut starts = Vec::with_capacity(STARTS);
    for _ in 1..STARTS {
        let t = spawn(cmd, on_stderr)?;
        starts.push(t.startup);
        stop(t)?;
    }
    let t = spawn(cmd, on_stderr)?;
    starts.push(t.startup);
    starts.sort();
    // Warm up, then measure.
    open_loop(OPENS / 10);
    let per = open_median(5, OPENS / 4);
    let rss = peak_rss_kib(t.child.id());
    stop(t)?;
    Ok(Row {
        tool: tool.into(),
        startup_ms: Some(starts[STARTS / 2].as_secs_f64() * 1e3),
        rss_mib: Some(rss as f64 / 1024.0),
        overhead_ns: Some(per.as_nanos() as f64 - base.as_nanos() as f64),
    })
}

/// A row for a tool that could not be measured, saying why.
fn failed_row(tool: &str, e: &anyhow::Error) -> Row {
    Row {
        tool: format!("{tool}: failed: {e:#}"),
        startup_ms: None,
        rss_mib: None,
        overhead_ns: None,
    }
}

/// Offers `rate` opens/s for 2 s from a paced thread traced by kscope (only
/// that thread, `-t`); returns (generated, delivered, lost).
fn throughput(kscope: &str, rate: u64) -> anyhow::Result<(u64, u64, u64)> {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let gen_thread = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() } as u32).ok();
        if go_rx.recv().is_err() {
            return 0;
        }
        let path = CString::new(MISSING).expect("path");
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while n < due {
                // SAFETY: as in open_loop.
                let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
                if fd >= 0 {
                    // SAFETY: fd was just returned by openat.
                    unsafe { libc::close(fd) };
                }
                n += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        n
    });
    let tid = tid_rx.recv()?.to_string();
    let t = spawn(
        Command::new(kscope).args(["trace", "open", "-t", &tid]),
        true,
    )?;
    go_tx.send(())?;
    let generated = gen_thread
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))?;
    std::thread::sleep(Duration::from_millis(300));
    let s = summary(&stop(t)?)?;
    Ok((generated, s.events, s.lost))
}

/// Two threads open as fast as they can for 2 s, traced by kscope on its
/// default buffer (only those threads, by name); returns (generated,
/// delivered, lost).
fn two_producers(kscope: &str) -> anyhow::Result<(u64, u64, u64)> {
    let t = spawn(
        Command::new(kscope).args(["trace", "open", "-n", "kscope-bgen"]),
        true,
    )?;
    let gens: Vec<_> = (0..2)
        .map(|_| {
            std::thread::Builder::new()
                .name("kscope-bgen".into())
                .spawn(|| {
                    let path = CString::new(MISSING).expect("path");
                    let start = Instant::now();
                    let mut n = 0u64;
                    while start.elapsed() < Duration::from_secs(2) {
                        for _ in 0..1000 {
                            // SAFETY: as in open_loop.
                            let fd = unsafe {
                                libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY)
                            };
                            if fd >= 0 {
                                // SAFETY: fd was just returned by openat.
                                unsafe { libc::close(fd) };
                            }
                        }
                        n += 1000;
                    }
                    n
                })
        })
        .collect::<Result<_, _>>()?;
    let mut generated = 0;
    for g in gens {
        generated += g
            .join()
            .map_err(|_| anyhow::anyhow!("generator panicked"))?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = summary(&stop(t)?)?;
    Ok((generated, s.events, s.lost))
}

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.prec$}"))
}

fn main() -> anyhow::Result<()> {
    let kscope = std::env::var("KSCOPE_BIN").unwrap_or_else(|_| "target/release/kscope".into());
    let load_start = loadavg();
    open_loop(OPENS / 10);
    let base = open_median(5, OPENS / 4);
    eprintln!("baseline: {} ns per openat", base.as_nanos());
    let mut rows = Vec::new();
    for (name, args) in [
        ("kscope trace open (printing)", &["trace", "open"][..]),
        (
            "kscope trace open --json (printing)",
            &["trace", "open", "--json"],
        ),
        ("kscope trace open -c (counting)", &["trace", "open", "-c"]),
    ] {
        match measure(name, Command::new(&kscope).args(args), true, base) {
            Ok(r) => rows.push(r),
            Err(e) => rows.push(failed_row(name, &e)),
        }
    }
    let bt = |prog: &str| {
        let mut c = Command::new("bpftrace");
        c.args([
            "-e",
            &format!("BEGIN {{ printf(\"kscope-bench-ready\\n\"); }} {prog}"),
        ]);
        c
    };
    for (name, prog) in [
        (
            "bpftrace printf (printing)",
            "tracepoint:syscalls:sys_exit_openat { printf(\"%d %d %s %d\\n\", pid, tid, comm, args->ret); }",
        ),
        (
            "bpftrace count() (counting)",
            "tracepoint:syscalls:sys_exit_openat { @c = count(); }",
        ),
        (
            "bpftrace count() by comm (counting)",
            "tracepoint:syscalls:sys_exit_openat { @c[comm] = count(); }",
        ),
    ] {
        match measure(name, &mut bt(prog), false, base) {
            Ok(r) => rows.push(r),
            Err(e) => rows.push(failed_row(name, &e)),
        }
    }
    match bounded_output(Command::new("opensnoop-bpfcc").arg("-d").arg("1")) {
        Ok(o) if o.status.success() => rows.push(Row {
            tool: "opensnoop-bpfcc: runs here, not yet measured".into(),
            startup_ms: None,
            rss_mib: None,
            overhead_ns: None,
        }),
        Ok(o) => rows.push(Row {
            tool: format!("opensnoop-bpfcc: fails here: {}", {
                let err = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                // BCC's own diagnosis, where it gives one, beats the last
                // line of a Python traceback.
                err.lines()
                    .find(|l| l.contains("kernel headers"))
                    .or_else(|| err.lines().last())
                    .unwrap_or("?")
                    .to_owned()
            }),
            startup_ms: None,
            rss_mib: None,
            overhead_ns: None,
        }),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => rows.push(Row {
            tool: format!("opensnoop-bpfcc: {e}"),
            startup_ms: None,
            rss_mib: None,
            overhead_ns: None,
        }),
        Err(_) => rows.push(Row {
            tool: "opensnoop-bpfcc: not installed (bpfcc-tools)".into(),
            startup_ms: None,
            rss_mib: None,
            overhead_ns: None,
        }),
    }

    // Noise: the same baseline again after every tool has run, and the
    // machine's load, as the kernel reports it, at both ends.
    let base_end = open_median(5, OPENS / 4);
    println!(
        "Baseline: {} ns per openat(2) of a missing path with no tracer ({} ns after the tools ran; load average {load_start} at the start, {} at the end).\n",
        base.as_nanos(),
        base_end.as_nanos(),
        loadavg()
    );
    println!(
        "| tool | start to attached (ms) | peak RSS (MiB) | overhead per openat (ns) | ratio to baseline |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        let ratio = r
            .overhead_ns
            .map(|o| (o + base.as_nanos() as f64) / base.as_nanos() as f64);
        println!(
            "| {} | {} | {} | {} | {} |",
            r.tool,
            opt(r.startup_ms, 1),
            opt(r.rss_mib, 1),
            opt(r.overhead_ns, 0),
            opt(ratio, 2)
        );
    }

    println!("\n| offered opens/s (one thread) | generated | delivered | lost |");
    println!("|---:|---:|---:|---:|");
    let mut best = None;
    for rate in [50_000u64, 100_000, 200_000, 400_000, 800_000] {
        let (g, d, l) = throughput(&kscope, rate)?;
        println!("| {rate} | {g} | {d} | {l} |");
        if l == 0 && d == g {
            best = Some(g as f64 / 2.0);
        }
    }
    println!(
        "\nHighest rate delivered with zero loss: {}",
        best.map_or_else(
            || "none of the offered rates".into(),
            |b| format!("{b:.0} events/s")
        )
    );
    let (g, d, l) = two_producers(&kscope)?;
    println!(
        "\nTwo producers at full rate for 2 s (default 2 MiB buffer): {g} opens ({:.0}/s), {d} delivered, {l} lost.",
        g as f64 / 2.0
    );
    Ok(())
}
