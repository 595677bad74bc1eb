//! API bearer tokens, shared by the gateway's REST API and `ferrite-cloud`'s:
//! the config holds no token, only its SHA-256 (`token_sha256`) or the path
//! of a file holding it (`token_file`, hashed as it is read). A presented
//! token is hashed and compared in constant time against every one.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ApiToken, Role};

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
                    let name = token.name.clone();
                    let secret = read_secret(&path).map_err(|e| match e {
                        SecretFileError::Read(path, source) => {
                            TokenError::File { name, path, source }
                        }
                        SecretFileError::Empty(path) => TokenError::Empty { name, path },
                    })?;
                    digest(&secret)
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

/// A secret's SHA-256: what is kept in its place (API tokens here, the
/// control plane's gateway secrets) and compared in constant time.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Why a secret file gave no secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// It could not be read.
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    /// It holds nothing but a line ending.
    #[error("{0} is empty")]
    Empty(String),
}

/// The secret in a file (a token, a password): its text without the
/// trailing line ending; an empty one is an error.
pub fn read_secret(path: &Path) -> Result<String, SecretFileError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SecretFileError::Read(shown(), e))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(SecretFileError::Empty(shown()));
    }
    Ok(secret.to_string())
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
}
