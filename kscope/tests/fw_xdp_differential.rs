//! Differential test of the firewall pipeline: the kernel programs (run with
//! BPF_PROG_TEST_RUN through aya's `TestRun`, tail calls included) against
//! the plain-Rust reference classifier (`kscope::firewall::reference`), on
//! seeded random rule sets and frames, valid and malformed. Needs root.
//!
//! Rate limits are modelled, not skipped: each bucket is the kernel's
//! virtual clock (GCRA, `kscope_common::fw::Limit`), advanced with the
//! clock the programs read (jiffies, read through the bench object's
//! `bench_jiffies` program, times the tick `kscope::firewall::jiffy_ns`
//! reports; CLOCK_MONOTONIC, `ktime_get_ns`, when there is no tick) read
//! just before and just after each test run. Where the verdict depends on exactly when in
//! that window the program read the clock, the kernel's answer is taken
//! and checked to be one of the two, and the model follows it.
//!
//! Reproduce a failure with `KSCOPE_SEED=<seed printed> cargo test --test
//! fw_xdp_differential`. `KSCOPE_DIFF_FRAMES` changes the frame count
//! (120,000 on the host, 30,000 in the VM suite).

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions},
};
use common::require_root;
use kscope::firewall::{
    Policy, load_pipeline,
    maps::{Edit, RuleMaps},
    reference,
    rules::{Cidr, LimitSpec, Per, PortSpec, Rule, RuleSet, SrcList},
    xdp_program,
};
use kscope_common::fw::{
    Action, Counter, Family, LIMIT_CLOCK_SCALE, MAP_REASONS, MAX_IPV6_EXT_HDRS, MAX_VLAN_TAGS,
    N_REASON_COUNTERS, PORT_TCP, PORT_UDP, PROG_BENCH_JIFFIES, PROG_FW_XDP, Reason, reason_index,
};
use kscope_lab::frame::*;

/// splitmix64: small, seedable, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

const MAC: [u8; 6] = [2, 0x6b, 0x73, 0, 0, 9];
/// Rules and frames use documentation prefixes only; few distinct hosts, so
/// rules overlap and frames hit them.
const V4_BASES: [[u8; 3]; 3] = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];
const PORTS: [u16; 8] = [0, 22, 53, 80, 443, 8080, 65535, 1024];

fn v4(rng: &mut Rng) -> Ipv4Addr {
    let b = rng.pick(&V4_BASES);
    let host = if rng.chance(80) {
        rng.below(16) as u8
    } else {
        rng.next() as u8
    };
    Ipv4Addr::new(b[0], b[1], b[2], host)
}

fn v6(rng: &mut Rng) -> Ipv6Addr {
    let host = if rng.chance(80) {
        rng.below(16) as u16
    } else {
        rng.next() as u16
    };
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        rng.below(3) as u16,
        rng.below(3) as u16,
        0,
        0,
        0,
        host,
    )
}

fn cidr(rng: &mut Rng, is_v4: bool) -> Cidr {
    // Short prefixes decide every packet of the family; keep them rare.
    let (octets, len) = if is_v4 {
        let len = if rng.chance(4) {
            rng.pick(&[0u8, 8, 16])
        } else {
            rng.pick(&[23u8, 24, 24, 28, 30, 31, 32, 32, 32])
        };
        (v4(rng).octets().to_vec(), len)
    } else {
        let len = if rng.chance(4) {
            rng.pick(&[0u8, 16, 32])
        } else {
            rng.pick(&[40u8, 48, 63, 64, 100, 127, 128, 128, 128])
        };
        (v6(rng).octets().to_vec(), len)
    };
    Cidr::from_octets(&octets, len).expect("valid prefix")
}

