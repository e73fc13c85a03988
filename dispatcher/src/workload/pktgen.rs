//! `dispatcher pktgen`: an open-loop load generator and latency meter.
//!
//! Requests leave on a fixed schedule (request `i` at `start + i / rate`),
//! whatever the answers do, in batches through sendmmsg; answers are taken
//! in batches through recvmmsg between sends and matched to their request
//! by request_id. Latency is measured from the *scheduled* send
//! time, so a generator that falls behind cannot hide the delay it caused
//! (coordinated omission); it also reports how far behind it fell, and
//! warns when that distorts the offered load.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use dispatcher_common::protocol::{kind, FaasHdr};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{
    udp_batch::{BatchReceiver, BatchSender},
    workload::plot::{self, Series},
};

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
    /// Within this long of the next request the sender polls instead of
    /// sleeping (a VM's timer wake-up costs tens of microseconds), which
    /// also timestamps answers as they come; 0 always sleeps, leaving the
    /// CPU to whatever shares it.
    pub spin: Duration,
    /// Sockets (source ports) to spread the requests over: flows an ECMP
    /// router or RSS can tell apart. 1: one flow.
    pub flows: usize,
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FunctionReport {
    pub function: u32,
    pub sent: u64,
    pub answered: u64,
    pub errors: u64,
    pub latency_us: Latency,
}

/// What a run saw.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// The latency distribution, for `plot`: all requests, then each
    /// function of the mix.
    #[serde(skip)]
    pub distribution: Vec<Series>,
}

/// Parses `1,2:3` (function 1 weight 1, function 2 weight 3).
pub fn parse_mix(spec: &str) -> Result<Vec<(u32, u32)>> {
    let mut mix = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, weight) = item.split_once(':').unwrap_or((item, "1"));
        let id = id
            .parse()
            .with_context(|| format!("`{item}`: function id `{id}` is not a number"))?;
        let weight = weight
            .parse()
            .with_context(|| format!("`{item}`: weight `{weight}` is not a number"))?;
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

/// What the receiving side has counted so far.
struct Tally {
    all: Histogram<u64>,
    per_function: Vec<Histogram<u64>>,
    answered: Vec<u64>,
    errors: Vec<u64>,
    /// Requests answered (RESPONSE or ERROR), by request index.
    seen: Vec<bool>,
    done: u64,
}

impl Tally {
    fn new(functions: usize, total: u64) -> Tally {
        let new_hist =
            || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Tally {
            all: new_hist(),
            per_function: (0..functions).map(|_| new_hist()).collect(),
            answered: vec![0; functions],
            errors: vec![0; functions],
            seen: vec![false; total as usize],
            done: 0,
        }
    }

    /// Counts one answer that arrived at `now_ns`; ignores anything that is
    /// not an answer to a request of this run, and duplicates.
    fn record(&mut self, datagram: &[u8], now_ns: u64, plan: &Plan) {
        let Some(hdr) = FaasHdr::from_bytes(datagram) else {
            return;
        };
        let i = hdr.request_id();
        if i >= plan.total
            || self.seen[i as usize]
            || !matches!(hdr.kind, kind::RESPONSE | kind::ERROR)
        {
            return;
        }
        self.seen[i as usize] = true;
        self.done += 1;
        let f = plan.function_index(i);
        if hdr.kind == kind::ERROR {
            self.errors[f] += 1;
            return;
        }
        self.answered[f] += 1;
        let us = (now_ns.saturating_sub(plan.scheduled_ns(i)) / 1000).max(1);
        let _ = self.all.record(us);
        let _ = self.per_function[f].record(us);
    }
}

/// The schedule: which request leaves when, for which function.
struct Plan {
    rate: u64,
    total: u64,
    mix: Vec<(u32, u32)>,
    total_weight: u64,
}

impl Plan {
    fn scheduled_ns(&self, i: u64) -> u64 {
        scheduled_ns(i, self.rate)
    }

    fn function(&self, i: u64) -> u32 {
        function_of(&self.mix, self.total_weight, i)
    }

    fn function_index(&self, i: u64) -> usize {
        let id = self.function(i);
        self.mix.iter().position(|(f, _)| *f == id).unwrap_or(0)
    }

