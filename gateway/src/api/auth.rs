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

use std::path::Path;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferrite_models::config::{ApiToken, Role};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// The one route that the `write` role opens, for PUT.
pub const WRITE_PATH: &str = "/api/v1/devices/{id}/properties/{name}";

/// Who made a call: the name and role of the token it carried. Handlers find
/// it among the request's extensions when the API has tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name from the config.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// The API's tokens, as SHA-256 digests.
#[derive(Default)]
pub struct Tokens {
    known: Vec<([u8; 32], Principal)>,
}

/// A token that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("token `{name}`: cannot read {path}: {source}")]
    File {
        /// Token name.
        name: String,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("token `{name}`: {path} is empty")]
    Empty {
        /// Token name.
        name: String,
        /// The file.
        path: String,
    },
    /// `token_sha256` is not 64 hex digits, or neither or both are given
    /// (`ferrite check` says so first).
    #[error("token `{0}`: needs token_sha256 as 64 hex digits, or a token_file")]
    Digest(String),
}

impl Tokens {
    /// Loads every token; `resolve` turns a configured path into a real one.
    pub fn load(
        tokens: &[ApiToken],
        resolve: &dyn Fn(&Path) -> std::path::PathBuf,
    ) -> Result<Tokens, TokenError> {
        let mut known = Vec::with_capacity(tokens.len());
        for token in tokens {
            let digest = match (&token.token_file, &token.token_sha256) {
                (Some(file), None) => {
                    let path = resolve(file);
                    let text =
                        std::fs::read_to_string(&path).map_err(|source| TokenError::File {
                            name: token.name.clone(),
                            path: path.display().to_string(),
                            source,
                        })?;
                    let secret = text.trim_end_matches(['\r', '\n']);
                    if secret.is_empty() {
                        return Err(TokenError::Empty {
                            name: token.name.clone(),
                            path: path.display().to_string(),
                        });
                    }
                    digest(secret)
                }
                (None, Some(hex)) => {
                    parse_hex(hex).ok_or_else(|| TokenError::Digest(token.name.clone()))?
                }
                _ => return Err(TokenError::Digest(token.name.clone())),
            };
            let principal = Principal {
                name: token.name.clone(),
                role: token.role,
            };
            known.push((digest, principal));
        }
        Ok(Tokens { known })
    }

    /// Whether any token is configured (else the API is open, on loopback).
    pub fn enabled(&self) -> bool {
        !self.known.is_empty()
    }

    /// The holder of `token`, if it is one of ours.
    pub fn holder(&self, token: &str) -> Option<&Principal> {
        let presented = digest(token);
        // Every digest is compared, so the time taken does not tell which
        // (if any) matched.
        let mut found = None;
        for (known, principal) in &self.known {
            if bool::from(known.ct_eq(&presented)) {
                found = Some(principal);
            }
        }
        found
    }
}

/// A token's SHA-256 as `token_sha256` holds it (hex), as
/// `printf %s TOKEN | sha256sum` prints it.
pub fn sha256_hex(token: &str) -> String {
    digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

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
    match role {
        Role::Read => "read",
        Role::Write => "write",
        Role::Admin => "admin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, role: Role, sha: &str) -> ApiToken {
        ApiToken {
            name: name.into(),
            role,
            token_file: None,
            token_sha256: Some(sha.into()),
        }
    }

    #[test]
    fn a_token_is_known_by_its_digest_only() {
        let tokens = Tokens::load(
            &[
                token("viewer", Role::Read, &sha256_hex("s3cret-read")),
                token("ops", Role::Write, &sha256_hex("s3cret-write")),
            ],
            &|p| p.to_path_buf(),
        )
        .expect("load");
        assert_eq!(
            tokens.holder("s3cret-write").map(|p| p.name.as_str()),
            Some("ops")
        );
        assert_eq!(
            tokens.holder("s3cret-read").map(|p| p.role),
            Some(Role::Read)
        );
        assert!(tokens.holder("s3cret").is_none());
        assert!(tokens.holder("").is_none());
        // A known digest, presented as if it were the token, is no token.
        assert!(tokens.holder(&sha256_hex("s3cret-read")).is_none());
    }

    #[test]
    fn a_token_file_is_hashed_as_read_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ops.token"), "abc123\n").expect("write");
        std::fs::write(dir.path().join("empty.token"), "\n").expect("write");
        let from_file = |file: &str| ApiToken {
            name: "ops".into(),
            role: Role::Admin,
            token_file: Some(file.into()),
            token_sha256: None,
        };
        let resolve = |p: &Path| dir.path().join(p);
        let tokens = Tokens::load(&[from_file("ops.token")], &resolve).expect("load");
        assert!(tokens.holder("abc123").is_some(), "the newline is not part");
        let empty = Tokens::load(&[from_file("empty.token")], &resolve);
        assert!(matches!(empty, Err(TokenError::Empty { .. })));
        let missing = Tokens::load(&[from_file("gone.token")], &resolve);
        assert!(matches!(missing, Err(TokenError::File { .. })));
    }

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
