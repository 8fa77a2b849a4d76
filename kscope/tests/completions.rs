//! `kscope completions SHELL` and `kscope man DIR`: bash itself completes
//! with the generated script (the way a user's shell would, through the
//! function `complete -p` names), and man renders every generated page
//! with groff's warnings on, and none printed. Host only: neither bash nor
//! man is in the VMs, and nothing here depends on the kernel.

mod common;

use std::{collections::BTreeSet, path::Path, process::Command};

use clap::CommandFactory as _;

/// What bash completes for the command line `line` (the cursor at its
/// end), using the script `kscope completions bash` prints.
fn bash_complete(script: &Path, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let cword = words.len() - 1;
    // The words as a bash array literal; none of them needs quoting.
    let array = words
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let prog = format!(
        r#"source '{script}' || exit 3
spec=$(complete -p kscope) || exit 4
fn=${{spec#*-F }}; fn=${{fn%% *}}
COMP_WORDS=({array}); COMP_CWORD={cword}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}
"$fn" kscope "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        script = script.display()
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &prog])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.trim().to_owned())
        .collect();
    got.sort();
    got
}

#[test]
#[cfg_attr(feature = "vm-suite", ignore = "host only: the VMs have no bash")]
fn bash_completes_verbs_and_flags_with_the_generated_script() {
    if common::find_in_path("bash").is_none() {
        common::skip("bash", "not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("kscope.bash");
    let text = common::kscope_ok(None, &["completions", "bash"]);
    std::fs::write(&script, &text).expect("write the script");

    assert_eq!(bash_complete(&script, "kscope fw bl"), ["block"]);
    assert_eq!(bash_complete(&script, "kscope tr"), ["trace"]);
    assert_eq!(
        bash_complete(&script, "kscope trace c"),
        ["connect"],
        "trace's verbs"
    );
    assert_eq!(
        bash_complete(&script, "kscope fw attach eth0 --mo"),
        ["--mode"]
    );
    assert_eq!(
        bash_complete(&script, "kscope completions z"),
        ["zsh"],
        "the shells are completed too"
    );
    // The demo's internal child entry point is no verb.
    assert!(
        bash_complete(&script, "kscope de")
            .iter()
            .all(|w| w != "demo-child"),
        "demo-child offered"
    );
    // And a script that completes nothing is noticed: the check is not a
    // tautology.
    let broken = dir.path().join("broken.bash");
    std::fs::write(&broken, text.replace("block", "xblock")).expect("write");
    assert_eq!(bash_complete(&broken, "kscope fw bl"), Vec::<String>::new());
}

#[test]
fn every_shell_gets_a_script_and_a_bad_shell_is_a_usage_error() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let text = common::kscope_ok(None, &["completions", shell]);
        assert!(
            text.contains("block") && text.contains("mode") && text.contains("connect"),
            "{shell}: the script lacks the verbs"
        );
    }
    let out = common::kscope(None, &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

/// The pages `kscope man` should write: kscope.1 and one per verb at
/// every level, from the CLI definition (clap's own help subcommand
/// aside).
fn expected_pages() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut BTreeSet<String>) {
        out.insert(format!("{prefix}.1"));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            walk(sub, &format!("{prefix}-{}", sub.get_name()), out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&kscope::cli::Cli::command(), "kscope", &mut out);
    out
}

/// Renders `page` with man, groff's warnings on; returns stderr.
fn man_warnings(page: &Path) -> String {
    let out = Command::new("man")
        .args(["--warnings=all", "-E", "UTF-8", "-l"])
        .arg(page)
        .env("MANROFFOPT", "-ww")
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .expect("run man");
    assert!(
        out.status.success(),
        "man -l {} failed: {}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty(), "{} rendered empty", page.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
#[cfg_attr(feature = "vm-suite", ignore = "host only: the VMs have no man")]
fn man_renders_every_page_without_warnings() {
    if common::find_in_path("man").is_none() {
        common::skip("man", "not installed (Debian package man-db)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("man1");
    common::kscope_ok(None, &["man", &out.to_string_lossy()]);
    let pages: BTreeSet<String> = std::fs::read_dir(&out)
        .expect("read the pages")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pages, expected_pages());
    for p in &pages {
        let warnings = man_warnings(&out.join(p));
        assert!(warnings.is_empty(), "{p}:\n{warnings}");
    }
    let block = std::fs::read_to_string(out.join("kscope-fw-block.1")).expect("read");
    assert!(block.contains("port"), "kscope-fw-block.1 lacks --port");

    // A page with a broken macro does warn: the check can fail.
    let bad = dir.path().join("bad.1");
    std::fs::write(&bad, ".TH BAD 1\n.SH NAME\nbad \\- page\n.XX nothing\n").expect("write");
    assert!(
        man_warnings(&bad).contains("warning"),
        "man printed no warning for an undefined macro"
    );
}
