#!/usr/bin/env bash
# Runs one bare-metal test program under Debian's QEMU (qemu-system-riscv64
# -M virt, TCG) and prints its console output on stdout.
#   tests/riscv/run_qemu.sh PROG.bin|PROG.elf [TIMEOUT_SECONDS]
# The image is loaded as the machine's firmware (-bios), so it starts at
# 0x80000000 in M-mode exactly as with livemig-vm --machine riscv-virt
# --bios PROG.bin.  Exit status: 0 when the program passed through the test
# finisher (QEMU exits 0 on 0x5555), QEMU's status otherwise (the finisher's
# fail code), 124 on timeout.
set -euo pipefail
prog=${1:?usage: run_qemu.sh PROG.bin|PROG.elf [TIMEOUT]}
limit=${2:-60}
qemu=${QEMU_RISCV64:-qemu-system-riscv64}
exec timeout --kill-after=5 "$limit" "$qemu" -M virt -smp 1 -m 128M -nographic \
    -monitor none -serial stdio -bios "$prog" </dev/null
