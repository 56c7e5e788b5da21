//! Bad input against the running server, table-driven: each request gets the right 4xx with a
//! JSON error body of a stable kind, and a follow-up status call shows nothing changed.

mod common;

use common::{call, curl, new_object, Server};
use serde_json::json;

/// A files job adding one file of `size` bytes to draft `wt`: its id and its upload job's.
fn one_file_job(s: &Server, wt: &str, path: &str, size: usize) -> (String, String) {
    let ops = json!({"ops": [{"path": path, "size": size}]}).to_string();
    let job = call(s, "POST", &format!("/q/{wt}/file_jobs"), Some(&ops), 201);
    let id = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    (id(&job["id"]), id(&job["jobs"][0]))
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (lib, obj, wt) = new_object(&s);
    let (fj, uj) = one_file_job(&s, &wt, "a.bin", 100);
    let status_path = format!("/q/{wt}/file_jobs/{fj}/uploads/{uj}");
    let unknown_obj = "iq__2Fb9vA6XoKhKjQzCjUe6ZcmBe3S5";
    let unknown_uj = "iqfuSNFv8xddhFCK6xB5g5mY8y";
    // One byte more than the 100-byte job expects, sent chunked (no length to refuse up front).
    let too_long = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(too_long.path(), [9u8; 101]).unwrap();
    let too_long_at = format!("@{}", too_long.path().display());
    let post_json = |body: &'static str| {
        vec![
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]
    };

    // (method + path, curl args, status, kind)
    // An upload POST of `body` with a `Content-Range` header line.
    let ranged = |body: &'static str, range: &'static str| {
        vec!["-X", "POST", "--data-binary", body, "-H", range]
    };
    let cases: Vec<(String, Vec<&str>, u16, &str)> = vec![
        (
            format!("/q/{unknown_obj}/files/x"),
            vec![],
            404,
            "not_found",
        ),
        ("/q/iq__0OIl/files/x".into(), vec![], 400, "invalid"),
        ("/q/hello/files/x".into(), vec![], 400, "invalid"),
        (
            format!("/qlibs/{lib}/q/{obj}"),
            vec!["--no-token"],
            401,
            "unauthorized",
        ),
        (
            format!("/qlibs/{lib}/q/{obj}"),
            vec!["-H", "Authorization: Bearer wrong"],
            401,
            "unauthorized",
        ),
        (
            format!("/q/{wt}/file_jobs"),
            post_json("{not json"),
            400,
            "invalid",
        ),
        (
            format!("/q/{wt}/file_jobs"),
            post_json(r#"{"ops":[{"op":"explode","path":"x"}]}"#),
            400,
            "invalid",
        ),
        (
            format!("/q/{wt}/file_jobs"),
            post_json(r#"{"ops":[{"path":"../../etc/passwd","size":1}]}"#),
            400,
            "invalid",
        ),
        (
            format!("/q/{wt}/file_jobs"),
            post_json(r#"{"ops":[{"path":"a\u0000b","size":1}]}"#),
            400,
            "invalid",
        ),
        (
            format!("/q/{wt}/file_jobs"),
            post_json(r#"{"ops":[{"path":"x","size":-5}]}"#),
            400,
            "invalid",
        ),
        (
            format!("/q/{wt}/file_jobs"),
            post_json(r#"{"ops":[{"path":"x","size":18446744073709551616}]}"#),
            400,
            "invalid",
        ),
        (
            format!("/q/{wt}/file_jobs"),
            post_json(r#"{"ops":[{"path":"x","size":1099511627777}]}"#),
            413,
            "too_large",
        ),
        (
            format!("/q/{wt}/file_jobs/{fj}/{uj}"),
            vec![
                "-X",
                "POST",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                "@/proc/self/cmdline",
                "-H",
                "Content-Length: 101",
            ],
            413,
            "too_large",
        ),
        (
            format!("/q/{wt}/file_jobs/{fj}/{uj}"),
            vec![
                "-X",
                "POST",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &too_long_at,
            ],
            413,
            "too_large",
        ),
        (
            format!("/q/{wt}/file_jobs/{fj}/{unknown_uj}"),
            vec!["-X", "POST", "--data-binary", "x"],
            404,
            "not_found",
        ),
        (
            format!("/q/{wt}/files/a.bin"),
            vec!["-H", "Range: bytes=0-1"],
            409,
            "incomplete",
        ),
        (
            format!("/q/{wt}/file_jobs/{fj}/uploads/{uj}/extra"),
            vec![],
            404,
            "not_found",
        ),
        (
            format!("/q/{wt}/files_list/no/such/dir"),
            vec![],
            404,
            "not_found",
        ),
        (
            format!("/q/{wt}/files/no/such/dir/"),
            vec![],
            404,
            "not_found",
        ),
        (
            format!("/q/{wt}/files/..%2F"),
            vec!["--path-as-is"],
            400,
            "invalid",
        ),
        // A struct's body must be an object: serde would take an array by field order.
        (
            format!("/q/{wt}/file_jobs"),
            post_json(r#"[[{"path":"x","size":1}]]"#),
            400,
            "invalid",
        ),
        ("/qlibs".into(), post_json(r#"["sneaky"]"#), 400, "invalid"),
        (
            format!("/q/{wt}/file_jobs"),
            post_json(r#"{"ops":[{"path":"m","size":1,"mime_type":"not a mime"}]}"#),
            400,
            "invalid",
        ),
        (
            format!("/q/{wt}/file_jobs"),
            post_json(r#"{"ops":[{"path":"m","size":1,"mime_type":"a\r\nX-Injected: 1"}]}"#),
            400,
            "invalid",
        ),
        // Numbers are digits only (Rust's parse would take a `+`).
        (
            format!("/q/{wt}/file_jobs/{fj}/{uj}"),
            ranged("x", "Content-Range: bytes +0-0/100"),
            400,
            "invalid",
        ),
        (
            format!("/q/{wt}/file_jobs/{fj}/{uj}"),
            ranged("x", "Content-Range: bytes 0-18446744073709551615/*"),
            400,
            "invalid",
        ),
        // The job is 100 bytes: a Content-Range of another total is some other upload.
        (
            format!("/q/{wt}/file_jobs/{fj}/{uj}"),
            ranged("x", "Content-Range: bytes 0-0/99"),
            400,
            "invalid",
        ),
        (
            format!("/q/{wt}/file_jobs/{fj}/{uj}"),
            ranged("xy", "Content-Range: bytes 0-0/100"),
            400,
            "invalid",
        ),
        // A chunked body (no Content-Length) longer than its Content-Range: refused, none kept.
        (
            format!("/q/{wt}/file_jobs/{fj}/{uj}"),
            vec![
                "-X",
                "POST",
                "--data-binary",
                "0123456789abcdefghij",
                "-H",
                "Transfer-Encoding: chunked",
                "-H",
                "Content-Range: bytes 0-9/100",
            ],
            413,
            "too_large",
        ),
        (format!("/q/{wt}"), vec!["-X", "POST"], 409, "incomplete"),
        (format!("{status_path}?limit=-1"), vec![], 400, "invalid"),
        (format!("{status_path}?start=1.5"), vec![], 400, "invalid"),
        (format!("{status_path}?start="), vec![], 400, "invalid"),
    ];
    for (path, args, status, kind) in &cases {
        let r = curl(&s.url(path), args);
        assert_eq!(
            r.status,
            *status,
            "{path} {args:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(r.kind(), *kind, "{path} {args:?}");
        assert!(!r.json()["errors"][0]["reason"].as_str().unwrap().is_empty());
        if *status == 401 {
            assert!(r.header("www-authenticate").is_some());
        }
        // Nothing changed: still one files job, and nothing received.
        let st = call(&s, "GET", &status_path, None, 200);
        assert_eq!(st["files"][0]["skip"], 0, "after {path}");
        assert_eq!(
            call(&s, "GET", &format!("/q/{wt}/file_jobs"), None, 200)
                .as_array()
                .unwrap()
                .len(),
            1,
            "after {path}"
        );
    }

    // Page bounds past `u64` are the largest: a page past the end, a page of at most 1000.
    let huge = "99999999999999999999999";
    let past = call(&s, "GET", &format!("{status_path}?start={huge}"), None, 200);
    assert_eq!(
        (past["files"].as_array().unwrap().len(), &past["next"]),
        (0, &json!(-1))
    );
    let all = call(&s, "GET", &format!("{status_path}?limit={huge}"), None, 200);
    assert_eq!(all["files"].as_array().unwrap().len(), 1, "{all}");
    let reason = curl(&s.url(&format!("{status_path}?limit=-1")), &[]).json()["errors"][0]
        ["reason"]
        .to_string();
    assert!(reason.contains("limit must be a whole number"), "{reason}");

    // Finish the upload; then data to the completed job is 410 and a second finalize is 404.
    let bytes = vec![7u8; 100];
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &bytes).unwrap();
    let at = format!("@{}", f.path().display());
    let r = curl(
        &s.url(&format!("/q/{wt}/file_jobs/{fj}/{uj}")),
        &["-X", "POST", "--data-binary", &at],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["complete"], true);
    let again = curl(
        &s.url(&format!("/q/{wt}/file_jobs/{fj}/{uj}")),
        &["-X", "POST", "--data-binary", "x"],
    );
    assert_eq!((again.status, again.kind().as_str()), (410, "gone"));
    let hq = call(&s, "POST", &format!("/q/{wt}"), None, 200)["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let second = curl(&s.url(&format!("/q/{wt}")), &["-X", "POST"]);
    assert_eq!((second.status, second.kind().as_str()), (404, "not_found"));
    assert_eq!(
        curl(&s.url(&format!("/q/{hq}/files/a.bin")), &[]).body,
        bytes
    );
    // The long form with the wrong library is not found, the right one works.
    let other = call(&s, "POST", "/qlibs", Some(r#"{"name":"other"}"#), 201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        curl(&s.url(&format!("/qlibs/{other}/q/{hq}/files/a.bin")), &[]).status,
        404
    );
    assert_eq!(
        curl(&s.url(&format!("/qlibs/{lib}/q/{hq}/files/a.bin")), &[]).status,
        200
    );
    assert_eq!(
        curl(&s.url(&format!("/qlibs/{other}/qid/{obj}")), &[]).status,
        404
    );
    assert_eq!(
        curl(&s.url(&format!("/qlibs/{lib}/qid/{obj}")), &[]).status,
        200
    );
}

/// Repeated reads are served from opened files the server remembers; a finalize or a delete
/// must show at once: an object id reads its new head, a deleted version is 404.
/// `If-Match` / `If-None-Match` on finalize name the object's newest version: a draft opened on
/// an older head is refused with a JSON 412 and stays as it was; without them the last
/// finalize wins.
#[test]
fn finalize_preconditions_refuse_a_stale_draft_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, obj, first) = new_object(&s);
    let finalize = |wt: &str, hdr: &str| {
        let mut args = vec!["-X", "POST"];
        if !hdr.is_empty() {
            args.extend(["-H", hdr]);
        }
        curl(&s.url(&format!("/q/{wt}")), &args)
    };
    let open = || open_draft(&s, &obj);
    let versions = || {
        call(&s, "GET", &format!("/qid/{obj}"), None, 200)["versions"]
            .as_array()
            .unwrap()
            .len()
    };
    let refused = |wt: &str, hdr: &str| {
        let before = versions();
        let r = finalize(wt, hdr);
        assert_eq!(r.status, 412, "{hdr}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.kind(), "precondition_failed", "{hdr}");
        // Nothing changed: no new version, and the draft is still there to finalize.
        assert_eq!(versions(), before, "{hdr}");
        call(&s, "GET", &format!("/q/{wt}"), None, 200);
    };
    let hash = |r: common::Reply| {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["hash"].as_str().unwrap().to_string()
    };

    refused(&first, "If-Match: *");
    let v1 = hash(finalize(&first, "If-None-Match: *"));
    let (a, b) = (open(), open());
    // GET /q/{object} gives the newest version as its ETag, ready for If-Match.
    let head = curl(&s.url(&format!("/q/{obj}")), &[]);
    assert_eq!(head.header("etag"), Some(format!("\"{v1}\"").as_str()));
    let v2 = hash(finalize(
        &a,
        &format!("If-Match: {}", head.header("etag").unwrap()),
    ));
    refused(&b, &format!("If-Match: \"{v1}\""));
    refused(&b, "If-None-Match: *");
    refused(&b, &format!("If-None-Match: \"{v2}\""));
    refused(&b, &format!("If-Match: W/\"{v2}\""));
    refused(&b, "If-Match: \"not a version\"");
    let v3 = hash(finalize(&b, &format!("If-Match: \"{v1}\", \"{v2}\"")));
    // A bare version hash is taken too; without a condition the last finalize wins.
    let (c, d) = (open(), open());
    hash(finalize(&c, &format!("If-Match: {v3}")));
    hash(finalize(&d, ""));
    assert_eq!(versions(), 5);
}

/// Opens a new draft of `obj`; its write token.
fn open_draft(s: &Server, obj: &str) -> String {
    call(s, "POST", &format!("/qid/{obj}"), None, 200)["write_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `GET /q/{id}` and `DELETE /q/{id}` evaluate `If-Match` / `If-None-Match` against the
/// entity-tag `GET` gives (QA 32: a conditional DELETE of an object deleted every version
/// although a newer one had been published). A refused delete changes nothing.
#[test]
fn info_and_deletes_honour_their_preconditions() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, obj, first) = new_object(&s);
    let hash = |wt: &str| {
        call(&s, "POST", &format!("/q/{wt}"), None, 200)["hash"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let open = || open_draft(&s, &obj);
    let v1 = hash(&first);
    let v2 = hash(&open());
    let with = |method: &str, id: &str, hdr: &str| {
        curl(&s.url(&format!("/q/{id}")), &["-X", method, "-H", hdr])
    };
    let r = with("GET", &obj, &format!("If-None-Match: \"{v2}\""));
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some(format!("\"{v2}\"").as_str()));
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "as the 200 says"
    );
    assert_eq!(
        with("GET", &obj, &format!("If-None-Match: \"{v1}\"")).status,
        200
    );
    let r = with("GET", &obj, &format!("If-Match: \"{v1}\""));
    assert_eq!((r.status, r.kind()), (412, "precondition_failed".into()));
    assert_eq!(
        with("GET", &obj, &format!("If-Match: \"{v2}\"")).status,
        200
    );

    let refused = |id: &str, hdr: &str| {
        let r = with("DELETE", id, hdr);
        assert_eq!(
            (r.status, r.kind()),
            (412, "precondition_failed".into()),
            "{id} {hdr}"
        );
        call(&s, "GET", &format!("/q/{id}"), None, 200);
    };
    refused(&obj, &format!("If-Match: \"{v1}\""));
    refused(&obj, "If-None-Match: *");
    refused(&v1, &format!("If-Match: \"{v2}\""));
    refused(&v1, &format!("If-None-Match: \"{v1}\""));
    let draft = open();
    // A metadata write takes them as conditions on the draft, which has no entity-tag.
    let meta = s.url(&format!("/q/{draft}/meta/k"));
    for (method, hdr) in [
        ("PUT", "If-Match: \"x\""),
        ("POST", "If-None-Match: *"),
        ("DELETE", "If-Match: \"x\""),
    ] {
        let r = curl(&meta, &["-X", method, "-H", hdr, "--data-binary", "1"]);
        assert_eq!(
            (r.status, r.kind()),
            (412, "precondition_failed".into()),
            "{method} {hdr}"
        );
    }
    assert_eq!(curl(&meta, &[]).status, 404, "nothing was written");
    let r = curl(
        &meta,
        &["-X", "PUT", "-H", "If-Match: *", "--data-binary", "1"],
    );
    assert_eq!(r.status, 200);
    refused(&draft, "If-Match: \"anything\"");
    refused(&draft, "If-None-Match: *");
    assert_eq!(with("DELETE", &draft, "If-Match: *").status, 200);
    // A draft that is gone is 404 first, whatever the conditions.
    let r = curl(
        &meta,
        &["-X", "PUT", "-H", "If-Match: \"x\"", "--data-binary", "1"],
    );
    assert_eq!((r.status, r.kind()), (404, "not_found".into()));
    assert_eq!(
        with("DELETE", &v1, &format!("If-Match: \"{v1}\"")).status,
        200
    );
    assert_eq!(
        with("DELETE", &obj, &format!("If-Match: \"{v2}\"")).status,
        200
    );
    assert_eq!(curl(&s.url(&format!("/q/{obj}")), &[]).status, 404);
}

/// A finalize sent with an `Idempotency-Key` can be retried after its reply was lost: the same
/// key gets the same reply, once the draft is gone too. Without the key, with another, or from
/// another library's token it stays what a second finalize is (404, 403), and a malformed key
/// is 400 with the draft left open.
#[test]
fn a_finalize_retried_with_its_idempotency_key_gets_the_same_version() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (lib, obj, wt) = new_object(&s);
    let finalize = |hdrs: &[&str]| {
        let mut args = vec!["-X", "POST"];
        for h in hdrs {
            args.extend(["-H", h]);
        }
        curl(&s.url(&format!("/q/{wt}")), &args)
    };
    let twice = finalize(&["Idempotency-Key: a", "Idempotency-Key: b"]);
    assert_eq!(
        twice.status,
        400,
        "{}",
        String::from_utf8_lossy(&twice.body)
    );
    for bad in [
        "Idempotency-Key: a b",
        &format!("Idempotency-Key: {}", "k".repeat(256)),
    ] {
        let r = finalize(&[bad]);
        assert_eq!(r.status, 400, "{bad}: {}", String::from_utf8_lossy(&r.body));
        call(&s, "GET", &format!("/q/{wt}"), None, 200);
    }
    let key = "Idempotency-Key: 6f1c2a";
    let first = finalize(&[key, "If-None-Match: *"]);
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    // The retry repeats the request, precondition included, and gets the first reply.
    let again = finalize(&[key, "If-None-Match: *"]);
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.json(), first.json());
    let long = curl(
        &s.url(&format!("/qlibs/{lib}/q/{wt}")),
        &["-X", "POST", "-H", key],
    );
    assert_eq!(long.json(), first.json(), "the long form too");
    for other in [&[][..], &["Idempotency-Key: 6f1c2b"]] {
        let r = finalize(other);
        assert_eq!(
            r.status,
            404,
            "{other:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.kind(), "not_found");
    }
    let versions = call(&s, "GET", &format!("/qid/{obj}"), None, 200);
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);
    // Another library's token is refused, not answered with this library's version.
    let (other_lib, _, _) = new_object(&s);
    let token = call(&s, "POST", &format!("/qlibs/{other_lib}/tokens"), None, 201)["token"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = format!("Authorization: Bearer {token}");
    let r = curl(
        &s.url(&format!("/q/{wt}")),
        &["-X", "POST", "-H", key, "-H", &auth],
    );
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    // Once the version is deleted, the key answers nothing.
    let hash = first.json()["hash"].as_str().unwrap().to_string();
    call(&s, "DELETE", &format!("/q/{hash}"), None, 200);
    assert_eq!(finalize(&[key]).status, 404);
}

#[test]
fn reads_follow_each_finalize_and_delete_at_once() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::write(&old, common::pattern(1, 300_000)).unwrap();
    std::fs::write(&new, common::pattern(2, 200_000)).unwrap();
    let (lib, obj, wt) = new_object(&s);
    let (other_lib, _, _) = new_object(&s);
    let hq1 = common::upload_files(&s, &wt, &[("a.bin", &old)]);
    // Both path forms; the library form's check of the library is remembered too.
    let read = |id: &str| {
        let short = curl(&s.url(&format!("/q/{id}/files/a.bin")), &[]);
        let long = curl(&s.url(&format!("/qlibs/{lib}/q/{id}/files/a.bin")), &[]);
        assert_eq!(
            short.status, long.status,
            "{id}: the two path forms disagree"
        );
        assert!(
            short.body == long.body || short.status != 200,
            "{id}: different bytes"
        );
        let elsewhere = curl(
            &s.url(&format!("/qlibs/{other_lib}/q/{id}/files/a.bin")),
            &[],
        );
        assert_eq!(elsewhere.status, 404, "{id} read through another library");
        short
    };
    let (old_bytes, new_bytes) = (std::fs::read(&old).unwrap(), std::fs::read(&new).unwrap());
    // Which of the two files `id` reads as a.bin.
    let body = |id: &str| {
        let r = read(id);
        assert_eq!(r.status, 200, "{id}");
        match r.body {
            b if b == old_bytes => "old",
            b if b == new_bytes => "new",
            _ => "other bytes",
        }
    };
    // Twice each, so the second read is the remembered one.
    for _ in 0..2 {
        assert_eq!(body(&obj), "old");
        assert_eq!(body(&hq1), "old");
    }
    let wt2 = call(&s, "POST", &format!("/qid/{obj}"), None, 200)["write_token"]
        .as_str()
        .unwrap()
        .to_string();
    let hq2 = common::upload_files(&s, &wt2, &[("a.bin", &new)]);
    for _ in 0..2 {
        assert_eq!(body(&obj), "new");
        assert_eq!(body(&hq2), "new");
        assert_eq!(body(&hq1), "old");
    }
    // Deleting the head version: it is gone, and the object reads the one before.
    call(&s, "DELETE", &format!("/q/{hq2}"), None, 200);
    for _ in 0..2 {
        assert_eq!(read(&hq2).status, 404);
        assert_eq!(body(&obj), "old");
    }
    // Deleting the object: nothing of it reads any more.
    call(&s, "DELETE", &format!("/q/{obj}"), None, 200);
    for id in [&obj, &hq1] {
        let r = read(id);
        assert_eq!(r.status, 404, "{id}");
        assert_eq!(r.kind(), "not_found", "{id}");
    }
}

/// A browser's preflight for a `PUT` to `url` from a page of `origin`, without a token.
fn preflight_put(url: &str, origin: &str, request_headers: Option<&str>) -> common::Reply {
    let origin = format!("Origin: {origin}");
    let mut args = vec![
        "--no-token",
        "-X",
        "OPTIONS",
        "-H",
        &origin,
        "-H",
        "Access-Control-Request-Method: PUT",
    ];
    let asked = request_headers.map(|h| format!("Access-Control-Request-Headers: {h}"));
    if let Some(h) = &asked {
        args.extend(["-H", h.as_str()]);
    }
    curl(url, &args)
}

/// Browsers: a preflight needs no token and allows what the page asks for; replies (errors
/// too) carry `Access-Control-Allow-Origin` and expose the Range headers; a configured list
/// admits only its origins, and an empty one turns cross-origin access off.
#[test]
fn cross_origin_pages_may_call_the_api_as_configured() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, _, wt) = new_object(&s);
    let page = ["-H", "Origin: http://app.example:3000"];
    let pre = preflight_put(
        &s.url(&format!("/q/{wt}/meta/title")),
        "http://app.example:3000",
        Some("authorization,content-type,x-custom"),
    );
    assert_eq!(pre.status, 200, "preflight without a token");
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    assert!(pre
        .header("access-control-allow-methods")
        .unwrap()
        .contains("PUT"));
    assert_eq!(
        pre.header("access-control-allow-headers"),
        Some("authorization,content-type,x-custom")
    );
    assert_eq!(pre.header("access-control-max-age"), Some("3600"));
    assert!(pre.header("access-control-allow-credentials").is_none());
    // Nothing was written by the preflight.
    assert_eq!(
        curl(&s.url(&format!("/q/{wt}/meta/title")), &[]).status,
        404
    );

    // The request itself, then an error: both readable by the page.
    let put = curl(
        &s.url(&format!("/q/{wt}/meta/title")),
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "-d",
            "\"t\"",
            page[0],
            page[1],
        ],
    );
    assert_eq!(put.status, 200);
    assert_eq!(put.header("access-control-allow-origin"), Some("*"));
    let exposed = put
        .header("access-control-expose-headers")
        .unwrap()
        .to_string();
    for h in ["content-range", "etag", "accept-ranges", "www-authenticate"] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
    let denied = curl(
        &s.url(&format!("/q/{wt}")),
        &["--no-token", page[0], page[1]],
    );
    assert_eq!(
        (denied.status, denied.kind().as_str()),
        (401, "unauthorized")
    );
    assert_eq!(denied.header("access-control-allow-origin"), Some("*"));
    drop(s);

    // Only the listed origin; then none at all.
    let s = Server::start_with(
        data.path(),
        common::free_port(),
        &[],
        &[(
            "CAIRN_CORS_ORIGINS",
            "https://app.example, http://127.0.0.1:3000",
        )],
    );
    let origin_of = |origin: &str| {
        let r = curl(
            &s.url(&format!("/q/{wt}/meta/title")),
            &["-H", &format!("Origin: {origin}")],
        );
        assert_eq!(r.status, 200);
        r.header("access-control-allow-origin").map(String::from)
    };
    assert_eq!(
        origin_of("https://app.example").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        origin_of("http://127.0.0.1:3000").as_deref(),
        Some("http://127.0.0.1:3000")
    );
    assert_eq!(origin_of("https://other.example"), None);
    let preflight = |origin: &str| {
        let r = preflight_put(&s.url(&format!("/q/{wt}/meta/title")), origin, None);
        assert_eq!(r.status, 200);
        r.header("access-control-allow-origin").map(String::from)
    };
    assert_eq!(
        preflight("https://app.example").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        preflight("https://other.example"),
        None,
        "the browser refuses the call"
    );
    drop(s);
    let s = Server::start_with(
        data.path(),
        common::free_port(),
        &[],
        &[("CAIRN_CORS_ORIGINS", "")],
    );
    let r = curl(
        &s.url(&format!("/q/{wt}/meta/title")),
        &["-H", "Origin: https://app.example"],
    );
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (200, None)
    );
    let pre = preflight_put(
        &s.url(&format!("/q/{wt}/meta/title")),
        "https://app.example",
        None,
    );
    // Auth answers it like any request without a token: a browser reads that as refused.
    assert_eq!(pre.status, 401, "no preflight answer when access is off");
    assert!(pre.header("access-control-allow-origin").is_none());
    drop(s);
    // A bad origin in the configuration stops the server from starting, with the reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "serve",
            "--data",
            data.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("CAIRN_CORS_ORIGINS", "https://app.example/")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an origin"));
}

/// `GET /qlibs/{lib}` describes a library; `DELETE` removes it only once it is empty (409
/// and nothing changed before), only with the admin token, and revokes its tokens.
#[test]
fn libraries_are_deleted_only_when_empty_and_take_their_tokens() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (lib, iq, _) = new_object(&s);
    let (other, _, _) = new_object(&s);
    let token = call(&s, "POST", &format!("/qlibs/{lib}/tokens"), None, 201)["token"]
        .as_str()
        .unwrap()
        .to_string();
    let bearer = format!("Authorization: Bearer {token}");
    let as_lib = |method: &str, path: &str| curl(&s.url(path), &["-X", method, "-H", &bearer]);

    let info = call(&s, "GET", &format!("/qlibs/{lib}"), None, 200);
    assert_eq!(
        (&info["id"], &info["name"], &info["objects"]),
        (&json!(lib), &json!("t"), &json!(1))
    );
    assert!(info["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(as_lib("GET", &format!("/qlibs/{lib}")).status, 200);
    assert_eq!(
        as_lib("GET", &format!("/qlibs/{other}")).kind(),
        "forbidden"
    );
    let r = as_lib("DELETE", &format!("/qlibs/{lib}"));
    assert_eq!(
        (r.status, r.kind().as_str()),
        (403, "forbidden"),
        "only the admin deletes libraries"
    );

    // Not empty: refused, and nothing changed.
    let r = curl(&s.url(&format!("/qlibs/{lib}")), &["-X", "DELETE"]);
    assert_eq!((r.status, r.kind().as_str()), (409, "conflict"));
    assert!(r.json()["errors"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("still holds objects"));
    assert_eq!(
        call(&s, "GET", &format!("/qlibs/{lib}"), None, 200)["objects"],
        1
    );
    assert_eq!(
        as_lib("GET", &format!("/qlibs/{lib}/q")).status,
        200,
        "its token still works"
    );

    // Empty: deleted, with its token; the other library is untouched.
    call(&s, "DELETE", &format!("/q/{iq}"), None, 200);
    let gone = call(&s, "DELETE", &format!("/qlibs/{lib}"), None, 200);
    assert_eq!(gone, json!({"id": lib, "tokens_revoked": 1}));
    call(&s, "GET", &format!("/qlibs/{lib}"), None, 404);
    call(&s, "POST", &format!("/qlibs/{lib}/q"), None, 404);
    call(&s, "POST", &format!("/qlibs/{lib}/tokens"), None, 404);
    call(&s, "DELETE", &format!("/qlibs/{lib}"), None, 404);
    assert_eq!(
        as_lib("GET", &format!("/qlibs/{lib}/q")).status,
        401,
        "its token is revoked"
    );
    let libs = call(&s, "GET", "/qlibs", None, 200);
    let ids: Vec<&str> = libs["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![other.as_str()]);
    let r = curl(&s.url("/qlibs/ilib_not_an_id"), &["-X", "DELETE"]);
    assert_eq!((r.status, r.kind().as_str()), (400, "invalid"));
    drop(s);

    // All of it was durable.
    let s = Server::start(data.path(), common::free_port());
    call(&s, "GET", &format!("/qlibs/{lib}"), None, 404);
    assert_eq!(
        curl(&s.url(&format!("/qlibs/{lib}/q")), &["-H", &bearer]).status,
        401
    );
    assert_eq!(
        call(&s, "GET", &format!("/qlibs/{other}"), None, 200)["objects"],
        1
    );
}

/// Every reply, errors included, carries `X-Request-Id`: the client's own when it is a plain
/// token, a fresh one otherwise; and the server's log line for the request names it.
#[test]
fn every_reply_names_its_request_as_the_log_does() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let mine = curl(&s.url("/qlibs"), &["-H", "X-Request-Id: job-42.retry:1"]);
    assert_eq!(
        (mine.status, mine.header("x-request-id")),
        (200, Some("job-42.retry:1"))
    );
    let refused = curl(
        &s.url("/qlibs/ilib_bad"),
        &["--no-token", "-H", "X-Request-Id: has space"],
    );
    assert_eq!(refused.status, 401);
    let fresh = refused.header("x-request-id").unwrap().to_string();
    assert!(
        fresh.len() == 16 && fresh.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fresh}"
    );
    let other = curl(&s.url("/config"), &["--no-token"]);
    assert_ne!(
        other.header("x-request-id"),
        Some(fresh.as_str()),
        "ids differ"
    );
    let long = "a".repeat(65);
    let r = curl(&s.url("/config"), &["-H", &format!("X-Request-Id: {long}")]);
    assert_ne!(
        r.header("x-request-id"),
        Some(long.as_str()),
        "over 64 characters is replaced"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = s.log_lines();
    let body_len = format!("bytes={} ", mine.body.len());
    assert!(
        log.iter()
            .any(|l| l.contains("id=job-42.retry:1") && l.contains(&body_len)),
        "a JSON reply's size is logged: {log:#?}"
    );
    for (id, status) in [
        ("job-42.retry:1", "status=200"),
        (fresh.as_str(), "status=401"),
    ] {
        assert!(
            log.iter()
                .any(|l| l.contains(&format!("id={id}")) && l.contains(status)),
            "{id} in the log: {log:#?}"
        );
    }
}

#[test]
fn config_needs_no_token_and_lists_the_api_url() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let r = curl(&s.url("/config"), &["--no-token"]);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["network"]["services"]["fabric_api"][0], s.url("/"));
    assert!(v["qspace"]["id"].as_str().unwrap().starts_with("ispc"));
    let with_host = |host: &str| curl(&s.url("/config"), &["--no-token", "-H", host]);
    let api = |r: &common::Reply| r.json()["network"]["services"]["fabric_api"][0].clone();
    assert_eq!(api(&with_host("Host: [::1]:9")), "http://[::1]:9/");
    assert_eq!(
        api(&with_host("Host: cairn.example")),
        "http://cairn.example/"
    );
    // No Host, or one that is not host[:port], is refused, never advertised (QA26 A3, A4: the
    // default address, or `http://user@evil.example/`, came back).
    for host in [
        "Host: h:abc",
        "Host: h:+80",
        "Host: h:99999",
        "Host: h:",
        "Host: a,b",
        "Host: [::1",
        "Host:",
        "Host: x/y?z#",
        "Host: user@evil.example",
        "Host: a\"b",
        "Host: ",
    ] {
        let r = with_host(host);
        assert_eq!((r.status, r.kind()), (400, "invalid".into()), "{host}");
    }
}

/// Once stopping, the server refuses new connections at once, while a request in flight is
/// given its grace period (QA: the listener stayed open through the grace, and new clients
/// hung in its backlog for up to 30 s before a reset).
#[test]
fn a_stopping_server_refuses_new_connections_at_once() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut s = Server::start(data.path(), port);
    // In flight: a JSON body that has not all arrived.
    let mut busy = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        busy,
        "POST /qlibs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\n\r\n{{\"name\":",
        common::TOKEN
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = s.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The signal is handled within moments (the log says so); from then on a new client is
    // refused at once, not left waiting, while the process still runs its grace period.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.log_lines().iter().any(|l| l.contains("shutting down")) {
        assert!(Instant::now() < deadline, "{:?}", s.log_lines());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "still in its grace period"
    );
    let t = Instant::now();
    let refused = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    );
    assert_eq!(
        refused.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "a new client is refused"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(busy);
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigterm_stops_the_server_cleanly_and_data_survives() {
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut s = Server::start(data.path(), port);
    let (_, _, wt) = new_object(&s);
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), b"survives a restart").unwrap();
    let hq = common::upload_files(&s, &wt, &[("x.txt", f.path())]);
    let pid = s.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = s.child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        s.log_lines().iter().any(|l| l.contains("cairn stopped")),
        "{:?}",
        s.log_lines()
    );
    drop(s);
    // A new port: the old one may already serve another test's server.
    let s = Server::start(data.path(), common::free_port());
    assert_eq!(
        curl(&s.url(&format!("/q/{hq}/files/x.txt")), &[]).body,
        b"survives a restart"
    );
}

#[test]
fn oversized_json_bodies_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_config(data.path(), "max_json_body = 4096\n");
    let (_, _, wt) = new_object(&s);
    let ops: Vec<_> = (0..200)
        .map(|i| json!({"path": format!("f{i}"), "size": 1}))
        .collect();
    let body = json!({"ops": ops}).to_string();
    assert!(body.len() > 4096);
    let r = curl(
        &s.url(&format!("/q/{wt}/file_jobs")),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ],
    );
    assert_eq!((r.status, r.kind().as_str()), (413, "too_large"));
    // Short texts of many values weigh their values (64 bytes each): 413 past the limit, for
    // ops and metadata alike, and nothing is stored.
    let many = format!(r#"{{"ops":[{}]}}"#, vec!["{}"; 70].join(","));
    let zeros = format!(r#"{{"a":[{}]}}"#, vec!["0"; 70].join(","));
    assert!(many.len() < 4096 && zeros.len() < 4096);
    for (method, path, body) in [("POST", "file_jobs", &many), ("PUT", "meta", &zeros)] {
        let r = curl(
            &s.url(&format!("/q/{wt}/{path}")),
            &[
                "-X",
                method,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ],
        );
        assert_eq!((r.status, r.kind().as_str()), (413, "too_large"), "{path}");
        let reason = r.json()["errors"][0]["reason"].to_string();
        assert!(reason.contains("JSON values"), "{reason}");
    }
    assert_eq!(
        call(&s, "GET", &format!("/q/{wt}/meta"), None, 200),
        json!({})
    );
    // A client that waits for `100 Continue` hears 413 instead, before sending any of it.
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        write!(
            c,
            "POST /q/{wt}/file_jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 70000000\r\nExpect: 100-continue\r\n\r\n",
            common::TOKEN
        )
        .unwrap();
        let mut first = [0u8; 12];
        c.read_exact(&mut first).unwrap();
        assert_eq!(
            &first,
            b"HTTP/1.1 413",
            "{}",
            String::from_utf8_lossy(&first)
        );
    }
    assert_eq!(
        call(&s, "GET", &format!("/q/{wt}/file_jobs"), None, 200)
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn serve_help_and_typos_never_start_a_server() {
    let cwd = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .current_dir(cwd.path())
            .output()
            .unwrap()
    };
    let help = run(&["serve", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("cairn serve"));
    let typo = run(&["serve", "--dta", "x"]);
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("--dta"));
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "no data dir was created"
    );
}

