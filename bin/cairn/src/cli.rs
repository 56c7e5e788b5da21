//! The user commands: thin wrappers over `cairn-client` that print results (text, or JSON with
//! `--json`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use cairn_client::{Client, ClientError, UploadOptions};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};

/// The client's config file: flags and `CAIRN_*` variables override it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub server: Option<String>,
    pub token: Option<String>,
    /// PEM file of extra CA certificates for an `https://` server.
    pub cacert: Option<PathBuf>,
}

impl ClientConfig {
    /// Reads `path`, or the default location if it exists (a missing default is no error).
    pub fn load(path: Option<&std::path::Path>) -> Result<ClientConfig> {
        let default = || {
            std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
                .map(|d| d.join("cairn/config.toml"))
        };
        let (file, required) = match path {
            Some(p) => (Some(p.to_path_buf()), true),
            None => (default(), false),
        };
        let Some(file) = file else {
            return Ok(ClientConfig::default());
        };
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                // The parser's message quotes the line it stopped at, which may hold the token:
                // say where and what only, never the line (review: it went to cron logs).
                let mut cfg: ClientConfig = toml::from_str(&text).map_err(|e| {
                    let line = e
                        .span()
                        .map(|at| text[..at.start.min(text.len())].lines().count().max(1));
                    let at = line.map_or(String::new(), |n| format!(" line {n}:"));
                    anyhow::anyhow!("{}:{at} {}", file.display(), e.message())
                })?;
                // A relative `cacert` is relative to the config file, not to where cairn runs.
                if let (Some(ca), Some(dir)) = (&cfg.cacert, file.parent()) {
                    cfg.cacert = Some(dir.join(ca));
                }
                Ok(cfg)
            }
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(ClientConfig::default())
            }
            Err(e) => Err(anyhow!("{}: {e}", file.display())),
        }
    }
}

pub struct Ctx {
    pub client: Client,
    pub json: bool,
}

impl Ctx {
    /// Prints `v` as JSON with `--json`, else the text `text(v)` gives.
    pub fn print(&self, v: &Value, text: impl FnOnce(&Value) -> String) {
        let out = match self.json {
            true => v.to_string(),
            false => text(v),
        };
        if !out.is_empty() {
            stdout_line(&out);
        }
    }
}

/// Writes a line to stdout. Output cut off by its reader (`cairn ls | head`) ends the command
/// quietly, as it does for `cat`; any other failure to write is reported (exit 1).
pub fn stdout_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("cairn: writing to stdout: {e}");
        std::process::exit(1);
    }
}

