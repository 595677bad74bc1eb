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
//! # without the REST writes (one every WRITE_EVERY_MS, 50 by default):
//! WRITE_EVERY_MS=0 cargo bench -p ferrite-gateway --bench modbus_load
//! # more of the gateway's config (`\n` for a new line):
//! CONFIG='[store]\ncache_mib = 2' cargo bench -p ferrite-gateway --bench modbus_load
//! ```
//!
//! Setup: DEVICES devices × REGISTERS u16 holding registers, polled every
//! second, behind simulated TCP gateways of UNITS_PER_PORT unit ids each (the
//! simulator runs in this process, the gateway in its own, so the figures
//! below are the gateway's alone). CHANGE_PERCENT of the registers change
//! every second, so that part of the load also reaches the store. REST
//! writes go to a setpoint at register 200, outside the polled block, so
//! each device costs two reads a second.
//!
//! `SHAPE=s3` is NG Gateway's S3 shape instead, the one issue 20's targets
//! name: 100 devices × 1000 Float32 points (`f32`, two registers each, 2000
//! registers: sixteen reads of 125 a second per device) behind 10 simulated
//! TCP gateways of 10 unit ids; REST writes go to the last point, which is
//! writable and never animated. `DEVICES`, `POINTS` and `UNITS_PER_PORT`
//! still override it.
//!
//! ```sh
//! SHAPE=s3 CHANGE_PERCENT=0 cargo bench -p ferrite-gateway --bench modbus_load
//! ```
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
    if let Ok(ports) = std::env::var(FLOOR_PORTS) {
        // This process is the floor's poller (see `measure_floor`).
        return poll_as_the_floor(&ports, Shape::from_env()).await;
    }
    let shape = Shape::from_env();
    let devices = shape.devices;
    let per_port = shape.units_per_port;
    let seconds = env("SECONDS", 20);
    let change_percent = env("CHANGE_PERCENT", 10).min(100);
    println!(
        "modbus_load: {devices} devices x {} {} at 1 s, {per_port} units per TCP port, \
         {change_percent}% changing each second, {seconds} s window",
        shape.points,
        shape.kind()
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
    let model = shape.model();
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

    // Values that change: CHANGE_PERCENT of each device's points, every second.
    let changing = (shape.points * change_percent / 100).min(shape.animated());
    let animate: Vec<(Arc<Endpoint>, u8)> = placement.clone();
    let animator = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for step in 0u16.. {
            tick.tick().await;
            for (endpoint, unit) in &animate {
                let mut units = endpoint.units();
                if let Some(u) = units.get_mut(unit) {
                    for point in 0..changing {
                        let value = step.wrapping_mul(7).wrapping_add(point as u16);
                        shape.put(&mut u.bank.holding, point, value);
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
    let requests0 = requests(&sims);
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
    // WRITE_EVERY_MS=0: no REST writes, to see what they cost.
    let write_every = env("WRITE_EVERY_MS", 50) as u64;
    while t0.elapsed() < Duration::from_secs(seconds as u64) {
        if write_every == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let device = (i as usize * 37) % devices;
        let url = format!(
            "{base}/api/v1/devices/d{device}/properties/{}",
            shape.setpoint()
        );
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
        tokio::time::sleep(Duration::from_millis(write_every)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let samples = metric(&client, &base, "ferrite_samples_total").await - samples0;
    let changes = metric(&client, &base, "ferrite_changes_stored_total").await - changes0;
    latencies.sort_unstable();

    let gateway_requests = (requests(&sims) - requests0) as f64 / elapsed;
    println!("points/s ingested       {:>10.0}", samples / elapsed);
    println!("Modbus requests/s       {gateway_requests:>10.0}");
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

    if std::env::var(FLOOR).map_or(true, |f| f != "0") {
        measure_floor(&sims, seconds as u64).await;
    }

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

/// The environment variable that makes this bench's process the floor's
/// poller: the simulated gateways' ports, comma-separated.
const FLOOR_PORTS: &str = "MODBUS_LOAD_FLOOR_PORTS";
/// How long the floor's poller runs, in seconds.
const FLOOR_SECONDS: &str = "MODBUS_LOAD_FLOOR_SECONDS";

/// `FLOOR=0` skips the floor; `FLOOR=link` makes its reads through the
/// gateway's own link task (the driver's queue, answer gate and timeouts)
/// instead of a bare tokio-modbus client.
const FLOOR: &str = "FLOOR";

fn floor_through_link() -> bool {
    std::env::var(FLOOR).is_ok_and(|f| f == "link")
}

/// Modbus requests the simulated gateways have answered so far.
fn requests(sims: &[TcpSim]) -> u64 {
    sims.iter().map(|sim| sim.endpoint.requests()).sum()
}

/// The floor under the gateway's CPU: the same reads of the same simulated
/// devices, made by the least a Rust program can do for them (tokio-modbus
/// clients on a tokio runtime of the gateway's size, one connection a
/// simulated gateway, a task a device decoding its points into a vector).
/// No store, no API, no live view: what polling alone costs over loopback
/// TCP, measured in a process of its own (this bench binary, started again),
/// so the gateway's figure above can be read against it.
async fn measure_floor(sims: &[TcpSim], seconds: u64) {
    let ports: Vec<String> = sims.iter().map(|sim| sim.addr.port().to_string()).collect();
    let warm_up = 3;
    let mut child = match std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .env(FLOOR_PORTS, ports.join(","))
            .env(FLOOR_SECONDS, (warm_up + seconds + 1).to_string())
            .spawn()
    }) {
        Ok(child) => child,
        Err(e) => {
            println!("floor                   not measured: {e}");
            return;
        }
    };
    let floor = common::Proc { pid: child.id() };
    tokio::time::sleep(Duration::from_secs(warm_up)).await;
    let requests0 = requests(sims);
    let cpu0 = floor.cpu_ticks();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (floor.cpu_ticks() - cpu0) as f64 / 100.0;
    println!(
        "floor: {:<16} {:>9.1}% of one core, {:.0} requests/s, RSS {:.1} MiB (the same reads, nothing else)",
        if floor_through_link() {
            "the link task"
        } else {
            "tokio-modbus"
        },
        100.0 * cpu / elapsed,
        (requests(sims) - requests0) as f64 / elapsed,
        floor.status_kib("VmRSS:") as f64 / 1024.0,
    );
    let _ = child.wait();
}

/// The floor's poller (this bench binary started by `measure_floor`): every
/// device of the shape polled once a second, its read plan the gateway's own
/// (`ferrite_drivers::modbus::plan`), for `FLOOR_SECONDS`.
async fn poll_as_the_floor(ports: &str, shape: Shape) {
    let seconds = env(FLOOR_SECONDS, 10) as u64;
    // The model the gateway was given, read as it reads it.
    let model: ferrite_models::model::DeviceModel =
        serde_yaml::from_str(&shape.model()).expect("the bench's own model");
    let indexed: Vec<(usize, &ferrite_models::model::ModbusBinding)> = model
        .properties
        .values()
        .filter_map(|property| property.modbus.as_ref())
        .enumerate()
        .collect();
    let blocks: Arc<Vec<(u16, u16)>> = Arc::new(
        ferrite_drivers::modbus::plan::plan(&indexed, &Default::default())
            .into_iter()
            .map(|block| (block.start, block.count))
            .collect(),
    );
    let ports: Vec<u16> = ports.split(',').filter_map(|p| p.parse().ok()).collect();
    let through_link = floor_through_link();
    let tasks = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut devices = Vec::new();
    for (p, port) in ports.iter().enumerate() {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
        let connection = if through_link {
            let key = LinkKey::Tcp {
                host: "127.0.0.1".into(),
                port: *port,
            };
            Connection::Link(link::spawn(key, &tasks, stop.clone()))
        } else {
            let Ok(context) = tokio_modbus::client::tcp::connect(address).await else {
                eprintln!("floor: cannot connect to {address}");
                return;
            };
            Connection::Bare(Arc::new(tokio::sync::Mutex::new(context)))
        };
        let first = p * shape.units_per_port;
        for d in first..(first + shape.units_per_port).min(shape.devices) {
            let unit = u8::try_from(d - first + 1).unwrap_or(1);
            let connection = connection.clone();
            let blocks = blocks.clone();
            let float32 = shape.float32;
            devices.push(tokio::spawn(async move {
                let mut values: Vec<f64> = Vec::with_capacity(shape.points);
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut failed = 0u64;
                loop {
                    tick.tick().await;
                    values.clear();
                    for &(start, count) in blocks.iter() {
                        match connection.read(unit, start, count).await {
                            Some(words) if float32 => {
                                values.extend(words.chunks_exact(2).map(|w| {
                                    f64::from(f32::from_bits(
                                        u32::from(w[0]) << 16 | u32::from(w[1]),
                                    ))
                                }))
                            }
                            Some(words) => values.extend(words.iter().map(|w| f64::from(*w))),
                            None => failed += 1,
                        }
                    }
                    if failed > 0 && failed.is_power_of_two() {
                        eprintln!("floor: device {d}: {failed} reads failed");
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    for device in devices {
        device.abort();
    }
    stop.cancel();
}

/// How the floor's poller reaches one simulated gateway.
#[derive(Clone)]
enum Connection {
    /// A bare tokio-modbus client, shared by the port's devices.
    Bare(Arc<tokio::sync::Mutex<tokio_modbus::client::Context>>),
    /// The gateway's link task.
    Link(link::LinkHandle),
}

impl Connection {
    /// Holding registers `start..start + count` of `unit`, or None.
    async fn read(&self, unit: u8, start: u16, count: u16) -> Option<Vec<u16>> {
        use tokio_modbus::prelude::*;
        match self {
            Connection::Bare(context) => {
                let mut context = context.lock().await;
                context.set_slave(Slave(unit));
                context
                    .read_holding_registers(start, count)
                    .await
                    .ok()?
                    .ok()
            }
            Connection::Link(handle) => {
                let read = Op::Read {
                    table: Table::Holding,
                    start,
                    count,
                };
                match handle.call(unit, read, Duration::from_secs(1)).await {
                    Ok(link::Reply::Registers(words)) => Some(words),
                    _ => None,
                }
            }
        }
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

/// What each simulated device holds, and the model the gateway polls it by.
#[derive(Clone, Copy)]
struct Shape {
    devices: usize,
    points: usize,
    units_per_port: usize,
    /// Each point a Float32 in two registers (else a u16 in one).
    float32: bool,
}

impl Shape {
    /// The default (1000 devices × 100 u16 registers, 20 units a port), or
    /// with `SHAPE=s3` NG Gateway's S3 (100 × 1000 Float32, 10 a port).
    fn from_env() -> Shape {
        let s3 = std::env::var("SHAPE").is_ok_and(|s| s.eq_ignore_ascii_case("s3"));
        let (devices, points, units_per_port) = if s3 { (100, 1000, 10) } else { (1000, 100, 20) };
        // The u16 points sit below the setpoint at 200; Float32 points may
        // fill the 16-bit address space.
        let max_points = if s3 { 32_000 } else { 125 };
        Shape {
            devices: env("DEVICES", devices).max(1),
            points: env("POINTS", env("REGISTERS", points)).clamp(1, max_points),
            units_per_port: env("UNITS_PER_PORT", units_per_port).clamp(1, 247),
            float32: s3,
        }
    }

    fn kind(&self) -> &'static str {
        if self.float32 {
            "Float32 points"
        } else {
            "u16 registers"
        }
    }

    /// The property REST writes go to: a register of its own at 200 for
    /// u16 points, the last point itself for Float32 ones (so the polls are
    /// the shape's reads and no more).
    fn setpoint(&self) -> String {
        if self.float32 {
            format!("p{}", self.points - 1)
        } else {
            "sp".into()
        }
    }

    /// Points the animator may change: all but a Float32 setpoint.
    fn animated(&self) -> usize {
        if self.float32 {
            self.points - 1
        } else {
            self.points
        }
    }

    fn model(&self) -> String {
        let mut model = String::from("kind: DeviceModel\nname: m\nproperties:\n");
        if self.float32 {
            for p in 0..self.points {
                let access = if p + 1 == self.points {
                    "access: readwrite, min: 0, max: 60000, "
                } else {
                    ""
                };
                let _ = writeln!(
                    model,
                    "  p{p}: {{ type: float, {access}modbus: {{ table: holding, address: {}, format: f32 }} }}",
                    p * 2
                );
            }
        } else {
            for r in 0..self.points {
                let _ = writeln!(
                    model,
                    "  r{r}: {{ type: int, modbus: {{ table: holding, address: {r} }} }}"
                );
            }
            let _ = writeln!(
                model,
                "  sp: {{ type: int, access: readwrite, min: 0, max: 60000, modbus: {{ table: holding, address: 200 }} }}"
            );
        }
        model
    }

    /// Sets point `point` of a device's holding registers to `value`.
    fn put(&self, holding: &mut std::collections::HashMap<u16, u16>, point: usize, value: u16) {
        if self.float32 {
            // ABCD: the Float32's high word first.
            let bits = (f32::from(value) * 0.5).to_bits();
            let address = (point * 2) as u16;
            holding.insert(address, (bits >> 16) as u16);
            holding.insert(address + 1, bits as u16);
        } else {
            holding.insert(point as u16, value);
        }
    }
}
