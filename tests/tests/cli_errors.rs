//! `dispatcher` tells the operator what is wrong and what to do, and exits
//! non-zero: a missing interface, an unreadable or invalid config, missing
//! privileges, bad arguments. No testbed needed; runs as root (the
//! privilege case drops to an unprivileged user itself).

use std::process::{Command, Output};

use tests::testbed::dispatcher_bin;

fn run(args: &[&str]) -> Output {
    Command::new(dispatcher_bin())
        .args(args)
        .env("DISPATCHER_BPFFS", "/tmp/dispatcher-cli-errors-bpffs")
        .output()
        .expect("run dispatcher")
}

fn fails_saying(args: &[&str], needle: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected `{needle}` in:\n{stderr}"
    );
}

#[test]
fn run_errors_name_the_problem_and_the_fix() {
    let dir = std::env::temp_dir().join(format!("dispatcher-cli-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "[service]\naddresses = [\"10.0.0.1\"]\n").unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[service]\naddresses = [\"10.0.0.1\"]\n[[functions]]\nid = 1\npolicy = \"fastest\"\n",
    )
    .unwrap();
    let good = good.to_str().unwrap();

    fails_saying(
        &["run", "--iface", "nosuch0", "--config", good],
        "interface nosuch0 not found (`ip link` shows the names)",
    );
    fails_saying(
        &[
            "run",
            "--iface",
            "lo",
            "--config",
            "/nonexistent/dispatcher.toml",
        ],
        "cannot read config /nonexistent/dispatcher.toml",
    );
    fails_saying(
        &["run", "--iface", "lo", "--config", bad.to_str().unwrap()],
        "unknown variant `fastest`",
    );
    fails_saying(&["run", "--iface", "lo"], "service.addresses is empty");
    fails_saying(
        &[
            "run", "--iface", "lo", "--vip", "10.0.0.1", "--mode", "turbo",
        ],
        "invalid value 'turbo' for '--mode",
    );
    fails_saying(
        &["run", "--iface", "lo", "--vip", "10.0.0.1", "--mode", "hw"],
        "lo refused to hold map SERVICES",
    );
    fails_saying(
        &[
            "run",
            "--iface",
            "lo",
            "--vip",
            "10.0.0.1",
            "--mode",
            "hw",
            "--hw-map-entries",
            "1",
        ],
        "--hw-map-entries 1 is too small",
    );
    // Three VIPs do not fit a two-slot SERVICES: refused before the device is touched.
    let vips = [
        "--vip", "10.0.0.1", "--vip", "10.0.0.2", "--vip", "10.0.0.3",
    ];
    fails_saying(
        &[
            &[
                "run",
                "--iface",
                "lo",
                "--mode",
                "hw",
                "--hw-map-entries",
                "2",
            ][..],
            &vips,
        ]
        .concat(),
        "service.addresses: the config has 3, the data plane's maps hold 2",
    );
    fails_saying(&["stats"], "no data plane is pinned under");
    fails_saying(
        &[
            "workers",
            "add",
            "--function",
            "1",
            "--addr",
            "10.0.0.2:9000",
            "--mac",
            "zz",
        ],
        "--mac zz: not a MAC address",
    );
    fails_saying(
        &[
            "workers",
            "add",
            "--function",
            "1",
            "--addr",
            "10.0.0.2",
            "--mac",
            "02:00:00:00:00:01",
        ],
        "invalid value '10.0.0.2' for '--addr",
    );
    fails_saying(
        &[
            "workers",
            "add",
            "--function",
            "1",
            "--addr",
            "10.0.0.2:9000",
            "--mac",
            "02:00:00:00:00:01",
        ],
        "no data plane is pinned",
    );

    // Nobody answers: invoke gives up after its timeout and says what to check.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    fails_saying(
        &["invoke", "--to", &closed, "1", "x", "--timeout-ms", "200"],
        &format!("no answer from {closed} within 200ms"),
    );

    // Without privileges: an unprivileged user, no capabilities.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(dispatcher_bin())
        .args(["run", "--iface", "lo", "--config", good])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `dispatcher offload check`: the shipped offload variant passes (exit 0),
/// the host variant does not (exit 1, each violation named), and a file
/// that is not an eBPF object gets a clear error.
#[test]
fn offload_check_passes_the_offload_variant_and_names_the_host_variants_violations() {
    let out = run(&["offload", "check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("program dispatch_hw (section xdp)")
            && stdout.contains("ok: within the NFP's offload rules"),
        "{stdout}"
    );
    let out = run(&["offload", "check", "--program", "dispatch"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for needle in [
        "map STATS is of type 6 (per-CPU array)",
        "map EGRESS is of type 14 (devmap)",
        "store into a map value",
        "helper",
    ] {
        assert!(stdout.contains(needle), "no `{needle}` in:\n{stdout}");
    }
    fails_saying(&["offload", "check", "/etc/hostname"], "not an eBPF object");
    fails_saying(
        &["offload", "check", "--program", "nope"],
        "it has: dispatch, dispatch_hw",
    );
}

#[test]
fn serve_errors_name_the_problem_and_the_fix() {
    let dir = std::env::temp_dir().join(format!("dispatcher-serve-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("worker.toml");
    std::fs::write(
        &bad,
        "[[functions]]\nid = 1\nrun = \"echo\"\nmax_inflite = 3\n",
    )
    .unwrap();
    fn serve<'a>(more: &[&'a str]) -> Vec<&'a str> {
        [&["serve", "--listen", "127.0.0.1:19999"][..], more].concat()
    }
    fails_saying(
        &serve(&[]),
        "no functions given: pass --function ID=KIND[:ARG]",
    );
    fails_saying(
        &serve(&["--function", "1=exec:"]),
        "exec needs a command after `exec:`",
    );
    fails_saying(
        &serve(&["--function", "1=lambda:x"]),
        "unknown kind `lambda`",
    );
    fails_saying(
        &serve(&["--function", "x=echo"]),
        "function id `x` is not a number",
    );
    fails_saying(
        &serve(&["--function", "1=echo", "--function", "1=upper"]),
        "function 1 is given twice",
    );
    fails_saying(
        &serve(&["--function", "1=http:https://127.0.0.1/"]),
        "serve the function on http://",
    );
    fails_saying(
        &serve(&["--function", "1=echo", "--max-inflight", "2"]),
        "give --dispatcher VIP:PORT",
    );
    fails_saying(&serve(&["--function", "1=exec:cat"]), "give --run-as USER");
    fails_saying(
        &serve(&["--function", "1=exec:cat", "--run-as", "no-such-user-here"]),
        "no such user",
    );
    fails_saying(
        &serve(&[
            "--function",
            "1=warm:/nonexistent/handler",
            "--run-as",
            "nobody",
        ]),
        "cannot start `/nonexistent/handler` as nobody",
    );
    fails_saying(
        &serve(&["--config", bad.to_str().unwrap()]),
        "unknown field `max_inflite`",
    );
    fails_saying(
        &serve(&["--function", "1=echo", "--env", "NOVALUE"]),
        "want NAME=VALUE",
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `--log-format json`: every line on stderr is one JSON object with the
/// timestamp, level and message a log pipeline indexes, the fields beside
/// them, and a fatal error is such a line too.
#[test]
fn log_format_json_writes_one_json_object_per_line() {
    use std::io::{BufRead, BufReader};
    let mut worker = Command::new(dispatcher_bin())
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--functions",
            "echo",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run dispatcher serve");
    let mut line = String::new();
    BufReader::new(worker.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = worker.kill();
    let _ = worker.wait();
    let record: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(record["level"], "INFO", "{line}");
    assert_eq!(record["message"], "worker serving", "{line}");
    assert!(record["timestamp"].is_string(), "{line}");
    assert!(
        record["listen"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );

    let out = run(&[
        "--log-format",
        "json",
        "run",
        "--iface",
        "nosuch0",
        "--vip",
        "10.0.0.1",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    let record: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"));
    assert_eq!(record["level"], "ERROR", "{stderr}");
    assert!(
        record["message"].as_str().unwrap().contains("nosuch0"),
        "{stderr}"
    );
}
