//! Disk full: the data dir on a small tmpfs, filled up by a filler file. Uploads must fail with
//! 507 and a JSON `no_space` error, nothing already stored may be damaged, the server keeps
//! serving, and once the filler is deleted the same upload resumes and completes.
//!
//! Needs permission to mount a tmpfs (root, as in CI); without it the test says so and passes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{call, curl, new_object, pattern, upload_files, Server};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(at.to_path_buf()))
}

/// A 160 MiB tmpfs at `dir/mnt` (unmounted when the guard drops), or `None` without the right
/// to mount one.
fn small_disk(dir: &Path) -> Option<(Mount, std::path::PathBuf)> {
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    mount_tmpfs(&mnt, "160m").map(|m| (m, mnt))
}

/// [`small_disk`] with the data dir on it and a config file of `toml` beside: (the mount guard,
/// the mount point, the data dir, the `--config` arguments).
fn small_disk_with(dir: &Path, toml: &str) -> Option<(Mount, PathBuf, PathBuf, Vec<String>)> {
    let (mount, mnt) = small_disk(dir)?;
    let config = dir.join("cairn.toml");
    std::fs::write(&config, toml).unwrap();
    let args = vec!["--config".to_string(), config.display().to_string()];
    Some((mount, mnt.clone(), mnt.join("data"), args))
}

fn start(data: &Path, port: u16, args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_args(data, port, &args)
}

/// POSTs `data` to the upload job at `url` in 4 MiB pieces from its start until one is
/// refused: (the refusal, the bytes acknowledged before it).
fn upload_until_refused(s: &Server, url: &str, data: &[u8]) -> (common::Reply, usize) {
    let mut at = 0usize;
    loop {
        assert!(at < data.len(), "all {} bytes fitted", data.len());
        let r = post_piece(s, url, data, at, (4 << 20).min(data.len() - at));
        if r.status != 200 {
            return (r, at);
        }
        at = r.json()["received"].as_u64().unwrap() as usize;
    }
}

/// `len` bytes stored as `kept.bin` in a new object before anything fills the disk: (the bytes,
/// the version).
fn store_kept(s: &Server, dir: &Path, seed: u64, len: usize) -> (Vec<u8>, String) {
    let kept = pattern(seed, len);
    let kept_file = dir.join("kept.bin");
    std::fs::write(&kept_file, &kept).unwrap();
    let (_, _, wt) = new_object(s);
    let v1 = upload_files(s, &wt, &[("kept.bin", &kept_file)]);
    (kept, v1)
}

