//! `bench_xdp`: the benchmark floor. Returns XDP_PASS and does nothing else,
//! so `cargo xtask bench fw` can subtract the cost of BPF_PROG_TEST_RUN
//! itself. `bench_xdp_drop` drops everything: the live benchmark's
//! baseline, which must drop its flood as the firewalls do.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use kscope_common::fw::{PROG_BENCH_XDP, PROG_BENCH_XDP_DROP};
use kscope_ebpf::assert_symbol_name;

assert_symbol_name!(bench_xdp, PROG_BENCH_XDP);
assert_symbol_name!(bench_xdp_drop, PROG_BENCH_XDP_DROP);

#[xdp]
pub fn bench_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_xdp_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

kscope_ebpf::program_boilerplate!();
