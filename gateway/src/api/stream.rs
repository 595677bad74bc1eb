//! `GET /api/v1/stream`: live values as server-sent events, for the
//! dashboard and for any client that would rather not poll.
//!
//! Each event (`update`) carries the device statuses and the readings whose
//! value or quality changed since the last event this client got; the first
//! carries them all. Events are at most [`PACE`] apart while values move; a comment
//! keeps the connection alive otherwise. The stream ends when the gateway
//! stops.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::devices::{DeviceView, ReadingView};
use crate::live::{Quality, Status};
use ferrite_models::Value;

/// Shortest time between two events to one client.
pub const PACE: Duration = Duration::from_millis(250);

/// One event of the stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamUpdate {
    /// The devices whose status or error changed (all, in the first event).
    pub devices: Vec<DeviceView>,
    /// Readings whose value or quality changed since the previous event.
    pub readings: Vec<ChangedReading>,
}

/// A reading that changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangedReading {
    /// Device name.
    pub device: String,
    /// Property name.
    pub property: String,
    /// The reading.
    #[serde(flatten)]
    pub reading: ReadingView,
}

/// Live values as server-sent events (`event: update`, JSON data).
#[utoipa::path(get, operation_id = "streamValues", path = "/api/v1/stream", tag = "gateway",
    responses((status = 200, description = "An event stream; each `update` event's data is a StreamUpdate",
        body = StreamUpdate, content_type = "text/event-stream")))]
pub async fn values(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let changes = state.live.changes();
    let start = Cursor {
        state,
        changes,
        sent: HashMap::new(),
        statuses: HashMap::new(),
        first: true,
    };
    let stream = futures_util::stream::unfold(start, |mut cursor| async move {
        let event = cursor.next().await?;
        Some((Ok(event), cursor))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// One property as a client last saw it: name, value and quality.
type Sent = (Arc<str>, Option<Value>, Quality);

/// One client's place in the stream: what it has been sent.
struct Cursor {
    state: AppState,
    changes: tokio::sync::watch::Receiver<u64>,
    /// Per device, per property (in model order, by name): the value and
    /// quality last sent.
    sent: HashMap<String, Vec<Sent>>,
    /// Per device: the status and error last sent.
    statuses: HashMap<String, (Status, Option<String>)>,
    first: bool,
}

impl Cursor {
    /// The next event, or `None` once the gateway stops.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if !self.first {
                tokio::select! {
                    () = self.state.shutdown.cancelled() => return None,
                    changed = self.changes.changed() => changed.ok()?,
                }
                // Let a burst of updates gather into one event.
                tokio::select! {
                    () = self.state.shutdown.cancelled() => return None,
                    () = tokio::time::sleep(PACE) => {}
                }
            }
            self.changes.mark_unchanged();
            let (update, moved) = self.collect();
            let first = std::mem::replace(&mut self.first, false);
            if first || moved {
                let data = serde_json::to_string(&update).ok()?;
                return Some(Event::default().event("update").data(data));
            }
        }
    }

    /// The statuses and readings whose value or quality moved since this
    /// client's last event (all of them the first time), and whether
    /// anything did. A reading polled again with the same value is not sent:
    /// its timestamp alone does not make an event.
    fn collect(&mut self) -> (StreamUpdate, bool) {
        let mut devices = Vec::new();
        let mut readings = Vec::new();
        let project = self.state.running.project();
        let (sent, statuses) = (&mut self.sent, &mut self.statuses);
        let mut present = 0;
        self.state.live.for_each(|name, state| {
            present += 1;
            let status = (state.status, state.error.clone());
            if statuses.get(name) != Some(&status) {
                devices.push(DeviceView::from(&state.summary(name)));
                statuses.insert(name.to_string(), status);
            }
            if !sent.contains_key(name) {
                sent.insert(name.to_string(), Vec::new());
            }
            let Some(known) = sent.get_mut(name) else {
                return;
            };
            // A reconfigured model: start this device afresh.
            if known.len() > state.readings.len() {
                known.clear();
            }
            for (p, (property, reading)) in state.readings.iter().enumerate() {
                let now = (property.clone(), reading.value(), reading.quality());
                match known.get_mut(p) {
                    Some(before) if *before == now => continue,
                    Some(before) => *before = now,
                    None => known.push(now),
                }
                readings.push(ChangedReading {
                    device: name.to_string(),
                    property: property.to_string(),
                    reading: ReadingView::new(reading, project.property(name, property)),
                });
            }
        });
        // Devices removed since (rare): forget them.
        if statuses.len() > present {
            let mut shown = std::collections::HashSet::new();
            self.state.live.for_each(|name, _| {
                shown.insert(name.to_string());
            });
            sent.retain(|name, _| shown.contains(name));
            statuses.retain(|name, _| shown.contains(name));
        }
        let moved = !devices.is_empty() || !readings.is_empty();
        (StreamUpdate { devices, readings }, moved)
    }
}
