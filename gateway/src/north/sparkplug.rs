//! The gateway as a Sparkplug B edge node: its payloads, free of I/O.
//!
//! - NBIRTH (`seq` 0) carries `bdSeq`, `Node Control/Rebirth` and the
//!   gateway's software; then one DBIRTH per device, every property a metric
//!   with its name, an alias, the model's type, the current value and the
//!   model's unit, limits, access and description as Sparkplug properties
//!   (`engUnit`, `engLow`, `engHigh`, `readOnly`, `Documentation`).
//! - DDATA carries changes by alias only, each with its own timestamp, marked
//!   `is_historical` when it was stored before the births it follows (store
//!   and forward).
//! - NDEATH (the MQTT will, and published on a clean stop) carries the
//!   `bdSeq` of the NBIRTH it ends.
//! - NCMD `Node Control/Rebirth` asks for the births again; DCMD metrics
//!   (by name or alias) become writes, typed by the model.
//!
//! `seq` rises by one per message after NBIRTH, wrapping at 255.

use std::collections::HashMap;

use ferrite_models::Value;
use ferrite_models::model::ValueType;
use ferrite_models::sparkplug::{MessageType, NAMESPACE, datatype_for, metric_of, metric_value};
use ferrite_proto::sparkplug::Payload;
use ferrite_proto::sparkplug::datatype as dt;
use ferrite_proto::sparkplug::payload::{
    Metric, PropertySet, PropertyValue, metric, property_value,
};
use ferrite_sync::delta::Change;
use prost::Message as _;

use super::now_ms;

/// The metric a host writes `true` to for new births.
pub const REBIRTH: &str = "Node Control/Rebirth";

/// Metrics per DDATA message, at most: a backlog goes out in messages a
/// broker's default packet limit takes.
pub const MAX_METRICS: usize = 500;

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Its topic.
    pub topic: String,
    /// The encoded payload.
    pub payload: Vec<u8>,
}

/// A device as its DBIRTH describes it.
#[derive(Debug, Clone)]
pub struct DeviceBirth {
    /// The device's id (the Sparkplug device id).
    pub id: String,
    /// Its properties, in the model's order.
    pub metrics: Vec<BirthMetric>,
}

/// A property as its DBIRTH metric describes it.
#[derive(Debug, Clone)]
pub struct BirthMetric {
    /// The property's name.
    pub name: String,
    /// The model's type.
    pub ty: ValueType,
    /// The current value, if any, and its time (ms since the epoch).
    pub value: Option<(Value, i64)>,
    /// The model's unit.
    pub unit: Option<String>,
    /// The model's limits.
    pub min: Option<f64>,
    /// The model's limits.
    pub max: Option<f64>,
    /// Whether the model lets it be written.
    pub writable: bool,
    /// The model's description.
    pub description: Option<String>,
}

/// What a command from the host asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// NCMD `Node Control/Rebirth` = true.
    Rebirth,
    /// DCMD: these properties of `device` to these values (typed by the
    /// model); `refused` names the metrics that could not be read.
    Write {
        /// The device.
        device: String,
        /// Property and value, in the message's order.
        writes: Vec<(String, Value)>,
        /// Metric and why it was skipped.
        refused: Vec<(String, String)>,
    },
}

/// The edge node's state for one MQTT session.
#[derive(Debug)]
pub struct EdgeNode {
    group: String,
    node: String,
    bd_seq: u64,
    seq: u8,
    /// (device, property) → (alias, type), from the last births.
    aliases: HashMap<(String, String), (u64, ValueType)>,
    /// device → alias → property, for DCMD by alias.
    by_alias: HashMap<u64, (String, String)>,
}

impl EdgeNode {
    /// A node of `group`/`node` for a session whose will carries `bd_seq`.
    pub fn new(group: &str, node: &str, bd_seq: u64) -> EdgeNode {
        EdgeNode {
            group: group.into(),
            node: node.into(),
            bd_seq,
            seq: 0,
            aliases: HashMap::new(),
            by_alias: HashMap::new(),
        }
    }

    /// The topic of a node message (NBIRTH, NDEATH, NCMD).
    pub fn node_topic(&self, kind: MessageType) -> String {
        format!("{NAMESPACE}/{}/{}/{}", self.group, kind.as_str(), self.node)
    }

    /// The topic of a device message (DBIRTH, DDATA, DCMD).
    pub fn device_topic(&self, kind: MessageType, device: &str) -> String {
        format!("{}/{device}", self.node_topic(kind))
    }

