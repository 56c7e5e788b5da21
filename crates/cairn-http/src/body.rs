//! JSON request bodies: read here, before any handler, within a size limit, an idle deadline and
//! a memory budget shared by every request.
//!
//! A JSON body is parsed whole, and a parsed value takes many times its text (an array of
//! small numbers about twenty times). So the JSON bodies being read or handled at once are
//! bounded ([`JsonBodies::budget`], as large as one body at the limit), each weighing its bytes
//! or 64 bytes per JSON value in it, whichever is more (a body heavier than the whole budget is
//! 413). A body takes its
//! share as its bytes arrive (a body trickling in holds only what it sent; to grow it, it lets
//! go of what it holds and waits for the whole, so bodies never hold part while waiting for
//! each other) and keeps it until its response is made; one that cannot get more within `idle_timeout_secs` is answered 503
//! `busy` with `Retry-After`. Bodies weighing at most 64 KiB take no budget: they are most
//! requests, and must not queue behind a large body waiting for its share. A body that stops arriving is answered 408 after
//! `idle_timeout_secs`, and so is one arriving slower than 4 KiB/s on average after its first
//! `idle_timeout_secs`. Upload data (streamed into the store, never buffered) passes untouched.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Bytes a second a JSON body must arrive at on average, after its first `idle_timeout_secs`
/// (a 64 MiB body then has about four and a half hours).
const MIN_BODY_RATE: f64 = 4096.0;

/// The budget counts bodies in units of this many bytes.
const UNIT: usize = 1024;

#[derive(Clone)]
pub struct JsonBodies {
    max: usize,
    idle: Duration,
    /// Units of [`UNIT`] bytes of JSON bodies being read or handled.
    budget: Arc<Semaphore>,
}

impl JsonBodies {
    /// Bodies of at most `max` bytes, each frame arriving within `idle` of the previous one.
    pub fn new(max: usize, idle: Duration) -> JsonBodies {
        JsonBodies {
            max,
            idle,
            budget: Arc::new(Semaphore::new(units(max))),
        }
    }

    /// Bodies up to this length take nothing from the budget (64 KiB, or a sixteenth of the
    /// limit if that is less).
    fn small(&self) -> usize {
        (64 << 10).min(self.max / 16)
    }

    /// Middleware: reads a JSON request's body (refusing one declared over the limit before
    /// reading any of it) and hands the handler the bytes, holding the body's share of the
    /// budget until the response is made.
    pub async fn read(self, req: Request, next: Next) -> Response {
        if is_upload(&req) || !has_body(&req) {
            return next.run(req).await;
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(n) = declared.filter(|n| *n > self.max as u64) {
            return too_large(format!("the body is {n} bytes; at most {}", self.max));
        }
        let (parts, body) = req.into_parts();
        let (bytes, held) = match self.collect(body).await {
            Ok(read) => read,
            Err(e) => return e.into_response(),
        };
        let _held = match self.weigh(&bytes, held).await {
            Ok(held) => held,
            Err(e) => return e.into_response(),
        };
        next.run(Request::from_parts(parts, Body::from(bytes)))
            .await
    }

    /// Reads the body, taking its share of the budget as its bytes arrive (so a body trickling
    /// in holds only what it sent), and waiting at most `idle` for either a frame or budget.
    async fn collect(
        &self,
        mut body: Body,
    ) -> Result<(Bytes, Option<OwnedSemaphorePermit>), ApiError> {
        let mut out = BytesMut::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        let started = tokio::time::Instant::now();
        loop {
            // Each frame within `idle`, and the whole body at `MIN_BODY_RATE` on average after
            // its first `idle`: a byte every minute kept a connection (and the body's budget)
            // forever (review 32).
            let allowed = self.idle + Duration::from_secs_f64(out.len() as f64 / MIN_BODY_RATE);
            let left = allowed.saturating_sub(started.elapsed());
            let frame = match tokio::time::timeout(left.min(self.idle), body.frame()).await {
                Err(_) if left < self.idle => {
                    return Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "invalid",
                        format!(
                            "the request body arrives too slowly: {} bytes in {} s",
                            out.len(),
                            started.elapsed().as_secs()
                        ),
                    ))
                }
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "invalid",
                        format!(
                            "the request body stalled: nothing arrived for {} s",
                            self.idle.as_secs()
                        ),
                    ))
                }
                Ok(None) => return Ok((out.freeze(), held)),
                Ok(Some(Err(e))) => {
                    return Err(ApiError::bad_request(format!(
                        "the request body could not be read: {e}"
                    )))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            let len = out.len() + data.len();
            if len > self.max {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the body is over {} bytes", self.max),
                ));
            }
            // Small bodies (most requests) take no budget, so they never queue behind a large
            // one waiting for its share.
            if len > self.small() {
                self.hold(&mut held, units(len)).await?;
            }
            out.extend_from_slice(&data);
        }
    }
}

