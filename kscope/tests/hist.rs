//! `kscope hist runq|syscall` on the running kernel: workloads whose
//! latencies are known (counts exactly, bounds from the kernel's own
//! guarantees), the in-kernel filters, and that nothing stays attached
//! after `-d` or SIGINT.

mod common;

use std::{
    io::Write as _,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;

const READY: Duration = Duration::from_secs(60);

/// Set to `NANOSLEEPS,GETPIDS`, this variable makes the test binary the
/// helper process of the syscall tests.
const WORKLOAD: &str = "KSCOPE_TEST_HIST_SYSCALLS";

/// Where the helper writes the duration of each of its sleeps, in ns.
const WORKLOAD_SEEN: &str = "KSCOPE_TEST_HIST_SEEN";

/// Each nanosleep of the syscall workload: 2 ms.
const SLEEP_NS: u64 = 2_000_000;

/// Not a test of its own: the helper process the syscall tests run. Waits
/// for a line on stdin, then makes NANOSLEEPS nanosleep(2 ms) and GETPIDS
/// getpid calls, as raw system calls (glibc's nanosleep() is
/// clock_nanosleep(2) underneath, musl's nanosleep(2): the raw call is the
/// same everywhere).
#[test]
#[ignore = "helper process of the syscall tests"]
fn syscall_workload_helper() {
    let spec = std::env::var(WORKLOAD).expect("run by the syscall tests only");
    let (sleeps, getpids) = spec.split_once(',').expect("N,M");
    let (sleeps, getpids): (u32, u32) = (
        sleeps.parse().expect("sleeps"),
        getpids.parse().expect("getpids"),
    );
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("go");
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: SLEEP_NS as i64,
    };
    // Each sleep as this process saw it (the kernel's enter-to-exit time
    // is at most this), one per line, for the test to bound the buckets.
    let mut seen = String::new();
    for _ in 0..sleeps {
        let t = Instant::now();
        // SAFETY: a valid timespec, and no remainder wanted.
        let r = unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &raw const ts,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        let ns = t.elapsed().as_nanos();
        assert_eq!(r, 0, "nanosleep: {}", std::io::Error::last_os_error());
        seen.push_str(&format!("{ns}\n"));
    }
    if let Some(path) = std::env::var_os(WORKLOAD_SEEN) {
        std::fs::write(path, seen).expect("write the sleeps seen");
    }
    for _ in 0..getpids {
        // SAFETY: getpid has no arguments or preconditions.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
}

/// Starts the helper: it waits for a line on stdin before its calls.
fn spawn_workload(
    sleeps: u32,
    getpids: u32,
    seen: Option<&std::path::Path>,
) -> std::process::Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(exe);
    if let Some(p) = seen {
        cmd.env(WORKLOAD_SEEN, p);
    }
    cmd.args([
        "syscall_workload_helper",
        "--exact",
        "--ignored",
        "--test-threads=1",
    ])
    .env(WORKLOAD, format!("{sleeps},{getpids}"))
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .expect("spawn the helper")
}

fn objects(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

/// (le_ns, count) of a histogram object's buckets.
fn buckets(o: &serde_json::Value) -> Vec<(u64, u64)> {
    o["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| {
            (
                b["le_ns"].as_u64().expect("le_ns"),
                b["count"].as_u64().expect("count"),
            )
        })
        .collect()
}

/// The log2 bucket upper bounds (inclusive) whose buckets overlap
/// [lo, hi] ns.
fn bounds_covering(lo: u64, hi: u64) -> Vec<u64> {
    (0..64)
        .map(|i| {
            let b_lo = if i == 0 { 0 } else { 1u64 << i };
            let b_hi = if i == 63 {
                u64::MAX
            } else {
                (1u64 << (i + 1)) - 1
            };
            (b_lo, b_hi)
        })
        .filter(|&(b_lo, b_hi)| b_lo <= hi && b_hi >= lo)
        .map(|(_, b_hi)| b_hi)
        .collect()
}

