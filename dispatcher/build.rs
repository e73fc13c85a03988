//! Builds the XDP object (the `dispatcher-ebpf` crate) with the nightly
//! toolchain and bpf-linker into OUT_DIR, where `data_plane::object()`
//! embeds it, so the `dispatcher` binary runs on its own.
//!
//! This is aya-build's job, done by hand for one reason: the object needs
//! `-C target-cpu=v3` (fetch-and-add for round-robin turns, 32-bit ALU and
//! jumps) and misaligned word loads, and aya-build replaces all RUSTFLAGS
//! with its own.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _};

const PACKAGE: &str = "dispatcher-ebpf";
const TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    check_toolchain()?;
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .join(PACKAGE);
    let common_dir = ebpf_dir.with_file_name("dispatcher-common");
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    // A target directory of its own: cargo would otherwise wait on the lock
    // of the build that runs this script.
    let target_dir = out_dir.join("ebpf-target");

    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        "-Ctarget-cpu=v3",
        // Word loads of packet fields at any alignment (IP addresses follow
        // a 14-byte Ethernet header): one load instead of four byte loads
        // and three shifts. The kernel's verifier accepts them on every
        // architecture with efficient unaligned access (x86, arm64).
        "-Ctarget-feature=+allows-misaligned-mem-access",
    ]
    .join("\x1f");
    let output = Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            PACKAGE,
            "--bins",
            "--release",
        ])
        .args(["--target", TARGET, "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // The outer build's compiler settings must not leak into the nightly one.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .output()
        .context("cannot run `rustup run nightly cargo build` for the eBPF object")?;
    if !output.status.success() {
        bail!(
            "building the eBPF object failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir.join(TARGET).join("release").join(PACKAGE);
    std::fs::copy(&built, out_dir.join(PACKAGE))
        .with_context(|| format!("cannot copy {}", built.display()))?;
    Ok(())
}

/// Fails early, naming the fix, instead of deep inside a nested cargo run.
fn check_toolchain() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    let fix = "run `cargo xtask bootstrap` (or any `cargo xtask` command), which installs it";
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !matches!(linker, Ok(ref out) if out.status.success()) {
        return Err(anyhow!("bpf-linker is missing or does not run: {fix}"));
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("rustup not found: the eBPF build needs rustup's nightly toolchain")?;
    if !sysroot.status.success() {
        return Err(anyhow!("the nightly toolchain is not installed: {fix}"));
    }
    let sysroot = String::from_utf8_lossy(&sysroot.stdout);
    let core_src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if !core_src.exists() {
        return Err(anyhow!(
            "rust-src for the nightly toolchain is missing: {fix}"
        ));
    }
    Ok(())
}
