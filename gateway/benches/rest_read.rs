//! The REST read path against a bare axum handler: GET of one property with
//! CONNECTIONS concurrent keep-alive connections, the gateway's whole stack
//! (auth, metrics, limits, the live view) against axum serving the same JSON
//! from a constant, in the same run. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo bench -p ferrite-gateway --bench rest_read
//! # CONNECTIONS=32 SECONDS=10 cargo bench ...
//! ```
//!
//! The load generator (reqwest, in this process) shares the two cores with
//! the server it measures, the same way for both, so the ratio is the
//! figure to compare; the absolute rates are this box's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrite_sim::bank::Endpoint;
use ferrite_sim::server::TcpSim;

mod common;
use common::{env, percentile, project_dir, spawn_gateway, stop_gateway, wait_online};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let connections = env("CONNECTIONS", 32).max(1);
    let seconds = env("SECONDS", 10).max(1) as u64;
    println!("rest_read: GET one property, {connections} connections, {seconds} s per server");

    // One device of 10 registers, polled every second.
    let endpoint = Endpoint::new(true);
    endpoint.add_unit(1);
    let sim = TcpSim::start("127.0.0.1:0".parse().expect("addr"), endpoint)
        .await
        .expect("sim");
    let dir = project_dir();
    let root = dir.path();
    let mut model = String::from("kind: DeviceModel\nname: m\nproperties:\n");
    for r in 0..10 {
        model.push_str(&format!(
            "  r{r}: {{ type: int, unit: V, modbus: {{ table: holding, address: {r} }} }}\n"
        ));
    }
    std::fs::write(root.join("models/m.yaml"), model).expect("model");
    std::fs::write(
        root.join("devices/meter.yaml"),
        format!(
            "kind: Device\nname: meter\nmodel: m\npoll: 1s\nmodbus-tcp: {{ host: 127.0.0.1, port: {}, unit: 1 }}\n",
            sim.addr.port()
        ),
    )
    .expect("device");
    let (mut child, _gw, base) = spawn_gateway(root);
    let client = reqwest::Client::new();
    wait_online(&client, &base, 1).await;
    let url = format!("{base}/api/v1/devices/meter/properties/r3");
    let body = client
        .get(&url)
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body");

    // The bare handler: the same bytes, as JSON, from a constant.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let bare = format!("http://{}/x", listener.local_addr().expect("addr"));
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let app = axum::Router::new().route(
        "/x",
        axum::routing::get(move || {
            let json = json.clone();
            async move { axum::Json(json) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let gateway = drive(&url, connections, seconds).await;
    let axum_only = drive(&bare, connections, seconds).await;
    stop_gateway(&mut child);
    for (name, (rate, p50, p99)) in [
        ("gateway GET property", gateway),
        ("bare axum, same JSON", axum_only),
    ] {
        println!("{name:<24} {rate:>9.0} requests/s, p50 {p50:.2} ms, p99 {p99:.2} ms");
    }
    println!(
        "gateway / bare          {:>9.0}%",
        100.0 * gateway.0 / axum_only.0.max(1.0)
    );
}

/// `connections` tasks, each its own keep-alive connection, GET `url` in a
/// loop for `seconds`: requests/s, p50 and p99 in ms.
async fn drive(url: &str, connections: usize, seconds: u64) -> (f64, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (url, stop) = (url.to_string(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("client");
                let mut times = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match client.get(&url).send().await {
                        Ok(res) if res.status().is_success() => {
                            let _ = res.bytes().await;
                            times.push(t.elapsed());
                        }
                        _ => {}
                    }
                }
                times
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    (
        all.len() as f64 / elapsed,
        percentile(&all, 0.5).as_secs_f64() * 1000.0,
        percentile(&all, 0.99).as_secs_f64() * 1000.0,
    )
}
