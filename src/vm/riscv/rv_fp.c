/*
 * F and D: single and double precision on the host's IEEE 754 unit, with
 * the RISC-V rules the host does not follow done by hand: NaN boxing of
 * singles, canonical NaNs, fmin/fmax on -0/+0 and NaNs, saturating
 * float-to-integer conversions, and the accrued flags in fcsr.
 *
 * Compiled with -frounding-math: the rounding mode is set per instruction.
 * RMM (round to nearest, ties to max magnitude) has no host mode: add, sub,
 * mul, the single-precision FMAs and the conversions compute the exact
 * result in binary128 and round it by hand; div, sqrt and the
 * double-precision FMAs round as RNE (their exact results are never ties
 * unless exact, except in rare double FMA cases).
 */
#include <fenv.h>
#include <math.h>
#include <string.h>

#include "rv_hart.h"

#define FFLAG_NX 1u
#define FFLAG_UF 2u
#define FFLAG_OF 4u
#define FFLAG_DZ 8u
#define FFLAG_NV 16u

#define CANON_S 0x7fc00000u
#define CANON_D 0x7ff8000000000000ull

static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static double u2d(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }
static uint64_t d2u(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }

static uint32_t unbox(uint64_t v)
{
    return (v >> 32) == 0xffffffffu ? (uint32_t)v : CANON_S;
}

static uint64_t box(uint32_t v)
{
    return 0xffffffff00000000ull | v;
}

static bool is_snan_s(uint32_t u)
{
    return (u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu) && !(u & 0x400000u);
}

static bool is_snan_d(uint64_t u)
{
    return (u & 0x7ff0000000000000ull) == 0x7ff0000000000000ull && (u & 0xfffffffffffffull) &&
           !(u & 0x8000000000000ull);
}

typedef __float128 f128;
#define RM_RMM 4

/* x (exact) rounded to double, ties away from zero. */
static double rmm_double(f128 x)
{
    double d = (double)x; /* nearest; only a tie can be wrong */
    if ((f128)d == x || isnan(d) || isinf(d)) {
        return d;
    }
    f128 ax = x < 0 ? -x : x;
    double ad = fabs(d), lo, hi;
    if ((f128)ad < ax) {
        lo = ad;
        hi = nextafter(ad, INFINITY);
    } else {
        hi = ad;
        lo = nextafter(ad, 0.0);
    }
    f128 mid = ((f128)lo + (f128)hi) / 2;
    double r = ax >= mid ? hi : lo;
    return x < 0 ? -r : r;
}

static float rmm_float(f128 x)
{
    float f = (float)x;
    if ((f128)f == x || isnan(f) || isinf(f)) {
        return f;
    }
    f128 ax = x < 0 ? -x : x;
    float af = fabsf(f), lo, hi;
    if ((f128)af < ax) {
        lo = af;
        hi = nextafterf(af, INFINITY);
    } else {
        hi = af;
        lo = nextafterf(af, 0.0f);
    }
    f128 mid = ((f128)lo + (f128)hi) / 2;
    float r = ax >= mid ? hi : lo;
    return x < 0 ? -r : r;
}

static void set_rm(int rm)
{
    static const int modes[5] = { FE_TONEAREST, FE_TOWARDZERO, FE_DOWNWARD, FE_UPWARD, FE_TONEAREST };
    fesetround(modes[rm]);
    feclearexcept(FE_ALL_EXCEPT);
}

static uint32_t host_flags(void)
{
    int e = fetestexcept(FE_ALL_EXCEPT);
    uint32_t f = 0;
    if (e & FE_INEXACT) f |= FFLAG_NX;
    if (e & FE_UNDERFLOW) f |= FFLAG_UF;
    if (e & FE_OVERFLOW) f |= FFLAG_OF;
    if (e & FE_DIVBYZERO) f |= FFLAG_DZ;
    if (e & FE_INVALID) f |= FFLAG_NV;
    fesetround(FE_TONEAREST);
    return f;
}

void rv_fp_check(rv_hart *h, uint32_t insn)
{
    if (!(h->mstatus & RV_MS_FS)) {
        rv_raise(h, RV_EXC_ILLEGAL, insn);
    }
    h->mstatus |= RV_MS_FS; /* dirty: the OS must save the FP state */
}

