//! Fleet operations in the control plane's API:
//!
//! - `GET /api/v1/fleet?label=K=V&connected=BOOL&after=ID&limit=N`: every
//!   gateway's state (connected, last seen, backlog, lost at the edge,
//!   desired and config versions, labels, the replica applying it), a page
//!   at a time, and a summary of the whole selection;
//! - `PUT /api/v1/gateways/{gw}/labels` with `{"K": "V", ...}`: a gateway's
//!   labels (its groups);
//! - `POST /api/v1/rollouts` with `{"selector": {"K": "V"}, "desired":
//!   {"device": D, "properties": {...}}}` or `{"selector": ..., "config":
//!   BUNDLE}`: a desired patch or a config bundle sent to every gateway
//!   the selector matches; `GET /api/v1/rollouts[/{id}]`: each one's state
//!   per gateway (`pending`, `applied`, `rejected`, or `superseded` by a
//!   newer one) and a summary;
//! - `GET /metrics` ([`super::metrics`]).
//!
//! A rollout is recorded once, with the version each gateway got; its
//! state is read from the gateways' reports whenever it is asked for, by
//! whichever replica.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::http::{
    ApiError, ApiResult, ErrorBody, audited, bad_body, bundle_documents, gateway_json, known,
    properties_of, rfc3339,
};
use super::plane::Shared;
use super::store::{GatewayRecord, blocking};
use super::tokens::Principal;

/// Gateways per page, at most.
const MAX_PAGE: usize = 1000;

/// Gateways one rollout reaches, at most.
const MAX_ROLLOUT: usize = 100_000;

/// A label selector: `K=V` pairs, all of which must match.
pub type Selector = BTreeMap<String, String>;

fn matches(selector: &Selector, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `K=V,K2=V2` as a selector.
fn parse_selector(text: &str) -> Result<Selector, ApiError> {
    let mut out = Selector::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad_query(format!("`{pair}` is not KEY=VALUE")))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message)
}

#[derive(Deserialize)]
pub(crate) struct FleetQuery {
    label: Option<String>,
    connected: Option<bool>,
    after: Option<String>,
    limit: Option<usize>,
}

/// The fleet, a page at a time, with a summary of the whole selection.
#[utoipa::path(get, operation_id = "fleet", path = "/api/v1/fleet", tag = "fleet", params(("label" = Option<String>, Query, description = "K=V,K2=V2"), ("connected" = Option<bool>, Query, description = "Only (dis)connected"), ("after" = Option<String>, Query, description = "The page after this id"), ("limit" = Option<usize>, Query, description = "Per page (default 100)")), responses((status = 200, description = "A page of gateways and a summary", body = Object), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn fleet(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<FleetQuery>, QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|e| bad_query(e.body_text()))?;
    let selector = parse_selector(query.label.as_deref().unwrap_or(""))?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let store = shared.store.clone();
    let all = blocking(move || store.gateways()).await?;
    let selected: Vec<&GatewayRecord> = all
        .iter()
        .filter(|g| matches(&selector, &g.labels))
        .filter(|g| {
            query
                .connected
                .is_none_or(|c| shared.presence(&g.id).connected == c)
        })
        .collect();
    let (mut connected, mut backlog, mut lost) = (0, 0u64, 0u64);
    for g in &selected {
        let presence = shared.presence(&g.id);
        connected += usize::from(presence.connected);
        backlog += g
            .outbox_last
            .max(presence.outbox_last)
            .saturating_sub(g.last_change);
        lost += g.lost_at_edge;
    }
    let page: Vec<JsonValue> = selected
        .iter()
        .filter(|g| {
            query
                .after
                .as_ref()
                .is_none_or(|a| g.id.as_str() > a.as_str())
        })
        .take(limit)
        .map(|g| gateway_json(&shared, g))
        .collect();
    let next = (page.len() == limit)
        .then(|| {
            page.last()
                .and_then(|g| g["id"].as_str())
                .map(str::to_string)
        })
        .flatten()
        .filter(|last| selected.last().is_some_and(|g| g.id != *last));
    Ok(Json(json!({
        "gateways": page,
        "next": next,
        "summary": {
            "gateways": selected.len(),
            "connected": connected,
            "backlog": backlog,
            "lost_at_edge": lost,
            "replicas": shared.replicas.live(),
        },
    })))
}

