//! Crash test: a child process (`cairn crash-child`) uploads and is aborted (no shutdown, no
//! destructors) at many random points, some mid-request. After every abort the store is
//! reopened and every acknowledged byte must be there; the offset never goes backwards; the
//! last run completes the upload and the finalized files read back byte-exact.

mod common;

use std::collections::HashMap;
use std::process::Command;

use cairn_core::{FilePath, UploadJobId, WriteToken};
use cairn_jobs::{Engine, EngineConfig, Qhit};
use rand::{Rng, SeedableRng};

const FILES: &[(&str, u64)] = &[
    ("a.bin", 1_500_000),
    ("dir/b.bin", 700_000),
    ("dir/c.bin", 100_000),
    ("empty", 0),
];

/// The bytes `cairn crash-child` uploads as file `i` (its `content`, the same blake3 XOF).
fn content(i: usize, len: u64) -> Vec<u8> {
    common::pattern(i as u64, len as usize)
}

fn child(dir: &std::path::Path, abort_after: u64) -> (bool, Vec<(String, u64)>) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "crash-child",
            dir.to_str().unwrap(),
            &abort_after.to_string(),
        ])
        .output()
        .expect("run cairn crash-child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let done = stdout.lines().any(|l| l == "DONE");
    assert_eq!(
        done,
        out.status.success(),
        "child status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let acks = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ACK "))
        .map(|l| {
            let (uj, n) = l.split_once(' ').unwrap();
            (uj.to_string(), n.parse().unwrap())
        })
        .collect();
    (done, acks)
}

fn ids(dir: &std::path::Path) -> (WriteToken, Vec<UploadJobId>) {
    let text = std::fs::read_to_string(dir.join("crash-ids.txt")).unwrap();
    let mut words = text.split_whitespace();
    let token = words.next().unwrap().parse().unwrap();
    words.next();
    (token, words.map(|w| w.parse().unwrap()).collect())
}

#[test]
fn acknowledged_bytes_survive_aborts_at_many_points() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC4A5);
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let (mut kills, mut done) = (0, false);
    while !done && kills < 40 {
        let cut = rng.gen_range(1_000..200_000);
        let (finished, acks) = child(dir.path(), cut);
        done = finished;
        kills += u32::from(!finished);
        for (uj, n) in acks {
            let e = acked.entry(uj).or_default();
            *e = (*e).max(n);
        }
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        for uj in ids(dir.path()).1 {
            let rec = engine.upload_job(&uj).unwrap();
            let key = uj.to_string();
            let ack = acked.get(&key).copied().unwrap_or(0);
            assert!(
                rec.received >= ack,
                "{uj}: {} durable < {ack} acknowledged",
                rec.received
            );
            assert!(
                rec.received >= seen.get(&key).copied().unwrap_or(0),
                "{uj}: offset went backwards"
            );
            assert!(rec.received <= rec.size);
            seen.insert(key, rec.received);
        }
    }
    assert!(kills >= 10, "only {kills} aborts happened");
    if !done {
        assert!(child(dir.path(), u64::MAX).0, "the final run completes");
    }
    let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
    let (token, _) = ids(dir.path());
    let (version, _) = engine.finalize(&token).unwrap();
    let mut verified = 0;
    for (i, (path, size)) in FILES.iter().enumerate() {
        let h = engine
            .open_file(&Qhit::Version(version), &FilePath::parse(path).unwrap())
            .unwrap();
        let mut got = Vec::new();
        engine
            .read_file(&h, 0, h.size, |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        assert!(
            got == content(i, *size),
            "{path} differs after {kills} aborts"
        );
        verified += got.len();
    }
    let fsck = engine.fsck().unwrap();
    assert!(fsck.is_clean(), "{fsck:?}");
    println!(
        "aborts: {kills}, acknowledged bytes: {}, bytes verified: {verified}",
        acked.values().sum::<u64>()
    );
}
