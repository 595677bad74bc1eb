//! The control plane's REST API (docs/contract.md, "The control plane").
//!
//! - `GET /api/v1/gateways`
//! - `GET /api/v1/gateways/{gw}/devices` (an addition: the devices with a twin)
//! - `GET /api/v1/gateways/{gw}/devices/{dev}`: the twin
//! - `PUT /api/v1/gateways/{gw}/devices/{dev}/desired` with `{PROP: V, ...}`
//! - `GET /api/v1/gateways/{gw}/devices/{dev}/properties/{p}/history?after=SEQ&limit=N`
//! - `PUT /api/v1/gateways/{gw}/config` with `{"models": {NAME: DOC}, "devices":
//!   {...}, "rules": {...}}` (an addition: the gateway's whole configuration;
//!   DOC is the document's YAML or JSON text, or the document as a JSON
//!   object), and `GET` of it with the gateway's report
//! - `GET /api/v1/audit?limit=N` (an addition: who set desired state or sent
//!   a bundle, by token name)
//! - `GET /api/v1/gateways/{gw}/events?limit=N` (an addition: the gateway's
//!   journal events, newest first)
//! - `GET /api/v1/stats`
//! - `GET /healthz` (open: no token needed)
//!
//! Every `/api/v1` route is behind the bearer tokens of [`super::tokens`]. Errors are
//! `{"error":{"code","message"}}`, as on the gateway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferrite_models::Value;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::http::{
    ApiError, ApiResult, ErrorBody, audited, bad_body, bundle_documents, known, properties_of,
    rfc3339_ms,
};
use super::plane::Shared;
use super::store::Stored;
use super::store::blocking;
use super::tokens::Principal;
use crate::delta::from_wire;

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<usize>,
}

/// The newest audit entries (default 100, at most 10 000), oldest first.
#[utoipa::path(get, operation_id = "audit", path = "/api/v1/audit", tag = "control plane", params(("limit" = Option<usize>, Query, description = "Newest entries (default 100)")), responses((status = 200, description = "Who changed what", body = Object), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn audit(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|e| bad_body(e.body_text()))?;
    let limit = query.limit.unwrap_or(100).min(10_000);
    let store = shared.store.clone();
    let entries = blocking(move || store.audit(limit)).await?;
    Ok(Json(json!({ "entries": entries })))
}

/// A gateway's journal events (alarms, OPC UA events, rule events, its own
/// warnings) as synced, newest first (default 100, at most 10 000).
#[utoipa::path(get, operation_id = "events", path = "/api/v1/gateways/{gw}/events", tag = "control plane", params(("gw" = String, Path, description = "Gateway id"), ("limit" = Option<usize>, Query, description = "Newest events (default 100)")), responses((status = 200, description = "The gateway's events, newest first: {seq, ts, event}", body = Vec<Object>), (status = 404, description = "No such gateway (never connected) or item", body = ErrorBody), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn events(
    State(shared): State<Arc<Shared>>,
    Path(gw): Path<String>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|e| bad_body(e.body_text()))?;
    known(&shared, &gw).await?;
    let limit = query.limit.unwrap_or(100).min(10_000);
    let store = shared.store.clone();
    let events = blocking(move || store.events(&gw, limit)).await?;
    let list: Vec<JsonValue> = events
        .iter()
        .map(|e| json!({"seq": e.seq, "ts": rfc3339_ms(e.ts_ms), "event": e.body}))
        .collect();
    Ok(Json(JsonValue::Array(list)))
}

#[utoipa::path(get, operation_id = "gateways", path = "/api/v1/gateways", tag = "control plane", responses((status = 200, description = "Every gateway known", body = Vec<Object>), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn gateways(State(shared): State<Arc<Shared>>) -> ApiResult {
    let store = shared.store.clone();
    let known = blocking(move || store.gateways()).await?;
    let list: Vec<JsonValue> = known
        .iter()
        .map(|g| super::http::gateway_json(&shared, g))
        .collect();
    Ok(Json(JsonValue::Array(list)))
}

#[utoipa::path(get, operation_id = "devices", path = "/api/v1/gateways/{gw}/devices", tag = "control plane", params(("gw" = String, Path, description = "Gateway id")), responses((status = 200, description = "Devices with a twin", body = Vec<String>), (status = 404, description = "No such gateway (never connected) or item", body = ErrorBody), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn devices(
    State(shared): State<Arc<Shared>>,
    Path(gw): Path<String>,
) -> ApiResult {
    known(&shared, &gw).await?;
    let store = shared.store.clone();
    let devices = blocking(move || store.devices(&gw)).await?;
    Ok(Json(json!(devices)))
}

fn stored_json(s: &Stored) -> JsonValue {
    json!({"value": s.value, "ts": rfc3339_ms(s.ts_ms), "seq": s.seq})
}

#[utoipa::path(get, operation_id = "twin", path = "/api/v1/gateways/{gw}/devices/{dev}", tag = "control plane", params(("gw" = String, Path, description = "Gateway id"), ("dev" = String, Path, description = "Device name")), responses((status = 200, description = "The device twin", body = Object), (status = 404, description = "No such gateway (never connected) or item", body = ErrorBody), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn twin(
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
    let reported_meta: BTreeMap<&String, JsonValue> = twin
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

