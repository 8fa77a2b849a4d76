//! Firewall rules as text: parsing and validating CIDRs, port specs and
//! rule files, and printing a rule set back in the same words. Pure
//! functions, unit-tested without a kernel.
//!
//! Policies:
//! - A bare address is a single host: `/32` for IPv4, `/128` for IPv6.
//! - A CIDR with host bits set (`10.0.0.1/8`) is **rejected**, naming the
//!   network it would have meant: a typo should not silently block (or
//!   allow) more than was written.
//! - A port spec is `N`, `N-M` (N <= M), optionally followed by `/tcp` or
//!   `/udp`; without a protocol it means both.
//! - A rate limit is `limit CIDR... --pps N [--burst M] [--per
//!   source|prefix] [--syn]`: N packets per second after a burst of M
//!   (default: N, one second's worth), per source address (the default) or
//!   for the whole prefix. One limit per prefix: a new one replaces it.
//! - A rule file has one rule per line, in the words of the CLI (`block
//!   CIDR...`, `allow CIDR...`, `block --port SPEC`, `limit CIDR... --pps
//!   N ...`), `#` starts a comment,
//!   blank lines are ignored. The first error names the file and line, and
//!   nothing is applied.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    str::FromStr,
};

use kscope_common::fw::{
    LIMIT_MAX_PPS, LIMIT_PER_PREFIX, LIMIT_SYN, MAX_LIMIT_RULES, MAX_RULES_PER_FAMILY, N_PORTS,
    PORT_TCP, PORT_UDP,
};
use thiserror::Error;

/// Largest rule file `fw load` and the daemon read: 128 MiB. A full rule
/// set, 1,048,576 rules per family written as `fw save` does in their
/// longest form (`allow 255.255.255.255/32`, 25 bytes a line, and an IPv6
/// address with eight 4-digit groups, 50 bytes) plus every port on its own
/// line, is under 80 MB, so this leaves room for comments and spacing.
/// The cap keeps a hostile path (`/dev/zero`, an endless FIFO) from
/// exhausting memory.
pub const MAX_RULE_FILE_BYTES: u64 = 128 << 20;

// The cap must hold the largest file `fw save` can write.
const _: () = assert!(
    MAX_RULE_FILE_BYTES
        > MAX_RULES_PER_FAMILY as u64 * (25 + 50)
            + 65_536 * "block --port 65535/tcp\n".len() as u64
);

/// Errors in rule text.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    /// Not an address, or a prefix length out of range.
    #[error("invalid CIDR {input:?}: {reason}")]
    BadCidr { input: String, reason: String },
    /// The address has bits set beyond the prefix length.
    #[error(
        "{input} has host bits set; the network is {network} (kscope rejects it rather than guess)"
    )]
    HostBits { input: String, network: String },
    /// Not a port spec.
    #[error("invalid port {input:?}: {reason}")]
    BadPort { input: String, reason: String },
    /// A rule-file line that is not a rule.
    #[error("{0}")]
    BadLine(String),
    /// An error on a line of a rule file. (The inner error is part of the
    /// message, not a `source`, so a cause chain prints it once.)
    #[error("{file}:{line}: {error}")]
    AtLine {
        file: String,
        line: usize,
        error: Box<RuleError>,
    },
    /// An error about a rule file as a whole.
    #[error("{file}: {error}")]
    InFile { file: String, error: Box<RuleError> },
    /// The rule file could not be read.
    #[error("cannot read rule file {file}: {reason}")]
    Read { file: String, reason: String },
    /// More rules of one family than kscope holds.
    #[error("too many IPv{family} {what}: {count}, the limit is {limit} per family")]
    TooMany {
        family: u8,
        what: &'static str,
        count: usize,
        limit: u32,
    },
    /// A rate or burst out of range.
    #[error("invalid limit: {0}")]
    BadLimit(String),
}

impl RuleError {
    /// The message without the input it is about, for callers that show the
    /// input themselves (clap's "invalid value 'X' for ...").
    pub(crate) fn reason(&self) -> String {
        match self {
            RuleError::BadCidr { reason, .. }
            | RuleError::BadPort { reason, .. }
            | RuleError::BadLimit(reason) => reason.clone(),
            RuleError::HostBits { network, .. } => {
                format!(
                    "host bits are set; the network is {network} (kscope rejects it rather than guess)"
                )
            }
            e => e.to_string(),
        }
    }
}

