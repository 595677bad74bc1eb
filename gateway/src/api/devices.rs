//! `/api/v1/devices/...`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, Path, Query, State};
use ferrite_models::model::Property;
use serde::Deserialize;
use serde_json::{Value as Json_, json};

use axum::http::StatusCode;

use super::AppState;
use super::error::ApiError;
use crate::control::Actor;
use crate::drivers::Written;
use crate::live::{Reading, Summary};
use crate::time::{Micros, parse_rfc3339, rfc3339};

fn reading_json(reading: &Reading, property: Option<&Property>) -> Json_ {
    json!({
        "value": reading.value,
        "unit": property.and_then(|p| p.unit.clone()),
        "quality": reading.quality,
        "ts": reading.ts.map(rfc3339),
    })
}

fn summary_json(s: &Summary) -> Json_ {
    json!({
        "id": s.id,
        "model": s.model,
        "protocol": s.protocol,
        "status": s.status,
        "last_seen": s.last_seen.map(rfc3339),
        "error": s.error,
    })
}

/// `GET /api/v1/devices`.
pub async fn list(State(state): State<AppState>) -> Json<Json_> {
    let all: Vec<Json_> = state.live.summaries().iter().map(summary_json).collect();
    Json(Json_::Array(all))
}

/// `GET /api/v1/devices/{id}`.
pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let device = state
        .live
        .device(&id)
        .ok_or_else(|| ApiError::no_device(&id))?;
    let mut body = summary_json(&device.summary(&id));
    let properties: serde_json::Map<String, Json_> = device
        .readings
        .iter()
        .map(|(name, r)| {
            (
                name.clone(),
                reading_json(r, state.project.property(&id, name)),
            )
        })
        .collect();
    body["properties"] = Json_::Object(properties);
    Ok(Json(body))
}

/// `GET /api/v1/devices/{id}/properties/{name}`.
pub async fn property(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<Json_>, ApiError> {
    let device = state
        .live
        .device(&id)
        .ok_or_else(|| ApiError::no_device(&id))?;
    let reading = device
        .readings
        .get(&name)
        .ok_or_else(|| ApiError::no_property(&id, &name))?;
    Ok(Json(reading_json(
        reading,
        state.project.property(&id, &name),
    )))
}

/// The model's property `name` of device `id`, or the 404 that says which
/// one is unknown.
fn known_property<'a>(state: &'a AppState, id: &str, name: &str) -> Result<&'a Property, ApiError> {
    if !state.project.devices.contains_key(id) {
        return Err(ApiError::no_device(id));
    }
    state
        .project
        .property(id, name)
        .ok_or_else(|| ApiError::no_property(id, name))
}

/// The body of a write.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteBody {
    value: Json_,
}

/// `PUT /api/v1/devices/{id}/properties/{name}` with `{"value": V}`.
///
/// The value is checked against the model before anything touches the
/// device (in [`crate::control::Control`], the path rules use too); the
/// answer comes after the device confirmed the write.
pub async fn write(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    principal: Option<Extension<super::auth::Principal>>,
    Path((id, name)): Path<(String, String)>,
    body: Result<Json<WriteBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let property = known_property(&state, &id, &name)?;
    let Json(body) = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            let message = format!("the body is over {} bytes", super::MAX_BODY);
            ApiError::new(e.status(), "body_too_large", message)
        } else {
            ApiError::bad_request(format!("expected {{\"value\": ...}}: {}", e.body_text()))
        }
    })?;
    let actor = Actor::Api {
        token: principal.map(|Extension(p)| p.name),
        peer: peer.map(|Extension(ConnectInfo(addr))| addr),
    };
    let (value, written) = state.control.write(&actor, &id, &name, &body.value).await?;
    if written == Written::Sent {
        // The device does not confirm writes: say so, rather than show the
        // old reading as if it were the new one.
        let body = serde_json::json!({"value": value, "confirmed": false});
        return Ok((StatusCode::ACCEPTED, Json(body)));
    }
    let reading = state
        .live
        .device(&id)
        .and_then(|d| d.readings.get(&name).cloned())
        .ok_or_else(|| ApiError::no_property(&id, &name))?;
    Ok((StatusCode::OK, Json(reading_json(&reading, Some(property)))))
}

/// History query parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

/// Most history entries one call returns.
pub const MAX_HISTORY: usize = 10_000;

/// `GET /api/v1/devices/{id}/properties/{name}/history?since=&until=&limit=`.
pub async fn history(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    known_property(&state, &id, &name)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let time = |s: &Option<String>, default: Micros| -> Result<Micros, ApiError> {
        match s {
            None => Ok(default),
            Some(s) => parse_rfc3339(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`{s}` is not an RFC 3339 time such as 2026-11-27T13:00:00Z"
                ))
            }),
        }
    };
    let since = time(&q.since, i64::MIN)?;
    let until = time(&q.until, i64::MAX)?;
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_HISTORY {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_HISTORY}"
        )));
    }
    let store = state.store.clone();
    let entries =
        tokio::task::spawn_blocking(move || store.history(&id, &name, since, until, limit))
            .await
            .map_err(|e| ApiError::bad_request(e.to_string()))??;
    let out: Vec<Json_> = entries
        .iter()
        .map(|e| json!({"value": e.value, "ts": rfc3339(e.ts)}))
        .collect();
    Ok(Json(Json_::Array(out)))
}
