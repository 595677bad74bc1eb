//! Outage benchmark: OPC UA changes made while the link to the server is
//! silent, and how many of them the gateway stores once it is back. Prints
//! figures; asserts nothing.
//!
//! ```sh
//! cargo bench -p ferrite-gateway --bench opcua_cut
//! # other sizes: NODES=200 CUT_S=20 EVERY_MS=100 cargo bench ...
//! ```
//!
//! Setup: NODES Double variables on one simulated async-opcua server (in
//! this process), behind a TCP proxy (`ferrite_sim::link`); one device of a
//! `ferrite run` process subscribes to all of them through the proxy
//! (sampling 100 ms, a queue of 1000 per item, which the simulator
//! grants). Every EVERY_MS every node takes a new, distinct value. After
//! 3 s the proxy goes silent for CUT_S seconds (nothing passes either way,
//! new connections hang), then comes back; the changes go on for 3 s more.
//!
//! Figures: the changes made, and how many of each node's values are in its
//! history, for the whole run and for the outage alone; when the gateway saw
//! the link was down, and how long after the link came back it had stored
//! the last value of every node; the gateway's CPU and RSS.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrite_models::Value;
use ferrite_models::model::{UaDataType, ValueType};
use ferrite_sim::link::Proxy;
use ferrite_sim::opcua_server::{UaNode, UaSim, UaSimOptions};
use opcua::types::NodeId;

mod common;
use common::{env, print_usage, project_dir, spawn_gateway, stop_gateway, wait_online};

