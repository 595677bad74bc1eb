//! One task per OPC UA device, owning its session from connect to loss.
//!
//! ```text
//! loop {
//!     open a session (endpoint, security, identity)     -- connect.rs
//!     read every node's DataType once
//!     subscribe (or poll), forward values to the store
//!     connection lost: values stale, device offline; the client reconnects
//!         and the subscriptions are taken back          -- resume.rs
//!     ... until the session cannot go on or the gateway stops
//!     mark every value stale, report why, wait a capped backoff
//! }
//! ```
//!
//! A subscription the server no longer has after a reconnect ends the
//! inner loop at once: the outer one subscribes afresh, reading every
//! current value, and raises an event that changes may be missing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_models::model::UaDataType;
use futures_util::StreamExt;
use opcua::client::transport::TcpConnector;
use opcua::client::{SessionActivity, SessionConnectMode, SessionEventLoop, SessionPollResult};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, DeadbandType, ExtensionObject,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, StatusCode,
    TimestampsToReturn, Variant,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::resume::{self, Notifications, Sequence, Subscription};
use super::{
    Connected, Device, Link, Point, connect, read_attribute, read_values, sample_of, status,
};
use ferrite_core::backoff::Backoff;
use ferrite_core::driver::{DeviceEvent, DriverContext, Severity};
use ferrite_core::reading::{Sample, Status, Update};
use ferrite_core::time::{Micros, now};
use ferrite_models::device::OpcuaTimestamps;

/// Most data changes waiting between the subscription's callback and the
/// session's loop (about 100 bytes each). The callback cannot wait (it runs
/// inside the client's event loop). Full-queue policy: the change is dropped
/// and counted (`ferrite_opcua_changes_overflowed_total`), and once the loop
/// has drained the queue it reads every node's current value, so no node is
/// left at an old value; only intermediate changes during the overload are
/// lost, and they are counted.
const DATA_QUEUE: usize = 65_536;

/// The subscription callback's end of the data queue.
#[derive(Clone)]
pub(super) struct DataSender {
    queue: mpsc::Sender<(u32, DataValue)>,
    overflowed: Arc<std::sync::atomic::AtomicBool>,
    stats: Arc<ferrite_core::driver::DriverStats>,
    /// Where events go, when the device takes them.
    pub(super) events: Option<Arc<super::events::EventSink>>,
}

