//! Integration tests of the XDP packet counter (`fw_xdp`) on the running
//! kernel: real programs, real veth pairs in private namespaces, real
//! packets. Needs root.

mod common;

use std::time::Duration;

use common::*;
use kscope::{demo::settle, firewall::pin_dir};
use kscope_lab::netlab::{Lab, Observer, Traffic};

/// Counters for one family from a `fw stats --json` object.
fn family(v: &serde_json::Value, f: &str) -> (u64, u64) {
    let c = &v["families"][f];
    (
        c["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no {f} packets in {v}")),
        c["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no {f} bytes in {v}")),
    )
}

fn attach(lab: &Lab, extra: &[&str]) {
    let mut args = vec!["fw", "attach", lab.iface_b.as_str()];
    args.extend_from_slice(extra);
    kscope_ok(Some(&lab.b), &args);
}

fn detach(lab: &Lab) {
    kscope_ok(None, &["fw", "detach", &lab.iface_b]);
}

/// The core claim: attach in one process, send exactly N IPv4 and M IPv6
/// packets from the peer, and a second process reads exactly N and M (plus
/// the IPv6 packets the kernel sends by itself, which an independent
/// AF_PACKET observer counts and the test accounts for explicitly).
#[test]
fn stats_from_a_second_process_count_exactly_the_packets_sent() {
    require_root();
    let lab = FwLab::new("count").expect("create lab");
    attach(&lab, &[]);
    let mut obs = Observer::open(&lab.b, &lab.iface_b).expect("open observer");
    lab.up().expect("bring lab up");
    let traffic = Traffic {
        udp4: 37,
        ping4: 11,
        udp6: 23,
        ping6: 7,
        payload: 100,
    };
    let sent = lab.send(&traffic).expect("send traffic");
    assert_eq!(sent.ipv4_packets, 48);
    assert_eq!(sent.ipv6_packets, 30);

    let read = || {
        let out = kscope_ok(None, &["fw", "stats", &lab.iface_b, "--json"]);
        let v = stats_json(&out);
        assert_eq!(v.len(), 1, "one line per interface: {out}");
        assert_eq!(v[0]["iface"], lab.iface_b.as_str());
        Ok(v[0].clone())
    };
    let (seen, v) = settle(&mut obs, Duration::from_secs(5), read, |seen, v| {
        family(v, "ipv6") == (seen.ipv6_packets, seen.ipv6_bytes)
            && family(v, "other") == (seen.other_packets, seen.other_bytes)
    })
    .expect("read counters");

    // Every generated packet arrived (the observer saw each one's marker).
    assert_eq!(seen.marked_ipv4, sent.ipv4_packets, "{seen:?}");
    assert_eq!(seen.marked_ipv6, sent.ipv6_packets, "{seen:?}");
    // Nothing else speaks IPv4 here (static neighbours, no ARP): exact.
    assert_eq!(
        family(&v, "ipv4"),
        (sent.ipv4_packets, sent.ipv4_bytes),
        "{v}"
    );
    // IPv6: ours plus what the kernel sent itself, counted independently.
    let extra6 = seen.unmarked_ipv6();
    let extra6_bytes = seen.ipv6_bytes - sent.ipv6_bytes;
    eprintln!(
        "accounted for: {extra6} IPv6 packets ({extra6_bytes} bytes) the kernel sent itself, {} other",
        seen.other_packets
    );
    assert_eq!(
        family(&v, "ipv6"),
        (sent.ipv6_packets + extra6, sent.ipv6_bytes + extra6_bytes),
        "{v}"
    );
    assert_eq!(
        family(&v, "other"),
        (seen.other_packets, seen.other_bytes),
        "{v}"
    );
    // A counter never changes a packet's fate: everything is XDP_PASS.
    for row in v["counters"].as_array().expect("counters array") {
        assert_eq!(row["action"], "pass", "{v}");
    }
    detach(&lab);
}

#[test]
fn per_cpu_stats_sum_to_the_totals() {
    require_root();
    let lab = FwLab::new("percpu").expect("create lab");
    attach(&lab, &[]);
    lab.up().expect("bring lab up");
    lab.send(&Traffic {
        udp4: 50,
        payload: 20,
        ..Default::default()
    })
    .expect("send traffic");
    let out = kscope_ok(None, &["fw", "stats", &lab.iface_b, "--json", "--per-cpu"]);
    let v = &stats_json(&out)[0];
    let cpus = v["per_cpu"].as_array().expect("per_cpu array");
    assert!(!cpus.is_empty());
    let mut sum = 0;
    for cpu in cpus {
        for row in cpu["counters"].as_array().expect("counters") {
            if row["family"] == "ipv4" {
                sum += row["packets"].as_u64().expect("packets");
            }
        }
    }
    assert_eq!(sum, family(v, "ipv4").0, "{v}");
    assert!(sum >= 50, "{v}");
    detach(&lab);
}

