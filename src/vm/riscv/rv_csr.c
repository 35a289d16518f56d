/*
 * Control and status registers: what exists, who may access it, and which
 * bits are writable (WARL), as the privileged spec 1.12 and QEMU's virt
 * CPU present them to OpenSBI's feature probes: 16 PMP entries of 54
 * address bits, 16 HPM counters, Sstc, the 1.12 CSRs (menvcfg,
 * mconfigptr).
 */
#include "rv_machine.h"

#define MSTATUS_WMASK (RV_MS_SIE | RV_MS_MIE | RV_MS_SPIE | RV_MS_MPIE | RV_MS_SPP | RV_MS_MPP | \
                       RV_MS_FS | RV_MS_MPRV | RV_MS_SUM | RV_MS_MXR | RV_MS_TVM | RV_MS_TW | \
                       RV_MS_TSR)
#define SSTATUS_MASK (RV_MS_SIE | RV_MS_SPIE | RV_MS_SPP | RV_MS_FS | RV_MS_SUM | RV_MS_MXR | \
                      RV_MS_UXL | RV_MS_SD)
#define DELEG_INTS (RV_MIP_SSIP | RV_MIP_STIP | RV_MIP_SEIP)
#define MIE_MASK (RV_MIP_SSIP | RV_MIP_MSIP | RV_MIP_STIP | RV_MIP_MTIP | RV_MIP_SEIP | RV_MIP_MEIP)
#define MEDELEG_MASK 0xb3ffull      /* every exception but ecall from M */
#define PMPADDR_MASK ((1ull << 54) - 1)
#define MISA_VALUE ((2ull << 62) | (1u << 0) | (1u << 2) | (1u << 3) | (1u << 5) | (1u << 8) | \
                    (1u << 12) | (1u << 18) | (1u << 20))

static uint64_t mstatus_read(const rv_hart *h)
{
    uint64_t s = h->mstatus;
    if ((s & RV_MS_FS) == RV_MS_FS) {
        s |= RV_MS_SD;
    }
    return s;
}

static void mstatus_write(rv_hart *h, uint64_t v, uint64_t mask)
{
    uint64_t old = h->mstatus;
    uint64_t s = (old & ~mask) | (v & mask);
    if (((s & RV_MS_MPP) >> RV_MS_MPP_SHIFT) == 2) {
        s &= ~RV_MS_MPP; /* no H: MPP=2 is not a legal value */
    }
    s &= ~RV_MS_SD;
    s |= (2ull << 32) | (2ull << 34);
    h->mstatus = s;
    if ((old ^ s) & (RV_MS_MPRV | RV_MS_MPP | RV_MS_SUM | RV_MS_MXR)) {
        rv_tlb_flush(h);
    }
}

/* Counter access from S and U: mcounteren / scounteren bit `bit`. */
static bool counter_allowed(const rv_hart *h, unsigned bit)
{
    if (h->priv == RV_PRIV_M) {
        return true;
    }
    if (!((h->mcounteren >> bit) & 1)) {
        return false;
    }
    if (h->priv == RV_PRIV_U && !((h->scounteren >> bit) & 1)) {
        return false;
    }
    return true;
}

static bool fp_enabled(const rv_hart *h)
{
    return (h->mstatus & RV_MS_FS) != 0;
}

