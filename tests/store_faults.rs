//! The store on a disk that fills up: no crash, a clear signal, and no lost
//! change once space returns. Uses a real, small tmpfs, so it needs root:
//! CI runs as root; without root the test says it was skipped.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Api, Files, counting_sim, wait_until};

/// A tmpfs mounted for the test's lifetime.
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(path: &std::path::Path, size: &str) -> Mount {
        std::fs::create_dir_all(path).expect("mkdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root; these tests run as root in CI"
        );
        Mount(path.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` until it refuses more.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create filler");
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

/// Whether this process runs as root (mounting needs it).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn a_full_disk_delays_history_but_loses_none_of_it() {
    if !is_root() {
        // CI runs as root; a developer's unprivileged run cannot mount.
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let files = Files::new();
    let _mount = Mount::tmpfs(&files.data(), "8m");
    let (sim, counter) = counting_sim(&files).await;
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    let stats = gw.state.stats.clone();
    let history = |api: Api| async move {
        api.get("/api/v1/devices/d/properties/n/history?limit=10000")
            .await
            .1
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(
        wait_until(Duration::from_secs(5), || async {
            history(api.clone()).await >= 10
        })
        .await
    );

    // The disk fills: commits fail and are retried; the gateway keeps serving.
    let filler = fill(&files.data());
    let failing = wait_until(Duration::from_secs(10), || async {
        stats.failures.load(Ordering::Relaxed) > 0
    })
    .await;
    assert!(failing, "a full disk must show as store failures");
    let healthz = reqwest::get(format!("{}/healthz", api.base))
        .await
        .expect("healthz");
    assert_eq!(healthz.status().as_u16(), 200, "the gateway keeps serving");
    assert!(!api.status("d").await.is_empty(), "the API still answers");
    let metrics = reqwest::get(format!("{}/metrics", api.base))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    assert!(metrics.contains("ferrite_store_failing 1"), "{metrics}");
    let (_, status) = api.get("/api/v1/status").await;
    assert_eq!(status["store"]["failing"], true, "{status}");
    let error = status["store"]["last_error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "the status says why: {status}");
    let (code, ready) = api.get("/readyz").await;
    assert_eq!(code, 503, "not ready while the store fails: {ready}");
    assert!(
        ready["store"]
            .as_str()
            .is_some_and(|s| s.starts_with("failing")),
        "{ready}"
    );

    // Space returns: everything queued meanwhile is stored, nothing dropped.
    std::fs::remove_file(filler).expect("free the space");
    let recovered = wait_until(Duration::from_secs(15), || async {
        !stats.failing.load(Ordering::Relaxed) && stats.changes.load(Ordering::Relaxed) > 0
    })
    .await;
    assert!(recovered, "the store recovers once space returns");
    let grown = history(api.clone()).await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            history(api.clone()).await > grown
        })
        .await
    );
    // Both turns are in the events, the failure with its reason (the
    // journal retries its own failed commits with up to 5 s of backoff).
    let events_seen = wait_until(Duration::from_secs(15), || async {
        let (_, events) = api.get("/api/v1/events?limit=1000").await;
        let kinds: Vec<String> = events
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| e["kind"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        kinds.iter().any(|k| k == "store_failing") && kinds.iter().any(|k| k == "store_recovered")
    })
    .await;
    assert!(events_seen, "store_failing and store_recovered events");
    assert_eq!(api.get("/api/v1/status").await.1["store"]["failing"], false);
    assert_eq!(api.get("/readyz").await.0, 200, "ready again");
    counter.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stored = history(api.clone()).await as u64;
    let counted = stats.changes.load(Ordering::Relaxed);
    assert_eq!(
        stored, counted,
        "every change the writer accepted is in the history"
    );
    assert!(gw.stop().await);
    sim.stop().await;
}
