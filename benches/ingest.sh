#!/usr/bin/env bash
# Ingest benchmark: Cairn's engine (chunk + blake3 + dedup lookup + pack append + fsync + index)
# against two references doing a subset of that work on the same bytes on the same machine:
#   b3sum             — hashing alone (the floor of any verified store)
#   dd conv=fdatasync — writing and syncing alone
# Printed as ratios (cairn throughput / reference throughput). Not a test: nothing asserts.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${SIZE:-2GiB}"
command -v b3sum >/dev/null || { [ "$(id -u)" -eq 0 ] && apt-get install -y -qq b3sum >/dev/null; }
cargo build --release -q -p cairn
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "loadavg before: $(cat /proc/loadavg)"
report=$(./target/release/cairn ingest-bench --size "$SIZE" --data "$work/data")
echo "cairn: $report"
cairn_mibs=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['mib_per_s'])" "$report")
bytes=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['bytes'])" "$report")
mib=$((bytes >> 20))
head -c "$bytes" /dev/urandom > "$work/src.bin"
t0=$(date +%s.%N); b3sum --num-threads 1 "$work/src.bin" >/dev/null; t1=$(date +%s.%N)
b3_mibs=$(python3 -c "print($mib/($t1-$t0))")
t0=$(date +%s.%N); dd if="$work/src.bin" of="$work/copy.bin" bs=1M conv=fdatasync status=none; t1=$(date +%s.%N)
dd_mibs=$(python3 -c "print($mib/($t1-$t0))")
echo "loadavg after: $(cat /proc/loadavg)"
python3 - "$cairn_mibs" "$b3_mibs" "$dd_mibs" <<'PY'
import sys
c, b, d = map(float, sys.argv[1:])
print(f"cairn ingest {c:8.1f} MiB/s")
print(f"b3sum (1 thread) {b:8.1f} MiB/s  ratio cairn/b3sum = {c/b:.2f}")
print(f"dd + fdatasync   {d:8.1f} MiB/s  ratio cairn/dd    = {c/d:.2f}")
PY
