//! End-to-end flows of the engine: files jobs, uploads, finalize, versions, reads, ops, links,
//! metadata, force completion, and bad input that must change nothing.

mod common;

use std::collections::BTreeMap;

use cairn_core::{ErrorKind, FilePath};
use cairn_jobs::Qhit;
use common::*;
use serde_json::json;

const P: u64 = 256 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_finalize_and_read_back_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let sizes = [
        ("empty", 0),
        ("one", 1),
        ("p-1", P - 1),
        ("p", P),
        ("p+1", P + 1),
        ("d/a", 1000),
        ("d/b", 3 * P + 7),
    ];
    let files: BTreeMap<String, Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, (n, s))| (n.to_string(), data(i as u64, *s as usize)))
        .collect();
    let ops = files
        .iter()
        .map(|(p, d)| add_file(&format!("/{p}"), d.len() as u64))
        .collect();
    let job = e.create_files_job(&t, &request(ops)).unwrap();
    // d/b: 4 parts; p: 1; p+1: 2; d/a + one packed together; p-1 does not fit with them: 1.
    assert_eq!(job.jobs.len(), 4 + 1 + 2 + 1 + 1);
    upload_all(&e, t, &job, &files).await;
    let st = e.files_job_status(&t, &job.id).unwrap();
    assert_eq!(st.status, cairn_jobs::records::JobStatus::Completed);

    // A complete file of the draft is readable before finalize.
    assert_eq!(read_all(&e, &Qhit::Draft(t), "d/b").unwrap(), files["d/b"]);

    let (hash, _) = e.finalize(&t).unwrap();
    for (path, bytes) in &files {
        // Every file's blake3 is known without re-reading it (parts are powers of two).
        let h = e
            .open_file(&Qhit::Version(hash), &FilePath::parse(path).unwrap())
            .unwrap();
        assert_eq!(h.etag, cairn_core::Digest::of(bytes), "{path}: file hash");
        assert_eq!(
            &read_all(&e, &Qhit::Object(t.object), path).unwrap(),
            bytes,
            "{path} by object"
        );
        assert_eq!(
            &read_all(&e, &Qhit::Version(hash), path).unwrap(),
            bytes,
            "{path} by version"
        );
    }
    let tree = e.files_json(&Qhit::Version(hash)).unwrap();
    assert_eq!(tree["."]["type"], "directory");
    assert_eq!(tree["d"]["b"]["."]["size"], 3 * P + 7);
    assert_eq!(tree["d"]["b"]["."]["parts"].as_array().unwrap().len(), 4);
    assert_eq!(tree["empty"]["."]["parts"], json!([]));
    assert!(
        e.draft(&t).unwrap_err().is(ErrorKind::NotFound),
        "the draft is gone"
    );
    assert!(
        e.finalize(&t).unwrap_err().is(ErrorKind::NotFound),
        "a second finalize fails"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_ops_links_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let files: BTreeMap<String, Vec<u8>> = [("a/x", data(1, 5000)), ("a/y", data(2, 70_000))]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    add_and_upload(&e, t, &files).await;
    e.meta_set(&t, "title", json!("first"), false).unwrap();
    let (v1, _) = e.finalize(&t).unwrap();

    let t2 = e.open_draft(&t.object).unwrap().token;
    assert_eq!(
        read_all(&e, &Qhit::Draft(t2), "a/x").unwrap(),
        files["a/x"],
        "a draft starts from the head"
    );
    let ops = vec![
        op(json!({"op":"move","copy_move_source_path":"a/x","path":"b/x"})),
        op(json!({"op":"copy","copy_move_source_path":"a/y","path":"c/y"})),
        op(json!({"op":"del","path":"a/y"})),
        op(json!({"op":"add","type":"directory","path":"empty-dir"})),
        op(json!({"op":"link","path":"l/rel","target":"./files/c/y"})),
        op(json!({"op":"link","path":"l/abs","target":format!("/qfab/{v1}/files/a/y")})),
        op(json!({"op":"link","path":"l/typed","target":"./files/c/y","mime_type":"video/mp4"})),
        op(json!({"op":"meta","path":"b/x","meta":{"lang":"en"}})),
    ];
    let job2 = e.create_files_job(&t2, &request(ops)).unwrap();
    assert!(job2.jobs.is_empty(), "no bytes to upload");
    e.meta_set(&t2, "title", json!({"main": "second"}), true)
        .unwrap();
    let (v2, rec2) = e.finalize(&t2).unwrap();
    assert_eq!(rec2.parent, Some(v1));
    assert_eq!(e.versions(&t.object).unwrap(), vec![v2, v1], "newest first");

    let q = Qhit::Version(v2);
    assert_eq!(read_all(&e, &q, "b/x").unwrap(), files["a/x"]);
    assert_eq!(read_all(&e, &q, "c/y").unwrap(), files["a/y"]);
    assert_eq!(read_all(&e, &q, "l/rel").unwrap(), files["a/y"]);
    assert_eq!(read_all(&e, &q, "l/abs").unwrap(), files["a/y"]);
    // A link's own mime_type is kept, and served instead of its target's.
    let typed = e
        .open_file(&q, &FilePath::parse("l/typed").unwrap())
        .unwrap();
    assert_eq!(typed.mime_type.as_deref(), Some("video/mp4"));
    assert_eq!(tree_mime(&e, &q, "l/typed"), json!("video/mp4"));
    assert!(read_all(&e, &q, "a/y").unwrap_err().is(ErrorKind::NotFound));
    assert_eq!(
        read_all(&e, &Qhit::Version(v1), "a/y").unwrap(),
        files["a/y"],
        "old version unchanged"
    );
    let tree = e.files_json(&q).unwrap();
    assert_eq!(tree["empty-dir"]["."]["type"], "directory");
    assert_eq!(tree["b"]["x"]["."]["meta"]["lang"], "en");
    assert_eq!(e.meta_get(&q, "title/main").unwrap(), json!("second"));
    assert!(e.meta_get(&q, "nope").unwrap_err().is(ErrorKind::NotFound));
    assert_eq!(e.meta_get(&q, "files/b/x/./size").unwrap(), json!(5000));

    e.delete_version(&v2).unwrap();
    assert_eq!(e.object(&t.object).unwrap().head, Some(v1));
}

