//! Just enough of a BTF reader to find struct member offsets in the running
//! kernel's type information (/sys/kernel/btf/vmlinux), for kernel programs
//! that read kernel structs without CO-RE: the loader looks the offsets up
//! here and hands them over as load-time globals.
//!
//! Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst.

use std::{fs, path::Path};

use thiserror::Error;

/// Errors from the BTF reader.
#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF at {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
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

/// One type: its kind, name, and (for structs and unions) its members as
/// (name offset, type id, bit offset).
struct Type {
    kind: u32,
    name_off: u32,
    members: Vec<(u32, u32, u32)>,
}

/// Parsed BTF: types by id (id 0 is void) and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF (the header, types and strings sections).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let bad = BtfError::Malformed;
        if u16_at(data, 0) != Some(0xeb9f) {
            return Err(bad("bad magic"));
        }
        let hdr_len = u32_at(data, 4).ok_or(bad("short header"))? as usize;
        let field = |i: usize| {
            u32_at(data, 8 + 4 * i)
                .map(|v| v as usize)
                .ok_or(bad("short header"))
        };
        let (type_off, type_len, str_off, str_len) = (field(0)?, field(1)?, field(2)?, field(3)?);
        let types_sec = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(bad("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(bad("string section out of bounds"))?
            .to_vec();
        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            members: Vec::new(),
        }];
        let mut off = 0;
        while off < types_sec.len() {
            let t = |i: usize| u32_at(types_sec, off + 4 * i).ok_or(bad("truncated type"));
            let (name_off, info) = (t(0)?, t(1)?);
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 != 0;
            off += 12;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = |j: usize| {
                            u32_at(types_sec, off + 12 * i + 4 * j).ok_or(bad("truncated member"))
                        };
                        let bits = m(2)?;
                        // With kind_flag, the top 8 bits hold a bitfield size.
                        let bit_off = if kind_flag { bits & 0x00ff_ffff } else { bits };
                        members.push((m(0)?, m(1)?, bit_off));
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                _ => 0,
            };
            off += extra;
            types.push(Type {
                kind,
                name_off,
                members,
            });
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous
    /// struct and union members as C does.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .types
            .iter()
            .position(|t| {
                t.kind == KIND_STRUCT
                    && self.name(t.name_off) == strukt.as_bytes()
                    && !t.members.is_empty()
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        self.find(id, member.as_bytes(), 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            })
    }

    fn find(&self, id: usize, member: &[u8], base_bits: u32) -> Option<u32> {
        let t = self.types.get(id)?;
        for &(name_off, type_id, bits) in &t.members {
            if self.name(name_off) == member {
                return Some(base_bits + bits);
            }
            if name_off == 0 {
                let inner = self.types.get(type_id as usize)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(found) = self.find(type_id as usize, member, base_bits + bits)
                {
                    return Some(found);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF for:
    /// struct s { int a; union { int b; struct { char pad[8]; int c; }; }; };
    /// (the anonymous union at byte 8, c at 8 + 8 = 16 inside it).
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0c\0pad\0char\0".to_vec();
        let s = |name: &str| {
            let pos = strings
                .windows(name.len() + 2)
                .position(|w| {
                    w[0] == 0 && &w[1..=name.len()] == name.as_bytes() && w[name.len() + 1] == 0
                })
                .expect("string");
            (pos + 1) as u32
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: char
        push(&[s("char"), KIND_INT << 24, 1, 8]);
        // 3: char[8]
        push(&[0, KIND_ARRAY << 24, 0, 2, 1, 8]);
        // 4: anonymous struct { char pad[8]; int c; }
        push(&[
            0,
            (KIND_STRUCT << 24) | 2,
            12,
            s("pad"),
            3,
            0,
            s("c"),
            1,
            64,
        ]);
        // 5: anonymous union { int b; struct 4; }
        push(&[0, (KIND_UNION << 24) | 2, 12, s("b"), 1, 0, 0, 4, 0]);
        // 6: struct s { int a; union 5 at byte 8 }
        push(&[s("s"), (KIND_STRUCT << 24) | 2, 20, s("a"), 1, 0, 0, 5, 64]);
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_structs() {
        let btf = Btf::parse(&sample()).expect("parse");
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

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"nope").is_err());
        let mut b = sample();
        b.truncate(30);
        assert!(Btf::parse(&b).is_err());
    }

    /// The running kernel's struct sock_common starts with fields whose
    /// offsets are part of what every kernel since 2.6 lays out the same
    /// way (include/net/sock.h): a real-world check of the reader.
    #[test]
    fn reads_the_running_kernels_sock_common() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipping: no /sys/kernel/btf/vmlinux on this kernel");
            return;
        };
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
        assert!(v6 > 16 && v6 % 4 == 0, "{v6}");
    }
}
