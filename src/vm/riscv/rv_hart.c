/*
 * The interpreter: fetch through the software TLB, decode, execute; traps,
 * interrupts and the Sv39/Sv48 page walk.
 */
#include <stddef.h>
#include <string.h>

#include "dev/rv_clint.h"
#include "rv_machine.h"

#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

#define PTE_V (1ull << 0)
#define PTE_R (1ull << 1)
#define PTE_W (1ull << 2)
#define PTE_X (1ull << 3)
#define PTE_U (1ull << 4)
#define PTE_A (1ull << 6)
#define PTE_D (1ull << 7)

/* ------------------------------------------------------------------------ */
/* State */

void rv_tlb_flush(rv_hart *h)
{
    memset(h->tlb, 0xff, sizeof(h->tlb));
    h->fetch_page = ~0ull;
    h->fetch_host = NULL;
}

void rv_hart_init(rv_hart *h, rv_machine *m, uint32_t hartid)
{
    memset(h, 0, sizeof(*h));
    h->m = m;
    h->hartid = hartid;
    rv_tlb_flush(h);
}

void rv_hart_reset(rv_hart *h, uint64_t pc)
{
    memset(h->x, 0, sizeof(h->x));
    memset(h->f, 0, sizeof(h->f));
    h->pc = pc;
    h->priv = RV_PRIV_M;
    h->mstatus = (2ull << 32) | (2ull << 34);
    h->fcsr = 0;
    h->medeleg = h->mideleg = h->mie = h->mip = 0;
    h->mtvec = h->mscratch = h->mepc = h->mcause = h->mtval = 0;
    h->mcounteren = h->mcountinhibit = h->menvcfg = 0;
    h->stvec = h->sscratch = h->sepc = h->scause = h->stval = h->satp = 0;
    h->scounteren = h->senvcfg = 0;
    h->stimecmp = ~0ull;
    memset(h->pmpcfg, 0, sizeof(h->pmpcfg));
    memset(h->pmpaddr, 0, sizeof(h->pmpaddr));
    memset(h->mhpmcounter, 0, sizeof(h->mhpmcounter));
    memset(h->mhpmevent, 0, sizeof(h->mhpmevent));
    h->instret = 0;
    h->wfi = false;
    h->lr_valid = false;
    rv_tlb_flush(h);
}

static void set_priv(rv_hart *h, uint64_t priv)
{
    if (h->priv != priv) {
        h->priv = priv;
        rv_tlb_flush(h);
    }
}

/* ------------------------------------------------------------------------ */
/* Interrupts */

void rv_hart_set_line(rv_hart *h, uint32_t bit, bool level)
{
    uint32_t old;
    if (level) {
        old = __atomic_fetch_or(&h->irq_lines, bit, __ATOMIC_SEQ_CST);
    } else {
        old = __atomic_fetch_and(&h->irq_lines, ~bit, __ATOMIC_SEQ_CST);
    }
    if (level && !(old & bit)) {
        /* Stop the current batch so the interrupt is seen soon, and wake
         * a WFI. */
        __atomic_store_n(&h->budget, 0, __ATOMIC_RELAXED);
        rv_machine_kick(h->m);
    }
}

uint64_t rv_hart_mip(rv_hart *h)
{
    uint64_t mip = h->mip | __atomic_load_n(&h->irq_lines, __ATOMIC_SEQ_CST);
    uint64_t now = rv_machine_mtime(h->m);

    if (now >= rv_clint_mtimecmp(h->m->clint, h->hartid)) {
        mip |= RV_MIP_MTIP;
    }
    if (h->menvcfg & RV_MENVCFG_STCE) {
        mip &= ~RV_MIP_STIP;
        if (now >= h->stimecmp) {
            mip |= RV_MIP_STIP;
        }
    }
    return mip;
}

bool rv_hart_wfi_wakeup(rv_hart *h)
{
    return (rv_hart_mip(h) & h->mie) != 0;
}

static void trap_enter(rv_hart *h, uint64_t code, uint64_t tval, bool interrupt)
{
    uint64_t deleg = interrupt ? h->mideleg : h->medeleg;
    uint64_t cause = code | (interrupt ? 1ull << 63 : 0);

    h->lr_valid = false;
    if (h->priv <= RV_PRIV_S && code < 64 && ((deleg >> code) & 1)) {
        h->scause = cause;
        h->sepc = h->pc;
        h->stval = tval;
        uint64_t s = h->mstatus;
        s = (s & ~RV_MS_SPIE) | ((s & RV_MS_SIE) ? RV_MS_SPIE : 0);
        s &= ~RV_MS_SIE;
        s = (s & ~RV_MS_SPP) | (h->priv == RV_PRIV_S ? RV_MS_SPP : 0);
        h->mstatus = s;
        h->pc = (h->stvec & ~3ull) + ((h->stvec & 1) && interrupt ? 4 * code : 0);
        set_priv(h, RV_PRIV_S);
    } else {
        h->mcause = cause;
        h->mepc = h->pc;
        h->mtval = tval;
        uint64_t s = h->mstatus;
        s = (s & ~RV_MS_MPIE) | ((s & RV_MS_MIE) ? RV_MS_MPIE : 0);
        s &= ~RV_MS_MIE;
        s = (s & ~RV_MS_MPP) | (h->priv << RV_MS_MPP_SHIFT);
        h->mstatus = s;
        h->pc = (h->mtvec & ~3ull) + ((h->mtvec & 1) && interrupt ? 4 * code : 0);
        set_priv(h, RV_PRIV_M);
    }
}

