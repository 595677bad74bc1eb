//! The live view: each device's status and latest readings, as the API
//! shows them.
//!
//! Only the store writer updates it, and only after the values it carries are
//! durable, so nothing the API has shown can be lost to a crash.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ferrite_models::value::Held;
use ferrite_models::{Project, Value};

use crate::names::Names;
pub use ferrite_core::reading::{Quality, Sample, Status, Update};
use ferrite_core::shared::Interner;
use ferrite_core::time::Micros;

impl DeviceState {
    /// The state without its readings.
    pub fn summary(&self, id: &str) -> DeviceSummary {
        DeviceSummary {
            id: id.to_string(),
            model: self.model.clone(),
            protocol: self.protocol,
            status: self.status,
            last_seen: self.last_seen,
            error: self.error.clone(),
        }
    }
}

/// One property's latest reading, in 32 bytes (there is one per property of
/// every device: 100 000 of them for NG Gateway's S3 shape). The value is
/// held as a [`Held`], 16 bytes where an `Option<Value>` takes 24, and "never
/// read" is a time no clock gives ([`NEVER`]) rather than an
/// `Option<Micros>` of 16 bytes: 48 bytes before.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    value: Held,
    /// When it was read (or last confirmed); [`NEVER`] if never.
    ts: Micros,
    quality: Quality,
}

/// The time of a reading never made. A device's own time this early (it
/// can only come from a device that sends one) is shown as the next
/// microsecond, so that it still reads as a time.
const NEVER: Micros = Micros::MIN;

impl Reading {
    /// A reading of `value` (none if never read), with its quality and time.
    pub fn new(value: Option<&Value>, quality: Quality, ts: Option<Micros>) -> Reading {
        Reading {
            value: value.map_or(Held::None, Held::of),
            quality,
            ts: ts.map_or(NEVER, |t| t.max(NEVER + 1)),
        }
    }

    /// The value, if one was ever read (a copy).
    pub fn value(&self) -> Option<Value> {
        self.value.value()
    }

    /// Its quality.
    pub fn quality(&self) -> Quality {
        self.quality
    }

    /// When it was read (or last confirmed), if ever.
    pub fn ts(&self) -> Option<Micros> {
        (self.ts != NEVER).then_some(self.ts)
    }
}

/// What [`Live::reading`] did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No such device.
    Device,
    /// The device has no such property.
    Property,
}

/// A device's live state.
#[derive(Debug, Clone)]
pub struct DeviceState {
    /// Model name.
    pub model: String,
    /// Protocol key, such as `modbus-tcp`.
    pub protocol: &'static str,
    /// Current status.
    pub status: Status,
    /// When the device last answered.
    pub last_seen: Option<Micros>,
    /// Why it is offline or in error.
    pub error: Option<String>,
    /// Latest reading per property, in model order.
    pub readings: Readings,
}

/// A device's latest reading per property, in model order: one [`Reading`]
/// per property, and the model's names and positions held once for every
/// device of that model (a thousand devices of one model share one).
#[derive(Debug, Clone)]
pub struct Readings {
    shape: Arc<Shape>,
    values: Box<[Reading]>,
}

/// Where a model's properties sit in [`Readings`]: names in model order, and
/// each property's position by name and by property number ([`Names`]).
#[derive(Debug, Default)]
struct Shape {
    /// In model order ([`Names`]' own `Arc`s).
    names: Vec<Arc<str>>,
    /// Each name's property number, in model order.
    numbers: Vec<u16>,
    by_name: HashMap<Arc<str>, u16>,
    /// Property number → position; `None` for a number the model does not
    /// have (any more). (`u16`: a model has at most 65 536 properties, the
    /// numbers' range.)
    positions: Vec<Option<u16>>,
}

// Two shapes with the same names and numbers in the same order are one.
impl PartialEq for Shape {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names && self.numbers == other.numbers
    }
}

impl Eq for Shape {}

impl std::hash::Hash for Shape {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.names.hash(state);
        self.numbers.hash(state);
    }
}

impl Shape {
    fn of(layout: crate::names::Layout) -> Shape {
        let slots = layout
            .properties
            .iter()
            .max()
            .map_or(0, |n| usize::from(*n) + 1);
        let mut positions = vec![None; slots];
        let mut by_name = HashMap::with_capacity(layout.names.len());
        for (position, (number, name)) in layout.properties.iter().zip(&layout.names).enumerate() {
            let position = u16::try_from(position).ok();
            positions[usize::from(*number)] = position;
            if let Some(position) = position {
                by_name.insert(name.clone(), position);
            }
        }
        Shape {
            names: layout.names,
            numbers: layout.properties,
            by_name,
            positions,
        }
    }
}

