//! Reading content: file downloads with Range (single and multipart), conditional requests,
//! `files` listings, and parts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use cairn_core::{FilePath, PartHash};
use cairn_jobs::{FileHandle, Qhit};
use futures::{Stream, StreamExt, TryStreamExt};
use serde_json::{json, Value};

use crate::conditional::{self, Outcome, Preconditions, Validators};
use crate::error::ApiError;
use crate::range::{self, Plan};
use crate::{scope_of, target, AppState, Params, Principal};

/// `GET|HEAD …/files/{path}` (`?list` lists instead).
pub async fn handle_file(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    who: Option<Extension<Principal>>,
) -> Result<Response, ApiError> {
    let q = target(&st, &p).await?;
    let scope = scope_of(who.as_deref());
    let raw = p.get("path").cloned().unwrap_or_default();
    if wants_list(query.as_deref()) || raw.ends_with('/') {
        // Listings are rooted at the top, but a named directory must be valid and exist.
        if !raw.trim_matches('/').is_empty() {
            let dir = FilePath::parse_dir(&raw)?;
            let named = dir.to_string();
            if !st.engine.run(move |e| e.entry_exists(&q, &dir)).await? {
                return Err(ApiError::not_found(format!("nothing at {named}")));
            }
        }
        return list_response(&st, q).await;
    }
    let path = FilePath::parse(&raw)?;
    let cache = cache_control(&q);
    let (h, info) = match st.engine.opened(&q, &path, scope) {
        Some(found) => found,
        None => {
            st.engine
                .run(move |e| e.open_for_read(&q, &path, scope))
                .await?
        }
    };
    let modified = date_validator(&q, info.modified, cairn_jobs::records::now());
    serve(&st, h, modified, cache, &method, &headers).await
}

/// The `Last-Modified` a file read through `q` gets, at `now` (seconds). A draft's files change
/// under the one date it has: none (only the ETag validates them). An object id names its head,
/// which a finalize in the same second as this reply could replace under the same date: a client
/// that sent that date back (`If-Modified-Since`, `wget -N`, `curl -z`) would be told nothing
/// changed. So within the second the head changed, none either; a version is immutable.
fn date_validator(q: &Qhit, modified: u64, now: u64) -> Option<u64> {
    match q {
        Qhit::Draft(_) => None,
        Qhit::Object(_) if modified >= now => None,
        _ => Some(modified),
    }
}

/// `Cache-Control` for a file read through `q`. Through a version hash the bytes can never
/// change, so a browser may keep them for good; through an object id (whose newest version
/// moves) or a draft it must revalidate (the ETag makes that a 304). Always `private`: the
/// request carries a token, so a shared cache must not keep the answer for others.
fn cache_control(q: &Qhit) -> &'static str {
    match q {
        Qhit::Version(_) => IMMUTABLE,
        Qhit::Object(_) | Qhit::Draft(_) => "private, no-cache",
    }
}

const IMMUTABLE: &str = "private, max-age=31536000, immutable";

fn wants_list(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "list" || kv.starts_with("list="))
    })
}

