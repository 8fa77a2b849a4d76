//! Types shared by kscope's kernel programs (`kscope-ebpf`) and user space
//! (`kscope`). Every type here is `#[repr(C)]` with explicit padding, so both
//! sides agree on the layout byte for byte.
//!
//! The `user` feature adds `aya::Pod` impls; the kernel side never enables it.
#![no_std]

pub mod fw;
pub mod probe_check;
pub mod profile;
pub mod trace;
