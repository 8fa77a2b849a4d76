//! `cargo xtask bench hist`: `kscope hist` next to bpftrace, libbpf-tools
//! and BCC, measured in one run. Needs root. Not a test.
//!
//! - runq: the added ns per context switch under `perf bench sched pipe`
//!   (two processes passing a token through pipes: each operation is two
//!   switches), against the same run with no tool, for `kscope hist
//!   runq`, a bpftrace script of runqlat's kind (runqlat.bt's probes are
//!   kprobes, which the host lacks, so the sched tracepoints), libbpf-tools
//!   `runqlat` and BCC's `runqlat-bpfcc`, where they run; and each tool's
//!   peak RSS.
//! - syscall: the added ns per getpid(2) (one traced system call) for
//!   `kscope hist syscall` and a bpftrace script keeping the same
//!   histograms (per syscall number, from raw_syscalls).
//! - the cgroup filter: the same getpid loop run inside a fresh cgroup,
//!   under `kscope hist syscall` with and without `--cgroup` (the filter
//!   then passes every call, so the whole check is paid). The difference
//!   in the loop's time is far below the machine's noise, so the cost is
//!   read from the kernel's own accounting instead
//!   (`kernel.bpf_stats_enabled`, as `bpftool prog show` prints it): the
//!   enter program's run time per run, with and without the filter, both
//!   attached at once over the same loop (see [`cgroup_cost`]); and again
//!   with the loop's calls turned away, by the filter (an empty cgroup) and
//!   by `-p 1`, where the programs are a few instructions each.
//!
//! Each figure is the median of several runs; the machine is shared, so
//! the load average is printed with the table.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// `perf bench sched pipe -l`.
const PIPE_LOOPS: &str = "100000";
/// getpid calls per timed loop.
const GETPIDS: u64 = 1_000_000;
const RUNS: usize = 5;

/// A tool running until [`stop`].
struct Tool {
    child: Child,
}

/// Starts `cmd` and waits for a line containing `marker` on stdout or
/// stderr (at most 60 s).
fn start(cmd: &mut Command, marker: &'static str) -> anyhow::Result<Tool> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().context("stdout")?) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().context("stderr")?),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            let mut tail = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line.contains(marker) {
                    let _ = tx.send(Ok(()));
                }
                tail = std::mem::take(&mut line);
            }
            let _ = tx.send(Err(tail));
            // Drain whatever follows.
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(())) => return Ok(Tool { child }),
            // One stream closed early: the other may still say ready.
            Ok(Err(last)) => {
                if let Ok(Some(st)) = child.try_wait() {
                    bail!("exited ({st}) before it was ready: {}", last.trim());
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("not ready within 60 s");
            }
        }
    }
}

