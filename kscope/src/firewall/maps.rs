//! The pinned rule maps of one interface: reading, editing and atomically
//! replacing the rule set.
//!
//! Every map holds two slots (see `kscope_common::fw`). Live edits (`fw
//! block`, `fw unblock`, ...) change the active slot one entry at a time;
//! each entry change is atomic, and a command's rules are all validated
//! before the first is applied. `fw load` builds the new set in the
//! inactive slot, then flips `FW_STATE[STATE_ACTIVE_SLOT]` (one 4-byte
//! write, which each packet reads once), then clears the old slot: a packet
//! sees the old set or the new one, never a mix. Callers serialize writers
//! with [`super::lock_iface`].
//!
//! Hit counters live in a per-CPU hash keyed by rule id; a rule keeps its
//! id (and so its count) across `fw load` when it is in both sets.
//!
//! A rate limit is an entry in a limit trie: the prefix, with the rule id
//! and the limit in one value, so one lookup finds both and an entry
//! changes whole. A changed limit gets a new id (and so fresh buckets).
//! `FW_STATE[STATE_LIMITS]` counts the limits of both slots.
//!
//! The word holding the active slot also has one bit per list (allow,
//! block and limit tries of each family, the port bits) that may hold
//! entries; the programs skip a list whose bit is clear. An edit sets the
//! bit before it adds an entry and clears it once the list is empty, and
//! `fw load` writes the new set's bits with the slot switch, so a packet
//! never skips a list that could match it.
//!
//! Minimum kernel: 4.11 (LPM tries); batch reads from 5.6, key by key
//! before (see [`crate::sys::bpf::dump_map`]).

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::AsFd as _,
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Array, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuHashMap, lpm_trie::Key},
};
use kscope_common::fw::{
    HAS_ALLOW4, HAS_ALLOW6, HAS_BLOCK4, HAS_BLOCK6, HAS_LIMIT4, HAS_LIMIT6, HAS_PORTS, Key4, Key6,
    LimitValue, MAP_ALLOW4, MAP_ALLOW6, MAP_BLOCK4, MAP_BLOCK6, MAP_HITS, MAP_LIMIT4, MAP_LIMIT6,
    MAP_PORTS, MAP_STATE, MAX_LIMIT_RULES, MAX_RULES_PER_FAMILY, N_PORTS, PORT_HIT_BASE, PORT_TCP,
    PORT_UDP, RuleValue, SLOT_BIT, STATE_ACTIVE_SLOT, STATE_COUNT_V4, STATE_COUNT_V6, STATE_LIMITS,
    STATE_NEXT_ID, port_hit_id,
};

use super::{
    FwError,
    rules::{Cidr, LimitSpec, PortSpec, Rule, RuleSet, SrcList},
};
use crate::sys::bpf::{MapFdOps, dump_map};

/// One change to the live rule set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Edit {
    Add(Rule),
    Remove(Rule),
}

/// A rule and how many packets it has matched (summed over CPUs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleHits {
    pub rule: Rule,
    pub hits: u64,
}

/// Where a rule's hits are counted in `FW_HITS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum HitKey {
    /// A source rule's own counter.
    Id(u32),
    /// The per-port counters of a port rule's range and protocols.
    Ports(PortSpec),
}

/// Identifies one state of an interface's rule set: every change made
/// through [`RuleMaps`] moves it (see [`RuleMaps::generation`]), so a
/// reader can cache the rule list and re-read it only when this differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Generation {
    /// Kernel id of `FW_STATE`: a detach and attach makes new maps.
    pub(crate) map_id: u32,
    pub(crate) slot: u32,
    pub(crate) next_id: u32,
    pub(crate) count_v4: u32,
    pub(crate) count_v6: u32,
}

/// What [`RuleMaps::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub(crate) added: usize,
    pub(crate) removed: usize,
    /// Rules that were already in place (adding is idempotent).
    pub(crate) unchanged: usize,
}

/// What [`RuleMaps::load`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadReport {
    /// Source rules and port ranges now active.
    pub(crate) rules: usize,
    /// The slot now active.
    pub(crate) slot: u32,
}

/// Which trie a prefix rule lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum List {
    Src(SrcList),
    Limit,
}

/// Rule id of each prefix rule of a slot.
type RuleIds = HashMap<(List, Cidr), u32>;

enum TrieMap {
    V4(LpmTrie<MapData, Key4, RuleValue>),
    V6(LpmTrie<MapData, Key6, RuleValue>),
    Limit4(LpmTrie<MapData, Key4, LimitValue>),
    Limit6(LpmTrie<MapData, Key6, LimitValue>),
}

/// A trie entry's value: the rule id, and the limit of a limit rule.
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: u32,
    /// The entry's own prefix length, slot bits included.
    prefix_len: u32,
    limit: Option<LimitSpec>,
    /// A per-prefix limit's bucket (`LimitValue::clock`); 0 otherwise.
    clock: u64,
}

impl From<RuleValue> for Entry {
    fn from(v: RuleValue) -> Self {
        Entry {
            id: v.id,
            prefix_len: v.prefix_len,
            limit: None,
            clock: 0,
        }
    }
}

impl From<LimitValue> for Entry {
    fn from(v: LimitValue) -> Self {
        Entry {
            id: v.rule.id,
            prefix_len: v.rule.prefix_len,
            limit: Some(LimitSpec::from_kernel(&v.limit)),
            clock: v.clock,
        }
    }
}

