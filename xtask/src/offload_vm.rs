//! `cargo xtask offload-test`: the hardware-offload path on netdevsim, the
//! kernel's software model of an offloading NIC, in a VM (this machine
//! cannot load modules, and no Debian kernel ships netdevsim).
//!
//! A Debian 12 (6.1) kernel's packages are downloaded with apt-get and
//! unpacked (not installed); netdevsim is built out of tree from the
//! matching linux-source against the matching headers; an initramfs holds
//! busybox, the `dispatcher` binary (the debug build, stripped) with its libraries, and
//! offload-vm-init.sh, which runs the checks; qemu boots it under software
//! emulation. Kernel, module and sources are cached between runs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{self, step, Counts};

/// The kernel series under test: Debian 12's 6.1. Within it the archive
/// keeps only recent builds (an exact pin breaks within months), so the
/// build is chosen by `pick_kernel` and recorded in the cache.
const SERIES: &str = "6.1";
const INIT: &str = include_str!("offload-vm-init.sh");

/// One build of the kernel: its ABI name (`6.1.0-47`) and package version.
struct Kernel {
    abi: String,
    version: String,
}

fn cache_root() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/faas-dispatcher/offload-vm"))
}

/// A kernel already cached with its netdevsim built (no download needed),
/// else the newest build whose image, headers, kbuild and source packages
/// are all in the archive at one version.
fn pick_kernel(root: &Path) -> Result<Kernel> {
    let mut cached: Vec<Kernel> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = fs::read_to_string(e.path().join("version")).ok()?;
            let abi = e.file_name().into_string().ok()?;
            e.path()
                .join(format!(
                    "src/linux-source-{SERIES}/drivers/net/netdevsim/netdevsim.ko"
                ))
                .exists()
                .then(|| Kernel {
                    abi,
                    version: version.trim().to_string(),
                })
        })
        .collect();
    cached.sort_by_key(|k| abi_number(&k.abi));
    if let Some(k) = cached.pop() {
        return Ok(k);
    }
    if let Some(k) = newest_complete_kernel() {
        return Ok(k);
    }
    step("no complete kernel in the package lists: apt-get update");
    cmd::run("apt-get", &["update", "-q"], &[])?;
    newest_complete_kernel().with_context(|| {
        format!("the archive has no linux-image-{SERIES}.0-N-amd64 whose headers, linux-kbuild-{SERIES} and linux-source-{SERIES} share its version")
    })
}

fn abi_number(abi: &str) -> u32 {
    abi.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn newest_complete_kernel() -> Option<Kernel> {
    let pattern = format!(
        "^linux-image-{}\\.0-[0-9]+-amd64$",
        SERIES.replace('.', "\\.")
    );
    let names = cmd::output("apt-cache", &["search", "--names-only", &pattern])?;
    let mut abis: Vec<String> = names
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .strip_prefix("linux-image-")?
                .strip_suffix("-amd64")
                .map(str::to_string)
        })
        .collect();
    abis.sort_by_key(|a| std::cmp::Reverse(abi_number(a)));
    abis.into_iter().find_map(|abi| {
        let version = versions(&format!("linux-image-{abi}-amd64"))
            .into_iter()
            .next()?;
        let companions = [
            format!("linux-headers-{abi}-amd64"),
            format!("linux-headers-{abi}-common"),
            format!("linux-kbuild-{SERIES}"),
            format!("linux-source-{SERIES}"),
        ];
        companions
            .iter()
            .all(|p| versions(p).contains(&version))
            .then_some(Kernel { abi, version })
    })
}

/// The versions of `package` the package lists offer, newest first.
fn versions(package: &str) -> Vec<String> {
    cmd::output("apt-cache", &["madison", package])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Some(l.split('|').nth(1)?.trim().to_string()))
        .collect()
}

/// Runs the checks; returns what passed and failed, and whether the whole
/// test succeeded.
pub fn run(workspace: &Path) -> (Counts, Result<()>) {
    let mut counts = Counts::default();
    let result = run_counted(workspace, &mut counts);
    (counts, result)
}

