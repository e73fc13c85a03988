//! `dispatcher serve`: the reference worker runtime. It answers each
//! request it receives straight to the client (or to `reply_*`), never
//! through the dispatcher; inside a workflow it hands its output on to the
//! next step by sending a STEP to the dispatcher's service address.

use std::{
    collections::HashMap,
    net::SocketAddr,
    str::FromStr,
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use dispatcher_common::protocol::{error_code, flags, kind};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::{
    udp_batch::{BatchReceiver, BatchSender},
    wire::Message,
};

/// A function the runtime can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FunctionKind {
    /// Answers with its input.
    Echo,
    /// Answers with a fixed small HTML page, whatever the input.
    Static,
    /// Upper-cases UTF-8 text; fails (ERROR 6) on anything else.
    Upper,
    /// Reverses UTF-8 text by characters; fails on anything else.
    Reverse,
    /// A key-value store in memcached: `GET key` answers the value,
    /// `SET key value` stores it (answers `STORED`), `DEL key` deletes it.
    Kv,
    /// Turns an image (PNG, or raw RGB as binary PPM) into a grayscale PNG.
    Grayscale,
}

const NAMES: &str = "echo, static, upper, reverse, kv, grayscale";

/// The largest payload one UDP datagram (over IPv4) can carry after the
/// FaaS header.
pub const MAX_PAYLOAD: usize =
    dispatcher_common::net::MAX_UDP_PAYLOAD - dispatcher_common::protocol::FaasHdr::LEN;

/// The page `static` serves.
pub const STATIC_PAGE: &str = "<!doctype html><html><head><title>faas</title></head><body><h1>Hello from a FaaS worker</h1></body></html>";

impl FromStr for FunctionKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "echo" => Ok(FunctionKind::Echo),
            "static" => Ok(FunctionKind::Static),
            "upper" => Ok(FunctionKind::Upper),
            "reverse" => Ok(FunctionKind::Reverse),
            "kv" => Ok(FunctionKind::Kv),
            "grayscale" => Ok(FunctionKind::Grayscale),
            other => bail!("unknown function `{other}`: this runtime serves: {NAMES}"),
        }
    }
}

/// Which function answers which function id: `echo` (every id) or
/// `1=echo,2=echo` (by id).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FunctionTable {
    by_id: HashMap<u32, FunctionKind>,
    any: Option<FunctionKind>,
}

impl FromStr for FunctionTable {
    type Err = anyhow::Error;
    fn from_str(spec: &str) -> Result<Self> {
        let mut table = FunctionTable::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some((id, name)) => {
                    let id: u32 = id
                        .parse()
                        .with_context(|| format!("`{item}`: function id `{id}` is not a number"))?;
                    table.by_id.insert(id, name.parse()?);
                }
                None => {
                    if table.any.is_some() {
                        bail!(
                            "`{item}`: only one function may serve every id; map ids with ID=NAME"
                        );
                    }
                    table.any = Some(item.parse()?);
                }
            }
        }
        if table.by_id.is_empty() && table.any.is_none() {
            bail!("no functions given: pass --functions echo (or ID=NAME,...)");
        }
        Ok(table)
    }
}

impl FunctionTable {
    /// The ids mapped explicitly (ID=NAME), in order.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.by_id.keys().copied().collect();
        ids.sort();
        ids
    }

    pub fn lookup(&self, function_id: u32) -> Option<FunctionKind> {
        self.by_id.get(&function_id).copied().or(self.any)
    }
}

/// Runs a function on `input`; `Err` is a function failure (ERROR 6).
fn invoke(
    function: FunctionKind,
    input: &[u8],
    kv: Option<&memcache::Client>,
) -> Result<Vec<u8>, String> {
    let text = || std::str::from_utf8(input).map_err(|e| format!("input is not UTF-8 text ({e})"));
    match function {
        FunctionKind::Echo => Ok(input.to_vec()),
        FunctionKind::Static => Ok(STATIC_PAGE.as_bytes().to_vec()),
        FunctionKind::Upper => Ok(text()?.to_uppercase().into_bytes()),
        FunctionKind::Reverse => Ok(text()?.chars().rev().collect::<String>().into_bytes()),
        FunctionKind::Kv => kv_command(
            kv.ok_or("this worker has no memcached: start it with --memcached ADDR:PORT")?,
            input,
        ),
        FunctionKind::Grayscale => grayscale(input),
    }
}

