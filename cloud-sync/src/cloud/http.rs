//! What the control plane's REST handlers share: the error type and its
//! body, the audit record, the checks of a gateway and of a body, times as
//! RFC 3339, and a gateway as the API shows it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ferrite_models::Value;
use serde_json::{Value as JsonValue, json};

use super::plane::Shared;
use super::store::{GatewayRecord, blocking};
use super::tokens::Principal;
use crate::wire::ConfigDocument;

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with its status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
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

/// What a JSON handler answers.
pub type ApiResult = Result<Json<JsonValue>, ApiError>;

/// Records a change in the audit log, durably, before it is answered:
/// `details` with the time, the `action` and who made the call (the
/// token's name, or `local` where the API has no tokens: loopback only).
pub(crate) async fn audited(
    shared: &Arc<Shared>,
    principal: Option<Extension<Principal>>,
    action: &str,
    mut details: JsonValue,
) -> Result<(), ApiError> {
    details["ts"] = json!(rfc3339(SystemTime::now()));
    details["actor"] = json!(principal.map_or_else(|| "local".to_string(), |p| p.name.clone()));
    details["action"] = json!(action);
    let store = shared.store.clone();
    blocking(move || store.record_audit(&details)).await?;
    Ok(())
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    rfc3339_ms(ms)
}

pub(crate) fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

pub(crate) async fn known(shared: &Arc<Shared>, gateway: &str) -> Result<(), ApiError> {
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

/// A desired patch's body: `{PROPERTY: VALUE, ...}`, each value a
/// boolean, number or string.
pub(crate) fn properties_of(body: JsonValue) -> Result<BTreeMap<String, Value>, ApiError> {
    let JsonValue::Object(map) = body else {
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
    Ok(properties)
}

/// The kinds of a bundle, as its body and the wire name them.
const KINDS: [(&str, &str); 3] = [
    ("models", "model"),
    ("devices", "device"),
    ("rules", "rule"),
];

pub(crate) fn bad_body(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_body", message)
}

/// A bundle body's documents, each as its file's text.
pub(crate) fn bundle_documents(body: JsonValue) -> Result<Vec<ConfigDocument>, ApiError> {
    let JsonValue::Object(mut kinds) = body else {
        return Err(bad_body(
            "the body must be {\"models\": {NAME: DOC}, \"devices\": {...}, \"rules\": {...}}",
        ));
    };
    if let Some(other) = kinds
        .keys()
        .find(|k| !KINDS.iter().any(|(key, _)| key == k))
    {
        return Err(bad_body(format!(
            "unknown key `{other}`; a bundle holds models, devices and rules"
        )));
    }
    let mut documents = Vec::new();
    for (key, kind) in KINDS {
        let named = match kinds.remove(key) {
            None | Some(JsonValue::Null) => continue,
            Some(JsonValue::Object(named)) => named,
            Some(_) => return Err(bad_body(format!("`{key}` must map names to documents"))),
        };
        for (name, doc) in named {
            ferrite_models::units::check_name(&name)
                .map_err(|e| bad_body(format!("{kind} `{name}`: {e}")))?;
            // A document given as JSON is kept as JSON text: it is YAML too.
            let text = match doc {
                JsonValue::String(text) => text,
                doc @ JsonValue::Object(_) => serde_json::to_string_pretty(&doc)
                    .map_err(|e| bad_body(format!("{kind} `{name}`: {e}")))?,
                _ => {
                    return Err(bad_body(format!(
                        "{kind} `{name}`: a document is its YAML or JSON text, or a JSON object"
                    )));
                }
            };
            documents.push(ConfigDocument {
                kind: kind.to_string(),
                name,
                text,
            });
        }
    }
    Ok(documents)
}

/// A gateway as the API shows it.
pub fn gateway_json(shared: &Shared, g: &GatewayRecord) -> JsonValue {
    let presence = shared.presence(&g.id);
    // The newest outbox sequence either told: a batch (stored) or a Hello
    // seen by this replica.
    let outbox_last = g.outbox_last.max(presence.outbox_last);
    json!({
        "id": g.id,
        "connected": presence.connected,
        "last_seen": presence.last_seen.map(rfc3339),
        "last_applied": g.last_applied_ms.map(rfc3339_ms),
        "last_seq": g.last_change,
        "backlog": outbox_last.saturating_sub(g.last_change),
        "lost_at_edge": g.lost_at_edge,
        "labels": g.labels,
        "desired_version": g.desired_version,
        "applied_version": g.applied_version,
        "config_version": g.config_version,
        "config_state": config_state(g),
        "replica": super::replicas::owner(&g.id, &shared.replicas.live()),
    })
}

/// Where a gateway stands with its newest bundle: `none` sent, `pending`,
/// `applied` or `rejected`.
fn config_state(g: &GatewayRecord) -> &'static str {
    match (g.config_version, g.config_reported) {
        (0, _) => "none",
        (v, Some((r, applied))) if r == v => {
            if applied {
                "applied"
            } else {
                "rejected"
            }
        }
        _ => "pending",
    }
}

/// An error: `{"error": {"code", "message"}}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// `{"code": "...", "message": "..."}`.
    error: ErrorDetail,
}

/// The error itself.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// A stable code (`bad_body`, `unknown_gateway`, ...).
    code: String,
    /// What went wrong, for people.
    message: String,
}