#[utoipa::path(put, operation_id = "putDesired", path = "/api/v1/gateways/{gw}/devices/{dev}/desired", tag = "control plane", params(("gw" = String, Path, description = "Gateway id"), ("dev" = String, Path, description = "Device name")), request_body(content = Object, description = "{PROPERTY: VALUE}"), responses((status = 202, description = "Stored and sent", body = Object), (status = 404, description = "No such gateway (never connected) or item", body = ErrorBody), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn desired(
    State(shared): State<Arc<Shared>>,
    Path((gw, dev)): Path<(String, String)>,
    principal: Option<Extension<Principal>>,
    body: Result<Json<JsonValue>, JsonRejection>,
) -> Result<(StatusCode, Json<JsonValue>), ApiError> {
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text()))?;
    let properties = properties_of(body)?;
    known(&shared, &gw).await?;
    let patch = shared.send_desired(&gw, &dev, properties.clone()).await?;
    audited(
        &shared,
        principal,
        "desired",
        json!({
            "gateway": gw,
            "device": dev,
            "version": patch.version,
            "properties": properties,
        }),
    )
    .await?;
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

/// Sends a gateway its whole configuration (the next bundle version). A
/// gateway that is offline, or has not connected yet, gets it at its next
/// Hello. The gateway checks the whole set and reports `applied` or
/// `rejected` with every problem (see `GET`).
#[utoipa::path(put, operation_id = "putConfig", path = "/api/v1/gateways/{gw}/config", tag = "control plane", params(("gw" = String, Path, description = "Gateway id")), request_body(content = Object, description = "{models, devices, rules}"), responses((status = 202, description = "Stored and sent", body = Object), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn put_config(
    State(shared): State<Arc<Shared>>,
    Path(gw): Path<String>,
    principal: Option<Extension<Principal>>,
    body: Result<Json<JsonValue>, JsonRejection>,
) -> Result<(StatusCode, Json<JsonValue>), ApiError> {
    ferrite_models::units::check_name(&gw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_gateway",
            format!("gateway {e}"),
        )
    })?;
    let Json(body) = body.map_err(|e| bad_body(e.body_text()))?;
    let documents = bundle_documents(body)?;
    let count = documents.len();
    let bundle = shared.send_config(&gw, documents).await?;
    audited(
        &shared,
        principal,
        "config_bundle",
        json!({
            "gateway": gw,
            "version": bundle.version,
            "documents": count,
        }),
    )
    .await?;
    let connected = shared.presence(&gw).connected;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "version": bundle.version,
            "documents": count,
            "gateway_connected": connected,
            "message": if connected {
                "sent; the gateway checks the whole set, applies it or refuses it, and reports back"
            } else {
                "stored; the gateway gets it when it connects"
            },
        })),
    ))
}

/// The configuration sent to a gateway, and what became of it.
#[utoipa::path(get, operation_id = "getConfig", path = "/api/v1/gateways/{gw}/config", tag = "control plane", params(("gw" = String, Path, description = "Gateway id")), responses((status = 200, description = "The bundle and its state", body = Object), (status = 404, description = "No such gateway (never connected) or item", body = ErrorBody), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn get_config(
    State(shared): State<Arc<Shared>>,
    Path(gw): Path<String>,
) -> ApiResult {
    let store = shared.store.clone();
    let g = gw.clone();
    let (bundle, report) =
        blocking(move || Ok((store.bundle(&g)?, store.config_report(&g)?))).await?;
    let Some(bundle) = bundle else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_config",
            format!("no configuration was sent to `{gw}`"),
        ));
    };
    let state = match &report {
        Some(r) if r.version == bundle.version && r.applied => "applied",
        Some(r) if r.version == bundle.version => "rejected",
        _ => "pending",
    };
    let documents: Vec<JsonValue> = bundle
        .documents
        .iter()
        .map(|d| json!({"kind": d.kind, "name": d.name}))
        .collect();
    let report = report.map(|r| {
        json!({
            "version": r.version,
            "applied": r.applied,
            "changed": r.changed,
            "errors": r.errors,
            "gateway_version": r.gateway_version,
            "hash": r.hash,
        })
    });
    Ok(Json(json!({
        "gateway": gw,
        "version": bundle.version,
        "state": state,
        "documents": documents,
        "report": report,
    })))
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// At most this many changes per page.
const MAX_PAGE: usize = 100_000;

#[utoipa::path(get, operation_id = "history", path = "/api/v1/gateways/{gw}/devices/{dev}/properties/{p}/history", tag = "control plane", params(("gw" = String, Path, description = "Gateway id"), ("dev" = String, Path, description = "Device name"), ("p" = String, Path, description = "Property"), ("after" = Option<u64>, Query, description = "After this seq"), ("limit" = Option<usize>, Query, description = "At most (default 10 000)")), responses((status = 200, description = "Changes in order", body = Vec<Object>), (status = 404, description = "No such gateway (never connected) or item", body = ErrorBody), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn history(
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
    Ok(Json(JsonValue::Array(
        rows.iter().map(stored_json).collect(),
    )))
}

#[utoipa::path(get, operation_id = "stats", path = "/api/v1/stats", tag = "control plane", responses((status = 200, description = "Counters since start", body = Object), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn stats(State(shared): State<Arc<Shared>>) -> Json<JsonValue> {
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
        "broker_logins_refused": get(&shared.guard.refused_logins),
        "broker_packets_refused": get(&shared.guard.refused_packets),
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