static int round_mode(rv_hart *h, uint32_t insn)
{
    int rm = (insn >> 12) & 7;
    if (rm == 7) {
        rm = (int)((h->fcsr >> 5) & 7);
    }
    if (rm > 4) {
        rv_raise(h, RV_EXC_ILLEGAL, insn);
    }
    return rm;
}

static double round_int(double x, int rm)
{
    switch (rm) {
    case 0: return nearbyint(x); /* current mode is RNE */
    case 1: return trunc(x);
    case 2: return floor(x);
    case 3: return ceil(x);
    default: return round(x);
    }
}

/* Float to integer, saturating; bits 32 or 64, is_signed. */
static uint64_t to_int(double x, int rm, int bits, bool is_signed, uint32_t *fl)
{
    double lo, hi; /* the result range, as exclusive/inclusive doubles */
    int64_t smin = bits == 32 ? INT32_MIN : INT64_MIN;
    int64_t smax = bits == 32 ? INT32_MAX : INT64_MAX;
    uint64_t umax = bits == 32 ? UINT32_MAX : UINT64_MAX;
    uint64_t r;

    if (isnan(x)) {
        *fl |= FFLAG_NV;
        r = is_signed ? (uint64_t)smax : umax;
        goto out;
    }
    double t = round_int(x, rm);
    if (is_signed) {
        lo = (double)smin;
        hi = bits == 32 ? 2147483648.0 : 9223372036854775808.0;
        if (t < lo) { *fl |= FFLAG_NV; r = (uint64_t)smin; goto out; }
        if (t >= hi) { *fl |= FFLAG_NV; r = (uint64_t)smax; goto out; }
        r = (uint64_t)(int64_t)t;
    } else {
        hi = bits == 32 ? 4294967296.0 : 18446744073709551616.0;
        if (t < 0 || (t == 0 && x < 0 && t != 0)) { *fl |= FFLAG_NV; r = 0; goto out; }
        if (t >= hi) { *fl |= FFLAG_NV; r = umax; goto out; }
        r = (uint64_t)t;
    }
    if (t != x) {
        *fl |= FFLAG_NX;
    }
out:
    if (bits == 32) {
        r = (uint64_t)(int64_t)(int32_t)(uint32_t)r;
    }
    return r;
}

static uint64_t fclass_d(uint64_t u)
{
    bool neg = u >> 63;
    uint64_t exp = (u >> 52) & 0x7ff, man = u & 0xfffffffffffffull;
    if (exp == 0x7ff) {
        if (man == 0) return neg ? 1u << 0 : 1u << 7;
        return (man >> 51) ? 1u << 9 : 1u << 8;
    }
    if (exp == 0) {
        if (man == 0) return neg ? 1u << 3 : 1u << 4;
        return neg ? 1u << 2 : 1u << 5;
    }
    return neg ? 1u << 1 : 1u << 6;
}

static uint64_t fclass_s(uint32_t u)
{
    bool neg = u >> 31;
    uint32_t exp = (u >> 23) & 0xff, man = u & 0x7fffff;
    if (exp == 0xff) {
        if (man == 0) return neg ? 1u << 0 : 1u << 7;
        return (man >> 22) ? 1u << 9 : 1u << 8;
    }
    if (exp == 0) {
        if (man == 0) return neg ? 1u << 3 : 1u << 4;
        return neg ? 1u << 2 : 1u << 5;
    }
    return neg ? 1u << 1 : 1u << 6;
}

static uint64_t canon_s(float f)
{
    return box(isnan(f) ? CANON_S : f2u(f));
}

static uint64_t canon_d(double d)
{
    return isnan(d) ? CANON_D : d2u(d);
}

