//! Integration tests of the firewall's rules on the running kernel: real
//! frames through a veth pair between private namespaces, rules changed by
//! separate `kscope` processes, verdicts checked with an independent
//! AF_PACKET observer and with kscope's own counters. Needs root.
//!
//! Sources are documentation addresses outside `b`'s subnets
//! (198.51.100.0/24, 203.0.113.0/24, 2001:db8:1::/48 ...), so `b` never
//! tries to resolve or answer them.

mod common;

use std::{
    collections::HashMap,
    io::Write as _,
    net::IpAddr,
    sync::{
        RwLock, RwLockReadGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use kscope_lab::{
    frame::L4,
    netlab::{Lab, Observer, lab_frame},
};

/// Tests here attach and detach in parallel threads. Each holds this
/// shared while it has anything attached; the one test that relies on which
/// interfaces are attached (all of them, machine-wide) holds it exclusive.
static ATTACHED: RwLock<()> = RwLock::new(());

/// A shared hold on [`ATTACHED`], for as long as a test has attachments.
fn attaching() -> RwLockReadGuard<'static, ()> {
    ATTACHED.read().unwrap_or_else(|p| p.into_inner())
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

struct Fw {
    lab: FwLab,
    obs: Observer,
    seq: u32,
    /// Dropped last: the lab (and its attachments) goes first.
    _attached: Option<RwLockReadGuard<'static, ()>>,
}

impl Fw {
    fn new(tag: &str, attach_args: &[&str]) -> Self {
        let held = attaching();
        let mut fw = Self::holding(tag, attach_args);
        fw._attached = Some(held);
        fw
    }

    /// For a test that already holds [`ATTACHED`] exclusive.
    fn holding(tag: &str, attach_args: &[&str]) -> Self {
        require_root();
        let lab = FwLab::new(tag).expect("create lab");
        let mut args = vec!["fw", "attach", lab.iface_b.as_str()];
        args.extend_from_slice(attach_args);
        kscope_ok(Some(&lab.b), &args);
        let obs = Observer::open(&lab.b, &lab.iface_b).expect("open observer");
        lab.up().expect("bring lab up");
        Self {
            lab,
            obs,
            seq: 0,
            _attached: None,
        }
    }

    /// `kscope fw VERB --iface IFACE ARGS...`.
    fn fw(&self, verb: &str, args: &[&str]) -> String {
        let mut a = vec!["fw", verb, "--iface", self.lab.iface_b.as_str()];
        a.extend_from_slice(args);
        kscope_ok(None, &a)
    }

    /// Sends `n` frames of `l4` from each source; returns the bytes of one
    /// frame per source.
    fn send(&mut self, sources: &[&str], l4: L4, n: u32) -> HashMap<IpAddr, u64> {
        let mut frames = Vec::new();
        let mut len = HashMap::new();
        for _ in 0..n {
            for s in sources {
                let f = lab_frame(ip(s), l4, self.seq);
                self.seq += 1;
                len.insert(ip(s), f.len() as u64);
                frames.push(f);
            }
        }
        self.lab.inject(&frames).expect("inject frames");
        len
    }

    /// Drains the observer until nothing more arrives; returns how many
    /// marked frames from each source arrived since the last call.
    fn delivered(&mut self) -> HashMap<IpAddr, u64> {
        let start = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(60));
            let n = self.obs.drain().expect("drain observer");
            if n == 0 || start.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        let mut out = HashMap::new();
        for (src, _) in self.obs.marks.drain(..) {
            *out.entry(src).or_default() += 1;
        }
        out
    }

    /// (packets, bytes) for a family and reason from `fw stats --json`.
    fn reason(&self, family: &str, reason: &str) -> (u64, u64) {
        let out = kscope_ok(None, &["fw", "stats", &self.lab.iface_b, "--json"]);
        let v = &stats_json(&out)[0];
        v["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["family"] == family && r["reason"] == reason)
            .map(|r| {
                (
                    r["packets"].as_u64().unwrap_or(0),
                    r["bytes"].as_u64().unwrap_or(0),
                )
            })
            .unwrap_or((0, 0))
    }

    /// This interface's line of `fw status --json`.
    fn status(&self) -> serde_json::Value {
        let status = kscope_ok(None, &["fw", "status", "--json"]);
        stats_json(&status)
            .into_iter()
            .find(|s| s["iface"] == self.lab.iface_b.as_str())
            .expect("fw status lists the interface")
    }

    /// Hit count of each rule, from `fw rules --json`.
    fn hits(&self) -> HashMap<String, u64> {
        self.fw("rules", &["--json"])
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
                (
                    v["rule"].as_str().expect("rule").to_owned(),
                    v["hits"].as_u64().expect("hits"),
                )
            })
            .collect()
    }

    fn detach(self) {
        kscope_ok(None, &["fw", "detach", &self.lab.iface_b]);
    }
}

fn got(d: &HashMap<IpAddr, u64>, s: &str) -> u64 {
    d.get(&ip(s)).copied().unwrap_or(0)
}

