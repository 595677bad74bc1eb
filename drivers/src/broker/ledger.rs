//! Which topic each message of the gateway's broker log came from, so that
//! messages the broker drops unread are counted per device, at QoS 0 as at
//! QoS 1.
//!
//! rumqttd numbers the messages of each filter's log one by one. When the
//! gateway's link reads on past a gap, the broker dropped that many messages
//! before the gateway read them (the MQTT driver's `LogOffsets`). By then the
//! messages are gone, and their topics with them. The ledger keeps the
//! topics: on its router thread rumqttd opens a `publish` span, with the
//! topic, around each publish it takes, and logs "Appended to commitlog:
//! {filter}[{segment}, {next offset})" at debug level once the message is in
//! a filter's log. [`layer`] sees both and notes offset → topic, for the
//! filters the gateway subscribes to ([`watch`]). The MQTT driver asks which
//! topics a gap held ([`lost`]) and lets the ledger forget what it has read
//! ([`forget_below`]). The segment of the newest message ([`tail_segment`])
//! tells the router gate how far behind the gateway's reader is.
//!
//! - Bounded: at most [`MAX_ENTRIES`] offsets are kept; a loss among older
//!   ones counts with no topic, as does a will message (rumqttd appends it
//!   outside any `publish` span).
//! - Process-wide, like the router gate: one process runs one embedded
//!   broker. Offsets that go backwards (a new log) start the ledger afresh.
//! - It depends on a span and an event inside rumqttd. The test
//!   `the_gate_holds_publishers_and_the_ledger_names_what_was_lost` fails if an
//!   upgrade moves either.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber, span};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::ROUTER_TARGET;

/// Most offsets the ledger keeps per filter (about 24 bytes each, plus
/// each distinct topic once).
pub const MAX_ENTRIES: usize = 1 << 18;

/// Most distinct topics kept for sharing; past it the table starts afresh
/// (entries keep their own copies).
const MAX_INTERNED: usize = 1 << 14;

/// What rumqttd's router logs once a message is in a filter's log.
const APPENDED: &str = "Appended to commitlog: ";

/// One filter's log: (offset, topic as rumqttd's span recorded it),
/// offsets rising.
type Entries = VecDeque<(u64, Option<Arc<str>>)>;

/// What the ledger keeps of one watched filter's log.
#[derive(Default)]
struct Log {
    entries: Entries,
    /// The segment of the newest message, once one is noted.
    tail: Option<u64>,
}

#[derive(Default)]
struct Ledger {
    /// The logs of the filters the gateway subscribes to.
    logs: HashMap<String, Log>,
    interned: HashSet<Arc<str>>,
}

impl Ledger {
    fn note(&mut self, filter: &str, segment: u64, offset: u64, topic: Option<&str>) {
        // One lookup per append (the router thread's path); a filter not
        // watched interns nothing.
        let Some(log) = self.logs.get_mut(filter) else {
            return;
        };
        let topic = topic.map(|t| intern(&mut self.interned, t));
        log.tail = Some(segment);
        let entries = &mut log.entries;
        if entries.back().is_some_and(|(last, _)| *last >= offset) {
            entries.clear();
        }
        if entries.len() >= MAX_ENTRIES {
            entries.pop_front();
        }
        entries.push_back((offset, topic));
    }

    fn forget_below(&mut self, filter: &str, offset: u64) {
        if let Some(Log { entries, .. }) = self.logs.get_mut(filter) {
            let keep_from = entries.partition_point(|(o, _)| *o < offset);
            entries.drain(..keep_from);
        }
    }
}

/// The shared copy of `topic` (a filter's topics repeat), kept in `interned`
/// up to [`MAX_INTERNED`], after which it starts again.
fn intern(interned: &mut HashSet<Arc<str>>, topic: &str) -> Arc<str> {
    if let Some(shared) = interned.get(topic) {
        return shared.clone();
    }
    if interned.len() >= MAX_INTERNED {
        interned.clear();
    }
    let shared: Arc<str> = Arc::from(topic);
    interned.insert(shared.clone());
    shared
}

