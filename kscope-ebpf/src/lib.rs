//! Helpers shared by kscope's kernel programs: bounds-checked packet access and
//! header parsers. Everything here must stay verifier-friendly: no loops
//! without a constant bound, no stack buffers over a few dozen bytes.
#![no_std]
// The BPF target has no atomic read-modify-write in `core::sync::atomic`
// (no compare-and-swap), so `trace::add_atomic` uses the intrinsic; the
// kernel programs are built with nightly, the host build never runs it.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(internal_features, reason = "atomic_xadd for BPF atomic adds")
)]

pub mod net;
pub mod trace;

pub use trace::add_atomic;

/// True when `a` and `b` are the same string, at compile time: binaries
/// assert that the names in their `#[map(name = "…")]` attributes (which
/// must be literals) match kscope-common's constants, so a typo fails the
/// build instead of the load.
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Asserts at compile time that `$item`, a program function, a `#[map]`
/// static or a `#[unsafe(no_mangle)]` global, is named `$name` (a
/// kscope-common constant). All three keep their identifier as their symbol
/// name (maps are declared without `name = ...` for this), which is the name
/// user space looks them up by, so the identifier is what must match. The
/// item is referenced too, so a renamed item fails to compile here. Every
/// program, map and global of every kernel binary has one.
#[macro_export]
macro_rules! assert_symbol_name {
    ($item:ident, $name:expr) => {
        const _: () = {
            let _ = &$item;
            assert!(
                $crate::same_name(stringify!($item), $name),
                concat!(
                    "`",
                    stringify!($item),
                    "` does not match its name in kscope-common"
                )
            );
        };
    };
}

/// What every kernel binary needs besides its programs: a panic handler (the
/// verifier rejects any program that could reach it; `core` needs one to link)
/// and the license section (GPL-compatible, so GPL-only helpers are usable).
///
/// It lives in the binaries, not in this library, because the library is also
/// built for the host as a build-dependency of `kscope`.
#[macro_export]
macro_rules! program_boilerplate {
    () => {
        #[cfg(target_arch = "bpf")]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(no_mangle)]
        #[unsafe(link_section = "license")]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
