//! The gateway's end of the cloud sync, wired to the rest of the gateway:
//! ferrite-sync's uplink reads the store's outbox, and the device twin's
//! desired state goes through [`Control::write`], the same checked path as a
//! REST write (model type, access, limits, rule holds, audit log).
//!
//! Also watches the outbox's budget: when changes are dropped to stay
//! within it, an event says how many (the uplink tells the cloud as well).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferrite_models::Project;
use ferrite_models::config::CloudSection;
use ferrite_models::project::DocKind;
use ferrite_sync::delta::{from_wire, to_wire};
use ferrite_sync::link::LinkOptions;
use ferrite_sync::outbox::OutboxAccess;
use ferrite_sync::uplink::{self, ConfigHandler, DesiredHandler, UplinkConfig, UplinkStatus};
use ferrite_sync::wire::{ConfigBundle, ConfigReport, DesiredPatch, Reported};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::{Actor, Control};
use crate::journal::Journal;
use crate::reconcile::{ApplyError, Change, Origin, Reconciler};
use crate::store::Store;

/// Desired state, written through the control path.
struct DesiredWrites {
    control: Arc<Control>,
}

impl DesiredHandler for DesiredWrites {
    fn apply<'a>(
        &'a self,
        patch: &'a DesiredPatch,
    ) -> Pin<Box<dyn Future<Output = Reported> + Send + 'a>> {
        Box::pin(async move {
            let mut report = Reported {
                version: patch.version,
                device: patch.device.clone(),
                ..Reported::default()
            };
            // Sorted by name, so writes go in a deterministic order (the
            // patch's map has none).
            let mut properties: Vec<_> = patch.properties.iter().collect();
            properties.sort_by(|a, b| a.0.cmp(b.0));
            for (property, wire) in properties {
                let Some(value) = from_wire(wire) else {
                    report
                        .errors
                        .insert(property.clone(), "bad_value: no value given".into());
                    continue;
                };
                let json = json!(value);
                match self
                    .control
                    .write(&Actor::Cloud(patch.version), &patch.device, property, &json)
                    .await
                {
                    Ok((written, _)) => {
                        report.applied.insert(property.clone(), to_wire(&written));
                    }
                    Err(e) => {
                        report
                            .errors
                            .insert(property.clone(), format!("{}: {e}", e.code()));
                    }
                }
            }
            report
        })
    }
}

/// Config bundles, through the reconciler: the whole set checked, then run,
/// or refused with every problem while the old set runs on.
struct Bundles {
    reconciler: Arc<Reconciler>,
}

impl ConfigHandler for Bundles {
    fn apply<'a>(
        &'a self,
        bundle: &'a ConfigBundle,
    ) -> Pin<Box<dyn Future<Output = ConfigReport> + Send + 'a>> {
        Box::pin(async move {
            let mut documents = Vec::with_capacity(bundle.documents.len());
            let mut errors = Vec::new();
            for d in &bundle.documents {
                let kind = match d.kind.as_str() {
                    "model" => DocKind::DeviceModel,
                    "device" => DocKind::Device,
                    "rule" => DocKind::Rule,
                    other => {
                        errors.push(format!(
                            "`{}`: unknown kind `{other}` (model, device or rule)",
                            d.name
                        ));
                        continue;
                    }
                };
                documents.push((kind, d.name.clone(), d.text.clone()));
            }
            let result = if errors.is_empty() {
                let origin = Origin::Cloud {
                    bundle: bundle.version,
                };
                self.reconciler
                    .apply(Change::Bundle(documents), origin)
                    .await
            } else {
                Err(ApplyError::Invalid(errors))
            };
            match result {
                Ok(applied) => ConfigReport {
                    version: bundle.version,
                    applied: true,
                    errors: Vec::new(),
                    gateway_version: applied.version,
                    hash: applied.hash,
                    changed: applied.changed,
                },
                Err(e) => {
                    let running = self.reconciler.view();
                    ConfigReport {
                        version: bundle.version,
                        applied: false,
                        errors: match e {
                            ApplyError::Invalid(errors) => errors,
                            other => vec![other.to_string()],
                        },
                        gateway_version: running.version,
                        hash: running.hash,
                        changed: false,
                    }
                }
            }
        })
    }
}