/// A `./files/…` link's listed size is that of what it leads to now, as a download serves it,
/// however its target changed since the link was made (QA: the size recorded then was listed,
/// and the official client, which plans ranged reads from it, downloaded a truncated file).
/// Listings, streamed listings and `meta/files/…/./size` agree; a link to a version keeps its
/// size; a chain is followed; the earlier version is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_lists_the_size_of_what_it_leads_to_now() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let v1_files: BTreeMap<String, Vec<u8>> = [("f", data(1, 5)), ("x", data(2, 333))]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    add_and_upload(&e, t, &v1_files).await;
    let ops = vec![
        op(json!({"op":"link","path":"l","target":"./files/f"})),
        op(json!({"op":"link","path":"chain","target":"./files/g"})),
        op(json!({"op":"link","path":"to-x","target":"./files/x"})),
    ];
    // "g" is added in the same job, before the link to it.
    let mut with_g = vec![add_file("g", 7)];
    with_g.extend(ops);
    let job = e.create_files_job(&t, &request(with_g)).unwrap();
    post(&e, t, &job, 0, data(3, 7), 100).await.unwrap();
    let (v1, _) = e.finalize(&t).unwrap();

    // The next version replaces f (5 → 20 bytes) and puts the link to x in g's place.
    let t2 = e.open_draft(&t.object).unwrap().token;
    let bigger: BTreeMap<String, Vec<u8>> = [("f".to_string(), data(4, 20))].into();
    add_and_upload(&e, t2, &bigger).await;
    let mv = op(json!({"op":"move","copy_move_source_path":"to-x","path":"g"}));
    e.create_files_job(&t2, &request(vec![mv])).unwrap();
    let sizes = |q: &Qhit| {
        let tree = e.files_json(q).unwrap();
        let mut streamed = Vec::new();
        e.files_json_to(q, &mut streamed).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&streamed).unwrap(),
            tree
        );
        let listed = |p: &str| tree[p]["."]["size"].as_u64().unwrap();
        let meta = |p: &str| e.meta_get(q, &format!("files/{p}/./size")).unwrap();
        assert_eq!(json!(listed("l")), meta("l"));
        assert_eq!(json!(listed("chain")), meta("chain"));
        (listed("l"), listed("chain"))
    };
    let draft = Qhit::Draft(t2);
    assert_eq!(sizes(&draft), (20, 333), "the draft lists what it serves");
    let (v2, _) = e.finalize(&t2).unwrap();
    let q2 = Qhit::Version(v2);
    assert_eq!(sizes(&q2), (20, 333));
    assert_eq!(read_all(&e, &q2, "l").unwrap(), data(4, 20));
    assert_eq!(read_all(&e, &q2, "chain").unwrap(), v1_files["x"]);
    assert_eq!(
        sizes(&Qhit::Version(v1)),
        (5, 7),
        "the first version is unchanged"
    );
    assert_eq!(
        read_all(&e, &Qhit::Version(v1), "l").unwrap(),
        v1_files["f"]
    );
}

