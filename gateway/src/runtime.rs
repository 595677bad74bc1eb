//! Wiring: store, live view, drivers and API, started together and stopped
//! together.
//!
//! [`Gateway::start`] validates nothing itself: it takes a project that
//! passed `ferrite check`. [`Gateway::stop`] cancels every task, lets the
//! store writer drain and fsync, and returns within [`STOP_DEADLINE`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferrite_models::Project;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::control::Writers;
use crate::control::{Control, Holds};
use crate::fleet::Fleet;
use crate::journal::{Journal, Retention};
use crate::live::Live;
use crate::names::Names;
use crate::reconcile::Reconciler;
use crate::rules::{Clock, Deps, Feed, Source};
use crate::running::Running;
use crate::store::writer::{self, Writer, WriterStats};
use crate::store::{SledStore, Store};
use ferrite_core::driver::{self, DriverContext};

/// How long stopping may take before the rest is abandoned.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Driver updates queued for the store writer, at most. When full, drivers
/// wait (see `store::writer`).
pub const UPDATE_QUEUE: usize = 16 * 1024;

/// Where to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The API's address; default from the config.
    pub listen: Option<SocketAddr>,
    /// The data folder; default from the config.
    pub data_dir: Option<PathBuf>,
    /// The folders' files the project was loaded from
    /// ([`crate::reconcile::load`]), the first configuration version; read
    /// at start when `None`.
    pub snapshot: Option<crate::reconcile::Snapshot>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The project has no config section (it did not load).
    #[error("the project has no config")]
    NoConfig,
    /// The store did not open.
    #[error("cannot open the store in {0}: {1}")]
    Store(PathBuf, crate::store::StoreError),
    /// The API address is taken or not allowed.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The embedded MQTT broker did not start.
    #[cfg(feature = "mqtt")]
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    /// An API token or the API's certificate did not load.
    #[error("cannot set up the API: {0}")]
    ApiSecurity(String),
    /// A non-loopback address without any API token.
    #[error(
        "refusing to serve the API on {0} without [[api.tokens]]; without tokens it serves loopback only"
    )]
    Exposed(SocketAddr),
}

