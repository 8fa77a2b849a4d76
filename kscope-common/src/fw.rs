//! The XDP firewall and packet counter (`fw_xdp`, `fw_ipv4`, `fw_ipv6`).
//!
//! Rule maps hold two complete rule sets, slot 0 and slot 1. The first byte
//! of every trie key and the high half of every port index is the slot; each
//! packet reads the active slot once ([`STATE_ACTIVE_SLOT`] in
//! [`MAP_STATE`]) and looks up only keys of that slot, so `fw load` can build
//! a new set in the other slot and switch with one 4-byte write.

/// Name of the XDP entry program, in the object file and in the kernel.
pub const PROG_FW_XDP: &str = "fw_xdp";
/// The IPv4 filter, reached by tail call from [`PROG_FW_XDP`].
pub const PROG_FW_IPV4: &str = "fw_ipv4";
/// The IPv6 filter, reached by tail call from [`PROG_FW_XDP`].
pub const PROG_FW_IPV6: &str = "fw_ipv6";
/// The benchmark's XDP_PASS-only floor program (`bench_xdp.rs`).
pub const PROG_BENCH_XDP: &str = "bench_xdp";
/// The live benchmark's XDP_DROP-only baseline (`bench_xdp.rs`).
pub const PROG_BENCH_XDP_DROP: &str = "bench_xdp_drop";
/// Returns the low 32 bits of `jiffies_64` (`bench_xdp.rs`): the rate
/// limiter's clock, for tests that model it.
pub const PROG_BENCH_JIFFIES: &str = "bench_jiffies";
/// Per-CPU array of [`Counter`]s, indexed by [`reason_index`].
pub const MAP_REASONS: &str = "FW_REASONS";
/// Array of one [`FwConfig`], written by user space at attach.
pub const MAP_CONFIG: &str = "FW_CONFIG";
/// Program array for the tail calls: [`PROG_INDEX_IPV4`], [`PROG_INDEX_IPV6`].
pub const MAP_PROGS: &str = "FW_PROGS";
/// Array of `u32` rule-set state, indexed by the `STATE_*` constants.
pub const MAP_STATE: &str = "FW_STATE";
/// LPM tries of source rules: key [`Key4`]/[`Key6`], value [`RuleValue`].
pub const MAP_ALLOW4: &str = "FW_ALLOW4";
pub const MAP_BLOCK4: &str = "FW_BLOCK4";
pub const MAP_ALLOW6: &str = "FW_ALLOW6";
pub const MAP_BLOCK6: &str = "FW_BLOCK6";
/// Array of `u32` port bits ([`PORT_TCP`], [`PORT_UDP`]) indexed by
/// [`port_index`].
pub const MAP_PORTS: &str = "FW_PORTS";
/// LPM tries of rate-limit rules: key [`Key4`]/[`Key6`], value
/// [`LimitValue`] (the rule and its limit in one lookup).
pub const MAP_LIMIT4: &str = "FW_LIMIT4";
pub const MAP_LIMIT6: &str = "FW_LIMIT6";
/// LRU hash of token buckets: key [`BucketKey`], value `u64` (see
/// [`Limit`]). Its size is set at attach (`--limit-table`).
pub const MAP_BUCKETS: &str = "FW_BUCKETS";
/// Per-CPU array of [`LEASE_SLOTS`] [`Lease`]s: tokens a CPU drew ahead
/// from a per-source bucket of [`MAP_BUCKETS`] (see [`Lease`]).
pub const MAP_LEASES: &str = "FW_LEASES";
/// LRU per-CPU hash of [`SourceStats`] by [`SourceKey`]: `fw top`'s
/// per-source counters, kept only when the programs' [`GLOBAL_TRACK_SOURCES`]
/// is set at attach (`--track-sources N`, which also sizes it).
pub const MAP_SOURCES: &str = "FW_SOURCES";
/// Load-time global (`u32`): non-zero when the programs count per source.
pub const GLOBAL_TRACK_SOURCES: &str = "TRACK_SOURCES";
/// Load-time global (`u64`): nanoseconds per jiffy (the kernel's
/// `TICK_NSEC`, which `clock_getres(CLOCK_MONOTONIC_COARSE)` reports). The
/// rate limiter's clock is then `bpf_jiffies64() * JIFFY_NS`; 0 makes it
/// read `bpf_ktime_get_ns` instead.
pub const GLOBAL_JIFFY_NS: &str = "JIFFY_NS";
/// Largest `--track-sources`.
pub const TRACK_SOURCES_MAX: u32 = 1 << 22;

