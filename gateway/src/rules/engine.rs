//! The rule engine: one task that owns every rule's state.
//!
//! It wakes when the [`Feed`] has readings, when a hold (`for:`) or a period
//! (`every:`) is due, or on a command (enable, disable, reload). Each wake it
//! updates its table of readings, evaluates the rules that read what changed
//! (and those that are due), and steps their [state machines](super::machine).
//! Firing evaluates the actions' values and messages at once, against the
//! readings that fired the rule, and hands them to the rule's own worker task,
//! which runs them in order: writes through the checked [`Control`] path,
//! events into the journal, publishes to the embedded broker. A slow device
//! therefore delays only its own rule.
//!
//! State changes are saved (a small task batches them into the store), so a
//! restart resumes a running `for:` where it stood.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferrite_models::Project;
use ferrite_models::expr::{Piece, split_template};
use ferrite_models::rule::{Action, Rule, Severity};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::feed::Feed;
use super::machine::{Phase, Step, Verdict};
use super::program::{Cell, Expr, Scope, Template};
use crate::backoff::Backoff;
use crate::control::{Actor, Control, Holds, WriteError};
use crate::journal::Journal;
use crate::live::{Live, Quality, Sample};
use crate::names::Names;
use crate::running::Running;
use crate::store::{Log, Store};
use crate::time::{Micros, now, rfc3339};
use ferrite_core::driver::DriverError;
use ferrite_core::queue::DropOldest;

/// Where the MQTT `publish` action goes (the embedded broker), if this build
/// and config have one.
#[cfg(feature = "mqtt")]
pub type Outlet = Option<Arc<crate::broker::Publisher>>;
/// Without the `mqtt` feature there is no broker to publish to.
#[cfg(not(feature = "mqtt"))]
pub type Outlet = Option<Arc<NoBroker>>;

/// The broker a build without the `mqtt` feature does not have.
#[cfg(not(feature = "mqtt"))]
#[derive(Debug)]
pub enum NoBroker {}

/// Maps tokio's clock (which tests can pause) to wall time, which is what
/// the store keeps, so that a saved `pending since` means the same after a
/// restart.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall0: Micros,
    t0: Instant,
}

impl Clock {
    /// Wall time now.
    pub fn system() -> Clock {
        Clock::starting_at(now())
    }

    /// A clock that reads `wall0` now (tests).
    pub fn starting_at(wall0: Micros) -> Clock {
        Clock {
            wall0,
            t0: Instant::now(),
        }
    }

    /// The wall time of `t`.
    pub fn wall(&self, t: Instant) -> Micros {
        let since =
            i64::try_from(t.saturating_duration_since(self.t0).as_micros()).unwrap_or(i64::MAX);
        self.wall0.saturating_add(since)
    }

    /// The instant of wall time `wall` (no earlier than this clock's start).
    pub fn instant(&self, wall: Micros) -> Instant {
        let ahead = u64::try_from(wall.saturating_sub(self.wall0)).unwrap_or(0);
        self.t0 + Duration::from_micros(ahead)
    }
}

/// A rule as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RuleView {
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// The file it came from.
    pub file: String,
    /// Whether it runs.
    pub enabled: bool,
    /// `file` or `api`: what decided `enabled`.
    pub enabled_by: &'static str,
    /// `idle`, `pending`, `active` or `disabled`.
    pub state: &'static str,
    /// Since when it is pending or active.
    pub since: Option<String>,
    /// The condition.
    pub when: String,
    /// The hold, as written.
    #[serde(rename = "for")]
    pub hold: Option<String>,
    /// When it last fired.
    pub last_fired: Option<String>,
    /// When it last cleared.
    pub last_cleared: Option<String>,
    /// How often it fired.
    pub firings: u64,
    /// What went wrong last (evaluation or action), if it still stands.
    pub last_error: Option<String>,
    /// The properties it holds (`device.property`), while active.
    pub holds: Vec<String>,
}

/// A rule and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The rule.
    pub rule: Rule,
    /// Its file.
    pub file: PathBuf,
}

impl Source {
    /// The rules of `project`, with their files.
    pub fn all(project: &Project) -> Vec<Source> {
        project
            .rules
            .values()
            .map(|located| Source {
                rule: located.value.clone(),
                file: located.file.to_path_buf(),
            })
            .collect()
    }
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// No rule by that name.
    #[error("no rule `{0}`")]
    NoRule(String),
    /// The engine has stopped.
    #[error("the rule engine has stopped")]
    Stopped,
}

/// Asks of the engine.
pub(super) enum Command {
    /// Enable or disable a rule (an override that survives restarts).
    Enable(String, bool, oneshot::Sender<Result<(), RuleError>>),
    /// Replace the rule set (a reload).
    Replace(Vec<Source>, oneshot::Sender<()>),
    /// An action failed (from a worker).
    ActionFailed(String, String),
}