/// A running gateway.
pub struct Gateway {
    /// The API's actual address (useful with port 0).
    pub addr: SocketAddr,
    /// Shared with the API.
    pub state: AppState,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    writer_done: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Opens the store, starts the drivers and serves the API.
    pub async fn start(project: Project, options: Options) -> Result<Gateway, StartError> {
        let config = project
            .config
            .as_ref()
            .ok_or(StartError::NoConfig)?
            .value
            .clone();
        let data_dir = options
            .data_dir
            .unwrap_or_else(|| project.resolve(&config.gateway.data_dir));
        let listen = options.listen.unwrap_or(config.api.listen);
        // `ferrite check` enforces this for the config; `--listen` must not
        // get around it.
        if config.api.tokens.is_empty() && !listen.ip().is_loopback() {
            return Err(StartError::Exposed(listen));
        }
        let tokens = api::auth::Tokens::load(&config.api.tokens, &|p| project.resolve(p))
            .map_err(|e| StartError::ApiSecurity(e.to_string()))?;
        let tls = match &config.api.tls {
            Some(tls) => Some(
                ferrite_sync::serve::tls_acceptor(
                    &project.resolve(&tls.certificate),
                    &project.resolve(&tls.private_key),
                )
                .map_err(|e| StartError::ApiSecurity(e.to_string()))?,
            ),
            None => None,
        };
        // Bind before starting anything, so a taken port fails fast and
        // leaves no drivers running.
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| StartError::Listen(listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(listen, e))?;

        let sled_store = Arc::new(
            SledStore::open_with(
                &data_dir,
                config.store.cache_mib.saturating_mul(1024 * 1024),
                crate::store::Backlogs {
                    cloud: config
                        .cloud
                        .as_ref()
                        .map(|c| c.outbox_mib.saturating_mul(1024 * 1024)),
                    north: config
                        .north
                        .as_ref()
                        .map(|n| n.backlog_mib.saturating_mul(1024 * 1024)),
                },
            )
            .map_err(|e| StartError::Store(data_dir.clone(), e))?,
        );
        let store: Arc<dyn Store> = sled_store.clone();
        #[cfg(feature = "mqtt")]
        let (broker, outlet) = match &config.mqtt {
            Some(section) => {
                let (link, rx, publisher) =
                    crate::broker::start(section, &|p| project.resolve(p)).await?;
                (Some((link, rx)), Some(Arc::new(publisher)))
            }
            None => (None, None),
        };
        #[cfg(not(feature = "mqtt"))]
        let outlet: crate::rules::Outlet = None;
        let names = Names::of(&project);
        let live = Live::new(names);
        let rules_dir = project.resolve(&config.gateway.rules);
        let sources = Source::all(&project);
        let running = Running::new(project);
        let project = running.project();
        let stats = Arc::new(WriterStats::default());
        let driver_stats = Arc::new(driver::DriverStats::default());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        let (output, updates) = mpsc::channel(UPDATE_QUEUE);
        let (urgent, urgent_rx) = mpsc::channel(256);
        let feed = Arc::new(Feed::new());
        let crashes = Arc::new(driver::Crashes::default());
        let (events, device_events) = mpsc::channel(DEVICE_EVENTS_QUEUE);
        let ctx = DriverContext {
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            output,
            urgent,
            data_dir: data_dir.clone(),
            stats: driver_stats.clone(),
            meters: metrics.clone(),
            crashes: crashes.clone(),
            events,
        };
        let drivers = ferrite_drivers::all(
            &ctx,
            ferrite_drivers::Links {
                #[cfg(feature = "mqtt")]
                broker,
                #[cfg(feature = "mqtt")]
                sparkplug: config
                    .mqtt
                    .as_ref()
                    .map(|m| m.sparkplug.clone())
                    .unwrap_or_default(),
            },
        );
        let writers = Arc::new(Writers::default());
        // Every device shows in the live view before the writer restores
        // their last values into it; what drivers send meanwhile waits in
        // the queue for the writer.
        let fleet = Arc::new(Fleet::new(
            drivers,
            ctx,
            live.clone(),
            writers.clone(),
            metrics.clone(),
        ));
        fleet.start_all(&project).await;
        let writer = Writer::new(store.clone(), live.clone(), running.clone(), stats.clone())
            .with_feed(feed.clone())
            .with_metrics(metrics.clone());
        let queues = writer::Queues {
            updates,
            urgent: urgent_rx,
        };
        // Outside the tracker: `stop` waits for the drivers first, then for
        // the writer to drain what they sent.
        let writer_done = tokio::spawn(writer.run(queues, shutdown.clone()));
        tasks.spawn(writer::retention(
            store.clone(),
            config.store.history_age.get(),
            config.store.history_mib.saturating_mul(1024 * 1024),
            shutdown.clone(),
        ));

        let journal = Journal::start(
            store.clone(),
            Retention {
                max_entries: config.store.journal_entries,
                max_age: config.store.journal_age.get(),
            },
            &tasks,
            shutdown.clone(),
        );
        tasks.spawn(crate::store::health::watch(
            stats.clone(),
            journal.clone(),
            data_dir.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(journal_device_events(
            device_events,
            journal.clone(),
            shutdown.clone(),
        ));
        #[cfg(feature = "mqtt")]
        tasks.spawn(watch_mqtt_losses(
            driver_stats.clone(),
            journal.clone(),
            shutdown.clone(),
        ));
        let control = Arc::new(Control {
            running: running.clone(),
            live: live.clone(),
            writers: writers.clone(),
            holds: Arc::new(Holds::default()),
            journal: journal.clone(),
        });
        let deps = Deps {
            running: running.clone(),
            live: live.clone(),
            feed,
            control: control.clone(),
            journal: journal.clone(),
            store: store.clone(),
            outlet,
            clock: Clock::system(),
        };
        let samples = stats.clone();
        tasks.spawn(crate::metrics::track_rate(
            metrics.clone(),
            move || samples.samples.load(std::sync::atomic::Ordering::Relaxed),
            shutdown.clone(),
        ));
        let rules = crate::rules::start(deps, sources, rules_dir, &tasks, shutdown.clone());
        let reconciler = Reconciler::start(
            running.clone(),
            options.snapshot,
            fleet.clone(),
            rules.clone(),
            store.clone(),
            journal.clone(),
        )
        .await
        .ok_or(StartError::NoConfig)?;
        crate::reconcile::watch::start(reconciler.clone(), &tasks, shutdown.clone());
        tasks.spawn(reconciler.clone().watch_crashes(crashes, shutdown.clone()));
        let uplink = config.cloud.as_ref().map(|cloud| {
            crate::uplink::start(
                crate::uplink::config(&project, &config.gateway.id, cloud),
                crate::uplink::UplinkDeps {
                    outbox: sled_store.clone(),
                    store: store.clone(),
                    control: control.clone(),
                    reconciler: reconciler.clone(),
                    journal: journal.clone(),
                },
                &tasks,
                shutdown.clone(),
            )
        });
        let north = config.north.as_ref().map(|section| {
            crate::north::start(
                crate::north::NorthConfig::new(&project, &config.gateway.id, &data_dir, section),
                crate::north::NorthDeps {
                    store: sled_store.clone(),
                    running: running.clone(),
                    live: live.clone(),
                    control: control.clone(),
                    journal: journal.clone(),
                },
                &tasks,
                shutdown.clone(),
            )
        });

        let state = AppState {
            running,
            fleet,
            reconciler,
            live,
            store,
            writers,
            stats,
            driver_stats,
            control,
            rules,
            journal,
            uplink,
            north,
            metrics,
            started: std::time::Instant::now(),
            shutdown: shutdown.clone(),
        };
        if tokens.enabled() {
            tracing::info!(
                "the API needs a bearer token ({} configured)",
                config.api.tokens.len()
            );
        } else {
            tracing::warn!(
                "no [[api.tokens]]: the API has no authentication, so it serves loopback only ({addr})"
            );
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let app = api::router(
            state.clone(),
            Arc::new(tokens),
            config.api.request_timeout.get(),
        );
        let serve_options = ferrite_sync::serve::ServeOptions {
            tls,
            max_connections: config.api.max_connections,
            header_timeout: config.api.header_timeout.get(),
        };
        tasks.spawn(ferrite_sync::serve::serve(
            listener,
            app,
            serve_options,
            shutdown.clone(),
        ));
        tasks.close();
        tracing::info!("serving the API on {scheme}://{addr}");
        Ok(Gateway {
            addr,
            state,
            shutdown,
            tasks,
            writer_done,
        })
    }

    /// A token that stops the gateway when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops every task, drains and flushes the store. Returns whether it all
    /// finished within [`STOP_DEADLINE`].
    pub async fn stop(self) -> bool {
        self.shutdown.cancel();
        let Gateway {
            tasks,
            writer_done,
            state,
            ..
        } = self;
        // The API state holds writers, which hold queue senders: drop ours.
        drop(state);
        let done = tokio::time::timeout(STOP_DEADLINE, async move {
            tasks.wait().await;
            let _ = writer_done.await;
        })
        .await
        .is_ok();
        if !done {
            tracing::error!("stop took longer than {STOP_DEADLINE:?}; some tasks were abandoned");
        }
        done
    }
}

/// How often at most one device raises an `mqtt_dropped` event.
#[cfg(feature = "mqtt")]
const LOSS_EVENT_EVERY: Duration = Duration::from_secs(60);

/// Most device events waiting for the journal (see
/// [`DriverContext::raise`]).
const DEVICE_EVENTS_QUEUE: usize = 1024;

/// Writes the events devices raise into the events journal, until the
/// gateway stops (then what is queued is written first).
async fn journal_device_events(
    mut events: mpsc::Receiver<driver::DeviceEvent>,
    journal: Arc<Journal>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            biased;
            event = events.recv() => event,
            () = shutdown.cancelled() => events.try_recv().ok(),
        };
        let Some(event) = event else { return };
        journal
            .record(crate::store::Log::Events, &device_event_json(&event))
            .await;
    }
}

/// A device event as the journal (and the API, and the cloud) shows it.
fn device_event_json(event: &driver::DeviceEvent) -> serde_json::Value {
    let mut json = serde_json::json!({
        "source": event.source,
        "severity": event.severity.key(),
        "kind": event.kind,
        "device": event.device,
        "message": event.message,
    });
    if !event.details.is_empty() {
        let details: serde_json::Map<String, serde_json::Value> = event
            .details
            .iter()
            .map(|(k, v)| ((*k).to_string(), serde_json::json!(v)))
            .collect();
        json["details"] = details.into();
    }
    json
}

/// Raises events whenever the embedded broker dropped MQTT messages before
/// the gateway read them: per device, and for messages on no device's topic
/// (see [`LossEvents`]), with one warning in the log per second of losses.
/// With the router gate this takes a store that took nothing for a whole
/// hold, a QoS 0 flood larger than the broker's log, or a load that the
/// broker's router and the gateway's reader cannot share the CPU for (see
/// docs/gateway.md).
#[cfg(feature = "mqtt")]
async fn watch_mqtt_losses(
    stats: Arc<driver::DriverStats>,
    journal: Arc<Journal>,
    shutdown: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let mut events = LossEvents::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut totals: std::collections::BTreeMap<Option<String>, u64> = stats
            .mqtt_dropped_by_device()
            .into_iter()
            .map(|(device, lost)| (Some(device), lost))
            .collect();
        totals.insert(None, stats.mqtt_dropped_unrouted.load(Ordering::Relaxed));
        let (rises, due) = events.tick(totals, tokio::time::Instant::now());
        if !rises.is_empty() {
            let lost: u64 = rises.iter().map(|(_, n)| n).sum();
            let mut whose: Vec<String> = rises
                .iter()
                .take(5)
                .map(|(device, n)| match device {
                    Some(device) => format!("{device}: {n}"),
                    None => format!("no device's: {n}"),
                })
                .collect();
            if rises.len() > 5 {
                whose.push(format!("and {} more", rises.len() - 5));
            }
            tracing::warn!(
                "the MQTT broker dropped {lost} message(s) before the gateway read them ({}): its log overflowed while the gateway could not keep up",
                whose.join(", ")
            );
        }
        for (device, lost) in due {
            let whose = match &device {
                Some(device) => format!("of device `{device}`"),
                None => "on no device's topic".to_string(),
            };
            let message = format!(
                "the MQTT broker dropped {lost} message(s) {whose} before the gateway read them: its log overflowed while the gateway could not keep up"
            );
            let mut event = serde_json::json!({
                "source": "mqtt",
                "severity": "warning",
                "kind": "mqtt_dropped",
                "dropped": lost,
                "message": message,
            });
            if let Some(device) = device {
                event["device"] = serde_json::json!(device);
            }
            journal.record(crate::store::Log::Events, &event).await;
        }
    }
}

