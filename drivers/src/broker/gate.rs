//! Back-pressure from the store onto MQTT publishers, through the broker's
//! router thread.
//!
//! rumqttd has one router thread. It takes each batch of packets a client
//! sent, acknowledges the publishes in it (PUBACK at QoS 1) and appends them
//! to an in-memory log per subscription filter, from which the gateway's
//! link reads. When a log is full, the router drops its oldest segment, read
//! or not: rumqttd has no flow control from a slow subscriber back to the
//! publishers. So a gateway whose store fell behind lost the oldest messages
//! it had not read yet, QoS 1 or not.
//!
//! The gate is that flow control. Before the router takes a batch, rumqttd
//! opens its `incoming_payload` span; [`layer`], a tracing layer, sees the
//! span open and holds the router thread there for as long as the gate is
//! pressed. The MQTT driver presses it while the store's update queue is
//! nearly full. While it is held, the router acknowledges nothing and reads
//! nothing more. Its event queue fills, the clients' connection tasks stop
//! reading their sockets, and TCP pushes back on the publishers: a QoS 1
//! publisher waits for its PUBACKs, a QoS 0 one for its socket. Nothing is
//! appended that the gateway could not take, so nothing is trimmed unread.
//!
//! The store's queue is not the only consumer that can fall behind: the
//! gateway's reader (parsing each message and routing it to its devices)
//! shares the cores with the router and with every client's connection.
//! Past its pace the queue never fills, yet the router appends faster than
//! the reader reads, and trims its log under it. So the driver also presses
//! the gate while the reader is behind in the log ([`ReaderPlace`]): its
//! last message is in an older segment than the newest (rumqttd drops a
//! filter's log a segment at a time, oldest first, and keeps four). That
//! leaves at least two whole segments between the reader and a trim. The
//! router is the one that forwards the log to the reader, so that hold lets
//! go as soon as the reader has taken all it was handed and asked for more,
//! or has taken nothing for [`STALE`]. Its ask reaches the router behind
//! every batch the clients sent while it was held (up to their windows of
//! unacknowledged messages), and all of them are appended before it; so the
//! broker hands the reader the whole of its unread log at each ask (see
//! `max_outgoing_packet_count`), not a fixed bite that those batches
//! would outgrow.
//!
//! - A hold lasts at most [`MAX_HOLD`]; then one batch goes through. The
//!   broker then still answers pings and connects while the store is
//!   wedged (a full disk, say), so clients stay connected. Should a log
//!   overflow after all, the reader counts the messages lost (the gap in
//!   the log's offsets).
//! - The gate is process-wide, like the tracing subscriber it sits in: one
//!   process runs one embedded broker.
//! - It depends on the name of a span inside rumqttd. The test
//!   `the_gate_holds_publishers_and_the_ledger_names_what_was_lost` fails if an
//!   upgrade moves it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use ferrite_core::driver::DriverStats;
use tracing::{Metadata, Subscriber, span};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The longest the router is held at one batch.
pub const MAX_HOLD: Duration = Duration::from_secs(1);

/// How often a held router looks at the gate again.
const RECHECK: Duration = Duration::from_millis(1);

/// A reader that has taken nothing for this long is not holding the
/// router back: it waits for it (or is not running at all).
pub const STALE: Duration = Duration::from_millis(STALE_MS);
const STALE_MS: u64 = 20;

/// Where the gateway's reader stands in its filter's log, for the gate: the
/// segment of the last message it took, whether it has asked the router
/// for more, and when it last took one. Shared between the reader, which
/// notes, and the gate's condition, which asks [`ReaderPlace::behind`].
#[derive(Debug)]
pub struct ReaderPlace {
    /// The segment of the last message taken; [`UNKNOWN`] before the first.
    segment: AtomicU64,
    /// It took all it was handed and asked the router for more.
    asked: AtomicBool,
    /// When it last took a message, in milliseconds since [`EPOCH`].
    took_at: AtomicU64,
}

/// No message taken yet (a new link).
const UNKNOWN: u64 = u64::MAX;

/// The clock of [`ReaderPlace::took_at`].
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn millis() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Default for ReaderPlace {
    fn default() -> Self {
        ReaderPlace {
            segment: AtomicU64::new(UNKNOWN),
            asked: AtomicBool::new(false),
            took_at: AtomicU64::new(0),
        }
    }
}

