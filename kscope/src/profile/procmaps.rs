//! Process memory maps, recorded when a process is first seen so its
//! samples can be symbolized after it has exited.
//!
//! For each executable file mapping, the mapped file itself is kept open
//! (through /proc/PID/map_files), so symbolization works even when the
//! process is gone, the file was deleted or replaced, or it lives in
//! another mount namespace. Files are shared between processes by device
//! and inode. An address is turned into a file offset here; blazesym maps
//! the offset to the ELF's virtual address, which handles PIE executables
//! and shared libraries alike.
//!
//! Fallback policy: a process that exited before kscope read its maps has
//! its user frames shown as `[unknown]`; a file that cannot be opened is
//! looked up by its path instead.

use std::{collections::HashMap, fs::File, os::fd::AsRawFd as _, path::PathBuf, sync::Arc};

use crate::sys;

/// At most this many mapped files are held open (the default soft limit
/// on open files is 1024); past it, files are looked up by path.
const MAX_OPEN_FILES: usize = 512;

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MapLine {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) perms: String,
    pub(crate) offset: u64,
    pub(crate) dev: String,
    pub(crate) inode: u64,
    /// The path, `[vdso]`, `[heap]` and the like, or empty (anonymous).
    pub(crate) path: String,
}

impl MapLine {
    pub(crate) fn executable(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }
}

/// Parses /proc/PID/maps (fs/proc/task_mmu.c, show_map_vma()):
/// `START-END PERMS OFFSET MAJ:MIN INODE [PATH]`, the path padded with
/// spaces and possibly containing spaces itself. Bad lines are skipped.
pub(crate) fn parse_maps(text: &str) -> Vec<MapLine> {
    text.lines()
        .filter_map(|line| {
            let mut rest = line;
            let mut field = || {
                let t = rest.trim_start();
                let end = t.find(' ').unwrap_or(t.len());
                let (f, r) = t.split_at(end);
                rest = r;
                f
            };
            let (range, perms, offset, dev, inode) = (field(), field(), field(), field(), field());
            let (start, end) = range.split_once('-')?;
            Some(MapLine {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                perms: perms.to_owned(),
                offset: u64::from_str_radix(offset, 16).ok()?,
                dev: dev.to_owned(),
                inode: inode.parse().ok()?,
                path: rest.trim().to_owned(),
            })
        })
        .collect()
}

/// A mapped file, as blazesym will open it.
#[derive(Debug)]
pub(crate) struct MappedFile {
    /// Path blazesym opens: `/proc/self/fd/N` while kscope holds the file
    /// open, else the path the process mapped.
    pub(crate) path: PathBuf,
    /// The path the process mapped, for display.
    pub(crate) mapped_path: String,
    /// Keeps `path` valid when it is a `/proc/self/fd` link.
    _file: Option<File>,
}

impl MappedFile {
    /// A file known by path only.
    fn by_path(path: &str) -> Self {
        Self {
            path: PathBuf::from(path),
            mapped_path: path.to_owned(),
            _file: None,
        }
    }
}

/// Where a file is mapped in a process: its address range and the file
/// offset of its start (pprof's `Mapping`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Span {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) offset: u64,
}

/// What an address of a process is.
#[derive(Clone, Debug)]
pub(crate) enum Region {
    /// Inside a mapped file, at this file offset, in mapping `span`.
    File {
        file: Arc<MappedFile>,
        offset: u64,
        span: Span,
    },
    /// In the vDSO.
    Vdso,
    /// Executable memory with no file (JIT code).
    Anonymous,
    /// Not in any executable mapping kscope knows of.
    Unknown,
}

#[derive(Debug)]
enum Backing {
    File(Arc<MappedFile>),
    Vdso,
    Anonymous,
}

#[derive(Debug)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    backing: Backing,
}

/// The executable mappings of one process, sorted by address.
#[derive(Debug, Default)]
struct ProcMaps {
    mappings: Vec<Mapping>,
}

