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

mod setup;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "kscope developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing kscope needs (idempotent).
    Setup,
    /// Run every check: formatting, lints, unit tests and the root-only
    /// integration tests against the running kernel.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build kscope and run `kscope demo`.
    Demo,
    /// Run a benchmark (not a test) and print its Markdown table.
    Bench {
        /// What to measure: `fw` (the XDP firewall against an XDP_PASS
        /// floor and xdp-filter).
        #[arg(value_enum)]
        what: BenchTarget,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchTarget {
    Fw,
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
    let root = workspace_root();
    std::env::set_current_dir(&root).context("entering the workspace root")?;
    setup::run()?;
    match cli.task {
        Task::Setup => Ok(()),
        Task::Test { args } => test(&args),
        Task::Demo => demo(),
        Task::Bench {
            what: BenchTarget::Fw,
        } => {
            // The benchmark also times the kscope binary itself.
            sh(cargo().args(["build", "--release", "--quiet", "--bin", "kscope"]))?;
            sh(cargo().args(["run", "--release", "--quiet", "--example", "fw_bench"]))
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, echoing it, and fails if it fails.
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

fn test(extra: &[String]) -> anyhow::Result<()> {
    let start = Instant::now();
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
    ]))?;
    // Unit tests need no root; the integration tests (kscope/tests) need
    // root and a kernel that loads XDP programs, which CI machines have.
    sh(cargo().arg("test").args(extra))?;
    eprintln!("xtask: all tests passed in {:.0?}", start.elapsed());
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    sh(cargo().args(["run", "--quiet", "--bin", "kscope", "--", "demo"]))
}
