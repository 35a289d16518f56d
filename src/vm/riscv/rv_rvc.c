/*
 * The C extension: every 16-bit instruction is expanded into the 32-bit
 * instruction it stands for (RV64C), which the interpreter then executes
 * with a length of 2.
 */
#include "rv_hart.h"

#define BIT(x, n) (((x) >> (n)) & 1u)
#define BITS(x, hi, lo) (((x) >> (lo)) & ((1u << ((hi) - (lo) + 1)) - 1))

static uint32_t enc_i(int32_t imm, unsigned rs1, unsigned f3, unsigned rd, unsigned op)
{
    return ((uint32_t)imm & 0xfff) << 20 | rs1 << 15 | f3 << 12 | rd << 7 | op;
}

static uint32_t enc_s(int32_t imm, unsigned rs2, unsigned rs1, unsigned f3, unsigned op)
{
    uint32_t u = (uint32_t)imm;
    return (u >> 5 & 0x7f) << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | (u & 31) << 7 | op;
}

static uint32_t enc_b(int32_t imm, unsigned rs2, unsigned rs1, unsigned f3)
{
    uint32_t u = (uint32_t)imm;
    return (u >> 12 & 1) << 31 | (u >> 5 & 0x3f) << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 |
           (u >> 1 & 0xf) << 8 | (u >> 11 & 1) << 7 | 0x63;
}

static uint32_t enc_j(int32_t imm, unsigned rd)
{
    uint32_t u = (uint32_t)imm;
    return (u >> 20 & 1) << 31 | (u >> 1 & 0x3ff) << 21 | (u >> 11 & 1) << 20 |
           (u >> 12 & 0xff) << 12 | rd << 7 | 0x6f;
}

static uint32_t enc_r(unsigned f7, unsigned rs2, unsigned rs1, unsigned f3, unsigned rd, unsigned op)
{
    return f7 << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | rd << 7 | op;
}

static int32_t sext(uint32_t v, unsigned bits)
{
    return (int32_t)(v << (32 - bits)) >> (32 - bits);
}

static uint32_t quadrant0(uint32_t c)
{
    unsigned rdp = BITS(c, 4, 2) + 8, rs1p = BITS(c, 9, 7) + 8;
    uint32_t off_d = BITS(c, 12, 10) << 3 | BITS(c, 6, 5) << 6;
    uint32_t off_w = BITS(c, 12, 10) << 3 | BIT(c, 6) << 2 | BIT(c, 5) << 6;

    switch (BITS(c, 15, 13)) {
    case 0: { /* c.addi4spn */
        uint32_t imm = BITS(c, 12, 11) << 4 | BITS(c, 10, 7) << 6 | BIT(c, 6) << 2 | BIT(c, 5) << 3;
        return imm ? enc_i((int32_t)imm, 2, 0, rdp, 0x13) : 0;
    }
    case 1: return enc_i((int32_t)off_d, rs1p, 3, rdp, 0x07);  /* c.fld */
    case 2: return enc_i((int32_t)off_w, rs1p, 2, rdp, 0x03);  /* c.lw */
    case 3: return enc_i((int32_t)off_d, rs1p, 3, rdp, 0x03);  /* c.ld */
    case 5: return enc_s((int32_t)off_d, rdp, rs1p, 3, 0x27);  /* c.fsd */
    case 6: return enc_s((int32_t)off_w, rdp, rs1p, 2, 0x23);  /* c.sw */
    case 7: return enc_s((int32_t)off_d, rdp, rs1p, 3, 0x23);  /* c.sd */
    default: return 0;
    }
}

