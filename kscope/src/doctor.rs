//! `kscope doctor`: what kscope can do on this machine, one line per
//! capability, each from a real check.
//!
//! Environment checks read what the kernel reports (mounts, BTF,
//! capabilities, rlimits, sysctls, lockdown) and change nothing. Feature
//! checks load and attach kscope's own kernel objects the way the verbs do
//! and detach them at once: the probe kinds through [`probe_check`] (which
//! also checks the probe fires), the firewall's `fw_xdp` on loopback
//! (generic XDP) and on a veth pair (native XDP) inside a private network
//! namespace of a helper thread, each tracer as `kscope trace` loads it and
//! in count mode as the daemon runs it, and the profiler sampling this
//! process for a moment.
//!
//! Nothing is left behind: every program, link and map is held by a value
//! whose `Drop` releases it, nothing is pinned, and the network namespace
//! is anonymous (it goes away with the helper thread, and with the process
//! if that is killed). SIGINT and SIGTERM stop the run between checks.
//!
//! Logs from the loaders are muted unless `KSCOPE_LOG` is set: the report
//! says the same.
//!
//! Each line says `works`, `degraded` (kscope falls back; the detail says
//! what is lost) or `unavailable` (the detail says why, `fix` what to do).

use std::{
    fmt,
    io::{self, Write},
    path::Path,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::{
    output::{Align, Column, Format, Output},
    probe_check::{ProbeCheck, ProbeError, ProbeKind},
    sys::{self, Cap, Chain},
    trace::{self, EventTracer, Filters, Load, Mode, TraceError},
};

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Works,
    Degraded,
    Unavailable,
}

impl Status {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Status::Works => "works",
            Status::Degraded => "degraded",
            Status::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Check {
    pub(crate) check: String,
    pub(crate) status: Status,
    detail: String,
    /// What to do about it; `None` when it works.
    pub(crate) fix: Option<String>,
}

impl Check {
    fn works(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            status: Status::Works,
            detail: detail.into(),
            fix: None,
        }
    }

    fn degraded(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Degraded,
            fix: Some(fix.into()),
            ..Self::works(check, detail)
        }
    }

    fn unavailable(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Unavailable,
            ..Self::degraded(check, detail, fix)
        }
    }
}

/// The table's DETAIL cell: the detail, then the fix.
fn table_detail(c: &Check) -> String {
    match &c.fix {
        Some(fix) => format!("{}; fix: {fix}", c.detail),
        None => c.detail.clone(),
    }
}

/// Writes the report: a CHECK STATUS DETAIL table, or one JSON object per
/// check (`check`, `status`, `detail`, `fix`, null when it works).
///
/// # Errors
/// Output errors.
fn write_report(w: impl Write, format: Format, checks: &[Check]) -> io::Result<()> {
    let cols = vec![
        Column::left("CHECK", "check", 32),
        Column::left("STATUS", "status", 11),
        Column::json("detail"),
        Column::json("fix"),
        Column::table("DETAIL", 0, Align::Left),
    ];
    let mut out = Output::new(w, format, cols);
    out.header()?;
    for c in checks {
        out.row(|r| {
            r.str(&c.check)?;
            r.str(c.status.name())?;
            r.str(&c.detail)?;
            match &c.fix {
                Some(f) => r.str(f)?,
                None => r.null()?,
            }
            r.str(&table_detail(c))
        })?;
    }
    out.flush()
}

/// The exit status for a report: 0 when everything works, 1 otherwise.
fn exit_code(checks: &[Check]) -> ExitCode {
    if checks.iter().all(|c| c.status == Status::Works) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs every check and writes the report to `w`.
///
/// # Errors
/// Output errors, or an interruption (SIGINT, SIGTERM) before the end,
/// after everything loaded so far has been released.
pub fn run(format: Format, w: impl Write) -> io::Result<ExitCode> {
    let stop = sys::stop_on_signals()?;
    // The verbs' own notices (which probe a tracer chose, the profiler's
    // fallback) repeat what the report says; KSCOPE_LOG shows them.
    let checks = if std::env::var_os("KSCOPE_LOG").is_some() {
        collect(&stop)?
    } else {
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            collect(&stop)
        })?
    };
    write_report(w, format, &checks)?;
    Ok(exit_code(&checks))
}