/// One prefix-rule trie.
struct Trie {
    name: &'static str,
    list: List,
    map: TrieMap,
}

fn map_err(what: impl Into<String>) -> impl FnOnce(MapError) -> FwError {
    let what = what.into();
    move |source| FwError::Map { what, source }
}

/// The errno inside a map error, if it carries one.
fn errno(e: &MapError) -> Option<i32> {
    crate::sys::errno_in(e)
}

/// True when a lookup or delete found no such key.
fn not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound) || errno(e) == Some(libc::ENOENT)
}

fn io_map_err(what: &'static str) -> impl FnOnce(io::Error) -> FwError {
    move |source| FwError::MapIo { what, source }
}

/// True when a map error says the map is full.
fn is_full(e: &MapError) -> bool {
    matches!(errno(e), Some(libc::ENOSPC | libc::E2BIG))
}

impl Trie {
    fn key_bytes(slot: u32, cidr: &Cidr) -> Vec<u8> {
        let mut data = vec![slot as u8];
        data.extend_from_slice(&cidr.octets());
        data
    }

    /// The entry for exactly `cidr` in `slot`, if there is one.
    fn get_exact(&self, slot: u32, cidr: &Cidr) -> Result<Option<Entry>, FwError> {
        let plen = 8 + u32::from(cidr.len);
        let data = Self::key_bytes(slot, cidr);
        let r: Result<Entry, MapError> = match &self.map {
            TrieMap::V4(t) => t.get(&Key::new(plen, to_array(&data)), 0).map(Into::into),
            TrieMap::V6(t) => t.get(&Key::new(plen, to_array(&data)), 0).map(Into::into),
            TrieMap::Limit4(t) => t.get(&Key::new(plen, to_array(&data)), 0).map(Into::into),
            TrieMap::Limit6(t) => t.get(&Key::new(plen, to_array(&data)), 0).map(Into::into),
        };
        match r {
            // The lookup returns the longest match no longer than `plen`;
            // only a match of exactly `plen` bits is this rule.
            Ok(v) if v.prefix_len == plen => Ok(Some(v)),
            Ok(_) => Ok(None),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(map_err(format!("lookup in {}", self.name))(e)),
        }
    }

    fn limit(&self) -> u32 {
        match self.list {
            List::Src(_) => MAX_RULES_PER_FAMILY,
            List::Limit => MAX_LIMIT_RULES,
        }
    }

    /// Adds `cidr` to `slot` as rule `id`, with its limit and its
    /// per-prefix bucket `clock` (0: full) in a limit trie.
    fn insert(
        &mut self,
        slot: u32,
        cidr: &Cidr,
        id: u32,
        limit: Option<&LimitSpec>,
        clock: u64,
    ) -> Result<(), FwError> {
        let plen = 8 + u32::from(cidr.len);
        let data = Self::key_bytes(slot, cidr);
        let rule = RuleValue {
            id,
            prefix_len: plen,
        };
        let limited = || LimitValue {
            rule,
            limit: limit.map(LimitSpec::kernel).unwrap_or_default(),
            clock,
        };
        let r = match &mut self.map {
            TrieMap::V4(t) => t.insert(&Key::new(plen, to_array(&data)), rule, 0),
            TrieMap::V6(t) => t.insert(&Key::new(plen, to_array(&data)), rule, 0),
            TrieMap::Limit4(t) => t.insert(&Key::new(plen, to_array(&data)), limited(), 0),
            TrieMap::Limit6(t) => t.insert(&Key::new(plen, to_array(&data)), limited(), 0),
        };
        r.map_err(|e| {
            if is_full(&e) {
                FwError::Full {
                    map: self.name,
                    limit: self.limit(),
                }
            } else {
                map_err(format!("insert into {}", self.name))(e)
            }
        })
    }

    fn remove(&mut self, slot: u32, cidr: &Cidr) -> Result<(), FwError> {
        let plen = 8 + u32::from(cidr.len);
        let data = Self::key_bytes(slot, cidr);
        let r = match &mut self.map {
            TrieMap::V4(t) => t.remove(&Key::new(plen, to_array(&data))),
            TrieMap::V6(t) => t.remove(&Key::new(plen, to_array(&data))),
            TrieMap::Limit4(t) => t.remove(&Key::new(plen, to_array(&data))),
            TrieMap::Limit6(t) => t.remove(&Key::new(plen, to_array(&data))),
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(map_err(format!("delete from {}", self.name))(e)),
        }
    }

    /// True when neither slot has an entry (reads one key at most).
    fn is_empty(&self) -> bool {
        match &self.map {
            TrieMap::V4(t) => t.keys().next().is_none(),
            TrieMap::V6(t) => t.keys().next().is_none(),
            TrieMap::Limit4(t) => t.keys().next().is_none(),
            TrieMap::Limit6(t) => t.keys().next().is_none(),
        }
    }

    /// Every entry of both slots: (slot, prefix, value).
    fn entries(&self) -> Result<Vec<(u32, Cidr, Entry)>, FwError> {
        let mut out = Vec::new();
        match &self.map {
            TrieMap::V4(t) => self.collect(t, &mut out)?,
            TrieMap::V6(t) => self.collect(t, &mut out)?,
            TrieMap::Limit4(t) => self.collect(t, &mut out)?,
            TrieMap::Limit6(t) => self.collect(t, &mut out)?,
        }
        Ok(out)
    }

