//! Load benchmark for live configuration: a `ferrite run` process polling
//! many simulated Modbus devices while devices are changed, added and
//! removed through the REST API. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo bench -p ferrite-gateway --bench reconfig_load
//! # DEVICES=200 POLL_MS=200 CHANGES=40 cargo bench ...
//! ```
//!
//! Setup: DEVICES devices (UNITS_PER_PORT unit ids behind each simulated
//! TCP gateway, in this process), each with a counter register that moves
//! every 20 ms, polled every POLL_MS, so every poll stores a reading. Then
//! CHANGES changes, one every 250 ms, round-robin: the poll period of one
//! of the first VICTIMS devices toggles (PUT), a new device is added (PUT),
//! and an added one is removed again (DELETE).
//!
//! Figures: how long each change takes to answer (the whole new set checked
//! like `ferrite check`, its file written, the device restarted), p50, p99
//! and max; and, from the store's history, the largest gap between two
//! readings of every device no change touched: with no gap, it stays near
//! POLL_MS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_models::Value;
use ferrite_models::model::{Format, ModbusBinding, Table};
use ferrite_sim::bank::Endpoint;
use ferrite_sim::server::TcpSim;

mod common;
use common::{env, percentile, print_usage, project_dir, spawn_gateway, stop_gateway, wait_online};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let devices = env("DEVICES", 200);
    let poll_ms = env("POLL_MS", 200);
    let per_port = env("UNITS_PER_PORT", 20).clamp(1, 247);
    let changes = env("CHANGES", 40);
    let victims = env("VICTIMS", 10).clamp(1, devices);
    println!(
        "reconfig_load: {devices} devices polled every {poll_ms} ms, {per_port} units per TCP port, \
         {changes} changes through the API (one every 250 ms) to {victims} of them and to added ones"
    );
    let ports = devices.div_ceil(per_port) + 1;
    let mut sims = Vec::new();
    for _ in 0..ports {
        let sim = TcpSim::start("127.0.0.1:0".parse().expect("addr"), Endpoint::new(true))
            .await
            .expect("sim");
        sims.push(sim);
    }
    let dir = project_dir();
    let root = dir.path();
    std::fs::write(
        root.join("models/m.yaml"),
        "kind: DeviceModel\nname: m\nproperties:\n  n: { type: int, modbus: { table: holding, address: 0, format: u32 } }\n",
    )
    .expect("model");
    let device = |name: &str, d: usize, poll: usize| {
        let sim = &sims[d / per_port];
        let unit = d % per_port + 1;
        format!(
            "kind: Device\nname: {name}\nmodel: m\npoll: {poll}ms\nmodbus-tcp: {{ host: 127.0.0.1, port: {}, unit: {unit} }}\n",
            sim.addr.port()
        )
    };
    for d in 0..devices {
        std::fs::write(
            root.join(format!("devices/d{d}.yaml")),
            device(&format!("d{d}"), d, poll_ms),
        )
        .expect("device");
    }
    let endpoints: Vec<Arc<Endpoint>> = sims.iter().map(|s| s.endpoint.clone()).collect();
    for (p, endpoint) in endpoints.iter().enumerate() {
        for unit in 1..=per_port {
            if p * per_port + unit <= devices + per_port {
                endpoint.add_unit(u8::try_from(unit).unwrap_or(1));
            }
        }
    }
    let binding = ModbusBinding {
        table: Table::Holding,
        address: 0,
        format: Some(Format::U32),
        order: None,
        bit: None,
        scale: None,
        offset: None,
    };
    let counting = endpoints.clone();
    let counter = tokio::spawn(async move {
        for i in 0i64.. {
            let words = ferrite_models::codec::encode(&binding, &Value::Int(i)).expect("encode");
            for endpoint in &counting {
                for unit in endpoint.units().values_mut() {
                    unit.bank.put(&binding, &words);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let (mut child, gw, base) = spawn_gateway(root);
    let client = reqwest::Client::new();
    wait_online(&client, &base, devices).await;
    let cpu0 = gw.cpu_ticks();
    let started_wall = now_s();
    let started = Instant::now();

    let mut latencies = Vec::new();
    let mut refused = 0;
    let extra = devices; // added devices sit on the spare port's units
    let mut added: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    for k in 0..changes {
        tick.tick().await;
        let (method, name, body) = match k % 3 {
            0 => {
                let d = (k / 3) % victims;
                let poll = if (k / 3 / victims).is_multiple_of(2) {
                    poll_ms + 100
                } else {
                    poll_ms
                };
                (
                    reqwest::Method::PUT,
                    format!("d{d}"),
                    Some(device(&format!("d{d}"), d, poll)),
                )
            }
            1 => {
                let name = format!("x{k}");
                let body = device(&name, extra + (k % per_port), poll_ms);
                added.push(name.clone());
                (reqwest::Method::PUT, name, Some(body))
            }
            _ => match added.pop() {
                Some(name) => (reqwest::Method::DELETE, name, None),
                None => continue,
            },
        };
        let mut request = client.request(method, format!("{base}/api/v1/devices/{name}"));
        if let Some(body) = body {
            request = request.body(body);
        }
        let t = Instant::now();
        let ok = request.send().await.is_ok_and(|r| r.status().is_success());
        latencies.push(t.elapsed());
        if !ok {
            refused += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let elapsed = started.elapsed().as_secs_f64();
    print_usage(&gw, cpu0, elapsed);

    latencies.sort();
    println!(
        "changes answered        {:>9} ({refused} failed)",
        latencies.len()
    );
    for (label, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        println!(
            "change latency {label}      {:>9.1} ms",
            percentile(&latencies, p).as_secs_f64() * 1e3
        );
    }

    // The devices no change touched: their readings' largest gap.
    let mut gaps = Vec::new();
    let mut readings = 0;
    for d in victims..devices {
        let url = format!("{base}/api/v1/devices/d{d}/properties/n/history?limit=10000");
        let Ok(res) = client.get(url).send().await else {
            continue;
        };
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        let stamps: Vec<f64> = body
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|p| p["ts"].as_str())
                    .filter_map(ferrite_gateway::time::parse_rfc3339)
                    .map(|us| us as f64 / 1e6)
                    .filter(|t| *t >= started_wall)
                    .collect()
            })
            .unwrap_or_default();
        readings += stamps.len();
        let gap = stamps.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        gaps.push(Duration::from_secs_f64(gap));
    }
    gaps.sort();
    println!(
        "untouched devices       {:>9} ({readings} readings during the changes)",
        gaps.len()
    );
    for (label, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        println!(
            "largest gap {label}         {:>9.1} ms (poll period {poll_ms} ms)",
            percentile(&gaps, p).as_secs_f64() * 1e3
        );
    }
    counter.abort();
    stop_gateway(&mut child);
}

fn now_s() -> f64 {
    ferrite_gateway::time::now() as f64 / 1e6
}