/// Key of [`MAP_SOURCES`]: the IP family (4 or 6) and the source address
/// (an IPv4 address in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub family: u32,
    pub addr: [u8; 16],
}

/// One CPU's counts for one source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub packets: u64,
    pub bytes: u64,
    /// Packets dropped, for any reason (rate-limited ones included).
    pub dropped: u64,
    pub rate_limited: u64,
    /// The rule id (or [`port_hit_id`]) the source's last packet matched;
    /// 0 for none.
    pub rule: u32,
    pub _pad: u32,
}

/// Per-CPU hash of rule hit counts (`u64` packets) keyed by rule id
/// ([`RuleValue::id`]) or [`port_hit_id`].
pub const MAP_HITS: &str = "FW_HITS";

/// Load-time global (`u32`) of the `fw_*` programs: [`POLICY_DROP`] when
/// the default policy is drop. Set by the loader, never changed after.
pub const GLOBAL_DEFAULT_DROP: &str = "DEFAULT_DROP";

/// How many stacked VLAN tags (802.1Q or 802.1ad, any VLAN id) the filter
/// walks to reach the IP header. Linux strips any number of tags (a tag
/// with VLAN id 0 without a VLAN device, see `fw_xdp.rs`), so a frame with
/// more tags than this may still be IP: it is dropped as a parse error.
/// Real networks use at most three (802.1ad + 802.1Q + a priority tag);
/// each step costs verifier work, not packet time.
pub const MAX_VLAN_TAGS: usize = 8;

/// How many IPv6 extension headers the filter walks before it gives up on a
/// packet (and counts it as a parse error). Real traffic rarely carries more
/// than two; each step costs verifier work, not packet time.
pub const MAX_IPV6_EXT_HDRS: usize = 6;

/// Slot of `fw_ipv4` in [`MAP_PROGS`].
pub const PROG_INDEX_IPV4: u32 = 0;
/// Slot of `fw_ipv6` in [`MAP_PROGS`].
pub const PROG_INDEX_IPV6: u32 = 1;

/// Source rules per family (allow and block together) that kscope accepts.
pub const MAX_RULES_PER_FAMILY: u32 = 1 << 20;
/// Entries of each LPM trie: two full slots, so a whole new set fits next to
/// the active one while `fw load` builds it. Tries allocate nodes only on
/// insert, so the size costs nothing until used.
pub const TRIE_MAX_ENTRIES: u32 = 2 * MAX_RULES_PER_FAMILY;
/// Entries of [`MAP_HITS`]: hit counters for up to this many distinct rules
/// (and ports) that have matched a packet. Elements are allocated on a
/// rule's first hit (`BPF_F_NO_PREALLOC`), but the kernel allocates the
/// bucket array up front (16 bytes per bucket, a power of two at or above
/// this), so this is a memory decision: 2^20 costs 16 MiB per interface.
/// A rule first hit when the map is full still filters; its hits are not
/// counted.
pub const HITS_MAX_ENTRIES: u32 = 1 << 20;
/// Rate-limit rules per family that kscope accepts.
pub const MAX_LIMIT_RULES: u32 = 1 << 16;
/// Entries of the limit tries: two full slots.
pub const LIMIT_MAX_ENTRIES: u32 = 2 * MAX_LIMIT_RULES;
/// Default, smallest and largest number of token buckets
/// ([`MAP_BUCKETS`]). A bucket is 20 bytes of key and 8 of value, about
/// 100 bytes with the kernel's LRU bookkeeping, so the default costs about
/// 6 MiB and the largest about 1.6 GiB.
pub const LIMIT_TABLE_DEFAULT: u32 = 1 << 16;
pub const LIMIT_TABLE_MIN: u32 = 1 << 10;
pub const LIMIT_TABLE_MAX: u32 = 1 << 24;
/// [`Limit::flags`]: one bucket for the whole prefix instead of one per
/// source address.
pub const LIMIT_PER_PREFIX: u32 = 1;
/// [`Limit::flags`]: police only TCP segments with SYN set and ACK clear.
pub const LIMIT_SYN: u32 = 2;
/// Bucket clock units per nanosecond: [`Limit::cost`] is kept in 1/16 ns so
/// that a rate's rounding error stays under 0.01% up to a million packets
/// per second (and under 1% at the largest rate). `ktime` in these units
/// wraps after 36 years of uptime.
pub const LIMIT_CLOCK_SCALE: u64 = 16;
/// Largest `--pps`: 100 million packets per second (a cost of 160 units).
pub const LIMIT_MAX_PPS: u32 = 100_000_000;