fn run_counted(workspace: &Path, counts: &mut Counts) -> Result<()> {
    crate::bootstrap::ensure_packages(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("/bin/busybox", "busybox-static"),
        ("cpio", "cpio"),
        ("make", "make"),
        ("gcc", "gcc"),
        ("strip", "binutils"),
    ])?;
    let mut kernel = pick_kernel(&cache_root()?)?;
    let module = match prepare(&kernel) {
        Ok(module) => module,
        Err(e) => {
            // Stale package lists name builds the archive no longer has.
            step(&format!(
                "{e:#}; refreshing the package lists (apt-get update) and choosing again"
            ));
            cmd::run("apt-get", &["update", "-q"], &[])?;
            kernel = newest_complete_kernel()
                .context("the archive has no complete Debian 12 kernel build")?;
            prepare(&kernel)?
        }
    };
    let abi = kernel.abi.as_str();
    let cache = cache_root()?.join(abi);
    let root = cache.join("root");
    // The debug build the cargo tests use (built already by `cargo xtask
    // test`), stripped: a release build cost 4-7 minutes of every run, and
    // in the VM the time goes to the kernel's verifier, not our code.
    step("the dispatcher (the debug build, stripped of its debug info)");
    cmd::cargo(&["build", "--quiet", "--package", "dispatcher"])?;
    let binary = cache.join("dispatcher");
    cmd::run(
        "strip",
        &[
            "-o",
            binary.to_str().expect("UTF-8 cache path"),
            workspace
                .join("target/debug/dispatcher")
                .to_str()
                .expect("UTF-8 workspace path"),
        ],
        &[],
    )?;
    let initrd = build_initramfs(abi, &cache, &root, &module, &binary)?;
    step(&format!("booting the VM (Debian kernel {abi}, {}; qemu, software emulation) and running the checks inside", kernel.version));
    let console = cache.join("console.log");
    let output = boot(
        &root.join(format!("boot/vmlinuz-{abi}-amd64")),
        &initrd,
        &console,
    )?;
    report(&output, &console, counts)
}

/// The kernel's packages downloaded and unpacked, and netdevsim built
/// against them (both cached): the module's path.
fn prepare(kernel: &Kernel) -> Result<PathBuf> {
    let abi = kernel.abi.as_str();
    let cache = cache_root()?.join(abi);
    let root = cache.join("root");
    let headers = root.join(format!("usr/src/linux-headers-{abi}-amd64"));
    let nsim_dir = cache.join(format!("src/linux-source-{SERIES}/drivers/net/netdevsim"));
    let module = nsim_dir.join("netdevsim.ko");
    if !module.exists() {
        fetch_kernel(kernel, &cache, &root)?;
        step("building netdevsim out of tree against the kernel's headers");
        fs::create_dir_all(cache.join("src"))?;
        cmd::run(
            "tar",
            &[
                "-xJf",
                root.join(format!("usr/src/linux-source-{SERIES}.tar.xz"))
                    .to_str()
                    .unwrap(),
                "-C",
                cache.join("src").to_str().unwrap(),
                "--wildcards",
                &format!("linux-source-{SERIES}/drivers/net/netdevsim/*"),
            ],
            &[],
        )?;
        // The headers' Makefile includes the common headers by absolute
        // path; they are unpacked here, not installed.
        let makefile = headers.join("Makefile");
        let common = root.join(format!("usr/src/linux-headers-{abi}-common/Makefile"));
        fs::write(&makefile, format!("include {}\n", common.display()))?;
        cmd::run(
            "make",
            &[
                "-s",
                "-C",
                headers.to_str().unwrap(),
                &format!("M={}", nsim_dir.display()),
                "CONFIG_NETDEVSIM=m",
                "modules",
            ],
            &[],
        )
        .context("building netdevsim failed")?;
        fs::write(cache.join("version"), &kernel.version)?;
    }
    Ok(module)
}

fn fetch_kernel(kernel: &Kernel, cache: &Path, root: &Path) -> Result<()> {
    let Kernel { abi, version } = kernel;
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    let packages = [
        format!("linux-image-{abi}-amd64={version}"),
        format!("linux-headers-{abi}-amd64={version}"),
        format!("linux-headers-{abi}-common={version}"),
        format!("linux-kbuild-{SERIES}={version}"),
        format!("linux-source-{SERIES}={version}"),
    ];
    if fs::read_dir(&debs)?.count() < packages.len() {
        step(&format!("downloading the Debian kernel {abi} ({version}): image, headers, kbuild, source (~220 MB)"));
        let mut args = vec!["-o", "APT::Sandbox::User=root", "download"];
        args.extend(packages.iter().map(String::as_str));
        let status = Command::new("apt-get")
            .args(&args)
            .current_dir(&debs)
            .status()
            .context("apt-get")?;
        if !status.success() {
            bail!("apt-get download of the kernel {abi} ({version}) failed: run `apt-get update` and try again");
        }
    }
    fs::create_dir_all(root)?;
    for deb in fs::read_dir(&debs)? {
        cmd::run(
            "dpkg-deb",
            &["-x", deb?.path().to_str().unwrap(), root.to_str().unwrap()],
            &[],
        )?;
    }
    Ok(())
}

