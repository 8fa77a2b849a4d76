//! kscope: an eBPF toolkit. The `kscope` binary is a thin CLI over this
//! library; integration tests drive both.

pub mod cli;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod firewall;
pub mod output;
pub mod probe_check;
pub mod profile;
pub mod sys;
pub mod trace;
