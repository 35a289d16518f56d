/* Integer ALU: every RV64I register-register and register-immediate
 * operation (W forms included), lui/auipc, loads with sign/zero
 * extension, stores of each width, branches and jumps, over operands
 * chosen at the edges (0, ±1, INT_MIN/MAX at 32 and 64 bits, shift
 * amounts 31/32/63/64). */
#include "rt.h"

static const uint64_t vals[] = {
    0, 1, (uint64_t)-1, 2, 0x7fffffffffffffffUL, 0x8000000000000000UL,
    0x7fffffffUL, 0x80000000UL, 0xffffffffUL, 0x123456789abcdef0UL,
    0xfedcba9876543fffUL, 31, 32, 63, 64, 0xffffffff80000001UL,
};
#define NVALS (sizeof(vals) / sizeof(vals[0]))

typedef uint64_t (*binop)(uint64_t, uint64_t);
#define RR(name) \
    static uint64_t op_##name(uint64_t a, uint64_t b) \
    { uint64_t r; asm volatile(#name " %0, %1, %2" : "=r"(r) : "r"(a), "r"(b)); return r; }
#define RR_LIST(X) X(add) X(sub) X(sll) X(slt) X(sltu) X(xor) X(srl) X(sra) X(or) X(and) \
    X(addw) X(subw) X(sllw) X(srlw) X(sraw)
RR_LIST(RR)
#define RR_ENTRY(name) { #name, op_##name },
static const struct { const char *name; binop fn; } rr_ops[] = { RR_LIST(RR_ENTRY) };

typedef uint64_t (*unop)(uint64_t);
#define RI(insn, imm, tag) \
    static uint64_t op_##insn##_##tag(uint64_t a) \
    { uint64_t r; asm volatile(#insn " %0, %1, %2" : "=r"(r) : "r"(a), "i"(imm)); return r; }
#define RI_LIST(X) \
    X(addi, 0, 0) X(addi, 1, 1) X(addi, -1, m1) X(addi, 2047, max) X(addi, -2048, min) \
    X(slti, 0, 0) X(slti, -1, m1) X(slti, 2047, max) X(sltiu, 1, 1) X(sltiu, -1, m1) \
    X(xori, -1, m1) X(xori, 0x555, 555) X(ori, -2048, min) X(ori, 0x0f0, f0) \
    X(andi, -1, m1) X(andi, 0x7ff, 7ff) X(andi, -16, m16) \
    X(slli, 0, 0) X(slli, 1, 1) X(slli, 31, 31) X(slli, 32, 32) X(slli, 63, 63) \
    X(srli, 0, 0) X(srli, 1, 1) X(srli, 31, 31) X(srli, 32, 32) X(srli, 63, 63) \
    X(srai, 0, 0) X(srai, 1, 1) X(srai, 31, 31) X(srai, 32, 32) X(srai, 63, 63) \
    X(addiw, 0, 0) X(addiw, 1, 1) X(addiw, -1, m1) X(addiw, 2047, max) X(addiw, -2048, min) \
    X(slliw, 0, 0) X(slliw, 1, 1) X(slliw, 31, 31) X(srliw, 0, 0) X(srliw, 1, 1) \
    X(srliw, 31, 31) X(sraiw, 0, 0) X(sraiw, 1, 1) X(sraiw, 31, 31)
RI_LIST(RI)
#define RI_ENTRY(insn, imm, tag) { #insn " " #imm, op_##insn##_##tag },
static const struct { const char *name; unop fn; } ri_ops[] = { RI_LIST(RI_ENTRY) };

static uint64_t hash;
static void mix(uint64_t v) { hash = (hash ^ v) * 0x100000001b3UL; }

static void loads_stores(void)
{
    static volatile uint64_t mem[4];
    mem[0] = 0x8081828384858687UL;
    mem[1] = 0xf0e0d0c0b0a09080UL;
    const volatile uint8_t *p = (const volatile uint8_t *)mem;
    for (int off = 0; off < 16; off += 1) {
        uint64_t lb, lbu, lh = 0, lhu = 0, lw = 0, lwu = 0, ld = 0;
        asm volatile("lb %0, 0(%2); lbu %1, 0(%2)" : "=&r"(lb), "=&r"(lbu) : "r"(p + off));
        if (off % 2 == 0)
            asm volatile("lh %0, 0(%2); lhu %1, 0(%2)" : "=&r"(lh), "=&r"(lhu) : "r"(p + off));
        if (off % 4 == 0)
            asm volatile("lw %0, 0(%2); lwu %1, 0(%2)" : "=&r"(lw), "=&r"(lwu) : "r"(p + off));
        if (off % 8 == 0)
            asm volatile("ld %0, 0(%1)" : "=r"(ld) : "r"(p + off));
        printf("load +%d: lb=%lx lbu=%lx lh=%lx lhu=%lx lw=%lx lwu=%lx ld=%lx\n", off,
               lb, lbu, lh, lhu, lw, lwu, ld);
    }
    /* Negative and positive offsets in the immediate. */
    uint64_t r1, r2;
    asm volatile("ld %0, 8(%2); ld %1, -8(%3)" : "=&r"(r1), "=&r"(r2) : "r"(p), "r"(p + 16));
    printf("load imm: %lx %lx\n", r1, r2);
    uint64_t v = 0x1122334455667788UL;
    mem[2] = mem[3] = 0;
    volatile uint8_t *q = (volatile uint8_t *)&mem[2];
    asm volatile("sb %0, 0(%1); sh %0, 2(%1); sw %0, 4(%1); sd %0, 8(%1)"
                 :: "r"(v), "r"(q) : "memory");
    printf("store: %016lx %016lx\n", mem[2], mem[3]);
    asm volatile("sw %0, -4(%1)" :: "r"(0xdeadbeefUL), "r"(q + 8) : "memory");
    printf("store neg: %016lx\n", mem[2]);
}

#define BR(insn) \
    static int br_##insn(uint64_t a, uint64_t b) \
    { int t = 1; asm volatile(#insn " %1, %2, 1f; li %0, 0; 1:" : "+r"(t) : "r"(a), "r"(b)); return t; }
BR(beq) BR(bne) BR(blt) BR(bge) BR(bltu) BR(bgeu)

static void branches(void)
{
    static int (*const fns[])(uint64_t, uint64_t) = {
        br_beq, br_bne, br_blt, br_bge, br_bltu, br_bgeu };
    static const char *const names[] = { "beq", "bne", "blt", "bge", "bltu", "bgeu" };
    for (unsigned f = 0; f < 6; f++) {
        printf("%s:", names[f]);
        for (unsigned i = 0; i < NVALS; i++) {
            unsigned mask = 0;
            for (unsigned j = 0; j < NVALS; j++)
                mask |= (unsigned)fns[f](vals[i], vals[j]) << j;
            printf(" %04x", mask);
        }
        printf("\n");
    }
}

static void jumps(void)
{
    uint64_t link, target, diff_jal, diff_jalr;
    /* jal's link is the address after it; jalr adds its offset and clears
     * bit 0 of the target. */
    asm volatile(
        "   jal %0, 1f\n"
        "1: auipc %1, 0\n"
        "   sub %2, %1, %0\n"
        : "=&r"(link), "=&r"(target), "=&r"(diff_jal));
    printf("jal link delta: %lx\n", diff_jal);
    asm volatile(
        "   la %1, 2f\n"
        "   addi %1, %1, -3\n"      /* odd base: jalr clears bit 0 after adding 4 */
        "   jalr %0, 4(%1)\n"
        "   nop\n"
        "2: la %1, 2b\n"
        "   sub %2, %1, %0\n"
        : "=&r"(link), "=&r"(target), "=&r"(diff_jalr));
    printf("jalr link to target: %lx\n", diff_jalr);
    uint64_t lui1, lui2, lui3;
    asm volatile("lui %0, 0x80000; lui %1, 0x7ffff; lui %2, 0xfffff"
                 : "=r"(lui1), "=r"(lui2), "=r"(lui3));
    printf("lui: %lx %lx %lx\n", lui1, lui2, lui3);
    uint64_t pc1, pc2;
    asm volatile("auipc %0, 0; auipc %1, 0x1" : "=r"(pc1), "=r"(pc2));
    printf("auipc delta: %lx\n", pc2 - pc1);
    uint64_t x0;
    asm volatile("li t0, 5; add x0, t0, t0; mv %0, x0" : "=r"(x0) :: "t0");
    printf("x0 stays zero: %lx\n", x0);
}

int main(void)
{
    printf("alu: start\n");
    for (unsigned o = 0; o < sizeof(rr_ops) / sizeof(rr_ops[0]); o++) {
        for (unsigned i = 0; i < NVALS; i++) {
            printf("%s %lx:", rr_ops[o].name, vals[i]);
            for (unsigned j = 0; j < NVALS; j++) {
                uint64_t r = rr_ops[o].fn(vals[i], vals[j]);
                mix(r);
                printf(" %lx", r);
            }
            printf("\n");
        }
    }
    for (unsigned o = 0; o < sizeof(ri_ops) / sizeof(ri_ops[0]); o++) {
        printf("%s:", ri_ops[o].name);
        for (unsigned i = 0; i < NVALS; i++) {
            uint64_t r = ri_ops[o].fn(vals[i]);
            mix(r);
            printf(" %lx", r);
        }
        printf("\n");
    }
    loads_stores();
    branches();
    jumps();
    /* Spec-fixed spot checks, so the program fails on its own too. */
    rt_check("sraw", op_sraw(0x80000000UL, 31), (uint64_t)-1);
    rt_check("addw", op_addw(0x7fffffffUL, 1), 0xffffffff80000000UL);
    rt_check("sll by 64", op_sll(1, 64), 1);
    rt_check("sltu", op_sltu(0, (uint64_t)-1), 1);
    rt_hex("alu hash", hash);
    return 0;
}
