//! `kscope hist syscall [NAME...]`: system call latency, from
//! raw_syscalls:sys_enter to sys_exit, one histogram per system call
//! (`hist_syscall` in kscope-ebpf). NAME... are resolved to numbers here
//! and filtered in the kernel.
//!
//! Names come from the x86_64 table (`syscalls_x86_64`); elsewhere a
//! syscall shows as its number and NAME... cannot be given. 32-bit
//! (compat) syscalls have numbers of their own table and show under the
//! 64-bit name of the same number.
//!
//! Histogram mode only: no events, no counts.
//!
//! Minimum kernel: 5.8 (the shared ring buffer, unused here, is created).

use std::io::{self, Write};

use aya::maps::Array;
use kscope_common::trace::{
    GLOBAL_OFF_ENTER_ID, GLOBAL_OFF_EXIT_ID, GLOBAL_SYSCALL_FILTER_ON, MAP_SYSCALL_WANT,
    PROG_SYSCALL_ENTER, PROG_SYSCALL_EXIT, SYSCALL_NR_MAX, SyscallKey,
};

use super::{Attached, HistTracer, Load, Mode, TraceError, Tracer, connect::parse_format};
use crate::output::{Column, Row};

static HIST_SYSCALL_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hist_syscall"));

/// System call names by number, where kscope knows them.
#[cfg(target_arch = "x86_64")]
const NAMES: &[&str] = &super::syscalls_x86_64::X86_64;
#[cfg(not(target_arch = "x86_64"))]
const NAMES: &[&str] = &[];

/// The name of syscall `nr`, if known.
pub(crate) fn name(nr: u32) -> Option<&'static str> {
    NAMES.get(nr as usize).copied().filter(|n| !n.is_empty())
}

/// Resolves syscall names to numbers.
///
/// # Errors
/// A name not in the table (or no table on this architecture).
pub(crate) fn resolve(names: &[String]) -> Result<Vec<u32>, TraceError> {
    names
        .iter()
        .map(|n| {
            NAMES
                .iter()
                .position(|k| !k.is_empty() && k == n)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| {
                    TraceError::BadFilter(format!(
                        "unknown system call {n:?} (names are those of {}'s table)",
                        std::env::consts::ARCH
                    ))
                })
        })
        .collect()
}

/// The syscall latency tracer.
#[derive(Debug)]
pub(crate) struct Syscall;

/// Options of `kscope hist syscall`.
#[derive(Clone, Debug, Default)]
pub(crate) struct SyscallOpts {
    /// Only these syscall numbers; empty: all.
    pub(crate) nrs: Vec<u32>,
}

/// Offset of `id` in raw_syscalls:`event`'s record, from its format file.
fn id_offset(event: &str) -> Result<u32, TraceError> {
    let path = std::path::Path::new(crate::sys::TRACEFS)
        .join(format!("events/raw_syscalls/{event}/format"));
    let text = std::fs::read_to_string(&path).map_err(|e| TraceError::Unsupported {
        feature: format!("tracepoint raw_syscalls:{event}"),
        reason: format!("reading {}: {e}", path.display()),
    })?;
    parse_format(&text, &["id"])
        .and_then(|v| v.first().copied())
        .filter(|&o| o != 0)
        .ok_or_else(|| TraceError::Unsupported {
            feature: format!("tracepoint raw_syscalls:{event}"),
            reason: "its format has no field id".into(),
        })
}

impl Tracer for Syscall {
    const NAME: &'static str = "syscall";

    type Opts = SyscallOpts;

    type Key = SyscallKey;

    fn attach(opts: &SyscallOpts, load: &Load<'_>) -> Result<Attached, TraceError> {
        // Only the histogram runner loads a HistTracer.
        debug_assert!(load.mode == Mode::Hist);
        if let Some(nr) = opts.nrs.iter().find(|&&nr| nr >= SYSCALL_NR_MAX) {
            return Err(TraceError::BadFilter(format!(
                "system call number {nr} is beyond the filter's {SYSCALL_NR_MAX}"
            )));
        }
        let enter = id_offset("sys_enter")?.to_ne_bytes();
        let exit = id_offset("sys_exit")?.to_ne_bytes();
        let on = u32::from(!opts.nrs.is_empty()).to_ne_bytes();
        let mut ebpf = load.object(
            HIST_SYSCALL_OBJ,
            &[
                (GLOBAL_OFF_ENTER_ID, &enter[..]),
                (GLOBAL_OFF_EXIT_ID, &exit[..]),
                (GLOBAL_SYSCALL_FILTER_ON, &on[..]),
            ],
            &[],
        )?;
        {
            let map = ebpf.map_mut(MAP_SYSCALL_WANT).ok_or(TraceError::Map {
                map: MAP_SYSCALL_WANT,
                source: aya::maps::MapError::InvalidName {
                    name: MAP_SYSCALL_WANT.into(),
                },
            })?;
            let mut want: Array<_, u32> =
                Array::try_from(map).map_err(TraceError::map(MAP_SYSCALL_WANT))?;
            for &nr in &opts.nrs {
                want.set(nr, 1, 0)
                    .map_err(TraceError::map(MAP_SYSCALL_WANT))?;
            }
        }
        // The exit first: an entry stamped before it is attached would stay.
        for (prog, tp) in [
            (PROG_SYSCALL_EXIT, "sys_exit"),
            (PROG_SYSCALL_ENTER, "sys_enter"),
        ] {
            super::attach_tracepoint(&mut ebpf, prog, "raw_syscalls", tp)?;
        }
        let what = if opts.nrs.is_empty() {
            "system call".to_owned()
        } else {
            let names: Vec<String> = opts
                .nrs
                .iter()
                .map(|&nr| name(nr).map_or_else(|| nr.to_string(), |n| format!("{n}(2)")))
                .collect();
            names.join(", ")
        };
        Ok(Attached {
            ebpf,
            what,
            probe: "",
        })
    }
}

impl HistTracer for Syscall {
    fn hist_cgroup_id(key: &SyscallKey) -> u64 {
        key.cgroup_id
    }

    /// Table: `SYSCALL` (the name, or the number when unknown); JSON:
    /// `syscall` (the name, or null) and `nr`.
    fn hist_key_columns() -> Vec<Column> {
        vec![Column::left("SYSCALL", "syscall", 16), Column::json("nr")]
    }

    fn write_hist_key<W: Write>(key: &SyscallKey, r: &mut Row<'_, W>) -> io::Result<()> {
        match name(key.nr) {
            Some(n) => r.str(n)?,
            None => r.display(key.nr)?,
        }
        r.u64(key.nr.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn names_resolve_to_the_abi_numbers() {
        assert_eq!(name(0), Some("read"));
        assert_eq!(name(35), Some("nanosleep"));
        assert_eq!(name(39), Some("getpid"));
        assert_eq!(name(230), Some("clock_nanosleep"));
        assert_eq!(
            resolve(&["nanosleep".into(), "clock_nanosleep".into()]).ok(),
            Some(vec![
                libc::SYS_nanosleep as u32,
                libc::SYS_clock_nanosleep as u32
            ])
        );
        assert!(resolve(&["nosuchcall".into()]).is_err());
        assert!(resolve(&[String::new()]).is_err());
        assert_eq!(name(100_000), None);
    }
}
