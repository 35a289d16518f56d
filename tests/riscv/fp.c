/* F and D extensions: arithmetic, square root and fused multiply-add in
 * every static rounding mode and in the dynamic mode through frm; the
 * accrued flags (fflags) of every result; conversions to and from
 * integers at and beyond their ranges; fmin/fmax with signalling and
 * quiet NaNs and signed zeros; comparisons; fclass; sign injection;
 * NaN boxing of single values in the 64-bit registers and canonical
 * NaNs; frm/fflags/fcsr aliasing; mstatus.FS; an invalid rounding mode.
 * Operands move in and out through integer registers (fmv), so the
 * compiler never touches the values. */
#include "rt.h"

#define MVX_s "fmv.w.x"
#define MVX_d "fmv.d.x"
#define XMV_s "fmv.x.w"
#define XMV_d "fmv.x.d"

typedef uint64_t (*fbin)(uint64_t, uint64_t, uint64_t *);
typedef uint64_t (*fun)(uint64_t, uint64_t *);
typedef uint64_t (*ftri)(uint64_t, uint64_t, uint64_t, uint64_t *);

#define FOR_RM(X, op, S) X(op, S, rne) X(op, S, rtz) X(op, S, rdn) X(op, S, rup) \
    X(op, S, rmm) X(op, S, dyn)
#define RM_ENTRY(op, S, rm) op##_##S##_##rm,

/* Binary operations that round: result in an FP register. */
#define DEF_BIN(op, S, rm) \
    static uint64_t op##_##S##_##rm(uint64_t a, uint64_t b, uint64_t *fl) \
    { \
        uint64_t r, f; \
        asm volatile("csrw fflags, zero\n" MVX_##S " ft0, %2\n" MVX_##S " ft1, %3\n" \
                     #op "." #S " ft2, ft0, ft1, " #rm "\n" XMV_##S " %0, ft2\n" \
                     "csrr %1, fflags" \
                     : "=r"(r), "=r"(f) : "r"(a), "r"(b) : "ft0", "ft1", "ft2"); \
        *fl = f; \
        return r; \
    }
#define DEF_UN(op, S, rm) \
    static uint64_t op##_##S##_##rm(uint64_t a, uint64_t *fl) \
    { \
        uint64_t r, f; \
        asm volatile("csrw fflags, zero\n" MVX_##S " ft0, %2\n" \
                     #op "." #S " ft2, ft0, " #rm "\n" XMV_##S " %0, ft2\n" \
                     "csrr %1, fflags" \
                     : "=r"(r), "=r"(f) : "r"(a) : "ft0", "ft2"); \
        *fl = f; \
        return r; \
    }
#define DEF_TRI(op, S, rm) \
    static uint64_t op##_##S##_##rm(uint64_t a, uint64_t b, uint64_t c, uint64_t *fl) \
    { \
        uint64_t r, f; \
        asm volatile("csrw fflags, zero\n" MVX_##S " ft0, %2\n" MVX_##S " ft1, %3\n" \
                     MVX_##S " ft3, %4\n" #op "." #S " ft2, ft0, ft1, ft3, " #rm "\n" \
                     XMV_##S " %0, ft2\ncsrr %1, fflags" \
                     : "=r"(r), "=r"(f) : "r"(a), "r"(b), "r"(c) : "ft0", "ft1", "ft2", "ft3"); \
        *fl = f; \
        return r; \
    }
/* Binary operations that do not round (min/max, sign injection) and the
 * comparisons (integer result). */
#define DEF_BIN_NR(op, S) \
    static uint64_t op##_##S(uint64_t a, uint64_t b, uint64_t *fl) \
    { \
        uint64_t r, f; \
        asm volatile("csrw fflags, zero\n" MVX_##S " ft0, %2\n" MVX_##S " ft1, %3\n" \
                     #op "." #S " ft2, ft0, ft1\n" XMV_##S " %0, ft2\ncsrr %1, fflags" \
                     : "=r"(r), "=r"(f) : "r"(a), "r"(b) : "ft0", "ft1", "ft2"); \
        *fl = f; \
        return r; \
    }
