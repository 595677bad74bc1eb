//! The gateway's side of the link: the outbox, in batches, over MQTT (QoS 1)
//! to the control plane's broker, and the twin's desired state back.
//!
//! One task owns the MQTT connection. Its session, per connect:
//! 1. say `Hello` (last acknowledged change, last applied desired version,
//!    a new epoch) and wait for `Resume`, which says where the cloud's
//!    store ends;
//! 2. send batches from there, at most `window` unacknowledged at a time,
//!    cut every `batch_interval` or as soon as one is full;
//! 3. trim the outbox on each `Ack`.
//!
//! A batch not acknowledged within `ack_timeout`, or the cloud announcing
//! that it (re)started, starts a new epoch with another Hello: the resend
//! begins where the cloud's store ends, so nothing is lost and nothing is
//! applied twice (the cloud checks outbox sequences). A `Resume` of an
//! older epoch is ignored. Before that Hello the uplink subscribes again, in
//! case the broker lost its subscriptions but kept the connection; after
//! three such Hellos in a row while the cloud says it is online, it drops
//! the connection and connects anew.
//!
//! The drivers and rules never wait for this task: they only append to the
//! outbox, inside the store's commit. Over its budget the outbox drops its
//! oldest entries, counted, and the next batch tells the cloud how many.
//!
//! Journal events (alarms, OPC UA events, warnings) go up beside the
//! changes, when the outbox has any ([`OutboxAccess::events_after`]): one
//! `EventBatch` at a time, sent again after `ack_timeout` or a new session,
//! the journal's cursor moved on each `EventAck`.
//!
//! Desired patches go to a second task, which applies them one at a time in
//! version order through the gateway's [`DesiredHandler`] (its checked write
//! path), records the version durably, and reports the result.
//!
//! Config bundles (the gateway's whole configuration, versioned by the
//! cloud) go to a third, which hands only the newest one to the gateway's
//! [`ConfigHandler`] (its reconciler), records its version durably, and
//! reports what became of it. After every Hello the cloud sends its newest
//! bundle again if the Hello's `config_version` is older, so a gateway that
//! was offline converges when it is back.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prost::Message;
use rumqttc::{AsyncClient, ClientError, Event, EventLoop, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::link::LinkOptions;
use crate::outbox::OutboxAccess;
use crate::session::{Batcher, Outgoing};
use crate::topics::{self, Down, Up};
use crate::wire::{
    Ack, ConfigBundle, ConfigReport, DesiredPatch, EventAck, EventBatch, Hello, Reported, Resume,
};

/// How the uplink runs.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// The gateway's id (config `[gateway] id`).
    pub gateway: String,
    /// The control plane's broker, and how to log in.
    pub link: LinkOptions,
    /// Batches are cut at least this often.
    pub batch_interval: Duration,
    /// A batch (or Hello) unanswered this long starts a new session.
    pub ack_timeout: Duration,
    /// Batches sent and not yet acknowledged, at most.
    pub window: usize,
    /// Changes per batch, at most.
    pub max_points: usize,
    /// Compressed bytes per batch, at most.
    pub max_bytes: usize,
}

impl UplinkConfig {
    /// Defaults: 1 s batches of up to 10 000 changes or 64 KiB, 8 in
    /// flight, 10 s to acknowledge.
    pub fn new(gateway: &str, broker: &str) -> UplinkConfig {
        UplinkConfig {
            gateway: gateway.to_string(),
            link: LinkOptions {
                broker: broker.to_string(),
                client_id: format!("ferrite-{gateway}"),
                ..LinkOptions::default()
            },
            batch_interval: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(10),
            window: 8,
            max_points: 10_000,
            max_bytes: 64 * 1024,
        }
    }
}

/// Applies desired state: the gateway checks each property against its
/// model and writes it through the same path as REST.
pub trait DesiredHandler: Send + Sync + 'static {
    /// Applies `patch`; the answer says per property what was written or
    /// why not.
    fn apply<'a>(
        &'a self,
        patch: &'a DesiredPatch,
    ) -> Pin<Box<dyn Future<Output = Reported> + Send + 'a>>;
}

