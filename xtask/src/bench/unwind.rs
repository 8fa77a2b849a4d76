//! The no-frame-pointer part of `cargo xtask bench profile`: how much of
//! each user stack kscope, bpftrace and perf recover from programs built
//! without frame pointers, and what kscope's unwinder costs.
//!
//! Workloads: the profiler tests' fixtures (kscope/tests/fixtures), a C
//! program at `-O2 -fomit-frame-pointer` and a Rust one with release
//! settings, built here with cc and rustc. A stack is whole when it runs
//! from `_start` through `main`. perf `--call-graph dwarf` is the
//! independent oracle: it copies the stack bytes and unwinds in user
//! space with libdw.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::reap;

/// Seconds each profile samples.
const SECS: u64 = 5;

/// Root-first frames run from `_start` through `main`.
fn whole<S: AsRef<str>>(root_first: &[S]) -> bool {
    let is_main = |f: &str| f == "main" || f.ends_with("::main");
    root_first.first().is_some_and(|f| f.as_ref() == "_start")
        && root_first.iter().any(|f| is_main(f.as_ref()))
}

/// A symbol without its `+0x…` offset.
fn bare(sym: &str) -> &str {
    sym.split('+').next().unwrap_or(sym)
}

/// (whole, total) samples of `perf script -F ip,sym` output.
fn perf_whole(text: &str) -> (u64, u64) {
    let (mut ok, mut total) = (0, 0);
    for block in text.split("\n\n") {
        let mut frames: Vec<&str> = block
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(bare)
            .collect();
        if frames.is_empty() {
            continue;
        }
        frames.reverse();
        total += 1;
        ok += u64::from(whole(&frames));
    }
    (ok, total)
}

/// (whole, total) samples of bpftrace's printed `@[ustack]` map.
fn bpftrace_whole(text: &str) -> (u64, u64) {
    let (mut ok, mut total) = (0, 0);
    let mut frames: Vec<&str> = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l == "@[" {
            frames.clear();
        } else if let Some(n) = l.strip_prefix("]: ") {
            let n: u64 = n.trim().parse().unwrap_or(0);
            frames.reverse();
            total += n;
            if whole(&frames) {
                ok += n;
            }
        } else if !l.is_empty() && !l.starts_with("Attaching") {
            frames.push(bare(l));
        }
    }
    (ok, total)
}

/// (whole, total) samples of a `kscope profile --json` report.
fn kscope_whole(report: &serde_json::Value) -> (u64, u64) {
    let (mut ok, mut total) = (0, 0);
    for s in report["stacks"].as_array().into_iter().flatten() {
        let n = s["count"].as_u64().unwrap_or(0);
        let frames: Vec<&str> = s["user"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .collect();
        total += n;
        if whole(&frames) {
            ok += n;
        }
    }
    (ok, total)
}

fn pct((ok, total): (u64, u64)) -> String {
    if total == 0 {
        return "no samples".into();
    }
    format!("{:.1}% of {total}", 100.0 * ok as f64 / total as f64)
}

/// Builds the fixtures into `dir`: (label, path).
fn build_fixtures(root: &Path, dir: &Path) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let src = root.join("kscope/tests/fixtures");
    let c = dir.join("unwind_c");
    crate::sh(
        Command::new("cc")
            .args(["-O2", "-fomit-frame-pointer", "-o"])
            .arg(&c)
            .arg(src.join("unwind_tree.c")),
    )?;
    let rust = dir.join("unwind_rust");
    crate::sh(
        Command::new("rustc")
            .args(["-C", "opt-level=3", "--edition", "2021", "-o"])
            .arg(&rust)
            .arg(src.join("unwind_tree.rs")),
    )?;
    Ok(vec![
        ("C -O2 -fomit-frame-pointer", c),
        ("Rust release", rust),
    ])
}

/// A running fixture, killed on drop.
struct Running(Child);