/// busybox, the dispatcher and its libraries, the two modules, the config
/// and /init, as a gzipped newc cpio archive.
fn build_initramfs(
    abi: &str,
    cache: &Path,
    root: &Path,
    module: &Path,
    dispatcher: &Path,
) -> Result<PathBuf> {
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
        fs::copy(
            Path::new("/lib/x86_64-linux-gnu").join(lib),
            dir.join("lib/x86_64-linux-gnu").join(lib),
        )?;
    }
    fs::copy(
        "/lib64/ld-linux-x86-64.so.2",
        dir.join("lib64/ld-linux-x86-64.so.2"),
    )?;
    fs::copy(module, dir.join("lib/netdevsim.ko"))?;
    let psample = root.join(format!(
        "lib/modules/{abi}-amd64/kernel/net/psample/psample.ko"
    ));
    fs::copy(&psample, dir.join("lib/psample.ko"))
        .with_context(|| format!("{} missing from the image package", psample.display()))?;
    // netdevsim holds 2 entries per map: with `--hw-map-entries 2` SERVICES
    // has two slots, one function two workers.
    fs::write(
        dir.join("dispatcher.toml"),
        "[service]\naddresses = [\"10.0.0.1\"]\n",
    )?;
    fs::write(dir.join("init"), INIT)?;
    cmd::run("chmod", &["+x", dir.join("init").to_str().unwrap()], &[])?;
    let initrd = cache.join("initrd.gz");
    let script = format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
        dir.display(),
        initrd.display()
    );
    cmd::run("sh", &["-c", &script], &[])?;
    Ok(initrd)
}

/// The whole run's bound: generous (loading `dispatch_hw` alone takes
/// 20-25 s under emulation here, and a loaded machine is slower), but it
/// ends. Progress is reported as it happens, so a slow run shows as slow.
const VM_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Boots the VM with its console streamed to `console` (a file, never a
/// pipe: a pipe that nobody reads while qemu runs fills up with a long
/// console, such as a verifier log, and blocks the guest until the
/// deadline). Each check's line is echoed as it appears, with the time
/// since boot. Returns the whole console.
fn boot(kernel: &Path, initrd: &Path, console: &Path) -> Result<String> {
    let file = fs::File::create(console)
        .with_context(|| format!("cannot create {}", console.display()))?;
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "1024",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let started = Instant::now();
    let mut shown = 0;
    let status = loop {
        let status = child.try_wait()?;
        let text = String::from_utf8_lossy(&fs::read(console).unwrap_or_default()).into_owned();
        // Echo complete lines only.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete > shown {
            for line in text[shown..complete].lines() {
                echo(line, started.elapsed());
            }
            shown = complete;
        }
        if let Some(status) = status {
            break status;
        }
        if started.elapsed() > VM_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the VM did not power off within {} minutes; the end of its console ({}):\n{}",
                VM_DEADLINE.as_secs() / 60,
                console.display(),
                tail(&text, 60)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let text = String::from_utf8_lossy(&fs::read(console)?).into_owned();
    for line in text[shown..].lines() {
        echo(line, started.elapsed());
    }
    step(&format!(
        "the VM powered off after {:.0} s ({status})",
        started.elapsed().as_secs_f64()
    ));
    Ok(text)
}

/// Prints a check's result or timing line from the console as it comes.
fn echo(line: &str, since_boot: Duration) {
    if let Some(rest) = line.trim().strip_prefix("OFFLOAD-TEST ") {
        println!("[{:>6.1} s] {rest}", since_boot.as_secs_f64());
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Counts the checks (their lines were echoed as they came) and, for a
/// failure, prints the output the guest showed with it.
fn report(output: &str, console: &Path, counts: &mut Counts) -> Result<()> {
    let (mut passed, mut failed) = (0, 0);
    let mut in_failure = false;
    for line in output.lines() {
        if let Some(rest) = line.trim().strip_prefix("OFFLOAD-TEST ") {
            in_failure = rest.starts_with("FAIL ");
            if rest.starts_with("ok ") {
                passed += 1;
            } else if in_failure {
                failed += 1;
                println!("--- {rest}:");
            }
        } else if in_failure {
            println!("    {line}");
        }
    }
    println!(
        "offload-test: {passed} passed, {failed} failed (console: {})",
        console.display()
    );
    *counts = Counts { passed, failed };
    if !output.contains("OFFLOAD-TEST done") {
        bail!(
            "the VM did not finish its checks; the end of its console:\n{}",
            tail(output, 60)
        );
    }
    if failed > 0 || passed == 0 {
        bail!("offload-test failed");
    }
    Ok(())
}
