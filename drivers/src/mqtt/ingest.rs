//! What arrives on the broker, turned into readings and device status.
//!
//! [`Ingest`] holds the routing tables (topic → properties, Sparkplug node →
//! devices) and each device's state. It is pure bookkeeping: it takes one
//! publish, or one clock tick, and returns the [`Update`]s for the store plus
//! any Sparkplug rebirth request to publish. The reader task in `mod.rs`
//! does the I/O around it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_models::Value;
use ferrite_models::device::Sparkplug;
use ferrite_models::model::{JsonPointer, MqttBinding, ValueType};
use ferrite_models::payload;
use ferrite_models::sparkplug::{self, MessageType, Topic};
use ferrite_proto::sparkplug::Payload;
use ferrite_proto::sparkplug::payload::Metric;
use prost::Message;
use tokio::sync::oneshot;

use ferrite_core::driver::DeviceEntry;
use ferrite_core::reading::{Sample, Status, Update};

/// How often at most a device's malformed payloads are logged.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How often at most a Sparkplug node is asked to rebirth.
const REBIRTH_EVERY: Duration = Duration::from_secs(5);

/// One property of an MQTT device.
#[derive(Debug, Clone)]
pub(super) struct Point {
    pub name: Arc<str>,
    pub index: u16,
    pub ty: ValueType,
    pub binding: MqttBinding,
}

/// One MQTT device's state.
#[derive(Debug)]
pub(super) struct DeviceState {
    pub name: Arc<str>,
    /// Its number, as [`Update`]s carry it.
    pub index: usize,
    pub points: Vec<Point>,
    pub sparkplug: Option<Sparkplug>,
    /// The device's `mqtt:` settings (status topic, Sparkplug ids).
    mqtt: ferrite_models::device::Mqtt,
    /// Offline after this long without a publish.
    timeout: Option<Duration>,
    last_seen: Option<Instant>,
    pub status: Status,
    /// Why it is offline, for write refusals.
    pub why: String,
    /// Sparkplug: alias → point, and each point's data type, from the birth.
    aliases: HashMap<u64, usize>,
    pub datatypes: HashMap<usize, u32>,
    malformed_since_warn: u64,
    last_warn: Option<Instant>,
}

impl DeviceState {
    /// Takes over what the gateway knew of the device before it was
    /// reconfigured: its status, and what its last birth taught, if its
    /// metrics are the same.
    fn carry_over(&mut self, old: DeviceState) {
        self.last_seen = old.last_seen;
        self.status = old.status;
        let metrics = |d: &DeviceState| -> Vec<Option<String>> {
            d.points.iter().map(|p| p.binding.metric.clone()).collect()
        };
        if metrics(self) == metrics(&old) && self.sparkplug == old.sparkplug {
            self.aliases = old.aliases;
            self.datatypes = old.datatypes;
        }
        if old.status != Status::Online {
            self.why = old.why;
        }
    }
}

/// A write waiting for the device to publish the written value.
pub(super) struct Waiter {
    pub point: usize,
    pub value: Value,
    pub done: oneshot::Sender<()>,
}

/// A Sparkplug edge node as the gateway tracks it.
#[derive(Debug, Default)]
struct Node {
    /// Devices (by ID; `None` for the node's own metrics) → device slot.
    members: HashMap<Option<String>, usize>,
    /// The bdSeq of the node's current session, from its NBIRTH.
    bd_seq: Option<u64>,
    last_rebirth: Option<Instant>,
}

/// What one publish or tick produced.
#[derive(Default)]
pub(super) struct Outcome {
    /// For the store, in order.
    pub updates: Vec<Update>,
    /// Confirmed writes, answered once `updates` are visible.
    pub confirmed: Vec<oneshot::Sender<()>>,
    /// Publishes to make (a Sparkplug rebirth request).
    pub publish: Vec<(String, Vec<u8>)>,
    /// Payloads that did not decode.
    pub malformed: u64,
}

/// A device's status topic: which payload means what.
#[derive(Debug)]
struct StatusTopic {
    slot: usize,
    online: String,
    offline: String,
}

