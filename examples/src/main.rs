//! `ferrite-sim`: serves simulated devices from the gateway's own files.
//!
//! ```sh
//! ferrite-sim --config examples/demo/sim.toml
//! ```

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use ferrite_sim::sim::{Simulator, load_config};

/// Serve simulated Modbus TCP, Modbus RTU and OPC UA devices.
#[derive(Parser)]
#[command(name = "ferrite-sim", version, about)]
struct Cli {
    /// A sim.toml, or a gateway config (ferrite.toml) to serve as it is.
    #[arg(long, short)]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let is_sim = std::fs::read_to_string(&cli.config)
        .with_context(|| format!("cannot read {}", cli.config.display()))?
        .lines()
        .all(|l| !l.trim_start().starts_with("[gateway]"));
    let (sim, gateway) = if is_sim {
        let mut sim = load_config(&cli.config)?;
        let base = cli.config.parent().map(PathBuf::from).unwrap_or_default();
        let gateway = base.join(sim.gateway.clone().unwrap_or_else(|| "ferrite.toml".into()));
        sim.opcua.pki = sim.opcua.pki.map(|p| base.join(p));
        (sim, gateway)
    } else {
        (Default::default(), cli.config.clone())
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
        println!(
            "Modbus TCP  {host}:{port} (bound {}) units {:?}",
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
