//! Libraries, objects, drafts, versions, content info and metadata.

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_core::{LibraryId, ObjectId, SpaceId, VersionHash, WriteToken};
use cairn_jobs::{Engine, Qhit};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Access, LibraryToken};
use crate::download::header_list;
use crate::error::ApiError;
use crate::{scope_of, target, AppState, Params, Principal};

/// `GET /config`: what the official client reads first (reference §2.1). No token needed.
pub async fn handle_config(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    // Without a configured public URL, the address the client reached: right for direct use,
    // wrong behind a TLS proxy (its `Host` is kept, its scheme is not), hence `public_url`.
    let api = match st.public_url.as_deref() {
        Some(url) => url.to_string(),
        None => format!("http://{}/", host_of(&headers)?),
    };
    let node = st.engine.node_id();
    let space = SpaceId::new(*node.as_bytes());
    Ok(Json(json!({
        "node_id": node.to_string(),
        "qspace": {"id": space.to_string(), "ethereum": {"network_id": 0}},
        "network": {
            "services": {
                "fabric_api": [api],
                // Never contacted: a placeholder the client insists on.
                "ethereum_api": ["http://127.0.0.1:9/"],
                "authority_service": [], "file_service": [], "search": []
            },
            "api_versions": [2, 3]
        }
    })))
}

/// The request's `Host`, when it is a plain `host[:port]`: the client builds every URL from the
/// address `/config` gives, so one with a path, user info or nothing at all is refused rather
/// than advertised (HTTP/1.1 requires a valid `Host`: RFC 9112 §3.2).
fn host_of(headers: &HeaderMap) -> Result<String, ApiError> {
    let refuse = |why: &str| {
        ApiError::bad_request(format!(
            "{why}: /config gives the address clients reach this server at, taken from Host \
             (or the server's public_url setting)"
        ))
    };
    let mut hosts = headers.get_all(header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Err(refuse("the request needs exactly one Host header"));
    };
    let host = host
        .to_str()
        .map_err(|_| refuse("the Host header is not ASCII"))?;
    if !plain_host(host) {
        return Err(refuse("the Host header is not host[:port]"));
    }
    Ok(host.to_string())
}

/// `name[:port]` or `[ipv6][:port]`: a name of letters, digits, `-` and `.`, a port from 1 to
/// 65535 in at most 5 digits and without a leading zero (the address is advertised as sent); nothing else (user info, a path, sub-delimiters, an empty port).
pub(crate) fn plain_host(host: &str) -> bool {
    let (name_ok, port) = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest)) => (addr.parse::<std::net::Ipv6Addr>().is_ok(), rest),
            None => return false,
        },
        None => {
            let end = host.find(':').unwrap_or(host.len());
            let name = &host[..end];
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            (ok, &host[end..])
        }
    };
    let port_ok = match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(p) => {
            (1..=5).contains(&p.len())
                && !p.starts_with('0')
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u16>().is_ok_and(|n| n > 0)
        }
    };
    name_ok && port_ok
}

#[derive(Deserialize, Default)]
pub struct NewLibrary {
    #[serde(default)]
    name: String,
}

pub async fn handle_create_library(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: NewLibrary = parse_json_or_empty(&body)?;
    let lib = st.engine.run(move |e| e.create_library(&req.name)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": lib.id, "name": lib.name})),
    )
        .into_response())
}

/// `GET /qlibs`: every library, or only its own for a library token.
pub async fn handle_list_libraries(
    State(st): State<AppState>,
    who: Option<Extension<Principal>>,
) -> Result<Json<Value>, ApiError> {
    let only = scope_of(who.as_deref());
    let mut libs = st.engine.run(|e| e.libraries()).await?;
    libs.retain(|l| only.is_none_or(|lib| l.id == lib));
    Ok(Json(
        json!({"libraries": libs.iter().map(|l| json!({"id": l.id, "name": l.name})).collect::<Vec<_>>()}),
    ))
}

/// `GET /qlibs/{lib}`: the library's name, creation time (seconds since the epoch) and
/// number of objects.
pub async fn handle_library(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let lib = lib_param(&p)?;
    let (rec, objects) = st
        .engine
        .run(move |e| Ok((e.library(&lib)?, e.object_count(&lib)?)))
        .await?;
    Ok(Json(
        json!({"id": rec.id, "name": rec.name, "created": rec.created, "objects": objects}),
    ))
}

