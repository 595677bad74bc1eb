//! # Control rules
//!
//! Rules are YAML files (`kind: Rule`, see docs/contract.md and `docs/rules.md`)
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
//!
//! Writes go through [`crate::control::Control`], the same checked path as
//! REST writes; events and the audit log go to [`crate::journal`].

mod engine;
pub mod feed;
pub mod machine;
pub mod program;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use engine::{Clock, Deps, Outlet, RuleError, RuleView, Source};
pub use feed::Feed;

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
    /// Jobs dropped because a rule's worker was a full queue behind
    /// (`engine::JOB_QUEUE`).
    pub jobs_dropped: std::sync::atomic::AtomicU64,
}

/// The handle the API and the folder watcher use.
#[derive(Clone)]
pub struct Rules {
    views: watch::Receiver<Arc<Vec<RuleView>>>,
    commands: mpsc::Sender<Command>,
    dir: PathBuf,
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
        dir,
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

    /// Runs `rules` from now on (the reconciler checked them against the
    /// running project). Rules that did not change keep their state, their
    /// holds and their pending `for:`.
    pub async fn replace(&self, rules: Vec<Source>) {
        let (reply, done) = oneshot::channel();
        if self
            .commands
            .send(Command::Replace(rules, reply))
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }
}

#[cfg(test)]
mod tests;
