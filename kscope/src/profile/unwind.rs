//! Unwind tables for `profile_unwind`, the in-kernel DWARF unwinder.
//!
//! For each process profiled, its executable file mappings are read from
//! /proc/PID/maps. Each mapped file (by device and inode) gets its table
//! built once with kscope-unwind from `.eh_frame` and `.debug_frame`,
//! converted to [`UnwindRow`]s and written into one shared row array
//! ([`MAP_UNWIND_ROWS`]); the process gets the list of its mappings with
//! their load bias and rows ([`MAP_UNWIND_PROCS`]). A file's rows are
//! released when no process that maps it is profiled any more (its
//! processes exited), and their space is reused.
//!
//! Memory is bounded: the row array has a fixed size (`--unwind-memory`).
//!
//! Fallback policy: a partial profile beats a failed one. A file without
//! unwind information, one that cannot be read, or one that no longer
//! fits is left without a table: its frames are walked by frame pointer
//! (one warning for a full array, naming the file). A process with more
//! executable mappings than the walker holds keeps the first ones.

use std::{
    collections::{BTreeMap, HashMap},
    io::Read as _,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData},
};
use kscope_common::profile::{
    CFA_END, CFA_NO_INFO, CFA_PLT, CFA_RBP, CFA_RSP, CFA_UNSUPPORTED, MAP_UNWIND_PROCS,
    MAP_UNWIND_ROWS, MAX_MAPPINGS, MAX_OBJECT_ROWS, ProcUnwind, RBP_AT_CFA, RBP_UNCHANGED,
    RBP_UNSUPPORTED, UnwindMapping, UnwindRow,
};
use kscope_unwind::{Cfa, Rbp, Rule, Segment, Table};

use super::{
    ProfileError, map_err,
    procmaps::{MapLine, parse_maps},
};
use crate::sys;

/// Bytes of one row in the kernel.
pub(crate) const ROW_BYTES: u64 = size_of::<UnwindRow>() as u64;

/// A mapped file's identity: device and inode, as /proc/PID/maps shows
/// them.
type FileKey = (String, u64);

/// A mapped file's table in the row array.
#[derive(Debug)]
struct Object {
    /// First row and number of rows (0: no table, frame pointers).
    start: u32,
    len: u32,
    /// Processes that map it.
    refs: u32,
    segments: Vec<Segment>,
}

/// What the unwinder's tables take and what they cover, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UnwindStats {
    /// The row array's size in bytes (all allocated up front).
    pub(crate) capacity_bytes: u64,
    /// The most bytes of rows in use at once.
    pub(crate) peak_bytes: u64,
    /// Files whose tables were built.
    pub(crate) objects: u64,
    /// Rows those tables have, in all.
    pub(crate) rows: u64,
    /// Files left without a table because the array was full.
    pub(crate) objects_left_out: u64,
    /// Processes given tables.
    pub(crate) processes: u64,
}

/// The profiled processes' tables, mirrored in the kernel's maps.
#[derive(Debug)]
pub(crate) struct Unwinder {
    capacity: u32,
    objects: HashMap<FileKey, Object>,
    /// Free rows: start to length, merged when adjacent.
    free: BTreeMap<u32, u32>,
    /// Each process's executable mappings as last loaded.
    procs: HashMap<u32, Vec<MapLine>>,
    used: u64,
    pub(crate) stats: UnwindStats,
    warned_full: bool,
    /// The kernel has no BPF_MAP_UPDATE_BATCH for arrays (before 5.6).
    no_batches: bool,
}

