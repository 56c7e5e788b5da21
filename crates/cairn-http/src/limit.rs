//! Request-rate limits per token.
//!
//! Every authenticated request draws from its token's bucket (the `governor` crate's GCRA, keyed
//! by the token's blake3, so the map holds hashes, never tokens). A client over its rate gets
//! 429 `rate_limited` with `Retry-After` and costs the server nothing more. Buckets of tokens
//! that went quiet are dropped now and then, so the map stays as small as the set of active
//! tokens.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
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
    /// `per_sec` requests a second per token with bursts of `burst`; 0 turns limiting off.
    pub fn new(per_sec: u32, burst: u32) -> RateLimit {
        let Some(rate) = NonZeroU32::new(per_sec) else {
            return RateLimit::default();
        };
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
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
                let wait = not_until.wait_time_from(DefaultClock::default().now());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_token_waits_and_others_do_not() {
        let limit = RateLimit::new(1, 3);
        let (a, b) = (blake3::hash(b"a"), blake3::hash(b"b"));
        for _ in 0..3 {
            limit.check(&a).unwrap();
        }
        let e = limit.check(&a).unwrap_err();
        assert_eq!((e.status.as_u16(), e.kind), (429, "rate_limited"));
        assert!(e.retry_after.unwrap() >= 1);
        limit.check(&b).unwrap();
        let off = RateLimit::new(0, 0);
        for _ in 0..1000 {
            off.check(&a).unwrap();
        }
    }
}
