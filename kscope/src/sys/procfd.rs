//! Which processes hold BPF programs open, from /proc/PID/fd and
//! /proc/PID/fdinfo, as `kscope top` and the daemon show them.
//!
//! Every scan lists every process and reads where each of its fds points
//! (one readlinkat each, relative to a directory fd, into a fixed buffer);
//! only fds that point at a BPF program or link (`anon_inode:bpf-prog`,
//! `anon_inode:bpf_link`) need their fdinfo read for the program id, and
//! that is read once per fd: while the same fd number of the same process
//! still points at a BPF object whose program is still loaded, the id
//! from the last scan is kept. (A process that closes a program's fd and
//! gets the same number for another program between two scans, while the
//! first program stays loaded through someone else, is shown with the old
//! id until that fd changes; telling the two apart would cost an fdinfo
//! read per fd per scan.)
//!
//! Reading every fd of every process is most of a refresh's cost (a
//! readlinkat per fd, a getdents per process). Since Linux 6.2 the size
//! of /proc/PID/fd is the number of fds open (fs/proc/fd.c,
//! proc_fd_getattr()), so a process whose fd directory has the same inode
//! (the same process) and the same size as at the last read is taken as
//! unchanged and not read again; each process is still read in full at
//! least every [`REREAD_EVERY`] scans (staggered by pid), which bounds how
//! long a program swapped in for another fd between two scans goes
//! unseen. Older kernels report size 0: every process is read every scan.
//!
//! Processes whose fds this process may not read (no CAP_SYS_PTRACE, or
//! another user's) and processes that exit during a scan are left out:
//! losing a holder is better than failing the view.

use std::{
    collections::HashMap,
    ffi::CStr,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// Each process's fds are read in full at least once in this many scans.
pub(crate) const REREAD_EVERY: u64 = 8;

/// Where a program or link fd points (fs/anon_inodes.c names).
const BPF_PROG_LINK: &[u8] = b"anon_inode:bpf-prog";
const BPF_LINK_LINK: &[u8] = b"anon_inode:bpf_link";

/// One process, and the programs it holds.
#[derive(Debug, Default)]
struct PidFds {
    /// (fd, program id) for each fd that holds a program.
    fds: Vec<(u32, u32)>,
    /// /proc/PID/fd's inode and size (its open fds, Linux 6.2+; 0 before)
    /// when its fds were last read.
    fingerprint: (u64, i64),
    /// The scan that last read its fds.
    read_at: u64,
    /// The process's name (/proc/PID/comm, without the newline).
    comm: Vec<u8>,
    /// The scan that last saw this process.
    seen: u64,
}

/// Scans /proc for the processes holding BPF programs, keeping buffers
/// and what it learnt between scans.
#[derive(Debug)]
pub(crate) struct Holders {
    proc_dir: OwnedFd,
    /// Read every process's fds at least every this many scans.
    reread_every: u64,
    dents: Vec<u8>,
    fd_dents: Vec<u8>,
    path: Vec<u8>,
    file: Vec<u8>,
    found: Vec<u32>,
    pids: HashMap<u32, PidFds>,
    scan: u64,
}

/// One holder: its pid and the programs it holds (an id may appear more
/// than once); [`Holders::comm`] has its name.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Holder<'a> {
    pub(crate) pid: u32,
    fds: &'a [(u32, u32)],
}

impl Holder<'_> {
    /// The ids of the programs held, with repeats.
    pub(crate) fn prog_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.fds.iter().map(|&(_, id)| id)
    }
}

fn cstr_path(buf: &mut Vec<u8>, parts: &[&[u8]]) -> *const libc::c_char {
    buf.clear();
    for p in parts {
        buf.extend_from_slice(p);
    }
    buf.push(0);
    buf.as_ptr().cast()
}

