//! Memory stays flat: `cairn ingest-bench` streams 4 GiB through the engine (planner, upload
//! jobs, chunker, packs, index, sealing) and reports its own peak RSS, which must stay under
//! 200 MiB. Nothing in the stream dedups, so every byte is chunked, hashed and written.

use std::process::Command;

#[test]
fn ingesting_4_gib_keeps_peak_rss_under_200_mib() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "ingest-bench",
            "--size",
            "4GiB",
            "--data",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{report}");
    assert_eq!(report["bytes"], 4u64 << 30);
    let peak = report["peak_rss_kib"].as_u64().unwrap();
    assert!(peak > 0, "VmHWM was read");
    assert!(peak < 200 * 1024, "peak RSS {peak} KiB");
}
