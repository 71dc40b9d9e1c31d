#!/usr/bin/env bash
# The main job: a program counts, checkpoints itself through the selfdump
# service, is killed, and is restored from its images, going on from where
# it checkpointed and saying it was restored. Run as root on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (sudo $0)" >&2; exit 1; }
source scripts/own-session.sh
own_session scripts/demo.sh "$@"
bash scripts/install-criu.sh
export PATH="/usr/local/sbin:$PATH"
cargo build --quiet --features cli --bin selfdump --example counter
bin=target/debug/selfdump counter=target/debug/examples/counter

work=$(mktemp -d /tmp/selfdump-demo.XXXXXX)
socket=$work/selfdump.sock images=$work/images log=$work/counter.log
mkdir -p "$images"
step() { printf '\n== %s\n' "$*"; }
# (each kill may find its process gone already; under set -e a failing
# command in the EXIT trap would become the script's exit status)
cleanup() { for pid in ${server:-} ${restored:-}; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

step "starting the service: selfdump serve --socket $socket"
RUST_LOG=info "$bin" serve --socket "$socket" 2>"$work/serve.log" &
server=$!
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { cat "$work/serve.log"; exit 1; }

step "running the counter; it checkpoints itself at 5 (output appended to $log)"
"$counter" --images "$images" --socket "$socket" --at 5 --until 12 --interval-ms 300 >>"$log" 2>&1 &
app=$!
until grep -q "^count 8$" "$log"; do sleep 0.1; done
cat "$log"

step "killing the counter (pid $app) at count 8"
kill -9 "$app"; wait "$app" 2>/dev/null || true
ls -l "$images" | head -n 8; echo "..."

step "restoring it: selfdump restore $images"
restored=$("$bin" restore "$images")
echo "restored as pid $restored (the original pid was $app)"
until grep -q "^done$" "$log"; do sleep 0.1; done

step "the whole output: the copy says it was restored and counts on from 5"
cat "$log"
grep -q "^checkpoint restored" "$log" && sed -n '/^checkpoint restored/,$p' "$log" | grep -q "^count 6$"
step "service log"
cat "$work/serve.log"
echo; echo "demo: OK (checkpoint at 5, killed at 8, restored copy went on from 6)"