impl Readings {
    /// The reading of `property`, if the model has it.
    pub fn get(&self, property: &str) -> Option<&Reading> {
        let position = self.shape.by_name.get(property)?;
        self.values.get(usize::from(*position))
    }

    fn get_mut(&mut self, property: &str) -> Option<&mut Reading> {
        let position = self.shape.by_name.get(property)?;
        self.values.get_mut(usize::from(*position))
    }

    /// The reading of property number `number` ([`Names`]).
    fn by_number_mut(&mut self, number: u16) -> Option<&mut Reading> {
        let position = (*self.shape.positions.get(usize::from(number))?)?;
        self.values.get_mut(usize::from(position))
    }

    /// Each property's name and reading, in model order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Arc<str>, &Reading)> {
        self.shape.names.iter().zip(self.values.iter())
    }

    /// Properties.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the model has no properties.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A device's status without its readings.
#[derive(Debug, Clone)]
pub struct DeviceSummary {
    /// Device name.
    pub id: String,
    /// Model name.
    pub model: String,
    /// Protocol key.
    pub protocol: &'static str,
    /// Status.
    pub status: Status,
    /// When it last answered.
    pub last_seen: Option<Micros>,
    /// Why it is offline or in error.
    pub error: Option<String>,
}

/// All devices' live state, by device number ([`Names`]), so that the hot
/// path (an update per poll) does no name lookups.
#[derive(Debug)]
pub struct Live {
    names: Arc<Names>,
    /// By device number; `None` for a number whose device is not configured
    /// (any more).
    devices: RwLock<Vec<Option<LiveDevice>>>,
    /// Every distinct shape of readings, once.
    shapes: Interner<Shape>,
    /// Bumped after every applied update, for the live stream to wait on.
    version: tokio::sync::watch::Sender<u64>,
}

/// One configured device.
#[derive(Debug, Clone)]
struct LiveDevice {
    name: String,
    state: DeviceState,
}

