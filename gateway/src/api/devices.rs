//! `/api/v1/devices/...`.

use std::net::SocketAddr;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferrite_models::model::Property;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::live::{DeviceSummary, Quality, Reading, Status};
use crate::store::End;
use crate::time::{Micros, parse_rfc3339, rfc3339};
use ferrite_core::driver::Written;

/// A reading's quality as the API shows it (`ferrite_core`'s
/// [`Quality`], which knows nothing of the API, spelled out for the
/// OpenAPI document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Quality)]
pub enum QualityView {
    /// Read in the last poll.
    Good,
    /// The last read failed; this is the last good value.
    Stale,
    /// The device answered, but the value could not be read or decoded.
    Bad,
}

impl From<Quality> for QualityView {
    fn from(q: Quality) -> Self {
        match q {
            Quality::Good => QualityView::Good,
            Quality::Stale => QualityView::Stale,
            Quality::Bad => QualityView::Bad,
        }
    }
}

/// A device's status as the API shows it (`ferrite_core`'s [`Status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Status)]
pub enum DeviceStatusView {
    /// Answering.
    Online,
    /// Not reachable, or not answering in time.
    Offline,
    /// Answering with errors (Modbus exceptions, undecodable values).
    Error,
}

impl From<Status> for DeviceStatusView {
    fn from(s: Status) -> Self {
        match s {
            Status::Online => DeviceStatusView::Online,
            Status::Offline => DeviceStatusView::Offline,
            Status::Error => DeviceStatusView::Error,
        }
    }
}

/// One property's latest reading.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadingView {
    /// The value, typed as the model says; absent until first read.
    #[schema(value_type = Option<serde_json::Value>)]
    pub value: Option<ferrite_models::Value>,
    /// The model's unit.
    pub unit: Option<String>,
    /// `good`, `stale` (the last read failed) or `bad` (undecodable).
    pub quality: QualityView,
    /// When it was read, RFC 3339.
    pub ts: Option<String>,
}

impl ReadingView {
    pub(super) fn new(reading: &Reading, property: Option<&Property>) -> ReadingView {
        ReadingView {
            value: reading.value(),
            unit: property.and_then(|p| p.unit.clone()),
            quality: reading.quality().into(),
            ts: reading.ts().map(rfc3339),
        }
    }
}

/// A device, without its readings.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    /// Device name.
    pub id: String,
    /// Model name.
    pub model: String,
    /// `modbus-tcp`, `modbus-rtu`, `modbus-rtu-over-tcp`, `opcua` or `mqtt`.
    pub protocol: String,
    /// `online`, `offline` or `error`.
    pub status: DeviceStatusView,
    /// When it last answered, RFC 3339.
    pub last_seen: Option<String>,
    /// Why it is offline or in error.
    pub error: Option<String>,
}

impl From<&DeviceSummary> for DeviceView {
    fn from(s: &DeviceSummary) -> Self {
        DeviceView {
            id: s.id.clone(),
            model: s.model.clone(),
            protocol: s.protocol.to_string(),
            status: s.status.into(),
            last_seen: s.last_seen.map(rfc3339),
            error: s.error.clone(),
        }
    }
}

/// A device with every property's latest reading.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDetail {
    /// The device.
    #[serde(flatten)]
    pub device: DeviceView,
    /// Readings by property name, in model order.
    pub properties: IndexMap<String, ReadingView>,
}

/// A write the device does not confirm (202).
#[derive(Debug, Serialize, ToSchema)]
pub struct SentView {
    /// The value sent, as the model types it.
    #[schema(value_type = serde_json::Value)]
    pub value: ferrite_models::Value,
    /// Always false: the device does not confirm writes.
    pub confirmed: bool,
}

/// A written property: confirmed (200) or only sent (202).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum WriteAnswer {
    /// Confirmed, with the reading that shows it.
    Confirmed(ReadingView),
    /// Sent to a device that does not confirm.
    Sent(SentView),
}

/// One history entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    /// The value stored.
    #[schema(value_type = serde_json::Value)]
    pub value: ferrite_models::Value,
    /// When it was read, RFC 3339.
    pub ts: String,
}

/// Device and property in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PropertyPath {
    /// Device name.
    #[param(example = "boiler-1")]
    pub id: String,
    /// Property name.
    #[param(example = "setpoint")]
    pub name: String,
}

