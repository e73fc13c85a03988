//! The standard end-to-end fixture: one dispatcher host, one client and
//! worker hosts on a namespace testbed, and the calls end-to-end tests make
//! on them: the CLI in the dispatcher's namespace, `invoke` and pktgen from
//! the client, and typed reads of the data plane's state (the same types
//! the CLI prints as JSON, never indexed by string).
//!
//! `Bed` derefs to its `Testbed` for everything else (spawning, serving,
//! files, logs).

use std::{
    collections::HashMap,
    net::SocketAddr,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use dispatcher::{
    control::{
        inspect::{FunctionInfo, WorkerInfo, WorkerState},
        stats::Snapshot,
    },
    workload::pktgen::Report,
};

use crate::testbed::{config, dispatcher_bin, Host, Process, Testbed};

/// The port the dispatcher's service listens on in every testbed.
pub const SERVICE_PORT: u16 = 7770;

pub struct Bed {
    pub tb: Testbed,
    /// 10.99.0.1, its peer ready for XDP_TX (unless `with_plain_peer`).
    pub dsp: Host,
    /// 10.99.0.2.
    pub client: Host,
    /// w1 at 10.99.0.10, w2 at .11, and so on.
    pub workers: Vec<Host>,
}

/// What one `dispatcher invoke` printed.
#[derive(Debug)]
pub struct Answer {
    /// 0 for a RESPONSE, 2 for an ERROR, 1 for no answer.
    pub code: Option<i32>,
    /// The payload, trimmed.
    pub body: String,
    pub stderr: String,
}

impl Answer {
    /// Who answered: `invoke` says "RESPONSE from ADDR ..." or
    /// "ERROR N from ADDR ...".
    pub fn from(&self) -> Option<SocketAddr> {
        let words: Vec<&str> = self.stderr.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "from")?;
        words.get(at + 1)?.parse().ok()
    }
}

