//! `ferrite-cloud` as a fleet: three replica processes on one PostgreSQL
//! database, 200 simulated gateways (`ferrite_sim::fleet`, the real uplink)
//! sending counters, one replica `kill -9`ed and another restarted
//! mid-stream; then every gateway's history in PostgreSQL must be what it
//! sent, in order, each change once, with no backlog left. Then desired
//! state PUT on one replica is read back on another, and a rollout to a
//! group of 50 gateways is reported per gateway.
//!
//! And retention: `history_days` drops whole days of history (and older
//! readings in the default partition) at start.
//!
//! Brokers: `FERRITE_TEST_MOSQUITTO=/usr/sbin/mosquitto` (one Mosquitto), and
//! `FERRITE_TEST_NATS=/usr/sbin/nats-server` (a three-node NATS cluster with
//! JetStream and its MQTT listener, losing one node mid-stream). Each test
//! needs `FERRITE_TEST_POSTGRES` too; without them it says so and passes
//! (CI sets all three).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ServingProcess, free_port, signal, spawn_serving, wait_until};
use ferrite_sim::fleet::{Fleet, FleetOptions};
use serde_json::{Value as Json, json};

const GATEWAYS: usize = 200;

/// Gateways per NATS node (NATS 2.9's MQTT makes sessions slowly: about
/// ten a second on this machine's three nodes).
const NATS_GATEWAYS: usize = 10;

fn cloud_binary() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ferrite")).with_file_name("ferrite-cloud")
}

fn env_path(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A broker process (or several) of this test's own, stopped on drop.
struct Brokers {
    children: Vec<Option<Child>>,
    commands: Vec<Command>,
    /// One URL per node.
    urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Brokers {
    fn mosquitto(binary: &str) -> Brokers {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 100000\nlog_dest stderr\nlog_type error\n"
            ),
        )
        .expect("mosquitto.conf");
        let mut command = Command::new(binary);
        command
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Brokers::start(vec![command], vec![port], dir)
    }

    /// Three nats-server nodes in one cluster, JetStream and MQTT on each.
    fn nats(binary: &str) -> Brokers {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mqtt: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<String> = cluster
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let mut commands = Vec::new();
        for i in 0..3 {
            let conf = dir.path().join(format!("n{i}.conf"));
            let store = dir.path().join(format!("js{i}"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\n\
                     jetstream {{ store_dir: \"{}\", max_memory_store: 256MB, max_file_store: 2GB }}\n\
                     cluster {{ name: ferrite, listen: 127.0.0.1:{}, routes: [{}] }}\n\
                     mqtt {{ listen: 127.0.0.1:{} }}\n",
                    free_port(),
                    store.display(),
                    cluster[i],
                    routes.join(", "),
                    mqtt[i]
                ),
            )
            .expect("nats conf");
            let mut command = Command::new(binary);
            command
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.path().join(format!("n{i}.log"))).expect("log"),
                ));
            commands.push(command);
        }
        Brokers::start(commands, mqtt, dir)
    }

    fn start(mut commands: Vec<Command>, ports: Vec<u16>, dir: tempfile::TempDir) -> Brokers {
        let children = commands
            .iter_mut()
            .map(|c| Some(c.spawn().expect("the broker starts")))
            .collect();
        for port in &ports {
            let up = (0..500).any(|_| {
                std::thread::sleep(Duration::from_millis(20));
                std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok()
            });
            assert!(up, "the broker does not listen on {port}");
        }
        Brokers {
            children,
            commands,
            urls: ports
                .iter()
                .map(|p| format!("mqtt://127.0.0.1:{p}"))
                .collect(),
            _dir: dir,
        }
    }

    /// Keeps the brokers' folder (their logs) past the test.
    fn keep_logs(&mut self) -> PathBuf {
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"));
        dir.keep()
    }

    fn url(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self, i: usize) {
        self.kill(i);
        self.children[i] = Some(self.commands[i].spawn().expect("the broker restarts"));
    }
}

