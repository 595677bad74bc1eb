//! The client side of a connection: the gateway's certificate, trusted
//! server certificates, endpoint selection and the user identity.
//!
//! PKI layout (async-opcua's), under `data_dir/pki`:
//! - `own/cert.der`, `private/private.pem`: the gateway's application
//!   instance certificate, created on first run;
//! - `trusted/`: server certificates the gateway trusts;
//! - `rejected/`: server certificates it refused. An operator who checked
//!   one moves it to `trusted/` (or names it in the device's
//!   `server_certificate`). Nothing is trusted on first use.
//! - `devices/NAME/`: for a device that pins its server's certificate
//!   (`server_certificate`), a PKI folder of its own: copies of the
//!   gateway's certificate and key, the shared `trusted/`, and the pin. The
//!   pin trusts that device's server only; it never enters the shared
//!   `trusted/`, so one device file cannot make every device trust a server.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferrite_models::device::{OpcuaPolicy, OpcuaSecurity};
use opcua::client::transport::TcpConnector;
use opcua::client::{Client, ClientBuilder, IdentityToken, Session, SessionEventLoop};
use opcua::crypto::{CertificateStore, SecurityPolicy, X509};
use opcua::types::{EndpointDescription, MessageSecurityMode, UserTokenType};

use super::Device;

/// The most elements of one array the client decodes.
const MAX_ARRAY: usize = 100_000;

/// How long the server keeps the gateway's session (and so its
/// subscriptions' queues) once the connection is gone: an outage shorter
/// than this loses no change the server's queues hold.
pub(super) const SESSION_TIMEOUT_MS: u32 = 120_000;

/// The gateway's OPC UA application URI; it is also in its certificate.
const APPLICATION_URI: &str = "urn:ferrite:gateway";

/// A device's two clients, sharing its PKI folder.
pub(super) struct Clients {
    /// Asks for the endpoints: once per call, no retries, so that the
    /// session task sees why a first connect fails.
    discovery: Client,
    /// Runs the sessions: it reconnects a lost session by itself
    /// (reactivating it where the server still has it), forever, with a
    /// backoff from 0.5 s to 15 s. Taking the subscriptions back is the
    /// session task's (see `resume`), so the library's own re-creation is
    /// off.
    sessions: Client,
}

/// The clients for `device`: its timeouts, the gateway's certificate, and
/// no trust on first use.
pub(super) fn client(device: &Device, pki: &Path) -> Result<Clients, String> {
    let discovery = builder(device, pki)
        .session_retry_limit(0)
        .client()
        .map_err(|errors| errors.join("; "))?;
    let sessions = builder(device, pki)
        .session_retry_limit(-1)
        .session_retry_initial(Duration::from_millis(500))
        .session_retry_max(Duration::from_secs(15))
        .recreate_subscriptions(false)
        .session_timeout(SESSION_TIMEOUT_MS)
        .client()
        .map_err(|errors| errors.join("; "))?;
    Ok(Clients {
        discovery,
        sessions,
    })
}

fn builder(device: &Device, pki: &Path) -> ClientBuilder {
    ClientBuilder::new()
        .application_name("Ferrite gateway")
        .application_uri(APPLICATION_URI)
        .product_uri("urn:ferrite")
        .create_sample_keypair(true)
        .pki_dir(pki)
        .trust_server_certs(false)
        .verify_server_certs(true)
        .request_timeout(device.timeout)
        .keep_alive_interval(keep_alive(device))
        .max_failed_keep_alive_count(2)
        // The defaults (1000 array elements) fail a whole Publish response
        // of a busy subscription, which the server then sends again:
        // generous limits here, and a cap per Publish in `session`.
        .max_array_length(MAX_ARRAY)
        .max_message_size(64 * 1024 * 1024)
        .max_chunk_count(1024)
        .session_name(format!("ferrite {}", device.name))
}

/// How often the session checks the server is alive: a hung server is
/// noticed within two of these.
fn keep_alive(device: &Device) -> Duration {
    (device.timeout * 2).max(Duration::from_secs(1))
}

fn policy(device: &Device) -> (SecurityPolicy, MessageSecurityMode) {
    let s = &device.settings;
    let policy = match s.policy.unwrap_or_default() {
        OpcuaPolicy::Basic256Sha256 => SecurityPolicy::Basic256Sha256,
        OpcuaPolicy::Aes128Sha256RsaOaep => SecurityPolicy::Aes128Sha256RsaOaep,
        OpcuaPolicy::Aes256Sha256RsaPss => SecurityPolicy::Aes256Sha256RsaPss,
    };
    match s.security {
        OpcuaSecurity::None => (SecurityPolicy::None, MessageSecurityMode::None),
        OpcuaSecurity::Sign => (policy, MessageSecurityMode::Sign),
        OpcuaSecurity::SignAndEncrypt => (policy, MessageSecurityMode::SignAndEncrypt),
    }
}

/// The identity the device's settings ask for. Files are read at every
/// attempt, so fixing a password file needs no restart.
fn identity(device: &Device) -> Result<IdentityToken, String> {
    let s = &device.settings;
    if let (Some(user), Some(file)) = (&s.username, &s.password_file) {
        let path = device.path(file);
        let password = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))?;
        let password = password.trim_end_matches(['\r', '\n']);
        return Ok(IdentityToken::UserName(user.clone(), password.into()));
    }
    if let (Some(cert), Some(key)) = (&s.user_certificate, &s.user_private_key) {
        return IdentityToken::new_x509_path(device.path(cert), device.path(key))
            .map_err(|e| format!("cannot load the user certificate: {e}"));
    }
    Ok(IdentityToken::Anonymous)
}

