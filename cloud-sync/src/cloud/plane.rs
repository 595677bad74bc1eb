//! The control plane's MQTT side: what gateways send, applied to the store
//! exactly once, and what goes back (Resume, Ack, desired patches).
//!
//! One task polls the MQTT connection and hands every message of a gateway
//! this replica owns ([`super::replicas`]) to one of [`WORKERS`] worker
//! tasks, the same one for every message of that gateway, so that they are
//! handled in the order they came while gateways are applied in parallel.
//! A worker keeps an [`Applier`] per gateway; a batch is stored
//! (atomically, durably) before its Ack is sent. A batch the store refuses
//! because another replica applied first ([`CloudStoreError::Conflict`])
//! sends the gateway back to where the store ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use ferrite_models::Value;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prost::Message;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::mpsc;

use super::replicas::Replicas;
use super::store::{CloudStoreError, GatewayEvent, NewChanges, Store, blocking};
use crate::delta::{self, naive_json_bytes, publish_packet_bytes};
use crate::session::{Applied, Applier};
use crate::topics::{self, Down, Up};
use crate::wire::{
    Ack, ConfigDocument, ConfigReport, DesiredPatch, EventAck, EventBatch, Hello, Reported, Resume,
};

/// Counters since start, for `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Whole MQTT packets of batches received (redeliveries included).
    pub wire_bytes: AtomicU64,
    /// Batch payloads received (zstd).
    pub payload_bytes: AtomicU64,
    /// Their protobuf size, decompressed.
    pub protobuf_bytes: AtomicU64,
    /// Batches received.
    pub batches: AtomicU64,
    /// Batches applied.
    pub applied: AtomicU64,
    /// Batches received again and acknowledged without applying.
    pub duplicates: AtomicU64,
    /// Batches refused (out of order or unreadable): a Resume went back.
    pub refused: AtomicU64,
    /// Changes applied.
    pub points: AtomicU64,
    /// What the applied changes would have cost as naive JSON, one MQTT
    /// message each ([`naive_json_bytes`]).
    pub naive_json_bytes: AtomicU64,
    /// Changes gateways dropped over their outbox budget.
    pub lost_at_edge: AtomicU64,
    /// Batches another replica had applied first (refused, resumed).
    pub conflicts: AtomicU64,
}

/// What the control plane knows of a gateway's connection.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    /// Its status topic says `online`.
    pub connected: bool,
    /// When it last sent anything.
    pub last_seen: Option<SystemTime>,
    /// Its newest outbox sequence, as last told.
    pub outbox_last: u64,
}

/// State shared with the REST API.
pub struct Shared {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Which gateways this replica applies.
    pub replicas: Arc<Replicas>,
    /// The MQTT client (to send desired patches).
    pub client: AsyncClient,
    /// Counters.
    pub stats: Stats,
    /// `/metrics`' running series.
    pub metrics: CloudMetrics,
    /// What the embedded broker's guard refused.
    pub guard: Arc<super::guard::GuardStats>,
    /// This replica's broker connection is up (a replica cut off from its
    /// broker stops saying it is alive, so the others take its gateways).
    pub broker_connected: Arc<std::sync::atomic::AtomicBool>,
    presence: Mutex<HashMap<String, Presence>>,
}

impl Shared {
    /// What is known of `gateway`'s connection.
    pub fn presence(&self, gateway: &str) -> Presence {
        self.presence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(gateway)
            .cloned()
            .unwrap_or_default()
    }

    fn update(&self, gateway: &str, change: impl FnOnce(&mut Presence)) {
        let mut presence = self.presence.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = presence.entry(gateway.to_string()).or_default();
        entry.last_seen = Some(SystemTime::now());
        change(entry);
    }