/// The routing tables and every MQTT device's state.
#[derive(Default)]
pub(super) struct Ingest {
    /// By slot; a removed device's slot is `None` until a device takes it.
    pub devices: Vec<Option<DeviceState>>,
    /// Plain topic → (device slot, point), grouped by device. Shared, so
    /// that routing a publish copies no table.
    topics: HashMap<String, Arc<[(usize, usize)]>>,
    /// Status topic → the devices announcing themselves there.
    status: HashMap<String, Arc<[StatusTopic]>>,
    /// Group ID → edge node ID → node, looked up without allocating.
    nodes: HashMap<String, HashMap<String, Node>>,
    pub waiters: Vec<(usize, Waiter)>,
    /// Devices removed during a reconfiguration, until it ends: one that
    /// comes back (reconfigured) takes over its state.
    retired: HashMap<Arc<str>, DeviceState>,
}

impl Ingest {
    /// Routes `entry`'s topics to it from now on, replacing an earlier
    /// device of that name (whose status it keeps, so that an edit does not
    /// show a publishing device offline until it publishes again). Returns
    /// its slot and its first update.
    pub fn add(&mut self, entry: &DeviceEntry<'_>) -> Option<(usize, Update)> {
        let device = &entry.located.value;
        let mqtt = device.mqtt.as_ref()?;
        let points: Vec<Point> = entry
            .properties(|p| p.mqtt.as_ref())
            .map(|(index, name, p, b)| Point {
                name: name.clone(),
                index,
                ty: p.ty,
                binding: b.clone(),
            })
            .collect();
        let mut listens: Vec<String> = points
            .iter()
            .filter_map(|p| p.binding.topic.as_ref().map(|t| t.render(entry.name)))
            .collect();
        if let Some(sp) = &mqtt.sparkplug {
            listens.push(Topic::of(sp, MessageType::NBirth).render());
        }
        listens.sort();
        listens.dedup();
        let mut state = DeviceState {
            name: entry.name.into(),
            index: entry.index,
            points,
            sparkplug: mqtt.sparkplug.clone(),
            mqtt: mqtt.clone(),
            timeout: device.mqtt_timeout(),
            last_seen: None,
            status: Status::Offline,
            why: format!("nothing published yet on {}", listens.join(", ")),
            aliases: HashMap::new(),
            datatypes: HashMap::new(),
            malformed_since_warn: 0,
            last_warn: None,
        };
        if let Some(old) = self.retired.remove(entry.name) {
            state.carry_over(old);
        }
        let slot = match self.slot_of(entry.name) {
            Some(slot) => {
                if let Some(old) = self.devices[slot].take() {
                    state.carry_over(old);
                }
                slot
            }
            None => match self.devices.iter().position(Option::is_none) {
                Some(free) => free,
                None => {
                    self.devices.push(None);
                    self.devices.len() - 1
                }
            },
        };
        // A write waiting on the old points would confirm against the new.
        self.waiters.retain(|(s, _)| *s != slot);
        let first = update(
            state.index,
            Some((
                state.status,
                (state.status != Status::Online).then(|| state.why.clone()),
            )),
            false,
            Vec::new(),
        );
        self.devices[slot] = Some(state);
        self.route();
        Some((slot, first))
    }

    /// Stops routing anything to `name`.
    pub fn remove(&mut self, name: &str) {
        if let Some(slot) = self.slot_of(name) {
            if let Some(old) = self.devices[slot].take() {
                self.retired.insert(old.name.clone(), old);
            }
            self.waiters.retain(|(s, _)| *s != slot);
            self.route();
        }
    }

    /// A reconfiguration ended: what it removed is gone for good.
    pub fn forget_retired(&mut self) {
        self.retired.clear();
    }

    /// The slot of the device called `name`.
    pub fn slot_of(&self, name: &str) -> Option<usize> {
        self.devices
            .iter()
            .position(|d| d.as_ref().is_some_and(|d| &*d.name == name))
    }

    /// The device in `slot`.
    pub fn device(&self, slot: usize) -> Option<&DeviceState> {
        self.devices.get(slot)?.as_ref()
    }

    fn device_mut(&mut self, slot: usize) -> Option<&mut DeviceState> {
        self.devices.get_mut(slot)?.as_mut()
    }

