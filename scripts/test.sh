#!/usr/bin/env bash
# One command: install what is missing, build (warnings are errors), run
# every test, then build again with ASan/UBSan and run the tests there.
# Ends with the line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
# The RISC-V machine's checks (OpenSBI, U-Boot, the cross compiler for the
# instruction tests, QEMU to compare with) are part of the suite; set
# LIVEMIG_RISCV_TESTS=0 to skip installing them (those tests then skip,
# saying why).
export LIVEMIG_RISCV_TESTS=${LIVEMIG_RISCV_TESTS:-1}
livemig_install_deps

status=0
livemig_setup build || exit 1
ninja -C build || exit 1
meson test -C build --print-errorlogs --num-processes 1 || status=1

if [ "${LIVEMIG_SKIP_SANITIZERS:-0}" != 1 ]; then
    # Sanitizers: ASan + UBSan over the unit suite and the integration
    # tests (the reference machine and the CLI are built with them too).
    livemig_setup build-asan -Db_sanitize=address,undefined -Db_lundef=false || exit 1
    ninja -C build-asan || exit 1
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        meson test -C build-asan --print-errorlogs --num-processes 1 || status=1
fi

# libFuzzer targets (clang, ASan/UBSan): LIVEMIG_FUZZ_SECONDS each (60; 0 skips).
rm -f build-fuzz/fuzz-results.json
if [ "${LIVEMIG_FUZZ_SECONDS:-60}" != 0 ]; then
    scripts/fuzz.sh "${LIVEMIG_FUZZ_SECONDS:-60}" || status=1
fi

python3 scripts/summary.py build build-asan build-fuzz
exit $status
