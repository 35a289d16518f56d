/*
 * The migration's timeline (x-query-migration-history).
 *
 * The source's migration thread appends one record per precopy pass (at
 * the dirty sync that ends it) and marks the switchover; query commands
 * read a copy.  Only the last LM_HISTORY_MAX passes are kept, so a
 * migration that never converges costs bounded memory: the oldest records
 * are dropped and counted.  The module has its own lock, so it never
 * waits on the engine's.
 */
#ifndef LM_CORE_HISTORY_H
#define LM_CORE_HISTORY_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "livemig/engine.h"

#define LM_HISTORY_MAX LM_HISTORY_PASSES_MAX

typedef struct lm_history {
    pthread_mutex_t lock;
    lm_pass_record *ring; /* LM_HISTORY_MAX records, allocated at the first reset */
    uint64_t total;       /* records appended since the reset */
    lm_history_info info;
} lm_history;

void lm_history_init(lm_history *h);
void lm_history_destroy(lm_history *h);
/* A migration starts at start_ns: forget the last one's timeline.
 * -ENOMEM when the ring cannot be allocated (the migration then runs
 * without a timeline; nothing else depends on it). */
int lm_history_reset(lm_history *h, uint64_t start_ns);
/* Appends rec (its start_us and pass as given), dropping the oldest. */
void lm_history_add(lm_history *h, const lm_pass_record *rec);
/* The guest stopped for the switchover at stop_ns / the switchover ended
 * (downtime over) at end_ns, on the clock start_ns was read from. */
void lm_history_switchover(lm_history *h, uint64_t stop_ns);
void lm_history_end(lm_history *h, uint64_t end_ns);
/* Copies the kept records, oldest first, at most max of the newest into
 * out; returns how many; info (if not NULL) gets the timeline's summary. */
size_t lm_history_read(lm_history *h, lm_pass_record *out, size_t max, lm_history_info *info);

#endif
