//! MQTT end to end: the gateway's embedded broker, with rumqttc clients as
//! devices and as an HMI, over real sockets; Sparkplug B through the
//! simulator's edge node.

mod common;

use std::time::Duration;

use common::{Api, Files, free_port, wait_until};
use ferrite_models::Value;
use ferrite_proto::sparkplug::Payload;
use ferrite_proto::sparkplug::payload::Metric;
use ferrite_sim::mqtt_publisher::{MqttSim, SimMqtt};
use prost::Message;
use rumqttc::{AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::sync::mpsc;

const PLAIN_MODEL: &str = r#"kind: DeviceModel
name: sensor
properties:
  t:     { type: float, mqtt: { topic: "s/{device}/state", json: /t } }
  h:     { type: float, mqtt: { topic: "s/{device}/state", json: /env/h } }
  count: { type: int, mqtt: { topic: "s/{device}/count" } }
  on:    { type: bool, access: readwrite, mqtt: { topic: "s/{device}/on", command: "s/{device}/on/set" } }
  sp:    { type: float, access: readwrite, min: 0, max: 100, mqtt: { topic: "s/{device}/state", json: /sp, command: "s/{device}/sp/set", confirm: 1s } }
"#;

const SPB_MODEL: &str = r#"kind: DeviceModel
name: tank
properties:
  level: { type: float, mqtt: { metric: "Inputs/Level" } }
  count: { type: int, mqtt: { metric: "Inputs/Count" } }
  pump:  { type: bool, access: readwrite, mqtt: { metric: "Outputs/Pump", confirm: 2s } }
"#;

/// A project with an MQTT broker on a free port; `extra` goes into `[mqtt]`.
fn files(port: u16, extra: &str) -> Files {
    let files = Files::new();
    files.write(
        "ferrite.toml",
        &format!(
            "[gateway]\nid = \"test\"\ndata_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n"
        ),
    );
    files
}

/// A connected rumqttc client whose events arrive on the receiver.
struct Client {
    mqtt: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    fn start(port: u16, id: &str, login: Option<(&str, &str)>, will: Option<LastWill>) -> Client {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some((u, p)) = login {
            options.set_credentials(u, p);
        }
        if let Some(will) = will {
            options.set_last_will(will);
        }
        let (mqtt, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if tx
                    .send(event.map_err(|e: ConnectionError| e.to_string()))
                    .is_err()
                {
                    return;
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Client { mqtt, events, task }
    }

    /// Waits for the CONNACK; `Err` with the first error instead.
    async fn connected(&mut self) -> Result<(), String> {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Err("the client stopped".into()),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| Err("no CONNACK within 10 s".into()))
    }

    /// The next publish received within `limit`.
    async fn next_publish(&mut self, limit: Duration) -> Option<(String, Vec<u8>)> {
        let wait = async {
            loop {
                if let Ok(Event::Incoming(Packet::Publish(p))) = self.events.recv().await? {
                    return Some((p.topic, p.payload.to_vec()));
                }
            }
        };
        tokio::time::timeout(limit, wait).await.ok().flatten()
    }

    /// Waits up to 5 s for the gateway's NCMD `Node Control/Rebirth` to
    /// node `g/n1` (`what` names it in the failure).
    async fn expect_rebirth_request(&mut self, what: &str) {
        let (topic, payload) = self
            .next_publish(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no {what} within 5 s"));
        assert_eq!(topic, "spBv1.0/g/NCMD/n1");
        let request = Payload::decode(payload.as_slice()).expect("Sparkplug");
        assert_eq!(
            request.metrics[0].name.as_deref(),
            Some("Node Control/Rebirth")
        );
    }

    async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.mqtt
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish queued");
    }

    /// Drops the connection without a DISCONNECT, as a crash or a cut cable
    /// would.
    fn kill(self) {
        self.task.abort();
    }
}

async fn property(api: &Api, device: &str, name: &str) -> serde_json::Value {
    api.get(&format!("/api/v1/devices/{device}/properties/{name}"))
        .await
        .1
}

async fn wait_value(api: &Api, device: &str, name: &str, want: serde_json::Value) {
    let ok = wait_until(Duration::from_secs(10), || async {
        property(api, device, name).await["value"] == want
    })
    .await;
    assert!(
        ok,
        "{device}.{name} never became {want}: {}",
        property(api, device, name).await
    );
}

async fn metric(api: &Api, name: &str) -> u64 {
    let res = reqwest::get(format!("{}/metrics", api.base))
        .await
        .expect("metrics");
    let text = res.text().await.expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn json_and_bare_publishes_show_up_and_malformed_ones_are_counted() {
    let port = free_port();
    let files = files(port, "max_payload = 2048");
    files.write("models/sensor.yaml", PLAIN_MODEL).write(
        "devices/d1.yaml",
        "kind: Device\nname: d1\nmodel: sensor\nmqtt: {}\n",
    );
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert_eq!(api.status("d1").await, "offline");
    let waits = wait_until(Duration::from_secs(5), || async {
        api.error("d1")
            .await
            .contains("nothing published yet on s/d1/count, s/d1/on, s/d1/state")
    })
    .await;
    assert!(
        waits,
        "the device says which topics it waits for: {}",
        api.error("d1").await
    );

    let mut dev = Client::start(port, "d1", None, None);
    dev.connected().await.expect("anonymous clients connect");
    dev.publish("s/d1/state", r#"{"t": 21.5, "env": {"h": 40}, "sp": 10}"#)
        .await;
    dev.publish("s/d1/count", "7").await;
    wait_value(&api, "d1", "t", json!(21.5)).await;
    wait_value(&api, "d1", "count", json!(7)).await;
    assert_eq!(property(&api, "d1", "h").await["value"], json!(40.0));
    assert_eq!(api.status("d1").await, "online");

    // Malformed: counted, the properties go bad, the device stays online
    // and the next good payload is taken.
    let before = metric(&api, "ferrite_malformed_payloads_total").await;
    dev.publish("s/d1/state", "{\"t\": 22, ").await;
    dev.publish("s/d1/count", "seven").await;
    let ok = wait_until(Duration::from_secs(5), || async {
        property(&api, "d1", "count").await["quality"] == "bad"
            && property(&api, "d1", "t").await["quality"] == "bad"
    })
    .await;
    assert!(ok, "{}", api.device("d1").await);
    assert!(metric(&api, "ferrite_malformed_payloads_total").await >= before + 3);
    assert_eq!(api.status("d1").await, "online");
    dev.publish("s/d1/count", "8").await;
    wait_value(&api, "d1", "count", json!(8)).await;
    assert_eq!(property(&api, "d1", "count").await["quality"], "good");

    // Over max_payload: the broker drops that client; the gateway and
    // other clients carry on.
    dev.publish("s/d1/state", vec![b' '; 4096]).await;
    let dropped = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Err(_)) | None = dev.events.recv().await {
                return;
            }
        }
    })
    .await
    .is_ok();
    assert!(dropped, "a payload over max_payload ends the connection");
    let mut other = Client::start(port, "d1-again", None, None);
    other.connected().await.expect("the broker still serves");
    other.publish("s/d1/count", "9").await;
    wait_value(&api, "d1", "count", json!(9)).await;
    gw.stop().await;
}