#[test]
fn attachment_outlives_the_process_and_status_matches_the_kernel() {
    require_root();
    let lab = FwLab::new("status").expect("create lab");
    attach(&lab, &["--mode", "skb"]);
    // The attaching process has exited; the kernel still runs the program.
    let (mode, prog_id) = xdp_on(&lab.b, &lab.iface_b).expect("XDP attached after kscope exited");
    assert_eq!(
        mode, 2,
        "--mode skb must attach in generic mode (XDP_ATTACHED_SKB)"
    );

    let out = kscope_ok(None, &["fw", "status", "--json"]);
    let mine: Vec<serde_json::Value> = stats_json(&out)
        .into_iter()
        .filter(|s| s["iface"] == lab.iface_b.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{out}");
    let s = &mine[0];
    assert_eq!(s["prog_id"].as_u64(), Some(prog_id), "{s}");
    assert_eq!(s["mode"], "skb");
    assert_eq!(s["attached"], true);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let at = s["attached_at_unix"].as_u64().expect("attached_at_unix");
    assert!(at <= now && now - at < 120, "attach time {at} vs now {now}");

    let table = kscope_ok(None, &["fw", "status"]);
    let line = table
        .lines()
        .find(|l| l.starts_with(&lab.iface_b))
        .unwrap_or_else(|| panic!("{} missing from:\n{table}", lab.iface_b));
    assert!(
        line.contains(&prog_id.to_string()) && line.contains("skb"),
        "{line}"
    );
    detach(&lab);
}

#[test]
fn auto_mode_uses_native_xdp_on_veth() {
    require_root();
    let lab = FwLab::new("native").expect("create lab");
    attach(&lab, &[]);
    let (mode, _) = xdp_on(&lab.b, &lab.iface_b).expect("attached");
    assert_eq!(mode, 1, "veth supports native XDP (XDP_ATTACHED_DRV)");
    detach(&lab);
}

#[test]
fn detach_leaves_no_program_attached_and_no_pins() {
    require_root();
    let lab = FwLab::new("detach").expect("create lab");
    attach(&lab, &[]);
    let (_, prog_id) = xdp_on(&lab.b, &lab.iface_b).expect("attached");
    assert!(pin_dir(&lab.iface_b).join("link").exists());
    detach(&lab);
    assert_eq!(
        xdp_on(&lab.b, &lab.iface_b),
        None,
        "XDP still attached after detach"
    );
    assert!(!pin_dir(&lab.iface_b).exists(), "pins remain after detach");
    assert!(
        wait_prog_gone(prog_id, Duration::from_secs(5)),
        "program {prog_id} still loaded after detach"
    );
    // Detaching again: nothing to detach.
    let out = kscope(None, &["fw", "detach", &lab.iface_b]);
    assert_fails(&out, 1, &["not attached", &lab.iface_b]);
}

#[test]
fn attaching_twice_fails_and_keeps_the_first_attachment() {
    require_root();
    let lab = FwLab::new("twice").expect("create lab");
    attach(&lab, &[]);
    let before = xdp_on(&lab.b, &lab.iface_b).expect("attached");
    let out = kscope(Some(&lab.b), &["fw", "attach", &lab.iface_b]);
    assert_fails(&out, 1, &["already attached", &lab.iface_b]);
    assert_eq!(
        xdp_on(&lab.b, &lab.iface_b),
        Some(before),
        "first attachment changed"
    );
    assert!(pin_dir(&lab.iface_b).join("link").exists());
    detach(&lab);
}

#[test]
fn attaching_to_a_missing_interface_fails_cleanly() {
    require_root();
    let lab = FwLab::new("noif").expect("create lab");
    // An interface that exists nowhere, looked up inside a private namespace.
    let out = kscope(Some(&lab.b), &["fw", "attach", "kscope-nosuch0"]);
    assert_fails(&out, 1, &["no network interface named", "kscope-nosuch0"]);
    assert!(!pin_dir("kscope-nosuch0").exists());
    let out = kscope(None, &["fw", "attach", "bad/name"]);
    assert_fails(&out, 1, &["invalid interface name"]);
}

#[test]
fn without_capabilities_attach_names_the_missing_ones_and_changes_nothing() {
    require_root();
    let lab = FwLab::new("nocap").expect("create lab");
    // Run as nobody, with every capability dropped.
    let out = kscope_as_nobody(Some(&lab.b), &["fw", "attach", &lab.iface_b]);
    let line = assert_fails(&out, 1, &["CAP_BPF", "CAP_NET_ADMIN"]);
    assert!(line.contains("lacks"), "{line}");
    assert_eq!(xdp_on(&lab.b, &lab.iface_b), None);
    assert!(!pin_dir(&lab.iface_b).exists());
}

#[test]
fn unmountable_bpffs_fails_cleanly() {
    require_root();
    let lab = FwLab::new("nobpffs").expect("create lab");
    // In a private mount namespace, hide /sys/fs behind a read-only tmpfs:
    // /sys/fs/bpf then neither is bpffs nor can become one.
    let script = format!(
        "mount -t tmpfs -o ro tmpfs /sys/fs && exec {} fw attach {}",
        kscope_bin().display(),
        lab.iface_b
    );
    let out = lab
        .b
        .command("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("NO_COLOR", "1")
        .output()
        .expect("run unshare");
    assert_fails(&out, 1, &["BPF filesystem is not mounted", "/sys/fs/bpf"]);
    assert_eq!(
        xdp_on(&lab.b, &lab.iface_b),
        None,
        "attached despite the error"
    );
    assert!(!pin_dir(&lab.iface_b).exists());
}

#[test]
fn watch_interval_must_be_positive() {
    for bad in ["0", "-1", "-0.5", "soon"] {
        let out = kscope(None, &["fw", "stats", "--watch", bad]);
        assert_fails(&out, 2, &["--watch"]);
    }
}

#[test]
fn watch_prints_rates_until_interrupted() {
    use std::io::BufRead as _;
    require_root();
    let lab = FwLab::new("watch").expect("create lab");
    attach(&lab, &[]);
    lab.up().expect("bring lab up");
    let mut child = kscope_cmd(
        None,
        &["fw", "stats", &lab.iface_b, "--watch", "0.2", "--json"],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .expect("spawn watch");
    let ipv4_packets = |l: &serde_json::Value| -> f64 {
        let secs = l["interval_secs"].as_f64().expect("interval");
        l["rates"]
            .as_array()
            .expect("rates")
            .iter()
            .filter(|r| r["family"] == "ipv4")
            .map(|r| r["packets_per_sec"].as_f64().expect("pps") * secs)
            .sum()
    };
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = || -> serde_json::Value {
        let line = lines
            .next()
            .expect("watch ended early")
            .expect("read watch");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"))
    };
    // The first interval's line proves the watch has read its starting
    // counters: only then is every packet sent inside the watch (a fixed
    // wait was too short under emulation on a loaded host).
    let mut seen = vec![next()];
    lab.send(&Traffic {
        udp4: 200,
        payload: 20,
        ..Default::default()
    })
    .expect("send traffic");
    // Read intervals until all packets are accounted for, then one more.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.iter().map(ipv4_packets).sum::<f64>() < 199.5 && std::time::Instant::now() < deadline
    {
        seen.push(next());
    }
    seen.push(next());
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().expect("wait for watch");
    assert!(
        status.success(),
        "Ctrl-C should end --watch cleanly: {status}"
    );
    assert!(
        seen.len() >= 3,
        "expected several intervals, got {}",
        seen.len()
    );
    // Rates times intervals add up to the packets sent (all within the watch).
    let total: f64 = seen.iter().map(ipv4_packets).sum();
    assert!(
        (total - 200.0).abs() < 0.5,
        "rates integrate to {total}, sent 200"
    );
    detach(&lab);
}

#[test]
fn version_and_help_on_every_verb() {
    let v = kscope_ok(None, &["--version"]);
    assert_eq!(v.trim(), format!("kscope {}", env!("CARGO_PKG_VERSION")));
    for verb in [
        &["--help"][..],
        &["fw", "--help"],
        &["fw", "attach", "--help"],
        &["fw", "detach", "--help"],
        &["fw", "stats", "--help"],
        &["fw", "status", "--help"],
        &["fw", "block", "--help"],
        &["fw", "unblock", "--help"],
        &["fw", "allow", "--help"],
        &["fw", "disallow", "--help"],
        &["fw", "rules", "--help"],
        &["fw", "load", "--help"],
        &["fw", "save", "--help"],
        &["demo", "--help"],
        &["doctor", "--help"],
    ] {
        let out = kscope_ok(None, verb);
        assert!(out.contains("Usage:"), "{verb:?}: {out}");
    }
}