    /// The topics the node subscribes to: its NCMD and its devices' DCMD.
    pub fn command_topics(&self) -> [String; 2] {
        [
            self.node_topic(MessageType::NCmd),
            self.device_topic(MessageType::DCmd, "+"),
        ]
    }

    /// NDEATH: the will of this session, and what a clean stop publishes.
    pub fn death(&self) -> Message {
        let payload = Payload {
            timestamp: Some(now_ms()),
            metrics: vec![bd_seq_metric(self.bd_seq)],
            ..Payload::default()
        };
        Message {
            topic: self.node_topic(MessageType::NDeath),
            payload: payload.encode_to_vec(),
        }
    }

    /// NBIRTH and a DBIRTH per device; `seq` starts again at 0 and the
    /// aliases are numbered afresh.
    pub fn births(&mut self, devices: &[DeviceBirth]) -> Vec<Message> {
        let now = now_ms();
        self.seq = 0;
        self.aliases.clear();
        self.by_alias.clear();
        let mut rebirth = metric_of(dt::BOOLEAN, &Value::Bool(false)).unwrap_or_default();
        rebirth.name = Some(REBIRTH.into());
        rebirth.timestamp = Some(now);
        let mut software = metric_of(
            dt::STRING,
            &Value::String(format!("ferrite {}", env!("CARGO_PKG_VERSION"))),
        )
        .unwrap_or_default();
        software.name = Some("Properties/Software".into());
        software.timestamp = Some(now);
        let mut out = vec![self.message(
            self.node_topic(MessageType::NBirth),
            vec![bd_seq_metric(self.bd_seq), rebirth, software],
            now,
        )];
        let mut alias = 0u64;
        for device in devices {
            let mut metrics = Vec::with_capacity(device.metrics.len());
            for m in &device.metrics {
                alias += 1;
                self.aliases
                    .insert((device.id.clone(), m.name.clone()), (alias, m.ty));
                self.by_alias
                    .insert(alias, (device.id.clone(), m.name.clone()));
                metrics.push(birth_metric(m, alias, now));
            }
            let topic = self.device_topic(MessageType::DBirth, &device.id);
            out.push(self.message(topic, metrics, now));
        }
        out
    }

    /// DDATA for `changes` (in sequence order): one message per device,
    /// its metrics in order, at most [`MAX_METRICS`] each (a device with
    /// more gets more messages), in the order of each device's first
    /// change. Changes of properties the births did not name are skipped.
    /// Changes up to `historical_through` are marked historical.
    pub fn data(&mut self, changes: &[(u64, Change)], historical_through: u64) -> Vec<Message> {
        let now = now_ms();
        // Messages being filled, by device, in order of first change; and
        // those already full.
        let mut open: Vec<(&str, Vec<Metric>)> = Vec::new();
        let mut full: Vec<(&str, Vec<Metric>)> = Vec::new();
        for (seq, change) in changes {
            let Some((alias, ty)) = self
                .aliases
                .get(&(change.device.clone(), change.property.clone()))
                .copied()
            else {
                continue;
            };
            let Ok(mut m) = metric_of(datatype_for(ty), &change.value) else {
                continue;
            };
            m.alias = Some(alias);
            m.datatype = None;
            m.timestamp = u64::try_from(change.ts_ms).ok();
            if *seq <= historical_through {
                m.is_historical = Some(true);
            }
            let slot = match open.iter().position(|(d, _)| *d == change.device) {
                Some(i) => i,
                None => {
                    open.push((change.device.as_str(), Vec::new()));
                    open.len() - 1
                }
            };
            open[slot].1.push(m);
            if open[slot].1.len() >= MAX_METRICS {
                full.push(open.remove(slot));
            }
        }
        full.extend(open);
        full.into_iter()
            .map(|(device, metrics)| {
                let topic = self.device_topic(MessageType::DData, device);
                self.message(topic, metrics, now)
            })
            .collect()
    }

