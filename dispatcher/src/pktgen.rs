//! `dispatcher pktgen`: an open-loop load generator and latency meter.
//!
//! Requests leave on a fixed schedule (request `i` at `start + i / rate`),
//! whatever the answers do, in batches through sendmmsg; a second thread
//! takes answers in batches through recvmmsg and matches them to their
//! request by request_id. Latency is measured from the *scheduled* send
//! time, so a generator that falls behind cannot hide the delay it caused
//! (coordinated omission); it also reports how far behind it fell, and
//! warns when that distorts the offered load.

use std::{
    io::{IoSlice, IoSliceMut},
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use dispatcher_common::protocol::{kind, FaasHdr};
use hdrhistogram::Histogram;
use nix::sys::{
    socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage},
    time::TimeSpec,
};
use serde::Serialize;

/// What to send.
#[derive(Clone, Debug)]
pub struct Options {
    pub to: SocketAddr,
    /// Requests per second.
    pub rate: u64,
    pub duration: Duration,
    /// Function ids and their weights in the mix.
    pub mix: Vec<(u32, u32)>,
    /// Payload bytes after the FaaS header.
    pub payload: usize,
    /// How long to wait for answers after the last send.
    pub drain: Duration,
    /// Datagrams per sendmmsg/recvmmsg call.
    pub batch: usize,
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FunctionReport {
    pub function: u32,
    pub sent: u64,
    pub answered: u64,
    pub errors: u64,
    pub latency_us: Latency,
}

/// What a run saw.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub offered_rate: u64,
    pub duration_s: f64,
    pub sent: u64,
    pub achieved_rate: f64,
    pub answered: u64,
    pub errors: u64,
    pub lost: u64,
    pub loss_percent: f64,
    pub latency_us: Latency,
    /// How far behind schedule the sender fell at worst, and how many
    /// requests left more than 1 ms late.
    pub max_send_lag_us: u64,
    pub late_sends: u64,
    pub functions: Vec<FunctionReport>,
}

/// Parses `1,2:3` (function 1 weight 1, function 2 weight 3).
pub fn parse_mix(spec: &str) -> Result<Vec<(u32, u32)>> {
    let mut mix = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, weight) = item.split_once(':').unwrap_or((item, "1"));
        let id = id.parse().with_context(|| format!("`{item}`: function id `{id}` is not a number"))?;
        let weight = weight.parse().with_context(|| format!("`{item}`: weight `{weight}` is not a number"))?;
        if weight == 0 {
            bail!("`{item}`: a weight of 0 sends nothing; leave the function out");
        }
        mix.push((id, weight));
    }
    if mix.is_empty() {
        bail!("no functions: pass --functions ID[:WEIGHT],...");
    }
    Ok(mix)
}

/// The function of request `i`: a deterministic weighted interleaving.
fn function_of(mix: &[(u32, u32)], total_weight: u64, i: u64) -> u32 {
    let mut r = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16) % total_weight;
    for (id, w) in mix {
        if r < *w as u64 {
            return *id;
        }
        r -= *w as u64;
    }
    mix[0].0
}

/// The scheduled send time of request `i`, in ns after the start.
fn scheduled_ns(i: u64, rate: u64) -> u64 {
    (i as u128 * 1_000_000_000 / rate as u128) as u64
}

