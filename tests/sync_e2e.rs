//! Cloud sync between real processes: `ferrite run` and `ferrite-cloud run`,
//! over MQTT, with a simulated Modbus device whose value rises every 20 ms
//! (so every change is distinct and in order).
//!
//! - outage: the control plane stops while changes keep coming, and
//!   restarts;
//! - crashes: `kill -9` of the gateway and of the control plane while
//!   batches flow (200 ms batches, so one is nearly always in flight);
//! - twin: desired state goes down, is written to the device through the
//!   model's checks, and is reported back; patches made while the gateway is
//!   down apply in order when it returns.
//!
//! Each ends by comparing the control plane's history with the gateway's
//! own: the same changes, in order, once.
//!
//! By default the control plane embeds its broker. With
//! `FERRITE_TEST_MOSQUITTO=/usr/sbin/mosquitto` the same tests run through
//! a Mosquitto per test instead (CI installs Debian's and does so). With
//! `FERRITE_TEST_POSTGRES=postgres://...` the control plane keeps its store
//! in a fresh PostgreSQL database per test instead of sled (CI does that
//! too).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{
    Api, Files, ForgetfulBroker, ServingProcess, counting_sim, free_port, signal, spawn_serving,
    wait_until,
};
use serde_json::{Value as Json, json};

/// The `ferrite-cloud` binary, built beside `ferrite` by `cargo test
/// --workspace` (ferrite-sync's own tests need it).
fn cloud_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_ferrite")).with_file_name("ferrite-cloud");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p ferrite-sync` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// The broker both ends use: the control plane's embedded one, or, with
/// `FERRITE_TEST_MOSQUITTO=/usr/sbin/mosquitto`, a Mosquitto of this test's
/// own (a control plane serves every gateway on its broker, so tests must
/// not share one).
enum Broker {
    Embedded(u16),
    /// Port, process, and the folder of its config (kept while it runs).
    Mosquitto(
        u16,
        std::process::Child,
        #[allow(dead_code)] tempfile::TempDir,
    ),
}

