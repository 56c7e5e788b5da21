//! The request log: one line per request, written when its reply has been sent (or was cut
//! short), so that the bytes and the time it gives are the transfer's, as nginx's
//! `$body_bytes_sent` and `$request_time` are, not the reply head's.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};

/// The header that names a request in the server's log and in its reply.
pub const REQUEST_ID: &str = "x-request-id";

/// The client's `X-Request-Id` when it is a plain token (1 to 64 ASCII letters, digits and
/// `-_.:`), so a client or proxy can follow its own ids into the log; else 16 random hex digits.
fn request_id(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_string)
}

/// One structured log line per request (method, route, status, body bytes sent, milliseconds
/// until the body ended) inside a `req{id=…}` span that also holds whatever else is logged while
/// the request runs. The id is sent back as `X-Request-Id`, errors included, so a user's report
/// can be found in the log. A body that ended before its length (the client went away, or a
/// read failed) adds `cut_short=true` and the `length` it had.
pub async fn log_request(req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let id = request_id(req.headers());
    let span = tracing::info_span!("req", id = %id);
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_string(), |m| m.as_str().to_string());
    // Written from here if the handler is dropped unfinished (its connection went away).
    let mut unanswered = Unanswered(Some(Line {
        span: span.clone(),
        method: method.clone(),
        route,
        status: 0,
        started,
        length: None,
        sent: 0,
    }));
    let mut response = next.run(req).instrument(span).await;
    let mut line = unanswered.0.take().expect("taken once");
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    // A HEAD reply's length describes the GET's body, which is never sent; a 304 has none.
    let bodiless = method == Method::HEAD || response.status() == StatusCode::NOT_MODIFIED;
    let length = if bodiless {
        Some(0)
    } else {
        response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .or_else(|| hyper::body::Body::size_hint(response.body()).exact())
    };
    line.status = response.status().as_u16();
    line.length = length;
    response.map(|inner| {
        Body::new(Logged {
            inner,
            line: Some(line),
        })
    })
}

/// What the line will say, filled in as the body goes out.
struct Line {
    span: tracing::Span,
    method: Method,
    route: String,
    status: u16,
    started: Instant,
    /// The body's length when known in advance (`Content-Length`, or an exact size).
    length: Option<u64>,
    sent: u64,
}

impl Line {
    fn write(self, ended: bool) {
        let _in = self.span.enter();
        let ms = self.started.elapsed().as_millis() as u64;
        let (method, route, status, bytes) = (&self.method, self.route, self.status, self.sent);
        // Ended, or dropped after all of a known length went out (hyper stops polling then).
        if ended || self.length == Some(self.sent) {
            tracing::info!(target: "cairn_http", %method, route, status, bytes, ms, "request");
        } else {
            // Absent when the length was not known in advance.
            let length = self.length;
            tracing::info!(target: "cairn_http", %method, route, status, bytes, ms, cut_short = true, length, "request");
        }
    }
}

/// The line of a request whose handler has not returned yet.
struct Unanswered(Option<Line>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(line) = self.0.take() {
            let _in = line.span.enter();
            let ms = line.started.elapsed().as_millis() as u64;
            let (method, route) = (&line.method, &line.route);
            tracing::info!(target: "cairn_http", %method, route, ms, unanswered = true, "request");
        }
    }
}

/// A reply body that counts what is taken from it and writes the request's line when it ends
/// or is dropped.
struct Logged {
    inner: Body,
    line: Option<Line>,
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        // What the body logs as it is read (a download cut short) belongs to the request.
        let span = self.line.as_ref().map(|l| l.span.clone());
        let _in = span.as_ref().map(tracing::Span::enter);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(line) = &mut self.line {
                    line.sent += n;
                }
            }
            Poll::Ready(None) => {
                if let Some(line) = self.line.take() {
                    line.write(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(line) = self.line.take() {
                    line.write(false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            line.write(false);
        }
    }
}
