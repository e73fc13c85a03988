//! pktgen against a responder with a known delay, on loopback: what it
//! measures must bracket the delay that was injected, and it must account
//! for every request it sent.

use std::{
    net::UdpSocket,
    process::{Command, Stdio},
    time::Duration,
};

use tests::testbed::dispatcher_bin;

/// A free UDP port on loopback (the responder binds it right after).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Responder(std::process::Child);

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn responder(port: u16, delay_us: u64) -> Responder {
    let child = Command::new(dispatcher_bin())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--functions",
            "echo",
            "--delay-us",
            &delay_us.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the responder");
    tests::testbed::wait_for_local_udp_port(port, Duration::from_secs(10));
    Responder(child)
}

fn pktgen(args: &[&str]) -> serde_json::Value {
    let out = Command::new(dispatcher_bin())
        .arg("pktgen")
        .args(args)
        .arg("--json")
        .output()
        .expect("run pktgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn measured_latency_brackets_a_known_delay() {
    let port = free_port();
    let _responder = responder(port, 5_000);
    let plot = std::env::temp_dir().join(format!("pktgen-plot-{}.svg", std::process::id()));
    let report = pktgen(&[
        "--to",
        &format!("127.0.0.1:{port}"),
        "--rate",
        "500",
        "--duration",
        "1",
        "--functions",
        "1,2:3",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(report["sent"], 500, "{report}");
    assert_eq!(report["answered"], 500, "every request answered: {report}");
    assert_eq!(report["lost"], 0, "{report}");
    let l = &report["latency_us"];
    let p50 = l["p50"].as_u64().unwrap();
    // At least the injected 5 ms; at most 5 ms plus the responder's sleep
    // slack and the loopback round trip, with room for this VM's noise.
    assert!(
        (5_000..8_000).contains(&p50),
        "p50 {p50} us does not bracket 5 ms: {report}"
    );
    assert!(
        l["p99"].as_u64().unwrap() >= p50
            && l["max"].as_u64().unwrap() >= l["p99"].as_u64().unwrap()
    );
    // The mix: about a quarter to function 1, three quarters to 2.
    let functions = report["functions"].as_array().unwrap();
    let f1 = functions[0]["sent"].as_u64().unwrap();
    assert!((100..150).contains(&f1), "{report}");
    assert_eq!(
        functions[0]["sent"].as_u64().unwrap() + functions[1]["sent"].as_u64().unwrap(),
        500
    );
    // The plot: one line per function and one for all, on a percentile axis.
    let svg = std::fs::read_to_string(&plot).expect("--plot wrote its file");
    std::fs::remove_file(&plot).unwrap();
    for label in ["99%", ">\nall\n<", ">\nfunction 1\n<", ">\nfunction 2\n<"] {
        assert!(svg.contains(label), "no `{label}` in {svg}");
    }
}

#[test]
fn requests_nobody_answers_are_counted_lost() {
    let port = free_port();
    let report = pktgen(&[
        "--to",
        &format!("127.0.0.1:{port}"),
        "--rate",
        "200",
        "--duration",
        "0.5",
        "--drain-ms",
        "200",
    ]);
    assert_eq!(report["sent"], 100, "{report}");
    assert_eq!(report["lost"], 100, "{report}");
    assert_eq!(report["loss_percent"], 100.0, "{report}");
}

#[test]
fn bad_arguments_are_refused_with_the_fix() {
    let out = Command::new(dispatcher_bin())
        .args(["pktgen", "--to", "127.0.0.1:9", "--functions", "1:0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("a weight of 0 sends nothing"));
    let out = Command::new(dispatcher_bin())
        .args(["pktgen", "--to", "127.0.0.1:9", "--rate", "0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate 0"));
    let out = Command::new(dispatcher_bin())
        .args(["pktgen", "--to", "127.0.0.1:9", "--plot", "lat.png"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("ending in .svg"));
}
