//! What the tracers' rows need besides text (which `output::text`
//! renders): errno and open-flag names, result labels, clock conversion.
//! They write into a caller's buffer and allocate nothing per event.

use std::io::{self, Write};

/// Name of a positive errno value, for the ones tracers commonly see.
pub(crate) fn errno_name(errno: i64) -> Option<&'static str> {
    Some(match errno as i32 {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNRESET => "ECONNRESET",
        libc::EISCONN => "EISCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return None,
    })
}

/// A call's result as a word: `ok`, an errno name, the number when it has
/// no name, or `unknown` where the probe cannot see it.
pub(crate) fn result_label(ret: Option<i32>) -> std::borrow::Cow<'static, str> {
    match ret {
        None => "unknown".into(),
        Some(0) => "ok".into(),
        Some(r) => errno_name(-i64::from(r)).map_or_else(|| r.to_string().into(), Into::into),
    }
}

const OPEN_FLAGS: &[(i32, &str)] = &[
    (libc::O_CREAT, "O_CREAT"),
    (libc::O_EXCL, "O_EXCL"),
    (libc::O_NOCTTY, "O_NOCTTY"),
    (libc::O_TRUNC, "O_TRUNC"),
    (libc::O_APPEND, "O_APPEND"),
    (libc::O_NONBLOCK, "O_NONBLOCK"),
    (libc::O_DSYNC, "O_DSYNC"),
    (libc::O_DIRECT, "O_DIRECT"),
    (libc::O_LARGEFILE, "O_LARGEFILE"),
    (libc::O_DIRECTORY, "O_DIRECTORY"),
    (libc::O_NOFOLLOW, "O_NOFOLLOW"),
    (libc::O_NOATIME, "O_NOATIME"),
    (libc::O_CLOEXEC, "O_CLOEXEC"),
    (libc::O_PATH, "O_PATH"),
];

/// Writes open flags symbolically: the access mode, then each set flag,
/// joined by `|`; unknown bits as hex. O_TMPFILE includes O_DIRECTORY's bit
/// and O_SYNC includes O_DSYNC's, so both are matched as wholes first.
pub(crate) fn write_open_flags(w: &mut impl Write, flags: u32) -> io::Result<()> {
    let mut f = flags as i32;
    w.write_all(match f & libc::O_ACCMODE {
        libc::O_RDONLY => b"O_RDONLY",
        libc::O_WRONLY => b"O_WRONLY",
        libc::O_RDWR => b"O_RDWR",
        _ => b"O_ACCMODE",
    })?;
    f &= !libc::O_ACCMODE;
    for (whole, name) in [(libc::O_TMPFILE, "O_TMPFILE"), (libc::O_SYNC, "O_SYNC")] {
        if f & whole == whole {
            write!(w, "|{name}")?;
            f &= !whole;
        }
    }
    for &(bit, name) in OPEN_FLAGS {
        if f & bit != 0 {
            write!(w, "|{name}")?;
            f &= !bit;
        }
    }
    if f != 0 {
        write!(w, "|{f:#x}")?;
    }
    Ok(())
}

/// The bytes of a NUL-terminated buffer up to its first NUL.
pub(crate) fn cstr(buf: &[u8]) -> &[u8] {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    &buf[..end]
}

/// Converts CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) to Unix
/// nanoseconds, with the offset between the clocks taken once at start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    offset_ns: i128,
    start_mono_ns: u64,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    // SAFETY: timespec is plain old data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub(crate) fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
            start_mono_ns: u64::try_from(mono).unwrap_or(0),
        }
    }

    /// Unix nanoseconds of a monotonic timestamp.
    pub(crate) fn unix_ns(&self, mono_ns: u64) -> u64 {
        u64::try_from(i128::from(mono_ns) + self.offset_ns).unwrap_or(0)
    }

    /// Seconds since the tracer started (for `-T`).
    pub(crate) fn since_start(&self, mono_ns: u64) -> f64 {
        mono_ns.saturating_sub(self.start_mono_ns) as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(f: i32) -> String {
        let mut v = Vec::new();
        write_open_flags(&mut v, f as u32).expect("write");
        String::from_utf8(v).expect("utf8")
    }

    #[test]
    fn open_flags_are_named() {
        assert_eq!(flags(libc::O_RDONLY), "O_RDONLY");
        assert_eq!(
            flags(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC),
            "O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC"
        );
        assert_eq!(flags(libc::O_RDWR | libc::O_TMPFILE), "O_RDWR|O_TMPFILE");
        assert_eq!(
            flags(libc::O_RDONLY | libc::O_DIRECTORY),
            "O_RDONLY|O_DIRECTORY"
        );
        assert_eq!(flags(libc::O_WRONLY | libc::O_SYNC), "O_WRONLY|O_SYNC");
        assert_eq!(flags(libc::O_WRONLY | libc::O_DSYNC), "O_WRONLY|O_DSYNC");
        // An undefined bit shows as hex rather than vanishing.
        assert_eq!(flags(1 << 30), "O_RDONLY|0x40000000");
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(2), Some("ENOENT"));
        assert_eq!(errno_name(111), Some("ECONNREFUSED"));
        assert_eq!(errno_name(4095), None);
    }

    #[test]
    fn cstr_stops_at_nul() {
        assert_eq!(cstr(b"abc\0def"), b"abc");
        assert_eq!(cstr(b"abc"), b"abc");
    }

    #[test]
    fn clock_converts_monotonic_to_unix_time() {
        let c = Clock::now();
        let now_unix = crate::sys::unix_now_ns();
        let converted = c.unix_ns(c.start_mono_ns);
        assert!(
            converted.abs_diff(now_unix) < 1_000_000_000,
            "{converted} vs {now_unix}"
        );
        assert_eq!(c.since_start(c.start_mono_ns + 1_500_000_000), 1.5);
    }
}
