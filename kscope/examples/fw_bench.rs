//! `cargo xtask bench fw`: the firewall's cost per packet, next to an
//! XDP_PASS-only floor and to xdp-filter (Debian's xdp-tools) holding the
//! same exact rules, all measured in one run with BPF_PROG_TEST_RUN; plus
//! the insertion rate of `fw load`, batch against key-by-key stats reads,
//! and a live flood on a veth pair between two namespaces of its own
//! (kscope, xdp-filter and an XDP_DROP-only baseline, from the kernel's
//! BPF statistics).
//! Prints a Markdown table. Needs root. Not a test.
//!
//! The frames' sources match no rule, so every lookup runs and the packet
//! passes: the common case for a filter, and the most work per packet.
//! Rule addresses are private (10.0.0.0/8, fd00::/8) and never leave the
//! kernel: BPF_PROG_TEST_RUN sends nothing anywhere.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{IterableMap as _, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use kscope::{
    firewall::{
        Policy, Sizes, load_pipeline, load_pipeline_sized,
        maps::RuleMaps,
        rules::{Cidr, LimitSpec, Per, Rule, RuleSet},
        top::By,
        xdp_program,
    },
    sys::bpf::{MapFdOps, ReadMethod, dump_map},
};
use kscope_common::fw::{
    Counter, Family, MAP_ALLOW4, MAP_ALLOW6, MAP_BLOCK4, MAP_BLOCK6, MAP_HITS, MAP_PORTS,
    MAP_REASONS, MAP_SOURCES, PROG_BENCH_XDP, PROG_BENCH_XDP_DROP, PROG_FW_XDP, Reason, SourceKey,
    SourceStats, reason_index,
};
use kscope_lab::{
    frame::{self, L4},
    memlock::map_memlock,
};

/// The compiled `bench_xdp` object (kscope's build script builds it with
/// the firewall): an XDP_PASS-only program, the floor this measures
/// against.
static BENCH_XDP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_xdp"));

/// The firewall's rule maps, whose memory the benchmark reports.
const RULE_MAPS: [&str; 6] = [
    MAP_ALLOW4, MAP_BLOCK4, MAP_ALLOW6, MAP_BLOCK6, MAP_PORTS, MAP_HITS,
];

const COUNTS: [u32; 5] = [0, 1, 1_000, 100_000, 1_000_000];
const XDP_FILTER_OBJ: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_all.o";
/// xdp-filter's map value flag for "match the source address"
/// (common_kern_user.h: MAP_FLAG_SRC).
const XDP_FILTER_FLAG_SRC: u64 = 1;

fn v4_rule(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i)
}

fn v6_rule(i: u32) -> Ipv6Addr {
    Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i))
}

/// The benchmark frames: from a documentation source far from every rule
/// (the tries end their walk at once), and from a source next to the rules
/// that matches none (the tries walk as deep as they go).
fn frames() -> [(&'static str, Vec<u8>); 4] {
    let m = [2, 0, 0, 0, 0, 1];
    let near4 = frame::simple(
        m,
        m,
        v4_rule(0xf_ffff).into(),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        L4::Udp(9),
        &[0u8; 22],
    );
    let near6 = frame::simple(
        m,
        m,
        v6_rule(0xf_ffff).into(),
        "2001:db8::2".parse().expect("ip"),
        L4::Tcp(80),
        &[],
    );
    let v4 = frame::simple(
        m,
        m,
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        L4::Udp(9),
        &[0u8; 22],
    );
    assert_eq!(v4.len(), 64);
    assert_eq!(near4.len(), 64);
    let v6 = frame::simple(
        m,
        m,
        "2001:db8::1".parse().expect("ip"),
        "2001:db8::2".parse().expect("ip"),
        L4::Tcp(80),
        &[],
    );
    [
        ("IPv4/UDP 64 B", v4),
        ("IPv6/TCP 74 B", v6),
        ("IPv4/UDP 64 B, near", near4),
        ("IPv6/TCP 74 B, near", near6),
    ]
}

/// How many times each figure is measured; the table shows the lowest.
/// The machine is shared (2 cores, builds running beside), and
/// interference only ever adds time, so the minimum is the figure least
/// disturbed by it.
const TRIES: usize = 5;

/// The lowest of [`TRIES`] measurements of [`ns_per_packet`].
fn best_ns(prog: &Xdp, data: &[u8], repeat: u32, want: u32) -> anyhow::Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..TRIES {
        best = best.min(ns_per_packet(prog, data, repeat, want)?);
    }
    Ok(best)
}