/// Sends `request` (a whole HTTP/1.x request) on a new connection and reads the reply until
/// the server closes it: (status, JSON error kind or "").
fn raw_exchange(s: &Server, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    sock.write_all(request).unwrap();
    let mut reply = Vec::new();
    let _ = sock.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let kind = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
        .and_then(|v| v["errors"][0]["kind"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, kind)
}

/// Requests HTTP/1.1 says not to act on, or that could mean two things to Cairn and a proxy in
/// front of it (QA 32), are refused with a JSON error and change nothing: a transfer coding
/// other than chunked (the bytes would be stored still compressed), a missing, repeated or
/// malformed `Host`, two `Content-Range` fields on an upload, and a `%` that escapes nothing.
#[test]
fn requests_that_could_mean_two_things_are_refused_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, _, wt) = new_object(&s);
    let (fj, uj) = one_file_job(&s, &wt, "f.bin", 100);
    let libraries = || {
        call(&s, "GET", "/qlibs", None, 200)["contents"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let before = libraries();
    let auth = format!("Authorization: Bearer {}", common::TOKEN);
    let gzip_chunked = format!(
        "POST /qlibs HTTP/1.1\r\nHost: x\r\n{auth}\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    );
    assert_eq!(
        raw_exchange(&s, gzip_chunked.as_bytes()),
        (501, "not_implemented".into())
    );
    for hosts in [
        "",
        "Host: a.example\r\nHost: b.example\r\n",
        "Host: a b/c@\"\r\n",
        "Host: \r\n",
        "Host: [zz]\r\n",
        "Host: a:65536\r\n",
        "Host: a:-1\r\n",
    ] {
        let req = format!("GET /qlibs HTTP/1.1\r\n{hosts}{auth}\r\nConnection: close\r\n\r\n");
        assert_eq!(
            raw_exchange(&s, req.as_bytes()),
            (400, "invalid".into()),
            "{hosts:?}"
        );
    }
    // What HTTP/1.1 allows: an IPv6 literal, the absolute form.
    let port = s.port;
    for (target, host) in [
        ("/qlibs".to_string(), "Host: [::1]:8008\r\n"),
        (
            format!("http://127.0.0.1:{port}/qlibs"),
            "Host: 127.0.0.1\r\n",
        ),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\n{host}{auth}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_exchange(&s, req.as_bytes()).0, 200, "{target} {host:?}");
    }
    // HTTP/1.0 has no Host requirement.
    let old = format!("GET /qlibs HTTP/1.0\r\n{auth}\r\n\r\n");
    assert_eq!(raw_exchange(&s, old.as_bytes()).0, 200);
    assert_eq!(libraries(), before, "no library was made");

    let two_ranges = format!(
        "POST /q/{wt}/file_jobs/{fj}/{uj} HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Range: bytes 50-59/100\r\nContent-Range: bytes 0-9/100\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789"
    );
    assert_eq!(
        raw_exchange(&s, two_ranges.as_bytes()),
        (400, "invalid".into())
    );
    let st = call(
        &s,
        "GET",
        &format!("/q/{wt}/file_jobs/{fj}/uploads/{uj}"),
        None,
        200,
    );
    assert_eq!(st["files"][0]["skip"], 0, "nothing was taken: {st}");

    for path in [
        "/q/{wt}/files/t/%zz",
        "/q/{wt}/files/a%.txt",
        "/q/{wt}/files/a%2",
    ] {
        let path = path.replace("{wt}", &wt);
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\nConnection: close\r\n\r\n");
        assert_eq!(
            raw_exchange(&s, req.as_bytes()),
            (400, "invalid".into()),
            "{path}"
        );
    }
    // JSON replies, errors included (they may quote the path), are neither sniffed nor cached.
    for path in ["/qlibs".to_string(), format!("/q/{wt}/files/%3Cscript%3E")] {
        let r = curl(&s.url(&path), &[]);
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
    }
}

/// The part routes over HTTP: a version's parts in walk order, each one's info and bytes (with
/// Range), the file's bytes being its parts' in order; a part of other content is 404. Asked
/// again (the parts are then remembered by the tree's root) the answers are the same.
#[test]
fn parts_are_listed_described_and_served() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_config(data.path(), "part_size = 65536\n");
    let (_, obj, wt) = new_object(&s);
    let bytes = common::pattern(61, 200_000);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    let v = common::upload_files(&s, &wt, &[("f.bin", file.path())]);
    let (_, _, other_wt) = new_object(&s);
    let other = common::upload_files(&s, &other_wt, &[("g.bin", file.path())]);
    for round in 0..2 {
        let parts = call(&s, "GET", &format!("/q/{v}/parts"), None, 200)["parts"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(parts.len(), 4, "round {round}: {parts:?}");
        let mut joined = Vec::new();
        for p in &parts {
            let h = p["hash"].as_str().unwrap();
            let info = call(&s, "GET", &format!("/q/{obj}/parts/{h}"), None, 200);
            assert_eq!(info["part"]["size"], p["size"]);
            assert_eq!(info["content"]["hash"], v.as_str());
            joined.extend(curl(&s.url(&format!("/q/{v}/data/{h}")), &[]).body);
        }
        assert!(joined == bytes, "round {round}: the parts make the file");
        let first = parts[0]["hash"].as_str().unwrap();
        let r = curl(
            &s.url(&format!("/q/{v}/data/{first}")),
            &["-H", "Range: bytes=10-19"],
        );
        assert_eq!(r.status, 206);
        assert!(r.body == bytes[10..20]);
    }
    // The other object stored the same bytes in the same parts; a made-up part is in neither.
    let (_, _, empty_wt) = new_object(&s);
    let empty = call(&s, "POST", &format!("/q/{empty_wt}"), None, 200)["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let parts = call(&s, "GET", &format!("/q/{other}/parts"), None, 200)["parts"].clone();
    let h = parts[0]["hash"].as_str().unwrap();
    let r = curl(&s.url(&format!("/q/{empty}/data/{h}")), &[]);
    assert_eq!((r.status, r.kind()), (404, "not_found".into()));
    let r = curl(&s.url(&format!("/q/{empty}/parts/{h}")), &[]);
    assert_eq!((r.status, r.kind()), (404, "not_found".into()));
}

/// A JSON body that keeps arriving, but a byte at a time, is cut off with a 408 once it falls
/// below 4 KiB/s on average after its first `idle_timeout_secs` (review 32: each byte within
/// the idle timeout kept the connection for as long as the client liked).
#[test]
fn a_json_body_trickling_in_is_cut_off() {
    use std::io::{Read, Write};
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_config(data.path(), "idle_timeout_secs = 1\n");
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        sock,
        "POST /qlibs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        common::TOKEN
    )
    .unwrap();
    let mut writer = sock.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(300));
            if writer.write_all(b" ").is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&reply).contains("}]}") {
        match sock.read(&mut buf) {
            Ok(n @ 1..) => reply.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("too slowly"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    drop(sock);
    trickle.join().unwrap();
}

/// Header values with bytes outside ASCII are read as RFC 9110 and api.md §10 say for values
/// that do not parse (QA 32: all were 400): a date is ignored, a Range is malformed (416), a
/// tag matches nothing, and such a token is "not valid" rather than missing.
#[test]
fn header_values_outside_ascii_are_taken_as_values_that_do_not_parse() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, _, wt) = new_object(&s);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"0123456789").unwrap();
    let v = common::upload_files(&s, &wt, &[("a.txt", file.path())]);
    let auth = format!("Authorization: Bearer {}", common::TOKEN);
    let get = |extra: &[u8]| {
        let head = format!(
            "GET /q/{v}/files/a.txt HTTP/1.1\r\nHost: x\r\n{auth}\r\nConnection: close\r\n"
        );
        raw_exchange(&s, &[head.as_bytes(), extra, b"\r\n"].concat())
    };
    let ok = (200, String::new());
    assert_eq!(
        get(b"If-Modified-Since: Tue, 24 Nov 2026 14:22:44 GMT\xa0\r\n"),
        ok
    );
    assert_eq!(get(b"If-Unmodified-Since: \xe9t\xe9\r\n"), ok);
    assert_eq!(get(b"If-None-Match: \"caf\xe9\"\r\n"), ok);
    assert_eq!(
        get(b"Range: bytes=0-1\r\nIf-Range: \"caf\xe9\"\r\n"),
        ok,
        "whole file"
    );
    assert_eq!(
        get(b"If-Match: \"caf\xe9\"\r\n"),
        (412, "precondition_failed".into())
    );
    assert_eq!(get(b"Range: bytes=0-\xe94\r\n"), (416, "bad_range".into()));
    let bad_token: &[u8] =
        b"GET /qlibs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer s\xe9cret\r\n\r\n";
    let r = raw_exchange(&s, bad_token);
    assert_eq!(r, (401, "unauthorized".into()));
}

