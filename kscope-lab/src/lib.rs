//! kscope's network test lab: what `kscope demo`, the integration tests and
//! the benchmarks make their networks and traffic with. Not part of the
//! product, and independent of it: kscope depends on this crate, never the
//! other way round. The lab knows nothing of kscope's programs; whoever
//! attaches one to a lab interface detaches it.
//!
//! - [`netlab`]: two private network namespaces joined by a veth pair, a
//!   traffic generator that can only send inside them, a packet observer;
//! - [`frame`]: Ethernet frames built byte by byte;
//! - [`memlock`]: what the kernel accounts to a BPF map (for the
//!   benchmarks);
//! - [`ns`]: the network-namespace calls the lab makes.

pub mod frame;
pub mod memlock;
pub mod netlab;
pub mod ns;
