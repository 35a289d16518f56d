#!/usr/bin/env bash
# Installs the Debian 12 packages livemig needs to build and test, when
# missing.  Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

LIVEMIG_PACKAGES=(gcc meson ninja-build pkg-config python3 libjansson-dev libzstd-dev
                  libgnutls28-dev libcmocka-dev clang libclang-rt-14-dev)

livemig_install_deps() {
    local missing=()
    for p in "${LIVEMIG_PACKAGES[@]}"; do
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
