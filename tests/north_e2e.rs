//! The northbound (`[north]`) through a real Mosquitto: the gateway as a
//! Sparkplug B edge node (births, DDATA by alias, DCMD writes through the
//! checked path, NCMD rebirth, NDEATH on stop), store and forward across a
//! broker that goes away and comes back (nothing lost, the outage's changes
//! marked historical), and the UNS format (retained JSON, `/set` writes).
//!
//! Needs `FERRITE_TEST_MOSQUITTO=/usr/sbin/mosquitto` (CI installs Debian's
//! and sets it); without it each test says so and passes without running.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Api, Files, Proxy, counting_sim, free_port, tcp_device, wait_until};
use ferrite_proto::sparkplug::Payload;
use ferrite_proto::sparkplug::datatype as dt;
use ferrite_proto::sparkplug::payload::{Metric, metric, property_value};
use prost::Message as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value as Json, json};

const SECS: Duration = Duration::from_secs(15);

/// A Mosquitto of this test's own, with persistence in `dir` so that a
/// subscriber's session (and what is queued for it) outlives a restart.
struct Mosquitto {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Mosquitto {
    fn start() -> Option<Mosquitto> {
        let Some(bin) = std::env::var_os("FERRITE_TEST_MOSQUITTO").filter(|m| !m.is_empty()) else {
            eprintln!(
                "skipped: set FERRITE_TEST_MOSQUITTO=/usr/sbin/mosquitto to run the northbound through Mosquitto"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        // Started as root, Mosquitto drops to its own user: it must be able
        // to write its database here, or a restart forgets every session
        // (it logs "Permission denied" and goes on).
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod");
        let mut broker = Mosquitto {
            bin: bin.into(),
            port: free_port(),
            dir,
            child: None,
        };
        broker.up();
        Some(broker)
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
                self.port,
                self.dir.path().display()
            ),
        )
        .expect("mosquitto.conf");
        // Its log, across restarts, for a failure's message.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("mosquitto.log");
        let child = std::process::Command::new(&self.bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// The end of Mosquitto's log (connections, sessions, persistence).
    fn log_tail(&self) -> String {
        common::file_tail(&self.dir.path().join("mosquitto.log"), 3000)
    }

    /// SIGTERM: Mosquitto saves its sessions and goes.
    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            common::signal(&child, "TERM");
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Topic and payload of each message received, in order.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Everything published on `filter`, as a subscriber with a persistent
/// session (QoS 1) receives it, reconnecting by itself.
#[derive(Clone)]
struct Subscriber {
    seen: Received,
    /// Each CONNACK's session-present flag: whether the broker still had
    /// the subscriber's session (and what it queued) when it came back.
    sessions: Arc<Mutex<Vec<bool>>>,
    client: AsyncClient,
}

impl Subscriber {
    fn start(port: u16, filter: &str) -> Subscriber {
        let mut options =
            MqttOptions::new(format!("north-test-{}", free_port()), "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 100);
        let seen: Received = Arc::new(Mutex::new(Vec::new()));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let (sub, into, present) = (client.clone(), seen.clone(), sessions.clone());
        let filter = filter.to_string();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        present.lock().expect("sessions").push(ack.session_present);
                        let _ = sub.subscribe(&filter, QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        into.lock()
                            .expect("seen")
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Subscriber {
            seen,
            sessions,
            client,
        }
    }

    fn all(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().expect("seen").clone()
    }

    /// The Sparkplug messages on `topic`, decoded.
    fn payloads(&self, topic: &str) -> Vec<Payload> {
        self.all()
            .into_iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| Payload::decode(p.as_slice()).expect("a Sparkplug payload"))
            .collect()
    }

    /// Publishes a Sparkplug command (NCMD, DCMD) of `metrics` on `topic`.
    async fn command(&self, topic: &str, metrics: Vec<Metric>) {
        let payload = Payload {
            timestamp: Some(0),
            metrics,
            ..Payload::default()
        };
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.encode_to_vec())
            .await
            .expect("publish");
    }

    async fn wait_for(&self, topic: &str, count: usize) -> bool {
        wait_until(SECS, || async { self.payloads(topic).len() >= count }).await
    }
}

/// The counting device `d` (register n counts up) with a writable `sp`,
/// and `[north]` as given.
async fn world(
    north: &str,
) -> (
    Files,
    ferrite_sim::server::TcpSim,
    tokio::task::JoinHandle<()>,
) {
    let files = Files::new();
    let (sim, counter) = counting_sim(&files).await;
    files
        .write(
            "models/t.yaml",
            "kind: DeviceModel\nname: t\nproperties:\n  n: { type: int, modbus: { table: holding, address: 0, format: u32 } }\n  sp: { type: int, unit: rpm, max: 1000, access: readwrite, modbus: { table: holding, address: 10, format: u16 } }\n",
        )
        .write("devices/d.yaml", &tcp_device("d", "t", sim.addr.port(), 1, "20ms"));
    let config = std::fs::read_to_string(files.config()).expect("config");
    files.write("ferrite.toml", &format!("{config}[north]\n{north}"));
    (files, sim, counter)
}

fn named<'a>(p: &'a Payload, name: &str) -> Option<&'a Metric> {
    p.metrics.iter().find(|m| m.name.as_deref() == Some(name))
}

fn property<'a>(m: &'a Metric, key: &str) -> Option<&'a property_value::Value> {
    let set = m.properties.as_ref()?;
    let i = set.keys.iter().position(|k| k == key)?;
    set.values[i].value.as_ref()
}

