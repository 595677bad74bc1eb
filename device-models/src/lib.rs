//! # ferrite-models: Ferrite's device-model language
//!
//! Ferrite describes devices declaratively. This crate owns those documents:
//! their types, their parsing, their validation and their JSON Schema. It does
//! no I/O beyond reading files, and has no async runtime, so that tools and the
//! cloud side can reuse it.
//!
//! ## A tour
//! - [`source`]: YAML and TOML parse into one tree of positioned nodes, within
//!   hard limits (file size, nesting depth, alias expansion); a serde
//!   deserializer over that tree reports every error at its `line:col`.
//! - [`model`], [`device`], [`rule`], [`config`]: the typed documents of
//!   docs/contract.md. A model is a kind of device (typed properties with a binding
//!   per protocol); a device is one instance (a model plus one protocol
//!   section); a rule is a CEL condition plus actions; the config ties
//!   folders of them together.
//! - [`project`]: loads a config and every file it names, collecting every
//!   problem rather than stopping at the first.
//! - [`validate`]: the checks that span documents (a device's model exists and
//!   has bindings for its protocol, a rule's references resolve, ...).
//! - [`extends`]: templates: a model that `extends` another, flattened once
//!   loaded so that everything downstream sees one model.
//! - [`expr`]: CEL parsing and the device properties an expression reads.
//! - [`schema`]: JSON Schemas generated from the same types.
//! - [`diag`]: `file:line:col: message` findings.
//! - [`value`]: property values, and the one check every write goes
//!   through (access, type, limits).
//! - [`taglist`]: CSV tag lists (Kepware's and a plain layout) to Modbus
//!   models and back, every bad cell a `file:line:col` finding.
//! - [`codec`]: Modbus register encoding, shared by the driver and the
//!   simulator.
//! - [`payload`]: plain MQTT payloads (JSON Pointer or bare value) to
//!   readings, and writes to command payloads.
//! - `sparkplug` (feature `sparkplug`): Sparkplug B metrics to and from
//!   values.
//! - `ua` (feature `opcua`): values to and from OPC UA Variants, checked
//!   against the node's DataType, shared the same way.
//!
//! ```
//! let report = ferrite_models::project::check(std::path::Path::new("../examples/demo/ferrite.toml"));
//! for finding in &report.diagnostics {
//!     println!("{finding}");
//! }
//! assert!(report.is_ok(), "{}", report.summary());
//! ```

pub mod codec;
pub mod config;
pub mod device;
pub mod diag;
pub mod expr;
pub mod extends;
pub mod model;
pub mod payload;
pub mod project;
pub mod rule;
pub mod schema;
pub mod source;
#[cfg(feature = "sparkplug")]
pub mod sparkplug;
pub mod taglist;
pub mod tokens;
#[cfg(feature = "opcua")]
pub mod ua;
pub mod units;
pub mod validate;
pub mod value;

pub use config::Config;
pub use device::{Device, Protocol};
pub use diag::{Diagnostic, Severity};
pub use model::{DeviceModel, Property};
pub use project::{Project, Report, check};
pub use rule::Rule;
pub use value::Value;
