//! The engine on paused tokio time: a real project loaded from YAML, a real
//! sled store, the real journal and write path; only the device is a
//! recording writer, and readings are fed as the store writer would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrite_models::Value;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::control::{Actor, Control, WriteError};
use crate::journal::{Journal, Retention};
use crate::live::{Sample, Update};
use crate::store::{Log, SledStore, Store};
use ferrite_core::driver::{BoxFuture, DeviceWriter, DriverError, WriteAudit, Written};

const MODEL: &str = r#"
kind: DeviceModel
name: boiler
properties:
  temperature: { type: float, access: read, modbus: { table: input, address: 0, format: i16, scale: 0.1 } }
  setpoint: { type: float, access: readwrite, min: 20, max: 90, modbus: { table: holding, address: 10, format: f32 } }
"#;

const DEVICE: &str = "kind: Device\nname: boiler-1\nmodel: boiler\nmodbus-tcp: { host: 127.0.0.1, port: 1, unit: 1 }\n";

/// Records writes; fails the next `fail` of them as unreachable.
#[derive(Default)]
struct Recorder {
    writes: Mutex<Vec<(String, Value)>>,
    fail: Mutex<u32>,
}

impl DeviceWriter for Recorder {
    fn write<'a>(
        &'a self,
        property: &'a str,
        value: Value,
        _: WriteAudit,
    ) -> BoxFuture<'a, Result<Written, DriverError>> {
        Box::pin(async move {
            let mut fail = self.fail.lock().expect("lock");
            if *fail > 0 {
                *fail -= 1;
                return Err(DriverError::Unreachable("unplugged".into()));
            }
            self.writes
                .lock()
                .expect("lock")
                .push((property.to_string(), value));
            Ok(Written::Confirmed)
        })
    }
}

struct Harness {
    _dir: Arc<tempfile::TempDir>,
    rules: Rules,
    feed: Arc<Feed>,
    device: Arc<Recorder>,
    control: Arc<Control>,
    journal: Arc<Journal>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The wall time harnesses start at.
const T0: i64 = 1_800_000_000_000_000;

async fn harness(rules: &str) -> Harness {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("data")).expect("store"));
    start_on(rules, dir, store, T0).await
}

