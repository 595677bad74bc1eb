//! The `ferrite` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use ferrite_models::schema::SchemaKind;

/// Ferrite, the edge IoT gateway.
#[derive(Debug, Parser)]
#[command(name = "ferrite", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config and every model, device and rule it names. Prints
    /// each problem as file:line:col: message; exits 1 on any error.
    Check {
        /// The gateway's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the JSON Schema of a document kind.
    Schema {
        /// Which document.
        kind: SchemaArg,
    },
}

/// `ferrite schema` arguments.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SchemaArg {
    /// A DeviceModel YAML file.
    Model,
    /// A Device YAML file.
    Device,
    /// A Rule YAML file.
    Rule,
    /// The TOML config.
    Config,
}

impl From<SchemaArg> for SchemaKind {
    fn from(arg: SchemaArg) -> Self {
        match arg {
            SchemaArg::Model => SchemaKind::Model,
            SchemaArg::Device => SchemaKind::Device,
            SchemaArg::Rule => SchemaKind::Rule,
            SchemaArg::Config => SchemaKind::Config,
        }
    }
}
