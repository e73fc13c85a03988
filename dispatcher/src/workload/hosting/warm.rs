//! `ID=warm:CMD`: a pool of long-lived processes (the model of AWS
//! Lambda's and Nightcore's runtimes). Each takes one request at a time,
//! framed on its stdin and stdout ([`super::frame`]), so a request costs a
//! write and a read, not a fork. A process that dies, breaks the framing
//! or runs past the timeout is killed with its process group and replaced;
//! its request is answered ERROR 6. What processes write to stderr goes to
//! the worker's log.

use std::{
    ffi::OsString,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    process::{Child, ChildStdin, ChildStdout},
    sync::Semaphore,
};
use tracing::{info, warn};

use super::{
    frame,
    sandbox::{self, Sandbox},
    Call, FunctionConfig, Outcome,
};
use crate::workload::worker::MAX_PAYLOAD;

#[derive(Debug)]
pub struct Pool {
    name: String,
    command: String,
    argv: Vec<OsString>,
    env: Vec<(String, String)>,
    timeout: Duration,
    sandbox: Arc<Sandbox>,
    /// One permit per process: a request waits for a free one.
    free: Semaphore,
    /// Idle processes; None where one died and could not be replaced yet.
    idle: Mutex<Vec<Option<Process>>>,
}

#[derive(Debug)]
struct Process {
    child: Child,
    pgid: Option<u32>,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The last line it wrote to stderr.
    last_stderr: Arc<Mutex<String>>,
}

/// Why a process could not answer.
enum Broke {
    /// It could not take the request (it had ended before it): the request
    /// never ran, so another process may take it.
    NotTaken(String),
    /// It exited, or closed its stdin or stdout.
    Died(String),
    /// It wrote something the framing does not allow.
    Framing(String),
    /// Its answer does not fit one datagram.
    TooLarge(usize),
}

impl Pool {
    /// Starts `config.pool` processes of `command`.
    pub fn start(
        command: &str,
        config: &FunctionConfig,
        sandbox: Arc<Sandbox>,
        name: &str,
    ) -> Result<Pool> {
        let pool = Pool {
            name: name.to_string(),
            command: command.to_string(),
            argv: sandbox::parse_command(command)?,
            env: sandbox.base_env(&config.env),
            timeout: config.timeout,
            sandbox,
            free: Semaphore::new(config.pool as usize),
            idle: Mutex::new(Vec::new()),
        };
        let mut idle = Vec::new();
        for _ in 0..config.pool {
            idle.push(Some(pool.spawn().with_context(|| {
                format!("cannot start `{command}` as {}", pool.sandbox.user())
            })?));
        }
        info!(function = %name, processes = config.pool, user = pool.sandbox.user(), "warm processes started: {command}");
        *pool.idle.lock().expect("not poisoned") = idle;
        Ok(pool)
    }

