//! The one checked write path. A REST write, a rule's write and the device
//! twin's desired state (from the uplink) all come through
//! [`Control::write`], so that each is
//! checked the same way against the model's type, access and limits, refused
//! while another rule holds the property, and recorded in the audit log:
//! who, what, when, the old value and the new one, and how it ended.
//! Method calls come through [`Control::call`]: inputs checked against the
//! model's method, and each call audited with its inputs and outputs.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use ferrite_models::value::{CallCheckError, Value, WriteCheckError, check_inputs, check_write};
use serde_json::json;

use crate::journal::Journal;
use crate::live::Live;
use crate::running::Running;
use crate::store::Log;
use ferrite_core::driver::{DeviceWriter, DriverError, Written};

/// Who asks for a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A REST client: the name of its token (with `[[api.tokens]]`) and its
    /// address, when known.
    Api {
        /// The token's name.
        token: Option<String>,
        /// The client's address.
        peer: Option<std::net::SocketAddr>,
    },
    /// A rule, by name.
    Rule(String),
    /// The device twin's desired state from the control plane, by version.
    Cloud(u64),
    /// A command from the northbound broker (`sparkplug DCMD`, `uns`).
    North(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Api {
                token: Some(name), ..
            } => write!(f, "api {name}"),
            Actor::Api {
                token: None,
                peer: Some(peer),
            } => write!(f, "api {peer}"),
            Actor::Api {
                token: None,
                peer: None,
            } => f.write_str("api"),
            Actor::Rule(name) => write!(f, "rule {name}"),
            Actor::Cloud(version) => write!(f, "cloud desired v{version}"),
            Actor::North(via) => write!(f, "north {via}"),
        }
    }
}

/// Why a write did not happen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// No such device.
    #[error("no device `{0}`")]
    NoDevice(String),
    /// No such property.
    #[error("device `{device}` has no property `{property}`")]
    NoProperty {
        /// Device.
        device: String,
        /// Property.
        property: String,
    },
    /// The value failed the model's checks.
    #[error(transparent)]
    Check(#[from] WriteCheckError),
    /// A rule holds the property.
    #[error(
        "rule `{rule}` holds {device}.{property} while it is active; disable the rule to write by hand"
    )]
    Held {
        /// The holding rule.
        rule: String,
        /// Device.
        device: String,
        /// Property.
        property: String,
    },
    /// No driver serves the device in this build.
    #[error("no driver serves `{0}` in this build")]
    NoDriver(String),
    /// The device or its link failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

impl WriteError {
    /// A short code for the audit log and the API.
    pub fn code(&self) -> &'static str {
        match self {
            WriteError::NoDevice(_) => "unknown_device",
            WriteError::NoProperty { .. } => "unknown_property",
            WriteError::Check(WriteCheckError::ReadOnly(_)) => "read_only",
            WriteError::Check(WriteCheckError::WrongType { .. }) => "wrong_type",
            WriteError::Check(WriteCheckError::OutOfRange { .. }) => "out_of_range",
            WriteError::Held { .. } => "held_by_rule",
            WriteError::NoDriver(_) => "no_driver",
            WriteError::Driver(e) => driver_code(e),
        }
    }
}

/// The code of a device failure, for the audit log and the API.
fn driver_code(e: &DriverError) -> &'static str {
    match e {
        DriverError::Refused(_) => "device_refused",
        DriverError::Denied(_) => "device_denied",
        DriverError::Rejected(_) => "device_rejected",
        DriverError::Unreachable(_) => "device_unreachable",
        DriverError::Timeout(_) => "device_timeout",
        DriverError::Encode(_) => "out_of_range",
        DriverError::Stopped => "shutting_down",
    }
}

