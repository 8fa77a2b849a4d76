//! `kscope doctor`: one JSON object per check, each status cross-checked
//! against an independent look at the kernel (files read here directly,
//! and probe_check run by the test itself), the exit status, nothing left
//! behind, and a clean report without capabilities. Nothing here assumes
//! the host's kernel: the same tests hold in the VMs, where kprobes and
//! fentry work.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use kscope::probe_check::{ProbeCheck, ProbeKind};
use serde_json::Value;

const STATUSES: [&str; 3] = ["works", "degraded", "unavailable"];

/// Parses `kscope doctor --json` output: every line one object with
/// exactly `check`, `status`, `detail` and `fix`; returned by check name.
fn parse_report(stdout: &str) -> BTreeMap<String, Value> {
    let mut by_name = BTreeMap::new();
    for line in stdout.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["check", "status", "detail", "fix"]),
            "{line}"
        );
        let status = v["status"].as_str().expect("status is a string");
        assert!(STATUSES.contains(&status), "{line}");
        assert!(
            v["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{line}"
        );
        assert_eq!(
            v["fix"].is_null(),
            status == "works",
            "a fix exactly when something does not work: {line}"
        );
        let name = v["check"].as_str().expect("check is a string").to_owned();
        assert!(by_name.insert(name, v).is_none(), "duplicate check: {line}");
    }
    assert!(!by_name.is_empty(), "empty report");
    by_name
}

fn status<'a>(report: &'a BTreeMap<String, Value>, check: &str) -> &'a str {
    report
        .get(check)
        .unwrap_or_else(|| panic!("no {check:?} line in {report:#?}"))["status"]
        .as_str()
        .expect("status")
}

fn detail<'a>(report: &'a BTreeMap<String, Value>, check: &str) -> &'a str {
    report[check]["detail"].as_str().expect("detail")
}

