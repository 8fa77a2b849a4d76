//! The XDP firewall: a tail-call pipeline of three programs.
//!
//! - `fw_xdp` (the attached entry point) parses Ethernet and up to
//!   `MAX_VLAN_TAGS` (8) stacked VLAN tags (802.1Q or 802.1ad, any VLAN
//!   id) and tail-calls `fw_ipv4` or `fw_ipv6` through `FW_PROGS`. A frame
//!   with more tags is dropped as `other`/`parse-error` (fail closed, see
//!   below). Every other frame (ARP, LLDP, a frame too short for an
//!   EtherType or ending inside a tag) is counted as `other`/`not-ip` and
//!   passed: the firewall filters IP only, and ARP must keep working.
//! - `fw_ipv4` and `fw_ipv6` parse their layer 3 (IPv4 with its options;
//!   IPv6 with a walk of at most `MAX_IPV6_EXT_HDRS` hop-by-hop, routing,
//!   fragment and destination-options headers) and layer 4 (TCP and UDP
//!   ports, ICMP and ICMPv6), decide, and count.
//!
//! The decision, first match wins:
//! 1. the layer-3 header does not parse (truncated, wrong version, IHL < 5,
//!    options cut off): **drop**, `parse-error`;
//! 2. the source matches an allow rule: pass, `allowed` (allow wins over
//!    every block, source or port);
//! 3. the source matches a block rule: drop, `blocked-src`;
//! 4. the layer-4 header does not parse (truncated TCP/UDP/ICMP header, an
//!    IPv6 extension chain longer than the walk bound): **drop**,
//!    `parse-error`;
//! 5. the source matches a rate-limit rule (the longest one) and is over
//!    its limit: drop, `rate-limited` (a `--syn` limit looks only at TCP
//!    segments with SYN set and ACK clear; non-first fragments are policed
//!    by limits without `--syn`);
//! 6. TCP or UDP to a blocked destination port: drop, `blocked-dst-port`;
//! 7. IPv6 Neighbor Discovery (ICMPv6 types 133-137 with hop limit 255,
//!    which only the link itself can send): pass, `neighbor-discovery`, so
//!    IPv6 keeps working under a drop default as ARP does;
//! 8. otherwise the default policy: `passed-default` or `dropped-default`.
//!
//! Parse errors drop (fail closed): a packet kscope cannot read could hide a
//! blocked port behind an over-long IPv6 extension chain, and the kernel's
//! own stack discards truncated IP packets anyway. Non-first fragments carry
//! no layer-4 header; they get the default policy.
//!
//! What Linux delivers as IP, and so what must not pass as `not-ip`:
//! - net/ethernet/eth.c, `eth_type_trans()`: the frame's EtherType becomes
//!   `skb->protocol`; values below 0x0600 are 802.3 lengths and become
//!   802.2 LLC, which has no IP handler (net/802/psnap.c serves only
//!   registered SNAP clients, and IP is not one).
//! - net/core/dev.c, `__netif_receive_skb_core()`: an 802.1Q or 802.1ad
//!   EtherType (`eth_type_vlan()`, include/linux/if_vlan.h) is untagged by
//!   `skb_vlan_untag()` (net/core/skbuff.c), which takes the tag out and
//!   makes the inner EtherType the protocol. `vlan_do_receive()`
//!   (net/8021q/vlan_core.c) hands the packet to a VLAN device of that id,
//!   and the next round peels the next tag, so stacked VLAN devices can
//!   reach IP under any ids. Without a device, a tag with VLAN id 0 (a
//!   priority tag) is cleared and, while the inner EtherType is again a
//!   VLAN one, the next tag is untagged too (the `check_vlan_id` loop):
//!   **any number** of id-0 tags is stripped and the IP packet inside is
//!   delivered. A non-zero id with no device marks the packet
//!   `PACKET_OTHERHOST`, which `ip_rcv_core()` (net/ipv4/ip_input.c) and
//!   `ipv6_rcv()` (net/ipv6/ip6_input.c) discard.
//! - So the filter skips tags whatever their id, and because the kernel
//!   sets no limit, a frame with more tags than the walk bound might be IP:
//!   it is dropped (`parse-error`), never passed as `not-ip`. A frame that
//!   ends inside a tag is freed by `skb_vlan_untag()` (its
//!   `pskb_may_pull()` fails), so passing it as `not-ip` cannot deliver IP.
//! - A tag the driver already took out of the frame (receive VLAN offload,
//!   `skb->vlan_tci`) is not in the data XDP sees; the program judges what
//!   follows it, which is what the stack will see.
//! - Other EtherTypes reach IP only through another device: PPPoE
//!   (drivers/net/ppp/pppoe.c, then a ppp device), MPLS (net/mpls/af_mpls.c
//!   pops labels and routes the packet out of a device), tunnels (VXLAN,
//!   GRE, IPIP: their outer header is IP and is judged here; the inner
//!   packet arrives on the tunnel device). Attach kscope to that device to
//!   filter the inner packets.
//!
//! Rate limits are token buckets kept as a virtual clock (GCRA, see
//! `kscope_common::fw::Limit`): one per source address in an LRU hash, or
//! one per prefix in the limit trie's value itself (no second lookup).
//! "Now" is jiffies times the tick's length in ns (`bpf_jiffies64`, which
//! the verifier turns into a load; the loader sets the tick's length), so
//! it moves once per tick and a bucket may pass up to one tick's worth of
//! packets more over an interval than with a precise clock, which costs a
//! helper call (`bpf_ktime_get_ns`, the fallback). Every CPU may police the same bucket at once, so the
//! clock only moves by atomic adds (BPF_ATOMIC add, which 5.10 has; a
//! compare-and-swap is 5.12+): a packet adds the cost of the tokens it
//! draws, reads the clock back and, when that is past the tolerance, takes
//! out again what does not fit; with nothing left it is dropped. Each read sees at least this packet's own add, so concurrent
//! packets can only make each other look later, never earlier: the race
//! can drop a packet that a serial order would have passed, but never
//! pass more than `burst + pps × elapsed`. A bucket whose clock is behind
//! now is moved up to now in the same add (two CPUs doing it at once move
//! it too far, which again errs on the side of dropping).
//!
//! A per-source draw takes several tokens at once (`lease_tokens`) and
//! keeps the rest in this CPU's slot of `FW_LEASES` (`Lease`): the
//! source's next packets in the same tick pass from it without the LRU
//! lookup. A lease of an older tick is given back in the next draw's add,
//! a lease of another source when its slot is taken.
//!
//! The rule set lives in two slots (see `kscope_common::fw`): each packet
//! reads the active slot once, so it is judged against one whole set.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_map_lookup_elem},
    macros::{map, xdp},
    maps::{
        Array, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, ProgramArray,
        lpm_trie::Key,
    },
    programs::XdpContext,
};
use kscope_common::fw::{
    BucketKey, Counter, Family, FwConfig, GLOBAL_DEFAULT_DROP, GLOBAL_JIFFY_NS,
    GLOBAL_TRACK_SOURCES, HAS_ALLOW4, HAS_ALLOW6, HAS_BLOCK4, HAS_BLOCK6, HAS_LIMIT4, HAS_LIMIT6,
    HAS_PORTS, HITS_MAX_ENTRIES, Key4, Key6, LEASE_SLOTS, LIMIT_CLOCK_SCALE, LIMIT_MAX_ENTRIES,
    LIMIT_PER_PREFIX, LIMIT_SYN, LIMIT_TABLE_DEFAULT, Lease, Limit, LimitValue, MAP_ALLOW4,
    MAP_ALLOW6, MAP_BLOCK4, MAP_BLOCK6, MAP_BUCKETS, MAP_CONFIG, MAP_HITS, MAP_LEASES, MAP_LIMIT4,
    MAP_LIMIT6, MAP_PORTS, MAP_PROGS, MAP_REASONS, MAP_SOURCES, MAP_STATE, N_REASON_COUNTERS,
    PORT_TCP, PORT_UDP, PORTS_MAX_ENTRIES, PROG_FW_IPV4, PROG_FW_IPV6, PROG_FW_XDP,
    PROG_INDEX_IPV4, PROG_INDEX_IPV6, Reason, RuleValue, SLOT_BIT, STATE_ACTIVE_SLOT,
    STATE_MAX_ENTRIES, SourceKey, SourceStats, TRIE_MAX_ENTRIES, lease_slot, lease_tokens,
    port_hit_id, port_index, reason_index,
};
use kscope_ebpf::{
    add_atomic, assert_symbol_name,
    net::{self, ptr_at},
};

