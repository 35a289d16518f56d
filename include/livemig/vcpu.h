/*
 * Per-vCPU dirty accounting and throttling: what the engine needs from an
 * embedder to report which vCPU dirties guest memory (calc-dirty-rate's
 * per-vCPU rates, x-convergence's explanation) and to hold one vCPU's
 * dirtying near a limit without slowing the others (QEMU's dirty-limit:
 * set-vcpu-dirty-limit, and the `dirty-limit` capability during a
 * migration).  auto-converge throttles the whole guest through
 * lm_callbacks.vm_throttle; dirty-limit throttles one vCPU at a time
 * through these.
 *
 * Thread rules: both callbacks are called from engine threads (the
 * dirty-limit controller, the dirty-rate measurement, the migration
 * thread), never while the engine holds a lock of its own, possibly from
 * two of them at once.  They must not call back into the engine, must not
 * block on the vCPU they name (it may be sleeping in its throttle, or
 * stopped), and should be cheap: the controller calls them every
 * x-vcpu-dirty-limit-period.
 */
#ifndef LIVEMIG_VCPU_H
#define LIVEMIG_VCPU_H

#include "livemig/api.h"

#include <stdint.h>

#include "livemig/engine.h"
#include "livemig/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_vcpu_ops {
    /* How many guest pages vCPU `index` has written since it was created:
     * a counter that only grows (a page written twice counts twice, as a
     * KVM dirty ring lists a page again once its protection was reset).
     * The engine takes differences over time; it never resets it. */
    uint64_t (*dirty_pages)(void *opaque, unsigned index);
    /* Make vCPU `index` alone sleep `percent` % of its time (0..99; 0: run
     * freely).  Independent of vm_throttle: a vCPU under both sleeps at
     * least the larger share.  The engine sets 0 again when the limit is
     * cancelled or the migration that set it ends. */
    void (*throttle)(void *opaque, unsigned index, int percent);
} lm_vcpu_ops;

/* Hands the engine the vCPUs' dirty counters and per-vCPU throttle.
 * nvcpus: 1..LM_MAX_VCPUS.  ops (not copied) and opaque must stay valid
 * until lm_engine_free.  Call at registration time, before any migration
 * or measurement; -EBUSY after. */
LM_API int lm_engine_set_vcpu_ops(lm_engine *e, unsigned nvcpus, const lm_vcpu_ops *ops,
                                  void *opaque, lm_error *err);

/* set-vcpu-dirty-limit: hold vCPU `cpu_index` (or every vCPU when
 * cpu_index < 0) near `limit_mbps` MiB/s of dirtied pages.  Needs
 * lm_engine_set_vcpu_ops.  Refused while a migration with the
 * `dirty-limit` capability runs (it owns the limits then, as in QEMU). */
LM_API int lm_engine_set_vcpu_dirty_limit(lm_engine *e, int cpu_index, uint64_t limit_mbps,
                                          lm_error *err);
/* cancel-vcpu-dirty-limit: lift the limit of one vCPU (or all, < 0). */
LM_API int lm_engine_cancel_vcpu_dirty_limit(lm_engine *e, int cpu_index, lm_error *err);

typedef struct lm_vcpu_dirty_limit {
    unsigned cpu_index;
    uint64_t limit_rate;   /* MiB/s; 0: no limit */
    uint64_t current_rate; /* MiB/s over the last period */
    int throttle_percent;  /* what the controller asks of this vCPU now */
} lm_vcpu_dirty_limit;

/* query-vcpu-dirty-limit: every registered vCPU (limited or not) into
 * out[max]; returns how many were written. */
LM_API unsigned lm_engine_query_vcpu_dirty_limit(lm_engine *e, lm_vcpu_dirty_limit *out,
                                                 unsigned max);

#ifdef __cplusplus
}
#endif

#endif