impl Broker {
    fn pick() -> Broker {
        let port = free_port();
        let Some(mosquitto) = std::env::var_os("FERRITE_TEST_MOSQUITTO").filter(|m| !m.is_empty())
        else {
            return Broker::Embedded(port);
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\n"
            ),
        )
        .expect("mosquitto.conf");
        let child = std::process::Command::new(&mosquitto)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", mosquitto.to_string_lossy()));
        // Up once it accepts connections.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker::Mosquitto(port, child, dir)
    }

    fn port(&self) -> u16 {
        match self {
            Broker::Embedded(port) | Broker::Mosquitto(port, ..) => *port,
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::Mosquitto(_, child, _) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One test's world: a gateway project with the counting device, a broker,
/// and the control plane's data folder.
struct World {
    files: Files,
    broker: Broker,
    cloud_data: tempfile::TempDir,
    /// The PostgreSQL store, if the run asks for one.
    database: Option<String>,
    gateway_id: String,
}

impl World {
    async fn new(
        name: &str,
    ) -> (
        World,
        ferrite_sim::server::TcpSim,
        tokio::task::JoinHandle<()>,
    ) {
        let files = Files::new();
        let (sim, counter) = counting_sim(&files).await;
        let broker = Broker::pick();
        let gateway_id = format!("{name}-{}", std::process::id());
        let world = World {
            files,
            broker,
            cloud_data: tempfile::tempdir().expect("tempdir"),
            database: common::fresh_database(&format!(
                "ferrite_{}_{}",
                name.replace('-', "_"),
                std::process::id()
            )),
            gateway_id,
        };
        world.route_gateway_through(&world.broker.url());
        (world, sim, counter)
    }

    /// Points the gateway's uplink at `broker` (the broker itself, or a
    /// proxy in front of it).
    fn route_gateway_through(&self, broker: &str) {
        self.files.write(
            "ferrite.toml",
            &format!(
                "[gateway]\nid = \"{}\"\ndata_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
                 [cloud]\nbroker = \"{broker}\"\nbatch_interval = \"200ms\"\nack_timeout = \"2s\"\n",
                self.gateway_id
            ),
        );
    }

    async fn gateway(&self) -> ServingProcess {
        let config = self.files.config();
        spawn_serving(
            env!("CARGO_BIN_EXE_ferrite"),
            &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
            Stdio::null(),
        )
        .await
    }

    async fn cloud(&self) -> ServingProcess {
        let binary = cloud_binary();
        let data = self.cloud_data.path().as_os_str().to_owned();
        let mut args = vec!["run".into(), "--data-dir".into(), data];
        if let Some(url) = &self.database {
            args.extend(["--store".into(), url.into()]);
        }
        match &self.broker {
            Broker::Mosquitto(..) => args.extend(["--broker".into(), self.broker.url().into()]),
            Broker::Embedded(port) => {
                args.extend(["--mqtt-listen".into(), format!("127.0.0.1:{port}").into()])
            }
        }
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        spawn_serving(&binary.to_string_lossy(), &args, Stdio::null()).await
    }

    fn twin_path(&self, device: &str) -> String {
        format!("/api/v1/gateways/{}/devices/{device}", self.gateway_id)
    }
}

fn kill(run: &mut ServingProcess) {
    signal(&run.child, "KILL");
    let _ = run.child.wait();
}

/// The gateway's history of d.n, oldest first.
async fn gateway_history(api: &Api) -> Vec<Json> {
    let (status, body) = api
        .get("/api/v1/devices/d/properties/n/history?since=2000-01-01T00:00:00Z&limit=10000")
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

/// The control plane's history of d.n.
async fn cloud_history(cloud: &Api, gateway: &str) -> Vec<Json> {
    let (status, body) = cloud
        .get(&format!(
            "/api/v1/gateways/{gateway}/devices/d/properties/n/history?limit=100000"
        ))
        .await;
    if status != 200 {
        return Vec::new();
    }
    body.as_array().cloned().unwrap_or_default()
}

/// Waits until the gateway has stored more than `changes` changes of d.n.
/// The counter and the polls run at 20 ms, but a loaded machine runs them
/// slower (CI's last step shares two cores with PostgreSQL, Mosquitto and
/// seven gateways): the tests wait for the changes they need to count,
/// not for a time.
async fn stored_more_than(gateway: &ServingProcess, changes: usize) {
    let stored = wait_until(Duration::from_secs(60), || async {
        gateway_history(&gateway.api).await.len() > changes
    })
    .await;
    assert!(
        stored,
        "the gateway stored {} changes of d.n in 60 s, wanted more than {changes}:\n{}",
        gateway_history(&gateway.api).await.len(),
        gateway.log_tail()
    );
}

/// Stops the counter, waits until the gateway's outbox is empty, and checks
/// that the control plane has exactly the gateway's history: same values and
/// times, same order, each once.
async fn assert_in_sync(
    gateway: &ServingProcess,
    cloud: &ServingProcess,
    id: &str,
    counter: tokio::task::JoinHandle<()>,
) -> usize {
    counter.abort();
    // Let the last polls land, then wait for the outbox to drain.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let drained = wait_until(Duration::from_secs(30), || async {
        let sync = gateway.api.get("/api/v1/sync").await.1;
        sync["backlog"] == json!(0) && sync["connected"] == json!(true)
    })
    .await;
    let sync = gateway.api.get("/api/v1/sync").await.1;
    assert!(
        drained,
        "the outbox did not drain: {sync}\ngateway log:\n{}\ncloud log:\n{}",
        gateway.log_tail(),
        cloud.log_tail()
    );
    let ours = gateway_history(&gateway.api).await;
    let theirs = cloud_history(&cloud.api, id).await;
    let strip = |e: &Json| json!({"value": e["value"], "ts": e["ts"]});
    let ours: Vec<Json> = ours.iter().map(strip).collect();
    let theirs_plain: Vec<Json> = theirs.iter().map(strip).collect();
    if ours != theirs_plain {
        let missing: Vec<&Json> = ours.iter().filter(|e| !theirs_plain.contains(e)).collect();
        let extra = theirs_plain.len() as i64 - ours.len() as i64;
        panic!(
            "the control plane differs from the gateway: {} vs {} changes; missing {:?} (first 5); {extra} more there\ncloud log:\n{}",
            ours.len(),
            theirs_plain.len(),
            &missing[..missing.len().min(5)],
            cloud.log_tail()
        );
    }
    // Each once, in the gateway's order: sequence numbers rise.
    let seqs: Vec<u64> = theirs.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq not rising: {seqs:?}"
    );
    eprintln!("{id}: {} changes in sync", ours.len());
    // The counter only rises: values in order.
    let values: Vec<i64> = ours.iter().filter_map(|e| e["value"].as_i64()).collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "values out of order"
    );
    ours.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_control_plane_loses_nothing() {
    let (world, sim, counter) = World::new("outage").await;
    let mut cloud = world.cloud().await;
    let gateway = world.gateway().await;
    let id = world.gateway_id.clone();
    // Syncing.
    let flowing = wait_until(Duration::from_secs(15), || async {
        cloud_history(&cloud.api, &id).await.len() >= 20
    })
    .await;
    assert!(flowing, "nothing synced:\n{}", gateway.log_tail());

    // The control plane goes away; changes keep coming and wait.
    signal(&cloud.child, "TERM");
    let _ = cloud.child.wait();
    let before = gateway.api.get("/api/v1/sync").await.1["backlog"]
        .as_u64()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = wait_until(Duration::from_secs(30), || async {
        gateway.api.get("/api/v1/sync").await.1["backlog"]
            .as_u64()
            .unwrap_or(0)
            > before + 50
    })
    .await;
    let during = gateway.api.get("/api/v1/sync").await.1;
    assert!(waiting, "changes should wait in the outbox: {during}");
    // Back: everything arrives.
    cloud = world.cloud().await;
    let stats_before = cloud.api.get("/api/v1/stats").await.1;
    stored_more_than(&gateway, 150).await;
    let synced = assert_in_sync(&gateway, &cloud, &id, counter).await;
    assert!(synced > 150, "only {synced} changes");
    let stats = cloud.api.get("/api/v1/stats").await.1;
    assert!(
        stats["points"].as_u64() > stats_before["points"].as_u64(),
        "{stats}"
    );
    assert!(stats["bytes_on_wire"].as_u64() > Some(0), "{stats}");
    let gateways = cloud.api.get("/api/v1/gateways").await.1;
    let me = gateways
        .as_array()
        .and_then(|g| g.iter().find(|g| g["id"] == json!(id)))
        .cloned()
        .unwrap_or_default();
    assert_eq!(me["connected"], json!(true), "{gateways}");
    assert_eq!(me["backlog"], json!(0), "{gateways}");
    let mut gateway = gateway;
    kill(&mut gateway);
    kill(&mut cloud);
    sim.stop().await;
}

