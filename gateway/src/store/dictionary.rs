//! Series ids and their names, each name held once in memory.
//!
//! A thousand devices of one model share their property names: a property
//! name is one `Arc<str>` however many devices have it, and a device name one
//! however many properties. Lookups by `&str` allocate nothing (the commit
//! path and every history query make one per change or request).
//!
//! On disk the names are kept in pages of [`PAGE`] ids, one sled value
//! each (a varint length and `device NUL property` per id, in id order):
//! sled holds about 200 bytes of memory per key, which one key per series
//! made 19 MiB for 100 000 series.
//!
//! The maps hash with foldhash rather than std's SipHash: a commit looks up
//! every change's series, and with SipHash the lookups cost as much CPU as
//! sled's inserts (`store_load`'s long run, under perf). The names hashed
//! are the configuration's devices and properties, not a stranger's input.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

/// Series ids by name and names by id.
///
/// A series is a pair of numbers (device, property) into two tables of
/// names, so its own cost is a few integers: 8 bytes by id and about 4 back
/// (a map of names per device, as it was, cost ~70 bytes a series, and a
/// map by the pair ~17).
#[derive(Debug, Default)]
pub struct Dictionary {
    devices: Strings,
    properties: Strings,
    /// (device, property) → id.
    ids: SeriesIds,
    /// By id: (device, property); `u32::MAX` twice for an id not yet named.
    names: Vec<(u32, u32)>,
}

/// Distinct names, numbered in order of arrival.
#[derive(Debug, Default)]
struct Strings {
    by_number: Vec<Arc<str>>,
    numbers: HashMap<Arc<str>, u32, RandomState>,
}

impl Strings {
    fn find(&self, name: &str) -> Option<u32> {
        self.numbers.get(name).copied()
    }

    fn number(&mut self, name: &str) -> u32 {
        if let Some(n) = self.find(name) {
            return n;
        }
        let n = u32::try_from(self.by_number.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = name.into();
        self.by_number.push(name.clone());
        self.numbers.insert(name, n);
        n
    }

    fn get(&self, n: u32) -> &str {
        self.by_number.get(n as usize).map_or("", |s| &**s)
    }
}

const UNNAMED: (u32, u32) = (u32::MAX, u32::MAX);

/// Series ids by (device number, property number): each device's ids in a
/// run by property number. A device's properties come with its model, so
/// their names are numbered together, and its run is dense: 4 bytes a
/// series, where a map by the pair took ~17. A property numbered far from
/// the rest of its device's (a name its model shares with models that came
/// first) goes to `sparse` instead, so that no run is mostly holes.
#[derive(Debug, Default)]
struct SeriesIds {
    by_device: Vec<Run>,
    sparse: HashMap<(u32, u32), u32, RandomState>,
}

/// One device's ids: `ids[i]` is property `first + i`'s, or [`NO_ID`].
#[derive(Debug, Default)]
struct Run {
    first: u32,
    /// Ids in `ids` that are not [`NO_ID`].
    count: u32,
    ids: Vec<u32>,
}

/// A hole in a [`Run`].
const NO_ID: u32 = u32::MAX;

/// A run may span up to twice its ids, and this many more.
const RUN_SLACK: u64 = 16;

/// A run of at most this many ids starts again at a property that does not
/// fit it, its ids going to `sparse`.
const RESTART_BELOW: u32 = 4;

impl SeriesIds {
    fn get(&self, device: u32, property: u32) -> Option<u32> {
        let in_run = self.by_device.get(device as usize).and_then(|run| {
            let i = property.checked_sub(run.first)?;
            run.ids.get(i as usize).copied().filter(|id| *id != NO_ID)
        });
        match in_run {
            Some(id) => Some(id),
            None if self.sparse.is_empty() => None,
            None => self.sparse.get(&(device, property)).copied(),
        }
    }