/// A source prefix: IPv4 or IPv6 address with a prefix length, host bits
/// clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// Maximum prefix length of the address family.
    fn max_len(addr: IpAddr) -> u8 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    pub(crate) fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The address bytes (4 or 16).
    pub(crate) fn octets(&self) -> Vec<u8> {
        match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// True when `ip` (of the same family) lies inside this prefix.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask_v4(a, self.len) == n,
            (IpAddr::V6(n), IpAddr::V6(a)) => mask_v6(a, self.len) == n,
            _ => false,
        }
    }

    /// Builds a prefix from raw parts, clearing host bits (for keys read
    /// back from the kernel, which stores them clear anyway).
    pub fn from_octets(octets: &[u8], len: u8) -> Option<Cidr> {
        let addr = match octets.len() {
            4 => IpAddr::V4(mask_v4(
                Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]),
                len,
            )),
            16 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(octets);
                IpAddr::V6(mask_v6(Ipv6Addr::from(b), len))
            }
            _ => return None,
        };
        (len <= Cidr::max_len(addr)).then_some(Cidr { addr, len })
    }
}

fn mask_v4(a: Ipv4Addr, len: u8) -> Ipv4Addr {
    let bits = u32::from(a);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(a: Ipv6Addr, len: u8) -> Ipv6Addr {
    let bits = u128::from(a);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    Ipv6Addr::from(bits & mask)
}

impl FromStr for Cidr {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| RuleError::BadCidr {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 address"))?;
        let max = Cidr::max_len(addr);
        let len = match len {
            None => max,
            Some(l) => {
                let ok = !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit());
                let n: u16 = if ok {
                    l.parse().unwrap_or(u16::MAX)
                } else {
                    u16::MAX
                };
                if n > u16::from(max) {
                    return Err(bad(&format!("the prefix length must be 0 to {max}")));
                }
                n as u8
            }
        };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(mask_v4(a, len)),
            IpAddr::V6(a) => IpAddr::V6(mask_v6(a, len)),
        };
        if network != addr {
            return Err(RuleError::HostBits {
                input: s.to_owned(),
                network: format!("{network}/{len}"),
            });
        }
        Ok(Cidr { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Destination ports `lo..=hi` for TCP and/or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub lo: u16,
    pub hi: u16,
    /// [`PORT_TCP`] and/or [`PORT_UDP`].
    pub bits: u32,
}

impl FromStr for PortSpec {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| RuleError::BadPort {
            input: s.to_owned(),
            reason,
        };
        let (range, bits) = match s.split_once('/') {
            None => (s, PORT_TCP | PORT_UDP),
            Some((r, "tcp")) => (r, PORT_TCP),
            Some((r, "udp")) => (r, PORT_UDP),
            Some((_, p)) => {
                return Err(bad(format!("unknown protocol {p:?}; use tcp or udp")));
            }
        };
        let port = |p: &str| -> Result<u16, RuleError> {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("ports are numbers from 0 to 65535".into()));
            }
            p.parse::<u32>()
                .ok()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| bad("ports are numbers from 0 to 65535".into()))
        };
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(range)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(bad(format!("the range {lo}-{hi} is empty")));
        }
        Ok(PortSpec { lo, hi, bits })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)?;
        } else {
            write!(f, "{}-{}", self.lo, self.hi)?;
        }
        match self.bits {
            PORT_TCP => f.write_str("/tcp"),
            PORT_UDP => f.write_str("/udp"),
            _ => Ok(()),
        }
    }
}

/// Which list a source rule is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SrcList {
    Allow,
    Block,
}

impl SrcList {
    pub(crate) fn verb(self) -> &'static str {
        match self {
            SrcList::Allow => "allow",
            SrcList::Block => "block",
        }
    }
}

/// Who shares a rate limit's bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Per {
    /// Each source address inside the prefix has its own bucket.
    Source,
    /// The whole prefix shares one bucket.
    Prefix,
}

impl Per {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Per::Source => "source",
            Per::Prefix => "prefix",
        }
    }
}

impl FromStr for Per {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "source" => Ok(Per::Source),
            "prefix" => Ok(Per::Prefix),
            _ => Err(RuleError::BadLimit(format!(
                "--per takes source or prefix, not {s:?}"
            ))),
        }
    }
}

/// Longest burst, in seconds of the rate: `burst / pps` at most an hour,
/// which keeps the kernel's bucket arithmetic far from overflow.
pub const MAX_BURST_SECONDS: u32 = 3600;

