//! What both REST APIs (the gateway's and `ferrite-cloud`'s) promise about
//! their shape, and the two pieces that keep the promise. Feature `serve`.
//!
//! - [`json_errors`]: every error answer is `{"error":{"code","message"}}`,
//!   including the ones the framework makes on its own (405 for a method a
//!   path lacks, 408 from the timeout layer, 413 from the body limit, 400
//!   for a path that does not decode, 415 for a body of the wrong type).
//! - [`exact_document`]: the OpenAPI document says what the server does:
//!   bearer auth only when tokens are configured (and then 401 and 403 on
//!   every guarded operation), the name pattern on path parameters that are
//!   names, and the error answers any operation can get (400, 408, 413,
//!   415) with the error schema.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The largest framework error body read back to be wrapped (they are a
/// line of text).
const MAX_FRAMEWORK_BODY: usize = 16 * 1024;

/// Middleware: an error answer that is not JSON (one the framework made)
/// becomes `{"error":{"code","message"}}` with the same status and headers;
/// its text, if any, is the message.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_FRAMEWORK_BODY)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let (code, fallback) = framework_error(status);
    let body =
        json!({"error": {"code": code, "message": text.unwrap_or_else(|| fallback.to_string())}});
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    Response::from_parts(parts, Body::from(bytes)).into_response()
}

/// The code and default message of an error the framework made.
fn framework_error(status: StatusCode) -> (&'static str, &'static str) {
    match status {
        StatusCode::BAD_REQUEST => ("bad_request", "the request could not be read"),
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this path does not take that method (see the Allow header)",
        ),
        StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long and was cancelled"),
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "the body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "the body's Content-Type is not one this route takes",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ("unprocessable", "the body could not be used"),
        _ if status.is_server_error() => ("internal", "the server failed"),
        _ => ("error", "the request failed"),
    }
}

/// What [`exact_document`] needs to know about an API.
pub struct DocumentRules<'a> {
    /// Whether bearer tokens are configured (`[[api.tokens]]`).
    pub tokens: bool,
    /// Paths that stay open with tokens (`/healthz`, `/readyz`).
    pub open_paths: &'a [&'a str],
    /// Path parameters that are names (devices, properties, models, rules),
    /// which the server checks against `ferrite_models::units::NAME_PATTERN`.
    pub name_params: &'a [&'a str],
    /// Whether state-changing calls from a foreign `Origin` are refused with
    /// 403 (both APIs do).
    pub same_origin_writes: bool,
    /// The schema of error bodies, under `components/schemas`.
    pub error_schema: &'a str,
}

/// The document `doc` (utoipa's) as JSON, made exact by `rules`: see the
/// module's notes. JSON, since utoipa's types do not all read back what
/// they write.
pub fn exact_document(doc: &impl serde::Serialize, rules: &DocumentRules<'_>) -> Value {
    match serde_json::to_value(doc) {
        Ok(doc) => made_exact(doc, rules),
        Err(e) => {
            tracing::error!("the OpenAPI document does not serialise ({e})");
            json!({"openapi": "3.1.0", "info": {"title": "unavailable", "version": "0"}, "paths": {}})
        }
    }
}