/// A listing follows a link as far as a download does and no further: through a chain of 8
/// links it shows the size served; through 9, which a download refuses, the link's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_follows_link_chains_exactly_as_far_as_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for case in ["8", "9"] {
        files.insert(format!("{case}/F"), data(1, 1000));
        files.insert(format!("{case}/head-target"), data(2, 5));
        for k in 2..=8 {
            files.insert(format!("{case}/X{k}"), data(3, 7));
        }
    }
    add_and_upload(&e, t, &files).await;
    let job = |ops: Vec<serde_json::Value>| {
        e.create_files_job(&t, &request(ops.into_iter().map(op).collect()))
            .unwrap();
    };
    for (case, hops) in [("8", 7), ("9", 8)] {
        // The head first, one hop to a file; then a chain of `hops` links, built one hop per
        // job (each job's placed links stay within the limit), is moved onto that file.
        job(vec![
            json!({"op":"link","path":format!("{case}/H"),"target":format!("./files/{case}/head-target")}),
        ]);
        job(vec![
            json!({"op":"link","path":format!("{case}/c1"),"target":format!("./files/{case}/F")}),
        ]);
        for k in 2..=hops {
            job(vec![
                json!({"op":"link","path":format!("{case}/c{k}"),"target":format!("./files/{case}/X{k}")}),
                json!({"op":"move","copy_move_source_path":format!("{case}/c{}", k - 1),"path":format!("{case}/X{k}")}),
            ]);
        }
        job(vec![
            json!({"op":"move","copy_move_source_path":format!("{case}/c{hops}"),"path":format!("{case}/head-target")}),
        ]);
    }
    let (v, _) = e.finalize(&t).unwrap();
    let q = Qhit::Version(v);
    let tree = e.files_json(&q).unwrap();
    let listed = |case: &str| tree[case]["H"]["."]["size"].as_u64().unwrap();
    assert_eq!(
        read_all(&e, &q, "8/H").unwrap(),
        files["8/F"],
        "8 links are followed"
    );
    assert_eq!(listed("8"), 1000);
    let err = read_all(&e, &q, "9/H").unwrap_err();
    assert!(err.to_string().contains("links to follow"), "{err}");
    assert_eq!(listed("9"), 5, "9 links are not: the link's own size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_requests_keep_every_byte_that_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let src = data(9, (P - 10) as usize);
    let job = e
        .create_files_job(&t, &request(vec![add_file("f", src.len() as u64)]))
        .unwrap();
    let mut sent = 0usize;
    for cut in [1usize, 1023, 4096, 17_000, 40_000, 65_537, 100_000] {
        // A body that delivers `cut` bytes and then fails, as a dropped connection does.
        let piece = src[sent..sent + cut].to_vec();
        let frames: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
            Ok(bytes::Bytes::from(piece)),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "cut",
            )),
        ];
        let r = e
            .upload(t, job.id, job.jobs[0], None, futures::stream::iter(frames))
            .await;
        assert!(r.is_err(), "a cut-off request is not a success");
        sent += cut;
        let st = e.upload_status(&t, &job.id, &job.jobs[0], 0, 10).unwrap();
        assert_eq!(
            st.files[0].skip, sent as u64,
            "skip is exactly what arrived"
        );
        assert_eq!(st.files[0].rem, src.len() as u64 - sent as u64);
    }
    post(&e, t, &job, 0, src[sent..].to_vec(), 5000)
        .await
        .unwrap();
    let (v, _) = e.finalize(&t).unwrap();
    assert_eq!(read_all(&e, &Qhit::Version(v), "f").unwrap(), src);

    same_as_one_go(&e, v, &src).await;
}

/// A server that stops while an upload is still receiving cuts it off, and what arrived is
/// committed before the stop completes (the runtime would otherwise cancel the ingest task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_commits_what_an_unfinished_upload_received() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let src = data(11, 300_000);
    let job = e
        .create_files_job(&t, &request(vec![add_file("f", src.len() as u64)]))
        .unwrap();
    let sent = 123_457;
    // The client sends part of the body, then nothing (its connection stays open).
    let first: Result<bytes::Bytes, std::io::Error> =
        Ok(bytes::Bytes::copy_from_slice(&src[..sent]));
    let body = futures::StreamExt::chain(
        futures::stream::iter(vec![first]),
        futures::stream::pending(),
    );
    let upload = tokio::spawn({
        let e = e.clone();
        let (fj, uj) = (job.id, job.jobs[0]);
        async move { e.upload(t, fj, uj, None, body).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!upload.is_finished(), "the upload waits for more bytes");
    e.stop_uploads(std::time::Duration::from_secs(2)).await;
    let r = tokio::time::timeout(std::time::Duration::from_secs(2), upload)
        .await
        .expect("the upload ended when the server stopped")
        .unwrap();
    // 503 `busy`: the server's stop, not the client, cut it off, so clients retry (resuming
    // from `skip`) instead of taking it for a bad request (QA: the CLI exited 2 on a 400).
    let err = r.expect_err("a cut-off upload is not a success");
    assert_eq!(err.kind, ErrorKind::Busy, "{err}");
    let st = e.upload_status(&t, &job.id, &job.jobs[0], 0, 10).unwrap();
    assert_eq!(
        st.files[0].skip, sent as u64,
        "every byte that arrived was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_completion_keeps_whole_files_and_drops_incomplete_ones() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let files: BTreeMap<String, Vec<u8>> = [
        ("a-w1", 1000usize),
        ("b-w2", 2000),
        ("c-half", 3000),
        ("d-never", 4000),
        ("e-big", 2 * P as usize),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (n, s))| (n.to_string(), data(i as u64, s)))
    .collect();
    let ops = ["a-w1", "b-w2", "c-half", "d-never", "e-big"]
        .iter()
        .map(|p| add_file(p, files[*p].len() as u64))
        .collect();
    let job = e.create_files_job(&t, &request(ops)).unwrap();
    // Jobs (planned in name order): [big 0..P] [big P..2P] [w1 w2 half never]; send w1, w2 and half of "c-half", and
    // only the first part of big.
    let first_path = |i: usize| {
        e.upload_status(&t, &job.id, &job.jobs[i], 0, 1)
            .unwrap()
            .files[0]
            .clone()
    };
    assert_eq!(
        (first_path(0).path.as_str(), first_path(0).off),
        ("e-big", 0)
    );
    assert_eq!(first_path(2).path, "a-w1");
    let small = files["a-w1"]
        .iter()
        .chain(&files["b-w2"])
        .chain(&files["c-half"][..1500])
        .copied()
        .collect();
    post(&e, t, &job, 2, small, 999).await.unwrap();
    post(&e, t, &job, 0, files["e-big"][..P as usize].to_vec(), 4096)
        .await
        .unwrap();
    assert!(e.finalize(&t).unwrap_err().is(ErrorKind::Incomplete));
    assert!(read_all(&e, &Qhit::Draft(t), "c-half")
        .unwrap_err()
        .is(ErrorKind::Incomplete));

    let report = e.force_completion(&t, &job.id).unwrap();
    let mut dropped = report.files_dropped.clone();
    dropped.sort();
    assert_eq!(dropped, vec!["c-half", "d-never", "e-big"]);
    assert!(
        e.force_completion(&t, &job.id)
            .unwrap_err()
            .is(ErrorKind::Gone),
        "410 the second time"
    );
    let (v, _) = e.finalize(&t).unwrap();
    let q = Qhit::Version(v);
    assert_eq!(read_all(&e, &q, "a-w1").unwrap(), files["a-w1"]);
    assert_eq!(read_all(&e, &q, "b-w2").unwrap(), files["b-w2"]);
    for gone in ["c-half", "d-never", "e-big"] {
        assert!(
            read_all(&e, &q, gone).unwrap_err().is(ErrorKind::NotFound),
            "{gone}"
        );
    }
    let fsck = e.fsck().unwrap();
    assert!(fsck.is_clean(), "{fsck:?}");
}

