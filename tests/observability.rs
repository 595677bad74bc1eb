//! Seeing the gateway: `/metrics` parsed by someone else's OpenMetrics
//! parser, the OpenAPI document against the routes actually served, the
//! live stream, readiness, and JSON logs. (The dashboard itself is tested in
//! a real browser: tests/interop/dashboard_browser.py.)

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::time::Duration;

use common::{Api, Files, counting_sim, spawn_serving, wait_until};
use openmetrics_parser::{OpenMetricsType, OpenMetricsValue};
use serde_json::Value as Json;

async fn scrape(api: &Api) -> (String, String) {
    let res = reqwest::get(format!("{}/metrics", api.base))
        .await
        .expect("scrape");
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (content_type, res.text().await.expect("text"))
}

type Exposition = openmetrics_parser::MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// The value of `family`'s sample whose `label` is `value`.
fn sample(exposition: &Exposition, family: &str, label: &str, value: &str) -> Option<f64> {
    let family = exposition.families.get(family)?;
    family.iter_samples().find_map(|s| {
        let labels = s.get_labelset().ok()?;
        if labels.get_label_value(label) != Some(value) {
            return None;
        }
        match &s.value {
            OpenMetricsValue::Counter(c) => Some(c.value.as_f64()),
            OpenMetricsValue::Gauge(g) => Some(g.as_f64()),
            OpenMetricsValue::Histogram(h) => Some(h.count.unwrap_or_default() as f64),
            _ => None,
        }
    })
}

#[tokio::test]
async fn metrics_scrape_cleanly_and_count_what_happens() {
    let files = Files::new();
    let (sim, counter) = counting_sim(&files).await;
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(api.wait_status("d", "online", Duration::from_secs(5)).await);
    // An unknown device: counted under its route pattern, with its 404.
    assert_eq!(api.get("/api/v1/devices/nope").await.0, 404);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (content_type, text) = scrape(&api).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("the scrape does not parse: {e:?}\n{text}"));
    let kind = |name: &str| {
        parsed
            .families
            .get(name)
            .map(|f| f.family_type)
            .unwrap_or_else(|| panic!("no family {name} in\n{text}"))
    };
    for (name, expected) in [
        ("ferrite_polls", OpenMetricsType::Counter),
        ("ferrite_poll_errors", OpenMetricsType::Counter),
        ("ferrite_poll_duration_seconds", OpenMetricsType::Histogram),
        ("ferrite_values", OpenMetricsType::Counter),
        ("ferrite_values_per_second", OpenMetricsType::Gauge),
        ("ferrite_store_bytes", OpenMetricsType::Gauge),
        ("ferrite_rule_firings", OpenMetricsType::Counter),
        ("ferrite_api_requests", OpenMetricsType::Counter),
        (
            "ferrite_api_request_duration_seconds",
            OpenMetricsType::Histogram,
        ),
        ("ferrite_device_up", OpenMetricsType::Gauge),
        ("ferrite_mqtt_dropped", OpenMetricsType::Counter),
        ("ferrite_mqtt_held_milliseconds", OpenMetricsType::Counter),
        ("ferrite_mqtt_hold_timeouts", OpenMetricsType::Counter),
    ] {
        assert_eq!(kind(name), expected, "{name}");
    }
    let polls = sample(&parsed, "ferrite_polls", "device", "d").expect("polls of d");
    assert!(polls >= 5.0, "{polls} polls in\n{text}");
    let timed = sample(&parsed, "ferrite_poll_duration_seconds", "device", "d").expect("latency");
    assert_eq!(timed, polls, "each poll is timed");
    assert!(sample(&parsed, "ferrite_values", "device", "d").expect("values") >= 5.0);
    assert_eq!(
        sample(&parsed, "ferrite_device_up", "device", "d"),
        Some(1.0)
    );
    let not_found = parsed.families["ferrite_api_requests"]
        .iter_samples()
        .any(|s| {
            s.get_labelset().is_ok_and(|l| {
                l.get_label_value("route") == Some("/api/v1/devices/{id}")
                    && l.get_label_value("status") == Some("404")
            })
        });
    assert!(not_found, "the 404 is counted by route pattern:\n{text}");
    let store_bytes = parsed.families["ferrite_store_bytes"]
        .iter_samples()
        .next()
        .map(|s| match &s.value {
            OpenMetricsValue::Gauge(g) => g.as_f64(),
            _ => 0.0,
        });
    assert!(store_bytes.is_some_and(|b| b > 0.0), "{text}");

    // The device goes away: its polls now count as errors, and it is down.
    counter.abort();
    sim.stop().await;
    assert!(
        api.wait_status("d", "offline", Duration::from_secs(5))
            .await
    );
    let errors = wait_until(Duration::from_secs(5), || async {
        let (_, text) = scrape(&api).await;
        openmetrics_parser::openmetrics::parse_openmetrics(&text)
            .ok()
            .and_then(|p| sample(&p, "ferrite_poll_errors", "device", "d"))
            .is_some_and(|e| e >= 1.0)
    })
    .await;
    assert!(errors, "poll errors counted");
    gw.stop().await;
}

