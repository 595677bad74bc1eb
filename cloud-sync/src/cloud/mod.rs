//! `ferrite-cloud`, the control plane: receives gateways' batches, keeps
//! each gateway's history and twin, and sends desired state down.
//!
//! - [`store`]: sled; one atomic, flushed write per applied batch.
//! - [`plane`]: the MQTT side (exactly once by change sequence, Resume and
//!   Ack, desired patches replayed after every Hello).
//! - [`api`]: the REST API.
//! - [`start`]: the embedded broker (rumqttd) or an external one, then the
//!   two above.

pub mod api;
pub mod plane;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::AsyncClient;
use serde::Deserialize;

use crate::link::LinkOptions;

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
    /// Where the store lives.
    #[serde(default = "CloudConfig::default_data_dir")]
    pub data_dir: PathBuf,
    /// Login on the external broker.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificate(s) of an `mqtts://` broker, PEM.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
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
        for p in [
            Some(&mut config.data_dir),
            config.password_file.as_mut(),
            config.ca_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
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
            username: None,
            password_file: None,
            ca_file: None,
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
    /// A REST address beyond loopback, while the API has no auth.
    #[error(
        "refusing to serve the REST API on {0}: it has no authentication yet, so it serves loopback only (put an authenticating reverse proxy in front)"
    )]
    Exposed(SocketAddr),
}

/// A running control plane.
pub struct Running {
    /// The REST API's address.
    pub rest: SocketAddr,
    /// The broker gateways connect to.
    pub broker: String,
    /// Shared state (store, counters).
    pub shared: Arc<plane::Shared>,
}

/// Starts the control plane. It runs until the process ends (rumqttd has
/// no shutdown; the store is flushed after every write, so ending the
/// process at any point loses nothing acknowledged).
pub async fn start(config: CloudConfig) -> Result<Running, CloudError> {
    if !config.listen.ip().is_loopback() {
        return Err(CloudError::Exposed(config.listen));
    }
    if config.broker.is_none() && !config.mqtt_listen.ip().is_loopback() {
        tracing::warn!(
            "the embedded broker on {} takes anyone who connects (no TLS, no logins); use an external broker with both beyond a trusted network",
            config.mqtt_listen
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| CloudError::Listen(config.listen, e))?;
    let rest = listener
        .local_addr()
        .map_err(|e| CloudError::Listen(config.listen, e))?;
    let store = Arc::new(store::CloudStore::open(&config.data_dir)?);
    let broker = match &config.broker {
        Some(url) => url.clone(),
        None => {
            let addr = start_embedded_broker(config.mqtt_listen).await?;
            format!("mqtt://{addr}")
        }
    };
    let link = LinkOptions {
        broker: broker.clone(),
        client_id: format!("ferrite-cloud-{}", std::process::id()),
        login: config
            .username
            .clone()
            .map(|u| (u, config.password_file.clone())),
        ca_file: config.ca_file.clone(),
        client_auth: None,
        will: Some((crate::topics::CLOUD_STATUS.to_string(), b"offline".to_vec())),
    };
    let (client, eventloop) = AsyncClient::new(link.mqtt_options()?, 1024);
    let shared = plane::start(store, client, eventloop);
    let app = api::router(shared.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the control plane's API stopped: {e}");
        }
    });
    tracing::info!("control plane: REST on http://{rest}, broker {broker}");
    Ok(Running {
        rest,
        broker,
        shared,
    })
}

/// Starts rumqttd on `listen` in its own thread; returns the bound address
/// once it answers.
async fn start_embedded_broker(listen: SocketAddr) -> Result<SocketAddr, CloudError> {
    // Bind once so that a taken port is an error here, not a log line on
    // the broker's thread; with port 0, this also picks the port.
    let addr = std::net::TcpListener::bind(listen)
        .and_then(|l| l.local_addr())
        .map_err(|e| CloudError::Listen(listen, e))?;
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: 4 * 1024 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "ferrite-cloud".into(),
        listen: addr,
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
    if crate::link::wait_until_serving(addr, None).await {
        Ok(addr)
    } else {
        Err(CloudError::Broker(format!("it does not answer on {addr}")))
    }
}
