//! The REST API, on axum, exactly as CONTRACT.md lists it.
//!
//! - `error`: the error JSON and the status each failure maps to.
//! - `auth`: bearer tokens and roles (401/403) from `[[api.tokens]]`.
//! - `serve`: HTTP or HTTPS, the connection limit and header timeouts.
//! - `devices`: devices, properties, writes and history.
//! - `rules`: rules (state, enable, disable, replace, delete), events and
//!   the audit log.
//!
//! Requests are bounded: bodies to 64 KiB, handling to `request_timeout`
//! (30 s; a write waits for the device, whose own timeout is shorter).
//! `/healthz` alone needs no token.

pub mod auth;
mod devices;
pub mod error;
mod rules;
pub mod serve;

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
    /// The uplink's state, with `[cloud]`.
    pub uplink: Option<Arc<ferrite_sync::uplink::UplinkStatus>>,
    /// When the gateway started.
    pub started: std::time::Instant,
}

/// The router: every route but `/healthz` behind `tokens`, each request
/// answered within `request_timeout`.
pub fn router(state: AppState, tokens: Arc<auth::Tokens>, request_timeout: Duration) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/devices", get(devices::list))
        .route("/api/v1/devices/{id}", get(devices::one))
        .route(auth::WRITE_PATH, get(devices::property).put(devices::write))
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
        .route("/api/v1/status", get(status))
        .route("/api/v1/audit", get(rules::audit))
        .route_layer(axum::middleware::from_fn_with_state(tokens, auth::require))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /api/v1/status`: the gateway as a whole: version, uptime, whether
/// the store takes writes, and how many devices answer.
async fn status(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    let stats = &state.stats;
    let failing = stats.failing.load(Ordering::Relaxed);
    let devices = state.live.summaries();
    let online = devices
        .iter()
        .filter(|d| d.status == crate::live::Status::Online)
        .count();
    axum::Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "gateway": state.project.config.as_ref().map(|c| &c.value.gateway.id),
        "uptime_s": state.started.elapsed().as_secs(),
        "store": {
            "failing": failing,
            "failed_writes": stats.failures.load(Ordering::Relaxed),
            "last_error": failing.then(|| crate::store::health::last_error(stats)),
        },
        "devices": {"total": devices.len(), "online": online},
    }))
}

/// `GET /api/v1/sync`: the uplink's state.
async fn sync(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    let cloud = state
        .project
        .config
        .as_ref()
        .and_then(|c| c.value.cloud.as_ref());
    let outbox = state.store.outbox();
    let uplink = state.uplink.as_ref().map(|u| u.snapshot());
    axum::Json(serde_json::json!({
        "configured": cloud.is_some(),
        "broker": cloud.map(|c| &c.broker),
        "connected": uplink.as_ref().is_some_and(|u| u.connected),
        "last_acked": uplink.as_ref().map(|u| u.last_acked),
        "backlog": outbox.map(|o| o.backlog),
        "backlog_bytes": outbox.map(|o| o.bytes),
        "dropped": outbox.map(|o| o.dropped),
        "batches_sent": uplink.as_ref().map(|u| u.batches),
        "bytes_sent": uplink.as_ref().map(|u| u.bytes),
        "points_sent": uplink.as_ref().map(|u| u.points),
        "sessions": uplink.as_ref().map(|u| u.sessions),
        "desired_version": uplink.as_ref().map(|u| u.desired_version),
        "last_error": uplink.as_ref().and_then(|u| u.last_error.clone()),
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
    if let Some(uplink) = state.uplink.as_ref().map(|u| u.snapshot()) {
        let _ = writeln!(
            out,
            "# HELP ferrite_sync_connected 1 while the uplink is connected to the control plane's broker
# TYPE ferrite_sync_connected gauge
ferrite_sync_connected {}
# HELP ferrite_sync_last_acked The highest change sequence the control plane acknowledged
# TYPE ferrite_sync_last_acked gauge
ferrite_sync_last_acked {}
# HELP ferrite_sync_bytes_sent_total Compressed batch bytes sent (resends included)
# TYPE ferrite_sync_bytes_sent_total counter
ferrite_sync_bytes_sent_total {}
# HELP ferrite_sync_points_sent_total Changes sent (resends included)
# TYPE ferrite_sync_points_sent_total counter
ferrite_sync_points_sent_total {}",
            u8::from(uplink.connected),
            uplink.last_acked,
            uplink.bytes,
            uplink.points
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
