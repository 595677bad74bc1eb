//! Live configuration: models, devices and rules change while the gateway
//! runs, from the folders, the REST API or the control plane, and the
//! gateway converges on them as desired state.
//!
//! - [`snapshot`]: a configuration as files (the folders' YAML texts): read,
//!   hashed, written back.
//! - [`watch`]: the folder watch (notify, debounced) and SIGHUP.
//! - here: the [`Reconciler`], which applies one change at a time:
//!   1. builds the whole new set (the folders as they are, with an API edit
//!      or a control-plane bundle applied) and validates it exactly as
//!      `ferrite check` does; any error refuses it whole, and the old set
//!      keeps running;
//!   2. writes it to the folders (the folders stay the truth: `ferrite check`
//!      on them checks what runs, and a restart runs the same);
//!   3. swaps the running project, and starts, stops or restarts only the
//!      devices ([`crate::fleet`]) and rules that changed: every other device
//!      keeps polling on the connection it has;
//!   4. records the set as a new version (number, content hash, origin) in
//!      the store, the newest [`KEEP`] of them, for `GET /api/v1/config` and
//!      rollback.
//!
//! Applying a set whose hash is the running one's changes nothing. Devices
//! whose loops keep crashing under a new version (3 panics within a minute)
//! roll it back to the version before, with a critical event.

pub mod snapshot;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ferrite_models::config::Config;
use ferrite_models::diag::Severity;
use ferrite_models::project::{DocKind, Located, Report, check_files, folders};
use ferrite_models::{Project, check};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::fleet::{Changed, Fleet};
use crate::journal::Journal;
use crate::rules::{Rules, Source};
use crate::running::Running;
use crate::store::{Log, Store};
use crate::time::{now, rfc3339};
use ferrite_core::driver::Crashes;

pub use snapshot::Snapshot;

/// Versions kept in the store (and so within reach of a rollback).
pub const KEEP: usize = 20;

/// Panics of device loops within [`CRASH_WINDOW`] that roll a version back.
pub const CRASHES_TO_ROLL_BACK: usize = 3;

/// See [`CRASHES_TO_ROLL_BACK`].
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// Where a version came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// What the folders held when the gateway started.
    Start,
    /// The folders changed (the file watch, or SIGHUP).
    Files,
    /// A REST call.
    Api {
        /// Who (the token's name, or `api`).
        who: String,
        /// What, such as `PUT devices/boiler-1`.
        what: String,
    },
    /// A bundle from the control plane.
    Cloud {
        /// The bundle's version there.
        bundle: u64,
    },
    /// `POST /api/v1/config/rollback`.
    Rollback {
        /// The version gone back to.
        to: u64,
        /// Who asked.
        who: String,
    },
    /// Device loops kept crashing under the version before.
    AutoRollback {
        /// The version that crashed.
        from: u64,
        /// The version gone back to.
        to: u64,
        /// The crashes.
        why: String,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Start => f.write_str("start"),
            Origin::Files => f.write_str("files"),
            Origin::Api { who, what } => write!(f, "{who}: {what}"),
            Origin::Cloud { bundle } => write!(f, "cloud bundle v{bundle}"),
            Origin::Rollback { to, who } => write!(f, "{who}: rollback to v{to}"),
            Origin::AutoRollback { from, to, .. } => {
                write!(f, "automatic rollback from v{from} to v{to}")
            }
        }
    }
}

/// What a version changed against the one before, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Summary {
    /// Models added, changed, removed.
    pub models: KindChanges,
    /// Devices started, restarted, stopped.
    pub devices: KindChanges,
    /// Rules added, changed, removed.
    pub rules: KindChanges,
}

/// Documents of one kind that a version added, changed or removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KindChanges {
    /// New.
    pub added: Vec<String>,
    /// Changed (devices: restarted).
    pub changed: Vec<String>,
    /// Gone.
    pub removed: Vec<String>,
}