    /// Appends every entry of `trie` to `out` (see [`Self::entries`]).
    fn collect<const N: usize, V: aya::Pod + Into<Entry>>(
        &self,
        trie: &LpmTrie<MapData, [u8; N], V>,
        out: &mut Vec<(u32, Cidr, Entry)>,
    ) -> Result<(), FwError> {
        for e in trie.iter() {
            let (k, v) = e.map_err(map_err(format!("read {}", self.name)))?;
            let data = k.data();
            let len = k.prefix_len().saturating_sub(8) as u8;
            if let Some(c) = Cidr::from_octets(&data[1..], len) {
                out.push((u32::from(data[0]), c, v.into()));
            }
        }
        Ok(())
    }
}

fn to_array<const N: usize>(v: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&v[..N]);
    a
}

/// Handles on one interface's rule maps.
pub struct RuleMaps {
    state: Array<MapData, u32>,
    tries: [Trie; 6],
    ports: Array<MapData, u32>,
    hits: PerCpuHashMap<MapData, u32, u64>,
}

/// Where a map comes from.
trait Source {
    fn map(&mut self, name: &'static str) -> Result<Map, FwError>;
}

struct Pins<'a>(&'a Path);

impl Source for Pins<'_> {
    fn map(&mut self, name: &'static str) -> Result<Map, FwError> {
        let path = self.0.join(name);
        let data = MapData::from_pin(&path).map_err(super::pin_err(&path))?;
        Map::from_map_data(data).map_err(super::pin_err(&path))
    }
}

impl Source for &mut Ebpf {
    fn map(&mut self, name: &'static str) -> Result<Map, FwError> {
        self.take_map(name).ok_or(FwError::Missing(name))
    }
}

impl RuleMaps {
    /// Opens the maps pinned in `dir`.
    pub fn from_pins(dir: &Path) -> Result<Self, FwError> {
        Self::open(Pins(dir))
    }