impl From<std::process::Output> for Answer {
    fn from(out: std::process::Output) -> Answer {
        Answer {
            code: out.status.code(),
            body: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What one CLI call printed.
#[derive(Debug)]
pub struct CliOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for CliOutput {
    fn from(out: std::process::Output) -> CliOutput {
        CliOutput {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Bed {
    /// A testbed named after `label` with the dispatcher, the client and
    /// `workers` worker hosts.
    pub fn new(label: &str, workers: usize) -> Bed {
        let bed = Bed::with_plain_peer(label, workers);
        bed.tb.enable_xdp_tx(&bed.dsp);
        bed
    }

    /// The same, but the dispatcher's veth peer runs no XDP program (as a
    /// container's host side does not): XDP_TX in drv mode loses frames.
    pub fn with_plain_peer(label: &str, workers: usize) -> Bed {
        let mut tb = Testbed::new(label);
        let dsp = tb.add_host("dsp", 1);
        let client = tb.add_host("client", 2);
        let workers = (0..workers)
            .map(|i| tb.add_host(&format!("w{}", i + 1), 10 + i as u8))
            .collect();
        Bed {
            tb,
            dsp,
            client,
            workers,
        }
    }

    /// IPv6 addresses (fd99::N) on the dispatcher, the client and the
    /// first worker: (the dispatcher's, the worker's).
    pub fn add_ipv6(&self) -> (std::net::Ipv6Addr, std::net::Ipv6Addr) {
        self.tb.add_ipv6(&self.client);
        (
            self.tb.add_ipv6(&self.dsp),
            self.tb.add_ipv6(&self.workers[0]),
        )
    }

    /// The service address requests go to.
    pub fn service(&self) -> String {
        format!("{}:{SERVICE_PORT}", self.dsp.ip)
    }

    /// Writes `dispatcher.toml`: the dispatcher's address as the service,
    /// each function with its workers, then `extra` TOML.
    pub fn write_config(&self, functions: &[(u32, &[&Host])], extra: &str) -> PathBuf {
        self.tb
            .write_file("dispatcher.toml", &config(self.dsp.ip, functions, extra))
    }

    /// `dispatcher run` on the dispatcher host as `name`, once attached.
    pub fn start(&self, name: &str, config: &Path, extra: &[&str]) -> Process {
        self.tb.run_dispatcher(&self.dsp, name, config, extra)
    }

    /// `dispatcher run` as `name` without waiting for pins of its own (an
    /// adopter finds them there already): waits for its service port.
    pub fn spawn_dispatcher(&self, name: &str, config: &Path) -> Process {
        let config = config.to_str().expect("UTF-8 path");
        let process = self.tb.spawn(
            &self.dsp,
            name,
            &dispatcher_bin(),
            &["run", "--iface", "eth0", "--config", config],
        );
        self.tb
            .wait_for_udp_port(&self.dsp, SERVICE_PORT, Duration::from_secs(20));
        process
    }

    /// `dispatcher run --iface eth0 --config CONFIG EXTRA`, which must be
    /// refused and leave nothing behind (no pins, no program on eth0
    /// unless `already_attached`); its stderr.
    pub fn run_refused(&self, config: &Path, extra: &[&str]) -> String {
        let config = config.to_str().expect("UTF-8 path");
        let mut args = vec!["run", "--iface", "eth0", "--config", config];
        args.extend_from_slice(extra);
        let was_attached = self.pin_dir().exists();
        let mode_before = self.xdp_mode();
        let out = self.tb.exec(&self.dsp, &dispatcher_bin(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} was not refused: {stderr}");
        if !was_attached {
            assert!(!self.pin_dir().exists(), "pins left after a refusal");
        }
        assert_eq!(self.xdp_mode(), mode_before, "a refusal changed eth0's XDP");
        stderr
    }

    /// How XDP is attached to the dispatcher's eth0, as `ip link` says it:
    /// "skb", "drv", "hw" or "" (iproute2 prints `xdpgeneric` for skb mode,
    /// `xdpoffload` for hw and plain `xdp` for driver mode).
    pub fn xdp_mode(&self) -> &'static str {
        let out = self
            .tb
            .exec(&self.dsp, Path::new("ip"), &["link", "show", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("xdpgeneric") {
            "skb"
        } else if text.contains("xdpoffload") {
            "hw"
        } else if text.contains("xdp") {
            "drv"
        } else {
            ""
        }
    }

    /// Nothing of a data plane is left: no pins, no program on eth0.
    pub fn assert_detached(&self, after: &str) {
        assert!(!self.pin_dir().exists(), "pins left after {after}");
        assert_eq!(self.xdp_mode(), "", "XDP still attached after {after}");
    }

    /// `dispatcher ARGS` in the dispatcher's namespace.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.tb.exec(&self.dsp, &dispatcher_bin(), args).into()
    }

    /// `dispatcher ARGS`, which must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.ok, "dispatcher {args:?} failed: {}", out.stderr);
        out.stdout
    }

    /// `dispatcher invoke --to SERVICE FUNCTION PAYLOAD` from the client,
    /// waiting up to 3 s (a slow machine is not a lost answer).
    pub fn invoke(&self, function: &str, payload: &str) -> Answer {
        invoke(
            &self.tb,
            &self.client,
            &self.service(),
            function,
            0,
            payload,
        )
    }

    /// Sends `n` requests for `function`, each of which must be answered;
    /// counts the answers by the worker that sent them.
    pub fn answers_by_worker(&self, function: u32, n: usize) -> HashMap<SocketAddr, usize> {
        let mut by = HashMap::new();
        for i in 0..n {
            let answer = self.invoke(&function.to_string(), &format!("r{i}"));
            assert_eq!(answer.code, Some(0), "invoke: {answer:?}\n{}", self.logs());
            let from = answer.from().expect("invoke names who answered");
            *by.entry(from).or_default() += 1;
        }
        by
    }

    /// Where the data plane's maps are pinned.
    pub fn pin_dir(&self) -> PathBuf {
        self.tb.pin_dir()
    }

    /// The pinned counters.
    pub fn stats(&self) -> Snapshot {
        Snapshot::read(&self.pin_dir()).expect("read the pinned counters")
    }

    /// `functions list --json`.
    pub fn functions(&self) -> Vec<FunctionInfo> {
        serde_json::from_str(&self.cli_ok(&["functions", "list", "--json"]))
            .expect("functions list --json")
    }

    /// `workers list --json`.
    pub fn workers_list(&self) -> Vec<WorkerInfo> {
        serde_json::from_str(&self.cli_ok(&["workers", "list", "--json"]))
            .expect("workers list --json")
    }

    /// The listed worker at `addr` (the first function's, if several).
    pub fn worker(&self, addr: SocketAddr) -> Option<WorkerInfo> {
        self.workers_list().into_iter().find(|w| w.addr == addr)
    }

    /// Polls until the worker at `addr` is in `state` (panics after 10 s).
    pub fn wait_for_worker_state(&self, addr: SocketAddr, state: WorkerState) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.worker(addr).map(|w| w.state) == Some(state) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{addr} never became {state:?}: {:?}\n{}",
            self.workers_list(),
            self.logs()
        );
    }

    /// Runs pktgen from the client at `rate` for `seconds` in a thread of
    /// its own while `changes` runs; pktgen's report and what `changes`
    /// returned.
    pub fn under_load<T>(
        &self,
        rate: u32,
        seconds: f64,
        changes: impl FnOnce() -> T,
    ) -> (Report, T) {
        under_load(
            &self.tb,
            &self.client,
            &self.service(),
            rate,
            seconds,
            &[],
            changes,
        )
    }

    /// memcached on `host`'s loopback (port 11211, UDP off), once it
    /// listens.
    pub fn memcached(&self, host: &Host) -> Process {
        let process = self.tb.spawn(
            host,
            "memcached",
            Path::new("memcached"),
            &["-u", "nobody", "-l", "127.0.0.1", "-p", "11211", "-U", "0"],
        );
        self.tb
            .wait_for_tcp_port(host, 11211, Duration::from_secs(10));
        process
    }
}

impl Deref for Bed {
    type Target = Testbed;
    fn deref(&self) -> &Testbed {
        &self.tb
    }
}

impl DerefMut for Bed {
    fn deref_mut(&mut self) -> &mut Testbed {
        &mut self.tb
    }
}

/// Every request of a pktgen run was answered, none with an ERROR.
pub fn assert_nothing_lost(report: &Report, what: &str) {
    assert_eq!(report.lost, 0, "{what}: requests lost: {report:?}");
    assert_eq!(report.errors, 0, "{what}: ERROR answers: {report:?}");
    assert_eq!(report.answered, report.sent, "{what}: {report:?}");
}

/// Runs pktgen from `client` to `to` at `rate` for `seconds` (with
/// `extra` arguments) in a thread of its own while `changes` runs
/// (starting 0.3 s in); pktgen's report (it waits 1.5 s for the last
/// answers) and what `changes` returned.
pub fn under_load<T>(
    tb: &Testbed,
    client: &Host,
    to: &str,
    rate: u32,
    seconds: f64,
    extra: &[&str],
    changes: impl FnOnce() -> T,
) -> (Report, T) {
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            let rate = rate.to_string();
            let seconds = seconds.to_string();
            let mut args = vec![
                "pktgen",
                "--to",
                to,
                "--rate",
                &rate,
                "--duration",
                &seconds,
                "--drain-ms",
                "1500",
                "--json",
            ];
            args.extend_from_slice(extra);
            tb.exec(client, &dispatcher_bin(), &args)
        });
        std::thread::sleep(Duration::from_millis(300));
        let changed = changes();
        let out = load.join().expect("pktgen thread");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            serde_json::from_slice(&out.stdout).expect("pktgen's JSON report"),
            changed,
        )
    })
}

/// `dispatcher invoke --to TO --key KEY FUNCTION PAYLOAD` from `client`,
/// waiting up to 3 s (a slow machine is not a lost answer).
pub fn invoke(
    tb: &Testbed,
    client: &Host,
    to: &str,
    function: &str,
    key: u64,
    payload: &str,
) -> Answer {
    let key = key.to_string();
    let args = [
        "invoke",
        "--timeout-ms",
        "3000",
        "--to",
        to,
        "--key",
        &key,
        function,
        payload,
    ];
    // From one CPU: round-robin turns are per CPU (see exec_on_one_cpu).
    tb.exec_on_one_cpu(client, &dispatcher_bin(), &args).into()
}
