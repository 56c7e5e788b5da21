//! Media over HTTP: an MP4 made by ffmpeg is uploaded through the Files API and served back;
//! ffprobe reads it and ffmpeg seeks to the middle and extracts a frame. Both only work if
//! Range requests are right (the MP4's index is at its end, so even probing has to seek).
//! Headless Chromium does the same from a page on another origin, which also needs CORS.
//! Then table-driven Range and conditional-request cases with curl.

mod common;

use std::path::Path;
use std::process::Command;

use common::{call, curl, new_object, upload_files, Server, TOKEN};

/// A 60 s MP4 with its index (`moov`) at the end; `video` is extra x264 options.
fn make_mp4(out: &Path, size: &str, video: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=duration=60:size={size}:rate=25"))
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=60",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            // 4:2:0, which every browser decodes (testsrc's RGB would otherwise give 4:4:4).
            "-pix_fmt",
            "yuv420p",
        ])
        .args(video)
        .args([
            "-g",
            "50",
            "-c:a",
            "aac",
            "-shortest",
            "-y",
            out.to_str().unwrap(),
        ])
        .status()
        .expect("ffmpeg is installed (bash .ci/setup)");
    assert!(status.success());
}

#[test]
fn ffprobe_reads_and_ffmpeg_seeks_in_a_served_mp4() {
    let work = tempfile::tempdir().unwrap();
    let mp4 = work.path().join("test.mp4");
    make_mp4(&mp4, "320x240", &[]);
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, _, wt) = new_object(&s);
    let hq = upload_files(&s, &wt, &[("video/test.mp4", &mp4)]);
    let url = s.url(&format!(
        "/q/{hq}/files/video/test.mp4?authorization={TOKEN}"
    ));

    let head = curl(&url, &["-I"]);
    assert_eq!(
        (head.status, head.header("content-type")),
        (200, Some("video/mp4"))
    );

    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=nw=1:nk=1",
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let duration: f64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!((duration - 60.0).abs() < 0.5, "duration {duration}");

    let frame = work.path().join("frame.png");
    let grab = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-ss",
            "30",
            "-i",
            &url,
            "-frames:v",
            "1",
            "-y",
            frame.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        grab.status.success(),
        "{}",
        String::from_utf8_lossy(&grab.stderr)
    );
    assert!(
        std::fs::metadata(&frame).unwrap().len() > 1000,
        "a real frame was written"
    );
    let seeks = s
        .log_lines()
        .iter()
        .filter(|l| l.contains("/files/{*path}") && l.contains("status=206"))
        .count();
    assert!(
        seeks >= 2,
        "ffprobe and ffmpeg used ranges ({seeks} partial responses)"
    );
}