/// One row as the kernel reads it.
pub(crate) fn kernel_row(pc: u64, rule: Rule) -> UnwindRow {
    let mut row = UnwindRow {
        pc,
        ..UnwindRow::default()
    };
    (row.cfa_kind, row.cfa_offset) = match rule.cfa {
        _ if rule.end => (CFA_END, 0),
        Cfa::Rsp(n) => (CFA_RSP, n),
        Cfa::Rbp(n) => (CFA_RBP, n),
        Cfa::Plt { threshold } => (CFA_PLT, i32::from(threshold)),
        Cfa::Unsupported => (CFA_UNSUPPORTED, 0),
        Cfa::NoInfo => (CFA_NO_INFO, 0),
    };
    (row.rbp_kind, row.rbp_offset) = match rule.rbp {
        Rbp::Unchanged => (RBP_UNCHANGED, 0),
        Rbp::AtCfa(n) => match i16::try_from(n) {
            Ok(n) => (RBP_AT_CFA, n),
            Err(_) => (RBP_UNSUPPORTED, 0),
        },
        Rbp::Unsupported => (RBP_UNSUPPORTED, 0),
    };
    row
}

/// The load bias of an executable mapping of a file with `segments`:
/// what to subtract from an address in it to get the file's virtual
/// address. `None` when no executable segment holds the mapping's offset.
///
/// The kernel maps whole pages, so the mapping's offset is the segment's
/// rounded down to a page (and the page may hold the end of the segment
/// before it, which is why only code segments are candidates).
pub(crate) fn load_bias(segments: &[Segment], start: u64, offset: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    let seg = segments.iter().find(|s| {
        s.executable && s.offset & !(PAGE - 1) <= offset && offset < s.offset + s.file_size
    })?;
    Some(
        start
            .wrapping_sub(offset)
            .wrapping_add(seg.offset)
            .wrapping_sub(seg.address),
    )
}

impl Unwinder {
    /// An unwinder whose row array holds `capacity` rows.
    pub(crate) fn new(capacity: u32) -> Self {
        let mut free = BTreeMap::new();
        free.insert(0, capacity);
        Self {
            capacity,
            objects: HashMap::new(),
            free,
            procs: HashMap::new(),
            used: 0,
            stats: UnwindStats {
                capacity_bytes: u64::from(capacity) * ROW_BYTES,
                ..UnwindStats::default()
            },
            warned_full: false,
            no_batches: false,
        }
    }

    /// First fit: the start of `len` free rows, taken.
    fn alloc(&mut self, len: u32) -> Option<u32> {
        let (&start, &have) = self.free.iter().find(|&(_, &n)| n >= len)?;
        self.free.remove(&start);
        if have > len {
            self.free.insert(start + len, have - len);
        }
        Some(start)
    }

    fn release(&mut self, start: u32, len: u32) {
        let (mut start, mut len) = (start, len);
        if let Some((&s, &n)) = self.free.range(..start).next_back()
            && s + n == start
        {
            self.free.remove(&s);
            start = s;
            len += n;
        }
        if let Some(n) = self.free.remove(&(start + len)) {
            len += n;
        }
        self.free.insert(start, len);
    }

    /// Loads (or reloads, when its mappings changed) the tables of process
    /// `pid`. Returns false when the process is gone.
    ///
    /// # Errors
    /// A map update the kernel refuses.
    pub(crate) fn add_process(&mut self, ebpf: &mut Ebpf, pid: u32) -> Result<bool, ProfileError> {
        let Ok(text) = sys::read_proc_maps(pid) else {
            return Ok(false);
        };
        let mut lines: Vec<MapLine> = parse_maps(&text)
            .into_iter()
            .filter(|l| l.executable() && l.path.starts_with('/') && l.inode != 0)
            .collect();
        lines.sort_by_key(|l| l.start);
        if self.procs.get(&pid) == Some(&lines) {
            return Ok(true);
        }
        if lines.len() > MAX_MAPPINGS {
            tracing::warn!(
                "process {pid} has {} executable file mappings; the unwinder holds {MAX_MAPPINGS}, the rest walk by frame pointer",
                lines.len()
            );
            lines.truncate(MAX_MAPPINGS);
        }
        let mut entry = ProcUnwind {
            len: 0,
            _pad: 0,
            maps: [UnwindMapping::default(); MAX_MAPPINGS],
        };
        for (i, l) in lines.iter().enumerate() {
            let key = (l.dev.clone(), l.inode);
            if !self.objects.contains_key(&key) {
                let object = self.build(ebpf, pid, l)?;
                self.objects.insert(key.clone(), object);
            }
            let Some(object) = self.objects.get_mut(&key) else {
                continue;
            };
            object.refs += 1;
            let bias = load_bias(&object.segments, l.start, l.offset);
            entry.maps[i] = UnwindMapping {
                start: l.start,
                end: l.end,
                bias: bias.unwrap_or(0),
                table_start: object.start,
                table_len: if bias.is_some() { object.len } else { 0 },
            };
            entry.len = i as u32 + 1;
        }
        let mut map: BpfHashMap<&mut MapData, u32, ProcUnwind> = BpfHashMap::try_from(
            ebpf.map_mut(MAP_UNWIND_PROCS)
                .ok_or(ProfileError::Missing(MAP_UNWIND_PROCS))?,
        )
        .map_err(map_err(MAP_UNWIND_PROCS))?;
        if let Err(e) = map.insert(pid, entry, 0) {
            // The process table is full (PIDS_ENTRIES): the files keep
            // no reference from this process.
            self.unref(&lines);
            return Err(map_err(MAP_UNWIND_PROCS)(e));
        }
        if let Some(old) = self.procs.insert(pid, lines) {
            self.unref(&old);
        } else {
            self.stats.processes += 1;
        }
        Ok(true)
    }