fn interrupted(stop: &AtomicBool) -> io::Result<()> {
    if stop.load(Ordering::Relaxed) {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
    }
    Ok(())
}

/// Every check, in report order.
fn collect(stop: &AtomicBool) -> io::Result<Vec<Check>> {
    let caps = sys::cap_eff().unwrap_or(0);
    let mut checks = environment(caps);
    let lacks_bpf = !sys::missing_caps(caps, &[Cap::Bpf]).is_empty();
    if lacks_bpf {
        // Nothing can be loaded: say so for each feature instead of trying.
        for name in FEATURES {
            checks.push(Check::unavailable(
                *name,
                "not checked: this process lacks CAP_BPF (and CAP_SYS_ADMIN), which loading any BPF program needs",
                "run kscope doctor as root",
            ));
        }
        checks.insert(checks.len() - 2, daemon_metrics());
        return Ok(checks);
    }
    sys::raise_memlock();
    for kind in [ProbeKind::Kprobe, ProbeKind::Kretprobe, ProbeKind::Fentry] {
        interrupted(stop)?;
        checks.push(probe(kind));
    }
    interrupted(stop)?;
    let (native, skb) = xdp();
    let fw_ok = [&native, &skb].iter().any(|c| c.status == Status::Works);
    checks.extend([native, skb]);
    interrupted(stop)?;
    checks.push(tracer::<trace::open::Open>(""));
    interrupted(stop)?;
    let btf = Path::new(BTF).exists();
    let exec_note = (!btf).then_some("no kernel BTF: PPID reads 0");
    checks.push(tracer::<trace::exec::Exec>(exec_note.unwrap_or("")));
    interrupted(stop)?;
    checks.push(tracer::<trace::connect::Connect>(""));
    interrupted(stop)?;
    checks.extend(profile());
    interrupted(stop)?;
    checks.push(top_stats(caps));
    checks.push(daemon_metrics());
    checks.push(daemon_counters(stop)?);
    checks.push(daemon_firewall(fw_ok, sys::bpffs_mounted(), caps));
    Ok(checks)
}

/// The feature lines, for reports that cannot check them.
const FEATURES: &[&str] = &[
    "probe kprobe",
    "probe kretprobe",
    "probe fentry",
    "fw native XDP (veth)",
    "fw generic XDP (skb)",
    "trace open",
    "trace exec",
    "trace connect",
    "profile perf event",
    "profile kernel stacks",
    "profile user stacks",
    "top stats",
    "daemon tracer counters",
    "daemon firewall",
];

/// `kscope top` and the daemon's program metrics: statistics through
/// BPF_ENABLE_STATS (5.8+) and the program list, as `top` takes them.
fn top_stats(caps: u64) -> Check {
    const NAME: &str = "top stats";
    if !sys::missing_caps(caps, &[Cap::SysAdmin]).is_empty() {
        return Check::unavailable(
            NAME,
            "listing programs and BPF_ENABLE_STATS need CAP_SYS_ADMIN, which this process lacks",
            ROOT_FIX,
        );
    }
    let stats = match crate::top::StatsGuard::enable() {
        Ok(s) => s,
        Err(e @ crate::top::TopError::StatsUnsupported { .. }) => {
            return Check::unavailable(NAME, e.to_string(), "use Linux 5.8 or later");
        }
        Err(e) => return Check::unavailable(NAME, Chain(&e).to_string(), "see the detail"),
    };
    let listed = crate::top::Collector::new(true).and_then(|mut c| {
        c.refresh()?;
        Ok(c.len())
    });
    drop(stats);
    match listed {
        Ok(n) => Check::works(
            NAME,
            format!(
                "BPF_ENABLE_STATS through an fd, held only while kscope top or the daemon runs \
                 (kernel.bpf_stats_enabled is left as found); {n} programs listed"
            ),
        ),
        Err(e) => Check::unavailable(NAME, Chain(&e).to_string(), "see the detail"),
    }
}

/// The daemon's HTTP endpoint: nothing kernel-side to check.
fn daemon_metrics() -> Check {
    Check::works(
        "daemon metrics",
        "the Prometheus endpoint is plain HTTP: it needs nothing from the kernel",
    )
}

const BTF: &str = "/sys/kernel/btf/vmlinux";
const LOCKDOWN: &str = "/sys/kernel/security/lockdown";
const UNPRIV_BPF: &str = "/proc/sys/kernel/unprivileged_bpf_disabled";
const PERF_PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";
const ROOT_FIX: &str = "run kscope as root";

