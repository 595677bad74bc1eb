//! Onboarding benchmark: from "I have an endpoint" to "values in the REST
//! API", the way docs/onboarding.md does it. Prints figures; asserts
//! nothing.
//!
//! ```sh
//! cargo bench -p ferrite-gateway --bench onboard
//! # other sizes: SIZES=500,10000,20000 cargo bench -p ferrite-gateway --bench onboard
//! ```
//!
//! For each size N: a simulated async-opcua server in this process with N
//! variables (the twelve scalar DataTypes in turn, every one with a value of
//! its own), and a `ferrite run` on an empty project, already up. Then,
//! timed from the first command:
//! 1. `ferrite discover opcua URL --name plant --out PROJECT` (browse, read
//!    every variable's attributes, write the model and the device);
//! 2. `ferrite check --config PROJECT/ferrite.toml`;
//! 3. the running gateway picks the files up live, connects and
//!    subscribes; the clock stops when `GET /api/v1/devices/plant` shows
//!    all N values good and equal to the server's.
//!
//! The simulator runs in the bench's process and the gateway in its own, on
//! the same two cores; the figures are wall time, which is the user's wait.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use ferrite_models::Value;
use ferrite_models::model::{UaDataType, ValueType};
use ferrite_sim::opcua_server::{UaNode, UaSim, UaSimOptions};
use opcua::types::NodeId;

mod common;
use common::{project_dir, spawn_gateway, stop_gateway};

const TYPES: [(UaDataType, ValueType); 12] = [
    (UaDataType::Boolean, ValueType::Bool),
    (UaDataType::SByte, ValueType::Int),
    (UaDataType::Byte, ValueType::Int),
    (UaDataType::Int16, ValueType::Int),
    (UaDataType::UInt16, ValueType::Int),
    (UaDataType::Int32, ValueType::Int),
    (UaDataType::UInt32, ValueType::Int),
    (UaDataType::Int64, ValueType::Int),
    (UaDataType::UInt64, ValueType::Int),
    (UaDataType::Float, ValueType::Float),
    (UaDataType::Double, ValueType::Float),
    (UaDataType::String, ValueType::String),
];

/// Node `n`'s value: in range for its type, different from its neighbours'.
fn value_of(n: usize, datatype: UaDataType) -> Value {
    let small = i64::try_from(n % 100).unwrap_or(0);
    match datatype {
        UaDataType::Boolean => Value::Bool(n.is_multiple_of(2)),
        UaDataType::SByte | UaDataType::Byte => Value::Int(small),
        UaDataType::Float => Value::Float(n as f64 * 0.5),
        UaDataType::Double => Value::Float(n as f64 * 0.25 + 0.125),
        UaDataType::String => Value::String(format!("tag {n}")),
        _ => Value::Int(i64::try_from(n).unwrap_or(0) * 3),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::var("SIZES")
        .unwrap_or_else(|_| "500,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("onboard: discover, check, added live, values in REST; sizes {sizes:?}");
    for size in sizes {
        run(size).await;
    }
}

async fn run(size: usize) {
    let dir = project_dir();
    let root = dir.path();
    let mut nodes = Vec::with_capacity(size);
    let mut expected = HashMap::with_capacity(size);
    for n in 0..size {
        let (datatype, ty) = TYPES[n % TYPES.len()];
        let name = format!("tag{n:05}");
        let initial = value_of(n, datatype);
        expected.insert(format!("Ferrite.{name}"), serde_json::json!(initial));
        nodes.push(UaNode {
            id: NodeId::new(2, u32::try_from(n + 1).unwrap_or(u32::MAX)),
            name,
            datatype,
            ty,
            writable: n.is_multiple_of(3),
            initial,
        });
    }
    let options = UaSimOptions {
        path: "/onboard".into(),
        pki_dir: root.join("sim-pki"),
        users: Vec::new(),
        methods: Vec::new(),
    };
    let sim = UaSim::start("127.0.0.1:0".parse().expect("addr"), nodes, options)
        .await
        .expect("sim");
    let (mut child, _gw, base) = spawn_gateway(root);
    let client = reqwest::Client::new();
    let up = Instant::now();
    while client
        .get(format!("{base}/api/v1/devices"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "the gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let bin = env!("CARGO_BIN_EXE_ferrite");
    let t0 = Instant::now();
    let discover = Command::new(bin)
        .args(["discover", "opcua", &sim.url(), "--name", "plant", "--out"])
        .arg(root)
        .arg("--pki")
        .arg(root.join("data/pki"))
        .output()
        .expect("ferrite discover");
    let discovered = t0.elapsed();
    let summary = String::from_utf8_lossy(&discover.stdout);
    if !discover.status.success() {
        println!(
            "discover failed: {summary}{}",
            String::from_utf8_lossy(&discover.stderr)
        );
        stop_gateway(&mut child);
        return;
    }
    let check = Command::new(bin)
        .args(["check", "--config"])
        .arg(root.join("ferrite.toml"))
        .output()
        .expect("ferrite check");
    let checked = t0.elapsed();
    let mut last = String::new();
    let values_at = loop {
        let shown = client
            .get(format!("{base}/api/v1/devices/plant"))
            .send()
            .await;
        if let Ok(res) = shown
            && let Ok(body) = res.json::<serde_json::Value>().await
        {
            let properties = body["properties"].as_object().cloned().unwrap_or_default();
            let right = expected
                .iter()
                .filter(|(name, want)| {
                    properties
                        .get(*name)
                        .is_some_and(|p| p["quality"] == "good" && p["value"] == **want)
                })
                .count();
            last = format!("{right} of {size} values right");
            if right == size {
                break Some(t0.elapsed());
            }
        }
        if t0.elapsed() > Duration::from_secs(180) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("--- {size} variables");
    println!(
        "discover                {:>9.2} s  ({})",
        discovered.as_secs_f64(),
        summary.lines().next().unwrap_or_default()
    );
    println!(
        "check                   {:>9.2} s  (exit {})",
        (checked - discovered).as_secs_f64(),
        check.status.code().unwrap_or(-1)
    );
    match values_at {
        Some(at) => println!(
            "endpoint to values      {:>9.2} s  (all {size} in GET /api/v1/devices/plant, equal to the server's)",
            at.as_secs_f64()
        ),
        None => println!("endpoint to values      not within 180 s: {last}"),
    }
    stop_gateway(&mut child);
    sim.stop().await;
}
