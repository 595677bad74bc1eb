//! The embedded MQTT broker (rumqttd), started from the `[mqtt]` section.
//!
//! MQTT devices, and other local clients such as an HMI, connect to it over
//! TCP (MQTT 3.1.1) or TLS. The gateway itself does not: it reads and
//! publishes through rumqttd's in-process link, so the hot path has no
//! loopback socket, no MQTT encoding and no keep-alive of its own.
//!
//! rumqttd's `Broker::start` blocks for good and has no shutdown. It runs on
//! its own thread; links are made before it starts, so the gateway's link
//! comes with spares ([`BrokerLink::relink`]): should the router ever drop
//! the link, the next spare takes over with the same subscription. When the gateway stops,
//! its link ends (so nothing is read into a closed store) and the listeners
//! go with the process. Because a bind failure inside rumqttd is only
//! logged, every listen address is bound once here first, so that a taken
//! port fails the start with a clear error.
//!
//! - `gate`: back-pressure from the store onto publishers, by holding the
//!   router thread while the store's queue is nearly full or the gateway's
//!   reader is behind in the log.
//! - `ledger`: the topic of each message in the gateway's log, so that
//!   messages dropped unread all the same are counted per device.
//!
//! Both act through the process's tracing subscriber: [`tracing_layer`].

pub mod gate;
pub mod ledger;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferrite_models::config::MqttSection;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

/// Where rumqttd's router logs and opens its spans, which the gate and the
/// ledger look for.
const ROUTER_TARGET: &str = "rumqttd::router::routing";

/// The router gate and the ledger, as one tracing layer. It must be part
/// of the process's subscriber for either to act; it has its own filters,
/// so `RUST_LOG` does not turn it off.
pub fn tracing_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    gate::layer().and_then(ledger::layer())
}

/// Whether `metadata` is a span of rumqttd's router, which opens some for
/// each batch of packets and each publish. The gateway's log layer leaves
/// them out: it would format their fields (the topic, say) for every
/// message on the router thread, for the few warnings logged inside them
/// (`broker_layers` bench).
pub fn is_router_span(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.target().starts_with("rumqttd::router")
}

/// The client ID of the gateway's own link: `ferrite-gateway-` and 16
/// random hex digits, made anew at each start. rumqttd drops the older of
/// two connections with one client id, so a fixed id would let any MQTT
/// client knock the gateway's link off (and MQTT devices would stop
/// updating); a random one cannot be guessed.
fn gateway_client() -> String {
    format!("ferrite-gateway-{}", random_suffix())
}

/// The client ID of the rules' link, which only publishes; random too.
fn rules_client() -> String {
    format!("ferrite-rules-{}", random_suffix())
}

fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listen address is taken or not allowed.
    #[error("the MQTT broker cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// A user's password file cannot be read.
    #[error("cannot read the password of MQTT user `{0}` from {1}: {2}")]
    Password(String, PathBuf, std::io::Error),
    /// The broker refused the gateway's link.
    #[error("the MQTT broker refused the gateway's link: {0}")]
    Link(String),
    /// The broker thread did not start.
    #[error("cannot start the MQTT broker thread: {0}")]
    Thread(std::io::Error),
}

/// Spare in-process links made with the gateway's own: how many times its
/// link can be lost and made good again.
const SPARE_LINKS: usize = 3;

/// The gateway's in-process connection to the broker: the live link's
/// sending half, shared by the reader and the writers, and spares.
pub struct BrokerLink {
    /// The live link's client id and sending half.
    live: std::sync::Mutex<(String, LinkTx)>,
    /// Links made at start, not yet used.
    spares: std::sync::Mutex<Vec<(String, LinkTx, LinkRx)>>,
    /// The filter the live link subscribes to, renewed on a relink.
    filter: String,
}

