//! Enrolment, for operators:
//! - `ferrite-cloud gateway add ID`: a fresh secret in a file of its own
//!   (mode 0600), a `[[gateways]]` entry added to the control plane's
//!   config (a running control plane sees it at the gateway's next
//!   connect), and the `[cloud]` lines to give the gateway.
//! - `ferrite-cloud gateway acl --out DIR`: for an external broker, a
//!   Mosquitto password file (PBKDF2-SHA512, as `mosquitto_passwd` writes
//!   it) and an ACL file with the same rules as the embedded broker's guard:
//!   each gateway publishes under its own `up/` and reads its own `down/`
//!   and the cloud's status; only the control plane writes `down/`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::gateways::{GatewayEntry, read_secret};
use super::{CloudConfig, CloudError, random_hex};
use crate::topics::{CLOUD_STATUS, ROOT};

/// What `gateway add` did.
#[derive(Debug)]
pub struct Enrolled {
    /// The secret's file.
    pub secret_file: PathBuf,
    /// The lines for the gateway's `ferrite.toml`.
    pub gateway_lines: String,
}

/// Enrols `id`: writes its secret to `secrets_dir/ID.secret` (created
/// new, mode 0600; an existing file is an error, never overwritten) and
/// appends its `[[gateways]]` entry to the config at `config_path`
/// (created if missing).
pub fn add(config_path: &Path, secrets_dir: &Path, id: &str) -> Result<Enrolled, CloudError> {
    ferrite_models::units::check_name(id)
        .map_err(|e| CloudError::Config(format!("gateway id: {e}")))?;
    let config = if config_path.exists() {
        CloudConfig::load(config_path)?
    } else {
        CloudConfig::default()
    };
    if config.gateways.iter().any(|g| g.id == id) {
        return Err(CloudError::Config(format!(
            "gateway `{id}` is enrolled already in {}",
            config_path.display()
        )));
    }
    std::fs::create_dir_all(secrets_dir)
        .map_err(|e| CloudError::Config(format!("{}: {e}", secrets_dir.display())))?;
    let secret_file = secrets_dir.join(format!("{id}.secret"));
    write_new_private(&secret_file, &format!("{}\n", random_hex(32)))?;
    let base = config_path.parent().unwrap_or(Path::new("."));
    let shown = secret_file
        .strip_prefix(base)
        .map_or_else(|_| secret_file.clone(), Path::to_path_buf);
    let entry = format!(
        "\n[[gateways]]\nid = {}\npassword_file = {}\n",
        toml_string(id),
        toml_string(&shown.display().to_string())
    );
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config_path)
        .and_then(|mut f| f.write_all(entry.as_bytes()).and_then(|()| f.sync_all()));
    if let Err(e) = appended {
        // Leave nothing half done: the secret goes with the entry.
        let _ = std::fs::remove_file(&secret_file);
        return Err(CloudError::Config(format!(
            "{}: {e}",
            config_path.display()
        )));
    }
    let broker = match &config.broker {
        Some(url) => url.clone(),
        None => format!("mqtt://{}", config.mqtt_listen),
    };
    let (id, broker) = (toml_string(id), toml_string(&broker));
    let gateway_lines = format!(
        "[gateway]\nid = {id}\n\n[cloud]\nbroker = {broker}\nusername = {id}\npassword_file = \"cloud.secret\"   # a copy of {}, mode 0600\n",
        secret_file.display()
    );
    Ok(Enrolled {
        secret_file,
        gateway_lines,
    })
}

/// Creates `path` with `text`, readable by its owner only; refuses to
/// replace a file.
fn write_new_private(path: &Path, text: &str) -> Result<(), CloudError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(|e| CloudError::Config(format!("{}: {e}", path.display())))
}

fn toml_string(s: &str) -> String {
    // A TOML basic string is a JSON string for what names and paths hold.
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// The files `gateway acl` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MosquittoFiles {
    /// `mosquitto.passwd`: one `user:$7$…` line per login.
    pub passwd: String,
    /// `mosquitto.acl`.
    pub acl: String,
}

