//! # ferrite-sync: the uplink to `ferrite-cloud`
//!
//! The gateway's uplink and the control plane, over MQTT:
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
//! - [`topics`]: the MQTT topics of both ends.
//! - [`link`]: connecting to a broker (`mqtt://`, `mqtts://` with rustls,
//!   username and password, client certificates).
//! - [`uplink`]: the gateway's side: Hello and Resume, batches cut by time
//!   and size, at most a window in flight, the outbox trimmed on Ack; the
//!   gateway's journal events beside them (`EventBatch`/`EventAck`); the
//!   twin's desired patches applied in version order through the gateway's
//!   write path.
//! - [`sled_open`]: opens sled past an unfinished snapshot file (left by a
//!   crash or a full disk), which sled 0.34 would take for corruption; both
//!   stores open through it.
//! - [`cloud`] (feature `cloud`, the `ferrite-cloud` binary): the control
//!   plane: embedded rumqttd or an external broker, a sled store written
//!   once per batch, atomically, and the REST API.
//! - [`serve`] (feature `serve`): the accept loop both REST APIs run on
//!   (HTTPS, a connection cap, header timeouts); [`health_probe`], the
//!   `GET /healthz` client behind both binaries' `health` command (a
//!   container's `HEALTHCHECK`).

pub mod delta;
pub mod link;
pub mod outbox;
pub mod session;
pub mod sled_open;
pub mod topics;
pub mod uplink;

#[cfg(feature = "serve")]
pub mod api_shape;
#[cfg(feature = "cloud")]
pub mod cloud;
#[cfg(feature = "serve")]
pub mod health_probe;
#[cfg(feature = "serve")]
pub mod origin;
#[cfg(feature = "serve")]
pub mod serve;

/// The wire messages this crate speaks.
pub use ferrite_proto::sync::v1 as wire;