impl JsonBodies {
    /// Takes the rest of a read body's share: a body weighs its bytes or [`VALUE_BYTES`] per
    /// JSON value in it, whichever is more, because what a handler parses it into grows with
    /// the values, not the text (`[0,0,…]` is two bytes a value as text and 32 or more
    /// parsed). A body heavier than the whole budget is 413.
    async fn weigh(
        &self,
        bytes: &[u8],
        mut held: Option<OwnedSemaphorePermit>,
    ) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let values = cairn_core::json_scan::scan(bytes).values;
        let weight = bytes.len().max(values.saturating_mul(VALUE_BYTES));
        if weight <= self.small() {
            return Ok(held);
        }
        if weight > self.max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the body holds too many JSON values: about {values}, at most {}",
                    self.max / VALUE_BYTES
                ),
            ));
        }
        self.hold(&mut held, units(weight)).await?;
        Ok(held)
    }

    /// Makes `held` at least `want` units. What is held is let go first and the whole amount
    /// taken in one wait: two bodies that each held part of the budget while waiting for more
    /// would wait for each other until both timed out.
    async fn hold(
        &self,
        held: &mut Option<OwnedSemaphorePermit>,
        want: usize,
    ) -> Result<(), ApiError> {
        if held.as_ref().map_or(0, |p| p.num_permits()) >= want {
            return Ok(());
        }
        *held = None;
        let wait = self.budget.clone().acquire_many_owned(want as u32);
        match tokio::time::timeout(self.idle, wait).await {
            Ok(Ok(p)) => *held = Some(p),
            Ok(Err(_)) => return Err(internal_error()),
            Err(_) => return Err(busy(self.idle)),
        }
        Ok(())
    }
}

/// What one JSON value weighs in the budget, about what it takes parsed (a `serde_json`
/// value is 32 bytes, an object entry more with its key).
const VALUE_BYTES: usize = 64;

fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).clamp(1, u32::MAX as usize)
}

fn is_upload(req: &Request) -> bool {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .is_some_and(|m| m.as_str().ends_with("/file_jobs/{fj}/{uj}"))
}

/// Whether the request carries a body (hyper knows when it has none: a length of 0, or an
/// HTTP/1 request with neither length nor chunking, or an HTTP/2 head that ended the stream).
fn has_body(req: &Request) -> bool {
    !axum::body::HttpBody::is_end_stream(req.body())
}

fn too_large(reason: String) -> Response {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", reason).into_response()
}

fn internal_error() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the body budget is closed",
    )
}