/// The tool's peak RSS in MiB, then SIGINT and a bounded wait.
fn stop(mut t: Tool) -> f64 {
    let rss = peak_rss_kib(t.child.id()) as f64 / 1024.0;
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(t.child.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if matches!(t.child.try_wait(), Ok(Some(_))) {
            return rss;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = t.child.kill();
    let _ = t.child.wait();
    rss
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ns per context switch of one `perf bench sched pipe` run.
fn pipe_switch_ns() -> anyhow::Result<f64> {
    let out = Command::new("perf")
        .args(["bench", "sched", "pipe", "-l", PIPE_LOOPS])
        .output()
        .context("running perf bench sched pipe")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let us_per_op: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_suffix("usecs/op"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no usecs/op in perf's output: {text}"))?;
    // One operation: a round trip, two switches.
    Ok(us_per_op * 1000.0 / 2.0)
}

fn pipe_median() -> anyhow::Result<f64> {
    Ok(median(
        (0..RUNS)
            .map(|_| pipe_switch_ns())
            .collect::<anyhow::Result<_>>()?,
    ))
}

/// ns per getpid(2) over [`GETPIDS`] raw calls.
fn getpid_ns() -> f64 {
    let start = Instant::now();
    for _ in 0..GETPIDS {
        // SAFETY: getpid has no arguments or preconditions.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    start.elapsed().as_nanos() as f64 / GETPIDS as f64
}

fn getpid_median() -> f64 {
    median((0..RUNS).map(|_| getpid_ns()).collect())
}

/// A fresh cgroup v2 directory this process moved itself into, and an
/// empty one next to it; moves back and removes both on drop.
struct BenchCgroup {
    dir: PathBuf,
    empty: PathBuf,
    home: PathBuf,
}

impl BenchCgroup {
    fn enter() -> anyhow::Result<BenchCgroup> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mount = info
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .context("no cgroup v2 hierarchy mounted")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 line in /proc/self/cgroup")?;
        let home = mount.join(rel.trim_start_matches('/'));
        let dir = mount.join(format!("kscope-bench-{}", std::process::id()));
        let empty = mount.join(format!("kscope-bench-{}-empty", std::process::id()));
        std::fs::create_dir(&dir)?;
        let cg = BenchCgroup { dir, empty, home };
        std::fs::create_dir(&cg.empty)?;
        // Every thread: writing the pid moves the whole process.
        std::fs::write(cg.dir.join("cgroup.procs"), std::process::id().to_string())?;
        Ok(cg)
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::remove_dir(&self.empty);
    }
}

struct Row {
    what: String,
    added_ns: Option<f64>,
    /// The tool's BPF programs' run time (kernel.bpf_stats_enabled) per
    /// event: per context switch (/proc/stat's ctxt) for runq, per system
    /// call (two program runs) for syscall.
    bpf_ns: Option<f64>,
    rss_mib: Option<f64>,
    note: String,
}

/// What a BPF run-time figure is divided by.
#[derive(Clone, Copy)]
enum Per {
    Switch,
    Syscall,
}

/// Context switches since boot, all CPUs (/proc/stat's ctxt).
fn ctxt() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
}

/// (run_time_ns, run_cnt) summed over the BPF programs process `pid`
/// holds (prog_id in its /proc/PID/fdinfo, program and link fds alike),
/// from `bpftool -j prog show`; None without any.
fn bpf_of(pid: u32) -> Option<(u64, u64)> {
    let mut ids = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .ok()?
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in text.lines() {
            if let Some(Ok(id)) = l.strip_prefix("prog_id:").map(|v| v.trim().parse::<u64>()) {
                ids.insert(id);
            }
        }
    }
    if ids.is_empty() {
        return None;
    }
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .ok()?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut sum = (0, 0);
    for p in progs.as_array()? {
        if p["id"].as_u64().is_some_and(|id| ids.contains(&id)) {
            sum.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            sum.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Some(sum)
}

/// Runs `measure` (median ns per event) with no tool, then under `cmd`
/// once it is ready: the baseline is taken right before each tool, as the
/// shared machine's load drifts over a run.
fn under(
    what: &str,
    cmd: &mut Command,
    marker: &'static str,
    per: Per,
    measure: &dyn Fn() -> anyhow::Result<f64>,
) -> Row {
    let base = match measure() {
        Ok(b) => b,
        Err(e) => {
            return Row {
                what: what.into(),
                added_ns: None,
                bpf_ns: None,
                rss_mib: None,
                note: format!("baseline: {e:#}"),
            };
        }
    };
    let tool = match start(cmd, marker) {
        Ok(t) => t,
        Err(e) => {
            return Row {
                what: what.into(),
                added_ns: None,
                bpf_ns: None,
                rss_mib: None,
                note: format!("does not run here: {e:#}"),
            };
        }
    };
    let pid = tool.child.id();
    let before = (bpf_of(pid), ctxt());
    let got = measure();
    let after = (bpf_of(pid), ctxt());
    let bpf_ns = match (before, after, per) {
        ((Some((t0, _)), Some(x0)), (Some((t1, _)), Some(x1)), Per::Switch) if x1 > x0 => {
            Some((t1 - t0) as f64 / (x1 - x0) as f64)
        }
        ((Some((t0, c0)), _), (Some((t1, c1)), _), Per::Syscall) if c1 > c0 => {
            Some((t1 - t0) as f64 / ((c1 - c0) as f64 / 2.0))
        }
        _ => None,
    };
    let rss = stop(tool);
    match got {
        Ok(ns) => Row {
            what: what.into(),
            added_ns: Some(ns - base),
            bpf_ns,
            rss_mib: Some(rss),
            note: String::new(),
        },
        Err(e) => Row {
            what: what.into(),
            added_ns: None,
            bpf_ns,
            rss_mib: Some(rss),
            note: format!("{e:#}"),
        },
    }
}

fn kscope(bin: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args(args);
    c
}

fn bpftrace(prog: &str) -> Command {
    let mut c = Command::new("bpftrace");
    c.args([
        "-e",
        &format!("BEGIN {{ printf(\"kscope-bench-ready\\n\"); }} {prog}"),
    ]);
    c
}

fn print(title: &str, unit: &str, rows: &[Row]) {
    println!("\n{title}");
    println!("| tool | added {unit} (wall) | BPF run time {unit} | peak RSS (MiB) | note |");
    println!("|---|---:|---:|---:|---|");
    for r in rows {
        let f = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what,
            f(r.added_ns, 1),
            f(r.bpf_ns, 1),
            f(r.rss_mib, 1),
            r.note
        );
    }
}

/// (run_time_ns, run_cnt) by program id of the loaded programs whose name
/// starts with `prefix` (names are cut at 15 bytes), from `bpftool -j prog
/// show`.
fn progs(prefix: &str) -> anyhow::Result<std::collections::BTreeMap<u64, (u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("running bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut by_id = std::collections::BTreeMap::new();
    for p in progs.as_array().context("bpftool's list")? {
        if p["name"].as_str().is_some_and(|n| n.starts_with(prefix)) {
            by_id.insert(
                p["id"].as_u64().unwrap_or(0),
                (
                    p["run_time_ns"].as_u64().unwrap_or(0),
                    p["run_cnt"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    Ok(by_id)
}

/// The enter program's ns per run without and with `--cgroup`, and the
/// filter's cost (medians), with BPF run-time statistics on.
///
/// The two are measured side by side: both tools run at once, so both
/// programs run on every getpid of the same loop, one right after the
/// other, under the same load, caches and frequency. Measured one after
/// the other instead, the machine's drift between two loops was larger
/// than the filter. The program attached first costs about 90 ns more per
/// run than the second here (whichever it is), so the order alternates and
/// each cost is taken over a pair of runs, one in each order: the mean of
/// the two differences, where the order's share cancels.
///
/// `plain` and `filtered` are the two tools' arguments: for the passing
/// case, the same tool without and with `--cgroup` of the loop's cgroup;
/// for the rejecting case, `-p 1` (the check before the cgroup's, which
/// turns the loop's calls away at once) and `--cgroup` of an empty
/// cgroup, so each program is a few instructions and the difference is
/// the check alone, not a small part of a whole histogram update.
///
/// `prog` names the program timed (as the kernel keeps it, 15 bytes), and
/// `workload` makes it run.
fn cgroup_cost(
    bin: &str,
    prog: &str,
    workload: &dyn Fn() -> anyhow::Result<()>,
    plain: &[&str],
    filtered: &[&str],
) -> anyhow::Result<(f64, f64, f64)> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(STATS)?;
    std::fs::write(STATS, "1")?;
    // Starts `args` and returns it with the id of the program it loaded.
    let launch = |args: &[&str]| -> anyhow::Result<(Tool, u64)> {
        let old = progs(prog)?;
        let tool = start(&mut kscope(bin, args), "(ready)")?;
        let new = progs(prog)?
            .into_keys()
            .find(|id| !old.contains_key(id))
            .context("no new enter program")?;
        Ok((tool, new))
    };
    // (without, with) ns per run, both at once, `filtered_first` or not.
    let side_by_side = |filtered_first: bool| -> anyhow::Result<(f64, f64)> {
        let order = if filtered_first {
            [filtered, plain]
        } else {
            [plain, filtered]
        };
        let (a, id_a) = launch(order[0])?;
        let (b, id_b) = launch(order[1])?;
        let t0 = progs(prog)?;
        workload()?;
        let t1 = progs(prog)?;
        stop(a);
        stop(b);
        let per_run = |id: u64| -> anyhow::Result<f64> {
            let (r0, c0) = *t0.get(&id).context("program gone")?;
            let (r1, c1) = *t1.get(&id).context("program gone")?;
            if c1 <= c0 {
                bail!("the enter program did not run");
            }
            Ok((r1 - r0) as f64 / (c1 - c0) as f64)
        };
        let (ns_a, ns_b) = (per_run(id_a)?, per_run(id_b)?);
        Ok(if filtered_first {
            (ns_b, ns_a)
        } else {
            (ns_a, ns_b)
        })
    };
    let (mut without, mut with, mut cost) = (Vec::new(), Vec::new(), Vec::new());
    let result = (|| -> anyhow::Result<()> {
        for _ in 0..RUNS {
            let (p1, f1) = side_by_side(false)?;
            let (p2, f2) = side_by_side(true)?;
            eprintln!(
                "cgroup filter: {p1:.1} ns without first, {f1:.1} with second; {f2:.1} with first, {p2:.1} without second"
            );
            without.extend([p1, p2]);
            with.extend([f1, f2]);
            cost.push((f1 - p1 + f2 - p2) / 2.0);
        }
        Ok(())
    })();
    let _ = std::fs::write(STATS, before.trim());
    result?;
    Ok((median(without), median(with), median(cost)))
}

/// The cgroup filter's cost (see [`cgroup_cost`]), in the cgroup `cg` the
/// workloads run in: a getpid loop's calls passing it and turned away,
/// where each thread's verdict is reused from its CPU's last; and the run
/// queue's switches of a pipe ping-pong pinned to one CPU, where the
/// thread judged always differs from the last one judged there.
fn cgroup_costs(bin: &str, cg: &BenchCgroup) -> anyhow::Result<[(f64, f64, f64); 3]> {
    const SYSCALL_ENTER: &str = "hist_syscall_en";
    const RUNQ_SWITCH: &str = "hist_runq_switc";
    let dir = cg.dir.to_str().context("cgroup path")?;
    let empty = cg.empty.to_str().context("cgroup path")?;
    let getpids = || {
        getpid_ns();
        Ok(())
    };
    let passing = cgroup_cost(
        bin,
        SYSCALL_ENTER,
        &getpids,
        &["hist", "syscall", "getpid"],
        &["hist", "syscall", "getpid", "--cgroup", dir],
    )?;
    let rejecting = cgroup_cost(
        bin,
        SYSCALL_ENTER,
        &getpids,
        &["hist", "syscall", "getpid", "-p", "1"],
        &["hist", "syscall", "getpid", "--cgroup", empty],
    )?;
    let ping_pong = || {
        let st = Command::new("taskset")
            .args([
                "-c", "0", "perf", "bench", "sched", "pipe", "-l", PIPE_LOOPS,
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running taskset -c 0 perf bench sched pipe")?;
        anyhow::ensure!(st.success(), "perf bench sched pipe: {st}");
        Ok(())
    };
    let switching = cgroup_cost(
        bin,
        RUNQ_SWITCH,
        &ping_pong,
        &["hist", "runq"],
        &["hist", "runq", "--cgroup", dir],
    )?;
    Ok([passing, rejecting, switching])
}

fn print_cgroup_cost(cost: anyhow::Result<[(f64, f64, f64); 3]>) {
    match cost {
        Ok(
            [
                (without, with, diff),
                (without_r, with_r, diff_r),
                (without_s, with_s, diff_s),
            ],
        ) => println!(
            "\ncgroup filter, passing: {diff:.1} ns per event (hist_syscall_enter's run time per run, both attached at once, median of {RUNS} pairs of runs in both orders: {without:.1} ns without --cgroup, {with:.1} ns with, medians of all)\n\
             cgroup filter, rejecting: {diff_r:.1} ns per event (the same, the loop's calls turned away: {without_r:.1} ns by -p 1, {with_r:.1} ns by --cgroup of an empty cgroup)\n\
             cgroup filter, another thread each time: {diff_s:.1} ns per switch (hist_runq_switch's run time per run under a pipe ping-pong pinned to one CPU, inside the cgroup: {without_s:.1} ns without --cgroup, {with_s:.1} ns with)"
        ),
        Err(e) => println!("\ncgroup filter: not measured: {e:#}"),
    }
}

const RUNQ_BT: &str = "tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new { @qtime[args->pid] = nsecs; } \
tracepoint:sched:sched_switch { if (args->prev_state == 0) { @qtime[args->prev_pid] = nsecs; } \
$ns = @qtime[args->next_pid]; if ($ns) { @usecs = hist((nsecs - $ns) / 1000); } delete(@qtime[args->next_pid]); }";

const SYSCALL_BT: &str = "tracepoint:raw_syscalls:sys_enter { @start[tid] = nsecs; } \
tracepoint:raw_syscalls:sys_exit /@start[tid]/ { @ns[args->id] = hist(nsecs - @start[tid]); delete(@start[tid]); }";

fn main() -> anyhow::Result<()> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let stats_before = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    // The BPF run-time column needs the kernel's accounting on.
    let _ = std::fs::write(STATS, "1");
    let r = bench();
    let _ = std::fs::write(STATS, stats_before.trim());
    r
}

fn bench() -> anyhow::Result<()> {
    let bin = std::env::var("KSCOPE_BIN").unwrap_or_else(|_| "target/release/kscope".into());
    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // `KSCOPE_BENCH_ONLY=cgroup`: only the cgroup filter's cost.
    if std::env::var("KSCOPE_BENCH_ONLY").as_deref() == Ok("cgroup") {
        let cg = BenchCgroup::enter()?;
        let cost = cgroup_costs(&bin, &cg);
        drop(cg);
        print_cgroup_cost(cost);
        return Ok(());
    }

    // runq under perf bench sched pipe.
    let base = pipe_median()?;
    eprintln!("baseline: {base:.0} ns per context switch");
    let pipe = || pipe_median();
    let mut runq = vec![
        under(
            "kscope hist runq",
            &mut kscope(&bin, &["hist", "runq"]),
            "(ready)",
            Per::Switch,
            &pipe,
        ),
        under(
            "bpftrace (runqlat's sched tracepoints)",
            &mut bpftrace(RUNQ_BT),
            "kscope-bench-ready",
            Per::Switch,
            &pipe,
        ),
        under(
            "libbpf-tools runqlat",
            // Line-buffered: its "Tracing ..." line would wait in stdio's
            // buffer until exit.
            Command::new("stdbuf").args(["-oL", "/usr/sbin/runqlat"]),
            "Tracing",
            Per::Switch,
            &pipe,
        ),
        under(
            "BCC runqlat-bpfcc",
            &mut Command::new("runqlat-bpfcc"),
            "Tracing",
            Per::Switch,
            &pipe,
        ),
    ];
    for r in &mut runq {
        r.note = r.note.lines().next().unwrap_or("").to_owned();
    }

    // syscall latency and the cgroup filter, on a getpid loop in a fresh
    // cgroup.
    let cg = BenchCgroup::enter()?;
    let cg_dir = cg.dir.to_str().context("cgroup path")?.to_owned();
    getpid_ns();
    let base_getpid = getpid_median();
    eprintln!("baseline: {base_getpid:.1} ns per getpid");
    let getpid = || Ok(getpid_median());
    let syscall = vec![
        under(
            "kscope hist syscall",
            &mut kscope(&bin, &["hist", "syscall"]),
            "(ready)",
            Per::Syscall,
            &getpid,
        ),
        under(
            "kscope hist syscall --cgroup (passing)",
            &mut kscope(&bin, &["hist", "syscall", "--cgroup", &cg_dir]),
            "(ready)",
            Per::Syscall,
            &getpid,
        ),
        under(
            "bpftrace (hist per syscall number)",
            &mut bpftrace(SYSCALL_BT),
            "kscope-bench-ready",
            Per::Syscall,
            &getpid,
        ),
    ];
    let cgroup_cost = cgroup_costs(&bin, &cg);
    drop(cg);

    println!(
        "perf bench sched pipe -l {PIPE_LOOPS}, {RUNS} runs each (median), against a baseline taken before each tool (first: {base:.0} ns per switch)"
    );
    print("runq: added ns per context switch", "ns/switch", &runq);
    println!(
        "\ngetpid loop of {GETPIDS}, {RUNS} runs each (median), against a baseline taken before each tool (first: {base_getpid:.1} ns per call)"
    );
    print("syscall latency: added ns per getpid", "ns/call", &syscall);
    print_cgroup_cost(cgroup_cost);
    println!(
        "\nload average before: {}; after: {}",
        load_start.trim(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}
