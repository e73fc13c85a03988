//! A real Prometheus (Debian's `prometheus`, which `cargo xtask test`
//! installs) scrapes the daemon on a namespace testbed: `promtool check
//! metrics` finds nothing to fix on the page; under pktgen load the
//! dispatched-request rate read back through Prometheus's query API is the
//! rate pktgen achieved; a function whose workers are all drained shows its
//! ERROR answers per function and puts the shipped alert rules'
//! `DispatcherFunctionHasNoUpWorker` into pending; every rule evaluates
//! without error and every query of the shipped Grafana dashboard runs.
//! Needs root: run through `cargo xtask test`.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{bed::Bed, testbed::config};

const KEY: &str = "prometheus-test-key";

fn monitoring_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/monitoring")
        .join(name)
}

/// GET `url` from inside the dispatcher's namespace (where the daemon's
/// /metrics and Prometheus listen on loopback).
fn get(bed: &Bed, url: &str, query: Option<&str>) -> String {
    let mut args = vec!["-sS", "--fail-with-body", "--max-time", "10"];
    let q;
    if let Some(query) = query {
        q = format!("query={query}");
        args.extend(["--get", "--data-urlencode", &q]);
    }
    args.push(url);
    let out = bed.exec(&bed.dsp, Path::new("curl"), &args);
    assert!(
        out.status.success(),
        "curl {url} {query:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An instant query through Prometheus's HTTP API: the result vector.
fn query(bed: &Bed, promql: &str) -> Vec<Value> {
    let body = get(bed, "http://127.0.0.1:9090/api/v1/query", Some(promql));
    let v: Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
    assert_eq!(v["status"], "success", "{promql}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The single value of a query that returns one series.
fn scalar(bed: &Bed, promql: &str) -> Option<f64> {
    query(bed, promql)
        .first()
        .and_then(|s| s["value"][1].as_str()?.parse().ok())
}

/// Waits for Prometheus's readiness endpoint: it listens before its
/// storage is open and answers queries 503 until then (seen on a fresh
/// machine, where opening the storage took seconds).
fn wait_until_ready(bed: &Bed, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let args = [
        "-sS",
        "--fail",
        "--max-time",
        "5",
        "http://127.0.0.1:9090/-/ready",
    ];
    loop {
        let out = bed.exec(&bed.dsp, Path::new("curl"), &args);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus not ready within {timeout:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            bed.logs()
        );
        thread::sleep(Duration::from_millis(250));
    }
}

/// Polls `promql` until it returns something (Prometheus scrapes and
/// evaluates once a second), or panics after `timeout`.
fn wait_for_series(bed: &Bed, promql: &str, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = query(bed, promql);
        if !r.is_empty() {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{promql}: no series within {timeout:?}\n{}",
            bed.logs()
        );
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_the_dispatcher_and_the_shipped_rules_and_dashboard_work() {
    let bed = Bed::new("prom", 2);
    let (w1, w2) = (&bed.workers[0], &bed.workers[1]);
    let health = format!(
        "\n[metrics]\nlisten = \"127.0.0.1:9110\"\n[health]\nlisten = \"{}:7771\"\nkey = \"{KEY}\"\nnetworks = [\"10.99.0.0/24\"]\ndown_after_ms = 1000\n",
        bed.dsp.ip
    );
    let conf = bed.write_file(
        "dispatcher.toml",
        &config(bed.dsp.ip, &[(1, &[w1, w2]), (2, &[w2])], &health),
    );
    let hb_to = format!("{}:7771", bed.dsp.ip);
    let hb = [
        "--heartbeat-to",
        &hb_to,
        "--heartbeat-key",
        KEY,
        "--heartbeat-ms",
        "100",
    ];
    let _workers = [bed.serve(w1, "echo", &hb), bed.serve(w2, "echo", &hb)];
    let dispatcher = bed.start("dispatcher", &conf, &[]);
    bed.wait_for_tcp_port(&bed.dsp, 9110, Duration::from_secs(10));
    bed.cli_ok(&[
        "workers",
        "drain",
        "--function",
        "2",
        "--addr",
        &w2.worker_addr().to_string(),
    ]);

    // The page is what Prometheus's own linter wants.
    let lint = bed.exec(
        &bed.dsp,
        Path::new("bash"),
        &[
            "-c",
            "set -o pipefail; curl -sSf http://127.0.0.1:9110/metrics | promtool check metrics",
        ],
    );
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // Debian's Prometheus, scraping every second, with the shipped rules.
    let rules = monitoring_file("alerts.yml");
    let prom_yml = bed.write_file(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: dispatcher\n    static_configs:\n      - targets: ['127.0.0.1:9110']\n",
            rules.display()
        ),
    );
    let tsdb = bed.dir().join("prometheus-data");
    let tsdb_flag = format!("--storage.tsdb.path={}", tsdb.display());
    let config_flag = format!("--config.file={}", prom_yml.display());
    let _prometheus = bed.spawn(
        &bed.dsp,
        "prometheus",
        Path::new("prometheus"),
        &[
            &config_flag,
            &tsdb_flag,
            "--web.listen-address=127.0.0.1:9090",
        ],
    );
    bed.wait_for_tcp_port(&bed.dsp, 9090, Duration::from_secs(30));
    wait_until_ready(&bed, Duration::from_secs(60));
    wait_for_series(&bed, "up{job=\"dispatcher\"} == 1", Duration::from_secs(30));

    // Under load, Prometheus reads the rate pktgen achieved.
    let (report, seen) = bed.under_load(2000, 8.0, || {
        // Let at least five scrapes of steady load land in the window.
        thread::sleep(Duration::from_secs(6));
        scalar(
            &bed,
            "sum(rate(dispatcher_packets_total{outcome=\"dispatched_request\"}[4s]))",
        )
    });
    let seen = seen.expect("a dispatched-request rate");
    assert!(
        report.answered > 0 && (seen / report.achieved_rate - 1.0).abs() < 0.3,
        "Prometheus read {seen:.0} req/s, pktgen achieved {:.0}: {report:?}",
        report.achieved_rate
    );
    let per_function = scalar(
        &bed,
        "sum(rate(dispatcher_function_packets_total{function=\"1\"}[1m])) > 0",
    );
    assert!(per_function.is_some(), "no per-function request rate");

    // Function 2 has a worker but none up: ERROR 2 per function, and the
    // alert that would page someone goes pending.
    for i in 0..5 {
        let answer = bed.invoke("2", &format!("x{i}"));
        assert!(
            answer.stderr.contains("ERROR 2") || answer.stderr.contains("no up worker"),
            "{}",
            answer.stderr
        );
    }
    let errors = wait_for_series(
        &bed,
        "dispatcher_function_errors_sent_total{function=\"2\",code=\"2\",reason=\"no_up_worker\"} >= 5",
        Duration::from_secs(15),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    wait_for_series(
        &bed,
        "ALERTS{alertname=\"DispatcherFunctionHasNoUpWorker\",function=\"2\"}",
        Duration::from_secs(15),
    );
    assert!(
        query(
            &bed,
            "ALERTS{alertname=\"DispatcherFunctionHasNoUpWorker\",function=\"1\"}"
        )
        .is_empty(),
        "function 1 has up workers"
    );

    // Heartbeats arrive: their age stays under a few intervals.
    let age = wait_for_series(
        &bed,
        &format!(
            "dispatcher_worker_heartbeat_age_seconds{{worker=\"{}\"}} < 2",
            w1.worker_addr()
        ),
        Duration::from_secs(15),
    );
    assert_eq!(age.len(), 1, "{age:?}");
    assert!(
        scalar(&bed, "dispatcher_map_entries{map=\"functions\"}") == Some(2.0),
        "function rows in use"
    );

    // Every shipped rule evaluates cleanly against the real metrics.
    let rules: Value =
        serde_json::from_str(&get(&bed, "http://127.0.0.1:9090/api/v1/rules", None)).unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), 10, "{rules}");
    for rule in loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // Every query of the dashboard runs; the traffic panels have data.
    let dashboard: Value =
        serde_json::from_slice(&std::fs::read(monitoring_file("grafana-dashboard.json")).unwrap())
            .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$function", ".*");
            let result = query(&bed, &expr);
            let title = panel["title"].as_str().unwrap();
            if [
                "Packets by outcome",
                "Requests per function",
                "Requests per worker",
            ]
            .contains(&title)
            {
                assert!(!result.is_empty(), "panel {title}: {expr} has no data");
            }
        }
    }

    // A SIGHUP that changes [health] restarts its listener: its counters
    // go on from where they were (a counter that fell back would read as
    // a reset to Prometheus).
    let accepted = || -> f64 {
        get(&bed, "http://127.0.0.1:9110/metrics", None)
            .lines()
            .find_map(|l| l.strip_prefix("dispatcher_heartbeats_total{result=\"accepted\"} "))
            .and_then(|v| v.trim().parse().ok())
            .expect("accepted heartbeats on the page")
    };
    let before = accepted();
    assert!(before > 0.0);
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        text.replace("down_after_ms = 1000", "down_after_ms = 1500"),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dispatcher.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    dispatcher.wait_for_log("SIGHUP: configuration reloaded", 1, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(300));
    let after = accepted();
    assert!(
        after >= before,
        "accepted heartbeats fell from {before} to {after} over a reload"
    );
}