/// The `files` listing as JSON, streamed while the tree is walked (`Engine::files_json_stream`):
/// a version of a million files never has its listing in memory whole. The first two pieces
/// are awaited before the response is committed, so an unknown id or a damaged root is a
/// proper error, and a listing that fits in one piece gets a `Content-Length`.
async fn list_response(st: &AppState, q: Qhit) -> Result<Response, ApiError> {
    let mut pieces = Box::pin(st.engine.files_json_stream(q));
    let first = match pieces.next().await {
        Some(piece) => piece?,
        None => return Err(cairn_core::Error::internal("the files listing ended early").into()),
    };
    let body = match pieces.next().await {
        None => Body::from(first),
        Some(second) => {
            let second = second?;
            let head = futures::stream::iter([Ok(first), Ok(second)]);
            Body::from_stream(head.chain(pieces))
        }
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// `GET …/files_list[/{dir}]` and `GET …/files`: the whole `files` tree, rooted at the top
/// even for a sub-path (clients walk into it).
pub async fn handle_list(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Response, ApiError> {
    let q = target(&st, &p).await?;
    if let Some(dir) = p.get("path").filter(|d| !d.trim_matches('/').is_empty()) {
        // The listing stays rooted at the top (clients walk into it), but the directory must exist.
        let dir = FilePath::parse(dir)?;
        let named = dir.to_string();
        let found = st.engine.run(move |e| e.entry_exists(&q, &dir)).await?;
        if !found {
            return Err(ApiError::not_found(format!("nothing at {named}")));
        }
    }
    list_response(&st, q).await
}

/// `GET …/parts`.
pub async fn handle_parts(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let q = target(&st, &p).await?;
    let parts = st.engine.part_set_of(q).await?;
    Ok(Json(
        json!({"parts": parts.list().iter().map(|p| json!({"hash": p, "size": p.size})).collect::<Vec<_>>()}),
    ))
}

fn part_param(p: &Params) -> Result<PartHash, ApiError> {
    Ok(p.get("phash")
        .ok_or_else(|| ApiError::bad_request("missing part hash"))?
        .parse()?)
}

/// `GET …/parts/{hqp_}`.
pub async fn handle_part_info(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let q = target(&st, &p).await?;
    let part = part_param(&p)?;
    if !st.engine.part_set_of(q).await?.contains(&part) {
        return Err(ApiError::not_found(format!(
            "part {part} not found in this content"
        )));
    }
    let info = st.engine.run(move |e| e.info(&q)).await?;
    let hash = info.version.map(|h| h.to_string()).unwrap_or_default();
    Ok(Json(json!({
        "content": {"id": info.object, "hash": hash, "type": "", "qlib_id": info.library},
        "part": {"hash": part, "size": part.size}
    })))
}

/// `GET|HEAD …/data/{hqp_}`: a part's bytes, with Range.
pub async fn handle_part_data(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = target(&st, &p).await?;
    let part = part_param(&p)?;
    let set = st.engine.part_set_of(q).await?;
    let (h, info) = st
        .engine
        .run(move |e| Ok((e.open_part_of(&set, &part)?, e.info(&q)?)))
        .await?;
    // A part is named by its content's hash: its bytes never change, whatever names the content.
    serve(&st, h, Some(info.modified), IMMUTABLE, &method, &headers).await
}

/// Media formats whose names `mime_guess` gets wrong or does not know; players (hls.js,
/// dash.js, Safari) go by these types. `.ts` is an MPEG transport stream here, not TypeScript
/// or the DLNA name `mime_guess` gives it; `.m4a` is `audio/mp4` (RFC 4337), not the
/// unregistered `audio/m4a`; CMAF tracks (`.cmfv`, `.cmfa`) are ISO media (CTA-5000).
const MEDIA_TYPES: &[(&str, &str)] = &[
    ("ts", "video/mp2t"),
    ("m4a", "audio/mp4"),
    ("cmfv", "video/mp4"),
    ("cmfa", "audio/mp4"),
    ("m4s", "video/iso.segment"),
    ("m3u8", "application/vnd.apple.mpegurl"),
    ("mpd", "application/dash+xml"),
];

/// `Content-Type` for a file uploaded without a `mime_type`: from its name.
fn guess_type(path: &str) -> std::borrow::Cow<'static, str> {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    let known = MEDIA_TYPES.iter().find(|(e, _)| Some(*e) == ext.as_deref());
    match known {
        Some((_, t)) => (*t).into(),
        None => mime_guess::from_path(path)
            .first_or_octet_stream()
            .to_string()
            .into(),
    }
}

/// Serves an opened file (or part) honouring Range and the preconditions (`conditional.rs`).
async fn serve(
    st: &AppState,
    h: FileHandle,
    modified: Option<u64>,
    cache: &'static str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", h.etag.to_hex());
    let mime = h
        .mime_type
        .as_deref()
        .and_then(sent_type)
        .unwrap_or_else(|| guess_type(h.path.as_str()).to_string());
    let mut validators = vec![
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, cache.to_string()),
    ];
    // Served from the API's own origin, where a browser may hold a token in the URL
    // (`?authorization=`): a file a browser could show as a page that runs scripts is
    // sandboxed (no scripts, an opaque origin of its own), as user-content hosts do, unless the
    // server hosts web apps. Players, `<img>` and `fetch` ignore the header. On a 304 too, so
    // that a copy cached before it was sent gets it. Without scripts the page could still load
    // an image or a style sheet from elsewhere with its own URL, token included, as the
    // `Referer` (`referrerpolicy="unsafe-url"`): it may load nothing, and sends no referrer.
    if st.sandbox_pages && !safe_to_show(&mime) {
        validators.push((header::CONTENT_SECURITY_POLICY, SANDBOX_POLICY.to_string()));
        validators.push((header::REFERRER_POLICY, "no-referrer".to_string()));
    }
    if let Some(m) = modified {
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(m));
        validators.push((header::LAST_MODIFIED, date));
    }
    let (if_match, if_none_match) = (
        header_list(headers, &header::IF_MATCH)?,
        header_list(headers, &header::IF_NONE_MATCH)?,
    );
    // RFC 9110 §13.1.3-4: a date header that comes as a list is ignored. An `If-Range` that
    // comes twice is taken as a validator that does not match: the whole file, never a range
    // of what may be another version.
    // One that is not ASCII is no validator of ours either.
    let if_range = match repeated(headers, &header::IF_RANGE) {
        true => Some(""),
        false => header_str(headers, &header::IF_RANGE).unwrap_or(Some("")),
    };
    let pre = Preconditions {
        if_match: if_match.as_deref(),
        if_unmodified_since: unless_repeated(headers, &header::IF_UNMODIFIED_SINCE)?,
        if_none_match: if_none_match.as_deref(),
        if_modified_since: unless_repeated(headers, &header::IF_MODIFIED_SINCE)?,
        if_range,
    };
    let v = Validators {
        etag: &etag,
        modified,
    };
    let honour_range = match conditional::evaluate(&v, pre, SystemTime::now()) {
        Outcome::Content { honour_range } => honour_range,
        // The 200's length (RFC 9110 §8.6 allows no other), so that GET and HEAD agree: left
        // unset, a HEAD answer went out with the length of its empty body, 0.
        Outcome::NotModified => {
            return response(
                StatusCode::NOT_MODIFIED,
                &validators,
                Some(h.size),
                Body::empty(),
            )
        }
        Outcome::PreconditionFailed(which) => {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!("{which} does not hold for {etag}"),
            ))
        }
    };
    // A Range sent twice is refused (400); one that is not ASCII is malformed like any other
    // (416 with the size, §10).
    let range_header = match honour_range {
        true if repeated(headers, &header::RANGE) => header_str(headers, &header::RANGE)?,
        true => headers
            .get(header::RANGE)
            .map(|v| v.to_str().unwrap_or("bytes=?")),
        false => None,
    };
    let plan = range::plan(range_header, h.size)?;
    let head = *method == Method::HEAD;
    match plan {
        Plan::Full => {
            let body = if head {
                Body::empty()
            } else {
                body_of(st, &h, 0, h.size).await?
            };
            let hdrs = [(header::CONTENT_TYPE, mime)];
            response(
                StatusCode::OK,
                &[&validators[..], &hdrs[..]].concat(),
                Some(h.size),
                body,
            )
        }
        Plan::Single(start, len) => {
            let body = if head {
                Body::empty()
            } else {
                body_of(st, &h, start, len).await?
            };
            let cr = format!("bytes {start}-{}/{}", start + len - 1, h.size);
            let hdrs = [(header::CONTENT_TYPE, mime), (header::CONTENT_RANGE, cr)];
            response(
                StatusCode::PARTIAL_CONTENT,
                &[&validators[..], &hdrs[..]].concat(),
                Some(len),
                body,
            )
        }
        Plan::Multi(ranges) => multipart(st, h, &ranges, mime, &validators, head).await,
    }
}