/// `DELETE /qlibs/{lib}` (admin): deletes an empty library and revokes its tokens; 409
/// `conflict` while it holds objects. Its tokens are revoked after the library is gone, and
/// also when it was already gone: a retry after a failed revocation (a 500, which clients
/// retry) finishes the job and answers 200. Only a library that is gone and has no tokens
/// left is 404.
pub async fn handle_delete_library(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let lib = lib_param(&p)?;
    let deleted = st.engine.run(move |e| e.delete_library(&lib)).await;
    if let Err(e) = &deleted {
        if e.kind != cairn_core::ErrorKind::NotFound {
            return Err(deleted.unwrap_err().into());
        }
    }
    let auth = st.auth.clone();
    let revoked = st.engine.run(move |_| auth.revoke_library(&lib)).await?;
    if revoked == 0 {
        deleted?;
    }
    Ok(Json(json!({"id": lib, "tokens_revoked": revoked})))
}

#[derive(Deserialize, Default)]
pub struct NewToken {
    #[serde(default)]
    access: Access,
}

fn token_json(t: &LibraryToken) -> Value {
    json!({"id": t.id, "qlib_id": t.library, "access": t.access, "created": t.created})
}

/// `POST /qlibs/{lib}/tokens` (admin): a token for one library, `{"access": "read"|"write"}`
/// (default write). The token is in this reply only; the server keeps its hash.
pub async fn handle_create_token(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let lib = lib_param(&p)?;
    let req: NewToken = parse_json_or_empty(&body)?;
    st.engine.run(move |e| e.library(&lib)).await?;
    let auth = st.auth.clone();
    // The token file is written and fsynced: off the async threads, like engine work. The
    // library is checked again once the token exists: a `DELETE /qlibs/{lib}` that ran in
    // between revoked the tokens it saw, not this one, so this one is revoked here.
    let (rec, token) = st
        .engine
        .run(move |e| {
            let made = auth.create_library_token(lib, req.access)?;
            if let Err(gone) = e.library(&lib) {
                auth.revoke_library_token(&lib, &made.0.id)?;
                return Err(gone);
            }
            Ok(made)
        })
        .await?;
    let mut body = token_json(&rec);
    body["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /qlibs/{lib}/tokens` (admin): the library's tokens, without the secrets.
pub async fn handle_list_tokens(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let lib = lib_param(&p)?;
    st.engine.run(move |e| e.library(&lib)).await?;
    let tokens: Vec<Value> = st
        .auth
        .library_tokens(&lib)
        .iter()
        .map(token_json)
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

/// `DELETE /qlibs/{lib}/tokens/{token_id}` (admin): revokes a token at once.
pub async fn handle_revoke_token(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let lib = lib_param(&p)?;
    let id = p.get("token_id").cloned().unwrap_or_default();
    let auth = st.auth.clone();
    let what = id.clone();
    let found = st
        .engine
        .run(move |_| auth.revoke_library_token(&lib, &what))
        .await?;
    if !found {
        return Err(ApiError::not_found(format!(
            "no token {id} in library {lib}"
        )));
    }
    Ok(Json(json!({ "id": id, "revoked": true })))
}

fn lib_param(p: &Params) -> Result<LibraryId, ApiError> {
    Ok(p.get("lib")
        .ok_or_else(|| ApiError::bad_request("missing library id"))?
        .parse()?)
}

/// `POST /qlibs/{lib}/q`: a new object with an open draft.
pub async fn handle_create_object(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Response, ApiError> {
    let lib = lib_param(&p)?;
    let (obj, draft) = st.engine.run(move |e| e.create_object(&lib)).await?;
    let body = json!({"id": obj.id, "write_token": draft.token, "qlib_id": lib, "type": ""});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn handle_list_objects(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let lib = lib_param(&p)?;
    let objects = st.engine.run(move |e| e.objects(&lib)).await?;
    let contents: Vec<Value> = objects
        .iter()
        .map(|o| {
            let versions: Vec<Value> = o
                .head
                .iter()
                .map(|h| version_json(&o.id, h, &lib))
                .collect();
            json!({"id": o.id, "versions": versions})
        })
        .collect();
    Ok(Json(json!({"contents": contents})))
}

fn version_json(object: &ObjectId, h: &VersionHash, lib: &LibraryId) -> Value {
    json!({"id": object, "hash": h, "type": "", "qlib_id": lib})
}

fn object_param(p: &Params) -> Result<ObjectId, ApiError> {
    Ok(p.get("id")
        .ok_or_else(|| ApiError::bad_request("missing object id"))?
        .parse()?)
}

/// `POST /qid/{iq}`: open a draft on the object's head.
pub async fn handle_open_draft(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let object = object_param(&p)?;
    let lib = p.get("lib").map(|l| l.parse::<LibraryId>()).transpose()?;
    let draft = st
        .engine
        .run(move |e| {
            let obj = e.object(&object)?;
            if lib.is_some_and(|l| l != obj.library) {
                return Err(cairn_core::Error::not_found(format!(
                    "object {object} is not in that library"
                )));
            }
            e.open_draft(&object)
        })
        .await?;
    Ok(Json(
        json!({"id": object, "write_token": draft.token, "type": "", "qlib_id": draft.library}),
    ))
}

/// `GET /qid/{iq}`: versions, newest first.
pub async fn handle_versions(
    State(st): State<AppState>,
    Path(p): Path<Params>,
) -> Result<Json<Value>, ApiError> {
    let object = object_param(&p)?;
    let want = p.get("lib").map(|l| l.parse::<LibraryId>()).transpose()?;
    let (lib, versions) = st
        .engine
        .run(move |e| Ok((e.object(&object)?.library, e.versions(&object)?)))
        .await?;
    if want.is_some_and(|w| w != lib) {
        return Err(ApiError::not_found(format!(
            "object {object} is not in that library"
        )));
    }
    let list: Vec<Value> = versions
        .iter()
        .map(|h| version_json(&object, h, &lib))
        .collect();
    Ok(Json(json!({"id": object, "versions": list})))
}

fn draft_token(q: Qhit) -> Result<WriteToken, ApiError> {
    match q {
        Qhit::Draft(t) => Ok(t),
        _ => Err(ApiError::bad_request(
            "this operation needs a write token (tqw__…)",
        )),
    }
}

/// `POST /q/{wt}`: finalize the draft into a version.
pub async fn handle_finalize(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let t = draft_token(target(&st, &p).await?)?;
    let (if_match, if_none_match) = (
        header_list(&headers, &header::IF_MATCH)?,
        header_list(&headers, &header::IF_NONE_MATCH)?,
    );
    let cond = crate::conditional::head_condition(if_match.as_deref(), if_none_match.as_deref());
    if headers.get_all("idempotency-key").iter().nth(1).is_some() {
        return Err(ApiError::bad_request(
            "Idempotency-Key is given more than once",
        ));
    }
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    let (hash, rec) = st
        .engine
        .run(move |e| e.finalize_keyed(&t, &cond, key.as_deref()))
        .await?;
    Ok(Json(
        json!({"id": rec.object, "hash": hash, "write_token": t, "type": "", "qlib_id": rec.library}),
    ))
}

/// `GET /q/{id}`: what the id names. A version (an object's newest, or one named by hash) is
/// also the `ETag`, the entity-tag a finalize's `If-Match` compares.
///
/// That ETag answers `If-None-Match` (304) and `If-Match` (412) as a download's does; a draft
/// has no entity-tag, and its info takes no conditions.
pub async fn handle_info(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = target(&st, &p).await?;
    let info = st.engine.run(move |e| e.info(&q)).await?;
    let mut v = json!({"id": info.object, "hash": info.version.map(|h| h.to_string()).unwrap_or_default(), "type": "", "qlib_id": info.library});
    if let Some(t) = info.token {
        v["write_token"] = json!(t);
        // The version the draft was opened from: what a finalize's If-Match would name.
        v["base"] = json!(info.base.map(|h| h.to_string()));
    }
    let mut r = Json(v).into_response();
    if let (Some(h), None) = (info.version, info.token) {
        let etag = format!("\"{h}\"");
        let (if_match, if_none_match) = (
            header_list(&headers, &header::IF_MATCH)?,
            header_list(&headers, &header::IF_NONE_MATCH)?,
        );
        let pre = crate::conditional::Preconditions {
            if_match: if_match.as_deref(),
            if_none_match: if_none_match.as_deref(),
            ..Default::default()
        };
        let v = crate::conditional::Validators {
            etag: &etag,
            modified: None,
        };
        let tag = HeaderValue::from_str(&etag)
            .map_err(|_| ApiError::internal("unrepresentable version hash"))?;
        match crate::conditional::evaluate(&v, pre, std::time::SystemTime::now()) {
            crate::conditional::Outcome::Content { .. } => {}
            crate::conditional::Outcome::NotModified => {
                // The headers the 200 would carry (RFC 9110 §15.4.5), as for a JSON reply.
                r = StatusCode::NOT_MODIFIED.into_response();
                let h = r.headers_mut();
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                h.insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
            }
            crate::conditional::Outcome::PreconditionFailed(which) => {
                return Err(ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition_failed",
                    format!("{which} does not hold: the newest version is {h}"),
                ));
            }
        }
        r.headers_mut().insert(header::ETAG, tag);
    }
    Ok(r)
}

/// `DELETE …/q/{id}`: an object id deletes the object, a write token discards the draft, a
/// version hash deletes that version.
///
/// `If-Match` / `If-None-Match` are evaluated as for a finalize, against the entity-tag `GET`
/// gives: an object's newest version, a version's own hash; a draft has none (§6).
pub async fn handle_delete(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let q = target(&st, &p).await?;
    let cond = crate::conditional::head_condition(
        header_list(&headers, &header::IF_MATCH)?.as_deref(),
        header_list(&headers, &header::IF_NONE_MATCH)?.as_deref(),
    );
    st.engine
        .run(move |e: &Engine| match q {
            Qhit::Object(o) => e.delete_object_if(&o, &cond),
            Qhit::Draft(t) => e.delete_draft_if(&t, &cond),
            Qhit::Version(h) => e.delete_version_if(&h, &cond),
        })
        .await?;
    Ok(Json(json!({})))
}

/// The metadata keys a `…/meta/{path}` URL names, from the request's still-encoded path so that
/// each segment is decoded on its own: `%2F` is a `/` inside a key (`meta/a%2Fb` is the key `a/b`),
/// as S3 reads it in object keys. Empty segments are dropped (`meta//a` is `meta/a`). Names
/// in the files tree never hold a `/`, so there a `%2F` still separates them
/// (`meta/files/dir%2Fa.txt` or `meta/files%2Fdir%2Fa.txt`, as a client that encodes the whole
/// path sends it); a top-level key `files/…` is therefore not addressable.
fn meta_keys(route: &MatchedPath, uri: &Uri) -> Result<Vec<String>, ApiError> {
    // Where `{*path}` starts in the route is where it starts in the request's path (the
    // segments before it are literals and ids, which hold no `/`); routes without it name the
    // root. (axum hands handlers `{*path}` decoded, `%2F` and `/` alike.)
    let Some(at) = route.as_str().split('/').position(|s| s == "{*path}") else {
        return Ok(Vec::new());
    };
    let mut keys = uri
        .path()
        .split('/')
        .skip(at)
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|k| k.into_owned())
                .map_err(|_| ApiError::bad_request("a metadata key is not UTF-8 once decoded"))
        })
        .collect::<Result<Vec<String>, ApiError>>()?;
    let in_files = |k: &String| k == "files" || k.starts_with("files/");
    if keys.first().is_some_and(in_files) && keys.iter().any(|k| k.contains('/')) {
        let split: Vec<String> = keys
            .iter()
            .flat_map(|k| k.split('/'))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        keys = split;
    }
    Ok(keys)
}

pub async fn handle_meta_get(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    route: MatchedPath,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let q = target(&st, &p).await?;
    let keys = meta_keys(&route, &uri)?;
    Ok(Json(
        st.engine.run(move |e| e.meta_get_at(&q, &keys)).await?,
    ))
}

/// A write to a draft's metadata takes `If-Match` / `If-None-Match` as conditions on the draft,
/// which has no entity-tag: `If-Match: *` holds, a tag does not (412); `If-None-Match: *` does
/// not hold, a tag does. Refused rather than ignored: a client that sends one expects it to be
/// kept (QA 32).
async fn draft_precondition(
    st: &AppState,
    headers: &HeaderMap,
    t: &WriteToken,
) -> Result<(), ApiError> {
    let cond = crate::conditional::head_condition(
        header_list(headers, &header::IF_MATCH)?.as_deref(),
        header_list(headers, &header::IF_NONE_MATCH)?.as_deref(),
    );
    if cond == cairn_jobs::HeadCondition::default() {
        return Ok(());
    }
    // An unknown draft is 404 first, as for every other precondition.
    let t = *t;
    st.engine.run(move |e| e.draft_head(&t).map(drop)).await?;
    Ok(cond.check_untagged(&format!("draft {t}"))?)
}

async fn meta_write(
    st: AppState,
    (p, headers): (Params, HeaderMap),
    route: MatchedPath,
    uri: Uri,
    body: Bytes,
    merge: bool,
) -> Result<Json<Value>, ApiError> {
    let t = draft_token(target(&st, &p).await?)?;
    draft_precondition(&st, &headers, &t).await?;
    let keys = meta_keys(&route, &uri)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("metadata is not JSON: {e}")))?;
    st.engine
        .run(move |e| e.meta_set_at(&t, &keys, value, merge))
        .await?;
    Ok(Json(json!({})))
}

