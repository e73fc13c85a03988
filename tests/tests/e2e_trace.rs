//! `dispatcher trace` on a namespace testbed: the data plane's sampled
//! decisions as they happen (a request to each worker, a workflow's start
//! and its STEP, a request no worker can take), `--function` filtering,
//! `--sample 1/N` sampling in the kernel under pktgen load, one tracer at a
//! time, and sampling switched off when the tracer stops, even when it is
//! killed (the lease lapses in the kernel). Needs root: run through
//! `cargo xtask test`.

use std::{
    collections::HashSet,
    thread,
    time::{Duration, Instant, SystemTime},
};

use dispatcher::data_plane::Maps;
use serde_json::Value;
use tests::{
    bed::Bed,
    testbed::{dispatcher_bin, Process},
};

/// SETTINGS' trace_sample of the testbed's data plane: 0 when nobody traces.
fn trace_sample(bed: &Bed) -> u32 {
    let maps = Maps::from_pins(&bed.pin_dir()).expect("the pinned maps");
    maps.settings.get(&0, 0).unwrap().trace_sample
}

/// Starts `dispatcher trace ARGS` on the dispatcher host, once it traces.
fn start_trace(bed: &Bed, name: &str, args: &[&str]) -> Process {
    let mut all = vec!["trace"];
    all.extend_from_slice(args);
    let trace = bed.spawn(&bed.dsp, name, &dispatcher_bin(), &all);
    trace.wait_for_log("tracing one FaaS packet in", 1, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    while trace_sample(bed) == 0 {
        assert!(Instant::now() < deadline, "sampling never switched on");
        thread::sleep(Duration::from_millis(20));
    }
    trace
}

/// Waits for the tracer to end on its own; the decisions it printed.
fn decisions(mut trace: Process) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !trace.log().contains("decisions shown") {
        assert!(
            Instant::now() < deadline,
            "trace did not end:\n{}",
            trace.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Done, or SIGTERM'd between its last line and its exit: either way
    // it ends cleanly (having switched sampling off).
    assert!(trace.stop(), "trace did not exit cleanly:\n{}", trace.log());
    trace
        .log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn trace_shows_sampled_decisions_as_the_data_plane_makes_them() {
    let bed = Bed::new("trace", 2);
    let (w1, w2) = (&bed.workers[0], &bed.workers[1]);
    let conf = bed.write_config(
        &[(1, &[w1, w2]), (2, &[])],
        "\n[[workflows]]\nid = 100\nsteps = [1, 1]\n",
    );
    let service = bed.service();
    let _workers = [
        bed.serve(w1, "echo", &["--dispatcher", &service]),
        bed.serve(w2, "echo", &["--dispatcher", &service]),
    ];
    let _dispatcher = bed.start("dispatcher", &conf, &[]);
    assert_eq!(trace_sample(&bed), 0, "sampling on before anyone traces");

    // Every decision (--sample 1): two requests, a workflow (its start and
    // its one STEP), and a request for a function without workers.
    let trace = start_trace(
        &bed,
        "trace",
        &["--json", "--count", "5", "--duration", "20"],
    );
    // One tracer at a time.
    let second = bed.cli(&["trace", "--duration", "1"]);
    assert!(
        !second.ok
            && second
                .stderr
                .contains("another `dispatcher trace` is watching"),
        "{}",
        second.stderr
    );
    for i in 0..2 {
        let answer = bed.invoke("1", &format!("r{i}"));
        assert_eq!(answer.body, format!("r{i}"), "{}", answer.stderr);
    }
    let answer = bed.invoke("100", "wf");
    assert_eq!(answer.body, "wf", "{}", answer.stderr);
    let answer = bed.invoke("2", "nobody");
    assert_eq!(answer.code, Some(2), "{}", answer.stderr);
    let seen = decisions(trace);
    assert_eq!(seen.len(), 5, "{seen:#?}");
    assert_eq!(
        trace_sample(&bed),
        0,
        "sampling still on after the tracer ended"
    );

    let workers: HashSet<String> = [w1, w2]
        .iter()
        .map(|w| w.worker_addr().to_string())
        .collect();
    let client = bed.client.ip.to_string();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as f64;
    for d in &seen {
        let t = d["time_unix_ns"].as_f64().unwrap();
        assert!((now - t).abs() < 60e9, "time {t} is not now: {d}");
        assert_eq!(d["policy"], "round-robin", "{d}")
    }
    let requests: Vec<&Value> = seen
        .iter()
        .filter(|d| d["outcome"] == "dispatched_request")
        .collect();
    assert_eq!(requests.len(), 2, "{seen:#?}");
    let mut chosen = HashSet::new();
    for d in &requests {
        assert_eq!(d["kind"], "REQUEST");
        assert_eq!(d["function"], 1);
        assert_eq!(d["action"], "XDP_TX");
        assert!(d["source"].as_str().unwrap().starts_with(&client), "{d}");
        chosen.insert(d["worker"].as_str().unwrap().to_string());
    }
    assert_eq!(chosen, workers, "round-robin's two turns: {requests:?}");
    let start = seen
        .iter()
        .find(|d| d["outcome"] == "dispatched_workflow")
        .expect("the workflow's start");
    assert_eq!(start["workflow"], 100, "{start}");
    assert_eq!(start["step"], 0, "{start}");
    assert_eq!(start["function"], 1, "{start}");
    let step = seen
        .iter()
        .find(|d| d["outcome"] == "dispatched_step")
        .expect("the workflow's STEP");
    assert_eq!(step["kind"], "STEP", "{step}");
    assert_eq!(step["step"], 1, "{step}");
    assert!(
        workers.contains(step["source"].as_str().unwrap()),
        "a STEP comes from the worker that ran step 0: {step}"
    );
    let none = seen
        .iter()
        .find(|d| d["outcome"] == "pass_no_worker")
        .expect("the request nobody could take");
    assert_eq!(none["function"], 2);
    assert_eq!(none["action"], "XDP_PASS");
    assert!(none["worker"].is_null(), "{none}");
    assert!(none["policy"] == "round-robin", "{none}");

    // --function: only that function's decisions.
    let trace = start_trace(
        &bed,
        "trace-2",
        &[
            "--json",
            "--function",
            "2",
            "--count",
            "1",
            "--duration",
            "20",
        ],
    );
    for _ in 0..3 {
        bed.invoke("1", "other");
    }
    bed.invoke("2", "mine");
    let seen = decisions(trace);
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0]["function"], 2);

    // --sample 1/4 under load: about a quarter of the requests, drawn in
    // the kernel.
    let trace = start_trace(
        &bed,
        "trace-3",
        &["--json", "--sample", "1/4", "--duration", "6"],
    );
    let (report, ()) = bed.under_load(1000, 3.0, || {});
    let seen = decisions(trace);
    let share = seen.len() as f64 / report.sent as f64;
    assert!(
        report.answered == report.sent && (0.15..0.35).contains(&share),
        "{} of {} requests traced ({share:.2}): {report:?}",
        seen.len(),
        report.sent
    );

    // A tracer killed outright: sampling stays on until its lease lapses,
    // then the first drawn packet switches it off in the kernel.
    let mut trace = start_trace(&bed, "trace-4", &["--duration", "60"]);
    trace.kill_hard();
    assert_ne!(trace_sample(&bed), 0);
    thread::sleep(Duration::from_millis(3500));
    bed.invoke("1", "after the lease");
    assert_eq!(trace_sample(&bed), 0, "a dead tracer's sampling went on");
    let text = bed.cli(&["trace", "--duration", "0.5"]);
    assert!(
        text.ok,
        "a new tracer after the lease lapsed: {}",
        text.stderr
    );
}
