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
use axum::http::{header, HeaderMap, StatusCode, Uri, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// The token a request was authenticated with, by its blake3 (never the token itself): put in
/// the request's extensions by the auth middleware, for limits kept per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenKey(pub [u8; 32]);

/// At most `per_token` uploads receiving at once per token, so that one client (or one leaked
/// token) whose uploads trickle cannot hold every one of the engine's upload permits, which all
/// tokens share. A token's semaphore exists only while it has uploads running or waiting.
#[derive(Clone, Default)]
pub struct UploadSlots {
    inner: Option<Arc<SlotsInner>>,
}

struct SlotsInner {
    per_token: usize,
    by_token: std::sync::Mutex<std::collections::HashMap<TokenKey, Arc<Semaphore>>>,
}

/// One of a token's upload slots, given back (and the token's semaphore dropped once it is
/// idle) when this goes.
pub struct UploadSlot {
    permit: Option<OwnedSemaphorePermit>,
    token: TokenKey,
    slots: Arc<SlotsInner>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut map = self
            .slots
            .by_token
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Only the map's own reference left, and no permit out: nobody holds or waits on it.
        // Clones are taken under this lock, so none can appear meanwhile.
        if map.get(&self.token).is_some_and(|s| {
            Arc::strong_count(s) == 1 && s.available_permits() == self.slots.per_token
        }) {
            map.remove(&self.token);
        }
    }
}

impl UploadSlots {
    /// `per_token` 0: no limit of this kind.
    pub fn new(per_token: usize) -> UploadSlots {
        UploadSlots {
            inner: (per_token > 0).then(|| {
                Arc::new(SlotsInner {
                    per_token,
                    by_token: Default::default(),
                })
            }),
        }
    }

    /// Takes one of `token`'s upload slots, waiting at most `wait` (then 503 `busy`, nothing of
    /// the request read, as when the engine's own upload permits stay taken). `None` without a
    /// limit or a token.
    pub async fn take(
        &self,
        token: Option<TokenKey>,
        wait: Duration,
    ) -> Result<Option<UploadSlot>, ApiError> {
        let (Some(slots), Some(token)) = (&self.inner, token) else {
            return Ok(None);
        };
        let sem = {
            let mut map = slots.by_token.lock().unwrap_or_else(|p| p.into_inner());
            // A request cancelled while it waited can leave its token's entry behind (its
            // semaphore still referenced when its slot went): sweep idle entries now and then.
            if map.len() >= SWEEP_AT {
                let per = slots.per_token;
                map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < per);
            }
            map.entry(token)
                .or_insert_with(|| Arc::new(Semaphore::new(slots.per_token)))
                .clone()
        };
        // From here the slot's drop tidies the map, whether a permit comes or not.
        let mut slot = UploadSlot {
            permit: None,
            token,
            slots: slots.clone(),
        };
        let permit = tokio::time::timeout(wait, sem.clone().acquire_owned()).await;
        drop(sem);
        match permit {
            Ok(Ok(p)) => {
                slot.permit = Some(p);
                Ok(Some(slot))
            }
            _ => Err(cairn_core::Error::busy(format!(
                "this token already has {} uploads receiving (max_uploads_per_token), and none \
                 ended within {} s; nothing of this request was read, send it again",
                slots.per_token,
                wait.as_secs()
            ))
            .into()),
        }
    }
}

/// Tokens with an entry in [`UploadSlots`] past which idle entries are swept.
const SWEEP_AT: usize = 256;

/// Largest `max_uploads_per_token` (a semaphore has a ceiling, and no server runs more).
pub const MAX_UPLOADS_PER_TOKEN: usize = 1 << 16;

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
    let checked = check_head(req.uri(), req.headers())
        .and_then(|()| check_framing(req.version(), req.uri(), req.headers()));
    if let Err(e) = checked {
        return e.into_response();
    }
    next.run(req).await
}

/// What HTTP/1.1 requires of a request before it is acted on, and what would let one request
/// mean two things: a transfer coding other than `chunked` (hyper takes `gzip, chunked` as
/// chunked and hands over the still-compressed bytes, which an upload would store: 501, RFC
/// 9112 §6.1); an HTTP/1.1 request without exactly one valid `Host` (400, §3.2); two
/// `Content-Range` fields, where an upload's offset must be one (400); a `%` in the path not
/// followed by two hex digits (400, RFC 3986 §2.1: `%zz` would otherwise name a file `%zz`,
/// and `a%.txt` be served under two URLs).
fn check_framing(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    for te in headers.get_all(header::TRANSFER_ENCODING) {
        let codings = te.to_str().unwrap_or("?");
        if codings
            .split(',')
            .any(|c| !c.trim().eq_ignore_ascii_case("chunked"))
        {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not_implemented",
                "the only transfer coding accepted is chunked",
            ));
        }
    }
    // The same rule as `/config`'s (`host[:port]`, a port from 1 to 65535), for any version;
    // only HTTP/1.0 may leave Host out.
    let mut hosts = headers.get_all(header::HOST).iter();
    let valid = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.to_str().is_ok_and(crate::content::plain_host),
        (None, _) => version != Version::HTTP_11,
        (Some(_), Some(_)) => false,
    };
    if !valid {
        return Err(ApiError::bad_request(
            "the request needs exactly one Host header, host[:port] (HTTP/1.0 may send none)",
        ));
    }
    if headers.get_all(header::CONTENT_RANGE).iter().count() > 1 {
        return Err(ApiError::bad_request(
            "Content-Range is given more than once",
        ));
    }
    let path = uri.path().as_bytes();
    let escapes_ok = path.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || path
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_ok {
        return Err(ApiError::bad_request(
            "malformed percent-encoding in the path: % must be followed by two hex digits",
        ));
    }
    Ok(())
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

    /// A token's slots: taken up to the limit, then a wait that ends in `busy`; given back on
    /// drop, to a waiter first; and the token's entry gone once nothing holds or waits on it.
    #[tokio::test]
    async fn upload_slots_are_per_token_and_tidied_once_idle() {
        let slots = UploadSlots::new(2);
        let (a, b) = (TokenKey([1; 32]), TokenKey([2; 32]));
        let short = Duration::from_millis(50);
        let a1 = slots.take(Some(a), short).await.unwrap();
        let a2 = slots.take(Some(a), short).await.unwrap();
        let refused = slots.take(Some(a), short).await.err().unwrap();
        assert_eq!((refused.status.as_u16(), refused.kind), (503, "busy"));
        let b1 = slots.take(Some(b), short).await.unwrap();
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take(Some(a), Duration::from_secs(5)).await })
        };
        tokio::time::sleep(short).await;
        drop(a1);
        let a3 = waiter.await.unwrap().unwrap();
        let entries = || slots.inner.as_ref().unwrap().by_token.lock().unwrap().len();
        assert_eq!(entries(), 2);
        drop((a2, a3, b1));
        assert_eq!(entries(), 0, "idle tokens leave no entry");
        assert!(UploadSlots::new(0)
            .take(Some(a), short)
            .await
            .unwrap()
            .is_none());
    }

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