    /// Records desired state for a device and sends it down. The gateway
    /// applies it now if connected, or after its next Hello.
    pub async fn send_desired(
        self: &Arc<Self>,
        gateway: &str,
        device: &str,
        properties: BTreeMap<String, Value>,
    ) -> Result<DesiredPatch, CloudStoreError> {
        let (gw, dev, store) = (gateway.to_string(), device.to_string(), self.store.clone());
        let patch = blocking(move || store.put_desired(&gw, &dev, &properties)).await?;
        self.publish(gateway, Down::Desired, patch.encode_to_vec())
            .await;
        Ok(patch)
    }

    /// Records `documents` as `gateway`'s configuration (the next bundle
    /// version) and sends it down. The gateway applies it now if
    /// connected, or after its next Hello.
    pub async fn send_config(
        self: &Arc<Self>,
        gateway: &str,
        documents: Vec<ConfigDocument>,
    ) -> Result<crate::wire::ConfigBundle, CloudStoreError> {
        let (gw, store) = (gateway.to_string(), self.store.clone());
        let bundle = blocking(move || store.put_bundle(&gw, documents)).await?;
        self.publish(gateway, Down::Config, bundle.encode_to_vec())
            .await;
        Ok(bundle)
    }

    async fn publish(&self, gateway: &str, kind: Down, payload: Vec<u8>) {
        let topic = topics::down(gateway, kind);
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::warn!("cannot send {kind:?} to {gateway}: {e}");
        }
    }
}

/// `/metrics`' series counted as things happen ([`super::metrics`] renders
/// them with the rest).
#[derive(Debug)]
pub struct CloudMetrics {
    pub(crate) apply_seconds: Histogram,
}

