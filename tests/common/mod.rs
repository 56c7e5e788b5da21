//! Shared by the tests that drive the real `cairn serve` over HTTP: start and stop the server,
//! collect its log, and call the API with curl (a real client, and the one operators script with).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "test-secret";

mod testdata;
#[allow(unused_imports)] // not every test binary makes data
pub use testdata::pattern;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `cairn serve`, its log lines collected.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(data: &Path, port: u16) -> Server {
        Server::start_args(data, port, &[])
    }

    /// Starts with extra `cairn serve` arguments (e.g. `--config FILE`).
    pub fn start_args(data: &Path, port: u16, extra: &[&str]) -> Server {
        Server::start_with(data, port, extra, &[])
    }

    /// Starts on `dir/d` with `toml` as its config file (written to `dir/cairn.toml`).
    #[allow(dead_code)] // not every test binary configures its server
    pub fn start_config(dir: &Path, toml: &str) -> Server {
        let cfg = dir.join("cairn.toml");
        std::fs::write(&cfg, toml).unwrap();
        let args = ["--config", cfg.to_str().unwrap()];
        Server::start_args(&dir.join("d"), free_port(), &args)
    }

    /// Starts with extra arguments and environment variables.
    pub fn start_with(data: &Path, port: u16, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args([
                "serve",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .env("CAIRN_TOKEN", TOKEN)
            .env("CAIRN_LOG", "info")
            .envs(envs.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "server did not start: {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The port answered: make sure it is this server (not one that took the port first).
        // Its listen line may reach the log a little after the port opens (the reader thread
        // lags under a loaded machine), so wait for it, as long as the server runs.
        let listening = format!("127.0.0.1:{port}");
        let logged = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                child.try_wait().unwrap().is_none(),
                "server exited: {:?}",
                log.lock().unwrap()
            );
            if log.lock().unwrap().iter().any(|l| l.contains(&listening)) {
                break;
            }
            assert!(
                Instant::now() < logged,
                "another process answers on port {port}: {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, port, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Completed upload requests seen so far, and the bytes they appended.
    pub fn uploads(&self) -> (usize, u64) {
        let log = self.log.lock().unwrap();
        let accepted: Vec<u64> = log
            .iter()
            .filter(|l| l.contains(" upload "))
            .filter_map(|l| {
                l.split("accepted=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        (accepted.len(), accepted.iter().sum())
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP exchange made with curl.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The error kind of a JSON error body.
    pub fn kind(&self) -> String {
        self.json()["errors"][0]["kind"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// Runs curl with `args` against `url`, with the token unless `args` carries its own auth.
pub fn curl(url: &str, args: &[&str]) -> Reply {
    let r = try_curl(url, args);
    r.unwrap_or_else(|e| panic!("curl {url} failed: {e}"))
}

/// [`curl`] that returns `Err` (curl's message) when no HTTP reply came back at all, e.g.
/// because the server was killed.
pub fn try_curl(url: &str, args: &[&str]) -> Result<Reply, String> {
    let dir = tempfile::tempdir().unwrap();
    let (h, b) = (dir.path().join("h"), dir.path().join("b"));
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-g",
        "-D",
        h.to_str().unwrap(),
        "-o",
        b.to_str().unwrap(),
        "-w",
        "%{http_code}",
    ]);
    if !args
        .iter()
        .any(|a| a.starts_with("Authorization") || *a == "--no-token")
    {
        cmd.args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
    }
    cmd.args(args.iter().filter(|a| **a != "--no-token"));
    let out = cmd.arg(url).output().expect("curl is installed");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    // 0: no reply at all; 1xx: only `100 Continue` came back before the connection died.
    if status < 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let headers = std::fs::read_to_string(&h)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Ok(Reply {
        status,
        headers,
        body: std::fs::read(&b).unwrap_or_default(),
    })
}

/// A JSON call that must succeed with `want` status.
pub fn call(s: &Server, method: &str, path: &str, body: Option<&str>, want: u16) -> Value {
    let mut args = vec!["-X", method, "-H", "Content-Type: application/json"];
    if let Some(b) = body {
        args.extend(["--data-binary", b]);
    }
    let r = curl(&s.url(path), &args);
    assert_eq!(
        r.status,
        want,
        "{method} {path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

/// A new library and object with an open draft: (library, object, write token).
pub fn new_object(s: &Server) -> (String, String, String) {
    let lib = call(s, "POST", "/qlibs", Some(r#"{"name":"t"}"#), 201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let obj = call(s, "POST", &format!("/qlibs/{lib}/q"), None, 201);
    (
        lib,
        obj["id"].as_str().unwrap().to_string(),
        obj["write_token"].as_str().unwrap().to_string(),
    )
}

/// Uploads `files` (path, local file) into the draft with one files job and finalizes it;
/// returns the version hash.
pub fn upload_files(s: &Server, wt: &str, files: &[(&str, &Path)]) -> String {
    let ops: Vec<Value> = files
        .iter()
        .map(|(p, f)| serde_json::json!({"path": p, "type": "file", "size": std::fs::metadata(f).unwrap().len()}))
        .collect();
    let job = call(
        s,
        "POST",
        &format!("/q/{wt}/file_jobs"),
        Some(&serde_json::json!({"ops": ops}).to_string()),
        201,
    );
    let fj = job["id"].as_str().unwrap();
    for uj in job["jobs"].as_array().unwrap() {
        let uj = uj.as_str().unwrap();
        let st = call(
            s,
            "GET",
            &format!("/q/{wt}/file_jobs/{fj}/uploads/{uj}?start=0&limit=1000"),
            None,
            200,
        );
        for seg in st["files"].as_array().unwrap() {
            let local = files
                .iter()
                .find(|(p, _)| p.trim_start_matches('/') == seg["path"].as_str().unwrap())
                .unwrap()
                .1;
            let bytes = std::fs::read(local).unwrap();
            let (off, len) = (
                seg["off"].as_u64().unwrap() as usize,
                seg["len"].as_u64().unwrap() as usize,
            );
            let piece = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(piece.path(), &bytes[off..off + len]).unwrap();
            let r = curl(
                &s.url(&format!("/q/{wt}/file_jobs/{fj}/{uj}")),
                &[
                    "-X",
                    "POST",
                    "-H",
                    "Content-Type: application/octet-stream",
                    "--data-binary",
                    &format!("@{}", piece.path().display()),
                ],
            );
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    }
    call(s, "POST", &format!("/q/{wt}"), None, 200)["hash"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Loads `url` in headless Chromium (a profile under `work`) and returns the JSON the page
/// wrote between `@@RESULT` and `RESULT@@` (tests/browser/*.html). `budget_s` is Chromium's
/// virtual-time budget: the page's timers may run that long before the DOM is dumped. Panics
/// with the page, Chromium's stderr and the server's log when there is no result.
pub fn chromium_result(url: &str, work: &Path, budget_s: u64, server: &Server) -> Value {
    let out = Command::new("timeout")
        .arg((budget_s * 3).max(60).to_string())
        .args(["chromium", "--headless", "--no-sandbox", "--disable-gpu"])
        .arg("--disable-background-networking")
        // A profile of its own, and no reliance on a large /dev/shm (containers have 64 MiB).
        .arg(format!(
            "--user-data-dir={}",
            work.join("chromium").display()
        ))
        .arg("--disable-dev-shm-usage")
        .arg(format!("--virtual-time-budget={}", budget_s * 1000))
        .args(["--dump-dom", url])
        .output()
        .expect("chromium is installed (bash .ci/setup)");
    let dom = String::from_utf8_lossy(&out.stdout)
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let json = dom
        .split_once("@@RESULT")
        .and_then(|(_, rest)| rest.split_once("RESULT@@"))
        .map(|(json, _)| json)
        .unwrap_or_else(|| {
            panic!(
                "no result in the page (exit {:?}): {dom}\n{}\nserver log: {:#?}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr),
                server.log_lines()
            )
        });
    serde_json::from_str(json).unwrap()
}