impl DataSender {
    /// Queues a change, or drops it at a full queue and says so.
    pub(super) fn send(&self, handle: u32, value: DataValue) {
        use std::sync::atomic::Ordering;
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send((handle, value)) {
            self.overflowed.store(true, Ordering::Relaxed);
            self.stats
                .overflowed_changes
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Nodes per Read or CreateMonitoredItems request.
const CHUNK: usize = 1000;
/// The most notifications one Publish response may carry, well inside the
/// client's decoding limits.
const NOTIFICATIONS_PER_PUBLISH: u32 = 5000;
/// A session that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);

/// Why a session ended, and whether the server was reachable at all (a
/// refused login or certificate is an `error`, no answer is `offline`).
pub(super) struct Failure {
    status: Status,
    pub(super) why: String,
    /// The server no longer had the subscriptions after a reconnect:
    /// subscribe again at once, and say that changes may be missing.
    resubscribe: bool,
}

impl Failure {
    fn offline(why: impl Into<String>) -> Self {
        Failure {
            status: Status::Offline,
            why: why.into(),
            resubscribe: false,
        }
    }

    fn error(why: impl Into<String>) -> Self {
        Failure {
            status: Status::Error,
            why: why.into(),
            resubscribe: false,
        }
    }

    fn resubscribe(why: impl Into<String>) -> Self {
        Failure {
            status: Status::Offline,
            why: why.into(),
            resubscribe: true,
        }
    }

    /// What a status code from connecting means, in words an operator can
    /// act on.
    pub(super) fn from_code(code: StatusCode, device: &Device, pki: &std::path::Path) -> Self {
        let url = &device.settings.endpoint;
        match code {
            StatusCode::BadCertificateUntrusted
            | StatusCode::BadSecurityChecksFailed
            | StatusCode::BadCertificateInvalid
            | StatusCode::BadCertificateHostNameInvalid
            | StatusCode::BadCertificateUriInvalid
            | StatusCode::BadCertificateTimeInvalid => Failure::error(format!(
                "{code}: the certificates were not accepted. If {url}'s certificate is \
                 new to the gateway, it waits in {} until you move it to {} (or name it \
                 in server_certificate); the server may also need to trust the gateway's \
                 {}",
                pki.join("rejected").display(),
                pki.join("trusted").display(),
                pki.join("own").join("cert.der").display(),
            )),
            StatusCode::BadUserAccessDenied
            | StatusCode::BadIdentityTokenRejected
            | StatusCode::BadIdentityTokenInvalid => Failure::error(format!(
                "{code}: {url} refused the login{}",
                device
                    .settings
                    .username
                    .as_ref()
                    .map(|u| format!(" of user `{u}`"))
                    .unwrap_or_default()
            )),
            c if status::is_link_loss(c) || c == StatusCode::BadTimeout => {
                Failure::offline(format!("{code}: cannot reach {url}"))
            }
            c => Failure::error(format!("{c}: cannot open a session on {url}")),
        }
    }
}

/// What the session's event loop reports to the device task.
#[derive(Debug)]
pub(super) enum Event {
    /// Connected: the first time, and after every reconnect.
    Connected(SessionConnectMode),
    /// The connection is gone; the client is reconnecting.
    Lost(StatusCode),
    /// A reconnect attempt failed; the client tries again.
    Retrying(StatusCode),
    Alive,
    Failed(StatusCode),
    Ended,
}

/// The event kind for changes that may be missing after a reconnect.
pub(super) const DATA_MAY_BE_MISSING: &str = "opcua_data_may_be_missing";

/// Runs the device until the gateway stops.
pub(super) async fn run(
    device: Arc<Device>,
    client: Result<connect::Clients, String>,
    pki: PathBuf,
    link: Arc<watch::Sender<Link>>,
    ctx: DriverContext,
) {
    let client = match client {
        Ok(c) => c,
        Err(why) => {
            let why = format!("cannot set up the OPC UA client: {why}");
            tracing::error!(device = %device.name, "{why}");
            report(
                &device,
                &ctx,
                Status::Error,
                Some(why.clone()),
                Sample::Stale,
            )
            .await;
            link.send_modify(|l| *l = Err(why));
            return;
        }
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    loop {
        crate::crash_point(&device.name);
        let mut session = OpenSession {
            device: &device,
            client: &client,
            pki: &pki,
            link: &link,
            ctx: &ctx,
            pump: None,
            opened: false,
        };
        let failure = match session.serve(&mut backoff).await {
            Ok(()) => break,
            Err(f) => f,
        };
        session.close().await;
        if failure.resubscribe {
            ctx.raise(DeviceEvent {
                device: device.name.to_string(),
                source: "opcua",
                severity: Severity::Warning,
                kind: DATA_MAY_BE_MISSING,
                message: format!(
                    "{}: changes made on {} while the connection was down may be missing; \
                     subscribing again, which reads every current value",
                    failure.why, device.settings.endpoint
                ),
                details: Vec::new(),
            });
            continue;
        }
        tracing::warn!(device = %device.name, "{}", failure.why);
        link.send_modify(|l| *l = Err(failure.why.clone()));
        if !report(
            &device,
            &ctx,
            failure.status,
            Some(failure.why),
            Sample::Stale,
        )
        .await
        {
            break;
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    link.send_modify(|l| *l = Err("the gateway is shutting down".into()));
}

/// Sends a status change with every value set to `sample`. False once the
/// store writer is gone.
async fn report(
    device: &Device,
    ctx: &DriverContext,
    status: Status,
    why: Option<String>,
    sample: Sample,
) -> bool {
    let update = Update {
        device: device.index,
        ts: now(),
        status: Some((status, why)),
        seen: false,
        samples: device.all(&sample),
        stamps: Vec::new(),
        applied: None,
        audit: Vec::new(),
    };
    send(ctx, update).await
}

/// Sends an update to the store writer; false once it is gone or the
/// gateway stops.
async fn send(ctx: &DriverContext, update: Update) -> bool {
    tokio::select! {
        () = ctx.shutdown.cancelled() => false,
        sent = ctx.output.send(update) => sent.is_ok(),
    }
}

/// One session's life.
struct OpenSession<'a> {
    device: &'a Arc<Device>,
    client: &'a connect::Clients,
    pki: &'a std::path::Path,
    link: &'a watch::Sender<Link>,
    ctx: &'a DriverContext,
    /// The task polling the session's event loop, and the session.
    pump: Option<(JoinHandle<()>, Arc<opcua::client::Session>)>,
    /// Whether the session ever connected (there is something to close).
    opened: bool,
}

impl OpenSession<'_> {
    /// Connects and serves until the session is lost (`Err`) or the gateway
    /// stops (`Ok`).
    async fn serve(&mut self, backoff: &mut Backoff) -> Result<(), Failure> {
        let device = self.device;
        let shutdown = self.ctx.shutdown.clone();
        let setup = async {
            let (session, event_loop) =
                connect::open(device, self.client)
                    .await
                    .map_err(|e| match e {
                        connect::OpenError::Unreachable(why) => Failure::offline(why),
                        connect::OpenError::Unusable(why) => Failure::error(why),
                    })?;
            let (events_tx, mut events) = mpsc::channel(64);
            let pump = tokio::spawn(pump(event_loop, events_tx));
            self.pump = Some((pump, session.clone()));
            let deadline = (device.timeout * 5).max(Duration::from_secs(5));
            match tokio::time::timeout(deadline, wait_connected(&mut events)).await {
                Err(_) => Err(Failure::offline(format!(
                    "no session on {} within {deadline:?}",
                    device.settings.endpoint
                ))),
                Ok(Err(code)) => Err(Failure::from_code(code, device, self.pki)),
                Ok(Ok(())) => {
                    self.opened = true;
                    Ok((session, events))
                }
            }
        };
        let (session, mut events) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = setup => r?,
        };
        let (types, mut bad) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = read_types(device, &session) => r?,
        };
        let connected = Connected {
            session: session.clone(),
            types: Arc::new(types),
        };
        self.link.send_modify(|l| *l = Ok(connected.clone()));
        let (data_tx, mut data) = mpsc::channel(DATA_QUEUE);
        let overflowed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let data_tx = DataSender {
            queue: data_tx,
            overflowed: overflowed.clone(),
            stats: self.ctx.stats.clone(),
            events: device.settings.events.as_ref().map(|e| {
                Arc::new(super::events::EventSink {
                    device: device.name.clone(),
                    endpoint: device.settings.endpoint.clone(),
                    min_severity: e.min_severity.unwrap_or(1),
                    ctx: self.ctx.clone(),
                })
            }),
        };
        // Told when a notification is found missing.
        let gaps = Arc::new(tokio::sync::Notify::new());
        let (refused, subscriptions) = match device.settings.mode {
            ferrite_models::device::OpcuaMode::Subscribe => {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    r = subscribe(device, &connected, &bad, data_tx.clone(), &gaps) => r?,
                }
            }
            ferrite_models::device::OpcuaMode::Poll => (BTreeMap::new(), Vec::new()),
        };
        let mut subscriptions = subscriptions;
        if let Some(settings) = &device.settings.events {
            let made = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = subscribe_events(device, &session, settings, data_tx.clone(), &gaps) => r?,
            };
            match made {
                Ok(events) => subscriptions.push(events),
                Err(why) => self.ctx.raise(DeviceEvent {
                    device: device.name.to_string(),
                    source: "opcua",
                    severity: Severity::Warning,
                    kind: EVENTS_REFUSED,
                    message: why,
                    details: Vec::new(),
                }),
            }
        }
        bad.extend(refused);
        // Which run of the server the subscriptions belong to.
        let started = if subscriptions.is_empty() {
            None
        } else {
            resume::start_time(&session, device.timeout.max(Duration::from_secs(2))).await
        };
        tracing::info!(device = %device.name, "session open on {}", device.settings.endpoint);
        let since = Instant::now();
        let mut stable = false;
        let mut health = Health::default();
        send(self.ctx, health.update(device, &bad, Vec::new())).await;
        let mut tick = tokio::time::interval(device.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let polling = device.settings.mode == ferrite_models::device::OpcuaMode::Poll;
        // Since when, and why, the connection is down (the client is
        // reconnecting).
        let mut down: Option<(ferrite_core::time::Micros, String)> = None;
        // When to read every value again, for a server that would not send
        // them after a resume.
        let mut reread_at: Option<tokio::time::Instant> = None;
        // After a resume in the same session: until when, and from which
        // count of notifications received, to ask for what the server sent
        // to the dead connection (see `resume::catch_up`).
        let mut catching_up: Option<(tokio::time::Instant, u64)> = None;
        let mut catch_up_tick = tokio::time::interval(CATCH_UP_EVERY);
        let resumer = resume::Resumer {
            session: &session,
            data: &data_tx,
            device: &device.name,
            timeout: device.timeout.max(Duration::from_secs(2)),
        };
        let meter = self
            .ctx
            .meters
            .device(&device.name, ferrite_models::device::Protocol::Opcua.key());
        loop {
            if !stable && since.elapsed() >= STABLE {
                stable = true;
                backoff.reset();
            }
            let updates = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                event = events.recv() => match event {
                    Some(Event::Alive) if down.is_none() => vec![health.update(device, &bad, Vec::new())],
                    Some(Event::Alive | Event::Retrying(_)) => continue,
                    Some(Event::Lost(code)) => {
                        // A connection the client closed itself after
                        // failed keep-alives ends with Good.
                        let cause = if code.is_good() { "keep-alives failed".to_string() } else { code.to_string() };
                        let why = format!(
                            "{cause}: lost the connection to {}; reconnecting",
                            device.settings.endpoint
                        );
                        tracing::warn!(device = %device.name, "{why}");
                        self.link.send_modify(|l| *l = Err(why.clone()));
                        down = Some((now(), why.clone()));
                        health = Health::default();
                        if !report(device, self.ctx, Status::Offline, Some(why), Sample::Stale).await {
                            return Ok(());
                        }
                        continue;
                    }
                    Some(Event::Connected(mode)) => {
                        let Some((since, _)) = down.take() else { continue };
                        let same = matches!(mode, SessionConnectMode::ReactivatedSession(_));
                        let resumed = tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            r = resumer.resume(&subscriptions, same, started) => r,
                        };
                        let resumed = resumed.map_err(|resume::Lost(why)| Failure::resubscribe(format!(
                            "the connection to {} was lost at {} and {why}",
                            device.settings.endpoint,
                            ferrite_core::time::rfc3339(since),
                        )))?;
                        tracing::info!(
                            device = %device.name,
                            "reconnected to {} ({}); subscriptions taken back, {} notification(s) republished",
                            device.settings.endpoint,
                            if same { "same session" } else { "new session" },
                            resumed.republished,
                        );
                        if resumed.missing > 0 {
                            self.missing_event(resumed.missing, Some(since));
                        }
                        if same {
                            catching_up = Some((
                                tokio::time::Instant::now() + CATCH_UP_FOR,
                                resume::live_count(&subscriptions),
                            ));
                        }
                        if resumed.reread {
                            reread_at = Some(tokio::time::Instant::now() + REREAD_AFTER.max(device.sampling() * 4));
                        }
                        self.link.send_modify(|l| *l = Ok(connected.clone()));
                        vec![health.update(device, &bad, Vec::new())]
                    }
                    Some(Event::Failed(code)) => {
                        return Err(Failure::offline(format!(
                            "{code}: lost the session on {}",
                            device.settings.endpoint
                        )))
                    }
                    Some(Event::Ended) | None => {
                        return Err(Failure::offline(format!(
                            "lost the connection to {}",
                            device.settings.endpoint
                        )))
                    }
                },
                Some(first) = data.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < 8192 {
                        match data.try_recv() {
                            Ok(n) => batch.push(n),
                            Err(_) => break,
                        }
                    }
                    // One update per round of values, each stamped by
                    // `timestamps`; queued values of one node keep their
                    // order and each is stored.
                    let mut updates = Vec::new();
                    for round in stamped(batch, device.settings.timestamps, now()) {
                        let (samples, stamps) = to_samples(device, round, &mut bad);
                        let mut update = health.update(device, &bad, samples);
                        update.stamps = stamps;
                        updates.push(update);
                    }
                    // Changes were dropped at a full queue: read every
                    // node's value now, so that each ends at its latest.
                    if data.is_empty()
                        && overflowed.swap(false, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::warn!(device = %device.name, "data changes overflowed the session's queue; reading every node again");
                        let polled = poll_once(device, &session, &bad).await?;
                        updates.push(polled_update(device, &mut health, &bad, polled));
                    }
                    updates
                }
                _ = catch_up_tick.tick(), if catching_up.is_some() && down.is_none() => {
                    let Some((until, live)) = catching_up else { continue };
                    if resume::live_since(&subscriptions, live) || tokio::time::Instant::now() >= until {
                        catching_up = None;
                        continue;
                    }
                    let caught = tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        n = resumer.catch_up(&subscriptions) => n,
                    };
                    if caught > 0 {
                        tracing::debug!(device = %device.name, "{caught} notification(s) sent to the dead connection republished");
                    }
                    continue;
                }
                () = gaps.notified(), if down.is_none() => {
                    let repaired = tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        r = resumer.repair(&subscriptions) => r,
                    };
                    tracing::info!(device = %device.name, "notifications were missing: {} republished, {} lost", repaired.republished, repaired.missing);
                    if repaired.missing > 0 {
                        self.missing_event(repaired.missing, None);
                    }
                    continue;
                }
                () = sleep_until(reread_at), if reread_at.is_some() && down.is_none() => {
                    reread_at = None;
                    let polled = poll_once(device, &session, &bad).await?;
                    vec![polled_update(device, &mut health, &bad, polled)]
                }
                _ = tick.tick(), if polling && down.is_none() => {
                    let started = Instant::now();
                    let polled = poll_once(device, &session, &bad).await;
                    let ok = polled.as_ref().is_ok_and(|p| p.iter().all(|(_, r, _)| r.is_ok()));
                    meter.poll(started.elapsed(), ok);
                    vec![polled_update(device, &mut health, &bad, polled?)]
                }
            };
            for update in updates {
                if !send(self.ctx, update).await {
                    return Ok(());
                }
            }
        }
    }

    /// Raises the event that `lost` notifications never arrived and the
    /// server could no longer send them (during an outage from `since`).
    fn missing_event(&self, lost: u64, since: Option<ferrite_core::time::Micros>) {
        let when = since.map_or_else(String::new, |t| {
            format!(" during the outage from {}", ferrite_core::time::rfc3339(t))
        });
        self.ctx.raise(DeviceEvent {
            device: self.device.name.to_string(),
            source: "opcua",
            severity: Severity::Warning,
            kind: DATA_MAY_BE_MISSING,
            message: format!(
                "{lost} notification(s) from {}{when} never arrived and the server could not send them again: the changes they carried are missing",
                self.device.settings.endpoint,
            ),
            details: Vec::new(),
        });
    }

    /// Closes the session (briefly: the server may be gone) and stops its
    /// event loop.
    async fn close(&mut self) {
        if let Some((pump, session)) = self.pump.take() {
            // A session that never connected has nothing to close: stop the
            // client's retries at once.
            if self.opened {
                let _ =
                    tokio::time::timeout(Duration::from_millis(500), session.disconnect()).await;
            }
            pump.abort();
        }
    }
}

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        if let Some((pump, _)) = self.pump.take() {
            pump.abort();
        }
    }
}