/// An upload request to `(wt, fj, uj)` over a raw socket announcing `len` bytes, of which only
/// `first` are sent: the socket, for the test to go on with (or to leave stalled).
fn upload_begun(
    s: &Server,
    (wt, fj, uj): (&str, &str, &str),
    len: usize,
    first: &[u8],
) -> std::net::TcpStream {
    use std::io::Write;
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let head = format!(
        "POST /q/{wt}/file_jobs/{fj}/{uj} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {len}\r\n\r\n",
        common::TOKEN
    );
    sock.write_all(&[head.as_bytes(), first].concat()).unwrap();
    sock.flush().unwrap();
    sock
}

#[test]
fn a_stalled_upload_is_cut_off_and_keeps_what_arrived() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_config(data.path(), "idle_timeout_secs = 1\n");
    let (_, _, wt) = new_object(&s);
    let (fj, uj) = one_file_job(&s, &wt, "slow.bin", 100);
    // Send headers announcing 100 bytes, then 7 bytes, then nothing.
    let sock = upload_begun(&s, (&wt, &fj, &uj), 100, b"abcdefg");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let st = call(
        &s,
        "GET",
        &format!("/q/{wt}/file_jobs/{fj}/uploads/{uj}"),
        None,
        200,
    );
    assert_eq!(
        st["files"][0]["skip"], 7,
        "the 7 bytes that arrived were kept: {st}"
    );
    drop(sock);
}

