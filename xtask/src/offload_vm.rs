//! `cargo xtask offload-test`: the hardware-offload path on netdevsim, the
//! kernel's software model of an offloading NIC, in a VM (this machine
//! cannot load modules, and no Debian kernel ships netdevsim).
//!
//! Pinned Debian 12 kernel packages are downloaded with apt-get and
//! unpacked (not installed); netdevsim is built out of tree from the
//! matching linux-source against the matching headers; an initramfs holds
//! busybox, the release `dispatcher` binary with its libraries, and
//! offload-vm-init.sh, which runs the checks; qemu boots it under software
//! emulation. Kernel, module and sources are cached between runs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{self, step, Counts};

/// The kernel under test: Debian 12's, pinned (the archive replaces
/// packages over time; a newer ABI number means a new pin here).
const ABI: &str = "6.1.0-47";
const VERSION: &str = "6.1.170-3";
const INIT: &str = include_str!("offload-vm-init.sh");

fn cache() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/faas-dispatcher/offload-vm").join(ABI))
}

/// Runs the checks; returns what passed and failed, and whether the whole
/// test succeeded.
pub fn run(workspace: &Path) -> (Counts, Result<()>) {
    let mut counts = Counts::default();
    let result = run_counted(workspace, &mut counts);
    (counts, result)
}

fn run_counted(workspace: &Path, counts: &mut Counts) -> Result<()> {
    crate::bootstrap::ensure_packages(&[("qemu-system-x86_64", "qemu-system-x86"), ("/bin/busybox", "busybox-static"), ("cpio", "cpio"), ("make", "make"), ("gcc", "gcc")])?;
    let cache = cache()?;
    let root = cache.join("root");
    let headers = root.join(format!("usr/src/linux-headers-{ABI}-amd64"));
    let nsim_dir = cache.join("src/linux-source-6.1/drivers/net/netdevsim");
    let module = nsim_dir.join("netdevsim.ko");
    if !module.exists() {
        fetch_kernel(&cache, &root)?;
        step("building netdevsim out of tree against the kernel's headers");
        fs::create_dir_all(cache.join("src"))?;
        cmd::run(
            "tar",
            &["-xJf", root.join("usr/src/linux-source-6.1.tar.xz").to_str().unwrap(), "-C", cache.join("src").to_str().unwrap(), "--wildcards", "linux-source-6.1/drivers/net/netdevsim/*"],
            &[],
        )?;
        // The headers' Makefile includes the common headers by absolute
        // path; they are unpacked here, not installed.
        let makefile = headers.join("Makefile");
        let common = root.join(format!("usr/src/linux-headers-{ABI}-common/Makefile"));
        fs::write(&makefile, format!("include {}\n", common.display()))?;
        cmd::run(
            "make",
            &["-s", "-C", headers.to_str().unwrap(), &format!("M={}", nsim_dir.display()), "CONFIG_NETDEVSIM=m", "modules"],
            &[],
        )
        .context("building netdevsim failed")?;
    }
    step("building the release dispatcher");
    cmd::cargo(&["build", "--quiet", "--release", "--package", "dispatcher"])?;
    let initrd = build_initramfs(&cache, &root, &module, &workspace.join("target/release/dispatcher"))?;
    step("booting the VM (qemu, software emulation) and running the checks inside");
    let output = boot(&root.join(format!("boot/vmlinuz-{ABI}-amd64")), &initrd)?;
    report(&output, counts)
}

fn fetch_kernel(cache: &Path, root: &Path) -> Result<()> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    let packages = [
        format!("linux-image-{ABI}-amd64={VERSION}"),
        format!("linux-headers-{ABI}-amd64={VERSION}"),
        format!("linux-headers-{ABI}-common={VERSION}"),
        format!("linux-kbuild-6.1={VERSION}"),
        format!("linux-source-6.1={VERSION}"),
    ];
    if fs::read_dir(&debs)?.count() < packages.len() {
        step(&format!("downloading the Debian kernel {ABI} ({VERSION}): image, headers, kbuild, source (~220 MB)"));
        let mut args = vec!["download"];
        args.extend(packages.iter().map(String::as_str));
        let status = Command::new("apt-get").args(&args).current_dir(&debs).status().context("apt-get")?;
        if !status.success() {
            bail!("apt-get download failed: run `apt-get update`; if {VERSION} left the archive, pin a newer ABI in xtask/src/offload_vm.rs");
        }
    }
    fs::create_dir_all(root)?;
    for deb in fs::read_dir(&debs)? {
        cmd::run("dpkg-deb", &["-x", deb?.path().to_str().unwrap(), root.to_str().unwrap()], &[])?;
    }
    Ok(())
}