/// Messages lost: whose (a device; `None` for no device's topic), and how
/// many.
#[cfg(feature = "mqtt")]
type Lost = (Option<String>, u64);

/// Turns the running loss counts (per device; `None` for no device's
/// topic) into events. A device's first losses raise an event at once;
/// after that it raises at most one per [`LOSS_EVENT_EVERY`], with what it
/// lost since its last one. An overload that costs a thousand devices
/// messages every second then writes a thousand events a minute, not a
/// second.
#[cfg(feature = "mqtt")]
#[derive(Default)]
struct LossEvents {
    /// The counts at the last tick.
    seen: std::collections::BTreeMap<Option<String>, u64>,
    /// Losses not yet in an event, and when each device last raised one.
    pending: std::collections::BTreeMap<Option<String>, u64>,
    raised: std::collections::HashMap<Option<String>, tokio::time::Instant>,
}

#[cfg(feature = "mqtt")]
impl LossEvents {
    /// Takes the counts now; returns the rises since the last tick, and
    /// the events due (whose, how many).
    fn tick(
        &mut self,
        totals: std::collections::BTreeMap<Option<String>, u64>,
        now: tokio::time::Instant,
    ) -> (Vec<Lost>, Vec<Lost>) {
        let mut rises = Vec::new();
        for (whose, &total) in &totals {
            let seen = self.seen.get(whose).copied().unwrap_or(0);
            if total > seen {
                rises.push((whose.clone(), total - seen));
                *self.pending.entry(whose.clone()).or_default() += total - seen;
            }
        }
        self.seen = totals;
        let due: Vec<Option<String>> = self
            .pending
            .keys()
            .filter(|whose| {
                self.raised
                    .get(*whose)
                    .is_none_or(|last| now.duration_since(*last) >= LOSS_EVENT_EVERY)
            })
            .cloned()
            .collect();
        let events = due
            .into_iter()
            .filter_map(|whose| {
                let lost = self.pending.remove(&whose)?;
                self.raised.insert(whose.clone(), now);
                Some((whose, lost))
            })
            .collect();
        (rises, events)
    }
}

