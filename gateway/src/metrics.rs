//! Prometheus metrics for `GET /metrics`, on `prometheus-client` (the
//! Prometheus project's own Rust client; no global registry, so two gateways
//! in one test process keep their own figures).
//!
//! Two kinds of series:
//! - **Running** ones, counted where things happen: polls, poll errors and
//!   poll latency per device (the Modbus and OPC UA drivers, through a
//!   [`DeviceMeter`]), values received per device (the store writer), and API
//!   requests by route, method and status (a route layer).
//! - **Snapshot** ones, read at each scrape from what the gateway already
//!   keeps: store size and failures, outbox backlog, bytes sent, devices up,
//!   rule firings, values per second.
//!
//! The scrape is OpenMetrics text (`application/openmetrics-text`), which
//! Prometheus reads natively.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The content type of a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A device and its protocol key (`modbus-tcp`, `opcua`, `mqtt`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    /// Device name.
    pub device: String,
    /// Protocol key.
    pub protocol: String,
}

/// An API route (as declared, `/api/v1/devices/{id}`), method and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's pattern, never the raw path (bounded cardinality).
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Status code.
    pub status: u16,
}

/// An API route and method, for the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's pattern.
    pub route: String,
    /// HTTP method.
    pub method: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Poll round trips: 0.5 ms to about 16 s.
fn poll_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// API handling times: 0.1 ms to about 3 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The gateway's running series.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    polls: Family<DeviceLabels, Counter>,
    poll_errors: Family<DeviceLabels, Counter>,
    poll_seconds: Histograms<DeviceLabels>,
    values: Family<DeviceLabels, Counter>,
    starts: Family<DeviceLabels, Counter>,
    panics: Family<DeviceLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Histograms<RouteLabels>,
    /// Values per second over the last [`RATE_WINDOW`], in thousandths.
    values_rate_milli: AtomicU64,
}

/// How often values per second is worked out.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every running series.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let polls = Family::<DeviceLabels, Counter>::default();
        let poll_errors = Family::<DeviceLabels, Counter>::default();
        let poll_seconds: Histograms<DeviceLabels> =
            Family::new_with_constructor(poll_histogram as fn() -> Histogram);
        let values = Family::<DeviceLabels, Counter>::default();
        let starts = Family::<DeviceLabels, Counter>::default();
        let panics = Family::<DeviceLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds: Histograms<RouteLabels> =
            Family::new_with_constructor(request_histogram as fn() -> Histogram);
        registry.register(
            "ferrite_polls",
            "Polls made (Modbus reads of all blocks, OPC UA batched Reads)",
            polls.clone(),
        );
        registry.register(
            "ferrite_poll_errors",
            "Polls that failed: no answer, a timeout, an exception or an undecodable value",
            poll_errors.clone(),
        );
        registry.register(
            "ferrite_poll_duration_seconds",
            "How long a poll took, from the first request to the last answer",
            poll_seconds.clone(),
        );
        registry.register(
            "ferrite_values",
            "Values received from devices (polled, subscribed or published)",
            values.clone(),
        );
        registry.register(
            "ferrite_device_starts",
            "Times a device was started on its driver: at the gateway's start, and again by each configuration change that touched it",
            starts.clone(),
        );
        registry.register(
            "ferrite_device_loop_panics",
            "Panics of a device's loop (each restarted; three within a minute roll the configuration back)",
            panics.clone(),
        );
        registry.register(
            "ferrite_api_requests",
            "API requests answered, by route, method and status",
            requests.clone(),
        );
        registry.register(
            "ferrite_api_request_duration_seconds",
            "How long the API took to answer, by route and method",
            request_seconds.clone(),
        );
        Metrics {
            registry,
            polls,
            poll_errors,
            poll_seconds,
            values,
            starts,
            panics,
            requests,
            request_seconds,
            values_rate_milli: AtomicU64::new(0),
        }
    }

    /// The meter a driver counts one device's polls with.
    pub fn device(&self, device: &str, protocol: &str) -> DeviceMeter {
        let labels = labels(device, protocol);
        DeviceMeter {
            polls: self.polls.get_or_create(&labels).clone(),
            errors: self.poll_errors.get_or_create(&labels).clone(),
            seconds: self.poll_seconds.get_or_create(&labels).clone(),
        }
    }

    /// The counter of values received from one device.
    pub fn values_of(&self, device: &str, protocol: &str) -> Counter {
        self.values.get_or_create(&labels(device, protocol)).clone()
    }

    /// Counts a start of `device` on its driver.
    pub fn started(&self, device: &str, protocol: &str) {
        self.starts.get_or_create(&labels(device, protocol)).inc();
    }

    /// Counts a panic of `device`'s loop.
    pub fn panicked(&self, device: &str, protocol: &str) {
        self.panics.get_or_create(&labels(device, protocol)).inc();
    }

    /// Counts one answered API request.
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let route = route.to_string();
        let method = method.to_string();
        self.request_seconds
            .get_or_create(&RouteLabels {
                route: route.clone(),
                method: method.clone(),
            })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
    }

    /// Values per second over the last [`RATE_WINDOW`].
    pub fn values_per_second(&self) -> f64 {
        self.values_rate_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// The scrape: the running series, then `snapshot`'s, then `# EOF`.
    pub fn encode(&self, snapshot: &Registry) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, snapshot)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