static void exec_fp_single(rv_hart *h, uint32_t insn, uint32_t *fl)
{
    unsigned rd = (insn >> 7) & 31, rs1 = (insn >> 15) & 31, rs2 = (insn >> 20) & 31;
    unsigned f3 = (insn >> 12) & 7, f7 = insn >> 25;
    uint32_t ua = unbox(h->f[rs1]), ub = unbox(h->f[rs2]);
    volatile float a = u2f(ua), b = u2f(ub);
    int rm;

    switch (f7) {
    case 0x00: case 0x04: case 0x08: case 0x0c: case 0x2c: {
        rm = round_mode(h, insn);
        set_rm(rm);
        volatile float r;
        switch (f7) {
        case 0x00: r = a + b; break;
        case 0x04: r = a - b; break;
        case 0x08: r = a * b; break;
        case 0x0c: r = a / b; break;
        default: r = sqrtf(a); break;
        }
        *fl |= host_flags();
        if (rm == RM_RMM && f7 <= 0x08 && !isnan(r)) {
            f128 x = f7 == 0x00 ? (f128)a + (f128)b : f7 == 0x04 ? (f128)a - (f128)b : (f128)a * (f128)b;
            r = rmm_float(x);
        }
        h->f[rd] = canon_s(r);
        return;
    }
    case 0x10: {
        uint32_t s;
        switch (f3) {
        case 0: s = ub & 0x80000000u; break;
        case 1: s = ~ub & 0x80000000u; break;
        case 2: s = (ua ^ ub) & 0x80000000u; break;
        default: rv_raise(h, RV_EXC_ILLEGAL, insn);
        }
        h->f[rd] = box((ua & 0x7fffffffu) | s);
        return;
    }
    case 0x14: {
        if (f3 > 1) rv_raise(h, RV_EXC_ILLEGAL, insn);
        if (is_snan_s(ua) || is_snan_s(ub)) *fl |= FFLAG_NV;
        uint32_t r;
        if (isnan(a) && isnan(b)) r = CANON_S;
        else if (isnan(a)) r = ub;
        else if (isnan(b)) r = ua;
        else if (a == b) r = f3 == 0 ? (ua | ub) : (ua & ub); /* -0 vs +0 */
        else r = (f3 == 0) == (a < b) ? ua : ub;
        h->f[rd] = box(r);
        return;
    }
    case 0x20: { /* fcvt.s.d */
        if (rs2 != 1) rv_raise(h, RV_EXC_ILLEGAL, insn);
        rm = round_mode(h, insn);
        volatile double d = u2d(h->f[rs1]);
        set_rm(rm);
        volatile float r = (float)d;
        *fl |= host_flags();
        if (rm == RM_RMM) {
            r = rmm_float((f128)d);
        }
        h->f[rd] = canon_s(r);
        return;
    }
    case 0x50: {
        bool nan = isnan(a) || isnan(b), r;
        if (f3 == 2) {
            if (is_snan_s(ua) || is_snan_s(ub)) *fl |= FFLAG_NV;
            r = !nan && a == b;
        } else if (f3 <= 1) {
            if (nan) *fl |= FFLAG_NV;
            r = !nan && (f3 == 1 ? a < b : a <= b);
        } else {
            rv_raise(h, RV_EXC_ILLEGAL, insn);
        }
        if (rd) h->x[rd] = r;
        return;
    }
    case 0x60: {
        if (rs2 > 3) rv_raise(h, RV_EXC_ILLEGAL, insn);
        rm = round_mode(h, insn);
        uint64_t r = to_int((double)a, rm, rs2 < 2 ? 32 : 64, !(rs2 & 1), fl);
        if (rd) h->x[rd] = r;
        return;
    }
    case 0x68: {
        if (rs2 > 3) rv_raise(h, RV_EXC_ILLEGAL, insn);
        rm = round_mode(h, insn);
        volatile uint64_t x = h->x[rs1];
        set_rm(rm);
        volatile float r;
        switch (rs2) {
        case 0: r = (float)(int32_t)x; break;
        case 1: r = (float)(uint32_t)x; break;
        case 2: r = (float)(int64_t)x; break;
        default: r = (float)x; break;
        }
        *fl |= host_flags();
        if (rm == RM_RMM) {
            f128 e = rs2 == 0 ? (f128)(int32_t)x : rs2 == 1 ? (f128)(uint32_t)x
                   : rs2 == 2 ? (f128)(int64_t)x : (f128)x;
            r = rmm_float(e);
        }
        h->f[rd] = box(f2u(r));
        return;
    }
    case 0x70:
        if (rs2 != 0) rv_raise(h, RV_EXC_ILLEGAL, insn);
        if (f3 == 0) {
            if (rd) h->x[rd] = (uint64_t)(int64_t)(int32_t)(uint32_t)h->f[rs1];
        } else if (f3 == 1) {
            if (rd) h->x[rd] = fclass_s(ua);
        } else {
            rv_raise(h, RV_EXC_ILLEGAL, insn);
        }
        return;
    case 0x78:
        if (rs2 != 0 || f3 != 0) rv_raise(h, RV_EXC_ILLEGAL, insn);
        h->f[rd] = box((uint32_t)h->x[rs1]);
        return;
    default:
        rv_raise(h, RV_EXC_ILLEGAL, insn);
    }
}

