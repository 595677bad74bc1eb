//! The tap between the store writer and the rule engine.
//!
//! The writer hands every driver update to [`Feed::observe`] as it arrives,
//! before the batch is committed, so that control latency does not include
//! the group-commit window and the fsync. Only properties some rule reads are
//! kept; the engine takes what piled up in one go, so a burst costs one
//! wake-up, not one per reading.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use ferrite_models::Project;
use tokio::sync::Notify;

use crate::live::{Sample, Update};
use crate::time::Micros;

/// One reading of a watched property.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Device index.
    pub device: usize,
    /// Property index in its model.
    pub property: u16,
    /// What was read.
    pub sample: Sample,
    /// When.
    pub ts: Micros,
}

/// The writer-to-engine tap.
#[derive(Debug)]
pub struct Feed {
    /// Per device, per property: whether a rule reads it.
    watched: Vec<Vec<AtomicBool>>,
    inbox: Mutex<Vec<Observation>>,
    notify: Notify,
}

impl Feed {
    /// A feed shaped like `project`'s devices, watching nothing yet.
    pub fn new(project: &Project) -> Feed {
        let watched = project
            .devices
            .values()
            .map(|d| {
                let n = project
                    .models
                    .get(&d.value.model)
                    .map_or(0, |m| m.value.properties.len());
                (0..n).map(|_| AtomicBool::new(false)).collect()
            })
            .collect();
        Feed {
            watched,
            inbox: Mutex::new(Vec::new()),
            notify: Notify::new(),
        }
    }

    /// Watches exactly `properties` (device index, property index).
    pub fn watch(&self, properties: &HashSet<(usize, u16)>) {
        for (d, props) in self.watched.iter().enumerate() {
            for (p, flag) in props.iter().enumerate() {
                let wanted = u16::try_from(p).is_ok_and(|p| properties.contains(&(d, p)));
                flag.store(wanted, Ordering::Relaxed);
            }
        }
    }

    /// Called by the store writer for each update it receives.
    pub fn observe(&self, update: &Update) {
        let Some(flags) = self.watched.get(update.device) else {
            return;
        };
        let mut kept = Vec::new();
        for (property, sample) in &update.samples {
            let watched = flags
                .get(usize::from(*property))
                .is_some_and(|f| f.load(Ordering::Relaxed));
            if watched {
                kept.push(Observation {
                    device: update.device,
                    property: *property,
                    sample: sample.clone(),
                    ts: update.ts,
                });
            }
        }
        if kept.is_empty() {
            return;
        }
        self.inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(&mut kept);
        self.notify.notify_one();
    }

    /// Waits until something was observed since the last [`Feed::take`].
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// Everything observed since the last call, oldest first.
    pub fn take(&self) -> Vec<Observation> {
        std::mem::take(&mut *self.inbox.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
