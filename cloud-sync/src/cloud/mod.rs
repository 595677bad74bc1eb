//! `ferrite-cloud`, the control plane: receives gateways' batches, keeps
//! each gateway's history and twin, and sends desired state down.
//!
//! - [`store`]: the [`store::Store`] trait on sled (one process, the
//!   default) or PostgreSQL (a fleet of replicas); one atomic, durable
//!   write per applied batch, moving the gateway's last change from where
//!   the batch continues (so a batch counts once, whichever replica).
//! - [`plane`]: the MQTT side (exactly once by change sequence, Resume and
//!   Ack, desired patches replayed after every Hello), batches applied by
//!   workers in parallel across gateways, in order within one.
//! - [`replicas`]: which replica applies which gateway (rendezvous hashing
//!   over the replicas alive, from their heartbeats in the store).
//! - [`fleet`]: fleet status, labels and rollouts in the API; [`metrics`]:
//!   `GET /metrics`; [`page`]: the fleet page at `/`.
//! - [`api`]: the REST API's twin, config, history and stats handlers,
//!   behind [`tokens`] (bearer tokens with roles); [`http`]: what the
//!   handlers share; [`routes`]: the routes and their OpenAPI document.
//! - [`gateways`]: the gateways enrolled in `[[gateways]]`, who alone may
//!   log in to the embedded broker; [`guard`]: the listener in front of
//!   rumqttd that checks their logins and keeps each to its own topics;
//!   [`enrol`]: `ferrite-cloud gateway add` and `gateway acl` (Mosquitto).
//! - [`start`]: the embedded broker (rumqttd behind the guard) or an
//!   external one, then the rest.

pub mod api;
pub mod enrol;
pub mod fleet;
pub mod gateways;
pub mod guard;
pub mod http;
pub mod metrics;
pub mod page;
pub mod plane;
pub mod replicas;
pub mod routes;
pub mod store;
pub mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::AsyncClient;
use serde::Deserialize;

use crate::link::LinkOptions;
use tokens::Tokens;

/// How the control plane runs; the file form of `ferrite-cloud run
/// --config FILE`. Flags override it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// REST API address.
    #[serde(default = "CloudConfig::default_listen")]
    pub listen: SocketAddr,
    /// The embedded broker's address (unused with `broker`).
    #[serde(default = "CloudConfig::default_mqtt_listen")]
    pub mqtt_listen: SocketAddr,
    /// An external broker, `mqtt(s)://HOST:PORT`, instead of the embedded one.
    #[serde(default)]
    pub broker: Option<String>,
    /// Where the sled store lives (unused with `store`).
    #[serde(default = "CloudConfig::default_data_dir")]
    pub data_dir: PathBuf,
    /// A PostgreSQL store, `postgres://USER:PASSWORD@HOST:PORT/DB` (or
    /// `host=... dbname=...`), shared by every replica, instead of sled.
    #[serde(default)]
    pub store: Option<String>,
    /// A file holding the PostgreSQL store's password (rather than in the
    /// URL, which `ps` shows when given as a flag).
    #[serde(default)]
    pub store_password_file: Option<PathBuf>,
    /// Days of history the PostgreSQL store keeps (whole days are
    /// dropped); none: all of it.
    #[serde(default)]
    pub history_days: Option<u32>,
    /// Login on the external broker.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificate(s) of an `mqtts://` broker, PEM.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `[[gateways]]`: who may log in to the embedded broker, each to its
    /// own topics. None: anyone, and loopback only.
    #[serde(default)]
    pub gateways: Vec<gateways::GatewayEntry>,
    /// `[api]`: the REST API's tokens.
    #[serde(default)]
    pub api: tokens::CloudApi,
    /// The file this was read from (to see enrolments while running).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl CloudConfig {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8090))
    }
    fn default_mqtt_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1884))
    }
    fn default_data_dir() -> PathBuf {
        "ferrite-cloud-data".into()
    }

    /// Reads a config file; relative paths in it are relative to the file.
    pub fn load(path: &Path) -> Result<CloudConfig, CloudError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CloudError::Config(format!("{}: {e}", path.display())))?;
        let mut config: CloudConfig = toml::from_str(&text)
            .map_err(|e| CloudError::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let gateway_files = config
            .gateways
            .iter_mut()
            .filter_map(|g| g.password_file.as_mut());
        let token_files = config
            .api
            .tokens
            .iter_mut()
            .filter_map(|t| t.token_file.as_mut());
        let tls_files = config
            .api
            .tls
            .iter_mut()
            .flat_map(|t| [&mut t.certificate, &mut t.private_key]);
        for p in [
            Some(&mut config.data_dir),
            config.password_file.as_mut(),
            config.store_password_file.as_mut(),
            config.ca_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        .chain(gateway_files)
        .chain(token_files)
        .chain(tls_files)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.source = Some(path.to_path_buf());
        Ok(config)
    }
}

