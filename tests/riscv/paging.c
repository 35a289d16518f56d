/* Sv39 paging (and Sv48 over the same tables): M-mode builds the page
 * tables, delegates page faults to S and drops to S-mode, where the
 * program runs with translation on: loads, stores and fetches through
 * 4 KiB pages, megapages and a gigapage; the faults each permission
 * combination raises, with scause, sepc and stval; the accessed and dirty
 * bits the hardware sets (QEMU updates A/D in the page table, it does not
 * fault); MXR and SUM; a misaligned superpage; sfence.vma after a remap;
 * satp's mode field. */
#include "rt.h"

#define PTE_V (1UL << 0)
#define PTE_R (1UL << 1)
#define PTE_W (1UL << 2)
#define PTE_X (1UL << 3)
#define PTE_U (1UL << 4)
#define PTE_G (1UL << 5)
#define PTE_A (1UL << 6)
#define PTE_D (1UL << 7)
#define PTE(pa, flags) ((((uint64_t)(pa)) >> 12) << 10 | (flags))
#define SATP_SV39 (8UL << 60)
#define SATP_SV48 (9UL << 60)

typedef uint64_t table[512] __attribute__((aligned(4096)));
static table root, root48, l1_low, l1_test, l0_test;
static uint8_t tpage[8][4096] __attribute__((aligned(4096)));

#define TVA(i) (0xC0000000UL + (uint64_t)(i) * 4096)
#define RWXAD (PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D)

static void build_tables(void)
{
    root[0] = PTE(l1_low, PTE_V);
    l1_low[0] = PTE(0, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D);           /* finisher */
    l1_low[0x10] = PTE(CLINT_BASE, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D);
    l1_low[0x80] = PTE(UART_BASE, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D);
    root[2] = PTE(0x80000000UL, RWXAD);                                  /* RAM, 1 GiB */
    root[3] = PTE(l1_test, PTE_V);
    l1_test[0] = PTE(l0_test, PTE_V);
    /* A megapage whose PPN[0] is not zero: misaligned, must fault. */
    l1_test[1] = PTE(0x80000000UL + 4096, RWXAD);
    /* W without R is reserved. */
    l1_test[2] = PTE(0x80000000UL, PTE_V | PTE_W | PTE_A | PTE_D);
    l0_test[0] = PTE(tpage[0], PTE_V | PTE_R | PTE_W);                   /* A=0 D=0 */
    l0_test[1] = PTE(tpage[1], PTE_V | PTE_R | PTE_A | PTE_D);           /* read-only */
    l0_test[2] = PTE(tpage[2], PTE_R | PTE_W | PTE_A | PTE_D);           /* not valid */
    l0_test[3] = PTE(tpage[3], PTE_V | PTE_X | PTE_A);                   /* execute-only */
    l0_test[4] = PTE(tpage[4], PTE_V | PTE_R | PTE_W | PTE_U | PTE_A | PTE_D | PTE_X);
    l0_test[5] = PTE(tpage[5], RWXAD);
    l0_test[6] = PTE(tpage[6], PTE_V | PTE_R | PTE_W | PTE_A | PTE_D);
    l0_test[7] = PTE(tpage[7], PTE_V);                                   /* non-leaf at level 0 */
    /* Sv48: one more level above the same tables. */
    root48[0] = PTE(root, PTE_V);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4096; j += 8)
            *(uint64_t *)&tpage[i][j] = 0x1000000000000000UL * (uint64_t)i + (uint64_t)j;
    /* Page 5 holds a function: li a0, 42; ret. */
    ((uint32_t *)tpage[5])[0] = 0x02a00513;
    ((uint32_t *)tpage[5])[1] = 0x00008067;
    asm volatile("fence.i" ::: "memory");
}

static uint64_t load(uint64_t va)
{
    uint64_t v = 0xbad;
    asm volatile("ld %0, 0(%1)" : "+r"(v) : "r"(va) : "memory");
    return v;
}

static void store(uint64_t va, uint64_t v)
{
    asm volatile("sd %0, 0(%1)" :: "r"(v), "r"(va) : "memory");
}

static uint64_t call(uint64_t va)
{
    uint64_t r = 0xbad;
    asm volatile("mv a0, %1\njalr ra, 0(%2)\nmv %0, a0" : "=r"(r) : "r"(r), "r"(va)
                 : "ra", "a0", "memory");
    return r;
}

#define TRY_LOAD(what, va) do { rt_expect_trap(); uint64_t _v = load(va); \
    unsigned _n = rt_traps_taken(); \
    printf("%s: traps=%u value=%lx scause=%lx stval=%lx\n", what, _n, _n ? 0 : _v, \
           _n ? rt_last_trap.cause : 0, _n ? rt_last_trap.tval : 0); } while (0)
#define TRY_STORE(what, va, v) do { rt_expect_trap(); store(va, v); \
    unsigned _n = rt_traps_taken(); \
    printf("%s: traps=%u scause=%lx stval=%lx\n", what, _n, _n ? rt_last_trap.cause : 0, \
           _n ? rt_last_trap.tval : 0); } while (0)
#define TRY_CALL(what, va) do { rt_expect_trap(); uint64_t _v = call(va); \
    unsigned _n = rt_traps_taken(); \
    printf("%s: traps=%u value=%lx scause=%lx stval=%lx\n", what, _n, _n ? 0 : _v, \
           _n ? rt_last_trap.cause : 0, _n ? rt_last_trap.tval : 0); } while (0)

