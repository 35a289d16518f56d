#!/usr/bin/env bash
# One command: install what is missing, build, and run the live-migration
# demo (two livemig-vm on this host, migrated live, memory verified).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
livemig_install_deps
livemig_setup build
ninja -C build >/dev/null
exec build/livemig demo "$@"