/// Sets a gateway's labels (all of them).
#[utoipa::path(put, operation_id = "putLabels", path = "/api/v1/gateways/{gw}/labels", tag = "fleet", params(("gw" = String, Path, description = "Gateway id")), request_body(content = Object, description = "{KEY: VALUE}"), responses((status = 200, description = "The labels", body = Object), (status = 404, description = "No such gateway (never connected) or item", body = ErrorBody), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn put_labels(
    State(shared): State<Arc<Shared>>,
    Path(gw): Path<String>,
    principal: Option<Extension<Principal>>,
    body: Result<Json<JsonValue>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(|e| bad_body(e.body_text()))?;
    let labels = labels_of(body)?;
    known(&shared, &gw).await?;
    let store = shared.store.clone();
    let (g, l) = (gw.clone(), labels.clone());
    blocking(move || store.set_labels(&g, &l)).await?;
    audited(
        &shared,
        principal,
        "labels",
        json!({"gateway": gw, "labels": labels}),
    )
    .await?;
    Ok(Json(json!({"gateway": gw, "labels": labels})))
}

/// Labels (or a selector): names as config names, values short strings.
fn labels_of(body: JsonValue) -> Result<BTreeMap<String, String>, ApiError> {
    let JsonValue::Object(map) = body else {
        return Err(bad_body(
            "labels are a JSON object: {\"KEY\": \"VALUE\", ...}",
        ));
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        ferrite_models::units::check_name(&k).map_err(|e| bad_body(format!("label `{k}`: {e}")))?;
        let JsonValue::String(v) = v else {
            return Err(bad_body(format!("label `{k}`: the value must be a string")));
        };
        if v.is_empty() || v.len() > 128 || v.contains(',') || v.contains('=') {
            return Err(bad_body(format!(
                "label `{k}`: the value must be 1 to 128 characters, without `,` or `=`"
            )));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// Starts a rollout: a desired patch or a config bundle to every gateway
/// the selector matches.
#[utoipa::path(post, operation_id = "postRollout", path = "/api/v1/rollouts", tag = "fleet", request_body(content = Object, description = "{selector, desired | config}"), responses((status = 202, description = "Sent", body = Object), (status = 422, description = "The selector matches no gateway", body = ErrorBody), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn post_rollout(
    State(shared): State<Arc<Shared>>,
    principal: Option<Extension<Principal>>,
    body: Result<Json<JsonValue>, JsonRejection>,
) -> Result<(StatusCode, Json<JsonValue>), ApiError> {
    let Json(mut body) = body.map_err(|e| bad_body(e.body_text()))?;
    let Some(selector) = body.get_mut("selector").map(JsonValue::take) else {
        return Err(bad_body(
            "a rollout needs a `selector` ({} for every gateway)",
        ));
    };
    let selector = labels_of(selector)?;
    enum What {
        Desired(String, BTreeMap<String, ferrite_models::Value>),
        Config(Vec<crate::wire::ConfigDocument>),
    }
    let (desired, config) = (
        body.get_mut("desired").map(JsonValue::take),
        body.get_mut("config").map(JsonValue::take),
    );
    let what = match (desired, config) {
        (Some(mut desired), None) => {
            let device = desired
                .get("device")
                .and_then(JsonValue::as_str)
                .ok_or_else(|| bad_body("`desired.device` is missing"))?
                .to_string();
            ferrite_models::units::check_name(&device)
                .map_err(|e| bad_body(format!("device {e}")))?;
            let properties = desired
                .get_mut("properties")
                .map(JsonValue::take)
                .ok_or_else(|| bad_body("`desired.properties` is missing"))?;
            What::Desired(device, properties_of(properties)?)
        }
        (None, Some(config)) => What::Config(bundle_documents(config)?),
        _ => {
            return Err(bad_body(
                "a rollout carries either `desired` ({\"device\", \"properties\"}) or `config` (a bundle)",
            ));
        }
    };
    let store = shared.store.clone();
    let all = blocking(move || store.gateways()).await?;
    let targets: Vec<String> = all
        .into_iter()
        .filter(|g| matches(&selector, &g.labels))
        .map(|g| g.id)
        .collect();
    if targets.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_gateways",
            "the selector matches no gateway",
        ));
    }
    if targets.len() > MAX_ROLLOUT {
        return Err(bad_body(format!(
            "the selector matches {} gateways; at most {MAX_ROLLOUT} per rollout",
            targets.len()
        )));
    }
    // Each gateway's version is recorded before its message goes out; a
    // gateway offline now gets it at its next Hello.
    let mut versions = BTreeMap::new();
    let (kind, detail) = match &what {
        What::Desired(device, properties) => {
            for gw in &targets {
                let patch = shared.send_desired(gw, device, properties.clone()).await?;
                versions.insert(gw.clone(), patch.version);
            }
            (
                "desired",
                json!({"device": device, "properties": properties}),
            )
        }
        What::Config(documents) => {
            for gw in &targets {
                let bundle = shared.send_config(gw, documents.clone()).await?;
                versions.insert(gw.clone(), bundle.version);
            }
            ("config", json!({"documents": documents.len()}))
        }
    };
    let actor = principal
        .as_ref()
        .map_or_else(|| "local".to_string(), |p| p.name.clone());
    let record = json!({
        "kind": kind,
        "selector": selector,
        "detail": detail,
        "created": rfc3339(SystemTime::now()),
        "actor": actor,
        "versions": versions,
    });
    let store = shared.store.clone();
    let stored = record.clone();
    let id = blocking(move || store.put_rollout(&stored)).await?;
    audited(
        &shared,
        principal,
        "rollout",
        json!({"rollout": id, "kind": kind, "selector": record["selector"], "gateways": targets.len()}),
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "kind": kind, "gateways": targets.len()})),
    ))
}

