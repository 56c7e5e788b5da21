//! Bad input against the running server, table-driven: each request gets the right 4xx with a
//! JSON error body of a stable kind, and a follow-up status call shows nothing changed.

mod common;

use common::{call, curl, new_object, Server};
use serde_json::json;

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (lib, obj, wt) = new_object(&s);
    let job = call(
        &s,
        "POST",
        &format!("/q/{wt}/file_jobs"),
        Some(r#"{"ops":[{"path":"a.bin","size":100}]}"#),
        201,
    );
    let (fj, uj) = (
        job["id"].as_str().unwrap().to_string(),
        job["jobs"][0].as_str().unwrap().to_string(),
    );
    let status_path = format!("/q/{wt}/file_jobs/{fj}/uploads/{uj}");
    let unknown_obj = "iq__2Fb9vA6XoKhKjQzCjUe6ZcmBe3S5";
    let unknown_uj = "iqfuSNFv8xddhFCK6xB5g5mY8y";
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
        (
            format!("/q/{wt}/file_jobs"),
            post_json(r#"{"ops":[{"path":"m","size":1,"mime_type":"a\r\nX-Injected: 1"}]}"#),
            400,
            "invalid",
        ),
        (
            format!("/q/{wt}/file_jobs/{fj}/{uj}"),
            vec![
                "-X",
                "POST",
                "--data-binary",
                "x",
                "-H",
                "Content-Range: bytes 0-18446744073709551615/*",
            ],
            400,
            "invalid",
        ),
        (format!("/q/{wt}"), vec!["-X", "POST"], 409, "incomplete"),
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

#[test]
fn config_needs_no_token_and_lists_the_api_url() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let r = curl(&s.url("/config"), &["--no-token"]);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["network"]["services"]["fabric_api"][0], s.url("/"));
    assert!(v["qspace"]["id"].as_str().unwrap().starts_with("ispc"));
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
    let cfg = data.path().join("cairn.toml");
    std::fs::write(&cfg, "max_json_body = 4096\n").unwrap();
    let s = Server::start_args(
        &data.path().join("d"),
        common::free_port(),
        &["--config", cfg.to_str().unwrap()],
    );
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

#[test]
fn a_stalled_upload_is_cut_off_and_keeps_what_arrived() {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let cfg = data.path().join("cairn.toml");
    std::fs::write(&cfg, "idle_timeout_secs = 1\n").unwrap();
    let s = Server::start_args(
        &data.path().join("d"),
        common::free_port(),
        &["--config", cfg.to_str().unwrap()],
    );
    let (_, _, wt) = new_object(&s);
    let job = call(
        &s,
        "POST",
        &format!("/q/{wt}/file_jobs"),
        Some(r#"{"ops":[{"path":"slow.bin","size":100}]}"#),
        201,
    );
    let (fj, uj) = (
        job["id"].as_str().unwrap(),
        job["jobs"][0].as_str().unwrap(),
    );
    // Send headers announcing 100 bytes, then 7 bytes, then nothing.
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        sock,
        "POST /q/{wt}/file_jobs/{fj}/{uj} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\nabcdefg",
        common::TOKEN
    )
    .unwrap();
    sock.flush().unwrap();
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

#[test]
fn slow_headers_are_cut_off_and_connections_are_capped() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let data = tempfile::tempdir().unwrap();
    let cfg = data.path().join("cairn.toml");
    std::fs::write(&cfg, "header_timeout_secs = 1\nmax_connections = 3\n").unwrap();
    let s = Server::start_args(
        &data.path().join("d"),
        common::free_port(),
        &["--config", cfg.to_str().unwrap()],
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
    let cfg = data.path().join("cairn.toml");
    std::fs::write(&cfg, "rate_limit = 1\nrate_burst = 5\n").unwrap();
    let s = Server::start_args(
        &data.path().join("d"),
        common::free_port(),
        &["--config", cfg.to_str().unwrap()],
    );
    let statuses: Vec<u16> = (0..8).map(|_| curl(&s.url("/qlibs"), &[]).status).collect();
    assert_eq!(&statuses[..5], &[200; 5], "the burst passes: {statuses:?}");
    let r = curl(&s.url("/qlibs"), &[]);
    assert_eq!((r.status, r.kind().as_str()), (429, "rate_limited"));
    let wait: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // /config needs no token and is not limited; after the wait the token is served again.
    assert_eq!(curl(&s.url("/config"), &["--no-token"]).status, 200);
    std::thread::sleep(std::time::Duration::from_secs(wait));
    assert_eq!(curl(&s.url("/qlibs"), &[]).status, 200);
}
