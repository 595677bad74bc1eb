//! Device documents and entries for the drivers' tests.

use std::path::Path;
use std::sync::Arc;

use ferrite_core::driver::DeviceEntry;
use ferrite_models::project::{DocKind, Loader, Project};

/// The project of `docs`, which must load without errors.
pub(crate) fn project(docs: &str) -> Project {
    let mut loader = Loader::default();
    loader.load_text(
        Path::new("docs.yaml"),
        docs,
        &[DocKind::DeviceModel, DocKind::Device],
    );
    let report = loader.finish();
    assert_eq!(report.errors, 0, "{:?}", report.diagnostics);
    report.project
}

/// Each property's name in `model` of `project`, and its number
/// (model order).
pub(crate) fn properties(project: &Project, model: &str) -> (Vec<Arc<str>>, Vec<u16>) {
    let names: Vec<Arc<str>> = project.models[model]
        .value
        .properties
        .keys()
        .map(|k| Arc::from(k.as_str()))
        .collect();
    let numbers = (0..names.len() as u16).collect();
    (names, numbers)
}

/// The entry of device `name` of `project`, numbered `index`.
pub(crate) fn entry<'a>(
    project: &'a Project,
    index: usize,
    name: &'a str,
    (names, numbers): &'a (Vec<Arc<str>>, Vec<u16>),
) -> DeviceEntry<'a> {
    let located = &project.devices[name];
    DeviceEntry {
        index,
        name,
        located,
        model: &project.models[&located.value.model].value,
        numbers,
        names,
    }
}
