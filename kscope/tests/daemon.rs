//! `kscope daemon` end to end: a real Prometheus scraping it, config reloads
//! on live traffic, and a bounded soak. The daemon runs inside the lab's
//! receiving namespace (where its interface is), so its metrics listener
//! and Prometheus are on that namespace's loopback.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use common::{FwLab, Tracer, find_in_path, kscope_ok, require_root, skip};
use kscope_lab::netlab::{ADDR4_A, Lab, Netns, Traffic, UDP_PORT};

const METRICS: &str = "127.0.0.1:9435";
const READY: &str = "kscope daemon ready";

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("kscope-daemon-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create scratch dir");
        Scratch(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        self.write_bytes(name, text.as_bytes())
    }

    fn write_bytes(&self, name: &str, text: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        // Write then rename, as an operator's editor would: the daemon never
        // reads a half-written file.
        let tmp = self.0.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).expect("write scratch file");
        fs::rename(&tmp, &p).expect("rename scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop (Prometheus).
/// Where the tests' Prometheus listens, in the lab's `b` namespace.
const PROM_ADDR: &str = "127.0.0.1:9090";

/// A real Prometheus in the lab's `b` namespace, scraping the daemon every
/// second; killed when dropped.
struct Prometheus {
    _child: Killed,
    log: std::path::PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` with its config, data and log under `dir` and
    /// waits (at most 120 s) until it answers `/-/ready`.
    fn start(lab: &FwLab, dir: &Scratch, prometheus: &std::path::Path) -> Prometheus {
        let prom_cfg = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: kscope\n    static_configs:\n      - targets: ['{METRICS}']\n"
            ),
        );
        let log = dir.0.join("prometheus.log");
        let out = fs::File::create(&log).expect("log file");
        let child = Killed(
            lab.b
                .command(prometheus)
                .arg(format!("--config.file={}", prom_cfg.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.0.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={PROM_ADDR}"))
                .stdout(Stdio::null())
                .stderr(out)
                .spawn()
                .expect("start prometheus"),
        );
        let p = Prometheus { _child: child, log };
        let start = Instant::now();
        while !matches!(http_get(&lab.b, PROM_ADDR, "/-/ready"), Ok((200, _))) {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "prometheus not ready:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// What Prometheus has logged so far.
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lo_up(ns: &Netns) {
    let st = Command::new("ip")
        .args(["-n", ns.name(), "link", "set", "lo", "up"])
        .status()
        .expect("run ip");
    assert!(st.success(), "bringing lo up in {}", ns.name());
}

/// `GET path` from `addr` inside `ns`: (status, body).
fn http_get(ns: &Netns, addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http(ns, addr, "GET", path, "").map(|(status, _, body)| (status, body))
}

/// What Prometheus sends as Accept.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `METHOD path` with extra header lines (each ending in CRLF) from `addr`
/// inside `ns`: (status, head in lower case, body).
fn http(
    ns: &Netns,
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
) -> std::io::Result<(u16, String, String)> {
    parse_response(&http_raw(ns, addr, method, path, headers)?)
}

/// The whole response to `METHOD path`, as bytes.
fn http_raw(
    ns: &Netns,
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
) -> std::io::Result<Vec<u8>> {
    ns.run(|| {
        let mut s = TcpStream::connect(addr)?;
        // Generous: a /profile under emulation symbolizes slowly. This
        // only keeps a broken daemon from hanging the test.
        s.set_read_timeout(Some(Duration::from_secs(240)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Ok(raw)
    })?
}

/// (status, head in lower case, body) of one HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> std::io::Result<(u16, String, String)> {
    {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
        // hyper answers with a fixed length or chunks; undo chunking.
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok((status, head.to_ascii_lowercase(), body))
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// One sample line of the OpenMetrics text: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the sample lines of an OpenMetrics exposition.
fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = value.parse().expect("sample value is a number");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.strip_suffix('}').expect("labels end"))),
            None => (series, BTreeMap::new()),
        };
        out.push((name.to_owned(), labels, value));
    }
    out
}

fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    while let Some((k, rest)) = s.split_once("=\"") {
        let mut v = String::new();
        let mut chars = rest.char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        v.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => v.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').to_owned(), v);
        s = &rest[end..];
    }
    out
}

/// Sum of the samples named `name` whose labels include all of `want`.
fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> u64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
        })
        .map(|(_, _, v)| *v as u64)
        .sum()
}

/// Scrapes as Prometheus does (asking for OpenMetrics).
fn scrape(ns: &Netns) -> Vec<Sample> {
    let accept = format!("Accept: {PROMETHEUS_ACCEPT}\r\n");
    let (status, _, body) = http(ns, METRICS, "GET", "/metrics", &accept).expect("GET /metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    assert!(body.ends_with("# EOF\n"), "truncated exposition: {body}");
    samples(&body)
}

fn config(iface: &str, extra: &str) -> String {
    format!(
        "[metrics]\nlisten = \"{METRICS}\"\n\n[[firewall.interface]]\nname = \"{iface}\"\nrules = \"b.rules\"\n{extra}"
    )
}

/// A lab with both sides up and loopback up on `b` (where the daemon and
/// its listener run), and a scratch directory for its files.
fn lab_and_dir(tag: &str) -> (FwLab, Scratch) {
    let lab = FwLab::new(tag).expect("create lab");
    lab.up().expect("bring lab up");
    lo_up(&lab.b);
    (lab, Scratch::new(tag))
}

/// Asks the daemon `pid` to reload its config.
/// Waits until the daemon reports `n` successful reloads (scrapes
/// outside the soak's count).
fn wait_reloads(ns: &Netns, n: u64) {
    let start = Instant::now();
    loop {
        let done = sum(
            &scrape(ns),
            "kscope_daemon_reloads_total",
            &[("result", "success")],
        );
        if done >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{done} of {n} reloads done after a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hup(pid: u32) {
    // SAFETY: kill(2) on a child of this test, by pid; no memory involved.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
}

/// A lab and a daemon on its `b` side, with `rules` and a config of
/// [`config`] plus `extra`.
fn lab_with_daemon(tag: &str, rules: &str, extra: &str) -> (FwLab, Scratch, Tracer) {
    let (lab, dir) = lab_and_dir(tag);
    dir.write("b.rules", rules);
    let cfg = dir.write("kscope.toml", &config(&lab.iface_b, extra));
    let daemon = start_daemon(&lab, &cfg);
    (lab, dir, daemon)
}

fn start_daemon(lab: &Lab, cfg: &Path) -> Tracer {
    let cfg = cfg.to_str().expect("utf-8 path");
    Tracer::start_until(
        Some(&lab.b),
        &["daemon", "--config", cfg],
        &[],
        false,
        Duration::from_secs(120),
        READY,
    )
}

/// Percent-encodes a PromQL query for a URL.
fn urlencode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant PromQL query with one result, if it has one.
fn prom_query(ns: &Netns, addr: &str, q: &str) -> Option<f64> {
    let (status, body) =
        http_get(ns, addr, &format!("/api/v1/query?query={}", urlencode(q))).ok()?;
    assert_eq!(status, 200, "query {q}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
    assert_eq!(v["status"], "success", "{body}");
    let result = v["data"]["result"].as_array()?;
    assert!(result.len() <= 1, "{q} has several series: {body}");
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// The daemon serves Prometheus: a real Prometheus server scrapes it on
/// loopback, and its query API reports exactly the packets sent, per
/// verdict and reason, and the rule's hits.
#[test]
fn prometheus_scrapes_exactly_the_packets_sent() {
    require_root();
    let Some(prometheus) = find_in_path("prometheus") else {
        skip(
            "prometheus",
            "no prometheus binary in PATH (`cargo xtask setup` installs Debian's on the host)",
        );
        return;
    };
    let (lab, dir) = lab_and_dir("prom");
    dir.write("b.rules", &format!("block --port {UDP_PORT}/udp\n"));
    let cfg = dir.write("kscope.toml", &config(&lab.iface_b, ""));
    let daemon = start_daemon(&lab, &cfg);

    let prom = Prometheus::start(&lab, &dir, &prometheus);
    let (prom_addr, prom_log) = (PROM_ADDR, || prom.log());

    let (udp, ping) = (37, 11);
    let sent = lab
        .send(&Traffic {
            udp4: udp,
            ping4: ping,
            udp6: 0,
            ping6: 0,
            payload: 64,
        })
        .expect("send traffic");
    let b = &lab.iface_b;
    let want = [
        (
            format!(
                "sum(kscope_fw_packets_total{{iface=\"{b}\",family=\"ipv4\",action=\"drop\",reason=\"blocked-dst-port\"}})"
            ),
            udp as f64,
        ),
        (
            format!(
                "sum(kscope_fw_packets_total{{iface=\"{b}\",family=\"ipv4\",action=\"pass\",reason=\"passed-default\"}})"
            ),
            ping as f64,
        ),
        (
            format!("sum(kscope_fw_packets_total{{iface=\"{b}\",family=\"ipv4\"}})"),
            sent.ipv4_packets as f64,
        ),
        (
            format!("sum(kscope_fw_bytes_total{{iface=\"{b}\",family=\"ipv4\"}})"),
            sent.ipv4_bytes as f64,
        ),
        (
            format!(
                "kscope_fw_rule_hits_total{{iface=\"{b}\",rule=\"block --port {UDP_PORT}/udp\"}}"
            ),
            udp as f64,
        ),
        ("up{job=\"kscope\"}".to_owned(), 1.0),
    ];
    let start = Instant::now();
    loop {
        let got: Vec<Option<f64>> = want
            .iter()
            .map(|(q, _)| prom_query(&lab.b, prom_addr, q))
            .collect();
        if want.iter().zip(&got).all(|((_, w), g)| *g == Some(*w)) {
            break;
        }
        // Counters only grow, so a value above the traffic sent is final.
        for ((q, w), g) in want.iter().zip(&got) {
            assert!(
                g.is_none_or(|g| g <= *w),
                "{q} = {g:?}, more than the {w} sent"
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Prometheus never reported the traffic sent; want {want:?}, got {got:?}\nprometheus log:\n{}",
            prom_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // BPF stats are on while the daemon runs: the fw_xdp program's run
    // count covers at least every IPv4 packet sent (the kernel's own IPv6
    // packets add to it).
    assert!(
        holds_bpf_stats(daemon.child.id()),
        "no BPF_ENABLE_STATS fd held"
    );
    let (prog, _) = prog_and_link(b);
    let runs = prom_query(
        &lab.b,
        prom_addr,
        &format!("kscope_bpf_program_run_count_total{{id=\"{prog}\"}}"),
    );
    assert!(
        runs.is_some_and(|r| r >= sent.ipv4_packets as f64),
        "fw_xdp ran {runs:?} times for {} packets",
        sent.ipv4_packets
    );
    // The same collector as `kscope top`: the pinned fw_xdp has no
    // holder (comm=""), and its maps' memory is reported.
    let bytes = prom_query(
        &lab.b,
        prom_addr,
        &format!("kscope_bpf_program_map_bytes{{id=\"{prog}\",comm=\"\"}}"),
    );
    assert!(
        bytes.is_some_and(|b| b > 0.0),
        "fw_xdp's map memory: {bytes:?}"
    );
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    // SIGTERM leaves the firewall attached by default.
    let st = kscope_ok(None, &["fw", "status", "--json"]);
    assert!(st.contains(&format!("\"iface\":\"{b}\"")), "{st}");
    kscope_ok(None, &["fw", "detach", b]);
}

/// Whether `pid` holds a BPF_ENABLE_STATS descriptor (an anonymous inode
/// named bpf-stats or bpf_stats, depending on the kernel).
fn holds_bpf_stats(pid: u32) -> bool {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .any(|l| {
            let l = l.to_string_lossy();
            l.contains("bpf-stats") || l.contains("bpf_stats")
        })
}

/// Counters of the lab's IPv4 traffic by reason, from the daemon.
fn by_reason(s: &[Sample], iface: &str, reason: &str) -> u64 {
    sum(
        s,
        "kscope_fw_packets_total",
        &[("iface", iface), ("family", "ipv4"), ("reason", reason)],
    )
}

fn prog_and_link(iface: &str) -> (u64, u64) {
    let out = kscope_ok(None, &["fw", "status", "--json"]);
    let rows = common::stats_json(&out);
    let row = rows
        .iter()
        .find(|r| r["iface"] == iface)
        .unwrap_or_else(|| panic!("{iface} not in {out}"));
    (
        row["prog_id"].as_u64().expect("prog_id"),
        row["link_id"].as_u64().expect("link_id"),
    )
}

/// Sends `burst` from the lab's `a` side every 5 ms until `stop` is set,
/// counting every IPv4 packet sent.
fn sender(lab: &Lab, burst: &Traffic, stop: &AtomicBool, sent: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        let s = lab.send(burst).expect("send traffic");
        sent.fetch_add(s.ipv4_packets, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the sender has sent `n` more packets than `from`.
fn wait_sent(sent: &AtomicU64, from: u64, n: u64) {
    let start = Instant::now();
    while sent.load(Ordering::Relaxed) < from + n {
        assert!(start.elapsed() < Duration::from_secs(60), "sender stalled");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Counts over a window of live traffic: (passed-default, blocked-src).
fn window(lab: &Lab, sent: &AtomicU64) -> (u64, u64) {
    let b = &lab.iface_b;
    let s1 = scrape(&lab.b);
    wait_sent(sent, sent.load(Ordering::Relaxed), 40);
    // Let the last packets through the receive path before reading.
    std::thread::sleep(Duration::from_millis(100));
    let s2 = scrape(&lab.b);
    (
        by_reason(&s2, b, "passed-default") - by_reason(&s1, b, "passed-default"),
        by_reason(&s2, b, "blocked-src") - by_reason(&s1, b, "blocked-src"),
    )
}

/// SIGHUP with a changed rule file changes what live traffic meets, without
/// detaching; SIGHUP with a broken config (bad TOML, a bad rule, a missing
/// interface) changes nothing, and the daemon says why.
#[test]
fn sighup_reloads_rules_on_live_traffic_and_a_broken_config_changes_nothing() {
    require_root();
    let (lab, dir) = lab_and_dir("hup");
    let b = lab.iface_b.clone();
    dir.write("b.rules", "# nothing blocked yet\n");
    let cfg = dir.write("kscope.toml", &config(&b, ""));
    let mut daemon = start_daemon(&lab, &cfg);
    let pid = daemon.child.id();
    let ids = prog_and_link(&b);

    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let udp = Traffic {
        udp4: 4,
        ping4: 0,
        udp6: 0,
        ping6: 0,
        payload: 32,
    };
    std::thread::scope(|s| {
        s.spawn(|| sender(&lab, &udp, &stop, &sent));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let (passed, blocked) = window(&lab, &sent);
            assert!(
                passed >= 40 && blocked == 0,
                "before: passed {passed}, blocked {blocked}"
            );

            dir.write("b.rules", &format!("block {ADDR4_A}\n"));
            hup(pid);
            daemon
                .wait_line("reloaded", Duration::from_secs(60))
                .expect("reload logged");
            let (passed, blocked) = window(&lab, &sent);
            assert_eq!(passed, 0, "traffic passed after the block was loaded");
            assert!(blocked >= 40, "blocked only {blocked}");
            assert_eq!(prog_and_link(&b), ids, "the reload detached or re-attached");

            // (what, config, rules, a word the logged reason must have)
            let block_a = format!("block {ADDR4_A}\n");
            let broken = [
                (
                    "bad TOML",
                    "[metrics\n".to_owned(),
                    block_a.clone(),
                    "kscope.toml",
                ),
                (
                    "a bad rule",
                    config(&b, ""),
                    "block 10.0.0.0/33\n".to_owned(),
                    "interface",
                ),
                (
                    "a missing interface",
                    config("ksnosuch0", ""),
                    "# would let everything pass\n".to_owned(),
                    "ksnosuch0",
                ),
            ];
            for (n, (what, cfg_text, rules_text, needle)) in broken.iter().enumerate() {
                dir.write("b.rules", rules_text);
                dir.write("kscope.toml", cfg_text);
                hup(pid);
                let line = daemon
                    .wait_line("reload failed", Duration::from_secs(60))
                    .unwrap_or_else(|| panic!("{what}: no reload failure logged"));
                assert!(line.contains(needle), "{what}: {line}");
                let s = scrape(&lab.b);
                assert_eq!(
                    sum(&s, "kscope_daemon_reloads_total", &[("result", "failure")]),
                    n as u64 + 1,
                    "{what}"
                );
                assert_eq!(
                    sum(&s, "kscope_daemon_config_last_reload_successful", &[]),
                    0
                );
                let (passed, blocked) = window(&lab, &sent);
                assert_eq!(passed, 0, "{what}: the broken config let traffic through");
                assert!(blocked >= 40, "{what}: blocked only {blocked}");
                assert_eq!(prog_and_link(&b), ids, "{what}: detached");
            }
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });

    // Every packet sent was counted, across all the reloads.
    let total = sent.load(Ordering::Relaxed);
    let start = Instant::now();
    loop {
        let s = scrape(&lab.b);
        let counted = sum(
            &s,
            "kscope_fw_packets_total",
            &[("iface", &b), ("family", "ipv4")],
        );
        if counted == total {
            break;
        }
        assert!(counted < total, "counted {counted} of {total} sent");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "counted {counted} of {total} sent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    kscope_ok(None, &["fw", "detach", &b]);
}

/// Anonymous resident memory (RssAnon) of `pid`: the heap, stacks and
/// other private memory. File-backed pages (the binary's code, touched bit
/// by bit as new paths run) are left out: they are shared, reclaimable, and
/// not what a leak grows.
fn rss_anon_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("RssAnon in status")
}

/// How many scrapes the soak makes: 240 (about a minute at one scrape
/// every 250 ms on an idle machine), or `KSCOPE_SOAK_SCRAPES`. The soak's
/// phases are counted in scrapes, not seconds, so a slow or busy machine
/// makes it longer, never thinner: the first fifth is warm-up, every later
/// scrape is followed by one RSS sample, and the rules churn every eighth.
fn soak_scrapes() -> u64 {
    std::env::var("KSCOPE_SOAK_SCRAPES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 20)
        .unwrap_or(240)
}

/// Rules change (a reload and a live edit) once every this many scrapes.
const SOAK_CHURN_EVERY: u64 = 8;

/// The most the peak of the daemon's anonymous resident memory may grow
/// from the first to the second half of the soak (after a warm-up of a
/// fifth of it). What the daemon holds is bounded (counters, at most
/// `max_series` label sets per tracer) and each half sees the same work, so
/// the peaks must match; 2 MiB allows for allocator noise and no more.
const SOAK_RSS_GROWTH_KIB: u64 = 2048;

/// [`soak_scrapes`] scrapes (about a minute) of mixed traffic, rule churn
/// (reloads and live edits from a second kscope), execs and connects: resident
/// memory stays within [`SOAK_RSS_GROWTH_KIB`] after warm-up, every scrape
/// succeeds, no counter ever goes backwards or disappears, and the final
/// counts equal what was generated.
#[test]
fn soak_with_traffic_and_rule_churn_keeps_memory_bounded_and_loses_no_metrics() {
    require_root();
    let (lab, dir) = lab_and_dir("soak");
    let b = lab.iface_b.clone();
    let rules = [
        format!("block --port {UDP_PORT}/udp\n"),
        "block 198.51.100.0/24\nallow 192.0.2.1\nblock 192.0.2.0/24\n".to_owned(),
    ];
    dir.write("b.rules", &rules[0]);
    let cfg = dir.write(
        "kscope.toml",
        &config(&b, "\n[trace]\nopen = true\nexec = true\nconnect = true\n"),
    );
    // A uniquely named program, so its execs can be counted exactly: a
    // copy of this test binary, which lists no tests and exits (in the VMs
    // /bin/true is busybox, which would not know its new name).
    let exe = dir.0.join("kscope-soak-x");
    fs::copy(std::env::current_exe().expect("current exe"), &exe).expect("copy the test binary");
    let comm = "kscope-soak-x";
    // A closed port in the lab namespace: each connect is refused.
    let closed = "127.0.0.1:9";

    let daemon = start_daemon(&lab, &cfg);
    let pid = daemon.child.id();
    let total = soak_scrapes();
    let warm = total / 5;

    let stop = AtomicBool::new(false);
    let sent4 = AtomicU64::new(0);
    let execs = AtomicU64::new(0);
    let connects = AtomicU64::new(0);
    // Opens from a thread with a name of its own (the comm the kernel
    // counts under): (all, failed).
    let opener = "kscope-soak-op";
    let opens = (AtomicU64::new(0), AtomicU64::new(0));
    let missing = dir.0.join("no-such-file");
    // Anonymous RSS after each scrape past the warm-up.
    let mut rss = Vec::new();
    let mut scrapes = 0u64;
    let mut reloads = 0u64;
    let start = Instant::now();
    // Mixed traffic, IPv4 and IPv6, UDP and ICMP.
    let mixed = Traffic {
        udp4: 8,
        ping4: 4,
        udp6: 8,
        ping6: 4,
        payload: 100,
    };
    std::thread::scope(|s| {
        s.spawn(|| sender(&lab, &mixed, &stop, &sent4));
        std::thread::Builder::new()
            .spawn_scoped(s, || {
                // Renamed only after its first allocation: the C library
                // opens files once per process on the first malloc of a
                // new thread (glibc 2.31 reads the online CPUs when it
                // sizes its arenas), and whichever thread gets there
                // first is a race this count must not depend on.
                let warm = vec![0u8; 64];
                drop(std::hint::black_box(warm));
                rename_this_thread(opener);
                while !stop.load(Ordering::Relaxed) {
                    for path in [&cfg, &missing, &missing] {
                        if fs::File::open(path).is_err() {
                            opens.1.fetch_add(1, Ordering::Relaxed);
                        }
                        opens.0.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
            .expect("spawn the opener");
        // Execs and refused connects for the tracers.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                assert!(run_copy(&exe).success(), "run the soak program");
                execs.fetch_add(1, Ordering::Relaxed);
                let refused = lab.b.run(|| TcpStream::connect(closed)).expect("setns");
                assert!(refused.is_err(), "{closed} accepted a connection");
                connects.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut last: Option<Vec<Sample>> = None;
            while scrapes < total {
                let now = scrape(&lab.b);
                scrapes += 1;
                if let Some(prev) = &last {
                    check_monotonic(prev, &now);
                }
                last = Some(now);
                if scrapes.is_multiple_of(SOAK_CHURN_EVERY) {
                    reloads += 1;
                    dir.write("b.rules", &rules[reloads as usize % 2]);
                    hup(pid);
                    // A second kscope edits the same live rules meanwhile.
                    let verb = if reloads % 4 < 2 { "block" } else { "unblock" };
                    let _ = common::kscope(None, &["fw", verb, "--iface", &b, "203.0.113.7"]);
                    // Memory is sampled between phases, never inside one: a
                    // reload in flight holds what it is building (a sample
                    // that raced one caught +3 MiB once, gone at the next).
                    wait_reloads(&lab.b, reloads);
                }
                if scrapes > warm {
                    rss.push(rss_anon_kib(pid));
                }
                if scrapes.is_multiple_of(20) {
                    // Straight to stderr, past libtest's capture: under
                    // emulation the soak takes minutes, and the VM harness
                    // takes a silent console for a hang.
                    let _ = writeln!(
                        std::io::stderr(),
                        "soak: {scrapes}/{total} scrapes ({:.0?})",
                        start.elapsed()
                    );
                }
                // Pacing only: how long this takes decides nothing.
                std::thread::sleep(Duration::from_millis(250));
            }
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
    // Every phase is counted, so the samples are exactly these.
    assert_eq!(rss.len() as u64, total - warm, "RSS samples");
    let (first, second) = rss.split_at(rss.len() / 2);
    let peak = |h: &[u64]| h.iter().copied().max().unwrap_or(0);
    let (rss_first, rss_second) = (peak(first), peak(second));
    eprintln!(
        "soak: {:.0?}, {scrapes} scrapes, {reloads} reloads, {} IPv4 packets, {} execs, {} connects, {} opens; peak anonymous RSS {rss_first} KiB in the first half, {rss_second} KiB in the second",
        start.elapsed(),
        sent4.load(Ordering::Relaxed),
        execs.load(Ordering::Relaxed),
        connects.load(Ordering::Relaxed),
        opens.0.load(Ordering::Relaxed),
    );
    assert!(
        rss_second <= rss_first + SOAK_RSS_GROWTH_KIB,
        "peak anonymous RSS grew from {rss_first} KiB to {rss_second} KiB (bound {SOAK_RSS_GROWTH_KIB} KiB); samples {rss:?}"
    );

    // Nothing lost: the final counts equal what was generated.
    let want = (
        sent4.load(Ordering::Relaxed),
        execs.load(Ordering::Relaxed),
        connects.load(Ordering::Relaxed),
        opens.0.load(Ordering::Relaxed),
        opens.1.load(Ordering::Relaxed),
    );
    let start = Instant::now();
    loop {
        let s = scrape(&lab.b);
        let got = (
            sum(
                &s,
                "kscope_fw_packets_total",
                &[("iface", &b), ("family", "ipv4")],
            ),
            sum(
                &s,
                "kscope_trace_execs_total",
                &[("comm", comm), ("result", "ok")],
            ),
            sum(
                &s,
                "kscope_trace_connects_total",
                &[("daddr", "127.0.0.1"), ("dport", "9")],
            ),
            sum(&s, "kscope_trace_opens_total", &[("comm", opener)]),
            sum(&s, "kscope_trace_open_errors_total", &[("comm", opener)]),
        );
        let lost = sum(&s, "kscope_trace_lost_events_total", &[]);
        let errors = sum(&s, "kscope_daemon_scrape_errors_total", &[]);
        let failed = sum(&s, "kscope_daemon_reloads_total", &[("result", "failure")]);
        assert_eq!(
            (lost, errors, failed),
            (0, 0, 0),
            "lost events, scrape errors, failed reloads"
        );
        if got == want {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "counted (IPv4 packets, execs, connects, opens, failed opens) {got:?}, generated {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let tracers: Vec<u64> = common::prog_ids_of(pid)
        .into_iter()
        .filter(|&id| prog_name(id).starts_with("trace_"))
        .collect();
    assert!(
        tracers.len() >= 2,
        "exec and connect tracers loaded: {tracers:?}"
    );
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    // The tracers detached with the daemon.
    for id in tracers {
        assert!(
            common::wait_prog_gone(id, Duration::from_secs(10)),
            "tracer program {id} left after SIGTERM"
        );
    }
    kscope_ok(None, &["fw", "detach", &b]);
}

/// A loaded program's name, per bpftool.
fn prog_name(id: u64) -> String {
    let out = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .expect("bpftool");
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["name"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Every series of `prev` is still in `now`, with a value no lower. Rule
/// hits are the exception: a reloaded rule set starts its own count.
fn check_monotonic(prev: &[Sample], now: &[Sample]) {
    let index: BTreeMap<(&str, &BTreeMap<String, String>), f64> =
        now.iter().map(|(n, l, v)| ((n.as_str(), l), *v)).collect();
    for (name, labels, v) in prev {
        if !name.ends_with("_total")
            || name == "kscope_fw_rule_hits_total"
            || name.starts_with("kscope_bpf_program_")
        {
            continue;
        }
        match index.get(&(name.as_str(), labels)) {
            Some(now) => assert!(now >= v, "{name}{labels:?} went from {v} to {now}"),
            None => panic!("{name}{labels:?} disappeared"),
        }
    }
}

/// A config that cannot run is refused at start with one error line and a
/// non-zero exit, and leaves nothing attached: here the second interface
/// does not exist, so the first is not attached either.
#[test]
fn a_bad_config_at_start_fails_with_one_line_and_changes_nothing() {
    require_root();
    let lab = FwLab::new("badstart").expect("create lab");
    let dir = Scratch::new("badstart");
    dir.write("b.rules", "block 10.0.0.0/8\n");
    let cases = [
        (
            format!(
                "{}\n[[firewall.interface]]\nname = \"ksnosuch0\"\n",
                config(&lab.iface_b, "")
            ),
            "ksnosuch0",
        ),
        (
            "[metrics]\nlisten = \"127.0.0.1:9435\"\nbogus = 1\n".to_owned(),
            "unknown field `bogus`",
        ),
        (
            config(&lab.iface_b, "").replace("b.rules", "missing.rules"),
            "missing.rules",
        ),
    ];
    for (text, needle) in &cases {
        let cfg = dir.write("kscope.toml", text);
        let out = common::kscope_cmd(
            Some(&lab.b),
            &["daemon", "--config", cfg.to_str().expect("utf-8")],
        )
        .output()
        .expect("run kscope daemon");
        let line = common::assert_fails(&out, 1, &[needle]);
        assert!(
            line.contains("kscope.toml") || line.contains("ksnosuch0"),
            "{line}"
        );
        assert!(
            !kscope::firewall::pin_dir(&lab.iface_b).exists(),
            "{needle}: the firewall was left attached"
        );
    }
}

/// Without capabilities the daemon names the ones it lacks, in one line,
/// before touching anything.
#[test]
fn without_capabilities_the_daemon_names_the_missing_ones() {
    require_root();
    let (lab, dir) = lab_and_dir("nocapd");
    dir.write("b.rules", "");
    let cfg = dir.write(
        "kscope.toml",
        &config(&lab.iface_b, "\n[trace]\nexec = true\n"),
    );
    // Readable by nobody, as a config in /etc would be.
    fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = common::kscope_as_nobody(
        Some(&lab.b),
        &["daemon", "--config", cfg.to_str().expect("utf-8")],
    );
    let line = common::assert_fails(
        &out,
        1,
        &["kscope daemon", "CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"],
    );
    assert!(line.contains("lacks"), "{line}");
    assert!(!kscope::firewall::pin_dir(&lab.iface_b).exists());
}

/// /healthz says ok while everything runs, and 503 with the reason once the
/// firewall is detached behind the daemon's back.
#[test]
fn healthz_reports_a_firewall_detached_behind_its_back() {
    require_root();
    let (lab, _dir, daemon) = lab_with_daemon("health", "", "");
    assert_eq!(
        http_get(&lab.b, METRICS, "/healthz").expect("GET /healthz"),
        (200, "ok\n".to_owned())
    );
    kscope_ok(None, &["fw", "detach", &lab.iface_b]);
    let (status, body) = http_get(&lab.b, METRICS, "/healthz").expect("GET /healthz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("firewall on {}", lab.iface_b)),
        "{body}"
    );
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
}

/// With `detach_on_exit = true`, SIGTERM takes the firewall down too.
#[test]
fn detach_on_exit_removes_the_firewall_on_sigterm() {
    require_root();
    let (lab, dir) = lab_and_dir("detexit");
    dir.write("b.rules", "");
    let text = config(&lab.iface_b, "\n[firewall]\ndetach_on_exit = true\n")
        .replace("[metrics]\n", "[metrics]\nbpf_stats = false\n");
    let daemon = start_daemon(&lab, &dir.write("kscope.toml", &text));
    assert!(
        !holds_bpf_stats(daemon.child.id()),
        "bpf_stats = false, yet stats enabled"
    );
    let (prog, _) = prog_and_link(&lab.iface_b);
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    assert!(
        !kscope::firewall::pin_dir(&lab.iface_b).exists(),
        "{stderr}"
    );
    assert!(
        common::wait_prog_gone(prog, Duration::from_secs(10)),
        "fw_xdp {prog} still loaded"
    );
}

/// GET /profile samples on demand and returns folded stacks whose counts
/// add up, or pprof that Go's pprof reads; a bad query gets a 400 naming the problem, and profiling turned
/// off gets a 404 that says how to turn it on.
#[test]
fn profile_on_demand_serves_folded_stacks() {
    require_root();
    let (lab, dir, mut daemon) = lab_with_daemon(
        "prof",
        "",
        "\n[profile]\nenabled = true\nmax_seconds = 5\nfrequency = 99\n",
    );
    let stop = AtomicBool::new(false);
    let body = std::thread::scope(|s| {
        // Something on a CPU to sample.
        s.spawn(|| {
            let mut x = 1u64;
            while !stop.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
        let r = http_get(&lab.b, METRICS, "/profile?seconds=2&format=folded");
        stop.store(true, Ordering::Relaxed);
        r
    })
    .expect("GET /profile");
    assert_eq!(body.0, 200, "{}", body.1);
    let mut total = 0u64;
    for line in body.1.lines() {
        let (stack, n) = line.rsplit_once(' ').expect("folded line: STACK COUNT");
        assert!(!stack.is_empty(), "{line}");
        total += n.parse::<u64>().expect("count");
    }
    // 2 s at 99 Hz of a busy thread: well over a hundred samples in theory;
    // at least one is the requirement that sampling ran at all.
    assert!(total > 0, "no samples:\n{}", body.1);

    // format=pprof: gzipped profile.proto, which Go's own pprof reads.
    let raw = http_raw(
        &lab.b,
        METRICS,
        "GET",
        "/profile?seconds=1&format=pprof",
        "",
    )
    .expect("GET /profile pprof");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let pprof = &raw[end + 4..];
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/octet-stream"),
        "{head}"
    );
    assert!(
        head.contains(&format!("content-length: {}", pprof.len())),
        "{head}"
    );
    assert_eq!(pprof[..2], [0x1f, 0x8b], "not gzip");
    match find_in_path("go") {
        Some(go) => {
            let file = dir.write_bytes("daemon.pb.gz", pprof);
            let out = std::process::Command::new(go)
                .args(["tool", "pprof", "-symbolize=none", "-raw"])
                .arg(&file)
                .env("HOME", &dir.0)
                .output()
                .expect("go tool pprof");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("PeriodType: cpu nanoseconds"),
                "go tool pprof -raw: {}\n{text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => skip(
            "go",
            "no go in PATH to read the pprof body with (`cargo xtask setup` installs it on the host)",
        ),
    }

    let (status, text) = http_get(&lab.b, METRICS, "/profile?seconds=9").expect("GET");
    assert_eq!(status, 400);
    assert!(text.contains("1-5"), "{text}");

    dir.write("kscope.toml", &config(&lab.iface_b, ""));
    hup(daemon.child.id());
    daemon
        .wait_line("reloaded", Duration::from_secs(60))
        .expect("reload logged");
    let (status, text) = http_get(&lab.b, METRICS, "/profile?seconds=1").expect("GET");
    assert_eq!(status, 404);
    assert!(text.contains("enabled = true"), "{text}");
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    kscope_ok(None, &["fw", "detach", &lab.iface_b]);
}

/// promtool, or a loud note that its checks are skipped (the VM images
/// do not carry it; the host setup installs it).
fn find_promtool() -> Option<PathBuf> {
    let p = find_in_path("promtool");
    if p.is_none() {
        eprintln!(
            "skipping the promtool checks: no promtool in PATH (Debian's prometheus package has it; `cargo xtask setup` installs it)"
        );
    }
    p
}

/// `promtool check metrics` on `text`, when there is a promtool: (passed,
/// its output).
fn promtool_check(promtool: &Option<PathBuf>, text: &str) -> (bool, String) {
    let Some(promtool) = promtool else {
        return (true, String::new());
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool exit");
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), msg)
}

/// Every family the daemon exports (sample names, `_total` included).
const FAMILIES: &[&str] = &[
    "kscope_fw_packets_total",
    "kscope_fw_bytes_total",
    "kscope_fw_rule_hits_total",
    "kscope_fw_rules",
    "kscope_trace_events_total",
    "kscope_trace_lost_events_total",
    "kscope_trace_opens_total",
    "kscope_trace_open_errors_total",
    "kscope_trace_execs_total",
    "kscope_trace_connects_total",
    "kscope_bpf_program_run_time_seconds_total",
    "kscope_bpf_program_run_count_total",
    "kscope_bpf_program_map_bytes",
    "kscope_daemon_reloads_total",
    "kscope_daemon_config_last_reload_successful",
    "kscope_daemon_scrape_errors_total",
    "kscope_daemon_scrapes_total",
];

/// A process name and a file name chosen to break out of a label value.
const EVIL_COMM: &str = "x\"} 1\nevil 9\n#";
const EVIL_EXE: &str = "ex\\ec\"q";

/// Label values are escaped: a process that names itself to close the
/// label and start a series of its own, and a program whose file name
/// holds a backslash and a quote, leave the exposition promtool-clean,
/// with their names as label values and no series but the daemon's.
/// Runs a copy of this test binary (which then lists no tests and exits).
/// A child that another test thread forks while the copy is still open
/// for writing holds that fd until it execs, and an exec of the copy in
/// that window fails with ETXTBSY (the close-on-exec race of any
/// multithreaded program that writes a file and runs it): it is tried
/// again, since nothing ran.
fn run_copy(exe: &std::path::Path) -> std::process::ExitStatus {
    let mut tries = 0;
    loop {
        match Command::new(exe)
            .args(["--list", "--exact", "no_such_test"])
            .stdout(Stdio::null())
            .status()
        {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r.unwrap_or_else(|e| panic!("exec {}: {e}", exe.display())),
        }
    }
}

/// Sets the calling thread's comm, the name the tracers count it under.
fn rename_this_thread(name: &str) {
    let name = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
    // bytes (longer is truncated) and renames this thread only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    assert_eq!(rc, 0, "prctl: {}", std::io::Error::last_os_error());
}

#[test]
fn hostile_comms_and_file_names_cannot_inject_series() {
    require_root();
    let promtool = find_promtool();
    let (lab, dir, daemon) = lab_with_daemon("inject", "", "\n[trace]\nopen = true\nexec = true\n");
    let target = dir.write("opened", "x");
    std::thread::spawn(move || {
        rename_this_thread(EVIL_COMM);
        for _ in 0..3 {
            fs::File::open(&target).expect("open as the renamed thread");
        }
    })
    .join()
    .expect("renamed thread");
    // A copy of this test binary, which lists no tests and exits (in the
    // VMs /bin/true is busybox, which would not know its new name).
    let exe = dir.0.join(EVIL_EXE);
    fs::copy(std::env::current_exe().expect("current exe"), &exe).expect("copy the test binary");
    assert!(run_copy(&exe).success(), "exec the oddly named file");

    let start = Instant::now();
    let text = loop {
        let (status, head, text) = http(&lab.b, METRICS, "GET", "/metrics", "").expect("scrape");
        assert_eq!(status, 200, "{text}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        let s = samples(&text);
        if sum(&s, "kscope_trace_opens_total", &[("comm", EVIL_COMM)]) >= 3
            && sum(&s, "kscope_trace_execs_total", &[("comm", EVIL_EXE)]) >= 1
        {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the hostile names never showed up as label values:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let (ok, msg) = promtool_check(&promtool, &text);
    assert!(ok, "promtool check metrics: {msg}\n{text}");
    for (name, labels, _) in samples(&text) {
        assert!(
            FAMILIES.contains(&name.as_str()),
            "injected series {name} {labels:?}:\n{text}"
        );
    }
    // The OpenMetrics exposition parses the same way and holds the same
    // names.
    let om = scrape(&lab.b);
    assert!(sum(&om, "kscope_trace_opens_total", &[("comm", EVIL_COMM)]) >= 3);
    assert!(om.iter().all(|(n, _, _)| FAMILIES.contains(&n.as_str())));
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    kscope_ok(None, &["fw", "detach", &lab.iface_b]);
}

/// `/metrics` answers in the format the Accept header prefers (the text
/// format without one, as promtool and curl expect), HEAD gets the headers
/// only, other methods a 405 naming the allowed ones, and a pid no
/// process can have a 4xx rather than a 500.
#[test]
fn metrics_negotiates_its_format_and_bad_requests_get_4xx() {
    require_root();
    let promtool = find_promtool();
    let (lab, _dir, daemon) = lab_with_daemon(
        "negot",
        &format!("block --port {UDP_PORT}/udp\n"),
        "\n[profile]\nenabled = true\nmax_seconds = 5\n",
    );
    let get = |headers: &str| http(&lab.b, METRICS, "GET", "/metrics", headers).expect("GET");
    for accept in [
        "",
        "Accept: */*\r\n",
        "Accept: text/plain;version=0.0.4\r\n",
    ] {
        let (status, head, body) = get(accept);
        assert_eq!(status, 200, "{body}");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{accept:?}: {head}"
        );
        assert!(!body.contains("# EOF"), "{accept:?}: {body}");
        let (ok, msg) = promtool_check(&promtool, &body);
        assert!(ok, "{accept:?}: promtool check metrics: {msg}\n{body}");
        assert!(
            body.contains("# HELP kscope_fw_packets_total ")
                && body.contains("# TYPE kscope_fw_packets_total counter"),
            "{body}"
        );
    }
    let (status, head, body) = get(&format!("Accept: {PROMETHEUS_ACCEPT}\r\n"));
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE kscope_fw_packets counter"), "{body}");

    let (status, head, body) = http(&lab.b, METRICS, "HEAD", "/metrics", "").expect("HEAD");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(body.is_empty(), "HEAD answered with a body: {body}");
    let (status, head, _) = http(&lab.b, METRICS, "HEAD", "/healthz", "").expect("HEAD");
    assert_eq!(status, 200, "{head}");
    let (status, head, _) =
        http(&lab.b, METRICS, "POST", "/metrics", "Content-Length: 0\r\n").expect("POST");
    assert_eq!(status, 405);
    assert!(head.contains("allow: get, head"), "{head}");

    for (query, want) in [
        ("pid=4294967295", 400),
        ("pid=0", 400),
        ("pid=-1", 400),
        // In range, but no process has it (pid_max is far below).
        ("pid=4194303", 404),
    ] {
        let (status, body) =
            http_get(&lab.b, METRICS, &format!("/profile?seconds=1&{query}")).expect("GET");
        assert_eq!(status, want, "{query}: {body}");
    }
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    kscope_ok(None, &["fw", "detach", &lab.iface_b]);
}

/// The daemon's open sockets.
fn sockets_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// Waits for `cond`; `limit` only keeps a broken daemon from hanging the
/// test.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `s` has had any byte of an answer (without waiting).
fn answered(s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 1];
    let r = s.peek(&mut b);
    s.set_nonblocking(false).expect("blocking");
    !matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The requirement: /healthz is answered within 100 ms while 200 scrapers
/// run. A wall-clock bound cannot be asserted on a loaded, emulated CI
/// machine, so this test checks what makes it hold, deterministically:
/// with one scrape held in computation (the test gate) and 200 more
/// waiting, all accepted and none answered, /healthz still answers. The
/// latency itself is measured by `cargo xtask bench daemon`.
///
/// Then 100 of the waiting scrapers hang up: their scrapes are never
/// computed (kscope_daemon_scrapes_total counts exactly the others).
#[test]
fn healthz_answers_while_200_scrapes_are_in_flight_and_abandoned_ones_cost_nothing() {
    require_root();
    let (lab, dir) = lab_and_dir("hload");
    dir.write("b.rules", &format!("block --port {UDP_PORT}/udp\n"));
    let cfg = dir.write("kscope.toml", &config(&lab.iface_b, ""));
    let gate = dir.write("gate", "");
    let held = gate.with_extension("held");
    let gate_env = gate.to_str().expect("utf-8 path");
    let daemon = Tracer::start_until(
        Some(&lab.b),
        &["daemon", "--config", cfg.to_str().expect("utf-8 path")],
        &[("KSCOPE_TEST_SCRAPE_GATE", gate_env)],
        false,
        Duration::from_secs(120),
        READY,
    );
    let pid = daemon.child.id();
    let base = sockets_of(pid);
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {METRICS}\r\nConnection: close\r\n\r\n");
    let open = |n: usize| -> Vec<TcpStream> {
        lab.b
            .run(|| {
                (0..n)
                    .map(|_| {
                        let mut s = TcpStream::connect(METRICS).expect("connect");
                        s.write_all(request.as_bytes()).expect("send request");
                        s
                    })
                    .collect::<Vec<_>>()
            })
            .expect("in the namespace")
    };
    // One scrape held in computation...
    let first = open(1);
    wait_for("a scrape held at the gate", Duration::from_secs(60), || {
        held.exists()
    });
    // ...and 200 more accepted behind it.
    let mut scrapers = open(200);
    wait_for(
        "the daemon holding 201 connections",
        Duration::from_secs(120),
        || sockets_of(pid) >= base + 201,
    );

    let health = lab
        .b
        .run(|| -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect(METRICS)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            write!(
                s,
                "GET /healthz HTTP/1.1\r\nHost: {METRICS}\r\nConnection: close\r\n\r\n"
            )?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)?;
            Ok(raw)
        })
        .expect("in the namespace")
        .expect("/healthz answered while scrapes are in flight");
    let (status, _, body) = parse_response(&health).expect("an HTTP response");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(
        !first.iter().chain(&scrapers).any(answered),
        "a scrape was answered while the gate was closed: the scrapes were not in flight"
    );

    // 100 scrapers hang up; the daemon drops their requests.
    let kept = scrapers.split_off(100);
    drop(scrapers);
    wait_for(
        "the daemon dropping 100 abandoned scrapes",
        Duration::from_secs(120),
        || sockets_of(pid) <= base + 101,
    );
    fs::remove_file(&gate).expect("open the gate");
    for mut s in first.into_iter().chain(kept) {
        s.set_read_timeout(Some(Duration::from_secs(240)))
            .expect("timeout");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read scrape");
        let (status, _, body) = parse_response(&raw).expect("an HTTP response");
        assert_eq!(status, 200, "{body}");
    }
    // 1 held + 100 kept + this one; none of the 100 abandoned.
    let s = scrape(&lab.b);
    assert_eq!(sum(&s, "kscope_daemon_scrapes_total", &[]), 102);
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    kscope_ok(None, &["fw", "detach", &lab.iface_b]);
}

/// A connection that sends nothing, or stays idle after a response, is
/// closed after `[metrics] header_timeout_seconds`; over
/// `[metrics] max_connections`, a connection gets a 503 at once.
#[test]
fn silent_and_idle_connections_are_closed_and_connections_are_capped() {
    require_root();
    let (lab, dir) = lab_and_dir("conns");
    dir.write("b.rules", "");
    let text = config(&lab.iface_b, "").replace(
        "[metrics]\n",
        "[metrics]\nheader_timeout_seconds = 1\nmax_connections = 3\n",
    );
    let daemon = start_daemon(&lab, &dir.write("kscope.toml", &text));
    let connect = || {
        lab.b
            .run(|| TcpStream::connect(METRICS))
            .expect("in the namespace")
            .expect("connect")
    };
    /// Reads until the daemon closes; the read timeout only keeps a
    /// daemon that never does from hanging the test.
    fn until_closed(s: &mut TcpStream) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        let mut raw = Vec::new();
        match s.read_to_end(&mut raw) {
            Ok(_) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => raw,
            Err(e) => panic!("the daemon kept the connection open ({e}); read {raw:?}"),
        }
    }
    // Silent from the start.
    let mut silent = connect();
    let raw = until_closed(&mut silent);
    assert!(
        raw.is_empty() || String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 408"),
        "{raw:?}"
    );
    // Idle after a keep-alive response.
    let mut idle = connect();
    write!(idle, "GET /healthz HTTP/1.1\r\nHost: {METRICS}\r\n\r\n").expect("send");
    let raw = until_closed(&mut idle);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");

    // The cap, with a timeout long enough to hold connections open.
    let text = text_with(&lab, "header_timeout_seconds = 600\nmax_connections = 3\n");
    let daemon = start_daemon(&lab, &dir.write("kscope.toml", &text));
    let pid = daemon.child.id();
    let base = sockets_of(pid);
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect()).collect();
    wait_for(
        "the daemon holding 3 connections",
        Duration::from_secs(60),
        || sockets_of(pid) >= base + 3,
    );
    let mut over = connect();
    let raw = until_closed(&mut over);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    // One leaves: there is room again.
    drop(held.pop());
    wait_for("room for a connection", Duration::from_secs(60), || {
        matches!(http_get(&lab.b, METRICS, "/healthz"), Ok((200, _)))
    });
    drop(held);
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    kscope_ok(None, &["fw", "detach", &lab.iface_b]);
}

/// The config of [`config`] with `metrics` added under `[metrics]`.
fn text_with(lab: &Lab, metrics: &str) -> String {
    config(&lab.iface_b, "").replace("[metrics]\n", &format!("[metrics]\n{metrics}"))
}

/// `kscope_fw_rule_hits_total` keeps at most `[firewall] max_rule_series`
/// rules per interface, the top ones by hits when first seen, and sums
/// the rest under `[other]`; as traffic shifts, no series goes down and
/// all of them add up to every hit.
#[test]
fn rule_hit_series_are_bounded_and_never_go_down() {
    require_root();
    // Three rules, hit by different traffic: UDP to the blocked port
    // (IPv4 and IPv6), and pings from A's IPv4 and IPv6 addresses.
    let rules = format!(
        "block --port {UDP_PORT}/udp\nallow {ADDR4_A}/32\nallow {}/128\n",
        kscope_lab::netlab::ADDR6_A
    );
    let (lab, _dir, daemon) =
        lab_with_daemon("topn", &rules, "\n[firewall]\nmax_rule_series = 1\n");
    let b = &lab.iface_b;
    let series = |s: &[Sample]| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = s
            .iter()
            .filter(|(n, l, _)| n == "kscope_fw_rule_hits_total" && l["iface"] == *b)
            .map(|(_, l, v)| (l["rule"].clone(), *v as u64))
            .collect();
        v.sort();
        v
    };
    // Pings from A hit its allow rules (IPv6 neighbour discovery from A
    // may add a few to the IPv6 one); the IPv4 rule leads clearly.
    lab.send(&Traffic {
        udp4: 0,
        ping4: 30,
        udp6: 0,
        ping6: 2,
        payload: 64,
    })
    .expect("send traffic");
    let top = format!("allow {ADDR4_A}/32");
    let mut want = vec![top.clone(), "[other]".to_owned()];
    want.sort();
    let names = |v: &[(String, u64)]| v.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>();
    let first = series(&scrape(&lab.b));
    assert_eq!(names(&first), want, "one rule and [other]: {first:?}");
    assert!(
        first.iter().any(|(r, v)| *r == top && *v >= 30),
        "{first:?}"
    );
    // The IPv6 rule overtakes it: it stays under [other], which grows.
    lab.send(&Traffic {
        udp4: 0,
        ping4: 0,
        udp6: 0,
        ping6: 60,
        payload: 64,
    })
    .expect("send traffic");
    let second = series(&scrape(&lab.b));
    assert_eq!(names(&second), want, "{second:?}");
    for ((r, v1), (_, v2)) in first.iter().zip(&second) {
        assert!(v2 >= v1, "{r} went down: {first:?} -> {second:?}");
    }
    let other = second.iter().find(|(r, _)| r == "[other]").map(|x| x.1);
    assert!(other.is_some_and(|o| o >= 62), "{second:?}");
    // Every hit is in some series: no more than the CLI's own per-rule
    // counts, read afterwards, add up to.
    let cli: u64 = kscope_ok(None, &["fw", "rules", "--iface", b])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum();
    let exported: u64 = second.iter().map(|x| x.1).sum();
    assert!(
        exported >= 92 && exported <= cli,
        "{second:?}, CLI total {cli}"
    );
    // The daemon re-reads its cached rule list when the set changes, a
    // port-only edit included (it moves no source-rule state).
    let in_place = |s: &[Sample]| sum(s, "kscope_fw_rules", &[("iface", b)]);
    let before = in_place(&scrape(&lab.b));
    kscope_ok(None, &["fw", "block", "--iface", b, "--port", "7/tcp"]);
    assert_eq!(in_place(&scrape(&lab.b)), before + 1);
    kscope_ok(None, &["fw", "unblock", "--iface", b, "--port", "7/tcp"]);
    assert_eq!(in_place(&scrape(&lab.b)), before);
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    kscope_ok(None, &["fw", "detach", b]);
}

/// Set to a cgroup directory, this variable makes the test binary the
/// workload of the histogram test: it moves itself there, makes
/// [`HIST_CALLS`] pselect6(2) calls with a 3 ms timeout, and prints the
/// median it measured.
const HIST_WORKLOAD: &str = "KSCOPE_TEST_DAEMON_HIST_CGROUP";
const HIST_CALLS: usize = 60;

#[test]
#[ignore = "helper process of the histogram test"]
fn daemon_hist_workload_helper() {
    let dir = std::env::var(HIST_WORKLOAD).expect("run by the histogram test only");
    fs::write(
        Path::new(&dir).join("cgroup.procs"),
        std::process::id().to_string(),
    )
    .expect("move into the test cgroup");
    let mut took: Vec<Duration> = (0..HIST_CALLS)
        .map(|_| {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 3_000_000,
            };
            let t = Instant::now();
            // SAFETY: no descriptor sets, a valid timeout, no signal mask.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_pselect6,
                    0,
                    std::ptr::null_mut::<libc::fd_set>(),
                    std::ptr::null_mut::<libc::fd_set>(),
                    std::ptr::null_mut::<libc::fd_set>(),
                    &raw const ts,
                    std::ptr::null::<libc::c_void>(),
                )
            };
            assert_eq!(r, 0, "pselect6: {}", std::io::Error::last_os_error());
            t.elapsed()
        })
        .collect();
    took.sort();
    println!("median_ns={}", took[HIST_CALLS / 2].as_nanos());
}

/// The cgroup v2 mount, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(std::path::PathBuf::from(left.split_whitespace().nth(4)?))
    })
}

/// `[hist] syscall` with `cgroup = true`: Prometheus reads the daemon's
/// syscall histogram. The series of a workload's cgroup counts exactly its
/// pselect6(2) calls, and `histogram_quantile` puts their median (each a
/// 3 ms timeout, so at least 3 ms in the kernel) in the right bucket: no
/// lower than 2^21 ns (2.1 ms, the bucket of 3 ms), no higher than the top
/// of the bucket of the median the workload measured itself (the kernel's
/// time is within the caller's).
#[test]
fn prometheus_reads_the_syscall_histogram() {
    require_root();
    let Some(prometheus) = find_in_path("prometheus") else {
        skip(
            "prometheus",
            "no prometheus binary in PATH (`cargo xtask setup` installs Debian's on the host)",
        );
        return;
    };
    let Some(mount) = cgroup2_mount() else {
        skip("cgroup2", "no cgroup v2 hierarchy is mounted");
        return;
    };
    let cg_name = format!("kscope-test-hist-{}", std::process::id());
    let cg = mount.join(&cg_name);
    fs::create_dir(&cg).expect("create the test cgroup");
    struct RemoveCgroup(std::path::PathBuf);
    impl Drop for RemoveCgroup {
        fn drop(&mut self) {
            let start = Instant::now();
            while fs::remove_dir(&self.0).is_err() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let _cg = RemoveCgroup(cg.clone());
    let (lab, dir) = lab_and_dir("hist");
    let cfg = dir.write(
        "kscope.toml",
        &format!("[metrics]\nlisten = \"{METRICS}\"\n\n[hist]\nsyscall = true\ncgroup = true\n"),
    );
    let daemon = start_daemon(&lab, &cfg);
    let prom = Prometheus::start(&lab, &dir, &prometheus);
    let (prom_addr, prom_log) = (PROM_ADDR, || prom.log());
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "daemon_hist_workload_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HIST_WORKLOAD, &cg)
        .output()
        .expect("run the workload");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "workload: {text}");
    let median_ns: u64 = text
        .lines()
        .find_map(|l| l.split_once("median_ns=").map(|(_, v)| v))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no median in {text}"));
    // The top of the log2 bucket holding the workload's own median.
    let top = (1u64 << (64 - median_ns.leading_zeros())) as f64 / 1e9;
    let series = format!("syscall=\"pselect6\",cgroup=\"/{cg_name}\"");
    let count_q = format!("kscope_hist_syscall_latency_seconds_count{{{series}}}");
    let p50_q =
        format!("histogram_quantile(0.5, kscope_hist_syscall_latency_seconds_bucket{{{series}}})");
    let start = Instant::now();
    let (n, p50) = loop {
        let n = prom_query(&lab.b, prom_addr, &count_q);
        if n.is_some_and(|n| n >= HIST_CALLS as f64)
            && let Some(p) = prom_query(&lab.b, prom_addr, &p50_q)
        {
            break (n, p);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Prometheus never saw {HIST_CALLS} pselect6 calls in the cgroup ({n:?}); prometheus log:\n{}",
            prom_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("p50 {p50} s; the workload's median {median_ns} ns, its bucket's top {top} s");
    assert_eq!(n, Some(HIST_CALLS as f64), "the cgroup's pselect6 calls");
    assert!(
        (2_097_152e-9..=top).contains(&p50),
        "histogram_quantile(0.5) = {p50} s, want 2.097 ms to {top} s"
    );
    let (status, _, stderr) = daemon.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
}