/// A browser on another origin: headless Chromium loads `tests/browser/player.html` from
/// `http://localhost:PORT` (served by Cairn itself) and that page calls Cairn at
/// `http://127.0.0.1:PORT`, a different origin. Its `<video>` seeks to 0:45 of the MP4 (whose
/// index is at the end, so playing at all takes Range requests) and draws the decoded frame
/// into a canvas, which the browser only allows when the video's replies carry CORS headers;
/// then `fetch()` reads a Range with the token in a header (a preflighted request), writes
/// metadata into a draft (a preflighted PUT) and reads a JSON 401.
#[test]
fn a_browser_page_on_another_origin_plays_seeks_and_calls_the_api() {
    let work = tempfile::tempdir().unwrap();
    let mp4 = work.path().join("test.mp4");
    // Lossless, so the file (about 10 MB) is more than Chromium reads ahead, and its seek to
    // 0:45 has to be a Range request of its own.
    make_mp4(&mp4, "640x480", &["-qp", "0"]);
    let page = work.path().join("player.html");
    std::fs::write(&page, include_str!("browser/player.html")).unwrap();
    let data = tempfile::tempdir().unwrap();
    // A server that hosts web apps: its pages' scripts run (api.md §10, `sandbox_pages`).
    let hosting = [("CAIRN_SANDBOX_PAGES", "false")];
    let s = Server::start_with(data.path(), common::free_port(), &[], &hosting);
    let (_, iq, wt) = new_object(&s);
    let hq = upload_files(&s, &wt, &[("video/test.mp4", &mp4), ("player.html", &page)]);
    let draft = common::call(&s, "POST", &format!("/qid/{iq}"), None, 200)["write_token"]
        .as_str()
        .unwrap()
        .to_string();
    let video = format!("/q/{iq}/files/video/test.mp4");
    let url = format!(
        "http://localhost:{}/q/{hq}/files/player.html?authorization={TOKEN}&api=http://127.0.0.1:{}&video={video}&seek=45&wt={draft}",
        s.port, s.port
    );
    let r = common::chromium_result(&url, work.path(), 30, &s);
    let bytes = std::fs::read(&mp4).unwrap();

    let v = &r["video"];
    assert!(v["error"].is_null(), "the video failed: {r}");
    assert!((v["duration"].as_f64().unwrap() - 60.0).abs() < 0.5, "{r}");
    assert!((v["current"].as_f64().unwrap() - 45.0).abs() < 0.5, "{r}");
    assert!(
        v["readyState"].as_u64().unwrap() >= 2,
        "the frame at 0:45 is decoded: {r}"
    );
    assert!(
        v["frame"]["colours"].as_u64().unwrap_or(0) > 10,
        "the canvas read a real frame, so the video was CORS-clean: {r}"
    );

    let range = &r["range"];
    assert_eq!(range["status"], 206, "{r}");
    assert_eq!(
        range["contentRange"],
        format!("bytes 100-131/{}", bytes.len()),
        "Content-Range is exposed to the page"
    );
    let want: String = bytes[100..132].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(range["body"], want);
    assert_eq!(
        range["etag"],
        format!("\"{}\"", blake3::hash(&bytes).to_hex())
    );

    assert_eq!(
        (&r["meta"]["status"], &r["meta"]["kind"]),
        (&200.into(), &"ok".into()),
        "{r}"
    );
    let meta = curl(&s.url(&format!("/q/{draft}/meta/from_browser")), &[]);
    assert_eq!(
        meta.json()["origin"],
        format!("http://localhost:{}", s.port),
        "the page's PUT reached the draft"
    );
    assert_eq!(r["refused"]["status"], 401);
    assert_eq!(
        r["refused"]["kind"], "unauthorized",
        "the page reads the JSON error"
    );

    // The player's own requests: a seek is a partial response of neither the whole file nor
    // the small index at its end (the page's fetch read 32 bytes).
    let lens: Vec<u64> = s
        .log_lines()
        .iter()
        .filter(|l| l.contains("/files/{*path}") && l.contains("status=206"))
        // The length asked for: a player cuts most of its requests short once it has enough.
        .filter_map(|l| {
            let field = if l.contains("cut_short") {
                "length="
            } else {
                "bytes="
            };
            l.split(field).nth(1)?.split(' ').next()?.parse().ok()
        })
        .collect();
    let size = bytes.len() as u64;
    assert!(
        lens.iter().any(|&n| n > 1 << 20 && n < size),
        "the player sought by Range (partial responses of {lens:?} bytes, file {size})"
    );
}

/// (Range header, status, Content-Range, expected body slice)
type RangeCase = (
    &'static str,
    u16,
    Option<&'static str>,
    Option<(usize, usize)>,
);