/// The uplink's settings from `[cloud]`; paths resolved against the config.
pub fn config(project: &Project, gateway: &str, cloud: &CloudSection) -> UplinkConfig {
    let mut config = UplinkConfig::new(gateway, &cloud.broker);
    config.batch_interval = cloud.batch_interval.get();
    config.ack_timeout = cloud.ack_timeout.get();
    config.link = LinkOptions {
        // The username defaults to the gateway's id once there is a secret:
        // that is the login `ferrite-cloud gateway add` enrols.
        login: cloud
            .username
            .clone()
            .or_else(|| cloud.password_file.is_some().then(|| gateway.to_string()))
            .map(|user| {
                (
                    user,
                    cloud.password_file.as_ref().map(|p| project.resolve(p)),
                )
            }),
        ca_file: cloud.ca_file.as_ref().map(|p| project.resolve(p)),
        client_auth: cloud
            .client_certificate
            .as_ref()
            .zip(cloud.client_key.as_ref())
            .map(|(c, k)| (project.resolve(c), project.resolve(k))),
        ..config.link
    };
    config
}

/// What the uplink works with.
pub struct UplinkDeps {
    /// The outbox (in the store).
    pub outbox: Arc<dyn OutboxAccess>,
    /// The store, for the outbox's state.
    pub store: Arc<dyn Store>,
    /// The checked write path, for desired state.
    pub control: Arc<Control>,
    /// The reconciler, for config bundles.
    pub reconciler: Arc<Reconciler>,
    /// Events.
    pub journal: Arc<Journal>,
}

/// Starts the uplink and the outbox watcher on `tasks`.
pub fn start(
    config: UplinkConfig,
    deps: UplinkDeps,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Arc<UplinkStatus> {
    let status = Arc::new(UplinkStatus::default());
    tracing::info!("syncing to {} as `{}`", config.link.broker, config.gateway);
    let UplinkDeps {
        outbox,
        store,
        control,
        reconciler,
        journal,
    } = deps;
    tasks.spawn(uplink::run(
        config,
        outbox,
        Arc::new(DesiredWrites { control }),
        Some(Arc::new(Bundles { reconciler })),
        status.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(watch(store, status.clone(), journal, shutdown));
    status
}

/// Raises an event whenever the outbox dropped changes over its budget, or
/// the uplink refused a message that made no sense (an Ack or Resume past
/// what was ever sent: a forgery, or a control plane that lost its mind).
async fn watch(
    store: Arc<dyn Store>,
    status: Arc<UplinkStatus>,
    journal: Arc<Journal>,
    shutdown: CancellationToken,
) {
    let mut seen = store.outbox().map_or(0, |o| o.dropped);
    let mut refused_seen = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let uplink = status.snapshot();
        if uplink.refused > refused_seen {
            let refused = uplink.refused - refused_seen;
            refused_seen = uplink.refused;
            let message = format!(
                "the uplink refused {refused} message(s) from the control plane's topics that made no sense and changed nothing; the last: {}",
                uplink.last_refused.unwrap_or_default()
            );
            journal
                .warn(
                    "sync",
                    "sync_refused",
                    &message,
                    json!({"refused": refused}),
                )
                .await;
        }
        let Some(state) = store.outbox() else {
            continue;
        };
        if state.dropped > seen {
            let dropped = state.dropped - seen;
            seen = state.dropped;
            let message = format!(
                "the sync outbox is full: dropped the {dropped} oldest change(s) not yet acknowledged by the control plane ({} dropped since start); raise [cloud] outbox_mib or restore the uplink",
                state.dropped
            );
            journal
                .warn(
                    "sync",
                    "outbox_dropped",
                    &message,
                    json!({"dropped": dropped}),
                )
                .await;
        }
    }
}
