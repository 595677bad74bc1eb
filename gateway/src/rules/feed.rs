//! The tap between the store writer and the rule engine.
//!
//! The writer hands every driver update to [`Feed::observe`] as it arrives,
//! before the batch is committed, so that control latency does not include
//! the group-commit window and the fsync. Only properties some rule reads are
//! kept; the engine takes what piled up in one go, so a burst costs one
//! wake-up, not one per reading.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError, RwLock};

use tokio::sync::Notify;

use crate::live::{Sample, Update};
use crate::time::Micros;

/// One reading of a watched property.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Device number ([`crate::names::Names`]).
    pub device: usize,
    /// Property number.
    pub property: u16,
    /// What was read.
    pub sample: Sample,
    /// When.
    pub ts: Micros,
}

/// The writer-to-engine tap.
#[derive(Debug, Default)]
pub struct Feed {
    /// Per device number, per property number: whether a rule reads it.
    watched: RwLock<Vec<Vec<bool>>>,
    inbox: Mutex<Vec<Observation>>,
    notify: Notify,
}

impl Feed {
    /// A feed watching nothing yet.
    pub fn new() -> Feed {
        Feed::default()
    }

    /// Watches exactly `properties` (device number, property number).
    pub fn watch(&self, properties: &HashSet<(usize, u16)>) {
        let mut watched: Vec<Vec<bool>> = Vec::new();
        for &(d, p) in properties {
            if watched.len() <= d {
                watched.resize_with(d + 1, Vec::new);
            }
            let flags = &mut watched[d];
            let p = usize::from(p);
            if flags.len() <= p {
                flags.resize(p + 1, false);
            }
            flags[p] = true;
        }
        *self.watched.write().unwrap_or_else(PoisonError::into_inner) = watched;
    }

    /// Called by the store writer for each update it receives.
    pub fn observe(&self, update: &Update) {
        let mut kept = Vec::new();
        {
            let watched = self.watched.read().unwrap_or_else(PoisonError::into_inner);
            let Some(flags) = watched.get(update.device) else {
                return;
            };
            for (i, (property, sample)) in update.samples.iter().enumerate() {
                if flags.get(usize::from(*property)).copied().unwrap_or(false) {
                    kept.push(Observation {
                        device: update.device,
                        property: *property,
                        sample: sample.clone(),
                        ts: update.ts_of(i),
                    });
                }
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

impl crate::store::writer::Tap for Feed {
    fn observe(&self, update: &Update) {
        Feed::observe(self, update);
    }
}
