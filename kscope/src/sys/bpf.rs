//! `bpf()` calls aya does not wrap: object pins, link info, and the batch
//! map reads behind [`dump_map`].
//!
//! Fallback policy for [`dump_map`]: BPF_MAP_LOOKUP_BATCH (Linux 5.6+, and
//! only for map types that implement it) is tried first; if the kernel or
//! the map type does not support it, the map is read key by key with
//! BPF_MAP_GET_NEXT_KEY and BPF_MAP_LOOKUP_ELEM. Both give the same entries,
//! so the fallback is silent; the [`ReadMethod`] used is returned for
//! callers that want to report it.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// Commands from include/uapi/linux/bpf.h.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_LINK_DETACH: libc::c_long = 34;
/// The kernel's internal "operation not supported" (include/linux/errno.h),
/// which leaks to user space from some map types.
const ENOTSUPP: i32 = 524;

/// The `BPF_OBJ_*` part of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// The `info` part of `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C, align(8))]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Leading fields of `struct bpf_link_info`. The kernel fills what it knows
/// and requires any tail it does not know to be zero.
#[repr(C, align(8))]
#[derive(Default)]
struct RawLinkInfo {
    type_: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    /// First word of the per-type union: `xdp.ifindex` for XDP links.
    union_head: u32,
    _rest: [u32; 11],
}

/// What the kernel reports about a pinned link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    pub(crate) id: u32,
    pub(crate) prog_id: u32,
    /// For XDP links, the interface index; 0 once the device is gone (the
    /// kernel clears it in dev_xdp_uninstall(), net/core/dev.c).
    pub(crate) xdp_ifindex: u32,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a correctly laid out prefix of union bpf_attr for
    // `cmd`, and every pointer inside it is valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned BPF object.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `link_detach` part of `union bpf_attr`.
#[repr(C, align(8))]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Detaches a pinned link's program now (BPF_LINK_DETACH). The link stays
/// pinned, defunct. Unpinning alone detaches too, but later: the kernel
/// drops an unpinned object's last reference after an RCU grace period,
/// and puts a link from there on a work queue, so the program can still
/// be attached when `rm` returns.
///
/// Minimum kernel: 5.9.
pub(crate) fn detach_pinned_link(path: &Path) -> io::Result<()> {
    let fd = obj_get(path)?;
    let mut attr = LinkDetachAttr {
        link_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
    };
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Reads a pinned link's info.
///
/// Minimum kernel: 5.8 (link info); 5.9 for XDP links.
pub(crate) fn pinned_link_info(path: &Path) -> io::Result<LinkInfo> {
    let fd = obj_get(path)?;
    let mut info = RawLinkInfo::default();
    let mut attr = InfoByFdAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        info_len: std::mem::size_of::<RawLinkInfo>() as u32,
        info: (&raw mut info) as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        id: info.id,
        prog_id: info.prog_id,
        xdp_ifindex: info.union_head,
    })
}

/// `struct bpf_prog_info` up to `recursion_misses` (include/uapi/linux/
/// bpf.h), as 27 u64 words; `recursion_misses` is the last. Kernels that
/// predate a field leave it zero (they copy what they know and require
/// the rest to be zero, which it is).
#[repr(C, align(8))]
struct RawProgInfo([u64; 27]);

/// A program's run statistics, as `struct bpf_prog_info` has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    /// Nanoseconds run while stats were on (BPF_ENABLE_STATS, Linux 5.1+).
    pub run_time_ns: u64,
    /// Runs while stats were on.
    pub run_cnt: u64,
    /// Runs the kernel skipped because another BPF program was already
    /// running on that CPU (Linux 5.12+; earlier kernels report 0: they do
    /// not count). Each one is an event a tracer never saw.
    pub recursion_misses: u64,
}

