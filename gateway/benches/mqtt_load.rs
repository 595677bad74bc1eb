//! Load benchmark: many MQTT devices publishing JSON to the embedded broker
//! of a `ferrite run` process. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo bench -p ferrite-gateway --bench mqtt_load
//! # other sizes: PUBLISHERS=200 INTERVAL_MS=10 SECONDS=10 cargo bench ...
//! # QoS 1 above the ceiling (issue 23): every acknowledged message stored?
//! QOS=1 INTERVAL_MS=20 SECONDS=10 cargo bench -p ferrite-gateway --bench mqtt_load
//! ```
//!
//! Setup: PUBLISHERS rumqttc clients (in this process; the gateway runs in
//! its own, so the figures are the gateway's alone), one device each, each
//! publishing `{"v": N}` (N always new) on its own topic every INTERVAL_MS,
//! at QOS (0 by default, or 1), over loopback TCP. A publisher that cannot
//! send in time skips that tick: what was offered and what went out differ
//! when the broker holds publishers back.
//!
//! At the end the publishers stop, the bench waits until the gateway's
//! sample counter stands still, and compares everything sent (QoS 0: handed
//! to the client; QoS 1: acknowledged by the broker) with everything
//! stored: the difference is what was lost.
//!
//! Figures: messages/s published and ingested (the gateway's own sample
//! counter), the gateway's CPU and RSS, and the latency from a publish to
//! the new value in the REST API (a probe device, published to and polled
//! for while the load runs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};

