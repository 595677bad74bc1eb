//! [`MqttSim`]: simulated MQTT devices that publish to a broker (the
//! gateway's embedded one) with rumqttc, as real sensors would.
//!
//! - A plain device publishes its state topics every tick: one JSON document
//!   per topic for `json` bindings (all pointers of that topic merged), the
//!   bare value otherwise. It listens on its `command` topics and publishes
//!   the new state at once, so writes with `confirm` are confirmed. With a
//!   `status` topic it announces `online` and leaves `offline` as its will.
//! - A Sparkplug edge node publishes NBIRTH (with bdSeq) and a DBIRTH per
//!   device, then DDATA/NDATA with aliases only; NDEATH is its will. It takes
//!   DCMD/NCMD writes and answers a Rebirth request.
//!
//! Each client reconnects by itself; [`MqttSim::drop_client`] cuts one
//! without a DISCONNECT, so its will fires (for tests of LWT and death).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrite_models::device::{MqttStatus, Sparkplug};
use ferrite_models::model::{MqttBinding, ValueType};
use ferrite_models::sparkplug::{self, MessageType, Topic};
use ferrite_models::{Project, Value, payload};
use ferrite_proto::sparkplug::Payload;
use ferrite_proto::sparkplug::datatype as dt;
use ferrite_proto::sparkplug::payload::Metric;
use prost::Message;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

/// Broker login for the simulated devices.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimMqtt {
    /// MQTT username, if the broker wants one.
    pub username: Option<String>,
    /// Its password.
    pub password: Option<String>,
}

/// One simulated property.
#[derive(Debug, Clone)]
struct Point {
    name: String,
    ty: ValueType,
    binding: MqttBinding,
    value: Value,
}

/// One plain device, or one device (or the node itself) behind a Sparkplug
/// node.
#[derive(Debug)]
struct SimDevice {
    name: String,
    points: Vec<Point>,
    status: Option<MqttStatus>,
    sparkplug: Option<Sparkplug>,
}

/// A client: a plain device, or a Sparkplug node with its devices.
struct Client {
    id: String,
    devices: Vec<usize>,
    /// Cancelling it drops the connection without a DISCONNECT.
    cut: Mutex<CancellationToken>,
    /// A Sparkplug node's `seq`: 0 at its NBIRTH, then one more for each
    /// message it publishes (wrapping after 255), as the spec requires.
    seq: std::sync::atomic::AtomicU8,
}

impl Client {
    /// The `seq` for the next message after the NBIRTH.
    fn next_seq(&self) -> u64 {
        let previous = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        u64::from(previous.wrapping_add(1))
    }
}

/// Running MQTT publishers.
pub struct MqttSim {
    devices: Arc<Mutex<Vec<SimDevice>>>,
    clients: Vec<Arc<Client>>,
    broker: SocketAddr,
    login: SimMqtt,
    tick: Duration,
    stop: CancellationToken,
}

impl MqttSim {
    /// Starts a client per plain MQTT device and per Sparkplug node of
    /// `project`, publishing to `broker` every `tick`. `initial` gives each
    /// property's first value.
    pub fn start(
        project: &Project,
        broker: SocketAddr,
        login: SimMqtt,
        tick: Duration,
        initial: &dyn Fn(&str, &ferrite_models::Property) -> Value,
    ) -> Arc<MqttSim> {
        let mut devices = Vec::new();
        let mut clients: Vec<Client> = Vec::new();
        let mut nodes: HashMap<(String, String), usize> = HashMap::new();
        for (name, located) in &project.devices {
            let d = &located.value;
            let Some(mqtt) = &d.mqtt else { continue };
            let Some(model) = project.models.get(&d.model) else {
                continue;
            };
            let points = model
                .value
                .properties
                .iter()
                .filter_map(|(pname, p)| {
                    let binding = p.mqtt.clone()?;
                    Some(Point {
                        name: pname.clone(),
                        ty: p.ty,
                        binding,
                        value: initial(name, p),
                    })
                })
                .collect();
            let slot = devices.len();
            devices.push(SimDevice {
                name: name.clone(),
                points,
                status: mqtt.status.clone(),
                sparkplug: mqtt.sparkplug.clone(),
            });
            let client = match &mqtt.sparkplug {
                Some(sp) => {
                    let key = (sp.group.clone(), sp.node.clone());
                    if let Some(&i) = nodes.get(&key) {
                        clients[i].devices.push(slot);
                        continue;
                    }
                    nodes.insert(key, clients.len());
                    format!("sim-{}-{}", sp.group, sp.node)
                }
                None => format!("sim-{name}"),
            };
            clients.push(Client {
                id: client,
                devices: vec![slot],
                cut: Mutex::new(CancellationToken::new()),
                seq: std::sync::atomic::AtomicU8::new(0),
            });
        }
        let sim = Arc::new(MqttSim {
            devices: Arc::new(Mutex::new(devices)),
            clients: clients.into_iter().map(Arc::new).collect(),
            broker,
            login,
            tick,
            stop: CancellationToken::new(),
        });
        for client in &sim.clients {
            tokio::spawn(run_client(sim.clone(), client.clone()));
        }
        sim
    }

