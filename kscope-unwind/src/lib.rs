//! Compact unwind tables for x86-64, built from an ELF file's call frame
//! information (`.eh_frame`, and `.debug_frame` where `.eh_frame` leaves
//! code uncovered).
//!
//! A DWARF unwind table says, for every instruction, how to find the
//! caller's frame: the canonical frame address (CFA) as a register plus
//! an offset, and where each saved register is. A stack walker in BPF
//! cannot run DWARF programs, so this crate evaluates them ahead of time
//! into one sorted row per address range, with only what an x86-64 walk
//! needs:
//! - the CFA: `rsp + N`, `rbp + N`, or the one expression every PLT uses;
//! - where the caller's `rbp` is (unchanged, or saved at `CFA + N`);
//! - whether the return address is undefined: the outermost frame
//!   (`_start`, a thread's start), where a walk ends.
//!
//! The return address is at `CFA - 8` on x86-64 (the SysV ABI's call
//! pushes it there); a row whose rules say otherwise, or that need
//! anything else, is [`Cfa::Unsupported`] and a walker stops there (or
//! falls back to the frame pointer).
//!
//! Addresses are the file's virtual addresses, as the ELF file states
//! them; a walker subtracts the load bias of the mapping first.
//!
//! Input is untrusted: a malformed FDE is skipped and counted, never a
//! panic or an error for the whole file.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use object::{Architecture, Object as _, ObjectSection as _, ObjectSegment as _};

/// How to compute the canonical frame address at a row's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cfa {
    /// `rsp + N`.
    Rsp(i32),
    /// `rbp + N`.
    Rbp(i32),
    /// The expression of PLT stubs: `rsp + 8`, plus 8 more when
    /// `(rip & 15) >= threshold` (the stub has pushed once by then).
    /// Lazy-binding PLTs use 11, the IBT `.plt.sec` layout 10.
    Plt {
        /// 10 or 11.
        threshold: u8,
    },
    /// A rule the walker cannot follow (another register, another
    /// expression, a return address not at `CFA - 8`).
    Unsupported,
    /// No unwind information covers these addresses.
    NoInfo,
}

/// Where the caller's `rbp` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rbp {
    /// This function has not changed it (yet).
    Unchanged,
    /// Saved at `CFA + N`.
    AtCfa(i32),
    /// Not recoverable, or a rule the walker cannot follow.
    Unsupported,
}

/// What to do at an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub cfa: Cfa,
    pub rbp: Rbp,
    /// The return address is undefined: this is the outermost frame.
    pub end: bool,
}

impl Rule {
    const NO_INFO: Rule = Rule {
        cfa: Cfa::NoInfo,
        rbp: Rbp::Unsupported,
        end: false,
    };
    const UNSUPPORTED: Rule = Rule {
        cfa: Cfa::Unsupported,
        rbp: Rbp::Unsupported,
        end: false,
    };
}

/// A rule that holds from `pc` up to the next row's `pc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub pc: u64,
    pub rule: Rule,
}

/// What building a table found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// FDEs used from `.eh_frame`.
    pub eh_frame_fdes: usize,
    /// FDEs used from `.debug_frame` (code `.eh_frame` does not cover).
    pub debug_frame_fdes: usize,
    /// FDEs that could not be parsed or evaluated, or that overlap one
    /// already used.
    pub skipped_fdes: usize,
    /// Rows (after merging) the walker cannot follow.
    pub unsupported_rows: usize,
    /// `.debug_frame` was present but compressed, and left out.
    pub compressed_debug_frame: bool,
}

/// A file's unwind table: rows sorted by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub rows: Vec<Row>,
    pub stats: Stats,
}

/// Why no table could be built from a file at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not an ELF file kscope can read: {0}")]
    Elf(#[from] object::Error),
    #[error("a {0:?} file: unwind tables are built for x86-64 only")]
    Architecture(Architecture),
    #[error("no .eh_frame or .debug_frame section: no unwind information")]
    NoFrameInfo,
}

/// A loadable segment (`PT_LOAD`): where its bytes are in the file and the
/// virtual address they are loaded at. A walker needs it to turn an
/// address of a mapping of the file into the file's virtual address:
/// `vaddr = addr - map_start + map_offset - offset + address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub file_size: u64,
    pub address: u64,
    /// `PF_X`: code.
    pub executable: bool,
}

/// The loadable segments of an ELF file's bytes.
///
/// # Errors
/// The bytes are no ELF file.
pub fn load_segments(data: &[u8]) -> Result<Vec<Segment>, Error> {
    let file = object::File::parse(data)?;
    Ok(file
        .segments()
        .map(|s| {
            let (offset, file_size) = s.file_range();
            let executable = matches!(
                s.flags(),
                object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0
            );
            Segment {
                offset,
                file_size,
                address: s.address(),
                executable,
            }
        })
        .collect())
}

/// One FDE's rows, before they are merged into the table.
struct FdeRows {
    start: u64,
    end: u64,
    rows: Vec<(u64, Rule)>,
}

