//! The API's doors: bearer tokens and roles (401 and 403), who wrote what in
//! the audit log, HTTPS, the connection cap, slow clients cut off, and no
//! secret in the logs.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Api, Files, counting_sim, spawn_serving_with_env};
use reqwest::Method;
use serde_json::json;

const VIEWER: &str = "viewer-7d1e0c9a5b";
const OPS: &str = "ops-24b6f18e3c";
const ROOT: &str = "root-9c0a77d2e1";

fn sha256_hex(token: &str) -> String {
    ferrite_gateway::api::auth::sha256_hex(token)
}

/// A project whose API has three tokens: `viewer` (read, by digest), `ops`
/// (write, from a file) and `root` (admin, by digest), plus `extra` config.
async fn secured(extra: &str) -> (Files, ferrite_sim::server::TcpSim) {
    let files = Files::new();
    let (sim, _counter) = counting_sim(&files).await;
    // The counter's model, plus a setpoint to write.
    files.write(
        "models/t.yaml",
        "kind: DeviceModel\nname: t\nproperties:\n  n: { type: int, modbus: { table: holding, address: 0, format: u32 } }\n  sp: { type: int, access: readwrite, modbus: { table: holding, address: 10, format: u16 } }\n",
    );
    files.write("ops.token", &format!("{OPS}\n")).write(
        "ferrite.toml",
        &format!(
            r#"[gateway]
id = "test"
data_dir = "data"
[api]
listen = "127.0.0.1:0"
{extra}
[[api.tokens]]
name = "viewer"
role = "read"
token_sha256 = "{}"
[[api.tokens]]
name = "ops"
role = "write"
token_file = "ops.token"
[[api.tokens]]
name = "root"
role = "admin"
token_sha256 = "{}"
"#,
            sha256_hex(VIEWER),
            sha256_hex(ROOT)
        ),
    );
    (files, sim)
}