fn open_at(dir: i32, path: *const libc::c_char, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let fd = unsafe { libc::openat(dir, path, flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the whole (small) file `path` under `dir` into `buf`.
fn read_at(dir: i32, path: *const libc::c_char, buf: &mut Vec<u8>) -> io::Result<()> {
    let f = open_at(dir, path, libc::O_RDONLY)?;
    buf.clear();
    if buf.capacity() < 4096 {
        buf.reserve(4096);
    }
    loop {
        let spare = buf.capacity() - buf.len();
        if spare == 0 {
            buf.reserve(4096);
            continue;
        }
        // SAFETY: reads at most `spare` bytes into the vector's spare
        // capacity, which is valid for writes.
        let n = unsafe { libc::read(f.as_raw_fd(), buf.as_mut_ptr().add(buf.len()).cast(), spare) };
        match n {
            0 => return Ok(()),
            n if n > 0 => {
                // SAFETY: read wrote `n` bytes past the old length.
                unsafe { buf.set_len(buf.len() + n as usize) }
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Calls `f` with each name in the directory `dir` ("." and ".." left
/// out), reading entries into `buf`.
fn for_each_entry(dir: i32, buf: &mut Vec<u8>, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    if buf.len() < 32 * 1024 {
        buf.resize(32 * 1024, 0);
    }
    loop {
        // SAFETY: getdents64 writes at most buf.len() bytes into buf.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(());
        }
        let mut off = 0usize;
        let n = n as usize;
        // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
        while off + 19 <= n {
            let reclen = usize::from(u16::from_ne_bytes([buf[off + 16], buf[off + 17]]));
            if reclen == 0 || off + reclen > n {
                break;
            }
            let name = &buf[off + 19..off + reclen];
            let name = CStr::from_bytes_until_nul(name).map_or(name, CStr::to_bytes);
            if name != b"." && name != b".." {
                f(name);
            }
            off += reclen;
        }
    }
}

fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// The `prog_id:` of a program's or link's fdinfo text.
pub(crate) fn parse_fdinfo_prog_id(fdinfo: &[u8]) -> Option<u32> {
    fdinfo
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"prog_id:"))
        .and_then(|v| parse_u32(v.trim_ascii()))
}

impl Holders {
    /// Scans /proc.
    ///
    /// # Errors
    /// /proc cannot be opened.
    pub(crate) fn new() -> io::Result<Self> {
        Self::at(c"/proc")
    }

    /// Scans `root`, laid out as /proc (tests use a recorded tree).
    pub(crate) fn at(root: &CStr) -> io::Result<Self> {
        let proc_dir = open_at(
            libc::AT_FDCWD,
            root.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
        Ok(Self {
            proc_dir,
            reread_every: REREAD_EVERY,
            dents: Vec::new(),
            fd_dents: Vec::new(),
            path: Vec::with_capacity(64),
            file: Vec::with_capacity(4096),
            found: Vec::new(),
            pids: HashMap::new(),
            scan: 0,
        })
    }

    /// Scans every process once. `loaded(id)` says whether program `id`
    /// is still loaded (an id from the last scan is kept only then).
    ///
    /// # Errors
    /// /proc itself cannot be listed.
    pub(crate) fn scan(&mut self, loaded: impl Fn(u32) -> bool) -> io::Result<()> {
        self.scan += 1;
        let scan = self.scan;
        let root = self.proc_dir.as_raw_fd();
        // The pid list first (entries are re-read from the start each
        // scan: a fresh fd of the directory).
        let dir = open_at(root, c".".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        let mut pids = std::mem::take(&mut self.found);
        pids.clear();
        for_each_entry(dir.as_raw_fd(), &mut self.dents, |name| {
            if let Some(pid) = parse_u32(name) {
                pids.push(pid);
            }
        })?;
        drop(dir);
        let mut itoa = itoa_buf();
        let mut fds: Vec<u32> = Vec::new();
        for &pid in &pids {
            let p = fmt_u32(&mut itoa, pid);
            // SAFETY: statx is plain old data; all-zero is valid.
            let mut st: libc::statx = unsafe { std::mem::zeroed() };
            // SAFETY: the path is NUL-terminated; `st` is a valid
            // out-pointer.
            let rc = unsafe {
                libc::statx(
                    root,
                    cstr_path(&mut self.path, &[p, b"/fd"]),
                    0,
                    libc::STATX_INO | libc::STATX_SIZE,
                    &mut st,
                )
            };
            if rc != 0 {
                continue;
            }
            let fingerprint = (st.stx_ino, st.stx_size as i64);
            if let Some(e) = self.pids.get_mut(&pid) {
                let due = (scan + u64::from(pid)).is_multiple_of(self.reread_every);
                if fingerprint.1 > 0 && e.fingerprint == fingerprint && !due {
                    e.seen = scan;
                    if !e.fds.is_empty() {
                        read_comm(root, &mut self.path, &mut self.file, p, &mut e.comm);
                    }
                    continue;
                }
            }
            let fd_dir = match open_at(
                root,
                cstr_path(&mut self.path, &[p, b"/fd"]),
                libc::O_RDONLY | libc::O_DIRECTORY,
            ) {
                Ok(d) => d,
                Err(_) => continue,
            };
            fds.clear();
            let mut link = [0u8; 32];
            let dfd = fd_dir.as_raw_fd();
            let _ = for_each_entry(dfd, &mut self.fd_dents, |name| {
                let mut cname = [0u8; 16];
                if name.len() >= cname.len() {
                    return;
                }
                cname[..name.len()].copy_from_slice(name);
                // SAFETY: `cname` is NUL-terminated (zeroed past the name)
                // and `link` is valid for link.len() bytes.
                let n = unsafe {
                    libc::readlinkat(
                        dfd,
                        cname.as_ptr().cast(),
                        link.as_mut_ptr().cast(),
                        link.len(),
                    )
                };
                let Ok(n) = usize::try_from(n) else { return };
                let target = &link[..n.min(link.len())];
                if (target == BPF_PROG_LINK || target == BPF_LINK_LINK)
                    && let Some(fd) = parse_u32(name)
                {
                    fds.push(fd);
                }
            });
            drop(fd_dir);
            let entry = self.pids.entry(pid).or_default();
            entry.seen = scan;
            entry.read_at = scan;
            entry.fingerprint = fingerprint;
            if fds.is_empty() {
                entry.fds.clear();
                continue;
            }
            let old = std::mem::take(&mut entry.fds);
            let mut new = Vec::with_capacity(fds.len());
            for &fd in &fds {
                let kept = old
                    .binary_search_by_key(&fd, |&(f, _)| f)
                    .ok()
                    .map(|i| old[i].1)
                    .filter(|&id| loaded(id));
                let id = match kept {
                    Some(id) => id,
                    None => {
                        let mut fdbuf = itoa_buf();
                        let f = fmt_u32(&mut fdbuf, fd);
                        let path = cstr_path(&mut self.path, &[p, b"/fdinfo/", f]);
                        if read_at(root, path, &mut self.file).is_err() {
                            continue;
                        }
                        match parse_fdinfo_prog_id(&self.file) {
                            Some(id) => id,
                            None => continue,
                        }
                    }
                };
                new.push((fd, id));
            }
            new.sort_unstable();
            entry.fds = new;
            read_comm(root, &mut self.path, &mut self.file, p, &mut entry.comm);
        }
        self.found = pids;
        self.pids.retain(|_, e| e.seen == scan);
        Ok(())
    }

    /// The name of `pid`, if the last scan found it holding programs.
    pub(crate) fn comm(&self, pid: u32) -> Option<&[u8]> {
        self.pids
            .get(&pid)
            .filter(|e| !e.fds.is_empty())
            .map(|e| e.comm.as_slice())
    }

    /// The processes the last scan found holding programs, in no order.
    pub(crate) fn holders(&self) -> impl Iterator<Item = Holder<'_>> + '_ {
        self.pids
            .iter()
            .filter(|(_, e)| !e.fds.is_empty())
            .map(|(&pid, e)| Holder { pid, fds: &e.fds })
    }
}

/// Reads /proc/PID/comm (`p` is the pid in decimal) into `comm`.
fn read_comm(root: i32, path: &mut Vec<u8>, file: &mut Vec<u8>, p: &[u8], comm: &mut Vec<u8>) {
    let path = cstr_path(path, &[p, b"/comm"]);
    if read_at(root, path, file).is_ok() {
        let c = file.strip_suffix(b"\n").unwrap_or(file);
        if comm != c {
            comm.clear();
            comm.extend_from_slice(c);
        }
    }
}

fn itoa_buf() -> [u8; 10] {
    [0; 10]
}

/// `v` in decimal, in `buf`.
fn fmt_u32(buf: &mut [u8; 10], mut v: u32) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, fs, os::unix::ffi::OsStrExt as _, path::Path};

    use super::*;

    fn proc_tree(root: &Path, pid: u32, comm: &str, fds: &[(u32, &str, Option<u32>)]) {
        let d = root.join(pid.to_string());
        fs::create_dir_all(d.join("fd")).expect("fd dir");
        fs::create_dir_all(d.join("fdinfo")).expect("fdinfo dir");
        fs::write(d.join("comm"), format!("{comm}\n")).expect("comm");
        for &(fd, target, id) in fds {
            std::os::unix::fs::symlink(target, d.join("fd").join(fd.to_string())).expect("link");
            let mut info = "pos:\t0\nflags:\t02000002\n".to_owned();
            if let Some(id) = id {
                info.push_str(&format!("prog_type:\t6\nprog_id:\t{id}\n"));
            }
            fs::write(d.join("fdinfo").join(fd.to_string()), info).expect("fdinfo");
        }
    }

    fn held(h: &Holders) -> Vec<(u32, String, Vec<u32>)> {
        let mut v: Vec<_> = h
            .holders()
            .map(|x| {
                (
                    x.pid,
                    String::from_utf8_lossy(h.comm(x.pid).unwrap_or_default()).into_owned(),
                    x.prog_ids().collect(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn finds_program_and_link_holders_and_skips_other_fds() {
        let dir = tempfile::tempdir().expect("tempdir");
        proc_tree(
            dir.path(),
            42,
            "loader",
            &[
                (0, "/dev/null", None),
                (3, "anon_inode:bpf-prog", Some(7)),
                (4, "anon_inode:bpf-map", None),
                (5, "anon_inode:bpf_link", Some(9)),
                (6, "socket:[1234]", None),
            ],
        );
        proc_tree(dir.path(), 43, "idle", &[(0, "/dev/null", None)]);
        fs::create_dir_all(dir.path().join("self")).expect("self");
        let root = CString::new(dir.path().as_os_str().as_bytes()).expect("path");
        let mut h = Holders::at(&root).expect("open tree");
        h.reread_every = 1;
        h.scan(|_| true).expect("scan");
        assert_eq!(held(&h), vec![(42, "loader".to_owned(), vec![7, 9])]);
    }

    #[test]
    fn a_cached_id_is_read_again_once_its_program_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        proc_tree(
            dir.path(),
            42,
            "loader",
            &[(3, "anon_inode:bpf-prog", Some(7))],
        );
        let root = CString::new(dir.path().as_os_str().as_bytes()).expect("path");
        let mut h = Holders::at(&root).expect("open tree");
        h.reread_every = 1;
        h.scan(|_| true).expect("scan");
        // fd 3 now holds program 8 instead.
        fs::write(
            dir.path().join("42/fdinfo/3"),
            "prog_type:\t6\nprog_id:\t8\n",
        )
        .expect("fdinfo");
        h.scan(|id| id != 7).expect("scan");
        assert_eq!(held(&h), vec![(42, "loader".to_owned(), vec![8])]);
        // The process closes it: no holder is left.
        fs::remove_file(dir.path().join("42/fd/3")).expect("close");
        h.scan(|_| true).expect("scan");
        assert!(held(&h).is_empty());
    }

    #[test]
    fn an_unchanged_fd_directory_is_not_read_again_until_its_turn() {
        let dir = tempfile::tempdir().expect("tempdir");
        proc_tree(
            dir.path(),
            41,
            "loader",
            &[(3, "anon_inode:bpf-prog", Some(7))],
        );
        let root = CString::new(dir.path().as_os_str().as_bytes()).expect("path");
        let mut h = Holders::at(&root).expect("open tree");
        h.reread_every = 3;
        h.scan(|_| true).expect("scan 1");
        // fd 3 now holds program 8, but the directory did not change: the
        // next scan (2: (2 + 41) % 3 != 0, not pid 41's turn) keeps what it knew.
        fs::write(dir.path().join("41/fdinfo/3"), "prog_id:\t8\n").expect("fdinfo");
        h.scan(|id| id != 7).expect("scan 2");
        assert_eq!(held(&h), vec![(41, "loader".to_owned(), vec![7])]);
        // Within three scans it is pid 41's turn to be read in full.
        let mut turns = 0;
        while held(&h) != vec![(41, "loader".to_owned(), vec![8])] {
            h.scan(|id| id != 7).expect("scan");
            turns += 1;
            assert!(turns <= 3, "never read again");
        }
        // Another process under the same pid (a new fd directory, another
        // inode): read at the next scan, whoever's turn it is.
        let fd_dir = dir.path().join("41/fd");
        let keep = dir.path().join("41/fd-old");
        fs::rename(&fd_dir, &keep).expect("rename");
        fs::create_dir(&fd_dir).expect("fd dir");
        std::os::unix::fs::symlink("anon_inode:bpf_link", fd_dir.join("5")).expect("link");
        fs::write(dir.path().join("41/fdinfo/5"), "prog_id:\t9\n").expect("fdinfo");
        h.scan(|_| true).expect("scan");
        assert_eq!(held(&h), vec![(41, "loader".to_owned(), vec![9])]);
    }

    #[test]
    fn prog_id_parses_from_fdinfo() {
        assert_eq!(
            parse_fdinfo_prog_id(b"pos:\t0\nlink_type:\txdp\nlink_id:\t3\nprog_id:\t1234\n"),
            Some(1234)
        );
        assert_eq!(parse_fdinfo_prog_id(b"pos:\t0\nmap_id:\t5\n"), None);
    }

    #[test]
    fn decimal_formatting() {
        let mut b = itoa_buf();
        assert_eq!(fmt_u32(&mut b, 0), b"0");
        assert_eq!(fmt_u32(&mut b, 4_294_967_295), b"4294967295");
    }
}
