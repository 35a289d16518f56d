/* A compute loop with a known instruction count, to time an emulator:
 * xorshift64 steps, multiplies and a load/add/store into a 2 KiB buffer
 * (so the store path, and a migration's dirty tracking, are in the
 * loop).  It prints how many instructions the loop retired, counted from
 * its code rather than read from instret (QEMU's TCG counts host cycles
 * there).  bench/riscv_migrate.py times the long and the short build
 * (speed, speed_short) and divides the difference in instructions by the
 * difference in time, so boot and exit costs cancel out. */
#include "rt.h"

#ifndef SPEED_ITERS
#define SPEED_ITERS 50000000UL
#endif
#define LOOP_INSNS 16   /* instructions from label 1 to the bnez, inclusive */

static uint64_t buf[256];

int main(void)
{
    uint64_t x = 0x9e3779b97f4a7c15UL, acc = 1, n = SPEED_ITERS;
    asm volatile(
        ".option push\n.option norvc\n"
        "1: slli t0, %0, 13\n"
        "   xor %0, %0, t0\n"
        "   srli t0, %0, 7\n"
        "   xor %0, %0, t0\n"
        "   slli t0, %0, 17\n"
        "   xor %0, %0, t0\n"
        "   andi t1, %0, 0x7f8\n"
        "   add t1, t1, %3\n"
        "   ld t2, 0(t1)\n"
        "   add t2, t2, %0\n"
        "   sd t2, 0(t1)\n"
        "   mul %1, %1, %0\n"
        "   ori %1, %1, 1\n"
        "   addw t2, t2, %1\n"
        "   addi %2, %2, -1\n"
        "   bnez %2, 1b\n"
        ".option pop\n"
        : "+r"(x), "+r"(acc), "+r"(n) : "r"(buf) : "t0", "t1", "t2", "memory");
    uint64_t h = acc;
    for (int i = 0; i < 256; i++)
        h = (h ^ buf[i]) * 0x100000001b3UL;
    printf("speed: iters=%lu loop-insns=%lu result=%016lx\n", (unsigned long)SPEED_ITERS,
           (unsigned long)SPEED_ITERS * LOOP_INSNS, (unsigned long)h);
    return 0;
}
