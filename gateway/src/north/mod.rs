//! The northbound: every device of the gateway on an external MQTT broker
//! (`[north]`), as a Sparkplug B edge node ([`sparkplug`]) or as JSON topics
//! of a Unified Namespace ([`uns`]).
//!
//! Store and forward, on the store's log: the northbound is a second
//! [`Reader`] of it beside the cloud's uplink, with a cursor of its own that
//! survives restarts. A change leaves the backlog only once delivered (QoS 0:
//! written to the connection; QoS 1: acknowledged by the broker), in order;
//! while the broker, or with `primary_host` the Sparkplug host, is away,
//! changes wait, up to `backlog_mib`, and go out marked historical when it
//! is back. Over the budget the oldest go, counted in an event.
//!
//! One task owns the connection. Each MQTT session gets a new client whose
//! will is the session's NDEATH (Sparkplug, with a `bdSeq` that rises across
//! restarts) or an offline status (UNS). Writes from the broker (DCMD, UNS
//! `/set`) go through [`Control::write`], the checked path of REST writes,
//! in a task of their own so that a slow device never stalls publishing.

pub mod sparkplug;
pub mod uns;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferrite_models::Project;
use ferrite_models::config::{NorthFormat, NorthSection};
use ferrite_sync::link::LinkOptions;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Outgoing, Packet, QoS};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::control::{Actor, Control};
use crate::journal::Journal;
use crate::live::Live;
use crate::running::Running;
use crate::store::{Reader, SledStore};
use sparkplug::{BirthMetric, Command, DeviceBirth, EdgeNode};
use uns::Uns;

/// Messages published but not yet delivered, at most. Below rumqttc's
/// in-flight limit (100), so QoS 1 publishes never wait for a packet id.
const WINDOW: usize = 64;

/// Changes read from the backlog per pass.
const READ_BATCH: usize = 5_000;

/// How the northbound runs, from `[north]`.
#[derive(Debug, Clone)]
pub struct NorthConfig {
    /// The broker and how to log in (the will is set per session).
    pub link: LinkOptions,
    /// Sparkplug or UNS.
    pub format: NorthFormat,
    /// Sparkplug group and edge node ids.
    pub group: String,
    /// Sparkplug edge node id.
    pub node: String,
    /// Sparkplug primary host id.
    pub primary_host: Option<String>,
    /// UNS root.
    pub uns_root: String,
    /// The QoS of data messages.
    pub qos: QoS,
    /// The publishing cadence.
    pub interval: Duration,
    /// Whether writes from the broker are taken.
    pub writes: bool,
    /// Where the last `bdSeq` is kept.
    pub bd_seq_file: PathBuf,
}

impl NorthConfig {
    /// From the config file's `[north]` of gateway `gateway`.
    pub fn new(
        project: &Project,
        gateway: &str,
        data_dir: &std::path::Path,
        north: &NorthSection,
    ) -> NorthConfig {
        NorthConfig {
            link: LinkOptions {
                broker: north.broker.clone(),
                client_id: format!("ferrite-north-{gateway}"),
                login: north
                    .username
                    .clone()
                    .map(|u| (u, north.password_file.as_ref().map(|p| project.resolve(p)))),
                ca_file: north.ca_file.as_ref().map(|p| project.resolve(p)),
                client_auth: north
                    .client_certificate
                    .as_ref()
                    .zip(north.client_key.as_ref())
                    .map(|(c, k)| (project.resolve(c), project.resolve(k))),
                will: None,
            },
            format: north.format,
            group: north.group.clone(),
            node: north.node.clone().unwrap_or_else(|| gateway.to_string()),
            primary_host: north.primary_host.clone(),
            uns_root: north
                .uns_root
                .clone()
                .unwrap_or_else(|| format!("ferrite/{gateway}")),
            qos: if north.data_qos() == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            interval: north.interval.get(),
            writes: north.writes,
            bd_seq_file: data_dir.join("north-bdseq"),
        }
    }
}

/// What the northbound needs of the gateway.
pub struct NorthDeps {
    /// The store, whose log is the backlog.
    pub store: Arc<SledStore>,
    /// The running project: devices and models for births and units.
    pub running: Arc<Running>,
    /// Current values, for births.
    pub live: Arc<Live>,
    /// The checked write path.
    pub control: Arc<Control>,
    /// Events.
    pub journal: Arc<Journal>,
}