bool rv_hart_check_interrupts(rv_hart *h)
{
    uint64_t pend = rv_hart_mip(h) & h->mie;
    if (!pend) {
        return false;
    }
    uint64_t take = 0;
    bool m_en = h->priv < RV_PRIV_M || (h->mstatus & RV_MS_MIE);
    bool s_en = h->priv < RV_PRIV_S || (h->priv == RV_PRIV_S && (h->mstatus & RV_MS_SIE));
    if (m_en) {
        take = pend & ~h->mideleg;
    }
    if (!take && s_en) {
        take = pend & h->mideleg;
    }
    if (!take) {
        return false;
    }
    static const unsigned order[] = { RV_IRQ_MEI, RV_IRQ_MSI, RV_IRQ_MTI,
                                      RV_IRQ_SEI, RV_IRQ_SSI, RV_IRQ_STI };
    for (unsigned i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        if (take & (1ull << order[i])) {
            h->wfi = false;
            trap_enter(h, order[i], 0, true);
            return true;
        }
    }
    return false;
}

void rv_raise(rv_hart *h, uint64_t cause, uint64_t tval)
{
    trap_enter(h, cause, tval, false);
    longjmp(h->trap_jb, 1);
}

/* ------------------------------------------------------------------------ */
/* Address translation */

static uint64_t data_priv(const rv_hart *h)
{
    if ((h->mstatus & RV_MS_MPRV) && h->priv == RV_PRIV_M) {
        return (h->mstatus & RV_MS_MPP) >> RV_MS_MPP_SHIFT;
    }
    return h->priv;
}

static __attribute__((noreturn)) void page_fault(rv_hart *h, uint64_t va, int acc)
{
    static const uint64_t cause[3] = { RV_EXC_LOAD_PAGE, RV_EXC_STORE_PAGE, RV_EXC_INSN_PAGE };
    rv_raise(h, cause[acc], va);
}

static __attribute__((noreturn)) void access_fault(rv_hart *h, uint64_t va, int acc)
{
    static const uint64_t cause[3] = { RV_EXC_LOAD_ACCESS, RV_EXC_STORE_ACCESS, RV_EXC_INSN_ACCESS };
    rv_raise(h, cause[acc], va);
}

/* Virtual to physical for one access; raises the page fault. */
static uint64_t translate(rv_hart *h, uint64_t va, int acc)
{
    uint64_t priv = acc == RV_ACC_EXEC ? h->priv : data_priv(h);
    uint64_t mode = h->satp >> 60;

    if (priv == RV_PRIV_M || mode == 0) {
        return va;
    }
    int levels = mode == 8 ? 3 : 4;
    int vabits = 12 + 9 * levels;
    if ((uint64_t)((int64_t)(va << (64 - vabits)) >> (64 - vabits)) != va) {
        page_fault(h, va, acc);
    }
restart:;
    uint64_t ppn = h->satp & ((1ull << 44) - 1);
    for (int lvl = levels - 1; lvl >= 0; lvl--) {
        uint64_t pte_pa = (ppn << 12) + ((va >> (12 + 9 * lvl)) & 511) * 8;
        uint64_t *ptep = (uint64_t *)rv_phys_ptr(h->m, pte_pa, 8, true);
        if (!ptep) {
            access_fault(h, va, acc);
        }
        uint64_t pte = __atomic_load_n(ptep, __ATOMIC_ACQUIRE);
        if (!(pte & PTE_V) || (!(pte & PTE_R) && (pte & PTE_W)) || (pte >> 54)) {
            page_fault(h, va, acc);
        }
        if (!(pte & (PTE_R | PTE_X))) {
            if (pte & (PTE_U | PTE_A | PTE_D)) {
                page_fault(h, va, acc);
            }
            ppn = (pte >> 10) & ((1ull << 44) - 1);
            continue;
        }
        /* A leaf */
        if (priv == RV_PRIV_U && !(pte & PTE_U)) {
            page_fault(h, va, acc);
        }
        if (priv == RV_PRIV_S && (pte & PTE_U) &&
            (acc == RV_ACC_EXEC || !(h->mstatus & RV_MS_SUM))) {
            page_fault(h, va, acc);
        }
        bool ok;
        switch (acc) {
        case RV_ACC_READ:
            ok = (pte & PTE_R) || ((h->mstatus & RV_MS_MXR) && (pte & PTE_X));
            break;
        case RV_ACC_WRITE:
            ok = (pte & PTE_W) != 0;
            break;
        default:
            ok = (pte & PTE_X) != 0;
            break;
        }
        if (!ok) {
            page_fault(h, va, acc);
        }
        uint64_t pgmask = (1ull << (12 + 9 * lvl)) - 1;
        uint64_t leaf_ppn = (pte >> 10) & ((1ull << 44) - 1);
        if ((leaf_ppn << 12) & pgmask) {
            page_fault(h, va, acc); /* misaligned superpage */
        }
        uint64_t need = PTE_A | (acc == RV_ACC_WRITE ? PTE_D : 0);
        if ((pte & need) != need) {
            /* Hardware A/D update, as QEMU does; atomic against the other
             * harts and the guest's own updates. */
            if (!__atomic_compare_exchange_n(ptep, &pte, pte | need, false, __ATOMIC_SEQ_CST,
                                             __ATOMIC_SEQ_CST)) {
                goto restart;
            }
            rv_ram_wrote(h->m, ptep, 8);
        }
        return ((leaf_ppn << 12) & ~pgmask) | (va & pgmask);
    }
    page_fault(h, va, acc);
}

/* Translate and, for RAM or ROM, cache the page in the TLB.  Returns the
 * host address or NULL (a device); *pa gets the physical address. */