/// The run statistics of the program `fd`.
///
/// # Errors
/// BPF_OBJ_GET_INFO_BY_FD failing (not a program fd).
pub(crate) fn prog_stats(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<ProgStats> {
    let mut info = RawProgInfo([0; 27]);
    let mut attr = InfoByFdAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        info_len: std::mem::size_of::<RawProgInfo>() as u32,
        info: (&raw mut info) as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // run_time_ns, run_cnt and recursion_misses: bytes 192, 200 and 208.
    Ok(ProgStats {
        run_time_ns: info.0[24],
        run_cnt: info.0[25],
        recursion_misses: info.0[26],
    })
}

/// The `*_GET_NEXT_ID` / `*_GET_FD_BY_ID` part of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct IdAttr {
    /// `start_id`, `prog_id` or `map_id`.
    id: u32,
    next_id: u32,
    open_flags: u32,
    /// `fd_by_id_token_fd` (6.x); spelt out so the padding is zero, which
    /// the kernel checks.
    _token_fd: u32,
}

/// `struct bpf_prog_info` (include/uapi/linux/bpf.h) up to
/// `recursion_misses`, with the fields [`prog_info`] reads named.
#[repr(C, align(8))]
struct ProgInfoRaw {
    type_: u32,
    id: u32,
    _tag_to_load_time: [u64; 5],
    _created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    /// `ifindex` to `prog_tags`: nothing kscope reads.
    _middle: [u64; 14],
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
}

const _: () = assert!(std::mem::size_of::<ProgInfoRaw>() == 216);
const _: () = assert!(std::mem::offset_of!(ProgInfoRaw, run_time_ns) == 192);
const _: () = assert!(std::mem::offset_of!(ProgInfoRaw, name) == 64);

/// What [`prog_info`] reports about a program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProgInfo {
    pub(crate) id: u32,
    /// `enum bpf_prog_type`.
    pub(crate) type_: u32,
    /// The name given at load, NUL-padded (at most 15 bytes).
    pub(crate) name: [u8; 16],
    pub(crate) stats: ProgStats,
    /// How many maps the program uses (all of them, even when the buffer
    /// passed to [`prog_info`] held fewer).
    pub(crate) nr_map_ids: u32,
}

