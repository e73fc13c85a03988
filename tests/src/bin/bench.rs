//! `cargo xtask bench`: the dispatcher beside the alternatives, on one
//! namespace testbed, every contender measured in turn under the same
//! conditions, interleaved, in several repetitions. A benchmark, not a test.
//!
//! Contenders: the client talking to the worker directly; the XDP
//! dispatcher in driver and in skb mode; the yardstick (a minimal XDP
//! rewrite toward one fixed worker: the fastest any XDP dispatcher can be
//! on this path); the user-space mode; nginx's UDP stream proxy. For each:
//! latency percentiles at 1K, 10K and 100K requests/s, and loss at rising
//! offered rates (the highest rate with under 1% loss). Everything is
//! measured by `dispatcher pktgen` from the client's namespace.
//!
//! It writes docs/benchmarks/bench.md and its plots from what it measured.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use dispatcher::workload::plot::{self, Chart, Series};
use dispatcher_common::maps::Function;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use tests::testbed::{attach_in_namespace, dispatcher_bin, sh, Host, Process, Testbed};

const REPETITIONS: usize = 5;
/// Latency is reported at these offered rates.
const LATENCY_RATES: [u64; 3] = [1_000, 10_000, 100_000];
/// Loss is measured at these; the highest with under 1% loss is the
/// contender's capacity.
const LOSS_RATES: [u64; 7] = [10_000, 25_000, 50_000, 75_000, 100_000, 125_000, 150_000];
const VIP_PORT: u16 = 7770;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Contender {
    Direct,
    XdpDrv,
    XdpSkb,
    Yardstick,
    User,
    Nginx,
}

impl Contender {
    const ALL: [Contender; 6] = [
        Contender::Direct,
        Contender::XdpDrv,
        Contender::XdpSkb,
        Contender::Yardstick,
        Contender::User,
        Contender::Nginx,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::XdpDrv => "XDP drv",
            Contender::XdpSkb => "XDP skb",
            Contender::Yardstick => "yardstick",
            Contender::User => "user mode",
            Contender::Nginx => "nginx",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Contender::Direct => "the client sends to the worker; no dispatcher hop",
            Contender::XdpDrv => "`dispatcher run --mode drv`: the XDP program in the veth driver, round-robin",
            Contender::XdpSkb => "`dispatcher run --mode skb`: the same program in generic (skb) XDP",
            Contender::Yardstick => "`yardstick_one_lookup` from the same object: one map lookup, rewrite toward a fixed worker, XDP_TX",
            Contender::User => "`dispatcher run --mode user`: the reference model in user space, recvmmsg/sendmmsg batches",
            Contender::Nginx => "Debian's nginx, stream module, `listen ... udp` with a round-robin upstream of the same worker",
        }
    }
}

/// What one pktgen run printed.
#[derive(Clone, Debug)]
struct Run {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    loss: f64,
    late: u64,
    /// Requests answered per second of sending: what the path delivered,
    /// also when the sender could not keep the schedule.
    goodput: f64,
}

/// pktgen's --spin-us (BENCH_SPIN_US; default pktgen's own).
fn spin_us() -> String {
    std::env::var("BENCH_SPIN_US").unwrap_or_else(|_| "200".into())
}

