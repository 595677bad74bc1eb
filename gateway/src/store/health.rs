//! Tells people when the store fails and when it recovers: an event in the
//! journal at each change (`store_failing`, `store_recovered`), and a log
//! line. `/api/v1/status` and `/metrics` show the current state.
//!
//! While the store fails (a full disk, say), readings wait in the writer's
//! batch and its bounded queue, so drivers slow down rather than drop
//! anything; the events say so. The `store_failing` event itself is kept
//! once the store takes writes again (the journal retries it).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Log;
use super::writer::WriterStats;
use crate::journal::Journal;

/// How often the writer's state is looked at.
const PERIOD: Duration = Duration::from_millis(250);

/// Watches `stats` until `shutdown`, recording an event at each change.
pub async fn watch(
    stats: Arc<WriterStats>,
    journal: Arc<Journal>,
    data_dir: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    let mut since: Option<(Instant, u64)> = None;
    let mut seen = stats.failures.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let failing = stats.failing.load(Ordering::Relaxed);
        let failures = stats.failures.load(Ordering::Relaxed);
        // A failure that came and went between two looks still counts.
        let failed_since_last_look = failures > seen;
        seen = failures;
        if since.is_none() && (failing || failed_since_last_look) {
            since = Some((Instant::now(), failures));
            let error = last_error(&stats);
            let message = format!(
                "store writes fail ({error}); readings wait in memory and drivers slow down until they succeed; free space in {}",
                data_dir.display()
            );
            tracing::error!("{message}");
            let event = json!({
                "source": "store",
                "severity": "error",
                "kind": "store_failing",
                "error": error,
                "message": message,
            });
            journal.record(Log::Events, &event).await;
        }
        if let (false, Some((started, failures_then))) = (failing, since) {
            since = None;
            let attempts = failures - failures_then + 1;
            let message = format!(
                "store writes succeed again after {:.1?} and {attempts} failed attempt(s); nothing was dropped",
                started.elapsed()
            );
            tracing::info!("{message}");
            let event = json!({
                "source": "store",
                "severity": "info",
                "kind": "store_recovered",
                "failed_for_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "message": message,
            });
            journal.record(Log::Events, &event).await;
        }
    }
}

/// The last store error's message.
pub fn last_error(stats: &WriterStats) -> String {
    stats
        .last_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or_else(|| "unknown error".into())
}