static void exec_fp_double(rv_hart *h, uint32_t insn, uint32_t *fl)
{
    unsigned rd = (insn >> 7) & 31, rs1 = (insn >> 15) & 31, rs2 = (insn >> 20) & 31;
    unsigned f3 = (insn >> 12) & 7, f7 = insn >> 25;
    uint64_t ua = h->f[rs1], ub = h->f[rs2];
    volatile double a = u2d(ua), b = u2d(ub);
    int rm;

    switch (f7) {
    case 0x01: case 0x05: case 0x09: case 0x0d: case 0x2d: {
        rm = round_mode(h, insn);
        set_rm(rm);
        volatile double r;
        switch (f7) {
        case 0x01: r = a + b; break;
        case 0x05: r = a - b; break;
        case 0x09: r = a * b; break;
        case 0x0d: r = a / b; break;
        default: r = sqrt(a); break;
        }
        *fl |= host_flags();
        if (rm == RM_RMM && f7 <= 0x09 && !isnan(r)) {
            f128 x = f7 == 0x01 ? (f128)a + (f128)b : f7 == 0x05 ? (f128)a - (f128)b : (f128)a * (f128)b;
            r = rmm_double(x);
        }
        h->f[rd] = canon_d(r);
        return;
    }
    case 0x11: {
        uint64_t s, sb = 1ull << 63;
        switch (f3) {
        case 0: s = ub & sb; break;
        case 1: s = ~ub & sb; break;
        case 2: s = (ua ^ ub) & sb; break;
        default: rv_raise(h, RV_EXC_ILLEGAL, insn);
        }
        h->f[rd] = (ua & ~sb) | s;
        return;
    }
    case 0x15: {
        if (f3 > 1) rv_raise(h, RV_EXC_ILLEGAL, insn);
        if (is_snan_d(ua) || is_snan_d(ub)) *fl |= FFLAG_NV;
        uint64_t r;
        if (isnan(a) && isnan(b)) r = CANON_D;
        else if (isnan(a)) r = ub;
        else if (isnan(b)) r = ua;
        else if (a == b) r = f3 == 0 ? (ua | ub) : (ua & ub);
        else r = (f3 == 0) == (a < b) ? ua : ub;
        h->f[rd] = r;
        return;
    }
    case 0x21: { /* fcvt.d.s */
        if (rs2 != 0) rv_raise(h, RV_EXC_ILLEGAL, insn);
        rm = round_mode(h, insn);
        uint32_t us = unbox(h->f[rs1]);
        volatile float s = u2f(us);
        if (is_snan_s(us)) *fl |= FFLAG_NV;
        h->f[rd] = canon_d((double)s);
        return;
    }
    case 0x51: {
        bool nan = isnan(a) || isnan(b), r;
        if (f3 == 2) {
            if (is_snan_d(ua) || is_snan_d(ub)) *fl |= FFLAG_NV;
            r = !nan && a == b;
        } else if (f3 <= 1) {
            if (nan) *fl |= FFLAG_NV;
            r = !nan && (f3 == 1 ? a < b : a <= b);
        } else {
            rv_raise(h, RV_EXC_ILLEGAL, insn);
        }
        if (rd) h->x[rd] = r;
        return;
    }
    case 0x61: {
        if (rs2 > 3) rv_raise(h, RV_EXC_ILLEGAL, insn);
        rm = round_mode(h, insn);
        uint64_t r = to_int(a, rm, rs2 < 2 ? 32 : 64, !(rs2 & 1), fl);
        if (rd) h->x[rd] = r;
        return;
    }
    case 0x69: {
        if (rs2 > 3) rv_raise(h, RV_EXC_ILLEGAL, insn);
        rm = round_mode(h, insn);
        volatile uint64_t x = h->x[rs1];
        set_rm(rm);
        volatile double r;
        switch (rs2) {
        case 0: r = (double)(int32_t)x; break;
        case 1: r = (double)(uint32_t)x; break;
        case 2: r = (double)(int64_t)x; break;
        default: r = (double)x; break;
        }
        *fl |= host_flags();
        if (rm == RM_RMM) {
            f128 e = rs2 == 0 ? (f128)(int32_t)x : rs2 == 1 ? (f128)(uint32_t)x
                   : rs2 == 2 ? (f128)(int64_t)x : (f128)x;
            r = rmm_double(e);
        }
        h->f[rd] = d2u(r);
        return;
    }
    case 0x71:
        if (rs2 != 0) rv_raise(h, RV_EXC_ILLEGAL, insn);
        if (f3 == 0) {
            if (rd) h->x[rd] = ua;
        } else if (f3 == 1) {
            if (rd) h->x[rd] = fclass_d(ua);
        } else {
            rv_raise(h, RV_EXC_ILLEGAL, insn);
        }
        return;
    case 0x79:
        if (rs2 != 0 || f3 != 0) rv_raise(h, RV_EXC_ILLEGAL, insn);
        h->f[rd] = h->x[rs1];
        return;
    default:
        rv_raise(h, RV_EXC_ILLEGAL, insn);
    }
}

