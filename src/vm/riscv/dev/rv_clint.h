/*
 * The CLINT (ACLINT MSWI + MTIMER) at 0x2000000: msip per hart at 0x0,
 * mtimecmp per hart at 0x4000, mtime at 0xbff8.
 *
 * mtime counts at 10 MHz from the host's monotonic clock while the machine
 * runs and stands still while it is paused.  It migrates as its value at
 * the stop, so the destination carries on from there: it never goes back,
 * and it skips nothing but the time the guest was not running anywhere.
 */
#ifndef LIVEMIG_VM_RISCV_CLINT_H
#define LIVEMIG_VM_RISCV_CLINT_H

#include <stdbool.h>
#include <stdint.h>

#include "livemig/engine.h"

struct rv_machine;

typedef struct rv_clint {
    /* migrated */
    uint64_t mtime;          /* the value at the last stop */
    uint64_t mtimecmp[8];
    uint32_t msip[8];
    /* host side */
    struct rv_machine *m;
    unsigned nharts;
    bool running;            /* written only with every hart parked */
    int64_t offset_ns;       /* running: mtime = (now - offset_ns) / 100 */
} rv_clint;

int rv_clint_new(struct rv_machine *m, unsigned nharts, rv_clint **out, lm_error *err);
void rv_clint_free(rv_clint *c);
int rv_clint_register(rv_clint *c, lm_engine *e, lm_error *err);

uint64_t rv_clint_mtime(const rv_clint *c);
/* The machine starts / stops: mtime runs on from / freezes at its value. */
void rv_clint_start(rv_clint *c);
void rv_clint_stop(rv_clint *c);

static inline uint64_t rv_clint_mtimecmp(const rv_clint *c, unsigned hart)
{
    return __atomic_load_n(&c->mtimecmp[hart], __ATOMIC_RELAXED);
}

#endif