/// One token's uploads hold at most `max_uploads_per_token` upload slots: another upload of the
/// same token waits `idle_timeout_secs` for one, then is 503 `busy` with nothing read, while
/// another token's upload goes through at once (the engine's upload permits are shared by all
/// tokens, so a token trickling uploads must not hold them all).
#[test]
fn a_token_s_uploads_are_capped_and_other_tokens_are_not_held_up() {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_config(
        data.path(),
        "idle_timeout_secs = 2\nmax_uploads_per_token = 1\n",
    );
    let (lib, _, wt) = new_object(&s);
    let (fj1, uj1) = one_file_job(&s, &wt, "trickle.bin", 100);
    let (fj2, uj2) = one_file_job(&s, &wt, "other.bin", 5);
    // The admin token's one slot, held by a body that trickles a byte every 300 ms.
    let mut sock = upload_begun(&s, (&wt, &fj1, &uj1), 100, b"a");
    let trickle = std::thread::spawn(move || {
        for _ in 0..24 {
            std::thread::sleep(std::time::Duration::from_millis(300));
            if sock.write_all(b"b").is_err() {
                break;
            }
        }
        sock
    });
    // Time for the trickling request to reach its slot (microseconds when the machine is idle).
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let url = s.url(&format!("/q/{wt}/file_jobs/{fj2}/{uj2}"));
    let started = std::time::Instant::now();
    let r = curl(&url, &["-X", "POST", "--data-binary", "12345"]);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!((r.status, r.kind().as_str()), (503, "busy"), "{body}");
    assert!(body.contains("max_uploads_per_token"), "{body}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(1900));
    assert_eq!(r.header("Retry-After"), Some("1"));
    let status = format!("/q/{wt}/file_jobs/{fj2}/uploads/{uj2}");
    assert_eq!(call(&s, "GET", &status, None, 200)["files"][0]["skip"], 0);
    // A library token is not held up by the admin token's uploads.
    let token = call(&s, "POST", &format!("/qlibs/{lib}/tokens"), None, 201)["token"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = format!("Authorization: Bearer {token}");
    let started = std::time::Instant::now();
    let r = curl(&url, &["-X", "POST", "--data-binary", "12345", "-H", &auth]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));
    drop(trickle.join().unwrap());
}

/// A client that sends a whole upload body and closes its connection without reading the reply
/// still has it kept (hyper used to drop the request when it saw the close, before the commit,
/// in about half of such tries for small bodies); one that half-closes after its body gets its
/// reply.
#[test]
fn a_whole_body_is_kept_when_the_client_closes_before_the_reply() {
    use std::io::{Read, Write};
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, _, wt) = new_object(&s);
    let send = |n: usize, half_close: bool| {
        let (fj, uj) = one_file_job(&s, &wt, &format!("f{n}-{half_close}"), n);
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        let head = format!(
            "POST /q/{wt}/file_jobs/{fj}/{uj} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {n}\r\n\r\n",
            common::TOKEN
        );
        sock.write_all(&[head.as_bytes(), &vec![b'x'; n]].concat())
            .unwrap();
        let mut reply = String::new();
        if half_close {
            sock.shutdown(std::net::Shutdown::Write).unwrap();
            sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .unwrap();
            sock.read_to_string(&mut reply).unwrap();
        }
        drop(sock);
        (format!("/q/{wt}/file_jobs/{fj}/uploads/{uj}"), reply)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for (i, n) in [10, 1000, 4000].iter().cycle().take(12).enumerate() {
        let (status, _) = send(*n, false);
        let kept = loop {
            let st = call(&s, "GET", &status, None, 200);
            if st["files"][0]["skip"] == *n || std::time::Instant::now() > deadline {
                break st;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(kept["files"][0]["skip"], *n, "try {i}: {kept}");
    }
    let (status, reply) = send(1000, true);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(
        call(&s, "GET", &status, None, 200)["files"][0]["skip"],
        1000
    );
}

/// A status read right after a client dropped an upload request counts the bytes that request
/// saved (it waits for the request to end), so a client resuming from it without
/// `Content-Range` sends the right bytes. Before, the first read said 0, and a resume from 0
/// put the file's start after the dropped request's 2 MB: a finalized version with wrong bytes.
#[test]
fn an_upload_status_right_after_a_dropped_request_counts_its_bytes() {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, _, wt) = new_object(&s);
    let n = 3_000_000usize;
    let body = common::pattern(7, n);
    let (fj, uj) = one_file_job(&s, &wt, "f", n);
    let url = format!("/q/{wt}/file_jobs/{fj}/{uj}");
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let head = format!(
        "POST {url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {n}\r\n\r\n",
        common::TOKEN
    );
    sock.write_all(&[head.as_bytes(), &body[..2_000_000]].concat())
        .unwrap();
    drop(sock);
    let st = call(
        &s,
        "GET",
        &format!("/q/{wt}/file_jobs/{fj}/uploads/{uj}"),
        None,
        200,
    );
    let skip = st["files"][0]["skip"].as_u64().unwrap() as usize;
    assert_eq!(skip, 2_000_000, "{st}");
    // Resumed as the official client does: the rest, from `skip`, without Content-Range.
    let rest = data.path().join("rest");
    std::fs::write(&rest, &body[skip..]).unwrap();
    let upload = format!("@{}", rest.display());
    let reply = curl(&s.url(&url), &["-X", "POST", "--data-binary", &upload]);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let hq = call(&s, "POST", &format!("/q/{wt}"), None, 200)["hash"].clone();
    let got = curl(&s.url(&format!("/q/{}/files/f", hq.as_str().unwrap())), &[]);
    assert_eq!(got.status, 200);
    assert!(
        got.body == body,
        "the finalized file has exactly the bytes sent"
    );
}

/// A JSON body that stops arriving is answered 408 after the idle time, and changes nothing.
#[test]
fn a_stalled_json_body_gets_408() {
    use std::io::{Read, Write};
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_config(data.path(), "idle_timeout_secs = 1\n");
    let before = call(&s, "GET", "/qlibs", None, 200);
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        sock,
        "POST /qlibs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\n\r\n{{\"name\":",
        common::TOKEN
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut reply = Vec::new();
    let _ = sock.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains(r#""kind":"invalid""#), "{reply}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(call(&s, "GET", "/qlibs", None, 200), before);
}

/// A server with `idle_timeout_secs = idle` holding a version with one file of `size` bytes,
/// and a connection that has asked for all of it: the server (and its data dir), the file's
/// bytes and the socket.
fn a_download_under_way(
    idle: u64,
    seed: u64,
    size: usize,
) -> (Server, tempfile::TempDir, Vec<u8>, std::net::TcpStream) {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_config(data.path(), &format!("idle_timeout_secs = {idle}\n"));
    let (_, _, wt) = new_object(&s);
    let src = tempfile::NamedTempFile::new().unwrap();
    let body = common::pattern(seed, size);
    std::fs::write(src.path(), &body).unwrap();
    let hash = common::upload_files(&s, &wt, &[("big.bin", src.path())]);
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        sock,
        "GET /q/{hash}/files/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        common::TOKEN
    )
    .unwrap();
    (s, data, body, sock)
}

/// A request's log line is written once its body has gone out: `bytes` is what was sent and
/// `ms` the time until the end; a client gone part-way is logged `cut_short=true` with the
/// `length` the body had; a HEAD and a 304 send no body (QA26 A1: the line was written with the
/// reply head, giving the declared length and the time to the first byte).
#[test]
fn the_request_log_gives_the_bytes_sent_and_the_time_to_the_end() {
    use std::io::{Read, Write};
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, _, wt) = new_object(&s);
    let size = 16usize << 20;
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), common::pattern(9, size)).unwrap();
    let hash = common::upload_files(&s, &wt, &[("big.bin", src.path())]);
    let path = format!("/q/{hash}/files/big.bin");
    let slow = curl(
        &s.url(&path),
        &["-H", "X-Request-Id: slow-1", "--limit-rate", "8M"],
    );
    assert_eq!((slow.status, slow.body.len()), (200, size));
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nX-Request-Id: cut-1\r\n\r\n",
        common::TOKEN
    )
    .unwrap();
    let mut some = [0u8; 1000];
    sock.read_exact(&mut some).unwrap();
    drop(sock);
    assert_eq!(
        curl(&s.url(&path), &["-I", "-H", "X-Request-Id: head-1"]).status,
        200
    );
    let etag = slow.header("etag").unwrap().to_string();
    let not_modified = [
        "-H",
        "X-Request-Id: nm-1",
        "-H",
        &format!("If-None-Match: {etag}"),
    ];
    assert_eq!(curl(&s.url(&path), &not_modified).status, 304);
    std::thread::sleep(std::time::Duration::from_millis(500));

    let log = s.log_lines();
    let line = |id: &str| {
        log.iter()
            .find(|l| l.contains(&format!("id={id}}}")) && l.contains(" request "))
            .unwrap_or_else(|| panic!("no line for {id}: {log:#?}"))
            .clone()
    };
    let field = |l: &str, name: &str| -> u64 {
        let v = l
            .split(&format!(" {name}="))
            .nth(1)
            .unwrap_or_else(|| panic!("{name} in {l}"));
        v.split(' ').next().unwrap().parse().unwrap()
    };
    let whole = line("slow-1");
    assert_eq!(field(&whole, "bytes"), size as u64, "{whole}");
    assert!(field(&whole, "ms") >= 500, "the time to the end: {whole}");
    assert!(!whole.contains("cut_short"), "{whole}");
    let cut = line("cut-1");
    assert!(cut.contains("cut_short=true"), "{cut}");
    assert_eq!(field(&cut, "length"), size as u64, "{cut}");
    assert!(field(&cut, "bytes") < size as u64, "{cut}");
    for id in ["head-1", "nm-1"] {
        let l = line(id);
        assert_eq!(field(&l, "bytes"), 0, "{l}");
        assert!(!l.contains("cut_short"), "{l}");
    }
}

