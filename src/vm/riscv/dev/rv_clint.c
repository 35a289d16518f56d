/*
 * CLINT: software interrupts (msip) and the machine timer.
 */
#include <errno.h>
#include <stdlib.h>

#include "../../vmutil.h"
#include "../rv_machine.h"
#include "rv_clint.h"

#define NS_PER_TICK 100 /* 10 MHz */

uint64_t rv_clint_mtime(const rv_clint *c)
{
    if (!c->running) {
        return c->mtime;
    }
    return (uint64_t)((int64_t)vm_now_ns() - c->offset_ns) / NS_PER_TICK;
}

void rv_clint_start(rv_clint *c)
{
    if (!c->running) {
        c->offset_ns = (int64_t)vm_now_ns() - (int64_t)(c->mtime * NS_PER_TICK);
        c->running = true;
    }
}

void rv_clint_stop(rv_clint *c)
{
    if (c->running) {
        c->mtime = rv_clint_mtime(c);
        c->running = false;
    }
}

static uint64_t clint_read(void *opaque, uint64_t off, unsigned size)
{
    rv_clint *c = opaque;
    uint64_t v = 0;

    if (off < 0x4000) {
        unsigned h = (unsigned)(off / 4);
        if (h < c->nharts && (off & 3) == 0) {
            v = __atomic_load_n(&c->msip[h], __ATOMIC_SEQ_CST);
        }
        return v;
    }
    if (off >= 0x4000 && off < 0x4000 + 8u * c->nharts) {
        v = rv_clint_mtimecmp(c, (unsigned)((off - 0x4000) / 8));
        return (off & 4) ? v >> 32 : (size == 4 ? (uint32_t)v : v);
    }
    if (off == 0xbff8 || off == 0xbffc) {
        v = rv_clint_mtime(c);
        return off == 0xbffc ? v >> 32 : (size == 4 ? (uint32_t)v : v);
    }
    return 0;
}

static void clint_write(void *opaque, uint64_t off, unsigned size, uint64_t val)
{
    rv_clint *c = opaque;

    if (off < 0x4000) {
        unsigned h = (unsigned)(off / 4);
        if (h < c->nharts && (off & 3) == 0) {
            __atomic_store_n(&c->msip[h], (uint32_t)(val & 1), __ATOMIC_SEQ_CST);
            rv_hart_set_line(c->m->harts[h], RV_MIP_MSIP, val & 1);
        }
        return;
    }
    if (off >= 0x4000 && off < 0x4000 + 8u * c->nharts) {
        unsigned h = (unsigned)((off - 0x4000) / 8);
        uint64_t old = rv_clint_mtimecmp(c, h), nv;
        if (size == 8) {
            nv = val;
        } else if (off & 4) {
            nv = (old & 0xffffffffull) | (val << 32);
        } else {
            nv = (old & ~0xffffffffull) | (val & 0xffffffffull);
        }
        __atomic_store_n(&c->mtimecmp[h], nv, __ATOMIC_SEQ_CST);
        /* A WFI may need a different deadline now. */
        rv_machine_kick(c->m);
        return;
    }
    /* mtime is not writable here (QEMU ignores such writes too). */
}

static int clint_pre_save(void *opaque, lm_error *err)
{
    rv_clint *c = opaque;
    /* The machine is stopped at switchover, so this is the value at the
     * stop; saved while running (a snapshot), it is the value now. */
    if (c->running) {
        c->mtime = rv_clint_mtime(c);
    }
    return 0;
}

static int clint_post_load(void *opaque, uint32_t version, lm_error *err)
{
    rv_clint *c = opaque;
    for (unsigned h = 0; h < c->nharts; h++) {
        if (c->msip[h] > 1) {
            return lm_error_set(err, -EINVAL, "clint: msip[%u] = %u", h, c->msip[h]);
        }
        rv_hart_set_line(c->m->harts[h], RV_MIP_MSIP, c->msip[h] & 1);
    }
    if (c->running) {
        c->offset_ns = (int64_t)vm_now_ns() - (int64_t)(c->mtime * NS_PER_TICK);
    }
    return 0;
}

static const lm_field clint_fields[] = {
    LM_FIELD_SCALAR(rv_clint, mtime, LM_FIELD_U64),
    LM_FIELD_ARRAY(rv_clint, mtimecmp, LM_FIELD_U64, 8),
    LM_FIELD_ARRAY(rv_clint, msip, LM_FIELD_U32, 8),
};

static const lm_vmstate clint_vmstate = {
    .name = "riscv-clint",
    .version = 1,
    .min_version = 1,
    .fields = clint_fields,
    .nfields = sizeof(clint_fields) / sizeof(clint_fields[0]),
    .pre_save = clint_pre_save,
    .post_load = clint_post_load,
};

int rv_clint_new(struct rv_machine *m, unsigned nharts, rv_clint **out, lm_error *err)
{
    rv_clint *c = calloc(1, sizeof(*c));
    if (!c) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    c->m = m;
    c->nharts = nharts;
    for (unsigned i = 0; i < 8; i++) {
        c->mtimecmp[i] = ~0ull;
    }
    rv_machine_map(m, RV_CLINT_BASE, 0x10000, clint_read, clint_write, c);
    *out = c;
    return 0;
}

void rv_clint_free(rv_clint *c)
{
    free(c);
}

int rv_clint_register(rv_clint *c, lm_engine *e, lm_error *err)
{
    return lm_engine_add_device(e, "riscv-clint", 0, &clint_vmstate, c, err);
}