impl Live {
    /// An empty view over `names`; devices come with [`Live::install`].
    pub fn new(names: Arc<Names>) -> Arc<Self> {
        Arc::new(Live {
            names,
            devices: RwLock::new(Vec::new()),
            shapes: Interner::default(),
            version: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A view with every device of `project`, offline with no readings yet.
    pub fn of(project: &Project, names: Arc<Names>) -> Arc<Self> {
        let live = Live::new(names);
        for name in project.devices.keys() {
            live.install(project, name);
        }
        live
    }

    /// The device numbers.
    pub fn names(&self) -> &Arc<Names> {
        &self.names
    }

    /// Shows `device` as `project` configures it. A new device starts
    /// offline with no readings; a reconfigured one keeps its status and
    /// the readings of the properties its model still has.
    pub fn install(&self, project: &Project, device: &str) {
        let Some(located) = project.devices.get(device) else {
            return;
        };
        let layout = self.names.layout(project, device);
        let index = layout.device;
        let shape = self.shape(layout);
        let d = &located.value;
        let mut devices = self.write();
        if devices.len() <= index {
            devices.resize(index + 1, None);
        }
        let old = devices[index].take();
        let values = shape
            .names
            .iter()
            .map(|p| {
                let kept = old.as_ref().and_then(|o| o.state.readings.get(p));
                kept.cloned().unwrap_or(EMPTY)
            })
            .collect();
        let (status, last_seen, error) = match &old {
            Some(o) => (o.state.status, o.state.last_seen, o.state.error.clone()),
            None => (Status::Offline, None, Some("not polled yet".into())),
        };
        devices[index] = Some(LiveDevice {
            name: device.to_string(),
            state: DeviceState {
                model: d.model.clone(),
                protocol: d.protocol().map_or("none", |p| p.key()),
                status,
                last_seen,
                error,
                readings: Readings { shape, values },
            },
        });
        drop(devices);
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The one shape of `layout`'s readings.
    fn shape(&self, layout: crate::names::Layout) -> Arc<Shape> {
        self.shapes.share(Box::new(Shape::of(layout)))
    }

    /// Stops showing `device` (removed from the configuration).
    pub fn remove(&self, device: &str) {
        let Some(i) = self.names.find(device) else {
            return;
        };
        if let Some(slot) = self.write().get_mut(i) {
            *slot = None;
        }
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that sees a new version after each applied update.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Calls `visit` with every device's name and state, in number order,
    /// under the read lock (nothing is copied; keep `visit` short).
    pub fn for_each(&self, mut visit: impl FnMut(&str, &DeviceState)) {
        let devices = self.read();
        for entry in devices.iter().flatten() {
            visit(&entry.name, &entry.state);
        }
    }

    /// A configured device's number, as [`Update::device`] carries it.
    pub fn index(&self, name: &str) -> Option<usize> {
        let i = self.names.find(name)?;
        self.read().get(i)?.as_ref().map(|_| i)
    }

    /// Marks a device that no driver serves in this build, so that the API
    /// says why it stays offline.
    pub fn unserved(&self, name: &str, why: String) {
        self.with_device(name, |state| state.error = Some(why));
    }

    fn with_device(&self, name: &str, change: impl FnOnce(&mut DeviceState)) {
        let Some(i) = self.names.find(name) else {
            return;
        };
        if let Some(Some(entry)) = self.write().get_mut(i) {
            change(&mut entry.state);
        }
    }

    /// A copy of one device's state.
    pub fn device(&self, name: &str) -> Option<DeviceState> {
        let i = self.names.find(name)?;
        Some(self.read().get(i)?.as_ref()?.state.clone())
    }

    /// One property's reading, without copying the device's others: what a
    /// GET of a property and the old value of a write need.
    pub fn reading(&self, device: &str, property: &str) -> Result<Reading, Missing> {
        let i = self.names.find(device).ok_or(Missing::Device)?;
        let devices = self.read();
        let entry = devices
            .get(i)
            .and_then(Option::as_ref)
            .ok_or(Missing::Device)?;
        entry
            .state
            .readings
            .get(property)
            .cloned()
            .ok_or(Missing::Property)
    }

    /// Every device's status, without its readings, sorted by name: what the
    /// device list needs, without copying every reading.
    pub fn summaries(&self) -> Vec<DeviceSummary> {
        let devices = self.read();
        let mut all: Vec<DeviceSummary> = devices
            .iter()
            .flatten()
            .map(|e| e.state.summary(&e.name))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Restores a value from the store at start-up, marked stale until the
    /// device is read again.
    pub fn restore(&self, device: &str, property: &str, value: Value, ts: Micros) {
        self.with_device(device, |state| {
            if let Some(reading) = state.readings.get_mut(property) {
                *reading = Reading::new(Some(&value), Quality::Stale, Some(ts));
            }
        });
    }

    /// Applies one driver update.
    pub fn apply(&self, update: &Update) {
        self.apply_quietly(update);
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn apply_quietly(&self, update: &Update) {
        let mut devices = self.write();
        // A device removed since its driver sent this: nothing to show.
        let Some(Some(entry)) = devices.get_mut(update.device) else {
            return;
        };
        let state = &mut entry.state;
        if let Some((status, error)) = &update.status {
            state.status = *status;
            state.error.clone_from(error);
        }
        if update.seen {
            state.last_seen = Some(update.ts);
        }
        for (i, (property, sample)) in update.samples.iter().enumerate() {
            let Some(reading) = state.readings.by_number_mut(*property) else {
                continue;
            };
            let ts = update.ts_of(i);
            // A write's read-back can overtake an older poll on its way
            // here; the older value must not win.
            if reading.ts().is_some_and(|t| t > ts) {
                continue;
            }
            match sample {
                Sample::Good(v) => *reading = Reading::new(Some(v), Quality::Good, Some(ts)),
                Sample::Stale => reading.quality = Quality::Stale,
                Sample::Bad => {
                    reading.quality = Quality::Bad;
                    reading.ts = ts.max(NEVER + 1);
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Option<LiveDevice>>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.devices
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Option<LiveDevice>>> {
        self.devices
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A property never read.
const EMPTY: Reading = Reading {
    value: Held::None,
    quality: Quality::Bad,
    ts: NEVER,
};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::names::tests::project;

    const MODEL: &str =
        "kind: DeviceModel\nname: m\nproperties:\n  a: { type: int }\n  b: { type: int }\n";

    /// A poll's update of `device`'s `samples`, at one time.
    pub(crate) fn update(device: usize, samples: Vec<(u16, Sample)>) -> Update {
        Update {
            device,
            ts: 1_000,
            status: None,
            seen: true,
            samples,
            stamps: Vec::new(),
            applied: None,
            audit: Vec::new(),
        }
    }

    /// One per property of every device: its size is the live view's
    /// memory per series (docs/gateway.md, "Where the memory goes").
    #[test]
    fn a_reading_takes_32_bytes_and_gives_back_what_it_was_given() {
        assert_eq!(std::mem::size_of::<Reading>(), 32);
        for value in [
            Value::Bool(true),
            Value::Int(i64::MIN),
            Value::Float(-0.5),
            Value::String("21 °C".into()),
        ] {
            let r = Reading::new(Some(&value), Quality::Stale, Some(-7));
            assert_eq!(r.value(), Some(value));
            assert_eq!((r.quality(), r.ts()), (Quality::Stale, Some(-7)));
        }
        assert_eq!(EMPTY.value(), None);
        assert_eq!(EMPTY.ts(), None);
        // A device's time that would read as "never" is still a time.
        let early = Reading::new(None, Quality::Good, Some(Micros::MIN));
        assert_eq!(early.ts(), Some(Micros::MIN + 1));
    }

    #[test]
    fn an_older_update_does_not_win_and_a_bad_read_keeps_the_value() {
        let p = project(&[MODEL, "kind: Device\nname: d\nmodel: m\nmqtt: {}\n"]);
        let live = Live::of(&p, Names::of(&p));
        let at = |ts, sample| Update {
            ts,
            ..update(0, vec![(0, sample)])
        };
        live.apply(&at(2_000, Sample::Good(Value::Int(5))));
        live.apply(&at(1_000, Sample::Good(Value::Int(4))));
        let a = live.reading("d", "a").expect("a");
        assert_eq!(
            (a.value(), a.quality(), a.ts()),
            (Some(Value::Int(5)), Quality::Good, Some(2_000))
        );
        live.apply(&at(3_000, Sample::Bad));
        let a = live.reading("d", "a").expect("a");
        assert_eq!(
            (a.value(), a.quality(), a.ts()),
            (Some(Value::Int(5)), Quality::Bad, Some(3_000))
        );
        live.apply(&at(4_000, Sample::Stale));
        let a = live.reading("d", "a").expect("a");
        assert_eq!(
            (a.value(), a.quality(), a.ts()),
            (Some(Value::Int(5)), Quality::Stale, Some(3_000))
        );
        live.restore("d", "b", Value::String("x".into()), 9);
        let b = live.reading("d", "b").expect("b");
        assert_eq!(
            (b.value(), b.quality(), b.ts()),
            (Some(Value::String("x".into())), Quality::Stale, Some(9))
        );
    }

    #[test]
    fn devices_of_one_model_share_one_shape_and_readings_land_by_number() {
        let first = project(&[
            MODEL,
            "kind: Device\nname: d1\nmodel: m\nmqtt: {}\n",
            "kind: Device\nname: d2\nmodel: m\nmqtt: {}\n",
        ]);
        let live = Live::of(&first, Names::of(&first));
        let both = |live: &Live| {
            (
                live.device("d1").expect("d1"),
                live.device("d2").expect("d2"),
            )
        };
        let (d1, d2) = both(&live);
        assert!(Arc::ptr_eq(&d1.readings.shape, &d2.readings.shape));
        assert_eq!(live.shapes.len(), 1);
        live.apply(&update(1, vec![(1, Sample::Good(Value::Int(7)))]));
        let d2 = live.device("d2").expect("d2");
        assert_eq!(
            d2.readings.get("b").and_then(Reading::value),
            Some(Value::Int(7))
        );
        assert_eq!(d2.readings.get("a"), Some(&EMPTY));
        assert_eq!(d2.readings.get("c"), None);
        let order: Vec<&str> = d2.readings.iter().map(|(n, _)| &**n).collect();
        assert_eq!(order, ["a", "b"]);
        assert_eq!(live.reading("d1", "b"), Ok(EMPTY));
        assert_eq!(live.reading("d2", "c"), Err(Missing::Property));

        // d2's model loses `a` and gains `c` (first): d2 gets a shape of its
        // own and keeps `b`'s reading; d1 keeps the shared one.
        let second = project(&[
            MODEL,
            "kind: DeviceModel\nname: n\nproperties:\n  c: { type: int }\n  b: { type: int }\n",
            "kind: Device\nname: d1\nmodel: m\nmqtt: {}\n",
            "kind: Device\nname: d2\nmodel: n\nmqtt: {}\n",
        ]);
        live.install(&second, "d2");
        let (d1, d2) = both(&live);
        assert!(!Arc::ptr_eq(&d1.readings.shape, &d2.readings.shape));
        let order: Vec<&str> = d2.readings.iter().map(|(n, _)| &**n).collect();
        assert_eq!(order, ["c", "b"]);
        assert_eq!(
            d2.readings.get("b").and_then(Reading::value),
            Some(Value::Int(7))
        );
        // `c` is property number 2 of d2; `a` (number 0) is gone from it.
        live.apply(&update(
            1,
            vec![(2, Sample::Good(Value::Int(3))), (0, Sample::Bad)],
        ));
        let d2 = live.device("d2").expect("d2");
        assert_eq!(
            d2.readings.get("c").and_then(Reading::value),
            Some(Value::Int(3))
        );
        assert_eq!(d2.readings.len(), 2);
    }
}
