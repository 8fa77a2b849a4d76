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

/// Arguments cut at `ARG_LEN - 1` bytes, cut where the 4 KiB of arguments
/// run out, or left out past `--max-args`: each is marked, and only those.
#[test]
fn cut_and_left_out_arguments_are_marked() {
    require_root();
    let tracer = Tracer::start(
        &[
            "trace",
            "exec",
            "--json",
            "-n",
            "kscope-execc",
            "--max-args",
            "64",
        ],
        true,
        READY,
    );
    let base = ["/bin/sh", "-c", "exit 0"].map(String::from);
    let run = move |extra: Vec<String>| {
        let status = Command::new(&base[0])
            .args(&base[1..])
            .args(&extra)
            .status()
            .expect("run sh");
        assert!(status.success());
    };
    let long = "x".repeat(300);
    let exact = "y".repeat(255);
    // 3 + 20 arguments: "/bin/sh\0-c\0exit 0\0" is 18 bytes, each "z…" 251;
    // 16 fit in 4096 bytes, the 17th (index 19) is cut after 62 bytes and
    // the rest left out.
    let many_long: Vec<String> = (0..20).map(|_| "z".repeat(250)).collect();
    let count = |n: usize| -> Vec<String> { (0..n).map(|i| format!("a{i}")).collect() };
    let cases = vec![
        vec![long.clone(), "short".into()],
        vec![exact.clone()],
        many_long,
        count(61),
        count(62),
    ];
    on_named_thread("kscope-execc", move || {
        for c in cases {
            run(c);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, out, err) = tracer.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {err}");
    let ev = events(&out);
    assert_eq!(ev.len(), 5, "{out}");
    let args = |e: &serde_json::Value| -> Vec<String> {
        e["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("string").to_owned())
            .collect()
    };
    // A 300-byte argument: its first 255 bytes, marked; the next one whole.
    assert_eq!(args(&ev[0])[3..], ["x".repeat(255), "short".into()]);
    assert_eq!(ev[0]["args_cut"], serde_json::json!([3]));
    assert_eq!(ev[0]["args_truncated"], true);
    // Exactly 255 bytes fit: nothing is marked.
    assert_eq!(args(&ev[1])[3..], [exact]);
    assert_eq!(ev[1]["args_cut"], serde_json::json!([]));
    assert_eq!(ev[1]["args_truncated"], false);
    // The 4 KiB bound: the argument it falls in is cut, the rest left out.
    let a = args(&ev[2]);
    assert_eq!(a.len(), 20, "{}", ev[2]);
    assert!(a[3..19].iter().all(|s| *s == "z".repeat(250)), "{}", ev[2]);
    assert_eq!(a[19], "z".repeat(4096 - 18 - 16 * 251));
    assert_eq!(ev[2]["args_cut"], serde_json::json!([19]));
    assert_eq!(ev[2]["args_truncated"], true);
    // 64 arguments are all kept; a 65th is left out, and marked.
    assert_eq!(args(&ev[3]).len(), 64);
    assert_eq!(ev[3]["args_truncated"], false);
    assert_eq!(args(&ev[4]).len(), 64);
    assert_eq!(args(&ev[4])[63], "a60");
    assert_eq!(ev[4]["args_truncated"], true);
    assert_eq!(ev[4]["args_cut"], serde_json::json!([]));
}

/// Set to a tag, this variable makes the test binary the helper process of
/// `exec_from_a_thread_other_than_the_leader_is_reported`.
const THREAD_EXEC_TAG: &str = "KSCOPE_TEST_THREAD_EXEC_TAG";

/// Not a test of its own: the helper process that
/// `exec_from_a_thread_other_than_the_leader_is_reported` runs. A thread
/// that is not the process's first one execs `/bin/sh -c 'exit 0' TAG`.
#[test]
#[ignore = "helper process of exec_from_a_thread_other_than_the_leader_is_reported"]
fn thread_exec_helper() {
    use std::ffi::CString;
    let tag = std::env::var(THREAD_EXEC_TAG)
        .expect("run by exec_from_a_thread_other_than_the_leader_is_reported only");
    let t = std::thread::Builder::new()
        .name("kscope-thrx".into())
        .spawn(move || {
            let argv: Vec<CString> = ["/bin/sh", "-c", "exit 0", &tag]
                .iter()
                .map(|a| CString::new(*a).expect("arg"))
                .collect();
            let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            // SAFETY: NUL-terminated strings and a NULL-terminated array,
            // alive for the call.
            unsafe { libc::execv(ptrs[0], ptrs.as_ptr()) };
            panic!("execv: {}", std::io::Error::last_os_error());
        })
        .expect("spawn");
    let _ = t.join();
    panic!("the thread's exec did not replace the process");
}

/// Entries in the EXEC_PENDING map of the tracer `pid`, read through a copy
/// of its file descriptor (pidfd_getfd(2), 5.6+). The map is found by its
/// shape in /proc/PID/fdinfo: a hash (type 1) of 1024 ExecEvent values.
fn pending_execs(pid: u32) -> usize {
    use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};
    let value_size = std::mem::size_of::<kscope_common::trace::ExecEvent>();
    let want = format!("value_size:\t{value_size}\n");
    let dir = format!("/proc/{pid}/fdinfo");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("fdinfo") {
        let entry = entry.expect("fdinfo entry");
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if info.contains("map_type:\t1\n")
            && info.contains(&want)
            && info.contains("max_entries:\t1024\n")
        {
            let fd: i32 = entry.file_name().to_str().expect("fd").parse().expect("fd");
            found.push(fd);
        }
    }
    assert_eq!(found.len(), 1, "one EXEC_PENDING map in {dir}: {found:?}");
    // SAFETY: pidfd_open and pidfd_getfd take plain integers; each result
    // is checked before it is owned.
    let (pidfd, fd) = unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let pidfd = OwnedFd::from_raw_fd(pidfd);
        let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), found[0], 0) as i32;
        assert!(fd >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        (pidfd, OwnedFd::from_raw_fd(fd))
    };
    drop(pidfd);
    let ops = kscope::sys::bpf::MapFdOps::new(fd.as_fd(), 4, value_size, 1);
    kscope::sys::bpf::dump_map(&ops, None)
        .expect("dump EXEC_PENDING")
        .0
        .len
}

