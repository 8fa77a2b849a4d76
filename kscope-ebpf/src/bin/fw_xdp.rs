//! `fw_xdp`: the XDP packet counter.
//!
//! Counts every frame in per-CPU counters keyed by IP family and XDP action,
//! then passes it. Counting never changes a packet's fate: a frame too short
//! to carry an EtherType is counted as `other` and passed.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use kscope_common::fw::{Action, Counter, FwConfig, N_COUNTERS, counter_index};
use kscope_ebpf::net;

#[map(name = "FW_COUNTERS")]
static FW_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(N_COUNTERS, 0);

/// Written by user space at attach; pinned so `kscope fw status` can read it.
#[map(name = "FW_CONFIG")]
static FW_CONFIG: Array<FwConfig> = Array::with_max_entries(1, 0);

#[xdp]
pub fn fw_xdp(ctx: XdpContext) -> u32 {
    let family = net::family(&ctx);
    let len = (ctx.data_end() - ctx.data()) as u64;
    count(counter_index(family, Action::Pass), len);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count(index: u32, bytes: u64) {
    let Some(c) = FW_COUNTERS.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: the slot belongs to this CPU, and XDP programs on one CPU do not
    // preempt each other, so a plain read-modify-write cannot race.
    unsafe {
        (*c).packets += 1;
        (*c).bytes += bytes;
    }
}

kscope_ebpf::program_boilerplate!();