#[map]
static FW_REASONS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(N_REASON_COUNTERS, 0);

/// Written by user space at attach; pinned so `kscope fw status` can read it.
#[map]
static FW_CONFIG: Array<FwConfig> = Array::with_max_entries(1, 0);

#[map]
static FW_PROGS: ProgramArray = ProgramArray::with_max_entries(2, 0);

#[map]
static FW_STATE: Array<u32> = Array::with_max_entries(STATE_MAX_ENTRIES, 0);

#[map]
static FW_ALLOW4: LpmTrie<Key4, RuleValue> = LpmTrie::with_max_entries(TRIE_MAX_ENTRIES, 0);
#[map]
static FW_BLOCK4: LpmTrie<Key4, RuleValue> = LpmTrie::with_max_entries(TRIE_MAX_ENTRIES, 0);
#[map]
static FW_ALLOW6: LpmTrie<Key6, RuleValue> = LpmTrie::with_max_entries(TRIE_MAX_ENTRIES, 0);
#[map]
static FW_BLOCK6: LpmTrie<Key6, RuleValue> = LpmTrie::with_max_entries(TRIE_MAX_ENTRIES, 0);

#[map]
static FW_PORTS: Array<u32> = Array::with_max_entries(PORTS_MAX_ENTRIES, 0);