impl Default for CloudConfig {
    fn default() -> CloudConfig {
        CloudConfig {
            listen: CloudConfig::default_listen(),
            mqtt_listen: CloudConfig::default_mqtt_listen(),
            broker: None,
            data_dir: CloudConfig::default_data_dir(),
            store: None,
            store_password_file: None,
            history_days: None,
            username: None,
            password_file: None,
            ca_file: None,
            gateways: Vec::new(),
            api: tokens::CloudApi::default(),
            source: None,
        }
    }
}

/// Why the control plane cannot start.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The config file.
    #[error("config: {0}")]
    Config(String),
    /// The store.
    #[error(transparent)]
    Store(#[from] store::CloudStoreError),
    /// A port is taken or not ours.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The broker link.
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
    /// The embedded broker.
    #[error("the embedded broker: {0}")]
    Broker(String),
    /// A REST address beyond loopback, while the API has no tokens.
    #[error(
        "refusing to serve the REST API on {0}: without [[api.tokens]] it takes anyone, so it serves loopback only"
    )]
    Exposed(SocketAddr),
    /// The embedded broker beyond loopback, while no gateway is enrolled.
    #[error(
        "refusing to serve the embedded broker on {0}: without [[gateways]] it takes anyone, so it serves loopback only (enrol one with `ferrite-cloud gateway add ID`)"
    )]
    OpenBroker(SocketAddr),
}

/// A running control plane.
pub struct ControlPlane {
    /// The REST API's address.
    pub rest: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The broker gateways connect to.
    pub broker: String,
    /// Shared state (store, counters).
    pub shared: Arc<plane::Shared>,
}