/// A rate limit: `pps` packets per second after a burst of `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LimitSpec {
    pub pps: u32,
    pub burst: u32,
    pub per: Per,
    /// Police only TCP SYNs without ACK.
    pub syn: bool,
}

impl LimitSpec {
    /// Checks the ranges: 1 to [`LIMIT_MAX_PPS`] packets per second, a
    /// burst of at least 1 and at most [`MAX_BURST_SECONDS`] of the rate.
    pub fn new(pps: u64, burst: Option<u64>, per: Per, syn: bool) -> Result<Self, RuleError> {
        if pps == 0 || pps > u64::from(LIMIT_MAX_PPS) {
            return Err(RuleError::BadLimit(format!(
                "--pps must be 1 to {LIMIT_MAX_PPS}, not {pps}"
            )));
        }
        let burst = burst.unwrap_or(pps);
        let max_burst = pps * u64::from(MAX_BURST_SECONDS);
        if burst == 0 || burst > max_burst || burst > u64::from(u32::MAX) {
            return Err(RuleError::BadLimit(format!(
                "--burst must be 1 to {} ({MAX_BURST_SECONDS} s of {pps} pps), not {burst}",
                max_burst.min(u64::from(u32::MAX))
            )));
        }
        Ok(LimitSpec {
            pps: pps as u32,
            burst: burst as u32,
            per,
            syn,
        })
    }

    /// The kernel's form of the limit.
    pub fn kernel(&self) -> kscope_common::fw::Limit {
        let mut flags = 0;
        if self.per == Per::Prefix {
            flags |= LIMIT_PER_PREFIX;
        }
        if self.syn {
            flags |= LIMIT_SYN;
        }
        kscope_common::fw::Limit::new(self.pps, self.burst, flags)
    }

    /// Back from the kernel's form.
    pub fn from_kernel(l: &kscope_common::fw::Limit) -> Self {
        LimitSpec {
            pps: l.pps,
            burst: l.burst,
            per: if l.flags & LIMIT_PER_PREFIX != 0 {
                Per::Prefix
            } else {
                Per::Source
            },
            syn: l.flags & LIMIT_SYN != 0,
        }
    }
}

impl fmt::Display for LimitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--pps {} --burst {} --per {}",
            self.pps,
            self.burst,
            self.per.name()
        )?;
        if self.syn {
            f.write_str(" --syn")?;
        }
        Ok(())
    }
}

/// One rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    Src(SrcList, Cidr),
    Port(PortSpec),
    /// A rate limit on the sources in a prefix. As an edit's removal
    /// (`fw unlimit`) only the prefix counts.
    Limit(Cidr, LimitSpec),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Src(l, c) => write!(f, "{} {c}", l.verb()),
            Rule::Port(p) => write!(f, "block --port {p}"),
            Rule::Limit(c, l) => write!(f, "limit {c} {l}"),
        }
    }
}

/// A whole rule set, as `fw load` takes it and `fw save` prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub allow: BTreeSet<Cidr>,
    pub block: BTreeSet<Cidr>,
    /// Port bits ([`PORT_TCP`], [`PORT_UDP`]) for every port 0-65535.
    pub ports: Vec<u32>,
    /// Rate limits by prefix.
    pub limits: BTreeMap<Cidr, LimitSpec>,
}