/// A file whose add op declared a blake3 (as `cairn upload` does) but whose bytes hash to
/// another (the file was rewritten while it was sent) is never published: a finalize refuses
/// it and changes nothing, and a force completion drops and reports it. Files whose bytes match
/// their declaration, one of several parts among them, and files declaring nothing resolve as
/// usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_bytes_are_not_the_ones_declared_is_never_published() {
    let dir = tempfile::tempdir().unwrap();
    // Passes of one file: a refused finalize must fail before any pass commits.
    let mut cfg = config(dir.path(), P, SMALL_CHUNKS);
    cfg.resolve_batch = 1;
    let e = std::sync::Arc::new(cairn_jobs::Engine::open(cfg).unwrap());
    let t = new_object(&e);
    let planned: BTreeMap<String, Vec<u8>> = [
        ("big", 2 * P as usize + 100),
        ("ok", 5000),
        ("plain", 3000),
        ("torn", 4000),
        ("torn-big", P as usize + 7),
        ("d/fine", 700),
        ("d/torn", 900),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (n, s))| (n.to_string(), data(i as u64, s)))
    .collect();
    let ops = planned
        .iter()
        .map(|(path, bytes)| {
            let mut o = add_file(path, bytes.len() as u64);
            if path != "plain" {
                o.blake3 = Some(cairn_core::Digest::of(bytes).to_hex());
            }
            o
        })
        .collect();
    let job = e.create_files_job(&t, &request(ops)).unwrap();
    // What arrives: the planned bytes, except that the torn files changed after planning
    // (one byte of the small one, the second part of the big one).
    let mut sent = planned.clone();
    sent.get_mut("torn").unwrap()[1234] ^= 1;
    sent.get_mut("torn-big").unwrap()[P as usize + 3] ^= 0x80;
    sent.get_mut("d/torn").unwrap()[0] ^= 2;
    upload_all(&e, t, &job, &sent).await;
    // A copy of the stored directory holding a torn file: resolved once, refused in both places.
    let copy = op(json!({"op": "copy", "copy_move_source_path": "d", "path": "e"}));
    e.create_files_job(&t, &request(vec![copy])).unwrap();

    let root = e.draft(&t).unwrap().root;
    for err in [
        e.finalize(&t).unwrap_err(),
        e.finalize_files(&t).unwrap_err(),
    ] {
        assert!(err.is(ErrorKind::BadDigest), "{err}");
        assert!(err.to_string().contains("torn"), "{err}");
    }
    assert_eq!(
        e.draft(&t).unwrap().root,
        root,
        "a refused finalize changes nothing"
    );

    let report = e.force_completion(&t, &job.id).unwrap();
    let mut dropped = report.files_dropped.clone();
    dropped.sort();
    assert_eq!(dropped, vec!["d/torn", "e/torn", "torn", "torn-big"]);
    let (v, _) = e.finalize(&t).unwrap();
    let q = Qhit::Version(v);
    for path in ["big", "ok", "plain", "d/fine"] {
        assert_eq!(read_all(&e, &q, path).unwrap(), planned[path], "{path}");
    }
    assert_eq!(read_all(&e, &q, "e/fine").unwrap(), planned["d/fine"]);
    for gone in ["torn", "torn-big", "d/torn", "e/torn"] {
        assert!(
            read_all(&e, &q, gone).unwrap_err().is(ErrorKind::NotFound),
            "{gone}"
        );
    }
    let fsck = e.fsck().unwrap();
    assert!(fsck.is_clean(), "{fsck:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let root_before = e.draft(&t).unwrap().root;
    let mut not_files = 0;
    for bad in [
        vec![add_file("../x", 1)],
        vec![add_file("a\0b", 1)],
        vec![add_file("ok", 1), op(json!({"op":"del","path":"missing"}))],
        vec![op(
            json!({"op":"link","path":"l","target":"./files/nowhere"}),
        )],
        vec![op(
            json!({"op":"link","path":"l","target":"http://elsewhere/x"}),
        )],
        vec![add_file("dup", 1), add_file("dup", 2)],
        vec![add_file("f", 1), add_file("f/g", 1)],
        // A target that is a directory, or itself a link: invalid, and said so.
        vec![
            add_file("d/x", 1),
            op(json!({"op":"link","path":"l","target":"./files/d"})),
        ],
        vec![
            add_file("x", 1),
            op(json!({"op":"link","path":"l1","target":"./files/x"})),
            op(json!({"op":"link","path":"l2","target":"./files/l1"})),
        ],
    ] {
        let err = e.create_files_job(&t, &request(bad)).unwrap_err();
        if err.reason.contains("./files/d ") || err.reason.contains("./files/l1 ") {
            assert!(err.is(ErrorKind::Invalid), "{err}");
            assert!(err.reason.contains("a link leads to a file"), "{err}");
            not_files += 1;
        }
        let d = e.draft(&t).unwrap();
        assert_eq!(d.root, root_before, "the draft tree is unchanged");
        assert!(d.files_jobs.is_empty(), "no files job was recorded");
    }
    assert_eq!(not_files, 2, "links to a directory and to a link say so");
    let src = data(3, 5000);
    let job = e
        .create_files_job(&t, &request(vec![add_file("f", 5000)]))
        .unwrap();
    let too_many = e
        .upload(
            t,
            job.id,
            job.jobs[0],
            Some(5001),
            futures::stream::iter(Vec::<Result<bytes::Bytes, std::io::Error>>::new()),
        )
        .await;
    assert!(too_many.unwrap_err().is(ErrorKind::TooLarge));
    assert_eq!(
        e.upload_status(&t, &job.id, &job.jobs[0], 0, 10)
            .unwrap()
            .files[0]
            .skip,
        0
    );
    let other = cairn_core::UploadJobId::random();
    assert!(e
        .upload_status(&t, &job.id, &other, 0, 10)
        .unwrap_err()
        .is(ErrorKind::NotFound));
    post(&e, t, &job, 0, src.clone(), 1000).await.unwrap();
    assert!(
        post(&e, t, &job, 0, vec![1], 1)
            .await
            .unwrap_err()
            .is(ErrorKind::Gone),
        "data to a completed job"
    );
    assert!(e
        .open_file(&Qhit::Draft(t), &FilePath::parse("nope").unwrap())
        .unwrap_err()
        .is(ErrorKind::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_status_paginates() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let ops = (0..50)
        .map(|i| add_file(&format!("s/{i:03}"), 10))
        .collect();
    let job = e.create_files_job(&t, &request(ops)).unwrap();
    let first = e.upload_status(&t, &job.id, &job.jobs[0], 0, 20).unwrap();
    assert_eq!((first.files.len(), first.next, first.total), (20, 20, 50));
    let last = e.upload_status(&t, &job.id, &job.jobs[0], 40, 20).unwrap();
    assert_eq!((last.files.len(), last.next), (10, -1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_stops_jobs_and_resume_continues_them() {
    use cairn_jobs::records::JobStatus;
    let dir = tempfile::tempdir().unwrap();
    let src = data(4, 100_000);
    let (t, job) = {
        let e = small_engine(dir.path());
        let t = new_object(&e);
        let job = e
            .create_files_job(&t, &request(vec![add_file("f", 100_000)]))
            .unwrap();
        post(&e, t, &job, 0, src[..40_000].to_vec(), 3000)
            .await
            .unwrap();
        assert_eq!(
            e.files_job_status(&t, &job.id).unwrap().status,
            JobStatus::InProgress
        );
        (t, job)
    };
    let e = small_engine(dir.path());
    let st = e.files_job_status(&t, &job.id).unwrap();
    assert_eq!(
        (st.status, st.bytes_received),
        (JobStatus::Stopped, 40_000),
        "a restart stops the job"
    );
    assert_eq!(e.files_jobs(&t).unwrap().len(), 1);
    assert_eq!(e.resume(&t, &job.id).unwrap().status, JobStatus::InProgress);
    let skip = e
        .upload_status(&t, &job.id, &job.jobs[0], 0, 10)
        .unwrap()
        .files[0]
        .skip;
    assert_eq!(skip, 40_000);
    post(&e, t, &job, 0, src[40_000..].to_vec(), 3000)
        .await
        .unwrap();
    assert_eq!(
        e.files_job_status(&t, &job.id).unwrap().status,
        JobStatus::Completed
    );
    assert!(e.resume(&t, &job.id).unwrap_err().is(ErrorKind::Gone));
    e.finalize_files(&t).unwrap();
    assert!(e
        .create_files_job(&t, &request(vec![add_file("g", 1)]))
        .unwrap_err()
        .is(ErrorKind::Conflict));
    let (v, _) = e.finalize(&t).unwrap();
    assert_eq!(read_all(&e, &Qhit::Version(v), "f").unwrap(), src);

    same_as_one_go(&e, v, &src).await;
}

/// Checks that version `v` of `e`, whose file "f" was uploaded with interruptions, names the same
/// part as an upload of `src` in one go (the part digest comes from the chunk list), and that
/// its file hash is blake3 of the bytes either way.
async fn same_as_one_go(
    e: &std::sync::Arc<cairn_jobs::Engine>,
    v: cairn_core::VersionHash,
    src: &[u8],
) {
    let one_go = tempfile::tempdir().unwrap();
    let e2 = small_engine(one_go.path());
    let t2 = new_object(&e2);
    let job2 = e2
        .create_files_job(&t2, &request(vec![add_file("f", src.len() as u64)]))
        .unwrap();
    post(&e2, t2, &job2, 0, src.to_vec(), 3000).await.unwrap();
    let (v2, _) = e2.finalize(&t2).unwrap();
    let parts = e.parts(&Qhit::Version(v)).unwrap();
    assert_eq!(parts, e2.parts(&Qhit::Version(v2)).unwrap());
    assert_eq!(parts.len(), 1);
    let fh = e
        .open_file(&Qhit::Version(v), &FilePath::parse("f").unwrap())
        .unwrap();
    assert_eq!(fh.etag, cairn_core::Digest::of(src));
}

/// A whole file no longer than a maximum chunk gets its blake3 from its chunks at the segment's
/// end (the chunk's name when it makes one chunk) instead of a second pass as it streams: the
/// file hash must still be blake3 of its bytes, for one chunk or several, sent in one request or
/// in two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_whole_files_get_their_blake3_from_their_chunks() {
    let max = SMALL_CHUNKS.max as usize;
    let sizes = [1, 900, 1 << 10, 5000, 12_000, max, max + 1];
    let files: BTreeMap<String, Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("f{i}"), data(100 + i as u64, n)))
        .collect();
    let chunks_of = |b: &[u8]| {
        let mut c = cairn_store::SegmentChunker::new(SMALL_CHUNKS, b.len() as u64);
        let mut n = 0;
        c.push::<()>(bytes::Bytes::copy_from_slice(b), |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        c.finish::<()>(|_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    };
    assert!(chunks_of(&files["f4"]) > 1, "one file makes several chunks");
    assert_eq!(chunks_of(&files["f1"]), 1);

    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    add_and_upload(&e, t, &files).await;
    // The same 12,000 bytes again, as their own job, in two requests.
    let two = e
        .create_files_job(&t, &request(vec![add_file("g", 12_000)]))
        .unwrap();
    let g = &files["f4"];
    post(&e, t, &two, 0, g[..5000].to_vec(), 1000)
        .await
        .unwrap();
    post(&e, t, &two, 0, g[5000..].to_vec(), 1000)
        .await
        .unwrap();
    let (v, _) = e.finalize(&t).unwrap();
    for (path, bytes) in files.iter().chain([(&"g".to_string(), g)]) {
        let h = e
            .open_file(&Qhit::Version(v), &FilePath::parse(path).unwrap())
            .unwrap();
        assert_eq!(h.etag, cairn_core::Digest::of(bytes), "{path}");
    }

    // Sealed after a restart (the hashes are read back, or taken from the one chunk).
    for name in ["f1", "f4"] {
        let bytes = &files[name];
        let dir = tempfile::tempdir().unwrap();
        let (t, job) = {
            let e = small_engine(dir.path());
            let t = new_object(&e);
            let job = e
                .create_files_job(&t, &request(vec![add_file("x", bytes.len() as u64)]))
                .unwrap();
            let half = bytes.len() / 2;
            post(&e, t, &job, 0, bytes[..half].to_vec(), 1000)
                .await
                .unwrap();
            (t, job)
        };
        let e = small_engine(dir.path());
        e.resume(&t, &job.id).unwrap();
        let skip = e
            .upload_status(&t, &job.id, &job.jobs[0], 0, 1)
            .unwrap()
            .files[0]
            .skip;
        post(&e, t, &job, 0, bytes[skip as usize..].to_vec(), 1000)
            .await
            .unwrap();
        let (v, _) = e.finalize(&t).unwrap();
        let h = e
            .open_file(&Qhit::Version(v), &FilePath::parse("x").unwrap())
            .unwrap();
        assert_eq!(
            h.etag,
            cairn_core::Digest::of(bytes),
            "{name} after a restart"
        );
    }
}

/// A listing streams in bounded pieces that add up to the rendered tree, and a consumer that
/// goes away stops the walk and gives its permit back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_listing_streams_in_pieces_and_stops_when_dropped() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let files: BTreeMap<String, Vec<u8>> = (0..4000)
        .map(|i| (format!("dir{}/file-{i:05}.bin", i % 7), vec![i as u8]))
        .collect();
    let ops = files
        .keys()
        .map(|p| add_file(&format!("/{p}"), 1))
        .collect();
    let job = e.create_files_job(&t, &request(ops)).unwrap();
    upload_all(&e, t, &job, &files).await;
    let q = Qhit::Draft(t);
    let whole = e.files_json(&q).unwrap().to_string();
    let pieces: Vec<bytes::Bytes> = e.files_json_stream(q).map(|p| p.unwrap()).collect().await;
    assert!(
        pieces.len() >= 3,
        "{} pieces of {}",
        pieces.len(),
        whole.len()
    );
    assert!(pieces.iter().all(|p| p.len() < (64 << 10) + 1024));
    assert_eq!(pieces.concat(), whole.as_bytes());

    // More abandoned listings than there are streaming permits: each must give its permit
    // back, or the last listing would wait forever.
    let abandon_then_list = async {
        for _ in 0..cairn_jobs::read::LIST_WALKS + 4 {
            let mut s = Box::pin(e.files_json_stream(q));
            assert!(s.next().await.unwrap().is_ok());
        }
        e.files_json_stream(q)
            .map(|p| p.unwrap())
            .collect::<Vec<_>>()
            .await
    };
    let last = tokio::time::timeout(std::time::Duration::from_secs(30), abandon_then_list)
        .await
        .expect("the abandoned walks gave their permits back");
    assert_eq!(last.concat(), whole.as_bytes());
}

/// With every walk permit held by listings whose readers stalled, another listing is refused
/// as busy once it has waited `idle_timeout`, instead of waiting for as long as they stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_waits_for_a_walk_permit_no_longer_than_the_idle_timeout() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), 256 << 10, SMALL_CHUNKS);
    cfg.idle_timeout = std::time::Duration::from_secs(2);
    let e = std::sync::Arc::new(cairn_jobs::Engine::open(cfg).unwrap());
    let t = new_object(&e);
    let long = "a-rather-long-name-so-that-the-listing-takes-many-pieces".repeat(2);
    let files: BTreeMap<String, Vec<u8>> = (0..10_000)
        .map(|i| (format!("d/{long}-{i:05}.bin"), vec![]))
        .collect();
    let ops = files
        .keys()
        .map(|p| add_file(&format!("/{p}"), 0))
        .collect();
    e.create_files_job(&t, &request(ops)).unwrap();
    let q = Qhit::Draft(t);
    let whole = e.files_json(&q).unwrap().to_string();
    assert!(
        whole.len() > 24 * (64 << 10),
        "{} bytes: too short",
        whole.len()
    );
    // Slow readers: a piece every 300 ms, so each walk holds its permit for over 7 s without
    // ever stalling for `idle_timeout`.
    let mut held = Vec::new();
    for _ in 0..cairn_jobs::read::LIST_WALKS {
        let mut s = Box::pin(e.files_json_stream(q));
        assert!(s.next().await.unwrap().is_ok());
        held.push(tokio::spawn(async move {
            while let Some(piece) = s.next().await {
                piece.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        }));
    }
    let started = std::time::Instant::now();
    let mut late = Box::pin(e.files_json_stream(q));
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), late.next())
        .await
        .expect("the listing waited on")
        .unwrap();
    let err = answer.expect_err("no permit was free");
    assert!(err.is(ErrorKind::Busy), "{err}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    for h in held {
        h.abort();
    }
}

/// `files` is the files tree's name: no metadata write reaches it, not even one of the whole
/// root, and the root stays an object. A refused write changes nothing.
#[test]
fn metadata_writes_cannot_shadow_the_files_tree() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    e.meta_set(&t, "", json!({"title": "t"}), false).unwrap();
    let cases = [
        ("", json!({"files": {"fake": {".": {"size": 9}}}}), false),
        ("", json!({"files": "x"}), true),
        ("", json!(5), false),
        ("", json!(["a"]), true),
        ("files", json!({}), false),
        ("/files/x", json!(1), true),
    ];
    for (path, value, merge) in cases {
        let err = e.meta_set(&t, path, value.clone(), merge).unwrap_err();
        assert!(err.is(ErrorKind::Invalid), "{path} {value}: {err}");
    }
    let err = e.meta_delete(&t, "files").unwrap_err();
    assert!(err.is(ErrorKind::Invalid), "{err}");
    let q = Qhit::Draft(t);
    assert_eq!(e.meta_get(&q, "").unwrap(), json!({"title": "t"}));
    // Merging an object without `files` into the root is fine.
    e.meta_set(&t, "", json!({"more": 1}), true).unwrap();
    assert_eq!(
        e.meta_get(&q, "").unwrap(),
        json!({"title": "t", "more": 1})
    );
}