fn made_exact(mut doc: Value, rules: &DocumentRules<'_>) -> Value {
    if let Some(map) = doc.as_object_mut() {
        map.remove("security");
    }
    if !rules.tokens
        && let Some(schemes) = doc
            .pointer_mut("/components/securitySchemes")
            .and_then(Value::as_object_mut)
    {
        schemes.remove("bearer");
    }
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", rules.error_schema)}}}
        })
    };
    let name_schema = json!({
        "type": "string",
        "pattern": ferrite_models::units::NAME_PATTERN,
        "minLength": 1,
        "maxLength": ferrite_models::units::NAME_MAX,
    });
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        let guarded = rules.tokens && !rules.open_paths.contains(&path.as_str());
        for (method, op) in item.iter_mut() {
            if !matches!(method.as_str(), "get" | "put" | "post" | "delete" | "patch") {
                continue;
            }
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            let mut takes_input = false;
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                takes_input = !params.is_empty();
                for param in params.iter_mut() {
                    let is_name = param["in"] == "path"
                        && param["name"]
                            .as_str()
                            .is_some_and(|n| rules.name_params.contains(&n));
                    if is_name {
                        param["schema"] = name_schema.clone();
                    }
                }
            }
            let body = op.contains_key("requestBody");
            if guarded {
                op.insert("security".into(), json!([{"bearer": []}]));
            } else {
                op.remove("security");
            }
            let writes = method != "get";
            let responses = op
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut();
            let Some(responses) = responses else {
                continue;
            };
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| error(description));
            };
            if takes_input || body {
                add("400", "A bad parameter or body");
            }
            if guarded {
                add("401", "No token, or an unknown one");
                add("403", "The token's role is too low for this call");
            }
            if writes && rules.same_origin_writes {
                add("403", "A state-changing call from a foreign Origin");
            }
            add("408", "The request took too long and was cancelled");
            if body {
                add("413", "The body is too large");
                add("415", "The body's Content-Type is not one this route takes");
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        json!({
            "openapi": "3.1.0",
            "security": [{"bearer": []}],
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "paths": {
                "/api/v1/devices/{id}": {
                    "get": {
                        "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "ok"}, "404": {"description": "no such device"}}
                    },
                    "put": {"requestBody": {}, "responses": {}}
                },
                "/healthz": {"get": {"responses": {"200": {"description": "ok"}}}}
            }
        })
    }

    fn rules(tokens: bool) -> DocumentRules<'static> {
        DocumentRules {
            tokens,
            open_paths: &["/healthz"],
            name_params: &["id"],
            same_origin_writes: true,
            error_schema: "ErrorBody",
        }
    }

    #[test]
    fn without_tokens_nothing_declares_security() {
        let out = exact_document(&doc(), &rules(false));
        assert!(out.get("security").is_none());
        assert!(out.pointer("/components/securitySchemes/bearer").is_none());
        let get = &out["paths"]["/api/v1/devices/{id}"]["get"];
        assert!(get.get("security").is_none());
        assert!(get["responses"].get("401").is_none());
        assert_eq!(
            get["parameters"][0]["schema"]["pattern"],
            ferrite_models::units::NAME_PATTERN
        );
        assert_eq!(
            get["responses"]["404"]["description"], "no such device",
            "what the handler declared stays"
        );
        assert!(get["responses"].get("400").is_some());
        assert!(get["responses"].get("408").is_some());
        assert!(
            get["responses"].get("403").is_none(),
            "a read has no 403 without tokens"
        );
        let put = &out["paths"]["/api/v1/devices/{id}"]["put"];
        for status in ["400", "403", "408", "413", "415"] {
            assert_eq!(
                put["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{status}"
            );
        }
    }

    #[test]
    fn with_tokens_guarded_operations_declare_bearer_and_401() {
        let out = exact_document(&doc(), &rules(true));
        assert!(out.get("security").is_none());
        assert!(out.pointer("/components/securitySchemes/bearer").is_some());
        let get = &out["paths"]["/api/v1/devices/{id}"]["get"];
        assert_eq!(get["security"], json!([{"bearer": []}]));
        assert!(get["responses"].get("401").is_some());
        assert!(get["responses"].get("403").is_some());
        let health = &out["paths"]["/healthz"]["get"];
        assert!(health.get("security").is_none());
        assert!(health["responses"].get("401").is_none());
        assert!(health["responses"].get("400").is_none(), "no input");
    }

    #[tokio::test]
    async fn framework_errors_come_out_in_the_error_shape() {
        use axum::routing::get;
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route("/only-get", get(|| async { "ok" }))
            .route(
                "/text-error",
                get(|| async { (StatusCode::BAD_REQUEST, "Invalid URL: bad") }),
            )
            .route(
                "/json-error",
                get(|| async {
                    (
                        StatusCode::NOT_FOUND,
                        axum::Json(json!({"error": {"code": "mine", "message": "kept"}})),
                    )
                }),
            )
            .layer(axum::middleware::from_fn(json_errors));
        let call = |method: &str, uri: &str| {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("request");
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await.expect("infallible");
                let status = response.status();
                let allow = response.headers().get(header::ALLOW).cloned();
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .expect("body");
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                (status, body, allow)
            }
        };
        let (status, body, allow) = call("DELETE", "/only-get").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert!(allow.is_some(), "the Allow header stays");
        let (status, body, _) = call("GET", "/text-error").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["message"], "Invalid URL: bad");
        let (status, body, _) = call("GET", "/json-error").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "mine");
        let (status, body, _) = call("GET", "/only-get").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, Value::Null, "success passes untouched");
    }
}
