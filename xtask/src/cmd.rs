//! Running commands with a clear account of what failed.

use std::{
    ffi::{OsStr, OsString},
    path::Path,
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Announces a step, so a long first run says what it is doing.
pub fn step(what: &str) {
    eprintln!("xtask: {what}");
}

/// PATH with cargo's bin directory first, where bpf-linker is installed.
pub fn path_with_cargo_bin() -> OsString {
    let mut paths = vec![crate::bootstrap::cargo_bin_dir()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).expect("PATH entries without ':'")
}

/// Runs `program args` to completion; an error names the command.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S], envs: &[(&str, OsString)]) -> Result<()> {
    let mut cmd = Command::new(program);
    cmd.args(args).env("PATH", path_with_cargo_bin());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{program}` (is it installed?)"))?;
    if !status.success() {
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        bail!("`{program} {}` failed ({status})", shown.join(" "));
    }
    Ok(())
}

pub fn cargo<S: AsRef<OsStr>>(args: &[S]) -> Result<()> {
    run(&cargo_program(), args, &[])
}

pub fn cargo_with_env<S: AsRef<OsStr>>(args: &[S], envs: &[(&str, OsString)]) -> Result<()> {
    run(&cargo_program(), args, envs)
}

/// What a test run counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
}

/// `cargo test ARGS`, echoing its output; returns every test binary's
/// results summed, and fails if cargo test failed or ran nothing.
pub fn cargo_test<S: AsRef<OsStr>>(args: &[S], envs: &[(&str, OsString)]) -> (Counts, Result<()>) {
    use std::io::{BufRead as _, BufReader};
    let mut counts = Counts::default();
    let mut cmd = Command::new(cargo_program());
    cmd.args(args)
        .env("PATH", path_with_cargo_bin())
        .stdout(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return (counts, Err(anyhow::anyhow!("cannot start cargo test: {e}"))),
    };
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            counts.passed += count_before(rest, " passed");
            counts.failed += count_before(rest, " failed");
        }
    }
    let result = match child.wait() {
        Ok(status) if !status.success() => Err(anyhow::anyhow!("cargo test failed ({status})")),
        Ok(_) if counts.passed == 0 => Err(anyhow::anyhow!("cargo test ran no test")),
        Ok(_) => Ok(()),
        Err(e) => Err(e.into()),
    };
    (counts, result)
}

/// The number just before `label` in "ok. 6 passed; 0 failed; ...".
fn count_before(text: &str, label: &str) -> u64 {
    text.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(label.trim_start())
                .map(str::trim)
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The cargo that runs this xtask (so the same toolchain builds everything).
fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs `program args` and exits with its status (for `run`: signals reach it).
pub fn exec(program: &Path, args: &[OsString]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(program)
        .args(args)
        .env("PATH", path_with_cargo_bin())
        .exec();
    Err(err).with_context(|| format!("cannot run {}", program.display()))
}

/// Runs a command and returns its trimmed stdout, or None if it failed.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .env("PATH", path_with_cargo_bin())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