impl BrokerLink {
    /// Subscribes the live link to `filter`; every link after a
    /// [`BrokerLink::relink`] subscribes to it too.
    pub fn subscribe(&mut self, filter: &str) -> Result<(), String> {
        self.filter = filter.to_string();
        ledger::watch(filter);
        self.lock()
            .1
            .subscribe(filter)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The filter the gateway's links subscribe to.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// Publishes on the live link.
    pub fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        self.lock()
            .1
            .publish(topic, payload)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Publishes a retained message on the live link, which the broker
    /// keeps for clients that subscribe later. At QoS 0: rumqttd's local
    /// links publish nothing else (the link itself cannot lose it).
    pub fn publish_retained(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        use futures_util::FutureExt;
        let publish = rumqttd::protocol::Publish::new(topic.into_bytes(), payload, true);
        // `send` only queues the packet and wakes the router: it never
        // waits, so it completes on the first poll.
        self.lock()
            .1
            .send(rumqttd::protocol::Packet::Publish(publish, None))
            .now_or_never()
            .ok_or_else(|| "the broker link would block".to_string())?
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The live link's client id.
    pub fn client_id(&self) -> String {
        self.lock().0.clone()
    }

    /// The live link failed (the router dropped it): the next spare takes
    /// over, subscribed as the lost one was; its receiving half, or `None`
    /// when no spare is left.
    pub fn relink(&self) -> Option<LinkRx> {
        let mut spares = self
            .spares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((id, mut tx, rx)) = spares.pop() {
            if let Err(e) = tx.subscribe(self.filter.clone()) {
                tracing::warn!("a spare broker link failed too: {e}");
                continue;
            }
            let left = spares.len();
            let old = std::mem::replace(&mut *self.lock(), (id, tx)).0;
            tracing::warn!(
                "the broker dropped the gateway's link {old}; a spare took over ({left} left)"
            );
            return Some(rx);
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (String, LinkTx)> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Publishes on the embedded broker for the rules, through a link of its
/// own (QoS 0, as rumqttd's local links do).
pub struct Publisher {
    tx: tokio::sync::Mutex<LinkTx>,
    /// Kept so that the router has somewhere to deliver; nothing subscribes.
    _rx: LinkRx,
}

impl Publisher {
    /// Publishes `payload` on `topic`.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), String> {
        let publish = rumqttd::protocol::Publish::new(topic.as_bytes().to_vec(), payload, retain);
        let mut tx = self.tx.lock().await;
        tx.send(rumqttd::protocol::Packet::Publish(publish, None))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Starts the broker on its own thread and returns the gateway's link (and
/// the receiving half of its live link) and the rules' publisher.
/// `resolve` turns paths of the config into absolute ones.
pub async fn start(
    section: &MqttSection,
    resolve: &(dyn Fn(&Path) -> PathBuf + Sync),
) -> Result<(BrokerLink, LinkRx, Publisher), BrokerError> {
    let logins = logins(section, resolve)?;
    let config = broker_config(section, resolve, &logins);
    for server in config.v4.iter().flat_map(HashMap::values) {
        // Bind once so that a taken port is an error here, not a log line
        // on the broker's thread. The socket closes before rumqttd binds.
        std::net::TcpListener::bind(server.listen)
            .map_err(|e| BrokerError::Listen(server.listen, e))?;
    }
    let mut broker = rumqttd::Broker::new(config);
    let link = |id: String| {
        broker
            .link(&id)
            .map(|(tx, rx)| (id, tx, rx))
            .map_err(|e| BrokerError::Link(e.to_string()))
    };
    let (id, tx, rx) = link(gateway_client())?;
    let spares = (0..SPARE_LINKS)
        .map(|_| link(gateway_client()))
        .collect::<Result<Vec<_>, _>>()?;
    let (rules_tx, rules_rx) = broker
        .link(&rules_client())
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("the MQTT broker stopped: {e}");
            }
        })
        .map_err(BrokerError::Thread)?;
    // Only the plain listener is probed: the TLS one starts alongside it.
    if !ferrite_sync::link::wait_until_serving(section.listen, logins.first()).await {
        tracing::warn!(
            "the MQTT broker did not answer on {} within 5 s",
            section.listen
        );
    }
    tracing::info!(
        "MQTT broker listening on {}{}",
        section.listen,
        section
            .tls
            .as_ref()
            .map(|t| format!(" and {} (TLS)", t.listen))
            .unwrap_or_default()
    );
    let publisher = Publisher {
        tx: tokio::sync::Mutex::new(rules_tx),
        _rx: rules_rx,
    };
    let gateway_link = BrokerLink {
        live: std::sync::Mutex::new((id, tx)),
        spares: std::sync::Mutex::new(spares),
        filter: String::new(),
    };
    Ok((gateway_link, rx, publisher))
}

/// Each `[[mqtt.users]]` entry with its password, read once.
fn logins(
    section: &MqttSection,
    resolve: &(dyn Fn(&Path) -> PathBuf + Sync),
) -> Result<Vec<(String, String)>, BrokerError> {
    section
        .users
        .iter()
        .map(|user| {
            let path = resolve(&user.password_file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| BrokerError::Password(user.username.clone(), path, e))?;
            let password = text.trim_end_matches(['\r', '\n']).to_string();
            Ok((user.username.clone(), password))
        })
        .collect()
}

/// rumqttd's config for the `[mqtt]` section.
fn broker_config(
    section: &MqttSection,
    resolve: &(dyn Fn(&Path) -> PathBuf + Sync),
    logins: &[(String, String)],
) -> Config {
    let auth: HashMap<String, String> = logins.iter().cloned().collect();
    let connections = ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: section.max_payload,
        max_inflight_count: 100,
        auth: (!auth.is_empty()).then_some(auth),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen: SocketAddr, tls: Option<TlsConfig>| ServerSettings {
        name: name.to_string(),
        listen,
        tls,
        next_connection_delay_ms: 0,
        connections: connections.clone(),
    };
    let mut servers = HashMap::from([("plain".to_string(), server("mqtt", section.listen, None))]);
    if let Some(tls) = &section.tls {
        let tls_config = TlsConfig::Rustls {
            capath: None,
            certpath: resolve(&tls.certificate).display().to_string(),
            keypath: resolve(&tls.private_key).display().to_string(),
        };
        servers.insert(
            "tls".to_string(),
            server("mqtt-tls", tls.listen, Some(tls_config)),
        );
    }
    Config {
        id: 0,
        router: RouterConfig {
            // The gateway's own links (and spares) count as connections.
            max_connections: section.max_connections + 2 + SPARE_LINKS,
            // A subscriber is handed all of its log that it has not read
            // yet, in one turn (rumqttd's default is 200 a turn). The
            // gateway's reader asks for more only once it has taken what it
            // was handed, and its ask queues behind every batch the clients
            // sent meanwhile; so each turn must hand it at least what one
            // turn lets in, or its place in the log falls behind until the
            // log is trimmed under it (`gate`). Under `mqtt_load`'s 1000
            // QoS 1 publishers at 100 messages/s, 30 000 a turn lost 266 173
            // messages, 100 000 lost 13 336, the whole log none in four
            // runs of five (1 458 in the other).
            max_outgoing_packet_count: 1_000_000,
            // Every publish sits in an in-memory log per subscription
            // filter; keep each log within a few MiB on an edge box.
            max_segment_size: section.max_payload.max(1024 * 1024),
            max_segment_count: 4,
            ..RouterConfig::default()
        },
        v4: Some(servers),
        ..Config::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    use super::*;

    /// A client on the broker; its event loop runs in the background.
    async fn client(port: u16, id: &str) -> AsyncClient {
        let (client, mut events) = AsyncClient::new(MqttOptions::new(id, "127.0.0.1", port), 10);
        let (connected, is_connected) = tokio::sync::oneshot::channel();
        let mut connected = Some(connected);
        tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Packet::ConnAck(_)) = event
                    && let Some(tx) = connected.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), is_connected)
            .await
            .expect("connected within 5 s")
            .expect("connected");
        client
    }

    /// The next publish on `rx`, by topic.
    async fn next_topic(rx: &mut LinkRx) -> Result<String, String> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
                Err(_) => return Err("nothing within 5 s".into()),
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(Some(rumqttd::Notification::Forward(f)))) => {
                    return Ok(String::from_utf8_lossy(&f.publish.topic).into_owned());
                }
                Ok(Ok(Some(rumqttd::Notification::Unschedule))) => {
                    rx.wake().await.map_err(|e| e.to_string())?;
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Messages a publisher sends in one round of the gate test, and how
    /// big each is: together twice rumqttd's log for one filter (4 MiB).
    const ROUND: u32 = 2000;
    const BODY: usize = 4096;

    /// What slows the gateway's side of a gate round down, and what
    /// presses the gate.
    #[derive(Clone, Copy, PartialEq)]
    enum Slow {
        /// The link reads into a queue of 64 that a consumer empties at 500
        /// messages/s; nothing presses the gate.
        Consumer,
        /// The same, with the queue pressing the gate while nearly full.
        ConsumerGated,
        /// The reader itself takes 2 ms a message, so no queue fills; the
        /// gate is pressed while the reader is behind in the log.
        ReaderGated,
    }

    /// One round of the gate test: a QoS 1 publisher sends [`ROUND`]
    /// messages as fast as the broker acknowledges them, while the
    /// gateway's side takes 500 messages/s (`slow` says which part is
    /// slow). Returns the messages the consumer got, those lost in the log
    /// (by topic, as the ledger tells), and the microseconds the router was
    /// held.
    async fn gate_round(
        rx: &mut LinkRx,
        offsets: &mut crate::mqtt::LogOffsets,
        port: u16,
        round: u8,
        slow: Slow,
    ) -> Round {
        let slow_reader = slow == Slow::ReaderGated;
        let (queue, mut taken) =
            tokio::sync::mpsc::channel::<u32>(if slow_reader { ROUND as usize } else { 64 });
        let stats = Arc::new(ferrite_core::driver::DriverStats::default());
        let place = Arc::new(gate::ReaderPlace::default());
        match slow {
            Slow::Consumer => gate::install(|| false, stats.clone()),
            Slow::ConsumerGated => {
                let queue = queue.downgrade();
                gate::install(
                    move || {
                        queue
                            .upgrade()
                            .is_some_and(|q| q.capacity() < q.max_capacity() / 8)
                    },
                    stats.clone(),
                );
            }
            Slow::ReaderGated => {
                let place = place.clone();
                gate::install(
                    move || place.behind(|| ledger::tail_segment("load/#")),
                    stats.clone(),
                );
            }
        }
        let consumer = tokio::spawn(async move {
            let mut got = 0;
            while let Some(n) = taken.recv().await {
                got += 1;
                if n == ROUND - 1 {
                    break;
                }
                if !slow_reader {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            got
        });
        // Three topics in turn, so that the ledger must put each lost
        // message to the right one.
        let topic = move |n: u32| format!("load/{round}/{}", n % 3);
        let publisher = {
            let (client, mut events) = AsyncClient::new(
                MqttOptions::new(format!("load-{round}"), "127.0.0.1", port),
                100,
            );
            tokio::spawn(async move {
                let sender = tokio::spawn(async move {
                    for n in 0..ROUND {
                        let mut body = n.to_be_bytes().to_vec();
                        body.resize(BODY, 0);
                        client
                            .publish(topic(n), QoS::AtLeastOnce, false, body)
                            .await
                            .expect("publish");
                    }
                    client
                });
                let mut acked = 0;
                while acked < ROUND {
                    if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.expect("poll") {
                        acked += 1;
                    }
                }
                drop(sender.await);
            })
        };
        let mut lost = 0;
        let mut lost_by_topic: HashMap<String, u64> = HashMap::new();
        let mut missing_by_topic: HashMap<String, u64> =
            (0..ROUND).fold(HashMap::new(), |mut m, n| {
                *m.entry(topic(n)).or_default() += 1;
                m
            });
        let prefix = format!("load/{round}/");
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
                Ok(Ok(Some(rumqttd::Notification::Forward(f))))
                    if f.publish.topic.starts_with(prefix.as_bytes()) =>
                {
                    if let Some((segment, _)) = f.cursor {
                        place.took(segment);
                    }
                    let gap = offsets.next(f.cursor);
                    if !gap.is_empty() {
                        lost += gap.end - gap.start;
                        let (by_topic, unknown) = ledger::lost("load/#", gap.start, gap.end);
                        for (topic, n) in by_topic {
                            *lost_by_topic.entry(topic).or_default() += n;
                        }
                        if unknown > 0 {
                            *lost_by_topic.entry("?".into()).or_default() += unknown;
                        }
                    }
                    let n = u32::from_be_bytes(f.publish.payload[..4].try_into().expect("index"));
                    if let Some(missing) = missing_by_topic.get_mut(&topic(n)) {
                        *missing -= 1;
                    }
                    queue.send(n).await.expect("consumer");
                    if n == ROUND - 1 {
                        break;
                    }
                    if slow_reader {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                Ok(Ok(Some(rumqttd::Notification::Unschedule))) => {
                    place.asked_for_more();
                    rx.wake().await.expect("wake");
                }
                Ok(Ok(_)) => {}
                other => panic!("the link failed or went quiet: {other:?}"),
            }
        }
        publisher.await.expect("every publish acknowledged");
        let held = stats
            .mqtt_held_micros
            .load(std::sync::atomic::Ordering::Relaxed);
        Round {
            got: consumer.await.expect("consumer"),
            lost,
            lost_by_topic,
            missing_by_topic: missing_by_topic
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect(),
            held,
        }
    }

    /// What one round of the gate test saw.
    struct Round {
        got: u32,
        lost: u64,
        lost_by_topic: HashMap<String, u64>,
        /// Per topic, the messages that did not arrive.
        missing_by_topic: HashMap<String, u64>,
        held: u64,
    }

    /// Tests that install their own gate (it is process-wide) take turns.
    pub(crate) static GATE_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// A broker on a free loopback port with the default `[mqtt]` section.
    pub(crate) async fn broker_on_loopback() -> (u16, BrokerLink, LinkRx, Publisher) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let section: MqttSection =
            serde_json::from_value(serde_json::json!({"listen": format!("127.0.0.1:{port}")}))
                .expect("section");
        let (link, rx, publisher) = start(&section, &|p| p.to_path_buf()).await.expect("broker");
        (port, link, rx, publisher)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_gate_holds_publishers_and_the_ledger_names_what_was_lost() {
        use tracing_subscriber::layer::SubscriberExt;
        // The gate acts through the process's subscriber.
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(tracing_layer()),
        );
        let _turn = GATE_TESTS.lock().await;
        let (port, mut link, mut rx, _publisher) = broker_on_loopback().await;
        link.subscribe("load/#").expect("subscribe");

        // Without the gate the router acknowledges faster than the consumer
        // takes, and trims its log unread: this is what the gate is for, and
        // it shows that the test can see a loss.
        let mut offsets = crate::mqtt::LogOffsets::of("load/#");
        let ungated = gate_round(&mut rx, &mut offsets, port, 1, Slow::Consumer).await;
        assert!(
            ungated.lost > 0,
            "a slow consumer lost nothing without the gate"
        );
        assert_eq!(
            u64::from(ungated.got) + ungated.lost,
            u64::from(ROUND),
            "gaps counted exactly"
        );
        // The ledger knew the topic of each message lost.
        assert_eq!(ungated.lost_by_topic, ungated.missing_by_topic);

        let gated = gate_round(&mut rx, &mut offsets, port, 2, Slow::ConsumerGated).await;
        assert_eq!(
            (gated.got, gated.lost),
            (ROUND, 0),
            "with the gate nothing is lost"
        );
        assert!(gated.held > 0, "the publisher was never held");

        // A reader slower than the router, with no queue to fill: the gate
        // holds the router while the reader is behind in the log.
        let behind = gate_round(&mut rx, &mut offsets, port, 3, Slow::ReaderGated).await;
        assert_eq!(
            (behind.got, behind.lost),
            (ROUND, 0),
            "held by the reader's place, nothing is lost"
        );
        assert!(behind.held > 0, "the publisher was never held");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_knocked_off_by_its_client_id_is_made_good_by_a_spare() {
        let (port, mut link, mut rx, _publisher) = broker_on_loopback().await;
        link.subscribe("#").expect("subscribe");
        let first = link.client_id();
        assert!(
            first.starts_with("ferrite-gateway-") && first.len() == 32,
            "{first}"
        );
        let device = client(port, "device").await;
        device
            .publish("plant/a", QoS::AtMostOnce, false, "1")
            .await
            .expect("publish");
        assert_eq!(next_topic(&mut rx).await.as_deref(), Ok("plant/a"));

        // Someone who knows the id takes it over: rumqttd drops the link.
        let _thief = client(port, &first).await;
        assert!(
            next_topic(&mut rx).await.is_err(),
            "the link should be gone"
        );
        let mut rx = link.relink().expect("a spare");
        assert_ne!(link.client_id(), first);
        device
            .publish("plant/b", QoS::AtMostOnce, false, "2")
            .await
            .expect("publish");
        assert_eq!(next_topic(&mut rx).await.as_deref(), Ok("plant/b"));
        link.publish("cmd/x".into(), b"1".to_vec())
            .expect("publish on the spare");

        // Each spare serves once.
        for _ in 1..SPARE_LINKS {
            assert!(link.relink().is_some());
        }
        assert!(link.relink().is_none());
    }
}
