//! The kernel matrix: kscope's integration tests inside qemu VMs running the
//! Debian kernels users run.
//!
//! For each kernel: resolve the newest `linux-image-*-cloud-amd64` of its
//! suite with a private apt configuration (reusing the `URIs:` of
//! /etc/apt/sources.list.d/debian.sources, so no host name is in the repo),
//! download and unpack it (cached under target/vm/), build an initramfs from
//! busybox-static, the statically linked test binaries, the host's iproute2,
//! bpftool and util-linux tools with their libraries, and the modules the
//! tests need (veth, loop) from the same package; boot it with qemu (TCG: KVM does
//! not work here), run every integration test binary, and read the results
//! back from the serial console.
//!
//! A panic, a hang or a timeout fails the run and prints the console tail.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cpio, sh};

/// One kernel of the matrix.
pub struct Kernel {
    /// Short name used in output and file names.
    pub label: &'static str,
    /// Debian suite whose `linux-image-cloud-amd64` names the image.
    pub suite: &'static str,
    /// Features the tests must find on this kernel (`KSCOPE_REQUIRE`): a
    /// test that would skip for lack of one fails instead.
    pub require: &'static str,
    /// Extra kernel command-line words.
    pub cmdline: &'static str,
}

pub const MATRIX: &[Kernel] = &[
    Kernel {
        label: "5.10-bullseye",
        suite: "bullseye",
        require: "kprobe,kretprobe,fentry",
        cmdline: "",
    },
    Kernel {
        label: "6.1-bookworm",
        suite: "bookworm",
        require: "kprobe,kretprobe,fentry",
        cmdline: "",
    },
    Kernel {
        label: "6.12-bookworm-backports",
        suite: "bookworm-backports",
        require: "kprobe,kretprobe,fentry",
        // Under TCG, 6.12 double-faults right after the cmpxchg16b in
        // SLUB's allocation fast path, at boot and during tests alike (a
        // third of runs with two VMs on the host). Debug caches take the
        // slow path, which never crashed in 24 loaded boots. An emulator
        // problem: KVM is not available here to compare.
        cmdline: "slub_debug=F",
    },
];

/// Modules the tests need, loaded in the guest if the kernel builds them as
/// modules (dependencies are resolved from each module's .modinfo).
const MODULES: &[&str] = &["veth", "loop"];

/// Host tools the tests run, copied with their shared libraries.
/// tmux drives `kscope top`'s screen as a person would.
const HOST_TOOLS: &[&str] = &["ip", "bpftool", "setpriv", "unshare", "tmux"];

/// Shared libraries the profiler tests' workloads load besides the host
/// tools' (libgcc_s: a Rust program's unwinder), taken from the host.
const HOST_LIBS: &[&str] = &["/lib/x86_64-linux-gnu/libgcc_s.so.1"];

/// glibc's C.UTF-8 locale, copied whole for tmux.
const LOCALE_DIR: &str = "/usr/lib/locale/C.utf8";

/// How often a VM is booted when the guest kernel dies before kscope's init
/// even starts. Under TCG (no KVM here), Debian's 6.12 kernel sometimes
/// double-faults in early boot when the host is loaded (seen in SLUB's
/// cmpxchg16b fast path and in ACPI table parsing, never after init). That
/// is the emulator, not kscope, so such a boot is retried, and reported.
/// A crash once init has started is a test failure, never retried.
const BOOT_TRIES: u32 = 3;

/// Longest a VM may print nothing before it counts as hung.
const VM_SILENCE: Duration = Duration::from_secs(300);
/// Longest a single VM may run at all.
const VM_TIMEOUT: Duration = Duration::from_secs(1800);