/// Runs the load; `progress` is called about every 100 ms with the number
/// of requests sent so far.
pub fn run(opts: &Options, mut progress: impl FnMut(u64, u64)) -> Result<Report> {
    if opts.rate == 0 {
        bail!("--rate 0: give a rate in requests per second");
    }
    let total = (opts.rate as f64 * opts.duration.as_secs_f64()).round() as u64;
    if total == 0 || total > 100_000_000 {
        bail!("--rate x --duration is {total} requests: give between 1 and 100 million");
    }
    let bind: SocketAddr = if opts.to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
    let socket = UdpSocket::bind(bind).context("cannot open a UDP socket")?;
    let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
    let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::SndBuf, &(8 << 20));
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let socket = Arc::new(socket);
    let total_weight: u64 = opts.mix.iter().map(|(_, w)| *w as u64).sum();
    let start = Instant::now();
    let done_sending = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));

    let receiver = {
        let socket = socket.clone();
        let done = done_sending.clone();
        let (rate, batch, drain, mix) = (opts.rate, opts.batch, opts.drain, opts.mix.clone());
        thread::spawn(move || receive(&socket, start, total, rate, batch, drain, &done, &mix, total_weight))
    };

    // The sender: this thread.
    let payload = vec![0x5au8; opts.payload];
    let mut datagrams: Vec<Vec<u8>> = (0..opts.batch).map(|_| Vec::with_capacity(48 + opts.payload)).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(opts.batch, None);
    let target = SockaddrStorage::from(opts.to);
    let mut next = 0u64;
    let (mut max_lag, mut late) = (0u64, 0u64);
    let mut last_progress = Instant::now();
    while next < total {
        let now = start.elapsed().as_nanos() as u64;
        let due_until = ((now as u128 * opts.rate as u128 / 1_000_000_000) as u64 + 1).min(total);
        if due_until <= next {
            let wait = scheduled_ns(next, opts.rate).saturating_sub(now);
            if wait > 200_000 {
                thread::sleep(Duration::from_nanos(wait - 100_000));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        let n = ((due_until - next) as usize).min(opts.batch);
        let lag = now.saturating_sub(scheduled_ns(next, opts.rate));
        max_lag = max_lag.max(lag);
        if lag > 1_000_000 {
            late += n as u64;
        }
        for (k, d) in datagrams.iter_mut().take(n).enumerate() {
            let i = next + k as u64;
            d.clear();
            d.extend_from_slice(&FaasHdr::new(kind::REQUEST, function_of(&opts.mix, total_weight, i), i).to_bytes());
            d.extend_from_slice(&payload);
        }
        let slices: Vec<[IoSlice; 1]> = datagrams.iter().take(n).map(|d| [IoSlice::new(d)]).collect();
        let addrs = vec![Some(target); n];
        let mut done = 0;
        match sendmmsg(socket.as_raw_fd(), &mut headers, &slices, &addrs, [], MsgFlags::empty()) {
            Ok(results) => done = results.count(),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::ENOBUFS | nix::errno::Errno::ECONNREFUSED) => {}
            Err(e) => bail!("sendmmsg to {} failed: {e}", opts.to),
        }
        // Unsent datagrams of a short batch are retried on the next turn;
        // their lateness shows in the lag.
        next += done.max(1) as u64;
        sent.store(next, Ordering::Relaxed);
        if last_progress.elapsed() > Duration::from_millis(100) {
            progress(next, total);
            last_progress = Instant::now();
        }
    }
    progress(total, total);
    let sending_time = start.elapsed();
    done_sending.store(true, Ordering::Relaxed);
    let (all, per_function, answered, errors, by_function_answered, by_function_errors) =
        receiver.join().map_err(|_| anyhow::anyhow!("the receiver thread panicked"))??;

    let lost = total.saturating_sub(answered + errors);
    let functions = opts
        .mix
        .iter()
        .enumerate()
        .map(|(k, (id, _))| FunctionReport {
            function: *id,
            sent: (0..total).filter(|i| function_of(&opts.mix, total_weight, *i) == *id).count() as u64,
            answered: by_function_answered[k],
            errors: by_function_errors[k],
            latency_us: Latency::of(&per_function[k]),
        })
        .collect();
    Ok(Report {
        target: opts.to.to_string(),
        offered_rate: opts.rate,
        duration_s: sending_time.as_secs_f64(),
        sent: total,
        achieved_rate: total as f64 / sending_time.as_secs_f64(),
        answered,
        errors,
        lost,
        loss_percent: lost as f64 * 100.0 / total as f64,
        latency_us: Latency::of(&all),
        max_send_lag_us: max_lag / 1000,
        late_sends: late,
        functions,
    })
}

type Received = (Histogram<u64>, Vec<Histogram<u64>>, u64, u64, Vec<u64>, Vec<u64>);

