//! The fleet page at `/`: one page, one script and one style sheet,
//! embedded in the binary (`page/`), nothing fetched from elsewhere (a
//! Content-Security-Policy of `'self'`), as the gateway's dashboard. It
//! calls the same REST API as anyone else: gateways with status, backlog
//! and labels (filtered by label), a gateway's twin, and the rollouts with
//! each gateway's state.

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// Nothing but this origin: no CDN, no inline script.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    crate::serve::embedded_file(content_type, POLICY, body)
}

/// The page's three files (open: the data behind them needs a token).
pub fn routes() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/fleet/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/fleet/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
