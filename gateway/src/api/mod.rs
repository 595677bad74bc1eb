//! The REST API, on axum: docs/contract.md's routes and the additions docs/gateway.md lists.
//!
//! - `error`: the error JSON and the status each failure maps to.
//! - `auth`: bearer tokens and roles (401/403) from `[[api.tokens]]`.
//! - served by `ferrite_sync::serve`: HTTP or HTTPS, the connection limit
//!   and header timeouts.
//! - `devices`: devices, properties, writes and history.
//! - `methods`: calls of the methods a model declares.
//! - `models`: the device models as loaded.
//! - `config`: live configuration: the running version and its history,
//!   rollback, and `PUT`/`DELETE` of models and devices (rules: `rules`).
//! - `rules`: rules (state, enable, disable, replace, delete), events and
//!   the audit log.
//! - `stream`: live values as server-sent events.
//! - `observe`: `/metrics`, `/healthz`, `/readyz`, and the layer that counts
//!   requests.
//! - `dashboard`: the browser dashboard at `/`, embedded.
//! - `debug`: a CPU profile (pprof format) and memory figures, admin only.
//! - shared with the control plane (`ferrite_sync`): `origin` refuses
//!   cross-site writes (403 `cross_origin`), `api_shape` puts the
//!   framework's own errors in the error shape and makes the served OpenAPI
//!   document exact ([`exact`]).
//!
//! [`documented`] builds the routes and the OpenAPI document together
//! (utoipa-axum), so every route is documented; Swagger UI serves the
//! document at `/api/docs/`.
//!
//! Requests are bounded: bodies to 64 KiB, handling to `request_timeout`
//! (30 s; a write waits for the device, whose own timeout is shorter).
//! `/healthz` and `/readyz` need no token.

pub mod auth;
mod config;
mod dashboard;
mod debug;
mod devices;
pub mod error;
mod methods;
mod models;
pub mod observe;
mod rules;
mod stream;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use tower_http::timeout::TimeoutLayer;

use crate::control::Control;
use crate::journal::Journal;
use crate::live::Live;
use crate::rules::Rules;
use crate::running::Running;
use crate::store::Store;
use crate::store::writer::WriterStats;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The running project (for models, types and limits).
    pub running: Arc<Running>,
    /// The running devices.
    pub fleet: Arc<crate::fleet::Fleet>,
    /// Applies configuration changes.
    pub reconciler: Arc<crate::reconcile::Reconciler>,
    /// Live device state.
    pub live: Arc<Live>,
    /// The store, for history.
    pub store: Arc<dyn Store>,
    /// A writer per running device.
    pub writers: Arc<crate::control::Writers>,
    /// Store writer counters.
    pub stats: Arc<WriterStats>,
    /// Driver counters.
    pub driver_stats: Arc<ferrite_core::driver::DriverStats>,
    /// The checked write path.
    pub control: Arc<Control>,
    /// The rule engine.
    pub rules: Rules,
    /// Events and the audit log.
    pub journal: Arc<Journal>,
    /// The uplink's state, with `[cloud]`.
    pub uplink: Option<Arc<ferrite_sync::uplink::UplinkStatus>>,
    /// The northbound's state, with `[north]`.
    pub north: Option<Arc<crate::north::NorthStatus>>,
    /// The Prometheus series.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// When the gateway started.
    pub started: std::time::Instant,
    /// Fires when the gateway stops (ends live streams).
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The OpenAPI document's frame: title, tags, and the bearer scheme every
/// `/api/v1` route but the document itself asks for.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Ferrite gateway API",
        description = "Every device behind one REST API: read, write (checked against the model) and history; rules, events, the audit log, sync and status. See docs/contract.md and docs/gateway.md.",
    ),
    tags(
        (name = "devices", description = "Devices, readings, writes and history"),
        (name = "rules", description = "Control rules (admin role to change)"),
        (name = "config", description = "Live configuration: versions, rollback, and changing models and devices (admin role)"),
        (name = "journal", description = "Events and the audit log"),
        (name = "gateway", description = "Status, sync, metrics, health and live updates"),
    ),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// Adds the `bearer` security scheme (`[[api.tokens]]`).
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The API's routes with their OpenAPI document. Both come from the same
/// `routes!` lists, so a route cannot be served without being documented:
/// `(behind the tokens, open)`.
pub fn documented() -> (Router<AppState>, Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let (guarded, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(devices::list))
        .routes(routes!(
            devices::one,
            config::put_device,
            config::delete_device
        ))
        .routes(routes!(config::probe))
        .routes(routes!(devices::property, devices::write))
        .routes(routes!(devices::history))
        .routes(routes!(methods::call))
        .routes(routes!(models::list))
        .routes(routes!(
            models::one,
            config::put_model,
            config::delete_model
        ))
        .routes(routes!(config::get))
        .routes(routes!(config::rollback))
        .routes(routes!(rules::list))
        .routes(routes!(rules::one, rules::put, rules::delete))
        .routes(routes!(rules::enable))
        .routes(routes!(rules::disable))
        .routes(routes!(rules::events))
        .routes(routes!(rules::audit))
        .routes(routes!(status))
        .routes(routes!(sync))
        .routes(routes!(north))
        .routes(routes!(stream::values))
        .routes(routes!(observe::metrics))
        .routes(routes!(debug::profile))
        .routes(routes!(debug::memory))
        .split_for_parts();
    let (open, open_doc) = OpenApiRouter::new()
        .routes(routes!(observe::healthz))
        .routes(routes!(observe::readyz))
        .split_for_parts();
    doc.merge(open_doc);
    (guarded, open, doc)
}

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The router: every documented route but `/healthz` and `/readyz` behind
/// `tokens`; the OpenAPI document, its Swagger UI at `/api/docs` and the
/// dashboard at `/` open (they hold no data); each request answered within
/// `request_timeout`.
pub fn router(state: AppState, tokens: Arc<auth::Tokens>, request_timeout: Duration) -> Router {
    let (guarded, open, doc) = documented();
    let doc = exact(doc, tokens.enabled());
    let docs_ui =
        utoipa_swagger_ui::SwaggerUi::new("/api/docs").external_url_unchecked(OPENAPI_PATH, doc);
    guarded
        .route_layer(axum::middleware::from_fn_with_state(
            auth::bearer(tokens),
            ferrite_sync::serve::require_bearer,
        ))
        .merge(open)
        .merge(dashboard::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::count_requests,
        ))
        .merge(docs_ui)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(
            ferrite_sync::origin::same_origin_writes,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // Outermost: it also sees the timeout layer's 408.
        .layer(axum::middleware::from_fn(
            ferrite_sync::api_shape::json_errors,
        ))
        .with_state(state)
}