#define DEF_CMP(op, S) \
    static uint64_t op##_##S(uint64_t a, uint64_t b, uint64_t *fl) \
    { \
        uint64_t r, f; \
        asm volatile("csrw fflags, zero\n" MVX_##S " ft0, %2\n" MVX_##S " ft1, %3\n" \
                     #op "." #S " %0, ft0, ft1\ncsrr %1, fflags" \
                     : "=r"(r), "=r"(f) : "r"(a), "r"(b) : "ft0", "ft1"); \
        *fl = f; \
        return r; \
    }
/* Conversions: FP to integer (FROM is s or d, TO names the integer). */
#define DEF_F2I(to, S, rm) \
    static uint64_t fcvt_##to##_##S##_##rm(uint64_t a, uint64_t *fl) \
    { \
        uint64_t r, f; \
        asm volatile("csrw fflags, zero\n" MVX_##S " ft0, %2\n" \
                     "fcvt." #to "." #S " %0, ft0, " #rm "\ncsrr %1, fflags" \
                     : "=r"(r), "=r"(f) : "r"(a) : "ft0"); \
        *fl = f; \
        return r; \
    }
/* Integer to double from 32 bits is exact: no rounding-mode operand. */
#define RMTXT_s_w(rm) ", " #rm
#define RMTXT_s_wu(rm) ", " #rm
#define RMTXT_s_l(rm) ", " #rm
#define RMTXT_s_lu(rm) ", " #rm
#define RMTXT_d_w(rm) ""
#define RMTXT_d_wu(rm) ""
#define RMTXT_d_l(rm) ", " #rm
#define RMTXT_d_lu(rm) ", " #rm
#define DEF_I2F(from, S, rm) \
    static uint64_t fcvt_##S##_##from##_##rm(uint64_t a, uint64_t *fl) \
    { \
        uint64_t r, f; \
        asm volatile("csrw fflags, zero\nfcvt." #S "." #from " ft0, %2" RMTXT_##S##_##from(rm) "\n" \
                     XMV_##S " %0, ft0\ncsrr %1, fflags" \
                     : "=r"(r), "=r"(f) : "r"(a) : "ft0"); \
        *fl = f; \
        return r; \
    }

#define PREC(X) X(s) X(d)
#define ROUNDING_BIN(S) FOR_RM(DEF_BIN, fadd, S) FOR_RM(DEF_BIN, fsub, S) \
    FOR_RM(DEF_BIN, fmul, S) FOR_RM(DEF_BIN, fdiv, S) FOR_RM(DEF_UN, fsqrt, S) \
    FOR_RM(DEF_TRI, fmadd, S) FOR_RM(DEF_TRI, fmsub, S) FOR_RM(DEF_TRI, fnmadd, S) \
    FOR_RM(DEF_TRI, fnmsub, S) \
    DEF_BIN_NR(fmin, S) DEF_BIN_NR(fmax, S) DEF_BIN_NR(fsgnj, S) DEF_BIN_NR(fsgnjn, S) \
    DEF_BIN_NR(fsgnjx, S) DEF_CMP(feq, S) DEF_CMP(flt, S) DEF_CMP(fle, S) \
    FOR_RM(DEF_F2I, w, S) FOR_RM(DEF_F2I, wu, S) FOR_RM(DEF_F2I, l, S) FOR_RM(DEF_F2I, lu, S) \
    FOR_RM(DEF_I2F, w, S) FOR_RM(DEF_I2F, wu, S) FOR_RM(DEF_I2F, l, S) FOR_RM(DEF_I2F, lu, S)
PREC(ROUNDING_BIN)