    fn insert(&mut self, device: u32, property: u32, id: u32) {
        let d = device as usize;
        if self.by_device.len() <= d {
            self.by_device.resize_with(d + 1, Run::default);
        }
        let run = &mut self.by_device[d];
        if id == NO_ID {
            // Not an id a store hands out; kept aside, as a map would.
            if let Some(slot) = property
                .checked_sub(run.first)
                .and_then(|i| run.ids.get_mut(i as usize))
                .filter(|slot| **slot != NO_ID)
            {
                *slot = NO_ID;
                run.count -= 1;
            }
            self.sparse.insert((device, property), id);
            return;
        }
        if !run.takes(property) {
            if run.count > RESTART_BELOW {
                self.sparse.insert((device, property), id);
                return;
            }
            // A run of a few ids (a shared name that came first) gives way
            // to the rest of the device's.
            for (i, old) in (run.first..).zip(std::mem::take(&mut run.ids)) {
                if old != NO_ID {
                    self.sparse.insert((device, i), old);
                }
            }
            run.count = 0;
        }
        if run.ids.is_empty() {
            run.first = property;
        } else if property < run.first {
            let before = (run.first - property) as usize;
            run.ids
                .splice(0..0, std::iter::repeat_n(NO_ID, before))
                .for_each(drop);
            run.first = property;
        }
        let i = (property - run.first) as usize;
        if run.ids.len() <= i {
            run.ids.resize(i + 1, NO_ID);
        }
        if run.ids[i] == NO_ID {
            run.count += 1;
        }
        run.ids[i] = id;
        if !self.sparse.is_empty() {
            self.sparse.remove(&(device, property));
        }
    }
}

impl Run {
    /// Whether `property` can go in this run and leave it dense.
    fn takes(&self, property: u32) -> bool {
        if self.ids.is_empty() {
            return true;
        }
        let first = u64::from(self.first);
        let last = first + self.ids.len() as u64 - 1;
        let p = u64::from(property);
        if (first..=last).contains(&p) {
            return true;
        }
        let span = last.max(p) - first.min(p) + 1;
        span <= 2 * (u64::from(self.count) + 1) + RUN_SLACK
    }
}

impl Dictionary {
    /// The id of `device`'s `property`, if it has one.
    pub fn get(&self, device: &str, property: &str) -> Option<u32> {
        self.get_in(self.device(device)?, property)
    }

    /// The number of `device`'s name, if any series has it: for looking up
    /// several of its series with [`Dictionary::get_in`].
    pub fn device(&self, device: &str) -> Option<u32> {
        self.devices.find(device)
    }

    /// The id of the property of device number `device`, if it has one.
    pub fn get_in(&self, device: u32, property: &str) -> Option<u32> {
        self.ids.get(device, self.properties.find(property)?)
    }

    /// The names of series `id`.
    pub fn names(&self, id: u32) -> Option<(&str, &str)> {
        self.names
            .get(id as usize)
            .map(|(d, p)| (self.devices.get(*d), self.properties.get(*p)))
    }

    /// Series known (ids are `0..len`).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no series is known.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every series: id, device, property.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str, &str)> {
        (0u32..)
            .zip(&self.names)
            .map(|(id, (d, p))| (id, self.devices.get(*d), self.properties.get(*p)))
    }

    /// Records that `id` names `device`'s `property`. Ids are handed out in
    /// order; one read from disk may come with gaps (filled with empty names
    /// until its own entry is read).
    pub fn insert(&mut self, id: u32, device: &str, property: &str) {
        let key = (
            self.devices.number(device),
            self.properties.number(property),
        );
        self.ids.insert(key.0, key.1, id);
        let slot = id as usize;
        if self.names.len() <= slot {
            self.names.resize(slot + 1, UNNAMED);
        }
        self.names[slot] = key;
    }
}

/// Series ids per page of names on disk.
pub const PAGE: u32 = 256;

/// Appends `device`'s `property` to a page's bytes.
pub fn put_entry(page: &mut Vec<u8>, device: &str, property: &str) {
    super::chunk::put_varint(page, (device.len() + 1 + property.len()) as u64);
    page.extend_from_slice(device.as_bytes());
    page.push(0);
    page.extend_from_slice(property.as_bytes());
}

