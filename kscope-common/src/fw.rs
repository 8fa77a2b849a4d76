//! The XDP firewall and packet counter (`fw_xdp`).

/// Name of the XDP entry program, in the object file and in the kernel.
pub const PROG_FW_XDP: &str = "fw_xdp";
/// Per-CPU array of [`Counter`]s, indexed by [`counter_index`].
pub const MAP_COUNTERS: &str = "FW_COUNTERS";
/// Array of one [`FwConfig`], written by user space at attach.
pub const MAP_CONFIG: &str = "FW_CONFIG";

/// IP family a frame was classified as (after up to two VLAN tags).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4 = 0,
    Ipv6 = 1,
    /// Anything else: ARP, LLDP, frames too short to carry an EtherType.
    Other = 2,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Ipv4, Family::Ipv6, Family::Other];

    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
            Family::Other => "other",
        }
    }
}

/// Number of [`Family`] values.
pub const N_FAMILIES: u32 = 3;

/// XDP verdicts, numbered as in the kernel's `enum xdp_action`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Aborted = 0,
    Drop = 1,
    Pass = 2,
    Tx = 3,
    Redirect = 4,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Aborted,
        Action::Drop,
        Action::Pass,
        Action::Tx,
        Action::Redirect,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Action::Aborted => "aborted",
            Action::Drop => "drop",
            Action::Pass => "pass",
            Action::Tx => "tx",
            Action::Redirect => "redirect",
        }
    }
}

/// Number of [`Action`] values.
pub const N_ACTIONS: u32 = 5;

/// Number of slots in [`MAP_COUNTERS`].
pub const N_COUNTERS: u32 = N_FAMILIES * N_ACTIONS;

/// Slot of (`family`, `action`) in [`MAP_COUNTERS`].
#[inline(always)]
pub const fn counter_index(family: Family, action: Action) -> u32 {
    family as u32 * N_ACTIONS + action as u32
}

/// One per-CPU counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    /// Bytes of the whole frame as XDP sees it: from the Ethernet header to the
    /// end of the payload, FCS excluded.
    pub bytes: u64,
}

/// XDP attach mode as recorded in [`FwConfig::mode`].
pub const MODE_SKB: u32 = 1;
pub const MODE_NATIVE: u32 = 2;

/// Per-interface settings, pinned with the program so a later kscope
/// invocation can describe what an earlier one attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwConfig {
    /// Layout version of this struct; bump when fields change.
    pub version: u32,
    /// Interface index at attach time.
    pub ifindex: u32,
    /// [`MODE_SKB`] or [`MODE_NATIVE`].
    pub mode: u32,
    pub _pad: u32,
    /// Wall-clock attach time, nanoseconds since the Unix epoch.
    pub attached_at_unix_ns: u64,
}

/// Current value of [`FwConfig::version`].
pub const FW_CONFIG_VERSION: u32 = 1;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are #[repr(C)], made of integers only, with no implicit padding.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: as above; `_pad` makes the padding explicit.
    unsafe impl aya::Pod for super::FwConfig {}
}
