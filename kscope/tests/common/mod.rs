//! Helpers shared by the root-only integration tests. They run the real
//! `kscope` binary against the running kernel, inside namespaces that
//! `kscope_lab::netlab` creates and removes.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::{
    io,
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use kscope_lab::netlab::{Lab, Netns};

/// The kscope binary under test. `KSCOPE_BIN` overrides it (the VM runner
/// copies the binary to a different path).
pub fn kscope_bin() -> PathBuf {
    std::env::var_os("KSCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kscope")))
}

/// A [`Lab`] for tests that attach kscope's firewall to it; derefs to the
/// lab. Whoever attaches detaches: a test detaches at its end, and when it
/// does not get there (a failed assertion, a panic, an early return),
/// dropping this detaches kscope from both of the lab's interfaces.
/// Deleting the lab's namespaces removes the veth pair and its XDP
/// attachment, but not the pins under /sys/fs/bpf/kscope.
pub struct FwLab(Lab);

impl FwLab {
    /// [`Lab::new`].
    pub fn new(tag: &str) -> io::Result<FwLab> {
        Lab::new(tag).map(FwLab)
    }
}

impl std::ops::Deref for FwLab {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        &self.0
    }
}

impl Drop for FwLab {
    fn drop(&mut self) {
        for ifc in [&self.0.iface_a, &self.0.iface_b] {
            let dir = kscope::firewall::pin_dir(ifc);
            if dir.exists() {
                eprintln!("test lab: removing leftover pins {}", dir.display());
                let _ = kscope::firewall::detach(ifc);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

/// Panics unless running as root: these tests load programs into the kernel.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests need root: run `cargo xtask test` as root"
    );
}

/// `kscope ARGS`, inside `ns` when given.
pub fn kscope_cmd(ns: Option<&Netns>, args: &[&str]) -> Command {
    let mut cmd = match ns {
        Some(ns) => ns.command(kscope_bin()),
        None => Command::new(kscope_bin()),
    };
    cmd.args(args).env("NO_COLOR", "1");
    cmd
}

/// Runs kscope and returns its output, whatever the exit status.
pub fn kscope(ns: Option<&Netns>, args: &[&str]) -> Output {
    kscope_cmd(ns, args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", kscope_bin().display()))
}

/// Runs `kscope ARGS` as nobody with every capability dropped (through
/// setpriv), inside `ns` when given, and returns its output.
pub fn kscope_as_nobody(ns: Option<&Netns>, args: &[&str]) -> Output {
    let mut cmd = match ns {
        Some(ns) => ns.command("setpriv"),
        None => Command::new("setpriv"),
    };
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(kscope_bin())
    .args(args)
    .env("NO_COLOR", "1")
    .output()
    .expect("run setpriv")
}

/// Runs kscope and panics with its stderr unless it succeeds; returns stdout.
pub fn kscope_ok(ns: Option<&Netns>, args: &[&str]) -> String {
    let out = kscope(ns, args);
    assert!(
        out.status.success(),
        "kscope {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts kscope failed with exit status `code` and exactly one `error:`
/// line containing every string in `needles`; returns that line.
pub fn assert_fails(out: &Output, code: i32, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "wrong exit status; stderr:\n{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "stdout should be empty on error: {:?}",
        out.stdout
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors.len(),
        1,
        "want exactly one error line, got:\n{stderr}"
    );
    for n in needles {
        assert!(
            errors[0].contains(n),
            "error line lacks {n:?}: {}",
            errors[0]
        );
    }
    errors[0].to_owned()
}

/// XDP attachment of `iface` in `ns` as iproute2 reports it: (mode, program
/// id), where mode is the kernel's XDP_ATTACHED_* (1 driver, 2 skb).
pub fn xdp_on(ns: &Netns, iface: &str) -> Option<(u64, u64)> {
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-j", "link", "show", "dev", iface])
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip link show {iface}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
    let xdp = v.get(0)?.get("xdp")?;
    Some((
        xdp.get("mode")?.as_u64()?,
        xdp.get("prog")?.get("id")?.as_u64()?,
    ))
}

/// True while the kernel still knows program `id` (per bpftool).
pub fn prog_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .expect("run bpftool")
        .status
        .success()
}

/// Waits up to `limit` for program `id` to be freed. The kernel frees a
/// program after an RCU grace period once its last reference goes, so it can
/// outlive the detach by a moment.
pub fn wait_prog_gone(id: u64, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !prog_exists(id) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !prog_exists(id)
}

/// Asserts every program in `ids` is freed within 5 s (see
/// [`wait_prog_gone`]).
pub fn assert_progs_gone(ids: &[u64]) {
    for &id in ids {
        assert!(
            wait_prog_gone(id, Duration::from_secs(5)),
            "program {id} left loaded"
        );
    }
}

/// Parses `kscope fw stats --json` output into one value per interface.
pub fn stats_json(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The first `name` in PATH, if any.
pub fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Features the current kernel must have: a comma-separated list in
/// `KSCOPE_REQUIRE` (the VM runner sets it per kernel, e.g. `kprobe,fentry`
/// on 6.1 and 6.12). A test may skip a missing feature only when it is not
/// on that list.
pub fn required(feature: &str) -> bool {
    std::env::var("KSCOPE_REQUIRE")
        .map(|v| v.split(',').any(|f| f.trim() == feature))
        .unwrap_or(false)
}

/// Skips the calling test loudly because `feature` is missing, or fails it
/// when the feature is required on this kernel. Writes to stderr directly,
/// past libtest's output capture, so the skip shows in every run; the
/// `KSCOPE-SKIP` line is what the xtask summary counts.
pub fn skip(feature: &str, reason: &str) {
    use std::io::Write as _;
    assert!(
        !required(feature),
        "{feature} is required on this kernel (KSCOPE_REQUIRE) but unavailable: {reason}"
    );
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    // One write, so parallel tests cannot split the two lines apart.
    let msg = format!("skipping: {test}: {feature} unavailable: {reason}\nKSCOPE-SKIP {test}\n");
    let _ = std::io::stderr().write_all(msg.as_bytes());
}

/// A running `kscope trace …` child, with its stderr collected.
pub struct Tracer {
    pub child: std::process::Child,
    stderr: std::sync::mpsc::Receiver<String>,
    pub stderr_lines: Vec<String>,
}

impl Tracer {
    /// Starts `kscope ARGS` with stdout piped (or discarded) and waits until
    /// it reports readiness on stderr ("(ready)"), at most `limit`.
    pub fn start(args: &[&str], stdout: bool, limit: Duration) -> Tracer {
        Self::start_until(None, args, &[], stdout, limit, "(ready)")
    }

    /// As [`Tracer::start`], inside `ns` when given, with `envs` added to
    /// the child's environment (never to the test process's, which parallel
    /// tests share), waiting for a stderr line containing `marker`.
    pub fn start_until(
        ns: Option<&Netns>,
        args: &[&str],
        envs: &[(&str, &str)],
        stdout: bool,
        limit: Duration,
        marker: &str,
    ) -> Tracer {
        let stdout = if stdout {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        };
        Self::start_io(ns, args, envs, stdout, limit, marker)
    }

    /// As [`Tracer::start_until`], with stdout going to `stdout` (a pipe
    /// end, a terminal).
    pub fn start_io(
        ns: Option<&Netns>,
        args: &[&str],
        envs: &[(&str, &str)],
        stdout: std::process::Stdio,
        limit: Duration,
        marker: &str,
    ) -> Tracer {
        use std::io::BufRead as _;
        let mut child = kscope_cmd(ns, args)
            .envs(envs.iter().copied())
            .stdout(stdout)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn kscope {args:?}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut t = Tracer {
            child,
            stderr: rx,
            stderr_lines: Vec::new(),
        };
        let start = Instant::now();
        loop {
            let left = limit.saturating_sub(start.elapsed());
            match t.stderr.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains(marker);
                    t.stderr_lines.push(line);
                    if ready {
                        return t;
                    }
                }
                Err(_) => {
                    let _ = t.child.kill();
                    panic!(
                        "kscope {args:?} not ready within {limit:?}; stderr:\n{}",
                        t.stderr_lines.join("\n")
                    );
                }
            }
        }
    }

    /// Program ids the tracer holds open, from /proc/PID/fdinfo.
    pub fn prog_ids(&self) -> Vec<u64> {
        prog_ids_of(self.child.id())
    }

    /// Stderr lines that arrived since the last call, waiting up to `limit`
    /// for one containing `marker` (all lines are kept in `stderr_lines`).
    pub fn wait_line(&mut self, marker: &str, limit: Duration) -> Option<String> {
        let start = Instant::now();
        loop {
            let left = limit.checked_sub(start.elapsed())?;
            let line = self.stderr.recv_timeout(left).ok()?;
            self.stderr_lines.push(line.clone());
            if line.contains(marker) {
                return Some(line);
            }
        }
    }

    /// Waits up to `limit` for the tracer to exit by itself; kills it and
    /// panics, with its stderr, if it does not.
    pub fn wait_exit(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                while let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(2)) {
                    self.stderr_lines.push(l);
                }
                return (status, self.stderr_lines.join("\n"));
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "kscope still running after {limit:?}; stderr:\n{}",
                    self.stderr_lines.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and waits for the exit; returns (status, stdout, stderr).
    pub fn stop(mut self, signal: i32) -> (std::process::ExitStatus, String, String) {
        use std::io::Read as _;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        let status = self.child.wait().expect("wait for tracer");
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            self.stderr_lines.push(l);
        }
        (status, out, self.stderr_lines.join("\n"))
    }
}

/// A test that panics before [`Tracer::stop`] must not leave its kscope
/// running (and its programs attached): the child is killed and reaped.
impl Drop for Tracer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Program ids a process holds file descriptors for (prog fds and links).
pub fn prog_ids_of(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(Ok(id)) = line.strip_prefix("prog_id:").map(|id| id.trim().parse()) {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The calling thread's id.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Runs `tmux ARGS` on the test's own server `sock` (screen tests drive
/// kscope in a shell under tmux, as a person would).
pub fn tmux(sock: &str, args: &[&str]) -> String {
    let out = Command::new("tmux")
        .env("TMUX_TMPDIR", std::env::temp_dir())
        .env("TERM", "xterm")
        .arg("-L")
        .arg(sock)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tmux");
    assert!(
        out.status.success(),
        "tmux {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Captures session `t`'s pane until `ok` holds (at most 90 s).
pub fn screen_until(sock: &str, what: &str, mut ok: impl FnMut(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let screen = tmux(sock, &["capture-pane", "-p", "-t", "t"]);
        if ok(&screen) {
            return screen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{what} never showed; the screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tmux server of the test's own (`-L sock`) with one session `t`, 160 or
/// more columns wide, running `sh`; killed when dropped.
pub struct TmuxSession(pub String);

impl TmuxSession {
    pub fn start(tag: &str, width: u32, height: u32) -> TmuxSession {
        let sock = format!("kscope-{tag}-{}", std::process::id());
        let (w, h) = (width.to_string(), height.to_string());
        tmux(
            &sock,
            &["new-session", "-d", "-s", "t", "-x", &w, "-y", &h, "sh"],
        );
        TmuxSession(sock)
    }

    /// Types `keys` into the session.
    pub fn keys(&self, keys: &str) {
        tmux(&self.0, &["send-keys", "-t", "t", keys]);
    }

    /// The shell's pid.
    pub fn shell(&self) -> u32 {
        tmux(&self.0, &["display", "-p", "-t", "t", "#{pane_pid}"])
            .trim()
            .parse()
            .expect("pane pid")
    }

    /// Quits the full-screen program with `q` and waits until the shell has
    /// no child left; then the shell echoes `back-42` and the screen that
    /// shows it is returned (typing earlier would feed the keys to the
    /// program).
    pub fn quit_to_shell(&self) -> String {
        self.keys("q");
        let shell = self.shell();
        let start = Instant::now();
        while std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .is_ok_and(|c| !c.trim().is_empty())
        {
            assert!(start.elapsed() < Duration::from_secs(60), "q did not quit");
            std::thread::sleep(Duration::from_millis(50));
        }
        tmux(
            &self.0,
            &["send-keys", "-t", "t", "echo back-$((40+2))", "Enter"],
        );
        screen_until(&self.0, "the shell", |s| s.contains("back-42"))
    }
}

impl Drop for TmuxSession {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .env("TMUX_TMPDIR", std::env::temp_dir())
            .args(["-L", &self.0, "kill-server"])
            .status();
    }
}

/// Set (to anything), this variable makes a test binary the helper
/// process of a burst test ([`syscall_burst`]).
pub const SYSCALL_BURST: &str = "KSCOPE_TEST_SYSCALL_BURST";

/// System calls that take a file descriptor first and fail at once with
/// EBADF (or EINVAL, EFAULT) when it is -1, none of which a test process
/// makes on its own: each is a histogram key of its own, new to the
/// table at its first call.
#[cfg(target_arch = "x86_64")]
pub const BURST_CALLS: &[(&str, libc::c_long)] = &[
    ("lseek", libc::SYS_lseek),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("readv", libc::SYS_readv),
    ("dup", libc::SYS_dup),
    ("sendfile", libc::SYS_sendfile),
    ("connect", libc::SYS_connect),
    ("accept", libc::SYS_accept),
    ("sendto", libc::SYS_sendto),
    ("recvfrom", libc::SYS_recvfrom),
    ("sendmsg", libc::SYS_sendmsg),
    ("recvmsg", libc::SYS_recvmsg),
    ("shutdown", libc::SYS_shutdown),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    ("setsockopt", libc::SYS_setsockopt),
    ("getsockopt", libc::SYS_getsockopt),
    ("flock", libc::SYS_flock),
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
    ("ftruncate", libc::SYS_ftruncate),
    ("fchdir", libc::SYS_fchdir),
    ("fchmod", libc::SYS_fchmod),
    ("fchown", libc::SYS_fchown),
    ("fstatfs", libc::SYS_fstatfs),
    ("readahead", libc::SYS_readahead),
    ("fsetxattr", libc::SYS_fsetxattr),
    ("fgetxattr", libc::SYS_fgetxattr),
    ("flistxattr", libc::SYS_flistxattr),
    ("fremovexattr", libc::SYS_fremovexattr),
    ("getdents64", libc::SYS_getdents64),
    ("fadvise64", libc::SYS_fadvise64),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("inotify_add_watch", libc::SYS_inotify_add_watch),
    ("splice", libc::SYS_splice),
    ("tee", libc::SYS_tee),
    ("sync_file_range", libc::SYS_sync_file_range),
    ("fallocate", libc::SYS_fallocate),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("timerfd_gettime", libc::SYS_timerfd_gettime),
    ("accept4", libc::SYS_accept4),
    ("preadv", libc::SYS_preadv),
    ("pwritev", libc::SYS_pwritev),
    ("recvmmsg", libc::SYS_recvmmsg),
    ("syncfs", libc::SYS_syncfs),
    ("sendmmsg", libc::SYS_sendmmsg),
    ("setns", libc::SYS_setns),
    ("copy_file_range", libc::SYS_copy_file_range),
];

/// The body of a burst helper process: names its thread `kscope-burst`,
/// waits for a line on stdin, then makes each of `BURST_CALLS` once, back
/// to back.
#[cfg(target_arch = "x86_64")]
pub fn syscall_burst() {
    assert!(
        std::env::var_os(SYSCALL_BURST).is_some(),
        "run by the burst tests only"
    );
    // The name the tests filter on (`-n`), for this thread's calls.
    // SAFETY: a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"kscope-burst".as_ptr()) };
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("go");
    for &(_, nr) in BURST_CALLS {
        // SAFETY: each call is given fd -1 and null pointers, and fails
        // before it touches anything.
        unsafe { libc::syscall(nr, -1, 0, 0, 0, 0, 0) };
    }
}
