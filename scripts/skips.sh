#!/usr/bin/env bash
# Prints the skips a test run recorded (scripts/test.sh passes the log) and
# fails when one is of a kind tests/support/skip.rs does not name, or when
# a source file prints a skip of its own instead of calling that file's
# `skip()` (such a skip would never reach the log).
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
# "SKIP" in the Rust sources anywhere but the one file that prints skips
by_hand=$(grep -rn --include='*.rs' 'SKIP' src tests benches examples fuzz 2>/dev/null |
    grep -v '^tests/support/skip\.rs:')
if [ -n "$by_hand" ]; then
    echo "skips printed by hand, not through tests/support/skip.rs's skip() (a failure):" >&2
    echo "$by_hand" | sed 's/^/  /' >&2
    status=1
fi
exit $status