/// Applies config bundles: the gateway checks the whole set and runs it,
/// or refuses it and keeps what runs.
pub trait ConfigHandler: Send + Sync + 'static {
    /// Applies `bundle`; the report says how it went.
    fn apply<'a>(
        &'a self,
        bundle: &'a ConfigBundle,
    ) -> Pin<Box<dyn Future<Output = ConfigReport> + Send + 'a>>;
}

/// The uplink's state, for `/api/v1/sync` and `/metrics`.
#[derive(Debug, Default)]
pub struct UplinkStatus {
    connected: AtomicBool,
    last_acked: AtomicU64,
    batches: AtomicU64,
    bytes: AtomicU64,
    points: AtomicU64,
    sessions: AtomicU64,
    desired_version: AtomicU64,
    config_version: AtomicU64,
    refused: AtomicU64,
    events_sent: AtomicU64,
    events_acked: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_refused: Mutex<Option<String>>,
}

/// A copy of [`UplinkStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSnapshot {
    /// Connected to the broker.
    pub connected: bool,
    /// The highest change sequence the control plane acknowledged.
    pub last_acked: u64,
    /// Batches sent since start (resends included).
    pub batches: u64,
    /// Compressed batch bytes sent since start.
    pub bytes: u64,
    /// Changes sent since start (resends included).
    pub points: u64,
    /// Sessions (Hellos) since start.
    pub sessions: u64,
    /// The last desired-state version applied.
    pub desired_version: u64,
    /// The newest config bundle version handled (applied or refused).
    pub config_version: u64,
    /// Messages from the control plane's topics that made no sense (an Ack
    /// or Resume past what was ever sent) and were ignored.
    pub refused: u64,
    /// Why the last of those was refused.
    pub last_refused: Option<String>,
    /// Journal events sent since start (resends included).
    pub events_sent: u64,
    /// The highest journal event sequence the control plane acknowledged.
    pub events_acked: u64,
    /// The last connection, protocol or outbox error since the control
    /// plane last acknowledged a batch, if any.
    pub last_error: Option<String>,
}

impl UplinkStatus {
    /// A copy of the counters.
    pub fn snapshot(&self) -> UplinkSnapshot {
        UplinkSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            last_acked: self.last_acked.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            points: self.points.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            desired_version: self.desired_version.load(Ordering::Relaxed),
            config_version: self.config_version.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            events_sent: self.events_sent.load(Ordering::Relaxed),
            events_acked: self.events_acked.load(Ordering::Relaxed),
            last_refused: self
                .last_refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Counts and logs a message that made no sense; it changes nothing.
    fn refuse(&self, message: String) {
        tracing::warn!("the uplink refused a message from the control plane's topics: {message}");
        self.refused.fetch_add(1, Ordering::Relaxed);
        *self
            .last_refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(message);
    }

    fn error(&self, message: String) {
        self.set_error(Some(message));
    }

    fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }
}

/// Journal events per EventBatch, at most.
const EVENTS_PER_BATCH: usize = 200;

/// What the twin task tells the connection task.
enum FromTwin {
    /// Publish this result.
    Report(Reported),
    /// A patch skipped ahead of the last applied version: ask again.
    Gap,
    /// Publish this config report.
    Config(ConfigReport),
}