/// Tracks the device's status, so that it is sent only when it changes.
#[derive(Default)]
struct Health {
    last: Option<(Status, Option<String>)>,
}

impl Health {
    /// An update carrying `samples` from a live session, and the status if
    /// it changed: online, or error naming the properties that are bad.
    fn update(
        &mut self,
        device: &Device,
        bad: &BTreeMap<u16, String>,
        samples: Vec<(u16, Sample)>,
    ) -> Update {
        let status = if bad.is_empty() {
            (Status::Online, None)
        } else {
            let list: Vec<&str> = bad.values().map(String::as_str).collect();
            (Status::Error, Some(list.join("; ")))
        };
        let changed = self.last.as_ref() != Some(&status);
        if changed {
            self.last = Some(status.clone());
        }
        let mut samples = samples;
        if changed {
            samples.extend(bad.keys().map(|i| (*i, Sample::Bad)));
        }
        Update {
            device: device.index,
            ts: now(),
            status: changed.then_some(status),
            seen: true,
            samples,
            stamps: Vec::new(),
            applied: None,
            audit: Vec::new(),
        }
    }
}

/// A server that would not send its values again after a resume is read
/// this long after it (at least four publishing intervals): by then the
/// changes it queued during the outage have arrived, and the read is newer.
const REREAD_AFTER: Duration = Duration::from_secs(1);

