#!/usr/bin/env bash
# Prints the skips a test run recorded (scripts/test.sh passes the log) and
# fails when one is of a kind tests/support/skip.rs does not name.
set -uo pipefail
log=${1:?usage: skips.sh SKIP_LOG}
cd "$(dirname "$0")/.."
known=$(sed -n 's/^ *Self::[A-Za-z0-9]* => "\([a-z0-9-]*\)",$/\1/p' tests/support/skip.rs)
status=0
count=$(grep -c '^SKIPPED \[' "$log" 2>/dev/null || true)
echo
echo "== skips: ${count:-0} =="
while IFS= read -r line; do
    [ -n "$line" ] || continue
    echo "  $line"
    kind=$(sed -n 's/^SKIPPED \[\([a-z0-9-]*\)\].*/\1/p' <<<"$line")
    if ! grep -qx -- "$kind" <<<"$known"; then
        echo "  ^ not a condition tests/support/skip.rs names: a failure" >&2
        status=1
    fi
done <"$log"
exit $status
