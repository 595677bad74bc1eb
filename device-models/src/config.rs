//! The gateway's TOML config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Span;

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity and folders.
    pub gateway: GatewaySection,
    /// The REST API.
    #[serde(default)]
    pub api: ApiSection,
    /// The embedded MQTT broker that MQTT devices publish to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttSection>,
    /// The local store.
    #[serde(default)]
    pub store: StoreSection,
    /// The uplink to `ferrite-cloud`. Leave it out to run without a cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudSection>,
    /// The northbound: every device published to an external MQTT broker,
    /// as a Sparkplug B edge node or as JSON topics of a Unified Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub north: Option<NorthSection>,
}

/// `[gateway]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// The gateway's identity towards the cloud.
    pub id: String,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Folder of DeviceModel files, relative to the config file.
    #[serde(default = "GatewaySection::default_models")]
    pub models: PathBuf,
    /// Folder of Device files, relative to the config file.
    #[serde(default = "GatewaySection::default_devices")]
    pub devices: PathBuf,
    /// Folder of Rule files, relative to the config file.
    #[serde(default = "GatewaySection::default_rules")]
    pub rules: PathBuf,
    /// A folder device files may name secrets and certificates in, besides
    /// the config's folder, `data_dir` and systemd's
    /// `$CREDENTIALS_DIRECTORY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_dir: Option<PathBuf>,
}

impl GatewaySection {
    fn default_models() -> PathBuf {
        "models".into()
    }
    fn default_devices() -> PathBuf {
        "devices".into()
    }
    fn default_rules() -> PathBuf {
        "rules".into()
    }
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Listen address. Default 127.0.0.1:8080.
    #[serde(default = "ApiSection::default_listen")]
    pub listen: SocketAddr,
    /// Bearer tokens. Without any, the API serves loopback only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<ApiToken>,
    /// Serve HTTPS instead of HTTP (rustls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ApiTls>,
    /// Most client connections at once; further ones wait to be accepted.
    /// Default 256.
    #[serde(default = "ApiSection::default_max_connections")]
    pub max_connections: usize,
    /// A client must send a request's headers within this long (from
    /// connecting, or from the last answer on a kept-alive connection),
    /// else it is disconnected: slow-header (slowloris) clients cannot hold
    /// connections. Default 10s.
    #[serde(default = "ApiSection::default_header_timeout")]
    pub header_timeout: Span,
    /// A request, body included, must be answered within this long, else
    /// 408. Default 30s.
    #[serde(default = "ApiSection::default_request_timeout")]
    pub request_timeout: Span,
}

/// `[api.tls]`: HTTPS for the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiTls {
    /// The API's certificate chain, PEM.
    pub certificate: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

impl ApiSection {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }

    fn default_max_connections() -> usize {
        256
    }

    fn default_header_timeout() -> Span {
        Span(std::time::Duration::from_secs(10))
    }

    fn default_request_timeout() -> Span {
        Span(std::time::Duration::from_secs(30))
    }
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: Self::default_listen(),
            tokens: Vec::new(),
            tls: None,
            max_connections: Self::default_max_connections(),
            header_timeout: Self::default_header_timeout(),
            request_timeout: Self::default_request_timeout(),
        }
    }
}

/// `[[api.tokens]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Who holds it; recorded in the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// A file holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The token's SHA-256, hex-encoded, instead of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

/// API roles, each including the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GET only.
    Read,
    /// Also device writes.
    Write,
    /// Also rules and config.
    Admin,
}

impl Role {
    /// The role as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// `[mqtt]`: the embedded broker. The gateway reads from it in process;
/// other local clients (an HMI, a historian) can use it too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Listen address of the plain-TCP listener. Default 127.0.0.1:1883.
    #[serde(default = "MqttSection::default_listen")]
    pub listen: SocketAddr,
    /// Most client connections at once, over all listeners. Default 1000.
    #[serde(default = "MqttSection::default_max_connections")]
    pub max_connections: usize,
    /// Largest payload accepted, in bytes; a client that sends a larger one
    /// is disconnected. Default 262144 (256 KiB).
    #[serde(default = "MqttSection::default_max_payload")]
    pub max_payload: usize,
    /// Without users, any client that can reach a listener may connect (so
    /// the broker then listens on loopback only). With users, every network
    /// client must log in as one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<MqttUser>,
    /// An extra listener that speaks MQTT over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MqttTls>,
    /// How the gateway acts as a Sparkplug B host application towards the
    /// edge nodes that publish to this broker.
    #[serde(default)]
    pub sparkplug: SparkplugHost,
}

