//! Request-rate limits per token, and size limits on request heads.
//!
//! Every authenticated request draws from its token's bucket (the `governor` crate's GCRA, keyed
//! by the token's blake3, so the map holds hashes, never tokens). A client over its rate gets
//! 429 `rate_limited` with `Retry-After` and costs the server nothing more. Buckets of tokens
//! that went quiet are dropped now and then, so the map stays as small as the set of active
//! tokens.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

#[derive(Clone, Default)]
pub struct RateLimit {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    limiter: DefaultKeyedRateLimiter<[u8; 32]>,
    checks: AtomicU64,
}

impl RateLimit {
    /// `per_sec` requests a second per token, and `burst` more at once above that rate (so a
    /// fresh token may make `per_sec + burst` requests at once, as api.md says); `per_sec` 0
    /// turns limiting off. (The bucket was `burst` alone, with 0 meaning `per_sec`: `rate_burst
    /// = 0` then allowed more than `rate_burst = 1`, QA.)
    pub fn new(per_sec: u32, burst: u32) -> RateLimit {
        let Some(rate) = NonZeroU32::new(per_sec) else {
            return RateLimit::default();
        };
        let burst = rate.saturating_add(burst);
        RateLimit {
            inner: Some(Arc::new(Inner {
                limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
                checks: AtomicU64::new(0),
            })),
        }
    }

    /// Takes one request from `token`'s bucket, or says when to come back.
    pub fn check(&self, token: &blake3::Hash) -> Result<(), ApiError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        if inner.checks.fetch_add(1, Ordering::Relaxed) % 65_536 == 65_535 {
            inner.limiter.retain_recent();
        }
        inner
            .limiter
            .check_key(token.as_bytes())
            .map_err(|not_until| {
                // The limiter's own clock: making a new one calibrates it (CPUID, a VM exit),
                // which would make every refused request cost more than a served one.
                let wait = not_until.wait_time_from(inner.limiter.clock().now());
                ApiError {
                    retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "too many requests for this token; retry after the time in Retry-After",
                    )
                }
            })
    }
}

/// Longest request target (path and query) answered normally; longer is 414 `too_large`.
pub const MAX_URI_BYTES: usize = 8 << 10;
/// Largest single header value; larger is 431 `too_large`.
pub const MAX_HEADER_BYTES: usize = 8 << 10;
/// Largest header block (names and values); larger is 431 `too_large`.
pub const MAX_HEAD_BYTES: usize = 32 << 10;
/// Most header fields in a request; more is 431 `too_large`.
pub const MAX_HEADER_FIELDS: usize = 100;
/// Header fields hyper parses before it refuses a head itself, with its own 431 (set well above
/// [`MAX_HEADER_FIELDS`], so that a head with too many fields gets the JSON error).
pub const HYPER_MAX_HEADER_FIELDS: usize = 1000;

/// Middleware: refuses request heads over the limits above with the JSON error body.
///
/// hyper refuses heads that do not fit its 256 KiB read buffer (or carry more than
/// [`HYPER_MAX_HEADER_FIELDS`] fields) itself, before any middleware, with a bare status (which `wire.rs` gives a JSON body); these
/// lower limits make every head a real client is likely to send too large get the protocol's
/// error shape instead.
pub async fn request_head(req: Request, next: Next) -> Response {
    if let Err(e) = check_head(req.uri(), req.headers()) {
        return e.into_response();
    }
    next.run(req).await
}

fn check_head(uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    let target = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "too_large",
            format!("the request target is {target} bytes; at most {MAX_URI_BYTES}"),
        ));
    }
    let fields_too_large = |reason: String| {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_large",
            reason,
        )
    };
    let n = headers.len();
    if n > MAX_HEADER_FIELDS {
        return Err(fields_too_large(format!(
            "the request has {n} header fields; at most {MAX_HEADER_FIELDS}"
        )));
    }
    let mut total = 0usize;
    for (name, value) in headers {
        let len = value.len();
        if len > MAX_HEADER_BYTES {
            return Err(fields_too_large(format!(
                "header {name} is {len} bytes; at most {MAX_HEADER_BYTES}"
            )));
        }
        total += name.as_str().len() + len;
    }
    if total > MAX_HEAD_BYTES {
        return Err(fields_too_large(format!(
            "the headers are {total} bytes; at most {MAX_HEAD_BYTES}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_token_waits_and_others_do_not() {
        let limit = RateLimit::new(1, 3);
        let (a, b) = (blake3::hash(b"a"), blake3::hash(b"b"));
        // The rate and the burst above it: 1 + 3 at once.
        for _ in 0..4 {
            limit.check(&a).unwrap();
        }
        let e = limit.check(&a).unwrap_err();
        assert_eq!((e.status.as_u16(), e.kind), (429, "rate_limited"));
        assert!(e.retry_after.unwrap() >= 1);
        limit.check(&b).unwrap();
        // No burst: the rate's own second's worth at once, no more (and not more than with a
        // burst of 1, as before).
        let (none, one) = (RateLimit::new(5, 0), RateLimit::new(5, 1));
        let at_once = |l: &RateLimit| (0..100).take_while(|_| l.check(&a).is_ok()).count();
        assert_eq!((at_once(&none), at_once(&one)), (5, 6));
        let off = RateLimit::new(0, 0);
        for _ in 0..1000 {
            off.check(&a).unwrap();
        }
    }
}
