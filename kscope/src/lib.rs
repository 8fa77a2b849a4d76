//! kscope: an eBPF toolkit. The `kscope` binary is a thin CLI over this
//! library; integration tests drive both.
//!
//! Only what the binary, the integration tests and the benchmarks use is
//! `pub`; the rest is `pub(crate)` or private. The lint below flags a `pub`
//! item no outside user can reach. (It is set here, not in Cargo.toml:
//! `[lints] workspace = true` there admits no per-crate additions, and on the
//! test targets it would flag every helper in tests/common.)
#![warn(unreachable_pub)]

pub mod cgroup;
pub mod cli;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod firewall;
pub mod output;
pub mod probe_check;
pub mod profile;
pub mod sys;
pub mod top;
pub mod trace;