    /// Drops process `pid`'s tables (it exited), releasing files no other
    /// profiled process maps.
    ///
    /// # Errors
    /// A map update the kernel refuses.
    pub(crate) fn remove_process(&mut self, ebpf: &mut Ebpf, pid: u32) -> Result<(), ProfileError> {
        let Some(lines) = self.procs.remove(&pid) else {
            return Ok(());
        };
        let mut map: BpfHashMap<&mut MapData, u32, ProcUnwind> = BpfHashMap::try_from(
            ebpf.map_mut(MAP_UNWIND_PROCS)
                .ok_or(ProfileError::Missing(MAP_UNWIND_PROCS))?,
        )
        .map_err(map_err(MAP_UNWIND_PROCS))?;
        // Gone already is fine.
        let _ = map.remove(&pid);
        self.unref(&lines);
        Ok(())
    }

    /// Processes whose tables are loaded.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    fn unref(&mut self, lines: &[MapLine]) {
        for l in lines {
            let key = (l.dev.clone(), l.inode);
            let Some(object) = self.objects.get_mut(&key) else {
                continue;
            };
            object.refs = object.refs.saturating_sub(1);
            if object.refs == 0
                && let Some(object) = self.objects.remove(&key)
                && object.len > 0
            {
                self.release(object.start, object.len);
                self.used -= u64::from(object.len) * ROW_BYTES;
            }
        }
    }

    /// Builds the table of the file mapped at `l` and writes its rows.
    fn build(&mut self, ebpf: &mut Ebpf, pid: u32, l: &MapLine) -> Result<Object, ProfileError> {
        let no_table = |segments| Object {
            start: 0,
            len: 0,
            refs: 0,
            segments,
        };
        let data = match read_mapped(pid, l) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("{}: {e}: walked by frame pointer", l.path);
                return Ok(no_table(Vec::new()));
            }
        };
        let (table, segments) = match Table::from_elf(&data)
            .and_then(|t| Ok((t, kscope_unwind::load_segments(&data)?)))
        {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!("{}: {e}: walked by frame pointer", l.path);
                return Ok(no_table(Vec::new()));
            }
        };
        let n = table.rows.len();
        if n == 0 {
            return Ok(no_table(segments));
        }
        let fits = u32::try_from(n).ok().filter(|&n| n <= MAX_OBJECT_ROWS);
        let Some(start) = fits.and_then(|n| self.alloc(n).map(|s| (s, n))) else {
            self.stats.objects_left_out += 1;
            if !self.warned_full {
                self.warned_full = true;
                tracing::warn!(
                    "unwind tables full ({} MiB, --unwind-memory): {} ({n} rows) and any later file are walked by frame pointer only",
                    self.stats.capacity_bytes >> 20,
                    l.path
                );
            }
            return Ok(no_table(segments));
        };
        let (start, len) = start;
        let mut rows: Array<&mut MapData, UnwindRow> = Array::try_from(
            ebpf.map_mut(MAP_UNWIND_ROWS)
                .ok_or(ProfileError::Missing(MAP_UNWIND_ROWS))?,
        )
        .map_err(map_err(MAP_UNWIND_ROWS))?;
        let kernel_rows: Vec<UnwindRow> = table
            .rows
            .iter()
            .map(|r| kernel_row(r.pc, r.rule))
            .collect();
        if !self.no_batches {
            match write_batches(&rows, start, &kernel_rows) {
                Ok(()) => {}
                Err(e) if sys::bpf::batch_unsupported(&e) => self.no_batches = true,
                Err(e) => {
                    return Err(ProfileError::Map {
                        map: MAP_UNWIND_ROWS,
                        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                            call: "bpf_map_update_batch",
                            io_error: e,
                        }),
                    });
                }
            }
        }
        if self.no_batches {
            // Before 5.6: one bpf() call a row.
            for (i, r) in kernel_rows.iter().enumerate() {
                rows.set(start + i as u32, r, 0)
                    .map_err(map_err(MAP_UNWIND_ROWS))?;
            }
        }
        self.used += u64::from(len) * ROW_BYTES;
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.used);
        self.stats.objects += 1;
        self.stats.rows += u64::from(len);
        debug_assert!(start + len <= self.capacity);
        Ok(Object {
            start,
            len,
            refs: 0,
            segments,
        })
    }
}