fn rule_set(rng: &mut Rng) -> RuleSet {
    let mut set = RuleSet::default();
    for (list, max) in [(SrcList::Allow, 4), (SrcList::Block, 12)] {
        for is_v4 in [true, false] {
            for _ in 0..rng.below(max) {
                set.add(Rule::Src(list, cidr(rng, is_v4)));
            }
        }
    }
    for _ in 0..rng.below(4) {
        let lo = rng.pick(&PORTS);
        let hi = if rng.chance(70) {
            lo
        } else {
            lo.saturating_add(rng.below(600) as u16)
        };
        let bits = rng.pick(&[PORT_TCP, PORT_UDP, PORT_TCP | PORT_UDP]);
        set.add(Rule::Port(PortSpec { lo, hi, bits }));
    }
    for is_v4 in [true, false] {
        for _ in 0..1 + rng.below(4) {
            // Slow rates run out (the generator's few hosts send many
            // frames), fast ones put the verdict on a knife's edge.
            let spec = LimitSpec::new(
                rng.pick(&[1, 50, 2_000, 200_000]),
                Some(rng.pick(&[1, 3, 40])),
                if rng.chance(30) {
                    Per::Prefix
                } else {
                    Per::Source
                },
                rng.chance(30),
            )
            .expect("valid limit");
            set.add(Rule::Limit(cidr(rng, is_v4), spec));
        }
    }
    set
}

/// The bench object: its `bench_jiffies` program reads the programs'
/// jiffies clock for the model.
static BENCH_XDP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_xdp"));

/// The rate limiter's clock as the programs read it, in bucket units: with
/// a tick (`kscope::firewall::jiffy_ns`), jiffies times the tick, the
/// jiffies read by running `bench_jiffies` (their low 32 bits, extended
/// here); without, CLOCK_MONOTONIC (the kernel's `bpf_ktime_get_ns()`).
struct Clock {
    jiffies: Option<(Ebpf, u64)>,
    /// The last low 32 bits seen and the wraps counted so far.
    last: u32,
    high: u64,
}

impl Clock {
    fn new() -> Clock {
        let jiffies = kscope::firewall::jiffy_ns().map(|tick| {
            let mut obj = aya::EbpfLoader::new()
                .load(BENCH_XDP_OBJ)
                .expect("load the bench object");
            xdp_program(&mut obj, PROG_BENCH_JIFFIES)
                .expect("bench_jiffies")
                .load()
                .expect("load bench_jiffies");
            (obj, tick)
        });
        Clock {
            jiffies,
            last: 0,
            high: 0,
        }
    }

    fn now(&mut self) -> u64 {
        let Some((obj, tick)) = &mut self.jiffies else {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid timespec to write.
            let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            assert_eq!(r, 0, "clock_gettime");
            return (ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64) * LIMIT_CLOCK_SCALE;
        };
        let tick = *tick;
        let lo = xdp_program(obj, PROG_BENCH_JIFFIES)
            .expect("bench_jiffies")
            .test_run(TestRunOptions {
                data_in: Some(&[0u8; 64]),
                ..TestRunOptions::default()
            })
            .expect("run bench_jiffies")
            .return_value;
        if lo < self.last {
            self.high += 1 << 32;
        }
        self.last = lo;
        (self.high + u64::from(lo)) * tick * LIMIT_CLOCK_SCALE
    }
}

/// One token bucket as the kernel keeps it: a virtual clock, known to lie
/// in `lo..=hi` because the kernel read its clock somewhere in a window.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    lo: u64,
    hi: u64,
}

/// What a limit does to a frame that reaches it at a time in
/// `before..=after`: `Some(true)` passes for sure, `Some(false)` drops for
/// sure, `None` depends on the exact time.
fn bucket_says(b: Option<Bucket>, spec: &LimitSpec, before: u64, after: u64) -> Option<bool> {
    let k = spec.kernel();
    // Passes iff clock - now <= tolerance - cost (a new bucket's clock is
    // now: it always passes).
    let Some(b) = b else { return Some(true) };
    let room = k.tolerance - k.cost;
    if b.hi.saturating_sub(before) <= room {
        Some(true)
    } else if b.lo.saturating_sub(after) > room {
        Some(false)
    } else {
        None
    }
}

