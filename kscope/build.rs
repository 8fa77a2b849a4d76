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
/// - `mixed_lib_nofp/`, `mixed_exe_nofp/`: unwind_mixed.c's executable
///   and its library `libunwind_mixed.so` (found through `$ORIGIN`), the
///   library (or the executable) without frame pointers, the other with
///   frame pointers and no unwind tables.
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
    println!(
        "cargo:rerun-if-changed={}",
        src.join("unwind_spin.h").display()
    );
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
    build_mixed(&cc, &src, &out)?;
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

/// The two mixed-stack fixtures (see [`build_fixtures`]).
fn build_mixed(cc: &str, src: &Path, out: &Path) -> anyhow::Result<()> {
    let lib_c = src.join("unwind_mixed_lib.c");
    let exe_c = src.join("unwind_mixed.c");
    println!("cargo:rerun-if-changed={}", lib_c.display());
    println!("cargo:rerun-if-changed={}", exe_c.display());
    let nofp: &[&str] = &[
        "-O2",
        "-fomit-frame-pointer",
        "-fasynchronous-unwind-tables",
    ];
    // With frame pointers in leaf functions too, as distributions that
    // build with frame pointers do.
    let fp: &[&str] = &[
        "-O2",
        "-fno-omit-frame-pointer",
        "-mno-omit-leaf-frame-pointer",
        "-DFORCE_FRAME",
        "-fno-asynchronous-unwind-tables",
        "-fno-unwind-tables",
    ];
    for (dir, lib_flags, exe_flags) in [("mixed_lib_nofp", nofp, fp), ("mixed_exe_nofp", fp, nofp)]
    {
        let dir = out.join(dir);
        fs::create_dir_all(&dir)?;
        let lib = dir.join("libunwind_mixed.so");
        let exe = dir.join("unwind_mixed");
        let run = |args: &mut std::process::Command| {
            args.env_remove("RUSTFLAGS")
                .status()
                .is_ok_and(|s| s.success())
        };
        let built = run(std::process::Command::new(cc)
            .args(lib_flags)
            .args(["-shared", "-fPIC", "-Wl,-soname,libunwind_mixed.so", "-o"])
            .arg(&lib)
            .arg(&lib_c))
            && run(std::process::Command::new(cc)
                .args(exe_flags)
                .arg("-o")
                .arg(&exe)
                .arg(&exe_c)
                .arg(format!("-L{}", dir.display()))
                .args(["-lunwind_mixed", "-Wl,-rpath,$ORIGIN"]));
        if !built {
            println!(
                "cargo:warning=could not build the test fixture {}",
                dir.display()
            );
            fs::write(&lib, b"")?;
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