/// Rollouts, newest first (`limit`, default 20), with their summaries.
#[utoipa::path(get, operation_id = "rollouts", path = "/api/v1/rollouts", tag = "fleet", params(("limit" = Option<usize>, Query, description = "Newest (default 20)")), responses((status = 200, description = "Rollouts with summaries", body = Object), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn rollouts(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<BTreeMap<String, usize>>, QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|e| bad_query(e.body_text()))?;
    let limit = query.get("limit").copied().unwrap_or(20).min(1000);
    let store = shared.store.clone();
    let list = blocking(move || store.rollouts(limit)).await?;
    let mut out = Vec::new();
    for (id, record) in list {
        let mut view = rollout_state(&shared, id, record).await?;
        if let Some(map) = view.as_object_mut() {
            map.remove("gateways");
        }
        out.push(view);
    }
    Ok(Json(json!({"rollouts": out})))
}

/// One rollout, per gateway.
#[utoipa::path(get, operation_id = "rollout", path = "/api/v1/rollouts/{id}", tag = "fleet", params(("id" = u64, Path, description = "Rollout id")), responses((status = 200, description = "Per gateway", body = Object), (status = 404, description = "No such gateway (never connected) or item", body = ErrorBody), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn rollout(State(shared): State<Arc<Shared>>, Path(id): Path<u64>) -> ApiResult {
    let store = shared.store.clone();
    let Some(record) = blocking(move || store.rollout(id)).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_rollout",
            format!("no rollout {id}"),
        ));
    };
    Ok(Json(rollout_state(&shared, id, record).await?))
}

/// A gateway's state in a rollout, from its reports.
fn gateway_state(
    kind: &str,
    device: &str,
    version: u64,
    report_version: Option<u64>,
    report_ok: bool,
    applied_version: u64,
) -> &'static str {
    match (kind, report_version) {
        (_, Some(v)) if v == version && report_ok => "applied",
        (_, Some(v)) if v == version => "rejected",
        ("desired", _) if applied_version >= version && !device.is_empty() => {
            // A later patch (of another device, or this one) was reported.
            "applied"
        }
        (_, Some(v)) if v > version => "superseded",
        _ => "pending",
    }
}