    /// Takes the maps out of a loaded (not necessarily attached) object,
    /// for tests and benchmarks that drive the programs with
    /// BPF_PROG_TEST_RUN.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, FwError> {
        Self::open(ebpf)
    }

    fn open(mut src: impl Source) -> Result<Self, FwError> {
        fn typed<T: TryFrom<Map, Error = MapError>>(
            src: &mut impl Source,
            name: &'static str,
        ) -> Result<T, FwError> {
            T::try_from(src.map(name)?).map_err(map_err(format!("open {name}")))
        }
        let mut trie = |name: &'static str, list: List, v4: bool| -> Result<Trie, FwError> {
            let map = match (list, v4) {
                (List::Src(_), true) => TrieMap::V4(typed(&mut src, name)?),
                (List::Src(_), false) => TrieMap::V6(typed(&mut src, name)?),
                (List::Limit, true) => TrieMap::Limit4(typed(&mut src, name)?),
                (List::Limit, false) => TrieMap::Limit6(typed(&mut src, name)?),
            };
            Ok(Trie { name, list, map })
        };
        let (allow, block) = (List::Src(SrcList::Allow), List::Src(SrcList::Block));
        let tries = [
            trie(MAP_ALLOW4, allow, true)?,
            trie(MAP_BLOCK4, block, true)?,
            trie(MAP_ALLOW6, allow, false)?,
            trie(MAP_BLOCK6, block, false)?,
            trie(MAP_LIMIT4, List::Limit, true)?,
            trie(MAP_LIMIT6, List::Limit, false)?,
        ];
        Ok(Self {
            state: typed(&mut src, MAP_STATE)?,
            tries,
            ports: typed(&mut src, MAP_PORTS)?,
            hits: typed(&mut src, MAP_HITS)?,
        })
    }

    fn state_get(&self, index: u32) -> Result<u32, FwError> {
        self.state.get(&index, 0).map_err(map_err("read FW_STATE"))
    }

    fn state_set(&mut self, index: u32, value: u32) -> Result<(), FwError> {
        self.state
            .set(index, value, 0)
            .map_err(map_err("write FW_STATE"))
    }

    /// The slot packets are judged against.
    fn active_slot(&self) -> Result<u32, FwError> {
        Ok(self.state_get(STATE_ACTIVE_SLOT)? & SLOT_BIT)
    }

    /// Sets list bits ([`list_bit`], [`HAS_PORTS`]) next to the active slot.
    fn raise_lists(&mut self, bits: u32) -> Result<(), FwError> {
        let word = self.state_get(STATE_ACTIVE_SLOT)?;
        if word & bits != bits {
            self.state_set(STATE_ACTIVE_SLOT, word | bits)?;
        }
        Ok(())
    }

    /// Clears the bits of the lists among `bits` that have no entry left
    /// (in either slot: a leftover of an interrupted `fw load` keeps its
    /// bit, which costs a lookup, never a verdict).
    fn lower_empty_lists(&mut self, bits: u32, ports_empty: bool) -> Result<(), FwError> {
        let mut clear = 0;
        for (i, t) in self.tries.iter().enumerate() {
            let bit = list_bit(i);
            if bits & bit != 0 && t.is_empty() {
                clear |= bit;
            }
        }
        if bits & HAS_PORTS != 0 && ports_empty {
            clear |= HAS_PORTS;
        }
        let word = self.state_get(STATE_ACTIVE_SLOT)?;
        if word & clear != 0 {
            self.state_set(STATE_ACTIVE_SLOT, word & !clear)?;
        }
        Ok(())
    }

    fn trie_index(list: List, v4: bool) -> usize {
        match (list, v4) {
            (List::Src(SrcList::Allow), true) => 0,
            (List::Src(SrcList::Block), true) => 1,
            (List::Src(SrcList::Allow), false) => 2,
            (List::Src(SrcList::Block), false) => 3,
            (List::Limit, true) => 4,
            (List::Limit, false) => 5,
        }
    }

    fn trie(&self, list: List, cidr: &Cidr) -> &Trie {
        &self.tries[Self::trie_index(list, cidr.is_v4())]
    }

    fn trie_mut(&mut self, list: List, cidr: &Cidr) -> &mut Trie {
        &mut self.tries[Self::trie_index(list, cidr.is_v4())]
    }

    /// Stores how many limits both slots hold in `FW_STATE[STATE_LIMITS]`.
    fn sync_limits(&mut self) -> Result<(), FwError> {
        let mut n = 0;
        for t in self.tries.iter().filter(|t| t.list == List::Limit) {
            n += t.entries()?.len();
        }
        self.state_set(STATE_LIMITS, n as u32)
    }

    fn ports_ops(&self) -> MapFdOps {
        MapFdOps::new(self.ports.map().fd().as_fd(), 4, 4, 1)
    }

    /// The port table of both slots: `PORTS_MAX_ENTRIES` entries.
    fn read_ports(&self) -> Result<Vec<u32>, FwError> {
        let ops = self.ports_ops();
        let (d, _) = dump_map(&ops, None).map_err(io_map_err("read FW_PORTS"))?;
        let mut out = vec![0u32; 2 * N_PORTS as usize];
        for i in 0..d.len {
            let (k, v) = d.entry(&ops, i);
            let k = u32::from_ne_bytes(to_array(k)) as usize;
            if let Some(slot) = out.get_mut(k) {
                *slot = u32::from_ne_bytes(to_array(v));
            }
        }
        Ok(out)
    }

    fn set_port(&mut self, index: u32, bits: u32) -> Result<(), FwError> {
        self.ports
            .set(index, bits, 0)
            .map_err(map_err("write FW_PORTS"))
    }

    /// Hit counts summed over CPUs, by key.
    pub(crate) fn read_hits(&self) -> Result<HashMap<u32, u64>, FwError> {
        let cpus = super::nr_cpus()?;
        let ops = MapFdOps::new(self.hits.map().fd().as_fd(), 4, 8, cpus);
        let (d, _) = dump_map(&ops, None).map_err(io_map_err("read FW_HITS"))?;
        let mut out = HashMap::with_capacity(d.len);
        for i in 0..d.len {
            let (k, v) = d.entry(&ops, i);
            let sum = v
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes(to_array(c)))
                .fold(0u64, u64::wrapping_add);
            out.insert(u32::from_ne_bytes(to_array(k)), sum);
        }
        Ok(out)
    }

    fn forget_hits(&mut self, id: u32) -> Result<(), FwError> {
        match self.hits.remove(&id) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(map_err("delete from FW_HITS")(e)),
        }
    }

    /// The active rule set, with each source rule's id.
    fn read_active(&self) -> Result<(RuleSet, RuleIds), FwError> {
        let slot = self.active_slot()?;
        let mut set = RuleSet::default();
        let mut ids = HashMap::new();
        for t in &self.tries {
            for (s, cidr, v) in t.entries()? {
                if s != slot {
                    continue;
                }
                match (t.list, v.limit) {
                    (List::Src(l), _) => set.add(Rule::Src(l, cidr)),
                    (List::Limit, Some(spec)) => set.add(Rule::Limit(cidr, spec)),
                    (List::Limit, None) => continue,
                }
                ids.insert((t.list, cidr), v.id);
            }
        }
        let ports = self.read_ports()?;
        let base = (slot * N_PORTS) as usize;
        set.ports
            .copy_from_slice(&ports[base..base + N_PORTS as usize]);
        Ok((set, ids))
    }

    /// The rule set's [`Generation`]: four `FW_STATE` reads, no walk of
    /// the rule maps. `load` flips the slot and every successful `apply`
    /// or `load` ends by advancing `STATE_NEXT_ID` (ids are never reused,
    /// so skipping one costs nothing), so two different rule sets never
    /// share a generation, even when an edit only touched ports.
    pub(crate) fn generation(&self) -> Result<Generation, FwError> {
        let map_id = self
            .state
            .map()
            .info()
            .map_err(map_err("read FW_STATE info"))?
            .id();
        Ok(Generation {
            map_id,
            slot: self.active_slot()?,
            next_id: self.state_get(STATE_NEXT_ID)?,
            count_v4: self.state_get(STATE_COUNT_V4)?,
            count_v6: self.state_get(STATE_COUNT_V6)?,
        })
    }

    /// Moves the generation on (see [`Self::generation`]).
    fn advance_generation(&mut self) -> Result<(), FwError> {
        let next = self.next_id()?.saturating_add(1);
        self.state_set(STATE_NEXT_ID, next)
    }

    /// Every active rule with where its hits are counted, in `fw save`
    /// order. Walks the whole rule set: callers cache it by
    /// [`Self::generation`].
    pub(crate) fn rules_with_keys(&self) -> Result<Vec<(Rule, HitKey)>, FwError> {
        let (set, ids) = self.read_active()?;
        Ok(set
            .rules()
            .into_iter()
            .filter_map(|rule| {
                let key = match rule {
                    Rule::Src(l, c) => HitKey::Id(*ids.get(&(List::Src(l), c))?),
                    Rule::Limit(c, _) => HitKey::Id(*ids.get(&(List::Limit, c))?),
                    Rule::Port(p) => HitKey::Ports(p),
                };
                Some((rule, key))
            })
            .collect())
    }

    /// The active rule set (what `fw save` prints).
    pub fn rule_set(&self) -> Result<RuleSet, FwError> {
        Ok(self.read_active()?.0)
    }

    /// Every active rule with its hit count, in `fw save` order.
    pub fn rules_with_hits(&self) -> Result<Vec<RuleHits>, FwError> {
        let (set, ids) = self.read_active()?;
        let hits = self.read_hits()?;
        Ok(set
            .rules()
            .into_iter()
            .map(|rule| {
                let id = match rule {
                    Rule::Src(l, c) => ids.get(&(List::Src(l), c)),
                    Rule::Limit(c, _) => ids.get(&(List::Limit, c)),
                    Rule::Port(_) => None,
                };
                let hits = match rule {
                    Rule::Port(p) => port_hits(&p, &hits),
                    _ => id.and_then(|id| hits.get(id)).copied().unwrap_or(0),
                };
                RuleHits { rule, hits }
            })
            .collect())
    }

    fn next_id(&self) -> Result<u32, FwError> {
        Ok(self.state_get(STATE_NEXT_ID)?.max(1))
    }

    /// Applies live edits to the active slot. Every edit is checked first
    /// (removing a rule that is not there, going over the capacity); on any
    /// such error nothing changes.
    ///
    /// # Errors
    /// [`FwError::NoRule`], [`FwError::Full`], or a map operation failure.
    pub fn apply(&mut self, edits: &[Edit]) -> Result<ApplyReport, FwError> {
        let slot = self.active_slot()?;
        let mut report = ApplyReport::default();
        // Validate everything before the first change.
        let mut adds: Vec<(List, Cidr, Option<LimitSpec>)> = Vec::new();
        let mut removes: Vec<(List, Cidr, u32)> = Vec::new();
        let mut seen = HashSet::new();
        let mut ports: Option<Vec<u32>> = None;
        let mut new_ports: Vec<u32> = Vec::new();
        let (mut port_adds, mut port_removes) = (0, 0);
        for e in edits {
            if !seen.insert(*e) {
                continue;
            }
            match *e {
                Edit::Add(Rule::Src(l, c)) => {
                    if self.trie(List::Src(l), &c).get_exact(slot, &c)?.is_some() {
                        report.unchanged += 1;
                    } else {
                        adds.push((List::Src(l), c, None));
                    }
                }
                Edit::Remove(Rule::Src(l, c)) => {
                    let Some(v) = self.trie(List::Src(l), &c).get_exact(slot, &c)? else {
                        return Err(FwError::NoRule(Rule::Src(l, c).to_string()));
                    };
                    removes.push((List::Src(l), c, v.id));
                }
                Edit::Add(Rule::Limit(c, spec)) => {
                    match self.trie(List::Limit, &c).get_exact(slot, &c)? {
                        Some(v) if v.limit == Some(spec) => report.unchanged += 1,
                        // A changed limit is a new rule (new id, fresh buckets).
                        Some(v) => {
                            removes.push((List::Limit, c, v.id));
                            adds.push((List::Limit, c, Some(spec)));
                        }
                        None => adds.push((List::Limit, c, Some(spec))),
                    }
                }
                Edit::Remove(Rule::Limit(c, _)) => {
                    let Some(v) = self.trie(List::Limit, &c).get_exact(slot, &c)? else {
                        return Err(FwError::NoRule(format!("limit {c}")));
                    };
                    removes.push((List::Limit, c, v.id));
                }
                Edit::Add(Rule::Port(p)) | Edit::Remove(Rule::Port(p)) => {
                    if ports.is_none() {
                        let all = self.read_ports()?;
                        let base = (slot * N_PORTS) as usize;
                        let mine = all[base..base + N_PORTS as usize].to_vec();
                        new_ports = mine.clone();
                        ports = Some(mine);
                    }
                    let range = usize::from(p.lo)..=usize::from(p.hi);
                    if matches!(e, Edit::Add(_)) {
                        new_ports[range].iter_mut().for_each(|b| *b |= p.bits);
                        port_adds += 1;
                    } else {
                        port_removes += 1;
                        if new_ports[range.clone()].iter().all(|b| b & p.bits == 0) {
                            return Err(FwError::NoRule(Rule::Port(p).to_string()));
                        }
                        new_ports[range].iter_mut().for_each(|b| *b &= !p.bits);
                    }
                }
            }
        }
        let is_src = |l: &List| matches!(l, List::Src(_));
        for (v4, index) in [(true, STATE_COUNT_V4), (false, STATE_COUNT_V6)] {
            let now = self.state_get(index)? as usize;
            let after = (now
                + adds
                    .iter()
                    .filter(|(l, c, _)| is_src(l) && c.is_v4() == v4)
                    .count())
            .saturating_sub(
                removes
                    .iter()
                    .filter(|(l, c, _)| is_src(l) && c.is_v4() == v4)
                    .count(),
            );
            if after > MAX_RULES_PER_FAMILY as usize {
                return Err(FwError::Full {
                    map: if v4 { "IPv4" } else { "IPv6" },
                    limit: MAX_RULES_PER_FAMILY,
                });
            }
        }
        if adds.iter().any(|(l, _, _)| !is_src(l)) {
            for v4 in [true, false] {
                let t = &self.tries[Self::trie_index(List::Limit, v4)];
                let now = t.entries()?.iter().filter(|(s, _, _)| *s == slot).count();
                let count = |v: &[(List, Cidr, u32)]| {
                    v.iter()
                        .filter(|(l, c, _)| !is_src(l) && c.is_v4() == v4)
                        .count()
                };
                let added = adds
                    .iter()
                    .filter(|(l, c, _)| !is_src(l) && c.is_v4() == v4)
                    .count();
                if (now + added).saturating_sub(count(&removes)) > MAX_LIMIT_RULES as usize {
                    return Err(FwError::Full {
                        map: if v4 {
                            "IPv4 rate-limit"
                        } else {
                            "IPv6 rate-limit"
                        },
                        limit: MAX_LIMIT_RULES,
                    });
                }
            }
        }

        // Apply: removals first (freeing room), then additions, then ports.
        // A list's bit goes up before its first entry can be read.
        let mut raise = adds.iter().fold(0, |b, (l, c, _)| {
            b | list_bit(Self::trie_index(*l, c.is_v4()))
        });
        if new_ports.iter().any(|&b| b != 0) {
            raise |= HAS_PORTS;
        }
        self.raise_lists(raise)?;
        for (l, c, id) in &removes {
            self.trie_mut(*l, c).remove(slot, c)?;
            self.forget_hits(*id)?;
            if is_src(l) {
                self.bump_count(c.is_v4(), -1)?;
            }
            report.removed += 1;
        }
        let mut id = self.next_id()?;
        for (l, c, spec) in &adds {
            if id >= PORT_HIT_BASE {
                return Err(FwError::IdsExhausted);
            }
            // Ids are never reused, so a fresh id has no counter yet.
            self.trie_mut(*l, c).insert(slot, c, id, spec.as_ref(), 0)?;
            id += 1;
            self.state_set(STATE_NEXT_ID, id)?;
            if is_src(l) {
                self.bump_count(c.is_v4(), 1)?;
            } else {
                // Skipped while zero: count it before the first packet
                // could need it.
                let n = self.state_get(STATE_LIMITS)?;
                self.state_set(STATE_LIMITS, n.saturating_add(1))?;
            }
            report.added += 1;
        }
        if removes.iter().any(|(l, _, _)| !is_src(l)) {
            self.sync_limits()?;
        }
        let ports_empty = ports.is_some() && new_ports.iter().all(|&b| b == 0);
        if let Some(old) = ports {
            for (port, (&was, &now)) in old.iter().zip(&new_ports).enumerate() {
                if was != now {
                    self.set_port(slot * N_PORTS + port as u32, now)?;
                    self.forget_port_hits(port as u16, was & !now)?;
                }
            }
            report.added += port_adds;
            report.removed += port_removes;
        }
        let mut lower = removes.iter().fold(0, |b, (l, c, _)| {
            b | list_bit(Self::trie_index(*l, c.is_v4()))
        });
        if port_removes > 0 {
            lower |= HAS_PORTS;
        }
        self.lower_empty_lists(lower, ports_empty)?;
        if report.added + report.removed > 0 {
            self.advance_generation()?;
        }
        Ok(report)
    }

    fn bump_count(&mut self, v4: bool, delta: i64) -> Result<(), FwError> {
        let index = if v4 { STATE_COUNT_V4 } else { STATE_COUNT_V6 };
        let now = i64::from(self.state_get(index)?);
        self.state_set(index, (now + delta).max(0) as u32)
    }

    fn forget_port_hits(&mut self, port: u16, cleared_bits: u32) -> Result<(), FwError> {
        if cleared_bits & PORT_TCP != 0 {
            self.forget_hits(port_hit_id(false, port))?;
        }
        if cleared_bits & PORT_UDP != 0 {
            self.forget_hits(port_hit_id(true, port))?;
        }
        Ok(())
    }

    /// Replaces the whole rule set atomically (see the module doc). On an
    /// error before the switch, the active set is untouched and the
    /// half-built slot is cleared again.
    ///
    /// # Errors
    /// [`FwError::Full`] or a map operation failure.
    pub fn load(&mut self, set: &RuleSet) -> Result<LoadReport, FwError> {
        set.check_capacity()?;
        let old = self.active_slot()?;
        let new = 1 - old;

        // Read both slots; anything already in the new slot is left over
        // from an interrupted load.
        let mut old_ids = RuleIds::new();
        let mut old_limits = HashMap::new();
        for t in &mut self.tries {
            let entries = t.entries()?;
            for (s, c, v) in entries {
                if s == new {
                    t.remove(new, &c)?;
                } else {
                    old_ids.insert((t.list, c), v.id);
                    if let Some(spec) = v.limit {
                        old_limits.insert(c, spec);
                    }
                }
            }
        }
        let ports = self.read_ports()?;
        let (old_base, new_base) = ((old * N_PORTS) as usize, (new * N_PORTS) as usize);

        let built = self.build_slot(
            new,
            set,
            (&old_ids, &old_limits),
            &ports[new_base..new_base + N_PORTS as usize],
        );
        let kept = match built {
            Ok(kept) => kept,
            Err(e) => {
                // Clear what was built; the active slot was never touched.
                let _ = self.clear_slot(new);
                let _ = self.sync_limits();
                return Err(e);
            }
        };

        // The switch: one 4-byte write, read once per packet, with the
        // new set's list bits.
        self.state_set(STATE_ACTIVE_SLOT, new | lists_of(set))?;
        self.state_set(STATE_COUNT_V4, set.count(true) as u32)?;
        self.state_set(STATE_COUNT_V6, set.count(false) as u32)?;

        // Clear the old slot and the counters of rules that are gone.
        self.clear_slot(old)?;
        self.sync_limits()?;
        for id in old_ids.values() {
            if !kept.contains(id) {
                self.forget_hits(*id)?;
            }
        }
        for port in 0..N_PORTS as usize {
            let gone = ports[old_base + port] & !set.ports[port];
            if gone != 0 {
                self.forget_port_hits(port as u16, gone)?;
            }
        }
        self.advance_generation()?;
        Ok(LoadReport {
            rules: set.rules().len(),
            slot: new,
        })
    }

    /// Writes `set` into `slot`, reusing the ids of rules already active;
    /// returns the reused ids.
    fn build_slot(
        &mut self,
        slot: u32,
        set: &RuleSet,
        (old_ids, old_limits): (&RuleIds, &HashMap<Cidr, LimitSpec>),
        slot_ports: &[u32],
    ) -> Result<HashSet<u32>, FwError> {
        let mut kept = HashSet::new();
        let mut id = self.next_id()?;
        for (list, cidrs) in [(SrcList::Allow, &set.allow), (SrcList::Block, &set.block)] {
            let list = List::Src(list);
            for c in cidrs {
                let rule_id = match old_ids.get(&(list, *c)) {
                    Some(&old) => {
                        kept.insert(old);
                        old
                    }
                    None => {
                        id += 1;
                        id - 1
                    }
                };
                self.trie_mut(list, c).insert(slot, c, rule_id, None, 0)?;
            }
        }
        for (c, spec) in &set.limits {
            // An unchanged limit keeps its id, its buckets and its hits.
            let old = match old_ids.get(&(List::Limit, *c)) {
                Some(&old) if old_limits.get(c) == Some(spec) => Some(old),
                _ => None,
            };
            let (rule_id, clock) = match old {
                Some(old) => {
                    kept.insert(old);
                    // A per-prefix bucket lives in the entry itself: carry
                    // it over. Packets the old entry polices between this
                    // read and the switch are not carried (a few at most).
                    let active = self.trie(List::Limit, c).get_exact(1 - slot, c)?;
                    (old, active.map_or(0, |e| e.clock))
                }
                None => {
                    id += 1;
                    (id - 1, 0)
                }
            };
            self.trie_mut(List::Limit, c)
                .insert(slot, c, rule_id, Some(spec), clock)?;
        }
        if id >= PORT_HIT_BASE {
            return Err(FwError::IdsExhausted);
        }
        self.state_set(STATE_NEXT_ID, id)?;
        if !set.limits.is_empty() {
            self.sync_limits()?;
        }
        for (port, (&was, &now)) in slot_ports.iter().zip(&set.ports).enumerate() {
            if was != now {
                self.set_port(slot * N_PORTS + port as u32, now)?;
            }
        }
        Ok(kept)
    }

    /// Removes every entry of `slot`.
    fn clear_slot(&mut self, slot: u32) -> Result<(), FwError> {
        for t in &mut self.tries {
            for (s, c, _) in t.entries()? {
                if s == slot {
                    t.remove(slot, &c)?;
                }
            }
        }
        let ports = self.read_ports()?;
        let base = (slot * N_PORTS) as usize;
        for port in 0..N_PORTS as usize {
            if ports[base + port] != 0 {
                self.set_port(slot * N_PORTS + port as u32, 0)?;
            }
        }
        Ok(())
    }
}