impl Default for CloudMetrics {
    fn default() -> CloudMetrics {
        CloudMetrics {
            // 0.1 ms .. 3.3 s.
            apply_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

impl CloudMetrics {
    /// A batch was stored in `took`.
    pub fn observe_apply(&self, took: Duration) {
        self.apply_seconds.observe(took.as_secs_f64());
    }
}

/// Worker tasks applying batches, each for its share of the gateways.
pub const WORKERS: usize = 16;

/// Starts the MQTT side on `client`/`eventloop`; returns the shared state.
pub fn start(
    store: Arc<dyn Store>,
    replicas: Arc<Replicas>,
    client: AsyncClient,
    eventloop: EventLoop,
    guard: Arc<super::guard::GuardStats>,
) -> Arc<Shared> {
    let shared = Arc::new(Shared {
        store,
        replicas,
        client: client.clone(),
        stats: Stats::default(),
        metrics: CloudMetrics::default(),
        guard,
        broker_connected: Arc::default(),
        presence: Mutex::new(HashMap::new()),
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(
                Processor {
                    shared: shared.clone(),
                    appliers: HashMap::new(),
                }
                .run(rx),
            );
            tx
        })
        .collect();
    tokio::spawn(poll(client, eventloop, shared.clone(), workers));
    shared
}

/// Polls the connection; (re)subscribes and announces the cloud on every
/// connect. Status messages are noted here (every replica shows every
/// gateway's presence); the rest goes to the worker of its gateway, if this
/// replica owns it.
async fn poll(
    client: AsyncClient,
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    workers: Vec<mpsc::Sender<(String, Vec<u8>)>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                shared.broker_connected.store(true, Ordering::Relaxed);
                tracing::info!("the control plane is connected to its broker");
                let _ = client.try_subscribe(topics::ALL_UP, QoS::AtLeastOnce);
                let _ = client.try_publish(
                    topics::CLOUD_STATUS,
                    QoS::AtLeastOnce,
                    true,
                    b"online".to_vec(),
                );
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some((gateway, kind)) = topics::parse_up(&p.topic) else {
                    continue;
                };
                if ferrite_models::units::check_name(gateway).is_err() {
                    tracing::warn!("ignoring a message on {}: not a gateway id", p.topic);
                    continue;
                }
                if kind == Up::Status {
                    let online = p.payload.as_ref() == b"online";
                    shared.update(gateway, |presence| presence.connected = online);
                    continue;
                }
                shared.update(gateway, |_| {});
                if !shared.replicas.owns(gateway) {
                    continue;
                }
                let worker = &workers[worker_of(gateway)];
                if worker.send((p.topic, p.payload.to_vec())).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack)))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
            {
                // Without it, nothing arrives: ask again shortly.
                tracing::warn!(
                    "the broker refused the control plane's subscription; asking again in 1 s"
                );
                let client = client.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = client.try_subscribe(topics::ALL_UP, QoS::AtLeastOnce);
                });
            }
            Ok(_) => {}
            Err(e) => {
                shared.broker_connected.store(false, Ordering::Relaxed);
                tracing::warn!("the control plane's broker connection failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The worker of `gateway`: always the same one.
fn worker_of(gateway: &str) -> usize {
    (super::replicas::fnv1a(gateway.as_bytes()) % WORKERS as u64) as usize
}

struct Processor {
    shared: Arc<Shared>,
    appliers: HashMap<String, Applier>,
}

impl Processor {
    async fn run(mut self, mut rx: mpsc::Receiver<(String, Vec<u8>)>) {
        let mut view = self.shared.replicas.watch();
        loop {
            let (topic, payload) = tokio::select! {
                message = rx.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
                Ok(()) = view.changed() => {
                    // Gateways now owned by another replica: forget their
                    // sessions, so that owning them again starts afresh.
                    let replicas = self.shared.replicas.clone();
                    self.appliers.retain(|gateway, _| replicas.owns(gateway));
                    continue;
                }
            };
            let Some((gateway, kind)) = topics::parse_up(&topic) else {
                continue;
            };
            let gateway = gateway.to_string();
            let result = match kind {
                Up::Hello => self.hello(&gateway, &payload).await,
                Up::Batch => self.batch(&gateway, &topic, &payload).await,
                Up::Reported => self.reported(&gateway, &payload).await,
                Up::Config => self.config_report(&gateway, &payload).await,
                Up::Events => self.events(&gateway, &payload).await,
                Up::Status => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!("{gateway}: {e}");
            }
        }
    }

    async fn hello(&mut self, gateway: &str, payload: &[u8]) -> Result<(), String> {
        let hello = Hello::decode(payload).map_err(|e| format!("malformed Hello: {e}"))?;
        if hello.gateway_id != gateway {
            return Err(format!("a Hello for `{}` on its topic", hello.gateway_id));
        }
        self.shared.update(gateway, |p| {
            p.connected = true;
            p.outbox_last = hello.outbox_last;
        });
        let store = self.shared.store.clone();
        let (gw, version) = (gateway.to_string(), hello.desired_version);
        let handled = hello.config_version;
        let (last, patches, bundle) = blocking(move || {
            store.know(&gw)?;
            store.set_applied_version(&gw, version)?;
            // Its configuration, if it has not handled the newest yet, or
            // handled it without a report arriving here.
            let reported = store.config_report(&gw)?.map_or(0, |r| r.version);
            let bundle = store
                .bundle(&gw)?
                .filter(|b| b.version > handled || (b.version == handled && reported < handled));
            Ok((
                store.last_change(&gw)?,
                store.patches_after(&gw, version)?,
                bundle,
            ))
        })
        .await
        .map_err(|e| e.to_string())?;
        // A new session: the gateway numbers its dictionary afresh.
        self.appliers
            .insert(gateway.to_string(), Applier::resuming(last, hello.epoch));
        tracing::info!(
            "{gateway} says hello (acknowledged {}, stored {last}, {} desired patch(es) to send)",
            hello.last_acked_seq,
            patches.len()
        );
        self.resume(gateway, last, hello.epoch).await;
        for patch in patches {
            self.shared
                .publish(gateway, Down::Desired, patch.encode_to_vec())
                .await;
        }
        if let Some(bundle) = bundle {
            self.shared
                .publish(gateway, Down::Config, bundle.encode_to_vec())
                .await;
        }
        Ok(())
    }

    async fn config_report(&mut self, gateway: &str, payload: &[u8]) -> Result<(), String> {
        let report =
            ConfigReport::decode(payload).map_err(|e| format!("malformed ConfigReport: {e}"))?;
        if report.applied {
            tracing::info!(
                "{gateway} runs config bundle v{} as its v{} ({})",
                report.version,
                report.gateway_version,
                if report.changed {
                    "applied"
                } else {
                    "unchanged"
                }
            );
        } else {
            tracing::warn!(
                "{gateway} refused config bundle v{}: {}",
                report.version,
                report.errors.join("; ")
            );
        }
        let store = self.shared.store.clone();
        let gw = gateway.to_string();
        blocking(move || store.record_config_report(&gw, &report))
            .await
            .map_err(|e| e.to_string())
    }

    /// Keeps a gateway's journal events, then acknowledges up to the last
    /// (resent ones are kept once). A body that is not JSON is kept as text.
    async fn events(&self, gateway: &str, payload: &[u8]) -> Result<(), String> {
        let batch =
            EventBatch::decode(payload).map_err(|e| format!("malformed EventBatch: {e}"))?;
        if batch.gateway_id != gateway {
            return Err(format!(
                "an EventBatch for `{}` on its topic",
                batch.gateway_id
            ));
        }
        let Some(last) = batch.events.iter().map(|e| e.seq).max() else {
            return Ok(());
        };
        let events: Vec<GatewayEvent> = batch
            .events
            .into_iter()
            .map(|e| GatewayEvent {
                seq: e.seq,
                ts_ms: e.ts_ms,
                body: serde_json::from_str(&e.body).unwrap_or(serde_json::Value::String(e.body)),
            })
            .collect();
        let store = self.shared.store.clone();
        let gw = gateway.to_string();
        blocking(move || {
            if !store.knows(&gw)? {
                return Ok(false);
            }
            store.put_events(&gw, &events).map(|()| true)
        })
        .await
        .map_err(|e| e.to_string())?
        .then_some(())
        .ok_or_else(|| "events from a gateway that never said Hello".to_string())?;
        self.shared
            .publish(
                gateway,
                Down::EventsAck,
                EventAck { seq: last }.encode_to_vec(),
            )
            .await;
        Ok(())
    }

    async fn resume(&self, gateway: &str, last: u64, epoch: u64) {
        let resume = Resume {
            last_applied_seq: last,
            epoch,
        };
        self.shared
            .publish(gateway, Down::Resume, resume.encode_to_vec())
            .await;
    }

    /// Refuses a batch and sends the gateway back to where the store ends.
    async fn refuse_from_store(&self, gateway: &str, epoch: u64) -> Result<(), String> {
        let store = self.shared.store.clone();
        let gw = gateway.to_string();
        let last = blocking(move || store.last_change(&gw))
            .await
            .map_err(|e| e.to_string())?;
        self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
        self.resume(gateway, last, epoch).await;
        Ok(())
    }

    async fn ack(&self, gateway: &str, seq: u64) {
        self.shared
            .publish(gateway, Down::Ack, Ack { seq }.encode_to_vec())
            .await;
    }

    async fn batch(&mut self, gateway: &str, topic: &str, payload: &[u8]) -> Result<(), String> {
        let stats = &self.shared.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .payload_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        stats.wire_bytes.fetch_add(
            publish_packet_bytes(topic.len(), payload.len(), true) as u64,
            Ordering::Relaxed,
        );
        let batch = match delta::decompress(payload) {
            Ok(batch) => batch,
            Err(e) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(format!("an unreadable batch: {e}"));
            }
        };
        let applier = match self.appliers.get_mut(gateway) {
            Some(applier) => applier,
            None => {
                // A batch before any Hello since this control plane started:
                // its dictionary is unknown here. Tell it where to resume
                // (it says Hello again).
                return self.refuse_from_store(gateway, batch.epoch).await;
            }
        };
        let last = applier.last_change();
        self.shared.update(gateway, |p| {
            p.outbox_last = p.outbox_last.max(batch.outbox_last)
        });
        if batch.gateway_id != gateway {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(format!("a batch of `{}` on its topic", batch.gateway_id));
        }
        stats
            .protobuf_bytes
            .fetch_add(batch.encoded_len() as u64, Ordering::Relaxed);
        match applier.apply(&batch) {
            Ok(Applied::Duplicate { last_change }) => {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                self.ack(gateway, last_change).await;
            }
            Ok(Applied::Stale) if batch.epoch > applier.epoch() => {
                // A session newer than ours: it said Hello to another
                // replica meanwhile. Send it back to where the store ends.
                self.appliers.remove(gateway);
                self.refuse_from_store(gateway, batch.epoch).await?;
            }
            Ok(Applied::Stale) => {
                tracing::debug!("{gateway}: a batch of an older session, ignored");
            }
            Ok(Applied::OutOfOrder { last_change }) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                self.resume(gateway, last_change, batch.epoch).await;
            }
            Ok(Applied::New {
                changes,
                last_change,
                dropped,
            }) => {
                let naive: usize = changes.iter().map(|c| naive_json_bytes(gateway, c)).sum();
                let count = changes.len() as u64;
                let store = self.shared.store.clone();
                let (gw, first, outbox_last) =
                    (gateway.to_string(), batch.first_change, batch.outbox_last);
                let started = std::time::Instant::now();
                let stored = blocking(move || {
                    store.apply(NewChanges {
                        gateway: &gw,
                        continues_after: last,
                        first_seq: first,
                        changes: &changes,
                        last_change,
                        dropped,
                        outbox_last,
                    })
                })
                .await;
                if let Err(e) = stored {
                    // Not applied: forget the session, so that the next
                    // batch meets the store's truth, and ask for a resend
                    // from where the store ends.
                    self.appliers.remove(gateway);
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    let from = match e {
                        CloudStoreError::Conflict { last_change } => {
                            stats.conflicts.fetch_add(1, Ordering::Relaxed);
                            last_change
                        }
                        _ => last,
                    };
                    self.resume(gateway, from, batch.epoch).await;
                    return Err(format!("a batch was not stored: {e}"));
                }
                self.shared.metrics.observe_apply(started.elapsed());
                stats.applied.fetch_add(1, Ordering::Relaxed);
                stats.points.fetch_add(count, Ordering::Relaxed);
                stats
                    .naive_json_bytes
                    .fetch_add(naive as u64, Ordering::Relaxed);
                if dropped > 0 {
                    stats.lost_at_edge.fetch_add(dropped, Ordering::Relaxed);
                    tracing::warn!(
                        "{gateway} dropped {dropped} change(s) over its outbox budget before change {}",
                        batch.first_change
                    );
                }
                self.ack(gateway, last_change).await;
            }
            Err(e) => {
                // An id it does not know (a dictionary from before a
                // restart), or a batch that contradicts itself: resume, and
                // the gateway starts a fresh dictionary.
                stats.refused.fetch_add(1, Ordering::Relaxed);
                self.resume(gateway, last, batch.epoch).await;
                return Err(format!("a batch was refused: {e}"));
            }
        }
        Ok(())
    }

    async fn reported(&mut self, gateway: &str, payload: &[u8]) -> Result<(), String> {
        let report = Reported::decode(payload).map_err(|e| format!("malformed Reported: {e}"))?;
        tracing::info!(
            "{gateway} applied desired version {} for {} ({} refused)",
            report.version,
            report.device,
            report.errors.len()
        );
        let store = self.shared.store.clone();
        let gw = gateway.to_string();
        blocking(move || store.record_report(&gw, &report))
            .await
            .map_err(|e| e.to_string())
    }
}