/// The document as this gateway serves it: bearer auth only with tokens,
/// names' pattern on path parameters, and every error each operation can
/// answer with ([`ferrite_sync::api_shape::exact_document`]).
pub fn exact(doc: utoipa::openapi::OpenApi, tokens: bool) -> serde_json::Value {
    use ferrite_sync::api_shape::{DocumentRules, exact_document};
    let rules = DocumentRules {
        tokens,
        open_paths: &["/healthz", "/readyz"],
        name_params: &["id", "name"],
        same_origin_writes: true,
        error_schema: "ErrorBody",
    };
    exact_document(&doc, &rules)
}

/// The gateway as a whole.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct StatusView {
    /// Ferrite's version.
    pub version: &'static str,
    /// `[gateway] id`.
    pub gateway: Option<String>,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Whether the store takes writes.
    pub store: StoreStatus,
    /// How many devices answer.
    pub devices: DeviceCount,
}

/// The store's health.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct StoreStatus {
    /// True while writes fail (a full disk, say); readings wait, none lost.
    pub failing: bool,
    /// Failed writes since start (each retried).
    pub failed_writes: u64,
    /// Why, while failing.
    pub last_error: Option<String>,
}

/// Devices, and how many of them answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeviceCount {
    /// Devices configured.
    pub total: usize,
    /// Devices online.
    pub online: usize,
}

/// The gateway as a whole: version, uptime, whether the store takes
/// writes, and how many devices answer.
#[utoipa::path(get, operation_id = "getStatus", path = "/api/v1/status", tag = "gateway",
    responses((status = 200, description = "The gateway's status", body = StatusView)))]
async fn status(State(state): State<AppState>) -> axum::Json<StatusView> {
    let stats = &state.stats;
    let failing = stats.failing.load(Ordering::Relaxed);
    let devices = state.live.summaries();
    let online = devices
        .iter()
        .filter(|d| d.status == crate::live::Status::Online)
        .count();
    axum::Json(StatusView {
        version: env!("CARGO_PKG_VERSION"),
        gateway: state
            .running
            .project()
            .config
            .as_ref()
            .map(|c| c.value.gateway.id.clone()),
        uptime_s: state.started.elapsed().as_secs(),
        store: StoreStatus {
            failing,
            failed_writes: stats.failures.load(Ordering::Relaxed),
            last_error: failing.then(|| crate::store::health::last_error(stats)),
        },
        devices: DeviceCount {
            total: devices.len(),
            online,
        },
    })
}

