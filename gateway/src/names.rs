//! Stable numbers for device and property names.
//!
//! The hot path (a driver's update, the store writer, the live view, the
//! rules' feed) refers to devices and properties by number, not by name. A
//! number is handed out the first time a name is seen and keeps meaning that
//! name for the life of the process, whatever the configuration does later:
//! an update still in a queue when its device is reconfigured or removed
//! lands on the right device and property, or on none, never on another.
//!
//! The first project's devices and properties are numbered in their order,
//! so before any reconfiguration a device's number is its position in the
//! project and a property's its position in the model. Names only grow in
//! number (one entry per distinct device and property name ever
//! configured), which bounds the table by what was configured, not by time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use ferrite_models::Project;

/// The table.
#[derive(Debug, Default)]
pub struct Names {
    inner: RwLock<Table>,
}

#[derive(Debug, Default)]
struct Table {
    devices: Vec<DeviceNames>,
    by_name: HashMap<Arc<str>, usize>,
    /// Every distinct property table, once: the devices of one model (the
    /// usual case: a thousand devices of a few models) share theirs, so the
    /// table costs a pointer per device, not a map per device.
    shared: HashSet<Arc<PropertyNames>>,
    /// Every property name, once.
    strings: HashSet<Arc<str>>,
}

#[derive(Debug, Default)]
struct DeviceNames {
    name: Arc<str>,
    properties: Arc<PropertyNames>,
}

/// One device's property numbers: number → name and back. Only grows.
#[derive(Debug, Default, Clone)]
struct PropertyNames {
    names: Vec<Arc<str>>,
    by_name: HashMap<Arc<str>, u16>,
}

// Two tables with the same names in the same order are the same table.
impl PartialEq for PropertyNames {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

impl Eq for PropertyNames {}

impl std::hash::Hash for PropertyNames {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.names.hash(state);
    }
}

/// Where a device's model puts each of its properties: the property numbers
/// in model order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The device's number.
    pub device: usize,
    /// Each model property's number, in model order.
    pub properties: Vec<u16>,
    /// Each model property's name, in model order (shared: every device
    /// holds the same `Arc` for one name).
    pub names: Vec<Arc<str>>,
}

impl Names {
    /// A table holding `project`'s devices and properties, in order.
    pub fn of(project: &Project) -> Arc<Names> {
        let names = Arc::new(Names::default());
        for name in project.devices.keys() {
            names.layout(project, name);
        }
        names
    }

    /// The number of `device` (handed out now if new).
    pub fn device(&self, device: &str) -> usize {
        if let Some(i) = self.read().by_name.get(device) {
            return *i;
        }
        let mut table = self.write();
        if let Some(i) = table.by_name.get(device) {
            return *i;
        }
        let name: Arc<str> = Arc::from(device);
        let i = table.devices.len();
        table.devices.push(DeviceNames {
            name: name.clone(),
            ..DeviceNames::default()
        });
        table.by_name.insert(name, i);
        i
    }

    /// The number of `device` if it was ever seen.
    pub fn find(&self, device: &str) -> Option<usize> {
        self.read().by_name.get(device).copied()
    }