impl Running {
    fn start(exe: &Path) -> anyhow::Result<Self> {
        let child = Command::new(exe)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self(child))
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {}", crate::show(cmd)))?;
    if !out.status.success() {
        bail!("{} failed", crate::show(cmd));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kscope_report(
    kscope: &Path,
    pid: &str,
    hz: u32,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let secs = SECS.to_string();
    let hz = hz.to_string();
    let text = output(
        Command::new(kscope)
            .args(["profile", "--json", "-U", "-p", pid, "-F", &hz, "-d", &secs])
            .args(extra),
    )?;
    serde_json::from_str(&text).context("kscope's JSON")
}

fn perf(pid: &str, dwarf: bool, data: &Path) -> anyhow::Result<(u64, u64)> {
    let secs = SECS.to_string();
    let mut rec = Command::new("perf");
    rec.args(["record", "-F", "99", "-p", pid, "-o"]).arg(data);
    if dwarf {
        rec.args(["--call-graph", "dwarf"]);
    } else {
        rec.arg("-g");
    }
    output(rec.args(["--", "sleep", &secs]))?;
    let text = output(
        Command::new("perf")
            .args(["script", "-F", "ip,sym", "-i"])
            .arg(data),
    )?;
    Ok(perf_whole(&text))
}

fn bpftrace(pid: &str) -> anyhow::Result<(u64, u64)> {
    let program = format!(
        "profile:hz:99 /pid == {pid}/ {{ @[ustack] = count(); }} interval:s:{SECS} {{ exit(); }}"
    );
    let text = output(Command::new("bpftrace").args(["-e", &program]))?;
    Ok(bpftrace_whole(&text))
}

/// kscope at `hz` on `pid`: its own CPU time (wait4) and the sampling
/// program's run time per second from the kernel's BPF statistics
/// (`bpftool prog show`, read while it samples; the unwinder's tail
/// calls count in it).
fn kscope_cost(kscope: &Path, pid: &str, hz: u32, extra: &[&str]) -> anyhow::Result<(f64, f64)> {
    let child = Command::new(kscope)
        .args([
            "profile",
            "-U",
            "-p",
            pid,
            "-F",
            &hz.to_string(),
            "-d",
            &SECS.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kscope")?;
    let before = Duration::from_secs(1);
    std::thread::sleep(before);
    let first = prog_run_ns()?;
    std::thread::sleep(Duration::from_secs(SECS - 2));
    let second = prog_run_ns()?;
    let reaped = reap(child)?;
    let per_sec = (second.saturating_sub(first)) as f64 / (SECS - 2) as f64 / 1e6;
    Ok((reaped.cpu.as_secs_f64(), per_sec))
}

/// `run_time_ns` of the loaded `profile_perf`.
fn prog_run_ns() -> anyhow::Result<u64> {
    let text =
        output(Command::new("bpftool").args(["prog", "show", "name", "profile_perf", "--json"]))?;
    let v: serde_json::Value = serde_json::from_str(&text).context("bpftool's JSON")?;
    let prog = if v.is_array() { &v[0] } else { &v };
    prog["run_time_ns"]
        .as_u64()
        .context("no run_time_ns: kernel.bpf_stats_enabled is off")
}

/// Prints the no-frame-pointer tables.
pub fn run(root: &Path, kscope: &Path) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let fixtures = build_fixtures(root, &dir)?;
    let have = |tool: &str| crate::which(tool).is_some();
    println!(
        "\nWhole user stacks (from `_start` through `main`), {SECS} s at 99 Hz, one busy thread:\n"
    );
    println!("| profiler | {} | {} |", fixtures[0].0, fixtures[1].0);
    println!("|---|---:|---:|");
    let mut rows: Vec<(String, Vec<String>)> = vec![
        ("kscope profile".into(), vec![]),
        ("kscope profile --no-dwarf".into(), vec![]),
        ("bpftrace `@[ustack]`".into(), vec![]),
        ("perf record -g (frame pointers)".into(), vec![]),
        ("perf record --call-graph dwarf".into(), vec![]),
    ];
    let mut tables = Vec::new();
    for (_, exe) in &fixtures {
        let w = Running::start(exe)?;
        let pid = w.pid();
        let dwarf = kscope_report(kscope, &pid, 99, &[])?;
        tables.push(dwarf["unwind"].clone());
        rows[0].1.push(pct(kscope_whole(&dwarf)));
        rows[1].1.push(pct(kscope_whole(&kscope_report(
            kscope,
            &pid,
            99,
            &["--no-dwarf"],
        )?)));
        rows[2].1.push(if have("bpftrace") {
            pct(bpftrace(&pid)?)
        } else {
            "not installed".into()
        });
        let data = dir.join("perf.data");
        for (i, dw) in [(3, false), (4, true)] {
            rows[i].1.push(if have("perf") {
                pct(perf(&pid, dw, &data)?)
            } else {
                "not installed".into()
            });
        }
    }
    for (label, cells) in &rows {
        println!("| {label} | {} |", cells.join(" | "));
    }
    println!("\nkscope's unwind tables (rows of 16 bytes):\n");
    for ((label, _), t) in fixtures.iter().zip(&tables) {
        println!(
            "- {label}: {} files, {} rows, {} KiB (of {} MiB allocated)",
            t["objects"],
            t["rows"],
            t["table_peak_bytes"].as_u64().unwrap_or(0).div_ceil(1024),
            t["table_capacity_bytes"].as_u64().unwrap_or(0) >> 20
        );
    }

    // The kernel's per-program statistics, on for the measurement only.
    let stats = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let was = std::fs::read_to_string(stats).unwrap_or_default();
    std::fs::write(stats, "1").context("enabling kernel.bpf_stats_enabled")?;
    let result = (|| -> anyhow::Result<()> {
        let w = Running::start(&fixtures[1].1)?;
        let pid = w.pid();
        println!(
            "\nkscope's cost on the Rust workload ({SECS} s runs; in-kernel time of the sampling program and its tail-called unwinder):\n"
        );
        println!(
            "| -F | unwinder: in kernel per second | kscope process CPU | --no-dwarf: in kernel per second | kscope process CPU |"
        );
        println!("|---:|---:|---:|---:|---:|");
        for hz in [49, 99, 999] {
            let (cpu, kern) = kscope_cost(kscope, &pid, hz, &[])?;
            let (fp_cpu, fp_kern) = kscope_cost(kscope, &pid, hz, &["--no-dwarf"])?;
            println!("| {hz} | {kern:.2} ms | {cpu:.2} s | {fp_kern:.2} ms | {fp_cpu:.2} s |");
        }
        Ok(())
    })();
    let _ = std::fs::write(stats, was.trim());
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("kscope-bench-unwind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn whole_needs_start_at_the_root_and_main() {
        assert!(super::whole(&["_start", "__libc_start_main", "main", "a"]));
        assert!(super::whole(&[
            "_start",
            "std::rt::lang_start",
            "tree::main"
        ]));
        assert!(!super::whole(&["main", "a"]));
        assert!(!super::whole(&["_start", "a"]));
        assert!(!super::whole::<&str>(&[]));
    }

    #[test]
    fn perf_script_blocks_are_read_root_last() {
        let text = "tree 1 [001] cpu-clock:\n\t    1149 leaf_a1+0x9 (/t)\n\t    1235 a+0x5 (/t)\n\t    10a0 main+0x20 (/t)\n\t    1120 _start+0x20 (/t)\n\ntree 1 [001] cpu-clock:\n\t    1149 leaf_a1+0x9 (/t)\n";
        assert_eq!(super::perf_whole(text), (1, 2));
    }

    #[test]
    fn bpftrace_ustacks_are_read_root_last() {
        let text = "Attaching 1 probe...\n@[\n    leaf_b+9\n    b+21\n    main+32\n    _start+33\n]: 7\n@[\n    leaf_b+9\n]: 3\n";
        assert_eq!(super::bpftrace_whole(text), (7, 10));
    }
}