    /// Reads a command. `Ok(None)`: a topic or metric this node does not
    /// act on (a rebirth of `false`, another node's). `Err`: a payload that
    /// does not decode.
    pub fn command(&self, topic: &str, payload: &[u8]) -> Result<Option<Command>, String> {
        let parsed = ferrite_models::sparkplug::Topic::parse(topic)
            .filter(|t| t.group == self.group && t.node == self.node)
            .ok_or_else(|| format!("`{topic}` is not a command to this node"))?;
        let payload =
            Payload::decode(payload).map_err(|e| format!("not a Sparkplug B payload: {e}"))?;
        match (parsed.kind, parsed.device) {
            (MessageType::NCmd, None) => {
                let rebirth = payload.metrics.iter().any(|m| {
                    m.name.as_deref() == Some(REBIRTH)
                        && matches!(m.value, Some(metric::Value::BooleanValue(true)))
                });
                Ok(rebirth.then_some(Command::Rebirth))
            }
            (MessageType::DCmd, Some(device)) => {
                let mut writes = Vec::new();
                let mut refused = Vec::new();
                for m in &payload.metrics {
                    let property = match (&m.name, m.alias) {
                        (Some(name), _) => Some(name.clone()),
                        (None, Some(alias)) => self
                            .by_alias
                            .get(&alias)
                            .filter(|(d, _)| d == device)
                            .map(|(_, p)| p.clone()),
                        (None, None) => None,
                    };
                    let label = property
                        .clone()
                        .or_else(|| m.alias.map(|a| format!("alias {a}")))
                        .unwrap_or_else(|| "a metric without name or alias".into());
                    let Some(property) = property else {
                        refused.push((label, "no such metric in the DBIRTH".into()));
                        continue;
                    };
                    let Some((_, ty)) = self.aliases.get(&(device.to_string(), property.clone()))
                    else {
                        refused.push((
                            label,
                            format!("device `{device}` has no metric `{property}`"),
                        ));
                        continue;
                    };
                    match metric_value(m, *ty) {
                        Ok(Some(value)) => writes.push((property, value)),
                        Ok(None) => refused.push((label, "a null value is not a write".into())),
                        Err(e) => refused.push((label, e)),
                    }
                }
                Ok(Some(Command::Write {
                    device: device.to_string(),
                    writes,
                    refused,
                }))
            }
            _ => Ok(None),
        }
    }

    /// A payload with the next `seq` (0 for NBIRTH, which reset it).
    fn message(&mut self, topic: String, metrics: Vec<Metric>, now: u64) -> Message {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let payload = Payload {
            timestamp: Some(now),
            metrics,
            seq: Some(u64::from(seq)),
            ..Payload::default()
        };
        Message {
            topic,
            payload: payload.encode_to_vec(),
        }
    }
}

fn bd_seq_metric(bd_seq: u64) -> Metric {
    Metric {
        name: Some("bdSeq".into()),
        timestamp: Some(now_ms()),
        datatype: Some(dt::INT64),
        value: Some(metric::Value::LongValue(bd_seq)),
        ..Metric::default()
    }
}

fn birth_metric(m: &BirthMetric, alias: u64, now: u64) -> Metric {
    let datatype = datatype_for(m.ty);
    let mut metric = match &m.value {
        Some((value, ts)) => {
            let mut metric = metric_of(datatype, value).unwrap_or_default();
            metric.timestamp = u64::try_from(*ts).ok();
            metric
        }
        None => Metric {
            is_null: Some(true),
            timestamp: Some(now),
            ..Metric::default()
        },
    };
    if metric.value.is_none() {
        metric.is_null = Some(true);
    }
    metric.name = Some(m.name.clone());
    metric.alias = Some(alias);
    metric.datatype = Some(datatype);
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut property = |key: &str, value: PropertyValue| {
        keys.push(key.to_string());
        values.push(value);
    };
    if let Some(unit) = &m.unit {
        property("engUnit", text(unit));
    }
    for (key, limit) in [("engLow", m.min), ("engHigh", m.max)] {
        if let Some(limit) = limit {
            property(
                key,
                PropertyValue {
                    r#type: Some(dt::DOUBLE),
                    value: Some(property_value::Value::DoubleValue(limit)),
                    ..PropertyValue::default()
                },
            );
        }
    }
    property(
        "readOnly",
        PropertyValue {
            r#type: Some(dt::BOOLEAN),
            value: Some(property_value::Value::BooleanValue(!m.writable)),
            ..PropertyValue::default()
        },
    );
    if let Some(description) = &m.description {
        property("Documentation", text(description));
    }
    metric.properties = Some(PropertySet { keys, values });
    metric
}

fn text(s: &str) -> PropertyValue {
    PropertyValue {
        r#type: Some(dt::STRING),
        value: Some(property_value::Value::StringValue(s.to_string())),
        ..PropertyValue::default()
    }
}
