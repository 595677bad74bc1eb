//! Northbound load: changes published as Sparkplug B DDATA to Mosquitto at
//! 100 000 points/s. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo bench -p ferrite-gateway --bench north_load
//! # other sizes: RATE=200000 SECONDS=20 DEVICES=200 QOS=1 cargo bench ...
//! ```
//!
//! Setup: a gateway (in this process) with DEVICES devices of 20 float
//! properties each and `[north]` on a Mosquitto of the bench's own
//! (`MOSQUITTO`, default /usr/sbin/mosquitto). The bench commits RATE
//! changes/s straight into the gateway's store, in batches every 10 ms (as
//! the store writer does; the drivers are not what is measured here), for
//! SECONDS. A subscriber (rumqttc, in this process) decodes every DDATA.
//!
//! Figures: points/s committed and received by the subscriber, the time the
//! backlog took to drain after the window, and the bytes per point on the
//! wire: each PUBLISH's fixed header, topic and payload, divided by the
//! points it carries; and the process's CPU (committer, gateway and
//! subscriber together: an upper bound for the northbound).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrite_gateway::runtime::{Gateway, Options};
use ferrite_gateway::store::{Change, Stamped};
use ferrite_models::Value;
use ferrite_proto::sparkplug::Payload;
use prost::Message as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

mod common;
use common::{Proc, env};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// CPU seconds (user + system) of this process so far.
fn cpu_seconds() -> f64 {
    Proc {
        pid: std::process::id(),
    }
    .cpu_ticks() as f64
        / 100.0
}

/// Bytes of an MQTT PUBLISH's fixed header's length field.
fn length_bytes(remaining: usize) -> usize {
    match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rate = env("RATE", 100_000).max(100) as u64;
    let seconds = env("SECONDS", 10).max(1) as u64;
    let devices = env("DEVICES", 100).max(1);
    let qos = env("QOS", 0);
    let mosquitto = std::env::var("MOSQUITTO").unwrap_or_else(|_| "/usr/sbin/mosquitto".into());
    println!(
        "north_load: {rate} changes/s for {seconds} s over {devices} devices × 20 properties, Sparkplug B DDATA at QoS {qos} to Mosquitto"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let broker_port = free_port();
    std::fs::write(
        root.join("mosquitto.conf"),
        format!("listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .expect("mosquitto.conf");
    let mut broker = std::process::Command::new(&mosquitto)
        .arg("-c")
        .arg(root.join("mosquitto.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {mosquitto}: {e} (set MOSQUITTO)"));
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", broker_port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    for sub in ["models", "devices", "rules"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    let mut model = String::from("kind: DeviceModel\nname: m\nproperties:\n");
    for p in 0..20 {
        model.push_str(&format!(
            "  p{p}: {{ type: float, unit: bar, mqtt: {{ topic: \"load/{{device}}/p{p}\" }} }}\n"
        ));
    }
    std::fs::write(root.join("models/m.yaml"), model).expect("model");
    for d in 0..devices {
        std::fs::write(
            root.join(format!("devices/d{d}.yaml")),
            format!("kind: Device\nname: d{d}\nmodel: m\nmqtt: {{}}\n"),
        )
        .expect("device");
    }
    std::fs::write(
        root.join("ferrite.toml"),
        format!(
            "[gateway]\nid = \"bench\"\ndata_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
             [mqtt]\nlisten = \"127.0.0.1:{}\"\n\
             [north]\nbroker = \"mqtt://127.0.0.1:{broker_port}\"\ngroup = \"bench\"\nnode = \"gw\"\nqos = {qos}\ninterval = \"50ms\"\n",
            free_port()
        ),
    )
    .expect("config");

    // The subscriber: every DDATA's points and wire bytes.
    let points = Arc::new(AtomicU64::new(0));
    let wire = Arc::new(AtomicU64::new(0));
    let messages = Arc::new(AtomicU64::new(0));
    let mut options = MqttOptions::new("north-load-sub", "127.0.0.1", broker_port);
    options.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut events) = AsyncClient::new(options, 100);
    client
        .subscribe("spBv1.0/bench/DDATA/gw/+", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    {
        let (points, wire, messages) = (points.clone(), wire.clone(), messages.clone());
        tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    let Ok(payload) = Payload::decode(p.payload.as_ref()) else {
                        continue;
                    };
                    let remaining =
                        2 + p.topic.len() + p.payload.len() + if qos > 0 { 2 } else { 0 };
                    wire.fetch_add(
                        (1 + length_bytes(remaining) + remaining) as u64,
                        Ordering::Relaxed,
                    );
                    points.fetch_add(payload.metrics.len() as u64, Ordering::Relaxed);
                    messages.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    let report = ferrite_models::check(&root.join("ferrite.toml"));
    assert!(report.is_ok(), "{:?}", report.diagnostics);
    let gateway = Gateway::start(
        report.project,
        Options {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(root.join("data")),
            snapshot: None,
        },
    )
    .await
    .expect("gateway");
    let north = gateway.state.north.clone().expect("[north]");
    let store = gateway.state.store.clone();
    let started = Instant::now();
    while !north.snapshot().connected && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The load: RATE/100 changes every 10 ms, committed as the writer does.
    let per_batch = (rate / 100) as usize;
    let cpu_before = cpu_seconds();
    let start = Instant::now();
    let mut committed = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut max_backlog = 0;
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let ts = ferrite_gateway::time::now();
        let batch: Vec<Change> = (0..per_batch)
            .map(|_| {
                n += 1;
                Change {
                    device: format!("d{}", n as usize % devices).into(),
                    property: format!("p{}", (n / devices as u64) % 20).into(),
                    at: Stamped {
                        ts,
                        value: Value::Float(20.0 + (n % 1000) as f64 / 100.0),
                    },
                }
            })
            .collect();
        let store = store.clone();
        committed += batch.len() as u64;
        tokio::task::spawn_blocking(move || store.commit(&batch))
            .await
            .expect("join")
            .expect("commit");
        max_backlog = max_backlog.max(north.snapshot().backlog);
    }
    let window = start.elapsed().as_secs_f64();
    let received_in_window = points.load(Ordering::Relaxed);
    let drain_start = Instant::now();
    while points.load(Ordering::Relaxed) < committed
        && drain_start.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = drain_start.elapsed().as_secs_f64();
    let total = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let received = points.load(Ordering::Relaxed);
    let bytes = wire.load(Ordering::Relaxed);
    let status = north.snapshot();
    println!(
        "committed  {committed} changes in {window:.1} s: {:.0} /s",
        committed as f64 / window
    );
    println!(
        "received   {received} points in {} DDATA ({:.0} points/message): {:.0} /s over the window, {:.0} /s until drained",
        messages.load(Ordering::Relaxed),
        received as f64 / messages.load(Ordering::Relaxed).max(1) as f64,
        received_in_window as f64 / window,
        received as f64 / total
    );
    println!("drained    {drained:.2} s after the window (max backlog {max_backlog} changes)");
    println!(
        "wire       {:.1} bytes per point (MQTT header + topic + Sparkplug payload)",
        bytes as f64 / received.max(1) as f64
    );
    println!(
        "cpu        {:.2} s over {total:.1} s: {:.0}% of one core (committer, gateway and subscriber)",
        cpu,
        cpu / total * 100.0
    );
    println!(
        "lost       {} (committed − received); northbound counters: {} points, {} dropped",
        committed.saturating_sub(received),
        status.points,
        status.dropped
    );
    gateway.stop().await;
    let _ = broker.kill();
    let _ = broker.wait();
}
