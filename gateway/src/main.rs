//! `ferrite`: the gateway binary.

use std::process::ExitCode;

use clap::Parser;
use ferrite_gateway::cli::{Cli, Command, LogFormat};
use ferrite_gateway::commands;
use ferrite_gateway::runtime::Options;

fn main() -> anyhow::Result<ExitCode> {
    // Before any thread starts (see the module's docs).
    ferrite_gateway::allocator::tune();
    let cli = Cli::parse();
    let mut stdout = std::io::stdout();
    match cli.command {
        Command::Check { config, strict } => Ok(commands::check(&config, strict, &mut stdout)?),
        Command::Schema { kind } => Ok(commands::schema_cmd(kind.into(), &mut stdout)?),
        Command::Import { source } => Ok(commands::import(source, &mut stdout)?),
        Command::Export { target } => Ok(commands::export(target, &mut stdout)?),
        Command::Discover { target } => {
            init_logs_with(cli.log_format, DISCOVER_LOG);
            runtime()?.block_on(commands::discover(target, &mut stdout))
        }
        Command::Run {
            config,
            listen,
            data_dir,
        } => {
            init_logs(cli.log_format);
            let options = Options {
                listen,
                data_dir,
                snapshot: None,
            };
            runtime()?.block_on(commands::run(&config, options, &mut stdout))
        }
        Command::Health {
            config,
            listen,
            timeout,
        } => {
            let timeout = std::time::Duration::try_from_secs_f64(timeout)
                .map_err(|e| anyhow::anyhow!("--timeout {timeout}: {e}"))?;
            let probe = commands::health(config.as_deref(), listen, timeout, &mut stdout);
            Ok(probe_runtime()?.block_on(probe)?)
        }
        #[cfg(feature = "demo")]
        Command::Demo { listen, data_dir } => {
            init_logs(cli.log_format);
            runtime()?.block_on(ferrite_gateway::demo::run(listen, data_dir, &mut stdout))
        }
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => {
            anyhow::bail!("this ferrite was built without the `demo` feature")
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // Few blocking threads: each can grow a malloc arena of its own, and the
    // store commits one batch at a time anyway.
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(4)
        .enable_all()
        .build()
}

/// One thread is plenty for a probe, and starts the fastest: a health
/// check runs every few seconds for the container's whole life.
fn probe_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Log levels without `RUST_LOG`. The demo's OPC UA server narrates every
/// connection at info, and async-opcua's client warns at every start that
/// its config names no endpoints (the driver picks them itself).
const DEFAULT_LOG: &str = "info,opcua_server=warn,opcua_client::config=error,rumqttd=warn";

/// Log levels of `ferrite discover` without `RUST_LOG`: it reports what it
/// did itself; the OPC UA client's narration of its session is noise there.
const DISCOVER_LOG: &str = "warn,opcua_client=error";

fn init_logs(format: LogFormat) {
    init_logs_with(format, DEFAULT_LOG);
}

fn init_logs_with(format: LogFormat, default: &str) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        // Colours only for a terminal: not in a container's or journald's log.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    // Without the spans of the MQTT broker's router: formatting them would
    // cost every MQTT message time on the router thread.
    #[cfg(feature = "mqtt")]
    let filter = {
        use tracing_subscriber::filter::FilterExt;
        let router_spans =
            tracing_subscriber::filter::filter_fn(|m| !ferrite_drivers::broker::is_router_span(m));
        filter.and(router_spans)
    };
    let subscriber = tracing_subscriber::registry().with(logs.with_filter(filter));
    // The MQTT broker's back-pressure on publishers, and its loss ledger,
    // are a layer of their own, with their own filter: `RUST_LOG` does not
    // turn them off.
    #[cfg(feature = "mqtt")]
    let subscriber = subscriber.with(ferrite_drivers::broker::tracing_layer());
    subscriber.init();
}