    /// Rebuilds the routing tables from the devices. Sparkplug nodes keep
    /// their session (bdSeq) across the rebuild.
    fn route(&mut self) {
        let mut topics: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        let mut status: HashMap<String, Vec<StatusTopic>> = HashMap::new();
        let mut nodes = std::mem::take(&mut self.nodes);
        for group in nodes.values_mut() {
            for node in group.values_mut() {
                node.members.clear();
            }
        }
        for (slot, d) in self.devices.iter().enumerate() {
            let Some(d) = d else { continue };
            for (i, point) in d.points.iter().enumerate() {
                if let Some(topic) = &point.binding.topic {
                    topics
                        .entry(topic.render(&d.name))
                        .or_default()
                        .push((slot, i));
                }
            }
            if let Some(s) = &d.mqtt.status {
                status
                    .entry(s.topic.render(&d.name))
                    .or_default()
                    .push(StatusTopic {
                        slot,
                        online: s.online.clone(),
                        offline: s.offline.clone(),
                    });
            }
            if let Some(sp) = &d.sparkplug {
                nodes
                    .entry(sp.group.clone())
                    .or_default()
                    .entry(sp.node.clone())
                    .or_default()
                    .members
                    .insert(sp.device.clone(), slot);
            }
        }
        for group in nodes.values_mut() {
            group.retain(|_, node| !node.members.is_empty());
        }
        nodes.retain(|_, group| !group.is_empty());
        self.nodes = nodes;
        self.topics = topics.into_iter().map(|(t, r)| (t, r.into())).collect();
        self.status = status.into_iter().map(|(t, e)| (t, e.into())).collect();
    }

    /// Handles one publish.
    pub fn publish(&mut self, topic: &str, body: &[u8], now: Instant) -> Outcome {
        let mut out = Outcome::default();
        if let Some(routes) = self.topics.get(topic).cloned() {
            self.plain(&routes, topic, body, now, &mut out);
        }
        if let Some(entries) = self.status.get(topic).cloned() {
            for entry in entries.iter() {
                let (slot, online, offline) = (entry.slot, &entry.online, &entry.offline);
                if body == online.as_bytes() {
                    self.seen(slot, now, &mut out, Vec::new());
                } else if body == offline.as_bytes() {
                    let why = format!("it announced `{offline}` on {topic}");
                    self.go_offline(slot, why, &mut out);
                } else {
                    let why =
                        format!("status payload is neither `{online}` nor `{offline}` on {topic}");
                    self.malformed(slot, &why, now, &mut out);
                }
            }
        }
        if let Some(t) = Topic::parse(topic) {
            self.sparkplug(t, body, now, &mut out);
        }
        out
    }

    /// Marks devices offline whose timeout has passed.
    pub fn tick(&mut self, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        for slot in 0..self.devices.len() {
            let Some(d) = self.device(slot) else { continue };
            if let (Status::Online, Some(timeout), Some(seen)) = (d.status, d.timeout, d.last_seen)
                && now.duration_since(seen) > timeout
            {
                let why = format!("nothing published within its timeout of {timeout:?}");
                self.go_offline(slot, why, &mut out);
            }
        }
        out
    }

    fn plain(
        &mut self,
        routes: &[(usize, usize)],
        topic: &str,
        body: &[u8],
        now: Instant,
        out: &mut Outcome,
    ) {
        // One update per device, however many of its properties share the topic.
        let mut i = 0;
        while i < routes.len() {
            let slot = routes[i].0;
            let mut samples = Vec::new();
            while i < routes.len() && routes[i].0 == slot {
                let Some(point) = self.device(slot).and_then(|d| d.points.get(routes[i].1)) else {
                    i += 1;
                    continue;
                };
                let pointer: Option<&JsonPointer> = point.binding.json.as_ref();
                match payload::decode(point.ty, pointer, body) {
                    Ok(v) => samples.push((routes[i].1, Sample::Good(v))),
                    Err(e) => {
                        let why = format!("`{}` on {topic}: {e}", point.name);
                        samples.push((routes[i].1, Sample::Bad));
                        self.malformed(slot, &why, now, out);
                    }
                }
                i += 1;
            }
            self.seen(slot, now, out, samples);
        }
    }