mod common;
use common::{
    add_config, env, metric, metric_sum, percentile, print_usage, project_dir, spawn_gateway,
    stop_gateway, wait_online,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let publishers = env("PUBLISHERS", 1000).max(1);
    let interval_ms = env("INTERVAL_MS", 100).max(1);
    let seconds = env("SECONDS", 20);
    let qos = if env("QOS", 0) >= 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    println!(
        "mqtt_load: {publishers} publishers, one JSON message each every {interval_ms} ms at {qos:?}, {seconds} s window"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let dir = project_dir();
    let root = dir.path();
    add_config(
        root,
        &format!(
            "[mqtt]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = {}\n",
            publishers + 16
        ),
    );
    std::fs::write(
        root.join("models/m.yaml"),
        "kind: DeviceModel\nname: m\nproperties:\n  v: { type: int, mqtt: { topic: \"b/{device}/state\", json: /v } }\n",
    )
    .expect("model");
    for n in 0..=publishers {
        let name = if n == publishers {
            "probe".to_string()
        } else {
            format!("d{n}")
        };
        std::fs::write(
            root.join(format!("devices/{name}.yaml")),
            format!("kind: Device\nname: {name}\nmodel: m\nmqtt: {{}}\n"),
        )
        .expect("device");
    }

    let (mut child, gw, base) = spawn_gateway(root);
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let offered = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let samples_before = metric(&http, &base, "ferrite_samples_total").await;
    // Every publisher connects first, and all start together: connects
    // during the load would race the broker's back-pressure.
    let connected = Arc::new(AtomicU64::new(0));
    let (start, started) = tokio::sync::watch::channel(false);
    for n in 0..publishers {
        let connected = connected.clone();
        let mut started = started.clone();
        let stop = stop.clone();
        let offered = offered.clone();
        let published = published.clone();
        tokio::spawn(async move {
            let mut options = MqttOptions::new(format!("bench-{n}"), "127.0.0.1", port);
            options.set_keep_alive(Duration::from_secs(30));
            let (client, mut events) = AsyncClient::new(options, 64);
            let acked = (qos == QoS::AtLeastOnce).then(|| published.clone());
            tokio::spawn(async move { drive(&mut events, acked, Some(connected)).await });
            let _ = started.wait_for(|go| *go).await;
            // Spread the publishers over the interval.
            tokio::time::sleep(Duration::from_millis(
                (n * interval_ms / publishers.max(1)) as u64,
            ))
            .await;
            let mut tick = tokio::time::interval(Duration::from_millis(interval_ms as u64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut value: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                value += 1;
                offered.fetch_add(1, Ordering::Relaxed);
                let body = format!("{{\"v\": {value}}}");
                let topic = format!("b/d{n}/state");
                if qos == QoS::AtLeastOnce {
                    // Waits while the client's window of 100 unacknowledged
                    // publishes is full: the broker's back-pressure.
                    let _ = client.publish(topic, qos, false, body).await;
                } else if client.try_publish(topic, qos, false, body).is_ok() {
                    published.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let waiting = Instant::now();
    while connected.load(Ordering::Relaxed) < publishers as u64
        && waiting.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{} of {publishers} publishers connected after {:.1?}",
        connected.load(Ordering::Relaxed),
        waiting.elapsed()
    );
    let _ = start.send(true);
    wait_online(&http, &base, publishers).await;

    let mut probe_options = MqttOptions::new("bench-probe", "127.0.0.1", port);
    probe_options.set_keep_alive(Duration::from_secs(30));
    let (probe, mut probe_events) = AsyncClient::new(probe_options, 16);
    tokio::spawn(async move { drive(&mut probe_events, None, None).await });

    let t0 = Instant::now();
    let cpu0 = gw.cpu_ticks();
    let samples0 = metric(&http, &base, "ferrite_samples_total").await;
    let offered0 = offered.load(Ordering::Relaxed);
    let published0 = published.load(Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut probe_value: i64 = 0;
    while t0.elapsed() < Duration::from_secs(seconds as u64) {
        probe_value += 1;
        let sent = Instant::now();
        let _ = probe
            .publish(
                "b/probe/state",
                QoS::AtMostOnce,
                false,
                format!("{{\"v\": {probe_value}}}"),
            )
            .await;
        loop {
            let url = format!("{base}/api/v1/devices/probe/properties/v");
            let seen = match http.get(&url).send().await {
                Ok(res) => res
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["value"].as_i64()),
                Err(_) => None,
            };
            if seen == Some(probe_value) {
                latencies.push(sent.elapsed());
                break;
            }
            if sent.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let samples = metric(&http, &base, "ferrite_samples_total").await - samples0;
    let sent = published.load(Ordering::Relaxed) - published0;
    let tried = offered.load(Ordering::Relaxed) - offered0;
    stop.store(true, Ordering::Relaxed);
    latencies.sort();
    println!(
        "offered                 {:>9.0} msg/s",
        tried as f64 / elapsed
    );
    println!(
        "published               {:>9.0} msg/s{}",
        sent as f64 / elapsed,
        if qos == QoS::AtLeastOnce {
            " (acknowledged by the broker)"
        } else {
            ""
        }
    );
    println!("ingested                {:>9.0} msg/s", samples / elapsed);
    print_usage(&gw, cpu0, elapsed);
    println!(
        "publish -> REST value   p50 {:?}, p99 {:?}, max {:?} ({} probes, {} lost)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        latencies.len(),
        probe_value as usize - latencies.len()
    );

    // The reckoning: wait for the last acknowledgements and for the store
    // to stand still, then compare what went out with what was stored.
    let mut stored = metric(&http, &base, "ferrite_samples_total").await;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = metric(&http, &base, "ferrite_samples_total").await;
        if now == stored {
            break;
        }
        stored = now;
    }
    let stored = (stored - samples_before) as u64;
    let went_out = published.load(Ordering::Relaxed) + probe_value as u64;
    println!(
        "sent {went_out} (publishers and probe), stored {stored}: {} lost",
        went_out.saturating_sub(stored)
    );
    println!(
        "broker: {} dropped unread, publishers held {} ms in all, {} holds ran out",
        metric(&http, &base, "ferrite_mqtt_dropped_total").await,
        metric(&http, &base, "ferrite_mqtt_held_milliseconds_total").await,
        metric(&http, &base, "ferrite_mqtt_hold_timeouts_total").await
    );
    println!(
        "of those dropped, put to devices: {}",
        metric_sum(&http, &base, "ferrite_mqtt_device_dropped_total").await as u64
    );
    stop_gateway(&mut child);
}

/// Polls a client's event loop until the process ends; after an error
/// (the broker not up yet), retries after a pause. Counts PUBACKs in
/// `acked` when given, and the client's first CONNACK in `connected`.
async fn drive(
    events: &mut rumqttc::EventLoop,
    acked: Option<Arc<AtomicU64>>,
    mut connected: Option<Arc<AtomicU64>>,
) {
    loop {
        match events.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                if let Some(connected) = connected.take() {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                if let Some(acked) = &acked {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
