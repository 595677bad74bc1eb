//! Points synced per second, end to end: the uplink (rumqttc, QoS 1) over
//! loopback to an in-process control plane (embedded rumqttd, sled store,
//! one atomic flushed write per batch). Prints figures; asserts only that
//! every change arrived.
//!
//! ```sh
//! cargo bench -p ferrite-sync --bench sync_throughput
//! # BACKLOG=500000 RATE=20000 SECONDS=10 cargo bench -p ferrite-sync --bench sync_throughput
//! ```
//!
//! Two runs:
//! - catch-up: BACKLOG changes wait in the outbox (an outage's worth) when
//!   the uplink starts; time until the control plane has them all;
//! - sustained: RATE changes/s appended in 100 ms steps for SECONDS; the
//!   backlog and the lag of the last change at the end.
//!
//! The data: 200 devices × 10 properties, one-decimal floats on random
//! walks, times 1 s apart per property.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_models::Value;
use ferrite_sync::cloud::{self, CloudConfig};
use ferrite_sync::delta::Change;
use ferrite_sync::outbox::Outbox;
use ferrite_sync::uplink::{self, DesiredHandler, UplinkConfig, UplinkStatus};
use ferrite_sync::wire::{DesiredPatch, Reported};
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Ignore;

impl DesiredHandler for Ignore {
    fn apply<'a>(
        &'a self,
        patch: &'a DesiredPatch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reported> + Send + 'a>> {
        Box::pin(async move {
            Reported {
                version: patch.version,
                ..Reported::default()
            }
        })
    }
}

/// Changes `from..to` of the synthetic plant.
fn changes(from: u64, to: u64) -> Vec<Change> {
    (from..to)
        .map(|n| {
            let key = n % 2000;
            let step = n / 2000;
            let wobble = ((n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as i64) - 8;
            Change {
                device: format!("dev-{:03}", key / 10),
                property: format!("p{}", key % 10),
                ts_ms: 1_795_000_000_000 + step as i64 * 1000,
                value: Value::Float((200 + step as i64 % 50 + wobble) as f64 / 10.0),
            }
        })
        .collect()
}

async fn synced(shared: &cloud::plane::Shared) -> u64 {
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || store.last_change("bench"))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let backlog = env("BACKLOG", 500_000);
    let rate = env("RATE", 20_000);
    let seconds = env("SECONDS", 10);
    let dir = tempfile::tempdir().expect("tempdir");
    let running = cloud::start(CloudConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        mqtt_listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().join("cloud"),
        ..CloudConfig::default()
    })
    .await
    .expect("control plane");
    let db = sled::Config::new()
        .path(dir.path().join("gateway"))
        .open()
        .expect("sled");
    let outbox = Arc::new(Outbox::open(&db, u64::MAX).expect("outbox"));
    for chunk in (0..backlog).step_by(50_000) {
        outbox
            .append(&changes(chunk, (chunk + 50_000).min(backlog)))
            .expect("append");
    }
    db.flush().expect("flush");

    let status = Arc::new(UplinkStatus::default());
    let shutdown = CancellationToken::new();
    let config = UplinkConfig::new("bench", &running.broker);
    println!(
        "sync_throughput: uplink → loopback MQTT → control plane; batches ≤ {} changes / {} KiB, {} in flight",
        config.max_points,
        config.max_bytes / 1024,
        config.window
    );
    let started = Instant::now();
    let task = tokio::spawn(uplink::run(
        config,
        outbox.clone(),
        Arc::new(Ignore),
        None,
        status.clone(),
        shutdown.clone(),
    ));
    while synced(&running.shared).await < backlog {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "catch-up stalled at {}",
            synced(&running.shared).await
        );
    }
    let took = started.elapsed();
    // (Bytes per point: see the sync_bytes bench, whose data is realistic;
    // this plant's is too regular to say anything.)
    println!(
        "  catch-up: {backlog} changes in {:.2} s = {:.0} points/s synced",
        took.as_secs_f64(),
        backlog as f64 / took.as_secs_f64(),
    );

    // Sustained.
    let mut next = backlog;
    let per_step = rate / 10;
    let t0 = Instant::now();
    for step in 0..seconds * 10 {
        let at = t0 + Duration::from_millis(100 * (step + 1));
        outbox
            .append(&changes(next, next + per_step))
            .expect("append");
        db.flush().expect("flush");
        next += per_step;
        tokio::time::sleep_until(at.into()).await;
    }
    let offered_until = Instant::now();
    let behind = next - synced(&running.shared).await;
    while synced(&running.shared).await < next {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            offered_until.elapsed() < Duration::from_secs(120),
            "stalled"
        );
    }
    println!(
        "  sustained: {rate} changes/s offered for {seconds} s; {behind} not yet synced when the last was appended, all synced {:.2} s later (batches cut every 1 s)",
        offered_until.elapsed().as_secs_f64()
    );
    let snapshot = status.snapshot();
    println!(
        "  uplink: {} batches, {} sessions; control plane: {} duplicates, {} refused",
        snapshot.batches,
        snapshot.sessions,
        running
            .shared
            .stats
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        running
            .shared
            .stats
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    shutdown.cancel();
    let _ = task.await;
    // The embedded broker has no shutdown; end the process.
    std::process::exit(0);
}
