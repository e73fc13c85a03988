//! `dispatcher trace`'s side of the data plane's sampled decisions
//! (dispatcher_common::trace, dispatcher-ebpf's trace.rs): start sampling,
//! keep the lease, read the TRACE ring buffer, stop.
//!
//! One tracer per data plane at a time: a second is refused while the
//! first's lease holds. The lease (TRACE_CONTROL's deadline, renewed every
//! second, lapsing after `LEASE`) is what switches sampling off in the
//! kernel when a tracer dies without stopping it.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use dispatcher_common::{
    maps::{names, Settings},
    protocol::kind,
    stats::Counter,
    trace::{TraceControl, TraceEvent, NO_POLICY},
};
use serde::Serialize;

use crate::endpoints::socket_addr;

/// How long a trace outlives its last renewal.
pub const LEASE: Duration = Duration::from_secs(3);
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How often the ring buffer is drained while it is empty.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// What to trace.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Describe every this-many-th FaaS packet of each CPU (at least 1).
    pub sample: u32,
    /// Only packets for this function (the function run, or the id named).
    pub function: Option<u32>,
}

/// A running trace; sampling stops when it is dropped.
pub struct Tracer {
    settings: Array<MapData, Settings>,
    control: Array<MapData, TraceControl>,
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    options: Options,
    lost_at_start: u64,
    renewed: Instant,
    /// CLOCK_MONOTONIC and the wall clock at one instant: event times are
    /// monotonic.
    clocks: (u64, SystemTime),
}

/// CLOCK_MONOTONIC in nanoseconds: bpf_ktime_get_ns's clock.
fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn open(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "cannot open {} (a data plane of an earlier version, without tracing? restart it with this one)",
            path.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
}

impl Tracer {
    /// Starts sampling the data plane pinned at `pin_dir`.
    pub fn start(pin_dir: &Path, options: Options) -> Result<Tracer> {
        if options.sample == 0 {
            bail!("--sample: trace one packet in N, N at least 1");
        }
        if crate::data_plane::attached_program(pin_dir)? == crate::data_plane::HW_PROGRAM {
            bail!("this data plane is offloaded to the NIC (--mode hw), whose program cannot trace (the NFP has no ring buffers): run in drv or skb mode to trace");
        }
        let settings: Array<MapData, Settings> = open(pin_dir, names::SETTINGS)?.try_into()?;
        let control: Array<MapData, TraceControl> =
            open(pin_dir, names::TRACE_CONTROL)?.try_into()?;
        let ring: RingBuf<MapData> = open(pin_dir, names::TRACE)?.try_into()?;
        let lost: PerCpuArray<MapData, u64> = open(pin_dir, names::TRACE_LOST)?.try_into()?;
        let now = monotonic_ns();
        let current = settings.get(&0, 0)?;
        let held = control.get(&0, 0)?;
        if current.trace_sample != 0 && held.deadline_ns > now {
            bail!(
                "another `dispatcher trace` is watching this data plane (its lease runs {} ms more): one tracer at a time",
                (held.deadline_ns - now) / 1_000_000
            );
        }
        let mut tracer = Tracer {
            settings,
            control,
            ring,
            lost,
            options,
            lost_at_start: 0,
            renewed: Instant::now(),
            clocks: (now, SystemTime::now()),
        };
        tracer.lost_at_start = tracer.lost_total()?;
        // Drop what an earlier tracer left unread.
        while tracer.ring.next().is_some() {}
        // The filter and the lease first, then the switch the kernel reads.
        tracer.renew()?;
        tracer.set_sample(options.sample)?;
        Ok(tracer)
    }

    fn set_sample(&mut self, sample: u32) -> Result<()> {
        let settings = Settings {
            trace_sample: sample,
            ..self.settings.get(&0, 0)?
        };
        self.settings.set(0, settings, 0)?;
        Ok(())
    }

    fn renew(&mut self) -> Result<()> {
        let control = TraceControl {
            function_id: self.options.function.unwrap_or(0),
            filter_function: self.options.function.is_some() as u8,
            deadline_ns: monotonic_ns() + LEASE.as_nanos() as u64,
            ..Default::default()
        };
        self.control.set(0, control, 0)?;
        self.renewed = Instant::now();
        Ok(())
    }

    /// Records lost since the start (the ring buffer was full).
    pub fn lost(&self) -> Result<u64> {
        Ok(self.lost_total()?.saturating_sub(self.lost_at_start))
    }

