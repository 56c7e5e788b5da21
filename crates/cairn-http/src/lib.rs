//! Cairn's HTTP server: the Eluvio-style Files API over hyper (via axum).
//!
//! Shape: [`router`] maps (method, path) to `handle_*` functions in `content.rs`, `jobs.rs` and
//! `download.rs`; every object route exists as `/q/{id}/…` and `/qlibs/{lib}/q/{id}/…`.
//! Middlewares wrap every route, outermost first: request logging (one line per request),
//! cross-origin rules ([`cors`]: preflights end there), error rendering
//! ([`error::render_errors`], the one place errors become JSON), request-head limits, and auth
//! (all but `/config`).
//! Handlers call the engine through `Engine::run` (blocking work off the async workers); uploads
//! and downloads stream through the engine's bounded channels.

mod accesslog;
pub use accesslog::REQUEST_ID;
pub mod auth;
mod body;
mod conditional;
pub mod config;
mod content;
pub mod cors;
mod deadline;
mod download;
pub mod error;
mod jobs;
pub mod limit;
pub mod range;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::Router;
use cairn_core::LibraryId;
use cairn_jobs::{Engine, EngineConfig, Qhit};

pub use auth::{Access, Auth, Principal, HASH_FILE as ADMIN_TOKEN_FILE};
pub use config::ServerConfig;
use error::ApiError;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub auth: Auth,
    pub limit: limit::RateLimit,
    /// Uploads receiving at once per token (`ServerConfig::max_uploads_per_token`), and how long
    /// one waits for a slot (`idle_timeout_secs`).
    pub upload_slots: limit::UploadSlots,
    pub upload_wait: std::time::Duration,
    /// What `GET /config` advertises instead of `http://{Host}/` (`ServerConfig::public_url`).
    pub public_url: Option<Arc<str>>,
    /// `ServerConfig::sandbox_pages`: files of types that run scripts get a CSP sandbox.
    pub sandbox_pages: bool,
}

/// Path parameters of a route.
pub(crate) type Params = HashMap<String, String>;

/// The content a route names, checked against the library in the long form.
pub(crate) async fn target(st: &AppState, p: &Params) -> Result<Qhit, ApiError> {
    let id = p
        .get("id")
        .ok_or_else(|| ApiError::bad_request("missing content id"))?;
    let q: Qhit = id.parse()?;
    if let Some(lib) = p.get("lib") {
        let lib: LibraryId = lib.parse()?;
        let library = match st.engine.known_library(&q) {
            Some(library) => library,
            None => {
                st.engine
                    .run(move |e| e.remember_info(&q).or_else(|_| content_lib(e, &q)))
                    .await?
                    .library
            }
        };
        if library != lib {
            return Err(ApiError::not_found(format!("{id} is not in library {lib}")));
        }
    }
    Ok(q)
}

/// Library of content `info` cannot describe: an object with no version yet, or a draft that
/// is no longer open.
fn content_lib(e: &Engine, q: &Qhit) -> cairn_core::Result<cairn_jobs::QInfo> {
    match q {
        Qhit::Object(o) => {
            let obj = e.object(o)?;
            Ok(cairn_jobs::QInfo {
                object: *o,
                library: obj.library,
                version: None,
                token: None,
                base: None,
                modified: obj.created,
            })
        }
        // A draft finalized or discarded is still of its object's library (the token names
        // the object): another library's token is refused, not told it is gone.
        Qhit::Draft(t) => e.info(q).or_else(|err| {
            let obj = e.object(&t.object).map_err(|_| err)?;
            Ok(cairn_jobs::QInfo {
                object: t.object,
                library: obj.library,
                version: None,
                token: None,
                base: None,
                modified: obj.created,
            })
        }),
        _ => e.info(q),
    }
}

/// Registers `mr` under both path forms of an object route.
fn both(r: Router<AppState>, suffix: &str, mr: MethodRouter<AppState>) -> Router<AppState> {
    r.route(&format!("/q/{{id}}{suffix}"), mr.clone())
        .route(&format!("/qlibs/{{lib}}/q/{{id}}{suffix}"), mr)
}

