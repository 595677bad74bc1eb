//! The gateways the control plane knows: `[[gateways]]` in its config, each
//! with an id and the file holding its secret. The embedded broker's guard
//! asks [`Gateways::authenticate`] who a login is; `ferrite-cloud gateway
//! add` enrols one and `ferrite-cloud gateway acl` writes the same rules
//! for Mosquitto.
//!
//! Secrets are kept as SHA-256 digests and compared in constant time. The
//! table is read again when the config file changes, so a gateway enrolled
//! while the control plane runs can connect without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use ferrite_models::tokens::digest;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{CloudConfig, CloudError};

/// `[[gateways]]`: one gateway allowed on the link.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GatewayEntry {
    /// The gateway's id (its `[gateway] id`), also its MQTT username.
    pub id: String,
    /// The file holding its secret (its MQTT password). A gateway without
    /// one logs in by client certificate on an external broker only.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The subject of its client certificate, for an external broker with
    /// `use_subject_as_username` (the ACL then names this subject).
    #[serde(default)]
    pub certificate_subject: Option<String>,
}

impl GatewayEntry {
    /// Checks the id (a config name: letters, digits, `-`, `_`, `.`) and
    /// that the gateway has some way to log in.
    pub fn check(&self) -> Result<(), String> {
        ferrite_models::units::check_name(&self.id)
            .map_err(|e| format!("[[gateways]] id `{}`: {e}", self.id))?;
        if self.password_file.is_none() && self.certificate_subject.is_none() {
            return Err(format!(
                "[[gateways]] `{}`: needs password_file or certificate_subject",
                self.id
            ));
        }
        Ok(())
    }
}

/// One known gateway, its secret as a digest.
#[derive(Clone)]
struct Known {
    id: String,
    secret: Option<[u8; 32]>,
}

/// What was last read from the config.
struct Loaded {
    modified: Option<SystemTime>,
    known: Vec<Known>,
}

/// The gateways allowed on the link.
pub struct Gateways {
    /// The config file, read again when it changes (none: fixed).
    source: Option<PathBuf>,
    loaded: Mutex<Loaded>,
}

impl Gateways {
    /// The gateways of `config`, their secrets read now: an unreadable or
    /// empty secret file is an error.
    pub fn load(config: &CloudConfig) -> Result<Gateways, CloudError> {
        let known = read_secrets(&config.gateways)?;
        let modified = config.source.as_deref().and_then(modified);
        Ok(Gateways {
            source: config.source.clone(),
            loaded: Mutex::new(Loaded { modified, known }),
        })
    }

    /// Whether any gateway is configured. Without one, the link takes
    /// anyone (loopback only).
    pub fn enforcing(&self) -> bool {
        self.reload();
        !self.lock().known.is_empty()
    }

