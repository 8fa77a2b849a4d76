//! The XDP firewall (`fw_xdp` → `fw_ipv4` | `fw_ipv6`): attach, detach,
//! status, counters and rules.
//!
//! Everything kscope attaches lives under `/sys/fs/bpf/kscope/IFACE/`, so a
//! later invocation (or another process) finds it there:
//!
//! | pin           | what                                                  |
//! |---------------|-------------------------------------------------------|
//! | `link`        | the XDP bpf_link; removing it detaches                |
//! | `fw_xdp`, `fw_ipv4`, `fw_ipv6` | the entry program and the two filters |
//! | `FW_PROGS`    | the tail-call program array                           |
//! | `FW_REASONS`  | per-CPU counters by family and reason (and so action) |
//! | `FW_CONFIG`   | mode, ifindex, default policy, attach time ([`FwConfig`]) |
//! | `FW_STATE`    | active rule slot, next rule id, rule counts           |
//! | `FW_ALLOW4`, `FW_BLOCK4`, `FW_ALLOW6`, `FW_BLOCK6` | source-rule LPM tries |
//! | `FW_PORTS`    | destination-port bits, every port 0-65535             |
//! | `FW_HITS`     | per-CPU rule hit counters                             |
//! | `FW_LIMIT4`, `FW_LIMIT6` | rate-limit LPM tries (prefix → rule id, rate, burst) |
//! | `FW_BUCKETS`  | token buckets (LRU), per source or prefix             |
//! | `FW_SOURCES`  | per-source counters for `fw top` (LRU, per-CPU)       |
//!
//! Rules are edited by any later invocation through these pins, with no
//! reload; writers take an exclusive `flock` on the interface's pin
//! directory, so two kscope processes cannot interleave their changes.
//!
//! Attaching is all or nothing: pins are made in a private staging directory
//! and renamed into place only once everything worked. Until then the link is
//! held only by this process, so an error or a crash detaches it.
//!
//! Minimum kernel: 5.9 (XDP through bpf_link, which is what makes the
//! attachment outlive the process and be removable by unpinning). The
//! programs themselves need LPM tries (4.11), bounded loops for the IPv6
//! extension-header walk (5.3), `bpf_jiffies64` for the rate limiter's
//! clock (5.5) and map batch reads are used from 5.6 with a
//! key-by-key fallback; all are older than 5.9.

pub mod cmd;
pub(crate) mod counters;
pub mod maps;
pub mod reference;
pub mod rules;
pub mod top;

use std::{
    fs, io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf,
    maps::{Array, Map, MapData, PerCpuArray, ProgramArray},
    programs::{Xdp, XdpMode, links::FdLink},
};
use kscope_common::fw::{
    Counter, FW_CONFIG_VERSION, FwConfig, GLOBAL_DEFAULT_DROP, GLOBAL_JIFFY_NS,
    GLOBAL_TRACK_SOURCES, LIMIT_TABLE_DEFAULT, LIMIT_TABLE_MAX, LIMIT_TABLE_MIN, MAP_ALLOW4,
    MAP_ALLOW6, MAP_BLOCK4, MAP_BLOCK6, MAP_BUCKETS, MAP_CONFIG, MAP_HITS, MAP_LIMIT4, MAP_LIMIT6,
    MAP_PORTS, MAP_PROGS, MAP_REASONS, MAP_SOURCES, MAP_STATE, MODE_NATIVE, MODE_SKB,
    N_REASON_COUNTERS, POLICY_DROP, POLICY_PASS, PROG_FW_IPV4, PROG_FW_IPV6, PROG_FW_XDP,
    PROG_INDEX_IPV4, PROG_INDEX_IPV6, TRACK_SOURCES_MAX,
};
use serde::Serialize;
use thiserror::Error;

use crate::sys::{self, Cap, SysError};
use counters::PerCpuCounters;

/// The compiled `fw_xdp` kernel object.
static FW_XDP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fw_xdp"));

/// Pin names inside an interface's directory.
const PIN_LINK: &str = "link";

/// Every map `attach` pins.
const PINNED_MAPS: [&str; 14] = [
    MAP_REASONS,
    MAP_CONFIG,
    MAP_PROGS,
    MAP_STATE,
    MAP_ALLOW4,
    MAP_BLOCK4,
    MAP_ALLOW6,
    MAP_BLOCK6,
    MAP_PORTS,
    MAP_HITS,
    MAP_LIMIT4,
    MAP_LIMIT6,
    MAP_BUCKETS,
    MAP_SOURCES,
];

