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
use ferrite_core::driver::{DeviceWriter, DriverError, WriteAudit, Written};

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
    /// on a known property lands in the audit log, with its outcome, before
    /// the caller hears of it. A write the device confirms has its entry
    /// carried by the read-back (see [`WriteAudit`]): both are kept in one
    /// commit, one fsync.
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
            .and_then(|r| r.value());
        let entry = |new: serde_json::Value, outcome: &str, message: Option<String>| {
            with_peer(
                actor,
                json!({
                    "who": actor.to_string(),
                    "device": device,
                    "property": property,
                    "old": old,
                    "new": new,
                    "result": outcome,
                    "message": message,
                }),
            )
        };
        let result = match self.prepare(actor, device, property, model_property, json) {
            Ok((value, writer)) => {
                tracing::info!(who = %actor, device, property, value = %value, "write");
                let carried = serde_json::to_vec(&entry(json!(value), "ok", None)).map_or_else(
                    |e| {
                        tracing::error!("cannot encode an audit entry: {e}");
                        WriteAudit::default()
                    },
                    WriteAudit::new,
                );
                match writer.write(property, value.clone(), carried.clone()).await {
                    // Its read-back was committed with the entry.
                    Ok(Written::Confirmed) if carried.is_taken() => {
                        return Ok((value, Written::Confirmed));
                    }
                    Ok(written) => Ok((value, written)),
                    Err(e) => Err(WriteError::from(e)),
                }
            }
            Err(e) => Err(e),
        };
        // Not carried: a write refused here or by the device, or only sent,
        // or a driver that confirms without a read-back.
        let (outcome, message) = match &result {
            Ok((_, Written::Confirmed)) => ("ok", None),
            Ok((_, Written::Sent)) => ("sent", None),
            Err(e) => (e.code(), Some(e.to_string())),
        };
        let new = result
            .as_ref()
            .map_or_else(|_| json.clone(), |(v, _)| json!(v));
        self.journal
            .record_durably(Log::Audit, &entry(new, outcome, message))
            .await;
        result
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
        // Durably before the caller hears of it: a call that was answered
        // is in the audit log, whatever happens next.
        self.journal
            .record_durably(Log::Audit, &with_peer(actor, entry))
            .await;
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

    /// Checks `json` for `property` and finds the device's writer: the
    /// value to write, or why not.
    fn prepare(
        &self,
        actor: &Actor,
        device: &str,
        property: &str,
        model_property: &ferrite_models::model::Property,
        json: &serde_json::Value,
    ) -> Result<(Value, Arc<dyn DeviceWriter>), WriteError> {
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
        Ok((value, writer))
    }
}

/// `entry` with the API client's address, where it is known.
fn with_peer(actor: &Actor, mut entry: serde_json::Value) -> serde_json::Value {
    if let Actor::Api {
        peer: Some(peer), ..
    } = actor
    {
        entry["peer"] = json!(peer.to_string());
    }
    entry
}

#[cfg(test)]
mod tests {
    //! The write path on a real sled store, the real store writer and the
    //! real journal. The device confirms as every confirming driver does:
    //! its read-back goes through `show_written` on the urgent queue.

    use std::time::Duration;

    use ferrite_core::driver::{BoxFuture, show_written};
    use ferrite_core::reading::{Sample, Update};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::journal::Retention;
    use crate::names::Names;
    use crate::store::writer::{Queues, Writer};
    use crate::store::{End, SledStore, Store};

    const PROJECT: &[(&str, &str)] = &[
        (
            "ferrite.toml",
            "[gateway]\nid = \"t\"\ndata_dir = \"data\"\n",
        ),
        (
            "models/m.yaml",
            "kind: DeviceModel\nname: m\nproperties:\n  sp: { type: float, access: readwrite, max: 100, modbus: { table: holding, address: 0, format: f32 } }\n",
        ),
        (
            "devices/d.yaml",
            "kind: Device\nname: d\nmodel: m\nmodbus-tcp: { host: 127.0.0.1, port: 1, unit: 1 }\n",
        ),
    ];

    /// Confirms each write with a read-back of the written value, or
    /// refuses it as the device would.
    struct ReadBack {
        urgent: mpsc::Sender<Update>,
        device: usize,
        property: u16,
        refuse: bool,
    }

