/*
 * The C extension's expander: every 16-bit form against the 32-bit
 * instruction it stands for.  The pairs were made by assembling the same
 * instructions with Debian's riscv64-unknown-elf-as, once with and once
 * without .option rvc; branches and jumps are relative, so their
 * expansions carry the same offset.  (c.mv expands to add rd, x0, rs2 as
 * the spec says, where the assembler's mv is addi rd, rs, 0.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "vm/riscv/rv_hart.h"

static const struct {
    uint16_t c;
    uint32_t full;
    const char *text;
} pairs[] = {
    { 0x7139, 0xfc010113, "addi sp, sp, -64" },
    { 0x617d, 0x1f010113, "addi sp, sp, 496" },
    { 0x0808, 0x01010513, "addi a0, sp, 16" },
    { 0x1fe0, 0x3fc10413, "addi s0, sp, 1020" },
    { 0x651c, 0x00853783, "ld a5, 8(a0)" },
    { 0x7fe4, 0x0f87b483, "ld s1, 248(a5)" },
    { 0x42d8, 0x0046a703, "lw a4, 4(a3)" },
    { 0x5cf0, 0x07c4a603, "lw a2, 124(s1)" },
    { 0xe51c, 0x00f53423, "sd a5, 8(a0)" },
    { 0xc2b8, 0x04e6a023, "sw a4, 64(a3)" },
    { 0x2988, 0x0105b507, "fld fa0, 16(a1)" },
    { 0xbce0, 0x0e84bc27, "fsd fs0, 248(s1)" },
    { 0x0505, 0x00150513, "addi a0, a0, 1" },
    { 0x1281, 0xfe028293, "addi t0, t0, -32" },
    { 0x35fd, 0xfff5859b, "addiw a1, a1, -1" },
    { 0x23fd, 0x01f3839b, "addiw t2, t2, 31" },
    { 0x5565, 0xff900513, "li a0, -7" },
    { 0x437d, 0x01f00313, "li t1, 31" },
    { 0x67fd, 0x0001f7b7, "lui a5, 0x1f" },
    { 0x7281, 0xfffe02b7, "lui t0, 0xfffe0" },
    { 0x810d, 0x00355513, "srli a0, a0, 3" },
    { 0x90fd, 0x03f4d493, "srli s1, s1, 63" },
    { 0x9781, 0x4207d793, "srai a5, a5, 32" },
    { 0x9b41, 0xff077713, "andi a4, a4, -16" },
    { 0x883d, 0x00f47413, "andi s0, s0, 15" },
    { 0x8d0d, 0x40b50533, "sub a0, a0, a1" },
    { 0x8c25, 0x00944433, "xor s0, s0, s1" },
    { 0x8e55, 0x00d66633, "or a2, a2, a3" },
    { 0x8f7d, 0x00f77733, "and a4, a4, a5" },
    { 0x9d1d, 0x40f5053b, "subw a0, a0, a5" },
    { 0x9cb1, 0x00c484bb, "addw s1, s1, a2" },
    { 0x0532, 0x00c51513, "slli a0, a0, 12" },
    { 0x1e7e, 0x03fe1e13, "slli t3, t3, 63" },
    { 0x70fe, 0x1f813083, "ld ra, 504(sp)" },
    { 0x6902, 0x00013903, "ld s2, 0(sp)" },
    { 0x50fe, 0x0fc12083, "lw ra, 252(sp)" },
    { 0x4f92, 0x00412f83, "lw t6, 4(sp)" },
    { 0x2022, 0x00813007, "fld ft0, 8(sp)" },
    { 0xbfee, 0x1fb13c27, "fsd fs11, 504(sp)" },
    { 0xff86, 0x1e113c23, "sd ra, 504(sp)" },
    { 0xdfce, 0x0f312e23, "sw s3, 252(sp)" },
    { 0x8082, 0x00008067, "jr ra" },
    { 0x8282, 0x00028067, "jr t0" },
    { 0x854a, 0x01200533, "mv a0, s2 (c.mv is add rd, x0, rs2)" },
    { 0x8f86, 0x00100fb3, "mv t6, ra (add t6, x0, ra)" },
    { 0x9782, 0x000780e7, "jalr a5" },
    { 0x9572, 0x01c50533, "add a0, a0, t3" },
    { 0x9d86, 0x001d8db3, "add s11, s11, ra" },
    { 0x9002, 0x00100073, "ebreak" },
    { 0x0001, 0x00000013, "nop" },
    { 0xc501, 0x00050463, "beqz a0, .+8" },
    { 0xf0e5, 0xfe0490e3, "bnez s1, .-32" },
    { 0xaff5, 0x7fc0006f, "j .+2044" },
    { 0xb001, 0x801ff06f, "j .-2048" },
    { 0xcffd, 0x0e078f63, "beqz a5, .+254" },
};

static void test_expand(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        uint32_t got = rv_expand_compressed(pairs[i].c);
        if (got != pairs[i].full) {
            fail_msg("%s: %04x expanded to %08x, want %08x", pairs[i].text, pairs[i].c, got,
                     pairs[i].full);
        }
    }
}

static void test_reserved(void **state)
{
    (void)state;
    /* All zeros, c.addi4spn with a zero immediate, c.lui/c.addi16sp with a
     * zero immediate, c.jr x0, c.lwsp/c.ldsp to x0, c.addiw to x0 are
     * reserved: illegal instructions. */
    static const uint16_t reserved[] = { 0x0000, 0x0004, 0x6081, 0x6101, 0x8002, 0x4002, 0x6002,
                                         0x2001 };
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
        if (rv_expand_compressed(reserved[i]) != 0) {
            fail_msg("%04x should be reserved", reserved[i]);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expand),
        cmocka_unit_test(test_reserved),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
