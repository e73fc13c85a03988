//! What the daemon and the worker tell their service manager (systemd's
//! `Type=notify`, packaging/systemd/): the daemon is ready only once the
//! data plane is attached and configured, reloading while a SIGHUP is
//! applied, stopping as it detaches; the worker is ready once it listens
//! with its functions started, stopping as it drains. Outside systemd (no
//! NOTIFY_SOCKET) each call does nothing.

use sd_notify::NotifyState;
use tracing::warn;

fn notify(states: &[NotifyState]) {
    // The environment variable stays set: the daemon notifies more than
    // once (every reload).
    if let Err(e) = sd_notify::notify(false, states) {
        warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
    }
}

/// Serving (the daemon: the data plane dispatches): `systemctl start`
/// returns, units ordered after this one start.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A SIGHUP's config is being applied; `ready` follows when it is (applied
/// or refused: the running configuration serves either way).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    // systemd 253 and later want the reload's start time beside it.
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}

/// Shutting down (the worker: draining its requests in flight).
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}
