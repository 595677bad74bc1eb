//! # Control rules
//!
//! Rules are YAML files (`kind: Rule`, see CONTRACT.md and `docs/rules.md`)
//! whose conditions and values are CEL. They run in the gateway's process,
//! need nothing but the local store, and so keep running with the cloud
//! gone.
//!
//! - [`feed`]: the store writer's tap: every reading a rule reads, as it
//!   arrives.
//! - [`program`]: CEL, compiled once; the variables rules see.
//! - [`machine`]: idle → pending (`for:`) → active → cleared (`clear_when:`),
//!   free of I/O.
//! - `engine`: the task that owns every rule's state, evaluates, fires, and
//!   hands actions to each rule's worker.
//! - [`reload`]: loading rules while running, and the folder watcher.
//!
//! Writes go through [`crate::control::Control`], the same checked path as
//! REST writes; events and the audit log go to [`crate::journal`].

mod engine;
pub mod feed;
pub mod machine;
pub mod program;
pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use engine::{Clock, Deps, Outlet, RuleError, RuleView, Source};
pub use feed::Feed;

use crate::running::Running;
use engine::{Command, Engine};

/// Counters of the engine, for `/metrics` and the benchmark.
#[derive(Debug, Default)]
pub struct RuleStats {
    /// Rule evaluations (a condition, and `clear_when` if any).
    pub evaluations: std::sync::atomic::AtomicU64,
    /// Firings (the `then` actions ran).
    pub firings: std::sync::atomic::AtomicU64,
    /// Readings the engine took from the feed.
    pub observations: std::sync::atomic::AtomicU64,
}

/// The handle the API and the folder watcher use.
#[derive(Clone)]
pub struct Rules {
    views: watch::Receiver<Arc<Vec<RuleView>>>,
    commands: mpsc::Sender<Command>,
    running: Arc<Running>,
    dir: PathBuf,
    /// One reload at a time, so that two edits cannot interleave.
    reloading: Arc<tokio::sync::Mutex<()>>,
    /// The last refused reload's errors, for the API.
    refused: Arc<Mutex<Vec<String>>>,
    stats: Arc<RuleStats>,
}

/// Starts the engine with `rules` (from the rules folder `dir`).
pub fn start(
    deps: Deps,
    rules: Vec<Source>,
    dir: PathBuf,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Rules {
    let (views_tx, views) = watch::channel(Arc::new(Vec::new()));
    let (commands, commands_rx) = mpsc::channel(64);
    let running = deps.running.clone();
    let stats = Arc::new(RuleStats::default());
    let engine = Engine::new(
        deps,
        rules,
        views_tx,
        commands.clone(),
        stats.clone(),
        tasks.clone(),
        shutdown,
    );
    tasks.spawn(engine.run(commands_rx));
    Rules {
        views,
        commands,
        running,
        dir,
        reloading: Arc::new(tokio::sync::Mutex::new(())),
        refused: Arc::new(Mutex::new(Vec::new())),
        stats,
    }
}

impl Rules {
    /// Every rule with its state.
    pub fn list(&self) -> Arc<Vec<RuleView>> {
        self.views.borrow().clone()
    }

    /// The engine's counters.
    pub fn stats(&self) -> &RuleStats {
        &self.stats
    }

    /// One rule.
    pub fn get(&self, name: &str) -> Option<RuleView> {
        self.views.borrow().iter().find(|r| r.name == name).cloned()
    }

    /// The rules folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The errors of the last refused reload (empty once one succeeds).
    pub fn refused(&self) -> Vec<String> {
        self.refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Enables or disables a rule; the choice survives restarts.
    pub async fn set_enabled(&self, name: &str, on: bool) -> Result<RuleView, RuleError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Enable(name.to_string(), on, reply))
            .await
            .map_err(|_| RuleError::Stopped)?;
        answer.await.map_err(|_| RuleError::Stopped)??;
        self.get(name).ok_or_else(|| RuleError::NoRule(name.into()))
    }

    /// Reloads the folder, with `edit` applied to it first (written to disk
    /// only if the result is valid). Returns how many rules run now, or the
    /// errors that refused the change.
    pub async fn reload(&self, edit: Option<reload::Edit<'_>>) -> Result<usize, Vec<String>> {
        let _one = self.reloading.lock().await;
        let loaded = reload::load(&self.running.project(), &self.dir, edit.as_ref());
        let refused = |errors: Vec<String>| {
            *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = errors.clone();
            errors
        };
        let sources = loaded.map_err(refused)?;
        if let Some(edit) = &edit {
            apply_edit(edit).map_err(|e| refused(vec![e]))?;
        }
        self.refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let n = sources.len();
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Replace(sources, reply))
            .await
            .map_err(|_| vec![RuleError::Stopped.to_string()])?;
        done.await
            .map_err(|_| vec![RuleError::Stopped.to_string()])?;
        Ok(n)
    }
}

/// Writes (atomically: a temporary file, then a rename) or removes the
/// edited file.
fn apply_edit(edit: &reload::Edit<'_>) -> Result<(), String> {
    let shown = edit.file.display();
    match edit.text {
        Some(text) => {
            let dir = edit.file.parent().unwrap_or(Path::new("."));
            let mut tmp =
                tempfile::NamedTempFile::new_in(dir).map_err(|e| format!("{shown}: {e}"))?;
            std::io::Write::write_all(&mut tmp, text.as_bytes())
                .map_err(|e| format!("{shown}: {e}"))?;
            tmp.as_file()
                .sync_all()
                .map_err(|e| format!("{shown}: {e}"))?;
            tmp.persist(edit.file)
                .map_err(|e| format!("{shown}: {e}"))?;
        }
        None => std::fs::remove_file(edit.file).map_err(|e| format!("{shown}: {e}"))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests;