/// How often, and for how long at most after a resume in the same session,
/// the session asks for notifications the server sent to the dead
/// connection: until one arrives on the new one, after which any left are
/// a gap in the numbers, repaired as usual. (The library's Publish requests
/// wait 60 s at most, so none of the dead ones is answered later.)
const CATCH_UP_EVERY: Duration = Duration::from_millis(500);
const CATCH_UP_FOR: Duration = Duration::from_secs(60);

/// How long after a lost connection the client first tries again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Sleeps until `at` (forever when there is none).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Polls the event loop, forwarding what the device task needs to know.
pub(super) async fn pump(event_loop: SessionEventLoop<TcpConnector>, events: mpsc::Sender<Event>) {
    let stream = event_loop.enter();
    tokio::pin!(stream);
    loop {
        let event = match stream.next().await {
            Some(Ok(SessionPollResult::Reconnected(mode))) => Event::Connected(mode),
            Some(Ok(SessionPollResult::ConnectionLost(code))) => Event::Lost(code),
            Some(Ok(SessionPollResult::ReconnectFailed(code))) => Event::Retrying(code),
            Some(Ok(SessionPollResult::SessionActivity(SessionActivity::KeepAliveSucceeded))) => {
                let _ = events.try_send(Event::Alive);
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(code)) => Event::Failed(code),
            None => Event::Ended,
        };
        let last = matches!(event, Event::Failed(_) | Event::Ended);
        let lost = matches!(event, Event::Lost(_));
        if events.send(event).await.is_err() || last {
            return;
        }
        // The client's first reconnect would go out at once, into a server
        // that is often still shutting down (asyncua's stop then waits for
        // that connection forever): a pause first.
        if lost {
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }
}

pub(super) async fn wait_connected(events: &mut mpsc::Receiver<Event>) -> Result<(), StatusCode> {
    loop {
        match events.recv().await {
            Some(Event::Connected(_)) => return Ok(()),
            Some(Event::Alive | Event::Lost(_)) => {}
            Some(Event::Failed(code) | Event::Retrying(code)) => return Err(code),
            Some(Event::Ended) | None => return Err(StatusCode::BadConnectionClosed),
        }
    }
}

/// Reads every node's DataType. Returns them by point, and the points that
/// cannot be served (unknown node, a type that does not fit) with why.
async fn read_types(
    device: &Device,
    session: &opcua::client::Session,
) -> Result<(Vec<Option<UaDataType>>, BTreeMap<u16, String>), Failure> {
    let mut types = vec![None; device.points.len()];
    let mut bad = BTreeMap::new();
    let valid: Vec<(usize, &Point, &opcua::types::NodeId)> = device
        .points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match &p.node {
            Ok(id) => Some((i, p, id)),
            Err(why) => {
                bad.insert(p.index, format!("{}: {why}", p.name));
                None
            }
        })
        .collect();
    let ids: Vec<&opcua::types::NodeId> = valid.iter().map(|(_, _, id)| *id).collect();
    let values = read_all(device, session, &ids, AttributeId::DataType)
        .await
        .map_err(|e| Failure::offline(format!("reading the nodes' DataTypes: {e}")))?;
    for ((i, point, id), dv) in valid.iter().zip(values) {
        if dv.status().is_bad() {
            bad.insert(
                point.index,
                format!("{}: {} ({id})", point.name, dv.status()),
            );
            continue;
        }
        let declared = match &dv.value {
            Some(Variant::NodeId(t)) => UaDataType::from_node_id(t),
            _ => None,
        };
        match (declared, point.expected) {
            (Some(found), Some(want)) if found != want => {
                bad.insert(
                    point.index,
                    format!("{}: {id} is {found}, the model says {want}", point.name),
                );
            }
            (Some(found), _) if !found.fits(point.ty) => {
                bad.insert(
                    point.index,
                    format!(
                        "{}: a {} property cannot live in {id}, a {found}",
                        point.name, point.ty
                    ),
                );
            }
            _ => types[*i] = declared,
        }
    }
    Ok((types, bad))
}

