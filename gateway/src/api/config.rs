//! Live configuration over REST (admin role): `GET /api/v1/config` (the
//! version running, its hash, every document with the version and origin
//! that last changed it, the versions kept, the last refusal),
//! `POST /api/v1/config/rollback`, and `PUT`/`DELETE` of one model, device
//! or rule (`/api/v1/models/{name}`, `/api/v1/devices/{id}`,
//! `/api/v1/rules/{name}`; the rules' own handlers are in `rules`), and
//! `POST /api/v1/devices/{id}/probe`, which tries a device before it is
//! saved.
//!
//! A `PUT` takes the document as its file would hold it, YAML or JSON (JSON
//! is YAML), and writes that file into the folder (`FOLDER/NAME.yaml` for a
//! new document) once the whole new set checks; refusals list every problem
//! as `file:line:col: message`, against the file it would be.

use std::net::SocketAddr;

use axum::Extension;
use axum::Json;
use axum::extract::rejection::{JsonRejection, StringRejection};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use ferrite_models::project::DocKind;
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::control::Actor;
use crate::reconcile::{Applied, ApplyError, Change, ConfigView, Origin};
use crate::store::Log;

/// Who made a REST call: its token's name and its address, when known.
pub(super) fn api_actor(
    principal: Option<Extension<super::auth::Principal>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Actor {
    Actor::Api {
        token: principal.map(|Extension(p)| p.name),
        peer: peer.map(|Extension(ConnectInfo(addr))| addr),
    }
}

/// Who made a call, as the audit log and the versions name them.
pub(super) fn who(
    principal: Option<Extension<super::auth::Principal>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> String {
    api_actor(principal, peer).to_string()
}

/// The error code a refused document of `kind` gets.
fn invalid_code(kind: DocKind) -> &'static str {
    match kind {
        DocKind::DeviceModel => "invalid_model",
        DocKind::Device => "invalid_device",
        DocKind::Rule => "invalid_rule",
    }
}

/// An [`ApplyError`] as the API answers it.
pub(super) fn refused(kind: Option<DocKind>, e: ApplyError) -> ApiError {
    match e {
        ApplyError::Invalid(errors) => {
            let code = kind.map_or("invalid_config", invalid_code);
            let message = format!(
                "refused ({} problem(s)); the running configuration is unchanged",
                errors.len()
            );
            ApiError::new(StatusCode::BAD_REQUEST, code, message).with_details(errors)
        }
        ApplyError::SharedFile(message) => {
            ApiError::new(StatusCode::CONFLICT, "shared_file", message)
        }
        ApplyError::NoVersion(message) => {
            ApiError::new(StatusCode::CONFLICT, "no_such_version", message)
        }
        ApplyError::Io(message) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "config_io", message)
        }
    }
}

/// A request body as UTF-8 text, or the error that says why not.
pub(super) fn body_text(
    body: Result<String, StringRejection>,
    what: &str,
) -> Result<String, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let message = format!("the body is over {} bytes", super::MAX_BODY);
            ApiError::new(e.status(), "body_too_large", message)
        } else {
            ApiError::bad_request(format!(
                "expected the {what} as YAML or JSON in UTF-8: {}",
                e.body_text()
            ))
        }
    })
}

/// Creates or replaces (`Some(body)`) or removes (`None`) the document of
/// `kind` called `name`, through the reconciler.
pub(super) async fn edit(
    state: &AppState,
    kind: DocKind,
    name: &str,
    body: Option<String>,
    who: String,
) -> Result<Applied, ApiError> {
    let project = state.running.project();
    let exists = match kind {
        DocKind::DeviceModel => project.models.contains_key(name),
        DocKind::Device => project.devices.contains_key(name),
        DocKind::Rule => project.rules.contains_key(name),
    };
    let verb = if body.is_some() { "PUT" } else { "DELETE" };
    document_file(state, kind, name, body.as_deref())?;
    if body.is_none() && !exists {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            not_found_code(kind),
            format!("no {} `{name}`", kind.name()),
        ));
    }
    let folder = match kind {
        DocKind::DeviceModel => "models",
        DocKind::Device => "devices",
        DocKind::Rule => "rules",
    };
    let origin = Origin::Api {
        who,
        what: format!("{verb} {folder}/{name}"),
    };
    let change = Change::Edit {
        kind,
        name: name.to_string(),
        text: body,
    };
    state
        .reconciler
        .apply(change, origin)
        .await
        .map_err(|e| refused(Some(kind), e))
}

