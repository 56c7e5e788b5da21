//! Interop with the official Files API client, `@eluvio/elv-client-js` (installed by
//! `.ci/setup` into tests/interop/node_modules): the real binary serves, the real client uploads
//! a 150 MiB file, an empty file and 3,000 small files (so upload status paginates), finalizes,
//! lists and downloads everything by object id and by version hash (tests/interop/elv.cjs).
//! The second test kills the server with SIGKILL in the middle of the upload and restarts it;
//! the client's own retries must finish, and no acknowledged byte may be sent twice.
//! The third runs the client's browser bundle in headless Chromium, from a page on another
//! origin (tests/browser/elv.html), so every call goes through CORS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{free_port, Server, TOKEN};

fn interop_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop");
    assert!(
        dir.join("node_modules/@eluvio/elv-client-js").exists(),
        "the official client is not installed: run `bash .ci/setup` (npm install in tests/interop)"
    );
    dir
}

fn client(port: u16, small: usize, big_mib: usize) -> Child {
    Command::new("node")
        .arg("elv.cjs")
        .args([format!("http://127.0.0.1:{port}"), TOKEN.to_string()])
        .env("SMALL_FILES", small.to_string())
        .env("BIG_MIB", big_mib.to_string())
        .current_dir(interop_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is installed")
}

/// Waits for the client and returns its RESULT json.
fn result(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("RESULT line");
    serde_json::from_str(line).unwrap()
}

#[test]
fn official_client_uploads_lists_and_downloads() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::start(data.path(), port);
    let r = result(client(port, 3000, 150));
    println!("{r}");
    assert_eq!(r["files"], 3002);
    let total = r["uploadBytes"].as_u64().unwrap();
    let small: u64 = (0..3000u64).map(|i| 1 + (i * 7919) % 4096).sum();
    assert_eq!(total, (150 << 20) + small, "the sizes elv.cjs generates");
    assert!(
        r["verifiedBytes"].as_u64().unwrap() >= total,
        "every byte was downloaded and compared"
    );
    let (requests, accepted) = server.uploads();
    assert_eq!(
        accepted, total,
        "each byte was sent once ({requests} upload requests)"
    );
    let log = server.log.lock().unwrap();
    assert!(
        log.iter()
            .any(|l| l.contains("uploads/{uj}") && l.contains("status=200")),
        "status was read"
    );
}

#[test]
fn official_client_finishes_after_the_server_is_killed_mid_upload() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(data.path(), port);
    let child = client(port, 300, 40);
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.uploads().0 < 60 {
        assert!(Instant::now() < deadline, "the upload did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (before, acked_before) = server.uploads();
    server.child.kill().unwrap(); // SIGKILL: no graceful anything
    server.child.wait().unwrap();
    let restarted = Server::start(data.path(), port);
    let r = result(child);
    println!("{r}");
    let total = r["uploadBytes"].as_u64().unwrap();
    let (after, acked_after) = restarted.uploads();
    println!("killed after {before} upload requests ({acked_before} bytes acknowledged); {after} more after restart ({acked_after} bytes)");
    assert!(after > 0, "the client resumed against the restarted server");
    assert!(
        acked_before + acked_after <= total,
        "acknowledged bytes were sent again: {acked_before} + {acked_after} > {total}"
    );
    assert!(r["verifiedBytes"].as_u64().unwrap() >= total);
}

/// The official client's browser bundle, in headless Chromium, on another origin than the API
/// (tests/browser/elv.html): the page and the bundle come from Cairn at `http://localhost:PORT`
/// and the client drives `http://127.0.0.1:PORT`, so every call crosses origins and most need
/// a preflight (CORS). Upload, finalize, list and download by object id and by version hash,
/// each byte compared in the page; the server's copies are checked here too.
#[test]
fn official_client_in_a_browser_on_another_origin() {
    let bundle = interop_dir().join("node_modules/@eluvio/elv-client-js/dist/ElvClient-min.js");
    let work = tempfile::tempdir().unwrap();
    let page = work.path().join("elv.html");
    std::fs::write(&page, include_str!("browser/elv.html")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    // A server that hosts web apps: its pages' scripts run (api.md §10, `sandbox_pages`).
    let hosting = [("CAIRN_SANDBOX_PAGES", "false")];
    let server = Server::start_with(data.path(), port, &[], &hosting);
    let (_, _, wt) = common::new_object(&server);
    let site = common::upload_files(
        &server,
        &wt,
        &[("elv.html", &page), ("ElvClient-min.js", &bundle)],
    );
    let url = format!(
        "http://localhost:{port}/q/{site}/files/elv.html?authorization={TOKEN}&api=http://127.0.0.1:{port}"
    );
    let r = common::chromium_result(&url, work.path(), 120, &server);
    assert!(
        r["error"].is_null(),
        "the client failed in the browser: {r}"
    );
    assert_eq!(r["origin"], format!("http://localhost:{port}"));
    assert_eq!(
        (r["files"].as_u64(), r["listed"].as_u64()),
        (Some(42), Some(40)),
        "{r}"
    );
    assert_eq!(r["bigSize"], (12 << 20) + 12345);
    assert_eq!(r["mismatches"], serde_json::json!([]), "{r}");
    let uploaded = r["uploaded"].as_u64().unwrap();
    assert!(r["verified"].as_u64().unwrap() >= uploaded, "{r}");
    let (_, accepted) = server.uploads();
    assert_eq!(
        accepted,
        uploaded
            + std::fs::metadata(&page).unwrap().len()
            + std::fs::metadata(&bundle).unwrap().len(),
        "each byte sent once"
    );

    // What the server keeps is what the page generated (its SHA-256s), read back here by curl.
    let version = r["versionHash"].as_str().unwrap();
    for (path, sum) in r["sums"].as_object().unwrap() {
        let got = work.path().join("got");
        let reply = common::curl(&server.url(&format!("/q/{version}/files/{path}")), &[]);
        std::fs::write(&got, &reply.body).unwrap();
        assert_eq!(reply.status, 200, "{path}");
        let out = Command::new("sha256sum").arg(&got).output().unwrap();
        let hex = String::from_utf8_lossy(&out.stdout);
        assert_eq!(hex.split_whitespace().next(), sum.as_str(), "{path}");
    }
    let preflights = server
        .log_lines()
        .iter()
        .filter(|l| l.contains("method=OPTIONS") && l.contains("status=200"))
        .count();
    assert!(
        preflights > 0,
        "the browser sent preflights, and they were answered"
    );
}
