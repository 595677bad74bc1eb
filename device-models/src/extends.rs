//! Templates: a model that `extends` another gets the other's properties
//! and methods, then its own, which add to them or override one of the same
//! name.
//!
//! [`resolve`] runs once everything is loaded and each model has been
//! checked as written: it follows each chain (refusing an unknown base, a
//! cycle, a chain deeper than [`MAX_DEPTH`], and an override that changes a
//! property's type), then replaces each derived model's properties and
//! methods with the whole chain's, so that devices, rules, drivers and the
//! API see one flat model.

use std::collections::HashMap;

use indexmap::IndexMap;

use crate::diag::Diagnostics;
use crate::model::{Method, Property};
use crate::project::Project;

/// The longest chain of `extends`.
pub const MAX_DEPTH: usize = 16;

/// A model's properties and methods with its bases'.
type Flat = (IndexMap<String, Property>, IndexMap<String, Method>);

/// Follows every model's `extends` and flattens the derived ones.
pub fn resolve(project: &mut Project, diags: &mut Diagnostics) {
    let names: Vec<String> = project
        .models
        .iter()
        .filter(|(_, m)| m.value.extends.is_some())
        .map(|(name, _)| name.clone())
        .collect();
    let mut done: HashMap<String, Option<Flat>> = HashMap::new();
    for name in &names {
        let mut chain = Vec::new();
        flatten(project, name, &mut chain, &mut done, diags);
    }
    for name in names {
        match done.remove(&name).flatten() {
            Some((properties, methods)) => {
                if let Some(model) = project.models.get_mut(&name) {
                    model.value.properties = properties;
                    model.value.methods = methods;
                }
            }
            // Its devices are not checked against a model that is half
            // there: the chain's error says what is wrong.
            None => {
                project.incomplete_models.insert(name);
            }
        }
    }
}