/// One rate limit, as the kernel applies it. The bucket is a virtual
/// clock `v` (the time, in [`LIMIT_CLOCK_SCALE`] units, up to which the
/// budget is spent; GCRA): a packet moves `v` to at least now and adds
/// `cost`; it passes when `v` stays within `now + tolerance`. So at most
/// `burst` packets pass at once and `pps` per second after that.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit {
    /// Clock units one packet spends: `LIMIT_CLOCK_SCALE * 1e9 / pps`,
    /// rounded up so the rate is never exceeded.
    pub cost: u64,
    /// `burst * cost`.
    pub tolerance: u64,
    /// [`LIMIT_PER_PREFIX`], [`LIMIT_SYN`].
    pub flags: u32,
    /// The rate and burst as written, for `fw save`.
    pub pps: u32,
    pub burst: u32,
    pub _pad: u32,
}

impl Limit {
    /// The kernel's limit for `pps` packets per second with `burst`.
    pub const fn new(pps: u32, burst: u32, flags: u32) -> Limit {
        let ns = 1_000_000_000 * LIMIT_CLOCK_SCALE;
        let pps64 = if pps == 0 { 1 } else { pps as u64 };
        let cost = ns.div_ceil(pps64);
        Limit {
            cost,
            tolerance: cost * burst as u64,
            flags,
            pps,
            burst,
            _pad: 0,
        }
    }
}

/// Value of every rate-limit trie entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitValue {
    /// The rule's id and prefix length, as in [`RuleValue`].
    pub rule: RuleValue,
    pub limit: Limit,
    /// The bucket of a [`LIMIT_PER_PREFIX`] limit: its virtual clock
    /// (see [`Limit`]; 0 is a full bucket), kept next to the limit so the
    /// lookup that finds the limit finds the bucket too. Changed by the
    /// programs with atomic adds; per-source limits keep theirs in
    /// [`MAP_BUCKETS`].
    pub clock: u64,
}

/// Key of a token bucket: the limit rule's id and the source address (all
/// zero for a per-prefix limit; an IPv4 address in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub id: u32,
    pub addr: [u8; 16],
}

/// Tokens a CPU may hold drawn ahead from one per-source bucket, kept in
/// its slot of [`MAP_LEASES`] (by a hash of the [`BucketKey`]). A packet
/// whose source's lease on this CPU is of the current clock tick and not
/// used up passes without the bucket's LRU lookup and atomic adds; any
/// other draws [`lease_tokens`] tokens at once (as many as the bucket
/// has, at least one to pass). Tokens are taken from the bucket before
/// they are used, and a lease is used only in the tick it was drawn in, so
/// the bound `burst + pps × elapsed` holds as without leases. What a lease
/// has left is given back to its bucket when this CPU next draws for that
/// source or gives the slot to another one; until then other CPUs see
/// those tokens as spent (at most [`LEASE_MAX`] − 1 per CPU and source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    pub key: BucketKey,
    /// Tokens left.
    pub left: u32,
    /// The clock (in [`LIMIT_CLOCK_SCALE`] units) when it was drawn.
    pub now: u64,
    /// [`Limit::cost`] of the limit it was drawn under, to give it back.
    pub cost: u64,
}

/// Slots of [`MAP_LEASES`] per CPU.
pub const LEASE_SLOTS: u32 = 64;
/// Most tokens one draw takes for a lease.
pub const LEASE_MAX: u32 = 8;

