//! Uploading a tree of local files as one files job: plan on the server, send the upload jobs in
//! parallel straight from disk (positional reads, 1 MiB frames, nothing held whole in memory),
//! resume every job from the server's `skip`, and finalize.
//!
//! A resume record in the user's state directory names the draft and files job before the first
//! byte is sent, so the same command run again after Ctrl-C or `kill -9` continues them: it asks
//! the server what arrived and sends only the rest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{backoff, Client, ClientError, Result};

const FRAME: usize = 1 << 20;
const JOB_ATTEMPTS: u32 = 10;

#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Object id (`iq__…`).
    pub object: String,
    /// Files and directories to upload.
    pub paths: Vec<PathBuf>,
    /// Directory inside the object to put them under ("" for the root).
    pub dest: String,
    pub parallel: usize,
    pub finalize: bool,
    /// Mirror: delete the files and directories under each uploaded directory's place in the
    /// object that have no local counterpart (as `rsync --delete`).
    pub delete: bool,
    /// Commit message stored in the version's metadata (`commit.message`).
    pub message: Option<String>,
    /// Where resume records live (default: `$XDG_STATE_HOME/cairn` or `~/.local/state/cairn`).
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UploadOutcome {
    pub write_token: String,
    pub files_job: String,
    pub version: Option<String>,
    pub files: usize,
    /// Directories created with nothing uploaded under them (empty locally, or holding only
    /// what was skipped).
    pub empty_dirs: usize,
    pub bytes: u64,
    /// Bytes this run put on the wire (less than `bytes` when it resumed).
    pub bytes_sent: u64,
    pub upload_jobs: usize,
    pub resumed: bool,
    /// The draft of an earlier run of the same command that this run could not continue (its
    /// local files changed), discarded before this run opened its own.
    pub discarded_draft: Option<String>,
    /// Paths in the object deleted because they are gone locally (`delete`).
    pub deleted: Vec<String>,
    /// Symbolic links met inside the directories uploaded, not followed (local paths).
    pub skipped_symlinks: Vec<String>,
    /// Files and directories not uploaded because the server cannot store their path (a
    /// backslash, a control character, not UTF-8, too long): the rest is uploaded, and the
    /// CLI exits 6 (a partial upload).
    pub skipped_invalid_names: Vec<SkippedName>,
    /// FIFOs, sockets and devices met, not uploaded (only regular files and directories are).
    pub skipped_special_files: Vec<SkippedSpecial>,
}

/// One local file and where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LocalFile {
    rel: String,
    #[serde(with = "os_path")]
    abs: PathBuf,
    size: u64,
    mtime_ns: i128,
    /// blake3 of the contents, computed while planning: the server links a file it already
    /// holds (same library, hash and size) instead of planning an upload for it.
    blake3: String,
}

/// A local path in a resume record: a JSON string, or its bytes where it is not UTF-8 (review:
/// a folder named in Latin-1 above the files made every record unsavable, after its draft had
/// been opened).
mod os_path {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::PathBuf;

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(p: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
        match p.to_str() {
            Some(t) => Repr::Text(t.to_string()),
            None => Repr::Bytes(p.as_os_str().as_bytes().to_vec()),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Text(t) => PathBuf::from(t),
            Repr::Bytes(b) => PathBuf::from(std::ffi::OsString::from_vec(b)),
        })
    }
}

/// What is needed to continue an interrupted upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResumeRecord {
    server: String,
    object: String,
    write_token: String,
    files_job: String,
    jobs: Vec<String>,
    /// Upload jobs of a later files job of the same draft, with that files job: a run that
    /// found the local files changed continued the draft with a files job of the changes
    /// ([`continue_changed`]). Jobs not named here are of `files_job`.
    #[serde(default)]
    later_jobs: BTreeMap<String, String>,
    files: Vec<LocalFile>,
    #[serde(default)]
    deleted: Vec<String>,
    /// Directories created by their own `add` op (records written before this field existed
    /// created none, so a tree with empty directories does not resume them).
    #[serde(default)]
    empty_dirs: Vec<String>,
    /// The version the draft was opened from, checked at finalize (records written before
    /// this field existed have `base_known: false` and finalize unconditionally).
    #[serde(default)]
    base: Option<String>,
    #[serde(default)]
    base_known: bool,
    /// Set once a `--no-finalize` run finished and printed the write token: the user holds the
    /// draft now (and may have edited it), so a later run never discards it.
    #[serde(default)]
    handed_out: bool,
}

impl ResumeRecord {
    /// The files job upload job `uj` belongs to.
    fn files_job_of(&self, uj: &str) -> &str {
        self.later_jobs.get(uj).unwrap_or(&self.files_job)
    }
}

/// Called as bytes go out: (file path in the object, file size, bytes just sent). A request the
/// server refused unread (429) is taken back: the bytes of it already reported come again,
/// negative, so the sum of all calls is what the server took.
pub type Progress = Arc<dyn Fn(&str, u64, i64) + Send + Sync>;