async fn rollout_state(
    shared: &Arc<Shared>,
    id: u64,
    record: JsonValue,
) -> Result<JsonValue, ApiError> {
    let kind = record["kind"].as_str().unwrap_or("").to_string();
    let device = record["detail"]["device"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let versions: BTreeMap<String, u64> =
        serde_json::from_value(record["versions"].clone()).unwrap_or_default();
    let store = shared.store.clone();
    let (k, d) = (kind.clone(), device.clone());
    let states = blocking(move || {
        let mut out = Vec::new();
        for (gw, version) in versions {
            let (report_version, ok, errors, applied) = if k == "desired" {
                let twin = store.twin(&gw, &d)?;
                let applied = store.applied_version(&gw)?;
                match twin.last_report {
                    Some(r) => {
                        let errors: Vec<String> =
                            r.errors.iter().map(|(p, e)| format!("{p}: {e}")).collect();
                        (Some(r.version), r.errors.is_empty(), errors, applied)
                    }
                    None => (None, false, Vec::new(), applied),
                }
            } else {
                match store.config_report(&gw)? {
                    Some(r) => (Some(r.version), r.applied, r.errors, 0),
                    None => (None, false, Vec::new(), 0),
                }
            };
            let state = gateway_state(&k, &d, version, report_version, ok, applied);
            out.push((gw, version, state, errors));
        }
        Ok(out)
    })
    .await?;
    let mut summary: BTreeMap<&str, usize> = ["pending", "applied", "rejected", "superseded"]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    let gateways: Vec<JsonValue> = states
        .iter()
        .map(|(gw, version, state, errors)| {
            *summary.entry(state).or_default() += 1;
            json!({"gateway": gw, "version": version, "state": state, "errors": errors})
        })
        .collect();
    Ok(json!({
        "id": id,
        "kind": kind,
        "selector": record["selector"],
        "detail": record["detail"],
        "created": record["created"],
        "actor": record["actor"],
        "summary": summary,
        "gateways": gateways,
    }))
}

/// `GET /metrics`.
#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "fleet", responses((status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text"), (status = 400, description = "A bad body or query", body = ErrorBody), (status = 401, description = "No or an unknown token", body = ErrorBody), (status = 403, description = "A role too low", body = ErrorBody)))]
pub(crate) async fn metrics(
    State(shared): State<Arc<Shared>>,
) -> Result<impl IntoResponse, ApiError> {
    let store = shared.store.clone();
    let gateways = blocking(move || store.gateways()).await?;
    let body = super::metrics::render(&shared, &gateways)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_every_pair() {
        let labels: BTreeMap<String, String> = [("site", "north"), ("line", "2")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let yes = parse_selector("site=north,line=2").map_err(|e| format!("{e:?}"));
        assert!(yes.is_ok_and(|s| matches(&s, &labels)));
        let no = parse_selector("site=south").map_err(|e| format!("{e:?}"));
        assert!(no.is_ok_and(|s| !matches(&s, &labels)));
        assert!(parse_selector("").is_ok_and(|s| matches(&s, &labels)));
        assert!(parse_selector("site").is_err());
    }

    #[test]
    fn a_gateway_state_follows_its_reports() {
        assert_eq!(gateway_state("config", "", 3, None, false, 0), "pending");
        assert_eq!(gateway_state("config", "", 3, Some(2), true, 0), "pending");
        assert_eq!(gateway_state("config", "", 3, Some(3), true, 0), "applied");
        assert_eq!(
            gateway_state("config", "", 3, Some(3), false, 0),
            "rejected"
        );
        assert_eq!(
            gateway_state("config", "", 3, Some(4), true, 0),
            "superseded"
        );
        assert_eq!(
            gateway_state("desired", "d", 3, Some(3), false, 3),
            "rejected"
        );
        assert_eq!(
            gateway_state("desired", "d", 3, Some(2), true, 4),
            "applied"
        );
        assert_eq!(gateway_state("desired", "d", 3, None, false, 2), "pending");
    }
}