fn pktgen(tb: &Testbed, client: &Host, to: &str, rate: u64, seconds: f64) -> Option<Run> {
    let out = tb.exec(
        client,
        &dispatcher_bin(),
        &[
            "pktgen",
            "--to",
            to,
            "--rate",
            &rate.to_string(),
            "--duration",
            &seconds.to_string(),
            "--payload",
            "64",
            "--drain-ms",
            "300",
            "--spin-us",
            &spin_us(),
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let l = &report["latency_us"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    Some(Run {
        p50: f(&l["p50"]),
        p90: f(&l["p90"]),
        p99: f(&l["p99"]),
        p999: f(&l["p999"]),
        loss: f(&report["loss_percent"]),
        late: report["late_sends"].as_u64().unwrap_or(0),
        goodput: f(&report["answered"]) / f(&report["duration_s"]),
    })
}

/// A started contender; dropping it stops it.
enum Running {
    Nothing,
    Process(Process),
    Program(#[allow(dead_code)] aya::Ebpf),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Process(p) = self {
            p.stop();
        }
    }
}

struct Bed {
    tb: Testbed,
    dsp: Host,
    client: Host,
    worker: Host,
    config: PathBuf,
    nginx_config: PathBuf,
}

impl Bed {
    fn target(&self, c: Contender) -> String {
        match c {
            Contender::Direct => format!("{}:9000", self.worker.ip),
            _ => format!("{}:{VIP_PORT}", self.dsp.ip),
        }
    }

    fn start(&self, c: Contender) -> Result<Running, String> {
        let config = self.config.to_str().unwrap();
        let running = match c {
            Contender::Direct => Running::Nothing,
            Contender::XdpDrv | Contender::XdpSkb => {
                let mode = if c == Contender::XdpDrv { "drv" } else { "skb" };
                let mut p = self.tb.spawn(
                    &self.dsp,
                    "dispatcher",
                    &dispatcher_bin(),
                    &["run", "--iface", "eth0", "--mode", mode, "--config", config],
                );
                self.tb.wait_for_data_plane(&mut p, Duration::from_secs(20));
                Running::Process(p)
            }
            Contender::Yardstick => Running::Program(attach_in_namespace(
                &self.dsp.ns,
                "eth0",
                "yardstick_one_lookup",
                |ebpf| {
                    let mut functions: aya::maps::HashMap<_, u32, Function> =
                        aya::maps::HashMap::try_from(
                            ebpf.map_mut(dispatcher_common::maps::names::FUNCTIONS)
                                .expect("FUNCTIONS"),
                        )
                        .expect("a hash map");
                    functions
                        .insert(1, Function::default(), 0)
                        .expect("function 1");
                },
            )),
            Contender::User => {
                let p = self.tb.spawn(
                    &self.dsp,
                    "user",
                    &dispatcher_bin(),
                    &["run", "--mode", "user", "--config", config],
                );
                self.tb
                    .wait_for_udp_port(&self.dsp, VIP_PORT, Duration::from_secs(10));
                Running::Process(p)
            }
            Contender::Nginx => {
                let nginx = Path::new("/usr/sbin/nginx");
                if !nginx.exists() || !Path::new(NGINX_STREAM_MODULE).exists() {
                    return Err("nginx or its stream module is not installed (apt-get install nginx libnginx-mod-stream)".into());
                }
                let p = self.tb.spawn(
                    &self.dsp,
                    "nginx",
                    nginx,
                    &["-c", self.nginx_config.to_str().unwrap()],
                );
                self.tb
                    .wait_for_udp_port(&self.dsp, VIP_PORT, Duration::from_secs(10));
                Running::Process(p)
            }
        };
        // Warm up: ARP, caches, the first session.
        pktgen(&self.tb, &self.client, &self.target(c), 1000, 0.3)
            .ok_or("pktgen failed during warm-up")?;
        Ok(running)
    }
}

const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Measurements: contender -> rate -> one Run per repetition.
type Results = BTreeMap<Contender, BTreeMap<u64, Vec<Run>>>;

/// Set by SIGINT/SIGTERM: stop after the current run and clean up (the
/// testbed's namespaces go away when it is dropped, not when killed).
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: i32) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() {
    let handler = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &handler) }.expect("install a signal handler");
    }
    let started = Instant::now();
    let mut tb = Testbed::new("bench");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let worker = tb.add_host("worker", 10);
    tb.enable_xdp_tx(&dsp);
    // The yardstick's fixed worker is 10.0.0.10 at 02:00:00:00:00:0a: give
    // the worker that address and MAC too (it listens on every address).
    sh(
        "ip",
        &[
            "-n",
            &worker.ns,
            "link",
            "set",
            "eth0",
            "address",
            "02:00:00:00:00:0a",
        ],
    );
    sh(
        "ip",
        &[
            "-n",
            &worker.ns,
            "addr",
            "add",
            "10.0.0.10/24",
            "dev",
            "eth0",
        ],
    );
    let config = tb.write_file(
        "dispatcher.toml",
        &format!(
            "[service]\naddresses = [\"{}\"]\nport = {VIP_PORT}\n\n[[functions]]\nid = 1\nworkers = [{{ addr = \"{}:9000\", mac = \"02:00:00:00:00:0a\" }}]\n",
            dsp.ip, worker.ip
        ),
    );
    let nginx_config = tb.write_file(
        "nginx.conf",
        &format!(
            "load_module {NGINX_STREAM_MODULE};\nuser root;\nworker_processes auto;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             stream {{\n  upstream workers {{ server {w}:9000; }}\n  server {{\n    listen {vip}:{VIP_PORT} udp reuseport;\n    proxy_pass workers;\n    proxy_responses 1;\n    proxy_timeout 10s;\n  }}\n}}\n",
            dir = tb.dir().display(),
            w = worker.ip,
            vip = dsp.ip
        ),
    );
    let _worker = tb.spawn(
        &worker,
        "worker",
        &dispatcher_bin(),
        &["serve", "--listen", "0.0.0.0:9000", "--functions", "echo"],
    );
    tb.wait_for_udp_port(&worker, 9000, Duration::from_secs(10));
    let bed = Bed {
        tb,
        dsp,
        client,
        worker,
        config,
        nginx_config,
    };

    let mut results: Results = BTreeMap::new();
    let mut could_not: BTreeMap<Contender, String> = BTreeMap::new();
    // BENCH_ONLY="direct,XDP drv" and BENCH_REPETITIONS=1 for a quick look
    // (the page is then written to bench-partial.md, not over the real one).
    let only: Option<Vec<String>> = std::env::var("BENCH_ONLY")
        .ok()
        .map(|s| s.split(',').map(|c| c.trim().to_string()).collect());
    let repetitions: usize = std::env::var("BENCH_REPETITIONS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(REPETITIONS);
    let partial = only.is_some() || repetitions != REPETITIONS;
    for rep in 0..repetitions {
        for c in Contender::ALL {
            if only
                .as_ref()
                .is_some_and(|o| !o.iter().any(|n| n == c.name()))
            {
                continue;
            }
            if could_not.contains_key(&c) {
                continue;
            }
            let running = match bed.start(c) {
                Ok(r) => r,
                Err(why) => {
                    eprintln!("{}: cannot run: {why}", c.name());
                    could_not.insert(c, why);
                    continue;
                }
            };
            let target = bed.target(c);
            for rate in LATENCY_RATES.into_iter().chain(LOSS_RATES) {
                if STOP.load(Ordering::Relaxed) {
                    eprintln!("stopped: cleaning up, no page written");
                    return;
                }
                let seconds = if rate <= 10_000 { 2.0 } else { 1.0 };
                if results
                    .get(&c)
                    .and_then(|r| r.get(&rate))
                    .is_some_and(|runs| runs.len() > rep)
                {
                    continue; // 100K is in both lists
                }
                match pktgen(&bed.tb, &bed.client, &target, rate, seconds) {
                    Some(run) => {
                        println!(
                            "rep {} {:<10} {:>7} req/s: p50 {:>6} p99 {:>7} us, loss {:>6.2}%",
                            rep + 1,
                            c.name(),
                            rate,
                            run.p50,
                            run.p99,
                            run.loss
                        );
                        results
                            .entry(c)
                            .or_default()
                            .entry(rate)
                            .or_default()
                            .push(run);
                    }
                    None => eprintln!("{} at {rate} req/s: pktgen printed no report", c.name()),
                }
            }
            drop(running);
        }
    }
    let page = render(&results, &could_not, started.elapsed());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks");
    std::fs::create_dir_all(&dir).expect("docs/benchmarks");
    if partial {
        std::fs::write(dir.join("bench-partial.md"), page).expect("write bench-partial.md");
        println!(
            "wrote {} (a partial run: bench.md and its plots are untouched)",
            dir.join("bench-partial.md").display()
        );
        return;
    }
    std::fs::write(dir.join("bench.md"), page).expect("write bench.md");
    plots(&results, &dir);
    println!("wrote {}", dir.join("bench.md").display());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)))
}

