//! # ferrite-sync: the uplink to `ferrite-cloud`
//!
//! Not built yet: this crate holds the place in the workspace for the sync
//! work (issue 7). The plan, so the layout is visible from here:
//! - `outbox`: every change past the deadband, appended to sled with a rising
//!   sequence number, trimmed only after the control plane acknowledges it;
//! - `delta`: batches cut by time and size, encoded as
//!   [`ferrite_proto::sync::v1::DeltaBatch`] and compressed with zstd;
//! - `transport`: MQTT (rumqttc, QoS 1) to the control plane's broker, resuming
//!   from the last acknowledged sequence after every reconnect;
//! - the `ferrite-cloud` binary: the control plane, with its embedded broker.

/// The wire messages this crate will speak.
pub use ferrite_proto::sync::v1 as wire;
