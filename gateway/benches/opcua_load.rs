//! Load benchmark: one OPC UA server with many changing nodes, subscribed to
//! by a `ferrite run` process. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo bench -p ferrite-gateway --bench opcua_load
//! # other sizes: NODES=2000 SAMPLING_MS=50 SECONDS=10 cargo bench ...
//! # the values stamped on arrival instead: TIMESTAMPS=gateway cargo bench ...
//! ```
//!
//! Setup: NODES Double variables on one simulated async-opcua server (in
//! this process; the gateway runs in its own, so the figures are the
//! gateway's alone), one device subscribing to all of them with a sampling
//! interval of SAMPLING_MS and a queue of 4. Every node changes every
//! SAMPLING_MS, so every value is a change that reaches the store.
//!
//! Figures: values/s ingested (the gateway's own counter), the gateway's
//! CPU and RSS, and the latency from a change on the server to the new
//! value in the REST API (a probe node, changed and polled for while the
//! load runs).

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrite_models::Value;
use ferrite_models::model::{UaDataType, ValueType};
use ferrite_sim::opcua_server::{UaNode, UaSim, UaSimOptions};
use opcua::types::NodeId;

mod common;
use common::{
    env, metric, percentile, print_usage, project_dir, spawn_gateway, stop_gateway, wait_online,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nodes = env("NODES", 10_000).max(1);
    let sampling_ms = env("SAMPLING_MS", 100).max(1);
    let seconds = env("SECONDS", 20);
    // Which clock stamps the values (`source`, `server` or `gateway`).
    let timestamps = std::env::var("TIMESTAMPS").unwrap_or_else(|_| "source".into());
    println!(
        "opcua_load: {nodes} nodes changing every {sampling_ms} ms, one subscription, {seconds} s window, timestamps: {timestamps}"
    );

    let dir = project_dir();
    let root = dir.path();
    let mut model = String::from("kind: DeviceModel\nname: m\nproperties:\n");
    let mut sim_nodes = Vec::with_capacity(nodes + 1);
    for n in 0..nodes {
        let _ = writeln!(
            model,
            "  v{n}: {{ type: float, opcua: {{ node: \"ns=2;i={}\" }} }}",
            n + 1
        );
        sim_nodes.push(UaNode {
            id: NodeId::new(2, u32::try_from(n + 1).unwrap_or(u32::MAX)),
            name: format!("v{n}"),
            datatype: UaDataType::Double,
            ty: ValueType::Float,
            writable: false,
            initial: Value::Float(0.0),
        });
    }
    let _ = writeln!(
        model,
        "  probe: {{ type: int, opcua: {{ node: \"ns=2;s=Probe\" }} }}"
    );
    let probe = NodeId::from_str("ns=2;s=Probe").expect("probe id");
    sim_nodes.push(UaNode {
        id: probe.clone(),
        name: "probe".into(),
        datatype: UaDataType::Int64,
        ty: ValueType::Int,
        writable: false,
        initial: Value::Int(0),
    });
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
    std::fs::write(
        root.join("devices/d.yaml"),
        format!(
            "kind: Device\nname: d\nmodel: m\ntimeout: 5s\nopcua: {{ endpoint: \"{}\", sampling: {sampling_ms}ms, queue: 4, timestamps: {timestamps} }}\n",
            sim.url()
        ),
    )
    .expect("device");

    // Every node changes once per sampling interval. The server reports
    // changes on its own 100 ms timer, which drifts against this one; a
    // queue of 4 per item keeps every change, so the offered load is one
    // value per node per interval.
    let ids: Vec<NodeId> = (0..nodes)
        .map(|n| NodeId::new(2, u32::try_from(n + 1).unwrap_or(u32::MAX)))
        .collect();
    // The animator runs while `run` is set and counts the rounds it set.
    let run = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let animated = sim.clone();
    let (running, counted) = (run.clone(), rounds.clone());
    let animator = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(sampling_ms as u64));
        for step in 0u64.. {
            tick.tick().await;
            if !running.load(Ordering::SeqCst) {
                continue;
            }
            let values: Vec<Value> = (0..ids.len())
                .map(|n| Value::Float((step * 7 + n as u64) as f64 * 0.5))
                .collect();
            match animated.set_many(&ids, &values) {
                Ok(()) => {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => println!("sim: {e}"),
            }
        }
    });

    let (mut child, gw, base) = spawn_gateway(root);
    let client = reqwest::Client::new();
    wait_online(&client, &base, 1).await;

    // The measured window; the probe measures change-to-REST latency.
    let samples0 = metric(&client, &base, "ferrite_samples_total").await;
    run.store(true, Ordering::SeqCst);
    let cpu0 = gw.cpu_ticks();
    let t0 = Instant::now();
    let mut latencies = Vec::new();
    let mut missed = 0;
    let probe_url = format!("{base}/api/v1/devices/d/properties/probe");
    let mut k = 0i64;
    while t0.elapsed() < Duration::from_secs(seconds as u64) {
        k += 1;
        let changed = Instant::now();
        sim.set(&probe, &Value::Int(k)).expect("probe");
        let mut seen = false;
        while changed.elapsed() < Duration::from_secs(5) {
            let value = match client.get(&probe_url).send().await {
                Ok(res) => {
                    res.json::<serde_json::Value>().await.unwrap_or_default()["value"].as_i64()
                }
                Err(_) => None,
            };
            if value == Some(k) {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if seen {
            latencies.push(changed.elapsed());
        } else {
            missed += 1;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let samples = metric(&client, &base, "ferrite_samples_total").await - samples0;
    latencies.sort_unstable();
    let offered = nodes as f64 * 1000.0 / sampling_ms as f64;

    println!("values/s offered        {offered:>10.0}");
    println!("values/s ingested       {:>10.0}", samples / elapsed);
    print_usage(&gw, cpu0, elapsed);

    // Every change the server made, against every value the gateway took,
    // once the gateway has caught up (its counter still for 2 s).
    run.store(false, Ordering::SeqCst);
    let set = rounds.load(Ordering::SeqCst) * nodes as u64 + k as u64;
    let mut last = -1.0;
    let mut taken = metric(&client, &base, "ferrite_samples_total").await;
    while taken != last {
        last = taken;
        tokio::time::sleep(Duration::from_secs(2)).await;
        taken = metric(&client, &base, "ferrite_samples_total").await;
    }
    let taken = (taken - samples0) as u64;
    println!(
        "values set / taken      {set} / {taken} after draining ({})",
        if taken >= set {
            "none lost".to_string()
        } else {
            format!("{} missing", set - taken)
        }
    );
    println!(
        "change -> REST latency  p50 {:.1} ms, p99 {:.1} ms ({} probes, {missed} not seen within 5 s)",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.len()
    );

    stop_gateway(&mut child);
    animator.abort();
    sim.stop().await;
}