/// An uploaded page opened in a browser from the API's origin, with a token in its URL as the
/// official client's `FileUrl` builds it, runs no script (QA26 A2: one could read the token):
/// a type that can run scripts is served with `Content-Security-Policy: sandbox`, and every
/// file with `nosniff`; media and plain files are not sandboxed. `sandbox_pages = false` (a
/// server hosting web apps) lets pages run.
#[test]
fn an_uploaded_page_runs_no_script_from_the_api_origin() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, _, wt) = new_object(&s);
    let page = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        page.path(),
        r#"<!doctype html><html><body><pre id="r">@@RESULT{"ran":false}RESULT@@</pre><script>
document.getElementById("r").textContent =
  '@@RESULT{"ran":true,"search":' + JSON.stringify(location.search) + '}RESULT@@';
</script></body></html>"#,
    )
    .unwrap();
    let files = [
        ("x.html", page.path()),
        ("z.svg", page.path()),
        ("a.mp4", page.path()),
        ("t.txt", page.path()),
    ];
    let v = common::upload_files(&s, &wt, &files);
    for (name, sandboxed) in [
        ("x.html", true),
        ("z.svg", true),
        ("a.mp4", false),
        ("t.txt", false),
    ] {
        for method in [&["-I"][..], &[]] {
            let r = curl(&s.url(&format!("/q/{v}/files/{name}")), method);
            assert_eq!(r.status, 200);
            assert_eq!(
                r.header("x-content-type-options"),
                Some("nosniff"),
                "{name}"
            );
            let csp = r.header("content-security-policy");
            let policy = Some("sandbox; default-src 'none'");
            assert_eq!(csp == policy, sandboxed, "{name}: {csp:?}");
            let referrer = r.header("referrer-policy");
            assert_eq!(referrer == Some("no-referrer"), sandboxed, "{name}");
        }
    }
    let work = tempfile::tempdir().unwrap();
    let url = s.url(&format!(
        "/q/{v}/files/x.html?authorization={}",
        common::TOKEN
    ));
    let seen = common::chromium_result(&url, work.path(), 5, &s);
    assert_eq!(seen, json!({"ran": false}), "the page's script ran");

    // Without a script, a page asking for its URL to be sent as the referrer of an image
    // elsewhere (here a listener on loopback) would hand over the token in the query: it loads
    // nothing, and no request carries the token.
    let beacon = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let beacon_port = beacon.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let heard = asked.clone();
    std::thread::spawn(move || {
        for mut c in beacon.incoming().flatten() {
            use std::io::{Read, Write};
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            heard
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = c.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    let leak = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        leak.path(),
        format!(
            r#"<!doctype html><html><head><meta name="referrer" content="unsafe-url"></head><body>
<pre>@@RESULT{{"ran":false}}RESULT@@</pre>
<img referrerpolicy="unsafe-url" src="http://127.0.0.1:{beacon_port}/p.gif">
<link rel="stylesheet" href="http://127.0.0.1:{beacon_port}/s.css"></body></html>"#
        ),
    )
    .unwrap();
    let (_, _, wt) = new_object(&s);
    let v2 = common::upload_files(&s, &wt, &[("leak.html", leak.path())]);
    let url = s.url(&format!(
        "/q/{v2}/files/leak.html?authorization={}",
        common::TOKEN
    ));
    common::chromium_result(&url, work.path(), 5, &s);
    let asked = asked.lock().unwrap().clone();
    assert!(!asked.contains(common::TOKEN), "the token left: {asked}");
    assert!(asked.is_empty(), "the page loaded from elsewhere: {asked}");

    // A `mime_type` that names HTML, or that would read as HTML to a browser behind a harmless
    // type (quoted parameters split differently: review), is sandboxed or sent rebuilt.
    let (_, _, wt) = new_object(&s);
    let html = std::fs::read(page.path()).unwrap();
    let crafted = r#"text/plain;a="\";b=",text/html;c=""#;
    let ops = json!({"ops": [
        {"path": "y.txt", "size": html.len(), "mime_type": "text/html; charset=utf-8"},
        {"path": "trick.txt", "size": html.len(), "mime_type": crafted},
    ]});
    let job = call(
        &s,
        "POST",
        &format!("/q/{wt}/file_jobs"),
        Some(&ops.to_string()),
        201,
    );
    let (fj, uj) = (
        job["id"].as_str().unwrap(),
        job["jobs"][0].as_str().unwrap(),
    );
    let both = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(both.path(), [&html[..], &html[..]].concat()).unwrap();
    let at = format!("@{}", both.path().display());
    let data = s.url(&format!("/q/{wt}/file_jobs/{fj}/{uj}"));
    assert_eq!(
        curl(&data, &["-X", "POST", "--data-binary", &at]).status,
        200
    );
    let v2 = call(&s, "POST", &format!("/q/{wt}"), None, 200)["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let y = curl(&s.url(&format!("/q/{v2}/files/y.txt")), &[]);
    assert_eq!(y.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        y.header("content-security-policy"),
        Some("sandbox; default-src 'none'")
    );
    let trick = curl(&s.url(&format!("/q/{v2}/files/trick.txt")), &[]);
    assert_eq!(trick.header("content-type"), Some("text/plain"), "rebuilt");
    // A copy cached before the header existed gets it with its next 304.
    let etag = y.header("etag").unwrap().to_string();
    let inm = format!("If-None-Match: {etag}");
    let not_modified = curl(&s.url(&format!("/q/{v2}/files/y.txt")), &["-H", &inm]);
    assert_eq!(not_modified.status, 304);
    assert_eq!(
        not_modified.header("content-security-policy"),
        Some("sandbox; default-src 'none'")
    );

    // A server that hosts web apps turns the sandbox off: the same page runs.
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let hosting = Server::start_with(data.path(), port, &[], &[("CAIRN_SANDBOX_PAGES", "no")]);
    let (_, _, wt) = new_object(&hosting);
    let v = common::upload_files(&hosting, &wt, &files[..1]);
    let url = hosting.url(&format!(
        "/q/{v}/files/x.html?authorization={}",
        common::TOKEN
    ));
    assert_eq!(curl(&url, &[]).header("content-security-policy"), None);
    let seen = common::chromium_result(&url, work.path(), 5, &hosting);
    assert_eq!(seen["ran"], true, "{seen}");
}

/// A download whose client stops reading is dropped after the idle time: the server does not
/// hold the connection (and its read budget) for as long as the client likes.
#[test]
fn a_download_whose_client_reads_nothing_is_dropped() {
    use std::io::Read;
    let size = 64usize << 20;
    let (s, _data, _, mut sock) = a_download_under_way(1, 5, size);
    std::thread::sleep(std::time::Duration::from_secs(4));
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(n) = sock.read(&mut buf) {
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(got > 0, "the response started");
    assert!(
        got < size,
        "the connection was dropped: {got} bytes of {size} came"
    );
    // The server serves others meanwhile and after.
    assert_eq!(curl(&s.url("/config"), &["--no-token"]).status, 200);
}

/// A client that reads a download slowly but steadily is not taken for one that stopped: at
/// 192 KiB/s against a 3 s idle deadline it gets the whole file. Without `TCP_NOTSENT_LOWAT`
/// the socket woke the writer only after megabytes had drained, and this client was dropped.
#[test]
fn a_download_read_slowly_but_steadily_is_not_dropped() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let (s, _data, body, mut sock) = a_download_under_way(3, 6, 8 << 20);
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 24 << 10];
    let slow_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < slow_until {
        let n = sock.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "dropped while reading slowly, after {} bytes",
            got.len()
        );
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(125));
    }
    sock.read_to_end(&mut got).unwrap();
    let at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert_eq!(got.len() - at, body.len(), "the whole file came");
    assert!(got[at..] == body[..], "exactly the file's bytes");
    let dropped = s
        .log_lines()
        .iter()
        .any(|l| l.contains("took none of its response"));
    assert!(!dropped, "the server logged the client as idle");
}

