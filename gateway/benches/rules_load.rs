//! Rules benchmark. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo bench -p ferrite-gateway --bench rules_load
//! # other sizes: RULES=1000 POINTS_PER_S=100000 SECONDS=10 ROUNDS=200 cargo bench ...
//! ```
//!
//! 1. **Throughput.** RULES rules over 2 000 float properties (100 devices
//!    × 20), each rule reading two of them, so that every property is read
//!    by a rule (with 1000 rules, by exactly one). The real engine, journal
//!    and sled store run; readings are fed into the engine's feed as the
//!    store writer hands them over, POINTS_PER_S a second in 10 ms slices
//!    (one update per device per slice, as polls would give), for SECONDS.
//!    Figures: readings/s taken, evaluations/s (the engine evaluates a rule
//!    once per wake however many of its readings arrived), whether it kept
//!    up (backlog at the end), and this process's CPU.
//! 2. **Latency.** A gateway with a simulated Modbus boiler (ferrite-sim's
//!    TCP server, polled every 50 ms) and one rule without `for:` that
//!    writes the setpoint when the temperature passes 85. ROUNDS times: the
//!    temperature goes over, and the time from the poll request that saw it
//!    arriving at the device to the setpoint write arriving at the device is
//!    taken from the simulator's request log. So the figure excludes the
//!    poll period and includes the read's answer, the store writer's hand
//!    over, the rule and the write request.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferrite_core::driver::{BoxFuture, DeviceWriter, DriverError, WriteAudit, Written};
use ferrite_gateway::journal::{Journal, Retention};
use ferrite_gateway::live::{Sample, Update};
use ferrite_gateway::rules::{self, Clock, Deps, Source};
use ferrite_gateway::runtime::{Gateway, Options};
use ferrite_gateway::store::{SledStore, Store};
use ferrite_models::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod common;
use common::{add_config, env, percentile, project_dir};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    throughput().await;
    latency().await;
}

/// Writes nothing anywhere: the throughput part measures the engine.
struct Nowhere;

impl DeviceWriter for Nowhere {
    fn write<'a>(
        &'a self,
        _: &'a str,
        _: Value,
        _: WriteAudit,
    ) -> BoxFuture<'a, Result<Written, DriverError>> {
        Box::pin(async { Ok(Written::Confirmed) })
    }
}

const DEVICES: usize = 100;
const PROPERTIES: usize = 20;

async fn throughput() {
    let rules_n = env("RULES", 1000);
    let points_per_s = env("POINTS_PER_S", 100_000);
    let seconds = env("SECONDS", 10);
    println!(
        "rules_load (1): {rules_n} rules over {} properties, {points_per_s} readings/s for {seconds} s",
        DEVICES * PROPERTIES
    );
    let dir = project_dir();
    let root = dir.path();
    let mut model = String::from("kind: DeviceModel\nname: m\nproperties:\n");
    for p in 0..PROPERTIES {
        let _ = writeln!(
            model,
            "  p{p}: {{ type: float, access: readwrite, modbus: {{ table: holding, address: {}, format: f32 }} }}",
            p * 2
        );
    }
    std::fs::write(root.join("models/m.yaml"), model).expect("model");
    for d in 0..DEVICES {
        std::fs::write(
            root.join(format!("devices/d{d}.yaml")),
            format!("kind: Device\nname: d{d}\nmodel: m\nmodbus-tcp: {{ host: 127.0.0.1, port: 1, unit: 1 }}\n"),
        )
        .expect("device");
    }
    let mut rules_yaml = String::new();
    for r in 0..rules_n {
        let pair = (r / DEVICES) % (PROPERTIES / 2);
        let (d, p, q) = (r % DEVICES, pair * 2, pair * 2 + 1);
        let _ = write!(
            rules_yaml,
            "---\nkind: Rule\nname: r{r}\nwhen: 'devices[\"d{d}\"].p{p} > 90.0 && devices[\"d{d}\"].p{q} < 50.0'\nfor: 1s\nthen:\n  - event: {{ message: \"r{r} fired\" }}\n"
        );
    }
    std::fs::write(root.join("rules/all.yaml"), rules_yaml).expect("rules");
    let report = ferrite_models::check(&root.join("ferrite.toml"));
    assert!(report.is_ok(), "{:?}", report.diagnostics.first());
    let project = Arc::new(report.project);

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&root.join("data")).expect("store"));
    let retention = Retention {
        max_entries: 10_000,
        max_age: Duration::from_secs(3600),
    };
    let journal = Journal::start(store.clone(), retention, &tasks, shutdown.clone());
    let writers: HashMap<String, Arc<dyn DeviceWriter>> = project
        .devices
        .keys()
        .map(|d| (d.clone(), Arc::new(Nowhere) as Arc<dyn DeviceWriter>))
        .collect();
    let deps = Deps::standalone((*project).clone(), store, writers, journal, Clock::system());
    let feed = deps.feed.clone();
    let sources = Source::all(&project);
    let engine = rules::start(deps, sources, root.join("rules"), &tasks, shutdown.clone());
    let stats = engine.stats();

    // Every property, in turn, gets a new value; one Update per device per
    // slice, as a poll of that device would give.
    let slice = Duration::from_millis(10);
    let per_slice = (points_per_s / 100).max(1);
    let mut next = 0usize;
    let mut counter = 0u64;
    let start = Instant::now();
    let (e0, o0) = (
        stats.evaluations.load(Ordering::Relaxed),
        stats.observations.load(Ordering::Relaxed),
    );
    let me = common::Proc {
        pid: std::process::id(),
    };
    let cpu0 = me.cpu_ticks();
    let mut tick = tokio::time::interval(slice);
    let mut fed = 0usize;
    while start.elapsed() < Duration::from_secs(seconds as u64) {
        tick.tick().await;
        let mut by_device: HashMap<usize, Vec<(u16, Sample)>> = HashMap::new();
        for _ in 0..per_slice {
            let (d, p) = (next / PROPERTIES % DEVICES, next % PROPERTIES);
            next += 1;
            counter += 1;
            // Mostly in the middle, so that few rules fire.
            let v = 60.0 + (counter % 17) as f64;
            by_device
                .entry(d)
                .or_default()
                .push((p as u16, Sample::Good(Value::Float(v))));
        }
        for (device, samples) in by_device {
            fed += samples.len();
            feed.observe(&Update {
                device,
                ts: 0,
                status: None,
                seen: true,
                samples,
                stamps: Vec::new(),
                applied: None,
                audit: Vec::new(),
            });
        }
    }
    let fed_for = start.elapsed();
    let cpu = (me.cpu_ticks() - cpu0) as f64 / 100.0 / fed_for.as_secs_f64() * 100.0;
    // Let it drain.
    let drain = Instant::now();
    while stats.observations.load(Ordering::Relaxed) - o0 < fed as u64
        && drain.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained_in = drain.elapsed();
    let evaluations = stats.evaluations.load(Ordering::Relaxed) - e0;
    let observed = stats.observations.load(Ordering::Relaxed) - o0;
    let secs = fed_for.as_secs_f64();
    println!("  readings fed      {fed} ({:.0}/s)", fed as f64 / secs);
    println!(
        "  readings taken    {observed} (backlog drained {drained_in:.1?} after the feed stopped)"
    );
    println!(
        "  evaluations       {evaluations} ({:.0}/s)",
        evaluations as f64 / secs
    );
    println!(
        "  firings           {}",
        stats.firings.load(Ordering::Relaxed)
    );
    println!("  CPU (feeder, engine, store) {cpu:.0}% of one core");
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}

