//! Readings as drivers report them: a poll cycle's [`Update`] of
//! [`Sample`]s, the device [`Status`] it may change, and the [`Quality`] a
//! stored reading carries.

use ferrite_models::Value;
use serde::Serialize;

use crate::time::Micros;

/// How much a reading can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// Read in the last poll.
    Good,
    /// The last read failed; this is the last good value.
    Stale,
    /// The device answered, but the value could not be read or decoded.
    Bad,
}

/// Device status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Answering.
    Online,
    /// Not reachable, or not answering in time.
    Offline,
    /// Answering with errors (Modbus exceptions, undecodable values).
    Error,
}

/// What a driver learned about one property in one cycle.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// A fresh value.
    Good(Value),
    /// The read failed; keep the last value, marked stale.
    Stale,
    /// The device answered but the value is unusable.
    Bad,
}

/// What a driver reports after a poll cycle or a write.
#[derive(Debug)]
pub struct Update {
    /// The device's number (the gateway numbers devices and properties once, by name).
    pub device: usize,
    /// When the values were read.
    pub ts: Micros,
    /// New status, if it should change.
    pub status: Option<(Status, Option<String>)>,
    /// Whether the device answered at all.
    pub seen: bool,
    /// Per-property results, by the property's number.
    pub samples: Vec<(u16, Sample)>,
    /// Each sample's own time, where they differ (values stamped by the
    /// device's clock, OPC UA `timestamps`): `stamps[i]` is `samples[i]`'s.
    /// Empty: every sample was read at `ts`.
    pub stamps: Vec<Micros>,
    /// Signalled once the update is durable and visible.
    pub applied: Option<tokio::sync::oneshot::Sender<()>>,
    /// The audit entries (JSON bodies, from [`WriteAudit`]s) of the writes
    /// this read-back confirms: the store keeps them in the same commit as
    /// the update, so that a confirmed write costs one fsync. Empty for
    /// polls.
    ///
    /// [`WriteAudit`]: crate::driver::WriteAudit
    pub audit: Vec<Vec<u8>>,
}

impl Update {
    /// When sample `i` was read (or changed at its source).
    pub fn ts_of(&self, i: usize) -> Micros {
        self.stamps.get(i).copied().unwrap_or(self.ts)
    }
}
