//! `dispatcher serve`: the worker runtime. It takes requests off its
//! socket a batch at a time, runs each on its function
//! ([`crate::workload::hosting`]: built-ins inline, the user's processes
//! and HTTP servers on the async runtime) and answers straight to the
//! client (or to `reply_*`), never through the dispatcher; inside a
//! workflow it hands its output on to the next step by sending a STEP to
//! the dispatcher's service address. A request beyond its function's
//! concurrency limit goes back to the dispatcher as BUSY.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use dispatcher_common::protocol::{error_code, flags, kind};
use tokio::{
    io::{unix::AsyncFd, Interest},
    net::UdpSocket,
};
use tracing::{debug, info, warn};

use crate::{
    udp_batch::{BatchReceiver, BatchSender},
    wire::Message,
    workload::hosting::{
        builtin, sandbox::Sandbox, Call, Function, FunctionTable, Functions, Outcome, Runner, Slot,
    },
};

/// The largest payload one UDP datagram (over IPv4) can carry after the
/// FaaS header.
pub const MAX_PAYLOAD: usize =
    dispatcher_common::net::MAX_UDP_PAYLOAD - dispatcher_common::protocol::FaasHdr::LEN;

/// What becomes of one datagram.
#[derive(Debug)]
pub enum Taken {
    /// No answer: not FaaS, or not a request.
    Ignored,
    /// This answer goes to this address now; the slot (if any) is given
    /// back once it has left.
    Answer(Message, SocketAddr, Option<Slot>),
    /// The request goes back to the dispatcher (its function is at its
    /// limit).
    Busy(Message, SocketAddr),
    /// A hosted function runs it; `finish` makes the answer. `from` is
    /// where it came from.
    Hosted {
        msg: Message,
        from: SocketAddr,
        function: Arc<Function>,
        slot: Slot,
    },
}

/// Takes one datagram: answers it at once (built-ins, errors, BUSY), or
/// hands it to a hosted function.
pub fn take(
    functions: &Functions,
    service: Option<SocketAddr>,
    kv: Option<&memcache::Client>,
    datagram: &[u8],
    source: SocketAddr,
) -> Taken {
    let msg = match Message::parse(datagram) {
        Ok(m) => m,
        Err(e) => {
            debug!(%source, "ignored datagram: {e}");
            return Taken::Ignored;
        }
    };
    if !matches!(msg.hdr.kind, kind::REQUEST | kind::STEP) {
        debug!(%source, kind = msg.hdr.kind, "ignored non-request");
        return Taken::Ignored;
    }
    let id = msg.hdr.function_id();
    let Some(function) = functions.lookup(id) else {
        let text = format!("this worker does not serve function {id}");
        let to = msg.reply_target(source);
        return Taken::Answer(msg.error(error_code::UNKNOWN_FUNCTION, &text), to, None);
    };
    let Some(slot) = function.try_acquire() else {
        // At once: another worker can serve it.
        return match service {
            Some(service) => Taken::Busy(busy(msg, source), service),
            None => {
                let to = msg.reply_target(source);
                let text = format!("function {id} is at its limit on this worker");
                Taken::Answer(msg.error(error_code::OVERLOADED, &text), to, None)
            }
        };
    };
    match &function.runner {
        Runner::Builtin(kind) => {
            let outcome = match builtin::invoke(*kind, &msg.payload, kv) {
                Ok(output) => Outcome::Output(output),
                Err(why) => Outcome::Failed(why),
            };
            let (answer, to) = finish(&msg, outcome, service, source);
            Taken::Answer(answer, to, Some(slot))
        }
        _ => Taken::Hosted {
            msg,
            from: source,
            function: function.clone(),
            slot,
        },
    }
}

