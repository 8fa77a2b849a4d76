//! The tables against an implementation kscope had no part in: GNU
//! readelf's `--debug-dump=frames-interp`, which evaluates every FDE of
//! `.eh_frame` into rows of CFA and register rules. At every row readelf
//! prints, the table's rule must say the same; where an FDE ends and no
//! other begins, the table must have no rule.
//!
//! Files: libc (C, hand-written assembly, PLT), a C program built here
//! without frame pointers, and this test binary (Rust).

use std::{collections::HashSet, path::Path, process::Command};

use kscope_unwind::{Cfa, Rbp, Table};

/// One FDE as readelf shows it.
struct Fde {
    start: u64,
    end: u64,
    /// (LOC, CFA, rbp column, ra column)
    rows: Vec<(u64, String, String, String)>,
}

/// The FDEs of the `.eh_frame` section in readelf's output.
fn readelf_fdes(file: &Path) -> Vec<Fde> {
    let out = Command::new("readelf")
        // -wN: this file's own sections, not those of a separate debug
        // file it links to (whose .eh_frame is empty).
        .args(["--wide", "-wN", "--debug-dump=frames-interp"])
        .arg(file)
        .output()
        .expect("readelf (binutils) runs");
    assert!(out.status.success(), "readelf failed on {}", file.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fdes = Vec::new();
    let mut in_eh = false;
    let mut cur: Option<(Fde, Vec<String>)> = None;
    for line in text.lines() {
        if line.starts_with("Contents of the ") {
            in_eh = line.contains(".eh_frame section");
            continue;
        }
        if !in_eh {
            continue;
        }
        // A rule "in another register" reads `r10 (r10)`: one column.
        let mut words: Vec<String> = Vec::new();
        for w in line.split_whitespace() {
            match words.last_mut() {
                Some(last) if w.starts_with('(') => {
                    last.push(' ');
                    last.push_str(w);
                }
                _ => words.push(w.to_owned()),
            }
        }
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        if let Some(pc) = words.iter().find_map(|w| w.strip_prefix("pc=")) {
            if let Some((f, _)) = cur.take() {
                fdes.push(f);
            }
            let (a, b) = pc.split_once("..").expect("pc=A..B");
            let hex = |s: &str| u64::from_str_radix(s, 16).expect("hex");
            cur = Some((
                Fde {
                    start: hex(a),
                    end: hex(b),
                    rows: Vec::new(),
                },
                Vec::new(),
            ));
            continue;
        }
        if words.first() == Some(&"LOC") {
            if let Some((_, cols)) = cur.as_mut() {
                *cols = words.iter().map(|w| (*w).to_owned()).collect();
            }
            continue;
        }
        if line.contains(" CIE") || words.is_empty() {
            if let Some((f, _)) = cur.take() {
                fdes.push(f);
            }
            continue;
        }
        if let Some((f, cols)) = cur.as_mut()
            && !cols.is_empty()
            && let Ok(loc) = u64::from_str_radix(words[0], 16)
        {
            let col = |name: &str| {
                cols.iter()
                    .position(|c| c == name)
                    .and_then(|i| words.get(i))
                    .map_or("u".to_owned(), |w| (*w).to_owned())
            };
            f.rows
                .push((loc, words[1].to_owned(), col("rbp"), col("ra")));
        }
    }
    if let Some((f, _)) = cur {
        fdes.push(f);
    }
    fdes
}

/// Checks `file`'s table against readelf; returns how many rows agreed.
fn check(file: &Path) -> usize {
    let data = std::fs::read(file).expect("read file");
    let table = Table::from_elf(&data).expect("table");
    let fdes = readelf_fdes(file);
    assert!(
        !fdes.is_empty(),
        "readelf found no FDEs in {}",
        file.display()
    );
    let starts: HashSet<u64> = fdes.iter().map(|f| f.start).collect();
    let mut checked = 0;
    for f in &fdes {
        if f.end <= f.start {
            continue;
        }
        for (loc, cfa, rbp, ra) in &f.rows {
            let at = format!(
                "{} at {loc:#x} (FDE {:#x}..{:#x})",
                file.display(),
                f.start,
                f.end
            );
            let rule = table
                .lookup(*loc)
                .unwrap_or_else(|| panic!("{at}: no rule; readelf: {cfa} rbp={rbp} ra={ra}"));
            let want_cfa = match cfa.split_once('+') {
                Some(("rsp", n)) => Some(Cfa::Rsp(n.parse().expect("offset"))),
                Some(("rbp", n)) => Some(Cfa::Rbp(n.parse().expect("offset"))),
                _ => None,
            };
            match (ra.as_str(), want_cfa) {
                ("c-8", Some(c)) => assert_eq!(rule.cfa, c, "{at}: {rule:?} vs {cfa}"),
                ("c-8", None) => assert!(
                    matches!(rule.cfa, Cfa::Plt { .. } | Cfa::Unsupported),
                    "{at}: {rule:?} vs {cfa}"
                ),
                // The return address is elsewhere: nothing a walker can
                // follow.
                (r, _) if r != "u" => assert_eq!(rule.cfa, Cfa::Unsupported, "{at}: ra {r}"),
                _ => {}
            }
            assert_eq!(rule.end, ra == "u", "{at}: end of stack? ra {ra}");
            if ra == "c-8" {
                match rbp.as_str() {
                    "u" | "s" => assert!(
                        matches!(rule.rbp, Rbp::Unchanged | Rbp::Unsupported),
                        "{at}: rbp {rbp} vs {:?}",
                        rule.rbp
                    ),
                    r => match r.strip_prefix("c") {
                        Some(n) => {
                            assert_eq!(rule.rbp, Rbp::AtCfa(n.parse().expect("offset")), "{at}")
                        }
                        None => assert_eq!(rule.rbp, Rbp::Unsupported, "{at}: rbp {r}"),
                    },
                }
            }
            checked += 1;
        }
        if !starts.contains(&f.end) {
            assert_eq!(
                table.lookup(f.end),
                None,
                "{}: a rule past the end of FDE {:#x}..{:#x}",
                file.display(),
                f.start,
                f.end
            );
        }
    }
    eprintln!(
        "{}: {checked} readelf rows agree; {} table rows, {:?}",
        file.display(),
        table.rows.len(),
        table.stats
    );
    checked
}

#[test]
fn libc_agrees_with_readelf() {
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.exists())
    .expect("libc.so.6 on a Debian x86-64 machine");
    // Thousands of FDEs; the requirement is that there is real work.
    assert!(check(libc) > 1000);
}

