/*
 * dirty-limit: holds each limited vCPU's dirtying near its limit by
 * throttling that vCPU alone (include/livemig/vcpu.h).  A controller thread
 * samples the embedder's per-vCPU dirty counters every
 * x-vcpu-dirty-limit-period and adjusts each limited vCPU's throttle in
 * proportion to how far its rate is from its limit.  The thread runs only
 * while some vCPU has a limit.
 *
 * Limits come from set-vcpu-dirty-limit (the operator) or from a migration
 * with the `dirty-limit` capability, which sets vcpu-dirty-limit on every
 * vCPU once the migration stops converging and lifts it when it ends.
 *
 * The module has its own lock; it never calls the embedder while holding
 * it or the engine's.
 */
#ifndef LM_CORE_DIRTYLIMIT_H
#define LM_CORE_DIRTYLIMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "livemig/vcpu.h"

/* True when the embedder registered per-vCPU ops. */
bool lm_dirtylimit_available(lm_engine *e);
/* Pages vCPU i has dirtied so far (0 without ops); n_out: vCPUs. */
unsigned lm_dirtylimit_counters(lm_engine *e, uint64_t *pages, unsigned max);

/* A migration with `dirty-limit` stops converging: every vCPU gets
 * limit_mbps.  Returns true the first time (the limits were engaged). */
bool lm_dirtylimit_migration_engage(lm_engine *e, uint64_t limit_mbps);
/* The migration ended: lift the limits it set (operator limits stay). */
void lm_dirtylimit_migration_release(lm_engine *e);
/* The limits belong to a running migration now. */
bool lm_dirtylimit_migration_owned(lm_engine *e);
/* Mean throttle of the limited vCPUs times the period, in µs (QEMU's
 * dirty-limit-throttle-time-per-round); 0 when none is limited. */
uint64_t lm_dirtylimit_throttle_us_per_round(lm_engine *e);

/* Stops the controller and frees the state (lm_engine_free). */
void lm_dirtylimit_free(lm_engine *e);

#endif
