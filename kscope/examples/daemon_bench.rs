//! `cargo xtask bench daemon`: what a `/metrics` scrape costs and how
//! `/healthz` fares under scrape load. Prints Markdown to paste into the
//! README. Needs root. Not a test.
//!
//! The daemon runs in a private lab namespace with the firewall on one
//! interface, as the README's service section sets it up:
//! - a small rule set: the time of one scrape (median of sequential ones)
//!   and its size in both formats;
//! - 200 threads scraping back to back for `SECS` seconds while a prober
//!   asks `/healthz` every 100 ms: scrapes per second and health latency;
//! - 1,048,576 rules loaded with `kscope fw load`: the first scrape after
//!   the load (which reads the rule list) and the following ones.
//!
//! `KSCOPE_BIN` runs another kscope binary (an older build, for before and
//! after figures).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use kscope::firewall::maps::RuleMaps;
use kscope_lab::netlab::{Lab, Netns, Traffic};

const ADDR: &str = "127.0.0.1:9435";
const SCRAPERS: usize = 200;
const SECS: u64 = 10;
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn kscope_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KSCOPE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("kscope"))
        .context("locating the kscope binary")?;
    ensure!(
        p.exists(),
        "{} missing: cargo build --release --bin kscope",
        p.display()
    );
    Ok(p)
}

/// One request on a fresh connection: (status, body bytes, time).
fn get(
    path: &str,
    accept: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, usize, Duration)> {
    let start = Instant::now();
    let mut s = TcpStream::connect(ADDR)?;
    s.set_read_timeout(Some(timeout))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {ADDR}\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("bad status line")?;
    Ok((status, body.len(), took))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        return f64::NAN;
    }
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

/// Sequential scrapes: (median ms, body bytes).
fn scrape_cost(ns: &Netns, n: usize, accept: Option<&str>) -> anyhow::Result<(f64, usize)> {
    ns.run(|| -> anyhow::Result<(f64, usize)> {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..n {
            let (status, len, took) = get("/metrics", accept, Duration::from_secs(120))?;
            ensure!(status == 200, "/metrics answered {status}");
            times.push(ms(took));
            size = len;
        }
        Ok((percentile(&mut times, 0.5), size))
    })?
}

/// 200 scrapers for SECS seconds, health probed every 100 ms.
fn under_load(ns: &Netns) -> anyhow::Result<()> {
    ns.run(|| -> anyhow::Result<()> {
        let stop = AtomicBool::new(false);
        let done = AtomicU64::new(0);
        let failed = AtomicU64::new(0);
        let health = Mutex::new(Vec::new());
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..SCRAPERS {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        match get("/metrics", Some(PROMETHEUS_ACCEPT), Duration::from_secs(120)) {
                            Ok((200, _, _)) => done.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
            s.spawn(|| {
                // Let the scrapers pile up first.
                std::thread::sleep(Duration::from_secs(1));
                while start.elapsed() < Duration::from_secs(SECS) {
                    let t = Instant::now();
                    let r = get("/healthz", None, Duration::from_secs(60));
                    let took = t.elapsed();
                    let ok = matches!(r, Ok((200, _, _)));
                    if let Ok(mut h) = health.lock() {
                        h.push((ms(took), ok));
                    }
                    std::thread::sleep(Duration::from_millis(100).saturating_sub(took));
                }
                stop.store(true, Ordering::Relaxed);
            });
        });
        let elapsed = start.elapsed().as_secs_f64();
        let h = health.into_inner().unwrap_or_default();
        let mut lat: Vec<f64> = h.iter().map(|x| x.0).collect();
        let over = lat.iter().filter(|&&l| l > 100.0).count();
        let bad = h.iter().filter(|x| !x.1).count();
        let (p50, p99, max) = (
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.99),
            percentile(&mut lat, 1.0),
        );
        println!(
            "| {SCRAPERS} scrapers for {elapsed:.0} s | {:.0} scrapes/s ({} failed) | /healthz: {} probes, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms, {over} over 100 ms, {bad} not 200 |",
            done.load(Ordering::Relaxed) as f64 / elapsed,
            failed.load(Ordering::Relaxed),
            h.len(),
        );
        Ok(())
    })?
}

/// What every scrape did before the rule list was cached: walk the whole
/// rule set (tries and both slots of the port array) and the hit
/// counters. Median ms of `n`.
fn full_rule_walk(iface: &str, n: usize) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let maps = RuleMaps::from_pins(&kscope::firewall::pin_dir(iface))?;
        let r = maps.rules_with_hits()?;
        std::hint::black_box(r);
        times.push(ms(t.elapsed()));
    }
    Ok(percentile(&mut times, 0.5))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child by pid; no memory involved.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let kscope = kscope_bin()?;
    let lab = Lab::new("dbench")?;
    lab.up()?;
    let st = Command::new("ip")
        .args(["-n", lab.b.name(), "link", "set", "lo", "up"])
        .status()?;
    ensure!(st.success(), "ip link set lo up");
    let dir = std::env::temp_dir().join(format!("kscope-daemon-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The daemon attaches the firewall and leaves it attached when it exits;
    // this removes it on every way out, before the lab goes.
    let _detach = Detach {
        kscope: &kscope,
        iface: &lab.iface_b,
    };
    let result = run(&kscope, &lab, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs `kscope fw detach IFACE` on drop. Deleting the lab's namespaces takes the attachment, not the
/// pins under /sys/fs/bpf/kscope.
struct Detach<'a> {
    kscope: &'a Path,
    iface: &'a str,
}

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.kscope)
            .args(["fw", "detach", self.iface])
            .env("KSCOPE_LOG", "warn")
            .status();
    }
}