/// A page's entries, in id order; `None` if the bytes are not a page. An
/// empty entry (an id with no name) comes back as two empty names.
pub fn read_page(mut page: &[u8]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !page.is_empty() {
        let len = usize::try_from(super::chunk::get_varint(&mut page)?).ok()?;
        let entry = std::str::from_utf8(page.get(..len)?).ok()?;
        page = &page[len..];
        let (device, property) = entry.split_once('\0').unwrap_or(("", ""));
        out.push((device.to_string(), property.to_string()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_both_ways_and_held_once() {
        let mut dictionary = Dictionary::default();
        dictionary.insert(0, "meter-1", "power");
        dictionary.insert(1, "meter-2", "power");
        dictionary.insert(3, "meter-1", "energy");
        dictionary.insert(2, "meter-2", "energy");
        assert_eq!(dictionary.get("meter-2", "power"), Some(1));
        assert_eq!(dictionary.get("meter-1", "energy"), Some(3));
        assert_eq!(dictionary.get("meter-3", "power"), None);
        let meter_1 = dictionary.device("meter-1");
        assert_eq!(
            meter_1.and_then(|d| dictionary.get_in(d, "energy")),
            Some(3)
        );
        assert_eq!(meter_1.and_then(|d| dictionary.get_in(d, "volts")), None);
        assert_eq!(dictionary.device("meter-3"), None);
        assert_eq!(dictionary.names(2), Some(("meter-2", "energy")));
        assert_eq!(dictionary.len(), 4);
        // An id not yet named (a gap in what was read) has empty names.
        dictionary.insert(6, "meter-3", "power");
        assert_eq!(dictionary.names(5), Some(("", "")));
        assert_eq!(dictionary.names(6), Some(("meter-3", "power")));
        assert_eq!(dictionary.len(), 7);
        assert_eq!(
            dictionary.names[0].1, dictionary.names[1].1,
            "one `power` for both meters"
        );
        assert_eq!(dictionary.properties.by_number.len(), 2);
        assert_eq!(dictionary.iter().count(), 7);
    }

    #[test]
    fn a_model_s_devices_keep_their_ids_in_runs() {
        let mut dictionary = Dictionary::default();
        let mut id = 0;
        for d in 0..50 {
            for p in 0..100 {
                dictionary.insert(id, &format!("d{d}"), &format!("p{p}"));
                id += 1;
            }
        }
        // A second model, numbered after the first's names, whose first
        // name is one of the first's: its devices' runs start again at
        // their own names, and the shared one goes to the side.
        for d in 50..60 {
            for p in ["p0", "q1", "q2", "q3"] {
                dictionary.insert(id, &format!("d{d}"), p);
                id += 1;
            }
        }
        assert!(
            dictionary.ids.sparse.len() <= 10,
            "{}",
            dictionary.ids.sparse.len()
        );
        let holes: usize = dictionary
            .ids
            .by_device
            .iter()
            .map(|r| r.ids.len() - r.count as usize)
            .sum();
        assert_eq!(holes, 0);
        assert_eq!(dictionary.get("d7", "p42"), Some(742));
        assert_eq!(dictionary.get("d55", "p0"), Some(5000 + 5 * 4));
        assert_eq!(dictionary.get("d55", "q3"), Some(5000 + 5 * 4 + 3));
        assert_eq!(dictionary.get("d55", "p1"), None);
    }

    proptest::proptest! {
        #[test]
        fn ids_are_found_as_a_map_would_find_them(
            inserts in proptest::collection::vec(
                (0u32..6, 0u32..400, proptest::prop_oneof![0u32..1000, proptest::strategy::Just(NO_ID)]),
                0..200,
            )
        ) {
            let mut ids = SeriesIds::default();
            let mut model = HashMap::new();
            for (device, property, id) in inserts {
                ids.insert(device, property, id);
                model.insert((device, property), id);
            }
            for device in 0..7 {
                for property in 0..401 {
                    proptest::prop_assert_eq!(
                        ids.get(device, property),
                        model.get(&(device, property)).copied()
                    );
                }
            }
            for run in &ids.by_device {
                let count = run.ids.iter().filter(|id| **id != NO_ID).count();
                proptest::prop_assert_eq!(count, run.count as usize);
                proptest::prop_assert!(
                    run.ids.len() as u64 <= 2 * (u64::from(run.count) + 1) + RUN_SLACK
                );
            }
        }
    }

    #[test]
    fn pages_round_trip_and_junk_is_refused() {
        let mut page = Vec::new();
        put_entry(&mut page, "meter-1", "power");
        page.push(0);
        put_entry(&mut page, "é", "x");
        assert_eq!(
            read_page(&page),
            Some(vec![
                ("meter-1".into(), "power".into()),
                (String::new(), String::new()),
                ("é".into(), "x".into()),
            ])
        );
        assert_eq!(read_page(&[9, b'a']), None);
        assert_eq!(read_page(&[2, 0xff, 0xfe]), None);
    }
}
