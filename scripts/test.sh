#!/usr/bin/env bash
# The test command: installs what the tests need (CRIU >= 4 included) on a
# fresh Debian bookworm machine, then runs every test against the real CRIU.
# Must run as root: the service under test drives CRIU, which needs root.
# Starts a local SeaweedFS (scripts/seaweedfs.sh: loopback only, stopped by
# pid at the end, whatever happens) for the store tests, which also run
# against file:// roots.
# Ends with the list of skips (tests/support/skip.rs names the conditions a
# test may skip for); a skip of any other kind fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (sudo $0): the tests drive CRIU" >&2; exit 1; }
source scripts/own-session.sh
source scripts/seaweedfs.sh
own_session scripts/test.sh "$@"
bash scripts/install-criu.sh
bash scripts/install-test-tools.sh
export PATH="/usr/local/sbin:$PATH"

SELFDUMP_SKIP_LOG=$(mktemp /tmp/selfdump-skips.XXXXXX)
export SELFDUMP_SKIP_LOG
report_skips() {
    local status=$?
    seaweedfs_stop
    bash scripts/skips.sh "$SELFDUMP_SKIP_LOG" || status=1
    rm -f "$SELFDUMP_SKIP_LOG"
    exit "$status"
}
trap report_skips EXIT
trap 'exit 130' INT TERM

seaweedfs_start

cargo fmt --check
cargo clippy --all-targets --all-features --quiet -- -D warnings
cargo test --all-features
