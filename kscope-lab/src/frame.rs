//! Building Ethernet frames byte by byte: for the lab's frame injector, the
//! firewall's differential test and the benchmark; kscope's reference
//! classifier takes its protocol numbers from here. No I/O here.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const PROTO_HOPOPTS: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ROUTING: u8 = 43;
pub const PROTO_FRAGMENT: u8 = 44;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_NONE: u8 = 59;
pub const PROTO_DSTOPTS: u8 = 60;

/// Ethernet header: `dst`, `src`, then a VLAN tag per entry of `tags`
/// (its TPID, with VLAN id = position + 1), then `ethertype`.
pub fn eth(dst: [u8; 6], src: [u8; 6], tags: &[u16], ethertype: u16) -> Vec<u8> {
    let tags: Vec<(u16, u16)> = (1..).zip(tags).map(|(id, &tpid)| (tpid, id)).collect();
    eth_tci(dst, src, &tags, ethertype)
}

/// Ethernet header with VLAN tags given as (TPID, TCI) pairs, outermost
/// first. A TCI of 0 is a priority tag (VLAN id 0), which Linux strips
/// without a VLAN device.
pub fn eth_tci(dst: [u8; 6], src: [u8; 6], tags: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * tags.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4 header with `options` (padded to 4 bytes), checksum filled in;
/// append the payload yourself. `payload_len` sets the total length.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    payload_len: usize,
) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let hlen = 20 + opts.len();
    let total = (hlen + payload_len).min(usize::from(u16::MAX)) as u16;
    let mut h = vec![0x40 | (hlen / 4) as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&opts);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// A fixed IPv6 header; append extension headers and payload yourself.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload_len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h
}

/// A hop-by-hop, routing or destination-options header of `8 * (units + 1)`
/// bytes (PadN-filled).
pub fn ext_header(next: u8, units: u8) -> Vec<u8> {
    let len = 8 * (usize::from(units) + 1);
    let mut h = vec![0u8; len];
    h[0] = next;
    h[1] = units;
    // PadN option covering the rest, so a real stack accepts it too.
    h[2] = 1;
    h[3] = (len - 4) as u8;
    h
}

/// An IPv6 fragment header at fragment `offset` (in 8-byte units).
pub fn frag_header(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let off = (offset << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&off.to_be_bytes());
    h.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    h
}

/// A TCP header (SYN, 20 bytes, checksum left zero).
pub fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes());
    h.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

/// A UDP header for `payload_len` bytes of payload (checksum left zero).
pub fn udp(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(8);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload_len).min(usize::from(u16::MAX)) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h
}

/// An ICMP or ICMPv6 echo request header (8 bytes, checksum left zero).
pub fn echo(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut h = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h
}

/// Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The UDP checksum of `datagram` (header, checksum field zero, and
/// payload) from `src` to `dst`, over the pseudo-header of RFC 768 (IPv4)
/// or RFC 8200 section 8.1 (IPv6, where a zero checksum is invalid).
pub fn udp_checksum(src: std::net::IpAddr, dst: std::net::IpAddr, datagram: &[u8]) -> u16 {
    use std::net::IpAddr;
    let mut pseudo = Vec::with_capacity(40 + datagram.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, PROTO_UDP]);
            pseudo.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
        }
        _ => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
            pseudo.extend_from_slice(&v6(src));
            pseudo.extend_from_slice(&v6(dst));
            pseudo.extend_from_slice(&(datagram.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, PROTO_UDP]);
        }
    }
    pseudo.extend_from_slice(datagram);
    match checksum(&pseudo) {
        // 0 means "no checksum"; its ones'-complement twin stands in.
        0 => 0xffff,
        c => c,
    }
}

/// Layer 4 of a simple frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp(u16),
    Udp(u16),
    Echo,
}

/// A complete untagged frame from `src` to `dst` (both IPv4 or both IPv6)
/// carrying `l4` and `payload`.
pub fn simple(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    l4: L4,
    payload: &[u8],
) -> Vec<u8> {
    use std::net::IpAddr;
    let v6 = src.is_ipv6();
    let (proto, mut l4h) = match l4 {
        L4::Tcp(p) => (PROTO_TCP, tcp(40_000, p)),
        L4::Udp(p) => (PROTO_UDP, udp(40_000, p, payload.len())),
        L4::Echo => (if v6 { PROTO_ICMPV6 } else { PROTO_ICMP }, echo(v6, 1, 1)),
    };
    l4h.extend_from_slice(payload);
    let mut f = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut f = eth(dst_mac, src_mac, &[], ETH_P_IP);
            f.extend(ipv4(s, d, proto, &[], l4h.len()));
            f
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut f = eth(dst_mac, src_mac, &[], ETH_P_IPV6);
            f.extend(ipv6(s, d, proto, l4h.len()));
            f
        }
        _ => Vec::new(),
    };
    if !f.is_empty() {
        f.extend(l4h);
    }
    f
}

