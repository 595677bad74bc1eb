//! The store on its own: what a commit costs per change, what a point costs
//! on disk and in memory, how fast a day of one series reads back, and what
//! the disk is asked to write. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo bench -p ferrite-gateway --bench store_load
//! # other sizes: SERIES=100000 CHANGES=1000000 BATCH=10000 cargo bench ...
//! ```
//!
//! 1. **Many series.** SERIES properties (NG Gateway's S3 shape: 100 000)
//!    get their first value, 1000 per commit: time, RSS, the heads' memory.
//! 2. **Steady.** 20 one-change commits a second for 5 s (STEADY_SECONDS):
//!    what the disk is
//!    asked to write when values hold still.
//! 3. **Changes.** CHANGES float changes spread over those series, BATCH per
//!    commit (each commit fsynced, as the writer does): CPU per change, and
//!    bytes written to disk per change (`/proc/self/io`).
//! 4. **A day of one series.** 86 400 float readings at 1 s (a sensor:
//!    slow drift, one decimal) committed 100 at a time, then the whole day
//!    read back (`history`, oldest first, and the newest 1000), median of
//!    20 queries; bytes per point in its blocks.
//!
//! With `LONG_SECONDS=N` it runs only a fifth phase instead:
//!
//! 5. **A long run, simulated.** N seconds of `modbus_load`'s 10% shape on
//!    simulated clocks, as fast as the store takes it: 1000 devices × 100
//!    properties (SERIES), each device's 10 changes a second grouped 32
//!    devices to a commit as the writer groups them (`GROUP`), and the retention pass
//!    every simulated minute with the defaults (`history_mib` 256, or
//!    `HISTORY_MIB`; 7 days, or `HISTORY_AGE_S` seconds, history left up to
//!    the gateway's slack past it, or `RETENTION_SLACK_S`). Every simulated minute: RSS, the store on disk
//!    (sled's file, the commit log and the block files), the history held (which `history_mib` limits) and the
//!    pass's time; at the end, the layout (blocks, log records, head points),
//!    the CPU and bytes written per change, then the store reopened (which
//!    reads the block files into their index) and its first pass timed. What the store alone holds
//!    after minutes of load, in a minute or two of wall time. With
//!    `OUTBOX_MIB=N` the store also keeps every change for a control plane
//!    that never acknowledges (`[cloud]`'s outbox, up to N MiB), so the
//!    reopen reads that much log back; with `DROP_CACHES=1` (root) the
//!    kernel's page cache is dropped before the reopen, as after a power cut.
//!    With `SAME_TEN=1` the same ten properties of each device change every
//!    second and the other ninety never do, as in `modbus_load`: their
//!    heads fill whole cuts of 120 points, the medium blocks that a long
//!    history merges into large ones (docs/gateway.md, "Memory").
//!    With `RARE_SERIES=N` N more series (devices `rare0`, ... of 100
//!    properties) each change once every `RARE_EVERY_S` simulated seconds
//!    (default 600), in a commit of their own each second: a plant's
//!    setpoints and states, whose heads hold a point or two when the pass
//!    cuts them, so their blocks are tiny (what the second merge rule is
//!    for: docs/gateway.md, "Memory").

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_gateway::store::{Change, End, SledStore, Stamped, Store};
use ferrite_models::Value;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_field(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn rss_mib() -> f64 {
    proc_field("/proc/self/status", "VmRSS:") as f64 / 1024.0
}

fn written() -> u64 {
    proc_field("/proc/self/io", "write_bytes:")
}

/// User + system CPU of this process, in seconds.
fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn change(device: usize, property: usize, ts: i64, value: f64) -> Change {
    Change {
        device: format!("dev{device}").into(),
        property: format!("r{property}").into(),
        at: Stamped {
            ts,
            value: Value::Float(value),
        },
    }
}

fn main() {
    // RUST_LOG=ferrite_gateway::store=debug shows each pass's merges and
    // compactions.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let long = env("LONG_SECONDS", 0);
    if long > 0 {
        let group = env("GROUP", ferrite_gateway::store::writer::MAX_BATCH).max(1);
        return long_run(env("SERIES", 100_000).max(1000), long as i64, group);
    }
    let series = env("SERIES", 100_000).max(1000);
    let changes = env("CHANGES", 1_000_000);
    let batch = env("BATCH", 10_000).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ferrite_models::config::StoreSection::default().cache_mib * 1024 * 1024;
    let store = SledStore::open_with_cache(dir.path(), cache).expect("store");
    println!("store_load: {series} series, {changes} changes in commits of {batch}");
    let rss0 = rss_mib();

    let t = Instant::now();
    for device in 0..series / 1000 {
        let first: Vec<Change> = (0..1000)
            .map(|p| change(device, p, 1_700_000_000_000_000, p as f64 / 10.0))
            .collect();
        store.commit(&first).expect("commit");
    }
    let layout = store.measure().expect("layout");
    println!(
        "first values            {:>8.2} s; RSS {:.1} MiB (+{:.1}); heads {} points, {:.1} MiB of chunks",
        t.elapsed().as_secs_f64(),
        rss_mib(),
        rss_mib() - rss0,
        layout.head_points,
        layout.head_bytes as f64 / 1048576.0
    );

    // Values steady: a trickle of small commits, as a gateway whose values
    // hold still makes (a REST write's read-back, the odd change).
    let steady = env("STEADY_SECONDS", 5).max(1);
    let written0 = written();
    for i in 0..steady as i64 * 20 {
        store
            .commit(&[change(0, 0, 1_700_000_000_000_000 + i, i as f64)])
            .expect("commit");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "steady, 20 commits/s    {:>8.0} KiB/s written to disk",
        (written() - written0) as f64 / 1024.0 / steady as f64
    );

    let (cpu0, written0, t) = (cpu(), written(), Instant::now());
    let mut done = 0;
    let mut step = 0i64;
    while done < changes {
        step += 1;
        let commit: Vec<Change> = (0..batch)
            .map(|i| {
                let n = (done + i) * 7919 % series;
                change(
                    n / 1000,
                    n % 1000,
                    1_700_000_000_000_000 + step * 1_000_000,
                    (step as f64 + n as f64) / 10.0,
                )
            })
            .collect();
        store.commit(&commit).expect("commit");
        done += batch;
    }
    let (elapsed, cpu_s) = (t.elapsed().as_secs_f64(), cpu() - cpu0);
    let layout = store.measure().expect("layout");
    println!(
        "changes                 {:>8.0} /s committed; {:.2} µs CPU and {:.1} bytes written per change; RSS {:.1} MiB",
        changes as f64 / elapsed,
        cpu_s * 1e6 / changes as f64,
        (written() - written0) as f64 / changes as f64,
        rss_mib()
    );
    println!(
        "layout                  {} blocks ({} points, {:.2} bytes/point), {} log records ({:.1} MiB), heads {} points",
        layout.blocks,
        layout.block_points,
        layout.block_bytes as f64 / layout.block_points.max(1) as f64,
        layout.records,
        layout.record_bytes as f64 / 1048576.0,
        layout.head_points
    );

    // A day of one sensor at 1 s.
    let ahead = store.measure().expect("layout");
    let day = 86_400i64;
    let start = 1_800_000_000_000_000i64;
    for chunk in 0..day / 100 {
        let commit: Vec<Change> = (0..100)
            .map(|i| {
                let s = chunk * 100 + i;
                let value = (200.0 + ((s as f64) / 600.0).sin() * 30.0).round() / 10.0;
                Change {
                    device: "sensor".into(),
                    property: "temperature".into(),
                    at: Stamped {
                        ts: start + s * 1_000_000,
                        value: Value::Float(value),
                    },
                }
            })
            .collect();
        store.commit(&commit).expect("commit");
    }
    let query = |limit: usize, end: End| {
        let mut times: Vec<Duration> = (0..20)
            .map(|_| {
                let t = Instant::now();
                let points = store
                    .history("sensor", "temperature", start, i64::MAX, limit, end)
                    .expect("history");
                assert_eq!(points.len(), limit.min(day as usize));
                t.elapsed()
            })
            .collect();
        times.sort_unstable();
        times[10].as_secs_f64() * 1000.0
    };
    let whole = query(100_000, End::Oldest);
    let newest = query(1000, End::Newest);
    let before = store.measure().expect("layout");
    println!(
        "a day at 1 s            history of 86 400 points {whole:.1} ms, newest 1000 {newest:.2} ms (median of 20)"
    );
    println!(
        "on disk                 the day: {:.2} bytes/point in its blocks; {:.1} MiB on disk for the whole store",
        (before.block_bytes - ahead.block_bytes) as f64
            / (before.block_points - ahead.block_points).max(1) as f64,
        store.size_on_disk().unwrap_or(0) as f64 / 1048576.0
    );
}

/// Phase 5: `seconds` of 10% changing over `series` (1000 devices' worth
/// of properties each) on simulated clocks.
fn long_run(series: usize, seconds: i64, group: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let defaults = ferrite_models::config::StoreSection::default();
    let cache = defaults.cache_mib * 1024 * 1024;
    let max_bytes = env("HISTORY_MIB", defaults.history_mib as usize) as u64 * 1024 * 1024;
    let max_age = match env("HISTORY_AGE_S", 0) {
        0 => i64::try_from(defaults.history_age.0.as_micros()).unwrap_or(i64::MAX),
        seconds => seconds as i64 * 1_000_000,
    };
    let outbox_mib = env("OUTBOX_MIB", 0) as u64;
    let open = || {
        if outbox_mib > 0 {
            SledStore::open_with(
                dir.path(),
                cache,
                ferrite_gateway::store::Backlogs::cloud(outbox_mib * 1024 * 1024),
            )
        } else {
            SledStore::open_with_cache(dir.path(), cache)
        }
    };
    let store = open().expect("store");
    // As the gateway's retention task leaves it, or RETENTION_SLACK_S.
    let slack = match env("RETENTION_SLACK_S", 0) {
        0 => ferrite_gateway::store::writer::retention_slack(Duration::from_micros(
            u64::try_from(max_age).unwrap_or(u64::MAX),
        )),
        seconds => seconds as i64 * 1_000_000,
    };
    let devices = series / 100;
    let same_ten = env("SAME_TEN", 0) == 1;
    let rare_devices = env("RARE_SERIES", 0) / 100;
    let rare_every = env("RARE_EVERY_S", 600).max(1);
    println!(
        "store_load, long run: {seconds} simulated s, {devices} devices × 100 properties, 10% changing ({}), {group} devices a commit, history_mib {}",
        if same_ten {
            "the same ten of each device every second"
        } else {
            "each property every ten seconds"
        },
        max_bytes / 1048576
    );
    if rare_devices > 0 {
        println!(
            "  and {rare_devices} devices × 100 properties each changing once every {rare_every} s"
        );
    }
    println!("   sim s    wall s   RSS MiB  disk MiB  held MiB  pass ms  index MiB   blocks");
    // The names as the gateway hands them on: one `Arc` per name.
    let device_names: Vec<Arc<str>> = (0..devices).map(|d| format!("dev{d}").into()).collect();
    let property_names: Vec<Arc<str>> = (0..100).map(|p| format!("r{p}").into()).collect();
    let rare_names: Vec<Arc<str>> = (0..rare_devices)
        .map(|d| format!("rare{d}").into())
        .collect();
    let (device_names, property_names) = (&device_names, &property_names);
    let mut rare_changes = 0usize;
    let start = 1_700_000_000_000_000i64;
    let (t, cpu0, written0) = (Instant::now(), cpu(), written());
    let mut pass_ms = 0.0;
    for second in 0..seconds {
        let ts = start + second * 1_000_000;
        for first in (0..devices).step_by(group) {
            let commit: Vec<Change> = (first..(first + group).min(devices))
                .flat_map(|device| {
                    // Ten of the device's hundred registers, a different
                    // ten each second: each changes every ten seconds (or,
                    // with SAME_TEN, the same ten every second).
                    (0..10).map(move |k| {
                        let turn = if same_ten {
                            0
                        } else {
                            second as usize + device
                        };
                        let property = (k * 10 + turn % 10) % 100;
                        Change {
                            device: device_names[device].clone(),
                            property: property_names[property].clone(),
                            at: Stamped {
                                ts,
                                value: Value::Float((second * 7 + k as i64) as f64 / 10.0),
                            },
                        }
                    })
                })
                .collect();
            store.commit(&commit).expect("commit");
        }
        // The rare series whose turn it is: series n changes at the
        // seconds where n ≡ second (mod RARE_EVERY_S).
        let turn = second as usize % rare_every;
        let rare: Vec<Change> = (turn..rare_devices * 100)
            .step_by(rare_every)
            .map(|n| Change {
                device: rare_names[n / 100].clone(),
                property: property_names[n % 100].clone(),
                at: Stamped {
                    ts,
                    value: Value::Float((second + n as i64) as f64 / 10.0),
                },
            })
            .collect();
        if !rare.is_empty() {
            rare_changes += rare.len();
            store.commit(&rare).expect("commit");
        }
        if (second + 1) % 60 == 0 {
            let pass = Instant::now();
            store
                .trim_within(ts - max_age, slack, max_bytes)
                .expect("trim");
            pass_ms = pass.elapsed().as_secs_f64() * 1000.0;
            let (index, blocks) = store
                .measure()
                .map_or((0, 0), |l| (l.block_index_bytes, l.blocks));
            println!(
                "{:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.0} {:>10.1} {:>8}",
                second + 1,
                t.elapsed().as_secs_f64(),
                rss_mib(),
                store.size_on_disk().unwrap_or(0) as f64 / 1048576.0,
                store.history_bytes().unwrap_or(0) as f64 / 1048576.0,
                pass_ms,
                index as f64 / 1048576.0,
                blocks
            );
        }
    }
    let changes = seconds as f64 * devices as f64 * 10.0 + rare_changes as f64;
    let (cpu_s, written_b) = (cpu() - cpu0, written() - written0);
    let layout = store.measure().expect("layout");
    println!(
        "layout                  {} blocks ({} points, {:.1} MiB; files {:.1} MiB, index {:.1} MiB in memory), {} log records ({:.1} MiB), heads {} points ({:.1} MiB)",
        layout.blocks,
        layout.block_points,
        layout.block_bytes as f64 / 1048576.0,
        layout.block_file_bytes as f64 / 1048576.0,
        layout.block_index_bytes as f64 / 1048576.0,
        layout.records,
        layout.record_bytes as f64 / 1048576.0,
        layout.head_points,
        layout.head_bytes as f64 / 1048576.0
    );
    println!(
        "long run                {:.2} µs CPU and {:.1} bytes written per change; last pass {pass_ms:.0} ms",
        cpu_s * 1e6 / changes,
        written_b as f64 / changes
    );
    // A restart: the block files are read into their index.
    drop(store);
    if env("DROP_CACHES", 0) == 1 {
        let synced = std::process::Command::new("sync").status();
        let dropped = std::fs::write("/proc/sys/vm/drop_caches", "3");
        if synced.is_err() || dropped.is_err() {
            println!("DROP_CACHES: could not drop the page cache (root only)");
        }
    }
    let reopened = Instant::now();
    let store = loop {
        // sled lets its file lock go a little after the drop.
        match open() {
            Ok(store) => break store,
            Err(e) if reopened.elapsed() < Duration::from_secs(10) => {
                eprintln!("reopen: {e}; again");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    let opened = reopened.elapsed();
    let pass = Instant::now();
    store
        .trim(start + seconds * 1_000_000 - max_age, max_bytes)
        .expect("trim");
    println!(
        "after a restart         opened in {:.2} s ({:.1} MiB of log); the first pass {:.2} s; {:.1} MiB held, RSS {:.1} MiB",
        opened.as_secs_f64(),
        layout.record_bytes as f64 / 1048576.0,
        pass.elapsed().as_secs_f64(),
        store.history_bytes().unwrap_or(0) as f64 / 1048576.0,
        rss_mib()
    );
}