impl Summary {
    fn is_empty(&self) -> bool {
        [&self.models, &self.devices, &self.rules]
            .iter()
            .all(|k| k.is_empty())
    }
}

impl KindChanges {
    /// Whether nothing of this kind changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

impl From<Changed> for KindChanges {
    fn from(c: Changed) -> Self {
        KindChanges {
            added: c.added,
            changed: c.restarted,
            removed: c.removed,
        }
    }
}

/// One applied configuration, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    /// Its number: 1, 2, 3, ... across restarts.
    pub version: u64,
    /// The content hash of its files ([`Snapshot::hash`]).
    pub hash: String,
    /// Where it came from.
    pub origin: Origin,
    /// When it was applied, RFC 3339.
    pub applied_at: String,
    /// What it changed.
    pub summary: Summary,
    /// Per document (`model/NAME`, `device/NAME`, `rule/NAME`): the version
    /// that last changed it.
    pub documents: BTreeMap<String, u64>,
    /// Its files.
    pub files: Snapshot,
}

/// A version without its files, as `GET /api/v1/config` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VersionView {
    /// Its number.
    pub version: u64,
    /// Its content hash.
    pub hash: String,
    /// Where it came from.
    pub origin: Origin,
    /// When it was applied.
    pub applied_at: String,
    /// What it changed.
    pub summary: Summary,
}

impl From<&Version> for VersionView {
    fn from(v: &Version) -> Self {
        VersionView {
            version: v.version,
            hash: v.hash.clone(),
            origin: v.origin.clone(),
            applied_at: v.applied_at.clone(),
            summary: v.summary.clone(),
        }
    }
}

/// A change that was refused, as `GET /api/v1/config` shows the last one.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Refusal {
    /// Where it came from.
    pub origin: Origin,
    /// When.
    pub at: String,
    /// Every problem, `file:line:col: message`.
    pub errors: Vec<String>,
}

/// Why a change did not apply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    /// The new set does not check; nothing changed.
    #[error("the configuration is refused ({} problem(s)); the running one is unchanged", .0.len())]
    Invalid(Vec<String>),
    /// The folders could not be read or written; nothing changed.
    #[error("{0}")]
    Io(String),
    /// A rollback with no version to go back to.
    #[error("{0}")]
    NoVersion(String),
    /// An API edit of a document that shares its file with others.
    #[error("{0}")]
    SharedFile(String),
}

/// A change to apply.
#[derive(Debug, Clone)]
pub enum Change {
    /// Whatever the folders hold now.
    Reread,
    /// One document's file, replaced (`Some`) or removed (`None`).
    Edit {
        /// Its kind.
        kind: DocKind,
        /// Its name.
        name: String,
        /// The new text of its file.
        text: Option<String>,
    },
    /// Exactly these documents, each in its own file (a control-plane
    /// bundle): `(kind, name, text)`.
    Bundle(Vec<(DocKind, String, String)>),
    /// The files of version `n` (rollback).
    Version(u64),
}

/// What an apply did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Applied {
    /// The version running now.
    pub version: u64,
    /// Its hash.
    pub hash: String,
    /// Whether anything changed (false: the set was the running one).
    pub changed: bool,
    /// What changed.
    pub summary: Summary,
}

/// The configuration as `GET /api/v1/config` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConfigView {
    /// The version running.
    pub version: u64,
    /// Its content hash.
    pub hash: String,
    /// Where it came from.
    pub origin: Origin,
    /// When it was applied.
    pub applied_at: String,
    /// Every document running: kind, name, file, and the version (and its
    /// origin) that last changed it.
    pub documents: Vec<DocumentView>,
    /// The versions kept, newest first.
    pub history: Vec<VersionView>,
    /// The last change refused since the last one applied.
    pub last_rejected: Option<Refusal>,
}

/// One running document.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DocumentView {
    /// `model`, `device` or `rule`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Its file.
    pub file: String,
    /// The version that last changed it.
    pub version: u64,
    /// That version's origin.
    pub origin: Option<Origin>,
}