    fn sparkplug(&mut self, t: Topic<'_>, body: &[u8], now: Instant, out: &mut Outcome) {
        let Some(node) = self.node(&t) else {
            return;
        };
        let slots: Vec<usize> = match t.kind {
            MessageType::NDeath => node.members.values().copied().collect(),
            MessageType::NCmd | MessageType::DCmd => return,
            _ => match node.members.get(&t.device.map(str::to_string)) {
                Some(slot) => vec![*slot],
                None if t.kind == MessageType::NBirth => Vec::new(),
                None => return,
            },
        };
        let payload = match Payload::decode(body) {
            Ok(p) => p,
            Err(e) => {
                for slot in slots {
                    let why = format!("{} is not a Sparkplug B payload: {e}", t.render());
                    self.malformed(slot, &why, now, out);
                }
                return;
            }
        };
        match t.kind {
            MessageType::NBirth => {
                if let Some(node) = self.node_mut(&t) {
                    node.bd_seq = bd_seq(&payload.metrics);
                }
                for slot in slots {
                    self.birth(slot, &payload.metrics, now, out);
                }
            }
            MessageType::DBirth => {
                for slot in slots {
                    self.birth(slot, &payload.metrics, now, out);
                }
            }
            MessageType::NDeath => {
                // A death certificate from an older session (it can arrive
                // after the new birth) does not kill the new one.
                let current = self.node(&t).and_then(|n| n.bd_seq);
                if let (Some(dead), Some(current)) = (bd_seq(&payload.metrics), current)
                    && dead != current
                {
                    return;
                }
                for slot in slots {
                    let why = format!("its edge node {}/{} died (NDEATH)", t.group, t.node);
                    self.go_offline(slot, why, out);
                }
            }
            MessageType::DDeath => {
                for slot in slots {
                    self.go_offline(slot, "it died (DDEATH)".to_string(), out);
                }
            }
            MessageType::NData | MessageType::DData => {
                for slot in slots {
                    self.data(slot, &payload.metrics, &t, now, out);
                }
            }
            MessageType::NCmd | MessageType::DCmd => {}
        }
    }

    /// A birth: learns names, aliases and data types, then takes the values.
    fn birth(&mut self, slot: usize, metrics: &[Metric], now: Instant, out: &mut Outcome) {
        let Some(d) = self.device_mut(slot) else {
            return;
        };
        d.aliases.clear();
        d.datatypes.clear();
        let mut samples = Vec::new();
        for m in metrics {
            let Some(name) = m.name.as_deref() else {
                continue;
            };
            let Some(i) = d
                .points
                .iter()
                .position(|p| p.binding.metric.as_deref() == Some(name))
            else {
                continue;
            };
            if let Some(alias) = m.alias {
                d.aliases.insert(alias, i);
            }
            if let Some(dt) = m.datatype {
                d.datatypes.insert(i, dt);
            }
            samples.push((i, m));
        }
        let samples = self.metric_samples(slot, samples, now, out);
        self.seen(slot, now, out, samples);
    }

    fn data(
        &mut self,
        slot: usize,
        metrics: &[Metric],
        t: &Topic<'_>,
        now: Instant,
        out: &mut Outcome,
    ) {
        let Some(d) = self.device(slot) else {
            return;
        };
        let mut found = Vec::new();
        let mut unknown_alias = false;
        for m in metrics {
            let by_name = m.name.as_deref().and_then(|n| {
                d.points
                    .iter()
                    .position(|p| p.binding.metric.as_deref() == Some(n))
            });
            let by_alias = m.alias.and_then(|a| d.aliases.get(&a).copied());
            match by_name.or(by_alias) {
                Some(i) => found.push((i, m)),
                None if m.name.is_none() && m.alias.is_some() => unknown_alias = true,
                None => {}
            }
        }
        if unknown_alias {
            self.request_rebirth(t, now, out);
        }
        let samples = self.metric_samples(slot, found, now, out);
        self.seen(slot, now, out, samples);
    }

    fn metric_samples(
        &mut self,
        slot: usize,
        metrics: Vec<(usize, &Metric)>,
        now: Instant,
        out: &mut Outcome,
    ) -> Vec<(usize, Sample)> {
        let mut samples = Vec::new();
        for (i, m) in metrics {
            let Some(point) = self.device(slot).and_then(|d| d.points.get(i)) else {
                continue;
            };
            match sparkplug::metric_value(m, point.ty) {
                Ok(Some(v)) => samples.push((i, Sample::Good(v))),
                Ok(None) => samples.push((i, Sample::Bad)),
                Err(e) => {
                    let why = format!(
                        "metric `{}`: {e}",
                        point.binding.metric.as_deref().unwrap_or("?")
                    );
                    samples.push((i, Sample::Bad));
                    self.malformed(slot, &why, now, out);
                }
            }
        }
        samples
    }