/// Reads `attribute` of every node in `ids`, in Reads of [`CHUNK`] nodes;
/// the values come back in the order of `ids`.
async fn read_all(
    device: &Device,
    session: &opcua::client::Session,
    ids: &[&opcua::types::NodeId],
    attribute: AttributeId,
) -> Result<Vec<DataValue>, ferrite_core::driver::DriverError> {
    read_chunked(device.timeout, session, &read_attribute(ids, attribute)).await
}

/// Reads `reads` in Reads of [`CHUNK`] each, every Read within `timeout`;
/// the values come back in the order asked. Values come with their times
/// (see `Polled`); other attributes have none.
pub(super) async fn read_chunked(
    timeout: Duration,
    session: &opcua::client::Session,
    reads: &[opcua::types::ReadValueId],
) -> Result<Vec<DataValue>, ferrite_core::driver::DriverError> {
    let mut out = Vec::with_capacity(reads.len());
    for chunk in reads.chunks(CHUNK) {
        let values =
            status::within(timeout, session.read(chunk, TimestampsToReturn::Both, 0.0)).await?;
        // Values are matched to nodes by position: a short (or long) answer
        // would give values to the wrong properties.
        if values.len() != chunk.len() {
            return Err(ferrite_core::driver::DriverError::Refused(format!(
                "the server answered {} values to a Read of {} nodes",
                values.len(),
                chunk.len()
            )));
        }
        out.extend(values);
    }
    Ok(out)
}

