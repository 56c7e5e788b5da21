//! The README's demo command: ingest a real directory and read it back byte-exact.

use std::process::Command;

#[test]
fn demo_ingests_a_directory_and_reads_it_back() {
    let src = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("nested/deeper")).unwrap();
    std::fs::write(src.path().join("empty.txt"), b"").unwrap();
    std::fs::write(src.path().join("small.txt"), b"hello cairn").unwrap();
    let mut big = vec![0u8; 40 << 20];
    blake3::Hasher::new()
        .update(b"demo")
        .finalize_xof()
        .fill(&mut big);
    std::fs::write(src.path().join("nested/deeper/big.bin"), &big).unwrap();
    std::fs::write(src.path().join("nested/copy.bin"), &big).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "demo",
            src.path().to_str().unwrap(),
            "--data",
            data.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("read back 4 files byte-exact"), "{stdout}");
    // Two identical 40 MiB files are stored once.
    assert!(
        stdout.contains("dedup ratio 1.9") || stdout.contains("dedup ratio 2.0"),
        "{stdout}"
    );

    // A source that does not exist is a clear failure, not an empty version.
    let bad = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["demo", "/nonexistent-dir"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
