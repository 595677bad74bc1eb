//! `POST /api/v1/devices/{id}/methods/{name}`: calls a method the device's
//! model declares, through [`crate::control::Control::call`] (inputs
//! checked against the model, the call audited).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::control::Outputs;

/// Device and method in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MethodPath {
    /// Device name.
    #[param(example = "boiler-1")]
    pub id: String,
    /// Method name, as the model declares it.
    #[param(example = "reset_counters")]
    pub name: String,
}

/// The body of a call: the inputs by name. An empty body, or `{}`, calls a
/// method that takes nothing.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    /// Each declared input, typed as the model says.
    #[serde(default)]
    #[schema(value_type = Object, example = json!({"setpoint": 72.5}))]
    pub inputs: serde_json::Map<String, JsonValue>,
}

/// What a call returned.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallAnswer {
    /// The device.
    pub device: String,
    /// The method.
    pub method: String,
    /// Each declared output, typed as the model says.
    #[schema(value_type = Object, example = json!({"previous": 70.0}))]
    pub outputs: Outputs,
}

/// Calls a method of a device.
///
/// The inputs are checked against the model's method (names, types,
/// limits) before anything reaches the device; the call is recorded in the
/// audit log with its inputs, outputs and outcome. Needs the `write` role.
#[utoipa::path(post, operation_id = "callMethod", path = "/api/v1/devices/{id}/methods/{name}", tag = "devices",
    params(MethodPath),
    request_body(content = CallBody, description = "The inputs; may be empty for a method without inputs"),
    responses(
        (status = 200, description = "Called; the outputs", body = CallAnswer),
        (status = 400, description = "An unknown, missing, mistyped or out-of-range input, a malformed body, or inputs the device rejected", body = ErrorBody),
        (status = 403, description = "The device does not let Ferrite run the method", body = ErrorBody),
        (status = 404, description = "No such device or method", body = ErrorBody),
        (status = 502, description = "The device refused", body = ErrorBody),
        (status = 503, description = "The device is unreachable", body = ErrorBody),
        (status = 504, description = "The device did not answer in time", body = ErrorBody),
    ))]
pub async fn call(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    principal: Option<Extension<super::auth::Principal>>,
    Path(MethodPath { id, name }): Path<MethodPath>,
    body: Bytes,
) -> Result<Json<CallAnswer>, ApiError> {
    let body: CallBody = if body.iter().all(u8::is_ascii_whitespace) {
        CallBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("expected {{\"inputs\": {{...}}}}: {e}")))?
    };
    let actor = super::config::api_actor(principal, peer);
    let outputs = state.control.call(&actor, &id, &name, &body.inputs).await?;
    Ok(Json(CallAnswer {
        device: id,
        method: name,
        outputs,
    }))
}