/// The file that holds (or will hold) document `kind` `name`, after
/// checking the name (it becomes a file name: nothing that could leave the
/// folder) and that `body`, if any, holds exactly that one document.
fn document_file(
    state: &AppState,
    kind: DocKind,
    name: &str,
    body: Option<&str>,
) -> Result<std::path::PathBuf, ApiError> {
    ferrite_models::units::check_name(name)
        .map_err(|e| ApiError::bad_request(format!("{} {e}", kind.name())))?;
    let file = state
        .reconciler
        .file_of(kind, name)
        .map_err(|e| refused(Some(kind), e))?;
    if let Some(body) = body {
        crate::reconcile::holds_exactly(kind, name, &file, body).map_err(ApiError::bad_request)?;
    }
    Ok(file)
}

/// How long a probe waits for every property's first value.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Tries a device before it is saved: its file is checked with the rest
/// of the configuration as a `PUT` would be, then the device is polled once
/// through its driver and what came back is shown. Nothing is saved,
/// stored or written to the device.
#[utoipa::path(post, operation_id = "probeDevice", path = "/api/v1/devices/{id}/probe", tag = "config",
    params(("id" = String, Path, description = "Device name")),
    request_body(content = String, content_type = "application/yaml",
        description = "The device's file, as for PUT: one `kind: Device` document named `id`"),
    responses(
        (status = 200, description = "What one poll showed; nothing was saved", body = crate::fleet::Probe),
        (status = 400, description = "Refused, with each `file:line:col: message`; or a device that cannot be polled (MQTT)", body = ErrorBody),
        (status = 409, description = "Its file holds other documents too", body = ErrorBody),
    ))]
pub async fn probe(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<String, StringRejection>,
) -> Result<Json<crate::fleet::Probe>, ApiError> {
    let body = body_text(body, "device")?;
    document_file(&state, DocKind::Device, &id, Some(&body))?;
    let project = state
        .reconciler
        .candidate(DocKind::Device, &id, body)
        .map_err(|e| refused(Some(DocKind::Device), e))?;
    let probe = state
        .fleet
        .probe(&project, &id, PROBE_WAIT)
        .await
        .map_err(ApiError::bad_request)?;
    Ok(Json(probe))
}

fn not_found_code(kind: DocKind) -> &'static str {
    match kind {
        DocKind::DeviceModel => "unknown_model",
        DocKind::Device => "unknown_device",
        DocKind::Rule => "unknown_rule",
    }
}

/// The configuration running: version, hash, documents, history.
#[utoipa::path(get, operation_id = "getConfig", path = "/api/v1/config", tag = "config",
    responses((status = 200, description = "The configuration running", body = ConfigView)))]
pub async fn get(State(state): State<AppState>) -> Json<ConfigView> {
    Json(state.reconciler.view())
}

/// Which version to roll back to.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// A version kept; without it, the one before the running one.
    #[serde(default, deserialize_with = "integral")]
    #[schema(minimum = 0)]
    pub version: Option<u64>,
}

/// A version number as JSON Schema's `integer` means it: `3` or `3.0`.
fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(Some(f as u64)),
        _ => Err(D::Error::custom(format!(
            "version must be a whole number from 0, not {n}"
        ))),
    }
}

/// Returns to the previous version (or the one named), as a new version.
#[utoipa::path(post, operation_id = "rollbackConfig", path = "/api/v1/config/rollback", tag = "config",
    request_body(content = Option<RollbackBody>, description = "Optional: `{\"version\": N}`"),
    responses(
        (status = 200, description = "Rolled back (or already there)", body = Applied),
        (status = 400, description = "The version does not check any more, or a bad body", body = ErrorBody),
        (status = 409, description = "No such version kept, or none before the running one", body = ErrorBody),
    ))]