/// The answer to `msg` once its function has run, and where it goes.
///
/// A request that is a workflow step other than the last (workflow_id set,
/// flag bit 1 clear) continues the workflow: its output goes to the
/// dispatcher's `service` address as a STEP for `step + 1`, keeping
/// workflow_id, request_id, key and reply_*. Otherwise the RESPONSE (or
/// ERROR) goes to `reply_*`, or the source. An overloaded function server
/// sends the request back as BUSY.
pub fn finish(
    msg: &Message,
    outcome: Outcome,
    service: Option<SocketAddr>,
    source: SocketAddr,
) -> (Message, SocketAddr) {
    let to = msg.reply_target(source);
    let id = msg.hdr.function_id();
    let output = match outcome {
        Outcome::Output(output) => output,
        Outcome::Failed(why) => {
            let text = format!("function {id} failed: {why}");
            return (msg.error(error_code::WORKER_FAILURE, &text), to);
        }
        Outcome::TooLarge(why) => {
            let text = format!("function {id}: {why}");
            return (msg.error(error_code::PAYLOAD_TOO_LARGE, &text), to);
        }
        Outcome::Busy(why) => {
            return match service {
                Some(service) => (busy(msg.clone(), source), service),
                None => {
                    let text = format!("function {id} is overloaded ({why})");
                    (msg.error(error_code::OVERLOADED, &text), to)
                }
            };
        }
    };
    if output.len() > MAX_PAYLOAD {
        let text = format!(
            "function {id}'s output is {} bytes, more than one datagram carries ({MAX_PAYLOAD})",
            output.len()
        );
        return (msg.error(error_code::PAYLOAD_TOO_LARGE, &text), to);
    }
    let in_workflow = msg.hdr.workflow_id() != 0 && msg.hdr.flags & flags::LAST_STEP == 0;
    match (in_workflow, service) {
        (true, Some(service)) => {
            let mut hdr = msg.hdr;
            hdr.kind = kind::STEP;
            hdr.step = hdr.step.wrapping_add(1);
            (
                Message {
                    hdr,
                    payload: output,
                },
                service,
            )
        }
        (true, None) => (
            msg.error(
                error_code::WORKER_FAILURE,
                "this worker cannot continue workflows: start it with --dispatcher VIP:PORT",
            ),
            to,
        ),
        (false, _) => (msg.response(output), to),
    }
}

/// Where and how a worker reports heartbeats (see heartbeat.rs): to every
/// address in `to`, which registration keeps current with the cluster's
/// dispatchers.
#[derive(Clone, Debug)]
pub struct HeartbeatTarget {
    pub to: Arc<std::sync::RwLock<Vec<SocketAddr>>>,
    pub key: String,
    pub interval: Duration,
    pub capacity: u32,
}

/// Sends a heartbeat carrying the in-flight count to every target, every
/// interval.
async fn send_heartbeats(
    listen: SocketAddr,
    target: HeartbeatTarget,
    in_flight: Arc<AtomicU32>,
) -> Result<()> {
    let v4 = UdpSocket::bind("0.0.0.0:0").await?;
    let v6 = UdpSocket::bind("[::]:0").await.ok();
    let mut tick = tokio::time::interval(target.interval);
    loop {
        tick.tick().await;
        let hb = crate::heartbeat::Heartbeat {
            worker: listen,
            in_flight: in_flight.load(Ordering::Relaxed),
            capacity: target.capacity,
            sent_ns: crate::heartbeat::now_ns(),
        };
        let bytes = hb.encode(target.key.as_bytes());
        let targets = target.to.read().expect("not poisoned").clone();
        for to in targets {
            let socket = match (&to, &v6) {
                (SocketAddr::V6(_), Some(v6)) => v6,
                _ => &v4,
            };
            if let Err(e) = socket.send_to(&bytes, to).await {
                warn!(%to, "cannot send heartbeat: {e}");
            }
        }
    }
}

/// How a worker paces its answers, and where it sends STEPs and BUSYs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// The dispatcher's service address (for STEP and BUSY).
    pub service: Option<SocketAddr>,
    /// Each built-in's answer this late.
    pub delay: Duration,
}

