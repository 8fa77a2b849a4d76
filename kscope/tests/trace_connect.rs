//! `kscope trace connect` with each probe kind the kernel has: kprobe and
//! fentry in the VMs (required there), the tracepoint everywhere. Each test
//! connects to its own loopback listener and to a closed local port, and
//! checks every field of the two events.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use common::*;
use kscope_lab::netlab::Netns;

const READY: Duration = Duration::from_secs(60);

/// Starts the tracer for `probe`, or skips when the kernel lacks it.
fn start(probe: &str, extra: &[&str]) -> Option<Tracer> {
    let mut args = vec!["trace", "connect", "--json", "--probe", probe];
    args.extend_from_slice(extra);
    // A forced probe the kernel lacks fails fast with a one-line error that
    // names the feature; that is the skip signal here.
    let out = kscope(None, &[&args[..], &["-d", "0.01"]].concat());
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let feature = if probe == "kprobe" {
            "kprobe"
        } else {
            "fentry"
        };
        assert!(
            probe != "tracepoint"
                && err.contains("not available on this kernel")
                && err.contains(feature),
            "--probe {probe} failed for another reason:\n{err}"
        );
        skip(
            feature,
            err.lines()
                .find(|l| l.starts_with("error:"))
                .unwrap_or(&err),
        );
        return None;
    }
    Some(Tracer::start(&args, true, READY))
}

fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

/// A port nothing listens on: bound, then released.
fn closed_port(ip: IpAddr) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