    /// How many requests are due by `now_ns` (at least the first).
    fn due_by(&self, now_ns: u64) -> u64 {
        ((now_ns as u128 * self.rate as u128 / 1_000_000_000) as u64 + 1).min(self.total)
    }
}

/// Runs the load; `progress` is called about every 100 ms with the number
/// of requests sent so far.
///
/// One thread does everything: send what is due, take what has arrived,
/// wait until the next request is due (polling when it is near, sleeping
/// in `ppoll`, woken early by answers, when it is not). On two cores that
/// leaves the other core to the responder; a separate receiving thread
/// would fight it.
pub fn run(opts: &Options, mut progress: impl FnMut(u64, u64)) -> Result<Report> {
    if opts.rate == 0 {
        bail!("--rate 0: give a rate in requests per second");
    }
    let total = (opts.rate as f64 * opts.duration.as_secs_f64()).round() as u64;
    if total == 0 || total > 100_000_000 {
        bail!("--rate x --duration is {total} requests: give between 1 and 100 million");
    }
    let plan = Plan {
        rate: opts.rate,
        total,
        mix: opts.mix.clone(),
        total_weight: opts.mix.iter().map(|(_, w)| *w as u64).sum(),
    };
    let bind: SocketAddr = if opts.to.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    if opts.flows == 0 || opts.flows > 64 {
        bail!("--flows {}: give 1 to 64", opts.flows);
    }
    let sockets = (0..opts.flows)
        .map(|_| {
            let socket = UdpSocket::bind(bind).context("cannot open a UDP socket")?;
            // Not connected: answers come from the workers, not from `to`,
            // and a connected socket would drop them.
            socket.set_nonblocking(true)?;
            let _ = nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::RcvBuf,
                &(8 << 20),
            );
            let _ = nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::SndBuf,
                &(8 << 20),
            );
            Ok(socket)
        })
        .collect::<Result<Vec<UdpSocket>>>()?;
    precise_sleeps();

    let mut tally = Tally::new(opts.mix.len(), total);
    let mut receiver = BatchReceiver::new(opts.batch, 2048);
    let mut sender = BatchSender::new(opts.batch);
    let template = {
        let mut d = FaasHdr::new(kind::REQUEST, 0, 0).to_bytes().to_vec();
        d.resize(FaasHdr::LEN + opts.payload, 0x5a);
        d
    };
    let mut datagrams: Vec<(Vec<u8>, Option<SocketAddr>)> = (0..opts.batch)
        .map(|_| (template.clone(), Some(opts.to)))
        .collect();
    let start = Instant::now();
    let now_ns = || start.elapsed().as_nanos() as u64;
    let mut next = 0u64;
    let mut turn = 0usize;
    let (mut max_lag, mut late) = (0u64, 0u64);
    let mut last_progress = Instant::now();
    while next < total {
        let now = now_ns();
        let due = plan.due_by(now);
        if due > next {
            let n = ((due - next) as usize).min(opts.batch);
            let lag = now.saturating_sub(plan.scheduled_ns(next));
            max_lag = max_lag.max(lag);
            if lag > 1_000_000 {
                late += n as u64;
            }
            for (k, (d, _)) in datagrams.iter_mut().take(n).enumerate() {
                let i = next + k as u64;
                d[..FaasHdr::LEN]
                    .copy_from_slice(&FaasHdr::new(kind::REQUEST, plan.function(i), i).to_bytes());
            }
            // A short batch (full socket buffer) is retried on the next
            // turn; its lateness shows in the lag. Batches take the flows
            // in turn.
            let socket = &sockets[turn % sockets.len()];
            turn += 1;
            next += sender
                .send(socket, &datagrams[..n])
                .with_context(|| format!("cannot send to {}", opts.to))? as u64;
        }
        for socket in &sockets {
            while receiver.recv(socket)? > 0 {
                let now = now_ns();
                for k in 0..receiver.len() {
                    tally.record(receiver.get(k).0, now, &plan);
                }
            }
        }
        if last_progress.elapsed() > Duration::from_millis(100) {
            progress(next, total);
            last_progress = Instant::now();
        }
        // Waking from a sleep costs more than 10 us in a VM (the timer is
        // reprogrammed through the hypervisor): within 200 us of the next
        // request, keep polling the socket instead, which also timestamps
        // answers as they come.
        let wait = plan
            .scheduled_ns(next.min(total - 1))
            .saturating_sub(now_ns());
        let spin = opts.spin.as_nanos() as u64;
        if next < total && wait > spin {
            wait_readable(&sockets, wait - spin / 2);
        }
    }
    progress(total, total);
    let sending_time = start.elapsed();
    let drain_until = Instant::now() + opts.drain;
    while tally.done < total {
        let left = drain_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        wait_readable(&sockets, left.as_nanos() as u64);
        for socket in &sockets {
            while receiver.recv(socket)? > 0 {
                let now = now_ns();
                for k in 0..receiver.len() {
                    tally.record(receiver.get(k).0, now, &plan);
                }
            }
        }
    }

    let answered: u64 = tally.answered.iter().sum();
    let errors: u64 = tally.errors.iter().sum();
    let lost = total.saturating_sub(answered + errors);
    let functions = opts
        .mix
        .iter()
        .enumerate()
        .map(|(k, (id, _))| FunctionReport {
            function: *id,
            sent: (0..total).filter(|i| plan.function(*i) == *id).count() as u64,
            answered: tally.answered[k],
            errors: tally.errors[k],
            latency_us: Latency::of(&tally.per_function[k]),
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
        latency_us: Latency::of(&tally.all),
        max_send_lag_us: max_lag / 1000,
        late_sends: late,
        functions,
        distribution: std::iter::once(("all".to_string(), &tally.all))
            .chain(
                opts.mix
                    .iter()
                    .zip(&tally.per_function)
                    .map(|((id, _), h)| (format!("function {id}"), h)),
            )
            .filter(|(_, h)| !h.is_empty())
            .map(|(name, h)| Series {
                name,
                points: distribution(h),
            })
            .collect(),
    })
}

