//! Storage properties seen through the engine: dedup, corruption detection, gc, and byte-range
//! reads across chunk and part boundaries.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use cairn_core::{ErrorKind, FilePath};
use cairn_jobs::{Engine, Qhit};
use cairn_store::{ChunkParams, GcOptions};
use common::*;
use proptest::prelude::*;

const MIB: usize = 1 << 20;

async fn store_file(
    e: &Arc<Engine>,
    t: cairn_core::WriteToken,
    path: &str,
    bytes: &[u8],
) -> cairn_core::VersionHash {
    let files: BTreeMap<String, Vec<u8>> =
        [(path.to_string(), bytes.to_vec())].into_iter().collect();
    let job = e
        .create_files_job(&t, &request(vec![add_file(path, bytes.len() as u64)]))
        .unwrap();
    upload_all(e, t, &job, &files).await;
    e.finalize(&t).unwrap().0
}

/// Reads `[off, off+len)` of `path` through the streaming reader the HTTP layer uses.
async fn stream_range(e: &Arc<Engine>, q: &Qhit, path: &str, off: u64, len: u64) -> Vec<u8> {
    use futures::StreamExt;
    let h = e.open_file(q, &FilePath::parse(path).unwrap()).unwrap();
    let mut s = std::pin::pin!(e.read_stream(h, off, len));
    let mut out = Vec::new();
    while let Some(piece) = s.next().await {
        out.extend_from_slice(&piece.unwrap());
    }
    out
}

