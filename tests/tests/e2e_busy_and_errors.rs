//! BUSY with the project's own worker, and the ERRORs only the slow path
//! gives: 3 (unsupported version), 4 (a step that does not exist) and 7
//! (every worker busy), each end to end on a namespace testbed.
//!
//! Needs root: run through `cargo xtask test`.

use std::{net::SocketAddr, time::Duration};

use dispatcher::wire::Message;
use dispatcher_common::{
    protocol::{error_code, flags, kind, FaasHdr},
    stats::Counter,
};
use tests::{
    bed::{Answer, Bed},
    testbed::Host,
};

fn worker_entry(h: &Host, port: u16) -> String {
    format!(
        "{{ addr = \"{}:{port}\", mac = \"{}\" }}",
        h.ip,
        h.mac_string()
    )
}

#[test]
fn busy_workers_are_skipped_and_the_slow_path_answers_errors_3_4_and_7() {
    let bed = Bed::new("busy", 3);
    let Bed {
        tb,
        dsp,
        client,
        workers,
    } = &bed;
    let (busy1, free, busy2) = (&workers[0], &workers[1], &workers[2]);
    let service = format!("{}:7770", dsp.ip);
    // Function 1: a busy worker and a free one. Function 2: two busy ones.
    // Function 3: a worker at free:9001 that runs nothing there (so that
    // a STEP can come from a registered address).
    let conf = format!(
        "[service]\naddresses = [\"{}\"]\n\n[[functions]]\nid = 1\nworkers = [{}, {}]\n\n[[functions]]\nid = 2\nworkers = [{}, {}]\n\n\
         [[functions]]\nid = 3\nworkers = [{}]\n\n[[workflows]]\nid = 100\nsteps = [1]\n",
        dsp.ip,
        worker_entry(busy1, 9000),
        worker_entry(free, 9000),
        worker_entry(busy1, 9000),
        worker_entry(busy2, 9000),
        worker_entry(free, 9001),
    );
    let conf = tb.write_file("dispatcher.toml", &conf);
    let _busy1 = tb.serve(
        busy1,
        "echo",
        &["--dispatcher", &service, "--max-inflight", "0"],
    );
    let _busy2 = tb.serve(
        busy2,
        "echo",
        &["--dispatcher", &service, "--max-inflight", "0"],
    );
    let _free = tb.serve(
        free,
        "echo",
        &["--dispatcher", &service, "--max-inflight", "64"],
    );
    let _dispatcher = bed.start("dispatcher", &conf, &[]);
    tb.wait_for_udp_port(dsp, 7770, Duration::from_secs(10));

    // BUSY: every request for function 1 ends at the free worker, whichever
    // worker the ring picked first, re-steered by the data plane.
    let before = bed.stats();
    for i in 0..6 {
        let Answer {
            code,
            body: stdout,
            stderr,
        } = bed.invoke("1", &format!("busy {i}"));
        assert_eq!(code, Some(0), "{stderr}\n{}", tb.logs());
        assert_eq!(stdout, format!("busy {i}"));
        assert!(
            stderr.contains(&format!("RESPONSE from {}:9000", free.ip)),
            "{stderr}"
        );
    }
    let after = bed.stats();
    let resteered = after.get(Counter::Resteered) - before.get(Counter::Resteered);
    assert!(
        (1..=6).contains(&resteered),
        "round-robin sends some requests to the busy worker first: {after:?}"
    );
    assert_eq!(
        after.get(Counter::DispatchedRequest) - before.get(Counter::DispatchedRequest),
        6
    );

    // ERROR 7: both workers of function 2 say BUSY; after the re-steers the
    // data plane passes it up and the slow path answers.
    let Answer { code, stderr, .. } = bed.invoke("2", "nobody free");
    assert_eq!(code, Some(2), "{stderr}\n{}", tb.logs());
    assert!(stderr.contains("ERROR 7 "), "{stderr}");
    assert!(bed.stats().get(Counter::PassBusyExhausted) > after.get(Counter::PassBusyExhausted));

    let to: SocketAddr = service.parse().unwrap();
    let error_of = |answer: Option<(Vec<u8>, SocketAddr)>| {
        let (bytes, from) = answer.expect("an answer");
        let m = Message::parse(&bytes).expect("a FaaS answer");
        assert_eq!(m.hdr.kind, kind::ERROR, "from {from}");
        m.error_parts().expect("an error code").0
    };

    // ERROR 3: a version the dispatcher does not speak.
    let mut hdr = FaasHdr::new(kind::REQUEST, 1, 77);
    hdr.version = 2;
    let answer = tb.udp_exchange(
        client,
        format!("{}:0", client.ip).parse().unwrap(),
        to,
        &hdr.to_bytes(),
        Duration::from_secs(3),
    );
    assert_eq!(error_of(answer), error_code::UNSUPPORTED_VERSION);

    // ERROR 4: a STEP, from a registered worker, for a step the workflow
    // does not have; the answer goes to reply_* (the sender here).
    let mut hdr = FaasHdr::new(kind::STEP, 1, 78);
    hdr.workflow_id = 100u32.to_be_bytes();
    hdr.step = 5;
    hdr.flags = flags::REPLY_SET;
    hdr.reply_port = 9001u16.to_be_bytes();
    hdr.reply_addr = free.ip.to_ipv6_mapped().octets();
    let from: SocketAddr = format!("{}:9001", free.ip).parse().unwrap();
    let before = bed.stats();
    let answer = tb.udp_exchange(free, from, to, &hdr.to_bytes(), Duration::from_secs(3));
    assert_eq!(error_of(answer), error_code::MALFORMED_REQUEST);
    assert_eq!(
        bed.stats().get(Counter::PassBadStep) - before.get(Counter::PassBadStep),
        1
    );
}
