//! Helpers for the end-to-end tests: projects in temporary folders,
//! simulated devices on port 0, HTTP calls, and waiting for conditions.

#![allow(dead_code, missing_docs)]

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU8, AtomicUsize};
use std::time::Duration;

use ferrite_gateway::runtime::{Gateway, Options};
use ferrite_models::codec;
use ferrite_models::model::ModbusBinding;
use ferrite_models::{Project, Value};
use ferrite_sim::bank::Endpoint;
use serde_json::Value as Json;

/// A project in a temporary folder.
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["models", "devices", "rules"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        let files = Files { dir };
        // Tests keep their certificates and secrets in temporary folders
        // of their own: the system's temporary folder is their secrets_dir.
        let secrets = std::env::temp_dir();
        files.write(
            "ferrite.toml",
            &format!(
                "[gateway]\nid = \"test\"\ndata_dir = \"data\"\nsecrets_dir = {:?}\n[api]\nlisten = \"127.0.0.1:0\"\n",
                secrets.display().to_string()
            ),
        );
        files
    }

    pub fn write(&self, name: &str, text: &str) -> &Files {
        std::fs::write(self.dir.path().join(name), text).expect("write");
        self
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("ferrite.toml")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Loads and checks the project; panics with the findings if it fails.
    pub fn project(&self) -> Project {
        let report = ferrite_models::check(&self.config());
        let shown: Vec<String> = report.diagnostics.iter().map(ToString::to_string).collect();
        assert!(report.is_ok(), "{shown:#?}");
        report.project
    }

    pub async fn start(&self) -> Gateway {
        let options = Options {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(self.data()),
            snapshot: None,
        };
        Gateway::start(self.project(), options)
            .await
            .expect("gateway starts")
    }
}

/// A TCP device file for `model` at `port`.
pub fn tcp_device(name: &str, model: &str, port: u16, unit: u8, poll: &str) -> String {
    format!(
        "kind: Device\nname: {name}\nmodel: {model}\npoll: {poll}\ntimeout: 300ms\nmodbus-tcp: {{ host: 127.0.0.1, port: {port}, unit: {unit} }}\n"
    )
}

/// Puts `value` into the simulator's bank as the binding encodes it.
pub fn put(endpoint: &Arc<Endpoint>, unit: u8, binding: &ModbusBinding, value: &Value) {
    let encoded = codec::encode(binding, value).expect("encodable");
    endpoint.add_unit(unit);
    endpoint
        .units()
        .get_mut(&unit)
        .expect("unit")
        .bank
        .put(binding, &encoded);
}

/// Waits up to `limit` for `check` to hold, polling every 20 ms.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small HTTP client for the API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    client: reqwest::Client,
    token: Option<String>,
}

impl Api {
    pub fn new(addr: std::net::SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            token: None,
        }
    }

    /// The same API, called with `Authorization: Bearer TOKEN`.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            base: self.base.clone(),
            client: self.client.clone(),
            token: Some(token.to_string()),
        }
    }

    /// Any call; the status, the JSON body (or null) and the headers.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, Json, reqwest::header::HeaderMap) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let res = request.send().await.expect("HTTP call");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, res.json().await.unwrap_or(Json::Null), headers)
    }

    pub async fn get(&self, path: &str) -> (u16, Json) {
        let (status, body, _) = self.call(reqwest::Method::GET, path, None).await;
        (status, body)
    }

    pub async fn put_raw(&self, path: &str, body: String) -> (u16, Json) {
        let (status, body, _) = self.call(reqwest::Method::PUT, path, Some(body)).await;
        (status, body)
    }

    pub async fn write(&self, device: &str, property: &str, value: Json) -> (u16, Json) {
        let body = serde_json::json!({ "value": value }).to_string();
        self.put_raw(
            &format!("/api/v1/devices/{device}/properties/{property}"),
            body,
        )
        .await
    }

    pub async fn device(&self, id: &str) -> Json {
        self.get(&format!("/api/v1/devices/{id}")).await.1
    }

    pub async fn status(&self, id: &str) -> String {
        self.device(id).await["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The device's `error` text, empty when it has none.
    pub async fn error(&self, id: &str) -> String {
        self.device(id).await["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until the device shows `status`.
    pub async fn wait_status(&self, id: &str, status: &str, limit: Duration) -> bool {
        wait_until(limit, || async { self.status(id).await == status }).await
    }

    /// Waits until the device shows `status`; fails the test with the
    /// device's state if it does not within `limit`.
    #[track_caller]
    pub fn expect_status<'a>(
        &'a self,
        id: &'a str,
        status: &'a str,
        limit: Duration,
    ) -> impl Future<Output = ()> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            if !self.wait_status(id, status, limit).await {
                panic!(
                    "{caller}: `{id}` is not {status} after {limit:?}: {}",
                    self.device(id).await
                );
            }
        }
    }
}

