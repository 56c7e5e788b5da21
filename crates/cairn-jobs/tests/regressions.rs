//! One test per bug found in review, kept so each stays fixed.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_core::{ErrorKind, VersionHash, WriteToken};
use cairn_jobs::records::JobStatus;
use cairn_jobs::{Engine, FilesJobCreated, Qhit};
use common::*;
use serde_json::json;

fn files(v: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    v.iter().map(|(k, d)| (k.to_string(), d.to_vec())).collect()
}

/// A copy of a file added by the same job is planned and uploaded on its own, and reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_a_file_added_in_the_same_job_gets_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let x = data(1, 5000);
    let ops = vec![
        add_file("x", 5000),
        op(json!({"op":"copy","copy_move_source_path":"x","path":"y"})),
    ];
    let job = e.create_files_job(&t, &request(ops)).unwrap();
    upload_all(&e, t, &job, &files(&[("x", &x), ("y", &x)])).await;
    let (v, _) = e.finalize(&t).unwrap();
    assert_eq!(read_all(&e, &Qhit::Version(v), "y").unwrap(), x);
    assert_eq!(read_all(&e, &Qhit::Version(v), "x").unwrap(), x);
}

/// An upload whose draft is deleted while its body streams fails saying so, not with the name
/// of whichever record of its job it missed first (QA: "segment 0 of upload job … not found").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_draft_is_deleted_mid_body_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let job = e
        .create_files_job(&t, &request(vec![add_file("x", 200_000)]))
        .unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<bytes::Bytes, std::io::Error>>();
    let upload = {
        let e = e.clone();
        let (fj, uj) = (job.id, job.jobs[0]);
        tokio::spawn(async move { e.upload(t, fj, uj, Some(200_000), rx).await })
    };
    tx.unbounded_send(Ok(bytes::Bytes::from(data(1, 100_000))))
        .unwrap();
    // Deleted once the upload is under way (some of its bytes committed).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while e
        .upload_status(&t, &job.id, &job.jobs[0], 0, 1)
        .unwrap()
        .files[0]
        .skip
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    e.delete_draft(&t).unwrap();
    // The upload may have ended already (its receiver gone).
    let _ = tx.unbounded_send(Ok(bytes::Bytes::from(data(2, 100_000))));
    drop(tx);
    let err = upload.await.unwrap().unwrap_err();
    assert!(err.is(ErrorKind::NotFound), "{err}");
    assert!(err.to_string().contains("the draft was deleted"), "{err}");
}

/// Deleting the head version moves the object's head back to an older version, and the date
/// its files were last changed forward: never back to the older version's own date (QA: a
/// date-only revalidation, `If-Modified-Since`, was then told "not modified" about other bytes,
/// and an `If-Unmodified-Since` resume joined two versions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_head_never_moves_the_objects_date_back() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    add_and_upload(&e, t, &files(&[("f", b"first")])).await;
    let (v1, _) = e.finalize(&t).unwrap();
    let t2 = e.open_draft(&t.object).unwrap().token;
    add_and_upload(&e, t2, &files(&[("f", b"second")])).await;
    let (v2, _) = e.finalize(&t2).unwrap();
    let object = Qhit::Object(t.object);
    assert_eq!(
        e.info(&object).unwrap().modified,
        e.info(&Qhit::Version(v2)).unwrap().modified
    );
    // Seconds are the dates' unit: the delete comes a second after both versions.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    e.delete_version(&v2).unwrap();
    let info = e.info(&object).unwrap();
    assert_eq!(
        info.version,
        Some(v1),
        "the older version is the head again"
    );
    let v1_date = e.info(&Qhit::Version(v1)).unwrap().modified;
    assert!(v1_date < before, "v1 was made a second earlier");
    assert!(info.modified >= before, "{} < {before}", info.modified);
    assert_eq!(read_all(&e, &object, "f").unwrap(), b"first");
}

/// Copy then delete of a new file still uploads the copy (no byte-less file in a version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_then_delete_of_a_new_file_uploads_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let ops = vec![
        add_file("x", 5000),
        op(json!({"op":"copy","copy_move_source_path":"x","path":"y"})),
        op(json!({"op":"del","path":"x"})),
    ];
    let job = e.create_files_job(&t, &request(ops)).unwrap();
    assert_eq!(job.jobs.len(), 1);
    assert!(
        e.finalize(&t).unwrap_err().is(ErrorKind::Incomplete),
        "y has not been uploaded"
    );
}

/// A new file moved over another new file: only the survivor is planned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_of_a_new_file_over_another_plans_only_the_survivor() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let ops = vec![
        add_file("a", 10_000),
        add_file("c", 500),
        op(json!({"op":"move","copy_move_source_path":"c","path":"a"})),
    ];
    let job = e.create_files_job(&t, &request(ops)).unwrap();
    let st = e.upload_status(&t, &job.id, &job.jobs[0], 0, 100).unwrap();
    let segs: Vec<_> = st.files.iter().map(|s| (s.path.clone(), s.len)).collect();
    assert_eq!(segs, vec![("a".to_string(), 500)]);
}

/// A link over a file added by the same job replaces it; nothing is planned for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_over_a_new_file_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let b = data(2, 5);
    let ops = vec![
        add_file("b", 5),
        add_file("a", 10),
        op(json!({"op":"link","path":"a","target":"./files/b"})),
    ];
    let job = e.create_files_job(&t, &request(ops)).unwrap();
    upload_all(&e, t, &job, &files(&[("b", &b)])).await;
    let (v, _) = e.finalize(&t).unwrap();
    assert_eq!(read_all(&e, &Qhit::Version(v), "a").unwrap(), b);
}