/// The whole API, with the limits and cross-origin rules of `cfg`.
pub fn router(state: AppState, cfg: &ServerConfig) -> Result<Router, String> {
    let mut r = Router::new()
        .route("/config", get(content::handle_config))
        .route("/admin/stats", get(content::handle_admin_stats))
        .route("/admin/fsck", post(content::handle_admin_fsck))
        .route("/admin/gc", post(content::handle_admin_gc))
        .route(
            "/qlibs",
            get(content::handle_list_libraries).post(content::handle_create_library),
        )
        .route(
            "/qlibs/{lib}",
            get(content::handle_library).delete(content::handle_delete_library),
        )
        .route(
            "/qlibs/{lib}/q",
            get(content::handle_list_objects).post(content::handle_create_object),
        )
        .route(
            "/qlibs/{lib}/tokens",
            get(content::handle_list_tokens).post(content::handle_create_token),
        )
        .route(
            "/qlibs/{lib}/tokens/{token_id}",
            axum::routing::delete(content::handle_revoke_token),
        )
        .route(
            "/qid/{id}",
            get(content::handle_versions).post(content::handle_open_draft),
        )
        .route(
            "/qlibs/{lib}/qid/{id}",
            get(content::handle_versions).post(content::handle_open_draft),
        );
    let routes: Vec<(&str, MethodRouter<AppState>)> = vec![
        (
            "",
            get(content::handle_info)
                .post(content::handle_finalize)
                .delete(content::handle_delete),
        ),
        (
            "/meta",
            get(content::handle_meta_get)
                .put(content::handle_meta_put)
                .post(content::handle_meta_merge)
                .delete(content::handle_meta_delete),
        ),
        // `{*path}` does not match an empty path: `meta/` is the root, as `meta//` is.
        (
            "/meta/",
            get(content::handle_meta_get)
                .put(content::handle_meta_put)
                .post(content::handle_meta_merge)
                .delete(content::handle_meta_delete),
        ),
        (
            "/meta/{*path}",
            get(content::handle_meta_get)
                .put(content::handle_meta_put)
                .post(content::handle_meta_merge)
                .delete(content::handle_meta_delete),
        ),
        (
            "/file_jobs",
            get(jobs::handle_list).post(jobs::handle_create),
        ),
        ("/file_jobs/{fj}", get(jobs::handle_status)),
        ("/file_jobs/{fj}/uploads", get(jobs::handle_list_uploads)),
        (
            "/file_jobs/{fj}/uploads/{uj}",
            get(jobs::handle_upload_status),
        ),
        ("/file_jobs/{fj}/resume", put(jobs::handle_resume)),
        (
            "/file_jobs/{fj}/force_completion",
            put(jobs::handle_force_completion),
        ),
        ("/file_jobs/{fj}/{uj}", post(jobs::handle_upload)),
        (
            "/files",
            post(jobs::handle_finalize_files).get(download::handle_list),
        ),
        (
            "/files/{*path}",
            get(download::handle_file).head(download::handle_file),
        ),
        // The root with a trailing slash: `{*path}` does not match an empty path.
        ("/files/", get(download::handle_list)),
        ("/files_list", get(download::handle_list)),
        ("/files_list/", get(download::handle_list)),
        ("/files_list/{*path}", get(download::handle_list)),
        ("/parts", get(download::handle_parts)),
        ("/parts/{phash}", get(download::handle_part_info)),
        (
            "/data/{phash}",
            get(download::handle_part_data).head(download::handle_part_data),
        ),
    ];
    for (suffix, mr) in routes {
        r = both(r, suffix, mr);
    }
    let bodies = body::JsonBodies::new(
        cfg.max_json_body,
        std::time::Duration::from_secs(cfg.idle_timeout_secs.max(1)),
    );
    // The last layer added runs first: errors, head limits, auth, then the body.
    let mut r = r
        .layer(middleware::from_fn(move |req, next| {
            bodies.clone().read(req, next)
        }))
        .layer(middleware::from_fn_with_state(state.clone(), require_auth))
        .layer(middleware::from_fn(limit::request_head))
        .layer(middleware::from_fn(error::render_errors));
    // Outside auth (preflights carry no token) and outside error rendering (a page must be
    // able to read the JSON error too), inside the request log.
    if let Some(cors) = cors::Origins::parse(&cfg.cors_origins)?.layer() {
        r = r.layer(cors);
    }
    Ok(r.layer(middleware::from_fn(accesslog::log_request))
        .layer(DefaultBodyLimit::max(cfg.max_json_body))
        .with_state(state))
}

/// Authenticates every request but `GET /config`, applies the token's rate limit, confines
/// library tokens ([`authorize`]), and leaves the [`Principal`] in the request's extensions.
async fn require_auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/config" {
        return next.run(req).await;
    }
    let checked = st
        .auth
        .check(req.headers(), req.uri().query())
        .and_then(|(token, who)| st.limit.check(&token).map(|()| (token, who)));
    let (token, who) = match checked {
        Ok(checked) => checked,
        Err(e) => return e.into_response(),
    };
    let mut req = match who {
        Principal::Admin => req,
        Principal::Library { library, access } => {
            match authorize(&st, library, access, req).await {
                Ok(req) => req,
                Err(e) => return e.into_response(),
            }
        }
    };
    req.extensions_mut().insert(who);
    req.extensions_mut()
        .insert(limit::TokenKey(*token.as_bytes()));
    next.run(req).await
}