#[test]
fn this_rust_binary_agrees_with_readelf() {
    let me = std::env::current_exe().expect("current exe");
    assert!(check(&me) > 1000);
}

/// A C program without frame pointers: its CFA moves with rsp through
/// every push and sub, the case frame-pointer walking cannot handle.
#[test]
fn c_without_frame_pointers_agrees_with_readelf() {
    let dir = std::env::temp_dir().join(format!("kscope-unwind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let src = dir.join("nofp.c");
    let exe = dir.join("nofp");
    std::fs::write(
        &src,
        r#"
#include <stdio.h>
#include <stdlib.h>
long mid2(int n);
__attribute__((noinline)) long leaf(long *v, int n) {
    long s = 0;
    for (int i = 0; i < n; i++) s += v[i] * (i + 1);
    return s;
}
__attribute__((noinline)) long mid(int n) {
    long v[64];
    for (int i = 0; i < 64; i++) v[i] = rand();
    return leaf(v, n) + mid2(n);
}
__attribute__((noinline)) long mid2(int n) {
    char *p = malloc(n + 1);
    long r = p ? (long)p[0] : 0;
    free(p);
    return r;
}
int main(int argc, char **argv) {
    printf("%ld\n", mid(argc * 10));
    return 0;
}
"#,
    )
    .expect("write source");
    let status = Command::new("gcc")
        .args([
            "-O2",
            "-fomit-frame-pointer",
            "-fasynchronous-unwind-tables",
            "-o",
        ])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc runs (setup installs it)");
    assert!(status.success(), "gcc failed");
    let n = check(&exe);
    let table = Table::from_elf(&std::fs::read(&exe).expect("read")).expect("table");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(n > 5, "only {n} rows");
    // Without frame pointers, some row computes the CFA from rsp beyond
    // the entry's rsp+8: the case this crate exists for.
    assert!(
        table
            .rows
            .iter()
            .any(|r| matches!(r.rule.cfa, Cfa::Rsp(n) if n > 8)),
        "no rsp-based CFA past entry: {:?}",
        table.rows
    );
}