static LEDGER: LazyLock<Mutex<Ledger>> = LazyLock::new(Mutex::default);

fn ledger() -> MutexGuard<'static, Ledger> {
    LEDGER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Notes the messages of `filter`'s log from now on (a link of the gateway
/// subscribes to it).
pub fn watch(filter: &str) {
    ledger().logs.entry(filter.to_string()).or_default();
}

/// The messages at offsets `from..to` of `filter`'s log were dropped
/// unread: how many of them were on each topic, and how many on a topic
/// the ledger does not know. Forgets every offset below `to`.
pub fn lost(filter: &str, from: u64, to: u64) -> (HashMap<String, u64>, u64) {
    let mut ledger = ledger();
    // Counted by the topic as noted, so that a gap of many messages on few
    // topics reads each topic back once.
    let mut by_printed: HashMap<Arc<str>, u64> = HashMap::new();
    if let Some(Log { entries, .. }) = ledger.logs.get(filter) {
        let start = entries.partition_point(|(o, _)| *o < from);
        let gap = entries.range(start..).take_while(|(o, _)| *o < to);
        for topic in gap.filter_map(|(_, topic)| topic.clone()) {
            *by_printed.entry(topic).or_default() += 1;
        }
    }
    ledger.forget_below(filter, to);
    drop(ledger);
    let known: u64 = by_printed.values().sum();
    let by_topic = by_printed
        .into_iter()
        .map(|(printed, n)| (unescape(&printed), n))
        .collect();
    (by_topic, to.saturating_sub(from).saturating_sub(known))
}

/// The gateway has read `filter`'s log up to `offset`.
pub fn forget_below(filter: &str, offset: u64) {
    ledger().forget_below(filter, offset);
}

/// The segment of the newest message in `filter`'s log (rumqttd numbers
/// its segments one by one, as it does messages), once one is noted.
pub fn tail_segment(filter: &str) -> Option<u64> {
    ledger().logs.get(filter).and_then(|log| log.tail)
}

/// The topic as `bytes::Bytes` prints it for debugging (`b"a/b\xc3\xa9"`),
/// back to text.
fn unescape(printed: &str) -> String {
    let inner = printed
        .strip_prefix("b\"")
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(printed);
    let mut bytes = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('n') => bytes.push(b'\n'),
            Some('r') => bytes.push(b'\r'),
            Some('t') => bytes.push(b'\t'),
            Some('0') => bytes.push(0),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                bytes.push(u8::from_str_radix(&hex, 16).unwrap_or(b'?'));
            }
            Some(other) => {
                let mut buf = [0; 4];
                bytes.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
            }
            None => bytes.push(b'\\'),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The filter, the segment and the next offset in "Appended to
/// commitlog: f[s, o)".
fn parse_appended(message: &str) -> Option<(&str, u64, u64)> {
    let rest = message.strip_prefix(APPENDED)?;
    let (filter, cursor) = rest.rsplit_once('[')?;
    let (segment, next) = cursor.strip_suffix(')')?.split_once(", ")?;
    Some((filter, segment.parse().ok()?, next.parse().ok()?))
}

fn is_publish_span(metadata: &Metadata<'_>) -> bool {
    metadata.is_span() && metadata.name() == "publish" && metadata.target() == ROUTER_TARGET
}

/// The router's debug events with a `pkid` and a message: "Appended to
/// commitlog" is one, and the only frequent one.
fn is_append_event(metadata: &Metadata<'_>) -> bool {
    metadata.is_event()
        && metadata.target() == ROUTER_TARGET
        && *metadata.level() == tracing::Level::DEBUG
        && metadata.fields().field("pkid").is_some()
        && metadata.fields().field("message").is_some()
}

thread_local! {
    /// The topic of the publish the router is taking, as rumqttd's span
    /// recorded it; empty outside one.
    static TOPIC: RefCell<String> = const { RefCell::new(String::new()) };
    /// The last event's message, formatted (a buffer kept for reuse).
    static MESSAGE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Copies one field's printed value into a buffer.
struct Capture<'a> {
    field: &'static str,
    into: &'a mut String,
}

