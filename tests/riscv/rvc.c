/* C extension: each compressed instruction written explicitly (the
 * compiler emits many more on its own), with the register ranges and
 * immediate edges the 16-bit encodings allow, and the illegal all-zero
 * parcel. */
#include "rt.h"

/* For the x8-x15 forms: the operand goes through a0 (a1 the second). */
#define C8(insn, in) ({ uint64_t _r; \
    asm volatile("mv a0, %1\n.option push\n.option rvc\n" insn "\n.option pop\nmv %0, a0" \
                 : "=r"(_r) : "r"((uint64_t)(in)) : "a0"); _r; })
#define C8RR(insn, x, y) ({ uint64_t _r; \
    asm volatile("mv a0, %1\nmv a1, %2\n.option push\n.option rvc\n" insn " a0, a1\n" \
                 ".option pop\nmv %0, a0" : "=r"(_r) : "r"((uint64_t)(x)), "r"((uint64_t)(y)) \
                 : "a0", "a1"); _r; })
#define C1(insn, in) ({ uint64_t _r = (in); \
    asm volatile(".option push\n.option rvc\n" insn "\n.option pop" : "+r"(_r)); _r; })

int main(void)
{
    printf("rvc: start\n");
    uint64_t r;

    /* Immediates: c.li, c.lui (sign-extended), c.addi, c.addiw, c.andi. */
    asm volatile(".option push\n.option rvc\nc.li %0, -32\n.option pop" : "=r"(r));
    printf("c.li -32: %lx\n", r);
    asm volatile(".option push\n.option rvc\nc.li %0, 31\n.option pop" : "=r"(r));
    printf("c.li 31: %lx\n", r);
    asm volatile(".option push\n.option rvc\nc.lui %0, 0xfffe0\n.option pop" : "=r"(r));
    printf("c.lui 0xfffe0: %lx\n", r);
    asm volatile(".option push\n.option rvc\nc.lui %0, 0x1f\n.option pop" : "=r"(r));
    printf("c.lui 0x1f: %lx\n", r);
    printf("c.addi -32: %lx\n", C1("c.addi %0, -32", 5UL));
    printf("c.addi 31: %lx\n", C1("c.addi %0, 31", 0xffffffffffffffffUL));
    printf("c.addiw 1: %lx\n", C1("c.addiw %0, 1", 0x7fffffffUL));
    printf("c.addiw 0 (sext.w): %lx\n", C1("c.addiw %0, 0", 0x1234567880000000UL | 0xf0000000UL));
    printf("c.andi -17: %lx\n", C8("c.andi a0, -17", 0xfedcba9876543210UL));
    printf("c.andi 31: %lx\n", C8("c.andi a0, 31", 0xfedcba9876543210UL));
    /* Shifts: c.slli any register, c.srli/c.srai x8-x15, shamt up to 63. */
    printf("c.slli 63: %lx\n", C1("c.slli %0, 63", 3UL));
    printf("c.slli 1: %lx\n", C1("c.slli %0, 1", 0x8000000000000001UL));
    printf("c.srli 63: %lx\n", C8("c.srli a0, 63", 0x8000000000000000UL));
    printf("c.srai 63: %lx\n", C8("c.srai a0, 63", 0x8000000000000000UL));
    printf("c.srai 1: %lx\n", C8("c.srai a0, 1", 0x8000000000000000UL));
    /* Register-register: c.mv, c.add (any register), c.sub/xor/or/and/subw/addw. */
    static const char *const rr[] = { "c.sub", "c.xor", "c.or", "c.and", "c.subw", "c.addw" };
    const uint64_t x = 0x7fffffff12345678UL, y = 0x80000000f0f0f0f0UL;
    const uint64_t rrv[] = { C8RR("c.sub", x, y), C8RR("c.xor", x, y), C8RR("c.or", x, y),
                             C8RR("c.and", x, y), C8RR("c.subw", x, y), C8RR("c.addw", x, y) };
    for (int i = 0; i < 6; i++)
        printf("%s: %lx\n", rr[i], rrv[i]);
    asm volatile(".option push\n.option rvc\nc.mv t3, %1\nc.add t3, %1\nmv %0, t3\n.option pop"
                 : "=r"(r) : "r"(0x4000000000000001UL) : "t3");
    printf("c.mv+c.add: %lx\n", r);

    /* Loads and stores: register-based (x8-x15, scaled offsets up to the
     * top of their range) and sp-based. */
    static volatile uint64_t mem[64] __attribute__((aligned(8)));
    for (int i = 0; i < 64; i++)
        mem[i] = 0x8070605040302010UL + (uint64_t)i;
    uint64_t lw, ld, lw124, ld248;
    asm volatile("mv a0, %4\n.option push\n.option rvc\n"
                 "c.lw a1, 4(a0)\nmv %0, a1\nc.ld a1, 8(a0)\nmv %1, a1\n"
                 "c.lw a1, 124(a0)\nmv %2, a1\nc.ld a1, 248(a0)\nmv %3, a1\n.option pop"
                 : "=&r"(lw), "=&r"(ld), "=&r"(lw124), "=&r"(ld248) : "r"(&mem[0]) : "a0", "a1");
    printf("c.lw/c.ld: %lx %lx %lx %lx\n", lw, ld, lw124, ld248);
    asm volatile("mv a0, %0\nmv a1, %1\n.option push\n.option rvc\n"
                 "c.sw a1, 0(a0)\nc.sd a1, 16(a0)\n.option pop"
                 :: "r"(&mem[0]), "r"(0xaabbccddeeff0011UL) : "a0", "a1", "memory");
    printf("c.sw/c.sd: %lx %lx\n", mem[0], mem[2]);
    uint64_t sp_lw, sp_ld;
    asm volatile(".option push\n.option rvc\n"
                 "c.mv t4, sp\nc.mv sp, %2\n"
                 "c.swsp %3, 252(sp)\nc.sdsp %3, 504(sp)\nc.lwsp t5, 252(sp)\nc.ldsp t6, 504(sp)\n"
                 "c.addi16sp sp, -64\nc.addi16sp sp, 64\n"
                 "c.mv sp, t4\nmv %0, t5\nmv %1, t6\n.option pop"
                 : "=&r"(sp_lw), "=&r"(sp_ld) : "r"(&mem[0]), "r"(0x0123456789abcdefUL)
                 : "t4", "t5", "t6", "memory");
    printf("c.lwsp/c.ldsp: %lx %lx mem[31]=%lx mem[63]=%lx\n", sp_lw, sp_ld, mem[31], mem[63]);
    uint64_t spn;
    asm volatile(".option push\n.option rvc\nc.addi4spn a0, sp, 1020\nsub %0, a0, sp\n.option pop"
                 : "=r"(spn) :: "a0");
    printf("c.addi4spn 1020: %lx\n", spn);
    uint64_t sp16;
    asm volatile(".option push\n.option rvc\nc.mv t4, sp\nc.addi16sp sp, -512\nsub %0, t4, sp\n"
                 "c.addi16sp sp, 496\nc.addi16sp sp, 16\n.option pop" : "=r"(sp16) :: "t4");
    printf("c.addi16sp -512: %lx\n", sp16);
    /* FP loads and stores. */
    uint64_t fbits;
    asm volatile("mv a0, %1\n.option push\n.option rvc\nc.fld fa0, 24(a0)\nc.fsd fa0, 32(a0)\n"
                 "fmv.x.d %0, fa0\n.option pop" : "=r"(fbits) : "r"(&mem[0]) : "a0", "fa0", "memory");
    printf("c.fld/c.fsd: %lx %lx\n", fbits, mem[4]);
    asm volatile(".option push\n.option rvc\nc.mv t4, sp\nc.mv sp, %1\nc.fldsp fa1, 40(sp)\n"
                 "c.fsdsp fa1, 48(sp)\nc.mv sp, t4\nfmv.x.d %0, fa1\n.option pop"
                 : "=r"(fbits) : "r"(&mem[0]) : "t4", "fa1", "memory");
    printf("c.fldsp/c.fsdsp: %lx %lx\n", fbits, mem[6]);

    /* Control flow: c.j, c.beqz/c.bnez both ways, c.jr, c.jalr's link. */
    uint64_t taken = 0;
    asm volatile(".option push\n.option rvc\n"
                 "li a0, 0\nc.beqz a0, 1f\nori %0, %0, 1\n1: c.bnez a0, 2f\nori %0, %0, 2\n"
                 "2: li a0, 5\nc.bnez a0, 3f\nori %0, %0, 4\n3: c.beqz a0, 4f\nori %0, %0, 8\n"
                 "4: c.j 5f\nori %0, %0, 16\n5:\n.option pop" : "+r"(taken) :: "a0");
    printf("c.beqz/c.bnez/c.j not-taken mask: %lx\n", taken);
    uint64_t link_delta;
    asm volatile(".option push\n.option rvc\n"
                 "la t3, 1f\nc.jalr t3\n1: auipc t4, 0\nsub %0, t4, ra\n"
                 "la t3, 2f\nc.jr t3\nnop\n2:\n.option pop"
                 : "=r"(link_delta) :: "t3", "t4", "ra");
    printf("c.jalr link delta: %lx\n", link_delta);
    asm volatile(".option push\n.option rvc\nc.nop\nc.nop\n.option pop");

    /* The all-zero parcel is defined illegal; c.ebreak traps with a
     * 2-byte instruction at mepc. */
    rt_expect_trap();
    asm volatile(".option push\n.option rvc\n.2byte 0\n.option pop");
    rt_print_trap("c.illegal 0000");
    rt_expect_trap();
    asm volatile(".option push\n.option rvc\nc.ebreak\n.option pop");
    rt_print_trap("c.ebreak");
    /* Reserved encodings: c.addi4spn with imm 0, c.lui with imm 0. */
    rt_expect_trap();
    asm volatile(".option push\n.option rvc\n.2byte 0x0004\n.option pop");   /* c.addi4spn a1, sp, 0 */
    rt_print_trap("c.addi4spn imm=0");
    rt_expect_trap();
    asm volatile(".option push\n.option rvc\n.2byte 0x6081\n.option pop" ::: "ra");  /* c.lui ra, 0 */
    rt_print_trap("c.lui imm=0");
    return 0;
}
