//! The Files API over HTTP, one method per call. Connection errors and 5xx answers are retried
//! with exponential backoff and jitter; 4xx answers are returned as [`ClientError::Api`] with the
//! server's stable `kind` and `reason`.

use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status} {kind}: {reason}")]
    Api {
        status: u16,
        kind: String,
        reason: String,
        /// The answer's `Retry-After` (429, 503): how long the server asked to be left alone.
        retry_after: Option<Duration>,
    },
    #[error("cannot reach the server: {0}")]
    Transport(String),
    /// The TLS handshake failed on the server's certificate: waiting will not fix it.
    #[error("the server's TLS certificate is not trusted: {0}")]
    Tls(String),
    #[error("{0}")]
    Local(String),
    /// The request is invalid before it is sent (a file path the server would refuse, a bad
    /// `--dest`): nothing was asked of the server, and asking again changes nothing.
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth trying again: the server was unreachable, answered 5xx (but `corrupt`: stored
    /// damage), or refused the request for its rate (429: nothing was done, and the backoff
    /// waits it out).
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            // Damage is not transient: sending again only repeats it (QA: 5 to 8 tries of a
            // `corrupt` read over several seconds).
            ClientError::Api { status, kind, .. } => {
                (*status >= 500 && kind != "corrupt") || *status == 429
            }
            ClientError::Local(_) | ClientError::Tls(_) | ClientError::Invalid(_) => false,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A transport error with its causes, which reqwest's own message leaves out ("error sending
/// request" says nothing of a refused connection or an untrusted certificate). A certificate
/// problem is [`ClientError::Tls`], so it is reported at once instead of retried.
fn transport(e: reqwest::Error) -> ClientError {
    let mut msg = e.to_string();
    // Only the causes are searched: reqwest's own message holds the URL, which may say
    // anything (a file named `certificates/…`). rustls says "invalid peer certificate" for a
    // certificate it does not trust, and "BadCertificate" and the like for a fatal alert.
    let mut tls = false;
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let text = c.to_string();
        tls |= text.to_ascii_lowercase().contains("certificate");
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    if tls {
        ClientError::Tls(msg)
    } else {
        ClientError::Transport(msg)
    }
}

/// Retry policy: attempts and the first backoff, doubled each time, with ±50 % jitter.
const ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The longest `Retry-After` waited out: a server asking for more is answered by giving up
/// once the attempts are spent, not by a client that seems to hang.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Waits before attempt `attempt + 1` after error `e`: the backoff, or as long as the server's
/// `Retry-After` asked if that is longer (a rate limit's refill time, which the backoff's
/// early attempts would only waste).
pub async fn backoff(attempt: u32, e: &ClientError) {
    let base = FIRST_BACKOFF
        .saturating_mul(1 << attempt.min(8))
        .min(MAX_BACKOFF);
    let jitter = rand::random::<f64>() + 0.5;
    let asked = match e {
        ClientError::Api {
            retry_after: Some(d),
            ..
        } => (*d).min(MAX_RETRY_AFTER),
        _ => Duration::ZERO,
    };
    // Jitter on top of what the server asked too, so parallel jobs refused together do not all
    // come back at the same instant and be refused together again.
    let asked = asked.mul_f64(1.0 + rand::random::<f64>() * 0.2);
    tokio::time::sleep(base.mul_f64(jitter).max(asked)).await;
}

/// Checks that `base` is an `http://` or `https://` URL with a host: anything else is a usage
/// error at once, not retries that end in "cannot reach the server" (QA: `--server
/// 127.0.0.1:8008` was retried for 15 s).
pub fn check_server_url(base: &str) -> Result<()> {
    let url = reqwest::Url::parse(base).map_err(|e| {
        ClientError::Invalid(format!(
            "server {base:?} is not a URL ({e}); e.g. http://127.0.0.1:8008"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ClientError::Invalid(format!(
            "server {base:?} must be an http:// or https:// URL with a host, e.g. \
             http://127.0.0.1:8008"
        )));
    }
    Ok(())
}

#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        Client::with_ca(base, token, None).expect("HTTP client")
    }

    /// A client that also trusts the CA certificates in `ca_pem` (PEM, one or more) for
    /// `https://` servers, beside the system's roots: a server behind a TLS proxy with a private CA.
    pub fn with_ca(base: &str, token: &str, ca_pem: Option<&[u8]>) -> Result<Client> {
        let mut builder = reqwest::Client::builder().tcp_nodelay(true);
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::Local(format!("CA certificates: {e}")))?;
            if certs.is_empty() {
                return Err(ClientError::Local(
                    "no PEM certificate in the CA file".into(),
                ));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Local(format!("HTTP client: {e}")))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        // No token configured: send none, so the server says one is required.
        if self.token.is_empty() {
            req
        } else {
            req.bearer_auth(&self.token)
        }
    }

    /// A JSON call, retried when the server is unreachable or answers 5xx.
    pub async fn json(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        self.json_with(method, path, body, &[]).await
    }

    /// [`Client::json`] with extra request headers.
    async fn json_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Value> {
        let mut attempt = 0;
        loop {
            let mut req = self.request(method.clone(), path);
            for (name, value) in headers {
                req = req.header(*name, value);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match self.send_json(req).await {
                Err(e) if e.retryable() && attempt + 1 < ATTEMPTS => {
                    tracing::debug!(%path, error = %e, attempt, "retrying");
                    backoff(attempt, &e).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn send_json(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(api_error(status, retry_after, &bytes));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        parse_answer(&bytes)
    }

    pub async fn create_library(&self, name: &str) -> Result<Value> {
        self.json(Method::POST, "/qlibs", Some(&json!({ "name": name })))
            .await
    }

    pub async fn libraries(&self) -> Result<Value> {
        self.json(Method::GET, "/qlibs", None).await
    }

    /// `{id, name, created, objects}` of one library.
    pub async fn library(&self, lib: &str) -> Result<Value> {
        self.json(Method::GET, &format!("/qlibs/{lib}"), None).await
    }

    /// Deletes an empty library and revokes its tokens (admin only; 409 while it holds objects).
    pub async fn delete_library(&self, lib: &str) -> Result<Value> {
        self.json(Method::DELETE, &format!("/qlibs/{lib}"), None)
            .await
    }

    /// A token confined to library `lib`: `{id, token, qlib_id, access}` (admin only).
    pub async fn create_token(&self, lib: &str, read_only: bool) -> Result<Value> {
        let access = if read_only { "read" } else { "write" };
        self.json(
            Method::POST,
            &format!("/qlibs/{lib}/tokens"),
            Some(&json!({ "access": access })),
        )
        .await
    }

    pub async fn tokens(&self, lib: &str) -> Result<Value> {
        self.json(Method::GET, &format!("/qlibs/{lib}/tokens"), None)
            .await
    }

    pub async fn revoke_token(&self, lib: &str, id: &str) -> Result<Value> {
        self.json(Method::DELETE, &format!("/qlibs/{lib}/tokens/{id}"), None)
            .await
    }

    /// A new object with an open draft: `{id, write_token, qlib_id}`.
    pub async fn create_object(&self, lib: &str) -> Result<Value> {
        self.json(Method::POST, &format!("/qlibs/{lib}/q"), None)
            .await
    }

    pub async fn objects(&self, lib: &str) -> Result<Value> {
        self.json(Method::GET, &format!("/qlibs/{lib}/q"), None)
            .await
    }

    /// Deletes an object, a draft (write token) or a version.
    pub async fn delete(&self, id: &str) -> Result<Value> {
        self.json(Method::DELETE, &format!("/q/{id}"), None).await
    }

    /// Opens a draft on the object's head; returns the write token.
    pub async fn open_draft(&self, object: &str) -> Result<String> {
        let v = self
            .json(Method::POST, &format!("/qid/{object}"), None)
            .await?;
        string_field(&v, "write_token")
    }

    pub async fn info(&self, id: &str) -> Result<Value> {
        self.json(Method::GET, &format!("/q/{id}"), None).await
    }

    pub async fn versions(&self, object: &str) -> Result<Value> {
        self.json(Method::GET, &format!("/qid/{object}"), None)
            .await
    }

    pub async fn files(&self, id: &str) -> Result<Value> {
        self.json(Method::GET, &format!("/q/{id}/files_list"), None)
            .await
    }

    pub async fn set_meta(&self, wt: &str, path: &str, value: &Value) -> Result<Value> {
        let path = url_path(path);
        self.json(Method::PUT, &format!("/q/{wt}/meta/{path}"), Some(value))
            .await
    }

    /// Creates a files job: `(files job id, upload job ids)`.
    pub async fn create_files_job(&self, wt: &str, ops: &[Value]) -> Result<(String, Vec<String>)> {
        let v = self
            .json(
                Method::POST,
                &format!("/q/{wt}/file_jobs"),
                Some(&json!({"seq": 0, "seq_complete": true, "ops": ops})),
            )
            .await?;
        let jobs = v["jobs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|j| j.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok((string_field(&v, "id")?, jobs))
    }

    pub async fn files_jobs(&self, wt: &str) -> Result<Value> {
        self.json(Method::GET, &format!("/q/{wt}/file_jobs"), None)
            .await
    }

    /// Every segment of an upload job's status (all pages).
    pub async fn upload_status(&self, wt: &str, fj: &str, uj: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut start = 0i64;
        loop {
            let v = self
                .json(
                    Method::GET,
                    &format!("/q/{wt}/file_jobs/{fj}/uploads/{uj}?start={start}&limit=1000"),
                    None,
                )
                .await?;
            out.extend(v["files"].as_array().cloned().unwrap_or_default());
            match v["next"].as_i64() {
                Some(n) if n > start => start = n,
                _ => return Ok(out),
            }
        }
    }

    /// Sends one body to an upload job, stating where it starts (`Content-Range`), so a stale
    /// retry is refused (409) instead of appending bytes twice. Not retried here: the caller
    /// re-reads the status and resumes from `skip`.
    pub async fn upload_data<S>(
        &self,
        wt: &str,
        fj: &str,
        uj: &str,
        job_offset: u64,
        len: u64,
        body: S,
    ) -> Result<Value>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let req = self
            .request(Method::POST, &format!("/q/{wt}/file_jobs/{fj}/{uj}"))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len)
            .header(
                "Content-Range",
                format!("bytes {job_offset}-{}/*", job_offset + len - 1),
            )
            .body(reqwest::Body::wrap_stream(body));
        self.send_json(req).await
    }

    /// The version a draft was opened from (`None`: the object had none).
    pub async fn draft_base(&self, wt: &str) -> Result<Option<String>> {
        let v = self.json(Method::GET, &format!("/q/{wt}"), None).await?;
        Ok(v["base"].as_str().map(str::to_string))
    }

    /// Finalizes only if the object's newest version is still `base` (none yet when `None`),
    /// so that a draft opened on an older head cannot replace newer versions' files: 412
    /// `precondition_failed` otherwise, and the draft stays open.
    pub async fn finalize_on(&self, wt: &str, base: Option<&str>) -> Result<String> {
        let cond = match base {
            Some(h) => ("If-Match", format!("\"{h}\"")),
            None => ("If-None-Match", "*".to_string()),
        };
        let v = self
            .json_with(
                Method::POST,
                &format!("/q/{wt}"),
                None,
                &[cond, retry_key(wt)],
            )
            .await?;
        string_field(&v, "hash")
    }

    /// `POST /q/{wt}/files`: resolves the draft's uploaded files into parts. The server then
    /// knows them by content (library, blake3, size), so a later files job with the same files
    /// sends no bytes for them.
    pub async fn finalize_files(&self, wt: &str) -> Result<Value> {
        self.json(Method::POST, &format!("/q/{wt}/files"), None)
            .await
    }

    /// The version draft `wt` was finalized into by a finalize of this client (its key), if
    /// the server still answers for it; `None` when the draft is gone otherwise. Never
    /// finalizes: the two conditions together hold for no draft still open.
    pub async fn finalized(&self, wt: &str) -> Result<Option<String>> {
        let never = [
            ("If-Match", "*".to_string()),
            ("If-None-Match", "*".to_string()),
            retry_key(wt),
        ];
        match self
            .json_with(Method::POST, &format!("/q/{wt}"), None, &never)
            .await
        {
            Ok(v) => string_field(&v, "hash").map(Some),
            Err(e) if matches!(e.status(), Some(404 | 412)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Finalizes the draft whatever the object's newest version is; returns the version hash.
    pub async fn finalize(&self, wt: &str) -> Result<String> {
        let v = self
            .json_with(Method::POST, &format!("/q/{wt}"), None, &[retry_key(wt)])
            .await?;
        string_field(&v, "hash")
    }

    pub async fn admin_stats(&self) -> Result<Value> {
        self.json(Method::GET, "/admin/stats", None).await
    }

    pub async fn admin_fsck(&self, repair: bool) -> Result<Value> {
        self.json(Method::POST, &format!("/admin/fsck?repair={repair}"), None)
            .await
    }

    pub async fn admin_gc(&self, dry_run: bool) -> Result<Value> {
        self.json(Method::POST, &format!("/admin/gc?dry_run={dry_run}"), None)
            .await
    }

    pub async fn files_job_status(&self, wt: &str, fj: &str) -> Result<Value> {
        self.json(Method::GET, &format!("/q/{wt}/file_jobs/{fj}"), None)
            .await
    }

    pub async fn upload_jobs(&self, wt: &str, fj: &str) -> Result<Vec<String>> {
        let v = self
            .json(
                Method::GET,
                &format!("/q/{wt}/file_jobs/{fj}/uploads"),
                None,
            )
            .await?;
        Ok(v["jobs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|j| j.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn force_completion(&self, wt: &str, fj: &str) -> Result<Value> {
        self.json(
            Method::PUT,
            &format!("/q/{wt}/file_jobs/{fj}/force_completion"),
            None,
        )
        .await
    }

    /// Starts a download of `path` of `id` (optionally a byte range, end exclusive); the
    /// response streams. Retried until the server answers.
    pub async fn download(
        &self,
        id: &str,
        path: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<reqwest::Response> {
        self.download_if(id, path, range, None).await
    }

    /// [`Client::download`] of a range that the server honours only while the file's ETag is
    /// still `if_range`; otherwise the answer is the whole file, 200.
    pub async fn download_if(
        &self,
        id: &str,
        path: &str,
        range: Option<(u64, Option<u64>)>,
        if_range: Option<&str>,
    ) -> Result<reqwest::Response> {
        self.fetch(Method::GET, id, path, range, if_range).await
    }

    /// The file's ETag (without quotes), from a HEAD.
    pub async fn file_etag(&self, id: &str, path: &str) -> Result<Option<String>> {
        let r = self.fetch(Method::HEAD, id, path, None, None).await?;
        Ok(r.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim_matches('"').to_string()))
    }

    async fn fetch(
        &self,
        method: Method,
        id: &str,
        path: &str,
        range: Option<(u64, Option<u64>)>,
        if_range: Option<&str>,
    ) -> Result<reqwest::Response> {
        let path = file_path(path)?;
        let mut attempt = 0;
        loop {
            let mut req = self.request(
                method.clone(),
                &format!("/q/{id}/files/{}", url_path(&path)),
            );
            if let Some((a, b)) = range {
                let spec = b.map_or(format!("bytes={a}-"), |b| format!("bytes={a}-{}", b - 1));
                req = req.header("Range", spec);
            }
            if let Some(tag) = if_range {
                req = req.header("If-Range", format!("\"{tag}\""));
            }
            let result = match req.send().await {
                Err(e) => Err(transport(e)),
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) => {
                    let (status, wait) = (r.status(), retry_after(r.headers()));
                    Err(api_error(
                        status,
                        wait,
                        &r.bytes().await.unwrap_or_default(),
                    ))
                }
            };
            match result {
                Err(e) if e.retryable() && attempt + 1 < ATTEMPTS => {
                    backoff(attempt, &e).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
                Ok(()) => unreachable!(),
            }
        }
    }
}

/// Deepest JSON nesting taken from a server. A files listing nests one level per directory
/// (paths have at most 256 segments) plus three; serde_json's own limit, 128, is below that.
const MAX_ANSWER_DEPTH: usize = 1024;

/// The `Idempotency-Key` header of every finalize of draft `wt`, derived from the token: a
/// finalize that went through but whose reply was lost is answered with its version when it is
/// sent again, by this run's retries or by a later run ([`Client::finalized`]), where it would
/// be 404 (the draft is gone) and a new run would publish a second version. Only a holder of
/// the write token can send it.
fn retry_key(wt: &str) -> (&'static str, String) {
    let digest = blake3::hash(format!("cairn finalize {wt}").as_bytes());
    ("Idempotency-Key", digest.to_hex()[..32].to_string())
}

/// A server's JSON answer, nested up to [`MAX_ANSWER_DEPTH`] (checked by a scan first, so
/// parsing without serde_json's recursion limit cannot exhaust the stack).
fn parse_answer(bytes: &[u8]) -> Result<Value> {
    let not_json =
        |why: String| ClientError::Local(format!("the server's answer is not JSON: {why}"));
    if cairn_core::json_scan::scan(bytes).depth > MAX_ANSWER_DEPTH {
        return Err(not_json(format!("nested deeper than {MAX_ANSWER_DEPTH}")));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let v = serde::Deserialize::deserialize(&mut de).map_err(|e| not_json(e.to_string()))?;
    de.end().map_err(|e| not_json(e.to_string()))?;
    Ok(v)
}

/// `path` checked by the server's own rules. A path is sent only when valid: the URL parser
/// resolves `..` and `.` segments, so `tree/../etc/passwd` would otherwise reach the server as
/// `etc/passwd` and download another file than the one named, where the server refuses it.
pub fn file_path(path: &str) -> Result<String> {
    cairn_core::FilePath::parse(path)
        .map(|p| p.as_str().to_string())
        .map_err(|e| ClientError::Invalid(format!("{path:?}: {e}")))
}

/// A file or metadata path as it goes into a URL: each segment percent-encoded, so that a name
/// with `%`, `?`, `#`, spaces or non-ASCII letters names that file and nothing else.
fn url_path(path: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    /// RFC 3986's unreserved characters stay as they are; everything else is encoded.
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    path.split('/')
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// A `Retry-After`: seconds (the form Cairn sends) or an HTTP date (a proxy's), as the time
/// from now. Anything else, or a date past, asks for nothing.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    match v.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .ok(),
    }
}

fn api_error(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> ClientError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["errors"][0];
    ClientError::Api {
        status: status.as_u16(),
        kind: e["kind"].as_str().unwrap_or("unknown").to_string(),
        reason: e["reason"].as_str().map_or_else(
            // A HEAD's error has no body: its status says what there is to say.
            || match String::from_utf8_lossy(body).trim() {
                "" => status.canonical_reason().unwrap_or("error").to_string(),
                text => text.to_string(),
            },
            str::to_string,
        ),
        retry_after,
    }
}

fn string_field(v: &Value, name: &str) -> Result<String> {
    v[name]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ClientError::Local(format!("the answer has no {name}: {v}")))
}

#[cfg(test)]
mod tests {
    /// Stored damage is reported at once; other server errors and the rate limit are retried.
    #[test]
    fn a_corrupt_answer_is_not_retried() {
        let api = |status: u16, kind: &str| super::ClientError::Api {
            status,
            kind: kind.into(),
            reason: String::new(),
            retry_after: None,
        };
        assert!(!api(500, "corrupt").retryable());
        assert!(api(500, "internal").retryable());
        assert!(api(507, "no_space").retryable());
        assert!(api(429, "rate_limited").retryable());
        assert!(!api(404, "not_found").retryable());
    }

    #[test]
    fn deep_answers_parse_and_too_deep_ones_are_refused() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(super::parse_answer(deep(300).as_bytes()).is_ok());
        assert!(super::parse_answer(deep(2000).as_bytes()).is_err());
        // Brackets inside strings do not count.
        let s = format!(r#"{{"a":"{}"}}"#, "[".repeat(5000));
        assert!(super::parse_answer(s.as_bytes()).is_ok());
    }

    /// A 429's `Retry-After` is waited out in full before the one retry it takes; the backoff
    /// alone (200 ms first) would have spent several refused attempts in that time.
    #[tokio::test]
    async fn a_rate_limited_call_waits_as_long_as_retry_after_asks() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            let limited = r#"{"errors":[{"kind":"rate_limited","reason":"x"}]}"#;
            for (status, extra, body) in [
                ("429 Too Many Requests", "retry-after: 2\r\n", limited),
                ("200 OK", "", "[]"),
            ] {
                let (mut c, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let _ = c.read(&mut buf).await.unwrap();
                seen.push(std::time::Instant::now());
                let answer = format!(
                    "HTTP/1.1 {status}\r\n{extra}content-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                c.write_all(answer.as_bytes()).await.unwrap();
                c.shutdown().await.unwrap();
            }
            seen
        });
        let client = super::Client::new(&base, "t");
        client.libraries().await.unwrap();
        let seen = server.await.unwrap();
        let waited = seen[1] - seen[0];
        assert!(
            waited >= std::time::Duration::from_millis(1900),
            "{waited:?}"
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        let of = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            super::retry_after(&h)
        };
        assert_eq!(of("7"), Some(std::time::Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(30);
        let d = of(&httpdate::fmt_http_date(later)).unwrap();
        assert!(d > std::time::Duration::from_secs(25) && d <= std::time::Duration::from_secs(30));
        assert_eq!(of("Wed, 21 Oct 2015 07:28:00 GMT"), None, "a date past");
        assert_eq!(of("soon"), None);
        assert_eq!(of("-3"), None);
    }

    #[test]
    fn a_path_goes_into_a_url_segment_by_segment_encoded() {
        assert_eq!(super::url_path("d/x%41.txt"), "d/x%2541.txt");
        assert_eq!(super::url_path("what?#.txt"), "what%3F%23.txt");
        assert_eq!(super::url_path("sp ace/é~_-.x"), "sp%20ace/%C3%A9~_-.x");
    }
}
