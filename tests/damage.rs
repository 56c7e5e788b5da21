//! Damage on disk against the real server: a flipped bit in a pack is never served (a body
//! that has started is cut short, and the log says so); the same bytes uploaded again are
//! stored anew, not deduplicated onto the damaged copy, which heals every file sharing it;
//! a lost index or a lost pack makes the server refuse to start instead of discarding or
//! hiding data.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, TOKEN};

const SIZE: usize = 3_000_000;

fn get(s: &Server, id: &str, path: &str) -> common::Reply {
    common::curl(&s.url(&format!("/q/{id}/files/{path}")), &[])
}

/// Runs `cairn serve` on `data` expecting it to refuse; returns what it printed.
fn refused(data: &Path, envs: &[(&str, &str)]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--data", data.to_str().unwrap(), "--listen"])
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .env("CAIRN_TOKEN", TOKEN)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the server started on a damaged store");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn newest_pack(data: &Path) -> std::path::PathBuf {
    std::fs::read_dir(data.join("packs"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .max()
        .unwrap()
}

#[test]
fn damage_is_never_served_a_new_upload_heals_it_and_lost_files_stop_the_start() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("big.bin");
    let bytes = common::pattern(5, SIZE);
    std::fs::write(&src, &bytes).unwrap();
    let data = work.path().join("data");
    let port = common::free_port();
    let mut s = Server::start(&data, port);
    let (_, obj, wt) = common::new_object(&s);
    common::upload_files(&s, &wt, &[("big.bin", &src)]);
    s.child.kill().unwrap();
    s.child.wait().unwrap();

    // A flipped byte 50 bytes before the end of the pack's last record: the file's last chunk.
    let pack = newest_pack(&data);
    let mut raw = std::fs::read(&pack).unwrap();
    let at = raw.iter().rposition(|&b| b != 0).unwrap() - 50;
    raw[at] ^= 0xff;
    std::fs::write(&pack, &raw).unwrap();

    let mut s = Server::start(&data, port);
    // Two ranges, the first over the damaged byte: a JSON 500 before anything is sent, not a
    // 206 cut short after its first part header (review 32).
    let ranges = format!("Range: bytes={}-{},0-9", SIZE - 300, SIZE - 1);
    let r = common::curl(&s.url(&format!("/q/{obj}/files/big.bin")), &["-H", &ranges]);
    assert_eq!(
        (r.status, r.kind()),
        (500, "corrupt".to_string()),
        "{:?}",
        r.headers
    );
    let r = get(&s, &obj, "big.bin");
    assert!(r.body.len() < SIZE, "the damaged chunk was not sent");
    assert!(
        r.body[..] == bytes[..r.body.len()],
        "what was sent is right"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.log_lines().iter().any(|l| l.contains("cut short")) {
        assert!(Instant::now() < deadline, "no warning: {:?}", s.log_lines());
        std::thread::sleep(Duration::from_millis(50));
    }
    let warning = s
        .log_lines()
        .into_iter()
        .find(|l| l.contains("cut short"))
        .unwrap();
    assert!(
        warning.contains("WARN") && warning.contains("corrupt"),
        "{warning}"
    );

    // The same bytes into a second object: accepted, stored anew, and both files read whole.
    let (_, obj2, wt2) = common::new_object(&s);
    common::upload_files(&s, &wt2, &[("again.bin", &src)]);
    for (id, path) in [(&obj2, "again.bin"), (&obj, "big.bin")] {
        let r = get(&s, id, path);
        assert_eq!(r.status, 200);
        assert!(r.body == bytes, "{id}:{path} is whole again");
    }
    s.child.kill().unwrap();
    s.child.wait().unwrap();

    // A lost index: refused, and the packs are kept (recovery used to delete them all).
    let index = data.join("index");
    let aside = work.path().join("index-aside");
    std::fs::rename(&index, &aside).unwrap();
    let packs_before: u64 = std::fs::read_dir(data.join("packs"))
        .unwrap()
        .map(|d| d.unwrap().metadata().unwrap().len())
        .sum();
    let why = refused(&data, &[]);
    assert!(
        why.contains("index") && why.contains("new or empty"),
        "{why}"
    );
    let packs_after: u64 = std::fs::read_dir(data.join("packs"))
        .unwrap()
        .map(|d| d.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(packs_after, packs_before, "no pack touched");
    std::fs::remove_dir_all(&index).unwrap();
    std::fs::rename(&aside, &index).unwrap();

    // A lost pack: refused unless the operator allows it; then its files are errors, not 200s.
    let pack = newest_pack(&data);
    let kept = work.path().join("pack-aside");
    std::fs::rename(&pack, &kept).unwrap();
    let why = refused(&data, &[]);
    let name = pack.file_name().unwrap().to_str().unwrap();
    assert!(why.contains(name) && why.contains("missing"), "{why}");
    let s = Server::start_with(&data, port, &[], &[("CAIRN_ALLOW_MISSING_PACKS", "1")]);
    let r = get(&s, &obj2, "again.bin");
    assert!(
        r.status >= 500 || r.body.len() < SIZE,
        "a lost pack's file is not served"
    );
    assert!(!pack.exists(), "the lost pack's name is not reused");
}

/// One damaged byte in a sealed pack's header (QA: it stopped the whole store from opening,
/// fsck included, without naming the pack): the store opens, files elsewhere are served, the
/// files in that pack are `corrupt` with the pack named, and fsck names the damaged file.
#[test]
fn a_damaged_pack_header_fails_only_that_pack_s_reads() {
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("cairn.toml");
    std::fs::write(&cfg, "pack_size = 2097152\n").unwrap();
    let args = ["--config", cfg.to_str().unwrap()];
    let data = work.path().join("data");
    let port = common::free_port();
    let mut s = Server::start_args(&data, port, &args);
    let (_, obj, wt) = common::new_object(&s);
    let mut files = Vec::new();
    for i in 0..4u8 {
        let src = work.path().join(format!("f{i}.bin"));
        std::fs::write(&src, common::pattern(10 + i as u64, 3 << 20)).unwrap();
        files.push((format!("f{i}.bin"), src));
    }
    let named: Vec<(&str, &Path)> = files
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    common::upload_files(&s, &wt, &named);
    s.child.kill().unwrap();
    s.child.wait().unwrap();

    // A sealed pack and the open one (the newest), which recovery would otherwise reopen.
    for pack in [
        data.join("packs").join("0000000000000003.pack"),
        newest_pack(&data),
    ] {
        let mut raw = std::fs::read(&pack).unwrap();
        raw[0] = b'X';
        std::fs::write(&pack, &raw).unwrap();
    }

    let s = Server::start_args(&data, port, &args);
    // New data goes to a new pack.
    let (_, obj2, wt2) = common::new_object(&s);
    let fresh = work.path().join("fresh.bin");
    std::fs::write(&fresh, common::pattern(99, 1 << 20)).unwrap();
    common::upload_files(&s, &wt2, &[("fresh.bin", &fresh)]);
    let r = get(&s, &obj2, "fresh.bin");
    assert!(r.status == 200 && r.body == std::fs::read(&fresh).unwrap());
    let mut bad = Vec::new();
    for (name, src) in &files {
        let r = get(&s, &obj, name);
        match r.status {
            200 if r.body == std::fs::read(src).unwrap() => {}
            _ => bad.push((name.clone(), r)),
        }
    }
    assert!(
        !bad.is_empty() && bad.len() < files.len(),
        "only that pack's files fail"
    );
    for (name, r) in &bad {
        // A body not yet started is a 500 naming the pack; one that started is cut short.
        if r.status == 500 {
            assert_eq!(r.kind(), "corrupt", "{name}");
            let body = String::from_utf8_lossy(&r.body);
            assert!(body.contains("0000000000000003.pack"), "{name}: {body}");
        }
    }
    let fsck = common::call(&s, "POST", "/admin/fsck", None, 200);
    assert_eq!(fsck["clean"], false, "{fsck}");
    let damaged = fsck["damaged_files"].to_string();
    assert!(
        bad.iter().all(|(n, _)| damaged.contains(n.as_str())),
        "{fsck}"
    );
}
