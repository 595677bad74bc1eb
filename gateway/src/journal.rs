//! The journals: the rules' events and the audit log of writes, kept in the
//! store within a count and an age.
//!
//! Appends go through one task, which groups what arrives together into one
//! durable commit, and retries a failed commit (a full disk, say) with
//! backoff rather than dropping it; callers wait when the queue is full.
//! [`Journal::record_durably`] also waits for the commit: the audit entry of
//! a write is on disk before the write is answered.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::store::{Entry, Log, Store, StoreError};
use crate::time::{Micros, now};

/// Entries queued for the journal task, at most.
const QUEUE: usize = 4096;

/// One entry on its way to the journal task, with whom to tell once it is
/// durable.
struct Pending {
    log: Log,
    ts: Micros,
    body: Vec<u8>,
    kept: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How many entries and for how long each log keeps them.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Entries per log, at most.
    pub max_entries: usize,
    /// Entries older than this go.
    pub max_age: Duration,
}

/// The journals' front: append and query.
pub struct Journal {
    tx: mpsc::Sender<Pending>,
    store: Arc<dyn Store>,
}

impl Journal {
    /// Starts the journal task on `tasks`; it drains its queue and stops when
    /// `shutdown` fires.
    pub fn start(
        store: Arc<dyn Store>,
        retention: Retention,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Journal> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tasks.spawn(run(store.clone(), rx, retention, shutdown));
        Arc::new(Journal { tx, store })
    }

    /// Queues `body` for `log`, stamped now. Waits while the queue is full.
    pub async fn record(&self, log: Log, body: &impl Serialize) {
        self.queue(log, body, None).await;
    }

    /// Logs a warning of the gateway's own and records it as an event
    /// `{"source", "severity": "warning", "kind", "message", ...fields}`
    /// (`fields` is an object of extra keys, such as `dropped`).
    pub async fn warn(&self, source: &str, kind: &str, message: &str, fields: serde_json::Value) {
        tracing::warn!("{message}");
        let mut event = serde_json::json!({
            "source": source,
            "severity": "warning",
            "kind": kind,
            "message": message,
        });
        if let (Some(event), serde_json::Value::Object(fields)) = (event.as_object_mut(), fields) {
            event.extend(fields);
        }
        self.record(Log::Events, &event).await;
    }

    /// Like [`Journal::record`], and returns once the entry is durable, or
    /// once the gateway stops without having kept it (then `false`).
    pub async fn record_durably(&self, log: Log, body: &impl Serialize) -> bool {
        let (kept, is_kept) = tokio::sync::oneshot::channel();
        self.queue(log, body, Some(kept)).await && is_kept.await.is_ok()
    }

    async fn queue(
        &self,
        log: Log,
        body: &impl Serialize,
        kept: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> bool {
        let body = match serde_json::to_vec(body) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!("cannot encode a {} entry: {e}", log.tree());
                return false;
            }
        };
        let pending = Pending {
            log,
            ts: now(),
            body,
            kept,
        };
        if self.tx.send(pending).await.is_err() {
            tracing::warn!(
                "the journal has stopped; a {} entry was not kept",
                log.tree()
            );
            return false;
        }
        true
    }

    /// Entries of `log` before `before`, newest first, as JSON objects with
    /// `seq` and `ts` added, that `keep` accepts, at most `limit`.
    pub async fn recent(
        &self,
        log: Log,
        before: u64,
        limit: usize,
        keep: impl Fn(&serde_json::Value) -> bool + Send + 'static,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let store = self.store.clone();
        crate::store::blocking::spawn(move || {
            let entries = store.recent(log, before, limit, &|e: &Entry| keep(&to_json(e)))?;
            Ok(entries.iter().map(to_json).collect())
        })
        .await
        .map_err(|e| StoreError::Io(format!("journal query failed: {e}")))?
    }
}