    /// The numbers of `device` and of each of its model's properties, in
    /// model order (handed out now where new). A device whose model is
    /// unknown has no properties.
    pub fn layout(&self, project: &Project, device: &str) -> Layout {
        let index = self.device(device);
        let properties: Vec<&str> = project
            .devices
            .get(device)
            .and_then(|d| project.models.get(&d.value.model))
            .map(|m| m.value.properties.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut table = self.write();
        let Table {
            devices,
            shared,
            strings,
            ..
        } = &mut *table;
        let entry = &mut devices[index];
        if properties
            .iter()
            .any(|p| !entry.properties.by_name.contains_key(*p))
        {
            let mut grown = PropertyNames::clone(&entry.properties);
            for p in &properties {
                if grown.by_name.contains_key(*p) {
                    continue;
                }
                // A model has far fewer than 65 536 properties (the
                // checker's limits); saturate rather than wrap.
                let n = u16::try_from(grown.names.len()).unwrap_or(u16::MAX);
                let name = match strings.get(*p) {
                    Some(name) => name.clone(),
                    None => {
                        let name: Arc<str> = Arc::from(*p);
                        strings.insert(name.clone());
                        name
                    }
                };
                grown.names.push(name.clone());
                grown.by_name.insert(name, n);
            }
            entry.properties = match shared.get(&grown) {
                Some(table) => table.clone(),
                None => {
                    let table = Arc::new(grown);
                    shared.insert(table.clone());
                    table
                }
            };
        }
        // One lookup per property gives its number and the shared name.
        let table = &entry.properties;
        let (numbers, names) = properties
            .iter()
            .map(|p| match table.by_name.get_key_value(*p) {
                Some((name, n)) => (*n, name.clone()),
                None => (u16::MAX, Arc::from(*p)),
            })
            .unzip();
        Layout {
            device: index,
            properties: numbers,
            names,
        }
    }

    /// The number of `device`'s property `property`, if it was ever seen.
    pub fn property(&self, device: usize, property: &str) -> Option<u16> {
        self.read()
            .devices
            .get(device)?
            .properties
            .by_name
            .get(property)
            .copied()
    }

    /// How many property numbers device number `device` has handed out.
    pub fn property_count(&self, device: usize) -> usize {
        self.read()
            .devices
            .get(device)
            .map_or(0, |d| d.properties.names.len())
    }

    /// The name of device number `device`.
    pub fn device_name(&self, device: usize) -> Option<Arc<str>> {
        Some(self.read().devices.get(device)?.name.clone())
    }

    /// The names of device number `device` and its property `property`.
    pub fn property_name(&self, device: usize, property: u16) -> Option<(Arc<str>, Arc<str>)> {
        let table = self.read();
        let entry = table.devices.get(device)?;
        let property = entry.properties.names.get(usize::from(property))?.clone();
        Some((entry.name.clone(), property))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A project of YAML documents (models and devices).
    pub(crate) fn project(files: &[&str]) -> Project {
        let mut loader = ferrite_models::project::Loader::default();
        for (i, text) in files.iter().enumerate() {
            loader.load_text(
                std::path::Path::new(&format!("f{i}.yaml")),
                text,
                &[
                    ferrite_models::project::DocKind::DeviceModel,
                    ferrite_models::project::DocKind::Device,
                ],
            );
        }
        loader.project
    }

    const MODEL: &str =
        "kind: DeviceModel\nname: m\nproperties:\n  a: { type: int }\n  b: { type: int }\n";

    #[test]
    fn the_first_project_is_numbered_in_order_and_numbers_never_move() {
        let first = project(&[
            MODEL,
            "kind: Device\nname: d1\nmodel: m\nmqtt: {}\n",
            "kind: Device\nname: d2\nmodel: m\nmqtt: {}\n",
        ]);
        let names = Names::of(&first);
        assert_eq!(names.layout(&first, "d1").properties, [0, 1]);
        assert_eq!(names.layout(&first, "d2").device, 1);
        // The model loses `a` and gains `c`; d1 goes, d3 comes.
        let second = project(&[
            "kind: DeviceModel\nname: m\nproperties:\n  c: { type: int }\n  b: { type: int }\n",
            "kind: Device\nname: d3\nmodel: m\nmqtt: {}\n",
            "kind: Device\nname: d2\nmodel: m\nmqtt: {}\n",
        ]);
        let d2 = names.layout(&second, "d2");
        assert_eq!(
            d2,
            Layout {
                device: 1,
                properties: vec![2, 1],
                names: vec![Arc::from("c"), Arc::from("b")],
            }
        );
        assert_eq!(names.layout(&second, "d3").device, 2);
        assert_eq!(names.device("d1"), 0, "a removed device keeps its number");
        assert_eq!(
            names
                .property_name(1, 0)
                .map(|(d, p)| (d.to_string(), p.to_string())),
            Some(("d2".into(), "a".into())),
            "so does a removed property"
        );
        assert_eq!(names.property(1, "c"), Some(2));
        assert_eq!(names.find("nope"), None);
    }

    #[test]
    fn devices_of_one_model_share_one_table_until_one_grows() {
        let first = project(&[
            MODEL,
            "kind: Device\nname: d1\nmodel: m\nmqtt: {}\n",
            "kind: Device\nname: d2\nmodel: m\nmqtt: {}\n",
        ]);
        let names = Names::of(&first);
        let shared = |names: &Names| {
            let table = names.read();
            Arc::ptr_eq(&table.devices[0].properties, &table.devices[1].properties)
        };
        assert!(shared(&names));
        let (d1, d2) = (names.layout(&first, "d1"), names.layout(&first, "d2"));
        assert!(Arc::ptr_eq(&d1.names[1], &d2.names[1]), "one Arc per name");
        // d2's model gains `c`: d2 gets a table of its own, d1 keeps its.
        let second = project(&[
            MODEL,
            "kind: DeviceModel\nname: n\nproperties:\n  c: { type: int }\n  a: { type: int }\n",
            "kind: Device\nname: d1\nmodel: m\nmqtt: {}\n",
            "kind: Device\nname: d2\nmodel: n\nmqtt: {}\n",
        ]);
        assert_eq!(names.layout(&second, "d2").properties, [2, 0]);
        assert!(!shared(&names));
        assert_eq!(names.layout(&second, "d1").properties, [0, 1]);
        assert_eq!(names.property(1, "c"), Some(2));
        assert_eq!(names.property(0, "c"), None);
    }
}