/// Every device with its status.
#[utoipa::path(get, operation_id = "listDevices", path = "/api/v1/devices", tag = "devices",
    responses((status = 200, description = "Every device", body = Vec<DeviceView>)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<DeviceView>> {
    Json(
        state
            .live
            .summaries()
            .iter()
            .map(DeviceView::from)
            .collect(),
    )
}

/// One device with its latest readings.
#[utoipa::path(get, operation_id = "getDevice", path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device name", example = "boiler-1")),
    responses(
        (status = 200, description = "The device", body = DeviceDetail),
        (status = 404, description = "No such device", body = ErrorBody),
    ))]
pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    let device = state
        .live
        .device(&id)
        .ok_or_else(|| ApiError::no_device(&id))?;
    let project = state.running.project();
    let properties = device
        .readings
        .iter()
        .map(|(name, r)| {
            let reading = ReadingView::new(r, project.property(&id, name));
            (name.to_string(), reading)
        })
        .collect();
    Ok(Json(DeviceDetail {
        device: DeviceView::from(&device.summary(&id)),
        properties,
    }))
}

/// One property's latest reading.
#[utoipa::path(get, operation_id = "getProperty", path = "/api/v1/devices/{id}/properties/{name}", tag = "devices",
    params(PropertyPath),
    responses(
        (status = 200, description = "The reading", body = ReadingView),
        (status = 404, description = "No such device or property", body = ErrorBody),
    ))]
pub async fn property(
    State(state): State<AppState>,
    Path(PropertyPath { id, name }): Path<PropertyPath>,
) -> Result<Json<ReadingView>, ApiError> {
    let reading = state
        .live
        .reading(&id, &name)
        .map_err(|missing| match missing {
            crate::live::Missing::Device => ApiError::no_device(&id),
            crate::live::Missing::Property => ApiError::no_property(&id, &name),
        })?;
    Ok(Json(ReadingView::new(
        &reading,
        state.running.project().property(&id, &name),
    )))
}

/// The model's property `name` of device `id`, or the 404 that says which
/// one is unknown.
fn known_property(state: &AppState, id: &str, name: &str) -> Result<Property, ApiError> {
    let project = state.running.project();
    if !project.devices.contains_key(id) {
        return Err(ApiError::no_device(id));
    }
    project
        .property(id, name)
        .cloned()
        .ok_or_else(|| ApiError::no_property(id, name))
}

/// The body of a write: an object with `value` and nothing else (read
/// through a map, since serde would also take `[V]` for the struct).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(try_from = "serde_json::Map<String, JsonValue>")]
pub struct WriteBody {
    /// The new value: a number, boolean or string as the model types it.
    #[schema(example = 42.5)]
    pub value: JsonValue,
}

impl TryFrom<serde_json::Map<String, JsonValue>> for WriteBody {
    type Error = String;

    fn try_from(mut fields: serde_json::Map<String, JsonValue>) -> Result<Self, String> {
        let value = fields
            .remove("value")
            .ok_or_else(|| "missing field `value`".to_string())?;
        match fields.keys().next() {
            Some(other) => Err(format!("unknown field `{other}`, expected `value`")),
            None => Ok(WriteBody { value }),
        }
    }
}

/// Writes a property.
///
/// The value is checked against the model (type, access, limits) before
/// anything touches the device, in [`crate::control::Control`], the path
/// rules use too; the answer comes after the device confirmed the write.
#[utoipa::path(put, operation_id = "writeProperty", path = "/api/v1/devices/{id}/properties/{name}", tag = "devices",
    params(PropertyPath),
    request_body = WriteBody,
    responses(
        (status = 200, description = "Written and read back", body = ReadingView),
        (status = 202, description = "Sent; the device does not confirm writes", body = SentView),
        (status = 400, description = "Wrong type, out of range, or a malformed body", body = ErrorBody),
        (status = 403, description = "Read-only property, or the device denied it", body = ErrorBody),
        (status = 404, description = "No such device or property", body = ErrorBody),
        (status = 409, description = "An active rule holds the property", body = ErrorBody),
        (status = 502, description = "The device refused", body = ErrorBody),
        (status = 503, description = "The device is unreachable", body = ErrorBody),
        (status = 504, description = "The device did not answer in time", body = ErrorBody),
    ))]