/* fcvt.s.d rounds; fcvt.d.s is exact. */
#define DEF_SD(x, y, rm) \
    static uint64_t fcvt_s_d_##rm(uint64_t a, uint64_t *fl) \
    { \
        uint64_t r, f; \
        asm volatile("csrw fflags, zero\nfmv.d.x ft0, %2\nfcvt.s.d ft1, ft0, " #rm "\n" \
                     "fmv.x.w %0, ft1\ncsrr %1, fflags" \
                     : "=r"(r), "=r"(f) : "r"(a) : "ft0", "ft1"); \
        *fl = f; \
        return r; \
    }
FOR_RM(DEF_SD, x, y)

static uint64_t fcvt_d_s(uint64_t a, uint64_t *fl)
{
    uint64_t r, f;
    asm volatile("csrw fflags, zero\nfmv.w.x ft0, %2\nfcvt.d.s ft1, ft0\n"
                 "fmv.x.d %0, ft1\ncsrr %1, fflags"
                 : "=r"(r), "=r"(f) : "r"(a) : "ft0", "ft1");
    *fl = f;
    return r;
}

static const char *const rm_names[] = { "rne", "rtz", "rdn", "rup", "rmm", "dyn" };

static const uint64_t sval[] = {
    0x00000000, 0x80000000, 0x3f800000, 0xbfc00000, 0x3eaaaaab, 0x7f7fffff,
    0x00000001, 0x00800000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001,
    0x4b7fffff, 0x33800000, 0x7fc12345,
};
static const uint64_t dval[] = {
    0, 0x8000000000000000UL, 0x3ff0000000000000UL, 0xbff8000000000000UL,
    0x3fd5555555555555UL, 0x7fefffffffffffffUL, 1, 0x0010000000000000UL,
    0x7ff0000000000000UL, 0xfff0000000000000UL, 0x7ff8000000000000UL,
    0x7ff0000000000001UL, 0x433fffffffffffffUL, 0x3ca0000000000000UL,
    0x7ff8000000012345UL,
};
#define NV 15
/* A smaller set for the three-operand operations. */
static const uint64_t sfma[] = { 0x3f800000, 0xbfc00000, 0x3eaaaaab, 0x7f7fffff, 0x00000001,
                                 0x7f800000, 0x7f800001 };
static const uint64_t dfma[] = { 0x3ff0000000000000UL, 0xbff8000000000000UL,
                                 0x3fd5555555555555UL, 0x7fefffffffffffffUL, 1,
                                 0x7ff0000000000000UL, 0x7ff0000000000001UL };
#define NFMA 7
/* Multiplicands: fewer, including a zero for 0 x inf. */
static const uint64_t sfma_ab[] = { 0x3f800000, 0x3eaaaaab, 0x7f7fffff, 0, 0x7f800000 };
static const uint64_t dfma_ab[] = { 0x3ff0000000000000UL, 0x3fd5555555555555UL,
                                    0x7fefffffffffffffUL, 0, 0x7ff0000000000000UL };
#define NFMA_AB 5
static const uint64_t s2i[] = {
    0x40200000, 0xc0200000, 0x3f000000, 0xbf000000, 0x3fc00000, 0xbfc00000, 0x4f000000,
    0xcf000000, 0x4effffff, 0x4f800000, 0x5f000000, 0xdf000000, 0x5f800000, 0x60ad78ec,
    0xe0ad78ec, 0x80000000, 0x7fc00000, 0x7f800001, 0x7f800000, 0xff800000, 0x80000001,
    0xbf7fffff,
};
static const uint64_t d2i[] = {
    0x4004000000000000UL, 0xc004000000000000UL, 0x3fe0000000000000UL, 0xbfe0000000000000UL,
    0x3ff8000000000000UL, 0xbff8000000000000UL, 0x41e0000000000000UL, 0xc1e0000000000000UL,
    0x41dfffffffe00000UL, 0xc1e0000000100000UL, 0x41f0000000000000UL, 0x41efffffffe00000UL,
    0x43e0000000000000UL, 0xc3e0000000000000UL, 0x43f0000000000000UL, 0x4415af1d78b58c40UL,
    0xc415af1d78b58c40UL, 0x8000000000000000UL, 0x7ff8000000000000UL, 0x7ff0000000000001UL,
    0x7ff0000000000000UL, 0xfff0000000000000UL, 0x8000000000000001UL, 0xbfefffffffffffffUL,
};
static const uint64_t i2f[] = {
    0, 1, (uint64_t)-1, 0x7fffffff, 0x80000000, 0x80000001, 0xffffffff, 0x1000001,
    0x1000003, 0x7fffffffffffffffUL, 0x8000000000000000UL, 0x8000000000000001UL,
    0x20000000000001UL, 0xfffffffffffffbffUL, 0x123456789abcdefUL, 0xffffffff80000001UL,
};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static void set_frm(unsigned frm) { csr_write(frm, frm); }

