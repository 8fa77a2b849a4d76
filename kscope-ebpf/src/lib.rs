//! Helpers shared by kscope's kernel programs: bounds-checked packet access and
//! header parsers. Everything here must stay verifier-friendly: no loops
//! without a constant bound, no stack buffers over a few dozen bytes.
#![no_std]

pub mod net;
pub mod trace;

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