const BOILER: &str = include_str!("../../examples/demo/models/boiler.yaml");

async fn latency() {
    let rounds = env("ROUNDS", 200);
    println!(
        "rules_load (2): {rounds} rounds, Modbus boiler polled every 50 ms, one rule without `for:`"
    );
    let endpoint = ferrite_sim::bank::Endpoint::new(true);
    let sim = ferrite_sim::server::TcpSim::start("127.0.0.1:0".parse().expect("addr"), endpoint)
        .await
        .expect("sim");
    let dir = project_dir();
    let root = dir.path();
    add_config(root, "[api]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(root.join("models/boiler.yaml"), BOILER).expect("model");
    std::fs::write(
        root.join("devices/boiler-1.yaml"),
        format!(
            "kind: Device\nname: boiler-1\nmodel: boiler\npoll: 50ms\nmodbus-tcp: {{ host: 127.0.0.1, port: {}, unit: 1 }}\n",
            sim.addr.port()
        ),
    )
    .expect("device");
    std::fs::write(
        root.join("rules/r.yaml"),
        "kind: Rule\nname: r\nwhen: 'devices[\"boiler-1\"].temperature > 85'\nclear_when: 'devices[\"boiler-1\"].temperature < 80'\nrate_limit: { firings: 1000, per: 1s }\nthen:\n  - write: { device: boiler-1, property: setpoint, value: \"40.0\" }\n",
    )
    .expect("rule");
    let report = ferrite_models::check(&root.join("ferrite.toml"));
    assert!(report.is_ok(), "{:?}", report.diagnostics.first());
    let project = report.project;
    let temperature = project
        .property("boiler-1", "temperature")
        .and_then(|p| p.modbus.clone())
        .expect("binding");
    let set = |t: f64| {
        let encoded =
            ferrite_models::codec::encode(&temperature, &Value::Float(t)).expect("encode");
        sim.endpoint.add_unit(1);
        sim.endpoint
            .units()
            .get_mut(&1)
            .expect("unit")
            .bank
            .put(&temperature, &encoded);
    };
    set(60.0);
    let gw = Gateway::start(
        project,
        Options {
            listen: None,
            data_dir: None,
            snapshot: None,
        },
    )
    .await
    .expect("gateway");
    let rules = gw.state.rules.clone();
    let state = |name: &str| rules.get(name).map(|r| r.state).unwrap_or_default();
    let wait = |what: &'static str| {
        let rules = rules.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while rules.get("r").map(|r| r.state) != Some(what) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        sim.endpoint.clear_seen();
        let hot = Instant::now();
        set(90.0);
        wait("active").await;
        // The write's request, then its read-back follow; wait for the write.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            let seen = sim.endpoint.seen();
            let write = seen
                .iter()
                .find(|s| s.function == 16 && s.address == 10 && s.at >= hot);
            let read = seen
                .iter()
                .find(|s| s.function == 4 && s.address == 0 && s.at >= hot);
            if let (Some(w), Some(r)) = (write, read) {
                got = Some(w.at.duration_since(r.at));
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        if let Some(l) = got {
            latencies.push(l);
        }
        set(60.0);
        wait("idle").await;
        assert_eq!(state("r"), "idle");
    }
    latencies.sort();
    println!(
        "  value seen → write at the device: p50 {:.2?}  p99 {:.2?}  max {:.2?}  ({} of {rounds} rounds)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        latencies.len()
    );
    gw.stop().await;
}