/// Runs the uplink until `shutdown`. Errors of the link (a bad URL or
/// certificate) end it early, logged and shown in the status. Without a
/// `bundles` handler, config bundles are refused.
pub async fn run(
    config: UplinkConfig,
    outbox: Arc<dyn OutboxAccess>,
    desired: Arc<dyn DesiredHandler>,
    bundles: Option<Arc<dyn ConfigHandler>>,
    status: Arc<UplinkStatus>,
    shutdown: CancellationToken,
) {
    let mut link = config.link.clone();
    link.will = Some((topics::up(&config.gateway, Up::Status), b"offline".to_vec()));
    let options = match link.mqtt_options() {
        Ok(options) => options,
        Err(e) => {
            tracing::error!("the uplink cannot start: {e}");
            status.error(e.to_string());
            return;
        }
    };
    if let Ok(acked) = outbox.acknowledged() {
        status.last_acked.store(acked, Ordering::Relaxed);
    }
    if let Ok(version) = outbox.desired_version() {
        status.desired_version.store(version, Ordering::Relaxed);
    }
    if let Ok(version) = outbox.config_version() {
        status.config_version.store(version, Ordering::Relaxed);
    }
    if let Ok(acked) = outbox.events_acked() {
        status.events_acked.store(acked, Ordering::Relaxed);
    }
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (patches, patches_rx) = mpsc::channel(256);
    let (twin_tx, twin_rx) = mpsc::channel(256);
    let twin = tokio::spawn(apply_patches(
        patches_rx,
        twin_tx.clone(),
        desired,
        outbox.clone(),
        status.clone(),
    ));
    let (bundle_tx, bundle_rx) = tokio::sync::watch::channel(None);
    let configs = tokio::spawn(apply_bundles(
        bundle_rx,
        twin_tx,
        bundles,
        outbox.clone(),
        status.clone(),
    ));
    let mut connection = Connection {
        session: Session::new(&config),
        config,
        client,
        outbox,
        status,
        patches,
        bundles: bundle_tx,
        sent_high: 0,
        events_in_flight: None,
        events_sent_high: 0,
        resubscribe_at: None,
        unanswered_hellos: 0,
        cloud_online: true,
    };
    connection.drive(eventloop, twin_rx, shutdown).await;
    twin.abort();
    configs.abort();
}

/// The connection task's state.
struct Connection {
    config: UplinkConfig,
    client: AsyncClient,
    outbox: Arc<dyn OutboxAccess>,
    status: Arc<UplinkStatus>,
    patches: mpsc::Sender<DesiredPatch>,
    /// The newest config bundle received, for the bundle task.
    bundles: tokio::sync::watch::Sender<Option<ConfigBundle>>,
    session: Session,
    /// The highest change sequence this process has sent: no Ack can
    /// rightly go past it.
    sent_high: u64,
    /// The event batch awaiting its EventAck: its last sequence, and when
    /// it went.
    events_in_flight: Option<(u64, Instant)>,
    /// The highest journal event sequence sent: no EventAck can rightly go
    /// past it.
    events_sent_high: u64,
    /// The broker refused a subscription (a cluster busy electing, say):
    /// when to ask again.
    resubscribe_at: Option<Instant>,
    /// Hellos in a row that timed out while the cloud said it was online:
    /// at [`DEAF_HELLOS`] the connection is dropped and made anew.
    unanswered_hellos: u32,
    /// The cloud's last word on its status topic (online until it says
    /// otherwise): while it is offline, silence is no fault of the link.
    cloud_online: bool,
}

/// Hellos in a row that go unanswered, with the cloud online, before the
/// uplink gives up on its connection and connects again. A broker can lose
/// a client's subscriptions and keep the connection (NATS did, losing a
/// JetStream consumer while a cluster node restarted): the uplink then
/// sends and hears nothing. Each timed-out Hello subscribes again first;
/// if that does not cure it, a new connection does.
const DEAF_HELLOS: u32 = 3;

/// Whether the connection still carries the cloud's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Fine,
    /// Hellos keep going unanswered while the cloud is online.
    Deaf,
}

/// One epoch: from a Hello to the next.
struct Session {
    epoch: u64,
    /// The cloud answered this epoch's Hello.
    resumed: bool,
    hello_at: Instant,
    /// The next outbox sequence to send.
    from: u64,
    in_flight: VecDeque<(Outgoing, Instant)>,
    batcher: Batcher,
}

impl Session {
    fn new(config: &UplinkConfig) -> Session {
        // Epochs start from the clock, so that a restarted gateway does not
        // reuse the numbers of a Resume still on its way.
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Session {
            epoch,
            resumed: false,
            hello_at: Instant::now(),
            from: 1,
            in_flight: VecDeque::new(),
            batcher: batcher(config, epoch),
        }
    }
}