/// The value node `n` takes at step `step`: distinct for every change.
fn value_at(step: u64, n: usize) -> f64 {
    (step * 100_000 + n as u64) as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nodes = env("NODES", 100).max(1);
    let cut = Duration::from_secs(env("CUT_S", 10) as u64);
    let every = Duration::from_millis(env("EVERY_MS", 100).max(10) as u64);
    println!("opcua_cut: {nodes} nodes changing every {every:?}, the link silent for {cut:?}");

    let dir = project_dir();
    let root = dir.path();
    let mut model = String::from("kind: DeviceModel\nname: m\nproperties:\n");
    let ids: Vec<NodeId> = (0..nodes)
        .map(|n| NodeId::new(2, u32::try_from(n + 1).unwrap_or(u32::MAX)))
        .collect();
    let mut sim_nodes = Vec::with_capacity(nodes);
    for (n, id) in ids.iter().enumerate() {
        let _ = writeln!(
            model,
            "  v{n}: {{ type: float, opcua: {{ node: \"ns=2;i={}\" }} }}",
            n + 1
        );
        sim_nodes.push(UaNode {
            id: id.clone(),
            name: format!("v{n}"),
            datatype: UaDataType::Double,
            ty: ValueType::Float,
            writable: false,
            initial: Value::Float(-1.0),
        });
    }
    std::fs::write(root.join("models/m.yaml"), model).expect("model");
    let options = UaSimOptions {
        path: "/bench".into(),
        pki_dir: root.join("sim-pki"),
        users: Vec::new(),
        methods: Vec::new(),
    };
    let sim = Arc::new(
        UaSim::start("127.0.0.1:0".parse().expect("addr"), sim_nodes, options)
            .await
            .expect("sim"),
    );
    let proxy = Proxy::start(sim.addr).await.expect("proxy");
    std::fs::write(
        root.join("devices/d.yaml"),
        format!(
            "kind: Device\nname: d\nmodel: m\ntimeout: 500ms\nopcua: {{ endpoint: \"opc.tcp://{}/bench\", sampling: 100ms, queue: 1000 }}\n",
            proxy.addr
        ),
    )
    .expect("device");

    let (mut child, gw, base) = spawn_gateway(root);
    let client = reqwest::Client::new();
    wait_online(&client, &base, 1).await;

    // Changes: steps 1.., each a new value on every node; the steps made
    // while the link was silent are noted.
    let stalled = Arc::new(AtomicBool::new(false));
    let animated = sim.clone();
    let (silent, set_ids) = (stalled.clone(), ids.clone());
    let animator = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut during = Vec::new();
        let mut steps = 0u64;
        let stop = Instant::now() + Duration::from_secs(6) + cut;
        while Instant::now() < stop {
            tick.tick().await;
            steps += 1;
            let values: Vec<Value> = (0..set_ids.len())
                .map(|n| Value::Float(value_at(steps, n)))
                .collect();
            if let Err(e) = animated.set_many(&set_ids, &values) {
                println!("sim: {e}");
            }
            if silent.load(Ordering::SeqCst) {
                during.push(steps);
            }
        }
        (steps, during)
    });

    let cpu0 = gw.cpu_ticks();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stalled.store(true, Ordering::SeqCst);
    proxy.stall(true);
    let cut_at = Instant::now();
    let mut seen_down = None;
    while cut_at.elapsed() < cut {
        if seen_down.is_none() && status(&client, &base).await.as_deref() == Some("offline") {
            seen_down = Some(cut_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.stall(false);
    stalled.store(false, Ordering::SeqCst);
    let back_at = Instant::now();
    let (steps, during) = animator.await.expect("animator");

    // Caught up: every node's live value is its last one (60 s at most).
    let mut caught_up = None;
    while back_at.elapsed() < Duration::from_secs(60) {
        if all_at(&client, &base, nodes, steps).await {
            caught_up = Some(back_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    print_usage(&gw, cpu0, elapsed);

    // Every value set, against every node's history.
    let mut stored_all = 0usize;
    let mut stored_during = 0usize;
    for n in 0..nodes {
        let kept = history(&client, &base, n).await;
        stored_all += (1..=steps)
            .filter(|s| kept.contains(&value_at(*s, n).to_bits()))
            .count();
        stored_during += during
            .iter()
            .filter(|s| kept.contains(&value_at(**s, n).to_bits()))
            .count();
    }
    let made_all = steps as usize * nodes;
    let made_during = during.len() * nodes;
    println!(
        "link down noticed after  {}",
        seen_down.map_or("never (within the cut)".into(), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        ))
    );
    println!(
        "caught up after          {} from the link's return",
        caught_up.map_or("not within 60 s".into(), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        ))
    );
    println!(
        "changes during the cut   {made_during} made, {stored_during} stored ({})",
        lost(made_during, stored_during)
    );
    println!(
        "changes in the whole run {made_all} made, {stored_all} stored ({})",
        lost(made_all, stored_all)
    );

    stop_gateway(&mut child);
    drop(proxy);
    sim.stop().await;
}

fn lost(made: usize, stored: usize) -> String {
    if stored >= made {
        "none lost".into()
    } else {
        format!("{} lost", made - stored)
    }
}

/// The device's status.
async fn status(client: &reqwest::Client, base: &str) -> Option<String> {
    let device: serde_json::Value = client
        .get(format!("{base}/api/v1/devices/d"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    device["status"].as_str().map(String::from)
}

/// Whether every node shows its value of step `step`, good.
async fn all_at(client: &reqwest::Client, base: &str, nodes: usize, step: u64) -> bool {
    let Ok(res) = client.get(format!("{base}/api/v1/devices/d")).send().await else {
        return false;
    };
    let device: serde_json::Value = res.json().await.unwrap_or_default();
    (0..nodes).all(|n| {
        let p = &device["properties"][format!("v{n}")];
        p["value"].as_f64() == Some(value_at(step, n)) && p["quality"] == "good"
    })
}

/// The values (as bits) in node `n`'s history.
async fn history(client: &reqwest::Client, base: &str, n: usize) -> HashSet<u64> {
    let url = format!("{base}/api/v1/devices/d/properties/v{n}/history?limit=10000");
    let Ok(res) = client.get(url).send().await else {
        return HashSet::new();
    };
    let points: serde_json::Value = res.json().await.unwrap_or_default();
    points
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|p| p["value"].as_f64())
                .map(f64::to_bits)
                .collect()
        })
        .unwrap_or_default()
}
