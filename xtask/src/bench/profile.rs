//! `cargo xtask bench profile`: what profiling costs.
//!
//! The workload is CPU-bound: one thread per CPU, each running a fixed
//! number of iterations of a chain of dependent multiplications (inline
//! assembly, so the same cost in any build). Its wall time is measured
//! with no profiler (the baseline), under `kscope profile` at 49, 99 and
//! 999 Hz, and under bpftrace's `profile:hz:99 { @[kstack, ustack] =
//! count(); }`, all system-wide, in the same run. The configurations are
//! interleaved and repeated, and medians are reported, so slow drift on a
//! shared machine affects them alike. For each profiler it also reports
//! its own CPU time and peak RSS (wait4), the time from SIGINT to exit
//! (reading the maps, symbolizing, printing), and, for kscope, the
//! symbolization time it measures itself.

use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{Reaped, median, reap, signal};

#[cfg(test)]
mod tests {
    #[test]
    fn bpftrace_map_counts_sum() {
        let out = "Attaching 1 probe...\n\n\n@[\n    do_idle+1\n, \n    main+3\n]: 12\n@[\n]: 30\n";
        assert_eq!(super::bpftrace_samples(out), 42);
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Runs of each configuration (interleaved).
    #[arg(long, default_value_t = 5)]
    pub reps: u32,
    /// Seconds the workload takes with no profiler.
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// Leave out the no-frame-pointer tables (completeness against
    /// bpftrace and perf, and the unwinder's cost).
    #[arg(long)]
    pub skip_unwind: bool,
    /// Only the no-frame-pointer tables.
    #[arg(long, conflicts_with = "skip_unwind")]
    pub unwind_only: bool,
}

/// bpftrace's equivalent of `kscope profile -F 99`.
const BPFTRACE_PROGRAM: &str = "profile:hz:99 { @[kstack, ustack] = count(); }";

#[derive(Clone, Copy, PartialEq)]
enum Config {
    Baseline,
    Kscope(u32),
    Bpftrace,
}

impl Config {
    fn label(self) -> String {
        match self {
            Config::Baseline => "no profiler".into(),
            Config::Kscope(hz) => format!("kscope profile -F {hz}"),
            Config::Bpftrace => "bpftrace profile:hz:99".into(),
        }
    }
}

const CONFIGS: [Config; 5] = [
    Config::Baseline,
    Config::Kscope(49),
    Config::Kscope(99),
    Config::Kscope(999),
    Config::Bpftrace,
];

#[derive(Default)]
struct Samples {
    workload: Vec<f64>,
    cpu: Vec<f64>,
    exit: Vec<f64>,
    symbolize: Vec<f64>,
    rss_mib: Vec<f64>,
    samples: Vec<f64>,
}

/// The workload: `threads` threads of `iters` loop iterations each.
/// Runs inside xtask (`cargo xtask bench-workload`, hidden).
pub fn workload(iters: u64, threads: usize) {
    let handles: Vec<_> = (0..threads)
        .map(|_| std::thread::spawn(move || spin(iters)))
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

#[inline(never)]
fn spin(iters: u64) {
    let n = iters.max(1);
    // SAFETY: a register-only loop; touches no memory and no stack.
    unsafe {
        std::arch::asm!(
            "mov {x}, 3",
            ".p2align 6",
            "2:",
            "imul {x}, {x}",
            "imul {x}, {x}",
            "imul {x}, {x}",
            "imul {x}, {x}",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) n => _,
            x = out(reg) _,
            options(nomem, nostack),
        );
    }
}

fn workload_cmd(iters: u64, threads: usize) -> anyhow::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe().context("xtask's own path")?);
    cmd.args(["bench-workload", &iters.to_string(), &threads.to_string()]);
    Ok(cmd)
}

fn time_workload(iters: u64, threads: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let status = workload_cmd(iters, threads)?.status()?;
    if !status.success() {
        bail!("the workload failed: {status}");
    }
    Ok(start.elapsed().as_secs_f64())
}

/// A stream read to the end on a thread; `ready` fires on the first line
/// that `is_ready` accepts.
fn read_stream(
    stream: impl Read + Send + 'static,
    is_ready: fn(&str) -> bool,
    ready: mpsc::Sender<()>,
) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut all = String::new();
        let mut signalled = false;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if !signalled && is_ready(&line) {
                signalled = true;
                let _ = ready.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    })
}

struct Measured {
    workload: f64,
    reaped: Option<Reaped>,
    stdout: String,
    stderr: String,
}