/// A link whose target went away (its version deleted, or the file deleted in a later
/// version) is reported by fsck as dangling, without making the store unclean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_names_links_that_lead_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let a = new_object(&e);
    let files: BTreeMap<String, Vec<u8>> = [("y".to_string(), data(3, 9000))].into();
    add_and_upload(&e, a, &files).await;
    let (va, _) = e.finalize(&a).unwrap();

    let b = new_object(&e);
    add_and_upload(&e, b, &files).await;
    let ops = vec![
        op(json!({"op":"link","path":"abs","target":format!("/qfab/{va}/files/y")})),
        op(json!({"op":"link","path":"rel","target":"./files/y"})),
    ];
    e.create_files_job(&b, &request(ops)).unwrap();
    e.finalize(&b).unwrap();
    let report = e.fsck().unwrap();
    assert!(report.dangling_links.is_empty(), "{report:?}");

    // The relative link's target deleted in the next version; the other object deleted.
    let b2 = e.open_draft(&b.object).unwrap().token;
    let del = vec![op(json!({"op":"del","path":"y"}))];
    e.create_files_job(&b2, &request(del)).unwrap();
    let (vb2, _) = e.finalize(&b2).unwrap();
    e.delete_object(&a.object).unwrap();
    let report = e.fsck().unwrap();
    let mut got = report.dangling_links.clone();
    got.sort();
    let want = [
        format!("{vb2}:abs -> /qfab/{va}/files/y ("),
        format!("{vb2}:rel -> ./files/y ("),
    ];
    // The first version of b still has both links; its `abs` dangles too.
    assert_eq!(got.len(), 3, "{got:?}");
    for w in &want {
        assert!(got.iter().any(|g| g.starts_with(w)), "{w} not in {got:?}");
    }
    assert!(got.iter().any(|g| g.contains("not found")), "{got:?}");
    assert!(
        report.is_clean(),
        "dangling links are not damage: {report:?}"
    );
    // Reading one is a 404 that names the link asked for and where it led.
    let err = read_all(&e, &Qhit::Version(vb2), "rel").unwrap_err();
    assert!(err.is(ErrorKind::NotFound), "{err}");
    assert!(
        err.reason.starts_with("rel is a link to ./files/y"),
        "{err}"
    );
}

