//! Packet parsing for XDP programs.

use aya_ebpf::programs::XdpContext;
use kscope_common::fw::Family;

/// Length of an Ethernet header without VLAN tags.
pub const ETH_HLEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag.
pub const VLAN_HLEN: usize = 4;
/// How many stacked VLAN tags the parser walks (802.1ad outer + 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// ICMPv6 Neighbor Discovery message types (RFC 4861): router
/// solicitation (133) to redirect (137).
pub const ND_FIRST: u8 = 133;
pub const ND_LAST: u8 = 137;

/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
pub use kscope_common::fw::MAX_IPV6_EXT_HDRS;
/// Bytes of layer-4 header the filter requires before it reads ports or
/// accepts an ICMP message: the fixed TCP header, the UDP header, and an
/// ICMP type/code/checksum.
pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const ICMP_MIN_HLEN: usize = 4;

/// Returns a pointer to a `T` at `offset` bytes into the packet, or `None`
/// when the packet is too short. This is the only way kscope's XDP programs
/// read packet bytes: the explicit `data_end` comparison is what the verifier
/// needs to see before any load.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Reads the byte at `offset`.
#[inline(always)]
pub fn read_u8(ctx: &XdpContext, offset: usize) -> Option<u8> {
    let p = ptr_at::<u8>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the byte lies inside the packet.
    Some(unsafe { *p })
}

/// Reads a big-endian `u16` at `offset`.
#[inline(always)]
pub fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that both bytes lie inside the packet.
    let b = unsafe { *p };
    Some(u16::from_be_bytes(b))
}

/// The EtherType after skipping up to [`MAX_VLAN_TAGS`] VLAN tags, and the
/// offset of the layer-3 header. `None` when the frame ends first.
#[inline(always)]
pub fn l3_proto(ctx: &XdpContext) -> Option<(u16, usize)> {
    let mut offset = ETH_HLEN - 2;
    let mut proto = read_be16(ctx, offset)?;
    offset += 2;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS && (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
        // The tag is TCI (2 bytes) then the inner EtherType (2 bytes).
        proto = read_be16(ctx, offset + 2)?;
        offset += VLAN_HLEN;
        tags += 1;
    }
    Some((proto, offset))
}

/// Classifies a frame by IP family from its (possibly VLAN-tagged) EtherType.
#[inline(always)]
pub fn family(ctx: &XdpContext) -> Family {
    match l3_proto(ctx) {
        Some((ETH_P_IP, _)) => Family::Ipv4,
        Some((ETH_P_IPV6, _)) => Family::Ipv6,
        _ => Family::Other,
    }
}
