//! `kscope trace exec` on the running kernel: the test execs a known binary
//! with known arguments from a thread with a unique name, and checks every
//! field, the result of a failed exec, and `--max-args`.

mod common;

use std::{process::Command, time::Duration};

use common::*;

const READY: Duration = Duration::from_secs(60);

fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

/// Runs `f` on a thread named `name`: children it spawns carry that name
/// until they exec, which is what `-n` matches.
fn on_named_thread<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("thread")
}

#[test]
fn exec_reports_program_args_parent_and_result() {
    require_root();
    let tag = format!("kscope-exec-{}", std::process::id());
    let tracer = Tracer::start(
        &["trace", "exec", "--json", "-n", "kscope-execa"],
        true,
        READY,
    );
    let tag2 = tag.clone();
    let (ok_pid, missing_err) = on_named_thread("kscope-execa", move || {
        let status = Command::new("/bin/sh")
            .args(["-c", "exit 3", &tag2, "two words"])
            .status()
            .expect("run sh");
        assert_eq!(status.code(), Some(3));
        let child = Command::new("/bin/sh")
            .args(["-c", "exit 0"])
            .spawn()
            .expect("spawn");
        let pid = child.id();
        drop(child.wait_with_output());
        let err = Command::new("/nonexistent/kscope-no-such-binary")
            .arg("x")
            .status()
            .expect_err("missing");
        (pid, err)
    });
    assert_eq!(missing_err.raw_os_error(), Some(libc::ENOENT));
    std::thread::sleep(Duration::from_millis(300));
    let (status, out, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    let ev = events(&out);
    assert_eq!(ev.len(), 3, "three execs:\n{out}");
    let me = u64::from(std::process::id());
    // 1: /bin/sh -c 'exit 3' TAG 'two words', as given. (An absolute path:
    // with a bare name, the PATH search would exec once per PATH entry, and
    // each failed attempt is an event of its own.)
    assert_eq!(
        ev[0]["args"],
        serde_json::json!(["/bin/sh", "-c", "exit 3", tag, "two words"])
    );
    assert_eq!(ev[0]["ret"], 0);
    assert_eq!(
        ev[0]["comm"], "sh",
        "the new program's name after a successful exec"
    );
    assert_eq!(ev[0]["ppid"].as_u64(), Some(me), "{}", ev[0]);
    assert_eq!(ev[0]["args_truncated"], false);
    // 2: its pid is the child's.
    assert_eq!(ev[1]["pid"].as_u64(), Some(u64::from(ok_pid)), "{}", ev[1]);
    assert_eq!(
        ev[1]["args"],
        serde_json::json!(["/bin/sh", "-c", "exit 0"])
    );
    // 3: the failed exec keeps the old name and reports ENOENT.
    assert_eq!(ev[2]["ret"], -libc::ENOENT);
    assert_eq!(ev[2]["errno_name"], "ENOENT");
    assert_eq!(ev[2]["comm"], "kscope-execa");
    assert_eq!(
        ev[2]["args"],
        serde_json::json!(["/nonexistent/kscope-no-such-binary", "x"])
    );
    for e in &ev {
        assert_eq!(e["uid"], 0);
        assert_eq!(e["ppid"].as_u64(), Some(me), "{e}");
    }
}

#[test]
fn max_args_bounds_the_arguments_kept() {
    require_root();
    let tracer = Tracer::start(
        &[
            "trace",
            "exec",
            "--json",
            "-n",
            "kscope-execb",
            "--max-args",
            "3",
        ],
        true,
        READY,
    );
    on_named_thread("kscope-execb", || {
        let args: Vec<String> = (0..10).map(|i| format!("arg{i}")).collect();
        Command::new("/bin/sh")
            .arg("-c")
            .arg("exit 0")
            .args(&args)
            .status()
            .expect("run sh");
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, out, err) = tracer.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {err}");
    let ev = events(&out);
    assert_eq!(ev.len(), 1, "{out}");
    assert_eq!(
        ev[0]["args"],
        serde_json::json!(["/bin/sh", "-c", "exit 0"])
    );
    assert_eq!(ev[0]["args_truncated"], true);
}

#[test]
fn pid_filter_excludes_other_processes() {
    require_root();
    // Our own process never execs; a -p filter on it must hide the child's.
    let me = std::process::id().to_string();
    let tracer = Tracer::start(&["trace", "exec", "--json", "-p", &me], true, READY);
    Command::new("/bin/sh")
        .args(["-c", "exit 0"])
        .status()
        .expect("run sh");
    std::thread::sleep(Duration::from_millis(300));
    let (status, out, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    assert!(events(&out).is_empty(), "{out}");
    assert!(err.contains("0 events"), "{err}");
}

#[test]
fn max_args_out_of_range_is_rejected() {
    for bad in ["0", "65", "many"] {
        let out = kscope(None, &["trace", "exec", "--max-args", bad]);
        assert_fails(&out, 2, &["--max-args"]);
    }
}

/// Lines read from a terminal's master side as they arrive.
fn pty_lines(master: std::fs::File) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(master).lines() {
            // EIO once the last writer is gone.
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to `limit` for a line containing `needle`.
fn wait_for(rx: &std::sync::mpsc::Receiver<String>, needle: &str, limit: Duration) -> bool {
    let start = std::time::Instant::now();
    while let Some(left) = limit.checked_sub(start.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// `kscope trace exec` on a terminal shows the header at once and each
/// exec as it happens, while it runs: rows are flushed after every drain
/// of the ring buffer, not held in a buffer until exit.
#[test]
fn rows_reach_a_terminal_while_the_tracer_runs() {
    use std::os::fd::FromRawFd as _;
    require_root();
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two new descriptors, owned by the Files below;
    // the name, termios and winsize arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors nothing else owns.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let name = format!("kscope-tty{}", std::process::id() % 100_000);
    let tracer = Tracer::start_io(
        None,
        &["trace", "exec", "-n", &name],
        &[],
        slave.into(),
        READY,
        "(ready)",
    );
    let rows = pty_lines(master);
    assert!(
        wait_for(&rows, "PCOMM", Duration::from_secs(30)),
        "no header on the terminal while kscope runs"
    );
    for _ in 0..5 {
        on_named_thread(&name, || {
            let st = Command::new("/bin/sh")
                .args(["-c", "exit 0"])
                .status()
                .expect("run sh");
            assert!(st.success());
        });
    }
    // The hang guard of a row that never comes, not a speed requirement.
    assert!(
        wait_for(&rows, "exit 0", Duration::from_secs(60)),
        "no exec row on the terminal while kscope runs"
    );
    let (status, _, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("5 events"), "{err}");
}

/// `-c` counts execs in the kernel, per program name and result, exactly.
#[test]
fn count_mode_counts_execs_per_name_and_result_in_the_kernel() {
    require_root();
    let name = format!("kscope-cnt{}", std::process::id() % 100_000);
    let tracer = Tracer::start(&["trace", "exec", "-c", "--json", "-n", &name], true, READY);
    on_named_thread(&name, || {
        for _ in 0..3 {
            let st = Command::new("/bin/sh")
                .args(["-c", "exit 0"])
                .status()
                .expect("run sh");
            assert!(st.success());
        }
        for _ in 0..2 {
            let e = Command::new("/nonexistent-kscope-exec").status();
            assert!(e.is_err());
        }
    });
    let (status, out, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    let rows = events(&out);
    let find = |comm: &str, result: &str| {
        rows.iter()
            .find(|r| r["comm"] == comm && r["result"] == result)
            .and_then(|r| r["execs"].as_u64())
    };
    // A successful exec is counted under the new program's name (the
    // kernel takes it from the path: "sh"); a failed one under the name
    // that tried.
    assert_eq!(find("sh", "ok"), Some(3), "{out}");
    assert_eq!(find(&name, "ENOENT"), Some(2), "{out}");
    assert_eq!(rows.len(), 2, "{out}");
    assert!(err.contains("5 events, 0 lost"), "{err}");
}