/// A concrete path for a documented path template.
fn concrete(template: &str) -> String {
    let path = template.replace("{id}", "d").replace("{name}", "n");
    // The profile samples for 10 s by default, as long as the client
    // waits: one second is enough to show the route is served. (Run beside
    // the profile test in one process, this call met a profile being taken
    // and got a quick 409; alone, as nextest runs it, it timed out.)
    if path.ends_with("/pprof/profile") {
        return path + "?seconds=1";
    }
    path
}

#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let files = Files::new();
    let (_sim, counter) = counting_sim(&files).await;
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    let (status, doc) = api.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");

    // Every documented operation is served: neither the fallback's 404 nor
    // a 405. (The answer may still be a 404 for an unknown rule: that one
    // names the rule.)
    let mut documented = BTreeSet::new();
    for (template, item) in paths {
        for method in ["get", "put", "post", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            documented.insert(format!("{} {template}", method.to_uppercase()));
            if template == "/api/v1/stream" {
                continue; // an endless stream: tested below
            }
            let body = (method == "put").then(|| "{\"value\": 1}".to_string());
            let (code, answer, _) = api
                .call(
                    method.to_uppercase().parse().expect("method"),
                    &concrete(template),
                    body,
                )
                .await;
            assert_ne!(
                code, 405,
                "{method} {template} is documented but not routed"
            );
            assert_ne!(
                answer["error"]["code"], "not_found",
                "{method} {template} is documented but falls through to the fallback"
            );
        }
    }
    // Every route docs/contract.md fixes, and the ones this issue adds, is
    // documented.
    for route in [
        "GET /api/v1/devices",
        "GET /api/v1/devices/{id}",
        "GET /api/v1/devices/{id}/properties/{name}",
        "PUT /api/v1/devices/{id}/properties/{name}",
        "GET /api/v1/devices/{id}/properties/{name}/history",
        "GET /api/v1/rules",
        "GET /api/v1/rules/{name}",
        "GET /api/v1/events",
        "GET /api/v1/sync",
        "GET /api/v1/stream",
        "GET /metrics",
        "GET /healthz",
        "GET /readyz",
    ] {
        assert!(documented.contains(route), "{route} is not documented");
    }
    // And what is not documented is not served.
    let (code, answer) = api.get("/api/v1/undocumented").await;
    assert_eq!(
        (code, &answer["error"]["code"]),
        (404, &Json::from("not_found"))
    );
    // Each operation has a unique id and at least one documented response.
    let mut ids = HashMap::new();
    for item in paths.values() {
        for op in item.as_object().expect("item").values() {
            if let Some(id) = op.get("operationId").and_then(Json::as_str) {
                assert!(ids.insert(id.to_string(), ()).is_none(), "{id} twice");
            }
        }
    }
    assert_eq!(ids.len(), documented.len(), "every operation has an id");
    counter.abort();
    gw.stop().await;
}