/// The northbound's counters, for `/metrics` and `GET /api/v1/north`.
pub struct NorthStatus {
    store: Arc<SledStore>,
    /// Connected to the broker now.
    pub connected: AtomicBool,
    /// With `primary_host`: the host says it is online.
    pub host_online: AtomicBool,
    /// MQTT sessions started.
    pub sessions: AtomicU64,
    /// Messages delivered (births and data).
    pub messages: AtomicU64,
    /// Changes delivered.
    pub points: AtomicU64,
    /// Writes from the broker applied.
    pub writes: AtomicU64,
    /// Writes or commands refused.
    pub refused: AtomicU64,
}

/// A snapshot of [`NorthStatus`] with the backlog, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NorthSnapshot {
    /// Connected to the broker now.
    pub connected: bool,
    /// Sparkplug with `primary_host`: whether the host says it is online.
    pub host_online: bool,
    /// MQTT sessions started.
    pub sessions: u64,
    /// Messages delivered.
    pub messages: u64,
    /// Changes delivered.
    pub points: u64,
    /// Writes from the broker applied.
    pub writes: u64,
    /// Writes or commands refused.
    pub refused: u64,
    /// Changes waiting for the broker.
    pub backlog: u64,
    /// Changes dropped over `backlog_mib`.
    pub dropped: u64,
}

