//! The toolchain the eBPF build needs, installed by the project itself:
//!
//! 1. the nightly toolchain's `rust-src` (the BPF target builds `core`);
//! 2. `bpf-linker` (pinned), built from crates.io against the nightly's own
//!    libLLVM, because no system LLVM of that version exists. llvm-sys
//!    looks for `libLLVM.so` under `$LLVM_PREFIX/lib`; the nightly ships it
//!    only under its SONAME, so a lasting prefix directory links both names
//!    to it. bpf-linker's build sets an rpath to that directory, so the
//!    installed linker runs outside rustup too.
//!
//! Each step is skipped when already done, announced when it runs, and
//! fails with the step's name and the fix.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::cmd::{self, output, step};

const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";
/// cargo-deb builds the Debian package (`cargo xtask package`).
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn ensure_toolchain() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)?;
    // etcd-client's build compiles etcd's gRPC protocol with protoc.
    ensure_packages(&[("protoc", "protobuf-compiler")])
}

/// cargo-deb, the pinned version, installed with `cargo install` if missing
/// (about 3 minutes the first time).
pub fn ensure_cargo_deb() -> Result<()> {
    let cargo_deb = cargo_bin_dir().join("cargo-deb");
    let version = output(cargo_deb.to_str().unwrap_or("cargo-deb"), &["--version"]);
    if version.is_some_and(|v| v.contains(CARGO_DEB_VERSION)) {
        return Ok(());
    }
    step(&format!(
        "bootstrap: installing cargo-deb {CARGO_DEB_VERSION} (builds the Debian package)"
    ));
    cmd::cargo(&[
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ])
    .context(
        "bootstrap: cargo-deb failed to install: run `cargo install cargo-deb --locked` and retry",
    )
}

/// `$CARGO_HOME/bin` (default `~/.cargo/bin`): where `cargo install` puts
/// bpf-linker.
pub fn cargo_bin_dir() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".cargo"));
    home.join("bin")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = output("rustup", &["run", NIGHTLY, "rustc", "--print", "sysroot"]).ok_or_else(|| {
        anyhow!(
            "bootstrap: the `{NIGHTLY}` toolchain is not installed (the eBPF programs build only with it): \
             install it with `rustup toolchain install {NIGHTLY} --profile minimal`"
        )
    })?;
    Ok(PathBuf::from(sysroot))
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    if sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        return Ok(());
    }
    step("bootstrap: installing rust-src for the nightly toolchain");
    cmd::run("rustup", &["component", "add", "rust-src", "--toolchain", NIGHTLY], &[])
        .context("bootstrap: rust-src failed to install: run `rustup component add rust-src --toolchain nightly` and retry")
}

/// Is the installed bpf-linker the pinned version, and does it start (its
/// libLLVM resolves)?
fn bpf_linker_ok() -> bool {
    let linker = cargo_bin_dir().join("bpf-linker");
    let version = output(linker.to_str().unwrap_or("bpf-linker"), &["--version"]);
    version.is_some_and(|v| v.ends_with(BPF_LINKER_VERSION))
}

fn ensure_bpf_linker(sysroot: &Path) -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    let (major, soname) = nightly_llvm(sysroot)?;
    let prefix = llvm_prefix(sysroot, &soname)?;
    step(&format!(
        "bootstrap: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} \
         (prefix {}); this takes a few minutes, once",
        prefix.display()
    ));
    let features = format!("llvm-{major}");
    cmd::run(
        "cargo",
        &[
            "install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force",
            "--no-default-features", "--features", &features,
        ],
        &[("LLVM_PREFIX", prefix.clone().into_os_string())],
    )
    .with_context(|| {
        format!(
            "bootstrap: building bpf-linker failed. It links against {}/lib/libLLVM.so; check that link, \
             that a C compiler (cc) is installed, and that crates.io is reachable, then rerun `cargo xtask bootstrap`",
            prefix.display()
        )
    })?;
    if !bpf_linker_ok() {
        bail!(
            "bootstrap: bpf-linker was installed but does not run: check `ldd {}`",
            cargo_bin_dir().join("bpf-linker").display()
        );
    }
    Ok(())
}

/// The nightly's LLVM major version (from `rustc -vV`) and the file name of
/// its libLLVM (which is also the library's SONAME).
fn nightly_llvm(sysroot: &Path) -> Result<(String, String)> {
    let vv = output("rustup", &["run", NIGHTLY, "rustc", "-vV"]).context("rustc -vV")?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .ok_or_else(|| anyhow!("bootstrap: `rustc +nightly -vV` printed no LLVM version"))?;
    let major = version.split('.').next().unwrap_or_default().to_string();
    let lib = sysroot.join("lib");
    let soname = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .ok_or_else(|| {
            anyhow!("bootstrap: the nightly has no libLLVM.so.* in {} (a nightly without the llvm library?)", lib.display())
        })?;
    Ok((major, soname))
}

/// A lasting directory whose lib/ links `libLLVM.so` and the SONAME to the
/// nightly's libLLVM. Named after the SONAME, so a new nightly gets its own.
fn llvm_prefix(sysroot: &Path, soname: &str) -> Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".cache"));
    let prefix = cache
        .join("faas-dispatcher")
        .join(format!("llvm-prefix-{soname}"));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let target = sysroot.join("lib").join(soname);
    for name in ["libLLVM.so", soname] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))?;
    }
    Ok(prefix)
}

/// Tools the namespace testbeds call: `ip` (iproute2), `ethtool`,
/// memcached (for the `kv` function's tests), etcd with etcdctl (the
/// cluster tests run a real one), openssl and sysctl, and Debian's Python
/// with venv (the hosting tests' function servers and handlers, which run
/// as `nobody` and so cannot use a Python under /root; the Python client's
/// tests). Installed with apt-get when missing.
pub fn ensure_system_tools() -> Result<()> {
    ensure_packages(&[
        ("ip", "iproute2"),
        ("ethtool", "ethtool"),
        ("memcached", "memcached"),
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        // The cluster tests' certificates, and the router's sysctls.
        ("openssl", "openssl"),
        ("sysctl", "procps"),
        ("/usr/bin/python3", "python3"),
        // Debian 12's Python is 3.11; its venv module comes apart.
        ("/usr/lib/python3.11/ensurepip", "python3-venv"),
        // A real Prometheus scrapes the daemon (e2e_prometheus), through
        // curl inside the testbed's namespace; promtool lints the page.
        ("prometheus", "prometheus"),
        ("promtool", "prometheus"),
        ("curl", "curl"),
        // The package test: systemd-analyze verifies the units (and the
        // man pages their Documentation= names).
        ("systemd-analyze", "systemd"),
        ("man", "man-db"),
    ])
}

/// Installs with apt-get the packages of those (command or absolute path,
/// package) pairs whose command or file is missing.
pub fn ensure_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| {
            if bin.starts_with('/') {
                !std::path::Path::new(bin).exists()
            } else {
                output("sh", &["-c", &format!("command -v {bin}")]).is_none()
            }
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing {} with apt-get", missing.join(", ")));
    cmd::run("apt-get", &["update", "-q"], &[])
        .and_then(|_| {
            let mut args = vec!["install", "-y", "-q"];
            args.extend(&missing);
            cmd::run(
                "apt-get",
                &args,
                &[("DEBIAN_FRONTEND", "noninteractive".into())],
            )
        })
        .with_context(|| {
            format!(
                "cannot install {}: install them by hand (apt-get install {0})",
                missing.join(" ")
            )
        })
}
