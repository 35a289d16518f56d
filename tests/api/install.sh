#!/usr/bin/env bash
# meson install into a temporary prefix, then build tests/api/consumer.c
# (as C) and consumer.cc (as C++) with `pkg-config --cflags --libs livemig`
# alone, and run both against the installed shared library.
# usage: install.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
meson install -C "$build" --destdir "$stage" --no-rebuild --quiet >/dev/null
pc=$(find "$stage" -name livemig.pc | head -1)
[ -n "$pc" ] || { echo "livemig.pc was not installed"; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc")
export PKG_CONFIG_SYSROOT_DIR=$stage
libdir=$(dirname "$(find "$stage" -name 'liblivemig.so' | head -1)")
flags=$(pkg-config --cflags --libs livemig)
echo "pkg-config --cflags --libs livemig: $flags"
cc -std=c11 -Wall -Wextra -Werror -o "$stage/consumer-c" "$src/tests/api/consumer.c" $flags
c++ -std=c++11 -Wall -Wextra -Werror -o "$stage/consumer-cxx" "$src/tests/api/consumer.cc" $flags
LD_LIBRARY_PATH=$libdir "$stage/consumer-c"
LD_LIBRARY_PATH=$libdir "$stage/consumer-cxx"
# The program runs against the installed library, not the build tree's.
loaded=$(LD_LIBRARY_PATH=$libdir ldd "$stage/consumer-c")
case $loaded in
    *"$libdir/liblivemig.so"*) ;;
    *) echo "consumer did not load the installed liblivemig: $loaded"; exit 1 ;;
esac
echo "installed headers, library and pkg-config file work from C and C++"
