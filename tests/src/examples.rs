//! The example functions of examples/functions, hosted on one worker the
//! way the demo (`cargo xtask run`) runs them and the Python client's tests
//! call them: a shell handler per request (exec), a Python handler in warm
//! processes, and an HTTP function server (Python's standard library) on
//! the worker's loopback.

use std::{path::Path, time::Duration};

use crate::testbed::{repo_file, Host, Process, Testbed};

/// `greet.sh`, one process per request.
pub const GREET: u32 = 11;
/// `wordcount.py`, warm.
pub const WORDCOUNT: u32 = 12;
/// `http_function.py` (reverses its input), over HTTP.
pub const REVERSE: u32 = 13;
/// Reverse, then count the words.
pub const WORKFLOW: u32 = 110;
/// A function with no worker (ERROR 2).
pub const NO_WORKER: u32 = 14;

/// The examples' entries for a dispatcher config (`extra` of
/// `testbed::config`): their functions on `worker`, the workflow, and the
/// function without a worker.
pub fn config(worker: &Host) -> String {
    let entry = format!(
        "{{ addr = \"{}:{}\", mac = \"{}\" }}",
        worker.ip,
        crate::testbed::WORKER_PORT,
        worker.mac_string()
    );
    let mut out = String::new();
    for id in [GREET, WORDCOUNT, REVERSE] {
        out += &format!("\n[[functions]]\nid = {id}\nworkers = [{entry}]\n");
    }
    out + &format!(
        "\n[[functions]]\nid = {NO_WORKER}\nworkers = []\n\n[[workflows]]\nid = {WORKFLOW}\nsteps = [{REVERSE}, {WORDCOUNT}]\n"
    )
}

/// The processes that serve the examples; they stop when dropped.
pub struct Examples {
    _http: Process,
    _worker: Process,
}

/// The `--function` flags that host the examples.
pub fn functions() -> [String; 3] {
    [
        format!(
            "{GREET}=exec:{}",
            repo_file("examples/functions/greet.sh").display()
        ),
        format!(
            "{WORDCOUNT}=warm:/usr/bin/python3 {}",
            repo_file("examples/functions/wordcount.py").display()
        ),
        format!("{REVERSE}=http:http://127.0.0.1:8080/"),
    ]
}

/// Starts the HTTP function server and `dispatcher serve` with the
/// examples on `worker`; `service` is the dispatcher's, for workflows.
pub fn start(tb: &Testbed, worker: &Host, service: &str) -> Examples {
    let script = repo_file("examples/functions/http_function.py");
    let http = tb.spawn(
        worker,
        &format!("{}-http", worker.role),
        Path::new("/usr/bin/python3"),
        &[script.to_str().expect("UTF-8 path"), "--port", "8080"],
    );
    tb.wait_for_tcp_port(worker, 8080, Duration::from_secs(10));
    let functions = functions();
    let mut args = vec!["--dispatcher", service, "--run-as", "nobody"];
    for f in &functions {
        args.extend(["--function", f.as_str()]);
    }
    Examples {
        _http: http,
        _worker: tb.serve_with(worker, &args),
    }
}