    impl DeviceWriter for ReadBack {
        fn write<'a>(
            &'a self,
            _: &'a str,
            value: Value,
            audit: WriteAudit,
        ) -> BoxFuture<'a, Result<Written, DriverError>> {
            Box::pin(async move {
                if self.refuse {
                    return Err(DriverError::Rejected("not in this mode".into()));
                }
                let sample = Sample::Good(value);
                show_written(&self.urgent, self.device, self.property, sample, &audit).await
            })
        }
    }

    struct Rig {
        _dir: tempfile::TempDir,
        control: Control,
        store: Arc<dyn Store>,
        journal_stop: CancellationToken,
        journal_tasks: TaskTracker,
        stop: CancellationToken,
        tasks: TaskTracker,
        // The writer runs while a poll queue is open.
        _polls: mpsc::Sender<Update>,
    }

    async fn rig(refuse: bool) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("rules")).expect("mkdir");
        for (path, text) in PROJECT {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        let report = ferrite_models::check(&dir.path().join("ferrite.toml"));
        assert!(report.is_ok(), "{:?}", report.diagnostics);
        let project = report.project;
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(&dir.path().join("data")).expect("store"));
        let names = Names::of(&project);
        let live = Live::of(&project, names.clone());
        let running = Running::new(project);
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let (polls, updates) = mpsc::channel(16);
        let (urgent_tx, urgent) = mpsc::channel(16);
        let writer = Writer::new(store.clone(), live.clone(), running.clone(), Arc::default());
        tasks.spawn(writer.run(Queues { updates, urgent }, stop.clone()));
        let (journal_stop, journal_tasks) = (CancellationToken::new(), TaskTracker::new());
        let retention = Retention {
            max_entries: 100,
            max_age: Duration::from_secs(3600),
        };
        let journal = Journal::start(
            store.clone(),
            retention,
            &journal_tasks,
            journal_stop.clone(),
        );
        let device = names.find("d").expect("d");
        let device_writer = ReadBack {
            urgent: urgent_tx,
            device,
            property: names.property(device, "sp").expect("sp"),
            refuse,
        };
        let writers = HashMap::from([(
            "d".to_string(),
            Arc::new(device_writer) as Arc<dyn DeviceWriter>,
        )]);
        let control = Control {
            running,
            live,
            writers: Arc::new(Writers::from(writers)),
            holds: Arc::default(),
            journal,
        };
        Rig {
            _dir: dir,
            control,
            store,
            journal_stop,
            journal_tasks,
            stop,
            tasks,
            _polls: polls,
        }
    }

    impl Rig {
        /// The audit log, oldest first.
        fn audit(&self) -> Vec<serde_json::Value> {
            let mut entries = self
                .store
                .recent(Log::Audit, u64::MAX, 100, &|_| true)
                .expect("audit");
            entries.reverse();
            entries
                .iter()
                .map(|e| serde_json::from_slice(&e.body).expect("json"))
                .collect()
        }

        async fn stop_journal(&self) {
            self.journal_stop.cancel();
            self.journal_tasks.close();
            self.journal_tasks.wait().await;
        }

        async fn stop(self) {
            self.stop_journal().await;
            self.stop.cancel();
            self.tasks.close();
            self.tasks.wait().await;
        }
    }

    fn operator() -> Actor {
        Actor::Api {
            token: Some("ops".into()),
            peer: Some("127.0.0.1:5000".parse().expect("addr")),
        }
    }

    #[tokio::test]
    async fn a_confirmed_write_keeps_its_audit_entry_in_its_read_backs_commit() {
        let rig = rig(false).await;
        // With the journal stopped, only the read-back's commit can keep
        // the entries.
        rig.stop_journal().await;
        for _ in 0..2 {
            let written = rig
                .control
                .write(&operator(), "d", "sp", &json!(42.5))
                .await
                .expect("write");
            assert_eq!(written, (Value::Float(42.5), Written::Confirmed));
        }
        let audit = rig.audit();
        assert_eq!(audit.len(), 2, "{audit:?}");
        // The second read-back changed nothing past the deadband, so its
        // commit held the entry alone.
        let first = &audit[0];
        assert_eq!(first["who"], "api ops");
        assert_eq!(first["peer"], "127.0.0.1:5000");
        assert_eq!(first["device"], "d");
        assert_eq!(first["property"], "sp");
        assert_eq!(first["result"], "ok");
        assert_eq!(first["new"], 42.5);
        assert_eq!(first["old"], serde_json::Value::Null);
        assert_eq!(audit[1]["old"], 42.5, "the read-back was visible");
        let history = rig
            .store
            .history("d", "sp", 0, i64::MAX, 10, End::Oldest)
            .expect("history");
        assert_eq!(history.len(), 1, "{history:?}");
        rig.stop().await;
    }

    #[tokio::test]
    async fn a_write_that_fails_is_audited_through_the_journal() {
        let rig = rig(true).await;
        let err = rig
            .control
            .write(&operator(), "d", "sp", &json!(42.5))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), "device_rejected");
        // Refused here, before the device.
        let err = rig
            .control
            .write(&operator(), "d", "sp", &json!(500))
            .await
            .expect_err("out of range");
        assert_eq!(err.code(), "out_of_range");
        let audit = rig.audit();
        let results: Vec<&serde_json::Value> = audit.iter().map(|e| &e["result"]).collect();
        assert_eq!(results, ["device_rejected", "out_of_range"], "{audit:?}");
        assert!(
            audit[0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not in this mode")),
            "{audit:?}"
        );
        assert_eq!(audit[1]["new"], 500);
        rig.stop().await;
    }
}