fn token_type(identity: &IdentityToken) -> UserTokenType {
    match identity {
        IdentityToken::Anonymous => UserTokenType::Anonymous,
        IdentityToken::UserName(..) => UserTokenType::UserName,
        IdentityToken::X509(..) => UserTokenType::Certificate,
        IdentityToken::IssuedToken(_) => UserTokenType::IssuedToken,
    }
}

/// The PKI folder `device`'s client uses: `shared`, or for a device that
/// pins its server's certificate, `shared/devices/NAME`, made from the
/// shared one (the gateway's certificate and key, made first if need be,
/// and what `shared/trusted` holds).
pub(super) fn pki_for(device: &Device, shared: &Path) -> Result<std::path::PathBuf, String> {
    if device.settings.server_certificate.is_none() {
        return Ok(shared.to_path_buf());
    }
    let store = CertificateStore::new(shared);
    if !store.own_certificate_path().exists() {
        // The first client on the shared folder makes the keypair.
        client(device, shared)?;
    }
    let own = shared.join("devices").join(&*device.name);
    let mine = CertificateStore::new(&own);
    let copy = |from: &Path, to: &Path| {
        let made = to.parent().map_or(Ok(()), std::fs::create_dir_all);
        made.and_then(|()| std::fs::copy(from, to).map(|_| ()))
            .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
    };
    copy(&store.own_certificate_path(), &mine.own_certificate_path())?;
    copy(&store.own_private_key_path(), &mine.own_private_key_path())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(
            mine.own_private_key_path(),
            std::fs::Permissions::from_mode(0o600),
        );
    }
    let trusted = mine.trusted_certs_dir();
    std::fs::create_dir_all(&trusted)
        .map_err(|e| format!("cannot make {}: {e}", trusted.display()))?;
    if let Ok(entries) = std::fs::read_dir(store.trusted_certs_dir()) {
        for entry in entries.flatten() {
            copy(&entry.path(), &trusted.join(entry.file_name()))?;
        }
    }
    Ok(own)
}

/// Copies the device's `server_certificate` into its client's `trusted/`
/// (the device's own PKI folder, see [`pki_for`]), under the name
/// async-opcua looks for.
fn trust_configured(device: &Device, client: &Client) -> Result<(), String> {
    let Some(file) = &device.settings.server_certificate else {
        return Ok(());
    };
    let path = device.path(file);
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("cannot read server_certificate {}: {e}", path.display()))?;
    let cert = X509::from_der(&bytes)
        .or_else(|_| X509::from_pem(&bytes))
        .map_err(|_| format!("{} is not a DER or PEM certificate", path.display()))?;
    let dir = client.certificate_store().read().trusted_certs_dir();
    let target = dir.join(CertificateStore::cert_file_name(&cert));
    if target.exists() {
        return Ok(());
    }
    let der = cert
        .to_der()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&target, der))
        .map_err(|e| format!("cannot write {}: {e}", target.display()))
}

/// A session ready to be driven: polling its event loop connects it.
pub(super) type Opened = (Arc<Session>, SessionEventLoop<TcpConnector>);

/// Why no session could be set up.
pub(super) enum OpenError {
    /// The server did not answer.
    Unreachable(String),
    /// It answered, but the settings or files do not fit it.
    Unusable(String),
}

/// Asks the server for its endpoints, picks the one the device's security
/// asks for, and builds a session on it with the device's identity.
pub(super) async fn open(device: &Device, clients: &Clients) -> Result<Opened, OpenError> {
    let client = &clients.discovery;
    trust_configured(device, client).map_err(OpenError::Unusable)?;
    let identity = identity(device).map_err(OpenError::Unusable)?;
    let url = device.settings.endpoint.as_str();
    let wait = device.timeout.max(Duration::from_secs(1)) * 2;
    let endpoints = tokio::time::timeout(wait, client.get_server_endpoints_from_url(url))
        .await
        .map_err(|_| OpenError::Unreachable(format!("no answer from {url} within {wait:?}")))?
        .map_err(|e| OpenError::Unreachable(format!("cannot get the endpoints of {url}: {e}")))?;
    let endpoint = choose(device, &endpoints, &identity).map_err(OpenError::Unusable)?;
    let client = &clients.sessions;
    client
        .session_builder()
        .connect_to_endpoint_directly(endpoint)
        .and_then(|b| {
            b.user_identity_token(identity)
                .build(client.certificate_store().clone())
        })
        .map_err(|e| OpenError::Unusable(format!("cannot set up a session: {e}")))
}

/// The endpoint matching the device's security mode and policy that accepts
/// its kind of identity. Says what the server offers when none does.
fn choose(
    device: &Device,
    endpoints: &[EndpointDescription],
    identity: &IdentityToken,
) -> Result<EndpointDescription, String> {
    let (policy, mode) = policy(device);
    let url = device.settings.endpoint.as_str();
    let Some(mut endpoint) = Client::find_matching_endpoint(endpoints, url, policy, mode) else {
        let offered: Vec<String> = endpoints
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    SecurityPolicy::from_uri(e.security_policy_uri.as_ref()),
                    e.security_mode
                )
            })
            .collect();
        return Err(format!(
            "{url} offers no endpoint with {policy} {mode}; it offers: {}",
            offered.join(", ")
        ));
    };
    let wanted = token_type(identity);
    let accepts = endpoint
        .user_identity_tokens
        .as_ref()
        .is_some_and(|tokens| tokens.iter().any(|t| t.token_type == wanted));
    if !accepts {
        return Err(format!(
            "the {policy} {mode} endpoint of {url} does not accept {wanted:?} login"
        ));
    }
    // Connect where the device file says, not where the server says it is:
    // behind NAT or a port forward, the server's own idea of its address
    // is often unreachable.
    endpoint.endpoint_url = url.into();
    Ok(endpoint)
}