/// A broker that loses the uplink's subscriptions but keeps its connection
/// (a NATS node's restart did): the uplink subscribes again with the Hello
/// that follows its timeout, on the same connection, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_forgets_the_uplinks_subscriptions_is_asked_again() {
    deaf_uplink(false).await;
}

/// A connection that stays deaf however often the uplink subscribes again
/// is dropped and made anew, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uplink_connection_that_stays_deaf_is_made_anew() {
    deaf_uplink(true).await;
}

async fn deaf_uplink(until_reconnect: bool) {
    let name = if until_reconnect {
        "deaf-for-good"
    } else {
        "deaf"
    };
    let (world, sim, counter) = World::new(name).await;
    let mut cloud = world.cloud().await;
    let forgetful = ForgetfulBroker::start(([127, 0, 0, 1], world.broker.port()).into()).await;
    world.route_gateway_through(&forgetful.url());
    let mut gateway = world.gateway().await;
    let id = world.gateway_id.clone();
    let flowing = wait_until(Duration::from_secs(15), || async {
        cloud_history(&cloud.api, &id).await.len() >= 20
    })
    .await;
    assert!(flowing, "nothing synced:\n{}", gateway.log_tail());

    // Counted from here: the proxy has sometimes seen a connection more
    // than the gateway's log shows (a first attempt that failed before its
    // CONNACK, which the uplink logs at debug level).
    let connections = forgetful.connections();
    forgetful.forget(until_reconnect);
    // With ack_timeout 2 s: a resubscription after ~2 s; a new connection
    // after three unanswered Hellos, ~6 s.
    let cured = wait_until(Duration::from_secs(30), || async { forgetful.hearing() }).await;
    assert!(
        cured,
        "the uplink stayed deaf ({} PUBLISHes dropped):\n{}",
        forgetful.dropped(),
        gateway.log_tail()
    );
    assert!(forgetful.dropped() > 0, "nothing was sent while deaf");
    if until_reconnect {
        assert!(
            forgetful.subscribes_while_deaf() >= 2,
            "it should subscribe again before giving up on the connection"
        );
        assert_eq!(
            forgetful.connections(),
            connections + 1,
            "{}",
            gateway.log_tail()
        );
    } else {
        assert_eq!(forgetful.subscribes_while_deaf(), 1);
        assert_eq!(
            forgetful.connections(),
            connections,
            "{}",
            gateway.log_tail()
        );
    }
    stored_more_than(&gateway, 100).await;
    let synced = assert_in_sync(&gateway, &cloud, &id, counter).await;
    assert!(synced > 100, "only {synced} changes");
    kill(&mut gateway);
    kill(&mut cloud);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_either_end_loses_nothing_and_duplicates_nothing() {
    let (world, sim, counter) = World::new("crash").await;
    let mut cloud = world.cloud().await;
    let mut gateway = world.gateway().await;
    let id = world.gateway_id.clone();
    for round in 0..2u64 {
        // Let batches flow, then kill the gateway mid-send.
        let target = 20 + round * 60;
        let flowing = wait_until(Duration::from_secs(15), || async {
            cloud_history(&cloud.api, &id).await.len() as u64 >= target
        })
        .await;
        assert!(
            flowing,
            "round {round}: not syncing\n{}",
            gateway.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(130 * (round + 1))).await;
        kill(&mut gateway);
        gateway = world.gateway().await;

        // Then the control plane, mid-apply.
        tokio::time::sleep(Duration::from_millis(700 + 90 * round)).await;
        kill(&mut cloud);
        tokio::time::sleep(Duration::from_millis(500)).await;
        cloud = world.cloud().await;
    }
    stored_more_than(&gateway, 100).await;
    let synced = assert_in_sync(&gateway, &cloud, &id, counter).await;
    assert!(synced > 100, "only {synced} changes");
    kill(&mut gateway);
    kill(&mut cloud);
    sim.stop().await;
}

/// The gateway's journal events (newest first), as its API shows them.
async fn gateway_events(api: &Api) -> Vec<Json> {
    let (status, body) = api.get("/api/v1/events?limit=1000").await;
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_events_reach_the_control_plane_each_once_across_a_kill_9() {
    let (world, sim, counter) = World::new("events").await;
    // A rule that raises an event every 200 ms or so (n counts up).
    world.files.write(
        "rules/tick.yaml",
        "kind: Rule\nname: tick\nwhen: 'devices[\"d\"].n % 20 < 10'\nclear_when: 'devices[\"d\"].n % 20 >= 10'\n\
         rate_limit: { firings: 1000, per: 1m }\nthen:\n  - event: { severity: warning, message: 'n at {devices[\"d\"].n}' }\n",
    );
    let mut cloud = world.cloud().await;
    let gateway = world.gateway().await;
    let id = world.gateway_id.clone();
    let path = format!("/api/v1/gateways/{id}/events?limit=10000");
    let cloud_events = |api: Api| {
        let path = path.clone();
        async move {
            api.get(&path)
                .await
                .1
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    assert!(
        wait_until(Duration::from_secs(20), || async {
            cloud_events(cloud.api.clone()).await.len() >= 5
        })
        .await,
        "no events synced:\n{}",
        gateway.log_tail()
    );
    // The control plane killed mid-stream; events keep coming and wait.
    kill(&mut cloud);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cloud = world.cloud().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    counter.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let newest = gateway_events(&gateway.api).await[0]["seq"]
        .as_u64()
        .expect("seq");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            gateway.api.get("/api/v1/sync").await.1["events_acked"].as_u64() >= Some(newest)
        })
        .await,
        "{}",
        gateway.api.get("/api/v1/sync").await.1
    );
    let at_gateway = gateway_events(&gateway.api).await;
    let in_cloud = cloud_events(cloud.api.clone()).await;
    let seqs: Vec<u64> = in_cloud.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let unique: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "each event once");
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first");
    let by_seq: std::collections::BTreeMap<u64, &Json> = in_cloud
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap_or(0), e))
        .collect();
    let rule_events: Vec<&Json> = at_gateway
        .iter()
        .filter(|e| e["rule"] == json!("tick"))
        .collect();
    assert!(
        rule_events.len() >= 10,
        "{} events at the gateway",
        rule_events.len()
    );
    for event in &rule_events {
        let seq = event["seq"].as_u64().expect("seq");
        let synced = by_seq
            .get(&seq)
            .unwrap_or_else(|| panic!("event {seq} missing in the cloud: {event}"));
        assert_eq!(
            synced["event"]["message"], event["message"],
            "{synced} vs {event}"
        );
        assert_eq!(synced["event"]["severity"], json!("warning"));
    }
    let mut gateway = gateway;
    kill(&mut gateway);
    kill(&mut cloud);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_goes_down_is_written_and_reported_back() {
    let (world, sim, counter) = World::new("twin").await;
    // The same device, with `n` writable.
    world.files.write(
        "models/t.yaml",
        "kind: DeviceModel\nname: t\nproperties:\n  n: { type: int, access: readwrite, modbus: { table: holding, address: 0, format: u32 } }\n",
    );
    let mut cloud = world.cloud().await;
    let mut gateway = world.gateway().await;
    // The device answers (the counter made it), then stays still.
    assert!(
        gateway
            .api
            .wait_status("d", "online", Duration::from_secs(10))
            .await
    );
    counter.abort();
    let twin = world.twin_path("d");
    let known = wait_until(Duration::from_secs(15), || async {
        cloud.api.get(&twin).await.0 == 200
    })
    .await;
    assert!(known, "the gateway never reached the control plane");

    // A value past the model's checks: refused, and said why.
    let (status, body) = cloud
        .api
        .put_raw(&format!("{twin}/desired"), r#"{"n": "high"}"#.into())
        .await;
    assert_eq!(status, 202, "{body}");
    let refused = wait_until(Duration::from_secs(10), || async {
        let t = cloud.api.get(&twin).await.1;
        t["metadata"]["last_report"]["errors"]["n"]
            .as_str()
            .is_some_and(|e| e.starts_with("wrong_type"))
    })
    .await;
    assert!(refused, "{}", cloud.api.get(&twin).await.1);

    // A good one: written to the device, read back, reported.
    let (status, body) = cloud
        .api
        .put_raw(&format!("{twin}/desired"), r#"{"n": 4242}"#.into())
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["version"], json!(2));
    let written = wait_until(Duration::from_secs(10), || async {
        let t = cloud.api.get(&twin).await.1;
        t["metadata"]["last_report"]["applied"]["n"] == json!(4242)
            && t["reported"]["n"] == json!(4242)
            && t["metadata"]["pending"] == json!(false)
    })
    .await;
    assert!(written, "{}", cloud.api.get(&twin).await.1);
    let on_device = gateway.api.get("/api/v1/devices/d/properties/n").await.1;
    assert_eq!(on_device["value"], json!(4242), "{on_device}");
    let audit = gateway.api.get("/api/v1/audit?limit=5").await.1;
    assert!(
        audit.to_string().contains("cloud desired v2"),
        "the write is in the audit log: {audit}"
    );

    // Offline: two patches wait, then apply in order.
    kill(&mut gateway);
    for value in [7, 9] {
        let (status, body) = cloud
            .api
            .put_raw(&format!("{twin}/desired"), format!(r#"{{"n": {value}}}"#))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let pending = cloud.api.get(&twin).await.1;
    assert_eq!(pending["metadata"]["pending"], json!(true), "{pending}");
    gateway = world.gateway().await;
    let applied = wait_until(Duration::from_secs(15), || async {
        let t = cloud.api.get(&twin).await.1;
        t["metadata"]["gateway_applied_version"] == json!(4) && t["reported"]["n"] == json!(9)
    })
    .await;
    assert!(applied, "{}", cloud.api.get(&twin).await.1);
    let audit = gateway.api.get("/api/v1/audit?limit=10").await.1;
    let order: Vec<&str> = audit
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["who"].as_str()).collect())
        .unwrap_or_default();
    let v3 = order.iter().position(|w| *w == "cloud desired v3");
    let v4 = order.iter().position(|w| *w == "cloud desired v4");
    // Newest first: v4 above v3.
    assert!(
        v3.is_some() && v4.is_some() && v4 < v3,
        "v3 then v4: {order:?}"
    );

    // Bad bodies get clear errors.
    for (body, code) in [
        ("[1]", "bad_body"),
        ("{}", "bad_body"),
        (r#"{"n": null}"#, "bad_body"),
        ("not json", "bad_body"),
    ] {
        let (status, answer) = cloud
            .api
            .put_raw(&format!("{twin}/desired"), body.into())
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], json!(code), "{body}: {answer}");
    }
    let (status, answer) = cloud
        .api
        .put_raw(
            "/api/v1/gateways/nobody/devices/d/desired",
            r#"{"n": 1}"#.into(),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    kill(&mut gateway);
    kill(&mut cloud);
    sim.stop().await;
}

/// The control plane's view of the configuration it sent `gateway`.
async fn cloud_config(cloud: &Api, gateway: &str) -> Json {
    cloud
        .get(&format!("/api/v1/gateways/{gateway}/config"))
        .await
        .1
}

/// Waits until the control plane has the gateway's report on bundle
/// `version`; returns its view.
async fn reported(
    cloud: &ServingProcess,
    gateway: &ServingProcess,
    id: &str,
    version: u64,
) -> Json {
    let done = wait_until(Duration::from_secs(20), || async {
        cloud_config(&cloud.api, id).await["report"]["version"] == json!(version)
    })
    .await;
    let view = cloud_config(&cloud.api, id).await;
    assert!(
        done,
        "no report on bundle v{version}: {view}\ngateway log:\n{}\ncloud log:\n{}",
        gateway.log_tail(),
        cloud.log_tail()
    );
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_bundle_from_the_control_plane_applies_once_and_converges_after_an_outage() {
    let (world, sim, counter) = World::new("bundle").await;
    let mut cloud = world.cloud().await;
    let mut gateway = world.gateway().await;
    let id = world.gateway_id.clone();
    let flowing = wait_until(Duration::from_secs(15), || async {
        cloud_history(&cloud.api, &id).await.len() >= 5
    })
    .await;
    assert!(flowing, "not syncing:\n{}", gateway.log_tail());
    let read = |name: &str| {
        std::fs::read_to_string(world.files.dir.path().join(name)).expect("project file")
    };
    let model = read("models/t.yaml");
    let d = read("devices/d.yaml");
    // e reads the same counter under another name.
    let e = d.replace("name: d", "name: e");

    // Bundle v1: the same d and t, and a new device e.
    let bundle = json!({
        "models": { "t": model },
        "devices": { "d": d, "e": e },
    });
    let path = format!("/api/v1/gateways/{id}/config");
    let (status, body) = cloud.api.put_raw(&path, bundle.to_string()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["version"], json!(1), "{body}");
    let view = reported(&cloud, &gateway, &id, 1).await;
    assert_eq!(view["state"], json!("applied"), "{view}");
    assert_eq!(view["report"]["changed"], json!(true), "{view}");
    assert_eq!(view["report"]["gateway_version"], json!(2), "{view}");
    let config = gateway.api.get("/api/v1/config").await.1;
    assert_eq!(config["origin"]["kind"], json!("cloud"), "{config}");
    assert_eq!(config["origin"]["bundle"], json!(1), "{config}");
    assert_eq!(config["hash"], view["report"]["hash"], "{config}");
    assert_eq!(
        config["history"][0]["summary"]["devices"],
        json!({"added": ["e"], "changed": [], "removed": []}),
        "only e starts: d is as it was"
    );
    gateway
        .api
        .expect_status("e", "online", Duration::from_secs(10))
        .await;
    assert!(world.files.dir.path().join("devices/e.yaml").exists());

    // The same bundle again (v2): nothing changes at the gateway.
    let (status, body) = cloud.api.put_raw(&path, bundle.to_string()).await;
    assert_eq!(status, 202, "{body}");
    let view = reported(&cloud, &gateway, &id, 2).await;
    assert_eq!(view["state"], json!("applied"), "{view}");
    assert_eq!(view["report"]["changed"], json!(false), "a no-op: {view}");
    assert_eq!(view["report"]["gateway_version"], json!(2), "{view}");
    assert_eq!(
        gateway.api.get("/api/v1/config").await.1["version"],
        json!(2)
    );

    // A bundle that does not check: rejected with where; v2 runs on.
    let broken = json!({ "models": { "t": model }, "devices": { "d": d.replace("model: t", "model: nope") } });
    cloud.api.put_raw(&path, broken.to_string()).await;
    let view = reported(&cloud, &gateway, &id, 3).await;
    assert_eq!(view["state"], json!("rejected"), "{view}");
    // The fleet view says the same, for the gateway's newest bundle.
    let (_, fleet) = cloud.api.get("/api/v1/fleet").await;
    let row = &fleet["gateways"][0];
    assert_eq!(row["id"], json!(id), "{fleet}");
    assert_eq!(
        (&row["config_version"], &row["config_state"]),
        (&json!(3), &json!("rejected")),
        "{fleet}"
    );
    let errors = view["report"]["errors"].to_string();
    assert!(
        errors.contains("d.yaml:3:8") && errors.contains("unknown model `nope`"),
        "{errors}"
    );
    assert_eq!(
        gateway.api.get("/api/v1/config").await.1["version"],
        json!(2)
    );
    assert_eq!(gateway.api.get("/api/v1/devices/e").await.0, 200);

    // Pushed while the gateway is down (e goes): applied once it is back.
    signal(&gateway.child, "TERM");
    let _ = gateway.child.wait();
    let only_d = json!({ "models": { "t": model }, "devices": { "d": d } });
    let (status, body) = cloud.api.put_raw(&path, only_d.to_string()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["gateway_connected"], json!(false), "{body}");
    assert_eq!(
        cloud_config(&cloud.api, &id).await["state"],
        json!("pending")
    );
    gateway = world.gateway().await;
    let view = reported(&cloud, &gateway, &id, 4).await;
    assert_eq!(view["state"], json!("applied"), "{view}");
    assert_eq!(view["report"]["gateway_version"], json!(3), "{view}");
    assert_eq!(gateway.api.get("/api/v1/devices/e").await.0, 404);
    assert!(!world.files.dir.path().join("devices/e.yaml").exists());
    // And the history of d went on syncing throughout.
    assert_in_sync(&gateway, &cloud, &id, counter).await;
    // e is gone, but what it read was kept and synced, all of it.
    let (status, ours) = gateway
        .api
        .get("/api/v1/devices/e/properties/n/history?limit=10000")
        .await;
    assert_eq!(status, 200, "a removed device's history stays: {ours}");
    let (_, theirs) = cloud
        .api
        .get(&format!(
            "/api/v1/gateways/{id}/devices/e/properties/n/history?limit=10000"
        ))
        .await;
    let plain = |all: &Json| -> Vec<Json> {
        all.as_array()
            .map(|a| a.iter().map(|e| json!([e["ts"], e["value"]])).collect())
            .unwrap_or_default()
    };
    assert!(!plain(&ours).is_empty());
    assert_eq!(plain(&ours), plain(&theirs), "e's history, synced whole");

    // Bad bundle bodies get clear errors.
    for body in [
        r#"[1]"#,
        r#"{"gadgets": {}}"#,
        r#"{"devices": {"../x": "kind: Device"}}"#,
        r#"{"devices": {"x": 5}}"#,
    ] {
        let (status, answer) = cloud.api.put_raw(&path, body.into()).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    kill(&mut gateway);
    kill(&mut cloud);
    sim.stop().await;
}
