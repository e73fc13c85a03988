//! The user's own functions behind the XDP data plane (docs/worker-api.md):
//! exec (a process per request), warm (a pool of long-lived processes),
//! http (the function's own HTTP server: Python's standard-library server
//! here, not a mock), each end to end from a client through the
//! dispatcher; and `--max-inflight` holding exactly under a burst.
//!
//! Needs root: run through `cargo xtask test`.

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use tests::{
    bed::{Answer, Bed},
    testbed::{repo_file, Host, Process, Testbed},
};

const PYTHON: &str = "/usr/bin/python3";

fn error_code(answer: &Answer) -> Option<u16> {
    let words: Vec<&str> = answer.stderr.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "ERROR")?;
    words.get(at + 1)?.parse().ok()
}

/// Asserts a RESPONSE with `body`.
#[track_caller]
fn assert_response(answer: &Answer, body: &str) {
    assert_eq!(answer.code, Some(0), "not a RESPONSE: {}", answer.stderr);
    assert_eq!(answer.body, body);
}

/// Asserts ERROR `code` whose message holds `text`.
#[track_caller]
fn assert_error(answer: &Answer, code: u16, text: &str) {
    assert_eq!(error_code(answer), Some(code), "{answer:?}");
    assert!(
        answer.stderr.contains(text),
        "`{text}` not in {}",
        answer.stderr
    );
}

/// The test HTTP function server on `host`'s loopback.
fn http_server(tb: &Testbed, host: &Host, port: u16, args: &[&str]) -> Process {
    let script = repo_file("tests/functions/http_server.py");
    let port_s = port.to_string();
    let mut all = vec![script.to_str().unwrap(), "--port", &port_s];
    all.extend_from_slice(args);
    let process = tb.spawn(
        host,
        &format!("{}-http{port}", host.role),
        Path::new(PYTHON),
        &all,
    );
    tb.wait_for_tcp_port(host, port, Duration::from_secs(10));
    process
}