/// Uploads `opts.paths`; `progress` is called for every frame as it is sent.
pub async fn upload_tree(
    client: &Client,
    opts: &UploadOptions,
    progress: Progress,
) -> Result<UploadOutcome> {
    let local = collect(&opts.paths, &opts.dest)?;
    let skipped_symlinks = local.links.clone();
    let skipped_invalid_names = local.invalid.clone();
    let skipped_special_files = local.special.clone();
    let record_path = record_path(opts, client)?;
    // One run of a command at a time: a second one (a cron job whose last run is still going)
    // would take the first's draft for stale and discard it under it. Held until this returns.
    let _running = lock_record(&record_path)?;
    adopt_legacy_record(opts, client, &local.files, &record_path);
    let mut discarded_draft = None;
    let (record, resumed) = match previous(&record_path, client, &local).await? {
        Previous::Published(r, version) if opts.finalize => {
            let _ = std::fs::remove_file(&record_path);
            return Ok(UploadOutcome {
                write_token: r.write_token.clone(),
                files_job: r.files_job.clone(),
                version: Some(version),
                files: r.files.len(),
                empty_dirs: r.empty_dirs.len(),
                bytes: r.files.iter().map(|f| f.size).sum(),
                bytes_sent: 0,
                upload_jobs: r.jobs.len(),
                resumed: true,
                discarded_draft: None,
                skipped_symlinks,
                skipped_invalid_names,
                skipped_special_files,
                deleted: r.deleted.clone(),
            });
        }
        Previous::Published(..) => (start(client, opts, local, &record_path).await?, false),
        Previous::Resume(r) => (r, true),
        Previous::Nothing => (start(client, opts, local, &record_path).await?, false),
        Previous::Stale(wt) => {
            discard(client, &wt).await;
            discarded_draft = Some(wt);
            (start(client, opts, local, &record_path).await?, false)
        }
        Previous::Changed(r) => {
            let wt = r.write_token.clone();
            match continue_changed(client, r, &local, &record_path).await? {
                Some(r) => (r, true),
                None => {
                    discard(client, &wt).await;
                    discarded_draft = Some(wt);
                    (start(client, opts, local, &record_path).await?, false)
                }
            }
        }
    };
    let sent = Arc::new(AtomicU64::new(0));
    // Looked up for every piece the plan names: a map, not a scan of a list that may hold
    // millions of files.
    let by_path: ByPath = record.files.iter().map(|f| (f.rel.as_str(), f)).collect();
    futures::stream::iter(record.jobs.iter().cloned())
        .map(|uj| {
            let (client, record, by_path, sent, progress) = (
                client.clone(),
                &record,
                &by_path,
                sent.clone(),
                progress.clone(),
            );
            async move { send_job(&client, record, by_path, &uj, sent, progress).await }
        })
        .buffer_unordered(opts.parallel.max(1))
        .try_collect::<()>()
        .await?;
    let mut version = None;
    if opts.finalize {
        if let Some(m) = &opts.message {
            client
                .set_meta(&record.write_token, "commit", &json!({"message": m}))
                .await?;
        }
        let wt = &record.write_token;
        let finalized = match record.base_known {
            true => client.finalize_on(wt, record.base.as_deref()).await,
            false => client.finalize(wt).await,
        };
        version = Some(match finalized {
            Err(ClientError::Api {
                status: 412,
                kind,
                reason,
                ..
            }) => {
                // Someone published since this draft was opened. A new run starts a new draft
                // from the new head; resolving this draft's files first lets the server know
                // them by content, so that run sends none of their bytes again.
                let _ = client.finalize_files(wt).await;
                let _ = std::fs::remove_file(&record_path);
                return Err(ClientError::Api {
                    status: 412,
                    retry_after: None,
                    kind,
                    reason: format!(
                        "{reason}. Nothing was published: the object has a newer version than \
                         this upload's draft was opened from. Run the upload again to publish on \
                         top of it; the draft {wt} is still open (`cairn finalize {wt} --force` \
                         publishes it as it is, replacing the newer version's files; \
                         `cairn object rm {wt}` drops it)."
                    ),
                });
            }
            // The server hashed what arrived and it is not what this run hashed while
            // planning: the file changed in between, unseen by the size and mtime checks (a
            // rewrite of the same size, `cp -p` over it). Nothing is published, and the draft
            // and its record go: a next run whose files hash as planned again (the change
            // undone) would otherwise resume this draft and be refused the same way forever.
            Err(ClientError::Api {
                status: 409,
                kind,
                reason,
                ..
            }) if kind == "bad_digest" => {
                if client.delete(wt).await.is_ok() {
                    let _ = std::fs::remove_file(&record_path);
                }
                let what = match reason.split_once(": the bytes received") {
                    Some((path, _)) => format!(
                        "{path}: changed while it was uploaded (the server received bytes with \
                         another blake3 than this run hashed)"
                    ),
                    None => reason,
                };
                return Err(ClientError::Local(format!(
                    "{what}. Nothing was published; run the command again once the file is \
                     settled"
                )));
            }
            other => other?,
        });
        let _ = std::fs::remove_file(&record_path);
    } else if !record.handed_out {
        // The token is printed now: from here on the draft is the user's.
        let handed = ResumeRecord {
            handed_out: true,
            ..record.clone()
        };
        save_record(&record_path, &handed)?;
    }
    Ok(UploadOutcome {
        write_token: record.write_token.clone(),
        files_job: record.files_job.clone(),
        version,
        files: record.files.len(),
        empty_dirs: record.empty_dirs.len(),
        bytes: record.files.iter().map(|f| f.size).sum(),
        bytes_sent: sent.load(Ordering::Relaxed),
        upload_jobs: record.jobs.len(),
        resumed,
        discarded_draft,
        skipped_symlinks,
        skipped_invalid_names,
        skipped_special_files,
        deleted: record.deleted.clone(),
    })
}

/// What the command line names, walked.
#[derive(Debug, Default)]
struct Local {
    /// Regular files, by their path in the object.
    files: Vec<LocalFile>,
    /// Directories walked, by their path in the object (the uploaded directories included).
    dirs: BTreeSet<String>,
    /// What the command line names, by path in the object: where `delete` looks.
    roots: Vec<String>,
    /// Symbolic links met inside the directories (local paths), not followed.
    links: Vec<String>,
    /// Files and directories whose path the server cannot store, not uploaded.
    invalid: Vec<SkippedName>,
    /// FIFOs, sockets and devices met, not uploaded.
    special: Vec<SkippedSpecial>,
    /// The directories with nothing uploaded under them (see [`Local::leaf_dirs`]).
    empty_dirs: Vec<String>,
    /// The links, FIFOs, sockets and devices by their path in the object: nothing is uploaded
    /// from them, and `delete` leaves what is there alone.
    link_rels: BTreeSet<String>,
}

/// A FIFO, socket or device left out of an upload: only regular files and directories are.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedSpecial {
    /// Local path.
    pub path: String,
    /// `fifo`, `socket`, `char_device` or `block_device`.
    pub kind: &'static str,
}

/// A file or directory left out of an upload because the server cannot store its path.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedName {
    /// Local path.
    pub path: String,
    /// Which rule it breaks, as the server would say.
    pub reason: String,
}

/// Regular files under `paths`, named `dest/<name>` (a directory keeps its own name), and the
/// symbolic links met inside those directories. A link is not followed (as rsync without
/// `-L`): it could lead out of the tree and upload what was never meant to be, or nowhere and
/// stop the upload. A path named on the command line is followed, as the user asked for it.
///
/// A name the server cannot store (a backslash, a control character, not UTF-8, too long) is
/// skipped and reported rather than failing the whole upload, as rsync goes on past a file it
/// cannot send: checked here by the server's own rules, before anything is asked of it. An
/// invalid `dest` is the user's to fix, not something to skip: [`ClientError::Invalid`].
/// Whether `p` names a directory's contents rather than the directory: `.`, `..`, `/`, or a
/// path ending in `/.` (as rsync and `cp -a dir/. to` read it; `Path::file_name` of `dir/.`
/// is `dir`).
fn names_contents(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    p.file_name().is_none() || p.as_os_str().as_bytes().ends_with(b"/.")
}

fn collect(paths: &[PathBuf], dest: &str) -> Result<Local> {
    let dest = cairn_core::FilePath::parse_dir(dest)
        .map_err(|e| ClientError::Invalid(format!("--dest {dest:?}: {e}")))?;
    let mut local = Local::default();
    for p in paths {
        let rel = match p.file_name().filter(|_| !names_contents(p)) {
            // `.`, `dir/.`, `..` or `/`: the directory's contents go to `dest` itself.
            None => dest.as_str().to_string(),
            Some(name) => match child_path(dest.as_str(), name) {
                Ok(rel) => rel,
                Err(reason) => {
                    local.skip_name(p, reason);
                    continue;
                }
            },
        };
        local.roots.push(rel.clone());
        walk(p, &rel, &mut local)?;
    }
    local.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    local.links.sort();
    // In path order, not in the directories' own (arbitrary) order: the same tree reports the
    // same way each time.
    local.invalid.sort_by(|a, b| a.path.cmp(&b.path));
    local.special.sort_by(|a, b| a.path.cmp(&b.path));
    local.empty_dirs = local.leaf_dirs();
    Ok(local)
}

fn join(a: &str, b: &str) -> String {
    match (a.trim_matches('/'), b) {
        ("", b) => b.to_string(),
        (a, "") => a.to_string(),
        (a, b) => format!("{a}/{b}"),
    }
}

