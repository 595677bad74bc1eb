//! The dashboard at `/`: one page, one script and one style sheet, embedded
//! in the binary (`dashboard/`), with no framework and nothing fetched from
//! elsewhere, so it works on a plant network without internet. A
//! Content-Security-Policy of `'self'` holds the page to that.
//!
//! It shows every device's status and live values (from the
//! `/api/v1/stream` events) with a sparkline of recent history, a write form
//! for each writable property (with the model's limits), the rules with
//! their state, recent events, the sync state and the gateway's status. It
//! calls the same REST API as anyone else: with `[[api.tokens]]` it asks for
//! a token and keeps it for the browser tab only.

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// Nothing but this origin: no CDN, no inline script.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ferrite_sync::serve::embedded_file(content_type, POLICY, body)
}

/// The dashboard's three files.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
