//! The `cairn` CLI against a real server on loopback: a tree of 1,000 files uploaded with
//! `--parallel 8` and every file fetched back with `cairn get`; an upload killed with SIGKILL and
//! run again, which must finish and send only what the server lacked.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Server, TOKEN};

/// `cairn args…` against `s`, with its token and `state` as the CLI's state directory.
fn cairn_cmd(s: &Server, state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.args(args)
        .env("CAIRN_SERVER", s.url(""))
        .env("CAIRN_TOKEN", TOKEN)
        .env("CAIRN_STATE_DIR", state);
    c
}

fn cairn(s: &Server, state: &Path, args: &[&str]) -> Output {
    cairn_cmd(s, state, args).output().unwrap()
}

/// [`cairn`] started in the background, its output discarded.
fn spawn_cairn(s: &Server, state: &Path, args: &[&str]) -> std::process::Child {
    cairn_cmd(s, state, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn fill(path: &Path, seed: u64, len: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, common::pattern(seed, len)).unwrap();
}

fn new_object(s: &Server, state: &Path) -> String {
    let lib = ok(cairn(s, state, &["lib", "create", "cli"]));
    ok(cairn(s, state, &["object", "create", &lib]))
}

/// Names that mean something in a URL (`%41` is `A` once decoded, `?` starts a query, `#` a
/// fragment) still name their own file through `get` and `cat`.
#[test]
fn names_with_url_characters_come_back_as_themselves() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("pc");
    let names = [
        "x%41.txt",
        "xA.txt",
        "what?.txt",
        "a#b.txt",
        "sp ace é+.txt",
    ];
    for (i, n) in names.iter().enumerate() {
        fill(&tree.join(n), 100 + i as u64, 1000 + i);
    }
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    ok(cairn(&s, &state, &["upload", &obj, tree.to_str().unwrap()]));
    let dest = work.path().join("got");
    for n in names {
        let want = std::fs::read(tree.join(n)).unwrap();
        let target = format!("{obj}:pc/{n}");
        let cat = cairn(&s, &state, &["cat", &target]);
        assert!(
            cat.status.success(),
            "cat {n}: {}",
            String::from_utf8_lossy(&cat.stderr)
        );
        assert!(cat.stdout == want, "cat {n}: other bytes");
        // (`get` resumes a shorter file already there: start afresh.)
        let _ = std::fs::remove_file(&dest);
        ok(cairn(
            &s,
            &state,
            &["get", &target, "-o", dest.to_str().unwrap()],
        ));
        assert!(
            std::fs::read(&dest).unwrap() == want,
            "get {n}: other bytes"
        );
    }
}