/// `name` under `rel` as a path in the object, or why the server could not store it. A name
/// that is not UTF-8 is refused too: any stand-in for its bytes would name another file.
fn child_path(rel: &str, name: &std::ffi::OsStr) -> Result<String, String> {
    let name = name
        .to_str()
        .ok_or_else(|| "the name is not UTF-8, and paths in an object are".to_string())?;
    let path = join(rel, name);
    cairn_core::FilePath::parse(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

impl Local {
    fn skip_name(&mut self, p: &Path, reason: String) {
        self.invalid.push(SkippedName {
            path: p.display().to_string(),
            reason,
        });
    }

    fn skip_special(&mut self, p: &Path, rel: &str, kind: &'static str) {
        self.special.push(SkippedSpecial {
            path: p.display().to_string(),
            kind,
        });
        self.link_rels.insert(rel.to_string());
    }

    /// Directories with nothing uploaded under them: empty, or holding only what was skipped.
    /// Each needs its own `add` op; the others come with the files and directories inside.
    fn leaf_dirs(&self) -> Vec<String> {
        let mut covered = BTreeSet::new();
        let paths = self.files.iter().map(|f| f.rel.as_str());
        for mut p in paths.chain(self.dirs.iter().map(String::as_str)) {
            while let Some((parent, _)) = p.rsplit_once('/') {
                if !covered.insert(parent) {
                    break; // and so are its ancestors
                }
                p = parent;
            }
        }
        let leaf = |d: &&String| !d.is_empty() && !covered.contains(d.as_str());
        self.dirs.iter().filter(leaf).cloned().collect()
    }
}

fn local_err(p: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Local(format!("{}: {e}", p.display()))
}

fn walk(p: &Path, rel: &str, local: &mut Local) -> Result<()> {
    let meta = std::fs::metadata(p).map_err(|e| local_err(p, e))?;
    let t = meta.file_type();
    if t.is_dir() {
        walk_dir(p, rel, local)
    } else if t.is_file() {
        local.files.push(local_file(p, rel, &meta)?);
        Ok(())
    } else {
        local.skip_special(p, rel, special_kind(t));
        Ok(())
    }
}

/// What a file that is neither a regular file nor a directory is, for the report.
fn special_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kinds = [
        (t.is_fifo(), "fifo"),
        (t.is_socket(), "socket"),
        (t.is_char_device(), "char_device"),
        (t.is_block_device(), "block_device"),
    ];
    kinds.iter().find(|(is, _)| *is).map_or("other", |(_, k)| k)
}

fn walk_dir(p: &Path, rel: &str, local: &mut Local) -> Result<()> {
    local.dirs.insert(rel.to_string());
    for entry in std::fs::read_dir(p).map_err(|e| local_err(p, e))? {
        let entry = entry.map_err(|e| local_err(p, e))?;
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_symlink()) {
            local.links.push(path.display().to_string());
            let name = entry.file_name().to_string_lossy().to_string();
            local.link_rels.insert(join(rel, &name));
            continue;
        }
        match child_path(rel, &entry.file_name()) {
            Ok(child) => walk(&path, &child, local)?,
            Err(reason) => local.skip_name(&path, reason),
        }
    }
    Ok(())
}

/// A file's modification time in nanoseconds since the epoch (0 if unknown).
fn mtime_of(meta: &std::fs::Metadata) -> i128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

/// A regular file, hashed.
fn local_file(p: &Path, rel: &str, meta: &std::fs::Metadata) -> Result<LocalFile> {
    // Only a file named on the command line with no name of its own can get here invalid.
    cairn_core::FilePath::parse(rel)
        .map_err(|e| ClientError::Invalid(format!("{}: {e}", p.display())))?;
    let mtime_ns = mtime_of(meta);
    let file = std::fs::File::open(p).map_err(|e| local_err(p, e))?;
    let blake3 = blake3::Hasher::new()
        .update_reader(&file)
        .map_err(|e| local_err(p, e))?
        .finalize()
        .to_hex()
        .to_string();
    // Written to while it was hashed: the hash names no state the file was ever in.
    let after = file.metadata().map_err(|e| local_err(p, e))?;
    if (after.len(), mtime_of(&after)) != (meta.len(), mtime_ns) {
        return Err(ClientError::Local(format!(
            "{}: changed while it was being read; run the command again once it is settled",
            p.display()
        )));
    }
    Ok(LocalFile {
        rel: rel.to_string(),
        abs: p.canonicalize().unwrap_or_else(|_| p.to_path_buf()),
        size: meta.len(),
        mtime_ns,
        blake3,
    })
}

/// Paths in the draft's tree, under the uploaded directories, that the local tree no longer
/// has: each the highest such path (a directory gone locally is one deletion), plus those whose
/// kind changed (a file where there is now a directory, or the reverse). Paths where a symbolic
/// link (or a FIFO, socket or device) was skipped are left alone.
fn gone(tree: &Value, local: &Local) -> Vec<String> {
    let files: BTreeSet<&str> = local.files.iter().map(|f| f.rel.as_str()).collect();
    let mut out = Vec::new();
    for root in &local.roots {
        // A path named on the command line that is now a FIFO, socket or device is skipped,
        // and what the object holds there left alone (review: its directory was deleted).
        if local.link_rels.contains(root) {
            continue;
        }
        let node = match root.as_str() {
            "" => Some(tree),
            _ => root.split('/').try_fold(tree, |node, name| node.get(name)),
        };
        match node {
            Some(n) if is_dir(n) && local.dirs.contains(root) => {
                gone_under(n, root, &files, local, &mut out)
            }
            Some(n) if is_dir(n) == local.dirs.contains(root) => {}
            Some(_) => out.push(root.clone()),
            None => {}
        }
    }
    out
}

fn gone_under(
    node: &Value,
    at: &str,
    files: &BTreeSet<&str>,
    local: &Local,
    out: &mut Vec<String>,
) {
    let Some(entries) = node.as_object() else {
        return;
    };
    for (name, child) in entries.iter().filter(|(name, _)| *name != ".") {
        let path = join(at, name);
        if local.link_rels.contains(&path) {
            continue;
        }
        match (
            is_dir(child),
            local.dirs.contains(&path),
            files.contains(path.as_str()),
        ) {
            (true, true, _) => gone_under(child, &path, files, local, out),
            (false, _, true) => {}
            _ => out.push(path),
        }
    }
}

fn is_dir(node: &Value) -> bool {
    node["."]["type"] == "directory"
}

fn state_dir(opts: &UploadOptions) -> PathBuf {
    state_root(opts.state_dir.as_deref())
}

/// `dir`, else `$XDG_STATE_HOME/cairn`, else `~/.local/state/cairn`.
fn state_root(dir: Option<&Path>) -> PathBuf {
    if let Some(d) = dir {
        return d.to_path_buf();
    }
    match (std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")) {
        (Some(s), _) => PathBuf::from(s).join("cairn"),
        (None, Some(h)) => PathBuf::from(h).join(".local/state/cairn"),
        // A shared temporary directory: one of the user's own (see `record_path`), by uid.
        (None, None) => std::env::temp_dir().join(format!(
            "cairn-state-{}",
            rustix::process::getuid().as_raw()
        )),
    }
}

/// Refuses a state directory someone else could have put in place: a symbolic link, or one
/// another user owns (review: with neither `HOME` nor `XDG_STATE_HOME`, records went to a
/// `/tmp/cairn-state` anyone could have created first).
fn check_owned(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| ClientError::Local(format!("{}: {e}", dir.display())))?;
    let uid = rustix::process::getuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid {
        return Err(ClientError::Local(format!(
            "{}: not a directory of this user's (uid {uid}); give --state-dir",
            dir.display()
        )));
    }
    Ok(())
}

