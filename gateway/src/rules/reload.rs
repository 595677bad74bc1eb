//! Loading rules while the gateway runs: from the rules folder, with one
//! file's text replaced (the API's `PUT`) or removed (`DELETE`), checked
//! against the running project's models and devices exactly as `ferrite
//! check` checks them. A rule set with any error is refused whole, and the
//! old one keeps running.
//!
//! [`watch`] polls the folder (names, sizes, modification times) and
//! reloads on a change: polling works the same on every file system,
//! including the network and overlay mounts edge boxes use, and costs one
//! `read_dir` a second.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ferrite_models::Project;
use ferrite_models::diag::Severity;
use ferrite_models::project::{DocKind, Loader, yaml_files};
use tokio_util::sync::CancellationToken;

use super::Rules;
use super::engine::Source;

/// How often the folder is looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// A change to one rule file.
pub struct Edit<'a> {
    /// The file.
    pub file: &'a Path,
    /// Its new text, or `None` to remove it.
    pub text: Option<&'a str>,
}

/// Loads the rules of `dir` (with `edit` applied) against `project`'s
/// models and devices. Errors come as `file:line:col: message` lines.
pub fn load(
    project: &Project,
    dir: &Path,
    edit: Option<&Edit<'_>>,
) -> Result<Vec<Source>, Vec<String>> {
    let mut loader = Loader {
        project: project.clone(),
        ..Loader::default()
    };
    loader.project.rules.clear();
    loader.project.shadowed.rules.clear();
    let files = yaml_files(dir).map_err(|e| vec![format!("{}: {e}", dir.display())])?;
    let mut edited = false;
    for file in &files {
        match edit {
            Some(edit) if edit.file == file => {
                edited = true;
                if let Some(text) = edit.text {
                    loader.load_text(file, text, &[DocKind::Rule]);
                }
            }
            _ => loader.load_file(file, &[DocKind::Rule]),
        }
    }
    if let Some(Edit {
        file,
        text: Some(text),
    }) = edit
        && !edited
    {
        loader.load_text(file, text, &[DocKind::Rule]);
    }
    let report = loader.finish();
    let errors: Vec<String> = report
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    for warning in report
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
    {
        tracing::warn!("{warning}");
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(report
        .project
        .rules
        .into_values()
        .map(|located| Source {
            rule: located.value,
            file: located.file.to_path_buf(),
        })
        .collect())
}

/// What a folder looked like: each file's name, size and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let size = meta.as_ref().map_or(0, std::fs::Metadata::len);
            let modified = meta.and_then(|m| m.modified().ok());
            (p, size, modified)
        })
        .collect()
}

/// Reloads the rules whenever the folder changes, until `shutdown`.
pub async fn watch(rules: Rules, shutdown: CancellationToken) {
    let dir = rules.dir().to_path_buf();
    let mut seen = snapshot(&dir);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let dir2 = dir.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || snapshot(&dir2)).await else {
            continue;
        };
        if now == seen {
            continue;
        }
        seen = now;
        match rules.reload(None).await {
            Ok(n) => tracing::info!("rules folder changed: {n} rules loaded"),
            Err(errors) => {
                tracing::error!(
                    "rules folder changed, but the new rules are refused; the old ones keep running:\n{}",
                    errors.join("\n")
                );
            }
        }
    }
}