/// The bucket after a frame passed at a time in `before..=after`.
fn spend(b: Option<Bucket>, spec: &LimitSpec, before: u64, after: u64) -> Bucket {
    let cost = spec.kernel().cost;
    let (lo, hi) = b.map_or((before, after), |b| (b.lo.max(before), b.hi.max(after)));
    Bucket {
        lo: lo + cost,
        hi: hi + cost,
    }
}

/// A random frame, valid or malformed in one of the ways the filters must
/// survive.
/// A stack of VLAN tags: mostly none, sometimes up to and past the walk
/// bound, with priority tags (VLAN id 0, which Linux strips without a VLAN
/// device) and other ids.
fn vlan_tags(rng: &mut Rng) -> Vec<(u16, u16)> {
    let n = rng.pick(&[
        0usize,
        0,
        0,
        0,
        0,
        0,
        1,
        1,
        2,
        3,
        MAX_VLAN_TAGS - 1,
        MAX_VLAN_TAGS,
        MAX_VLAN_TAGS + 1,
        MAX_VLAN_TAGS + 2,
    ]);
    (0..n)
        .map(|_| {
            let tci = if rng.chance(50) { 0 } else { rng.next() as u16 };
            (rng.pick(&[ETH_P_8021Q, ETH_P_8021AD]), tci)
        })
        .collect()
}

fn frame(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(4) {
        let random = rng.next() as u16 | 0x0600;
        let ethertype = rng.pick(&[ETH_P_ARP, 0x88cc, 0x9000, random]);
        let tags = if rng.chance(30) {
            vlan_tags(rng)
        } else {
            Vec::new()
        };
        let mut f = eth_tci(MAC, MAC, &tags, ethertype);
        f.extend((0..rng.below(40)).map(|_| rng.next() as u8));
        return f;
    }
    let is_v6 = rng.chance(50);
    let tags = vlan_tags(rng);
    let mut f = eth_tci(MAC, MAC, &tags, if is_v6 { ETH_P_IPV6 } else { ETH_P_IP });
    let mut cuts = vec![f.len()];
    if !tags.is_empty() {
        // Inside the tag stack.
        cuts.push(14 + rng.below(4 * tags.len() as u64) as usize);
    }
    let l3 = f.len();
    let payload: Vec<u8> = (0..rng.below(24)).map(|_| rng.next() as u8).collect();
    let (proto, l4) = match rng.below(10) {
        0..=3 => {
            let mut h = tcp(rng.next() as u16, rng.pick(&PORTS));
            // SYN, SYN+ACK, ACK, SYN+FIN, none.
            h[13] = rng.pick(&[0x02, 0x02, 0x12, 0x10, 0x03, 0x00]);
            (PROTO_TCP, h)
        }
        4..=6 => (
            PROTO_UDP,
            udp(rng.next() as u16, rng.pick(&PORTS), payload.len()),
        ),
        7 | 8 => {
            let mut h = echo(is_v6, 1, 2);
            if is_v6 && rng.chance(50) {
                // Neighbor Discovery and its neighbours in the type space.
                h[0] = rng.pick(&[1, 129, 132, 133, 134, 135, 136, 137, 138]);
            }
            (if is_v6 { PROTO_ICMPV6 } else { PROTO_ICMP }, h)
        }
        _ => (rng.pick(&[47, PROTO_NONE, 132]), Vec::new()),
    };
    if is_v6 {
        let n_ext = rng.pick(&[
            0usize,
            0,
            0,
            1,
            1,
            2,
            3,
            MAX_IPV6_EXT_HDRS,
            MAX_IPV6_EXT_HDRS + 1,
            MAX_IPV6_EXT_HDRS + 2,
        ]);
        let kinds: Vec<u8> = (0..n_ext)
            .map(|_| rng.pick(&[PROTO_HOPOPTS, PROTO_ROUTING, PROTO_DSTOPTS, PROTO_FRAGMENT]))
            .collect();
        let mut exts = Vec::new();
        let mut ext_ends = Vec::new();
        for (i, &k) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(proto);
            let h = if k == PROTO_FRAGMENT {
                let off = if rng.chance(20) {
                    1 + rng.below(100) as u16
                } else {
                    0
                };
                frag_header(next, off, rng.chance(50))
            } else {
                ext_header(next, rng.below(3) as u8)
            };
            exts.extend(h);
            ext_ends.push(exts.len());
        }
        let first = kinds.first().copied().unwrap_or(proto);
        let (src, dst) = (v6(rng), v6(rng));
        let mut h = ipv6(src, dst, first, exts.len() + l4.len() + payload.len());
        if rng.chance(50) {
            h[7] = 255;
        }
        if rng.chance(2) {
            h[0] = rng.pick(&[0x40, 0x00, 0xf0]);
        }
        f.extend(h);
        cuts.extend([l3 + 1, l3 + 8, l3 + 24, l3 + 39, l3 + 40]);
        let base = f.len();
        f.extend(exts);
        cuts.extend(ext_ends.iter().flat_map(|&e| [base + e - 1, base + e]));
    } else {
        let opts: Vec<u8> = if rng.chance(20) {
            (0..rng.pick(&[4usize, 8, 40])).map(|_| 1).collect()
        } else {
            Vec::new()
        };
        let (src, dst) = (v4(rng), v4(rng));
        let mut h = ipv4(src, dst, proto, &opts, l4.len() + payload.len());
        if rng.chance(10) {
            // A later fragment (offset in 8-byte units, MF maybe).
            let off = 1 + rng.below(0x1000) as u16;
            h[6..8].copy_from_slice(&(off | if rng.chance(50) { 0x2000 } else { 0 }).to_be_bytes());
        }
        if rng.chance(5) {
            // Bad IHL: anything from 0 to 15 words.
            h[0] = 0x40 | rng.below(16) as u8;
        }
        if rng.chance(2) {
            h[0] = (h[0] & 0x0f) | rng.pick(&[0x60, 0x00, 0x50]);
        }
        f.extend(h);
        cuts.extend([
            l3 + 1,
            l3 + 12,
            l3 + 16,
            l3 + 19,
            l3 + 20,
            f.len() - 1,
            f.len(),
        ]);
    }
    let l4_at = f.len();
    f.extend(l4);
    cuts.extend([
        l4_at + 1,
        l4_at + 3,
        l4_at + 4,
        l4_at + 7,
        l4_at + 8,
        l4_at + 19,
        l4_at + 20,
    ]);
    f.extend(payload);
    if rng.chance(20) {
        // Truncate at (or just around) a header boundary; XDP test runs need
        // at least an Ethernet header (14 bytes).
        let cut = rng.pick(&cuts).max(14);
        f.truncate(cut.min(f.len()));
    }
    f
}