/// The reconciler's state, behind its lock: one change at a time.
struct State {
    current: Version,
    /// The versions kept, oldest first (the current one last).
    history: Vec<Version>,
    /// When the current version was applied (for the crash count).
    since: Instant,
}

/// Applies configuration changes.
pub struct Reconciler {
    /// The running config file's document (the folders, `[mqtt]`, ...):
    /// changing it needs a restart.
    config: Located<Config>,
    base: PathBuf,
    folders: Vec<(PathBuf, Vec<DocKind>)>,
    running: Arc<Running>,
    fleet: Arc<Fleet>,
    rules: Rules,
    store: Arc<dyn Store>,
    journal: Arc<Journal>,
    state: tokio::sync::Mutex<State>,
    view: RwLock<ConfigView>,
    refused: RwLock<Option<Refusal>>,
}

/// Loads the config at `path` and its folders for `ferrite run`: the
/// report (as `ferrite check` gives it) and the files it was made from,
/// which become the first version.
pub fn load(path: &Path) -> (Report, Option<Snapshot>) {
    let report = check(path);
    let Some(config) = report.project.config.clone() else {
        return (report, None);
    };
    let base = report.project.base_dir.clone();
    let dirs: Vec<PathBuf> = folders(&config.value, &base)
        .into_iter()
        .map(|(d, _, _)| d)
        .collect();
    match Snapshot::read(&dirs) {
        // Checked again from the very texts kept, so that what runs is
        // what the first version holds.
        Ok(snapshot) => (check_files(config, &base, &snapshot), Some(snapshot)),
        Err(_) => (report, None),
    }
}