impl Drop for Brokers {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// Replica processes, killed when the test ends, passed or not.
struct Replicas(Vec<ServingProcess>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for r in &mut self.0 {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

/// A control plane replica on `database`, through `broker`.
async fn replica(database: &str, broker: &str, data: &Path) -> ServingProcess {
    spawn_serving(
        &cloud_binary().to_string_lossy(),
        &[
            "run".as_ref(),
            "--store".as_ref(),
            database.as_ref(),
            "--broker".as_ref(),
            broker.as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ],
        Stdio::null(),
    )
    .await
}

/// Per gateway, from PostgreSQL: changes, distinct values, the highest
/// value, distinct sequences, and changes whose value is not above the one
/// before it in the same property (a change's value is its sequence at the
/// gateway; the control plane numbers a batch's changes property by
/// property, so only the order within a property is the gateway's).
fn stored_per_gateway(database: &str) -> std::collections::BTreeMap<String, [u64; 5]> {
    let out = Command::new("psql")
        .args([
            database,
            "-At",
            "-F",
            " ",
            "-c",
            "SELECT gateway, count(*), count(DISTINCT num), max(num)::bigint, count(DISTINCT seq), \
             count(*) FILTER (WHERE num <= prev) FROM ( \
               SELECT s.gateway, h.seq, h.num, \
                 lag(h.num) OVER (PARTITION BY h.series_id ORDER BY h.seq) AS prev \
               FROM history h JOIN series s ON s.id = h.series_id) t GROUP BY 1",
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let gw = parts.next()?.to_string();
            let n: Vec<u64> = parts.filter_map(|p| p.parse().ok()).collect();
            Some((gw, n.try_into().ok()?))
        })
        .collect()
}

fn assert_every_change_once(fleet: &Fleet, database: &str) {
    let stored = stored_per_gateway(database);
    let mut wrong = Vec::new();
    for gw in &fleet.gateways {
        let written = gw.outbox.written();
        let got = stored.get(&gw.id).copied().unwrap_or_default();
        // Every change 1..=written, each once, each property in order.
        if got != [written, written, written, written, 0] {
            wrong.push(format!(
                "{}: wrote {written}, stored [changes, distinct values, max value, distinct sequences, out of order] {got:?}",
                gw.id
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} gateways differ:\n{}",
        wrong.len(),
        fleet.gateways.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
}

/// Writes for `seconds` while `chaos` runs, then waits for the fleet to
/// drain and checks PostgreSQL.
async fn run_fleet(
    fleet: &Fleet,
    database: &str,
    seconds: u64,
    chaos: impl std::future::Future<Output = ()>,
) {
    tokio::join!(fleet.write_for(20, Duration::from_secs(seconds)), chaos);
    let written = fleet.written();
    let drained = fleet.drained(Duration::from_secs(90)).await;
    assert!(
        drained,
        "{} of {written} changes still unacknowledged after 90 s",
        fleet.backlog(),
    );
    assert_every_change_once(fleet, database);
    eprintln!("fleet: {written} changes from {GATEWAYS} gateways, each stored once");
}

/// Desired state PUT on one replica is read back on another; a rollout to
/// 50 gateways (a label) is reported applied by each.
async fn fleet_operations(a: &ServingProcess, b: &ServingProcess, fleet: &Fleet) {
    let gw = &fleet.gateways[7].id;
    let (status, body) = a
        .api
        .put_raw(
            &format!("/api/v1/gateways/{gw}/devices/dev-1/desired"),
            json!({"sp": 42.5}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, twin) = b
        .api
        .get(&format!("/api/v1/gateways/{gw}/devices/dev-1"))
        .await;
    assert_eq!(status, 200, "{twin}");
    assert_eq!(
        twin["desired"]["sp"],
        json!(42.5),
        "read on another replica"
    );

    for (i, g) in fleet.gateways.iter().take(50).enumerate() {
        let replica = if i % 2 == 0 { a } else { b };
        let (status, body) = replica
            .api
            .put_raw(
                &format!("/api/v1/gateways/{}/labels", g.id),
                json!({"group": "north"}).to_string(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body, _) = a
        .api
        .call(
            reqwest::Method::POST,
            "/api/v1/rollouts",
            Some(
                json!({"selector": {"group": "north"},
                       "desired": {"device": "dev-2", "properties": {"mode": "eco"}}})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["gateways"], json!(50));
    let id = body["id"].as_u64().expect("rollout id");
    let last = std::sync::Mutex::new(Json::Null);
    let applied = wait_until(Duration::from_secs(30), || async {
        let (_, body) = b.api.get(&format!("/api/v1/rollouts/{id}")).await;
        let done = body["summary"]["applied"] == json!(50);
        // Kept for the failure message.
        *last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = body;
        done
    })
    .await;
    let last = last
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(applied, "the rollout, read on the other replica: {last}");
    let (_, page) = b.api.get("/api/v1/fleet?label=group=north&limit=20").await;
    assert_eq!(page["summary"]["gateways"], json!(50), "{page}");
    assert_eq!(page["gateways"].as_array().map(Vec::len), Some(20));
    assert!(page["next"].is_string(), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_200_gateways_and_lose_nothing_to_a_kill_and_a_restart() {
    let (Some(mosquitto), Some(database)) = (
        env_path("FERRITE_TEST_MOSQUITTO"),
        common::fresh_database(&format!("ferrite_fleet_{}", std::process::id())),
    ) else {
        eprintln!("skipped: needs FERRITE_TEST_MOSQUITTO and FERRITE_TEST_POSTGRES");
        return;
    };
    let broker = Brokers::mosquitto(&mosquitto);
    let data = tempfile::tempdir().expect("tempdir");
    let mut replicas = Replicas(Vec::new());
    for _ in 0..3 {
        replicas
            .0
            .push(replica(&database, broker.url(0), data.path()).await);
    }
    let mut options = FleetOptions::new(broker.url(0), GATEWAYS);
    options.prefix = "fleet".into();
    options.batch_interval = Duration::from_millis(250);
    options.ack_timeout = Duration::from_secs(3);
    let fleet = Fleet::start(options);
    let chaos = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        signal(&replicas.0[0].child, "KILL");
        tokio::time::sleep(Duration::from_secs(2)).await;
        signal(&replicas.0[1].child, "TERM");
        let _ = replicas.0[1].child.wait();
        replicas.0[1] = replica(&database, broker.url(0), data.path()).await;
    };
    run_fleet(&fleet, &database, 8, chaos).await;
    let _ = replicas.0[0].child.wait();
    for r in &replicas.0[1..] {
        let (_, body) = r.api.get("/api/v1/fleet?limit=1").await;
        assert_eq!(body["summary"]["gateways"], json!(GATEWAYS), "{body}");
        assert_eq!(body["summary"]["backlog"], json!(0), "{body}");
        // The killed replica is gone from the view; the restarted one is
        // there under its new id.
        let live = body["summary"]["replicas"].as_array().map(Vec::len);
        assert_eq!(live, Some(2), "{body}");
    }
    // Between them, the two live replicas own every gateway, once.
    let mut owned = 0;
    for r in &replicas.0[1..] {
        let text = reqwest::get(format!("{}/metrics", r.api.base))
            .await
            .expect("scrape")
            .text()
            .await
            .unwrap_or_default();
        owned += text
            .lines()
            .find_map(|l| l.strip_prefix("ferrite_cloud_gateways_owned "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
    }
    assert_eq!(
        owned, GATEWAYS,
        "every gateway owned by exactly one live replica"
    );
    fleet_operations(&replicas.0[1], &replicas.0[2], &fleet).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_cluster_losing_a_node_loses_nothing() {
    let (Some(nats), Some(database)) = (
        env_path("FERRITE_TEST_NATS"),
        common::fresh_database(&format!("ferrite_nats_{}", std::process::id())),
    ) else {
        eprintln!("skipped: needs FERRITE_TEST_NATS and FERRITE_TEST_POSTGRES");
        return;
    };
    let mut brokers = Brokers::nats(&nats);
    let data = tempfile::tempdir().expect("tempdir");
    // A replica on each node; gateways spread over the nodes.
    let mut replicas = Replicas(Vec::new());
    for i in 0..3 {
        replicas
            .0
            .push(replica(&database, brokers.url(i), data.path()).await);
    }
    let mut fleets = Vec::new();
    for i in 0..3 {
        let mut options = FleetOptions::new(brokers.url(i), NATS_GATEWAYS);
        options.prefix = format!("nats{i}");
        options.batch_interval = Duration::from_millis(250);
        options.ack_timeout = Duration::from_secs(3);
        fleets.push(Fleet::start(options));
    }
    // Node 2 goes down mid-stream (its gateways and replica cut off), and
    // comes back.
    let written = || fleets.iter().map(Fleet::written).sum::<u64>();
    let write = async {
        tokio::join!(
            fleets[0].write_for(20, Duration::from_secs(20)),
            fleets[1].write_for(20, Duration::from_secs(20)),
            fleets[2].write_for(20, Duration::from_secs(20)),
        );
    };
    // While node 2 is down, the gateways on the other nodes keep being
    // applied: the replica on node 2 stops saying it is alive, and the
    // others take its gateways; the test prints how many.
    let acked = |f: &Fleet| f.written() - f.backlog();
    let chaos = async {
        // Until every gateway is connected (NATS makes each MQTT session a
        // JetStream record, replicated three times: slow).
        let all = || {
            fleets
                .iter()
                .flat_map(|f| &f.gateways)
                .all(|g| g.status.snapshot().connected)
        };
        assert!(
            wait_until(Duration::from_secs(60), || async { all() }).await,
            "the fleet connects"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        brokers.kill(2);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let written = |fs: &[Fleet]| fs.iter().map(Fleet::written).sum::<u64>();
        let applied = |fs: &[Fleet]| fs.iter().map(acked).sum::<u64>();
        let (w0, a0) = (written(&fleets[..2]), applied(&fleets[..2]));
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (w, a) = (written(&fleets[..2]) - w0, applied(&fleets[..2]) - a0);
        // A figure, not a budget: NATS 2.9's MQTT is the bottleneck here.
        eprintln!(
            "nats: with node 2 down, gateways on nodes 0 and 1 had {a} of {w} new changes applied in 4 s"
        );
        brokers.restart(2);
    };
    tokio::join!(write, chaos);
    for fleet in &fleets {
        let drained = fleet.drained(Duration::from_secs(120)).await;
        let connected = fleet
            .gateways
            .iter()
            .filter(|g| g.status.snapshot().connected)
            .count();
        let errors: Vec<String> = fleet
            .gateways
            .iter()
            .filter_map(|g| g.status.snapshot().last_error)
            .take(3)
            .collect();
        assert!(
            drained,
            "{} changes of {} still unacknowledged after 120 s ({connected} connected; {errors:?}); logs in {}",
            fleet.backlog(),
            fleet.gateways[0].id,
            brokers.keep_logs().display()
        );
        assert_every_change_once(fleet, &database);
    }
    eprintln!(
        "nats: {} changes from {} gateways, each stored once",
        written(),
        3 * NATS_GATEWAYS
    );
    for fleet in fleets {
        fleet.stop().await;
    }
    drop(replicas);
}

fn psql(database: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([database, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_older_than_history_days_is_dropped_by_whole_days() {
    let Some(database) =
        common::fresh_database(&format!("ferrite_retention_{}", std::process::id()))
    else {
        eprintln!("skipped: needs FERRITE_TEST_POSTGRES");
        return;
    };
    let data = tempfile::tempdir().expect("tempdir");
    let mqtt = format!("127.0.0.1:{}", free_port());
    let run = |config: Option<PathBuf>| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "--store".into(),
            database.clone().into(),
            "--mqtt-listen".into(),
            mqtt.clone().into(),
        ];
        if let Some(config) = config {
            args.extend(["--config".into(), config.into()]);
        }
        args
    };
    // First start: the schema, today's partitions.
    let args = run(None);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let first = Replicas(vec![
        spawn_serving(&cloud_binary().to_string_lossy(), &args, Stdio::null()).await,
    ]);
    // An old day's partition with a reading in it, a reading older still
    // (in the default partition), and one of today.
    psql(
        &database,
        "CREATE TABLE history_p20200101 PARTITION OF history \
         FOR VALUES FROM ('2020-01-01') TO ('2020-01-02'); \
         INSERT INTO series (gateway, device, property) VALUES ('gw', 'd', 'p'); \
         INSERT INTO history VALUES \
           (1, 1, '2019-06-01T00:00:00Z', 1, '\\x00'), \
           (1, 2, '2020-01-01T12:00:00Z', 2, '\\x00'), \
           (1, 3, now(), 3, '\\x00')",
    );
    drop(first);
    // Again with history_days = 1: the old day goes whole, the older
    // reading with it; today's stays.
    let config = data.path().join("cloud.toml");
    std::fs::write(&config, "history_days = 1\n").expect("config");
    let args = run(Some(config));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let _second = Replicas(vec![
        spawn_serving(&cloud_binary().to_string_lossy(), &args, Stdio::null()).await,
    ]);
    assert_eq!(
        psql(
            &database,
            "SELECT count(*) FROM pg_class WHERE relname = 'history_p20200101'"
        ),
        "0",
        "the old day's partition is dropped"
    );
    assert_eq!(
        psql(&database, "SELECT string_agg(seq::text, ',') FROM history"),
        "3",
        "only today's reading is left"
    );
}