/// Nanoseconds per run of `prog` on `data`, as the kernel measures it over
/// `repeat` runs; also checks the verdict.
fn ns_per_packet(prog: &Xdp, data: &[u8], repeat: u32, want: u32) -> anyhow::Result<f64> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(data),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    ensure!(
        r.return_value == want,
        "verdict {} instead of {want}",
        r.return_value
    );
    Ok(r.duration.as_nanos() as f64)
}

fn rule_set(n: u32) -> RuleSet {
    let mut set = RuleSet::default();
    for i in 0..n {
        set.block.insert(Cidr {
            addr: v4_rule(i).into(),
            len: 32,
        });
        set.block.insert(Cidr {
            addr: v6_rule(i).into(),
            len: 128,
        });
    }
    set
}

struct XdpFilter {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    rules: u32,
}

impl XdpFilter {
    fn load(max: u32) -> anyhow::Result<Self> {
        // One directory per instance: xdp-filter's maps are pinned by
        // name, and a second instance must not reuse the first one's.
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pin_dir =
            Path::new("/sys/fs/bpf").join(format!("kscope_bench_{}_{seq}", std::process::id()));
        std::fs::create_dir_all(&pin_dir)?;
        let obj = std::fs::read(XDP_FILTER_OBJ)
            .with_context(|| format!("{XDP_FILTER_OBJ} (install xdp-tools: cargo xtask setup)"))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries("filter_ipv4", max)
            .map_max_entries("filter_ipv6", max)
            .load(&obj)
            .context("loading xdp-filter's object with aya")?;
        let prog: &mut Xdp = ebpf
            .program_mut("xdpfilt_alw_all")
            .context("xdpfilt_alw_all missing")?
            .try_into()?;
        prog.load().context("loading xdpfilt_alw_all")?;
        Ok(Self {
            ebpf,
            pin_dir,
            rules: 0,
        })
    }

    fn prog(&self) -> anyhow::Result<&Xdp> {
        Ok(self
            .ebpf
            .program("xdpfilt_alw_all")
            .context("program")?
            .try_into()?)
    }

    /// Blocks exactly `sources` (the live flood's).
    fn block(&mut self, sources: &[IpAddr]) -> anyhow::Result<()> {
        let cpus = nr_cpus()?;
        let flag = || PerCpuValues::try_from(vec![XDP_FILTER_FLAG_SRC; cpus]);
        for src in sources {
            match src {
                IpAddr::V4(a) => {
                    let mut m: PerCpuHashMap<&mut MapData, u32, u64> = PerCpuHashMap::try_from(
                        self.ebpf.map_mut("filter_ipv4").context("filter_ipv4")?,
                    )?;
                    m.insert(u32::from_ne_bytes(a.octets()), flag()?, 0)?;
                }
                IpAddr::V6(a) => {
                    let mut m: PerCpuHashMap<&mut MapData, [u8; 16], u64> =
                        PerCpuHashMap::try_from(
                            self.ebpf.map_mut("filter_ipv6").context("filter_ipv6")?,
                        )?;
                    m.insert(a.octets(), flag()?, 0)?;
                }
            }
        }
        Ok(())
    }

