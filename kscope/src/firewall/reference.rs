//! A plain-Rust model of the kernel programs' decision (`fw_xdp.rs`), for
//! the differential test: same frame, same rule set, same verdict and
//! reason. It is written from the documented policy, not from the kernel
//! code, and scans the rules linearly instead of using tries.
//!
//! Used only by tests: its own unit tests and `tests/fw_xdp_differential.rs`.
//! Nothing in the firewall calls it. It stays in the library as the
//! executable spec of the firewall's decisions, next to the code it
//! specifies.

use std::{
    cell::Cell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use kscope_common::fw::{Family, MAX_IPV6_EXT_HDRS, MAX_VLAN_TAGS, PORT_TCP, PORT_UDP, Reason};
use kscope_lab::frame::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, PROTO_DSTOPTS, PROTO_FRAGMENT, PROTO_HOPOPTS,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_ROUTING, PROTO_TCP, PROTO_UDP,
};

use super::rules::{Cidr, LimitSpec, Per, RuleSet};

/// A rate limit a frame must get past: the rule (the longest limit prefix
/// holding the source) and the bucket it spends from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limited {
    pub cidr: Cidr,
    pub spec: LimitSpec,
    /// The source address, the bucket's key; `None` for `--per prefix`.
    pub source: Option<IpAddr>,
}

/// What the firewall does with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub family: Family,
    /// The reason when no rate limit stops the frame.
    pub reason: Reason,
    /// The rate limit that judges the frame first, if one applies: over
    /// it, the frame is dropped as [`Reason::RateLimited`] instead.
    pub limit: Option<Limited>,
}

/// The verdict the firewall gives `frame` under `set`, with `default_drop`
/// as the default policy, as if every rate limit let it pass (see
/// [`judge`] for the limit that applies).
pub fn classify(frame: &[u8], set: &RuleSet, default_drop: bool) -> (Family, Reason) {
    let v = judge(frame, set, default_drop);
    (v.family, v.reason)
}

/// The verdict for `frame`, with the rate limit it must get past.
pub fn judge(frame: &[u8], set: &RuleSet, default_drop: bool) -> Verdict {
    let plain = |family, reason| Verdict {
        family,
        reason,
        limit: None,
    };
    let be16 = |o: usize| {
        frame
            .get(o..o + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let Some(mut proto) = be16(12) else {
        return plain(Family::Other, Reason::NotIp);
    };
    let is_vlan = |p: u16| p == ETH_P_8021Q || p == ETH_P_8021AD;
    let mut off = 14;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(proto) {
            break;
        }
        // A frame that ends inside a tag is discarded by the kernel: not IP.
        let Some(inner) = be16(off + 2) else {
            return plain(Family::Other, Reason::NotIp);
        };
        proto = inner;
        off += 4;
    }
    // Still a tag past the bound: the kernel strips any number of tags, so
    // this may be IP that the filter did not read: fail closed.
    if is_vlan(proto) {
        return plain(Family::Other, Reason::ParseError);
    }
    let judge = Judge {
        frame,
        set,
        default_drop,
        limit: Cell::new(None),
    };
    let (family, reason) = match proto {
        ETH_P_IP => (Family::Ipv4, judge.v4(off)),
        ETH_P_IPV6 => (Family::Ipv6, judge.v6(off)),
        _ => return plain(Family::Other, Reason::NotIp),
    };
    match reason {
        Some(reason) => Verdict {
            family,
            reason,
            limit: judge.limit.get(),
        },
        None => plain(family, Reason::ParseError),
    }
}

struct Judge<'a> {
    frame: &'a [u8],
    set: &'a RuleSet,
    default_drop: bool,
    /// Set when a rate limit applies to the frame.
    limit: Cell<Option<Limited>>,
}