fn environment(caps: u64) -> Vec<Check> {
    let mut v = vec![Check::works(
        "kernel",
        format!("Linux {}", sys::kernel_release()),
    )];
    v.extend(capabilities(caps));
    v.push(if sys::bpffs_mounted() {
        Check::works("bpffs", format!("mounted at {}", sys::BPFFS))
    } else {
        Check::degraded(
            "bpffs",
            format!(
                "not mounted at {}: kscope fw and the daemon mount it on first use (needs CAP_SYS_ADMIN)",
                sys::BPFFS
            ),
            "mount -t bpf bpf /sys/fs/bpf",
        )
    });
    v.push(if sys::tracefs_mounted() {
        Check::works("tracefs", format!("mounted at {}", sys::TRACEFS))
    } else {
        Check::degraded(
            "tracefs",
            format!(
                "not mounted at {}: the tracers mount it on first use (needs CAP_SYS_ADMIN)",
                sys::TRACEFS
            ),
            "mount -t tracefs tracefs /sys/kernel/tracing",
        )
    });
    v.push(if Path::new(BTF).exists() {
        Check::works("btf", format!("{BTF} present"))
    } else {
        Check::degraded(
            "btf",
            format!(
                "no {BTF}: no fentry probes; trace connect reads IPv6 source addresses as :: and, \
                 on the tracepoint, misses connects that fail before the SYN; trace exec reads PPID as 0"
            ),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    });
    v.push(memlock());
    v.push(sysctl_unprivileged_bpf(
        read_sysctl(UNPRIV_BPF),
        sys::missing_caps(caps, &[Cap::Bpf]).is_empty(),
    ));
    v.push(sysctl_perf_paranoid(
        read_sysctl(PERF_PARANOID),
        sys::missing_caps(caps, &[Cap::Perfmon]).is_empty(),
    ));
    v.push(lockdown(std::fs::read_to_string(LOCKDOWN).ok().as_deref()));
    v
}

/// One line per capability kscope uses, with what needs it.
fn capabilities(caps: u64) -> Vec<Check> {
    let has = |c: Cap| sys::missing_caps(caps, &[c]).is_empty();
    let mut v = Vec::new();
    for (cap, needs) in [
        (Cap::Bpf, "loading any BPF program (every verb)"),
        (Cap::Perfmon, "the tracers and the profiler"),
        (Cap::NetAdmin, "attaching the firewall"),
    ] {
        v.push(if has(cap) {
            Check::works(cap.to_string(), format!("held; needed for {needs}"))
        } else {
            Check::unavailable(
                cap.to_string(),
                format!("missing; needed for {needs}"),
                ROOT_FIX,
            )
        });
    }
    let sys_admin = caps & (1u64 << Cap::SysAdmin as u32) != 0;
    v.push(if sys_admin {
        Check::works(
            "CAP_SYS_ADMIN",
            "held; used to mount bpffs and tracefs when missing, for doctor's private network \
             namespace, and to read mapped files of other mount namespaces for symbols",
        )
    } else {
        Check::degraded(
            "CAP_SYS_ADMIN",
            "missing: bpffs and tracefs are not mounted when missing, symbols of binaries in \
             other mount namespaces may go unresolved, doctor cannot check XDP",
            ROOT_FIX,
        )
    });
    v
}

fn memlock() -> Check {
    let release = sys::kernel_release();
    let charged_to_cgroup = sys::parse_kernel_version(&release).is_some_and(|v| v >= (5, 11));
    match sys::memlock_rlimit() {
        Ok((None, _)) => Check::works("memlock", "RLIMIT_MEMLOCK unlimited"),
        Ok((Some(soft), hard)) => {
            let text = format!("RLIMIT_MEMLOCK {soft} bytes");
            if charged_to_cgroup {
                Check::works(
                    "memlock",
                    format!("{text}; Linux 5.11+ charges BPF memory to the memory cgroup instead"),
                )
            } else if hard.is_none()
                || sys::missing_caps(sys::cap_eff().unwrap_or(0), &[Cap::SysResource]).is_empty()
            {
                Check::works("memlock", format!("{text}; kscope raises it to unlimited"))
            } else {
                Check::degraded(
                    "memlock",
                    format!(
                        "{text}, hard limit {} bytes, and kscope cannot raise it: large maps \
                         (the profiler's stacks, the firewall's rules) may fail to load",
                        hard.unwrap_or(0)
                    ),
                    "run kscope as root, or raise the limit (ulimit -l unlimited)",
                )
            }
        }
        Err(e) => Check::degraded("memlock", format!("getrlimit: {e}"), ROOT_FIX),
    }
}

/// A sysctl file's integer, if readable.
fn read_sysctl(path: &str) -> Option<i64> {
    parse_sysctl(&std::fs::read_to_string(path).ok()?)
}

/// Parses a /proc/sys integer.
fn parse_sysctl(text: &str) -> Option<i64> {
    text.trim().parse().ok()
}

/// `kernel.unprivileged_bpf_disabled`: kscope never uses unprivileged BPF,
/// so it matters only without CAP_BPF.
fn sysctl_unprivileged_bpf(value: Option<i64>, privileged: bool) -> Check {
    let name = "kernel.unprivileged_bpf_disabled";
    let Some(v) = value else {
        return Check::works(
            name,
            "not present; kscope loads programs with CAP_BPF anyway",
        );
    };
    let meaning = match v {
        0 => "unprivileged BPF allowed",
        1 => "unprivileged BPF disabled until reboot",
        2 => "unprivileged BPF disabled",
        _ => "unknown value",
    };
    if privileged {
        Check::works(
            name,
            format!("{v} ({meaning}); kscope runs with CAP_BPF, which this does not restrict"),
        )
    } else {
        Check::unavailable(
            name,
            format!(
                "{v} ({meaning}); without CAP_BPF kscope cannot load programs whatever its value"
            ),
            ROOT_FIX,
        )
    }
}

/// `kernel.perf_event_paranoid`: CAP_PERFMON (or CAP_SYS_ADMIN) bypasses it.
fn sysctl_perf_paranoid(value: Option<i64>, perfmon: bool) -> Check {
    let name = "kernel.perf_event_paranoid";
    let Some(v) = value else {
        return Check::degraded(
            name,
            "not present: the kernel has no perf events (CONFIG_PERF_EVENTS)",
            "use a kernel built with CONFIG_PERF_EVENTS=y",
        );
    };
    if perfmon {
        Check::works(name, format!("{v}; CAP_PERFMON overrides it"))
    } else {
        Check::unavailable(
            name,
            format!("{v}; without CAP_PERFMON the tracers and the profiler cannot attach"),
            ROOT_FIX,
        )
    }
}

/// The lockdown mode, the bracketed word of /sys/kernel/security/lockdown.
fn parse_lockdown(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let len = text[start..].find(']')?;
    Some(&text[start..start + len])
}

/// Confidentiality mode refuses kprobes, bpf_probe_read_kernel, perf
/// events on the kernel and tracefs: the tracers and the profiler.
fn lockdown(text: Option<&str>) -> Check {
    let name = "lockdown";
    match text.and_then(parse_lockdown) {
        None => Check::works(name, "no lockdown LSM"),
        Some("none") => Check::works(name, "none"),
        Some("integrity") => Check::works(
            name,
            "integrity: blocks nothing kscope uses (bpf_probe_write_user, which it does not use)",
        ),
        Some(mode) => Check::unavailable(
            name,
            format!(
                "{mode}: the kernel refuses kprobes, reading kernel memory from BPF, kernel perf \
                 samples and tracefs, so the tracers and the profiler cannot run"
            ),
            "boot with lockdown=integrity (or without lockdown)",
        ),
    }
}

/// Attaches `kind` through probe_check and checks it fires once per open
/// of a missing path by a helper thread.
fn probe(kind: ProbeKind) -> Check {
    const OPENS: u64 = 3;
    let name = format!("probe {}", kind.feature());
    let result = std::thread::scope(|s| {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let opener = s.spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let _ = tid_tx.send(u32::try_from(tid).unwrap_or(0));
            if go_rx.recv().is_ok() {
                let path = format!("/nonexistent/kscope-doctor-{}-{tid}", std::process::id());
                for _ in 0..OPENS {
                    let _ = std::fs::File::open(&path);
                }
            }
        });
        let tid = tid_rx.recv().unwrap_or(0);
        let attached = ProbeCheck::attach(kind, tid);
        if attached.is_ok() {
            let _ = go_tx.send(());
        }
        drop(go_tx);
        let _ = opener.join();
        attached.and_then(|c| c.hits())
    });
    match result {
        Ok(OPENS) => Check::works(
            name,
            format!(
                "attached to {} and fired",
                kscope_common::probe_check::TARGET_FN
            ),
        ),
        Ok(n) => Check::unavailable(
            name,
            format!("attached, but fired {n} times for {OPENS} calls"),
            "report this with the kernel version",
        ),
        Err(ProbeError::Unsupported { reason, .. }) => {
            let fix = probe_fix(kind, &reason);
            Check::unavailable(name, reason, fix)
        }
        Err(e) => Check::unavailable(name, e.to_string(), "report this with the kernel version"),
    }
}

