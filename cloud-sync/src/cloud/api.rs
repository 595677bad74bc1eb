//! The control plane's REST API (CONTRACT.md, "The control plane").
//!
//! - `GET /api/v1/gateways`
//! - `GET /api/v1/gateways/{gw}/devices` (an addition: the devices with a twin)
//! - `GET /api/v1/gateways/{gw}/devices/{dev}`: the twin
//! - `PUT /api/v1/gateways/{gw}/devices/{dev}/desired` with `{PROP: V, ...}`
//! - `GET /api/v1/gateways/{gw}/devices/{dev}/properties/{p}/history?after=SEQ&limit=N`
//! - `GET /api/v1/stats`
//! - `GET /healthz`
//!
//! Errors are `{"error":{"code","message"}}`, as on the gateway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use ferrite_models::Value;
use serde::Deserialize;
use serde_json::{Value as Json_, json};

use super::plane::{Shared, blocking};
use super::store::Stored;
use crate::delta::from_wire;

/// Largest PUT body.
const MAX_BODY: usize = 64 * 1024;

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<super::store::CloudStoreError> for ApiError {
    fn from(e: super::store::CloudStoreError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_failed",
            e.to_string(),
        )
    }
}

type ApiResult = Result<Json<Json_>, ApiError>;

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/gateways", get(gateways))
        .route("/api/v1/gateways/{gw}/devices", get(devices))
        .route("/api/v1/gateways/{gw}/devices/{dev}", get(twin))
        .route("/api/v1/gateways/{gw}/devices/{dev}/desired", put(desired))
        .route(
            "/api/v1/gateways/{gw}/devices/{dev}/properties/{p}/history",
            get(history),
        )
        .route("/api/v1/stats", get(stats))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

fn rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    rfc3339_ms(ms)
}

fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

async fn gateways(State(shared): State<Arc<Shared>>) -> ApiResult {
    let store = shared.store.clone();
    let known = blocking(move || store.gateways()).await?;
    let list: Vec<Json_> = known
        .into_iter()
        .map(|(id, (last_seq, lost))| {
            let presence = shared.presence(&id);
            json!({
                "id": id,
                "connected": presence.connected,
                "last_seen": presence.last_seen.map(rfc3339),
                "last_seq": last_seq,
                "backlog": presence.outbox_last.saturating_sub(last_seq),
                "lost_at_edge": lost,
            })
        })
        .collect();
    Ok(Json(Json_::Array(list)))
}

async fn known(shared: &Arc<Shared>, gateway: &str) -> Result<(), ApiError> {
    let store = shared.store.clone();
    let gw = gateway.to_string();
    if blocking(move || store.knows(&gw)).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_gateway",
            format!("no gateway `{gateway}` has connected yet"),
        ))
    }
}

async fn devices(State(shared): State<Arc<Shared>>, Path(gw): Path<String>) -> ApiResult {
    known(&shared, &gw).await?;
    let store = shared.store.clone();
    let devices = blocking(move || store.devices(&gw)).await?;
    Ok(Json(json!(devices)))
}

fn stored_json(s: &Stored) -> Json_ {
    json!({"value": s.value, "ts": rfc3339_ms(s.ts_ms), "seq": s.seq})
}

