#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan in
# build-fuzz/, then runs each for SECONDS (default $LIVEMIG_FUZZ_SECONDS,
# else 60).  0 seconds replays the seed corpora only.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     TARGET: stream, qmp (default both)
#
# Each target starts from its committed seeds (tests/fuzz/corpus/TARGET,
# regression inputs included) plus what earlier runs found
# (build-fuzz/fuzz/TARGET/corpus); the stream target also from streams
# generated now by the current source side.  A crash, a sanitizer report,
# a hang (libFuzzer's -timeout) or an abort from a target's own checks
# fails the target: its input is left in build-fuzz/fuzz/TARGET/ and the
# end of its log is printed.  Reproduce with
#   build-fuzz/tests/fuzz/fuzz-TARGET FILE
# Results go to build-fuzz/fuzz-results.json for scripts/summary.py.
# Ends with "fuzz: N passed, N failed"; exits non-zero when one failed.
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-${LIVEMIG_FUZZ_SECONDS:-60}}
shift $(( $# > 0 ? 1 : 0 ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(stream qmp)
case "$seconds" in
    ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a number, not '$seconds'" >&2; exit 2 ;;
esac

build=build-fuzz
if [ ! -f "$build/build.ninja" ]; then
    CC=clang meson setup "$build" -Dwerror=true -Dfuzz=true -Dtests=false \
        -Db_sanitize=address,undefined -Db_lundef=false >/dev/null || exit 1
fi
ninja -C "$build" tests/fuzz/gen-stream-corpus $(printf 'tests/fuzz/fuzz-%s ' "${targets[@]}") \
    >/dev/null || { ninja -C "$build" 2>&1 | tail -30; exit 1; }

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

results="$build/fuzz-results.json"
: > "$results"
passed=0
failed=0
for t in "${targets[@]}"; do
    bin="$build/tests/fuzz/fuzz-$t"
    seeds="tests/fuzz/corpus/$t"
    work="$build/fuzz/$t"
    mkdir -p "$work/corpus"
    dirs=("$work/corpus" "$seeds")
    if [ "$t" = stream ]; then
        rm -rf "$work/fresh" && mkdir -p "$work/fresh"
        "$build/tests/fuzz/gen-stream-corpus" "$work/fresh" >/dev/null || exit 1
        dirs+=("$work/fresh")
    fi
    log="$work/fuzz.log"
    if [ "$seconds" -eq 0 ]; then
        limit=(-runs=0)
    else
        limit=(-max_total_time="$seconds")
    fi
    rm -f "$work"/crash-* "$work"/timeout-* "$work"/oom-* "$work"/leak-*
    start=$(date +%s)
    "$bin" "${limit[@]}" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$work/" "${dirs[@]}" > "$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        echo "fuzz-$t: ok, ${execs:-?} inputs in ${took}s (${cov:-cov: ?})"
        result=OK
    else
        failed=$((failed + 1))
        echo "fuzz-$t: FAILED (exit $rc after ${took}s); the end of $log:"
        tail -60 "$log"
        ls "$work"/crash-* "$work"/timeout-* "$work"/oom-* "$work"/leak-* 2>/dev/null |
            sed 's/^/  input: /'
        result=FAIL
    fi
    printf '{"name": "fuzz-%s", "result": "%s", "duration": %s}\n' "$t" "$result" "$took" >> "$results"
done
echo "fuzz: $passed passed, $failed failed"
[ $failed -eq 0 ]