static void exec_fma(rv_hart *h, uint32_t insn, uint32_t *fl)
{
    unsigned rd = (insn >> 7) & 31, rs1 = (insn >> 15) & 31, rs2 = (insn >> 20) & 31;
    unsigned rs3 = insn >> 27, fmt = (insn >> 25) & 3, op = (insn >> 2) & 3;
    int rm = round_mode(h, insn);
    bool neg_prod = op == 2 || op == 3, neg_add = op == 1 || op == 3;

    if (fmt == 0) {
        volatile float a = u2f(unbox(h->f[rs1])), b = u2f(unbox(h->f[rs2])),
                       c = u2f(unbox(h->f[rs3]));
        if (neg_prod) a = -a;
        if (neg_add) c = -c;
        set_rm(rm);
        volatile float r = fmaf(a, b, c);
        *fl |= host_flags();
        if (rm == RM_RMM && !isnan(r)) {
            r = rmm_float((f128)a * (f128)b + (f128)c);
        }
        h->f[rd] = canon_s(r);
    } else if (fmt == 1) {
        volatile double a = u2d(h->f[rs1]), b = u2d(h->f[rs2]), c = u2d(h->f[rs3]);
        if (neg_prod) a = -a;
        if (neg_add) c = -c;
        set_rm(rm);
        volatile double r = fma(a, b, c);
        *fl |= host_flags();
        h->f[rd] = canon_d(r);
    } else {
        rv_raise(h, RV_EXC_ILLEGAL, insn);
    }
}

void rv_exec_fp(rv_hart *h, uint32_t insn)
{
    unsigned rd = (insn >> 7) & 31, rs1 = (insn >> 15) & 31, rs2 = (insn >> 20) & 31;
    unsigned f3 = (insn >> 12) & 7;
    uint32_t fl = 0;

    switch (insn & 0x7f) {
    case 0x07: {
        uint64_t va = h->x[rs1] + (uint64_t)((int64_t)(int32_t)insn >> 20);
        if (f3 == 2) h->f[rd] = box((uint32_t)rv_load(h, va, 4));
        else if (f3 == 3) h->f[rd] = rv_load(h, va, 8);
        else rv_raise(h, RV_EXC_ILLEGAL, insn);
        return;
    }
    case 0x27: {
        uint64_t va = h->x[rs1] + (uint64_t)((int64_t)((uint64_t)((int64_t)(int32_t)insn >> 25) << 5) | ((insn >> 7) & 31));
        if (f3 == 2) rv_store(h, va, 4, h->f[rs2]);
        else if (f3 == 3) rv_store(h, va, 8, h->f[rs2]);
        else rv_raise(h, RV_EXC_ILLEGAL, insn);
        return;
    }
    case 0x53:
        if (((insn >> 25) & 3) == 0) {
            exec_fp_single(h, insn, &fl);
        } else if (((insn >> 25) & 3) == 1) {
            exec_fp_double(h, insn, &fl);
        } else {
            rv_raise(h, RV_EXC_ILLEGAL, insn);
        }
        break;
    default:
        exec_fma(h, insn, &fl);
        break;
    }
    h->fcsr |= fl;
}
