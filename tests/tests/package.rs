//! The Debian package (`cargo xtask package`; `cargo xtask test` builds it
//! and names it in DISPATCHER_DEB): installed with dpkg on this machine, its
//! units pass `systemd-analyze verify`, the installed binary runs on a
//! namespace testbed exactly as its unit's ExecStart says, talking to a
//! service manager's notify socket the way systemd would (READY only once
//! the data plane is attached, RELOADING and READY around ExecReload's
//! SIGHUP, STOPPING), a crash is restarted by adopting the pinned data
//! plane, which dispatched meanwhile; the worker unit's command serves and
//! notifies too; then `dpkg --purge` leaves nothing behind. Needs root: run
//! through `cargo xtask test`.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use tests::{bed::Bed, testbed::Process};

const INSTALLED: &str = "/usr/bin/dispatcher";
const UNIT: &str = "/lib/systemd/system/dispatcher@.service";
const WORKER_UNIT: &str = "/lib/systemd/system/dispatcher-worker@.service";
/// The config the unit reads for instance eth0 (the testbed's interface).
const INSTANCE_CONFIG: &str = "/etc/dispatcher/eth0.toml";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Purges the package and the instance config however the test ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(INSTANCE_CONFIG);
        let _ = run("dpkg", &["--purge", "dispatcher"]);
    }
}

/// A service manager's notify socket, as systemd gives a Type=notify
/// service in NOTIFY_SOCKET.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn new(path: PathBuf) -> NotifySocket {
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket { path, socket }
    }

    /// The next message that has `wanted` among its lines, within
    /// `timeout`; every message before it is returned too.
    fn wait_for(&self, wanted: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {wanted} within {timeout:?}; got {seen:?}"
            );
            self.socket.set_read_timeout(Some(left)).unwrap();
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = message.lines().any(|l| l == wanted);
                seen.push(message);
                if done {
                    return seen;
                }
            }
        }
    }

    fn env(&self) -> String {
        format!("NOTIFY_SOCKET={}", self.path.display())
    }
}

/// The unit's ExecStart with the instance name put in, split into words
/// (the unit's $DISPATCHER_ARGS is empty in the packaged
/// /etc/default/dispatcher).
fn exec_start(unit: &str, instance: &str) -> Vec<String> {
    let text = std::fs::read_to_string(unit).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    line.split_whitespace()
        .filter(|w| !w.starts_with('$'))
        .map(|w| w.replace("%i", instance))
        .collect()
}

/// Starts the unit's command in the dispatcher's namespace with a notify
/// socket, as systemd would.
fn start_as_the_unit(bed: &Bed, name: &str, notify: &NotifySocket, words: &[String]) -> Process {
    let mut args = vec![notify.env()];
    args.extend(words.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    bed.spawn(&bed.dsp, name, Path::new("env"), &args)
}

fn signal(process: &Process, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(process.pid() as i32), signal).unwrap();
}

