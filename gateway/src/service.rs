//! Running under systemd (`Type=notify`, see packaging/ferrite.service):
//! READY=1 once the API serves, STOPPING=1 on the way out, and WATCHDOG=1
//! pings while the gateway is healthy enough to deserve them.
//!
//! Healthy means: the runtime schedules this task, and the store answers a
//! read within half the watchdog interval. A store wedged behind a hung
//! disk (the writer holds its lock through the fsync) stops the pings, and
//! systemd restarts the service. Without `NOTIFY_SOCKET` all of this does
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::store::{Log, Store};

/// Tells systemd the gateway is up, and starts the watchdog pings if the
/// unit asks for them.
pub fn ready(store: Arc<dyn Store>, shutdown: CancellationToken) {
    if sd_notify::notify(false, &[NotifyState::Ready]).is_err() {
        tracing::debug!("no service manager to notify");
    }
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let half = Duration::from_micros(usec) / 2;
    tracing::info!("systemd watchdog every {} ms", half.as_millis());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(half);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let store = store.clone();
            let probe = crate::store::blocking::spawn(move || {
                store.recent(Log::Events, u64::MAX, 1, &|_| true).is_ok()
            });
            match tokio::time::timeout(half, probe).await {
                Ok(Ok(true)) => {
                    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                }
                _ => tracing::warn!("the store did not answer; withholding the watchdog ping"),
            }
        }
    });
}

/// Tells systemd the gateway is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}
