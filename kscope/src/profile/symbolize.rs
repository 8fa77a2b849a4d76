//! From stack ids to function names: kernel addresses through
//! /proc/kallsyms, user addresses through the recorded process maps and
//! blazesym (ELF symbols, and DWARF where present, including inlined
//! functions).
//!
//! Fallback policy: losing a name is better than losing a sample. An
//! address that cannot be resolved becomes `[unknown]`, a lost stack
//! becomes one `[lost … stack: REASON]` frame, and the sample keeps its
//! place in every total. A mangled name that does not demangle is shown
//! mangled.

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap},
    path::Path,
    sync::Arc,
};

use blazesym::symbolize::{Input, Symbolized, Symbolizer, source};
use kscope_common::profile::{LostReason, STACK_ABSENT, StackKey};

use super::{
    kallsyms::Kallsyms,
    procmaps::{MappedFile, ProcCache, Region},
    report::{FileMapping, Frames, Stack},
};
use crate::sys;

/// Frame name for an address nothing could resolve.
const UNKNOWN: &str = "[unknown]";

/// What sampling collected, before symbolization.
#[derive(Debug, Default)]
pub(crate) struct RawProfile {
    pub(crate) counts: Vec<(StackKey, u64)>,
    /// Instruction pointers by stack id, leaf first (as the kernel stores
    /// them).
    pub(crate) stacks: HashMap<u32, Vec<u64>>,
}

/// Which stacks were asked for (`-U`, `-K`, or both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sides {
    pub(crate) kernel: bool,
    pub(crate) user: bool,
}

/// The thread name in a [`StackKey`]; `[idle]` for the idle task.
pub(crate) fn comm(key: &StackKey) -> String {
    if key.pid == 0 {
        return "[idle]".into();
    }
    let len = key.comm.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&key.comm[..len]).into_owned()
}

fn lost_frame(side: &str, id: i32) -> String {
    format!("[lost {side} stack: {}]", LostReason::from_errno(id).name())
}

/// A symbol's name as people read it. Only names in a mangling scheme are
/// demangled: Rust's v0 (`_R…`) and Itanium C++ (`_Z…`), whose `_ZN…E`
/// form Rust's legacy scheme shares (tried as Rust first, so its hash
/// suffix is dropped). Any other name is returned as it is: an Itanium
/// demangler reads a bare name as a *type* code, so a C function `a` would
/// become `signed char` and `Pc` would become `char*` (blazesym demangles
/// every ELF symbol that way, which is why its demangling is off). perf
/// makes the same choice.
fn demangle(name: &str) -> Cow<'_, str> {
    if (name.starts_with("_R") || name.starts_with("_ZN"))
        && let Ok(d) = rustc_demangle::try_demangle(name)
    {
        // `{:#}`: without the legacy hash or v0's crate disambiguators.
        return format!("{d:#}").into();
    }
    if name.starts_with("_Z")
        && let Ok(sym) = cpp_demangle::Symbol::new(name)
        && let Ok(d) = sym.demangle()
    {
        return d.into();
    }
    name.into()
}

/// Identity of a mapped file for grouping addresses (its allocation).
fn file_key(f: &Arc<MappedFile>) -> usize {
    Arc::as_ptr(f) as usize
}

