/*
 * The PLIC at 0xc000000 (SiFive layout, as QEMU's virt): 96 sources,
 * priorities 0..7, two contexts per hart (M then S).  Sources are level
 * triggered: a device sets its line; the gateway makes the source pending
 * while the line is high and it is not being served (claimed and not yet
 * completed).
 */
#ifndef LIVEMIG_VM_RISCV_PLIC_H
#define LIVEMIG_VM_RISCV_PLIC_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "livemig/engine.h"

#define RV_PLIC_SOURCES 96
#define RV_PLIC_WORDS (RV_PLIC_SOURCES / 32)
#define RV_PLIC_CONTEXTS 16 /* 8 harts x (M, S) */

struct rv_machine;

typedef struct rv_plic {
    /* migrated */
    uint32_t priority[RV_PLIC_SOURCES];
    uint32_t pending[RV_PLIC_WORDS];
    uint32_t claimed[RV_PLIC_WORDS];
    uint32_t level[RV_PLIC_WORDS];
    uint32_t enable[RV_PLIC_CONTEXTS][RV_PLIC_WORDS];
    uint32_t threshold[RV_PLIC_CONTEXTS];
    /* host side */
    struct rv_machine *m;
    unsigned ncontexts;
    pthread_mutex_t lock;
} rv_plic;

int rv_plic_new(struct rv_machine *m, unsigned nharts, rv_plic **out, lm_error *err);
void rv_plic_free(rv_plic *p);
int rv_plic_register(rv_plic *p, lm_engine *e, lm_error *err);
/* A device's interrupt line; any thread. */
void rv_plic_set_irq(rv_plic *p, unsigned source, bool level);

#endif
