//! Checking, before touching the kernel, that we may load and attach XDP.

use anyhow::{bail, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Loading, attaching and pinning need CAP_BPF (or CAP_SYS_ADMIN on older
/// kernels) and CAP_NET_ADMIN. Say so plainly instead of failing with EPERM
/// from deep inside the loader.
pub fn require_bpf_admin(what: &str) -> Result<()> {
    let caps = effective_capabilities().unwrap_or(0);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if !(has(CAP_BPF) || has(CAP_SYS_ADMIN)) || !has(CAP_NET_ADMIN) {
        bail!(
            "{what} needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN \
             (and CAP_SYS_ADMIN to mount bpffs): run it with sudo"
        );
    }
    Ok(())
}

/// The CapEff mask from /proc/self/status.
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}
