//! The MQTT driver: devices that publish to the embedded broker.
//!
//! - `ingest`: routing tables and device state; turns each publish (plain
//!   JSON or bare values, Sparkplug B births, data and deaths, status/LWT
//!   topics) into readings and status, and each clock tick into timeouts.
//! - here: the reader task on the broker's in-process link, and writes.
//!
//! A write publishes on the property's `command` topic (plain devices) or
//! as a DCMD/NCMD metric (Sparkplug). With `confirm`, it answers once the
//! device has published the written value and that reading is stored;
//! without it, once the broker has taken the command. A write to a device
//! that is offline is refused rather than published into the void.

mod ingest;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrite_models::config::SparkplugHost;
use ferrite_models::sparkplug::{self, MessageType, Topic};
use ferrite_models::{Value, payload};
use ferrite_proto::sparkplug::Payload;
use prost::Message;
use rumqttd::Notification;
use rumqttd::local::LinkRx;

use crate::broker::BrokerLink;
use crate::broker::gate::ReaderPlace;
use tokio::sync::oneshot;

use self::ingest::{Ingest, Outcome, Waiter, unix_ms};
use ferrite_core::driver::{
    BoxFuture, DeviceWriter, Driver, DriverContext, DriverError, StartError, WriteAudit, Written,
};
use ferrite_core::reading::{Status, Update};

/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(250);

/// The MQTT driver: one reader on the embedded broker's in-process link,
/// routing each publish to the devices its topic belongs to.
pub struct MqttDriver {
    /// With a broker (`[mqtt]`): the routing tables, shared with the reader.
    shared: Option<Arc<Shared>>,
}

impl MqttDriver {
    /// Starts the reader on the broker's `link` (`None` when the config
    /// starts no broker: MQTT devices then cannot start).
    /// `host` says how the gateway acts as a Sparkplug host: with a host ID
    /// it publishes its STATE (retained) once subscribed, and `offline`
    /// when it stops.
    pub fn new(
        ctx: DriverContext,
        link: Option<(BrokerLink, rumqttd::local::LinkRx)>,
        host: &SparkplugHost,
    ) -> Self {
        let Some((mut link, rx)) = link else {
            return MqttDriver { shared: None };
        };
        if let Err(e) = link.subscribe("#") {
            tracing::error!("cannot subscribe the gateway's broker link: {e}");
        }
        let state_topic = host
            .host_id
            .as_ref()
            .map(|id| format!("{}/STATE/{id}", sparkplug::NAMESPACE));
        if let Some(topic) = &state_topic
            && let Err(e) = link.publish_retained(topic.clone(), ingest::host_state(true))
        {
            tracing::error!("cannot publish the Sparkplug host STATE on {topic}: {e}");
        }
        // Back-pressure: the broker's router waits while the store's queue
        // is nearly full, or while the reader is behind in the log, rather
        // than appending what its log would trim unread (see `broker::gate`).
        let output = ctx.output.downgrade();
        let place = Arc::new(ReaderPlace::default());
        let (reader, filter) = (place.clone(), link.filter().to_string());
        crate::broker::gate::install(
            move || {
                output
                    .upgrade()
                    .is_some_and(|tx| tx.capacity() < tx.max_capacity() / 8)
                    || reader.behind(|| crate::broker::ledger::tail_segment(&filter))
            },
            ctx.stats.clone(),
        );
        let mut ingest = Ingest::default();
        ingest.reorder_timeout = host.reorder_timeout.get();
        ingest.state_topic = state_topic;
        let shared = Arc::new(Shared {
            ingest: Mutex::new(ingest),
            link,
            place,
        });
        ctx.tasks.spawn(read(shared.clone(), rx, ctx.clone()));
        MqttDriver {
            shared: Some(shared),
        }
    }
}

/// What the reader task and the writers share.
struct Shared {
    ingest: Mutex<Ingest>,
    link: BrokerLink,
    /// Where the reader stands in the broker's log, for the router gate.
    place: Arc<ReaderPlace>,
}