/// GET /stats of the test server: (requests, peak concurrency, connections).
fn http_stats(tb: &Testbed, host: &Host, port: u16) -> (u64, u64, u64) {
    let code = format!(
        "import json, urllib.request; s = json.load(urllib.request.urlopen('http://127.0.0.1:{port}/stats')); print(s['requests'], s['peak'], s['connections'])"
    );
    let out = tb.exec(host, Path::new(PYTHON), &["-c", &code]);
    let text = String::from_utf8_lossy(&out.stdout);
    let n: Vec<u64> = text
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(
        n.len(),
        3,
        "stats: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (n[0], n[1], n[2])
}

/// Whether a process whose command line starts with `marker` runs
/// anywhere (the worker's own holds it further on).
fn running(marker: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", &format!("^{marker}")])
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn exec_functions_answer_fail_time_out_and_overflow_through_xdp() {
    let bed = Bed::new("exec", 1);
    let (tb, w1) = (&bed.tb, &bed.workers[0]);
    let greet = repo_file("examples/functions/greet.sh");
    // The timeout's process leaves a child behind in its group: the kill
    // must take it too.
    let marker = format!("sleep 47.{}", std::process::id());
    let functions = [
        format!("1=exec:{}", greet.display()),
        "2=exec:sh -c 'echo first >&2; echo the last line >&2; exit 3'".to_string(),
        format!("3=exec:sh -c '{marker} & {marker}'"),
        "4=exec:head -c 70000 /dev/zero".to_string(),
        "5=exec:tr a-z A-Z".to_string(),
        "6=exec:env".to_string(),
    ];
    let workflow = "\n[[workflows]]\nid = 100\nsteps = [1, 5]\n";
    let only_w1: &[&Host] = &[w1];
    let ids: Vec<(u32, &[&Host])> = (1..=6).map(|id| (id, only_w1)).collect();
    let conf = bed.write_config(&ids, workflow);
    let service = bed.service();
    let mut args = vec![
        "--dispatcher",
        &service,
        "--run-as",
        "nobody",
        "--timeout-ms",
        "700",
    ];
    for f in &functions {
        args.extend(["--function", f.as_str()]);
    }
    // As root, user code needs --run-as said.
    let refused = tb.exec(
        w1,
        &tests::testbed::dispatcher_bin(),
        &[
            "serve",
            "--listen",
            "10.99.0.10:9000",
            "--function",
            &functions[0],
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--run-as"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let _worker = tb.serve_with(w1, &args);
    let _dispatcher = bed.start("dispatcher", &conf, &[]);

    let answer = bed.invoke("1", "world");
    assert_eq!(answer.code, Some(0), "{}\n{}", answer.stderr, tb.logs());
    assert!(
        answer.body.starts_with("hello, world (request "),
        "{}",
        answer.body
    );
    assert!(
        answer.body.ends_with("served by nobody)"),
        "{}",
        answer.body
    );
    assert_error(&bed.invoke("1", ""), 6, "greet: send a name");
    assert_error(&bed.invoke("2", "x"), 6, "(exit status 3): the last line");

    let start = Instant::now();
    assert_error(&bed.invoke("3", "x"), 6, "ran past its timeout (700 ms)");
    assert!(start.elapsed() < Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !running(&marker),
        "the timed-out function's group outlived it"
    );

    assert_error(&bed.invoke("4", "x"), 5, "more than one datagram");
    // A workflow: greet's output goes on as a STEP to tr.
    let answer = bed.invoke("100", "steps");
    assert!(
        answer.body.starts_with("HELLO, STEPS (REQUEST "),
        "{answer:?}"
    );

    // Only the documented environment (and the request's ids).
    let answer = bed.invoke("6", "");
    let names: HashSet<&str> = answer
        .body
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let expected: HashSet<&str> = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "FAAS_FUNCTION_ID",
        "FAAS_REQUEST_ID",
        "FAAS_KEY",
        "FAAS_WORKFLOW_ID",
        "FAAS_STEP",
        "PWD",
    ]
    .into();
    assert!(names.is_subset(&expected), "{names:?}");
    assert!(
        answer.body.contains("FAAS_FUNCTION_ID=6"),
        "{}",
        answer.body
    );
}

#[test]
fn warm_processes_answer_and_a_crashed_one_is_replaced() {
    let bed = Bed::new("warm", 1);
    let (tb, w1) = (&bed.tb, &bed.workers[0]);
    let handler = repo_file("tests/functions/warm_handler.py");
    let function = format!("1=warm:{PYTHON} {}", handler.display());
    let conf = bed.write_config(&[(1, &[w1])], "");
    let service = bed.service();
    let mut worker = tb.serve_with(
        w1,
        &[
            "--function",
            &function,
            "--pool",
            "2",
            "--run-as",
            "nobody",
            "--timeout-ms",
            "1000",
            "--dispatcher",
            &service,
        ],
    );
    let _dispatcher = bed.start("dispatcher", &conf, &[]);

    let answer = bed.invoke("1", "warm");
    assert_response(&answer, "WARM");
    // The same two processes answer every request: no fork per request.
    let pids =
        |n: usize| -> HashSet<String> { (0..n).map(|_| bed.invoke("1", "pid").body).collect() };
    let before = pids(8);
    assert!(before.len() <= 2, "{before:?}");
    assert_error(&bed.invoke("1", "fail"), 6, "ValueError: asked to fail");
    assert!(
        pids(4).is_subset(&before),
        "a failure does not cost the process"
    );

    // A crash mid-request: ERROR 6 naming how it ended, and a fresh
    // process in its place.
    assert_error(&bed.invoke("1", "crash"), 6, "exit status 3");
    let after: HashSet<String> = pids(8);
    assert!(
        after.len() <= 2 && !after.is_subset(&before),
        "{before:?} {after:?}"
    );
    // Past the timeout: killed, replaced, and the pool goes on.
    assert_error(&bed.invoke("1", "sleep:5000"), 6, "ran past its timeout");
    for i in 0..4 {
        assert_response(
            &bed.invoke("1", &format!("again {i}")),
            &format!("AGAIN {i}"),
        );
    }
    assert!(
        tb.logs().contains("crashing on purpose"),
        "the process's stderr reaches the worker's log"
    );
    // A process that ends while idle: the next request it would have
    // taken (the pool reuses the last one) runs on a fresh one instead.
    for _ in 0..3 {
        assert_response(&bed.invoke("1", "last"), "bye");
        std::thread::sleep(Duration::from_millis(200));
        assert_response(&bed.invoke("1", "taken"), "TAKEN");
    }
    // SIGTERM while a request runs: the worker answers it, then exits.
    let answer = std::thread::scope(|s| {
        let pending = s.spawn(|| bed.invoke("1", "sleep:600"));
        std::thread::sleep(Duration::from_millis(250));
        assert!(worker.stop(), "the worker exits cleanly");
        pending.join().unwrap()
    });
    assert_response(&answer, "slept");
}

#[test]
fn http_upstreams_answer_map_statuses_and_resteer_overload() {
    let bed = Bed::new("http", 2);
    let (tb, w1, w2) = (&bed.tb, &bed.workers[0], &bed.workers[1]);
    // Function 1 on w1 and w2: w1's server is always overloaded (429), so
    // w1 sends every request back as BUSY and the dispatcher re-steers it
    // to w2. Function 2 on w1 only: its server answers by payload.
    let _w1_busy = http_server(tb, w1, 8081, &["--status", "429", "--name", "w1"]);
    let _w1_http = http_server(tb, w1, 8080, &["--name", "w1"]);
    let _w2_http = http_server(tb, w2, 8080, &["--name", "w2"]);
    let conf = bed.write_config(&[(1, &[w1, w2]), (2, &[w1])], "");
    let service = bed.service();
    let common = [
        "--dispatcher",
        service.as_str(),
        "--timeout-ms",
        "800",
        "--pool",
        "2",
    ];
    let mut w1_args = vec![
        "--function",
        "1=http:http://127.0.0.1:8081/",
        "--function",
        "2=http:http://127.0.0.1:8080/",
    ];
    w1_args.extend(common);
    let mut w2_args = vec!["--function", "1=http:http://127.0.0.1:8080/"];
    w2_args.extend(common);
    let _w1 = tb.serve_with(w1, &w1_args);
    let _w2 = tb.serve_with(w2, &w2_args);
    let _dispatcher = bed.start("dispatcher", &conf, &[]);

    for i in 0..6 {
        let answer = bed.invoke("1", &format!("r{i}"));
        assert_response(&answer, &format!("w2:r{i}"));
        assert_eq!(answer.from(), Some(w2.worker_addr()));
    }
    let (busy_posts, _, _) = http_stats(tb, w1, 8081);
    assert!(
        busy_posts >= 1,
        "w1's overloaded server was asked at least once"
    );

    for i in 0..20 {
        assert_response(&bed.invoke("2", &format!("k{i}")), &format!("w1:k{i}"));
    }
    let (_, _, connections) = http_stats(tb, w1, 8080);
    assert!(
        connections <= 2 + 1,
        "kept alive: {connections} connections for 20 requests"
    );
    let headers = bed.invoke("2", "headers").body;
    assert!(
        headers.contains("\"X-Faas-Function-Id\": \"2\""),
        "{headers}"
    );
    assert!(headers.contains("\"X-Faas-Request-Id\""), "{headers}");

    assert_error(
        &bed.invoke("2", "status:500"),
        6,
        "HTTP 500 Internal Server Error: status 500",
    );
    assert_error(&bed.invoke("2", "status:404"), 6, "HTTP 404");
    assert_error(
        &bed.invoke("2", "sleep:3000"),
        6,
        "did not answer within its timeout (800 ms)",
    );
    // A 503 from function 2's only worker: sent back as BUSY, no other
    // worker to re-steer to, so the dispatcher answers ERROR 7.
    assert_error(&bed.invoke("2", "status:503"), 7, "");
    assert_response(&bed.invoke("2", "still"), "w1:still");
}

#[test]
fn max_inflight_holds_exactly_under_a_burst() {
    const LIMIT: u64 = 3;
    const BURST: usize = 24;
    let bed = Bed::new("limit", 2);
    let (tb, dsp, w1, w2) = (&bed.tb, &bed.dsp, &bed.workers[0], &bed.workers[1]);
    let key = "hosting-test-key";
    let health = format!(
        "\n[health]\nlisten = \"{}:7771\"\nkey = \"{key}\"\nnetworks = [\"10.99.0.0/24\"]\ndown_after_ms = 2000\n",
        dsp.ip
    );
    let conf = bed.write_config(&[(1, &[w1, w2])], &health);
    let service = bed.service();
    let hb_to = format!("{}:7771", dsp.ip);
    let mut servers = Vec::new();
    for w in [w1, w2] {
        // Each request holds the server 1.5 s; the pool would allow 8.
        servers.push(http_server(
            tb,
            w,
            8080,
            &["--sleep-ms", "1500", "--name", &w.role],
        ));
        servers.push(tb.serve_with(
            w,
            &[
                "--function",
                "1=http:http://127.0.0.1:8080/",
                "--pool",
                "8",
                "--max-inflight",
                "3",
                "--timeout-ms",
                "5000",
                "--dispatcher",
                &service,
                "--heartbeat-to",
                &hb_to,
                "--heartbeat-key",
                key,
                "--heartbeat-ms",
                "50",
            ],
        ));
    }
    let _dispatcher = bed.start("dispatcher", &conf, &[]);

    let bed = &bed;
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let burst: Vec<_> = (0..BURST)
            .map(|i| s.spawn(move || bed.invoke("1", &format!("b{i}"))))
            .collect();
        // While the burst is held, each worker reports exactly its limit.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut loads = Vec::new();
        while Instant::now() < deadline {
            loads = bed
                .workers_list()
                .iter()
                .map(|w| w.load)
                .collect::<Vec<_>>();
            if loads == [LIMIT, LIMIT] {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            loads,
            [LIMIT, LIMIT],
            "the load reports carry the in-flight count"
        );
        burst.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let responses = answers.iter().filter(|a| a.code == Some(0)).count();
    let overloaded = answers.iter().filter(|a| error_code(a) == Some(7)).count();
    assert_eq!(
        responses + overloaded,
        BURST,
        "every request answered: {answers:?}"
    );
    assert!(responses as u64 >= 2 * LIMIT, "{responses} answered");
    for w in [w1, w2] {
        let (requests, peak, _) = http_stats(tb, w, 8080);
        assert_eq!(
            peak, LIMIT,
            "{}: at most {LIMIT} at once, and the limit reached",
            w.role
        );
        assert!(requests >= LIMIT);
    }
}
