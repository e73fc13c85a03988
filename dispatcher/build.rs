//! Builds the XDP object (dispatcher-ebpf) with the nightly toolchain and
//! bpf-linker, into OUT_DIR, where `data_plane::object()` embeds it.

use std::process::Command;

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    check_toolchain()?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .join("dispatcher-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "dispatcher-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
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
    let core_src = std::path::Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if !core_src.exists() {
        return Err(anyhow!("rust-src for the nightly toolchain is missing: {fix}"));
    }
    Ok(())
}