fn probe_fix(kind: ProbeKind, reason: &str) -> &'static str {
    match kind {
        _ if reason.contains("CONFIG_KPROBES") => "use a kernel built with CONFIG_KPROBES=y",
        ProbeKind::Fentry if reason.contains("BTF") => {
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        }
        ProbeKind::Fentry => {
            "use a kernel with BPF trampolines (CONFIG_DEBUG_INFO_BTF=y, Linux 5.5+, x86-64 or arm64 6.0+)"
        }
        _ => "use a kernel built with CONFIG_KPROBES=y and CONFIG_KPROBE_EVENTS=y",
    }
}

/// The fix for a tracer or counter that failed with `e`.
fn trace_fix(e: &TraceError) -> String {
    match e {
        TraceError::Sys(sys::SysError::MissingCapabilities { .. }) => ROOT_FIX.into(),
        TraceError::Sys(sys::SysError::TracefsUnavailable { .. }) => {
            "mount -t tracefs tracefs /sys/kernel/tracing".into()
        }
        TraceError::Unsupported { feature, reason } if feature.contains("ring buffer") => {
            format!("use a kernel that has the {feature} ({reason})")
        }
        TraceError::Unsupported { feature, .. } => {
            format!("use a kernel with {feature}")
        }
        _ => "see the detail; run the verb with KSCOPE_LOG=debug for more".into(),
    }
}