impl Visit for Capture<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == self.field {
            self.into.clear();
            let _ = write!(self.into, "{value:?}");
        }
    }
}

/// The tracing layer that keeps the ledger. Like the router gate, it must
/// be part of the process's subscriber, and it carries its own filter.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let only_appends =
        tracing_subscriber::filter::filter_fn(|m| is_publish_span(m) || is_append_event(m))
            .with_max_level_hint(tracing::Level::DEBUG);
    LedgerLayer.with_filter(only_appends)
}

struct LedgerLayer;

impl<S: Subscriber> Layer<S> for LedgerLayer {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
        if is_publish_span(attrs.metadata()) {
            TOPIC.with_borrow_mut(|topic| {
                topic.clear();
                attrs.record(&mut Capture {
                    field: "topic",
                    into: topic,
                });
            });
        }
    }

    fn on_close(&self, _: span::Id, _: Context<'_, S>) {
        TOPIC.with_borrow_mut(String::clear);
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        MESSAGE.with_borrow_mut(|message| {
            message.clear();
            event.record(&mut Capture {
                field: "message",
                into: message,
            });
            let Some((filter, segment, next)) = parse_appended(message) else {
                return;
            };
            TOPIC.with_borrow(|topic| {
                let topic = Some(topic.as_str()).filter(|t| !t.is_empty());
                ledger().note(filter, segment, next.saturating_sub(1), topic);
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printed_topic_reads_back_as_it_was() {
        assert_eq!(unescape(r#"b"plant/line-1/temp""#), "plant/line-1/temp");
        assert_eq!(unescape(r#"b"caf\xc3\xa9/\"q\"\\x""#), "café/\"q\"\\x");
        assert_eq!(unescape(r#"b"a\tb\n""#), "a\tb\n");
    }

    #[test]
    fn the_append_message_gives_filter_and_offset() {
        assert_eq!(
            parse_appended("Appended to commitlog: #[3, 4097)"),
            Some(("#", 3, 4097))
        );
        assert_eq!(
            parse_appended("Appended to commitlog: a/[b]/#[0, 1)"),
            Some(("a/[b]/#", 0, 1))
        );
        assert_eq!(
            parse_appended("Read from commitlog, cursor = #[0, 1)"),
            None
        );
        assert_eq!(parse_appended("Appended to commitlog: #[0, x)"), None);
    }

    #[test]
    fn a_ledger_puts_a_gap_to_its_topics_and_stays_bounded() {
        let mut ledger = Ledger::default();
        ledger.logs.insert("#".into(), Log::default());
        for offset in 0..10 {
            let topic = if offset % 2 == 0 {
                "b\"even\""
            } else {
                "b\"odd\""
            };
            ledger.note("#", offset / 4, offset, Some(topic));
            ledger.note("other/#", offset / 4, offset, Some(topic));
        }
        ledger.note("#", 3, 10, None);
        assert_eq!(ledger.logs.len(), 1, "a filter not watched is not noted");
        assert_eq!(
            ledger.logs["#"].tail,
            Some(3),
            "the newest message's segment"
        );
        assert!(!ledger.logs.contains_key("other/#"));
        assert_eq!(ledger.interned.len(), 2, "each topic is kept once");
        ledger.forget_below("#", 4);
        let entries = |l: &Ledger| l.logs["#"].entries.clone();
        assert_eq!(entries(&ledger).front().map(|e| e.0), Some(4));
        // Offsets going backwards: a new log.
        ledger.note("#", 0, 2, Some("b\"new\""));
        assert_eq!(entries(&ledger).len(), 1);
        for offset in 3..(3 + MAX_ENTRIES as u64 + 5) {
            ledger.note("#", 0, offset, None);
        }
        assert_eq!(entries(&ledger).len(), MAX_ENTRIES);
    }
}