pub async fn handle_meta_put(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    headers: HeaderMap,
    route: MatchedPath,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    meta_write(st, (p, headers), route, uri, body, false).await
}

pub async fn handle_meta_merge(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    headers: HeaderMap,
    route: MatchedPath,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    meta_write(st, (p, headers), route, uri, body, true).await
}

pub async fn handle_meta_delete(
    State(st): State<AppState>,
    Path(p): Path<Params>,
    headers: HeaderMap,
    route: MatchedPath,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let t = draft_token(target(&st, &p).await?)?;
    draft_precondition(&st, &headers, &t).await?;
    let keys = meta_keys(&route, &uri)?;
    st.engine.run(move |e| e.meta_delete_at(&t, &keys)).await?;
    Ok(Json(json!({})))
}

/// Parses a JSON body; an empty body is the type's default (clients send none on some POSTs).
pub(crate) fn parse_json_or_empty<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    must_be_object(body, "the body")?;
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
}

/// A body parsed into a struct must be a JSON object: serde would also take an array, filling
/// the fields in order (`["foo"]` as `{"name":"foo"}`), which no client means.
pub(crate) fn must_be_object(body: &[u8], what: &str) -> Result<(), ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(ApiError::bad_request(format!(
            "{what} must be a JSON object"
        ))),
    }
}