/// The Mosquitto password and ACL files for `config`: the control plane's
/// own login (`username` and `password_file`, required) with the right to
/// write every gateway's `down/`, and each gateway with its own topics.
pub fn mosquitto(config: &CloudConfig) -> Result<MosquittoFiles, CloudError> {
    let (Some(cloud_user), Some(cloud_password)) = (&config.username, &config.password_file) else {
        return Err(CloudError::Config(
            "the control plane's own login on the broker is needed: set username and password_file in its config".into(),
        ));
    };
    let mut passwd = String::new();
    let mut acl = String::from(
        "# Written by `ferrite-cloud gateway acl`: every gateway may publish under its\n\
         # own up/ and read its own down/ and the cloud's status; only the control\n\
         # plane may write down/. Use with: allow_anonymous false, password_file, acl_file.\n\n",
    );
    let _ = writeln!(
        passwd,
        "{cloud_user}:{}",
        passwd_hash(&read_secret(cloud_password)?)
    );
    let _ = write!(
        acl,
        "# the control plane\nuser {cloud_user}\ntopic read {ROOT}/gw/+/up/#\ntopic write {ROOT}/gw/+/down/#\ntopic readwrite {CLOUD_STATUS}\n"
    );
    for gateway in &config.gateways {
        gateway.check().map_err(CloudError::Config)?;
        let GatewayEntry {
            id,
            password_file,
            certificate_subject,
        } = gateway;
        if id == cloud_user {
            return Err(CloudError::Config(format!(
                "gateway `{id}` has the control plane's username"
            )));
        }
        // check() made sure there is a password file or a subject.
        let user = match password_file {
            Some(file) => {
                let _ = writeln!(passwd, "{id}:{}", passwd_hash(&read_secret(file)?));
                id
            }
            None => certificate_subject.as_ref().unwrap_or(id),
        };
        let _ = write!(
            acl,
            "\n# gateway {id}\nuser {user}\ntopic write {ROOT}/gw/{id}/up/#\ntopic read {ROOT}/gw/{id}/down/#\ntopic read {CLOUD_STATUS}\n"
        );
    }
    Ok(MosquittoFiles { passwd, acl })
}

/// Iterations of PBKDF2, as `mosquitto_passwd` uses.
const PBKDF2_ITERATIONS: u32 = 101;

/// `$7$ITERATIONS$SALT$HASH`: Mosquitto 2's PBKDF2-SHA512 password hash
/// (salt 12 bytes, hash 64, both base64).
fn passwd_hash(password: &str) -> String {
    let mut salt = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
    passwd_hash_with(password, &salt, PBKDF2_ITERATIONS)
}

fn passwd_hash_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut hash = [0u8; 64];
    let rounds = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        rounds,
        salt,
        password.as_bytes(),
        &mut hash,
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("$7${iterations}${}${}", b64.encode(salt), b64.encode(hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_writes_a_private_secret_and_the_entry_and_refuses_twice() {
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("cloud.toml");
        let secrets = dir.path().join("gateways");
        let enrolled = add(&config, &secrets, "gw-01").expect("add");
        let secret = std::fs::read_to_string(&enrolled.secret_file).expect("secret");
        assert_eq!(secret.trim().len(), 64, "{secret}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&enrolled.secret_file)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(enrolled.gateway_lines.contains("username = \"gw-01\""));
        let loaded = CloudConfig::load(&config).expect("config");
        assert_eq!(loaded.gateways.len(), 1);
        assert_eq!(
            loaded.gateways[0].password_file.as_deref(),
            Some(enrolled.secret_file.as_path())
        );
        let gateways = super::super::gateways::Gateways::load(&loaded).expect("gateways");
        assert_eq!(
            gateways.authenticate("gw-01", secret.trim()).as_deref(),
            Some("gw-01")
        );
        // A second enrolment of the same id changes nothing.
        assert!(add(&config, &secrets, "gw-01").is_err());
        assert_eq!(
            std::fs::read_to_string(&enrolled.secret_file).expect("kept"),
            secret
        );
        add(&config, &secrets, "gw-02").expect("another");
        assert_eq!(
            CloudConfig::load(&config).expect("config").gateways.len(),
            2
        );
        assert!(add(&config, &secrets, "../x").is_err());
    }

    #[test]
    fn the_mosquitto_hash_is_pbkdf2_sha512_as_mosquitto_passwd_writes_it() {
        // RFC 6070-style check against an independent PBKDF2-HMAC-SHA512
        // vector (password "password", salt "salt", 1 iteration).
        let line = passwd_hash_with("password", b"salt", 1);
        let hash = line.rsplit('$').next().expect("hash");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(hash)
            .expect("b64");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            hex.starts_with("867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252"),
            "{hex}"
        );
        assert!(line.starts_with("$7$1$c2FsdA==$"), "{line}");
    }
}