fn default_engine(dir: &std::path::Path) -> Arc<Engine> {
    Arc::new(Engine::open(config(dir, 32 << 20, ChunkParams::default())).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_64_mib_twice_adds_under_one_percent() {
    let dir = tempfile::tempdir().unwrap();
    let e = default_engine(dir.path());
    let src = data(64, 64 * MIB);
    store_file(&e, new_object(&e), "a.bin", &src).await;
    let once = e.store().stats().unwrap().chunk_bytes;
    assert!(once >= src.len() as u64);
    let v = store_file(&e, new_object(&e), "copy/b.bin", &src).await;
    let twice = e.store().stats().unwrap().chunk_bytes;
    assert!(
        ((twice - once) as f64) < 0.01 * once as f64,
        "grew {} bytes",
        twice - once
    );
    assert_eq!(read_all(&e, &Qhit::Version(v), "copy/b.bin").unwrap(), src);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_edit_in_256_mib_adds_under_8_mib() {
    let dir = tempfile::tempdir().unwrap();
    let e = default_engine(dir.path());
    let mut src = data(256, 256 * MIB);
    let t = new_object(&e);
    store_file(&e, t, "big.bin", &src).await;
    let before = e.store().stats().unwrap().chunk_bytes;
    let mid = 128 * MIB + 12345;
    src[mid..mid + MIB].copy_from_slice(&data(7, MIB));
    let t2 = e.open_draft(&t.object).unwrap().token;
    let v2 = store_file(&e, t2, "big.bin", &src).await;
    let added = e.store().stats().unwrap().chunk_bytes - before;
    assert!(added < 8 * MIB as u64, "added {added} bytes");
    assert_eq!(read_all(&e, &Qhit::Version(v2), "big.bin").unwrap(), src);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_a_corrupt_error_and_fsck_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let src = data(5, 300_000);
    let v = store_file(&e, new_object(&e), "dir/victim.bin", &src).await;
    assert!(e.fsck().unwrap().is_clean());

    // Flip one data byte of the first chunk record of the first pack.
    flip_first_chunk_byte(dir.path(), 100, 0x40);

    let err = read_all(&e, &Qhit::Version(v), "dir/victim.bin").unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
    let report = e.fsck().unwrap();
    assert_eq!(report.store.corrupt_chunks.len(), 1, "{report:?}");
    assert_eq!(report.damaged_files, vec![format!("{v}:dir/victim.bin")]);
    assert!(!report.is_clean());
    // gc keeps the evidence: the corrupt chunk is still there for fsck.
    e.gc(&GcOptions::default()).unwrap();
    assert_eq!(e.fsck().unwrap().store.corrupt_chunks.len(), 1);
}

/// Small files share a part; a corrupt chunk damages only the files whose bytes it holds, and
/// corrupt bytes (unlike damaged index records) do not stop `--repair` from counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_names_only_the_files_it_holds_bytes_of() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let files: BTreeMap<String, Vec<u8>> = ["a.bin", "b.bin", "c.bin"]
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), data(10 + i as u64, 60_000)))
        .collect();
    add_and_upload(&e, t, &files).await;
    let (v, _) = e.finalize(&t).unwrap();
    let parts = e.parts(&Qhit::Version(v)).unwrap();
    assert_eq!(parts.len(), 1, "the three files share one part");

    flip_first_chunk_byte(dir.path(), 100, 0x40);

    let report = e.fsck().unwrap();
    assert_eq!(report.store.corrupt_chunks.len(), 1, "{report:?}");
    assert_eq!(report.damaged_files, vec![format!("{v}:a.bin")]);
    for n in ["b.bin", "c.bin"] {
        assert_eq!(read_all(&e, &Qhit::Version(v), n).unwrap(), files[n]);
    }
    let repaired = e.fsck_repair().unwrap();
    assert_eq!(repaired.repair_skipped, None, "{repaired:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_after_deleting_a_version_reclaims_its_unique_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let unique = data(1, 6 * MIB);
    let shared = data(2, 3 * MIB);
    let later = data(3, MIB);
    let files: BTreeMap<String, Vec<u8>> = [("unique", unique.clone()), ("shared", shared.clone())]
        .into_iter()
        .map(|(k, v)| (k.into(), v))
        .collect();
    add_and_upload(&e, t, &files).await;
    let (v1, _) = e.finalize(&t).unwrap();
    let t2 = e.open_draft(&t.object).unwrap().token;
    let ops = vec![
        op(serde_json::json!({"op":"del","path":"unique"})),
        add_file("later", later.len() as u64),
    ];
    let job2 = e.create_files_job(&t2, &request(ops)).unwrap();
    let f2: BTreeMap<String, Vec<u8>> =
        [("later".to_string(), later.clone())].into_iter().collect();
    upload_all(&e, t2, &job2, &f2).await;
    let (v2, _) = e.finalize(&t2).unwrap();

    // Streamed once before gc, so the reader remembers where the chunks were.
    let q = Qhit::Version(v2);
    let n = shared.len() as u64;
    assert_eq!(stream_range(&e, &q, "shared", 0, n).await, shared);
    let before = e.store().stats().unwrap();
    let dry = e
        .gc(&GcOptions {
            dry_run: true,
            ..GcOptions::default()
        })
        .unwrap();
    assert_eq!(
        dry.store.chunks_deleted, 0,
        "nothing is garbage while v1 lives"
    );
    e.delete_version(&v1).unwrap();
    let report = e.gc(&GcOptions::default()).unwrap();
    let after = e.store().stats().unwrap();
    let freed = before.chunk_bytes - after.chunk_bytes;
    assert!(
        freed >= unique.len() as u64 * 99 / 100 && freed <= unique.len() as u64 + (64 << 10),
        "freed {freed}: {report:?}"
    );
    // Packs under half live are rewritten; the open pack and mostly-live packs stay.
    assert!(
        after.pack_bytes + 3 * (MIB as u64) < before.pack_bytes,
        "packs shrank: {before:?} -> {after:?}"
    );
    assert!(report.store.packs_deleted > 0);
    assert_eq!(read_all(&e, &q, "shared").unwrap(), shared);
    // gc moved chunks the streaming reader had remembered: it finds them again.
    assert_eq!(stream_range(&e, &q, "shared", 0, n).await, shared);
    assert_eq!(
        stream_range(&e, &q, "shared", 12_345, 1 << 20).await,
        &shared[12_345..12_345 + (1 << 20)]
    );
    assert_eq!(read_all(&e, &q, "later").unwrap(), later);
    let fsck = e.fsck().unwrap();
    assert!(fsck.is_clean(), "{fsck:?}");
    // Reopening after gc recovers to the same state.
    drop(e);
    let e = small_engine(dir.path());
    assert_eq!(read_all(&e, &Qhit::Version(v2), "shared").unwrap(), shared);
}