/// Tokens one draw takes from a per-source bucket of `burst`: an eighth of
/// the burst, at most [`LEASE_MAX`], so that what CPUs hold back stays a
/// small part of it; 1 (no lease) below a burst of 16.
pub const fn lease_tokens(burst: u32) -> u32 {
    let k = burst / 8;
    if k < 2 {
        1
    } else if k > LEASE_MAX {
        LEASE_MAX
    } else {
        k
    }
}

/// The [`MAP_LEASES`] slot of a bucket: a multiplicative hash of its words.
#[inline(always)]
pub fn lease_slot(key: &BucketKey) -> u32 {
    let a = &key.addr;
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    let x = w(0) ^ w(4) ^ w(8) ^ w(12) ^ key.id;
    x.wrapping_mul(0x9e37_79b1) >> (32 - LEASE_SLOTS.trailing_zeros())
}

/// Number of ports (0 to 65535).
pub const N_PORTS: u32 = 65_536;
/// Entries of [`MAP_PORTS`]: one per port per slot.
pub const PORTS_MAX_ENTRIES: u32 = 2 * N_PORTS;
/// Port bits in [`MAP_PORTS`].
pub const PORT_TCP: u32 = 1;
pub const PORT_UDP: u32 = 2;

/// Index of `port` of rule-set `slot` in [`MAP_PORTS`].
#[inline(always)]
pub const fn port_index(slot: u32, port: u16) -> u32 {
    (slot & 1) * N_PORTS + port as u32
}

/// Rule ids at or above this are per-port hit counters, not source rules.
pub const PORT_HIT_BASE: u32 = 0xFFFE_0000;

/// Key in [`MAP_HITS`] of the hits on destination `port` for TCP
/// (`udp == false`) or UDP.
#[inline(always)]
pub const fn port_hit_id(udp: bool, port: u16) -> u32 {
    PORT_HIT_BASE + if udp { N_PORTS } else { 0 } + port as u32
}

/// Entries of [`MAP_STATE`]. The active slot is bit 0 ([`SLOT_BIT`]) of
/// this entry; the bits above it say which lists of the active slot may
/// hold entries ([`HAS_ALLOW4`] ...), so a packet learns both from one
/// read, and `fw load` switches set and flags in the same 4-byte write.
pub const STATE_ACTIVE_SLOT: u32 = 0;
/// The slot bit of `FW_STATE[STATE_ACTIVE_SLOT]`.
pub const SLOT_BIT: u32 = 1;
/// List bits of `FW_STATE[STATE_ACTIVE_SLOT]`: the programs skip the
/// lookup of a list whose bit is clear (a lookup in an empty trie still
/// costs a helper call, some 7 ns). User space sets a bit before it adds
/// an entry to the list, and clears it only once the list is empty, so a
/// bit may be set for an empty list but is never clear for a list with
/// entries in the active slot.
pub const HAS_ALLOW4: u32 = 1 << 1;
pub const HAS_BLOCK4: u32 = 1 << 2;
pub const HAS_ALLOW6: u32 = 1 << 3;
pub const HAS_BLOCK6: u32 = 1 << 4;
pub const HAS_LIMIT4: u32 = 1 << 5;
pub const HAS_LIMIT6: u32 = 1 << 6;
/// Some destination port is blocked (any protocol).
pub const HAS_PORTS: u32 = 1 << 7;
/// Next unused rule id (user space only).
pub const STATE_NEXT_ID: u32 = 1;
/// Rules in the active slot: IPv4 then IPv6 (user space only).
pub const STATE_COUNT_V4: u32 = 2;
pub const STATE_COUNT_V6: u32 = 3;
/// Rate-limit rules in either slot. Programs attached by earlier builds
/// skip the limit tries while it is zero (the current ones read
/// [`HAS_LIMIT4`] and [`HAS_LIMIT6`]), so it is still kept up to date.
pub const STATE_LIMITS: u32 = 4;
pub const STATE_MAX_ENTRIES: u32 = 5;

/// Trie key data of an IPv4 rule: the slot byte, then the address. The LPM
/// prefix length counts the slot's 8 bits plus the CIDR's.
pub type Key4 = [u8; 5];
/// Trie key data of an IPv6 rule: the slot byte, then the address.
pub type Key6 = [u8; 17];