/// Creates a monitored item per readable point that is not bad, in as
/// many subscriptions as the server needs (servers cap the items per
/// subscription and per call). Returns the points the server refused to
/// monitor, and the subscriptions.
async fn subscribe(
    device: &Arc<Device>,
    connected: &Connected,
    bad: &BTreeMap<u16, String>,
    data: DataSender,
    gaps: &Arc<tokio::sync::Notify>,
) -> Result<(BTreeMap<u16, String>, Vec<Subscription>), Failure> {
    let session = &connected.session;
    let sampling = device.sampling();
    let queue = device.settings.queue.unwrap_or(1);
    let items: Vec<(u16, MonitoredItemCreateRequest)> = device
        .points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.readable && !bad.contains_key(&p.index))
        .filter_map(|(i, p)| {
            let id = p.node.as_ref().ok()?;
            Some((p.index, monitored_item(i, id, p.deadband, sampling, queue)))
        })
        .collect();
    let mut refused = BTreeMap::new();
    let mut subscriptions = Vec::new();
    // The queue length the server granted, when it is less than asked.
    let mut capped = None;
    let mut chunk = CHUNK;
    let mut current: Option<(u32, usize)> = None;
    // The server's cap on items per subscription, once it told us.
    let mut per_subscription: Option<usize> = None;
    let mut rest = items.as_slice();
    while !rest.is_empty() {
        let (subscription, held) = match current {
            Some(c) => c,
            None => {
                let made =
                    new_subscription(device, session, sampling, data.clone(), gaps.clone()).await?;
                let id = made.id;
                subscriptions.push(made);
                (id, 0)
            }
        };
        let room = per_subscription.map_or(usize::MAX, |max| max.saturating_sub(held));
        if room == 0 {
            current = None;
            continue;
        }
        let take = chunk.min(rest.len()).min(room);
        let requests = rest[..take].iter().map(|(_, r)| r.clone()).collect();
        let created = status::within_code(
            device.timeout,
            session.create_monitored_items(subscription, TimestampsToReturn::Both, requests),
        )
        .await;
        match created {
            Ok(results) => {
                if results.len() != take {
                    return Err(Failure::error(format!(
                        "the server answered {} results to creating {take} monitored items",
                        results.len()
                    )));
                }
                for ((index, request), result) in rest[..take].iter().zip(results) {
                    let code = result.result.status_code;
                    let granted = result.result.revised_queue_size;
                    if code.is_good() && granted < queue && capped.is_none() {
                        capped = Some(granted);
                    }
                    if code.is_bad() {
                        let handle = request.requested_parameters.client_handle as usize;
                        let name = handle
                            .checked_sub(1)
                            .and_then(|i| device.points.get(i))
                            .map_or("?", |p| &*p.name);
                        refused.insert(*index, format!("{name}: cannot monitor: {code}"));
                    }
                }
                rest = &rest[take..];
                current = Some((subscription, held + take));
            }
            // This subscription is full: the next one takes the rest.
            Err(StatusCode::BadTooManyMonitoredItems) if held > 0 => {
                per_subscription = Some(held);
                current = None;
            }
            // Too many in one call (or for an empty subscription): smaller
            // calls.
            Err(StatusCode::BadTooManyOperations | StatusCode::BadTooManyMonitoredItems)
                if chunk > 1 =>
            {
                chunk = chunk.div_ceil(2);
                current = Some((subscription, held));
            }
            Err(code) => {
                let e = status::error_within(code, device.timeout);
                return Err(Failure::offline(format!("creating monitored items: {e}")));
            }
        }
    }
    if let Some(granted) = capped {
        tracing::warn!(
            device = %device.name,
            "{} keeps at most {granted} changes per node while the gateway is away (asked for {queue}): an outage with more changes than that loses the older ones",
            device.settings.endpoint
        );
    }
    Ok((refused, subscriptions))
}

/// The kind of the event raised when the server will not report the
/// notifier's events (an unknown node, or one that is no event notifier).
const EVENTS_REFUSED: &str = "opcua_events_refused";

/// A subscription of its own for the events of `settings.notifier`:
/// `Ok(Err(why))` when the server refuses the item (the data flows on).
async fn subscribe_events(
    device: &Arc<Device>,
    session: &opcua::client::Session,
    settings: &ferrite_models::device::OpcuaEvents,
    data: DataSender,
    gaps: &Arc<tokio::sync::Notify>,
) -> Result<Result<Subscription, String>, Failure> {
    let notifier = &settings.notifier;
    let Ok(node) = <opcua::types::NodeId as std::str::FromStr>::from_str(&notifier.0) else {
        return Ok(Err(format!(
            "cannot parse the events notifier `{notifier}`"
        )));
    };
    let made = new_subscription(device, session, device.sampling(), data, gaps.clone()).await?;
    let item = super::events::monitored_item(&node, settings);
    let created = status::within(
        device.timeout,
        session.create_monitored_items(made.id, TimestampsToReturn::Neither, vec![item]),
    )
    .await
    .map_err(|e| Failure::offline(format!("creating the events item: {e}")))?;
    match created.first().map(|r| r.result.status_code) {
        Some(code) if code.is_good() => Ok(Ok(made)),
        code => {
            let code = code.map_or_else(|| "no answer".to_string(), |c| c.to_string());
            // The subscription without its item would only keep alive.
            let _ = status::within(device.timeout, session.delete_subscription(made.id)).await;
            Ok(Err(format!(
                "{} will not report the events of {notifier}: {code}",
                device.settings.endpoint
            )))
        }
    }
}