fn labels(device: &str, protocol: &str) -> DeviceLabels {
    DeviceLabels {
        device: device.to_string(),
        protocol: protocol.to_string(),
    }
}

/// One device's poll counters, cheap to clone and to count with.
#[derive(Clone, Debug)]
pub struct DeviceMeter {
    polls: Counter,
    errors: Counter,
    seconds: Histogram,
}

impl ferrite_core::driver::DriverMeters for Metrics {
    fn device(&self, device: &str, protocol: &str) -> Arc<dyn ferrite_core::driver::PollMeter> {
        Arc::new(Metrics::device(self, device, protocol))
    }

    fn panicked(&self, device: &str, protocol: &str) {
        Metrics::panicked(self, device, protocol);
    }
}

impl ferrite_core::driver::PollMeter for DeviceMeter {
    fn poll(&self, took: Duration, ok: bool) {
        self.polls.inc();
        if !ok {
            self.errors.inc();
        }
        self.seconds.observe(took.as_secs_f64());
    }
}

/// Works out values per second every [`RATE_WINDOW`] from `total` (the
/// store writer's sample counter), until `shutdown`.
pub async fn track_rate(
    metrics: Arc<Metrics>,
    total: impl Fn() -> u64 + Send + 'static,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(RATE_WINDOW);
    let mut last = (Instant::now(), total());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = (Instant::now(), total());
        let seconds = now.0.duration_since(last.0).as_secs_f64();
        if seconds > 0.0 {
            let rate = now.1.saturating_sub(last.1) as f64 / seconds;
            metrics
                .values_rate_milli
                .store((rate * 1000.0) as u64, Ordering::Relaxed);
        }
        last = now;
    }
}

/// Builds a registry of values read at scrape time.
#[derive(Default)]
pub struct ScrapeSnapshot {
    registry: Registry,
}

impl ScrapeSnapshot {
    /// A counter with a known total.
    pub fn counter(&mut self, name: &str, help: &str, total: u64) {
        let counter = Counter::<u64>::default();
        counter.inc_by(total);
        self.registry.register(name, help, counter);
    }

    /// A gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        self.registry.register(name, help, gauge);
    }

    /// A gauge with a fractional value.
    pub fn gauge_f64(&mut self, name: &str, help: &str, value: f64) {
        let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        gauge.set(value);
        self.registry.register(name, help, gauge);
    }

    /// A family of gauges, one per label set.
    pub fn gauges<L>(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (L, i64)>)
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        let family = Family::<L, Gauge>::default();
        for (labels, value) in values {
            family.get_or_create(&labels).set(value);
        }
        self.registry.register(name, help, family);
    }

    /// A family of counters with known totals.
    pub fn counters<L>(
        &mut self,
        name: &str,
        help: &str,
        values: impl IntoIterator<Item = (L, u64)>,
    ) where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        let family = Family::<L, Counter>::default();
        for (labels, value) in values {
            family.get_or_create(&labels).inc_by(value);
        }
        self.registry.register(name, help, family);
    }

    /// The registry, for [`Metrics::encode`].
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// A rule, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// Rule name.
    pub rule: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_core::driver::PollMeter;

    #[test]
    fn running_and_snapshot_series_share_one_scrape() {
        let metrics = Metrics::new();
        let meter = metrics.device("pump-1", "modbus-tcp");
        meter.poll(Duration::from_millis(3), true);
        meter.poll(Duration::from_millis(40), false);
        metrics.values_of("pump-1", "modbus-tcp").inc_by(7);
        metrics.request(
            "/api/v1/devices/{id}",
            "GET",
            404,
            Duration::from_micros(300),
        );
        let mut snapshot = ScrapeSnapshot::default();
        snapshot.gauge("ferrite_store_bytes", "Store size", 4096);
        let text = metrics.encode(snapshot.registry()).expect("encodes");
        for line in [
            "ferrite_polls_total{device=\"pump-1\",protocol=\"modbus-tcp\"} 2",
            "ferrite_poll_errors_total{device=\"pump-1\",protocol=\"modbus-tcp\"} 1",
            "ferrite_values_total{device=\"pump-1\",protocol=\"modbus-tcp\"} 7",
            "ferrite_api_requests_total{route=\"/api/v1/devices/{id}\",method=\"GET\",status=\"404\"} 1",
            "ferrite_store_bytes 4096",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