impl Reconciler {
    /// The reconciler for a gateway that runs `running` (from `snapshot`,
    /// the folders' files at start; read now if `None`). Restores the
    /// version history from the store, and records the start as a version
    /// if its files differ from the last one's.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        running: Arc<Running>,
        snapshot: Option<Snapshot>,
        fleet: Arc<Fleet>,
        rules: Rules,
        store: Arc<dyn Store>,
        journal: Arc<Journal>,
    ) -> Option<Arc<Reconciler>> {
        let project = running.project();
        let config = project.config.clone()?;
        let base = project.base_dir.clone();
        let folders: Vec<(PathBuf, Vec<DocKind>)> = folders(&config.value, &base)
            .into_iter()
            .map(|(d, kinds, _)| (d, kinds))
            .collect();
        let dirs: Vec<PathBuf> = folders.iter().map(|(d, _)| d.clone()).collect();
        let snapshot = match snapshot {
            Some(s) => s,
            None => Snapshot::read(&dirs).unwrap_or_default(),
        };
        let history = stored_versions(&store).await;
        let hash = snapshot.hash(&base);
        let last = history.last().cloned();
        let (current, history) = match last {
            Some(last) if last.hash == hash => (last, history),
            _ => {
                let number = last.as_ref().map_or(1, |l| l.version + 1);
                // Against the last version: what changed while stopped.
                let summary = last
                    .as_ref()
                    .map(|l| summarize(&project_of(&config, &base, &l.files), &project));
                let documents = documents_of(&project, number, last.as_ref(), summary.as_ref());
                let version = Version {
                    version: number,
                    hash,
                    origin: Origin::Start,
                    applied_at: rfc3339(now()),
                    summary: summary.unwrap_or_default(),
                    documents,
                    files: snapshot,
                };
                save(&store, &version).await;
                let mut history = history;
                history.push(version.clone());
                trim(&mut history);
                (version, history)
            }
        };
        tracing::info!(
            "configuration v{} ({}) from {}",
            current.version,
            current.hash,
            current.origin
        );
        let view = RwLock::new(view_of(&project, &current, &history, None));
        Some(Arc::new(Reconciler {
            config,
            base,
            folders,
            running,
            fleet,
            rules,
            store,
            journal,
            state: tokio::sync::Mutex::new(State {
                current,
                history,
                since: Instant::now(),
            }),
            view,
            refused: RwLock::new(None),
        }))
    }

    /// What runs, for `GET /api/v1/config`.
    pub fn view(&self) -> ConfigView {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The folders watched.
    pub fn folders(&self) -> Vec<PathBuf> {
        self.folders.iter().map(|(d, _)| d.clone()).collect()
    }

    /// The file a document of `kind` named `name` lives in, or would live
    /// in if new (`FOLDER/NAME.yaml`). A file that holds other documents
    /// too is refused: the API replaces whole files.
    pub fn file_of(&self, kind: DocKind, name: &str) -> Result<PathBuf, ApplyError> {
        let project = self.running.project();
        let files = documents(&project);
        let file = files
            .iter()
            .find(|(k, n, _)| *k == kind && n == name)
            .map(|(_, _, f)| f.clone())
            .or_else(|| {
                self.folders
                    .iter()
                    .find(|(_, kinds)| kinds.contains(&kind))
                    .map(|(dir, _)| dir.join(format!("{name}.yaml")))
            })
            .ok_or_else(|| ApplyError::Io(format!("no folder holds {}s", kind.name())))?;
        let others: Vec<String> = files
            .iter()
            .filter(|(k, n, f)| *f == file && !(*k == kind && n == name))
            .map(|(k, n, _)| format!("{} {n}", k.name()))
            .collect();
        if others.is_empty() {
            Ok(file)
        } else {
            Err(ApplyError::SharedFile(format!(
                "{} also holds {}; edit that file instead",
                file.display(),
                others.join(", ")
            )))
        }
    }

    /// The project the folders would make with `kind` `name` set to `text`,
    /// checked whole as [`Reconciler::apply`] checks a change, but neither
    /// written nor run: what `POST /api/v1/devices/{id}/probe` tries.
    pub fn candidate(
        &self,
        kind: DocKind,
        name: &str,
        text: String,
    ) -> Result<Project, ApplyError> {
        let on_disk = Snapshot::read(&self.folders()).map_err(|e| ApplyError::Invalid(vec![e]))?;
        let target = self.edited(&on_disk, kind, name, Some(text))?;
        let report = check_files(self.config.clone(), &self.base, &target);
        if !report.is_ok() {
            return Err(invalid(&report));
        }
        Ok(report.project)
    }

    /// `on_disk` with `kind` `name` set to `text`, or removed (`None`).
    fn edited(
        &self,
        on_disk: &Snapshot,
        kind: DocKind,
        name: &str,
        text: Option<String>,
    ) -> Result<Snapshot, ApplyError> {
        let mut target = on_disk.clone();
        let file = self.file_of(kind, name)?;
        if let Some(dir) = file.parent() {
            target.missing.remove(dir);
        }
        match text {
            Some(text) => {
                target.files.insert(file, text);
            }
            None => {
                target.files.remove(&file);
            }
        }
        Ok(target)
    }

    /// Applies `change`, from `origin`: validated whole, written to the
    /// folders, then only what changed is restarted. One change at a time.
    pub async fn apply(&self, change: Change, origin: Origin) -> Result<Applied, ApplyError> {
        let mut state = self.state.lock().await;
        let result = self.apply_locked(&mut state, change, origin.clone()).await;
        match &result {
            Err(ApplyError::Invalid(errors)) => {
                let refusal = Refusal {
                    origin: origin.clone(),
                    at: rfc3339(now()),
                    errors: errors.clone(),
                };
                tracing::error!(
                    "a configuration change ({origin}) is refused; the running one (v{}) is unchanged:\n{}",
                    state.current.version,
                    errors.join("\n")
                );
                let event = json!({
                    "source": "config",
                    "severity": "warning",
                    "kind": "config_rejected",
                    "message": format!("a configuration change ({origin}) was refused with {} problem(s); v{} keeps running", errors.len(), state.current.version),
                    "errors": errors,
                });
                self.journal.record(Log::Events, &event).await;
                *self.refused.write().unwrap_or_else(PoisonError::into_inner) = Some(refusal);
            }
            // What runs is what was asked for (and the folders hold it).
            Ok(_) => {
                *self.refused.write().unwrap_or_else(PoisonError::into_inner) = None;
            }
            Err(_) => {}
        }
        self.refresh_view(&state);
        result
    }

    async fn apply_locked(
        &self,
        state: &mut State,
        change: Change,
        origin: Origin,
    ) -> Result<Applied, ApplyError> {
        let dirs = self.folders();
        // A file in the folders that cannot be read refuses any change (as
        // it fails `ferrite check`): what to keep or remove is then unknown.
        let on_disk = Snapshot::read(&dirs).map_err(|e| ApplyError::Invalid(vec![e]))?;
        let target = match change {
            Change::Reread => on_disk.clone(),
            Change::Edit { kind, name, text } => self.edited(&on_disk, kind, &name, text)?,
            Change::Bundle(documents) => self.bundle_files(&documents)?,
            Change::Version(n) => state
                .history
                .iter()
                .find(|v| v.version == n)
                .map(|v| v.files.clone())
                .ok_or_else(|| {
                    ApplyError::NoVersion(format!("no version {n} is kept (the newest {KEEP} are)"))
                })?,
        };
        let hash = target.hash(&self.base);
        let unchanged = Applied {
            version: state.current.version,
            hash: state.current.hash.clone(),
            changed: false,
            summary: Summary::default(),
        };
        if hash == state.current.hash {
            // The folders may still differ (a rollback to the version that
            // runs, past a broken file): make them hold what runs.
            if on_disk != target {
                target
                    .write_over(&on_disk, &dirs)
                    .map_err(|e| ApplyError::Io(format!("cannot write the folders: {e}")))?;
            }
            return Ok(unchanged);
        }
        let report = check_files(self.config.clone(), &self.base, &target);
        for warning in report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
        {
            tracing::warn!("{warning}");
        }
        if !report.is_ok() {
            return Err(invalid(&report));
        }
        // The folders first: if they cannot be written, nothing else moves.
        if on_disk != target
            && let Err(e) = target.write_over(&on_disk, &dirs)
        {
            let back = target_restore(&on_disk, &dirs);
            return Err(ApplyError::Io(format!(
                "cannot write the folders ({e}){back}; the running configuration is unchanged"
            )));
        }
        let old = self.running.project();
        let new = self.running.replace(report.project);
        let mut summary = summarize(&old, &new);
        summary.devices = self.fleet.apply(&old, &new).await.into();
        if !summary.rules.is_empty() {
            self.rules.replace(Source::all(&new)).await;
        }
        let number = state.current.version + 1;
        let version = Version {
            version: number,
            hash: hash.clone(),
            origin: origin.clone(),
            applied_at: rfc3339(now()),
            documents: documents_of(&new, number, Some(&state.current), Some(&summary)),
            summary: summary.clone(),
            files: target,
        };
        save(&self.store, &version).await;
        tracing::info!(
            "configuration v{number} ({hash}) from {origin} is running: {}",
            describe(&summary)
        );
        let event = json!({
            "source": "config",
            "severity": "info",
            "kind": "config_applied",
            "message": format!("configuration v{number} from {origin}: {}", describe(&summary)),
            "version": number,
            "hash": hash,
        });
        self.journal.record(Log::Events, &event).await;
        state.history.push(version.clone());
        trim(&mut state.history);
        state.current = version;
        state.since = Instant::now();
        Ok(Applied {
            version: number,
            hash,
            changed: true,
            summary,
        })
    }

    /// The files of a bundle: each document in `FOLDER/NAME.yaml` of the
    /// folder for its kind, and nothing else.
    fn bundle_files(
        &self,
        documents: &[(DocKind, String, String)],
    ) -> Result<Snapshot, ApplyError> {
        let mut files = BTreeMap::new();
        let mut errors = Vec::new();
        for (kind, name, text) in documents {
            if let Err(e) = ferrite_models::units::check_name(name) {
                errors.push(format!("{} `{name}`: {e}", kind.name()));
                continue;
            }
            let Some((dir, _)) = self.folders.iter().find(|(_, kinds)| kinds.contains(kind)) else {
                errors.push(format!("no folder holds {}s", kind.name()));
                continue;
            };
            let path = dir.join(format!("{name}.yaml"));
            if let Err(e) = holds_exactly(*kind, name, &path, text) {
                errors.push(e);
                continue;
            }
            if files.insert(path.clone(), text.clone()).is_some() {
                errors.push(format!("{}: named twice in the bundle", path.display()));
            }
        }
        if errors.is_empty() {
            Ok(Snapshot {
                files,
                missing: BTreeSet::new(),
            })
        } else {
            Err(ApplyError::Invalid(errors))
        }
    }

    /// Rolls back to `to`, or to the version before the running one.
    pub async fn rollback(&self, to: Option<u64>, who: &str) -> Result<Applied, ApplyError> {
        let target = match to {
            Some(n) => n,
            None => {
                let state = self.state.lock().await;
                previous(&state).ok_or_else(|| {
                    ApplyError::NoVersion(format!(
                        "v{} is the only version kept: there is nothing to roll back to",
                        state.current.version
                    ))
                })?
            }
        };
        self.apply(
            Change::Version(target),
            Origin::Rollback {
                to: target,
                who: who.to_string(),
            },
        )
        .await
    }

    /// Rolls the running version back when the loops of devices it started
    /// or changed keep crashing: [`CRASHES_TO_ROLL_BACK`] panics within
    /// [`CRASH_WINDOW`] since it was applied. A version that is itself an
    /// automatic rollback is not rolled back again. Runs until `shutdown`.
    pub async fn watch_crashes(
        self: Arc<Self>,
        crashes: Arc<Crashes>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = crashes.next() => {}
            }
            let (from, to, since, touched, after_rollback) = {
                let state = self.state.lock().await;
                let d = &state.current.summary.devices;
                let touched: BTreeSet<String> = d.added.iter().chain(&d.changed).cloned().collect();
                let after_rollback = matches!(state.current.origin, Origin::AutoRollback { .. });
                (
                    state.current.version,
                    previous(&state),
                    state.since,
                    touched,
                    after_rollback,
                )
            };
            let window = Instant::now()
                .checked_sub(CRASH_WINDOW)
                .map_or(since, |w| w.max(since));
            // Only the crashes of devices this version started or changed
            // are its fault: a device that crashed before goes on crashing
            // under any version, and rolling back would not help.
            let recent: Vec<_> = crashes
                .since(window)
                .into_iter()
                .filter(|c| touched.contains(&c.device))
                .collect();
            if recent.len() < CRASHES_TO_ROLL_BACK {
                continue;
            }
            let devices: BTreeSet<&str> = recent.iter().map(|c| c.device.as_str()).collect();
            let why = format!(
                "{} crashes of device loops within {CRASH_WINDOW:?} ({}): {}",
                recent.len(),
                devices.into_iter().collect::<Vec<_>>().join(", "),
                recent.last().map_or("", |c| c.why.as_str())
            );
            if after_rollback {
                // Never back and forth between two versions that crash.
                tracing::error!(
                    "configuration v{from}, itself a rollback: {why}; not rolled back again"
                );
                continue;
            }
            let Some(to) = to else {
                tracing::error!("configuration v{from}: {why}; no earlier version to roll back to");
                continue;
            };
            let origin = Origin::AutoRollback {
                from,
                to,
                why: why.clone(),
            };
            let result = self.apply(Change::Version(to), origin).await;
            let message = match &result {
                Ok(applied) => format!(
                    "configuration v{from} rolled back to v{to} (now v{}): {why}",
                    applied.version
                ),
                Err(e) => {
                    format!("configuration v{from} should roll back to v{to} ({why}), but: {e}")
                }
            };
            tracing::error!("{message}");
            let event = json!({
                "source": "config",
                "severity": "critical",
                "kind": "config_rolled_back",
                "message": message,
                "from": from,
                "to": to,
            });
            self.journal.record(Log::Events, &event).await;
        }
    }

    fn refresh_view(&self, state: &State) {
        let refused = self
            .refused
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let view = view_of(
            &self.running.project(),
            &state.current,
            &state.history,
            refused,
        );
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = view;
    }
}