/// Starts the control plane. It runs until the process ends (rumqttd has
/// no shutdown; the store is flushed after every write, so ending the
/// process at any point loses nothing acknowledged).
pub async fn start(config: CloudConfig) -> Result<ControlPlane, CloudError> {
    let tokens = Arc::new(
        Tokens::load(&config.api.tokens, &|p| p.to_path_buf())
            .map_err(|e| CloudError::Config(e.to_string()))?,
    );
    let tls = match &config.api.tls {
        Some(t) => Some(
            crate::serve::tls_acceptor(&t.certificate, &t.private_key)
                .map_err(|e| CloudError::Config(e.to_string()))?,
        ),
        None => None,
    };
    if !tokens.enabled() && !config.listen.ip().is_loopback() {
        return Err(CloudError::Exposed(config.listen));
    }
    let gateways = Arc::new(gateways::Gateways::load(&config)?);
    let open_broker = config.broker.is_none() && !gateways.enforcing();
    if open_broker && !config.mqtt_listen.ip().is_loopback() {
        return Err(CloudError::OpenBroker(config.mqtt_listen));
    }
    if open_broker {
        tracing::warn!(
            "no [[gateways]] enrolled: the embedded broker takes anyone, on loopback only (`ferrite-cloud gateway add ID` enrols one)"
        );
    }
    if !tokens.enabled() {
        tracing::warn!("no [[api.tokens]]: the REST API takes anyone, on loopback only");
    } else if tls.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(
            "the REST API on {} has no [api.tls]: its tokens cross the network in clear text",
            config.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| CloudError::Listen(config.listen, e))?;
    let rest = listener
        .local_addr()
        .map_err(|e| CloudError::Listen(config.listen, e))?;
    let password = match &config.store_password_file {
        Some(path) => Some(
            ferrite_models::tokens::read_secret(path)
                .map_err(|e| CloudError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let store = match &config.store {
        Some(url) => store::open_postgres(url, password.as_deref(), config.history_days).await?,
        None => store::open_sled(&config.data_dir).await?,
    };
    let replicas = replicas::Replicas::new(format!("replica-{}", random_hex(6)));
    // Who else is alive, before the first message is taken.
    let (me, first) = (replicas.me().to_string(), store.clone());
    replicas.set_live(store::blocking(move || first.replicas(&me)).await?);
    let guard_stats = Arc::new(guard::GuardStats::default());
    // The control plane's own client id: unguessable, so that no one can
    // take its session over.
    let client_id = format!("ferrite-cloud-{}", random_hex(8));
    let (broker, options) = match &config.broker {
        Some(url) => {
            let link = LinkOptions {
                broker: url.clone(),
                client_id,
                login: config
                    .username
                    .clone()
                    .map(|u| (u, config.password_file.clone())),
                ca_file: config.ca_file.clone(),
                client_auth: None,
                will: Some((crate::topics::CLOUD_STATUS.to_string(), b"offline".to_vec())),
            };
            (url.clone(), link.mqtt_options()?)
        }
        None => {
            let embedded =
                start_embedded_broker(config.mqtt_listen, gateways, guard_stats.clone()).await?;
            let link = LinkOptions {
                broker: format!("mqtt://{}", embedded.internal),
                client_id,
                will: Some((crate::topics::CLOUD_STATUS.to_string(), b"offline".to_vec())),
                ..LinkOptions::default()
            };
            let mut options = link.mqtt_options()?;
            options.set_credentials(embedded.login.username, embedded.login.password);
            (format!("mqtt://{}", embedded.public), options)
        }
    };
    let (client, eventloop) = AsyncClient::new(options, 1024);
    let engine = store.engine();
    let shared = plane::start(
        store.clone(),
        replicas.clone(),
        client,
        eventloop,
        guard_stats,
    );
    replicas.spawn_heartbeat(store, shared.broker_connected.clone());
    let app = routes::router(shared.clone(), tokens);
    // The gateway's accept loop: HTTPS, a connection cap, header timeouts.
    let options = crate::serve::ServeOptions {
        tls,
        max_connections: 256,
        header_timeout: std::time::Duration::from_secs(10),
    };
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tokio::spawn(crate::serve::serve(
        listener,
        app,
        options,
        tokio_util::sync::CancellationToken::new(),
    ));
    tracing::info!(
        "control plane {}: REST on {scheme}://{rest}, broker {broker}, {engine} store",
        replicas.me()
    );
    Ok(ControlPlane {
        rest,
        scheme,
        broker,
        shared,
    })
}

impl ControlPlane {
    /// This replica leaves: the others take its gateways at once.
    pub async fn leave(&self) {
        let (store, me) = (
            self.shared.store.clone(),
            self.shared.replicas.me().to_string(),
        );
        if let Err(e) = store::blocking(move || store.leave(&me)).await {
            tracing::warn!("cannot say this replica leaves: {e}");
        }
    }
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The embedded broker's two addresses.
struct Embedded {
    /// The guard, where gateways connect.
    public: SocketAddr,
    /// rumqttd itself, on loopback, for the guard and the control plane.
    internal: SocketAddr,
    /// The one login rumqttd takes.
    login: rumqttc::Login,
}

/// Starts rumqttd on a loopback port in its own thread, taking only a
/// login made now, and the guard on `listen` in front of it; returns once
/// rumqttd answers.
async fn start_embedded_broker(
    listen: SocketAddr,
    gateways: Arc<gateways::Gateways>,
    stats: Arc<guard::GuardStats>,
) -> Result<Embedded, CloudError> {
    // Bind the guard first, so that a taken port is an error here; with
    // port 0, this also picks the port.
    let public_listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CloudError::Listen(listen, e))?;
    let public = public_listener
        .local_addr()
        .map_err(|e| CloudError::Listen(listen, e))?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let internal = std::net::TcpListener::bind(loopback)
        .and_then(|l| l.local_addr())
        .map_err(|e| CloudError::Listen(loopback, e))?;
    let login = rumqttc::Login::new("ferrite-cloud-guard", random_hex(32));
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: 4 * 1024 * 1024,
        max_inflight_count: 100,
        auth: Some(HashMap::from([(
            login.username.clone(),
            login.password.clone(),
        )])),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "ferrite-cloud".into(),
        listen: internal,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 4 * 1024 * 1024,
            max_segment_count: 10,
            ..rumqttd::RouterConfig::default()
        },
        v4: Some(HashMap::from([("plain".to_string(), server)])),
        ..rumqttd::Config::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("cloud-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("the embedded broker stopped: {e}");
            }
        })
        .map_err(|e| CloudError::Broker(e.to_string()))?;
    let probe_login = (login.username.clone(), login.password.clone());
    if !crate::link::wait_until_serving(internal, Some(&probe_login)).await {
        return Err(CloudError::Broker(format!(
            "it does not answer on {internal}"
        )));
    }
    let guard = Arc::new(guard::Guard {
        gateways,
        upstream: internal,
        login: login.clone(),
        stats,
    });
    tokio::spawn(guard.serve(public_listener));
    Ok(Embedded {
        public,
        internal,
        login,
    })
}