/// `[mqtt.sparkplug]`: the gateway as a Sparkplug B host application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SparkplugHost {
    /// The host ID. When set, the gateway publishes its STATE message,
    /// `{"online": true, "bdSeq": N, "timestamp": MS}`, retained at QoS 1
    /// on `spBv1.0/STATE/{host_id}`, so that edge nodes configured to wait
    /// for this primary host publish their births. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// How long a message that arrived ahead of a missing `seq` waits for
    /// the missing one. When it passes, the gateway takes what it holds,
    /// marks the node's other values stale and asks the node to rebirth.
    /// Default 2s; `0s` asks at the first gap.
    #[serde(default = "SparkplugHost::default_reorder_timeout")]
    pub reorder_timeout: Span,
}

impl SparkplugHost {
    fn default_reorder_timeout() -> Span {
        Span(std::time::Duration::from_secs(2))
    }
}

impl Default for SparkplugHost {
    fn default() -> Self {
        SparkplugHost {
            host_id: None,
            reorder_timeout: SparkplugHost::default_reorder_timeout(),
        }
    }
}

impl MqttSection {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1883))
    }

    fn default_max_connections() -> usize {
        1000
    }

    fn default_max_payload() -> usize {
        256 * 1024
    }
}

/// `[[mqtt.users]]`: a login for the embedded broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttUser {
    /// The MQTT username.
    pub username: String,
    /// File holding the password (relative to the config file). Trailing
    /// newlines are ignored.
    pub password_file: PathBuf,
}

/// `[mqtt.tls]`: MQTT over TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// Listen address, such as 0.0.0.0:8883.
    pub listen: SocketAddr,
    /// The broker's certificate chain, PEM.
    pub certificate: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

/// `[cloud]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudSection {
    /// The control plane's broker, `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    pub broker: String,
    /// Changes waiting for the control plane take at most this many MiB;
    /// beyond it the oldest go, counted. Default 64.
    #[serde(default = "CloudSection::default_outbox")]
    pub outbox_mib: u64,
    /// Batches are cut at least this often (and sooner when full).
    /// Default 1s.
    #[serde(default = "CloudSection::default_batch_interval")]
    pub batch_interval: Span,
    /// A batch not acknowledged within this long makes the gateway ask the
    /// control plane where to resume. Default 10s.
    #[serde(default = "CloudSection::default_ack_timeout")]
    pub ack_timeout: Span,
    /// MQTT username on the uplink. Default: the gateway's id when a
    /// `password_file` is given (the login `ferrite-cloud gateway add`
    /// enrols), else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (relative to the config file). Trailing
    /// newlines are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// With `mqtts://`: the CA certificate(s) that sign the broker's
    /// certificate, PEM. Without it, the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// With `mqtts://`: a client certificate chain (PEM), for brokers that
    /// authenticate gateways by certificate. Needs `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    /// The client certificate's private key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

impl CloudSection {
    fn default_outbox() -> u64 {
        64
    }

    fn default_batch_interval() -> Span {
        Span(std::time::Duration::from_secs(1))
    }

    fn default_ack_timeout() -> Span {
        Span(std::time::Duration::from_secs(10))
    }
}