/// The record is named by the command: the server, the object, the local paths named (made
/// absolute) and where they go, so the same command finds it again however the files under
/// those paths changed since. Naming it by the files themselves lost the record (and stranded
/// its draft) whenever a file was added or deleted between two runs (QA).
fn record_path(opts: &UploadOptions, client: &Client) -> Result<PathBuf> {
    // `--dest a/` and `--dest a` are one place; the paths count in any order, each with where
    // it goes (`.` puts a directory's contents at the destination, `$PWD` the directory itself).
    let dest = cairn_core::FilePath::parse_dir(&opts.dest)
        .map_or_else(|_| opts.dest.clone(), |d| d.as_str().to_string());
    let mut roots: Vec<(String, bool)> = opts
        .paths
        .iter()
        .map(|p| {
            let abs = p.canonicalize().unwrap_or_else(|_| p.clone());
            (abs.to_string_lossy().into_owned(), names_contents(p))
        })
        .collect();
    roots.sort();
    let mut h = blake3::Hasher::new();
    h.update(client.base().as_bytes())
        .update(b"\0")
        .update(opts.object.as_bytes())
        .update(b"\0")
        .update(dest.as_bytes())
        .update(b"\0");
    if opts.delete {
        h.update(b"delete\0");
    }
    for (abs, contents) in &roots {
        h.update(abs.as_bytes())
            .update(if *contents { b"/.\0" } else { b"\0" });
    }
    let root = state_dir(opts);
    let dir = root.join("uploads");
    std::fs::create_dir_all(&dir)
        .map_err(|e| ClientError::Local(format!("{}: {e}", dir.display())))?;
    // Where others can create directories first (the fallback under the temporary directory).
    if root.starts_with(std::env::temp_dir()) {
        check_owned(&root)?;
        check_owned(&dir)?;
    }
    Ok(dir.join(format!("{}.json", &h.finalize().to_hex()[..32])))
}

/// A record written by a client that named records by their files (before 2026-11-24) is
/// moved to this command's name, so its draft is continued or discarded rather than stranded.
/// Found only while the files are those it was written for (its name depends on them).
fn adopt_legacy_record(opts: &UploadOptions, client: &Client, files: &[LocalFile], to: &Path) {
    if to.exists() {
        return;
    }
    let mut h = blake3::Hasher::new();
    h.update(client.base().as_bytes())
        .update(b"\0")
        .update(opts.object.as_bytes())
        .update(b"\0");
    if opts.delete {
        h.update(b"delete\0");
    }
    for f in files {
        h.update(f.rel.as_bytes())
            .update(b"\0")
            .update(f.abs.to_string_lossy().as_bytes())
            .update(b"\0");
    }
    let legacy = to.with_file_name(format!("{}.json", &h.finalize().to_hex()[..32]));
    if legacy.exists() && std::fs::rename(&legacy, to).is_ok() {
        tracing::info!(from = %legacy.display(), "took over an older client's resume record");
    }
}

/// Removes the resume records (in `state_dir`, else the default) of uploads on `client`'s server
/// that left draft `write_token` open, once it is finalized or discarded by hand (`cairn
/// finalize`, `cairn object rm`): they name a draft that is no longer open. Returns how many;
/// unreadable files are left alone.
pub fn forget_draft(state_dir: Option<&Path>, client: &Client, write_token: &str) -> usize {
    let dir = state_root(state_dir).join("uploads");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut removed = 0;
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let names_it = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v["write_token"] == write_token && v["server"] == client.base());
        if !names_it {
            continue;
        }
        // A run still using the record keeps its lock file; otherwise it goes too.
        let _lock = lock_record(&path);
        if std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The exclusive lock of a resume record: `flock` on `<record>.lock`, released when the file is
/// closed, also if the process dies. Dropping it removes the lock file, so no empty `.lock` files
/// pile up in the state directory.
struct RecordLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for RecordLock {
    /// Unlinked while still locked: a run that opened the file before the unlink and locks it
    /// after sees that its file is no longer the one at the path and starts over
    /// ([`lock_record`]), so two runs never hold locks on two different files at once.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes the exclusive lock of the record at `record` ([`RecordLock`]); a run of the same
/// command holding it is a `conflict` (exit 4).
fn lock_record(record: &Path) -> Result<RecordLock> {
    let path = record.with_extension("lock");
    let local = |e: std::io::Error| ClientError::Local(format!("{}: {e}", path.display()));
    match crate::lockfile::lock_exclusive(&path).map_err(local)? {
        Some(file) => Ok(RecordLock { _file: file, path }),
        None => Err(ClientError::Api {
            status: 409,
            retry_after: None,
            kind: "conflict".into(),
            reason: format!(
                "another run of this upload (the same paths into the same object) is still \
                 going (it holds {}); wait for it to finish",
                path.display()
            ),
        }),
    }
}

/// What the resume record of an earlier run of the same command leaves to this one.
enum Previous {
    /// No record, or its draft is gone: start afresh.
    Nothing,
    /// Same files, draft still open: continue it.
    Resume(ResumeRecord),
    /// A draft this run cannot continue (the local files changed since, or the record is of a
    /// form this client does not read). It holds whatever bytes it received, and nothing but
    /// the record names it: no API lists an object's drafts, so once the record is replaced it
    /// could never be discarded and gc would keep its data.
    Stale(String),
    /// The local files changed since the record, whose draft is still open: continued with a
    /// files job of the changes ([`continue_changed`]), or discarded when that fails.
    Changed(ResumeRecord),
    /// Same files, and the draft was finalized into this version by an earlier run that did
    /// not live to say so: the upload is done (QA 33: a new run published a second version).
    Published(ResumeRecord, String),
}

/// Reads the record at `path`; a draft it names that the server no longer has (404) leaves
/// nothing to do, any other failure to ask is this run's error.
async fn previous(path: &Path, client: &Client, local: &Local) -> Result<Previous> {
    let Some(v) = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return Ok(Previous::Nothing);
    };
    // The record's name includes the server: one of another server names no draft of this one.
    let (Some(wt), true) = (v["write_token"].as_str(), v["server"] == client.base()) else {
        return Ok(Previous::Nothing);
    };
    let wt = wt.to_string();
    // Records written before `handed_out` existed may be of a finished `--no-finalize` run:
    // only one that says `false` is known to be this command's alone. Nor did they record
    // empty directories.
    let handed_out = v["handed_out"] != false;
    let dirs_known = v.get("empty_dirs").is_some();
    // A run stopped between opening its draft and recording its files job: nothing to resume.
    if v["files_job"] == "" {
        return Ok(Previous::Stale(wt));
    }
    let record = match serde_json::from_value::<ResumeRecord>(v) {
        Ok(mut r)
            if same_contents(&r.files, &local.files)
                && (!dirs_known || r.empty_dirs == local.empty_dirs) =>
        {
            // Only modification times moved (a `touch`, a checkout that left the bytes as they
            // were): the bytes planned are the bytes there, so the run continues, checking the
            // files against their times now.
            if r.files != local.files {
                r.files = local.files.clone();
                save_record(path, &r)?;
            }
            r
        }
        // A finished `--no-finalize` run printed this token: the draft is the user's to keep.
        _ if handed_out => {
            // Named only while it is open: one already finalized or removed needs no word.
            let open =
                client
                    .files_jobs(&wt)
                    .await
                    .map(|_| true)
                    .or_else(|e| match e.status() {
                        Some(404) => Ok(false),
                        _ => Err(e),
                    })?;
            if open {
                tracing::warn!(
                    "the draft {wt} of an earlier run of this upload is left open (that run \
                     printed its token, or predates this client's record of it; its files \
                     changed since); `cairn object rm {wt}` discards it"
                );
            }
            return Ok(Previous::Nothing);
        }
        Ok(r) if dirs_known && r.base_known => {
            return match client.files_jobs(&r.write_token).await {
                Ok(_) => Ok(Previous::Changed(r)),
                Err(e) if e.status() == Some(404) => Ok(Previous::Nothing),
                Err(e) => Err(e),
            }
        }
        _ => return Ok(Previous::Stale(wt)),
    };
    match client.files_jobs(&record.write_token).await {
        Ok(_) => Ok(Previous::Resume(record)),
        // Gone: finalized by a run that stopped before it could say so (its reply lost, its
        // retries spent, or killed), or discarded. The finalize's key tells which.
        Err(e) if e.status() == Some(404) => match client.finalized(&record.write_token).await? {
            Some(version) => Ok(Previous::Published(record, version)),
            None => Ok(Previous::Nothing),
        },
        Err(e) => Err(e),
    }
}

