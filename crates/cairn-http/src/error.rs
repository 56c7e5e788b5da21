//! Errors → HTTP, in one place.
//!
//! Handlers return [`ApiError`]; its `IntoResponse` only sets the status and stashes the error in
//! the response's extensions. The [`render_errors`] middleware then writes every error response —
//! ours and the framework's own rejections (bad JSON, unknown route) — as the protocol's JSON body
//! `{"errors":[{"op","kind","reason"}]}`, with `op` the matched route, and logs 5xx at warn.

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_core::ErrorKind;
use serde_json::json;

/// An error on its way to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub reason: String,
    /// For a 416: the representation's size, for `Content-Range: bytes */size`.
    pub range_size: Option<u64>,
    /// For a 429: seconds until a retry can succeed, for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            reason: reason.into(),
            range_size: None,
            retry_after: None,
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", reason)
    }

    pub fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", reason)
    }

    pub fn forbidden(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", reason)
    }

    pub fn unauthorized(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
    }

    /// A fault of the server's own making (500 `internal`), never of the request.
    pub fn internal(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", reason)
    }

    pub fn range_not_satisfiable(size: u64, reason: impl Into<String>) -> ApiError {
        ApiError {
            range_size: Some(size),
            ..ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "bad_range", reason)
        }
    }
}

/// The status for each engine error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Conflict | ErrorKind::Incomplete | ErrorKind::BadDigest => StatusCode::CONFLICT,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Corrupt | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<cairn_core::Error> for ApiError {
    fn from(e: cairn_core::Error) -> ApiError {
        ApiError {
            retry_after: (e.kind == ErrorKind::Busy).then_some(1),
            ..ApiError::new(status_of(e.kind), e.kind.as_str(), e.reason)
        }
    }
}

impl From<cairn_core::IdError> for ApiError {
    fn from(e: cairn_core::IdError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

impl From<cairn_core::PathError> for ApiError {
    fn from(e: cairn_core::PathError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = self.status.into_response();
        r.extensions_mut().insert(self);
        r
    }
}

fn kind_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE
        | StatusCode::UNPROCESSABLE_ENTITY
        | StatusCode::BAD_REQUEST => "invalid",
        s if s.is_server_error() => "internal",
        _ => "invalid",
    }
}

/// Middleware: renders every 4xx/5xx as the protocol's JSON error body.
pub async fn render_errors(req: Request, next: Next) -> Response {
    let op = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_string(), |m| m.as_str().to_string());
    let method = req.method().clone();
    let mut response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        json_reply_headers(response.headers_mut());
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let err = match parts.extensions.remove::<ApiError>() {
        Some(e) => e,
        None => {
            // A framework rejection: keep its text as the reason.
            let bytes = axum::body::to_bytes(body, 64 << 10)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            let reason = match (text.is_empty(), status) {
                (false, _) => text,
                (true, StatusCode::NOT_FOUND) => "no such route".to_string(),
                (true, s) => s.canonical_reason().unwrap_or("error").to_string(),
            };
            ApiError::new(status, kind_for(status), reason)
        }
    };
    if status.is_server_error() {
        tracing::warn!(%method, op, kind = err.kind, reason = %err.reason, "request failed");
    }
    // A HEAD is named as the GET it stands for, so its Content-Length is the GET's exactly.
    let shown = match method {
        axum::http::Method::HEAD => axum::http::Method::GET,
        m => m,
    };
    let body = json!({"errors": [{"op": format!("{shown} {op}"), "kind": err.kind, "reason": err.reason}]});
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    if status == StatusCode::UNAUTHORIZED {
        parts.headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"cairn\""),
        );
    }
    if let Some(secs) = err.retry_after {
        parts
            .headers
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(size) = err.range_size {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
            parts.headers.insert(header::CONTENT_RANGE, v);
        }
        parts
            .headers
            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    json_reply_headers(&mut parts.headers);
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

/// An API reply in JSON is never sniffed as another type (an error's reason may quote a path
/// such as `<script>…`), and never stored by a cache (it may answer a request whose token was
/// in the URL). Downloads set their own `Cache-Control`.
fn json_reply_headers(headers: &mut axum::http::HeaderMap) {
    let json = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !json {
        return;
    }
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}
