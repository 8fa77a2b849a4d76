//! Kernel symbols from /proc/kallsyms: parse once, then resolve addresses
//! by binary search.
//!
//! Each line is `ADDRESS TYPE NAME [MODULE]` (kernel/kallsyms.c,
//! s_show()). Only text symbols (`t`, `T`, `w`, `W`) can hold a sampled
//! instruction, so the rest are left out. When kptr_restrict hides the
//! addresses, every address reads as zero; [`Kallsyms::parse`] then
//! returns `None` rather than a table that resolves everything to one name.

use std::sync::Arc;

/// One kernel text symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KernelSym {
    pub(crate) addr: u64,
    pub(crate) name: Arc<str>,
    /// Module name for symbols of loadable modules (`[veth]` → `veth`).
    pub(crate) module: Option<Arc<str>>,
}

/// Kernel text symbols, sorted by address.
#[derive(Debug, Default)]
pub(crate) struct Kallsyms {
    syms: Vec<KernelSym>,
}

impl Kallsyms {
    /// Parses /proc/kallsyms text. `None` when it holds no usable text
    /// symbol (all addresses zero, i.e. hidden by kptr_restrict).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut modules: Vec<Arc<str>> = Vec::new();
        let mut syms: Vec<KernelSym> = text
            .lines()
            .filter_map(|line| {
                let mut it = line.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                if addr == 0 || !matches!(kind, "t" | "T" | "w" | "W") {
                    return None;
                }
                let module = it
                    .next()
                    .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
                    .map(|m| match modules.iter().find(|x| &***x == m) {
                        Some(x) => Arc::clone(x),
                        None => {
                            let x: Arc<str> = m.into();
                            modules.push(Arc::clone(&x));
                            x
                        }
                    });
                Some(KernelSym {
                    addr,
                    name: name.into(),
                    module,
                })
            })
            .collect();
        if syms.is_empty() {
            return None;
        }
        // Stable, so of symbols sharing an address the first listed wins
        // (an alias listed later, such as a weak symbol, does not).
        syms.sort_by_key(|s| s.addr);
        syms.dedup_by_key(|s| s.addr);
        Some(Self { syms })
    }

    /// The symbol holding `addr`: the one with the highest address not
    /// above it. Addresses below every symbol resolve to nothing.
    pub(crate) fn resolve(&self, addr: u64) -> Option<&KernelSym> {
        let i = self.syms.partition_point(|s| s.addr <= addr);
        i.checked_sub(1).map(|i| &self.syms[i])
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.syms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as a 6.1 kernel prints them, modules and data symbols included.
    const RECORDED: &str = "\
ffffffff81000000 T startup_64
ffffffff81000000 T _stext
ffffffff81000070 T secondary_startup_64
ffffffff812e4a10 T vfs_write
ffffffff812e4d40 T ksys_write
ffffffff812e4e20 T __x64_sys_write
ffffffff812e4e40 t do_sys_openat2
ffffffff81c00000 D init_task
ffffffff81e01000 W arch_cpu_idle_enter
ffffffffc0123000 t veth_xmit\t[veth]
ffffffffc0123400 t veth_poll\t[veth]
ffffffffc0123800 d veth_netdev_ops\t[veth]
";

    #[test]
    fn resolves_addresses_to_the_enclosing_text_symbol() {
        let k = Kallsyms::parse(RECORDED).expect("parses");
        // Data symbols (D, d) are left out; startup_64 and _stext share an
        // address and the first listed stays.
        assert_eq!(k.len(), 9);
        let name = |a| k.resolve(a).map(|s| s.name.to_string());
        assert_eq!(name(0xffff_ffff_812e_4a10).as_deref(), Some("vfs_write"));
        assert_eq!(name(0xffff_ffff_812e_4b00).as_deref(), Some("vfs_write"));
        assert_eq!(name(0xffff_ffff_812e_4d3f).as_deref(), Some("vfs_write"));
        assert_eq!(name(0xffff_ffff_812e_4d40).as_deref(), Some("ksys_write"));
        assert_eq!(name(0xffff_ffff_8100_0010).as_deref(), Some("startup_64"));
        assert_eq!(name(0xffff_ffff_8000_0000), None);
        let veth = k.resolve(0xffff_ffff_c012_3410).expect("module symbol");
        assert_eq!(&*veth.name, "veth_poll");
        assert_eq!(veth.module.as_deref(), Some("veth"));
        // The data symbol in the module does not end veth_poll's range
        // early: the lookup falls back to the last text symbol.
        assert_eq!(
            name(0xffff_ffff_c012_3900).as_deref(),
            Some("veth_poll"),
            "data symbols are not text"
        );
        assert_eq!(
            k.resolve(0xffff_ffff_812e_4a10)
                .and_then(|s| s.module.clone()),
            None
        );
    }

    #[test]
    fn hidden_addresses_yield_no_table() {
        let hidden = "0000000000000000 T startup_64\n0000000000000000 T vfs_write\n";
        assert!(Kallsyms::parse(hidden).is_none());
        assert!(Kallsyms::parse("").is_none());
        assert!(Kallsyms::parse("garbage line\nffffffff81000000\n").is_none());
    }
}
