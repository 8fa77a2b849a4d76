//! Can this kernel attach and run kprobe, kretprobe and fentry programs?
//! Each test attaches one kind to `do_filp_open`, opens a path a known
//! number of times from one thread, and expects exactly that many hits.
//! On the host (no CONFIG_KPROBES, fentry refused) they skip loudly; in the
//! Debian 6.1 and 6.12 VMs they are required.

mod common;

use std::sync::mpsc;

use common::*;
use kscope::probe_check::{ProbeCheck, ProbeError, ProbeKind};

const OPENS: u64 = 7;

/// Attaches `kind` for a fresh thread that opens a missing path exactly
/// [`OPENS`] times once told to, and checks the count. A separate thread,
/// because this one opens files of its own (aya reads
/// /sys/devices/system/cpu/possible to size per-CPU reads).
fn fires_once_per_open(kind: ProbeKind) {
    require_root();
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let opener = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        tid_tx.send(tid).expect("send tid");
        if go_rx.recv().is_err() {
            return; // the probe could not attach; nothing to do
        }
        let path = format!(
            "/nonexistent/kscope-probe-check-{}-{tid}",
            std::process::id()
        );
        for _ in 0..OPENS {
            let err = std::fs::File::open(&path).expect_err("path must not exist");
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        }
    });
    let tid = tid_rx.recv().expect("opener's tid");
    let check = match ProbeCheck::attach(kind, tid) {
        Ok(c) => c,
        Err(ProbeError::Unsupported { feature, reason }) => {
            drop(go_tx);
            opener.join().expect("opener");
            return skip(feature, &reason);
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        check.hits().expect("read hits"),
        0,
        "the opener has not opened yet"
    );
    go_tx.send(()).expect("start the opener");
    opener.join().expect("opener");
    assert_eq!(check.hits().expect("read hits"), OPENS, "{kind:?} hits");
}

#[test]
fn kprobe_fires_once_per_open() {
    fires_once_per_open(ProbeKind::Kprobe);
}

#[test]
fn kretprobe_fires_once_per_open() {
    fires_once_per_open(ProbeKind::Kretprobe);
}

#[test]
fn fentry_fires_once_per_open() {
    fires_once_per_open(ProbeKind::Fentry);
}
