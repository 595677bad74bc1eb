//! Trust on the cloud side, against the real `ferrite-cloud` process:
//! gateways enrolled with `ferrite-cloud gateway add`, their logins and
//! topics held by the embedded broker's guard, and the REST API's tokens.
//! The MQTT clients are rumqttc's, over real sockets.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
};
use serde_json::Value as Json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

const CLOUD: &str = env!("CARGO_BIN_EXE_ferrite-cloud");

/// The control plane, killed when dropped.
struct Cloud {
    child: Child,
    rest: String,
    mqtt: u16,
    dir: tempfile::TempDir,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Enrols `id` with the real command; returns its secret.
fn enrol(config: &Path, id: &str) -> String {
    let out = Command::new(CLOUD)
        .args(["gateway", "add", id, "--config"])
        .arg(config)
        .output()
        .expect("gateway add runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("username = \"{id}\"")),
        "{printed}"
    );
    let secret_file = config
        .with_file_name("gateways")
        .join(format!("{id}.secret"));
    std::fs::read_to_string(secret_file)
        .expect("secret")
        .trim()
        .to_string()
}

/// A control plane with gateways `a` and `b` enrolled and `extra` config.
async fn cloud(extra: &str) -> (Cloud, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cloud.toml");
    std::fs::write(&config, extra).expect("config");
    let (a, b) = (enrol(&config, "a"), enrol(&config, "b"));
    let (rest, mqtt) = (free_port(), free_port());
    let child = Command::new(CLOUD)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{rest}")])
        .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferrite-cloud starts");
    let mut cloud = Cloud {
        child,
        rest: format!("http://127.0.0.1:{rest}"),
        mqtt,
        dir,
    };
    // It says so on stdout once it serves (REST and broker).
    let stdout = cloud.child.stdout.take().expect("stdout");
    let said = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(20), said)
        .await
        .expect("ferrite-cloud starts within 20 s")
        .expect("join")
        .expect("read");
    assert!(line.contains("REST on"), "{line}");
    (cloud, a, b)
}

fn client(port: u16, id: &str, login: Option<(&str, &str)>) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    AsyncClient::new(options, 16)
}

/// The first answer to a CONNECT: Ok, or the refusal's code.
async fn connack(eventloop: &mut EventLoop) -> Result<(), ConnectReturnCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll())
            .await
            .expect("an answer within 5 s")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(e) => panic!("unexpected: {e}"),
        }
    }
}

/// Polls until the connection ends (true) or `within` passes (false).
async fn dropped_within(eventloop: &mut EventLoop, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => return false,
            Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Publishes received within `within`, by topic.
async fn received(eventloop: &mut EventLoop, within: Duration) -> Vec<String> {
    let mut topics = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(event) = tokio::time::timeout_at(deadline, eventloop.poll()).await {
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => topics.push(p.topic.clone()),
            Ok(_) => {}
            Err(e) => panic!("the connection ended: {e}"),
        }
    }
    topics
}