async fn start_on(
    rules: &str,
    dir: Arc<tempfile::TempDir>,
    store: Arc<dyn Store>,
    wall0: i64,
) -> Harness {
    let root = dir.path();
    for sub in ["models", "devices", "rules"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    std::fs::write(
        root.join("ferrite.toml"),
        "[gateway]\nid = \"t\"\ndata_dir = \"data\"\n",
    )
    .expect("write");
    std::fs::write(root.join("models/boiler.yaml"), MODEL).expect("write");
    std::fs::write(root.join("devices/boiler-1.yaml"), DEVICE).expect("write");
    std::fs::write(root.join("rules/rules.yaml"), rules).expect("write");
    let report = ferrite_models::check(&root.join("ferrite.toml"));
    let shown: Vec<String> = report.diagnostics.iter().map(ToString::to_string).collect();
    assert!(report.is_ok(), "{shown:#?}");
    let project = Arc::new(report.project);
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let retention = Retention {
        max_entries: 1000,
        max_age: Duration::from_secs(86_400),
    };
    let journal = Journal::start(store.clone(), retention, &tasks, shutdown.clone());
    let device = Arc::new(Recorder::default());
    let writers: HashMap<String, Arc<dyn DeviceWriter>> = HashMap::from([(
        "boiler-1".to_string(),
        device.clone() as Arc<dyn DeviceWriter>,
    )]);
    let deps = Deps::standalone(
        (*project).clone(),
        store.clone(),
        writers,
        journal.clone(),
        Clock::starting_at(wall0),
    );
    let (feed, control) = (deps.feed.clone(), deps.control.clone());
    let sources = Source::all(&project);
    let rules = start(deps, sources, root.join("rules"), &tasks, shutdown.clone());
    Harness {
        _dir: dir,
        rules,
        feed,
        device,
        control,
        journal,
        store,
        shutdown,
        tasks,
    }
}

impl Harness {
    /// A REST client's write of the boiler's setpoint.
    async fn write_by_hand(
        &self,
        setpoint: f64,
    ) -> Result<(Value, ferrite_core::driver::Written), WriteError> {
        let actor = Actor::Api {
            token: None,
            peer: None,
        };
        self.control
            .write(&actor, "boiler-1", "setpoint", &json!(setpoint))
            .await
    }

    /// Feeds a temperature reading, as the store writer would.
    fn temperature(&self, t: f64) {
        self.feed.observe(&Update {
            device: 0,
            ts: 0,
            status: None,
            seen: true,
            samples: vec![(0, Sample::Good(Value::Float(t)))],
            stamps: Vec::new(),
            applied: None,
            audit: Vec::new(),
        });
    }

    fn writes(&self) -> Vec<(String, Value)> {
        self.device.writes.lock().expect("lock").clone()
    }

    fn state(&self, rule: &str) -> String {
        self.rules
            .get(rule)
            .map(|r| r.state.to_string())
            .unwrap_or_default()
    }

    async fn events(&self) -> Vec<serde_json::Value> {
        settle().await;
        self.journal
            .recent(Log::Events, u64::MAX, 100, |_| true)
            .await
            .expect("events")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Lets every task run what it can (paused time moves only a little).
async fn settle() {
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
    settle().await;
}

const OVERHEAT: &str = r#"
kind: Rule
name: overheat
when: 'devices["boiler-1"].temperature > 85'
for: 10s
clear_when: 'devices["boiler-1"].temperature < 80'
then:
  - write: { device: boiler-1, property: setpoint, value: "40.0" }
  - event: { severity: critical, message: 'boiler-1 at {devices["boiler-1"].temperature} °C' }
on_clear:
  - event: { message: "boiler-1 back to normal" }
"#;

#[tokio::test(start_paused = true)]
async fn a_rule_fires_after_its_hold_and_clears_with_hysteresis() {
    let h = harness(OVERHEAT).await;
    settle().await;
    assert_eq!(h.state("overheat"), "idle");
    h.temperature(90.0);
    settle().await;
    assert_eq!(h.state("overheat"), "pending");
    advance(Duration::from_millis(9_900)).await;
    assert!(h.writes().is_empty(), "fired before its `for:`");
    advance(Duration::from_millis(200)).await;
    assert_eq!(h.state("overheat"), "active");
    assert_eq!(h.writes(), [("setpoint".to_string(), Value::Float(40.0))]);
    let events = h.events().await;
    assert_eq!(events[0]["message"], "boiler-1 at 90.0 °C");
    assert_eq!(events[0]["severity"], "critical");
    assert_eq!(events[0]["kind"], "fired");

    // 83 °C: no longer over 85, but not under 80 either: stays active.
    h.temperature(83.0);
    settle().await;
    assert_eq!(h.state("overheat"), "active");
    h.temperature(79.0);
    settle().await;
    assert_eq!(h.state("overheat"), "idle");
    let events = h.events().await;
    assert_eq!(events[0]["message"], "boiler-1 back to normal");
    assert_eq!(events[0]["kind"], "cleared");
    assert_eq!(h.writes().len(), 1, "one firing, one write");
    let view = h.rules.get("overheat").expect("view");
    assert_eq!(view.firings, 1);
    assert!(view.last_fired.is_some() && view.last_cleared.is_some());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_dip_during_the_hold_starts_it_again() {
    let h = harness(OVERHEAT).await;
    h.temperature(90.0);
    advance(Duration::from_secs(8)).await;
    h.temperature(84.0);
    settle().await;
    assert_eq!(h.state("overheat"), "idle");
    h.temperature(91.0);
    advance(Duration::from_secs(8)).await;
    assert!(h.writes().is_empty(), "8 s since the dip is not 10 s");
    advance(Duration::from_secs(3)).await;
    assert_eq!(h.writes().len(), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_in_the_middle_of_a_hold_resumes_it() {
    let rule = OVERHEAT.replace("for: 10s", "for: 10m");
    let h = harness(&rule).await;
    h.temperature(90.0);
    advance(Duration::from_secs(6 * 60)).await;
    assert_eq!(h.state("overheat"), "pending");
    let (dir, store) = (h._dir.clone(), h.store.clone());
    h.stop().await;

    // The gateway comes back 30 s later (wall time), with the same store.
    let wall = T0 + 6 * 60_000_000 + 30_000_000;
    let h = start_on(&rule, dir, store, wall).await;
    settle().await;
    assert_eq!(h.state("overheat"), "pending", "the saved hold is back");
    h.temperature(90.0);
    advance(Duration::from_secs(3 * 60)).await;
    assert!(h.writes().is_empty(), "9.5 minutes held so far");
    advance(Duration::from_secs(31)).await;
    assert_eq!(h.writes().len(), 1, "fired once the 10 minutes were up");
    assert_eq!(h.state("overheat"), "active");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn rule_writes_stay_within_the_model_limits() {
    let rule = r#"
kind: Rule
name: follow
when: 'devices["boiler-1"].temperature > 50'
then:
  - write: { device: boiler-1, property: setpoint, value: 'devices["boiler-1"].temperature + 10.0' }
"#;
    let h = harness(rule).await;
    h.temperature(95.0);
    settle().await;
    assert!(
        h.writes().is_empty(),
        "105 is over the setpoint's max of 90"
    );
    let audit = h
        .journal
        .recent(Log::Audit, u64::MAX, 10, |_| true)
        .await
        .expect("audit");
    assert_eq!(audit[0]["result"], "out_of_range");
    assert_eq!(audit[0]["who"], "rule follow");
    let events = h.events().await;
    assert_eq!(events[0]["kind"], "action_failed");
    let view = h.rules.get("follow").expect("view");
    assert!(
        view.last_error
            .as_deref()
            .is_some_and(|e| e.contains("outside")),
        "{view:?}"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_skips_writes_of_a_flapping_rule() {
    let rule = r#"
kind: Rule
name: flap
when: 'devices["boiler-1"].temperature > 85'
rate_limit: { firings: 2, per: 1m }
then:
  - write: { device: boiler-1, property: setpoint, value: "40.0" }
"#;
    let h = harness(rule).await;
    for _ in 0..5 {
        h.temperature(90.0);
        settle().await;
        h.temperature(70.0);
        settle().await;
    }
    assert_eq!(h.writes().len(), 2, "2 firings a minute");
    let events = h.events().await;
    assert!(
        events.iter().any(|e| e["kind"] == "rate_limited"),
        "{events:#?}"
    );
    // A minute refills the bucket.
    advance(Duration::from_secs(60)).await;
    h.temperature(90.0);
    settle().await;
    assert_eq!(h.writes().len(), 3);
    assert_eq!(h.rules.get("flap").expect("view").firings, 6);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_held_property_refuses_manual_writes_while_the_rule_is_active() {
    let rule = OVERHEAT
        .replace("for: 10s\n", "")
        .replace(r#"value: "40.0" }"#, r#"value: "40.0", hold: true }"#);
    let h = harness(&rule).await;
    h.temperature(90.0);
    settle().await;
    assert_eq!(
        h.rules.get("overheat").expect("view").holds,
        ["boiler-1.setpoint"]
    );
    let by_hand = h.write_by_hand(70.0).await;
    assert!(
        matches!(by_hand, Err(WriteError::Held { ref rule, .. }) if rule == "overheat"),
        "{by_hand:?}"
    );
    settle().await;
    let audit = h
        .journal
        .recent(Log::Audit, u64::MAX, 1, |_| true)
        .await
        .expect("audit");
    assert_eq!(audit[0]["result"], "held_by_rule");
    h.temperature(70.0);
    settle().await;
    let by_hand = h.write_by_hand(70.0).await;
    assert!(by_hand.is_ok(), "released on clear: {by_hand:?}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_disabled_rule_does_not_fire_and_stays_disabled_after_a_restart() {
    let h = harness(&OVERHEAT.replace("for: 10s\n", "")).await;
    settle().await;
    let view = h
        .rules
        .set_enabled("overheat", false)
        .await
        .expect("disable");
    assert_eq!((view.state, view.enabled_by), ("disabled", "api"));
    h.temperature(90.0);
    settle().await;
    assert!(h.writes().is_empty());
    assert!(h.rules.set_enabled("nope", true).await.is_err());
    let (dir, store) = (h._dir.clone(), h.store.clone());
    h.stop().await;
    let h = start_on(
        &OVERHEAT.replace("for: 10s\n", ""),
        dir,
        store,
        T0 + 1_000_000,
    )
    .await;
    settle().await;
    assert_eq!(h.state("overheat"), "disabled");
    h.rules.set_enabled("overheat", true).await.expect("enable");
    h.temperature(90.0);
    settle().await;
    assert_eq!(h.writes().len(), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn every_evaluates_on_a_period_and_now_is_wall_time() {
    let rule = r#"
kind: Rule
name: tick
when: 'now > timestamp("2020-01-01T00:00:00Z")'
every: 5s
then:
  - event: { message: "it is {now}" }
"#;
    let h = harness(rule).await;
    settle().await;
    assert_eq!(h.state("tick"), "idle", "nothing read, nothing due yet");
    advance(Duration::from_secs(5)).await;
    assert_eq!(h.state("tick"), "active");
    let events = h.events().await;
    assert!(
        events[0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("it is 2027-01-15T08:00:05")),
        "{events:?}"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_retried_while_the_rule_stays_active() {
    let h = harness(&OVERHEAT.replace("for: 10s\n", "")).await;
    *h.device.fail.lock().expect("lock") = 2;
    h.temperature(90.0);
    advance(Duration::from_secs(5)).await;
    assert_eq!(h.writes().len(), 1, "third try went through");
    h.stop().await;
}

/// The rules of a rules file's text.
fn sources(file: &std::path::Path, text: &str) -> Vec<Source> {
    let mut loader = ferrite_models::project::Loader::default();
    loader.load_text(file, text, &[ferrite_models::project::DocKind::Rule]);
    Source::all(&loader.project)
}

#[tokio::test(start_paused = true)]
async fn a_replace_keeps_unchanged_rules_as_they_are_and_starts_changed_ones() {
    let rule = OVERHEAT.replace("for: 10s\n", "");
    let h = harness(&rule).await;
    let file = h.rules.dir().join("rules.yaml");
    h.temperature(90.0);
    settle().await;
    assert_eq!(h.state("overheat"), "active");
    assert_eq!(h.writes().len(), 1);

    // The same rule again: it stays active and does not fire again.
    h.rules.replace(sources(&file, &rule)).await;
    settle().await;
    assert_eq!(h.state("overheat"), "active");
    assert_eq!(h.writes().len(), 1, "an unchanged rule is left alone");

    // Renamed: the old one goes, the new one is evaluated at once.
    let renamed = rule.replace("name: overheat", "name: hot");
    h.rules.replace(sources(&file, &renamed)).await;
    assert!(h.rules.get("overheat").is_none());
    settle().await;
    assert_eq!(
        h.state("hot"),
        "active",
        "evaluated at once on the current readings"
    );
    h.stop().await;
}

#[test]
fn pending_rule_states_keep_only_the_newest_per_rule() {
    let pending = super::engine::PendingStates::default();
    for i in 0..1000u32 {
        pending.put("a".into(), Some(i.to_be_bytes().to_vec()));
    }
    pending.put("b".into(), None);
    pending.put("a".into(), Some(vec![7]));
    assert_eq!(
        pending.take(),
        vec![("b".to_string(), None), ("a".to_string(), Some(vec![7]))],
        "one entry per rule, the newest, in the order of their last change"
    );
    assert!(pending.take().is_empty());
}