/// A single-valued request header as text; a value that is not ASCII, or the header sent on
/// more than one line, is a 400 (which of them would count is not for the server to guess).
pub(crate) fn header_str<'h>(
    headers: &'h HeaderMap,
    name: &header::HeaderName,
) -> Result<Option<&'h str>, ApiError> {
    let mut lines = headers.get_all(name).iter();
    let (Some(v), None) = (lines.next(), lines.next()) else {
        return match headers.contains_key(name) {
            true => Err(ApiError::bad_request(format!(
                "{name} is given more than once"
            ))),
            false => Ok(None),
        };
    };
    v.to_str()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("{name} is not ASCII")))
}

fn repeated(headers: &HeaderMap, name: &header::HeaderName) -> bool {
    headers.get_all(name).iter().nth(1).is_some()
}

/// [`header_str`] of a header that is ignored, rather than refused, when sent more than once.
fn unless_repeated<'h>(
    headers: &'h HeaderMap,
    name: &header::HeaderName,
) -> Result<Option<&'h str>, ApiError> {
    // RFC 9110 §13.1.3-4: a date that is not an HTTP-date is ignored, bytes outside ASCII too.
    match repeated(headers, name) {
        true => Ok(None),
        false => Ok(header_str(headers, name).unwrap_or(None)),
    }
}