static void s_main(void)
{
    printf("in S-mode, satp=%lx\n", csr_read(satp) >> 60);
    uint64_t sp;
    asm volatile("mv %0, sp" : "=r"(sp));
    /* Accessed and dirty bits. */
    printf("pte0 before: %lx\n", l0_test[0] & 0xff);
    TRY_LOAD("load page0 (A=0)", TVA(0) + 16);
    printf("pte0 after load: %lx\n", l0_test[0] & 0xff);
    TRY_STORE("store page0 (D=0)", TVA(0) + 24, 0x5555);
    printf("pte0 after store: %lx mem=%lx\n", l0_test[0] & 0xff, *(uint64_t *)&tpage[0][24]);
    /* Permissions. */
    TRY_LOAD("load read-only page", TVA(1) + 8);
    TRY_STORE("store read-only page", TVA(1) + 0x10, 1);
    TRY_LOAD("load invalid page", TVA(2) + 0x123);
    TRY_STORE("store invalid page", TVA(2) + 0x800, 1);
    TRY_LOAD("load execute-only page", TVA(3) + 8);
    csr_set(sstatus, 1UL << 19);   /* MXR */
    TRY_LOAD("load execute-only page with MXR", TVA(3) + 8);
    csr_clear(sstatus, 1UL << 19);
    TRY_LOAD("S load from U page", TVA(4) + 8);
    TRY_STORE("S store to U page", TVA(4) + 8, 2);
    csr_set(sstatus, 1UL << 18);   /* SUM */
    /* The fetch first: QEMU 7.2 lets a fetch hit the TLB entry a SUM load
     * left behind (S never executes U pages, SUM or not). */
    TRY_CALL("S fetch from U page with SUM", TVA(4));
    TRY_LOAD("S load from U page with SUM", TVA(4) + 8);
    csr_clear(sstatus, 1UL << 18);
    TRY_CALL("fetch from RWX page", TVA(5));
    TRY_CALL("fetch from read-only page", TVA(1));
    TRY_CALL("fetch from invalid page", TVA(2) + 0x40);
    TRY_LOAD("load via level-0 non-leaf", TVA(7));
    TRY_LOAD("load misaligned megapage", 0xC0200000UL + 8);
    TRY_LOAD("load W-only megapage", 0xC0400000UL + 8);
    TRY_LOAD("load unmapped VA", 0xC0600000UL);
    TRY_LOAD("load non-canonical VA", 0x0000004000000000UL);
    TRY_LOAD("load gigapage RAM", (uint64_t)&tpage[6][8]);
    /* Remap page 6 to the memory of page 7; after sfence.vma the new
     * translation must be used. */
    TRY_LOAD("load page6", TVA(6) + 8);
    l0_test[6] = PTE(tpage[7], PTE_V | PTE_R | PTE_W | PTE_A | PTE_D);
    asm volatile("sfence.vma %0, zero" :: "r"(TVA(6)) : "memory");
    TRY_LOAD("load page6 remapped", TVA(6) + 8);
    l0_test[6] = PTE(tpage[6], PTE_V | PTE_R | PTE_W | PTE_A | PTE_D);
    asm volatile("sfence.vma" ::: "memory");
    TRY_LOAD("load page6 mapped back", TVA(6) + 8);
    /* Sv48 over the same tables. */
    csr_write(satp, SATP_SV48 | ((uint64_t)root48 >> 12));
    asm volatile("sfence.vma" ::: "memory");
    printf("satp mode after Sv48 write: %lx\n", csr_read(satp) >> 60);
    TRY_LOAD("Sv48 load page6", TVA(6) + 16);
    TRY_LOAD("Sv48 load invalid page", TVA(2) + 0x10);
    /* A reserved mode value leaves satp unchanged. */
    csr_write(satp, (7UL << 60) | 1);
    printf("satp mode after reserved write: %lx\n", csr_read(satp) >> 60);
    csr_write(satp, SATP_SV39 | ((uint64_t)root >> 12));
    asm volatile("sfence.vma" ::: "memory");
    /* Back to M. */
    rt_expect_trap();
    asm volatile("li a7, %0\necall" :: "i"(RT_ECALL_TO_M) : "a7");
    rt_print_trap("ecall from S to M");
}

int main(void)
{
    printf("paging: start\n");
    build_tables();
    csr_write(pmpaddr0, ~0UL >> 10);
    csr_write(pmpcfg0, 0x1f);
    csr_write(medeleg, (1UL << 12) | (1UL << 13) | (1UL << 15));
    csr_write(stvec, (uint64_t)s_trap_vector);
    csr_write(satp, SATP_SV39 | ((uint64_t)root >> 12));
    asm volatile("sfence.vma" ::: "memory");
    /* mret into S at s_main, returning to here afterwards. */
    asm volatile("li t0, 3 << 11\ncsrc mstatus, t0\nli t0, 1 << 11\ncsrs mstatus, t0\n"
                 "csrw mepc, %0\nla ra, 1f\nmret\n1:"
                 :: "r"(s_main) : "t0", "ra", "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7",
                    "t1", "t2", "t3", "t4", "t5", "t6", "memory");
    printf("back in M, satp mode=%lx\n", csr_read(satp) >> 60);
    csr_write(satp, 0);
    asm volatile("sfence.vma" ::: "memory");
    return 0;
}