impl Judge<'_> {
    fn default(&self) -> Reason {
        if self.default_drop {
            Reason::DroppedDefault
        } else {
            Reason::PassedDefault
        }
    }

    fn has(&self, end: usize) -> Option<()> {
        (self.frame.len() >= end).then_some(())
    }

    fn source(&self, src: IpAddr) -> Option<Reason> {
        if self.set.allow.iter().any(|c| c.contains(src)) {
            Some(Reason::Allowed)
        } else if self.set.block.iter().any(|c| c.contains(src)) {
            Some(Reason::BlockedSrc)
        } else {
            None
        }
    }

    /// Checks the layer-4 header of a first fragment (`None`: cut off) and
    /// tells whether it is a TCP SYN without ACK.
    fn l4(&self, proto: u8, l4: usize) -> Option<bool> {
        match proto {
            PROTO_TCP => {
                self.has(l4 + 20)?;
                Some(self.frame[l4 + 13] & 0x12 == 0x02)
            }
            PROTO_UDP => self.has(l4 + 8).map(|()| false),
            PROTO_ICMP | PROTO_ICMPV6 => self.has(l4 + 4).map(|()| false),
            _ => Some(false),
        }
    }

    /// Notes the rate limit `src` must get past: the longest limit prefix
    /// holding it, unless that limit polices SYNs only and this is none.
    fn limit(&self, src: IpAddr, syn: bool) {
        let found = self
            .set
            .limits
            .iter()
            .filter(|(c, _)| c.contains(src))
            .max_by_key(|(c, _)| c.len);
        if let Some((&cidr, &spec)) = found
            && (!spec.syn || syn)
        {
            self.limit.set(Some(Limited {
                cidr,
                spec,
                source: (spec.per == Per::Source).then_some(src),
            }));
        }
    }

    fn ports(&self, l4: usize, udp: bool) -> Option<Reason> {
        self.has(l4 + if udp { 8 } else { 20 })?;
        let port = u16::from_be_bytes([self.frame[l4 + 2], self.frame[l4 + 3]]);
        let bit = if udp { PORT_UDP } else { PORT_TCP };
        if self.set.ports[usize::from(port)] & bit != 0 {
            Some(Reason::BlockedDstPort)
        } else {
            Some(self.default())
        }
    }

    fn v4(&self, l3: usize) -> Option<Reason> {
        let h = self.frame.get(l3..l3 + 20)?;
        if h[0] >> 4 != 4 || usize::from(h[0] & 15) * 4 < 20 {
            return None;
        }
        let l4 = l3 + usize::from(h[0] & 15) * 4;
        self.has(l4)?;
        let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
        if let Some(r) = self.source(src.into()) {
            return Some(r);
        }
        // Only a first fragment has a layer-4 header.
        let first = u16::from_be_bytes([h[6], h[7]]) & 0x1fff == 0;
        let syn = if first { self.l4(h[9], l4)? } else { false };
        self.limit(src.into(), syn);
        if !first {
            return Some(self.default());
        }
        match h[9] {
            PROTO_TCP => self.ports(l4, false),
            PROTO_UDP => self.ports(l4, true),
            _ => Some(self.default()),
        }
    }

    fn v6(&self, l3: usize) -> Option<Reason> {
        let h = self.frame.get(l3..l3 + 40)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let mut src = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        let src = IpAddr::from(Ipv6Addr::from(src));
        if let Some(r) = self.source(src) {
            return Some(r);
        }
        let mut next = h[6];
        let mut off = l3 + 40;
        let mut first = true;
        for _ in 0..MAX_IPV6_EXT_HDRS {
            match next {
                PROTO_HOPOPTS | PROTO_ROUTING | PROTO_DSTOPTS => {
                    let e = self.frame.get(off..off + 2)?;
                    next = e[0];
                    off += (usize::from(e[1]) + 1) * 8;
                }
                PROTO_FRAGMENT => {
                    let e = self.frame.get(off..off + 8)?;
                    if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                        first = false;
                        break;
                    }
                    next = e[0];
                    off += 8;
                }
                _ => break,
            }
        }
        let syn = if first {
            // A chain longer than the walk bound: the transport is unknown.
            if matches!(
                next,
                PROTO_HOPOPTS | PROTO_ROUTING | PROTO_DSTOPTS | PROTO_FRAGMENT
            ) {
                return None;
            }
            self.l4(next, off)?
        } else {
            false
        };
        self.limit(src, syn);
        if !first {
            return Some(self.default());
        }
        match next {
            PROTO_TCP => self.ports(off, false),
            PROTO_UDP => self.ports(off, true),
            PROTO_ICMPV6 => {
                let nd = (133..=137).contains(&self.frame[off]) && h[7] == 255;
                Some(if nd {
                    Reason::NeighborDiscovery
                } else {
                    self.default()
                })
            }
            _ => Some(self.default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use kscope_lab::frame::*;

    use super::*;
    use crate::firewall::rules::{Rule, SrcList};

    const M: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn set(rules: &[&str]) -> RuleSet {
        let text = rules.join("\n");
        RuleSet::parse("test", &text).expect("rules parse")
    }

    fn f(src: &str, dst: &str, l4: L4) -> Vec<u8> {
        simple(
            M,
            M,
            src.parse().expect("src"),
            dst.parse().expect("dst"),
            l4,
            b"hello",
        )
    }

    #[test]
    fn the_longest_limit_judges_after_allow_and_block_and_syn_limits_see_syns_only() {
        let s = set(&[
            "allow 198.51.100.1",
            "block 198.51.100.2",
            "block --port 22/tcp",
            "limit 198.51.100.0/24 --pps 10",
            "limit 198.51.100.128/25 --pps 20 --per prefix",
            "limit 2001:db8::/32 --pps 5 --syn",
        ]);
        let j = |src: &str, dst: &str, l4| judge(&f(src, dst, l4), &s, false);
        assert_eq!(j("198.51.100.1", "192.0.2.2", L4::Udp(9)).limit, None);
        let blocked = j("198.51.100.2", "192.0.2.2", L4::Udp(9));
        assert_eq!((blocked.reason, blocked.limit), (Reason::BlockedSrc, None));
        let v = j("198.51.100.3", "192.0.2.2", L4::Tcp(22));
        // Past the limit, the port rule still drops it.
        assert_eq!(v.reason, Reason::BlockedDstPort);
        let l = v.limit.expect("limited");
        assert_eq!((l.cidr.len, l.spec.pps), (24, 10));
        assert_eq!(l.source, Some("198.51.100.3".parse().expect("ip")));
        let l = j("198.51.100.200", "192.0.2.2", L4::Echo)
            .limit
            .expect("limited");
        assert_eq!((l.cidr.len, l.spec.pps, l.source), (25, 20, None));
        // `L4::Tcp` is a SYN; a reply (SYN+ACK) or UDP is not.
        assert!(j("2001:db8::9", "2001:db8::2", L4::Tcp(80)).limit.is_some());
        assert!(j("2001:db8::9", "2001:db8::2", L4::Udp(80)).limit.is_none());
        let mut synack = f("2001:db8::9", "2001:db8::2", L4::Tcp(80));
        synack[14 + 40 + 13] = 0x12;
        assert!(judge(&synack, &s, false).limit.is_none());
        // A cut-off header is a parse error, never limited.
        let cut = f("198.51.100.3", "192.0.2.2", L4::Tcp(80));
        let v = judge(&cut[..14 + 20 + 10], &s, false);
        assert_eq!((v.reason, v.limit), (Reason::ParseError, None));
    }

    #[test]
    fn allow_wins_over_a_covering_block_and_over_port_blocks() {
        let s = set(&[
            "block 198.51.100.0/24",
            "allow 198.51.100.7",
            "block --port 53/udp",
        ]);
        let v = |src| classify(&f(src, "192.0.2.2", L4::Udp(53)), &s, false);
        assert_eq!(v("198.51.100.7"), (Family::Ipv4, Reason::Allowed));
        assert_eq!(v("198.51.100.8"), (Family::Ipv4, Reason::BlockedSrc));
        assert_eq!(v("203.0.113.1"), (Family::Ipv4, Reason::BlockedDstPort));
        let tcp = classify(&f("203.0.113.1", "192.0.2.2", L4::Tcp(53)), &s, false);
        assert_eq!(tcp, (Family::Ipv4, Reason::PassedDefault));
    }

    #[test]
    fn default_drop_passes_only_allowed_sources() {
        let s = set(&["allow 2001:db8:1::/48"]);
        let v = |src| classify(&f(src, "2001:db8::2", L4::Echo), &s, true).1;
        assert_eq!(v("2001:db8:1::5"), Reason::Allowed);
        assert_eq!(v("2001:db8:2::5"), Reason::DroppedDefault);
    }

    #[test]
    fn truncation_at_every_header_boundary_is_a_parse_error() {
        let s = RuleSet::default();
        let full = f("192.0.2.1", "192.0.2.2", L4::Tcp(80));
        // Ethernet 14 + IPv4 20 + TCP 20.
        assert_eq!(classify(&full[..54], &s, false).1, Reason::PassedDefault);
        for cut in [14, 20, 33, 34, 40, 53] {
            assert_eq!(
                classify(&full[..cut], &s, false).1,
                Reason::ParseError,
                "cut at {cut}"
            );
        }
        assert_eq!(
            classify(&full[..13], &s, false),
            (Family::Other, Reason::NotIp)
        );
    }

    #[test]
    fn bad_ihl_and_wrong_versions_are_parse_errors() {
        let s = RuleSet::default();
        let mut frame = f("192.0.2.1", "192.0.2.2", L4::Udp(9));
        frame[14] = 0x44;
        assert_eq!(classify(&frame, &s, false).1, Reason::ParseError);
        frame[14] = 0x65;
        assert_eq!(classify(&frame, &s, false).1, Reason::ParseError);
        // IHL 15 (60 bytes) in a frame that is shorter than that.
        frame[14] = 0x4f;
        assert!(frame.len() < 14 + 60);
        assert_eq!(classify(&frame, &s, false).1, Reason::ParseError);
    }

    #[test]
    fn ipv6_extension_chains_are_walked_up_to_the_bound() {
        let s = set(&["block --port 22/tcp"]);
        let chain = |n: usize| {
            let mut f = eth(M, M, &[], ETH_P_IPV6);
            let mut rest = Vec::new();
            for i in 0..n {
                let next = if i + 1 == n { PROTO_TCP } else { PROTO_DSTOPTS };
                rest.extend(ext_header(next, 0));
            }
            rest.extend(tcp(1, 22));
            let first = if n == 0 { PROTO_TCP } else { PROTO_HOPOPTS };
            f.extend(ipv6(
                "2001:db8::1".parse().expect("ip"),
                "2001:db8::2".parse().expect("ip"),
                first,
                rest.len(),
            ));
            f.extend(rest);
            f
        };
        for n in 0..=MAX_IPV6_EXT_HDRS {
            assert_eq!(
                classify(&chain(n), &s, false).1,
                Reason::BlockedDstPort,
                "{n} headers"
            );
        }
        assert_eq!(
            classify(&chain(MAX_IPV6_EXT_HDRS + 1), &s, false).1,
            Reason::ParseError
        );
    }

    #[test]
    fn vlan_stacks_up_to_the_bound_are_parsed_and_deeper_ones_fail_closed() {
        let s = set(&["block 192.0.2.1"]);
        let body = &f("192.0.2.1", "192.0.2.2", L4::Echo)[14..];
        let stack = |n: usize| -> Vec<u16> {
            (0..n)
                .map(|i| if i == 0 { ETH_P_8021AD } else { ETH_P_8021Q })
                .collect()
        };
        for n in 0..=MAX_VLAN_TAGS {
            for tci in [0, 1, 0xfff] {
                let tags: Vec<(u16, u16)> = stack(n).into_iter().map(|t| (t, tci)).collect();
                let mut fr = eth_tci(M, M, &tags, ETH_P_IP);
                fr.extend_from_slice(body);
                assert_eq!(
                    classify(&fr, &s, false),
                    (Family::Ipv4, Reason::BlockedSrc),
                    "{n} tags, TCI {tci}"
                );
            }
        }
        // One tag more: dropped whatever follows, under either policy.
        for inner in [ETH_P_IP, ETH_P_ARP] {
            let mut fr = eth(M, M, &stack(MAX_VLAN_TAGS + 1), inner);
            fr.extend_from_slice(body);
            for drop in [false, true] {
                assert_eq!(
                    classify(&fr, &RuleSet::default(), drop),
                    (Family::Other, Reason::ParseError)
                );
            }
        }
        // A frame that ends inside a tag cannot be delivered as IP.
        let cut = eth(M, M, &stack(3), ETH_P_IP);
        assert_eq!(
            classify(&cut[..14 + 4 + 2], &s, true),
            (Family::Other, Reason::NotIp)
        );
        let arp = eth(M, M, &[], ETH_P_ARP);
        assert_eq!(classify(&arp, &s, true), (Family::Other, Reason::NotIp));
        let tagged_arp = eth(M, M, &stack(2), ETH_P_ARP);
        assert_eq!(
            classify(&tagged_arp, &s, true),
            (Family::Other, Reason::NotIp)
        );
    }

    #[test]
    fn neighbor_discovery_from_the_link_passes_under_default_drop_unless_blocked() {
        let s = set(&["block 2001:db8:bad::/48"]);
        let nd = |src: &str, kind: u8, hops: u8| {
            let mut f = eth(M, M, &[], ETH_P_IPV6);
            let mut icmp = echo(true, 0, 0);
            icmp[0] = kind;
            let mut h = ipv6(
                src.parse().expect("ip"),
                "2001:db8::2".parse().expect("ip"),
                PROTO_ICMPV6,
                icmp.len(),
            );
            h[7] = hops;
            f.extend(h);
            f.extend(icmp);
            f
        };
        let v = |f: Vec<u8>| classify(&f, &s, true).1;
        for kind in 133..=137 {
            assert_eq!(
                v(nd("2001:db8::1", kind, 255)),
                Reason::NeighborDiscovery,
                "type {kind}"
            );
        }
        // Routed (hop limit below 255), or not ND: the default policy.
        assert_eq!(v(nd("2001:db8::1", 135, 64)), Reason::DroppedDefault);
        assert_eq!(v(nd("2001:db8::1", 128, 255)), Reason::DroppedDefault);
        assert_eq!(v(nd("2001:db8::1", 138, 255)), Reason::DroppedDefault);
        // A blocked source stays blocked.
        assert_eq!(v(nd("2001:db8:bad::1", 135, 255)), Reason::BlockedSrc);
    }

    #[test]
    fn later_fragments_skip_port_rules() {
        let mut s = RuleSet::default();
        s.add(Rule::Port("80".parse().expect("spec")));
        s.add(Rule::Src(
            SrcList::Block,
            "2001:db8:bad::/48".parse().expect("cidr"),
        ));
        let mut v4 = f("192.0.2.1", "192.0.2.2", L4::Tcp(80));
        assert_eq!(classify(&v4, &s, false).1, Reason::BlockedDstPort);
        v4[14 + 6] = 0x00;
        v4[14 + 7] = 0x10;
        assert_eq!(classify(&v4, &s, false).1, Reason::PassedDefault);
        let mut v6 = eth(M, M, &[], ETH_P_IPV6);
        let mut rest = frag_header(PROTO_TCP, 5, false);
        rest.extend(tcp(1, 80));
        v6.extend(ipv6(
            "2001:db8:bad::1".parse().expect("ip"),
            "2001:db8::2".parse().expect("ip"),
            PROTO_FRAGMENT,
            rest.len(),
        ));
        v6.extend(rest);
        // The source rule still applies to a later fragment.
        assert_eq!(classify(&v6, &s, false).1, Reason::BlockedSrc);
    }
}
