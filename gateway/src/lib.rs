//! # ferrite-gateway: the `ferrite` binary's library
//!
//! The gateway wires the leaf crates together: devices are polled by
//! drivers, their readings go through the store writer into the store (a
//! commit log and history block files of its own, sled for names and
//! metadata) and the live view, and the
//! REST API serves both.
//!
//! ```text
//! drivers ──Update──▶ store::writer ──▶ commit log + blocks + sled (history)
//!    ▲                     │  │
//!    │ DeviceWriter        │  └─feed─▶ rules ──▶ journal (events, audit)
//!    │                     ▼            │
//!  control ◀───────────── live          │ writes
//!    ▲  ▲  ▲                            │
//!   api │  └────────────────────────────┘
//!       ├── uplink (desired state) ◀──MQTT──▶ ferrite-cloud
//!       │    ▲ reads the outbox the writer fills (with [cloud])
//!       └── north (DCMD, /set) ◀──MQTT──▶ SCADA, a UNS broker
//!            ▲ reads the same log from its own cursor (with [north])
//!
//! folders, api, uplink (bundles) ──▶ reconcile ──▶ running (the project)
//!                                        └──▶ fleet (start/stop devices), rules
//! ```
//!
//! ## A tour
//! - [`cli`], [`commands`]: the command line (`check`, `schema`, `run`,
//!   `demo`, `discover`).
//! - [`onboard`]: `ferrite discover`: models and devices made from what a
//!   device says about itself.
//! - [`runtime`]: starts and stops everything together; clean shutdown.
//! - [`reconcile`]: live configuration: a change to models, devices or
//!   rules (from the folders, the API or the control plane) checked whole,
//!   written to the folders, applied to only what it changes, versioned,
//!   rolled back.
//! - [`fleet`]: the running devices, each started on its driver with a
//!   shutdown token of its own, so one can stop or restart alone.
//! - [`running`]: the project that runs now, swapped by the reconciler.
//! - [`names`]: stable numbers for device and property names, which the
//!   hot path uses instead of the names.
//! - [`service`]: systemd readiness and watchdog (sd_notify).
//! - [`allocator`]: glibc's malloc set to give large blocks back.
//! - The drivers live in their own crate, `ferrite-drivers` (one folder
//!   per protocol, and the embedded broker), on the contract of
//!   `ferrite-core` (the `Driver` trait, readings, times). Neither depends on
//!   this crate: [`runtime`] makes the drivers and hands them to [`fleet`].
//! - [`store`]: the storage trait, its implementation (a commit log, block
//!   files and sled), and the writer task that batches, fsyncs, then publishes.
//! - [`live`]: statuses and latest readings, as the API shows them.
//! - [`control`]: the one checked write path (REST and rules): model
//!   checks, rule holds, the audit log.
//! - [`rules`]: the CEL rule engine: feed, state machine, actions, reload.
//! - [`journal`]: events and the audit log, kept within limits.
//! - [`api`]: the REST API of docs/contract.md on axum, the OpenAPI document
//!   and the dashboard it serves at `/`.
//! - [`metrics`]: the Prometheus series of `/metrics`.
//! - [`uplink`]: with `[cloud]`, ferrite-sync's uplink on the store's
//!   outbox, and the twin's desired state through [`control`].
//! - [`north`]: with `[north]`, every device on an external broker as a
//!   Sparkplug B edge node or a Unified Namespace, stored and forwarded
//!   from the store's log; DCMD and UNS writes through [`control`].
//! - `demo` (feature `demo`): `ferrite demo`, the gateway plus simulated
//!   devices.
//! - `time` and `backoff` are `ferrite-core`'s, re-exported.

pub mod allocator;
pub mod api;
pub mod cli;
pub mod commands;
pub mod control;
#[cfg(feature = "demo")]
pub mod demo;
pub mod fleet;
pub mod journal;
pub mod live;
pub mod metrics;
pub mod names;
pub mod north;
pub mod onboard;
pub mod reconcile;
pub mod rules;
pub mod running;
pub mod runtime;
pub mod service;
pub mod store;
pub mod uplink;

pub use ferrite_core::{backoff, time};
#[cfg(feature = "mqtt")]
pub use ferrite_drivers::broker;
