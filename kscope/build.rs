//! Builds the kernel programs in `kscope-ebpf` with the nightly toolchain
//! (bpfel-unknown-none, build-std=core) and drops the objects in OUT_DIR, as
//! aya-template does. `cargo xtask setup` installs what this needs: rust-src
//! for nightly and bpf-linker.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../kscope-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "kscope-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
