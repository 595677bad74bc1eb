//! The control plane's REST routes and their OpenAPI 3.1 document, from
//! the handlers' annotations (utoipa, as on the gateway), served at
//! `/api/v1/openapi.json` (open, like `/healthz` and the fleet page).

use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::{Json, Router};
use utoipa::OpenApi;

use super::http::{ErrorBody, ErrorDetail};
use super::plane::Shared;
use super::tokens::Tokens;
use super::{api, fleet};

/// Largest PUT body.
const MAX_BODY: usize = 64 * 1024;

/// Largest configuration bundle (a gateway's every model, device and rule).
const MAX_CONFIG: usize = 4 * 1024 * 1024;

/// The router: `/api/v1` behind `tokens`.
pub fn router(shared: Arc<Shared>, tokens: Arc<Tokens>) -> Router {
    let served = Arc::new(served_document(tokens.enabled()));
    let api = Router::new()
        .route("/api/v1/gateways", get(api::gateways))
        .route("/api/v1/gateways/{gw}/devices", get(api::devices))
        .route("/api/v1/gateways/{gw}/events", get(api::events))
        .route("/api/v1/gateways/{gw}/devices/{dev}", get(api::twin))
        .route(
            "/api/v1/gateways/{gw}/devices/{dev}/desired",
            put(api::desired),
        )
        .route(
            "/api/v1/gateways/{gw}/config",
            put(api::put_config)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_CONFIG))
                .get(api::get_config),
        )
        .route(
            "/api/v1/gateways/{gw}/devices/{dev}/properties/{p}/history",
            get(api::history),
        )
        .route("/api/v1/stats", get(api::stats))
        .route("/api/v1/fleet", get(fleet::fleet))
        .route("/api/v1/gateways/{gw}/labels", put(fleet::put_labels))
        .route(
            "/api/v1/rollouts",
            post(fleet::post_rollout)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_CONFIG))
                .get(fleet::rollouts),
        )
        .route("/api/v1/rollouts/{id}", get(fleet::rollout))
        .route("/metrics", get(fleet::metrics))
        .route("/api/v1/audit", get(api::audit))
        .route_layer(axum::middleware::from_fn_with_state(
            super::tokens::bearer(tokens),
            crate::serve::require_bearer,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/api/v1/openapi.json",
            get(move || async move { Json(served.as_ref().clone()) }),
        )
        .merge(super::page::routes())
        .merge(api)
        .layer(axum::middleware::from_fn(crate::origin::same_origin_writes))
        // Outermost: the framework's own errors in the error shape too.
        .layer(axum::middleware::from_fn(crate::api_shape::json_errors))
}

/// The document as this control plane serves it: bearer auth declared only
/// with tokens, and the errors every operation can answer
/// ([`crate::api_shape::exact_document`]). Name parameters keep their plain
/// string schema here: the control plane checks names where it stores
/// them, not on every path.
pub fn served_document(tokens: bool) -> serde_json::Value {
    let rules = crate::api_shape::DocumentRules {
        tokens,
        open_paths: &["/healthz", "/api/v1/openapi.json"],
        name_params: &[],
        same_origin_writes: true,
        error_schema: "ErrorBody",
    };
    crate::api_shape::exact_document(&document(), &rules)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferrite-cloud",
        description = "Ferrite's control plane: gateways, device twins, configuration bundles, fleet operations (docs/sync.md)."
    ),
    paths(
        api::gateways,
        api::devices,
        api::twin,
        api::desired,
        api::put_config,
        api::get_config,
        api::history,
        api::stats,
        api::audit,
        api::events,
        fleet::fleet,
        fleet::put_labels,
        fleet::post_rollout,
        fleet::rollouts,
        fleet::rollout,
        fleet::metrics,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Bearer)
)]
struct ApiDoc;

/// Every operation takes `Authorization: Bearer TOKEN` when the API has
/// tokens.
struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented_once() {
        let doc = super::document();
        let operations: usize = doc
            .paths
            .paths
            .values()
            .map(|item| {
                [&item.get, &item.put, &item.post, &item.delete, &item.patch]
                    .iter()
                    .filter(|o| o.is_some())
                    .count()
            })
            .sum();
        // The router's /api/v1 and /metrics routes (api.rs), one each.
        assert_eq!(operations, 16);
        assert!(doc.paths.paths.contains_key("/api/v1/rollouts/{id}"));
    }
}
