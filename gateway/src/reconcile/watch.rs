//! What makes the gateway look at its folders again: a file watch (notify:
//! inotify on Linux) on the models, devices and rules folders, debounced so
//! that an editor's save or a `cp -r` of many files is one change, and
//! SIGHUP, as daemons take it. Each ends in a [`Change::Reread`]; a reread
//! that finds the running set (the API's own writes, say) changes nothing.
//!
//! Where the file system cannot be watched (some network mounts), notify's
//! polling watcher takes over.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Change, Origin, Reconciler};

/// Quiet time after the last file event before the folders are read.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// How often the polling watcher (the fallback) looks.
const POLL: Duration = Duration::from_secs(2);

/// Takes SIGHUP at once (its default would end the process) and watches the
/// folders, on `tasks`, until `shutdown`, applying what they hold after each
/// change.
pub fn start(
    reconciler: Arc<Reconciler>,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) {
    let hangup = hangup();
    tasks.spawn(run(reconciler, hangup, shutdown));
}

async fn run(reconciler: Arc<Reconciler>, mut hangup: Hangup, shutdown: CancellationToken) {
    let (tx, mut events) = mpsc::channel::<()>(1);
    let _watcher = watch(&reconciler, tx);
    // A change between the start's read and the watch's start is not lost.
    reread(&reconciler, "the watch started").await;
    loop {
        let why = tokio::select! {
            () = shutdown.cancelled() => return,
            Some(()) = events.recv() => {
                // Until the folders are quiet for a while.
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        Some(()) = events.recv() => {}
                        () = tokio::time::sleep(DEBOUNCE) => break,
                    }
                }
                "the folders changed"
            }
            Some(()) = next_hangup(&mut hangup) => "SIGHUP",
        };
        reread(&reconciler, why).await;
    }
}

async fn reread(reconciler: &Reconciler, why: &str) {
    match reconciler.apply(Change::Reread, Origin::Files).await {
        Ok(applied) if applied.changed => {
            tracing::info!("{why}: configuration v{} applied", applied.version);
        }
        Ok(_) => tracing::debug!("{why}: nothing changed"),
        // The reconciler logs and records refusals.
        Err(e) => tracing::debug!("{why}: {e}"),
    }
}

/// A watcher that sends on `tx` (without waiting: one pending signal is
/// enough) whenever something in a folder changes; the polling one if the
/// system's does not start. `None` if neither does: SIGHUP still works.
fn watch(reconciler: &Reconciler, tx: mpsc::Sender<()>) -> Option<Box<dyn Watcher + Send>> {
    let folders = reconciler.folders();
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) if event.kind.is_access() => {}
        Ok(_) => {
            let _ = tx.try_send(());
        }
        Err(e) => tracing::warn!("the folder watch: {e}"),
    };
    let mut watcher: Box<dyn Watcher + Send> = match notify::recommended_watcher(handler.clone()) {
        Ok(w) => Box::new(w),
        Err(e) => {
            tracing::warn!("cannot watch the folders ({e}); polling them every {POLL:?}");
            let config = notify::Config::default().with_poll_interval(POLL);
            match notify::PollWatcher::new(handler, config) {
                Ok(w) => Box::new(w),
                Err(e) => {
                    tracing::error!("cannot poll the folders either ({e}); only SIGHUP reloads");
                    return None;
                }
            }
        }
    };
    for dir in &folders {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!("cannot watch {}: {e}; SIGHUP reloads it", dir.display());
        }
    }
    Some(watcher)
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot take SIGHUP ({e}); the folder watch still reloads");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup() -> Hangup {
    None
}

/// The next SIGHUP (never, without one).
async fn next_hangup(hangup: &mut Hangup) -> Option<()> {
    #[cfg(unix)]
    if let Some(signal) = hangup {
        return signal.recv().await;
    }
    let _ = hangup;
    std::future::pending().await
}