/// Moving or copying onto an existing directory is a conflict, not a silent replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_over_a_directory_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    e.create_files_job(
        &t,
        &request(vec![
            op(json!({"type":"directory","path":"a/b"})),
            op(json!({"type":"directory","path":"c"})),
        ]),
    )
    .unwrap();
    for kind in ["move", "copy"] {
        let err = e
            .create_files_job(
                &t,
                &request(vec![op(
                    json!({"op":kind,"copy_move_source_path":"c","path":"a"}),
                )]),
            )
            .unwrap_err();
        assert!(err.is(ErrorKind::Conflict), "{kind}: {err}");
    }
    assert!(
        e.files_json(&Qhit::Draft(t)).unwrap()["a"]["b"].is_object(),
        "a/b survives"
    );
}

/// A version hash with the right digest but a wrong size names nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_hash_with_a_wrong_size_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let x = data(1, 100);
    let job = e
        .create_files_job(&t, &request(vec![add_file("x", 100)]))
        .unwrap();
    upload_all(&e, t, &job, &files(&[("x", &x)])).await;
    let (v, _) = e.finalize(&t).unwrap();
    let alias = VersionHash {
        size: v.size + 1,
        ..v
    };
    assert!(e
        .delete_version(&alias)
        .unwrap_err()
        .is(ErrorKind::NotFound));
    assert_eq!(e.object(&t.object).unwrap().head, Some(v));
    e.open_draft(&t.object).unwrap();
}

/// An upload job whose every byte arrived but whose seal failed: all of `x` (100,000 bytes)
/// but its last byte is sent, the stored chunk is damaged, and a new engine (which lost the
/// hashes computed while streaming, so sealing reads the part back) receives the last byte.
async fn a_failed_seal(
    dir: &std::path::Path,
) -> (Arc<Engine>, WriteToken, FilesJobCreated, Vec<u8>) {
    let src = data(3, 100_000);
    let (t, job) = {
        let e = small_engine(dir);
        let t = new_object(&e);
        let job = e
            .create_files_job(&t, &request(vec![add_file("x", 100_000)]))
            .unwrap();
        post(&e, t, &job, 0, src[..99_999].to_vec(), 4096)
            .await
            .unwrap();
        (t, job)
    };
    flip_first_chunk_byte(dir, 10, 1);
    let e = small_engine(dir);
    let err = post(&e, t, &job, 0, src[99_999..].to_vec(), 4096)
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::Corrupt), "{err}");
    assert_eq!(e.upload_job(&job.jobs[0]).unwrap().received, 100_000);
    (e, t, job, src)
}

/// A fully received job whose chunk is corrupt fails its files job; the store still opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_unsealed_job_does_not_stop_the_store_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let (e, t, job, _) = a_failed_seal(dir.path()).await;
    drop(e);
    let e = small_engine(dir.path());
    assert_eq!(
        e.files_job_status(&t, &job.id).unwrap().status,
        JobStatus::Failed
    );
}

/// An upload job that received every byte but whose seal failed (here: a chunk read back
/// damaged) is sealed again by the next finalize, instead of blocking it as "still uploading"
/// until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_seal_failed_is_sealed_by_the_next_finalize() {
    let dir = tempfile::tempdir().unwrap();
    let (e, t, _, src) = a_failed_seal(dir.path()).await;
    // Still damaged: the finalize says why, rather than "still uploading".
    let err = e.finalize(&t).unwrap_err();
    assert!(err.is(ErrorKind::Corrupt), "{err}");
    // The same bytes uploaded elsewhere heal the stored chunk; the next finalize seals the job.
    add_and_upload(&e, new_object(&e), &files(&[("y", &src)])).await;
    let (v, _) = e.finalize(&t).unwrap();
    assert_eq!(read_all(&e, &Qhit::Version(v), "x").unwrap(), src);
}

/// A job whose seal keeps failing blocks only the files that wait on it: once its file is
/// deleted, the draft finalizes (before, every finalize re-ran the seal and failed with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_seal_no_file_waits_on_does_not_block_finalize() {
    let dir = tempfile::tempdir().unwrap();
    let (e, t, _, _) = a_failed_seal(dir.path()).await;
    add_and_upload(&e, t, &files(&[("y", b"kept")])).await;
    let err = e.finalize(&t).unwrap_err();
    assert!(
        err.is(ErrorKind::Corrupt) && err.reason.contains("could not be sealed"),
        "{err}"
    );
    let del = op(json!({"op":"del","path":"x"}));
    e.create_files_job(&t, &request(vec![del])).unwrap();
    let (v, _) = e.finalize(&t).unwrap();
    let q = Qhit::Version(v);
    assert_eq!(read_all(&e, &q, "y").unwrap(), b"kept");
    assert!(read_all(&e, &q, "x").is_err());
}

/// Force completion reports every file it drops, under every copy of a stored directory that
/// held it (each distinct directory is resolved once and shared by digest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_completion_reports_drops_under_every_copy() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let job = e
        .create_files_job(&t, &request(vec![add_file("a/x", 10)]))
        .unwrap();
    let copies =
        ["b", "c/d"].map(|to| op(json!({"op":"copy","copy_move_source_path":"a","path":to})));
    e.create_files_job(&t, &request(copies.to_vec())).unwrap();
    let mut dropped = e.force_completion(&t, &job.id).unwrap().files_dropped;
    dropped.sort();
    assert_eq!(dropped, vec!["a/x", "b/x", "c/d/x"]);
}

