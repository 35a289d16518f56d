/* Entry point and trap vectors of the bare-metal test programs.
 * Hart 0 runs main() in M-mode; other harts park in wfi.  Both trap
 * vectors save every integer register in a frame on the current stack
 * and call rt_trap(cause, epc, tval, frame, mode), which returns the pc
 * to resume at (rt.c decides: skip the instruction, or return to ra). */
#include "rt_asm.h"

    .section .text.init, "ax"
    .globl _start
_start:
    csrw    mie, zero
    csrr    t0, mhartid
    bnez    t0, park
    .option push
    .option norelax
    la      gp, __global_pointer$
    .option pop
    la      sp, __stack_top
    la      t0, m_trap_vector
    csrw    mtvec, t0
    la      t0, __bss_start
    la      t1, __bss_end
1:  bgeu    t0, t1, 2f
    sd      zero, 0(t0)
    addi    t0, t0, 8
    j       1b
2:  li      t0, (1 << 13)          /* mstatus.FS = Initial: FP on */
    csrs    mstatus, t0
    csrw    fcsr, zero
    call    main
    tail    rt_exit
park:
    wfi
    j       park

/* TRAP_VECTOR name, csr-prefix (m or s), return instruction */
.macro TRAP_VECTOR name, p, ret, mode
    .balign 4
    .globl \name
\name:
    addi    sp, sp, -FRAME_SIZE
    SAVE_GPRS
    addi    t0, sp, FRAME_SIZE
    sd      t0, 2*8(sp)             /* the interrupted sp */
    csrr    a0, \p\()cause
    csrr    a1, \p\()epc
    csrr    a2, \p\()tval
    mv      a3, sp
    li      a4, \mode
    call    rt_trap
    csrw    \p\()epc, a0
    RESTORE_GPRS
    addi    sp, sp, FRAME_SIZE
    \ret
.endm

    .text
    TRAP_VECTOR m_trap_vector, m, mret, 3
    TRAP_VECTOR s_trap_vector, s, sret, 1
