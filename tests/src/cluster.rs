//! The cluster-mode fixture: a real etcd in a namespace of its own,
//! dispatchers each in theirs (each with its own pin directory), a client
//! and worker hosts, on one testbed segment.
//!
//! Each dispatcher serves its own address as the service address (the
//! router and ECMP in front of them are the ECMP test's business), takes
//! heartbeats on port 7771, and follows the cluster `test` in etcd.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use dispatcher::{control::inspect::WorkerInfo, workload::pktgen::Report};

use crate::{
    bed::{Answer, CliOutput},
    testbed::{dispatcher_bin, sh, Host, Process, Testbed},
};

/// An etcd role's permission: (key, "read" or "readwrite", on the prefix).
type Grant = (String, &'static str, bool);

/// The health key every dispatcher and worker of the fixture shares.
pub const HEARTBEAT_KEY: &str = "cluster-test-key-0123456789";
pub const CLUSTER: &str = "test";

pub struct ClusterBed {
    pub tb: Testbed,
    pub etcd_host: Host,
    pub dispatchers: Vec<Host>,
    pub client: Host,
    pub workers: Vec<Host>,
    etcd: std::sync::Mutex<Option<Process>>,
    /// With `with_router`: the router in front of the dispatchers, and a
    /// client behind it.
    pub router: Option<(Host, Host)>,
    /// With `with_auth`: the directory of the CA and every identity's
    /// certificate and key.
    pki: Option<PathBuf>,
}

/// The service address the router spreads over the dispatchers.
pub const VIP: &str = "10.99.0.100";

impl ClusterBed {
    /// etcd at 10.99.0.5, dispatchers at .1, .3, .4, the client at .2 and
    /// workers w1.. at .10, .11, ...; etcd started.
    pub fn new(label: &str, dispatchers: usize, workers: usize) -> ClusterBed {
        let bed = ClusterBed::hosts(label, dispatchers, workers, false);
        bed.start_etcd();
        bed
    }

    /// The same with etcd as production runs it: TLS with client
    /// certificates (the common name is the etcd user) and auth on, with
    /// roles: `operator` reads and writes the cluster; `dispatcher` reads
    /// it and writes only `dispatchers/`; each `worker-wN` writes only its
    /// own `workers/<f>/<addr>` keys for `functions`, and reads
    /// `dispatchers/`.
    pub fn with_auth(
        label: &str,
        dispatchers: usize,
        workers: usize,
        functions: &[u32],
    ) -> ClusterBed {
        let bed = ClusterBed::hosts(label, dispatchers, workers, true);
        bed.start_etcd();
        let prefix = format!("{}/{CLUSTER}/", dispatcher::cluster::ROOT);
        let ctl = |args: &[&str]| {
            let out = bed.etcdctl(args);
            assert!(
                out.status.success(),
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let mut users: Vec<(String, Vec<Grant>)> = vec![
            ("operator".into(), vec![(prefix.clone(), "readwrite", true)]),
            (
                "dispatcher".into(),
                vec![
                    (prefix.clone(), "read", true),
                    (format!("{prefix}dispatchers/"), "readwrite", true),
                ],
            ),
        ];
        for w in &bed.workers {
            let mut grants: Vec<Grant> = vec![(format!("{prefix}dispatchers/"), "read", true)];
            for f in functions {
                grants.push((
                    format!("{prefix}workers/{f}/{}", w.worker_addr()),
                    "readwrite",
                    false,
                ));
            }
            users.push((format!("worker-{}", w.role), grants));
        }
        ctl(&["user", "add", "root", "--no-password"]);
        ctl(&["user", "grant-role", "root", "root"]);
        for (user, grants) in &users {
            ctl(&["role", "add", user]);
            for (key, perm, prefix) in grants {
                let mut args = vec![
                    "role",
                    "grant-permission",
                    user.as_str(),
                    perm,
                    key.as_str(),
                ];
                if *prefix {
                    args.push("--prefix=true");
                }
                ctl(&args);
            }
            ctl(&["user", "add", user, "--no-password"]);
            ctl(&["user", "grant-role", user, user]);
        }
        ctl(&["auth", "enable"]);
        bed
    }

    fn hosts(label: &str, dispatchers: usize, workers: usize, auth: bool) -> ClusterBed {
        assert!(dispatchers <= 3);
        let mut tb = Testbed::new(label);
        let etcd_host = tb.add_host("etcd", 5);
        let client = tb.add_host("client", 2);
        let dispatchers: Vec<Host> = [1u8, 3, 4]
            .iter()
            .take(dispatchers)
            .enumerate()
            .map(|(i, n)| tb.add_host(&format!("dsp{}", i + 1), *n))
            .collect();
        let workers: Vec<Host> = (0..workers)
            .map(|i| tb.add_host(&format!("w{}", i + 1), 10 + i as u8))
            .collect();
        for d in &dispatchers {
            tb.enable_xdp_tx(d);
        }
        let pki = auth.then(|| {
            let mut names = vec!["root", "operator", "dispatcher"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>();
            names.extend(workers.iter().map(|w: &Host| format!("worker-{}", w.role)));
            make_pki(&tb.dir().join("pki"), etcd_host.ip, &names)
        });
        ClusterBed {
            tb,
            etcd_host,
            dispatchers,
            client,
            workers,
            etcd: Default::default(),
            router: None,
            pki,
        }
    }

    /// `--etcd-ca`, `--etcd-cert`, `--etcd-key` for `identity` (nothing
    /// without auth).
    pub fn identity(&self, identity: &str) -> Vec<String> {
        let Some(pki) = &self.pki else {
            return Vec::new();
        };
        let path = |f: String| pki.join(f).to_str().unwrap().to_string();
        vec![
            "--etcd-ca".into(),
            path("ca.crt".into()),
            "--etcd-cert".into(),
            path(format!("{identity}.crt")),
            "--etcd-key".into(),
            path(format!("{identity}.key")),
        ]
    }

    /// The same, with a router (10.99.0.254) whose multipath route to VIP
    /// spreads flows over every dispatcher (L4 hash), a client behind it
    /// (10.98.0.2), routes back to it on the workers, and the cluster's
    /// service address set to VIP in etcd.
    pub fn with_router(label: &str, dispatchers: usize, workers: usize) -> ClusterBed {
        let mut bed = ClusterBed::new(label, dispatchers, workers);
        let router = bed.tb.add_host("router", 254);
        let far = bed.tb.add_host_behind(&router, "farclient");
        for w in &bed.workers {
            sh(
                "ip",
                &[
                    "-n",
                    &w.ns,
                    "route",
                    "add",
                    "10.98.0.0/24",
                    "via",
                    "10.99.0.254",
                ],
            );
        }
        bed.router = Some((router, far));
        let all: Vec<usize> = (0..dispatchers).collect();
        bed.route_to(&all);
        let service = format!("{{\"addresses\": [\"{VIP}\"], \"port\": 7770}}");
        let key = format!("{}/{CLUSTER}/service", dispatcher::cluster::ROOT);
        let out = bed.etcdctl(&["put", &key, &service]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bed
    }

    /// Points the router's route to VIP at the dispatchers `which` (equal
    /// cost; a dispatcher left out gets no new flows).
    pub fn route_to(&self, which: &[usize]) {
        let (router, _) = self.router.as_ref().expect("with_router");
        let mut args = vec![
            "-n".to_string(),
            router.ns.clone(),
            "route".into(),
            "replace".into(),
            format!("{VIP}/32"),
        ];
        for i in which {
            args.extend([
                "nexthop".into(),
                "via".into(),
                self.dispatchers[*i].ip.to_string(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sh("ip", &args);
    }

    /// Dispatcher `i`'s host lost: its link down, and 200 ms later (a
    /// routing protocol's detection time) its route withdrawn from the
    /// router, leaving `remaining`.
    pub fn lose_dispatcher_host(&self, i: usize, remaining: &[usize]) {
        sh(
            "ip",
            &["-n", &self.dispatchers[i].ns, "link", "set", "eth0", "down"],
        );
        std::thread::sleep(Duration::from_millis(200));
        self.route_to(remaining);
    }

    /// pktgen from the client behind the router to VIP, over 32 flows,
    /// while `changes` runs.
    pub fn through_router<T>(
        &self,
        rate: u32,
        seconds: f64,
        changes: impl FnOnce() -> T,
    ) -> (Report, T) {
        let (_, far) = self.router.as_ref().expect("with_router");
        let to = format!("{VIP}:7770");
        crate::bed::under_load(
            &self.tb,
            far,
            &to,
            rate,
            seconds,
            &["--flows", "32"],
            changes,
        )
    }

    /// Requests dispatcher `i`'s data plane has dispatched so far.
    pub fn dispatched(&self, i: usize) -> u64 {
        dispatcher::control::stats::Snapshot::read(&self.bpffs(i).join("dispatcher").join("eth0"))
            .expect("pinned counters")
            .get(dispatcher_common::stats::Counter::DispatchedRequest)
    }

    pub fn etcd_url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:2379", self.etcd_host.ip)
    }

    /// Starts etcd (its data in the testbed's directory, kept across
    /// restarts) and waits until it answers.
    pub fn start_etcd(&self) {
        let data = self.tb.dir().join("etcd-data");
        let url = self.etcd_url();
        let peer = "http://127.0.0.1:2380";
        let tls: Vec<String> = match &self.pki {
            Some(pki) => {
                let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
                vec![
                    "--cert-file".into(),
                    p("etcd.crt"),
                    "--key-file".into(),
                    p("etcd.key"),
                    "--trusted-ca-file".into(),
                    p("ca.crt"),
                    "--client-cert-auth".into(),
                ]
            }
            None => Vec::new(),
        };
        let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
        let data = data.to_str().unwrap().to_string();
        let cluster = format!("test={peer}");
        args.extend_from_slice(&[
            "--name",
            "test",
            "--data-dir",
            &data,
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            &cluster,
        ]);
        let process = self
            .tb
            .spawn(&self.etcd_host, "etcd", Path::new("etcd"), &args);
        *self.etcd.lock().unwrap() = Some(process);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.etcdctl(&["endpoint", "health"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "etcd did not come up:\n{}",
                self.tb.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills etcd outright (its data stays).
    pub fn kill_etcd(&self) {
        if let Some(mut p) = self.etcd.lock().unwrap().take() {
            p.kill_hard();
        }
    }

    /// `etcdctl ARGS` against the fixture's etcd, from the client host
    /// (as `root` with auth).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let endpoints = format!("--endpoints={}", self.etcd_url());
        let tls: Vec<String> = match &self.pki {
            Some(pki) => {
                let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
                vec![
                    format!("--cacert={}", p("ca.crt")),
                    format!("--cert={}", p("root.crt")),
                    format!("--key={}", p("root.key")),
                ]
            }
            None => Vec::new(),
        };
        let mut all = vec![
            endpoints.as_str(),
            "--dial-timeout=1s",
            "--command-timeout=2s",
        ];
        all.extend(tls.iter().map(String::as_str));
        all.extend_from_slice(args);
        self.tb.exec(&self.client, Path::new("etcdctl"), &all)
    }

    /// Dispatcher `i`'s own bpffs directory (a pin directory each).
    pub fn bpffs(&self, i: usize) -> PathBuf {
        self.tb.bpffs.join(&self.dispatchers[i].role)
    }

    /// Starts dispatcher `i` in cluster mode and waits for its data plane.
    pub fn start_dispatcher(&self, i: usize, extra: &[&str]) -> Process {
        let mut process = self.spawn_dispatcher(i, extra);
        self.wait_for_dispatcher(i, &mut process);
        process
    }

    /// Starts dispatcher `i` in cluster mode without waiting for it.
    pub fn spawn_dispatcher(&self, i: usize, extra: &[&str]) -> Process {
        let d = &self.dispatchers[i];
        let config = format!(
            "[service]\naddresses = [\"{ip}\"]\n\n[health]\nlisten = \"{ip}:7771\"\nkey = \"{HEARTBEAT_KEY}\"\nnetworks = [\"10.99.0.0/24\"]\ndown_after_ms = 1000\n\n[metrics]\nlisten = \"127.0.0.1:9110\"\n",
            ip = d.ip
        );
        let path = self.tb.write_file(&format!("{}.toml", d.role), &config);
        let bpffs = self.bpffs(i);
        std::fs::create_dir_all(&bpffs).expect("a bpffs directory of its own");
        let url = self.etcd_url();
        let mut args = vec![
            "--bpffs",
            bpffs.to_str().unwrap(),
            "run",
            "--iface",
            "eth0",
            "--config",
            path.to_str().unwrap(),
            "--etcd",
            &url,
            "--cluster",
            CLUSTER,
            "--node-name",
            &d.role,
        ];
        let identity = self.identity("dispatcher");
        args.extend(identity.iter().map(String::as_str));
        args.extend_from_slice(extra);
        self.tb.spawn(d, &d.role, &dispatcher_bin(), &args)
    }

    /// Waits until dispatcher `i` (`process`) has attached and serves.
    pub fn wait_for_dispatcher(&self, i: usize, process: &mut Process) {
        let d = &self.dispatchers[i];
        let pins = self.bpffs(i).join("dispatcher").join("eth0");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pins.exists() {
            process.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} did not attach:\n{}",
                d.role,
                process.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.tb.wait_for_udp_port(d, 7770, Duration::from_secs(10));
    }

    /// `dispatcher ARGS` on dispatcher `i`'s host, against its own data
    /// plane.
    pub fn cli(&self, i: usize, args: &[&str]) -> CliOutput {
        let bpffs = self.bpffs(i);
        let mut all = vec!["--bpffs", bpffs.to_str().unwrap()];
        all.extend_from_slice(args);
        self.tb
            .exec(&self.dispatchers[i], &dispatcher_bin(), &all)
            .into()
    }

    /// `dispatcher ARGS --etcd URL --cluster test` from the client host
    /// (the operator's seat): the cluster, not one data plane.
    pub fn cluster_cli(&self, args: &[&str]) -> CliOutput {
        self.cluster_cli_as("operator", args)
    }

    /// `cluster_cli` with `identity`'s certificate (with auth).
    pub fn cluster_cli_as(&self, identity: &str, args: &[&str]) -> CliOutput {
        let url = self.etcd_url();
        let mut all = args.to_vec();
        all.extend_from_slice(&["--etcd", &url, "--cluster", CLUSTER]);
        let identity = self.identity(identity);
        all.extend(identity.iter().map(String::as_str));
        self.tb.exec(&self.client, &dispatcher_bin(), &all).into()
    }

    /// `cluster_cli`, which must succeed.
    pub fn cluster_ok(&self, args: &[&str]) -> String {
        let out = self.cluster_cli(args);
        assert!(out.ok, "dispatcher {args:?} --etcd: {}", out.stderr);
        out.stdout
    }

    /// Worker `w` serving `functions` (ID=NAME,...) and registering them
    /// (with auth: as `worker-wN`).
    pub fn register(&self, w: usize, functions: &str, extra: &[&str]) -> Process {
        let identity = self.identity(&format!("worker-{}", self.workers[w].role));
        let mut all: Vec<&str> = identity.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        self.register_as(w, &self.workers[w].role, functions, &all)
    }

    /// Worker `w` registering with exactly `extra` (credentials or none),
    /// its log under `name`.
    pub fn register_as(&self, w: usize, name: &str, functions: &str, extra: &[&str]) -> Process {
        let host = &self.workers[w];
        let listen = host.worker_addr().to_string();
        let url = self.etcd_url();
        let mut args = vec![
            "serve",
            "--listen",
            &listen,
            "--functions",
            functions,
            "--register",
            "--etcd",
            &url,
            "--cluster",
            CLUSTER,
            "--heartbeat-key",
            HEARTBEAT_KEY,
            "--heartbeat-ms",
            "100",
        ];
        args.extend_from_slice(extra);
        let process = self.tb.spawn(host, name, &dispatcher_bin(), &args);
        self.tb
            .wait_for_udp_port(host, crate::testbed::WORKER_PORT, Duration::from_secs(10));
        process
    }

    /// `dispatcher invoke` from the client through dispatcher `i`.
    pub fn invoke_via(&self, i: usize, function: u32, key: u64, payload: &str) -> Answer {
        let to = format!("{}:7770", self.dispatchers[i].ip);
        crate::bed::invoke(
            &self.tb,
            &self.client,
            &to,
            &function.to_string(),
            key,
            payload,
        )
    }

    /// The value of metric `name` (a sample without labels) on dispatcher
    /// `i`'s Prometheus endpoint.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let scrape = "exec 3<>/dev/tcp/127.0.0.1/9110; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3";
        let out = self
            .tb
            .exec(&self.dispatchers[i], Path::new("bash"), &["-c", scrape]);
        let text = String::from_utf8_lossy(&out.stdout);
        // A metric without labels: `NAME VALUE`.
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    }

    /// pktgen through dispatcher `i` while `changes` runs (see
    /// `bed::under_load`).
    pub fn under_load<T>(
        &self,
        i: usize,
        rate: u32,
        seconds: f64,
        changes: impl FnOnce() -> T,
    ) -> (Report, T) {
        let to = format!("{}:7770", self.dispatchers[i].ip);
        crate::bed::under_load(&self.tb, &self.client, &to, rate, seconds, &[], changes)
    }

    /// The workers dispatcher `i`'s maps hold.
    pub fn workers_on(&self, i: usize) -> Vec<WorkerInfo> {
        let out = self.cli(i, &["workers", "list", "--json"]);
        assert!(out.ok, "workers list on dsp{}: {}", i + 1, out.stderr);
        serde_json::from_str(&out.stdout).expect("workers list --json")
    }

    /// The (function, worker address) pairs in dispatcher `i`'s maps.
    pub fn members_on(&self, i: usize) -> Vec<(u32, SocketAddr)> {
        let mut m: Vec<_> = self
            .workers_on(i)
            .iter()
            .map(|w| (w.function, w.addr))
            .collect();
        m.sort();
        m
    }

    /// Polls until every running dispatcher in `which` holds exactly
    /// `members` (panics after `timeout`, with what each held).
    pub fn wait_for_members(
        &self,
        which: &[usize],
        members: &[(u32, SocketAddr)],
        timeout: Duration,
    ) {
        let mut want = members.to_vec();
        want.sort();
        let deadline = Instant::now() + timeout;
        loop {
            let held: Vec<_> = which.iter().map(|i| self.members_on(*i)).collect();
            if held.iter().all(|h| *h == want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dispatchers {which:?} hold {held:?}, not {want:?} after {timeout:?}\n{}",
                self.tb.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Drops every packet between dispatcher `i` and etcd, both ways (a
    /// route on one side only would still let etcd's pushes in), and lets
    /// them through again with `cut = false`.
    pub fn cut_from_etcd(&self, i: usize, cut: bool) {
        let action = if cut { "add" } else { "del" };
        let d = &self.dispatchers[i];
        for (ns, to) in [(&d.ns, self.etcd_host.ip), (&self.etcd_host.ns, d.ip)] {
            sh(
                "ip",
                &["-n", ns, "route", action, "blackhole", &format!("{to}/32")],
            );
        }
    }
}

/// A CA in `dir`, etcd's server certificate (for `etcd_ip`), and a client
/// certificate and key per name (its common name); returns `dir`.
fn make_pki(dir: &Path, etcd_ip: std::net::Ipv4Addr, names: &[String]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("pki directory");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&[
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=faas-test-ca",
        "-days",
        "2",
    ]);
    openssl(&ca);
    let sign = |name: &str, ext: &str| {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let subj = format!("/CN={name}");
        let mut req = vec!["req"];
        req.extend_from_slice(&ec);
        req.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&req);
        let ext_file = format!("{name}.ext");
        std::fs::write(dir.join(&ext_file), ext).expect("extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ]);
    };
    sign(
        "etcd",
        &format!("subjectAltName=IP:{etcd_ip}\nextendedKeyUsage=serverAuth\n"),
    );
    for name in names {
        sign(name, "extendedKeyUsage=clientAuth\n");
    }
    dir.to_path_buf()
}
