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
    /// Find what a device holds and write a model and a device file for
    /// it (docs/onboarding.md). Nothing is written to the device.
    Discover {
        /// Which protocol.
        #[command(subcommand)]
        target: DiscoverTarget,
    },
    /// Read a tag list into a DeviceModel (docs/onboarding.md).
    Import {
        /// What kind of file.
        #[command(subcommand)]
        source: ImportSource,
    },
    /// Write a model's Modbus properties as a tag list.
    Export {
        /// What kind of file.
        #[command(subcommand)]
        target: ExportTarget,
    },
    /// Print the JSON Schema of a document kind.
    Schema {
        /// Which document.
        kind: SchemaArg,
    },
}

/// `ferrite discover` targets.
#[derive(Debug, Subcommand)]
pub enum DiscoverTarget {
    /// Browse an OPC UA server and write a DeviceModel (every variable
    /// typed from its DataType, with its access, EURange as min/max and
    /// EngineeringUnits as unit) and a Device for it: OUT/models/NAME.yaml
    /// and OUT/devices/NAME.yaml. Prints what it skipped and why.
    Opcua(Box<DiscoverOpcua>),
    /// Find the unit ids that answer on a Modbus link and the readable
    /// ranges of each table, print them, and with --out write a draft
    /// model and device per unit (raw u16 and bool properties to type by
    /// hand). Only reads go out: nothing is written to a device.
    Modbus(Box<DiscoverModbus>),
}

/// `ferrite discover modbus` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DiscoverModbus {
    /// tcp://HOST:PORT, rtu-over-tcp://HOST:PORT (a serial device server),
    /// or rtu:///dev/ttyUSB0 (a serial port; see --baud).
    pub link: String,
    /// Unit ids to try: 1-247, or a list such as 1,2,10-20.
    #[arg(long, default_value = "1-247")]
    pub units: String,
    /// Addresses to probe in each table, 0-based: FIRST-LAST. A readable
    /// block costs one read; an unreadable span about 1.14 reads per
    /// address, so a wide span on a slow bus takes long.
    #[arg(long, default_value = "0-999")]
    pub addresses: String,
    /// Tables to probe: any of coil, discrete, input, holding.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "coil,discrete,input,holding"
    )]
    pub tables: Vec<String>,
    /// Milliseconds one request may take.
    #[arg(long, default_value_t = 300)]
    pub timeout_ms: u64,
    /// Connections at once over TCP (a serial bus always takes one request
    /// at a time).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Requests the range probe of one unit may take.
    #[arg(long, default_value_t = 20_000)]
    pub max_requests: usize,
    /// Serial line: baud rate (rtu:// only).
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// Serial line: none, even or odd.
    #[arg(long, default_value = "none")]
    pub parity: String,
    /// Serial line: data bits, 7 or 8.
    #[arg(long, default_value_t = 8)]
    pub data_bits: u8,
    /// Serial line: stop bits, 1 or 2.
    #[arg(long, default_value_t = 1)]
    pub stop_bits: u8,
    /// Write a draft model and device per unit here (models/NAME-uUNIT.yaml,
    /// devices/NAME-uUNIT.yaml).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The drafts' name prefix.
    #[arg(long, default_value = "draft")]
    pub name: String,
    /// The most properties one draft model gets.
    #[arg(long, default_value_t = 1000)]
    pub max_properties: usize,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
}

/// `ferrite discover opcua` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DiscoverOpcua {
    /// The server, such as opc.tcp://10.0.0.5:4840/path.
    pub endpoint: String,
    /// The model's and the device's name.
    #[arg(long)]
    pub name: String,
    /// Where to write models/NAME.yaml and devices/NAME.yaml: the folder
    /// of a gateway's config adds the device to a running gateway.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Start here instead of the Objects folder (a NodeId such as
    /// ns=2;s=Line1).
    #[arg(long)]
    pub root: Option<String>,
    /// How many levels below the root to walk.
    #[arg(long, default_value_t = 10)]
    pub depth: usize,
    /// Stop after this many variables.
    #[arg(long, default_value_t = 50_000)]
    pub max: usize,
    /// Also take the properties of objects (such as Manufacturer or
    /// SerialNumber); by default only data variables become properties.
    #[arg(long)]
    pub object_properties: bool,
    /// Message security: none, sign or sign-and-encrypt.
    #[arg(long, default_value = "none")]
    pub security: String,
    /// Security policy with sign or sign-and-encrypt: Basic256Sha256,
    /// Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss.
    #[arg(long)]
    pub policy: Option<String>,
    /// User-name login; needs --password-file.
    #[arg(long)]
    pub username: Option<String>,
    /// The file holding the password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// X.509 login: the user's certificate; needs --user-private-key.
    #[arg(long)]
    pub user_certificate: Option<PathBuf>,
    /// The private key (PEM) of --user-certificate.
    #[arg(long)]
    pub user_private_key: Option<PathBuf>,
    /// A server certificate (DER or PEM) to trust.
    #[arg(long)]
    pub server_certificate: Option<PathBuf>,
    /// The PKI folder: the client certificate (made on first use), and
    /// trusted/ and rejected/ server certificates. Use the gateway's
    /// DATA_DIR/pki so that a server trusts one certificate.
    #[arg(long, default_value = "pki")]
    pub pki: PathBuf,
    /// Seconds each request may take.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
}

/// `ferrite import` sources.
#[derive(Debug, Subcommand)]
pub enum ImportSource {
    /// A CSV tag list, Kepware's export or the plain layout (name, address,
    /// type, access, scale, offset, unit, min, max, description), to
    /// OUT/models/NAME.yaml. Prints every bad row as FILE:line:col and
    /// writes nothing when there is one; exits 1 then.
    Csv {
        /// The tag list.
        file: PathBuf,
        /// The model's name.
        #[arg(long)]
        name: String,
        /// Where to write models/NAME.yaml.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Word order of 32- and 64-bit values the file does not give one
        /// for: ABCD (default), DCBA, BADC or CDAB.
        #[arg(long)]
        order: Option<String>,
        /// Replace the model file if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// `ferrite export` targets.
#[derive(Debug, Subcommand)]
pub enum ExportTarget {
    /// A model's Modbus properties as a plain CSV tag list, which `ferrite
    /// import csv` reads back into the same properties.
    Csv {
        /// The model's YAML file.
        model: PathBuf,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
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