/// Why a method call did not happen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// No such device.
    #[error("no device `{0}`")]
    NoDevice(String),
    /// The device's model has no such method.
    #[error("device `{device}` has no method `{method}`")]
    NoMethod {
        /// Device.
        device: String,
        /// Method.
        method: String,
    },
    /// The inputs failed the model's checks.
    #[error(transparent)]
    Check(#[from] CallCheckError),
    /// No driver serves the device in this build.
    #[error("no driver serves `{0}` in this build")]
    NoDriver(String),
    /// The device or its link failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

impl CallError {
    /// A short code for the audit log and the API.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::NoDevice(_) => "unknown_device",
            CallError::NoMethod { .. } => "unknown_method",
            CallError::Check(CallCheckError::UnknownInput { .. }) => "unknown_input",
            CallError::Check(CallCheckError::MissingInput { .. }) => "missing_input",
            CallError::Check(CallCheckError::WrongType { .. }) => "wrong_type",
            CallError::Check(CallCheckError::OutOfRange { .. }) => "out_of_range",
            CallError::NoDriver(_) => "no_driver",
            CallError::Driver(e) => driver_code(e),
        }
    }
}

/// A method's outputs by name, in declared order.
pub type Outputs = serde_json::Map<String, serde_json::Value>;

/// Properties that active rules hold: `(device, property)` → rule.
#[derive(Debug, Default)]
pub struct Holds {
    held: RwLock<HashMap<(String, String), String>>,
}

impl Holds {
    /// `rule` holds `device.property` from now on.
    pub fn hold(&self, rule: &str, device: &str, property: &str) {
        self.held
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((device.into(), property.into()), rule.into());
    }

    /// Releases everything `rule` holds.
    pub fn release(&self, rule: &str) {
        self.held
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, holder| holder != rule);
    }

    /// The rule holding `device.property`, if any.
    pub fn holder(&self, device: &str, property: &str) -> Option<String> {
        self.held
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(device.to_string(), property.to_string()))
            .cloned()
    }

    /// What `rule` holds, as `device.property`.
    pub fn held_by(&self, rule: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .held
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, holder)| *holder == rule)
            .map(|((d, p), _)| format!("{d}.{p}"))
            .collect();
        out.sort();
        out
    }
}

/// A writer per running device, changed as devices start and stop.
#[derive(Default)]
pub struct Writers {
    map: RwLock<HashMap<String, Arc<dyn DeviceWriter>>>,
}

impl Writers {
    /// The writer of `device`, if it runs.
    pub fn get(&self, device: &str) -> Option<Arc<dyn DeviceWriter>> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(device)
            .cloned()
    }

    /// `device` runs with `writer` from now on.
    pub fn insert(&self, device: &str, writer: Arc<dyn DeviceWriter>) {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device.to_string(), writer);
    }

    /// `device` stopped.
    pub fn remove(&self, device: &str) {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(device);
    }
}

impl From<HashMap<String, Arc<dyn DeviceWriter>>> for Writers {
    fn from(map: HashMap<String, Arc<dyn DeviceWriter>>) -> Self {
        Writers {
            map: RwLock::new(map),
        }
    }
}

/// The write path, shared by the API and the rules.
pub struct Control {
    /// The running project, for models and limits.
    pub running: Arc<Running>,
    /// Live readings, for the old value.
    pub live: Arc<Live>,
    /// A writer per device.
    pub writers: Arc<Writers>,
    /// What rules hold.
    pub holds: Arc<Holds>,
    /// Where the audit log goes.
    pub journal: Arc<Journal>,
}