/// What a library token may reach: the content of its own library (only `GET`/`HEAD` if it is
/// read-only), the libraries list (filtered to its library), and nothing of `/admin` or of
/// token management. Content named by id is looked up: another library's content is 403.
/// Unknown content passes through, so its handler's 404 is the answer.
async fn authorize(
    st: &AppState,
    library: LibraryId,
    access: Access,
    req: Request,
) -> Result<Request, ApiError> {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    if route.starts_with("/admin") || route.contains("/tokens") {
        return Err(ApiError::forbidden("this route needs the admin token"));
    }
    let library_route = route == "/qlibs" || route == "/qlibs/{lib}";
    if !reading && (access == Access::Read || library_route) {
        return Err(ApiError::forbidden(match access {
            Access::Read => "this token is read-only",
            Access::Write => "only the admin token creates and deletes libraries",
        }));
    }
    let (mut parts, body) = req.into_parts();
    let params: Params = match Path::<Params>::from_request_parts(&mut parts, st).await {
        Ok(Path(p)) => p,
        // No route matched, or its parameters do not decode: the handler answers that.
        Err(_) => Params::new(),
    };
    if let Some(lib) = params.get("lib") {
        let lib: LibraryId = lib.parse()?;
        if lib != library {
            return Err(ApiError::forbidden(format!(
                "this token is for library {library}, not {lib}"
            )));
        }
    }
    if let Some(id) = params.get("id") {
        let q: Qhit = id.parse()?;
        let found = match st.engine.known_library(&q) {
            Some(library) => Some(library),
            None => {
                // Only content that does not exist passes unchecked (its handler answers 404):
                // any other failure to find its library (a damaged record, a read error) is
                // that failure, never a pass into another library's content.
                st.engine
                    .run(
                        move |e| match e.remember_info(&q).or_else(|_| content_lib(e, &q)) {
                            Ok(i) => Ok(Some(i.library)),
                            Err(err) if err.is(cairn_core::ErrorKind::NotFound) => Ok(None),
                            Err(err) => Err(err),
                        },
                    )
                    .await?
            }
        };
        if let Some(theirs) = found.filter(|&l| l != library) {
            return Err(ApiError::forbidden(format!(
                "{id} is in library {theirs}, not in this token's library {library}"
            )));
        }
    }
    Ok(Request::from_parts(parts, body))
}

/// The library a request is confined to (`None` for the admin token).
pub(crate) fn scope_of(who: Option<&Principal>) -> Option<LibraryId> {
    match who {
        Some(Principal::Library { library, .. }) => Some(*library),
        _ => None,
    }
}

/// The engine's settings from the server's: what `serve` opens the store with, and what the
/// offline commands (`fsck`, `gc`, `stats` with `--data`) open it with too, so that gc keeps the
/// same free-space reserve and pack size as the server.
pub fn engine_config(cfg: &ServerConfig) -> EngineConfig {
    let mut ecfg = EngineConfig::new(&cfg.data);
    ecfg.plan.part_size = cfg.part_size;
    ecfg.store.pack_target_size = cfg.pack_size;
    ecfg.store.allow_missing_packs = cfg.allow_missing_packs;
    ecfg.store.min_free = cfg.min_free_space;
    ecfg.store.direct_writes = cfg.pack_writes == "direct";
    ecfg.commit_every = cfg.commit_every;
    ecfg.idle_timeout = std::time::Duration::from_secs(cfg.idle_timeout_secs.max(1));
    ecfg
}

/// Opens the engine and the token for `cfg`; returns a newly generated token to print once.
pub fn open(cfg: &ServerConfig) -> Result<(AppState, Option<String>), String> {
    let engine = Engine::open(engine_config(cfg))
        .map_err(|e| format!("open {}: {e}", cfg.data.display()))?;
    let env_token = std::env::var("CAIRN_TOKEN").ok();
    let (auth, generated) = Auth::load_or_create(&cfg.data, env_token.as_deref())
        .map_err(|e| format!("admin token: {e}"))?;
    Ok((
        AppState {
            engine: Arc::new(engine),
            auth,
            limit: limit::RateLimit::new(cfg.rate_limit, cfg.rate_burst),
            upload_slots: limit::UploadSlots::new(cfg.max_uploads_per_token),
            upload_wait: std::time::Duration::from_secs(cfg.idle_timeout_secs.max(1)),
            public_url: cfg.public_url.as_deref().map(Arc::from),
            sandbox_pages: cfg.sandbox_pages,
        },
        generated,
    ))
}

/// Largest per-connection read buffer (request headers must fit in it). Uploads read the
/// socket in pieces of up to this size: 256 KiB took about 7% off the server's ingest CPU
/// against 64 KiB (fewer receive calls, ACKs and frames; interleaved runs), for at most 192 KiB
/// more per connection that is actually uploading (the buffer only grows when reads fill it).
const READ_BUF_MAX: usize = 256 << 10;