/// Value of every source-rule trie entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleValue {
    /// Key of this rule's hit counter in [`MAP_HITS`].
    pub id: u32,
    /// The entry's own LPM prefix length (slot bits included): a lookup
    /// returns the longest match, and this tells user space whether the match
    /// is the exact prefix it asked about.
    pub prefix_len: u32,
}

/// Why a packet got its verdict. Counted per family in [`MAP_REASONS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The source matched an allow rule (passed).
    Allowed = 0,
    /// The source matched a block rule (dropped).
    BlockedSrc = 1,
    /// The TCP/UDP destination port is blocked (dropped).
    BlockedDstPort = 2,
    /// The IP headers could not be parsed, or the frame has more VLAN tags
    /// than [`MAX_VLAN_TAGS`] (dropped, see `fw_xdp.rs`).
    ParseError = 3,
    /// No rule matched and the default policy is pass.
    PassedDefault = 4,
    /// No rule matched and the default policy is drop.
    DroppedDefault = 5,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): always passed.
    NotIp = 6,
    /// The tail call to the family's filter failed (passed, unfiltered).
    /// Cannot happen while the pins are intact.
    Unfiltered = 7,
    /// IPv6 Neighbor Discovery (ICMPv6 133-137 with hop limit 255, so from
    /// the link itself) from a source no rule blocks: passed whatever the
    /// default policy, so IPv6 keeps working under `--default drop` as ARP
    /// does.
    NeighborDiscovery = 8,
    /// The source is over a rate limit (dropped).
    RateLimited = 9,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::Allowed,
        Reason::BlockedSrc,
        Reason::BlockedDstPort,
        Reason::ParseError,
        Reason::PassedDefault,
        Reason::DroppedDefault,
        Reason::NotIp,
        Reason::Unfiltered,
        Reason::NeighborDiscovery,
        Reason::RateLimited,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::BlockedSrc => "blocked-src",
            Reason::BlockedDstPort => "blocked-dst-port",
            Reason::ParseError => "parse-error",
            Reason::PassedDefault => "passed-default",
            Reason::DroppedDefault => "dropped-default",
            Reason::NotIp => "not-ip",
            Reason::Unfiltered => "unfiltered",
            Reason::NeighborDiscovery => "neighbor-discovery",
            Reason::RateLimited => "rate-limited",
        }
    }

    /// The verdict every packet with this reason gets.
    pub const fn action(self) -> Action {
        match self {
            Reason::BlockedSrc
            | Reason::BlockedDstPort
            | Reason::ParseError
            | Reason::DroppedDefault
            | Reason::RateLimited => Action::Drop,
            Reason::Allowed
            | Reason::PassedDefault
            | Reason::NotIp
            | Reason::Unfiltered
            | Reason::NeighborDiscovery => Action::Pass,
        }
    }
}

/// Number of [`Reason`] values.
pub const N_REASONS: u32 = 10;

/// Slots in [`MAP_REASONS`].
pub const N_REASON_COUNTERS: u32 = N_FAMILIES * N_REASONS;

/// Slot of (`family`, `reason`) in [`MAP_REASONS`].
#[inline(always)]
pub const fn reason_index(family: Family, reason: Reason) -> u32 {
    family as u32 * N_REASONS + reason as u32
}

/// Default policy values ([`FwConfig::default_policy`] and the programs'
/// `DEFAULT_DROP` global).
pub const POLICY_PASS: u32 = 0;
pub const POLICY_DROP: u32 = 1;

/// IP family a frame was classified as (after up to [`MAX_VLAN_TAGS`] VLAN
/// tags).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4 = 0,
    Ipv6 = 1,
    /// Anything else: ARP, LLDP, frames too short to carry an EtherType,
    /// and frames with more than [`MAX_VLAN_TAGS`] VLAN tags (counted as
    /// [`Reason::ParseError`]).
    Other = 2,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Ipv4, Family::Ipv6, Family::Other];

    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
            Family::Other => "other",
        }
    }
}

/// Number of [`Family`] values.
pub const N_FAMILIES: u32 = 3;

