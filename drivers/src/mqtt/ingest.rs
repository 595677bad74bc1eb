//! What arrives on the broker, turned into readings and device status.
//!
//! [`Ingest`] holds the routing tables (topic → properties, Sparkplug node →
//! devices) and each device's state. It is pure bookkeeping: it takes one
//! publish, or one clock tick, and returns the [`Update`]s for the store plus
//! any Sparkplug rebirth request to publish. The reader task in `mod.rs`
//! does the I/O around it.

use std::collections::{HashMap, HashSet};
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

use ferrite_core::driver::{DeviceEntry, WriteAudit};
use ferrite_core::reading::{Sample, Status, Update};

/// How often at most a device's malformed payloads are logged.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How often at most a Sparkplug node is asked to rebirth.
const REBIRTH_EVERY: Duration = Duration::from_secs(5);
/// Most messages a Sparkplug node may have waiting behind a missing `seq`;
/// one more gives up on it at once.
const MAX_HELD: usize = 64;

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
    /// The write's audit entry, for the confirming update to carry.
    pub audit: WriteAudit,
}

/// A Sparkplug edge node as the gateway tracks it: the host side of the
/// spec's session state machine.
#[derive(Debug, Default)]
struct Node {
    /// Devices (by ID; `None` for the node's own metrics) → device slot.
    members: HashMap<Option<String>, usize>,
    /// The bdSeq of the node's current session, from its NBIRTH.
    bd_seq: Option<u64>,
    /// The `seq` of the last message taken in order; `None` outside a
    /// session (before the first NBIRTH the gateway sees, after an NDEATH),
    /// when data is not taken.
    seq: Option<u8>,
    /// Devices born (DBIRTH) in this session.
    born: HashSet<String>,
    /// Messages that arrived ahead of a missing `seq`, by `seq`.
    held: HashMap<u8, Held>,
    /// When the first of `held` arrived: the reorder timeout runs from here.
    held_since: Option<Instant>,
    /// A rebirth was asked for and its NBIRTH has not come: asked again
    /// every [`REBIRTH_EVERY`].
    awaiting_birth: bool,
    last_rebirth: Option<Instant>,
    warned_no_seq: bool,
}

impl Node {
    /// The slots of the node's devices, in order.
    fn slots(&self) -> Vec<usize> {
        let mut slots: Vec<usize> = self.members.values().copied().collect();
        slots.sort_unstable();
        slots
    }

    /// Forgets the session: what is held, and which devices are born.
    fn end_session(&mut self) {
        self.seq = None;
        self.born.clear();
        self.held.clear();
        self.held_since = None;
        self.awaiting_birth = false;
    }
}

/// A held message of a node's stream.
#[derive(Debug)]
struct Held {
    kind: MessageType,
    device: Option<String>,
    payload: Payload,
}

/// A Sparkplug edge node's IDs, borrowed from the topic (so a message
/// costs no copy of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeId<'a> {
    group: &'a str,
    node: &'a str,
}

/// What one publish or tick produced.
#[derive(Default)]
pub(super) struct Outcome {
    /// For the store, in order.
    pub updates: Vec<Update>,
    /// Confirmed writes, answered once `updates` are visible.
    pub confirmed: Vec<oneshot::Sender<()>>,
    /// The confirmed writes' audit entries, stored with `updates`.
    pub audit: Vec<Vec<u8>>,
    /// Publishes to make (a Sparkplug rebirth request).
    pub publish: Vec<(String, Vec<u8>)>,
    /// Retained publishes to make (the host's STATE).
    pub retained: Vec<(String, Vec<u8>)>,
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
    /// How long a Sparkplug message ahead of a missing `seq` waits for it.
    pub reorder_timeout: Duration,
    /// The STATE topic of the gateway as a Sparkplug host, with a host ID.
    pub state_topic: Option<String>,
}