#[tokio::test]
async fn auth_rejects_a_wrong_password_and_admits_the_right_one() {
    let port = free_port();
    let files = files(
        port,
        "[[mqtt.users]]\nusername = \"hmi\"\npassword_file = \"hmi.pass\"\n",
    );
    files
        .write("hmi.pass", "s3cret\n")
        .write("models/sensor.yaml", PLAIN_MODEL)
        .write(
            "devices/d1.yaml",
            "kind: Device\nname: d1\nmodel: sensor\nmqtt: {}\n",
        );
    let gw = files.start().await;
    let api = Api::new(gw.addr);

    let mut wrong = Client::start(port, "intruder", Some(("hmi", "guess")), None);
    assert!(
        wrong.connected().await.is_err(),
        "a wrong password is refused"
    );
    let mut anonymous = Client::start(port, "anon", None, None);
    assert!(anonymous.connected().await.is_err(), "no login is refused");
    let mut right = Client::start(port, "hmi-1", Some(("hmi", "s3cret")), None);
    right
        .connected()
        .await
        .expect("the right password is accepted");
    right.publish("s/d1/count", "3").await;
    wait_value(&api, "d1", "count", json!(3)).await;
    gw.stop().await;
}

#[tokio::test]
async fn rest_writes_publish_on_the_command_topic_and_wait_for_confirmation() {
    let port = free_port();
    let files = files(port, "");
    files.write("models/sensor.yaml", PLAIN_MODEL).write(
        "devices/d1.yaml",
        "kind: Device\nname: d1\nmodel: sensor\nmqtt: {}\n",
    );
    let gw = files.start().await;
    let api = Api::new(gw.addr);

    // Offline: refused, nothing is published.
    let (code, body) = api.write("d1", "on", json!(true)).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not sent")
    );

    let mut dev = Client::start(port, "d1", None, None);
    dev.connected().await.expect("connect");
    dev.mqtt
        .subscribe("s/d1/+/set", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(200)).await;
    dev.publish("s/d1/on", "false").await;
    api.expect_status("d1", "online", Duration::from_secs(5))
        .await;

    // Without `confirm`: 202 once published; the device sees the bare value.
    let (code, body) = api.write("d1", "on", json!(true)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body, json!({"value": true, "confirmed": false}));
    let (topic, payload) = dev
        .next_publish(Duration::from_secs(5))
        .await
        .expect("a command");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("s/d1/on/set", &b"true"[..])
    );

    // With `confirm` and a device that does not answer: 504 after 1 s.
    let (code, body) = api.write("d1", "sp", json!(42.5)).await;
    assert_eq!(code, 504, "{body}");
    let (topic, payload) = dev
        .next_publish(Duration::from_secs(5))
        .await
        .expect("a command");
    assert_eq!(topic, "s/d1/sp/set");
    assert_eq!(payload, br#"{"sp":42.5}"#);

    // With `confirm` and a device that reports the new value: 200 with it.
    let echo = {
        let mqtt = dev.mqtt.clone();
        tokio::spawn(async move {
            while let Some((topic, payload)) = dev.next_publish(Duration::from_secs(10)).await {
                if topic == "s/d1/sp/set" {
                    let v: serde_json::Value = serde_json::from_slice(&payload).expect("json");
                    let state = json!({"t": 20, "env": {"h": 30}, "sp": v["sp"]}).to_string();
                    mqtt.publish("s/d1/state", QoS::AtLeastOnce, false, state)
                        .await
                        .expect("publish");
                }
            }
        })
    };
    let (code, body) = api.write("d1", "sp", json!(55)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["value"], json!(55.0));
    assert_eq!(body["quality"], "good");
    // Limits are checked before anything is published.
    let (code, _) = api.write("d1", "sp", json!(101)).await;
    assert_eq!(code, 400);
    // Each attempt is in the audit log once, with how it ended; the
    // confirmed one came in with its read-back.
    let (_, audit) = api.get("/api/v1/audit?limit=10").await;
    let mut results: Vec<(&str, &str)> = audit
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| Some((e["property"].as_str()?, e["result"].as_str()?)))
        .collect();
    results.reverse();
    assert_eq!(
        results,
        [
            ("on", "device_unreachable"),
            ("on", "sent"),
            ("sp", "device_timeout"),
            ("sp", "ok"),
            ("sp", "out_of_range"),
        ],
        "{audit}"
    );
    echo.abort();
    gw.stop().await;
}