/// Other requests' bodies took the whole budget for as long as this one may wait.
fn busy(waited: Duration) -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "other requests' JSON bodies filled the server's budget for {} s; retry",
                waited.as_secs()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use axum::Router;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tower::ServiceExt;

    fn app(bodies: JsonBodies, inside: Arc<AtomicUsize>, most: Arc<AtomicUsize>) -> Router {
        Router::new()
            .route(
                "/x",
                post(move |body: Bytes| async move {
                    let now = inside.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    inside.fetch_sub(1, SeqCst);
                    body.len().to_string()
                }),
            )
            .layer(axum::middleware::from_fn(move |req, next| {
                bodies.clone().read(req, next)
            }))
    }

    fn request(len: usize) -> Request {
        Request::post("/x")
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from(vec![b' '; len]))
            .unwrap()
    }

    /// Bodies that would together pass the budget are handled one after another; small ones
    /// side by side.
    #[tokio::test]
    async fn bodies_over_the_budget_wait_for_each_other() {
        let bodies = JsonBodies::new(8 << 10, Duration::from_secs(5));
        for (len, want_most) in [(8 << 10, 1), (1 << 10, 4)] {
            let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let app = app(bodies.clone(), inside, most.clone());
            let replies =
                futures::future::join_all((0..4).map(|_| app.clone().oneshot(request(len)))).await;
            for r in replies {
                assert_eq!(r.unwrap().status(), StatusCode::OK);
            }
            assert_eq!(most.load(SeqCst), want_most, "bodies of {len} bytes");
        }
    }

    fn json(text: String) -> Request {
        Request::post("/x")
            .header(header::CONTENT_LENGTH, text.len())
            .body(Body::from(text))
            .unwrap()
    }

    /// A body of many small values weighs its values, not its text: past the budget it is 413,
    /// and within it, it holds its weight (a second such body waits for the first).
    #[tokio::test]
    async fn bodies_weigh_their_values() {
        let bodies = JsonBodies::new(64 << 10, Duration::from_secs(5));
        let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let app = app(bodies, inside, most.clone());
        let array = |n: usize| format!("[{}]", vec!["0"; n].join(","));
        // 2 KiB of text, 1025 values: over a 64 KiB budget at 64 bytes a value.
        let r = app.clone().oneshot(json(array(1024))).await.unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let reason = &r.extensions().get::<ApiError>().unwrap().reason;
        assert!(reason.contains("about 1025, at most 1024"), "{reason}");
        // 600 values (~38 KiB) each: two cannot be inside at once, though their texts could.
        let replies =
            futures::future::join_all((0..2).map(|_| app.clone().oneshot(json(array(599))))).await;
        for r in replies {
            assert_eq!(r.unwrap().status(), StatusCode::OK);
        }
        assert_eq!(most.load(SeqCst), 1);
    }

    /// Two bodies that each hold part of the budget and then need more do not wait for each
    /// other: a body lets go of its share while it waits for a larger one.
    #[tokio::test(start_paused = true)]
    async fn bodies_growing_together_do_not_wait_for_each_other() {
        let bodies = JsonBodies::new(64 << 10, Duration::from_secs(5));
        let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let app = app(bodies, inside, most);
        let (mut senders, mut replies) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
            let frames = futures::stream::unfold(rx, |mut rx| async {
                rx.recv().await.map(|frame| (frame, rx))
            });
            let req = Request::post("/x").body(Body::from_stream(frames)).unwrap();
            replies.push(tokio::spawn(app.clone().oneshot(req)));
            senders.push(tx);
        }
        // 30 KiB each (60 of 64 KiB taken), then 10 KiB more each.
        for size in [30 << 10, 10 << 10] {
            for tx in &senders {
                tx.send(Ok(Bytes::from(vec![b' '; size]))).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(senders);
        for r in replies {
            assert_eq!(r.await.unwrap().unwrap().status(), StatusCode::OK);
        }
    }

    /// A body trickling in holds only the budget for what it sent: it does not keep others out.
    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_holds_only_what_it_sent() {
        let bodies = JsonBodies::new(8 << 10, Duration::from_secs(5));
        let app = app(bodies, Default::default(), Default::default());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        tx.send(Ok(Bytes::from(vec![b' '; 1 << 10]))).await.unwrap();
        let trickle = Request::post("/x")
            .body(Body::from_stream(tokio_stream(rx)))
            .unwrap();
        let slow = tokio::spawn(app.clone().oneshot(trickle));
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        let r = app.clone().oneshot(request(6 << 10)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(tx);
        assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    /// A body that cannot get its share within the idle time is told to come back.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_cannot_get_budget_is_busy() {
        let bodies = JsonBodies::new(8 << 10, Duration::from_secs(1));
        let app = app(bodies.clone(), Default::default(), Default::default());
        // Every unit taken elsewhere for 3 s.
        let all = bodies.budget.clone().acquire_many_owned(8).await.unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(all);
        });
        let r = app.clone().oneshot(request(4 << 10)).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let err = r.extensions().get::<ApiError>().unwrap();
        assert_eq!((err.kind, err.retry_after), ("busy", Some(1)));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let r = app.oneshot(request(4 << 10)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "the budget is back");
    }

    /// A small body never queues behind a large one waiting for the budget.
    #[tokio::test(start_paused = true)]
    async fn small_bodies_pass_a_full_budget() {
        let bodies = JsonBodies::new(8 << 10, Duration::from_secs(5));
        let app = app(bodies.clone(), Default::default(), Default::default());
        let all = bodies.budget.clone().acquire_many_owned(8).await.unwrap();
        let large = tokio::spawn(app.clone().oneshot(request(4 << 10)));
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        let r = app.oneshot(request(256)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(all);
        assert_eq!(large.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    fn tokio_stream(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let bodies = JsonBodies::new(1 << 10, Duration::from_secs(5));
        let app = app(bodies, Default::default(), Default::default());
        let declared = app.clone().oneshot(request(2 << 10)).await.unwrap();
        assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let chunked = Request::post("/x")
            .body(Body::from_stream(futures::stream::iter((0..3).map(|_| {
                Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 512]))
            }))))
            .unwrap();
        let r = app.oneshot(chunked).await.unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