static uint32_t quadrant1(uint32_t c)
{
    unsigned rd = BITS(c, 11, 7), rdp = BITS(c, 9, 7) + 8, rs2p = BITS(c, 4, 2) + 8;
    int32_t imm6 = sext(BIT(c, 12) << 5 | BITS(c, 6, 2), 6);

    switch (BITS(c, 15, 13)) {
    case 0: return enc_i(imm6, rd, 0, rd, 0x13);               /* c.addi, c.nop */
    case 1: return rd ? enc_i(imm6, rd, 0, rd, 0x1b) : 0;       /* c.addiw */
    case 2: return enc_i(imm6, 0, 0, rd, 0x13);                /* c.li */
    case 3:
        if (rd == 2) { /* c.addi16sp */
            int32_t imm = sext(BIT(c, 12) << 9 | BIT(c, 6) << 4 | BIT(c, 5) << 6 |
                               BITS(c, 4, 3) << 7 | BIT(c, 2) << 5, 10);
            return imm ? enc_i(imm, 2, 0, 2, 0x13) : 0;
        }
        if (imm6 == 0) {
            return 0;
        }
        return ((uint32_t)imm6 << 12) | rd << 7 | 0x37;        /* c.lui */
    case 4: {
        unsigned shamt = BIT(c, 12) << 5 | BITS(c, 6, 2);
        switch (BITS(c, 11, 10)) {
        case 0: return enc_i((int32_t)shamt, rdp, 5, rdp, 0x13);          /* c.srli */
        case 1: return enc_i((int32_t)(shamt | 0x400), rdp, 5, rdp, 0x13); /* c.srai */
        case 2: return enc_i(imm6, rdp, 7, rdp, 0x13);                    /* c.andi */
        default:
            if (!BIT(c, 12)) {
                static const unsigned f3[4] = { 0, 4, 6, 7 };
                unsigned op = BITS(c, 6, 5);
                return enc_r(op == 0 ? 0x20 : 0, rs2p, rdp, f3[op], rdp, 0x33);
            }
            switch (BITS(c, 6, 5)) {
            case 0: return enc_r(0x20, rs2p, rdp, 0, rdp, 0x3b); /* c.subw */
            case 1: return enc_r(0, rs2p, rdp, 0, rdp, 0x3b);    /* c.addw */
            default: return 0;
            }
        }
    }
    case 5: { /* c.j */
        int32_t imm = sext(BIT(c, 12) << 11 | BIT(c, 11) << 4 | BITS(c, 10, 9) << 8 |
                           BIT(c, 8) << 10 | BIT(c, 7) << 6 | BIT(c, 6) << 7 |
                           BITS(c, 5, 3) << 1 | BIT(c, 2) << 5, 12);
        return enc_j(imm, 0);
    }
    default: { /* c.beqz, c.bnez */
        int32_t imm = sext(BIT(c, 12) << 8 | BITS(c, 11, 10) << 3 | BITS(c, 6, 5) << 6 |
                           BITS(c, 4, 3) << 1 | BIT(c, 2) << 5, 9);
        return enc_b(imm, 0, rdp, BITS(c, 15, 13) == 6 ? 0 : 1);
    }
    }
}

static uint32_t quadrant2(uint32_t c)
{
    unsigned rd = BITS(c, 11, 7), rs2 = BITS(c, 6, 2);
    uint32_t ldsp = BIT(c, 12) << 5 | BITS(c, 6, 5) << 3 | BITS(c, 4, 2) << 6;
    uint32_t lwsp = BIT(c, 12) << 5 | BITS(c, 6, 4) << 2 | BITS(c, 3, 2) << 6;
    uint32_t sdsp = BITS(c, 12, 10) << 3 | BITS(c, 9, 7) << 6;
    uint32_t swsp = BITS(c, 12, 9) << 2 | BITS(c, 8, 7) << 6;

    switch (BITS(c, 15, 13)) {
    case 0: return enc_i((int32_t)(BIT(c, 12) << 5 | rs2), rd, 1, rd, 0x13); /* c.slli */
    case 1: return enc_i((int32_t)ldsp, 2, 3, rd, 0x07);                     /* c.fldsp */
    case 2: return rd ? enc_i((int32_t)lwsp, 2, 2, rd, 0x03) : 0;            /* c.lwsp */
    case 3: return rd ? enc_i((int32_t)ldsp, 2, 3, rd, 0x03) : 0;            /* c.ldsp */
    case 4:
        if (!BIT(c, 12)) {
            if (rs2 == 0) {
                return rd ? enc_i(0, rd, 0, 0, 0x67) : 0;  /* c.jr */
            }
            return enc_r(0, rs2, 0, 0, rd, 0x33);          /* c.mv */
        }
        if (rs2 == 0) {
            return rd ? enc_i(0, rd, 0, 1, 0x67) : 0x00100073; /* c.jalr, c.ebreak */
        }
        return enc_r(0, rs2, rd, 0, rd, 0x33);             /* c.add */
    case 5: return enc_s((int32_t)sdsp, rs2, 2, 3, 0x27);  /* c.fsdsp */
    case 6: return enc_s((int32_t)swsp, rs2, 2, 2, 0x23);  /* c.swsp */
    default: return enc_s((int32_t)sdsp, rs2, 2, 3, 0x23); /* c.sdsp */
    }
}

uint32_t rv_expand_compressed(uint16_t c)
{
    switch (c & 3) {
    case 0: return quadrant0(c);
    case 1: return quadrant1(c);
    case 2: return quadrant2(c);
    default: return 0;
    }
}
