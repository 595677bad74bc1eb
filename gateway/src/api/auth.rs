//! Who may call the API: bearer tokens from `[[api.tokens]]`, each with a
//! role.
//!
//! - The config holds no token, only its SHA-256 (`token_sha256`) or the path
//!   of a file holding it (`token_file`, hashed as it is read). A presented
//!   token is hashed and compared in constant time against every one.
//! - Roles: `read` may GET; `write` may also write device properties
//!   ([`WRITE_PATH`]); `admin` may do everything else (rules, config).
//! - Without tokens there is no authentication, and the gateway refuses to
//!   serve anything but loopback (`runtime`, `ferrite check`).
//!
//! A refused call gets 401 (no token, or an unknown one) or 403 (a known
//! token whose role is too low), and a token is never logged.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferrite_models::config::Role;
pub use ferrite_models::tokens::{Principal, TokenError, Tokens, sha256_hex};

use super::error::ApiError;

/// The one route that the `write` role opens, for PUT.
pub const WRITE_PATH: &str = "/api/v1/devices/{id}/properties/{name}";

/// The role a call needs: GET (and HEAD) read; a PUT on [`WRITE_PATH`]
/// writes; anything else changes the gateway itself.
pub fn required_role(method: &Method, route: Option<&str>) -> Role {
    if method == Method::GET || method == Method::HEAD {
        Role::Read
    } else if method == Method::PUT && route == Some(WRITE_PATH) {
        Role::Write
    } else {
        Role::Admin
    }
}

/// Middleware (as a route layer, so that the matched route is known):
/// authenticates the call and checks its role, then hands the
/// [`Principal`] on to the handler.
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
    let Some(presented) = presented else {
        return unauthorized("this API needs `Authorization: Bearer <token>`", false);
    };
    let Some(principal) = tokens.holder(presented).cloned() else {
        return unauthorized("unknown token", true);
    };
    let needed = required_role(request.method(), route.as_ref().map(MatchedPath::as_str));
    if principal.role < needed {
        let message = format!(
            "token `{}` has role {}; {} {} needs role {}",
            principal.name,
            role_name(principal.role),
            request.method(),
            request.uri().path(),
            role_name(needed)
        );
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

fn unauthorized(message: &str, invalid: bool) -> Response {
    let challenge = if invalid {
        r#"Bearer realm="ferrite", error="invalid_token""#
    } else {
        r#"Bearer realm="ferrite""#
    };
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(challenge),
    );
    response
}

/// A role as the config spells it.
pub fn role_name(role: Role) -> &'static str {
    role.name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_method_and_the_route() {
        assert_eq!(
            required_role(&Method::GET, Some("/api/v1/rules")),
            Role::Read
        );
        assert_eq!(required_role(&Method::PUT, Some(WRITE_PATH)), Role::Write);
        assert_eq!(
            required_role(&Method::PUT, Some("/api/v1/rules/{name}")),
            Role::Admin
        );
        assert_eq!(required_role(&Method::POST, Some(WRITE_PATH)), Role::Admin);
        assert_eq!(required_role(&Method::DELETE, None), Role::Admin);
    }
}