#[allow(clippy::too_many_arguments)]
fn receive(
    socket: &UdpSocket,
    start: Instant,
    total: u64,
    rate: u64,
    batch: usize,
    drain: Duration,
    done_sending: &AtomicBool,
    mix: &[(u32, u32)],
    total_weight: u64,
) -> Result<Received> {
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut all = new_hist();
    let mut per_function: Vec<Histogram<u64>> = mix.iter().map(|_| new_hist()).collect();
    let mut by_function_answered = vec![0u64; mix.len()];
    let mut by_function_errors = vec![0u64; mix.len()];
    let mut seen = vec![false; total as usize];
    let (mut answered, mut errors) = (0u64, 0u64);
    let mut buffers: Vec<Vec<u8>> = (0..batch).map(|_| vec![0u8; 2048]).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch, None);
    let mut drain_deadline: Option<Instant> = None;
    loop {
        if answered + errors == total {
            break;
        }
        if done_sending.load(Ordering::Relaxed) && drain_deadline.is_none() {
            drain_deadline = Some(Instant::now() + drain);
        }
        if drain_deadline.is_some_and(|d| Instant::now() > d) {
            break;
        }
        let sizes: Vec<usize> = {
            let mut slices: Vec<[IoSliceMut; 1]> = buffers.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            // recvmmsg's own timeout is checked only after a datagram
            // arrives; the socket's receive timeout (set in `run`) bounds
            // the wait for the first one.
            match recvmmsg(socket.as_raw_fd(), &mut headers, slices.iter_mut(), MsgFlags::MSG_WAITFORONE, None::<TimeSpec>) {
                Ok(results) => results.map(|m| m.bytes).collect(),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR | nix::errno::Errno::ECONNREFUSED) => Vec::new(),
                Err(e) => bail!("recvmmsg failed: {e}"),
            }
        };
        let now = start.elapsed().as_nanos() as u64;
        for (k, size) in sizes.into_iter().enumerate() {
            let Some(hdr) = FaasHdr::from_bytes(&buffers[k][..size]) else { continue };
            let i = hdr.request_id();
            if i >= total || seen[i as usize] || !matches!(hdr.kind, kind::RESPONSE | kind::ERROR) {
                continue;
            }
            seen[i as usize] = true;
            let f = mix.iter().position(|(id, _)| *id == function_of(mix, total_weight, i)).unwrap_or(0);
            if hdr.kind == kind::ERROR {
                errors += 1;
                by_function_errors[f] += 1;
                continue;
            }
            answered += 1;
            by_function_answered[f] += 1;
            let us = (now.saturating_sub(scheduled_ns(i, rate)) / 1000).max(1);
            let _ = all.record(us);
            let _ = per_function[f].record(us);
        }
    }
    Ok((all, per_function, answered, errors, by_function_answered, by_function_errors))
}

impl Report {
    /// The summary people read.
    pub fn text(&self) -> String {
        let l = &self.latency_us;
        let mut out = format!(
            "target {}  offered {} req/s for {:.2} s\nsent {}  achieved {:.0} req/s  answered {}  errors {}  lost {} ({:.2}%)\n\
             latency (us, from the scheduled send time): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.1}\n",
            self.target, self.offered_rate, self.duration_s, self.sent, self.achieved_rate, self.answered, self.errors,
            self.lost, self.loss_percent, l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        if self.functions.len() > 1 {
            for f in &self.functions {
                let l = &f.latency_us;
                out += &format!(
                    "  function {}: sent {} answered {} errors {}  p50 {} p99 {} max {}\n",
                    f.function, f.sent, f.answered, f.errors, l.p50, l.p99, l.max
                );
            }
        }
        out
    }

    /// A warning when the generator itself distorted the load.
    pub fn warning(&self) -> Option<String> {
        (self.late_sends > self.sent / 100).then(|| {
            format!(
                "warning: the generator fell behind its schedule ({} of {} requests left more than 1 ms late, at worst {} us): \
                 the offered load was lower than asked; latencies include that delay",
                self.late_sends, self.sent, self.max_send_lag_us
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_interleave_by_weight() {
        let mix = parse_mix("1,2:3").unwrap();
        assert_eq!(mix, vec![(1, 1), (2, 3)]);
        let n = (0..40_000).filter(|i| function_of(&mix, 4, *i) == 2).count();
        assert!((29_000..31_000).contains(&n), "{n}");
        assert!(parse_mix("x").is_err());
        assert!(parse_mix("1:0").is_err());
        assert!(parse_mix("").is_err());
    }

    #[test]
    fn schedule_is_evenly_spaced() {
        assert_eq!(scheduled_ns(0, 1000), 0);
        assert_eq!(scheduled_ns(1, 1000), 1_000_000);
        assert_eq!(scheduled_ns(250_000, 100_000), 2_500_000_000);
    }
}
