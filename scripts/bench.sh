#!/usr/bin/env bash
# Regenerates BENCHMARKS.md from one run of every bench: each bench prints
# markdown sections (benches/support/report.rs) and this script writes them,
# in order, under a header that says when and where they were measured.
# Nothing else is in the file: a figure there is one this run printed.
#
#   sudo scripts/bench.sh           the full run (release build, ~15 min):
#                                   rewrites BENCHMARKS.md and
#                                   docs/freeze-time.svg
#   sudo scripts/bench.sh --quick   few rounds, small sizes, a debug build,
#                                   written to target/selfdump-bench/ only:
#                                   what scripts/test.sh --full (CI) runs, so that the
#                                   benches keep working (it measures nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=full
case "${1:-}" in
    --quick) mode=quick ;;
    "") ;;
    *) echo "usage: scripts/bench.sh [--quick]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root (sudo $0): CRIU dumps and restores need it" >&2; exit 1; }
export PATH="/usr/local/sbin:$PATH"
# the store bench pushes to a local SeaweedFS: started here (loopback only,
# stopped by pid on exit) unless scripts/test.sh already runs one
if [ -z "${SELFDUMP_TEST_S3:-}" ]; then
    source scripts/seaweedfs.sh
    trap seaweedfs_stop EXIT
    trap 'exit 130' INT TERM
    seaweedfs_start
fi
out=target/selfdump-bench
mkdir -p "$out"
export SELFDUMP_BENCH_REPORT="$PWD/$out/report.md"
: >"$SELFDUMP_BENCH_REPORT"
args=(--all-features --quiet)
if [ "$mode" = quick ]; then
    export SELFDUMP_BENCH_QUICK=1
    args+=(--profile dev)
    dest=$out/BENCHMARKS.md
else
    unset SELFDUMP_BENCH_QUICK
    dest=BENCHMARKS.md
fi
started=$(date +%s)
load_before=$(cut -d' ' -f1 /proc/loadavg)
for bench in protocol checkpoint clone store preflight; do
    cargo bench "${args[@]}" --bench "$bench" >"$out/$bench.out"
done
took=$(( ($(date +%s) - started + 59) / 60 ))
load_after=$(cut -d' ' -f1 /proc/loadavg)
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
criu="CRIU $(criu --version 2>/dev/null | sed -n 's/^Version: //p')"
{
    echo "# Benchmarks"
    echo
    echo "What one run of every bench printed: \`sudo scripts/bench.sh\` runs them and"
    echo "writes this file; nothing in it comes from elsewhere. This run: $(date -u +'%Y-%m-%d %H:%M') UTC,"
    echo "$(nproc) CPUs ($cpu), $(free -g | awk '/^Mem:/{print $2}') GiB, Linux $(uname -r), $criu,"
    echo "images on ext4 (\`/var/tmp\`) unless said otherwise, as root; it took about $took min;"
    echo "the load average was $load_before when it began and $load_after when it ended."
    echo
    echo "These machines are shared VMs whose speed drifts, at times by a factor of two"
    echo "from one minute to the next. So every comparison is measured in turns (the"
    echo "contestants alternate round by round, in one process) and given as medians,"
    echo "and every ratio is of two things measured so; a difference smaller than that"
    echo "drift is noise."
    if [ "$mode" = quick ]; then
        echo
        echo "**A quick run** (\`--quick\`: a debug build, few rounds, small sizes): it checks"
        echo "that the benches work; its figures measure nothing."
    fi
    cat "$SELFDUMP_BENCH_REPORT"
    echo
    echo "## Before and after"
    echo
    echo "Comparisons of two versions of the code (two builds run in turns, which one"
    echo "run of this script cannot make) are recorded in [docs/before-after.md](docs/before-after.md)."
} >"$dest"
[ "$mode" = full ] && cp "$out/freeze-time.svg" docs/freeze-time.svg
for title in "Protocol" "End to end" "Warm" "Freeze" "Concurrency" "Signing" "Clones" "Beyond one machine" "Preflight"; do
    grep -q "^## $title" "$dest" || { echo "bench.sh: no section \"$title\" in $dest" >&2; exit 1; }
done
echo "bench.sh: wrote $dest ($mode run, about $took min)"