/// A list-valued request header (`If-Match`, `If-None-Match`) as one text: lines sent
/// separately are joined with commas, as RFC 9110 §5.3 makes them mean.
pub(crate) fn header_list(
    headers: &HeaderMap,
    name: &header::HeaderName,
) -> Result<Option<String>, ApiError> {
    let mut joined: Option<String> = None;
    for v in headers.get_all(name) {
        // A tag that is not ASCII is none of ours: the empty tag, which matches nothing.
        let v = v.to_str().unwrap_or("\"\"");
        match &mut joined {
            None => joined = Some(v.to_string()),
            Some(j) => {
                j.push_str(", ");
                j.push_str(v);
            }
        }
    }
    Ok(joined)
}

/// The `Content-Type` sent for a stored `mime_type`: its type and subtype, and only the
/// parameters whose values are plain tokens (`charset=utf-8`, not quoted strings), rebuilt. So
/// the header says exactly the type judged by [`safe_to_show`]: quoted parameters, which the
/// `mime` crate and browsers split differently (`text/plain;a="\";b=",text/html`), could make
/// a browser read another type. `None` if it does not parse (stored before types were
/// checked): the file's name decides.
fn sent_type(stored: &str) -> Option<String> {
    let m: mime_guess::mime::Mime = stored.parse().ok()?;
    let mut out = m.essence_str().to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    for (name, value) in m.params() {
        if token(name.as_str()) && token(value.as_str()) {
            out.push_str(&format!("; {name}={value}"));
        }
    }
    Some(out)
}

/// The `Content-Security-Policy` of a file a browser could run as a page: no scripts, an
/// origin of its own, and nothing loaded from anywhere (so nothing carries its URL away).
pub(crate) const SANDBOX_POLICY: &str = "sandbox; default-src 'none'";

/// Whether a browser may show a file of this `Content-Type` as a page without a sandbox: types
/// it plays, displays or offers to save, never as a document that runs scripts (media, images
/// but SVG, plain text, JSON, PDF, archives). Everything else is sandboxed: HTML, XML, SVG, and
/// any type a browser might render as a document.
fn safe_to_show(ctype: &str) -> bool {
    let essence = ctype.split(';').next().unwrap_or("").trim();
    let (kind, sub) = essence.split_once('/').unwrap_or((essence, ""));
    match kind {
        "video" | "audio" | "font" => true,
        "image" => !sub.contains("svg"),
        "text" => matches!(sub, "plain" | "csv" | "vtt" | "css" | "javascript"),
        "application" => matches!(
            sub,
            "json"
                | "octet-stream"
                | "pdf"
                | "zip"
                | "gzip"
                | "x-tar"
                | "zstd"
                | "mp4"
                | "javascript"
                | "vnd.apple.mpegurl"
                | "x-mpegurl"
        ),
        _ => false,
    }
}

