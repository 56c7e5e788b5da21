//! Files jobs and upload jobs: create, status, list, upload data, resume, force completion,
//! finalize files.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_core::{FilesJobId, UploadJobId, WriteToken};
use cairn_jobs::{FilesJobRequest, Qhit};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::{scope_of, target, AppState, Params, Principal};

async fn token(st: &AppState, p: &Params) -> Result<WriteToken, ApiError> {
    match target(st, p).await? {
        Qhit::Draft(t) => Ok(t),
        _ => Err(ApiError::bad_request(
            "files jobs live on a write token (tqw__…)",
        )),
    }
}

fn fj(p: &Params) -> Result<FilesJobId, ApiError> {
    Ok(p.get("fj")
        .ok_or_else(|| ApiError::bad_request("missing files job id"))?
        .parse()?)
}

fn uj(p: &Params) -> Result<UploadJobId, ApiError> {
    Ok(p.get("uj")
        .ok_or_else(|| ApiError::bad_request("missing upload job id"))?
        .parse()?)
}

/// `POST /q/{wt}/file_jobs`: 201 `{id, jobs}`.
pub async fn handle_create(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    who: Option<Extension<Principal>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = token(&st, &p).await?;
    crate::content::must_be_object(&body, "a files job")?;
    let req: FilesJobRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed files job: {e}")))?;
    if req.seq.is_some_and(|s| s > 0) {
        return Err(ApiError::bad_request(
            "follow-up batches (seq > 0) are not supported; send all ops with seq 0",
        ));
    }
    let confined = scope_of(who.as_deref()).is_some();
    let created = st
        .engine
        .run(move |e| e.create_files_job_in(&t, &req, confined))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": created.id, "jobs": created.jobs})),
    )
        .into_response())
}

/// `GET /q/{wt}/file_jobs`: an array of `{id, status}`.
pub async fn handle_list(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let t = token(&st, &p).await?;
    let jobs = st.engine.run(move |e| e.files_jobs(&t)).await?;
    Ok(Json(json!(jobs
        .iter()
        .map(|j| json!({"id": j.id, "status": j.status}))
        .collect::<Vec<_>>())))
}

/// `GET /q/{wt}/file_jobs/{fj}`.
pub async fn handle_status(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let (t, fj) = (token(&st, &p).await?, fj(&p)?);
    let s = st.engine.run(move |e| e.files_job_status(&t, &fj)).await?;
    let mut v = json!({
        "id": s.id, "seqs": [0], "seq_complete": true, "status": s.status,
        "upload": {"jobs": {"total": s.upload_jobs, "completed": s.upload_jobs_complete},
                   "bytes": {"total": s.bytes_total, "completed": s.bytes_received}}
    });
    if let Some(err) = s.error {
        v["error"] = json!(err);
    }
    Ok(Json(v))
}

/// `GET …/file_jobs/{fj}/uploads`: `{jobs: [iqfu…]}`.
pub async fn handle_list_uploads(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let (t, fj) = (token(&st, &p).await?, fj(&p)?);
    let job = st.engine.run(move |e| e.files_job(&t, &fj)).await?;
    Ok(Json(json!({"jobs": job.upload_jobs})))
}

/// `start` and `limit` as sent: read by [`Page::number`], so that a value past `u64` is taken
/// as the largest (a page past the end; a page of at most 1000) rather than refused.
#[derive(Deserialize)]
pub struct Page {
    start: Option<String>,
    limit: Option<String>,
}

impl Page {
    /// A whole number of decimal digits, saturating at `u64::MAX`; anything else (a sign, a
    /// fraction, letters, nothing) is a 400 naming the parameter.
    fn number(name: &str, v: &Option<String>, default: u64) -> Result<u64, ApiError> {
        let Some(v) = v else { return Ok(default) };
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::bad_request(format!(
                "{name} must be a whole number (0 or more), not {v:?}"
            )));
        }
        Ok(v.parse().unwrap_or(u64::MAX))
    }
}

/// Largest page of upload status served, whatever `limit` asks: clients follow `next`.
pub const STATUS_PAGE_MAX: u64 = 1000;

/// How long an upload status waits for a request of its job still being received. A dropped
/// request's server side ends within milliseconds (2–33 ms measured on loopback); a request
/// still streaming after this is reported as committed so far.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET …/file_jobs/{fj}/uploads/{uj}?start&limit`: per-segment `off/len/skip/rem`, paginated.
pub async fn handle_upload_status(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let (t, fj, uj) = (token(&st, &p).await?, fj(&p)?, uj(&p)?);
    let start = Page::number("start", &page.start, 0)?;
    let limit = Page::number("limit", &page.limit, STATUS_PAGE_MAX)?.clamp(1, STATUS_PAGE_MAX);
    // A request for this job still being received (perhaps one its client just dropped, to
    // resume from this status) ends first, so `skip` counts what it saved.
    st.engine.settle_upload(&t, &fj, &uj, SETTLE_WAIT).await?;
    let s = st
        .engine
        .run(move |e| e.upload_status(&t, &fj, &uj, start, limit))
        .await?;
    Ok(Json(
        serde_json::to_value(s).map_err(|e| ApiError::internal(e.to_string()))?,
    ))
}