#[derive(Subcommand)]
pub enum LibCmd {
    /// Create a library; prints its id.
    Create { name: String },
    /// List libraries.
    Ls,
    /// A library's name, creation time and number of objects.
    Show {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        library: String,
    },
    /// Delete an empty library and revoke its tokens (exit 4 while it holds objects).
    Rm {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        library: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make a token confined to one library; prints the token (shown only this once).
    Create {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        library: String,
        /// Only GET and HEAD: list, read and download, never change.
        #[arg(long)]
        read_only: bool,
    },
    /// List a library's tokens (ids and access, never the secrets).
    Ls {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        library: String,
    },
    /// Revoke a token at once.
    Rm {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        library: String,
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
    },
}

#[derive(Subcommand)]
pub enum ObjectCmd {
    /// Create an object in a library; prints its id.
    Create {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        library: String,
    },
    /// List a library's objects with their head version.
    Ls {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        library: String,
    },
    /// Delete an object (all versions), a draft (write token) or one version.
    Rm {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        /// Where `upload` keeps its resume records: a record of the discarded draft is removed.
        #[arg(long, env = "CAIRN_STATE_DIR")]
        state_dir: Option<String>,
    },
}

#[derive(Args)]
pub struct UploadArgs {
    /// Object id (iq__…).
    #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
    object: String,
    /// Files and directories to upload.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Directory in the object to upload into.
    #[arg(long, default_value = "")]
    dest: String,
    /// Upload jobs sent at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Commit message (stored as `commit.message` in the version's metadata).
    #[arg(long)]
    message: Option<String>,
    /// Leave the draft open instead of finalizing (prints the write token).
    #[arg(long)]
    no_finalize: bool,
    /// Mirror the local tree: also delete what each uploaded directory's place in the object
    /// holds that the local directory no longer has (as `rsync --delete`; other paths of the
    /// object are left alone).
    #[arg(long)]
    delete: bool,
    /// Directory for resume records (default: $XDG_STATE_HOME/cairn or ~/.local/state/cairn).
    // A string, not a path: an empty `CAIRN_STATE_DIR=` means "not set" (see `Cli::cacert`).
    #[arg(long, env = "CAIRN_STATE_DIR")]
    state_dir: Option<String>,
}

#[derive(Args)]
pub struct GetArgs {
    /// `<object|version>:<path>`.
    target: String,
    /// Output file (default: stdout). Written through `FILE.<etag>.cairn-part`, renamed onto
    /// FILE once whole and checked; an interrupted get resumes from that partial file.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Only bytes A through B (inclusive), e.g. `0-1048575`, or from A to the end: `A-`.
    #[arg(long, value_parser = parse_range)]
    range: Option<(u64, Option<u64>)>,
}

/// `A-B` (inclusive) or `A-` as `(start, end exclusive)`.
fn parse_range(r: &str) -> std::result::Result<(u64, Option<u64>), String> {
    let bad = || format!("{r:?} is not A-B or A- (byte offsets, B inclusive)");
    let (a, b) = r.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    match b.trim() {
        "" => Ok((a, None)),
        b => {
            let b: u64 = b.parse().map_err(|_| bad())?;
            if b < a {
                return Err(format!("{r:?}: B is before A"));
            }
            Ok((a, Some(b.checked_add(1).ok_or_else(bad)?)))
        }
    }
}

pub async fn lib(ctx: &Ctx, cmd: LibCmd) -> Result<()> {
    match cmd {
        LibCmd::Create { name } => {
            let v = ctx.client.create_library(&name).await?;
            ctx.print(&v, |v| v["id"].as_str().unwrap_or_default().to_string());
        }
        LibCmd::Ls => {
            let v = ctx.client.libraries().await?;
            ctx.print(&v, |v| {
                lines(&v["libraries"], |l| {
                    format!("{}  {}", s(&l["id"]), s(&l["name"]))
                })
            });
        }
        LibCmd::Show { library } => {
            let v = ctx.client.library(&library).await?;
            ctx.print(&v, |v| {
                format!(
                    "{}  {}  {} object(s)",
                    s(&v["id"]),
                    s(&v["name"]),
                    v["objects"]
                )
            });
        }
        LibCmd::Rm { library } => {
            let v = ctx.client.delete_library(&library).await?;
            ctx.print(&v, |v| format!("{} token(s) revoked", v["tokens_revoked"]));
        }
    }
    Ok(())
}

pub async fn token(ctx: &Ctx, cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create { library, read_only } => {
            let v = ctx.client.create_token(&library, read_only).await?;
            ctx.print(&v, |v| s(&v["token"]).to_string());
        }
        TokenCmd::Ls { library } => {
            let v = ctx.client.tokens(&library).await?;
            ctx.print(&v, |v| {
                lines(&v["tokens"], |t| {
                    format!(
                        "{}  {}  created {}",
                        s(&t["id"]),
                        s(&t["access"]),
                        t["created"]
                    )
                })
            });
        }
        TokenCmd::Rm { library, id } => {
            let v = ctx.client.revoke_token(&library, &id).await?;
            ctx.print(&v, |_| format!("revoked {id}"));
        }
    }
    Ok(())
}

pub async fn object(ctx: &Ctx, cmd: ObjectCmd) -> Result<()> {
    match cmd {
        ObjectCmd::Create { library } => {
            let v = ctx.client.create_object(&library).await?;
            // The object comes with an empty draft; uploads open their own.
            if let Some(wt) = v["write_token"].as_str() {
                ctx.client.delete(wt).await?;
            }
            ctx.print(&v, |v| s(&v["id"]).to_string());
        }
        ObjectCmd::Ls { library } => {
            let v = ctx.client.objects(&library).await?;
            ctx.print(&v, |v| {
                lines(&v["contents"], |o| {
                    format!("{}  {}", s(&o["id"]), s(&o["versions"][0]["hash"]))
                })
            });
        }
        ObjectCmd::Rm { id, state_dir } => {
            ctx.client.delete(&id).await?;
            if id.starts_with("tqw__") {
                forget_draft(&ctx.client, state_dir, &id);
            }
            ctx.print(&json!({"deleted": id}), |_| String::new());
        }
    }
    Ok(())
}