pub async fn rollback(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    principal: Option<Extension<super::auth::Principal>>,
    bytes: axum::body::Bytes,
) -> Result<Json<Applied>, ApiError> {
    let body: RollbackBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        // `null` is the document's "no body" too; anything but an object
        // or null is refused (serde would take `[]` for a struct).
        let expected =
            |why: String| ApiError::bad_request(format!("expected {{\"version\": N}}: {why}"));
        let parsed: Result<Json<serde_json::Value>, JsonRejection> = Json::from_bytes(&bytes);
        match parsed.map_err(|e| expected(e.body_text()))?.0 {
            serde_json::Value::Null => RollbackBody::default(),
            object @ serde_json::Value::Object(_) => {
                serde_json::from_value(object).map_err(|e| expected(e.to_string()))?
            }
            other => return Err(expected(format!("got {other}"))),
        }
    };
    let who = who(principal, peer);
    let applied = state
        .reconciler
        .rollback(body.version, &who)
        .await
        .map_err(|e| refused(None, e))?;
    let entry = serde_json::json!({
        "who": who,
        "action": "config_rollback",
        "version": applied.version,
        "result": "ok",
    });
    state.journal.record_durably(Log::Audit, &entry).await;
    Ok(Json(applied))
}

/// Creates or replaces a device model, from its file's YAML or JSON.
#[utoipa::path(put, operation_id = "putModel", path = "/api/v1/models/{name}", tag = "config",
    params(("name" = String, Path, description = "Model name")),
    request_body(content = String, content_type = "application/yaml",
        description = "The model's file: one `kind: DeviceModel` document named `name`"),
    responses(
        (status = 200, description = "Applied (devices of the model restarted)", body = Applied),
        (status = 400, description = "Refused, with each `file:line:col: message`", body = ErrorBody),
        (status = 409, description = "Its file holds other documents too", body = ErrorBody),
    ))]
pub async fn put_model(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    principal: Option<Extension<super::auth::Principal>>,
    Path(name): Path<String>,
    body: Result<String, StringRejection>,
) -> Result<Json<Applied>, ApiError> {
    let body = body_text(body, "model")?;
    let who = who(principal, peer);
    Ok(Json(
        edit(&state, DocKind::DeviceModel, &name, Some(body), who).await?,
    ))
}

/// Removes a device model (refused while a device uses it).
#[utoipa::path(delete, operation_id = "deleteModel", path = "/api/v1/models/{name}", tag = "config",
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "Applied", body = Applied),
        (status = 400, description = "Refused: devices still use it", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    ))]
pub async fn delete_model(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    principal: Option<Extension<super::auth::Principal>>,
    Path(name): Path<String>,
) -> Result<Json<Applied>, ApiError> {
    let who = who(principal, peer);
    Ok(Json(
        edit(&state, DocKind::DeviceModel, &name, None, who).await?,
    ))
}

/// Creates or replaces a device, from its file's YAML or JSON; only that
/// device restarts.
#[utoipa::path(put, operation_id = "putDevice", path = "/api/v1/devices/{id}", tag = "config",
    params(("id" = String, Path, description = "Device name")),
    request_body(content = String, content_type = "application/yaml",
        description = "The device's file: one `kind: Device` document named `id`"),
    responses(
        (status = 200, description = "Applied", body = Applied),
        (status = 400, description = "Refused, with each `file:line:col: message`", body = ErrorBody),
        (status = 409, description = "Its file holds other documents too", body = ErrorBody),
    ))]
pub async fn put_device(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    principal: Option<Extension<super::auth::Principal>>,
    Path(id): Path<String>,
    body: Result<String, StringRejection>,
) -> Result<Json<Applied>, ApiError> {
    let body = body_text(body, "device")?;
    let who = who(principal, peer);
    Ok(Json(
        edit(&state, DocKind::Device, &id, Some(body), who).await?,
    ))
}

/// Removes a device: it stops; its history and unsynced changes stay.
#[utoipa::path(delete, operation_id = "deleteDevice", path = "/api/v1/devices/{id}", tag = "config",
    params(("id" = String, Path, description = "Device name")),
    responses(
        (status = 200, description = "Applied", body = Applied),
        (status = 400, description = "Refused: rules still use it", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    ))]
pub async fn delete_device(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    principal: Option<Extension<super::auth::Principal>>,
    Path(id): Path<String>,
) -> Result<Json<Applied>, ApiError> {
    let who = who(principal, peer);
    Ok(Json(edit(&state, DocKind::Device, &id, None, who).await?))
}
