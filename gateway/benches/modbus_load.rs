//! Load benchmark: many simulated Modbus devices polled by a `ferrite run`
//! process, while REST writes go through. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo bench -p ferrite-gateway --bench modbus_load
//! # smaller or larger: DEVICES=200 REGISTERS=50 SECONDS=10 cargo bench ...
//! # with a [cloud] section (every stored change also goes to the outbox):
//! CLOUD=1 cargo bench -p ferrite-gateway --bench modbus_load
//! # with N dashboards open (clients of the live stream, /api/v1/stream):
//! STREAM_CLIENTS=5 cargo bench -p ferrite-gateway --bench modbus_load
//! # where the memory goes over a long run: every 60 s, RSS (anonymous and
//! # file-backed) and the store's layout from /api/v1/debug/memory
//! MEMORY_EVERY=60 SECONDS=600 cargo bench -p ferrite-gateway --bench modbus_load
//! # more of the gateway's config (`\n` for a new line):
//! CONFIG='[store]\ncache_mib = 2' cargo bench -p ferrite-gateway --bench modbus_load
//! ```
//!
//! Setup: DEVICES devices × REGISTERS u16 holding registers, polled every
//! second, behind simulated TCP gateways of UNITS_PER_PORT unit ids each (the
//! simulator runs in this process, the gateway in its own, so the figures
//! below are the gateway's alone). CHANGE_PERCENT of the registers change
//! every second, so that part of the load also reaches the store.
//!
//! Figures: points/s ingested (from the gateway's own counter), the gateway's
//! CPU (from /proc, as a percentage of one core) and RSS, REST write latency
//! p50/p99/max under that load (and the five slowest writes over 100 ms, with
//! when they came), and the requests/s one TCP connection carries.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_drivers::modbus::link::{self, LinkKey, Op};
use ferrite_models::model::Table;
use ferrite_sim::bank::Endpoint;
use ferrite_sim::server::TcpSim;

mod common;
use common::{
    add_config, env, metric, percentile, print_usage, project_dir, spawn_gateway, stop_gateway,
    wait_online,
};