#[tokio::test]
async fn the_live_stream_sends_changes_and_readiness_answers() {
    let files = Files::new();
    let (_sim, counter) = counting_sim(&files).await;
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert_eq!(
        api.get("/readyz").await,
        (
            200,
            serde_json::json!({"ready": true, "drivers": "started", "store": "writable"})
        )
    );

    let mut res = reqwest::get(format!("{}/api/v1/stream", api.base))
        .await
        .expect("stream");
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    // Read events until two carry different values of d.n.
    let mut buffer = String::new();
    let mut seen = Vec::new();
    let mut events = 0;
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while seen.len() < 2 {
            let Some(chunk) = res.chunk().await.expect("chunk") else {
                break;
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let update: Json = serde_json::from_str(data).expect("JSON data");
                events += 1;
                if events == 1 {
                    assert_eq!(
                        update["devices"][0]["id"], "d",
                        "the first has every device: {update}"
                    );
                }
                if let Some(r) = update["readings"].as_array().and_then(|all| {
                    all.iter()
                        .find(|r| r["property"] == "n" && r["quality"] == "good")
                }) {
                    seen.push(r["value"].clone());
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "two updates of d.n within 10 s; got {seen:?}");
    assert_ne!(seen[0], seen[1], "each event carries the new value");
    counter.abort();
    // The stream ends when the gateway stops, so stopping is not held up.
    assert!(
        gw.stop().await,
        "stopped within the deadline with a stream open"
    );
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_and_only_from_it() {
    let files = Files::new();
    let gw = files.start().await;
    let base = format!("http://{}", gw.addr);
    let page = reqwest::get(format!("{base}/")).await.expect("GET /");
    assert_eq!(page.status().as_u16(), 200);
    let policy = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(policy.starts_with("default-src 'self'"), "{policy}");
    let html = page.text().await.expect("html");
    for asset in ["/dashboard/app.js", "/dashboard/style.css"] {
        assert!(html.contains(asset), "the page loads {asset}");
        let res = reqwest::get(format!("{base}{asset}")).await.expect("asset");
        assert_eq!(res.status().as_u16(), 200, "{asset}");
        assert!(!res.text().await.expect("text").is_empty());
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );
    gw.stop().await;
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let files = Files::new();
    let binary = env!("CARGO_BIN_EXE_ferrite");
    let config = files.config();
    let args = [
        "--log-format".as_ref(),
        "json".as_ref(),
        "run".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    let mut running = spawn_serving(binary, &args, Stdio::null()).await;
    let _ = running.child.kill();
    let _ = running.child.wait();
    let log = std::fs::read_to_string(running.log.path()).expect("log");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "something was logged");
    for line in lines {
        let entry: Json =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_profile_comes_in_the_pprof_format_and_memory_figures_add_up() {
    use prost::Message;
    let files = Files::new();
    let (_sim, _counter) = counting_sim(&files).await;
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(api.wait_status("d", "online", Duration::from_secs(5)).await);
    let client = reqwest::Client::new();
    let profile_url = |query: &str| format!("{}/api/v1/debug/pprof/profile?{query}", api.base);
    for bad in [
        "seconds=0",
        "seconds=21",
        "frequency=0",
        "frequency=5000",
        "seconds=x",
    ] {
        let res = client.get(profile_url(bad)).send().await.expect("GET");
        assert_eq!(res.status(), 400, "{bad}");
    }
    // Work for the profiler to see: the API under a stream of requests.
    let base = api.base.clone();
    let load = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let end = std::time::Instant::now() + Duration::from_millis(1500);
        while std::time::Instant::now() < end {
            let _ = client.get(format!("{base}/api/v1/devices")).send().await;
        }
    });
    let first = tokio::spawn(client.get(profile_url("seconds=1&frequency=499")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = client
        .get(profile_url("seconds=1"))
        .send()
        .await
        .expect("GET");
    assert_eq!(second.status(), 409, "one profile at a time");
    let res = first.await.expect("task").expect("GET");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/octet-stream"[..])
    );
    let bytes = res.bytes().await.expect("body");
    let _ = load.await;
    let profile = ferrite_proto::pprof::Profile::decode(bytes.as_ref()).expect("a pprof profile");
    let string = |i: i64| profile.string_table[usize::try_from(i).expect("index")].as_str();
    assert_eq!(profile.string_table.first().map(String::as_str), Some(""));
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (string(t.r#type), string(t.unit)))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert!(
        (900_000_000..5_000_000_000).contains(&profile.duration_nanos),
        "{}",
        profile.duration_nanos
    );
    assert!(
        !profile.sample.is_empty(),
        "a second of load leaves samples"
    );
    let locations: HashMap<u64, &ferrite_proto::pprof::Location> =
        profile.location.iter().map(|l| (l.id, l)).collect();
    let functions: HashMap<u64, &ferrite_proto::pprof::Function> =
        profile.function.iter().map(|f| (f.id, f)).collect();
    let mut names = BTreeSet::new();
    for sample in &profile.sample {
        assert_eq!(sample.value.len(), 2);
        assert_eq!(sample.value[1], sample.value[0] * profile.period);
        for id in &sample.location_id {
            let location = locations.get(id).expect("a known location");
            for line in &location.line {
                let function = functions.get(&line.function_id).expect("a known function");
                names.insert(string(function.name).to_string());
            }
        }
    }
    assert!(
        names.iter().any(|n| n.contains("ferrite_gateway")),
        "the gateway's own code is on the stacks: {names:?}"
    );

    let (status, memory) = api.get("/api/v1/debug/memory").await;
    assert_eq!(status, 200, "{memory}");
    let rss = memory["rss_bytes"].as_u64().expect("rss");
    assert!(rss > 1 << 20, "{memory}");
    assert!(memory["peak_rss_bytes"].as_u64() >= Some(rss), "{memory}");
    let parts = memory["anonymous_bytes"].as_u64().unwrap_or(0)
        + memory["file_bytes"].as_u64().unwrap_or(0);
    assert!(parts <= rss + (1 << 20), "{memory}");
    assert!(memory["store"]["series"].as_u64() >= Some(1), "{memory}");
}