#[tokio::test]
async fn tokens_and_roles_gate_every_call() {
    let (files, _sim) = secured("").await;
    let gw = files.start().await;
    let anonymous = Api::new(gw.addr);
    let (viewer, ops, root) = (
        anonymous.with_token(VIEWER),
        anonymous.with_token(OPS),
        anonymous.with_token(ROOT),
    );
    let write_path = "/api/v1/devices/d/properties/sp";
    let body = || Some(json!({"value": 5}).to_string());

    // No token, a wrong one, another scheme: 401 with a Bearer challenge.
    for api in [&anonymous, &anonymous.with_token("guess")] {
        for (method, path) in [
            (Method::GET, "/api/v1/devices"),
            (Method::GET, "/metrics"),
            (Method::PUT, write_path),
            (Method::DELETE, "/api/v1/rules/r"),
        ] {
            let (code, body, headers) = api.call(method.clone(), path, body()).await;
            assert_eq!(code, 401, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized");
            let challenge = headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
        }
    }
    let basic = reqwest::Client::new()
        .get(format!("{}/api/v1/devices", anonymous.base))
        .basic_auth("viewer", Some(VIEWER))
        .send()
        .await
        .expect("GET");
    assert_eq!(basic.status().as_u16(), 401, "only Bearer is accepted");
    // The probes stay open, and so do the dashboard's files and the API
    // documents (they hold no data); the data they show needs a token.
    assert_eq!(anonymous.get("/healthz").await.0, 200);
    assert_eq!(anonymous.get("/readyz").await.0, 200);
    for open in [
        "/",
        "/dashboard/app.js",
        "/api/v1/openapi.json",
        "/api/docs/",
    ] {
        let res = reqwest::get(format!("{}{open}", anonymous.base))
            .await
            .expect("GET");
        assert_eq!(res.status().as_u16(), 200, "{open}");
    }
    for guarded in ["/api/v1/stream", "/api/v1/models", "/metrics"] {
        assert_eq!(anonymous.get(guarded).await.0, 401, "{guarded}");
    }

    // read: GETs only.
    assert_eq!(viewer.get("/api/v1/devices").await.0, 200);
    assert_eq!(viewer.get("/api/v1/devices/d/properties/n").await.0, 200);
    assert_eq!(viewer.get("/api/v1/audit").await.0, 200);
    assert_eq!(viewer.get("/metrics").await.0, 200);
    let (code, refused, _) = viewer.call(Method::PUT, write_path, body()).await;
    assert_eq!(code, 403, "{refused}");
    assert_eq!(refused["error"]["code"], "forbidden");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("viewer") && message.contains("write"),
        "{message}"
    );

    // write: device writes too, but not rules.
    let (code, written, _) = ops.call(Method::PUT, write_path, body()).await;
    assert_eq!(code, 200, "{written}");
    for (method, path) in [
        (Method::DELETE, "/api/v1/rules/r"),
        (Method::POST, "/api/v1/rules/r/enable"),
        (Method::PUT, "/api/v1/rules/r"),
        (Method::PUT, "/api/v1/devices/d"),
        (Method::DELETE, "/api/v1/devices/d"),
        (Method::PUT, "/api/v1/models/m"),
        (Method::DELETE, "/api/v1/models/m"),
        (Method::POST, "/api/v1/config/rollback"),
    ] {
        let (code, body, _) = ops.call(method.clone(), path, body()).await;
        assert_eq!(code, 403, "{method} {path} as ops: {body}");
    }
    assert_eq!(
        viewer.get("/api/v1/config").await.0,
        200,
        "reading it is a read"
    );
    assert_eq!(anonymous.get("/api/v1/config").await.0, 401);

    // admin: everything (here: past the door to a 404 for a missing rule,
    // and a 409 for a rollback with nothing before).
    let (code, body, _) = root.call(Method::DELETE, "/api/v1/rules/r", None).await;
    assert_eq!(code, 404, "{body}");
    let (code, body, _) = root
        .call(Method::POST, "/api/v1/config/rollback", None)
        .await;
    assert_eq!(code, 409, "{body}");
    let (code, body, _) = root
        .call(
            Method::PUT,
            write_path,
            Some(json!({"value": 6}).to_string()),
        )
        .await;
    assert_eq!(code, 200, "{body}");

    // The audit log names the token and the address behind each write; the
    // refused attempts never reached it.
    let (_, audit) = viewer.get("/api/v1/audit").await;
    let entries = audit.as_array().cloned().unwrap_or_default();
    let who: Vec<&str> = entries.iter().filter_map(|e| e["who"].as_str()).collect();
    assert_eq!(who, ["api root", "api ops"], "{audit}");
    for entry in &entries {
        let peer = entry["peer"].as_str().unwrap_or_default();
        assert!(peer.starts_with("127.0.0.1:"), "{entry}");
    }
    let (_, only_ops) = viewer.get("/api/v1/audit?who=api%20ops").await;
    assert_eq!(only_ops.as_array().map(Vec::len), Some(1), "{only_ops}");
    gw.stop().await;
}

/// A self-signed certificate for `localhost` and its key, as PEM files.
fn certificate(files: &Files) -> rustls::pki_types::CertificateDer<'static> {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    files
        .write("api.crt", &issued.cert.pem())
        .write("api.key", &issued.signing_key.serialize_pem());
    issued.cert.der().clone()
}

/// One HTTP/1.1 GET over `stream`; the whole answer.
async fn raw_get<S>(mut stream: S, path: &str, token: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn https_serves_with_the_configured_certificate_and_refuses_plain_http() {
    let (files, _sim) =
        secured("[api.tls]\ncertificate = \"api.crt\"\nprivate_key = \"api.key\"\n").await;
    let trusted = certificate(&files);
    let gw = files.start().await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted).expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let answer = raw_get(tls, "/api/v1/devices", VIEWER).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"id\":\"d\""), "{answer}");

    // Plain HTTP on the TLS port gets no answer, only a closed connection.
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let answer = raw_get(tcp, "/api/v1/devices", VIEWER).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    gw.stop().await;
}