    /// Grows the rule set to `n` exact source rules per family.
    fn grow(&mut self, n: u32) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(w, e)| anyhow::anyhow!("{w}: {e}"))?;
        let flag = || PerCpuValues::try_from(vec![XDP_FILTER_FLAG_SRC; cpus]);
        {
            let mut m4: PerCpuHashMap<&mut MapData, u32, u64> =
                PerCpuHashMap::try_from(self.ebpf.map_mut("filter_ipv4").context("filter_ipv4")?)?;
            for i in self.rules..n {
                m4.insert(u32::from_ne_bytes(v4_rule(i).octets()), flag()?, 0)?;
            }
        }
        let mut m6: PerCpuHashMap<&mut MapData, [u8; 16], u64> =
            PerCpuHashMap::try_from(self.ebpf.map_mut("filter_ipv6").context("filter_ipv6")?)?;
        for i in self.rules..n {
            m6.insert(v6_rule(i).octets(), flag()?, 0)?;
        }
        self.rules = n;
        Ok(())
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// A frame from rule 0's source: both filters must drop it.
fn hit_frame(v6: bool) -> Vec<u8> {
    let m = [2, 0, 0, 0, 0, 1];
    if v6 {
        frame::simple(
            m,
            m,
            v6_rule(0).into(),
            "2001:db8::2".parse().expect("ip"),
            L4::Tcp(80),
            &[],
        )
    } else {
        frame::simple(
            m,
            m,
            v4_rule(0).into(),
            "192.0.2.2".parse().expect("ip"),
            L4::Udp(9),
            &[0; 22],
        )
    }
}

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads BPF programs: run it as root");
    }
    let repeat: u32 = std::env::var("KSCOPE_BENCH_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let (pass, drop) = (2, 1);
    let frames = frames();

    let mut floor_obj = EbpfLoader::new().load(BENCH_XDP_OBJ)?;
    xdp_program(&mut floor_obj, PROG_BENCH_XDP)?.load()?;
    let floor = xdp_program(&mut floor_obj, PROG_BENCH_XDP)?;
    let floor_ns: Vec<f64> = frames
        .iter()
        .map(|(_, f)| best_ns(floor, f, repeat, pass))
        .collect::<Result<_, _>>()?;

    // `KSCOPE_BENCH_ONLY=limiter`: only the rate limiter's rows and fw top;
    // `=pipeline`: only the main table.
    let only = std::env::var("KSCOPE_BENCH_ONLY").unwrap_or_default();
    if only == "limiter" {
        limiter_rows(&frames[..2], &floor_ns, repeat)?;
        return top_refresh();
    }
    if only == "live" {
        return live_rows();
    }
    let mut ks = load_pipeline(Policy::Pass)?;
    // RuleMaps takes the maps out of the object: keep a descriptor of each
    // to read its memory later.
    let rule_map_fds = RULE_MAPS
        .iter()
        .map(|&name| Ok((name, map_fd(&ks, name)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut maps = RuleMaps::from_ebpf(&mut ks)?;
    let mut xf = XdpFilter::load(*COUNTS.last().unwrap_or(&1))?;

    if stats_on() {
        println!(
            "Warning: kernel.bpf_stats_enabled was 1 when this run started (something else on the \
             machine turned BPF statistics on): every program run below includes their two clock reads, \
             floor included, so the ratios to the floor are not comparable with \
             runs without them.\n"
        );
    }
    println!(
        "Per packet, BPF_PROG_TEST_RUN, repeat {repeat}; rules are exact source addresses (/32, /128) \
         in both families; the frames match no rule (every lookup runs, verdict pass). \
         \"near\" frames come from an address next to the rules.\n"
    );
    println!(
        "| rules per family | frame | floor ns | kscope ns | kscope / floor | xdp-filter ns | xdp-filter / floor |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let mut insert_rate = None;
    for n in COUNTS {
        let set = rule_set(n);
        let start = Instant::now();
        maps.load(&set)?;
        let took = start.elapsed();
        if n == 100_000 {
            insert_rate = Some((2 * n, took));
        }
        xf.grow(n)?;
        if n == 1 {
            // Both really filter: rule 0's source is dropped.
            for v6 in [false, true] {
                let f = hit_frame(v6);
                ns_per_packet(xdp_program(&mut ks, PROG_FW_XDP)?, &f, 1, drop)
                    .context("kscope did not drop a blocked source")?;
                ns_per_packet(xf.prog()?, &f, 1, drop)
                    .context("xdp-filter did not drop a blocked source")?;
            }
        }
        for (name, f) in &frames {
            if name.ends_with("near") && n < 1000 {
                continue;
            }
            // The floor again for each row, so a row's ratio compares
            // figures taken under the same load.
            let fl = best_ns(
                xdp_program(&mut floor_obj, PROG_BENCH_XDP)?,
                f,
                repeat,
                pass,
            )?;
            let k = best_ns(xdp_program(&mut ks, PROG_FW_XDP)?, f, repeat, pass)?;
            let x = best_ns(xf.prog()?, f, repeat, pass)?;
            println!(
                "| {n} | {name} | {fl:.0} | {k:.0} | {:.2} | {x:.0} | {:.2} |",
                k / fl,
                x / fl
            );
        }
    }
    if only == "pipeline" {
        return Ok(());
    }
    limiter_rows(&frames[..2], &floor_ns, repeat)?;
    top_refresh()?;
    live_rows()?;
    // Memory with 1M rules per family, as the kernel accounts it.
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let ks_mem: Vec<String> = rule_map_fds
        .iter()
        .map(|(n, fd)| format!("{n} {:.1} MiB", mib(map_memlock(fd.as_fd()).unwrap_or(0))))
        .collect();
    let mut xf_mem = Vec::new();
    for name in ["filter_ipv4", "filter_ipv6"] {
        let m = xf.ebpf.map(name).context("xdp-filter map")?;
        let fd = match m {
            aya::maps::Map::PerCpuHashMap(d) => d.fd().as_fd(),
            _ => bail!("{name} is not a per-CPU hash"),
        };
        xf_mem.push(format!("{name} {:.1} MiB", mib(map_memlock(fd)?)));
    }
    println!(
        "\nMemory at 1M rules per family ({} CPUs): kscope {}; xdp-filter {}.",
        aya::util::nr_cpus().map_or(0, |n| n),
        ks_mem.join(", "),
        xf_mem.join(", ")
    );
    if let Some((rules, took)) = insert_rate {
        println!(
            "\n`fw load` of {rules} rules (100k per family, into a set of 1k): {:.0?}, {:.0} rules/s (map writes only; the CLI adds parsing and process start).",
            took,
            f64::from(rules) / took.as_secs_f64()
        );
    }
    // Stats read: batch against key by key, on a hit-counter map holding
    // 100k entries, in a pipeline of its own (the million rules go first).
    std::mem::drop((maps, rule_map_fds, ks, xf));
    let mut hits_obj = load_pipeline(Policy::Pass)?;
    let mut hits: PerCpuHashMap<MapData, u32, u64> =
        PerCpuHashMap::try_from(hits_obj.take_map(MAP_HITS).context(MAP_HITS)?)?;
    fill_hits(&mut hits, 100_000)?;
    let time = |m: ReadMethod| -> anyhow::Result<(Duration, usize)> {
        let start = Instant::now();
        let h = read_hits(&hits, m)?;
        Ok((start.elapsed(), h.len()))
    };
    let (batch, nb) = time(ReadMethod::Batch)?;
    let (kbk, nk) = time(ReadMethod::KeyByKey)?;
    ensure!(nb == nk && nb == 100_000, "reads disagree: {nb} vs {nk}");
    println!(
        "\nReading 100k per-CPU hit counters: BPF_MAP_LOOKUP_BATCH {batch:.1?}, key by key {kbk:.1?} ({:.0}x).",
        kbk.as_secs_f64() / batch.as_secs_f64()
    );
    cli_figures()?;
    Ok(())
}

/// The rate limiter's cost: one limit per family covering every source
/// (0.0.0.0/0, ::/0), with a packet under it (a rate no test run reaches)
/// and over it (1 pps, burst 1: every run after the first is dropped),
/// against the same pipeline with no limit.
fn limiter_rows(frames: &[(&str, Vec<u8>)], floor_ns: &[f64], repeat: u32) -> anyhow::Result<()> {
    let mut ks = load_pipeline(Policy::Pass)?;
    let mut maps = RuleMaps::from_ebpf(&mut ks)?;
    let limited = |pps: u64, burst: u64, per: Per| -> anyhow::Result<RuleSet> {
        let spec = LimitSpec::new(pps, Some(burst), per, false)?;
        let mut set = RuleSet::default();
        for c in ["0.0.0.0/0", "::/0"] {
            set.add(Rule::Limit(c.parse()?, spec));
        }
        Ok(set)
    };
    let max_pps = u64::from(kscope_common::fw::LIMIT_MAX_PPS);
    let (source, prefix) = (Per::Source, Per::Prefix);
    let cases = [
        ("no limit", RuleSet::default(), 2),
        (
            "under a limit",
            limited(max_pps, u64::from(u32::MAX), source)?,
            2,
        ),
        ("over a limit", limited(1, 1, source)?, 1),
        (
            "under a --per prefix limit",
            limited(max_pps, u64::from(u32::MAX), prefix)?,
            2,
        ),
        ("over a --per prefix limit", limited(1, 1, prefix)?, 1),
    ];
    println!(
        "\nRate limiter and source tracking, per packet (BPF_PROG_TEST_RUN, repeat {repeat}; one \
         limit per family covering the frame's source; clock: {}):\n",
        if kscope::firewall::jiffy_ns().is_some() {
            "bpf_jiffies64"
        } else {
            "bpf_ktime_get_ns"
        }
    );
    println!("| frame | case | floor ns | kscope ns | kscope / floor | added ns |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut base = vec![0.0; frames.len()];
    for (case, set, want) in cases {
        maps.load(&set)?;
        for (i, ((name, f), fl)) in frames.iter().zip(floor_ns).enumerate() {
            let k = best_ns(xdp_program(&mut ks, PROG_FW_XDP)?, f, repeat, want)?;
            if case == "no limit" {
                base[i] = k;
            }
            println!(
                "| {name} | {case} | {fl:.0} | {k:.0} | {:.2} | {:+.0} |",
                k / fl,
                k - base[i]
            );
        }
    }
    // Source tracking (`fw top`): no rules, one source, its entry hot.
    let sizes = Sizes {
        track_sources: 65_536,
        ..Sizes::default()
    };
    let mut tracked = load_pipeline_sized(Policy::Pass, sizes)?;
    for (i, ((name, f), fl)) in frames.iter().zip(floor_ns).enumerate() {
        let k = best_ns(xdp_program(&mut tracked, PROG_FW_XDP)?, f, repeat, 2)?;
        println!(
            "| {name} | sources tracked, no limit | {fl:.0} | {k:.0} | {:.2} | {:+.0} |",
            k / fl,
            k - base[i]
        );
    }
    Ok(())
}

/// `fw top`'s refresh with 100,000 sources tracked: one batch read of the
/// per-CPU table and the ranking, as each refresh does.
fn top_refresh() -> anyhow::Result<()> {
    const SOURCES: u32 = 100_000;
    let sizes = Sizes {
        track_sources: 131_072,
        ..Sizes::default()
    };
    let mut ks = load_pipeline_sized(Policy::Pass, sizes)?;
    let map = ks.take_map(MAP_SOURCES).context(MAP_SOURCES)?;
    let mut table: PerCpuHashMap<MapData, SourceKey, SourceStats> = PerCpuHashMap::try_from(map)?;
    let cpus = nr_cpus()?;
    for i in 0..SOURCES {
        let mut key = SourceKey {
            family: 6,
            addr: [0; 16],
        };
        key.addr[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        key.addr[12..].copy_from_slice(&i.to_be_bytes());
        let v = SourceStats {
            packets: u64::from(i % 977) + 1,
            bytes: 100 * (u64::from(i % 977) + 1),
            ..SourceStats::default()
        };
        table.insert(key, PerCpuValues::try_from(vec![v; cpus])?, 0)?;
    }
    let data: &MapData = table.map();
    let mut best = Duration::MAX;
    let mut before = kscope::firewall::top::read(data)?;
    for _ in 0..5 {
        let start = Instant::now();
        let now = kscope::firewall::top::read(data)?;
        let rows = kscope::firewall::top::rank(&before, &now, 1.0, By::Pps, 20);
        best = best.min(start.elapsed());
        ensure!(
            now.len() == SOURCES as usize && rows.len() == 20,
            "read {} sources",
            now.len()
        );
        before = now;
    }
    println!(
        "\n`fw top` refresh with {SOURCES} sources tracked ({cpus} CPUs): {best:.1?} \
         (a batch read of the per-CPU table and the ranking; best of 5)."
    );
    Ok(())
}

/// True when BPF run-time statistics are on for every program (the
/// sysctl, or another process holding BPF_ENABLE_STATS).
fn stats_on() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// How long each program takes the flood in [`live_rows`].
const LIVE_SECS: f64 = 3.0;

/// The flood's sources: documentation addresses, every one blocked.
fn live_sources() -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = (1..=4)
        .map(|i| IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)))
        .collect();
    v.extend((1..=4).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i))));
    v
}