impl Shared {
    fn ingest(&self) -> std::sync::MutexGuard<'_, Ingest> {
        self.ingest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A spare link took over: the reader starts on its log afresh.
    fn relinked(&self) -> LogOffsets {
        self.place.restart();
        LogOffsets::of(self.link.filter())
    }

    fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), DriverError> {
        self.link
            .publish(topic, payload)
            .map_err(|e| DriverError::Unreachable(format!("the broker link failed: {e}")))
    }
}

impl Driver for MqttDriver {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn serves(&self, device: &ferrite_models::Device) -> bool {
        device.mqtt.is_some()
    }

    fn start(
        &self,
        entry: &ferrite_core::driver::DeviceEntry<'_>,
        ctx: DriverContext,
    ) -> Result<Arc<dyn DeviceWriter>, StartError> {
        let shared = self.shared.clone().ok_or(StartError::Missing(
            "MQTT devices need the embedded broker, and the config has no [mqtt]",
        ))?;
        let (_, first) = shared
            .ingest()
            .add(entry)
            .ok_or(StartError::WrongProtocol("MQTT"))?;
        let name: Arc<str> = Arc::from(entry.name);
        let (remover, removed) = (shared.clone(), name.clone());
        ctx.tasks.spawn(async move {
            // Offline and what it waits for, until it publishes.
            let _ = ctx.output.send(first).await;
            ctx.shutdown.cancelled().await;
            remover.ingest().remove(&removed);
        });
        Ok(Arc::new(MqttWriter { shared, name }))
    }

    fn sweep(&self) {
        if let Some(shared) = &self.shared {
            shared.ingest().forget_retired();
        }
    }
}

/// The reader: every publish the broker routes to the gateway, and a clock
/// for timeouts, until shutdown.
async fn read(shared: Arc<Shared>, mut rx: LinkRx, ctx: DriverContext) {
    let mut offsets = LogOffsets::of(shared.link.filter());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let outcome = tokio::select! {
            () = ctx.shutdown.cancelled() => {
                let state = shared.ingest().state_topic.clone();
                if let Some(topic) = state
                    && let Err(e) = shared.link.publish_retained(topic, ingest::host_state(false))
                {
                    tracing::warn!("cannot publish the Sparkplug host's offline STATE: {e}");
                }
                return;
            }
            _ = tick.tick() => shared.ingest().tick(Instant::now()),
            next = rx.next() => match next {
                Ok(Some(Notification::Forward(f))) => {
                    if let Some((segment, _)) = f.cursor {
                        shared.place.took(segment);
                    }
                    let gap = offsets.next(f.cursor);
                    if !gap.is_empty() {
                        count_losses(&shared, &ctx.stats, gap);
                    }
                    let topic = String::from_utf8_lossy(&f.publish.topic);
                    shared.ingest().publish(&topic, &f.publish.payload, Instant::now())
                }
                // The router paused us because our buffer was full: ask for more.
                Ok(Some(Notification::Unschedule)) => {
                    shared.place.asked_for_more();
                    if let Err(e) = rx.wake().await {
                        tracing::warn!("the broker link failed: {e}");
                        match shared.link.relink() {
                            Some(spare) => (rx, offsets) = (spare, shared.relinked()),
                            None => return tracing::error!("no spare broker link is left; MQTT devices stop updating"),
                        }
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("the broker link failed: {e}");
                    match shared.link.relink() {
                        Some(spare) => (rx, offsets) = (spare, shared.relinked()),
                        None => return tracing::error!("no spare broker link is left; MQTT devices stop updating"),
                    }
                    continue;
                }
            },
        };
        if deliver(&shared, outcome, &ctx).await.is_err() {
            return;
        }
    }
}