/// Checks that `text`, as the file `path`, holds exactly one document of
/// `kind`, named `name` (a text that does not parse passes: the whole set's
/// check reports where it fails).
pub fn holds_exactly(kind: DocKind, name: &str, path: &Path, text: &str) -> Result<(), String> {
    let mut probe = ferrite_models::project::Loader::default();
    probe.load_text(path, text, &[kind]);
    let names: Vec<&String> = match kind {
        DocKind::DeviceModel => probe.project.models.keys().collect(),
        DocKind::Device => probe.project.devices.keys().collect(),
        DocKind::Rule => probe.project.rules.keys().collect(),
    };
    if probe.diagnostics.errors() > 0 || names == [name] {
        return Ok(());
    }
    let found = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(format!(
        "{}: must hold exactly one {} named `{name}`; it holds {}",
        path.display(),
        kind.name(),
        if found.is_empty() {
            "none".into()
        } else {
            found
        }
    ))
}

/// If the folders were left half-written, puts the old files back.
fn target_restore(old: &Snapshot, dirs: &[PathBuf]) -> String {
    let now = Snapshot::read(dirs).unwrap_or_default();
    match old.write_over(&now, dirs) {
        Ok(()) => String::new(),
        Err(e) => format!(" and cannot put the old files back ({e})"),
    }
}