#[tokio::test]
async fn a_will_on_the_status_topic_and_silence_take_devices_offline() {
    let port = free_port();
    let files = files(port, "");
    files
        .write("models/sensor.yaml", PLAIN_MODEL)
        .write(
            "devices/d1.yaml",
            "kind: Device\nname: d1\nmodel: sensor\nmqtt: { status: { topic: \"s/{device}/lwt\", online: Online, offline: Offline } }\n",
        )
        .write("devices/d2.yaml", "kind: Device\nname: d2\nmodel: sensor\ntimeout: 1s\nmqtt: {}\n");
    let gw = files.start().await;
    let api = Api::new(gw.addr);

    let will = LastWill::new("s/d1/lwt", "Offline", QoS::AtLeastOnce, false);
    let mut d1 = Client::start(port, "d1", None, Some(will));
    d1.connected().await.expect("connect");
    d1.publish("s/d1/lwt", "Online").await;
    api.expect_status("d1", "online", Duration::from_secs(5))
        .await;
    d1.publish("s/d1/count", "1").await;
    wait_value(&api, "d1", "count", json!(1)).await;
    d1.kill();
    api.expect_status("d1", "offline", Duration::from_secs(5))
        .await;
    assert!(
        api.error("d1").await.contains("Offline"),
        "{}",
        api.error("d1").await
    );
    assert_eq!(property(&api, "d1", "count").await["quality"], "stale");

    let mut d2 = Client::start(port, "d2", None, None);
    d2.connected().await.expect("connect");
    d2.publish("s/d2/count", "5").await;
    api.expect_status("d2", "online", Duration::from_secs(5))
        .await;
    api.expect_status("d2", "offline", Duration::from_secs(5))
        .await;
    assert!(
        api.error("d2").await.contains("timeout"),
        "{}",
        api.error("d2").await
    );
    d2.publish("s/d2/count", "6").await;
    api.expect_status("d2", "online", Duration::from_secs(5))
        .await;
    gw.stop().await;
}