pub async fn upload(ctx: &Ctx, a: UploadArgs) -> Result<()> {
    let opts = UploadOptions {
        object: a.object,
        paths: a.paths,
        dest: a.dest,
        parallel: a.parallel,
        finalize: !a.no_finalize,
        delete: a.delete,
        message: a.message,
        state_dir: a.state_dir.filter(|d| !d.is_empty()).map(PathBuf::from),
    };
    let started = std::time::Instant::now();
    let total: u64 = opts.paths.iter().map(|p| tree_bytes(p)).sum();
    let bars = (!ctx.json && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then(|| Bars::new(total));
    let progress: cairn_client::Progress = match &bars {
        Some(b) => {
            let b = b.clone();
            Arc::new(move |path: &str, size: u64, n: i64| b.advance(path, size, n))
        }
        None => Arc::new(|_: &str, _: u64, _: i64| {}),
    };
    let out = cairn_client::upload_tree(&ctx.client, &opts, progress).await?;
    if let Some(b) = bars {
        b.done();
    }
    let secs = started.elapsed().as_secs_f64();
    let v = serde_json::to_value(&out)?;
    // What was skipped, deleted or discarded goes to stderr also with --json (where stdout is
    // the JSON, which holds it too): a script's log then shows it, and the exit code 6 message
    // that refers to it is not left pointing at nothing (QA).
    {
        if let Some(wt) = &out.discarded_draft {
            eprintln!("discarded draft {wt} of an earlier run (the local files changed since)");
        }
        for l in &out.skipped_symlinks {
            eprintln!("skipped symbolic link {l} (links are not followed)");
        }
        for f in &out.skipped_special_files {
            let kind = f.kind.replace('_', " ");
            eprintln!(
                "skipped {kind} {} (only regular files and directories are uploaded)",
                f.path
            );
        }
        for n in &out.skipped_invalid_names {
            eprintln!("skipped {:?}: {} (not uploaded)", n.path, n.reason);
        }
        for p in &out.deleted {
            eprintln!("deleted {p} (gone locally)");
        }
    }
    ctx.print(&v, |_| {
        let what = out
            .version
            .clone()
            .unwrap_or_else(|| out.write_token.clone());
        // Only the id on stdout, so `V=$(cairn upload …)` holds the version hash (or, with
        // --no-finalize, the write token); the summary goes to stderr.
        eprintln!(
            "{} files, {} bytes; sent {} bytes in {} upload jobs{} ({:.1} MiB/s){}",
            out.files,
            out.bytes,
            out.bytes_sent,
            out.upload_jobs,
            if out.resumed { ", resumed" } else { "" },
            out.bytes_sent as f64 / secs.max(1e-9) / 1048576.0,
            if out.version.is_none() {
                "; draft not finalized"
            } else {
                ""
            },
        );
        what
    });
    match out.skipped_invalid_names.len() {
        0 => Ok(()),
        n => Err(Partial(n).into()),
    }
}

/// An upload that went through without some files whose names the server cannot store: the
/// version is published (or the draft left open), yet it is not what was asked for, so the
/// exit code says so (6), as rsync's 23 "partial transfer" does.
#[derive(Debug)]
pub struct Partial(pub usize);

impl std::fmt::Display for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partial upload: {} path(s) skipped, as the server cannot store their names (listed \
             above); rename them and upload again",
            self.0
        )
    }
}

impl std::error::Error for Partial {}

