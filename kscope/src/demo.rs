//! `kscope demo`: every capability on real traffic and real processes, in
//! about a minute, with nothing to set up.
//!
//! It builds a private [`Lab`] (two namespaces joined by veth) and goes
//! through six steps, each narrated with the commands a user would type
//! and ending with checks ("expected N, saw N"):
//!
//! 1. the packet counter on `fw_xdp`, against an independent observer;
//! 2. `fw block` of the sender: its packets are dropped, the counters and
//!    the rule's hits show it, `fw unblock` lets them through again;
//! 3. a port rule;
//! 4. `trace exec`, `trace open` and `trace connect` watching a child of
//!    the demo that does known things;
//! 5. `profile` of a busy child for 2 seconds, with its top functions and a
//!    flame graph SVG;
//! 6. the daemon serving /metrics inside the namespace, and one scrape.
//!
//! The tools run as `kscope` child processes, exactly as the narration
//! shows them, so the demo goes through the same fallbacks they do (e.g.
//! `trace connect` on its tracepoint where the kernel has no kprobes). A
//! tool that fails for lack of a kernel feature (its error ends with
//! `hint: run kscope doctor`) makes its step say so and skip its checks; a
//! failed check fails the demo.
//!
//! Everything is torn down on the way out, also on Ctrl-C, SIGTERM or an
//! error: the lab, the attachment, the child processes and the temporary
//! directory are values whose `Drop` removes them. Only the flame graph
//! stays, at the path printed.

use std::{
    collections::BTreeMap,
    fmt::Display,
    io::{BufRead as _, BufReader, Read as _, Write},
    os::unix::{fs::symlink, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use kscope_common::fw::{Family, Reason};
use kscope_lab::netlab::{ADDR4_A, ADDR6_A, Lab, Netns, Observer, Seen, Sent, Traffic, UDP_PORT};

use crate::firewall::{self, Mode, Policy, counters};

/// The name the demo's children run under (at most 15 bytes, the kernel's
/// `comm`), so the tracers can pick them out with `-n`.
pub const CHILD_COMM: &str = "ksdemo-child";

/// Where the flame graph goes; it outlives the demo (one file per run, so
/// two demos at once do not write the same file).
fn svg_path() -> PathBuf {
    std::env::temp_dir().join(format!("kscope-demo-{}-flame.svg", std::process::id()))
}

/// How long a tool may take to report it is ready. Generous: under
/// emulation loading a tracer takes seconds.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// What a child of the demo does: `kscope demo-child act DIR` or
/// `kscope demo-child spin SECS`, an internal entry point the binary
/// checks before parsing its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildTask {
    /// Open DIR/hello.txt (which exists) and DIR/missing (which does not),
    /// then connect to a listener of its own on 127.0.0.1 and print its
    /// port.
    Act { dir: PathBuf },
    /// Burn CPU in `demo_spin` for SECS seconds at most.
    Spin { secs: u64 },
}

impl ChildTask {
    /// The task `args` (the program's, name first) ask for, if they are a
    /// demo child's.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Option<Self> {
        let args: Vec<String> = args.into_iter().skip(1).collect();
        match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["demo-child", "act", dir] => Some(Self::Act { dir: dir.into() }),
            ["demo-child", "spin", secs] => secs.parse().ok().map(|secs| Self::Spin { secs }),
            _ => None,
        }
    }
}

/// Runs a demo child's task.
///
/// # Errors
/// The file that should exist cannot be opened, the one that should not
/// exists, or the loopback connect fails.
pub fn child(task: ChildTask) -> anyhow::Result<()> {
    match task {
        ChildTask::Act { dir } => {
            std::fs::File::open(dir.join("hello.txt")).context("opening hello.txt")?;
            if std::fs::File::open(dir.join("missing")).is_ok() {
                bail!("{} exists", dir.join("missing").display());
            }
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let port = listener.local_addr()?.port();
            let _conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
            let _accepted = listener.accept()?;
            println!("port {port}");
            Ok(())
        }
        ChildTask::Spin { secs } => {
            let end = Instant::now() + Duration::from_secs(secs);
            // The demo ends it; should the demo die first, so does this.
            // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
            // The demo profiles from this line on: the process is whole
            // (its libraries mapped) and about to spin.
            eprintln!("{SPINNING}");
            let mut x = 1u64;
            while Instant::now() < end {
                x = demo_spin(x);
            }
            std::hint::black_box(x);
            Ok(())
        }
    }
}

/// What the busy child says on stderr when it starts spinning.
const SPINNING: &str = "spinning in demo_spin";

/// The busy child's hot function: the profile step expects its samples
/// there. Plain arithmetic (xorshift), so no callee shows up as the leaf
/// even in a debug build, where nothing is inlined.
#[inline(never)]
fn demo_spin(x: u64) -> u64 {
    let mut x = std::hint::black_box(x) | 1;
    let mut i = 0u32;
    while i < 4_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        i += 1;
    }
    x
}

/// Detaches the demo's own attachment on drop, if it is still there, so
/// every way out of the demo removes the program.
struct Attachment<'a> {
    lab: &'a Lab,
}

impl Attachment<'_> {
    fn detach(&self) -> anyhow::Result<()> {
        let iface = self.lab.iface_b.clone();
        if !firewall::pin_dir(&iface).exists() {
            return Ok(());
        }
        self.lab
            .b
            .run(move || firewall::detach(&iface))
            .context("entering the demo namespace")??;
        Ok(())
    }
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            eprintln!("warning: detach failed: {e:#}");
        }
    }
}