/// A finalize while a force completion seals a file's upload jobs one by one is refused (the
/// file is neither done nor dropped yet), instead of dropping the file unreported; once the
/// force completion has answered, with the file in `files_dropped`, the finalize goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finalize_during_a_force_completion_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    // 2048 parts of 256 KiB: one upload job each, none of them sent.
    let job = e
        .create_files_job(&t, &request(vec![add_file("big", 2048 * (256 << 10))]))
        .unwrap();
    assert!(job.jobs.len() >= 1024, "{} jobs", job.jobs.len());
    let forcing = {
        let (e, fj) = (e.clone(), job.id);
        std::thread::spawn(move || e.force_completion(&t, &fj))
    };
    while e.upload_job(&job.jobs[0]).unwrap().sealed.is_none() {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let during = e.finalize(&t).unwrap_err();
    assert!(
        during.is(ErrorKind::Conflict) || during.is(ErrorKind::Incomplete),
        "{during}"
    );
    let report = forcing.join().unwrap().unwrap();
    assert_eq!(report.files_dropped, vec!["big"]);
    let (v, _) = e.finalize(&t).unwrap();
    assert!(read_all(&e, &Qhit::Version(v), "big").is_err());
}

/// Copies of a stored directory are one digest each, so a few small files jobs could double a
/// tree again and again: the draft's file count is kept in its nodes and bounded, and a
/// finalize does not walk stored directories with nothing uploading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_cannot_multiply_a_tree_past_its_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    add_and_upload(&e, t, &files(&[("d0/f", b"abc")])).await;
    e.finalize(&t).unwrap();
    let t = e.open_draft(&t.object).unwrap().token;
    let mut k = 1;
    let refused = loop {
        let ops = [("x", k), ("y", k)].map(|(name, k)| {
            let (from, to) = (format!("d{}", k - 1), format!("d{k}/{name}"));
            op(json!({"op":"copy","copy_move_source_path":from,"path":to}))
        });
        let before = e.draft(&t).unwrap().root;
        match e.create_files_job(&t, &request(ops.to_vec())) {
            Ok(_) => k += 1,
            Err(err) => {
                assert_eq!(
                    e.draft(&t).unwrap().root,
                    before,
                    "a refused job changes nothing"
                );
                break err;
            }
        }
        assert!(k < 40, "2^{k} files accepted");
    };
    assert!(refused.is(ErrorKind::TooLarge), "{refused}");
    // d0 … d(k-1) hold 2^k − 1 files and 2^(k+1) − 1 − k directories; the job that failed
    // would have made d(k) too. The directories reach their limit (as many) first.
    let totals = |k: u32| ((1u64 << k) - 1, (1u64 << (k + 1)) - 1 - u64::from(k));
    let k = k as u32;
    let over = |(f, d): (u64, u64)| {
        f > cairn_jobs::files::MAX_TREE_FILES || d > cairn_jobs::files::MAX_TREE_DIRS
    };
    assert!(!over(totals(k)), "refused at {k}");
    assert!(over(totals(k + 1)), "refused at {k}");
    assert!(refused.reason.contains("directories"), "{refused}");
    let k = k as usize;
    let (v, rec) = e.finalize(&t).unwrap();
    assert_eq!(rec.size, 3 * ((1u64 << k) - 1));
    // Rendered as one metadata value only while small; files_list streams.
    let q = Qhit::Version(v);
    assert!(matches!(e.meta_get(&q, "files/d17"), Err(e) if e.is(ErrorKind::TooLarge)));
    let attrs = e.meta_get(&q, "files/d17/./type").unwrap();
    assert_eq!(
        attrs, "directory",
        "a large directory's own attributes stay readable"
    );
    let small = e.meta_get(&q, "files/d3").unwrap();
    assert_eq!(small["x"]["y"]["x"]["f"]["."]["size"], 3, "{small}");
    let deep = format!("d{}/{}f", k - 1, "x/".repeat(k - 1));
    assert_eq!(read_all(&e, &Qhit::Version(v), &deep).unwrap(), b"abc");
}

/// Copies of a stored directory that holds a file still uploading all resolve to the uploaded
/// bytes at finalize (each distinct directory is resolved once and shared by digest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_directory_with_a_pending_file_resolve_together() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let job = e
        .create_files_job(&t, &request(vec![add_file("d0/f", 3)]))
        .unwrap();
    for k in 1..=12 {
        let ops = ["x", "y"].map(|name| {
            let (from, to) = (format!("d{}", k - 1), format!("d{k}/{name}"));
            op(json!({"op":"copy","copy_move_source_path":from,"path":to}))
        });
        e.create_files_job(&t, &request(ops.to_vec())).unwrap();
    }
    upload_all(&e, t, &job, &files(&[("d0/f", b"abc")])).await;
    let (v, rec) = e.finalize(&t).unwrap();
    assert_eq!(rec.size, 3 * ((1u64 << 13) - 1));
    let q = Qhit::Version(v);
    for path in [
        "d0/f",
        "d12/x/y/x/y/x/y/x/y/x/y/x/y/f",
        "d7/y/y/y/y/y/y/y/f",
    ] {
        assert_eq!(read_all(&e, &q, path).unwrap(), b"abc", "{path}");
    }
    assert!(e.fsck().unwrap().corrupt_records.is_empty());
}

/// A copy of a directory the same job edited is a deep copy: doubling one in a single request
/// is refused before it takes the memory, and the draft is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_within_one_job_are_bounded_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let mut ops = vec![op(
        json!({"path":"d0/f","size":0,"meta":{"k":"v".repeat(60_000)}}),
    )];
    for k in 1..40 {
        for name in ["x", "y"] {
            let (from, to) = (format!("d{}", k - 1), format!("d{k}/{name}"));
            ops.push(op(
                json!({"op":"copy","copy_move_source_path":from,"path":to}),
            ));
        }
    }
    let before = e.draft(&t).unwrap().root;
    let err = e.create_files_job(&t, &request(ops)).unwrap_err();
    assert!(err.is(ErrorKind::TooLarge), "{err}");
    assert!(err.reason.contains("load or copy"), "{err}");
    assert_eq!(e.draft(&t).unwrap().root, before);
}