/// Deleting something that still sits in the open pack and running gc frees its bytes at once:
/// gc seals a mostly dead open pack and repacks it, and the next upload starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_reclaims_a_mostly_dead_open_pack() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 256 << 10, SMALL_CHUNKS);
    cfg.store.pack_target_size = 64 << 20;
    let e = Arc::new(Engine::open(cfg.clone()).unwrap());
    let keep = data(21, MIB);
    let gone = data(22, 6 * MIB);
    let kept = store_file(&e, new_object(&e), "keep", &keep).await;
    let t = new_object(&e);
    store_file(&e, t, "gone", &gone).await;
    assert_eq!(
        e.store().stats().unwrap().packs,
        1,
        "one open pack holds both"
    );

    let half = GcOptions {
        dry_run: true,
        ..GcOptions::default()
    };
    assert_eq!(e.gc(&half).unwrap().store.packs_repacked, 0, "mostly live");
    e.delete_object(&t.object).unwrap();
    let before = e.store().stats().unwrap();
    let dry = e.gc(&half).unwrap();
    assert_eq!(dry.store.packs_repacked, 1, "{dry:?}");
    assert_eq!(
        e.store().stats().unwrap(),
        before,
        "a dry run changes nothing"
    );

    let report = e.gc(&GcOptions::default()).unwrap();
    let after = e.store().stats().unwrap();
    assert_eq!(report.store.packs_deleted, 1, "{report:?}");
    // The dry run predicted what the real pass did.
    assert_eq!(dry.store.parts_deleted, report.store.parts_deleted);
    assert_eq!(dry.store.chunks_deleted, report.store.chunks_deleted);
    assert_eq!(
        dry.store.chunk_bytes_deleted,
        report.store.chunk_bytes_deleted
    );
    assert!(report.store.chunk_bytes_deleted >= gone.len() as u64 * 99 / 100);
    let predicted = dry.store.disk_bytes_freed;
    assert!(
        predicted.abs_diff(report.store.disk_bytes_freed) <= 64 << 10,
        "dry {predicted} vs {report:?}"
    );
    assert!(
        after.pack_bytes + 5 * MIB as u64 <= before.pack_bytes,
        "{before:?} -> {after:?}"
    );
    assert!(after.pack_bytes >= keep.len() as u64, "{after:?}");
    assert_eq!(read_all(&e, &Qhit::Version(kept), "keep").unwrap(), keep);
    let n = keep.len() as u64;
    assert_eq!(
        stream_range(&e, &Qhit::Version(kept), "keep", 0, n).await,
        keep
    );

    // Writing goes on in the next pack; a second gc finds nothing more to do.
    let more = data(23, 2 * MIB);
    let v = store_file(&e, new_object(&e), "more", &more).await;
    assert_eq!(e.gc(&GcOptions::default()).unwrap().store.packs_repacked, 0);
    assert!(e.fsck().unwrap().is_clean());
    drop(e);
    let e = Arc::new(Engine::open(cfg).unwrap());
    assert_eq!(read_all(&e, &Qhit::Version(kept), "keep").unwrap(), keep);
    assert_eq!(read_all(&e, &Qhit::Version(v), "more").unwrap(), more);
    assert!(e.fsck().unwrap().is_clean());
}

/// gc deletes dead chunks and parts in slices of a few thousand (each its own batch, and for
/// chunks its own hold of the locks uploads take): a delete larger than a slice is collected
/// whole in one run, and what is kept is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_larger_than_one_gc_slice_is_collected_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let keep = data(41, MIB);
    let kept = store_file(&e, new_object(&e), "keep", &keep).await;
    let kept_chunks = e.store().stats().unwrap().chunks;
    let t = new_object(&e);
    store_file(&e, t, "gone", &data(42, 24 * MIB)).await;
    let dead = e.store().stats().unwrap().chunks - kept_chunks;
    assert!(dead > 4096, "{dead} chunks: not more than a slice");
    e.delete_object(&t.object).unwrap();
    let report = e.gc(&GcOptions::default()).unwrap();
    assert_eq!(report.store.chunks_deleted, dead, "{report:?}");
    assert_eq!(e.store().stats().unwrap().chunks, kept_chunks);
    let again = e.gc(&GcOptions::default()).unwrap();
    assert_eq!(again.store.chunks_deleted, 0, "{again:?}");
    assert_eq!(read_all(&e, &Qhit::Version(kept), "keep").unwrap(), keep);
    assert!(e.fsck().unwrap().is_clean());
}