/// Splits `id:path` (the path may be empty or start with `/`).
/// `ID[:PATH]` as (id, path without leading slashes); an empty id is a usage error (exit 2),
/// not a request for `/q//…`.
fn split_target(t: &str) -> Result<(&str, &str), ClientError> {
    let (id, path) = match t.split_once(':') {
        Some((id, path)) => (id, path.trim_start_matches('/')),
        None => (t, ""),
    };
    if id.is_empty() {
        return Err(ClientError::Invalid(format!(
            "{t:?} names no object or version: give <object|version>[:<path>]"
        )));
    }
    Ok((id, path))
}

/// [`split_target`] for commands on one file: the path is required.
fn file_target(t: &str) -> Result<(&str, &str), ClientError> {
    match split_target(t)? {
        (_, "") => Err(ClientError::Invalid(format!(
            "{t:?} names no file: give <object|version>:<path>"
        ))),
        target => Ok(target),
    }
}

pub async fn ls(ctx: &Ctx, target: &str) -> Result<()> {
    let (id, dir) = split_target(target)?;
    // The same rules as a download's path: `..` names no directory of the tree. Leading and
    // trailing slashes name the same directory (QA: `dir/` printed `dir//a.txt`).
    cairn_core::FilePath::parse_dir(dir)
        .map_err(|e| ClientError::Invalid(format!("{dir:?}: {e}")))?;
    let dir = dir.trim_matches('/');
    let tree = ctx.client.files(id).await?;
    let mut node = &tree;
    for seg in dir.split('/').filter(|s| !s.is_empty()) {
        node = node.get(seg).ok_or_else(|| {
            anyhow!(cairn_client::ClientError::Api {
                status: 404,
                retry_after: None,
                kind: "not_found".into(),
                reason: format!("{dir} not found")
            })
        })?;
    }
    let mut rows = Vec::new();
    match &node["."] {
        // A file lists itself, as `ls FILE` does (QA: it listed nothing, exit 0).
        dot if !dir.is_empty() && dot["type"] != "directory" => rows.push(TreeEntry {
            path: dir.to_string(),
            size: dot["size"].as_u64().unwrap_or(0),
            directory: false,
            hash: dot["hash"].as_str().map(str::to_string),
        }),
        _ => walk_tree(node, dir, &mut rows),
    }
    let v = json!(rows
        .iter()
        .map(|e| json!({"path": e.path, "size": e.size, "directory": e.directory}))
        .collect::<Vec<_>>());
    ctx.print(&v, |_| {
        let line = |e: &TreeEntry| match e.directory {
            true => format!("{:>14}  {}/", "-", e.path),
            false => format!("{:>14}  {}", e.size, e.path),
        };
        rows.iter().map(line).collect::<Vec<_>>().join("\n")
    });
    Ok(())
}

/// One entry of a rendered `files` tree.
pub struct TreeEntry {
    pub path: String,
    pub size: u64,
    pub directory: bool,
    /// The file's blake3, when the server knows it.
    pub hash: Option<String>,
}

/// Every entry under `node` (a `files` tree or subtree), depth first, paths prefixed by `at`.
pub fn walk_tree(node: &Value, at: &str, out: &mut Vec<TreeEntry>) {
    let Some(map) = node.as_object() else { return };
    for (name, child) in map.iter().filter(|(k, _)| *k != ".") {
        let path = if at.is_empty() {
            name.clone()
        } else {
            format!("{at}/{name}")
        };
        let dot = &child["."];
        let directory = dot["type"] == "directory";
        let size = dot["size"].as_u64().unwrap_or(0);
        out.push(TreeEntry {
            path: path.clone(),
            size,
            directory,
            hash: dot["hash"].as_str().map(str::to_string),
        });
        if directory {
            walk_tree(child, &path, out);
        }
    }
}

pub async fn get(ctx: &Ctx, a: GetArgs) -> Result<()> {
    let (id, path) = file_target(&a.target)?;
    let range = a.range;
    match &a.output {
        None => {
            let resp = ctx.client.download(id, path, range).await?;
            copy_body(resp, &mut std::io::stdout().lock()).await?;
        }
        Some(out) => download_to(ctx, id, path, range, out).await?,
    }
    Ok(())
}