/// The live comparison: a veth pair between two namespaces of the
/// benchmark's own, one thread in `a` flooding UDP from blocked sources
/// (both families) for [`LIVE_SECS`], and on `b`'s end, in turn: an
/// XDP_DROP-only program (the baseline), kscope (`fw attach` and the
/// sources blocked, the whole pipeline) and xdp-filter (its
/// `xdpfilt_alw_all` holding the same rules). Per program, from the
/// kernel's own statistics (BPF_ENABLE_STATS on for the run): packets
/// dropped per second (every run drops) and the average ns per run
/// (run_time_ns / run_cnt; kscope's tail-called filters count in its
/// entry program's time).
fn live_rows() -> anyhow::Result<()> {
    use aya::programs::XdpMode;
    use kscope_lab::netlab::{Lab, lab_frame};
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| anyhow::anyhow!("BPF_ENABLE_STATS (Linux 5.8+): {e}"))?;
    let lab = Lab::new("flood")?;
    lab.up()?;
    let iface = lab.iface_b.clone();
    let flood: Vec<Vec<u8>> = live_sources()
        .into_iter()
        .map(|src| lab_frame(src, L4::Udp(9), 0))
        .collect();
    // Driver mode where veth has it (it does from 4.19), as an operator
    // would attach; generic mode otherwise.
    let mut floor_obj = EbpfLoader::new().load(BENCH_XDP_OBJ)?;
    xdp_program(&mut floor_obj, PROG_BENCH_XDP_DROP)?.load()?;
    let mut attach_floor = |mode| -> anyhow::Result<_> {
        let p = xdp_program(&mut floor_obj, PROG_BENCH_XDP_DROP)?;
        Ok(lab.b.run(|| p.attach(&iface, mode))?)
    };
    let (mode, kmode, mode_name) = match attach_floor(XdpMode::Driver)? {
        Ok(id) => (
            (XdpMode::Driver, id),
            kscope::firewall::Mode::Native,
            "driver",
        ),
        Err(_) => (
            (XdpMode::Skb, attach_floor(XdpMode::Skb)??),
            kscope::firewall::Mode::Skb,
            "generic (skb)",
        ),
    };
    let (mode, floor_link) = mode;
    let measure = |prog_info: &dyn Fn() -> anyhow::Result<aya::programs::ProgramInfo>,
                   name: &str|
     -> anyhow::Result<(f64, f64, u64)> {
        let before = prog_info()?;
        let sent = lab.flood(&flood, LIVE_SECS)?;
        let after = prog_info()?;
        let runs = after.run_count() - before.run_count();
        let ns = (after.run_time() - before.run_time()).as_nanos() as f64;
        ensure!(runs > 0, "{name} saw none of the flood");
        Ok((runs as f64 / LIVE_SECS, ns / runs as f64, sent))
    };
    let mut rows = Vec::new();
    {
        let floor: &Xdp = floor_obj
            .program(PROG_BENCH_XDP_DROP)
            .context("floor program")?
            .try_into()?;
        let info = || Ok(floor.info()?);
        rows.push(("XDP_DROP only (baseline)", measure(&info, "baseline")?));
        xdp_program(&mut floor_obj, PROG_BENCH_XDP_DROP)?.detach(floor_link)?;
    }
    {
        lab.b
            .run(|| kscope::firewall::attach(&iface, kmode, Policy::Pass))??;
        let _detach = Detach(&iface);
        let dir = kscope::firewall::pin_dir(&iface);
        let mut maps = RuleMaps::from_pins(&dir)?;
        let mut set = RuleSet::default();
        for src in live_sources() {
            set.block.insert(Cidr {
                addr: src,
                len: if src.is_ipv4() { 32 } else { 128 },
            });
        }
        maps.load(&set)?;
        let entry = dir.join(PROG_FW_XDP);
        let info = || Ok(aya::programs::ProgramInfo::from_pin(&entry)?);
        let blocked = || -> anyhow::Result<u64> {
            let map = MapData::from_pin(dir.join(MAP_REASONS))?;
            let arr: PerCpuArray<MapData, Counter> = PerCpuArray::try_from(Map::PerCpuArray(map))?;
            let mut n = 0;
            for family in [Family::Ipv4, Family::Ipv6] {
                let v = arr.get(&reason_index(family, Reason::BlockedSrc), 0)?;
                n += v.iter().map(|c| c.packets).sum::<u64>();
            }
            Ok(n)
        };
        let (runs_before, blocked_before) = (info()?.run_count(), blocked()?);
        rows.push(("kscope", measure(&info, "kscope")?));
        // Every packet kscope saw, it dropped as a blocked source.
        let (runs, dropped) = (
            info()?.run_count() - runs_before,
            blocked()? - blocked_before,
        );
        ensure!(
            runs == dropped,
            "kscope ran {runs} times but dropped {dropped} as blocked"
        );
    }
    {
        let mut xf = XdpFilter::load(1024)?;
        xf.block(&live_sources())?;
        let prog = xf.prog()?;
        for f in &flood {
            ns_per_packet(prog, f, 1, 1).context("xdp-filter did not drop the flood")?;
        }
        let prog: &mut Xdp = xf
            .ebpf
            .program_mut("xdpfilt_alw_all")
            .context("program")?
            .try_into()?;
        let id = lab.b.run(|| prog.attach(&iface, mode))??;
        let prog: &Xdp = xf
            .ebpf
            .program("xdpfilt_alw_all")
            .context("program")?
            .try_into()?;
        let info = || Ok(prog.info()?);
        rows.push(("xdp-filter", measure(&info, "xdp-filter")?));
        let prog: &mut Xdp = xf
            .ebpf
            .program_mut("xdpfilt_alw_all")
            .context("program")?
            .try_into()?;
        prog.detach(id)?;
    }
    println!(
        "\nLive veth flood ({mode_name} XDP on one end of a veth pair between two namespaces; \
         one sender thread, UDP from 8 blocked sources of both families, {LIVE_SECS} s per program; \
         figures from the kernel's BPF statistics):\n"
    );
    println!(
        "| program | sent | dropped/s | dropped/s vs baseline | ns per packet | ns vs baseline |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let (base_rate, base_ns) = (rows[0].1.0, rows[0].1.1);
    for (name, (rate, ns, sent)) in &rows {
        println!(
            "| {name} | {sent} | {rate:.0} | {:.2} | {ns:.1} | {:.2} |",
            rate / base_rate,
            ns / base_ns
        );
    }
    Ok(())
}

