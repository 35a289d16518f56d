/*
 * PLIC: priorities, pending bits, per-context enables, threshold, claim and
 * complete; the result drives MEIP/SEIP of the harts.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../rv_machine.h"
#include "rv_plic.h"

#define PRIO_MASK 7u

/* The best pending, enabled source above the context's threshold; 0 if none. */
static unsigned best_source(const rv_plic *p, unsigned ctx)
{
    unsigned best = 0;
    uint32_t best_prio = 0;
    for (unsigned w = 0; w < RV_PLIC_WORDS; w++) {
        uint32_t bits = p->pending[w] & p->enable[ctx][w] & ~p->claimed[w];
        while (bits) {
            unsigned s = w * 32 + (unsigned)__builtin_ctz(bits);
            bits &= bits - 1;
            uint32_t pr = p->priority[s];
            if (pr > p->threshold[ctx] && pr > best_prio) {
                best_prio = pr;
                best = s;
            }
        }
    }
    return best;
}

static void update_locked(rv_plic *p)
{
    for (unsigned ctx = 0; ctx < p->ncontexts; ctx++) {
        rv_hart *h = p->m->harts[ctx / 2];
        rv_hart_set_line(h, (ctx & 1) ? RV_MIP_SEIP : RV_MIP_MEIP, best_source(p, ctx) != 0);
    }
}

static void gateway_locked(rv_plic *p, unsigned s)
{
    uint32_t bit = 1u << (s % 32);
    unsigned w = s / 32;
    if ((p->level[w] & bit) && !(p->claimed[w] & bit)) {
        p->pending[w] |= bit;
    }
}

void rv_plic_set_irq(rv_plic *p, unsigned source, bool level)
{
    if (source == 0 || source >= RV_PLIC_SOURCES) {
        return;
    }
    uint32_t bit = 1u << (source % 32);
    unsigned w = source / 32;
    pthread_mutex_lock(&p->lock);
    if (level) {
        p->level[w] |= bit;
    } else {
        p->level[w] &= ~bit;
        p->pending[w] &= ~bit;
    }
    gateway_locked(p, source);
    update_locked(p);
    pthread_mutex_unlock(&p->lock);
}

static uint64_t plic_read(void *opaque, uint64_t off, unsigned size)
{
    rv_plic *p = opaque;
    uint64_t v = 0;

    pthread_mutex_lock(&p->lock);
    if (off < 0x1000) {
        unsigned s = (unsigned)(off / 4);
        if (s < RV_PLIC_SOURCES) {
            v = p->priority[s];
        }
    } else if (off >= 0x1000 && off < 0x1080) {
        unsigned w = (unsigned)((off - 0x1000) / 4);
        if (w < RV_PLIC_WORDS) {
            v = p->pending[w];
        }
    } else if (off >= 0x2000 && off < 0x200000) {
        unsigned ctx = (unsigned)((off - 0x2000) / 0x80), w = (unsigned)((off & 0x7f) / 4);
        if (ctx < p->ncontexts && w < RV_PLIC_WORDS) {
            v = p->enable[ctx][w];
        }
    } else if (off >= 0x200000) {
        unsigned ctx = (unsigned)((off - 0x200000) / 0x1000);
        unsigned reg = (unsigned)(off & 0xfff);
        if (ctx < p->ncontexts) {
            if (reg == 0) {
                v = p->threshold[ctx];
            } else if (reg == 4) { /* claim */
                unsigned s = best_source(p, ctx);
                if (s) {
                    p->pending[s / 32] &= ~(1u << (s % 32));
                    p->claimed[s / 32] |= 1u << (s % 32);
                }
                v = s;
                update_locked(p);
            }
        }
    }
    pthread_mutex_unlock(&p->lock);
    return v;
}

