//! Crash loops against the real `cairn serve`: several clients upload over HTTP (curl) while the
//! server is `kill -9`ed at random moments (during data POSTs, finalizes and gc/repack) and
//! restarted; the clients resume from the server's upload status.
//!
//! Checked throughout: an upload job's `skip` never goes back past a byte the server
//! acknowledged. Checked at the end: every finalized version reads back byte-exact, `fsck` is
//! clean (which includes "no orphaned pack file").
//!
//! The power-loss variant also makes the kill lose what was not fsynced: the server logs its pack
//! writes and fsyncs (`CAIRN_TEST_SYNC_LOG`), and after each kill the test cuts and garbles every
//! pack byte that no completed fsync covered, as a power cut may. RocksDB writes are all made with
//! `sync=true`, so its WAL fsync is the ordering point there and a kill models a power cut for it.
//!
//! `CAIRN_CRASH_KILLS` sets the number of kills (default 8 per test; `just soak` runs 50).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{try_curl, Reply, Server};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const WORKERS: usize = 3;
const PIECE_MAX: u64 = 512 << 10;

fn kills() -> usize {
    std::env::var("CAIRN_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

fn content(seed: u64, len: u64) -> Vec<u8> {
    common::pattern(seed, len as usize)
}

/// State shared by the clients and the killer.
#[derive(Default)]
struct Shared {
    port: u16,
    /// Bigger files and pieces (the power-loss run): a POST then writes chunks while its body is
    /// still arriving, long before the commit's fsync, so a kill finds unsynced bytes.
    big: bool,
    stop: AtomicBool,
    finalizing: AtomicUsize,
    posting: AtomicUsize,
    acked_bytes: AtomicU64,
    resume_checks: AtomicU64,
}

impl Shared {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Reply, String> {
        let mut args = vec!["-m", "60", "-X", method];
        if let Some(b) = body {
            args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        try_curl(&self.url(path), &args)
    }

    /// Waits until the (restarted) server answers.
    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while try_curl(&self.url("/config"), &["-m", "5"]).is_err() {
            assert!(Instant::now() < deadline, "the server did not come back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A call that must end in `want`; retried (after the server is back) when no reply came.
    /// Only for calls that are harmless to repeat.
    fn must(&self, method: &str, path: &str, body: Option<&str>, want: u16) -> Value {
        loop {
            match self.call(method, path, body) {
                Ok(r) if r.status == want => {
                    return if r.body.is_empty() {
                        Value::Null
                    } else {
                        r.json()
                    }
                }
                Ok(r) => panic!(
                    "{method} {path}: {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ),
                Err(_) => self.wait_up(),
            }
        }
    }
}

struct FileSpec {
    path: String,
    seed: u64,
    size: u64,
}

struct Version {
    hash: String,
    files: Vec<FileSpec>,
}

fn pick_size(rng: &mut impl Rng, big: bool) -> u64 {
    match rng.gen_range(0..10) {
        0 => 0,
        1..=3 => rng.gen_range(1..100_000),
        _ if big => rng.gen_range(3_000_000..9_000_000),
        _ => rng.gen_range(100_000..3_000_000),
    }
}

/// A new object with an open draft: (object id, write token).
fn new_object(sh: &Shared, name: &str) -> (String, String) {
    let lib = sh.must(
        "POST",
        "/qlibs",
        Some(&json!({ "name": name }).to_string()),
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let obj = sh.must("POST", &format!("/qlibs/{lib}/q"), None, 201);
    (
        obj["id"].as_str().unwrap().to_string(),
        obj["write_token"].as_str().unwrap().to_string(),
    )
}

fn new_draft(sh: &Shared, obj: &str) -> String {
    sh.must("POST", &format!("/qid/{obj}"), None, 200)["write_token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn version_hashes(sh: &Shared, obj: &str) -> Vec<String> {
    sh.must("GET", &format!("/qid/{obj}"), None, 200)["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["hash"].as_str().unwrap().to_string())
        .collect()
}

/// One segment of an upload job, as the upload status lists it.
struct Seg {
    path: String,
    off: u64,
    len: u64,
    skip: u64,
}

fn upload_status(sh: &Shared, wt: &str, fj: &str, uj: &str) -> Option<Vec<Seg>> {
    let r = sh
        .call(
            "GET",
            &format!("/q/{wt}/file_jobs/{fj}/uploads/{uj}?start=0&limit=1000"),
            None,
        )
        .ok()?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["next"], -1, "one page holds every segment here");
    Some(
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Seg {
                path: s["path"].as_str().unwrap().to_string(),
                off: s["off"].as_u64().unwrap(),
                len: s["len"].as_u64().unwrap(),
                skip: s["skip"].as_u64().unwrap(),
            })
            .collect(),
    )
}

/// Bytes `[at, at+n)` of the upload job's stream (its segments, in order).
fn job_bytes(segs: &[Seg], data: &HashMap<String, Vec<u8>>, at: u64, n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize);
    let mut start = 0;
    for s in segs {
        let (from, to) = (at.max(start), (at + n).min(start + s.len));
        if from < to {
            let f = &data[&s.path];
            let o = (s.off + from - start) as usize;
            out.extend_from_slice(&f[o..o + (to - from) as usize]);
        }
        start += s.len;
    }
    assert_eq!(out.len() as u64, n);
    out
}

/// Sends an upload job's bytes in random pieces until it is complete, resuming from the
/// server's status after every failure and checking it against what was acknowledged.
fn upload_job(
    sh: &Shared,
    (wt, fj, uj): (&str, &str, &str),
    data: &HashMap<String, Vec<u8>>,
    rng: &mut impl Rng,
) {
    let mut acked = 0u64;
    let mut offset: Option<(Vec<Seg>, u64)> = None;
    loop {
        let (segs, at) = match offset.take() {
            Some(known) => known,
            None => {
                let Some(segs) = upload_status(sh, wt, fj, uj) else {
                    sh.wait_up();
                    continue;
                };
                let received: u64 = segs.iter().map(|s| s.skip).sum();
                assert!(
                    received >= acked,
                    "{uj}: skip {received} is behind the acknowledged {acked}"
                );
                if acked > 0 {
                    sh.resume_checks.fetch_add(1, SeqCst);
                }
                (segs, received)
            }
        };
        let size: u64 = segs.iter().map(|s| s.len).sum();
        if at == size {
            return;
        }
        let piece_max = if sh.big { 8 * PIECE_MAX } else { PIECE_MAX };
        let n = rng.gen_range(1..=piece_max).min(size - at);
        let piece = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(piece.path(), job_bytes(&segs, data, at, n)).unwrap();
        let range = format!("Content-Range: bytes {at}-{}/{size}", at + n - 1);
        let body = format!("@{}", piece.path().display());
        sh.posting.fetch_add(1, SeqCst);
        let r = try_curl(
            &sh.url(&format!("/q/{wt}/file_jobs/{fj}/{uj}")),
            &[
                "-m",
                "60",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/octet-stream",
                "-H",
                &range,
                "--data-binary",
                &body,
            ],
        );
        sh.posting.fetch_sub(1, SeqCst);
        match r {
            Ok(r) if r.status == 200 => {
                let received = r.json()["received"].as_u64().unwrap();
                assert_eq!(received, at + n, "{uj}: the reply's offset");
                acked = received;
                sh.acked_bytes.fetch_add(n, SeqCst);
                offset = Some((segs, received));
            }
            Ok(r) => panic!(
                "upload {uj} at {at}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
            Err(_) => sh.wait_up(),
        }
    }
}

/// Uploads `files` into the draft `wt` and finalizes it; the version hash, or `None` when the
/// files job could not be created (the draft is then replaced and the round starts over).
fn upload_round(
    sh: &Shared,
    obj: &str,
    wt: &mut String,
    files: &[FileSpec],
    known: &[String],
    rng: &mut impl Rng,
) -> Option<String> {
    let ops: Vec<Value> = files
        .iter()
        .map(|f| json!({"path": f.path, "type": "file", "size": f.size}))
        .collect();
    let job = match sh.call(
        "POST",
        &format!("/q/{wt}/file_jobs"),
        Some(&json!({ "ops": ops }).to_string()),
    ) {
        Ok(r) if r.status == 201 => r.json(),
        Ok(r) => panic!(
            "files job: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ),
        Err(_) => {
            // Maybe created, maybe not: start over in a fresh draft.
            sh.wait_up();
            *wt = new_draft(sh, obj);
            return None;
        }
    };
    let data: HashMap<String, Vec<u8>> = files
        .iter()
        .map(|f| (f.path.clone(), content(f.seed, f.size)))
        .collect();
    let fj = job["id"].as_str().unwrap();
    for uj in job["jobs"].as_array().unwrap() {
        upload_job(sh, (wt, fj, uj.as_str().unwrap()), &data, rng);
    }
    loop {
        sh.finalizing.fetch_add(1, SeqCst);
        let r = sh.call("POST", &format!("/q/{wt}"), None);
        sh.finalizing.fetch_sub(1, SeqCst);
        match r {
            Ok(r) if r.status == 200 => {
                let hash = r.json()["hash"].as_str().unwrap().to_string();
                *wt = new_draft(sh, obj);
                return Some(hash);
            }
            Ok(r) => panic!(
                "finalize: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
            Err(_) => {
                // The finalize either happened (a new version exists) or did not (retry it).
                sh.wait_up();
                if let Some(h) = version_hashes(sh, obj)
                    .into_iter()
                    .find(|h| !known.contains(h))
                {
                    *wt = new_draft(sh, obj);
                    return Some(h);
                }
            }
        }
    }
}

/// A client: rounds of 1–3 files into its own object until told to stop.
fn client(sh: &Shared, w: usize, seed: u64) -> Vec<Version> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (obj, mut wt) = new_object(sh, &format!("client{w}"));
    let mut versions: Vec<Version> = Vec::new();
    let mut round = 0u64;
    while !sh.stop.load(SeqCst) {
        let files: Vec<FileSpec> = (0..rng.gen_range(1..=3u64))
            .map(|i| FileSpec {
                path: format!("r{round}/f{i}.bin"),
                seed: ((w as u64) << 40) | (round << 8) | i,
                size: pick_size(&mut rng, sh.big),
            })
            .collect();
        let known: Vec<String> = versions.iter().map(|v| v.hash.clone()).collect();
        if let Some(hash) = upload_round(sh, &obj, &mut wt, &files, &known, &mut rng) {
            versions.push(Version { hash, files });
        }
        round += 1;
    }
    versions
}

/// Makes garbage for gc to collect and repack: objects uploaded, finalized and deleted.
fn churn(sh: &Shared, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    while !sh.stop.load(SeqCst) {
        let (obj, mut wt) = new_object(sh, "churn");
        let files = [FileSpec {
            path: "junk.bin".into(),
            seed: (1 << 60) | n,
            size: rng.gen_range(1_000_000..3_000_000),
        }];
        while upload_round(sh, &obj, &mut wt, &files, &[], &mut rng).is_none() {}
        loop {
            match sh.call("DELETE", &format!("/q/{obj}"), None) {
                Ok(r) if r.status == 204 || r.status == 200 || r.status == 404 => break,
                Ok(r) => panic!("delete: {} {}", r.status, String::from_utf8_lossy(&r.body)),
                Err(_) => sh.wait_up(),
            }
        }
        n += 1;
    }
}

/// What a power cut does to the packs after a kill: every byte that no completed fsync covered
/// (per the sync log) is cut off or replaced by random bytes. Returns the bytes affected.
fn power_cut(log: &Path, rng: &mut impl Rng) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // Per pack: writes (line number, offset, len), fsync starts and completed fsyncs.
    type Writes = Vec<(usize, u64, u64)>;
    let mut writes: HashMap<String, Writes> = HashMap::new();
    let mut begins: HashMap<(String, u64), usize> = HashMap::new();
    let mut durable_from: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let w: Vec<&str> = line.split(' ').collect();
        match w[..] {
            ["W", p, off, len] => writes.entry(p.into()).or_default().push((
                i,
                off.parse().unwrap(),
                len.parse().unwrap(),
            )),
            ["B", p, n] => {
                begins.insert((p.into(), n.parse().unwrap()), i);
            }
            ["E", p, n] => {
                let b = begins[&(p.to_string(), n.parse::<u64>().unwrap())];
                let e = durable_from.entry(p.into()).or_default();
                *e = (*e).max(b);
            }
            ["T", ..] => {}
            _ => panic!("bad sync log line {line:?}"),
        }
    }
    let mut affected = 0;
    for (path, ws) in writes {
        let synced_before = durable_from.get(&path).copied().unwrap_or(0);
        let Some(cut) = ws
            .iter()
            .filter(|(i, _, _)| *i > synced_before)
            .map(|(_, off, _)| *off)
            .min()
        else {
            continue;
        };
        let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) else {
            continue; // deleted by gc
        };
        let len = f.metadata().unwrap().len();
        if cut >= len {
            continue;
        }
        let keep = rng.gen_range(cut..=len);
        f.set_len(keep).unwrap();
        if rng.gen_bool(0.5) && keep > cut {
            let mut junk = vec![0u8; (keep - cut) as usize];
            rng.fill(&mut junk[..]);
            std::os::unix::fs::FileExt::write_all_at(&f, &junk, cut).unwrap();
        }
        affected += len - cut;
    }
    std::fs::write(log, b"").unwrap();
    affected
}

fn crash_loop(power_loss: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sync_log = dir.path().join("sync.log");
    let config = dir.path().join("cairn.toml");
    // Small parts and packs, so a round has several upload jobs and gc has packs to repack
    // (bigger parts for power loss: see `Shared::big`).
    let part_size = if power_loss { 8 << 20 } else { 1 << 20 };
    std::fs::write(
        &config,
        format!("part_size = {part_size}\npack_size = 4194304\nidle_timeout_secs = 10\n"),
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let log_path = sync_log.to_str().unwrap().to_string();
    let envs: Vec<(&str, &str)> = if power_loss {
        vec![("CAIRN_TEST_SYNC_LOG", &log_path)]
    } else {
        vec![]
    };
    let port = common::free_port();
    let mut server = Server::start_with(&data, port, &args, &envs);
    let sh = Arc::new(Shared {
        port,
        big: power_loss,
        ..Shared::default()
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED + u64::from(power_loss));
    let clients: Vec<_> = (0..WORKERS)
        .map(|w| {
            let sh = sh.clone();
            let seed = rng.gen();
            std::thread::spawn(move || client(&sh, w, seed))
        })
        .collect();
    let churner = {
        let sh = sh.clone();
        let seed = rng.gen();
        std::thread::spawn(move || churn(&sh, seed))
    };

    let mut during: HashMap<&str, u32> = HashMap::new();
    let mut cut_bytes = 0u64;
    // Unsynced pack bytes exist only for a few milliseconds around each commit, so a random
    // kill often finds none: the power-loss run goes on (up to 8 x) until its cuts hit some.
    let mut k = 0;
    while k < kills() || (power_loss && cut_bytes == 0 && k < 8 * kills()) {
        k += 1;
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..900)));
        if power_loss {
            // Prefer a moment with data in flight.
            let until = Instant::now() + Duration::from_secs(1);
            while sh.posting.load(SeqCst) == 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..20)));
        }
        let gc = rng.gen_bool(0.3).then(|| {
            let sh = sh.clone();
            let h = std::thread::spawn(move || sh.call("POST", "/admin/gc", None));
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..40)));
            h
        });
        let moment = if gc.as_ref().is_some_and(|h| !h.is_finished()) {
            "gc"
        } else if sh.finalizing.load(SeqCst) > 0 {
            "finalize"
        } else if sh.posting.load(SeqCst) > 0 {
            "data POST"
        } else {
            "between requests"
        };
        *during.entry(moment).or_default() += 1;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        if power_loss {
            cut_bytes += power_cut(&sync_log, &mut rng);
        }
        server = Server::start_with(&data, port, &args, &envs);
        if let Some(h) = gc {
            let _ = h.join().unwrap();
        }
    }
    sh.stop.store(true, SeqCst);
    let versions: Vec<Vec<Version>> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    churner.join().unwrap();

    // Every finalized version reads back byte-exact, after one more restart.
    drop(server);
    let server = Server::start_with(&data, port, &args, &envs);
    let mut verified = 0u64;
    let mut count = 0;
    for v in versions.iter().flatten() {
        count += 1;
        for f in &v.files {
            let r = sh.call("GET", &format!("/q/{}/files/{}", v.hash, f.path), None);
            let r = r.unwrap();
            assert_eq!(r.status, 200, "{}:{}", v.hash, f.path);
            assert!(
                r.body == content(f.seed, f.size),
                "{}:{} differs",
                v.hash,
                f.path
            );
            verified += f.size;
        }
    }
    let gc = sh.must("POST", "/admin/gc", None, 200);
    let fsck = sh.must("POST", "/admin/fsck", None, 200);
    assert_eq!(fsck["clean"], true, "fsck: {fsck}");
    let kills: u32 = during.values().sum();
    println!(
        "{}: {kills} kills {during:?}; {} bytes acknowledged, {} resumes checked against them; \
         {count} versions, {verified} bytes verified; {cut_bytes} unsynced pack bytes cut or \
         garbled; final gc: {gc}",
        if power_loss { "power loss" } else { "kill -9" },
        sh.acked_bytes.load(SeqCst),
        sh.resume_checks.load(SeqCst),
    );
    assert!(count >= WORKERS, "too few versions finalized: {count}");
    assert!(
        sh.resume_checks.load(SeqCst) > 0,
        "no kill interrupted an upload job"
    );
    if power_loss {
        assert!(cut_bytes > 0, "the power cuts never hit unsynced bytes");
    }
    assert!(
        !server
            .log_lines()
            .iter()
            .any(|l| l.contains("corrupt") || l.contains("panicked")),
        "{:?}",
        server.log_lines()
    );
}

#[test]
fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    crash_loop(false);
}

#[test]
fn power_cuts_that_drop_unsynced_pack_bytes_lose_nothing_acknowledged() {
    crash_loop(true);
}
