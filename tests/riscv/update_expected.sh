#!/usr/bin/env bash
# Records tests/riscv/expected/PROG.txt from Debian's QEMU for every test
# program built in DIR (meson: BUILD/tests/riscv).  Review the diff before
# committing: the expected files are what livemig-vm must reproduce.
#   tests/riscv/update_expected.sh BUILD/tests/riscv
set -euo pipefail
dir=${1:?usage: update_expected.sh PROGRAM_DIR}
here=$(cd "$(dirname "$0")" && pwd)
for p in alu muldiv atomic fp rvc csr trap paging speed_short; do
    "$here/run_qemu.sh" "$dir/$p.bin" 600 >"$here/expected/$p.txt"
    echo "$p: $(wc -l <"$here/expected/$p.txt") lines"
done