/// Sizes of the tables fixed at load: the rate limiter's buckets and the
/// per-source counters of `fw top` (0: sources are not counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub limit_table: u32,
    pub track_sources: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            limit_table: LIMIT_TABLE_DEFAULT,
            track_sources: 0,
        }
    }
}

/// Checks a `--track-sources` size: 0 (off) to [`TRACK_SOURCES_MAX`].
///
/// # Errors
/// The one-line reason, for the CLI and the daemon's config.
pub fn check_track_sources(n: u64) -> Result<u32, String> {
    if n <= u64::from(TRACK_SOURCES_MAX) {
        Ok(n as u32)
    } else {
        Err(format!(
            "at most {TRACK_SOURCES_MAX} sources can be tracked (0 turns tracking off), not {n}"
        ))
    }
}

/// Checks a `--limit-table` size: [`LIMIT_TABLE_MIN`] to
/// [`LIMIT_TABLE_MAX`] buckets.
///
/// # Errors
/// The one-line reason, for the CLI and the daemon's config.
pub fn check_limit_table(n: u64) -> Result<u32, String> {
    if (u64::from(LIMIT_TABLE_MIN)..=u64::from(LIMIT_TABLE_MAX)).contains(&n) {
        Ok(n as u32)
    } else {
        Err(format!(
            "the rate limiter's table holds {LIMIT_TABLE_MIN} to {LIMIT_TABLE_MAX} buckets, not {n}"
        ))
    }
}

/// The pipeline's programs, entry first.
const PROGRAMS: [&str; 3] = [PROG_FW_XDP, PROG_FW_IPV4, PROG_FW_IPV6];