    /// Sets a property's value; it goes out with the next tick.
    pub fn set(&self, device: &str, property: &str, value: Value) {
        let mut devices = lock(&self.devices);
        if let Some(p) = devices
            .iter_mut()
            .find(|d| d.name == device)
            .and_then(|d| d.points.iter_mut().find(|p| p.name == property))
        {
            p.value = value;
        }
    }

    /// A property's current value.
    pub fn get(&self, device: &str, property: &str) -> Option<Value> {
        let devices = lock(&self.devices);
        let d = devices.iter().find(|d| d.name == device)?;
        Some(d.points.iter().find(|p| p.name == property)?.value.clone())
    }

    /// Drops the connection of the client that serves `device` without a
    /// DISCONNECT, so that the broker sends its will. It reconnects after
    /// `pause`.
    pub fn drop_client(&self, device: &str, pause: Duration) {
        let devices = lock(&self.devices);
        let Some(slot) = devices.iter().position(|d| d.name == device) else {
            return;
        };
        drop(devices);
        for c in &self.clients {
            if c.devices.contains(&slot) {
                let token = lock(&c.cut).clone();
                token.cancel();
                let c = c.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(pause).await;
                    *lock(&c.cut) = CancellationToken::new();
                });
            }
        }
    }

    /// Stops every client.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One client's life: connect, announce, publish every tick, take writes;
