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
