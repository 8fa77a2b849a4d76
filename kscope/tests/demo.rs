//! `kscope demo` end to end: every step runs and every check holds (each
//! "expected N, saw N" line is read back here and compared again), and
//! nothing is left behind, after a full run and after SIGINT at two points
//! of the run (tracers running; the daemon running with the firewall
//! attached).

mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;

/// Network namespaces whose names the demo of process `pid` made.
fn demo_netns(pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("kscope-demo-{pid}-")))
        .map(str::to_owned)
        .collect()
}

/// Pin directories of the demo's interfaces (named `ks<pid hex>x...`).
fn demo_pins(pid: u32) -> Vec<String> {
    let prefix = format!("ks{pid:x}x");
    std::fs::read_dir(kscope::firewall::pin_root())
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Processes that are still alive (not gone, not zombies) among `pids`.
fn alive(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned))
                })
                .is_some_and(|state| state != "Z")
        })
        .collect()
}

/// Direct children of `pid`, from every thread's children file.
fn children(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        kids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    kids
}

fn assert_nothing_left(pid: u32) {
    assert_eq!(demo_netns(pid), Vec::<String>::new(), "namespaces left");
    assert_eq!(demo_pins(pid), Vec::<String>::new(), "pins left");
    let dir = std::env::temp_dir().join(format!("kscope-demo-{pid}"));
    assert!(!dir.exists(), "{} left", dir.display());
}

/// The numbers of a check line: "check: WHAT: expected E, saw S .. ok".
fn check_line(l: &str) -> Option<(String, String, bool)> {
    let rest = l.strip_prefix("check: ")?;
    let (_, tail) = rest.rsplit_once(": expected ")?;
    let (expected, tail) = tail.split_once(", saw ")?;
    let (saw, mark) = tail.rsplit_once(" .. ")?;
    Some((expected.to_owned(), saw.to_owned(), mark == "ok"))
}

#[test]
fn check_lines_parse() {
    assert_eq!(
        check_line("check: hits of block 192.0.2.1/32: expected 25, saw 25 .. ok"),
        Some(("25".into(), "25".into(), true))
    );
    assert_eq!(
        check_line("check: x: expected at least 1, saw 0 .. FAILED"),
        Some(("at least 1".into(), "0".into(), false))
    );
    assert_eq!(check_line("checking"), None);
}

#[test]
fn demo_runs_every_step_and_every_check_holds() {
    require_root();
    let start = Instant::now();
    let child = kscope_cmd(None, &["demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kscope demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for kscope demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Progress for the console (the VM harness counts silence as a hang).
    eprintln!(
        "kscope demo took {:.1?}:\n{stdout}\nstderr:\n{stderr}",
        start.elapsed()
    );
    assert!(out.status.success(), "kscope demo failed: {stderr}");

    let steps: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("== step "))
        .collect();
    assert_eq!(steps.len(), 6, "steps: {steps:?}");
    for (i, s) in steps.iter().enumerate() {
        assert!(s.starts_with(&format!("== step {}/6: ", i + 1)), "{s}");
    }
    let checks: Vec<(String, String, bool)> = stdout.lines().filter_map(check_line).collect();
    let unavailable = stdout
        .lines()
        .filter(|l| l.starts_with("unavailable on this kernel"))
        .count();
    // Steps 1-3 and 6 need only XDP, which every kernel here has; the
    // tracers and the profiler may be unavailable, but never silently.
    assert!(checks.len() >= 18, "only {} checks", checks.len());
    for (e, s, ok) in &checks {
        assert!(
            ok,
            "a failed check in a passing demo: expected {e}, saw {s}"
        );
        match e.strip_prefix("at least ") {
            Some(min) => assert!(
                s.parse::<u64>().expect("a number") >= min.parse::<u64>().expect("a number"),
                "expected {e}, saw {s}"
            ),
            None => assert_eq!(e, s),
        }
    }
    if unavailable > 0 {
        eprintln!("note: {unavailable} tools were unavailable on this kernel");
    } else {
        assert!(checks.len() >= 25, "only {} checks", checks.len());
    }
    let svg = stdout
        .lines()
        .find_map(|l| l.strip_prefix("flame graph: "))
        .expect("the flame graph's path");
    let svg_text = std::fs::read_to_string(svg).expect("read the flame graph");
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(&svg_text, opts).expect("the flame graph is XML");
    assert!(svg_text.contains("demo_spin"));
    let _ = std::fs::remove_file(svg);
    assert!(stdout.contains("All checks passed."));
    assert_nothing_left(pid);
}

/// Starts the demo, waits for the stdout line starting with `marker`, and
/// sends SIGINT: it must exit non-zero, saying so, with its children gone
/// and everything it made removed.
fn interrupt_at(marker: &str) {
    require_root();
    let mut child = kscope_cmd(None, &["demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kscope demo");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let left = Duration::from_secs(240).saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(l) => {
                eprintln!("demo: {l}");
                let hit = l.starts_with(marker);
                seen.push(l);
                if hit {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no line {marker:?} from the demo:\n{}", seen.join("\n"));
            }
        }
    }
    // What that line announced starts right after it.
    let start = Instant::now();
    let kids = loop {
        let kids = children(pid);
        if !kids.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break kids;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(!kids.is_empty(), "the demo has no child processes running");
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("kscope demo still running 120 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut err);
    }
    eprintln!("demo stderr after SIGINT:\n{err}");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(alive(&kids), Vec::<u32>::new(), "children left running");
    assert_nothing_left(pid);
}

#[test]
fn sigint_while_tracing_removes_everything() {
    interrupt_at("$ kscope trace connect");
}

#[test]
fn sigint_while_the_daemon_runs_removes_everything() {
    interrupt_at("$ kscope daemon");
}
