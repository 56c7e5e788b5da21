//! Operator and draft commands: `fsck`, `gc`, `stats` (on the data dir when the server is
//! stopped, else through the server's admin endpoints), `jobs`, `force-complete`, `diff`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use cairn_jobs::Engine;
use serde_json::{json, Value};

use crate::cli::Ctx;

/// The data dir is held by a running server (RocksDB's lock).
#[derive(Debug)]
pub struct InUse(pub String);

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is in use by a running server: stop it first (commands other than serve can \
             ask that server instead: leave out --data)",
            self.0
        )
    }
}

impl std::error::Error for InUse {}

/// A data dir to open directly, with the server's config file, if given.
pub struct Offline {
    pub data: PathBuf,
    pub config: Option<PathBuf>,
}

fn open_offline(at: &Offline) -> Result<Engine> {
    open_offline_with(at, false)
}

/// Opens the store as `cairn serve` would with the same config file and `CAIRN_*` variables
/// (review 33: the defaults were used, so an offline gc could take the disk below the
/// server's reserve, or refuse a store served with `allow_missing_packs`).
/// `allow_missing_packs`: fsck opens a store whose packs are missing, to name what they held.
fn open_offline_with(at: &Offline, allow_missing_packs: bool) -> Result<Engine> {
    let data = &at.data;
    if !data.join("index").exists() {
        bail!("{} holds no Cairn store", data.display());
    }
    let mut server =
        cairn_http::ServerConfig::load(at.config.as_deref()).map_err(|e| anyhow!(e))?;
    server.data = data.clone();
    let mut cfg = cairn_http::engine_config(&server);
    cfg.store.allow_missing_packs |= allow_missing_packs;
    Engine::open(cfg).map_err(|e| {
        if cairn_store::index::is_in_use(&e.reason) {
            anyhow::Error::new(InUse(data.display().to_string()))
        } else {
            anyhow::Error::new(e)
        }
    })
}

pub async fn stats(ctx: &Ctx, data: Option<Offline>) -> Result<()> {
    let v = match data {
        Some(d) => serde_json::to_value(open_offline(&d)?.stats()?)?,
        None => ctx.client.admin_stats().await?,
    };
    ctx.print(&v, |v| {
        format!(
            "objects {}  versions {}\nlogical {} bytes, stored {} bytes, dedup ratio {:.2}\npacks {} ({} bytes), live ratio {:.2}",
            v["objects"], v["versions"], v["logical_bytes"], v["stored_bytes"], v["dedup_ratio"].as_f64().unwrap_or(0.0),
            v["packs"], v["pack_bytes"], v["live_ratio"].as_f64().unwrap_or(0.0)
        )
    });
    Ok(())
}

pub async fn fsck(ctx: &Ctx, data: Option<Offline>, repair: bool) -> Result<()> {
    let v = match data {
        Some(d) => {
            let engine = open_offline_with(&d, true)?;
            let r = if repair {
                engine.fsck_repair()?
            } else {
                engine.fsck()?
            };
            let mut v = serde_json::to_value(&r)?;
            v["clean"] = json!(r.is_clean());
            v
        }
        None => ctx.client.admin_fsck(repair).await?,
    };
    ctx.print(&v, |v| {
        let mut out = format!(
            "checked {} chunks ({} bytes), {} parts, {} nodes",
            v["chunks_checked"], v["bytes_checked"], v["parts_checked"], v["nodes_checked"]
        );
        for c in v["corrupt_chunks"].as_array().into_iter().flatten() {
            out.push_str(&format!("\ncorrupt chunk {}", c.as_str().unwrap_or("?")));
        }
        for f in v["damaged_files"].as_array().into_iter().flatten() {
            out.push_str(&format!("\ndamaged file {}", f.as_str().unwrap_or("?")));
        }
        for p in v["damaged_parts"].as_array().into_iter().flatten() {
            out.push_str(&format!("\ndamaged part {}", p.as_str().unwrap_or("?")));
        }
        for (part, chunk) in v["missing_chunks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| Some((m.get(0)?.as_str()?, m.get(1)?.as_str()?)))
        {
            out.push_str(&format!("\nmissing chunk {chunk} (part {part})"));
        }
        for r in v["corrupt_records"].as_array().into_iter().flatten() {
            out.push_str(&format!("\ncorrupt record {}", r.as_str().unwrap_or("?")));
        }
        for e in v["library_index"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\nlibrary index entry {}",
                e.as_str().unwrap_or("?")
            ));
        }
        for l in v["dangling_links"].as_array().into_iter().flatten() {
            out.push_str(&format!("\ndangling link {}", l.as_str().unwrap_or("?")));
        }
        for p in v["orphan_packs"].as_array().into_iter().flatten() {
            out.push_str(&format!("\norphan pack file {}", p.as_str().unwrap_or("?")));
        }
        for m in v["refcount_mismatches"].as_array().into_iter().flatten() {
            out.push_str(&format!("\n{}", m.as_str().unwrap_or("?")));
        }
        if let Some(why) = v["repair_skipped"].as_str() {
            out.push_str(&format!("\n{why}"));
        }
        if v["repaired"].as_u64().unwrap_or(0) > 0 {
            out.push_str(&format!("\nrepaired {} refcounts", v["repaired"]));
        }
        out
    });
    if v["clean"] != true {
        bail!("fsck found damage");
    }
    Ok(())
}