/// `POST …/file_jobs/{fj}/{uj}`: bytes appended at the job's offset; the reply is JSON and is
/// sent only once the bytes are durable. A body longer than the job still expects is refused
/// before it is read (when `Content-Length` says so) and otherwise stopped at the excess.
pub async fn handle_upload(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    key: Option<Extension<crate::limit::TokenKey>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (t, fj, uj) = (token(&st, &p).await?, fj(&p)?, uj(&p)?);
    let declared = match headers.get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("bad Content-Length"))?,
        ),
        None => None,
    };
    let (stated, range_len) = content_range(&headers, declared)?;
    let declared = declared.or(range_len);
    let _slot = st
        .upload_slots
        .take(key.map(|Extension(k)| k), st.upload_wait)
        .await?;
    let reply = st
        .engine
        .upload_at(t, fj, uj, declared, stated, body.into_data_stream())
        .await?;
    tracing::info!(upload_job = %uj, accepted = reply.accepted, received = reply.received, size = reply.size, "upload");
    Ok(Json(
        serde_json::to_value(reply).map_err(|e| ApiError::internal(e.to_string()))?,
    ))
}

/// `PUT …/file_jobs/{fj}/resume`: STOPPED or FAILED → IN_PROGRESS (410 if already complete).
pub async fn handle_resume(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let (t, fj) = (token(&st, &p).await?, fj(&p)?);
    let s = st.engine.run(move |e| e.resume(&t, &fj)).await?;
    Ok(Json(json!({"id": s.id, "status": s.status})))
}

/// `PUT …/file_jobs/{fj}/force_completion`: 202, or 409 while data is arriving, 410 if complete.
pub async fn handle_force_completion(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Response, ApiError> {
    let (t, fj) = (token(&st, &p).await?, fj(&p)?);
    let r = st.engine.run(move |e| e.force_completion(&t, &fj)).await?;
    let body =
        json!({"id": fj, "sealed_partial": r.sealed_partial, "files_dropped": r.files_dropped});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `POST /q/{wt}/files`: finalize files (201; 409 if an upload is incomplete; 404 if done).
pub async fn handle_finalize_files(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Response, ApiError> {
    let t = token(&st, &p).await?;
    st.engine.run(move |e| e.finalize_files(&t)).await?;
    Ok((StatusCode::CREATED, Json(json!({}))).into_response())
}

/// The start offset and total of an upload body from `Content-Range: bytes a-b/total` (or
/// `/*`), and the length it states, checked against the body's when both are given. Absent
/// header: the job's current offset, and no total or length.
type StatedRange = ((Option<u64>, Option<u64>), Option<u64>);

fn content_range(headers: &HeaderMap, declared: Option<u64>) -> Result<StatedRange, ApiError> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(((None, None), None));
    };
    let bad = || ApiError::bad_request("Content-Range must be `bytes <first>-<last>/<total or *>`");
    let value = v.to_str().map_err(|_| bad())?.trim();
    // The range unit is case-insensitive (RFC 9110 §14.1).
    let spec = match value.get(..6) {
        Some(unit) if unit.eq_ignore_ascii_case("bytes ") => &value[6..],
        _ => return Err(bad()),
    };
    // Digits only: Rust's integer parse would also take a leading `+`.
    let number = |s: &str| match !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
        true => s.parse::<u64>().map_err(|_| bad()),
        false => Err(bad()),
    };
    let (range, total) = spec.split_once('/').ok_or_else(bad)?;
    let total = match total {
        "*" => None,
        n => Some(number(n)?),
    };
    let (a, b) = range.split_once('-').ok_or_else(bad)?;
    let (a, b) = (number(a)?, number(b)?);
    let len = (b.checked_sub(a))
        .and_then(|d| d.checked_add(1))
        .ok_or_else(bad)?;
    if let Some(n) = declared.filter(|&n| n != len) {
        return Err(ApiError::bad_request(format!(
            "Content-Range {a}-{b} is {len} bytes but Content-Length says {n}"
        )));
    }
    if total.is_some_and(|t| b >= t) {
        return Err(ApiError::bad_request(format!(
            "Content-Range {a}-{b} ends past its total"
        )));
    }
    Ok(((Some(a), total), Some(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str, declared: Option<u64>) -> Result<StatedRange, ApiError> {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, v.parse().unwrap());
        content_range(&h, declared)
    }

    /// `Content-Range` of an upload: the unit in any case, digits only, a range within its
    /// total and as long as the body's stated length.
    #[test]
    fn content_ranges_parse_strictly() {
        for (v, want) in [
            ("bytes 0-4/20", ((Some(0), Some(20)), Some(5))),
            ("BYTES 5-9/*", ((Some(5), None), Some(5))),
            (" Bytes 0-0/1 ", ((Some(0), Some(1)), Some(1))),
        ] {
            assert_eq!(parse(v, None).unwrap(), want, "{v}");
        }
        for v in [
            "bytes +0-4/20",
            "bytes 0-+4/20",
            "bytes 0-4/+20",
            "bytes -0-4/20",
            "bytes 0-4",
            "bytes 4-0/20",
            "bytes 0-20/20",
            "bytes= 0-4/20",
            "bits 0-4/20",
            "bytes 0x1-4/20",
            "bytes  0-4/20",
        ] {
            assert!(parse(v, None).is_err(), "{v}");
        }
        assert!(parse("bytes 0-4/20", Some(4)).is_err(), "length disagrees");
    }
}