/// The uplink to `ferrite-cloud`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SyncView {
    /// Whether `[cloud]` is configured.
    pub configured: bool,
    /// The control plane's broker.
    pub broker: Option<String>,
    /// Connected to it now.
    pub connected: bool,
    /// The highest change sequence the control plane acknowledged.
    pub last_acked: Option<u64>,
    /// Changes waiting to be acknowledged.
    pub backlog: Option<u64>,
    /// Their bytes.
    pub backlog_bytes: Option<u64>,
    /// Changes dropped over the outbox budget.
    pub dropped: Option<u64>,
    /// Batches sent since start (resends included).
    pub batches_sent: Option<u64>,
    /// Compressed bytes sent since start.
    pub bytes_sent: Option<u64>,
    /// Changes sent since start.
    pub points_sent: Option<u64>,
    /// Sessions (Hellos) since start.
    pub sessions: Option<u64>,
    /// The last desired-state version applied.
    pub desired_version: Option<u64>,
    /// The newest config bundle version from the control plane handled
    /// (applied or refused; `GET /api/v1/config` says which).
    pub config_bundle: Option<u64>,
    /// The last error since the last acknowledgement.
    pub last_error: Option<String>,
    /// Messages on the control plane's topics that made no sense (an Ack
    /// or Resume past what was ever sent) and were refused, changing
    /// nothing; each also raises a `sync_refused` event.
    pub refused: Option<u64>,
    /// Journal events sent to the control plane since start (resends
    /// included).
    pub events_sent: Option<u64>,
    /// The newest journal event sequence the control plane has stored.
    pub events_acked: Option<u64>,
}

/// The uplink's state: connection, backlog, what was sent.
#[utoipa::path(get, operation_id = "getSync", path = "/api/v1/sync", tag = "gateway",
    responses((status = 200, description = "The uplink's state", body = SyncView)))]
async fn sync(State(state): State<AppState>) -> axum::Json<SyncView> {
    let project = state.running.project();
    let cloud = project.config.as_ref().and_then(|c| c.value.cloud.as_ref());
    let outbox = state.store.outbox();
    let uplink = state.uplink.as_ref().map(|u| u.snapshot());
    axum::Json(SyncView {
        configured: cloud.is_some(),
        broker: cloud.map(|c| c.broker.clone()),
        connected: uplink.as_ref().is_some_and(|u| u.connected),
        last_acked: uplink.as_ref().map(|u| u.last_acked),
        backlog: outbox.map(|o| o.backlog),
        backlog_bytes: outbox.map(|o| o.bytes),
        dropped: outbox.map(|o| o.dropped),
        batches_sent: uplink.as_ref().map(|u| u.batches),
        bytes_sent: uplink.as_ref().map(|u| u.bytes),
        points_sent: uplink.as_ref().map(|u| u.points),
        sessions: uplink.as_ref().map(|u| u.sessions),
        desired_version: uplink.as_ref().map(|u| u.desired_version),
        config_bundle: uplink.as_ref().map(|u| u.config_version),
        refused: uplink.as_ref().map(|u| u.refused),
        events_sent: uplink.as_ref().map(|u| u.events_sent),
        events_acked: uplink.as_ref().map(|u| u.events_acked),
        last_error: uplink.and_then(|u| u.last_error),
    })
}

/// The northbound to an external broker (`[north]`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct NorthView {
    /// Whether `[north]` is configured.
    pub configured: bool,
    /// `sparkplug` or `uns`.
    pub format: Option<String>,
    /// The external broker.
    pub broker: Option<String>,
    /// The counters and the backlog, with `[north]`.
    pub status: Option<crate::north::NorthSnapshot>,
}

/// The northbound's state: connection, backlog, what was published.
#[utoipa::path(get, operation_id = "getNorth", path = "/api/v1/north", tag = "gateway",
    responses((status = 200, description = "The northbound's state", body = NorthView)))]
async fn north(State(state): State<AppState>) -> axum::Json<NorthView> {
    let project = state.running.project();
    let section = project.config.as_ref().and_then(|c| c.value.north.as_ref());
    axum::Json(NorthView {
        configured: section.is_some(),
        format: section.map(|n| match n.format {
            ferrite_models::config::NorthFormat::Sparkplug => "sparkplug".to_string(),
            ferrite_models::config::NorthFormat::Uns => "uns".to_string(),
        }),
        broker: section.map(|n| n.broker.clone()),
        status: state.north.as_ref().map(|n| n.snapshot()),
    })
}

async fn not_found() -> error::ApiError {
    error::ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /api/v1/devices",
    )
}
