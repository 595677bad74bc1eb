//! The control plane under a fleet: `ferrite-cloud` processes (the release
//! build) fed by `ferrite_sim::fleet` (the real uplink, 1 s batches) from
//! this process. Prints figures; asserts only that every change arrived.
//!
//! ```sh
//! cargo build --release -p ferrite-sync --bin ferrite-cloud
//! FERRITE_BENCH_POSTGRES=postgres://ferrite:ferrite@127.0.0.1/postgres \
//! FERRITE_BENCH_MOSQUITTO=/usr/sbin/mosquitto \
//!   cargo bench -p ferrite-sim --bench fleet_ingest
//! # GATEWAYS=1000 RATE=200 SECONDS=20 BACKLOG_MINUTES=10 IDLE_SECONDS=10
//! # ONLY="PostgreSQL, 1" INGEST_ONLY=1 ...
//! ```
//!
//! Runs, each on a fresh store:
//! - ingest: GATEWAYS gateways writing RATE changes/s each for SECONDS;
//!   changes/s applied durably (from the replicas' own counters, between
//!   the first and the last second of writing), and the time to drain the
//!   rest. On sled (embedded broker), on PostgreSQL with one replica, and
//!   on PostgreSQL with two replicas on one Mosquitto.
//! - catch-up: every gateway holding BACKLOG_MINUTES of changes at 10/s
//!   when it connects; time until the store has them all.
//! - footprint: the control plane's RSS and CPU with the fleet connected
//!   and idle, then at 10 changes/s per gateway.
//!
//! The fleet, the control plane and PostgreSQL share this machine's cores,
//! as they would on one box; the fleet's own CPU is not the control
//! plane's, and is printed apart.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrite_sim::fleet::{Fleet, FleetOptions};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn cloud_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRITE_CLOUD") {
        return path.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("release/ferrite-cloud");
    assert!(
        path.exists(),
        "{} is missing: cargo build --release -p ferrite-sync --bin ferrite-cloud",
        path.display()
    );
    path
}

/// A control plane process, killed on drop.
struct Replica {
    child: Child,
    rest: String,
    _dir: tempfile::TempDir,
}

impl Replica {
    fn start(store: Option<&str>, broker: Option<&str>, mqtt_port: u16) -> Replica {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut command = Command::new(cloud_binary());
        command
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path())
            .env("FERRITE_LOG", "error,rumqttd=off")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(url) = store {
            command.args(["--store", url]);
        }
        match broker {
            Some(url) => command.args(["--broker", url]),
            None => command.args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")]),
        };
        let child = command.spawn().expect("ferrite-cloud starts");
        let replica = Replica {
            child,
            rest: format!("127.0.0.1:{port}"),
            _dir: dir,
        };
        let up = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::net::TcpStream::connect(&replica.rest).is_ok()
        });
        assert!(up, "ferrite-cloud does not serve");
        replica
    }

    /// Changes applied since it started (`/api/v1/stats`).
    fn points(&self) -> u64 {
        let mut stream = match std::net::TcpStream::connect(&self.rest) {
            Ok(s) => s,
            Err(_) => return 0,
        };
        use std::io::{Read, Write};
        let request = format!(
            "GET /api/v1/stats HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.rest
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return 0;
        }
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        let json = body.split("\r\n\r\n").nth(1).unwrap_or("");
        serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v["points"].as_u64())
            .unwrap_or(0)
    }

    /// (RSS in MiB, CPU seconds so far) from /proc.
    fn footprint(&self) -> (f64, f64) {
        let pid = self.child.id();
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        (rss_kib / 1024.0, cpu_seconds(pid))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn fresh_database(admin: &str, name: &str) -> String {
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        let ok = Command::new("psql")
            .args([admin, "-q", "-c", &sql])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "psql: {sql}");
    }
    let (base, _) = admin.rsplit_once('/').expect("a URL ending in /DATABASE");
    format!("{base}/{name}")
}

struct Setup {
    name: String,
    replicas: Vec<Replica>,
    broker: String,
    _mosquitto: Option<Child>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(m) = &mut self._mosquitto {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

fn mosquitto(binary: &str) -> (Child, String) {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("fleet-bench-mosquitto-{port}.conf"));
    std::fs::write(
        &dir,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 100000\nmax_inflight_messages 100\n"
        ),
    )
    .expect("mosquitto.conf");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    let up = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "mosquitto does not listen");
    (child, format!("mqtt://127.0.0.1:{port}"))
}

/// The stores to measure, as this run allows.
fn setups(tag: &str) -> Vec<Box<dyn Fn() -> Setup>> {
    let mut out: Vec<Box<dyn Fn() -> Setup>> = Vec::new();
    let tag = tag.to_string();
    out.push(Box::new(|| {
        let port = free_port();
        Setup {
            name: "sled, 1 replica, embedded broker".into(),
            replicas: vec![Replica::start(None, None, port)],
            broker: format!("mqtt://127.0.0.1:{port}"),
            _mosquitto: None,
        }
    }));
    let Ok(admin) = std::env::var("FERRITE_BENCH_POSTGRES") else {
        println!("(FERRITE_BENCH_POSTGRES unset: PostgreSQL runs skipped)");
        return out;
    };
    let (a, t) = (admin.clone(), tag.clone());
    out.push(Box::new(move || {
        let url = fresh_database(&a, &format!("fleet_bench_{t}_1"));
        let port = free_port();
        Setup {
            name: "PostgreSQL, 1 replica, embedded broker".into(),
            replicas: vec![Replica::start(Some(&url), None, port)],
            broker: format!("mqtt://127.0.0.1:{port}"),
            _mosquitto: None,
        }
    }));
    let Ok(mosquitto_binary) = std::env::var("FERRITE_BENCH_MOSQUITTO") else {
        println!("(FERRITE_BENCH_MOSQUITTO unset: the two-replica run skipped)");
        return out;
    };
    out.push(Box::new(move || {
        let url = fresh_database(&admin, &format!("fleet_bench_{tag}_2"));
        let (child, broker) = mosquitto(&mosquitto_binary);
        Setup {
            name: "PostgreSQL, 2 replicas, Mosquitto".into(),
            replicas: (0..2)
                .map(|_| Replica::start(Some(&url), Some(&broker), 0))
                .collect(),
            broker,
            _mosquitto: Some(child),
        }
    }));
    out
}

