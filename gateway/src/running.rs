//! The configuration the gateway runs now: the project (models, devices,
//! rules, the config file), swapped whole when the reconciler applies a new
//! one. Readers take a cheap `Arc` of it and keep a consistent view for as
//! long as they hold it.

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
    pub fn new(project: Project) -> Arc<Running> {
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

    /// Runs `project` from now on.
    pub fn replace(&self, project: Arc<Project>) {
        *self.project.write().unwrap_or_else(PoisonError::into_inner) = project;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}
