//! The control plane's OpenAPI 3.1 document, from the handlers'
//! annotations (utoipa, as on the gateway), served at
//! `/api/v1/openapi.json` (open, like `/healthz`).

use utoipa::OpenApi;

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

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferrite-cloud",
        description = "Ferrite's control plane: gateways, device twins, configuration bundles, fleet operations (docs/sync.md)."
    ),
    paths(
        super::api::gateways,
        super::api::devices,
        super::api::twin,
        super::api::desired,
        super::api::put_config,
        super::api::get_config,
        super::api::history,
        super::api::stats,
        super::api::audit,
        super::fleet::fleet,
        super::fleet::put_labels,
        super::fleet::post_rollout,
        super::fleet::rollouts,
        super::fleet::rollout,
        super::fleet::metrics,
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
        assert_eq!(operations, 15);
        assert!(doc.paths.paths.contains_key("/api/v1/rollouts/{id}"));
    }
}