/// reconnect after errors or a cut.
async fn run_client(sim: Arc<MqttSim>, client: Arc<Client>) {
    let mut bd_seq: u64 = 0;
    loop {
        let cut = lock(&client.cut).clone();
        if cut.is_cancelled() {
            tokio::select! {
                () = sim.stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        }
        let node = node_of(&sim, &client);
        let mut options =
            MqttOptions::new(&client.id, sim.broker.ip().to_string(), sim.broker.port());
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let (Some(u), Some(p)) = (&sim.login.username, &sim.login.password) {
            options.set_credentials(u, p);
        }
        if let Some(will) = will(&sim, &client, node.as_ref(), bd_seq) {
            options.set_last_will(will);
        }
        let (mqtt, mut events) = AsyncClient::new(options, 1024);
        let mut tick = tokio::time::interval(sim.tick);
        let mut connected = false;
        loop {
            tokio::select! {
                () = sim.stop.cancelled() => {
                    let _ = mqtt.try_disconnect();
                    return;
                }
                () = cut.cancelled() => break,
                _ = tick.tick(), if connected => publish_state(&sim, &client, &mqtt, node.as_ref(), None),
                event = events.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        announce(&sim, &client, &mqtt, node.as_ref(), bd_seq);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        command(&sim, &client, &mqtt, node.as_ref(), bd_seq, &p.topic, &p.payload);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("sim MQTT client {}: {e}", client.id);
                        connected = false;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        // Cut: a new session gets a new bdSeq, as Sparkplug wants.
        bd_seq = (bd_seq + 1) % 256;
    }
}

/// The Sparkplug node a client is, if any.
fn node_of(sim: &MqttSim, client: &Client) -> Option<Sparkplug> {
    let devices = lock(&sim.devices);
    client
        .devices
        .first()
        .and_then(|&slot| devices[slot].sparkplug.clone())
}

fn will(sim: &MqttSim, client: &Client, node: Option<&Sparkplug>, bd_seq: u64) -> Option<LastWill> {
    if let Some(sp) = node {
        let death = Payload {
            timestamp: Some(unix_ms()),
            metrics: vec![bd_seq_metric(bd_seq)],
            ..Payload::default()
        };
        let topic = Topic::node_of(sp, MessageType::NDeath).render();
        return Some(LastWill::new(
            topic,
            death.encode_to_vec(),
            QoS::AtLeastOnce,
            false,
        ));
    }
    let devices = lock(&sim.devices);
    let d = &devices[*client.devices.first()?];
    let status = d.status.as_ref()?;
    Some(LastWill::new(
        status.topic.render(&d.name),
        status.offline.clone(),
        QoS::AtLeastOnce,
        false,
    ))
}

/// After a connect: subscribe to commands, then say hello (a status topic's
/// `online`, or the Sparkplug births).
fn announce(
    sim: &MqttSim,
    client: &Client,
    mqtt: &AsyncClient,
    node: Option<&Sparkplug>,
    bd_seq: u64,
) {
    let devices = lock(&sim.devices);
    match node {
        Some(sp) => {
            let _ = mqtt.try_subscribe(
                Topic::node_of(sp, MessageType::NCmd).render(),
                QoS::AtLeastOnce,
            );
            let _ = mqtt.try_subscribe(
                format!("{}/{}/DCMD/{}/+", sparkplug::NAMESPACE, sp.group, sp.node),
                QoS::AtLeastOnce,
            );
            births(&devices, client, mqtt, sp, bd_seq);
        }
        None => {
            for &slot in &client.devices {
                let d = &devices[slot];
                for p in &d.points {
                    if let Some(c) = &p.binding.command {
                        let _ = mqtt.try_subscribe(c.render(&d.name), QoS::AtLeastOnce);
                    }
                }
                if let Some(s) = &d.status {
                    let _ = mqtt.try_publish(
                        s.topic.render(&d.name),
                        QoS::AtLeastOnce,
                        false,
                        s.online.clone(),
                    );
                }
            }
        }
    }
    drop(devices);
    publish_state(sim, client, mqtt, node, None);
}

/// NBIRTH with bdSeq and the node's own metrics, then a DBIRTH per device.
/// Metric `i` of a device gets alias `i + 1`.
fn births(devices: &[SimDevice], client: &Client, mqtt: &AsyncClient, sp: &Sparkplug, bd_seq: u64) {
    let mut node_metrics = vec![bd_seq_metric(bd_seq)];
    let mut device_births = Vec::new();
    for &slot in &client.devices {
        let d = &devices[slot];
        let metrics = d.points.iter().enumerate().filter_map(|(i, p)| {
            let mut m = metric(p, i)?;
            m.name.clone_from(&p.binding.metric);
            Some(m)
        });
        match &d.sparkplug {
            Some(own) if own.device.is_some() => device_births.push((own, metrics.collect())),
            _ => node_metrics.extend(metrics),
        }
    }
    let birth = |metrics, seq| {
        Payload {
            timestamp: Some(unix_ms()),
            metrics,
            seq: Some(seq),
            ..Payload::default()
        }
        .encode_to_vec()
    };
    let topic = Topic::node_of(sp, MessageType::NBirth).render();
    client.seq.store(0, std::sync::atomic::Ordering::Relaxed);
    let _ = mqtt.try_publish(topic, QoS::AtMostOnce, false, birth(node_metrics, 0));
    for (own, metrics) in device_births {
        let topic = Topic::of(own, MessageType::DBirth).render();
        let seq = client.next_seq();
        let _ = mqtt.try_publish(topic, QoS::AtMostOnce, false, birth(metrics, seq));
    }
}

/// Publishes the state of the client's devices: every point, or only
/// `only` (a device slot and point) after a write.
fn publish_state(
    sim: &MqttSim,
    client: &Client,
    mqtt: &AsyncClient,
    node: Option<&Sparkplug>,
    only: Option<(usize, usize)>,
) {
    let devices = lock(&sim.devices);
    for &slot in &client.devices {
        if only.is_some_and(|(s, _)| s != slot) {
            continue;
        }
        let d = &devices[slot];
        let chosen = |i: usize| only.is_none_or(|(_, p)| p == i);
        if let Some(own) = node.and(d.sparkplug.as_ref()) {
            let metrics = d
                .points
                .iter()
                .enumerate()
                .filter(|(i, _)| chosen(*i))
                .filter_map(|(i, p)| metric(p, i))
                .collect();
            let body = Payload {
                timestamp: Some(unix_ms()),
                metrics,
                seq: Some(client.next_seq()),
                ..Payload::default()
            };
            let topic = Topic::of(own, MessageType::NData).render();
            let _ = mqtt.try_publish(topic, QoS::AtMostOnce, false, body.encode_to_vec());
            continue;
        }
        // Plain: one payload per topic, JSON pointers merged.
        let mut by_topic: indexmap::IndexMap<String, serde_json::Value> = indexmap::IndexMap::new();
        for (_, p) in d.points.iter().enumerate().filter(|(i, _)| chosen(*i)) {
            let Some(topic) = &p.binding.topic else {
                continue;
            };
            let topic = topic.render(&d.name);
            match &p.binding.json {
                Some(pointer) => {
                    let merged = by_topic
                        .entry(topic)
                        .or_insert_with(|| serde_json::json!({}));
                    merge(merged, payload::document(pointer, &p.value));
                }
                None => {
                    let body = payload::encode(None, &p.value);
                    let _ = mqtt.try_publish(topic, QoS::AtMostOnce, false, body);
                }
            }
        }
        for (topic, doc) in by_topic {
            let _ = mqtt.try_publish(topic, QoS::AtMostOnce, false, doc.to_string());
        }
    }
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (into, from) => *into = from,
    }
}

/// A write arrived: take the value, and publish the new state at once.
fn command(
    sim: &MqttSim,
    client: &Client,
    mqtt: &AsyncClient,
    node: Option<&Sparkplug>,
    bd_seq: u64,
    topic: &str,
    body: &[u8],
) {
    let mut changed = Vec::new();
    {
        let mut devices = lock(&sim.devices);
        if let Some(sp) = node {
            let Some(t) = Topic::parse(topic) else { return };
            let Ok(cmd) = Payload::decode(body) else {
                tracing::warn!("sim: {topic} is not a Sparkplug payload");
                return;
            };
            if t.kind == MessageType::NCmd
                && cmd
                    .metrics
                    .iter()
                    .any(|m| m.name.as_deref() == Some("Node Control/Rebirth"))
            {
                births(&devices, client, mqtt, sp, bd_seq);
                return;
            }
            for &slot in &client.devices {
                let d = &mut devices[slot];
                let id = d.sparkplug.as_ref().and_then(|s| s.device.as_deref());
                if id != t.device {
                    continue;
                }
                for m in &cmd.metrics {
                    let Some((i, p)) = d
                        .points
                        .iter_mut()
                        .enumerate()
                        .find(|(_, p)| p.binding.metric.as_deref() == m.name.as_deref())
                    else {
                        continue;
                    };
                    if let Ok(Some(v)) = sparkplug::metric_value(m, p.ty) {
                        p.value = v;
                        changed.push((slot, i));
                    }
                }
            }
        } else {
            for &slot in &client.devices {
                let d = &mut devices[slot];
                let name = d.name.clone();
                for (i, p) in d.points.iter_mut().enumerate() {
                    if p.binding
                        .command
                        .as_ref()
                        .is_some_and(|c| c.render(&name) == topic)
                    {
                        match payload::decode(p.ty, p.binding.json.as_ref(), body) {
                            Ok(v) => {
                                p.value = v;
                                changed.push((slot, i));
                            }
                            Err(e) => tracing::warn!("sim: bad command on {topic}: {e}"),
                        }
                    }
                }
            }
        }
    }
    for only in changed {
        publish_state(sim, client, mqtt, node, Some(only));
    }
}

/// Point `i`'s current value as a metric with alias `i + 1`.
fn metric(p: &Point, i: usize) -> Option<Metric> {
    let datatype = match sparkplug::datatype_for(p.ty) {
        // Like many PLCs, publish 32-bit floats.
        dt::DOUBLE => dt::FLOAT,
        other => other,
    };
    let mut m = sparkplug::metric_of(datatype, &p.value).ok()?;
    m.alias = Some(i as u64 + 1);
    Some(m)
}

fn bd_seq_metric(bd_seq: u64) -> Metric {
    let seq = Value::Int(i64::try_from(bd_seq).unwrap_or(0));
    let mut m = sparkplug::metric_of(dt::INT64, &seq).unwrap_or_default();
    m.name = Some("bdSeq".into());
    m
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}