#[test]
fn slow_headers_are_cut_off_and_connections_are_capped() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_config(
        data.path(),
        "header_timeout_secs = 1\nmax_connections = 3\n",
    );
    let connect = || {
        let c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    };
    // A slowloris client: headers never finished.
    let mut slow = connect();
    slow.write_all(b"GET /config HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    // Meanwhile normal clients are served.
    assert_eq!(curl(&s.url("/config"), &["--no-token"]).status, 200);
    let mut buf = [0u8; 256];
    let n = slow.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the server closed the slow connection ({waited:?})"
    );
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );

    // A connection that never sends a byte is closed at the same deadline.
    let mut silent = connect();
    let started = Instant::now();
    let n = silent.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "closed without a reply");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "the silent connection was closed after {waited:?}"
    );

    // Three idle connections fill the cap; a fourth is closed at once, before any request.
    let idle: Vec<_> = (0..3).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect();
    let t = Instant::now();
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the connection over the cap was closed");
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(idle);
}

#[test]
fn a_token_over_its_request_rate_gets_429_with_retry_after() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_config(data.path(), "rate_limit = 1\nrate_burst = 5\n");
    let statuses: Vec<u16> = (0..8).map(|_| curl(&s.url("/qlibs"), &[]).status).collect();
    // The rate and the burst above it, at once: 1 + 5.
    assert_eq!(&statuses[..6], &[200; 6], "the burst passes: {statuses:?}");
    let r = curl(&s.url("/qlibs"), &[]);
    assert_eq!((r.status, r.kind().as_str()), (429, "rate_limited"));
    let wait: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // /config needs no token and is not limited; after the wait the token is served again.
    assert_eq!(curl(&s.url("/config"), &["--no-token"]).status, 200);
    std::thread::sleep(std::time::Duration::from_secs(wait));
    assert_eq!(curl(&s.url("/qlibs"), &[]).status, 200);
}