/// The same files with the same contents (path, size, blake3), whatever their modification
/// times.
fn same_contents(a: &[LocalFile], b: &[LocalFile]) -> bool {
    let key = |f: &LocalFile| (f.rel.clone(), f.abs.clone(), f.size, f.blake3.clone());
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

/// Discards an earlier run's draft (`DELETE /q/{wt}`) before a new one is opened. One already
/// gone (404) is what was wanted. Any other failure does not stop the upload, but the token is
/// printed, since nothing else will ever name that draft again.
async fn discard(client: &Client, wt: &str) {
    match client.delete(wt).await {
        Err(e) if e.status() != Some(404) => tracing::warn!(
            "could not discard {wt}, the draft of an earlier run of this upload whose local \
             files changed since ({e}); `cairn object rm {wt}` discards it"
        ),
        _ => tracing::info!(write_token = wt, "discarded the earlier run's draft"),
    }
}

/// Continues the draft of an earlier run whose local files changed since, instead of
/// discarding it with every byte it received (QA 33: one edited file sent a 100 MB upload,
/// 86% in, from the start). Upload jobs none of whose files changed go on from the server's
/// `skip`; a job that holds a changed or removed file cannot complete any more, so every file
/// it holds is added again, and so is every other job of those files (a file spans jobs). One
/// files job on the same draft then deletes what is gone locally and adds what changed, what
/// is new and what those jobs held. `None` when the server refuses that files job (the draft
/// changed under the record, its files are finalized…): the caller discards the draft and
/// starts afresh, as before.
async fn continue_changed(
    client: &Client,
    old: ResumeRecord,
    local: &Local,
    path: &Path,
) -> Result<Option<ResumeRecord>> {
    let was: HashMap<&str, &LocalFile> = old.files.iter().map(|f| (f.rel.as_str(), f)).collect();
    let now: HashMap<&str, &LocalFile> = local.files.iter().map(|f| (f.rel.as_str(), f)).collect();
    let same =
        |a: &LocalFile, b: &LocalFile| (&a.abs, a.size, &a.blake3) == (&b.abs, b.size, &b.blake3);
    // Paths whose planned bytes are no longer what is there: changed or removed.
    let mut dirty: BTreeSet<String> = old
        .files
        .iter()
        .filter(|f| !now.get(f.rel.as_str()).is_some_and(|n| same(f, n)))
        .map(|f| f.rel.clone())
        .collect();
    let mut paths_of = Vec::with_capacity(old.jobs.len());
    for uj in &old.jobs {
        let status = client
            .upload_status(&old.write_token, old.files_job_of(uj), uj)
            .await?;
        let paths: BTreeSet<String> = status
            .iter()
            .filter_map(|s| s["path"].as_str().map(str::to_string))
            .collect();
        paths_of.push((uj.clone(), paths));
    }
    let mut broken = BTreeSet::new();
    loop {
        let before = broken.len();
        for (uj, paths) in &paths_of {
            if !broken.contains(uj) && paths.iter().any(|p| dirty.contains(p)) {
                broken.insert(uj.clone());
                dirty.extend(paths.iter().cloned());
            }
        }
        if broken.len() == before {
            break;
        }
    }
    let old_dirs: BTreeSet<&str> = old.empty_dirs.iter().map(String::as_str).collect();
    let new_dirs: BTreeSet<&str> = local.empty_dirs.iter().map(String::as_str).collect();
    let under = |dir: &str, p: &str| p.strip_prefix(dir).is_some_and(|r| r.starts_with('/'));
    // Deletions first: files gone locally, empty directories gone (not now holding files),
    // and a path that changed kind (an old directory where a file or empty directory is now).
    let mut dels: BTreeSet<String> = old
        .files
        .iter()
        .filter(|f| !now.contains_key(f.rel.as_str()))
        .map(|f| f.rel.clone())
        .collect();
    for d in old_dirs.difference(&new_dirs) {
        if !local.files.iter().any(|f| under(d, &f.rel)) {
            dels.insert(d.to_string());
        }
    }
    let added = |p: &str| !was.contains_key(p) || dirty.contains(p);
    let new_paths = local
        .files
        .iter()
        .map(|f| f.rel.as_str())
        .filter(|p| added(p))
        .chain(new_dirs.difference(&old_dirs).copied());
    for p in new_paths {
        if old.files.iter().any(|f| under(p, &f.rel)) || old_dirs.iter().any(|d| under(p, d)) {
            dels.insert(p.to_string());
        }
    }
    let ops: Vec<Value> = dels
        .iter()
        .map(|p| json!({"op": "del", "path": p}))
        .chain(
            new_dirs
                .difference(&old_dirs)
                .map(|d| json!({"op": "add", "type": "directory", "path": d})),
        )
        .chain(local.files.iter().filter(|f| added(&f.rel)).map(|f| {
            json!({"op": "add", "type": "file", "path": f.rel, "size": f.size, "blake3": f.blake3})
        }))
        .collect();
    let (files_job, jobs) = match client.create_files_job(&old.write_token, &ops).await {
        Ok(created) => created,
        Err(e @ ClientError::Api { .. }) if e.status().is_some_and(|s| s < 500) => {
            tracing::info!(error = %e, "could not continue the earlier run's draft");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let kept: Vec<String> = old
        .jobs
        .iter()
        .filter(|uj| !broken.contains(*uj))
        .cloned()
        .collect();
    let mut later_jobs: BTreeMap<String, String> = old
        .later_jobs
        .iter()
        .filter(|(uj, _)| kept.contains(uj))
        .map(|(uj, fj)| (uj.clone(), fj.clone()))
        .collect();
    later_jobs.extend(jobs.iter().map(|uj| (uj.clone(), files_job.clone())));
    let record = ResumeRecord {
        jobs: kept.into_iter().chain(jobs).collect(),
        later_jobs,
        files: local.files.clone(),
        empty_dirs: local.empty_dirs.clone(),
        handed_out: false,
        ..old
    };
    save_record(path, &record)?;
    tracing::info!(
        write_token = %record.write_token,
        changed = dirty.len(),
        "continued the earlier run's draft with the local changes"
    );
    Ok(Some(record))
}

async fn start(
    client: &Client,
    opts: &UploadOptions,
    local: Local,
    path: &Path,
) -> Result<ResumeRecord> {
    let write_token = client.open_draft(&opts.object).await?;
    // Named at once, before anything is planned in it: a run killed before the files job's
    // record is written leaves a record naming the draft, which the next run discards (QA 33:
    // such a draft was left open for good, and gc kept whatever it received).
    let opening = ResumeRecord {
        server: client.base().to_string(),
        object: opts.object.clone(),
        write_token: write_token.clone(),
        files_job: String::new(),
        jobs: Vec::new(),
        later_jobs: BTreeMap::new(),
        files: Vec::new(),
        deleted: Vec::new(),
        empty_dirs: Vec::new(),
        base: None,
        base_known: false,
        handed_out: false,
    };
    save_record(path, &opening)?;
    let base = client.draft_base(&write_token).await?;
    let deleted = match opts.delete {
        true => gone(&client.files(&write_token).await?, &local),
        false => Vec::new(),
    };
    // Deletions first: a path that changed kind (a directory that is now a file) is deleted,
    // then added anew. The adds of the files create their directories; those with nothing
    // uploaded under them get their own.
    let ops: Vec<Value> = deleted
        .iter()
        .map(|p| json!({"op": "del", "path": p}))
        .chain(
            local
                .empty_dirs
                .iter()
                .map(|d| json!({"op": "add", "type": "directory", "path": d})),
        )
        .chain(local.files.iter().map(|f| {
            json!({"op": "add", "type": "file", "path": f.rel, "size": f.size, "blake3": f.blake3})
        }))
        .collect();
    let files = local.files;
    let mut attempt = 0;
    let (files_job, jobs) = loop {
        match client.create_files_job(&write_token, &ops).await {
            // gc collected content an add linked by hash while the job was applied; the draft
            // is unchanged and the same request now plans an upload instead.
            Err(ClientError::Api {
                status: 409,
                reason,
                ..
            }) if reason.contains("send the files job again") && attempt < 2 => attempt += 1,
            other => break other?,
        }
    };
    let record = ResumeRecord {
        server: client.base().to_string(),
        object: opts.object.clone(),
        write_token,
        files_job,
        jobs,
        later_jobs: BTreeMap::new(),
        files,
        deleted,
        empty_dirs: local.empty_dirs,
        base,
        base_known: true,
        handed_out: false,
    };
    // Durable before the first byte is sent: a killed run must find it.
    save_record(path, &record)?;
    Ok(record)
}

/// Writes the resume record whole (aside, synced, renamed into place).
fn save_record(path: &Path, record: &ResumeRecord) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(record).map_err(|e| ClientError::Local(e.to_string()))?;
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, &bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| ClientError::Local(format!("{}: {e}", path.display())))
}

/// The files of an upload by their path in the object.
type ByPath<'a> = std::collections::HashMap<&'a str, &'a LocalFile>;

/// Sends what the server still lacks of one upload job, resuming from `skip` after any failure.
async fn send_job(
    client: &Client,
    record: &ResumeRecord,
    by_path: &ByPath<'_>,
    uj: &str,
    sent: Arc<AtomicU64>,
    progress: Progress,
) -> Result<()> {
    let mut attempt = 0;
    loop {
        match send_job_once(
            client,
            record,
            by_path,
            uj,
            (&sent, &progress),
            &mut attempt,
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(e) if (e.retryable() || e.status() == Some(409)) && attempt + 1 < JOB_ATTEMPTS => {
                tracing::info!(upload_job = uj, error = %e, attempt, "resuming upload job");
                backoff(attempt, &e).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn send_job_once(
    client: &Client,
    record: &ResumeRecord,
    by_path: &ByPath<'_>,
    uj: &str,
    (sent, progress): (&Arc<AtomicU64>, &Progress),
    attempt: &mut u32,
) -> Result<()> {
    let status = client
        .upload_status(&record.write_token, record.files_job_of(uj), uj)
        .await?;
    for run in runs(&status)? {
        let mut pieces = Vec::with_capacity(run.pieces.len());
        for (path, off, len) in &run.pieces {
            let file = by_path.get(path.as_str()).ok_or_else(|| {
                ClientError::Local(format!(
                    "the plan names {path}, which this upload does not have"
                ))
            })?;
            pieces.push(((*file).clone(), *off, *len));
        }
        // Refused unread (429, the token's rate): the same request again once the server's
        // Retry-After has passed, not a fresh status read first, which would spend the rate
        // the retry waited for (QA: at one request a second, every retry's status read left
        // its upload refused, until the attempts ran out). An offset the server has moved past
        // meanwhile is 409, and the job's retry reads the status. The attempts are the job's.
        loop {
            match send_run(client, record, uj, &run, &pieces, sent, progress).await {
                // A run that went through is progress: the job's attempts start again.
                Ok(()) => break *attempt = 0,
                Err(e) if unread(&e) && *attempt + 1 < JOB_ATTEMPTS => {
                    tracing::info!(upload_job = uj, error = %e, attempt, "sending again");
                    backoff(*attempt, &e).await;
                    *attempt += 1;
                }
                other => break other?,
            }
        }
    }
    Ok(())
}

/// A refusal that read nothing of the request's body: 429, which the server's rate limit gives
/// before any handler runs. (A 503 `busy` may be either: no upload slot came free, nothing read;
/// or the server began to stop while it received, keeping what arrived. The job's retry reads
/// the status after one, which no upload limit refuses.)
fn unread(e: &ClientError) -> bool {
    e.status() == Some(429)
}

/// One request sending `run` of upload job `uj` from `pieces` (its files, in job order).
/// `sent` counts the bytes of requests the server did not refuse unread: a refused request's
/// body was pulled from the files (some of it), but none of it counts as sent.
async fn send_run(
    client: &Client,
    record: &ResumeRecord,
    uj: &str,
    run: &Run,
    pieces: &[(LocalFile, u64, u64)],
    sent: &Arc<AtomicU64>,
    progress: &Progress,
) -> Result<()> {
    let this = Arc::new(AtomicU64::new(0));
    // What this request reported per file, to take back if the server refuses it unread.
    let reported = Arc::new(std::sync::Mutex::new(Vec::<(String, u64, u64)>::new()));
    let (pulled, each, ledger) = (this.clone(), progress.clone(), reported.clone());
    // A local file that cannot be read, or changed since it was planned, fails the request
    // (the server keeps what arrived, which a later run discards with this draft) and is
    // reported as what it is: a local problem, not the server's, and not worth retrying.
    let failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let fail = failure.clone();
    // One request for the whole run: the files are opened one after another as the body is
    // pulled, so a job packing a thousand small files is one request and one commit, not a
    // thousand.
    let body = futures::stream::iter(pieces.to_vec())
        .map(move |(file, off, len)| {
            let (name, size, progress) = (file.rel, file.size, each.clone());
            let at = ledger.lock().map_or(0, |mut l| {
                l.push((name.clone(), size, 0));
                l.len() - 1
            });
            let ledger = ledger.clone();
            let report: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |n| {
                if let Ok(mut l) = ledger.lock() {
                    l[at].2 += n;
                }
                progress(&name, size, n as i64)
            });
            let planned = (file.size, file.mtime_ns);
            let piece = Piece {
                path: file.abs,
                off,
                len,
                planned,
            };
            file_stream(piece, pulled.clone(), report, fail.clone())
        })
        .flatten();
    let reply = client
        .upload_data(
            &record.write_token,
            record.files_job_of(uj),
            uj,
            run.offset,
            run.len,
            body,
        )
        .await;
    match &reply {
        Err(e) if unread(e) => {
            let taken = reported.lock().map(|mut l| std::mem::take(&mut *l));
            for (name, size, n) in taken.unwrap_or_default() {
                if n > 0 {
                    progress(&name, size, -(n as i64));
                }
            }
        }
        _ => {
            sent.fetch_add(this.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
    if let Some(why) = failure.lock().map_or(None, |mut f| f.take()) {
        return Err(ClientError::Local(why));
    }
    reply.map(drop)
}

/// Bytes of one upload job sent in one request: contiguous in the job, made of file pieces.
#[derive(Debug, PartialEq)]
struct Run {
    /// Offset in the job of the first byte.
    offset: u64,
    len: u64,
    /// (path in the object, offset in the file, length), in job order.
    pieces: Vec<(String, u64, u64)>,
}

/// What an upload job still lacks, from its status: the segments' missing tails, joined into
/// runs wherever one segment's missing bytes continue straight from the previous one's (a
/// server that received bytes in order lacks one run: the rest of the job).
fn runs(status: &[Value]) -> Result<Vec<Run>> {
    let mut out: Vec<Run> = Vec::new();
    let mut job_offset = 0u64;
    let mut joins = false;
    for seg in status {
        let (off, len, skip) = (num(seg, "off")?, num(seg, "len")?, num(seg, "skip")?);
        let skip = skip.min(len);
        if skip < len {
            let path = seg["path"].as_str().unwrap_or_default().to_string();
            let piece = (path, off + skip, len - skip);
            match out.last_mut() {
                Some(run) if joins && skip == 0 => {
                    run.len += len;
                    run.pieces.push(piece);
                }
                _ => out.push(Run {
                    offset: job_offset + skip,
                    len: len - skip,
                    pieces: vec![piece],
                }),
            }
        }
        joins = skip < len || len == 0 && joins;
        job_offset += len;
    }
    Ok(out)
}

fn num(v: &Value, name: &str) -> Result<u64> {
    v[name]
        .as_u64()
        .ok_or_else(|| ClientError::Local(format!("upload status has no {name}")))
}

/// A piece of a local file to send: `len` bytes from `off`, of a file planned with
/// `planned` (size, modification time in ns).
struct Piece {
    path: PathBuf,
    off: u64,
    len: u64,
    planned: (u64, i128),
}

/// The piece's bytes, read with `pread` in 1 MiB frames by a blocking task and handed over a
/// two-slot channel (the network pulls; memory stays at two frames).
///
/// Each frame is sent only if the file still has the size and modification time it was planned
/// (and hashed) with, checked after the frame was read: a file written to during the upload
/// would otherwise be published torn, a mix of its old and new bytes (QA). A failure is also
/// put in `failure`, so the caller reports it for what it is.
fn file_stream(
    piece: Piece,
    sent: Arc<AtomicU64>,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
    failure: Arc<std::sync::Mutex<Option<String>>>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let Piece {
            path,
            off,
            len,
            planned,
        } = piece;
        let fail = |why: String| {
            if let Ok(mut f) = failure.lock() {
                f.get_or_insert(why.clone());
            }
            drop(tx.blocking_send(Err(std::io::Error::other(why))));
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => return fail(format!("{}: {e}", path.display())),
        };
        let mut pos = 0u64;
        while pos < len {
            let n = (len - pos).min(FRAME as u64) as usize;
            let mut buf = vec![0u8; n];
            if let Err(e) = file.read_exact_at(&mut buf, off + pos) {
                // A file cut shorter than planned says "failed to fill whole buffer": say why.
                let shrunk = file.metadata().is_ok_and(|m| m.len() < planned.0);
                return fail(match shrunk {
                    true => format!(
                        "{}: changed since it was planned (it is shorter now); nothing was \
                         finalized, run the command again once it is settled",
                        path.display()
                    ),
                    false => format!("{}: {e}", path.display()),
                });
            }
            let now = file.metadata().map(|m| (m.len(), mtime_of(&m)));
            if now.as_ref().ok() != Some(&planned) {
                return fail(format!(
                    "{}: changed since it was planned (size or modification time); nothing \
                     was finalized, run the command again once it is settled",
                    path.display()
                ));
            }
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                return; // the request was dropped
            }
            pos += n as u64;
        }
    });
    // Counted as the request takes each frame, so before its reply can arrive (counted by the
    // reader, after its send, a last frame could be missed by a caller reading the count on
    // the reply).
    futures::stream::unfold(rx, move |mut rx| {
        let (sent, progress) = (sent.clone(), progress.clone());
        async move {
            let item = rx.recv().await?;
            if let Ok(frame) = &item {
                sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
                progress(frame.len() as u64);
            }
            Some((item, rx))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(path: &str, off: u64, len: u64, skip: u64) -> Value {
        json!({"path": path, "off": off, "len": len, "skip": skip})
    }

    fn piece(path: &str, off: u64, len: u64) -> (String, u64, u64) {
        (path.to_string(), off, len)
    }

    fn run(offset: u64, len: u64, pieces: Vec<(String, u64, u64)>) -> Run {
        Run {
            offset,
            len,
            pieces,
        }
    }

    #[test]
    fn a_fresh_job_is_one_request() {
        let status = [seg("a", 0, 3, 0), seg("b", 0, 5, 0), seg("c", 8, 2, 0)];
        let want = run(
            0,
            10,
            vec![piece("a", 0, 3), piece("b", 0, 5), piece("c", 8, 2)],
        );
        assert_eq!(runs(&status).unwrap(), vec![want]);
    }

    #[test]
    fn a_resumed_job_sends_from_the_first_missing_byte() {
        let status = [seg("a", 0, 3, 3), seg("b", 0, 5, 2), seg("c", 0, 4, 0)];
        let want = run(5, 7, vec![piece("b", 2, 3), piece("c", 0, 4)]);
        assert_eq!(runs(&status).unwrap(), vec![want]);
        let done = [seg("a", 0, 3, 3), seg("b", 0, 5, 9)];
        assert_eq!(runs(&done).unwrap(), vec![]);
    }

    #[test]
    fn bytes_already_held_between_gaps_split_the_runs() {
        let status = [
            seg("a", 0, 3, 1),
            seg("b", 0, 5, 5),
            seg("c", 0, 4, 0),
            seg("d", 0, 1, 0),
        ];
        let want = vec![
            run(1, 2, vec![piece("a", 1, 2)]),
            run(8, 5, vec![piece("c", 0, 4), piece("d", 0, 1)]),
        ];
        assert_eq!(runs(&status).unwrap(), want);
    }

    fn local(roots: &[&str], dirs: &[&str], files: &[&str], links: &[&str]) -> Local {
        Local {
            files: files
                .iter()
                .map(|f| LocalFile {
                    rel: f.to_string(),
                    abs: PathBuf::new(),
                    size: 1,
                    mtime_ns: 0,
                    blake3: String::new(),
                })
                .collect(),
            dirs: dirs.iter().map(|d| d.to_string()).collect(),
            roots: roots.iter().map(|r| r.to_string()).collect(),
            links: Vec::new(),
            invalid: Vec::new(),
            special: Vec::new(),
            empty_dirs: Vec::new(),
            link_rels: links.iter().map(|l| l.to_string()).collect(),
        }
    }

    /// A state directory that is a symbolic link, or (checked when the test runs as root) one
    /// another user owns, is refused; the user's own is taken.
    #[test]
    fn a_state_directory_must_be_the_user_s_own() {
        let work = tempfile::tempdir().unwrap();
        let own = work.path().join("own");
        std::fs::create_dir(&own).unwrap();
        assert!(check_owned(&own).is_ok());
        let link = work.path().join("link");
        std::os::unix::fs::symlink(&own, &link).unwrap();
        assert!(check_owned(&link).is_err(), "a symbolic link");
        if rustix::process::getuid().is_root() {
            let other = work.path().join("other");
            std::fs::create_dir(&other).unwrap();
            std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
            assert!(check_owned(&other).is_err(), "another user's");
        }
    }

    /// `dir/.` names the directory's contents, like `.`; `dir` and `dir/` the directory.
    #[test]
    fn a_path_ending_in_dot_names_the_contents() {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        let rels = |p: PathBuf| -> Vec<String> {
            collect(&[p], "to")
                .unwrap()
                .files
                .into_iter()
                .map(|f| f.rel)
                .collect()
        };
        assert_eq!(rels(work.path().join("d/.")), ["to/f"]);
        assert_eq!(rels(work.path().join("d")), ["to/d/f"]);
        assert_eq!(rels(work.path().join("d/")), ["to/d/f"]);
        assert!(names_contents(Path::new(".")) && !names_contents(Path::new("a.")));
    }

    #[test]
    fn delete_names_the_highest_gone_path_under_the_uploaded_directories_only() {
        let file = json!({".": {"size": 1}});
        let dir = |entries: Value| {
            let mut d = entries;
            d["."] = json!({"type": "directory"});
            d
        };
        let tree = dir(json!({
            "other": file,
            "t": dir(json!({
                "kept": file,
                "gone": file,
                "old": dir(json!({"x": file, "y": file})),
                "sub": dir(json!({"kept": file, "gone": file})),
                "was_dir": dir(json!({"z": file})),
                "was_file": file,
                "link": file,
            })),
        }));
        let l = local(
            &["t"],
            &["t", "t/sub", "t/was_file"],
            &["t/kept", "t/sub/kept", "t/was_dir", "t/was_file/w"],
            &["t/link"],
        );
        assert_eq!(
            gone(&tree, &l),
            ["t/gone", "t/old", "t/sub/gone", "t/was_dir", "t/was_file"]
        );
        // The whole object when the tree goes to its root.
        let l = local(&[""], &["", "t"], &["t/kept"], &[]);
        let want = [
            "other",
            "t/gone",
            "t/link",
            "t/old",
            "t/sub",
            "t/was_dir",
            "t/was_file",
        ];
        assert_eq!(gone(&tree, &l), want);
        // A file named on the command line replaces only itself, unless a directory is there.
        assert_eq!(
            gone(&tree, &local(&["other"], &[], &["other"], &[])),
            Vec::<String>::new()
        );
        assert_eq!(gone(&tree, &local(&["t"], &[], &["t"], &[])), ["t"]);
        assert_eq!(
            gone(&tree, &local(&["new"], &["new"], &[], &[])),
            Vec::<String>::new()
        );
        // Named on the command line and now a FIFO (skipped): left alone.
        assert_eq!(
            gone(&tree, &local(&["t"], &[], &[], &["t"])),
            Vec::<String>::new()
        );
    }

    #[test]
    fn only_directories_with_nothing_uploaded_under_them_need_their_own_add() {
        let l = local(
            &["t"],
            &["", "t", "t/a", "t/a/b", "t/e", "t/e/f", "t/g"],
            &["t/a/b/x", "t/g/y"],
            &[],
        );
        assert_eq!(l.leaf_dirs(), ["t/e/f"]);
        assert_eq!(local(&["t"], &["t"], &[], &[]).leaf_dirs(), ["t"]);
        assert!(local(&[""], &[""], &[], &[]).leaf_dirs().is_empty());
    }

    #[test]
    fn a_partly_held_segment_starts_a_run_of_its_own() {
        let status = [seg("a", 0, 3, 0), seg("b", 0, 5, 2)];
        let want = vec![
            run(0, 3, vec![piece("a", 0, 3)]),
            run(5, 3, vec![piece("b", 2, 3)]),
        ];
        assert_eq!(runs(&status).unwrap(), want);
    }

    /// Reads a piece through `file_stream`: the bytes sent, and the failure it reported.
    async fn send_piece(piece: Piece, between: impl FnOnce()) -> (Vec<u8>, Option<String>) {
        let failure = Arc::new(std::sync::Mutex::new(None));
        let report: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(|_| {});
        let sent = Arc::new(AtomicU64::new(0));
        let mut stream = Box::pin(file_stream(piece, sent, report, failure.clone()));
        let mut got = Vec::new();
        let mut between = Some(between);
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(b) => got.extend_from_slice(&b),
                Err(_) => break,
            }
            if let Some(f) = between.take() {
                f();
            }
        }
        let why = failure.lock().unwrap().take();
        (got, why)
    }

    fn planned(path: &Path) -> (u64, i128) {
        let m = std::fs::metadata(path).unwrap();
        (m.len(), mtime_of(&m))
    }

    /// QA: a file overwritten while it was uploaded was published torn. Each frame is sent only
    /// while the file is as planned, so the stream fails before any byte read after the write
    /// (or a file gone, or shorter) goes out, and says why.
    #[tokio::test]
    async fn a_file_changed_or_gone_during_its_upload_fails_its_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let len = 8 * FRAME as u64;
        std::fs::write(&path, vec![1u8; len as usize]).unwrap();
        let piece = |p: &Path| Piece {
            path: p.to_path_buf(),
            off: 0,
            len,
            planned: planned(p),
        };
        let (whole, why) = send_piece(piece(&path), || {}).await;
        assert_eq!((whole.len() as u64, why), (len, None));

        let changed = piece(&path);
        let (got, why) = send_piece(changed, || {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&vec![2u8; FRAME], 6 * FRAME as u64).unwrap();
            // Whatever the file system's timestamp granularity: a later mtime.
            let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
            f.set_modified(later).unwrap();
        })
        .await;
        assert!(got.len() < len as usize, "stopped: {} bytes", got.len());
        assert!(
            got.iter().all(|&b| b == 1),
            "no byte written later was sent"
        );
        assert!(why.unwrap().contains("changed since it was planned"));

        let gone = piece(&path);
        std::fs::remove_file(&path).unwrap();
        let (got, why) = send_piece(gone, || {}).await;
        assert!(got.is_empty());
        assert!(why.unwrap().contains(&path.display().to_string()));
    }

    /// The record is the command's: the same paths in any order and the same destination
    /// however spelled find it; a directory and its contents (`.`) are different commands.
    #[test]
    fn a_record_is_named_by_the_command() {
        let state = tempfile::tempdir().unwrap();
        let a = state.path().join("a");
        let b = state.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let client = Client::new("http://127.0.0.1:8008", "");
        let name = |paths: Vec<PathBuf>, dest: &str| {
            let opts = UploadOptions {
                object: "iq__x".into(),
                paths,
                dest: dest.into(),
                parallel: 1,
                finalize: true,
                delete: false,
                message: None,
                state_dir: Some(state.path().to_path_buf()),
            };
            record_path(&opts, &client).unwrap()
        };
        let ab = name(vec![a.clone(), b.clone()], "d");
        assert_eq!(ab, name(vec![b.clone(), a.clone()], "d/"));
        assert_ne!(ab, name(vec![a.clone()], "d"));
        let here = std::env::current_dir().unwrap();
        assert_ne!(name(vec![PathBuf::from(".")], ""), name(vec![here], ""));
    }
}
