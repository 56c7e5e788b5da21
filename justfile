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