#[tokio::test]
async fn sparkplug_births_data_commands_and_deaths() {
    let port = free_port();
    let files = files(port, "");
    files.write("models/tank.yaml", SPB_MODEL).write(
        "devices/t1.yaml",
        "kind: Device\nname: t1\nmodel: tank\nmqtt: { sparkplug: { group: plant, node: edge-1, device: tank-1 } }\n",
    );
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    let project = files.project();
    let initial = |_: &str, p: &ferrite_models::Property| match p.ty {
        ferrite_models::model::ValueType::Bool => Value::Bool(false),
        ferrite_models::model::ValueType::Int => Value::Int(-5),
        _ => Value::Float(12.5),
    };
    let broker = format!("127.0.0.1:{port}").parse().expect("addr");
    let sim = MqttSim::start(
        &project,
        broker,
        SimMqtt::default(),
        Duration::from_millis(100),
        &initial,
    );

    api.expect_status("t1", "online", Duration::from_secs(10))
        .await;
    wait_value(&api, "t1", "level", json!(12.5)).await;
    assert_eq!(property(&api, "t1", "count").await["value"], json!(-5));
    // DDATA carries aliases only: new values still land.
    sim.set("t1", "level", Value::Float(33.25));
    wait_value(&api, "t1", "level", json!(33.25)).await;

    // A write is a DCMD; the node takes it and reports it back.
    let (code, body) = api.write("t1", "pump", json!(true)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["value"], json!(true));
    assert_eq!(sim.get("t1", "pump"), Some(Value::Bool(true)));

    // The node's connection dies: its NDEATH will takes the device offline;
    // it comes back with a new birth.
    sim.drop_client("t1", Duration::from_millis(1500));
    api.expect_status("t1", "offline", Duration::from_secs(5))
        .await;
    assert!(
        api.error("t1").await.contains("NDEATH"),
        "{}",
        api.error("t1").await
    );
    api.expect_status("t1", "online", Duration::from_secs(10))
        .await;
    sim.stop();
    gw.stop().await;
}