/// Downloads into `out`. A `--range` is written to `out` directly. A whole file goes to a
/// partial file beside it, `<out>.<ETag prefix>.cairn-part`, which is renamed onto `out` only
/// once complete and checked against the file's blake3 (its ETag): `out` is never left
/// half-written, or mixed from two versions of the file. An interrupted download resumes from
/// the partial file of the same ETag, asking the rest with `If-Range`, so a file that changed
/// in between comes whole instead.
async fn download_to(
    ctx: &Ctx,
    id: &str,
    path: &str,
    range: Option<(u64, Option<u64>)>,
    out: &PathBuf,
) -> Result<()> {
    // Into a directory, as `cp` does: the file keeps its name there (QA 33: the whole file was
    // downloaded, then the rename onto the directory failed, every run).
    let into_dir;
    let out = match std::fs::metadata(out).is_ok_and(|m| m.is_dir()) {
        true => {
            let name = path.rsplit('/').find(|n| !n.is_empty()).unwrap_or_default();
            if name.is_empty() {
                bail!(
                    "{}: a directory, and {path:?} names no file to put in it",
                    out.display()
                );
            }
            into_dir = out.join(name);
            &into_dir
        }
        false => out,
    };
    // Refused before anything is fetched: what the download could never be renamed onto (QA
    // 34: the whole file came down first, and its partial file stayed).
    if std::fs::metadata(out).is_ok_and(|m| m.is_dir()) {
        bail!("{}: a directory is in the way", out.display());
    }
    if out.as_os_str().as_encoded_bytes().ends_with(b"/") {
        bail!("{}: no such directory", out.display());
    }
    let shown = out.to_string_lossy();
    // A device, a FIFO (`-o /dev/null`, `-o >(…)`): written into as it is, never replaced by
    // a renamed partial file (review: as root, that put a regular file in place of /dev/null).
    let special = std::fs::metadata(out).is_ok_and(|m| !m.is_file() && !m.is_dir());
    if range.is_some() || special {
        let resp = ctx.client.download(id, path, range).await?;
        let mut file = match special {
            true => std::fs::OpenOptions::new().write(true).open(out),
            false => std::fs::File::create(out),
        }
        .with_context(|| out.display().to_string())?;
        copy_body(resp, &mut file).await?;
        if !special {
            file.sync_all()?;
        }
        ctx.print(&json!({"path": path, "output": shown}), |_| String::new());
        return Ok(());
    }
    // A HEAD's error has no body: on any error the GET below tells the server's reason.
    let etag = match ctx.client.file_etag(id, path).await {
        Ok(tag) => tag.unwrap_or_default(),
        Err(cairn_client::ClientError::Api { .. }) => String::new(),
        Err(e) => return Err(e.into()),
    };
    // Without an ETag (the HEAD failed), the GET is made before any partial file: its error
    // is the answer, and nothing is left behind (review 34: an empty partial file stayed, and
    // in a directory one cannot write to, a 404 became "permission denied").
    let early = match etag.is_empty() {
        true => Some(ctx.client.download_if(id, path, None, None).await?),
        false => None,
    };
    let part = part_file(out, &etag)?;
    let (mut file, made) = lock_part(&part)?;
    // Without an ETag nothing says which partial files are stale. Held, ours is not among them.
    if !etag.is_empty() {
        drop_other_parts(out, &part);
    }
    let have = match etag.is_empty() {
        true => 0,
        false => file.metadata().map(|m| m.len()).unwrap_or(0),
    };
    let resume = (have > 0).then_some((have, None));
    let resp = match early {
        Some(resp) => Ok(resp),
        None => {
            ctx.client
                .download_if(id, path, resume, resume.and(Some(etag.as_str())))
                .await
        }
    };
    let fetched = async {
        let (resumed_at, etag) = match resp {
            // The partial file is already whole.
            Err(cairn_client::ClientError::Api { status: 416, .. }) if have > 0 => (have, etag),
            Err(e) => return Err(anyhow::Error::from(e)),
            Ok(resp) => {
                // 206: the rest of the same file; 200: all of it (nothing to resume, or it
                // changed).
                let resumed = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
                let now = resp
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map_or(etag, |s| s.trim_matches('"').to_string());
                use std::io::Seek;
                let at = if resumed { have } else { 0 };
                file.set_len(at)?;
                file.seek(std::io::SeekFrom::Start(at))?;
                copy_body(resp, &mut file).await?;
                file.sync_all()?;
                (at, now)
            }
        };
        Ok((resumed_at, etag))
    }
    .await;
    let (resumed_at, etag) = match fetched {
        Ok(done) => done,
        Err(e) => {
            // A partial file this run made and wrote nothing into is no use to anyone.
            if made && file.metadata().is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(&part);
            }
            return Err(e);
        }
    };
    if let Err(e) = check_hash(&part, Some(&etag)) {
        // Bytes that do not add up to the file are no use to a later resume either.
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, out).with_context(|| out.display().to_string())?;
    ctx.print(
        &json!({"path": path, "output": shown, "resumed_at": resumed_at}),
        |_| String::new(),
    );
    Ok(())
}