/// Writes `rows` into the row array from index `start`, in batches: the
/// tables of libc and a Rust program take some 35,000 rows, which one
/// bpf() call each made 0.4 s of system time.
fn write_batches(
    map: &Array<&mut MapData, UnwindRow>,
    start: u32,
    rows: &[UnwindRow],
) -> std::io::Result<()> {
    use std::os::fd::AsFd as _;
    const BATCH: usize = 4096;
    let fd = aya::maps::IterableMap::map(map).fd().as_fd();
    for (n, chunk) in rows.chunks(BATCH).enumerate() {
        let first = start + (n * BATCH) as u32;
        let keys: Vec<u8> = (first..first + chunk.len() as u32)
            .flat_map(u32::to_ne_bytes)
            .collect();
        let values: Vec<u8> = chunk.iter().flat_map(row_bytes).collect();
        sys::bpf::map_update_batch(fd, &keys, &values, chunk.len() as u32)?;
    }
    Ok(())
}

/// A row's bytes as the kernel stores them (#[repr(C)], no padding).
fn row_bytes(r: &UnwindRow) -> [u8; ROW_BYTES as usize] {
    let mut b = [0; ROW_BYTES as usize];
    b[..8].copy_from_slice(&r.pc.to_ne_bytes());
    b[8..12].copy_from_slice(&r.cfa_offset.to_ne_bytes());
    b[12..14].copy_from_slice(&r.rbp_offset.to_ne_bytes());
    b[14] = r.cfa_kind;
    b[15] = r.rbp_kind;
    b
}