bool rv_csr_read(rv_hart *h, unsigned csr, uint64_t *val)
{
    if (((csr >> 8) & 3) > h->priv) {
        return false;
    }
    switch (csr) {
    case 0x001: if (!fp_enabled(h)) return false; *val = h->fcsr & 0x1f; return true;
    case 0x002: if (!fp_enabled(h)) return false; *val = (h->fcsr >> 5) & 7; return true;
    case 0x003: if (!fp_enabled(h)) return false; *val = h->fcsr & 0xff; return true;
    case 0xc00: case 0xc02: /* cycle, instret */
        if (!counter_allowed(h, csr & 31)) return false;
        *val = h->instret;
        return true;
    case 0xc01: /* time */
        if (!counter_allowed(h, 1)) return false;
        *val = rv_machine_mtime(h->m);
        return true;
    case 0x100: *val = mstatus_read(h) & SSTATUS_MASK; return true;
    case 0x104: *val = h->mie & h->mideleg; return true;
    case 0x105: *val = h->stvec; return true;
    case 0x106: *val = h->scounteren; return true;
    case 0x10a: *val = h->senvcfg; return true;
    case 0x140: *val = h->sscratch; return true;
    case 0x141: *val = h->sepc; return true;
    case 0x142: *val = h->scause; return true;
    case 0x143: *val = h->stval; return true;
    case 0x144: *val = rv_hart_mip(h) & h->mideleg; return true;
    case 0x14d: /* stimecmp */
        if (h->priv == RV_PRIV_S && (!(h->menvcfg & RV_MENVCFG_STCE) || !(h->mcounteren & 2))) {
            return false;
        }
        if (!(h->menvcfg & RV_MENVCFG_STCE) && h->priv != RV_PRIV_M) return false;
        *val = h->stimecmp;
        return true;
    case 0x180:
        if (h->priv == RV_PRIV_S && (h->mstatus & RV_MS_TVM)) return false;
        *val = h->satp;
        return true;
    case 0x300: *val = mstatus_read(h); return true;
    case 0x301: *val = MISA_VALUE; return true;
    case 0x302: *val = h->medeleg; return true;
    case 0x303: *val = h->mideleg; return true;
    case 0x304: *val = h->mie; return true;
    case 0x305: *val = h->mtvec; return true;
    case 0x306: *val = h->mcounteren; return true;
    case 0x30a: *val = h->menvcfg; return true;
    case 0x320: *val = h->mcountinhibit; return true;
    case 0x340: *val = h->mscratch; return true;
    case 0x341: *val = h->mepc; return true;
    case 0x342: *val = h->mcause; return true;
    case 0x343: *val = h->mtval; return true;
    case 0x344: *val = rv_hart_mip(h); return true;
    case 0x3a0: *val = h->pmpcfg[0]; return true;
    case 0x3a2: *val = h->pmpcfg[1]; return true;
    case 0xb00: case 0xb02: *val = h->instret; return true;
    case 0xf11: case 0xf12: case 0xf13: case 0xf15: *val = 0; return true;
    case 0xf14: *val = h->hartid; return true;
    default:
        break;
    }
    if (csr >= 0x3a0 && csr <= 0x3af) { /* pmpcfg beyond 16 entries: odd ones don't exist */
        if (csr & 1) return false;
        *val = 0;
        return true;
    }
    if (csr >= 0x3b0 && csr <= 0x3ef) {
        unsigned i = csr - 0x3b0;
        *val = i < RV_NPMP ? h->pmpaddr[i] : 0;
        return true;
    }
    if (csr >= 0xb03 && csr <= 0xb1f) {
        unsigned i = csr - 0xb03;
        *val = i < RV_NHPM ? h->mhpmcounter[i] : 0;
        return true;
    }
    if (csr >= 0x323 && csr <= 0x33f) {
        unsigned i = csr - 0x323;
        *val = i < RV_NHPM ? h->mhpmevent[i] : 0;
        return true;
    }
    if (csr >= 0xc03 && csr <= 0xc1f) {
        unsigned i = csr - 0xc03;
        if (!counter_allowed(h, csr & 31)) return false;
        *val = i < RV_NHPM ? h->mhpmcounter[i] : 0;
        return true;
    }
    return false;
}

