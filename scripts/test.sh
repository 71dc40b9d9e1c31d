#!/usr/bin/env bash
# The test command: installs what the tests need (CRIU >= 4 included) on a
# fresh Debian bookworm machine, then checks formatting, builds every
# target with clippy's lints (warnings denied) and runs every test against
# the real CRIU (scripts/run-tests.py: the test binaries side by side).
# Must run as root: the service under test drives CRIU, which needs root.
# Starts a local SeaweedFS
# (scripts/seaweedfs.sh: loopback only, stopped by pid at the end, whatever
# happens) for the store tests, which also run against file:// roots. Ends
# with the time each step took and the list of skips
# (tests/support/skip.rs names the conditions a test may skip for); a skip
# of any other kind fails the run.
#
#   scripts/test.sh          the contributor's check (minutes)
#   scripts/test.sh --full   also the benches in their quick mode and the
#                            fuzz targets for a few seconds each, so that
#                            neither rots: what CI runs (.ci/run)
#
# The adversarial suite's races run a few seconds each;
# SELFDUMP_LONG_RACES=1 runs their long form (tens of seconds each).
# SELFDUMP_TEST_JOBS (default 4): test binaries run at once.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (sudo $0): the tests drive CRIU" >&2; exit 1; }
source scripts/own-session.sh
source scripts/seaweedfs.sh
own_session scripts/test.sh "$@"
full=false
case "${1:-}" in
    --full) full=true ;;
    "") ;;
    *) echo "usage: scripts/test.sh [--full]" >&2; exit 2 ;;
esac
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
    local name=$1 started status=0
    shift
    started=$(date +%s)
    "$@" || status=$?
    times+=("$name $(( $(date +%s) - started )) s")
    return "$status"
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

# Clippy's lints run as the compiler of this crate's own targets, as
# `cargo clippy` runs them (RUSTC_WORKSPACE_WRAPPER=clippy-driver, warnings
# denied): one build both lints (every target, every feature: what
# `cargo clippy --all-targets --all-features -- -D warnings` checks) and
# makes the binaries, where a `cargo clippy` would check every dependency
# again. (A plain `cargo test` afterwards recompiles this crate's targets,
# not the dependencies: the compiler is part of cargo's fingerprint.)
RUSTC_WORKSPACE_WRAPPER=$(rustc --print sysroot)/bin/clippy-driver
CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# Without incremental compilation: the crate's targets built from scratch
# took 48 s instead of 66 s here, and after an edit to the library all of
# them are rebuilt anyway.
CARGO_INCREMENTAL=0
export RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS CARGO_INCREMENTAL
step fmt cargo fmt --check
if $full; then
    # CI also runs `cargo clippy` itself (its own target directory: cargo
    # holds a build directory's lock for a whole command) and builds the
    # fuzz targets (instrumented, in theirs), both beside the tests, which
    # mostly wait on CRIU and must pass under load
    clippy_log=$(mktemp /tmp/selfdump-clippy.XXXXXX)
    clippy_started=$(date +%s)
    (unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
     CARGO_TARGET_DIR=target/clippy cargo clippy --all-targets --all-features --quiet -- -D warnings) \
        >"$clippy_log" 2>&1 &
    clippy=$!
    fuzz_build_log=$(mktemp /tmp/selfdump-fuzz-build.XXXXXX)
    (unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS; bash scripts/fuzz.sh --quick --build-only) \
        >"$fuzz_build_log" 2>&1 &
    fuzz_build=$!
fi
tests_status=0
# builds every target and runs each test binary as soon as it and the
# programs the tests run are built ("built in N s" says when cargo was done)
step build+tests python3 scripts/run-tests.py || tests_status=$?
if $full; then
    clippy_status=0
    wait "$clippy" || clippy_status=$?
    times+=("cargo clippy (beside the tests) $(($(date +%s) - clippy_started)) s")
    if [ "$clippy_status" != 0 ]; then
        cat "$clippy_log" >&2
        echo "test.sh: cargo clippy found warnings" >&2
        exit 1
    fi
    if ! wait "$fuzz_build"; then
        cat "$fuzz_build_log" >&2
        echo "test.sh: building the fuzz targets failed" >&2
        exit 1
    fi
    rm -f "$clippy_log" "$fuzz_build_log"
fi
[ "$tests_status" = 0 ] || exit 1
if $full; then
    step benches bash scripts/bench.sh --quick
    step fuzz bash scripts/fuzz.sh --quick
fi