#[tokio::test]
async fn only_enrolled_gateways_log_in_and_each_keeps_to_its_own_topics() {
    let (cloud, secret_a, secret_b) = cloud("").await;
    let port = cloud.mqtt;

    // No login, a wrong secret, another gateway's secret: refused.
    let (_c, mut e) = client(port, "ferrite-a", None);
    assert_eq!(
        connack(&mut e).await,
        Err(ConnectReturnCode::BadUserNamePassword)
    );
    let (_c, mut e) = client(port, "ferrite-a", Some(("a", "not-the-secret")));
    assert_eq!(
        connack(&mut e).await,
        Err(ConnectReturnCode::BadUserNamePassword)
    );
    let (_c, mut e) = client(port, "ferrite-a", Some(("a", &secret_b)));
    assert_eq!(
        connack(&mut e).await,
        Err(ConnectReturnCode::BadUserNamePassword)
    );
    // B's own login under A's client id (to take A's session over).
    let (_c, mut e) = client(port, "ferrite-a", Some(("b", &secret_b)));
    assert_eq!(connack(&mut e).await, Err(ConnectReturnCode::BadClientId));

    // A logs in and subscribes to its own topics and the cloud's status.
    let (a, mut a_events) = client(port, "ferrite-a", Some(("a", &secret_a)));
    assert_eq!(connack(&mut a_events).await, Ok(()));
    a.subscribe("ferrite/v1/gw/a/down/#", QoS::AtLeastOnce)
        .await
        .expect("sub");
    a.subscribe("ferrite/v1/cloud/status", QoS::AtLeastOnce)
        .await
        .expect("sub");
    let first = received(&mut a_events, Duration::from_millis(800)).await;
    assert!(
        first.iter().any(|t| t == "ferrite/v1/cloud/status"),
        "{first:?}"
    );

    // B forges an Ack, a Resume and a ConfigBundle on A's topics: B is cut
    // off at the first, and A receives none of them.
    for kind in ["ack", "resume", "config"] {
        let (b, mut b_events) = client(port, "ferrite-b", Some(("b", &secret_b)));
        assert_eq!(connack(&mut b_events).await, Ok(()));
        b.publish(
            format!("ferrite/v1/gw/a/down/{kind}"),
            QoS::AtLeastOnce,
            false,
            vec![8, 255, 1],
        )
        .await
        .expect("queued");
        assert!(
            dropped_within(&mut b_events, Duration::from_secs(3)).await,
            "{kind}: B stays connected"
        );
    }
    // B subscribes to every gateway's downward topics, or A's upward ones.
    for filter in ["ferrite/v1/gw/+/down/#", "ferrite/v1/gw/a/up/#", "#"] {
        let (b, mut b_events) = client(port, "ferrite-b", Some(("b", &secret_b)));
        assert_eq!(connack(&mut b_events).await, Ok(()));
        b.subscribe(filter, QoS::AtLeastOnce).await.expect("queued");
        assert!(
            dropped_within(&mut b_events, Duration::from_secs(3)).await,
            "{filter}: B stays subscribed"
        );
    }
    // A gateway may not publish on its own downward topics either (only the
    // control plane may).
    let (a2, mut a2_events) = client(port, "ferrite-a", Some(("a", &secret_a)));
    assert_eq!(connack(&mut a2_events).await, Ok(()));
    a2.publish(
        "ferrite/v1/gw/a/down/ack",
        QoS::AtLeastOnce,
        false,
        vec![8, 1],
    )
    .await
    .expect("queued");
    assert!(dropped_within(&mut a2_events, Duration::from_secs(3)).await);

    // A second connection as A took the first's session (same client id);
    // what matters is that nothing forged reached A's topics: a fresh A
    // sees only the cloud's retained status.
    let (a, mut a_events) = client(port, "ferrite-a", Some(("a", &secret_a)));
    assert_eq!(connack(&mut a_events).await, Ok(()));
    a.subscribe("ferrite/v1/gw/a/down/#", QoS::AtLeastOnce)
        .await
        .expect("sub");
    let forged = received(&mut a_events, Duration::from_millis(800)).await;
    assert!(forged.is_empty(), "{forged:?}");

    // B's own traffic goes through: a Hello reaches the control plane.
    let (b, mut b_events) = client(port, "ferrite-b", Some(("b", &secret_b)));
    assert_eq!(connack(&mut b_events).await, Ok(()));
    b.subscribe("ferrite/v1/gw/b/down/#", QoS::AtLeastOnce)
        .await
        .expect("sub");
    let hello = ferrite_sync::wire::Hello {
        gateway_id: "b".into(),
        epoch: 7,
        ..Default::default()
    };
    b.publish(
        "ferrite/v1/gw/b/up/hello",
        QoS::AtLeastOnce,
        false,
        prost::Message::encode_to_vec(&hello),
    )
    .await
    .expect("queued");
    let answers = received(&mut b_events, Duration::from_secs(2)).await;
    assert!(
        answers.iter().any(|t| t == "ferrite/v1/gw/b/down/resume"),
        "{answers:?}"
    );

    let stats: Json = reqwest::get(format!("{}/api/v1/stats", cloud.rest))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["broker_logins_refused"], 4, "{stats}");
    assert_eq!(stats["broker_packets_refused"], 7, "{stats}");
}