fn avail(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Fills the file system at `mnt` with a file of zeros, leaving about `left` bytes free (tmpfs
/// allocates on write: written for real so the space is taken); returns its path.
fn fill_leaving(mnt: &Path, left: u64) -> std::path::PathBuf {
    let filler = mnt.join("filler");
    let room = avail(mnt).saturating_sub(left);
    std::io::copy(
        &mut std::io::Read::take(std::fs::File::open("/dev/zero").unwrap(), room),
        &mut std::fs::File::create(&filler).unwrap(),
    )
    .unwrap();
    filler
}

/// A files job adding one file of `len` bytes to draft `wt`: (files job, upload job, data URL).
fn one_file_job(s: &Server, wt: &str, len: usize) -> (String, String, String) {
    let job = call(
        s,
        "POST",
        &format!("/q/{wt}/file_jobs"),
        Some(&format!(
            r#"{{"ops":[{{"path":"big.bin","type":"file","size":{len}}}]}}"#
        )),
        201,
    );
    let fj = job["id"].as_str().unwrap().to_string();
    let uj = job["jobs"][0].as_str().unwrap().to_string();
    let url = format!("/q/{wt}/file_jobs/{fj}/{uj}");
    (fj, uj, url)
}

/// POSTs `data[at..at+n]` to the upload job with a Content-Range; returns the reply.
fn post_piece(s: &Server, url: &str, data: &[u8], at: usize, n: usize) -> common::Reply {
    let piece = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(piece.path(), &data[at..at + n]).unwrap();
    let r = common::try_curl(
        &s.url(url),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            &format!("Content-Range: bytes {at}-{}/{}", at + n - 1, data.len()),
            "--data-binary",
            &format!("@{}", piece.path().display()),
        ],
    );
    r.unwrap_or_else(|e| {
        let log = s.log_lines();
        panic!(
            "{url}: {e}; server log: {:?}",
            &log[log.len().saturating_sub(6)..]
        )
    })
}

fn skip_of(s: &Server, wt: &str, fj: &str, uj: &str) -> u64 {
    let st = call(
        s,
        "GET",
        &format!("/q/{wt}/file_jobs/{fj}/uploads/{uj}?start=0&limit=1000"),
        None,
        200,
    );
    st["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["skip"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_full_disk_gives_507_keeps_stored_data_and_recovers_when_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "part_size = 67108864\npack_size = 4194304\nmin_free_space = 0\n";
    let Some((_mount, mnt, data, args)) = small_disk_with(dir.path(), toml) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let s = start(&data, common::free_port(), &args);

    // Something stored before the disk fills.
    let (kept, v1) = store_kept(&s, dir.path(), 1, 3 << 20);

    // Fill the file system, leaving ~8 MiB, then upload 40 MiB.
    let filler = fill_leaving(&mnt, 8 << 20);
    let big = pattern(2, 40 << 20);
    let (_, obj, wt2) = new_object(&s);
    let (fj, uj, url) = one_file_job(&s, &wt2, big.len());
    let piece = 1 << 20;
    let mut at = 0usize;
    let full = loop {
        assert!(at < big.len(), "40 MiB fitted into ~8 MiB of free space");
        let r = post_piece(&s, &url, &big, at, piece);
        if r.status != 200 {
            break r;
        }
        at = r.json()["received"].as_u64().unwrap() as usize;
    };
    assert_eq!(full.status, 507, "{}", String::from_utf8_lossy(&full.body));
    assert_eq!(full.kind(), "no_space");
    let acked = at as u64;
    let skip = skip_of(&s, &wt2, &fj, &uj);
    assert!(
        skip >= acked,
        "skip {skip} is behind the acknowledged {acked}"
    );
    println!(
        "disk full after {acked} bytes acknowledged (skip {skip}): {}",
        String::from_utf8_lossy(&full.body)
    );

    // What was stored is intact and still served.
    let r = curl(&s.url(&format!("/q/{v1}/files/kept.bin")), &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.body == kept,
        "a stored file changed after the disk filled"
    );

    // Free the space: the same upload resumes from its skip and completes.
    std::fs::remove_file(&filler).unwrap();
    let mut at = skip_of(&s, &wt2, &fj, &uj) as usize;
    while at < big.len() {
        let n = piece.min(big.len() - at);
        let r = post_piece(&s, &url, &big, at, n);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        at = r.json()["received"].as_u64().unwrap() as usize;
    }
    let v2 = call(&s, "POST", &format!("/q/{wt2}"), None, 200)["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let r = curl(&s.url(&format!("/q/{v2}/files/big.bin")), &[]);
    assert!(
        r.status == 200 && r.body == big,
        "the resumed upload reads back"
    );
    let fsck = call(&s, "POST", "/admin/fsck", None, 200);
    assert_eq!(fsck["clean"], true, "{fsck}");
    assert!(!obj.is_empty());
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Stops the server with SIGTERM and returns how it exited.
fn terminate(s: &mut Server) -> std::process::ExitStatus {
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    s.child.wait().unwrap()
}

/// The store fills the disk itself (QA): clients retrying the refused upload must not make the
/// server keep their bytes (memory) nor write them once space is freed (which filled the disk
/// again); a stop and a start with the disk still full must work (RocksDB's info LOG, written on
/// the same disk by a library built with assertions, aborted both); and once space is freed the
/// upload resumes and completes.
#[test]
fn retries_against_a_full_disk_keep_nothing_and_a_full_disk_stops_and_starts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // Packs larger than what is uploaded: the open pack is where refused bytes would pile up.
    let toml = "part_size = 67108864\npack_size = 134217728\nmin_free_space = 0\n";
    let Some((_mount, mnt, data, args)) = small_disk_with(dir.path(), toml) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let port = common::free_port();
    let mut s = start(&data, port, &args);
    // RocksDB's info LOG is not on the data disk (where, once full, it aborted the process).
    let logs: Vec<_> = std::fs::read_dir(data.join("index"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("LOG"))
        .collect();
    assert!(logs.is_empty(), "{logs:?}");
    let (kept, v1) = store_kept(&s, dir.path(), 3, 1 << 20);

    // A filler leaves ~12 MiB; the upload takes the rest, until the store is refused.
    let filler = fill_leaving(&mnt, 12 << 20);
    let big = pattern(4, 48 << 20);
    let (_, _, wt2) = new_object(&s);
    let (fj, uj, url) = one_file_job(&s, &wt2, big.len());
    let piece = 4 << 20;
    let (refused, _) = upload_until_refused(&s, &url, &big);
    assert_eq!(
        refused.status,
        507,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    // Clients retry (`cairn upload` does, for any 5xx): each is refused, and none is kept.
    let before = rss_kib(s.child.id());
    for _ in 0..20 {
        let at = skip_of(&s, &wt2, &fj, &uj) as usize;
        let r = post_piece(&s, &url, &big, at, piece.min(big.len() - at));
        assert_eq!(r.status, 507, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.kind(), "no_space");
    }
    let grown = rss_kib(s.child.id()).saturating_sub(before);
    assert!(
        grown < 24 << 10,
        "20 refused 4 MiB uploads grew the server by {grown} KiB"
    );
    let r = curl(&s.url(&format!("/q/{v1}/files/kept.bin")), &[]);
    assert!(r.status == 200 && r.body == kept, "stored data is served");

    let status = |s: &Server| call(s, "GET", &format!("/q/{wt2}/file_jobs/{fj}"), None, 200);
    let failed = status(&s);
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert!(failed["error"].is_string(), "{failed}");
    // A request that brings no bytes changes nothing: still FAILED, with the same error.
    let empty = common::try_curl(&s.url(&url), &["-X", "POST", "--data-binary", ""]).unwrap();
    assert_eq!(
        empty.status,
        200,
        "{}",
        String::from_utf8_lossy(&empty.body)
    );
    assert_eq!(status(&s), failed);

    // Space freed, same server: the failed write is written again within about a second (an
    // upload may be refused until then), and the upload resumes from its skip and completes;
    // nothing refilled the space. Taking data again, the job is no longer FAILED, its error gone.
    std::fs::remove_file(&filler).unwrap();
    let mut at = skip_of(&s, &wt2, &fj, &uj) as usize;
    let mut refused = 0;
    while at < big.len() {
        let r = post_piece(&s, &url, &big, at, piece.min(big.len() - at));
        if r.status == 507 && refused < 5 {
            refused += 1;
            std::thread::sleep(std::time::Duration::from_millis(1200));
            continue;
        }
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        at = r.json()["received"].as_u64().unwrap() as usize;
        let now = status(&s);
        assert!(now.get("error").is_none(), "{now}");
        assert_ne!(now["status"], "FAILED", "{now}");
    }
    assert_eq!(status(&s)["status"], "COMPLETED");
    let v2 = call(&s, "POST", &format!("/q/{wt2}"), None, 200)["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let r = curl(&s.url(&format!("/q/{v2}/files/big.bin")), &[]);
    assert!(
        r.status == 200 && r.body == big,
        "the resumed upload reads back"
    );

    // Full again, to the last byte: stopped and started while full, and still serving.
    let _ = std::io::copy(
        &mut std::fs::File::open("/dev/zero").unwrap(),
        &mut std::fs::File::create(mnt.join("filler2")).unwrap(),
    ); // until ENOSPC
    let stopped = terminate(&mut s);
    let log = s.log_lines();
    assert!(
        stopped.success(),
        "stopping on a full disk: {stopped}: {:?}",
        &log[log.len().saturating_sub(8)..]
    );
    let mut s = start(&data, port, &args);
    for (v, path, bytes) in [(&v1, "kept.bin", &kept), (&v2, "big.bin", &big)] {
        let r = curl(&s.url(&format!("/q/{v}/files/{path}")), &[]);
        assert!(
            r.status == 200 && r.body == *bytes,
            "{path} served after a start on a full disk"
        );
    }
    let fsck = call(&s, "POST", "/admin/fsck", None, 200);
    assert_eq!(fsck["clean"], true, "{fsck}");
    assert!(terminate(&mut s).success());
}

/// Posts all of `data` to the upload job at `url`, from its skip; a 507 while the pack writer
/// has yet to write again what the full disk refused is retried a few times, a second apart.
fn upload_all(s: &Server, wt: &str, (fj, uj, url): (&str, &str, &str), data: &[u8]) {
    let mut at = skip_of(s, wt, fj, uj) as usize;
    let mut refused = 0;
    while at < data.len() {
        let r = post_piece(s, url, data, at, (4 << 20).min(data.len() - at));
        if r.status == 507 && refused < 5 {
            refused += 1;
            std::thread::sleep(std::time::Duration::from_millis(1200));
            continue;
        }
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        at = r.json()["received"].as_u64().unwrap() as usize;
    }
}

/// On a disk too full to repack (QA23 D3: gc answered 507 and freed nothing), gc frees a
/// deleted upload's space where it lies: packs with nothing live are deleted, and the others,
/// the open one included, have their dead records' blocks freed (hole punching), which needs
/// no room. Uploads then go on, nothing live is touched, and a gc with room repacks as usual.
#[test]
fn gc_frees_a_deleted_upload_s_space_on_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    // Small packs: the upload spans a pack shared with live data, packs of its own, and the
    // open pack.
    let toml = "part_size = 67108864\npack_size = 16777216\nmin_free_space = 0\n";
    let Some((_mount, mnt, data, args)) = small_disk_with(dir.path(), toml) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let port = common::free_port();
    let mut s = start(&data, port, &args);
    let (kept, v1) = store_kept(&s, dir.path(), 5, 1 << 20);

    let filler = fill_leaving(&mnt, 40 << 20);
    let big = pattern(6, 64 << 20);
    let (_, _, wt2) = new_object(&s);
    let (_, _, url) = one_file_job(&s, &wt2, big.len());
    let (refused, _) = upload_until_refused(&s, &url, &big);
    assert_eq!(
        refused.status,
        507,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    call(&s, "DELETE", &format!("/q/{wt2}"), None, 200);
    let before = avail(&mnt);
    let pack_bytes = |s: &Server| call(s, "GET", "/admin/stats", None, 200)["pack_bytes"].as_u64();
    let held = pack_bytes(&s).unwrap();
    let gc = call(&s, "POST", "/admin/gc", None, 200);
    let freed = avail(&mnt).saturating_sub(before);
    assert!(freed >= 24 << 20, "gc freed {freed} bytes: {gc}");
    // Stats count what the packs hold on disk, holes left out (as `du`).
    let now = pack_bytes(&s).unwrap();
    assert!(
        now + freed - (1 << 20) <= held,
        "pack_bytes {held} -> {now}, df freed {freed}"
    );
    assert!(gc["packs_punched"].as_u64().unwrap() >= 2, "{gc}");
    assert!(gc["packs_deleted"].as_u64().unwrap() >= 1, "{gc}");
    let r = curl(&s.url(&format!("/q/{v1}/files/kept.bin")), &[]);
    assert!(r.status == 200 && r.body == kept, "kept data is served");

    // Uploads go on into the freed space, and every stored byte checks out.
    let more = pattern(7, 12 << 20);
    let (_, _, wt3) = new_object(&s);
    let (fj, uj, url) = one_file_job(&s, &wt3, more.len());
    upload_all(&s, &wt3, (&fj, &uj, &url), &more);
    let v3 = call(&s, "POST", &format!("/q/{wt3}"), None, 200)["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let fsck = call(&s, "POST", "/admin/fsck", None, 200);
    assert_eq!(fsck["clean"], true, "{fsck}");

    // With room again, gc repacks what it could only punch; all survives a restart.
    std::fs::remove_file(&filler).unwrap();
    let before = avail(&mnt);
    let gc = call(&s, "POST", "/admin/gc", None, 200);
    assert!(gc["packs_repacked"].as_u64().unwrap() >= 1, "{gc}");
    // A punched pack repacked frees what it still held, not its length (QA27 B4).
    let grew = avail(&mnt) as i64 - before as i64;
    let reported = gc["disk_bytes_freed"].as_i64().unwrap();
    assert!(
        reported <= grew + (1 << 20),
        "reported {reported}, df grew {grew}: {gc}"
    );
    assert_eq!(gc["packs_punched"], 0, "{gc}");
    assert!(terminate(&mut s).success());
    let mut s = start(&data, port, &args);
    for (v, path, bytes) in [(&v1, "kept.bin", &kept), (&v3, "big.bin", &more)] {
        let r = curl(&s.url(&format!("/q/{v}/files/{path}")), &[]);
        assert!(r.status == 200 && r.body == *bytes, "{path} served");
    }
    let fsck = call(&s, "POST", "/admin/fsck", None, 200);
    assert_eq!(fsck["clean"], true, "{fsck}");
    assert!(terminate(&mut s).success());
}

/// Uploads stop at `min_free_space`, so the index always has room (QA27 B1: once RocksDB's log
/// write hit `ENOSPC`, every index write, deletes and gc included, stayed 507 until a restart,
/// even with room made; B2: a start after `kill -9` on the full disk could not open the index).
/// Here metadata writes, a new library, deleting the upload and gc all work on the disk the
/// uploads filled; uploads go on after gc; a start after `kill -9` opens.
#[test]
fn the_index_keeps_room_on_a_disk_the_uploads_filled() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "part_size = 67108864\npack_size = 16777216\nmin_free_space = 50331648\n";
    let Some((_mount, mnt, data, args)) = small_disk_with(dir.path(), toml) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let port = common::free_port();
    let mut s = start(&data, port, &args);
    let (kept, v1) = store_kept(&s, dir.path(), 8, 1 << 20);

    let _filler = fill_leaving(&mnt, 80 << 20);
    let big = pattern(9, 64 << 20);
    let (_, _, wt2) = new_object(&s);
    let (_, _, url) = one_file_job(&s, &wt2, big.len());
    let (refusal, at) = upload_until_refused(&s, &url, &big);
    assert_eq!((refusal.status, refusal.kind()), (507, "no_space".into()));
    let reason = refusal.json()["errors"][0]["reason"].to_string();
    assert!(reason.contains("min_free_space"), "{reason}");
    assert!(
        at >= 16 << 20,
        "uploads used the room above the reserve: {at} bytes"
    );
    assert!(
        avail(&mnt) >= 40 << 20,
        "the reserve is free: {}",
        avail(&mnt)
    );

    // Index writes that add go on into the reserve, never below its half (24 MiB), however
    // large and however many at once (QA28 C1: concurrent 16 MiB metadata writes all passed a
    // check of the free space alone and filled the disk): a 15 MiB document is refused (it
    // takes twice that), six 8 MiB documents at once, then 200 metadata writes of 256 KiB
    // (each rewrites its draft's document, up to 2 MiB).
    let drafts: Vec<String> = (0..6).map(|_| new_object(&s).2).collect();
    let (_, _, wt3) = new_object(&s);
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, format!("{{\"blob\":\"{}\"}}", "h".repeat(15 << 20))).unwrap();
    let url = s.url(&format!("/q/{wt3}/meta"));
    let r = curl(
        &url,
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", huge.display()),
        ],
    );
    assert_eq!((r.status, r.kind()), (507, "no_space".into()));
    let reason = r.json()["errors"][0]["reason"].to_string();
    assert!(reason.contains("kept for deletes and gc"), "{reason}");
    let big_doc = dir.path().join("big.json");
    std::fs::write(
        &big_doc,
        format!("{{\"blob\":\"{}\"}}", "b".repeat(8 << 20)),
    )
    .unwrap();
    let at_big = format!("@{}", big_doc.display());
    std::thread::scope(|sc| {
        for wt in &drafts {
            let (url, at_big) = (s.url(&format!("/q/{wt}/meta")), &at_big);
            sc.spawn(move || curl(&url, &["-X", "PUT", "--data-binary", at_big]));
        }
    });
    let doc = format!("{{\"blob\":\"{}\"}}", "m".repeat(256 << 10));
    let doc_file = dir.path().join("doc.json");
    std::fs::write(&doc_file, &doc).unwrap();
    let at_doc = format!("@{}", doc_file.display());
    let put = |i: usize| {
        let url = s.url(&format!("/q/{wt3}/meta/k{}", i % 8));
        curl(&url, &["-X", "PUT", "--data-binary", &at_doc])
    };
    // Rewrites of the same keys reuse their room once the index has flushed: each is either
    // done or refused for room, never anything else.
    for r in (0..200).map(put).filter(|r| r.status != 200) {
        assert_eq!((r.status, r.kind()), (507, "no_space".into()));
        let reason = r.json()["errors"][0]["reason"].to_string();
        assert!(reason.contains("kept for deletes and gc"), "{reason}");
    }
    std::thread::sleep(std::time::Duration::from_millis(500)); // the index's flushes
    let left = avail(&mnt);
    assert!(
        left >= 22 << 20,
        "the index's writes left {left} bytes free"
    );
    // A small write that fits still goes.
    call(&s, "POST", "/qlibs", Some(r#"{"name":"x"}"#), 201);
    // What frees space still writes the index: deletes and gc.
    call(&s, "DELETE", &format!("/q/{wt3}"), None, 200);
    call(&s, "DELETE", &format!("/q/{wt2}"), None, 200);
    let before = avail(&mnt);
    let gc = call(&s, "POST", "/admin/gc", None, 200);
    assert!(avail(&mnt) >= before + (8 << 20), "gc freed room: {gc}");
    call(&s, "POST", "/qlibs", Some(r#"{"name":"more"}"#), 201);

    // Uploads go on; all survives a kill -9 and a start.
    let more = pattern(10, 8 << 20);
    let (_, _, wt4) = new_object(&s);
    let (fj, uj, url) = one_file_job(&s, &wt4, more.len());
    upload_all(&s, &wt4, (&fj, &uj, &url), &more);
    let v4 = call(&s, "POST", &format!("/q/{wt4}"), None, 200)["hash"]
        .as_str()
        .unwrap()
        .to_string();

    // Metadata written just before uploads, and flushed by the index after them, counts
    // against the uploads' room (QA29 D1: the disk went to 30 KB).
    let drafts: Vec<String> = (0..4).map(|_| new_object(&s).2).collect();
    std::thread::scope(|sc| {
        for wt in &drafts {
            let (url, at_big) = (s.url(&format!("/q/{wt}/meta")), &at_big);
            sc.spawn(move || curl(&url, &["-X", "PUT", "--data-binary", at_big]));
        }
    });
    let (_, _, wt5) = new_object(&s);
    let (_, _, url) = one_file_job(&s, &wt5, big.len());
    let (refused, _) = upload_until_refused(&s, &url, &big);
    assert_eq!(refused.status, 507);
    std::thread::sleep(std::time::Duration::from_millis(1500)); // the index's flushes
    let left = avail(&mnt);
    assert!(
        left >= 22 << 20,
        "metadata, then uploads, left {left} bytes free"
    );

    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let mut s = start(&data, port, &args);
    for (v, path, bytes) in [(&v1, "kept.bin", &kept), (&v4, "big.bin", &more)] {
        let r = curl(&s.url(&format!("/q/{v}/files/{path}")), &[]);
        assert!(
            r.status == 200 && r.body == *bytes,
            "{path} served after kill -9"
        );
    }
    let fsck = call(&s, "POST", "/admin/fsck", None, 200);
    assert_eq!(fsck["clean"], true, "{fsck}");
    assert!(terminate(&mut s).success());
}
