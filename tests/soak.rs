//! Overload soak against the real server: 500 idle connections and a slowloris client sit on
//! the server while 64 uploaders push files into 8 drafts and 256 readers fetch random ranges of
//! a finalized file. Nothing may fail, nothing may hang, every byte read and written checks out,
//! and the server's memory stays bounded (its peak RSS is printed and checked).
//!
//! `CAIRN_SOAK_SECS` sets the duration (default 10 s in CI; `just soak` runs 60 s).

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::{call, new_object, pattern, upload_files, Server, TOKEN};
use rand::{Rng, SeedableRng};

const UPLOADERS: usize = 64;
const DRAFTS: usize = 8;
const READERS: usize = 256;
const IDLE: usize = 500;
const SERVED: usize = 64 << 20;
/// The server's peak RSS must stay under this. Reads alone are flat (~215 MiB with 256
/// readers); under the mixed load RSS still rises for a while (docs/reliability.md, "Limits").
const RSS_LIMIT_MIB: u64 = 768;

fn soak_secs() -> u64 {
    std::env::var("CAIRN_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    errors: AtomicU64,
}

/// One files job with one file, uploaded in one POST; returns the path.
async fn upload_one(
    http: &reqwest::Client,
    base: &str,
    wt: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(), String> {
    let auth = format!("Bearer {TOKEN}");
    let ops = serde_json::json!({"ops": [{"path": path, "type": "file", "size": body.len()}]});
    let r = http
        .post(format!("{base}/q/{wt}/file_jobs"))
        .header("Authorization", &auth)
        .json(&ops)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 201 {
        return Err(format!(
            "files job: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ));
    }
    let job: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    let fj = job["id"].as_str().unwrap();
    let uj = job["jobs"][0].as_str().unwrap();
    let r = http
        .post(format!("{base}/q/{wt}/file_jobs/{fj}/{uj}"))
        .header("Authorization", &auth)
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!(
            "upload: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ));
    }
    Ok(())
}

#[test]
fn idle_and_slow_clients_and_heavy_load_cause_no_errors_and_bounded_memory() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), common::free_port());
    let base = s.url("");
    let secs = soak_secs();

    // The file the readers read, finalized before the load starts.
    let served = Arc::new(pattern(7, SERVED));
    let f = dir.path().join("served.bin");
    std::fs::write(&f, &*served).unwrap();
    let (_, _, wt) = new_object(&s);
    let hq = upload_files(&s, &wt, &[("served.bin", &f)]);
    let drafts: Vec<(String, String)> = (0..DRAFTS)
        .map(|_| {
            let (_, obj, wt) = new_object(&s);
            (obj, wt)
        })
        .collect();

    // 500 idle connections (silent: the server closes them after its header deadline, 30 s),
    // and a slowloris client trickling one header byte a second.
    let idle: Vec<std::net::TcpStream> = (0..IDLE)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let slowloris = {
        let (port, stop) = (s.port, stop.clone());
        std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut cut = false;
            for b in b"GET /qlibs HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
                if stop.load(SeqCst) {
                    break;
                }
                if c.write_all(&[*b]).is_err() {
                    cut = true; // the header deadline closed it
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            cut
        })
    };

    let pid = s.child.id();
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak_rss.clone());
        std::thread::spawn(move || {
            // RSS every 5 s (MiB): flat, not growing, is the point.
            let mut series = Vec::new();
            let mut i = 0u64;
            while !stop.load(SeqCst) {
                let rss = status_kib(pid, "VmRSS:");
                peak.fetch_max(rss, SeqCst);
                if i.is_multiple_of(25) {
                    series.push((rss / 1024, status_kib(pid, "Threads:")));
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            series
        })
    };

    let counts = Arc::new(Counts::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let uploaded: Vec<Vec<(usize, String, u64, usize)>> = rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(READERS + UPLOADERS)
            .build()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut readers = Vec::new();
        for r in 0..READERS {
            let (http, base, hq, served, counts) = (
                http.clone(),
                base.clone(),
                hq.clone(),
                served.clone(),
                counts.clone(),
            );
            readers.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(r as u64);
                while tokio::time::Instant::now() < deadline {
                    let len = rng.gen_range(1..=1 << 20);
                    let start = rng.gen_range(0..SERVED - len);
                    let got = http
                        .get(format!("{base}/q/{hq}/files/served.bin"))
                        .header("Authorization", format!("Bearer {TOKEN}"))
                        .header("Range", format!("bytes={start}-{}", start + len - 1))
                        .send()
                        .await;
                    let ok = match got {
                        Ok(resp) if resp.status() == 206 => match resp.bytes().await {
                            Ok(b) => b[..] == served[start..start + len],
                            Err(_) => false,
                        },
                        _ => false,
                    };
                    if ok {
                        counts.reads.fetch_add(1, SeqCst);
                        counts.read_bytes.fetch_add(len as u64, SeqCst);
                    } else {
                        counts.errors.fetch_add(1, SeqCst);
                    }
                }
            }));
        }
        let mut uploaders = Vec::new();
        for u in 0..UPLOADERS {
            let (http, base, counts) = (http.clone(), base.clone(), counts.clone());
            let wt = drafts[u % DRAFTS].1.clone();
            uploaders.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + u as u64);
                let mut done = Vec::new();
                let mut n = 0u64;
                while tokio::time::Instant::now() < deadline {
                    let size = rng.gen_range(0..2 << 20);
                    let seed = ((u as u64) << 32) | n;
                    let path = format!("u{u}/f{n}.bin");
                    match upload_one(&http, &base, &wt, &path, pattern(seed, size)).await {
                        Ok(()) => {
                            counts.uploads.fetch_add(1, SeqCst);
                            counts.upload_bytes.fetch_add(size as u64, SeqCst);
                            done.push((u % DRAFTS, path, seed, size));
                        }
                        Err(e) => {
                            eprintln!("uploader {u}: {e}");
                            counts.errors.fetch_add(1, SeqCst);
                        }
                    }
                    n += 1;
                }
                done
            }));
        }
        for r in readers {
            r.await.unwrap();
        }
        let mut all = Vec::new();
        for u in uploaders {
            all.push(u.await.unwrap());
        }
        all
    });
    stop.store(true, SeqCst);
    let series = sampler.join().unwrap();
    let slow_cut = slowloris.join().unwrap();

    // Everything uploaded is in the finalized drafts, byte for byte.
    let mut verified = 0u64;
    let hashes: Vec<String> = drafts
        .iter()
        .map(|(_, wt)| {
            call(&s, "POST", &format!("/q/{wt}"), None, 200)["hash"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for (d, path, seed, size) in uploaded.iter().flatten() {
        let r = common::curl(&s.url(&format!("/q/{}/files/{path}", hashes[*d])), &[]);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body == pattern(*seed, *size), "{path} differs");
        verified += *size as u64;
    }
    let hwm = status_kib(pid, "VmHWM:") / 1024;
    let peak = peak_rss.load(SeqCst) / 1024;
    println!(
        "soak {secs}s: {} range reads ({} MiB), {} uploads ({} MiB, {verified} bytes verified \
         after finalize), {} errors; {IDLE} idle connections opened; slowloris cut: {slow_cut}; \
         server (RSS MiB, threads) every 5 s {series:?}, peak sampled {peak} MiB, VmHWM {hwm} MiB",
        counts.reads.load(SeqCst),
        counts.read_bytes.load(SeqCst) >> 20,
        counts.uploads.load(SeqCst),
        counts.upload_bytes.load(SeqCst) >> 20,
        counts.errors.load(SeqCst),
    );
    println!("stats: {}", call(&s, "GET", "/admin/stats", None, 200));
    assert_eq!(counts.errors.load(SeqCst), 0, "requests failed under load");
    assert!(counts.reads.load(SeqCst) > 0 && counts.uploads.load(SeqCst) > 0);
    assert!(hwm < RSS_LIMIT_MIB, "server peak RSS {hwm} MiB");
    assert_eq!(
        common::curl(&s.url("/config"), &["--no-token"]).status,
        200,
        "the server still answers"
    );
    drop(idle);
}
