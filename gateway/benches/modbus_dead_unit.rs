//! Fault isolation benchmark: one dead unit of twenty behind one Modbus TCP
//! gateway. Prints what share of their polls the nineteen others keep, how
//! many connections the gateway opened, and how often the dead unit was
//! asked; asserts nothing.
//!
//! ```sh
//! cargo bench -p ferrite-gateway --bench modbus_dead_unit
//! # other settings: UNITS=20 POLL_MS=1000 TIMEOUT_MS=1000 SECONDS=60 DEAD=silent|late
//! ```
//!
//! Setup: UNITS units behind one simulated TCP gateway (in this process; the
//! gateway runs in its own). Every unit is a device polling one register at
//! POLL_MS with a TIMEOUT_MS timeout. The last unit is dead: `silent` never
//! answers, `late` answers after twice the timeout (so its answers arrive
//! while the link waits for a neighbour's; the simulated gateway serves one
//! request at a time, as TCP-to-RTU gateways do).
//!
//! Two runs, the same but for the devices' `demote`: the default (10 s), and
//! `0s` (no demotion, the dead unit asked every poll). Each measures SECONDS
//! after the dead unit has gone offline.

use std::time::{Duration, Instant};

use ferrite_sim::bank::{Endpoint, Fault};
use ferrite_sim::server::TcpSim;

mod common;
use common::{env, print_usage, project_dir, spawn_gateway, stop_gateway, wait_online};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let units = env("UNITS", 20).clamp(2, 247);
    let poll_ms = env("POLL_MS", 1000).max(10);
    let timeout_ms = env("TIMEOUT_MS", 1000).max(10);
    let seconds = env("SECONDS", 60).max(5);
    let late = std::env::var("DEAD").is_ok_and(|d| d == "late");
    println!(
        "modbus_dead_unit: {units} units behind one TCP gateway, poll {poll_ms} ms, timeout \
         {timeout_ms} ms, unit {units} {}, {seconds} s window",
        if late {
            "answers after twice the timeout"
        } else {
            "never answers"
        }
    );
    for demote in ["10s", "0s"] {
        run(units, poll_ms, timeout_ms, seconds, late, demote).await;
    }
}

async fn run(
    units: usize,
    poll_ms: usize,
    timeout_ms: usize,
    seconds: usize,
    late: bool,
    demote: &str,
) {
    let endpoint = Endpoint::new(true);
    let sim = TcpSim::start("127.0.0.1:0".parse().expect("addr"), endpoint.clone())
        .await
        .expect("sim");
    let dead = u8::try_from(units).unwrap_or(u8::MAX);
    let dir = project_dir();
    let root = dir.path();
    std::fs::write(
        root.join("models/m.yaml"),
        "kind: DeviceModel\nname: m\nproperties:\n  v: { type: int, modbus: { table: holding, address: 0 } }\n",
    )
    .expect("model");
    for unit in 1..=dead {
        endpoint.add_unit(unit);
        std::fs::write(
            root.join(format!("devices/u{unit}.yaml")),
            format!(
                "kind: Device\nname: u{unit}\nmodel: m\npoll: {poll_ms}ms\ntimeout: {timeout_ms}ms\n\
                 modbus-tcp: {{ host: 127.0.0.1, port: {}, unit: {unit}, demote: {demote} }}\n",
                sim.addr.port()
            ),
        )
        .expect("device");
    }
    endpoint.set_fault(
        dead,
        if late {
            Fault::Late(Duration::from_millis(2 * timeout_ms as u64))
        } else {
            Fault::Silent
        },
    );

    let (mut child, gw, base) = spawn_gateway(root);
    let client = reqwest::Client::new();
    wait_online(&client, &base, units - 1).await;
    // Past the dead unit's first timeouts (and its demotion, if any).
    tokio::time::sleep(Duration::from_millis(4 * timeout_ms as u64)).await;

    endpoint.clear_seen();
    let connections0 = endpoint.connections();
    let cpu0 = gw.cpu_ticks();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds as u64)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let seen = endpoint.seen();
    let connections = endpoint.connections() - connections0;
    print!("demote: {demote:<4}  ");
    let mut counts = vec![0usize; usize::from(dead) + 1];
    for s in &seen {
        if let Some(c) = counts.get_mut(usize::from(s.unit)) {
            *c += 1;
        }
    }
    let due = elapsed * 1000.0 / poll_ms as f64;
    let mut kept: Vec<f64> = counts[1..usize::from(dead)]
        .iter()
        .map(|&n| 100.0 * n as f64 / due)
        .collect();
    kept.sort_by(f64::total_cmp);
    let (worst, median) = (kept[0], kept[kept.len() / 2]);
    println!(
        "the {} others kept {worst:.1}% of their polls at worst (median {median:.1}%; {due:.0} due each); \
         the dead unit was asked {} times; {connections} connections opened in the window",
        units - 1,
        counts[usize::from(dead)]
    );
    println!(
        "              target >= 99% of polls kept: {}",
        if worst >= 99.0 { "met" } else { "missed" }
    );
    print_usage(&gw, cpu0, elapsed);
    stop_gateway(&mut child);
    sim.stop().await;
}