#[map]
static FW_LIMIT4: LpmTrie<Key4, LimitValue> = LpmTrie::with_max_entries(LIMIT_MAX_ENTRIES, 0);
#[map]
static FW_LIMIT6: LpmTrie<Key6, LimitValue> = LpmTrie::with_max_entries(LIMIT_MAX_ENTRIES, 0);
/// Token buckets; user space sets the size at load (`--limit-table`).
#[map]
static FW_BUCKETS: LruHashMap<BucketKey, u64> =
    LruHashMap::with_max_entries(LIMIT_TABLE_DEFAULT, 0);

/// Tokens each CPU drew ahead from per-source buckets (see `Lease`).
#[map]
static FW_LEASES: PerCpuArray<Lease> = PerCpuArray::with_max_entries(LEASE_SLOTS, 0);

/// Per-source counters for `fw top`; user space sizes it at load.
#[map]
static FW_SOURCES: LruPerCpuHashMap<SourceKey, SourceStats> =
    LruPerCpuHashMap::with_max_entries(1, 0);

/// Non-zero when the programs count per source (`--track-sources`). Fixed
/// at load time, so without it the verifier drops the counting code.
#[unsafe(no_mangle)]
static TRACK_SOURCES: u32 = 0;

/// Hit counters, allocated on a rule's first hit.
#[map]
static FW_HITS: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(HITS_MAX_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Nanoseconds per jiffy, set by the loader (see `clock`).
#[unsafe(no_mangle)]
static JIFFY_NS: u64 = 0;

/// Non-zero when the default policy is drop. Fixed at load time by the
/// loader (`override_global`), so the verifier prunes the other branch.
#[unsafe(no_mangle)]
static DEFAULT_DROP: u32 = 0;

// The names user space loads these by (kscope-common) must be the names
// above: a mismatch fails the build instead of the load.
assert_symbol_name!(FW_REASONS, MAP_REASONS);
assert_symbol_name!(FW_CONFIG, MAP_CONFIG);
assert_symbol_name!(FW_PROGS, MAP_PROGS);
assert_symbol_name!(FW_STATE, MAP_STATE);
assert_symbol_name!(FW_ALLOW4, MAP_ALLOW4);
assert_symbol_name!(FW_BLOCK4, MAP_BLOCK4);
assert_symbol_name!(FW_ALLOW6, MAP_ALLOW6);
assert_symbol_name!(FW_BLOCK6, MAP_BLOCK6);
assert_symbol_name!(FW_PORTS, MAP_PORTS);
assert_symbol_name!(FW_HITS, MAP_HITS);
assert_symbol_name!(FW_LIMIT4, MAP_LIMIT4);
assert_symbol_name!(FW_LIMIT6, MAP_LIMIT6);
assert_symbol_name!(FW_BUCKETS, MAP_BUCKETS);
assert_symbol_name!(FW_LEASES, MAP_LEASES);
assert_symbol_name!(DEFAULT_DROP, GLOBAL_DEFAULT_DROP);
assert_symbol_name!(FW_SOURCES, MAP_SOURCES);
assert_symbol_name!(TRACK_SOURCES, GLOBAL_TRACK_SOURCES);
assert_symbol_name!(JIFFY_NS, GLOBAL_JIFFY_NS);
assert_symbol_name!(fw_xdp, PROG_FW_XDP);
assert_symbol_name!(fw_ipv4, PROG_FW_IPV4);
assert_symbol_name!(fw_ipv6, PROG_FW_IPV6);

#[xdp]
pub fn fw_xdp(ctx: XdpContext) -> u32 {
    // Frames that are not IP, or whose filter cannot be reached, pass.
    try_fw_xdp(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_fw_xdp(ctx: &XdpContext) -> Option<u32> {
    // Each tail call has its own call site with a constant index: the
    // verifier then lets the JIT patch in a direct jump (x86's
    // `emit_bpf_tail_call_direct`) instead of an indirect one through a
    // retpoline. A merged site with the index in a register costs some
    // 10 ns a packet more where retpolines are on.
    match net::l3_proto(ctx) {
        Some((net::ETH_P_IP, _)) => {
            // SAFETY: a successful tail call never returns; on failure (an
            // empty slot) control comes back here and nothing has changed.
            unsafe { FW_PROGS.tail_call(ctx, PROG_INDEX_IPV4) };
            Some(finish(ctx, Family::Ipv4, Reason::Unfiltered))
        }
        Some((net::ETH_P_IPV6, _)) => {
            // SAFETY: as above.
            unsafe { FW_PROGS.tail_call(ctx, PROG_INDEX_IPV6) };
            Some(finish(ctx, Family::Ipv6, Reason::Unfiltered))
        }
        // More tags than the walk bound: Linux would strip them all and
        // could deliver IP (see the module doc), so fail closed.
        Some((proto, _)) if net::is_vlan(proto) => {
            Some(finish(ctx, Family::Other, Reason::ParseError))
        }
        _ => Some(finish(ctx, Family::Other, Reason::NotIp)),
    }
}

/// What the filter learnt about a packet for `fw top`: where its IP
/// header starts (`family` 0 until the source was read) and the rule it
/// matched (0: none). The source address itself is read again from the
/// packet only when sources are tracked: copying 16 bytes aside for every
/// packet cost IPv6 a few ns when nothing uses them.
#[derive(Default)]
struct Seen {
    family: u32,
    l3: usize,
    rule: u32,
}

#[xdp]
pub fn fw_ipv4(ctx: XdpContext) -> u32 {
    let mut seen = Seen::default();
    // A packet whose headers do not parse is dropped (fail closed).
    let reason = filter_ipv4(&ctx, &mut seen).unwrap_or(Reason::ParseError);
    track(&ctx, &seen, reason);
    finish(&ctx, Family::Ipv4, reason)
}

#[xdp]
pub fn fw_ipv6(ctx: XdpContext) -> u32 {
    let mut seen = Seen::default();
    // A packet whose headers do not parse is dropped (fail closed).
    let reason = filter_ipv6(&ctx, &mut seen).unwrap_or(Reason::ParseError);
    track(&ctx, &seen, reason);
    finish(&ctx, Family::Ipv6, reason)
}

/// Counts the packet under its source, when sources are tracked and the
/// source was read.
#[inline(always)]
fn track(ctx: &XdpContext, seen: &Seen, reason: Reason) {
    // SAFETY: a plain read of a load-time global (see `default_verdict`).
    if unsafe { core::ptr::read_volatile(&TRACK_SOURCES) } == 0 || seen.family == 0 {
        return;
    }
    let mut source = SourceKey {
        family: seen.family,
        addr: [0; 16],
    };
    if seen.family == 4 {
        let Some(a) = ptr_at::<[u8; 4]>(ctx, seen.l3 + 12) else {
            return;
        };
        // SAFETY: `ptr_at` checked the four bytes.
        source.addr[..4].copy_from_slice(unsafe { &*a });
    } else {
        let Some(a) = ptr_at::<[u8; 16]>(ctx, seen.l3 + 8) else {
            return;
        };
        // SAFETY: `ptr_at` checked the sixteen bytes.
        source.addr = unsafe { *a };
    }
    let len = (ctx.data_end() - ctx.data()) as u64;
    let dropped = u64::from(reason.action() as u32 == xdp_action::XDP_DROP);
    let limited = u64::from(reason as u32 == Reason::RateLimited as u32);
    if let Some(s) = FW_SOURCES.get_ptr_mut(source) {
        // SAFETY: this CPU's value; XDP programs on one CPU do not preempt
        // each other.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
            (*s).dropped += dropped;
            (*s).rate_limited += limited;
            (*s).rule = seen.rule;
        }
        return;
    }
    let first = SourceStats {
        packets: 1,
        bytes: len,
        dropped,
        rate_limited: limited,
        rule: seen.rule,
        _pad: 0,
    };
    let _ = FW_SOURCES.insert(source, first, 0);
}

/// `None` means a parse error.
#[inline(always)]
fn filter_ipv4(ctx: &XdpContext, seen: &mut Seen) -> Option<Reason> {
    let (_, l3) = net::l3_proto(ctx)?;
    let ip = ptr_at::<[u8; net::IPV4_HLEN]>(ctx, l3)?;
    // SAFETY: `ptr_at` checked that the whole fixed header is in the packet.
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < net::IPV4_HLEN {
        return None;
    }
    // The options must be there too: check the header's last byte.
    let l4 = l3 + ihl;
    ptr_at::<u8>(ctx, l4 - 1)?;

    let (slot, lists) = state();
    let key = Key::new(8 + 32, [slot as u8, ip[12], ip[13], ip[14], ip[15]]);
    seen.family = 4;
    seen.l3 = l3;
    let tries = (&FW_ALLOW4, &FW_BLOCK4);
    let bits = (lists & HAS_ALLOW4, lists & HAS_BLOCK4);
    if let Some(r) = source_verdict(tries, bits, &key, seen) {
        return Some(r);
    }
    // Only the first fragment has a layer-4 header.
    let first = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
    let proto = ip[9];
    let syn = if first {
        l4_check(ctx, proto, l4)?
    } else {
        false
    };
    if lists & HAS_LIMIT4 != 0 {
        #[rustfmt::skip]
        let bucket = |id| BucketKey {
            id,
            addr: [ip[12], ip[13], ip[14], ip[15], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        if over_limit(&FW_LIMIT4, &key, bucket, syn, seen) {
            return Some(Reason::RateLimited);
        }
    }
    if !first {
        return Some(default_verdict());
    }
    match proto {
        net::IPPROTO_TCP => port_verdict(ctx, l4, lists, false, seen),
        net::IPPROTO_UDP => port_verdict(ctx, l4, lists, true, seen),
        _ => Some(default_verdict()),
    }
}

/// Checks that the layer-4 header of a first fragment is whole (`None`
/// when it is cut off) and tells whether it is a TCP SYN without ACK.
#[inline(always)]
fn l4_check(ctx: &XdpContext, proto: u8, l4: usize) -> Option<bool> {
    match proto {
        net::IPPROTO_TCP => {
            let h = ptr_at::<[u8; net::TCP_MIN_HLEN]>(ctx, l4)?;
            // SAFETY: `ptr_at` checked the whole fixed TCP header.
            let flags = unsafe { (*h)[13] };
            Some(flags & (net::TCP_SYN | net::TCP_ACK) == net::TCP_SYN)
        }
        net::IPPROTO_UDP => {
            ptr_at::<[u8; net::UDP_HLEN]>(ctx, l4)?;
            Some(false)
        }
        net::IPPROTO_ICMP | net::IPPROTO_ICMPV6 => {
            ptr_at::<[u8; net::ICMP_MIN_HLEN]>(ctx, l4)?;
            Some(false)
        }
        _ => Some(false),
    }
}

/// `None` means a parse error.
#[inline(always)]
fn filter_ipv6(ctx: &XdpContext, seen: &mut Seen) -> Option<Reason> {
    let (_, l3) = net::l3_proto(ctx)?;
    let ip = ptr_at::<[u8; net::IPV6_HLEN]>(ctx, l3)?;
    // SAFETY: `ptr_at` checked that the whole fixed header is in the packet.
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 6 {
        return None;
    }
    let (slot, lists) = state();
    // Written out byte by byte: a copy through a zeroed temporary costs a
    // memset call and a second copy.
    #[rustfmt::skip]
    let key = Key::new(8 + 128, [
        slot as u8,
        ip[8], ip[9], ip[10], ip[11], ip[12], ip[13], ip[14], ip[15],
        ip[16], ip[17], ip[18], ip[19], ip[20], ip[21], ip[22], ip[23],
    ]);
    seen.family = 6;
    seen.l3 = l3;
    let tries = (&FW_ALLOW6, &FW_BLOCK6);
    let bits = (lists & HAS_ALLOW6, lists & HAS_BLOCK6);
    if let Some(r) = source_verdict(tries, bits, &key, seen) {
        return Some(r);
    }

    let mut next = ip[6];
    let mut off = l3 + net::IPV6_HLEN;
    let mut first = true;
    for _ in 0..net::MAX_IPV6_EXT_HDRS {
        match next {
            net::IPPROTO_HOPOPTS | net::IPPROTO_ROUTING | net::IPPROTO_DSTOPTS => {
                let h = ptr_at::<[u8; 2]>(ctx, off)?;
                // SAFETY: `ptr_at` checked both bytes.
                let h = unsafe { *h };
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            net::IPPROTO_FRAGMENT => {
                let h = ptr_at::<[u8; 8]>(ctx, off)?;
                // SAFETY: `ptr_at` checked the whole fragment header.
                let h = unsafe { &*h };
                next = h[0];
                off += 8;
                // Only the first fragment has a layer-4 header.
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    first = false;
                    break;
                }
            }
            _ => break,
        }
    }
    let syn = if first {
        // A chain longer than the walk bound: the transport is unknown.
        if matches!(
            next,
            net::IPPROTO_HOPOPTS
                | net::IPPROTO_ROUTING
                | net::IPPROTO_DSTOPTS
                | net::IPPROTO_FRAGMENT
        ) {
            return None;
        }
        l4_check(ctx, next, off)?
    } else {
        false
    };
    if lists & HAS_LIMIT6 != 0 {
        #[rustfmt::skip]
        let bucket = |id| BucketKey {
            id,
            addr: [
                ip[8], ip[9], ip[10], ip[11], ip[12], ip[13], ip[14], ip[15],
                ip[16], ip[17], ip[18], ip[19], ip[20], ip[21], ip[22], ip[23],
            ],
        };
        if over_limit(&FW_LIMIT6, &key, bucket, syn, seen) {
            return Some(Reason::RateLimited);
        }
    }
    if !first {
        return Some(default_verdict());
    }
    match next {
        net::IPPROTO_TCP => port_verdict(ctx, off, lists, false, seen),
        net::IPPROTO_UDP => port_verdict(ctx, off, lists, true, seen),
        net::IPPROTO_ICMPV6 => {
            let icmp = ptr_at::<[u8; net::ICMP_MIN_HLEN]>(ctx, off)?;
            // SAFETY: `ptr_at` checked the ICMPv6 type, code and checksum.
            let kind = unsafe { (*icmp)[0] };
            if (net::ND_FIRST..=net::ND_LAST).contains(&kind) && ip[7] == 255 {
                return Some(Reason::NeighborDiscovery);
            }
            Some(default_verdict())
        }
        _ => Some(default_verdict()),
    }
}

/// The active slot, and the bits of the lists it may have entries in
/// (`HAS_*`): one read of one word.
#[inline(always)]
fn state() -> (u32, u32) {
    let word = FW_STATE.get(STATE_ACTIVE_SLOT).map_or(0, |s| *s);
    (word & SLOT_BIT, word)
}

/// True when the longest limit rule covering the source says this packet
/// is over its rate (see the module doc for the bucket and its atomics).
/// `bucket` makes the key of the source's bucket in `FW_BUCKETS` for a
/// rule id; a per-prefix limit keeps its bucket in the trie's value and
/// needs no second lookup. Counts the drop as the rule's hit.
#[inline(always)]
fn over_limit<K>(
    trie: &LpmTrie<K, LimitValue>,
    key: &Key<K>,
    bucket: impl FnOnce(u32) -> BucketKey,
    syn: bool,
    seen: &mut Seen,
) -> bool {
    let Some(v) = lookup_mut(trie, key) else {
        return false;
    };
    // SAFETY: `v` points at the trie entry's value, which stays valid
    // while the program runs (RCU); only `clock` is ever written by
    // programs, with atomic adds.
    let (id, limit) = unsafe { ((*v).rule.id, (*v).limit) };
    if limit.flags & LIMIT_SYN != 0 && !syn {
        return false;
    }
    let now = clock().wrapping_mul(LIMIT_CLOCK_SCALE);
    // The bucket's clock, the tokens this CPU gives back to it, and for a
    // per-source bucket the lease slot (with the source) that keeps what
    // a draw takes ahead.
    let (clock, back, lease) = if limit.flags & LIMIT_PER_PREFIX != 0 {
        // SAFETY: as above; a pointer to a field of the live value, only
        // ever changed by atomic adds while programs run.
        (unsafe { &raw mut (*v).clock }, 0, None)
    } else {
        let source = bucket(id);
        let lease = FW_LEASES.get_ptr_mut(lease_slot(&source));
        // Tokens this CPU drew ahead for this source in an earlier tick:
        // they go back in the same add as the next draw.
        let mut back = 0;
        if let Some(l) = lease {
            // SAFETY: this CPU's slot; XDP programs on one CPU do not
            // preempt each other.
            unsafe {
                if (*l).left != 0 {
                    if (*l).key == source {
                        if (*l).now == now {
                            (*l).left -= 1;
                            return false;
                        }
                        back = u64::from((*l).left);
                    } else {
                        give_back(&*l);
                    }
                    (*l).left = 0;
                }
            }
        }
        let Some(clock) = source_bucket(source, now) else {
            // Evicted at once by a flood of new buckets: let it pass
            // rather than drop a source the table cannot hold.
            return false;
        };
        (clock, back, lease.map(|l| (l, source)))
    };
    let want = if lease.is_some() {
        lease_tokens(limit.burst)
    } else {
        1
    };
    let got = draw(clock, now, back, want, &limit);
    if got == 0 {
        hit(id, seen);
        return true;
    }
    if let Some((l, source)) = lease
        && got > 1
    {
        // SAFETY: this CPU's slot, as above.
        unsafe {
            *l = Lease {
                key: source,
                left: got - 1,
                now,
                cost: limit.cost,
            };
        }
    }
    false
}

/// The clock of `source`'s bucket in `FW_BUCKETS`, made full at `now` if
/// it has none; `None` when a flood of new buckets evicted it at once.
#[inline(always)]
fn source_bucket(source: BucketKey, now: u64) -> Option<*mut u64> {
    if let Some(c) = FW_BUCKETS.get_ptr_mut(source) {
        return Some(c);
    }
    // A new bucket starts full. Another CPU may create it first; then use
    // that one.
    let _ = FW_BUCKETS.insert(source, now, u64::from(BPF_NOEXIST));
    FW_BUCKETS.get_ptr_mut(source)
}

/// Takes up to `want` tokens from the bucket whose virtual clock is
/// `clock` at `now`, after giving `back` tokens drawn earlier back, and
/// returns how many it got (0: the packet is over the limit). See the
/// module doc for the atomics; a bucket's clock behind `now` (idle, full)
/// moves up to `now` first, so tokens given back never make it fuller
/// than full.
#[inline(always)]
fn draw(clock: *mut u64, now: u64, back: u64, want: u32, limit: &Limit) -> u32 {
    let cost = limit.cost;
    // SAFETY: `clock` is a live bucket, only ever changed by atomic adds
    // while programs run (reads may be plain: they see whole values).
    unsafe {
        // One atomic add: the tokens given back, the move up to now of a
        // bucket that has been idle, and the tokens taken.
        let c = core::ptr::read_volatile(clock);
        let from = c.saturating_sub(back * cost).max(now);
        add_atomic(
            clock,
            from.wrapping_sub(c).wrapping_add(u64::from(want) * cost),
        );
        let top = now.saturating_add(limit.tolerance);
        let v = core::ptr::read_volatile(clock);
        if v <= top {
            return want;
        }
        // Over: give back what does not fit (all of it when not even one
        // token does).
        let mut over = 1;
        while over < want && v.saturating_sub(u64::from(over) * cost) > top {
            over += 1;
        }
        add_atomic(clock, (u64::from(over) * cost).wrapping_neg());
        want - over
    }
}

/// Gives a lease's tokens back to its bucket, if the bucket is still there.
#[inline(always)]
fn give_back(l: &Lease) {
    if let Some(c) = FW_BUCKETS.get_ptr_mut(l.key) {
        // SAFETY: a live bucket (see `draw`).
        unsafe { add_atomic(c, (u64::from(l.left) * l.cost).wrapping_neg()) };
    }
}

/// A writable pointer to the value `key` finds in `trie` (aya's `get`
/// hands out a shared reference, which must not be written through).
#[inline(always)]
fn lookup_mut<K, V>(trie: &LpmTrie<K, V>, key: &Key<K>) -> Option<*mut V> {
    // SAFETY: `LpmTrie` is `repr(transparent)` over its map definition,
    // whose address is what the loader relocates into the map, as aya's
    // own lookups pass it; the key is a whole `Key<K>` on the stack.
    let p = unsafe {
        bpf_map_lookup_elem(
            core::ptr::from_ref(trie).cast_mut().cast(),
            core::ptr::from_ref(key).cast(),
        )
    };
    (!p.is_null()).then_some(p.cast())
}

/// The rate limiter's clock in ns: jiffies times the tick's length
/// (`JIFFY_NS`, from the loader). `bpf_jiffies64` becomes a plain load of
/// `jiffies_64` on 64-bit JITs (kernel/bpf/verifier.c, since 5.5), about
/// 1 ns, where `bpf_ktime_get_coarse_ns` took some 17 ns and
/// `bpf_ktime_get_ns`, the fallback when the tick is unknown, some 34.
#[inline(always)]
fn clock() -> u64 {
    // SAFETY: a plain read of a load-time global (see `default_verdict`);
    // both helpers have no preconditions.
    unsafe {
        let tick = core::ptr::read_volatile(&JIFFY_NS);
        if tick != 0 {
            bpf_jiffies64().wrapping_mul(tick)
        } else {
            bpf_ktime_get_ns()
        }
    }
}

/// Looks the source up in the allow trie, then in the block trie, each
/// only when its list bit (from `FW_STATE`) is non-zero in `has`.
#[inline(always)]
fn source_verdict<K>(
    (allow, block): (&LpmTrie<K, RuleValue>, &LpmTrie<K, RuleValue>),
    has: (u32, u32),
    key: &Key<K>,
    seen: &mut Seen,
) -> Option<Reason> {
    if has.0 != 0
        && let Some(v) = allow.get(key)
    {
        hit(v.id, seen);
        return Some(Reason::Allowed);
    }
    if has.1 != 0
        && let Some(v) = block.get(key)
    {
        hit(v.id, seen);
        return Some(Reason::BlockedSrc);
    }
    None
}

/// Checks the destination port of the TCP (`udp == false`) or UDP header
/// at `l4`, which [`l4_check`] found whole.
#[inline(always)]
fn port_verdict(
    ctx: &XdpContext,
    l4: usize,
    lists: u32,
    udp: bool,
    seen: &mut Seen,
) -> Option<Reason> {
    if lists & HAS_PORTS == 0 {
        return Some(default_verdict());
    }
    let slot = lists & SLOT_BIT;
    let bit = if udp { PORT_UDP } else { PORT_TCP };
    let port = net::read_be16(ctx, l4 + 2)?;
    let blocked = FW_PORTS
        .get(port_index(slot, port))
        .is_some_and(|bits| bits & bit != 0);
    if blocked {
        hit(port_hit_id(udp, port), seen);
        return Some(Reason::BlockedDstPort);
    }
    Some(default_verdict())
}

#[inline(always)]
fn default_verdict() -> Reason {
    // SAFETY: a plain read of a global the loader may have rewritten;
    // volatile so the compiler does not fold in the compiled-in zero.
    if unsafe { core::ptr::read_volatile(&DEFAULT_DROP) } != 0 {
        Reason::DroppedDefault
    } else {
        Reason::PassedDefault
    }
}

/// Counts a hit on rule (or port counter) `id`, the rule `seen` names.
#[inline(always)]
fn hit(id: u32, seen: &mut Seen) {
    seen.rule = id;
    if let Some(h) = FW_HITS.get_ptr_mut(id) {
        // SAFETY: this CPU's value; XDP programs on one CPU do not preempt
        // each other.
        unsafe { *h += 1 };
        return;
    }
    // First hit: create the counter. Another CPU may win the race; then
    // count on the entry it made.
    if FW_HITS.insert(id, 1, u64::from(BPF_NOEXIST)).is_err()
        && let Some(h) = FW_HITS.get_ptr_mut(id)
    {
        // SAFETY: as above.
        unsafe { *h += 1 };
    }
}

/// Counts the packet under its family and reason (once: user space adds
/// the reasons up by action), and returns the verdict.
#[inline(always)]
fn finish(ctx: &XdpContext, family: Family, reason: Reason) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let action = reason.action();
    add(&FW_REASONS, reason_index(family, reason), len);
    action as u32
}

#[inline(always)]
fn add(map: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    let Some(c) = map.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: the slot belongs to this CPU, and XDP programs on one CPU do not
    // preempt each other, so a plain read-modify-write cannot race.
    unsafe {
        (*c).packets += 1;
        (*c).bytes += bytes;
    }
}

kscope_ebpf::program_boilerplate!();
