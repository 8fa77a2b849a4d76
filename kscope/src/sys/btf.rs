//! Just enough of a BTF reader to find struct member offsets in the running
//! kernel's type information (/sys/kernel/btf/vmlinux), for kernel programs
//! that read kernel structs without CO-RE: the loader looks the offsets up
//! here and hands them over as load-time globals.
//!
//! It streams: the caller names the structs it wants up front, and the
//! reader keeps only their members and those of the anonymous structs and
//! unions C reaches through, a few hundred KiB at most, never the whole
//! file (5 MiB on 6.18) or a table of every type. One pass over the string
//! section finds the wanted names, one over the type section their
//! members, and the members' names are then read where they are: about
//! as many read(2) calls as reading the file once, and some 5 ms for
//! task_struct on 6.18 (against 13 MiB and 10 ms for parsing it whole).
//!
//! Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom},
};

use thiserror::Error;

/// Errors from the BTF reader.
#[derive(Debug, Error)]
pub(crate) enum BtfError {
    #[error("cannot read kernel BTF at {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// Not in the BTF, or not among the structs the reader was asked for.
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member} in the kernel's BTF")]
    NoMember { strukt: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// Where the running kernel's BTF is.
const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// How many rounds of looking up named structs that are members without a
/// name (`struct a { struct b; }`, -fms-extensions) the reader makes.
const MAX_NESTING: usize = 8;

/// A struct or union member: its name (empty when anonymous), type id and
/// bit offset.
#[derive(Clone, Debug)]
struct Member {
    name: Vec<u8>,
    type_id: u32,
    bits: u32,
}

/// A struct's or union's members as read: (name offset, type id, bit offset).
type RawMembers = Vec<(u32, u32, u32)>;

/// The layout of the structs a reader was asked for.
pub(crate) struct Btf {
    /// Wanted structs found: their type ids, by name.
    structs: HashMap<String, u32>,
    /// The members of those, and of the structs and unions they reach
    /// through anonymous members, by type id.
    types: HashMap<u32, Vec<Member>>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// A section's place in the file.
#[derive(Clone, Copy)]
struct Section {
    start: u64,
    len: u64,
}

fn io_err(e: io::Error) -> BtfError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        BtfError::Malformed("truncated")
    } else {
        BtfError::Read {
            path: VMLINUX.into(),
            source: e,
        }
    }
}

/// Reads the header: the type and string sections.
fn header(r: &mut impl Read) -> Result<(Section, Section), BtfError> {
    let mut h = [0u8; 24];
    r.read_exact(&mut h).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BtfError::Malformed("short header"),
        _ => io_err(e),
    })?;
    if h[..2] != 0xeb9fu16.to_le_bytes() {
        return Err(BtfError::Malformed("bad magic"));
    }
    let hdr_len = u64::from(u32_at(&h, 4));
    let field = |i: usize| u64::from(u32_at(&h, 8 + 4 * i));
    let section = |off, len| Section {
        start: hdr_len + off,
        len,
    };
    Ok((section(field(0), field(1)), section(field(2), field(3))))
}

/// Calls `each(offset, string)` for every NUL-terminated string of the
/// string section, without its NUL. Strings are handed over in place from
/// the reader's buffer; only one that straddles two reads is copied.
fn for_each_string(
    r: &mut (impl BufRead + Seek),
    strings: Section,
    mut each: impl FnMut(u32, &[u8]),
) -> Result<(), BtfError> {
    r.seek(SeekFrom::Start(strings.start)).map_err(io_err)?;
    let mut section = r.take(strings.len);
    let (mut off, mut partial) = (0u32, Vec::new());
    loop {
        let buf = section.fill_buf().map_err(io_err)?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        let mut rest = buf;
        while let Some(end) = rest.iter().position(|&b| b == 0) {
            let len = if partial.is_empty() {
                each(off, &rest[..end]);
                end
            } else {
                partial.extend_from_slice(&rest[..end]);
                each(off, &partial);
                std::mem::take(&mut partial).len()
            };
            off = off.saturating_add(len as u32 + 1);
            rest = &rest[end + 1..];
        }
        partial.extend_from_slice(rest);
        section.consume(n);
    }
    let read = u64::from(off) + partial.len() as u64;
    if read < strings.len {
        return Err(BtfError::Malformed("string section out of bounds"));
    }
    Ok(())
}