/// A metadata document holds at most `MAX_META_VALUES` JSON values, however it is built up
/// (here by two writes under the limit each), and a write past it changes nothing.
#[test]
fn metadata_is_bounded_in_values() {
    use cairn_jobs::engine::MAX_META_VALUES;
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let half = serde_json::Value::Array(vec![json!(0); MAX_META_VALUES / 2 + 1]);
    e.meta_set(&t, "a", half.clone(), false).unwrap();
    let err = e.meta_set(&t, "b", half, false).unwrap_err();
    assert!(err.is(ErrorKind::TooLarge), "{err}");
    let q = Qhit::Draft(t);
    assert!(e.meta_get(&q, "b").unwrap_err().is(ErrorKind::NotFound));
    let a = e.meta_get(&q, "a").unwrap();
    assert_eq!(a.as_array().unwrap().len(), MAX_META_VALUES / 2 + 1);
    // Replacing a value by another adds none.
    e.meta_set(&t, "a/0", json!(1), false).unwrap();
}

/// Metadata is at most `MAX_META_DEPTH` deep, where a value's path counts too (QA: a 127-deep
/// value put at a path made a document `GET …/meta` returned and `PUT …/meta` refused).
#[test]
fn metadata_is_bounded_in_depth_so_it_can_be_written_back_whole() {
    use cairn_jobs::engine::MAX_META_DEPTH;
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let t = new_object(&e);
    let q = Qhit::Draft(t);
    let nested = |n: usize| (0..n).fold(json!(1), |v, _| json!({ "a": v }));
    let err = e
        .meta_set(&t, "k", nested(MAX_META_DEPTH), false)
        .unwrap_err();
    assert!(err.is(ErrorKind::Invalid), "{err}");
    assert!(e.meta_get(&q, "k").unwrap_err().is(ErrorKind::NotFound));
    e.meta_set(&t, "k", nested(MAX_META_DEPTH - 1), false)
        .unwrap();
    let whole = e.meta_get(&q, "").unwrap().to_string();
    // What a client reads parses as a request body does (serde_json's default limit), and
    // goes back whole; one level more would not parse.
    let parsed: serde_json::Value = serde_json::from_str(&whole).unwrap();
    e.meta_set(&t, "", parsed, false).unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&format!("[{whole}]")).is_err());
}

