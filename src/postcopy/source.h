/*
 * Postcopy, source side: the discard list, the return-path thread, the
 * queue of requested pages, the preempt sender and the background stream.
 *
 * Threads: the migration thread streams the pages still dirty (and, until
 * a preempt channel is up, serves requested pages before each slice); the
 * return-path thread reads the destination's messages and queues
 * requests; with postcopy-preempt, the preempt sender thread owns a second
 * connection and serves requested pages on it at once, never behind bulk
 * data.  Pages are claimed by atomically clearing their dirty bits, so the
 * two senders never both stream a page as background; a requested page is
 * always sent (a copy that arrives twice is dropped by the destination).
 *
 * The engine-level flow (states, pause, resume) is in core/migration.c.
 */
#ifndef LM_POSTCOPY_SOURCE_H
#define LM_POSTCOPY_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel/channel.h"
#include "channel/ratelimit.h"
#include "channel/transport.h"
#include "livemig/error.h"
#include "postcopy/postcopy.h"
#include "ram/ram_save.h"
#include "ram/ramblock.h"

/* What the source's postcopy works on, handed in by the engine; every
 * pointer outlives the lm_pc_src it is given to. */
typedef struct lm_pc_src_ctx {
    /* Guest RAM in wire order (the block index of requests), fixed
     * while migrating. */
    lm_ram_block *const *blocks;
    size_t nblocks;
    /* Precopy's saver: the dirty bitmaps postcopy claims pages from, the
     * dirty count it keeps, the path pages are sent by. */
    lm_ram_saver *saver;
    uint32_t ram_section;  /* the section id the engine gave RAM */
    /* max-postcopy-bandwidth: charged for the background stream only. */
    lm_ratelimit *rl;
    bool preempt;       /* postcopy-preempt: a second connection for requested pages */
    /* Counters the engine reports (atomics, added to): pages requests
     * served, bytes sent after the switch. */
    uint64_t *requests;
    uint64_t *bytes;
    lm_pc_hooks hooks;
} lm_pc_src_ctx;

typedef struct lm_pc_src lm_pc_src;

/* ctx is copied.  NULL when out of memory. */
lm_pc_src *lm_pc_src_new(const lm_pc_src_ctx *ctx);
void lm_pc_src_free(lm_pc_src *p);

/* Setup: sends ADVISE and PING(POSTCOPY_ADVISED), and reads the answer on
 * the main channel: postcopy is agreed before the guest can be stopped,
 * and an error says so when the destination refused it.  Then, with
 * preempt, starts the preempt sender, which connects to uri in the
 * background (the switch never waits for it). */
int lm_pc_src_advise(lm_pc_src *p, lm_channel *ch, const lm_uri *uri, lm_error *err);
/* COMMAND PING(value), buffered. */
int lm_pc_write_ping(lm_channel *ch, uint32_t value);
/* With the return-path thread running: waits for PONG(value).  <0 with a
 * message when the destination reported a failure (SHUT) or was lost. */
int lm_pc_src_wait_pong(lm_pc_src *p, uint32_t value, lm_error *err);
/* Switchover, guest stopped: widens dirty bits to whole host pages and
 * sends them as DISCARD commands (pages the destination must drop). */
int lm_pc_src_send_discards(lm_pc_src *p, lm_channel *ch, lm_error *err);
/* Starts the return-path thread on the main connection (fd is dup'ed). */
int lm_pc_src_start_rp(lm_pc_src *p, lm_channel *main_ch, lm_error *err);
/* Serves requests and streams every page still dirty, then writes EOF.
 * Returns 0 once EOF is flushed, <0 when a connection failed. */
int lm_pc_src_run(lm_pc_src *p, lm_channel *ch, lm_error *err);
/* After EOF: waits for the destination's SHUT.  <0 on a connection failure
 * (pause) ; -EIO with a message when the destination reports failure. */
int lm_pc_src_wait_shut(lm_pc_src *p, bool *dest_failed, lm_error *err);
/* Stops the return-path and preempt threads (after a failure, or at the
 * end) and closes their channels. */
void lm_pc_src_stop(lm_pc_src *p);
/* Recovery on a freshly connected main channel: RESUME, the
 * destination's received bitmaps, RESUME_ACK; every page not received
 * becomes dirty.  Then restarts the return path (and preempt sender). */
int lm_pc_src_recover(lm_pc_src *p, lm_channel *ch, const lm_uri *uri, lm_error *err);

#endif
