//! `bench_xdp`: the benchmark floor. Returns XDP_PASS and does nothing else,
//! so `cargo xtask bench fw` can subtract the cost of BPF_PROG_TEST_RUN
//! itself. `bench_xdp_drop` drops everything: the live benchmark's
//! baseline, which must drop its flood as the firewalls do.
//! `bench_jiffies` returns the low 32 bits of `jiffies_64`: the clock the
//! firewall's rate limiter reads, for the differential test's model.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use kscope_common::fw::{PROG_BENCH_JIFFIES, PROG_BENCH_XDP, PROG_BENCH_XDP_DROP};
use kscope_ebpf::assert_symbol_name;

assert_symbol_name!(bench_xdp, PROG_BENCH_XDP);
assert_symbol_name!(bench_xdp_drop, PROG_BENCH_XDP_DROP);
assert_symbol_name!(bench_jiffies, PROG_BENCH_JIFFIES);

#[xdp]
pub fn bench_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_xdp_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_jiffies(_ctx: XdpContext) -> u32 {
    // SAFETY: a helper without preconditions.
    unsafe { aya_ebpf::helpers::bpf_jiffies64() as u32 }
}

kscope_ebpf::program_boilerplate!();