fn runs(results: &Results, c: Contender, rate: u64) -> &[Run] {
    results
        .get(&c)
        .and_then(|r| r.get(&rate))
        .map_or(&[], Vec::as_slice)
}

/// A field of the runs, median and range, as "m (lo-hi)".
fn cell(runs: &[Run], field: impl Fn(&Run) -> f64) -> String {
    if runs.is_empty() {
        return "-".into();
    }
    let v: Vec<f64> = runs.iter().map(field).collect();
    let (lo, hi) = spread(&v);
    format!("{:.0} ({:.0}-{:.0})", median(v), lo, hi)
}

/// Per repetition, the most answers per second any run with under 1% loss
/// delivered. On this rig the sender's CPU also carries the forward path
/// (a veth hands its frames to the peer on the sending CPU), so above a
/// contender's capacity the sender falls behind its schedule rather than
/// losing requests: what was answered per second is the honest figure.
fn capacities(results: &Results, c: Contender) -> Vec<f64> {
    let Some(by_rate) = results.get(&c) else {
        return Vec::new();
    };
    let reps = by_rate.values().map(Vec::len).max().unwrap_or(0);
    (0..reps)
        .map(|rep| {
            LOSS_RATES
                .iter()
                .filter_map(|rate| by_rate.get(rate).and_then(|runs| runs.get(rep)))
                .filter(|run| run.loss < 1.0)
                .map(|run| run.goodput)
                .fold(0.0, f64::max)
        })
        .collect()
}

