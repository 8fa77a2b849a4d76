//! `kscope trace open` on the running kernel: it traces its own opens and
//! checks every field, the in-kernel filters, delivery under load, and that
//! nothing stays attached however the tracer stops.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Barrier, mpsc},
    time::{Duration, Instant},
};

use common::*;

const READY: Duration = Duration::from_secs(60);

/// Runs `f` on a fresh thread named `name` (its comm) and returns its tid
/// before `f` runs, so a tracer can be started for it first.
fn named_thread(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> (u32, Arc<Barrier>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let go = Arc::new(Barrier::new(2));
    let go2 = Arc::clone(&go);
    let h = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tx.send(gettid()).expect("send tid");
            go2.wait();
            f();
        })
        .expect("spawn");
    (rx.recv().expect("tid"), go, h)
}

fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

fn unique_missing_path(tag: &str) -> String {
    format!(
        "/nonexistent-kscope-{tag}-{}-{}",
        std::process::id(),
        gettid()
    )
}

#[test]
fn own_opens_are_reported_with_exact_fields() {
    require_root();
    let dir = std::env::temp_dir().join(format!("kscope-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let existing = dir.join("exists");
    std::fs::write(&existing, b"x").expect("write");
    let missing = unique_missing_path("fields");
    let (e2, m2) = (existing.clone(), missing.clone());
    let (tid, go, h) = named_thread("kscope-opener", move || {
        let f = std::fs::File::open(&e2).expect("open existing");
        drop(f);
        std::fs::File::open(&m2).expect_err("missing");
    });
    let tracer = Tracer::start(
        &["trace", "open", "--json", "-t", &tid.to_string()],
        true,
        READY,
    );
    go.wait();
    h.join().expect("opener");
    std::thread::sleep(Duration::from_millis(200));
    let (status, out, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    let ev = events(&out);
    assert_eq!(ev.len(), 2, "exactly the opener's two opens:\n{out}");
    let o_cloexec = u64::try_from(libc::O_RDONLY | libc::O_CLOEXEC).expect("flags");
    for e in &ev {
        assert_eq!(
            e["pid"].as_u64(),
            Some(u64::from(std::process::id())),
            "{e}"
        );
        assert_eq!(e["tid"].as_u64(), Some(u64::from(tid)), "{e}");
        assert_eq!(e["uid"], 0, "{e}");
        assert_eq!(e["comm"], "kscope-opener", "{e}");
        assert_eq!(e["flags"].as_u64(), Some(o_cloexec), "{e}");
        assert_eq!(e["flags_str"], "O_RDONLY|O_CLOEXEC", "{e}");
    }
    assert_eq!(ev[0]["path"], existing.to_str().expect("utf8"));
    assert!(ev[0]["fd"].as_i64().is_some_and(|fd| fd >= 0), "{}", ev[0]);
    assert!(ev[0]["errno"].is_null());
    assert_eq!(ev[1]["path"], missing.as_str());
    assert!(ev[1]["fd"].is_null());
    assert_eq!(ev[1]["errno"], libc::ENOENT);
    assert_eq!(ev[1]["errno_name"], "ENOENT");
    let now = kscope::sys::unix_now_ns();
    let ts = ev[0]["ts_unix_ns"].as_u64().expect("ts");
    assert!(
        now.abs_diff(ts) < 60_000_000_000,
        "timestamp {ts} far from now {now}"
    );
    assert!(err.contains("2 events, 0 lost"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn failed_only_and_comm_filters_apply_in_the_kernel() {
    require_root();
    let missing = unique_missing_path("x");
    let m2 = missing.clone();
    let (tid, go, h) = named_thread("kscope-xfilter", move || {
        drop(std::fs::File::open("/proc/self/stat").expect("open"));
        std::fs::File::open(&m2).expect_err("missing");
    });
    // -x: failed opens only; -n: a substring of the thread's comm.
    let tracer = Tracer::start(
        &["trace", "open", "--json", "-x", "-n", "xfilt"],
        true,
        READY,
    );
    go.wait();
    h.join().expect("opener");
    std::thread::sleep(Duration::from_millis(200));
    let (status, out, err) = tracer.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {err}");
    let ev = events(&out);
    assert_eq!(ev.len(), 1, "only the failed open:\n{out}");
    assert_eq!(ev[0]["tid"].as_u64(), Some(u64::from(tid)));
    assert_eq!(ev[0]["path"], missing.as_str());
    assert_eq!(ev[0]["errno_name"], "ENOENT");
}

#[test]
fn pid_filter_excludes_other_processes() {
    require_root();
    let me = std::process::id();
    let missing = unique_missing_path("pid");
    let tracer = Tracer::start(
        &["trace", "open", "--json", "-p", &me.to_string()],
        true,
        READY,
    );
    // Another process opens the same kind of path...
    let other = std::process::Command::new("sh")
        .args(["-c", &format!("exec 3<{missing}")])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run sh");
    assert!(!other.success(), "the path must not exist");
    // ...and so do we, so the filter is not just dropping everything.
    std::fs::File::open(&missing).expect_err("missing");
    std::thread::sleep(Duration::from_millis(200));
    let (status, out, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    let ev = events(&out);
    assert!(
        ev.iter().all(|e| e["pid"].as_u64() == Some(u64::from(me))),
        "foreign pid in:\n{out}"
    );
    assert!(
        ev.iter().any(
            |e| e["path"] == missing.as_str() && e["tid"].as_u64() == Some(u64::from(gettid()))
        ),
        "our own open is missing:\n{out}"
    );
}

/// Every open is delivered or counted as lost: delivered + lost equals what
/// the generator counted. Loss is made certain, whatever the machine's
/// speed: the ring buffer is one page (a dozen events), and the tracer is
/// stopped (SIGSTOP) while the generator runs, so it cannot drain.
#[test]
fn every_event_is_delivered_or_counted_lost() {
    require_root();
    const OPENS: u64 = 2000;
    let missing = unique_missing_path("load");
    let (tid, go, h) = named_thread("kscope-loadgen", move || {
        let path = std::ffi::CString::new(missing).expect("path");
        for _ in 0..OPENS {
            // SAFETY: a valid NUL-terminated path; the fd is closed if the
            // open unexpectedly succeeds.
            let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
            if fd >= 0 {
                // SAFETY: fd was just returned by openat.
                unsafe { libc::close(fd) };
            }
        }
    });
    let page = 4096.to_string();
    let mut tracer = Tracer::start(
        &[
            "trace",
            "open",
            "--json",
            "--buffer-size",
            &page,
            "-t",
            &tid.to_string(),
        ],
        true,
        READY,
    );
    let pid = tracer.child.id() as i32;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    go.wait();
    h.join().expect("generator");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // Losses are reported as they are found (at the tracer's next tick),
    // not only at the end.
    let warned = tracer.wait_line("events lost", Duration::from_secs(60));
    let (status, out, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    assert!(
        warned.is_some(),
        "losses must be reported as they happen:\n{err}"
    );
    let summary = err
        .lines()
        .find_map(kscope::trace::parse_summary)
        .unwrap_or_else(|| panic!("no summary in:\n{err}"));
    let delivered = events(&out).len() as u64;
    eprintln!("generated {OPENS} opens; printed {delivered}, {summary:?}");
    assert_eq!(summary.events, delivered, "summary against stdout");
    assert_eq!(summary.events + summary.lost, OPENS, "{summary:?}");
    // A page holds some events, and far fewer than were made.
    assert!(summary.events > 0 && summary.lost > 0, "{summary:?}");
}

/// A pipe as stdout: returns (read end, write end).
fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd as _;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors, owned by the Files below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors nothing else owns.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

/// `kscope trace open | true`: the reader is gone before the header is
/// written. That is the reader's choice, not an error: exit 0, no
/// `error:` line.
#[test]
fn a_stdout_closed_from_the_start_is_success() {
    require_root();
    let (r, w) = pipe();
    drop(r);
    let tracer = Tracer::start_io(
        None,
        &["trace", "open", "-n", &unique_comm("p")],
        &[],
        w.into(),
        READY,
        "",
    );
    let (status, err) = tracer.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("error:"), "{err}");
}

/// `kscope trace open | head -1`: once the reader has its line and exits,
/// the tracer ends (exit 0) without waiting for an event to write, which
/// with this filter would never come.
#[test]
fn a_reader_that_goes_away_ends_the_tracer_with_success() {
    use std::io::BufRead as _;
    require_root();
    let (r, w) = pipe();
    let tracer = Tracer::start_io(
        None,
        &["trace", "open", "-n", &unique_comm("h")],
        &[],
        w.into(),
        READY,
        "(ready)",
    );
    let mut first = String::new();
    std::io::BufReader::new(&r)
        .read_line(&mut first)
        .expect("read the header");
    assert!(first.starts_with("PID "), "{first:?}");
    drop(r);
    let (status, err) = tracer.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("error:"), "{err}");
}

/// A buffer size the kernel cannot use is refused before anything loads.
#[test]
fn bad_buffer_sizes_fail_with_one_line() {
    require_root();
    for bad in ["0", "1000", "4095", "3000000", "2147483648"] {
        let out = kscope(None, &["trace", "open", "--buffer-size", bad, "-d", "1"]);
        assert_fails(&out, 1, &["buffer size", bad]);
    }
}

fn assert_detached_after(signal: i32, env: Option<(&str, &str)>) {
    require_root();
    // The tracer sees only a thread that opens once told to, so the
    // panicking consumer (first event) cannot die before the checks below.
    let missing = unique_missing_path("cleanup");
    let (tid, go, h) = named_thread("kscope-cleanup", move || {
        std::fs::File::open(&missing).expect_err("missing");
    });
    let tid = tid.to_string();
    let args = ["trace", "open", "--json", "-t", &tid];
    // The fault switch goes to this child alone: set in the test process,
    // it would reach tracers that other tests start meanwhile.
    let envs: Vec<(&str, &str)> = env.into_iter().collect();
    let tracer = Tracer::start_until(None, &args, &envs, true, READY, "(ready)");
    let ids = tracer.prog_ids();
    assert!(
        ids.len() >= 2,
        "the tracer should hold its programs: {ids:?}"
    );
    for id in &ids {
        assert!(prog_exists(*id), "program {id} not loaded while tracing");
    }
    go.wait();
    h.join().expect("opener");
    std::thread::sleep(Duration::from_millis(300));
    let (status, _, err) = tracer.stop(signal);
    if env.is_some() {
        assert!(!status.success(), "a panicking consumer must fail: {err}");
        assert!(err.contains("panicked"), "{err}");
    } else {
        assert!(status.success(), "{status}: {err}");
    }
    assert_progs_gone(&ids);
}

#[test]
fn nothing_stays_attached_after_ctrl_c() {
    assert_detached_after(libc::SIGINT, None);
}

#[test]
fn nothing_stays_attached_after_sigterm() {
    assert_detached_after(libc::SIGTERM, None);
}

#[test]
fn nothing_stays_attached_after_a_panic_in_the_consumer() {
    // The consumer panics on its first event; the signal then finds the
    // process already gone, which is fine.
    assert_detached_after(libc::SIGINT, Some(("KSCOPE_FAULT", "consumer-panic")));
}

#[test]
fn bad_filters_fail_with_one_line() {
    let out = kscope(None, &["trace", "open", "-n", "a-name-longer-than-15"]);
    assert_fails(&out, 1, &["1-15 bytes"]);
    let out = kscope(None, &["trace", "open", "-d", "-2"]);
    assert_fails(&out, 2, &["--duration"]);
}

// ---- count mode (-c, Counter<Open>) ----

/// A process name no other test uses: `tag` plus this process's pid,
/// within the 15 bytes a comm keeps.
fn unique_comm(tag: &str) -> String {
    let name = format!("kq{tag}{}", std::process::id());
    assert!(name.len() <= 15, "{name} is longer than a comm");
    name
}

/// Forks a child that names itself `comm`, opens `existing` `n` times and
/// `missing` `m` times, and exits; waits for it.
fn child_opens(comm: &str, existing: &std::path::Path, missing: &str, n: usize, m: usize) {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _};
    // Everything the child touches is prepared before the fork: it may only
    // make async-signal-safe calls (the test harness has other threads).
    let comm = CString::new(comm).expect("comm");
    let existing = CString::new(existing.as_os_str().as_bytes()).expect("path");
    let missing = CString::new(missing).expect("path");
    // SAFETY: the child only calls prctl, openat, close and _exit, all
    // async-signal-safe, on memory allocated before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: see above; PR_SET_NAME copies at most 16 bytes of a
        // NUL-terminated string.
        unsafe {
            if libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) != 0 {
                libc::_exit(2);
            }
            let mut status = 0;
            for _ in 0..n {
                let fd = libc::openat(libc::AT_FDCWD, existing.as_ptr(), libc::O_RDONLY);
                if fd < 0 {
                    status = 3;
                } else {
                    libc::close(fd);
                }
            }
            for _ in 0..m {
                if libc::openat(libc::AT_FDCWD, missing.as_ptr(), libc::O_RDONLY) >= 0 {
                    status = 4;
                }
            }
            libc::_exit(status);
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the opener child failed (status {status:#x}: 2 prctl, 3 open of the existing file, 4 open of the missing path)"
    );
}

/// A file that exists, in a directory of its own (removed by the caller).
fn existing_file(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("kscope-count-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("exists");
    std::fs::write(&file, b"x").expect("write");
    (dir, file)
}

/// `-c --json` rows by comm, checking each line has exactly the documented
/// fields.
fn count_rows(stdout: &str) -> HashMap<String, (u64, u64)> {
    let mut rows = HashMap::new();
    for e in events(stdout) {
        let obj = e
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {e}"));
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["comm", "failed", "opens"], "{e}");
        let comm = e["comm"].as_str().expect("comm").to_owned();
        let (opens, failed) = (
            e["opens"].as_u64().expect("opens"),
            e["failed"].as_u64().expect("failed"),
        );
        assert!(failed <= opens, "{e}");
        assert!(rows.insert(comm, (opens, failed)).is_none(), "{e} twice");
    }
    rows
}

/// Runs `kscope trace open ARGS` (count mode), forks one child per
/// (comm, n, m) that opens an existing file `n` times and a missing path
/// `m` times, then stops kscope with `signal`. Returns its stdout, its
/// stderr, and the program ids it held while running.
fn count_children(
    args: &[&str],
    children: &[(&str, usize, usize)],
    signal: i32,
) -> (String, String, Vec<u64>) {
    let (dir, existing) = existing_file(&args.join("").replace(['-', ' '], ""));
    let missing = unique_missing_path("count");
    let tracer = Tracer::start(args, true, READY);
    let ids = tracer.prog_ids();
    for &(comm, n, m) in children {
        child_opens(comm, &existing, &missing, n, m);
    }
    let (status, out, err) = tracer.stop(signal);
    assert!(status.success(), "kscope {args:?}: {status}: {err}");
    let _ = std::fs::remove_dir_all(dir);
    (out, err, ids)
}

#[test]
fn count_mode_counts_a_childs_opens_and_failures_exactly() {
    require_root();
    const N: usize = 7;
    const M: usize = 5;
    let comm = unique_comm("c");
    let (out, err, _) = count_children(
        &["trace", "open", "-c", "--json"],
        &[(&comm, N, M)],
        libc::SIGINT,
    );
    let rows = count_rows(&out);
    assert_eq!(
        rows.get(&comm),
        Some(&(N as u64 + M as u64, M as u64)),
        "{comm}: want {} opens, {M} failed:\n{out}",
        N + M
    );
    // Most opens first.
    let opens: Vec<u64> = events(&out)
        .iter()
        .map(|e| e["opens"].as_u64().expect("opens"))
        .collect();
    assert!(opens.is_sorted_by(|a, b| a >= b), "not sorted: {opens:?}");
    let summary = err
        .lines()
        .find_map(kscope::trace::parse_summary)
        .unwrap_or_else(|| panic!("no summary in:\n{err}"));
    assert_eq!(
        summary.events,
        rows.values().map(|r| r.0).sum::<u64>(),
        "the summary counts every counted open:\n{err}"
    );
    if rows.len() < kscope_common::trace::COUNTS_MAX as usize {
        assert_eq!(summary.lost, 0, "uncounted with room to spare:\n{err}");
    }
}

#[test]
fn count_mode_filters_by_name_in_the_kernel_and_detaches() {
    require_root();
    const N: usize = 3;
    const M: usize = 4;
    // `pattern` is a substring of `matching` only.
    let pattern = unique_comm("n");
    let matching = format!("{pattern}a");
    let other = unique_comm("o");
    let (out, _, ids) = count_children(
        &["trace", "open", "-c", "--json", "-n", &pattern],
        &[(&matching, N, M), (&other, N, M)],
        libc::SIGTERM,
    );
    let want = HashMap::from([(matching, (N as u64 + M as u64, M as u64))]);
    assert_eq!(count_rows(&out), want, "only the matching child:\n{out}");
    assert!(!ids.is_empty(), "the counter should have held its programs");
    assert_progs_gone(&ids);
}

#[test]
fn count_mode_with_failed_only_counts_failures_only() {
    require_root();
    let comm = unique_comm("x");
    let (out, _, _) = count_children(
        &["trace", "open", "--count", "-x", "--json", "-n", &comm],
        &[(&comm, 6, 2)],
        libc::SIGINT,
    );
    assert_eq!(count_rows(&out), HashMap::from([(comm, (2, 2))]), "{out}");
}

#[test]
fn count_mode_table_has_a_header_and_one_row_per_name() {
    require_root();
    let comm = unique_comm("t");
    let (out, _, _) = count_children(
        &["trace", "open", "-c", "-n", &comm],
        &[(&comm, 2, 1)],
        libc::SIGINT,
    );
    let mut lines = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(lines.next(), Some(vec!["COMM", "OPENS", "FAILED"]), "{out}");
    assert_eq!(lines.next(), Some(vec![comm.as_str(), "3", "1"]), "{out}");
    assert_eq!(lines.next(), None, "{out}");
}

/// Tests that hold programs in this process (Counter) run one at a
/// time, so each can tell its own programs from the others'.
static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn in_process() -> std::sync::MutexGuard<'static, ()> {
    IN_PROCESS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn open_counter_counts_past_a_full_table_as_uncounted() {
    use kscope::trace::{Counter, Filters, open::Open};
    use kscope_common::trace::COUNTS_MAX as OPEN_COUNTS_MAX;
    require_root();
    let _one = in_process();
    const EXTRA: u32 = 100;
    let prefix = format!("kqu{}", std::process::id() % 1000);
    let missing = unique_missing_path("full");
    let names: Vec<std::ffi::CString> = (0..OPEN_COUNTS_MAX + EXTRA)
        .map(|i| std::ffi::CString::new(format!("{prefix}-{i}")).expect("name"))
        .collect();
    assert!(names.iter().all(|n| n.as_bytes().len() <= 15));
    // One thread takes each name in turn and opens once under it.
    let (tid, go, h) = named_thread("kscope-full", move || {
        let path = std::ffi::CString::new(missing).expect("path");
        for n in &names {
            // SAFETY: PR_SET_NAME reads a NUL-terminated string; openat a
            // valid path.
            unsafe {
                assert_eq!(libc::prctl(libc::PR_SET_NAME, n.as_ptr()), 0);
                assert!(libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) < 0);
            }
        }
    });
    let counter = Counter::<Open>::start(
        &Default::default(),
        &Filters {
            tid: Some(tid),
            ..Filters::default()
        },
    )
    .expect("start the counter");
    go.wait();
    h.join().expect("opener");
    let counts = counter.counts().expect("counts");
    let uncounted = counter.uncounted().expect("uncounted");
    drop(counter);
    // The first OPEN_COUNTS_MAX names fill the table, one open each; every
    // later name's open is counted as uncounted.
    assert_eq!(counts.len(), OPEN_COUNTS_MAX as usize);
    for (key, c) in &counts {
        assert!(key.comm.starts_with(prefix.as_bytes()), "{key:?}");
        assert_eq!((c.events, c.failed), (1, 1), "{key:?}");
    }
    assert_eq!(uncounted, u64::from(EXTRA));
}

#[test]
fn open_counter_drop_detaches_everything() {
    use kscope::trace::{Counter, Filters, open::Open};
    require_root();
    let _one = in_process();
    let me = std::process::id();
    let before = prog_ids_of(me);
    let counter = Counter::<Open>::start(
        &Default::default(),
        &Filters {
            comm: Some(unique_comm("d")),
            ..Filters::default()
        },
    )
    .expect("start the counter");
    let ours: Vec<u64> = prog_ids_of(me)
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert!(!ours.is_empty(), "the counter should hold its programs");
    for id in &ours {
        assert!(prog_exists(*id), "program {id} not loaded while counting");
    }
    drop(counter);
    assert_progs_gone(&ours);
}

// ---- the loader's view without kernel BTF (sys::without_kernel_btf) ----

fn ns_of(path: &std::path::Path) -> Option<(u64, u64)> {
    kscope_lab::ns::ns_id(path).ok()
}

/// Mount namespaces of every thread of process `pid` (a thread that is
/// exiting may have none left to show).
fn thread_mnt_ns(pid: &str) -> Vec<(u64, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter_map(|t| ns_of(&t.path().join("ns/mnt")))
        .collect()
}

/// Every tracer builds aya's loader on a helper thread that sees an empty
/// /sys/kernel/btf. The helper sees exactly that; the process, and a
/// kscope started from the CLI, keep their mount namespace and mounts.
#[test]
fn hiding_kernel_btf_leaves_no_mount_and_no_namespace_behind() {
    use kscope::trace::{Counter, Filters, open::Open};
    require_root();
    let _one = in_process();
    let vmlinux = std::path::Path::new(kscope::sys::KERNEL_BTF_DIR).join("vmlinux");
    if !vmlinux.exists() {
        skip("kernel BTF", "no /sys/kernel/btf/vmlinux: nothing to hide");
        return;
    }
    // Mounted first, so starting a tracer mounts nothing of its own.
    kscope::sys::ensure_tracefs().expect("tracefs");
    let mounts = || std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let own = std::path::Path::new("/proc/self/ns/mnt");
    let (mounts_before, ns_before) = (mounts(), ns_of(own).expect("own mount ns"));

    let (helper_ns, helper_sees_vmlinux, helper_mounts) = kscope::sys::without_kernel_btf(|| {
        (
            ns_of(std::path::Path::new("/proc/thread-self/ns/mnt")),
            vmlinux.exists(),
            std::fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo"),
        )
    })
    .expect("root can hide the kernel's BTF");
    assert_ne!(
        helper_ns,
        Some(ns_before),
        "the helper has a namespace of its own"
    );
    assert!(!helper_sees_vmlinux, "the helper must not see {vmlinux:?}");
    assert!(
        helper_mounts
            .lines()
            .any(|l| l.contains(" /sys/kernel/btf ") && l.contains(" - tmpfs ")),
        "no tmpfs on /sys/kernel/btf in the helper's mounts:\n{helper_mounts}"
    );

    // A tracer start in this process, through the same path.
    let counter = Counter::<Open>::start(
        &Default::default(),
        &Filters {
            comm: Some(unique_comm("m")),
            ..Filters::default()
        },
    )
    .expect("start the counter");
    drop(counter);
    // And one from the CLI, checked while it runs.
    let tracer = Tracer::start(&["trace", "open", "-n", &unique_comm("k")], false, READY);
    let child_ns = thread_mnt_ns(&tracer.child.id().to_string());
    let (status, _, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    assert!(
        child_ns.iter().all(|&n| n == ns_before),
        "kscope's threads left our mount namespace: {child_ns:?} vs {ns_before:?}"
    );

    assert_eq!(mounts(), mounts_before, "the mounts changed");
    assert_eq!(ns_of(own), Some(ns_before));
    // Helper threads end asynchronously: within 5 s, every thread left
    // is in the original namespace.
    let start = Instant::now();
    loop {
        let all = thread_mnt_ns("self");
        if all.iter().all(|&n| n == ns_before) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "threads still in another mount namespace: {all:?} vs {ns_before:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where / is shared (systemd's default), a mount in a copied namespace
/// propagates back unless the copy is made private first. Checked from a
/// thread in a namespace of its own whose mounts are shared (and private
/// from the rest of the system, so a regression cannot leak further).
#[test]
fn hiding_kernel_btf_does_not_propagate_to_shared_mounts() {
    require_root();
    let vmlinux = std::path::Path::new(kscope::sys::KERNEL_BTF_DIR).join("vmlinux");
    if !vmlinux.exists() {
        skip("kernel BTF", "no /sys/kernel/btf/vmlinux: nothing to hide");
        return;
    }
    let t = std::thread::spawn(move || {
        let mount = |flags: libc::c_ulong| {
            // SAFETY: a NUL-terminated target; the other pointers are null
            // (a propagation change).
            let rc = unsafe {
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                )
            };
            assert_eq!(rc, 0, "mount: {}", std::io::Error::last_os_error());
        };
        // SAFETY: unshare takes no pointers; only this thread moves.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        mount(libc::MS_REC | libc::MS_PRIVATE);
        mount(libc::MS_REC | libc::MS_SHARED);
        let mounts = || std::fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo");
        let before = mounts();
        assert!(before.contains(" shared:"), "not shared:\n{before}");
        let hidden = kscope::sys::without_kernel_btf(|| !vmlinux.exists())
            .expect("root can hide the kernel's BTF");
        assert!(hidden, "the helper must not see {vmlinux:?}");
        let after = mounts();
        let added: Vec<&str> = after.lines().filter(|l| !before.contains(l)).collect();
        assert!(
            added.is_empty(),
            "the helper's mounts propagated back: {added:?}"
        );
        assert_eq!(after, before);
        assert!(vmlinux.exists());
    });
    if let Err(panic) = t.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Recursion misses join the lost count, read from the kernel's
/// `bpf_prog_info`. The read is checked on the fields next to them: with run
/// statistics on, the exit program ran at least once per open of the
/// generator thread (the filter runs inside it, so every openat on the
/// machine runs it), and missed nothing on this quiet path (a misread
/// offset would show another field's value there).
#[test]
fn program_run_stats_and_recursion_misses_are_read_from_prog_info() {
    use kscope::trace::{Counter, Filters, open::Open};
    require_root();
    let _one = in_process();
    const OPENS: u64 = 300;
    let Ok(_stats) = aya::sys::enable_stats(aya::sys::Stats::RunTime) else {
        skip("BPF_ENABLE_STATS", "needs Linux 5.8 and CAP_SYS_ADMIN");
        return;
    };
    let missing = unique_missing_path("stats");
    let (tid, go, h) = named_thread("kscope-stats", move || {
        let path = std::ffi::CString::new(missing).expect("path");
        for _ in 0..OPENS {
            // SAFETY: a valid NUL-terminated path; nothing to close on
            // failure, which is expected.
            unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
        }
    });
    let counter = Counter::<Open>::start(
        &Default::default(),
        &Filters {
            tid: Some(tid),
            ..Filters::default()
        },
    )
    .expect("start the counter");
    go.wait();
    h.join().expect("opener");
    let stats = counter.program_stats();
    let counted: u64 = counter
        .counts()
        .expect("counts")
        .iter()
        .map(|(_, c)| c.events)
        .sum();
    assert_eq!(counted, OPENS);
    let exit = stats
        .iter()
        .find(|(n, _)| n == kscope_common::trace::PROG_OPEN_EXIT_OPENAT)
        .unwrap_or_else(|| panic!("no exit program in {stats:?}"));
    assert!(exit.1.run_cnt >= OPENS, "{stats:?}");
    assert!(exit.1.run_time_ns > 0, "{stats:?}");
    for (name, s) in &stats {
        assert_eq!(s.recursion_misses, 0, "{name}: {stats:?}");
    }
    assert_eq!(counter.lost().expect("lost"), 0);
}

/// Traces thread `tid` with `--json` while it does its work: starts the
/// tracer, releases the thread, waits for it, stops the tracer; returns the
/// events.
fn json_events_of(
    tid: u32,
    go: &Barrier,
    h: std::thread::JoinHandle<()>,
) -> Vec<serde_json::Value> {
    let tracer = Tracer::start(
        &["trace", "open", "--json", "-t", &tid.to_string()],
        true,
        READY,
    );
    go.wait();
    h.join().expect("traced thread");
    std::thread::sleep(Duration::from_millis(200));
    let (status, out, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    events(&out)
}

/// Polls `cond` until it holds, at most `limit` (a bound on a wait, not a
/// measurement).
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The path is the one the open was given: read when the syscall starts,
/// not when it returns. A thread opens a FIFO (which blocks until a writer
/// comes), the buffer holding its path is rewritten meanwhile, then a
/// writer opens the FIFO; the event must name the FIFO.
#[test]
fn path_is_read_when_the_open_starts_not_when_it_returns() {
    use std::os::unix::ffi::OsStrExt as _;
    require_root();
    let dir = std::env::temp_dir().join(format!("kscope-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let fifo = dir.join("fifo-first");
    let decoy = dir.join("fifo-other");
    let (fifo_c, decoy_b) = (
        std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("path"),
        decoy.as_os_str().as_bytes().to_vec(),
    );
    assert_eq!(fifo_c.as_bytes().len(), decoy_b.len(), "same length");
    let _ = std::fs::remove_file(&fifo);
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    // The buffer the opener passes to open(2); it outlives every use.
    let buf: &'static mut [u8] = Box::leak(fifo_c.into_bytes_with_nul().into_boxed_slice());
    let addr = buf.as_mut_ptr() as usize;
    let (tid, go, h) = named_thread("kscope-fifo", move || {
        // SAFETY: `addr` is the leaked NUL-terminated buffer above.
        let fd = unsafe {
            libc::open(
                addr as *const libc::c_char,
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        assert!(fd >= 0, "open FIFO: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just returned by open.
        unsafe { libc::close(fd) };
    });
    let tracer = Tracer::start(
        &["trace", "open", "--json", "-t", &tid.to_string()],
        true,
        READY,
    );
    go.wait();
    // Blocked inside openat(2): /proc reports the syscall it sleeps in.
    let syscall_file = format!("/proc/self/task/{tid}/syscall");
    let in_openat = format!("{} ", libc::SYS_openat);
    wait_until(Duration::from_secs(30), "the opener to block", || {
        std::fs::read_to_string(&syscall_file).is_ok_and(|s| s.starts_with(&in_openat))
    });
    for (i, &b) in decoy_b.iter().enumerate() {
        // SAFETY: in bounds of the leaked buffer (same length); the opener
        // is asleep in the kernel, which copied the path already.
        unsafe { std::ptr::write_volatile((addr as *mut u8).add(i), b) };
    }
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open the FIFO's write end");
    h.join().expect("opener");
    drop(writer);
    std::thread::sleep(Duration::from_millis(200));
    let (status, out, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    let ev = events(&out);
    assert_eq!(ev.len(), 1, "the opener's one open:\n{out}");
    assert_eq!(ev[0]["path"], fifo.to_str().expect("utf8"), "{}", ev[0]);
    assert!(ev[0]["fd"].as_i64().is_some_and(|fd| fd >= 0), "{}", ev[0]);
    let _ = std::fs::remove_dir_all(dir);
}

/// Paths are kept whole up to PATH_MAX - 1 bytes (the longest the kernel
/// accepts), and a longer one is cut there and marked.
#[test]
fn long_paths_are_kept_whole_and_cut_ones_are_marked() {
    require_root();
    let base = unique_missing_path("long");
    // Components of at most 255 bytes (NAME_MAX), padded to `len`.
    let path_of = |len: usize| {
        let mut p = base.clone();
        while p.len() < len {
            let n = (len - p.len() - 1).min(200);
            p.push('/');
            p.push_str(&"x".repeat(n));
        }
        p.truncate(len);
        p
    };
    let paths = [path_of(300), path_of(4095), path_of(5000)];
    let to_open = paths.clone();
    let (tid, go, h) = named_thread("kscope-long", move || {
        for p in &to_open {
            let c = std::ffi::CString::new(p.as_str()).expect("path");
            // SAFETY: a valid NUL-terminated path.
            let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
            assert!(fd < 0, "{p} must not exist");
        }
    });
    let ev = json_events_of(tid, &go, h);
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert_eq!(ev[0]["path"], paths[0].as_str(), "300 bytes, whole");
    assert_eq!(ev[0]["path_truncated"], false);
    assert_eq!(ev[1]["path"], paths[1].as_str(), "4095 bytes, whole");
    assert_eq!(ev[1]["path_truncated"], false);
    assert_eq!(ev[2]["path"], &paths[2][..4095], "5000 bytes, cut at 4095");
    assert_eq!(ev[2]["path_truncated"], true);
    assert_eq!(ev[2]["errno_name"], "ENAMETOOLONG");
}

/// A real file whose name is not UTF-8: the JSON keeps its exact bytes.
#[test]
fn paths_that_are_not_utf8_keep_their_bytes_in_json() {
    use std::os::unix::ffi::OsStrExt as _;
    require_root();
    let dir = std::env::temp_dir().join(format!("kscope-bytes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join(std::ffi::OsStr::from_bytes(b"name-\xff\xfe-\xc3("));
    std::fs::write(&file, b"x").expect("create the file");
    let f2 = file.clone();
    let (tid, go, h) = named_thread("kscope-bytes", move || {
        drop(std::fs::File::open(&f2).expect("open it"));
    });
    let ev = json_events_of(tid, &go, h);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let b64 = ev[0]["path_b64"]
        .as_str()
        .unwrap_or_else(|| panic!("no path_b64 for a path that is not UTF-8: {}", ev[0]));
    let bytes = kscope::output::text::base64_decode(b64).expect("base64");
    assert_eq!(bytes, file.as_os_str().as_bytes());
    // The readable form marks the bad bytes and keeps the rest.
    assert_eq!(
        ev[0]["path"],
        String::from_utf8_lossy(file.as_os_str().as_bytes()).as_ref()
    );
    assert_eq!(ev[0]["comm"], "kscope-bytes");
    assert!(ev[0].get("comm_b64").is_none(), "{}", ev[0]);
    let _ = std::fs::remove_dir_all(dir);
}

/// `-p 0` and `-t 0` would trace every task (0 is "no filter" in the
/// kernel): refused with one clear line, by every tracer.
#[test]
fn zero_pid_or_tid_is_refused() {
    for verb in ["open", "exec", "connect"] {
        for flag in ["-p", "-t", "--pid", "--tid"] {
            let out = kscope(None, &["trace", verb, flag, "0", "-d", "0.2"]);
            assert_fails(&out, 2, &["0 would match every task"]);
        }
    }
}
