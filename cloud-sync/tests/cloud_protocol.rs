//! The `ferrite-cloud` process against a hand-driven gateway: a rumqttc
//! client that speaks the protocol step by step, so that redeliveries, gaps,
//! strangers and garbage can be sent on purpose.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferrite_models::Value;
use ferrite_sync::delta::Change;
use ferrite_sync::outbox::Outbox;
use ferrite_sync::session::Batcher;
use ferrite_sync::topics::{self, Down, Up};
use ferrite_sync::wire::{Ack, Hello, Resume};
use prost::Message;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::Value as Json;

const GATEWAY: &str = "gw-proto";

/// The control plane, killed when dropped.
struct Cloud {
    child: Child,
    rest: String,
    mqtt: u16,
    _data: tempfile::TempDir,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ferrite-cloud` on ports of its own choosing (port 0: no port
/// picked here can be taken by a neighbour before the child binds it) and
/// reads them from the line it prints once it serves. A start that fails
/// or hangs panics with the child's log.
async fn cloud() -> Cloud {
    let data = tempfile::tempdir().expect("tempdir");
    let log = data.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite-cloud"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("ferrite-cloud starts");
    let stdout = child.stdout.take().expect("stdout");
    // "ferrite-cloud: REST on http://ADDR, gateways connect to mqtt://ADDR";
    // the rest of its output is drained, so that the pipe never fills or
    // breaks under it.
    let (first_line, read) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let _ = first_line.send(lines.next());
        lines.for_each(drop);
    });
    let line = tokio::time::timeout(Duration::from_secs(60), read).await;
    let addresses = match line {
        Ok(Ok(Some(Ok(line)))) => line
            .split_once("REST on http://")
            .and_then(|(_, rest)| rest.split_once(", gateways connect to mqtt://"))
            .and_then(|(rest, mqtt)| {
                let mqtt: std::net::SocketAddr = mqtt.trim().parse().ok()?;
                Some((rest.to_string(), mqtt.port()))
            }),
        _ => None,
    };
    let Some((rest, mqtt)) = addresses else {
        let _ = child.kill();
        let status = child.wait();
        panic!(
            "ferrite-cloud did not start ({status:?}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    Cloud {
        child,
        rest: format!("http://{rest}"),
        mqtt,
        _data: data,
    }
}

async fn get(cloud: &Cloud, path: &str) -> Json {
    reqwest::get(format!("{}{path}", cloud.rest))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

/// A hand-driven gateway.
struct Fake {
    client: AsyncClient,
    events: EventLoop,
}

impl Fake {
    async fn connect(cloud: &Cloud) -> Fake {
        let mut options = MqttOptions::new("fake-gateway", "127.0.0.1", cloud.mqtt);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 64);
        client
            .subscribe(topics::all_down(GATEWAY), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        // The control plane's REST API may answer before its own MQTT
        // subscription holds; it announces that with its retained `online`
        // (published after subscribing), as real gateways see it.
        client
            .subscribe(topics::CLOUD_STATUS, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p))))
                    if p.topic == topics::CLOUD_STATUS && p.payload.as_ref() == b"online" =>
                {
                    break;
                }
                Ok(Ok(_)) => {}
                other => panic!("the control plane never said online: {other:?}"),
            }
        }
        Fake { client, events }
    }

    async fn send(&self, kind: Up, payload: Vec<u8>) {
        self.client
            .publish(topics::up(GATEWAY, kind), QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    /// The next message from the cloud, within 5 s.
    async fn next(&mut self) -> (Down, Vec<u8>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.poll())
                .await
                .expect("the cloud answers within 5 s")
                .expect("connection");
            if let Event::Incoming(Packet::Publish(p)) = event
                && let Some(kind) = topics::parse_down(GATEWAY, &p.topic)
            {
                return (kind, p.payload.to_vec());
            }
        }
    }

    /// Nothing from the cloud for `quiet`, but keeps the connection alive.
    async fn silence(&mut self, quiet: Duration) -> Option<(Down, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(event) = tokio::time::timeout_at(deadline, self.events.poll()).await {
            if let Ok(Event::Incoming(Packet::Publish(p))) = event
                && let Some(kind) = topics::parse_down(GATEWAY, &p.topic)
            {
                return Some((kind, p.payload.to_vec()));
            }
        }
        None
    }

    async fn expect_ack(&mut self) -> u64 {
        let (kind, payload) = self.next().await;
        assert_eq!(kind, Down::Ack);
        Ack::decode(payload.as_slice()).expect("Ack").seq
    }

    async fn expect_resume(&mut self) -> Resume {
        let (kind, payload) = self.next().await;
        assert_eq!(kind, Down::Resume);
        Resume::decode(payload.as_slice()).expect("Resume")
    }
}

fn outbox(dir: &tempfile::TempDir) -> Outbox {
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .open()
        .expect("sled");
    let outbox = Outbox::open(&db, u64::MAX).expect("outbox");
    let changes: Vec<Change> = (0..90)
        .map(|n| Change {
            device: format!("dev{}", n % 3),
            property: "t".into(),
            ts_ms: 1_795_000_000_000 + n * 1000,
            value: Value::Float(20.0 + n as f64 / 10.0),
        })
        .collect();
    outbox.append(&changes).expect("append");
    outbox
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_apply_once_and_gaps_strangers_and_garbage_are_refused() {
    let cloud = cloud().await;
    let mut gw = Fake::connect(&cloud).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = outbox(&dir);
    let epoch = 77;

    // Garbage first: no answer, no crash.
    gw.send(Up::Hello, vec![0xff, 0xff, 0xff]).await;
    gw.send(Up::Batch, b"not zstd".to_vec()).await;
    gw.send(Up::Reported, vec![0x08]).await;
    // A batch before any Hello: told where to resume.
    let mut batcher = Batcher::new(GATEWAY);
    batcher.max_points = 30;
    batcher.epoch = epoch;
    let early = batcher.next(&outbox, 1).expect("read").expect("batch");
    gw.send(Up::Batch, early.bytes.clone()).await;
    assert_eq!(gw.expect_resume().await.last_applied_seq, 0);

    let hello = Hello {
        gateway_id: GATEWAY.into(),
        epoch,
        outbox_last: 90,
        ..Hello::default()
    };
    gw.send(Up::Hello, hello.encode_to_vec()).await;
    let resume = gw.expect_resume().await;
    assert_eq!((resume.last_applied_seq, resume.epoch), (0, epoch));

    // A fresh session numbers its dictionary afresh.
    let mut batcher = Batcher::new(GATEWAY);
    batcher.max_points = 30;
    batcher.epoch = epoch;
    let b1 = batcher.next(&outbox, 1).expect("read").expect("batch");
    // Sent twice, as QoS 1 may deliver it: applied once, acknowledged twice.
    gw.send(Up::Batch, b1.bytes.clone()).await;
    gw.send(Up::Batch, b1.bytes.clone()).await;
    assert_eq!(gw.expect_ack().await, 30);
    assert_eq!(gw.expect_ack().await, 30);

    // A gap (31..=60 skipped): refused, with where to resume.
    let _b2 = batcher.next(&outbox, 31).expect("read").expect("batch");
    let b3 = batcher.next(&outbox, 61).expect("read").expect("batch");
    gw.send(Up::Batch, b3.bytes.clone()).await;
    let resume = gw.expect_resume().await;
    assert_eq!((resume.last_applied_seq, resume.epoch), (30, epoch));

    // A batch of an older session: ignored.
    let mut old = Batcher::new(GATEWAY);
    old.epoch = epoch - 1;
    let stale = old.next(&outbox, 31).expect("read").expect("batch");
    gw.send(Up::Batch, stale.bytes).await;
    assert_eq!(gw.silence(Duration::from_millis(500)).await, None);

    // Another gateway's batch on this gateway's topic: refused, not applied.
    let mut stranger = Batcher::new("someone-else");
    stranger.epoch = epoch;
    let theirs = stranger.next(&outbox, 31).expect("read").expect("batch");
    gw.send(Up::Batch, theirs.bytes).await;
    assert_eq!(gw.silence(Duration::from_millis(500)).await, None);

    // The continuation applies.
    let mut batcher = Batcher::new(GATEWAY);
    batcher.max_points = 60;
    batcher.epoch = epoch;
    let rest = batcher.next(&outbox, 31).expect("read").expect("batch");
    // (A new batcher restarts its dictionary at id 0, which resets the
    // cloud's: the same as after a Resume.)
    gw.send(Up::Batch, rest.bytes).await;
    assert_eq!(gw.expect_ack().await, 90);

    // Every change once, in order.
    for d in 0..3 {
        let history = get(
            &cloud,
            &format!("/api/v1/gateways/{GATEWAY}/devices/dev{d}/properties/t/history"),
        )
        .await;
        let values: Vec<f64> = history
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|e| e["value"].as_f64())
            .collect();
        let expected: Vec<f64> = (0..90)
            .filter(|n| n % 3 == d)
            .map(|n| 20.0 + f64::from(n) / 10.0)
            .collect();
        assert_eq!(values, expected, "dev{d}");
    }
    let stats = get(&cloud, "/api/v1/stats").await;
    assert_eq!(stats["points"], 90, "{stats}");
    assert_eq!(stats["batches_applied"], 2, "{stats}");
    assert_eq!(stats["duplicates"], 1, "{stats}");
    assert!(stats["refused"].as_u64() >= Some(3), "{stats}");
    assert!(stats["bytes_per_point"].as_f64() > Some(0.0), "{stats}");
    let gateways = get(&cloud, "/api/v1/gateways").await;
    assert_eq!(gateways[0]["id"], GATEWAY, "{gateways}");
    assert_eq!(gateways[0]["last_seq"], 90, "{gateways}");
    assert_eq!(gateways[0]["backlog"], 0, "{gateways}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_refuses_bad_requests_clearly() {
    let cloud = cloud().await;
    let client = reqwest::Client::new();
    let put = |path: &str, body: &'static str| {
        client
            .put(format!("{}{path}", cloud.rest))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let answer = put("/api/v1/gateways/nobody/devices/d/desired", r#"{"x": 1}"#)
        .await
        .expect("PUT");
    assert_eq!(answer.status(), 404);
    let body: Json = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unknown_gateway");
    let answer = put("/api/v1/gateways/nobody/devices/d/desired", "{")
        .await
        .expect("PUT");
    assert_eq!(answer.status(), 400);
    let answer = reqwest::get(format!(
        "{}/api/v1/gateways/nobody/devices/d/properties/t/history?limit=many",
        cloud.rest
    ))
    .await
    .expect("GET");
    assert_eq!(answer.status(), 400);
    let stats = get(&cloud, "/api/v1/stats").await;
    assert_eq!(stats["points"], 0);
    assert_eq!(stats["bytes_per_point"], Json::Null);
}
