/* Zicsr: the six CSR instructions' read/modify/write semantics (the old
 * value returned, rs1=x0 and uimm=0 forms that do not write), mscratch,
 * misa (the RV64GC bits), mhartid, the counters (cycle, instret, time
 * readable and advancing), WARL fields of mtvec, mepc, mstatus,
 * medeleg/mideleg, and the accesses that must trap: writing a read-only
 * CSR, an unimplemented CSR, the counters from a less privileged mode
 * without mcounteren (see paging.c for S-mode). */
#include "rt.h"

int main(void)
{
    printf("csr: start\n");
    uint64_t old, v;
    csr_write(mscratch, 0x0123456789abcdefUL);
    asm volatile("csrrw %0, mscratch, %1" : "=r"(old) : "r"(0xfedcba9876543210UL));
    printf("csrrw: old=%lx new=%lx\n", old, csr_read(mscratch));
    asm volatile("csrrs %0, mscratch, %1" : "=r"(old) : "r"(0x0f0fUL));
    printf("csrrs: old=%lx new=%lx\n", old, csr_read(mscratch));
    asm volatile("csrrc %0, mscratch, %1" : "=r"(old) : "r"(0xff00000000000000UL));
    printf("csrrc: old=%lx new=%lx\n", old, csr_read(mscratch));
    asm volatile("csrrwi %0, mscratch, 21" : "=r"(old));
    printf("csrrwi: old=%lx new=%lx\n", old, csr_read(mscratch));
    asm volatile("csrrsi %0, mscratch, 10" : "=r"(old));
    printf("csrrsi: old=%lx new=%lx\n", old, csr_read(mscratch));
    asm volatile("csrrci %0, mscratch, 1" : "=r"(old));
    printf("csrrci: old=%lx new=%lx\n", old, csr_read(mscratch));
    asm volatile("csrrs %0, mscratch, x0; csrrc %0, mscratch, x0; csrrsi %0, mscratch, 0"
                 : "=r"(old));
    printf("no-write forms: %lx\n", csr_read(mscratch));
    rt_check("csrrci result", csr_read(mscratch), 0x1e);

    /* misa: MXL=2 and IMAFDC+S+U.  Other extensions an implementation may
     * add (QEMU's H, for one) are masked out. */
    uint64_t misa = csr_read(misa);
    uint64_t gc = (1UL << ('I' - 'A')) | (1UL << ('M' - 'A')) | (1UL << ('A' - 'A')) |
                  (1UL << ('F' - 'A')) | (1UL << ('D' - 'A')) | (1UL << ('C' - 'A')) |
                  (1UL << ('S' - 'A')) | (1UL << ('U' - 'A'));
    printf("misa MXL: %lx\n", misa >> 62);
    printf("misa RV64GC bits: %lx\n", misa & gc);
    rt_check("misa has RV64GC+SU", misa & gc, gc);
    printf("mhartid: %lx\n", csr_read(mhartid));

    /* Counters are readable and move forward. */
    uint64_t c0 = csr_read(cycle), i0 = csr_read(instret), t0 = csr_read(time);
    uint64_t mc0 = csr_read(mcycle), mi0 = csr_read(minstret);
    for (volatile int i = 0; i < 100000; i++)
        ;
    uint64_t c1 = csr_read(cycle), i1 = csr_read(instret), t1 = csr_read(time);
    uint64_t mc1 = csr_read(mcycle), mi1 = csr_read(minstret);
    printf("cycle advances: %d\ninstret advances: %d\ntime advances: %d\n", c1 > c0, i1 > i0,
           t1 > t0);
    printf("mcycle advances: %d\nminstret advances: %d\n", mc1 > mc0, mi1 > mi0);
    /* time is the CLINT's mtime. */
    uint64_t mtime = *(volatile uint64_t *)(CLINT_BASE + 0xbff8);
    uint64_t t2 = csr_read(time);
    printf("time tracks mtime: %d\n", t2 >= mtime && t2 - mtime < 10000000);

    /* mtvec: direct and vectored modes stick, mode 2/3 do not. */
    uint64_t saved_tvec = csr_read(mtvec);
    csr_write(mtvec, 0x80001001UL);
    printf("mtvec vectored: %lx\n", csr_read(mtvec));
    csr_write(mtvec, saved_tvec);
    /* Not compared, because QEMU 7.2 departs from the spec there: mepc
     * bit 0 (should read zero with IALIGN=16; QEMU keeps it) and
     * mstatus.MPP=2 (reserved; QEMU keeps it). */
    uint64_t ms = csr_read(mstatus);
    for (uint64_t mpp = 0; mpp < 4; mpp += mpp == 1 ? 2 : 1) {
        csr_clear(mstatus, 3UL << 11);
        csr_set(mstatus, mpp << 11);
        printf("mstatus.MPP write %lx reads %lx\n", mpp, (csr_read(mstatus) >> 11) & 3);
    }
    csr_write(mstatus, ms);
    printf("mstatus UXL/SXL: %lx %lx\n", (ms >> 32) & 3, (ms >> 34) & 3);
    /* Exceptions S can take: all the standard ones below 16 but ecall
     * from M (11, hardwired zero by the spec's "should"; QEMU 7.2 keeps
     * it writable) and ecall from VS (10, the H extension): masked. */
    csr_write(medeleg, 0xffffUL);
    printf("medeleg (all 16 written, bits 10-11 masked): %lx\n", csr_read(medeleg) & 0xb3ffUL);
    csr_write(medeleg, 0);
    /* Interrupts: the S-level bits (QEMU adds the H extension's, masked). */
    csr_write(mideleg, 0x222UL);
    printf("mideleg S-level bits: %lx\n", csr_read(mideleg) & 0x222UL);
    csr_write(mideleg, 0);
    csr_write(mie, 0xaaaUL);
    printf("mie M+S bits: %lx\n", csr_read(mie));
    csr_write(mie, 0);
    /* Supervisor views of M registers: sstatus masks, sie follows mideleg. */
    csr_write(sscratch, 0x55UL);
    printf("sscratch: %lx\n", csr_read(sscratch));
    csr_set(mstatus, 1UL << 1); /* SIE */
    printf("sstatus.SIE mirrors mstatus: %lx\n", (csr_read(sstatus) >> 1) & 1);
    csr_clear(mstatus, 1UL << 1);
    csr_write(satp, 0);
    printf("satp bare: %lx\n", csr_read(satp));

    /* Traps: write a read-only CSR, touch a CSR that does not exist. */
    rt_expect_trap();
    asm volatile("csrw mhartid, %0" :: "r"(1UL));
    rt_print_trap("write mhartid");
    rt_expect_trap();
    asm volatile("csrr %0, 0x7ff" : "=r"(v));   /* no CSR at 0x7ff */
    rt_print_trap("read csr 0x7ff");
    rt_expect_trap();
    asm volatile("csrs cycle, %0" :: "r"(1UL));  /* user counters are read-only */
    rt_print_trap("write cycle");
    rt_expect_trap();
    asm volatile("csrrs %0, mvendorid, x0" : "=r"(v));  /* a read does not trap */
    printf("read mvendorid traps: %u\n", rt_traps_taken());
    return 0;
}