/// The flat properties and methods of `name`, or `None` when its chain is
/// broken (reported once, on the model whose `extends` breaks it).
fn flatten(
    project: &Project,
    name: &str,
    chain: &mut Vec<String>,
    done: &mut HashMap<String, Option<Flat>>,
    diags: &mut Diagnostics,
) -> Option<Flat> {
    if let Some(known) = done.get(name) {
        return known.clone();
    }
    let model = project.models.get(name)?;
    let Some(base) = &model.value.extends else {
        return Some((model.value.properties.clone(), model.value.methods.clone()));
    };
    let at = model.pos(&["extends"]);
    let file = model.file.clone();
    chain.push(name.to_string());
    let flat = if chain.iter().any(|n| n == base) {
        let cycle = chain
            .iter()
            .skip_while(|n| *n != base)
            .chain(std::iter::once(base))
            .cloned()
            .collect::<Vec<_>>()
            .join(" → ");
        diags.error(&file, at, format!("`extends` makes a cycle: {cycle}"));
        None
    } else if chain.len() > MAX_DEPTH {
        diags.error(
            &file,
            at,
            format!("the chain of `extends` is deeper than {MAX_DEPTH} models"),
        );
        None
    } else if !project.models.contains_key(base) {
        let hint = if project.incomplete_models.contains(base) {
            " (it has errors of its own)"
        } else {
            ""
        };
        diags.error(
            &file,
            at,
            format!("model `{name}` extends `{base}`, which is not a loaded model{hint}"),
        );
        None
    } else {
        flatten(project, base, chain, done, diags).map(|(mut properties, mut methods)| {
            for (key, own) in &model.value.properties {
                if let Some(inherited) = properties.get(key)
                    && inherited.ty != own.ty
                {
                    diags.error(
                        &file,
                        model.pos(&["properties", key, "type"]),
                        format!(
                            "`{key}` is a {} in `{base}`; an override keeps its type, not {}",
                            inherited.ty, own.ty
                        ),
                    );
                }
                // An override keeps the inherited property's place.
                properties.insert(key.clone(), own.clone());
            }
            for (key, own) in &model.value.methods {
                methods.insert(key.clone(), own.clone());
            }
            (properties, methods)
        })
    };
    chain.pop();
    // A chain broken further up is reported there; this model only
    // inherits the breakage.
    done.insert(name.to_string(), flat.clone());
    flat
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::project::{DocKind, Loader, Report};

    fn load(files: &[(&str, &str)]) -> Report {
        let mut loader = Loader::default();
        for (name, text) in files {
            loader.load_text(
                Path::new(name),
                text,
                &[DocKind::DeviceModel, DocKind::Device],
            );
        }
        loader.finish()
    }

    fn shown(report: &Report) -> Vec<String> {
        report.diagnostics.iter().map(ToString::to_string).collect()
    }

    const BASE: &str = "kind: DeviceModel\nname: meter\nproperties:\n  voltage: { type: float, unit: V, modbus: { table: input, address: 0, format: f32 } }\n  current: { type: float, unit: A, modbus: { table: input, address: 2, format: f32 } }\n";

    #[test]
    fn a_derived_model_holds_the_chain_in_order_with_overrides_in_place() {
        let three_phase = "kind: DeviceModel\nname: meter-3p\nextends: meter\nproperties:\n  current: { type: float, unit: mA, modbus: { table: input, address: 2, format: f32, scale: 1000 } }\n  voltage_l2: { type: float, unit: V, modbus: { table: input, address: 4, format: f32 } }\n";
        let with_energy = "kind: DeviceModel\nname: meter-3p-e\nextends: meter-3p\nproperties:\n  energy: { type: int, unit: Wh, modbus: { table: input, address: 6, format: u32 } }\n";
        let device = "kind: Device\nname: m1\nmodel: meter-3p-e\nmodbus-tcp: { host: 127.0.0.1 }\n";
        let report = load(&[
            ("c.yaml", with_energy),
            ("a.yaml", BASE),
            ("b.yaml", three_phase),
            ("d.yaml", device),
        ]);
        assert!(report.is_ok(), "{:#?}", shown(&report));
        let flat = &report.project.models["meter-3p-e"].value;
        let names: Vec<&str> = flat.properties.keys().map(String::as_str).collect();
        assert_eq!(names, ["voltage", "current", "voltage_l2", "energy"]);
        assert_eq!(flat.properties["current"].unit.as_deref(), Some("mA"));
        assert_eq!(flat.extends.as_deref(), Some("meter-3p"));
        // The base is untouched.
        assert_eq!(report.project.models["meter"].value.properties.len(), 2);
    }

    #[test]
    fn cycles_unknown_bases_and_type_changes_are_errors_at_their_place() {
        let a = "kind: DeviceModel\nname: a\nextends: b\nproperties: {}\n";
        let b = "kind: DeviceModel\nname: b\nextends: a\nproperties: {}\n";
        let orphan = "kind: DeviceModel\nname: orphan\nextends: nowhere\nproperties: {}\n";
        let retyped = "kind: DeviceModel\nname: retyped\nextends: meter\nproperties:\n  voltage: { type: int, modbus: { table: input, address: 0 } }\n";
        let device = "kind: Device\nname: d\nmodel: orphan\nmodbus-tcp: { host: 127.0.0.1 }\n";
        let report = load(&[
            ("a.yaml", a),
            ("b.yaml", b),
            ("base.yaml", BASE),
            ("orphan.yaml", orphan),
            ("retyped.yaml", retyped),
            ("d.yaml", device),
        ]);
        assert_eq!(
            shown(&report),
            [
                // Once, where following the chain closed it.
                "b.yaml:3:10: error: `extends` makes a cycle: a → b → a",
                "orphan.yaml:3:10: error: model `orphan` extends `nowhere`, which is not a loaded model",
                "retyped.yaml:5:20: error: `voltage` is a float in `meter`; an override keeps its type, not int",
            ]
        );
    }
}
