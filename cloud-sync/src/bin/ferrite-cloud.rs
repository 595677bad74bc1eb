//! `ferrite-cloud`: the control plane. See `ferrite_sync::cloud`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferrite_sync::cloud::{self, CloudConfig};

#[derive(Parser)]
#[command(name = "ferrite-cloud", version, about = "Ferrite's control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the control plane until stopped (Ctrl-C or SIGTERM).
    Run {
        /// A TOML file: listen, mqtt_listen, broker, data_dir, username,
        /// password_file, ca_file. Flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// REST API address [default: 127.0.0.1:8090].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// The embedded broker's address [default: 127.0.0.1:1884].
        #[arg(long)]
        mqtt_listen: Option<SocketAddr>,
        /// Use this broker (mqtt://HOST:PORT or mqtts://HOST:PORT) instead
        /// of the embedded one.
        #[arg(long)]
        broker: Option<String>,
        /// Where the store lives [default: ./ferrite-cloud-data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRITE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Run {
        config,
        listen,
        mqtt_listen,
        broker,
        data_dir,
    } = Cli::parse().command;
    let mut settings = match config {
        Some(path) => match CloudConfig::load(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ferrite-cloud: {e}");
                return ExitCode::from(2);
            }
        },
        None => CloudConfig::default(),
    };
    settings.listen = listen.unwrap_or(settings.listen);
    settings.mqtt_listen = mqtt_listen.unwrap_or(settings.mqtt_listen);
    settings.broker = broker.or(settings.broker);
    settings.data_dir = data_dir.unwrap_or(settings.data_dir);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferrite-cloud: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cloud::start(settings).await {
            Ok(running) => {
                println!(
                    "ferrite-cloud: REST on http://{}, gateways connect to {}",
                    running.rest, running.broker
                );
                wait_for_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferrite-cloud: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