#[tokio::test]
async fn an_enrolment_while_running_is_taken_at_the_next_connect() {
    let (cloud, _, _) = cloud("").await;
    let config = cloud.dir.path().join("cloud.toml");
    let (_c, mut e) = client(cloud.mqtt, "ferrite-c", Some(("c", "x")));
    assert_eq!(
        connack(&mut e).await,
        Err(ConnectReturnCode::BadUserNamePassword)
    );
    // Past the file system's clock granularity.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let secret = enrol(&config, "c");
    let (_c, mut e) = client(cloud.mqtt, "ferrite-c", Some(("c", &secret)));
    assert_eq!(connack(&mut e).await, Ok(()));
}

fn token_lines(name: &str, role: &str, token: &str) -> String {
    let digest: String = sha256(token);
    format!("[[api.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_sha256 = \"{digest}\"\n")
}

fn sha256(text: &str) -> String {
    ferrite_models::tokens::sha256_hex(text)
}

#[tokio::test]
async fn the_rest_api_takes_tokens_by_role_and_audits_who() {
    let extra = [
        token_lines("viewer", "read", "t-read"),
        token_lines("operator", "write", "t-write"),
        token_lines("ops", "admin", "t-admin"),
    ]
    .join("\n");
    let (cloud, _, _) = cloud(&extra).await;
    let http = reqwest::Client::new();
    let base = format!("{}/api/v1", cloud.rest);
    let call = |method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Json>| {
        let mut request = http.request(method, format!("{base}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.expect("answer");
            let status = response.status().as_u16();
            let body: Json = response.json().await.unwrap_or(Json::Null);
            (status, body)
        }
    };
    use reqwest::Method;
    // Open: the health check only.
    assert!(
        reqwest::get(format!("{}/healthz", cloud.rest))
            .await
            .expect("h")
            .status()
            .is_success()
    );
    let (status, body) = call(Method::GET, "/gateways", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(
        call(Method::GET, "/gateways", Some("t-wrong"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        call(Method::GET, "/gateways", Some("t-read"), None).await.0,
        200
    );
    assert_eq!(
        call(Method::GET, "/stats", Some("t-read"), None).await.0,
        200
    );

    let desired = Some(serde_json::json!({"setpoint": 21.5}));
    let (status, body) = call(
        Method::PUT,
        "/gateways/a/devices/d/desired",
        Some("t-read"),
        desired.clone(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    // The write role gets past auth (the gateway has not connected yet).
    let (status, body) = call(
        Method::PUT,
        "/gateways/a/devices/d/desired",
        Some("t-write"),
        desired,
    )
    .await;
    assert!(status != 401 && status != 403, "{status} {body}");

    let bundle = Some(serde_json::json!({"models": {}, "devices": {}, "rules": {}}));
    assert_eq!(
        call(
            Method::PUT,
            "/gateways/a/config",
            Some("t-write"),
            bundle.clone()
        )
        .await
        .0,
        403
    );
    let (status, body) = call(
        Method::PUT,
        "/gateways/a/config",
        Some("t-admin"),
        bundle.clone(),
    )
    .await;
    assert_eq!(status, 202, "{body}");

    // A page on another site cannot ride on an admin's browser: a write
    // with a foreign Origin is refused before auth, and nothing is sent.
    let response = http
        .put(format!("{base}/gateways/a/config"))
        .bearer_auth("t-admin")
        .header("origin", "https://evil.example")
        .json(&bundle)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 403);
    let body: Json = response.json().await.unwrap_or(Json::Null);
    assert_eq!(body["error"]["code"], "cross_origin", "{body}");
    // The framework's own errors come in the error shape: a method the path
    // does not take.
    let response = http
        .delete(format!("{base}/stats"))
        .bearer_auth("t-admin")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 405);
    let body: Json = response.json().await.unwrap_or(Json::Null);
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    // The document declares bearer auth, since this control plane has tokens.
    let doc: Json = reqwest::get(format!("{base}/openapi.json"))
        .await
        .expect("document")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        doc["paths"]["/api/v1/gateways"]["get"]["security"],
        serde_json::json!([{"bearer": []}])
    );
    assert!(doc["paths"]["/api/v1/gateways"]["get"]["responses"]["401"].is_object());

    let (status, audit) = call(Method::GET, "/audit", Some("t-read"), None).await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit["entries"].as_array().expect("entries");
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "ops" && e["action"] == "config_bundle" && e["gateway"] == "a"),
        "{audit}"
    );
}

#[tokio::test]
async fn without_gateways_or_tokens_it_serves_loopback_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, words) in [
        ("--listen", "REST API"),
        ("--mqtt-listen", "embedded broker"),
    ] {
        let out = Command::new(CLOUD)
            .args(["run", flag, "0.0.0.0:0", "--data-dir"])
            .arg(dir.path())
            .output()
            .expect("runs");
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(words) && said.contains("loopback only"),
            "{said}"
        );
    }
}

