//! Onboarding: models and devices made from what a device says about itself
//! (`ferrite discover`), rather than typed by hand.
//!
//! - `opcua`: `ferrite discover opcua`: the driver's browse
//!   (`ferrite_drivers::opcua::discover`) turned into a DeviceModel and a
//!   Device.
//! - `modbus`: `ferrite discover modbus`: the driver's scan
//!   (`ferrite_drivers::modbus::discover`) printed as a table, and drafts of
//!   a model and a device per unit.
//! - `csv`: `ferrite import csv` and `ferrite export csv`: tag lists to
//!   models and back (`ferrite_models::taglist`), with the files around it.
//! - here: what every path shares: property names made valid and unique
//!   from a device's own names, and writing the files (YAML, each file
//!   whole or not at all, never over an existing one unless asked).

pub mod csv;
#[cfg(feature = "modbus")]
pub mod modbus;
#[cfg(feature = "opcua")]
pub mod opcua;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ferrite_models::units::NAME_MAX;

/// A property name from a device's own path of names (folders, objects,
/// the variable): each part made valid (anything but letters, digits, `-`
/// and `_` becomes `_`), the parts joined with `.`. A name longer than
/// [`NAME_MAX`] keeps its last parts (the variable's own name matters
/// most), cut to fit.
pub fn property_name(path: &[String]) -> String {
    let parts: Vec<String> = path
        .iter()
        .map(|part| clean_part(part))
        .filter(|p| !p.is_empty())
        .collect();
    let mut name = String::new();
    for part in parts.iter().rev() {
        let longer = if name.is_empty() {
            part.clone()
        } else {
            format!("{part}.{name}")
        };
        if longer.len() > NAME_MAX {
            if name.is_empty() {
                name = part.chars().take(NAME_MAX).collect();
            }
            break;
        }
        name = longer;
    }
    if name.is_empty() {
        name = "value".into();
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.insert(0, 'p');
        name.truncate(NAME_MAX);
    }
    name
}

fn clean_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '-' {
            c
        } else {
            '_'
        };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    out.trim_matches('_').to_string()
}

/// Names from `paths`, in their order, made unique: a later path whose
/// name is taken gets `_2`, `_3`... So the same paths in the same order
/// always give the same names.
pub fn unique_names(paths: &[Vec<String>]) -> Vec<String> {
    let mut taken = HashSet::new();
    paths
        .iter()
        .map(|path| {
            let base = property_name(path);
            let mut name = base.clone();
            let mut n = 2;
            while !taken.insert(name.clone()) {
                let suffix = format!("_{n}");
                let mut cut = base.clone();
                cut.truncate(NAME_MAX - suffix.len());
                name = format!("{cut}{suffix}");
                n += 1;
            }
            name
        })
        .collect()
}

/// One YAML document to write: where, a comment to head it, and the value.
pub struct YamlFile<'a, T: serde::Serialize> {
    /// The file.
    pub path: PathBuf,
    /// Lines put at the top as `# ` comments.
    pub header: &'a [String],
    /// The document.
    pub value: &'a T,
    /// Lines put at the end as `# ` comments.
    pub footer: &'a [String],
}

/// Refuses to go on when any of `paths` exists and `force` is not set.
pub fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), String> {
    if force {
        return Ok(());
    }
    for path in paths {
        if path.exists() {
            return Err(format!(
                "{} exists; pass --force to replace it",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Writes `file` whole (the reconciler's atomic write: a hidden temporary
/// file, synced, renamed over), so a gateway watching the folder never
/// reads half a file.
pub fn write_yaml<T: serde::Serialize>(file: &YamlFile<'_, T>) -> Result<(), String> {
    let body = serde_yaml::to_string(file.value)
        .map_err(|e| format!("cannot write {}: {e}", file.path.display()))?;
    let mut text = String::new();
    for line in file.header {
        text.push_str(&comment(line));
    }
    text.push_str(&body);
    if !file.footer.is_empty() {
        text.push('\n');
    }
    for line in file.footer {
        text.push_str(&comment(line));
    }
    crate::reconcile::snapshot::write_atomically(&file.path, &text)
        .map_err(|e| format!("cannot write {}: {e}", file.path.display()))
}

/// Writes a model, then the device on it (so that a gateway watching the
/// folders never sees the device without its model), both headed by
/// `header` (the device by its first line), the model ended by `footer`.
pub fn write_model_and_device(
    (model_path, model): (&Path, &ferrite_models::DeviceModel),
    (device_path, device): (&Path, &ferrite_models::Device),
    header: &[String],
    footer: &[String],
) -> Result<(), String> {
    write_yaml(&YamlFile {
        path: model_path.to_path_buf(),
        header,
        value: model,
        footer,
    })?;
    write_yaml(&YamlFile {
        path: device_path.to_path_buf(),
        header: &header[..header.len().min(1)],
        value: device,
        footer: &[],
    })
}

fn comment(line: &str) -> String {
    if line.is_empty() {
        "#\n".into()
    } else {
        format!("# {}\n", line.replace('\n', " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn names_are_valid_and_keep_the_structure() {
        assert_eq!(
            property_name(&path(&["Line 1", "Motor/2", "Speed (rpm)"])),
            "Line_1.Motor_2.Speed_rpm"
        );
        assert_eq!(property_name(&path(&["Boiler.Temp"])), "Boiler_Temp");
        assert_eq!(property_name(&path(&["_x"])), "x");
        assert_eq!(property_name(&path(&["-x"])), "p-x");
        assert_eq!(property_name(&path(&["°C"])), "C");
        assert_eq!(property_name(&path(&["%%"])), "value");
        let long = "a".repeat(40);
        let name = property_name(&path(&[&long, &long, "Temperature"]));
        assert_eq!(name, format!("{long}.Temperature"));
        assert_eq!(property_name(&path(&[&"b".repeat(80)])).len(), NAME_MAX);
        for name in [
            property_name(&path(&["Line 1", "Motor/2", "Speed (rpm)"])),
            property_name(&path(&[&"b".repeat(80)])),
            property_name(&path(&["-x"])),
        ] {
            ferrite_models::units::check_name(&name).expect("a valid name");
        }
    }

    #[test]
    fn clashing_names_get_numbers_in_order() {
        let paths = vec![
            path(&["A", "x y"]),
            path(&["A", "x/y"]),
            path(&["A", "x_y"]),
            path(&[&"c".repeat(64)]),
            path(&[&"c".repeat(70)]),
        ];
        let names = unique_names(&paths);
        assert_eq!(names[..3], ["A.x_y", "A.x_y_2", "A.x_y_3"]);
        assert_eq!(names[3], "c".repeat(64));
        assert_eq!(names[4], format!("{}_2", "c".repeat(62)));
        assert_eq!(
            unique_names(&paths),
            names,
            "the same input, the same names"
        );
    }
}