/// The `FW_STATE` bit of trie `index` ([`RuleMaps::trie_index`]: allow,
/// block and limit tries of each family).
fn list_bit(index: usize) -> u32 {
    const BITS: [u32; 6] = [
        HAS_ALLOW4, HAS_BLOCK4, HAS_ALLOW6, HAS_BLOCK6, HAS_LIMIT4, HAS_LIMIT6,
    ];
    BITS.get(index).copied().unwrap_or(0)
}

/// The list bits of a whole rule set: exactly its non-empty lists.
fn lists_of(set: &RuleSet) -> u32 {
    let mut bits = 0;
    for (list, cidrs) in [(SrcList::Allow, &set.allow), (SrcList::Block, &set.block)] {
        for c in cidrs {
            bits |= list_bit(RuleMaps::trie_index(List::Src(list), c.is_v4()));
        }
    }
    for c in set.limits.keys() {
        bits |= list_bit(RuleMaps::trie_index(List::Limit, c.is_v4()));
    }
    if set.ports.iter().any(|&b| b != 0) {
        bits |= HAS_PORTS;
    }
    bits
}

/// Hits of a port rule: the per-port counters of its range and protocols.
fn port_hits(p: &PortSpec, hits: &HashMap<u32, u64>) -> u64 {
    let mut sum = 0u64;
    for port in p.lo..=p.hi {
        for (bit, udp) in [(PORT_TCP, false), (PORT_UDP, true)] {
            if p.bits & bit != 0 {
                sum += hits.get(&port_hit_id(udp, port)).copied().unwrap_or(0);
            }
        }
    }
    sum
}