/// The payload of the host's STATE message (Sparkplug 3.0, 4.2.3.1.2).
pub(super) fn host_state(online: bool) -> Vec<u8> {
    serde_json::json!({ "online": online, "timestamp": unix_ms() })
        .to_string()
        .into_bytes()
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

    /// The names of the devices a publish on `topic` is for: those with a
    /// property or their status on it, or the Sparkplug device it names
    /// (for a node's own topics, the node's devices).
    pub fn devices_on(&self, topic: &str) -> Vec<Arc<str>> {
        let mut slots: Vec<usize> = Vec::new();
        if let Some(routes) = self.topics.get(topic) {
            slots.extend(routes.iter().map(|(slot, _)| *slot));
        }
        if let Some(entries) = self.status.get(topic) {
            slots.extend(entries.iter().map(|e| e.slot));
        }
        if let Some(t) = Topic::parse(topic)
            && let Some(node) = self.node(&t)
        {
            match node.members.get(&t.device.map(str::to_string)) {
                Some(slot) => slots.push(*slot),
                None if t.device.is_none() => slots.extend(node.slots()),
                None => {}
            }
        }
        slots.sort_unstable();
        slots.dedup();
        slots
            .into_iter()
            .filter_map(|slot| Some(self.device(slot)?.name.clone()))
            .collect()
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
        } else if self.state_topic.as_deref() == Some(topic) {
            self.host_state_seen(topic, body, &mut out);
        }
        out
    }

    /// A STATE message on the gateway's own host ID. One that says the
    /// host is offline (another client's, or a stale will) is answered
    /// with the host's STATE at once, as the spec requires
    /// (`tck-id-message-flow-hid-sparkplug-state-message-delivered`).
    fn host_state_seen(&mut self, topic: &str, body: &[u8], out: &mut Outcome) {
        let online = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("online")?.as_bool());
        if online != Some(true) {
            tracing::info!("{topic} said the gateway is not online; publishing its STATE again");
            out.retained.push((topic.to_string(), host_state(true)));
        }
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
        self.sparkplug_tick(now, &mut out);
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
        if matches!(t.kind, MessageType::NCmd | MessageType::DCmd) {
            return;
        }
        let Some(node) = self.node(&t) else {
            return;
        };
        let payload = match Payload::decode(body) {
            Ok(p) => p,
            Err(e) => {
                let slots: Vec<usize> = match t.kind {
                    MessageType::NDeath => node.members.values().copied().collect(),
                    _ => node
                        .members
                        .get(&t.device.map(str::to_string))
                        .into_iter()
                        .copied()
                        .collect(),
                };
                for slot in slots {
                    let why = format!("{} is not a Sparkplug B payload: {e}", t.render());
                    self.malformed(slot, &why, now, out);
                }
                return;
            }
        };
        let id = NodeId {
            group: t.group,
            node: t.node,
        };
        match t.kind {
            MessageType::NDeath => self.node_death(&id, &payload, out),
            MessageType::NBirth => self.node_birth(&id, payload, now, out),
            _ => self.sequenced(&id, t.kind, t.device, payload, now, out),
        }
    }

    /// An NDEATH: every device of the node goes offline, its values stale,
    /// and nothing more is taken from it until its next NBIRTH. A death
    /// certificate from an older session (it can arrive after the new
    /// birth) does not kill the new one.
    fn node_death(&mut self, id: &NodeId<'_>, payload: &Payload, out: &mut Outcome) {
        let Some(node) = self.node_at(id) else {
            return;
        };
        if let (Some(dead), Some(current)) = (bd_seq(&payload.metrics), node.bd_seq)
            && dead != current
        {
            return;
        }
        node.end_session();
        for slot in node.slots() {
            let why = format!("its edge node {}/{} died (NDEATH)", id.group, id.node);
            self.go_offline(slot, why, out);
        }
    }

    /// An NBIRTH starts the node's session: its `seq` is where the count
    /// starts, its bdSeq names the session, and its devices must be born
    /// again (DBIRTH) before their data is taken.
    fn node_birth(&mut self, id: &NodeId<'_>, payload: Payload, now: Instant, out: &mut Outcome) {
        let Some(node) = self.node_at(id) else {
            return;
        };
        node.end_session();
        node.bd_seq = bd_seq(&payload.metrics);
        node.seq = Some(payload.seq.and_then(|s| u8::try_from(s).ok()).unwrap_or(0));
        self.take(id, MessageType::NBirth, None, &payload, now, out);
    }

    /// Any other message of the node's stream (DBIRTH, NDATA, DDATA,
    /// DDEATH): taken in `seq` order. One that arrives ahead of a missing
    /// `seq` is held until the missing one comes (then both are taken, in
    /// order), or until the reorder timeout passes (see [`Ingest::give_up`]).
    fn sequenced(
        &mut self,
        id: &NodeId<'_>,
        kind: MessageType,
        device: Option<&str>,
        payload: Payload,
        now: Instant,
        out: &mut Outcome,
    ) {
        let reorder_timeout = self.reorder_timeout;
        let Some(node) = self.node_at(id) else {
            return;
        };
        let Some(last) = node.seq else {
            let why = format!("it published {} before its NBIRTH", kind.as_str());
            let slots = node.slots();
            self.unborn(id, &slots, &why, now, out);
            return;
        };
        let Some(seq) = payload.seq.and_then(|s| u8::try_from(s).ok()) else {
            // Without a seq (which the spec requires) the message cannot be
            // ordered: it is taken as it comes.
            if !node.warned_no_seq {
                node.warned_no_seq = true;
                tracing::warn!(
                    "Sparkplug node {}/{} publishes without a seq (0-255): gaps cannot be noticed",
                    id.group,
                    id.node
                );
            }
            self.take(id, kind, device, &payload, now, out);
            return;
        };
        let expected = last.wrapping_add(1);
        if seq == expected {
            node.seq = Some(seq);
            self.take(id, kind, device, &payload, now, out);
            self.release(id, now, out);
            return;
        }
        // Ahead by up to half the ring: a gap so far. Behind: a duplicate,
        // or one already given up on.
        if seq.wrapping_sub(expected) >= 128 || node.held.contains_key(&seq) {
            tracing::debug!(
                "Sparkplug node {}/{}: dropped {} with seq {seq}, expecting {expected}",
                id.group,
                id.node,
                kind.as_str()
            );
            return;
        }
        node.held.insert(
            seq,
            Held {
                kind,
                device: device.map(str::to_string),
                payload,
            },
        );
        node.held_since.get_or_insert(now);
        if reorder_timeout.is_zero() || node.held.len() >= MAX_HELD {
            self.give_up(id, now, out);
        }
    }

    /// Takes the held messages that follow the node's `seq` now.
    fn release(&mut self, id: &NodeId<'_>, now: Instant, out: &mut Outcome) {
        loop {
            let Some(node) = self.node_at(id) else {
                return;
            };
            let Some(next) = node.seq.map(|s| s.wrapping_add(1)) else {
                return;
            };
            let Some(held) = node.held.remove(&next) else {
                if node.held.is_empty() {
                    node.held_since = None;
                }
                return;
            };
            node.seq = Some(next);
            self.take(
                id,
                held.kind,
                held.device.as_deref(),
                &held.payload,
                now,
                out,
            );
        }
    }

    /// The reorder timeout passed with a `seq` still missing (or too many
    /// messages wait behind it): the node's values are marked stale, what
    /// is held is taken in order (those values are fresh again), and the
    /// node is asked to rebirth, which brings every current value.
    fn give_up(&mut self, id: &NodeId<'_>, now: Instant, out: &mut Outcome) {
        let Some(node) = self.node_at(id) else {
            return;
        };
        let Some(expected) = node.seq.map(|s| s.wrapping_add(1)) else {
            return;
        };
        let mut held: Vec<(u8, Held)> = std::mem::take(&mut node.held).into_iter().collect();
        node.held_since = None;
        held.sort_by_key(|(seq, _)| seq.wrapping_sub(expected));
        let missing = held
            .first()
            .map_or(0, |(seq, _)| seq.wrapping_sub(expected));
        let slots = node.slots();
        let why = format!(
            "{missing} message(s) missing before seq {}",
            held.first().map_or(expected, |(seq, _)| *seq)
        );
        for &slot in &slots {
            self.stale(slot, out);
        }
        for (seq, h) in held {
            if let Some(node) = self.node_at(id) {
                node.seq = Some(seq);
            }
            self.take(id, h.kind, h.device.as_deref(), &h.payload, now, out);
        }
        if let Some(node) = self.node_at(id) {
            node.awaiting_birth = true;
        }
        self.request_rebirth(id, &why, now, out);
    }

    /// Data that cannot be trusted until a birth (data before the NBIRTH,
    /// or a device's before its DBIRTH): dropped; the devices' values go
    /// stale, once, and the node is asked to rebirth.
    fn unborn(
        &mut self,
        id: &NodeId<'_>,
        slots: &[usize],
        why: &str,
        now: Instant,
        out: &mut Outcome,
    ) {
        let Some(node) = self.node_at(id) else {
            return;
        };
        if !node.awaiting_birth {
            node.awaiting_birth = true;
            for &slot in slots {
                self.stale(slot, out);
            }
        }
        self.request_rebirth(id, why, now, out);
    }

    /// Takes one message of the node's stream, in order.
    fn take(
        &mut self,
        id: &NodeId<'_>,
        kind: MessageType,
        device: Option<&str>,
        payload: &Payload,
        now: Instant,
        out: &mut Outcome,
    ) {
        let Some(node) = self.node_at(id) else {
            return;
        };
        let slot = node.members.get(&device.map(str::to_string)).copied();
        match kind {
            MessageType::NBirth | MessageType::DBirth => {
                if let Some(d) = device {
                    node.born.insert(d.to_string());
                }
                if let Some(slot) = slot {
                    self.birth(slot, &payload.metrics, now, out);
                }
            }
            MessageType::DDeath => {
                if let Some(d) = device {
                    node.born.remove(d);
                }
                if let Some(slot) = slot {
                    self.go_offline(slot, "it died (DDEATH)".to_string(), out);
                }
            }
            MessageType::NData | MessageType::DData => {
                let Some(slot) = slot else { return };
                if let Some(d) = device
                    && !node.born.contains(d)
                {
                    let why = format!("device {d} published DDATA before its DBIRTH");
                    self.unborn(id, &[slot], &why, now, out);
                    return;
                }
                self.data(slot, id, &payload.metrics, now, out);
            }
            MessageType::NDeath | MessageType::NCmd | MessageType::DCmd => {}
        }
    }

    /// Every value of the device goes stale (its status stays).
    fn stale(&mut self, slot: usize, out: &mut Outcome) {
        self.stale_with(slot, None, out);
    }

    /// Every value of the device goes stale, with `status` if it changed.
    fn stale_with(
        &mut self,
        slot: usize,
        status: Option<(Status, Option<String>)>,
        out: &mut Outcome,
    ) {
        let Some(d) = self.device(slot) else {
            return;
        };
        let samples = d.points.iter().map(|p| (p.index, Sample::Stale)).collect();
        out.updates.push(update(d.index, status, false, samples));
    }

    /// Nodes whose held messages have waited the reorder timeout, and
    /// nodes still owing the birth they were asked for.
    fn sparkplug_tick(&mut self, now: Instant, out: &mut Outcome) {
        let mut late = Vec::new();
        let mut owing = Vec::new();
        for (group, nodes) in &self.nodes {
            for (name, node) in nodes {
                let id = || (group.clone(), name.clone());
                if node
                    .held_since
                    .is_some_and(|since| now.duration_since(since) >= self.reorder_timeout)
                {
                    late.push(id());
                } else if node.awaiting_birth
                    && node
                        .last_rebirth
                        .is_none_or(|at| now.duration_since(at) >= REBIRTH_EVERY)
                {
                    owing.push(id());
                }
            }
        }
        for (group, node) in &late {
            self.give_up(&NodeId { group, node }, now, out);
        }
        for (group, node) in &owing {
            let why = "the birth asked for has not come";
            self.request_rebirth(&NodeId { group, node }, why, now, out);
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
        id: &NodeId<'_>,
        metrics: &[Metric],
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
            self.request_rebirth(id, "it used an alias it never announced", now, out);
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
    fn request_rebirth(&mut self, id: &NodeId<'_>, why: &str, now: Instant, out: &mut Outcome) {
        let Some(node) = self.node_at(id) else {
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
        metric.timestamp = Some(unix_ms());
        let payload = Payload {
            timestamp: Some(unix_ms()),
            metrics: vec![metric],
            ..Payload::default()
        };
        let topic = Topic {
            group: id.group,
            kind: MessageType::NCmd,
            node: id.node,
            device: None,
        };
        tracing::info!(
            "asking Sparkplug node {}/{} to rebirth: {why}",
            id.group,
            id.node
        );
        out.publish.push((topic.render(), payload.encode_to_vec()));
    }

    fn node(&self, t: &Topic<'_>) -> Option<&Node> {
        self.nodes.get(t.group)?.get(t.node)
    }

    fn node_at(&mut self, id: &NodeId<'_>) -> Option<&mut Node> {
        self.nodes.get_mut(id.group)?.get_mut(id.node)
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
                        out.audit.extend(w.audit.take());
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
        self.stale_with(slot, Some((Status::Offline, Some(why))), out);
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
        stamps: Vec::new(),
        applied: None,
        audit: Vec::new(),
    }
}

/// Milliseconds since the Unix epoch, as Sparkplug timestamps are.
pub(super) fn unix_ms() -> u64 {
    u64::try_from(ferrite_core::time::now() / 1000).unwrap_or(0)
}

/// The host side of the Sparkplug session state machine, one publish and
/// one tick at a time. Each test is named after the Sparkplug 3.0 TCK
/// requirement it covers; the end-to-end tests in `tests/mqtt_e2e.rs` and
/// the pysparkplug interop run the same rules over real sockets.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::fixtures;
    use ferrite_proto::sparkplug::payload::metric;

    const DOCS: &str = r#"kind: DeviceModel
name: tank
properties:
  level: { type: float, mqtt: { metric: "Inputs/Level" } }
  count: { type: int, mqtt: { metric: "Inputs/Count" } }
---
kind: Device
name: n1
model: tank
mqtt: { sparkplug: { group: g, node: n1 } }
---
kind: Device
name: d1
model: tank
mqtt: { sparkplug: { group: g, node: n1, device: d1 } }
"#;

    const NODE: usize = 0;
    const DEVICE: usize = 1;

    /// An ingest with the node `g/n1` (device `n1`, number 0) and its
    /// device `d1` (number 1).
    fn ingest(reorder_timeout: Duration) -> Ingest {
        let project = fixtures::project(DOCS);
        let mut ingest = Ingest {
            reorder_timeout,
            ..Ingest::default()
        };
        let properties = fixtures::properties(&project, "tank");
        for (index, name) in ["n1", "d1"].into_iter().enumerate() {
            let entry = fixtures::entry(&project, index, name, &properties);
            ingest.add(&entry).expect("an MQTT device");
        }
        ingest
    }

    #[test]
    fn a_topic_names_the_devices_it_is_for() {
        let mut ingest = ingest(Duration::from_millis(500));
        let meters = fixtures::project(fixtures::METERS);
        let properties = fixtures::properties(&meters, "meter");
        let entry = fixtures::entry(&meters, 2, "m1", &properties);
        ingest.add(&entry).expect("an MQTT device");
        let names = |topic: &str| -> Vec<String> {
            ingest
                .devices_on(topic)
                .iter()
                .map(|n| n.to_string())
                .collect()
        };
        assert_eq!(names("spBv1.0/g/NDATA/n1"), ["n1"]);
        assert_eq!(names("spBv1.0/g/DDATA/n1/d1"), ["d1"]);
        assert!(names("spBv1.0/g/DDATA/n1/d9").is_empty());
        assert!(names("spBv1.0/other/NDATA/n1").is_empty());
        assert_eq!(names("plant/m1/power"), ["m1"]);
        assert_eq!(names("plant/status"), ["m1"]);
        assert!(names("plant/unknown").is_empty());
    }

    fn float(name: Option<&str>, alias: u64, v: f64) -> Metric {
        Metric {
            name: name.map(str::to_string),
            alias: Some(alias),
            datatype: Some(ferrite_proto::sparkplug::datatype::DOUBLE),
            value: Some(metric::Value::DoubleValue(v)),
            ..Metric::default()
        }
    }

    fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(1),
            seq,
            metrics,
            ..Payload::default()
        }
        .encode_to_vec()
    }

    fn bd_seq_metric(bd: u64) -> Metric {
        Metric {
            name: Some("bdSeq".into()),
            datatype: Some(ferrite_proto::sparkplug::datatype::INT64),
            value: Some(metric::Value::LongValue(bd)),
            ..Metric::default()
        }
    }

    fn nbirth(bd: u64, level: f64) -> Vec<u8> {
        payload(
            Some(0),
            vec![bd_seq_metric(bd), float(Some("Inputs/Level"), 1, level)],
        )
    }

    /// A DBIRTH of `d1`, whose level has alias 2.
    fn dbirth(seq: u64, level: f64) -> Vec<u8> {
        payload(Some(seq), vec![float(Some("Inputs/Level"), 2, level)])
    }

    fn data(seq: u64, level: f64) -> Vec<u8> {
        payload(Some(seq), vec![float(None, 1, level)])
    }

    /// The `level` values the store would get, by device, in order.
    fn levels(out: &Outcome) -> Vec<(usize, f64)> {
        out.updates
            .iter()
            .flat_map(|u| {
                u.samples.iter().filter_map(move |(p, s)| match s {
                    Sample::Good(Value::Float(v)) if *p == 0 => Some((u.device, *v)),
                    _ => None,
                })
            })
            .collect()
    }

    /// The devices whose values went stale, in order.
    fn staled(out: &Outcome) -> Vec<usize> {
        out.updates
            .iter()
            .filter(|u| !u.samples.is_empty() && u.samples.iter().all(|(_, s)| *s == Sample::Stale))
            .map(|u| u.device)
            .collect()
    }

    /// Rebirth requests in `out`: NCMD `Node Control/Rebirth` = true.
    fn rebirths(out: &Outcome) -> usize {
        out.publish
            .iter()
            .filter(|(topic, body)| {
                let Ok(p) = Payload::decode(body.as_slice()) else {
                    return false;
                };
                topic == "spBv1.0/g/NCMD/n1"
                    && p.metrics.iter().any(|m| {
                        m.name.as_deref() == Some("Node Control/Rebirth")
                            && m.value == Some(metric::Value::BooleanValue(true))
                    })
            })
            .count()
    }

    const NBIRTH: &str = "spBv1.0/g/NBIRTH/n1";
    const NDATA: &str = "spBv1.0/g/NDATA/n1";
    const NDEATH: &str = "spBv1.0/g/NDEATH/n1";
    const DBIRTH: &str = "spBv1.0/g/DBIRTH/n1/d1";
    const DDATA: &str = "spBv1.0/g/DDATA/n1/d1";

    #[test]
    fn tck_id_payloads_sequence_num_incrementing_wraps_after_255() {
        let mut ingest = ingest(Duration::from_secs(2));
        let t0 = Instant::now();
        assert_eq!(
            levels(&ingest.publish(NBIRTH, &nbirth(0, 0.0), t0)),
            [(NODE, 0.0)]
        );
        // 1..=255, then 0, 1, 2: every one taken, none held, no rebirth.
        for i in 1..=258u64 {
            let out = ingest.publish(NDATA, &data(i % 256, i as f64), t0);
            assert_eq!(levels(&out), [(NODE, i as f64)], "seq {}", i % 256);
            assert_eq!(rebirths(&out), 0);
        }
        let out = ingest.tick(t0 + Duration::from_secs(60));
        assert_eq!(rebirths(&out), 0);
    }

    #[test]
    fn tck_id_operational_behavior_host_reordering_success() {
        let mut ingest = ingest(Duration::from_secs(2));
        let t0 = Instant::now();
        ingest.publish(NBIRTH, &nbirth(0, 0.0), t0);
        assert_eq!(
            levels(&ingest.publish(NDATA, &data(1, 1.0), t0)),
            [(NODE, 1.0)]
        );
        // 3 and 4 arrive before 2: held, not taken out of order.
        assert!(levels(&ingest.publish(NDATA, &data(3, 3.0), t0)).is_empty());
        assert!(levels(&ingest.publish(NDATA, &data(4, 4.0), t0)).is_empty());
        // 2 arrives within the reorder timeout: all three, in seq order.
        let out = ingest.publish(NDATA, &data(2, 2.0), t0 + Duration::from_secs(1));
        assert_eq!(levels(&out), [(NODE, 2.0), (NODE, 3.0), (NODE, 4.0)]);
        assert!(staled(&out).is_empty());
        // The timer stopped with it: nothing happens when it would have run out.
        let out = ingest.tick(t0 + Duration::from_secs(3));
        assert_eq!(rebirths(&out), 0);
        assert_eq!(
            levels(&ingest.publish(NDATA, &data(5, 5.0), t0)),
            [(NODE, 5.0)]
        );
    }

    #[test]
    fn tck_id_operational_behavior_host_reordering_rebirth() {
        let timeout = Duration::from_secs(2);
        let mut ingest = ingest(timeout);
        let t0 = Instant::now();
        ingest.publish(NBIRTH, &nbirth(0, 0.0), t0);
        ingest.publish(DBIRTH, &dbirth(1, 10.0), t0);
        // seq 2 never comes; 3 waits for it.
        assert!(levels(&ingest.publish(NDATA, &data(3, 3.0), t0)).is_empty());
        let out = ingest.tick(t0 + timeout / 2);
        assert_eq!(
            (rebirths(&out), out.updates.len()),
            (0, 0),
            "still within the reorder timeout"
        );
        // The timeout passes: every value of the node goes stale, what was
        // held is taken (fresh again), and the node is asked to rebirth.
        let out = ingest.tick(t0 + timeout);
        assert_eq!(staled(&out), [NODE, DEVICE]);
        assert_eq!(levels(&out), [(NODE, 3.0)]);
        assert_eq!(rebirths(&out), 1);
        // The stream goes on from what was taken.
        assert_eq!(
            levels(&ingest.publish(NDATA, &data(4, 4.0), t0 + timeout)),
            [(NODE, 4.0)]
        );
        // The birth has not come: asked again after REBIRTH_EVERY, not before.
        assert_eq!(
            rebirths(&ingest.tick(t0 + timeout + Duration::from_secs(1))),
            0
        );
        assert_eq!(rebirths(&ingest.tick(t0 + timeout + REBIRTH_EVERY)), 1);
        // It comes: no more requests.
        let born = t0 + timeout + REBIRTH_EVERY;
        assert_eq!(
            levels(&ingest.publish(NBIRTH, &nbirth(0, 9.0), born)),
            [(NODE, 9.0)]
        );
        assert_eq!(rebirths(&ingest.tick(born + REBIRTH_EVERY * 3)), 0);
    }

    #[test]
    fn tck_id_operational_behavior_host_reordering_param() {
        // A reorder timeout of zero: the first gap gives up at once.
        let mut ingest = ingest(Duration::ZERO);
        let t0 = Instant::now();
        ingest.publish(NBIRTH, &nbirth(0, 0.0), t0);
        let out = ingest.publish(NDATA, &data(2, 2.0), t0);
        assert_eq!(staled(&out), [NODE, DEVICE]);
        assert_eq!(levels(&out), [(NODE, 2.0)]);
        assert_eq!(rebirths(&out), 1);
        // Too many waiting behind a gap gives up too, whatever the timeout.
        let mut ingest = super::tests::ingest(Duration::from_secs(60));
        ingest.publish(NBIRTH, &nbirth(0, 0.0), t0);
        for seq in 2..(2 + MAX_HELD as u64 - 1) {
            let out = ingest.publish(NDATA, &data(seq, seq as f64), t0);
            assert_eq!(rebirths(&out), 0, "seq {seq}");
        }
        let last = 2 + MAX_HELD as u64 - 1;
        let out = ingest.publish(NDATA, &data(last, 0.5), t0);
        assert_eq!(rebirths(&out), 1);
        assert_eq!(levels(&out).len(), MAX_HELD, "every held message taken");
        assert_eq!(levels(&out).last(), Some(&(NODE, 0.5)));
    }

    #[test]
    fn duplicates_and_late_messages_are_dropped() {
        let mut ingest = ingest(Duration::from_secs(2));
        let t0 = Instant::now();
        ingest.publish(NBIRTH, &nbirth(0, 0.0), t0);
        assert_eq!(levels(&ingest.publish(NDATA, &data(1, 1.0), t0)).len(), 1);
        // The same seq again (a QoS 1 redelivery): not taken twice.
        assert!(levels(&ingest.publish(NDATA, &data(1, 1.0), t0)).is_empty());
        // An older one: behind what was taken.
        assert!(levels(&ingest.publish(NDATA, &data(200, 7.0), t0)).is_empty());
        assert_eq!(rebirths(&ingest.tick(t0 + Duration::from_secs(10))), 0);
        assert_eq!(
            levels(&ingest.publish(NDATA, &data(2, 2.0), t0)),
            [(NODE, 2.0)]
        );
    }

    #[test]
    fn tck_id_payloads_alias_data_cmd_requirement_unknown_alias_asks_for_rebirth() {
        // NDATA by an alias its NBIRTH never announced: what the gateway
        // knows is taken, and the node is asked to rebirth.
        let mut ingest = ingest(Duration::from_secs(2));
        let t0 = Instant::now();
        ingest.publish(NBIRTH, &nbirth(0, 0.0), t0);
        let out = ingest.publish(
            NDATA,
            &payload(Some(1), vec![float(None, 1, 1.0), float(None, 99, 5.0)]),
            t0,
        );
        assert_eq!(levels(&out), [(NODE, 1.0)]);
        assert_eq!(rebirths(&out), 1);
    }

    #[test]
    fn tck_id_payloads_sequence_num_always_included_or_taken_unordered() {
        // A node that leaves out seq (the spec requires it) still has its
        // data taken, as it comes: nothing is lost for want of a number.
        let mut ingest = ingest(Duration::from_secs(2));
        let t0 = Instant::now();
        ingest.publish(
            NBIRTH,
            &payload(None, vec![float(Some("Inputs/Level"), 1, 1.0)]),
            t0,
        );
        for v in [2.0, 3.0] {
            let out = ingest.publish(NDATA, &payload(None, vec![float(None, 1, v)]), t0);
            assert_eq!(levels(&out), [(NODE, v)]);
        }
    }

    #[test]
    fn tck_id_payloads_dbirth_order_data_before_birth_asks_for_rebirth() {
        let mut ingest = ingest(Duration::from_secs(2));
        let t0 = Instant::now();
        // NDATA before any NBIRTH (the node was up before the gateway):
        // not taken, the node's values stale, a rebirth asked for.
        let out = ingest.publish(
            NDATA,
            &payload(Some(7), vec![float(Some("Inputs/Level"), 1, 7.0)]),
            t0,
        );
        assert!(levels(&out).is_empty());
        assert_eq!(staled(&out), [NODE, DEVICE]);
        assert_eq!(rebirths(&out), 1);
        // More data: no second request within REBIRTH_EVERY, no second stale.
        let out = ingest.publish(NDATA, &data(8, 8.0), t0);
        assert_eq!(
            (rebirths(&out), staled(&out).len(), levels(&out).len()),
            (0, 0, 0)
        );
        assert_eq!(rebirths(&ingest.tick(t0 + REBIRTH_EVERY)), 1);
        // The birth: the node's values; its device must be born too.
        assert_eq!(
            levels(&ingest.publish(NBIRTH, &nbirth(1, 1.0), t0)),
            [(NODE, 1.0)]
        );
        let out = ingest.publish(DDATA, &data(1, 5.0), t0 + REBIRTH_EVERY * 2);
        assert!(levels(&out).is_empty(), "DDATA before its DBIRTH");
        assert_eq!(staled(&out), [DEVICE]);
        assert_eq!(rebirths(&out), 1);
        // The node answers the request: NBIRTH, then the device's DBIRTH.
        ingest.publish(NBIRTH, &nbirth(1, 1.0), t0);
        assert_eq!(
            levels(&ingest.publish(DBIRTH, &dbirth(1, 20.0), t0)),
            [(DEVICE, 20.0)]
        );
        let ddata = payload(Some(2), vec![float(None, 2, 21.0)]);
        assert_eq!(levels(&ingest.publish(DDATA, &ddata, t0)), [(DEVICE, 21.0)]);
        assert_eq!(rebirths(&ingest.tick(t0 + REBIRTH_EVERY * 5)), 0);
    }

    #[test]
    fn tck_id_operational_behavior_edge_node_termination_host_action_ndeath_node_tags_stale() {
        let mut ingest = ingest(Duration::from_secs(2));
        let t0 = Instant::now();
        ingest.publish(NBIRTH, &nbirth(3, 1.0), t0);
        ingest.publish(DBIRTH, &dbirth(1, 2.0), t0);
        // tck-id-payloads-ndeath-bdseq: an NDEATH of an older session
        // (bdSeq 2) does not end this one (bdSeq 3).
        let out = ingest.publish(NDEATH, &payload(None, vec![bd_seq_metric(2)]), t0);
        assert!(out.updates.is_empty());
        assert_eq!(
            levels(&ingest.publish(NDATA, &data(2, 2.5), t0)),
            [(NODE, 2.5)]
        );
        // The current one does: both devices offline, their values stale.
        let out = ingest.publish(NDEATH, &payload(None, vec![bd_seq_metric(3)]), t0);
        let offline: Vec<usize> = out
            .updates
            .iter()
            .filter(|u| matches!(u.status, Some((Status::Offline, _))))
            .map(|u| u.device)
            .collect();
        assert_eq!(offline, [NODE, DEVICE]);
        assert!(
            out.updates
                .iter()
                .all(|u| u.samples.iter().all(|(_, s)| *s == Sample::Stale))
        );
        // Data after the death and before a new birth is not taken.
        let out = ingest.publish(NDATA, &data(3, 3.0), t0);
        assert!(levels(&out).is_empty());
        assert_eq!(rebirths(&out), 1);
    }

    #[test]
    fn tck_id_message_flow_hid_sparkplug_state_message_delivered() {
        let mut ingest = ingest(Duration::from_secs(2));
        ingest.state_topic = Some("spBv1.0/STATE/ferrite".into());
        let t0 = Instant::now();
        // Its own `online: true` (the gateway reads its own publishes): nothing.
        let out = ingest.publish("spBv1.0/STATE/ferrite", &host_state(true), t0);
        assert!(out.retained.is_empty());
        // Someone says the host is offline: the host says otherwise at once.
        let out = ingest.publish(
            "spBv1.0/STATE/ferrite",
            br#"{"online":false,"timestamp":1}"#,
            t0,
        );
        assert_eq!(out.retained.len(), 1);
        let (topic, body) = &out.retained[0];
        assert_eq!(topic, "spBv1.0/STATE/ferrite");
        let state: serde_json::Value = serde_json::from_slice(body).expect("JSON");
        assert_eq!(state["online"], serde_json::json!(true));
        assert!(
            state["timestamp"]
                .as_u64()
                .is_some_and(|t| t > 1_600_000_000_000)
        );
        // Another host's STATE is none of its business.
        let out = ingest.publish(
            "spBv1.0/STATE/other",
            br#"{"online":false,"timestamp":1}"#,
            t0,
        );
        assert!(out.retained.is_empty());
    }
}
