//! `--cgroup PATH` on the running kernel: two copies of one workload, one
//! in a cgroup below the filtered one and one outside it, run while every
//! tool that takes the flag (`trace open|exec|connect`, `hist
//! syscall|runq`, `profile`) watches; each must keep exactly the inside
//! copy. Events name the inside copy's cgroup (id and path). The cgroups
//! are removed afterwards, also when the test fails.

mod common;

use std::{
    io::Write as _,
    net::TcpListener,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

const READY: Duration = Duration::from_secs(120);

/// Set to `MARKER,PORT,SLEEPS`, this variable makes the test binary the
/// workload process.
const WORKLOAD: &str = "KSCOPE_TEST_CGROUP_WORKLOAD";

/// Each sleep of the workload: 1 ms.
const SLEEP_NS: i64 = 1_000_000;
/// Sleeps of the inside and the outside copy: different, so a histogram
/// that counted the wrong one, or both, cannot pass.
const SLEEPS_IN: u32 = 20;
const SLEEPS_OUT: u32 = 200;

/// Not a test of its own: the workload the filter test runs twice. Waits
/// for a line on stdin, then opens `/nonexistent/MARKER`, connects to
/// 127.0.0.1:PORT, makes SLEEPS raw nanosleep(1 ms) calls, runs
/// `sh -c : MARKER`, and keeps a CPU busy for 300 ms.
#[test]
#[ignore = "helper process of the cgroup filter test"]
fn cgroup_workload_helper() {
    let spec = std::env::var(WORKLOAD).expect("run by the cgroup test only");
    let mut it = spec.split(',');
    let (marker, port, sleeps) = (
        it.next().expect("marker").to_owned(),
        it.next().expect("port").parse::<u16>().expect("port"),
        it.next().expect("sleeps").parse::<u32>().expect("sleeps"),
    );
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("go");
    assert!(std::fs::File::open(Path::new("/nonexistent").join(&marker)).is_err());
    let _conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: SLEEP_NS,
    };
    for _ in 0..sleeps {
        // SAFETY: a valid timespec, and no remainder wanted.
        let r = unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &raw const ts,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        assert_eq!(r, 0, "nanosleep: {}", std::io::Error::last_os_error());
    }
    let st = Command::new("sh")
        .args(["-c", ":", &marker])
        .status()
        .expect("sh");
    assert!(st.success());
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed() < Duration::from_millis(300) {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
}

/// The cgroup v2 mount, from /proc/self/mountinfo (field 5; the type
/// follows ` - `).
fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(left.split_whitespace().nth(4)?))
    })
}

/// The directory of the cgroup this process is in, from
/// /proc/self/cgroup's v2 line.
fn own_cgroup_dir(mount: &Path) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    mount.join(rel.trim_start_matches('/'))
}

/// The id (directory inode) of the cgroup this process is in.
fn own_cgroup_id(mount: &Path) -> u64 {
    std::fs::metadata(own_cgroup_dir(mount))
        .expect("stat own cgroup")
        .ino()
}

/// As root, with a cgroup v2 hierarchy: its mount, and a fresh cgroup
/// named `kscope-test-KIND-PID` (also returned) at its top. None, the test
/// skipped, without a hierarchy.
fn test_cgroup(kind: &str) -> Option<(PathBuf, String, TestCgroup)> {
    require_root();
    let Some(mount) = cgroup2_mount() else {
        skip("cgroup2", "no cgroup v2 hierarchy is mounted");
        return None;
    };
    let tag = format!("kscope-test-{kind}-{}", std::process::id());
    let cg = TestCgroup::new(&mount, &tag);
    Some((mount, tag, cg))
}

/// A cgroup this test made, removed (with the ones below it) on drop. Its
/// processes must have exited by then.
struct TestCgroup {
    dir: PathBuf,
    /// Its children, removed first.
    subs: Vec<PathBuf>,
}

impl TestCgroup {
    fn new(mount: &Path, name: &str) -> TestCgroup {
        let dir = mount.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TestCgroup {
            dir,
            subs: Vec::new(),
        }
    }