#[test]
fn blocking_exact_addresses_and_cidrs_stops_delivery_and_unblock_restores_it() {
    let mut fw = Fw::new("block", &[]);
    fw.fw(
        "block",
        &[
            "198.51.100.7",
            "203.0.113.0/24",
            "2001:db8:1::7",
            "2001:db8:2::/48",
        ],
    );
    let sources = [
        "198.51.100.7",     // blocked, exact
        "198.51.100.8",     // not blocked
        "203.0.113.99",     // blocked by the CIDR
        "2001:db8:1::7",    // blocked, exact
        "2001:db8:1::8",    // not blocked
        "2001:db8:2:ff::5", // blocked by the CIDR
    ];
    let n = 25;
    let len = fw.send(&sources, L4::Udp(9), n);
    let d = fw.delivered();
    for s in [
        "198.51.100.7",
        "203.0.113.99",
        "2001:db8:1::7",
        "2001:db8:2:ff::5",
    ] {
        assert_eq!(
            got(&d, s),
            0,
            "{s} is blocked but {} frames arrived",
            got(&d, s)
        );
    }
    for s in ["198.51.100.8", "2001:db8:1::8"] {
        assert_eq!(got(&d, s), u64::from(n), "{s} is not blocked");
    }
    // The counters show the drops by reason, frame for frame.
    let n = u64::from(n);
    assert_eq!(
        fw.reason("ipv4", "blocked-src"),
        (
            2 * n,
            n * (len[&ip("198.51.100.7")] + len[&ip("203.0.113.99")])
        )
    );
    assert_eq!(
        fw.reason("ipv6", "blocked-src"),
        (
            2 * n,
            n * (len[&ip("2001:db8:1::7")] + len[&ip("2001:db8:2:ff::5")])
        )
    );
    assert_eq!(fw.reason("ipv4", "passed-default").0, n);
    let hits = fw.hits();
    for rule in [
        "block 198.51.100.7/32",
        "block 203.0.113.0/24",
        "block 2001:db8:1::7/128",
        "block 2001:db8:2::/48",
    ] {
        assert_eq!(hits.get(rule), Some(&n), "{rule}: {hits:?}");
    }

    fw.fw(
        "unblock",
        &[
            "198.51.100.7",
            "203.0.113.0/24",
            "2001:db8:1::7",
            "2001:db8:2::/48",
        ],
    );
    assert_eq!(fw.fw("save", &[]), "", "unblock left rules behind");
    fw.send(&sources, L4::Udp(9), 10);
    let d = fw.delivered();
    for s in sources {
        assert_eq!(got(&d, s), 10, "{s} after unblock: {d:?}");
    }
    fw.detach();
}

#[test]
fn an_allow_rule_overrides_a_block_that_covers_it() {
    let mut fw = Fw::new("allow", &[]);
    fw.fw("block", &["198.51.100.0/24", "2001:db8:1::/48"]);
    fw.fw("allow", &["198.51.100.7", "2001:db8:1::7"]);
    fw.send(
        &[
            "198.51.100.7",
            "198.51.100.8",
            "2001:db8:1::7",
            "2001:db8:1::8",
        ],
        L4::Tcp(22),
        20,
    );
    let d = fw.delivered();
    assert_eq!(got(&d, "198.51.100.7"), 20, "{d:?}");
    assert_eq!(got(&d, "2001:db8:1::7"), 20, "{d:?}");
    assert_eq!(got(&d, "198.51.100.8"), 0, "{d:?}");
    assert_eq!(got(&d, "2001:db8:1::8"), 0, "{d:?}");
    assert_eq!(fw.reason("ipv4", "allowed").0, 20);
    assert_eq!(fw.reason("ipv6", "allowed").0, 20);
    assert_eq!(fw.reason("ipv6", "blocked-src").0, 20);
    // Removing the allow rule lets the block apply again.
    fw.fw("disallow", &["198.51.100.7"]);
    fw.send(&["198.51.100.7"], L4::Tcp(22), 5);
    assert_eq!(got(&fw.delivered(), "198.51.100.7"), 0);
    fw.detach();
}

#[test]
fn port_rules_drop_tcp_and_udp_to_that_port_only() {
    let mut fw = Fw::new("ports", &[]);
    fw.fw("block", &["--port", "5353/udp", "--port", "8000-8010/tcp"]);
    let cases = [
        (L4::Udp(5353), 0u64),
        (L4::Tcp(5353), 12),
        (L4::Tcp(8000), 0),
        (L4::Tcp(8005), 0),
        (L4::Tcp(8010), 0),
        (L4::Udp(8005), 12),
        (L4::Tcp(8011), 12),
        (L4::Tcp(7999), 12),
        (L4::Echo, 12),
    ];
    for (l4, want) in cases {
        fw.send(&["198.51.100.20", "2001:db8:5::20"], l4, 12);
        let d = fw.delivered();
        assert_eq!(got(&d, "198.51.100.20"), want, "IPv4 {l4:?}");
        assert_eq!(got(&d, "2001:db8:5::20"), want, "IPv6 {l4:?}");
    }
    // 4 blocked kinds x 12 frames x 2 families.
    let drops = fw.reason("ipv4", "blocked-dst-port").0 + fw.reason("ipv6", "blocked-dst-port").0;
    assert_eq!(drops, 4 * 12 * 2);
    let hits = fw.hits();
    assert_eq!(hits.get("block --port 5353/udp"), Some(&24), "{hits:?}");
    assert_eq!(
        hits.get("block --port 8000-8010/tcp"),
        Some(&72),
        "{hits:?}"
    );
    fw.fw("unblock", &["--port", "8000-8010/tcp"]);
    fw.send(&["198.51.100.20"], L4::Tcp(8005), 5);
    assert_eq!(got(&fw.delivered(), "198.51.100.20"), 5);
    fw.detach();
}

/// What a flood test sent: frames per source, and the measured window.
struct Flood {
    sent: HashMap<IpAddr, u64>,
    /// From the start of the first batch to the end of the last: no
    /// packet reached the limiter before the one or after the other.
    outer: Duration,
    /// From the end of the first batch to the start of the last, less
    /// every gap between batches longer than the burst lasts (`slack`):
    /// during such a gap the bucket fills up and stops growing, so only
    /// this much of the window is sure to have added tokens that a later
    /// batch spent.
    inner: Duration,
}