/// What is saved per rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Saved {
    #[serde(flatten)]
    phase: Phase,
    last_fired: Option<Micros>,
    last_cleared: Option<Micros>,
    firings: u64,
    /// Set by the API's enable/disable; wins over the file's `enabled`.
    enabled: Option<bool>,
}

/// A compiled action.
enum Plan {
    Write {
        device: String,
        property: String,
        value: Expr,
        hold: bool,
    },
    Event {
        severity: Severity,
        message: Template,
    },
    Publish {
        topic: String,
        payload: Template,
        retain: bool,
    },
}

/// An action ready to run: values and texts filled in.
enum Job {
    Write {
        device: String,
        property: String,
        value: serde_json::Value,
    },
    Event {
        severity: Severity,
        kind: &'static str,
        message: String,
    },
    Publish {
        topic: String,
        payload: String,
        retain: bool,
    },
}

/// A token bucket: `capacity` firings, refilled over `period`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    at: Instant,
}

impl Bucket {
    fn new(firings: u32, per: Duration) -> Bucket {
        let capacity = f64::from(firings.max(1));
        Bucket {
            capacity,
            tokens: capacity,
            per_second: capacity / per.as_secs_f64().max(1e-3),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One rule, compiled, with its state.
struct Slot {
    source: Source,
    /// Compile errors: such a rule never runs.
    broken: Option<String>,
    when: Option<Expr>,
    clear_when: Option<Expr>,
    then: Vec<Plan>,
    on_clear: Vec<Plan>,
    /// (device index, property index, device, property) of what it reads.
    refs: Vec<(usize, u16, String, String)>,
    saved: Saved,
    last_error: Option<String>,
    /// When a hold ends.
    wake: Option<Instant>,
    /// The next `every:` evaluation.
    next_every: Option<Instant>,
    bucket: Bucket,
    /// Bumped at each fire, clear and disable: a worker retries a write
    /// only while the firing that asked for it is still the latest.
    generation: Arc<AtomicU64>,
    /// The rule's worker's queue (see [`JOB_QUEUE`]).
    worker: Arc<Jobs>,
}

/// A rule's pending jobs: the firing's generation, what fired, the jobs.
type Jobs = DropOldest<(u64, &'static str, Vec<Job>)>;

/// Most firings waiting for a rule's worker. A worker only falls this far
/// behind when its writes keep timing out while the rule keeps firing (its
/// rate limit allows at most `rate_limit.firings` per `per`); the engine's
/// loop must never wait for it. Full-queue policy: the oldest firing's jobs
/// are dropped (a newer firing supersedes its writes anyway), counted in
/// `ferrite_rule_jobs_dropped_total` and logged.
const JOB_QUEUE: usize = 64;

impl Drop for Slot {
    /// The worker ends once it has done what is queued.
    fn drop(&mut self) {
        self.worker.close();
    }
}

impl Slot {
    fn enabled(&self) -> bool {
        self.saved.enabled.unwrap_or(self.source.rule.enabled)
    }

    fn hold(&self) -> Micros {
        hold_micros(&self.source.rule)
    }

    fn held(&self) -> impl Iterator<Item = (&str, &str)> {
        self.then.iter().filter_map(|p| match p {
            Plan::Write {
                device,
                property,
                hold: true,
                ..
            } => Some((device.as_str(), property.as_str())),
            _ => None,
        })
    }
}

/// The reading of device `d`'s property `p`, if a rule reads it.
fn cell(cells: &[Vec<Option<Cell>>], d: usize, p: u16) -> Option<&Cell> {
    cells.get(d)?.get(usize::from(p))?.as_ref()
}

/// Makes the cell of `(d, p)`, starting from the live view, if it has none
/// yet: a rule added later starts from the readings already shown.
fn ensure_cell(
    cells: &mut Vec<Vec<Option<Cell>>>,
    live: &Live,
    (d, p): (usize, u16),
    device: &str,
    property: &str,
) {
    if cells.len() <= d {
        cells.resize_with(d + 1, Vec::new);
    }
    let row = &mut cells[d];
    let p = usize::from(p);
    if row.len() <= p {
        row.resize_with(p + 1, || None);
    }
    if row[p].is_none() {
        let reading = live.reading(device, property).ok();
        row[p] = Some(Cell {
            value: reading.as_ref().and_then(crate::live::Reading::value),
            previous: None,
            quality: reading.map_or(Quality::Bad, |r| r.quality()),
            fresh: false,
        });
    }
}

/// A rule's `for:` in microseconds (0 without one).
fn hold_micros(rule: &Rule) -> Micros {
    rule.hold.map_or(0, |h| {
        i64::try_from(h.get().as_micros()).unwrap_or(i64::MAX)
    })
}

/// What the engine needs.
pub struct Deps {
    /// The running project (devices, models).
    pub running: Arc<Running>,
    /// Live readings, to start from.
    pub live: Arc<Live>,
    /// Readings as they arrive.
    pub feed: Arc<Feed>,
    /// The checked write path.
    pub control: Arc<Control>,
    /// Events.
    pub journal: Arc<Journal>,
    /// Saved states.
    pub store: Arc<dyn Store>,
    /// The broker, for `publish`.
    pub outlet: Outlet,
    /// Wall time.
    pub clock: Clock,
}

impl Deps {
    /// Dependencies around `writers` with a fresh live view, feed and write
    /// path, and no broker: for tests and benchmarks that drive the feed
    /// themselves.
    pub fn standalone(
        project: Project,
        store: Arc<dyn Store>,
        writers: HashMap<String, Arc<dyn ferrite_core::driver::DeviceWriter>>,
        journal: Arc<Journal>,
        clock: Clock,
    ) -> Deps {
        let live = Live::of(&project, Names::of(&project));
        let running = Running::new(project);
        let control = Arc::new(Control {
            running: running.clone(),
            live: live.clone(),
            writers: Arc::new(crate::control::Writers::from(writers)),
            holds: Arc::new(Holds::default()),
            journal: journal.clone(),
        });
        Deps {
            feed: Arc::new(Feed::new()),
            running,
            live,
            control,
            journal,
            store,
            outlet: None,
            clock,
        }
    }
}

/// The engine's state.
pub(super) struct Engine {
    deps: Deps,
    holds: Arc<Holds>,
    /// Readings by device number, then property number; made as rules come
    /// to read them.
    cells: Vec<Vec<Option<Cell>>>,
    slots: Vec<Slot>,
    /// Which rules read a property.
    readers: HashMap<(usize, u16), Vec<usize>>,
    views: watch::Sender<Arc<Vec<RuleView>>>,
    commands_tx: mpsc::Sender<Command>,
    stats: Arc<super::RuleStats>,
    save: Arc<PendingStates>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Engine {
    /// Builds the engine from `rules`, restoring saved states.
    pub(super) fn new(
        deps: Deps,
        rules: Vec<Source>,
        views: watch::Sender<Arc<Vec<RuleView>>>,
        commands_tx: mpsc::Sender<Command>,
        stats: Arc<super::RuleStats>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Engine {
        let save = Arc::new(PendingStates::default());
        tasks.spawn(save_states(
            deps.store.clone(),
            save.clone(),
            shutdown.clone(),
        ));
        let holds = deps.control.holds.clone();
        let mut engine = Engine {
            deps,
            holds,
            cells: Vec::new(),
            slots: Vec::new(),
            readers: HashMap::new(),
            views,
            commands_tx,
            stats,
            save,
            tasks,
            shutdown,
        };
        let saved: HashMap<String, Saved> = match engine.deps.store.rule_states() {
            Ok(states) => states
                .into_iter()
                .filter_map(|(name, bytes)| match serde_json::from_slice(&bytes) {
                    Ok(s) => Some((name, s)),
                    Err(e) => {
                        tracing::warn!("ignoring the saved state of rule `{name}`: {e}");
                        None
                    }
                })
                .collect(),
            Err(e) => {
                tracing::error!("cannot read the rules' saved states: {e}");
                HashMap::new()
            }
        };
        engine.replace(rules, &mut |name| saved.get(name).cloned());
        engine
    }

    /// Runs until shutdown.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let feed = self.deps.feed.clone();
        loop {
            let next = self.next_due();
            let mut dirty: HashSet<usize> = HashSet::new();
            tokio::select! {
                () = feed.ready() => {}
                Some(command) = commands.recv() => self.command(command, &mut dirty),
                () = sleep_until(next) => {}
                () = self.shutdown.cancelled() => break,
            }
            let observed = feed.take();
            self.stats
                .observations
                .fetch_add(observed.len() as u64, Ordering::Relaxed);
            for o in observed {
                if self.observe(o.device, o.property, &o.sample)
                    && let Some(readers) = self.readers.get(&(o.device, o.property))
                {
                    dirty.extend(readers);
                }
            }
            let now = Instant::now();
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if slot.wake.is_some_and(|t| t <= now) {
                    slot.wake = None;
                    dirty.insert(i);
                }
                if let (Some(t), Some(every)) = (slot.next_every, slot.source.rule.every)
                    && t <= now
                {
                    // After a stall, the next one is a period from now,
                    // not a burst of the missed ones.
                    let floor = now.checked_sub(every.get()).map_or(t, |f| t.max(f));
                    slot.next_every = Some(floor + every.get());
                    dirty.insert(i);
                }
            }
            let mut changed = false;
            let mut order: Vec<usize> = dirty.into_iter().collect();
            order.sort_unstable();
            for i in order {
                changed |= self.evaluate(i, now);
            }
            if changed {
                self.publish_views();
            }
        }
        tracing::debug!("rule engine stopped");
    }

    fn next_due(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| s.enabled())
            .flat_map(|s| [s.wake, s.next_every])
            .flatten()
            .min()
    }

    /// Applies one reading; true if the value, quality or freshness moved.
    fn observe(&mut self, device: usize, property: u16, sample: &Sample) -> bool {
        let Some(cell) = self
            .cells
            .get_mut(device)
            .and_then(|d| d.get_mut(usize::from(property)))
            .and_then(Option::as_mut)
        else {
            return false;
        };
        let before = (cell.quality, cell.fresh);
        cell.fresh = true;
        let mut moved = false;
        match sample {
            Sample::Good(v) => {
                cell.quality = Quality::Good;
                if cell.value.as_ref() != Some(v) {
                    cell.previous = cell.value.replace(v.clone());
                    moved = true;
                }
            }
            Sample::Stale => cell.quality = Quality::Stale,
            Sample::Bad => cell.quality = Quality::Bad,
        }
        moved || before != (cell.quality, cell.fresh)
    }

    fn command(&mut self, command: Command, dirty: &mut HashSet<usize>) {
        match command {
            Command::Enable(name, on, reply) => {
                let result = self.enable(&name, on, dirty);
                let _ = reply.send(result);
                self.publish_views();
            }
            Command::Replace(rules, reply) => {
                let mut keep: HashMap<String, Saved> = self
                    .slots
                    .iter()
                    .map(|s| (s.source.rule.name.clone(), s.saved.clone()))
                    .collect();
                let fresh = self.replace(rules, &mut |name| keep.remove(name));
                dirty.extend(fresh);
                let _ = reply.send(());
                self.publish_views();
            }
            Command::ActionFailed(name, message) => {
                if let Some(slot) = self.slots.iter_mut().find(|s| s.source.rule.name == name) {
                    slot.last_error = Some(message);
                    self.publish_views();
                }
            }
        }
    }

    fn enable(
        &mut self,
        name: &str,
        on: bool,
        dirty: &mut HashSet<usize>,
    ) -> Result<(), RuleError> {
        let i = self
            .slots
            .iter()
            .position(|s| s.source.rule.name == name)
            .ok_or_else(|| RuleError::NoRule(name.into()))?;
        let slot = &mut self.slots[i];
        slot.saved.enabled = Some(on);
        if on {
            dirty.insert(i);
            slot.next_every = slot.source.rule.every.map(|e| Instant::now() + e.get());
        } else {
            // Disabling stops the rule where it stands: no clear actions,
            // holds released, pending writes not retried.
            slot.saved.phase = Phase::Idle;
            slot.wake = None;
            slot.next_every = None;
            slot.generation.fetch_add(1, Ordering::Relaxed);
            self.holds.release(name);
        }
        let job = Job::Event {
            severity: Severity::Info,
            kind: if on { "enabled" } else { "disabled" },
            message: format!("rule {name} {}", if on { "enabled" } else { "disabled" }),
        };
        let generation = slot.generation.load(Ordering::Relaxed);
        dispatch_to(slot, &self.stats, (generation, "", vec![job]));
        self.save_state(i);
        Ok(())
    }

    /// Installs `rules`: a rule whose document and file did not change
    /// keeps running as it is (its state, holds, pending `for:` and
    /// worker); a new or changed one is compiled, taking its saved state
    /// from `saved`; one no longer there stops and its state is forgotten.
    /// Returns the slots compiled now, which want a first evaluation.
    fn replace(
        &mut self,
        rules: Vec<Source>,
        saved: &mut dyn FnMut(&str) -> Option<Saved>,
    ) -> Vec<usize> {
        let mut old: HashMap<String, Slot> = self
            .slots
            .drain(..)
            .map(|s| (s.source.rule.name.clone(), s))
            .collect();
        let retire = |slot: &Slot, holds: &Holds| {
            slot.generation.fetch_add(1, Ordering::Relaxed);
            holds.release(&slot.source.rule.name);
        };
        let now = Instant::now();
        let mut fresh = Vec::new();
        let mut slots = Vec::with_capacity(rules.len());
        for source in rules {
            match old.remove(&source.rule.name) {
                Some(slot) if slot.source == source => slots.push(slot),
                before => {
                    if let Some(before) = &before {
                        retire(before, &self.holds);
                    }
                    fresh.push(slots.len());
                    slots.push(self.compile(source, now, saved));
                }
            }
        }
        for (name, gone) in old {
            retire(&gone, &self.holds);
            self.save.put(name, None);
        }
        self.slots = slots;
        self.readers.clear();
        let mut watched = HashSet::new();
        for (i, slot) in self.slots.iter().enumerate() {
            for (d, p, device, property) in &slot.refs {
                self.readers.entry((*d, *p)).or_default().push(i);
                watched.insert((*d, *p));
                ensure_cell(&mut self.cells, &self.deps.live, (*d, *p), device, property);
            }
            if slot.enabled() && matches!(slot.saved.phase, Phase::Active { .. }) {
                for (device, property) in slot.held() {
                    self.holds.hold(&slot.source.rule.name, device, property);
                }
            }
        }
        self.deps.feed.watch(&watched);
        self.publish_views();
        fresh
    }

    fn compile(
        &self,
        source: Source,
        now: Instant,
        saved: &mut dyn FnMut(&str) -> Option<Saved>,
    ) -> Slot {
        let rule = &source.rule;
        let errors = std::cell::RefCell::new(Vec::new());
        let note = |e: String| errors.borrow_mut().push(e);
        let expr = |src: &str| Expr::compile(src).map_err(note).ok();
        let template = |src: &str| Template::compile(src).map_err(note).ok();
        let plans = |actions: &[Action]| -> Vec<Plan> {
            actions
                .iter()
                .filter_map(|a| match a {
                    Action::Write(w) => Some(Plan::Write {
                        device: w.device.clone(),
                        property: w.property.clone(),
                        value: expr(&w.value)?,
                        hold: w.hold,
                    }),
                    Action::Event(e) => Some(Plan::Event {
                        severity: e.severity,
                        message: template(&e.message)?,
                    }),
                    Action::Publish(p) => Some(Plan::Publish {
                        topic: p.topic.clone(),
                        payload: template(&p.payload)?,
                        retain: p.retain,
                    }),
                })
                .collect()
        };
        let when = expr(&rule.when);
        let clear_when = rule.clear_when.as_deref().and_then(expr);
        let then = plans(&rule.then);
        let on_clear = plans(&rule.on_clear);
        let refs = self.refs_of(rule);
        let name = rule.name.clone();
        let saved = saved(&name).unwrap_or(Saved {
            phase: Phase::Idle,
            last_fired: None,
            last_cleared: None,
            firings: 0,
            enabled: None,
        });
        let hold = hold_micros(rule);
        let wake = match saved.phase {
            Phase::Pending { since } => Some(self.deps.clock.instant(since.saturating_add(hold))),
            _ => None,
        };
        let worker = Arc::new(Jobs::new(JOB_QUEUE));
        let generation = Arc::new(AtomicU64::new(0));
        self.tasks.spawn(run_jobs(
            name.clone(),
            worker.clone(),
            generation.clone(),
            self.deps.control.clone(),
            self.deps.journal.clone(),
            self.deps.outlet.clone(),
            self.commands_tx.clone(),
            self.shutdown.clone(),
        ));
        let errors = errors.into_inner();
        let broken = (!errors.is_empty()).then(|| errors.join("; "));
        if let Some(e) = &broken {
            tracing::error!("rule `{name}` cannot run: {e}");
        }
        Slot {
            bucket: Bucket::new(rule.rate_limit.firings, rule.rate_limit.per.get()),
            next_every: rule.every.map(|e| now + e.get()),
            broken,
            when,
            clear_when,
            then,
            on_clear,
            refs,
            saved,
            last_error: None,
            wake,
            generation,
            worker,
            source,
        }
    }

    /// What `rule` reads, resolved to numbers.
    fn refs_of(&self, rule: &Rule) -> Vec<(usize, u16, String, String)> {
        let project = self.deps.running.project();
        let names = self.deps.live.names();
        // CEL: the conditions and the values written; and what sits between
        // the braces of message and payload templates.
        let mut sources: Vec<String> = vec![rule.when.clone()];
        sources.extend(rule.clear_when.clone());
        for a in rule.then.iter().chain(&rule.on_clear) {
            let template = match a {
                Action::Write(w) => {
                    sources.push(w.value.clone());
                    continue;
                }
                Action::Event(e) => &e.message,
                Action::Publish(p) => &p.payload,
            };
            sources.extend(
                split_template(template)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| match p {
                        Piece::Expr(e) => Some(e),
                        Piece::Text(_) => None,
                    }),
            );
        }
        let mut out = Vec::new();
        for source in &sources {
            for r in ferrite_models::expr::parse(source).unwrap_or_default() {
                if project.property(&r.device, &r.property).is_none() {
                    continue;
                }
                let Some((d, p)) = names
                    .find(&r.device)
                    .and_then(|d| Some((d, names.property(d, &r.property)?)))
                else {
                    continue;
                };
                out.push((d, p, r.device, r.property));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Evaluates rule `i` and steps it; true if its view changed.
    fn evaluate(&mut self, i: usize, now: Instant) -> bool {
        let wall = self.deps.clock.wall(now);
        let cells = &self.cells;
        let slot = &mut self.slots[i];
        if !slot.enabled() || slot.broken.is_some() {
            return false;
        }
        let Some(when) = &slot.when else { return false };
        let waiting: Vec<String> = slot
            .refs
            .iter()
            .filter(|(d, p, _, _)| !cell(cells, *d, *p).is_some_and(|c| c.fresh))
            .map(|(_, _, d, p)| format!("{d}.{p}"))
            .collect();
        if !waiting.is_empty() {
            let message = format!("waiting for a first reading of {}", waiting.join(", "));
            let changed = slot.last_error.as_ref() != Some(&message);
            slot.last_error = Some(message);
            return changed;
        }
        let scope = Scope {
            cells: slot
                .refs
                .iter()
                .filter_map(|(d, p, dn, pn)| Some((dn.as_str(), pn.as_str(), cell(cells, *d, *p)?)))
                .collect(),
            now: wall,
        };
        self.stats.evaluations.fetch_add(1, Ordering::Relaxed);
        let when_result = when.condition(&scope);
        let clear_result = slot.clear_when.as_ref().map(|c| c.condition(&scope));
        let error = when_result
            .as_ref()
            .err()
            .or_else(|| clear_result.as_ref().and_then(|r| r.as_ref().err()))
            .cloned();
        let mut changed = slot.last_error != error;
        if let Some(e) = &error
            && changed
        {
            tracing::warn!("rule `{}`: {e}", slot.source.rule.name);
        }
        slot.last_error = error;
        let verdict = Verdict {
            when: when_result.ok(),
            clear_when: clear_result.map(Result::ok),
        };
        let before = slot.saved.phase;
        let step = slot.saved.phase.step(verdict, slot.hold(), wall);
        let name = slot.source.rule.name.clone();
        match step {
            Step::Stay => slot.wake = None,
            Step::Wait { until } => slot.wake = Some(self.deps.clock.instant(until)),
            Step::Fire => {
                slot.wake = None;
                slot.saved.firings += 1;
                slot.saved.last_fired = Some(wall);
                for (device, property) in slot.held() {
                    self.holds.hold(&name, device, property);
                }
                self.stats.firings.fetch_add(1, Ordering::Relaxed);
                tracing::info!("rule `{name}` fired");
                let jobs = plan_jobs(slot, &slot.then, &scope, now, "fired");
                dispatch(slot, &self.stats, "fired", jobs);
            }
            Step::Clear => {
                slot.saved.last_cleared = Some(wall);
                self.holds.release(&name);
                tracing::info!("rule `{name}` cleared");
                let jobs = plan_jobs(slot, &slot.on_clear, &scope, now, "cleared");
                dispatch(slot, &self.stats, "cleared", jobs);
            }
        }
        if slot.saved.phase != before {
            self.save_state(i);
            changed = true;
        }
        changed
    }

    fn save_state(&self, i: usize) {
        let slot = &self.slots[i];
        match serde_json::to_vec(&slot.saved) {
            Ok(bytes) => {
                self.save.put(slot.source.rule.name.clone(), Some(bytes));
            }
            Err(e) => tracing::error!("cannot encode rule state: {e}"),
        }
    }

    fn publish_views(&self) {
        let views = self
            .slots
            .iter()
            .map(|s| {
                let enabled = s.enabled();
                let (state, since) = match (enabled, s.saved.phase) {
                    (false, _) => ("disabled", None),
                    (true, Phase::Idle) => ("idle", None),
                    (true, Phase::Pending { since }) => ("pending", Some(since)),
                    (true, Phase::Active { since }) => ("active", Some(since)),
                };
                let rule = &s.source.rule;
                RuleView {
                    name: rule.name.clone(),
                    description: rule.description.clone(),
                    file: s.source.file.display().to_string(),
                    enabled,
                    enabled_by: if s.saved.enabled.is_some() {
                        "api"
                    } else {
                        "file"
                    },
                    state,
                    since: since.map(rfc3339),
                    when: rule.when.clone(),
                    hold: rule
                        .hold
                        .map(|h| humantime::format_duration(h.get()).to_string()),
                    last_fired: s.saved.last_fired.map(rfc3339),
                    last_cleared: s.saved.last_cleared.map(rfc3339),
                    firings: s.saved.firings,
                    last_error: s.broken.clone().or_else(|| s.last_error.clone()),
                    holds: self.holds.held_by(&rule.name),
                }
            })
            .collect();
        self.views.send_replace(Arc::new(views));
    }
}

/// Fills in the actions' values and texts; applies the rate limit to writes
/// and publishes.
fn plan_jobs(
    slot: &Slot,
    plans: &[Plan],
    scope: &Scope<'_>,
    now: Instant,
    kind: &'static str,
) -> Vec<Job> {
    let name = &slot.source.rule.name;
    let mut jobs = Vec::new();
    let acts = plans
        .iter()
        .any(|p| matches!(p, Plan::Write { .. } | Plan::Publish { .. }));
    // The bucket lives in the slot; plan_jobs only reads it, dispatch takes.
    let allowed = !acts || slot.bucket.clone().take(now);
    for plan in plans {
        match plan {
            Plan::Write {
                device,
                property,
                value,
                ..
            } => {
                if !allowed {
                    continue;
                }
                match value.json(scope) {
                    Ok(value) => jobs.push(Job::Write {
                        device: device.clone(),
                        property: property.clone(),
                        value,
                    }),
                    Err(e) => jobs.push(Job::Event {
                        severity: Severity::Warning,
                        kind: "action_failed",
                        message: format!(
                            "rule {name}: cannot compute the value for {device}.{property}: {e}"
                        ),
                    }),
                }
            }
            Plan::Event { severity, message } => {
                let message = message
                    .render(scope)
                    .unwrap_or_else(|e| format!("rule {name} (message failed: {e})"));
                jobs.push(Job::Event {
                    severity: *severity,
                    kind,
                    message,
                });
            }
            Plan::Publish {
                topic,
                payload,
                retain,
            } => {
                if !allowed {
                    continue;
                }
                match payload.render(scope) {
                    Ok(payload) => jobs.push(Job::Publish {
                        topic: topic.clone(),
                        payload,
                        retain: *retain,
                    }),
                    Err(e) => jobs.push(Job::Event {
                        severity: Severity::Warning,
                        kind: "action_failed",
                        message: format!(
                            "rule {name}: cannot compute the payload for {topic}: {e}"
                        ),
                    }),
                }
            }
        }
    }
    if !allowed {
        jobs.push(Job::Event {
            severity: Severity::Warning,
            kind: "rate_limited",
            message: format!(
                "rule {name} {kind} more than {} times in {}; its writes and publishes were skipped",
                slot.source.rule.rate_limit.firings,
                humantime::format_duration(slot.source.rule.rate_limit.per.get())
            ),
        });
    }
    jobs
}

/// Takes a rate-limit token if the jobs act, and hands them to the worker.
fn dispatch(slot: &mut Slot, stats: &super::RuleStats, kind: &'static str, jobs: Vec<Job>) {
    let acts = jobs
        .iter()
        .any(|j| matches!(j, Job::Write { .. } | Job::Publish { .. }));
    if acts {
        slot.bucket.take(Instant::now());
    }
    let generation = slot.generation.fetch_add(1, Ordering::Relaxed) + 1;
    dispatch_to(slot, stats, (generation, kind, jobs));
}

/// Queues a firing's jobs for the rule's worker; a full queue drops its
/// oldest firing ([`JOB_QUEUE`]).
fn dispatch_to(slot: &Slot, stats: &super::RuleStats, firing: (u64, &'static str, Vec<Job>)) {
    if let Some((_, kind, dropped)) = slot.worker.push(firing) {
        stats
            .jobs_dropped
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
        tracing::warn!(
            "rule `{}`: its worker is {JOB_QUEUE} firings behind; dropped the oldest ({kind}, {} jobs)",
            slot.source.rule.name,
            dropped.len()
        );
    }
}

/// How often, at most, a failed rule write is retried while its firing
/// stands.
const WRITE_RETRIES: u32 = 5;

/// A rule's worker: runs its jobs in order.
#[allow(clippy::too_many_arguments)]
async fn run_jobs(
    rule: String,
    jobs: Arc<Jobs>,
    generation: Arc<AtomicU64>,
    control: Arc<Control>,
    journal: Arc<Journal>,
    outlet: Outlet,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
    let actor = Actor::Rule(rule.clone());
    let failed = |message: String| {
        let commands = commands.clone();
        let journal = journal.clone();
        let rule = rule.clone();
        async move {
            tracing::warn!("{message}");
            let event = json!({"rule": rule, "severity": Severity::Warning, "kind": "action_failed", "message": message});
            journal.record(Log::Events, &event).await;
            let _ = commands.send(Command::ActionFailed(rule, message)).await;
        }
    };
    while let Some((asked_at, _kind, batch)) = tokio::select! {
        job = jobs.pop() => job,
        () = shutdown.cancelled() => None,
    } {
        for job in batch {
            match job {
                Job::Event {
                    severity,
                    kind,
                    message,
                } => {
                    let event = json!({"rule": rule, "severity": severity, "kind": kind, "message": message});
                    journal.record(Log::Events, &event).await;
                }
                Job::Write {
                    device,
                    property,
                    value,
                } => {
                    let mut backoff =
                        Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
                    let mut tries = 0;
                    loop {
                        let result = control.write(&actor, &device, &property, &value).await;
                        let retry = matches!(
                            &result,
                            Err(WriteError::Driver(
                                DriverError::Unreachable(_) | DriverError::Timeout(_)
                            ))
                        );
                        match result {
                            Ok(_) => break,
                            Err(e)
                                if retry
                                    && tries < WRITE_RETRIES
                                    && generation.load(Ordering::Relaxed) == asked_at =>
                            {
                                tries += 1;
                                let delay = backoff.next_delay();
                                tracing::warn!(
                                    "rule `{rule}`: writing {device}.{property} failed ({e}); retry {tries} in {delay:.1?}"
                                );
                                tokio::select! {
                                    () = tokio::time::sleep(delay) => {}
                                    () = shutdown.cancelled() => return,
                                }
                                if generation.load(Ordering::Relaxed) != asked_at {
                                    break;
                                }
                            }
                            Err(e) => {
                                failed(format!("rule {rule}: writing {value} to {device}.{property} failed: {e}")).await;
                                break;
                            }
                        }
                    }
                }
                Job::Publish {
                    topic,
                    payload,
                    retain,
                } => {
                    if let Err(e) = publish(&outlet, &topic, payload, retain).await {
                        failed(format!("rule {rule}: publishing to {topic} failed: {e}")).await;
                    }
                }
            }
        }
    }
}

#[cfg(feature = "mqtt")]
async fn publish(
    outlet: &Outlet,
    topic: &str,
    payload: String,
    retain: bool,
) -> Result<(), String> {
    match outlet {
        Some(p) => p.publish(topic, payload.into_bytes(), retain).await,
        None => Err("the config has no [mqtt] section, so there is no broker".into()),
    }
}

#[cfg(not(feature = "mqtt"))]
async fn publish(_: &Outlet, _: &str, _: String, _: bool) -> Result<(), String> {
    Err("this build has no MQTT broker".into())
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Rule states waiting to be saved: the newest per rule, so the queue is
/// bounded by the number of rules. Full-queue policy: none is needed; a
/// newer state of a rule replaces its unsaved older one (only the newest is
/// ever restored).
#[derive(Debug, Default)]
pub(super) struct PendingStates {
    states: std::sync::Mutex<indexmap::IndexMap<String, Option<Vec<u8>>>>,
    ready: tokio::sync::Notify,
}

impl PendingStates {
    /// `state` is `rule`'s newest (`None`: forget it).
    pub(super) fn put(&self, rule: String, state: Option<Vec<u8>>) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        states.shift_remove(&rule);
        states.insert(rule, state);
        drop(states);
        self.ready.notify_one();
    }

    /// Everything waiting, oldest change first.
    pub(super) fn take(&self) -> Vec<(String, Option<Vec<u8>>)> {
        std::mem::take(
            &mut *self
                .states
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_iter()
        .collect()
    }
}

/// Saves rule states as they change, a batch at a time, retrying a failed
/// save; on shutdown, what is waiting is saved once more.
async fn save_states(
    store: Arc<dyn Store>,
    pending: Arc<PendingStates>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let stopping = tokio::select! {
            () = pending.ready.notified() => false,
            () = shutdown.cancelled() => true,
        };
        let latest = pending.take();
        if latest.is_empty() {
            if stopping {
                return;
            }
            continue;
        }
        let latest = Arc::new(latest);
        loop {
            let (store, batch) = (store.clone(), latest.clone());
            match crate::store::blocking::spawn(move || store.save_rule_states(&batch)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) if !shutdown.is_cancelled() => {
                    let delay = backoff.next_delay();
                    tracing::error!("cannot save rule states, will retry in {delay:.1?}: {e}");
                    tokio::time::sleep(delay).await;
                }
                Ok(Err(e)) => {
                    tracing::error!("stopping with rule states not saved: {e}");
                    break;
                }
                Err(e) => {
                    tracing::error!("rule state task failed: {e}");
                    break;
                }
            }
        }
        if stopping {
            return;
        }
    }
}