/// Decodes an image (format guessed from its bytes), converts it to 8-bit
/// luma, and encodes that as PNG.
fn grayscale(input: &[u8]) -> Result<Vec<u8>, String> {
    let image = image::load_from_memory(input)
        .map_err(|e| format!("not an image this worker reads (PNG or binary PPM): {e}"))?;
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .to_luma8()
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode the grayscale PNG: {e}"))?;
    Ok(out.into_inner())
}

/// `GET key`, `SET key value` (the value may hold spaces and any bytes),
/// `DEL key`, against memcached.
fn kv_command(client: &memcache::Client, input: &[u8]) -> Result<Vec<u8>, String> {
    let mut parts = input.splitn(3, |b| *b == b' ');
    let verb = parts.next().unwrap_or_default();
    let key = parts
        .next()
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| !k.is_empty() && k.len() <= 250);
    let Some(key) = key else {
        return Err(
            "kv wants `GET key`, `SET key value` or `DEL key` (keys: 1 to 250 bytes of UTF-8)"
                .into(),
        );
    };
    let failed = |e: memcache::MemcacheError| format!("memcached: {e}");
    match verb {
        b"GET" => match client.get::<Vec<u8>>(key).map_err(failed)? {
            Some(value) => Ok(value),
            None => Err(format!("no value for key `{key}`")),
        },
        b"SET" => {
            client
                .set(key, parts.next().unwrap_or_default(), 0)
                .map_err(failed)?;
            Ok(b"STORED".to_vec())
        }
        b"DEL" => Ok(if client.delete(key).map_err(failed)? {
            b"DELETED".to_vec()
        } else {
            b"NOT_FOUND".to_vec()
        }),
        other => Err(format!(
            "kv: unknown command `{}` (GET, SET or DEL)",
            String::from_utf8_lossy(other)
        )),
    }
}

/// The answer to one datagram, and where it goes; `None` for datagrams that
/// get no answer (not FaaS, or not a request).
///
/// A request that is a workflow step other than the last (workflow_id set,
/// flag bit 1 clear) continues the workflow: its output goes to the
/// dispatcher's `service` address as a STEP for `step + 1`, keeping
/// workflow_id, request_id, key and reply_*. Otherwise the RESPONSE (or
/// ERROR) goes to `reply_*`, or the source.
pub fn handle(
    table: &FunctionTable,
    service: Option<SocketAddr>,
    kv: Option<&memcache::Client>,
    datagram: &[u8],
    source: SocketAddr,
) -> Option<(Message, SocketAddr)> {
    let msg = match Message::parse(datagram) {
        Ok(m) => m,
        Err(e) => {
            debug!(%source, "ignored datagram: {e}");
            return None;
        }
    };
    if !matches!(msg.hdr.kind, kind::REQUEST | kind::STEP) {
        debug!(%source, kind = msg.hdr.kind, "ignored non-request");
        return None;
    }
    let to = msg.reply_target(source);
    let id = msg.hdr.function_id();
    let Some(function) = table.lookup(id) else {
        return Some((
            msg.error(
                error_code::UNKNOWN_FUNCTION,
                &format!("this worker does not serve function {id}"),
            ),
            to,
        ));
    };
    let output = match invoke(function, &msg.payload, kv) {
        Ok(output) => output,
        Err(why) => {
            return Some((
                msg.error(
                    error_code::WORKER_FAILURE,
                    &format!("function {id} failed: {why}"),
                ),
                to,
            ))
        }
    };
    if output.len() > MAX_PAYLOAD {
        let text = format!(
            "function {id}'s output is {} bytes, more than one datagram carries ({MAX_PAYLOAD})",
            output.len()
        );
        return Some((msg.error(error_code::PAYLOAD_TOO_LARGE, &text), to));
    }
    let in_workflow = msg.hdr.workflow_id() != 0 && msg.hdr.flags & flags::LAST_STEP == 0;
    match (in_workflow, service) {
        (true, Some(service)) => {
            let mut hdr = msg.hdr;
            hdr.kind = kind::STEP;
            hdr.step = hdr.step.wrapping_add(1);
            Some((
                Message {
                    hdr,
                    payload: output,
                },
                service,
            ))
        }
        (true, None) => Some((
            msg.error(
                error_code::WORKER_FAILURE,
                "this worker cannot continue workflows: start it with --dispatcher VIP:PORT",
            ),
            to,
        )),
        (false, _) => Some((msg.response(output), to)),
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

/// Serves until the task is cancelled (or the process ends). `service` is
/// the dispatcher's address, where workflow steps go on. With a `delay`,
/// each answer leaves that much later (requests are still taken as they
/// come). With `heartbeats`, reports liveness and load to the dispatcher's
/// daemon.
///
/// Datagrams are taken and answered in batches (recvmmsg/sendmmsg) on a
/// plain thread, so that one core's worth of worker keeps up with a load
/// generator's hundred thousand requests a second; the async runtime only
/// carries the heartbeats.
/// How a worker paces its answers, and where it sends STEPs and BUSYs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// The dispatcher's service address (for STEP and BUSY).
    pub service: Option<SocketAddr>,
    /// Each answer this late.
    pub delay: Duration,
    /// Requests beyond this many in flight go back as BUSY.
    pub max_in_flight: Option<u32>,
}

pub async fn serve(
    listen: SocketAddr,
    table: FunctionTable,
    limits: Limits,
    heartbeats: Option<HeartbeatTarget>,
    memcached: Option<SocketAddr>,
    in_flight: Arc<AtomicU32>,
) -> Result<()> {
    let Limits {
        service,
        delay,
        max_in_flight,
    } = limits;
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
    let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &(4 << 20));
    let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::SndBuf, &(4 << 20));
    info!(%listen, "worker serving");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // Not joined: the process ends with the runtime (a blocking task would
    // keep the runtime's shutdown waiting on recvmmsg).
    thread::Builder::new()
        .name("answers".into())
        .spawn(move || {
            let _ = done_tx.send(answer_loop(
                &socket,
                &table,
                Limits {
                    service,
                    delay,
                    max_in_flight,
                },
                kv.as_ref(),
                &in_flight,
            ));
        })?;
    done_rx
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the worker's answer thread ended")))
}