/// Sends `batches` batches of `l4` 50 ms apart; batch `i` carries
/// `per_batch(i, src)` frames from each source. Batches are far above the limits the
/// tests set, so each one spends every token the bucket has.
fn flood(
    fw: &mut Fw,
    l4: L4,
    sources: &[&str],
    batches: u32,
    slack: Duration,
    per_batch: impl Fn(u32, &str) -> u32,
) -> Flood {
    let mut sent: HashMap<IpAddr, u64> = HashMap::new();
    let mut spans = Vec::new();
    for b in 0..batches {
        let mut frames = Vec::new();
        for s in sources {
            for _ in 0..per_batch(b, s) {
                frames.push(lab_frame(ip(s), l4, fw.seq));
                fw.seq += 1;
                *sent.entry(ip(s)).or_default() += 1;
            }
        }
        let start = Instant::now();
        fw.lab.inject(&frames).expect("inject frames");
        spans.push((start, Instant::now()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (first, last) = (spans[0], spans[spans.len() - 1]);
    let lost: Duration = spans
        .windows(2)
        .map(|w| w[1].0.duration_since(w[0].0).saturating_sub(slack))
        .sum();
    Flood {
        sent,
        outer: last.1.duration_since(first.0),
        inner: last.0.duration_since(first.1).saturating_sub(lost),
    }
}

/// Checks that `passed` is `burst + pps × seconds` within 5%, for the
/// window `flood` measured.
fn assert_rate(what: &str, passed: u64, burst: u64, pps: u64, f: &Flood) {
    // Tokens come whole: a window of 0.6 s at 1 pps has added none for sure
    // and at most one.
    let lo = ((burst as f64 + (pps as f64 * f.inner.as_secs_f64()).floor()) * 0.95).floor();
    let hi = ((burst as f64 + (pps as f64 * f.outer.as_secs_f64()).ceil()) * 1.05).ceil();
    assert!(
        (lo..=hi).contains(&(passed as f64)),
        "{what}: {passed} passed, want burst {burst} + {pps} pps over {:?}..{:?} \
         within 5%: {lo:.0}..{hi:.0}",
        f.inner,
        f.outer
    );
}

#[test]
fn rate_limits_pass_the_burst_then_the_rate_per_source_and_per_prefix() {
    let mut fw = Fw::new("limit", &["--limit-table", "1024"]);
    let mine = fw.status();
    assert_eq!(mine["limit_table"], 1024, "{mine}");
    // (pps, burst) pairs; each flood offers 200 frames per 50 ms batch,
    // 4,000 pps, far above either rate.
    for (round, (pps, burst)) in [(100u64, 100u64), (40, 160)].into_iter().enumerate() {
        let (heavy, light, pair) = match round {
            0 => (
                "198.51.100.10",
                "198.51.100.11",
                ["2001:db8:7::1", "2001:db8:7::2"],
            ),
            _ => (
                "198.51.100.20",
                "198.51.100.21",
                ["2001:db8:8::1", "2001:db8:8::2"],
            ),
        };
        let (v4, v6) = if round == 0 {
            ("198.51.100.0/28", "2001:db8:7::/48")
        } else {
            ("198.51.100.16/28", "2001:db8:8::/48")
        };
        let (p, b) = (pps.to_string(), burst.to_string());
        fw.fw("limit", &[v4, "--pps", &p, "--burst", &b]);
        fw.fw(
            "limit",
            &[v6, "--pps", &p, "--burst", &b, "--per", "prefix"],
        );
        let dropped_before =
            fw.reason("ipv4", "rate-limited").0 + fw.reason("ipv6", "rate-limited").0;
        // The light source sends one frame a batch: 20 in all, under its
        // own burst, so it must lose nothing while its neighbour floods.
        // The IPv6 pair shares one bucket (--per prefix).
        let slack = Duration::from_secs_f64(burst as f64 / pps as f64);
        let f = flood(
            &mut fw,
            L4::Udp(9),
            &[heavy, light, pair[0], pair[1]],
            20,
            slack,
            |_, s| {
                if s == light { 1 } else { 100 }
            },
        );
        let d = fw.delivered();
        assert_eq!(got(&d, light), 20, "{light} stayed under its limit: {d:?}");
        assert_rate(heavy, got(&d, heavy), burst, pps, &f);
        let shared = got(&d, pair[0]) + got(&d, pair[1]);
        assert_rate("the IPv6 prefix", shared, burst, pps, &f);
        // Every frame that did not arrive was dropped as rate-limited.
        let sent: u64 = f.sent.values().sum();
        let arrived: u64 = d.values().sum();
        let dropped = fw.reason("ipv4", "rate-limited").0 + fw.reason("ipv6", "rate-limited").0
            - dropped_before;
        assert_eq!(dropped, sent - arrived, "sent {sent}, arrived {arrived}");
        let hits = fw.hits();
        let rule4 = format!("limit {v4} --pps {pps} --burst {burst} --per source");
        let rule6 = format!("limit {v6} --pps {pps} --burst {burst} --per prefix");
        assert_eq!(
            hits.get(&rule4).copied().unwrap_or(0) + hits.get(&rule6).copied().unwrap_or(0),
            dropped,
            "{hits:?}"
        );
    }
    // The rules round-trip through fw save and fw load.
    let saved = fw.fw("save", &[]);
    assert!(
        saved.contains("limit 198.51.100.0/28 --pps 100 --burst 100 --per source\n"),
        "{saved}"
    );
    assert!(
        saved.contains("limit 2001:db8:8::/48 --pps 40 --burst 160 --per prefix\n"),
        "{saved}"
    );
    let dir = tempdir("limit-save");
    let file = dir.join("rules");
    std::fs::write(&file, &saved).expect("write rules");
    fw.fw("load", &[file.to_str().expect("utf-8 path")]);
    assert_eq!(fw.fw("save", &[]), saved);
    // Unlimit takes the limit away: a flood passes whole.
    fw.fw("unlimit", &["198.51.100.0/28"]);
    fw.send(&["198.51.100.10"], L4::Udp(9), 300);
    assert_eq!(got(&fw.delivered(), "198.51.100.10"), 300);
    let _ = std::fs::remove_dir_all(dir);
    fw.detach();
}

#[test]
fn allow_and_block_come_before_a_limit() {
    let mut fw = Fw::new("limitorder", &[]);
    fw.fw("limit", &["198.51.100.0/24", "--pps", "1", "--burst", "1"]);
    fw.fw("allow", &["198.51.100.5"]);
    fw.fw("block", &["198.51.100.6"]);
    fw.send(
        &["198.51.100.5", "198.51.100.6", "198.51.100.7"],
        L4::Udp(9),
        40,
    );
    let d = fw.delivered();
    assert_eq!(got(&d, "198.51.100.5"), 40, "allowed: {d:?}");
    assert_eq!(got(&d, "198.51.100.6"), 0, "blocked: {d:?}");
    // One token, and at most a few more over the seconds this takes.
    let limited = got(&d, "198.51.100.7");
    assert!((1..=10).contains(&limited), "limited: {d:?}");
    assert_eq!(fw.reason("ipv4", "blocked-src").0, 40);
    assert_eq!(fw.reason("ipv4", "rate-limited").0, 40 - limited);
    fw.detach();
}

#[test]
fn a_syn_limit_caps_new_connections_and_leaves_an_established_one_alone() {
    use std::io::{Read as _, Write as _};
    let mut fw = Fw::new("limitsyn", &[]);
    let port = 7411;
    let listener = fw
        .lab
        .b
        .run(move || std::net::TcpListener::bind((kscope_lab::netlab::ADDR4_B, port)))
        .expect("enter b")
        .expect("listen in b");
    let client = fw
        .lab
        .a
        .run(move || std::net::TcpStream::connect((kscope_lab::netlab::ADDR4_B, port)))
        .expect("enter a")
        .expect("connect from a");
    let (mut server, _) = listener.accept().expect("accept");
    fw.fw(
        "limit",
        &["192.0.2.0/24", "--pps", "1", "--burst", "5", "--syn"],
    );
    // A SYN flood from the client's own address (`L4::Tcp` frames are
    // hand-built segments with SYN set, ACK clear) ...
    let f = flood(
        &mut fw,
        L4::Tcp(9),
        &["192.0.2.1"],
        10,
        Duration::from_secs(5),
        |_, _| 50,
    );
    // ... while the established connection moves 4 MiB.
    let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let sender = {
        let data = data.clone();
        let mut client = client;
        std::thread::spawn(move || {
            client.write_all(&data).expect("send");
            client
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
        })
    };
    let mut got_back = Vec::new();
    server.read_to_end(&mut got_back).expect("receive");
    sender.join().expect("sender");
    assert!(got_back == data, "the established connection lost data");
    let d = fw.delivered();
    let syns = got(&d, "192.0.2.1");
    assert_rate("SYNs", syns, 5, 1, &f);
    // Only SYNs were policed: the drops are exactly the SYNs that did not
    // arrive, none of the connection's segments (whose loss TCP would
    // otherwise have hidden by retransmitting).
    let sent = f.sent[&ip("192.0.2.1")];
    assert_eq!(fw.reason("ipv4", "rate-limited").0, sent - syns);
    fw.detach();
}

#[test]
fn fw_top_counts_ten_thousand_sources_exactly_and_ranks_them() {
    let mut fw = Fw::new("top", &["--track-sources", "16384"]);
    assert_eq!(fw.status()["track_sources"], 16384);
    fw.fw("block", &["2001:db8:5::/48"]);
    fw.fw("limit", &["2001:db8:6::/48", "--pps", "1", "--burst", "3"]);
    // 10,000 IPv6 sources send one frame each; eight of them send more,
    // 8 × 40 down to 1 × 40 frames, so the order of the top is known.
    let heavy: Vec<String> = (1..=8).map(|i| format!("2001:db8:4::{i:x}")).collect();
    let mut sent: HashMap<IpAddr, u64> = HashMap::new();
    let mut frames = Vec::new();
    for i in 0..10_000u32 {
        let src = ip(&format!("2001:db8:1:{:x}::{:x}", i / 1000, i % 1000 + 1));
        frames.push(lab_frame(src, L4::Udp(9), fw.seq));
        fw.seq += 1;
        sent.insert(src, 1);
    }
    for (i, h) in heavy.iter().enumerate() {
        for _ in 0..40 * (8 - i as u64) {
            frames.push(lab_frame(ip(h), L4::Udp(9), fw.seq));
            fw.seq += 1;
            *sent.entry(ip(h)).or_default() += 1;
        }
    }
    // A blocked source and a limited one show their verdicts and rules.
    for (src, n) in [("2001:db8:5::1", 30u64), ("2001:db8:6::1", 30)] {
        for _ in 0..n {
            frames.push(lab_frame(ip(src), L4::Udp(9), fw.seq));
            fw.seq += 1;
        }
        sent.insert(ip(src), n);
    }
    fw.lab.inject(&frames).expect("inject frames");
    fw.delivered();
    let out = fw.fw("top", &["-n", "20000", "--by", "packets", "--json"]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let mut seen: HashMap<IpAddr, u64> = HashMap::new();
    for r in &rows {
        seen.insert(
            ip(r["source"].as_str().expect("source")),
            r["packets"].as_u64().expect("packets"),
        );
    }
    // Every source sent, with exactly what it sent (the lab's own traffic
    // may add sources; none of ours may be missing or off by one).
    for (src, n) in &sent {
        assert_eq!(seen.get(src), Some(n), "{src}");
    }
    let order: Vec<&str> = rows[..8]
        .iter()
        .map(|r| r["source"].as_str().expect("source"))
        .collect();
    assert_eq!(order, heavy, "the heaviest first, in order");
    let row = |src: &str| {
        rows.iter()
            .find(|r| r["source"] == src)
            .unwrap_or_else(|| panic!("{src} missing"))
    };
    let b = row("2001:db8:5::1");
    assert_eq!(
        (b["dropped"].as_u64(), b["passed"].as_u64()),
        (Some(30), Some(0))
    );
    assert_eq!(b["rule"], "block 2001:db8:5::/48");
    let l = row("2001:db8:6::1");
    let limited = l["rate_limited"].as_u64().expect("rate_limited");
    assert!((20..=27).contains(&limited), "burst 3 of 30 at 1 pps: {l}");
    assert_eq!(l["dropped"].as_u64(), Some(limited));
    assert_eq!(
        l["rule"],
        "limit 2001:db8:6::/48 --pps 1 --burst 3 --per source"
    );
    assert_eq!(row(&heavy[0])["rule"], "-");
    fw.detach();
}

/// As a person would: `fw top --watch` in a shell under tmux shows the
/// sources, `s` changes the sort, `q` gives the shell back.
#[test]
fn fw_top_watch_on_a_terminal_is_a_live_screen_and_q_restores_the_shell() {
    if find_in_path("tmux").is_none() {
        skip(
            "tmux",
            "tmux is not installed (cargo xtask setup installs it)",
        );
        return;
    }
    let mut fw = Fw::new("fwtopscr", &["--track-sources", "1024"]);
    fw.send(&["198.51.100.30", "2001:db8:9::30"], L4::Udp(9), 20);
    fw.delivered();
    let t = TmuxSession::start("fwtop", 200, 30);
    let sock = t.0.clone();
    let cmd = format!(
        "{} fw top --iface {} --watch 0.3",
        kscope_bin().display(),
        fw.lab.iface_b
    );
    tmux(&sock, &["send-keys", "-t", "t", &cmd, "Enter"]);
    let screen = screen_until(&sock, "both sources", |s| {
        s.contains("sources, every") && s.contains("198.51.100.30") && s.contains("2001:db8:9::30")
    });
    assert!(screen.contains("sort: pps"), "{screen}");
    tmux(&sock, &["send-keys", "-t", "t", "s"]);
    screen_until(&sock, "sort: bps", |s| s.contains("sort: bps"));
    let screen = t.quit_to_shell();
    assert!(
        !screen.contains("sources, every"),
        "the alternate screen is still up:\n{screen}"
    );
    fw.detach();
}

#[test]
fn fw_top_without_source_tracking_says_how_to_turn_it_on() {
    let fw = Fw::new("notop", &[]);
    let out = kscope(None, &["fw", "top", "--iface", &fw.lab.iface_b]);
    assert_fails(&out, 1, &["does not count sources", "--track-sources"]);
    fw.detach();
}

#[test]
fn default_drop_passes_only_allow_listed_sources() {
    let mut fw = Fw::new("defdrop", &["--default", "drop"]);
    let mine = fw.status();
    assert_eq!(mine["default_policy"], "drop", "{mine}");
    fw.fw("allow", &["198.51.100.0/28", "2001:db8:1::7"]);
    let sources = [
        "198.51.100.7",
        "198.51.100.77",
        "2001:db8:1::7",
        "2001:db8:1::8",
    ];
    fw.send(&sources, L4::Udp(9), 15);
    let d = fw.delivered();
    assert_eq!(got(&d, "198.51.100.7"), 15, "{d:?}");
    assert_eq!(got(&d, "2001:db8:1::7"), 15, "{d:?}");
    assert_eq!(got(&d, "198.51.100.77"), 0, "{d:?}");
    assert_eq!(got(&d, "2001:db8:1::8"), 0, "{d:?}");
    assert_eq!(fw.reason("ipv4", "dropped-default").0, 15);
    // The lab's own IPv6 chatter (MLD reports) is not allow-listed either:
    // at least our 15 frames were dropped by default.
    assert!(fw.reason("ipv6", "dropped-default").0 >= 15);

    // Neighbor Discovery from the link still passes, as ARP does; a routed
    // copy (hop limit 64) does not.
    let nd_before = fw.reason("ipv6", "neighbor-discovery").0;
    let ns = |hops: u8, seq: u32| {
        use kscope_lab::{frame::*, netlab::*};
        let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&ADDR6_B.octets());
        icmp.extend_from_slice(MARKER);
        icmp.extend_from_slice(&seq.to_be_bytes());
        let mut f = eth(MAC_B_BYTES, MAC_A_BYTES, &[], ETH_P_IPV6);
        let mut h = ipv6(
            "2001:db8:1::8".parse().expect("ip"),
            ADDR6_B,
            PROTO_ICMPV6,
            icmp.len(),
        );
        h[7] = hops;
        f.extend(h);
        f.extend(icmp);
        f
    };
    fw.lab
        .inject(&[ns(255, 1_000_000), ns(255, 1_000_001), ns(64, 1_000_002)])
        .expect("inject");
    let d = fw.delivered();
    assert_eq!(got(&d, "2001:db8:1::8"), 2, "{d:?}");
    assert_eq!(fw.reason("ipv6", "neighbor-discovery").0 - nd_before, 2);
    fw.detach();
}

#[test]
fn bad_rule_input_fails_with_one_error_line_and_changes_nothing() {
    let _alone = ATTACHED.write().unwrap_or_else(|p| p.into_inner());
    let fw = Fw::holding("badin", &[]);
    let ifc = fw.lab.iface_b.clone();
    let dir = tempdir("badin");
    let good = dir.join("good.rules");
    std::fs::write(
        &good,
        "allow 2001:db8::/32\nblock 198.51.100.0/24\nblock --port 53/udp\n",
    )
    .expect("write rules");
    kscope_ok(
        None,
        &["fw", "load", "--iface", &ifc, good.to_str().expect("utf-8")],
    );
    let before = fw.fw("save", &[]);
    assert_eq!(
        before,
        "allow 2001:db8::/32\nblock 198.51.100.0/24\nblock --port 53/udp\n"
    );
    let bad_file = dir.join("bad.rules");
    std::fs::write(
        &bad_file,
        "# ok so far\nblock 203.0.113.0/24\nblock 10.0.0.0/33\n",
    )
    .expect("write rules");
    let bad_file = bad_file.to_str().expect("utf-8").to_owned();
    let missing = dir
        .join("missing.rules")
        .to_str()
        .expect("utf-8")
        .to_owned();

    // (arguments, exit status, what the error line must say)
    let cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        (
            vec!["block", "10.0.0.0/33"],
            2,
            vec!["10.0.0.0/33", "prefix length"],
        ),
        (
            vec!["block", "::1/129"],
            2,
            vec!["::1/129", "prefix length"],
        ),
        (
            vec!["block", "1.2.3"],
            2,
            vec!["1.2.3", "not an IPv4 or IPv6 address"],
        ),
        (
            vec!["block", "198.51.100.1/24"],
            2,
            vec!["host bits", "198.51.100.0/24"],
        ),
        // A good CIDR next to a bad one: nothing is applied.
        (
            vec!["block", "203.0.113.5", "2001:db8::1/129"],
            2,
            vec!["2001:db8::1/129"],
        ),
        (
            vec!["block", "--port", "65536"],
            2,
            vec!["65536", "0 to 65535"],
        ),
        (
            vec!["block", "--port", "53/sctp"],
            2,
            vec!["unknown protocol", "sctp"],
        ),
        (vec!["block", "--port", "90-80"], 2, vec!["90-80"]),
        (
            vec!["limit", "198.51.100.0/24", "--pps", "0"],
            2,
            vec!["--pps", "1..=100000000"],
        ),
        (
            vec!["limit", "198.51.100.0/24", "--pps", "10", "--burst", "0"],
            1,
            vec!["--burst", "1 to 36000"],
        ),
        (
            vec!["limit", "198.51.100.0/24", "--pps", "10", "--per", "host"],
            2,
            vec!["--per", "host"],
        ),
        (
            vec!["unlimit", "203.0.113.0/24"],
            1,
            vec!["no such rule", "limit 203.0.113.0/24"],
        ),
        // Removing one existing and one missing rule removes neither.
        (
            vec!["unblock", "198.51.100.0/24", "203.0.113.0/24"],
            1,
            vec!["no such rule", "203.0.113.0/24"],
        ),
        (vec!["disallow", "2001:db8:1::/48"], 1, vec!["no such rule"]),
        (
            vec!["unblock", "--port", "54/udp"],
            1,
            vec!["no such rule", "54/udp"],
        ),
        (
            vec!["load", &bad_file],
            1,
            vec![&bad_file, ":3:", "prefix length"],
        ),
        (
            vec!["load", &missing],
            1,
            vec!["cannot read rule file", &missing],
        ),
    ];
    for (args, code, needles) in &cases {
        let mut a = vec!["fw", args[0], "--iface", ifc.as_str()];
        a.extend_from_slice(&args[1..]);
        let out = kscope(None, &a);
        let line = assert_fails(&out, *code, needles);
        // kscope's own errors say each thing once (no repeated cause chain).
        if *code == 1 {
            for n in needles {
                assert_eq!(line.matches(n).count(), 1, "{n:?} repeated in: {line}");
            }
        }
        assert_eq!(
            fw.fw("save", &[]),
            before,
            "`kscope {a:?}` changed the rules"
        );
    }
    // The limiter's table size is checked before anything is loaded.
    for size in ["5", "16777217", "many"] {
        let out = kscope(
            Some(&fw.lab.b),
            &["fw", "attach", &ifc, "--limit-table", size],
        );
        assert_fails(&out, 2, &["--limit-table", size]);
    }
    // Rules for an interface kscope is not attached to.
    let out = kscope(
        None,
        &["fw", "block", "--iface", "kscope-nosuch0", "198.51.100.1"],
    );
    assert_fails(&out, 1, &["not attached", "kscope-nosuch0"]);
    let out = kscope(None, &["fw", "rules", "--iface", "kscope-nosuch0"]);
    assert_fails(&out, 1, &["not attached", "kscope-nosuch0"]);

    // Without --iface: fine with exactly one attachment, an error listing
    // them with several.
    let others: Vec<String> = kscope::firewall::attached_ifaces()
        .expect("list attachments")
        .into_iter()
        .filter(|i| *i != ifc)
        .collect();
    if others.is_empty() {
        let out = kscope_ok(None, &["fw", "save"]);
        assert_eq!(out, before);
    } else {
        eprintln!(
            "skipping: the omitted --iface success case (other kscope attachments exist: {others:?})"
        );
    }
    kscope_ok(Some(&fw.lab.a), &["fw", "attach", &fw.lab.iface_a]);
    let out = kscope(None, &["fw", "block", "198.51.100.1"]);
    let line = assert_fails(&out, 1, &["choose one with --iface", &ifc, &fw.lab.iface_a]);
    assert!(line.contains("interfaces ("), "{line}");
    kscope_ok(None, &["fw", "detach", &fw.lab.iface_a]);
    assert_eq!(fw.fw("save", &[]), before);
    let _ = std::fs::remove_dir_all(&dir);
    fw.detach();
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kscope-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// `fw load` swaps between two rule sets while frames flow. Set A blocks S1,
/// set B blocks S2 (each plus thousands of filler rules, so a swap takes
/// long enough to be caught in the act). Every S1/S2 frame's fate says
/// which set judged it: S1 dropped or S2 delivered means A, the opposite
/// means B. A control source S3 that no set blocks proves no frame was lost
/// on the way. Judged in send order, the sets may change at most once per
/// load; a mix (a half-loaded set: both blocked, or neither) shows up as
/// extra back-and-forth changes.
#[test]
fn fw_load_swaps_atomically_under_traffic() {
    /// At least this many frames, and frames until this many loads ran.
    const N_FRAMES: u32 = 30_000;
    const MIN_LOADS: u32 = 6;
    const CHUNK: u32 = 1_500;
    // Generic (skb) XDP: atomicity is a property of the rule maps, not of
    // the attach mode, and veth's native-XDP receive ring stalled under
    // emulation on 6.1 (the sender then blocked for good on a full socket
    // buffer after about 13,500 frames, while loads went on). Native mode
    // is what the other tests here run.
    let mut fw = Fw::new("atomic", &["--mode", "skb"]);
    let dir = tempdir("atomic");
    let (s1, s2, s3) = ("198.51.100.1", "198.51.100.2", "198.51.100.3");
    // The fillers are allow rules for sources never sent from: `fw load`
    // writes allow rules before block rules, so a loader that exposed a
    // half-built set would show one without the block for thousands of
    // inserts.
    let set = |blocked: &str, filler: u16| {
        let mut t = format!("block {blocked}\n");
        for i in 0..3000u16 {
            t.push_str(&format!("allow 2001:db8:{filler:x}:{:x}::/64\n", i));
        }
        t
    };
    let a = dir.join("a.rules");
    let b = dir.join("b.rules");
    std::fs::write(&a, set(s1, 0xa)).expect("write A");
    std::fs::write(&b, set(s2, 0xb)).expect("write B");
    let (a, b) = (
        a.to_str().expect("utf-8").to_owned(),
        b.to_str().expect("utf-8").to_owned(),
    );
    fw.fw("load", &[&a]);

    // Frames flow in chunks until at least MIN_LOADS swaps have happened
    // under them, however slow a load is (seconds under emulation).
    let frame = |i: u32| lab_frame(ip([s1, s2, s3][(i % 3) as usize]), L4::Udp(9), i);
    let done = AtomicBool::new(false);
    let enough = AtomicBool::new(false);
    let sent_all = AtomicBool::new(false);
    // The observer drains on its own thread, so its socket buffer never
    // overflows while a slow `fw load` runs.
    let (loads, marks, n_frames) = {
        let lab = &fw.lab;
        let obs = &mut fw.obs;
        let (done, enough, sent_all) = (&done, &enough, &sent_all);
        std::thread::scope(|sc| {
            let drainer = sc.spawn(move || {
                let mut marks = Vec::new();
                loop {
                    let last_round = sent_all.load(Ordering::SeqCst);
                    obs.drain().expect("drain");
                    marks.append(&mut obs.marks);
                    if last_round {
                        return marks;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            let h = sc.spawn(move || -> std::io::Result<u32> {
                let mut next = 0u32;
                while !enough.load(Ordering::SeqCst) || next < N_FRAMES {
                    let chunk: Vec<Vec<u8>> = (next..next + CHUNK).map(frame).collect();
                    lab.inject(&chunk)?;
                    next += CHUNK;
                    let _ = writeln!(std::io::stderr(), "atomic swap: {next} frames sent");
                }
                done.store(true, Ordering::SeqCst);
                Ok(next)
            });
            let mut loads = 0u32;
            while !done.load(Ordering::SeqCst) {
                let file = if loads.is_multiple_of(2) { &b } else { &a };
                let t = Instant::now();
                kscope_ok(None, &["fw", "load", "--iface", &lab.iface_b, file]);
                loads += 1;
                // Straight to stderr, past libtest's capture: under
                // emulation a load takes seconds, and the VM harness takes
                // a silent console for a hang.
                let _ = writeln!(
                    std::io::stderr(),
                    "atomic swap: load {loads} took {:.1?}",
                    t.elapsed()
                );
                if loads >= MIN_LOADS {
                    enough.store(true, Ordering::SeqCst);
                }
            }
            let n_frames = h.join().expect("sender thread").expect("inject");
            // Let the last frames arrive, then drain once more.
            std::thread::sleep(Duration::from_millis(300));
            sent_all.store(true, Ordering::SeqCst);
            (loads, drainer.join().expect("drainer"), n_frames)
        })
    };

    let arrived: std::collections::HashSet<u32> = marks.iter().map(|&(_, s)| s).collect();
    let lost: Vec<u32> = (0..n_frames)
        .filter(|i| i % 3 == 2 && !arrived.contains(i))
        .collect();
    assert!(
        lost.is_empty(),
        "control frames lost on the way, the test cannot judge: {lost:?}"
    );
    // 'A' or 'B' per S1/S2 frame, in send order.
    let labels: Vec<char> = (0..n_frames)
        .filter(|i| i % 3 != 2)
        .map(|i| {
            let delivered = arrived.contains(&i);
            match (i % 3 == 0, delivered) {
                (true, false) | (false, true) => 'A',
                _ => 'B',
            }
        })
        .collect();
    let changes = labels.windows(2).filter(|w| w[0] != w[1]).count();
    eprintln!("atomic swap: {loads} loads during {n_frames} frames, {changes} set changes seen");
    assert_eq!(labels[0], 'A', "the first frames were judged by set A");
    assert!(
        changes >= 2,
        "no swap happened while frames flowed ({loads} loads); the test proved nothing"
    );
    assert!(
        changes <= loads as usize,
        "{changes} set changes for {loads} loads: some frames were judged by a mix of the two sets"
    );
    let _ = std::fs::remove_dir_all(&dir);
    fw.detach();
}

/// Each family holds 1,048,576 source rules (loaded through the CLI); one
/// more, live or from a file, fails naming the limit and changes nothing.
#[test]
#[cfg_attr(
    feature = "vm-suite",
    ignore = "host only: a million rule inserts take minutes under emulation, and the limit is kscope's own"
)]
fn a_full_family_is_refused_naming_the_limit() {
    let fw = Fw::new("full", &[]);
    let limit = kscope_common::fw::MAX_RULES_PER_FAMILY;
    let dir = tempdir("full");
    let write = |name: &str, n: u32| {
        // Rules only: these private addresses never appear in any frame.
        let mut t = String::with_capacity(n as usize * 20);
        for i in 0..n {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            t.push_str(&format!("block {a}\n"));
        }
        let p = dir.join(name);
        std::fs::write(&p, t).expect("write rules");
        p.to_str().expect("utf-8").to_owned()
    };
    let over = write("over.rules", limit + 1);
    let out = kscope(None, &["fw", "load", "--iface", &fw.lab.iface_b, &over]);
    assert_fails(
        &out,
        1,
        &[&over, "too many IPv4 rules", &format!("limit is {limit}")],
    );
    assert_eq!(fw.fw("save", &[]), "");

    let full = write("full.rules", limit);
    fw.fw("load", &[&full]);
    let out = kscope(
        None,
        &["fw", "block", "--iface", &fw.lab.iface_b, "198.51.100.1"],
    );
    assert_fails(
        &out,
        1,
        &["full", &format!("limit is {limit}"), "nothing changed"],
    );
    // IPv6 has its own budget. (Listing a million rules takes seconds: LPM
    // tries have no batch lookup, so this test does not.)
    fw.fw("block", &["2001:db8:1::1"]);
    fw.fw("unblock", &["2001:db8:1::1", "10.0.0.0"]);
    fw.fw("block", &["198.51.100.1"]);
    let _ = std::fs::remove_dir_all(&dir);
    fw.detach();
}

/// UDP port of the stacked-VLAN tests' sockets.
const VLAN_PORT: u16 = 7_777;

/// A UDP datagram to `dst`:[`VLAN_PORT`] from `src` carrying `payload`,
/// behind `tags` priority tags (VLAN id 0; 802.1ad outermost, then
/// 802.1Q), checksums filled in so the kernel accepts it.
fn tagged_udp(src: IpAddr, dst: IpAddr, tags: usize, payload: &[u8]) -> Vec<u8> {
    use kscope_lab::{frame::*, netlab::*};
    let stack: Vec<(u16, u16)> = (0..tags)
        .map(|i| (if i == 0 { ETH_P_8021AD } else { ETH_P_8021Q }, 0))
        .collect();
    let mut dgram = udp(40_000, VLAN_PORT, payload.len());
    dgram.extend_from_slice(payload);
    let c = udp_checksum(src, dst, &dgram);
    dgram[6..8].copy_from_slice(&c.to_be_bytes());
    let (ethertype, l3) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (ETH_P_IP, ipv4(s, d, PROTO_UDP, &[], dgram.len())),
        (IpAddr::V6(s), IpAddr::V6(d)) => (ETH_P_IPV6, ipv6(s, d, PROTO_UDP, dgram.len())),
        _ => panic!("mixed families"),
    };
    let mut f = eth_tci(MAC_B_BYTES, MAC_A_BYTES, &stack, ethertype);
    f.extend(l3);
    f.extend(dgram);
    f
}

/// UDP sockets on `b`'s addresses, both families, port [`VLAN_PORT`].
fn vlan_sockets(lab: &Lab) -> [std::net::UdpSocket; 2] {
    use kscope_lab::netlab::{ADDR4_B, ADDR6_B};
    [IpAddr::V4(ADDR4_B), IpAddr::V6(ADDR6_B)].map(|a| {
        let s = lab
            .b
            .run(move || std::net::UdpSocket::bind((a, VLAN_PORT)))
            .expect("enter b")
            .expect("bind a UDP socket in b");
        // Only a guard against a hang: a datagram that is due arrives in
        // microseconds.
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        s
    })
}

/// Injects `frames`, then an end marker from `end_src` to `dst` behind
/// three tags, and returns the payloads `sock` received before the marker
/// (which was sent last over the same single-queue veth, so it arrives
/// last).
fn delivered(
    lab: &Lab,
    sock: &std::net::UdpSocket,
    mut frames: Vec<Vec<u8>>,
    end_src: IpAddr,
    dst: IpAddr,
) -> Vec<String> {
    frames.push(tagged_udp(end_src, dst, 3, b"end"));
    lab.inject(&frames).expect("inject");
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("the end marker never arrived ({e}); before it: {got:?}"));
        if &buf[..n] == b"end" {
            return got;
        }
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

/// Defect: a frame from a blocked source behind three VLAN tags (802.1ad,
/// 802.1Q, 802.1Q, all VLAN id 0) was counted `other`/`not-ip` and passed,
/// and Linux stripped the tags and delivered the datagram to a local
/// socket. Tag stacks up to the walk bound are filtered like untagged
/// frames; deeper ones are dropped (fail closed).
fn stacked_vlan_tags_never_carry_a_blocked_source_to_a_socket(default: &str) {
    use kscope_common::fw::MAX_VLAN_TAGS;
    use kscope_lab::netlab::{ADDR4_A, ADDR4_B, ADDR6_A, ADDR6_B};
    require_root();
    let _attached = attaching();
    let lab = FwLab::new("vlan").expect("create lab");
    lab.up().expect("bring lab up");
    let socks = vlan_sockets(&lab);
    // Sources on b's own subnets, so reverse-path filtering keeps out of
    // the way: a's address is blocked, ALLOWED passes.
    let blocked = [IpAddr::V4(ADDR4_A), IpAddr::V6(ADDR6_A)];
    let allowed = [ip("192.0.2.7"), ip("2001:db8::7")];
    let dst = [IpAddr::V4(ADDR4_B), IpAddr::V6(ADDR6_B)];
    let depths = [0, 1, 2, 3, MAX_VLAN_TAGS, MAX_VLAN_TAGS + 1];

    // Without kscope, the kernel delivers every one of these frames up to
    // the bound: the premise of the test. Past it, kernels differ (6.18
    // builds were seen both delivering and refusing 9 tags); where it
    // delivers them, the check below shows kscope stops them, and either
    // way the parse-error count shows kscope dropped them itself.
    for fam in 0..2 {
        let sent: Vec<String> = depths.iter().map(|n| format!("plain-{n}")).collect();
        let frames = sent
            .iter()
            .zip(depths)
            .map(|(p, n)| tagged_udp(blocked[fam], dst[fam], n, p.as_bytes()))
            .collect();
        let mut got = delivered(&lab, &socks[fam], frames, blocked[fam], dst[fam]);
        let past = format!("plain-{}", MAX_VLAN_TAGS + 1);
        if got.last() == Some(&past) {
            got.pop();
        } else {
            let _ = writeln!(
                std::io::stderr(),
                "note: this kernel itself does not deliver frames with {} VLAN tags",
                MAX_VLAN_TAGS + 1
            );
        }
        assert_eq!(
            got,
            sent[..sent.len() - 1],
            "without a firewall, Linux must deliver frames with 0-{MAX_VLAN_TAGS} VLAN tags"
        );
    }

    kscope_ok(
        Some(&lab.b),
        &["fw", "attach", &lab.iface_b, "--default", default],
    );
    let fw = |verb: &str, args: &[&str]| {
        let mut a = vec!["fw", verb, "--iface", lab.iface_b.as_str()];
        a.extend_from_slice(args);
        kscope_ok(None, &a);
    };
    fw("allow", &["192.0.2.7", "2001:db8::7"]);
    fw("block", &["0.0.0.0/0", "::/0"]);
    for fam in 0..2 {
        let mut frames = Vec::new();
        let mut want = Vec::new();
        for n in depths {
            let p = format!("blocked-{n}");
            frames.push(tagged_udp(blocked[fam], dst[fam], n, p.as_bytes()));
            // An allowed source passes at every depth the filter reads, and
            // is dropped past it like everyone else.
            let p = format!("allowed-{n}");
            frames.push(tagged_udp(allowed[fam], dst[fam], n, p.as_bytes()));
            if n <= MAX_VLAN_TAGS {
                want.push(p);
            }
        }
        assert_eq!(
            delivered(&lab, &socks[fam], frames, allowed[fam], dst[fam]),
            want,
            "--default {default}, family {fam}: only allowed sources within {MAX_VLAN_TAGS} tags may arrive"
        );
    }

    // kscope's own account: the blocked frames it read, and the deep ones
    // it refused to guess about.
    let out = kscope_ok(None, &["fw", "stats", &lab.iface_b, "--json"]);
    let v = &stats_json(&out)[0];
    let count = |family: &str, reason: &str| {
        v["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["family"] == family && r["reason"] == reason)
            .map_or(0, |r| r["packets"].as_u64().unwrap_or(0))
    };
    let within = (depths.len() - 1) as u64;
    assert_eq!(count("ipv4", "blocked-src"), within, "{v}");
    // The lab's own IPv6 chatter is blocked too: at least ours.
    assert!(count("ipv6", "blocked-src") >= within, "{v}");
    // Per family: the blocked and the allowed frame past the bound.
    assert_eq!(count("other", "parse-error"), 4, "{v}");
    kscope_ok(None, &["fw", "detach", &lab.iface_b]);
}

#[test]
fn stacked_vlan_tags_never_carry_a_blocked_source_to_a_socket_under_default_drop() {
    stacked_vlan_tags_never_carry_a_blocked_source_to_a_socket("drop");
}

#[test]
fn stacked_vlan_tags_never_carry_a_blocked_source_to_a_socket_under_default_pass() {
    stacked_vlan_tags_never_carry_a_blocked_source_to_a_socket("pass");
}