impl ProcMaps {
    /// Builds a process's executable mappings from its maps lines; `file`
    /// supplies the [`MappedFile`] for a file-backed line.
    pub(crate) fn build(
        lines: &[MapLine],
        mut file: impl FnMut(&MapLine) -> Arc<MappedFile>,
    ) -> Self {
        let mut mappings: Vec<Mapping> = lines
            .iter()
            .filter(|l| l.executable())
            .map(|l| Mapping {
                start: l.start,
                end: l.end,
                offset: l.offset,
                backing: if l.path == "[vdso]" {
                    Backing::Vdso
                } else if l.path.starts_with('/') {
                    Backing::File(file(l))
                } else {
                    Backing::Anonymous
                },
            })
            .collect();
        mappings.sort_by_key(|m| m.start);
        Self { mappings }
    }

    /// What `addr` is in this process.
    pub(crate) fn lookup(&self, addr: u64) -> Region {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let Some(m) = i.checked_sub(1).map(|i| &self.mappings[i]) else {
            return Region::Unknown;
        };
        if addr >= m.end {
            return Region::Unknown;
        }
        match &m.backing {
            Backing::File(f) => Region::File {
                file: Arc::clone(f),
                offset: addr - m.start + m.offset,
                span: Span {
                    start: m.start,
                    end: m.end,
                    offset: m.offset,
                },
            },
            Backing::Vdso => Region::Vdso,
            Backing::Anonymous => Region::Anonymous,
        }
    }
}

/// Memory maps of every process seen, and the files they map.
#[derive(Default)]
pub(crate) struct ProcCache {
    procs: HashMap<u32, ProcMaps>,
    /// Files by (device, inode), shared between processes.
    files: HashMap<(String, u64), Arc<MappedFile>>,
    open_files: usize,
}

impl ProcCache {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records `pid`'s maps unless already recorded. Returns false when the
    /// process is gone (or its maps are unreadable).
    pub(crate) fn record(&mut self, pid: u32) -> bool {
        if pid == 0 || self.procs.contains_key(&pid) {
            return pid != 0;
        }
        self.read(pid)
    }

    /// Reads `pid`'s maps again, if the process still exists: for an
    /// address outside the recorded maps (a library loaded later).
    pub(crate) fn refresh(&mut self, pid: u32) -> bool {
        pid != 0 && self.read(pid)
    }

    fn read(&mut self, pid: u32) -> bool {
        let Ok(text) = sys::read_proc_maps(pid) else {
            return false;
        };
        let lines = parse_maps(&text);
        let maps = ProcMaps::build(&lines, |l| self.file(pid, l));
        self.procs.insert(pid, maps);
        true
    }

    fn file(&mut self, pid: u32, l: &MapLine) -> Arc<MappedFile> {
        let key = (l.dev.clone(), l.inode);
        if let Some(f) = self.files.get(&key) {
            return Arc::clone(f);
        }
        let opened = (self.open_files < MAX_OPEN_FILES)
            .then(|| sys::open_mapped_file(pid, l.start, l.end).ok())
            .flatten();
        let f = Arc::new(match opened {
            Some(file) => {
                self.open_files += 1;
                MappedFile {
                    path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
                    mapped_path: l.path.clone(),
                    _file: Some(file),
                }
            }
            None => MappedFile::by_path(l.path.trim_end_matches(" (deleted)")),
        });
        self.files.insert(key, Arc::clone(&f));
        f
    }

    /// What `addr` is in process `pid`, if its maps were recorded.
    pub(crate) fn lookup(&self, pid: u32, addr: u64) -> Region {
        self.procs
            .get(&pid)
            .map_or(Region::Unknown, |m| m.lookup(addr))
    }