/// The id of the first BPF program with an id above `after`, or `None`
/// past the last.
///
/// Minimum kernel: 4.13. Needs CAP_SYS_ADMIN.
///
/// # Errors
/// bpf()'s (EPERM without the capability).
pub(crate) fn prog_next_id(after: u32) -> io::Result<Option<u32>> {
    let mut attr = IdAttr {
        id: after,
        ..Default::default()
    };
    match sys_bpf(BPF_PROG_GET_NEXT_ID, &mut attr) {
        Ok(_) => Ok(Some(attr.next_id)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn fd_by_id(cmd: libc::c_long, id: u32) -> io::Result<OwnedFd> {
    let mut attr = IdAttr {
        id,
        ..Default::default()
    };
    let fd = sys_bpf(cmd, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new fd for the program `id`.
///
/// Minimum kernel: 4.13. Needs CAP_SYS_ADMIN.
///
/// # Errors
/// ENOENT once the program is gone; EPERM without the capability.
pub(crate) fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    fd_by_id(BPF_PROG_GET_FD_BY_ID, id)
}

/// A new fd for the map `id`.
///
/// Minimum kernel: 4.13. Needs CAP_SYS_ADMIN.
///
/// # Errors
/// ENOENT once the map is gone; EPERM without the capability.
pub(crate) fn map_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    fd_by_id(BPF_MAP_GET_FD_BY_ID, id)
}

/// The program `fd`'s id, type, name and run statistics. With `map_ids`,
/// also the ids of the maps it uses, written into it (grown as needed;
/// its old contents are dropped); without, the kernel copies none.
///
/// Minimum kernel: 4.13; run statistics 5.1 (0 before).
///
/// # Errors
/// BPF_OBJ_GET_INFO_BY_FD failing (not a program fd).
pub(crate) fn prog_info(
    fd: std::os::fd::BorrowedFd<'_>,
    mut map_ids: Option<&mut Vec<u32>>,
) -> io::Result<ProgInfo> {
    let bpf_fd =
        u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    loop {
        // SAFETY: all-zero is a valid ProgInfoRaw (integers and arrays).
        let mut info: ProgInfoRaw = unsafe { std::mem::zeroed() };
        let cap = match map_ids.as_deref_mut() {
            Some(ids) => {
                ids.clear();
                info.nr_map_ids = u32::try_from(ids.capacity()).unwrap_or(u32::MAX);
                info.map_ids = ids.as_mut_ptr() as u64;
                info.nr_map_ids
            }
            None => 0,
        };
        let mut attr = InfoByFdAttr {
            bpf_fd,
            info_len: std::mem::size_of::<ProgInfoRaw>() as u32,
            info: (&raw mut info) as u64,
        };
        sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        if let Some(ids) = map_ids.as_deref_mut() {
            if info.nr_map_ids > cap {
                // Too small: grow and ask again.
                ids.reserve(info.nr_map_ids as usize);
                continue;
            }
            // SAFETY: the kernel wrote nr_map_ids (<= capacity) u32s at
            // the start of the buffer.
            unsafe { ids.set_len(info.nr_map_ids as usize) };
        }
        return Ok(ProgInfo {
            id: info.id,
            type_: info.type_,
            name: info.name,
            stats: ProgStats {
                run_time_ns: info.run_time_ns,
                run_cnt: info.run_cnt,
                recursion_misses: info.recursion_misses,
            },
            nr_map_ids: info.nr_map_ids,
        });
    }
}

/// The leading fields of `struct bpf_map_info`.
#[repr(C, align(8))]
#[derive(Default)]
struct MapInfoRaw {
    type_: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// What [`map_info`] reports about a map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MapInfo {
    pub(crate) id: u32,
    pub(crate) type_: u32,
    pub(crate) key_size: u32,
    pub(crate) value_size: u32,
    pub(crate) max_entries: u32,
}

impl MapInfo {
    /// A lower bound on the map's memory from its shape alone (keys and
    /// values of every entry), for kernels whose fdinfo has no `memlock`.
    pub(crate) fn estimate_bytes(&self) -> u64 {
        (u64::from(self.key_size) + u64::from(self.value_size)) * u64::from(self.max_entries)
    }
}

/// The map `fd`'s `struct bpf_map_info` (its leading fields).
///
/// Minimum kernel: 4.13.
///
/// # Errors
/// BPF_OBJ_GET_INFO_BY_FD failing (not a map fd).
pub(crate) fn map_info(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<MapInfo> {
    let mut info = MapInfoRaw::default();
    let mut attr = InfoByFdAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        info_len: std::mem::size_of::<MapInfoRaw>() as u32,
        info: (&raw mut info) as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(MapInfo {
        id: info.id,
        type_: info.type_,
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries: info.max_entries,
    })
}

/// The `memlock:` figure (bytes the kernel accounts to a BPF map) of a
/// map's /proc/PID/fdinfo text.
pub fn parse_fdinfo_memlock(fdinfo: &[u8]) -> Option<u64> {
    fdinfo
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"memlock:"))
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Bytes the kernel accounts to the BPF map behind `fd` (its `memlock` in
/// /proc/self/fdinfo): on 6.4 and later what the map really allocated, on
/// earlier kernels an estimate from its shape. `None` when fdinfo has no
/// such line.
///
/// Minimum kernel: 4.10.
///
/// # Errors
/// fdinfo unreadable.
pub fn map_memlock(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let text = std::fs::read(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    Ok(parse_fdinfo_memlock(&text))
}

/// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

/// The `batch` part of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The map operations [`dump_map`] needs. [`MapFdOps`] does them with
/// bpf(); unit tests substitute fakes.
pub trait MapOps {
    /// Size of a key in bytes.
    fn key_size(&self) -> usize;
    /// Size of a value as user space sees it (for per-CPU maps, one 8-byte
    /// aligned value per possible CPU).
    fn value_size(&self) -> usize;
    /// One BPF_MAP_LOOKUP_BATCH call. On success or on `ENOENT` (the map
    /// is exhausted), `*count` holds how many entries were written.
    fn lookup_batch(
        &self,
        in_batch: Option<&[u8]>,
        out_batch: &mut [u8],
        keys: &mut [u8],
        values: &mut [u8],
        count: &mut u32,
    ) -> io::Result<()>;
    /// BPF_MAP_GET_NEXT_KEY: the key after `key`, or the first one.
    fn next_key(&self, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<()>;
    /// BPF_MAP_LOOKUP_ELEM.
    fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<()>;
}

/// [`MapOps`] on a real map file descriptor.
pub struct MapFdOps {
    fd: u32,
    key_size: usize,
    value_size: usize,
}

impl MapFdOps {
    /// Wraps `fd` (which must stay open while this is used), for a map with
    /// `key_size`-byte keys and `value_size`-byte values, of which there are
    /// `per_cpu` copies (1 for ordinary maps, the possible CPUs for per-CPU
    /// maps).
    pub fn new(
        fd: std::os::fd::BorrowedFd<'_>,
        key_size: usize,
        value_size: usize,
        per_cpu: usize,
    ) -> Self {
        let value_size = if per_cpu > 1 {
            value_size.next_multiple_of(8) * per_cpu
        } else {
            value_size
        };
        Self {
            fd: fd.as_raw_fd() as u32,
            key_size,
            value_size,
        }
    }
}

impl MapOps for MapFdOps {
    fn key_size(&self) -> usize {
        self.key_size
    }

    fn value_size(&self) -> usize {
        self.value_size
    }

    fn lookup_batch(
        &self,
        in_batch: Option<&[u8]>,
        out_batch: &mut [u8],
        keys: &mut [u8],
        values: &mut [u8],
        count: &mut u32,
    ) -> io::Result<()> {
        let mut attr = BatchAttr {
            in_batch: in_batch.map_or(0, |b| b.as_ptr() as u64),
            out_batch: out_batch.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: *count,
            map_fd: self.fd,
            ..Default::default()
        };
        let r = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        *count = attr.count;
        r.map(|_| ())
    }

    fn next_key(&self, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: self.fd,
            key: key.map_or(0, |k| k.as_ptr() as u64),
            value_or_next_key: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr).map(|_| ())
    }

    fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: self.fd,
            key: key.as_ptr() as u64,
            value_or_next_key: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map(|_| ())
    }
}

/// How [`dump_map`] read a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMethod {
    /// BPF_MAP_LOOKUP_BATCH.
    Batch,
    /// BPF_MAP_GET_NEXT_KEY + BPF_MAP_LOOKUP_ELEM per key.
    KeyByKey,
}

/// Every entry of a map, as (key bytes, value bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dump {
    pub(crate) keys: Vec<u8>,
    pub(crate) values: Vec<u8>,
    pub len: usize,
}

impl Dump {
    /// Entry `i` as (key, value) byte slices.
    pub fn entry<'a>(&'a self, ops: &impl MapOps, i: usize) -> (&'a [u8], &'a [u8]) {
        let (k, v) = (ops.key_size(), ops.value_size());
        (
            &self.keys[i * k..(i + 1) * k],
            &self.values[i * v..(i + 1) * v],
        )
    }
}

/// True for the errors a kernel gives when it has no batch lookup for this
/// map type (or none at all).
/// Writes `count` entries with one BPF_MAP_UPDATE_BATCH call: `keys` and
/// `values` hold them back to back. Minimum kernel: 5.6; before, or for a
/// map type without batches, the error is one [`batch_unsupported`]
/// accepts, and the caller writes entry by entry.
///
/// # Errors
/// The kernel's, with the entries before the failing one written.
pub(crate) fn map_update_batch(
    fd: std::os::fd::BorrowedFd<'_>,
    keys: &[u8],
    values: &[u8],
    count: u32,
) -> io::Result<()> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map(|_| ())
}