    /// The gateway a login belongs to, if it is one of ours. Every
    /// gateway's digest is compared, so the time taken tells nothing.
    pub fn authenticate(&self, username: &str, password: &str) -> Option<String> {
        self.reload();
        let presented = digest(password);
        let loaded = self.lock();
        let mut found = None;
        for known in &loaded.known {
            let Some(secret) = &known.secret else {
                continue;
            };
            let matches = bool::from(secret.ct_eq(&presented)) && known.id == username;
            if matches {
                found = Some(known.id.clone());
            }
        }
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the table again if the config file changed; a config that no
    /// longer reads keeps the table as it was (and says so).
    fn reload(&self) {
        let Some(source) = &self.source else {
            return;
        };
        let now = modified(source);
        if now == self.lock().modified {
            return;
        }
        let fresh = CloudConfig::load(source).and_then(|c| read_secrets(&c.gateways));
        let mut loaded = self.lock();
        loaded.modified = now;
        match fresh {
            Ok(known) => {
                tracing::info!(
                    "{} changed: {} gateway(s) enrolled",
                    source.display(),
                    known.len()
                );
                loaded.known = known;
            }
            Err(e) => tracing::warn!("{e}; keeping the gateways as they were"),
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_secrets(entries: &[GatewayEntry]) -> Result<Vec<Known>, CloudError> {
    entries
        .iter()
        .map(|entry| {
            entry.check().map_err(CloudError::Config)?;
            let secret = match &entry.password_file {
                Some(path) => Some(digest(&read_secret(path)?)),
                None => None,
            };
            Ok(Known {
                id: entry.id.clone(),
                secret,
            })
        })
        .collect()
}

/// A secret file's secret ([`ferrite_models::tokens::read_secret`]), its
/// error as a config error.
pub fn read_secret(path: &Path) -> Result<String, CloudError> {
    ferrite_models::tokens::read_secret(path).map_err(|e| CloudError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(dir: &Path, entries: &[(&str, &str)]) -> CloudConfig {
        let mut text = String::new();
        for (id, secret) in entries {
            std::fs::write(dir.join(format!("{id}.secret")), format!("{secret}\n"))
                .expect("secret");
            text.push_str(&format!(
                "[[gateways]]\nid = \"{id}\"\npassword_file = \"{id}.secret\"\n"
            ));
        }
        let path = dir.join("cloud.toml");
        std::fs::write(&path, text).expect("config");
        CloudConfig::load(&path).expect("load")
    }

    #[test]
    fn a_login_is_its_own_gateway_or_nobody() {
        let dir = tempfile::tempdir().expect("dir");
        let config = config_with(dir.path(), &[("a", "secret-a"), ("b", "secret-b")]);
        let gateways = Gateways::load(&config).expect("gateways");
        assert!(gateways.enforcing());
        assert_eq!(gateways.authenticate("a", "secret-a").as_deref(), Some("a"));
        assert_eq!(gateways.authenticate("b", "secret-b").as_deref(), Some("b"));
        // Another gateway's secret, a wrong one, an unknown name.
        assert_eq!(gateways.authenticate("a", "secret-b"), None);
        assert_eq!(gateways.authenticate("a", "secret-"), None);
        assert_eq!(gateways.authenticate("c", "secret-a"), None);
        assert_eq!(gateways.authenticate("", ""), None);
    }

    #[test]
    fn an_enrolment_while_running_is_seen_and_a_broken_config_keeps_the_old_table() {
        let dir = tempfile::tempdir().expect("dir");
        let config = config_with(dir.path(), &[]);
        let gateways = Gateways::load(&config).expect("gateways");
        assert!(!gateways.enforcing());
        // mtime granularity: make sure the rewrite is seen as a change.
        std::thread::sleep(std::time::Duration::from_millis(20));
        config_with(dir.path(), &[("a", "s")]);
        assert_eq!(gateways.authenticate("a", "s").as_deref(), Some("a"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("cloud.toml"), "[[gateways]\n").expect("write");
        assert_eq!(gateways.authenticate("a", "s").as_deref(), Some("a"));
    }

    #[test]
    fn bad_entries_say_why() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("cloud.toml");
        std::fs::write(&path, "[[gateways]]\nid = \"a/b\"\npassword_file = \"x\"\n").expect("w");
        let e = Gateways::load(&CloudConfig::load(&path).expect("load"))
            .err()
            .expect("bad id");
        assert!(e.to_string().contains("a/b"), "{e}");
        std::fs::write(&path, "[[gateways]]\nid = \"a\"\n").expect("w");
        let e = Gateways::load(&CloudConfig::load(&path).expect("load"))
            .err()
            .expect("no login");
        assert!(e.to_string().contains("password_file"), "{e}");
        std::fs::write(
            &path,
            "[[gateways]]\nid = \"a\"\npassword_file = \"missing\"\n",
        )
        .expect("w");
        let e = Gateways::load(&CloudConfig::load(&path).expect("load"))
            .err()
            .expect("missing");
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
