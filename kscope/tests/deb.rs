//! The Debian package `cargo xtask dist` builds (`KSCOPE_DEB`, which
//! `cargo xtask test` sets): lintian finds no error in it; installed with
//! dpkg it holds the binary, the manual pages, the completions, the
//! systemd unit (disabled) and the config as a conffile; the installed
//! binary runs (`--version`, `doctor`); `systemd-analyze verify` accepts
//! the installed unit; `dpkg -r` leaves nothing but the conffile. The
//! package never stays installed: a guard purges it however the test ends,
//! and puts back a config that was there before. Host only.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

const CONFFILE: &str = "/etc/kscope/kscope.toml";

fn deb() -> Option<PathBuf> {
    std::env::var_os("KSCOPE_DEB").map(PathBuf::from)
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// dpkg's state of package kscope ("installed", "config-files", ...), or
/// None when dpkg knows nothing of it.
fn state() -> Option<String> {
    let o = run(Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", "kscope"]));
    let s = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    (o.status.success() && !s.is_empty() && s != "not-installed").then_some(s)
}

/// Purges the package on drop, whatever state it is in, and restores the
/// config that was at [`CONFFILE`] before the test.
struct Purge {
    saved: Option<Vec<u8>>,
}

impl Drop for Purge {
    fn drop(&mut self) {
        if state().is_some() {
            let o = run(Command::new("dpkg").args(["--purge", "kscope"]));
            if !o.status.success() {
                eprintln!("warning: dpkg --purge kscope failed: {}", text(&o));
            }
        }
        if let Some(saved) = &self.saved {
            let _ = std::fs::create_dir_all("/etc/kscope");
            if let Err(e) = std::fs::write(CONFFILE, saved) {
                eprintln!("warning: cannot restore {CONFFILE}: {e}");
            }
        }
    }
}

#[test]
#[cfg_attr(
    feature = "vm-suite",
    ignore = "host only: the package installs with the host's dpkg"
)]
fn lintian_finds_no_errors() {
    let Some(deb) = deb() else {
        common::skip("deb", "KSCOPE_DEB unset: build it with `cargo xtask dist`");
        return;
    };
    let Some(lintian) = common::find_in_path("lintian") else {
        common::skip("lintian", "not installed (Debian package lintian)");
        return;
    };
    let o = run(Command::new(lintian).arg(&deb));
    let out = text(&o);
    eprintln!("lintian {}:\n{out}", deb.display());
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    assert!(
        !out.contains("internal error") && !out.contains("cannot open"),
        "lintian did not check the package:\n{out}"
    );
}

#[test]
#[cfg_attr(
    feature = "vm-suite",
    ignore = "host only: the package installs with the host's dpkg"
)]
fn the_package_installs_runs_and_removes_cleanly() {
    common::require_root();
    let Some(deb) = deb() else {
        common::skip("deb", "KSCOPE_DEB unset: build it with `cargo xtask dist`");
        return;
    };
    assert!(
        state().is_none(),
        "a kscope package is already on this machine ({:?}); the test will not replace it",
        state()
    );
    let _purge = Purge {
        saved: std::fs::read(CONFFILE).ok(),
    };
    let _ = std::fs::remove_file(CONFFILE);

    let o = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(o.status.success(), "dpkg -i failed:\n{}", text(&o));
    assert_eq!(state().as_deref(), Some("installed"));

    let o = run(Command::new("dpkg").args(["-L", "kscope"]));
    let files: BTreeSet<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| Path::new(l).is_file())
        .map(str::to_owned)
        .collect();
    let unit = files
        .iter()
        .find(|f| f.ends_with("/systemd/system/kscope.service"))
        .unwrap_or_else(|| panic!("no systemd unit in {files:#?}"))
        .clone();
    for want in [
        "/usr/bin/kscope",
        "/usr/share/man/man1/kscope.1.gz",
        "/usr/share/man/man1/kscope-fw-block.1.gz",
        "/usr/share/man/man1/kscope-demo.1.gz",
        "/usr/share/bash-completion/completions/kscope",
        "/usr/share/zsh/vendor-completions/_kscope",
        "/usr/share/fish/vendor_completions.d/kscope.fish",
        CONFFILE,
    ] {
        assert!(
            files.contains(want),
            "{want} not installed; files: {files:#?}"
        );
    }
    // One page per verb, as `kscope man` writes them.
    let pages = files
        .iter()
        .filter(|f| f.starts_with("/usr/share/man/man1/kscope"))
        .count();
    let dir = tempfile::tempdir().expect("temp dir");
    common::kscope_ok(None, &["man", &dir.path().to_string_lossy()]);
    let want_pages = std::fs::read_dir(dir.path()).expect("read").count();
    assert_eq!(pages, want_pages, "manual pages installed");

    let o = run(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}", "kscope"]));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(CONFFILE),
        "{CONFFILE} is no conffile: {}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(CONFFILE).expect("read the config"),
        include_str!("../../packaging/kscope.toml")
    );

    let o = run(Command::new("/usr/bin/kscope").arg("--version"));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("kscope {}", env!("CARGO_PKG_VERSION"))
    );
    // Exit 0 when everything works, 1 when something is degraded or
    // unavailable (the host lacks kprobes); anything else is a failure.
    let o = run(Command::new("/usr/bin/kscope").args(["doctor", "--json"]));
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    let checks = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|v| v["status"].is_string())
        .count();
    assert!(
        checks >= 10,
        "doctor reported {checks} checks:\n{}",
        text(&o)
    );
    let o = run(Command::new("/usr/bin/kscope").arg("doctor"));
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));

    // The installed unit: ExecStart at the installed binary, and valid.
    let unit_text = std::fs::read_to_string(&unit).expect("read the unit");
    assert!(
        unit_text.contains("\nExecStart=/usr/bin/kscope daemon --config /etc/kscope/kscope.toml\n"),
        "{unit_text}"
    );
    if let Some(sa) = common::find_in_path("systemd-analyze") {
        let o = run(Command::new(sa).args(["verify", "--man=no", &unit]));
        assert!(
            o.status.success() && text(&o).trim().is_empty(),
            "systemd-analyze verify {unit}:\n{}",
            text(&o)
        );
    } else {
        common::skip("systemd-analyze", "not installed (Debian package systemd)");
    }
    // Disabled: nothing wants it.
    for dir in [
        "/etc/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ] {
        let wants = Path::new(dir).join("multi-user.target.wants/kscope.service");
        assert!(!wants.exists(), "{} exists: enabled", wants.display());
    }

    let o = run(Command::new("dpkg").args(["-r", "kscope"]));
    assert!(o.status.success(), "dpkg -r failed:\n{}", text(&o));
    assert_eq!(state().as_deref(), Some("config-files"));
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert_eq!(left, [CONFFILE], "files left after dpkg -r");
}

/// Debian's changelog names the version cargo-deb gives the package
/// (`VERSION-1`); lintian reads it from the package.
#[test]
fn the_debian_changelog_names_the_package_version() {
    let text = include_str!("../../packaging/deb/changelog");
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("kscope ({}-1) ", env!("CARGO_PKG_VERSION"))),
        "{first}"
    );
}