#[test]
fn the_package_installs_runs_under_its_units_contract_and_purges_cleanly() {
    let deb = std::env::var("DISPATCHER_DEB").expect(
        "DISPATCHER_DEB names the package to test: run through `cargo xtask test`, or `cargo xtask package` and set it",
    );
    assert!(
        !run("dpkg", &["-s", "dispatcher"]).status.success(),
        "a dispatcher package is already installed on this machine: the test installs and purges its own (dpkg --purge dispatcher first)"
    );
    let _installed = Installed;
    ok("dpkg", &["--install", &deb]);

    // What the package puts where.
    for path in [
        INSTALLED,
        UNIT,
        WORKER_UNIT,
        "/etc/dispatcher/example.toml",
        "/etc/dispatcher/worker-example.env",
        "/etc/default/dispatcher",
        "/usr/share/man/man1/dispatcher-run.1.gz",
        "/usr/share/bash-completion/completions/dispatcher",
        "/usr/share/dispatcher/monitoring/alerts.yml",
        "/usr/share/dispatcher/monitoring/grafana-dashboard.json",
    ] {
        assert!(Path::new(path).exists(), "the package has no {path}");
    }
    let version = ok(INSTALLED, &["--version"]);
    assert!(
        version.starts_with("dispatcher "),
        "installed binary: {version}"
    );
    assert!(ok("man", &["-w", "dispatcher-workers-add"]).contains("dispatcher-workers-add.1"));
    let conffiles = ok(
        "dpkg-query",
        &["--showformat=${Conffiles}", "--show", "dispatcher"],
    );
    assert!(
        conffiles.contains("/etc/dispatcher/example.toml")
            && conffiles.contains("/etc/default/dispatcher"),
        "conffiles: {conffiles}"
    );

    // The units are what systemd accepts, as installed.
    let verify = run("systemd-analyze", &["verify", UNIT, WORKER_UNIT]);
    assert!(
        verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let unit = std::fs::read_to_string(UNIT).unwrap();
    for hardening in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_RESOURCE",
    ] {
        assert!(unit.contains(hardening), "the unit lacks {hardening}");
    }

    // A testbed: the installed worker command and the installed daemon,
    // each with a notify socket.
    let bed = Bed::new("pkg", 1);
    let worker = &bed.workers[0];
    let worker_notify = NotifySocket::new(bed.dir().join("worker.notify"));
    let worker_words: Vec<String> = exec_start(WORKER_UNIT, "test")
        .into_iter()
        .chain([
            "--listen".to_string(),
            format!("{}:9000", worker.ip),
            "--function".into(),
            "1=echo".into(),
        ])
        .collect();
    let mut args = vec![worker_notify.env()];
    args.extend(worker_words);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let worker_process = bed.spawn(worker, "worker", Path::new("env"), &args);
    worker_notify.wait_for("READY=1", Duration::from_secs(20));

    std::fs::write(
        INSTANCE_CONFIG,
        tests::testbed::config(bed.dsp.ip, &[(1, &[worker])], ""),
    )
    .unwrap();
    let words = exec_start(UNIT, "eth0");
    assert_eq!(words[0], INSTALLED);
    let notify = NotifySocket::new(bed.dir().join("dispatcher.notify"));
    let first = start_as_the_unit(&bed, "first", &notify, &words);
    let messages = notify.wait_for("READY=1", Duration::from_secs(30));
    // Ready means attached and configured: the very next request works.
    assert!(
        bed.pin_dir().exists(),
        "READY before the pins: {messages:?}"
    );
    assert_ne!(bed.xdp_mode(), "", "READY before the attach");
    let answer = bed.invoke("1", "after ready");
    assert_eq!(answer.body, "after ready", "{}", answer.stderr);

    // ExecReload: SIGHUP re-reads the config, with RELOADING then READY.
    signal(&first, nix::sys::signal::Signal::SIGHUP);
    let messages = notify.wait_for("READY=1", Duration::from_secs(20));
    assert!(
        messages
            .iter()
            .any(|m| m.lines().any(|l| l == "RELOADING=1")),
        "{messages:?}"
    );
    first.wait_for_log("SIGHUP: configuration reloaded", 1, Duration::from_secs(10));

    // A crash (Restart=on-failure): the data plane goes on dispatching, and
    // the restarted daemon adopts it.
    let mut first = first;
    first.kill_hard();
    let answer = bed.invoke("1", "while restarting");
    assert_eq!(answer.body, "while restarting", "{}", answer.stderr);
    let mut second = start_as_the_unit(&bed, "second", &notify, &words);
    notify.wait_for("READY=1", Duration::from_secs(30));
    second.wait_for_log("adopted the running data plane", 1, Duration::from_secs(5));
    let answer = bed.invoke("1", "after restart");
    assert_eq!(answer.body, "after restart", "{}", answer.stderr);

    // systemctl stop: SIGTERM, STOPPING, detached, exit 0.
    assert!(
        second.stop(),
        "the daemon did not exit cleanly:\n{}",
        second.log()
    );
    notify.wait_for("STOPPING=1", Duration::from_secs(5));
    bed.assert_detached("SIGTERM");
    let mut worker_process = worker_process;
    assert!(worker_process.stop(), "{}", worker_process.log());
    worker_notify.wait_for("STOPPING=1", Duration::from_secs(5));

    // Purge: nothing of the package is left.
    std::fs::remove_file(INSTANCE_CONFIG).unwrap();
    ok("dpkg", &["--purge", "dispatcher"]);
    for path in [
        INSTALLED,
        UNIT,
        WORKER_UNIT,
        "/etc/dispatcher",
        "/etc/default/dispatcher",
    ] {
        assert!(!Path::new(path).exists(), "{path} left after purge");
    }
    assert!(!run("dpkg", &["-s", "dispatcher"]).status.success());
}
