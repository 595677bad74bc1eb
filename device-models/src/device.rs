//! `kind: Device`: one device instance, its model and how to reach it.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Span;

/// The `kind` tag of a device document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeviceKind {
    /// The only value.
    Device,
}

/// A device: a model plus exactly one protocol section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Always `Device`.
    pub kind: DeviceKind,
    /// The id used by the API and rules.
    pub name: String,
    /// The name of its DeviceModel.
    pub model: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How often polled protocols are read. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<Span>,
    /// How long one request may take before the device counts as timed out.
    /// Default 1s. For MQTT devices: how long without a publish before the
    /// device counts as offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
    /// Modbus over TCP.
    #[serde(
        rename = "modbus-tcp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub modbus_tcp: Option<ModbusTcp>,
    /// Modbus RTU on a serial line.
    #[serde(
        rename = "modbus-rtu",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub modbus_rtu: Option<ModbusRtu>,
    /// Modbus RTU frames over a TCP socket (a serial device server in
    /// transparent mode).
    #[serde(
        rename = "modbus-rtu-over-tcp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub modbus_rtu_over_tcp: Option<ModbusTcp>,
    /// OPC UA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opcua: Option<Opcua>,
    /// The device publishes to the embedded broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<Mqtt>,
}

/// The protocols a device can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Modbus TCP.
    ModbusTcp,
    /// Modbus RTU.
    ModbusRtu,
    /// Modbus RTU framing over TCP.
    ModbusRtuOverTcp,
    /// OPC UA.
    Opcua,
    /// MQTT.
    Mqtt,
}

impl Protocol {
    /// The key that selects it in a device file.
    pub fn key(self) -> &'static str {
        match self {
            Protocol::ModbusTcp => "modbus-tcp",
            Protocol::ModbusRtu => "modbus-rtu",
            Protocol::ModbusRtuOverTcp => "modbus-rtu-over-tcp",
            Protocol::Opcua => "opcua",
            Protocol::Mqtt => "mqtt",
        }
    }

    /// The model binding the protocol reads: `modbus`, `opcua` or `mqtt`.
    pub fn binding_key(self) -> &'static str {
        match self {
            Protocol::ModbusTcp | Protocol::ModbusRtu | Protocol::ModbusRtuOverTcp => "modbus",
            Protocol::Opcua => "opcua",
            Protocol::Mqtt => "mqtt",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

impl Device {
    /// Every protocol section present. Validation insists on exactly one.
    pub fn protocols(&self) -> Vec<Protocol> {
        let mut found = Vec::new();
        if self.modbus_tcp.is_some() {
            found.push(Protocol::ModbusTcp);
        }
        if self.modbus_rtu.is_some() {
            found.push(Protocol::ModbusRtu);
        }
        if self.modbus_rtu_over_tcp.is_some() {
            found.push(Protocol::ModbusRtuOverTcp);
        }
        if self.opcua.is_some() {
            found.push(Protocol::Opcua);
        }
        if self.mqtt.is_some() {
            found.push(Protocol::Mqtt);
        }
        found
    }

    /// The device's protocol, once validated.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocols().first().copied()
    }

    /// The poll period, default 1 s.
    pub fn poll(&self) -> std::time::Duration {
        self.poll
            .map_or(std::time::Duration::from_secs(1), Span::get)
    }

    /// The request timeout, default 1 s.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .map_or(std::time::Duration::from_secs(1), Span::get)
    }

    /// For MQTT devices: how long without a publish before the device counts
    /// as offline. The `timeout` key, else 60 s for plain devices; Sparkplug
    /// devices report by exception, so without the key only their death
    /// certificates take them offline.
    pub fn mqtt_timeout(&self) -> Option<std::time::Duration> {
        let mqtt = self.mqtt.as_ref()?;
        match (self.timeout, &mqtt.sparkplug) {
            (Some(t), _) => Some(t.get()),
            (None, None) => Some(std::time::Duration::from_secs(60)),
            (None, Some(_)) => None,
        }
    }
}

fn default_modbus_port() -> u16 {
    502
}

fn default_unit() -> u8 {
    1
}

/// Read-coalescing limits shared by TCP and RTU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Coalesce {
    /// Most registers in one read (the protocol allows 125).
    #[serde(default = "Coalesce::default_registers")]
    pub max_registers: u16,
    /// Most coils or discrete inputs in one read (the protocol allows 2000).
    #[serde(default = "Coalesce::default_bits")]
    pub max_bits: u16,
    /// Unused addresses a merged read may span between two properties.
    #[serde(default)]
    pub max_gap: u16,
}

impl Coalesce {
    fn default_registers() -> u16 {
        125
    }
    fn default_bits() -> u16 {
        2000
    }
}

impl Default for Coalesce {
    fn default() -> Self {
        Coalesce {
            max_registers: Self::default_registers(),
            max_bits: Self::default_bits(),
            max_gap: 0,
        }
    }
}

