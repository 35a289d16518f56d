/* M extension: every multiply, divide and remainder (W forms included)
 * over edge operands, and the corner cases the spec fixes: division by
 * zero (quotient all ones, remainder the dividend), signed overflow
 * (INT_MIN / -1 = INT_MIN, remainder 0) at 64 and 32 bits, and the high
 * halves of products of extreme values. */
#include "rt.h"

static const uint64_t vals[] = {
    0, 1, (uint64_t)-1, 2, (uint64_t)-2, 3, 0x7fffffffffffffffUL, 0x8000000000000000UL,
    0x7fffffffUL, 0x80000000UL, 0xffffffffUL, 0x123456789abcdef0UL,
    0xfedcba9876543fffUL, 0xffffffff80000000UL, 0x100000000UL, 7,
};
#define NVALS (sizeof(vals) / sizeof(vals[0]))

typedef uint64_t (*binop)(uint64_t, uint64_t);
#define RR(name) \
    static uint64_t op_##name(uint64_t a, uint64_t b) \
    { uint64_t r; asm volatile(#name " %0, %1, %2" : "=r"(r) : "r"(a), "r"(b)); return r; }
#define RR_LIST(X) X(mul) X(mulh) X(mulhsu) X(mulhu) X(div) X(divu) X(rem) X(remu) \
    X(mulw) X(divw) X(divuw) X(remw) X(remuw)
RR_LIST(RR)
#define RR_ENTRY(name) { #name, op_##name },
static const struct { const char *name; binop fn; } ops[] = { RR_LIST(RR_ENTRY) };

int main(void)
{
    printf("muldiv: start\n");
    for (unsigned o = 0; o < sizeof(ops) / sizeof(ops[0]); o++) {
        for (unsigned i = 0; i < NVALS; i++) {
            printf("%s %lx:", ops[o].name, vals[i]);
            for (unsigned j = 0; j < NVALS; j++)
                printf(" %lx", ops[o].fn(vals[i], vals[j]));
            printf("\n");
        }
    }
    const uint64_t m1 = (uint64_t)-1, imin = 0x8000000000000000UL;
    const uint64_t wmin = 0xffffffff80000000UL;
    rt_check("div by 0", op_div(5, 0), m1);
    rt_check("divu by 0", op_divu(5, 0), m1);
    rt_check("rem by 0", op_rem(5, 0), 5);
    rt_check("remu by 0", op_remu((uint64_t)-5, 0), (uint64_t)-5);
    rt_check("divw by 0", op_divw(5, 0), m1);
    rt_check("divuw by 0", op_divuw(5, 0), m1);
    rt_check("remw by 0", op_remw(0x1ffffffffUL, 0), m1);
    rt_check("remuw by 0", op_remuw(0x180000000UL, 0), wmin);
    rt_check("div overflow", op_div(imin, m1), imin);
    rt_check("rem overflow", op_rem(imin, m1), 0);
    rt_check("divw overflow", op_divw(0x80000000UL, m1), wmin);
    rt_check("remw overflow", op_remw(0x80000000UL, m1), 0);
    rt_check("mulh min*min", op_mulh(imin, imin), 0x4000000000000000UL);
    rt_check("mulhu max*max", op_mulhu(m1, m1), 0xfffffffffffffffeUL);
    rt_check("mulhsu -1*max", op_mulhsu(m1, m1), m1);
    rt_check("mulw wraps", op_mulw(0x10000UL, 0x8000UL), wmin);
    rt_check("div rounds to zero", op_div((uint64_t)-7, 2), (uint64_t)-3);
    rt_check("rem sign of dividend", op_rem((uint64_t)-7, 2), m1);
    printf("muldiv: corner cases checked\n");
    return 0;
}
