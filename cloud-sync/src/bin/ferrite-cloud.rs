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
        /// A TOML file: listen, mqtt_listen, broker, data_dir, store,
        /// history_days, username, password_file, ca_file, [[gateways]],
        /// [api] (docs/sync.md). Flags override it.
        #[arg(long, env = "FERRITE_CLOUD_CONFIG")]
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
        /// Where the sled store lives [default: ./ferrite-cloud-data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A PostgreSQL store shared by every replica
        /// (postgres://USER@HOST:PORT/DB) instead of sled; its password
        /// from `store_password_file` in the config.
        #[arg(long)]
        store: Option<String>,
    },
    /// Probes a running control plane: GET /healthz on the REST address
    /// its config names (an unspecified address as loopback; HTTPS trusting
    /// the config's certificate). Exits 0 on 200, 1 otherwise: a container
    /// image's HEALTHCHECK.
    Health {
        /// The control plane's config [default: none, so 127.0.0.1:8090 over
        /// HTTP].
        #[arg(long, env = "FERRITE_CLOUD_CONFIG")]
        config: Option<PathBuf>,
        /// Probe this address instead of the config's.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
    /// Enrols gateways and writes broker ACLs.
    Gateway {
        #[command(subcommand)]
        action: GatewayAction,
    },
}

#[derive(Subcommand)]
enum GatewayAction {
    /// Enrols gateway ID: a fresh secret (mode 0600), its [[gateways]]
    /// entry in the config, and the [cloud] lines for the gateway. A
    /// running control plane takes it at the gateway's next connect.
    Add {
        /// The gateway's id (its `[gateway] id`).
        id: String,
        /// The control plane's config, created if missing.
        #[arg(long, default_value = "ferrite-cloud.toml")]
        config: PathBuf,
        /// Where the secret goes [default: `gateways/` beside the config].
        #[arg(long)]
        secrets_dir: Option<PathBuf>,
    },
    /// Writes mosquitto.passwd and mosquitto.acl for an external Mosquitto:
    /// the same rules as the embedded broker's.
    Acl {
        /// The control plane's config.
        #[arg(long, default_value = "ferrite-cloud.toml")]
        config: PathBuf,
        /// The folder the two files go to.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRITE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let (config, listen, mqtt_listen, broker, data_dir, store) = match Cli::parse().command {
        Command::Run {
            config,
            listen,
            mqtt_listen,
            broker,
            data_dir,
            store,
        } => (config, listen, mqtt_listen, broker, data_dir, store),
        Command::Gateway { action } => return gateway(action),
        Command::Health {
            config,
            listen,
            timeout,
        } => return health(config, listen, timeout),
    };
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
    settings.store = store.or(settings.store);
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        match cloud::start(settings).await {
            Ok(running) => {
                println!(
                    "ferrite-cloud: REST on {}://{}, gateways connect to {}",
                    running.scheme, running.rest, running.broker
                );
                wait_for_signal().await;
                // Hand this replica's gateways to the others now, rather
                // than when its heartbeat is missed.
                running.leave().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferrite-cloud: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `ferrite-cloud health`.
fn health(config: Option<PathBuf>, listen: Option<SocketAddr>, timeout: f64) -> ExitCode {
    use ferrite_sync::health_probe::{ProbeTarget, probe_health};
    let settings = match config {
        Some(path) if path.exists() => match CloudConfig::load(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ferrite-cloud: {e}");
                return ExitCode::from(2);
            }
        },
        _ => CloudConfig::default(),
    };
    let Ok(timeout) = std::time::Duration::try_from_secs_f64(timeout) else {
        eprintln!("ferrite-cloud: --timeout {timeout} is not a duration in seconds");
        return ExitCode::from(2);
    };
    let certificate = settings
        .api
        .tls
        .as_ref()
        .map(|tls| tls.certificate.as_path());
    let target = ProbeTarget::new(listen.unwrap_or(settings.listen), certificate);
    // One thread is plenty for a probe, and starts the fastest.
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(probe_health(&target, timeout)) {
        Ok(()) => {
            println!("healthy: {}/healthz answered 200", target.addr);
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime `builder` makes, with I/O and timers; `None` (said on
/// stderr) if it cannot start.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("ferrite-cloud: cannot start the runtime: {e}"))
        .ok()
}

/// `ferrite-cloud gateway ...`.
fn gateway(action: GatewayAction) -> ExitCode {
    let result = match action {
        GatewayAction::Add {
            id,
            config,
            secrets_dir,
        } => {
            let secrets_dir = secrets_dir.unwrap_or_else(|| {
                config
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("gateways")
            });
            cloud::enrol::add(&config, &secrets_dir, &id).map(|enrolled| {
                println!(
                    "enrolled `{id}` in {}; its secret is in {} (mode 0600).\n\nOn the gateway, copy that file to cloud.secret beside ferrite.toml (mode 0600) and use:\n\n{}",
                    config.display(),
                    enrolled.secret_file.display(),
                    enrolled.gateway_lines
                );
            })
        }
        GatewayAction::Acl { config, out } => CloudConfig::load(&config)
            .and_then(|c| cloud::enrol::mosquitto(&c))
            .and_then(|files| {
                let write = |name: &str, text: &str| {
                    let path = out.join(name);
                    std::fs::create_dir_all(&out)
                        .and_then(|()| std::fs::write(&path, text))
                        .map_err(|e| cloud::CloudError::Config(format!("{}: {e}", path.display())))?;
                    println!("wrote {}", path.display());
                    Ok::<(), cloud::CloudError>(())
                };
                write("mosquitto.passwd", &files.passwd)?;
                write("mosquitto.acl", &files.acl)?;
                println!(
                    "in mosquitto.conf: allow_anonymous false, password_file {0}/mosquitto.passwd, acl_file {0}/mosquitto.acl",
                    out.display()
                );
                Ok(())
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrite-cloud: {e}");
            ExitCode::from(2)
        }
    }
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
