//! # ferrite-core: what the gateway and its drivers share
//!
//! The drivers (`ferrite-drivers`) depend on this crate and never on the
//! gateway, so the gateway's layering is checked by Cargo: a driver cannot
//! reach the store, the rules or the API.
//!
//! ```text
//! ferrite-models ◀── ferrite-core ◀── ferrite-drivers ◀── ferrite-gateway
//!  (YAML, types)     (this crate)      (modbus, opcua,     (store, rules,
//!                                       mqtt, broker)       control, API)
//! ```
//!
//! ## A tour
//! - [`reading`]: what a poll cycle reports ([`reading::Update`] of
//!   [`reading::Sample`]s), device [`reading::Status`] and reading
//!   [`reading::Quality`].
//! - [`driver`]: the [`driver::Driver`] trait (made once, starting devices
//!   one at a time), the [`driver::DriverContext`] it runs on (bounded
//!   queues to the store writer, shutdown, task tracker), the
//!   [`driver::DeviceWriter`] writes go through, the
//!   [`driver::DeviceEvent`]s a device raises for the events journal, typed
//!   errors
//!   ([`driver::DriverError`], [`driver::StartError`]), the meters drivers
//!   count with, and [`driver::supervise`], which restarts a device loop
//!   after a panic.
//! - [`queue`]: a bounded queue that drops its oldest entry when full, for
//!   producers that must never wait.
//! - [`time`]: timestamps in microseconds since the Unix epoch, RFC 3339.
//! - [`backoff`]: retry delays that grow, with jitter.
//! - [`shared`]: an [`shared::Interner`] that holds equal tables once (a
//!   model's, for all of its devices).

pub mod backoff;
pub mod driver;
pub mod queue;
pub mod reading;
pub mod shared;
pub mod time;