pub async fn write(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    principal: Option<Extension<super::auth::Principal>>,
    Path(PropertyPath { id, name }): Path<PropertyPath>,
    body: Result<Json<WriteBody>, JsonRejection>,
) -> Result<(StatusCode, Json<WriteAnswer>), ApiError> {
    let property = known_property(&state, &id, &name)?;
    let Json(body) = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            let message = format!("the body is over {} bytes", super::MAX_BODY);
            ApiError::new(e.status(), "body_too_large", message)
        } else {
            ApiError::bad_request(format!("expected {{\"value\": ...}}: {}", e.body_text()))
        }
    })?;
    let actor = super::config::api_actor(principal, peer);
    let (value, written) = state.control.write(&actor, &id, &name, &body.value).await?;
    if written == Written::Sent {
        // The device does not confirm writes: say so, rather than show the
        // old reading as if it were the new one.
        let sent = SentView {
            value,
            confirmed: false,
        };
        return Ok((StatusCode::ACCEPTED, Json(WriteAnswer::Sent(sent))));
    }
    let reading = state
        .live
        .reading(&id, &name)
        .map_err(|_| ApiError::no_property(&id, &name))?;
    let view = ReadingView::new(&reading, Some(&property));
    Ok((StatusCode::OK, Json(WriteAnswer::Confirmed(view))))
}

/// History query parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// From this time on (RFC 3339 with any offset, inclusive). Empty counts
    /// as absent.
    #[param(schema_with = time_or_empty)]
    since: Option<String>,
    /// Up to this time (RFC 3339 with any offset, inclusive). Empty counts as
    /// absent.
    #[param(schema_with = time_or_empty)]
    until: Option<String>,
    /// At most this many entries (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// Which end of the range `limit` keeps: `oldest` (the default with
    /// `since`) or `newest` (the default without). The answer is in time
    /// order either way.
    #[param(inline)]
    order: Option<HistoryOrder>,
}

/// A query time: RFC 3339 (`date-time`), or empty for none.
fn time_or_empty() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{
        AnyOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
    };
    Schema::AnyOf(
        AnyOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(0)),
            )
            .build(),
    )
}

/// Which end of the range a history query keeps.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HistoryOrder {
    /// The first `limit` entries from `since` on.
    Oldest,
    /// The last `limit` entries up to `until`.
    Newest,
}

/// Most history entries one call returns.
pub const MAX_HISTORY: usize = 10_000;

/// A property's stored history, in time order: from `since` on, or without
/// it the newest `limit` entries. A device removed from the configuration
/// keeps its history here until retention drops it.
#[utoipa::path(get, operation_id = "getHistory", path = "/api/v1/devices/{id}/properties/{name}/history", tag = "devices",
    params(PropertyPath, HistoryQuery),
    responses(
        (status = 200, description = "Entries in time order", body = Vec<HistoryEntry>),
        (status = 400, description = "A bad time, limit or order", body = ErrorBody),
        (status = 404, description = "No such device or property", body = ErrorBody),
    ))]
pub async fn history(
    State(state): State<AppState>,
    Path(PropertyPath { id, name }): Path<PropertyPath>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let configured = known_property(&state, &id, &name);
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    // An empty parameter (`?since=&until=`, as forms send) counts as absent.
    let given = |s: Option<String>| s.filter(|s| !s.is_empty());
    let (since, until) = (given(q.since), given(q.until));
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
    let end = match q.order {
        Some(HistoryOrder::Oldest) => End::Oldest,
        Some(HistoryOrder::Newest) => End::Newest,
        None if since.is_some() => End::Oldest,
        None => End::Newest,
    };
    let since = time(&since, i64::MIN)?;
    let until = time(&until, i64::MAX)?;
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_HISTORY {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_HISTORY}"
        )));
    }
    let store = state.store.clone();
    let entries =
        crate::store::blocking::spawn(move || store.history(&id, &name, since, until, limit, end))
            .await??;
    if let Err(unknown) = configured
        && entries.is_empty()
    {
        return Err(unknown);
    }
    Ok(Json(
        entries
            .into_iter()
            .map(|e| HistoryEntry {
                value: e.value,
                ts: rfc3339(e.ts),
            })
            .collect(),
    ))
}