fn reasons(ebpf: &Ebpf) -> Vec<u64> {
    let map = ebpf.map(MAP_REASONS).expect("FW_REASONS in the object");
    let arr: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map).expect("per-CPU array");
    (0..N_REASON_COUNTERS)
        .map(|i| {
            arr.get(&i, 0)
                .expect("read FW_REASONS")
                .iter()
                .map(|c| c.packets)
                .sum()
        })
        .collect()
}

/// Edits that turn `from` into `to` (ports: whole-table replacement by
/// clearing what `to` lacks and setting what it has).
fn edits(from: &RuleSet, to: &RuleSet) -> Vec<Edit> {
    let mut e = Vec::new();
    for (list, a, b) in [
        (SrcList::Allow, &from.allow, &to.allow),
        (SrcList::Block, &from.block, &to.block),
    ] {
        e.extend(a.difference(b).map(|&c| Edit::Remove(Rule::Src(list, c))));
        e.extend(b.difference(a).map(|&c| Edit::Add(Rule::Src(list, c))));
    }
    for (c, spec) in &from.limits {
        if !to.limits.contains_key(c) {
            e.push(Edit::Remove(Rule::Limit(*c, *spec)));
        }
    }
    for (c, spec) in &to.limits {
        if from.limits.get(c) != Some(spec) {
            e.push(Edit::Add(Rule::Limit(*c, *spec)));
        }
    }
    for (port, (&was, &now)) in from.ports.iter().zip(&to.ports).enumerate() {
        let p = port as u16;
        if was & !now != 0 {
            e.push(Edit::Remove(Rule::Port(PortSpec {
                lo: p,
                hi: p,
                bits: was & !now,
            })));
        }
        if now & !was != 0 {
            e.push(Edit::Add(Rule::Port(PortSpec {
                lo: p,
                hi: p,
                bits: now & !was,
            })));
        }
    }
    e
}

