//! `ferrite-sim`: serves simulated devices from the gateway's own files.
//!
//! ```sh
//! ferrite-sim --config examples/demo/sim.toml
//! ferrite-sim fleet --broker mqtt://127.0.0.1:1884 --gateways 1000 --rate 10 --seconds 60
//! ```

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use ferrite_sim::server::TcpFraming;
use ferrite_sim::sim::{Simulator, load_config};

/// Serve simulated Modbus TCP, Modbus RTU and OPC UA devices, or a fleet
/// of simulated gateways.
#[derive(Parser)]
#[command(
    name = "ferrite-sim",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// A sim.toml, or a gateway config (ferrite.toml) to serve as it is.
    #[arg(long, short, required = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// N simulated gateways speaking the real sync protocol to a control
    /// plane's broker, each writing RATE changes/s for SECONDS; prints what
    /// was written and acknowledged, and how long the rest took to drain.
    Fleet {
        /// The control plane's broker.
        #[arg(long, default_value = "mqtt://127.0.0.1:1884")]
        broker: String,
        /// Gateways.
        #[arg(long, default_value_t = 100)]
        gateways: usize,
        /// Changes per second per gateway.
        #[arg(long, default_value_t = 10)]
        rate: usize,
        /// How long to write.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Gateway ids are PREFIX-0000, PREFIX-0001, ...
        #[arg(long, default_value = "sim")]
        prefix: String,
    },
}

async fn fleet(broker: String, gateways: usize, rate: usize, seconds: u64, prefix: String) {
    let mut options = ferrite_sim::fleet::FleetOptions::new(&broker, gateways);
    options.prefix = prefix;
    let fleet = ferrite_sim::fleet::Fleet::start(options);
    println!("fleet: {gateways} gateways on {broker}, {rate} changes/s each, for {seconds} s");
    let started = std::time::Instant::now();
    tokio::select! {
        () = fleet.write_for(rate, std::time::Duration::from_secs(seconds)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let written = fleet.written();
    println!(
        "fleet: {written} changes written in {:.1} s, {} not yet acknowledged",
        started.elapsed().as_secs_f64(),
        fleet.backlog()
    );
    let drain = std::time::Instant::now();
    let drained = fleet.drained(std::time::Duration::from_secs(120)).await;
    println!(
        "fleet: {} after {:.1} s more",
        if drained {
            "all acknowledged"
        } else {
            "NOT all acknowledged"
        },
        drain.elapsed().as_secs_f64()
    );
    fleet.stop().await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    if let Some(Command::Fleet {
        broker,
        gateways,
        rate,
        seconds,
        prefix,
    }) = cli.command
    {
        fleet(broker, gateways, rate, seconds, prefix).await;
        return Ok(());
    }
    let Some(config) = cli.config else {
        bail!("--config is needed");
    };
    let is_sim = std::fs::read_to_string(&config)
        .with_context(|| format!("cannot read {}", config.display()))?
        .lines()
        .all(|l| !l.trim_start().starts_with("[gateway]"));
    let (sim, gateway) = if is_sim {
        let mut sim = load_config(&config)?;
        let base = config.parent().map(PathBuf::from).unwrap_or_default();
        let gateway = base.join(sim.gateway.clone().unwrap_or_else(|| "ferrite.toml".into()));
        sim.opcua.pki = sim.opcua.pki.map(|p| base.join(p));
        (sim, gateway)
    } else {
        (Default::default(), config.clone())
    };
    let report = ferrite_models::check(&gateway);
    for d in &report.diagnostics {
        eprintln!("{d}");
    }
    if !report.is_ok() {
        bail!("{}", report.summary());
    }
    let simulator = Simulator::start(&report.project, &sim, true).await?;
    for ((host, port), server) in &simulator.tcp {
        let framing = match server.framing {
            TcpFraming::Mbap => "Modbus TCP ",
            TcpFraming::Rtu => "RTU/TCP    ",
        };
        println!(
            "{framing} {host}:{port} (bound {}) units {:?}",
            server.addr,
            units(&server.endpoint)
        );
    }
    for (port, server) in &simulator.rtu {
        println!(
            "Modbus RTU  {} -> {} units {:?}",
            port.display(),
            server.path.display(),
            units(&server.endpoint)
        );
    }
    for (url, server) in &simulator.opcua {
        println!(
            "OPC UA      {url} (bound {}), certificate {}",
            server.addr,
            server.certificate_path().display()
        );
    }
    println!("serving; Ctrl-C stops");
    tokio::signal::ctrl_c().await?;
    simulator.stop().await;
    Ok(())
}

fn units(endpoint: &ferrite_sim::bank::Endpoint) -> Vec<u8> {
    let mut units: Vec<u8> = endpoint.units().keys().copied().collect();
    units.sort_unstable();
    units
}