fn run(kscope: &Path, lab: &Lab, dir: &Path) -> anyhow::Result<()> {
    let rules = dir.join("b.rules");
    std::fs::write(
        &rules,
        "block --port 9/udp\nblock --port 23/tcp\nblock 198.51.100.0/24\nallow 203.0.113.7\n",
    )?;
    let cfg = dir.join("kscope.toml");
    std::fs::write(
        &cfg,
        format!(
            "[metrics]\nlisten = \"{ADDR}\"\n\n[[firewall.interface]]\nname = \"{}\"\nmode = \"skb\"\nrules = \"b.rules\"\n",
            lab.iface_b
        ),
    )?;
    let child = lab
        .b
        .command(kscope)
        .args(["daemon", "--config"])
        .arg(&cfg)
        .env("KSCOPE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the daemon")?;
    let daemon = Daemon(child);
    let pid = daemon.0.id();
    let start = Instant::now();
    while !matches!(
        lab.b.run(|| get("/healthz", None, Duration::from_secs(5))),
        Ok(Ok((200, _, _)))
    ) {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the daemon never became healthy");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.send(&Traffic {
        udp4: 100,
        ping4: 10,
        udp6: 100,
        ping6: 10,
        payload: 64,
    })?;
    println!(
        "kscope daemon, one interface ({}), {}\n",
        lab.iface_b,
        kscope.display()
    );
    println!("| case | scrape (median) | size |");
    println!("|---|---|---|");
    scrape_cost(&lab.b, 3, None)?;
    for (name, accept) in [
        ("text 0.0.4", None),
        ("OpenMetrics", Some(PROMETHEUS_ACCEPT)),
    ] {
        let (t, size) = scrape_cost(&lab.b, 50, accept)?;
        println!("| 4 rules, {name}, idle daemon | {t:.2} ms | {size} bytes |");
    }
    println!(
        "| (the rule walk every scrape did before the rule list was cached) | {:.2} ms | |",
        full_rule_walk(&lab.iface_b, 20)?
    );
    println!();
    println!("| load | throughput | health |");
    println!("|---|---|---|");
    under_load(&lab.b)?;

    // 1,048,576 rules: IPv4 /32s from 10.0.0.0 up.
    let n = 1u32 << 20;
    let mut text = String::with_capacity(n as usize * 20);
    for i in 0..n {
        text.push_str(&format!("block {}\n", Ipv4Addr::from(0x0a00_0000 + i)));
    }
    let big = dir.join("big.rules");
    std::fs::write(&big, text)?;
    let t = Instant::now();
    let out = Command::new(kscope)
        .args(["fw", "load", "--iface", &lab.iface_b])
        .arg(&big)
        .env("KSCOPE_LOG", "warn")
        .output()?;
    ensure!(
        out.status.success(),
        "fw load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let load = t.elapsed();
    let (first, size) = scrape_cost(&lab.b, 1, Some(PROMETHEUS_ACCEPT))?;
    let (steady, _) = scrape_cost(&lab.b, 20, Some(PROMETHEUS_ACCEPT))?;
    println!();
    println!("| 1,048,576 rules (`fw load` took {load:.1?}) | scrape | size | daemon RSS |");
    println!("|---|---|---|---|");
    println!(
        "| first scrape after the load | {first:.1} ms | {size} bytes | {} MiB |",
        rss_kib(pid) / 1024
    );
    println!(
        "| later scrapes (median of 20) | {steady:.2} ms | {size} bytes | {} MiB |",
        rss_kib(pid) / 1024
    );
    // Before, every rule had its own sample line.
    let maps = RuleMaps::from_pins(&kscope::firewall::pin_dir(&lab.iface_b))?;
    let old_lines: usize = maps
        .rules_with_hits()?
        .iter()
        .map(|r| {
            format!(
                "kscope_fw_rule_hits_total{{iface=\"{}\",rule=\"{}\"}} {}\n",
                lab.iface_b, r.rule, r.hits
            )
            .len()
        })
        .sum();
    println!(
        "| (before: the rule walk every scrape did, and one line per rule) | {:.0} ms | {old_lines} bytes of rule lines | |",
        full_rule_walk(&lab.iface_b, 3)?
    );
    Ok(())
}
