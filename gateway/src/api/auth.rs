//! Who may call the API: bearer tokens from `[[api.tokens]]`, each with a
//! role.
//!
//! - The config holds no token, only its SHA-256 (`token_sha256`) or the path
//!   of a file holding it (`token_file`, hashed as it is read). A presented
//!   token is hashed and compared in constant time against every one.
//! - Roles: `read` may GET; `write` may also write device properties
//!   ([`WRITE_PATH`]) and call device methods ([`CALL_PATH`]); `admin` may
//!   do everything else (rules, config).
//! - Without tokens there is no authentication, and the gateway refuses to
//!   serve anything but loopback (`runtime`, `ferrite check`).
//!
//! A refused call gets 401 (no token, or an unknown one) or 403 (a known
//! token whose role is too low), and a token is never logged.

use std::sync::Arc;

use axum::http::Method;
use ferrite_models::config::Role;
pub use ferrite_models::tokens::{Principal, TokenError, Tokens, sha256_hex};

/// The one route that the `write` role opens, for PUT.
pub const WRITE_PATH: &str = "/api/v1/devices/{id}/properties/{name}";

/// The one route that the `write` role opens for POST: a method call.
pub const CALL_PATH: &str = "/api/v1/devices/{id}/methods/{name}";

/// The role a call needs: GET (and HEAD) read; a PUT on [`WRITE_PATH`]
/// and a POST on [`CALL_PATH`] write; anything else changes the gateway itself, and `/api/v1/debug/`
/// (profiles) is for admins too.
pub fn required_role(method: &Method, route: Option<&str>) -> Role {
    if route.is_some_and(|r| r.starts_with("/api/v1/debug/")) {
        // Profiles show the code's inner workings and cost CPU.
        Role::Admin
    } else if method == Method::GET || method == Method::HEAD {
        Role::Read
    } else if (method == Method::PUT && route == Some(WRITE_PATH))
        || (method == Method::POST && route == Some(CALL_PATH))
    {
        Role::Write
    } else {
        Role::Admin
    }
}

/// The bearer-token layer of the gateway's API: [`Tokens`] checked by
/// `ferrite_sync::serve::require_bearer` (shared with `ferrite-cloud`), with
/// the gateway's [`required_role`].
pub fn bearer(tokens: Arc<Tokens>) -> ferrite_sync::serve::Bearer {
    ferrite_sync::serve::Bearer {
        tokens,
        needs: required_role,
        realm: "ferrite",
    }
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
        assert_eq!(required_role(&Method::POST, Some(CALL_PATH)), Role::Write);
        assert_eq!(required_role(&Method::PUT, Some(CALL_PATH)), Role::Admin);
        assert_eq!(required_role(&Method::DELETE, None), Role::Admin);
        assert_eq!(
            required_role(&Method::GET, Some("/api/v1/debug/memory")),
            Role::Admin
        );
    }
}