/// A thread other than the leader execs: after de_thread() it returns with
/// the leader's thread id. The exec is reported under the process's pid,
/// and the tracer's pending map is left empty.
#[test]
fn exec_from_a_thread_other_than_the_leader_is_reported() {
    require_root();
    let tag = format!("kscope-thrx-{}", std::process::id());
    let tracer = Tracer::start(
        &["trace", "exec", "--json", "-n", "kscope-thrx"],
        true,
        READY,
    );
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "thread_exec_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(THREAD_EXEC_TAG, &tag)
        .spawn()
        .expect("spawn the helper");
    let pid = child.id();
    let status = child.wait().expect("wait");
    assert!(status.success(), "the exec'd sh exits 0: {status}");
    // The exit handler has run (the exec returned before sh exited).
    let left = pending_execs(tracer.child.id());
    std::thread::sleep(Duration::from_millis(300));
    let (status, out, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    assert_eq!(left, 0, "entries left in EXEC_PENDING");
    let ev = events(&out);
    assert_eq!(ev.len(), 1, "the thread's exec:\n{out}");
    assert_eq!(
        ev[0]["args"],
        serde_json::json!(["/bin/sh", "-c", "exit 0", tag])
    );
    assert_eq!(ev[0]["pid"].as_u64(), Some(u64::from(pid)), "{}", ev[0]);
    assert_eq!(ev[0]["ret"], 0);
    assert_eq!(ev[0]["comm"], "sh");
}