/// BPF programs loaded now whose names are kscope's, by id.
fn kscope_programs() -> BTreeMap<u32, String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_owned()))
        .filter(|(_, n)| {
            ["fw_", "trace_", "profile_", "probe_check"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect()
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pins() -> Vec<String> {
    let root = kscope::firewall::pin_root();
    let mut v: Vec<String> = std::fs::read_dir(&root)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn mounted(fstype: &str, at: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .expect("read mounts")
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&at) && f.get(2) == Some(&fstype)
        })
}

/// Does probe_check itself attach `kind` here, for a thread of ours?
fn probe_attaches(kind: ProbeKind) -> bool {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    ProbeCheck::attach(kind, tid).is_ok()
}

#[test]
fn report_matches_the_kernel_and_leaves_nothing_behind() {
    require_root();
    let (progs_before, netns_before, pins_before) = (kscope_programs(), netns_list(), pins());

    let out = kscope(None, &["doctor", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.lines().any(|l| l.starts_with("error:")) && !stderr.contains("panicked"),
        "{stderr}"
    );
    let report = parse_report(&stdout);
    let all_work = report.values().all(|v| v["status"] == "works");
    assert_eq!(
        out.status.code(),
        Some(if all_work { 0 } else { 1 }),
        "exit status 0 iff everything works:\n{stdout}"
    );

    // Nothing left behind. kscope-named programs that other processes
    // load meanwhile come and go; one doctor left would stay.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: BTreeMap<_, _> = kscope_programs()
            .into_iter()
            .filter(|(id, _)| !progs_before.contains_key(id))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "programs left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(netns_list(), netns_before, "network namespaces changed");
    assert_eq!(pins(), pins_before, "pins under /sys/fs/bpf/kscope changed");

    // As root, every capability is held.
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"] {
        assert_eq!(status(&report, cap), "works", "{cap}");
    }

    // Files read here directly.
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    assert_eq!(status(&report, "btf") == "works", btf);
    assert_eq!(
        status(&report, "bpffs") == "works",
        mounted("bpf", "/sys/fs/bpf")
    );
    assert_eq!(
        status(&report, "tracefs") == "works",
        mounted("tracefs", "/sys/kernel/tracing")
    );
    for (check, file) in [
        (
            "kernel.unprivileged_bpf_disabled",
            "/proc/sys/kernel/unprivileged_bpf_disabled",
        ),
        (
            "kernel.perf_event_paranoid",
            "/proc/sys/kernel/perf_event_paranoid",
        ),
    ] {
        if let Ok(v) = std::fs::read_to_string(file) {
            let d = detail(&report, check);
            assert!(
                d.starts_with(&format!("{} ", v.trim()))
                    || d.starts_with(&format!("{};", v.trim())),
                "{check}: {d}"
            );
            assert_eq!(status(&report, check), "works", "root: {check}");
        }
    }
    match std::fs::read_to_string("/sys/kernel/security/lockdown") {
        Ok(l) if l.contains("[confidentiality]") => {
            assert_eq!(status(&report, "lockdown"), "unavailable")
        }
        _ => assert_eq!(status(&report, "lockdown"), "works"),
    }

    // Probe kinds: the kprobe files, BTF, and probe_check run here.
    let kprobe_files = [
        "/sys/bus/event_source/devices/kprobe",
        "/sys/kernel/tracing/kprobe_events",
        "/sys/kernel/debug/tracing/kprobe_events",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    let mut works = BTreeMap::new();
    for kind in [ProbeKind::Kprobe, ProbeKind::Kretprobe, ProbeKind::Fentry] {
        let line = format!("probe {}", kind.feature());
        let reported = status(&report, &line) == "works";
        assert_eq!(
            reported,
            probe_attaches(kind),
            "{line}: {}",
            detail(&report, &line)
        );
        works.insert(kind.feature(), reported);
    }
    if !kprobe_files {
        assert!(
            !works["kprobe"] && !works["kretprobe"],
            "no CONFIG_KPROBES here"
        );
    }
    if !btf {
        assert!(!works["fentry"], "fentry without BTF");
    }

    // trace connect uses the first probe kind that works.
    let connect = detail(&report, "trace connect");
    if works["kprobe"] {
        assert!(connect.starts_with("kprobe"), "{connect}");
        assert_eq!(status(&report, "trace connect"), "works");
    } else if works["fentry"] {
        assert!(connect.starts_with("fentry"), "{connect}");
        assert_eq!(status(&report, "trace connect"), "works");
    } else {
        assert_eq!(status(&report, "trace connect"), "degraded");
        assert!(
            connect.contains("tracepoint") && connect.contains("RET not available"),
            "{connect}"
        );
    }
    for line in [
        "trace open",
        "trace exec",
        "fw generic XDP (skb)",
        "fw native XDP (veth)",
        "profile perf event",
        "profile kernel stacks",
        "profile user stacks",
        "top stats",
        "daemon metrics",
        "daemon tracer counters",
        "daemon firewall",
    ] {
        status(&report, line);
    }
}

#[test]
fn without_capabilities_it_reports_what_is_missing() {
    require_root();
    let out = kscope_as_nobody(None, &["doctor", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        !stderr.lines().any(|l| l.starts_with("error:")) && !stderr.contains("panicked"),
        "{stderr}"
    );
    let report = parse_report(&stdout);
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"] {
        assert_eq!(status(&report, cap), "unavailable", "{cap}");
        assert!(detail(&report, cap).contains("missing"), "{cap}");
    }
    assert_ne!(status(&report, "CAP_SYS_ADMIN"), "works");
    for line in [
        "probe kprobe",
        "probe fentry",
        "trace open",
        "fw generic XDP (skb)",
    ] {
        assert_eq!(status(&report, line), "unavailable", "{line}");
        assert!(detail(&report, line).contains("CAP_BPF"), "{line}");
    }
}

#[test]
fn usage_errors_exit_2_and_help_shows_the_flag() {
    let out = kscope(None, &["doctor", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let help = kscope_ok(None, &["doctor", "--help"]);
    assert!(help.contains("--json"), "{help}");
}
