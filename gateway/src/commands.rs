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

/// `ferrite schema KIND`: prints the JSON Schema.
pub fn schema_cmd(kind: SchemaKind, out: &mut dyn Write) -> std::io::Result<ExitCode> {
    let text = serde_json::to_string_pretty(&schema(kind)).map_err(std::io::Error::other)?;
    writeln!(out, "{text}")?;
    Ok(ExitCode::SUCCESS)
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