/// A child making N nanosleep(2 ms) and M getpid calls, filtered by its
/// pid and by name: exactly N nanosleep latencies, none below 2 ms (a
/// sleep never ends early) and none above what the child itself measured
/// around each call (timer slack and the wakeup's scheduling delay add to
/// a sleep, by how much depends on the machine: under emulation some take
/// 16 ms), bucket by bucket; and exactly M getpid latencies, in low
/// buckets. Nothing stays attached after SIGINT.
#[test]
fn syscall_latencies_of_a_child_land_in_their_buckets_exactly() {
    require_root();
    const N: u32 = 25;
    const M: u32 = 1000;
    let seen_path = std::env::temp_dir().join(format!("kscope-hist-seen-{}", std::process::id()));
    let mut child = spawn_workload(N, M, Some(&seen_path));
    let pid = child.id().to_string();
    let tracer = Tracer::start(
        &[
            "hist",
            "syscall",
            "nanosleep",
            "getpid",
            "-p",
            &pid,
            "--json",
        ],
        true,
        READY,
    );
    let ids = tracer.prog_ids();
    assert!(!ids.is_empty(), "the tracer holds its programs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("go");
    drop(stdin);
    let status = child.wait().expect("wait");
    assert!(status.success(), "the helper: {status}");
    let (status, out, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    assert_progs_gone(&ids);
    let objs = objects(&out);
    let names: Vec<&str> = objs.iter().filter_map(|o| o["syscall"].as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["getpid", "nanosleep"],
        "only the two asked for:\n{out}"
    );
    let sleep = objs
        .iter()
        .find(|o| o["syscall"] == "nanosleep")
        .expect("nanosleep");
    assert_eq!(sleep["count"], N, "{sleep}");
    assert_eq!(sleep["nr"], libc::SYS_nanosleep, "{sleep}");
    // Each kernel latency v_i lies in [2 ms, u_i], u_i the child's own
    // measure of that sleep. So no count below 2 ms's bucket, and for
    // every bucket bound b, at least as many latencies are <= b as there
    // are u_i <= b (and all of them are >= the 2 ms bucket's lower bound).
    let seen: Vec<u64> = std::fs::read_to_string(&seen_path)
        .expect("the sleeps the child saw")
        .lines()
        .map(|l| l.parse().expect("ns"))
        .collect();
    let _ = std::fs::remove_file(&seen_path);
    assert_eq!(seen.len(), N as usize);
    let got = buckets(sleep);
    let floor = bounds_covering(SLEEP_NS, SLEEP_NS)[0];
    assert_eq!(floor, 2_097_151, "2 ms is in the 1-2 Mi ns bucket");
    for &(le, count) in &got {
        assert!(
            le >= floor || count == 0,
            "a sleep ended before 2 ms: {sleep}"
        );
    }
    for le in bounds_covering(0, u64::MAX) {
        let kernel_le: u64 = got.iter().filter(|(l, _)| *l <= le).map(|(_, c)| c).sum();
        let child_le = seen.iter().filter(|&&u| u <= le).count() as u64;
        assert!(
            kernel_le >= child_le,
            "{child_le} sleeps took at most {le} ns as the child saw them, but only {kernel_le} in the kernel's buckets: {sleep}; child saw {seen:?}"
        );
    }
    let sum = sleep["sum_ns"].as_u64().expect("sum_ns");
    assert!(
        sum >= u64::from(N) * SLEEP_NS,
        "no sleep ends early: {sleep}"
    );
    assert!(
        sum <= seen.iter().sum::<u64>(),
        "the kernel's sum exceeds what the child measured: {sleep}; child saw {seen:?}"
    );
    let getpid = objs
        .iter()
        .find(|o| o["syscall"] == "getpid")
        .expect("getpid");
    assert_eq!(getpid["count"], M, "{getpid}");
    // Low buckets: half of them at least under 64 µs (a getpid is a
    // fraction of a microsecond; only an interrupt can stretch one).
    let p50 = getpid["p50_ns"].as_u64().expect("p50");
    assert!(p50 < 65_536, "{getpid}");
    assert!(
        err.contains(&format!("kscope hist syscall: {} latencies, 0 lost", N + M)),
        "{err}"
    );
}

/// Not a test of its own: the helper process of the burst test (see
/// [`syscall_burst`]).
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "helper process of the burst test"]
fn syscall_burst_helper() {
    syscall_burst();
}

/// The first call of each of some fifty system calls, back to back: each
/// adds a new key to the kernel's table at once, on whichever CPU the
/// child runs. Every one is counted, exactly once, and none is lost
/// (a table that allocates its keys as they come may find no memory
/// ready for a burst of them).
#[cfg(target_arch = "x86_64")]
#[test]
fn a_burst_of_new_syscalls_is_counted_exactly() {
    require_root();
    for round in 0..5 {
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(exe)
            .args([
                "syscall_burst_helper",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(SYSCALL_BURST, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the helper");
        let pid = child.id().to_string();
        let mut args = vec!["hist", "syscall"];
        args.extend(BURST_CALLS.iter().map(|(name, _)| *name));
        args.extend(["-p", &pid, "--json"]);
        let tracer = Tracer::start(&args, true, READY);
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("go");
        drop(stdin);
        assert!(child.wait().expect("wait").success());
        let (status, out, err) = tracer.stop(libc::SIGINT);
        assert!(status.success(), "{status}: {err}");
        let mut seen: Vec<(String, u64)> = objects(&out)
            .iter()
            .map(|o| {
                (
                    o["syscall"].as_str().expect("syscall").to_owned(),
                    o["count"].as_u64().expect("count"),
                )
            })
            .collect();
        seen.sort();
        let mut want: Vec<(String, u64)> = BURST_CALLS
            .iter()
            .map(|(name, _)| ((*name).to_owned(), 1))
            .collect();
        want.sort();
        assert_eq!(seen, want, "round {round}: {err}");
        let n = BURST_CALLS.len();
        assert!(
            err.contains(&format!("kscope hist syscall: {n} latencies, 0 lost")),
            "round {round}: {err}"
        );
    }
}

/// The table: a summary row and a bar per bucket, the fullest bar full.
#[test]
fn syscall_table_shows_bars() {
    require_root();
    let mut child = spawn_workload(3, 0, None);
    let pid = child.id().to_string();
    let tracer = Tracer::start(&["hist", "syscall", "nanosleep", "-p", &pid], true, READY);
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("go");
    assert!(child.wait().expect("wait").success());
    let (status, out, err) = tracer.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("SYSCALL") && lines[0].ends_with("P99"),
        "{out}"
    );
    assert!(lines[1].starts_with("nanosleep "), "{out}");
    assert!(lines[2].trim_start().starts_with("NSECS"), "{out}");
    let full = format!("|{}|", "*".repeat(40));
    assert!(lines.iter().any(|l| l.ends_with(&full)), "{out}");
}

/// Voluntary context switches of thread `tid` of this process so far.
fn nvcsw(tid: u32) -> u64 {
    let path = format!("/proc/self/task/{tid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no voluntary_ctxt_switches in {path}"))
}

/// A thread that sleeps K times, filtered by its tid: the run queue
/// histogram counts its wakeups, which the thread counts itself as its
/// voluntary context switches (each sleep ends with one wakeup) — within
/// 2%, for the rare wakeup that finds the thread preempted before it got
/// to sleep (a wakeup, but no switch).
#[test]
fn runq_counts_the_wakeups_of_a_thread() {
    require_root();
    const K: u32 = 200;
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    let (end_tx, end_rx) = mpsc::channel::<()>();
    let worker = std::thread::Builder::new()
        .name("kscope-runq".into())
        .spawn(move || {
            let tid = gettid();
            let before = nvcsw(tid);
            tid_tx.send((tid, before)).expect("tid");
            // Asleep until the tracer runs: this wakeup is the first.
            go_rx.recv().expect("go");
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 200_000,
            };
            for _ in 0..K {
                // SAFETY: a valid timespec, and no remainder wanted.
                unsafe {
                    libc::syscall(
                        libc::SYS_nanosleep,
                        &raw const ts,
                        std::ptr::null_mut::<libc::timespec>(),
                    )
                };
            }
            let after = nvcsw(tid);
            done_tx.send(after).expect("done");
            // Asleep again: leaving the CPU adds the last wait (a wait is
            // added when its task next leaves the CPU).
            end_rx.recv().expect("end");
        })
        .expect("spawn");
    let (tid, before) = tid_rx.recv().expect("tid");
    let tid_s = tid.to_string();
    let tracer = Tracer::start(&["hist", "runq", "-t", &tid_s, "--json"], true, READY);
    let ids = tracer.prog_ids();
    go_tx.send(()).expect("go");
    let after = done_rx.recv().expect("done");
    // Until the worker has left the CPU after its last sleep: a bound on
    // a failure, not a timing the result depends on.
    let start = Instant::now();
    while nvcsw(tid) == after {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "worker never slept"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, out, err) = tracer.stop(libc::SIGINT);
    end_tx.send(()).expect("end");
    worker.join().expect("worker");
    assert!(status.success(), "{status}: {err}");
    assert_progs_gone(&ids);
    let objs = objects(&out);
    assert_eq!(objs.len(), 1, "one histogram:\n{out}");
    let o = &objs[0];
    let got = o["count"].as_u64().expect("count");
    let want = after - before;
    // Near K + 1 (the K sleeps and the wait for "go"), not exactly: a short
    // sleep whose timer fires before the thread gets off the CPU makes no
    // switch, and no wakeup either.
    assert!(want > u64::from(K) / 2, "the thread slept: {want}");
    let tolerance = want * 2 / 100;
    let summary = err.lines().last().unwrap_or("");
    eprintln!("runq: kscope counted {got} wakeups, the thread {want}; {summary}");
    // Waits the kernel skipped are reported as lost, never silent: runs
    // of the program on a CPU where another BPF program was running (a
    // ring buffer's wakeup inside another tool's program fires
    // sched_wakeup there). Those are counted before any filter, so they
    // may be other threads' too: they widen the bound below, never the one
    // above. With nothing lost, the count must match as it is.
    let lost: u64 = summary
        .strip_suffix(" lost")
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no loss count in {summary:?}"));
    assert!(
        got <= want + tolerance && got + lost + tolerance >= want,
        "runq counted {got} wakeups ({lost} lost), the thread {want} (tolerance {tolerance}): {o}"
    );
    let in_buckets: u64 = buckets(o).iter().map(|(_, c)| c).sum();
    assert_eq!(in_buckets, got, "{o}");
    assert!(o["p50_ns"].as_u64().is_some() && o["p99_ns"].as_u64().is_some());
}

/// `-d` stops by itself, exit 0, with nothing left attached; an empty
/// histogram prints nothing.
#[test]
fn duration_stops_and_detaches() {
    require_root();
    let tracer = Tracer::start(
        &[
            "hist",
            "syscall",
            "getpid",
            "-p",
            "999999999",
            "-d",
            "1",
            "--json",
        ],
        true,
        READY,
    );
    let ids = tracer.prog_ids();
    assert!(!ids.is_empty());
    let (status, err) = tracer.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}: {err}");
    assert_progs_gone(&ids);
    assert!(
        err.contains("kscope hist syscall: 0 latencies, 0 lost"),
        "{err}"
    );
}

