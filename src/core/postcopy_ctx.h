/*
 * What the engine hands to src/postcopy: the context of each side (the
 * engine's RAM blocks, saver, rate limit and counters) and the hooks
 * postcopy calls back for what only the engine knows (cancel, waking the
 * thread on the main channel, the preempt channel for migrate-pause and
 * cancel).  Postcopy includes nothing of core: this is the one place that
 * knows both.
 *
 * Also the breakdown the return path carries (DOWNTIME): the return path
 * moves its bytes, the engine encodes and decodes them.
 */
#ifndef LM_CORE_POSTCOPY_CTX_H
#define LM_CORE_POSTCOPY_CTX_H

#include "core/breakdown.h"
#include "core/engine_internal.h"
#include "postcopy/dest.h"
#include "postcopy/return_path.h"
#include "postcopy/source.h"

/* Source, at setup: the context of lm_pc_src_new. */
void lm_engine_pc_src_ctx(lm_engine *e, lm_pc_src_ctx *out);
/* Destination, at ADVISE: the context of lm_pc_dst_new (capabilities and
 * vCPU threads as they are now). */
void lm_engine_pc_dst_ctx(lm_engine *e, lm_pc_dst_ctx *out);

/* DOWNTIME on the return path: bd in its wire form. */
int lm_engine_send_downtime(lm_channel *ch, const lm_bd *bd);
/* A DOWNTIME message's breakdown.  Only accounting, and the stream is
 * still in step: a malformed one is dropped (out->n = 0, with a warning);
 * it never fails a migration whose guest may already run on the
 * destination. */
void lm_engine_read_downtime(const lm_rp_msg *m, lm_bd *out);

#endif
