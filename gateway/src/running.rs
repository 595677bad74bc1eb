//! The configuration the gateway runs now: the project (models, devices,
//! rules, the config file), swapped whole when the reconciler applies a new
//! one. Readers take a cheap `Arc` of it and keep a consistent view for as
//! long as they hold it. It runs without its documents' source trees, which
//! only the check that came before needed (see
//! [`Project::forget_sources`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use ferrite_models::Project;

/// The running project.
#[derive(Debug)]
pub struct Running {
    project: RwLock<Arc<Project>>,
    /// Bumped at every swap, so that a task can tell cheaply that it must
    /// refresh what it took from the project.
    generation: AtomicU64,
}

impl Running {
    /// Runs `project`.
    pub fn new(mut project: Project) -> Arc<Running> {
        project.forget_sources();
        Arc::new(Running {
            project: RwLock::new(Arc::new(project)),
            generation: AtomicU64::new(0),
        })
    }

    /// The project now.
    pub fn project(&self) -> Arc<Project> {
        self.project
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Bumped by every [`Running::replace`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Runs `project` from now on, and returns it as it runs.
    pub fn replace(&self, mut project: Project) -> Arc<Project> {
        project.forget_sources();
        let project = Arc::new(project);
        *self.project.write().unwrap_or_else(PoisonError::into_inner) = project.clone();
        self.generation.fetch_add(1, Ordering::AcqRel);
        project
    }
}

#[cfg(test)]
mod tests {
    use ferrite_models::source::NodeValue;

    use super::*;
    use crate::names::tests::project as project_of;

    fn project(unit: u8) -> Project {
        project_of(&[
            "kind: DeviceModel\nname: meter\nproperties:\n  volts: { type: float, modbus: { table: input, address: 0, format: f32 } }\n",
            &format!(
                "kind: Device\nname: m1\nmodel: meter\nmodbus-tcp: {{ host: 127.0.0.1, port: 502, unit: {unit} }}\n"
            ),
        ])
    }

    fn without_trees(project: &Project) -> bool {
        let empty = |value: &NodeValue| matches!(value, NodeValue::Map(m) if m.is_empty());
        project.models.values().all(|m| empty(&m.node.value))
            && project.devices.values().all(|d| empty(&d.node.value))
    }

    #[test]
    fn the_running_project_keeps_no_source_trees() {
        let first = project(1);
        assert!(!without_trees(&first), "a loaded project has its trees");
        let running = Running::new(first);
        assert!(without_trees(&running.project()));
        assert!(running.project().property("m1", "volts").is_some());

        let swapped = running.replace(project(2));
        assert!(without_trees(&swapped));
        assert!(Arc::ptr_eq(&swapped, &running.project()));
        assert_eq!(running.generation(), 1);
    }
}
