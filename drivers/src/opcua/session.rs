//! One task per OPC UA device, owning its session from connect to loss.
//!
//! ```text
//! loop {
//!     open a session (endpoint, security, identity)     -- connect.rs
//!     read every node's DataType once
//!     subscribe (or poll), forward values to the store
//!     ... until the session is lost or the gateway stops
//!     mark every value stale, report why, wait a capped backoff
//! }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_models::model::UaDataType;
use futures_util::StreamExt;
use opcua::client::transport::TcpConnector;
use opcua::client::{
    Client, DataChangeCallback, SessionActivity, SessionEventLoop, SessionPollResult,
};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, DeadbandType, ExtensionObject,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, StatusCode,
    TimestampsToReturn, Variant,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{
    Connected, Device, Link, Point, connect, read_attribute, read_values, sample_of, status,
};
use ferrite_core::backoff::Backoff;
use ferrite_core::driver::DriverContext;
use ferrite_core::reading::{Sample, Status, Update};
use ferrite_core::time::now;

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
struct DataSender {
    queue: mpsc::Sender<(u32, DataValue)>,
    overflowed: Arc<std::sync::atomic::AtomicBool>,
    stats: Arc<ferrite_core::driver::DriverStats>,
}

impl DataSender {
    /// Queues a change, or drops it at a full queue and says so.
    fn send(&self, handle: u32, value: DataValue) {
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
struct Failure {
    status: Status,
    why: String,
}

impl Failure {
    fn offline(why: impl Into<String>) -> Self {
        Failure {
            status: Status::Offline,
            why: why.into(),
        }
    }

    fn error(why: impl Into<String>) -> Self {
        Failure {
            status: Status::Error,
            why: why.into(),
        }
    }

    /// What a status code from connecting means, in words an operator can
    /// act on.
    fn from_code(code: StatusCode, device: &Device, pki: &std::path::Path) -> Self {
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
enum Event {
    Connected,
    Alive,
    Failed(StatusCode),
    Ended,
}

/// Runs the device until the gateway stops.
pub(super) async fn run(
    device: Arc<Device>,
    client: Result<Client, String>,
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
        };
        let failure = match session.serve(&mut backoff).await {
            Ok(()) => break,
            Err(f) => f,
        };
        session.close().await;
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
        applied: None,
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
    client: &'a Client,
    pki: &'a std::path::Path,
    link: &'a watch::Sender<Link>,
    ctx: &'a DriverContext,
    /// The task polling the session's event loop, and the session.
    pump: Option<(JoinHandle<()>, Arc<opcua::client::Session>)>,
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
            // Reconnects are this task's job: a lost connection must end
            // the event loop rather than retry inside it.
            session.disable_reconnects();
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
                Ok(Ok(())) => Ok((session, events)),
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
        };
        let subscribed = match device.settings.mode {
            ferrite_models::device::OpcuaMode::Subscribe => {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    r = subscribe(device, &connected, &bad, data_tx) => r?,
                }
            }
            ferrite_models::device::OpcuaMode::Poll => BTreeMap::new(),
        };
        bad.extend(subscribed);
        tracing::info!(device = %device.name, "session open on {}", device.settings.endpoint);
        let since = Instant::now();
        let mut stable = false;
        let mut health = Health::default();
        send(self.ctx, health.update(device, &bad, Vec::new())).await;
        let mut tick = tokio::time::interval(device.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let polling = device.settings.mode == ferrite_models::device::OpcuaMode::Poll;
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
                    Some(Event::Alive) => vec![health.update(device, &bad, Vec::new())],
                    Some(Event::Connected) => continue,
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
                    // One update per round of values, a microsecond apart,
                    // so that queued values of one node keep their order
                    // and each is stored.
                    let base = now();
                    let mut updates = Vec::new();
                    for (k, round) in rounds(batch).iter().enumerate() {
                        let samples = to_samples(device, round, &mut bad);
                        let mut update = health.update(device, &bad, samples);
                        update.ts = base + k as ferrite_core::time::Micros;
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
                _ = tick.tick(), if polling => {
                    let started = Instant::now();
                    let polled = poll_once(device, &session, &bad).await;
                    let ok = polled.as_ref().is_ok_and(|p| p.iter().all(|(_, r)| r.is_ok()));
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

    /// Closes the session (briefly: the server may be gone) and stops its
    /// event loop.
    async fn close(&mut self) {
        if let Some((pump, session)) = self.pump.take() {
            let _ = tokio::time::timeout(Duration::from_millis(500), session.disconnect()).await;
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
            applied: None,
        }
    }
}

/// Polls the event loop, forwarding what the device task needs to know.
async fn pump(event_loop: SessionEventLoop<TcpConnector>, events: mpsc::Sender<Event>) {
    let stream = event_loop.enter();
    tokio::pin!(stream);
    loop {
        let event = match stream.next().await {
            Some(Ok(SessionPollResult::Reconnected(_))) => Event::Connected,
            Some(Ok(SessionPollResult::SessionActivity(SessionActivity::KeepAliveSucceeded))) => {
                let _ = events.try_send(Event::Alive);
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(code)) => Event::Failed(code),
            None => Event::Ended,
        };
        let last = matches!(event, Event::Failed(_) | Event::Ended);
        if events.send(event).await.is_err() || last {
            return;
        }
    }
}

async fn wait_connected(events: &mut mpsc::Receiver<Event>) -> Result<(), StatusCode> {
    loop {
        match events.recv().await {
            Some(Event::Connected) => return Ok(()),
            Some(Event::Alive) => {}
            Some(Event::Failed(code)) => return Err(code),
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
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let read = read_attribute(chunk, attribute);
        let values = status::within(
            device.timeout,
            session.read(&read, TimestampsToReturn::Neither, 0.0),
        )
        .await?;
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
/// monitor.
async fn subscribe(
    device: &Device,
    connected: &Connected,
    bad: &BTreeMap<u16, String>,
    data: DataSender,
) -> Result<BTreeMap<u16, String>, Failure> {
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
    let mut chunk = CHUNK;
    let mut current: Option<(u32, usize)> = None;
    // The server's cap on items per subscription, once it told us.
    let mut per_subscription: Option<usize> = None;
    let mut rest = items.as_slice();
    while !rest.is_empty() {
        let (subscription, held) = match current {
            Some(c) => c,
            None => {
                let id = new_subscription(device, session, sampling, data.clone()).await?;
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
            session.create_monitored_items(subscription, TimestampsToReturn::Source, requests),
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
    Ok(refused)
}

/// A subscription publishing every `sampling`, its values going to `data`.
async fn new_subscription(
    device: &Device,
    session: &opcua::client::Session,
    sampling: Duration,
    data: DataSender,
) -> Result<u32, Failure> {
    // The server sends a keep-alive after this many empty intervals (about
    // every 5 s) and drops the subscription after four missed ones.
    let keep_alive =
        u32::try_from((Duration::from_secs(5).as_millis() / sampling.as_millis().max(1)).max(1))
            .unwrap_or(u32::MAX);
    let callback = DataChangeCallback::new(move |dv, item| {
        data.send(item.client_handle(), dv);
    });
    status::within(
        device.timeout,
        session.create_subscription(
            sampling,
            keep_alive.saturating_mul(4),
            keep_alive,
            NOTIFICATIONS_PER_PUBLISH,
            0,
            true,
            callback,
        ),
    )
    .await
    .map_err(|e| Failure::offline(format!("creating a subscription: {e}")))
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

/// Splits notifications into rounds in which each monitored item appears
/// once, in the order the server stamped them (arrival order where it did
/// not).
fn rounds(mut batch: Vec<(u32, DataValue)>) -> Vec<Vec<(u32, DataValue)>> {
    batch.sort_by_key(|(_, dv)| {
        dv.source_timestamp
            .or(dv.server_timestamp)
            .map(|t| t.checked_ticks())
    });
    let mut rounds: Vec<Vec<(u32, DataValue)>> = Vec::new();
    let mut round_of: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for (handle, dv) in batch {
        let round = round_of.get(&handle).map_or(0, |r| r + 1);
        round_of.insert(handle, round);
        if rounds.len() <= round {
            rounds.push(Vec::new());
        }
        rounds[round].push((handle, dv));
    }
    rounds
}

/// Turns a batch of notifications into samples, keeping `bad` up to date.
fn to_samples(
    device: &Device,
    batch: &[(u32, DataValue)],
    bad: &mut BTreeMap<u16, String>,
) -> Vec<(u16, Sample)> {
    batch
        .iter()
        .filter_map(|(handle, dv)| {
            let point = device.points.get((*handle as usize).checked_sub(1)?)?;
            Some(classify(point.index, sample_of(point, dv), bad))
        })
        .collect()
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
    polled: Vec<(u16, Result<ferrite_models::Value, String>)>,
) -> Update {
    let mut status_bad = bad.clone();
    let samples = polled
        .into_iter()
        .map(|(i, r)| classify(i, r, &mut status_bad))
        .collect();
    health.update(device, &status_bad, samples)
}

/// One batched Read of every readable point.
async fn poll_once(
    device: &Device,
    session: &opcua::client::Session,
    bad: &BTreeMap<u16, String>,
) -> Result<Vec<(u16, Result<ferrite_models::Value, String>)>, Failure> {
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
    Ok(points
        .iter()
        .zip(values)
        .map(|((p, _), dv)| (p.index, sample_of(p, &dv)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_data_queue_drops_counts_and_flags_a_reread() {
        let (queue, mut rx) = mpsc::channel(2);
        let sender = DataSender {
            queue,
            overflowed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            stats: Arc::default(),
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