bool rv_csr_write(rv_hart *h, unsigned csr, uint64_t v)
{
    if (((csr >> 8) & 3) > h->priv || (csr >> 10) == 3) {
        return false;
    }
    switch (csr) {
    case 0x001:
    case 0x002:
    case 0x003:
        if (!fp_enabled(h)) return false;
        if (csr == 0x001) h->fcsr = (h->fcsr & ~0x1full) | (v & 0x1f);
        else if (csr == 0x002) h->fcsr = (h->fcsr & 0x1f) | ((v & 7) << 5);
        else h->fcsr = v & 0xff;
        h->mstatus |= RV_MS_FS;
        return true;
    case 0x100: mstatus_write(h, v, SSTATUS_MASK & MSTATUS_WMASK); return true;
    case 0x104: h->mie = (h->mie & ~h->mideleg) | (v & h->mideleg); return true;
    case 0x105: h->stvec = v & ~2ull; return true;
    case 0x106: h->scounteren = v & 0xffffffffull; return true;
    case 0x10a: h->senvcfg = v & 1; return true;
    case 0x140: h->sscratch = v; return true;
    case 0x141: h->sepc = v & ~1ull; return true;
    case 0x142: h->scause = v; return true;
    case 0x143: h->stval = v; return true;
    case 0x144: { /* sip: only SSIP is writable, when delegated */
        uint64_t mask = RV_MIP_SSIP & h->mideleg;
        h->mip = (h->mip & ~mask) | (v & mask);
        return true;
    }
    case 0x14d:
        if (h->priv == RV_PRIV_S && (!(h->menvcfg & RV_MENVCFG_STCE) || !(h->mcounteren & 2))) {
            return false;
        }
        if (!(h->menvcfg & RV_MENVCFG_STCE) && h->priv != RV_PRIV_M) return false;
        h->stimecmp = v;
        return true;
    case 0x180: {
        if (h->priv == RV_PRIV_S && (h->mstatus & RV_MS_TVM)) return false;
        uint64_t mode = v >> 60;
        if (mode != 0 && mode != 8 && mode != 9) {
            return true; /* WARL: an unsupported mode leaves satp as it is */
        }
        h->satp = v & ((0xfull << 60) | (0xffffull << 44) | ((1ull << 44) - 1));
        if (mode == 0) {
            h->satp = 0;
        }
        rv_tlb_flush(h);
        return true;
    }
    case 0x300: mstatus_write(h, v, MSTATUS_WMASK); return true;
    case 0x301: return true; /* misa: fixed */
    case 0x302: h->medeleg = v & MEDELEG_MASK; return true;
    case 0x303: h->mideleg = v & DELEG_INTS; return true;
    case 0x304: h->mie = v & MIE_MASK; return true;
    case 0x305: h->mtvec = v & ~2ull; return true;
    case 0x306: h->mcounteren = v & 0xffffffffull; return true;
    case 0x30a: h->menvcfg = v & (RV_MENVCFG_STCE | 1); return true;
    case 0x320: h->mcountinhibit = v & 0xfffffffdull; return true;
    case 0x340: h->mscratch = v; return true;
    case 0x341: h->mepc = v & ~1ull; return true;
    case 0x342: h->mcause = v; return true;
    case 0x343: h->mtval = v; return true;
    case 0x344: {
        uint64_t mask = RV_MIP_SSIP | RV_MIP_SEIP |
                        ((h->menvcfg & RV_MENVCFG_STCE) ? 0 : RV_MIP_STIP);
        h->mip = (h->mip & ~mask) | (v & mask);
        return true;
    }
    case 0x3a0: h->pmpcfg[0] = v & 0x9f9f9f9f9f9f9f9full; return true;
    case 0x3a2: h->pmpcfg[1] = v & 0x9f9f9f9f9f9f9f9full; return true;
    case 0xb00: case 0xb02: h->instret = v; return true;
    default:
        break;
    }
    if (csr >= 0x3a0 && csr <= 0x3af) {
        return !(csr & 1);
    }
    if (csr >= 0x3b0 && csr <= 0x3ef) {
        unsigned i = csr - 0x3b0;
        if (i < RV_NPMP) h->pmpaddr[i] = v & PMPADDR_MASK;
        return true;
    }
    if (csr >= 0xb03 && csr <= 0xb1f) {
        unsigned i = csr - 0xb03;
        if (i < RV_NHPM) h->mhpmcounter[i] = v;
        return true;
    }
    if (csr >= 0x323 && csr <= 0x33f) {
        unsigned i = csr - 0x323;
        if (i < RV_NHPM) h->mhpmevent[i] = v;
        return true;
    }
    return false;
}