/// A duplicate of the descriptor of map `name` in `ebpf`.
fn map_fd(ebpf: &Ebpf, name: &str) -> anyhow::Result<OwnedFd> {
    let data = match ebpf.map(name).with_context(|| format!("{name} missing"))? {
        Map::LpmTrie(d) | Map::Array(d) | Map::PerCpuHashMap(d) => d,
        _ => bail!("{name}: not a trie, an array or a per-CPU hash"),
    };
    Ok(data.fd().as_fd().try_clone_to_owned()?)
}

fn nr_cpus() -> anyhow::Result<usize> {
    aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))
}

/// Gives hit counters `0..n` a count of 1 on every CPU, as if that many
/// rules had been hit.
fn fill_hits(hits: &mut PerCpuHashMap<MapData, u32, u64>, n: u32) -> anyhow::Result<()> {
    let cpus = nr_cpus()?;
    for id in 0..n {
        hits.insert(id, PerCpuValues::try_from(vec![1u64; cpus])?, 0)?;
    }
    Ok(())
}

/// The hit counts summed over CPUs, read the way `method` says: the read
/// `fw stats` and the daemon do (`RuleMaps::read_hits`), with the method
/// forced instead of chosen.
fn read_hits(
    hits: &PerCpuHashMap<MapData, u32, u64>,
    method: ReadMethod,
) -> anyhow::Result<HashMap<u32, u64>> {
    let ops = MapFdOps::new(hits.map().fd().as_fd(), 4, 8, nr_cpus()?);
    let (d, _) = dump_map(&ops, Some(method)).context("reading FW_HITS")?;
    let mut out = HashMap::with_capacity(d.len);
    for i in 0..d.len {
        let (k, v) = d.entry(&ops, i);
        let sum = v
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
            .fold(0u64, u64::wrapping_add);
        out.insert(u32::from_ne_bytes(k.try_into()?), sum);
    }
    Ok(out)
}