fn response(
    status: StatusCode,
    hdrs: &[(header::HeaderName, String)],
    len: Option<u64>,
    body: Body,
) -> Result<Response, ApiError> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Files are what users uploaded: a browser must not guess a type that runs scripts.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for (name, value) in hdrs {
        h.insert(
            name,
            HeaderValue::from_str(value)
                .map_err(|_| ApiError::internal("unrepresentable header value"))?,
        );
    }
    if let Some(n) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(r)
}

/// A streaming body of `[start, start+len)`. The first piece is read before the response is
/// committed, so a corrupt or missing chunk at the start is a proper error response.
async fn body_of(st: &AppState, h: &FileHandle, start: u64, len: u64) -> Result<Body, ApiError> {
    let mut stream = Box::pin(st.engine.read_stream(h.clone(), start, len));
    let first = match stream.next().await {
        None => return Ok(Body::empty()),
        Some(piece) => piece?,
    };
    Ok(Body::from_stream(
        futures::stream::once(async move { Ok(first) }).chain(logged(stream, h, start)),
    ))
}

/// The rest of a download's body, with a warning logged (in the request's span, so with its
/// request id) if it fails: the status line already went out as a success, and the client only
/// sees the body cut short, so the log is where an operator learns that reads hit damage.
fn logged(
    stream: impl Stream<Item = cairn_core::Result<Bytes>> + Send + 'static,
    h: &FileHandle,
    start: u64,
) -> impl Stream<Item = cairn_core::Result<Bytes>> + Send + 'static {
    // `Span::current()` is the request's span: `body_of` runs in the handler, and `multipart`
    // enters the handler's span around this call.
    let (span, what, size) = (tracing::Span::current(), h.path.to_string(), h.size);
    stream.inspect_err(move |e| {
        let _in = span.enter();
        tracing::warn!(
            kind = e.kind.as_str(),
            path = %what,
            size,
            range_start = start, // where the range began, not where the read failed
            error = %e,
            "a download was cut short after its status was sent"
        );
    })
}