impl Default for RuleSet {
    fn default() -> Self {
        Self {
            allow: BTreeSet::new(),
            block: BTreeSet::new(),
            ports: vec![0; N_PORTS as usize],
            limits: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl RuleSet {
    /// Adds a rule (idempotent).
    pub fn add(&mut self, rule: Rule) {
        match rule {
            Rule::Src(SrcList::Allow, c) => {
                self.allow.insert(c);
            }
            Rule::Src(SrcList::Block, c) => {
                self.block.insert(c);
            }
            Rule::Port(p) => {
                for port in p.lo..=p.hi {
                    self.ports[usize::from(port)] |= p.bits;
                }
            }
            Rule::Limit(c, l) => {
                self.limits.insert(c, l);
            }
        }
    }

    /// Source rules of one family (IPv4 when `v4`), allow and block.
    pub(crate) fn count(&self, v4: bool) -> usize {
        self.allow
            .iter()
            .chain(&self.block)
            .filter(|c| c.is_v4() == v4)
            .count()
    }

    /// Rate limits of one family (IPv4 when `v4`).
    pub(crate) fn count_limits(&self, v4: bool) -> usize {
        self.limits.keys().filter(|c| c.is_v4() == v4).count()
    }

    /// Fails if either family holds more than kscope's limit.
    pub(crate) fn check_capacity(&self) -> Result<(), RuleError> {
        for (v4, family) in [(true, 4), (false, 6)] {
            for (what, count, limit) in [
                ("rules", self.count(v4), MAX_RULES_PER_FAMILY),
                ("rate limits", self.count_limits(v4), MAX_LIMIT_RULES),
            ] {
                if count > limit as usize {
                    return Err(RuleError::TooMany {
                        family,
                        what,
                        count,
                        limit,
                    });
                }
            }
        }
        Ok(())
    }

    /// The port bits as maximal ranges of equal bits.
    fn port_ranges(&self) -> Vec<PortSpec> {
        port_ranges(&self.ports)
    }

    /// Every rule in the order the firewall applies them: allow, block,
    /// limit, then ports; each sorted.
    pub(crate) fn rules(&self) -> Vec<Rule> {
        let mut v: Vec<Rule> = self
            .allow
            .iter()
            .map(|&c| Rule::Src(SrcList::Allow, c))
            .collect();
        v.extend(self.block.iter().map(|&c| Rule::Src(SrcList::Block, c)));
        v.extend(self.limits.iter().map(|(&c, &l)| Rule::Limit(c, l)));
        v.extend(self.port_ranges().into_iter().map(Rule::Port));
        v
    }

    /// The set in rule-file format, one rule per line.
    pub(crate) fn to_text(&self) -> String {
        self.rules().iter().map(|r| format!("{r}\n")).collect()
    }

    /// Parses a rule file's text. `name` is used in error messages.
    pub fn parse(name: &str, text: &str) -> Result<RuleSet, RuleError> {
        let mut set = RuleSet::default();
        for (i, line) in text.lines().enumerate() {
            let at = |e: RuleError| RuleError::AtLine {
                file: name.to_owned(),
                line: i + 1,
                error: Box::new(e),
            };
            let line = line.split('#').next().unwrap_or("");
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some((&verb, args)) = words.split_first() else {
                continue;
            };
            let list = match verb {
                "block" => SrcList::Block,
                "allow" => SrcList::Allow,
                "limit" => {
                    for rule in parse_limit_args(args).map_err(at)? {
                        set.add(rule);
                    }
                    continue;
                }
                "unblock" | "disallow" | "unlimit" => {
                    return Err(at(RuleError::BadLine(format!(
                        "{verb:?} does not belong in a rule file, which lists the rules to keep"
                    ))));
                }
                _ => {
                    return Err(at(RuleError::BadLine(format!(
                        "unknown verb {verb:?}; expected block, allow or limit"
                    ))));
                }
            };
            for rule in parse_args(list, args).map_err(at)? {
                set.add(rule);
            }
        }
        set.check_capacity().map_err(|e| RuleError::InFile {
            file: name.to_owned(),
            error: Box::new(e),
        })?;
        Ok(set)
    }

    /// Reads and parses a rule file of at most [`MAX_RULE_FILE_BYTES`].
    pub(crate) fn read(path: &Path) -> Result<RuleSet, RuleError> {
        let name = path.display().to_string();
        let bytes =
            crate::sys::read_capped(path, MAX_RULE_FILE_BYTES).map_err(|e| RuleError::Read {
                file: name.clone(),
                reason: e.to_string(),
            })?;
        let text = String::from_utf8(bytes).map_err(|e| RuleError::AtLine {
            file: name.clone(),
            line: 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            error: Box::new(RuleError::BadLine("not UTF-8 text".into())),
        })?;
        RuleSet::parse(&name, &text)
    }
}

/// Maximal ranges of equal non-zero bits in a 65536-entry port table.
fn port_ranges(ports: &[u32]) -> Vec<PortSpec> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < ports.len() {
        let bits = ports[i] & (PORT_TCP | PORT_UDP);
        if bits == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i + 1 < ports.len() && ports[i + 1] & (PORT_TCP | PORT_UDP) == bits {
            i += 1;
        }
        out.push(PortSpec {
            lo: start as u16,
            hi: i as u16,
            bits,
        });
        i += 1;
    }
    out
}

/// Parses the arguments of one `block`/`allow` rule (CLI words or a file
/// line): CIDRs, and for block also `--port SPEC` / `--port=SPEC`.
fn parse_args(list: SrcList, args: &[&str]) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::new();
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        let spec =
            if a == "--port" {
                Some(*it.next().ok_or_else(|| {
                    RuleError::BadLine("--port needs a value such as 53/udp".into())
                })?)
            } else {
                a.strip_prefix("--port=")
            };
        match spec {
            Some(s) if list == SrcList::Block => rules.push(Rule::Port(s.parse()?)),
            Some(_) => {
                return Err(RuleError::BadLine(
                    "port rules block; there is no allow --port".into(),
                ));
            }
            None if a.starts_with('-') => {
                return Err(RuleError::BadLine(format!("unknown option {a:?}")));
            }
            None => rules.push(Rule::Src(list, a.parse()?)),
        }
    }
    if rules.is_empty() {
        return Err(RuleError::BadLine(format!(
            "{} needs at least one CIDR{}",
            list.verb(),
            if list == SrcList::Block {
                " or --port"
            } else {
                ""
            }
        )));
    }
    Ok(rules)
}

