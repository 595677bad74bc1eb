//! Serving a REST API (the gateway's and `ferrite-cloud`'s): plain HTTP or
//! HTTPS (rustls), with the limits that keep one client from starving the
//! others. Feature `serve`.
//!
//! - At most `max_connections` at once: the accept loop waits for a free
//!   slot, so further clients wait in the kernel's backlog.
//! - A client must finish its TLS handshake and then each request's headers
//!   within `header_timeout` (hyper's header read timeout, which also runs
//!   while a kept-alive connection idles), or it is disconnected.
//! - Bodies are capped and requests time out in the router (the gateway's
//!   `api::router`).
//!
//! Stopping closes the listener and lets open connections finish the request
//! they are on.
//!
//! Also the bearer-token middleware both APIs put in front of their routes
//! ([`require_bearer`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferrite_models::config::Role;
use ferrite_models::tokens::Tokens;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How the API is served.
#[derive(Clone)]
pub struct ServeOptions {
    /// HTTPS when set.
    pub tls: Option<TlsAcceptor>,
    /// Most connections at once.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake and for each request's headers.
    pub header_timeout: Duration,
}

/// The API's certificate or key did not load.
#[derive(Debug, thiserror::Error)]
#[error("the API's HTTPS: {0}")]
pub struct TlsError(String);

/// A rustls acceptor for `certificate` (PEM chain) and `private_key` (PEM),
/// on ring, speaking HTTP/1.1. The files are read as the uplink reads its
/// own ([`crate::link`]).
pub fn tls_acceptor(certificate: &Path, private_key: &Path) -> Result<TlsAcceptor, TlsError> {
    use crate::link::{read_certs, read_private_key};
    let failed = |e: &dyn std::fmt::Display| TlsError(e.to_string());
    let chain = read_certs(certificate).map_err(|e| failed(&e))?;
    let key = read_private_key(private_key).map_err(|e| failed(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(format!("{}: {e}", certificate.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!("API accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (router, options, shutdown) = (router.clone(), options.clone(), shutdown.clone());
        connections.spawn(async move {
            match &options.tls {
                None => connection(stream, peer, router, &options, shutdown).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(options.header_timeout, handshake).await {
                        Ok(Ok(tls)) => connection(tls, peer, router, &options, shutdown).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
}

/// One HTTP/1.1 connection, told to finish its request and close when the
/// gateway stops.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    options: &ServeOptions,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("API connection from {peer} ended: {e}");
    }
}

/// Bearer tokens in front of an API: the gateway's and the control
/// plane's use the same middleware, [`require_bearer`], each with its own
/// map from call to role.
#[derive(Clone)]
pub struct Bearer {
    /// The tokens; none means no authentication (such an API serves
    /// loopback only, which its owner enforces).
    pub tokens: Arc<Tokens>,
    /// The role a call needs, from its method and matched route.
    pub needs: fn(&Method, Option<&str>) -> Role,
    /// The realm named in the `WWW-Authenticate` challenge.
    pub realm: &'static str,
}

/// Middleware (as a route layer, so that the matched route is known):
/// authenticates the call by its bearer token and checks its role, then
/// hands the [`Principal`](ferrite_models::tokens::Principal) on to the
/// handler. 401 `unauthorized` (no token,
/// another scheme, an unknown token) with a Bearer challenge, 403
/// `forbidden` for a role too low; both `{"error":{"code","message"}}`. A
/// token is never logged or echoed.
pub async fn require_bearer(
    State(bearer): State<Bearer>,
    route: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    if !bearer.tokens.enabled() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(presented) = presented else {
        let message = "this API needs `Authorization: Bearer <token>`";
        return unauthorized(bearer.realm, message, false);
    };
    let Some(principal) = bearer.tokens.holder(presented).cloned() else {
        return unauthorized(bearer.realm, "unknown token", true);
    };
    let needed = (bearer.needs)(request.method(), route.as_ref().map(MatchedPath::as_str));
    if principal.role < needed {
        let message = format!(
            "token `{}` has role {}; {} {} needs role {}",
            principal.name,
            principal.role.name(),
            request.method(),
            request.uri().path(),
            needed.name()
        );
        return error(StatusCode::FORBIDDEN, "forbidden", &message);
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn unauthorized(realm: &str, message: &str, invalid: bool) -> Response {
    let challenge = if invalid {
        format!(r#"Bearer realm="{realm}", error="invalid_token""#)
    } else {
        format!(r#"Bearer realm="{realm}""#)
    };
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    if let Ok(value) = header::HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// A file of an embedded page (a dashboard), with headers that keep the
/// page to its own origin: `policy` as its Content-Security-Policy, no
/// caching, no sniffing.
pub fn embedded_file(
    content_type: &'static str,
    policy: &'static str,
    body: &'static str,
) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