/// The PLT CFA expression with its threshold byte at index 6:
/// `DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_litT;
/// DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus`.
const PLT_EXPR: [u8; 11] = [
    0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
];

fn plt_threshold(expr: &[u8]) -> Option<u8> {
    if expr.len() != PLT_EXPR.len() {
        return None;
    }
    let lit = expr[6];
    let same = expr
        .iter()
        .zip(PLT_EXPR)
        .enumerate()
        .all(|(i, (a, b))| i == 6 || *a == b);
    // DW_OP_lit10 or DW_OP_lit11.
    (same && (lit == 0x3a || lit == 0x3b)).then(|| lit - 0x30)
}

/// Converts one row of gimli's evaluated table.
fn rule<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    row: &gimli::UnwindTableRow<usize>,
) -> Rule {
    let offset = |n: i64| i32::try_from(n).ok();
    let cfa = match row.cfa() {
        CfaRule::RegisterAndOffset {
            register,
            offset: n,
        } => match (*register, offset(*n)) {
            (X86_64::RSP, Some(n)) => Cfa::Rsp(n),
            (X86_64::RBP, Some(n)) => Cfa::Rbp(n),
            _ => Cfa::Unsupported,
        },
        CfaRule::Expression(e) => e
            .get(section)
            .ok()
            .and_then(|e| plt_threshold(e.0.slice()))
            .map_or(Cfa::Unsupported, |threshold| Cfa::Plt { threshold }),
    };
    let rbp = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => Rbp::Unchanged,
        Some(RegisterRule::Offset(n)) => offset(n).map_or(Rbp::Unsupported, Rbp::AtCfa),
        Some(_) => Rbp::Unsupported,
    };
    match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(-8)) => Rule {
            cfa,
            rbp,
            end: false,
        },
        Some(RegisterRule::Undefined) => Rule {
            cfa,
            rbp,
            end: true,
        },
        _ => Rule::UNSUPPORTED,
    }
}

/// Every FDE of `section` with its evaluated rows; FDEs that fail are
/// counted in `skipped`.
fn fdes<'a, S>(section: &S, bases: &BaseAddresses, skipped: &mut usize) -> Vec<FdeRows>
where
    S: UnwindSection<EndianSlice<'a, LittleEndian>>,
{
    let mut out = Vec::new();
    let mut ctx = UnwindContext::new();
    let mut entries = section.entries(bases);
    loop {
        let entry = match entries.next() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            // The section's framing is broken: nothing after it can be
            // found.
            Err(_) => {
                *skipped += 1;
                break;
            }
        };
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            *skipped += 1;
            continue;
        };
        let mut rows = Vec::new();
        let ok = (|| -> gimli::Result<()> {
            let mut table = fde.rows(section, bases, &mut ctx)?;
            while let Some(row) = table.next_row()? {
                rows.push((row.start_address(), rule(section, row)));
            }
            Ok(())
        })();
        let (start, end) = (fde.initial_address(), fde.end_address());
        if ok.is_err() || end <= start {
            *skipped += 1;
            continue;
        }
        out.push(FdeRows { start, end, rows });
    }
    out
}

impl Table {
    /// Builds the table of an ELF file's bytes.
    ///
    /// # Errors
    /// The bytes are no ELF file, not x86-64, or hold no frame
    /// information at all.
    pub fn from_elf(data: &[u8]) -> Result<Table, Error> {
        let file = object::File::parse(data)?;
        if file.architecture() != Architecture::X86_64 {
            return Err(Error::Architecture(file.architecture()));
        }
        let mut stats = Stats::default();
        let slice = |name: &str| {
            file.section_by_name(name).and_then(|s| {
                let compressed =
                    s.compressed_file_range().ok()?.format != object::CompressionFormat::None;
                if compressed {
                    return None;
                }
                Some((s.address(), s.data().ok()?))
            })
        };
        let eh = slice(".eh_frame");
        let debug = slice(".debug_frame");
        stats.compressed_debug_frame = debug.is_none()
            && file
                .section_by_name(".debug_frame")
                .is_some_and(|s| s.data().is_ok());
        if eh.is_none() && debug.is_none() {
            return Err(Error::NoFrameInfo);
        }
        let mut all = Vec::new();
        let mut skipped = 0;
        if let Some((addr, bytes)) = eh {
            let section = EhFrame::new(bytes, LittleEndian);
            let mut bases = BaseAddresses::default().set_eh_frame(addr);
            if let Some(text) = file.section_by_name(".text") {
                bases = bases.set_text(text.address());
            }
            if let Some(got) = file.section_by_name(".got") {
                bases = bases.set_got(got.address());
            }
            let found = fdes(&section, &bases, &mut skipped);
            stats.eh_frame_fdes = found.len();
            all.extend(found);
        }
        if let Some((_, bytes)) = debug {
            let mut section = DebugFrame::new(bytes, LittleEndian);
            section.set_address_size(8);
            let mut covered: Vec<(u64, u64)> = all.iter().map(|f| (f.start, f.end)).collect();
            covered.sort_unstable();
            for f in fdes(&section, &BaseAddresses::default(), &mut skipped) {
                // Only code .eh_frame leaves uncovered.
                let i = covered.partition_point(|&(s, _)| s < f.end);
                let overlaps = i > 0 && covered[i - 1].1 > f.start;
                if overlaps {
                    continue;
                }
                stats.debug_frame_fdes += 1;
                all.push(f);
            }
        }
        all.sort_by_key(|f| f.start);
        let mut rows: Vec<Row> = Vec::new();
        let mut last_end = 0;
        for f in all {
            if f.start < last_end {
                // Overlaps an FDE already in the table.
                skipped += 1;
                continue;
            }
            for (pc, rule) in f.rows {
                push(&mut rows, pc, rule);
            }
            push(&mut rows, f.end, Rule::NO_INFO);
            last_end = f.end;
        }
        stats.skipped_fdes = skipped;
        stats.unsupported_rows = rows
            .iter()
            .filter(|r| r.rule.cfa == Cfa::Unsupported)
            .count();
        Ok(Table { rows, stats })
    }