/// Errors from the firewall.
#[derive(Debug, Error)]
pub enum FwError {
    /// A system-level check failed (capabilities, interface, bpffs).
    #[error(transparent)]
    Sys(#[from] SysError),
    /// kscope is already attached to this interface.
    #[error("kscope is already attached to {iface} (program id {prog_id})")]
    AlreadyAttached { iface: String, prog_id: u32 },
    /// kscope is not attached to this interface.
    #[error("kscope is not attached to {0}")]
    NotAttached(String),
    /// Another XDP program already holds the interface.
    #[error("{iface} already has an XDP program that kscope did not attach")]
    Busy { iface: String },
    /// The driver has no native XDP support.
    #[error("{iface} does not support native XDP")]
    NativeUnsupported {
        iface: String,
        source: aya::programs::ProgramError,
    },
    /// The kernel attached XDP without a bpf_link, so it cannot be pinned.
    #[error("this kernel cannot attach XDP through a bpf_link (needs Linux 5.9+)")]
    NoXdpLink,
    /// Loading the object failed.
    #[error("failed to load {PROG_FW_XDP}")]
    Load(#[source] aya::EbpfError),
    /// Creating the object's maps failed (RLIMIT_MEMLOCK before Linux
    /// 5.11, most often).
    #[error("failed to load {PROG_FW_XDP}: creating its maps")]
    LoadMaps(#[source] aya::maps::MapError),
    /// Loading one program of the pipeline, or filling the tail-call array
    /// with it, failed; the verifier log is in the source.
    #[error("failed to load {PROG_FW_XDP}: {prog}")]
    Program {
        prog: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The object lacks a program or map that kscope-common names.
    #[error("failed to load {PROG_FW_XDP}: {0} missing from the object")]
    Missing(&'static str),
    /// Attaching failed.
    #[error("failed to attach {PROG_FW_XDP} to {iface}")]
    Attach {
        iface: String,
        source: aya::programs::ProgramError,
    },
    /// A pinned object is missing or unreadable.
    #[error("pinned state under {path} is unusable")]
    Pin {
        path: PathBuf,
        #[source]
        source: PinCause,
    },
    /// A filesystem operation on bpffs failed.
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A rule, port spec or rule file is malformed.
    #[error(transparent)]
    Rule(#[from] rules::RuleError),
    /// No `--iface` given while kscope is attached to several interfaces.
    #[error("kscope is attached to {} interfaces ({}); choose one with --iface", .0.len(), .0.join(", "))]
    WhichIface(Vec<String>),
    /// No `--iface` given and kscope is attached nowhere.
    #[error("kscope is not attached to any interface")]
    NothingAttached,
    /// Removing a rule that is not there.
    #[error("no such rule: {0}; nothing changed")]
    NoRule(String),
    /// A rule map is full.
    #[error("the {map} rules are full: the limit is {limit} rules per family; nothing changed")]
    Full { map: &'static str, limit: u32 },
    /// A map operation through aya failed.
    #[error("cannot {what}")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    /// A map read or write through kscope's own bpf() calls (batch
    /// operations, see [`sys::bpf`]) failed.
    #[error("cannot {what}")]
    MapIo {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The number of possible CPUs, which sizes per-CPU values, is unknown.
    #[error("cannot count the possible CPUs: reading {file}")]
    Cpus {
        file: &'static str,
        #[source]
        source: io::Error,
    },
    /// A `--limit-table` or `--track-sources` size out of range.
    #[error("{0}")]
    LimitTable(String),
    /// `fw top` on an interface attached without `--track-sources`.
    #[error(
        "kscope does not count sources on {0}: attach with --track-sources N (fw detach, then fw attach)"
    )]
    NotTracking(String),
    /// Every rule id was handed out (ids are never reused).
    #[error("cannot allocate a rule id: rule ids exhausted; detach and attach again")]
    IdsExhausted,
    /// Installing the SIGINT and SIGTERM handlers failed.
    #[error("installing signal handlers")]
    Signals(#[source] io::Error),
    /// Writing a verb's output failed (a closed pipe among others: see
    /// [`FwError::is_broken_pipe`]).
    #[error(transparent)]
    Output(io::Error),
}

impl FwError {
    /// True when the output went to a pipe nobody reads any more (`kscope
    /// fw rules | head -1`), which the binary treats as success.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, FwError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Why pinned state is unusable: the error of the operation on it.
#[derive(Debug, Error)]
pub enum PinCause {
    #[error(transparent)]
    Map(#[from] aya::maps::MapError),
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    #[error(transparent)]
    Pin(#[from] aya::pin::PinError),
    /// A bpf() call of kscope's own, or a filesystem operation.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The config map was written by a kscope with another layout.
    #[error(
        "config version {found} (this kscope reads {FW_CONFIG_VERSION}); detach and attach again"
    )]
    ConfigVersion { found: u32 },
}

/// Maps an error on the pinned object at `path` to [`FwError::Pin`].
fn pin_err<'a, E: Into<PinCause>>(path: &'a Path) -> impl FnOnce(E) -> FwError + 'a {
    move |e| FwError::Pin {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// The number of possible CPUs (per-CPU values have one slot each).
fn nr_cpus() -> Result<usize, FwError> {
    aya::util::nr_cpus().map_err(|(file, source)| FwError::Cpus { file, source })
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FwError + 'a {
    move |source| FwError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Requested XDP attach mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native (driver) mode; fails on drivers without XDP support.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Skb,
}

/// Verdict for IP packets no rule matches, fixed at attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Pass what no rule blocks.
    #[default]
    Pass,
    /// Drop what no rule allows: only allow-listed sources pass.
    Drop,
}

impl Policy {
    fn raw(self) -> u32 {
        match self {
            Policy::Pass => POLICY_PASS,
            Policy::Drop => POLICY_DROP,
        }
    }

    fn name(raw: u32) -> &'static str {
        match raw {
            POLICY_PASS => "pass",
            POLICY_DROP => "drop",
            _ => "unknown",
        }
    }
}

/// Loads the whole pipeline (entry program, both filters, the tail-call
/// array filled in) without attaching it. Minimum kernel: 5.3 (bounded
/// loops in `fw_ipv6`). `attach` uses it, and so do tests
/// and benchmarks that run the programs with BPF_PROG_TEST_RUN.
///
/// # Errors
/// [`FwError::LoadMaps`] or [`FwError::Load`] when the object cannot be
/// loaded, [`FwError::Program`] with the verifier log when a program is
/// rejected.
pub fn load_pipeline(policy: Policy) -> Result<Ebpf, FwError> {
    load_pipeline_sized(policy, Sizes::default())
}

/// [`load_pipeline`] with the tables sized as `sizes` says.
///
/// # Errors
/// As [`load_pipeline`].
pub fn load_pipeline_sized(policy: Policy, sizes: Sizes) -> Result<Ebpf, FwError> {
    let drop = policy.raw();
    let track = u32::from(sizes.track_sources > 0);
    let jiffy_ns = jiffy_ns().unwrap_or(0);
    // No CO-RE relocations: no need for aya to parse the kernel's BTF.
    let mut ebpf = sys::loader_without_kernel_btf()
        .override_global(GLOBAL_DEFAULT_DROP, &drop, true)
        .override_global(GLOBAL_TRACK_SOURCES, &track, true)
        .override_global(GLOBAL_JIFFY_NS, &jiffy_ns, true)
        .map_max_entries(MAP_BUCKETS, sizes.limit_table)
        .map_max_entries(MAP_SOURCES, sizes.track_sources.max(1))
        .load(FW_XDP_OBJ)
        .map_err(|e| match e {
            // aya's message for this one repeats its source's; keep the
            // map error only, so the cause chain says it once.
            aya::EbpfError::MapError(e) => FwError::LoadMaps(e),
            e => FwError::Load(e),
        })?;
    for prog in PROGRAMS {
        xdp_program(&mut ebpf, prog)?
            .load()
            .map_err(|source| FwError::Program { prog, source })?;
    }
    let mut fds = Vec::new();
    for (index, prog) in [
        (PROG_INDEX_IPV4, PROG_FW_IPV4),
        (PROG_INDEX_IPV6, PROG_FW_IPV6),
    ] {
        let fd = xdp_program(&mut ebpf, prog)?
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|source| FwError::Program { prog, source })?;
        fds.push((index, prog, fd));
    }
    let map = ebpf.map_mut(MAP_PROGS).ok_or(FwError::Missing(MAP_PROGS))?;
    let mut progs: ProgramArray<&mut MapData> =
        ProgramArray::try_from(map).map_err(|source| FwError::Map {
            what: format!("open {MAP_PROGS}"),
            source,
        })?;
    for (index, prog, fd) in &fds {
        progs.set(*index, fd, 0).map_err(|source| FwError::Map {
            what: format!("set {MAP_PROGS}[{index}] to {prog}"),
            source,
        })?;
    }
    Ok(ebpf)
}

/// The length of the kernel's tick in ns, when the rate limiter's clock is
/// jiffies (`bpf_jiffies64() × tick`, about 1 ns a packet where
/// `bpf_ktime_get_ns` costs some 34 in a VM); `None` when the tick cannot
/// be learnt and the limiter reads `bpf_ktime_get_ns`. The price of the
/// cheap clock: "now" moves once per tick (1-4 ms with HZ 1000-250), so
/// within a tick packets pass until the bucket is spent and the rest wait
/// for the next tick, and over any interval at most
/// `burst + pps × (interval + one tick)` pass instead of
/// `burst + pps × interval`.
pub fn jiffy_ns() -> Option<u64> {
    sys::tick_ns()
}

/// The XDP program `name` of a loaded object.
///
/// # Errors
/// [`FwError::Missing`] when the object has no such program, and
/// [`FwError::Program`] when it is no XDP program.
pub fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, FwError> {
    ebpf.program_mut(name)
        .ok_or(FwError::Missing(name))?
        .try_into()
        .map_err(|source| FwError::Program { prog: name, source })
}

/// Directory holding kscope's pins.
pub fn pin_root() -> PathBuf {
    Path::new(sys::BPFFS).join("kscope")
}

/// Where `attach` builds an interface's pins before renaming them into place.
fn staging_root() -> PathBuf {
    Path::new(sys::BPFFS).join("kscope_staging")
}

/// Directory holding one interface's pins.
///
/// bpffs refuses names with a '.' (kernel/bpf/inode.c reserves them), which
/// interface names may have (`eth0.100`), so '%' and '.' are escaped as
/// `%25` and `%2e`: `eth0.100` pins under `kscope/eth0%2e100/`.
pub fn pin_dir(iface: &str) -> PathBuf {
    pin_root().join(escape_ifname(iface))
}

fn escape_ifname(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

fn unescape_ifname(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = &rest[i..];
        if esc.starts_with("%2e") {
            out.push('.');
        } else if esc.starts_with("%25") {
            out.push('%');
        } else {
            out.push_str(&esc[..1]);
            rest = &esc[1..];
            continue;
        }
        rest = &esc[3..];
    }
    out.push_str(rest);
    out
}

/// What `attach` did.
#[derive(Debug, Serialize)]
pub struct Attached {
    pub(crate) iface: String,
    pub(crate) mode: &'static str,
    pub(crate) default_policy: &'static str,
    pub(crate) prog_id: u32,
    pub(crate) pin_dir: PathBuf,
}

fn mode_name(mode: u32) -> &'static str {
    match mode {
        MODE_NATIVE => "native",
        MODE_SKB => "skb",
        _ => "unknown",
    }
}

/// Loads `fw_xdp`, attaches it to `iface` and pins program, link and maps
/// under [`pin_dir`]. On any error nothing stays attached or pinned.
///
/// # Errors
/// Missing capabilities, unknown interface, bpffs unavailable, kscope or
/// another program already attached, native mode unsupported, verifier
/// rejection, or a bpffs failure.
pub fn attach(iface: &str, mode: Mode, policy: Policy) -> Result<Attached, FwError> {
    attach_sized(iface, mode, policy, Sizes::default())
}

/// [`attach`] with the tables sized as `sizes` says.
///
/// # Errors
/// As [`attach`], and [`FwError::LimitTable`] when a size is out of range.
pub fn attach_sized(
    iface: &str,
    mode: Mode,
    policy: Policy,
    sizes: Sizes,
) -> Result<Attached, FwError> {
    check_limit_table(u64::from(sizes.limit_table)).map_err(FwError::LimitTable)?;
    check_track_sources(u64::from(sizes.track_sources)).map_err(FwError::LimitTable)?;
    sys::validate_ifname(iface)?;
    sys::require_caps("kscope fw attach", &[Cap::Bpf, Cap::NetAdmin])?;
    let ifindex = sys::if_nametoindex(iface)?;
    sys::ensure_bpffs()?;
    sys::raise_memlock();
    let dir = pin_dir(iface);
    if dir.exists() {
        let prog_id = aya::programs::ProgramInfo::from_pin(dir.join(PROG_FW_XDP))
            .map(|i| i.id())
            .unwrap_or(0);
        return Err(FwError::AlreadyAttached {
            iface: iface.to_owned(),
            prog_id,
        });
    }

    let mut ebpf = load_pipeline_sized(policy, sizes)?;
    let prog = xdp_program(&mut ebpf, PROG_FW_XDP)?;

    let (link_id, mode_used) = match mode {
        Mode::Skb => (xdp_attach(prog, iface, ifindex, XdpMode::Skb)?, MODE_SKB),
        Mode::Native => (
            xdp_attach(prog, iface, ifindex, XdpMode::Driver).map_err(|e| native_err(iface, e))?,
            MODE_NATIVE,
        ),
        Mode::Auto => match xdp_attach(prog, iface, ifindex, XdpMode::Driver) {
            Ok(id) => (id, MODE_NATIVE),
            Err(FwError::Attach { .. }) => {
                tracing::info!("{iface}: no native XDP, using generic (skb) mode");
                (xdp_attach(prog, iface, ifindex, XdpMode::Skb)?, MODE_SKB)
            }
            Err(e) => return Err(e),
        },
    };
    let link = prog.take_link(link_id).map_err(|source| FwError::Attach {
        iface: iface.to_owned(),
        source,
    })?;
    let link: FdLink = link.try_into().map_err(|_| FwError::NoXdpLink)?;
    let prog_id = prog.info().map(|i| i.id()).unwrap_or(0);

    let config = FwConfig {
        version: FW_CONFIG_VERSION,
        ifindex,
        mode: mode_used,
        default_policy: policy.raw(),
        attached_at_unix_ns: sys::unix_now_ns(),
        limit_table: sizes.limit_table,
        track_sources: sizes.track_sources,
    };
    write_config(&mut ebpf, config)?;
    pin_all(&mut ebpf, link, iface, &dir)?;

    Ok(Attached {
        iface: iface.to_owned(),
        mode: mode_name(mode_used),
        default_policy: Policy::name(policy.raw()),
        prog_id,
        pin_dir: dir,
    })
}

fn xdp_attach(
    prog: &mut Xdp,
    iface: &str,
    ifindex: u32,
    mode: XdpMode,
) -> Result<aya::programs::xdp::XdpLinkId, FwError> {
    prog.attach_to_if_index(ifindex, mode).map_err(|source| {
        if io_errno(&source) == Some(libc::EBUSY) {
            FwError::Busy {
                iface: iface.to_owned(),
            }
        } else {
            FwError::Attach {
                iface: iface.to_owned(),
                source,
            }
        }
    })
}

fn native_err(iface: &str, e: FwError) -> FwError {
    match e {
        FwError::Attach { source, .. } => FwError::NativeUnsupported {
            iface: iface.to_owned(),
            source,
        },
        e => e,
    }
}

/// The errno inside a program error, if it carries one.
fn io_errno(e: &aya::programs::ProgramError) -> Option<i32> {
    sys::errno_in(e)
}

fn write_config(ebpf: &mut Ebpf, config: FwConfig) -> Result<(), FwError> {
    let map_err = |what: &str| {
        let what = format!("{what} {MAP_CONFIG}");
        move |source| FwError::Map { what, source }
    };
    let map = ebpf
        .map_mut(MAP_CONFIG)
        .ok_or(FwError::Missing(MAP_CONFIG))?;
    let mut arr: Array<&mut MapData, FwConfig> = Array::try_from(map).map_err(map_err("open"))?;
    arr.set(0, config, 0).map_err(map_err("write"))
}

/// Pins everything into a staging directory and renames it to `dir`, so a
/// reader sees either no directory or a complete one. On error the staging
/// directory is removed; dropping our link fd then detaches the program.
fn pin_all(ebpf: &mut Ebpf, link: FdLink, iface: &str, dir: &Path) -> Result<(), FwError> {
    // Another kscope may remove an empty kscope/ or kscope_staging/ as we
    // create them (the last detach tidies up), so a missing parent is
    // retried rather than fatal.
    let root = pin_root();
    let staging_root = staging_root();
    let staging = staging_root.join(format!("{}-{}", escape_ifname(iface), std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    retry_missing_parent(|| {
        for d in [&root, &staging_root] {
            fs::create_dir_all(d)?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))?;
        }
        fs::create_dir(&staging)
    })
    .map_err(io_err("create", &staging))?;

    let result = (|| {
        for name in PINNED_MAPS {
            let map = ebpf.map(name).ok_or(FwError::Missing(name))?;
            let path = staging.join(name);
            map.pin(&path).map_err(pin_err(&path))?;
        }
        for name in PROGRAMS {
            let path = staging.join(name);
            xdp_program(ebpf, name)?
                .pin(&path)
                .map_err(pin_err(&path))?;
        }
        // The link pin goes last: from here on the attachment outlives us.
        let path = staging.join(PIN_LINK);
        let pinned = link.pin(&path).map_err(pin_err(&path))?;
        retry_missing_parent(|| {
            fs::create_dir_all(&root)?;
            fs::rename(&staging, dir)
        })
        .map_err(io_err("rename into place", dir))?;
        drop(pinned);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    // Leave no empty staging directory behind; another attach may be using
    // it, in which case this fails harmlessly.
    let _ = fs::remove_dir(&staging_root);
    result
}

/// Runs `op`, again when it fails with ENOENT (a parent directory vanished
/// under it), a few times at most.
fn retry_missing_parent(mut op: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 10 => tries += 1,
            r => return r,
        }
    }
}

/// Detaches kscope from `iface` and removes its pins.
///
/// Works even when the interface is gone (its namespace deleted, say): the
/// pins are what `attach` left, and they are removed all the same.
///
/// # Errors
/// [`FwError::NotAttached`] when there is nothing to detach.
pub fn detach(iface: &str) -> Result<(), FwError> {
    sys::validate_ifname(iface)?;
    sys::require_caps("kscope fw detach", &[Cap::Bpf, Cap::NetAdmin])?;
    sys::ensure_bpffs()?;
    let dir = pin_dir(iface);
    if !dir.is_dir() {
        return Err(FwError::NotAttached(iface.to_owned()));
    }
    // The link goes first, so a failure afterwards leaves at worst some
    // maps behind, never a running program. It is detached explicitly:
    // unpinning alone detaches only some time after `fw detach` returned
    // (see detach_pinned_link). Where that fails (an interface gone
    // already has nothing attached), unpinning still detaches, later.
    let link = dir.join(PIN_LINK);
    if link.exists() {
        if let Err(e) = crate::sys::bpf::detach_pinned_link(&link) {
            tracing::debug!("detaching {}: {e}; unpinning detaches it", link.display());
        }
        fs::remove_file(&link).map_err(io_err("unpin", &link))?;
    }
    fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
    // The last detach leaves no empty kscope directory behind either; with
    // other interfaces still attached this fails, as it should.
    let _ = fs::remove_dir(pin_root());
    Ok(())
}

/// One attachment as `fw status` reports it.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub(crate) iface: String,
    pub(crate) ifindex: u32,
    pub(crate) mode: &'static str,
    /// `pass` or `drop`: the verdict for IP packets no rule matches.
    pub(crate) default_policy: &'static str,
    pub(crate) prog_id: u32,
    link_id: u32,
    /// Attach time, RFC 3339 in UTC.
    attached_at: String,
    attached_at_unix: u64,
    /// False when the interface has gone away (the kernel then drops the
    /// attachment); `fw detach` still removes the pins.
    pub(crate) attached: bool,
    /// Token buckets the rate limiter holds.
    pub(crate) limit_table: u32,
    /// Sources `fw top` can count (0: off).
    pub(crate) track_sources: u32,
}

/// Interfaces kscope is attached to, in name order.
pub fn attached_ifaces() -> Result<Vec<String>, FwError> {
    let root = pin_root();
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", &root)(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|n| unescape_ifname(&n))
        .collect();
    names.sort();
    Ok(names)
}

/// Status of every interface kscope is attached to.
pub(crate) fn status() -> Result<Vec<Status>, FwError> {
    sys::require_caps("kscope fw status", &[Cap::Bpf])?;
    sys::ensure_bpffs()?;
    let mut out = Vec::new();
    for iface in attached_ifaces()? {
        match status_of(&iface) {
            Ok(s) => out.push(s),
            // Detached while we read it: `detach` unpins the link first,
            // then removes the rest of the directory.
            Err(_) if !pin_dir(&iface).join(PIN_LINK).exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Status of kscope's attachment to `iface`.
///
/// # Errors
/// [`FwError::Pin`] when its pins are missing or unreadable.
pub(crate) fn status_of(iface: &str) -> Result<Status, FwError> {
    let dir = pin_dir(iface);
    let config = read_config(&dir)?;
    let prog_path = dir.join(PROG_FW_XDP);
    let prog_id = aya::programs::ProgramInfo::from_pin(&prog_path)
        .map_err(pin_err(&prog_path))?
        .id();
    let link_path = dir.join(PIN_LINK);
    let link = sys::bpf::pinned_link_info(&link_path).map_err(pin_err(&link_path))?;
    let at = UNIX_EPOCH + Duration::from_nanos(config.attached_at_unix_ns);
    Ok(Status {
        iface: iface.to_owned(),
        ifindex: config.ifindex,
        mode: mode_name(config.mode),
        default_policy: Policy::name(config.default_policy),
        prog_id,
        link_id: link.id,
        attached_at: rfc3339(at),
        attached_at_unix: config.attached_at_unix_ns / 1_000_000_000,
        // The kernel clears a link's ifindex when its device goes away.
        attached: link.xdp_ifindex != 0,
        limit_table: config.limit_table,
        track_sources: config.track_sources,
    })
}

fn read_config(dir: &Path) -> Result<FwConfig, FwError> {
    let path = dir.join(MAP_CONFIG);
    let data = MapData::from_pin(&path).map_err(pin_err(&path))?;
    let arr: Array<MapData, FwConfig> =
        Array::try_from(Map::Array(data)).map_err(pin_err(&path))?;
    let config = arr.get(&0, 0).map_err(pin_err(&path))?;
    if config.version != FW_CONFIG_VERSION {
        return Err(pin_err(&path)(PinCause::ConfigVersion {
            found: config.version,
        }));
    }
    Ok(config)
}

/// Reads the per-CPU counters by family and action of `iface`: its
/// reasons, added up by the action each reason stands for.
///
/// # Errors
/// [`FwError::NotAttached`] when kscope is not attached to `iface`.
pub(crate) fn read_counters(iface: &str) -> Result<PerCpuCounters, FwError> {
    Ok(read_reasons(iface)?.by_action())
}

/// Reads the per-CPU counters by reason of `iface`: one slot per
/// [`kscope_common::fw::reason_index`].
///
/// # Errors
/// [`FwError::NotAttached`] when kscope is not attached to `iface`.
pub(crate) fn read_reasons(iface: &str) -> Result<PerCpuCounters, FwError> {
    sys::validate_ifname(iface)?;
    let dir = pin_dir(iface);
    if !dir.is_dir() {
        return Err(FwError::NotAttached(iface.to_owned()));
    }
    read_per_cpu(&dir.join(MAP_REASONS), N_REASON_COUNTERS)
}

/// Reads a pinned per-CPU array of [`Counter`]s with one batch lookup where
/// the kernel has it (see [`sys::bpf::dump_map`]).
fn read_per_cpu(path: &Path, n: u32) -> Result<PerCpuCounters, FwError> {
    use std::os::fd::AsFd as _;
    let data = MapData::from_pin(path).map_err(pin_err(path))?;
    let arr: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(pin_err(path))?;
    let cpus = nr_cpus()?;
    let size = std::mem::size_of::<Counter>();
    let ops = sys::bpf::MapFdOps::new(
        aya::maps::IterableMap::map(&arr).fd().as_fd(),
        4,
        size,
        cpus,
    );
    let (dump, _) = sys::bpf::dump_map(&ops, None).map_err(pin_err(path))?;
    let mut slots = vec![vec![Counter::default(); cpus]; n as usize];
    for i in 0..dump.len {
        let (k, v) = dump.entry(&ops, i);
        let index = u32::from_ne_bytes([k[0], k[1], k[2], k[3]]) as usize;
        let Some(slot) = slots.get_mut(index) else {
            continue;
        };
        for (cpu, c) in v.chunks_exact(size).enumerate().take(cpus) {
            let word = |o: usize| u64::from_ne_bytes(c[o..o + 8].try_into().unwrap_or([0; 8]));
            slot[cpu] = Counter {
                packets: word(0),
                bytes: word(8),
            };
        }
    }
    Ok(PerCpuCounters { slots })
}

/// The interface a rule verb works on: `iface` if given (and attached),
/// else the only attached interface.
///
/// # Errors
/// [`FwError::NotAttached`], [`FwError::NothingAttached`], or
/// [`FwError::WhichIface`] listing the candidates.
fn resolve_iface(iface: Option<&str>) -> Result<String, FwError> {
    if let Some(i) = iface {
        sys::validate_ifname(i)?;
        if !pin_dir(i).is_dir() {
            return Err(FwError::NotAttached(i.to_owned()));
        }
        return Ok(i.to_owned());
    }
    let mut all = attached_ifaces()?;
    match all.len() {
        0 => Err(FwError::NothingAttached),
        1 => Ok(all.remove(0)),
        _ => Err(FwError::WhichIface(all)),
    }
}

/// An exclusive lock on an interface's pin directory, held by rule writers
/// so two kscope processes cannot interleave their changes. Released on drop.
pub(crate) struct IfaceLock {
    _dir: fs::File,
}

/// Takes [`IfaceLock`] for `iface`, waiting for another writer to finish.
pub(crate) fn lock_iface(iface: &str) -> Result<IfaceLock, FwError> {
    use std::os::fd::AsRawFd as _;
    let dir = pin_dir(iface);
    let f = fs::File::open(&dir).map_err(io_err("open", &dir))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err("lock", &dir)(io::Error::last_os_error()));
    }
    Ok(IfaceLock { _dir: f })
}

/// Opens `iface`'s rule maps (the interface resolved as by
/// [`resolve_iface`]) for the verb `what` (named in errors); with `write`,
/// also takes the writer lock.
///
/// # Errors
/// Missing CAP_BPF, bpffs unavailable, the errors of [`resolve_iface`], or
/// unusable pins.
fn open_rules(
    what: &str,
    iface: Option<&str>,
    write: bool,
) -> Result<(String, maps::RuleMaps, Option<IfaceLock>), FwError> {
    sys::require_caps(what, &[Cap::Bpf])?;
    sys::ensure_bpffs()?;
    let iface = resolve_iface(iface)?;
    let lock = if write {
        Some(lock_iface(&iface)?)
    } else {
        None
    };
    let maps = maps::RuleMaps::from_pins(&pin_dir(&iface))?;
    Ok((iface, maps, lock))
}

/// Formats a time as RFC 3339 in UTC, to the second.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) date in the proleptic
/// Gregorian calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.
        assert_eq!(rfc3339(at(951_827_696)), "2000-02-29T12:34:56Z");
        assert_eq!(rfc3339(at(1_795_000_000)), "2026-11-18T11:06:40Z");
    }

    /// The kernel's errno stays reachable (callers decide on it), and the
    /// one-line message says what failed and why.
    #[test]
    fn pin_errors_keep_their_source() {
        let e = pin_err(Path::new("/sys/fs/bpf/kscope/x/FW_CONFIG"))(
            aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_obj_get",
                io_error: io::Error::from_raw_os_error(libc::ENOENT),
            }),
        );
        assert_eq!(
            sys::Chain(&e).to_string(),
            "pinned state under /sys/fs/bpf/kscope/x/FW_CONFIG is unusable: \
             `bpf_obj_get` failed: No such file or directory (os error 2)"
        );
        assert_eq!(sys::errno_in(&e), Some(libc::ENOENT));
        let cause = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<PinCause>());
        assert!(matches!(cause, Some(PinCause::Map(_))), "{cause:?}");
    }

    #[test]
    fn pin_dir_is_per_interface_and_escapes_dots() {
        assert_eq!(pin_dir("veth0"), Path::new("/sys/fs/bpf/kscope/veth0"));
        assert_eq!(
            pin_dir("eth0.100"),
            Path::new("/sys/fs/bpf/kscope/eth0%2e100")
        );
        for name in ["eth0.100", "a%2eb", "%.%", "%2.", "plain", "%"] {
            let escaped = escape_ifname(name);
            assert!(!escaped.contains('.'), "{escaped}");
            assert_eq!(unescape_ifname(&escaped), name);
        }
    }
}