/// An entry as the API shows it: its body with `seq` and `ts` (RFC 3339).
fn to_json(entry: &Entry) -> serde_json::Value {
    let mut body: serde_json::Value =
        serde_json::from_slice(&entry.body).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(map) = body.as_object_mut() {
        map.insert("seq".into(), entry.seq.into());
        map.insert("ts".into(), crate::time::rfc3339(entry.ts).into());
    }
    body
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Pending>,
    retention: Retention,
    shutdown: CancellationToken,
) {
    let mut trim = tokio::time::interval(Duration::from_secs(60));
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(entry) => batch.push(entry),
                None => break,
            },
            _ = trim.tick() => {
                trim_logs(&store, retention).await;
                continue;
            }
            () = shutdown.cancelled() => {
                while let Ok(entry) = rx.try_recv() {
                    batch.push(entry);
                }
                commit(&store, &mut batch, &shutdown).await;
                break;
            }
        }
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        commit(&store, &mut batch, &shutdown).await;
    }
}

/// Commits `batch`, retrying until it is durable (or the gateway stops),
/// then tells whoever waits that their entries are kept.
async fn commit(store: &Arc<dyn Store>, batch: &mut Vec<Pending>, shutdown: &CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut all_kept = true;
    for log in [Log::Events, Log::Audit] {
        let entries: Vec<(Micros, Vec<u8>)> = batch
            .iter()
            .filter(|p| p.log == log)
            .map(|p| (p.ts, p.body.clone()))
            .collect();
        if entries.is_empty() {
            continue;
        }
        let entries = Arc::new(entries);
        loop {
            let (store, entries2) = (store.clone(), entries.clone());
            let result = crate::store::blocking::spawn(move || store.append(log, &entries2))
                .await
                .map_err(|e| StoreError::Io(e.to_string()))
                .and_then(|r| r);
            match result {
                Ok(_) => break,
                Err(e) if shutdown.is_cancelled() => {
                    tracing::error!(
                        "stopping with {} {} entries not kept: {e}",
                        entries.len(),
                        log.tree()
                    );
                    all_kept = false;
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::error!(
                        "cannot keep {} entries, will retry in {delay:.1?}: {e}",
                        log.tree()
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }
    for pending in batch.drain(..) {
        if let (Some(kept), true) = (pending.kept, all_kept) {
            let _ = kept.send(());
        }
    }
}

async fn trim_logs(store: &Arc<dyn Store>, retention: Retention) {
    let before = now() - i64::try_from(retention.max_age.as_micros()).unwrap_or(i64::MAX);
    for log in [Log::Events, Log::Audit] {
        let store = store.clone();
        let max = retention.max_entries;
        match crate::store::blocking::spawn(move || store.trim_log(log, before, max)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("retention dropped {n} {} entries", log.tree()),
            Ok(Err(e)) => tracing::error!("{} retention failed: {e}", log.tree()),
            Err(e) => tracing::error!("{} retention task failed: {e}", log.tree()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[tokio::test(start_paused = true)]
    async fn entries_are_kept_within_the_count_and_paged_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store"));
        let tasks = tokio_util::task::TaskTracker::new();
        let shutdown = CancellationToken::new();
        let retention = Retention {
            max_entries: 3,
            max_age: Duration::from_secs(3600),
        };
        let journal = Journal::start(store, retention, &tasks, shutdown.clone());
        for n in 0..5 {
            journal
                .record(Log::Events, &serde_json::json!({"n": n}))
                .await;
        }
        let all = |journal: Arc<Journal>| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            journal
                .recent(Log::Events, u64::MAX, 100, |_| true)
                .await
                .expect("recent")
        };
        // Retention runs every minute. (On paused time the clock also moves
        // while the store works on a blocking thread, so only the state
        // after a trim is certain.)
        tokio::time::sleep(Duration::from_secs(61)).await;
        let after = all(journal.clone()).await;
        let ns: Vec<&serde_json::Value> = after.iter().map(|e| &e["n"]).collect();
        assert_eq!(ns, [4, 3, 2], "the newest 3, newest first");
        let newest = after[0]["seq"].as_u64().expect("seq");
        let page = journal
            .recent(Log::Events, newest, 5, |e| e["n"] != 3)
            .await
            .expect("page");
        let ns: Vec<&serde_json::Value> = page.iter().map(|e| &e["n"]).collect();
        assert_eq!(ns, [2], "before the newest, without n = 3");
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