/// The version before the running one, if kept.
fn previous(state: &State) -> Option<u64> {
    state
        .history
        .iter()
        .rev()
        .map(|v| v.version)
        .find(|v| *v < state.current.version)
}

fn trim(history: &mut Vec<Version>) {
    if history.len() > KEEP {
        history.drain(..history.len() - KEEP);
    }
}

/// The project `files` make with `config` (for the first version's summary
/// against the last stored one); empty if they do not load.
/// A refusal listing `report`'s errors.
fn invalid(report: &Report) -> ApplyError {
    ApplyError::Invalid(
        report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect(),
    )
}

fn project_of(config: &Located<Config>, base: &Path, files: &Snapshot) -> Project {
    check_files(config.clone(), base, files).project
}

/// Every model, device and rule of `project`, with its file.
fn documents(project: &Project) -> Vec<(DocKind, String, PathBuf)> {
    let mut out = Vec::new();
    for (name, m) in &project.models {
        out.push((DocKind::DeviceModel, name.clone(), m.file.to_path_buf()));
    }
    for (name, d) in &project.devices {
        out.push((DocKind::Device, name.clone(), d.file.to_path_buf()));
    }
    for (name, r) in &project.rules {
        out.push((DocKind::Rule, name.clone(), r.file.to_path_buf()));
    }
    out
}

