//! Hostile input sizes and rates on the command line: files that never end
//! and intervals that would busy-loop. Each must fail at once with one
//! `error:` line and change nothing. The endless-file tests run kscope
//! under an address-space limit, so a regression fails the test (the
//! allocation aborts) instead of eating the machine's memory. Needs root
//! (the `fw load` test attaches to a lab interface).

mod common;

use std::{io::Read as _, os::unix::process::CommandExt as _, process::Stdio};

use common::*;
use kscope::{
    cli::MIN_WATCH, daemon::config::MAX_CONFIG_BYTES, firewall::rules::MAX_RULE_FILE_BYTES,
};

/// Address space kscope may use in these tests: far above what a capped
/// read needs (about twice the cap, plus the program), far below what an
/// uncapped read of /dev/zero would take.
const AS_LIMIT: u64 = 1 << 30;

/// What one kscope run left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Peak resident memory, bytes.
    max_rss: u64,
}

/// Runs `kscope ARGS` under [`AS_LIMIT`] and reports its peak memory.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which also reports its rusage"
)]
fn run_limited(args: &[&str]) -> Run {
    let mut cmd = kscope_cmd(None, args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: AS_LIMIT,
                rlim_max: AS_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn kscope");
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout pipe")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr pipe")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both out-pointers are valid.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Run {
        code,
        stdout,
        stderr,
        // ru_maxrss is in KiB on Linux.
        max_rss: usage.ru_maxrss as u64 * 1024,
    }
}

/// Asserts `run` exited with `code`, printed nothing on stdout and exactly
/// one `error:` line containing every needle.
fn assert_one_error(run: &Run, code: i32, needles: &[&str]) {
    assert_eq!(run.code, Some(code), "exit status; stderr:\n{}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout: {:?}", run.stdout);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line:\n{}", run.stderr);
    for n in needles {
        assert!(errors[0].contains(n), "{n:?} missing: {}", errors[0]);
    }
}

/// Defect: `kscope fw load /dev/zero` read until memory ran out.
#[test]
fn fw_load_of_an_endless_file_fails_at_the_cap_and_changes_nothing() {
    require_root();
    let lab = FwLab::new("capload").expect("create lab");
    let iface = lab.iface_b.as_str();
    kscope_ok(Some(&lab.b), &["fw", "attach", iface]);
    kscope_ok(None, &["fw", "block", "--iface", iface, "198.51.100.1"]);
    let before = kscope_ok(None, &["fw", "save", "--iface", iface]);
    assert_eq!(before, "block 198.51.100.1/32\n");

    let run = run_limited(&["fw", "load", "--iface", iface, "/dev/zero"]);
    assert_one_error(
        &run,
        1,
        &[
            "/dev/zero",
            &format!("limit of {MAX_RULE_FILE_BYTES} bytes"),
        ],
    );
    // Reading stops one byte past the cap; the buffer may have grown to
    // twice that, never more.
    assert!(
        run.max_rss <= 2 * MAX_RULE_FILE_BYTES + (64 << 20),
        "peak RSS {} bytes",
        run.max_rss
    );
    assert_eq!(kscope_ok(None, &["fw", "save", "--iface", iface]), before);
    kscope_ok(None, &["fw", "detach", iface]);
}

/// Defect: `kscope daemon --config /dev/zero` read until memory ran out.
#[test]
fn daemon_with_an_endless_config_fails_at_the_cap() {
    require_root();
    let run = run_limited(&["daemon", "--config", "/dev/zero"]);
    assert_one_error(
        &run,
        1,
        &["/dev/zero", &format!("limit of {MAX_CONFIG_BYTES} bytes")],
    );
    assert!(
        run.max_rss <= 2 * MAX_CONFIG_BYTES + (64 << 20),
        "peak RSS {} bytes",
        run.max_rss
    );
}

/// Defect: `kscope fw stats --watch 1e-9` busy-looped, printing about
/// 10,000 lines a second. It is refused before anything runs.
#[test]
fn fw_stats_watch_below_the_minimum_is_refused() {
    let min = format!("at least {} seconds", MIN_WATCH.as_secs_f64());
    for bad in ["1e-9", "0.01"] {
        let out = kscope(None, &["fw", "stats", "--watch", bad]);
        assert_fails(&out, 2, &["--watch", &min]);
    }
}
