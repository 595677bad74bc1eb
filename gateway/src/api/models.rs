//! `GET /api/v1/models` and `/api/v1/models/{name}`: the device models as
//! loaded, so that clients (the dashboard's write forms among them) know
//! each property's type, access, unit and limits.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ferrite_models::DeviceModel;

use super::AppState;
use super::error::{ApiError, ErrorBody};

/// Every device model, as its YAML file declares it.
#[utoipa::path(get, operation_id = "listModels", path = "/api/v1/models", tag = "devices",
    responses((status = 200, description = "Every model: `kind`, `name`, `description` and `properties` (see `ferrite schema model`)",
        body = Vec<Object>)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<DeviceModel>> {
    Json(
        state
            .running
            .project()
            .models
            .values()
            .map(|m| m.value.clone())
            .collect(),
    )
}

/// One device model, as its YAML file declares it.
#[utoipa::path(get, operation_id = "getModel", path = "/api/v1/models/{name}", tag = "devices",
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The model (see `ferrite schema model`)", body = Object),
        (status = 404, description = "No such model", body = ErrorBody),
    ))]
pub async fn one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DeviceModel>, ApiError> {
    state
        .running
        .project()
        .models
        .get(&name)
        .map(|m| Json(m.value.clone()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_model",
                format!("no model `{name}`"),
            )
        })
}