#[tokio::test]
async fn the_rest_api_serves_https_with_its_certificate() {
    let pki = tempfile::tempdir().expect("tempdir");
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    let (cert, key) = (pki.path().join("api.crt"), pki.path().join("api.key"));
    std::fs::write(&cert, issued.cert.pem()).expect("cert");
    std::fs::write(&key, issued.signing_key.serialize_pem()).expect("key");
    let extra = format!(
        "{}[api.tls]\ncertificate = {:?}\nprivate_key = {:?}\n",
        token_lines("viewer", "read", "t-read"),
        cert.display().to_string(),
        key.display().to_string()
    );
    let (cloud, _, _) = cloud(&extra).await;
    let port: u16 = cloud
        .rest
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(issued.cert.der().clone()).expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let get = |token: &'static str| {
        let connector = connector.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
            let request = format!(
                "GET /api/v1/gateways HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            );
            tls.write_all(request.as_bytes()).await.expect("send");
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    let answer = get("t-read").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = get("t-wrong").await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // Plain HTTP on the HTTPS port gets no answer.
    let plain = reqwest::get(format!("{}/api/v1/gateways", cloud.rest)).await;
    assert!(plain.is_err() || !plain.expect("answer").status().is_success());
}

#[tokio::test]
async fn garbage_and_oversized_connects_are_closed_and_the_broker_serves_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (cloud, secret_a, _) = cloud("").await;
    let hostile: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\n\r\n",
        // A CONNECT that claims 2 MiB: closed before the guard holds it.
        &[0x10, 0x80, 0x80, 0x80, 0x01],
        // A PUBLISH before any CONNECT.
        &[0x30, 0x05, 0x00, 0x01, b'x', b'h', b'i'],
        // A remaining length that never ends.
        &[0x10, 0xff, 0xff, 0xff, 0xff, 0xff],
    ];
    for bytes in hostile {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", cloud.mqtt))
            .await
            .expect("connect");
        socket.write_all(bytes).await.expect("send");
        let mut answer = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(8), socket.read_to_end(&mut answer)).await;
        assert!(closed.is_ok(), "{bytes:?}: still open");
        assert!(answer.len() <= 4, "{bytes:?}: {answer:?}");
    }
    let (_c, mut e) = client(cloud.mqtt, "ferrite-a", Some(("a", &secret_a)));
    assert_eq!(connack(&mut e).await, Ok(()));
}