    fn spawn(&self) -> std::io::Result<Process> {
        let mut child = self.sandbox.command(&self.argv, &self.env).spawn()?;
        let pgid = child.id();
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let stderr = child.stderr.take().expect("piped");
        let last_stderr = Arc::new(Mutex::new(String::new()));
        let (name, last) = (self.name.clone(), last_stderr.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                info!(target: "function", function = %name, pid = pgid, "{line}");
                if !line.trim().is_empty() {
                    *last.lock().expect("not poisoned") = sandbox::last_line(line.as_bytes());
                }
            }
        });
        Ok(Process {
            child,
            pgid,
            stdin,
            stdout,
            last_stderr,
        })
    }

    pub async fn call(&self, call: &Call) -> Outcome {
        // Waiting for a process is bounded too; a request that got none
        // never ran, so it goes back as BUSY (another worker may be free).
        let Ok(permit) = tokio::time::timeout(self.timeout, self.free.acquire()).await else {
            return Outcome::Busy(format!(
                "no free warm process within {} ms",
                self.timeout.as_millis()
            ));
        };
        let _permit = permit.expect("never closed");
        let taken = self.idle.lock().expect("not poisoned").pop().flatten();
        let mut process = match taken.map_or_else(|| self.spawn(), Ok) {
            Ok(process) => process,
            Err(e) => {
                self.idle.lock().expect("not poisoned").push(None);
                return Outcome::Failed(format!(
                    "cannot start `{}` as {}: {e}",
                    self.command,
                    self.sandbox.user()
                ));
            }
        };
        let mut outcome = tokio::time::timeout(self.timeout, process.exchange(call)).await;
        if let Ok(Err(Broke::NotTaken(why))) = &outcome {
            // A process that died while idle (killed, or a handler that
            // exits): the request has not run; a fresh process takes it.
            warn!(function = %self.name, "a warm process had ended while idle ({why}); starting another for the request");
            self.bury(&mut process).await;
            process = match self.spawn() {
                Ok(fresh) => fresh,
                Err(e) => {
                    self.idle.lock().expect("not poisoned").push(None);
                    return Outcome::Failed(format!("cannot start `{}`: {e}", self.command));
                }
            };
            outcome = tokio::time::timeout(self.timeout, process.exchange(call)).await;
        }
        match outcome {
            Ok(Ok(answer)) => {
                self.idle.lock().expect("not poisoned").push(Some(process));
                if answer.ok {
                    Outcome::Output(answer.payload)
                } else {
                    Outcome::Failed(String::from_utf8_lossy(&answer.payload).into_owned())
                }
            }
            Ok(Err(broke)) => self.retire(process, broke).await,
            Err(_) => {
                self.retire(process, Broke::Died(String::new())).await;
                Outcome::Failed(format!(
                    "`{}` ran past its timeout ({} ms); its process was killed and replaced",
                    self.command,
                    self.timeout.as_millis()
                ))
            }
        }
    }

    /// Kills a process and its group, reaps it, and says how it ended.
    async fn bury(&self, process: &mut Process) -> String {
        sandbox::kill_group(process.pgid);
        let status = tokio::time::timeout(Duration::from_secs(1), process.child.wait()).await;
        match status {
            Ok(Ok(status)) => sandbox::describe_exit(status),
            _ => "did not exit".to_string(),
        }
    }

    /// Kills a process that cannot go on, puts a fresh one in its place
    /// (or None, to try again on the next request), and says what happened.
    async fn retire(&self, mut process: Process, broke: Broke) -> Outcome {
        let how = self.bury(&mut process).await;
        let last = process.last_stderr.lock().expect("not poisoned").clone();
        let replacement = self.spawn();
        if let Err(e) = &replacement {
            warn!(function = %self.name, "cannot replace a warm process: {e}");
        }
        self.idle
            .lock()
            .expect("not poisoned")
            .push(replacement.ok());
        match broke {
            Broke::Died(why) | Broke::NotTaken(why) => {
                warn!(function = %self.name, pid = process.pgid, "warm process ended ({how}); replaced");
                Outcome::Failed(format!(
                    "the warm process of `{}` ended while running the request ({how}{}{}): {last}",
                    self.command,
                    if why.is_empty() { "" } else { ", " },
                    why
                ))
            }
            Broke::Framing(why) => {
                warn!(function = %self.name, "warm process broke the framing: {why}; replaced");
                Outcome::Failed(format!(
                    "`{}` broke the framing of docs/worker-api.md: {why}",
                    self.command
                ))
            }
            Broke::TooLarge(len) => Outcome::TooLarge(format!(
                "`{}` answered {} bytes, more than one datagram carries ({MAX_PAYLOAD})",
                self.command,
                len.saturating_sub(frame::ANSWER_FIXED)
            )),
        }
    }
}

impl Process {
    async fn exchange(&mut self, call: &Call) -> Result<frame::Answer, Broke> {
        let not_taken = |e: std::io::Error| Broke::NotTaken(e.to_string());
        self.stdin
            .write_all(&frame::request(call))
            .await
            .map_err(not_taken)?;
        self.stdin.flush().await.map_err(not_taken)?;
        let died = |e: std::io::Error| Broke::Died(e.to_string());
        let mut len = [0u8; 4];
        self.stdout.read_exact(&mut len).await.map_err(died)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > frame::ANSWER_FIXED + MAX_PAYLOAD {
            return Err(Broke::TooLarge(len));
        }
        let mut body = vec![0u8; len];
        self.stdout.read_exact(&mut body).await.map_err(died)?;
        let answer = frame::parse_answer(&body).map_err(Broke::Framing)?;
        if answer.request_id != call.request_id {
            return Err(Broke::Framing(format!(
                "it answered request {} when sent request {}",
                answer.request_id, call.request_id
            )));
        }
        Ok(answer)
    }
}