/// Latency at quantiles spaced evenly in "nines" (x = 1 is p90, 2 is p99),
/// up to the last quantile the sample count can tell apart.
fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let max_nines = (h.len() as f64).log10().clamp(1.0, 5.0);
    let steps = (max_nines * 20.0) as usize;
    (0..=steps)
        .map(|k| k as f64 / 20.0)
        .map(|x| (x, h.value_at_quantile(1.0 - 10f64.powf(-x)) as f64))
        .collect()
}

/// Asks the kernel to wake this thread within a microsecond of the time it
/// asked for, not the default 50 us later: requests are due every 10 us at
/// 100k req/s.
fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument (nanoseconds)
    // and touches only this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}

/// Sleeps until a socket has something to read or `ns` have passed.
fn wait_readable(sockets: &[UdpSocket], ns: u64) {
    if ns == 0 {
        return;
    }
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `fds` holds valid pollfds, a valid timespec, no signal mask;
    // the result only says whether to look at the sockets, which the caller
    // does anyway.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &timeout,
            std::ptr::null(),
        );
    }
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

    /// Draws the latency distribution (all requests and each function) as
    /// an SVG file.
    pub fn plot(&self, path: &std::path::Path) -> Result<()> {
        let title = format!(
            "latency to {} at {} req/s ({} answered)",
            self.target, self.offered_rate, self.answered
        );
        let chart = plot::Chart {
            title: &title,
            x_label: "percentile",
            y_label: "latency (us, log scale)",
            x_format: &plot::percentile_label,
            y_log: true,
        };
        // With one function, its line would repeat "all".
        let lines = if self.distribution.len() == 2 {
            &self.distribution[..1]
        } else {
            &self.distribution[..]
        };
        plot::draw(path, &chart, lines)
    }

    /// A warning when the generator itself distorted the load.
    pub fn warning(&self) -> Option<String> {
        (self.late_sends > self.sent / 100).then(|| {
            format!(
                "warning: the generator fell behind its schedule ({} of {} requests left more than 1 ms late, at worst {} us): \
                 the offered load was lower than asked; latencies include that delay (a CPU taken away from the generator, \
                 by other processes or the hypervisor, shows here too)",
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
        let n = (0..40_000)
            .filter(|i| function_of(&mix, 4, *i) == 2)
            .count();
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