/// Where the gateway's link stands in the broker's log for its filter.
/// rumqttd numbers the messages of a log one by one and drops its oldest
/// segment when it is full, read or not; a forward further on than the
/// next number tells which messages were dropped unread.
#[derive(Debug, Default)]
pub(crate) struct LogOffsets {
    /// The filter whose log it is.
    filter: String,
    next: Option<u64>,
}

/// How many forwards pass between two trims of the broker's ledger.
const FORGET_EVERY: u64 = 4096;

impl LogOffsets {
    /// At the start of `filter`'s log.
    pub(crate) fn of(filter: &str) -> Self {
        LogOffsets {
            filter: filter.to_string(),
            next: None,
        }
    }

    /// Takes the log position of a forwarded message (`None` for a
    /// retained one, which is not in the log) and returns the positions
    /// skipped before it (empty when none was).
    pub(crate) fn next(&mut self, cursor: Option<(u64, u64)>) -> std::ops::Range<u64> {
        let Some((_, offset)) = cursor else {
            return 0..0;
        };
        let gap = self
            .next
            .map_or(offset..offset, |next| next.min(offset)..offset);
        self.next = Some(offset.saturating_add(1));
        if offset.is_multiple_of(FORGET_EVERY) {
            crate::broker::ledger::forget_below(&self.filter, offset);
        }
        gap
    }
}

/// The broker dropped the messages at `gap` of the gateway's log unread:
/// counts them, in all and per device, from the topics the broker's
/// ledger kept.
fn count_losses(
    shared: &Shared,
    stats: &ferrite_core::driver::DriverStats,
    gap: std::ops::Range<u64>,
) {
    stats
        .mqtt_dropped
        .fetch_add(gap.end - gap.start, Ordering::Relaxed);
    let filter = shared.link.filter();
    let (by_topic, mut unrouted) = crate::broker::ledger::lost(filter, gap.start, gap.end);
    let ingest = shared.ingest();
    let mut by_device = stats
        .mqtt_dropped_by_device
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (topic, lost) in by_topic {
        let devices = ingest.devices_on(&topic);
        if devices.is_empty() {
            unrouted += lost;
        }
        for device in devices {
            *by_device.entry(device.to_string()).or_default() += lost;
        }
    }
    stats
        .mqtt_dropped_unrouted
        .fetch_add(unrouted, Ordering::Relaxed);
}

/// Sends an outcome's updates to the store, answers confirmed writes once
/// they are visible, and makes its publishes.
async fn deliver(shared: &Shared, outcome: Outcome, ctx: &DriverContext) -> Result<(), ()> {
    if outcome.malformed > 0 {
        ctx.stats
            .malformed_payloads
            .fetch_add(outcome.malformed, Ordering::Relaxed);
    }
    for (topic, body) in outcome.publish {
        if let Err(e) = shared.publish(topic, body) {
            tracing::warn!("{e}");
        }
    }
    for (topic, body) in outcome.retained {
        if let Err(e) = shared.link.publish_retained(topic, body) {
            tracing::warn!("the broker link failed: {e}");
        }
    }
    store_updates(outcome.updates, outcome.confirmed, outcome.audit, ctx).await
}

/// Sends an outcome's updates to the store writer. An outcome that confirms
/// writes goes on the urgent queue whole, as every driver's read-backs do
/// (see `show_written`), so that the answer neither waits behind a burst of
/// publishes nor comes before any of the outcome's values is stored (one
/// publish can update several devices). Its last update carries `applied`,
/// which answers the writes once it is visible (the writer commits the
/// urgent queue in order, so the ones before it are too), and the writes'
/// audit entries.
async fn store_updates(
    mut updates: Vec<Update>,
    confirmed: Vec<oneshot::Sender<()>>,
    audit: Vec<Vec<u8>>,
    ctx: &DriverContext,
) -> Result<(), ()> {
    if confirmed.is_empty() {
        for u in updates {
            ctx.output.send(u).await.map_err(|_| ())?;
        }
        return Ok(());
    }
    let Some(mut last) = updates.pop() else {
        return Ok(());
    };
    for u in updates {
        ctx.urgent.send(u).await.map_err(|_| ())?;
    }
    let (applied, visible) = oneshot::channel();
    last.applied = Some(applied);
    last.audit = audit;
    tokio::spawn(answer(visible, confirmed));
    ctx.urgent.send(last).await.map_err(|_| ())
}