/// Resolves every stack of `raw`. `procs` holds the maps recorded while
/// sampling; processes still alive that were not recorded are read now.
pub(crate) fn symbolize(raw: &RawProfile, procs: &mut ProcCache, sides: Sides) -> Vec<Stack> {
    let kallsyms = if sides.kernel && raw.counts.iter().any(|(k, _)| k.kernel_stack_id >= 0) {
        load_kallsyms()
    } else {
        None
    };

    // Pass 1: where each user address lives, grouped by file, so blazesym
    // opens and parses each file once.
    let mut refreshed = BTreeSet::new();
    let mut regions: HashMap<(u32, u64), Region> = HashMap::new();
    let mut by_file: HashMap<usize, (Arc<MappedFile>, BTreeSet<u64>)> = HashMap::new();
    for (key, _) in &raw.counts {
        let Some(ips) = stack_ips(raw, key.user_stack_id) else {
            continue;
        };
        if !procs.knows(key.pid) {
            procs.record(key.pid);
        }
        for (i, &ip) in ips.iter().enumerate() {
            let addr = call_site(ip, i);
            if regions.contains_key(&(key.pid, addr)) {
                continue;
            }
            let mut region = procs.lookup(key.pid, addr);
            // A library loaded after the maps were recorded.
            if matches!(region, Region::Unknown) && refreshed.insert(key.pid) {
                procs.refresh(key.pid);
                region = procs.lookup(key.pid, addr);
            }
            if let Region::File { file, offset, .. } = &region {
                by_file
                    .entry(file_key(file))
                    .or_insert_with(|| (Arc::clone(file), BTreeSet::new()))
                    .1
                    .insert(*offset);
            }
            regions.insert((key.pid, addr), region);
        }
    }

    // Pass 2: symbolize each file's offsets in one batch.
    let symbolizer = Symbolizer::builder()
        .enable_code_info(false)
        .enable_inlined_fns(true)
        // Names are demangled by [`demangle`], only when mangled.
        .enable_demangling(false)
        .build();
    let mut names: HashMap<(usize, u64), Vec<String>> = HashMap::new();
    for (fk, (file, offsets)) in &by_file {
        let offsets: Vec<u64> = offsets.iter().copied().collect();
        let src = source::Source::Elf(source::Elf::new(&file.path));
        match symbolizer.symbolize(&src, Input::FileOffset(&offsets)) {
            Ok(syms) => {
                for (off, sym) in offsets.iter().zip(syms) {
                    if let Symbolized::Sym(sym) = sym {
                        let mut frames = vec![demangle(&sym.name).into_owned()];
                        frames.extend(sym.inlined.iter().map(|f| demangle(&f.name).into_owned()));
                        names.insert((*fk, *off), frames);
                    }
                }
            }
            Err(e) => tracing::debug!("symbolizing {}: {e}", file.mapped_path),
        }
    }

    // Pass 3: assemble the stacks, root to leaf.
    let mut paths: HashMap<usize, Arc<str>> = HashMap::new();
    raw.counts
        .iter()
        .map(|(key, count)| {
            let mut user = Frames::default();
            match stack_ips(raw, key.user_stack_id) {
                Some(ips) => {
                    for (i, &ip) in ips.iter().enumerate().rev() {
                        let addr = call_site(ip, i);
                        match regions.get(&(key.pid, addr)) {
                            Some(Region::File { file, offset, span }) => {
                                let fk = file_key(file);
                                let mapping = Some(FileMapping {
                                    path: Arc::clone(
                                        paths
                                            .entry(fk)
                                            .or_insert_with(|| file.mapped_path.as_str().into()),
                                    ),
                                    span: *span,
                                });
                                match names.get(&(fk, *offset)) {
                                    Some(frames) => {
                                        user.push(addr, mapping, frames.iter().cloned())
                                    }
                                    None => user.push(addr, mapping, [UNKNOWN.to_owned()]),
                                }
                            }
                            Some(Region::Vdso) => user.push(addr, None, ["[vdso]".to_owned()]),
                            _ => user.push(addr, None, [UNKNOWN.to_owned()]),
                        }
                    }
                }
                None if key.user_stack_id != STACK_ABSENT && key.user_stack_id < 0 => {
                    user.push(0, None, [lost_frame("user", key.user_stack_id)]);
                }
                None => {}
            }
            let mut kernel = Frames::default();
            match stack_ips(raw, key.kernel_stack_id) {
                Some(ips) => {
                    for (i, &ip) in ips.iter().enumerate().rev() {
                        let addr = call_site(ip, i);
                        let name = kallsyms
                            .as_ref()
                            .and_then(|k| k.resolve(addr))
                            .map_or_else(|| UNKNOWN.to_owned(), |s| s.name.to_string());
                        kernel.push(addr, None, [name]);
                    }
                }
                None if key.kernel_stack_id != STACK_ABSENT && key.kernel_stack_id < 0 => {
                    kernel.push(0, None, [lost_frame("kernel", key.kernel_stack_id)]);
                }
                None => {}
            }
            if user.names.is_empty() && kernel.names.is_empty() {
                // Only one side was asked for and the sample was in the
                // other. The placeholder goes on the side it stands for:
                // output marks the kernel side's frames as kernel frames.
                match (sides.kernel, sides.user) {
                    (true, false) => user.push(0, None, ["[user mode]".to_owned()]),
                    (false, true) => kernel.push(0, None, ["[kernel thread]".to_owned()]),
                    _ => user.push(0, None, ["[no stack]".to_owned()]),
                }
            }
            let cgroup = crate::cgroup::name(key.cgroup_id);
            Stack {
                pid: key.pid,
                comm: comm(key),
                cgroup_id: key.cgroup_id,
                cgroup: cgroup.as_ref().map(|c| c.path.clone()),
                container_id: cgroup.and_then(|c| c.container_id.clone()),
                user: user.names,
                kernel: kernel.names,
                count: *count,
                user_sites: user.sites,
                kernel_sites: kernel.sites,
            }
        })
        .collect()
}

fn stack_ips(raw: &RawProfile, id: i32) -> Option<&[u64]> {
    let id = u32::try_from(id).ok()?;
    raw.stacks.get(&id).map(Vec::as_slice)
}

/// The address to resolve for frame `i` (0 = leaf): a caller's frame holds
/// a return address, which can be past the end of the calling function
/// (a call as its last instruction), so one byte earlier is looked up.
fn call_site(ip: u64, i: usize) -> u64 {
    if i == 0 { ip } else { ip.saturating_sub(1) }
}

