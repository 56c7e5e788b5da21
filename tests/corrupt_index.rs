//! Corruption in RocksDB values (the pack-byte case is in `cli.rs` and the jobs crate): a chunk
//! location, a part's chunk list and a directory node are damaged while the server is down.
//! Reads must fail with `corrupt` (HTTP 500), never return wrong bytes; fsck must name what is
//! affected; gc must not delete the evidence.

mod common;

use cairn_jobs::{Engine, EngineConfig};
use common::{call, curl, new_object, pattern, upload_files, Server};

/// Flips one byte in the middle of the value of `key` in `cf`.
fn flip(engine: &Engine, cf: &str, key: &[u8]) {
    let index = engine.store().index();
    let mut v = index.get(cf, key).unwrap().expect("the record exists");
    let i = v.len() / 2;
    v[i] ^= 0x55;
    let mut b = index.batch();
    b.put(cf, key, &v);
    index.write(b, true).unwrap();
}

/// The key of the record in `cf` that `pick` chooses by value.
fn find(engine: &Engine, cf: &str, pick: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    engine
        .store()
        .index()
        .scan(cf, &[])
        .map(Result::unwrap)
        .find(|(_, v)| pick(v))
        .map(|(k, _)| k.to_vec())
        .unwrap_or_else(|| panic!("no matching record in {cf}"))
}

fn fsck(s: &Server) -> serde_json::Value {
    call(s, "POST", "/admin/fsck", None, 200)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn damaged_index_records_are_errors_named_by_fsck_and_kept_by_gc() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_port();
    let (a, b, c) = (pattern(1, 3 << 20), pattern(2, 60_000), pattern(3, 50_000));
    let v1 = {
        let s = Server::start(&data, port);
        let files: Vec<(&str, std::path::PathBuf)> =
            [("a.bin", &a), ("b.bin", &b), ("d/c.bin", &c)]
                .iter()
                .map(|(p, bytes)| {
                    let f = dir.path().join(p.replace('/', "_"));
                    std::fs::write(&f, bytes).unwrap();
                    (*p, f)
                })
                .collect();
        let refs: Vec<(&str, &std::path::Path)> =
            files.iter().map(|(p, f)| (*p, f.as_path())).collect();
        let (_, _, wt) = new_object(&s);
        upload_files(&s, &wt, &refs)
    }; // the server is killed here

    {
        let engine = Engine::open(EngineConfig::new(&data)).unwrap();
        // b.bin is below the smallest chunk size: one chunk, named by its blake3.
        flip(&engine, "chunks", blake3::hash(&b).as_bytes());
        // a.bin's part has by far the longest chunk list.
        let longest = engine
            .store()
            .index()
            .scan("parts", &[])
            .map(Result::unwrap)
            .map(|(_, v)| v.len())
            .max()
            .unwrap();
        let part = find(&engine, "parts", |v| v.len() == longest);
        flip(&engine, "parts", &part);
        // The node of directory d/ is the one that names c.bin.
        // The nodes of directory d/ name c.bin (the finalized one, and the draft's before it).
        let nodes: Vec<Vec<u8>> = engine
            .store()
            .index()
            .scan("nodes", &[])
            .map(Result::unwrap)
            .filter(|(_, v)| v.windows(5).any(|w| w == b"c.bin"))
            .map(|(k, _)| k.to_vec())
            .collect();
        assert!(!nodes.is_empty());
        for node in nodes {
            flip(&engine, "nodes", &node);
        }
    }

    let s = Server::start(&data, port);
    let get = |p: &str| curl(&s.url(&format!("/q/{v1}/files/{p}")), &[]);
    let r = get("b.bin");
    assert_eq!((r.status, r.kind().as_str()), (500, "corrupt"), "b.bin");
    let r = get("d/c.bin");
    assert_eq!((r.status, r.kind().as_str()), (500, "corrupt"), "d/c.bin");
    // a.bin: an error before the body, or a body cut short at the damage; never wrong bytes.
    let r = get("a.bin");
    if r.status == 200 {
        assert!(r.body.len() < a.len(), "a.bin was served whole");
        assert!(r.body == a[..r.body.len()], "a.bin: wrong bytes served");
    } else {
        assert_eq!((r.status, r.kind().as_str()), (500, "corrupt"), "a.bin");
    }

    let before = fsck(&s);
    assert_eq!(before["clean"], false);
    let chunk = blake3::hash(&b).to_hex().to_string();
    assert!(
        strings(&before["corrupt_chunks"]).contains(&chunk),
        "fsck names b.bin's chunk: {before}"
    );
    let files = strings(&before["damaged_files"]);
    for f in ["a.bin", "b.bin"] {
        assert!(
            files.contains(&format!("{v1}:{f}")),
            "fsck names {f}: {before}"
        );
    }
    assert!(
        files.iter().any(|f| f.starts_with(&format!("{v1}:d/"))),
        "fsck names d/: {before}"
    );
    assert!(!strings(&before["damaged_parts"]).is_empty(), "{before}");
    assert!(
        strings(&before["corrupt_records"])
            .iter()
            .any(|r| r.starts_with("nodes/")),
        "{before}"
    );

    // A repair must not "fix" counts from damaged records (that would let gc free live chunks).
    let repair = call(&s, "POST", "/admin/fsck?repair=true", None, 200);
    assert_eq!(repair["repaired"], 0, "{repair}");
    assert!(repair["repair_skipped"].is_string(), "{repair}");

    // gc may refuse to run on a damaged index, but it must not remove the evidence.
    let gc = curl(&s.url("/admin/gc"), &["-X", "POST"]);
    assert!(
        gc.status == 200 || gc.kind() == "corrupt",
        "gc: {} {}",
        gc.status,
        String::from_utf8_lossy(&gc.body)
    );
    let after = fsck(&s);
    for k in [
        "corrupt_chunks",
        "damaged_files",
        "damaged_parts",
        "corrupt_records",
    ] {
        assert_eq!(
            before[k],
            after[k],
            "{k} changed after gc: {}",
            String::from_utf8_lossy(&gc.body)
        );
    }
    println!(
        "gc: {} {}\nfsck: {after}",
        gc.status,
        String::from_utf8_lossy(&gc.body)
    );
}
