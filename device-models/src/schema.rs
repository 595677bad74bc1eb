//! JSON Schemas for editors and CI, derived from the same Rust types the
//! parser uses, so that the schema and the parser cannot drift apart.

use schemars::{JsonSchema, generate::SchemaSettings};

use crate::config::Config;
use crate::device::Device;
use crate::model::DeviceModel;
use crate::rule::Rule;

/// The documents a schema can be printed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaKind {
    /// A DeviceModel YAML file.
    Model,
    /// A Device YAML file.
    Device,
    /// A Rule YAML file.
    Rule,
    /// The TOML config.
    Config,
}

impl SchemaKind {
    /// Every kind, in the order `ferrite schema` lists them.
    pub const ALL: [SchemaKind; 4] = [
        SchemaKind::Model,
        SchemaKind::Device,
        SchemaKind::Rule,
        SchemaKind::Config,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SchemaKind::Model => "model",
            SchemaKind::Device => "device",
            SchemaKind::Rule => "rule",
            SchemaKind::Config => "config",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The JSON Schema (draft 2020-12) for `kind`.
pub fn schema(kind: SchemaKind) -> serde_json::Value {
    fn of<T: JsonSchema>() -> serde_json::Value {
        let schema = SchemaSettings::draft2020_12()
            .into_generator()
            .into_root_schema_for::<T>();
        schema.to_value()
    }
    match kind {
        SchemaKind::Model => of::<DeviceModel>(),
        SchemaKind::Device => of::<Device>(),
        SchemaKind::Rule => of::<Rule>(),
        SchemaKind::Config => of::<Config>(),
    }
}
