//! The commands, each returning the process exit code.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use ferrite_models::schema::{SchemaKind, schema};

/// `ferrite check`: prints every finding, then a summary line. Exit code 1 if
/// any finding is an error.
pub fn check(config: &Path, out: &mut dyn Write) -> std::io::Result<ExitCode> {
    let report = ferrite_models::check(config);
    for finding in &report.diagnostics {
        writeln!(out, "{finding}")?;
    }
    writeln!(out, "{}", report.summary())?;
    Ok(if report.is_ok() {
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
