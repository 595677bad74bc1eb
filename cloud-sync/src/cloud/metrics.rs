//! `GET /metrics` of the control plane, OpenMetrics text from
//! `prometheus-client` (as on the gateway): changes and batches applied,
//! refused and conflicting, the apply latency, and, read at each scrape,
//! the replicas alive, the gateways known, connected and owned by this
//! replica, and their backlog.

use std::sync::atomic::Ordering;

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::plane::Shared;
use super::store::GatewayRecord;

/// The content type of a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    registry.register(
        name,
        help,
        ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)),
    );
}

/// The scrape: the running series and a snapshot of `gateways`.
pub fn render(shared: &Shared, gateways: &[GatewayRecord]) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("ferrite_cloud");
    let stats = &shared.stats;
    for (name, help, value) in [
        (
            "changes_applied",
            "Changes applied to the store",
            &stats.points,
        ),
        (
            "batches_received",
            "Batches received (redeliveries included)",
            &stats.batches,
        ),
        (
            "batches_applied",
            "Batches applied to the store",
            &stats.applied,
        ),
        (
            "batches_duplicate",
            "Batches received again and acknowledged without applying",
            &stats.duplicates,
        ),
        (
            "batches_refused",
            "Batches refused (out of order, unreadable, not stored): a Resume went back",
            &stats.refused,
        ),
        (
            "batches_conflicting",
            "Batches another replica had applied first",
            &stats.conflicts,
        ),
        (
            "changes_lost_at_edge",
            "Changes gateways dropped over their outbox budget",
            &stats.lost_at_edge,
        ),
        (
            "received_bytes",
            "Batch payload bytes received (zstd)",
            &stats.payload_bytes,
        ),
    ] {
        registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
    }
    registry.register(
        "apply_seconds",
        "Time to store one batch durably",
        shared.metrics.apply_seconds.clone(),
    );
    let replicas = &shared.replicas;
    gauge(
        &mut registry,
        "replicas_alive",
        "Replicas alive, as this one sees them",
        replicas.live().len() as u64,
    );
    gauge(
        &mut registry,
        "gateways_known",
        "Gateways that ever said Hello",
        gateways.len() as u64,
    );
    let owned = gateways.iter().filter(|g| replicas.owns(&g.id)).count();
    gauge(
        &mut registry,
        "gateways_owned",
        "Gateways this replica applies",
        owned as u64,
    );
    let connected = gateways
        .iter()
        .filter(|g| shared.presence(&g.id).connected)
        .count();
    gauge(
        &mut registry,
        "gateways_connected",
        "Gateways whose status says online",
        connected as u64,
    );
    let backlog: u64 = gateways
        .iter()
        .map(|g| g.outbox_last.saturating_sub(g.last_change))
        .sum();
    gauge(
        &mut registry,
        "backlog_changes",
        "Changes gateways hold that the store has not, as they last told",
        backlog,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}