impl ReaderPlace {
    /// The reader took a message from the log segment `segment`.
    pub fn took(&self, segment: u64) {
        self.segment.store(segment, Ordering::Relaxed);
        self.took_at.store(millis(), Ordering::Relaxed);
        if self.asked.load(Ordering::Relaxed) {
            self.asked.store(false, Ordering::Relaxed);
        }
    }

    /// The reader took all it was handed and asks the router for more:
    /// only the router can give it, so it must not be held now.
    pub fn asked_for_more(&self) {
        self.asked.store(true, Ordering::Relaxed);
    }

    /// The reader reads a new link, from wherever it starts.
    pub fn restart(&self) {
        self.segment.store(UNKNOWN, Ordering::Relaxed);
        self.asked.store(false, Ordering::Relaxed);
    }

    /// Whether the reader is behind in the log whose newest message is in
    /// the segment `tail` gives, and busy with what it was handed: the
    /// router should wait for it. `tail` is asked last, only when the
    /// reader's own state leaves the answer open (it locks the ledger, and
    /// the router asks before every batch).
    pub fn behind(&self, tail: impl FnOnce() -> Option<u64>) -> bool {
        let segment = self.segment.load(Ordering::Relaxed);
        segment != UNKNOWN
            && !self.asked.load(Ordering::Relaxed)
            && millis().saturating_sub(self.took_at.load(Ordering::Relaxed)) < STALE_MS
            && tail().is_some_and(|tail| tail > segment)
    }
}

/// Says whether the gate is pressed (the consumer cannot take more now).
type Pressed = Box<dyn Fn() -> bool + Send + Sync>;

struct Gate {
    pressed: Pressed,
    stats: Arc<DriverStats>,
}

static GATE: RwLock<Option<Gate>> = RwLock::new(None);

/// Makes `pressed` the gate's condition, replacing any earlier one. Time
/// spent held and holds that ran out are counted in `stats`.
pub fn install(pressed: impl Fn() -> bool + Send + Sync + 'static, stats: Arc<DriverStats>) {
    let gate = Gate {
        pressed: Box::new(pressed),
        stats,
    };
    *GATE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(gate);
}

/// Holds the calling thread, the router's, while the gate is pressed, for
/// at most [`MAX_HOLD`].
fn hold() {
    let gate = GATE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(gate) = gate.as_ref() else { return };
    if !(gate.pressed)() {
        return;
    }
    let start = Instant::now();
    let released = loop {
        std::thread::sleep(RECHECK);
        if !(gate.pressed)() {
            break true;
        }
        if start.elapsed() >= MAX_HOLD {
            break false;
        }
    };
    let held = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    gate.stats
        .mqtt_held_micros
        .fetch_add(held, Ordering::Relaxed);
    if !released {
        gate.stats
            .mqtt_hold_timeouts
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// rumqttd's router opening a batch of packets from one client.
fn is_router_batch(metadata: &Metadata<'_>) -> bool {
    metadata.is_span()
        && metadata.name() == "incoming_payload"
        && metadata.target() == super::ROUTER_TARGET
}

/// The tracing layer that holds the router. It must be part of the
/// process's subscriber for the gate to act. It carries its own filter, so
/// `RUST_LOG` does not switch it off, and it enables only the one span.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let only_router_batches = tracing_subscriber::filter::filter_fn(is_router_batch)
        .with_max_level_hint(tracing::Level::ERROR);
    RouterGate.with_filter(only_router_batches)
}

struct RouterGate;

impl<S: Subscriber> Layer<S> for RouterGate {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
        if is_router_batch(attrs.metadata()) {
            hold();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_holds_the_router_only_while_it_is_behind_and_busy() {
        let place = ReaderPlace::default();
        assert!(!place.behind(|| Some(3)), "nothing taken yet: a new link");
        place.took(2);
        assert!(!place.behind(|| None), "no message noted in the log");
        assert!(!place.behind(|| Some(2)), "in the newest segment");
        assert!(place.behind(|| Some(3)), "a segment behind, taking");
        place.asked_for_more();
        assert!(
            !place.behind(|| Some(3)),
            "only the router can hand it more now"
        );
        place.took(2);
        assert!(place.behind(|| Some(3)), "taking again");
        std::thread::sleep(STALE + Duration::from_millis(5));
        assert!(!place.behind(|| Some(3)), "took nothing for STALE");
        place.took(2);
        place.restart();
        assert!(!place.behind(|| Some(5)), "a spare link starts afresh");
    }
}
