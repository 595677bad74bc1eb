//! The commands, each returning the process exit code.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use ferrite_models::schema::{SchemaKind, schema};

/// `ferrite check`: prints every finding, then a summary line. Exit code 1 if
/// any finding is an error, or with `strict` any finding at all.
pub fn check(config: &Path, strict: bool, out: &mut dyn Write) -> std::io::Result<ExitCode> {
    let report = ferrite_models::check(config);
    for finding in &report.diagnostics {
        writeln!(out, "{finding}")?;
    }
    writeln!(out, "{}", report.summary())?;
    Ok(if report.is_ok() && !(strict && report.warnings > 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `ferrite discover ...`: writes a model and a device for what it finds,
/// and prints what it left out. Exit code 1 when nothing could be found.
pub async fn discover(
    target: crate::cli::DiscoverTarget,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    use crate::cli::DiscoverTarget;
    let outcome = match target {
        #[cfg(feature = "opcua")]
        DiscoverTarget::Opcua(args) => crate::onboard::opcua::discover(&args, out).await,
        #[cfg(not(feature = "opcua"))]
        DiscoverTarget::Opcua(_) => {
            Err("this ferrite was built without the `opcua` feature".into())
        }
        #[cfg(feature = "modbus")]
        DiscoverTarget::Modbus(args) => crate::onboard::modbus::discover(&args, out).await,
        #[cfg(not(feature = "modbus"))]
        DiscoverTarget::Modbus(_) => {
            Err("this ferrite was built without the `modbus` feature".into())
        }
    };
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(why) => {
            eprintln!("error: {why}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `ferrite import csv`: every finding, a summary, and the model written
/// when there is no error. Exit code 1 on any error.
pub fn import(source: crate::cli::ImportSource, out: &mut dyn Write) -> std::io::Result<ExitCode> {
    let crate::cli::ImportSource::Csv {
        file,
        name,
        out: dir,
        order,
        force,
    } = source;
    let request = crate::onboard::csv::ImportCsv {
        file,
        name,
        out: dir,
        order,
        force,
    };
    Ok(match crate::onboard::csv::import(&request, out)? {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    })
}

/// `ferrite export csv`: the model's Modbus properties as a tag list;
/// what was left out on standard error.
pub fn export(target: crate::cli::ExportTarget, out: &mut dyn Write) -> std::io::Result<ExitCode> {
    let crate::cli::ExportTarget::Csv { model, out: file } = target;
    Ok(
        match crate::onboard::csv::export(&model, file.as_deref(), out)? {
            true => ExitCode::SUCCESS,
            false => ExitCode::from(1),
        },
    )
}

/// `ferrite schema KIND`: prints the JSON Schema.
pub fn schema_cmd(kind: SchemaKind, out: &mut dyn Write) -> std::io::Result<ExitCode> {
    let text = serde_json::to_string_pretty(&schema(kind)).map_err(std::io::Error::other)?;
    writeln!(out, "{text}")?;
    Ok(ExitCode::SUCCESS)
}

/// `ferrite health`: `GET /healthz` on the API that `config` names (or
/// `listen`), printing the outcome; exit 0 on 200, 1 on anything else.
/// Without a readable config it probes the default `127.0.0.1:8080`, so a
/// container run with its config elsewhere still gets a probe.
pub async fn health(
    config: Option<&Path>,
    listen: Option<std::net::SocketAddr>,
    timeout: std::time::Duration,
    out: &mut dyn Write,
) -> std::io::Result<ExitCode> {
    use ferrite_sync::health_probe::{ProbeTarget, probe_health};
    let mut loader = ferrite_models::project::Loader::default();
    let api = config
        .filter(|path| path.exists())
        .and_then(|path| Some((path, loader.load_config(path)?.value.api)));
    let target = match &api {
        Some((path, api)) => {
            let base = path.parent().unwrap_or(Path::new("."));
            let certificate = api.tls.as_ref().map(|tls| base.join(&tls.certificate));
            ProbeTarget::new(listen.unwrap_or(api.listen), certificate.as_deref())
        }
        None => {
            for finding in loader.diagnostics.into_sorted() {
                writeln!(out, "{finding}")?;
            }
            ProbeTarget::new(listen.unwrap_or(([127, 0, 0, 1], 8080).into()), None)
        }
    };
    let scheme = if target.certificate.is_some() {
        "https"
    } else {
        "http"
    };
    match probe_health(&target, timeout).await {
        Ok(()) => {
            writeln!(
                out,
                "healthy: {scheme}://{}/healthz answered 200",
                target.addr
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "unhealthy: {e}")?;
            Ok(ExitCode::from(1))
        }
    }
}

/// `ferrite run`: validates, starts, and runs until SIGTERM or Ctrl-C.
pub async fn run(
    config: &Path,
    mut options: crate::runtime::Options,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let (report, snapshot) = crate::reconcile::load(config);
    options.snapshot = snapshot;
    for finding in &report.diagnostics {
        writeln!(out, "{finding}")?;
    }
    if !report.is_ok() {
        writeln!(out, "{}; not starting", report.summary())?;
        return Ok(ExitCode::from(1));
    }
    let gateway = crate::runtime::Gateway::start(report.project, options).await?;
    writeln!(
        out,
        "ferrite is serving http://{}/api/v1/devices",
        gateway.addr
    )?;
    out.flush()?;
    crate::service::ready(gateway.state.store.clone(), gateway.shutdown_token());
    wait_for_signal().await;
    tracing::info!("stopping");
    crate::service::stopping();
    let clean = gateway.stop().await;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Waits for SIGTERM or Ctrl-C (SIGINT).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); Ctrl-C still stops");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