/// `[north]`: the gateway's devices on an external broker (SCADA, a UNS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NorthSection {
    /// The external broker, `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    pub broker: String,
    /// `sparkplug` (a Sparkplug B edge node, the default) or `uns` (JSON
    /// on `uns_root/DEVICE/PROPERTY`, retained).
    #[serde(default)]
    pub format: NorthFormat,
    /// Sparkplug: the group id. Default `ferrite`.
    #[serde(default = "NorthSection::default_group")]
    pub group: String,
    /// Sparkplug: the edge node id. Default: the gateway's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Sparkplug: the primary host application's id. With it, the node
    /// publishes only while `spBv1.0/STATE/<id>` says the host is online,
    /// and stores (then forwards, marked historical) while it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_host: Option<String>,
    /// UNS: the topic root, as `site/area/line`. Default
    /// `ferrite/<gateway id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uns_root: Option<String>,
    /// The QoS of data messages. Sparkplug wants 0 (the default there):
    /// a change leaves the backlog once written to the connection. With 1
    /// (the default for `uns`) it leaves on the broker's PUBACK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<u8>,
    /// Changes not yet published take at most this many MiB while the
    /// broker (or the primary host) is away; beyond it the oldest go,
    /// counted. Default 64.
    #[serde(default = "NorthSection::default_backlog")]
    pub backlog_mib: u64,
    /// New changes are published at least this often. Default 100ms.
    #[serde(default = "NorthSection::default_interval")]
    pub interval: Span,
    /// Writes from the broker (Sparkplug DCMD, UNS `.../PROPERTY/set`) go
    /// through the checked write path. Default true; false ignores them.
    #[serde(default = "NorthSection::default_writes")]
    pub writes: bool,
    /// MQTT username. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// With `mqtts://`: the CA certificate(s) of the broker, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// With `mqtts://`: a client certificate chain, PEM. Needs `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    /// The client certificate's private key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

/// How `[north]` publishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NorthFormat {
    /// A Sparkplug B edge node: NBIRTH/DBIRTH, DDATA, DCMD, NDEATH.
    #[default]
    Sparkplug,
    /// Plain JSON per property under a Unified Namespace root.
    Uns,
}

impl NorthSection {
    fn default_group() -> String {
        "ferrite".into()
    }

    fn default_backlog() -> u64 {
        64
    }

    fn default_interval() -> Span {
        Span(std::time::Duration::from_millis(100))
    }

    fn default_writes() -> bool {
        true
    }

    /// The QoS of data messages, by `qos` or the format's default.
    pub fn data_qos(&self) -> u8 {
        self.qos.unwrap_or(match self.format {
            NorthFormat::Sparkplug => 0,
            NorthFormat::Uns => 1,
        })
    }
}

/// A broker address, `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (an IPv6
/// host in brackets). `ferrite check` and the sync link both read it here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// `mqtts://`.
    pub tls: bool,
    /// Host name or address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl BrokerUrl {
    /// Parses `url`; the error names it and says what is wrong.
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!(
                "broker `{url}` must start with mqtt:// or mqtts://"
            ));
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("broker `{url}` needs a port, as in mqtt://HOST:1884"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("broker `{url}` has no host"));
        }
        let port = port
            .parse()
            .map_err(|_| format!("broker `{url}`: `{port}` is not a port number"))?;
        Ok(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

/// `[store]`: how much history to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// History older than this is dropped. Default 7 days.
    #[serde(default = "StoreSection::default_age")]
    pub history_age: Span,
    /// When the history held (its blocks and log, not sled's file, which
    /// runs larger) grows past this many MiB, the blocks that end first go.
    /// Default 256.
    #[serde(default = "StoreSection::default_mib")]
    pub history_mib: u64,
    /// sled's page cache in MiB: more saves CPU when many values change,
    /// less saves memory. Default 8.
    #[serde(default = "StoreSection::default_cache")]
    pub cache_mib: u64,
    /// The rules' events and the audit log of writes each keep at most this
    /// many entries. Default 10000.
    #[serde(default = "StoreSection::default_journal_entries")]
    pub journal_entries: usize,
    /// Events and audit entries older than this go. Default 30 days.
    #[serde(default = "StoreSection::default_journal_age")]
    pub journal_age: Span,
}

impl StoreSection {
    fn default_age() -> Span {
        Span(std::time::Duration::from_secs(7 * 24 * 3600))
    }
    fn default_mib() -> u64 {
        256
    }
    fn default_cache() -> u64 {
        8
    }
    fn default_journal_entries() -> usize {
        10_000
    }
    fn default_journal_age() -> Span {
        Span(std::time::Duration::from_secs(30 * 24 * 3600))
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            history_age: Self::default_age(),
            history_mib: Self::default_mib(),
            cache_mib: Self::default_cache(),
            journal_entries: Self::default_journal_entries(),
            journal_age: Self::default_journal_age(),
        }
    }
}
