//! The network-namespace calls the lab makes: entering a namespace, and
//! telling which one the calling thread is in.

use std::{fs, io, os::fd::RawFd, path::Path};

/// Identity (device, inode) of a namespace file such as
/// /proc/thread-self/ns/net.
pub fn ns_id(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// True when the calling thread is in the initial network namespace, where
/// real interfaces live: that of PID 1 where /proc/1/ns/net is readable
/// (some VMs deny it even to root), and otherwise the namespace this
/// process started in (/proc/self/ns/net follows the main thread, which
/// the lab never moves: it enters namespaces on threads of its own).
pub fn in_initial_netns() -> io::Result<bool> {
    let here = ns_id(Path::new("/proc/thread-self/ns/net"))?;
    if let Ok(init) = ns_id(Path::new("/proc/1/ns/net"))
        && here == init
    {
        return Ok(true);
    }
    Ok(here == ns_id(Path::new("/proc/self/ns/net"))?)
}

/// `setns(fd, CLONE_NEWNET)`: moves the calling thread into the network
/// namespace open at `fd`. Only this thread moves; sockets it creates
/// afterwards belong to that namespace for their whole life.
/// Async-signal-safe, so usable between fork and exec.
pub fn setns_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns only reads its arguments; an invalid fd yields EBADF.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