/// Serves until the task is cancelled (or the process ends). `service` is
/// the dispatcher's address, where workflow steps go on. With a `delay`,
/// each built-in's answer leaves that much later (requests are still taken
/// as they come). With `heartbeats`, reports liveness and load (`in_flight`,
/// which the functions' slots keep) to the dispatchers' daemons.
///
/// Datagrams are taken and answered in batches (recvmmsg/sendmmsg) on a
/// thread of their own, so that one core's worth of worker keeps up with a
/// load generator's hundred thousand requests a second. That thread is a
/// single-threaded event loop, and the hosted functions (their processes,
/// their HTTP connections) live on it too: a request for one costs no hop
/// to another thread, only the process's or the server's own wake-up. The
/// caller's runtime carries the heartbeats.
pub async fn serve(
    listen: SocketAddr,
    table: FunctionTable,
    sandbox: Option<Sandbox>,
    limits: Limits,
    heartbeats: Option<HeartbeatTarget>,
    memcached: Option<SocketAddr>,
    in_flight: Arc<AtomicU32>,
) -> Result<()> {
    let kv = match memcached {
        Some(addr) => {
            let client = memcache::Client::connect(format!("memcache://{addr}?timeout=1"))
                .with_context(|| format!("cannot reach memcached at {addr} (is it running? `memcached -l {}` starts one)", addr.ip()))?;
            Some(client)
        }
        None => None,
    };
    if let Some(target) = heartbeats {
        if listen.ip().is_unspecified() {
            bail!("--heartbeat-to needs --listen on the worker's own address (the one the dispatcher's config names), not {}", listen.ip());
        }
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            if let Err(e) = send_heartbeats(listen, target, in_flight).await {
                warn!("heartbeats stopped: {e:#}");
            }
        });
    }
    let socket = std::net::UdpSocket::bind(listen).with_context(|| {
        format!("cannot listen on {listen} (is the address on an interface, the port free?)")
    })?;
    // Room for a burst while the answer thread is off the CPU (a host
    // busy forking exec functions stalls it for tens of milliseconds):
    // past net.core.rmem_max when the worker may (root), else up to it.
    use nix::sys::socket::{setsockopt, sockopt};
    const BUFFER: usize = 4 << 20;
    if setsockopt(&socket, sockopt::RcvBufForce, &BUFFER).is_err() {
        let _ = setsockopt(&socket, sockopt::RcvBuf, &BUFFER);
    }
    if setsockopt(&socket, sockopt::SndBufForce, &BUFFER).is_err() {
        let _ = setsockopt(&socket, sockopt::SndBuf, &BUFFER);
    }
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // Not joined: the process ends with the caller's runtime (a blocking
    // join would keep its shutdown waiting on this loop).
    thread::Builder::new()
        .name("answers".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = started_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let functions = match Functions::start(&table, sandbox, in_flight) {
                    Ok(functions) => functions,
                    Err(e) => {
                        let _ = started_tx.send(Err(e.context("cannot start the functions")));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                let _ = done_tx.send(answer_loop(Arc::new(socket), functions, limits, kv).await);
            });
        })?;
    started_rx
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the worker's answer thread ended")))?;
    info!(%listen, "worker serving");
    crate::systemd::ready(&format!("serving on {listen}"));
    done_rx
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the worker's answer thread ended")))
}

/// Datagrams taken per recvmmsg and answers sent per sendmmsg.
const BATCH: usize = 64;

