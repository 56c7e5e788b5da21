//! Disk full: the data dir on a small tmpfs, filled up by a filler file. Uploads must fail with
//! 507 and a JSON `no_space` error, nothing already stored may be damaged, the server keeps
//! serving, and once the filler is deleted the same upload resumes and completes.
//!
//! Needs permission to mount a tmpfs (root, as in CI); without it the test says so and passes.

mod common;

use std::path::Path;
use std::process::Command;

use common::{call, curl, new_object, pattern, upload_files, Server};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(at.to_path_buf()))
}

fn avail(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// POSTs `data[at..at+n]` to the upload job with a Content-Range; returns the reply.
fn post_piece(s: &Server, url: &str, data: &[u8], at: usize, n: usize) -> common::Reply {
    let piece = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(piece.path(), &data[at..at + n]).unwrap();
    curl(
        &s.url(url),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            &format!("Content-Range: bytes {at}-{}/{}", at + n - 1, data.len()),
            "--data-binary",
            &format!("@{}", piece.path().display()),
        ],
    )
}

fn skip_of(s: &Server, wt: &str, fj: &str, uj: &str) -> u64 {
    let st = call(
        s,
        "GET",
        &format!("/q/{wt}/file_jobs/{fj}/uploads/{uj}?start=0&limit=1000"),
        None,
        200,
    );
    st["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["skip"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_full_disk_gives_507_keeps_stored_data_and_recovers_when_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_mount) = mount_tmpfs(&mnt, "160m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = mnt.join("data");
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, "part_size = 67108864\npack_size = 4194304\n").unwrap();
    let s = Server::start_args(
        &data,
        common::free_port(),
        &["--config", config.to_str().unwrap()],
    );

    // Something stored before the disk fills.
    let kept = pattern(1, 3 << 20);
    let kept_file = dir.path().join("kept.bin");
    std::fs::write(&kept_file, &kept).unwrap();
    let (_, _, wt) = new_object(&s);
    let v1 = upload_files(&s, &wt, &[("kept.bin", &kept_file)]);

    // Fill the file system, leaving ~8 MiB, then upload 40 MiB.
    let filler = mnt.join("filler");
    let room = avail(&mnt).saturating_sub(8 << 20);
    // tmpfs allocates on write: write it for real so the space is taken.
    std::io::copy(
        &mut std::io::Read::take(std::fs::File::open("/dev/zero").unwrap(), room),
        &mut std::fs::File::create(&filler).unwrap(),
    )
    .unwrap();
    let big = pattern(2, 40 << 20);
    let (_, obj, wt2) = new_object(&s);
    let job = call(
        &s,
        "POST",
        &format!("/q/{wt2}/file_jobs"),
        Some(&format!(
            r#"{{"ops":[{{"path":"big.bin","type":"file","size":{}}}]}}"#,
            big.len()
        )),
        201,
    );
    let fj = job["id"].as_str().unwrap().to_string();
    let uj = job["jobs"][0].as_str().unwrap().to_string();
    let url = format!("/q/{wt2}/file_jobs/{fj}/{uj}");
    let piece = 1 << 20;
    let mut at = 0usize;
    let full = loop {
        assert!(at < big.len(), "40 MiB fitted into ~8 MiB of free space");
        let r = post_piece(&s, &url, &big, at, piece);
        if r.status != 200 {
            break r;
        }
        at = r.json()["received"].as_u64().unwrap() as usize;
    };
    assert_eq!(full.status, 507, "{}", String::from_utf8_lossy(&full.body));
    assert_eq!(full.kind(), "no_space");
    let acked = at as u64;
    let skip = skip_of(&s, &wt2, &fj, &uj);
    assert!(
        skip >= acked,
        "skip {skip} is behind the acknowledged {acked}"
    );
    println!(
        "disk full after {acked} bytes acknowledged (skip {skip}): {}",
        String::from_utf8_lossy(&full.body)
    );

    // What was stored is intact and still served.
    let r = curl(&s.url(&format!("/q/{v1}/files/kept.bin")), &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.body == kept,
        "a stored file changed after the disk filled"
    );

    // Free the space: the same upload resumes from its skip and completes.
    std::fs::remove_file(&filler).unwrap();
    let mut at = skip_of(&s, &wt2, &fj, &uj) as usize;
    while at < big.len() {
        let n = piece.min(big.len() - at);
        let r = post_piece(&s, &url, &big, at, n);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        at = r.json()["received"].as_u64().unwrap() as usize;
    }
    let v2 = call(&s, "POST", &format!("/q/{wt2}"), None, 200)["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let r = curl(&s.url(&format!("/q/{v2}/files/big.bin")), &[]);
    assert!(
        r.status == 200 && r.body == big,
        "the resumed upload reads back"
    );
    let fsck = call(&s, "POST", "/admin/fsck", None, 200);
    assert_eq!(fsck["clean"], true, "{fsck}");
    assert!(!obj.is_empty());
}
