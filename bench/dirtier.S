/* A bare-metal RISC-V guest for bench/convergence.py: QEMU's guest that
 * dirties memory at a set rate, the way livemig-vm's `increment` workload
 * does (one store per 4 KiB page, sequentially over a region, for ever).
 *
 * Loaded at 0x80000000 by -bios (QEMU virt) and run by hart 0 in M-mode;
 * other harts park.  The step counter (pages written so far) is the u64 at
 * COUNTER, which the benchmark reads with `xp` to get steps per second
 * before, during and after the migration.
 *
 * Paced with the time CSR (the virt machine's 10 MHz mtime), a page every
 * TPP_X1024 / 1024 ticks (in batches of BATCH pages), but with at most BURST ticks of credit: time the
 * vCPU did not run (QEMU's auto-converge puts its thread to sleep) is not
 * made up for afterwards, so a throttled vCPU dirties less, as a guest
 * doing fixed work per unit of CPU would.  livemig-vm's workload is paced
 * the same way (a token bucket with little credit, in vCPU time).
 *
 * Build (the benchmark does it):
 *   riscv64-unknown-elf-gcc -nostdlib -nostartfiles -Wl,-Ttext=0x80000000 \
 *       -DREGION_PAGES=N -DTPP_X1024=T -o dirtier.elf dirtier.S
 */
#define COUNTER 0x80001000
#define REGION 0x80200000
#define BURST 100000 /* ticks: 10 ms, the credit livemig-vm allows too */
#define BATCH 64    /* pages per look at the clock (the time CSR is slow under TCG) */

    .section .text
    .globl _start
_start:
    csrr    t0, mhartid
    bnez    t0, park
    li      s0, REGION
    li      s1, REGION_PAGES
    li      s2, TPP_X1024 * BATCH
    li      s6, COUNTER
    li      s7, BURST * 1024
    rdtime  s3
    slli    s3, s3, 10      /* when the next page is due, ticks * 1024 */
    li      s4, 0           /* steps */
    li      s5, 0           /* next page of the region */
loop:
    rdtime  t0
    slli    t0, t0, 10
    bltu    t0, s3, loop    /* not due yet */
    bltu    t0, s7, 1f      /* less than a burst since boot */
    sub     t1, t0, s7
    bgeu    s3, t1, 1f
    mv      s3, t1          /* asleep meanwhile: no catching up */
1:  add     s3, s3, s2      /* s2: a batch's worth of ticks * 1024 */
    li      t3, BATCH
2:  slli    t2, s5, 12
    add     t2, t2, s0
    sd      s4, 0(t2)       /* dirty the page with the step's number */
    addi    s4, s4, 1
    addi    s5, s5, 1
    bltu    s5, s1, 3f
    li      s5, 0
3:  addi    t3, t3, -1
    bnez    t3, 2b
    sd      s4, 0(s6)
    j       loop
park:
    wfi
    j       park
