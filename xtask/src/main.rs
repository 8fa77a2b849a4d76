//! kscope's developer tasks. `cargo xtask setup` bootstraps a fresh machine;
//! every other verb runs it first, so `cargo xtask test` and `cargo xtask
//! demo` work from a clean clone.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;
mod cpio;
mod dist;
mod setup;
mod vm;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "kscope developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing kscope needs (idempotent).
    Setup {
        /// Only what building kscope needs (rust-src for nightly,
        /// bpf-linker): no Debian packages, no Python tools, no mounts.
        /// For container image builds (packaging/Dockerfile), which can
        /// neither mount nor use the test tools.
        #[arg(long)]
        build_only: bool,
    },
    /// Run every check: formatting, lints, unit tests, the root-only
    /// integration tests against the running kernel, then the same
    /// integration tests in qemu VMs running Debian's 5.10, 6.1 and 6.12
    /// kernels.
    Test {
        /// Only the VM kernel matrix.
        #[arg(long, conflicts_with = "host")]
        vm: bool,
        /// Only the host: lints, unit and integration tests, no VMs.
        #[arg(long)]
        host: bool,
        /// Only the VM kernel with this version or label (e.g. 6.1, 6.12).
        #[arg(long, value_name = "LABEL")]
        kernel: Option<String>,
        /// In the VMs, only this integration test binary (e.g. fw_xdp_rules).
        #[arg(long, value_name = "TEST")]
        only: Option<String>,
        /// Extra arguments for the host's `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build kscope and run `kscope demo`.
    Demo,
    /// Build the release binary and a Debian package of it (cargo-deb),
    /// with the manual pages, completions, the systemd unit and the config.
    Dist,
    /// Benchmarks against kscope's peers; prints a table for the README.
    #[command(subcommand)]
    Bench(bench::Target),
    /// The CPU-bound workload `bench profile` measures (internal).
    #[command(hide = true)]
    BenchWorkload { iters: u64, threads: usize },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Task::BenchWorkload { iters, threads } = cli.task {
        // Measured, so it runs nothing else first.
        bench::profile::workload(iters, threads);
        return Ok(());
    }
    let root = workspace_root();
    std::env::set_current_dir(&root).context("entering the workspace root")?;
    if let Task::Setup { build_only: true } = cli.task {
        return setup::run_build_only();
    }
    setup::run()?;
    match cli.task {
        Task::Setup { .. } => Ok(()),
        Task::Test {
            vm,
            host,
            kernel,
            only,
            args,
        } => test(&root, !vm, !host, kernel.as_deref(), only.as_deref(), &args),
        Task::Demo => demo(),
        Task::Dist => dist::run().map(drop),
        Task::Bench(target) => bench::run(target),
        Task::BenchWorkload { .. } => Ok(()),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, echoing it, and fails if it fails.
/// Where `cmd` is on the PATH, or in /usr/sbin or /sbin (where Debian
/// puts bpftool and friends, off a user's PATH).
pub fn which(cmd: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {}", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn test(
    root: &Path,
    host: bool,
    vms: bool,
    kernel: Option<&str>,
    only: Option<&str>,
    extra: &[String],
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut outcomes = Vec::new();
    if host {
        lint()?;
        // The package test (kscope/tests/deb.rs) installs this .deb.
        let dist_start = Instant::now();
        let deb = dist::run()?;
        eprintln!("xtask: dist built in {:.0?}", dist_start.elapsed());
        outcomes.push(host_tests(extra, &deb)?);
    }
    if vms {
        outcomes.extend(vm::run(root, kernel, only)?);
    }
    eprintln!("\nxtask: summary");
    eprintln!(
        "  {:<26} {:<28} {:>6} {:>6} {:>7}  {:>8} {:>8}",
        "KERNEL", "RELEASE", "PASSED", "FAILED", "SKIPPED", "BOOT", "TOTAL"
    );
    for o in &outcomes {
        eprintln!(
            "  {:<26} {:<28} {:>6} {:>6} {:>7}  {:>8} {:>8}{}",
            o.label,
            o.release,
            o.passed.len(),
            o.failed.len(),
            o.skipped.len(),
            o.boot
                .map(|b| format!("{:.1}s", b.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            format!("{:.1}s", o.total.as_secs_f64()),
            o.error
                .as_ref()
                .map(|e| format!("  ERROR: {e}"))
                .unwrap_or_default()
        );
    }
    for o in outcomes.iter().filter(|o| !o.bins.is_empty()) {
        eprintln!("  {:<26} slowest: {}", o.label, o.slowest(4));
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| o.label.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("tests failed on: {}", failed.join(", "));
    }
    eprintln!("xtask: all tests passed in {:.0?}", start.elapsed());
    Ok(())
}

fn lint() -> anyhow::Result<()> {
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    sh(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The kernel crate builds only for the BPF target, with nightly.
    sh(Command::new("cargo").args([
        "+nightly",
        "clippy",
        "--package",
        "kscope-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Runs `cargo test` on the host, echoing its output, and tallies results
/// the same way as in the VMs (a `KSCOPE-SKIP` line marks a skipped test).
fn host_tests(extra: &[String], deb: &Path) -> anyhow::Result<vm::Outcome> {
    let start = Instant::now();
    // Unit tests need no root; the integration tests (kscope/tests) need
    // root and a kernel that loads XDP programs, which CI machines have.
    let mut cmd = cargo();
    // Every test binary runs even when one fails, so one run reports every
    // failure (cargo test stops at the first failing binary otherwise).
    cmd.args(["test", "--no-fail-fast"]).args(extra);
    // Setup has installed Prometheus, Go (its pprof reads kscope's) and the
    // packaging tests' validators on the host, so none of the tests that
    // use them may skip here (they do in the VMs).
    let require = match std::env::var("KSCOPE_REQUIRE") {
        Ok(r) if !r.is_empty() => format!("{r},prometheus,go,{}", setup::VALIDATORS),
        _ => format!("prometheus,go,{}", setup::VALIDATORS),
    };
    cmd.env("KSCOPE_REQUIRE", require);
    cmd.env("KSCOPE_DEB", std::path::absolute(deb)?);
    eprintln!("xtask: $ {}", show(&cmd));
    let lines = vm::run_and_echo(&mut cmd, "host")?;
    let mut o = vm::tally(&lines.lines, "host");
    o.label = "host".into();
    o.release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    o.total = start.elapsed();
    if !lines.success && o.failed.is_empty() {
        o.error = Some("cargo test failed".into());
    }
    Ok(o)
}

fn demo() -> anyhow::Result<()> {
    sh(cargo().args(["run", "--quiet", "--bin", "kscope", "--", "demo"]))
}