fn batcher(config: &UplinkConfig, epoch: u64) -> Batcher {
    let mut batcher = Batcher::new(&config.gateway);
    batcher.max_points = config.max_points;
    batcher.max_bytes = config.max_bytes;
    batcher.epoch = epoch;
    batcher
}

impl Connection {
    async fn drive(
        &mut self,
        mut eventloop: EventLoop,
        mut twin: mpsc::Receiver<FromTwin>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.config.batch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = eventloop.poll() => match event {
                    Ok(event) => {
                        backoff = Duration::from_millis(100);
                        self.on_event(event);
                    }
                    Err(e) => {
                        if self.status.connected.swap(false, Ordering::Relaxed) {
                            tracing::warn!("the uplink lost {}: {e}", self.config.link.broker);
                        } else {
                            tracing::debug!("the uplink cannot reach {}: {e}", self.config.link.broker);
                        }
                        self.status.error(format!("{}: {e}", self.config.link.broker));
                        self.session.resumed = false;
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                },
                _ = tick.tick() => {
                    if self.resubscribe_at.is_some_and(|at| at <= Instant::now()) {
                        self.resubscribe_at = None;
                        self.subscribe();
                    }
                    if self.check_timeouts() == Link::Deaf {
                        // Dropping the connection makes the next poll
                        // connect again (with a clean session), and the
                        // ConnAck subscribes and says Hello.
                        eventloop.clean();
                        self.status.connected.store(false, Ordering::Relaxed);
                        self.session.resumed = false;
                        continue;
                    }
                    self.pump(false);
                    self.pump_events();
                }
                Some(message) = twin.recv() => match message {
                    FromTwin::Report(report) => {
                        let topic = topics::up(&self.config.gateway, Up::Reported);
                        self.publish(topic, report.encode_to_vec(), false);
                    }
                    FromTwin::Gap => self.hello(),
                    FromTwin::Config(report) => {
                        let topic = topics::up(&self.config.gateway, Up::Config);
                        self.publish(topic, report.encode_to_vec(), false);
                    }
                },
            }
        }
        // Say goodbye (the will would say it too, but later).
        if self.status.connected.load(Ordering::Relaxed) {
            let topic = topics::up(&self.config.gateway, Up::Status);
            self.publish(topic, b"offline".to_vec(), true);
            let _ = self.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while eventloop.poll().await.is_ok() {}
            })
            .await;
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.status.connected.store(true, Ordering::Relaxed);
                tracing::info!("the uplink is connected to {}", self.config.link.broker);
                self.resubscribe_at = None;
                self.subscribe();
                let topic = topics::up(&self.config.gateway, Up::Status);
                self.publish(topic, b"online".to_vec(), true);
                self.hello();
            }
            Event::Incoming(Packet::Publish(publish)) => {
                self.on_publish(&publish.topic, &publish.payload);
            }
            Event::Incoming(Packet::SubAck(ack))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
            {
                // Without its subscriptions the uplink hears no Resume and
                // no Ack: ask again shortly (subscribing twice is harmless).
                tracing::warn!("the broker refused the uplink's subscription; asking again in 1 s");
                self.status
                    .error("the broker refused a subscription".to_string());
                self.resubscribe_at = Some(Instant::now() + Duration::from_secs(1));
            }
            _ => {}
        }
    }

    /// Subscribes to the gateway's downward topics and the cloud's status.
    fn subscribe(&self) {
        let gateway = &self.config.gateway;
        for filter in [topics::all_down(gateway), topics::CLOUD_STATUS.to_string()] {
            if let Err(e) = self.client.try_subscribe(filter, QoS::AtLeastOnce) {
                tracing::warn!("the uplink cannot subscribe: {e}");
            }
        }
    }

    fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        if topic == topics::CLOUD_STATUS {
            self.cloud_online = payload != b"offline";
            if payload == b"online" {
                // The cloud (re)started: it may have lost what was in
                // flight, and its dictionary.
                self.hello();
            }
            return;
        }
        let Some(kind) = topics::parse_down(&self.config.gateway, topic) else {
            return;
        };
        let result = match kind {
            Down::Resume => Resume::decode(payload).map(|r| self.on_resume(&r)),
            Down::Ack => Ack::decode(payload).map(|a| self.on_ack(a.seq)),
            Down::Desired => DesiredPatch::decode(payload).map(|p| {
                if self.patches.try_send(p).is_err() {
                    // The twin task is behind: the patch comes again after
                    // the next Hello.
                    tracing::warn!("desired-state patches are queueing up; one will come again");
                }
            }),
            Down::Config => ConfigBundle::decode(payload).map(|b| {
                // Only the newest counts; the bundle task takes it.
                self.bundles.send_replace(Some(b));
            }),
            Down::EventsAck => EventAck::decode(payload).map(|a| self.on_events_ack(a.seq)),
        };
        if let Err(e) = result {
            tracing::warn!("the uplink got a malformed {kind:?} on {topic}: {e}");
            self.status.error(format!("malformed {kind:?}: {e}"));
        }
    }

    /// Starts a new epoch: everything in flight is forgotten; the cloud's
    /// Resume says where to start again.
    fn hello(&mut self) {
        let session = &mut self.session;
        session.epoch += 1;
        session.resumed = false;
        session.hello_at = Instant::now();
        session.in_flight.clear();
        session.batcher = batcher(&self.config, session.epoch);
        self.events_in_flight = None;
        self.status.sessions.fetch_add(1, Ordering::Relaxed);
        let hello = Hello {
            gateway_id: self.config.gateway.clone(),
            last_acked_seq: self.outbox.acknowledged().unwrap_or(0),
            desired_version: self.status.desired_version.load(Ordering::Relaxed),
            epoch: session.epoch,
            outbox_last: self.outbox.last().unwrap_or(0),
            config_version: self.status.config_version.load(Ordering::Relaxed),
        };
        let topic = topics::up(&self.config.gateway, Up::Hello);
        self.publish(topic, hello.encode_to_vec(), false);
    }

    fn on_resume(&mut self, resume: &Resume) {
        if resume.epoch != self.session.epoch {
            return;
        }
        if self.session.resumed {
            // The cloud lost track mid-session (it restarted, or refused a
            // batch): start a new session, with a fresh dictionary, rather
            // than answer every refusal still on its way.
            self.hello();
            return;
        }
        // The cloud can hold only what this gateway wrote: a Resume past the
        // outbox's end would trim changes it never had.
        let written = self.outbox.last().unwrap_or(0).max(self.sent_high);
        let from = resume.last_applied_seq.checked_add(1);
        let Some(from) = from.filter(|_| resume.last_applied_seq <= written) else {
            self.status.refuse(format!(
                "a Resume after change {}, past the last change written ({written})",
                resume.last_applied_seq
            ));
            return;
        };
        tracing::debug!("the cloud resumes after change {}", resume.last_applied_seq);
        self.unanswered_hellos = 0;
        self.acknowledge(resume.last_applied_seq);
        self.sent_high = self.sent_high.max(resume.last_applied_seq);
        self.session.resumed = true;
        self.session.from = from;
        self.pump(false);
        self.pump_events();
    }

    fn on_ack(&mut self, seq: u64) {
        if seq > self.sent_high {
            self.status.refuse(format!(
                "an Ack of change {seq}, past the last change sent ({})",
                self.sent_high
            ));
            return;
        }
        self.acknowledge(seq);
        self.unanswered_hellos = 0;
        let mut freed = false;
        while let Some((batch, _)) = self.session.in_flight.front() {
            if *batch.changes.end() > seq {
                break;
            }
            self.session.batcher.acknowledged(batch);
            self.session.in_flight.pop_front();
            freed = true;
        }
        if freed {
            // Catching up after an outage: send full batches as fast as
            // they are acknowledged, not one window per tick.
            self.pump(true);
        }
    }

    fn acknowledge(&mut self, seq: u64) {
        if seq == 0 {
            return;
        }
        match self.outbox.acknowledge(seq) {
            Ok(()) => {
                self.status.last_acked.fetch_max(seq, Ordering::Relaxed);
                // Acknowledged: whatever went wrong before is over.
                self.status.set_error(None);
            }
            Err(e) => tracing::warn!("cannot trim the outbox: {e}"),
        }
    }

    /// Fills the window. With `full_only`, only batches that hit a cap go
    /// (the tick sends the rest).
    fn pump(&mut self, full_only: bool) {
        if !self.session.resumed || !self.status.connected.load(Ordering::Relaxed) {
            return;
        }
        while self.session.in_flight.len() < self.config.window.max(1) {
            if full_only {
                let waiting = self
                    .outbox
                    .last()
                    .unwrap_or(0)
                    .saturating_add(1)
                    .saturating_sub(self.session.from);
                if waiting < self.config.max_points as u64 {
                    return;
                }
            }
            let batch = match self.session.batcher.next(&*self.outbox, self.session.from) {
                Ok(Some(batch)) => batch,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("cannot read the outbox: {e}");
                    self.status.error(format!("outbox: {e}"));
                    return;
                }
            };
            let topic = topics::up(&self.config.gateway, Up::Batch);
            if !self.publish(topic, batch.bytes.clone(), false) {
                return;
            }
            self.sent_high = self.sent_high.max(*batch.changes.end());
            self.session.from = batch.changes.end().saturating_add(1);
            self.status.batches.fetch_add(1, Ordering::Relaxed);
            self.status
                .bytes
                .fetch_add(batch.bytes.len() as u64, Ordering::Relaxed);
            self.status.points.fetch_add(
                batch.changes.end() - batch.changes.start() + 1,
                Ordering::Relaxed,
            );
            self.session.in_flight.push_back((batch, Instant::now()));
        }
    }

    /// Says Hello again when the cloud has not answered for `ack_timeout`,
    /// subscribing again first; [`Link::Deaf`] when that has not helped
    /// [`DEAF_HELLOS`] times in a row.
    fn check_timeouts(&mut self) -> Link {
        if !self.status.connected.load(Ordering::Relaxed) {
            return Link::Fine;
        }
        let timeout = self.config.ack_timeout;
        let waiting_since = if self.session.resumed {
            self.session.in_flight.front().map(|(_, at)| *at)
        } else {
            Some(self.session.hello_at)
        };
        if waiting_since.is_none_or(|at| at.elapsed() < timeout) {
            return Link::Fine;
        }
        if self.cloud_online {
            self.unanswered_hellos += 1;
        }
        if self.unanswered_hellos >= DEAF_HELLOS {
            tracing::warn!(
                "the cloud is online but has not answered {DEAF_HELLOS} Hellos in a row; connecting to {} again",
                self.config.link.broker
            );
            self.status.error(format!(
                "no answer through {} although the cloud is online; connecting again",
                self.config.link.broker
            ));
            self.unanswered_hellos = 0;
            return Link::Deaf;
        }
        tracing::info!(
            "the cloud has not answered for {}; subscribing and saying Hello again",
            humanize(timeout)
        );
        // The broker may have lost the subscriptions without a word (a
        // second SUBSCRIBE of the same filter replaces the first). The
        // cloud's retained status comes again with it, and an "online" there
        // starts one more epoch: harmless, the Resume of this one is ignored.
        self.subscribe();
        self.hello();
        Link::Fine
    }

    /// Sends the next journal events when none await their EventAck (or
    /// the last batch went unanswered for `ack_timeout`).
    fn pump_events(&mut self) {
        if !self.session.resumed || !self.status.connected.load(Ordering::Relaxed) {
            return;
        }
        if self
            .events_in_flight
            .is_some_and(|(_, at)| at.elapsed() < self.config.ack_timeout)
        {
            return;
        }
        let acked = self.status.events_acked.load(Ordering::Relaxed);
        let events = match self.outbox.events_after(acked, EVENTS_PER_BATCH) {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!("cannot read the events journal: {e}");
                return;
            }
        };
        let Some(last) = events.iter().map(|e| e.seq).max() else {
            self.events_in_flight = None;
            return;
        };
        let count = events.len() as u64;
        let batch = EventBatch {
            gateway_id: self.config.gateway.clone(),
            events,
        };
        let topic = topics::up(&self.config.gateway, Up::Events);
        if self.publish(topic, batch.encode_to_vec(), false) {
            self.events_in_flight = Some((last, Instant::now()));
            self.events_sent_high = self.events_sent_high.max(last);
            self.status.events_sent.fetch_add(count, Ordering::Relaxed);
        }
    }

    fn on_events_ack(&mut self, seq: u64) {
        if seq > self.events_sent_high {
            self.status.refuse(format!(
                "an EventAck of event {seq}, past the last event sent ({})",
                self.events_sent_high
            ));
            return;
        }
        if let Err(e) = self.outbox.acknowledge_events(seq) {
            tracing::warn!("cannot record the events acknowledged: {e}");
            return;
        }
        self.status.events_acked.fetch_max(seq, Ordering::Relaxed);
        if self.events_in_flight.is_some_and(|(last, _)| last <= seq) {
            self.events_in_flight = None;
            self.pump_events();
        }
    }

    /// Queues a QoS 1 publish; false if the client's queue is full (the
    /// next tick tries again).
    fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) -> bool {
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => true,
            Err(ClientError::TryRequest(_)) => false,
            Err(e) => {
                tracing::warn!("the uplink cannot publish: {e}");
                false
            }
        }
    }
}

