//! `bpf()` calls aya does not wrap.

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
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    /// For XDP links, the interface index; 0 once the device is gone (the
    /// kernel clears it in dev_xdp_uninstall(), net/core/dev.c).
    pub xdp_ifindex: u32,
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
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
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

/// Reads a pinned link's info.
///
/// Minimum kernel: 5.8 (link info); 5.9 for XDP links.
pub fn pinned_link_info(path: &Path) -> io::Result<LinkInfo> {
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