fn key(kind: DocKind, name: &str) -> String {
    format!("{}/{name}", kind_key(kind))
}

fn kind_key(kind: DocKind) -> &'static str {
    match kind {
        DocKind::DeviceModel => "model",
        DocKind::Device => "device",
        DocKind::Rule => "rule",
    }
}

/// Which version last changed each document of `project`, version `number`
/// being applied now with `summary` against `last`.
fn documents_of(
    project: &Project,
    number: u64,
    last: Option<&Version>,
    summary: Option<&Summary>,
) -> BTreeMap<String, u64> {
    let touched: BTreeSet<String> = summary
        .map(|s| {
            let mut keys = BTreeSet::new();
            for (kind, changes) in [
                (DocKind::DeviceModel, &s.models),
                (DocKind::Device, &s.devices),
                (DocKind::Rule, &s.rules),
            ] {
                for name in changes.added.iter().chain(&changes.changed) {
                    keys.insert(key(kind, name));
                }
            }
            keys
        })
        .unwrap_or_default();
    documents(project)
        .into_iter()
        .map(|(kind, name, _)| {
            let k = key(kind, &name);
            let at = match last.and_then(|l| l.documents.get(&k)) {
                Some(v) if !touched.contains(&k) && summary.is_some() => *v,
                _ => number,
            };
            (k, at)
        })
        .collect()
}

