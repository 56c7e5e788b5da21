# Developer shortcuts. `just` is optional: every recipe is a plain command you can paste.
# Install it with `pip install rust-just` (Debian 12 has no package).

# Install system packages (Debian's RocksDB, libclang).
setup:
    bash .ci/setup

# The whole test suite, as CI runs it.
test: setup
    cargo test --workspace

# Ingest a directory and read it back byte-exact (default: this repository's crates/).
demo dir="crates": setup
    cargo run --release -p cairn -- demo {{dir}} --data ./cairn-data

# Formatting and lints, as required before a commit.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Benchmarks, reported as ratios to reference tools on the same machine.
bench: setup
    bash benches/ingest.sh
    bash benches/http.sh

# The long reliability runs: 50 kills per crash loop (kill -9, then power cuts) and a 60 s soak.
soak:
    CAIRN_CRASH_KILLS=50 cargo test -p cairn --test crashloop -- --nocapture --test-threads 1
    CAIRN_SOAK_SECS=60 cargo test -p cairn --test soak -- --nocapture

# Fuzz each parser of hostile input for `secs` seconds (nightly + cargo-fuzz; see fuzz/Cargo.toml).
fuzz secs="120":
    # New inputs go to fuzz/target/corpus (ignored); the committed seeds in fuzz/corpus are read only.
    for t in range path ids record ops; do mkdir -p fuzz/target/corpus/$t && cargo +nightly fuzz run $t fuzz/target/corpus/$t fuzz/corpus/$t -- -max_total_time={{secs}} || exit 1; done
