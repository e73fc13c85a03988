//! The Python client (clients/python), installed with pip into a venv,
//! its pytest suite run in the client's namespace against a dispatcher
//! serving the demo's example functions (exec, warm, http) through XDP.
//!
//! Needs root and PyPI (pytest): run through `cargo xtask test`.

use std::{path::Path, process::Command};

use tests::{bed::Bed, examples, testbed::repo_file};

/// A venv with the client and pytest installed: made once under target/,
/// the client reinstalled from the working tree every run, from a copy
/// (pip builds in the directory it installs from, and the source tree
/// stays clean).
fn venv() -> std::path::PathBuf {
    let venv = repo_file("target/python-client-venv");
    let python = venv.join("bin/python");
    let run = |program: &Path, args: &[&str]| {
        let out = Command::new(program).args(args).output().expect("run");
        assert!(
            out.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !python.exists() {
        run(
            Path::new("/usr/bin/python3"),
            &["-m", "venv", venv.to_str().unwrap()],
        );
    }
    let client = repo_file("target/python-client-src");
    let _ = std::fs::remove_dir_all(&client);
    run(
        Path::new("cp"),
        &[
            "-r",
            repo_file("clients/python").to_str().unwrap(),
            client.to_str().unwrap(),
        ],
    );
    let pip = ["-m", "pip", "install", "-q", "--disable-pip-version-check"];
    run(&python, &[&pip[..], &["pytest"]].concat());
    run(
        &python,
        &[
            &pip[..],
            &["--force-reinstall", "--no-deps", client.to_str().unwrap()],
        ]
        .concat(),
    );
    python
}

#[test]
fn the_python_client_passes_its_tests_against_the_demo_functions() {
    let python = venv();
    let bed = Bed::new("pyclient", 1);
    let (tb, w1) = (&bed.tb, &bed.workers[0]);
    let conf = bed.write_config(&[], &examples::config(w1));
    let service = bed.service();
    let _examples = examples::start(tb, w1, &service);
    let _dispatcher = bed.start("dispatcher", &conf, &[]);

    let env = [
        "PYTHONDONTWRITEBYTECODE=1".to_string(),
        format!("FAAS_SERVICE={service}"),
        format!("FAAS_GREET={}", examples::GREET),
        format!("FAAS_WORDCOUNT={}", examples::WORDCOUNT),
        format!("FAAS_REVERSE={}", examples::REVERSE),
        format!("FAAS_WORKFLOW={}", examples::WORKFLOW),
        format!("FAAS_NO_WORKER={}", examples::NO_WORKER),
    ];
    let tests = repo_file("clients/python/tests");
    let mut args: Vec<&str> = env.iter().map(String::as_str).collect();
    args.extend([
        python.to_str().unwrap(),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rs",
        tests.to_str().unwrap(),
    ]);
    let out = tb.exec(&bed.client, Path::new("/usr/bin/env"), &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pytest failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tb.logs()
    );
    assert!(!stdout.contains("skipped"), "every test ran: {stdout}");
    assert!(stdout.contains(" passed"), "{stdout}");
}
