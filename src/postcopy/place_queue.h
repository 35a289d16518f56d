/*
 * Postcopy, destination: the placement pipeline of the main channel.
 *
 * Placing a background run (UFFDIO_COPY: a fresh page, a copy and a PTE
 * per 4 KiB) costs the destination several times what reading it from the
 * socket does, and on one thread the two alternate.  Here the load thread
 * reads each run into one of a few recycled receive buffers and hands it
 * to placer threads, then goes on reading while they place.  The buffers
 * bound what is in flight; a run is `received` only once placed (the
 * placer's callback does that), so nothing here can make the bitmap sent
 * on recovery claim a page that is not there.
 *
 * One producer (the load thread), nplacers consumers.  Requested pages
 * never come through here: they are placed at once by whoever reads them.
 */
#ifndef LM_POSTCOPY_PLACE_QUEUE_H
#define LM_POSTCOPY_PLACE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "livemig/error.h"
#include "ram/ramblock.h"

/* One run: pages [first, first+n) of block b (wire index wi), their bytes
 * in buf, or zeros.  buf (cap bytes) belongs to the queue. */
typedef struct lm_pc_pq_run {
    uint8_t *buf;
    uint32_t wi;
    lm_ram_block *b;
    uint64_t first, n;
    bool zero;
} lm_pc_pq_run;

/* Places one run (called on a placer thread, several at once when
 * nplacers > 1); <0 with err filled fails the pipeline. */
typedef int (*lm_pc_pq_place_fn)(void *opaque, const lm_pc_pq_run *run, lm_error *err);
/* Called once, on the placer thread, when placement fails (after the
 * failure is recorded): wakes whoever must learn of it. */
typedef void (*lm_pc_pq_failed_fn)(void *opaque, const lm_error *err);

typedef struct lm_pc_pq lm_pc_pq;

/* nplacers threads (>= 1), nbufs buffers of cap bytes each (>= nplacers). */
int lm_pc_pq_new(unsigned nplacers, unsigned nbufs, size_t cap, lm_pc_pq_place_fn place,
                 lm_pc_pq_failed_fn failed, void *opaque, lm_pc_pq **out, lm_error *err);
/* Stops the placers (each finishes the run it holds) and frees; runs still
 * queued are dropped, unplaced (not received). */
void lm_pc_pq_free(lm_pc_pq *q);

/* A free run with its buffer, waiting for one while all are in flight.
 * <0 (err filled) once placement failed. */
int lm_pc_pq_get(lm_pc_pq *q, lm_pc_pq_run **out, lm_error *err);
/* Queues a run taken by lm_pc_pq_get and filled in. */
void lm_pc_pq_put(lm_pc_pq *q, lm_pc_pq_run *run);
/* Gives a run back unqueued (its read failed). */
void lm_pc_pq_unget(lm_pc_pq *q, lm_pc_pq_run *run);
/* Waits until every queued run is placed.  *pending (may be NULL): how
 * many were queued or being placed when it was called.  <0 (err filled)
 * when placement failed. */
int lm_pc_pq_drain(lm_pc_pq *q, unsigned *pending, lm_error *err);
/* Runs queued so far. */
uint64_t lm_pc_pq_runs(lm_pc_pq *q);

#endif