/// `ferrite health`, as a container's HEALTHCHECK runs it against this
/// config: over HTTPS it trusts the config's certificate and no other.
#[tokio::test]
async fn the_health_command_probes_https_pinned_to_the_configured_certificate() {
    let (files, _sim) =
        secured("[api.tls]\ncertificate = \"api.crt\"\nprivate_key = \"api.key\"\n").await;
    certificate(&files);
    let gw = files.start().await;
    let addr = gw.addr;
    let timeout = Duration::from_secs(3);
    let probe = |config: std::path::PathBuf| async move {
        let mut out = Vec::new();
        ferrite_gateway::commands::health(Some(&config), Some(addr), timeout, &mut out)
            .await
            .expect("health");
        String::from_utf8(out).expect("text")
    };
    let answer = probe(files.config()).await;
    assert!(answer.starts_with("healthy: https://"), "{answer}");

    // Another certificate in the config (the one served is not it): refused.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    files.write("other.crt", &other.cert.pem());
    let config = std::fs::read_to_string(files.config()).expect("config");
    files.write(
        "other.toml",
        &config.replace("certificate = \"api.crt\"", "certificate = \"other.crt\""),
    );
    let answer = probe(files.config().with_file_name("other.toml")).await;
    assert!(answer.starts_with("unhealthy: HTTPS to"), "{answer}");

    // Plain HTTP to the HTTPS port (a config without [api.tls]): unhealthy.
    files.write(
        "plain.toml",
        &config.replace(
            "[api.tls]\ncertificate = \"api.crt\"\nprivate_key = \"api.key\"\n",
            "",
        ),
    );
    let answer = probe(files.config().with_file_name("plain.toml")).await;
    assert!(answer.starts_with("unhealthy: GET /healthz"), "{answer}");
    gw.stop().await;

    // And nothing listening at all.
    let answer = probe(files.config()).await;
    assert!(answer.contains("cannot connect"), "{answer}");
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_connections_are_capped() {
    let (files, _sim) = secured("max_connections = 2\nheader_timeout = \"1s\"\n").await;
    let gw = files.start().await;
    let addr = gw.addr;
    let outcome = tokio::task::spawn_blocking(move || {
        // A slowloris client: half a request, then nothing.
        let started = Instant::now();
        let mut slow = TcpStream::connect(addr).expect("connect");
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .expect("send");
        slow.set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        let cut = matches!(slow.read(&mut buf), Ok(0) | Err(_))
            && started.elapsed() < Duration::from_secs(8);
        drop(slow);

        // Two silent connections fill the cap; a third waits until the
        // header timeout frees a slot.
        let idle: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut third = TcpStream::connect(addr).expect("connect");
        third
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
        third
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let waited = third.read(&mut buf).is_err();
        third
            .set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let mut answer = Vec::new();
        let _ = third.read_to_end(&mut answer);
        drop(idle);
        (cut, waited, String::from_utf8_lossy(&answer).into_owned())
    })
    .await
    .expect("client thread");
    let (cut, waited, answer) = outcome;
    assert!(
        cut,
        "a client that never finishes its headers is disconnected"
    );
    assert!(waited, "a third connection waits while two are open");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "then it is served: {answer}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn no_secret_reaches_the_logs_even_at_trace() {
    const MQTT_PASSWORD: &str = "mqtt-pw-5e8c1b";
    const CLOUD_PASSWORD: &str = "cloud-pw-0f4d9a";
    const GUESS: &str = "guess-token-77ab3";
    let (files, _sim) = secured("").await;
    let mqtt_port = common::free_port();
    let cloud_port = common::free_port();
    files
        .write("hmi.pass", &format!("{MQTT_PASSWORD}\n"))
        .write("cloud.pass", &format!("{CLOUD_PASSWORD}\n"));
    let config = std::fs::read_to_string(files.config()).expect("config");
    files.write(
        "ferrite.toml",
        &format!(
            "{config}[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\n[[mqtt.users]]\nusername = \"hmi\"\npassword_file = \"hmi.pass\"\n[cloud]\nbroker = \"mqtt://127.0.0.1:{cloud_port}\"\nusername = \"gw\"\npassword_file = \"cloud.pass\"\n"
        ),
    );
    let config = files.config();
    let data = files.data();
    let args = [
        "run".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ];
    let gateway = spawn_serving_with_env(
        env!("CARGO_BIN_EXE_ferrite"),
        &args,
        &[("RUST_LOG", "trace")],
        Stdio::null(),
    )
    .await;
    let api = gateway.api.with_token(OPS);
    assert_eq!(api.write("d", "sp", json!(7)).await.0, 200);
    assert_eq!(
        gateway.api.with_token(GUESS).get("/api/v1/devices").await.0,
        401
    );
    // MQTT logins, right and wrong; the uplink keeps trying its broker.
    for password in [MQTT_PASSWORD, GUESS] {
        let mut options = rumqttc::MqttOptions::new("hmi-1", "127.0.0.1", mqtt_port);
        options.set_credentials("hmi", password);
        let (_client, mut events) = rumqttc::AsyncClient::new(options, 4);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut gateway = gateway;
    common::signal(&gateway.child, "TERM");
    let _ = gateway.child.wait();
    let log = std::fs::read_to_string(gateway.log.path()).expect("log");
    assert!(
        log.contains("TRACE") && log.contains("write") && log.len() > 10_000,
        "the log is at trace and has something to say: {} bytes",
        log.len()
    );
    for secret in [VIEWER, OPS, ROOT, MQTT_PASSWORD, CLOUD_PASSWORD, GUESS] {
        let at = log.find(secret);
        assert!(
            at.is_none(),
            "secret {secret} in the log: {}",
            at.map(|i| &log[i.saturating_sub(300)..(i + 100).min(log.len())])
                .unwrap_or_default()
        );
    }
}

#[tokio::test]
async fn cross_site_writes_are_refused_and_rule_switches_are_audited() {
    let files = Files::new();
    let (_sim, _counter) = counting_sim(&files).await;
    files.write(
        "rules/r.yaml",
        "kind: Rule\nname: r\nwhen: 'devices[\"d\"].n >= 0'\nthen:\n  - event: { message: r }\n",
    );
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    let client = reqwest::Client::new();
    let disable = format!("{}/api/v1/rules/r/disable", api.base);
    let enabled = |rule: &serde_json::Value| rule["enabled"].as_bool();

    // A page elsewhere (no token on this gateway, as on a bench): by its
    // Origin, by a Referer alone, or as a form without either.
    let attempts = [
        client
            .post(&disable)
            .header("origin", "http://evil.example"),
        client.post(&disable).header("origin", "null"),
        client
            .post(&disable)
            .header("referer", "http://evil.example/attack.html"),
        client
            .post(&disable)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("x=1"),
        client
            .post(format!("{}/api/v1/config/rollback", api.base))
            .header("origin", "http://evil.example"),
    ];
    for attempt in attempts {
        let res = attempt.send().await.expect("POST");
        assert_eq!(res.status().as_u16(), 403);
        let body: serde_json::Value = res.json().await.expect("json");
        assert_eq!(body["error"]["code"], "cross_origin", "{body}");
    }
    let (_, rule) = api.get("/api/v1/rules/r").await;
    assert_eq!(enabled(&rule), Some(true), "{rule}");

    // The gateway's own page (same origin), and a client that is no browser.
    let own = format!("http://{}", gw.addr);
    let res = client
        .post(&disable)
        .header("origin", &own)
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status().as_u16(), 200);
    let (_, rule) = api.get("/api/v1/rules/r").await;
    assert_eq!(enabled(&rule), Some(false), "{rule}");
    let enable = format!("{}/api/v1/rules/r/enable", api.base);
    assert_eq!(
        client
            .post(&enable)
            .send()
            .await
            .expect("POST")
            .status()
            .as_u16(),
        200
    );

    // Both switches are in the audit log, with who made them.
    let (_, audit) = api.get("/api/v1/audit?limit=10").await;
    let switches: Vec<(&str, &str)> = audit
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["rule"] == "r")
        .map(|e| {
            (
                e["action"].as_str().unwrap_or(""),
                e["who"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(switches.len(), 2, "{audit}");
    // Newest first.
    assert_eq!(switches[0].0, "enable");
    assert_eq!(switches[1].0, "disable");
    assert!(
        switches.iter().all(|(_, who)| who.starts_with("api")),
        "{audit}"
    );
}
