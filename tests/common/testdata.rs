//! Test data for the integration tests of both test trees: this directory's (the `cairn`
//! binary's) and `crates/cairn-jobs/tests`, which includes this file by path.

/// `len` bytes of test data named by `seed` (blake3's XOF: incompressible, reproducible).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}