/// A REST write slower than this is listed with its time in the window.
const SLOW_WRITE: Duration = Duration::from_millis(100);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let devices = env("DEVICES", 1000);
    let registers = env("REGISTERS", 100).clamp(1, 125);
    let per_port = env("UNITS_PER_PORT", 20).clamp(1, 247);
    let seconds = env("SECONDS", 20);
    let change_percent = env("CHANGE_PERCENT", 10).min(100);
    println!(
        "modbus_load: {devices} devices x {registers} registers at 1 s, {per_port} units per TCP port, \
         {change_percent}% changing each second, {seconds} s window"
    );

    // Simulated TCP gateways.
    let ports = devices.div_ceil(per_port);
    let mut sims = Vec::new();
    for _ in 0..ports {
        let endpoint = Endpoint::new(true);
        let sim = TcpSim::start("127.0.0.1:0".parse().expect("addr"), endpoint)
            .await
            .expect("sim");
        sims.push(sim);
    }
    let dir = project_dir();
    let root = dir.path();
    if let Ok(extra) = std::env::var("CONFIG") {
        // More of the gateway's config, e.g. CONFIG='[store]\ncache_mib = 2'.
        let extra = extra.replace("\\n", "\n");
        add_config(root, &format!("{extra}\n"));
        println!("with config: {}", extra.replace('\n', "; "));
    }
    if env("CLOUD", 0) == 1 {
        // An unreachable control plane: changes pile up in the outbox.
        add_config(
            root,
            "[cloud]\nbroker = \"mqtt://127.0.0.1:1\"\noutbox_mib = 4096\n",
        );
        println!("with [cloud]: every stored change also waits in the sync outbox");
    }
    let mut model = String::from("kind: DeviceModel\nname: m\nproperties:\n");
    for r in 0..registers {
        let _ = writeln!(
            model,
            "  r{r}: {{ type: int, modbus: {{ table: holding, address: {r} }} }}"
        );
    }
    let _ = writeln!(
        model,
        "  sp: {{ type: int, access: readwrite, min: 0, max: 60000, modbus: {{ table: holding, address: 200 }} }}"
    );
    std::fs::write(root.join("models/m.yaml"), model).expect("model");
    let mut placement = Vec::new();
    for d in 0..devices {
        let sim = &sims[d / per_port];
        let unit = u8::try_from(d % per_port + 1).unwrap_or(1);
        sim.endpoint.add_unit(unit);
        let file = format!(
            "kind: Device\nname: d{d}\nmodel: m\npoll: 1s\nmodbus-tcp: {{ host: 127.0.0.1, port: {}, unit: {unit} }}\n",
            sim.addr.port()
        );
        std::fs::write(root.join(format!("devices/d{d}.yaml")), file).expect("device");
        placement.push((sim.endpoint.clone(), unit));
    }

    // Values that change: CHANGE_PERCENT of each device's registers, every second.
    let changing = registers * change_percent / 100;
    let animate: Vec<(Arc<Endpoint>, u8)> = placement.clone();
    let animator = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for step in 0u16.. {
            tick.tick().await;
            for (endpoint, unit) in &animate {
                let mut units = endpoint.units();
                if let Some(u) = units.get_mut(unit) {
                    for r in 0..changing {
                        u.bank
                            .holding
                            .insert(r as u16, step.wrapping_mul(7).wrapping_add(r as u16));
                    }
                }
            }
        }
    });

    let (mut child, gw, base) = spawn_gateway(root);
    let client = reqwest::Client::new();
    wait_online(&client, &base, devices).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Live-stream clients (dashboards), reading for the whole window.
    let stream_clients = env("STREAM_CLIENTS", 0);
    let streams: Vec<_> = (0..stream_clients)
        .map(|_| tokio::spawn(read_stream(client.clone(), base.clone(), seconds as u64)))
        .collect();

    // Where the memory goes, every MEMORY_EVERY seconds of the window.
    let memory_every = env("MEMORY_EVERY", 0) as u64;
    let memory = (memory_every > 0).then(|| {
        tokio::spawn(report_memory(
            client.clone(),
            base.clone(),
            memory_every,
            seconds as u64,
        ))
    });

    // The measured window, with writes going through.
    let samples0 = metric(&client, &base, "ferrite_samples_total").await;
    let changes0 = metric(&client, &base, "ferrite_changes_stored_total").await;
    let cpu0 = gw.cpu_ticks();
    let written0 = gw.write_bytes();
    let t0 = Instant::now();
    let mut latencies = Vec::new();
    // Writes slower than SLOW_WRITE: when in the window, and how slow.
    let mut slow = Vec::new();
    let mut failures = 0;
    let mut i = 0u32;
    while t0.elapsed() < Duration::from_secs(seconds as u64) {
        let device = (i as usize * 37) % devices;
        let url = format!("{base}/api/v1/devices/d{device}/properties/sp");
        let body = serde_json::json!({ "value": i % 60000 });
        let sent = Instant::now();
        match client.put(url).json(&body).send().await {
            Ok(res) if res.status().is_success() => {
                let took = sent.elapsed();
                latencies.push(took);
                if took > SLOW_WRITE {
                    slow.push((sent.duration_since(t0).as_secs(), took));
                }
            }
            _ => failures += 1,
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let samples = metric(&client, &base, "ferrite_samples_total").await - samples0;
    let changes = metric(&client, &base, "ferrite_changes_stored_total").await - changes0;
    latencies.sort_unstable();

    println!("points/s ingested       {:>10.0}", samples / elapsed);
    println!("changes/s stored        {:>10.0}", changes / elapsed);
    print_usage(&gw, cpu0, elapsed);
    println!(
        "disk writes             {:>10.0} KiB/s (/proc/PID/io write_bytes)",
        (gw.write_bytes() - written0) as f64 / 1024.0 / elapsed
    );
    println!(
        "REST write latency      p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} writes, {failures} failed)",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        latencies.len()
    );
    if !slow.is_empty() {
        let count = slow.len();
        slow.sort_unstable_by_key(|(_, took)| std::cmp::Reverse(*took));
        let shown: Vec<String> = slow
            .iter()
            .take(5)
            .map(|(at, took)| format!("{} ms at {at} s", took.as_millis()))
            .collect();
        println!(
            "REST writes over {} ms  {} (worst: {})",
            SLOW_WRITE.as_millis(),
            count,
            shown.join(", ")
        );
    }

    for stream in streams {
        if let Ok((events, bytes, first)) = stream.await {
            println!(
                "live stream client      {:.1} events/s, {:.0} KiB/s (first event {} KiB)",
                events as f64 / elapsed,
                bytes as f64 / 1024.0 / elapsed,
                first / 1024
            );
        }
    }

    if let Some(memory) = memory {
        memory.abort();
    }
    stop_gateway(&mut child);
    animator.abort();

    // One TCP connection, driven as hard as it goes: the gateway's link task
    // with 32 callers against one simulated device.
    let endpoint = Endpoint::new(true);
    endpoint.add_unit(1);
    let sim = TcpSim::start("127.0.0.1:0".parse().expect("addr"), endpoint.clone())
        .await
        .expect("sim");
    let tasks = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = link::spawn(
        LinkKey::Tcp {
            host: "127.0.0.1".into(),
            port: sim.addr.port(),
        },
        &tasks,
        stop.clone(),
    );
    let read = Op::Read {
        table: Table::Holding,
        start: 0,
        count: 10,
    };
    let _ = handle.call(1, read.clone(), Duration::from_secs(1)).await;
    let window = Duration::from_secs(3);
    let t0 = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..32 {
        let handle = handle.clone();
        let read = read.clone();
        callers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while t0.elapsed() < window {
                if handle
                    .call(1, read.clone(), Duration::from_secs(1))
                    .await
                    .is_ok()
                {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for c in callers {
        total += c.await.unwrap_or(0);
    }
    println!(
        "one TCP connection      {:>10.0} requests/s (10 registers each)",
        total as f64 / t0.elapsed().as_secs_f64()
    );
    stop.cancel();
    sim.stop().await;
    for sim in sims {
        sim.stop().await;
    }
}

/// Prints a row of `/api/v1/debug/memory` every `every` seconds until
/// `seconds` have passed: RSS, its anonymous and file-backed parts, and what
/// the store holds in memory (heads, the log's index) and at rest.
async fn report_memory(client: reqwest::Client, base: String, every: u64, seconds: u64) {
    println!(
        "memory every {every} s: s, RSS, anonymous, file (MiB); heads: points, heap MiB; log: records, MiB; blocks"
    );
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    tick.tick().await;
    while t0.elapsed().as_secs() + every <= seconds {
        tick.tick().await;
        let Ok(res) = client
            .get(format!("{base}/api/v1/debug/memory"))
            .send()
            .await
        else {
            continue;
        };
        let Ok(view) = res.json::<serde_json::Value>().await else {
            continue;
        };
        let mib = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / 1048576.0;
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let store = &view["store"];
        println!(
            "memory {:>5} s  {:>6.1} {:>6.1} {:>5.1}  heads {:>8} {:>6.1}  log {:>7} {:>6.1}  blocks {:>8} {:>6.1} index {:>5.1}",
            t0.elapsed().as_secs(),
            mib(&view["rss_bytes"]),
            mib(&view["anonymous_bytes"]),
            mib(&view["file_bytes"]),
            n(&store["head_points"]),
            mib(&store["head_bytes"]),
            n(&store["log_records"]),
            mib(&store["log_bytes"]),
            n(&store["blocks"]),
            mib(&store["block_file_bytes"]),
            mib(&store["block_index_bytes"]),
        );
    }
}

/// Reads `/api/v1/stream` for `seconds`: events and bytes received, and the
/// size of the first event (every reading).
async fn read_stream(client: reqwest::Client, base: String, seconds: u64) -> (u64, u64, usize) {
    let (mut events, mut bytes, mut first) = (0u64, 0u64, 0usize);
    let Ok(mut res) = client.get(format!("{base}/api/v1/stream")).send().await else {
        return (0, 0, 0);
    };
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut pending = 0usize;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until.into(), res.chunk()).await {
        bytes += chunk.len() as u64;
        pending += chunk.len();
        let ends = chunk.windows(2).filter(|w| w == b"\n\n").count() as u64;
        if ends > 0 {
            if events == 0 {
                first = pending;
            }
            events += ends;
            pending = 0;
        }
    }
    (events, bytes, first)
}
