//! `cargo xtask run` with no arguments: a demonstration on a namespace
//! testbed. A client sends requests to the dispatcher's service address;
//! the XDP program on the dispatcher's interface rewrites each toward its
//! function's worker; the workers answer the client directly. A two-step
//! workflow runs through the kernel too; then the user's own functions
//! (examples/functions: a shell handler run per request, a warm Python
//! handler, an HTTP function server), then a pktgen run. Then an
//! operator's session with the CLI (add a worker, drain one, a function
//! with no worker), the daemon's log, and everything is removed again.

use std::path::Path;

use tests::{
    examples,
    testbed::{config, dispatcher_bin, Testbed},
};

const ROUNDS: usize = 3;

fn main() {
    let bin = dispatcher_bin();
    println!("== building a testbed: namespaces for a client, the dispatcher and four workers on one bridge");
    let mut tb = Testbed::new("demo");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let workers = [tb.add_host("worker-a", 10), tb.add_host("worker-b", 11)];
    let spare = tb.add_host("worker-c", 12);
    let hosting = tb.add_host("worker-d", 13);
    tb.enable_xdp_tx(&dsp);

    let [wa, wb] = [&workers[0], &workers[1]];
    let config = config(
        dsp.ip,
        &[(1, &[wa]), (2, &[wb])],
        &format!(
            "\n[[workflows]]\nid = 100\nsteps = [1, 2]\n{}",
            examples::config(&hosting)
        ),
    );
    let config_path = tb.write_file("dispatcher.toml", &config);
    println!(
        "== dispatcher config ({}):\n{config}",
        config_path.display()
    );
    let service = format!("{}:7770", dsp.ip);
    println!(
        "== workers: function 1 = upper on {}, function 2 = reverse on {}",
        wa.ip, wb.ip
    );
    let _workers = [
        tb.serve(wa, "upper", &["--dispatcher", &service]),
        tb.serve(wb, "reverse", &["--dispatcher", &service]),
        tb.serve(&spare, "upper", &["--dispatcher", &service]),
    ];
    println!(
        "== your functions on {}: `dispatcher serve --run-as nobody --function {}`, with examples/functions/http_function.py on its loopback",
        hosting.ip,
        examples::functions().join(" --function ")
    );
    let _examples = examples::start(&tb, &hosting, &service);
    let mut dispatcher = tb.run_dispatcher(&dsp, "dispatcher", &config_path, &[]);
    println!(
        "== dispatcher attached to {}:eth0 ({}), service {service}\n",
        dsp.ns, dsp.ip
    );

    let invoke = |id: &str, payload: &str| {
        let out = tb.exec(&client, &bin, &["invoke", "--to", &service, id, payload]);
        let how = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("client -> {service} id {id} {payload:?}: {how}: {answer:?}");
    };
    for round in 0..ROUNDS {
        invoke("1", &format!("request {round} for function 1"));
        invoke("2", &format!("request {round} for function 2"));
    }
    println!("\n== workflow 100 (function 1, then 2): each STEP is dispatched by XDP; the last worker answers");
    invoke("100", "hello workflow");

    println!("\n== your own functions through the same XDP dispatcher: {} = greet.sh (a process per request), {} = wordcount.py (warm Python processes), {} = http_function.py (an HTTP server)", examples::GREET, examples::WORDCOUNT, examples::REVERSE);
    invoke(&examples::GREET.to_string(), "operator");
    invoke(&examples::GREET.to_string(), "");
    invoke(
        &examples::WORDCOUNT.to_string(),
        "the quick brown fox jumps over the lazy dog the end",
    );
    invoke(&examples::REVERSE.to_string(), "stressed");
    println!(
        "workflow {} (reverse over HTTP, then count the words in a warm process):",
        examples::WORKFLOW
    );
    invoke(&examples::WORKFLOW.to_string(), "olleh olleh dlrow");

    println!("\n== pktgen: 2,000 requests/s for 2 s through the XDP dispatcher (open loop, latency from the scheduled send time)");
    let out = tb.exec(
        &client,
        &bin,
        &[
            "pktgen",
            "--to",
            &service,
            "--rate",
            "2000",
            "--duration",
            "2",
            "--functions",
            "1,2",
        ],
    );
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    println!("\n== an operator's session: every command acts on the pinned maps, each change on the very next request");
    let cli = |args: &[&str]| {
        println!("\n$ dispatcher {}", args.join(" "));
        let out = tb.exec(&dsp, &bin, args);
        print!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let spare_addr = format!("{}:9000", spare.ip);
    let wa_addr = format!("{}:9000", wa.ip);
    cli(&["functions", "list"]);
    cli(&["workers", "add", "--function", "1", "--addr", &spare_addr]);
    println!();
    for round in 0..2 {
        invoke("1", &format!("after the add {round}"));
    }
    cli(&["workers", "drain", "--function", "1", "--addr", &wa_addr]);
    println!();
    for round in 0..2 {
        invoke("1", &format!("after the drain {round}"));
    }
    cli(&["workers", "list"]);
    cli(&["functions", "add", "3", "--policy", "least-loaded"]);
    println!();
    invoke("3", "nobody serves function 3 yet");
    cli(&["stats"]);

    println!("\n== the daemon's log (its own lines, and the data plane's through aya-log)");
    std::thread::sleep(std::time::Duration::from_millis(200));
    print!("{}", dispatcher.log());

    println!(
        "\n== stopping: the dispatcher detaches on SIGTERM; the testbed removes its namespaces"
    );
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
