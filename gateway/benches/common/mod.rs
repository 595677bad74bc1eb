//! Helpers the load benchmarks share: settings from the environment, a
//! process's CPU and memory from /proc, and the gateway's /metrics.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub struct Proc {
    pub pid: u32,
}

impl Proc {
    /// utime + stime, in clock ticks (100 per second on Linux).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(11) + field(12)
    }

    /// Bytes the process had the kernel write to storage (`/proc/PID/io`).
    pub fn write_bytes(&self) -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.pid)).unwrap_or_default();
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn status_kib(&self, key: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    metrics_text(client, base)
        .await
        .lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of a metric family's labelled series (`name{...} value`).
pub async fn metric_sum(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    metrics_text(client, base)
        .await
        .lines()
        .filter(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The gateway's /metrics page; empty when it does not answer.
async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    let Ok(res) = client.get(format!("{base}/metrics")).send().await else {
        return String::new();
    };
    res.text().await.unwrap_or_default()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Starts `ferrite run` on the project in `root`, on a free port. Returns
/// the process, its /proc view and the API's base URL.
///
/// The gateway gets two malloc arenas, as shipped, unless `MALLOC_ARENA_MAX`
/// says otherwise. `FERRITE_BIN` runs another binary in its place: an older build to
/// compare with, or a script that starts ferrite under a profiler (then the
/// CPU and RSS figures are the script's, not the gateway's).
pub fn spawn_gateway(root: &Path) -> (Child, Proc, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let bin =
        std::env::var_os("FERRITE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ferrite").into());
    let child: Child = Command::new(bin)
        .args(["run", "--config"])
        .arg(root.join("ferrite.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        // As the systemd unit and the container image run it (docs/deploy.md,
        // "Memory"); set MALLOC_ARENA_MAX to measure another count.
        .env(
            "MALLOC_ARENA_MAX",
            std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("ferrite");
    let proc = Proc { pid: child.id() };
    (child, proc, format!("http://127.0.0.1:{port}"))
}

/// SIGTERM, then waits for the exit.
pub fn stop_gateway(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Waits until `devices` devices are online and samples flow (60 s at
/// most), then two seconds more to settle.
pub async fn wait_online(client: &reqwest::Client, base: &str, devices: usize) {
    let started = Instant::now();
    loop {
        let up = metric(client, base, "ferrite_samples_total").await;
        let online = match client.get(format!("{base}/api/v1/devices")).send().await {
            Ok(res) => res
                .json::<Vec<HashMap<String, serde_json::Value>>>()
                .await
                .map(|all| {
                    all.iter()
                        .filter(|d| d.get("status").and_then(|s| s.as_str()) == Some("online"))
                        .count()
                })
                .unwrap_or(0),
            Err(_) => 0,
        };
        if online == devices && up > 0.0 {
            println!(
                "all {devices} devices online after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            println!("only {online} of {devices} devices online after 60 s; measuring anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Prints the gateway's CPU (as a share of one core) and memory over a
/// window that started at `cpu0` ticks and lasted `elapsed` seconds.
pub fn print_usage(gw: &Proc, cpu0: u64, elapsed: f64) {
    let cpu_secs = (gw.cpu_ticks() - cpu0) as f64 / 100.0;
    println!(
        "gateway CPU             {:>9.1}% of one core",
        100.0 * cpu_secs / elapsed
    );
    println!(
        "gateway RSS             {:>9.1} MiB (peak {:.1} MiB)",
        gw.status_kib("VmRSS:") as f64 / 1024.0,
        gw.status_kib("VmHWM:") as f64 / 1024.0
    );
}

/// Appends `text` (TOML) to the project's `ferrite.toml`.
pub fn add_config(root: &Path, text: &str) {
    let path = root.join("ferrite.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, config + text).expect("config");
}

/// A temporary project folder with an empty config, for the bench to fill.
pub fn project_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for sub in ["models", "devices", "rules"] {
        std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
    }
    std::fs::write(
        dir.path().join("ferrite.toml"),
        "[gateway]\nid = \"bench\"\ndata_dir = \"data\"\n",
    )
    .expect("config");
    dir
}
