//! Who may call the control plane's REST API: `[[api.tokens]]` in its
//! config, the same tokens as the gateway's (`ferrite_models::tokens`:
//! SHA-256 digests only, compared in constant time).
//!
//! - `read` may GET;
//! - `write` may also set desired state
//!   (`PUT /api/v1/gateways/{gw}/devices/{dev}/desired`);
//! - `admin` may do everything else (configuration bundles).
//!
//! 401 without a token or with an unknown one, 403 for a role too low, both
//! as `{"error":{"code","message"}}`. Without tokens the API takes anyone,
//! and the control plane serves it on loopback only.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferrite_models::config::{ApiTls, ApiToken, Role};
pub use ferrite_models::tokens::{Principal, Tokens};
use serde::Deserialize;

use super::api::ApiError;

/// `[api]` of the control plane's config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudApi {
    /// Bearer tokens. Without any, the API serves loopback only.
    #[serde(default)]
    pub tokens: Vec<ApiToken>,
    /// `[api.tls]`: HTTPS, as on the gateway (PEM chain and key).
    #[serde(default)]
    pub tls: Option<ApiTls>,
}

/// The one route the `write` role opens.
pub const DESIRED_PATH: &str = "/api/v1/gateways/{gw}/devices/{dev}/desired";

/// The role a call needs.
pub fn required_role(method: &Method, route: Option<&str>) -> Role {
    if method == Method::GET || method == Method::HEAD {
        Role::Read
    } else if method == Method::PUT && route == Some(DESIRED_PATH) {
        Role::Write
    } else {
        Role::Admin
    }
}

/// Middleware (a route layer, so the matched route is known): checks the
/// bearer token and its role, and hands the [`Principal`] to the handler.
pub async fn require(
    State(tokens): State<Arc<Tokens>>,
    route: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    if !tokens.enabled() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(principal) = presented.and_then(|t| tokens.holder(t)).cloned() else {
        let message = if presented.is_some() {
            "unknown token"
        } else {
            "this API needs `Authorization: Bearer <token>`"
        };
        let mut response =
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(r#"Bearer realm="ferrite-cloud""#),
        );
        return response;
    };
    let needed = required_role(request.method(), route.as_ref().map(MatchedPath::as_str));
    if principal.role < needed {
        let message = format!(
            "token `{}` has role {}; {} {} needs role {}",
            principal.name,
            principal.role.name(),
            request.method(),
            request.uri().path(),
            needed.name()
        );
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_method_and_the_route() {
        assert_eq!(
            required_role(&Method::GET, Some("/api/v1/gateways")),
            Role::Read
        );
        assert_eq!(required_role(&Method::PUT, Some(DESIRED_PATH)), Role::Write);
        assert_eq!(
            required_role(&Method::PUT, Some("/api/v1/gateways/{gw}/config")),
            Role::Admin
        );
        assert_eq!(
            required_role(&Method::POST, Some(DESIRED_PATH)),
            Role::Admin
        );
        assert_eq!(required_role(&Method::DELETE, None), Role::Admin);
    }
}