/// Reads the NUL-terminated strings at `offs` (sorted) of the string
/// section, skipping what lies between them.
fn strings_at(
    r: &mut (impl BufRead + Seek),
    strings: Section,
    offs: &[u32],
) -> Result<Vec<Vec<u8>>, BtfError> {
    let mut out = Vec::with_capacity(offs.len());
    let mut at = None;
    for &off in offs {
        if u64::from(off) >= strings.len {
            return Err(BtfError::Malformed("name out of the string section"));
        }
        let target = strings.start + u64::from(off);
        match at {
            // Forward within reach: skip in the buffer, no new read.
            Some(pos) if target >= pos => r.seek_relative((target - pos) as i64),
            _ => r.seek(SeekFrom::Start(target)).map(|_| ()),
        }
        .map_err(io_err)?;
        let mut s = Vec::new();
        let left = strings.len - u64::from(off);
        let n = r.take(left).read_until(0, &mut s).map_err(io_err)?;
        at = Some(target + n as u64);
        if s.pop() != Some(0) {
            return Err(BtfError::Malformed("unterminated string"));
        }
        out.push(s);
    }
    Ok(out)
}

/// Calls `f` with the next `n` bytes of `r`: in place when the reader's
/// buffer holds them, else copied through `scratch`.
fn with_next<T>(
    r: &mut impl BufRead,
    n: usize,
    scratch: &mut Vec<u8>,
    f: impl FnOnce(&[u8]) -> T,
) -> Result<T, BtfError> {
    let buf = r.fill_buf().map_err(io_err)?;
    if buf.len() >= n {
        let t = f(&buf[..n]);
        r.consume(n);
        return Ok(t);
    }
    scratch.resize(n, 0);
    r.read_exact(scratch).map_err(io_err)?;
    Ok(f(scratch))
}

/// What one pass over the type section kept.
#[derive(Default)]
struct Types {
    /// The members of the structs and unions `keep` chose, by id.
    kept: HashMap<u32, RawMembers>,
    /// Every type's kind, by id (0 for void).
    kinds: Vec<u8>,
}

/// Reads every type in order, calling `keep(id, kind, name_off)` for each
/// struct and union with members, and keeping the members of those it
/// chooses.
fn read_types(
    r: &mut (impl BufRead + Seek),
    types: Section,
    mut keep: impl FnMut(u32, u32, u32) -> bool,
) -> Result<Types, BtfError> {
    r.seek(SeekFrom::Start(types.start)).map_err(io_err)?;
    let mut section = r.take(types.len);
    let mut out = Types {
        kinds: vec![0],
        ..Types::default()
    };
    let mut scratch = Vec::new();
    let mut read = 0u64;
    while read < types.len {
        let id = out.kinds.len() as u32;
        let (name_off, info) = with_next(&mut section, 12, &mut scratch, |b| {
            (u32_at(b, 0), u32_at(b, 4))
        })?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 != 0;
        out.kinds.push(kind as u8);
        let extra = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
            _ => 0,
        };
        let wanted =
            matches!(kind, KIND_STRUCT | KIND_UNION) && vlen > 0 && keep(id, kind, name_off);
        with_next(&mut section, extra, &mut scratch, |b| {
            if !wanted {
                return;
            }
            let members = b
                .chunks_exact(12)
                .map(|m| {
                    // With kind_flag, the top 8 bits hold a bitfield size.
                    let bits = u32_at(m, 8);
                    let bits = if kind_flag { bits & 0x00ff_ffff } else { bits };
                    (u32_at(m, 0), u32_at(m, 4), bits)
                })
                .collect();
            out.kept.insert(id, members);
        })?;
        read += 12 + extra as u64;
    }
    Ok(out)
}

