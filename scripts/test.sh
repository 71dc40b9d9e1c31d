#!/usr/bin/env bash
# The test command: installs what the tests need (CRIU >= 4 included) on a
# fresh Debian bookworm machine, then runs every test against the real CRIU,
# the benches in their quick mode and the fuzz targets for a few seconds
# each (so that neither rots). Must run as root: the service under test
# drives CRIU, which needs root. Starts a local SeaweedFS
# (scripts/seaweedfs.sh: loopback only, stopped by pid at the end, whatever
# happens) for the store tests, which also run against file:// roots. Ends
# with the time each step took and the list of skips
# (tests/support/skip.rs names the conditions a test may skip for); a skip
# of any other kind fails the run.
#
# The adversarial suite's races run a few seconds each;
# SELFDUMP_LONG_RACES=1 runs their long form (tens of seconds each).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (sudo $0): the tests drive CRIU" >&2; exit 1; }
source scripts/own-session.sh
source scripts/seaweedfs.sh
own_session scripts/test.sh "$@"
bash scripts/install-criu.sh
bash scripts/install-test-tools.sh
export PATH="/usr/local/sbin:$PATH"
# tests run programs built here as uid 65534: it must reach them
if ! setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$PWD"; then
    echo "test.sh: uid 65534 cannot reach $PWD, where the tests' programs are built" >&2
    echo "  (a directory above it is not searchable by others; mktemp -d makes 0700 ones):" >&2
    echo "  chmod o+x on each directory above it, e.g. chmod 755 $(dirname "$PWD")" >&2
    exit 1
fi

SELFDUMP_SKIP_LOG=$(mktemp /tmp/selfdump-skips.XXXXXX)
export SELFDUMP_SKIP_LOG
times=()
step() {
    local name=$1 started
    shift
    started=$(date +%s)
    "$@"
    times+=("$name $(( $(date +%s) - started )) s")
}
report() {
    local status=$?
    seaweedfs_stop
    [ ${#times[@]} -eq 0 ] || printf '\n== times: %s ==\n' "$(IFS=,; echo "${times[*]}" | sed 's/,/, /g')"
    bash scripts/skips.sh "$SELFDUMP_SKIP_LOG" || status=1
    rm -f "$SELFDUMP_SKIP_LOG"
    exit "$status"
}
trap report EXIT
trap 'exit 130' INT TERM

seaweedfs_start

step fmt cargo fmt --check
step clippy cargo clippy --all-targets --all-features --quiet -- -D warnings
step build cargo test --all-features --no-run --quiet
# The fuzz targets build (their own target directory, instrumented) while
# the tests run: the tests mostly wait on CRIU, and must pass under load.
fuzz_build_log=$(mktemp /tmp/selfdump-fuzz-build.XXXXXX)
bash scripts/fuzz.sh --quick --build-only >"$fuzz_build_log" 2>&1 &
fuzz_build=$!
step tests cargo test --all-features --no-fail-fast
if ! wait "$fuzz_build"; then
    cat "$fuzz_build_log" >&2
    echo "test.sh: building the fuzz targets failed" >&2
    exit 1
fi
rm -f "$fuzz_build_log"
step benches bash scripts/bench.sh --quick
step fuzz bash scripts/fuzz.sh --quick