async fn multipart(
    st: &AppState,
    h: FileHandle,
    ranges: &[(u64, u64)],
    mime: String,
    validators: &[(header::HeaderName, String)],
    head: bool,
) -> Result<Response, ApiError> {
    let boundary = format!("CAIRN{:016x}", rand::random::<u64>());
    let part_head = |start: u64, len: u64| {
        format!("\r\n--{boundary}\r\nContent-Type: {mime}\r\nContent-Range: bytes {start}-{}/{}\r\n\r\n", start + len - 1, h.size)
    };
    let closing = format!("\r\n--{boundary}--\r\n");
    let total: u64 = ranges
        .iter()
        .map(|&(s, l)| part_head(s, l).len() as u64 + l)
        .sum::<u64>()
        + closing.len() as u64;
    let ctype = format!("multipart/byteranges; boundary={boundary}");
    let hdrs = [(header::CONTENT_TYPE, ctype)];
    if head {
        return response(
            StatusCode::PARTIAL_CONTENT,
            &[validators, &hdrs[..]].concat(),
            Some(total),
            Body::empty(),
        );
    }
    let mut pieces: Vec<std::pin::Pin<Box<dyn Stream<Item = cairn_core::Result<Bytes>> + Send>>> =
        Vec::new();
    for (i, &(start, len)) in ranges.iter().enumerate() {
        pieces.push(Box::pin(futures::stream::once(futures::future::ready(Ok(
            Bytes::from(part_head(start, len)),
        )))));
        // The first range's first piece is read before the 206 is committed, as a single
        // range's is: damage there, or no read budget, is a JSON 500 or a retryable 503, not a
        // 206 cut short after its first part header (review 32).
        if i == 0 {
            let body = body_of(st, &h, start, len).await?;
            pieces.push(Box::pin(body.into_data_stream().map_err(|e| {
                cairn_core::Error::internal(format!("multipart range: {e}"))
            })));
            continue;
        }
        // Lazy: each range's reader starts only when the previous one is done.
        let (engine, h) = (st.engine.clone(), h.clone());
        // The span is taken here, in the handler: the lazy reader starts after it has ended.
        let span = tracing::Span::current();
        let rest = futures::stream::once(async move {
            let stream = engine.read_stream(h.clone(), start, len);
            let _in = span.enter();
            logged(stream, &h, start)
        });
        pieces.push(Box::pin(rest.flatten()));
    }
    pieces.push(Box::pin(futures::stream::once(futures::future::ready(Ok(
        Bytes::from(closing),
    )))));
    let body = Body::from_stream(futures::stream::iter(pieces).flatten());
    response(
        StatusCode::PARTIAL_CONTENT,
        &[validators, &hdrs[..]].concat(),
        Some(total),
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::{date_validator, guess_type, safe_to_show, sent_type};
    use cairn_core::{Digest, ObjectId, VersionHash};
    use cairn_jobs::Qhit;

    #[test]
    fn the_type_sent_is_the_type_judged() {
        for (stored, sent) in [
            ("text/plain", Some("text/plain")),
            ("Text/HTML; Charset=UTF-8", Some("text/html; charset=utf-8")),
            // Quoted parameters are dropped: browsers split them differently (QA review).
            (r#"text/plain;a="\";b=",text/html;c=""#, Some("text/plain")),
            (
                r#"video/mp4; codecs="avc1.42E01E, mp4a.40.2""#,
                Some("video/mp4"),
            ),
            ("text/plain, text/html", None),
            ("nonsense", None),
        ] {
            assert_eq!(sent_type(stored).as_deref(), sent, "{stored}");
        }
    }

    #[test]
    fn only_types_that_never_run_as_pages_go_unsandboxed() {
        for t in [
            "video/mp4",
            "audio/mpeg",
            "image/png",
            "text/plain; charset=utf-8",
            "application/json",
            "application/pdf",
            "application/octet-stream",
            "application/vnd.apple.mpegurl",
        ] {
            assert!(safe_to_show(t), "{t}");
        }
        for t in [
            "text/html",
            "application/xhtml+xml",
            "image/svg+xml",
            "text/xml",
            "application/xml",
            "text/xsl",
            "application/dash+xml",
            "multipart/x-mixed-replace",
            "application/x-unknown",
            "",
        ] {
            assert!(!safe_to_show(t), "{t}");
        }
    }

    #[test]
    fn no_date_for_a_head_changed_this_second_nor_for_a_draft() {
        let object = ObjectId::random();
        let head = Qhit::Object(object);
        assert_eq!(date_validator(&head, 100, 100), None, "changed this second");
        assert_eq!(date_validator(&head, 100, 101), Some(100));
        let version = Qhit::Version(VersionHash::new(Digest::of(b"v"), 1, object));
        assert_eq!(date_validator(&version, 100, 100), Some(100), "immutable");
    }

    #[test]
    fn media_segments_get_the_types_players_expect() {
        for (path, want) in [
            ("hls/seg-001.ts", "video/mp2t"),
            ("hls/SEG.TS", "video/mp2t"),
            ("dash/chunk-1.m4s", "video/iso.segment"),
            ("hls/index.m3u8", "application/vnd.apple.mpegurl"),
            ("dash/manifest.mpd", "application/dash+xml"),
            ("movie.mp4", "video/mp4"),
            ("song.M4A", "audio/mp4"),
            ("cmaf/video.cmfv", "video/mp4"),
            ("cmaf/audio.cmfa", "audio/mp4"),
            ("notes.txt", "text/plain"),
            ("dir.ts/blob", "application/octet-stream"),
            ("no-extension", "application/octet-stream"),
        ] {
            assert_eq!(guess_type(path), want, "{path}");
        }
    }
}