/* One result: single-precision values print as their 32 bits (the sign
 * extension fmv.x.w applies is checked in nan_boxing()), the flags only
 * when some are set. */
static void pr(uint64_t r, uint64_t fl, uint64_t mask)
{
    if (fl)
        printf(" %lx/%lx", r & mask, fl);
    else
        printf(" %lx", r & mask);
}
#define M32 0xffffffffUL
#define M64 (~0UL)

/* The dynamic mode takes frm = line number % 5, so every mode is seen
 * through frm as well. */
static void run_bin(const char *name, const fbin fns[6], const uint64_t *v, unsigned n,
                    uint64_t mask)
{
    for (unsigned rm = 0; rm < 6; rm++) {
        for (unsigned i = 0; i < n; i++) {
            if (rm == 5) {
                set_frm(i % 5);
                printf("%s dyn(frm=%u) %lx:", name, i % 5, v[i]);
            } else {
                printf("%s %s %lx:", name, rm_names[rm], v[i]);
            }
            for (unsigned j = 0; j < n; j++) {
                uint64_t fl, r = fns[rm](v[i], v[j], &fl);
                pr(r, fl, mask);
            }
            printf("\n");
        }
    }
    set_frm(0);
}

static void run_un(const char *name, const fun fns[6], const uint64_t *v, unsigned n,
                   uint64_t mask)
{
    for (unsigned rm = 0; rm < 6; rm++) {
        if (rm == 5)
            set_frm(rm_names[rm][0] == 'd' ? 3 : 0);
        printf("%s %s%s:", name, rm_names[rm], rm == 5 ? "(frm=3)" : "");
        for (unsigned i = 0; i < n; i++) {
            uint64_t fl, r = fns[rm](v[i], &fl);
            pr(r, fl, mask);
        }
        printf("\n");
    }
    set_frm(0);
}

static void run_tri(const char *name, const ftri fns[6], const uint64_t *ab, const uint64_t *v,
                    uint64_t mask)
{
    for (unsigned rm = 0; rm < 6; rm++) {
        if (rm == 5)
            set_frm(2);
        for (unsigned i = 0; i < NFMA_AB; i++) {
            printf("%s %s%s %lx:", name, rm_names[rm], rm == 5 ? "(frm=2)" : "", ab[i]);
            for (unsigned j = 0; j < NFMA_AB; j++)
                for (unsigned k = 0; k < NFMA; k++) {
                    uint64_t fl, r = fns[rm](ab[i], ab[j], v[k], &fl);
                    pr(r, fl, mask);
                }
            printf("\n");
        }
    }
    set_frm(0);
}

static void run_nr(const char *name, fbin fn, const uint64_t *v, unsigned n, uint64_t mask)
{
    for (unsigned i = 0; i < n; i++) {
        printf("%s %lx:", name, v[i]);
        for (unsigned j = 0; j < n; j++) {
            uint64_t fl, r = fn(v[i], v[j], &fl);
            pr(r, fl, mask);
        }
        printf("\n");
    }
}

