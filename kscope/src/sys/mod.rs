//! The one place kscope talks to the kernel outside aya: capabilities,
//! interface lookup, bpffs/tracefs mounts, procfs and sysfs reads,
//! resource limits.
//!
//! Functions that only parse what the kernel reports take the text as input
//! (see [`parse_cap_eff`]) so unit tests can feed them recorded files.

use std::{
    ffi::{CStr, CString},
    fmt, fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

pub mod bpf;
pub(crate) mod btf;
pub(crate) mod netlink;
pub(crate) mod procfd;

/// Where kscope expects the BPF filesystem.
pub(crate) const BPFFS: &str = "/sys/fs/bpf";
/// Where kscope expects tracefs.
pub(crate) const TRACEFS: &str = "/sys/kernel/tracing";

/// `BPF_FS_MAGIC` from include/uapi/linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `TRACEFS_MAGIC` from include/uapi/linux/magic.h.
const TRACEFS_MAGIC: i64 = 0x7472_6163;

/// Errors from the system layer.
#[derive(Debug, Error)]
pub enum SysError {
    /// The process lacks capabilities an operation needs.
    #[error("{what} needs {needed}; this process lacks {missing} (run as root)")]
    MissingCapabilities {
        what: String,
        needed: String,
        missing: String,
    },
    /// No network interface has this name in the current network namespace.
    #[error("no network interface named {0:?}")]
    NoSuchInterface(String),
    /// The interface name can never be valid (empty, too long, has a '/' or NUL).
    #[error("invalid interface name {0:?}: names are 1-15 bytes with no '/', whitespace or NUL")]
    BadInterfaceName(String),
    /// bpffs is not mounted and could not be mounted.
    #[error("the BPF filesystem is not mounted at {path} and mounting it failed")]
    BpffsUnavailable { path: PathBuf, source: io::Error },
    /// tracefs is not mounted and could not be mounted.
    #[error("tracefs is not mounted at {path} and mounting it failed")]
    TracefsUnavailable { path: PathBuf, source: io::Error },
    /// Reading a kernel interface file failed.
    #[error("failed to read {path}")]
    Read { path: PathBuf, source: io::Error },
}

/// A Linux capability, numbered as in include/uapi/linux/capability.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cap {
    NetAdmin = 12,
    SysAdmin = 21,
    SysResource = 24,
    Perfmon = 38,
    Bpf = 39,
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::SysResource => "CAP_SYS_RESOURCE",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
        })
    }
}

/// Parses the `CapEff:` line of /proc/PID/status into a bit set.
fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The capabilities in `needed` that `cap_eff` lacks. CAP_SYS_ADMIN stands in
/// for CAP_BPF and CAP_PERFMON, as it does on kernels before 5.8.
pub(crate) fn missing_caps(cap_eff: u64, needed: &[Cap]) -> Vec<Cap> {
    let has = |c: Cap| cap_eff & (1u64 << c as u32) != 0;
    needed
        .iter()
        .copied()
        .filter(|&c| !(has(c) || matches!(c, Cap::Bpf | Cap::Perfmon) && has(Cap::SysAdmin)))
        .collect()
}

/// Fails with [`SysError::MissingCapabilities`] unless this process holds
/// every capability in `needed`. `what` names the operation for the message.
pub(crate) fn require_caps(what: &str, needed: &[Cap]) -> Result<(), SysError> {
    let path = Path::new("/proc/self/status");
    let status = fs::read_to_string(path).map_err(|source| SysError::Read {
        path: path.into(),
        source,
    })?;
    let cap_eff = parse_cap_eff(&status).unwrap_or(0);
    let missing = missing_caps(cap_eff, needed);
    if missing.is_empty() {
        return Ok(());
    }
    let join = |caps: &[Cap]| {
        caps.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" and ")
    };
    Err(SysError::MissingCapabilities {
        what: what.to_owned(),
        needed: join(needed),
        missing: join(&missing),
    })
}

/// Checks that `name` could be an interface name (see dev_valid_name() in
/// net/core/dev.c), so it is also safe as a path component under bpffs.
pub(crate) fn validate_ifname(name: &str) -> Result<(), SysError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(SysError::BadInterfaceName(name.to_owned()))
    }
}

/// Index of interface `name` in this thread's network namespace.
pub(crate) fn if_nametoindex(name: &str) -> Result<u32, SysError> {
    validate_ifname(name)?;
    let c = CString::new(name).map_err(|_| SysError::BadInterfaceName(name.to_owned()))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(SysError::NoSuchInterface(name.to_owned()))
    } else {
        Ok(index)
    }
}

fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type)
}

/// The filesystem type (statfs `f_type`) of an open file.
///
/// # Errors
/// fstatfs(2) failing.
pub(crate) fn fd_fs_magic(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<i64> {
    use std::os::fd::AsRawFd;
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call and `st` a valid out-pointer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type)
}

fn mount(fstype: &str, target: &Path) -> io::Result<()> {
    let src = CString::new(fstype).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tgt = CString::new(target.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    mount_raw(Some(&src), &tgt, Some(&src), 0, None)
}

/// mount(2) with C strings (`None` for a null pointer).
fn mount_raw(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a valid NUL-terminated string, which
    // mount(2) only reads.
    let rc = unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Where the running kernel publishes its BTF (`vmlinux`, and modules').
pub const KERNEL_BTF_DIR: &str = "/sys/kernel/btf";

/// Runs `f` on a short-lived helper thread that sees [`KERNEL_BTF_DIR`]
/// empty, and returns what `f` returned.
///
/// What for: aya's `EbpfLoader::new()` reads and parses the kernel's whole
/// BTF (5 MiB on 6.18, some 19 MiB of heap at its peak) even for objects
/// with no CO-RE relocations, such as kscope's tracers (aya-rs/aya#1172);
/// built here, it finds no BTF and skips that work.
///
/// How: the helper unshares its mount namespace (CLONE_NEWNS), makes every
/// mount in the copy private (otherwise a new mount under a shared one, as
/// systemd sets up /, would propagate back to the original namespace), and
/// mounts an empty read-only tmpfs on [`KERNEL_BTF_DIR`]. The caller and
/// every other thread stay in the original namespace throughout; the
/// helper's namespace, and the tmpfs with it, is freed when the thread
/// exits. A helper rather than the calling thread because unsharing the
/// mount namespace also gives a thread its own copy of the process's
/// working directory, root and umask (CLONE_FS), which a thread that went
/// back with setns(2) would keep for good.
///
/// Minimum kernel: any (unshare(2) is 2.6.16).
///
/// # Errors
/// The process cannot (no CAP_SYS_ADMIN, as in most containers; a seccomp
/// filter or an LSM refusing unshare or mount), there is no BTF directory
/// to hide, or the thread could not be started. `f` has then not run: the
/// caller falls back to running it the ordinary way.
pub fn without_kernel_btf<T: Send>(f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let dir = CString::new(KERNEL_BTF_DIR).map_err(io::Error::other)?;
    if !Path::new(KERNEL_BTF_DIR).is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{KERNEL_BTF_DIR} is not a directory"),
        ));
    }
    std::thread::scope(|s| {
        let helper = std::thread::Builder::new()
            .name("kscope-nobtf".into())
            .spawn_scoped(s, move || {
                // SAFETY: unshare takes no pointers; CLONE_NEWNS (with the
                // CLONE_FS it implies) changes only this thread.
                if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                let private = libc::MS_REC | libc::MS_PRIVATE;
                mount_raw(None, c"/", None, private, None)?;
                let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                let data = c"mode=0555,size=4k";
                mount_raw(Some(c"none"), &dir, Some(c"tmpfs"), flags, Some(data))?;
                Ok(f())
            })?;
        helper
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// An aya loader with no kernel BTF, for objects without CO-RE relocations
/// (all of kscope's: they take kernel offsets from [`btf`] and tracefs).
/// Built through [`without_kernel_btf`], so it does not parse the kernel's
/// BTF at all; where that cannot be done, it parses it and drops the result
/// at once.
pub(crate) fn loader_without_kernel_btf<'a>() -> aya::EbpfLoader<'a> {
    let mut loader = without_kernel_btf(aya::EbpfLoader::new).unwrap_or_else(|e| {
        tracing::debug!("kernel BTF not hidden from the loader ({e}); it will parse it");
        aya::EbpfLoader::new()
    });
    loader.btf(None);
    loader
}

fn ensure_fs(path: &Path, magic: i64, fstype: &str) -> io::Result<()> {
    if fs_magic(path).ok() == Some(magic) {
        return Ok(());
    }
    mount(fstype, path)?;
    match fs_magic(path)? {
        m if m == magic => Ok(()),
        _ => Err(io::Error::other(format!(
            "{} is not {fstype} after mounting",
            path.display()
        ))),
    }
}

/// Makes sure bpffs is mounted at [`BPFFS`], mounting it if not.
pub(crate) fn ensure_bpffs() -> Result<(), SysError> {
    let path = Path::new(BPFFS);
    ensure_fs(path, BPF_FS_MAGIC, "bpf").map_err(|source| SysError::BpffsUnavailable {
        path: path.into(),
        source,
    })
}

/// Makes sure tracefs is mounted at [`TRACEFS`], mounting it if not.
pub fn ensure_tracefs() -> Result<(), SysError> {
    let path = Path::new(TRACEFS);
    ensure_fs(path, TRACEFS_MAGIC, "tracefs").map_err(|source| SysError::TracefsUnavailable {
        path: path.into(),
        source,
    })
}

/// True when bpffs is mounted at [`BPFFS`] (nothing is mounted here).
pub(crate) fn bpffs_mounted() -> bool {
    fs_magic(Path::new(BPFFS)).ok() == Some(BPF_FS_MAGIC)
}

/// True when tracefs is mounted at [`TRACEFS`] (nothing is mounted here).
pub(crate) fn tracefs_mounted() -> bool {
    fs_magic(Path::new(TRACEFS)).ok() == Some(TRACEFS_MAGIC)
}

/// This process's effective capability set (CapEff of /proc/self/status).
///
/// # Errors
/// /proc/self/status unreadable.
pub(crate) fn cap_eff() -> Result<u64, SysError> {
    let status = read_kernel_file(Path::new("/proc/self/status"))?;
    Ok(parse_cap_eff(&status).unwrap_or(0))
}

/// RLIMIT_MEMLOCK as (soft, hard) in bytes; `None` stands for unlimited.
///
/// # Errors
/// getrlimit's.
pub(crate) fn memlock_rlimit() -> io::Result<(Option<u64>, Option<u64>)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which is valid.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let lim = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Ok((lim(r.rlim_cur), lim(r.rlim_max)))
}

/// The running kernel's release (`uname -r`).
pub(crate) fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid out-pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates each field within its array.
    let r = unsafe { CStr::from_ptr(u.release.as_ptr()) };
    r.to_string_lossy().into_owned()
}

/// The kernel's tick in ns (`TICK_NSEC`, one jiffy): the resolution
/// `clock_getres(CLOCK_MONOTONIC_COARSE)` reports. `None` when the call
/// fails or the value is no tick length (HZ from 10 to 10,000).
pub(crate) fn tick_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } != 0 {
        return None;
    }
    let ns = u64::try_from(ts.tv_sec).ok()? * 1_000_000_000 + u64::try_from(ts.tv_nsec).ok()?;
    (100_000..=100_000_000).contains(&ns).then_some(ns)
}