/// Receives, runs and answers, a batch at a time. Built-ins answer in the
/// batch (with a delay, through a second thread that holds each answer
/// until its time: the delay is the same for all, so they fall due in the
/// order they were made); hosted functions run as tasks on this loop, each
/// sending its own answer. Between batches the loop yields, so that under
/// a flood of built-in requests the hosted ones still get their turn.
async fn answer_loop(
    socket: Arc<std::net::UdpSocket>,
    functions: Functions,
    limits: Limits,
    kv: Option<memcache::Client>,
) -> Result<()> {
    let Limits { service, delay } = limits;
    let delayed = (!delay.is_zero())
        .then(|| spawn_delayed_sender(socket.try_clone()?))
        .transpose()?;
    // The socket stays blocking (sends wait for buffer space, as they
    // should); receives do not wait (MSG_DONTWAIT) once the loop is told
    // it is readable.
    // SAFETY: the Arc keeps the socket, and so its descriptor, open for as
    // long as the AsyncFd holds it; nothing replaces or closes it before.
    let readable = unsafe { AsyncFd::register_with_interest(socket.clone(), Interest::READABLE) }
        .context("cannot watch the worker's socket")?;
    let mut receiver = BatchReceiver::new(BATCH, 65536);
    let mut sender = BatchSender::new(BATCH);
    let mut answers: Vec<(Vec<u8>, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
    let mut slots: Vec<Option<Slot>> = Vec::with_capacity(BATCH);
    let mut busies: Vec<(Vec<u8>, Option<SocketAddr>)> = Vec::new();
    loop {
        let mut ready = readable
            .readable()
            .await
            .context("cannot wait for requests")?;
        let n = receiver
            .try_recv(&socket)
            .context("cannot receive requests")?;
        if n == 0 {
            ready.clear_ready();
            continue;
        }
        drop(ready);
        for k in 0..n {
            let (datagram, from) = receiver.get(k);
            let Some(from) = from else { continue };
            match take(&functions, service, kv.as_ref(), datagram, from) {
                Taken::Ignored => {}
                Taken::Answer(answer, to, slot) => {
                    answers.push((answer.to_bytes(), Some(to)));
                    slots.push(slot);
                }
                Taken::Busy(back, to) => busies.push((back.to_bytes(), Some(to))),
                Taken::Hosted {
                    msg,
                    from,
                    function,
                    slot,
                } => {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        let outcome = function.call(Call::of(&msg)).await;
                        let (answer, to) = finish(&msg, outcome, service, from);
                        if let Err(e) = socket.send_to(&answer.to_bytes(), to) {
                            warn!(%to, "cannot send answer: {e}");
                        }
                        drop(slot);
                    });
                }
            }
        }
        if !busies.is_empty() {
            let sent = sender.send(&socket, &busies).context("cannot send BUSY")?;
            if sent < busies.len() {
                warn!(
                    dropped = busies.len() - sent,
                    "send buffer full: BUSYs dropped"
                );
            }
            busies.clear();
        }
        match &delayed {
            None => {
                let sent = sender
                    .send(&socket, &answers)
                    .context("cannot send answers")?;
                if sent < answers.len() {
                    warn!(
                        dropped = answers.len() - sent,
                        "send buffer full: answers dropped"
                    );
                }
                answers.clear();
                slots.clear();
            }
            Some(queue) => {
                let due = Instant::now() + delay;
                for (answer, slot) in answers.drain(..).zip(slots.drain(..)) {
                    queue
                        .send((due, answer, slot))
                        .context("the delayed-answer thread ended")?;
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Waits until no request is in flight (their answers have left), or
/// `timeout`: what a stopping worker owes the requests it already took.
pub async fn finish_in_flight(in_flight: &AtomicU32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let held = in_flight.load(Ordering::Relaxed);
    if held > 0 {
        info!(held, "stopping: answering the requests in flight first");
    }
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = in_flight.load(Ordering::Relaxed);
    if left > 0 {
        warn!(
            left,
            "stopping with requests still in flight after {timeout:?}"
        );
    }
}

/// A request sent back as BUSY (PROTOCOL.md): unchanged but for the kind,
/// with `reply_*` set to where the answer goes. None for datagrams that are
/// not requests.
pub fn busy(msg: Message, source: SocketAddr) -> Message {
    let mut hdr = msg.hdr;
    if hdr.flags & flags::REPLY_SET == 0 {
        let source = crate::endpoints::endpoint(source.ip(), source.port());
        hdr.flags |= flags::REPLY_SET;
        hdr.reply_port = source.port;
        hdr.reply_addr = source.addr;
    }
    hdr.kind = kind::BUSY;
    Message {
        hdr,
        payload: msg.payload,
    }
}

type Delayed = (Instant, (Vec<u8>, Option<SocketAddr>), Option<Slot>);

/// The thread that sends each delayed answer at its time (and gives its
/// slot back then).
fn spawn_delayed_sender(socket: std::net::UdpSocket) -> Result<mpsc::Sender<Delayed>> {
    let (tx, rx) = mpsc::channel::<Delayed>();
    thread::Builder::new()
        .name("delayed answers".into())
        .spawn(move || {
            let mut sender = BatchSender::new(1);
            while let Ok((due, answer, slot)) = rx.recv() {
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                if let Err(e) = sender.send(&socket, std::slice::from_ref(&answer)) {
                    warn!("cannot send answer: {e}");
                }
                drop(slot);
            }
        })?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a worker serving `functions` (built-ins) answers at once.
    fn handle(
        functions: &str,
        service: Option<SocketAddr>,
        datagram: &[u8],
        source: SocketAddr,
    ) -> Option<(Message, SocketAddr)> {
        let table: FunctionTable = functions.parse().unwrap();
        let functions = Functions::start(&table, None, Arc::default()).unwrap();
        match take(&functions, service, None, datagram, source) {
            Taken::Answer(answer, to, _) => Some((answer, to)),
            Taken::Ignored => None,
            other => panic!("not answered at once: {other:?}"),
        }
    }

    #[test]
    fn echo_answers_the_source_with_the_same_request_id() {
        let src: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let (answer, to) = handle(
            "1=echo",
            None,
            &Message::request(1, 99, b"ping").to_bytes(),
            src,
        )
        .unwrap();
        assert_eq!(to, src);
        assert_eq!(answer.hdr.kind, kind::RESPONSE);
        assert_eq!(answer.hdr.request_id(), 99);
        assert_eq!(answer.payload, b"ping");
        let (answer, _) =
            handle("1=echo", None, &Message::request(2, 5, b"").to_bytes(), src).unwrap();
        assert_eq!(
            answer.error_parts().unwrap().0,
            error_code::UNKNOWN_FUNCTION
        );
        assert!(handle("1=echo", None, b"junk", src).is_none());
    }

    #[test]
    fn busy_sends_the_request_back_with_reply_set_to_its_source() {
        let src: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let request = Message::request(1, 99, b"ping");
        let back = busy(request.clone(), src);
        assert_eq!(back.hdr.kind, kind::BUSY);
        assert_eq!(
            (
                back.hdr.request_id(),
                back.hdr.function_id(),
                &back.payload[..]
            ),
            (99, 1, &b"ping"[..])
        );
        assert_eq!(
            back.reply_target("10.9.9.9:1".parse().unwrap()),
            src,
            "the answer still goes to the client"
        );
    }

    #[test]
    fn failures_answer_error_6() {
        let src: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let (answer, _) = handle(
            "upper",
            None,
            &Message::request(1, 1, &[0xff, 0xfe]).to_bytes(),
            src,
        )
        .unwrap();
        let (code, text) = answer.error_parts().unwrap();
        assert_eq!(code, error_code::WORKER_FAILURE);
        assert!(text.contains("not UTF-8"), "{text}");
    }

    #[test]
    fn workflow_steps_go_on_to_the_dispatcher_and_the_last_answers_the_client() {
        let service: SocketAddr = "10.0.0.1:7770".parse().unwrap();
        let client: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let mut m = Message::request(1, 7, b"abc");
        m.hdr.workflow_id = 100u32.to_be_bytes();
        m.hdr.flags = flags::REPLY_SET;
        m.hdr.reply_port = client.port().to_be_bytes();
        m.hdr.reply_addr = "10.0.0.2"
            .parse::<std::net::Ipv4Addr>()
            .unwrap()
            .to_ipv6_mapped()
            .octets();
        // What the worker sends for `m`, arriving from the dispatcher.
        let handled = |m: &Message| handle("upper", Some(service), &m.to_bytes(), service).unwrap();
        let (step, to) = handled(&m);
        assert_eq!(to, service);
        assert_eq!(
            (
                step.hdr.kind,
                step.hdr.step,
                step.hdr.workflow_id(),
                step.hdr.request_id()
            ),
            (kind::STEP, 1, 100, 7)
        );
        assert_eq!(step.hdr.reply_addr, m.hdr.reply_addr);
        assert_eq!(step.payload, b"ABC");
        m.hdr.flags |= flags::LAST_STEP;
        let (answer, to) = handled(&m);
        assert_eq!(to, client);
        assert_eq!(answer.hdr.kind, kind::RESPONSE);
        assert_eq!(answer.payload, b"ABC");
    }
}