/// Unknown syscall names are refused before anything loads.
#[test]
fn unknown_syscall_names_are_refused() {
    require_root();
    let out = kscope(None, &["hist", "syscall", "nosuchcall", "-d", "1"]);
    assert_fails(&out, 1, &["nosuchcall"]);
}

/// A loop device over a file in /tmp, set up with the loop ioctls (no
/// losetup needed); detached, and the file removed, on drop.
struct LoopDev {
    dev: std::fs::File,
    path: std::path::PathBuf,
    backing: std::path::PathBuf,
}

/// include/uapi/linux/loop.h.
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

impl LoopDev {
    /// `None` when the kernel has no loop driver.
    fn new(bytes: u64) -> Option<LoopDev> {
        use std::os::fd::AsRawFd as _;
        let ctl = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .ok()?;
        let backing = std::env::temp_dir().join(format!("kscope-hist-loop-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&backing)
            .expect("create the backing file");
        file.set_len(bytes).expect("size the backing file");
        // Another process may take the free device between the two calls:
        // then ask again.
        for _ in 0..20 {
            // SAFETY: an ioctl without arguments on loop-control.
            let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
            assert!(
                n >= 0,
                "LOOP_CTL_GET_FREE: {}",
                std::io::Error::last_os_error()
            );
            let path = std::path::PathBuf::from(format!("/dev/loop{n}"));
            let mut dev = None;
            for _ in 0..100 {
                if let Ok(f) = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                {
                    dev = Some(f);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let dev = dev.unwrap_or_else(|| panic!("{} never appeared", path.display()));
            // SAFETY: LOOP_SET_FD takes the backing file's descriptor.
            if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, file.as_raw_fd()) } == 0 {
                return Some(LoopDev { dev, path, backing });
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "LOOP_SET_FD: {e}");
        }
        panic!("no free loop device after 20 tries");
    }

    /// The device's name as the kernel gives it (`loop3`).
    fn name(&self) -> String {
        self.path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd as _;
        // SAFETY: LOOP_CLR_FD on our own loop device, no argument.
        if unsafe { libc::ioctl(self.dev.as_raw_fd(), LOOP_CLR_FD, 0) } != 0 {
            eprintln!(
                "cannot detach {}: {}",
                self.path.display(),
                std::io::Error::last_os_error()
            );
        }
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// `hist block`: N direct 4 KiB writes and M direct reads of a loop device
/// by this process are N write and M read latencies of that device, each
/// in its own histogram (dd oflag=direct's I/O, one request per call).
/// No task filter: the filters apply to the task that issues a request,
/// and on 5.10 the loop device's writes are issued from a kernel worker.
/// The device is new and only this test uses it; udev's probe of it, where
/// udev runs, is over before the tracer starts.
#[test]
fn block_counts_equal_the_requests_issued() {
    use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
    require_root();
    const WRITES: u64 = 64;
    const READS: u64 = 23;
    const BLOCK: usize = 4096;
    let Some(lo) = LoopDev::new(1 << 20) else {
        skip("loop", "no /dev/loop-control (no loop driver)");
        return;
    };
    let name = lo.name();
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&lo.path)
        .expect("open the loop device with O_DIRECT");
    // O_DIRECT wants an aligned buffer.
    let layout = std::alloc::Layout::from_size_align(BLOCK, BLOCK).expect("layout");
    // SAFETY: a non-zero size; freed below with the same layout.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!ptr.is_null());
    // SAFETY: BLOCK bytes just allocated, used only here.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, BLOCK) };
    if let Some(udevadm) = find_in_path("udevadm") {
        let _ = Command::new(udevadm).args(["settle", "-t", "10"]).status();
    }
    let tracer = Tracer::start(&["hist", "block", "--json"], true, READY);
    let ids = tracer.prog_ids();
    for i in 0..WRITES {
        buf[0] = i as u8;
        dev.write_all_at(buf, i * BLOCK as u64)
            .expect("direct write");
    }
    for i in 0..READS {
        dev.read_exact_at(buf, i * BLOCK as u64)
            .expect("direct read");
    }
    // Direct I/O returns after its completion: every latency is in.
    let (status, out, err) = tracer.stop(libc::SIGINT);
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    drop(dev);
    drop(lo);
    assert!(status.success(), "{status}: {err}");
    assert_progs_gone(&ids);
    let objs = objects(&out);
    let count = |op: &str| {
        objs.iter()
            .filter(|o| o["device"] == name.as_str() && o["op"] == op)
            .map(|o| o["count"].as_u64().expect("count"))
            .sum::<u64>()
    };
    eprintln!(
        "block: {name}: {} writes, {} reads",
        count("write"),
        count("read")
    );
    assert_eq!(count("write"), WRITES, "{out}");
    assert_eq!(count("read"), READS, "{out}");
    for o in objs.iter().filter(|o| o["device"] == name.as_str()) {
        let in_buckets: u64 = buckets(o).iter().map(|(_, c)| c).sum();
        assert_eq!(Some(in_buckets), o["count"].as_u64(), "{o}");
        assert!(
            o["dev"].as_str().is_some_and(|d| d.starts_with("7:")),
            "{o}"
        );
    }
}