    /// Whether `pid`'s maps were recorded.
    pub(crate) fn knows(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PIE executable, libc, the vDSO and a JIT region, as 6.1 prints them.
    const RECORDED: &str = "\
55d0c4a00000-55d0c4a2f000 r--p 00000000 fe:01 1835533                    /usr/bin/my prog
55d0c4a2f000-55d0c4b9e000 r-xp 0002f000 fe:01 1835533                    /usr/bin/my prog
55d0c4b9e000-55d0c4bf0000 r--p 0019e000 fe:01 1835533                    /usr/bin/my prog
55d0c5c1e000-55d0c5c3f000 rw-p 00000000 00:00 0                          [heap]
7f3a1c000000-7f3a1c100000 rwxp 00000000 00:00 0 
7f3a1c628000-7f3a1c64e000 r--p 00000000 fe:01 1311011                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f3a1c64e000-7f3a1c7a3000 r-xp 00026000 fe:01 1311011                    /usr/lib/x86_64-linux-gnu/libc.so.6
7fff5b9f7000-7fff5b9fb000 r--p 00000000 00:00 0                          [vvar]
7fff5b9fb000-7fff5b9fd000 r-xp 00000000 00:00 0                          [vdso]
not a maps line
";

    #[test]
    fn maps_lines_parse_with_spaces_in_paths() {
        let lines = parse_maps(RECORDED);
        assert_eq!(lines.len(), 9, "the bad line is skipped");
        assert_eq!(lines[1].start, 0x55d0_c4a2_f000);
        assert_eq!(lines[1].end, 0x55d0_c4b9_e000);
        assert_eq!(lines[1].offset, 0x2f000);
        assert_eq!(lines[1].dev, "fe:01");
        assert_eq!(lines[1].inode, 1_835_533);
        assert_eq!(lines[1].path, "/usr/bin/my prog");
        assert!(lines[1].executable() && !lines[0].executable());
        assert_eq!(lines[4].path, "", "anonymous mapping");
        assert_eq!(lines[8].path, "[vdso]");
    }

    #[test]
    fn addresses_translate_to_file_offsets_of_executable_mappings() {
        let lines = parse_maps(RECORDED);
        let mut opened = Vec::new();
        let maps = ProcMaps::build(&lines, |l| {
            opened.push(l.path.clone());
            Arc::new(MappedFile::by_path(&l.path))
        });
        // Only executable file mappings are opened.
        assert_eq!(
            opened,
            ["/usr/bin/my prog", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
        );
        // 0x1000 into the executable's text mapping, which starts at file
        // offset 0x2f000.
        match maps.lookup(0x55d0_c4a3_0000) {
            Region::File { file, offset, span } => {
                assert_eq!(file.mapped_path, "/usr/bin/my prog");
                assert_eq!(offset, 0x30000);
                // The r-xp line's range and offset.
                let want = Span {
                    start: 0x55d0_c4a2_f000,
                    end: 0x55d0_c4b9_e000,
                    offset: 0x2f000,
                };
                assert_eq!(span, want);
            }
            r => panic!("{r:?}"),
        }
        match maps.lookup(0x7f3a_1c64_e123) {
            Region::File { file, offset, .. } => {
                assert!(file.mapped_path.ends_with("libc.so.6"));
                assert_eq!(offset, 0x26123);
            }
            r => panic!("{r:?}"),
        }
        assert!(matches!(maps.lookup(0x7fff_5b9f_b010), Region::Vdso));
        assert!(matches!(maps.lookup(0x7f3a_1c00_0010), Region::Anonymous));
        // Read-only data of the executable, the heap, and past the end.
        assert!(matches!(maps.lookup(0x55d0_c4a0_0010), Region::Unknown));
        assert!(matches!(maps.lookup(0x55d0_c5c1_e000), Region::Unknown));
        assert!(matches!(maps.lookup(0x7fff_5b9f_d000), Region::Unknown));
        assert!(matches!(maps.lookup(0x10), Region::Unknown));
    }
}
