//! Seeing the gateway: `/metrics`, `/healthz`, `/readyz`, and the layer that
//! counts API requests.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::live::Status;
use crate::metrics::{DeviceLabels, RuleLabels, ScrapeSnapshot};

/// Liveness: answers `ok` whenever the API serves. No token needed.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "gateway", security(()),
    responses((status = 200, description = "Serving", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Whether the gateway is ready.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Drivers started and the store writable.
    pub ready: bool,
    /// Always `started` once the API serves (drivers start first).
    pub drivers: &'static str,
    /// `writable`, or `failing: WHY`.
    pub store: String,
}

/// Readiness: 200 once the drivers have started (they start before the API
/// serves) and the store takes writes; 503 with the reason while it does
/// not (a full disk, say). No token needed.
#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "gateway", security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready, and why", body = Readiness),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let failing = state.stats.failing.load(Ordering::Relaxed);
    let store = if failing {
        format!(
            "failing: {}",
            crate::store::health::last_error(&state.stats)
        )
    } else {
        "writable".to_string()
    };
    let body = Readiness {
        ready: !failing,
        drivers: "started",
        store,
    };
    let status = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

/// Counts every request to a known route by its pattern (never the raw
/// path, whose device names would make series without bound), method and
/// status, and times it. Runs outside auth, so 401s and 403s are counted.
pub async fn count_requests(
    State(state): State<AppState>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    // Server-sent event streams are counted when they open, not timed.
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    state.metrics.request(
        route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The Prometheus series, as OpenMetrics text (docs/observability.md lists
/// them).
#[utoipa::path(get, operation_id = "getMetrics", path = "/metrics", tag = "gateway",
    responses((status = 200, description = "OpenMetrics text", body = String,
        content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let snapshot = snapshot(&state).await;
    match state.metrics.encode(snapshot.registry()) {
        Ok(text) => ([("content-type", crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => super::error::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics",
            "the metrics did not encode",
        )
        .into_response(),
    }
}

/// The series read at scrape time from what the gateway already keeps.
async fn snapshot(state: &AppState) -> ScrapeSnapshot {
    let mut s = ScrapeSnapshot::default();
    let w = &state.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    s.counter(
        "ferrite_samples",
        "Samples received from drivers (good, stale and bad)",
        load(&w.samples),
    );
    s.gauge_f64(
        "ferrite_values_per_second",
        "Samples received per second, over the last 5 s",
        state.metrics.values_per_second(),
    );
    s.counter(
        "ferrite_changes_stored",
        "Changes written to history",
        load(&w.changes),
    );
    s.counter(
        "ferrite_store_batches",
        "Batches made durable",
        load(&w.batches),
    );
    s.counter(
        "ferrite_store_failures",
        "Failed store writes (retried)",
        load(&w.failures),
    );
    s.gauge(
        "ferrite_store_failing",
        "1 while store writes fail (a full disk, say)",
        i64::from(w.failing.load(Ordering::Relaxed)),
    );
    let store = state.store.clone();
    let sizes =
        crate::store::blocking::spawn(move || (store.size_on_disk(), store.history_bytes())).await;
    let (on_disk, held) = sizes.unwrap_or((None, None));
    for (name, help, bytes) in [
        (
            "ferrite_store_bytes",
            "Bytes the store takes on disk",
            on_disk,
        ),
        (
            "ferrite_store_history_bytes",
            "Bytes of history held (blocks and log), which history_mib limits",
            held,
        ),
    ] {
        if let Some(bytes) = bytes {
            s.gauge(name, help, i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }
    s.counter(
        "ferrite_malformed_payloads",
        "MQTT and Sparkplug payloads that did not decode",
        load(&state.driver_stats.malformed_payloads),
    );
    s.counter(
        "ferrite_opcua_changes_overflowed",
        "OPC UA data changes past a session's queue; each overflow re-reads the device's current values",
        load(&state.driver_stats.overflowed_changes),
    );
    let driver_stats = &state.driver_stats;
    s.counter(
        "ferrite_mqtt_dropped",
        "MQTT messages the embedded broker dropped before the gateway read them",
        load(&driver_stats.mqtt_dropped),
    );
    s.counters(
        "ferrite_mqtt_device_dropped",
        "MQTT messages of a device that the embedded broker dropped before the gateway read them",
        driver_stats
            .mqtt_dropped_by_device()
            .into_iter()
            .map(|(device, lost)| {
                let labels = DeviceLabels {
                    device,
                    protocol: "mqtt".to_string(),
                };
                (labels, lost)
            }),
    );
    s.counter(
        "ferrite_mqtt_held_milliseconds",
        "Time the embedded broker held MQTT publishers back while the store's queue was nearly full",
        load(&driver_stats.mqtt_held_micros) / 1000,
    );
    s.counter(
        "ferrite_mqtt_hold_timeouts",
        "Holds of MQTT publishers that ran out (the store took nothing for a second) and let a batch through",
        load(&driver_stats.mqtt_hold_timeouts),
    );
    let rules = state.rules.stats();
    s.counter(
        "ferrite_rule_evaluations",
        "Rule conditions evaluated",
        load(&rules.evaluations),
    );
    s.counter(
        "ferrite_rule_firings",
        "Rule firings (then actions run), all rules",
        load(&rules.firings),
    );
    s.counter(
        "ferrite_rule_jobs_dropped",
        "Rule jobs dropped because a rule's worker fell a full queue behind (the oldest firing goes)",
        load(&rules.jobs_dropped),
    );
    s.counters(
        "ferrite_rule_fired",
        "Firings per rule (kept across restarts)",
        state.rules.list().iter().map(|r| {
            (
                RuleLabels {
                    rule: r.name.clone(),
                },
                r.firings,
            )
        }),
    );
    if let Some(outbox) = state.store.outbox() {
        s.gauge(
            "ferrite_sync_backlog",
            "Changes waiting for the control plane",
            i64::try_from(outbox.backlog).unwrap_or(i64::MAX),
        );
        s.gauge(
            "ferrite_sync_backlog_bytes",
            "Bytes of changes waiting for the control plane",
            i64::try_from(outbox.bytes).unwrap_or(i64::MAX),
        );
        s.counter(
            "ferrite_sync_dropped",
            "Changes dropped over the outbox budget",
            outbox.dropped,
        );
    }
    if let Some(uplink) = state.uplink.as_ref().map(|u| u.snapshot()) {
        s.gauge(
            "ferrite_sync_connected",
            "1 while the uplink is connected to the control plane's broker",
            i64::from(uplink.connected),
        );
        s.gauge(
            "ferrite_sync_last_acked",
            "The highest change sequence the control plane acknowledged",
            i64::try_from(uplink.last_acked).unwrap_or(i64::MAX),
        );
        s.counter(
            "ferrite_sync_bytes_sent",
            "Compressed batch bytes sent (resends included)",
            uplink.bytes,
        );
        s.counter(
            "ferrite_sync_points_sent",
            "Changes sent (resends included)",
            uplink.points,
        );
    }
    s.gauges(
        "ferrite_device_up",
        "1 if the device answered its last poll",
        state.live.summaries().into_iter().map(|d| {
            let up = i64::from(d.status == Status::Online);
            let labels = DeviceLabels {
                device: d.id,
                protocol: d.protocol.to_string(),
            };
            (labels, up)
        }),
    );
    s
}
