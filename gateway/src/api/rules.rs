//! `/api/v1/rules`, `/api/v1/events` and `/api/v1/audit`.

use axum::Json;
use axum::extract::rejection::{QueryRejection, StringRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use ferrite_models::project::{DocKind, Loader};
use serde::Deserialize;
use serde_json::{Value as Json_, json};

use super::AppState;
use super::error::ApiError;
use crate::rules::RuleError;
use crate::rules::reload::Edit;
use crate::store::Log;

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::NoRule(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_rule", e.to_string())
            }
            RuleError::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
        }
    }
}

/// `GET /api/v1/rules`.
pub async fn list(State(state): State<AppState>) -> Json<Json_> {
    Json(json!(*state.rules.list()))
}

/// `GET /api/v1/rules/{name}`.
pub async fn one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let view = state.rules.get(&name).ok_or(RuleError::NoRule(name))?;
    Ok(Json(json!(view)))
}

/// `POST /api/v1/rules/{name}/enable`.
pub async fn enable(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    Ok(Json(json!(state.rules.set_enabled(&name, true).await?)))
}

/// `POST /api/v1/rules/{name}/disable`.
pub async fn disable(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    Ok(Json(json!(state.rules.set_enabled(&name, false).await?)))
}

/// The file a rule lives in, or would live in if new. A file that holds
/// other rules too is refused: the API replaces whole files.
fn file_of(state: &AppState, name: &str) -> Result<std::path::PathBuf, ApiError> {
    let file = state
        .rules
        .get(name)
        .map(|r| std::path::PathBuf::from(r.file))
        .unwrap_or_else(|| state.rules.dir().join(format!("{name}.yaml")));
    let others: Vec<String> = state
        .rules
        .list()
        .iter()
        .filter(|r| std::path::Path::new(&r.file) == file && r.name != name)
        .map(|r| r.name.clone())
        .collect();
    if others.is_empty() {
        Ok(file)
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "shared_file",
            format!(
                "{} also holds rule(s) {}; edit that file instead",
                file.display(),
                others.join(", ")
            ),
        ))
    }
}

fn refused(errors: Vec<String>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_rule",
        format!(
            "the rule is refused ({} problems); the rules running are unchanged",
            errors.len()
        ),
    )
    .with_details(errors)
}

/// `PUT /api/v1/rules/{name}` with the rule's YAML as the body: checked like
/// `ferrite check`, written to the rules folder, applied without a restart.
pub async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<String, StringRejection>,
) -> Result<Json<Json_>, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let message = format!("the body is over {} bytes", super::MAX_BODY);
            ApiError::new(e.status(), "body_too_large", message)
        } else {
            ApiError::bad_request(format!(
                "expected the rule's YAML as UTF-8 text: {}",
                e.body_text()
            ))
        }
    })?;
    // The name becomes a file name: nothing that could leave the folder.
    ferrite_models::units::check_name(&name)
        .map_err(|e| ApiError::bad_request(format!("rule {e}")))?;
    let file = file_of(&state, &name)?;
    // The body must hold exactly this one rule.
    let mut probe = Loader::default();
    probe.load_text(&file, &body, &[DocKind::Rule]);
    let names: Vec<&String> = probe.project.rules.keys().collect();
    if probe.diagnostics.errors() == 0 && names != [&name] {
        let found = names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::bad_request(format!(
            "the body must hold exactly one rule named `{name}`; it holds {}",
            if found.is_empty() {
                "none".to_string()
            } else {
                found
            }
        )));
    }
    state
        .rules
        .reload(Some(Edit {
            file: &file,
            text: Some(&body),
        }))
        .await
        .map_err(refused)?;
    let view = state.rules.get(&name).ok_or(RuleError::NoRule(name))?;
    Ok(Json(json!(view)))
}

/// `DELETE /api/v1/rules/{name}`: removes the rule's file.
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.rules.get(&name).is_none() {
        return Err(RuleError::NoRule(name).into());
    }
    let file = file_of(&state, &name)?;
    state
        .rules
        .reload(Some(Edit {
            file: &file,
            text: None,
        }))
        .await
        .map_err(refused)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Paging and filters of the journals.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalQuery {
    limit: Option<usize>,
    /// Entries with a `seq` below this (the next page).
    before: Option<u64>,
    rule: Option<String>,
    severity: Option<String>,
    device: Option<String>,
    who: Option<String>,
}

/// Most entries one call returns.
pub const MAX_ENTRIES: usize = 1000;

async fn journal(
    state: &AppState,
    log: Log,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_ENTRIES {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_ENTRIES}"
        )));
    }
    let filters: Vec<(&'static str, String)> = [
        ("rule", q.rule),
        ("severity", q.severity),
        ("device", q.device),
        ("who", q.who),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let keep = move |entry: &Json_| {
        filters
            .iter()
            .all(|(k, v)| entry.get(*k).and_then(Json_::as_str) == Some(v.as_str()))
    };
    let entries = state
        .journal
        .recent(log, q.before.unwrap_or(u64::MAX), limit, keep)
        .await?;
    Ok(Json(Json_::Array(entries)))
}

/// `GET /api/v1/events?limit=&before=&rule=&severity=`: newest first.
pub async fn events(
    State(state): State<AppState>,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    journal(&state, Log::Events, query).await
}

/// `GET /api/v1/audit?limit=&before=&device=&who=`: newest first.
pub async fn audit(
    State(state): State<AppState>,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Result<Json<Json_>, ApiError> {
    journal(&state, Log::Audit, query).await
}
