//! `cargo xtask run` with no arguments: a demonstration on a namespace
//! testbed. A client sends requests to the dispatcher's service address;
//! the XDP program on the dispatcher's interface rewrites each toward its
//! function's worker; the workers answer the client directly. Then the
//! data plane's counters, and everything is removed again.

use std::{path::Path, time::Duration};

use tests::testbed::{dispatcher_bin, Testbed};

const REQUESTS_PER_FUNCTION: usize = 5;

fn main() {
    let bin = dispatcher_bin();
    println!("== building a testbed: namespaces for a client, the dispatcher and two workers on one bridge");
    let mut tb = Testbed::new("demo");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let workers = [tb.add_host("worker-a", 10), tb.add_host("worker-b", 11)];
    tb.enable_xdp_tx(&dsp);

    let mut config = format!("[service]\naddresses = [\"{}\"]\nport = 7770\n", dsp.ip);
    for (i, w) in workers.iter().enumerate() {
        config += &format!(
            "\n[[functions]]\nid = {}\nworkers = [{{ addr = \"{}:9000\", mac = \"{}\" }}]\n",
            i + 1,
            w.ip,
            w.mac_string()
        );
    }
    let config_path = tb.write_file("dispatcher.toml", &config);
    println!("== dispatcher config ({}):\n{config}", config_path.display());

    let _workers: Vec<_> = workers
        .iter()
        .map(|w| tb.spawn(w, &w.role, &bin, &["serve", "--listen", &format!("{}:9000", w.ip), "--functions", "echo"]))
        .collect();
    for w in &workers {
        tb.wait_for_udp_port(w, 9000, Duration::from_secs(10));
    }
    let mut dispatcher = tb.spawn(&dsp, "dispatcher", &bin, &["run", "--iface", "eth0", "--config", config_path.to_str().unwrap()]);
    tb.wait_for_data_plane(&dsp, &mut dispatcher, Duration::from_secs(20));
    println!("== dispatcher attached to {}:eth0 ({}), service {}:7770\n", dsp.ns, dsp.ip, dsp.ip);

    let to = format!("{}:7770", dsp.ip);
    for round in 0..REQUESTS_PER_FUNCTION {
        for function in 1..=workers.len() {
            let payload = format!("request {round} for function {function}");
            let out = tb.exec(&client, &bin, &["invoke", "--to", &to, &function.to_string(), &payload]);
            let how = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
            println!("client -> {to} function {function}: {how}: {answer:?}");
        }
    }

    println!("\n== data plane counters (dispatcher stats)");
    let stats = tb.exec(&dsp, &bin, &["stats"]);
    print!("{}", String::from_utf8_lossy(&stats.stdout));

    println!("\n== stopping: the dispatcher detaches on SIGTERM; the testbed removes its namespaces");
    let clean = dispatcher.stop();
    let link = tb.exec(&dsp, Path::new("ip"), &["-brief", "link", "show", "eth0"]);
    println!(
        "dispatcher exited {}; eth0 now: {}",
        if clean { "cleanly" } else { "with an error" },
        String::from_utf8_lossy(&link.stdout).trim()
    );
    if !clean {
        eprintln!("dispatcher output:\n{}", dispatcher.log());
        std::process::exit(1);
    }
}
