//! `cargo xtask bench TARGET`: benchmarks that compare kscope with its
//! peers. Not tests: they print a table to paste into the README. `profile`
//! is a submodule with its own arguments; `fw`, `trace`, `top` and `daemon` run as examples
//! of the kscope crate (they use its library directly).

use std::{
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Subcommand;

pub mod profile;
mod unwind;

#[derive(Subcommand)]
pub enum Target {
    /// CPU profiler: overhead at 49/99/999 Hz against no profiler and
    /// bpftrace, symbolization time, peak RSS.
    Profile(profile::Args),
    /// XDP firewall: ns per packet against an XDP_PASS floor and
    /// xdp-filter, rule load rate, batch against key-by-key reads, and a
    /// live veth flood (drops/s and ns per packet from BPF statistics).
    /// `KSCOPE_BENCH_ONLY=pipeline|limiter|live` runs one part.
    Fw,
    /// `kscope trace open` against bpftrace (and BCC where it runs):
    /// startup, peak RSS, overhead per openat, loss-free throughput.
    Trace,
    /// `kscope top` with 200 programs loaded: one refresh, peak RSS and CPU
    /// per second of watching, next to `bpftool prog show` (bpftop is not
    /// on crates.io).
    Top,
    /// `kscope hist runq|syscall` against bpftrace, libbpf-tools and BCC:
    /// added ns per context switch and per system call, peak RSS, and the
    /// cgroup filter's cost per event.
    Hist,
    /// `kscope daemon`: scrape time and size (a small rule set and 1M
    /// rules), scrapes/s and /healthz latency under 200 scrapers.
    Daemon,
}

pub fn run(target: Target) -> anyhow::Result<()> {
    match target {
        Target::Profile(args) => profile::run(&args),
        // Both also time the kscope binary itself.
        Target::Fw => example("fw_bench"),
        Target::Trace => example("trace_bench"),
        Target::Daemon => example("daemon_bench"),
        Target::Top => example("top_bench"),
        Target::Hist => example("hist_bench"),
    }
}

fn example(name: &str) -> anyhow::Result<()> {
    release_kscope()?;
    crate::sh(crate::cargo().args(["run", "--release", "--quiet", "--example", name]))
}

/// Builds kscope with the release profile and returns its path.
pub fn release_kscope() -> anyhow::Result<PathBuf> {
    crate::sh(crate::cargo().args([
        "build",
        "--release",
        "--package",
        "kscope",
        "--bin",
        "kscope",
    ]))?;
    let path = PathBuf::from("target/release/kscope");
    if !path.exists() {
        bail!("{} missing after the build", path.display());
    }
    Ok(path)
}

/// How a child ended, with the kernel's resource accounting.
pub struct Reaped {
    pub success: bool,
    /// Peak resident set size.
    pub max_rss_kib: u64,
    /// CPU time (user + system) the child used.
    pub cpu: Duration,
    /// From the call to the child's exit.
    pub wait: Duration,
}

/// Waits for `child` with wait4(2), which reports its peak RSS and CPU
/// time (std's wait does not).
pub fn reap(child: Child) -> anyhow::Result<Reaped> {
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unreaped child (std never waited for it), and
    // both out-pointers are valid.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if rc != pid {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    // `child` must not wait again: the pid is reaped and may be reused.
    std::mem::forget(child);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Reaped {
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        max_rss_kib: ru.ru_maxrss as u64,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        wait: start.elapsed(),
    })
}

/// Sends `sig` to `child`.
pub fn signal(child: &Child, sig: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(child.id() as libc::pid_t, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).context("kill");
    }
    Ok(())
}

/// The median of `xs` (which must not be empty).
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
