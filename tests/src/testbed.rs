//! Network-namespace testbeds: hosts on one L2 segment (a bridge in a
//! "switch" namespace), each in its own namespace with one veth `eth0`.
//!
//! Every name is unique per testbed (process id + counter), so tests run
//! side by side. Dropping a `Testbed` stops its processes, removes its
//! namespaces (and with them every veth and the bridge) and unmounts its
//! bpffs, even when the test panicked.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{Xdp, XdpMode};
use nix::{
    mount::{umount2, MntFlags},
    sched::{setns, CloneFlags},
    sys::signal::{kill, Signal},
    unistd::Pid,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The /24 every testbed uses inside its own namespaces.
pub const SUBNET: [u8; 3] = [10, 99, 0];
/// The port reference workers listen on in testbeds.
pub const WORKER_PORT: u16 = 9000;

/// A config for a dispatcher at `vip`: each function with its workers
/// (at WORKER_PORT), then `extra` TOML.
pub fn config(vip: Ipv4Addr, functions: &[(u32, &[&Host])], extra: &str) -> String {
    let mut out = format!("[service]\naddresses = [\"{vip}\"]\n");
    for (id, workers) in functions {
        let list: Vec<String> = workers
            .iter()
            .map(|w| {
                format!(
                    "{{ addr = \"{}:{WORKER_PORT}\", mac = \"{}\" }}",
                    w.ip,
                    w.mac_string()
                )
            })
            .collect();
        out += &format!(
            "\n[[functions]]\nid = {id}\nworkers = [{}]\n",
            list.join(", ")
        );
    }
    out + extra
}

/// One host of a testbed.
#[derive(Clone, Debug)]
pub struct Host {
    pub role: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

impl Host {
    /// Where the host's reference worker listens (`Testbed::serve`).
    pub fn worker_addr(&self) -> std::net::SocketAddr {
        (self.ip, WORKER_PORT).into()
    }

    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// A process started in a host's namespace.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// What the process printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process's log says `needle` `count` times, or
    /// panics after `timeout`, showing the log.
    pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) {
        wait_for_text(&self.log, needle, count, timeout);
    }

    /// Panics, showing the log, if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!(
                "{} exited early ({status}); its output:\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to 5 s (SIGKILL after that). Returns whether
    /// it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Testbed {
    pub name: String,
    pub dir: PathBuf,
    pub bpffs: PathBuf,
    switch_ns: String,
    hosts: Vec<Host>,
    /// XDP programs the testbed attached itself (detached on drop).
    attached: std::sync::Mutex<Vec<aya::Ebpf>>,
}

/// Runs a command; panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (is it installed? `cargo xtask test` installs it)")
        });
    if !out.status.success() {
        panic!(
            "`{program} {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

impl Testbed {
    /// An empty testbed: the switch namespace with its bridge, a scratch
    /// directory and a private bpffs (which `ip netns exec` cannot hide,
    /// unlike /sys/fs/bpf).
    pub fn new(label: &str) -> Testbed {
        sweep_stale_testbeds();
        let name = format!(
            "fd{}-{}{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = PathBuf::from("/run").join(&name);
        let bpffs = dir.join("bpffs");
        let switch_ns = format!("{name}-sw");
        // Built as a value first, so that a failure below still cleans up.
        let tb = Testbed {
            name,
            dir,
            bpffs,
            switch_ns,
            hosts: Vec::new(),
            attached: Default::default(),
        };
        fs::create_dir_all(&tb.bpffs).expect("create testbed directory");
        dispatcher::data_plane::bpffs::ensure_mounted(&tb.bpffs)
            .expect("mount the testbed's bpffs");
        sh("ip", &["netns", "add", &tb.switch_ns]);
        sh(
            "ip",
            &["-n", &tb.switch_ns, "link", "add", "br0", "type", "bridge"],
        );
        sh("ip", &["-n", &tb.switch_ns, "link", "set", "br0", "up"]);
        // A new namespace hands bridged frames to iptables (br_netfilter's
        // default here): nothing filters them, so skip those hooks, which
        // otherwise cost each crossing of the bridge more than the XDP
        // program does.
        // (Absent where br_netfilter is not loaded: then nothing to skip.)
        for table in ["iptables", "ip6tables", "arptables"] {
            let knob = format!("net.bridge.bridge-nf-call-{table}=0");
            let _ = Command::new("ip")
                .args(["netns", "exec", &tb.switch_ns, "sysctl", "-q", "-w", &knob])
                .output();
        }
        tb
    }

    /// A host `role` at 10.99.0.`n`, wired to the switch.
    pub fn add_host(&mut self, role: &str, n: u8) -> Host {
        assert!(
            role.len() <= 12,
            "role names become interface names: 12 characters at most"
        );
        let host = Host {
            role: role.to_string(),
            ns: format!("{}-{role}", self.name),
            ip: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], n),
            mac: [0x02, 0xfd, 0, 0, 0, n],
        };
        self.hosts.push(host.clone());
        let ns = host.ns.as_str();
        let port = format!("p-{role}");
        sh("ip", &["netns", "add", ns]);
        sh(
            "ip",
            &[
                "-n",
                &self.switch_ns,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                ns,
                "link",
                "set",
                "eth0",
                "address",
                &host.mac_string(),
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ],
        );
        sh("ip", &["-n", ns, "link", "set", "lo", "up"]);
        sh("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        sh(
            "ip",
            &[
                "-n",
                &self.switch_ns,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ],
        );
        // Senders must put full UDP checksums on the wire: with transmit
        // offload a veth leaves a partial one, which a rewrite cannot fix.
        sh(
            "ip",
            &["netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off"],
        );
        // Frames sent to a veth by XDP (redirect, or XDP_TX from its peer)
        // are dropped unless it has NAPI: GRO on, once both ends are up.
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.switch_ns,
                "ethtool",
                "-K",
                &port,
                "gro",
                "on",
            ],
        );
        host
    }

    /// A host on a network of its own (10.98.0.0/24) behind `router`: a
    /// veth from the router's eth1 (10.98.0.1, forwarding on, multipath
    /// routes hashed on the L4 5-tuple) to the host's eth0 (10.98.0.2, its
    /// default route through the router).
    pub fn add_host_behind(&mut self, router: &Host, role: &str) -> Host {
        let host = Host {
            role: role.to_string(),
            ns: format!("{}-{role}", self.name),
            ip: Ipv4Addr::new(10, 98, 0, 2),
            mac: [0x02, 0xfe, 0, 0, 0, 2],
        };
        self.hosts.push(host.clone());
        let ns = host.ns.as_str();
        let r = router.ns.as_str();
        sh("ip", &["netns", "add", ns]);
        sh(
            "ip",
            &[
                "-n", r, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                ns,
                "link",
                "set",
                "eth0",
                "address",
                &host.mac_string(),
            ],
        );
        sh(
            "ip",
            &["-n", ns, "addr", "add", "10.98.0.2/24", "dev", "eth0"],
        );
        sh(
            "ip",
            &["-n", r, "addr", "add", "10.98.0.1/24", "dev", "eth1"],
        );
        for (n, dev) in [(ns, "lo"), (ns, "eth0"), (r, "eth1")] {
            sh("ip", &["-n", n, "link", "set", dev, "up"]);
        }
        sh(
            "ip",
            &["-n", ns, "route", "add", "default", "via", "10.98.0.1"],
        );
        for (n, dev) in [(ns, "eth0"), (r, "eth1")] {
            sh(
                "ip",
                &["netns", "exec", n, "ethtool", "-K", dev, "tx", "off"],
            );
        }
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.fib_multipath_hash_policy=1",
        ] {
            sh("ip", &["netns", "exec", r, "sysctl", "-q", "-w", sysctl]);
        }
        host
    }

    /// Gives `host` the IPv6 address fd99::N (N: its IPv4 address's last
    /// byte) on eth0, without duplicate address detection (so it is usable
    /// at once), and returns it.
    pub fn add_ipv6(&self, host: &Host) -> std::net::Ipv6Addr {
        let ip = std::net::Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, host.ip.octets()[3] as u16);
        sh(
            "ip",
            &[
                "-n",
                &host.ns,
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        ip
    }

    /// A second interface `name` for `host`, on the same bridge (for
    /// two-arm egress). Frames redirected to it reach the switch only with
    /// NAPI on its peer, so GRO is turned on there.
    pub fn add_interface(&mut self, host: &Host, name: &str) {
        let port = format!("p-{}-{name}", host.role);
        assert!(port.len() <= 15, "interface name too long: {port}");
        sh(
            "ip",
            &[
                "-n",
                &self.switch_ns,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                name,
                "netns",
                &host.ns,
            ],
        );
        sh("ip", &["-n", &host.ns, "link", "set", name, "up"]);
        sh(
            "ip",
            &[
                "-n",
                &self.switch_ns,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ],
        );
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.switch_ns,
                "ethtool",
                "-K",
                &port,
                "gro",
                "on",
            ],
        );
        // Two interfaces on one segment: only the one holding an address
        // may answer ARP for it, or clients learn the wrong MAC.
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &host.ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.conf.all.arp_ignore=1",
            ],
        );
    }

    /// Makes XDP_TX work from `host`'s eth0: a veth delivers XDP_TX frames
    /// to its peer but wakes the peer only if the peer runs an XDP program,
    /// so the switch-side port gets one that passes everything.
    pub fn enable_xdp_tx(&self, host: &Host) {
        let port = format!("p-{}", host.role);
        let ebpf = attach_in_namespace(
            &self.switch_ns,
            &port,
            dispatcher::data_plane::PASS_PROGRAM,
            |_| {},
        );
        self.attached.lock().unwrap().push(ebpf);
    }

    /// Starts `program args` inside `host`'s namespace; output goes to a log.
    pub fn spawn(&self, host: &Host, name: &str, program: &Path, args: &[&str]) -> Process {
        let log = self.dir.join(format!("{name}.log"));
        let file = fs::File::create(&log).expect("create log");
        let child = in_namespace(&host.ns, program, args)
            .env("DISPATCHER_BPFFS", &self.bpffs)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("spawn in namespace");
        Process {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// Runs `program args` in `host`'s namespace to completion, within
    /// EXEC_TIMEOUT: a command that hangs (a `dispatcher run` that should
    /// have been refused, say) fails the test instead of hanging the suite.
    pub fn exec(&self, host: &Host, program: &Path, args: &[&str]) -> Output {
        self.exec_with(host, program, args, in_namespace(&host.ns, program, args))
    }

    /// `exec`, on CPU 0 only. The data plane takes round-robin turns per
    /// CPU, and on a veth it runs on the CPU that sent the frame: a test
    /// that counts exact round-robin shares across several client
    /// processes sends them all from one CPU.
    pub fn exec_on_one_cpu(&self, host: &Host, program: &Path, args: &[&str]) -> Output {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = in_namespace(&host.ns, program, args);
        // SAFETY: sched_setaffinity is async-signal-safe; nothing else
        // runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let mut set = nix::sched::CpuSet::new();
                set.set(0).map_err(std::io::Error::from)?;
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                    .map_err(std::io::Error::from)
            });
        }
        self.exec_with(host, program, args, cmd)
    }

    fn exec_with(&self, host: &Host, program: &Path, args: &[&str], mut cmd: Command) -> Output {
        let mut child = cmd
            .env("DISPATCHER_BPFFS", &self.bpffs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run in namespace");
        // Read both pipes while waiting, so a chatty command cannot block.
        let (mut out, mut err) = (
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let stdout = thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut out, &mut v);
            v
        });
        let stderr = thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut err, &mut v);
            v
        });
        let deadline = Instant::now() + EXEC_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{} {}` in {} did not finish within {EXEC_TIMEOUT:?}",
                    program.display(),
                    args.join(" "),
                    host.role
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        Output {
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }

    /// Waits until something in `host` listens on UDP `port`.
    pub fn wait_for_udp_port(&self, host: &Host, port: u16, timeout: Duration) {
        self.wait_for_port(host, &["/proc/net/udp", "/proc/net/udp6"], port, timeout)
    }

    /// Waits until something in `host` listens on TCP `port`.
    pub fn wait_for_tcp_port(&self, host: &Host, port: u16, timeout: Duration) {
        self.wait_for_port(host, &["/proc/net/tcp", "/proc/net/tcp6"], port, timeout)
    }

    fn wait_for_port(&self, host: &Host, tables: &[&str], port: u16, timeout: Duration) {
        let needle = format!(":{port:04X} ");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let out = self.exec(host, Path::new("cat"), tables);
            if String::from_utf8_lossy(&out.stdout).contains(&needle) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "nothing listens on port {port} ({tables:?}) in {} after {timeout:?}; logs:\n{}",
            host.role,
            self.logs()
        );
    }

    /// The pin directory of the data plane on the dispatcher's eth0.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("dispatcher").join("eth0")
    }

    /// Waits for `dispatcher run` (`process`) to be attached and configured
    /// (its pin directory appears in one step once it is).
    pub fn wait_for_data_plane(&self, process: &mut Process, timeout: Duration) {
        let dir = self.pin_dir();
        let deadline = Instant::now() + timeout;
        while !dir.exists() {
            process.assert_running();
            if Instant::now() > deadline {
                panic!(
                    "the data plane did not come up in {timeout:?}; its output:\n{}",
                    process.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every process log of the testbed, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                out += &format!(
                    "--- {}\n{}",
                    path.display(),
                    fs::read_to_string(&path).unwrap_or_default()
                );
            }
        }
        out
    }

    /// Starts the reference worker on `worker` (port 9000) serving
    /// `functions`, with `extra` arguments, and waits until it listens.
    pub fn serve(&self, worker: &Host, functions: &str, extra: &[&str]) -> Process {
        let listen = format!("{}:{WORKER_PORT}", worker.ip);
        let mut args = vec!["serve", "--listen", &listen, "--functions", functions];
        args.extend_from_slice(extra);
        let process = self.spawn(worker, &worker.role, &dispatcher_bin(), &args);
        self.wait_for_udp_port(worker, WORKER_PORT, Duration::from_secs(10));
        process
    }

    /// Starts `dispatcher serve` on `worker` (port 9000) with `args` after
    /// `--listen` (the functions, as `--function ID=KIND[:ARG]`, and the
    /// rest), and waits until its socket is there.
    pub fn serve_with(&self, worker: &Host, args: &[&str]) -> Process {
        let listen = format!("{}:{WORKER_PORT}", worker.ip);
        let mut all = vec!["serve", "--listen", &listen];
        all.extend_from_slice(args);
        let process = self.spawn(worker, &worker.role, &dispatcher_bin(), &all);
        self.wait_for_udp_port(worker, WORKER_PORT, Duration::from_secs(10));
        process
    }

    /// Starts the reference worker on `worker`'s IPv6 address `ip` (port
    /// 9000) and waits until its socket is there.
    pub fn serve_ipv6(
        &self,
        worker: &Host,
        ip: std::net::Ipv6Addr,
        functions: &str,
        extra: &[&str],
    ) -> Process {
        let listen = format!("[{ip}]:{WORKER_PORT}");
        let mut args = vec!["serve", "--listen", &listen, "--functions", functions];
        args.extend_from_slice(extra);
        let process = self.spawn(
            worker,
            &format!("{}-ipv6", worker.role),
            &dispatcher_bin(),
            &args,
        );
        self.wait_for_port(
            worker,
            &["/proc/net/udp6"],
            WORKER_PORT,
            Duration::from_secs(10),
        );
        process
    }

    /// Sends one datagram from `bind` inside `host`'s namespace to `to`, and
    /// returns the first answer within `timeout` with its source. For
    /// headers `dispatcher invoke` will not send (other versions, STEPs).
    pub fn udp_exchange(
        &self,
        host: &Host,
        bind: std::net::SocketAddr,
        to: std::net::SocketAddr,
        datagram: &[u8],
        timeout: Duration,
    ) -> Option<(Vec<u8>, std::net::SocketAddr)> {
        let ns_path = PathBuf::from("/run/netns").join(&host.ns);
        thread::scope(|s| {
            s.spawn(|| {
                // setns moves only this thread, which ends here.
                setns(
                    fs::File::open(&ns_path).expect("open namespace"),
                    CloneFlags::CLONE_NEWNET,
                )
                .expect("enter namespace");
                let socket = std::net::UdpSocket::bind(bind)
                    .unwrap_or_else(|e| panic!("bind {bind} in {}: {e}", host.role));
                socket.set_read_timeout(Some(timeout)).unwrap();
                socket.send_to(datagram, to).expect("send");
                let mut buf = vec![0u8; 65536];
                let (n, from) = socket.recv_from(&mut buf).ok()?;
                buf.truncate(n);
                Some((buf, from))
            })
            .join()
            .expect("exchange thread")
        })
    }

    /// Starts `dispatcher run --iface eth0 --config CONFIG EXTRA` on `dsp`
    /// under `name`, and waits until its data plane is up.
    pub fn run_dispatcher(&self, dsp: &Host, name: &str, config: &Path, extra: &[&str]) -> Process {
        let config = config.to_str().expect("UTF-8 path");
        let mut args = vec!["run", "--iface", "eth0", "--config", config];
        args.extend_from_slice(extra);
        let mut process = self.spawn(dsp, name, &dispatcher_bin(), &args);
        self.wait_for_data_plane(&mut process, Duration::from_secs(20));
        process
    }

    /// The testbed's scratch directory (logs, configs, its bpffs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a file into the testbed's scratch directory.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, contents).expect("write file");
        path
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in self
            .hosts
            .iter()
            .map(|h| h.ns.clone())
            .chain([self.switch_ns.clone()])
        {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = umount2(&self.bpffs, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Waits until something on this host (the test's own namespace) listens
/// on UDP `port`, or panics after `timeout`.
pub fn wait_for_local_udp_port(port: u16, timeout: Duration) {
    let needle = format!(":{port:04X} ");
    let deadline = Instant::now() + timeout;
    loop {
        let tables =
            ["/proc/net/udp", "/proc/net/udp6"].map(|t| fs::read_to_string(t).unwrap_or_default());
        if tables.iter().any(|t| t.contains(&needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on UDP port {port} after {timeout:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the file at `path` contains `needle` `count` times, or
/// panics after `timeout` showing it.
pub fn wait_for_text(path: &Path, needle: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` (x{count}) in {} after {timeout:?}:\n{text}",
            path.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The longest a command run to completion in a testbed may take (pktgen
/// runs of a few seconds included).
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// `ip netns exec NS program args`, killed if the test process dies (a
/// killed test run leaves no daemon or worker behind). The death signal
/// goes with the spawning thread's exit, which is how long a test owns the
/// processes it starts.
fn in_namespace(ns: &str, program: &Path, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program).args(args);
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    cmd
}