/// Editing inside copies of a stored directory loads (clones) the directory once per copy:
/// those loads count against the same per-job budget as copies, so a job editing inside
/// thousands of copies of a large directory is refused, not cloned without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_inside_many_copies_are_bounded_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    // A directory node of about 3 MB: 50 files with 60 KB of metadata each.
    let adds = (0..50)
        .map(|i| op(json!({"path":format!("d/f{i}"),"size":0,"meta":{"k":"v".repeat(60_000)}})))
        .collect();
    e.create_files_job(&t, &request(adds)).unwrap();
    let copies = (0..120)
        .map(|i| op(json!({"op":"copy","copy_move_source_path":"d","path":format!("c{i}")})))
        .collect();
    e.create_files_job(&t, &request(copies)).unwrap();
    let before = e.draft(&t).unwrap().root;
    // Each delete loads one copy: 120 of them would clone about 360 MB.
    let dels = (0..120)
        .map(|i| op(json!({"op":"del","path":format!("c{i}/f0")})))
        .collect();
    let err = e.create_files_job(&t, &request(dels)).unwrap_err();
    assert!(
        err.is(ErrorKind::TooLarge) && err.reason.contains("load or copy"),
        "{err}"
    );
    assert_eq!(e.draft(&t).unwrap().root, before);
    // Links into the copies load them the same way.
    let links = (0..120)
        .map(|i| {
            op(json!({"op":"link","path":format!("l{i}"),"target":format!("./files/c{i}/f1")}))
        })
        .collect();
    let err = e.create_files_job(&t, &request(links)).unwrap_err();
    assert!(
        err.is(ErrorKind::TooLarge) && err.reason.contains("load or copy"),
        "{err}"
    );
    assert_eq!(e.draft(&t).unwrap().root, before);
    // Fewer edits at once go through.
    let dels = (0..20)
        .map(|i| op(json!({"op":"del","path":format!("c{i}/f0")})))
        .collect();
    e.create_files_job(&t, &request(dels)).unwrap();
}

/// A rendering charges each directory's own metadata: thousands of copies of a directory with
/// large metadata (cheap to make: a digest each, no files) are refused, not cloned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendering_charges_directory_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let meta = json!({"k": "v".repeat(60_000)});
    let mkdir = op(json!({"path":"d","type":"directory","meta":meta}));
    e.create_files_job(&t, &request(vec![mkdir])).unwrap();
    let copies = (0..600)
        .map(|i| op(json!({"op":"copy","copy_move_source_path":"d","path":format!("c{i}")})))
        .collect();
    e.create_files_job(&t, &request(copies)).unwrap();
    let q = Qhit::Draft(t);
    let err = e.meta_get(&q, "files").unwrap_err();
    assert!(err.is(ErrorKind::TooLarge), "{err}");
    assert_eq!(e.meta_get(&q, "files/c7/./meta").unwrap(), meta);
}

/// A file still uploading lists one segment per part: copies of a huge one count its list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_file_with_many_segments_are_bounded_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let huge = 60_000 * (256u64 << 10);
    e.create_files_job(&t, &request(vec![add_file("d0/f", huge)]))
        .unwrap();
    let copies = (0..200)
        .map(|i| op(json!({"op":"copy","copy_move_source_path":"d0/f","path":format!("e/{i}")})))
        .collect();
    let before = e.draft(&t).unwrap().root;
    let err = e.create_files_job(&t, &request(copies)).unwrap_err();
    assert!(
        err.is(ErrorKind::TooLarge) && err.reason.contains("load or copy"),
        "{err}"
    );
    assert_eq!(e.draft(&t).unwrap().root, before);
}

/// A length stated by `Content-Range` binds a chunked body both ways: longer is refused with
/// nothing kept, shorter is a cut-off body (what arrived is kept, the request fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stated_length_binds_a_body_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let job = e
        .create_files_job(&t, &request(vec![add_file("f", 100)]))
        .unwrap();
    let send = |bytes: &'static [u8]| {
        let e = e.clone();
        let (fj, uj) = (job.id, job.jobs[0]);
        async move {
            let body =
                futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(bytes))]);
            e.upload_at(t, fj, uj, Some(10), (Some(0), None), body)
                .await
        }
    };
    let long = send(b"0123456789abc").await.unwrap_err();
    assert!(long.is(ErrorKind::TooLarge), "{long}");
    assert_eq!(e.upload_job(&job.jobs[0]).unwrap().received, 0);
    let short = send(b"0123").await.unwrap_err();
    assert!(short.is(ErrorKind::Invalid), "{short}");
    assert_eq!(e.upload_job(&job.jobs[0]).unwrap().received, 4);
}

/// A directory's metadata rendering is bounded by the memory it would take, not only by its
/// file count: a few hundred files with large metadata are refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendering_of_files_with_large_metadata_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let meta = json!({"k": "v".repeat(60_000)});
    let ops = (0..300)
        .map(|i| op(json!({"path": format!("m/{i}"), "size": 0, "meta": meta})))
        .collect();
    e.create_files_job(&t, &request(ops)).unwrap();
    let (v, _) = e.finalize(&t).unwrap();
    let q = Qhit::Version(v);
    let err = e.meta_get(&q, "files/m").unwrap_err();
    assert!(err.is(ErrorKind::TooLarge), "{err}");
    assert_eq!(e.meta_get(&q, "files/m/./type").unwrap(), "directory");
    assert_eq!(e.meta_get(&q, "files/m/7/./meta").unwrap(), meta);
}

