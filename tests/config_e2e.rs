//! Live configuration end to end: devices, models and rules changed through
//! the folders and the REST API while the gateway runs, against a simulated
//! Modbus TCP gateway behind a counting proxy (so that a reopened connection
//! shows); refusals, versions, rollback, and the automatic rollback of a
//! configuration whose device loop keeps crashing (a fail point).

mod common;

use std::time::Duration;

use common::{Api, Files, Proxy, put, tcp_device, wait_until};
use ferrite_models::Value;
use ferrite_sim::bank::Endpoint;
use serde_json::Value as Json;

const SECS: Duration = Duration::from_secs(10);

const MODEL: &str = "kind: DeviceModel\nname: t\nproperties:\n  n: { type: int, modbus: { table: holding, address: 0, format: u32 } }\n";

/// A simulated Modbus TCP gateway whose units 1..=4 count up every 20 ms
/// (so nearly every poll is a change, and the history shows each poll),
/// behind a proxy that counts connections.
struct Plant {
    _sim: ferrite_sim::server::TcpSim,
    proxy: Proxy,
    counter: tokio::task::JoinHandle<()>,
}

impl Plant {
    async fn start(files: &Files) -> Plant {
        let sim = ferrite_sim::server::TcpSim::start(
            "127.0.0.1:0".parse().expect("addr"),
            Endpoint::new(true),
        )
        .await
        .expect("sim");
        let proxy = Proxy::start(sim.addr).await;
        files.write("models/t.yaml", MODEL);
        let binding = ferrite_models::model::ModbusBinding {
            table: ferrite_models::model::Table::Holding,
            address: 0,
            format: Some(ferrite_models::model::Format::U32),
            order: None,
            bit: None,
            scale: None,
            offset: None,
        };
        let endpoint = sim.endpoint.clone();
        let counter = tokio::spawn(async move {
            for i in 0i64.. {
                for unit in 1..=4 {
                    put(&endpoint, unit, &binding, &Value::Int(i));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Plant {
            _sim: sim,
            proxy,
            counter,
        }
    }

    fn device(&self, name: &str, unit: u8, poll: &str) -> String {
        tcp_device(name, "t", self.proxy.addr.port(), unit, poll)
    }
}

impl Drop for Plant {
    fn drop(&mut self) {
        self.counter.abort();
    }
}

/// The times (s since the epoch) of `device`'s history of `n`.
async fn stamps(api: &Api, device: &str) -> Vec<f64> {
    let (_, body) = api
        .get(&format!(
            "/api/v1/devices/{device}/properties/n/history?limit=10000"
        ))
        .await;
    body.as_array()
        .map(|all| {
            all.iter()
                .filter_map(|p| p["ts"].as_str())
                .filter_map(ferrite_gateway::time::parse_rfc3339)
                .map(|us| us as f64 / 1e6)
                .collect()
        })
        .unwrap_or_default()
}

/// The largest gap between consecutive readings at or after `since`.
fn largest_gap(stamps: &[f64], since: f64) -> (f64, usize) {
    let recent: Vec<f64> = stamps.iter().copied().filter(|t| *t >= since).collect();
    let gap = recent.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    (gap, recent.len())
}

/// How often `device` was started, from `/metrics`.
async fn starts(api: &Api, device: &str) -> u64 {
    counter(api, "ferrite_device_starts_total", device).await
}

/// How often `device`'s loop panicked, from `/metrics`.
async fn panics(api: &Api, device: &str) -> u64 {
    counter(api, "ferrite_device_loop_panics_total", device).await
}

/// A per-device counter of `/metrics`.
async fn counter(api: &Api, family: &str, device: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", api.base))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    let prefix = format!("{family}{{device=\"{device}\",");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn config(api: &Api) -> Json {
    api.get("/api/v1/config").await.1
}

async fn wait_version(api: &Api, version: u64) -> Json {
    let reached = wait_until(SECS, || async {
        config(api).await["version"].as_u64() >= Some(version)
    })
    .await;
    let now = config(api).await;
    assert!(reached, "no v{version}: {now}");
    now
}

fn now_s() -> f64 {
    ferrite_gateway::time::now() as f64 / 1e6
}

#[tokio::test]
async fn devices_change_through_files_and_rest_while_the_others_keep_their_cadence() {
    let files = Files::new();
    let plant = Plant::start(&files).await;
    files
        .write("devices/a.yaml", &plant.device("a", 1, "100ms"))
        .write("devices/b.yaml", &plant.device("b", 2, "100ms"));
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    api.expect_status("a", "online", SECS).await;
    api.expect_status("b", "online", SECS).await;
    let first = config(&api).await;
    assert_eq!(first["version"], 1, "{first}");
    assert_eq!(first["origin"]["kind"], "start");
    let t0 = now_s();
    assert_eq!(plant.proxy.accepted(), 1, "a and b share one connection");

    // 1. A file edit: b polls every 300 ms. Only b restarts.
    files.write("devices/b.yaml", &plant.device("b", 2, "300ms"));
    let v2 = wait_version(&api, 2).await;
    assert_eq!(v2["origin"]["kind"], "files", "{v2}");
    let summary = &v2["history"][0]["summary"];
    assert_eq!(
        summary["devices"]["changed"],
        serde_json::json!(["b"]),
        "{v2}"
    );
    assert_eq!(summary["devices"]["added"], serde_json::json!([]), "{v2}");
    let edited = now_s();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let b = stamps(&api, "b").await;
    let after: Vec<f64> = b.iter().copied().filter(|t| *t > edited + 0.35).collect();
    let gaps: Vec<f64> = after.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        !gaps.is_empty() && gaps.iter().all(|g| *g > 0.2),
        "b polls every 300 ms now: {gaps:?}"
    );

    // 2. Through the API: a new device c, in its own file.
    let (status, body) = api
        .put_raw("/api/v1/devices/c", plant.device("c", 3, "100ms"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 3, "{body}");
    assert_eq!(
        body["summary"]["devices"]["added"],
        serde_json::json!(["c"])
    );
    assert!(files.dir.path().join("devices/c.yaml").exists());
    api.expect_status("c", "online", SECS).await;

    // 3. Through the API: b goes; its history stays readable.
    let (status, body, _) = api
        .call(reqwest::Method::DELETE, "/api/v1/devices/b", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["summary"]["devices"]["removed"],
        serde_json::json!(["b"])
    );
    assert_eq!(api.get("/api/v1/devices/b").await.0, 404);
    assert!(!files.dir.path().join("devices/b.yaml").exists());
    assert!(!stamps(&api, "b").await.is_empty(), "b's history is kept");
    let (status, _) = api.write("b", "n", serde_json::json!(1)).await;
    assert_eq!(status, 404, "no writes to a removed device");

    // a never noticed: no gap in its readings, and no connection reopened.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (gap, points) = largest_gap(&stamps(&api, "a").await, t0);
    assert!(points > 20, "{points} readings of a");
    assert!(
        gap < 0.4,
        "a polls every 100 ms; its largest gap across the edits was {gap:.3} s"
    );
    eprintln!("a's largest gap across three reconfigurations: {gap:.3} s ({points} readings)");
    assert_eq!(
        plant.proxy.accepted(),
        1,
        "the shared Modbus connection was never reopened"
    );
    assert_eq!(starts(&api, "a").await, 1, "a was never restarted");
    assert_eq!(
        starts(&api, "b").await,
        2,
        "b: started, then restarted once"
    );
    assert_eq!(starts(&api, "c").await, 1);

    // 4. A broken file: refused, with where; the old set runs on.
    files.write(
        "devices/a.yaml",
        &plant
            .device("a", 1, "100ms")
            .replace("model: t", "model: ghost"),
    );
    let refused = wait_until(SECS, || async {
        !config(&api).await["last_rejected"].is_null()
    })
    .await;
    let now = config(&api).await;
    assert!(refused, "{now}");
    assert_eq!(now["version"], 4, "{now}");
    let errors = now["last_rejected"]["errors"].to_string();
    assert!(
        errors.contains("a.yaml:3:8") && errors.contains("unknown model `ghost`"),
        "{errors}"
    );
    let before = stamps(&api, "a").await.len();
    assert!(
        wait_until(SECS, || async {
            stamps(&api, "a").await.len() > before + 3
        })
        .await,
        "a keeps polling"
    );
    let events = api.get("/api/v1/events?limit=100").await.1.to_string();
    assert!(events.contains("config_rejected"), "{events}");
    // Put back: the folder holds the running set again.
    files.write("devices/a.yaml", &plant.device("a", 1, "100ms"));
    assert!(
        wait_until(SECS, || async {
            config(&api).await["last_rejected"].is_null()
        })
        .await
    );
    assert_eq!(config(&api).await["version"], 4);

    // 5. A broken API edit: every problem, file:line:col, nothing written.
    let bad = "kind: Device\nname: a\nmodel: t\npoll: soon\nmodbus-tcp: { host: 127.0.0.1, port: 1, unit: 1 }\n";
    let (status, body) = api.put_raw("/api/v1/devices/a", bad.into()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_device");
    let details = body["error"]["details"].to_string();
    assert!(
        details.contains("a.yaml:4:7") && details.contains("bad duration `soon`"),
        "{details}"
    );
    assert_eq!(
        std::fs::read_to_string(files.dir.path().join("devices/a.yaml")).expect("a"),
        plant.device("a", 1, "100ms"),
        "a refused edit writes nothing"
    );
    let (status, body) = api
        .put_raw("/api/v1/devices/a", plant.device("z", 1, "100ms"))
        .await;
    assert_eq!(status, 400, "a body naming another device: {body}");

    // 6. Rollback: back to v3 (b with its 300 ms, and c), as v5.
    let (status, body, _) = api
        .call(reqwest::Method::POST, "/api/v1/config/rollback", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 5, "{body}");
    assert_eq!(
        body["summary"]["devices"]["added"],
        serde_json::json!(["b"])
    );
    api.expect_status("b", "online", SECS).await;
    assert!(files.dir.path().join("devices/b.yaml").exists());
    let now = config(&api).await;
    assert_eq!(now["origin"]["kind"], "rollback", "{now}");
    assert_eq!(now["origin"]["to"], 3, "{now}");
    let v3 = now["history"]
        .as_array()
        .and_then(|h| h.iter().find(|v| v["version"] == 3))
        .expect("v3 kept");
    assert_eq!(now["hash"], v3["hash"], "the same files, the same hash");
    let doc_b = now["documents"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "b"))
        .expect("b");
    assert_eq!(doc_b["version"], 5, "{doc_b}");
    let (status, body, _) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/config/rollback",
            Some(r#"{"version": 99}"#.into()),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // Only an object (or null) is a rollback body; `3.0` is the integer 3.
    for (bad, code) in [
        ("[]", 400),
        ("[3]", 400),
        ("3", 400),
        (r#"{"version": 3.5}"#, 400),
    ] {
        let (status, body, _) = api
            .call(
                reqwest::Method::POST,
                "/api/v1/config/rollback",
                Some(bad.into()),
            )
            .await;
        assert_eq!(status, code, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}: {body}");
    }
    let (status, body, _) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/config/rollback",
            Some(r#"{"version": 99.0}"#.into()),
        )
        .await;
    assert_eq!(status, 409, "99.0 reads as version 99: {body}");

    // The same set again (a SIGHUP, or an edit that changes nothing) is no
    // new version.
    let (status, body) = api
        .put_raw("/api/v1/devices/c", plant.device("c", 3, "100ms"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], false, "{body}");
    assert_eq!(body["version"], 5, "{body}");
    assert!(gw.stop().await);

    // A restart runs the same set as the same version.
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    let again = config(&api).await;
    assert_eq!(again["version"], 5, "{again}");
    assert_eq!(again["history"].as_array().map(Vec::len), Some(5));
    assert!(gw.stop().await);
}

#[tokio::test]
async fn models_and_rules_change_through_the_api_and_only_their_users_restart() {
    let files = Files::new();
    let plant = Plant::start(&files).await;
    files
        .write(
            "models/u.yaml",
            &MODEL.replace("name: t", "name: u"),
        )
        .write("devices/a.yaml", &plant.device("a", 1, "100ms"))
        .write(
            "devices/b.yaml",
            &plant.device("b", 2, "100ms").replace("model: t", "model: u"),
        )
        .write(
            "rules/big.yaml",
            "kind: Rule\nname: big\nwhen: 'devices[\"a\"].n > 0'\nthen:\n  - event: { message: big }\n",
        );
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    api.expect_status("a", "online", SECS).await;
    api.expect_status("b", "online", SECS).await;
    let fired = wait_until(SECS, || async {
        api.get("/api/v1/rules/big").await.1["state"] == "active"
    })
    .await;
    assert!(fired);

    // Model u gains a property (JSON, as the API also takes it): b restarts, a does not.
    let model = serde_json::json!({
        "kind": "DeviceModel",
        "name": "u",
        "properties": {
            "n": { "type": "int", "modbus": { "table": "holding", "address": 0, "format": "u32" } },
            "m": { "type": "int", "modbus": { "table": "holding", "address": 0 } }
        }
    });
    let (status, body) = api.put_raw("/api/v1/models/u", model.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["summary"]["models"]["changed"],
        serde_json::json!(["u"])
    );
    assert_eq!(
        body["summary"]["devices"]["changed"],
        serde_json::json!(["b"])
    );
    let has_m = wait_until(SECS, || async {
        api.device("b").await["properties"]["m"]["value"].is_number()
    })
    .await;
    assert!(has_m, "{}", api.device("b").await);
    assert_eq!((starts(&api, "a").await, starts(&api, "b").await), (1, 2));

    // A model in use cannot go; an unused one can.
    let (status, body, _) = api
        .call(reqwest::Method::DELETE, "/api/v1/models/t", None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["details"]
            .to_string()
            .contains("unknown model `t`"),
        "{body}"
    );
    files.write(
        "models/spare.yaml",
        &MODEL.replace("name: t", "name: spare"),
    );
    let v = config(&api).await["version"].as_u64().unwrap_or(0);
    wait_version(&api, v + 1).await;
    let (status, body, _) = api
        .call(reqwest::Method::DELETE, "/api/v1/models/spare", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["summary"]["devices"]["changed"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{body}"
    );

    // A rule that reads a removed device is refused; the rule keeps running.
    let (status, body, _) = api
        .call(reqwest::Method::DELETE, "/api/v1/devices/a", None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["details"].to_string().contains("big.yaml"),
        "{body}"
    );
    assert_eq!(api.get("/api/v1/rules/big").await.1["state"], "active");

    // The rule changes: only it restarts, and the rule state shows it.
    let (status, body) = api
        .put_raw(
            "/api/v1/rules/big",
            "kind: Rule\nname: big\nwhen: 'devices[\"a\"].n < 0'\nthen:\n  - event: { message: big }\n".into(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "idle", "{body}");
    let docs = config(&api).await["documents"].clone();
    let rule = docs
        .as_array()
        .and_then(|d| d.iter().find(|d| d["kind"] == "rule"))
        .expect("rule");
    assert_eq!(rule["origin"]["kind"], "api", "{rule}");
    assert!(gw.stop().await);
}

#[tokio::test]
async fn a_configuration_whose_device_loop_keeps_crashing_is_rolled_back() {
    // The fail point makes the loop of the device it names panic each time
    // it polls; the names here (`steady`, `crashy`) are in no other test.
    let files = Files::new();
    let plant = Plant::start(&files).await;
    files.write("devices/steady.yaml", &plant.device("steady", 1, "100ms"));
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    api.expect_status("steady", "online", SECS).await;

    // A device that was there before crashes: not the new version's doing.
    fail::cfg("device-loop", "return(steady)").expect("fail point");
    let (status, body) = api
        .put_raw(
            "/api/v1/devices/bystander",
            plant.device("bystander", 2, "100ms"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    let crashed = wait_until(Duration::from_secs(10), || async {
        panics(&api, "steady").await >= 3
    })
    .await;
    assert!(crashed, "steady's loop panics, and is restarted each time");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(config(&api).await["version"], 2, "nothing rolled back");

    // A device the new version adds crashes: the version goes.
    fail::cfg("device-loop", "return(crashy)").expect("fail point");
    api.expect_status("steady", "online", Duration::from_secs(20))
        .await;
    let (status, body) = api
        .put_raw("/api/v1/devices/crashy", plant.device("crashy", 4, "100ms"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 3);
    // Panics at once, then after 0.5 s and 1 s: three within the minute.
    let rolled = wait_until(Duration::from_secs(15), || async {
        config(&api).await["version"] == 4
    })
    .await;
    let now = config(&api).await;
    assert!(rolled, "{now}");
    assert_eq!(now["origin"]["kind"], "auto_rollback", "{now}");
    assert_eq!(now["origin"]["from"], 3, "{now}");
    assert_eq!(now["origin"]["to"], 2, "{now}");
    assert!(now["origin"]["why"].to_string().contains("crashy"), "{now}");
    assert_eq!(api.get("/api/v1/devices/crashy").await.0, 404);
    assert!(!files.dir.path().join("devices/crashy.yaml").exists());
    assert_eq!(api.get("/api/v1/devices/bystander").await.0, 200);
    let events = api.get("/api/v1/events?limit=100").await.1;
    let critical = events.as_array().and_then(|all| {
        all.iter()
            .find(|e| e["kind"] == "config_rolled_back")
            .cloned()
    });
    assert!(
        critical
            .as_ref()
            .is_some_and(|e| e["severity"] == "critical"),
        "{events}"
    );
    fail::remove("device-loop");
    api.expect_status("steady", "online", SECS).await;
    assert!(gw.stop().await);
}

/// `POST /api/v1/devices/{id}/probe`: a device tried before it is saved.
/// Its values come from one poll through the real driver; nothing is saved
/// (no file, no device, no history), nothing is written to the device (only
/// reads in the simulator's log); a dead address shows offline with the
/// driver's reason; a file that does not check is a 400 at its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_polls_once_through_the_driver_and_saves_nothing() {
    let files = Files::new();
    let plant = Plant::start(&files).await;
    let gateway = files.start().await;
    let api = Api::new(gateway.addr);
    // The counter has counted past 0 by then.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = plant._sim.endpoint.requests();

    let body = plant.device("trial", 3, "1s");
    let (status, probe, _) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/devices/trial/probe",
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{probe}");
    assert_eq!(probe["status"], "online", "{probe}");
    assert_eq!(probe["values"]["n"]["quality"], "good", "{probe}");
    // The counter at unit 3 counts up from 0 every 20 ms: a value it has had.
    let n = probe["values"]["n"]["value"].as_i64().expect("an int");
    assert!(n > 0, "{probe}");
    // Nothing saved: no file, no device, no history; only reads went out.
    assert!(!files.dir.path().join("devices/trial.yaml").exists());
    let (status, _) = api.get("/api/v1/devices/trial").await;
    assert_eq!(status, 404);
    let seen = plant._sim.endpoint.seen();
    assert!(plant._sim.endpoint.requests() > before);
    assert!(
        seen.iter().all(|s| matches!(s.function, 1..=4)),
        "{:?}",
        seen.iter().map(|s| s.function).collect::<Vec<_>>()
    );
    let (_, config) = api.get("/api/v1/config").await;
    assert_eq!(config["version"], 1, "{config}");

    // A dead address: offline, with the driver's reason.
    let port = common::free_port();
    let dead = tcp_device("nobody", "t", port, 1, "1s");
    let (status, probe, _) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/devices/nobody/probe",
            Some(dead),
        )
        .await;
    assert_eq!(status, 200, "{probe}");
    assert_eq!(probe["status"], "offline", "{probe}");
    assert!(
        probe["error"]
            .as_str()
            .is_some_and(|e| e.contains(&port.to_string())),
        "{probe}"
    );
    assert_eq!(probe["values"]["n"]["quality"], "stale", "{probe}");

    // A file that does not check: 400, at its place.
    let wrong = "kind: Device\nname: bad\nmodel: nowhere\nmodbus-tcp: { host: 127.0.0.1 }\n";
    let (status, refusal, _) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/devices/bad/probe",
            Some(wrong.into()),
        )
        .await;
    assert_eq!(status, 400, "{refusal}");
    let message = refusal.to_string();
    assert!(message.contains("bad.yaml:3:8"), "{message}");
    assert!(gateway.stop().await);
}