#[test]
fn upload_a_thousand_files_and_get_each_back() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    let mut sizes = Vec::new();
    for i in 0..1000u64 {
        let size = match i {
            0 => 0,
            1 => 80 << 20,
            2 => 20 << 20,
            3..=5 => (3 << 20) + i as usize,
            _ => ((i * 7919) % 65_536) as usize,
        };
        let rel = format!("d{}/f{i:04}.bin", i % 10);
        fill(&tree.join(&rel), i, size);
        sizes.push((rel, size));
    }
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let out: serde_json::Value = serde_json::from_str(&ok(cairn(
        &s,
        &state,
        &[
            "upload",
            &obj,
            tree.to_str().unwrap(),
            "--parallel",
            "8",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(out["files"], 1000);
    let jobs = out["upload_jobs"].as_u64().unwrap();
    // The log is read by a thread of its own: wait until it has every upload's line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let total: usize = sizes.iter().map(|(_, n)| n).sum();
    while (s.uploads().1 as usize) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let requests = s.uploads().0;
    assert!(
        requests >= 1 && requests as u64 <= jobs,
        "each upload job goes as one request: {requests} requests for {jobs} jobs"
    );
    let version = out["version"].as_str().unwrap().to_string();
    let listing = ok(cairn(&s, &state, &["ls", &format!("{obj}:/tree/d1")]));
    assert_eq!(listing.lines().count(), 100, "{listing}");
    // A trailing slash names the same directory; a file lists itself (QA).
    let slashed = ok(cairn(&s, &state, &["ls", &format!("{obj}:tree/d1/")]));
    assert_eq!(slashed, listing);
    let (rel, size) = &sizes[1];
    let one = ok(cairn(&s, &state, &["ls", &format!("{obj}:tree/{rel}")]));
    assert_eq!(one, format!("{size}  tree/{rel}"), "one row for the file");
    for (i, (rel, size)) in sizes.iter().enumerate() {
        let target = if i % 2 == 0 {
            format!("{version}:tree/{rel}")
        } else {
            format!("{obj}:tree/{rel}")
        };
        let dest = work.path().join("got.bin");
        let _ = std::fs::remove_file(&dest);
        ok(cairn(
            &s,
            &state,
            &["get", &target, "-o", dest.to_str().unwrap()],
        ));
        let got = std::fs::read(&dest).unwrap();
        assert_eq!(got.len(), *size, "{rel}");
        assert!(
            got == std::fs::read(tree.join(rel)).unwrap(),
            "{rel} differs"
        );
    }
    let missing = cairn(
        &s,
        &state,
        &["get", &format!("{version}:tree/nope"), "-o", "/dev/null"],
    );
    assert_eq!(missing.status.code(), Some(3), "not found exits 3");
}

#[test]
fn an_upload_killed_mid_way_resumes_without_resending() {
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.bin");
    fill(&big, 42, 200 << 20);
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let args = [
        "upload",
        &obj,
        big.to_str().unwrap(),
        "--parallel",
        "2",
        "--json",
    ];
    kill_once_received(&s, spawn_cairn(&s, &state, &args), 40 << 20);

    // What the server holds now, read through the resume record the client left.
    let record_file = records(&state).pop().expect("a resume record");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record_file).unwrap()).unwrap();
    let (wt, fj) = (
        record["write_token"].as_str().unwrap(),
        record["files_job"].as_str().unwrap(),
    );
    let mut received = 0u64;
    for uj in record["jobs"].as_array().unwrap() {
        let st = common::call(
            &s,
            "GET",
            &format!("/q/{wt}/file_jobs/{fj}/uploads/{}", uj.as_str().unwrap()),
            None,
            200,
        );
        received += st["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["skip"].as_u64().unwrap())
            .sum::<u64>();
    }
    assert!(
        received > 0 && received < 200 << 20,
        "killed mid-way ({received} bytes in)"
    );

    // Touched meanwhile (its bytes as they were): the run still continues.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let out: serde_json::Value = serde_json::from_str(&ok(cairn(&s, &state, &args))).unwrap();
    assert_eq!(out["resumed"], true, "{out}");
    let sent = out["bytes_sent"].as_u64().unwrap();
    let lacking = (200u64 << 20) - received;
    println!(
        "received before the rerun: {received}; sent by the rerun: {sent}; lacking: {lacking}"
    );
    assert!(
        sent <= lacking + 2 * (8 << 20),
        "the rerun resent acknowledged bytes: {sent} > {lacking} + 16 MiB"
    );
    let version = out["version"].as_str().unwrap();
    assert_got_back(&s, &state, &format!("{version}:big.bin"), &big);
    assert_eq!(
        records(&state).len(),
        0,
        "the record is removed once finalized"
    );
}

/// Kills `child` (SIGKILL) once the server has received at least `bytes` of upload bodies.
fn kill_once_received(s: &Server, mut child: std::process::Child, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.uploads().1 < bytes {
        assert!(Instant::now() < deadline, "the upload did not progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The resume records in `state` (not the lock files beside them).
fn records(state: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(state.join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect()
}

/// The write token of the one resume record in `state`.
fn recorded_draft(state: &Path) -> String {
    let mut records = records(state);
    let record = records.pop().unwrap();
    assert!(records.is_empty(), "one record");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
    v["write_token"].as_str().unwrap().to_string()
}

/// A draft's status code on `GET /q/{wt}` (200 open, 404 discarded).
fn draft_status(s: &Server, wt: &str) -> u16 {
    common::curl(
        &s.url(&format!("/q/{wt}")),
        &["-H", &format!("Authorization: Bearer {TOKEN}")],
    )
    .status
}

/// An upload killed mid-way and run again after its file changed continues its draft with the
/// change: the changed file is sent again whole (its bytes are not the planned ones), the added
/// one too, and nothing is left behind (no second draft). A draft left open by --no-finalize
/// is the user's: a same-size, same-mtime change leaves it open and named, never discarded.
#[test]
fn a_rerun_after_the_files_changed_continues_the_draft_with_the_change() {
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("d/big.bin");
    fill(&big, 7, 100 << 20);
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let dir = work.path().join("d");
    let args = ["upload", &obj, dir.to_str().unwrap(), "--parallel", "1"];
    kill_once_received(&s, spawn_cairn(&s, &state, &args), 1);
    let old = recorded_draft(&state);
    assert_eq!(
        draft_status(&s, &old),
        200,
        "the killed run's draft is open"
    );

    // A file changed and one added (QA: an added or deleted file lost the record, and with
    // it the only name of the old draft).
    let mut f = std::fs::OpenOptions::new().append(true).open(&big).unwrap();
    std::io::Write::write_all(&mut f, b"more").unwrap();
    drop(f);
    std::fs::write(dir.join("added.txt"), b"new").unwrap();
    let out = json_out(cairn(&s, &state, &[&args[..], &["--json"][..]].concat()));
    assert_eq!(out["resumed"], true, "{out}");
    assert_eq!(out["write_token"], old.as_str(), "the same draft: {out}");
    assert_eq!(out["discarded_draft"], serde_json::Value::Null, "{out}");
    assert_eq!(draft_status(&s, &old), 404, "finalized");
    assert_eq!(out["bytes"], (100u64 << 20) + 4 + 3, "{out}");
    assert!(
        out["bytes_sent"].as_u64().unwrap() >= (100 << 20) + 7,
        "{out}"
    );
    let version = out["version"].as_str().unwrap();
    assert_got_back(&s, &state, &format!("{version}:d/big.bin"), &big);
    assert_got_back(
        &s,
        &state,
        &format!("{version}:d/added.txt"),
        &dir.join("added.txt"),
    );

    // A draft left open by --no-finalize, then a change that keeps size and mtime.
    let small = dir.join("small.txt");
    std::fs::write(&small, b"version one").unwrap();
    let open = json_out(cairn(
        &s,
        &state,
        &[
            "upload",
            &obj,
            small.to_str().unwrap(),
            "--no-finalize",
            "--json",
        ],
    ));
    let first = open["write_token"].as_str().unwrap().to_string();
    let mtime = std::fs::metadata(&small).unwrap().modified().unwrap();
    std::fs::write(&small, b"version two").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&small)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    // That run printed the token: the draft is the user's (who may have edited it), so it is
    // left open and named, never discarded.
    let text = cairn(&s, &state, &["upload", &obj, small.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&text.stderr).to_string();
    let version = ok(text);
    assert!(
        err.contains(&format!("the draft {first}")) && err.contains("left open"),
        "{err}"
    );
    assert_eq!(draft_status(&s, &first), 200);
    let cat = ok(cairn(&s, &state, &["cat", &format!("{version}:small.txt")]));
    assert_eq!(cat, "version two");
}

/// A file rewritten during `cairn upload` in a way its size and mtime do not show (same size,
/// mtime put back, as `cp -p` over it leaves them) is caught by the server, which hashes what
/// arrived and compares it with the blake3 the run declared: the run exits 1 naming the file,
/// nothing is published, and the draft is dropped, so a rerun after the change was undone (the
/// file hashes as planned again) uploads it afresh instead of resuming into the same refusal.
#[test]
fn a_file_rewritten_unseen_during_an_upload_is_not_published() {
    const SIZE: usize = 200 << 20;
    const AT: u64 = (SIZE - (1 << 20)) as u64;
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.bin");
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let args = ["upload", &obj, big.to_str().unwrap(), "--parallel", "1"];
    let versions = || ok(cairn(&s, &state, &["versions", &obj]));
    // The client re-checks size and mtime after each frame it reads: it sees the change if it
    // reads in the microseconds between the write and the mtime put back, and reports it
    // itself. A run may also send the changed region before the change (the test thread
    // descheduled): then it publishes. Either way the case is tried again.
    let mut caught_by_server = None;
    for seed in 0..4 {
        fill(&big, seed, SIZE);
        let mtime = std::fs::metadata(&big).unwrap().modified().unwrap();
        let published = versions();
        let before = s.uploads().0;
        let child = cairn_cmd(&s, &state, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.uploads().0 == before {
            assert!(Instant::now() < deadline, "the upload did not progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&big)
            .unwrap();
        let mut was = vec![0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut was, AT).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 4096], AT).unwrap();
        f.set_modified(mtime).unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() || err.contains("changed since it was planned") {
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(versions(), published, "nothing published: {err}");
        // The change undone, mtime and all.
        std::os::unix::fs::FileExt::write_all_at(&f, &was, AT).unwrap();
        f.set_modified(mtime).unwrap();
        caught_by_server = Some(err);
        break;
    }
    let err = caught_by_server.expect("the server's check was reached once in four tries");
    assert!(
        err.contains("big.bin: changed while it was uploaded"),
        "{err}"
    );
    assert!(err.contains("Nothing was published"), "{err}");
    assert_eq!(
        records(&state).len(),
        0,
        "the refused draft's record is gone"
    );

    let version = ok(cairn(&s, &state, &args));
    assert_got_back(&s, &state, &format!("{version}:big.bin"), &big);
}

/// `cairn get TARGET` gives back exactly the bytes of the local file `local`.
fn assert_got_back(s: &Server, state: &Path, target: &str, local: &Path) {
    let back = local.with_extension("back");
    ok(cairn(
        s,
        state,
        &["get", target, "-o", back.to_str().unwrap()],
    ));
    assert!(std::fs::read(&back).unwrap() == std::fs::read(local).unwrap());
}

/// Uploads `path` into `obj` and returns the new version hash.
fn upload_version(s: &Server, state: &Path, obj: &str, path: &str) -> String {
    let out = json_out(cairn(s, state, &["upload", obj, path, "--json"]));
    out["version"].as_str().unwrap().to_string()
}

fn json_out(out: Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// An upload finalizes only on the version its draft was opened from: when someone published in
/// between, it fails, publishes nothing, and says how to go on; run again, it publishes on top.
#[test]
fn an_upload_does_not_replace_a_version_published_while_it_ran() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let obj = new_object(&s, &state);
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    fill(&a.join("one.bin"), 1, 100_000);
    fill(&b.join("two.bin"), 2, 100_000);
    let a = a.to_str().unwrap();
    upload_version(&s, &state, &obj, work.path().join("b").to_str().unwrap());
    // A draft opened on that version, its bytes sent, left open; then another publish.
    let open = json_out(cairn(
        &s,
        &state,
        &["upload", &obj, a, "--no-finalize", "--json"],
    ));
    let wt = open["write_token"].as_str().unwrap().to_string();
    fill(&work.path().join("b/two.bin"), 3, 100_000);
    let v2 = upload_version(&s, &state, &obj, work.path().join("b").to_str().unwrap());
    let versions = |s: &Server| ok(cairn(s, &state, &["versions", &obj])).lines().count();
    assert_eq!(versions(&s), 2);

    // Resuming the first upload would replace v2's tree: refused, nothing published.
    let out = cairn(&s, &state, &["upload", &obj, a]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("412") && err.contains(&wt), "{err}");
    assert_eq!(versions(&s), 2);
    // Run again: a new draft on v2, which keeps v2's files; the bytes are not sent again.
    let again = json_out(cairn(&s, &state, &["upload", &obj, a, "--json"]));
    assert_eq!(again["bytes_sent"], 0, "{again}");
    let v3 = again["version"].as_str().unwrap().to_string();
    let ls = ok(cairn(&s, &state, &["ls", &v3]));
    assert!(ls.contains("one.bin") && ls.contains("two.bin"), "{ls}");
    assert_ne!(v3, v2);
    // The old draft is still there. `finalize` refuses it too (it was opened on v1), and
    // `--force` publishes it as it is.
    let out = cairn(&s, &state, &["finalize", &wt]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(versions(&s), 3);
    ok(cairn(&s, &state, &["finalize", &wt, "--force"]));
    assert_eq!(versions(&s), 4);
    // A draft opened on the head finalizes without `--force`.
    let fresh = common::call(&s, "POST", &format!("/qid/{obj}"), None, 200)["write_token"]
        .as_str()
        .unwrap()
        .to_string();
    ok(cairn(&s, &state, &["finalize", &fresh]));
    assert_eq!(versions(&s), 5);
}

#[test]
fn diff_force_complete_fsck_gc_and_stats() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fill(&src.join("same.bin"), 1, 300_000);
    fill(&src.join("changed.bin"), 2, 200_000);
    fill(&src.join("removed.bin"), 3, 1000);
    let data = work.path().join("data");
    let port = common::free_port();
    let mut s = Server::start(&data, port);
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let v1 = upload_version(&s, &state, &obj, src.to_str().unwrap());
    fill(&src.join("changed.bin"), 22, 200_000); // same size, new bytes
    std::fs::remove_file(src.join("removed.bin")).unwrap();
    fill(&src.join("added.bin"), 4, 10);
    let v2 = upload_version(&s, &state, &obj, src.to_str().unwrap());
    let diff = json_out(cairn(&s, &state, &["diff", &v1, &v2, "--json"]));
    let changes: Vec<(String, String)> = diff
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["change"].as_str().unwrap().into(),
                r["path"].as_str().unwrap().into(),
            )
        })
        .collect();
    // An upload adds to the head (a local file deleted since is not deleted in the object), so
    // exactly two paths differ.
    assert_eq!(
        changes,
        vec![
            ("added".to_string(), "src/added.bin".to_string()),
            ("changed".into(), "src/changed.bin".into())
        ]
    );

    // force-complete: a draft with four files, two sent whole and one half: the whole two stay.
    let wt = common::call(&s, "POST", &format!("/qid/{obj}"), None, 200)["write_token"]
        .as_str()
        .unwrap()
        .to_string();
    let ops = r#"{"ops":[{"path":"fc/a","size":100},{"path":"fc/b","size":100},{"path":"fc/c","size":100},{"path":"fc/d","size":100}]}"#;
    let job = common::call(&s, "POST", &format!("/q/{wt}/file_jobs"), Some(ops), 201);
    let (fj, uj) = (
        job["id"].as_str().unwrap(),
        job["jobs"][0].as_str().unwrap(),
    );
    let body = work.path().join("body");
    std::fs::write(&body, vec![9u8; 250]).unwrap();
    let r = common::curl(
        &s.url(&format!("/q/{wt}/file_jobs/{fj}/{uj}")),
        &[
            "-X",
            "POST",
            "--data-binary",
            &format!("@{}", body.display()),
        ],
    );
    assert_eq!(r.status, 200);
    let fc = json_out(cairn(&s, &state, &["force-complete", &wt, "--json"]));
    let mut dropped: Vec<String> = fc[0]["files_dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().into())
        .collect();
    dropped.sort();
    assert_eq!(dropped, vec!["fc/c", "fc/d"]);
    let v3 = ok(cairn(&s, &state, &["finalize", &wt]));
    let listing = ok(cairn(&s, &state, &["ls", &format!("{v3}:/fc")]));
    assert_eq!(listing.lines().count(), 2, "{listing}");

    // gc after `object rm` reclaims the bytes; stats shows it.
    let before = json_out(cairn(&s, &state, &["stats", "--json"]));
    assert!(before["stored_bytes"].as_u64().unwrap() > 500_000);
    ok(cairn(&s, &state, &["object", "rm", &obj]));
    ok(cairn(&s, &state, &["gc"]));
    let after = json_out(cairn(&s, &state, &["stats", "--json"]));
    assert_eq!(after["stored_bytes"], 0, "{after}");

    // A second object with a file, then a flipped byte: fsck (offline) exits non-zero and names it.
    let obj2 = new_object(&s, &state);
    fill(&work.path().join("victim.bin"), 7, 100_000);
    let v = json_out(cairn(
        &s,
        &state,
        &[
            "upload",
            &obj2,
            work.path().join("victim.bin").to_str().unwrap(),
            "--json",
        ],
    ))["version"]
        .as_str()
        .unwrap()
        .to_string();
    let locked = cairn(&s, &state, &["fsck", "--data", data.to_str().unwrap()]);
    assert_eq!(
        locked.status.code(),
        Some(4),
        "refused while the server runs"
    );
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let pack = std::fs::read_dir(data.join("packs"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    // 50 bytes before the last record's end (the pack may end in zero padding after it).
    let at = bytes.iter().rposition(|&b| b != 0).unwrap() - 50;
    bytes[at] ^= 0xff;
    std::fs::write(&pack, &bytes).unwrap();
    let out = cairn(&s, &state, &["fsck", "--data", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("damaged file {v}:victim.bin")),
        "{text}"
    );
}

/// The number of upload requests the server has logged, once it has not changed for 300 ms.
fn settled_uploads(s: &Server) -> usize {
    let mut last = s.uploads().0;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        match s.uploads().0 {
            now if now == last => return now,
            now => last = now,
        }
    }
}

#[test]
fn the_same_tree_into_a_second_object_uploads_nothing() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    for i in 0..50u64 {
        fill(
            &tree.join(format!("f{i}.bin")),
            i,
            (i as usize * 37_000) % 3_000_000,
        );
    }
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let lib = ok(cairn(&s, &state, &["lib", "create", "dedup"]));
    let first = ok(cairn(&s, &state, &["object", "create", &lib]));
    let second = ok(cairn(&s, &state, &["object", "create", &lib]));
    let a = json_out(cairn(
        &s,
        &state,
        &["upload", &first, tree.to_str().unwrap(), "--json"],
    ));
    assert!(a["upload_jobs"].as_u64().unwrap() > 0);
    // The server logs a request once it has answered it: the first run's last lines may
    // still be on their way (seen once under load).
    let before = settled_uploads(&s);
    let b = json_out(cairn(
        &s,
        &state,
        &["upload", &second, tree.to_str().unwrap(), "--json"],
    ));
    assert_eq!(
        (b["upload_jobs"].as_u64(), b["bytes_sent"].as_u64()),
        (Some(0), Some(0)),
        "{b}"
    );
    assert_eq!(
        settled_uploads(&s),
        before,
        "no data request reached the server"
    );
    let v = b["version"].as_str().unwrap();
    let dest = work.path().join("f7.bin");
    ok(cairn(
        &s,
        &state,
        &[
            "get",
            &format!("{v}:tree/f7.bin"),
            "-o",
            dest.to_str().unwrap(),
        ],
    ));
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(tree.join("f7.bin")).unwrap());
    // Another library does not see the first one's files.
    let lib2 = ok(cairn(&s, &state, &["lib", "create", "other"]));
    let third = ok(cairn(&s, &state, &["object", "create", &lib2]));
    let c = json_out(cairn(
        &s,
        &state,
        &["upload", &third, tree.to_str().unwrap(), "--json"],
    ));
    assert!(
        c["upload_jobs"].as_u64().unwrap() > 0,
        "dedup never crosses libraries"
    );
}

#[test]
fn server_and_token_come_from_the_config_file_unless_overridden() {
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let cfg = work.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!("server = \"{}\"\ntoken = \"{TOKEN}\"\n", s.url("")),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["lib", "create", "c", "--cli-config", cfg.to_str().unwrap()])
            .args(extra)
            .env_remove("CAIRN_SERVER")
            .env_remove("CAIRN_TOKEN")
            .output()
            .unwrap()
    };
    assert!(ok(run(&[])).starts_with("ilib"));
    assert_eq!(
        run(&["--token", "wrong"]).status.code(),
        Some(1),
        "the flag overrides the file (401)"
    );
    // Empty variables say nothing: the file's values stand (QA: `CAIRN_TOKEN=` gave 401).
    let empty = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["lib", "create", "c", "--cli-config", cfg.to_str().unwrap()])
        .env("CAIRN_SERVER", "")
        .env("CAIRN_TOKEN", "")
        .env("CAIRN_CACERT", "")
        .output()
        .unwrap();
    assert!(ok(empty).starts_with("ilib"));
    // A server that is not an http(s) URL is a usage error at once, not retried as unreachable.
    for bad in ["127.0.0.1:8008", "ftp://127.0.0.1/"] {
        let t = Instant::now();
        let out = run(&["--server", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(t.elapsed() < Duration::from_secs(3), "{bad}");
    }
    std::fs::write(&cfg, "sever = 1\n").unwrap();
    assert!(!run(&[]).status.success(), "unknown keys are refused");
    // The server does not read the client's config: one it cannot read (here a directory; a
    // service user's inherited home in QA's case) does not stop `cairn serve`.
    let unreadable = data.path().join("unreadable-config");
    std::fs::create_dir(&unreadable).unwrap();
    let served = Server::start_with(
        &data.path().join("second"),
        common::free_port(),
        &[],
        &[("CAIRN_CLI_CONFIG", unreadable.to_str().unwrap())],
    );
    let r = common::curl(&served.url("/config"), &[]);
    assert_eq!(r.status, 200);
}

/// `cairn token`: a read-only library token made by the CLI can read its library through the CLI
/// and nothing else; `ls` never shows the secret; `rm` revokes it at once.
#[test]
fn token_commands_make_list_and_revoke_library_tokens() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let lib = ok(cairn(&s, state.path(), &["lib", "create", "mine"]));
    let other = ok(cairn(&s, state.path(), &["lib", "create", "theirs"]));
    let obj = ok(cairn(&s, state.path(), &["object", "create", &lib]));
    let src = state.path().join("a.bin");
    fill(&src, 7, 100_000);
    let up = json_out(cairn(
        &s,
        state.path(),
        &["--json", "upload", &obj, src.to_str().unwrap()],
    ));
    let version = up["version"].as_str().unwrap().to_string();

    let token = ok(cairn(
        &s,
        state.path(),
        &["token", "create", &lib, "--read-only"],
    ));
    assert!(token.starts_with("cairn_"), "{token}");
    let listed = json_out(cairn(&s, state.path(), &["--json", "token", "ls", &lib]));
    assert_eq!(listed["tokens"][0]["access"], "read");
    assert!(
        !listed.to_string().contains(&token),
        "ls never shows the secret"
    );
    let id = listed["tokens"][0]["id"].as_str().unwrap().to_string();

    let as_reader = |args: &[&str]| {
        let mut all = vec!["--token", token.as_str()];
        all.extend_from_slice(args);
        cairn(&s, state.path(), &all)
    };
    let got = state.path().join("got.bin");
    let target = format!("{version}:a.bin");
    ok(as_reader(&["get", &target, "-o", got.to_str().unwrap()]));
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&src).unwrap());
    let libs = ok(as_reader(&["lib", "ls"]));
    assert!(libs.contains(&lib) && !libs.contains(&other), "{libs}");
    for refused in [
        vec!["object", "create", lib.as_str()],
        vec!["object", "ls", other.as_str()],
        vec!["stats"],
    ] {
        let out = as_reader(&refused);
        assert!(!out.status.success(), "{refused:?} should be refused");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("403"),
            "{refused:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    ok(cairn(&s, state.path(), &["token", "rm", &lib, &id]));
    let out = as_reader(&["lib", "ls"]);
    assert!(!out.status.success(), "a revoked token is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // `lib rm`: refused (exit 4) while the library holds its object, then done with its
    // remaining token.
    ok(cairn(&s, state.path(), &["token", "create", &lib]));
    let shown = ok(cairn(&s, state.path(), &["lib", "show", &lib]));
    assert!(
        shown.contains("mine") && shown.contains("1 object"),
        "{shown}"
    );
    let out = cairn(&s, state.path(), &["lib", "rm", &lib]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(cairn(&s, state.path(), &["object", "rm", &obj]));
    let rm = json_out(cairn(&s, state.path(), &["--json", "lib", "rm", &lib]));
    assert_eq!(rm["tokens_revoked"], 1);
    let libs = ok(cairn(&s, state.path(), &["lib", "ls"]));
    assert!(!libs.contains(&lib) && libs.contains(&other), "{libs}");
}

/// Kills the child process it holds when dropped (the TLS proxy below).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Behind a TLS-terminating proxy (socat with a self-signed certificate): `public_url` makes
/// `GET /config` advertise the https address, and the CLI uploads and gets files over https
/// when it is given the CA (`--cacert`), and refuses the server without it.
#[test]
fn the_cli_works_through_a_tls_proxy_given_its_ca() {
    let work = tempfile::tempdir().unwrap();
    let (cert, key) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-keyout", key_s, "-out", cert_s])
        .output()
        .expect("openssl is installed (bash .ci/setup)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let tls_port = common::free_port();
    let public = format!("https://localhost:{tls_port}");
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        data.path(),
        common::free_port(),
        &[],
        &[("CAIRN_PUBLIC_URL", public.as_str())],
    );
    let _proxy = Killed(
        Command::new("socat")
            .arg(format!(
                "openssl-listen:{tls_port},bind=127.0.0.1,reuseaddr,fork,cert={cert_s},key={key_s},verify=0"
            ))
            .arg(format!("tcp:127.0.0.1:{}", s.port))
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is installed (bash .ci/setup)"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(Instant::now() < deadline, "the TLS proxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let config = common::curl(
        &format!("{public}/config"),
        &["--no-token", "--cacert", cert_s],
    );
    assert_eq!(config.status, 200);
    assert_eq!(
        config.json()["network"]["services"]["fabric_api"][0],
        format!("{public}/"),
        "/config advertises the public URL, not http://{{Host}}/"
    );

    let state = work.path().join("state");
    let tls = |args: &[&str]| {
        let mut all = vec!["--server", public.as_str(), "--cacert", cert_s];
        all.extend_from_slice(args);
        cairn(&s, &state, &all)
    };
    let src = work.path().join("src");
    fill(&src.join("a.bin"), 5, 3 << 20);
    fill(&src.join("b.txt"), 6, 100);
    let lib = ok(tls(&["lib", "create", "tls"]));
    let obj = ok(tls(&["object", "create", &lib]));
    let up = json_out(tls(&["--json", "upload", &obj, src.to_str().unwrap()]));
    assert_eq!(up["bytes_sent"], (3 << 20) + 100);
    let version = up["version"].as_str().unwrap().to_string();
    for name in ["a.bin", "b.txt"] {
        let got = work.path().join(format!("got-{name}"));
        let target = format!("{version}:src/{name}");
        ok(tls(&["get", &target, "-o", got.to_str().unwrap()]));
        assert_eq!(
            std::fs::read(&got).unwrap(),
            std::fs::read(src.join(name)).unwrap()
        );
    }

    // Without the CA, the server's certificate is not trusted: the CLI says so at once (no
    // retries, which take 20 s and more), and no request reaches the server.
    let served = |s: &Server| {
        s.log_lines()
            .iter()
            .filter(|l| l.contains("status="))
            .count()
    };
    let before = served(&s);
    let started = Instant::now();
    let out = cairn(&s, &state, &["--server", &public, "lib", "ls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("TLS certificate is not trusted"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not retried"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(served(&s), before, "no request reached the server");
}

/// `get -o FILE` never touches FILE until the new bytes are whole and match the file's blake3;
/// an interrupted download resumes from its partial file, and a partial file that does not
/// add up is thrown away rather than trusted.
#[test]
fn get_replaces_a_file_only_when_whole_and_resumes_its_own_partial_file() {
    let Served {
        work,
        _data,
        s,
        state,
        want,
        etag,
        target,
    } = served_file(7, 300_000);
    let out = work.path().join("out.bin");
    let part = work
        .path()
        .join(format!("out.bin.{}.cairn-part", &etag[..16]));
    let get = || {
        let o = ok(cairn(
            &s,
            &state,
            &["--json", "get", &target, "-o", out.to_str().unwrap()],
        ));
        serde_json::from_str::<serde_json::Value>(&o).unwrap()
    };

    // An older, shorter, different file at the destination is replaced, not appended to.
    std::fs::write(&out, b"an older file").unwrap();
    assert_eq!(get()["resumed_at"], 0);
    assert!(std::fs::read(&out).unwrap() == want);
    assert!(!part.exists());

    // An interrupted download left the first 100,000 bytes: only the rest is fetched.
    std::fs::remove_file(&out).unwrap();
    std::fs::write(&part, &want[..100_000]).unwrap();
    let stale = work.path().join("out.bin.0123456789abcdef.cairn-part");
    std::fs::write(&stale, b"another version's").unwrap();
    assert_eq!(get()["resumed_at"], 100_000);
    assert!(std::fs::read(&out).unwrap() == want);
    assert!(!part.exists() && !stale.exists());

    // A partial file whose bytes are wrong fails the blake3 check and is removed; `out` keeps
    // what it had, and the next get starts afresh.
    std::fs::write(&out, b"kept").unwrap();
    std::fs::write(&part, vec![0u8; 100_000]).unwrap();
    let bad = cairn(&s, &state, &["get", &target, "-o", out.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("blake3"));
    assert_eq!(std::fs::read(&out).unwrap(), b"kept");
    assert!(!part.exists());
    assert_eq!(get()["resumed_at"], 0);
    assert!(std::fs::read(&out).unwrap() == want);
}

/// Symbolic links inside an uploaded tree are reported and not followed: not one leading out
/// of the tree, not a broken one (which used to stop the upload), not a loop.
#[test]
fn symlinks_in_a_tree_are_skipped_and_reported() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("t");
    fill(&tree.join("a.txt"), 1, 100);
    fill(&tree.join("sub/b.txt"), 2, 200);
    fill(&work.path().join("outside.txt"), 3, 300);
    let link = |to: &Path, at: &str| std::os::unix::fs::symlink(to, tree.join(at)).unwrap();
    link(&work.path().join("outside.txt"), "out");
    link(Path::new("nowhere"), "broken");
    link(&tree, "sub/loop");
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let out = cairn(
        &s,
        &state,
        &["--json", "upload", &obj, tree.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(v["files"], 2, "{v}");
    assert_eq!(v["skipped_symlinks"].as_array().unwrap().len(), 3, "{v}");
    let ls = ok(cairn(&s, &state, &["ls", &obj]));
    assert!(
        !ls.contains("out") && !ls.contains("broken") && !ls.contains("loop"),
        "{ls}"
    );
    // Text mode: only the version hash on stdout; the skips and the summary on stderr.
    fill(&tree.join("c.txt"), 4, 50);
    let text = cairn(&s, &state, &["upload", &obj, tree.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&text.stdout).trim().to_string();
    assert!(
        stdout.starts_with("hq__") && !stdout.contains('\n'),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(stderr.contains("skipped symbolic link"), "{stderr}");
}

/// A name the server cannot store (a backslash, a tab, a newline, bytes that are not UTF-8, or
/// a directory so named) is skipped and reported, the rest is uploaded and published, and the
/// exit code is 6 (a partial upload, as rsync's 23); it used to stop the whole upload (exit 1,
/// nothing sent). An invalid --dest is a usage error (exit 2), not a skip.
#[test]
fn names_the_server_cannot_store_are_skipped_and_the_rest_uploaded() {
    use std::os::unix::ffi::OsStrExt;
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("t");
    fill(&tree.join("ok.txt"), 1, 100);
    fill(&tree.join("sub/fine.txt"), 2, 100);
    for (i, bad) in [
        "back\\slash",
        "tab\there",
        "new\nline",
        "bad\\dir/inner.txt",
    ]
    .iter()
    .enumerate()
    {
        fill(&tree.join(bad), 10 + i as u64, 50);
    }
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fill(&tree.join("sub").join(latin1), 20, 50);
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let t = tree.to_str().unwrap();

    let out = cairn(&s, &state, &["--json", "upload", &obj, t]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("partial upload"), "{err}");
    // With --json too, the paths the message says are "listed above" are (QA).
    assert_eq!(err.matches("(not uploaded)").count(), 5, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"], 2, "{v}");
    let skipped = v["skipped_invalid_names"].as_array().unwrap();
    assert_eq!(skipped.len(), 5, "{v}");
    assert!(
        skipped
            .iter()
            .any(|n| n["path"].as_str().unwrap().ends_with("back\\slash")
                && n["reason"].as_str().unwrap().contains("backslash")),
        "{v}"
    );
    let version = v["version"].as_str().unwrap();
    assert_eq!(files_of(&s, version), ["t/ok.txt", "t/sub/fine.txt"]);

    // Text mode: the version hash alone on stdout, each skipped name on stderr.
    let text = cairn(&s, &state, &["upload", &obj, t]);
    assert_eq!(text.status.code(), Some(6));
    let stdout = String::from_utf8_lossy(&text.stdout).trim().to_string();
    assert!(
        stdout.starts_with("hq__") && !stdout.contains('\n'),
        "{stdout}"
    );
    let err = String::from_utf8_lossy(&text.stderr);
    assert!(err.contains("contains a backslash"), "{err}");
    assert!(err.contains("not UTF-8"), "{err}");
    assert!(err.contains("control character"), "{err}");

    let bad_dest = cairn(&s, &state, &["upload", &obj, t, "--dest", "../x"]);
    let err = String::from_utf8_lossy(&bad_dest.stderr);
    assert_eq!(bad_dest.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--dest \"../x\"") && err.contains("not allowed"),
        "{err}"
    );
}

/// `get -o` with a relative path resumes its partial file (it once compared `./x` with `x`
/// and deleted its own partial file), and `--range A-` reads to the end.
#[test]
fn get_resumes_with_a_relative_output_and_reads_open_ranges() {
    let Served {
        work,
        _data,
        s,
        state,
        want,
        etag,
        target,
    } = served_file(9, 200_000);
    let part = work
        .path()
        .join(format!("rel.bin.{}.cairn-part", &etag[..16]));
    std::fs::write(&part, &want[..50_000]).unwrap();
    let out = cairn_cmd(&s, &state, &["--json", "get", &target, "-o", "rel.bin"])
        .current_dir(work.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(v["resumed_at"], 50_000, "{v}");
    assert!(std::fs::read(work.path().join("rel.bin")).unwrap() == want);
    let tail = work.path().join("tail.bin");
    let t = tail.to_str().unwrap();
    ok(cairn(
        &s,
        &state,
        &["get", &target, "--range", "199990-", "-o", t],
    ));
    assert_eq!(std::fs::read(&tail).unwrap(), &want[199_990..]);
    let bad = cairn(&s, &state, &["get", &target, "--range", "-5", "-o", t]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a malformed range is a usage error"
    );
}

/// A path with `..` or `.` segments is refused (exit 2, naming the path), as the server refuses
/// it: it used to be resolved by the URL parser, so `src/../src/f.bin` downloaded `src/f.bin`
/// (and `tree/../etc/passwd` some other file than the one named).
#[test]
fn get_refuses_a_path_with_dot_segments() {
    let Served {
        work,
        _data,
        s,
        state,
        target,
        ..
    } = served_file(10, 1000);
    let obj = target.split(':').next().unwrap();
    let out = work.path().join("out.bin");
    for path in ["src/../src/f.bin", "src/./f.bin", "../src/f.bin"] {
        let t = format!("{obj}:{path}");
        for args in [
            vec!["get", &t, "-o", out.to_str().unwrap()],
            vec!["get", &t],
            vec!["cat", &t],
        ] {
            let res = cairn(&s, &state, &args);
            let err = String::from_utf8_lossy(&res.stderr);
            assert_eq!(res.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(path) && err.contains("not allowed"), "{err}");
            assert!(res.stdout.is_empty(), "{args:?} printed a file");
        }
    }
    assert!(!out.exists(), "nothing was downloaded");
    let ls = cairn(&s, &state, &["ls", &format!("{obj}:src/..")]);
    assert_eq!(ls.status.code(), Some(2));
    // No object named, or no file: usage errors before any request (QA: `/q//…` was asked).
    let requests = s.log_lines().len();
    for args in [
        vec!["ls", ":src"],
        vec!["cat", ":src/f.bin"],
        vec!["get", ":src/f.bin"],
        vec!["cat", obj],
        vec!["get", obj],
    ] {
        let res = cairn(&s, &state, &args);
        let err = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("names no"), "{args:?}: {err}");
    }
    // Nor does an empty id or token make a request of any other command.
    for args in [
        vec!["versions", ""],
        vec!["finalize", ""],
        vec!["diff", "", obj],
        vec!["diff", obj, ""],
        vec!["jobs", ""],
        vec!["force-complete", ""],
        vec!["object", "rm", ""],
        vec!["object", "ls", ""],
        vec!["lib", "rm", ""],
        vec!["token", "rm", "", "x"],
        vec!["upload", "", "src"],
    ] {
        let res = cairn(&s, &state, &args);
        let err = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("a value is required"), "{args:?}: {err}");
    }
    assert_eq!(
        s.log_lines().len(),
        requests,
        "nothing was asked of the server"
    );
}

/// One file of `len` bytes uploaded as `src/f.bin` into a new object, for the `get` tests.
struct Served {
    work: tempfile::TempDir,
    _data: tempfile::TempDir,
    s: Server,
    state: std::path::PathBuf,
    want: Vec<u8>,
    etag: String,
    target: String,
}

fn served_file(seed: u64, len: usize) -> Served {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fill(&src.join("f.bin"), seed, len);
    let want = std::fs::read(src.join("f.bin")).unwrap();
    let etag = blake3::hash(&want).to_hex().to_string();
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    ok(cairn(&s, &state, &["upload", &obj, src.to_str().unwrap()]));
    Served {
        work,
        _data: data,
        s,
        state,
        want,
        etag,
        target: format!("{obj}:src/f.bin"),
    }
}

/// Every file path in a files tree, sorted.
fn tree_files(tree: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    for (name, child) in tree.as_object().unwrap() {
        if name == "." {
            continue;
        }
        let path = if at.is_empty() {
            name.clone()
        } else {
            format!("{at}/{name}")
        };
        match child["."]["type"] == "directory" {
            true => tree_files(child, &path, out),
            false => out.push(path),
        }
    }
}

fn files_of(s: &Server, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    tree_files(
        &common::call(s, "GET", &format!("/q/{id}/files_list"), None, 200),
        "",
        &mut out,
    );
    out
}

/// Every directory path in a files tree, sorted.
fn dirs_of(s: &Server, id: &str) -> Vec<String> {
    let tree = common::call(s, "GET", &format!("/q/{id}/files_list"), None, 200);
    let mut rows = Vec::new();
    collect_dirs(&tree, "", &mut rows);
    rows.sort();
    rows
}

fn collect_dirs(tree: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    for (name, child) in tree.as_object().unwrap() {
        if name != "." && child["."]["type"] == "directory" {
            let path = format!("{at}{name}");
            out.push(path.clone());
            collect_dirs(child, &format!("{path}/"), out);
        }
    }
}

/// Empty directories are created in the version (an `add` of type directory), as is one that
/// holds only what was skipped; FIFOs and sockets are skipped and reported (stderr, and
/// `skipped_special_files` in --json), and `--delete` leaves their place alone. Both used to be
/// dropped silently.
#[test]
fn empty_directories_are_created_and_fifos_and_sockets_reported() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("ff");
    fill(&tree.join("a.txt"), 1, 100);
    fill(&tree.join("p"), 2, 10);
    std::fs::create_dir_all(tree.join("e1/e2")).unwrap();
    std::fs::create_dir_all(tree.join("only_special")).unwrap();
    let mkfifo = |at: &Path| {
        let st = Command::new("mkfifo").arg(at).status().unwrap();
        assert!(st.success());
    };
    mkfifo(&tree.join("only_special/q"));
    let _sock = std::os::unix::net::UnixListener::bind(tree.join("sock")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let t = tree.to_str().unwrap();

    let v = json_out(cairn(&s, &state, &["--json", "upload", &obj, t]));
    assert_eq!(v["files"], 2, "{v}");
    assert_eq!(v["empty_dirs"], 2, "{v}");
    let mut kinds: Vec<&str> = v["skipped_special_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["fifo", "socket"], "{v}");
    let version = v["version"].as_str().unwrap();
    assert_eq!(
        dirs_of(&s, version),
        ["ff", "ff/e1", "ff/e1/e2", "ff/only_special"]
    );
    assert_eq!(files_of(&s, version), ["ff/a.txt", "ff/p"]);

    // A file that became a FIFO stays in the object under --delete (the FIFO says nothing
    // about what should be there); an empty directory gone locally goes.
    std::fs::remove_file(tree.join("p")).unwrap();
    mkfifo(&tree.join("p"));
    std::fs::remove_dir(tree.join("e1/e2")).unwrap();
    let text = cairn(&s, &state, &["upload", "--delete", &obj, t]);
    let err = String::from_utf8_lossy(&text.stderr).to_string();
    let version = ok(text);
    assert!(
        err.contains("skipped fifo") && err.contains("skipped socket"),
        "{err}"
    );
    assert!(err.contains("deleted ff/e1/e2"), "{err}");
    assert_eq!(dirs_of(&s, &version), ["ff", "ff/e1", "ff/only_special"]);
    assert_eq!(files_of(&s, &version), ["ff/a.txt", "ff/p"]);
}

/// `upload --delete` mirrors each uploaded directory: what is gone locally goes from the new
/// version (a directory as one deletion, a path that changed kind is replaced), the rest of
/// the object stays; without it an upload only adds and replaces.
#[test]
fn upload_with_delete_mirrors_the_uploaded_directories_only() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("t");
    for (i, rel) in ["a", "d/b", "d/c", "e/f", "e/g/h", "k"].iter().enumerate() {
        fill(&tree.join(rel), i as u64, 10 + i);
    }
    fill(&work.path().join("other.txt"), 9, 30);
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    ok(cairn(
        &s,
        &state,
        &[
            "upload",
            &obj,
            work.path().join("other.txt").to_str().unwrap(),
        ],
    ));
    ok(cairn(&s, &state, &["upload", &obj, tree.to_str().unwrap()]));
    assert_eq!(
        files_of(&s, &obj),
        [
            "other.txt",
            "t/a",
            "t/d/b",
            "t/d/c",
            "t/e/f",
            "t/e/g/h",
            "t/k"
        ]
    );

    std::fs::remove_file(tree.join("d/c")).unwrap();
    std::fs::remove_dir_all(tree.join("e")).unwrap();
    std::fs::remove_file(tree.join("k")).unwrap();
    fill(&tree.join("k/now_a_dir"), 7, 5);
    fill(&tree.join("n"), 8, 6);
    // Without --delete the files gone locally stay (and `k` cannot become a directory).
    let plain = cairn(&s, &state, &["upload", &obj, tree.to_str().unwrap()]);
    assert!(
        !plain.status.success(),
        "a file cannot become a directory without --delete"
    );

    let out = cairn(
        &s,
        &state,
        &["--json", "upload", "--delete", &obj, tree.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(
        v["deleted"],
        serde_json::json!(["t/d/c", "t/e", "t/k"]),
        "{v}"
    );
    assert_eq!(
        files_of(&s, &obj),
        ["other.txt", "t/a", "t/d/b", "t/k/now_a_dir", "t/n"]
    );
    let text = cairn(
        &s,
        &state,
        &["upload", "--delete", &obj, tree.to_str().unwrap()],
    );
    assert!(text.status.success());
    assert!(
        !String::from_utf8_lossy(&text.stderr).contains("deleted"),
        "nothing left to delete"
    );
}

/// Output whose reader has gone (`cairn ls … | head`) ends a command quietly with exit 0, for
/// every command that prints; before, `ls` and `versions` panicked (exit 101).
#[test]
fn commands_whose_output_reader_is_gone_exit_quietly() {
    let work = tempfile::tempdir().unwrap();
    fill(&work.path().join("tree/a.bin"), 1, 100_000);
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    upload_version(&s, &state, &obj, work.path().join("tree").to_str().unwrap());
    let file = format!("{obj}:tree/a.bin");
    for args in [
        vec!["ls", &obj],
        vec!["versions", &obj],
        vec!["cat", &file],
        vec!["--json", "ls", &obj],
    ] {
        let mut child = cairn_cmd(&s, &state, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before anything is written
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

/// A server's rate limit is waited out, not reported as a failure (QA: `ls` twice in a row
/// exited 1 with 429 against `rate_limit = 5`): 429 is retried with the same backoff as 5xx.
#[test]
fn the_cli_waits_out_a_rate_limit() {
    let work = tempfile::tempdir().unwrap();
    let s = Server::start_config(work.path(), "rate_limit = 1\nrate_burst = 0\n");
    let state = work.path().join("state");
    let started = Instant::now();
    let obj = new_object(&s, &state);
    for _ in 0..3 {
        ok(cairn(&s, &state, &["versions", &obj]));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "five requests at one a second were spread out, not all served at once"
    );
    // An upload at one request a second (QA: each retry's status read spent the second its
    // upload waited for, so every upload request was refused until the attempts ran out), and
    // the bodies refused unread are not counted as sent.
    let files = work.path().join("files");
    fill(&files.join("a.txt"), 1, 6);
    fill(&files.join("b.txt"), 2, 7);
    let out = json_out(cairn(
        &s,
        &state,
        &[
            "upload",
            &obj,
            files.to_str().unwrap(),
            "--json",
            "--parallel",
            "2",
        ],
    ));
    assert_eq!(out["bytes_sent"], 13, "{out}");

    // The progress a terminal's bars show takes the refused bodies back too.
    let more = work.path().join("more");
    for i in 0..4 {
        fill(&more.join(format!("f{i}.txt")), 10 + i, 1000);
    }
    let obj = new_object(&s, &state);
    let shown = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let seen = shown.clone();
    let progress: cairn_client::Progress = std::sync::Arc::new(move |_: &str, _: u64, n: i64| {
        seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    });
    let opts = cairn_client::UploadOptions {
        object: obj,
        paths: vec![more],
        dest: String::new(),
        parallel: 4,
        finalize: true,
        delete: false,
        message: None,
        state_dir: Some(state.clone()),
    };
    let client = cairn_client::Client::new(&s.url(""), TOKEN);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let done = rt
        .block_on(cairn_client::upload_tree(&client, &opts, progress))
        .unwrap();
    assert_eq!(done.bytes_sent, 4000);
    assert_eq!(shown.load(std::sync::atomic::Ordering::Relaxed), 4000);
}

/// A second server on a data dir in use exits 4 saying so (not 1 with RocksDB's lock error),
/// and a `listen` that cannot be used fails before the data dir is created (QA).
#[test]
fn serve_refuses_a_data_dir_in_use_and_a_bad_listen_creates_nothing() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("d");
    let _s = Server::start(&data, common::free_port());
    let serve = |data: &Path, listen: &str| {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args([
                "serve",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                listen,
            ])
            .env("CAIRN_TOKEN", TOKEN)
            .output()
            .unwrap()
    };
    let second = serve(&data, &format!("127.0.0.1:{}", common::free_port()));
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(4), "{err}");
    assert!(err.contains("in use by a running server"), "{err}");
    for bad in ["not-an-address", "127.0.0.1:99999"] {
        let fresh = work.path().join("fresh");
        let out = serve(&fresh, bad);
        assert!(!out.status.success(), "{bad}");
        assert!(!fresh.exists(), "{bad}: the data dir was created");
    }
}

/// One run of an upload command at a time: while another run of the same command holds its
/// record, a second one exits 4 instead of taking that run's draft for stale and discarding it
/// under it (review: a cron job whose runs overlap). `flock(1)` stands in for the first run.
#[test]
fn a_second_run_of_the_same_upload_waits_its_turn() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("d");
    fill(&dir.join("a.txt"), 1, 1000);
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let args = ["upload", &obj, dir.to_str().unwrap()];
    // A run that ends leaves no lock file; one left open leaves its record, named like the lock.
    ok(cairn(&s, &state, &[&args[..], &["--no-finalize"]].concat()));
    let lock = std::fs::read_dir(state.join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("the run's record")
        .with_extension("lock");
    // `-o`: the lock stays with `flock` itself, so killing it releases the lock.
    let mut holder = Command::new("flock")
        .arg("-o")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    fill(&dir.join("b.txt"), 2, 1000);
    let second = cairn(&s, &state, &args);
    let err = String::from_utf8_lossy(&second.stderr).to_string();
    assert_eq!(second.status.code(), Some(4), "{err}");
    assert!(err.contains("another run of this upload"), "{err}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    ok(cairn(&s, &state, &args));
}

/// An empty `CAIRN_STATE_DIR=` counts as unset, as the other variables do: the records go to
/// the default place (it was a usage error).
#[test]
fn an_empty_state_dir_variable_means_the_default() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("f.txt");
    fill(&file, 3, 100);
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let obj = new_object(&s, &work.path().join("state"));
    let xdg = work.path().join("xdg");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["upload", &obj, file.to_str().unwrap()])
        .env("CAIRN_SERVER", s.url(""))
        .env("CAIRN_TOKEN", TOKEN)
        .env("CAIRN_STATE_DIR", "")
        .env("XDG_STATE_HOME", &xdg)
        .output()
        .unwrap();
    ok(out);
    assert!(xdg.join("cairn/uploads").is_dir(), "the default state dir");
}

/// The resume record a `--no-finalize` upload leaves goes once its draft is finalized with
/// `cairn finalize` or discarded with `cairn object rm`: it names a draft no longer open.
#[test]
fn finalizing_or_discarding_a_left_open_draft_drops_its_resume_record() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let naming = |wt: &str| -> usize {
        std::fs::read_dir(state.join("uploads"))
            .map(|d| {
                d.flatten()
                    .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(wt)))
                    .count()
            })
            .unwrap_or(0)
    };
    for (i, finish) in [&["finalize"][..], &["object", "rm"]]
        .into_iter()
        .enumerate()
    {
        let obj = new_object(&s, &state);
        let dir = work.path().join(format!("t{i}"));
        fill(&dir.join("f.bin"), 40 + i as u64, 50_000);
        let dir = dir.to_str().unwrap();
        let open = json_out(cairn(
            &s,
            &state,
            &["upload", &obj, dir, "--no-finalize", "--json"],
        ));
        let wt = open["write_token"].as_str().unwrap().to_string();
        assert_eq!(naming(&wt), 1, "the record of the open draft");
        assert_eq!(
            left_in(&state),
            1,
            "the record, and no lock file once the run ended"
        );
        ok(cairn(&s, &state, &[finish, &[wt.as_str()]].concat()));
        assert_eq!(naming(&wt), 0, "{finish:?} dropped it");
        assert_eq!(left_in(&state), 0, "nor its lock file");
    }
}

/// How many files the client's upload state directory holds.
fn left_in(state: &std::path::Path) -> usize {
    std::fs::read_dir(state.join("uploads")).map_or(0, |d| d.count())
}

/// `get -o` into something that is not a regular file (a FIFO here; `/dev/null` in the curl
/// idiom) writes into it and leaves it what it was, instead of renaming a finished partial
/// file over it (review: as root, `-o /dev/null` replaced the device). Partial files of
/// another download beside it (`<out>.json.<tag>.cairn-part`) are not its own and stay, and a
/// non-UTF-8 output name is reported, not a crash.
#[test]
fn get_writes_into_special_files_and_keeps_other_downloads_partials() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let local = work.path().join("up").join("f.bin");
    fill(&local, 7, 300_000);
    let version = upload_version(&s, &state, &obj, local.to_str().unwrap());
    let target = format!("{version}:f.bin");

    let fifo = work.path().join("pipe");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A reader that never gets a writer must fail the test, not hang it.
    let (tx, read) = std::sync::mpsc::channel();
    {
        let fifo = fifo.clone();
        std::thread::spawn(move || tx.send(std::fs::read(fifo).unwrap()));
    }
    ok(cairn(
        &s,
        &state,
        &["get", &target, "-o", fifo.to_str().unwrap()],
    ));
    let got = read
        .recv_timeout(Duration::from_secs(20))
        .expect("the FIFO was written");
    assert_eq!(got, std::fs::read(&local).unwrap());
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(kind.is_fifo(), "the FIFO is still a FIFO: {kind:?}");

    let out = work.path().join("v.mp4");
    let other = work.path().join("v.mp4.json.0123456789abcdef.cairn-part");
    std::fs::write(&other, b"another download's bytes").unwrap();
    ok(cairn(
        &s,
        &state,
        &["get", &target, "-o", out.to_str().unwrap()],
    ));
    assert!(other.exists(), "another download's partial file stays");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&local).unwrap());

    let odd = work
        .path()
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9.bin"));
    let got = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            std::ffi::OsStr::new("get"),
            target.as_ref(),
            "-o".as_ref(),
            odd.as_os_str(),
        ])
        .env("CAIRN_SERVER", s.url(""))
        .env("CAIRN_TOKEN", TOKEN)
        .env("CAIRN_STATE_DIR", &state)
        .output()
        .unwrap();
    ok(got);
    assert_eq!(std::fs::read(&odd).unwrap(), std::fs::read(&local).unwrap());
}

/// A client config file the parser refuses is reported by line, without quoting the line: it
/// may hold the token (review: an unquoted token went to stderr, and so to cron logs).
#[test]
fn a_bad_client_config_never_prints_its_token() {
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("config.toml");
    std::fs::write(
        &cfg,
        "server = \"http://127.0.0.1:9\"\ntoken = cairn_secret_1234\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["lib", "ls", "--cli-config", cfg.to_str().unwrap()])
        .env_remove("CAIRN_SERVER")
        .env_remove("CAIRN_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("cairn_secret_1234"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

/// Files under a folder whose name is not UTF-8 upload, and an interrupted run's record of them
/// is saved and resumed (review: the record could not be written, after its draft was opened).
#[test]
fn files_under_a_folder_named_in_latin_1_upload_and_resume() {
    use std::os::unix::ffi::OsStrExt;
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let odd = work
        .path()
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9"))
        .join("up");
    fill(&odd.join("f.bin"), 3, 70_000);
    let upload = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("upload")
            .arg(&obj)
            .arg(&odd)
            .args(["--json"])
            .args(extra)
            .env("CAIRN_SERVER", s.url(""))
            .env("CAIRN_TOKEN", TOKEN)
            .env("CAIRN_STATE_DIR", &state)
            .output()
            .unwrap()
    };
    let open = json_out(upload(&["--no-finalize"]));
    assert!(open["write_token"].is_string(), "{open}");
    let done = json_out(upload(&[]));
    assert_eq!(done["write_token"], open["write_token"], "resumed: {done}");
    let version = done["version"].as_str().unwrap().to_string();
    let back = work.path().join("back.bin");
    let target = format!("{version}:up/f.bin");
    ok(cairn(
        &s,
        &state,
        &["get", &target, "-o", back.to_str().unwrap()],
    ));
    assert!(std::fs::read(&back).unwrap() == std::fs::read(odd.join("f.bin")).unwrap());
}

/// What [`proxy`] does with a request, given its first line.
enum Hook {
    Forward,
    /// Forwarded, but the connection is closed once the server answers, the answer unsent.
    LoseReply,
    /// Answered by the proxy with these bytes, the server never seeing it.
    Answer(String),
}

/// A TCP proxy to `to` on loopback that forwards both ways, doing with each request what
/// `hook` says from its first line (read as it arrives: the tests' requests start a read).
fn proxy(to: u16, hook: impl Fn(&str) -> Hook + Send + Sync + 'static) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hook = Arc::new(hook);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let lose = Arc::new(AtomicBool::new(false));
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (hook, flag) = (hook.clone(), lose.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = c_in.read(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    match hook(text.lines().next().unwrap_or_default()) {
                        Hook::Forward => {}
                        Hook::LoseReply => flag.store(true, SeqCst),
                        Hook::Answer(reply) => {
                            let _ = c_in.write_all(reply.as_bytes());
                            let _ = c_in.shutdown(Shutdown::Both);
                            let _ = s_out.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_out.shutdown(Shutdown::Write);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = s_in.read(&mut buf) {
                    if lose.load(SeqCst) {
                        let _ = c_out.shutdown(Shutdown::Both);
                        let _ = s_in.shutdown(Shutdown::Both);
                        return;
                    }
                    if c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c_out.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// Whether a request line is a finalize: `POST /q/tqw__… HTTP/1.1`, nothing after the token.
fn is_finalize(line: &str) -> bool {
    line.strip_prefix("POST /q/tqw__")
        .and_then(|rest| rest.strip_suffix(" HTTP/1.1"))
        .is_some_and(|token| !token.contains(['/', ' ']))
}

/// [`cairn_cmd`] talking to the server through the proxy on `port`.
fn cairn_via(s: &Server, state: &Path, port: u16, args: &[&str]) -> Command {
    let mut c = cairn_cmd(s, state, args);
    c.env("CAIRN_SERVER", format!("http://127.0.0.1:{port}/"));
    c
}

/// A proxy to `to` that loses the server's reply to the first finalize (`POST /q/tqw__…
/// HTTP/1.1`): a finalize that went through and whose reply was lost. Returns its port and
/// whether it has lost a reply.
fn lose_the_first_finalize_reply(to: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let lost = std::sync::Arc::new(AtomicBool::new(false));
    let seen = lost.clone();
    let port = proxy(to, move |line| {
        match is_finalize(line) && !seen.swap(true, SeqCst) {
            true => Hook::LoseReply,
            false => Hook::Forward,
        }
    });
    (port, lost)
}

/// The reply to `cairn upload`'s finalize is lost after the server published the version: the
/// retry (same `Idempotency-Key`) gets that version back, the run succeeds with its hash, and
/// there is one version, not a second identical one or a failed run.
#[test]
fn an_upload_whose_finalize_reply_is_lost_publishes_one_version() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let s = Server::start(data.path(), port);
    let obj = new_object(&s, &state);
    let dir = work.path().join("tree");
    fill(&dir.join("a.bin"), 71, 300_000);
    fill(&dir.join("sub/b.txt"), 72, 1_000);
    let (proxy, lost) = lose_the_first_finalize_reply(port);
    let out = cairn_via(&s, &state, proxy, &["upload", &obj, dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        lost.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy lost no finalize reply"
    );
    let hash = ok(out);
    let versions = common::call(&s, "GET", &format!("/qid/{obj}"), None, 200);
    let versions = versions["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0]["hash"], hash.as_str());
    assert_got_back(
        &s,
        &state,
        &format!("{hash}:tree/a.bin"),
        &dir.join("a.bin"),
    );
}

/// `get -o DIR` puts the file into the directory under its own name, as `cp` does (QA 33: the
/// whole file came down, then the rename onto the directory failed); a second `get` into an
/// output another holds is refused with exit 4 and writes nothing (both runs used to fail,
/// each with the other's bytes in their shared partial file).
#[test]
fn get_into_a_directory_and_two_gets_into_one_output() {
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let local = work.path().join("up").join("f.bin");
    fill(&local, 9, 200_000);
    let version = upload_version(&s, &state, &obj, local.to_str().unwrap());
    let target = format!("{version}:f.bin");

    let dir = work.path().join("into");
    std::fs::create_dir(&dir).unwrap();
    ok(cairn(
        &s,
        &state,
        &["get", &target, "-o", dir.to_str().unwrap()],
    ));
    assert!(std::fs::read(dir.join("f.bin")).unwrap() == std::fs::read(&local).unwrap());

    // Another run holds the output's partial file: this one is refused and writes nothing.
    let etag = common::curl(&s.url(&format!("/q/{version}/files/f.bin")), &["-I"])
        .header("etag")
        .unwrap()
        .trim_matches('"')
        .to_string();
    let out = work.path().join("out.bin");
    let part = work
        .path()
        .join(format!("out.bin.{}.cairn-part", &etag[..16]));
    let held = std::fs::File::create(&part).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let refused = cairn(&s, &state, &["get", &target, "-o", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(4), "{err}");
    assert!(err.contains("another `cairn get`"), "{err}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::metadata(&part).unwrap().len(),
        0,
        "nothing written"
    );
    drop(held);
    ok(cairn(
        &s,
        &state,
        &["get", &target, "-o", out.to_str().unwrap()],
    ));
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&local).unwrap());
    assert!(!part.exists(), "renamed onto the output");

    // Outputs a download could never be renamed onto are refused before anything is fetched.
    let blocked = work.path().join("blocked");
    std::fs::create_dir_all(blocked.join("f.bin")).unwrap();
    let missing_dir = format!("{}/", work.path().join("nodir").display());
    for o in [blocked.to_str().unwrap(), missing_dir.as_str()] {
        let r = cairn(&s, &state, &["get", &target, "-o", o]);
        assert!(!r.status.success(), "{o}");
        assert_eq!(r.status.code(), Some(1), "{o}");
    }
    assert_eq!(
        std::fs::read_dir(&blocked).unwrap().count(),
        1,
        "nothing beside it"
    );

    // A get that fails (no such file) leaves no partial file behind.
    let missing = cairn(
        &s,
        &state,
        &[
            "get",
            &format!("{version}:nope.bin"),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(missing.status.code(), Some(3), "not found");
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".cairn-part"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A proxy to `to` that answers the first files-job creation (`POST /q/tqw__…/file_jobs`)
/// itself with a 400; returns its port and the write token it refused a job for.
fn refuse_files_jobs(to: u16) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let refused = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = refused.clone();
    let port = proxy(to, move |line| {
        let job = line.strip_prefix("POST /q/").and_then(|r| {
            r.strip_suffix("/file_jobs HTTP/1.1")
                .filter(|t| t.starts_with("tqw__"))
        });
        // Only the first: the run after it goes through the same proxy (a record names its
        // server).
        let mut seen = seen.lock().unwrap();
        match job.filter(|_| seen.is_empty()) {
            Some(wt) => {
                seen.push(wt.to_string());
                let body = r#"{"errors":[{"op":"proxy","kind":"invalid","reason":"refused by the test"}]}"#;
                Hook::Answer(format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ))
            }
            None => Hook::Forward,
        }
    });
    (port, refused)
}

/// A run that stops after opening its draft and before recording its files job (here: the
/// job's creation is refused; QA 33: a kill -9 in that window) leaves a record naming the
/// draft, and the next run discards that draft before it opens its own; it used to be left
/// open for good.
#[test]
fn a_draft_opened_by_a_run_that_stopped_before_its_files_job_is_discarded_next_time() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let s = Server::start(data.path(), port);
    let obj = new_object(&s, &state);
    let dir = work.path().join("tree");
    fill(&dir.join("a.bin"), 81, 10_000);
    let (proxy, refused) = refuse_files_jobs(port);
    let first = cairn_via(&s, &state, proxy, &["upload", &obj, dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!first.status.success());
    let orphan = refused
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("a files job was refused");
    assert_eq!(
        draft_status(&s, &orphan),
        200,
        "the first run's draft is open"
    );
    let second = cairn_via(&s, &state, proxy, &["upload", &obj, dir.to_str().unwrap()])
        .output()
        .unwrap();
    ok(second);
    assert_eq!(draft_status(&s, &orphan), 404, "the next run discarded it");
}

/// `gc`, `fsck` and `stats` with `--data` open the store with the server's settings: its config
/// file (`--config`) and `CAIRN_*` variables, as `serve` does (review 33: they used the
/// defaults, so a store served with `allow_missing_packs` could not be collected offline, and
/// an offline gc ignored the server's free-space reserve).
#[test]
fn offline_commands_open_the_store_with_the_servers_config() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let data = work.path().join("data");
    let mut s = Server::start(&data, common::free_port());
    let obj = new_object(&s, &state);
    fill(&work.path().join("f.bin"), 5, 100_000);
    ok(cairn(
        &s,
        &state,
        &["upload", &obj, work.path().join("f.bin").to_str().unwrap()],
    ));
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let pack = std::fs::read_dir(data.join("packs"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .max()
        .unwrap();
    std::fs::rename(&pack, work.path().join("aside")).unwrap();
    let d = data.to_str().unwrap();
    let refused = cairn(&s, &state, &["stats", "--data", d]);
    assert!(!refused.status.success(), "a pack is missing");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("missing"));
    let config = work.path().join("server.toml");
    std::fs::write(&config, "allow_missing_packs = true\n").unwrap();
    let c = config.to_str().unwrap();
    ok(cairn(&s, &state, &["stats", "--data", d, "--config", c]));
    ok(cairn(&s, &state, &["gc", "--data", d, "--config", c]));
    let by_env = cairn_cmd(&s, &state, &["stats", "--data", d])
        .env("CAIRN_ALLOW_MISSING_PACKS", "yes")
        .output()
        .unwrap();
    ok(by_env);
}

/// QA 33: an upload of a large file, killed 40 MiB in, and run again after a small file beside
/// it was edited, another removed and one added. The run continues the draft: the large file's
/// upload goes on from where the server is (its jobs hold no changed file), the small files
/// are sent again, and the version is the tree as it is now. It used to discard the draft and
/// send every byte again.
#[test]
fn a_rerun_after_a_small_change_sends_only_what_the_server_lacks() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("t");
    let big = dir.join("big.bin");
    fill(&big, 91, 100 << 20);
    fill(&dir.join("notes/a.txt"), 92, 5_000);
    fill(&dir.join("notes/b.txt"), 93, 6_000);
    fill(&dir.join("gone.txt"), 94, 7_000);
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let state = work.path().join("state");
    let obj = new_object(&s, &state);
    let args = [
        "upload",
        &obj,
        dir.to_str().unwrap(),
        "--parallel",
        "1",
        "--json",
    ];
    kill_once_received(&s, spawn_cairn(&s, &state, &args), 40 << 20);
    let old = recorded_draft(&state);
    let received = s.uploads().1;

    fill(&dir.join("notes/a.txt"), 95, 5_500);
    std::fs::remove_file(dir.join("gone.txt")).unwrap();
    fill(&dir.join("notes/c.txt"), 96, 1_000);
    let out = json_out(cairn(&s, &state, &args));
    assert_eq!(out["resumed"], true, "{out}");
    assert_eq!(out["write_token"], old.as_str(), "{out}");
    let sent = out["bytes_sent"].as_u64().unwrap();
    let lacking = (100u64 << 20) - received.min(100 << 20);
    assert!(
        sent <= lacking + 64 * 1024 + 2 * (8 << 20),
        "sent {sent}, the server lacked about {lacking}: {out}"
    );
    let version = out["version"].as_str().unwrap();
    for f in ["big.bin", "notes/a.txt", "notes/b.txt", "notes/c.txt"] {
        assert_got_back(&s, &state, &format!("{version}:t/{f}"), &dir.join(f));
    }
    let mut listed = files_of(&s, version);
    listed.sort();
    assert_eq!(
        listed,
        [
            "t/big.bin",
            "t/notes/a.txt",
            "t/notes/b.txt",
            "t/notes/c.txt"
        ],
        "gone.txt is gone"
    );
}

/// An upload killed while its finalize's reply was on the way (the version committed, the run
/// never told): the next run finds its draft gone, asks the server with the finalize's key,
/// and reports that version, publishing nothing (QA 33: it published a second, identical one).
#[test]
fn a_rerun_after_a_finalize_whose_run_died_reports_that_version() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let s = Server::start(data.path(), port);
    let obj = new_object(&s, &state);
    let dir = work.path().join("tree");
    fill(&dir.join("a.bin"), 97, 50_000);
    let (losing, lost) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
    );
    let (l, seen) = (losing.clone(), lost.clone());
    let proxy = proxy(port, move |line| {
        match is_finalize(line) && l.load(SeqCst) {
            true => {
                seen.store(true, SeqCst);
                Hook::LoseReply
            }
            false => Hook::Forward,
        }
    });
    let args = ["upload", &obj, dir.to_str().unwrap(), "--json"];
    let mut child = cairn_via(&s, &state, proxy, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lost.load(SeqCst) {
        assert!(Instant::now() < deadline, "no finalize was sent");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL, its finalize committed and unanswered
    child.wait().unwrap();
    let versions = || {
        common::call(&s, "GET", &format!("/qid/{obj}"), None, 200)["versions"]
            .as_array()
            .unwrap()
            .clone()
    };
    let published = versions();
    assert_eq!(published.len(), 1, "the finalize went through");

    losing.store(false, SeqCst);
    let out = cairn_via(&s, &state, proxy, &args).output().unwrap();
    let out = json_out(out);
    assert_eq!(out["version"], published[0]["hash"], "{out}");
    assert_eq!(out["bytes_sent"], 0, "{out}");
    assert_eq!(versions().len(), 1, "nothing published again");
    assert!(records(&state).is_empty(), "the record is gone");
}