/// A subscription publishing every `sampling`, its values going to `data`.
async fn new_subscription(
    device: &Arc<Device>,
    session: &opcua::client::Session,
    sampling: Duration,
    data: DataSender,
    gaps: Arc<tokio::sync::Notify>,
) -> Result<Subscription, Failure> {
    let (keep_alive, lifetime) = counts(sampling);
    let sequence = Arc::new(std::sync::Mutex::new(Sequence::default()));
    let callback = Notifications {
        data,
        sequence: sequence.clone(),
        device: device.name.clone(),
        gaps,
    };
    let id = status::within(
        device.timeout,
        session.create_subscription(
            sampling,
            lifetime,
            keep_alive,
            NOTIFICATIONS_PER_PUBLISH,
            0,
            true,
            callback,
        ),
    )
    .await
    .map_err(|e| Failure::offline(format!("creating a subscription: {e}")))?;
    Ok(Subscription { id, sequence })
}

/// A subscription's keep-alive and lifetime counts, in publishing
/// intervals of `sampling`. The server sends a keep-alive after about 5 s
/// without changes, and keeps a subscription nobody asks for as long as it
/// keeps the session ([`connect::SESSION_TIMEOUT_MS`]), so that its queue
/// outlives the outages the session does (at least three keep-alives, as
/// the standard requires).
fn counts(sampling: Duration) -> (u32, u32) {
    let intervals = |span: Duration| {
        u32::try_from((span.as_millis() / sampling.as_millis().max(1)).max(1)).unwrap_or(u32::MAX)
    };
    let keep_alive = intervals(Duration::from_secs(5));
    let session = intervals(Duration::from_millis(u64::from(
        connect::SESSION_TIMEOUT_MS,
    )));
    (keep_alive, session.max(keep_alive.saturating_mul(3)))
}

/// The monitored item for point number `i` (its client handle is `i + 1`:
/// zero would ask the library to pick one).
fn monitored_item(
    i: usize,
    id: &opcua::types::NodeId,
    deadband: Option<f64>,
    sampling: Duration,
    queue: u32,
) -> MonitoredItemCreateRequest {
    let filter = deadband.map_or_else(ExtensionObject::null, |band| {
        ExtensionObject::from_message(DataChangeFilter {
            trigger: DataChangeTrigger::StatusValue,
            deadband_type: DeadbandType::Absolute as u32,
            deadband_value: band,
        })
    });
    MonitoredItemCreateRequest {
        item_to_monitor: read_values(&[id]).remove(0),
        monitoring_mode: MonitoringMode::Reporting,
        requested_parameters: MonitoringParameters {
            client_handle: u32::try_from(i + 1).unwrap_or(u32::MAX),
            sampling_interval: sampling.as_secs_f64() * 1000.0,
            filter,
            queue_size: queue,
            discard_oldest: true,
        },
    }
}

/// A notification of monitored item (handle), with the time it is stamped
/// with.
type Stamped = (u32, DataValue, Micros);

/// Splits notifications into rounds in which each monitored item appears
/// at most once, stamping each with its time under `policy` (see
/// [`super::stamp`]), in time order (the server's order where times are
/// equal, arrival order where it gave none). One item's times strictly
/// increase (a repeated one is a microsecond later), so every value is
/// stored and none overwrites another.
fn stamped(
    batch: Vec<(u32, DataValue)>,
    policy: OpcuaTimestamps,
    now: Micros,
) -> Vec<Vec<Stamped>> {
    let mut batch: Vec<(Micros, u32, DataValue)> = batch
        .into_iter()
        .map(|(handle, dv)| (super::stamp(policy, &dv, now), handle, dv))
        .collect();
    batch.sort_by_key(|(ts, _, dv)| {
        (
            *ts,
            dv.source_timestamp
                .or(dv.server_timestamp)
                .map(|t| t.checked_ticks()),
        )
    });
    let mut rounds: Vec<Vec<Stamped>> = Vec::new();
    // Each item's round and time so far.
    let mut seen: std::collections::HashMap<u32, (usize, Micros)> =
        std::collections::HashMap::new();
    for (ts, handle, dv) in batch {
        let (round, at) = seen
            .get(&handle)
            .map_or((0, ts), |(round, last)| (round + 1, ts.max(last + 1)));
        seen.insert(handle, (round, at));
        if rounds.len() <= round {
            rounds.push(Vec::new());
        }
        rounds[round].push((handle, dv, at));
    }
    rounds
}

/// Turns a round of notifications into samples and their times, keeping
/// `bad` up to date.
fn to_samples(
    device: &Device,
    round: Vec<Stamped>,
    bad: &mut BTreeMap<u16, String>,
) -> (Vec<(u16, Sample)>, Vec<Micros>) {
    round
        .into_iter()
        .filter_map(|(handle, dv, ts)| {
            let point = device.points.get((handle as usize).checked_sub(1)?)?;
            Some((classify(point.index, sample_of(point, &dv), bad), ts))
        })
        .unzip()
}

/// The sample a read result makes for property `index`, keeping `bad` (why
/// each bad property is bad) up to date.
fn classify(
    index: u16,
    result: Result<ferrite_models::Value, String>,
    bad: &mut BTreeMap<u16, String>,
) -> (u16, Sample) {
    match result {
        Ok(v) => {
            bad.remove(&index);
            (index, Sample::Good(v))
        }
        Err(why) => {
            bad.insert(index, why);
            (index, Sample::Bad)
        }
    }
}