/// busybox, the dispatcher and its libraries, the two modules, the config
/// and /init, as a gzipped newc cpio archive.
fn build_initramfs(cache: &Path, root: &Path, module: &Path, dispatcher: &Path) -> Result<PathBuf> {
    let dir = cache.join("initramfs");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    for sub in ["bin", "lib", "lib64", "lib/x86_64-linux-gnu", "etc"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox"))?;
    fs::copy(dispatcher, dir.join("bin/dispatcher"))?;
    for lib in ["libc.so.6", "libm.so.6", "libgcc_s.so.1"] {
        fs::copy(Path::new("/lib/x86_64-linux-gnu").join(lib), dir.join("lib/x86_64-linux-gnu").join(lib))?;
    }
    fs::copy("/lib64/ld-linux-x86-64.so.2", dir.join("lib64/ld-linux-x86-64.so.2"))?;
    fs::copy(module, dir.join("lib/netdevsim.ko"))?;
    let psample = root.join(format!("lib/modules/{ABI}-amd64/kernel/net/psample/psample.ko"));
    fs::copy(&psample, dir.join("lib/psample.ko")).with_context(|| format!("{} missing from the image package", psample.display()))?;
    fs::write(dir.join("dispatcher.toml"), format!("[service]\naddresses = [\"{}\"]\n", service_address_for_two_entries()))?;
    fs::write(dir.join("init"), INIT)?;
    cmd::run("chmod", &["+x", dir.join("init").to_str().unwrap()], &[])?;
    let initrd = cache.join("initrd.gz");
    let script = format!("cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}", dir.display(), initrd.display());
    cmd::run("sh", &["-c", &script], &[])?;
    Ok(initrd)
}

/// netdevsim holds 2 entries per map; SERVICES is a two-choice table of
/// 1,024 slots, and adding a service reads both of its slots. A service
/// address whose two slots are 0 or 1 fits (about one address in 260,000).
fn service_address_for_two_entries() -> String {
    for n in 1..(1u32 << 24) {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 | n);
        let e = dispatcher_common::maps::Endpoint {
            addr: ip.to_ipv6_mapped().octets(),
            port: dispatcher_common::protocol::DEFAULT_SERVICE_PORT.to_be_bytes(),
            _pad: [0; 2],
        };
        let (a, b) = dispatcher_common::maps::service_slots(&e);
        if a < 2 && b < 2 {
            return ip.to_string();
        }
    }
    panic!("no address of 10.0.0.0/8 has both service slots in 0..2")
}

fn boot(kernel: &Path, initrd: &Path) -> Result<String> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "1024", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    // Bounded: the checks take under a minute under emulation.
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            bail!("the VM did not power off within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn report(output: &str, counts: &mut Counts) -> Result<()> {
    let (mut passed, mut failed) = (0, 0);
    for line in output.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("OFFLOAD-TEST ") {
            println!("{rest}");
            if rest.starts_with("ok ") {
                passed += 1;
            } else if rest.starts_with("FAIL ") {
                failed += 1;
            }
        } else if line.starts_with("    ") || failed > 0 {
            println!("{line}");
        }
    }
    println!("offload-test: {passed} passed, {failed} failed");
    *counts = Counts { passed, failed };
    if !output.contains("OFFLOAD-TEST done") {
        bail!("the VM did not finish its checks; its console:\n{output}");
    }
    if failed > 0 || passed == 0 {
        bail!("offload-test failed");
    }
    Ok(())
}