/// Hit counts read once ([`RuleMaps::read_hits`]), for summing the hits of
/// many rules: a port rule's counters are one contiguous id range per
/// protocol, summed from prefix sums instead of one lookup per port.
pub(crate) struct HitCounts {
    by_id: HashMap<u32, u64>,
    /// Per-port counter ids, sorted, with the running sum up to each.
    port_ids: Vec<u32>,
    port_sums: Vec<u64>,
}

impl HitCounts {
    pub(crate) fn new(by_id: HashMap<u32, u64>) -> Self {
        let mut ports: Vec<(u32, u64)> = by_id
            .iter()
            .filter(|(id, _)| **id >= PORT_HIT_BASE)
            .map(|(id, n)| (*id, *n))
            .collect();
        ports.sort_unstable();
        let mut sum = 0u64;
        let port_sums = ports
            .iter()
            .map(|(_, n)| {
                sum = sum.wrapping_add(*n);
                sum
            })
            .collect();
        Self {
            by_id,
            port_ids: ports.into_iter().map(|(id, _)| id).collect(),
            port_sums,
        }
    }

    /// Hits counted under `key`.
    pub(crate) fn of(&self, key: &HitKey) -> u64 {
        match key {
            HitKey::Id(id) => self.by_id.get(id).copied().unwrap_or(0),
            HitKey::Ports(p) => [(PORT_TCP, false), (PORT_UDP, true)]
                .into_iter()
                .filter(|(bit, _)| p.bits & bit != 0)
                .map(|(_, udp)| self.sum_ids(port_hit_id(udp, p.lo), port_hit_id(udp, p.hi)))
                .fold(0u64, u64::wrapping_add),
        }
    }

