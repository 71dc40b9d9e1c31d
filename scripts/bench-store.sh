#!/usr/bin/env bash
# The store benchmark (benches/store.rs) alone, against a local SeaweedFS
# started here (scripts/seaweedfs.sh: loopback only) and stopped by pid at
# the end; it prints its section (scripts/bench.sh runs it with the others
# and writes BENCHMARKS.md). Run as root. SELFDUMP_BENCH_QUICK=1 for a
# short run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-store.sh: run as root (the bench restores)" >&2; exit 1; }
source scripts/seaweedfs.sh
trap seaweedfs_stop EXIT
trap 'exit 130' INT TERM
export PATH="/usr/local/sbin:$PATH"
seaweedfs_start
cargo bench --all-features --bench store "$@"