async fn answer(visible: oneshot::Receiver<()>, writes: Vec<oneshot::Sender<()>>) {
    let _ = visible.await;
    for w in writes {
        let _ = w.send(());
    }
}

/// Writes to one MQTT device.
struct MqttWriter {
    shared: Arc<Shared>,
    name: Arc<str>,
}

/// A write as it goes out: where the device sits in the tables, which of its
/// points, the publish, and how long to wait for the confirmation.
struct Command {
    slot: usize,
    point: usize,
    topic: String,
    body: Vec<u8>,
    confirm: Option<Duration>,
}

impl MqttWriter {
    /// The command for a write, checked against the device's state.
    fn command(&self, property: &str, value: &Value) -> Result<Command, DriverError> {
        let ingest = self.shared.ingest();
        let slot = ingest.slot_of(&self.name).ok_or(DriverError::Stopped)?;
        let d = ingest.device(slot).ok_or(DriverError::Stopped)?;
        let (point, p) = d
            .points
            .iter()
            .enumerate()
            .find(|(_, p)| &*p.name == property)
            .ok_or_else(|| DriverError::Refused(format!("`{property}` has no MQTT binding")))?;
        if d.status != Status::Online {
            return Err(DriverError::Unreachable(format!(
                "`{}` is offline ({}); the command was not sent",
                d.name, d.why
            )));
        }
        let confirm = p.binding.confirm.map(|s| s.get());
        if let Some(sp) = &d.sparkplug {
            let datatype = d
                .datatypes
                .get(&point)
                .copied()
                .unwrap_or_else(|| sparkplug::datatype_for(p.ty));
            let mut metric =
                sparkplug::metric_of(datatype, value).map_err(DriverError::Rejected)?;
            metric.name.clone_from(&p.binding.metric);
            metric.timestamp = Some(unix_ms());
            let body = Payload {
                timestamp: Some(unix_ms()),
                metrics: vec![metric],
                ..Payload::default()
            };
            let topic = Topic::of(sp, MessageType::NCmd).render();
            return Ok(Command {
                slot,
                point,
                topic,
                body: body.encode_to_vec(),
                confirm,
            });
        }
        let Some(command) = &p.binding.command else {
            return Err(DriverError::Denied(format!(
                "the model gives `{property}` no command topic, so it cannot be written over MQTT"
            )));
        };
        let body = payload::encode(p.binding.json.as_ref(), value);
        Ok(Command {
            slot,
            point,
            topic: command.render(&d.name),
            body,
            confirm,
        })
    }
}

impl DeviceWriter for MqttWriter {
    fn write<'a>(
        &'a self,
        property: &'a str,
        value: Value,
        audit: WriteAudit,
    ) -> BoxFuture<'a, Result<Written, DriverError>> {
        Box::pin(async move {
            let Command {
                slot,
                point,
                topic,
                body,
                confirm,
            } = self.command(property, &value)?;
            let Some(confirm) = confirm else {
                self.shared.publish(topic, body)?;
                return Ok(Written::Sent);
            };
            // Wait from before the publish, so a quick answer is not missed.
            let (done, confirmed) = oneshot::channel();
            self.shared.ingest().waiters.push((
                slot,
                Waiter {
                    point,
                    value,
                    done,
                    audit,
                },
            ));
            let result = match self.shared.publish(topic, body) {
                Err(e) => {
                    drop(confirmed);
                    Err(e)
                }
                Ok(()) => match tokio::time::timeout(confirm, confirmed).await {
                    Ok(Ok(())) => return Ok(Written::Confirmed),
                    Ok(Err(_)) => Err(DriverError::Stopped),
                    Err(_) => Err(DriverError::Timeout(confirm)),
                },
            };
            // Our waiter's receiver is gone (with the timeout, or unused
            // after a failed publish); so are those of others that gave up.
            self.shared
                .ingest()
                .waiters
                .retain(|(_, w)| !w.done.is_closed());
            result
        })
    }
}