#define RMFNS(stem) { stem##_rne, stem##_rtz, stem##_rdn, stem##_rup, stem##_rmm, stem##_dyn }

#define RUN_PREC(S, V, FMA_AB, FMA, F2I, MASK) \
    do { \
        static const fbin add[6] = RMFNS(fadd_##S), sub[6] = RMFNS(fsub_##S), \
                          mul[6] = RMFNS(fmul_##S), div[6] = RMFNS(fdiv_##S); \
        static const fun sqrt[6] = RMFNS(fsqrt_##S); \
        static const ftri madd[6] = RMFNS(fmadd_##S), msub[6] = RMFNS(fmsub_##S), \
                          nmadd[6] = RMFNS(fnmadd_##S), nmsub[6] = RMFNS(fnmsub_##S); \
        static const fun cw[6] = RMFNS(fcvt_w_##S), cwu[6] = RMFNS(fcvt_wu_##S), \
                         cl[6] = RMFNS(fcvt_l_##S), clu[6] = RMFNS(fcvt_lu_##S); \
        static const fun fw[6] = RMFNS(fcvt_##S##_w), fwu[6] = RMFNS(fcvt_##S##_wu), \
                         fl_[6] = RMFNS(fcvt_##S##_l), flu[6] = RMFNS(fcvt_##S##_lu); \
        run_bin("fadd." #S, add, V, NV, MASK); \
        run_bin("fsub." #S, sub, V, NV, MASK); \
        run_bin("fmul." #S, mul, V, NV, MASK); \
        run_bin("fdiv." #S, div, V, NV, MASK); \
        run_un("fsqrt." #S, sqrt, V, NV, MASK); \
        run_tri("fmadd." #S, madd, FMA_AB, FMA, MASK); \
        run_tri("fmsub." #S, msub, FMA_AB, FMA, MASK); \
        run_tri("fnmadd." #S, nmadd, FMA_AB, FMA, MASK); \
        run_tri("fnmsub." #S, nmsub, FMA_AB, FMA, MASK); \
        run_nr("fmin." #S, fmin_##S, V, NV, MASK); \
        run_nr("fmax." #S, fmax_##S, V, NV, MASK); \
        run_nr("fsgnj." #S, fsgnj_##S, V, NV, MASK); \
        run_nr("fsgnjn." #S, fsgnjn_##S, V, NV, MASK); \
        run_nr("fsgnjx." #S, fsgnjx_##S, V, NV, MASK); \
        run_nr("feq." #S, feq_##S, V, NV, MASK); \
        run_nr("flt." #S, flt_##S, V, NV, MASK); \
        run_nr("fle." #S, fle_##S, V, NV, MASK); \
        run_un("fcvt.w." #S, cw, F2I, COUNT(F2I), M64); \
        run_un("fcvt.wu." #S, cwu, F2I, COUNT(F2I), M64); \
        run_un("fcvt.l." #S, cl, F2I, COUNT(F2I), M64); \
        run_un("fcvt.lu." #S, clu, F2I, COUNT(F2I), M64); \
        run_un("fcvt." #S ".w", fw, i2f, COUNT(i2f), MASK); \
        run_un("fcvt." #S ".wu", fwu, i2f, COUNT(i2f), MASK); \
        run_un("fcvt." #S ".l", fl_, i2f, COUNT(i2f), MASK); \
        run_un("fcvt." #S ".lu", flu, i2f, COUNT(i2f), MASK); \
    } while (0)

static void fclass(void)
{
    printf("fclass.s:");
    for (unsigned i = 0; i < NV; i++) {
        uint64_t r;
        asm volatile("fmv.w.x ft0, %1\nfclass.s %0, ft0" : "=r"(r) : "r"(sval[i]) : "ft0");
        printf(" %lx", r);
    }
    printf("\nfclass.d:");
    for (unsigned i = 0; i < NV; i++) {
        uint64_t r;
        asm volatile("fmv.d.x ft0, %1\nfclass.d %0, ft0" : "=r"(r) : "r"(dval[i]) : "ft0");
        printf(" %lx", r);
    }
    printf("\n");
}

static void conversions_sd(void)
{
    static const fun sd[6] = { fcvt_s_d_rne, fcvt_s_d_rtz, fcvt_s_d_rdn, fcvt_s_d_rup,
                               fcvt_s_d_rmm, fcvt_s_d_dyn };
    static const uint64_t dv[] = { 0x3fd5555555555555UL, 0xbfd5555555555555UL,
                                   0x47efffffffffffffUL, 0x7fefffffffffffffUL, 1,
                                   0x36a0000000000000UL, 0x7ff0000000000001UL,
                                   0x7ff8000000012345UL, 0xfff0000000000000UL,
                                   0x8000000000000000UL, 0x3ff0000010000000UL };
    run_un("fcvt.s.d", sd, dv, COUNT(dv), M32);
    printf("fcvt.d.s:");
    for (unsigned i = 0; i < NV; i++) {
        uint64_t fl, r = fcvt_d_s(sval[i], &fl);
        pr(r, fl, M64);
    }
    printf("\n");
}

static void nan_boxing(void)
{
    uint64_t r, f;
    /* A properly boxed single moves through fmv.x.d with all upper ones. */
    asm volatile("fmv.w.x ft0, %1\nfmv.x.d %0, ft0" : "=r"(r) : "r"(0x3f800000UL) : "ft0");
    printf("boxed by fmv.w.x: %lx\n", r);
    rt_check("fmv.w.x boxes", r, 0xffffffff3f800000UL);
    asm volatile("fmv.w.x ft0, %1\nfmv.w.x ft1, %1\nfadd.s ft2, ft0, ft1\nfmv.x.d %0, ft2"
                 : "=r"(r) : "r"(0x3f800000UL) : "ft0", "ft1", "ft2");
    printf("boxed single result: %lx\n", r);
    /* An unboxed value (upper half not all ones) reads as the canonical NaN. */
    asm volatile("csrw fflags, zero\nfmv.d.x ft0, %2\nfmv.w.x ft1, %3\nfadd.s ft2, ft0, ft1\n"
                 "fmv.x.d %0, ft2\ncsrr %1, fflags"
                 : "=r"(r), "=r"(f) : "r"(0x000000003f800000UL), "r"(0x3f800000UL)
                 : "ft0", "ft1", "ft2");
    printf("unboxed operand to fadd.s: %lx/%lx\n", r, f);
    rt_check("unboxed is canonical NaN", r, 0xffffffff7fc00000UL);
    asm volatile("fmv.d.x ft0, %1\nfsgnj.s ft1, ft0, ft0\nfmv.x.d %0, ft1"
                 : "=r"(r) : "r"(0x12345678bf800000UL) : "ft0", "ft1");
    printf("unboxed through fsgnj.s: %lx\n", r);
    asm volatile("fmv.d.x ft0, %1\nfclass.s %0, ft0" : "=r"(r) : "r"(0x00000000ff800000UL) : "ft0");
    printf("unboxed fclass.s: %lx\n", r);
    /* fmv.x.w takes the low 32 bits whatever the upper half holds, and
     * sign-extends them. */
    asm volatile("fmv.d.x ft0, %1\nfmv.x.w %0, ft0" : "=r"(r) : "r"(0x00000000bf800000UL) : "ft0");
    printf("fmv.x.w of unboxed: %lx\n", r);
    asm volatile("fmv.d.x ft0, %1\nfcvt.d.s ft1, ft0\nfmv.x.d %0, ft1"
                 : "=r"(r) : "r"(0x7ff0000000000000UL) : "ft0", "ft1");
    printf("fcvt.d.s of unboxed: %lx\n", r);
    /* flw boxes; fsw stores the low word of whatever the register holds. */
    static volatile uint64_t mem[2];
    mem[0] = 0x11223344c0490fdbUL;
    asm volatile("flw ft0, 0(%1)\nfmv.x.d %0, ft0" : "=r"(r) : "r"(&mem[0]) : "ft0");
    printf("flw boxes: %lx\n", r);
    mem[1] = 0;
    asm volatile("fmv.d.x ft0, %0\nfsw ft0, 8(%1)" :: "r"(0x0123456789abcdefUL), "r"(&mem[0])
                 : "ft0", "memory");
    printf("fsw of unboxed: %lx\n", mem[1]);
    asm volatile("fmv.d.x ft0, %0\nfsd ft0, 8(%1)\nfld ft1, 8(%1)\nfmv.x.d %0, ft1"
                 : "=r"(r) : "r"(&mem[0]), "0"(0x7ff0000000000001UL) : "ft0", "ft1", "memory");
    printf("fsd/fld keep sNaN bits: %lx\n", r);
    rt_check("fsd/fld bits", r, 0x7ff0000000000001UL);
}

static void csrs(void)
{
    csr_write(fcsr, 0xff);
    printf("fcsr=ff: frm=%lx fflags=%lx fcsr=%lx\n", csr_read(frm), csr_read(fflags),
           csr_read(fcsr));
    csr_write(frm, 2);
    csr_write(fflags, 0x5);
    printf("frm=2 fflags=5: fcsr=%lx\n", csr_read(fcsr));
    csr_write(fcsr, 0xfff);
    printf("fcsr=fff: fcsr=%lx\n", csr_read(fcsr));
    /* Flags accrue across instructions until cleared. */
    csr_write(fcsr, 0);
    asm volatile("fmv.w.x ft0, %0\nfdiv.s ft1, ft0, ft0\nfmv.w.x ft2, zero\n"
                 "fdiv.s ft1, ft0, ft2" :: "r"(0x3f800000UL) : "ft0", "ft1", "ft2");
    printf("accrued flags: %lx\n", csr_read(fflags));

    /* An invalid frm with a dynamic rounding mode is illegal. */
    csr_write(frm, 5);
    rt_expect_trap();
    asm volatile("fadd.s ft0, ft1, ft2, dyn" ::: "ft0");
    rt_print_trap("fadd.s dyn frm=5");
    csr_write(frm, 0);
    /* Static rm 5 (reserved), encoded by hand: fadd.s ft2, ft0, ft1, rm=5. */
    rt_expect_trap();
    asm volatile(".word 0x00105153" ::: "ft2");
    rt_print_trap("fadd.s rm=5");

    /* mstatus.FS: off makes FP instructions and FP CSRs illegal; writing an
     * FP register marks it dirty (and sets SD). */
    uint64_t fs = 3UL << 13;
    csr_clear(mstatus, fs);
    rt_expect_trap();
    asm volatile("fmv.w.x ft0, zero" ::: "ft0");
    rt_print_trap("fp with FS=off");
    rt_expect_trap();
    (void)csr_read(fcsr);
    rt_print_trap("fcsr with FS=off");
    csr_set(mstatus, 1UL << 13);
    uint64_t before = csr_read(mstatus);
    asm volatile("fmv.w.x ft0, zero" ::: "ft0");
    uint64_t after = csr_read(mstatus);
    printf("FS initial->after write: %lx -> %lx SD %lx -> %lx\n", (before >> 13) & 3,
           (after >> 13) & 3, before >> 63, after >> 63);
}

int main(void)
{
    printf("fp: start\n");
    RUN_PREC(s, sval, sfma_ab, sfma, s2i, M32);
    RUN_PREC(d, dval, dfma_ab, dfma, d2i, M64);
    fclass();
    conversions_sd();
    nan_boxing();
    csrs();
    return 0;
}
