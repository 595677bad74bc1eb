//! OPC UA end to end: the gateway against the simulator's async-opcua
//! server, over real sockets, with real security.

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::{Api, Files, Proxy, wait_until};
use ferrite_models::Value;
use ferrite_sim::opcua_server::{UaSim, UaSimOptions, UaUser};
use opcua::types::NodeId;
use serde_json::{Value as Json, json};

const TYPES_MODEL: &str = r#"kind: DeviceModel
name: all
properties:
  b:   { type: bool,   access: readwrite, opcua: { node: "ns=2;s=B",   datatype: Boolean } }
  i8:  { type: int,    access: readwrite, opcua: { node: "ns=2;s=I8",  datatype: SByte } }
  u8:  { type: int,    access: readwrite, opcua: { node: "ns=2;s=U8",  datatype: Byte } }
  i16: { type: int,    access: readwrite, opcua: { node: "ns=2;s=I16", datatype: Int16 } }
  u16: { type: int,    access: readwrite, opcua: { node: "ns=2;s=U16", datatype: UInt16 } }
  i32: { type: int,    access: readwrite, opcua: { node: "ns=2;s=I32", datatype: Int32 } }
  u32: { type: int,    access: readwrite, opcua: { node: "ns=2;s=U32", datatype: UInt32 } }
  i64: { type: int,    access: readwrite, opcua: { node: "ns=2;s=I64", datatype: Int64 } }
  u64: { type: int,    access: readwrite, opcua: { node: "ns=2;s=U64", datatype: UInt64 } }
  f32: { type: float,  access: readwrite, opcua: { node: "ns=3;s=F32", datatype: Float } }
  f64: { type: float,  access: readwrite, opcua: { node: "ns=3;i=1001", datatype: Double } }
  s:   { type: string, access: readwrite, opcua: { node: "ns=2;s=S",   datatype: String } }
"#;

/// (property, value the server sets, value written through the API).
fn cases() -> Vec<(&'static str, Json, Json)> {
    vec![
        ("b", json!(true), json!(false)),
        ("i8", json!(-100), json!(100)),
        ("u8", json!(200), json!(7)),
        ("i16", json!(-30000), json!(12345)),
        ("u16", json!(60000), json!(1)),
        ("i32", json!(-2_000_000_000), json!(2_000_000_000)),
        ("u32", json!(4_000_000_000u64), json!(3)),
        (
            "i64",
            json!(-9_000_000_000_000i64),
            json!(9_000_000_000_000i64),
        ),
        ("u64", json!(9_000_000_000_000_000_000u64), json!(5)),
        ("f32", json!(1.5), json!(-2.25)),
        ("f64", json!(std::f64::consts::PI), json!(-0.1)),
        ("s", json!("grün"), json!("B-42")),
    ]
}

/// A project with the simulator serving its OPC UA devices.
struct Rig {
    files: Files,
    sim: UaSim,
}

/// Writes `model` and `devices` (`{url}` stands for the server's URL),
/// starts a simulator with the nodes they need (but `missing`), and points
/// the devices at it, or at `via` when it forwards to it.
async fn rig(model: &str, devices: &[(&str, &str)], users: &[UaUser], missing: &[&str]) -> Rig {
    rig_serving(model, devices, users, missing, |_| {}).await
}

/// [`rig`], with each method the server offers passed through `adjust`
/// first (to serve other DataTypes than the defaults, say).
async fn rig_serving(
    model: &str,
    devices: &[(&str, &str)],
    users: &[UaUser],
    missing: &[&str],
    adjust: impl Fn(&mut ferrite_sim::opcua_server::UaMethod),
) -> Rig {
    let files = Files::new();
    files.write("models/m.yaml", model);
    for (name, text) in devices {
        files.write(
            &format!("devices/{name}.yaml"),
            &text.replace("{url}", "opc.tcp://127.0.0.1:1/sim"),
        );
    }
    let project = files.project();
    let mut nodes = Vec::new();
    for (name, _) in devices {
        for node in ferrite_sim::sim::ua_nodes(&project, name) {
            if !missing.contains(&node.name.as_str())
                && !nodes
                    .iter()
                    .any(|n: &ferrite_sim::opcua_server::UaNode| n.id == node.id)
            {
                nodes.push(node);
            }
        }
    }
    let mut methods: Vec<ferrite_sim::opcua_server::UaMethod> = Vec::new();
    for (name, _) in devices {
        for mut m in ferrite_sim::sim::ua_methods(&project, name) {
            if !missing.contains(&m.name.as_str()) && !methods.iter().any(|known| known.id == m.id)
            {
                adjust(&mut m);
                methods.push(m);
            }
        }
    }
    let options = UaSimOptions {
        path: "/sim".into(),
        pki_dir: files.dir.path().join("sim-pki"),
        users: users.to_vec(),
        methods,
    };
    let sim = UaSim::start("127.0.0.1:0".parse().expect("addr"), nodes, options)
        .await
        .expect("sim starts");
    let rig = Rig { files, sim };
    rig.point(devices, &rig.sim.url());
    rig
}

impl Rig {
    /// Rewrites the devices to use `url`.
    fn point(&self, devices: &[(&str, &str)], url: &str) {
        for (name, text) in devices {
            let text = text
                .replace("{url}", url)
                .replace("{cert}", &self.sim.certificate_path().display().to_string());
            self.files.write(&format!("devices/{name}.yaml"), &text);
        }
    }