/// Device documents for the MQTT driver's tests.
#[cfg(test)]
pub(crate) mod fixtures {
    /// Two plain MQTT devices, `m1` and `m2`, each on its own topic;
    /// `m1` also announces itself on `plant/status`.
    pub(crate) const METERS: &str = r#"kind: DeviceModel
name: meter
properties:
  power: { type: float, mqtt: { topic: "plant/{device}/power" } }
---
kind: Device
name: m1
model: meter
mqtt: { status: { topic: plant/status } }
---
kind: Device
name: m2
model: meter
mqtt: {}
"#;

    pub(crate) use crate::fixtures::{entry, project, properties};
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use ferrite_core::driver::{DriverContext, DriverStats, NoMeters};
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    use super::{Driver, LogOffsets, MqttDriver, fixtures};
    use crate::broker;

    /// Messages published, and the size of each: together more than the
    /// broker's log for one filter (4 MiB).
    const SENT: u32 = 1500;
    const BODY: usize = 4096;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_dropped_unread_are_counted_for_their_devices() {
        use tracing_subscriber::layer::SubscriberExt;
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(broker::tracing_layer()),
        );
        let _turn = broker::tests::GATE_TESTS.lock().await;
        let (port, link, rx, _publisher) = broker::tests::broker_on_loopback().await;
        let (output, mut updates) = tokio::sync::mpsc::channel(16);
        let ctx = DriverContext {
            shutdown: tokio_util::sync::CancellationToken::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            output,
            urgent: tokio::sync::mpsc::channel(16).0,
            data_dir: std::env::temp_dir(),
            stats: Arc::new(DriverStats::default()),
            meters: Arc::new(NoMeters),
            crashes: Arc::default(),
            events: tokio::sync::mpsc::channel(16).0,
        };
        let driver = MqttDriver::new(ctx.clone(), Some((link, rx)), &Default::default());
        // No back-pressure here: the store below takes nothing until the
        // broker's log has overflowed.
        broker::gate::install(|| false, ctx.stats.clone());

        let project = fixtures::project(fixtures::METERS);
        let properties = fixtures::properties(&project, "meter");
        for (index, name) in ["m1", "m2"].into_iter().enumerate() {
            let entry = fixtures::entry(&project, index, name, &properties);
            driver.start(&entry, ctx.clone()).expect("an MQTT device");
        }

        // One in three messages is m2's. Each is a JSON number, padded.
        let device_of = |n: u32| if n.is_multiple_of(3) { "m2" } else { "m1" };
        let (client, mut events) =
            AsyncClient::new(MqttOptions::new("meters", "127.0.0.1", port), 100);
        let sender = tokio::spawn(async move {
            for n in 0..SENT {
                let mut body = format!("{n}").into_bytes();
                body.resize(BODY, b' ');
                let topic = format!("plant/{}/power", device_of(n));
                client
                    .publish(topic, QoS::AtLeastOnce, false, body)
                    .await
                    .expect("publish");
            }
            client
        });
        let mut acked = 0;
        while acked < SENT {
            let event = tokio::time::timeout(Duration::from_secs(10), events.poll())
                .await
                .expect("acknowledged within 10 s")
                .expect("poll");
            if let Event::Incoming(Packet::PubAck(_)) = event {
                acked += 1;
            }
        }
        let _client = sender.await.expect("sender");

