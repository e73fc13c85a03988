//! Running the data plane with BPF_PROG_TEST_RUN.

use aya::programs::{TestRun, TestRunOptions, Xdp};
use dispatcher::{config::Config, control, data_plane::Loaded};
use dispatcher_common::{
    maps::{egress, Geometry},
    stats::Counter,
};

use crate::packets::IFACE_MAC;

/// The data plane loaded (not attached), its source MAC set to IFACE_MAC
/// and `config` (TOML) applied.
pub fn data_plane(config: &str) -> Loaded {
    data_plane_with(config, Geometry::HOST)
}

/// `data_plane`, with maps sized by `geometry` (a NIC's, say).
///
/// Also keeps the calling thread on the CPU it runs on (see
/// `stay_on_this_cpu`), so a test's round-robin turns are one CPU's.
pub fn data_plane_with(config: &str, geometry: Geometry) -> Loaded {
    stay_on_this_cpu();
    let mut dp = Loaded::with_geometry(geometry).expect("load the data plane (are you root?)");
    dp.maps
        .set_settings(IFACE_MAC, IFACE_MAC, egress::TX)
        .unwrap();
    control::apply(
        &mut dp.maps,
        &Config::parse(config).expect("a valid test config"),
    )
    .unwrap();
    dp
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Runs `frame` through `program` once: (verdict, output frame).
pub fn run(program: &Xdp, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    };
    let result = program.test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// Asserts that exactly `counter` went up by one between two snapshots.
pub fn assert_counted(
    before: &[(Counter, u64)],
    after: &[(Counter, u64)],
    counter: Counter,
    case: &str,
) {
    for ((c, b), (_, a)) in before.iter().zip(after) {
        let want = if *c == counter { b + 1 } else { *b };
        assert_eq!(
            *a,
            want,
            "{case}: counter {} went from {b} to {a}",
            c.name()
        );
    }
}

/// Keeps this thread on the CPU it runs on. BPF_PROG_TEST_RUN runs the
/// program on the calling thread's CPU, and the host variant takes
/// round-robin turns per CPU (RR_TURNS): a test that expects one exact
/// walk round the ring, or compares with the model's turn, must not
/// migrate between runs.
pub fn stay_on_this_cpu() {
    // SAFETY: plain syscalls on this thread's own affinity.
    unsafe {
        let cpu = libc::sched_getcpu();
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Sets a loaded data plane's trace sampling as `dispatcher trace --sample
/// N` would (0: off), with a lease that outlasts the run; with `countdown`,
/// every CPU's TRACE_COUNTDOWN too (packets to go before the next traced
/// one).
pub fn set_trace(dp: &mut Loaded, sample: u32, countdown: Option<u32>) {
    let settings = dispatcher_common::maps::Settings {
        trace_sample: sample,
        ..dp.maps.settings.get(&0, 0).unwrap()
    };
    dp.maps.settings.set(0, settings, 0).unwrap();
    let control = dispatcher_common::trace::TraceControl {
        deadline_ns: u64::MAX,
        ..Default::default()
    };
    dp.maps.trace_control.set(0, control, 0).unwrap();
    if let Some(left) = countdown {
        let cpus = aya::util::nr_cpus().unwrap();
        let left = aya::maps::PerCpuValues::try_from(vec![left; cpus]).unwrap();
        dp.maps.trace_countdown.set(0, left, 0).unwrap();
    }
}