    fn set(&self, node: &str, value: Value) {
        let id = NodeId::from_str(node).expect("node id");
        self.sim.set(&id, &value).expect("sim set");
    }

    /// Stops the gateway (which must stop cleanly) and the server.
    async fn finish(self, gateway: ferrite_gateway::runtime::Gateway) {
        assert!(gateway.stop().await);
        self.sim.stop().await;
    }

    fn get(&self, node: &str) -> Option<Value> {
        self.sim.get(&NodeId::from_str(node).expect("node id"))
    }
}

fn node_of(property: &str) -> &'static str {
    match property {
        "b" => "ns=2;s=B",
        "i8" => "ns=2;s=I8",
        "u8" => "ns=2;s=U8",
        "i16" => "ns=2;s=I16",
        "u16" => "ns=2;s=U16",
        "i32" => "ns=2;s=I32",
        "u32" => "ns=2;s=U32",
        "i64" => "ns=2;s=I64",
        "u64" => "ns=2;s=U64",
        "f32" => "ns=3;s=F32",
        "f64" => "ns=3;i=1001",
        _ => "ns=2;s=S",
    }
}

fn to_value(j: &Json) -> Value {
    serde_json::from_value(j.clone()).expect("a value")
}

async fn value_is(api: &Api, device: &str, property: &str, want: Json) -> bool {
    let d = api.device(device).await;
    let p = &d["properties"][property];
    p["value"] == want && p["quality"] == "good"
}

const WAIT: Duration = Duration::from_secs(10);