#[test]
fn kernel_programs_agree_with_the_reference_classifier_on_random_frames() {
    require_root();
    let seed = std::env::var("KSCOPE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(kscope::sys::unix_now_ns);
    // The host searches deep; under emulation each VM kernel checks a
    // quarter as many (still every reason, see the end), since the programs
    // are the same and minutes per kernel add up.
    let default_frames = if cfg!(feature = "vm-suite") {
        30_000
    } else {
        120_000
    };
    let total: usize = std::env::var("KSCOPE_DIFF_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_frames);
    eprintln!("differential test: seed {seed} ({total} frames); rerun with KSCOPE_SEED={seed}");
    // The model keeps one bucket per source, as one CPU sees it: a CPU's
    // lease (tokens drawn ahead, `kscope_common::fw::Lease`) is given back
    // when that CPU next draws, so on one CPU the kernel passes exactly what
    // the model does. Across CPUs another CPU's lease holds tokens back for
    // a while; `a_source_on_two_cpus_gets_its_whole_bucket_and_no_more`
    // checks that case.
    // SAFETY: a plain system call without arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    pin_to_cpu(u32::try_from(cpu).expect("sched_getcpu"));
    let mut rng = Rng(seed);
    let mut clock = Clock::new();
    let start = Instant::now();
    let mut tally: BTreeMap<&'static str, u64> = BTreeMap::new();
    let rounds = 24;
    let per_round = total.div_ceil(rounds);
    let mut done = 0usize;
    for (policy, default_drop) in [(Policy::Pass, false), (Policy::Drop, true)] {
        let mut ebpf = load_pipeline(policy).expect("load the pipeline");
        let mut maps = RuleMaps::from_ebpf(&mut ebpf).expect("rule maps");
        let mut current = RuleSet::default();
        // Buckets by limit rule and source (None: the whole prefix).
        let mut buckets: HashMap<(Cidr, LimitSpec, Option<IpAddr>), Bucket> = HashMap::new();
        for round in 0..rounds / 2 {
            let set = rule_set(&mut rng);
            // Alternate the two ways of changing rules: atomic load and live edits.
            if round % 2 == 0 {
                maps.load(&set).expect("load rule set");
            } else {
                maps.apply(&edits(&current, &set)).expect("apply edits");
            }
            assert_eq!(
                maps.rule_set().expect("read back"),
                set,
                "seed {seed}: the maps do not hold the set just written"
            );
            // A limit that stays the same keeps its buckets; any other
            // change starts new ones.
            buckets.retain(|(c, spec, _), _| set.limits.get(c) == Some(spec));
            current = set;
            let before = reasons(&ebpf);
            let mut want = vec![0u64; N_REASON_COUNTERS as usize];
            for _ in 0..per_round {
                let f = frame(&mut rng);
                let verdict = reference::judge(&f, &current, default_drop);
                let family = verdict.family;
                let t0 = clock.now();
                let got = run_fw_xdp(&mut ebpf, &f)
                    .unwrap_or_else(|e| panic!("seed {seed}: test run failed: {e}"));
                let t1 = clock.now();
                let reason = match verdict.limit {
                    None => verdict.reason,
                    Some(l) => {
                        let key = (l.cidr, l.spec, l.source);
                        let b = buckets.get(&key).copied();
                        let passes = match bucket_says(b, &l.spec, t0, t1) {
                            Some(p) => p,
                            // On the edge: the kernel decided. With the
                            // verdicts apart, its verdict says which way;
                            // with both drops, its reason counters do (every
                            // frame before this one is in `want`).
                            None if verdict.reason.action() != Reason::RateLimited.action() => {
                                got == verdict.reason.action() as u32
                            }
                            None => {
                                let i = reason_index(family, Reason::RateLimited) as usize;
                                reasons(&ebpf)[i] - before[i] == want[i]
                            }
                        };
                        if passes {
                            buckets.insert(key, spend(b, &l.spec, t0, t1));
                            verdict.reason
                        } else {
                            Reason::RateLimited
                        }
                    }
                };
                assert_eq!(
                    got,
                    reason.action() as u32,
                    "seed {seed}, {policy:?} round {round}: kernel verdict {} but the reference says {:?}/{:?} ({}) for frame {:02x?} under rules:\n{:?}",
                    got,
                    family,
                    reason,
                    reason.action().name(),
                    f,
                    current
                );
                want[reason_index(family, reason) as usize] += 1;
                *tally.entry(reason.name()).or_default() += 1;
                done += 1;
            }
            // The kernel must also have counted every frame under the same
            // family and reason as the reference.
            let after = reasons(&ebpf);
            let got: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            assert_eq!(
                got, want,
                "seed {seed}, default {policy:?}, round {round}: reason counters differ (index = family * N_REASONS + reason)"
            );
            // Straight to stderr, past libtest's capture: under emulation a
            // run takes minutes, and the VM harness takes a silent console
            // for a hang.
            let _ = writeln!(
                std::io::stderr(),
                "differential test: {done}/{total} frames agree so far ({:.0?})",
                start.elapsed()
            );
        }
    }
    eprintln!(
        "differential test: {done} frames, 0 mismatches, {:.1?}; by reason: {tally:?}",
        start.elapsed()
    );
    assert!(done >= 100_000 || total < 100_000);
    // The generator must actually reach every outcome, or the test proves little.
    for r in Reason::ALL {
        if r != Reason::Unfiltered {
            assert!(
                tally.get(r.name()).copied().unwrap_or(0) > 0,
                "seed {seed}: no frame got {}",
                r.name()
            );
        }
    }
}

/// Defect: a third VLAN tag made any frame `other`/`not-ip`, passed,
/// although Linux strips any number of tags and delivers the IP packet.
/// Exact verdicts and reasons for every depth from 0 to one past the walk
/// bound, under both default policies, for an allowed and a blocked source
/// of each family.
/// Runs the pipeline's entry program on `frame` once (BPF_PROG_TEST_RUN,
/// on the calling CPU) and returns its XDP action.
fn run_fw_xdp(ebpf: &mut Ebpf, frame: &[u8]) -> Result<u32, aya::programs::ProgramError> {
    let run = xdp_program(ebpf, PROG_FW_XDP)
        .expect("fw_xdp")
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })?;
    Ok(run.return_value)
}