    /// Sum of the per-port counters with ids in `lo..=hi`.
    fn sum_ids(&self, lo: u32, hi: u32) -> u64 {
        let below = |id: u32| {
            let n = self.port_ids.partition_point(|&x| x < id);
            if n == 0 { 0 } else { self.port_sums[n - 1] }
        };
        below(hi.saturating_add(1)).wrapping_sub(below(lo))
    }
}

#[cfg(test)]
mod hit_count_tests {
    use super::*;

    #[test]
    fn port_rules_sum_the_counters_of_their_range_and_protocols() {
        let mut by_id = HashMap::new();
        by_id.insert(7, 5);
        for (udp, port, n) in [
            (false, 22, 1),
            (false, 80, 2),
            (true, 80, 4),
            (false, 81, 8),
        ] {
            by_id.insert(port_hit_id(udp, port), n);
        }
        let h = HitCounts::new(by_id.clone());
        let p = |lo, hi, bits| HitKey::Ports(PortSpec { lo, hi, bits });
        assert_eq!(h.of(&HitKey::Id(7)), 5);
        assert_eq!(h.of(&HitKey::Id(8)), 0);
        for (lo, hi, bits) in [
            (80, 80, PORT_TCP),
            (80, 80, PORT_TCP | PORT_UDP),
            (0, 65535, PORT_TCP),
            (23, 79, PORT_TCP),
            (81, 65535, PORT_UDP),
            (0, 65535, PORT_TCP | PORT_UDP),
        ] {
            let spec = PortSpec { lo, hi, bits };
            assert_eq!(h.of(&p(lo, hi, bits)), port_hits(&spec, &by_id), "{spec:?}");
        }
    }
}