    /// Asks an edge node to publish its births again (it published an alias
    /// the gateway never saw born, for example after the gateway restarted).
    fn request_rebirth(&mut self, t: &Topic<'_>, now: Instant, out: &mut Outcome) {
        let Some(node) = self.node_mut(t) else {
            return;
        };
        if node
            .last_rebirth
            .is_some_and(|at| now.duration_since(at) < REBIRTH_EVERY)
        {
            return;
        }
        node.last_rebirth = Some(now);
        let mut metric = match sparkplug::metric_of(
            ferrite_proto::sparkplug::datatype::BOOLEAN,
            &Value::Bool(true),
        ) {
            Ok(m) => m,
            Err(_) => return,
        };
        metric.name = Some("Node Control/Rebirth".into());
        let payload = Payload {
            timestamp: Some(unix_ms()),
            metrics: vec![metric],
            ..Payload::default()
        };
        let topic = Topic {
            group: t.group,
            kind: MessageType::NCmd,
            node: t.node,
            device: None,
        };
        tracing::info!(
            "asking Sparkplug node {}/{} to rebirth: it used an alias it never announced",
            t.group,
            t.node
        );
        out.publish.push((topic.render(), payload.encode_to_vec()));
    }

    fn node(&self, t: &Topic<'_>) -> Option<&Node> {
        self.nodes.get(t.group)?.get(t.node)
    }

    fn node_mut(&mut self, t: &Topic<'_>) -> Option<&mut Node> {
        self.nodes.get_mut(t.group)?.get_mut(t.node)
    }

    /// The device published: it is online, and these are its samples.
    fn seen(
        &mut self,
        slot: usize,
        now: Instant,
        out: &mut Outcome,
        samples: Vec<(usize, Sample)>,
    ) {
        let Some(d) = self.device_mut(slot) else {
            return;
        };
        d.last_seen = Some(now);
        let status = (d.status != Status::Online).then(|| {
            d.status = Status::Online;
            d.why.clear();
            (Status::Online, None)
        });
        for (point, sample) in &samples {
            if let Sample::Good(v) = sample {
                let mut i = 0;
                while i < self.waiters.len() {
                    let (s, w) = &self.waiters[i];
                    if *s == slot && w.point == *point && same(&w.value, v) {
                        let (_, w) = self.waiters.swap_remove(i);
                        out.confirmed.push(w.done);
                    } else {
                        i += 1;
                    }
                }
            }
        }
        let Some(d) = self.device(slot) else {
            return;
        };
        let samples = samples
            .into_iter()
            .filter_map(|(i, s)| Some((d.points.get(i)?.index, s)))
            .collect();
        out.updates.push(update(d.index, status, true, samples));
    }

    fn go_offline(&mut self, slot: usize, why: String, out: &mut Outcome) {
        let Some(d) = self.device_mut(slot) else {
            return;
        };
        d.status = Status::Offline;
        d.why.clone_from(&why);
        let samples = d.points.iter().map(|p| (p.index, Sample::Stale)).collect();
        out.updates.push(update(
            d.index,
            Some((Status::Offline, Some(why))),
            false,
            samples,
        ));
    }

    fn malformed(&mut self, slot: usize, why: &str, now: Instant, out: &mut Outcome) {
        out.malformed += 1;
        let Some(d) = self.device_mut(slot) else {
            return;
        };
        d.malformed_since_warn += 1;
        if d.last_warn
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            tracing::warn!(
                device = %d.name,
                "malformed payload ({} since the last warning): {why}",
                d.malformed_since_warn
            );
            d.last_warn = Some(now);
            d.malformed_since_warn = 0;
        }
    }
}

/// The `bdSeq` metric of an NBIRTH or NDEATH: which session of the node it
/// belongs to.
fn bd_seq(metrics: &[Metric]) -> Option<u64> {
    let m = metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("bdSeq"))?;
    match sparkplug::metric_value(m, ValueType::Int) {
        Ok(Some(Value::Int(i))) => u64::try_from(i).ok(),
        _ => None,
    }
}

/// Whether a published value confirms a written one. Floats compare within
/// what a 32-bit float keeps, since devices often store them so.
fn same(written: &Value, seen: &Value) -> bool {
    match (written.as_f64(), seen.as_f64()) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * a.abs().max(1.0),
        _ => written == seen,
    }
}

fn update(
    device: usize,
    status: Option<(Status, Option<String>)>,
    seen: bool,
    samples: Vec<(u16, Sample)>,
) -> Update {
    Update {
        device,
        ts: ferrite_core::time::now(),
        status,
        seen,
        samples,
        applied: None,
    }
}

/// Milliseconds since the Unix epoch, as Sparkplug timestamps are.
pub(super) fn unix_ms() -> u64 {
    u64::try_from(ferrite_core::time::now() / 1000).unwrap_or(0)
}