/// True when a batch operation failed because the kernel or the map type
/// has none.
pub(crate) fn batch_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP | libc::ENOSYS)
    )
}

/// Reads every entry of a map: in batches where the kernel supports
/// BPF_MAP_LOOKUP_BATCH for this map, key by key otherwise (see the module
/// doc). `method` forces one way (for tests and the benchmark); `None`
/// chooses.
///
/// Minimum kernel: 5.6 for batches; any kernel with BPF for key by key.
///
/// # Errors
/// Any bpf() failure other than "batch unsupported".
pub fn dump_map(ops: &impl MapOps, method: Option<ReadMethod>) -> io::Result<(Dump, ReadMethod)> {
    if method != Some(ReadMethod::KeyByKey) {
        match dump_batch(ops) {
            Ok(d) => return Ok((d, ReadMethod::Batch)),
            Err(e) if method.is_none() && batch_unsupported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((dump_key_by_key(ops)?, ReadMethod::KeyByKey))
}

fn dump_batch(ops: &impl MapOps) -> io::Result<Dump> {
    let (ks, vs) = (ops.key_size(), ops.value_size());
    // Hash maps use a 4-byte bucket cursor, arrays a key: room for either.
    let token = ks.max(8);
    let mut chunk: usize = 4096;
    let mut dump = Dump::default();
    let mut in_batch: Option<Vec<u8>> = None;
    let mut out_batch = vec![0u8; token];
    loop {
        let mut keys = vec![0u8; chunk * ks];
        let mut values = vec![0u8; chunk * vs];
        let mut count = chunk as u32;
        let r = ops.lookup_batch(
            in_batch.as_deref(),
            &mut out_batch,
            &mut keys,
            &mut values,
            &mut count,
        );
        let done = match r {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // A hash bucket holds more entries than `chunk`: grow and retry.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < (1 << 24) => {
                chunk *= 4;
                continue;
            }
            Err(e) => return Err(e),
        };
        let n = (count as usize).min(chunk);
        dump.keys.extend_from_slice(&keys[..n * ks]);
        dump.values.extend_from_slice(&values[..n * vs]);
        dump.len += n;
        if done {
            return Ok(dump);
        }
        in_batch = Some(out_batch.clone());
    }
}

fn dump_key_by_key(ops: &impl MapOps) -> io::Result<Dump> {
    let (ks, vs) = (ops.key_size(), ops.value_size());
    let mut dump = Dump::default();
    let mut key: Option<Vec<u8>> = None;
    let mut next = vec![0u8; ks];
    let mut value = vec![0u8; vs];
    loop {
        match ops.next_key(key.as_deref(), &mut next) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(dump),
            Err(e) => return Err(e),
        }
        match ops.lookup(&next, &mut value) {
            Ok(()) => {
                dump.keys.extend_from_slice(&next);
                dump.values.extend_from_slice(&value);
                dump.len += 1;
            }
            // Deleted between the two calls: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        key = Some(next.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A fake map of `u32 -> u32` with keys 0..n; `batch` says what its
    /// batch lookup does.
    struct Fake {
        n: u32,
        batch: Option<i32>,
        batch_calls: Cell<u32>,
    }

    impl MapOps for Fake {
        fn key_size(&self) -> usize {
            4
        }
        fn value_size(&self) -> usize {
            4
        }
        fn lookup_batch(
            &self,
            in_batch: Option<&[u8]>,
            out_batch: &mut [u8],
            keys: &mut [u8],
            values: &mut [u8],
            count: &mut u32,
        ) -> io::Result<()> {
            self.batch_calls.set(self.batch_calls.get() + 1);
            if let Some(errno) = self.batch {
                *count = 0;
                return Err(io::Error::from_raw_os_error(errno));
            }
            let start = in_batch.map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            // Hand out at most 3 per call, to exercise the cursor.
            let n = (*count).min(3).min(self.n - start);
            for i in 0..n {
                let k = start + i;
                keys[i as usize * 4..][..4].copy_from_slice(&k.to_ne_bytes());
                values[i as usize * 4..][..4].copy_from_slice(&(k * 10).to_ne_bytes());
            }
            *count = n;
            out_batch[..4].copy_from_slice(&(start + n).to_ne_bytes());
            if start + n >= self.n {
                Err(io::Error::from_raw_os_error(libc::ENOENT))
            } else {
                Ok(())
            }
        }
        fn next_key(&self, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<()> {
            let k = key.map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) + 1);
            if k >= self.n {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            next.copy_from_slice(&k.to_ne_bytes());
            Ok(())
        }
        fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<()> {
            let k = u32::from_ne_bytes([key[0], key[1], key[2], key[3]]);
            value.copy_from_slice(&(k * 10).to_ne_bytes());
            Ok(())
        }
    }

    fn fake(n: u32, batch: Option<i32>) -> Fake {
        Fake {
            n,
            batch,
            batch_calls: Cell::new(0),
        }
    }

    fn pairs(ops: &Fake, d: &Dump) -> Vec<(u32, u32)> {
        (0..d.len)
            .map(|i| {
                let (k, v) = d.entry(ops, i);
                (
                    u32::from_ne_bytes([k[0], k[1], k[2], k[3]]),
                    u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
                )
            })
            .collect()
    }

    #[test]
    fn batch_is_used_when_the_kernel_has_it() {
        let f = fake(7, None);
        let (d, how) = dump_map(&f, None).expect("dump");
        assert_eq!(how, ReadMethod::Batch);
        let want: Vec<(u32, u32)> = (0..7).map(|k| (k, k * 10)).collect();
        assert_eq!(pairs(&f, &d), want);
        // 7 entries, 3 per call: 3 calls, the last one ending with ENOENT.
        assert_eq!(f.batch_calls.get(), 3);
    }

    #[test]
    fn unsupported_batch_falls_back_to_key_by_key_with_the_same_entries() {
        for errno in [libc::EINVAL, libc::EOPNOTSUPP, ENOTSUPP, libc::ENOSYS] {
            let f = fake(5, Some(errno));
            let (d, how) = dump_map(&f, None).expect("dump");
            assert_eq!(how, ReadMethod::KeyByKey, "errno {errno}");
            assert_eq!(
                pairs(&f, &d),
                (0..5).map(|k| (k, k * 10)).collect::<Vec<_>>()
            );
            assert_eq!(f.batch_calls.get(), 1);
        }
    }

    #[test]
    fn other_batch_errors_are_reported_not_hidden_by_the_fallback() {
        let f = fake(5, Some(libc::EPERM));
        let e = dump_map(&f, None).expect_err("EPERM must surface");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn a_forced_method_is_obeyed() {
        let f = fake(4, None);
        let (d, how) = dump_map(&f, Some(ReadMethod::KeyByKey)).expect("dump");
        assert_eq!((how, d.len), (ReadMethod::KeyByKey, 4));
        assert_eq!(f.batch_calls.get(), 0);
        let f = fake(4, Some(libc::EINVAL));
        assert!(dump_map(&f, Some(ReadMethod::Batch)).is_err());
    }

    #[test]
    fn an_empty_map_dumps_empty_either_way() {
        for batch in [None, Some(libc::EINVAL)] {
            let f = fake(0, batch);
            let (d, _) = dump_map(&f, None).expect("dump");
            assert_eq!(d.len, 0);
        }
    }
}