#[test]
fn range_and_conditional_requests() {
    let work = tempfile::tempdir().unwrap();
    let src: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let f = work.path().join("f.bin");
    std::fs::write(&f, &src).unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), common::free_port());
    let (_, obj, wt) = new_object(&s);
    let empty = work.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let hq = upload_files(&s, &wt, &[("d/f.bin", &f), ("empty", &empty)]);
    let url = s.url(&format!("/q/{hq}/files/d/f.bin"));

    // An empty file ignores a well-formed range (as nginx does); a malformed one is still 416.
    let empty_url = s.url(&format!("/q/{hq}/files/empty"));
    for range in ["bytes=0-", "bytes=0-0", "bytes=-5"] {
        let r = curl(&empty_url, &["-H", &format!("Range: {range}")]);
        assert_eq!(r.status, 200, "{range}");
        assert_eq!(
            (r.body.len(), r.header("content-length")),
            (0, Some("0")),
            "{range}"
        );
    }
    let r = curl(&empty_url, &["-H", "Range: bytes=abc"]);
    assert_eq!(
        (r.status, r.header("content-range")),
        (416, Some("bytes */0"))
    );

    // (Range header, status, Content-Range, expected body slice)
    let cases: &[RangeCase] = &[
        ("", 200, None, Some((0, 1000))),
        ("bytes=0-99", 206, Some("bytes 0-99/1000"), Some((0, 100))),
        (
            "bytes=990-",
            206,
            Some("bytes 990-999/1000"),
            Some((990, 1000)),
        ),
        (
            "bytes=-10",
            206,
            Some("bytes 990-999/1000"),
            Some((990, 1000)),
        ),
        (
            "bytes=500-999999",
            206,
            Some("bytes 500-999/1000"),
            Some((500, 1000)),
        ),
        (
            "bytes=999-999",
            206,
            Some("bytes 999-999/1000"),
            Some((999, 1000)),
        ),
        ("bytes=1000-", 416, Some("bytes */1000"), None),
        ("bytes=5-1", 416, Some("bytes */1000"), None),
        ("bytes=abc", 416, Some("bytes */1000"), None),
        ("lines=1-2", 200, None, Some((0, 1000))),
    ];
    for (range, status, content_range, slice) in cases {
        let header = format!("Range: {range}");
        let args: Vec<&str> = if range.is_empty() {
            vec![]
        } else {
            vec!["-H", &header]
        };
        let r = curl(&url, &args);
        assert_eq!(r.status, *status, "{range}");
        assert_eq!(r.header("content-range"), *content_range, "{range}");
        assert_eq!(r.header("accept-ranges"), Some("bytes"), "{range}");
        match slice {
            Some((a, b)) => {
                assert_eq!(r.body, src[*a..*b], "{range}");
                assert_eq!(
                    r.header("content-length"),
                    Some(&*(b - a).to_string()),
                    "{range}"
                );
            }
            None => assert_eq!(r.kind(), "bad_range", "{range}"),
        }
    }

    // Two ranges: multipart/byteranges with both slices and an exact Content-Length.
    let r = curl(&url, &["-H", "Range: bytes=0-1,10-19"]);
    assert_eq!(r.status, 206);
    let ctype = r.header("content-type").unwrap().to_string();
    let boundary = ctype
        .strip_prefix("multipart/byteranges; boundary=")
        .expect(&ctype);
    assert_eq!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        r.body.len()
    );
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains(&format!("--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-1/1000\r\n\r\n")));
    assert!(text.contains("Content-Range: bytes 10-19/1000"));
    assert!(text.ends_with(&format!("--{boundary}--\r\n")));

    // Validators: ETag and Last-Modified; If-None-Match → 304; a stale If-Range → full body.
    let full = curl(&url, &[]);
    let etag = full.header("etag").unwrap().to_string();
    assert_eq!(
        etag,
        format!("\"{}\"", blake3::hash(&src).to_hex()),
        "the ETag is the file's blake3"
    );
    assert!(full.header("last-modified").is_some());
    // Through a version hash the bytes never change; through the object id they may.
    let immutable = "private, max-age=31536000, immutable";
    assert_eq!(full.header("cache-control"), Some(immutable));
    let by_object = curl(&s.url(&format!("/q/{obj}/files/d/f.bin")), &[]);
    assert_eq!(
        (by_object.status, by_object.header("cache-control")),
        (200, Some("private, no-cache"))
    );
    assert_eq!(
        curl(&url, &["-H", &format!("If-None-Match: {etag}")]).status,
        304
    );
    // A HEAD 304 carries the 200's length, never another (RFC 9110 §8.6).
    let head_304 = curl(&url, &["-I", "-H", &format!("If-None-Match: {etag}")]);
    assert_eq!(
        (head_304.status, head_304.header("content-length")),
        (304, Some("1000"))
    );
    assert_eq!(curl(&url, &["-H", "If-None-Match: \"other\""]).status, 200);
    // The other preconditions (RFC 9110 §13): If-Match and If-Unmodified-Since fail with a JSON
    // 412 before anything is read; If-Modified-Since gives a 304 like If-None-Match.
    let lm = full.header("last-modified").unwrap().to_string();
    let old = "Mon, 01 Jan 2001 00:00:00 GMT";
    for (hdr, status) in [
        (format!("If-Match: {etag}"), 200),
        ("If-Match: *".to_string(), 200),
        ("If-Match: \"other\"".to_string(), 412),
        (format!("If-Unmodified-Since: {lm}"), 200),
        (format!("If-Unmodified-Since: {old}"), 412),
        (format!("If-Modified-Since: {lm}"), 304),
        (format!("If-Modified-Since: {old}"), 200),
    ] {
        let r = curl(&url, &["-H", &hdr]);
        assert_eq!(r.status, status, "{hdr}");
        match status {
            200 => assert_eq!(r.body, src, "{hdr}"),
            304 => {
                assert!(r.body.is_empty() && r.header("etag") == Some(etag.as_str()));
                assert_eq!(r.header("cache-control"), Some(immutable), "{hdr}");
            }
            _ => {
                let e: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(e["errors"][0]["kind"], "precondition_failed", "{hdr}: {e}");
            }
        }
    }
    let r = curl(
        &url,
        &["-H", "Range: bytes=5-9", "-H", &format!("If-Match: {etag}")],
    );
    assert_eq!((r.status, &r.body[..]), (206, &src[5..10]));
    let r = curl(
        &url,
        &["-H", "Range: bytes=0-9", "-H", &format!("If-Range: {etag}")],
    );
    assert_eq!((r.status, r.body.len()), (206, 10));
    let r = curl(
        &url,
        &["-H", "Range: bytes=0-9", "-H", "If-Range: \"stale\""],
    );
    assert_eq!((r.status, r.body.len()), (200, 1000));
    // A date never keeps the Range, not even the exact Last-Modified: two versions finalized
    // within one second share it, and a client would join the start of one to the other.
    let r = curl(
        &url,
        &["-H", "Range: bytes=0-9", "-H", &format!("If-Range: {lm}")],
    );
    assert_eq!((r.status, r.body.len()), (200, 1000));
    // A list header sent on two lines means both. `If-Range` twice never matches (the whole
    // file), a date precondition twice is ignored (RFC 9110 §13.1.3), `Range` twice is refused.
    let two_lines = [
        "-H",
        "If-None-Match: \"a\"",
        "-H",
        &format!("If-None-Match: {etag}"),
    ];
    assert_eq!(curl(&url, &two_lines).status, 304);
    let twice = [
        "-H",
        "Range: bytes=0-9",
        "-H",
        &format!("If-Range: {etag}"),
        "-H",
        "If-Range: \"b\"",
    ];
    let r = curl(&url, &twice);
    assert_eq!((r.status, r.body.len()), (200, 1000));
    // (Either line alone would be a 304.)
    let ims = format!("If-Modified-Since: {lm}");
    let dates = ["-H", &ims, "-H", &ims];
    assert_eq!(curl(&url, &dates).status, 200);
    let ranges = ["-H", "Range: bytes=0-1", "-H", "Range: bytes=2-3"];
    let r = curl(&url, &ranges);
    assert_eq!((r.status, r.kind()), (400, "invalid".to_string()));
    // Through a draft, whose files change under the one date it has, there is no Last-Modified
    // and the date conditions are ignored: only the ETag validates.
    let draft = call(&s, "POST", &format!("/qid/{obj}"), None, 200);
    let wt2 = draft["write_token"].as_str().unwrap();
    let durl = s.url(&format!("/q/{wt2}/files/d/f.bin"));
    let r = curl(&durl, &["-H", &format!("If-Modified-Since: {lm}")]);
    assert_eq!((r.status, r.header("last-modified")), (200, None));
    assert_eq!(r.body, src);
    assert_eq!(
        curl(&durl, &["-H", &format!("If-None-Match: {etag}")]).status,
        304
    );

    // HEAD: the same headers, no body (curl -I writes only the header block to its output).
    let h = curl(&url, &["-I", "-H", "Range: bytes=0-9"]);
    assert_eq!((h.status, h.header("content-length")), (206, Some("10")));
    let out = String::from_utf8_lossy(&h.body);
    assert!(
        out.starts_with("HTTP/1.1 206") && out.ends_with("\r\n\r\n"),
        "{out:?}"
    );
    // Errors too: a HEAD's status and Content-Length are the GET's.
    let missing = s.url(&format!("/q/{hq}/files/d/nope"));
    for (u, args) in [
        (&url, vec!["-H", "Range: bytes=5000-"]),
        (&url, vec!["-H", "If-Match: \"other\""]),
        (&missing, vec![]),
    ] {
        let get = curl(u, &args);
        let head = curl(u, &[&["-I"], &args[..]].concat());
        assert_eq!(get.status, head.status, "{args:?}");
        assert!(get.status >= 400, "{args:?}");
        let len = get.body.len().to_string();
        assert_eq!(
            head.header("content-length"),
            Some(len.as_str()),
            "{args:?}"
        );
    }
}