/// A rendering charges each file once, however deep: 6,000 files ten directories down render
/// (charged at every level they were refused as too much memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendering_of_deep_files_counts_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let deep = "a/b/c/d/e/f/g/h/i/j";
    let ops = (0..6000)
        .map(|i| op(json!({"path": format!("{deep}/{i}"), "size": 0})))
        .collect();
    e.create_files_job(&t, &request(ops)).unwrap();
    let (v, _) = e.finalize(&t).unwrap();
    let rendered = e.meta_get(&Qhit::Version(v), "files/a").unwrap();
    let leaf = deep.split('/').skip(1).fold(&rendered, |v, k| &v[k]);
    assert_eq!(
        leaf.as_object().unwrap().len(),
        6001,
        "6000 files and \".\""
    );
}

/// A move or copy of a link onto its own target (or two moves closing a ring) would finalize
/// into files no read can follow: the files job is refused and the draft unchanged. A chain
/// that ends at a file stays allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_cannot_be_moved_or_copied_into_loops() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    add_and_upload(&e, t, &files(&[("t", b"tt"), ("u", b"uu")])).await;
    let link = |path: &str, to: &str| {
        op(json!({"op":"link","path":path,"target":format!("./files/{to}")}))
    };
    let mv = |from: &str, to: &str| op(json!({"op":"move","copy_move_source_path":from,"path":to}));
    let cp = |from: &str, to: &str| op(json!({"op":"copy","copy_move_source_path":from,"path":to}));
    e.create_files_job(&t, &request(vec![link("l", "t"), link("m", "u")]))
        .unwrap();
    for ops in [
        vec![cp("l", "t")],
        vec![mv("l", "t")],
        vec![mv("l", "u"), mv("m", "t")],
        // A link inside a directory this job copies.
        vec![link("d/x", "t"), cp("d", "e"), mv("e/x", "t")],
    ] {
        let before = e.draft(&t).unwrap().root;
        let err = e.create_files_job(&t, &request(ops.clone())).unwrap_err();
        assert!(
            err.is(ErrorKind::Invalid) && err.reason.contains("leads back to itself"),
            "{ops:?}: {err}"
        );
        assert_eq!(e.draft(&t).unwrap().root, before, "{ops:?}");
    }
    // l → t, and t becomes a link to u: a chain of two, readable.
    e.create_files_job(&t, &request(vec![mv("m", "t")]))
        .unwrap();
    let (v, _) = e.finalize(&t).unwrap();
    assert_eq!(read_all(&e, &Qhit::Version(v), "l").unwrap(), b"uu");
}

/// Metadata on one file or directory is bounded (it is rewritten with its directory's node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_of_one_entry_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let big = json!({"k": "v".repeat(cairn_jobs::ops::MAX_ENTRY_META)});
    for o in [
        json!({"path":"f","size":1,"meta":big}),
        json!({"path":"d","type":"directory","meta":big}),
        json!({"op":"meta","path":"f","meta":big}),
        json!({"op":"link","path":"l","target":"./files/f","meta":big}),
    ] {
        let err = e
            .create_files_job(&t, &request(vec![op(o.clone())]))
            .unwrap_err();
        assert!(err.is(ErrorKind::TooLarge), "{o}: {err}");
    }
    let fits = json!({"k": "v".repeat(cairn_jobs::ops::MAX_ENTRY_META - 100)});
    e.create_files_job(
        &t,
        &request(vec![op(json!({"path":"f","size":1,"meta":fits}))]),
    )
    .unwrap();
}

/// A finalize resolves pending files in committed passes of `resolve_batch` files, so its memory
/// does not grow with the draft. With passes of two: every file of a tree of eight (three in
/// copies of a directory) reads back; a finalize that would meet a file still uploading in a
/// later pass fails before the first one (the draft's tree is unchanged), and succeeds once the
/// file is uploaded; a force completion reports each dropped file once, under every copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_files_resolve_in_committed_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 256 << 10, SMALL_CHUNKS);
    cfg.resolve_batch = 2;
    let e = Arc::new(Engine::open(cfg).unwrap());
    let t = new_object(&e);
    let first = files(&[
        ("a/1", b"one"),
        ("a/2", b"two"),
        ("a/3", b"three"),
        ("b/c/4", b"four"),
    ]);
    let last = files(&[("zz", b"last")]);
    let add = |f: &BTreeMap<String, Vec<u8>>| {
        let ops = f.iter().map(|(p, d)| add_file(p, d.len() as u64)).collect();
        e.create_files_job(&t, &request(ops)).unwrap()
    };
    let (job, late) = (add(&first), add(&last));
    let copy = op(json!({"op":"copy","copy_move_source_path":"a","path":"z/a"}));
    e.create_files_job(&t, &request(vec![copy])).unwrap();
    // "zz", resolved last, is still uploading when the finalize first runs.
    upload_all(&e, t, &job, &first).await;
    let before = e.tree_root(&Qhit::Draft(t)).unwrap();
    let err = e.finalize(&t).unwrap_err();
    assert!(err.is(ErrorKind::Incomplete), "{err}");
    assert_eq!(
        e.tree_root(&Qhit::Draft(t)).unwrap(),
        before,
        "a finalize that fails changes nothing, not even in its first passes"
    );
    let draft = Qhit::Draft(t);
    for (p, d) in &first {
        assert_eq!(&read_all(&e, &draft, p).unwrap(), d, "{p}");
    }
    upload_all(&e, t, &late, &last).await;
    let (v, _) = e.finalize(&t).unwrap();
    let mut expect = first.clone();
    expect.extend(last);
    for n in ["1", "2", "3"] {
        expect.insert(format!("z/a/{n}"), first[&format!("a/{n}")].clone());
    }
    for (p, d) in &expect {
        assert_eq!(&read_all(&e, &Qhit::Version(v), p).unwrap(), d, "{p}");
    }

    let t = e.open_draft(&t.object).unwrap().token;
    let more = ["x/1", "x/2", "x/3"].map(|p| add_file(p, 10));
    let job = e.create_files_job(&t, &request(more.to_vec())).unwrap();
    let copies =
        ["y", "w/x"].map(|to| op(json!({"op":"copy","copy_move_source_path":"x","path":to})));
    e.create_files_job(&t, &request(copies.to_vec())).unwrap();
    let mut dropped = e.force_completion(&t, &job.id).unwrap().files_dropped;
    dropped.sort();
    let mut want: Vec<String> = ["x", "y", "w/x"]
        .iter()
        .flat_map(|d| ["1", "2", "3"].map(|n| format!("{d}/{n}")))
        .collect();
    want.sort();
    assert_eq!(dropped, want);
    let (v, _) = e.finalize(&t).unwrap();
    assert!(read_all(&e, &Qhit::Version(v), "x/1").is_err());
    assert_eq!(read_all(&e, &Qhit::Version(v), "z/a/3").unwrap(), b"three");
}

