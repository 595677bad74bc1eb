//! The REST API, on axum, exactly as CONTRACT.md lists it.
//!
//! - `error`: the error JSON and the status each failure maps to.
//! - `devices`: devices, properties, writes and history.
//! - `rules`: rules (state, enable, disable, replace, delete), events and
//!   the audit log.
//!
//! Requests are bounded: bodies to 64 KiB, handling to 30 s (a write waits
//! for the device, whose own timeout is shorter).

mod devices;
pub mod error;
mod rules;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use ferrite_models::Project;
use tower_http::timeout::TimeoutLayer;

use crate::control::Control;
use crate::drivers::DeviceWriter;
use crate::journal::Journal;
use crate::live::Live;
use crate::rules::Rules;
use crate::store::Store;
use crate::store::writer::WriterStats;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The validated project (for models, types and limits).
    pub project: Arc<Project>,
    /// Live device state.
    pub live: Arc<Live>,
    /// The store, for history.
    pub store: Arc<dyn Store>,
    /// A writer per device.
    pub writers: Arc<HashMap<String, Arc<dyn DeviceWriter>>>,
    /// Store writer counters.
    pub stats: Arc<WriterStats>,
    /// Driver counters.
    pub driver_stats: Arc<crate::drivers::DriverStats>,
    /// The checked write path.
    pub control: Arc<Control>,
    /// The rule engine.
    pub rules: Rules,
    /// Events and the audit log.
    pub journal: Arc<Journal>,
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/devices", get(devices::list))
        .route("/api/v1/devices/{id}", get(devices::one))
        .route(
            "/api/v1/devices/{id}/properties/{name}",
            get(devices::property).put(devices::write),
        )
        .route(
            "/api/v1/devices/{id}/properties/{name}/history",
            get(devices::history),
        )
        .route("/api/v1/rules", get(rules::list))
        .route(
            "/api/v1/rules/{name}",
            get(rules::one).put(rules::put).delete(rules::delete),
        )
        .route("/api/v1/rules/{name}/enable", post(rules::enable))
        .route("/api/v1/rules/{name}/disable", post(rules::disable))
        .route("/api/v1/events", get(rules::events))
        .route("/api/v1/sync", get(sync))
        .route("/api/v1/audit", get(rules::audit))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /api/v1/sync`: the uplink's state. Only the outbox exists so far
/// (issue 7): changes are kept for the control plane, nothing sends them.
async fn sync(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    let configured = state
        .project
        .config
        .as_ref()
        .is_some_and(|c| c.value.cloud.is_some());
    let outbox = state.store.outbox();
    axum::Json(serde_json::json!({
        "configured": configured,
        "connected": false,
        "last_acked": null,
        "backlog": outbox.map(|o| o.backlog),
        "backlog_bytes": outbox.map(|o| o.bytes),
        "dropped": outbox.map(|o| o.dropped),
    }))
}

async fn not_found() -> error::ApiError {
    error::ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /api/v1/devices",
    )
}

/// A first cut of the Prometheus endpoint: store writer counters and device
/// status. The full set of series arrives with the observability work.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    use std::fmt::Write;
    let s = &state.stats;
    let mut out = String::new();
    let counters = [
        (
            "ferrite_samples_total",
            "Samples received from drivers",
            s.samples.load(Ordering::Relaxed),
        ),
        (
            "ferrite_changes_stored_total",
            "Changes written to history",
            s.changes.load(Ordering::Relaxed),
        ),
        (
            "ferrite_store_batches_total",
            "Batches made durable",
            s.batches.load(Ordering::Relaxed),
        ),
        (
            "ferrite_store_failures_total",
            "Failed store writes (retried)",
            s.failures.load(Ordering::Relaxed),
        ),
        (
            "ferrite_malformed_payloads_total",
            "MQTT and Sparkplug payloads that did not decode",
            state
                .driver_stats
                .malformed_payloads
                .load(Ordering::Relaxed),
        ),
        (
            "ferrite_rule_evaluations_total",
            "Rule conditions evaluated",
            state.rules.stats().evaluations.load(Ordering::Relaxed),
        ),
        (
            "ferrite_rule_firings_total",
            "Rule firings (then actions run)",
            state.rules.stats().firings.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    if let Some(outbox) = state.store.outbox() {
        let _ = writeln!(
            out,
            "# HELP ferrite_sync_backlog Changes waiting for the control plane\n# TYPE ferrite_sync_backlog gauge\nferrite_sync_backlog {}\n# HELP ferrite_sync_dropped_total Changes dropped over the outbox budget\n# TYPE ferrite_sync_dropped_total counter\nferrite_sync_dropped_total {}",
            outbox.backlog, outbox.dropped
        );
    }
    let failing = u8::from(s.failing.load(Ordering::Relaxed));
    let _ = writeln!(
        out,
        "# HELP ferrite_store_failing 1 while store writes fail (a full disk, say)\n# TYPE ferrite_store_failing gauge\nferrite_store_failing {failing}"
    );
    let _ = writeln!(
        out,
        "# HELP ferrite_device_up 1 if the device answered its last poll\n# TYPE ferrite_device_up gauge"
    );
    for device in state.live.summaries() {
        let up = u8::from(device.status == crate::live::Status::Online);
        let _ = writeln!(
            out,
            "ferrite_device_up{{device=\"{}\",protocol=\"{}\"}} {up}",
            device.id, device.protocol
        );
    }
    ([("content-type", "text/plain; version=0.0.4")], out)
}
