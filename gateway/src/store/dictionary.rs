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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Series ids by name and names by id.
#[derive(Debug, Default)]
pub struct Dictionary {
    /// Device → property → id.
    ids: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
    /// By id: device and property.
    names: Vec<(Arc<str>, Arc<str>)>,
    /// Every property name, once.
    properties: HashSet<Arc<str>>,
}

impl Dictionary {
    /// The id of `device`'s `property`, if it has one.
    pub fn get(&self, device: &str, property: &str) -> Option<u32> {
        self.ids.get(device)?.get(property).copied()
    }

    /// The names of series `id`.
    pub fn names(&self, id: u32) -> Option<(&str, &str)> {
        self.names
            .get(id as usize)
            .map(|(device, property)| (&**device, &**property))
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
            .map(|(id, (device, property))| (id, &**device, &**property))
    }

    /// Records that `id` names `device`'s `property`. Ids are handed out in
    /// order; one read from disk may come with gaps (filled with empty names
    /// until its own entry is read).
    pub fn insert(&mut self, id: u32, device: &str, property: &str) {
        let property: Arc<str> = match self.properties.get(property) {
            Some(known) => known.clone(),
            None => {
                let new: Arc<str> = property.into();
                self.properties.insert(new.clone());
                new
            }
        };
        let device: Arc<str> = match self.ids.get_key_value(device) {
            Some((known, _)) => known.clone(),
            None => device.into(),
        };
        self.ids
            .entry(device.clone())
            .or_default()
            .insert(property.clone(), id);
        let slot = id as usize;
        if self.names.len() <= slot {
            let empty: Arc<str> = "".into();
            self.names.resize(slot + 1, (empty.clone(), empty));
        }
        self.names[slot] = (device, property);
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
        assert_eq!(dictionary.names(2), Some(("meter-2", "energy")));
        assert_eq!(dictionary.len(), 4);
        let (a, b) = (&dictionary.names[0].1, &dictionary.names[1].1);
        assert!(Arc::ptr_eq(a, b), "one `power` for both meters");
        assert_eq!(dictionary.iter().count(), 4);
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
