//! What Ferrite's tracing layers on rumqttd's router (the gate and the loss
//! ledger, `drivers/src/broker`) cost per message, on the router thread.
//!
//! Each message is what rumqttd's router does per publish: a `publish` span
//! with the topic, and the "Appended to commitlog" debug event in it. Run
//! under three subscribers:
//! - the log layer only (info level, to a sink), as without the broker's
//!   layers;
//! - with the router gate (it only looks at batches, not at messages);
//! - with the gate and the ledger;
//! - as `ferrite run` has them: the gate, the ledger, and the log layer
//!   without the router's spans (`broker::is_router_span`).
//!
//! `cargo bench -p ferrite-drivers --bench broker_layers` prints ns per
//! message for each. `MESSAGES` sets how many (default 2 000 000).

use std::time::Instant;

use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

fn main() {
    let messages: u64 = std::env::var("MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let log = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(LevelFilter::INFO)
    };
    ferrite_drivers::broker::ledger::watch("#");
    let log_without_router_spans = || {
        use tracing_subscriber::filter::FilterExt;
        let filter = LevelFilter::INFO.and(tracing_subscriber::filter::filter_fn(|m| {
            !ferrite_drivers::broker::is_router_span(m)
        }));
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(filter)
    };
    let cases: [(&str, tracing::Dispatch); 4] = [
        (
            "log layer only",
            tracing::Dispatch::new(tracing_subscriber::registry().with(log())),
        ),
        (
            "with the router gate",
            tracing::Dispatch::new(
                tracing_subscriber::registry()
                    .with(log())
                    .with(ferrite_drivers::broker::gate::layer()),
            ),
        ),
        (
            "with the gate and the ledger",
            tracing::Dispatch::new(
                tracing_subscriber::registry()
                    .with(log())
                    .with(ferrite_drivers::broker::tracing_layer()),
            ),
        ),
        (
            "as `ferrite run` has them",
            tracing::Dispatch::new(
                tracing_subscriber::registry()
                    .with(log_without_router_spans())
                    .with(ferrite_drivers::broker::tracing_layer()),
            ),
        ),
    ];
    println!("broker_layers: {messages} publishes per case, 100 topics");
    let topics: Vec<bytes::Bytes> = (0..100)
        .map(|d| bytes::Bytes::from(format!("plant/line-{}/d{d}/power", d % 4)))
        .collect();
    let mut offset = 0u64;
    for (name, dispatch) in cases {
        tracing::dispatcher::with_default(&dispatch, || {
            let started = Instant::now();
            for n in 0..messages {
                let topic = &topics[(n % 100) as usize];
                let pkid = (n % 65_535) as u16;
                let span = tracing::error_span!(target: "rumqttd::router::routing", "publish", topic = ?topic, pkid);
                let _guard = span.enter();
                offset += 1;
                tracing::debug!(target: "rumqttd::router::routing", pkid, "Appended to commitlog: {}[{}, {})", "#", offset / 4096, offset);
                if offset.is_multiple_of(4096) {
                    // As the gateway's reader does.
                    ferrite_drivers::broker::ledger::forget_below("#", offset);
                }
            }
            let per = started.elapsed().as_nanos() as f64 / messages as f64;
            println!("{name:<30} {per:>7.0} ns per message");
        });
    }
}