/// Accepts connections until `shutdown`, then waits for open ones to finish (at most 30 s).
///
/// hyper-util directly rather than `axum::serve`, for what a public server needs: a deadline for
/// reading request headers (a slowloris client cannot hold a connection forever), a cap on open
/// connections (more are closed at once), and TCP_NODELAY (without it Nagle's algorithm and
/// delayed ACKs stall small trailing writes by ~40 ms, seen on Range GETs). Each stream is
/// wrapped so that the requests hyper refuses itself still get a JSON error (`wire.rs`).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    cfg: &ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    // HTTP/1.1 only. Cleartext HTTP/2 (h2c) is not something browsers or the Files API
    // clients speak, and its flow control lets a client pause a response without filling the
    // socket, which no deadline here could see (paused streams held the shared read budget).
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        // Each connection's read buffer grows up to this and keeps it while the connection
        // lives: hyper's default (~400 KiB) made ~100 MiB across the soak's connections
        // (before upload frames were kept by the chunker instead of copied).
        .max_buf_size(READ_BUF_MAX)
        .max_headers(limit::HYPER_MAX_HEADER_FIELDS)
        // Without it, hyper ends a connection the moment a read finds the client gone, and
        // drops the request being handled: an upload whose whole body had arrived before the
        // client closed was then cut off before its commit, while the same body one byte short
        // was kept (its handler sees the body fail and commits what arrived). With it, the
        // handler finishes (the body is committed) and only the reply is lost, and a client
        // that half-closes after its body gets its reply.
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(
            cfg.header_timeout_secs.max(1),
        ));
    let first_byte = std::time::Duration::from_secs(cfg.header_timeout_secs.max(1));
    let write_idle = std::time::Duration::from_secs(cfg.idle_timeout_secs.max(1));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(deadline::NOTSENT_LOWAT);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let io = deadline::Deadlines::new(wire::ErrorBodies::new(stream), first_byte, write_idle);
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let span = tracing::info_span!("conn", %peer);
        tokio::spawn(async move {
            if let Err(e) = tracing::Instrument::instrument(conn, span).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
            drop(slot);
        });
    }
    // Stop accepting now: a listener kept open through the grace period would queue new
    // clients in its backlog, unanswered, until the process exits (QA: 11–29 s hangs, then a
    // reset). Closed, they are refused at once and can go elsewhere or retry.
    drop(listener);
    if tokio::time::timeout(std::time::Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 30 s; stopping anyway");
    }
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish (their uploads commit)
/// and flushes the index.
pub async fn serve(
    cfg: ServerConfig,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let socket = bind(&cfg).await?;
    serve_on(socket, cfg, state, shutdown).await
}

/// A socket bound to `cfg.listen`, not yet listening. `cairn serve` binds it before it opens the
/// data dir, so that a `listen` it cannot use (malformed, or its port taken) fails before
/// anything is created, and listens only once the store is open: meanwhile (recovery can take a
/// while) clients are refused rather than queued where nothing answers them.
pub async fn bind(cfg: &ServerConfig) -> Result<tokio::net::TcpSocket, String> {
    let fail = |e: std::io::Error| format!("listen on {}: {e}", cfg.listen);
    let addr = tokio::net::lookup_host(&cfg.listen)
        .await
        .map_err(fail)?
        .next()
        .ok_or_else(|| format!("listen on {}: no address", cfg.listen))?;
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(fail)?;
    // As `TcpListener::bind` does: a restarted server can bind while old connections linger.
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    Ok(socket)
}

/// [`serve`] on a socket already bound ([`bind`]).
pub async fn serve_on(
    socket: tokio::net::TcpSocket,
    cfg: ServerConfig,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let engine = state.engine.clone();
    let app = router(state, &cfg)?;
    let listener = socket
        .listen(1024)
        .map_err(|e| format!("listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, data = %cfg.data.display(), "cairn serving");
    // Dropped if stderr cannot take it (a full log disk must not stop the start).
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "cairn: serving http://{addr}/ from {}",
        cfg.data.display()
    );
    accept_loop(listener, app, &cfg, shutdown).await;
    // Uploads still receiving after the grace period commit what arrived before the runtime,
    // which would cancel their tasks, goes away.
    engine
        .stop_uploads(std::time::Duration::from_secs(10))
        .await;
    // Only saves the next start replaying the log: everything acknowledged is in the log
    // already. So a flush the disk has no room for (it is full) is not a failed stop.
    if let Err(e) = engine.store().flush() {
        tracing::warn!(error = %e, "the index was not flushed at stop; the next start replays its log");
    }
    tracing::info!("cairn stopped");
    Ok(())
}