    fn lost_total(&self) -> Result<u64> {
        Ok(self.lost.get(&0, 0)?.iter().sum())
    }

    /// The decisions sampled since the last call, waiting up to `timeout`
    /// for the first; renews the lease as it goes.
    pub fn next(&mut self, timeout: Duration) -> Result<Vec<Decision>> {
        if self.renewed.elapsed() >= RENEW_EVERY {
            self.renew()?;
        }
        // The kernel submits without waking a reader (a wakeup per record
        // is costly): drain every few milliseconds.
        let until = Instant::now() + timeout;
        let mut out = self.drain();
        while out.is_empty() && Instant::now() < until {
            std::thread::sleep(POLL_EVERY);
            out = self.drain();
        }
        Ok(out)
    }

    fn drain(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<TraceEvent>() {
                // SAFETY: the kernel writes whole TraceEvents (repr(C), any
                // bit pattern valid); read unaligned from the ring's pages.
                let e: TraceEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                out.push(Decision::of(&e, self.clocks));
            }
        }
        out
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // Off first: nothing is paid once nobody watches.
        let _ = self.set_sample(0);
        let _ = self.control.set(0, TraceControl::default(), 0);
    }
}

/// One decision as `dispatcher trace` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    pub request_id: u64,
    /// REQUEST, STEP or BUSY.
    pub kind: &'static str,
    /// The client (or, for STEP and BUSY, the worker that sent it).
    pub source: SocketAddr,
    pub function: u32,
    /// Workflow packets: the workflow and the step run.
    pub workflow: Option<u32>,
    pub step: Option<u8>,
    pub policy: Option<String>,
    /// The worker it went to, when dispatched.
    pub worker: Option<SocketAddr>,
    /// dispatched_request, resteered, pass_no_worker, ...
    pub outcome: &'static str,
    /// XDP_TX, XDP_REDIRECT, XDP_PASS or XDP_DROP.
    pub action: &'static str,
}

impl Decision {
    fn of(e: &TraceEvent, (mono, wall): (u64, SystemTime)) -> Decision {
        let time = if e.time_ns >= mono {
            wall + Duration::from_nanos(e.time_ns - mono)
        } else {
            wall - Duration::from_nanos(mono - e.time_ns)
        };
        let dispatched = e.worker.addr != [0; 16] || e.worker.port != [0; 2];
        let workflow_packet = e.workflow_id != 0 || e.kind == kind::STEP;
        Decision {
            time_unix_ns: time
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            request_id: e.request_id,
            kind: match e.kind {
                kind::REQUEST => "REQUEST",
                kind::STEP => "STEP",
                kind::BUSY => "BUSY",
                _ => "other",
            },
            source: socket_addr(&e.source),
            function: e.function_id,
            workflow: workflow_packet.then_some(e.workflow_id),
            step: workflow_packet.then_some(e.step),
            policy: (e.policy != NO_POLICY)
                .then(|| crate::config::Policy::of_map(e.policy))
                .flatten()
                .and_then(|p| clap::ValueEnum::to_possible_value(&p))
                .map(|v| v.get_name().to_string()),
            worker: dispatched.then(|| socket_addr(&e.worker)),
            outcome: Counter::ALL
                .get(e.counter as usize)
                .map_or("unknown", |c| c.name()),
            action: match e.action {
                1 => "XDP_DROP",
                2 => "XDP_PASS",
                3 => "XDP_TX",
                4 => "XDP_REDIRECT",
                _ => "other",
            },
        }
    }

    /// The line `dispatcher trace` prints (UTC time of day).
    pub fn line(&self) -> String {
        let ns = self.time_unix_ns;
        let day = (ns / 1_000_000_000) % 86_400;
        let time = format!(
            "{:02}:{:02}:{:02}.{:06}",
            day / 3600,
            day / 60 % 60,
            day % 60,
            ns / 1000 % 1_000_000
        );
        let run = match (self.workflow, self.step) {
            (Some(w), Some(s)) => format!("fn {} (workflow {w} step {s})", self.function),
            _ => format!("fn {}", self.function),
        };
        let to = self
            .worker
            .map_or_else(|| "-".to_string(), |w| w.to_string());
        format!(
            "{time} {:<7} {:<22} {:<28} {:<12} -> {:<22} {} ({})",
            self.kind,
            self.source.to_string(),
            run,
            self.policy.as_deref().unwrap_or("-"),
            to,
            self.outcome,
            self.action
        )
    }
}