/// The IP source and destination of a frame, after any number of VLAN
/// tags (as Linux strips them).
pub fn ip_addrs(frame: &[u8]) -> Option<(std::net::IpAddr, std::net::IpAddr)> {
    let be16 = |o: usize| {
        frame
            .get(o..o + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let mut proto = be16(12)?;
    let mut off = 14;
    // Each tag is 4 bytes, so the frame's length bounds the walk.
    while proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(off + 2)?;
        off += 4;
    }
    match proto {
        ETH_P_IP => {
            let h = frame.get(off..off + 20)?;
            let a = |i: usize| Ipv4Addr::new(h[i], h[i + 1], h[i + 2], h[i + 3]);
            Some((a(12).into(), a(16).into()))
        }
        ETH_P_IPV6 => {
            let h = frame.get(off..off + 40)?;
            let a = |i: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&h[i..i + 16]);
                Ipv6Addr::from(b)
            };
            Some((a(8).into(), a(24).into()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksums_to_zero_and_sizes_add_up() {
        let h = ipv4(
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(192, 0, 2, 2),
            PROTO_UDP,
            &[1, 1, 1],
            8,
        );
        assert_eq!(h.len(), 24);
        assert_eq!(h[0], 0x46);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 32);
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn simple_frames_have_the_expected_layout() {
        let f = simple(
            [2; 6],
            [3; 6],
            "2001:db8::1".parse().expect("ip"),
            "2001:db8::2".parse().expect("ip"),
            L4::Tcp(443),
            b"xy",
        );
        assert_eq!(f.len(), 14 + 40 + 20 + 2);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[14 + 6], PROTO_TCP);
        assert_eq!(&f[54 + 2..54 + 4], &443u16.to_be_bytes());
        let (s, d) = ip_addrs(&f).expect("addresses");
        assert_eq!(s.to_string(), "2001:db8::1");
        assert_eq!(d.to_string(), "2001:db8::2");
        let tagged = eth([0; 6], [0; 6], &[ETH_P_8021AD, ETH_P_8021Q], ETH_P_IP);
        assert_eq!(tagged.len(), 22);
        assert_eq!(&tagged[12..14], &[0x88, 0xa8]);
        assert_eq!(&tagged[16..18], &[0x81, 0x00]);
        assert_eq!(&tagged[20..22], &[0x08, 0x00]);
        let priority = eth_tci([0; 6], [0; 6], &[(ETH_P_8021Q, 0x2000)], ETH_P_IPV6);
        assert_eq!(&priority[12..18], &[0x81, 0x00, 0x20, 0x00, 0x86, 0xdd]);
    }

    #[test]
    fn udp_checksum_verifies_to_zero_with_the_pseudo_header() {
        let mut dgram = udp(40_000, 9, 3);
        dgram.extend_from_slice(b"abc");
        let c = udp_checksum(
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
            &dgram,
        );
        dgram[6..8].copy_from_slice(&c.to_be_bytes());
        // A receiver sums pseudo-header and datagram, checksum included,
        // and must get all ones (a complement of 0).
        let mut all = vec![192, 0, 2, 1, 192, 0, 2, 2, 0, 17, 0, 11];
        all.extend_from_slice(&dgram);
        assert_eq!(checksum(&all), 0);
    }

    #[test]
    fn ip_addrs_looks_past_any_number_of_tags() {
        let body = &simple(
            [2; 6],
            [3; 6],
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
            L4::Echo,
            b"",
        )[14..];
        for n in [0, 1, 3, 12] {
            let mut f = eth([2; 6], [3; 6], &vec![ETH_P_8021Q; n], ETH_P_IP);
            f.extend_from_slice(body);
            let (s, _) = ip_addrs(&f).expect("addresses");
            assert_eq!(s.to_string(), "192.0.2.1", "{n} tags");
        }
        let cut = eth([2; 6], [3; 6], &[ETH_P_8021Q; 3], ETH_P_IP);
        assert_eq!(ip_addrs(&cut[..20]), None);
    }
}