/// A force completion resolves in committed passes too, and one that fails in a later pass
/// keeps the report of what its earlier passes dropped: the next force completion reports
/// those paths, each once, and after that success the report is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_completion_that_fails_part_way_loses_no_dropped_path() {
    use cairn_jobs::records::CF_UPLOAD_JOBS;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 256 << 10, SMALL_CHUNKS);
    cfg.resolve_batch = 2;
    let e = Arc::new(Engine::open(cfg).unwrap());
    let t = new_object(&e);
    let cut: Vec<String> = (1..=4).map(|n| format!("a/{n}")).collect();
    let ops = cut.iter().map(|p| add_file(p, 10)).collect();
    let job = e.create_files_job(&t, &request(ops)).unwrap();
    let late = e
        .create_files_job(&t, &request(vec![add_file("z", 10)]))
        .unwrap();
    // The third pass, after two have dropped a/1..a/4, fails on "z": its upload job's record
    // cannot be read.
    let idx = e.store().index();
    let key = late.jobs[0].as_bytes().to_vec();
    let record = idx.get(CF_UPLOAD_JOBS, &key).unwrap().unwrap().to_vec();
    let mut b = idx.batch();
    b.delete(CF_UPLOAD_JOBS, &key);
    idx.write(b, true).unwrap();
    let err = e.force_completion(&t, &job.id).unwrap_err();
    assert!(err.is(ErrorKind::NotFound), "{err}");
    let draft = Qhit::Draft(t);
    assert!(
        read_all(&e, &draft, "a/1").is_err(),
        "the first passes were committed"
    );

    let mut b = idx.batch();
    b.put(CF_UPLOAD_JOBS, &key, &record);
    idx.write(b, true).unwrap();
    let mut dropped = e.force_completion(&t, &job.id).unwrap().files_dropped;
    dropped.sort();
    assert_eq!(dropped, cut, "reported by the next force completion");
    let again = e.force_completion(&t, &job.id).unwrap_err();
    assert!(again.is(ErrorKind::Gone), "reported once: {again}");
    let key = cairn_jobs::files::dropped_key(&job.id);
    assert!(idx
        .get(cairn_jobs::records::CF_FILES_JOBS, &key)
        .unwrap()
        .is_none());
}

/// A path `n` segments deep, each segment `name(i)`.
fn deep(n: usize, name: impl Fn(usize) -> String) -> String {
    (0..n).map(name).collect::<Vec<_>>().join("/")
}

fn mv(from: &str, to: &str) -> cairn_jobs::ops::RawOp {
    op(json!({"op":"move","copy_move_source_path":from,"path":to}))
}

fn cp(from: &str, to: &str) -> cairn_jobs::ops::RawOp {
    op(json!({"op":"copy","copy_move_source_path":from,"path":to}))
}

/// Moves that nest a directory deeper and deeper within one files job are refused at the
/// first that would pass the 256-segment limit (review 30: 500 such pairs built a tree
/// 127,000 levels deep in memory, whose drop overflowed the stack and aborted the server).
#[test]
fn moves_nesting_a_directory_past_the_depth_limit_in_one_job_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let before = e.draft(&t).unwrap().root;
    let down = format!("t/{}/a", deep(253, |i| i.to_string()));
    let mut ops = vec![op(json!({"op":"add","type":"directory","path":"a"}))];
    for _ in 0..500 {
        ops.push(mv("a", &down));
        ops.push(mv("t", "a"));
    }
    let err = e.create_files_job(&t, &request(ops)).unwrap_err();
    assert!(err.is(ErrorKind::Invalid), "{err}");
    assert!(err.reason.starts_with("op 3: a at t/"), "{err}");
    assert!(err.reason.contains("254 segments below it"), "{err}");
    assert_eq!(e.draft(&t).unwrap().root, before, "the draft is unchanged");
    // Up to the limit exactly is fine: 255 segments under a 1-segment place.
    let ops = vec![
        op(json!({"op":"add","type":"directory","path":"a"})),
        mv("a", &down),
        mv("t", "a"),
    ];
    e.create_files_job(&t, &request(ops)).unwrap();
}