/// `GET /admin/stats`: logical and stored bytes, dedup ratio, packs, live ratio.
pub async fn handle_admin_stats(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let s = st.engine.run(|e| e.stats()).await?;
    Ok(Json(
        serde_json::to_value(s).map_err(|e| ApiError::internal(e.to_string()))?,
    ))
}

#[derive(Deserialize, Default)]
pub struct FsckQuery {
    #[serde(default)]
    repair: bool,
}

/// `POST /admin/fsck[?repair=true]`: the full check (uploads wait while it runs); `repair`
/// also corrects refcounts.
pub async fn handle_admin_fsck(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<FsckQuery>,
) -> Result<Json<Value>, ApiError> {
    let r = st
        .engine
        .run(move |e| if q.repair { e.fsck_repair() } else { e.fsck() })
        .await?;
    let mut v = serde_json::to_value(&r).map_err(|e| ApiError::internal(e.to_string()))?;
    v["clean"] = json!(r.is_clean());
    Ok(Json(v))
}

#[derive(Deserialize, Default)]
pub struct GcQuery {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /admin/gc[?dry_run=true]`.
pub async fn handle_admin_gc(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<GcQuery>,
) -> Result<Json<Value>, ApiError> {
    let opts = cairn_store::GcOptions {
        dry_run: q.dry_run,
        ..Default::default()
    };
    let r = st.engine.run(move |e| e.gc(&opts)).await?;
    Ok(Json(
        serde_json::to_value(r).map_err(|e| ApiError::internal(e.to_string()))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::plain_host;

    #[test]
    fn only_a_plain_host_and_port_is_advertised() {
        for good in [
            "h",
            "h:1",
            "127.0.0.1:8008",
            "a-b.example:65535",
            "[::1]",
            "[::1]:80",
        ] {
            assert!(plain_host(good), "{good}");
        }
        for bad in [
            "", ":80", "h:", "h:0", "h:080", "h:65536", "h:123456", "h:8a", "u@h", "h/p", "h:80/",
            "[::1", "[zz]:80", "[::1]80", "h_1", "h:+80",
        ] {
            assert!(!plain_host(bad), "{bad}");
        }
    }
}
