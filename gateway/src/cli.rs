//! The `ferrite` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use ferrite_models::schema::SchemaKind;

/// Ferrite, the edge IoT gateway.
#[derive(Debug, Parser)]
#[command(name = "ferrite", version, about)]
pub struct Cli {
    /// Log format: human-readable text, or JSON lines for collectors.
    /// Levels come from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config and every model, device and rule it names. Prints
    /// each problem as file:line:col: level: message; exits 1 on any error,
    /// 0 when there are only warnings or nothing.
    Check {
        /// The gateway's TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Warnings fail the check too (exit 1).
        #[arg(long)]
        strict: bool,
    },
    /// Run the gateway. Validates everything first and refuses to start on
    /// any error; SIGTERM or Ctrl-C stops it cleanly.
    Run {
        /// The gateway's TOML config.
        #[arg(long, short, env = "FERRITE_CONFIG")]
        config: PathBuf,
        /// Override the API's listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override the data folder.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run the demo: the gateway with simulated devices, on 127.0.0.1:8080.
    Demo {
        /// The API's listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The data folder (default: a fresh temporary folder, removed on exit).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Probe a running gateway: GET /healthz on the API its config names
    /// (an unspecified address as loopback; HTTPS trusting the config's
    /// certificate). Exits 0 when it answers 200, 1 otherwise: a container
    /// image's HEALTHCHECK, since a `scratch` image has no curl.
    Health {
        /// The gateway's TOML config. Without it (or when it cannot be
        /// read), the default address 127.0.0.1:8080 over HTTP.
        #[arg(long, short, env = "FERRITE_CONFIG")]
        config: Option<PathBuf>,
        /// Probe this address instead of the config's.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
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

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line.
    Json,
}