#[cfg(all(test, feature = "mqtt"))]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::store::Log;

    #[tokio::test(start_paused = true)]
    async fn mqtt_losses_raise_events_per_device_at_most_one_a_minute() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store"));
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let retention = Retention {
            max_entries: 100,
            max_age: Duration::from_secs(3600),
        };
        let journal = Journal::start(store, retention, &tasks, shutdown.clone());
        let stats = Arc::new(driver::DriverStats::default());
        tasks.spawn(watch_mqtt_losses(
            stats.clone(),
            journal.clone(),
            shutdown.clone(),
        ));
        let events = || async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            journal
                .recent(Log::Events, u64::MAX, 100, |e| e["kind"] == "mqtt_dropped")
                .await
                .expect("recent")
        };
        assert!(events().await.is_empty(), "nothing lost, nothing raised");
        let lose = |device: Option<&str>, n: u64| {
            stats.mqtt_dropped.fetch_add(n, Ordering::Relaxed);
            match device {
                Some(device) => {
                    *stats
                        .mqtt_dropped_by_device
                        .lock()
                        .expect("lock")
                        .entry(device.to_string())
                        .or_default() += n;
                }
                None => {
                    stats.mqtt_dropped_unrouted.fetch_add(n, Ordering::Relaxed);
                }
            }
        };
        lose(Some("meter-1"), 5);
        let raised = events().await;
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0]["dropped"], 5);
        assert_eq!(raised[0]["device"], "meter-1");
        assert_eq!(raised[0]["severity"], "warning");
        lose(Some("meter-1"), 3);
        lose(Some("meter-2"), 2);
        lose(None, 7);
        let raised = events().await;
        assert_eq!(raised.len(), 3, "{raised:?}");
        let newest: Vec<(&serde_json::Value, &serde_json::Value)> = raised[..2]
            .iter()
            .map(|e| (&e["device"], &e["dropped"]))
            .collect();
        assert_eq!(
            newest,
            [
                (&serde_json::json!("meter-2"), &serde_json::json!(2)),
                (&serde_json::Value::Null, &serde_json::json!(7)),
            ],
            "a first loss is raised at once, one event per device, newest first"
        );
        // meter-1 raised an event a second ago: its 3, and what it loses
        // next, wait for the minute to pass.
        lose(Some("meter-1"), 4);
        tokio::time::sleep(LOSS_EVENT_EVERY).await;
        let raised = events().await;
        assert_eq!(raised.len(), 4, "{raised:?}");
        assert_eq!(
            (&raised[0]["device"], &raised[0]["dropped"]),
            (&serde_json::json!("meter-1"), &serde_json::json!(7)),
            "held back, then raised with the sum"
        );
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
