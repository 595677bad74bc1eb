//! Series ids and their names, each name held once in memory.
//!
//! A thousand devices of one model share their property names: a property
//! name is one `Arc<str>` however many devices have it, and a device name one
//! however many properties. Lookups by `&str` allocate nothing (the commit
//! path and every history query make one per change or request).

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
}
