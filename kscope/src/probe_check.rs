//! `probe_check`: attach one kprobe, kretprobe or fentry program and count
//! how often it fires for one thread. It answers "can this kernel attach
//! and run this probe kind?" with a real program, not a guess from config
//! files, and names the missing feature when the answer is no.
//!
//! Minimum kernel: 4.17 for kprobes through perf_event_open's kprobe PMU
//! (aya's path), 5.5 for fentry (BPF trampolines, and BTF in the kernel).

use std::path::Path;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{FEntry, KProbe},
};
use kscope_common::probe_check::{
    GLOBAL_TARGET_TID, MAP_HITS, PROG_FENTRY, PROG_KPROBE, PROG_KRETPROBE, SLOT_FENTRY,
    SLOT_KPROBE, SLOT_KRETPROBE, TARGET_FN,
};
use thiserror::Error;

static PROBE_CHECK_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe_check"));

/// The probe kinds kscope's tracers can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Kprobe,
    Kretprobe,
    Fentry,
}

impl ProbeKind {
    /// The kernel feature this kind needs, as error messages name it.
    pub const fn feature(self) -> &'static str {
        match self {
            ProbeKind::Kprobe => "kprobe",
            ProbeKind::Kretprobe => "kretprobe",
            ProbeKind::Fentry => "fentry",
        }
    }

    fn program(self) -> &'static str {
        match self {
            ProbeKind::Kprobe => PROG_KPROBE,
            ProbeKind::Kretprobe => PROG_KRETPROBE,
            ProbeKind::Fentry => PROG_FENTRY,
        }
    }

    fn slot(self) -> u32 {
        match self {
            ProbeKind::Kprobe => SLOT_KPROBE,
            ProbeKind::Kretprobe => SLOT_KRETPROBE,
            ProbeKind::Fentry => SLOT_FENTRY,
        }
    }
}

/// Errors from [`ProbeCheck`].
#[derive(Debug, Error)]
pub enum ProbeError {
    /// The running kernel cannot attach this probe kind.
    #[error("{feature} is not available on this kernel: {reason}")]
    Unsupported {
        feature: &'static str,
        reason: String,
    },
    /// Anything else (a bug, or a resource limit).
    #[error("probe_check: {0}")]
    Other(String),
}

/// One attached probe; dropping it detaches and unloads.
pub struct ProbeCheck {
    ebpf: Ebpf,
    kind: ProbeKind,
}

/// Why kprobes cannot work here, if that can be told from the system
/// (no kprobe PMU and no kprobe_events file).
pub(crate) fn kprobe_missing_reason() -> Option<String> {
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe");
    let events = Path::new(crate::sys::TRACEFS).join("kprobe_events");
    let debug_events = Path::new("/sys/kernel/debug/tracing/kprobe_events");
    (!pmu.exists() && !events.exists() && !debug_events.exists()).then(|| {
        "the kernel was built without CONFIG_KPROBES (no kprobe PMU, no kprobe_events)".into()
    })
}

impl ProbeCheck {
    /// Loads the `kind` program, counting only thread `tid`, and attaches it
    /// to [`TARGET_FN`].
    ///
    /// # Errors
    /// [`ProbeError::Unsupported`] naming the feature when the kernel lacks
    /// it; [`ProbeError::Other`] otherwise.
    pub fn attach(kind: ProbeKind, tid: u32) -> Result<Self, ProbeError> {
        let feature = kind.feature();
        let unsupported = |reason: String| ProbeError::Unsupported { feature, reason };
        if kind != ProbeKind::Fentry
            && let Some(reason) = kprobe_missing_reason()
        {
            return Err(unsupported(reason));
        }
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_TARGET_TID, &tid, true)
            .load(PROBE_CHECK_OBJ)
            .map_err(|e| ProbeError::Other(format!("loading the object: {e:#}")))?;
        let prog = ebpf
            .program_mut(kind.program())
            .ok_or_else(|| ProbeError::Other(format!("{} missing", kind.program())))?;
        match kind {
            ProbeKind::Kprobe | ProbeKind::Kretprobe => {
                let p: &mut KProbe = prog
                    .try_into()
                    .map_err(|e| ProbeError::Other(format!("{e}")))?;
                p.load().map_err(|e| ProbeError::Other(format!("{e:#}")))?;
                p.attach(TARGET_FN, 0)
                    .map_err(|e| unsupported(format!("attaching to {TARGET_FN}: {e:#}")))?;
            }
            ProbeKind::Fentry => {
                let btf = Btf::from_sys_fs().map_err(|e| {
                    unsupported(format!("no kernel BTF (/sys/kernel/btf/vmlinux): {e}"))
                })?;
                let p: &mut FEntry = prog
                    .try_into()
                    .map_err(|e| ProbeError::Other(format!("{e}")))?;
                p.load(TARGET_FN, &btf).map_err(|e| {
                    unsupported(format!(
                        "the kernel refused a BPF trampoline program: {e:#}"
                    ))
                })?;
                p.attach()
                    .map_err(|e| unsupported(format!("attaching to {TARGET_FN}: {e:#}")))?;
            }
        }
        Ok(Self { ebpf, kind })
    }

    /// How often the probe has fired for the target thread, over all CPUs.
    pub fn hits(&self) -> Result<u64, ProbeError> {
        let map = self
            .ebpf
            .map(MAP_HITS)
            .ok_or_else(|| ProbeError::Other(format!("{MAP_HITS} missing")))?;
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|e| ProbeError::Other(e.to_string()))?;
        let values = arr
            .get(&self.kind.slot(), 0)
            .map_err(|e| ProbeError::Other(e.to_string()))?;
        Ok(values.iter().sum())
    }
}