fn applied(setup: &Setup) -> u64 {
    setup.replicas.iter().map(Replica::points).sum()
}

fn fleet(setup: &Setup, gateways: usize, prefix: &str) -> Fleet {
    let mut options = FleetOptions::new(&setup.broker, gateways);
    options.prefix = prefix.to_string();
    options.ack_timeout = Duration::from_secs(30);
    Fleet::start(options)
}

async fn connected(fleet: &Fleet) -> Duration {
    let started = Instant::now();
    while fleet
        .gateways
        .iter()
        .any(|g| !g.status.snapshot().connected)
        && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

async fn ingest(setup: &Setup, gateways: usize, rate: usize, seconds: u64) {
    let fleet = fleet(setup, gateways, "ingest");
    let took = connected(&fleet).await;
    let me = std::process::id();
    let fleet_cpu = cpu_seconds(me);
    let writing = fleet.write_for(rate, Duration::from_secs(seconds));
    let measure = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (p0, t0) = (applied(setup), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds.saturating_sub(3).max(1))).await;
        (applied(setup) - p0) as f64 / t0.elapsed().as_secs_f64()
    };
    let ((), per_second) = tokio::join!(writing, measure);
    let backlog = fleet.backlog();
    let drain = Instant::now();
    let drained = fleet.drained(Duration::from_secs(300)).await;
    let written = fleet.written();
    println!(
        "  ingest: {gateways} gateways connected in {:.1} s; {:.0} changes/s applied durably \
         (written {} changes/s); {backlog} behind when writing stopped, drained in {:.1} s{}; \
         the fleet simulator used {:.1} CPU s",
        took.as_secs_f64(),
        per_second,
        gateways * rate,
        drain.elapsed().as_secs_f64(),
        if drained { "" } else { " (NOT DRAINED)" },
        cpu_seconds(me) - fleet_cpu
    );
    assert!(drained, "{backlog} of {written} never applied");
    fleet.stop().await;
}

async fn catch_up(setup: &Setup, gateways: usize, minutes: u64) {
    let per_gateway = (minutes * 60 * 10) as usize;
    let fleet = fleet(setup, gateways, "backlog");
    fleet.write(per_gateway);
    let started = Instant::now();
    let drained = fleet.drained(Duration::from_secs(900)).await;
    let total = fleet.written();
    println!(
        "  catch-up: {gateways} gateways × {minutes} min at 10 changes/s ({total} changes) stored in {:.1} s ({:.0} changes/s){}",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64(),
        if drained { "" } else { " (NOT DRAINED)" }
    );
    assert!(drained, "the backlog did not drain");
    fleet.stop().await;
}

async fn footprint(setup: &Setup, gateways: usize, seconds: u64) {
    let fleet = fleet(setup, gateways, "idle");
    connected(&fleet).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replica = &setup.replicas[0];
    let (_, cpu0) = replica.footprint();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (rss, cpu1) = replica.footprint();
    println!(
        "  footprint, {gateways} gateways connected, idle: RSS {rss:.1} MiB, CPU {:.1} %",
        100.0 * (cpu1 - cpu0) / seconds as f64
    );
    let (_, cpu0) = replica.footprint();
    fleet.write_for(10, Duration::from_secs(seconds)).await;
    let (rss, cpu1) = replica.footprint();
    println!(
        "  footprint, {gateways} gateways at 10 changes/s each: RSS {rss:.1} MiB, CPU {:.1} %",
        100.0 * (cpu1 - cpu0) / seconds as f64
    );
    assert!(fleet.drained(Duration::from_secs(120)).await);
    fleet.stop().await;
}

#[tokio::main]
async fn main() {
    let gateways = env("GATEWAYS", 1000) as usize;
    let rate = env("RATE", 200) as usize;
    let seconds = env("SECONDS", 20);
    let minutes = env("BACKLOG_MINUTES", 10);
    let idle = env("IDLE_SECONDS", 10);
    println!(
        "fleet_ingest: {gateways} simulated gateways (1 s batches), {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // ONLY=PostgreSQL runs only the setups whose name holds it;
    // INGEST_ONLY=1 skips catch-up and footprint.
    let only = std::env::var("ONLY").unwrap_or_default();
    let ingest_only = env("INGEST_ONLY", 0) == 1;
    let tag = std::process::id().to_string();
    for (i, make) in setups(&tag).into_iter().enumerate() {
        let setup = make();
        if !setup.name.contains(&only) {
            continue;
        }
        println!("{}:", setup.name);
        ingest(&setup, gateways, rate, seconds).await;
        if i < 2 && !ingest_only {
            drop(setup);
            let setup = make();
            catch_up(&setup, gateways, minutes).await;
            drop(setup);
            let setup = make();
            footprint(&setup, gateways, idle).await;
        }
    }
}
