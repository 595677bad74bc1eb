//! # ferrite-sync: the uplink to `ferrite-cloud`
//!
//! In progress (issue 7). Built so far:
//! - [`delta`]: changes → [`wire::DeltaBatch`] (dictionary ids, per-property
//!   columns, delta-encoded times and values, short decimals as scaled
//!   integers) → protobuf → zstd, and back, with every hostile input an
//!   error. `benches/sync_bytes.rs` measures the bytes per point against
//!   naive JSON.
//! - [`outbox`]: changes in sled with a sequence number that rises across
//!   restarts, read in order, removed only when acknowledged or, over the
//!   disk budget, oldest first and counted.
//! - [`session`]: the bookkeeping of both ends, free of I/O: the gateway's
//!   `Batcher` cuts the outbox into numbered, compressed batches; the
//!   control plane's `Applier` applies a batch only if it continues exactly
//!   where the last one ended (redeliveries are acknowledged again, gaps and
//!   overlaps are refused with where to resume).
//!
//! Still to come, in this layout:
//! - wiring the outbox into the gateway's store writer (same commit as the
//!   history);
//! - `transport`: MQTT (rumqttc, QoS 1) to the control plane's broker,
//!   resuming from the last acknowledged sequence after every reconnect;
//! - the `ferrite-cloud` binary: the control plane, with its embedded broker.

pub mod delta;
pub mod outbox;
pub mod session;

/// The wire messages this crate speaks.
pub use ferrite_proto::sync::v1 as wire;