/// Small files committed one by one take a 4 KiB block each, so their pack is mostly padding
/// and gc repacks it; the copies go back to back under one fsync, so the repacked pack is dense
/// and the next gc leaves it alone (review 33: each copy was synced and padded on its own, and
/// every gc repacked the same records again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repacked_small_files_are_packed_densely_and_stay_put() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 256 << 10, SMALL_CHUNKS);
    cfg.store.pack_target_size = 64 << 20;
    let e = Arc::new(Engine::open(cfg.clone()).unwrap());
    let mut kept = Vec::new();
    for i in 0..40u64 {
        let bytes = data(100 + i, 300);
        kept.push((store_file(&e, new_object(&e), "s", &bytes).await, bytes));
    }
    let first = e.gc(&GcOptions::default()).unwrap();
    assert_eq!(first.store.packs_repacked, 1, "{first:?}");
    let pack_bytes = e.store().stats().unwrap().pack_bytes;
    assert!(
        pack_bytes < 40 * 4096 / 2,
        "copies are not a block each: {pack_bytes} bytes"
    );
    let second = e.gc(&GcOptions::default()).unwrap();
    assert_eq!(second.store.packs_repacked, 0, "{second:?}");
    for (v, bytes) in &kept {
        assert_eq!(&read_all(&e, &Qhit::Version(*v), "s").unwrap(), bytes);
    }
    assert!(e.fsck().unwrap().is_clean());
    drop(e);
    let e = Arc::new(Engine::open(cfg).unwrap());
    for (v, bytes) in &kept {
        assert_eq!(&read_all(&e, &Qhit::Version(*v), "s").unwrap(), bytes);
    }
}

/// A download of content deleted and collected by gc while it runs ends with `not_found`
/// saying so, not with `corrupt`, which operators read as a damaged disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_content_gc_collected_meanwhile_is_not_found_not_corrupt() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let keep = data(31, MIB);
    store_file(&e, new_object(&e), "keep", &keep).await;
    let t = new_object(&e);
    let gone = data(32, 4 * MIB);
    let v = store_file(&e, t, "gone", &gone).await;
    let h = e
        .open_file(&Qhit::Version(v), &FilePath::parse("gone").unwrap())
        .unwrap();
    e.delete_object(&t.object).unwrap();
    let report = e.gc(&GcOptions::default()).unwrap();
    assert!(report.store.chunks_deleted > 0, "{report:?}");
    let mut s = std::pin::pin!(e.read_stream(h, 0, gone.len() as u64));
    let err = loop {
        match s.next().await {
            Some(Ok(_)) => continue,
            Some(Err(err)) => break err,
            None => panic!("the whole deleted file was read after gc"),
        }
    };
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(err.reason.contains("no longer stored"), "{err}");
    assert!(e.fsck().unwrap().is_clean());
}

struct Fixture {
    engine: Arc<Engine>,
    version: cairn_core::VersionHash,
    src: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// A version with one file of three parts (256 KiB each) cut into ~4 KiB chunks.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let engine = small_engine(dir.path());
        let src = data(11, 700_001);
        let version = rt.block_on(store_file(&engine, new_object(&engine), "f", &src));
        Fixture {
            engine,
            version,
            src,
            _dir: dir,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Any byte range of a file reads exactly what slicing a plain in-memory copy gives.
    #[test]
    fn any_range_matches_a_plain_copy(a in 0u64..=700_001, b in 0u64..=700_001) {
        let f = fixture();
        let (off, end) = (a.min(b), a.max(b));
        let h = f.engine.open_file(&Qhit::Version(f.version), &FilePath::parse("f").unwrap()).unwrap();
        let mut out = Vec::new();
        f.engine.read_file(&h, off, end - off, |s| { out.extend_from_slice(s); Ok(()) }).unwrap();
        prop_assert_eq!(&out[..], &f.src[off as usize..end as usize]);
    }
}

/// The streaming reader (what Range GETs use) gives the same bytes as slicing, across chunk and
/// part boundaries, from a cold and from a warm location cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_ranges_match_a_plain_copy() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let src = data(12, 700_001);
    let q = Qhit::Version(store_file(&e, new_object(&e), "f", &src).await);
    for round in 0..2 {
        for (off, len) in [
            (0, 700_001),
            (1, 1),
            (262_143, 2),
            (100_000, 400_000),
            (699_999, 2),
            (5, 0),
        ] {
            let got = stream_range(&e, &q, "f", off, len).await;
            assert_eq!(
                got,
                &src[off as usize..(off + len) as usize],
                "round {round}: {off}+{len}"
            );
        }
    }
    let h = e.open_file(&q, &FilePath::parse("f").unwrap()).unwrap();
    use futures::StreamExt;
    let mut past = std::pin::pin!(e.read_stream(h, 700_000, 2));
    assert_eq!(
        past.next().await.unwrap().unwrap_err().kind,
        ErrorKind::Invalid
    );
    assert!(
        past.next().await.is_none(),
        "the stream ends after its error"
    );
}

