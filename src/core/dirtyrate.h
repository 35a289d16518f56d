/*
 * Dirty-rate measurement (calc-dirty-rate / query-dirty-rate): starts the
 * migration's dirty tracker over the engine's RAM blocks, waits the asked
 * time on its own thread, counts the distinct pages written and stops the
 * tracker.  The public entry points are lm_engine_calc_dirty_rate() and
 * lm_engine_query_dirty_rate() (include/livemig/engine.h); this header
 * offers what the rest of the engine needs to keep out of its way.
 *
 * The tracker fills the blocks' `dirty` bitmaps, which a migration owns
 * while it runs: a measurement and a migration never run together.
 */
#ifndef LM_CORE_DIRTYRATE_H
#define LM_CORE_DIRTYRATE_H

#include <stdbool.h>

#include "livemig/engine.h"

/* True while a measurement runs.  Caller holds e->lock. */
bool lm_dirtyrate_busy(lm_engine *e);

/* Stops a running measurement, joins its thread and frees its state
 * (lm_engine_free, before the RAM blocks go). */
void lm_dirtyrate_free(lm_engine *e);

#endif