/// A device `d` whose register `n` counts up every 20 ms and is polled every
/// 20 ms, so nearly every poll is a change. Returns the simulator and the
/// counting task.
pub async fn counting_sim(
    files: &Files,
) -> (ferrite_sim::server::TcpSim, tokio::task::JoinHandle<()>) {
    let sim = ferrite_sim::server::TcpSim::start(
        "127.0.0.1:0".parse().expect("addr"),
        Endpoint::new(true),
    )
    .await
    .expect("sim");
    files
        .write(
            "models/t.yaml",
            "kind: DeviceModel\nname: t\nproperties:\n  n: { type: int, modbus: { table: holding, address: 0, format: u32 } }\n",
        )
        .write("devices/d.yaml", &tcp_device("d", "t", sim.addr.port(), 1, "20ms"));
    let binding = files
        .project()
        .property("d", "n")
        .and_then(|p| p.modbus.clone())
        .expect("binding");
    let endpoint = sim.endpoint.clone();
    let counter = tokio::spawn(async move {
        for i in 0i64.. {
            put(&endpoint, 1, &binding, &Value::Int(i));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (sim, counter)
}

/// A proxy that counts connections and can cut or stall them.
pub struct Proxy(ferrite_sim::link::Proxy);

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> Proxy {
        Proxy(
            ferrite_sim::link::Proxy::start(target)
                .await
                .expect("a proxy on 127.0.0.1"),
        )
    }
}

impl std::ops::Deref for Proxy {
    type Target = ferrite_sim::link::Proxy;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A gateway or control-plane process serving its REST API.
pub struct ServingProcess {
    pub child: Child,
    pub api: Api,
    /// The process's log (stderr), for failure messages.
    pub log: tempfile::NamedTempFile,
}

/// A test that fails (panics) still stops its processes: without this, a
/// failed run left its gateways and control planes running, polling and
/// holding ports, under every later run on the machine.
impl Drop for ServingProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl ServingProcess {
    pub fn log_tail(&self) -> String {
        file_tail(self.log.path(), 4000)
    }
}

/// The last `bytes` of a log file, for a failure's message (empty if it
/// cannot be read).
pub fn file_tail(path: &std::path::Path, bytes: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    text.get(start..).unwrap_or_default().to_string()
}

/// A free local port for a process to listen on later (or again, after a
/// restart), taken below Linux's ephemeral range (32768-60999): a port the
/// kernel handed out, as `bind(":0")` did here before, can be handed out
/// again at any moment as the source port of another test's connection, and
/// a control plane restarted on it then found it taken. Within a test
/// binary each call gets another port (a stride through 20000-31999).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // 7919 is prime to 12 000: the stride visits every port once.
        let port = FIRST + (start + n.wrapping_mul(7919) % SPAN) % SPAN;
        let port = u16::try_from(port).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999")
}

/// Starts `BINARY ARGS --listen 127.0.0.1:PORT` and waits until it serves.
pub async fn spawn_serving(
    binary: &str,
    args: &[&std::ffi::OsStr],
    stdout: Stdio,
) -> ServingProcess {
    spawn_serving_with_env(binary, args, &[], stdout).await
}

/// [`spawn_serving`] with extra environment variables for the child.
pub async fn spawn_serving_with_env(
    binary: &str,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
    stdout: Stdio,
) -> ServingProcess {
    let port = free_port();
    let log = tempfile::NamedTempFile::new().expect("log file");
    let child = Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(stdout)
        .stderr(Stdio::from(log.reopen().expect("log file")))
        .spawn()
        .expect("ferrite starts");
    let api = Api::new(format!("127.0.0.1:{port}").parse().expect("addr"));
    let up = wait_until(Duration::from_secs(30), || async {
        reqwest::get(format!("{}/healthz", api.base))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let running = ServingProcess { child, api, log };
    assert!(
        up,
        "{binary} did not start serving:\n{}",
        running.log_tail()
    );
    running
}

/// Sends signal `name` (TERM, KILL, ...) to `child`.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name}");
}

/// With `FERRITE_TEST_POSTGRES=postgres://USER:PASSWORD@HOST:PORT/DB` (a
/// role that may create databases), a fresh database `NAME` on that
/// server (dropped first if a former run left it), and its URL; without
/// it, None. CI starts Debian's PostgreSQL and sets it.
#[allow(dead_code)]
pub fn fresh_database(name: &str) -> Option<String> {
    let admin = std::env::var("FERRITE_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        let out = std::process::Command::new("psql")
            .args([admin.as_str(), "-q", "-v", "ON_ERROR_STOP=1", "-c", &sql])
            .output()
            .expect("psql (postgresql-client) is needed with FERRITE_TEST_POSTGRES");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (base, _) = admin.rsplit_once('/').expect("a URL ending in /DATABASE");
    Some(format!("{base}/{name}"))
}

/// A proxy in front of an MQTT broker that can make the broker seem to forget
/// a client's subscriptions while the connection stays up (as a NATS node's
/// restart did): from [`forget`](ForgetfulBroker::forget) on, the broker's
/// PUBLISHes to the client are dropped (and acknowledged to the broker, as
/// if they had never been routed), until the client SUBSCRIBEs again or, with
/// `until_reconnect`, until it connects anew. It reads MQTT's framing only:
/// a fixed header and the remaining length, then the packet.
pub struct ForgetfulBroker {
    pub port: u16,
    state: Arc<Forgetting>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Forgetting {
    /// 0 hearing; 1 deaf until a SUBSCRIBE; 2 deaf until a new connection.
    mode: AtomicU8,
    connections: AtomicUsize,
    subscribes_while_deaf: AtomicUsize,
    dropped: AtomicUsize,
}

impl ForgetfulBroker {
    pub async fn start(broker: std::net::SocketAddr) -> ForgetfulBroker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port on 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Forgetting::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(broker).await else {
                    continue;
                };
                let _ = shared.mode.compare_exchange(2, 0, SeqCst, SeqCst);
                shared.connections.fetch_add(1, SeqCst);
                tokio::spawn(forgetful_connection(client, upstream, shared.clone()));
            }
        });
        ForgetfulBroker { port, state, task }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// From now on the client hears nothing, until it subscribes again (or,
    /// with `until_reconnect`, until it connects again).
    pub fn forget(&self, until_reconnect: bool) {
        self.state.mode.store(1 + u8::from(until_reconnect), SeqCst);
    }

    /// Whether the client hears the broker.
    pub fn hearing(&self) -> bool {
        self.state.mode.load(SeqCst) == 0
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(SeqCst)
    }

    /// SUBSCRIBEs the client sent while it heard nothing.
    pub fn subscribes_while_deaf(&self) -> usize {
        self.state.subscribes_while_deaf.load(SeqCst)
    }

    /// PUBLISHes dropped on their way to the client.
    pub fn dropped(&self) -> usize {
        self.state.dropped.load(SeqCst)
    }
}

impl Drop for ForgetfulBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One MQTT packet off a stream: the fixed header's first byte and the
/// whole packet's bytes (header included). `None` at the end of the stream.
async fn mqtt_packet(stream: &mut tokio::net::tcp::OwnedReadHalf) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let first = stream.read_u8().await.ok()?;
    let mut bytes = vec![first];
    let mut length = 0usize;
    for shift in [0, 7, 14, 21] {
        let byte = stream.read_u8().await.ok()?;
        bytes.push(byte);
        length |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let start = bytes.len();
    bytes.resize(start + length, 0);
    stream.read_exact(&mut bytes[start..]).await.ok()?;
    Some((first, bytes))
}

async fn forgetful_connection(
    client: tokio::net::TcpStream,
    upstream: tokio::net::TcpStream,
    state: Arc<Forgetting>,
) {
    use tokio::io::AsyncWriteExt;
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut broker_rx, broker_tx) = upstream.into_split();
    // Both directions write to the broker: whole packets, one at a time.
    let broker_tx = Arc::new(tokio::sync::Mutex::new(broker_tx));
    let to_broker = broker_tx.clone();
    let subscribe_state = state.clone();
    let up = tokio::spawn(async move {
        while let Some((first, packet)) = mqtt_packet(&mut client_rx).await {
            if first >> 4 == 8 {
                // SUBSCRIBE: a client that asks again is heard again.
                if subscribe_state.mode.load(SeqCst) != 0 {
                    subscribe_state.subscribes_while_deaf.fetch_add(1, SeqCst);
                }
                let _ = subscribe_state.mode.compare_exchange(1, 0, SeqCst, SeqCst);
            }
            if to_broker.lock().await.write_all(&packet).await.is_err() {
                break;
            }
        }
        let _ = to_broker.lock().await.shutdown().await;
    });
    while let Some((first, packet)) = mqtt_packet(&mut broker_rx).await {
        if first >> 4 == 3 && state.mode.load(SeqCst) != 0 {
            state.dropped.fetch_add(1, SeqCst);
            let qos = (first >> 1) & 3;
            if qos == 1 {
                // The broker routed it: it waits for a PUBACK. Give it one
                // so its window stays open, as if nothing had been routed.
                // The fixed header ends with the remaining length's last
                // byte (the first without its high bit).
                let header = 1 + (1..=4).find(|i| packet[*i] & 0x80 == 0).unwrap_or(4);
                let topic_len =
                    usize::from(u16::from_be_bytes([packet[header], packet[header + 1]]));
                let id = &packet[header + 2 + topic_len..header + 4 + topic_len];
                let puback = [0x40, 0x02, id[0], id[1]];
                if broker_tx.lock().await.write_all(&puback).await.is_err() {
                    break;
                }
            }
            continue;
        }
        if client_tx.write_all(&packet).await.is_err() {
            break;
        }
    }
    let _ = client_tx.shutdown().await;
    up.abort();
}