/// Modbus TCP, possibly through a TCP-to-RTU gateway (give its `unit`). The
/// same keys address an RTU-over-TCP device (`modbus-rtu-over-tcp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusTcp {
    /// Host name or address.
    pub host: String,
    /// TCP port. Default 502.
    #[serde(default = "default_modbus_port")]
    pub port: u16,
    /// Unit (slave) id. Default 1.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Read-coalescing limits.
    #[serde(default)]
    pub coalesce: Coalesce,
    /// Auto-demotion: after three timeouts in a row the unit is polled only
    /// once per this long until it answers, so that it stops holding the
    /// shared link for its neighbours. Default 10s; `0s` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demote: Option<Span>,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// Modbus RTU on a serial port. Devices on the same `port` share one bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusRtu {
    /// The serial device, such as `/dev/ttyUSB0`.
    pub port: PathBuf,
    /// Baud rate. Default 9600.
    #[serde(default = "ModbusRtu::default_baud")]
    pub baud: u32,
    /// Parity. Default none.
    #[serde(default)]
    pub parity: Parity,
    /// Data bits, 7 or 8. Default 8.
    #[serde(default = "ModbusRtu::default_data_bits")]
    pub data_bits: u8,
    /// Stop bits, 1 or 2. Default 1.
    #[serde(default = "ModbusRtu::default_stop_bits")]
    pub stop_bits: u8,
    /// Unit (slave) id, 1 to 247.
    pub unit: u8,
    /// Read-coalescing limits.
    #[serde(default)]
    pub coalesce: Coalesce,
    /// Auto-demotion: after three timeouts in a row the unit is polled only
    /// once per this long until it answers, so that it stops holding the
    /// shared link for its neighbours. Default 10s; `0s` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demote: Option<Span>,
}

impl ModbusRtu {
    fn default_baud() -> u32 {
        9600
    }
    fn default_data_bits() -> u8 {
        8
    }
    fn default_stop_bits() -> u8 {
        1
    }
}

/// OPC UA message security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OpcuaSecurity {
    /// No signing, no encryption.
    #[default]
    None,
    /// Signed messages.
    Sign,
    /// Signed and encrypted messages.
    SignAndEncrypt,
}

/// OPC UA security policy, for `sign` and `sign-and-encrypt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum OpcuaPolicy {
    /// Basic256Sha256.
    #[default]
    Basic256Sha256,
    /// Aes128_Sha256_RsaOaep.
    #[serde(rename = "Aes128_Sha256_RsaOaep")]
    Aes128Sha256RsaOaep,
    /// Aes256_Sha256_RsaPss.
    #[serde(rename = "Aes256_Sha256_RsaPss")]
    Aes256Sha256RsaPss,
}

/// How OPC UA values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OpcuaMode {
    /// Monitored items in a subscription.
    #[default]
    Subscribe,
    /// A batched Read every `poll`.
    Poll,
}

/// An OPC UA server endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Opcua {
    /// Such as `opc.tcp://host:4840/path`.
    pub endpoint: String,
    /// Message security. Default none.
    #[serde(default)]
    pub security: OpcuaSecurity,
    /// Security policy when signing. Default Basic256Sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<OpcuaPolicy>,
    /// User name; needs `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (relative paths start at the device file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// X.509 user identity: the certificate (DER or PEM); needs
    /// `user_private_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_certificate: Option<PathBuf>,
    /// The private key (PEM) of `user_certificate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_private_key: Option<PathBuf>,
    /// The server's certificate (DER or PEM) to trust, in addition to those
    /// in `data_dir/pki/trusted`. Unknown server certificates are never
    /// trusted on first use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<PathBuf>,
    /// Subscribe (default) or poll.
    #[serde(default)]
    pub mode: OpcuaMode,
    /// Sampling interval of monitored items. Default: the poll period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Span>,
    /// Queue size of monitored items. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    /// Which clock stamps the values a subscription delivers, a poll
    /// reads and a write reads back. Default `source`.
    #[serde(default)]
    pub timestamps: OpcuaTimestamps,
    /// Events and alarms to take into the events journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<OpcuaEvents>,
}

/// Where a device's OPC UA events and alarms (A&C) come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpcuaEvents {
    /// The object whose events to take (its EventNotifier attribute):
    /// `i=2253`, the Server object, reports every event of the server.
    pub notifier: crate::model::NodeId,
    /// Events of a lower severity (1 to 1000) are left out. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_severity: Option<u16>,
    /// Events the server keeps for the gateway while it is away. Default
    /// 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
}

impl OpcuaEvents {
    /// The events queue asked of the server.
    pub fn queue(&self) -> u32 {
        self.queue.unwrap_or(1000)
    }
}

/// Which clock stamps an OPC UA value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OpcuaTimestamps {
    /// When the value changed at its source (the device), as the server
    /// says; the server's time, then the gateway's, when it does not say.
    #[default]
    Source,
    /// When the server saw the value.
    Server,
    /// When the gateway received it (for a source whose clock is wrong).
    Gateway,
}

/// A device that publishes to the embedded broker.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// A topic where the device announces itself (typically its MQTT last
    /// will): `offline` there marks it offline at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MqttStatus>,
    /// The device speaks Sparkplug B: where it sits in the Sparkplug
    /// namespace. Its model's bindings name metrics instead of topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparkplug: Option<Sparkplug>,
}

/// An availability topic, as Home Assistant and Tasmota use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttStatus {
    /// Topic template; `{device}` becomes the device name.
    pub topic: crate::model::TopicTemplate,
    /// The payload that means online. Default `online`.
    #[serde(default = "MqttStatus::default_online")]
    pub online: String,
    /// The payload that means offline. Default `offline`.
    #[serde(default = "MqttStatus::default_offline")]
    pub offline: String,
}

impl MqttStatus {
    fn default_online() -> String {
        "online".into()
    }

    fn default_offline() -> String {
        "offline".into()
    }
}

/// A Sparkplug B edge node, or a device behind one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sparkplug {
    /// Group ID.
    pub group: String,
    /// Edge node ID.
    pub node: String,
    /// Device ID under the node. Without it, the properties are the node's
    /// own metrics (NBIRTH/NDATA, written with NCMD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}