async fn twin(
    State(shared): State<Arc<Shared>>,
    Path((gw, dev)): Path<(String, String)>,
) -> ApiResult {
    known(&shared, &gw).await?;
    let store = shared.store.clone();
    let (g, d) = (gw.clone(), dev.clone());
    let (twin, applied, handed_out) = blocking(move || {
        Ok((
            store.twin(&g, &d)?,
            store.applied_version(&g)?,
            store.desired_version(&g)?,
        ))
    })
    .await?;
    let reported: BTreeMap<&String, &Value> =
        twin.reported.iter().map(|(k, s)| (k, &s.value)).collect();
    let desired: BTreeMap<&String, &Value> =
        twin.desired.iter().map(|(k, d)| (k, &d.value)).collect();
    let reported_meta: BTreeMap<&String, Json_> = twin
        .reported
        .iter()
        .map(|(k, s)| (k, json!({"ts": rfc3339_ms(s.ts_ms), "seq": s.seq})))
        .collect();
    let desired_version = twin.desired.values().map(|d| d.version).max();
    let last_report = twin.last_report.as_ref().map(|r| {
        let applied: BTreeMap<&String, Option<Value>> =
            r.applied.iter().map(|(k, v)| (k, from_wire(v))).collect();
        json!({"version": r.version, "applied": applied, "errors": r.errors})
    });
    Ok(Json(json!({
        "gateway": gw,
        "device": dev,
        "reported": reported,
        "desired": desired,
        "metadata": {
            "reported": reported_meta,
            "desired_version": desired_version,
            "gateway_applied_version": applied,
            "gateway_latest_version": handed_out,
            "pending": desired_version.is_some_and(|v| v > applied),
            "last_report": last_report,
        }
    })))
}

async fn desired(
    State(shared): State<Arc<Shared>>,
    Path((gw, dev)): Path<(String, String)>,
    body: Result<Json<Json_>, JsonRejection>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()))?;
    let Json_::Object(map) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "the body must be a JSON object: {\"PROPERTY\": VALUE, ...}",
        ));
    };
    if map.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "no properties given",
        ));
    }
    let mut properties = BTreeMap::new();
    for (name, value) in map {
        if ferrite_models::units::check_name(&name).is_err() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("`{name}` is not a property name"),
            ));
        }
        // A model value is a boolean, a number or a string, as the gateway's
        // own API takes it (Value's untagged form: integers stay integers).
        let value = match serde_json::from_value::<Value>(value.clone()) {
            Ok(value) => value,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("`{name}`: {value} is not a boolean, number or string"),
                ));
            }
        };
        properties.insert(name, value);
    }
    known(&shared, &gw).await?;
    let patch = shared.send_desired(&gw, &dev, properties).await?;
    let connected = shared.presence(&gw).connected;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "version": patch.version,
            "gateway_connected": connected,
            "message": if connected {
                "sent; the gateway checks it against the model, writes it and reports back"
            } else {
                "stored; the gateway applies it when it reconnects"
            },
        })),
    ))
}

#[derive(Deserialize)]
struct HistoryQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// At most this many changes per page.
const MAX_PAGE: usize = 100_000;

async fn history(
    State(shared): State<Arc<Shared>>,
    Path((gw, dev, prop)): Path<(String, String, String)>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    known(&shared, &gw).await?;
    let limit = query.limit.unwrap_or(10_000).min(MAX_PAGE);
    let after = query.after.unwrap_or(0);
    let store = shared.store.clone();
    let rows = blocking(move || store.history(&gw, &dev, &prop, after, limit)).await?;
    Ok(Json(Json_::Array(rows.iter().map(stored_json).collect())))
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<Json_> {
    let s = &shared.stats;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (wire, points, naive) = (get(&s.wire_bytes), get(&s.points), get(&s.naive_json_bytes));
    let per_point = (points > 0).then(|| wire as f64 / points as f64);
    Json(json!({
        "since": "control plane start",
        "bytes_on_wire": wire,
        "payload_bytes": get(&s.payload_bytes),
        "protobuf_bytes": get(&s.protobuf_bytes),
        "batches": get(&s.batches),
        "batches_applied": get(&s.applied),
        "duplicates": get(&s.duplicates),
        "refused": get(&s.refused),
        "points": points,
        "bytes_per_point": per_point,
        "naive_json_bytes": naive,
        "saved_vs_naive_json_percent": (naive > 0).then(|| 100.0 * (1.0 - wire as f64 / naive as f64)),
        "lost_at_edge": get(&s.lost_at_edge),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339_ms(1_795_824_000_123),
            "2026-11-28T00:00:00.123Z"
        );
        assert_eq!(
            super::rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
