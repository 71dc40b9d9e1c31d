#!/usr/bin/env bash
# The test command: installs what the tests need (CRIU >= 4 included) on a
# fresh Debian bookworm machine, then runs every test against the real CRIU.
# Must run as root: the service under test drives CRIU, which needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (sudo $0): the tests drive CRIU" >&2; exit 1; }
source scripts/own-session.sh
own_session scripts/test.sh "$@"
bash scripts/install-criu.sh
export PATH="/usr/local/sbin:$PATH"
cargo fmt --check
cargo clippy --all-targets --all-features --quiet -- -D warnings
cargo test --all-features