/// Library tokens over real HTTP: a token reaches its own library's content and nothing else
/// (403 `forbidden`, and nothing changes), a read-only one only reads, a link into another
/// library is not followed, revocation is immediate, and tokens survive a restart.
#[test]
fn library_tokens_reach_only_their_library() {
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let s = Server::start(data.path(), port);
    let files = tempfile::tempdir().unwrap();
    let (fa, fb) = (files.path().join("a"), files.path().join("b"));
    std::fs::write(&fa, common::pattern(1, 70_000)).unwrap();
    std::fs::write(&fb, common::pattern(2, 50_000)).unwrap();
    let (lib_a, obj_a, wt_a) = new_object(&s);
    let ha = common::upload_files(&s, &wt_a, &[("a.bin", &fa)]);
    let (lib_b, obj_b, wt_b) = new_object(&s);
    let hb = common::upload_files(&s, &wt_b, &[("b.bin", &fb)]);
    let wt_b = call(&s, "POST", &format!("/qid/{obj_b}"), None, 200)["write_token"]
        .as_str()
        .unwrap()
        .to_string();
    // The admin may link across libraries; a library token must not read through that link.
    let wt_link = call(&s, "POST", &format!("/qid/{obj_a}"), None, 200)["write_token"]
        .as_str()
        .unwrap()
        .to_string();
    let link = json!({"ops": [{"op": "link", "path": "to-b", "target": format!("/qfab/{hb}/files/b.bin")}]});
    call(
        &s,
        "POST",
        &format!("/q/{wt_link}/file_jobs"),
        Some(&link.to_string()),
        201,
    );
    let ha2 = call(&s, "POST", &format!("/q/{wt_link}"), None, 200)["hash"]
        .as_str()
        .unwrap()
        .to_string();

    let token_for = |access: &str| {
        let body = json!({ "access": access }).to_string();
        let v = call(
            &s,
            "POST",
            &format!("/qlibs/{lib_a}/tokens"),
            Some(&body),
            201,
        );
        assert_eq!(v["qlib_id"], lib_a.as_str());
        assert_eq!(v["access"], access);
        (
            v["id"].as_str().unwrap().to_string(),
            v["token"].as_str().unwrap().to_string(),
        )
    };
    let (write_id, write_tok) = token_for("write");
    let (_, read_tok) = token_for("read");
    let versions_b = call(&s, "GET", &format!("/qid/{obj_b}"), None, 200);

    let as_token = |tok: &str, method: &str, path: &str, body: Option<&str>| {
        let auth = format!("Authorization: Bearer {tok}");
        // curl -X HEAD would wait for a body that never comes: -I is a HEAD.
        let mut args = match method {
            "HEAD" => vec!["-I"],
            _ => vec!["-X", method],
        };
        args.extend(["-H", &auth, "-H", "Content-Type: application/json"]);
        if let Some(b) = body {
            args.extend(["--data-binary", b]);
        }
        curl(&s.url(path), &args)
    };
    let unknown_obj = "iq__2Fb9vA6XoKhKjQzCjUe6ZcmBe3S5";
    // (token, method, path, status, kind or "")
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (&write_tok, "GET", format!("/q/{ha}/files/a.bin"), 200, ""),
        (
            &write_tok,
            "GET",
            format!("/qlibs/{lib_a}/q/{obj_a}"),
            200,
            "",
        ),
        (&write_tok, "GET", format!("/qlibs/{lib_a}/q"), 200, ""),
        (
            &write_tok,
            "GET",
            format!("/q/{hb}/files/b.bin"),
            403,
            "forbidden",
        ),
        (&write_tok, "HEAD", format!("/q/{hb}/files/b.bin"), 403, ""),
        (&write_tok, "GET", format!("/q/{obj_b}"), 403, "forbidden"),
        (
            &write_tok,
            "GET",
            format!("/q/{wt_b}/files_list"),
            403,
            "forbidden",
        ),
        (
            &write_tok,
            "GET",
            format!("/qlibs/{lib_b}/q"),
            403,
            "forbidden",
        ),
        (
            &write_tok,
            "GET",
            format!("/qlibs/{lib_a}/q/{hb}"),
            403,
            "forbidden",
        ),
        (
            &write_tok,
            "POST",
            format!("/qid/{obj_b}"),
            403,
            "forbidden",
        ),
        (&write_tok, "DELETE", format!("/q/{hb}"), 403, "forbidden"),
        (
            &write_tok,
            "PUT",
            format!("/q/{wt_b}/meta/x"),
            403,
            "forbidden",
        ),
        (
            &write_tok,
            "GET",
            format!("/q/{ha2}/files/to-b"),
            403,
            "forbidden",
        ),
        (&write_tok, "GET", "/admin/stats".into(), 403, "forbidden"),
        (&write_tok, "POST", "/admin/gc".into(), 403, "forbidden"),
        (&write_tok, "POST", "/qlibs".into(), 403, "forbidden"),
        (
            &write_tok,
            "GET",
            format!("/qlibs/{lib_a}/tokens"),
            403,
            "forbidden",
        ),
        (
            &write_tok,
            "POST",
            format!("/qlibs/{lib_a}/tokens"),
            403,
            "forbidden",
        ),
        (
            &write_tok,
            "GET",
            format!("/q/{unknown_obj}"),
            404,
            "not_found",
        ),
        (&read_tok, "GET", format!("/q/{ha}/files/a.bin"), 200, ""),
        (&read_tok, "POST", format!("/qid/{obj_a}"), 403, "forbidden"),
        (&read_tok, "DELETE", format!("/q/{ha}"), 403, "forbidden"),
        (
            &read_tok,
            "POST",
            format!("/qlibs/{lib_a}/q"),
            403,
            "forbidden",
        ),
        (
            &read_tok,
            "GET",
            format!("/q/{hb}/files/b.bin"),
            403,
            "forbidden",
        ),
    ];
    for (tok, method, path, status, kind) in &cases {
        let r = as_token(tok, method, path, None);
        let said = String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).into_owned();
        assert_eq!(r.status, *status, "{method} {path}: {said}");
        if !kind.is_empty() {
            assert_eq!(r.kind(), *kind, "{method} {path}");
        }
    }
    let a_bytes = as_token(&read_tok, "GET", &format!("/q/{ha}/files/a.bin"), None).body;
    assert_eq!(a_bytes, std::fs::read(&fa).unwrap());
    let libs = as_token(&write_tok, "GET", "/qlibs", None).json();
    assert_eq!(libs["libraries"].as_array().unwrap().len(), 1, "{libs}");
    assert_eq!(libs["libraries"][0]["id"], lib_a.as_str());
    // Its own library: a write token works end to end.
    let r = as_token(&write_tok, "POST", &format!("/qid/{obj_a}"), None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Links it makes stay in its library; another library's version is answered exactly like
    // one that does not exist, so the answer reveals nothing about it.
    let wt_own = r.json()["write_token"].as_str().unwrap().to_string();
    let link_to = |target: String| {
        json!({"ops": [{"op": "link", "path": "l", "target": target}]}).to_string()
    };
    let jobs = format!("/q/{wt_own}/file_jobs");
    // A well-formed version hash that names nothing: made, then deleted.
    let (_, _, wt_gone) = new_object(&s);
    let gone_hq = common::upload_files(&s, &wt_gone, &[("a.bin", &fa)]);
    call(&s, "DELETE", &format!("/q/{gone_hq}"), None, 200);
    for target in [
        format!("/qfab/{hb}/files/b.bin"),
        format!("/qfab/{hb}/files/nope.bin"),
        format!("/qfab/{gone_hq}/files/a.bin"),
    ] {
        let r = as_token(&write_tok, "POST", &jobs, Some(&link_to(target.clone())));
        assert_eq!(
            (r.status, r.kind().as_str()),
            (404, "not_found"),
            "{target}"
        );
        let reason = r.json()["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(reason, format!("op 0: link target {target} does not exist"));
    }
    let r = as_token(
        &write_tok,
        "POST",
        &jobs,
        Some(&link_to(format!("/qfab/{ha}/files/a.bin"))),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // Nothing of library B changed.
    assert_eq!(
        call(&s, "GET", &format!("/qid/{obj_b}"), None, 200),
        versions_b
    );
    assert_eq!(
        curl(&s.url(&format!("/q/{hb}/files/b.bin")), &[]).body,
        std::fs::read(&fb).unwrap()
    );

    // Revocation is immediate; the list never shows secrets.
    call(
        &s,
        "DELETE",
        &format!("/qlibs/{lib_a}/tokens/{write_id}"),
        None,
        200,
    );
    call(
        &s,
        "DELETE",
        &format!("/qlibs/{lib_a}/tokens/{write_id}"),
        None,
        404,
    );
    let r = as_token(&write_tok, "GET", &format!("/q/{ha}/files/a.bin"), None);
    assert_eq!((r.status, r.kind().as_str()), (401, "unauthorized"));
    let listed = call(&s, "GET", &format!("/qlibs/{lib_a}/tokens"), None, 200);
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(listed["tokens"][0]["access"], "read");
    assert!(!listed.to_string().contains(&read_tok));
    call(
        &s,
        "POST",
        &format!("/qlibs/{unknown_obj}/tokens"),
        None,
        400,
    );

    // Tokens survive a restart.
    drop(s);
    let s = Server::start(data.path(), port);
    let auth = format!("Authorization: Bearer {read_tok}");
    let r = curl(&s.url(&format!("/q/{ha}/files/a.bin")), &["-H", &auth]);
    assert_eq!(r.status, 200);
    let r = curl(&s.url(&format!("/q/{hb}/files/b.bin")), &["-H", &auth]);
    assert_eq!(r.status, 403);
}

/// Request heads over the documented limits get the JSON error shape (431/414 `too_large`);
/// only heads beyond hyper's own 256 KiB buffer get its bare 431.
#[test]
fn oversized_request_heads_get_json_errors() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let header = |name: &str, len: usize| format!("{name}: {}", "v".repeat(len));
    let just_under = header("X-Pad", 8 << 10);
    let r = curl(&s.url("/qlibs"), &["-H", &just_under]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let one_big = header("X-Big", (8 << 10) + 1);
    let many: Vec<String> = (0..5)
        .map(|i| header(&format!("X-Pad-{i}"), 7 << 10))
        .collect();
    let mut many_args: Vec<&str> = Vec::new();
    for h in &many {
        many_args.extend(["-H", h.as_str()]);
    }
    let long_path = format!(
        "/q/iq__2Fb9vA6XoKhKjQzCjUe6ZcmBe3S5/files/{}",
        "a".repeat(9000)
    );
    // Header fields: curl sends Host, User-Agent, Accept and the token besides these.
    let fields = |n: usize| -> Vec<String> {
        (0..n)
            .flat_map(|i| ["-H".to_string(), format!("X-F{i}: v")])
            .collect()
    };
    let (ninety, two_hundred) = (fields(90), fields(200));
    let r = curl(
        &s.url("/qlibs"),
        &ninety.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let cases: Vec<(String, Vec<&str>, u16)> = vec![
        (
            "/qlibs".into(),
            two_hundred.iter().map(String::as_str).collect(),
            431,
        ),
        ("/qlibs".into(), vec!["-H", &one_big], 431),
        ("/config".into(), vec!["-H", &one_big], 431),
        ("/qlibs".into(), many_args, 431),
        (long_path, vec![], 414),
        (format!("/qlibs?x={}", "q".repeat(9000)), vec![], 414),
    ];
    for (path, args, status) in cases {
        let r = curl(&s.url(&path), &args);
        assert_eq!(r.status, status, "{}", &path[..path.len().min(60)]);
        assert_eq!(
            r.kind(),
            "too_large",
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let reason = r.json()["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(reason.contains("at most"), "{reason}");
    }
    // Past hyper's 256 KiB read buffer hyper refuses the head itself; the answer still has the
    // JSON shape (`wire.rs`), and the server carries on. (Three headers: one command-line
    // argument may not exceed 128 KiB.)
    let huge: Vec<String> = (0..3)
        .map(|i| header(&format!("X-Huge{i}"), 100 << 10))
        .collect();
    let r = curl(
        &s.url("/qlibs"),
        &["-H", &huge[0], "-H", &huge[1], "-H", &huge[2]],
    );
    assert_eq!(r.status, 431);
    assert_eq!(
        r.kind(),
        "too_large",
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(curl(&s.url("/qlibs"), &[]).status, 200);
}

/// Requests hyper cannot parse never reach a handler; the first on a connection still gets a
/// JSON error with a `kind`, and they change nothing.
#[test]
fn unparseable_requests_get_json_errors() {
    use std::io::{Read, Write};
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let before = call(&s, "GET", "/qlibs", None, 200);
    let send = |raw: &[u8]| -> Vec<u8> {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.write_all(raw).unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        out
    };
    let lib = format!(
        "POST /qlibs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n",
        common::TOKEN
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            format!("{lib}Content-Length: ten\r\n\r\n{{}}").into_bytes(),
            "400",
        ),
        (b"BREW /config HTCPCP/1.0\r\n\r\n".to_vec(), "400"),
        (format!("{lib}Bad Header\r\n\r\n").into_bytes(), "400"),
    ];
    for (raw, status) in cases {
        let out = send(&raw);
        let text = String::from_utf8_lossy(&out).to_string();
        // The last response on the connection is the refusal.
        let last = &text[text.rfind("HTTP/1.1 ").unwrap()..];
        assert!(last.starts_with(&format!("HTTP/1.1 {status} ")), "{last}");
        let (head, body) = last.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("\r\nx-request-id: "), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).expect(last);
        assert_eq!(v["errors"][0]["kind"], "invalid", "{last}");
        let len = format!("content-length: {}\r\n", body.len());
        assert!(head.contains(len.trim_end()), "{head}");
    }
    assert_eq!(
        call(&s, "GET", "/qlibs", None, 200),
        before,
        "nothing was created"
    );
}

/// A file whose bytes read exactly like hyper's own refusal is served as it is, also after
/// another response on the same connection: only a connection's first write is ever rewritten.
/// (hyper writes these small bodies together with their heads today; `wire.rs`'s unit test
/// `only_the_first_write_is_ever_rewritten` pins the rule for a body written alone.)
#[test]
fn a_file_that_looks_like_a_refusal_is_served_unchanged() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, _, wt) = new_object(&s);
    let looks = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 23 Nov 2026 08:36:44 GMT\r\n\r\n";
    let f = work.path().join("f");
    std::fs::write(&f, looks).unwrap();
    let hq = common::upload_files(&s, &wt, &[("r.txt", &f)]);
    let url = s.url(&format!("/q/{hq}/files/r.txt"));
    assert_eq!(curl(&url, &[]).body, looks);
    // Two requests on one connection: the file comes second.
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        write!(
            c,
            "GET /config HTTP/1.1\r\nHost: x\r\n\r\nGET /q/{hq}/files/r.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            common::TOKEN
        )
        .unwrap();
        let mut both = Vec::new();
        c.read_to_end(&mut both).unwrap();
        assert!(both.ends_with(looks), "{}", String::from_utf8_lossy(&both));
    }
    let r = curl(&url, &["-H", "Range: bytes=0-24"]);
    assert_eq!((r.status, &r.body[..]), (206, &looks[..25]));
}

/// Every way to ask for the files tree answers the same JSON, the root with a trailing slash
/// included, and through both URL forms.
#[test]
fn every_listing_url_gives_the_same_tree() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (lib, _, wt) = new_object(&s);
    let f = work.path().join("f");
    std::fs::write(&f, b"hello").unwrap();
    let hq = common::upload_files(&s, &wt, &[("d/f.txt", &f)]);
    let tree = call(&s, "GET", &format!("/q/{hq}/files_list"), None, 200);
    assert_eq!(tree["d"]["f.txt"]["."]["size"], 5, "{tree}");
    for suffix in [
        "files_list/",
        "files_list/d",
        "files",
        "files/",
        "files/?list",
        "files/d/",
        "files/d?list",
    ] {
        for prefix in [format!("/q/{hq}"), format!("/qlibs/{lib}/q/{hq}")] {
            let path = format!("{prefix}/{suffix}");
            assert_eq!(call(&s, "GET", &path, None, 200), tree, "{path}");
        }
    }
}

