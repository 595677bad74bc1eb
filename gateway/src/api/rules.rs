//! `/api/v1/rules`, `/api/v1/events` and `/api/v1/audit`.

use std::net::SocketAddr;

use axum::extract::rejection::{QueryRejection, StringRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferrite_models::project::DocKind;
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::rules::{RuleError, RuleView};
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

/// Every rule with its state.
#[utoipa::path(get, operation_id = "listRules", path = "/api/v1/rules", tag = "rules",
    responses((status = 200, description = "Every rule", body = Vec<RuleView>)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<RuleView>> {
    Json(state.rules.list().to_vec())
}

/// One rule with its state.
#[utoipa::path(get, operation_id = "getRule", path = "/api/v1/rules/{name}", tag = "rules",
    params(("name" = String, Path, description = "Rule name")),
    responses(
        (status = 200, description = "The rule", body = RuleView),
        (status = 404, description = "No such rule", body = ErrorBody),
    ))]
pub async fn one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    let view = state.rules.get(&name).ok_or(RuleError::NoRule(name))?;
    Ok(Json(view))
}

/// Enables a rule (kept across restarts).
#[utoipa::path(post, operation_id = "enableRule", path = "/api/v1/rules/{name}/enable", tag = "rules",
    params(("name" = String, Path, description = "Rule name")),
    responses(
        (status = 200, description = "The rule, enabled", body = RuleView),
        (status = 404, description = "No such rule", body = ErrorBody),
    ))]
pub async fn enable(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    principal: Option<Extension<super::auth::Principal>>,
    Path(name): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    switch(&state, &name, true, super::config::who(principal, peer)).await
}

/// Disables a rule (kept across restarts); it releases what it holds.
#[utoipa::path(post, operation_id = "disableRule", path = "/api/v1/rules/{name}/disable", tag = "rules",
    params(("name" = String, Path, description = "Rule name")),
    responses(
        (status = 200, description = "The rule, disabled", body = RuleView),
        (status = 404, description = "No such rule", body = ErrorBody),
    ))]
pub async fn disable(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    principal: Option<Extension<super::auth::Principal>>,
    Path(name): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    switch(&state, &name, false, super::config::who(principal, peer)).await
}

/// Enables or disables a rule and records who did it in the audit log,
/// durably, before answering.
async fn switch(
    state: &AppState,
    name: &str,
    on: bool,
    who: String,
) -> Result<Json<RuleView>, ApiError> {
    let view = state.rules.set_enabled(name, on).await?;
    let entry = serde_json::json!({
        "who": who,
        "rule": name,
        "action": if on { "enable" } else { "disable" },
        "result": "ok",
    });
    state.journal.record_durably(Log::Audit, &entry).await;
    Ok(Json(view))
}

/// Creates or replaces a rule from its YAML: checked with the whole
/// configuration like `ferrite check`, written to the rules folder, applied
/// without a restart (only this rule restarts).
#[utoipa::path(put, operation_id = "putRule", path = "/api/v1/rules/{name}", tag = "rules",
    params(("name" = String, Path, description = "Rule name")),
    request_body(content = String, content_type = "application/yaml",
        description = "The rule file: one `kind: Rule` document named `name`"),
    responses(
        (status = 200, description = "The rule, applied", body = RuleView),
        (status = 400, description = "Refused, with each `file:line:col: message`", body = ErrorBody),
        (status = 409, description = "Its file holds other documents too", body = ErrorBody),
    ))]
pub async fn put(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    principal: Option<Extension<super::auth::Principal>>,
    Path(name): Path<String>,
    body: Result<String, StringRejection>,
) -> Result<Json<RuleView>, ApiError> {
    let body = super::config::body_text(body, "rule")?;
    let who = super::config::who(principal, peer);
    super::config::edit(&state, DocKind::Rule, &name, Some(body), who).await?;
    let view = state.rules.get(&name).ok_or(RuleError::NoRule(name))?;
    Ok(Json(view))
}