fn load_kallsyms() -> Option<Kallsyms> {
    let path = Path::new("/proc/kallsyms");
    match sys::read_kernel_file(path) {
        Ok(text) => {
            let k = Kallsyms::parse(&text);
            if k.is_none() {
                tracing::warn!(
                    "/proc/kallsyms hides kernel addresses (kernel.kptr_restrict); kernel frames will show as {UNKNOWN}"
                );
            }
            k
        }
        Err(e) => {
            tracing::warn!("{e}; kernel frames will show as {UNKNOWN}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: u32, kernel_stack_id: i32, user_stack_id: i32) -> StackKey {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"app1");
        StackKey {
            pid,
            kernel_stack_id,
            user_stack_id,
            comm,
            ..StackKey::default()
        }
    }

    #[test]
    fn lost_and_absent_stacks_keep_their_samples() {
        let raw = RawProfile {
            counts: vec![
                (key(0, STACK_ABSENT, STACK_ABSENT), 3),
                (key(7, -17, -14), 2),
                (key(7, -12, STACK_ABSENT), 1),
            ],
            stacks: HashMap::new(),
        };
        let mut procs = ProcCache::new();
        let both = Sides {
            kernel: true,
            user: true,
        };
        let stacks = symbolize(&raw, &mut procs, both);
        assert_eq!(stacks.len(), 3);
        assert_eq!(stacks[0].comm, "[idle]");
        assert_eq!(stacks[0].user, ["[no stack]"]);
        assert!(stacks[0].kernel.is_empty());
        assert_eq!(stacks[1].comm, "app1");
        assert_eq!(stacks[1].user, ["[lost user stack: efault]"]);
        assert_eq!(stacks[1].kernel, ["[lost kernel stack: eexist]"]);
        assert_eq!(stacks[2].kernel, ["[lost kernel stack: stack_map_full]"]);
        assert_eq!(stacks.iter().map(|s| s.count).sum::<u64>(), 6);
        // Placeholders have one site each, at no address.
        for s in &stacks {
            for (names, sites) in [(&s.user, &s.user_sites), (&s.kernel, &s.kernel_sites)] {
                assert_eq!(sites.len(), names.len(), "{s:?}");
                assert!(sites.iter().all(|t| t.addr == 0 && t.frames == 1), "{s:?}");
            }
        }

        let kernel_only = Sides {
            kernel: true,
            user: false,
        };
        let raw = RawProfile {
            counts: vec![(key(7, STACK_ABSENT, STACK_ABSENT), 4)],
            stacks: HashMap::new(),
        };
        let stacks = symbolize(&raw, &mut procs, kernel_only);
        // A user-mode sample is not a kernel frame.
        assert_eq!(stacks[0].user, ["[user mode]"]);
        assert!(stacks[0].kernel.is_empty());
        let user_only = Sides {
            kernel: false,
            user: true,
        };
        let stacks = symbolize(&raw, &mut procs, user_only);
        assert_eq!(stacks[0].kernel, ["[kernel thread]"]);
        assert!(stacks[0].user.is_empty());
    }

    #[test]
    fn plain_c_names_are_not_demangled() {
        // Also Itanium type codes: demangled, `a` was `signed char`, `Pc`
        // `char*`, `Ss` `std::string`.
        for name in ["a", "b", "c", "d", "i", "x", "Pc", "Ss"] {
            assert_eq!(demangle(name), name);
        }
        for name in [
            "main",
            "memcpy",
            "_start",
            "__libc_start_main",
            "Z",
            "R",
            "_",
            "",
        ] {
            assert_eq!(demangle(name), name);
        }
    }

    #[test]
    fn mangled_names_are_demangled() {
        let cases = [
            // Itanium C++: a namespaced function and its overloads.
            ("_ZN10kscope_cxx4burnEi", "kscope_cxx::burn(int)"),
            ("_ZN10kscope_cxx4burnEd", "kscope_cxx::burn(double)"),
            ("_Z4spinPKc", "spin(char const*)"),
            // Rust legacy: the hash is dropped.
            (
                "_ZN6kscope7profile4spin17h0123456789abcdefE",
                "kscope::profile::spin",
            ),
            // Rust v0: the crate disambiguator is dropped.
            ("_RNvCs1234_6kscope4spin", "kscope::spin"),
            ("_RNvNtC6kscope7profile4spin", "kscope::profile::spin"),
        ];
        for (mangled, want) in cases {
            assert_eq!(demangle(mangled), want, "{mangled}");
        }
    }

    #[test]
    fn mangled_looking_names_that_do_not_parse_are_kept() {
        for name in ["_Znotmangled", "_Z", "_R", "_Rx", "_ZN3foo"] {
            assert_eq!(demangle(name), name);
        }
    }

    #[test]
    fn call_sites_step_back_into_the_calling_instruction() {
        assert_eq!(call_site(0x1000, 0), 0x1000);
        assert_eq!(call_site(0x1000, 1), 0xfff);
        assert_eq!(call_site(0, 3), 0);
    }
}