/// The update of one batched Read ([`poll_once`]). A failed read marks the
/// status of this update only: the point stays in the next poll.
fn polled_update(
    device: &Device,
    health: &mut Health,
    bad: &BTreeMap<u16, String>,
    polled: Vec<Polled>,
) -> Update {
    let mut status_bad = bad.clone();
    let mut stamps = Vec::with_capacity(polled.len());
    let samples = polled
        .into_iter()
        .map(|(i, r, ts)| {
            stamps.push(ts);
            classify(i, r, &mut status_bad)
        })
        .collect();
    let mut update = health.update(device, &status_bad, samples);
    // The samples of a status change that follow have no stamp of their
    // own: they take the update's time.
    update.stamps = stamps;
    update
}

/// One point's value from a Read, stamped by the device's `timestamps`
/// policy, as subscriptions and write read-backs are (one clock for all:
/// a Read answered just after a write must not outdate the write's
/// read-back by being stamped on another clock).
type Polled = (u16, Result<ferrite_models::Value, String>, Micros);

/// One batched Read of every readable point.
async fn poll_once(
    device: &Device,
    session: &opcua::client::Session,
    bad: &BTreeMap<u16, String>,
) -> Result<Vec<Polled>, Failure> {
    let points: Vec<(&Point, &opcua::types::NodeId)> = device
        .points
        .iter()
        .filter(|p| p.readable && !bad.contains_key(&p.index))
        .filter_map(|p| p.node.as_ref().ok().map(|id| (p, id)))
        .collect();
    let ids: Vec<&opcua::types::NodeId> = points.iter().map(|(_, id)| *id).collect();
    let values = read_all(device, session, &ids, AttributeId::Value)
        .await
        .map_err(|e| Failure::offline(format!("polling: {e}")))?;
    let now = now();
    let policy = device.settings.timestamps;
    Ok(points
        .iter()
        .zip(values)
        .map(|((p, _), dv)| (p.index, sample_of(p, &dv), super::stamp(policy, &dv, now)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change of value `v` stamped at the source `source_s` seconds after
    /// 2026-01-01 (none for `None`).
    fn change(v: f64, source_s: Option<i64>) -> DataValue {
        let mut dv = DataValue::value_only(Variant::Double(v));
        // In ticks of 100 ns since 1601.
        const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;
        dv.source_timestamp = source_s.map(|s| {
            opcua::types::DateTime::from(UNIX_EPOCH_TICKS + (1_767_225_600 + s) * 10_000_000)
        });
        dv
    }

    fn micros(s: i64) -> Micros {
        (1_767_225_600 + s) * 1_000_000
    }

    /// Each round's (handle, value, time)s.
    fn shown(rounds: &[Vec<Stamped>]) -> Vec<Vec<(u32, f64, Micros)>> {
        rounds
            .iter()
            .map(|round| {
                round
                    .iter()
                    .map(|(h, dv, t)| match dv.value {
                        Some(Variant::Double(v)) => (*h, v, *t),
                        _ => (*h, f64::NAN, *t),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn source_stamps_are_when_values_changed_each_node_once_per_round() {
        let now = micros(100);
        let batch = vec![
            (1, change(2.0, Some(20))),
            (2, change(9.0, Some(10))),
            (1, change(1.0, Some(10))),
            (2, change(8.0, None)),
            (1, change(3.0, Some(500))), // a clock ahead: no later than now
        ];
        assert_eq!(
            shown(&stamped(batch, OpcuaTimestamps::Source, now)),
            vec![
                vec![(2, 9.0, micros(10)), (1, 1.0, micros(10))],
                vec![(1, 2.0, micros(20)), (2, 8.0, now)],
                vec![(1, 3.0, now)],
            ]
        );
    }

    #[test]
    fn gateway_stamps_keep_each_nodes_values_apart_a_microsecond_each() {
        let now = micros(100);
        let batch = vec![
            (1, change(2.0, Some(20))),
            (1, change(1.0, Some(10))),
            (2, change(5.0, Some(15))),
        ];
        // In the server's order, node 1's two values a microsecond apart.
        assert_eq!(
            shown(&stamped(batch, OpcuaTimestamps::Gateway, now)),
            vec![vec![(1, 1.0, now), (2, 5.0, now)], vec![(1, 2.0, now + 1)]]
        );
    }

    #[test]
    fn equal_source_stamps_of_one_node_still_make_two_points() {
        let now = micros(100);
        let batch = vec![
            (1, change(1.0, Some(10))),
            (1, change(2.0, Some(10))),
            (1, change(3.0, Some(11))),
        ];
        let times: Vec<Micros> = stamped(batch, OpcuaTimestamps::Source, now)
            .iter()
            .flatten()
            .map(|(_, _, t)| *t)
            .collect();
        assert_eq!(times, vec![micros(10), micros(10) + 1, micros(11)]);
    }

    #[test]
    fn a_full_data_queue_drops_counts_and_flags_a_reread() {
        let (queue, mut rx) = mpsc::channel(2);
        let sender = DataSender {
            queue,
            overflowed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            stats: Arc::default(),
            events: None,
        };
        for handle in 0..5 {
            sender.send(handle, DataValue::default());
        }
        use std::sync::atomic::Ordering;
        assert!(
            sender.overflowed.load(Ordering::Relaxed),
            "a re-read is due"
        );
        assert_eq!(sender.stats.overflowed_changes.load(Ordering::Relaxed), 3);
        let kept: Vec<u32> = std::iter::from_fn(|| rx.try_recv().ok().map(|(h, _)| h)).collect();
        assert_eq!(kept, [0, 1], "the queue holds what fitted, in order");
    }
}
