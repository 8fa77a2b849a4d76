//! Builds the kernel programs in `kscope-ebpf` with the nightly toolchain
//! (bpfel-unknown-none, build-std=core) and drops the objects in OUT_DIR, as
//! aya-template does. `cargo xtask setup` installs what this needs: rust-src
//! for nightly and bpf-linker.
//!
//! With `KSCOPE_EBPF_OBJECTS=DIR`, the objects are copied from DIR (another
//! profile's OUT_DIR) instead: they are built in release mode for the BPF
//! target whatever the host profile, so `cargo xtask dist` reuses the debug
//! build's rather than compiling them (and core) a second time.
use std::{env, fs, path::Path};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../kscope-ebpf");
    println!("cargo:rerun-if-env-changed=KSCOPE_EBPF_OBJECTS");
    if let Some(from) = env::var_os("KSCOPE_EBPF_OBJECTS") {
        let out = env::var_os("OUT_DIR").context("OUT_DIR not set")?;
        let bins = Path::new(root).join("src/bin");
        println!("cargo:rerun-if-changed={}", bins.display());
        for entry in fs::read_dir(&bins).context("listing kscope-ebpf/src/bin")? {
            let path = entry?.path();
            let Some(name) = path.file_stem() else {
                continue;
            };
            let src = Path::new(&from).join(name);
            println!("cargo:rerun-if-changed={}", src.display());
            fs::copy(&src, Path::new(&out).join(name))
                .with_context(|| format!("copying {}", src.display()))?;
        }
        return Ok(());
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "kscope-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
