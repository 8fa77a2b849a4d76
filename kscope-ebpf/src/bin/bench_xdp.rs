//! `bench_xdp`: the benchmark floor. Returns XDP_PASS and does nothing else,
//! so `cargo xtask bench fw` can subtract the cost of BPF_PROG_TEST_RUN
//! itself.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use kscope_common::fw::PROG_BENCH_XDP;
use kscope_ebpf::assert_symbol_name;

assert_symbol_name!(bench_xdp, PROG_BENCH_XDP);

#[xdp]
pub fn bench_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

kscope_ebpf::program_boilerplate!();