/// Opens the partial file `part` (made if absent) and takes its exclusive lock, held until the
/// download ends (and across the rename onto the output): a second `get` into the same output
/// is a `conflict` (exit 4) instead of writing into the same partial file (QA 33: both runs
/// failed, each with the other's bytes). A file renamed away between the open and the lock is
/// not ours any more: open again.
fn lock_part(part: &Path) -> Result<(std::fs::File, bool)> {
    let made = !part.exists();
    match cairn_client::lockfile::lock_exclusive(part)
        .with_context(|| part.display().to_string())?
    {
        Some(file) => Ok((file, made)),
        None => Err(ClientError::Api {
            status: 409,
            retry_after: None,
            kind: "conflict".into(),
            reason: format!(
                "another `cairn get` is writing {} (it holds {}); wait for it to finish",
                part.with_extension("").with_extension("").display(),
                part.display()
            ),
        }
        .into()),
    }
}

/// `<out>.<first 16 characters of the ETag>.cairn-part`, beside `out`.
fn part_file(out: &Path, etag: &str) -> Result<PathBuf> {
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a file name", out.display()))?;
    let tag: String = etag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    let mut part = name.to_os_string();
    part.push(format!(".{tag}.cairn-part"));
    Ok(out.with_file_name(part))
}

/// Removes partial files of `out` left by downloads of another version of the file.
fn drop_other_parts(out: &Path, keep: &Path) {
    let (Some(dir), Some(name)) = (out.parent(), out.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let keep = keep.file_name().map(|n| n.to_string_lossy().to_string());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        // By name: `e.path()` is `./x` where `keep` may be `x`. Only `out`'s own partial files,
        // `<out>.<tag>.cairn-part`, not another download's (`<out>.json.<tag>.cairn-part`).
        let n = e.file_name().to_string_lossy().to_string();
        let tag = n
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".cairn-part"));
        let ours = tag.is_some_and(|t| t.bytes().all(|b| b.is_ascii_alphanumeric()));
        if ours && Some(&n) != keep.as_ref() {
            // Not one another `get` (of another version) is writing: it holds its lock.
            let Ok(f) = std::fs::File::open(e.path()) else {
                continue;
            };
            let free = rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive);
            if free.is_ok() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// When the ETag is a blake3 (64 hex digits), the local file must hash to it.
fn check_hash(out: &PathBuf, etag: Option<&str>) -> Result<()> {
    let Some(want) = etag.filter(|e| e.len() == 64 && e.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return Ok(());
    };
    let got = blake3::Hasher::new()
        .update_reader(std::fs::File::open(out)?)?
        .finalize()
        .to_hex()
        .to_string();
    if got != want {
        bail!(
            "{}: downloaded bytes do not match the file's blake3 ({got} != {want})",
            out.display()
        );
    }
    Ok(())
}

async fn copy_body(resp: reqwest::Response, w: &mut impl Write) -> Result<()> {
    let mut stream = resp.bytes_stream();
    while let Some(piece) = stream.next().await {
        w.write_all(&piece.context("download interrupted")?)?;
    }
    w.flush()?;
    Ok(())
}

pub async fn cat(ctx: &Ctx, target: &str) -> Result<()> {
    let (id, path) = file_target(target)?;
    let resp = ctx.client.download(id, path, None).await?;
    copy_body(resp, &mut std::io::stdout().lock()).await
}