impl Control {
    /// Checks `json` against `device.property` and writes it. Every attempt
    /// on a known property lands in the audit log, with its outcome.
    pub async fn write(
        &self,
        actor: &Actor,
        device: &str,
        property: &str,
        json: &serde_json::Value,
    ) -> Result<(Value, Written), WriteError> {
        let project = self.running.project();
        if !project.devices.contains_key(device) {
            return Err(WriteError::NoDevice(device.into()));
        }
        let Some(model_property) = project.property(device, property) else {
            return Err(WriteError::NoProperty {
                device: device.into(),
                property: property.into(),
            });
        };
        let old = self
            .live
            .reading(device, property)
            .ok()
            .and_then(|r| r.value);
        let result = self
            .attempt(actor, device, property, model_property, json)
            .await;
        let (outcome, message) = match &result {
            Ok((_, Written::Confirmed)) => ("ok", None),
            Ok((_, Written::Sent)) => ("sent", None),
            Err(e) => (e.code(), Some(e.to_string())),
        };
        let entry = json!({
            "who": actor.to_string(),
            "device": device,
            "property": property,
            "old": old,
            "new": result.as_ref().map_or_else(|_| json.clone(), |(v, _)| json!(v)),
            "result": outcome,
            "message": message,
        });
        self.audit(actor, entry).await;
        result
    }

    /// Records `entry` in the audit log, with the API client's address,
    /// durably before the caller hears of it: a write or call that was
    /// answered is in the audit log, whatever happens next.
    async fn audit(&self, actor: &Actor, mut entry: serde_json::Value) {
        if let Actor::Api {
            peer: Some(peer), ..
        } = actor
        {
            entry["peer"] = json!(peer.to_string());
        }
        self.journal.record_durably(Log::Audit, &entry).await;
    }

    /// Checks `inputs` against `device`'s method `method` and calls it.
    /// Every call of a known method lands in the audit log, with its
    /// inputs, outputs and outcome, before the caller hears of it.
    pub async fn call(
        &self,
        actor: &Actor,
        device: &str,
        method: &str,
        inputs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Outputs, CallError> {
        let project = self.running.project();
        let Some(located) = project.devices.get(device) else {
            return Err(CallError::NoDevice(device.into()));
        };
        let Some(declared) = project
            .models
            .get(&located.value.model)
            .and_then(|m| m.value.methods.get(method))
        else {
            return Err(CallError::NoMethod {
                device: device.into(),
                method: method.into(),
            });
        };
        let result = self
            .attempt_call(actor, device, method, declared, inputs)
            .await;
        let (outcome, message) = match &result {
            Ok(_) => ("ok", None),
            Err(e) => (e.code(), Some(e.to_string())),
        };
        let entry = json!({
            "who": actor.to_string(),
            "device": device,
            "method": method,
            "inputs": inputs,
            "outputs": result.as_ref().ok(),
            "result": outcome,
            "message": message,
        });
        self.audit(actor, entry).await;
        result
    }

    async fn attempt_call(
        &self,
        actor: &Actor,
        device: &str,
        method: &str,
        declared: &ferrite_models::model::Method,
        inputs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Outputs, CallError> {
        let values = check_inputs(method, declared, inputs)?;
        let writer = self
            .writers
            .get(device)
            .ok_or_else(|| CallError::NoDriver(device.into()))?;
        tracing::info!(who = %actor, device, method, "call");
        let outputs = writer.call(method, values).await?;
        Ok(declared
            .outputs
            .iter()
            .zip(outputs)
            .map(|(arg, value)| (arg.name.clone(), json!(value)))
            .collect())
    }

    async fn attempt(
        &self,
        actor: &Actor,
        device: &str,
        property: &str,
        model_property: &ferrite_models::model::Property,
        json: &serde_json::Value,
    ) -> Result<(Value, Written), WriteError> {
        let value = check_write(property, model_property, json)?;
        if let Some(rule) = self.holds.holder(device, property)
            && *actor != Actor::Rule(rule.clone())
        {
            return Err(WriteError::Held {
                rule,
                device: device.into(),
                property: property.into(),
            });
        }
        let writer = self
            .writers
            .get(device)
            .ok_or_else(|| WriteError::NoDriver(device.into()))?;
        tracing::info!(who = %actor, device, property, value = %value, "write");
        let written = writer.write(property, value.clone()).await?;
        Ok((value, written))
    }
}
