//! Packet parsing for XDP programs.

use aya_ebpf::programs::XdpContext;
use kscope_common::fw::Family;

/// Length of an Ethernet header without VLAN tags.
pub const ETH_HLEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag.
pub const VLAN_HLEN: usize = 4;
pub use kscope_common::fw::MAX_VLAN_TAGS;

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
/// TCP flag bits (byte 13 of the header).
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
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

/// True for the EtherTypes Linux strips as VLAN tags (`eth_type_vlan()` in
/// include/linux/if_vlan.h): 802.1Q and 802.1ad.
#[inline(always)]
pub const fn is_vlan(proto: u16) -> bool {
    proto == ETH_P_8021Q || proto == ETH_P_8021AD
}

/// The EtherType after skipping up to [`MAX_VLAN_TAGS`] VLAN tags, and the
/// offset of the layer-3 header. `None` when the frame ends first. When the
/// frame has more tags than that, the EtherType returned is still a VLAN
/// one ([`is_vlan`]): the caller must not take such a frame for "not IP".
#[inline(always)]
pub fn l3_proto(ctx: &XdpContext) -> Option<(u16, usize)> {
    let mut offset = ETH_HLEN - 2;
    let mut proto = read_be16(ctx, offset)?;
    offset += 2;
    // A constant trip count keeps the loop bounded for the verifier.
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(proto) {
            break;
        }
        // The tag is TCI (2 bytes) then the inner EtherType (2 bytes).
        proto = read_be16(ctx, offset + 2)?;
        offset += VLAN_HLEN;
    }
    Some((proto, offset))
}

/// Classifies a frame by IP family from its (possibly VLAN-tagged)
/// EtherType; a frame with too many tags is [`Family::Other`].
#[inline(always)]
pub fn family(ctx: &XdpContext) -> Family {
    match l3_proto(ctx) {
        Some((ETH_P_IP, _)) => Family::Ipv4,
        Some((ETH_P_IPV6, _)) => Family::Ipv6,
        _ => Family::Other,
    }
}