static uint8_t *translate_fill(rv_hart *h, uint64_t va, int acc, uint64_t *pa)
{
    *pa = translate(h, va, acc);
    uint8_t *host = rv_phys_ptr(h->m, *pa & ~0xfffull, 4096, acc == RV_ACC_WRITE);
    if (!host) {
        return NULL;
    }
    rv_tlb_entry *e = &h->tlb[acc][(va >> 12) & (RV_TLB_SIZE - 1)];
    e->tag = va & ~0xfffull;
    e->addend = (uintptr_t)host - (uintptr_t)(va & ~0xfffull);
    return host + (va & 0xfff);
}

static inline uint8_t *tlb_hit(rv_hart *h, int acc, uint64_t va)
{
    rv_tlb_entry *e = &h->tlb[acc][(va >> 12) & (RV_TLB_SIZE - 1)];
    if (LIKELY(e->tag == (va & ~0xfffull))) {
        return (uint8_t *)(e->addend + (uintptr_t)va);
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Loads and stores */

static inline uint64_t host_read(const uint8_t *p, unsigned size)
{
    switch (size) {
    case 1: return *p;
    case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
    default: { uint64_t v; memcpy(&v, p, 8); return v; }
    }
}

static inline void host_write(uint8_t *p, unsigned size, uint64_t val)
{
    switch (size) {
    case 1: *p = (uint8_t)val; break;
    case 2: { uint16_t v = (uint16_t)val; memcpy(p, &v, 2); break; }
    case 4: { uint32_t v = (uint32_t)val; memcpy(p, &v, 4); break; }
    default: memcpy(p, &val, 8); break;
    }
}

static __attribute__((noinline)) uint64_t load_slow(rv_hart *h, uint64_t va, unsigned size)
{
    if ((va & 0xfff) + size > 4096) {
        /* Crosses a page: byte by byte (each byte may fault). */
        uint64_t v = 0;
        for (unsigned i = 0; i < size; i++) {
            v |= rv_load(h, va + i, 1) << (8 * i);
        }
        return v;
    }
    uint64_t pa;
    uint8_t *p = translate_fill(h, va, RV_ACC_READ, &pa);
    if (p) {
        return host_read(p, size);
    }
    uint64_t v;
    if (!rv_mmio_read(h->m, pa, size, &v)) {
        access_fault(h, va, RV_ACC_READ);
    }
    return v;
}

static __attribute__((noinline)) void store_slow(rv_hart *h, uint64_t va, unsigned size, uint64_t val)
{
    if ((va & 0xfff) + size > 4096) {
        /* Check both pages first so a fault leaves memory untouched. */
        uint64_t pa;
        translate(h, va, RV_ACC_WRITE);
        translate(h, va + size - 1, RV_ACC_WRITE);
        (void)pa;
        for (unsigned i = 0; i < size; i++) {
            rv_store(h, va + i, 1, val >> (8 * i));
        }
        return;
    }
    uint64_t pa;
    uint8_t *p = translate_fill(h, va, RV_ACC_WRITE, &pa);
    if (p) {
        host_write(p, size, val);
        rv_ram_wrote(h->m, p, size);
        return;
    }
    if (!rv_mmio_write(h->m, pa, size, val)) {
        access_fault(h, va, RV_ACC_WRITE);
    }
    /* A device write may raise an interrupt: look at it soon. */
    h->budget = 0;
}

uint64_t rv_load(rv_hart *h, uint64_t va, unsigned size)
{
    if (LIKELY((va & 0xfff) <= 4096 - size)) {
        uint8_t *p = tlb_hit(h, RV_ACC_READ, va);
        if (LIKELY(p != NULL)) {
            return host_read(p, size);
        }
    }
    return load_slow(h, va, size);
}

void rv_store(rv_hart *h, uint64_t va, unsigned size, uint64_t val)
{
    if (LIKELY((va & 0xfff) <= 4096 - size)) {
        uint8_t *p = tlb_hit(h, RV_ACC_WRITE, va);
        if (LIKELY(p != NULL)) {
            host_write(p, size, val);
            rv_ram_wrote(h->m, p, size);
            return;
        }
    }
    store_slow(h, va, size, val);
}

void *rv_atomic_ptr(rv_hart *h, uint64_t va, unsigned size, bool store)
{
    int acc = store ? RV_ACC_WRITE : RV_ACC_READ;
    if (va & (size - 1)) {
        rv_raise(h, store ? RV_EXC_STORE_MISALIGNED : RV_EXC_LOAD_MISALIGNED, va);
    }
    uint8_t *p = tlb_hit(h, acc, va);
    if (p) {
        return p;
    }
    uint64_t pa;
    p = translate_fill(h, va, acc, &pa);
    if (!p) {
        access_fault(h, va, acc);
    }
    return p;
}

/* ------------------------------------------------------------------------ */
/* Fetch */

static __attribute__((noinline)) uint32_t fetch_slow(rv_hart *h, uint64_t pc)
{
    uint64_t pa;
    uint8_t *p = tlb_hit(h, RV_ACC_EXEC, pc);
    if (!p) {
        p = translate_fill(h, pc, RV_ACC_EXEC, &pa);
        if (!p) {
            access_fault(h, pc, RV_ACC_EXEC);
        }
    }
    h->fetch_page = pc & ~0xfffull;
    h->fetch_host = p - (pc & 0xfff);
    uint16_t lo;
    memcpy(&lo, p, 2);
    if ((lo & 3) != 3) {
        return lo;
    }
    if ((pc & 0xfff) != 0xffe) {
        uint32_t w;
        memcpy(&w, p, 4);
        return w;
    }
    /* The upper half is on the next page. */
    uint64_t pc2 = pc + 2;
    uint8_t *q = tlb_hit(h, RV_ACC_EXEC, pc2);
    if (!q) {
        q = translate_fill(h, pc2, RV_ACC_EXEC, &pa);
        if (!q) {
            access_fault(h, pc2, RV_ACC_EXEC);
        }
    }
    uint16_t hi;
    memcpy(&hi, q, 2);
    return (uint32_t)lo | (uint32_t)hi << 16;
}

static inline uint32_t fetch(rv_hart *h, uint64_t pc)
{
    uint64_t off = pc & 0xfff;
    if (LIKELY((pc & ~0xfffull) == h->fetch_page && off != 0xffe)) {
        uint32_t w;
        if (off <= 0xffc) {
            memcpy(&w, h->fetch_host + off, 4);
            return (w & 3) == 3 ? w : (w & 0xffff);
        }
    }
    return fetch_slow(h, pc);
}

/* ------------------------------------------------------------------------ */
/* Execute */

#define RD ((insn >> 7) & 31)
#define RS1 ((insn >> 15) & 31)
#define RS2 ((insn >> 20) & 31)
#define F3 ((insn >> 12) & 7)
#define F7 (insn >> 25)
#define IMM_I ((int64_t)(int32_t)insn >> 20)
#define IMM_S ((int64_t)((uint64_t)((int64_t)(int32_t)insn >> 25) << 5) | ((insn >> 7) & 31))
#define X(r) (h->x[r])

static __attribute__((noreturn)) void illegal(rv_hart *h, uint32_t orig)
{
    rv_raise(h, RV_EXC_ILLEGAL, orig);
}

static inline int64_t sext32(uint64_t v)
{
    return (int64_t)(int32_t)(uint32_t)v;
}

static uint64_t mulh(int64_t a, int64_t b)
{
    return (uint64_t)(((__int128)a * b) >> 64);
}

static uint64_t mulhsu(int64_t a, uint64_t b)
{
    return (uint64_t)(((__int128)a * (unsigned __int128)b) >> 64);
}

static uint64_t mulhu(uint64_t a, uint64_t b)
{
    return (uint64_t)(((unsigned __int128)a * b) >> 64);
}

static uint64_t op_muldiv(unsigned f3, uint64_t a, uint64_t b)
{
    switch (f3) {
    case 0: return a * b;
    case 1: return mulh((int64_t)a, (int64_t)b);
    case 2: return mulhsu((int64_t)a, b);
    case 3: return mulhu(a, b);
    case 4:
        if (b == 0) return ~0ull;
        if ((int64_t)a == INT64_MIN && (int64_t)b == -1) return a;
        return (uint64_t)((int64_t)a / (int64_t)b);
    case 5:
        return b == 0 ? ~0ull : a / b;
    case 6:
        if (b == 0) return a;
        if ((int64_t)a == INT64_MIN && (int64_t)b == -1) return 0;
        return (uint64_t)((int64_t)a % (int64_t)b);
    default:
        return b == 0 ? a : a % b;
    }
}

static uint64_t op_muldivw(unsigned f3, uint64_t a64, uint64_t b64, bool *ok)
{
    int32_t a = (int32_t)a64, b = (int32_t)b64;
    uint32_t ua = (uint32_t)a64, ub = (uint32_t)b64;
    switch (f3) {
    case 0: return (uint64_t)sext32((uint64_t)(ua * ub));
    case 4:
        if (b == 0) return ~0ull;
        if (a == INT32_MIN && b == -1) return (uint64_t)(int64_t)a;
        return (uint64_t)(int64_t)(a / b);
    case 5: return (uint64_t)sext32(ub == 0 ? ~0u : ua / ub);
    case 6:
        if (b == 0) return (uint64_t)(int64_t)a;
        if (a == INT32_MIN && b == -1) return 0;
        return (uint64_t)(int64_t)(a % b);
    case 7: return (uint64_t)sext32(ub == 0 ? ua : ua % ub);
    default:
        *ok = false;
        return 0;
    }
}

static uint64_t rol64(uint64_t v, unsigned n)
{
    n &= 63;
    return n ? (v << n) | (v >> (64 - n)) : v;
}

static uint64_t ror64(uint64_t v, unsigned n)
{
    n &= 63;
    return n ? (v >> n) | (v << (64 - n)) : v;
}

static uint32_t ror32(uint32_t v, unsigned n)
{
    n &= 31;
    return n ? (v >> n) | (v << (32 - n)) : v;
}

static uint64_t orc_b(uint64_t v)
{
    uint64_t r = 0;
    for (int i = 0; i < 8; i++) {
        if ((v >> (8 * i)) & 0xff) {
            r |= 0xffull << (8 * i);
        }
    }
    return r;
}

/* OP (0x33): base, M, Zba, Zbb, Zbs.  ok=false: illegal. */
static uint64_t exec_op(uint32_t insn, uint64_t a, uint64_t b, bool *ok)
{
    unsigned f3 = F3, f7 = F7;
    switch (f7) {
    case 0x00:
        switch (f3) {
        case 0: return a + b;
        case 1: return a << (b & 63);
        case 2: return (int64_t)a < (int64_t)b;
        case 3: return a < b;
        case 4: return a ^ b;
        case 5: return a >> (b & 63);
        case 6: return a | b;
        default: return a & b;
        }
    case 0x20:
        switch (f3) {
        case 0: return a - b;
        case 5: return (uint64_t)((int64_t)a >> (b & 63));
        case 4: return a ^ ~b;   /* xnor */
        case 6: return a | ~b;   /* orn */
        case 7: return a & ~b;   /* andn */
        default: break;
        }
        break;
    case 0x01:
        return op_muldiv(f3, a, b);
    case 0x10: /* sh1add, sh2add, sh3add */
        if (f3 == 2 || f3 == 4 || f3 == 6) {
            return (a << (f3 >> 1)) + b;
        }
        break;
    case 0x05: /* min, minu, max, maxu */
        switch (f3) {
        case 4: return (int64_t)a < (int64_t)b ? a : b;
        case 5: return a < b ? a : b;
        case 6: return (int64_t)a > (int64_t)b ? a : b;
        case 7: return a > b ? a : b;
        default: break;
        }
        break;
    case 0x30: /* rol, ror */
        if (f3 == 1) return rol64(a, (unsigned)b);
        if (f3 == 5) return ror64(a, (unsigned)b);
        break;
    case 0x24: /* bclr, bext */
        if (f3 == 1) return a & ~(1ull << (b & 63));
        if (f3 == 5) return (a >> (b & 63)) & 1;
        break;
    case 0x34: /* binv */
        if (f3 == 1) return a ^ (1ull << (b & 63));
        break;
    case 0x14: /* bset */
        if (f3 == 1) return a | (1ull << (b & 63));
        break;
    default:
        break;
    }
    *ok = false;
    return 0;
}

/* OP-32 (0x3b) */
static uint64_t exec_op32(uint32_t insn, uint64_t a, uint64_t b, bool *ok)
{
    unsigned f3 = F3, f7 = F7;
    uint32_t a32 = (uint32_t)a, sh = (uint32_t)b & 31;
    switch (f7) {
    case 0x00:
        if (f3 == 0) return (uint64_t)sext32(a32 + (uint32_t)b);
        if (f3 == 1) return (uint64_t)sext32(a32 << sh);
        if (f3 == 5) return (uint64_t)sext32(a32 >> sh);
        break;
    case 0x20:
        if (f3 == 0) return (uint64_t)sext32(a32 - (uint32_t)b);
        if (f3 == 5) return (uint64_t)(int64_t)((int32_t)a32 >> sh);
        break;
    case 0x01:
        return op_muldivw(f3, a, b, ok);
    case 0x04:
        if (f3 == 0) return (a & 0xffffffffull) + b;              /* add.uw */
        if (f3 == 4 && RS2 == 0) return a & 0xffff;                /* zext.h */
        break;
    case 0x10: /* sh1add.uw, sh2add.uw, sh3add.uw */
        if (f3 == 2 || f3 == 4 || f3 == 6) {
            return ((a & 0xffffffffull) << (f3 >> 1)) + b;
        }
        break;
    case 0x30: /* rolw, rorw */
        if (f3 == 1) return (uint64_t)sext32(ror32(a32, 32 - sh));
        if (f3 == 5) return (uint64_t)sext32(ror32(a32, sh));
        break;
    default:
        break;
    }
    *ok = false;
    return 0;
}

/* OP-IMM (0x13) */
static uint64_t exec_opimm(uint32_t insn, uint64_t a, bool *ok)
{
    int64_t imm = IMM_I;
    unsigned shamt = (insn >> 20) & 63, f6 = insn >> 26;
    switch (F3) {
    case 0: return a + (uint64_t)imm;
    case 2: return (int64_t)a < imm;
    case 3: return a < (uint64_t)imm;
    case 4: return a ^ (uint64_t)imm;
    case 6: return a | (uint64_t)imm;
    case 7: return a & (uint64_t)imm;
    case 1:
        switch (f6) {
        case 0x00: return a << shamt;
        case 0x12: return a & ~(1ull << shamt);   /* bclri */
        case 0x1a: return a ^ (1ull << shamt);    /* binvi */
        case 0x0a: return a | (1ull << shamt);    /* bseti */
        case 0x18:
            switch ((insn >> 20) & 0x3f) {
            case 0: return a ? (uint64_t)__builtin_clzll(a) : 64;          /* clz */
            case 1: return a ? (uint64_t)__builtin_ctzll(a) : 64;          /* ctz */
            case 2: return (uint64_t)__builtin_popcountll(a);              /* cpop */
            case 4: return (uint64_t)(int64_t)(int8_t)a;                   /* sext.b */
            case 5: return (uint64_t)(int64_t)(int16_t)a;                  /* sext.h */
            default: break;
            }
            break;
        default:
            break;
        }
        break;
    default: /* 5 */
        switch (f6) {
        case 0x00: return a >> shamt;
        case 0x10: return (uint64_t)((int64_t)a >> shamt);
        case 0x12: return (a >> shamt) & 1;        /* bexti */
        case 0x18: return ror64(a, shamt);         /* rori */
        case 0x0a:
            if (((insn >> 20) & 0xfff) == 0x287) return orc_b(a);
            break;
        case 0x1a:
            if (((insn >> 20) & 0xfff) == 0x6b8) return __builtin_bswap64(a); /* rev8 */
            break;
        default:
            break;
        }
        break;
    }
    *ok = false;
    return 0;
}

/* OP-IMM-32 (0x1b) */
static uint64_t exec_opimm32(uint32_t insn, uint64_t a, bool *ok)
{
    uint32_t a32 = (uint32_t)a;
    unsigned shamt = (insn >> 20) & 31, f7 = F7;
    switch (F3) {
    case 0: return (uint64_t)sext32(a32 + (uint32_t)IMM_I);
    case 1:
        if (f7 == 0) return (uint64_t)sext32(a32 << shamt);
        if ((insn >> 26) == 0x02) return (a & 0xffffffffull) << ((insn >> 20) & 63); /* slli.uw */
        if (f7 == 0x30) {
            switch (RS2) {
            case 0: return a32 ? (uint64_t)__builtin_clz(a32) : 32;    /* clzw */
            case 1: return a32 ? (uint64_t)__builtin_ctz(a32) : 32;    /* ctzw */
            case 2: return (uint64_t)__builtin_popcount(a32);          /* cpopw */
            default: break;
            }
        }
        break;
    case 5:
        if (f7 == 0) return (uint64_t)sext32(a32 >> shamt);
        if (f7 == 0x20) return (uint64_t)(int64_t)((int32_t)a32 >> shamt);
        if (f7 == 0x30) return (uint64_t)sext32(ror32(a32, shamt));   /* roriw */
        break;
    default:
        break;
    }
    *ok = false;
    return 0;
}

static void exec_amo(rv_hart *h, uint32_t insn, uint32_t orig)
{
    unsigned f5 = insn >> 27, f3 = F3;
    uint64_t va = X(RS1), src = X(RS2), old;
    unsigned size;

    if (f3 == 2) {
        size = 4;
    } else if (f3 == 3) {
        size = 8;
    } else {
        illegal(h, orig);
    }
    if (f5 == 2) { /* lr */
        if (RS2 != 0) {
            illegal(h, orig);
        }
        void *p = rv_atomic_ptr(h, va, size, false);
        old = size == 4 ? (uint64_t)sext32(__atomic_load_n((uint32_t *)p, __ATOMIC_SEQ_CST))
                        : __atomic_load_n((uint64_t *)p, __ATOMIC_SEQ_CST);
        h->lr_valid = true;
        h->lr_addr = va;
        h->lr_val = old;
        if (RD) X(RD) = old;
        return;
    }
    if (f5 == 3) { /* sc */
        uint64_t fail = 1;
        void *p = rv_atomic_ptr(h, va, size, true);
        if (h->lr_valid && h->lr_addr == va) {
            bool done;
            if (size == 4) {
                uint32_t exp = (uint32_t)h->lr_val;
                done = __atomic_compare_exchange_n((uint32_t *)p, &exp, (uint32_t)src, false,
                                                   __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
            } else {
                uint64_t exp = h->lr_val;
                done = __atomic_compare_exchange_n((uint64_t *)p, &exp, src, false,
                                                   __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
            }
            if (done) {
                rv_ram_wrote(h->m, p, size);
                fail = 0;
            }
        }
        h->lr_valid = false;
        if (RD) X(RD) = fail;
        return;
    }
    void *p = rv_atomic_ptr(h, va, size, true);
    if (size == 4) {
        uint32_t *q = p, s = (uint32_t)src, o;
        switch (f5) {
        case 0x01: o = __atomic_exchange_n(q, s, __ATOMIC_SEQ_CST); break;
        case 0x00: o = __atomic_fetch_add(q, s, __ATOMIC_SEQ_CST); break;
        case 0x04: o = __atomic_fetch_xor(q, s, __ATOMIC_SEQ_CST); break;
        case 0x0c: o = __atomic_fetch_and(q, s, __ATOMIC_SEQ_CST); break;
        case 0x08: o = __atomic_fetch_or(q, s, __ATOMIC_SEQ_CST); break;
        case 0x10: case 0x14: case 0x18: case 0x1c: {
            o = __atomic_load_n(q, __ATOMIC_SEQ_CST);
            uint32_t n;
            do {
                switch (f5) {
                case 0x10: n = (int32_t)o < (int32_t)s ? o : s; break;
                case 0x14: n = (int32_t)o > (int32_t)s ? o : s; break;
                case 0x18: n = o < s ? o : s; break;
                default: n = o > s ? o : s; break;
                }
            } while (!__atomic_compare_exchange_n(q, &o, n, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
            break;
        }
        default:
            illegal(h, orig);
        }
        old = (uint64_t)sext32(o);
    } else {
        uint64_t *q = p, s = src, o;
        switch (f5) {
        case 0x01: o = __atomic_exchange_n(q, s, __ATOMIC_SEQ_CST); break;
        case 0x00: o = __atomic_fetch_add(q, s, __ATOMIC_SEQ_CST); break;
        case 0x04: o = __atomic_fetch_xor(q, s, __ATOMIC_SEQ_CST); break;
        case 0x0c: o = __atomic_fetch_and(q, s, __ATOMIC_SEQ_CST); break;
        case 0x08: o = __atomic_fetch_or(q, s, __ATOMIC_SEQ_CST); break;
        case 0x10: case 0x14: case 0x18: case 0x1c: {
            o = __atomic_load_n(q, __ATOMIC_SEQ_CST);
            uint64_t n;
            do {
                switch (f5) {
                case 0x10: n = (int64_t)o < (int64_t)s ? o : s; break;
                case 0x14: n = (int64_t)o > (int64_t)s ? o : s; break;
                case 0x18: n = o < s ? o : s; break;
                default: n = o > s ? o : s; break;
                }
            } while (!__atomic_compare_exchange_n(q, &o, n, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
            break;
        }
        default:
            illegal(h, orig);
        }
        old = o;
    }
    rv_ram_wrote(h->m, p, size);
    if (RD) X(RD) = old;
}

static void exec_system(rv_hart *h, uint32_t insn, uint32_t orig, uint64_t next)
{
    unsigned f3 = F3;
    if (f3 == 0) {
        if (RD != 0) {
            illegal(h, orig);
        }
        if (F7 == 0x09) { /* sfence.vma */
            if (h->priv == RV_PRIV_U || (h->priv == RV_PRIV_S && (h->mstatus & RV_MS_TVM))) {
                illegal(h, orig);
            }
            rv_tlb_flush(h);
            h->pc = next;
            return;
        }
        switch (insn >> 20) {
        case 0x000: /* ecall */
            rv_raise(h, RV_EXC_ECALL_U + h->priv, 0);
        case 0x001: /* ebreak: tval 0, as QEMU 7.2 */
            rv_raise(h, RV_EXC_BREAKPOINT, 0);
        case 0x102: { /* sret */
            if (h->priv < RV_PRIV_S || (h->priv == RV_PRIV_S && (h->mstatus & RV_MS_TSR)) || RS1) {
                illegal(h, orig);
            }
            uint64_t s = h->mstatus;
            uint64_t np = (s & RV_MS_SPP) ? RV_PRIV_S : RV_PRIV_U;
            s = (s & ~RV_MS_SIE) | ((s & RV_MS_SPIE) ? RV_MS_SIE : 0);
            s |= RV_MS_SPIE;
            s &= ~RV_MS_SPP;
            s &= ~RV_MS_MPRV;
            h->mstatus = s;
            h->pc = h->sepc;
            set_priv(h, np);
            rv_tlb_flush(h); /* MPRV may have changed */
            h->budget = 0;
            return;
        }
        case 0x302: { /* mret */
            if (h->priv != RV_PRIV_M || RS1) {
                illegal(h, orig);
            }
            uint64_t s = h->mstatus;
            uint64_t np = (s & RV_MS_MPP) >> RV_MS_MPP_SHIFT;
            s = (s & ~RV_MS_MIE) | ((s & RV_MS_MPIE) ? RV_MS_MIE : 0);
            s |= RV_MS_MPIE;
            s &= ~RV_MS_MPP;
            if (np != RV_PRIV_M) {
                s &= ~RV_MS_MPRV;
            }
            h->mstatus = s;
            h->pc = h->mepc;
            set_priv(h, np);
            rv_tlb_flush(h);
            h->budget = 0;
            return;
        }
        case 0x105: /* wfi */
            if (h->priv == RV_PRIV_U || (h->priv == RV_PRIV_S && (h->mstatus & RV_MS_TW)) || RS1) {
                illegal(h, orig);
            }
            h->pc = next;
            h->wfi = true;
            h->budget = 0;
            return;
        default:
            illegal(h, orig);
        }
    }
    /* Zicsr */
    unsigned csr = insn >> 20;
    uint64_t src = (f3 & 4) ? RS1 : X(RS1);
    uint64_t old = 0;
    unsigned op = f3 & 3;
    bool do_read = !(op == 1 && RD == 0);
    bool do_write = op == 1 || RS1 != 0;
    if (op == 0) {
        illegal(h, orig);
    }
    if (do_write && (csr >> 10) == 3) {
        illegal(h, orig); /* read-only */
    }
    if ((do_read || op != 1) && !rv_csr_read(h, csr, &old)) {
        illegal(h, orig);
    }
    if (do_write) {
        uint64_t base = old;
        if (csr == 0x344) {
            /* mip's SEIP reads as the software-writable bit OR the PLIC's
             * line, but a CSRRS/CSRRC modifies only the software bit
             * (privileged spec 3.1.9).  Writing the line back would latch
             * it: OpenSBI's csrs mip,SSIP (an IPI for S-mode) while a
             * device interrupt was pending left SEIP set for good, an
             * endless stream of external interrupts the PLIC had no
             * source for (Linux hung with 2 harts and virtio-rng). */
            base = (old & ~(uint64_t)RV_MIP_SEIP) | (h->mip & RV_MIP_SEIP);
        }
        uint64_t nv = op == 1 ? src : op == 2 ? base | src : base & ~src;
        if (!rv_csr_write(h, csr, nv)) {
            illegal(h, orig);
        }
        h->budget = 0; /* interrupt enables, translation... may have changed */
    }
    if (RD) X(RD) = old;
    h->pc = next;
}

static inline void exec(rv_hart *h, uint32_t insn, uint32_t orig, unsigned len)
{
    uint64_t pc = h->pc, next = pc + len;
    bool ok = true;
    uint64_t v;

    switch (insn & 0x7f) {
    case 0x37: /* lui */
        v = (uint64_t)(int64_t)(int32_t)(insn & 0xfffff000);
        break;
    case 0x17: /* auipc */
        v = pc + (uint64_t)(int64_t)(int32_t)(insn & 0xfffff000);
        break;
    case 0x6f: { /* jal */
        int64_t imm = (int64_t)((uint64_t)((int64_t)(int32_t)insn >> 31) << 20) | (insn & 0xff000) |
                      ((insn >> 20) & 1) << 11 | ((insn >> 21) & 0x3ff) << 1;
        if (RD) X(RD) = next;
        h->pc = pc + (uint64_t)imm;
        return;
    }
    case 0x67: { /* jalr */
        if (F3 != 0) illegal(h, orig);
        uint64_t t = (X(RS1) + (uint64_t)IMM_I) & ~1ull;
        if (RD) X(RD) = next;
        h->pc = t;
        return;
    }
    case 0x63: { /* branches */
        uint64_t a = X(RS1), b = X(RS2);
        bool take;
        switch (F3) {
        case 0: take = a == b; break;
        case 1: take = a != b; break;
        case 4: take = (int64_t)a < (int64_t)b; break;
        case 5: take = (int64_t)a >= (int64_t)b; break;
        case 6: take = a < b; break;
        case 7: take = a >= b; break;
        default: illegal(h, orig);
        }
        if (take) {
            int64_t imm = (int64_t)((uint64_t)((int64_t)(int32_t)insn >> 31) << 12) | ((insn >> 7) & 1) << 11 |
                          ((insn >> 25) & 0x3f) << 5 | ((insn >> 8) & 0xf) << 1;
            h->pc = pc + (uint64_t)imm;
        } else {
            h->pc = next;
        }
        return;
    }
    case 0x03: { /* loads */
        uint64_t va = X(RS1) + (uint64_t)IMM_I;
        switch (F3) {
        case 0: v = (uint64_t)(int64_t)(int8_t)rv_load(h, va, 1); break;
        case 1: v = (uint64_t)(int64_t)(int16_t)rv_load(h, va, 2); break;
        case 2: v = (uint64_t)sext32(rv_load(h, va, 4)); break;
        case 3: v = rv_load(h, va, 8); break;
        case 4: v = rv_load(h, va, 1); break;
        case 5: v = rv_load(h, va, 2); break;
        case 6: v = rv_load(h, va, 4); break;
        default: illegal(h, orig);
        }
        break;
    }
    case 0x23: { /* stores */
        if (F3 > 3) illegal(h, orig);
        rv_store(h, X(RS1) + (uint64_t)IMM_S, 1u << F3, X(RS2));
        h->pc = next;
        return;
    }
    case 0x13:
        v = exec_opimm(insn, X(RS1), &ok);
        break;
    case 0x1b:
        v = exec_opimm32(insn, X(RS1), &ok);
        break;
    case 0x33:
        v = exec_op(insn, X(RS1), X(RS2), &ok);
        break;
    case 0x3b:
        v = exec_op32(insn, X(RS1), X(RS2), &ok);
        break;
    case 0x0f: /* fence, fence.i */
        if (F3 == 0) {
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
        } else if (F3 != 1) {
            illegal(h, orig);
        }
        h->pc = next;
        return;
    case 0x73:
        exec_system(h, insn, orig, next);
        return;
    case 0x2f:
        exec_amo(h, insn, orig);
        h->pc = next;
        return;
    case 0x07: case 0x27: case 0x43: case 0x47: case 0x4b: case 0x4f: case 0x53:
        rv_fp_check(h, orig);
        rv_exec_fp(h, insn);
        h->pc = next;
        return;
    default:
        illegal(h, orig);
    }
    if (!ok) {
        illegal(h, orig);
    }
    if (RD) X(RD) = v;
    h->pc = next;
}

void rv_hart_run(rv_hart *h, int n)
{
    __atomic_store_n(&h->budget, n, __ATOMIC_RELAXED);
    if (_setjmp(h->trap_jb)) {
        /* A trap was taken; carry on at its handler. */
    }
    while (__atomic_load_n(&h->budget, __ATOMIC_RELAXED) > 0) {
        h->budget--;
        h->instret++;
        uint32_t insn = fetch(h, h->pc);
        if ((insn & 3) != 3) {
            uint32_t full = rv_expand_compressed((uint16_t)insn);
            if (!full) {
                illegal(h, insn);
            }
            exec(h, full, insn, 2);
        } else {
            exec(h, insn, insn, 4);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Migration */

static int hart_post_load(void *opaque, uint32_t version, lm_error *err)
{
    rv_hart *h = opaque;
    if (h->priv != RV_PRIV_U && h->priv != RV_PRIV_S && h->priv != RV_PRIV_M) {
        return lm_error_set(err, -22, "hart %u: bad privilege level %llu", h->hartid,
                            (unsigned long long)h->priv);
    }
    h->x[0] = 0;
    h->lr_valid = false;
    rv_tlb_flush(h);
    return 0;
}

#define HF(member) LM_FIELD_SCALAR(rv_hart, member, LM_FIELD_U64)
static const lm_field hart_fields[] = {
    LM_FIELD_ARRAY(rv_hart, x, LM_FIELD_U64, 32),
    LM_FIELD_ARRAY(rv_hart, f, LM_FIELD_U64, 32),
    HF(pc), HF(priv), HF(fcsr), HF(mstatus), HF(medeleg), HF(mideleg), HF(mie), HF(mip),
    HF(mtvec), HF(mscratch), HF(mepc), HF(mcause), HF(mtval),
    HF(mcounteren), HF(mcountinhibit), HF(menvcfg),
    HF(stvec), HF(sscratch), HF(sepc), HF(scause), HF(stval), HF(satp), HF(scounteren),
    HF(senvcfg), HF(stimecmp),
    LM_FIELD_ARRAY(rv_hart, pmpcfg, LM_FIELD_U64, RV_NPMP / 8),
    LM_FIELD_ARRAY(rv_hart, pmpaddr, LM_FIELD_U64, RV_NPMP),
    LM_FIELD_ARRAY(rv_hart, mhpmcounter, LM_FIELD_U64, RV_NHPM),
    LM_FIELD_ARRAY(rv_hart, mhpmevent, LM_FIELD_U64, RV_NHPM),
    HF(instret),
    LM_FIELD_SCALAR(rv_hart, wfi, LM_FIELD_BOOL),
};

const lm_vmstate rv_hart_vmstate = {
    .name = "riscv-hart",
    .version = 1,
    .min_version = 1,
    .fields = hart_fields,
    .nfields = sizeof(hart_fields) / sizeof(hart_fields[0]),
    .post_load = hart_post_load,
};
