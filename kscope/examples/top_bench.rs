//! `cargo xtask bench top`: `kscope top` with 200 programs loaded, next to
//! the peer available here, in one run. Needs root. Not a test.
//!
//! The peer: bpftop is not published on crates.io (`cargo install bpftop`:
//! "could not find `bpftop` in registry") nor in Debian, so it cannot be
//! built by setup. The stand-in is what one runs without it: `bpftool prog
//! show --json` once per refresh (run time and count with statistics on,
//! pids through bpftool's own BPF iterator).
//!
//! - one refresh: kscope's collector in this process (programs, stats, map
//!   memory, holders from /proc), the median of 200 refreshes after a
//!   first one; bpftool: the median wall time of one `prog show` run;
//! - peak RSS: `kscope top --json` over the whole watch; bpftool: the
//!   largest of its runs;
//! - CPU per second of watching: `kscope top --json --interval 1` for
//!   WATCH seconds, user + system time over WATCH; bpftool: the CPU of one
//!   run per second over the same time.

use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

const PROGRAMS: usize = 200;
const WATCH: u64 = 10;

/// Loads `mov r0, 0; exit` as a socket filter named `name`.
fn load_trivial(name: &str) -> anyhow::Result<OwnedFd> {
    // struct bpf_insn: code, dst:4|src:4, off, imm. BPF_ALU64 | BPF_MOV |
    // BPF_K (r0 = 0), then BPF_JMP | BPF_EXIT.
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    #[repr(C, align(8))]
    struct LoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
    }
    let mut attr = LoadAttr {
        prog_type: 1, // BPF_PROG_TYPE_SOCKET_FILTER
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: [0; 16],
    };
    attr.prog_name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    // SAFETY: `attr` is a valid prefix of union bpf_attr for BPF_PROG_LOAD
    // and its pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5, // BPF_PROG_LOAD
            &raw mut attr,
            std::mem::size_of::<LoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_PROG_LOAD");
    }
    // SAFETY: a new fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Runs `cmd` to its end; (wall time, CPU time, peak RSS in KiB).
fn run_measured(cmd: &mut Command) -> anyhow::Result<(Duration, Duration, u64)> {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: our unreaped child; valid out-pointers.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    std::mem::forget(child);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{cmd:?} failed ({status})");
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((
        start.elapsed(),
        tv(ru.ru_utime) + tv(ru.ru_stime),
        ru.ru_maxrss as u64,
    ))
}

fn main() -> anyhow::Result<()> {
    let fds: Vec<OwnedFd> = (0..PROGRAMS)
        .map(|i| load_trivial(&format!("bench_{i}")))
        .collect::<anyhow::Result<_>>()?;
    let _stats = kscope::top::StatsGuard::enable()?;

    // One refresh, in this process.
    let mut c = kscope::top::Collector::new(true)?;
    let t = Instant::now();
    c.refresh()?;
    let cold = t.elapsed();
    let total = c.len();
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        c.refresh()?;
        times.push(ms(t.elapsed()));
    }
    let refresh = median(times);
    // `TOP_BENCH_PROFILE=N`: N more refreshes to profile, nothing else.
    if let Some(n) = std::env::var("TOP_BENCH_PROFILE")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        for _ in 0..n {
            c.refresh()?;
        }
        println!("median refresh {refresh:.2} ms");
        return Ok(());
    }
    drop(c);

    // kscope top over WATCH seconds.
    let kscope = std::env::var("KSCOPE_BIN").unwrap_or_else(|_| "target/release/kscope".into());
    let (_, k_cpu, k_rss) = run_measured(Command::new(&kscope).args([
        "top",
        "--json",
        "--interval",
        "1",
        "-d",
        &WATCH.to_string(),
    ]))?;

    // bpftool prog show once a second over WATCH seconds.
    let mut b_wall = Vec::new();
    let mut b_cpu = Duration::ZERO;
    let mut b_rss = 0;
    let start = Instant::now();
    for i in 0..WATCH {
        let (wall, cpu, rss) =
            run_measured(Command::new("bpftool").args(["prog", "show", "--json"]))?;
        b_wall.push(ms(wall));
        b_cpu += cpu;
        b_rss = b_rss.max(rss);
        let next = start + Duration::from_secs(i + 1);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let b_refresh = median(b_wall);
    drop(fds);

    let k_cpu_ms = ms(k_cpu) / WATCH as f64;
    let b_cpu_ms = ms(b_cpu) / WATCH as f64;
    println!(
        "{total} programs loaded ({PROGRAMS} by the benchmark); first refresh {:.2} ms (maps and holders read once)\n",
        ms(cold)
    );
    println!(
        "| measure | kscope top | bpftool prog show (stand-in for bpftop) | kscope / peer | target |"
    );
    println!("|---|---:|---:|---:|---|");
    println!(
        "| one refresh of {total} programs | {refresh:.2} ms | {b_refresh:.2} ms | {:.2} | <= 5 ms |",
        refresh / b_refresh
    );
    println!(
        "| peak RSS | {:.1} MiB | {:.1} MiB | {:.2} | <= 10 MiB |",
        k_rss as f64 / 1024.0,
        b_rss as f64 / 1024.0,
        k_rss as f64 / b_rss as f64
    );
    println!(
        "| CPU per second of watching (1 s refresh) | {k_cpu_ms:.2} ms | {b_cpu_ms:.2} ms | {:.2} | <= peer |",
        k_cpu_ms / b_cpu_ms
    );
    Ok(())
}
