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

/// The profiler tests' workloads built without frame pointers, from
/// tests/fixtures, into OUT_DIR/fixtures (the tests embed them, so the
/// VMs, which have no compiler, run them too):
/// - `unwind_c`: C at -O2 -fomit-frame-pointer, with debug info;
/// - `unwind_c_nodebug`: the same without debug info;
/// - `unwind_c_stripped`: the same stripped of .symtab (-s); its
///   functions are exported (-rdynamic), so .dynsym still names them;
/// - `unwind_rust`: Rust with release settings (opt-level 3, no frame
///   pointers, as Rust's default).
///
/// A fixture that cannot be built (no C compiler) is left empty, and
/// its tests skip loudly.
fn build_fixtures() -> anyhow::Result<()> {
    let manifest = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let src = Path::new(&manifest).join("tests/fixtures");
    let out = Path::new(&env::var_os("OUT_DIR").context("OUT_DIR not set")?).join("fixtures");
    fs::create_dir_all(&out)?;
    let c = src.join("unwind_tree.c");
    let rs = src.join("unwind_tree.rs");
    println!("cargo:rerun-if-changed={}", c.display());
    println!("cargo:rerun-if-changed={}", rs.display());
    println!("cargo:rerun-if-env-changed=CC");
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let c_flags: &[&str] = &[
        "-O2",
        "-fomit-frame-pointer",
        "-fasynchronous-unwind-tables",
    ];
    let builds: [(&str, &str, Vec<&str>); 4] = [
        ("unwind_c", &cc, [c_flags, &["-g"]].concat()),
        ("unwind_c_nodebug", &cc, c_flags.to_vec()),
        (
            "unwind_c_stripped",
            &cc,
            [c_flags, &["-rdynamic", "-s"]].concat(),
        ),
        (
            "unwind_rust",
            &rustc,
            vec!["-C", "opt-level=3", "--edition", "2021"],
        ),
    ];
    for (name, compiler, flags) in builds {
        let exe = out.join(name);
        let input = if name == "unwind_rust" { &rs } else { &c };
        let built = std::process::Command::new(compiler)
            .args(&flags)
            .arg("-o")
            .arg(&exe)
            .arg(input)
            // Not the BPF or crt-static flags of the build around this.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .is_ok_and(|s| s.success());
        if !built {
            println!("cargo:warning=could not build the test fixture {name} with {compiler}");
            fs::write(&exe, b"")?;
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    build_fixtures()?;
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