/// Moves the calling thread to `cpu` alone (BPF_PROG_TEST_RUN runs the
/// program on the caller's CPU).
fn pin_to_cpu(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t is an empty set; the set outlives the call.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        r,
        0,
        "pin to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// A per-source limit whose frames alternate between two CPUs, each with
/// its own lease of the source's tokens: together they pass the whole
/// burst (a lease's leftover goes back to the bucket, so no CPU keeps
/// tokens from the other for good) and no more than the burst plus what
/// the rate adds while the frames are sent (whatever the leases hold).
#[test]
fn a_source_on_two_cpus_gets_its_whole_bucket_and_no_more() {
    require_root();
    const BURST: u64 = 64;
    const PPS: u64 = 2;
    const FRAMES: u64 = 400;
    let online = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(online >= 2, "needs two CPUs, has {online}");
    assert!(
        kscope_common::fw::lease_tokens(BURST as u32) > 1,
        "the burst must be large enough for leases"
    );
    let set = RuleSet::parse(
        "test",
        &format!("limit 198.51.100.0/24 --pps {PPS} --burst {BURST}"),
    )
    .expect("rules parse");
    let mut ebpf = load_pipeline(Policy::Pass).expect("load the pipeline");
    RuleMaps::from_ebpf(&mut ebpf)
        .expect("rule maps")
        .load(&set)
        .expect("load rule set");
    let f = simple(
        MAC,
        MAC,
        "198.51.100.9".parse().expect("src"),
        "192.0.2.2".parse().expect("dst"),
        L4::Udp(53),
        b"x",
    );
    let start = Instant::now();
    let mut passed = 0;
    for i in 0..FRAMES {
        pin_to_cpu((i % 2) as u32);
        let got = run_fw_xdp(&mut ebpf, &f).expect("test run");
        passed += u64::from(got == Action::Pass as u32);
    }
    // The rate's share, rounded up, plus one tick's worth: the programs'
    // clock moves a tick at a time.
    let elapsed = start.elapsed();
    let refill = (elapsed.as_secs_f64() * PPS as f64).ceil() as u64 + 1;
    eprintln!("{passed} of {FRAMES} frames passed on two CPUs in {elapsed:?}");
    assert!(
        (BURST..=BURST + refill).contains(&passed),
        "{passed} of {FRAMES} frames passed on two CPUs: want the burst {BURST} \
         plus at most {refill} from the rate"
    );
}

#[test]
fn every_vlan_depth_up_to_the_bound_is_filtered_and_one_more_is_dropped() {
    require_root();
    let set = RuleSet::parse(
        "test",
        "allow 198.51.100.7 2001:db8:1::7\nblock 0.0.0.0/0 ::/0",
    )
    .expect("rules parse");
    let cases = [
        ("198.51.100.7", "192.0.2.2", Family::Ipv4, Reason::Allowed),
        ("203.0.113.9", "192.0.2.2", Family::Ipv4, Reason::BlockedSrc),
        (
            "2001:db8:1::7",
            "2001:db8::2",
            Family::Ipv6,
            Reason::Allowed,
        ),
        (
            "2001:db8:2::9",
            "2001:db8::2",
            Family::Ipv6,
            Reason::BlockedSrc,
        ),
    ];
    for policy in [Policy::Pass, Policy::Drop] {
        let mut ebpf = load_pipeline(policy).expect("load the pipeline");
        RuleMaps::from_ebpf(&mut ebpf)
            .expect("rule maps")
            .load(&set)
            .expect("load rule set");
        for n in 0..=MAX_VLAN_TAGS + 1 {
            for (src, dst, family, reason) in cases {
                // Priority tags (VLAN id 0), 802.1ad outermost: what Linux
                // strips without any VLAN device.
                let tags: Vec<(u16, u16)> = (0..n)
                    .map(|i| (if i == 0 { ETH_P_8021AD } else { ETH_P_8021Q }, 0))
                    .collect();
                let plain = simple(
                    MAC,
                    MAC,
                    src.parse().expect("src"),
                    dst.parse().expect("dst"),
                    L4::Udp(53),
                    b"x",
                );
                let ethertype = u16::from_be_bytes([plain[12], plain[13]]);
                let mut f = eth_tci(MAC, MAC, &tags, ethertype);
                f.extend_from_slice(&plain[14..]);
                let (want_family, want_reason) = if n <= MAX_VLAN_TAGS {
                    (family, reason)
                } else {
                    (Family::Other, Reason::ParseError)
                };
                assert_eq!(
                    reference::classify(&f, &set, policy == Policy::Drop),
                    (want_family, want_reason),
                    "reference, {n} tags, {src}"
                );
                let before = reasons(&ebpf);
                let got = run_fw_xdp(&mut ebpf, &f).expect("test run");
                assert_eq!(
                    got,
                    want_reason.action() as u32,
                    "{policy:?}, {n} tags, {src}: want {}",
                    want_reason.name()
                );
                let after = reasons(&ebpf);
                let i = reason_index(want_family, want_reason) as usize;
                assert_eq!(
                    after[i] - before[i],
                    1,
                    "{policy:?}, {n} tags, {src}: not counted as {}/{}",
                    want_family.name(),
                    want_reason.name()
                );
            }
        }
    }
}