    fn sub(&mut self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        self.subs.push(d.clone());
        d
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in self.subs.iter().rev().chain([&self.dir]) {
            // A cgroup whose last process just exited may still count it
            // for a moment (it is removed when the task is freed).
            let start = Instant::now();
            while let Err(e) = std::fs::remove_dir(d) {
                if start.elapsed() > Duration::from_secs(10) {
                    eprintln!("cannot remove cgroup {}: {e}", d.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Starts a workload copy in `cgroup` (when given): a shell moves itself
/// there and then becomes the workload, which waits for a line on stdin.
fn spawn_workload(
    cgroup: Option<&Path>,
    marker: &str,
    port: u16,
    sleeps: u32,
) -> std::process::Child {
    let exe = std::env::current_exe().expect("test binary");
    let spec = format!("{marker},{port},{sleeps}");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(
            r#"if [ -n "$1" ]; then echo $$ > "$1/cgroup.procs" || exit 9; fi
exec "$2" --exact cgroup_workload_helper --ignored --nocapture --test-threads=1 >/dev/null"#,
        )
        .arg("sh")
        .arg(cgroup.map(Path::as_os_str).unwrap_or_default())
        .arg(exe)
        .env(WORKLOAD, spec)
        .stdin(Stdio::piped());
    cmd.spawn().expect("spawn the workload")
}

/// The JSON lines of `out`.
fn objects(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

#[test]
fn cgroup_filter_keeps_exactly_the_inside_workload_in_every_tool() {
    let Some((mount, tag, mut cg)) = test_cgroup("cg") else {
        return;
    };
    // The inside copy runs one level below the filtered cgroup: the
    // filter covers descendants.
    let sub = cg.sub("inner");
    let sub_id = std::fs::metadata(&sub).expect("stat").ino();
    let filter = cg.dir.to_str().expect("utf-8 path").to_owned();

    let (l_in, l_out) = (
        TcpListener::bind("127.0.0.1:0").expect("listen"),
        TcpListener::bind("127.0.0.1:0").expect("listen"),
    );
    let (port_in, port_out) = (
        l_in.local_addr().expect("addr").port(),
        l_out.local_addr().expect("addr").port(),
    );
    let (m_in, m_out) = (format!("{tag}-in"), format!("{tag}-out"));
    let mut w_in = spawn_workload(Some(&sub), &m_in, port_in, SLEEPS_IN);
    let mut w_out = spawn_workload(None, &m_out, port_out, SLEEPS_OUT);
    let (pid_in, pid_out) = (w_in.id(), w_out.id());
    // The outside copy's cgroup: the one this test runs in.
    let out_id = own_cgroup_id(&mount);
    // The inside copy is in its cgroup before any tracer starts.
    let start = Instant::now();
    while !std::fs::read_to_string(sub.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim() == pid_in.to_string())
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "workload not in its cgroup"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let f = filter.as_str();
    let tracers = [
        (
            "open",
            Tracer::start(&["trace", "open", "--cgroup", f, "--json"], true, READY),
        ),
        (
            "exec",
            Tracer::start(&["trace", "exec", "--cgroup", f, "--json"], true, READY),
        ),
        (
            "connect",
            Tracer::start(&["trace", "connect", "--cgroup", f, "--json"], true, READY),
        ),
        (
            "syscall",
            Tracer::start(
                &["hist", "syscall", "nanosleep", "--cgroup", f, "--json"],
                true,
                READY,
            ),
        ),
        (
            "runq",
            Tracer::start(&["hist", "runq", "--cgroup", f, "--json"], true, READY),
        ),
        // Unfiltered, split by cgroup: each copy in a histogram of its own.
        (
            "runq-per-cgroup",
            Tracer::start(&["hist", "runq", "--per-cgroup", "--json"], true, READY),
        ),
        (
            "per-cgroup",
            Tracer::start(
                &["hist", "syscall", "nanosleep", "--per-cgroup", "--json"],
                true,
                READY,
            ),
        ),
        (
            "profile",
            Tracer::start_until(
                None,
                &[
                    "profile",
                    "--cgroup",
                    f,
                    "--json",
                    "--progress",
                    "-F",
                    "199",
                    "-U",
                ],
                &[],
                true,
                READY,
                "sampling:",
            ),
        ),
    ];
    for w in [&mut w_in, &mut w_out] {
        writeln!(w.stdin.take().expect("stdin"), "go").expect("go");
    }
    for (w, what) in [(&mut w_in, "inside"), (&mut w_out, "outside")] {
        let st = w.wait().expect("wait");
        assert!(st.success(), "{what} workload: {st}");
    }
    // Every tracer drains what it has within its poll interval; SIGINT
    // then prints the rest and the totals.
    std::thread::sleep(Duration::from_millis(200));
    let mut outs = std::collections::HashMap::new();
    // Their stderr too, for the failure messages: the hist tools' last
    // line counts the events they lost.
    let mut errs = std::collections::HashMap::new();
    for (name, t) in tracers {
        let (status, out, err) = t.stop(libc::SIGINT);
        assert!(status.success(), "{name}: {status}: {err}");
        outs.insert(name, out);
        errs.insert(name, err);
    }
    drop((l_in, l_out));

    // open: the inside copy's open, not the outside's; every event from
    // the cgroup below the filter, named by id and path.
    let opens = objects(&outs["open"]);
    let path_in = format!("/nonexistent/{m_in}");
    assert!(
        opens
            .iter()
            .any(|o| o["path"] == path_in.as_str() && o["pid"] == pid_in),
        "no open of {path_in} by {pid_in}:\n{}",
        outs["open"]
    );
    for o in &opens {
        assert_ne!(o["pid"], pid_out, "an outside open passed: {o}");
        assert_eq!(o["cgroup_id"], sub_id, "{o}");
        assert_eq!(o["cgroup"], format!("/{tag}/inner").as_str(), "{o}");
    }
    // exec: the inside copy's `sh -c : MARKER`.
    let execs = objects(&outs["exec"]);
    let has = |m: &str| {
        execs.iter().any(|o| {
            o["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == m))
        })
    };
    assert!(has(&m_in), "no exec with {m_in}:\n{}", outs["exec"]);
    assert!(!has(&m_out), "an outside exec passed:\n{}", outs["exec"]);
    assert!(
        execs.iter().all(|o| o["cgroup_id"] == sub_id),
        "{}",
        outs["exec"]
    );
    // connect: to the inside copy's port only.
    let conns = objects(&outs["connect"]);
    assert!(
        conns
            .iter()
            .any(|o| o["dport"] == port_in && o["pid"] == pid_in),
        "no connect to {port_in}:\n{}",
        outs["connect"]
    );
    for o in &conns {
        assert_ne!(o["dport"], port_out, "an outside connect passed: {o}");
        assert_eq!(o["cgroup_id"], sub_id, "{o}");
    }
    // hist syscall: exactly the inside copy's nanosleeps.
    let hists = objects(&outs["syscall"]);
    assert_eq!(hists.len(), 1, "one histogram:\n{}", outs["syscall"]);
    assert_eq!(
        hists[0]["count"], SLEEPS_IN,
        "{}{}",
        outs["syscall"], errs["syscall"]
    );
    // hist syscall --per-cgroup: the inside copy's nanosleeps, exactly,
    // under its cgroup's id and path; the outside copy's (and whatever
    // else sleeps in this test's cgroup) under the test's own.
    let per = objects(&outs["per-cgroup"]);
    let of = |id: u64| per.iter().find(|o| o["cgroup_id"] == id);
    let inside =
        of(sub_id).unwrap_or_else(|| panic!("no histogram of {sub_id}:\n{}", outs["per-cgroup"]));
    assert_eq!(
        inside["count"], SLEEPS_IN,
        "{inside}\n{}",
        errs["per-cgroup"]
    );
    assert_eq!(
        inside["cgroup"],
        format!("/{tag}/inner").as_str(),
        "{inside}"
    );
    assert!(inside["container_id"].is_null(), "{inside}");
    let outside =
        of(out_id).unwrap_or_else(|| panic!("no histogram of {out_id}:\n{}", outs["per-cgroup"]));
    let n = outside["count"].as_u64().expect("count");
    assert!(
        n >= u64::from(SLEEPS_OUT),
        "{n} sleeps outside: {outside}\n{}",
        errs["per-cgroup"]
    );
    // hist runq: the inside copy's waits, at most one per sleep and a few
    // for its start, its exec and its child; far from the outside's
    // SLEEPS_OUT. (A 1 ms sleep whose timer fires before the task is off
    // the CPU makes no wait, so no lower bound beyond one.)
    let runq = objects(&outs["runq"]);
    let n = runq.first().and_then(|o| o["count"].as_u64()).unwrap_or(0);
    assert!(
        (1..=u64::from(SLEEPS_IN) + 20).contains(&n),
        "runq counted {n} waits in the cgroup:\n{}",
        outs["runq"]
    );
    // hist runq --per-cgroup: the inside copy's cgroup has a histogram of
    // its own, which counts exactly what the filtered tool counted: both
    // were attached while the copy waited for its go, and stopped after it
    // exited, and both add a wait when the task that waited runs out. (It
    // kept one histogram in all before this test, and lost every other
    // cgroup's waits.)
    let per = objects(&outs["runq-per-cgroup"]);
    let inside = per
        .iter()
        .find(|o| o["cgroup_id"] == sub_id)
        .unwrap_or_else(|| {
            panic!(
                "no runq histogram of {sub_id}:\n{}",
                outs["runq-per-cgroup"]
            )
        });
    assert_eq!(
        inside["count"].as_u64(),
        Some(n),
        "{inside}\nfiltered: {}\n{}",
        outs["runq"],
        errs["runq-per-cgroup"]
    );
    assert!(
        per.iter().any(|o| o["cgroup_id"] != sub_id),
        "other cgroups' waits have histograms too:\n{}",
        outs["runq-per-cgroup"]
    );

    // profile: samples of the inside copy (it kept a CPU busy), none of
    // the outside one's, which did the same.
    let report: serde_json::Value = serde_json::from_str(&outs["profile"]).expect("profile JSON");
    let stacks = report["stacks"].as_array().expect("stacks");
    assert!(
        stacks.iter().any(|s| s["pid"] == pid_in),
        "no samples of the inside copy: {report}"
    );
    for s in stacks {
        assert_ne!(s["pid"], pid_out, "a sample of the outside copy: {s}");
        // Each stack names the cgroup of the task sampled.
        if s["pid"] == pid_in {
            assert_eq!(s["cgroup_id"], sub_id, "{s}");
            assert_eq!(s["cgroup"], format!("/{tag}/inner").as_str(), "{s}");
        }
    }
    drop(cg);
    assert!(!mount.join(&tag).exists(), "the test cgroup is gone");
}

/// Not a test of its own: the helper process of the spill test (see
/// [`syscall_burst`]).
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "helper process of the spill test"]
fn syscall_burst_helper() {
    syscall_burst();
}

/// More histograms than the kernel's table holds, all new at once: the
/// same fifty-odd system calls made once each from 21 cgroups, split by
/// cgroup, is 21 x 51 = 1071 keys against the table's 1024
/// (`SYSCALL_NR_MAX`), 51 new ones within microseconds from each process.
/// Keys the table cannot take, because it is full or because the kernel
/// had no memory ready for them (Linux 5.10 ran out after some 350), go
/// to the spare table, so every call is counted, exactly once, under its
/// own syscall and cgroup, and nothing is lost.
#[cfg(target_arch = "x86_64")]
#[test]
fn more_keys_than_the_table_holds_are_all_counted() {
    let Some((_, _, mut cg)) = test_cgroup("spill") else {
        return;
    };
    const CGROUPS: usize = 21;
    let keys = CGROUPS * BURST_CALLS.len();
    assert!(
        keys > 1024 && keys <= 2 * 1024,
        "{keys} keys: more than the table, no more than the spare adds"
    );
    let exe = std::env::current_exe().expect("test binary");
    let mut helpers = Vec::new();
    for i in 0..CGROUPS {
        let dir = cg.sub(&format!("c{i}"));
        let id = std::fs::metadata(&dir).expect("stat").ino();
        let child = Command::new("sh")
            .arg("-c")
            .arg(
                r#"echo $$ > "$1/cgroup.procs" || exit 9
exec "$2" --exact syscall_burst_helper --ignored --test-threads=1 >/dev/null"#,
            )
            .arg("sh")
            .arg(&dir)
            .arg(&exe)
            .env(SYSCALL_BURST, "1")
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn a helper");
        helpers.push((child, id));
    }
    let mut args = vec!["hist", "syscall"];
    args.extend(BURST_CALLS.iter().map(|(name, _)| *name));
    args.extend(["--per-cgroup", "-n", "kscope-burst", "--json"]);
    let tracer = Tracer::start(&args, true, READY);
    for (child, _) in &mut helpers {
        writeln!(child.stdin.take().expect("stdin"), "go").expect("go");
    }
    for (child, _) in &mut helpers {
        let st = child.wait().expect("wait");
        assert!(st.success(), "a helper: {st}");
    }
    let (status, out, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    let mut got: Vec<(String, u64, u64)> = objects(&out)
        .iter()
        .map(|o| {
            (
                o["syscall"].as_str().expect("syscall").to_owned(),
                o["cgroup_id"].as_u64().expect("cgroup_id"),
                o["count"].as_u64().expect("count"),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, u64, u64)> = helpers
        .iter()
        .flat_map(|&(_, id)| {
            BURST_CALLS
                .iter()
                .map(move |(name, _)| ((*name).to_owned(), id, 1))
        })
        .collect();
    want.sort();
    assert_eq!(got.len(), want.len(), "{err}");
    assert_eq!(got, want, "{err}");
    assert!(
        err.contains(&format!("kscope hist syscall: {keys} latencies, 0 lost")),
        "{err}"
    );
    drop(cg);
}

/// A task that moves into the filtered cgroup, out, and in again, between
/// events that follow each other closely (one shell, on one CPU most of
/// the time): each event is judged by where the task is when it happens,
/// never by a verdict kept from before a move. The tracers keep each
/// CPU's last verdict, and a move must make it old; the last move is
/// followed by an exec, a container's first.
#[test]
fn a_task_is_judged_by_its_cgroup_after_each_move() {
    let Some((mount, tag, cg)) = test_cgroup("move") else {
        return;
    };
    let filter = cg.dir.to_str().expect("utf-8 path").to_owned();
    let home = own_cgroup_dir(&mount);
    let open = Tracer::start(
        &["trace", "open", "--cgroup", &filter, "--json"],
        true,
        READY,
    );
    let exec = Tracer::start(
        &["trace", "exec", "--cgroup", &filter, "--json"],
        true,
        READY,
    );
    const ROUNDS: usize = 5;
    // Each round: an open outside, the move in, an open inside, the move
    // back, an open outside; the shell's redirections are its own opens
    // (of a builtin's, in the shell's process).
    // Then the move in and an exec.
    let mut script = String::new();
    for r in 0..ROUNDS {
        script.push_str(&format!(
            r#"{{ true < /nonexistent/{tag}-out-a{r}; }} 2>/dev/null || true
echo $$ > "$1/cgroup.procs" || exit 9
{{ true < /nonexistent/{tag}-in{r}; }} 2>/dev/null || true
echo $$ > "$2/cgroup.procs" || exit 9
{{ true < /nonexistent/{tag}-out-b{r}; }} 2>/dev/null || true
"#
        ));
    }
    script.push_str(&format!(
        "echo $$ > \"$1/cgroup.procs\" || exit 9\nexec sh -c : {tag}-exec\n"
    ));
    let st = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg("sh")
        .arg(&cg.dir)
        .arg(&home)
        .status()
        .expect("sh");
    assert!(st.success(), "the moving shell: {st}");
    std::thread::sleep(Duration::from_millis(200));
    let (status, out, err) = open.stop(libc::SIGINT);
    assert!(status.success(), "open: {status}: {err}");
    let (status, exec_out, exec_err) = exec.stop(libc::SIGINT);
    assert!(status.success(), "exec: {status}: {exec_err}");
    let paths: Vec<String> = objects(&out)
        .iter()
        .filter_map(|o| o["path"].as_str().map(str::to_owned))
        .collect();
    for r in 0..ROUNDS {
        let inside = format!("/nonexistent/{tag}-in{r}");
        assert!(
            paths.contains(&inside),
            "round {r}: the open after the move in is missing:\n{out}"
        );
        for o in ["out-a", "out-b"] {
            let outside = format!("/nonexistent/{tag}-{o}{r}");
            assert!(
                !paths.contains(&outside),
                "round {r}: an open outside passed ({outside}):\n{out}"
            );
        }
    }
    let marker = format!("{tag}-exec");
    assert!(
        objects(&exec_out).iter().any(|o| o["args"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == marker.as_str()))),
        "no exec with {marker}:\n{exec_out}"
    );
    drop(cg);
}

/// A path that is no cgroup v2 directory is one error line, exit 1, before
/// anything is loaded.
#[test]
fn cgroup_that_is_not_a_cgroup2_directory_is_refused() {
    require_root();
    for args in [
        &["trace", "open", "--cgroup", "/tmp", "-d", "1"][..],
        &["hist", "runq", "--cgroup", "/tmp", "-d", "1"],
        &["profile", "--cgroup", "/tmp", "-d", "1"],
    ] {
        let out = kscope(None, args);
        assert_fails(&out, 1, &["/tmp is not a cgroup v2 directory"]);
    }
    let out = kscope(
        None,
        &[
            "trace",
            "exec",
            "--cgroup",
            "/nonexistent-kscope",
            "-d",
            "1",
        ],
    );
    assert_fails(&out, 1, &["cgroup /nonexistent-kscope", "No such file"]);
}
