//! `cargo xtask bench-hosting`: what each way of hosting a function adds
//! to a request's latency through the XDP dispatcher, over the in-process
//! echo. A benchmark, not a test: it writes docs/benchmarks/bench-hosting.md
//! with what its run measured.
//!
//! One worker host runs `dispatcher serve` with five functions, each an
//! echo (or as near as its kind allows): the built-in echo; `exec:cat`
//! (a fork and exec per request); a warm Python process
//! (faas_dispatcher.warm); an HTTP upstream to nginx on the worker's
//! loopback (`return 200`: the HTTP path's own cost); an HTTP upstream to
//! Python's standard-library server (what a Python function server costs).
//! pktgen on the client sends each function, in turn, 1,000 and 10,000
//! requests a second for a few seconds, the rounds interleaved. The
//! worker's timeout is 1.5 s and each run is followed by 2 s of quiet, so a
//! mode that falls behind does not carry its backlog into the next run.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use dispatcher::workload::pktgen::Report;
use tests::{
    bed::{under_load, Bed},
    testbed::repo_file,
};

const RATES: [u32; 2] = [1_000, 10_000];
const SECONDS: f64 = 3.0;
const ROUNDS: usize = 3;

struct Mode {
    id: u32,
    name: &'static str,
    how: &'static str,
}

const MODES: [Mode; 5] = [
    Mode {
        id: 1,
        name: "in-process echo",
        how: "`1=echo`, the yardstick",
    },
    Mode {
        id: 2,
        name: "exec (fork per request)",
        how: "`2=exec:cat`, max_inflight 64, pool 8",
    },
    Mode {
        id: 3,
        name: "warm Python process",
        how: "`3=warm:python3 tests/functions/warm_echo.py`, pool 2",
    },
    Mode {
        id: 4,
        name: "HTTP upstream (nginx)",
        how: "`4=http:` nginx `return 200` on the worker's loopback, pool 8",
    },
    Mode {
        id: 5,
        name: "HTTP upstream (Python http.server)",
        how: "`5=http:` examples/functions/http_function.py, pool 8",
    },
];

