//! No cross-site writes, on both APIs (the gateway's and `ferrite-cloud`'s;
//! feature `serve`). A web page the operator has open can make the browser
//! send requests to the gateway or the control plane; without tokens nothing
//! else stops them, and with tokens a page still must not ride on a
//! dashboard's.
//!
//! So every state-changing call (PUT, POST, DELETE, PATCH) is refused with
//! 403 `cross_origin` when:
//! - its `Origin` (or, without one, its `Referer`) names another site than
//!   the `Host` it was sent to (`Origin: null` counts as another site); or
//! - it carries no `Authorization` and a content type that a browser sends
//!   cross-site without asking first (`application/x-www-form-urlencoded`,
//!   `multipart/form-data`, `text/plain`): an HTML form.
//!
//! Browsers send `Origin` with every cross-site PUT, POST and DELETE, so the
//! first rule catches pages; the second catches a form posted by a browser
//! that leaves `Origin` out. Clients that are not browsers (curl, scripts,
//! the control plane) send no `Origin` and are unaffected, so long as a body
//! they send names its type (`application/json`, `application/yaml`).
//! The dashboard (and the fleet page) is served by the API itself, so its
//! calls are same-origin.

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Middleware: refuses cross-site writes (see the module's docs).
pub async fn same_origin_writes(request: Request, next: Next) -> Response {
    if let Err(message) = check(request.method(), request.headers()) {
        let body = serde_json::json!({"error": {"code": "cross_origin", "message": message}});
        return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
    }
    next.run(request).await
}

/// Whether a call may change state, and if not, why.
pub fn check(method: &Method, headers: &HeaderMap) -> Result<(), String> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST).unwrap_or("");
    let source = text(header::ORIGIN)
        .map(|o| (o, "Origin"))
        .or_else(|| text(header::REFERER).map(|r| (r, "Referer")));
    if let Some((source, which)) = source
        && authority(source).is_none_or(|a| !a.eq_ignore_ascii_case(host))
    {
        return Err(format!(
            "{method} from another site ({which}: {source}) is refused; this API takes changes from its own pages and from clients that are not browsers"
        ));
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return Ok(());
    }
    let content_type = text(header::CONTENT_TYPE).map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    if let Some(kind) = content_type
        && matches!(
            kind.as_str(),
            "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
        )
    {
        return Err(format!(
            "{method} with content type {kind} and no token is refused (a web form could send it from another site); send application/json or application/yaml"
        ));
    }
    Ok(())
}

/// `host[:port]` of an origin or URL (`scheme://host[:port][/...]`); none
/// for `null` or anything else without a scheme. Default ports are dropped,
/// as a `Host` header leaves them out.
fn authority(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let default_port = match scheme {
        "http" => Some(":80"),
        "https" => Some(":443"),
        _ => None,
    };
    let trimmed = default_port
        .and_then(|p| authority.strip_suffix(p))
        .unwrap_or(authority);
    (!trimmed.is_empty() && !trimmed.contains('@')).then_some(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn writes_from_other_sites_and_forms_are_refused() {
        let host = (header::HOST, "gw.local:8080");
        let post = Method::POST;
        // Not browsers: no Origin.
        assert!(check(&post, &headers(std::slice::from_ref(&host))).is_ok());
        let json = (header::CONTENT_TYPE, "application/json");
        assert!(check(&post, &headers(&[host.clone(), json.clone()])).is_ok());
        // The gateway's own pages.
        let own = (header::ORIGIN, "http://gw.local:8080");
        assert!(check(&post, &headers(&[host.clone(), own])).is_ok());
        let own_referer = (header::REFERER, "http://gw.local:8080/#rules");
        assert!(check(&post, &headers(&[host.clone(), own_referer])).is_ok());
        // Other sites, by Origin or Referer, token or not.
        for source in [
            (header::ORIGIN, "http://evil.example"),
            (header::ORIGIN, "null"),
            (header::ORIGIN, "http://gw.local:8081"),
            (header::REFERER, "https://evil.example/page"),
            (header::ORIGIN, "http://gw.local:8080@evil.example"),
        ] {
            let e = check(&post, &headers(&[host.clone(), source.clone()]));
            assert!(e.is_err(), "{source:?}");
            let with_token = (header::AUTHORIZATION, "Bearer x");
            assert!(check(&post, &headers(&[host.clone(), source, with_token])).is_err());
        }
        // A form's content types without a token.
        for form in [
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/plain;charset=UTF-8",
        ] {
            let kind = (header::CONTENT_TYPE, form);
            assert!(
                check(&Method::PUT, &headers(&[host.clone(), kind.clone()])).is_err(),
                "{form}"
            );
            let with_token = (header::AUTHORIZATION, "Bearer x");
            assert!(check(&Method::PUT, &headers(&[host.clone(), kind, with_token])).is_ok());
        }
        // Reads are never refused.
        let evil = (header::ORIGIN, "http://evil.example");
        assert!(check(&Method::GET, &headers(&[host.clone(), evil])).is_ok());
        // Default ports.
        let host80 = (header::HOST, "gw.local");
        assert!(
            check(
                &post,
                &headers(&[host80, (header::ORIGIN, "http://gw.local:80")])
            )
            .is_ok()
        );
    }
}