        // Now the store takes everything: what arrives, per device.
        let mut arrived: BTreeMap<String, u64> = BTreeMap::new();
        let last = f64::from(SENT - 1);
        let mut done = false;
        while !done {
            let update = tokio::time::timeout(Duration::from_secs(10), updates.recv())
                .await
                .expect("the last message within 10 s")
                .expect("updates");
            for (_, sample) in &update.samples {
                let ferrite_core::reading::Sample::Good(ferrite_models::Value::Float(v)) = sample
                else {
                    continue;
                };
                *arrived
                    .entry(["m1", "m2"][update.device].into())
                    .or_default() += 1;
                done |= *v == last;
            }
        }
        let lost = |device: &str| {
            let sent = (0..SENT).filter(|n| device_of(*n) == device).count() as u64;
            sent - arrived.get(device).copied().unwrap_or(0)
        };
        let stats = &ctx.stats;
        let dropped = stats
            .mqtt_dropped
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(dropped > 0, "the log never overflowed");
        assert_eq!(dropped, lost("m1") + lost("m2"), "every loss counted");
        assert_eq!(
            stats.mqtt_dropped_by_device(),
            BTreeMap::from([("m1".into(), lost("m1")), ("m2".into(), lost("m2"))]),
            "each loss put to its device"
        );
        assert_eq!(
            stats
                .mqtt_dropped_unrouted
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        ctx.shutdown.cancel();
    }

    #[tokio::test]
    async fn an_outcome_that_confirms_a_write_goes_to_the_store_whole_on_the_urgent_queue() {
        use ferrite_core::reading::Update;
        use tokio::sync::{mpsc, oneshot};
        let (output, mut polls) = mpsc::channel(16);
        let (urgent, mut urgents) = mpsc::channel(16);
        let ctx = DriverContext {
            output,
            urgent,
            ..DriverContext::standalone(mpsc::channel(16).0)
        };
        let update = |device| Update {
            device,
            ts: 0,
            status: None,
            seen: true,
            samples: Vec::new(),
            stamps: Vec::new(),
            applied: None,
            audit: Vec::new(),
        };
        // Without a write to confirm: behind the polls.
        super::store_updates(vec![update(0)], Vec::new(), Vec::new(), &ctx)
            .await
            .expect("sent");
        assert_eq!(polls.try_recv().expect("a poll").device, 0);
        assert!(urgents.try_recv().is_err());
        // One publish that updates two devices and confirms a write to the
        // first: both ahead of the polls, the entry and the answer with the
        // last.
        let (done, answered) = oneshot::channel();
        let entry = b"audit entry".to_vec();
        super::store_updates(
            vec![update(0), update(1)],
            vec![done],
            vec![entry.clone()],
            &ctx,
        )
        .await
        .expect("sent");
        assert!(polls.try_recv().is_err(), "nothing behind the polls");
        let first = urgents.try_recv().expect("the first device's update");
        let mut last = urgents.try_recv().expect("the second's");
        assert_eq!((first.device, last.device), (0, 1));
        assert!(first.applied.is_none() && first.audit.is_empty());
        assert_eq!(last.audit, [entry]);
        last.applied
            .take()
            .expect("applied")
            .send(())
            .expect("the answer waits");
        tokio::time::timeout(Duration::from_secs(5), answered)
            .await
            .expect("in time")
            .expect("answered once the last is visible");
    }

    #[test]
    fn a_jump_in_the_log_offsets_counts_the_messages_dropped_unread() {
        let mut offsets = LogOffsets::default();
        // Where a new link starts reading is not a gap.
        assert!(offsets.next(Some((3, 5000))).is_empty());
        assert!(offsets.next(Some((3, 5001))).is_empty());
        // Retained messages come from outside the log.
        assert!(offsets.next(None).is_empty());
        assert!(offsets.next(Some((3, 5002))).is_empty());
        // The router trimmed a segment: 5003..5100 never arrived.
        assert_eq!(offsets.next(Some((4, 5100))), 5003..5100);
        assert!(offsets.next(Some((4, 5101))).is_empty());
    }
}