/// A gateway whose device `n1` is the Sparkplug node `g/n1` (`extra` goes
/// into `[mqtt]`), and a connected client to play that node.
async fn foreign_node(extra: &str) -> (Files, ferrite_gateway::runtime::Gateway, Api, Client) {
    let port = free_port();
    let files = files(port, extra);
    files.write("models/tank.yaml", SPB_MODEL).write(
        "devices/n1.yaml",
        "kind: Device\nname: n1\nmodel: tank\nmqtt: { sparkplug: { group: g, node: n1 } }\n",
    );
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    let mut node = Client::start(port, "n1", None, None);
    node.connected().await.expect("connect");
    (files, gw, api, node)
}

#[tokio::test]
async fn sparkplug_from_a_foreign_node_is_decoded_and_unknown_aliases_ask_for_rebirth() {
    let (_files, gw, api, mut node) = foreign_node("").await;
    node.mqtt
        .subscribe("spBv1.0/g/NCMD/n1", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // NDATA before any birth, by an alias the gateway never saw born: not
    // taken, and the gateway asks for a rebirth.
    let data = Payload {
        seq: Some(1),
        metrics: vec![Metric {
            alias: Some(7),
            datatype: Some(9),
            value: Some(ferrite_proto::sparkplug::payload::metric::Value::FloatValue(1.0)),
            ..Metric::default()
        }],
        ..Payload::default()
    };
    node.publish("spBv1.0/g/NDATA/n1", data.encode_to_vec())
        .await;
    node.expect_rebirth_request("a rebirth request").await;

    // NBIRTH built by hand from the Tahu schema: Int16 -2 as two's
    // complement in int_value, a Double by name with alias.
    let birth = Payload {
        seq: Some(0),
        metrics: vec![
            Metric {
                name: Some("bdSeq".into()),
                datatype: Some(4),
                value: Some(ferrite_proto::sparkplug::payload::metric::Value::LongValue(
                    3,
                )),
                ..Metric::default()
            },
            Metric {
                name: Some("Inputs/Level".into()),
                alias: Some(7),
                datatype: Some(10),
                value: Some(ferrite_proto::sparkplug::payload::metric::Value::DoubleValue(61.5)),
                ..Metric::default()
            },
            Metric {
                name: Some("Inputs/Count".into()),
                alias: Some(8),
                datatype: Some(2),
                value: Some(ferrite_proto::sparkplug::payload::metric::Value::IntValue(
                    0xFFFE,
                )),
                ..Metric::default()
            },
        ],
        ..Payload::default()
    };
    node.publish("spBv1.0/g/NBIRTH/n1", birth.encode_to_vec())
        .await;
    wait_value(&api, "n1", "level", json!(61.5)).await;
    assert_eq!(property(&api, "n1", "count").await["value"], json!(-2));
    node.publish("spBv1.0/g/NDATA/n1", data.encode_to_vec())
        .await;
    wait_value(&api, "n1", "level", json!(1.0)).await;

    // Garbage on the node's topic: counted, never fatal.
    node.publish("spBv1.0/g/NDATA/n1", vec![0xff; 32]).await;
    let counted = wait_until(Duration::from_secs(5), || async {
        metric(&api, "ferrite_malformed_payloads_total").await >= 1
    })
    .await;
    assert!(counted);
    // A stale NDEATH (an older bdSeq) does not kill the new session; the
    // current one does.
    let death = |seq: u64| Payload {
        metrics: vec![Metric {
            name: Some("bdSeq".into()),
            datatype: Some(4),
            value: Some(ferrite_proto::sparkplug::payload::metric::Value::LongValue(
                seq,
            )),
            ..Metric::default()
        }],
        ..Payload::default()
    };
    node.publish("spBv1.0/g/NDEATH/n1", death(2).encode_to_vec())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.status("n1").await, "online");
    node.publish("spBv1.0/g/NDEATH/n1", death(3).encode_to_vec())
        .await;
    api.expect_status("n1", "offline", Duration::from_secs(5))
        .await;
    gw.stop().await;
}