/// `meta/` is the metadata root, as `meta` and `meta//` are.
#[test]
fn the_metadata_root_answers_with_a_trailing_slash() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, _, wt) = new_object(&s);
    call(
        &s,
        "PUT",
        &format!("/q/{wt}/meta/"),
        Some(r#"{"a":[1,2]}"#),
        200,
    );
    assert_eq!(
        call(&s, "GET", &format!("/q/{wt}/meta"), None, 200),
        serde_json::json!({"a":[1,2]})
    );
    assert_eq!(
        call(&s, "GET", &format!("/q/{wt}/meta/"), None, 200),
        serde_json::json!({"a":[1,2]})
    );
    call(&s, "DELETE", &format!("/q/{wt}/meta/"), None, 200);
    assert_eq!(
        call(&s, "GET", &format!("/q/{wt}/meta//"), None, 200),
        serde_json::json!({})
    );
}

/// A key holding a `/` is reached with `%2F` in its segment, through the qlibs form too; a
/// raw `/` still separates keys, and a segment that does not decode to UTF-8 is refused.
#[test]
fn a_metadata_key_with_a_slash_is_reached_percent_encoded() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (lib, _, wt) = new_object(&s);
    let doc = r#"{"a/b":{"c d":1},"a":{"b":2}}"#;
    call(&s, "PUT", &format!("/q/{wt}/meta"), Some(doc), 200);
    let get = |path: &str, want: u16| call(&s, "GET", &format!("/q/{wt}/meta/{path}"), None, want);
    assert_eq!(get("a%2Fb", 200), serde_json::json!({"c d": 1}));
    assert_eq!(get("a%2fb/c%20d", 200), serde_json::json!(1));
    assert_eq!(get("a/b", 200), serde_json::json!(2));
    assert_eq!(
        call(
            &s,
            "GET",
            &format!("/qlibs/{lib}/q/{wt}/meta/a%2Fb/c%20d"),
            None,
            200
        ),
        serde_json::json!(1)
    );
    let bad = call(&s, "GET", &format!("/q/{wt}/meta/%FF"), None, 400);
    assert_eq!(bad["errors"][0]["kind"], "invalid", "{bad}");
    call(&s, "PUT", &format!("/q/{wt}/meta/x%2Fy"), Some("3"), 200);
    call(&s, "DELETE", &format!("/q/{wt}/meta/a%2Fb"), None, 200);
    assert_eq!(
        call(&s, "GET", &format!("/q/{wt}/meta"), None, 200),
        serde_json::json!({"a": {"b": 2}, "x/y": 3})
    );
    get("a%2Fb", 404);
    // Names in the files tree never hold a `/`: there `%2F` still separates them (a client
    // that encodes the whole path).
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), b"12345").unwrap();
    let v = common::upload_files(&s, &wt, &[("d/a.txt", f.path())]);
    for path in [
        "files/d/a.txt/./size",
        "files/d%2Fa.txt/./size",
        "files%2Fd%2Fa.txt/./size",
    ] {
        let r = curl(&s.url(&format!("/q/{v}/meta/{path}")), &["--path-as-is"]);
        assert_eq!((r.status, r.json()), (200, serde_json::json!(5)), "{path}");
    }
}

/// The server speaks HTTP/1.1 only: a cleartext HTTP/2 client gets no HTTP/2 reply (h2c flow
/// control would let a client pause responses where no deadline could see it).
#[test]
fn cleartext_http2_is_not_served() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let h2 = common::try_curl(&s.url("/config"), &["--http2-prior-knowledge", "-m", "5"]);
    assert!(
        h2.as_ref().map_or(true, |r| r.status != 200),
        "an HTTP/2 reply: {:?}",
        h2.map(|r| r.status)
    );
    assert_eq!(curl(&s.url("/config"), &["--no-token"]).status, 200);
}

/// A log that cannot be written (its disk full, its reader gone) does not stop the server: with
/// stderr on `/dev/full` it starts, prints its generated token, and answers every request (each
/// failed log write used to panic the request's task, dropping it unanswered, and the start
/// exited 101).
#[test]
fn a_log_that_cannot_be_written_does_not_stop_the_server() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--data", dir.path().join("d").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("CAIRN_TOKEN")
        .env("CAIRN_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        assert!(std::time::Instant::now() < deadline, "no start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut token = String::new();
    let mut out = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        token.push(byte[0] as char);
    }
    let auth = format!("Authorization: Bearer {token}");
    for _ in 0..5 {
        let r = curl(&format!("http://127.0.0.1:{port}/config"), &["--no-token"]);
        assert_eq!(r.status, 200);
        let r = curl(&format!("http://127.0.0.1:{port}/qlibs"), &["-H", &auth]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert!(child.try_wait().unwrap().is_none(), "the server is running");
    child.kill().unwrap();
    let _ = child.wait();
}
