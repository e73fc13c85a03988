//! Developer tasks: `cargo xtask <task>`.
//!
//! - `bootstrap`: install what the eBPF build needs (rust-src for the
//!   nightly, bpf-linker built against the nightly's own LLVM);
//! - `build`: bootstrap, then build the `dispatcher` binary (the XDP object
//!   is built by its build.rs and embedded);
//! - `test`: everything above, the system tools the testbeds use, the
//!   Debian package (its test installs it), then every test (needs root);
//! - `run`: with `--iface`, `dispatcher run ARGS`; without, a demo on a
//!   namespace testbed;
//! - `package`: the Debian package (cargo-deb), with the systemd units,
//!   example config, man pages and completions.

mod bootstrap;
mod cmd;
mod offload_vm;

use std::{ffi::OsString, path::PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install rust-src for the nightly and bpf-linker, if missing.
    Bootstrap,
    /// Build the dispatcher (and the XDP object it embeds).
    Build,
    /// Run every test: unit, BPF_PROG_TEST_RUN and namespace testbeds (root).
    Test {
        /// Extra arguments for `cargo test` (a test name filter, --nocapture, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Benchmark the data plane in the kernel: ns per packet per policy
    /// beside yardsticks, and how it scales (root; a benchmark, not a test).
    BenchXdp,
    /// Benchmark the control plane: heartbeat-to-map latency and worker
    /// add/remove throughput (root; a benchmark, not a test).
    BenchControl,
    /// Cluster mode: from a membership change in etcd to the maps of three
    /// dispatchers (registration, removal, lease expiry), and churn under
    /// load (root; about a minute; a benchmark, not a test).
    BenchCluster,
    /// What each hosting mode (exec, warm, HTTP upstream) adds to a
    /// request through XDP over the in-process echo, at 1K and 10K req/s;
    /// writes docs/benchmarks/bench-hosting.md (root; about 5 minutes;
    /// installs nginx with apt-get if missing).
    BenchHosting,
    /// The dispatcher beside the direct path, a minimal XDP rewrite, user
    /// mode and nginx on a namespace testbed; writes docs/benchmarks/bench.md
    /// (root; about 7 minutes; installs nginx with apt-get if missing).
    Bench,
    /// The hardware-offload path on netdevsim in a VM (qemu): bind, attach
    /// in hw mode, CLI reads, detach, and the device's refusals. Downloads
    /// a pinned Debian kernel (~220 MB, cached) the first time.
    OffloadTest,
    /// Build the Debian package: the release binary, the systemd units
    /// (dispatcher@IFACE, dispatcher-worker@NAME), an example config, man
    /// pages, shell completions, the Grafana dashboard and alert rules;
    /// writes target/package/dispatcher_VERSION_ARCH.deb.
    Package,
    /// `dispatcher run ARGS` with the privileges it needs; with no --iface,
    /// a demo on a namespace testbed (`--cluster`: three dispatchers
    /// behind ECMP sharing a membership in etcd).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Bootstrap => bootstrap::ensure_toolchain(),
        Task::Build => build(),
        Task::Test { args } => test(args),
        Task::Run { args } => run_dispatcher(args),
        Task::BenchXdp => bench_xdp(),
        Task::BenchControl => bench_control(),
        Task::BenchCluster => bench_cluster(),
        Task::BenchHosting => bench_hosting(),
        Task::Bench => bench(),
        Task::OffloadTest => offload_vm::run(&workspace_root()).1,
        Task::Package => package().map(|deb| println!("{}", deb.display())),
    }
}

/// The workspace root (xtask lives one below it).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn dispatcher_bin() -> PathBuf {
    workspace_root().join("target/debug/dispatcher")
}

fn build() -> Result<()> {
    bootstrap::ensure_toolchain()?;
    cmd::step("building the dispatcher and its XDP object");
    cmd::cargo(&["build", "--package", "dispatcher"])
}

/// Builds the Debian package; its path.
fn package() -> Result<PathBuf> {
    bootstrap::ensure_toolchain()?;
    bootstrap::ensure_cargo_deb()?;
    let root = workspace_root();
    cmd::step("building the release binary");
    cmd::cargo(&[
        "build",
        "--release",
        "--package",
        "dispatcher",
        "--bin",
        "dispatcher",
    ])?;
    // Man pages and completions come from the binary's own clap
    // definitions, so they list exactly the flags it takes
    // (packaging/generated/, not in git).
    let generated = root.join("packaging/generated");
    let _ = std::fs::remove_dir_all(&generated);
    std::fs::create_dir_all(generated.join("completions"))?;
    let release = root.join("target/release/dispatcher");
    let man = generated.join("man");
    cmd::run(
        release.to_str().unwrap(),
        &[OsString::from("manpages"), man.into_os_string()],
        &[],
    )?;
    for (shell, file) in [
        ("bash", "dispatcher.bash"),
        ("zsh", "_dispatcher"),
        ("fish", "dispatcher.fish"),
    ] {
        let script = std::process::Command::new(&release)
            .args(["completions", shell])
            .output()
            .context("dispatcher completions")?;
        if !script.status.success() {
            bail!(
                "dispatcher completions {shell} failed: {}",
                String::from_utf8_lossy(&script.stderr)
            );
        }
        std::fs::write(generated.join("completions").join(file), script.stdout)?;
    }
    let out = root.join("target/package");
    let _ = std::fs::remove_dir_all(&out);
    cmd::step("building the Debian package (cargo-deb)");
    cmd::cargo(&[
        "deb",
        "--package",
        "dispatcher",
        "--no-build",
        "--output",
        out.to_str().unwrap(),
    ])?;
    std::fs::read_dir(&out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| anyhow::anyhow!("cargo deb wrote no .deb into {}", out.display()))
}