fn main() {
    let bed = Bed::new("bhosting", 1);
    let (tb, w1) = (&bed.tb, &bed.workers[0]);
    let nginx_conf = tb.write_file(
        "nginx-http.conf",
        &format!(
            "user root;\nworker_processes 1;\ndaemon off;\npid {dir}/nginx-http.pid;\nerror_log {dir}/nginx-http-error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  server {{\n    listen 127.0.0.1:8081;\n    location / {{ return 200 \"ok\"; }}\n  }}\n}}\n",
            dir = tb.dir().display()
        ),
    );
    let _nginx = tb.spawn(
        w1,
        "nginx-http",
        Path::new("/usr/sbin/nginx"),
        &["-c", nginx_conf.to_str().unwrap()],
    );
    tb.wait_for_tcp_port(w1, 8081, Duration::from_secs(10));
    let py_http = repo_file("examples/functions/http_function.py");
    let _py = tb.spawn(
        w1,
        "python-http",
        Path::new("/usr/bin/python3"),
        &[py_http.to_str().unwrap(), "--port", "8080"],
    );
    tb.wait_for_tcp_port(w1, 8080, Duration::from_secs(10));
    let worker_conf = tb.write_file(
        "worker.toml",
        &format!(
            "run_as = \"nobody\"\n\n[[functions]]\nid = 2\nrun = \"exec:cat\"\nmax_inflight = 64\npool = 8\n\n\
             [[functions]]\nid = 3\nrun = \"warm:/usr/bin/python3 {warm}\"\npool = 2\n\n\
             [[functions]]\nid = 4\nrun = \"http:http://127.0.0.1:8081/\"\npool = 8\n\n\
             [[functions]]\nid = 5\nrun = \"http:http://127.0.0.1:8080/\"\npool = 8\n",
            warm = repo_file("tests/functions/warm_echo.py").display()
        ),
    );
    let only_w1: &[&tests::testbed::Host] = &[w1];
    let functions: Vec<(u32, &[&tests::testbed::Host])> =
        MODES.iter().map(|m| (m.id, only_w1)).collect();
    let conf = bed.write_config(&functions, "");
    let service = bed.service();
    let _worker = tb.serve_with(
        w1,
        &[
            "--function",
            "1=echo",
            "--config",
            worker_conf.to_str().unwrap(),
            "--dispatcher",
            &service,
        ],
    );
    let _dispatcher = bed.start("dispatcher", &conf, &[]);
    for m in &MODES {
        let a = bed.invoke(&m.id.to_string(), "warm-up");
        assert_eq!(
            a.code,
            Some(0),
            "{} does not answer: {}\n{}",
            m.name,
            a.stderr,
            tb.logs()
        );
    }

    // mode id -> rate -> reports, one per round.
    let mut results: BTreeMap<(u32, u32), Vec<Report>> = BTreeMap::new();
    for round in 0..ROUNDS {
        for rate in RATES {
            for m in &MODES {
                let id = m.id.to_string();
                let (report, ()) = under_load(
                    tb,
                    &bed.client,
                    &service,
                    rate,
                    SECONDS,
                    &["--functions", &id],
                    || {},
                );
                eprintln!(
                    "round {round} {} at {rate}/s: answered {}/{} errors {} p50 {} us p99 {} us",
                    m.name,
                    report.answered,
                    report.sent,
                    report.errors,
                    report.latency_us.p50,
                    report.latency_us.p99
                );
                results.entry((m.id, rate)).or_default().push(report);
                // What a mode could not keep up with (waiting at most the
                // 1.5 s timeout) is over before the next run starts.
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }

    let page = page(&results);
    let path = repo_file("docs/benchmarks/bench-hosting.md");
    std::fs::write(&path, &page).expect("write the page");
    print!("{page}");
    eprintln!("wrote {}", path.display());
}

/// The round whose p50 is the median of the rounds': its whole row is
/// reported, so that every column comes from one run.
fn median_run(runs: &[Report]) -> &Report {
    let mut sorted: Vec<&Report> = runs.iter().collect();
    sorted.sort_by_key(|r| r.latency_us.p50);
    sorted[sorted.len() / 2]
}

fn page(results: &BTreeMap<(u32, u32), Vec<Report>>) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let date = String::from_utf8_lossy(
        &std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .trim()
    .to_string();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# bench-hosting: what each hosting mode adds to a request through XDP\n"
    );
    let _ = writeln!(
        out,
        "Written by `cargo xtask bench-hosting` on {date} (as root) on this project's machine: {cpus} vCPUs ({cpu}), kernel {}, release builds. \
         A benchmark, not a test: every number below is what this run measured.\n",
        kernel.trim()
    );
    let _ = writeln!(out, "## Method\n");
    let _ = writeln!(out, "- A namespace testbed: a client, the dispatcher (XDP in drv mode on its veth) and one worker host, all on the same {cpus} CPUs.");
    let _ = writeln!(out, "- One `dispatcher serve` on the worker hosts five functions, each an echo as near as its kind allows:");
    for m in &MODES {
        let _ = writeln!(out, "  - function {}: {} ({})", m.id, m.name, m.how);
    }
    let _ = writeln!(
        out,
        "- pktgen (open loop, latency from each request's scheduled send time) sends one function at a time {} s at each rate, \
         {ROUNDS} rounds, the functions and rates interleaved; each table row is the round with the median p50. \
         *Added* is that p50 minus the in-process echo's (its median round) at the same rate. \
         *errors* are ERROR answers: for exec, mostly ERROR 7 (the function at its limit answers BUSY, and with one worker the dispatcher has no other to re-steer to); \
         *lost* are requests pktgen got no answer for within its 1.5 s drain (late, or never).\n",
        SECONDS
    );
    let added = |id: u32, rate: u32| {
        median_run(&results[&(id, rate)])
            .latency_us
            .p50
            .saturating_sub(median_run(&results[&(1, rate)]).latency_us.p50)
    };
    for rate in RATES {
        let _ = writeln!(out, "## {rate} requests/s\n");
        let _ = writeln!(out, "| mode | sent | answered | errors | lost | p50 us | p99 us | p99.9 us | added p50 us |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for m in &MODES {
            let r = median_run(&results[&(m.id, rate)]);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                m.name,
                r.sent,
                r.answered,
                r.errors,
                r.lost,
                r.latency_us.p50,
                r.latency_us.p99,
                r.latency_us.p999,
                if m.id == 1 {
                    "-".to_string()
                } else {
                    added(m.id, rate).to_string()
                }
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "## Against the targets\n");
    let _ = writeln!(out, "| target | rate | added p50 us | |");
    let _ = writeln!(out, "|---|---:|---:|---|");
    for (id, what, limit) in [
        (3, "warm process adds at most 30 us", 30),
        (4, "HTTP upstream adds at most 100 us", 100),
    ] {
        for rate in RATES {
            let got = added(id, rate);
            let verdict = if got <= limit { "met" } else { "missed" };
            let _ = writeln!(out, "| {what} | {rate} | {got} | {verdict} |");
        }
    }
    let _ = writeln!(
        out,
        "\nfork per request is reported as it is (no target).\n"
    );
    let _ = writeln!(out, "Every round, as it ran:\n");
    let _ = writeln!(
        out,
        "| mode | rate | round | sent | answered | errors | lost | p50 us | p99 us |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((id, rate), runs) in results {
        let name = MODES.iter().find(|m| m.id == *id).map_or("?", |m| m.name);
        for (k, r) in runs.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {name} | {rate} | {k} | {} | {} | {} | {} | {} | {} |",
                r.sent, r.answered, r.errors, r.lost, r.latency_us.p50, r.latency_us.p99
            );
        }
    }
    out
}
