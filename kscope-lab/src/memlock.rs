//! What the kernel accounts to a BPF map (its `memlock`), for the
//! benchmarks' memory figures. Any BPF map: this knows nothing of kscope's.

use std::{
    fs, io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// The `memlock:` figure (bytes the kernel accounts to a BPF map) from the
/// text of /proc/self/fdinfo/FD.
pub fn parse_fdinfo_memlock(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Bytes the kernel accounts to the BPF map behind `fd` (its `memlock`),
/// which for tries and hashes grows with the entries.
///
/// Minimum kernel: 4.10 (fdinfo memlock); an estimate kept current with the
/// entries from 6.4 (map_mem_usage).
pub fn map_memlock(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = fs::read_to_string(&path)?;
    parse_fdinfo_memlock(&text)
        .ok_or_else(|| io::Error::other(format!("no memlock line in {path}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_parses_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2059\nmap_type:\t11\nkey_size:\t9\nvalue_size:\t8\nmax_entries:\t2097152\nmap_flags:\t0x1\nmap_extra:\t0x0\nmemlock:\t81920\nmap_id:\t57\nfrozen:\t0\n";
        assert_eq!(parse_fdinfo_memlock(fdinfo), Some(81_920));
        assert_eq!(parse_fdinfo_memlock("pos:\t0\n"), None);
    }
}