    /// The rule at `pc` (a file virtual address), if any unwind
    /// information covers it.
    pub fn lookup(&self, pc: u64) -> Option<Rule> {
        let i = self.rows.partition_point(|r| r.pc <= pc);
        let rule = self.rows.get(i.checked_sub(1)?)?.rule;
        (rule.cfa != Cfa::NoInfo).then_some(rule)
    }
}

/// Appends a row, merging it into the previous one when the rule is the
/// same, and replacing a previous row at the same address (an FDE that
/// starts where the previous ended replaces its end marker).
fn push(rows: &mut Vec<Row>, pc: u64, rule: Rule) {
    if let Some(last) = rows.last_mut()
        && last.pc == pc
    {
        last.rule = rule;
        let n = rows.len();
        if n >= 2 && rows[n - 2].rule == rule {
            rows.pop();
        }
        return;
    }
    if rows.last().is_some_and(|l| l.rule == rule) {
        return;
    }
    rows.push(Row { pc, rule });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cfa: Cfa) -> Rule {
        Rule {
            cfa,
            rbp: Rbp::Unchanged,
            end: false,
        }
    }

    #[test]
    fn plt_expressions_are_recognized_and_others_are_not() {
        assert_eq!(plt_threshold(&PLT_EXPR), Some(11));
        let mut ibt = PLT_EXPR;
        ibt[6] = 0x3a;
        assert_eq!(plt_threshold(&ibt), Some(10));
        let mut other = PLT_EXPR;
        other[6] = 0x39;
        assert_eq!(plt_threshold(&other), None);
        other = PLT_EXPR;
        other[1] = 0x10;
        assert_eq!(plt_threshold(&other), None);
        assert_eq!(plt_threshold(&PLT_EXPR[..10]), None);
        assert_eq!(plt_threshold(&[]), None);
    }

    #[test]
    fn rows_merge_and_gaps_have_no_info() {
        let mut rows = Vec::new();
        push(&mut rows, 0x10, rule(Cfa::Rsp(8)));
        push(&mut rows, 0x11, rule(Cfa::Rsp(16)));
        push(&mut rows, 0x14, rule(Cfa::Rsp(16)));
        push(&mut rows, 0x20, Rule::NO_INFO);
        // The next FDE starts where the last ended: its first row replaces
        // the end marker.
        push(&mut rows, 0x20, rule(Cfa::Rsp(8)));
        push(&mut rows, 0x30, Rule::NO_INFO);
        push(&mut rows, 0x40, rule(Cfa::Rsp(8)));
        push(&mut rows, 0x48, Rule::NO_INFO);
        let pcs: Vec<u64> = rows.iter().map(|r| r.pc).collect();
        assert_eq!(pcs, [0x10, 0x11, 0x20, 0x30, 0x40, 0x48]);
        let t = Table {
            rows,
            stats: Stats::default(),
        };
        assert_eq!(t.lookup(0x0f), None);
        assert_eq!(t.lookup(0x10), Some(rule(Cfa::Rsp(8))));
        assert_eq!(t.lookup(0x15), Some(rule(Cfa::Rsp(16))));
        assert_eq!(t.lookup(0x20), Some(rule(Cfa::Rsp(8))));
        assert_eq!(t.lookup(0x35), None);
        assert_eq!(t.lookup(0x47), Some(rule(Cfa::Rsp(8))));
        assert_eq!(t.lookup(0x48), None);
        assert_eq!(t.lookup(u64::MAX), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(Table::from_elf(b""), Err(Error::Elf(_))));
        assert!(matches!(
            Table::from_elf(b"\x7fELF\x02\x01\x01garbage"),
            Err(Error::Elf(_))
        ));
    }
}
