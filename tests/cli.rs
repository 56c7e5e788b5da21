//! The `cairn` CLI against a real server on loopback: a tree of 1,000 files uploaded with
//! `--parallel 8` and every file fetched back with `cairn get`; an upload killed with SIGKILL and
//! run again, which must finish and send only what the server lacked.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Server, TOKEN};

fn cairn(s: &Server, state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("CAIRN_SERVER", s.url(""))
        .env("CAIRN_TOKEN", TOKEN)
        .env("CAIRN_STATE_DIR", state)
        .output()
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
    let mut buf = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut buf);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, buf).unwrap();
}

fn new_object(s: &Server, state: &Path) -> String {
    let lib = ok(cairn(s, state, &["lib", "create", "cli"]));
    ok(cairn(s, state, &["object", "create", &lib]))
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
    let version = out["version"].as_str().unwrap().to_string();
    let listing = ok(cairn(&s, &state, &["ls", &format!("{obj}:/tree/d1")]));
    assert_eq!(listing.lines().count(), 100, "{listing}");
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("CAIRN_SERVER", s.url(""))
        .env("CAIRN_TOKEN", TOKEN)
        .env("CAIRN_STATE_DIR", &state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.uploads().1 < 40 << 20 {
        assert!(Instant::now() < deadline, "the upload did not progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // What the server holds now, read through the resume record the client left.
    let record_file = std::fs::read_dir(state.join("uploads"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
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

    let out: serde_json::Value = serde_json::from_str(&ok(cairn(&s, &state, &args))).unwrap();
    assert_eq!(out["resumed"], true);
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
    let dest = work.path().join("back.bin");
    ok(cairn(
        &s,
        &state,
        &[
            "get",
            &format!("{version}:big.bin"),
            "-o",
            dest.to_str().unwrap(),
        ],
    ));
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&big).unwrap());
    assert_eq!(
        std::fs::read_dir(state.join("uploads")).unwrap().count(),
        0,
        "the record is removed once finalized"
    );
}