async fn types_round_trip(mode: &str) {
    let device = format!(
        "kind: Device\nname: d\nmodel: all\npoll: 50ms\ntimeout: 500ms\nopcua: {{ endpoint: \"{{url}}\", mode: {mode}, sampling: 50ms }}\n"
    );
    let rig = rig(TYPES_MODEL, &[("d", &device)], &[], &[]).await;
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    api.expect_status("d", "online", WAIT).await;

    // Server-side changes arrive, for every type.
    for (property, from_server, _) in cases() {
        rig.set(node_of(property), to_value(&from_server));
    }
    for (property, from_server, _) in cases() {
        assert!(
            wait_until(WAIT, || value_is(&api, "d", property, from_server.clone())).await,
            "{property}: wanted {from_server}, have {}",
            api.device("d").await["properties"][property]
        );
    }
    // Writes reach the server in the node's own DataType.
    for (property, _, written) in cases() {
        let (status, body) = api.write("d", property, written.clone()).await;
        assert_eq!(status, 200, "{property}: {body}");
        assert_eq!(body["value"], written, "{property}");
        assert_eq!(
            rig.get(node_of(property)),
            Some(to_value(&written)),
            "{property}"
        );
    }

    // What the node's type cannot hold is refused before it is sent...
    let (status, body) = api.write("d", "u8", json!(300)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "device_rejected", "{body}");
    assert_eq!(rig.get("ns=2;s=U8"), Some(Value::Int(7)));
    let (status, body) = api.write("d", "i32", json!(2.5)).await;
    assert_eq!(status, 400, "{body}");
    // ... and what the server refuses maps onto the API's errors.
    rig.sim
        .set_writable(&NodeId::from_str("ns=2;s=B").expect("id"), false);
    let (status, body) = api.write("d", "b", json!(true)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "device_denied", "{body}");
    assert_eq!(rig.get("ns=2;s=B"), Some(Value::Bool(false)));
    rig.finish(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_subscribes_and_writes() {
    types_round_trip("subscribe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_polls_and_writes() {
    types_round_trip("poll").await;
}

const SMALL_MODEL: &str = r#"kind: DeviceModel
name: small
properties:
  level: { type: float, opcua: { node: "ns=2;s=Level" } }
  mode:  { type: int, access: readwrite, opcua: { node: "ns=2;s=Mode" } }
"#;

fn secure_device(name: &str, security: &str, policy: &str, password_file: &str) -> String {
    format!(
        "kind: Device\nname: {name}\nmodel: small\ntimeout: 500ms\nopcua:\n  endpoint: \"{{url}}\"\n  security: {security}\n  policy: {policy}\n  username: operator\n  password_file: {password_file}\n  server_certificate: \"{{cert}}\"\n  sampling: 100ms\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_and_encrypted_sessions_with_username_login() {
    let combos = [
        ("s1", "sign", "Basic256Sha256"),
        ("s2", "sign-and-encrypt", "Basic256Sha256"),
        ("s3", "sign-and-encrypt", "Aes128_Sha256_RsaOaep"),
        ("s4", "sign", "Aes256_Sha256_RsaPss"),
        ("s5", "sign-and-encrypt", "Aes256_Sha256_RsaPss"),
    ];
    let texts: Vec<(String, String)> = combos
        .iter()
        .map(|(n, s, p)| (n.to_string(), secure_device(n, s, p, "password.txt")))
        .collect();
    let devices: Vec<(&str, &str)> = texts
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let rig = rig(
        SMALL_MODEL,
        &devices,
        &[UaUser::password("operator", "s3cret")],
        &[],
    )
    .await;
    rig.files.write("devices/password.txt", "s3cret\n");
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    rig.set("ns=2;s=Level", Value::Float(4.25));
    for (name, security, policy) in combos {
        api.expect_status(name, "online", WAIT).await;
        assert!(
            wait_until(WAIT, || value_is(&api, name, "level", json!(4.25))).await,
            "{security} {policy}: {}",
            api.device(name).await
        );
    }
    let (status, body) = api.write("s2", "mode", json!(3)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rig.get("ns=2;s=Mode"), Some(Value::Int(3)));
    // The gateway made its own certificate on first run.
    assert!(rig.files.data().join("pki/own/cert.der").is_file());
    rig.finish(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_clear_error_retried_with_backoff() {
    let text = secure_device("d", "sign-and-encrypt", "Basic256Sha256", "password.txt");
    let rig = rig(
        SMALL_MODEL,
        &[("d", &text)],
        &[UaUser::password("operator", "s3cret")],
        &[],
    )
    .await;
    rig.files.write("devices/password.txt", "wrong\n");
    let proxy = Proxy::start(rig.sim.addr).await;
    rig.point(&[("d", &text)], &format!("opc.tcp://{}/sim", proxy.addr));
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    api.expect_status("d", "error", WAIT).await;
    let error = api.error("d").await;
    assert!(
        error.contains("refused the login of user `operator`"),
        "{error}"
    );

    // Each attempt is two connections (endpoints, then the session). With
    // the backoff (0.5 s doubling, ±20%) 6 s hold 4 attempts at most; without
    // it, a debug build still makes over 20 here.
    let before = proxy.accepted();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = proxy.accepted() - before;
    assert!((1..=8).contains(&during), "{during} connections in 6 s");

    // Fixing the password file heals the device without a restart.
    rig.files.write("devices/password.txt", "s3cret\n");
    api.expect_status("d", "online", Duration::from_secs(20))
        .await;
    rig.finish(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_server_certificate_is_not_trusted_until_moved() {
    let device = "kind: Device\nname: d\nmodel: small\ntimeout: 500ms\nopcua: { endpoint: \"{url}\", security: sign }\n";
    let rig = rig(SMALL_MODEL, &[("d", device)], &[], &[]).await;
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    api.expect_status("d", "error", WAIT).await;
    let error = api.error("d").await;
    assert!(error.contains("rejected"), "{error}");

    // The certificate waits in pki/rejected; an operator moves it.
    let pki = rig.files.data().join("pki");
    let rejected: Vec<_> = std::fs::read_dir(pki.join("rejected"))
        .expect("rejected folder")
        .filter_map(Result::ok)
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let from = rejected[0].path();
    let to = pki.join("trusted").join(rejected[0].file_name());
    std::fs::create_dir_all(pki.join("trusted")).expect("mkdir");
    std::fs::rename(&from, &to).expect("move");
    api.expect_status("d", "online", Duration::from_secs(20))
        .await;
    rig.finish(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_server_certificate_trusts_that_device_only() {
    let pinned = "kind: Device\nname: pinned\nmodel: small\ntimeout: 500ms\nopcua: { endpoint: \"{url}\", security: sign, server_certificate: \"{cert}\" }\n";
    let other = "kind: Device\nname: other\nmodel: small\ntimeout: 500ms\nopcua: { endpoint: \"{url}\", security: sign }\n";
    let rig = rig(
        SMALL_MODEL,
        &[("pinned", pinned), ("other", other)],
        &[],
        &[],
    )
    .await;
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    api.expect_status("pinned", "online", WAIT).await;
    // The same server, without the pin: not trusted, though another
    // device's file names its certificate.
    api.expect_status("other", "error", WAIT).await;
    let error = api.error("other").await;
    assert!(error.contains("rejected"), "{error}");
    let shared = rig.files.data().join("pki").join("trusted");
    let trusted: Vec<_> = std::fs::read_dir(&shared)
        .map(|d| d.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(
        trusted.is_empty(),
        "the pin went into the shared store: {trusted:?}"
    );
    rig.finish(gateway).await;
}

/// Device `d` (sampling 50 ms, and `settings`) reaching the simulator
/// through a proxy, online, with `level` at `start`.
async fn behind_a_proxy(
    settings: &str,
    start: f64,
) -> (Rig, Proxy, ferrite_gateway::runtime::Gateway, Api) {
    let device = format!(
        "kind: Device\nname: d\nmodel: small\ntimeout: 300ms\nopcua: {{ endpoint: \"{{url}}\", sampling: 50ms{settings} }}\n"
    );
    let rig = rig(SMALL_MODEL, &[("d", &device)], &[], &[]).await;
    let proxy = Proxy::start(rig.sim.addr).await;
    rig.point(&[("d", &device)], &format!("opc.tcp://{}/sim", proxy.addr));
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    api.expect_status("d", "online", WAIT).await;
    rig.set("ns=2;s=Level", Value::Float(start));
    assert!(wait_until(WAIT, || value_is(&api, "d", "level", json!(start))).await);
    (rig, proxy, gateway, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_resumes_after_a_server_restart_and_a_network_drop() {
    let (rig, proxy, gateway, api) = behind_a_proxy("", 1.0).await;

    // The server goes away: values turn stale, the device offline.
    rig.sim.stop().await;
    api.expect_status("d", "offline", WAIT).await;
    assert_eq!(
        api.device("d").await["properties"]["level"]["quality"],
        "stale"
    );

    // It comes back (empty: a reboot); a new session and subscription
    // carry new values without restarting the gateway, and an event says
    // that changes while it was away may be missing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.sim.restart().await.expect("restart");
    api.expect_status("d", "online", Duration::from_secs(20))
        .await;
    assert!(
        wait_until(WAIT, || async {
            !events_of(&api, "opcua_data_may_be_missing")
                .await
                .is_empty()
        })
        .await
    );
    let missing = events_of(&api, "opcua_data_may_be_missing").await;
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0]["device"], "d");
    assert_eq!(missing[0]["severity"], "warning");
    rig.set("ns=2;s=Level", Value::Float(2.0));
    assert!(
        wait_until(WAIT, || value_is(&api, "d", "level", json!(2.0))).await,
        "{}",
        api.device("d").await
    );

    // The network drops every connection; the server never notices.
    proxy.cut();
    rig.set("ns=2;s=Level", Value::Float(3.0));
    assert!(
        wait_until(Duration::from_secs(20), || value_is(
            &api,
            "d",
            "level",
            json!(3.0)
        ))
        .await,
        "{}",
        api.device("d").await
    );
    assert_eq!(api.status("d").await, "online");
    // The server kept the session through the drop: nothing is missing.
    assert_eq!(events_of(&api, "opcua_data_may_be_missing").await.len(), 1);
    rig.finish(gateway).await;
}

/// `device`'s history of `property`: (time in µs, value), oldest first.
async fn history(api: &Api, device: &str, property: &str) -> Vec<(i64, f64)> {
    let (_, body) = api
        .get(&format!(
            "/api/v1/devices/{device}/properties/{property}/history?limit=10000"
        ))
        .await;
    let mut points: Vec<(i64, f64)> = body
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|p| {
                    let ts = ferrite_gateway::time::parse_rfc3339(p["ts"].as_str()?)?;
                    Some((ts, p["value"].as_f64()?))
                })
                .collect()
        })
        .unwrap_or_default();
    points.sort_by_key(|(ts, _)| *ts);
    points
}

/// The events of `kind` in the journal.
async fn events_of(api: &Api, kind: &str) -> Vec<Json> {
    let events = api.get("/api/v1/events?limit=1000").await.1;
    events
        .as_array()
        .map(|all| all.iter().filter(|e| e["kind"] == kind).cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_the_link_is_silent_are_all_stored_after_it_returns() {
    // The server queues up to 200 changes per node while nobody asks.
    let (rig, proxy, gateway, api) = behind_a_proxy(", queue: 200", 0.0).await;

    // The link goes silent for 6 s; 60 changes are made meanwhile. The
    // gateway notices (keep-alives fail), shows the device offline and
    // keeps trying.
    proxy.stall(true);
    let changes = 60;
    for i in 1..=changes {
        rig.set("ns=2;s=Level", Value::Float(f64::from(i)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        api.status("d").await,
        "offline",
        "{}",
        api.device("d").await
    );
    assert_eq!(
        api.device("d").await["properties"]["level"]["quality"],
        "stale"
    );
    proxy.stall(false);

    // Back: the same subscription, and every change it queued.
    api.expect_status("d", "online", Duration::from_secs(30))
        .await;
    let last = json!(f64::from(changes));
    assert!(
        wait_until(WAIT, || value_is(&api, "d", "level", last.clone())).await,
        "{}",
        api.device("d").await
    );
    // From the 0 set before the cut (the node's first value comes before).
    let stored = history(&api, "d", "level").await;
    let values: Vec<f64> = stored.iter().map(|(_, v)| *v).collect();
    let from = values.iter().position(|v| *v == 0.0).unwrap_or(0);
    let want: Vec<f64> = (0..=changes).map(f64::from).collect();
    assert_eq!(
        values[from..],
        want,
        "every change, once and in order: {stored:?}"
    );
    // Each is stamped when it changed on the server (`timestamps: source`,
    // the default), 100 ms apart, not when the gateway got them back.
    let first = stored[from + 1].0;
    let last = stored[from + changes as usize].0;
    let spread = Duration::from_micros(u64::try_from(last - first).unwrap_or(0));
    assert!(
        spread >= Duration::from_secs(5),
        "the changes span {spread:?}: {stored:?}"
    );
    assert!(
        events_of(&api, "opcua_data_may_be_missing")
            .await
            .is_empty(),
        "nothing was missing"
    );
    rig.finish(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_journal_and_survive_a_silent_link() {
    let (rig, proxy, gateway, api) =
        behind_a_proxy(", events: { notifier: \"i=2253\", min_severity: 100 }", 0.0).await;
    // The events item is created after the data items: wait until an
    // event raised now is seen, then check what it carries.
    let mut raised = Vec::new();
    let seen = wait_until(WAIT, || {
        raised.push(
            rig.sim
                .raise_event("Boiler", "too hot", 900)
                .expect("raised"),
        );
        async { !events_of(&api, "opcua_event").await.is_empty() }
    })
    .await;
    assert!(seen, "{}", api.get("/api/v1/events").await.1);
    let first = events_of(&api, "opcua_event").await.pop().expect("one");
    assert_eq!(first["device"], "d");
    assert_eq!(first["severity"], "critical");
    assert_eq!(first["message"], "too hot");
    assert_eq!(first["details"]["source_name"], "Boiler");
    assert_eq!(first["details"]["ua_severity"], 900);
    assert_eq!(first["details"]["event_type"], "i=2041");
    assert!(first["details"]["time"].is_string(), "{first}");
    let hex = |id: &[u8]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(
        raised
            .iter()
            .any(|id| first["details"]["event_id"] == hex(id)),
        "{first}"
    );
    // Below min_severity: left out.
    rig.sim
        .raise_event("Boiler", "just so", 50)
        .expect("raised");
    // The link goes silent; events raised meanwhile wait in the server's
    // queue and arrive once it returns, each once.
    let before = events_of(&api, "opcua_event").await.len();
    proxy.stall(true);
    let mut during = Vec::new();
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        during.push(hex(&rig
            .sim
            .raise_event("Pump", &format!("fault {i}"), 500)
            .expect("raised")));
    }
    api.expect_status("d", "offline", WAIT).await;
    proxy.stall(false);
    api.expect_status("d", "online", Duration::from_secs(30))
        .await;
    let arrived = wait_until(WAIT, || async {
        events_of(&api, "opcua_event").await.len() >= before + during.len()
    })
    .await;
    let all = events_of(&api, "opcua_event").await;
    assert!(arrived, "{all:?}");
    let ids: Vec<&str> = all
        .iter()
        .filter_map(|e| e["details"]["event_id"].as_str())
        .collect();
    for id in &during {
        assert_eq!(ids.iter().filter(|got| *got == id).count(), 1, "{all:?}");
    }
    assert!(all.iter().all(|e| e["message"] != "just so"), "{all:?}");
    let faults = all.iter().filter(|e| e["details"]["source_name"] == "Pump");
    assert!(faults.clone().all(|e| e["severity"] == "warning"));
    assert_eq!(faults.count(), during.len());
    rig.finish(gateway).await;
}

const PUMP_MODEL: &str = r#"kind: DeviceModel
name: pump
properties:
  level: { type: float, opcua: { node: "ns=2;s=Level" } }
methods:
  scale:
    description: value × times
    opcua: { object: "ns=2;s=Pump", method: "ns=2;s=Pump.Scale" }
    inputs:
      - { name: value, type: float, min: 0, max: 1000 }
      - { name: times, type: int }
    outputs:
      - { name: result, type: float }
      - { name: note, type: string }
  reset:
    opcua: { object: "ns=2;s=Pump", method: "ns=2;s=Pump.Reset" }
    outputs:
      - { name: count, type: int }
  ghost:
    opcua: { object: "ns=2;s=Pump", method: "ns=2;s=Pump.Ghost" }
"#;

async fn call_method(api: &Api, device: &str, method: &str, body: Option<Json>) -> (u16, Json) {
    let (status, body, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/devices/{device}/methods/{method}"),
            body.map(|b| b.to_string()),
        )
        .await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_are_called_with_checked_inputs_and_audited() {
    let device = "kind: Device\nname: d\nmodel: pump\ntimeout: 2s\nopcua: { endpoint: \"{url}\", sampling: 50ms }\n";
    // The server declares `times` a UInt16: the call must send that type,
    // which the gateway learns from the method's InputArguments (the
    // simulator refuses any other with Bad_TypeMismatch).
    let rig = rig_serving(PUMP_MODEL, &[("d", device)], &[], &["ghost"], |m| {
        for input in &mut m.inputs {
            if input.name == "times" {
                input.datatype = ferrite_models::model::UaDataType::UInt16;
            }
        }
    })
    .await;
    let scale = NodeId::from_str("ns=2;s=Pump.Scale").expect("node id");
    rig.sim.on_call(&scale, |inputs| match inputs {
        [Value::Float(v), Value::Int(t)] if *t > 0 => Ok(vec![
            Value::Float(v * *t as f64),
            Value::String(format!("{t} times")),
        ]),
        _ => Err(opcua::types::StatusCode::BadInvalidArgument),
    });
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    api.expect_status("d", "online", WAIT).await;

    let (status, body) = call_method(
        &api,
        "d",
        "scale",
        Some(json!({"inputs": {"value": 2.5, "times": 4}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["outputs"],
        json!({"result": 10.0, "note": "4 times"}),
        "{body}"
    );
    assert_eq!(
        rig.sim.calls(&scale),
        vec![vec![Value::Float(2.5), Value::Int(4)]]
    );

    // Refused before the device: each kind of bad input.
    for (inputs, code) in [
        (json!({"value": 2000, "times": 1}), "out_of_range"),
        (json!({"value": 1}), "missing_input"),
        (json!({"value": 1, "times": 1, "speed": 3}), "unknown_input"),
        (json!({"value": "high", "times": 1}), "wrong_type"),
        (json!({"value": 1, "times": 1.5}), "wrong_type"),
    ] {
        let (status, body) =
            call_method(&api, "d", "scale", Some(json!({ "inputs": inputs }))).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{inputs}: {body}"
        );
    }
    let (status, body) = call_method(&api, "d", "scale", Some(json!({"input": {}}))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert_eq!(
        rig.sim.calls(&scale).len(),
        1,
        "no bad call reached the device"
    );

    // Refused by the device, which got the call.
    let (status, body) = call_method(
        &api,
        "d",
        "scale",
        Some(json!({"inputs": {"value": 1, "times": 0}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "device_rejected", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("BadInvalidArgument"),
        "{body}"
    );
    assert_eq!(rig.sim.calls(&scale).len(), 2);

    // No inputs: an empty body will do; the simulator answers with the
    // number of calls.
    let (status, body) = call_method(&api, "d", "reset", None).await;
    assert_eq!(
        (status, &body["outputs"]),
        (200, &json!({"count": 1})),
        "{body}"
    );
    let (status, body) = call_method(&api, "d", "reset", Some(json!({}))).await;
    assert_eq!(
        (status, &body["outputs"]),
        (200, &json!({"count": 2})),
        "{body}"
    );

    // Declared but not on the server; not declared at all.
    let (status, body) = call_method(&api, "d", "ghost", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("device_refused")),
        "{body}"
    );
    let (status, body) = call_method(&api, "d", "nope", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_method")),
        "{body}"
    );
    let (status, body) = call_method(&api, "nobody", "reset", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_device")),
        "{body}"
    );

    // Every call of a known method is audited, with inputs and outputs.
    let (_, audit) = api.get("/api/v1/audit?device=d&limit=100").await;
    let calls: Vec<&Json> = audit
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["method"].is_string())
        .collect();
    assert_eq!(calls.len(), 10, "{audit}");
    let first = calls.last().expect("oldest");
    assert_eq!(first["method"], "scale");
    assert_eq!(first["inputs"], json!({"value": 2.5, "times": 4}));
    assert_eq!(first["outputs"], json!({"result": 10.0, "note": "4 times"}));
    assert_eq!(first["result"], "ok");
    assert!(
        calls
            .iter()
            .any(|e| e["result"] == "out_of_range" && e["outputs"].is_null())
    );

    // The server goes away: the call says so.
    rig.sim.stop().await;
    api.expect_status("d", "offline", WAIT).await;
    let (status, body) = call_method(&api, "d", "reset", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("device_unreachable")),
        "{body}"
    );
    assert!(gateway.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_node_is_named_and_the_rest_still_flow() {
    let model =
        format!("{SMALL_MODEL}  ghost: {{ type: int, opcua: {{ node: \"ns=2;s=Ghost\" }} }}\n");
    let device = "kind: Device\nname: d\nmodel: small\ntimeout: 500ms\nopcua: { endpoint: \"{url}\", sampling: 50ms }\n";
    let rig = rig(&model, &[("d", device)], &[], &["ghost"]).await;
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    api.expect_status("d", "error", WAIT).await;
    let d = api.device("d").await;
    let error = d["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("ghost") && error.contains("BadNodeIdUnknown"),
        "{error}"
    );
    assert_eq!(d["properties"]["ghost"]["quality"], "bad");
    rig.set("ns=2;s=Level", Value::Float(7.5));
    assert!(wait_until(WAIT, || value_is(&api, "d", "level", json!(7.5))).await);
    rig.finish(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_nodes_spread_over_subscriptions() {
    // The simulator allows 1000 items per subscription, like many servers;
    // 2500 nodes need three, and a Publish of 2500 changes must decode.
    const N: usize = 2500;
    let mut model = String::from("kind: DeviceModel\nname: big\nproperties:\n");
    for n in 0..N {
        model.push_str(&format!(
            "  v{n}: {{ type: int, opcua: {{ node: \"ns=2;i={}\" }} }}\n",
            n + 1
        ));
    }
    let device = "kind: Device\nname: d\nmodel: big\ntimeout: 2s\nopcua: { endpoint: \"{url}\", sampling: 0ms, queue: 2 }\n";
    let rig = rig(&model, &[("d", device)], &[], &[]).await;
    let proxy = Proxy::start(rig.sim.addr).await;
    rig.point(&[("d", device)], &format!("opc.tcp://{}/sim", proxy.addr));
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    api.expect_status("d", "online", WAIT).await;
    // Two changes per node within one publishing interval: with a queue of
    // 2, one Publish carries 2000 values of one subscription.
    let ids: Vec<NodeId> = (0..N).map(|n| NodeId::new(2, n as u32 + 1)).collect();
    let before: Vec<Value> = (0..N).map(|n| Value::Int(-(n as i64))).collect();
    let values: Vec<Value> = (0..N).map(|n| Value::Int(n as i64 * 3 + 1)).collect();
    rig.sim.set_many(&ids, &before).expect("set");
    rig.sim.set_many(&ids, &values).expect("set");
    let all_there = || async {
        let d = api.device("d").await;
        (0..N).all(|n| d["properties"][format!("v{n}")]["value"] == json!(n as i64 * 3 + 1))
    };
    let arrived = wait_until(Duration::from_secs(20), all_there).await;
    let d = api.device("d").await;
    let wrong: Vec<String> = (0..N)
        .filter(|n| d["properties"][format!("v{n}")]["value"] != json!(*n as i64 * 3 + 1))
        .take(5)
        .map(|n| format!("v{n}: {}", d["properties"][format!("v{n}")]))
        .collect();
    assert!(
        arrived,
        "{} wrong, such as {wrong:?}; {}",
        wrong.len(),
        d["error"]
    );
    assert_eq!(api.status("d").await, "online");
    // One connection for the endpoints, one for the session: no reconnect.
    assert_eq!(proxy.accepted(), 2);
    // Both queued values of a node are kept, in order.
    let history = api.get("/api/v1/devices/d/properties/v7/history").await.1;
    let values: Vec<&Json> = history
        .as_array()
        .map(|points| points.iter().map(|p| &p["value"]).collect())
        .unwrap_or_default();
    assert!(values.ends_with(&[&json!(-7), &json!(22)]), "{history}");
    rig.finish(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_user_login_and_a_certificate_the_server_does_not_know() {
    use opcua::crypto::{CertificateStore, X509Data};
    let scratch = tempfile::tempdir().expect("tempdir");
    let make = |name: &str| {
        let cert = scratch.path().join(format!("{name}.der"));
        let key = scratch.path().join(format!("{name}.pem"));
        let mut data = X509Data::sample_cert();
        data.common_name = name.into();
        CertificateStore::create_certificate_and_key(&data, true, &cert, &key).expect("cert");
        (cert, key)
    };
    let (robot, robot_key) = make("robot");
    let (stranger, stranger_key) = make("stranger");
    let device = |name: &str, cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "kind: Device\nname: {name}\nmodel: small\ntimeout: 500ms\nopcua:\n  endpoint: \"{{url}}\"\n  security: sign-and-encrypt\n  user_certificate: \"{}\"\n  user_private_key: \"{}\"\n  server_certificate: \"{{cert}}\"\n",
            cert.display(),
            key.display()
        )
    };
    let known = device("known", &robot, &robot_key);
    let unknown = device("unknown", &stranger, &stranger_key);
    let rig = rig(
        SMALL_MODEL,
        &[("known", &known), ("unknown", &unknown)],
        &[UaUser::certificate("robot", &robot)],
        &[],
    )
    .await;
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    rig.set("ns=2;s=Level", Value::Float(5.5));
    api.expect_status("known", "online", WAIT).await;
    assert!(wait_until(WAIT, || value_is(&api, "known", "level", json!(5.5))).await);
    api.expect_status("unknown", "error", WAIT).await;
    let error = api.error("unknown").await;
    assert!(error.contains("refused the login"), "{error}");
    rig.finish(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_deadband_filters_at_the_server() {
    let model = "kind: DeviceModel\nname: small\nproperties:\n  level: { type: float, deadband: 1.0, opcua: { node: \"ns=2;s=Level\" } }\n  mode: { type: int, opcua: { node: \"ns=2;s=Mode\" } }\n";
    let device = "kind: Device\nname: d\nmodel: small\ntimeout: 500ms\nopcua: { endpoint: \"{url}\", sampling: 0ms }\n";
    let rig = rig(model, &[("d", device)], &[], &[]).await;
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    api.expect_status("d", "online", WAIT).await;
    rig.set("ns=2;s=Level", Value::Float(10.0));
    assert!(wait_until(WAIT, || value_is(&api, "d", "level", json!(10.0))).await);
    // A move inside the deadband is not reported; `mode`, without one, is,
    // and its arrival shows the server has published since.
    rig.set("ns=2;s=Level", Value::Float(10.5));
    rig.set("ns=2;s=Mode", Value::Int(42));
    assert!(wait_until(WAIT, || value_is(&api, "d", "mode", json!(42))).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        value_is(&api, "d", "level", json!(10.0)).await,
        "{}",
        api.device("d").await
    );
    rig.set("ns=2;s=Level", Value::Float(11.5));
    assert!(wait_until(WAIT, || value_is(&api, "d", "level", json!(11.5))).await);
    rig.finish(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_at_start_is_picked_up_when_it_comes() {
    let device = "kind: Device\nname: d\nmodel: small\ntimeout: 300ms\nopcua: { endpoint: \"{url}\", mode: poll }\npoll: 100ms\n";
    let rig = rig(SMALL_MODEL, &[("d", device)], &[], &[]).await;
    rig.sim.stop().await;
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    let says_why = || async {
        let d = api.device("d").await;
        d["status"] == "offline"
            && d["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot get the endpoints"))
    };
    assert!(
        wait_until(WAIT, says_why).await,
        "{}",
        api.device("d").await
    );
    rig.sim.restart().await.expect("start");
    rig.set("ns=2;s=Level", Value::Float(8.25));
    assert!(
        wait_until(Duration::from_secs(20), || value_is(
            &api,
            "d",
            "level",
            json!(8.25)
        ))
        .await,
        "{}",
        api.device("d").await
    );
    rig.finish(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfiguring_one_device_leaves_the_other_session_alone() {
    let device = |name: &str, sampling: &str| {
        format!(
            "kind: Device\nname: {name}\nmodel: small\ntimeout: 300ms\nopcua: {{ endpoint: \"{{url}}\", sampling: {sampling} }}\n"
        )
    };
    let (one, two) = (device("one", "50ms"), device("two", "50ms"));
    let rig = rig(SMALL_MODEL, &[("one", &one), ("two", &two)], &[], &[]).await;
    // A proxy per device, so that each one's connections show apart.
    let (p1, p2) = (
        Proxy::start(rig.sim.addr).await,
        Proxy::start(rig.sim.addr).await,
    );
    rig.point(&[("one", &one)], &format!("opc.tcp://{}/sim", p1.addr));
    rig.point(&[("two", &two)], &format!("opc.tcp://{}/sim", p2.addr));
    let gateway = rig.files.start().await;
    let api = Api::new(gateway.addr);
    api.expect_status("one", "online", WAIT).await;
    api.expect_status("two", "online", WAIT).await;
    let (before1, before2) = (p1.accepted(), p2.accepted());

    // `two` samples every 200 ms from now on (through the API).
    let edited = device("two", "200ms").replace("{url}", &format!("opc.tcp://{}/sim", p2.addr));
    let (status, body) = api.put_raw("/api/v1/devices/two", edited).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["summary"]["devices"]["changed"],
        json!(["two"]),
        "{body}"
    );
    api.expect_status("two", "online", WAIT).await;
    let reopened = wait_until(WAIT, || async { p2.accepted() > before2 }).await;
    assert!(reopened, "two has a new session");
    // `one` kept its session and its subscription: values flow on.
    rig.set("ns=2;s=Level", Value::Float(7.5));
    assert!(wait_until(WAIT, || value_is(&api, "one", "level", json!(7.5))).await);
    assert!(wait_until(WAIT, || value_is(&api, "two", "level", json!(7.5))).await);
    assert_eq!(p1.accepted(), before1, "one's session was never reopened");
    rig.finish(gateway).await;
}

/// `ferrite discover opcua` as a user runs it (the binary, over
/// sign-and-encrypt with a password): the model it writes passes `check`
/// unchanged, types every node after its DataType, lists the method as
/// skipped, and a gateway on the written files reads every value the server
/// holds and writes through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_writes_a_model_the_gateway_runs_as_is() {
    let model = format!(
        "{TYPES_MODEL}methods:\n  reset:\n    opcua: {{ object: \"ns=2;s=Pump\", method: \"ns=2;s=Pump.Reset\" }}\n"
    );
    let device = "kind: Device\nname: d\nmodel: all\nopcua: { endpoint: \"{url}\" }\n";
    let rig = rig(
        &model,
        &[("d", device)],
        &[UaUser::password("operator", "s3cret")],
        &[],
    )
    .await;
    for (property, from_server, _) in cases() {
        rig.set(node_of(property), to_value(&from_server));
    }
    let out = common::Files::new();
    out.write("password.txt", "s3cret\n");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["discover", "opcua", &rig.sim.url(), "--name", "found"])
        .args(["--security", "sign-and-encrypt", "--username", "operator"])
        .arg("--out")
        .arg(out.dir.path())
        .arg("--password-file")
        .arg(out.dir.path().join("password.txt"))
        .arg("--server-certificate")
        .arg(rig.sim.certificate_path())
        .arg("--pki")
        .arg(out.data().join("pki"))
        .output()
        .await
        .expect("ferrite discover runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("12 variables as properties, 1 skipped"),
        "{stdout}"
    );
    assert!(
        stdout.contains("skipped Ferrite/s=Pump/reset (ns=2;s=Pump.Reset): a method"),
        "{stdout}"
    );

    // `check` passes on the files as written, and they say what the server does.
    let project = out.project();
    let found = &project.models["found"].value;
    assert_eq!(found.properties.len(), 12, "{:?}", found.properties.keys());
    for (property, _, _) in cases() {
        let p = &found.properties[&format!("Ferrite.{property}")];
        let binding = p.opcua.as_ref().expect("an opcua binding");
        assert_eq!(binding.node.0, node_of(property));
        assert_eq!(
            p.access,
            ferrite_models::model::Access::ReadWrite,
            "{property}"
        );
        assert_eq!(
            p.ty,
            ferrite_drivers::opcua::discover::value_type(binding.datatype.expect("a datatype")),
            "{property}"
        );
    }
    let datatype = |p: &str| found.properties[p].opcua.as_ref().and_then(|b| b.datatype);
    assert_eq!(
        datatype("Ferrite.u16"),
        Some(ferrite_models::model::UaDataType::UInt16)
    );
    assert_eq!(
        datatype("Ferrite.f32"),
        Some(ferrite_models::model::UaDataType::Float)
    );

    // A gateway on those files reads every value and writes through them.
    let gateway = out.start().await;
    let api = Api::new(gateway.addr);
    api.expect_status("found", "online", WAIT).await;
    for (property, from_server, _) in cases() {
        let name = format!("Ferrite.{property}");
        assert!(
            wait_until(WAIT, || value_is(&api, "found", &name, from_server.clone())).await,
            "{name}: wanted {from_server}, have {}",
            api.device("found").await["properties"][&name]
        );
    }
    let (status, body) = api.write("found", "Ferrite.u16", json!(4242)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rig.get(node_of("u16")), Some(Value::Int(4242)));

    // Discovering again over the same files is refused without --force.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["discover", "opcua", &rig.sim.url(), "--name", "found"])
        .arg("--out")
        .arg(out.dir.path())
        .output()
        .expect("ferrite discover runs");
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists; pass --force"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(gateway.stop().await);
    rig.sim.stop().await;
}

/// A server that is not there, and a root it does not have: clear errors,
/// exit code 1, and no files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_errors_are_clear_and_leave_no_files() {
    let rig = rig(SMALL_MODEL, &[], &[], &[]).await;
    let out = tempfile::tempdir().expect("tempdir");
    let discover = |url: String, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(["discover", "opcua", &url, "--name", "x", "--timeout", "1"])
            .args(extra)
            .arg("--out")
            .arg(out.path())
            .arg("--pki")
            .arg(out.path().join("pki"))
            .output()
            .expect("ferrite discover runs")
    };
    let port = common::free_port();
    let cases = [
        (
            format!("opc.tcp://127.0.0.1:{port}/none"),
            vec![],
            "cannot get the endpoints",
        ),
        (
            rig.sim.url(),
            vec!["--root", "ns=2;s=Nowhere"],
            "has no node ns=2;s=Nowhere",
        ),
        (
            rig.sim.url(),
            vec!["--root", "ns=2;x"],
            "cannot parse NodeId",
        ),
        (
            rig.sim.url(),
            vec!["--security", "loud"],
            "unknown variant `loud`",
        ),
        ("http://x".into(), vec![], "an endpoint is opc.tcp://"),
    ];
    for (url, extra, wanted) in cases {
        let run = discover(url.clone(), &extra);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{url} {extra:?}: {stderr}");
        assert!(stderr.contains(wanted), "{url} {extra:?}: {stderr}");
    }
    assert!(!out.path().join("models").exists());
    assert!(!out.path().join("devices").exists());
    rig.sim.stop().await;
}