impl Btf {
    /// Reads the running kernel's BTF, keeping the layout of `structs`.
    ///
    /// # Errors
    /// No BTF (a kernel without CONFIG_DEBUG_INFO_BTF), or malformed BTF.
    pub(crate) fn from_sys_fs(structs: &[&str]) -> Result<Self, BtfError> {
        let f = fs::File::open(VMLINUX).map_err(|source| BtfError::Read {
            path: VMLINUX.into(),
            source,
        })?;
        Self::read(&mut BufReader::with_capacity(1 << 16, f), structs)
    }

    /// Parses little-endian BTF in memory, keeping the layout of `structs`.
    ///
    /// # Errors
    /// Malformed BTF.
    #[cfg(test)]
    pub(crate) fn parse(data: &[u8], structs: &[&str]) -> Result<Self, BtfError> {
        Self::read(&mut io::Cursor::new(data), structs)
    }

    /// Reads little-endian BTF from `r`, keeping the layout of `structs`:
    /// the first struct of each name that has members.
    ///
    /// # Errors
    /// Malformed BTF, or a read error.
    pub(crate) fn read(r: &mut (impl BufRead + Seek), structs: &[&str]) -> Result<Self, BtfError> {
        let (types, strings) = header(r)?;
        // Pass 1: where the wanted names are in the string section (a name
        // may also be the tail of a longer string).
        let mut wanted: HashMap<u32, usize> = HashMap::new();
        for_each_string(r, strings, |off, s| {
            for (i, name) in structs.iter().enumerate() {
                if let Some(head) = s.strip_suffix(name.as_bytes()) {
                    wanted.entry(off + head.len() as u32).or_insert(i);
                }
            }
        })?;
        // Pass 2: the wanted structs' members, and every anonymous struct
        // and union's (what C looks through for nested members).
        let mut found = vec![None; structs.len()];
        let Types { mut kept, kinds } =
            read_types(r, types, |id, kind, name_off| match wanted.get(&name_off) {
                Some(&i) if kind == KIND_STRUCT && found[i].is_none() => {
                    found[i] = Some(id);
                    true
                }
                _ => name_off == 0,
            })?;
        // A named struct or union standing as an anonymous member
        // (-fms-extensions) takes another pass per level; unnamed bitfields
        // are anonymous members too, of integer type, and need none.
        for _ in 0..MAX_NESTING {
            let mut missing = anonymous_types(&kept, &found).1;
            missing.retain(|&id| {
                let kind = kinds.get(id as usize).map_or(0, |&k| u32::from(k));
                matches!(kind, KIND_STRUCT | KIND_UNION)
            });
            if missing.is_empty() {
                break;
            }
            let more = read_types(r, types, |id, _, _| missing.contains(&id))?;
            if more.kept.is_empty() {
                break;
            }
            kept.extend(more.kept);
        }
        // Pass 3: the names of the members reachable from the wanted
        // structs, read where they are.
        let reachable = anonymous_types(&kept, &found).0;
        let mut offs: Vec<u32> = reachable
            .iter()
            .flat_map(|id| &kept[id])
            .map(|m| m.0)
            .filter(|&off| off != 0)
            .collect();
        offs.sort_unstable();
        offs.dedup();
        let names: HashMap<u32, Vec<u8>> = offs
            .iter()
            .copied()
            .zip(strings_at(r, strings, &offs)?)
            .collect();
        let members = |id: &u32| -> Vec<Member> {
            kept[id]
                .iter()
                .map(|&(name_off, type_id, bits)| Member {
                    name: names.get(&name_off).cloned().unwrap_or_default(),
                    type_id,
                    bits,
                })
                .collect()
        };
        let structs = structs
            .iter()
            .zip(&found)
            .filter_map(|(name, id)| Some((name.to_string(), (*id)?)))
            .collect();
        let types = reachable.iter().map(|id| (*id, members(id))).collect();
        Ok(Self { structs, types })
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous
    /// struct and union members as C does.
    ///
    /// # Errors
    /// [`BtfError::NoStruct`] when `strukt` is not in the BTF or was not
    /// asked for; [`BtfError::NoMember`].
    pub(crate) fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let members = self
            .structs
            .get(strukt)
            .and_then(|id| self.types.get(id))
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        self.find(members, member.as_bytes(), 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            })
    }

    fn find(&self, members: &[Member], member: &[u8], base_bits: u32) -> Option<u32> {
        for m in members {
            if m.name == member {
                return Some(base_bits + m.bits);
            }
            if m.name.is_empty()
                && let Some(inner) = self.types.get(&m.type_id)
                && let Some(found) = self.find(inner, member, base_bits + m.bits)
            {
                return Some(found);
            }
        }
        None
    }
}