#[test]
fn ranges_past_the_end_are_rejected() {
    let f = fixture();
    let h = f
        .engine
        .open_file(&Qhit::Version(f.version), &FilePath::parse("f").unwrap())
        .unwrap();
    assert!(f.engine.read_file(&h, 700_000, 2, |_| Ok(())).is_err());
    assert!(f.engine.read_file(&h, u64::MAX, 2, |_| Ok(())).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_repair_corrects_refcounts() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    store_file(&e, new_object(&e), "f", &data(8, 50_000)).await;
    // Damage a counter behind the engine's back: one chunk claims five extra references.
    let chunk = e
        .store()
        .index()
        .scan(cairn_store::index::CF_CHUNK_REFS, &[])
        .next()
        .unwrap()
        .unwrap()
        .0;
    let mut b = e.store().index().batch();
    b.add(cairn_store::index::CF_CHUNK_REFS, &chunk, 5);
    e.store().commit(b).unwrap();
    let report = e.fsck().unwrap();
    assert_eq!(report.store.refcount_mismatches.len(), 1, "{report:?}");
    let repaired = e.fsck_repair().unwrap();
    assert_eq!(repaired.store.repaired, 1);
    assert!(e.fsck().unwrap().is_clean());
}

/// A directory node's kept totals are what limits and version sizes trust: fsck checks them
/// against the node's entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_names_a_node_whose_totals_are_wrong() {
    use cairn_core::record::Record;
    use cairn_jobs::tree::{DirNode, TreeStats};
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    store_file(&e, new_object(&e), "f", &data(8, 5_000)).await;
    assert!(e.fsck().unwrap().corrupt_records.is_empty());
    let wrong = TreeStats {
        files: 7,
        pending: 0,
        bytes: 70,
        shape: None,
    };
    let node = DirNode {
        entries: BTreeMap::new(),
        meta: None,
        stats: Some(wrong),
    };
    let mut b = e.store().index().batch();
    let key = node.digest();
    b.put(
        cairn_jobs::records::CF_NODES,
        key.as_bytes(),
        &node.encode(),
    );
    e.store().commit(b).unwrap();
    let report = e.fsck().unwrap();
    assert!(
        report
            .corrupt_records
            .iter()
            .any(|r| r.contains("its totals say")),
        "{:?}",
        report.corrupt_records
    );
}

/// gc keeps a dead directory node whose bytes fail their blake3 check, also one that still
/// decodes (a flipped byte inside a name), and releases nothing it names: its references cannot
/// be trusted, and fsck names it (a test's damaged node was deleted in some runs and not in
/// others, by where the flipped byte fell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_a_damaged_dead_node_that_still_decodes() {
    use cairn_core::record::Record;
    use cairn_jobs::records::{CF_NODES, CF_NODE_REFS};
    use cairn_jobs::tree::{DirNode, Entry};
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let v = store_file(&e, new_object(&e), "c.bin", &data(9, 5_000)).await;
    let root = e.tree_root(&Qhit::Version(v)).unwrap();
    let live = e
        .store()
        .index()
        .get_record::<DirNode>(CF_NODES, root.as_bytes())
        .unwrap()
        .unwrap();
    let Some(Entry::File(file)) = live.entries.get("c.bin").cloned() else {
        panic!("c.bin is a file")
    };
    // A dead node naming the same part, whose reference it holds, damaged inside a name.
    let dead = DirNode {
        entries: [("zzzzzzzz".to_string(), Entry::File(file.clone()))]
            .into_iter()
            .collect(),
        meta: None,
        stats: None,
    };
    let key = dead.digest();
    let mut raw = dead.encode();
    let at = raw.windows(8).position(|w| w == b"zzzzzzzz").unwrap();
    raw[at] = b'y';
    assert!(DirNode::decode(&raw).is_ok(), "it still decodes");
    let idx = e.store().index();
    let mut b = idx.batch();
    b.put(CF_NODES, key.as_bytes(), &raw);
    b.add(CF_NODE_REFS, key.as_bytes(), 0);
    let p = match &file.content {
        cairn_jobs::tree::Content::Parts(p) => p[0],
        other => panic!("{other:?}"),
    };
    b.add(
        cairn_store::index::CF_PART_REFS,
        &cairn_store::part_key(&p.digest, p.part_size),
        1,
    );
    idx.write(b, true).unwrap();

    e.gc(&GcOptions::default()).unwrap();
    assert!(idx.get(CF_NODES, key.as_bytes()).unwrap().is_some(), "kept");
    let report = e.fsck().unwrap();
    assert!(
        report
            .corrupt_records
            .iter()
            .any(|r| r.contains(&key.to_hex())),
        "{:?}",
        report.corrupt_records
    );
    assert_eq!(
        read_all(&e, &Qhit::Version(v), "c.bin").unwrap(),
        data(9, 5_000)
    );
}