/// Loads and attaches tracer `T` as `kscope trace` does (events through
/// the ring buffer), then detaches. `note` names what is lost anyway.
fn tracer<T: EventTracer>(note: &str) -> Check {
    let name = format!("trace {}", T::NAME);
    let filters = Filters::default();
    let attached = trace::preflight(&name).and_then(|()| {
        T::attach(
            &T::Opts::default(),
            &Load {
                tracer: T::NAME,
                filters: &filters,
                mode: Mode::Events,
                ring_bytes: None,
                hist_by_cgroup: false,
            },
        )
    });
    match attached {
        Ok(a) => tracer_verdict(&name, &a.what, a.probe, note),
        Err(e) => Check::unavailable(name, Chain(&e).to_string(), trace_fix(&e)),
    }
}

/// The verdict for a tracer that attached `what` with `probe`.
fn tracer_verdict(name: &str, what: &str, probe: &str, note: &str) -> Check {
    if probe == "tracepoint" {
        let btf = Path::new(BTF).exists();
        let pre_syn = if btf {
            "connect(2)'s tracepoints report connects that fail before the SYN"
        } else {
            "connects that fail before the SYN go unreported (no kernel BTF)"
        };
        return Check::degraded(
            name,
            format!(
                "tracepoint fallback (sock:inet_sock_set_state): RET not available (n/a), \
                 latency is the handshake (SYN_SENT to the next state); {pre_syn}"
            ),
            "use a kernel with CONFIG_KPROBES=y, or with BTF and BPF trampolines (fentry)",
        );
    }
    let how = if probe.is_empty() {
        what.to_owned()
    } else {
        format!("{probe}: {what}")
    };
    if note.is_empty() {
        Check::works(name, how)
    } else {
        Check::degraded(
            name,
            format!("{how}; {note}"),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    }
}

/// The daemon's tracers: each in count mode (per-CPU hash of counts), as
/// the daemon starts them.
fn daemon_counters(stop: &AtomicBool) -> io::Result<Check> {
    let name = "daemon tracer counters";
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for entry in trace::runner::TRACERS {
        interrupted(stop)?;
        match (entry.start)(&Filters::default()) {
            Ok(counter) => {
                drop(counter);
                ok.push(entry.name);
            }
            Err(e) => failed.push((entry.name, trace_fix(&e), Chain(&e).to_string())),
        }
    }
    Ok(match failed.first() {
        None => Check::works(
            name,
            format!("{} count in the kernel (per-CPU hash maps)", ok.join(", ")),
        ),
        Some((_, fix, _)) => {
            let why: Vec<String> = failed.iter().map(|(n, _, e)| format!("{n}: {e}")).collect();
            let detail = if ok.is_empty() {
                format!("no tracer can count: {}", why.join("; "))
            } else {
                format!("{} count; {}", ok.join(", "), why.join("; "))
            };
            if ok.is_empty() {
                Check::unavailable(name, detail, fix.clone())
            } else {
                Check::degraded(name, detail, fix.clone())
            }
        }
    })
}

/// The daemon's firewall: the XDP attachment pinned in bpffs so it
/// outlives the process.
fn daemon_firewall(xdp_works: bool, bpffs: bool, caps: u64) -> Check {
    let name = "daemon firewall";
    let can_mount = caps & (1u64 << Cap::SysAdmin as u32) != 0;
    match (xdp_works, bpffs || can_mount) {
        (true, true) => Check::works(
            name,
            "XDP through a bpf_link, pinned under /sys/fs/bpf/kscope so it outlives the daemon",
        ),
        (true, false) => Check::unavailable(
            name,
            "bpffs is not mounted and this process cannot mount it: nothing can be pinned",
            "mount -t bpf bpf /sys/fs/bpf",
        ),
        (false, _) => Check::unavailable(
            name,
            "no XDP mode works here (see the fw lines)",
            "see the fw lines",
        ),
    }
}

/// Samples this process for a moment with the profiler, busy in user
/// space and in system calls, and checks both stacks came back.
fn profile() -> Vec<Check> {
    use crate::profile::{Event, Options, Sampler, symbolize::Sides};
    let names = [
        "profile perf event",
        "profile kernel stacks",
        "profile user stacks",
    ];
    let max = sys::perf_max_sample_rate().unwrap_or(1000);
    let opts = Options {
        frequency: max.clamp(1, 997),
        cpu: None,
        pids: vec![std::process::id()],
        cgroup: None,
        include_idle: false,
        sides: Sides {
            kernel: true,
            user: true,
        },
        stack_storage: 1024,
        off_cpu: false,
        // The check is of the sampler and the kernel's own stack walk.
        dwarf: false,
        unwind_rows: 1,
    };
    let mut sampler = match Sampler::start(&opts) {
        Ok(s) => s,
        Err(e) => {
            let fix = match &e {
                crate::profile::ProfileError::Sys(_) => ROOT_FIX,
                _ => "use a kernel built with CONFIG_PERF_EVENTS=y and CONFIG_BPF_EVENTS=y",
            };
            let detail = Chain(&e).to_string();
            return names
                .iter()
                .map(|n| Check::unavailable(*n, detail.clone(), fix))
                .collect();
        }
    };
    busy(Duration::from_millis(300));
    sampler.stop();
    let event = sampler.event;
    let collected = sampler.collect();
    drop(sampler);
    let perf = match event {
        Event::Cycles => Check::works(names[0], "hardware CPU cycles counter"),
        // The doctor samples on-CPU only.
        Event::CpuClock | Event::OffCpu => Check::degraded(
            names[0],
            "no hardware cycle counter: sampling on the cpu-clock software event (timer-based, \
             skewed where interrupts are disabled)",
            "run on hardware or a VM that exposes the PMU",
        ),
    };
    let (raw, samples) = match collected {
        Ok((raw, stats)) => {
            let samples = stats
                .get(kscope_common::profile::SLOT_SAMPLES as usize)
                .copied()
                .unwrap_or(0);
            (raw, samples)
        }
        Err(e) => {
            let d = Chain(&e).to_string();
            return vec![
                perf,
                Check::unavailable(names[1], d.clone(), "report this"),
                Check::unavailable(names[2], d, "report this"),
            ];
        }
    };
    let got = |kernel: bool| {
        raw.counts.iter().any(|(k, _)| {
            let id = if kernel {
                k.kernel_stack_id
            } else {
                k.user_stack_id
            };
            u32::try_from(id).is_ok_and(|id| raw.stacks.get(&id).is_some_and(|s| !s.is_empty()))
        })
    };
    let side = |i: usize, kernel: bool| {
        if samples == 0 {
            Check::unavailable(
                names[i],
                "no samples in 300 ms of busy time",
                "check kernel.perf_event_max_sample_rate and that perf events fire here",
            )
        } else if got(kernel) {
            Check::works(names[i], format!("stacks taken ({samples} samples)"))
        } else {
            Check::degraded(
                names[i],
                format!("{samples} samples, none with a stack: functions show as [lost ... stack]"),
                if kernel {
                    "use a kernel with CONFIG_UNWINDER_ORC or frame pointers"
                } else {
                    "build programs with frame pointers (-fno-omit-frame-pointer)"
                },
            )
        }
    };
    vec![perf, side(1, true), side(2, false)]
}

/// Busy for `d`, half in user space, half in read(2) of /dev/zero.
fn busy(d: Duration) {
    use std::io::Read as _;
    let start = Instant::now();
    let mut zero = std::fs::File::open("/dev/zero").ok();
    let mut buf = vec![0u8; 1 << 16];
    let mut x = 1u64;
    while start.elapsed() < d {
        for i in 0..200_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        if let Some(z) = zero.as_mut() {
            for _ in 0..16 {
                let _ = z.read(&mut buf);
            }
        }
    }
    std::hint::black_box(x);
}

/// The firewall's `fw_xdp` attached in generic mode to loopback and in
/// native mode to a veth pair, in a private network namespace that goes
/// away with the helper thread that made it.
fn xdp() -> (Check, Check) {
    const NATIVE: &str = "fw native XDP (veth)";
    const SKB: &str = "fw generic XDP (skb)";
    let run = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only
            // this thread, which ends with these checks.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let skb = xdp_attach("lo", aya::programs::XdpMode::Skb);
            let native = sys::netlink::add_veth("kscdoc0", "kscdoc1")
                .map_err(|e| format!("creating a test veth pair: {e} (CONFIG_VETH?)"))
                .and_then(|()| xdp_attach("kscdoc0", aya::programs::XdpMode::Driver));
            Ok((native, skb))
        })
        .join()
    });
    let (native, skb) = match run {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let d = format!("not checked: cannot create a private network namespace: {e}");
            return (
                Check::unavailable(NATIVE, d.clone(), ROOT_FIX),
                Check::unavailable(SKB, d, ROOT_FIX),
            );
        }
        Err(_) => {
            let d = "the check panicked";
            return (
                Check::unavailable(NATIVE, d, "report this"),
                Check::unavailable(SKB, d, "report this"),
            );
        }
    };
    let skb_ok = skb.is_ok();
    let skb = match skb {
        Ok(()) => Check::works(SKB, "fw_xdp attached to lo through a bpf_link"),
        Err(e) => Check::unavailable(SKB, e, "see the detail"),
    };
    let native = match native {
        Ok(()) => Check::works(
            NATIVE,
            "fw_xdp attached in driver mode to a veth through a bpf_link",
        ),
        Err(e) if skb_ok => Check::degraded(
            NATIVE,
            format!("{e}; kscope fw attach falls back to generic (skb) mode, which is slower"),
            "use a driver with native XDP, or attach with --mode skb",
        ),
        Err(e) => Check::unavailable(NATIVE, e, "see the detail"),
    };
    (native, skb)
}