/// What `new` changes against `old` (devices as the fleet counts them).
fn summarize(old: &Project, new: &Project) -> Summary {
    fn changes<T: PartialEq>(
        old: &indexmap::IndexMap<String, Located<T>>,
        new: &indexmap::IndexMap<String, Located<T>>,
    ) -> KindChanges {
        let mut out = KindChanges::default();
        for (name, doc) in new {
            match old.get(name) {
                None => out.added.push(name.clone()),
                Some(before) if before.value != doc.value || before.file != doc.file => {
                    out.changed.push(name.clone());
                }
                Some(_) => {}
            }
        }
        out.removed = old
            .keys()
            .filter(|n| !new.contains_key(*n))
            .cloned()
            .collect();
        out
    }
    Summary {
        models: changes(&old.models, &new.models),
        devices: crate::fleet::diff(old, new).into(),
        rules: changes(&old.rules, &new.rules),
    }
}

fn describe(summary: &Summary) -> String {
    if summary.is_empty() {
        return "no document changed".into();
    }
    let mut parts = Vec::new();
    for (what, c) in [
        ("model", &summary.models),
        ("device", &summary.devices),
        ("rule", &summary.rules),
    ] {
        for (verb, names) in [
            ("added", &c.added),
            ("changed", &c.changed),
            ("removed", &c.removed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what}s {verb}: {}", names.join(", ")));
            }
        }
    }
    parts.join("; ")
}

fn view_of(
    project: &Project,
    current: &Version,
    history: &[Version],
    refused: Option<Refusal>,
) -> ConfigView {
    let origin_of = |v: u64| {
        history
            .iter()
            .find(|h| h.version == v)
            .map(|h| h.origin.clone())
    };
    let documents = documents(project)
        .into_iter()
        .map(|(kind, name, file)| {
            let version = current
                .documents
                .get(&key(kind, &name))
                .copied()
                .unwrap_or(current.version);
            DocumentView {
                kind: kind_key(kind),
                file: file.display().to_string(),
                name,
                version,
                origin: origin_of(version),
            }
        })
        .collect();
    ConfigView {
        version: current.version,
        hash: current.hash.clone(),
        origin: current.origin.clone(),
        applied_at: current.applied_at.clone(),
        documents,
        history: history.iter().rev().map(VersionView::from).collect(),
        last_rejected: refused,
    }
}

/// The versions in the store, oldest first; unreadable ones skipped.
async fn stored_versions(store: &Arc<dyn Store>) -> Vec<Version> {
    let store = store.clone();
    let read = crate::store::blocking::spawn(move || store.config_versions())
        .await
        .unwrap_or_else(|e| Err(crate::store::StoreError::Io(e.to_string())));
    match read {
        Ok(all) => all
            .into_iter()
            .filter_map(|(n, body)| match serde_json::from_slice::<Version>(&body) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!("ignoring stored configuration v{n}: {e}");
                    None
                }
            })
            .collect(),
        Err(e) => {
            tracing::error!("cannot read the stored configuration versions: {e}");
            Vec::new()
        }
    }
}

/// Stores `version`; a failure is logged (the version still runs, and the
/// folders hold it).
async fn save(store: &Arc<dyn Store>, version: &Version) {
    let body = match serde_json::to_vec(version) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("cannot encode configuration v{}: {e}", version.version);
            return;
        }
    };
    let (store, number) = (store.clone(), version.version);
    let saved =
        crate::store::blocking::spawn(move || store.save_config_version(number, &body, KEEP))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = saved {
        tracing::error!(
            "cannot store configuration v{number} (it runs, and the folders hold it): {e}"
        );
    }
}