impl NorthStatus {
    fn new(store: Arc<SledStore>) -> NorthStatus {
        NorthStatus {
            store,
            connected: AtomicBool::new(false),
            host_online: AtomicBool::new(false),
            sessions: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            points: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The counters, with the northbound backlog.
    pub fn snapshot(&self) -> NorthSnapshot {
        let backlog = self.store.backlog(Reader::North);
        NorthSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            host_online: self.host_online.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            points: self.points.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            backlog: backlog.as_ref().map_or(0, |b| b.backlog),
            dropped: backlog.map_or(0, |b| b.dropped),
        }
    }
}

/// Starts the northbound on `tasks`; it stops (publishing its death) when
/// `shutdown` is cancelled.
pub fn start(
    config: NorthConfig,
    deps: NorthDeps,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Arc<NorthStatus> {
    let status = Arc::new(NorthStatus::new(deps.store.clone()));
    let (writes, commands) = tokio::sync::mpsc::channel(256);
    let deps = Arc::new(deps);
    tasks.spawn(apply_writes(deps.clone(), status.clone(), commands));
    tasks.spawn(watch_drops(deps.clone(), shutdown.clone()));
    tasks.spawn(run(config, deps, status.clone(), writes, shutdown));
    status
}

/// A write from the broker: device, then (property, JSON value) pairs, and
/// the metrics already refused when the command was read.
struct WriteRequest {
    via: &'static str,
    device: String,
    writes: Vec<(String, serde_json::Value)>,
    refused: Vec<(String, String)>,
}

/// How a session ended.
enum Ended {
    Stop,
    Lost(String),
}

/// The format's side of a session.
enum Format {
    Sparkplug(EdgeNode),
    Uns(Uns),
}

async fn run(
    config: NorthConfig,
    deps: Arc<NorthDeps>,
    status: Arc<NorthStatus>,
    writes: tokio::sync::mpsc::Sender<WriteRequest>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let bd_seq = next_bd_seq(&config.bd_seq_file);
        let mut format = match config.format {
            NorthFormat::Sparkplug => {
                Format::Sparkplug(EdgeNode::new(&config.group, &config.node, bd_seq))
            }
            NorthFormat::Uns => Format::Uns(Uns::new(&config.uns_root)),
        };
        let options = match config.link.mqtt_options() {
            Ok(mut options) => {
                let will = match &format {
                    Format::Sparkplug(node) => {
                        let death = node.death();
                        LastWill::new(death.topic, death.payload, QoS::AtLeastOnce, false)
                    }
                    Format::Uns(uns) => LastWill::new(
                        uns.status_topic(),
                        uns.status(false),
                        QoS::AtLeastOnce,
                        true,
                    ),
                };
                options.set_last_will(will);
                options.set_client_id(format!("{}-{bd_seq}", config.link.client_id));
                options
            }
            Err(e) => {
                tracing::error!("[north]: {e}; the northbound does not start");
                return;
            }
        };
        let devices = deps.running.project().devices.len();
        let (client, mut events) = AsyncClient::new(options, (devices + 4 * WINDOW).max(1024));
        status.sessions.fetch_add(1, Ordering::Relaxed);
        let mut session = Session::new(&config, &deps, &status, &client, &writes);
        let ended = session
            .run(&mut format, &mut events, &shutdown, &mut backoff)
            .await;
        status.connected.store(false, Ordering::Relaxed);
        match ended {
            Ended::Stop => {
                goodbye(&format, &client, &mut events).await;
                return;
            }
            Ended::Lost(why) => {
                tracing::warn!("[north] broker {}: {why}", config.link.broker);
                let delay = backoff.next_delay();
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// On a clean stop: the death (or offline status) published before the
/// disconnect, as a host expects (the will covers the unclean case).
async fn goodbye(format: &Format, client: &AsyncClient, events: &mut EventLoop) {
    let (topic, payload, retain) = match format {
        Format::Sparkplug(node) => {
            let death = node.death();
            (death.topic, death.payload, false)
        }
        Format::Uns(uns) => (uns.status_topic(), uns.status(false), true),
    };
    if client
        .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        .is_err()
        || client.try_disconnect().is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(event) = events.poll().await {
            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

/// One MQTT session's state.
struct Session<'a> {
    config: &'a NorthConfig,
    deps: &'a NorthDeps,
    status: &'a NorthStatus,
    client: &'a AsyncClient,
    writes: &'a tokio::sync::mpsc::Sender<WriteRequest>,
    connected: bool,
    host_online: bool,
    births_due: bool,
    /// The project generation the births describe.
    generation: u64,
    /// The next backlog sequence to publish.
    next: u64,
    /// Changes up to it were stored before the births: historical.
    historical_through: u64,
    /// More may wait in the backlog: read on after each delivery, not only
    /// on the next tick.
    reading: bool,
    /// Messages made but not yet handed to the client (the window was
    /// full), with what each covers.
    queued: VecDeque<(sparkplug::Message, Option<(u64, u64)>)>,
    /// The last change whose read was handed to the client whole.
    handed: u64,
    deliveries: Deliveries,
}

impl<'a> Session<'a> {
    fn new(
        config: &'a NorthConfig,
        deps: &'a NorthDeps,
        status: &'a NorthStatus,
        client: &'a AsyncClient,
        writes: &'a tokio::sync::mpsc::Sender<WriteRequest>,
    ) -> Self {
        Session {
            config,
            deps,
            status,
            client,
            writes,
            connected: false,
            host_online: config.primary_host.is_none() || config.format == NorthFormat::Uns,
            births_due: false,
            generation: 0,
            next: 0,
            historical_through: 0,
            reading: false,
            queued: VecDeque::new(),
            handed: 0,
            deliveries: Deliveries::default(),
        }
    }

    async fn run(
        &mut self,
        format: &mut Format,
        events: &mut EventLoop,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Ended {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let publish = tokio::select! {
                () = shutdown.cancelled() => return Ended::Stop,
                _ = tick.tick() => true,
                event = events.poll() => match event {
                    Err(e) => return Ended::Lost(e.to_string()),
                    Ok(event) => {
                        if let Err(e) = self.on_event(format, event, backoff) {
                            return Ended::Lost(e);
                        }
                        false
                    }
                },
            };
            if let Err(e) = self.step(format, publish) {
                return Ended::Lost(e);
            }
        }
    }

    fn on_event(
        &mut self,
        format: &mut Format,
        event: Event,
        backoff: &mut Backoff,
    ) -> Result<(), String> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                backoff.reset();
                self.connected = true;
                self.status.connected.store(true, Ordering::Relaxed);
                let acked = self
                    .deps
                    .store
                    .acknowledged_by(Reader::North)
                    .map_err(|e| e.to_string())?;
                self.next = acked + 1;
                self.handed = acked;
                self.queued.clear();
                let mut topics = match format {
                    Format::Sparkplug(node) => node.command_topics().to_vec(),
                    Format::Uns(uns) => vec![uns.command_topic()],
                };
                if let Some(host) = self
                    .config
                    .primary_host
                    .as_ref()
                    .filter(|_| matches!(format, Format::Sparkplug(_)))
                {
                    topics.push(format!("spBv1.0/STATE/{host}"));
                }
                if !self.config.writes {
                    topics.retain(|t| t.starts_with("spBv1.0/STATE/") || t.contains("/NCMD/"));
                }
                for topic in topics {
                    self.client
                        .try_subscribe(topic, QoS::AtLeastOnce)
                        .map_err(|e| e.to_string())?;
                }
                self.births_due = true;
                if let Format::Uns(uns) = format {
                    self.publish(
                        uns.status_topic(),
                        uns.status(true),
                        true,
                        QoS::AtLeastOnce,
                        None,
                    )?;
                }
            }
            Event::Incoming(Packet::Publish(p)) => self.on_message(format, &p.topic, &p.payload),
            Event::Incoming(Packet::PubAck(ack)) => self.deliveries.acked(ack.pkid),
            Event::Outgoing(Outgoing::Publish(pkid)) => self.deliveries.sent(pkid),
            _ => {}
        }
        Ok(())
    }

    fn on_message(&mut self, format: &mut Format, topic: &str, payload: &[u8]) {
        if let Some(host) = topic.strip_prefix("spBv1.0/STATE/") {
            if Some(host) == self.config.primary_host.as_deref() {
                let online = host_online(payload);
                if online && !self.host_online {
                    self.births_due = true;
                }
                self.host_online = online;
                self.status.host_online.store(online, Ordering::Relaxed);
            }
            return;
        }
        let request = match format {
            Format::Sparkplug(node) => match node.command(topic, payload) {
                Ok(Some(Command::Rebirth)) => {
                    self.births_due = true;
                    return;
                }
                Ok(Some(Command::Write {
                    device,
                    writes,
                    refused,
                })) => WriteRequest {
                    via: "sparkplug DCMD",
                    device,
                    writes: writes.into_iter().map(|(p, v)| (p, json!(v))).collect(),
                    refused,
                },
                Ok(None) => return,
                Err(e) => WriteRequest {
                    via: "sparkplug DCMD",
                    device: String::new(),
                    writes: Vec::new(),
                    refused: vec![(topic.to_string(), e)],
                },
            },
            Format::Uns(uns) => match uns.command(topic, payload) {
                Ok((device, property, value)) => WriteRequest {
                    via: "uns",
                    device,
                    writes: vec![(property, value)],
                    refused: Vec::new(),
                },
                Err(e) => WriteRequest {
                    via: "uns",
                    device: String::new(),
                    writes: Vec::new(),
                    refused: vec![(topic.to_string(), e)],
                },
            },
        };
        if self.config.writes && self.writes.try_send(request).is_err() {
            self.status.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("[north] writes are backed up: a command from the broker was dropped");
        }
    }

    /// After each event or tick: births when due, new changes on a tick,
    /// and the backlog trimmed past what was delivered.
    fn step(&mut self, format: &mut Format, tick: bool) -> Result<(), String> {
        if !self.connected {
            return Ok(());
        }
        let generation = self.deps.running.generation();
        if generation != self.generation {
            self.births_due = true;
        }
        if self.births_due && self.host_online && self.deliveries.len() < WINDOW {
            self.births_due = false;
            self.generation = generation;
            // Messages made before the births carry the old seq and
            // aliases: made again after them, from the first change not
            // handed out (a read half handed out comes again in part).
            self.queued.clear();
            self.next = self.handed + 1;
            // Everything stored so far is older than what the births show.
            self.historical_through = self.deps.store.last_seq();
            let project = self.deps.running.project();
            match format {
                Format::Sparkplug(node) => {
                    for m in node.births(&births(&project, &self.deps.live)) {
                        self.publish(m.topic, m.payload, false, QoS::AtMostOnce, None)?;
                    }
                }
                Format::Uns(uns) => uns.set_units(units(&project)),
            }
        }
        if tick {
            self.reading = true;
        }
        while self.host_online && !self.births_due && self.deliveries.len() < WINDOW {
            // Messages made from the last read go out first, in order (their
            // Sparkplug seq is already given).
            if let Some((m, covers)) = self.queued.pop_front() {
                let retain = matches!(format, Format::Uns(_));
                self.publish(m.topic, m.payload, retain, self.config.qos, covers)?;
                if let Some((through, _)) = covers {
                    self.handed = through;
                }
                continue;
            }
            if !self.reading {
                break;
            }
            let owed = self
                .deps
                .store
                .owed(Reader::North, self.next, READ_BATCH)
                .map_err(|e| e.to_string())?;
            if owed.len() < READ_BATCH {
                // All there is: the next tick reads again.
                self.reading = false;
            }
            let Some(&(through, _)) = owed.last() else {
                break;
            };
            let messages = match format {
                Format::Sparkplug(node) => node.data(&owed, self.historical_through),
                Format::Uns(uns) => uns.data(&owed, self.historical_through),
            };
            let last = messages.len();
            if last == 0 {
                self.deliveries.covered(through);
            }
            // The last message of a read covers all of it: the backlog
            // moves once every message before it is delivered too.
            let covers = (through, owed.len() as u64);
            self.queued.extend(
                messages
                    .into_iter()
                    .enumerate()
                    .map(|(i, m)| (m, (i + 1 == last).then_some(covers))),
            );
            self.next = through + 1;
        }
        if let Some((through, points, messages)) = self.deliveries.take_delivered() {
            self.status.messages.fetch_add(messages, Ordering::Relaxed);
            self.status.points.fetch_add(points, Ordering::Relaxed);
            if let Some(through) = through {
                self.deps
                    .store
                    .acknowledge_for(Reader::North, through)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        qos: QoS,
        covers: Option<(u64, u64)>,
    ) -> Result<(), String> {
        self.client
            .try_publish(topic, qos, retain, payload)
            .map_err(|e| format!("the MQTT client refused a publish: {e}"))?;
        self.deliveries.push(qos, covers);
        Ok(())
    }
}

/// Publishes in order, and which of them are delivered: QoS 0 once
/// written, QoS 1 once acknowledged. The backlog moves only past a prefix
/// that is all delivered.
#[derive(Debug, Default)]
struct Deliveries {
    queue: VecDeque<Delivery>,
    /// A covered sequence with nothing to publish, waiting for the ones
    /// before it.
    trailing: Option<u64>,
}

#[derive(Debug)]
struct Delivery {
    qos: QoS,
    /// The last sequence it carries, and how many changes.
    covers: Option<(u64, u64)>,
    /// Its packet id, once written (QoS 1).
    pkid: Option<u16>,
    done: bool,
}

impl Deliveries {
    fn len(&self) -> usize {
        self.queue.len()
    }

    fn push(&mut self, qos: QoS, covers: Option<(u64, u64)>) {
        self.queue.push_back(Delivery {
            qos,
            covers,
            pkid: None,
            done: false,
        });
    }

    /// Changes up to `through` need nothing published.
    fn covered(&mut self, through: u64) {
        match self.queue.back_mut() {
            Some(last) => {
                // Delivered with the message before them.
                let points = last.covers.map_or(0, |c| c.1);
                last.covers = Some((through, points));
            }
            None => self.trailing = Some(through),
        }
    }

    /// The next publish in order was written, with packet id `pkid`.
    fn sent(&mut self, pkid: u16) {
        if let Some(d) = self.queue.iter_mut().find(|d| d.pkid.is_none() && !d.done) {
            if d.qos == QoS::AtMostOnce {
                d.done = true;
            } else {
                d.pkid = Some(pkid);
            }
        }
    }

    fn acked(&mut self, pkid: u16) {
        if let Some(d) = self
            .queue
            .iter_mut()
            .find(|d| d.pkid == Some(pkid) && !d.done)
        {
            d.done = true;
        }
    }

    /// Takes the delivered prefix: the last sequence it covers, the
    /// changes and the messages in it.
    fn take_delivered(&mut self) -> Option<(Option<u64>, u64, u64)> {
        let mut through = self.trailing.take();
        let (mut points, mut messages) = (0, 0);
        while self.queue.front().is_some_and(|d| d.done) {
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            messages += 1;
            if let Some((seq, n)) = d.covers {
                through = Some(seq);
                points += n;
            }
        }
        (through.is_some() || messages > 0).then_some((through, points, messages))
    }
}

/// Applies writes from the broker through the checked path, one at a time,
/// and journals what was refused.
async fn apply_writes(
    deps: Arc<NorthDeps>,
    status: Arc<NorthStatus>,
    mut requests: tokio::sync::mpsc::Receiver<WriteRequest>,
) {
    while let Some(request) = requests.recv().await {
        let actor = Actor::North(request.via.to_string());
        let mut refused = request.refused;
        for (property, value) in &request.writes {
            match deps
                .control
                .write(&actor, &request.device, property, value)
                .await
            {
                Ok(_) => {
                    status.writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => refused.push((
                    format!("{}.{property}", request.device),
                    format!("{}: {e}", e.code()),
                )),
            }
        }
        for (what, why) in refused {
            status.refused.fetch_add(1, Ordering::Relaxed);
            let message = format!("[north] {} refused for {what}: {why}", request.via);
            let device = json!({"device": request.device});
            deps.journal
                .warn("north", "north_write_refused", &message, device)
                .await;
        }
    }
}

/// Raises an event whenever the northbound backlog dropped changes over
/// its budget.
async fn watch_drops(deps: Arc<NorthDeps>, shutdown: CancellationToken) {
    let mut seen = deps.store.backlog(Reader::North).map_or(0, |b| b.dropped);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(state) = deps.store.backlog(Reader::North) else {
            continue;
        };
        if state.dropped > seen {
            let dropped = state.dropped - seen;
            seen = state.dropped;
            let message = format!(
                "the northbound backlog is full: dropped the {dropped} oldest change(s) not yet published ({} since start); raise [north] backlog_mib or restore the broker",
                state.dropped
            );
            deps.journal
                .warn(
                    "north",
                    "north_backlog_dropped",
                    &message,
                    json!({"dropped": dropped}),
                )
                .await;
        }
    }
}

/// Sparkplug 3.0's STATE is JSON `{"online": bool, ...}`; 2.2's was the
/// text `ONLINE` or `OFFLINE`.
fn host_online(payload: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v) => v
            .get("online")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        Err(_) => payload == b"ONLINE",
    }
}

/// Each device's properties as the births describe them, with the current
/// values.
fn births(project: &Project, live: &Live) -> Vec<DeviceBirth> {
    project
        .devices
        .iter()
        .filter_map(|(id, device)| {
            let model = &project.models.get(&device.value.model)?.value;
            let state = live.device(id);
            let metrics = model
                .properties
                .iter()
                .map(|(name, p)| BirthMetric {
                    name: name.clone(),
                    ty: p.ty,
                    value: state.as_ref().and_then(|s| {
                        let r = s.readings.get(name.as_str())?;
                        Some((r.value()?, r.ts().map_or(0, |t| t.div_euclid(1000))))
                    }),
                    unit: p.unit.clone(),
                    min: p.min,
                    max: p.max,
                    writable: p.writable(),
                    description: p.description.clone(),
                })
                .collect();
            Some(DeviceBirth {
                id: id.clone(),
                metrics,
            })
        })
        .collect()
}

/// (device, property) → unit, for UNS values.
fn units(project: &Project) -> HashMap<(String, String), String> {
    let mut out = HashMap::new();
    for (id, device) in &project.devices {
        let Some(model) = project.models.get(&device.value.model) else {
            continue;
        };
        for (name, p) in &model.value.properties {
            if let Some(unit) = &p.unit {
                out.insert((id.clone(), name.clone()), unit.clone());
            }
        }
    }
    out
}

/// The next `bdSeq` (0–255, wrapping), kept in `file` so that it rises
/// across restarts: a host must never match a new birth to an old death.
fn next_bd_seq(file: &std::path::Path) -> u64 {
    let last = std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let next = last.map_or(0, |n| (n + 1) % 256);
    if let Err(e) = std::fs::write(file, next.to_string()) {
        tracing::warn!("[north] cannot keep bdSeq in {}: {e}", file.display());
    }
    next
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