pub async fn versions(ctx: &Ctx, object: &str) -> Result<()> {
    let v = ctx.client.versions(object).await?;
    ctx.print(&v, |v| lines(&v["versions"], |x| s(&x["hash"]).to_string()));
    Ok(())
}

/// Drops `upload`'s resume records of draft `wt`, now finalized or discarded (`state_dir` as
/// `upload --state-dir`; empty is unset).
fn forget_draft(client: &cairn_client::Client, state_dir: Option<String>, wt: &str) {
    let dir = state_dir.filter(|d| !d.is_empty()).map(PathBuf::from);
    cairn_client::forget_draft(dir.as_deref(), client, wt);
}

/// Publishes the draft on top of the version it was opened from (`If-Match` on its `base`), or
/// whatever the head is with `force`; then drops `upload`'s records of it.
pub async fn finalize(ctx: &Ctx, wt: &str, force: bool, state_dir: Option<String>) -> Result<()> {
    let hash = if force {
        ctx.client.finalize(wt).await?
    } else {
        let base = ctx.client.draft_base(wt).await?;
        match ctx.client.finalize_on(wt, base.as_deref()).await {
            Err(ClientError::Api {
                status: 412,
                kind,
                reason,
                ..
            }) => {
                return Err(ClientError::Api {
                    status: 412,
                    retry_after: None,
                    kind,
                    reason: format!(
                        "{reason}. Nothing was published: a version was published after this \
                         draft was opened from {}. `cairn finalize {wt} --force` publishes it \
                         anyway, replacing that version's files in the new head.",
                        base.as_deref().unwrap_or("an object with no version")
                    ),
                }
                .into())
            }
            r => r?,
        }
    };
    forget_draft(&ctx.client, state_dir, wt);
    ctx.print(&json!({"hash": hash}), |_| hash.clone());
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn lines(v: &Value, f: impl Fn(&Value) -> String) -> String {
    v.as_array()
        .map(|a| a.iter().map(f).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// Progress bars on a terminal: one for all bytes (rate, ETA), one per file being sent.
#[derive(Clone)]
struct Bars {
    multi: indicatif::MultiProgress,
    total: indicatif::ProgressBar,
    files: Arc<std::sync::Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>>,
}

impl Bars {
    fn new(bytes: u64) -> Bars {
        let multi = indicatif::MultiProgress::new();
        let total = multi.add(indicatif::ProgressBar::new(bytes));
        total.set_style(
            indicatif::ProgressStyle::with_template(
                "{bytes:>10}/{total_bytes:<10} {bar:30} {bytes_per_sec:>12}  ETA {eta}",
            )
            .expect("template"),
        );
        Bars {
            multi,
            total,
            files: Default::default(),
        }
    }

    /// `n` bytes of `path` sent; negative: a request the server refused unread is taken back.
    fn advance(&self, path: &str, size: u64, n: i64) {
        let (up, back) = (n.max(0) as u64, n.min(0).unsigned_abs());
        self.total.inc(up);
        self.total.dec(back);
        let mut files = self.files.lock().expect("bars");
        let bar = files.entry(path.to_string()).or_insert_with(|| {
            let b = self.multi.add(indicatif::ProgressBar::new(size));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "  {wide_msg} {bytes:>10}/{total_bytes:<10} {bar:30} {eta:>4}",
                )
                .expect("template"),
            );
            b.set_message(path.to_string());
            b
        });
        bar.inc(up);
        bar.dec(back);
        if bar.position() >= size && back == 0 {
            bar.finish_and_clear();
            files.remove(path);
        }
    }

    fn done(self) {
        for b in self.files.lock().expect("bars").values() {
            b.finish_and_clear();
        }
        self.total.finish_and_clear();
    }
}

/// Bytes of the regular files under `p` (for the overall progress bar).
fn tree_bytes(p: &std::path::Path) -> u64 {
    match std::fs::metadata(p) {
        // Links inside are not uploaded (nor followed: a loop would never end).
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_type().is_ok_and(|t| t.is_symlink()))
                    .map(|e| tree_bytes(&e.path()))
                    .sum()
            })
            .unwrap_or(0),
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}