/// What one kernel's run produced.
#[derive(Default)]
pub struct Outcome {
    pub label: String,
    pub release: String,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub skipped: Vec<String>,
    pub boot: Option<Duration>,
    pub total: Duration,
    /// Why the run as a whole failed (panic, hang, missing result).
    pub error: Option<String>,
    /// Boots that crashed before init and were retried, with the reason.
    pub boot_retries: Vec<String>,
    /// Each test binary the guest ran, with its wall time (the one still
    /// running when a VM hung has the time until the kill).
    pub bins: Vec<(String, Duration)>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.failed.is_empty() && !self.passed.is_empty()
    }

    /// "fw_xdp_rules 380s, daemon 170s, ...": the slowest binaries first.
    pub fn slowest(&self, n: usize) -> String {
        let mut b = self.bins.clone();
        b.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
        b.iter()
            .take(n)
            .map(|(name, d)| format!("{name} {:.0}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("apt");
        for d in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let sources = fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
            .context("reading /etc/apt/sources.list.d/debian.sources for the Debian mirror")?;
        let uri = sources
            .lines()
            .find_map(|l| l.strip_prefix("URIs:"))
            .map(str::trim)
            .context("no URIs: line in /etc/apt/sources.list.d/debian.sources")?;
        let suites: BTreeSet<&str> = MATRIX.iter().map(|k| k.suite).collect();
        let list = format!(
            "Types: deb\nURIs: {uri}\nSuites: {}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            suites.into_iter().collect::<Vec<_>>().join(" ")
        );
        let path = dir.join("sources.list.d/kscope-vm.sources");
        let changed = fs::read_to_string(&path).ok().as_deref() != Some(&list);
        fs::write(&path, &list)?;
        let apt = Self { dir };
        let have_lists = fs::read_dir(apt.dir.join("lists"))?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"));
        if changed || !have_lists {
            sh(apt.cmd("apt-get").args(["-qq", "update"]))?;
        }
        Ok(apt)
    }

    /// apt-get / apt-cache with every state directory private to target/vm,
    /// so the system's apt configuration is neither used nor changed.
    fn cmd(&self, tool: &str) -> Command {
        let d = |p: &str| self.dir.join(p).display().to_string();
        let mut c = Command::new(tool);
        for opt in [
            "Dir::Etc::SourceList=/dev/null".to_owned(),
            format!("Dir::Etc::SourceParts={}", d("sources.list.d")),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::Cache={}", d("cache")),
            "Dir::Cache::pkgcache=pkgcache.bin".to_owned(),
            "Dir::Cache::srcpkgcache=srcpkgcache.bin".to_owned(),
            "APT::Sandbox::User=root".to_owned(),
            "Acquire::Languages=none".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false".to_owned(),
        ] {
            c.arg("-o").arg(opt);
        }
        c
    }

    /// The newest cloud kernel package of `suite`, from the metapackage's
    /// dependency (package names change form between releases).
    fn resolve(&self, suite: &str) -> anyhow::Result<String> {
        let out = self
            .cmd("apt-cache")
            .args(["-t", suite, "depends", "linux-image-cloud-amd64"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .map(|p| p.split_whitespace().next().unwrap_or(p).to_owned())
            .with_context(|| format!("cannot resolve the cloud kernel of {suite}: {text}"))
    }

    fn download(&self, pkg: &str, debs: &Path) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(debs)?;
        let find = || -> anyhow::Result<Option<PathBuf>> {
            Ok(fs::read_dir(debs)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
                }))
        };
        if let Some(p) = find()? {
            return Ok(p);
        }
        sh(self
            .cmd("apt-get")
            .args(["-qq", "download", pkg])
            .current_dir(debs))?;
        find()?.with_context(|| format!("apt-get download {pkg} produced no .deb"))
    }
}

/// An unpacked kernel package.
struct Image {
    vmlinuz: PathBuf,
    moddir: PathBuf,
    release: String,
}

