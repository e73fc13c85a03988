//! `dispatcher run --mode user` on loopback: requests dispatched from user
//! space by each policy, answered by the workers directly; a workflow
//! through it; ERRORs; SIGHUP reload; the counters it logs when it stops.
//! Needs no privileges.

use std::{
    collections::HashMap,
    net::UdpSocket,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tests::testbed::dispatcher_bin;

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Child processes, killed on drop (also when a test panics).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(args: &[&str], log: Option<&std::path::Path>) -> Child {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    Command::new(dispatcher_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start dispatcher")
}

/// `invoke`: (answered by, payload) or the error text.
fn invoke(port: u16, function: u32, payload: &str) -> Result<(String, String), String> {
    let out = Command::new(dispatcher_bin())
        .args([
            "invoke",
            "--to",
            &format!("127.0.0.1:{port}"),
            &function.to_string(),
            payload,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(stderr);
    }
    let from = stderr
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string();
    Ok((
        from,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

fn config(port: u16, w1: u16, w2: u16, function_1_workers: &str) -> String {
    format!(
        "[service]\naddresses = [\"127.0.0.1\"]\nport = {port}\n\n\
         [[functions]]\nid = 1\nworkers = [{function_1_workers}]\n\n\
         [[functions]]\nid = 2\npolicy = \"hash\"\nworkers = [{{ addr = \"127.0.0.1:{w1}\" }}, {{ addr = \"127.0.0.1:{w2}\" }}]\n\n\
         [[functions]]\nid = 3\npolicy = \"least-loaded\"\nworkers = [{{ addr = \"127.0.0.1:{w1}\" }}, {{ addr = \"127.0.0.1:{w2}\" }}]\n\n\
         [[workflows]]\nid = 100\nsteps = [1, 2]\n"
    )
}

#[test]
fn user_mode_dispatches_by_policy_runs_workflows_and_reloads() {
    let dir = std::env::temp_dir().join(format!("user-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, w1, w2) = (free_port(), free_port(), free_port());
    let both = format!("{{ addr = \"127.0.0.1:{w1}\" }}, {{ addr = \"127.0.0.1:{w2}\" }}");
    let conf = dir.join("dispatcher.toml");
    std::fs::write(&conf, config(port, w1, w2, &both)).unwrap();
    let service = format!("127.0.0.1:{port}");
    let log = dir.join("dispatcher.log");
    let mut procs = Procs(vec![
        spawn(
            &[
                "serve",
                "--listen",
                &format!("127.0.0.1:{w1}"),
                "--functions",
                "1=upper,2=reverse,3=echo",
                "--dispatcher",
                &service,
            ],
            None,
        ),
        spawn(
            &[
                "serve",
                "--listen",
                &format!("127.0.0.1:{w2}"),
                "--functions",
                "1=upper,2=reverse,3=echo",
                "--dispatcher",
                &service,
            ],
            None,
        ),
        spawn(
            &["run", "--mode", "user", "--config", conf.to_str().unwrap()],
            Some(&log),
        ),
    ]);
    for p in [w1, w2, port] {
        tests::testbed::wait_for_local_udp_port(p, Duration::from_secs(10));
    }
    let (a1, a2) = (format!("127.0.0.1:{w1}"), format!("127.0.0.1:{w2}"));

    // Round-robin: alternating, answered by the workers themselves.
    let mut by = HashMap::<String, usize>::new();
    for i in 0..4 {
        let (from, answer) = invoke(port, 1, &format!("r{i}")).unwrap();
        assert_eq!(answer, format!("R{i}"));
        *by.entry(from).or_default() += 1;
    }
    assert_eq!(by, HashMap::from([(a1.clone(), 2), (a2.clone(), 2)]));
    // Hash: the same worker for every request from one client port? Each
    // invoke has its own port, so only check that it answers correctly.
    assert_eq!(invoke(port, 2, "abc").unwrap().1, "cba");
    // Least-loaded: it counts what it sent, so it alternates too.
    let froms: Vec<String> = (0..2).map(|_| invoke(port, 3, "x").unwrap().0).collect();
    assert_ne!(froms[0], froms[1], "least-loaded sent both to one worker");
    // A workflow: function 1 (upper), then 2 (reverse), in user space.
    assert_eq!(invoke(port, 100, "flow").unwrap().1, "WOLF");
    // Errors, as PROTOCOL.md says.
    assert!(invoke(port, 7, "x").unwrap_err().contains("ERROR 1"));

    // SIGHUP: function 1 moves to w2 alone.
    std::fs::write(
        &conf,
        config(port, w1, w2, &format!("{{ addr = \"{a2}\" }}")),
    )
    .unwrap();
    let pid = nix::unistd::Pid::from_raw(procs.0[2].id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    tests::testbed::wait_for_text(&log, "configuration reloaded", 1, Duration::from_secs(10));
    for _ in 0..3 {
        assert_eq!(invoke(port, 1, "y").unwrap().0, a2);
    }

    // SIGTERM: it stops and logs what it counted.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = procs.0[2].wait().unwrap();
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(
        log.contains("dispatched_request=10")
            && log.contains("dispatched_workflow=1")
            && log.contains("dispatched_step=1")
            && log.contains("pass_unknown_function=1"),
        "{log}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