/// A stored directory moved or copied by a later files job is checked by its kept shape:
/// nothing under it may end up over 256 segments or 4096 bytes (review 30: the move was
/// accepted, and the draft could then never finalize, its listing answered 500).
#[test]
fn a_stored_directory_is_not_moved_or_copied_past_the_path_limits() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let tall = format!("a/{}/f", deep(200, |i| format!("d{i}")));
    let long = format!("x/{}/f", deep(11, |i| format!("{i}{}", "n".repeat(250))));
    let job = vec![add_file(&tall, 0), add_file(&long, 0)];
    e.create_files_job(&t, &request(job)).unwrap();
    let before = e.draft(&t).unwrap().root;
    let too_deep = format!("{}/a", deep(100, |i| format!("b{i}")));
    // 1,513 bytes, and x holds paths of 2,774 bytes below it.
    let too_long = format!("{}/x", deep(6, |i| format!("{i}{}", "m".repeat(250))));
    for (op, why) in [
        (mv("a", &too_deep), "201 segments below it"),
        (cp("a", &too_deep), "201 segments below it"),
        (mv("x", &too_long), "longest 2774 bytes"),
        (cp("x", &too_long), "longest 2774 bytes"),
    ] {
        let err = e.create_files_job(&t, &request(vec![op])).expect_err(why);
        assert!(err.is(ErrorKind::Invalid), "{err}");
        assert!(err.reason.contains(why), "{err}");
        assert_eq!(e.draft(&t).unwrap().root, before, "the draft is unchanged");
    }
    // Where it fits, it goes, and the draft finalizes.
    let fits = format!("{}/a", deep(50, |i| format!("b{i}")));
    e.create_files_job(&t, &request(vec![mv("a", &fits), cp("x", "y/x")]))
        .unwrap();
    let (v, _) = e.finalize(&t).unwrap();
    let moved = format!("{fits}/{}", tall.strip_prefix("a/").unwrap());
    assert_eq!(read_all(&e, &Qhit::Version(v), &moved).unwrap(), b"");
}

/// Copies of copies of empty directories double the tree at the cost of a digest each: the
/// draft's directories are limited like its files (review 30: 2^61 directories, and a parts
/// list that never ended). The parts list walks each distinct directory once.
#[test]
fn copies_of_copies_of_directories_stop_at_the_directory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let first = vec![
        op(json!({"op":"add","type":"directory","path":"d/x"})),
        add_file("d/f", 0),
    ];
    e.create_files_job(&t, &request(first)).unwrap();
    let doubling = || vec![mv("d", "e/x"), cp("e/x", "e/y"), mv("e", "d")];
    let mut doublings = 0;
    let err = loop {
        match e.create_files_job(&t, &request(doubling())) {
            Ok(_) => doublings += 1,
            Err(err) => break err,
        }
        assert!(doublings < 40, "no limit");
    };
    assert!(err.is(ErrorKind::TooLarge), "{err}");
    assert!(
        err.reason.contains("directories; the limit is 10000000"),
        "{err}"
    );
    // After n doublings the draft holds 3·2^n − 1 directories (and 2^n files): the 22nd
    // would have made 12,582,911.
    assert_eq!(doublings, 21);
    let (v, _) = e.finalize(&t).unwrap();
    assert!(e.parts(&Qhit::Version(v)).unwrap().is_empty());
}

/// A force completion that meets a stored directory twice (a copy), when resolving the first
/// left a file of another, unfinished files job in it, resolves the second copy to the same
/// result (review 30: it looked that node up in the index before the pass had committed it,
/// and answered 404 "directory node … not found" after sealing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_completion_resolves_a_copied_directory_still_waiting_on_another_job() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let a = e
        .create_files_job(&t, &request(vec![add_file("dir/x", 10)]))
        .unwrap();
    post(&e, t, &a, 0, b"abc".to_vec(), 3).await.unwrap();
    e.create_files_job(&t, &request(vec![add_file("dir/y", 10)]))
        .unwrap();
    e.create_files_job(&t, &request(vec![cp("dir", "dir2")]))
        .unwrap();
    let mut dropped = e.force_completion(&t, &a.id).unwrap().files_dropped;
    dropped.sort();
    assert_eq!(dropped, vec!["dir/x", "dir2/x"]);
}

/// The link-chain check counts a last link to a version's file like any other: 9 links are
/// refused as reads would refuse them, 8 are made and read (review 30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_ending_in_a_link_to_a_version_counts_that_link() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let job = e
        .create_files_job(&t, &request(vec![add_file("f", 5)]))
        .unwrap();
    upload_all(&e, t, &job, &files(&[("f", b"hello")])).await;
    let (v, rec) = e.finalize(&t).unwrap();
    let t = e.open_draft(&rec.object).unwrap().token;
    let chain = |first: usize| {
        let mut ops: Vec<_> = (first + 1..=8)
            .map(|i| add_file(&format!("p{i}"), 0))
            .collect();
        for i in first..8 {
            ops.push(op(
                json!({"op":"link","path":format!("p{i}"),"target":format!("./files/p{}", i + 1)}),
            ));
        }
        ops.push(op(
            json!({"op":"link","path":"p8","target":format!("/qfab/{v}/files/f")}),
        ));
        ops
    };
    let err = e.create_files_job(&t, &request(chain(0))).unwrap_err();
    assert!(err.is(ErrorKind::Invalid), "{err}");
    assert!(err.reason.contains("goes through too many links"), "{err}");
    e.create_files_job(&t, &request(chain(1))).unwrap();
    assert_eq!(read_all(&e, &Qhit::Draft(t), "p1").unwrap(), b"hello");
}

/// A link target or a `meta` path under a file does not exist: 404, as §8 says (review 30:
/// 409 "a is a file").
#[test]
fn a_link_target_or_meta_path_under_a_file_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    e.create_files_job(&t, &request(vec![add_file("a", 0)]))
        .unwrap();
    for o in [
        json!({"op":"link","path":"l","target":"./files/a/b"}),
        json!({"op":"meta","path":"a/b","meta":{"k":1}}),
    ] {
        let err = e.create_files_job(&t, &request(vec![op(o)])).unwrap_err();
        assert!(err.is(ErrorKind::NotFound), "{err}");
    }
}