fn measure(
    config: Config,
    kscope: &std::path::Path,
    iters: u64,
    threads: usize,
) -> anyhow::Result<Measured> {
    let mut cmd = match config {
        Config::Baseline => {
            return Ok(Measured {
                workload: time_workload(iters, threads)?,
                reaped: None,
                stdout: String::new(),
                stderr: String::new(),
            });
        }
        Config::Kscope(hz) => {
            let mut c = Command::new(kscope);
            c.args(["profile", "--json", "--progress", "-F", &hz.to_string()]);
            c
        }
        Config::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.args(["-e", BPFTRACE_PROGRAM]);
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", crate::show(&cmd)))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    // kscope reports progress once sampling runs; bpftrace says
    // "Attaching 1 probe..." once attached.
    let out = read_stream(stdout, |l| l.starts_with("Attaching"), tx.clone());
    let err = read_stream(stderr, |l| l.starts_with("sampling:"), tx);
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = signal(&child, libc::SIGKILL);
        let _ = reap(child);
        bail!(
            "{} never started sampling: {}",
            config.label(),
            err.join().unwrap_or_default()
        );
    }
    let workload = time_workload(iters, threads);
    signal(&child, libc::SIGINT)?;
    let reaped = reap(child)?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !reaped.success {
        bail!("{} failed:\n{stderr}", config.label());
    }
    Ok(Measured {
        workload: workload?,
        reaped: Some(reaped),
        stdout,
        stderr,
    })
}

/// Samples in bpftrace's printed map: the sum of its `]: COUNT` lines.
fn bpftrace_samples(stdout: &str) -> u64 {
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("]: "))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.reps == 0 || !args.secs.is_finite() || args.secs <= 0.0 {
        bail!("--reps and --secs must be positive");
    }
    let kscope = super::release_kscope()?;
    if args.unwind_only {
        return super::unwind::run(&crate::workspace_root(), &kscope);
    }
    if crate::which("bpftrace").is_none() {
        bail!("bpftrace is not installed (cargo xtask setup installs it)");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Calibrate: iterations for `secs` seconds of wall time at baseline,
    // from a short probe and then a ~1 s one (start-up costs skew the
    // short one).
    let mut iters = 20_000_000u64;
    let mut t = time_workload(iters, threads)?;
    for target in [1.0, args.secs] {
        iters = ((iters as f64) * target / t.max(1e-3)) as u64;
        if target < args.secs {
            t = time_workload(iters, threads)?;
        }
    }
    eprintln!(
        "xtask: workload: {threads} threads x {iters} iterations (~{:.1}s each)",
        args.secs
    );

    let mut results: Vec<Samples> = CONFIGS.iter().map(|_| Samples::default()).collect();
    for rep in 0..args.reps as usize {
        // Rotate the order so no configuration always runs first.
        for k in 0..CONFIGS.len() {
            let i = (rep + k) % CONFIGS.len();
            let config = CONFIGS[i];
            let m = measure(config, &kscope, iters, threads)?;
            eprintln!(
                "xtask: run {}/{}: {:<24} {:.3}s",
                rep + 1,
                args.reps,
                config.label(),
                m.workload
            );
            let r = &mut results[i];
            r.workload.push(m.workload);
            if let Some(reaped) = &m.reaped {
                r.cpu.push(reaped.cpu.as_secs_f64());
                r.exit.push(reaped.wait.as_secs_f64());
                r.rss_mib.push(reaped.max_rss_kib as f64 / 1024.0);
            }
            if config == Config::Bpftrace {
                r.samples.push(bpftrace_samples(&m.stdout) as f64);
            }
            if let Config::Kscope(_) = config {
                let v: serde_json::Value = serde_json::from_str(&m.stdout)
                    .with_context(|| format!("kscope's JSON; stderr:\n{}", m.stderr))?;
                r.symbolize
                    .push(v["symbolize_secs"].as_f64().unwrap_or(f64::NAN));
                r.samples.push(v["samples"].as_u64().unwrap_or(0) as f64);
            }
        }
    }

    let base = median(&mut results[0].workload.clone());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "Linux {}, {threads} CPUs, {} runs of each configuration, medians; workload ~{:.1}s of CPU-bound work per CPU.\n",
        release.trim(),
        args.reps,
        args.secs
    );
    println!(
        "| profiler | workload time | vs no profiler | profiler CPU time | SIGINT to exit | of which symbolization | peak RSS | samples |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let med = |xs: &[f64], fmt: &dyn Fn(f64) -> String| {
        if xs.is_empty() {
            "–".to_owned()
        } else {
            fmt(median(&mut xs.to_vec()))
        }
    };
    for (config, r) in CONFIGS.iter().zip(&results) {
        let w = median(&mut r.workload.clone());
        println!(
            "| {} | {:.3} s | {} | {} | {} | {} | {} | {} |",
            config.label(),
            w,
            if *config == Config::Baseline {
                "1.000".to_owned()
            } else {
                format!("{:.3} ({:+.1}%)", w / base, (w / base - 1.0) * 100.0)
            },
            med(&r.cpu, &|x| format!("{x:.2} s")),
            med(&r.exit, &|x| format!("{x:.2} s")),
            med(&r.symbolize, &|x| format!("{x:.3} s")),
            med(&r.rss_mib, &|x| format!("{x:.0} MiB")),
            med(&r.samples, &|x| format!("{x:.0}")),
        );
    }
    if args.skip_unwind {
        return Ok(());
    }
    super::unwind::run(&crate::workspace_root(), &kscope)
}