/// The demo's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("kscope-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process with its output collected by two threads. Dropping it
/// stops a child still running (SIGTERM, then SIGKILL after 10 s), so an
/// interrupted demo leaves no tracer or daemon behind.
struct Kid {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Kid {
    fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(mut pipe) = child.stdout.take() {
            let sink = Arc::clone(&stdout);
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    lock(&sink).push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }));
        }
        if let Some(pipe) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    lock(&sink).push(line);
                }
            }));
        }
        Ok(Self {
            child,
            stdout,
            stderr,
            readers,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdout(&self) -> String {
        lock(&self.stdout).clone()
    }

    fn stderr(&self) -> Vec<String> {
        lock(&self.stderr).clone()
    }

    /// Waits for a stderr line containing `marker`; fails if the child
    /// exits first (with its stderr), `timeout` passes, or `stop` is set.
    fn wait_ready(&mut self, marker: &str, stop: &AtomicBool) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.stderr().into_iter().find(|l| l.contains(marker)) {
                return Ok(l);
            }
            check_stop(stop)?;
            if let Some(status) = self.child.try_wait()? {
                self.join();
                bail!(ChildFailed {
                    status,
                    stderr: self.stderr(),
                });
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "not ready within {READY_TIMEOUT:?}; stderr:\n{}",
                    self.stderr().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (if `Some`) and waits for the exit, at most `limit`.
    fn finish(
        &mut self,
        signal: Option<i32>,
        limit: Duration,
        stop: &AtomicBool,
    ) -> anyhow::Result<ExitStatus> {
        if let Some(sig) = signal {
            self.signal(sig);
        }
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.join();
                return Ok(status);
            }
            check_stop(stop)?;
            if start.elapsed() > limit {
                bail!(
                    "still running after {limit:?}; stderr:\n{}",
                    self.stderr().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which has not been reaped (the
        // pid cannot have been reused).
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn join(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A tool that exited with an error; `missing_feature` when its error
/// came from the kernel lacking something.
#[derive(Debug)]
struct ChildFailed {
    status: ExitStatus,
    stderr: Vec<String>,
}

impl ChildFailed {
    fn missing_feature(&self) -> bool {
        self.stderr
            .iter()
            .any(|l| l.trim() == "hint: run kscope doctor")
    }

    fn error_line(&self) -> String {
        self.stderr
            .iter()
            .find(|l| l.starts_with("error:"))
            .cloned()
            .unwrap_or_else(|| format!("exited with {}", self.status))
    }
}

impl Display for ChildFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.error_line(), self.status)
    }
}

impl std::error::Error for ChildFailed {}

fn check_stop(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// The narrator: writes the steps, the commands and the checks, and keeps
/// the tally.
struct Demo<'o, W: Write> {
    out: &'o mut W,
    stop: Arc<AtomicBool>,
    exe: PathBuf,
    checks: usize,
    failed: Vec<String>,
    step: usize,
}

const STEPS: usize = 6;

impl<W: Write> Demo<'_, W> {
    fn step(&mut self, title: &str) -> anyhow::Result<()> {
        check_stop(&self.stop)?;
        self.step += 1;
        writeln!(self.out, "\n== step {}/{STEPS}: {title}", self.step)?;
        self.out.flush()?;
        Ok(())
    }

    fn say(&mut self, text: impl Display) -> anyhow::Result<()> {
        writeln!(self.out, "{text}")?;
        self.out.flush()?;
        Ok(())
    }

    /// Prints `text` indented by two spaces, line by line.
    fn show(&mut self, text: &str) -> anyhow::Result<()> {
        for l in text.lines() {
            writeln!(self.out, "  {l}")?;
        }
        self.out.flush()?;
        Ok(())
    }

    fn check(
        &mut self,
        what: &str,
        expected: impl Display,
        saw: impl Display,
    ) -> anyhow::Result<()> {
        let (e, s) = (expected.to_string(), saw.to_string());
        self.verdict(what, &e, &s, e == s)
    }

    fn check_at_least(&mut self, what: &str, min: u64, saw: u64) -> anyhow::Result<()> {
        self.verdict(
            what,
            &format!("at least {min}"),
            &saw.to_string(),
            saw >= min,
        )
    }

    fn verdict(&mut self, what: &str, expected: &str, saw: &str, ok: bool) -> anyhow::Result<()> {
        self.checks += 1;
        let mark = if ok { "ok" } else { "FAILED" };
        writeln!(
            self.out,
            "check: {what}: expected {expected}, saw {saw} .. {mark}"
        )?;
        self.out.flush()?;
        if !ok {
            self.failed.push(format!(
                "step {}: {what}: expected {expected}, saw {saw}",
                self.step
            ));
        }
        Ok(())
    }

    /// `kscope ARGS` as a command.
    fn kscope(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args);
        cmd
    }

    /// Prints `$ kscope ARGS`, runs it to the end and prints what it
    /// wrote (stdout, then the log lines); returns stdout.
    ///
    /// # Errors
    /// It fails ([`ChildFailed`]), or the demo is interrupted.
    fn run(&mut self, args: &[&str]) -> anyhow::Result<String> {
        self.say(format!("$ kscope {}", args.join(" ")))?;
        let mut kid = Kid::spawn(self.kscope(args))?;
        let status = kid.finish(None, READY_TIMEOUT, &self.stop)?;
        let (out, err) = (kid.stdout(), kid.stderr());
        self.show(&out)?;
        self.show(&err.join("\n"))?;
        if !status.success() {
            bail!(ChildFailed {
                status,
                stderr: err,
            });
        }
        Ok(out)
    }

    /// `kscope ARGS` run quietly (for numbers to check); returns stdout.
    fn quiet(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .kscope(args)
            .env("NO_COLOR", "1")
            .output()
            .context("running kscope")?;
        if !out.status.success() {
            bail!(ChildFailed {
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .map(str::to_owned)
                    .collect(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// When `e` is a tool failing for lack of a kernel feature, says so
    /// and returns Ok (the step is skipped); any other error is returned.
    fn unavailable(&mut self, e: anyhow::Error) -> anyhow::Result<()> {
        match e.downcast_ref::<ChildFailed>() {
            Some(f) if f.missing_feature() => {
                let line = f.error_line();
                self.say(format!(
                    "unavailable on this kernel: {line}\n(`kscope doctor` says what is missing and the fix; the step's checks are skipped)"
                ))
            }
            _ => Err(e),
        }
    }
}

/// Runs the demo, writing its report to `out`.
///
/// # Errors
/// A check failed (the report says which), the demo was interrupted, or
/// something it needs could not be set up.
pub fn run(out: &mut impl Write, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding kscope's own binary")?;
    let start = Instant::now();
    let mut d = Demo {
        out,
        stop: Arc::clone(&stop),
        exe,
        checks: 0,
        failed: Vec::new(),
        step: 0,
    };
    let dir = TempDir::new()?;
    let lab = Lab::new("demo").context("creating the demo namespaces")?;
    check_stop(&stop)?;
    d.say(format!(
        "kscope demo: every capability, on real packets and processes, in two private network namespaces ({} sends from {ADDR4_A} and {ADDR6_A}, {} receives on {})",
        lab.a.name(),
        lab.b.name(),
        lab.iface_b
    ))?;

    d.step("the packet counter")?;
    let iface = lab.iface_b.clone();
    let attached = lab
        .b
        .run(move || firewall::attach(&iface, Mode::Auto, Policy::Pass))
        .context("entering the demo namespace")??;
    let attachment = Attachment { lab: &lab };
    let mut obs = Observer::open(&lab.b, &lab.iface_b).context("opening the packet observer")?;
    lab.up().context("configuring the demo link")?;
    lo_up(&lab)?;
    d.say(format!(
        "$ kscope fw attach {}   (in {}: {} mode, program id {})",
        lab.iface_b,
        lab.b.name(),
        attached.mode,
        attached.prog_id
    ))?;
    step_counter(&mut d, &lab, &mut obs)?;
    step_block(&mut d, &lab, &mut obs)?;
    step_port(&mut d, &lab, &mut obs)?;
    d.say(format!("$ kscope fw detach {}", lab.iface_b))?;
    attachment.detach()?;
    step_trace(&mut d, &lab, &dir.0)?;
    step_profile(&mut d, &dir.0)?;
    step_daemon(&mut d, &lab, &mut obs, &dir.0)?;

    d.say(format!(
        "\n{} checks in {:.0?}; everything the demo made is removed.",
        d.checks,
        start.elapsed()
    ))?;
    if !d.failed.is_empty() {
        bail!(
            "{} of {} checks failed:\n  {}",
            d.failed.len(),
            d.checks,
            d.failed.join("\n  ")
        );
    }
    d.say("All checks passed.")?;
    Ok(())
}

/// The loopback of namespace `b`, where the traced child connects and
/// the daemon listens.
fn lo_up(lab: &Lab) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["-n", lab.b.name(), "link", "set", "lo", "up"])
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip link set lo up: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

const TRAFFIC: Traffic = Traffic {
    udp4: 20,
    udp6: 20,
    ping4: 5,
    ping6: 5,
    payload: 64,
};

fn describe(t: &Traffic) -> String {
    format!(
        "{} UDP + {} ICMP echo over IPv4, {} UDP + {} ICMPv6 echo over IPv6, {} payload bytes each (UDP to port {UDP_PORT})",
        t.udp4, t.ping4, t.udp6, t.ping6, t.payload
    )
}

/// Waits until the observer has seen everything that arrived and `read`
/// returns counters that agree with it (per `agree`), or `timeout` passes.
/// Returns the last observation either way, so a caller can report a
/// disagreement with numbers.
pub fn settle<T>(
    obs: &mut Observer,
    timeout: Duration,
    mut read: impl FnMut() -> anyhow::Result<T>,
    agree: impl Fn(&Seen, &T) -> bool,
) -> anyhow::Result<(Seen, T)> {
    let start = Instant::now();
    loop {
        obs.drain()?;
        let counted = read()?;
        std::thread::sleep(Duration::from_millis(30));
        let late = obs.drain()?;
        if (late == 0 && agree(&obs.seen, &counted)) || start.elapsed() > timeout {
            return Ok((obs.seen, counted));
        }
    }
}

fn send<W: Write>(d: &mut Demo<'_, W>, lab: &Lab) -> anyhow::Result<Sent> {
    check_stop(&d.stop)?;
    d.say(format!(
        "sending from {}: {}",
        lab.a.name(),
        describe(&TRAFFIC)
    ))?;
    let sent = lab.send(&TRAFFIC).context("sending demo traffic")?;
    check_stop(&d.stop)?;
    Ok(sent)
}

/// Step 1: what XDP counted against what an AF_PACKET observer saw.
fn step_counter<W: Write>(
    d: &mut Demo<'_, W>,
    lab: &Lab,
    obs: &mut Observer,
) -> anyhow::Result<()> {
    let sent = send(d, lab)?;
    let iface = lab.iface_b.clone();
    let (seen, pc) = settle(
        obs,
        Duration::from_secs(5),
        || Ok(firewall::read_counters(&iface)?),
        |seen, pc| agrees(seen, &pc.sum()),
    )?;
    let t = pc.sum();
    d.say("")?;
    let table = comparison(&sent, &seen, &t);
    d.show(&table)?;
    d.run(&["fw", "stats", &lab.iface_b])?;
    d.check(
        "IPv4 packets counted (the observer's count)",
        seen.ipv4_packets,
        t.family(Family::Ipv4).packets,
    )?;
    d.check(
        "IPv6 packets counted (the observer's count)",
        seen.ipv6_packets,
        t.family(Family::Ipv6).packets,
    )?;
    d.check(
        "bytes counted, both families (the observer's count)",
        seen.ipv4_bytes + seen.ipv6_bytes,
        t.family(Family::Ipv4).bytes + t.family(Family::Ipv6).bytes,
    )?;
    d.check(
        "of the demo's packets, arrived",
        sent.ipv4_packets + sent.ipv6_packets,
        seen.marked_ipv4 + seen.marked_ipv6,
    )
}

/// The drop and pass counters of `iface` by reason, both families.
fn reasons(iface: &str) -> anyhow::Result<counters::ReasonTotals> {
    Ok(firewall::read_reasons(iface)?.sum_reasons())
}

fn reason_packets(r: &counters::ReasonTotals, reason: Reason) -> u64 {
    Family::ALL.iter().map(|&f| r.get(f, reason).packets).sum()
}

/// Hits per rule, from `kscope fw rules --json`, keyed by the rule in
/// rule-file words.
fn rule_hits<W: Write>(d: &Demo<'_, W>, iface: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let out = d.quiet(&["fw", "rules", "--iface", iface, "--json"])?;
    let mut hits = BTreeMap::new();
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("fw rules --json")?;
        if let (Some(r), Some(h)) = (v["rule"].as_str(), v["hits"].as_u64()) {
            hits.insert(r.to_owned(), h);
        }
    }
    Ok(hits)
}

/// Waits (at most 5 s) until `read` returns at least `want`, and returns
/// the last reading: the packets sent are in flight for a moment.
fn wait_count(
    stop: &AtomicBool,
    want: u64,
    mut read: impl FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<u64> {
    let start = Instant::now();
    loop {
        let n = read()?;
        if n >= want || start.elapsed() > Duration::from_secs(5) {
            // A little longer, to catch any extra that would be wrong.
            std::thread::sleep(Duration::from_millis(50));
            return read();
        }
        check_stop(stop)?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Step 2: block the sender, then unblock it.
fn step_block<W: Write>(d: &mut Demo<'_, W>, lab: &Lab, obs: &mut Observer) -> anyhow::Result<()> {
    d.step("block the sender, then let it through again")?;
    let iface = lab.iface_b.clone();
    let (a4, a6) = (ADDR4_A.to_string(), ADDR6_A.to_string());
    d.run(&["fw", "block", "--iface", &iface, &a4, &a6])?;
    obs.drain()?;
    let before_seen = obs.seen;
    let before = reasons(&iface)?;
    let sent = send(d, lab)?;
    let want = sent.ipv4_packets + sent.ipv6_packets;
    let dropped = wait_count(&d.stop, want, || {
        Ok(reason_packets(&reasons(&iface)?, Reason::BlockedSrc)
            - reason_packets(&before, Reason::BlockedSrc))
    })?;
    obs.drain()?;
    d.run(&["fw", "stats", &iface])?;
    d.run(&["fw", "rules", "--iface", &iface])?;
    let hits = rule_hits(d, &iface)?;
    d.check(
        "packets dropped as blocked-src (all the demo sent)",
        want,
        dropped,
    )?;
    d.check(
        &format!("hits of block {a4}/32"),
        sent.ipv4_packets,
        hits.get(&format!("block {a4}/32")).copied().unwrap_or(0),
    )?;
    d.check(
        &format!("hits of block {a6}/128"),
        sent.ipv6_packets,
        hits.get(&format!("block {a6}/128")).copied().unwrap_or(0),
    )?;
    d.check(
        "of the demo's packets, arrived past XDP (the observer's count)",
        0,
        (obs.seen.marked_ipv4 + obs.seen.marked_ipv6)
            - (before_seen.marked_ipv4 + before_seen.marked_ipv6),
    )?;

    d.run(&["fw", "unblock", "--iface", &iface, &a4, &a6])?;
    let before_seen = obs.seen;
    let sent = send(d, lab)?;
    let want = sent.ipv4_packets + sent.ipv6_packets;
    let marked = |s: &Seen| s.marked_ipv4 + s.marked_ipv6;
    let arrived = wait_count(&d.stop, want, || {
        obs.drain()?;
        Ok(marked(&obs.seen) - marked(&before_seen))
    })?;
    d.check(
        "of the demo's packets, arrived after unblock (the observer's count)",
        want,
        arrived,
    )
}

/// Step 3: a destination port rule drops the UDP packets and lets the
/// pings through; then a rate limit on the sender lets its burst through
/// and drops the rest.
fn step_port<W: Write>(d: &mut Demo<'_, W>, lab: &Lab, obs: &mut Observer) -> anyhow::Result<()> {
    d.step("a port rule and a rate limit")?;
    let iface = lab.iface_b.clone();
    let port = format!("{UDP_PORT}/udp");
    d.run(&["fw", "block", "--iface", &iface, "--port", &port])?;
    obs.drain()?;
    let before_seen = obs.seen;
    let before = reasons(&iface)?;
    let _ = send(d, lab)?;
    let udp = TRAFFIC.udp4 + TRAFFIC.udp6;
    let dropped = wait_count(&d.stop, udp, || {
        Ok(reason_packets(&reasons(&iface)?, Reason::BlockedDstPort)
            - reason_packets(&before, Reason::BlockedDstPort))
    })?;
    let pings = TRAFFIC.ping4 + TRAFFIC.ping6;
    let marked = |s: &Seen| s.marked_ipv4 + s.marked_ipv6;
    let arrived = wait_count(&d.stop, pings, || {
        obs.drain()?;
        Ok(marked(&obs.seen) - marked(&before_seen))
    })?;
    d.run(&["fw", "rules", "--iface", &iface])?;
    let hits = rule_hits(d, &iface)?;
    d.check(
        &format!("UDP packets dropped as blocked-dst-port (to port {UDP_PORT})"),
        udp,
        dropped,
    )?;
    d.check(
        &format!("hits of block --port {port}"),
        udp,
        hits.get(&format!("block --port {port}"))
            .copied()
            .unwrap_or(0),
    )?;
    d.check(
        "pings that arrived past XDP (the observer's count)",
        pings,
        arrived,
    )?;
    d.run(&["fw", "unblock", "--iface", &iface, "--port", &port])?;

    // A rate limit on the sender: a burst of 5 per address, then 1 packet
    // a second. What does not arrive must be exactly what was limited.
    let (a4, a6) = (ADDR4_A.to_string(), ADDR6_A.to_string());
    let burst = 5;
    d.run(&[
        "fw", "limit", "--iface", &iface, &a4, &a6, "--pps", "1", "--burst", "5",
    ])?;
    obs.drain()?;
    let before_seen = obs.seen;
    let before = reasons(&iface)?;
    let sent = send(d, lab)?;
    let want = sent.ipv4_packets + sent.ipv6_packets;
    let limited = |r: &_| reason_packets(r, Reason::RateLimited);
    // Every packet is judged once: arrived or limited.
    let mut arrived = 0;
    let mut dropped = 0;
    wait_count(&d.stop, want, || {
        obs.drain()?;
        arrived = marked(&obs.seen) - marked(&before_seen);
        dropped = limited(&reasons(&iface)?) - limited(&before);
        Ok(arrived + dropped)
    })?;
    d.run(&["fw", "rules", "--iface", &iface])?;
    d.check(
        "packets rate-limited, against sent minus arrived (the observer's count)",
        want - arrived,
        dropped,
    )?;
    d.check(
        "of the burst of 5 per address, arrived (at least)",
        2 * burst,
        arrived.min(2 * burst),
    )?;
    d.run(&["fw", "unlimit", "--iface", &iface, &a4, &a6])?;
    Ok(())
}

/// A command running the demo's own binary under the name [`CHILD_COMM`]
/// (through a symlink, so exec names it so, and with the name set before
/// the exec too, so `trace exec -n` sees it calling exec).
fn child_cmd(dir: &Path, ns: Option<&Netns>, args: &[&str]) -> anyhow::Result<Command> {
    let link = dir.join(CHILD_COMM);
    if !link.exists() {
        let exe = std::env::current_exe().context("finding kscope's own binary")?;
        symlink(&exe, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let mut cmd = match ns {
        Some(ns) => ns.command(&link),
        None => Command::new(&link),
    };
    cmd.arg("demo-child").args(args);
    set_comm(&mut cmd);
    Ok(cmd)
}

/// `cmd`'s child sets its name to [`CHILD_COMM`] before it execs.
fn set_comm(cmd: &mut Command) {
    const NAME: &[u8] = b"ksdemo-child\0";
    // SAFETY: prctl(PR_SET_NAME) is async-signal-safe and reads only the
    // static NUL-terminated name.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_NAME, NAME.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Data rows (no header) of a table printed by a tracer.
fn rows(table: &str) -> impl Iterator<Item = Vec<&str>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| !f.is_empty())
}

/// The header and the rows of `pid` of a tracer's table, whose PID is
/// column `col`: another process of the same name (a second demo running
/// at the same time) is not this demo's child.
fn rows_of(table: &str, col: usize, pid: &str) -> String {
    let mut out = String::new();
    for (i, l) in table.lines().enumerate() {
        if i == 0 || l.split_whitespace().nth(col) == Some(pid) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Step 4: three tracers watch a child that does known things.
fn step_trace<W: Write>(d: &mut Demo<'_, W>, lab: &Lab, dir: &Path) -> anyhow::Result<()> {
    d.step("trace exec, open and connect")?;
    std::fs::write(dir.join("hello.txt"), "hello\n").context("writing hello.txt")?;
    let mut tracers = Vec::new();
    for what in ["exec", "open", "connect"] {
        let args = ["trace", what, "-n", CHILD_COMM];
        d.say(format!("$ kscope {} &", args.join(" ")))?;
        let mut kid = Kid::spawn(d.kscope(&args))?;
        match kid.wait_ready("(ready)", &d.stop) {
            Ok(line) => {
                d.show(&line)?;
                if what == "connect" && line.contains("tracepoint") {
                    d.say(
                        "degraded on this kernel: neither kprobes nor fentry attach here (see `kscope doctor`), so trace connect uses its tracepoint fallback: it sees the connect, not its return value (RET n/a)",
                    )?;
                }
                for l in kid.stderr() {
                    if l.contains("WARN") {
                        d.show(&l)?;
                    }
                }
                tracers.push((what, Some(kid)));
            }
            Err(e) => {
                d.unavailable(e)?;
                tracers.push((what, None));
            }
        }
    }
    let hello = dir.join("hello.txt");
    d.say(format!(
        "$ {CHILD_COMM}   (a child of the demo, in {}: opens {} and {}, connects to a listener of its own on 127.0.0.1)",
        lab.b.name(),
        hello.display(),
        dir.join("missing").display()
    ))?;
    let dir_arg = dir.to_string_lossy().into_owned();
    let mut act = Kid::spawn(child_cmd(dir, Some(&lab.b), &["act", &dir_arg])?)?;
    let act_pid = act.pid().to_string();
    // The PID column of each tracer's table.
    let pid_col = |what: &str| usize::from(what == "exec");
    let status = act.finish(None, READY_TIMEOUT, &d.stop)?;
    if !status.success() {
        bail!(
            "the demo's child failed ({status}): {}",
            act.stderr().join("\n")
        );
    }
    let port: String = act
        .stdout()
        .trim()
        .strip_prefix("port ")
        .context("the demo's child printed no port")?
        .to_owned();

    // What each tracer should show, as (check, expected, row filter).
    let hello_s = hello.to_string_lossy().into_owned();
    let missing_s = dir.join("missing").to_string_lossy().into_owned();
    type Want<'a> = (String, u64, Box<dyn Fn(&[&str]) -> bool + 'a>);
    let wants = |what: &str| -> Vec<Want<'_>> {
        match what {
            "exec" => vec![(
                format!("execs of {CHILD_COMM} demo-child act"),
                1,
                Box::new(|f: &[&str]| f.windows(2).any(|w| w == ["demo-child", "act"])),
            )],
            "open" => vec![
                (
                    "opens of hello.txt that returned a descriptor".into(),
                    1,
                    Box::new(|f: &[&str]| {
                        f.last() == Some(&hello_s.as_str())
                            && f.get(4).is_some_and(|fd| *fd != "-1")
                    }),
                ),
                (
                    "opens of missing that failed with ENOENT".into(),
                    1,
                    Box::new(|f: &[&str]| {
                        f.last() == Some(&missing_s.as_str()) && f.contains(&"ENOENT")
                    }),
                ),
            ],
            _ => vec![(
                format!("connects to 127.0.0.1 port {port}"),
                1,
                Box::new(|f: &[&str]| {
                    f.iter().filter(|x| **x == "127.0.0.1").count() >= 1
                        && f.contains(&port.as_str())
                }),
            )],
        }
    };
    // Events reach the tracers' output within a poll interval or two;
    // wait until every expected row is there (at most 10 s), then stop.
    let start = Instant::now();
    loop {
        let all_in = tracers.iter().all(|(what, kid)| {
            kid.as_ref().is_none_or(|k| {
                let out = rows_of(&k.stdout(), pid_col(what), &act_pid);
                wants(what)
                    .iter()
                    .all(|(_, n, f)| rows(&out).filter(|r| f(r)).count() as u64 >= *n)
            })
        });
        if all_in || start.elapsed() > Duration::from_secs(10) {
            break;
        }
        check_stop(&d.stop)?;
        std::thread::sleep(Duration::from_millis(50));
    }
    for (what, kid) in &mut tracers {
        let Some(kid) = kid else { continue };
        let status = kid.finish(Some(libc::SIGINT), READY_TIMEOUT, &d.stop)?;
        let out = rows_of(&kid.stdout(), pid_col(what), &act_pid);
        d.say(format!(
            "kscope trace {what} -n {CHILD_COMM} printed (the rows of pid {act_pid}):"
        ))?;
        d.show(&out)?;
        if let Some(summary) = kid.stderr().iter().rev().find(|l| l.contains("events")) {
            d.show(summary)?;
        }
        if !status.success() {
            d.verdict(
                &format!("kscope trace {what} exit status"),
                "0",
                &status.to_string(),
                false,
            )?;
        }
        for (check, n, f) in wants(what) {
            let saw = rows(&out).filter(|r| f(r)).count() as u64;
            d.check(&check, n, saw)?;
        }
    }
    Ok(())
}

/// Step 5: profile a busy child.
fn step_profile<W: Write>(d: &mut Demo<'_, W>, dir: &Path) -> anyhow::Result<()> {
    d.step("profile a busy child for 2 seconds")?;
    // Until the demo ends it, with a bound far beyond the step: a profile
    // of this binary builds its unwind tables first (4.5 MiB of them), and
    // a debug build in an emulated test VM takes half a minute at that.
    let mut spin = Kid::spawn(child_cmd(dir, None, &["spin", "600"])?)?;
    // Not before it spins: a profile that starts while the child is still
    // being loaded finds part of its mappings, and its first samples in
    // the loader.
    spin.wait_ready(SPINNING, &d.stop)?;
    let pid = spin.pid().to_string();
    d.say(format!(
        "{CHILD_COMM} (pid {pid}) spins in demo_spin, a function of kscope's own binary"
    ))?;
    let svg = svg_path();
    let folded = dir.join("stacks.folded");
    let (svg_s, folded_s) = (
        svg.to_string_lossy().into_owned(),
        folded.to_string_lossy().into_owned(),
    );
    let _ = std::fs::remove_file(&svg);
    let res = d.run(&[
        "profile", "-p", &pid, "-d", "2", "-n", "8", "--svg", &svg_s, "--folded", &folded_s,
    ]);
    spin.finish(Some(libc::SIGTERM), Duration::from_secs(10), &d.stop)?;
    if let Err(e) = res {
        return d.unavailable(e);
    }
    d.say(format!("flame graph: {}", svg.display()))?;
    let text = std::fs::read_to_string(&folded).context("reading the folded stacks")?;
    let mut total = 0u64;
    let mut child = 0u64;
    let mut in_spin = 0u64;
    let mut whole = 0u64;
    for line in text.lines() {
        let Some((stack, n)) = line.rsplit_once(' ') else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        total += n;
        let frames: Vec<&str> = stack.split(';').collect();
        if frames.first() == Some(&CHILD_COMM) {
            child += n;
        }
        if frames.iter().skip(1).any(|f| f.ends_with("demo_spin")) {
            in_spin += n;
        }
        if frames.iter().skip(1).any(|f| *f == "main") {
            whole += n;
        }
    }
    d.check_at_least("samples of the busy child", 1, child)?;
    d.check(
        "samples of other processes (-p filters in the kernel)",
        0,
        total - child,
    )?;
    // The child spends nearly all its time in demo_spin; a sample outside
    // it (reading the clock between calls) is rare.
    d.check_at_least(
        "samples in demo_spin (at least half of the child's)",
        child.div_ceil(2).max(1),
        in_spin,
    )?;
    // kscope is built without frame pointers: these stacks are the DWARF
    // unwinder's, and it aims at whole stacks for 95% of samples at least.
    d.check_at_least(
        "samples whose stack goes up to main (at least 95% of the child's)",
        (child * 95).div_ceil(100).max(1),
        whole,
    )?;
    let svg_ok = std::fs::read_to_string(&svg)
        .map(|s| s.contains("<svg") && s.contains("demo_spin"))
        .unwrap_or(false);
    d.check("SVG flame graphs naming demo_spin", 1, u64::from(svg_ok))
}

/// GET `path` from 127.0.0.1:`port` in namespace `b`; the body.
fn http_get(lab: &Lab, port: u16, path: &str) -> anyhow::Result<String> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let resp = lab
        .b
        .run(move || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(req.as_bytes())?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        })
        .context("entering the demo namespace")?
        .context("scraping the daemon")?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .context("no HTTP header in the daemon's answer")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "the daemon answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

/// Sum of the samples of metric `name` whose labels include every one of
/// `labels` (`key="value"`).
fn metric_sum(scrape: &str, name: &str, labels: &[&str]) -> u64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

/// Step 6: the daemon attaches the firewall, counts, and serves metrics.
fn step_daemon<W: Write>(
    d: &mut Demo<'_, W>,
    lab: &Lab,
    obs: &mut Observer,
    dir: &Path,
) -> anyhow::Result<()> {
    d.step("the daemon and its /metrics")?;
    const PORT: u16 = 9435;
    let iface = lab.iface_b.clone();
    let rule = format!("block --port {UDP_PORT}/udp");
    std::fs::write(dir.join("demo.rules"), format!("{rule}\n"))?;
    let config = format!(
        "[metrics]\nlisten = \"127.0.0.1:{PORT}\"\nbpf_stats = false\n\n\
         [firewall]\ndetach_on_exit = true\n\n\
         [[firewall.interface]]\nname = \"{iface}\"\nrules = \"demo.rules\"\n"
    );
    let conf = dir.join("kscope.toml");
    std::fs::write(&conf, &config)?;
    d.say(format!("{}:", conf.display()))?;
    d.show(&config)?;
    d.say(format!("demo.rules:\n  {rule}"))?;
    let conf_s = conf.to_string_lossy().into_owned();
    let args = ["daemon", "--config", &conf_s];
    d.say(format!(
        "$ kscope {} &   (in {})",
        args.join(" "),
        lab.b.name()
    ))?;
    let mut cmd = lab.b.command(&d.exe);
    cmd.args(args);
    let mut daemon = Kid::spawn(cmd)?;
    let ready = daemon.wait_ready("daemon ready", &d.stop)?;
    d.show(&ready)?;

    obs.drain()?;
    let before = obs.seen;
    let sent = send(d, lab)?;
    let udp = TRAFFIC.udp4 + TRAFFIC.udp6;
    let hit_label = format!("rule=\"{rule}\"");
    let iface_label = format!("iface=\"{iface}\"");
    // The packets are in flight for a moment: scrape until the rule's hits
    // are all in (at most 5 s).
    let start = Instant::now();
    let scrape = loop {
        let s = http_get(lab, PORT, "/metrics")?;
        if metric_sum(&s, "kscope_fw_rule_hits_total", &[&hit_label]) >= udp
            || start.elapsed() > Duration::from_secs(5)
        {
            break s;
        }
        check_stop(&d.stop)?;
        std::thread::sleep(Duration::from_millis(100));
    };
    obs.drain()?;
    d.say(format!(
        "$ curl http://127.0.0.1:{PORT}/metrics   (in {}; the series with a value above 0)",
        lab.b.name()
    ))?;
    let (mut shown, mut zero) = (0, 0);
    for l in scrape.lines().filter(|l| !l.starts_with('#')) {
        if l.ends_with(" 0") {
            zero += 1;
        } else {
            d.show(l)?;
            shown += 1;
        }
    }
    d.say(format!(
        "({shown} series shown, {zero} more at 0, {} lines in all)",
        scrape.lines().count()
    ))?;
    let v4_seen = obs.seen.ipv4_packets - before.ipv4_packets;
    d.check(
        "IPv4 packets in kscope_fw_packets_total (dropped UDP + the observer's count)",
        TRAFFIC.udp4 + v4_seen,
        metric_sum(
            &scrape,
            "kscope_fw_packets_total",
            &[&iface_label, "family=\"ipv4\""],
        ),
    )?;
    d.check(
        &format!("kscope_fw_rule_hits_total of {rule}"),
        udp,
        metric_sum(&scrape, "kscope_fw_rule_hits_total", &[&hit_label]),
    )?;
    d.check(
        "pings that arrived past XDP (the observer's count)",
        sent.ipv4_packets + sent.ipv6_packets - udp,
        (obs.seen.marked_ipv4 + obs.seen.marked_ipv6) - (before.marked_ipv4 + before.marked_ipv6),
    )?;
    d.say("$ kill -TERM <daemon>   (detach_on_exit = true: it detaches the firewall)")?;
    let status = daemon.finish(Some(libc::SIGTERM), READY_TIMEOUT, &d.stop)?;
    d.check("the daemon's exit status", 0, status.code().unwrap_or(-1))?;
    d.check(
        &format!("kscope attachments left on {iface}"),
        0,
        u64::from(firewall::pin_dir(&iface).exists()),
    )
}

/// True when kscope counted exactly what the observer saw arrive.
fn agrees(seen: &Seen, t: &counters::Totals) -> bool {
    let (v4, v6, other) = (
        t.family(Family::Ipv4),
        t.family(Family::Ipv6),
        t.family(Family::Other),
    );
    (
        v4.packets,
        v4.bytes,
        v6.packets,
        v6.bytes,
        other.packets,
        other.bytes,
    ) == (
        seen.ipv4_packets,
        seen.ipv4_bytes,
        seen.ipv6_packets,
        seen.ipv6_bytes,
        seen.other_packets,
        seen.other_bytes,
    )
}

/// The sent-versus-counted table.
fn comparison(sent: &Sent, seen: &Seen, t: &counters::Totals) -> String {
    let mut s = format!(
        "{:<7} {:>10} {:>12} {:>10} {:>12}  {}\n",
        "FAMILY", "SENT PKTS", "SENT BYTES", "COUNTED", "COUNTED B", "NOTE"
    );
    let rows = [
        (
            Family::Ipv4,
            sent.ipv4_packets,
            sent.ipv4_bytes,
            seen.unmarked_ipv4(),
        ),
        (
            Family::Ipv6,
            sent.ipv6_packets,
            sent.ipv6_bytes,
            seen.unmarked_ipv6(),
        ),
        (Family::Other, 0, 0, seen.other_packets),
    ];
    for (f, p, b, extra) in rows {
        let c = t.family(f);
        let note = if extra > 0 {
            format!("+{extra} the kernel sent by itself (MLD/ND)")
        } else {
            String::new()
        };
        let line = format!(
            "{:<7} {p:>10} {b:>12} {:>10} {:>12}  {note}",
            f.name(),
            c.packets,
            c.bytes
        );
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        std::iter::once("kscope")
            .chain(a.iter().copied())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn child_tasks_come_only_from_their_exact_command_lines() {
        assert_eq!(
            ChildTask::from_args(args(&["demo-child", "act", "/tmp/x"])),
            Some(ChildTask::Act {
                dir: "/tmp/x".into()
            })
        );
        assert_eq!(
            ChildTask::from_args(args(&["demo-child", "spin", "60"])),
            Some(ChildTask::Spin { secs: 60 })
        );
        for other in [
            &["demo"][..],
            &["demo-child"],
            &["demo-child", "spin", "x"],
            &["demo-child", "act"],
            &["demo-child", "act", "/tmp/x", "more"],
            &["fw", "demo-child", "act", "/tmp/x"],
        ] {
            assert_eq!(ChildTask::from_args(args(other)), None, "{other:?}");
        }
    }

    #[test]
    fn metric_sums_add_the_matching_series_only() {
        let scrape = "# HELP x y\n\
            kscope_fw_packets_total{iface=\"a\",family=\"ipv4\",reason=\"p\"} 5\n\
            kscope_fw_packets_total{iface=\"a\",family=\"ipv4\",reason=\"d\"} 20\n\
            kscope_fw_packets_total{iface=\"a\",family=\"ipv6\",reason=\"p\"} 7\n\
            kscope_fw_packets_totalx{iface=\"a\",family=\"ipv4\"} 100\n";
        assert_eq!(
            metric_sum(scrape, "kscope_fw_packets_total", &["family=\"ipv4\""]),
            25
        );
        assert_eq!(metric_sum(scrape, "kscope_fw_packets_total", &[]), 32);
        assert_eq!(metric_sum(scrape, "kscope_fw_bytes_total", &[]), 0);
    }
}
