#!/usr/bin/env bash
# Installs the Debian 12 packages livemig needs to build and test, when
# missing.  Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

LIVEMIG_PACKAGES=(gcc g++ meson ninja-build pkg-config python3 libjansson-dev libzstd-dev
                  libgnutls28-dev gnutls-bin libcmocka-dev libfdt-dev
                  libxxhash-dev clang libclang-rt-14-dev
                  gnuplot-nox) # gnuplot: `livemig timeline` draws with it
# Optional, for the RISC-V machine's checks (the core build needs none):
# the bare-metal instruction tests (tests/riscv) and QEMU to compare with,
LIVEMIG_RISCV_TEST_PACKAGES=(gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf make
                             qemu-system-misc opensbi u-boot-qemu)
# and the Linux guest (scripts/build-linux-guest.sh --install-deps).
LIVEMIG_GUEST_PACKAGES=(gcc-riscv64-linux-gnu libc6-dev-riscv64-cross linux-source-6.1
                        make bc flex bison cpio gzip xz-utils python3)

# LIVEMIG_RISCV_TESTS=1 adds LIVEMIG_RISCV_TEST_PACKAGES (otherwise the
# RISC-V instruction tests skip, saying why).
livemig_install_deps() {
    local missing=() wanted=("${LIVEMIG_PACKAGES[@]}")
    if [ "${LIVEMIG_RISCV_TESTS:-0}" = 1 ]; then
        wanted+=("${LIVEMIG_RISCV_TEST_PACKAGES[@]}")
    fi
    for p in "${wanted[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    echo "livemig: installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# meson setup DIR [OPTIONS...] once; later calls reuse the directory.
livemig_setup() {
    local dir=$1
    shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" -Dwerror=true "$@" >/dev/null
    fi
}