fn connects_are_reported_exactly(probe: &str, ip: IpAddr) {
    require_root();
    let listener = TcpListener::bind((ip, 0)).expect("listen");
    let open = listener.local_addr().expect("addr").port();
    let closed = closed_port(ip);
    let ports = format!("{open},{closed}");
    let Some(tracer) = start(probe, &["-P", &ports]) else {
        return;
    };
    let me = std::process::id();
    let (client_port, tid) = std::thread::Builder::new()
        .name("kscope-connect".into())
        .spawn(move || {
            let s = TcpStream::connect((ip, open)).expect("connect to the listener");
            let port = s.local_addr().expect("local").port();
            let err = TcpStream::connect((ip, closed)).expect_err("closed port");
            assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
            (port, gettid())
        })
        .expect("spawn")
        .join()
        .expect("connector");
    std::thread::sleep(Duration::from_millis(300));
    let (status, out, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    let ev = events(&out);
    assert_eq!(ev.len(), 2, "one event per connect:\n{out}\n{err}");
    let family = if ip.is_ipv6() { "ipv6" } else { "ipv4" };
    for (e, dport) in ev.iter().zip([open, closed]) {
        assert_eq!(e["pid"].as_u64(), Some(u64::from(me)), "{e}");
        assert_eq!(e["tid"].as_u64(), Some(u64::from(tid)), "{e}");
        assert_eq!(e["comm"], "kscope-connect", "{e}");
        assert_eq!(e["family"], family, "{e}");
        assert_eq!(e["daddr"], ip.to_string(), "{e}");
        assert_eq!(e["saddr"], ip.to_string(), "{e}");
        assert_eq!(e["dport"].as_u64(), Some(u64::from(dport)), "{e}");
        assert!(e["sport"].as_u64().is_some_and(|p| p != 0), "{e}");
        assert_eq!(e["probe"], probe, "{e}");
        assert!(
            e["latency_ns"].as_u64().is_some_and(|l| l < 10_000_000_000),
            "{e}"
        );
        if probe == "tracepoint" {
            assert!(e["ret"].is_null(), "the tracepoint cannot see RET: {e}");
        } else {
            // tcp_v*_connect returns 0 once the SYN is queued; the refusal
            // comes later, to the syscall.
            assert_eq!(e["ret"], 0, "{e}");
        }
    }
    assert_eq!(
        ev[0]["sport"].as_u64(),
        Some(u64::from(client_port)),
        "{}",
        ev[0]
    );
    drop(listener);
}

#[test]
fn kprobe_reports_ipv4_connects() {
    connects_are_reported_exactly("kprobe", IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn kprobe_reports_ipv6_connects() {
    connects_are_reported_exactly("kprobe", IpAddr::V6(Ipv6Addr::LOCALHOST));
}

#[test]
fn fentry_reports_ipv4_connects() {
    connects_are_reported_exactly("fentry", IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn fentry_reports_ipv6_connects() {
    connects_are_reported_exactly("fentry", IpAddr::V6(Ipv6Addr::LOCALHOST));
}

#[test]
fn tracepoint_reports_ipv4_connects() {
    connects_are_reported_exactly("tracepoint", IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn tracepoint_reports_ipv6_connects() {
    connects_are_reported_exactly("tracepoint", IpAddr::V6(Ipv6Addr::LOCALHOST));
}

/// RET: in a namespace with no route at all, tcp_v4_connect fails with
/// ENETUNREACH before any packet exists, and the probes see that value.
/// The tracepoint, which never sees such a connect reach SYN_SENT, reports
/// it through connect(2)'s tracepoints. A UDP connect that fails the same
/// way is not a TCP connect and must not show.
fn unreachable_shows_ret(probe: &str) {
    require_root();
    let port = "9";
    let Some(tracer) = start(probe, &["-P", port, "-n", "kscope-noroute"]) else {
        return;
    };
    let ns = Netns::new(&format!("kscope-noroute-{}-{probe}", std::process::id())).expect("netns");
    let err = std::thread::Builder::new()
        .name("kscope-noroute".into())
        .spawn(move || {
            ns.run(|| {
                let to = SocketAddr::from(([192, 0, 2, 1], 9));
                let udp = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
                let udp_err = udp.connect(to).expect_err("no route for UDP either");
                assert_eq!(udp_err.raw_os_error(), Some(libc::ENETUNREACH));
                TcpStream::connect(to)
            })
            .expect("enter netns")
            .expect_err("no route")
        })
        .expect("spawn")
        .join()
        .expect("connector");
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH));
    std::thread::sleep(Duration::from_millis(300));
    let (status, out, stderr) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {stderr}");
    let ev = events(&out);
    assert_eq!(ev.len(), 1, "{out}");
    assert_eq!(ev[0]["ret"], -libc::ENETUNREACH);
    assert_eq!(ev[0]["errno_name"], "ENETUNREACH");
    assert_eq!(ev[0]["daddr"], "192.0.2.1");
    assert_eq!(ev[0]["dport"], 9);
    assert_eq!(ev[0]["probe"], probe);
    assert_eq!(ev[0]["comm"], "kscope-noroute");
}

#[test]
fn kprobe_sees_ret_of_a_failed_connect() {
    unreachable_shows_ret("kprobe");
}

#[test]
fn fentry_sees_ret_of_a_failed_connect() {
    unreachable_shows_ret("fentry");
}

#[test]
fn tracepoint_sees_ret_of_a_connect_that_fails_before_the_syn() {
    unreachable_shows_ret("tracepoint");
}

#[test]
fn count_mode_totals_per_destination() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let tracer = Tracer::start(
        &["trace", "connect", "-c", "--json", "-P", &port.to_string()],
        true,
        READY,
    );
    for _ in 0..3 {
        TcpStream::connect(("127.0.0.1", port)).expect("connect");
    }
    std::thread::sleep(Duration::from_millis(300));
    let (status, out, err) = tracer.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {err}");
    let rows = events(&out);
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["connects"], 3);
    assert_eq!(rows[0]["dport"].as_u64(), Some(u64::from(port)));
    assert_eq!(rows[0]["daddr"], "127.0.0.1");
    assert_eq!(rows[0]["pid"].as_u64(), Some(u64::from(std::process::id())));
}

#[test]
fn auto_reports_its_choice_and_forcing_a_missing_probe_names_it() {
    require_root();
    let tracer = Tracer::start(&["trace", "connect", "--json"], true, READY);
    let (status, _, err) = tracer.stop(libc::SIGINT);
    assert!(status.success(), "{status}: {err}");
    let chosen = [
        "kprobe/kretprobe",
        "fentry/fexit",
        "the sock:inet_sock_set_state",
    ]
    .into_iter()
    .find(|k| err.contains(&format!("with {k}")))
    .unwrap_or_else(|| panic!("no choice reported:\n{err}"));
    eprintln!("auto chose {chosen}");
    for (probe, feature) in [("kprobe", "kprobe"), ("fentry", "fentry")] {
        let out = kscope(None, &["trace", "connect", "--probe", probe, "-d", "0.01"]);
        if !out.status.success() {
            assert_fails(&out, 1, &[feature, "not available on this kernel"]);
        }
    }
}
