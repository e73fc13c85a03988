//! End to end on namespace testbeds: a client sends requests to the
//! dispatcher's service address; the XDP program on the dispatcher's veth
//! rewrites them toward a worker; the worker answers the client directly.
//!
//! Needs root: run through `cargo xtask test`.

use std::{path::Path, time::Duration};

use dispatcher_common::stats::Counter;
use tests::{
    bed::{Answer, Bed},
    testbed::{dispatcher_bin, Host},
};

#[test]
fn request_is_dispatched_by_xdp_and_answered_directly_by_the_worker() {
    let bed = Bed::new("e2e", 1);
    let Bed {
        tb, dsp, workers, ..
    } = &bed;
    let worker = &workers[0];
    let conf = bed.write_config(
        &[(1, &[worker])],
        "\n[metrics]\nlisten = \"127.0.0.1:9110\"\n",
    );
    let _worker = tb.serve(worker, "echo", &[]);
    let mut dispatcher = bed.start("dispatcher", &conf, &[]);

    for i in 0..5 {
        let payload = format!("hello-{i}");
        let Answer {
            code,
            body: stdout,
            stderr,
        } = bed.invoke("1", &payload);
        assert_eq!(code, Some(0), "invoke {i} failed: {stderr}\n{}", tb.logs());
        assert_eq!(stdout, payload);
        // The answer came from the worker itself, not through the dispatcher.
        assert!(
            stderr.contains(&format!("RESPONSE from {}:9000", worker.ip)),
            "{stderr}"
        );
    }

    // Every request went through the XDP program.
    assert_eq!(bed.stats().get(Counter::DispatchedRequest), 5);

    // The CLI reads the same counters.
    let out = tb.exec(dsp, &dispatcher_bin(), &["stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["counters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c[0] == "dispatched_request" && c[1] == 5),
        "{json}"
    );

    // So does the Prometheus endpoint.
    let scrape =
        "exec 3<>/dev/tcp/127.0.0.1/9110; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3";
    let out = tb.exec(dsp, Path::new("bash"), &["-c", scrape]);
    let metrics = String::from_utf8_lossy(&out.stdout);
    assert!(
        metrics.contains("dispatcher_packets_total{outcome=\"dispatched_request\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "dispatcher_worker_packets_total{{function=\"1\",worker=\"{}:9000\"}} 5",
            worker.ip
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE dispatcher_worker_up gauge"),
        "{metrics}"
    );

    // SIGTERM detaches and removes the pins.
    assert!(
        dispatcher.stop(),
        "dispatcher did not exit cleanly:\n{}",
        dispatcher.log()
    );
    bed.assert_detached("SIGTERM");
}

/// What the data plane passes up gets the answer PROTOCOL.md promises:
/// ERRORs for requests nobody can serve, and a dispatch of a fragmented
/// (reassembled) request through the daemon's slow path.
#[test]
fn the_slow_path_answers_errors_and_dispatches_fragmented_requests() {
    let bed = Bed::new("slow", 1);
    let Bed {
        tb, dsp, workers, ..
    } = &bed;
    let worker = &workers[0];
    let conf = bed.write_config(&[(1, &[worker]), (3, &[])], "");
    let _worker = tb.serve(worker, "echo", &[]);
    let _dispatcher = bed.start("dispatcher", &conf, &[]);
    tb.wait_for_udp_port(dsp, 7770, Duration::from_secs(10));

    for (function, expected) in [("99", "ERROR 1 "), ("3", "ERROR 2 ")] {
        let Answer { code, stderr, .. } = bed.invoke(function, "x");
        assert_eq!(
            code,
            Some(2),
            "function {function}: {stderr}\n{}",
            tb.logs()
        );
        assert!(stderr.contains(expected), "function {function}: {stderr}");
    }

    // 4,000 bytes do not fit a 1,500-byte MTU: the request arrives in
    // fragments, which XDP passes up and the host reassembles.
    let big = "f".repeat(4000);
    let Answer {
        code,
        body: stdout,
        stderr,
    } = bed.invoke("1", &big);
    assert_eq!(code, Some(0), "{stderr}\n{}", tb.logs());
    assert_eq!(stdout, big);
    assert!(
        stderr.contains(&format!("RESPONSE from {}:9000", worker.ip)),
        "{stderr}"
    );
    let s = bed.stats();
    assert!(s.get(Counter::PassFragment) >= 3, "{s:?}");
    assert_eq!(s.get(Counter::PassUnknownFunction), 1, "{s:?}");
    assert_eq!(s.get(Counter::PassNoWorker), 1, "{s:?}");
}

/// Two-arm egress: requests arrive on eth0 and leave, redirected by XDP
/// through a devmap, on eth1.
#[test]
fn two_arm_egress_redirects_out_of_another_interface() {
    let mut bed = Bed::new("twoarm", 1);
    let dsp = bed.dsp.clone();
    bed.add_interface(&dsp, "eth1");
    let Bed {
        tb, dsp, workers, ..
    } = &bed;
    let worker = &workers[0];
    let conf = bed.write_config(&[(1, &[worker])], "\n[egress]\nredirect_to = \"eth1\"\n");
    let _worker = tb.serve(worker, "echo", &[]);
    let _dispatcher = bed.start("dispatcher", &conf, &[]);

    let sent = || {
        let out = tb.exec(
            dsp,
            Path::new("cat"),
            &["/sys/class/net/eth1/statistics/tx_packets"],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let before = sent();
    for i in 0..3 {
        let Answer { code, stderr, .. } = bed.invoke("1", &format!("two-arm {i}"));
        assert_eq!(code, Some(0), "{stderr}\n{}", tb.logs());
    }
    assert_eq!(bed.stats().get(Counter::DispatchedRequest), 3);
    assert!(sent() >= before + 3, "eth1 sent {} -> {}", before, sent());
}

/// Speedo's orchestrator in the kernel: a three-step workflow invoked by a
/// client runs step by step, each STEP dispatched by the XDP program, and
/// the last worker answers the client.
#[test]
fn a_three_step_workflow_runs_through_the_kernel() {
    let bed = Bed::new("flow", 3);
    let Bed {
        tb, dsp, workers, ..
    } = &bed;
    let [w1, w2, w3] = [&workers[0], &workers[1], &workers[2]];
    let functions: [(u32, &[&Host]); 3] = [(1, &[w1]), (2, &[w2]), (3, &[w3])];
    let conf = bed.write_config(&functions, "\n[[workflows]]\nid = 100\nsteps = [1, 2, 3]\n");
    let service = format!("{}:7770", dsp.ip);
    let _workers: Vec<_> = workers
        .iter()
        .zip(["upper", "reverse", "echo"])
        .map(|(w, f)| tb.serve(w, f, &["--dispatcher", &service]))
        .collect();
    let _dispatcher = bed.start("dispatcher", &conf, &[]);

    let Answer {
        code,
        body: stdout,
        stderr,
    } = bed.invoke("100", "hello workflow");
    assert_eq!(code, Some(0), "{stderr}\n{}", tb.logs());
    // upper, then reverse, then echo.
    assert_eq!(stdout, "WOLFKROW OLLEH");
    assert!(
        stderr.contains(&format!("RESPONSE from {}:9000", workers[2].ip)),
        "the last worker answers: {stderr}"
    );
    let s = bed.stats();
    assert_eq!(s.get(Counter::DispatchedWorkflow), 1, "{s:?}");
    assert_eq!(s.get(Counter::DispatchedStep), 2, "{s:?}");
    assert_eq!(
        s.get(Counter::PassNotService) + s.get(Counter::PassFragment),
        0,
        "{s:?}"
    );
}

/// The data plane outlives its daemon: stopped with --keep-attached, or
/// killed outright, requests keep flowing through XDP, and the next
/// `dispatcher run` adopts the pinned state. A plain SIGTERM detaches.
#[test]
fn the_data_plane_outlives_the_daemon_and_is_adopted() {
    let bed = Bed::new("adopt", 1);
    let Bed { tb, workers, .. } = &bed;
    let worker = &workers[0];
    let conf = bed.write_config(&[(1, &[worker])], "");
    let _worker = tb.serve(worker, "echo", &[]);
    let dispatched = || bed.stats().get(Counter::DispatchedRequest);
    let invoke_ok = |what: &str| {
        let Answer {
            code,
            body: stdout,
            stderr,
        } = bed.invoke("1", what);
        assert_eq!(code, Some(0), "{what}: {stderr}\n{}", tb.logs());
        assert_eq!(stdout, what);
    };

    // 1. Stopped with --keep-attached: still dispatching in the kernel.
    let mut first = bed.start("first", &conf, &["--keep-attached"]);
    invoke_ok("before");
    assert!(first.stop(), "{}", first.log());
    invoke_ok("no daemon");
    assert_eq!(dispatched(), 2);

    // 2. A second daemon adopts it (counters continue), and a second one at
    //    the same time is refused.
    let mut second = bed.spawn_dispatcher("second", &conf);
    assert!(second.log().contains("adopted"), "{}", second.log());
    let stderr = bed.run_refused(&conf, &[]);
    assert!(
        stderr.contains("another `dispatcher run` manages"),
        "{stderr}"
    );
    invoke_ok("adopted");
    assert_eq!(dispatched(), 3);

    // 3. Killed outright: still dispatching.
    second.kill_hard();
    invoke_ok("after kill -9");
    assert_eq!(dispatched(), 4);

    // 4. Adopted again, then a plain SIGTERM detaches and removes the pins.
    let mut third = bed.spawn_dispatcher("third", &conf);
    invoke_ok("third");
    assert!(third.stop(), "{}", third.log());
    bed.assert_detached("SIGTERM");
}

/// Workers without a `mac` in the config: the daemon learns their MACs from
/// the kernel's neighbour table (resolving them if needed); a worker that
/// does not answer ARP is a clear error.
#[test]
fn worker_macs_are_learned_from_the_neighbour_table() {
    let bed = Bed::new("neigh", 1);
    let Bed {
        tb, dsp, workers, ..
    } = &bed;
    let worker = &workers[0];
    let no_mac = format!("[service]\naddresses = [\"{}\"]\n\n[[functions]]\nid = 1\nworkers = [{{ addr = \"{}:9000\" }}]\n", dsp.ip, worker.ip);
    let conf = tb.write_file("dispatcher.toml", &no_mac);
    let _worker = tb.serve(worker, "echo", &[]);
    let mut dispatcher = bed.start("dispatcher", &conf, &[]);
    let Answer {
        code,
        body: stdout,
        stderr,
    } = bed.invoke("1", "learned");
    assert_eq!(code, Some(0), "{stderr}\n{}", tb.logs());
    assert_eq!(stdout, "learned");
    assert_eq!(bed.stats().get(Counter::DispatchedRequest), 1);
    let list = tb.exec(dsp, &dispatcher_bin(), &["workers", "list"]);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains(&worker.mac_string()),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );
    assert!(dispatcher.stop());

    let nobody = format!("[service]\naddresses = [\"{}\"]\n\n[[functions]]\nid = 1\nworkers = [{{ addr = \"10.99.0.99:9000\" }}]\n", dsp.ip);
    let conf = tb.write_file("nobody.toml", &nobody);
    let stderr = bed.run_refused(&conf, &[]);
    assert!(
        stderr.contains("cannot learn the MAC of 10.99.0.99") && stderr.contains("set `mac`"),
        "{stderr}"
    );
}

/// The `kv` function against a real memcached, through XDP, and as the
/// first step of a workflow whose last step answers the client; and the
/// `static` function.
#[test]
fn kv_requests_reach_memcached_and_feed_a_workflow() {
    let bed = Bed::new("kv", 3);
    let Bed {
        tb, dsp, workers, ..
    } = &bed;
    let (w1, w2, w3) = (&workers[0], &workers[1], &workers[2]);
    let conf = bed.write_config(
        &[(1, &[w1]), (2, &[w2]), (3, &[w3])],
        "\n[[workflows]]\nid = 100\nsteps = [1, 2]\n",
    );
    let _memcached = bed.memcached(w1);
    let service = format!("{}:7770", dsp.ip);
    let _kv = tb.serve(
        w1,
        "kv",
        &["--memcached", "127.0.0.1:11211", "--dispatcher", &service],
    );
    let _upper = tb.serve(w2, "upper", &["--dispatcher", &service]);
    let _static = tb.serve(w3, "static", &[]);
    let _dispatcher = bed.start("dispatcher", &conf, &[]);

    let Answer { body: stdout, .. } = bed.invoke("3", "anything");
    assert!(
        stdout.starts_with("<!doctype html>") && stdout.contains("Hello from a FaaS worker"),
        "{stdout}"
    );

    let Answer {
        code,
        body: stdout,
        stderr,
    } = bed.invoke("1", "SET greeting hello from memcached");
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "STORED"),
        "{stderr}\n{}",
        tb.logs()
    );
    let Answer { body: stdout, .. } = bed.invoke("1", "GET greeting");
    assert_eq!(stdout, "hello from memcached");
    let Answer { code, stderr, .. } = bed.invoke("1", "GET nothing-here");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("ERROR 6") && stderr.contains("no value for key `nothing-here`"),
        "{stderr}"
    );
    // Workflow: kv GET, then upper; the last worker answers.
    let Answer {
        code,
        body: stdout,
        stderr,
    } = bed.invoke("100", "GET greeting");
    assert_eq!(code, Some(0), "{stderr}\n{}", tb.logs());
    assert_eq!(stdout, "HELLO FROM MEMCACHED");
    assert!(
        stderr.contains(&format!("RESPONSE from {}:9000", w2.ip)),
        "{stderr}"
    );
}

/// `grayscale` on a 128x128 RGB image: the request does not fit one packet,
/// so it arrives in IP fragments, which XDP passes up and the daemon's slow
/// path dispatches; the worker answers the client directly with the
/// grayscale PNG, exactly the image crate's luma conversion of the input.
#[test]
fn a_multi_packet_image_is_converted_to_grayscale_through_the_slow_path() {
    let bed = Bed::new("gray", 1);
    let Bed {
        tb,
        dsp,
        client,
        workers,
    } = &bed;
    let worker = &workers[0];
    let conf = bed.write_config(&[(1, &[worker])], "");
    let _worker = tb.serve(worker, "grayscale", &[]);
    let _dispatcher = bed.start("dispatcher", &conf, &[]);
    tb.wait_for_udp_port(dsp, 7770, Duration::from_secs(10));

    // Noise, so that PNG cannot squeeze it into one packet.
    let mut seed = 12345u32;
    let input = image::RgbImage::from_fn(128, 128, |_, _| {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        image::Rgb([(seed >> 16) as u8, (seed >> 8) as u8, (seed >> 24) as u8])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(input.clone())
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let png = png.into_inner();
    assert!(
        png.len() > 3 * 1500,
        "the request must span several packets ({} bytes)",
        png.len()
    );
    let input_path = tb.write_file("in.png", "");
    std::fs::write(&input_path, &png).unwrap();
    let output_path = tb.dir.join("out.png");

    let to = format!("{}:7770", dsp.ip);
    let out = tb.exec(
        client,
        &dispatcher_bin(),
        &[
            "invoke",
            "--to",
            &to,
            "1",
            "--payload-file",
            input_path.to_str().unwrap(),
            "--out",
            output_path.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", tb.logs());
    assert!(
        stderr.contains(&format!("RESPONSE from {}:9000", worker.ip)),
        "{stderr}"
    );
    let gray = image::load_from_memory(&std::fs::read(&output_path).unwrap()).expect("a PNG");
    assert_eq!(gray.color(), image::ColorType::L8);
    assert_eq!(
        gray.to_luma8(),
        image::DynamicImage::ImageRgb8(input).to_luma8(),
        "exactly the luma conversion"
    );
    assert!(bed.stats().get(Counter::PassFragment) >= 3);

    // Not an image: ERROR 6. Too large for a datagram: refused, with why.
    let Answer { code, stderr, .. } = bed.invoke("1", "not an image");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("ERROR 6") && stderr.contains("not an image"),
        "{stderr}"
    );
    let big = tb.write_file("big.bin", &"x".repeat(70_000));
    let out = tb.exec(
        client,
        &dispatcher_bin(),
        &[
            "invoke",
            "--to",
            &to,
            "1",
            "--payload-file",
            big.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("at most 65459 in one UDP datagram"),
        "{stderr}"
    );
}

/// The workflow of the issue: kv GET -> grayscale -> static. The image
/// stored in memcached is larger than a packet, so the STEPs that carry it
/// arrive in fragments and take the daemon's slow path, which must treat
/// them exactly as the kernel does (registered sender, next step's worker).
#[test]
fn kv_then_grayscale_then_static_with_multi_packet_steps() {
    let bed = Bed::new("chain", 3);
    let Bed {
        tb,
        dsp,
        client,
        workers,
    } = &bed;
    let (w1, w2, w3) = (&workers[0], &workers[1], &workers[2]);
    let conf = bed.write_config(
        &[(1, &[w1]), (2, &[w2]), (3, &[w3])],
        "\n[[workflows]]\nid = 100\nsteps = [1, 2, 3]\n",
    );
    let _memcached = bed.memcached(w1);
    let service = format!("{}:7770", dsp.ip);
    let _kv = tb.serve(
        w1,
        "kv",
        &["--memcached", "127.0.0.1:11211", "--dispatcher", &service],
    );
    let _gray = tb.serve(w2, "grayscale", &["--dispatcher", &service]);
    let _static = tb.serve(w3, "static", &[]);
    let _dispatcher = bed.start("dispatcher", &conf, &[]);
    tb.wait_for_udp_port(dsp, 7770, Duration::from_secs(10));

    let mut seed = 7u32;
    let noise = image::RgbImage::from_fn(96, 96, |_, _| {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        image::Rgb([(seed >> 16) as u8, (seed >> 8) as u8, (seed >> 24) as u8])
    });
    let mut png = std::io::Cursor::new(b"SET photo ".to_vec());
    png.set_position(10);
    image::DynamicImage::ImageRgb8(noise)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let set = tb.write_file("set.bin", "");
    std::fs::write(&set, png.into_inner()).unwrap();
    let out = tb.exec(
        client,
        &dispatcher_bin(),
        &[
            "invoke",
            "--to",
            &service,
            "1",
            "--payload-file",
            set.to_str().unwrap(),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "STORED",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tb.logs()
    );

    // The SET above arrived in fragments too: count from here.
    let before = bed.stats();
    let Answer {
        code,
        body: stdout,
        stderr,
    } = bed.invoke("100", "GET photo");
    assert_eq!(code, Some(0), "{stderr}\n{}", tb.logs());
    assert!(stdout.contains("Hello from a FaaS worker"), "{stdout}");
    assert!(
        stderr.contains(&format!("RESPONSE from {}:9000", w3.ip)),
        "{stderr}"
    );
    // The first dispatch is in the kernel; the image-carrying STEPs came in
    // fragments and took the slow path.
    let s = bed.stats();
    assert_eq!(s.get(Counter::DispatchedWorkflow), 1, "{s:?}");
    // The image-carrying STEP alone is some 20 fragments.
    assert!(
        s.get(Counter::PassFragment) - before.get(Counter::PassFragment) >= 6,
        "{s:?}"
    );
}

/// `--mode hw` on a device that does not offload eBPF (a veth): the device
/// refuses the bound maps, the operator is told what is needed, and nothing
/// is left behind (no pins, no program). The accepting path needs a card
/// or netdevsim, which this machine cannot load (docs/offload.md).
#[test]
fn hw_mode_on_a_device_without_offload_is_refused_cleanly() {
    let bed = Bed::new("hw", 1);
    let Bed {
        tb, dsp, workers, ..
    } = &bed;
    let worker = &workers[0];
    let conf = bed.write_config(&[(1, &[worker])], "");
    let hw = ["--mode", "hw", "--hw-map-entries", "2"];
    let stderr = bed.run_refused(&conf, &hw);
    assert!(
        stderr.contains("eth0 refused to hold map")
            && stderr.contains("needs a NIC that offloads eBPF")
            && stderr.contains("--mode drv"),
        "{stderr}"
    );
    // The offloaded program transmits with XDP_TX only: a redirect in the
    // config is refused before anything is loaded, with the fix named.
    let redirect = tb.write_file(
        "redirect.toml",
        &tests::testbed::config(
            dsp.ip,
            &[(1, &[worker])],
            "\n[egress]\nredirect_to = \"eth0\"\n",
        ),
    );
    let stderr = bed.run_refused(&redirect, &hw);
    assert!(
        stderr.contains("cannot go with --mode hw") && stderr.contains("Remove [egress]"),
        "{stderr}"
    );
    // --hw-map-entries belongs to hw mode.
    let stderr = bed.run_refused(&conf, &["--hw-map-entries", "2"]);
    assert!(stderr.contains("goes with --mode hw"), "{stderr}");
}

/// A workflow whose steps both run on one worker: the worker sends its
/// STEP to the service address and the data plane sends it straight back
/// to that worker. It must leave from the service address (a packet whose
/// source is the worker's own address is dropped by the worker's kernel as
/// a martian), through XDP, through the slow path (steps too large for one
/// packet), and over IPv6.
#[test]
fn a_workflow_whose_steps_share_one_worker_is_answered() {
    let bed = Bed::new("self", 1);
    let Bed {
        tb,
        dsp,
        client,
        workers,
    } = &bed;
    let worker = &workers[0];
    let (dsp6, worker6) = bed.add_ipv6();
    let conf = format!(
        "[service]\naddresses = [\"{}\", \"{dsp6}\"]\n\n\
         [[functions]]\nid = 1\nworkers = [{{ addr = \"{}:9000\", mac = \"{m}\" }}]\n\n\
         [[functions]]\nid = 2\nworkers = [{{ addr = \"{}:9000\", mac = \"{m}\" }}]\n\n\
         [[functions]]\nid = 3\nworkers = [{{ addr = \"[{worker6}]:9000\", mac = \"{m}\" }}]\n\n\
         [[functions]]\nid = 4\nworkers = [{{ addr = \"[{worker6}]:9000\", mac = \"{m}\" }}]\n\n\
         [[workflows]]\nid = 100\nsteps = [1, 2]\n\n[[workflows]]\nid = 101\nsteps = [3, 4]\n",
        dsp.ip,
        worker.ip,
        worker.ip,
        m = worker.mac_string()
    );
    let conf = tb.write_file("dispatcher.toml", &conf);
    // One worker process per address family, each serving both steps.
    let v4 = format!("{}:7770", dsp.ip);
    let v6 = format!("[{dsp6}]:7770");
    let _w4 = tb.serve(worker, "1=upper,2=reverse", &["--dispatcher", &v4]);
    let _w6 = tb.serve_ipv6(worker, worker6, "3=upper,4=reverse", &["--dispatcher", &v6]);
    let _dispatcher = bed.start("dispatcher", &conf, &[]);
    tb.wait_for_udp_port(dsp, 7770, Duration::from_secs(10));

    let call = |to: &str, workflow: &str, payload: &str| {
        let out = tb.exec(
            client,
            &dispatcher_bin(),
            &[
                "invoke",
                "--timeout-ms",
                "3000",
                "--to",
                to,
                workflow,
                payload,
            ],
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let before = bed.stats();
    // Through XDP: every packet of it fits in one frame.
    for i in 0..5 {
        let (code, stdout, stderr) = call(&v4, "100", &format!("same worker {i}"));
        assert_eq!(code, Some(0), "IPv4 round {i}: {stderr}\n{}", tb.logs());
        assert_eq!(stdout, format!("{i} REKROW EMAS"));
    }
    let s = bed.stats();
    assert_eq!(
        s.get(Counter::DispatchedStep) - before.get(Counter::DispatchedStep),
        5,
        "{s:?}"
    );
    // Over IPv6, through XDP.
    for i in 0..5 {
        let (code, stdout, stderr) = call(&v6, "101", &format!("over ipv6 {i}"));
        assert_eq!(code, Some(0), "IPv6 round {i}: {stderr}\n{}", tb.logs());
        assert_eq!(stdout, format!("{i} 6VPI REVO"));
        assert!(
            stderr.contains(&format!("RESPONSE from [{worker6}]:9000")),
            "{stderr}"
        );
    }
    let after_v6 = bed.stats();
    assert_eq!(
        after_v6.get(Counter::DispatchedStep) - s.get(Counter::DispatchedStep),
        5,
        "{after_v6:?}"
    );
    assert_eq!(
        after_v6.get(Counter::DispatchedWorkflow) - before.get(Counter::DispatchedWorkflow),
        10,
        "{after_v6:?}"
    );
    // Through the slow path: 4,000 bytes arrive in fragments, the request
    // and its STEP both.
    let big = "s".repeat(4000);
    let (code, stdout, stderr) = call(&v4, "100", &big);
    assert_eq!(code, Some(0), "slow path: {stderr}\n{}", tb.logs());
    assert_eq!(stdout, "S".repeat(4000));
    let slow = bed.stats();
    assert!(
        slow.get(Counter::PassFragment) - after_v6.get(Counter::PassFragment) >= 6,
        "request and STEP in fragments: {slow:?}"
    );
}
