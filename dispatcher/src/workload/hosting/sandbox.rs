//! Least privilege for the user's code: exec and warm processes run as an
//! unprivileged user, with only the environment docs/worker-api.md lists,
//! in a process group of their own (so that a timeout kills whatever they
//! started, not only the process the worker forked).

use std::{ffi::OsString, path::PathBuf};

use anyhow::{bail, Context as _, Result};
use nix::unistd::{Uid, User};

/// The `PATH` user code sees: the system's, never the worker's own (which
/// may name a root-only toolchain).
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Who user code runs as, and what it sees.
#[derive(Clone, Debug)]
pub struct Sandbox {
    user: User,
    /// `--env NAME=VALUE` and a function's `env`: passed through as given.
    extra_env: Vec<(String, String)>,
}

impl Sandbox {
    /// `run_as`: `--run-as USER`. As root, user code needs it said (`root`
    /// included, knowingly); as anyone else, the worker's own user is the
    /// default and the only choice.
    pub fn new(run_as: Option<&str>, extra_env: Vec<(String, String)>) -> Result<Sandbox> {
        let me = Uid::effective();
        let user = match run_as {
            None if me.is_root() => bail!(
                "exec and warm functions run your code, and this worker runs as root: \
                 give --run-as USER (an unprivileged user, for example --run-as nobody), \
                 or --run-as root to run it as root knowingly"
            ),
            None => User::from_uid(me)?.with_context(|| format!("uid {me} has no passwd entry"))?,
            Some(name) => User::from_name(name)
                .with_context(|| format!("cannot look up user `{name}`"))?
                .with_context(|| {
                    format!("--run-as {name}: no such user (`getent passwd {name}` lists it when it exists)")
                })?,
        };
        if !me.is_root() && user.uid != me {
            bail!(
                "--run-as {}: only root can run functions as another user; drop --run-as (they run as this worker's user)",
                user.name
            );
        }
        for (name, _) in &extra_env {
            if name.is_empty() || name.contains('=') {
                bail!("--env {name}: want NAME=VALUE");
            }
        }
        Ok(Sandbox { user, extra_env })
    }

    pub fn user(&self) -> &str {
        &self.user.name
    }

    /// The environment every process starts with (docs/worker-api.md):
    /// PATH, HOME, USER, LOGNAME, LANG, then `--env` and the function's own.
    pub fn base_env(&self, function_env: &[(String, String)]) -> Vec<(String, String)> {
        let mut env = vec![
            ("PATH".to_string(), PATH.to_string()),
            ("HOME".to_string(), self.user.dir.display().to_string()),
            ("USER".to_string(), self.user.name.clone()),
            ("LOGNAME".to_string(), self.user.name.clone()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ];
        env.extend(self.extra_env.iter().cloned());
        env.extend(function_env.iter().cloned());
        env
    }

    /// A command for `argv` as this sandbox's user, in its own process
    /// group, with a cleared environment set to `env`, in `/`, every
    /// standard stream piped.
    pub fn command(&self, argv: &[OsString], env: &[(String, String)]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if Uid::effective().is_root() {
            // std drops the supplementary groups when it changes the uid.
            command
                .uid(self.user.uid.as_raw())
                .gid(self.user.gid.as_raw());
        }
        command
    }
}

/// Splits a command line as a POSIX shell would (quotes, escapes; no
/// expansion), and makes a relative program path absolute against the
/// worker's working directory (processes start in `/`).
pub fn parse_command(line: &str) -> Result<Vec<OsString>> {
    let words = shlex::split(line)
        .with_context(|| format!("`{line}`: unbalanced quotes or a trailing backslash"))?;
    let Some(program) = words.first() else {
        bail!("an empty command: give the program to run (for example exec:wc -c)");
    };
    let mut program = PathBuf::from(program);
    if program.is_relative() && program.components().count() > 1 {
        program = std::env::current_dir()?.join(program);
    }
    let mut argv = vec![program.into_os_string()];
    argv.extend(words[1..].iter().map(OsString::from));
    Ok(argv)
}

/// Kills the process group `pgid` (a process this module started, and
/// everything it started that stayed in its group).
pub fn kill_group(pgid: Option<u32>) {
    if let Some(pgid) = pgid {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The last non-empty line of what a process wrote to stderr.
pub fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}

/// How a process ended, in words.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => format!("{status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_like_a_shell() {
        let argv = parse_command("sh -c 'tr a-z A-Z | rev'").unwrap();
        assert_eq!(argv, ["sh", "-c", "tr a-z A-Z | rev"].map(OsString::from));
        let argv = parse_command("./handler.py --fast").unwrap();
        assert!(PathBuf::from(&argv[0]).is_absolute());
        assert!(parse_command("").is_err());
        assert!(parse_command("sh -c 'oops").is_err());
    }

    #[test]
    fn last_line_skips_trailing_blank_lines() {
        assert_eq!(last_line(b"first\nboom: bad input\n\n"), "boom: bad input");
        assert_eq!(last_line(b""), "");
    }
}
