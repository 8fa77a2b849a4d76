//! Private test networks for `kscope demo` and the integration tests: two
//! network namespaces joined by a veth pair, a traffic generator that can
//! only send inside them, and an independent packet observer.
//!
//! Network safety, by construction:
//! - traffic is sent only from a thread that has entered lab namespace `a`,
//!   to an address that exists only in lab namespace `b`; the generator
//!   refuses to run in the initial (root) network namespace;
//! - neither namespace has a default route;
//! - addresses come from the documentation ranges (192.0.2.0/24, RFC 5737;
//!   2001:db8::/32, RFC 3849), which exist nowhere but in these namespaces.
//!
//! [`Lab::inject`] sends hand-built Ethernet frames (any TCP/UDP/ICMP, from
//! any documentation source address) out of `a`'s veth end; it refuses
//! frames whose addresses are not documentation addresses.
//!
//! Dropping a [`Lab`] deletes both namespaces, and with them the veth pair
//! and any XDP program attached to it, also when a test panics. It does not
//! remove what such a program pinned in bpffs: whoever attached it detaches
//! it.

use std::{
    ffi::{CString, OsStr},
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{frame, ns};

/// Address of side `a` (the sender).
pub const ADDR4_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Address of side `b` (the receiver, where kscope attaches).
pub const ADDR4_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const ADDR6_A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const ADDR6_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// Locally administered MACs, set explicitly so neighbours can be static.
const MAC_A: &str = "02:6b:73:00:00:01";
const MAC_B: &str = "02:6b:73:00:00:02";
pub const MAC_A_BYTES: [u8; 6] = [0x02, 0x6b, 0x73, 0, 0, 1];
pub const MAC_B_BYTES: [u8; 6] = [0x02, 0x6b, 0x73, 0, 0, 2];
/// UDP port the generator sends to; nothing listens on it.
pub const UDP_PORT: u16 = 9;
/// Every generated packet's payload starts with this, so the observer can
/// tell them from what the kernel sends on its own.
pub const MARKER: &[u8] = b"kscope-netlab";

/// Header sizes for the byte counts XDP sees (Ethernet, no FCS).
const ETH: u64 = 14;
const IPV4: u64 = 20;
const IPV6: u64 = 40;
const L4: u64 = 8; // UDP header, ICMP/ICMPv6 echo header

static SEQ: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> io::Result<()> {
    ip_output(args).map(drop)
}

/// Runs `ip ARGS` and returns its stdout.
fn ip_output(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Waits until `ifc` in namespace `ns` can transmit. Setting a link up is
/// not enough: until the kernel's link watcher sees the carrier and
/// activates the device, its qdisc is `noop`, which drops every frame sent.
/// Under emulation that takes long enough to lose the first packets of a
/// test, so this polls for operational state UP with a real qdisc.
fn wait_transmitting(ns: &str, ifc: &str) -> io::Result<()> {
    let deadline = Instant::now() + LINK_UP_TIMEOUT;
    loop {
        let line = ip_output(&["-n", ns, "-o", "link", "show", "dev", ifc])?;
        if line.contains(" state UP ") && !line.contains(" qdisc noop ") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{ifc} in {ns} did not come up within {LINK_UP_TIMEOUT:?}: {}",
                line.trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How long [`wait_transmitting`] waits; generous for emulated kernels.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(20);

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Held open so a child can `setns` into it between fork and exec.
    handle: fs::File,
}

impl Netns {
    /// Creates namespace `name` (under /run/netns).
    pub fn new(name: &str) -> io::Result<Self> {
        ip(&["netns", "add", name])?;
        match fs::File::open(Path::new("/run/netns").join(name)) {
            Ok(handle) => Ok(Self {
                name: name.to_owned(),
                handle,
            }),
            Err(e) => {
                let _ = ip(&["netns", "del", name]);
                Err(e)
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    /// Sockets `f` creates stay in this namespace for their whole life.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                ns::setns_fd(self.handle.as_raw_fd())?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A command that runs inside this namespace. Only the network namespace
    /// changes, so the child still sees /sys/fs/bpf (unlike `ip netns exec`,
    /// which remounts /sys).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.handle.as_raw_fd();
        // SAFETY: setns is async-signal-safe and touches no memory of the
        // parent; `fd` stays open until exec because `self` outlives spawn().
        unsafe {
            cmd.pre_exec(move || ns::setns_fd(fd));
        }
        cmd
    }

    fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| fs::write(&path, value))?
            .map_err(|e| io::Error::other(format!("sysctl {key}={value} in {}: {e}", self.name)))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "warning: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Two namespaces, `a` and `b`, joined by a veth pair. `a` sends, `b`
/// receives; kscope attaches to [`Lab::iface_b`].
#[derive(Debug)]
pub struct Lab {
    pub iface_a: String,
    pub iface_b: String,
    pub a: Netns,
    pub b: Netns,
}

impl Lab {
    /// Creates the namespaces and the veth pair, links still down and without
    /// addresses, so a program can be attached before the first packet.
    /// `tag` (a few lowercase letters) makes the names recognisable.
    pub fn new(tag: &str) -> io::Result<Self> {
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let a = Netns::new(&format!("kscope-{tag}-{pid}-{seq}-a"))?;
        let b = Netns::new(&format!("kscope-{tag}-{pid}-{seq}-b"))?;
        // Interface names are at most 15 bytes: "ks" + pid + "x" + seq + side.
        let iface_a = format!("ks{pid:x}x{seq:x}a");
        let iface_b = format!("ks{pid:x}x{seq:x}b");
        let lab = Self {
            iface_a,
            iface_b,
            a,
            b,
        };
        // Quiet interfaces: no duplicate address detection, no router
        // solicitations, no link-local address (so fewer MLD reports).
        for ns in [&lab.a, &lab.b] {
            for (k, v) in [
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv6.conf.default.router_solicitations", "0"),
                ("net.ipv6.conf.default.addr_gen_mode", "1"),
            ] {
                ns.sysctl(k, v)?;
            }
        }
        ip(&[
            "link",
            "add",
            &lab.iface_a,
            "address",
            MAC_A,
            "netns",
            lab.a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &lab.iface_b,
            "address",
            MAC_B,
            "netns",
            lab.b.name(),
        ])?;
        Ok(lab)
    }

    /// Brings both ends up with their addresses and static neighbours (so no
    /// ARP or neighbour discovery crosses the link).
    pub fn up(&self) -> io::Result<()> {
        for (ns, ifc, a4, a6, peer4, peer6, peer_mac) in [
            (
                &self.a,
                &self.iface_a,
                ADDR4_A,
                ADDR6_A,
                ADDR4_B,
                ADDR6_B,
                MAC_B,
            ),
            (
                &self.b,
                &self.iface_b,
                ADDR4_B,
                ADDR6_B,
                ADDR4_A,
                ADDR6_A,
                MAC_A,
            ),
        ] {
            let n = ns.name();
            ip(&["-n", n, "addr", "add", &format!("{a4}/24"), "dev", ifc])?;
            ip(&[
                "-n",
                n,
                "-6",
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                ifc,
                "nodad",
            ])?;
            for peer in [peer4.to_string(), peer6.to_string()] {
                ip(&[
                    "-n",
                    n,
                    "neigh",
                    "replace",
                    &peer,
                    "lladdr",
                    peer_mac,
                    "dev",
                    ifc,
                    "nud",
                    "permanent",
                ])?;
            }
            ip(&["-n", n, "link", "set", ifc, "up"])?;
        }
        for (ns, ifc) in [(&self.a, &self.iface_a), (&self.b, &self.iface_b)] {
            wait_transmitting(ns.name(), ifc)?;
        }
        Ok(())
    }

    /// Sends hand-built Ethernet frames out of `a`'s end of the veth pair
    /// (so they arrive at `b`, through kscope's XDP program). Every frame
    /// must be IPv4 or IPv6 between documentation addresses; the call fails
    /// before sending anything otherwise.
    pub fn inject(&self, frames: &[Vec<u8>]) -> io::Result<()> {
        for f in frames {
            check_documentation_frame(f)?;
        }
        let lab_ns = self.a.path();
        let iface = self.iface_a.clone();
        self.a.run(move || -> io::Result<()> {
            check_generator_netns(&lab_ns)?;
            let sock = PacketSocket::open(&iface, false)?;
            for (i, f) in frames.iter().enumerate() {
                sock.send(f)?;
                if i % 32 == 31 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(())
        })?
    }

    /// Floods `b` with `frames` (sent in turn, as fast as one thread can
    /// send on an AF_PACKET socket in `a`) for `secs` seconds; returns how
    /// many frames went out. The same documentation-address rule as
    /// [`Lab::inject`] applies. For benchmarks: nothing paces the sender.
    pub fn flood(&self, frames: &[Vec<u8>], secs: f64) -> io::Result<u64> {
        if frames.is_empty() {
            return Ok(0);
        }
        for f in frames {
            check_documentation_frame(f)?;
        }
        let lab_ns = self.a.path();
        let iface = self.iface_a.clone();
        self.a.run(move || -> io::Result<u64> {
            check_generator_netns(&lab_ns)?;
            let sock = PacketSocket::open(&iface, false)?;
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut sent = 0u64;
            while Instant::now() < end {
                // Check the time every 256 frames, not every frame.
                for _ in 0..256 {
                    let f = &frames[sent as usize % frames.len()];
                    match sock.send(f) {
                        Ok(()) => sent += 1,
                        // The veth queue is full: try again.
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(sent)
        })?
    }

    /// Sends `traffic` from `a` to `b` and returns what XDP on `b` should
    /// count for it, computed from header sizes.
    pub fn send(&self, traffic: &Traffic) -> io::Result<Sent> {
        let lab_ns = self.a.path();
        self.a.run(|| generate(traffic, &lab_ns))?
    }
}

/// True for the documentation ranges (RFC 5737, RFC 3849).
pub fn is_documentation(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            matches!(o[..3], [192, 0, 2] | [198, 51, 100] | [203, 0, 113])
        }
        IpAddr::V6(a) => a.segments()[..2] == [0x2001, 0xdb8],
    }
}

/// Fails unless `frame` is IPv4 or IPv6 with documentation addresses only.
pub fn check_documentation_frame(frame: &[u8]) -> io::Result<()> {
    match frame::ip_addrs(frame) {
        Some((s, d)) if is_documentation(s) && is_documentation(d) => Ok(()),
        _ => Err(io::Error::other(
            "refusing to inject a frame that is not IP between documentation addresses",
        )),
    }
}

/// A lab frame to `b` from `src` (a documentation address of either
/// family), carrying [`MARKER`] and `seq` so the [`Observer`] can tell which
/// frames arrived.
pub fn lab_frame(src: IpAddr, l4: frame::L4, seq: u32) -> Vec<u8> {
    let dst = if src.is_ipv4() {
        IpAddr::V4(ADDR4_B)
    } else {
        IpAddr::V6(ADDR6_B)
    };
    let mut payload = MARKER.to_vec();
    payload.extend_from_slice(&seq.to_be_bytes());
    frame::simple(MAC_B_BYTES, MAC_A_BYTES, src, dst, l4, &payload)
}

/// An AF_PACKET socket on one interface of the calling thread's namespace.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn open(iface: &str, nonblock: bool) -> io::Result<Self> {
        let name = CString::new(iface).map_err(io::Error::other)?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("interface {iface}: {e}")));
        }
        let ifindex = ifindex as i32;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let flags = if nonblock { libc::SOCK_NONBLOCK } else { 0 };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is fresh and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sll = Self::addr(ifindex, proto);
        // SAFETY: `sll` is a valid sockaddr_ll for the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, ifindex })
    }

    fn addr(ifindex: i32, proto: u16) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        sll
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let sll = Self::addr(self.ifindex, (libc::ETH_P_ALL as u16).to_be());
        // SAFETY: `frame` and `sll` are valid for the lengths passed.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// How many packets of each kind to send.
#[derive(Clone, Copy, Debug, Default)]
pub struct Traffic {
    pub udp4: u64,
    pub udp6: u64,
    pub ping4: u64,
    pub ping6: u64,
    /// Payload bytes per packet, marker included (at least [`MARKER`]'s length).
    pub payload: usize,
}

/// What the generator sent, as XDP on the receiving side counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub ipv4_packets: u64,
    pub ipv4_bytes: u64,
    pub ipv6_packets: u64,
    pub ipv6_bytes: u64,
}

/// Refuses to go on unless the calling thread is inside the lab namespace
/// at `lab_ns` and not in the initial one: the rule that keeps test traffic
/// off real networks.
pub fn check_generator_netns(lab_ns: &Path) -> io::Result<()> {
    if ns::in_initial_netns()? {
        return Err(io::Error::other(
            "refusing to generate traffic in the root network namespace",
        ));
    }
    if ns::ns_id(Path::new("/proc/thread-self/ns/net"))? != ns::ns_id(lab_ns)? {
        return Err(io::Error::other(format!(
            "refusing to generate traffic outside the lab namespace {}",
            lab_ns.display()
        )));
    }
    Ok(())
}

fn generate(t: &Traffic, lab_ns: &Path) -> io::Result<Sent> {
    check_generator_netns(lab_ns)?;
    let mut payload = vec![0u8; t.payload.max(MARKER.len())];
    payload[..MARKER.len()].copy_from_slice(MARKER);
    let len = payload.len() as u64;

    let udp4 = UdpSocket::bind((ADDR4_A, 0))?;
    let udp6 = UdpSocket::bind((ADDR6_A, 0))?;
    let icmp4 = raw_socket(libc::AF_INET, libc::IPPROTO_ICMP)?;
    let icmp6 = raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6)?;
    let dst4 = SocketAddr::new(IpAddr::V4(ADDR4_B), UDP_PORT);
    let dst6 = SocketAddr::new(IpAddr::V6(ADDR6_B), UDP_PORT);

    let mut sent = 0u64;
    let mut pace = || {
        // Small bursts, so a receive queue never overflows and drops a
        // packet that the sender counted.
        sent += 1;
        if sent.is_multiple_of(32) {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    for _ in 0..t.udp4 {
        udp4.send_to(&payload, dst4)?;
        pace();
    }
    for _ in 0..t.udp6 {
        udp6.send_to(&payload, dst6)?;
        pace();
    }
    for seq in 0..t.ping4 {
        send_echo(&icmp4, IpAddr::V4(ADDR4_B), seq as u16, &payload)?;
        pace();
    }
    for seq in 0..t.ping6 {
        send_echo(&icmp6, IpAddr::V6(ADDR6_B), seq as u16, &payload)?;
        pace();
    }
    let v4 = t.udp4 + t.ping4;
    let v6 = t.udp6 + t.ping6;
    Ok(Sent {
        ipv4_packets: v4,
        ipv4_bytes: v4 * (ETH + IPV4 + L4 + len),
        ipv6_packets: v6,
        ipv6_bytes: v6 * (ETH + IPV6 + L4 + len),
    })
}

fn raw_socket(domain: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub use frame::checksum as inet_checksum;

/// An ICMP (v4) or ICMPv6 echo request with `payload`. The kernel fills in
/// the ICMPv6 checksum itself (it covers a pseudo-header only it knows).
pub fn echo_request(v6: bool, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let kind = if v6 { 128 } else { 8 };
    let mut pkt = vec![kind, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(payload);
    if !v6 {
        let c = inet_checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    }
    pkt
}

fn send_echo(fd: &OwnedFd, dst: IpAddr, seq: u16, payload: &[u8]) -> io::Result<()> {
    let pkt = echo_request(dst.is_ipv6(), std::process::id() as u16, seq, payload);
    let (addr, len) = sockaddr(dst);
    // SAFETY: `pkt` and `addr` are valid for the given lengths during the call.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&raw const addr).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Counts of what arrived on an interface, split like kscope's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub ipv4_packets: u64,
    pub ipv4_bytes: u64,
    pub ipv6_packets: u64,
    pub ipv6_bytes: u64,
    pub other_packets: u64,
    pub other_bytes: u64,
    /// Packets carrying [`MARKER`]: the generator's own.
    pub marked_ipv4: u64,
    pub marked_ipv6: u64,
}

impl Seen {
    /// IPv6 packets the kernel sent on its own (MLD reports and the like).
    pub fn unmarked_ipv6(&self) -> u64 {
        self.ipv6_packets - self.marked_ipv6
    }
    pub fn unmarked_ipv4(&self) -> u64 {
        self.ipv4_packets - self.marked_ipv4
    }
}

/// An AF_PACKET socket on the receiving interface: an independent count of
/// every frame that arrived, to check kscope's counters against.
pub struct Observer {
    fd: OwnedFd,
    pub seen: Seen,
    /// (source address, sequence number) of every [`lab_frame`] that
    /// arrived, in arrival order.
    pub marks: Vec<(IpAddr, u32)>,
}

impl Observer {
    /// Opens the observer on `iface` inside `ns`. Works while the link is
    /// still down, so it can be in place before the first packet.
    pub fn open(ns: &Netns, iface: &str) -> io::Result<Self> {
        let iface = iface.to_owned();
        let fd = ns.run(move || -> io::Result<OwnedFd> {
            let sock = PacketSocket::open(&iface, true)?;
            let size: libc::c_int = 16 << 20;
            // SAFETY: SO_RCVBUF takes a c_int, passed by pointer with its size.
            unsafe {
                libc::setsockopt(
                    sock.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&raw const size).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                );
            }
            Ok(sock.fd)
        })??;
        Ok(Self {
            fd,
            seen: Seen::default(),
            marks: Vec::new(),
        })
    }

    /// Reads every frame queued so far into [`Observer::seen`]; returns how
    /// many it read.
    pub fn drain(&mut self) -> io::Result<u64> {
        let mut buf = vec![0u8; 65_536];
        let mut n = 0;
        loop {
            // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffers are valid for the lengths passed.
            let rc = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(n),
                    // Bound while the link was down: the socket reports that
                    // once (packet_do_bind() in net/packet/af_packet.c), then
                    // delivers normally.
                    Some(libc::ENETDOWN) => continue,
                    _ => return Err(e),
                }
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            n += 1;
            let len = rc as usize;
            let frame = &buf[..len.min(buf.len())];
            classify(&mut self.seen, frame, len as u64);
            if let Some(m) = lab_mark(frame) {
                self.marks.push(m);
            }
        }
    }
}

/// The (source, sequence number) of a [`lab_frame`].
pub fn lab_mark(frame: &[u8]) -> Option<(IpAddr, u32)> {
    let (src, _) = frame::ip_addrs(frame)?;
    let at = frame.windows(MARKER.len()).position(|w| w == MARKER)? + MARKER.len();
    let seq = frame.get(at..at + 4)?;
    Some((src, u32::from_be_bytes([seq[0], seq[1], seq[2], seq[3]])))
}

/// Adds one received frame (of `len` bytes on the wire) to `seen`.
pub fn classify(seen: &mut Seen, frame: &[u8], len: u64) {
    let ethertype = frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let marked = |l3: usize| {
        frame
            .get(ETH as usize + l3 + L4 as usize..)
            .is_some_and(|p| p.starts_with(MARKER))
    };
    match ethertype {
        Some(0x0800) => {
            seen.ipv4_packets += 1;
            seen.ipv4_bytes += len;
            seen.marked_ipv4 += u64::from(marked(IPV4 as usize));
        }
        Some(0x86dd) => {
            seen.ipv6_packets += 1;
            seen.ipv6_bytes += len;
            seen.marked_ipv6 += u64::from(marked(IPV6 as usize));
        }
        _ => {
            seen.other_packets += 1;
            seen.other_bytes += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(inet_checksum(&data), !0xddf2);
        // A packet with its checksum filled in sums to zero.
        let pkt = echo_request(false, 0x1234, 7, b"abc");
        assert_eq!(inet_checksum(&pkt), 0);
        assert_eq!(&pkt[..2], &[8, 0]);
        assert_eq!(&pkt[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn lab_frames_carry_their_mark_and_only_documentation_frames_are_injectable() {
        let src: IpAddr = "198.51.100.7".parse().expect("ip");
        let f = lab_frame(src, frame::L4::Tcp(22), 77);
        assert_eq!(lab_mark(&f), Some((src, 77)));
        assert!(check_documentation_frame(&f).is_ok());
        let f6 = lab_frame("2001:db8:1::7".parse().expect("ip"), frame::L4::Udp(53), 1);
        assert!(check_documentation_frame(&f6).is_ok());
        let bad = lab_frame("10.0.0.1".parse().expect("ip"), frame::L4::Echo, 1);
        assert!(check_documentation_frame(&bad).is_err());
        let bad6 = lab_frame("2001:db9::1".parse().expect("ip"), frame::L4::Echo, 1);
        assert!(check_documentation_frame(&bad6).is_err());
        assert!(check_documentation_frame(&[0u8; 60]).is_err());
    }

    #[test]
    fn classify_counts_marked_frames_by_family() {
        let mut seen = Seen::default();
        let mut v4 = vec![0u8; 14 + 20 + 8];
        v4[12..14].copy_from_slice(&[0x08, 0x00]);
        v4.extend_from_slice(MARKER);
        classify(&mut seen, &v4, v4.len() as u64);
        let mut v6 = vec![0u8; 14 + 40 + 8];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        classify(&mut seen, &v6, v6.len() as u64);
        classify(&mut seen, &[0u8; 10], 10);
        assert_eq!(seen.ipv4_packets, 1);
        assert_eq!(seen.marked_ipv4, 1);
        assert_eq!(seen.ipv6_packets, 1);
        assert_eq!(seen.marked_ipv6, 0);
        assert_eq!(seen.unmarked_ipv6(), 1);
        assert_eq!(seen.other_packets, 1);
        assert_eq!(seen.ipv4_bytes, 42 + MARKER.len() as u64);
    }
}