/// End to end through the CLI, as a user runs it: `kscope fw load` of a
/// 100k-rule file and single-rule `kscope fw block`, on an interface in a
/// private lab namespace (no traffic is sent).
fn cli_figures() -> anyhow::Result<()> {
    use std::process::Command;
    let exe = std::env::current_exe()?;
    let kscope = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("kscope"))
        .context("locating the kscope binary")?;
    ensure!(
        kscope.exists(),
        "{} missing: cargo build --release --bin kscope",
        kscope.display()
    );
    let lab = kscope_lab::netlab::Lab::new("bench")?;
    let iface = lab.iface_b.clone();
    lab.b
        .run(|| kscope::firewall::attach(&iface, kscope::firewall::Mode::Skb, Policy::Pass))??;
    // Declared after the lab, so it detaches before the lab goes.
    let _detach = Detach(&iface);
    let run = |args: &[&str]| -> anyhow::Result<Duration> {
        let start = Instant::now();
        let out = Command::new(&kscope)
            .args(args)
            .env("KSCOPE_LOG", "warn")
            .output()?;
        let took = start.elapsed();
        ensure!(
            out.status.success(),
            "kscope {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(took)
    };
    let file = std::env::temp_dir().join(format!("kscope-bench-{}.rules", std::process::id()));
    let mut text = String::new();
    for i in 0..50_000 {
        text.push_str(&format!("block {}\nblock {}\n", v4_rule(i), v6_rule(i)));
    }
    std::fs::write(&file, text)?;
    let path = file.to_str().context("utf-8 path")?;
    let result = (|| -> anyhow::Result<()> {
        let load = run(&["fw", "load", "--iface", &iface, path])?;
        let reload = run(&["fw", "load", "--iface", &iface, path])?;
        let n = 20u32;
        let mut block = Duration::ZERO;
        for i in 0..n {
            block += run(&[
                "fw",
                "block",
                "--iface",
                &iface,
                &v4_rule(200_000 + i).to_string(),
            ])?;
        }
        let list = run(&["fw", "rules", "--iface", &iface])?;
        println!(
            "\nThrough the CLI: `kscope fw load` of 100k rules (50k per family) {load:.0?} into an empty set \
             ({:.0} rules/s), {reload:.0?} replacing the same 100k; one `kscope fw block` process per rule \
             {:.1?} each; `kscope fw rules` listing 100k rules {list:.0?}.",
            100_000.0 / load.as_secs_f64(),
            block / n
        );
        Ok(())
    })();
    let _ = std::fs::remove_file(&file);
    result
}

/// Detaches kscope from an interface on drop, so every way out of
/// [`cli_figures`] (an error, a panic) removes the program and its pins:
/// deleting the lab's namespaces would take the attachment, not the pins.
struct Detach<'a>(&'a str);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        if let Err(e) = kscope::firewall::detach(self.0) {
            eprintln!("warning: detaching from {}: {e}", self.0);
        }
    }
}