/// Major and minor of a kernel release ("6.1.0-18-amd64" is (6, 1)).
pub(crate) fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Reads the file at `path` whole, but never more than `limit` bytes: a
/// path from the command line or a config may name a device that never
/// ends (`/dev/zero`), a FIFO fed forever or a huge file, and reading it
/// must fail instead of exhausting memory. A regular file larger than
/// `limit` is refused before any read; anything else is read up to
/// `limit + 1` bytes, so memory stays bounded by about twice `limit`.
///
/// # Errors
/// The open or read error, or [`io::ErrorKind::FileTooLarge`] with a
/// message naming the limit.
pub(crate) fn read_capped(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use io::Read as _;
    let file = fs::File::open(path)?;
    let too_large = || {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("the file is larger than the limit of {limit} bytes"),
        )
    };
    if let Ok(m) = file.metadata()
        && m.is_file()
        && m.len() > limit
    {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(buf)
}

/// Reads a procfs or sysfs file whole.
pub(crate) fn read_kernel_file(path: &Path) -> Result<String, SysError> {
    fs::read_to_string(path).map_err(|source| SysError::Read {
        path: path.into(),
        source,
    })
}

/// Parses a CPU list as sysfs writes it ("0-3,8,10-11") into CPU numbers.
fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if a > b {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// The CPUs that are online, from /sys/devices/system/cpu/online.
pub(crate) fn online_cpus() -> Result<Vec<u32>, SysError> {
    let path = Path::new("/sys/devices/system/cpu/online");
    let text = read_kernel_file(path)?;
    parse_cpu_list(&text).ok_or_else(|| SysError::Read {
        path: path.into(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("bad CPU list {text:?}")),
    })
}

/// The highest perf sampling frequency the kernel accepts, from
/// /proc/sys/kernel/perf_event_max_sample_rate (the kernel lowers it by
/// itself when sampling takes too long).
pub(crate) fn perf_max_sample_rate() -> Result<u64, SysError> {
    let path = Path::new("/proc/sys/kernel/perf_event_max_sample_rate");
    let text = read_kernel_file(path)?;
    text.trim().parse().map_err(|_| SysError::Read {
        path: path.into(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("bad rate {text:?}")),
    })
}

/// True while a process with this id exists.
pub(crate) fn process_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The memory maps of process `pid` (/proc/PID/maps).
pub(crate) fn read_proc_maps(pid: u32) -> Result<String, SysError> {
    read_kernel_file(&Path::new("/proc").join(pid.to_string()).join("maps"))
}

/// Opens the file process `pid` has mapped at `start`-`end`, through
/// /proc/PID/map_files: that is the very file mapped, also when it has
/// been deleted or lives in another mount namespace. Needs CAP_SYS_ADMIN
/// (or CAP_CHECKPOINT_RESTORE on 5.9+).
pub(crate) fn open_mapped_file(pid: u32, start: u64, end: u64) -> io::Result<fs::File> {
    fs::File::open(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
}

/// True when stdout is a pipe or socket whose reading end is gone (the
/// reader of `kscope ... | head -1` exited): poll(2) reports POLLERR or
/// POLLHUP on it. A terminal or a file never reports that.
pub(crate) fn stdout_closed() -> bool {
    let mut pfd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Lifts RLIMIT_MEMLOCK: kernels before 5.11 charge BPF maps against it,
/// and the profiler's stack map alone is larger than the old 64 KiB
/// default. Failure is harmless on newer kernels, which charge memory
/// cgroups instead, so the caller may ignore it.
pub(crate) fn raise_memlock_rlimit() -> io::Result<()> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// [`raise_memlock_rlimit`], logging rather than failing: later kernels
/// charge memory cgroups instead and ignore the limit, and a real shortage
/// shows up as a clear map-creation error anyway.
pub(crate) fn raise_memlock() {
    if let Err(e) = raise_memlock_rlimit() {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {e}");
    }
}

/// The size of a memory page (the smallest BPF ring buffer).
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

/// The errno somewhere in an error's cause chain (an `io::Error` or aya's
/// `SyscallError`), if any.
pub(crate) fn errno_in(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(sc) = err.downcast_ref::<aya::sys::SyscallError>() {
            return sc.io_error.raw_os_error();
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return io.raw_os_error();
        }
        cur = err.source();
    }
    None
}

/// An error and its sources in one line, joined by ": " as the binary
/// prints errors: for logs and replies that must say why, not only what.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// Registers SIGINT and SIGTERM to set the returned flag instead of
/// killing the process, so a verb that runs until interrupted ends its
/// loop and tears down what it set up.
///
/// # Errors
/// The handlers cannot be installed.
pub fn stop_on_signals() -> io::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// Nanoseconds since the Unix epoch.
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_capped_stops_at_the_limit_on_endless_and_large_inputs() {
        // /dev/zero never ends: the read must stop one byte past the limit.
        let e = read_capped(Path::new("/dev/zero"), 4096).expect_err("endless input");
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("limit of 4096 bytes"), "{e}");
        let dir = std::env::temp_dir().join(format!("kscope-capped-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("f");
        fs::write(&f, [b'x'; 100]).expect("write");
        assert_eq!(read_capped(&f, 100).expect("at the limit").len(), 100);
        let e = read_capped(&f, 99).expect_err("one byte over");
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn cap_eff_parses_from_proc_status() {
        let status = "Name:\tkscope\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn missing_caps_names_only_what_is_absent() {
        let net_admin = 1u64 << 12;
        assert_eq!(
            missing_caps(net_admin, &[Cap::Bpf, Cap::NetAdmin]),
            vec![Cap::Bpf]
        );
        assert_eq!(missing_caps(0, &[Cap::Bpf]), vec![Cap::Bpf]);
        // CAP_SYS_ADMIN covers CAP_BPF (pre-5.8 kernels) but not CAP_NET_ADMIN.
        let sys_admin = 1u64 << 21;
        assert_eq!(
            missing_caps(sys_admin, &[Cap::Bpf, Cap::NetAdmin]),
            vec![Cap::NetAdmin]
        );
    }

    #[test]
    fn cpu_lists_parse_as_sysfs_writes_them() {
        assert_eq!(parse_cpu_list("0\n"), Some(vec![0]));
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        for bad in ["a", "3-1", "1-", "-2"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn interface_names_that_could_escape_bpffs_are_rejected() {
        for bad in ["", ".", "..", "a/b", "eth0:1", "sixteen-chars-xx", "a b"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["lo", "eth0", "veth-a.10", "fifteen-chars-x"] {
            assert!(validate_ifname(good).is_ok(), "{good:?} rejected");
        }
    }
}