/// Per repetition, `field(contender) - field(direct)` at `rate`.
fn added(results: &Results, c: Contender, rate: u64, field: impl Fn(&Run) -> f64) -> Vec<f64> {
    runs(results, c, rate)
        .iter()
        .zip(runs(results, Contender::Direct, rate))
        .map(|(a, d)| field(a) - field(d))
        .collect()
}

fn render(results: &Results, could_not: &BTreeMap<Contender, String>, took: Duration) -> String {
    let mut md = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(md, "# bench: the dispatcher beside the direct path, a minimal XDP rewrite, user space and nginx\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` on {date}, from the numbers that run printed. Machine: {cpus} vCPUs ({cpu}), kernel {kernel}. \
         The run took {:.0} s.\n",
        took.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "## Headline: latency added over the direct path (p50 at 10K req/s)\n"
    );
    let _ = writeln!(
        md,
        "| contender | added p50 (us), median of per-repetition differences (range) |\n|---|---|"
    );
    for c in Contender::ALL
        .into_iter()
        .filter(|c| *c != Contender::Direct && results.contains_key(c))
    {
        let d = added(results, c, 10_000, |r| r.p50);
        let (lo, hi) = spread(&d);
        let _ = writeln!(
            md,
            "| {} | {:+.0} ({:+.0} to {:+.0}) |",
            c.name(),
            median(d),
            lo,
            hi
        );
    }
    let _ = writeln!(md, "\n## Targets (each a ratio from this run)\n");
    let drv_added = median(added(results, Contender::XdpDrv, 10_000, |r| r.p50));
    let nginx_added = median(added(results, Contender::Nginx, 10_000, |r| r.p50));
    let drv_p99 = median(
        runs(results, Contender::XdpDrv, 10_000)
            .iter()
            .map(|r| r.p99)
            .collect(),
    );
    let direct_p99 = median(
        runs(results, Contender::Direct, 10_000)
            .iter()
            .map(|r| r.p99)
            .collect(),
    );
    let cap = |c| median(capacities(results, c));
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    let _ = writeln!(md, "| target | this run | |\n|---|---|---|");
    let target = |md: &mut String, what: &str, value: String, ok: Option<bool>| {
        let v = ok.map_or("not measured".to_string(), |ok| verdict(ok).to_string());
        let _ = writeln!(md, "| {what} | {value} | {v} |");
    };
    let known = |x: f64| !x.is_nan();
    target(
        &mut md,
        "XDP (drv) added p50 over direct at 10K <= 3 us",
        format!("{drv_added:+.0} us"),
        known(drv_added).then_some(drv_added <= 3.0),
    );
    target(
        &mut md,
        "XDP (drv) p99 <= 1.1x direct's at 10K",
        format!(
            "{drv_p99:.0} us vs {direct_p99:.0} us = {:.2}x",
            drv_p99 / direct_p99
        ),
        (known(drv_p99) && known(direct_p99)).then_some(drv_p99 <= 1.1 * direct_p99),
    );
    target(
        &mut md,
        "nginx's added p50 >= 10x XDP's",
        format!("{nginx_added:+.0} us vs {drv_added:+.0} us"),
        (known(nginx_added) && known(drv_added))
            .then_some(nginx_added >= 10.0 * drv_added.max(0.0)),
    );
    let (xdp_cap, yard_cap, nginx_cap) = (
        cap(Contender::XdpDrv),
        cap(Contender::Yardstick),
        cap(Contender::Nginx),
    );
    target(
        &mut md,
        "XDP (drv) capacity >= 95% of the yardstick's",
        format!(
            "{xdp_cap:.0} vs {yard_cap:.0} req/s = {:.0}%",
            100.0 * xdp_cap / yard_cap
        ),
        (known(xdp_cap) && known(yard_cap) && yard_cap > 0.0).then_some(xdp_cap >= 0.95 * yard_cap),
    );
    target(
        &mut md,
        "XDP (drv) capacity >= 2.5x nginx's",
        format!(
            "{xdp_cap:.0} vs {nginx_cap:.0} req/s = {:.1}x",
            xdp_cap / nginx_cap
        ),
        (known(xdp_cap) && known(nginx_cap) && nginx_cap > 0.0)
            .then_some(xdp_cap >= 2.5 * nginx_cap),
    );
    let _ = writeln!(md, "\n[bench-analysis.md](bench-analysis.md) reads these numbers, says where targets were missed and what the profile shows.");

    for rate in LATENCY_RATES {
        let _ = writeln!(
            md,
            "\n## Latency at {}K req/s (us; median of the repetitions, range in brackets)\n",
            rate / 1000
        );
        let _ = writeln!(md, "| contender | p50 | p90 | p99 | p99.9 | loss % | requests sent > 1 ms late |\n|---|---|---|---|---|---|---|");
        for c in Contender::ALL
            .into_iter()
            .filter(|c| results.contains_key(c))
        {
            let r = runs(results, c, rate);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                c.name(),
                cell(r, |x| x.p50),
                cell(r, |x| x.p90),
                cell(r, |x| x.p99),
                cell(r, |x| x.p999),
                if r.is_empty() {
                    "-".into()
                } else {
                    format!("{:.2}", median(r.iter().map(|x| x.loss).collect()))
                },
                cell(r, |x| x.late as f64),
            );
        }
    }
    let _ = writeln!(
        md,
        "\n## Capacity: the most requests answered per second with under 1% loss\n"
    );
    let _ = writeln!(md, "| contender | answered req/s, median (range) | at each offered rate: answered K req/s / loss % (medians) |\n|---|---|---|");
    for c in Contender::ALL
        .into_iter()
        .filter(|c| results.contains_key(c))
    {
        let caps = capacities(results, c);
        let (lo, hi) = spread(&caps);
        let losses: Vec<String> = LOSS_RATES
            .iter()
            .map(|rate| {
                let r = runs(results, c, *rate);
                let goodput = median(r.iter().map(|x| x.goodput).collect()) / 1000.0;
                format!(
                    "{}K: {goodput:.0} / {:.1}",
                    rate / 1000,
                    median(r.iter().map(|x| x.loss).collect())
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {:.0} ({:.0}-{:.0}) | {} |",
            c.name(),
            median(caps),
            lo,
            hi,
            losses.join(", ")
        );
    }
    let _ = writeln!(md, "\n![latency percentiles at 10K req/s](bench-latency-10k.svg)\n\n![loss against offered rate](bench-loss.svg)\n\n![answered against offered rate](bench-answered.svg)\n");
    let _ = writeln!(md, "## Method\n");
    let _ = writeln!(
        md,
        "- One testbed of network namespaces: a client, the dispatcher host and one worker on a Linux bridge, veth pairs with \
         transmit checksum offload off on the hosts and GRO on the bridge ports; the dispatcher's bridge port runs an XDP program \
         that passes everything, so the veth picks up XDP_TX frames.\n\
         - The worker is `dispatcher serve --functions echo` (recvmmsg/sendmmsg batches). Every contender sends to that one worker.\n\
         - The load is `dispatcher pktgen` in the client's namespace: open loop, 64-byte payloads, one request id each, latency \
         from each request's scheduled send time (HDR histogram), 2 s per point up to 10K req/s, 1 s above.\n\
         - {reps} repetitions; in each, every contender in turn (started, warmed up with 300 requests, measured at every \
         rate, stopped): interleaved, so slow drifts of this shared machine hit all of them alike. Tables give the median and \
         the range over repetitions; the headline takes the difference to direct within each repetition first.\n\
         - Capacity: pktgen offers {} req/s; for each run with under 1% loss, the requests answered per second of \
         sending; the most of those. On this rig a veth hands its frames to the peer on the sending CPU, so the client's CPU \
         carries the whole forward path (bridge, dispatcher, worker's receive): above a contender's capacity the sender falls \
         behind its schedule (the late column) rather than losing requests, and the latency from the scheduled send time \
         grows with the backlog. Answered per second is what each path delivered.\n\
         - pktgen polls within 200 us of its next request instead of sleeping (`--spin-us`, the default), so the client's \
         CPU is busy while it sends.\n\
         - The contenders:",
        LOSS_RATES.map(|r| format!("{}K", r / 1000)).join(", "),
        reps = results.values().flat_map(|r| r.values().map(Vec::len)).max().unwrap_or(0),
    );
    for c in Contender::ALL {
        let _ = writeln!(md, "  - {}: {}", c.name(), c.what());
    }
    if !could_not.is_empty() {
        let _ = writeln!(md, "\n## Could not run\n");
        for (c, why) in could_not {
            let _ = writeln!(md, "- {}: {why}", c.name());
        }
    }
    md
}

fn plots(results: &Results, dir: &Path) {
    let nines = [0.5, 0.9, 0.99, 0.999];
    let latency: Vec<Series> = Contender::ALL
        .into_iter()
        .filter(|c| results.contains_key(c))
        .map(|c| {
            let r = runs(results, c, 10_000);
            let values = [
                median(r.iter().map(|x| x.p50).collect()),
                median(r.iter().map(|x| x.p90).collect()),
                median(r.iter().map(|x| x.p99).collect()),
                median(r.iter().map(|x| x.p999).collect()),
            ];
            Series {
                name: c.name().into(),
                points: nines
                    .iter()
                    .map(|q| plot::nines(*q))
                    .zip(values)
                    .filter(|(_, v)| !v.is_nan())
                    .collect(),
            }
        })
        .collect();
    let chart = Chart {
        title: "latency at 10K req/s, median of repetitions",
        x_label: "percentile",
        y_label: "latency (us, log scale)",
        x_format: &plot::percentile_label,
        y_log: true,
    };
    if let Err(e) = plot::draw(&dir.join("bench-latency-10k.svg"), &chart, &latency) {
        eprintln!("latency plot: {e:#}");
    }
    let loss = per_rate(results, |r| r.loss);
    let chart = Chart {
        title: "loss against offered rate, median of repetitions",
        x_label: "offered rate (thousand requests/s)",
        y_label: "lost (%)",
        x_format: &|x| format!("{x:.0}K"),
        y_log: false,
    };
    if let Err(e) = plot::draw(&dir.join("bench-loss.svg"), &chart, &loss) {
        eprintln!("loss plot: {e:#}");
    }
    let answered = per_rate(results, |r| r.goodput / 1000.0);
    let chart = Chart {
        title: "answered against offered rate, median of repetitions",
        x_label: "offered rate (thousand requests/s)",
        y_label: "answered (thousand requests/s)",
        x_format: &|x| format!("{x:.0}K"),
        y_log: false,
    };
    if let Err(e) = plot::draw(&dir.join("bench-answered.svg"), &chart, &answered) {
        eprintln!("answered plot: {e:#}");
    }
}

/// One line per contender: the median of `field` at each offered rate.
fn per_rate(results: &Results, field: impl Fn(&Run) -> f64) -> Vec<Series> {
    Contender::ALL
        .into_iter()
        .filter(|c| results.contains_key(c))
        .map(|c| Series {
            name: c.name().into(),
            points: LOSS_RATES
                .iter()
                .map(|rate| {
                    (
                        *rate as f64 / 1000.0,
                        median(runs(results, c, *rate).iter().map(&field).collect()),
                    )
                })
                .filter(|(_, v)| !v.is_nan())
                .collect(),
        })
        .collect()
}