pub async fn gc(ctx: &Ctx, data: Option<Offline>, dry_run: bool) -> Result<()> {
    let v = match data {
        Some(d) => {
            let opts = cairn_store::GcOptions {
                dry_run,
                ..Default::default()
            };
            serde_json::to_value(open_offline(&d)?.gc(&opts)?)?
        }
        None => ctx.client.admin_gc(dry_run).await?,
    };
    ctx.print(&v, |v| {
        format!(
            "{}deleted {} nodes, {} parts, {} chunks ({} bytes); repacked {} packs{}, freed {} bytes on disk",
            if dry_run { "(dry run) would have " } else { "" },
            v["nodes_deleted"], v["parts_deleted"], v["chunks_deleted"], v["chunk_bytes_deleted"], v["packs_repacked"],
            match v["packs_punched"].as_u64() {
                Some(n) if n > 0 => format!(" (no room to repack: dead records of {n} packs freed in place)"),
                _ => String::new(),
            },
            v["disk_bytes_freed"]
        )
    });
    Ok(())
}

/// `jobs <write-token>`: files jobs and their upload jobs with progress.
pub async fn jobs(ctx: &Ctx, wt: &str) -> Result<()> {
    let list = ctx.client.files_jobs(wt).await?;
    let mut rows = Vec::new();
    for fj in list.as_array().into_iter().flatten() {
        let fj_id = fj["id"].as_str().unwrap_or_default();
        let status = ctx.client.files_job_status(wt, fj_id).await?;
        let mut ujs = Vec::new();
        for uj in ctx.client.upload_jobs(wt, fj_id).await? {
            let segs = ctx.client.upload_status(wt, fj_id, &uj).await?;
            let size: u64 = segs.iter().filter_map(|s| s["len"].as_u64()).sum();
            let received: u64 = segs.iter().filter_map(|s| s["skip"].as_u64()).sum();
            ujs.push(json!({"id": uj, "segments": segs.len(), "size": size, "received": received}));
        }
        rows.push(json!({"id": fj_id, "status": status["status"], "upload_jobs": ujs}));
    }
    let v = json!(rows);
    ctx.print(&v, |_| {
        let mut out = String::new();
        for fj in &rows {
            out.push_str(&format!(
                "{}  {}\n",
                fj["id"].as_str().unwrap_or(""),
                fj["status"].as_str().unwrap_or("")
            ));
            for uj in fj["upload_jobs"].as_array().into_iter().flatten() {
                let (size, got) = (
                    uj["size"].as_u64().unwrap_or(0),
                    uj["received"].as_u64().unwrap_or(0),
                );
                let pct = if size == 0 {
                    100.0
                } else {
                    100.0 * got as f64 / size as f64
                };
                out.push_str(&format!(
                    "  {}  {:>5} segments  {:>14}/{:<14} {:5.1}%\n",
                    uj["id"].as_str().unwrap_or(""),
                    uj["segments"],
                    got,
                    size,
                    pct
                ));
            }
        }
        out.trim_end().to_string()
    });
    Ok(())
}

/// `force-complete <write-token> [<files-job>]`: every unfinished files job when none is named.
pub async fn force_complete(ctx: &Ctx, wt: &str, fj: Option<&str>) -> Result<()> {
    let targets: Vec<String> = match fj {
        Some(f) => vec![f.to_string()],
        None => ctx
            .client
            .files_jobs(wt)
            .await?
            .as_array()
            .into_iter()
            .flatten()
            .filter(|j| j["status"] != "COMPLETED")
            .filter_map(|j| j["id"].as_str().map(str::to_string))
            .collect(),
    };
    let mut results = Vec::new();
    for f in &targets {
        results.push(ctx.client.force_completion(wt, f).await?);
    }
    let v = json!(results);
    ctx.print(&v, |v| {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{}: dropped {}",
                    r["id"].as_str().unwrap_or(""),
                    r["files_dropped"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `diff <a> <b>`: paths added, removed and changed (by blake3, else by size) between two trees.
pub async fn diff(ctx: &Ctx, a: &str, b: &str) -> Result<()> {
    let (ta, tb) = (
        flatten(&ctx.client.files(a).await?),
        flatten(&ctx.client.files(b).await?),
    );
    let mut rows = Vec::new();
    for (path, (size, hash)) in &ta {
        match tb.get(path) {
            None => rows.push(json!({"change": "removed", "path": path, "size": size})),
            Some((s2, h2)) if s2 != size || (hash.is_some() && h2.is_some() && hash != h2) => {
                rows.push(json!({"change": "changed", "path": path, "size": s2, "old_size": size}));
            }
            Some(_) => {}
        }
    }
    for (path, (size, _)) in tb.iter().filter(|(p, _)| !ta.contains_key(*p)) {
        rows.push(json!({"change": "added", "path": path, "size": size}));
    }
    rows.sort_by(|x, y| x["path"].as_str().cmp(&y["path"].as_str()));
    let v = json!(rows);
    ctx.print(&v, |_| {
        rows.iter()
            .map(|r| {
                let sign = match r["change"].as_str() {
                    Some("added") => "+",
                    Some("removed") => "-",
                    _ => "~",
                };
                format!("{sign} {}  {}", r["path"].as_str().unwrap_or(""), r["size"])
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// Every file of a `files` tree: path → (size, blake3 if known).
fn flatten(tree: &Value) -> BTreeMap<String, (u64, Option<String>)> {
    let mut entries = Vec::new();
    crate::cli::walk_tree(tree, "", &mut entries);
    entries
        .into_iter()
        .filter(|e| !e.directory)
        .map(|e| (e.path, (e.size, e.hash)))
        .collect()
}