static void plic_write(void *opaque, uint64_t off, unsigned size, uint64_t val)
{
    rv_plic *p = opaque;
    uint32_t v = (uint32_t)val;

    pthread_mutex_lock(&p->lock);
    if (off < 0x1000) {
        unsigned s = (unsigned)(off / 4);
        if (s > 0 && s < RV_PLIC_SOURCES) {
            p->priority[s] = v & PRIO_MASK;
        }
    } else if (off >= 0x2000 && off < 0x200000) {
        unsigned ctx = (unsigned)((off - 0x2000) / 0x80), w = (unsigned)((off & 0x7f) / 4);
        if (ctx < p->ncontexts && w < RV_PLIC_WORDS) {
            p->enable[ctx][w] = w == 0 ? v & ~1u : v;
        }
    } else if (off >= 0x200000) {
        unsigned ctx = (unsigned)((off - 0x200000) / 0x1000);
        unsigned reg = (unsigned)(off & 0xfff);
        if (ctx < p->ncontexts) {
            if (reg == 0) {
                p->threshold[ctx] = v & PRIO_MASK;
            } else if (reg == 4 && v > 0 && v < RV_PLIC_SOURCES) { /* complete */
                if (p->enable[ctx][v / 32] & (1u << (v % 32))) {
                    p->claimed[v / 32] &= ~(1u << (v % 32));
                    gateway_locked(p, v);
                }
            }
        }
    }
    update_locked(p);
    pthread_mutex_unlock(&p->lock);
}

static int plic_post_load(void *opaque, uint32_t version, lm_error *err)
{
    rv_plic *p = opaque;
    for (unsigned s = 0; s < RV_PLIC_SOURCES; s++) {
        if (p->priority[s] > PRIO_MASK) {
            return lm_error_set(err, -EINVAL, "plic: source %u priority %u", s, p->priority[s]);
        }
    }
    for (unsigned c = 0; c < RV_PLIC_CONTEXTS; c++) {
        if (p->threshold[c] > PRIO_MASK) {
            return lm_error_set(err, -EINVAL, "plic: context %u threshold %u", c, p->threshold[c]);
        }
    }
    pthread_mutex_lock(&p->lock);
    update_locked(p);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static const lm_field plic_fields[] = {
    LM_FIELD_ARRAY(rv_plic, priority, LM_FIELD_U32, RV_PLIC_SOURCES),
    LM_FIELD_ARRAY(rv_plic, pending, LM_FIELD_U32, RV_PLIC_WORDS),
    LM_FIELD_ARRAY(rv_plic, claimed, LM_FIELD_U32, RV_PLIC_WORDS),
    LM_FIELD_ARRAY(rv_plic, level, LM_FIELD_U32, RV_PLIC_WORDS),
    LM_FIELD_ARRAY(rv_plic, enable, LM_FIELD_U32, RV_PLIC_CONTEXTS * RV_PLIC_WORDS),
    LM_FIELD_ARRAY(rv_plic, threshold, LM_FIELD_U32, RV_PLIC_CONTEXTS),
};

static const lm_vmstate plic_vmstate = {
    .name = "riscv-plic",
    .version = 1,
    .min_version = 1,
    .fields = plic_fields,
    .nfields = sizeof(plic_fields) / sizeof(plic_fields[0]),
    .post_load = plic_post_load,
};

int rv_plic_new(struct rv_machine *m, unsigned nharts, rv_plic **out, lm_error *err)
{
    rv_plic *p = calloc(1, sizeof(*p));
    if (!p) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    p->m = m;
    p->ncontexts = 2 * nharts;
    pthread_mutex_init(&p->lock, NULL);
    rv_machine_map(m, RV_PLIC_BASE, RV_PLIC_SIZE, plic_read, plic_write, p);
    *out = p;
    return 0;
}

void rv_plic_free(rv_plic *p)
{
    if (p) {
        pthread_mutex_destroy(&p->lock);
        free(p);
    }
}

int rv_plic_register(rv_plic *p, lm_engine *e, lm_error *err)
{
    return lm_engine_add_device(e, "riscv-plic", 0, &plic_vmstate, p, err);
}