/// Parses the arguments of one `limit` rule-file line: CIDRs and the
/// options of `kscope fw limit`.
fn parse_limit_args(args: &[&str]) -> Result<Vec<Rule>, RuleError> {
    let mut cidrs = Vec::new();
    let (mut pps, mut burst, mut per, mut syn) = (None, None, Per::Source, false);
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (a, None),
        };
        let mut value = |what: &str| -> Result<&str, RuleError> {
            match inline {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .copied()
                    .ok_or_else(|| RuleError::BadLine(format!("{name} needs {what}"))),
            }
        };
        let number = |v: &str, opt: &str| -> Result<u64, RuleError> {
            v.parse::<u64>()
                .map_err(|_| RuleError::BadLimit(format!("{opt} takes a whole number, not {v:?}")))
        };
        match name {
            "--pps" => pps = Some(number(value("a rate")?, "--pps")?),
            "--burst" => burst = Some(number(value("a packet count")?, "--burst")?),
            "--per" => per = value("source or prefix")?.parse()?,
            "--syn" if inline.is_none() => syn = true,
            _ if a.starts_with('-') => {
                return Err(RuleError::BadLine(format!("unknown option {a:?}")));
            }
            _ => cidrs.push(a.parse::<Cidr>()?),
        }
    }
    if cidrs.is_empty() {
        return Err(RuleError::BadLine("limit needs at least one CIDR".into()));
    }
    let pps = pps.ok_or_else(|| RuleError::BadLine("limit needs --pps".into()))?;
    let spec = LimitSpec::new(pps, burst, per, syn)?;
    Ok(cidrs.into_iter().map(|c| Rule::Limit(c, spec)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn bare_addresses_are_single_hosts() {
        assert_eq!(cidr("192.0.2.7").len, 32);
        assert_eq!(cidr("2001:db8::1").len, 128);
        assert_eq!(cidr("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("0.0.0.0/0").len, 0);
        assert_eq!(cidr("::/0").len, 0);
    }

    #[test]
    fn malformed_cidrs_are_rejected() {
        for bad in [
            "10.0.0.0/33",
            "::1/129",
            "1.2.3",
            "1.2.3.4/",
            "1.2.3.4/-1",
            "1.2.3.4/+8",
            "1.2.3.4/8/8",
            "",
            "/8",
            "10.0.0.256",
            "2001:db8::g",
            "10.0.0.0/0x8",
            "10.0.0.0 /8",
            "1.2.3.4/0008",
        ] {
            let e = bad.parse::<Cidr>().expect_err(bad);
            assert!(matches!(e, RuleError::BadCidr { .. }), "{bad}: {e}");
        }
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>().expect_err("33").to_string(),
            "invalid CIDR \"10.0.0.0/33\": the prefix length must be 0 to 32"
        );
        assert_eq!(
            "::1/129".parse::<Cidr>().expect_err("129").to_string(),
            "invalid CIDR \"::1/129\": the prefix length must be 0 to 128"
        );
    }

    #[test]
    fn host_bits_are_rejected_naming_the_network() {
        let e = "10.0.0.1/8".parse::<Cidr>().expect_err("host bits");
        assert_eq!(
            e,
            RuleError::HostBits {
                input: "10.0.0.1/8".into(),
                network: "10.0.0.0/8".into()
            }
        );
        let e = "2001:db8::1/32".parse::<Cidr>().expect_err("host bits");
        assert!(
            e.to_string().contains("the network is 2001:db8::/32"),
            "{e}"
        );
        assert!("198.51.100.128/25".parse::<Cidr>().is_ok());
        assert!("198.51.100.128/24".parse::<Cidr>().is_err());
    }

    #[test]
    fn contains_follows_the_prefix() {
        let n = cidr("198.51.100.0/24");
        assert!(n.contains("198.51.100.255".parse().expect("ip")));
        assert!(!n.contains("198.51.101.0".parse().expect("ip")));
        assert!(!n.contains("2001:db8::1".parse().expect("ip")));
        let n = cidr("2001:db8:8000::/33");
        assert!(n.contains("2001:db8:ffff::1".parse().expect("ip")));
        assert!(!n.contains("2001:db8:7fff::1".parse().expect("ip")));
        assert!(cidr("::/0").contains("2001:db8::1".parse().expect("ip")));
    }

    #[test]
    fn port_specs_parse_ranges_and_protocols() {
        let p = |s: &str| s.parse::<PortSpec>().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(
            p("53/udp"),
            PortSpec {
                lo: 53,
                hi: 53,
                bits: PORT_UDP
            }
        );
        assert_eq!(
            p("0-65535"),
            PortSpec {
                lo: 0,
                hi: 65535,
                bits: PORT_TCP | PORT_UDP
            }
        );
        assert_eq!(
            p("80-90/tcp"),
            PortSpec {
                lo: 80,
                hi: 90,
                bits: PORT_TCP
            }
        );
        for bad in [
            "65536", "-1", "1-", "90-80", "53/sctp", "53/", "x", "", "1-2-3", "99999999",
        ] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad} accepted");
        }
        let e = "53/sctp".parse::<PortSpec>().expect_err("sctp").to_string();
        assert!(e.contains("unknown protocol \"sctp\""), "{e}");
        assert_eq!(p("22/tcp").to_string(), "22/tcp");
        assert_eq!(p("1000-2000").to_string(), "1000-2000");
    }

    #[test]
    fn rule_files_parse_with_comments_and_save_round_trips() {
        let text = "# office\nallow 2001:db8::/32  # trusted\n\nblock 10.0.0.0/8 192.0.2.1\nblock --port 53/udp\nblock --port=22/tcp --port 23\n";
        let set = RuleSet::parse("r.rules", text).expect("parses");
        assert_eq!(set.allow.len(), 1);
        assert_eq!(set.block.len(), 2);
        assert_eq!(set.ports[53], PORT_UDP);
        assert_eq!(set.ports[22], PORT_TCP);
        assert_eq!(set.ports[23], PORT_TCP | PORT_UDP);
        assert_eq!(set.ports[24], 0);
        let saved = set.to_text();
        assert_eq!(
            saved,
            "allow 2001:db8::/32\nblock 10.0.0.0/8\nblock 192.0.2.1/32\nblock --port 22/tcp\nblock --port 23\nblock --port 53/udp\n"
        );
        assert_eq!(RuleSet::parse("again", &saved).expect("reparses"), set);
    }

    #[test]
    fn limits_parse_in_rule_files_and_save_round_trips() {
        let text = "limit 198.51.100.0/24 2001:db8::/32 --pps 100\nlimit 203.0.113.0/24 --pps=5 --burst=20 --per=prefix --syn\nblock 10.0.0.0/8\n";
        let set = RuleSet::parse("l.rules", text).expect("parses");
        assert_eq!(set.limits.len(), 3);
        assert_eq!(
            set.limits[&cidr("203.0.113.0/24")],
            LimitSpec {
                pps: 5,
                burst: 20,
                per: Per::Prefix,
                syn: true
            }
        );
        let saved = set.to_text();
        assert_eq!(
            saved,
            "block 10.0.0.0/8\nlimit 198.51.100.0/24 --pps 100 --burst 100 --per source\nlimit 203.0.113.0/24 --pps 5 --burst 20 --per prefix --syn\nlimit 2001:db8::/32 --pps 100 --burst 100 --per source\n"
        );
        assert_eq!(RuleSet::parse("again", &saved).expect("reparses"), set);
        // A later limit on the same prefix replaces the earlier one.
        let set = RuleSet::parse("l", "limit 10.0.0.0/8 --pps 1\nlimit 10.0.0.0/8 --pps 2\n")
            .expect("parses");
        assert_eq!(set.limits[&cidr("10.0.0.0/8")].pps, 2);
    }

    #[test]
    fn kernel_limits_never_exceed_the_rate_and_round_trip() {
        use kscope_common::fw::LIMIT_CLOCK_SCALE;
        for pps in [1u32, 3, 7, 1_000, 999_983, LIMIT_MAX_PPS] {
            let spec = LimitSpec::new(u64::from(pps), Some(4), Per::Source, false).expect("valid");
            let k = spec.kernel();
            // cost * pps covers a whole second, and no more than one unit
            // per packet beyond it.
            let second = 1_000_000_000 * LIMIT_CLOCK_SCALE;
            assert!(k.cost * u64::from(pps) >= second, "{pps} pps");
            assert!((k.cost - 1) * u64::from(pps) < second, "{pps} pps");
            assert_eq!(k.tolerance, 4 * k.cost);
            assert_eq!(LimitSpec::from_kernel(&k), spec);
        }
        let longest = LimitSpec::new(1, Some(u64::from(MAX_BURST_SECONDS)), Per::Prefix, true)
            .expect("an hour of 1 pps");
        assert_eq!(LimitSpec::from_kernel(&longest.kernel()), longest);
        for (pps, burst) in [
            (0, None),
            (u64::from(LIMIT_MAX_PPS) + 1, None),
            (10, Some(0)),
            (10, Some(36_001)),
        ] {
            assert!(
                LimitSpec::new(pps, burst, Per::Source, false).is_err(),
                "{pps} {burst:?}"
            );
        }
    }

    #[test]
    fn rule_file_errors_name_file_and_line() {
        let cases = [
            ("block 10.0.0.0/8\nblock 10.0.0.0/33\n", 2, "prefix length"),
            ("\n\nallow --port 22\n", 3, "no allow --port"),
            ("drop 10.0.0.0/8\n", 1, "unknown verb"),
            ("unblock 10.0.0.0/8\n", 1, "does not belong"),
            ("block\n", 1, "at least one"),
            ("block --port 70000\n", 1, "0 to 65535"),
            ("block --port 53/icmp\n", 1, "unknown protocol"),
            ("block 10.0.0.1/8\n", 1, "host bits"),
            ("block --bogus 1\n", 1, "unknown option"),
            ("limit 10.0.0.0/8\n", 1, "needs --pps"),
            ("limit --pps 5\n", 1, "at least one CIDR"),
            ("limit 10.0.0.0/8 --pps five\n", 1, "whole number"),
            (
                "limit 10.0.0.0/8 --pps 5 --per host\n",
                1,
                "source or prefix",
            ),
            ("limit 10.0.0.0/8 --pps 5 --burst\n", 1, "--burst needs"),
            ("unlimit 10.0.0.0/8\n", 1, "does not belong"),
        ];
        for (text, line, needle) in cases {
            let e = RuleSet::parse("set.rules", text).expect_err(text);
            let RuleError::AtLine { file, line: l, .. } = &e else {
                panic!("{text:?}: {e}");
            };
            assert_eq!((file.as_str(), *l), ("set.rules", line), "{e}");
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("set.rules:{line}: ")), "{msg}");
            assert!(msg.contains(needle), "{text:?}: {msg}");
        }
    }

    #[test]
    fn port_ranges_merge_equal_neighbours_only() {
        let mut set = RuleSet::default();
        set.add(Rule::Port("10-20/tcp".parse().expect("spec")));
        set.add(Rule::Port("15-25/udp".parse().expect("spec")));
        set.add(Rule::Port("65535".parse().expect("spec")));
        let r: Vec<String> = set.port_ranges().iter().map(ToString::to_string).collect();
        assert_eq!(r, ["10-14/tcp", "15-20", "21-25/udp", "65535"]);
    }

    #[test]
    fn capacity_is_checked_per_family() {
        let mut set = RuleSet::default();
        for i in 0..=MAX_RULES_PER_FAMILY {
            set.block.insert(Cidr {
                addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                len: 32,
            });
        }
        let e = set.check_capacity().expect_err("over the limit");
        assert_eq!(
            e.to_string(),
            format!(
                "too many IPv4 rules: {}, the limit is {} per family",
                MAX_RULES_PER_FAMILY + 1,
                MAX_RULES_PER_FAMILY
            )
        );
    }
}