/// Deletes a rule's file; the rule stops and releases what it holds.
#[utoipa::path(delete, operation_id = "deleteRule", path = "/api/v1/rules/{name}", tag = "rules",
    params(("name" = String, Path, description = "Rule name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such rule", body = ErrorBody),
        (status = 409, description = "Its file holds other documents too", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    principal: Option<Extension<super::auth::Principal>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.rules.get(&name).is_none() {
        return Err(RuleError::NoRule(name).into());
    }
    let who = super::config::who(principal, peer);
    super::config::edit(&state, DocKind::Rule, &name, None, who).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Paging and filters of the journals.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JournalQuery {
    /// At most this many entries (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Entries with a `seq` below this (the next page).
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    before: Option<u64>,
    /// Only this rule's entries.
    rule: Option<String>,
    /// Only this severity (`info`, `warning`, `critical`).
    severity: Option<String>,
    /// Only this device's entries.
    device: Option<String>,
    /// Only this actor's (`api TOKEN`, `rule NAME`, `cloud desired vN`).
    who: Option<String>,
}

/// An event or audit entry. Events carry `kind`, `severity`, `message` and,
/// from rules, `rule`; audit entries carry `who`, `device`, `property`,
/// `old`, `new` and `result`, or for a method call `who`, `device`,
/// `method`, `inputs`, `outputs` and `result`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JournalEntry {
    /// Sequence number, newest highest (page with `before`).
    pub seq: u64,
    /// When, RFC 3339.
    pub ts: String,
    /// Event kind (`rule_fired`, `store_failing`, ...).
    pub kind: Option<String>,
    /// Event severity.
    pub severity: Option<String>,
    /// Event text.
    pub message: Option<String>,
    /// The rule involved.
    pub rule: Option<String>,
    /// Who wrote (audit).
    pub who: Option<String>,
    /// The client's address, for API writes (audit).
    pub peer: Option<String>,
    /// The device written (audit).
    pub device: Option<String>,
    /// The property written (audit).
    pub property: Option<String>,
    /// The method called (audit of a call).
    pub method: Option<String>,
    /// The inputs of a call, by name (audit).
    #[schema(value_type = Option<Object>)]
    pub inputs: Option<JsonValue>,
    /// The outputs of a call, by name, when it succeeded (audit).
    #[schema(value_type = Option<Object>)]
    pub outputs: Option<JsonValue>,
    /// The value before (audit).
    #[schema(value_type = Option<serde_json::Value>)]
    pub old: Option<JsonValue>,
    /// The value asked for (audit).
    #[schema(value_type = Option<serde_json::Value>)]
    pub new: Option<JsonValue>,
    /// `confirmed`, `sent` or the error (audit).
    pub result: Option<String>,
}

/// Most entries one call returns.
pub const MAX_ENTRIES: usize = 1000;

async fn journal(
    state: &AppState,
    log: Log,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if q.before.is_some_and(|b| b > i64::MAX as u64) {
        return Err(ApiError::bad_request(format!(
            "before must be 0 to {}",
            i64::MAX
        )));
    }
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
    let keep = move |entry: &JsonValue| {
        filters
            .iter()
            .all(|(k, v)| entry.get(*k).and_then(JsonValue::as_str) == Some(v.as_str()))
    };
    let entries = state
        .journal
        .recent(log, q.before.unwrap_or(u64::MAX), limit, keep)
        .await?;
    Ok(Json(JsonValue::Array(entries)))
}

/// Events (rule firings, store and sync troubles), newest first.
#[utoipa::path(get, operation_id = "listEvents", path = "/api/v1/events", tag = "journal",
    params(JournalQuery),
    responses(
        (status = 200, description = "Entries, newest first", body = Vec<JournalEntry>),
        (status = 400, description = "A bad limit or filter", body = ErrorBody),
    ))]
pub async fn events(
    State(state): State<AppState>,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    journal(&state, Log::Events, query).await
}

/// Every write to a device, who made it, and how it ended; newest first.
#[utoipa::path(get, operation_id = "listAudit", path = "/api/v1/audit", tag = "journal",
    params(JournalQuery),
    responses(
        (status = 200, description = "Entries, newest first", body = Vec<JournalEntry>),
        (status = 400, description = "A bad limit or filter", body = ErrorBody),
    ))]
pub async fn audit(
    State(state): State<AppState>,
    query: Result<Query<JournalQuery>, QueryRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    journal(&state, Log::Audit, query).await
}