/// The kept types reachable from the wanted structs through anonymous
/// members (the wanted ones included), and the type ids of reachable
/// anonymous members that were not kept.
fn anonymous_types(
    kept: &HashMap<u32, RawMembers>,
    found: &[Option<u32>],
) -> (Vec<u32>, HashSet<u32>) {
    let mut todo: Vec<u32> = found.iter().flatten().copied().collect();
    let (mut seen, mut reachable, mut missing) = (HashSet::new(), Vec::new(), HashSet::new());
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(members) = kept.get(&id) else {
            missing.insert(id);
            continue;
        };
        reachable.push(id);
        todo.extend(members.iter().filter(|m| m.0 == 0).map(|m| m.1));
    }
    (reachable, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BTF under construction: type records and a string section.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
            }
        }

        /// Adds `name` to the string section; returns its offset.
        fn s(&mut self, name: &str) -> u32 {
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn push(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        /// The file: header, then the sections in either order.
        fn bytes(&self, strings_first: bool) -> Vec<u8> {
            let (t, st) = (self.types.len() as u32, self.strings.len() as u32);
            let (type_off, str_off) = if strings_first { (st, 0) } else { (0, t) };
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9fu16.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [24u32, type_off, t, str_off, st] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            if strings_first {
                out.extend_from_slice(&self.strings);
                out.extend_from_slice(&self.types);
            } else {
                out.extend_from_slice(&self.types);
                out.extend_from_slice(&self.strings);
            }
            out
        }
    }

    /// BTF for:
    /// struct s { int a; union { int b; struct { char pad[8]; int c; }; }; };
    /// (the anonymous union at byte 8, c at 8 + 8 = 16 inside it).
    fn sample() -> Builder {
        let mut b = Builder::new();
        let (int, s, a, bb, c, pad, char_) = (
            b.s("int"),
            b.s("s"),
            b.s("a"),
            b.s("b"),
            b.s("c"),
            b.s("pad"),
            b.s("char"),
        );
        // 1: int
        b.push(&[int, KIND_INT << 24, 4, 32]);
        // 2: char
        b.push(&[char_, KIND_INT << 24, 1, 8]);
        // 3: char[8]
        b.push(&[0, KIND_ARRAY << 24, 0, 2, 1, 8]);
        // 4: anonymous struct { char pad[8]; int c; }
        b.push(&[0, (KIND_STRUCT << 24) | 2, 12, pad, 3, 0, c, 1, 64]);
        // 5: anonymous union { int b; struct 4; }
        b.push(&[0, (KIND_UNION << 24) | 2, 12, bb, 1, 0, 0, 4, 0]);
        // 6: struct s { int a; union 5 at byte 8 }
        b.push(&[s, (KIND_STRUCT << 24) | 2, 20, a, 1, 0, 0, 5, 64]);
        b
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_structs() {
        for strings_first in [false, true] {
            let btf = Btf::parse(&sample().bytes(strings_first), &["s"]).expect("parse");
            assert_eq!(btf.member_offset("s", "a").expect("a"), 0);
            assert_eq!(btf.member_offset("s", "b").expect("b"), 8);
            assert_eq!(btf.member_offset("s", "c").expect("c"), 16);
            assert!(matches!(
                btf.member_offset("s", "zz"),
                Err(BtfError::NoMember { .. })
            ));
            assert!(matches!(
                btf.member_offset("t", "a"),
                Err(BtfError::NoStruct(_))
            ));
        }
    }

    /// Reads that end anywhere: inside a record, a member list, a string.
    #[test]
    fn finds_members_whatever_the_read_sizes() {
        for strings_first in [false, true] {
            let data = sample().bytes(strings_first);
            for cap in 1..=40 {
                let mut r = BufReader::with_capacity(cap, io::Cursor::new(&data));
                let btf = Btf::read(&mut r, &["s"]).expect("parse");
                assert_eq!(btf.member_offset("s", "c").expect("c"), 16, "{cap}");
                assert_eq!(btf.member_offset("s", "a").expect("a"), 0, "{cap}");
            }
        }
    }

    #[test]
    fn structs_not_asked_for_are_not_kept() {
        let btf = Btf::parse(&sample().bytes(false), &["other"]).expect("parse");
        assert!(matches!(
            btf.member_offset("s", "a"),
            Err(BtfError::NoStruct(_))
        ));
        assert!(btf.types.is_empty(), "nothing reachable from nothing");
    }

    /// A forward declaration (no members) before the definition, a name
    /// stored as the tail of a longer string, a named struct as an
    /// anonymous member defined after its user (-fms-extensions), and an
    /// unnamed bitfield.
    #[test]
    fn finds_members_in_harder_layouts() {
        let mut b = Builder::new();
        let int = b.s("int");
        // "inner" is the tail of "not_inner"; "x" the tail of "max".
        let not_inner = b.s("not_inner");
        let inner = not_inner + 4;
        let max = b.s("max");
        let x = max + 2;
        let (outer, y) = (b.s("outer"), b.s("y"));
        // 1: int
        b.push(&[int, KIND_INT << 24, 4, 32]);
        // 2: struct outer; (forward declaration: no members)
        b.push(&[outer, KIND_STRUCT << 24, 0]);
        // 3: struct outer { int y; int :4 (unnamed bitfield); struct inner; }
        // with the inner struct at byte 8.
        b.push(&[
            outer,
            (KIND_STRUCT << 24) | 3,
            16,
            y,
            1,
            0,
            0,
            1,
            32,
            0,
            4,
            64,
        ]);
        // 4: struct inner { int max; int x; }, after its user.
        b.push(&[inner, (KIND_STRUCT << 24) | 2, 8, max, 1, 0, x, 1, 32]);
        let btf = Btf::parse(&b.bytes(false), &["outer", "inner"]).expect("parse");
        assert_eq!(btf.member_offset("outer", "y").expect("y"), 0);
        assert_eq!(btf.member_offset("outer", "max").expect("max"), 8);
        assert_eq!(btf.member_offset("outer", "x").expect("x"), 12);
        assert_eq!(btf.member_offset("inner", "x").expect("x"), 4);
        // The same, without asking for inner: found by the extra pass.
        let btf = Btf::parse(&b.bytes(true), &["outer"]).expect("parse");
        assert_eq!(btf.member_offset("outer", "x").expect("x"), 12);
    }

    use std::path::Path;

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"nope", &["s"]).is_err());
        let mut b = sample().bytes(false);
        b.truncate(30);
        assert!(Btf::parse(&b, &["s"]).is_err());
        // Sections that claim more than the file holds.
        let mut b = sample().bytes(false);
        b.truncate(b.len() - 3);
        assert!(matches!(
            Btf::parse(&b, &["s"]),
            Err(BtfError::Malformed(_))
        ));
    }

    /// The running kernel's struct sock_common starts with fields whose
    /// offsets are part of what every kernel since 2.6 lays out the same
    /// way (include/net/sock.h): a real-world check of the reader.
    #[test]
    fn reads_the_running_kernels_sock_common() {
        if !Path::new(VMLINUX).exists() {
            eprintln!("skipping: no {VMLINUX} on this kernel");
            return;
        }
        let btf = Btf::from_sys_fs(&["sock_common"]).expect("read the kernel's BTF");
        assert_eq!(
            btf.member_offset("sock_common", "skc_daddr")
                .expect("daddr"),
            0
        );
        assert_eq!(
            btf.member_offset("sock_common", "skc_rcv_saddr")
                .expect("saddr"),
            4
        );
        assert_eq!(
            btf.member_offset("sock_common", "skc_dport")
                .expect("dport"),
            12
        );
        assert_eq!(
            btf.member_offset("sock_common", "skc_num").expect("num"),
            14
        );
        let v6 = btf
            .member_offset("sock_common", "skc_v6_rcv_saddr")
            .expect("v6 saddr");
        assert!(v6 > 16 && v6.is_multiple_of(4), "{v6}");
    }
}
