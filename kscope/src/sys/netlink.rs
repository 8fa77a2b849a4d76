//! The one rtnetlink request kscope makes: creating a veth pair in the
//! calling thread's network namespace (for `kscope doctor`'s native XDP
//! check, in a private namespace). Built by hand: one message, no library.
//!
//! Minimum kernel: any with CONFIG_VETH.

use std::{io, os::fd::AsRawFd as _};

const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
/// sizeof(struct nlmsghdr), sizeof(struct ifinfomsg).
const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;

fn align4(n: usize) -> usize {
    n.next_multiple_of(4)
}

/// Appends an attribute with payload `data`, padded to 4 bytes.
fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align4(buf.len()), 0);
}

/// A nested attribute whose payload `f` writes.
fn nested(buf: &mut Vec<u8>, kind: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    f(buf);
    let len = u16::try_from(buf.len() - start).unwrap_or(u16::MAX);
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&kind.to_ne_bytes());
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The RTM_NEWLINK request for a veth pair `a` <-> `b`.
fn veth_request(a: &str, b: &str, seq: u32) -> Vec<u8> {
    let mut buf = vec![0u8; NLMSG_HDR];
    buf.extend_from_slice(&[0; IFINFOMSG]);
    attr(&mut buf, IFLA_IFNAME, &cstr(a));
    nested(&mut buf, IFLA_LINKINFO, |buf| {
        attr(buf, IFLA_INFO_KIND, b"veth\0");
        nested(buf, IFLA_INFO_DATA, |buf| {
            nested(buf, VETH_INFO_PEER, |buf| {
                buf.extend_from_slice(&[0; IFINFOMSG]);
                attr(buf, IFLA_IFNAME, &cstr(b));
            });
        });
    });
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
    buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    buf
}

/// The errno of a netlink acknowledgement (0 for success); `None` when
/// `reply` is no NLMSG_ERROR message.
fn parse_ack(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    let err = i32::from_ne_bytes(reply.get(NLMSG_HDR..NLMSG_HDR + 4)?.try_into().ok()?);
    Some(-err)
}

/// Creates the veth pair `a` <-> `b` in the calling thread's network
/// namespace. Needs CAP_NET_ADMIN there.
///
/// # Errors
/// The socket calls' errors, or the kernel's refusal (EOPNOTSUPP without
/// CONFIG_VETH, EEXIST, EPERM).
pub(crate) fn add_veth(a: &str, b: &str) -> io::Result<()> {
    // SAFETY: socket takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let req = veth_request(a, b, 1);
    // SAFETY: `req` is valid for its length; a null address sends to the
    // kernel (the default destination of a netlink socket).
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 4096];
    // SAFETY: `reply` is a writable buffer of the length given.
    let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    match parse_ack(&reply[..n]) {
        Some(0) => Ok(()),
        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        None => Err(io::Error::other("unexpected netlink reply")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_request_nests_the_peer_and_pads_attributes() {
        let req = veth_request("ka", "kb", 7);
        assert_eq!(req.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(req[0..4].try_into().expect("4 bytes")) as usize,
            req.len()
        );
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), RTM_NEWLINK);
        // IFLA_IFNAME "ka\0" right after the ifinfomsg: len 7, padded to 8.
        let a = NLMSG_HDR + IFINFOMSG;
        assert_eq!(u16::from_ne_bytes([req[a], req[a + 1]]), 7);
        assert_eq!(&req[a + 4..a + 7], b"ka\0");
        assert!(req.windows(5).any(|w| w == b"veth\0"));
        assert!(req.windows(3).any(|w| w == b"kb\0"));
    }

    #[test]
    fn acks_read_their_errno() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(parse_ack(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(parse_ack(&ack), Some(17));
        assert_eq!(parse_ack(&[0u8; 8]), None);
    }
}
