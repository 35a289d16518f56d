/* A extension: LR/SC success and failure (no reservation, another
 * address, reservation used up by a successful SC; only behaviour the
 * spec fixes, not what an implementation may choose), .w sign extension, and every AMO in .w and .d
 * with aq/rl variants: the value returned and the memory afterwards. */
#include "rt.h"

static volatile uint64_t cell[4] __attribute__((aligned(16)));
/* A page away from cell, outside any plausible reservation set. */
static volatile uint64_t far_cell[512] __attribute__((aligned(4096)));

static const uint64_t vals[] = {
    0, 1, (uint64_t)-1, 0x7fffffffffffffffUL, 0x8000000000000000UL,
    0x7fffffffUL, 0x80000000UL, 0x123456789abcdef0UL, 0xfedcba98f6543fffUL,
};
#define NVALS (sizeof(vals) / sizeof(vals[0]))

/* The names hold dots, which C identifiers cannot; spell them out. */
#define AMO_FN(insn, id) \
    static uint64_t id(volatile void *p, uint64_t v) \
    { uint64_t r; asm volatile(insn " %0, %2, (%1)" : "=r"(r) : "r"(p), "r"(v) : "memory"); return r; }
AMO_FN("amoswap.d", swap_d) AMO_FN("amoadd.d", add_d) AMO_FN("amoxor.d", xor_d)
AMO_FN("amoand.d", and_d) AMO_FN("amoor.d", or_d) AMO_FN("amomin.d", min_d)
AMO_FN("amomax.d", max_d) AMO_FN("amominu.d", minu_d) AMO_FN("amomaxu.d", maxu_d)
AMO_FN("amoswap.w", swap_w) AMO_FN("amoadd.w", add_w) AMO_FN("amoxor.w", xor_w)
AMO_FN("amoand.w", and_w) AMO_FN("amoor.w", or_w) AMO_FN("amomin.w", min_w)
AMO_FN("amomax.w", max_w) AMO_FN("amominu.w", minu_w) AMO_FN("amomaxu.w", maxu_w)
AMO_FN("amoadd.d.aq", add_d_aq) AMO_FN("amoadd.d.rl", add_d_rl)
AMO_FN("amoadd.d.aqrl", add_d_aqrl) AMO_FN("amomaxu.w.aqrl", maxu_w_aqrl)

static const struct {
    const char *name;
    uint64_t (*fn)(volatile void *, uint64_t);
    int word;
} amos[] = {
    { "amoswap.d", swap_d, 0 }, { "amoadd.d", add_d, 0 }, { "amoxor.d", xor_d, 0 },
    { "amoand.d", and_d, 0 }, { "amoor.d", or_d, 0 }, { "amomin.d", min_d, 0 },
    { "amomax.d", max_d, 0 }, { "amominu.d", minu_d, 0 }, { "amomaxu.d", maxu_d, 0 },
    { "amoswap.w", swap_w, 1 }, { "amoadd.w", add_w, 1 }, { "amoxor.w", xor_w, 1 },
    { "amoand.w", and_w, 1 }, { "amoor.w", or_w, 1 }, { "amomin.w", min_w, 1 },
    { "amomax.w", max_w, 1 }, { "amominu.w", minu_w, 1 }, { "amomaxu.w", maxu_w, 1 },
    { "amoadd.d.aq", add_d_aq, 0 }, { "amoadd.d.rl", add_d_rl, 0 },
    { "amoadd.d.aqrl", add_d_aqrl, 0 }, { "amomaxu.w.aqrl", maxu_w_aqrl, 1 },
};

static void lr_sc(void)
{
    uint64_t v, rc, rc2;
    cell[0] = 0x1111;
    asm volatile("lr.d %0, (%3); addi %0, %0, 1; sc.d %1, %0, (%3); sc.d %2, %0, (%3)"
                 : "=&r"(v), "=&r"(rc), "=&r"(rc2) : "r"(&cell[0]) : "memory");
    printf("lr/sc.d: sc=%lx again=%lx mem=%lx\n", rc, rc2, cell[0]);
    rt_check("sc.d succeeds after lr.d", rc, 0);
    rt_check("second sc.d fails", rc2 != 0, 1);

    cell[0] = 0x80000000UL | (0x5UL << 32);
    asm volatile("lr.w %0, (%2); sc.w %1, %0, (%2)"
                 : "=&r"(v), "=&r"(rc) : "r"(&cell[0]) : "memory");
    printf("lr.w sign-extends: %lx sc=%lx mem=%lx\n", v, rc, cell[0]);
    rt_check("lr.w sign extension", v, 0xffffffff80000000UL);

    /* SC with no reservation at all. */
    cell[1] = 7;
    asm volatile("sc.d %0, %1, (%2)" : "=&r"(rc) : "r"(9UL), "r"(&cell[1]) : "memory");
    printf("sc.d without lr: rc=%lx mem=%lx\n", rc, cell[1]);
    rt_check("sc without reservation leaves memory", cell[1], 7);

    /* SC to an address other than the reserved one. */
    asm volatile("lr.d %0, (%2); sc.d %1, %0, (%3)"
                 : "=&r"(v), "=&r"(rc) : "r"(&cell[0]), "r"(&far_cell[0]) : "memory");
    printf("sc.d other address: rc=%lx mem=%lx\n", rc, far_cell[0]);
    rt_check("sc.d to another address fails", rc != 0, 1);

    /* The canonical retry loop: an atomic increment. */
    cell[0] = 100;
    for (int i = 0; i < 10; i++)
        asm volatile("1: lr.d.aq %0, (%2); addi %0, %0, 3; sc.d.rl %1, %0, (%2); bnez %1, 1b"
                     : "=&r"(v), "=&r"(rc) : "r"(&cell[0]) : "memory");
    printf("lr/sc loop: %lx\n", cell[0]);
    rt_check("lr/sc loop", cell[0], 130);
}

int main(void)
{
    printf("atomic: start\n");
    lr_sc();
    for (unsigned a = 0; a < sizeof(amos) / sizeof(amos[0]); a++) {
        for (unsigned i = 0; i < NVALS; i++) {
            printf("%s %lx:", amos[a].name, vals[i]);
            for (unsigned j = 0; j < NVALS; j++) {
                /* Words live in the upper half of a doubleword whose
                 * lower half is a sentinel that must survive. */
                cell[0] = amos[a].word ? (vals[i] << 32) | 0xa5a5a5a5UL : vals[i];
                volatile void *p = amos[a].word ? (volatile void *)((volatile char *)&cell[0] + 4)
                                                : (volatile void *)&cell[0];
                uint64_t old = amos[a].fn(p, vals[j]);
                printf(" %lx/%lx", old, cell[0]);
            }
            printf("\n");
        }
    }
    return 0;
}
