#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes (fuzz/checks.rs: frames, the
# manifest, CRIU's image entries, a whole images directory as `selfdump
# inspect` reads it). Builds the libFuzzer targets in fuzz/ with coverage
# instrumentation on the stable toolchain, without a sanitizer (selfdump is
# safe Rust: what fuzzing finds here are panics, aborts, stack overflows,
# huge allocations and hangs; `cargo fuzz` with AddressSanitizer is in
# fuzz/README.md), then runs each target for a while from its seeds.
#
#   scripts/fuzz.sh                  every target, 60 s each
#   scripts/fuzz.sh --quick          what CI runs (scripts/test.sh --full): a build
#                                    made for compile time, 5 s each
#   scripts/fuzz.sh --build-only     build them, run nothing
#   scripts/fuzz.sh --seconds 600 manifest   one target, longer
#
# A crash is written to fuzz/artifacts/<target>/ and fails the run; copy it
# to fuzz/regressions/<target>/ once fixed: tests/fuzz_inputs.rs runs it
# (and every seed) through the same check on every `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=60 build_only=0 profile=release targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) seconds=5; profile=quick; shift ;;
        --seconds) seconds=$2; shift 2 ;;
        --build-only) build_only=1; shift ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=($(sed -n 's/^    ("\([a-z_]*\)", [a-z_]*),$/\1/p' checks.rs))
host=$(rustc -vV | sed -n 's/^host: //p')
# what cargo-fuzz passes for `--sanitizer none`; with an explicit --target,
# build scripts and proc-macros are built without it
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
started=$(date +%s)
cargo build --profile "$profile" --quiet --target "$host" --bins
echo "fuzz: built ${targets[*]} in $(( $(date +%s) - started )) s"
[ "$build_only" = 1 ] && exit 0
status=0
for target in "${targets[@]}"; do
    corpus=$(mktemp -d /tmp/selfdump-fuzz-corpus.XXXXXX)
    mkdir -p "artifacts/$target"
    log=$(mktemp /tmp/selfdump-fuzz-log.XXXXXX)
    "target/$host/$profile/$target" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="artifacts/$target/" \
        "$corpus" "seeds/$target" >"$log" 2>&1 &
    pid=$!
    ran=0
    wait "$pid" || ran=$?
    # the target's scratch directories (checks.rs: scratch_dir), which its
    # exit leaves behind
    rm -rf /dev/shm/selfdump-fuzz-"$pid"-* "${TMPDIR:-/tmp}"/selfdump-fuzz-"$pid"-*
    if [ "$ran" = 0 ]; then
        echo "fuzz: $target: $(grep -E '^Done [0-9]+ runs' "$log" || tail -1 "$log")"
    else
        echo "fuzz: $target FAILED (the input is in fuzz/artifacts/$target/):" >&2
        tail -40 "$log" >&2
        status=1
    fi
    rm -rf "$corpus" "$log"
done
exit $status