/// Datagrams taken per recvmmsg and answers sent per sendmmsg.
const BATCH: usize = 64;

/// Receives, runs and answers, a batch at a time. With a delay, answers go
/// to a second thread that holds each one until its time: the delay is the
/// same for all, so they fall due in the order they were made.
fn answer_loop(
    socket: &std::net::UdpSocket,
    table: &FunctionTable,
    limits: Limits,
    kv: Option<&memcache::Client>,
    in_flight: &Arc<AtomicU32>,
) -> Result<()> {
    let Limits {
        service,
        delay,
        max_in_flight,
    } = limits;
    let delayed = (!delay.is_zero())
        .then(|| spawn_delayed_sender(socket.try_clone()?, in_flight.clone()))
        .transpose()?;
    let mut receiver = BatchReceiver::new(BATCH, 65536);
    let mut sender = BatchSender::new(BATCH);
    let mut answers: Vec<(Vec<u8>, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
    let mut busies: Vec<(Vec<u8>, Option<SocketAddr>)> = Vec::new();
    loop {
        let n = receiver.recv(socket).context("cannot receive requests")?;
        let held = in_flight.fetch_add(n as u32, Ordering::Relaxed);
        answers.clear();
        busies.clear();
        for k in 0..n {
            let (datagram, from) = receiver.get(k);
            let Some(from) = from else { continue };
            let over_limit =
                max_in_flight.is_some_and(|max| held + k as u32 - busies.len() as u32 >= max);
            if let (true, Some(service)) = (over_limit, service) {
                // At once, not after the delay: another worker can serve it.
                if let Some(m) = busy(datagram, from) {
                    busies.push((m.to_bytes(), Some(service)));
                }
                continue;
            }
            if let Some((answer, to)) = handle(table, service, kv, datagram, from) {
                answers.push((answer.to_bytes(), Some(to)));
            }
        }
        if !busies.is_empty() {
            let sent = sender.send(socket, &busies).context("cannot send BUSY")?;
            if sent < busies.len() {
                warn!(
                    dropped = busies.len() - sent,
                    "send buffer full: BUSYs dropped"
                );
            }
            in_flight.fetch_sub(busies.len() as u32, Ordering::Relaxed);
        }
        let n = n - busies.len();
        match &delayed {
            None => {
                let sent = sender
                    .send(socket, &answers)
                    .context("cannot send answers")?;
                if sent < answers.len() {
                    warn!(
                        dropped = answers.len() - sent,
                        "send buffer full: answers dropped"
                    );
                }
                in_flight.fetch_sub(n as u32, Ordering::Relaxed);
            }
            Some(queue) => {
                let due = Instant::now() + delay;
                // Requests that got no answer are done now.
                in_flight.fetch_sub((n - answers.len()) as u32, Ordering::Relaxed);
                for answer in answers.drain(..) {
                    queue
                        .send((due, answer))
                        .context("the delayed-answer thread ended")?;
                }
            }
        }
    }
}

/// A request sent back as BUSY (PROTOCOL.md): unchanged but for the kind,
/// with `reply_*` set to where the answer goes. None for datagrams that are
/// not requests.
pub fn busy(datagram: &[u8], source: SocketAddr) -> Option<Message> {
    let msg = Message::parse(datagram)
        .ok()
        .filter(|m| matches!(m.hdr.kind, kind::REQUEST | kind::STEP))?;
    let mut hdr = msg.hdr;
    if hdr.flags & flags::REPLY_SET == 0 {
        let source = crate::endpoints::endpoint(source.ip(), source.port());
        hdr.flags |= flags::REPLY_SET;
        hdr.reply_port = source.port;
        hdr.reply_addr = source.addr;
    }
    hdr.kind = kind::BUSY;
    Some(Message {
        hdr,
        payload: msg.payload,
    })
}

type Delayed = (Instant, (Vec<u8>, Option<SocketAddr>));

/// The thread that sends each delayed answer at its time.
fn spawn_delayed_sender(
    socket: std::net::UdpSocket,
    in_flight: Arc<AtomicU32>,
) -> Result<mpsc::Sender<Delayed>> {
    let (tx, rx) = mpsc::channel::<Delayed>();
    thread::Builder::new()
        .name("delayed answers".into())
        .spawn(move || {
            let mut sender = BatchSender::new(1);
            while let Ok((due, answer)) = rx.recv() {
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                if let Err(e) = sender.send(&socket, std::slice::from_ref(&answer)) {
                    warn!("cannot send answer: {e}");
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            }
        })?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_specs() {
        let t: FunctionTable = "echo".parse().unwrap();
        assert_eq!(t.lookup(77), Some(FunctionKind::Echo));
        let t: FunctionTable = "3=echo".parse().unwrap();
        assert_eq!(t.lookup(3), Some(FunctionKind::Echo));
        assert_eq!(t.lookup(4), None);
        assert!(
            format!("{:#}", "x=echo".parse::<FunctionTable>().unwrap_err())
                .contains("not a number")
        );
        assert!(
            format!("{:#}", "resize".parse::<FunctionTable>().unwrap_err())
                .contains("unknown function")
        );
        assert!("".parse::<FunctionTable>().is_err());
    }

    #[test]
    fn echo_answers_the_source_with_the_same_request_id() {
        let t: FunctionTable = "1=echo".parse().unwrap();
        let src: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let (answer, to) = handle(
            &t,
            None,
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
            handle(&t, None, None, &Message::request(2, 5, b"").to_bytes(), src).unwrap();
        assert_eq!(
            answer.error_parts().unwrap().0,
            error_code::UNKNOWN_FUNCTION
        );
        assert!(handle(&t, None, None, b"junk", src).is_none());
    }

    #[test]
    fn busy_sends_the_request_back_with_reply_set_to_its_source() {
        let src: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let request = Message::request(1, 99, b"ping");
        let back = busy(&request.to_bytes(), src).unwrap();
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
        assert!(busy(b"junk", src).is_none());
        let response = request.response(b"pong".to_vec());
        assert!(
            busy(&response.to_bytes(), src).is_none(),
            "only requests are sent back"
        );
    }

    #[test]
    fn failures_answer_error_6() {
        let t: FunctionTable = "upper".parse().unwrap();
        let src: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let (answer, _) = handle(
            &t,
            None,
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
        let t: FunctionTable = "upper".parse().unwrap();
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
        let handled =
            |m: &Message| handle(&t, Some(service), None, &m.to_bytes(), service).unwrap();
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