fn require_root(task: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("`cargo xtask {task}` loads XDP programs and creates network namespaces: run it as root (sudo -E cargo xtask {task})");
    }
    Ok(())
}

fn test(args: Vec<OsString>) -> Result<()> {
    require_root("test")?;
    build()?;
    bootstrap::ensure_system_tools()?;
    // tests/tests/package.rs installs it with dpkg.
    let deb = package()?;
    cmd::step("running every test");
    let filtered = !args.is_empty();
    // Every test binary runs even after one fails: a run reports all of
    // what is broken, not the first of it.
    let mut cargo_args: Vec<OsString> = vec!["test".into(), "--no-fail-fast".into()];
    cargo_args.extend(args);
    let (mut counts, result) = cmd::cargo_test(
        &cargo_args,
        &[
            ("DISPATCHER_BIN", dispatcher_bin().into_os_string()),
            ("DISPATCHER_DEB", deb.into_os_string()),
        ],
    );
    // The netdevsim VM test runs with the full suite (a filter selects
    // cargo tests only).
    let offload = if filtered {
        Ok(())
    } else {
        cmd::step("the offload test: netdevsim in a VM (`cargo xtask offload-test` runs it alone)");
        let (vm, result) = offload_vm::run(&workspace_root());
        counts.passed += vm.passed;
        counts.failed += vm.failed;
        result
    };
    println!("{} passed, {} failed", counts.passed, counts.failed);
    result.and(offload)
}

fn run_dispatcher(args: Vec<OsString>) -> Result<()> {
    require_root("run")?;
    build()?;
    if args
        .iter()
        .any(|a| a == "--iface" || a.to_string_lossy().starts_with("--iface="))
    {
        let mut full: Vec<OsString> = vec!["run".into()];
        full.extend(args);
        return cmd::exec(&dispatcher_bin(), &full);
    }
    let demo = match args.as_slice() {
        [] => "demo",
        [one] if one == "--cluster" => "demo_cluster",
        _ => bail!("without --iface, `cargo xtask run` runs the demo (`--cluster`: the cluster-mode demo) and takes no other arguments (got {args:?})"),
    };
    bootstrap::ensure_system_tools()?;
    cmd::step("building and running the demo testbed");
    cmd::cargo_with_env(
        &["run", "--quiet", "--package", "tests", "--bin", demo],
        &[("DISPATCHER_BIN", dispatcher_bin().into_os_string())],
    )
}

fn bench_xdp() -> Result<()> {
    require_root("bench-xdp")?;
    build()?;
    cmd::step("benchmarking the data plane (BPF_PROG_TEST_RUN); takes about a minute");
    cmd::cargo(&["run", "--quiet", "--package", "tests", "--bin", "bench_xdp"])
}

fn bench() -> Result<()> {
    require_root("bench")?;
    bootstrap::ensure_system_tools()?;
    if let Err(e) = bootstrap::ensure_packages(&[
        ("nginx", "nginx"),
        (
            "/usr/lib/nginx/modules/ngx_stream_module.so",
            "libnginx-mod-stream",
        ),
    ]) {
        // The bench runs without it and says so on its page.
        eprintln!("xtask: {e:#}");
    }
    cmd::step("building the release binaries");
    cmd::cargo(&["build", "--quiet", "--release", "--package", "dispatcher"])?;
    cmd::step("benchmarking: six contenders, five repetitions, interleaved; about 7 minutes");
    run_release_bin("bench")
}

fn bench_control() -> Result<()> {
    require_root("bench-control")?;
    build()?;
    cmd::step("benchmarking the control plane");
    // Release: this measures user-space code.
    run_release_bin("bench_control")
}

fn bench_cluster() -> Result<()> {
    require_root("bench-cluster")?;
    build()?;
    bootstrap::ensure_system_tools()?;
    cmd::step("building the release binaries");
    cmd::cargo(&["build", "--quiet", "--release", "--package", "dispatcher"])?;
    cmd::step("benchmarking cluster mode: etcd, three dispatchers, one worker");
    run_release_bin("bench_cluster")
}

fn bench_hosting() -> Result<()> {
    require_root("bench-hosting")?;
    build()?;
    bootstrap::ensure_system_tools()?;
    bootstrap::ensure_packages(&[("nginx", "nginx")])?;
    cmd::step("building the release binaries");
    cmd::cargo(&["build", "--quiet", "--release", "--package", "dispatcher"])?;
    cmd::step("benchmarking the hosting modes through XDP");
    run_release_bin("bench_hosting")
}

/// Runs a release build of one of the tests crate's binaries.
fn run_release_bin(name: &str) -> Result<()> {
    cmd::cargo(&[
        "run",
        "--quiet",
        "--release",
        "--package",
        "tests",
        "--bin",
        name,
    ])
}