fn unpack(deb: &Path, dir: &Path) -> anyhow::Result<Image> {
    let done = dir.join(".unpacked");
    if !done.exists() {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        sh(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
        fs::write(&done, "")?;
    }
    let release = fs::read_dir(dir.join("lib/modules"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no lib/modules in the kernel package")?;
    Ok(Image {
        vmlinuz: dir.join(format!("boot/vmlinuz-{release}")),
        moddir: dir.join("lib/modules").join(&release),
        release,
    })
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            all_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Contents of a module file, decompressed (6.12 ships .ko.xz).
fn module_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => Ok(fs::read(path)?),
        Some(t) => {
            let out = Command::new(t).arg("-dc").arg(path).output()?;
            if !out.status.success() {
                bail!("{t} -dc {name} failed");
            }
            Ok(out.stdout)
        }
    }
}

/// Modules to load (name, bytes), dependencies first. Built-in ones are
/// skipped. modules.dep is not in the package (depmod makes it at install
/// time), so dependencies come from each module's `depends=` field.
fn modules(img: &Image) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let builtin = fs::read_to_string(img.moddir.join("modules.builtin")).unwrap_or_default();
    let mut files = Vec::new();
    all_files(&img.moddir.join("kernel"), &mut files)?;
    let norm = |s: &str| s.replace('-', "_");
    let stem = |p: &Path| {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        norm(n.split(".ko").next().unwrap_or(&n))
    };
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        files: &[PathBuf],
        builtin: &str,
        stem: &dyn Fn(&Path) -> String,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        if builtin.lines().any(|l| stem(Path::new(l)) == name) {
            return Ok(());
        }
        let file = files
            .iter()
            .find(|f| stem(f) == name)
            .with_context(|| format!("module {name} is neither built in nor in the package"))?;
        let bytes = module_bytes(file)?;
        let modinfo = String::from_utf8_lossy(&bytes);
        let deps: Vec<String> = modinfo
            .split('\0')
            .filter_map(|f| f.strip_prefix("depends="))
            .flat_map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.replace('-', "_"))
            })
            .collect();
        for d in deps {
            visit(&d, files, builtin, stem, seen, order)?;
        }
        order.push((format!("{name}.ko"), bytes));
        Ok(())
    }
    for m in MODULES {
        visit(&norm(m), &files, &builtin, &stem, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// The guest's PID 1. Kernel command-line `KEY=VALUE` words it does not know
/// reach init as environment variables: `KSCOPE_REQUIRE` arrives that way.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
# The cgroup v2 hierarchy, for the --cgroup tests (as on most machines).
mount -t cgroup2 cgroup2 /sys/fs/cgroup
while read m; do insmod "/lib/modules/$m" || echo "KSCOPE-WARN insmod $m failed"; done </lib/modules/load.list
ip link set lo up
read up _ </proc/uptime
echo "KSCOPE-VM-BEGIN release=$(uname -r) uptime=$up"
# Under emulation one soak round (a scrape amid traffic, execs and
# connects) takes seconds, not a quarter of one: the daemon's soak runs 24
# scrapes here (4 of warm-up, 20 RSS samples) instead of the host's 240.
export KSCOPE_SOAK_SCRAPES=24
rc=0
for t in /tests/*; do
  echo "KSCOPE-BIN $(basename $t)"
  KSCOPE_BIN=/bin/kscope RUST_BACKTRACE=1 "$t" --test-threads=2 || rc=1
done
echo "KSCOPE-VM-RESULT rc=$rc"
sync
poweroff -f
"#;

/// Copies of the host's tools and every shared library they load, at the
/// same paths, so they run unchanged in the guest.
fn host_tools(
    w: &mut cpio::Writer<impl std::io::Write>,
    dirs: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
    let mut files = BTreeSet::new();
    for tool in HOST_TOOLS {
        let path = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .with_context(|| format!("{tool} is not installed (cargo xtask setup installs it)"))?;
        files.insert(path.clone());
        let ldd = Command::new("ldd").arg(&path).output()?;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let lib = line
                .split("=>")
                .last()
                .and_then(|r| r.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(lib) = lib {
                files.insert(PathBuf::from(lib));
            }
        }
    }
    for lib in HOST_LIBS {
        let path = Path::new(lib);
        if path.exists() {
            files.insert(path.to_path_buf());
        }
    }
    // tmux refuses to start without a UTF-8 locale ("need UTF-8 locale
    // (LC_CTYPE)"); glibc's C.UTF-8 comes from these files (libc-bin).
    let locale = Path::new(LOCALE_DIR);
    if locale.is_dir() {
        let mut stack = vec![locale.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                let path = e?.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.insert(path);
                }
            }
        }
    }
    for f in files {
        let data = fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        let name = f.display().to_string();
        mkdirs(w, dirs, &name)?;
        w.file(&name, 0o755, &data)?;
    }
    Ok(())
}

/// Creates the parent directories of `path` in the archive, once each.
fn mkdirs(
    w: &mut cpio::Writer<impl std::io::Write>,
    dirs: &mut BTreeSet<String>,
    path: &str,
) -> std::io::Result<()> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for i in 1..parts.len() {
        let d = parts[..i].join("/");
        if dirs.insert(d.clone()) {
            w.dir(&d)?;
        }
    }
    Ok(())
}

/// Statically linked test binaries and kscope, built for the guest.
pub struct TestBins {
    pub kscope: PathBuf,
    pub tests: Vec<(String, PathBuf)>,
}

/// Builds the integration tests and kscope statically (the guest has no
/// libc), without debug info to keep the initramfs small.
pub fn build_static(root: &Path) -> anyhow::Result<TestBins> {
    let target = "x86_64-unknown-linux-gnu";
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root)
        .args([
            "test",
            "--package",
            "kscope",
            "--tests",
            "--features",
            "vm-suite",
            "--no-run",
            "--target",
            target,
        ])
        .args(["--message-format", "json-render-diagnostics"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .stdout(Stdio::piped());
    eprintln!("xtask: building static test binaries for the VMs");
    let out = cmd.output().context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the static test binaries failed");
    }
    let mut bins = TestBins {
        kscope: PathBuf::new(),
        tests: Vec::new(),
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let kinds = &v["target"]["kind"];
        let name = v["target"]["name"].as_str().unwrap_or("?").to_owned();
        if kinds
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"))
            && v["profile"]["test"] == true
        {
            bins.tests.push((name, exe.into()));
        } else if kinds
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "bin"))
            && name == "kscope"
            && v["profile"]["test"] == false
        {
            bins.kscope = exe.into();
        }
    }
    if bins.kscope.as_os_str().is_empty() || bins.tests.is_empty() {
        bail!("cargo did not report the kscope binary and the integration tests");
    }
    bins.tests.sort();
    Ok(bins)
}

fn build_initramfs(bins: &TestBins, mods: &[(String, Vec<u8>)], out: &Path) -> anyhow::Result<u64> {
    let file = fs::File::create(out)?;
    let mut w = cpio::Writer::new(std::io::BufWriter::new(file));
    let mut dirs = BTreeSet::new();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "etc",
        "tests",
        "lib",
        "lib/modules",
    ] {
        dirs.insert(d.to_owned());
        w.dir(d)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("init", 0o755, INIT.as_bytes())?;
    w.file(
        "bin/busybox",
        0o755,
        &fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?,
    )?;
    w.file("bin/kscope", 0o755, &fs::read(&bins.kscope)?)?;
    for (name, path) in &bins.tests {
        w.file(&format!("tests/{name}"), 0o755, &fs::read(path)?)?;
    }
    host_tools(&mut w, &mut dirs)?;
    let mut list = String::new();
    for (name, bytes) in mods {
        w.file(&format!("lib/modules/{name}"), 0o644, bytes)?;
        list.push_str(name);
        list.push('\n');
    }
    w.file("lib/modules/load.list", 0o644, list.as_bytes())?;
    let mut inner = w.finish()?;
    inner.flush()?;
    Ok(fs::metadata(out)?.len())
}

/// Output lines of a finished command, and whether it succeeded.
pub struct Captured {
    pub lines: Vec<String>,
    pub success: bool,
}

/// Forwards a child's stdout and stderr, line by line, to one channel.
fn stream_lines(child: &mut std::process::Child) -> anyhow::Result<mpsc::Receiver<String>> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().context("child stdout")?;
    let stderr = child.stderr.take().context("child stderr")?;
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end_matches('\r').to_owned()).is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

/// Runs `cmd`, echoing every output line to stderr, and returns the lines.
pub fn run_and_echo(cmd: &mut Command, label: &str) -> anyhow::Result<Captured> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let rx = stream_lines(&mut child)?;
    let mut lines = Vec::new();
    for line in rx {
        eprintln!("[{label}] {line}");
        lines.push(line);
    }
    let success = child.wait()?.success();
    Ok(Captured { lines, success })
}

/// Tallies libtest output: `test NAME ... ok|FAILED` lines, attributed to the
/// binary named by the latest `KSCOPE-BIN NAME` (VM) or `Running ... (path)`
/// (cargo) line; a `KSCOPE-SKIP NAME` line turns that test's "ok" into a skip.
pub fn tally(lines: &[String], label: &str) -> Outcome {
    let mut o = Outcome {
        label: label.to_owned(),
        ..Default::default()
    };
    let mut bin = String::new();
    for line in lines {
        let trimmed = line.trim_start();
        if let Some(b) = line.strip_prefix("KSCOPE-BIN ") {
            bin = b.trim().to_owned();
        } else if let Some(path) = trimmed
            .strip_prefix("Running ")
            .and_then(|r| r.rsplit_once('(').map(|(_, p)| p.trim_end_matches(')')))
        {
            // target/debug/deps/fw_xdp-0123abcd → fw_xdp
            let file = Path::new(path)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned());
            let file = file.unwrap_or_default();
            bin = file
                .rsplit_once('-')
                .map_or(file.clone(), |(n, _)| n.to_owned());
        } else if let Some(name) = line.strip_prefix("KSCOPE-SKIP ") {
            o.skipped.push(format!("{bin}::{}", name.trim()));
        } else if let Some((name, verdict)) = parse_test_line(line) {
            let full = format!("{bin}::{name}");
            match verdict {
                "ok" => o.passed.push(full),
                "FAILED" => o.failed.push(full),
                // Host-only tests in the VM suite (feature `vm-suite`).
                "ignored" => o.skipped.push(full),
                _ => {}
            }
        }
    }
    // A skipped test also reports "ok": count it once, as skipped.
    o.passed.retain(|t| !o.skipped.contains(t));
    o
}

/// Boots one kernel, retrying boots that die before init (see
/// [`BOOT_TRIES`]), and collects its test results.
fn boot(k: &Kernel, img: &Image, initrd: &Path, log: &Path) -> anyhow::Result<Outcome> {
    let mut retries = Vec::new();
    loop {
        let mut o = boot_once(k, img, initrd, log)?;
        let early_death = o.boot.is_none()
            && o.error
                .as_deref()
                .is_some_and(|e| e.starts_with("kernel panic"));
        if early_death && (retries.len() as u32) < BOOT_TRIES - 1 {
            let why = o.error.take().unwrap_or_default();
            eprintln!(
                "[{}] guest died before init ({why}); booting again",
                k.label
            );
            retries.push(why);
            continue;
        }
        o.boot_retries = retries;
        if !o.ok() {
            show_failure_log(k.label, log);
        }
        return Ok(o);
    }
}

fn boot_once(k: &Kernel, img: &Image, initrd: &Path, log: &Path) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        // Two vCPUs, so per-CPU maps see more than one CPU, but one host
        // thread: multi-threaded TCG double-faults 6.12 at boot about one
        // time in three (in cmpxchg16b under slab allocation).
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-m",
            "1G",
            "-smp",
            "2",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&img.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 oops=panic loglevel=4 KSCOPE_REQUIRE={} {}",
            k.require, k.cmdline
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let rx = stream_lines(&mut child)?;
    let mut console = Vec::new();
    let mut boot_time = None;
    let mut result = None;
    let mut hung = false;
    let mut logf = fs::File::create(log)?;
    // When each test reported, from its binary's start: where a VM's time
    // goes (libtest has no per-test times on stable).
    let mut timesf = fs::File::create(log.with_extension("times"))?;
    // (binary, started at); the last one is running.
    let mut bins: Vec<(String, Instant)> = Vec::new();
    let mut last_line = Instant::now();
    loop {
        let left = VM_TIMEOUT.saturating_sub(start.elapsed()).min(VM_SILENCE);
        match rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(logf, "{line}")?;
                last_line = Instant::now();
                if let Some(b) = line.strip_prefix("KSCOPE-BIN ") {
                    bins.push((b.trim().to_owned(), Instant::now()));
                }
                if let (Some((bin, t)), Some((name, verdict))) =
                    (bins.last(), parse_test_line(&line))
                {
                    writeln!(
                        timesf,
                        "{:>7.1}s {bin}::{name} {verdict}",
                        t.elapsed().as_secs_f64()
                    )?;
                }
                if let Some(rest) = line.strip_prefix("KSCOPE-VM-BEGIN ") {
                    boot_time = Some(start.elapsed());
                    eprintln!("[{}] booted {rest} in {:.1?}", k.label, start.elapsed());
                } else if let Some(rc) = line.strip_prefix("KSCOPE-VM-RESULT rc=") {
                    result = Some(rc.trim().to_owned());
                } else if line.starts_with("skipping: ") || parse_test_line(&line).is_some() {
                    eprintln!("[{}] {line}", k.label);
                }
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                hung = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    let end = Instant::now();
    let mut o = tally(&console, k.label);
    o.release = img.release.clone();
    o.boot = boot_time;
    o.total = start.elapsed();
    o.bins = bins
        .iter()
        .enumerate()
        .map(|(i, (name, t))| {
            let until = bins.get(i + 1).map_or(end, |n| n.1);
            (name.clone(), until - *t)
        })
        .collect();
    if hung {
        // Name what was running: tests of that binary that had not reported.
        let running = bins.last().map_or("no test binary", |b| b.0.as_str());
        o.error = Some(format!(
            "hung in {running}: no output for {:.0?} (or over {VM_TIMEOUT:?} in all)",
            end - last_line
        ));
    } else if let Some(p) = console.iter().find(|l| l.contains("Kernel panic")) {
        o.error = Some(format!("kernel panic: {p}"));
    } else if result.is_none() {
        o.error = Some(format!("no result line from the guest (qemu {status})"));
    } else if result.as_deref() != Some("0") && o.failed.is_empty() {
        o.error = Some("a test binary failed without a failing test (crash?)".into());
    }
    Ok(o)
}

fn show_failure_log(label: &str, log: &Path) {
    let console: Vec<String> = fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    show_failure(&console, label, log);
}

/// "test name ... ok" → (name, "ok").
fn parse_test_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("test ")?;
    let (name, verdict) = rest.rsplit_once(" ... ")?;
    // "ignored, host only: ..." when the test gives a reason.
    let verdict = verdict.split_whitespace().next()?.trim_end_matches(',');
    matches!(verdict, "ok" | "FAILED" | "ignored").then_some((name, verdict))
}

/// Prints the failing tests' output (libtest's "failures:" sections) or, if
/// there is none, the console tail.
fn show_failure(console: &[String], label: &str, log: &Path) {
    let mut in_failures = false;
    let mut shown = 0;
    for line in console {
        if line == "failures:" {
            in_failures = true;
        }
        if in_failures {
            eprintln!("[{label}] {line}");
            shown += 1;
        }
        if line.starts_with("test result:") {
            in_failures = false;
        }
    }
    if shown == 0 {
        eprintln!("[{label}] console tail:");
        for line in console.iter().rev().take(40).rev() {
            eprintln!("[{label}]   {line}");
        }
    }
    eprintln!("[{label}] full console log: {}", log.display());
}

/// Runs the matrix (the kernels whose label contains `filter`, if given)
/// and returns one outcome per kernel. Images are prepared one by one, then
/// the VMs run in parallel: each uses one host thread.
pub fn run(root: &Path, filter: Option<&str>, only: Option<&str>) -> anyhow::Result<Vec<Outcome>> {
    let vm = root.join("target/vm");
    fs::create_dir_all(&vm)?;
    // "6.1" is 6.1-bookworm, not 6.12-...
    let kernels: Vec<&Kernel> = MATRIX
        .iter()
        .filter(|k| filter.is_none_or(|f| k.label == f || k.label.starts_with(&format!("{f}-"))))
        .collect();
    if kernels.is_empty() {
        bail!("no kernel in the matrix matches {filter:?}");
    }
    let mut bins = build_static(root)?;
    if let Some(only) = only {
        bins.tests.retain(|(name, _)| name == only);
        if bins.tests.is_empty() {
            bail!("no integration test binary is named {only}");
        }
    }
    let apt = Apt::new(&vm)?;
    let mut ready = Vec::new();
    for k in kernels {
        let t = Instant::now();
        let pkg = apt.resolve(k.suite)?;
        let deb = apt.download(&pkg, &vm.join("debs"))?;
        let img = unpack(&deb, &vm.join("kernels").join(&pkg))?;
        let mods = modules(&img)?;
        let initrd = vm.join(format!("initramfs-{}.cpio", k.label));
        let size = build_initramfs(&bins, &mods, &initrd)?;
        eprintln!(
            "[{}] {pkg}: image ready in {:.1?}, initramfs {} MiB, modules: {}",
            k.label,
            t.elapsed(),
            size >> 20,
            mods.iter()
                .map(|m| m.0.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let log = vm.join(format!("console-{}.log", k.label));
        ready.push((k, img, initrd, log));
    }
    // At most one VM per host core: TCG's early-boot crashes (BOOT_TRIES)
    // get likelier the more the host is oversubscribed.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (tokens_tx, tokens_rx) = mpsc::sync_channel(cores);
    for _ in 0..cores {
        tokens_tx.send(())?;
    }
    let tokens_rx = std::sync::Mutex::new(tokens_rx);
    std::thread::scope(|s| {
        let handles: Vec<_> = ready
            .iter()
            .map(|(k, img, initrd, log)| {
                let (tokens_rx, tokens_tx) = (&tokens_rx, tokens_tx.clone());
                s.spawn(move || {
                    let token = tokens_rx.lock().map(|rx| rx.recv());
                    let result = boot(k, img, initrd, log);
                    if let Ok(Ok(())) = token {
                        let _ = tokens_tx.send(());
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_attributes_tests_to_binaries_and_counts_skips_once() {
        let lines: Vec<String> = [
            "     Running tests/fw_xdp.rs (target/debug/deps/fw_xdp-0123abcd)",
            "test a ... ok",
            "test b ... FAILED",
            "KSCOPE-BIN probe_check",
            "skipping: k: kprobe unavailable: no",
            "KSCOPE-SKIP k",
            "test k ... ok",
            "test f ... ok",
            "test h ... ignored, host only: slow",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = tally(&lines, "x");
        assert_eq!(o.passed, vec!["fw_xdp::a", "probe_check::f"]);
        assert_eq!(o.failed, vec!["fw_xdp::b"]);
        assert_eq!(o.skipped, vec!["probe_check::k", "probe_check::h"]);
        assert!(!o.ok());
    }

    #[test]
    fn libtest_lines_parse() {
        assert_eq!(parse_test_line("test a::b ... ok"), Some(("a::b", "ok")));
        assert_eq!(parse_test_line("test x ... FAILED"), Some(("x", "FAILED")));
        assert_eq!(
            parse_test_line("test y ... ignored, host only: a reason"),
            Some(("y", "ignored"))
        );
        assert_eq!(parse_test_line("test result: ok. 3 passed"), None);
        assert_eq!(parse_test_line("running 3 tests"), None);
    }
}