/// The bytes of the file mapped at `l`: through /proc/PID/map_files (the
/// very file, also deleted or in another mount namespace), else by path.
fn read_mapped(pid: u32, l: &MapLine) -> std::io::Result<Vec<u8>> {
    let mut file = match sys::open_mapped_file(pid, l.start, l.end) {
        Ok(f) => f,
        Err(_) => std::fs::File::open(l.path.trim_end_matches(" (deleted)"))?,
    };
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_convert_to_the_kernel_encoding() {
        let r = |cfa, rbp, end| kernel_row(0x10, Rule { cfa, rbp, end });
        let k = r(Cfa::Rsp(16), Rbp::AtCfa(-16), false);
        assert_eq!(
            (k.pc, k.cfa_kind, k.cfa_offset, k.rbp_kind, k.rbp_offset),
            (0x10, CFA_RSP, 16, RBP_AT_CFA, -16)
        );
        assert_eq!(r(Cfa::Rbp(16), Rbp::Unchanged, false).cfa_kind, CFA_RBP);
        let plt = r(Cfa::Plt { threshold: 11 }, Rbp::Unchanged, false);
        assert_eq!((plt.cfa_kind, plt.cfa_offset), (CFA_PLT, 11));
        assert_eq!(r(Cfa::Rsp(8), Rbp::Unchanged, true).cfa_kind, CFA_END);
        assert_eq!(
            r(Cfa::NoInfo, Rbp::Unsupported, false).cfa_kind,
            CFA_NO_INFO
        );
        assert_eq!(
            r(Cfa::Unsupported, Rbp::Unsupported, false).cfa_kind,
            CFA_UNSUPPORTED
        );
        // An offset the kernel's i16 cannot hold is not followed.
        assert_eq!(
            r(Cfa::Rsp(8), Rbp::AtCfa(70_000), false).rbp_kind,
            RBP_UNSUPPORTED
        );
    }

    #[test]
    fn load_bias_maps_addresses_to_file_virtual_addresses() {
        // A PIE's text: file offset 0x1000 loaded at vaddr 0x1000, mapped
        // at 0x5555_5555_5000 with offset 0x1000.
        let pie = [
            Segment {
                offset: 0,
                file_size: 0x1000,
                address: 0,
                executable: false,
            },
            Segment {
                offset: 0x1000,
                file_size: 0x2000,
                address: 0x1000,
                executable: true,
            },
        ];
        let bias = load_bias(&pie, 0x5555_5555_5000, 0x1000).expect("a segment");
        assert_eq!(0x5555_5555_5123 - bias, 0x1123);
        // lld's layout (Rust's binaries): the code segment starts mid-page
        // (offset 0x14e40, vaddr 0x15e40), after the end of the read-only
        // one; the mapping starts at the page, offset 0x14000.
        let lld = [
            Segment {
                offset: 0,
                file_size: 0x14e1c,
                address: 0,
                executable: false,
            },
            Segment {
                offset: 0x14e40,
                file_size: 0x40630,
                address: 0x15e40,
                executable: true,
            },
        ];
        let bias = load_bias(&lld, 0x55ab_f0ec_7000, 0x14000).expect("a segment");
        assert_eq!(0x55ab_f0ec_7e40 - bias, 0x15e40);
        // A non-PIE with vaddr != offset (the text segment shifted by a
        // page): the file's addresses are the addresses.
        let fixed = [Segment {
            offset: 0x1000,
            file_size: 0x800,
            address: 0x40_2000,
            executable: true,
        }];
        let bias = load_bias(&fixed, 0x40_2000, 0x1000).expect("a segment");
        assert_eq!(0x40_2010_u64.wrapping_sub(bias), 0x40_2010);
        assert_eq!(load_bias(&fixed, 0x40_2000, 0x5000), None);
    }

    #[test]
    fn row_bytes_are_the_structs_memory() {
        let row = UnwindRow {
            pc: 0x1122_3344_5566_7788,
            cfa_offset: -24,
            rbp_offset: -16,
            cfa_kind: CFA_RBP,
            rbp_kind: RBP_AT_CFA,
        };
        // SAFETY: UnwindRow is #[repr(C)], 16 bytes of integers with no
        // padding, and lives for the borrow.
        let raw = unsafe {
            std::slice::from_raw_parts((&raw const row).cast::<u8>(), size_of::<UnwindRow>())
        };
        assert_eq!(row_bytes(&row).as_slice(), raw);
    }

    #[test]
    fn freed_rows_are_merged_and_reused() {
        let mut u = Unwinder::new(100);
        let a = u.alloc(30).expect("room");
        let b = u.alloc(30).expect("room");
        let c = u.alloc(40).expect("room");
        assert_eq!((a, b, c), (0, 30, 60));
        assert_eq!(u.alloc(1), None);
        u.release(a, 30);
        u.release(c, 40);
        assert_eq!(u.alloc(50), None, "two holes of 30 and 40 are not one");
        u.release(b, 30);
        assert_eq!(u.free.len(), 1, "{:?}", u.free);
        assert_eq!(u.alloc(100), Some(0));
    }
}