/// XDP verdicts, numbered as in the kernel's `enum xdp_action`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Aborted = 0,
    Drop = 1,
    Pass = 2,
    Tx = 3,
    Redirect = 4,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Aborted,
        Action::Drop,
        Action::Pass,
        Action::Tx,
        Action::Redirect,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Action::Aborted => "aborted",
            Action::Drop => "drop",
            Action::Pass => "pass",
            Action::Tx => "tx",
            Action::Redirect => "redirect",
        }
    }
}

/// Number of [`Action`] values.
pub const N_ACTIONS: u32 = 5;

/// Number of (family, action) counters, which user space sums from
/// [`MAP_REASONS`] (the action follows from the reason, so the programs
/// count each packet once).
pub const N_COUNTERS: u32 = N_FAMILIES * N_ACTIONS;

/// Slot of (`family`, `action`) among the [`N_COUNTERS`] counters.
#[inline(always)]
pub const fn counter_index(family: Family, action: Action) -> u32 {
    family as u32 * N_ACTIONS + action as u32
}

/// One per-CPU counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    /// Bytes of the whole frame as XDP sees it: from the Ethernet header to the
    /// end of the payload, FCS excluded.
    pub bytes: u64,
}

/// XDP attach mode as recorded in [`FwConfig::mode`].
pub const MODE_SKB: u32 = 1;
pub const MODE_NATIVE: u32 = 2;

/// Per-interface settings, pinned with the program so a later kscope
/// invocation can describe what an earlier one attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwConfig {
    /// Layout version of this struct; bump when fields change.
    pub version: u32,
    /// Interface index at attach time.
    pub ifindex: u32,
    /// [`MODE_SKB`] or [`MODE_NATIVE`].
    pub mode: u32,
    /// [`POLICY_PASS`] or [`POLICY_DROP`]: the verdict for IP packets no
    /// rule matches. Fixed at attach.
    pub default_policy: u32,
    /// Wall-clock attach time, nanoseconds since the Unix epoch.
    pub attached_at_unix_ns: u64,
    /// Entries of [`MAP_BUCKETS`], fixed at attach.
    pub limit_table: u32,
    /// Entries of [`MAP_SOURCES`], 0 when sources are not tracked.
    pub track_sources: u32,
}

/// Current value of [`FwConfig::version`].
pub const FW_CONFIG_VERSION: u32 = 3;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are #[repr(C)], made of integers only, with no implicit padding.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: as above; four u32, a u64, then two u32, so no implicit padding.
    unsafe impl aya::Pod for super::FwConfig {}
    // SAFETY: two u32, no padding.
    unsafe impl aya::Pod for super::RuleValue {}
    // SAFETY: two u64 then four u32 (the last explicit padding): no implicit padding.
    unsafe impl aya::Pod for super::Limit {}
    // SAFETY: four u64 then two u32: no implicit padding.
    unsafe impl aya::Pod for super::SourceStats {}
    // SAFETY: a u32 then 16 bytes, size 20, alignment 4: no padding.
    unsafe impl aya::Pod for super::SourceKey {}
    // SAFETY: a RuleValue (8 bytes) then a Limit (32, alignment 8): no padding.
    unsafe impl aya::Pod for super::LimitValue {}
    // SAFETY: a u32 then 16 bytes, size 20, alignment 4: no padding.
    unsafe impl aya::Pod for super::BucketKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_an_eighth_of_the_burst_between_2_and_the_most() {
        for (burst, want) in [(0, 1), (1, 1), (15, 1), (16, 2), (40, 5), (64, 8), (100, 8)] {
            assert_eq!(lease_tokens(burst), want, "burst {burst}");
        }
        assert_eq!(lease_tokens(u32::MAX), LEASE_MAX);
    }

    #[test]
    fn lease_slots_stay_in_the_map_and_spread_sources() {
        let mut used = [false; LEASE_SLOTS as usize];
        for i in 0..256u32 {
            let mut key = BucketKey {
                id: 7,
                addr: [0; 16],
            };
            key.addr[..4].copy_from_slice(&[192, 0, 2, i as u8]);
            let slot = lease_slot(&key);
            assert!(slot < LEASE_SLOTS, "{slot}");
            used[slot as usize] = true;
        }
        // 256 sources of one /24 land in more than half of the slots.
        let n = used.iter().filter(|&&u| u).count();
        assert!(n > LEASE_SLOTS as usize / 2, "{n} slots used");
    }
}