/// Two links to a file that was deleted, made when it had different sizes, each list the size
/// it was made with (QA30: the listing remembered the first one's by target, for both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_that_lead_nowhere_each_list_their_own_size() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let link = |path: &str| op(json!({"op":"link","path":path,"target":"./files/t.bin"}));
    add_and_upload(&e, t, &files(&[("t.bin", &[1; 74])])).await;
    e.create_files_job(&t, &request(vec![link("b-link")]))
        .unwrap();
    add_and_upload(&e, t, &files(&[("t.bin", &[2; 300])])).await;
    e.create_files_job(&t, &request(vec![link("A-link")]))
        .unwrap();
    let sizes = |e: &Engine| {
        let l = e.meta_get(&Qhit::Draft(t), "files").unwrap();
        (
            l["A-link"]["."]["size"].clone(),
            l["b-link"]["."]["size"].clone(),
        )
    };
    assert_eq!(sizes(&e), (json!(300), json!(300)), "both lead to t.bin");
    let del = op(json!({"op":"del","path":"t.bin"}));
    e.create_files_job(&t, &request(vec![del])).unwrap();
    assert_eq!(sizes(&e), (json!(300), json!(74)), "each its own");
}

/// A stored directory written before nodes kept their shape is measured when it is moved or
/// copied (and only then): too deep at its target, the move is refused all the same.
#[test]
fn a_directory_stored_without_a_shape_is_measured_when_moved() {
    use cairn_core::record::Record;
    use cairn_jobs::records::{CF_DRAFTS, CF_NODES};
    use cairn_jobs::tree::{Content, DirNode, Entry, FileEntry, TreeStats};
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let old = |name: String, child: Entry| DirNode {
        entries: [(name, child)].into_iter().collect(),
        meta: None,
        stats: Some(TreeStats {
            files: 1,
            pending: 0,
            bytes: 0,
            shape: None,
        }),
    };
    let idx = e.store().index();
    let mut b = idx.batch();
    let mut child = Entry::File(FileEntry {
        size: 0,
        mime_type: None,
        meta: None,
        content: Content::Parts(Vec::new()),
        hash: Some(cairn_core::Digest::empty()),
        declared: None,
    });
    // a/d0/…/d199/f, as an older server wrote it.
    let mut name = "f".to_string();
    for i in (0..=200).rev() {
        let node = old(name, child);
        b.put(CF_NODES, node.digest().as_bytes(), &node.encode());
        child = Entry::Dir(node.digest());
        name = if i == 0 {
            "a".into()
        } else {
            format!("d{}", i - 1)
        };
    }
    let root = old(name, child);
    b.put(CF_NODES, root.digest().as_bytes(), &root.encode());
    let mut draft = e.draft(&t).unwrap();
    draft.root = root.digest();
    b.put_record(CF_DRAFTS, &t.to_bytes(), &draft);
    idx.write(b, true).unwrap();
    let too_deep = format!("{}/a", deep(100, |i| format!("b{i}")));
    let err = e
        .create_files_job(&t, &request(vec![mv("a", &too_deep)]))
        .unwrap_err();
    assert!(err.is(ErrorKind::Invalid), "{err}");
    assert!(err.reason.contains("201 segments below it"), "{err}");
    e.create_files_job(&t, &request(vec![mv("a", "b/a")]))
        .unwrap();
    let f = format!("b/a/{}/f", deep(200, |i| format!("d{i}")));
    assert_eq!(read_all(&e, &Qhit::Draft(t), &f).unwrap(), b"");
}

/// A file uploaded again in another draft, packed there with another file, and resolved, then
/// that draft deleted and gc'd: an add declaring its blake3 still finds the copy a version
/// holds (QA30: the index kept only the latest copy, which gc had collected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_content_is_found_after_a_later_copy_of_it_is_collected() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let x = data(21, 3244);
    let hash = cairn_core::Digest::of(&x).to_hex();
    add_and_upload(&e, t, &files(&[("keep.bin", &x)])).await;
    let (_, v1) = e.finalize(&t).unwrap();
    let b = e.open_draft(&v1.object).unwrap().token;
    add_and_upload(
        &e,
        b,
        &files(&[("again.bin", &x), ("other.bin", &data(22, 100))]),
    )
    .await;
    e.finalize_files(&b).unwrap();
    e.delete_draft(&b).unwrap();
    e.gc(&cairn_store::GcOptions::default()).unwrap();
    let c = e.open_draft(&v1.object).unwrap().token;
    let add = op(json!({"path":"y","size":x.len(),"blake3":hash}));
    let job = e.create_files_job(&c, &request(vec![add])).unwrap();
    assert!(job.jobs.is_empty(), "known content needs no upload");
    assert_eq!(read_all(&e, &Qhit::Draft(c), "y").unwrap(), x);
}

/// A draft takes at most `MAX_FILES_JOBS` files jobs: the draft's record lists them and every
/// write to the draft rewrites it, so empty jobs made in a loop grew it without bound (review
/// 32). One more is 413-`too_large` and changes nothing; the draft still finalizes.
#[test]
fn a_draft_takes_a_bounded_number_of_files_jobs() {
    assert_eq!(cairn_jobs::files::MAX_FILES_JOBS, 10_000);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 256 << 10, SMALL_CHUNKS);
    cfg.max_files_jobs = 40;
    let e = Arc::new(Engine::open(cfg).unwrap());
    let t = new_object(&e);
    for _ in 0..40 {
        e.create_files_job(&t, &request(vec![])).unwrap();
    }
    let err = e
        .create_files_job(&t, &request(vec![add_file("/a", 0)]))
        .expect_err("one job too many");
    assert!(err.is(ErrorKind::TooLarge), "{err}");
    let jobs = e.files_jobs(&t).unwrap();
    assert_eq!(jobs.len(), 40);
    e.finalize(&t).unwrap();
}