async fn reading(api: &Api, device: &str, property: &str) -> Json {
    api.get(&format!("/api/v1/devices/{device}/properties/{property}"))
        .await
        .1["value"]
        .clone()
}

async fn refused_events(api: &Api) -> Vec<Json> {
    let (_, events) = api.get("/api/v1/events").await;
    events
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["kind"] == "north_write_refused")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparkplug_host_sees_births_data_its_writes_applied_rebirths_and_the_death() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let host = Subscriber::start(broker.port, "spBv1.0/plant/#");
    let (files, _sim, counter) = world(&format!(
        "broker = \"{}\"\ngroup = \"plant\"\nnode = \"gw-1\"\ninterval = \"50ms\"\n",
        broker.url()
    ))
    .await;
    let gw = files.start().await;
    let api = Api::new(gw.addr);

    assert!(
        host.wait_for("spBv1.0/plant/DBIRTH/gw-1/d", 1).await,
        "{:?}",
        host.all()
    );
    let nbirth = host.payloads("spBv1.0/plant/NBIRTH/gw-1").remove(0);
    assert_eq!(nbirth.seq, Some(0));
    let bd_seq = named(&nbirth, "bdSeq")
        .and_then(|m| m.value.clone())
        .expect("bdSeq");
    assert!(named(&nbirth, "Node Control/Rebirth").is_some());
    let dbirth = host.payloads("spBv1.0/plant/DBIRTH/gw-1/d").remove(0);
    let n = named(&dbirth, "n").expect("n in the DBIRTH");
    assert_eq!(n.datatype, Some(dt::INT64));
    let n_alias = n.alias.expect("an alias");
    let sp = named(&dbirth, "sp").expect("sp");
    assert_eq!(
        property(sp, "engUnit"),
        Some(&property_value::Value::StringValue("rpm".into()))
    );
    assert_eq!(
        property(sp, "readOnly"),
        Some(&property_value::Value::BooleanValue(false))
    );
    assert_eq!(
        property(n, "readOnly"),
        Some(&property_value::Value::BooleanValue(true))
    );

    // DDATA by alias, seq rising by one per message after the births.
    assert!(host.wait_for("spBv1.0/plant/DDATA/gw-1/d", 10).await);
    let ddata = host.payloads("spBv1.0/plant/DDATA/gw-1/d");
    let seqs: Vec<u64> = ddata.iter().filter_map(|p| p.seq).collect();
    assert_eq!(seqs[0], 2, "NBIRTH 0, DBIRTH 1, then 2");
    assert!(
        seqs.windows(2).all(|w| w[1] == (w[0] + 1) % 256),
        "{seqs:?}"
    );
    let metric = &ddata[0].metrics[0];
    assert_eq!(
        (metric.alias, metric.name.as_deref()),
        (Some(n_alias), None)
    );
    assert!(matches!(metric.value, Some(metric::Value::LongValue(_))));

    // DCMD: a write through the checked path, audited; one over the
    // model's max is refused with an event.
    let write = |value: u32| Metric {
        name: Some("sp".into()),
        datatype: Some(dt::INT32),
        value: Some(metric::Value::IntValue(value)),
        ..Metric::default()
    };
    host.command("spBv1.0/plant/DCMD/gw-1/d", vec![write(42)])
        .await;
    assert!(
        wait_until(SECS, || async {
            reading(&api, "d", "sp").await == json!(42)
        })
        .await,
        "{}",
        api.device("d").await
    );
    let (_, audit) = api.get("/api/v1/audit").await;
    assert!(
        audit
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["who"] == "north sparkplug DCMD")),
        "{audit}"
    );
    host.command("spBv1.0/plant/DCMD/gw-1/d", vec![write(5000)])
        .await;
    assert!(wait_until(SECS, || async { !refused_events(&api).await.is_empty() }).await);
    let refused = refused_events(&api).await;
    assert!(
        refused[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("out_of_range")),
        "{refused:?}"
    );
    assert_eq!(
        reading(&api, "d", "sp").await,
        json!(42),
        "the refused write changed nothing"
    );

    // NCMD Node Control/Rebirth: the births again, same bdSeq, seq from 0.
    let rebirth = Metric {
        name: Some("Node Control/Rebirth".into()),
        datatype: Some(dt::BOOLEAN),
        value: Some(metric::Value::BooleanValue(true)),
        ..Metric::default()
    };
    host.command("spBv1.0/plant/NCMD/gw-1", vec![rebirth]).await;
    assert!(host.wait_for("spBv1.0/plant/NBIRTH/gw-1", 2).await);
    let again = host.payloads("spBv1.0/plant/NBIRTH/gw-1").remove(1);
    assert_eq!(again.seq, Some(0));
    assert_eq!(
        named(&again, "bdSeq").and_then(|m| m.value.clone()),
        Some(bd_seq.clone())
    );
    assert!(host.wait_for("spBv1.0/plant/DBIRTH/gw-1/d", 2).await);

    // A clean stop publishes the NDEATH of this session's bdSeq.
    counter.abort();
    assert!(gw.stop().await);
    assert!(host.wait_for("spBv1.0/plant/NDEATH/gw-1", 1).await);
    let death = host.payloads("spBv1.0/plant/NDEATH/gw-1").remove(0);
    assert_eq!(
        named(&death, "bdSeq").and_then(|m| m.value.clone()),
        Some(bd_seq)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_stored_while_the_broker_is_away_arrive_in_order_marked_historical() {
    let Some(mut broker) = Mosquitto::start() else {
        return;
    };
    let host = Subscriber::start(broker.port, "spBv1.0/plant/#");
    // The gateway reaches the broker through a proxy that can stall the
    // link: bytes written into a silent connection are lost on the way.
    let proxy = Proxy::start(([127, 0, 0, 1], broker.port).into()).await;
    let (files, _sim, counter) = world(&format!(
        "broker = \"mqtt://{}\"\ngroup = \"plant\"\nnode = \"gw-1\"\nqos = 1\ninterval = \"50ms\"\n",
        proxy.addr
    ))
    .await;
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(host.wait_for("spBv1.0/plant/DDATA/gw-1/d", 5).await);

    // A silent link for 2 s, then dropped: the gateway reconnects.
    proxy.stall(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.stall(false);
    assert!(wait_until(SECS, || async { proxy.accepted() >= 2 }).await);
    // Then the broker itself away for 3 s.
    broker.down();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, north) = api.get("/api/v1/north").await;
    assert_eq!(north["status"]["connected"], json!(false), "{north}");
    assert!(
        north["status"]["backlog"].as_u64().is_some_and(|b| b > 20),
        "{north}"
    );
    broker.up();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            let (_, north) = api.get("/api/v1/north").await;
            north["status"]["connected"] == json!(true)
                && north["status"]["backlog"].as_u64() < Some(5)
        })
        .await,
        "{}",
        api.get("/api/v1/north").await.1
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    counter.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let history = api
        .get("/api/v1/devices/d/properties/n/history?since=2000-01-01T00:00:00Z&limit=10000")
        .await
        .1;
    let north_at_the_end = api.get("/api/v1/north").await.1;
    assert!(gw.stop().await);
    // The host's session outlived the broker's restart: what the broker
    // took while the host was not yet back was queued for it.
    let sessions = host.sessions.lock().expect("sessions").clone();
    assert!(
        sessions.len() >= 2 && sessions[1..].iter().all(|&present| present),
        "Mosquitto forgot the host's session across its restart ({sessions:?}): \
         the outage's changes could reach the broker before the host did again\n{}",
        broker.log_tail()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // n's alias, from the (first) DBIRTH.
    let dbirth = host.payloads("spBv1.0/plant/DBIRTH/gw-1/d").remove(0);
    let alias = named(&dbirth, "n").and_then(|m| m.alias).expect("alias");
    let mut got: Vec<(u64, i64, bool)> = Vec::new();
    for p in host.payloads("spBv1.0/plant/DDATA/gw-1/d") {
        for m in p.metrics.iter().filter(|m| m.alias == Some(alias)) {
            if let Some(metric::Value::LongValue(v)) = m.value {
                got.push((
                    m.timestamp.unwrap_or(0),
                    v as i64,
                    m.is_historical == Some(true),
                ));
            }
        }
    }
    let first = got.first().map(|g| g.0).expect("data before the outage");
    let stored: Vec<(u64, i64)> = history["points"]
        .as_array()
        .or_else(|| history.as_array())
        .expect("history points")
        .iter()
        .filter_map(|p| {
            let ts = chrono::DateTime::parse_from_rfc3339(p["ts"].as_str()?).ok()?;
            Some((ts.timestamp_millis() as u64, p["value"].as_i64()?))
        })
        .filter(|(ts, _)| *ts >= first)
        .collect();
    assert!(stored.len() > 100, "{} points stored", stored.len());
    let published: std::collections::BTreeSet<(u64, i64)> =
        got.iter().map(|g| (g.0, g.1)).collect();
    let missing: Vec<&(u64, i64)> = stored.iter().filter(|s| !published.contains(s)).collect();
    let historical = got.iter().filter(|g| g.2).count();
    assert!(
        missing.is_empty(),
        "{} of {} stored changes never reached the host: {:?}\n\
         the host received {} (historical {}); its CONNACKs' session-present flags {:?}\n\
         the gateway's north at the end: {north_at_the_end}\nMosquitto's log:\n{}",
        missing.len(),
        stored.len(),
        &missing[..missing.len().min(10)],
        got.len(),
        historical,
        sessions,
        broker.log_tail()
    );
    eprintln!(
        "{} changes stored since the first DDATA, {} received ({historical} historical), none missing",
        stored.len(),
        got.len()
    );
    assert!(
        historical > 20,
        "the outage's changes come marked historical ({historical})"
    );
    // QoS 1 may send again what was delivered but not acknowledged before
    // the cut; first arrivals are in order.
    let mut firsts = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for g in &got {
        if seen.insert(g.0) {
            firsts.push(g.0);
        }
    }
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "out of order: {firsts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uns_publishes_retained_json_and_takes_writes_on_set() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let (files, _sim, counter) = world(&format!(
        "broker = \"{}\"\nformat = \"uns\"\nuns_root = \"acme/plant-1/line-1\"\ninterval = \"50ms\"\n",
        broker.url()
    ))
    .await;
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    let client = Subscriber::start(broker.port, "acme/plant-1/line-1/#");
    let value_of = |topic: &str| -> Option<Json> {
        let all = client.all();
        let (_, p) = all.iter().rev().find(|(t, _)| t == topic)?;
        serde_json::from_slice(p).ok()
    };
    assert!(
        wait_until(SECS, || async {
            value_of("acme/plant-1/line-1/d/n").is_some()
        })
        .await,
        "{:?}",
        client.all().iter().map(|m| m.0.clone()).collect::<Vec<_>>()
    );
    let n = value_of("acme/plant-1/line-1/d/n").expect("n");
    assert!(n["value"].is_i64() && n["ts"].is_u64(), "{n}");
    assert_eq!(
        value_of("acme/plant-1/line-1/_status").map(|s| s["online"].clone()),
        Some(json!(true))
    );

    client
        .client
        .publish(
            "acme/plant-1/line-1/d/sp/set",
            QoS::AtLeastOnce,
            false,
            "42",
        )
        .await
        .expect("publish");
    assert!(
        wait_until(SECS, || async {
            reading(&api, "d", "sp").await == json!(42)
        })
        .await
    );
    assert!(
        wait_until(SECS, || async {
            value_of("acme/plant-1/line-1/d/sp")
                .is_some_and(|v| v["value"] == json!(42) && v["unit"] == json!("rpm"))
        })
        .await
    );
    client
        .client
        .publish(
            "acme/plant-1/line-1/d/sp/set",
            QoS::AtLeastOnce,
            false,
            "fast please",
        )
        .await
        .expect("publish");
    assert!(wait_until(SECS, || async { !refused_events(&api).await.is_empty() }).await);
    let (_, north) = api.get("/api/v1/north").await;
    assert_eq!(
        (north["format"].clone(), north["status"]["writes"].clone()),
        (json!("uns"), json!(1)),
        "{north}"
    );
    counter.abort();
    assert!(gw.stop().await);
    assert!(
        wait_until(SECS, || async {
            value_of("acme/plant-1/line-1/_status").is_some_and(|s| s["online"] == json!(false))
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_across_many_devices_goes_out_whole_in_full_messages_with_seq_unbroken() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let host = Subscriber::start(broker.port, "spBv1.0/plant/#");
    let files = Files::new();
    let mut model = String::from("kind: DeviceModel\nname: m\nproperties:\n");
    for p in 0..5 {
        model.push_str(&format!(
            "  p{p}: {{ type: float, mqtt: {{ topic: \"x/{{device}}/p{p}\" }} }}\n"
        ));
    }
    files.write("models/m.yaml", &model);
    for d in 0..40 {
        files.write(
            &format!("devices/d{d}.yaml"),
            &format!("kind: Device\nname: d{d}\nmodel: m\nmqtt: {{}}\n"),
        );
    }
    let config = std::fs::read_to_string(files.config()).expect("config");
    files.write(
        "ferrite.toml",
        &format!(
            "{config}[mqtt]\nlisten = \"127.0.0.1:{}\"\n[north]\nbroker = \"{}\"\ngroup = \"plant\"\nnode = \"gw-1\"\nqos = 1\ninterval = \"50ms\"\n",
            free_port(),
            broker.url()
        ),
    );
    let gw = files.start().await;
    assert!(host.wait_for("spBv1.0/plant/DBIRTH/gw-1/d39", 1).await);
    // 20 000 changes, round robin over the devices, straight into the store
    // (as the writer commits them): far more than one read, one window or
    // the client's queue.
    let store = gw.state.store.clone();
    let total = 20_000usize;
    tokio::task::spawn_blocking(move || {
        for batch in 0..total / 1000 {
            let changes: Vec<ferrite_gateway::store::Change> = (0..1000)
                .map(|i| {
                    let n = batch * 1000 + i;
                    ferrite_gateway::store::Change {
                        device: format!("d{}", n % 40).into(),
                        property: format!("p{}", (n / 40) % 5).into(),
                        at: ferrite_gateway::store::Stamped {
                            ts: 1_700_000_000_000_000 + n as i64 * 1000,
                            value: ferrite_models::Value::Float(n as f64),
                        },
                    }
                })
                .collect();
            store.commit(&changes).expect("commit");
        }
    })
    .await
    .expect("commits");
    let received = || {
        host.all()
            .into_iter()
            .filter(|(t, _)| t.starts_with("spBv1.0/plant/DDATA/"))
            .map(|(_, p)| Payload::decode(p.as_slice()).expect("payload"))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(30), || async {
            received().iter().map(|p| p.metrics.len()).sum::<usize>() >= total
        })
        .await,
        "{} of {total}: {}",
        received().iter().map(|p| p.metrics.len()).sum::<usize>(),
        Api::new(gw.addr).get("/api/v1/north").await.1
    );
    let ddata = received();
    let values: std::collections::BTreeSet<i64> = ddata
        .iter()
        .flat_map(|p| p.metrics.iter())
        .filter_map(|m| match m.value {
            Some(metric::Value::DoubleValue(v)) => Some(v as i64),
            _ => None,
        })
        .collect();
    assert_eq!(values.len(), total, "every change, once");
    let per_message = total as f64 / ddata.len() as f64;
    assert!(
        per_message >= 10.0,
        "{per_message:.1} metrics per DDATA: not grouped by device"
    );
    let seqs: Vec<u64> = ddata.iter().filter_map(|p| p.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == (w[0] + 1) % 256),
        "a Sparkplug seq gap would make a host ask for a rebirth"
    );
    let (_, north) = Api::new(gw.addr).get("/api/v1/north").await;
    assert_eq!(
        north["status"]["sessions"],
        json!(1),
        "one session throughout: {north}"
    );
    assert!(gw.stop().await);
}
