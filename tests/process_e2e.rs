//! The `ferrite run` process: a clean stop on SIGTERM, no loss of what the
//! API had shown when the process is killed with SIGKILL, and SIGHUP taken
//! as "read the folders again" (its default would end the process).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Api, Files, ServingProcess, counting_sim, signal, spawn_serving, wait_until};
use serde_json::Value as Json;

/// Starts `ferrite run` for `files`.
async fn start(files: &Files) -> ServingProcess {
    let config = files.config();
    spawn_serving(
        env!("CARGO_BIN_EXE_ferrite"),
        &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
        Stdio::null(),
    )
    .await
}

/// The counting device and `ferrite run` on it, once the device is online.
async fn online(
    files: &Files,
) -> (
    ferrite_sim::server::TcpSim,
    tokio::task::JoinHandle<()>,
    ServingProcess,
) {
    let (sim, counter) = counting_sim(files).await;
    let run = start(files).await;
    assert!(
        run.api
            .wait_status("d", "online", Duration::from_secs(5))
            .await
    );
    (sim, counter, run)
}

async fn history(api: &Api) -> Vec<Json> {
    api.get("/api/v1/devices/d/properties/n/history?limit=10000")
        .await
        .1
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn sigterm_stops_cleanly_within_five_seconds() {
    let files = Files::new();
    let (sim, counter, mut run) = online(&files).await;
    let before = history(&run.api).await.len();
    signal(&run.child, "TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = run.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    // Everything shown before the stop is still there.
    let again = start(&files).await;
    assert!(history(&again.api).await.len() >= before);
    let mut again = again;
    signal(&again.child, "KILL");
    let _ = again.child.wait();
    counter.abort();
    sim.stop().await;
}

#[tokio::test]
async fn sighup_rereads_the_folders_and_does_not_stop_the_gateway() {
    let files = Files::new();
    let (sim, counter, mut run) = online(&files).await;
    signal(&run.child, "HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        run.child.try_wait().expect("wait").is_none(),
        "SIGHUP ended the gateway"
    );
    assert_eq!(
        run.api.get("/api/v1/config").await.1["version"],
        1,
        "nothing changed"
    );
    // A new rule, then SIGHUP (the folder watch may take it first: either
    // way it runs, as v2).
    files.write(
        "rules/r.yaml",
        "kind: Rule\nname: r\nwhen: 'devices[\"d\"].n >= 0'\nthen:\n  - event: { message: r }\n",
    );
    signal(&run.child, "HUP");
    // The rule runs before the version is recorded: wait for both.
    let applied = wait_until(Duration::from_secs(10), || async {
        run.api.get("/api/v1/rules/r").await.0 == 200
            && run.api.get("/api/v1/config").await.1["version"] == 2
    })
    .await;
    assert!(applied, "{}", run.log_tail());
    signal(&run.child, "KILL");
    let _ = run.child.wait();
    counter.abort();
    sim.stop().await;
}

#[tokio::test]
async fn sigkill_loses_nothing_the_api_had_shown() {
    let files = Files::new();
    let (sim, counter) = counting_sim(&files).await;
    let mut stored_before = 0;
    for round in 0..3 {
        let mut run = start(&files).await;
        assert!(
            run.api
                .wait_status("d", "online", Duration::from_secs(5))
                .await
        );
        // Let it store for a while (at least five new changes: a loaded
        // machine polls slower than the 20 ms asked), then read what the API
        // shows, and kill it while the counter is still running and new
        // changes are in flight.
        tokio::time::sleep(Duration::from_millis(300 + round * 170)).await;
        let stored = wait_until(Duration::from_secs(15), || async {
            history(&run.api).await.len() >= stored_before + 5
        })
        .await;
        let shown = history(&run.api).await;
        let latest = run.api.get("/api/v1/devices/d/properties/n").await.1;
        signal(&run.child, "KILL");
        let _ = run.child.wait();
        assert!(
            stored,
            "round {round}: only {} changes stored, {stored_before} before this run",
            shown.len()
        );
        stored_before = shown.len();

        let mut after = start(&files).await;
        let kept = history(&after.api).await;
        for entry in &shown {
            assert!(
                kept.contains(entry),
                "round {round}: {entry} was shown, then lost"
            );
        }
        let restored = after.api.get("/api/v1/devices/d/properties/n").await.1;
        assert!(
            restored["value"].as_i64() >= latest["value"].as_i64(),
            "round {round}: latest went back from {latest} to {restored}"
        );
        signal(&after.child, "KILL");
        let _ = after.child.wait();
    }
    counter.abort();
    sim.stop().await;
}

#[tokio::test]
async fn the_demo_serves_changing_modbus_values() {
    let mut demo = spawn_serving(
        env!("CARGO_BIN_EXE_ferrite"),
        &["demo".as_ref()],
        Stdio::piped(),
    )
    .await;
    let api = demo.api.clone();
    let child = &mut demo.child;
    let since = Instant::now();
    assert!(
        api.wait_status("boiler-1", "online", Duration::from_secs(2))
            .await,
        "boiler-1 online within 2 s"
    );
    assert!(
        api.wait_status("meter-1", "online", Duration::from_secs(2))
            .await
    );
    assert!(since.elapsed() < Duration::from_secs(2));
    let first = api.device("meter-1").await["properties"]["energy"]["value"].clone();
    let changed = wait_until(Duration::from_secs(5), || async {
        api.device("meter-1").await["properties"]["energy"]["value"] != first
    })
    .await;
    assert!(changed, "the energy counter moves");
    let (_, rules) = api.get("/api/v1/rules").await;
    let names: Vec<&str> = rules
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        ["boiler-overheat", "meter-overload", "tank-high"],
        "{rules}"
    );
    // Within its first 20 s the demo's boiler has not been over 85 °C for
    // the rule's 10 s, so the setpoint is not held yet.
    let (status, body) = api
        .write("boiler-1", "setpoint", serde_json::json!(61.5))
        .await;
    assert_eq!(
        (status, body["value"].as_f64()),
        (200, Some(61.5)),
        "{body}"
    );
    signal(child, "TERM");
    let status = child.wait().expect("exit");
    assert!(status.success());
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    assert!(
        out.contains("/api/v1/devices") && out.contains("curl -X PUT"),
        "{out}"
    );
}

#[test]
fn the_api_is_not_exposed_beyond_loopback_without_tokens() {
    let files = Files::new();
    files.write(
        "models/t.yaml",
        "kind: DeviceModel\nname: t\nproperties:\n  n: { type: int, modbus: { table: holding, address: 0 } }\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["run", "--config"])
        .arg(files.config())
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("ferrite runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without [[api.tokens]]"), "{stderr}");
}

#[test]
fn systemd_hears_ready_then_watchdog_pings_then_stopping() {
    use std::os::unix::net::UnixDatagram;
    let files = Files::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let config = files.config();
    // systemd names the watched process in WATCHDOG_PID: the shell's pid,
    // which `exec` hands to ferrite.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" run --config "$1" --listen 127.0.0.1:0"#)
        .arg(env!("CARGO_BIN_EXE_ferrite"))
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferrite starts");
    let mut heard = Vec::new();
    let mut buf = [0u8; 256];
    while heard.iter().filter(|m| *m == "WATCHDOG=1").count() < 2 {
        let Ok(n) = socket.recv(&mut buf) else {
            break;
        };
        heard.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    signal(&child, "TERM");
    while !heard.iter().any(|m| m == "STOPPING=1") {
        let Ok(n) = socket.recv(&mut buf) else {
            break;
        };
        heard.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert_eq!(
        heard.first().map(String::as_str),
        Some("READY=1"),
        "{heard:?}"
    );
    assert!(
        heard.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2,
        "{heard:?}"
    );
    assert_eq!(
        heard.last().map(String::as_str),
        Some("STOPPING=1"),
        "{heard:?}"
    );
}