/// Removes what testbeds of test processes that no longer run left behind
/// (a run killed before its drops ran): their namespaces, bpffs mounts and
/// scratch directories. Named `fd<pid>-...`; once per test process.
fn sweep_stale_testbeds() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        let stale = |name: &str| {
            let pid = name
                .strip_prefix("fd")
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            pid.is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            })
        };
        for entry in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
        for entry in fs::read_dir("/run").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                let _ = umount2(&entry.path().join("bpffs"), MntFlags::MNT_DETACH);
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// The `dispatcher` binary: $DISPATCHER_BIN, or the one cargo built next
/// to this test binary.
pub fn dispatcher_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("DISPATCHER_BIN") {
        return PathBuf::from(path);
    }
    // Tests run from target/<profile>/deps/, binaries (demo, benches) from
    // target/<profile>/.
    let exe = std::env::current_exe().expect("current exe");
    let mut profile_dir = exe.parent().expect("target/<profile>");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("target/<profile>");
    }
    let bin = profile_dir.join("dispatcher");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p dispatcher`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// Loads the object's `program`, lets `prepare` fill its maps, and attaches
/// it in driver mode to `iface` inside namespace `ns`. Detached when the
/// returned object is dropped.
pub fn attach_in_namespace(
    ns: &str,
    iface: &str,
    program: &str,
    prepare: impl FnOnce(&mut aya::Ebpf) + Send,
) -> aya::Ebpf {
    let ns_path = PathBuf::from("/run/netns").join(ns);
    // setns changes only the calling thread's namespace: use a fresh one.
    thread::scope(|s| {
        s.spawn(|| {
            let ns = fs::File::open(&ns_path).expect("open namespace");
            setns(ns, CloneFlags::CLONE_NEWNET).expect("enter namespace");
            let mut ebpf = aya::Ebpf::load(dispatcher::data_plane::object()).expect("load object");
            prepare(&mut ebpf);
            let prog: &mut Xdp = ebpf
                .program_mut(program)
                .expect("program in the object")
                .try_into()
                .expect("XDP");
            prog.load().expect("load program");
            prog.attach(iface, XdpMode::Driver).expect("attach program");
            ebpf
        })
        .join()
        .expect("attach thread")
    })
}

/// A file of this repository (examples, test functions, the Python
/// client), by its path from the repository's root.
pub fn repo_file(path: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root).join(path)
}