/// Loads the firewall's pipeline, attaches it to `iface` in `mode` through
/// a bpf_link, and drops it all.
fn xdp_attach(iface: &str, mode: aya::programs::XdpMode) -> Result<(), String> {
    use crate::firewall::{self, Policy};
    let ifindex = sys::if_nametoindex(iface).map_err(|e| e.to_string())?;
    let mut ebpf = firewall::load_pipeline(Policy::Pass).map_err(|e| Chain(&e).to_string())?;
    let prog = firewall::xdp_program(&mut ebpf, kscope_common::fw::PROG_FW_XDP)
        .map_err(|e| Chain(&e).to_string())?;
    let id = prog
        .attach_to_if_index(ifindex, mode)
        .map_err(|e| format!("attaching to {iface}: {}", Chain(&e)))?;
    let link = prog.take_link(id).map_err(|e| Chain(&e).to_string())?;
    let fd: Result<aya::programs::links::FdLink, _> = link.try_into();
    fd.map(drop).map_err(|_| {
        "attached without a bpf_link, which kscope fw needs to pin it (Linux 5.9+)".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_parse_with_their_newline() {
        assert_eq!(parse_sysctl("2\n"), Some(2));
        assert_eq!(parse_sysctl("-1\n"), Some(-1));
        assert_eq!(parse_sysctl(""), None);
        assert_eq!(parse_sysctl("x\n"), None);
    }

    #[test]
    fn lockdown_reads_the_bracketed_mode() {
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality\n"),
            Some("none")
        );
        assert_eq!(
            parse_lockdown("none integrity [confidentiality]\n"),
            Some("confidentiality")
        );
        assert_eq!(parse_lockdown(""), None);
        assert_eq!(lockdown(None).status, Status::Works);
        assert_eq!(
            lockdown(Some("none [integrity] confidentiality")).status,
            Status::Works
        );
        let c = lockdown(Some("none integrity [confidentiality]"));
        assert_eq!(c.status, Status::Unavailable);
        assert!(c.fix.is_some());
    }

    #[test]
    fn sysctls_matter_only_without_capabilities() {
        assert_eq!(sysctl_unprivileged_bpf(Some(2), true).status, Status::Works);
        assert_eq!(
            sysctl_unprivileged_bpf(Some(0), false).status,
            Status::Unavailable
        );
        assert_eq!(sysctl_unprivileged_bpf(None, true).status, Status::Works);
        assert_eq!(sysctl_perf_paranoid(Some(4), true).status, Status::Works);
        assert_eq!(
            sysctl_perf_paranoid(Some(-1), false).status,
            Status::Unavailable
        );
        assert_eq!(sysctl_perf_paranoid(None, true).status, Status::Degraded);
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(sys::parse_kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(sys::parse_kernel_version("5.10.209"), Some((5, 10)));
        assert_eq!(sys::parse_kernel_version("6.18"), Some((6, 18)));
        assert_eq!(sys::parse_kernel_version("x"), None);
    }

    fn report(format: Format, checks: &[Check]) -> String {
        let mut out = Vec::new();
        write_report(&mut out, format, checks).expect("write");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn reports_render_as_a_table_and_as_json_lines() {
        let checks = [
            Check::works("btf", "present"),
            Check::unavailable("probe kprobe", "no CONFIG_KPROBES", "rebuild"),
        ];
        let table = report(Format::Table, &checks);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[0].starts_with("CHECK")
                && lines[0].contains("STATUS")
                && lines[0].contains("DETAIL")
        );
        assert!(
            lines[2].contains("unavailable")
                && lines[2].ends_with("no CONFIG_KPROBES; fix: rebuild")
        );
        let json = report(Format::Json, &checks);
        let v: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["check"], "btf");
        assert_eq!(v[0]["status"], "works");
        assert!(v[0]["fix"].is_null());
        assert_eq!(v[1]["status"], "unavailable");
        assert_eq!(v[1]["fix"], "rebuild");
        assert_eq!(v[1].as_object().map(|o| o.len()), Some(4));
    }

    #[test]
    fn exit_status_is_zero_only_when_everything_works() {
        let w = Check::works("a", "b");
        assert_eq!(exit_code(std::slice::from_ref(&w)), ExitCode::SUCCESS);
        let d = Check::degraded("a", "b", "c");
        assert_eq!(exit_code(&[w, d]), ExitCode::FAILURE);
    }

    #[test]
    fn the_connect_tracepoint_fallback_is_degraded_and_says_what_is_lost() {
        let c = tracer_verdict("trace connect", "x", "tracepoint", "");
        assert_eq!(c.status, Status::Degraded);
        assert!(c.detail.contains("RET not available"), "{}", c.detail);
        assert_eq!(
            tracer_verdict("trace connect", "x", "kprobe", "").status,
            Status::Works
        );
        assert_eq!(
            tracer_verdict("trace exec", "x", "", "no BTF").status,
            Status::Degraded
        );
    }

    #[test]
    fn the_daemon_firewall_needs_xdp_and_bpffs() {
        assert_eq!(daemon_firewall(true, true, 0).status, Status::Works);
        assert_eq!(daemon_firewall(true, false, 0).status, Status::Unavailable);
        assert_eq!(daemon_firewall(true, false, 1 << 21).status, Status::Works);
        assert_eq!(daemon_firewall(false, true, 0).status, Status::Unavailable);
    }
}