fn humanize(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The twin task: applies patches in version order, each once.
async fn apply_patches(
    mut patches: mpsc::Receiver<DesiredPatch>,
    to_connection: mpsc::Sender<FromTwin>,
    handler: Arc<dyn DesiredHandler>,
    outbox: Arc<dyn OutboxAccess>,
    status: Arc<UplinkStatus>,
) {
    while let Some(patch) = patches.recv().await {
        let applied = status.desired_version.load(Ordering::Relaxed);
        if patch.version <= applied {
            continue;
        }
        if patch.version > applied.saturating_add(1) {
            let _ = to_connection.send(FromTwin::Gap).await;
            continue;
        }
        let report = handler.apply(&patch).await;
        let recorded = {
            let outbox = outbox.clone();
            let version = patch.version;
            tokio::task::spawn_blocking(move || outbox.set_desired_version(version)).await
        };
        match recorded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                "desired version {} is applied but not recorded ({e}); it will apply again",
                patch.version
            ),
            Err(e) => tracing::warn!("recording the desired version failed: {e}"),
        }
        status
            .desired_version
            .store(patch.version, Ordering::Relaxed);
        if to_connection.send(FromTwin::Report(report)).await.is_err() {
            return;
        }
    }
}

/// The bundle task: hands the newest bundle to `handler`, records its
/// version durably, and reports. A bundle seen again (the cloud resends
/// after a Hello, as its report may have been lost) is reported again, not
/// applied again.
async fn apply_bundles(
    mut bundles: tokio::sync::watch::Receiver<Option<ConfigBundle>>,
    to_connection: mpsc::Sender<FromTwin>,
    handler: Option<Arc<dyn ConfigHandler>>,
    outbox: Arc<dyn OutboxAccess>,
    status: Arc<UplinkStatus>,
) {
    let mut last: Option<ConfigReport> = None;
    while bundles.changed().await.is_ok() {
        let Some(bundle) = bundles.borrow_and_update().clone() else {
            continue;
        };
        let handled = status.config_version.load(Ordering::Relaxed);
        if bundle.version < handled {
            continue;
        }
        if bundle.version == handled {
            let again = last.clone().filter(|r| r.version == bundle.version);
            if let Some(report) = again
                && to_connection.send(FromTwin::Config(report)).await.is_err()
            {
                return;
            }
            continue;
        }
        let report = match &handler {
            Some(handler) => handler.apply(&bundle).await,
            None => ConfigReport {
                version: bundle.version,
                applied: false,
                errors: vec!["this gateway takes no configuration from the cloud".into()],
                ..ConfigReport::default()
            },
        };
        let recorded = {
            let outbox = outbox.clone();
            let version = bundle.version;
            tokio::task::spawn_blocking(move || outbox.set_config_version(version)).await
        };
        match recorded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                "config bundle v{} is handled but not recorded ({e}); it will come again",
                bundle.version
            ),
            Err(e) => tracing::warn!("recording the config bundle version failed: {e}"),
        }
        status
            .config_version
            .store(bundle.version, Ordering::Relaxed);
        last = Some(report.clone());
        if to_connection.send(FromTwin::Config(report)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::Change;
    use crate::outbox::Outbox;
    use ferrite_models::Value;

    fn connection(outbox: Arc<dyn OutboxAccess>) -> Connection {
        let config = UplinkConfig::new("gw", "mqtt://127.0.0.1:1");
        let options = config.link.mqtt_options().expect("options");
        // Never polled: nothing goes out.
        let (client, _eventloop) = AsyncClient::new(options, 64);
        let (patches, _) = mpsc::channel(1);
        let (bundles, _) = tokio::sync::watch::channel(None);
        Connection {
            session: Session::new(&config),
            config,
            client,
            outbox,
            status: Arc::default(),
            patches,
            bundles,
            sent_high: 0,
            events_in_flight: None,
            events_sent_high: 0,
            resubscribe_at: None,
            unanswered_hellos: 0,
            cloud_online: true,
        }
    }

    #[test]
    fn a_forged_ack_or_resume_past_what_was_sent_trims_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("sled");
        let outbox = Arc::new(Outbox::open(&db, u64::MAX).expect("outbox"));
        let changes: Vec<Change> = (0..10)
            .map(|n| Change {
                device: "d".into(),
                property: "p".into(),
                ts_ms: n,
                value: Value::Int(n),
            })
            .collect();
        outbox.append(&changes).expect("append");
        let mut link = connection(outbox.clone());
        let ack = |seq| Ack { seq }.encode_to_vec();
        let resume = |epoch, last_applied_seq| {
            Resume {
                epoch,
                last_applied_seq,
            }
            .encode_to_vec()
        };
        let (ack_topic, resume_topic) = (
            topics::down("gw", Down::Ack),
            topics::down("gw", Down::Resume),
        );

        // Nothing was sent yet: an Ack of anything trims nothing, nor does
        // an EventAck move the events' cursor.
        link.on_publish(&ack_topic, &ack(5));
        link.on_publish(&ack_topic, &ack(u64::MAX));
        let events_ack = EventAck { seq: 7 }.encode_to_vec();
        link.on_publish(&topics::down("gw", Down::EventsAck), &events_ack);
        assert_eq!(link.status.snapshot().events_acked, 0);
        // A Resume past the outbox's end, or at the end of the numbers.
        let epoch = link.session.epoch;
        link.on_publish(&resume_topic, &resume(epoch, 11));
        link.on_publish(&resume_topic, &resume(epoch, u64::MAX));
        assert_eq!(outbox.acknowledged().expect("acked"), 0);
        assert_eq!(outbox.read(1, 100).expect("read").len(), 10);
        let status = link.status.snapshot();
        assert_eq!(status.refused, 5);
        assert!(status.last_refused.expect("why").contains("past"));
        assert!(!link.session.resumed);

        // A true Resume is taken: the cloud has the first three.
        link.on_publish(&resume_topic, &resume(epoch, 3));
        assert!(link.session.resumed);
        assert_eq!(link.session.from, 4);
        assert_eq!(outbox.acknowledged().expect("acked"), 3);
        assert_eq!(outbox.read(1, 100).expect("read").len(), 7);
        // Still nothing sent by this process past 3: an Ack of 9 is refused.
        link.on_publish(&ack_topic, &ack(9));
        assert_eq!(outbox.read(1, 100).expect("read").len(), 7);
        assert_eq!(link.status.snapshot().refused, 6);
    }
}