#[cfg(test)]
mod list_bit_tests {
    use super::*;

    #[test]
    fn a_sets_list_bits_are_exactly_its_non_empty_lists() {
        let mut set = RuleSet::default();
        assert_eq!(lists_of(&set), 0);
        set.allow.insert("10.0.0.0/8".parse().expect("cidr"));
        set.block.insert("2001:db8::/32".parse().expect("cidr"));
        set.limits.insert(
            "192.0.2.0/24".parse().expect("cidr"),
            LimitSpec::new(10, None, crate::firewall::rules::Per::Source, false).expect("limit"),
        );
        assert_eq!(lists_of(&set), HAS_ALLOW4 | HAS_BLOCK6 | HAS_LIMIT4);
        set.ports[22] = PORT_TCP;
        set.limits.insert(
            "::/0".parse().expect("cidr"),
            LimitSpec::new(10, None, crate::firewall::rules::Per::Prefix, true).expect("limit"),
        );
        set.block.insert("192.0.2.1/32".parse().expect("cidr"));
        assert_eq!(
            lists_of(&set),
            HAS_ALLOW4 | HAS_BLOCK4 | HAS_BLOCK6 | HAS_LIMIT4 | HAS_LIMIT6 | HAS_PORTS
        );
        // No list bit is the slot bit.
        assert_eq!(lists_of(&set) & SLOT_BIT, 0);
    }
}
