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

use axum::http::Method;
use ferrite_models::config::{ApiTls, ApiToken, Role};
pub use ferrite_models::tokens::{Principal, Tokens};
use serde::Deserialize;

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

/// The bearer-token layer of the control plane's API: the gateway's
/// middleware ([`crate::serve::require_bearer`]) with [`required_role`].
pub fn bearer(tokens: Arc<Tokens>) -> crate::serve::Bearer {
    crate::serve::Bearer {
        tokens,
        needs: required_role,
        realm: "ferrite-cloud",
    }
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
