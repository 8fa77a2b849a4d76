//! `cargo xtask dist`: a release binary and a Debian package of it.
//!
//! The binary is built with the `dist` profile (see the workspace
//! Cargo.toml: optimized, but quick to compile, so CI can afford it), then
//! it writes what the package ships besides itself into
//! `target/dist/deb/`: the manual pages (`kscope man`), the bash, zsh and
//! fish completions (`kscope completions`), and the systemd unit with
//! ExecStart pointing at the installed binary, /usr/bin/kscope (the
//! repository's unit keeps /usr/local/bin, where a hand install puts it).
//! cargo-deb (pinned, installed by setup into cargo's bin directory) then
//! packs them as `[package.metadata.deb]` in kscope/Cargo.toml says.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cargo, sh};

/// The cargo-deb release setup installs, with `cargo install` into
/// cargo's own bin directory, as bpf-linker: once per machine, not once
/// per clone (CI runs in a fresh clone; building cargo-deb takes minutes).
pub const CARGO_DEB_VERSION: &str = "3.8.0";
/// Generated package files, relative to the workspace root; the paths in
/// `[package.metadata.deb]` point here.
const STAGING: &str = "target/dist/deb";
/// The profile the packaged binary is built with.
pub const PROFILE: &str = "dist";
/// ExecStart's binary in the repository's unit, and in the package's.
const UNIT_BINARY: &str = "/usr/local/bin/kscope";
const PACKAGE_BINARY: &str = "/usr/bin/kscope";

/// cargo-deb in cargo's bin directory (`$CARGO_HOME/bin`, by default
/// `~/.cargo/bin`), else wherever PATH has it.
fn cargo_deb_bin() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    cargo_home
        .map(|h| h.join("bin/cargo-deb"))
        .filter(|p| p.is_file())
        .or_else(|| crate::which("cargo-deb"))
        .unwrap_or_else(|| PathBuf::from("cargo-deb"))
}

/// Installs cargo-deb unless the pinned version is already there. Building
/// it takes minutes on two cores, once per machine.
pub fn install_cargo_deb() -> anyhow::Result<()> {
    let have = Command::new(cargo_deb_bin())
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if have.is_some_and(|v| v.ends_with(CARGO_DEB_VERSION)) {
        return Ok(());
    }
    sh(cargo().args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
        "--force",
    ]))
}

/// The packaged unit: the repository's, with ExecStart at the package's
/// binary and the hand-install instructions replaced by the package's.
pub fn packaged_unit(unit: &str) -> anyhow::Result<String> {
    let exec = format!("ExecStart={UNIT_BINARY} ");
    if !unit.contains(&exec) {
        bail!("packaging/systemd/kscope.service has no `{exec}...` line");
    }
    let mut out = String::new();
    let mut in_install_notes = false;
    for line in unit.lines() {
        if line == "# Install:" {
            in_install_notes = true;
            out.push_str(
                "# Installed by the kscope package, disabled. Edit\n\
                 # /etc/kscope/kscope.toml, then: systemctl enable --now kscope\n",
            );
            continue;
        }
        if in_install_notes {
            if line.starts_with("#   ") {
                continue;
            }
            in_install_notes = false;
        }
        out.push_str(&line.replace(&exec, &format!("ExecStart={PACKAGE_BINARY} ")));
        out.push('\n');
    }
    Ok(out)
}

/// The kernel objects of the debug build (which the tests use anyway):
/// its build script's OUT_DIR, from cargo's messages. The objects are the
/// same in every host profile (see kscope/build.rs), so the dist build
/// copies them instead of building the kernel crate and core again.
fn ebpf_objects() -> anyhow::Result<PathBuf> {
    eprintln!("xtask: $ cargo build --package kscope (for its kernel objects)");
    let out = cargo()
        .args(["build", "--package", "kscope", "--bin", "kscope"])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build --package kscope failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["reason"] == "build-script-executed"
                && v["package_id"]
                    .as_str()
                    .is_some_and(|id| id.contains("/kscope#") || id.contains("kscope "))
        })
        .find_map(|v| v["out_dir"].as_str().map(PathBuf::from))
        .filter(|d| d.join("fw_xdp").is_file())
        .context("cargo reported no OUT_DIR with kscope's kernel objects")
}

/// Builds the binary and the package; returns the .deb's path.
pub fn run() -> anyhow::Result<PathBuf> {
    install_cargo_deb()?;
    let objects = ebpf_objects()?;
    sh(cargo()
        .args([
            "build",
            "--profile",
            PROFILE,
            "--package",
            "kscope",
            "--bin",
            "kscope",
        ])
        .env("KSCOPE_EBPF_OBJECTS", &objects))?;
    let bin = Path::new("target").join(PROFILE).join("kscope");
    let staging = Path::new(STAGING);
    let _ = fs::remove_dir_all(staging);
    for d in ["man", "completions", "systemd"] {
        fs::create_dir_all(staging.join(d))?;
    }
    sh(Command::new(&bin).arg("man").arg(staging.join("man")))?;
    for (shell, file) in [
        ("bash", "kscope.bash"),
        ("zsh", "_kscope"),
        ("fish", "kscope.fish"),
    ] {
        let out = Command::new(&bin)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!("kscope completions {shell} failed");
        }
        fs::write(staging.join("completions").join(file), out.stdout)?;
    }
    let unit = fs::read_to_string("packaging/systemd/kscope.service")
        .context("reading packaging/systemd/kscope.service")?;
    fs::write(
        staging.join("systemd/kscope.service"),
        packaged_unit(&unit)?,
    )?;
    let out_dir = Path::new("target/dist");
    let out = Command::new(cargo_deb_bin())
        .args([
            "--package",
            "kscope",
            "--no-build",
            "--no-strip",
            "--profile",
            PROFILE,
        ])
        .arg("--output")
        .arg(out_dir)
        .output()
        .context("running cargo-deb (cargo xtask setup installs it)")?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("cargo-deb failed ({})", out.status);
    }
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let deb = PathBuf::from(deb.lines().last().unwrap_or_default());
    if !deb.is_file() {
        bail!("cargo-deb reported no package file: {}", deb.display());
    }
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_unit_runs_the_installed_binary_and_drops_the_hand_install() {
        let repo = include_str!("../../packaging/systemd/kscope.service");
        let unit = packaged_unit(repo).expect("rewrites");
        assert!(
            unit.contains("\nExecStart=/usr/bin/kscope daemon --config /etc/kscope/kscope.toml\n")
        );
        assert!(!unit.contains("/usr/local/bin"), "{unit}");
        assert!(!unit.contains("install -m"), "{unit}");
        // Everything else is the repository's, line for line.
        let strip = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with("ExecStart="))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(strip(&unit), strip(repo));
        assert!(packaged_unit("[Service]\nExecStart=/bin/true\n").is_err());
    }
}