/// A request that names another draft's upload job is refused at once: it neither waits for
/// that job's lock (held here by an upload still receiving) nor holds it, so it cannot time
/// whether the job is receiving data or make its force completion answer 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_drafts_upload_job_never_waits_for_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let e = small_engine(dir.path());
    let (t, other) = (new_object(&e), new_object(&e));
    let job = e
        .create_files_job(&t, &request(vec![add_file("f", 300_000)]))
        .unwrap();
    let (fj, uj) = (job.id, job.jobs[0]);
    let first: Result<bytes::Bytes, std::io::Error> = Ok(bytes::Bytes::from(data(3, 1000)));
    let body = futures::StreamExt::chain(
        futures::stream::iter(vec![first]),
        futures::stream::pending(),
    );
    let receiving = tokio::spawn({
        let e = e.clone();
        async move { e.upload(t, fj, uj, None, body).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!receiving.is_finished(), "the real upload holds the lock");
    let quick = std::time::Duration::from_secs(1);
    let empty = futures::stream::iter(Vec::<Result<bytes::Bytes, std::io::Error>>::new());
    let bogus = tokio::time::timeout(quick, e.upload(other, fj, uj, None, empty))
        .await
        .expect("refused without waiting for the job's lock");
    assert_eq!(bogus.unwrap_err().kind, ErrorKind::NotFound);
    let settle = tokio::time::timeout(
        quick,
        e.settle_upload(&other, &fj, &uj, std::time::Duration::from_secs(5)),
    )
    .await
    .expect("a status for another draft does not wait either");
    assert_eq!(settle.unwrap_err().kind, ErrorKind::NotFound);
    // The owner's own status still waits for the request being received.
    let own = e
        .settle_upload(&t, &fj, &uj, std::time::Duration::from_millis(200))
        .await
        .unwrap();
    assert!(
        !own,
        "the owner's status waited for the upload still receiving"
    );
    receiving.abort();
}

/// The `mime_type` attribute of `path` in the rendered files tree of `q`.
fn tree_mime(e: &cairn_jobs::Engine, q: &Qhit, path: &str) -> serde_json::Value {
    e.meta_get(q, &format!("files/{path}/./mime_type")).unwrap()
}