/// The gateway as a Sparkplug host over a real broker connection: its
/// STATE (retained, answered when someone says it is offline), and a gap in
/// a node's `seq` (the message ahead of it waits the reorder timeout, then
/// the node's other values go stale and it is asked to rebirth).
#[tokio::test]
async fn sparkplug_host_state_and_a_seq_gap_over_the_broker() {
    use ferrite_proto::sparkplug::payload::metric::Value as V;
    let (_files, gw, api, mut node) =
        foreign_node("[mqtt.sparkplug]\nhost_id = \"ferrite\"\nreorder_timeout = \"500ms\"").await;

    // tck-id-host-topic-phid-birth-topic/-retain/-payload: the STATE is
    // there, retained, for a node that subscribes after the host started.
    node.mqtt
        .subscribe("spBv1.0/STATE/ferrite", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (topic, body) = node
        .next_publish(Duration::from_secs(5))
        .await
        .expect("the retained STATE");
    assert_eq!(topic, "spBv1.0/STATE/ferrite");
    let state: serde_json::Value = serde_json::from_slice(&body).expect("STATE is JSON");
    assert_eq!(state["online"], json!(true), "{state}");
    assert!(state["timestamp"].as_u64().is_some(), "{state}");
    // tck-id-message-flow-hid-sparkplug-state-message-delivered.
    node.publish(
        "spBv1.0/STATE/ferrite",
        json!({"online": false, "timestamp": 1}).to_string(),
    )
    .await;
    let answered = async {
        while let Some((topic, body)) = node.next_publish(Duration::from_secs(5)).await {
            let state: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if topic == "spBv1.0/STATE/ferrite" && state["online"] == json!(true) {
                return true;
            }
        }
        false
    };
    assert!(answered.await, "the host did not restate that it is online");

    node.mqtt
        .subscribe("spBv1.0/g/NCMD/n1", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metric = |name: Option<&str>, alias: u64, value: V| Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        datatype: Some(if matches!(value, V::DoubleValue(_)) {
            10
        } else {
            4
        }),
        value: Some(value),
        ..Metric::default()
    };
    let birth = Payload {
        seq: Some(0),
        timestamp: Some(1),
        metrics: vec![
            metric(Some("bdSeq"), 100, V::LongValue(0)),
            metric(Some("Inputs/Level"), 1, V::DoubleValue(1.0)),
            metric(Some("Inputs/Count"), 2, V::LongValue(5)),
        ],
        ..Payload::default()
    };
    node.publish("spBv1.0/g/NBIRTH/n1", birth.encode_to_vec())
        .await;
    wait_value(&api, "n1", "level", json!(1.0)).await;
    let data = |seq: u64, level: f64| Payload {
        seq: Some(seq),
        timestamp: Some(1),
        metrics: vec![metric(None, 1, V::DoubleValue(level))],
        ..Payload::default()
    };
    node.publish("spBv1.0/g/NDATA/n1", data(1, 2.0).encode_to_vec())
        .await;
    wait_value(&api, "n1", "level", json!(2.0)).await;
    // seq 2 is lost on the way; 3 waits for it, then is taken.
    node.publish("spBv1.0/g/NDATA/n1", data(3, 4.0).encode_to_vec())
        .await;
    node.expect_rebirth_request("a rebirth request after the reorder timeout")
        .await;
    wait_value(&api, "n1", "level", json!(4.0)).await;
    assert_eq!(property(&api, "n1", "level").await["quality"], "good");
    // Count may have changed in the lost message: stale until the birth.
    let count = property(&api, "n1", "count").await;
    assert_eq!(
        (count["value"].clone(), count["quality"].clone()),
        (json!(5), json!("stale"))
    );
    node.publish("spBv1.0/g/NBIRTH/n1", birth.encode_to_vec())
        .await;
    let fresh = wait_until(Duration::from_secs(5), || async {
        property(&api, "n1", "count").await["quality"] == "good"
    })
    .await;
    assert!(fresh, "{}", property(&api, "n1", "count").await);
    gw.stop().await;
}
