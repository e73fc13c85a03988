//! `ID=exec:CMD`: a process per request, as OpenFaaS's classic watchdog
//! runs one. The payload goes to its stdin, the request's ids to its
//! environment (FAAS_FUNCTION_ID, FAAS_REQUEST_ID, ...); exit status 0
//! makes its stdout the answer, anything else is ERROR 6 with the last line
//! of its stderr. Past the function's timeout its process group is killed.
//! At most `pool` run at once: a request waits (within the timeout) for
//! its turn, and one that gets none goes back as BUSY, never having run.

use std::{ffi::OsString, sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use super::{
    sandbox::{self, Sandbox},
    Call, FunctionConfig, Outcome,
};
use crate::workload::worker::MAX_PAYLOAD;

/// What stderr keeps (its end) for the error message.
const STDERR_KEPT: usize = 4096;

#[derive(Debug)]
pub struct Exec {
    argv: Vec<OsString>,
    command: String,
    timeout: Duration,
    env: Vec<(String, String)>,
    /// One permit per process that may run at once.
    running: tokio::sync::Semaphore,
    sandbox: Arc<Sandbox>,
}

impl Exec {
    pub fn new(
        command: &str,
        config: &FunctionConfig,
        sandbox: Arc<Sandbox>,
    ) -> anyhow::Result<Exec> {
        Ok(Exec {
            argv: sandbox::parse_command(command)?,
            command: command.to_string(),
            timeout: config.timeout,
            env: sandbox.base_env(&config.env),
            running: tokio::sync::Semaphore::new(config.pool as usize),
            sandbox,
        })
    }

    pub async fn call(&self, call: &Call) -> Outcome {
        let Ok(permit) = tokio::time::timeout(self.timeout, self.running.acquire()).await else {
            return Outcome::Busy(format!(
                "no turn to run `{}` within {} ms",
                self.command,
                self.timeout.as_millis()
            ));
        };
        let _permit = permit.expect("never closed");
        let mut env = self.env.clone();
        env.extend(call.ids().map(|(k, v)| (format!("FAAS_{k}"), v)));
        let mut command = self.sandbox.command(&self.argv, &env);
        // The fork copies this process's page tables: not on the thread
        // that answers every other request.
        let spawned = tokio::task::spawn_blocking(move || command.spawn())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                return Outcome::Failed(format!(
                    "cannot start `{}` as {}: {e}",
                    self.command,
                    self.sandbox.user()
                ))
            }
        };
        let pgid = child.id();
        let (mut stdin, stdout, stderr) = (
            child.stdin.take().expect("piped"),
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let payload = &call.payload;
        let feed = async move {
            // A process that exits without reading its input is fine.
            let _ = stdin.write_all(payload).await;
            drop(stdin);
        };
        let output = async {
            let out = read_at_most(stdout, MAX_PAYLOAD + 1).await;
            if out.len() > MAX_PAYLOAD {
                // Stop it now: it may be blocked writing the rest.
                sandbox::kill_group(pgid);
            }
            out
        };
        let run = async {
            let ((), out, err) = tokio::join!(feed, output, read_tail(stderr, STDERR_KEPT));
            (out, err)
        };
        let (out, err) = match tokio::time::timeout(self.timeout, run).await {
            Ok(read) => read,
            Err(_) => {
                sandbox::kill_group(pgid);
                let _ = child.wait().await;
                return Outcome::Failed(format!(
                    "`{}` ran past its timeout ({} ms) and was killed",
                    self.command,
                    self.timeout.as_millis()
                ));
            }
        };
        if out.len() > MAX_PAYLOAD {
            let _ = child.wait().await;
            return Outcome::TooLarge(format!(
                "`{}` wrote more than one datagram carries ({MAX_PAYLOAD} bytes)",
                self.command
            ));
        }
        // Its output is complete (stdout closed): what is left is its exit,
        // bounded like the rest. Whatever it left in its group goes too.
        let status = tokio::time::timeout(self.timeout, child.wait()).await;
        sandbox::kill_group(pgid);
        match status {
            Ok(Ok(status)) if status.success() => Outcome::Output(out),
            Ok(Ok(status)) => Outcome::Failed(format!(
                "`{}` failed ({}): {}",
                self.command,
                sandbox::describe_exit(status),
                sandbox::last_line(&err)
            )),
            Ok(Err(e)) => Outcome::Failed(format!("cannot wait for `{}`: {e}", self.command)),
            Err(_) => {
                let _ = child.wait().await;
                Outcome::Failed(format!(
                    "`{}` closed its output but did not exit within its timeout; killed",
                    self.command
                ))
            }
        }
    }
}

/// Reads up to `limit` bytes (reading stops there: the caller treats
/// `limit` bytes as too many).
async fn read_at_most(stream: impl AsyncRead + Unpin, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = stream.take(limit as u64).read_to_end(&mut out).await;
    out
}

/// Reads a stream to its end, keeping its last `keep` bytes.
pub async fn read_tail(mut stream: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 2 * keep {
            tail.drain(..tail.len() - keep);
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    tail
}
