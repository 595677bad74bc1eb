//! The gateway's devices as a Unified Namespace: one retained JSON message
//! per property on `ROOT/DEVICE/PROPERTY`, free of I/O.
//!
//! - A value: `{"value": 21.5, "ts": 1733300000000, "unit": "°C"}` (`ts` in
//!   ms since the epoch, the reading's time; `unit` when the model has one;
//!   `"historical": true` when it was stored while the broker was away).
//! - `ROOT/_status`: `{"online": true|false, "ts": ...}`, retained; the
//!   MQTT will says offline.
//! - A write: the JSON value (`true`, `42`, `"auto"`) published to
//!   `ROOT/DEVICE/PROPERTY/set`.

use std::collections::HashMap;

use ferrite_sync::delta::Change;
use serde_json::json;

use super::now_ms;
use super::sparkplug::Message;

/// The namespace under `root`.
#[derive(Debug, Clone)]
pub struct Uns {
    root: String,
    /// (device, property) → unit, from the models.
    units: HashMap<(String, String), String>,
}

impl Uns {
    /// A namespace at `root` (as `site/area/line`).
    pub fn new(root: &str) -> Uns {
        Uns {
            root: root.trim_matches('/').to_string(),
            units: HashMap::new(),
        }
    }

    /// The units to add to values, from the models.
    pub fn set_units(&mut self, units: HashMap<(String, String), String>) {
        self.units = units;
    }

    /// `ROOT/_status`.
    pub fn status_topic(&self) -> String {
        format!("{}/_status", self.root)
    }

    /// The status payload.
    pub fn status(&self, online: bool) -> Vec<u8> {
        json!({"online": online, "ts": now_ms()})
            .to_string()
            .into_bytes()
    }

    /// The write topics subscribed to.
    pub fn command_topic(&self) -> String {
        format!("{}/+/+/set", self.root)
    }

    /// One message per change.
    pub fn data(&self, changes: &[(u64, Change)], historical_through: u64) -> Vec<Message> {
        changes
            .iter()
            .map(|(seq, c)| {
                let mut body = json!({"value": c.value, "ts": c.ts_ms});
                if let Some(unit) = self.units.get(&(c.device.clone(), c.property.clone())) {
                    body["unit"] = json!(unit);
                }
                if *seq <= historical_through {
                    body["historical"] = json!(true);
                }
                Message {
                    topic: format!("{}/{}/{}", self.root, c.device, c.property),
                    payload: body.to_string().into_bytes(),
                }
            })
            .collect()
    }

    /// A write: device, property and the JSON value, or why not.
    pub fn command(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> Result<(String, String, serde_json::Value), String> {
        let rest = topic
            .strip_prefix(&self.root)
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|r| r.strip_suffix("/set"))
            .ok_or_else(|| format!("`{topic}` is not a write topic under `{}`", self.root))?;
        let (device, property) = rest
            .split_once('/')
            .filter(|(d, p)| !d.is_empty() && !p.is_empty() && !p.contains('/'))
            .ok_or_else(|| format!("`{topic}` is not ROOT/DEVICE/PROPERTY/set"))?;
        let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
            format!("the payload is not a JSON value ({e}); send true, 42 or \"text\"")
        })?;
        Ok((device.to_string(), property.to_string(), value))
    }
}
