/*
 * Postcopy, destination side: discards, userfaultfd registration, atomic
 * page placement, the fault thread (fault.c), the preempt receiver, the
 * received bitmap for recovery, blocktime.
 *
 * Once LISTEN registered guest RAM (MISSING mode), nothing writes into it
 * directly: every page is placed with UFFDIO_COPY/ZEROPAGE/MOVE, whole host
 * pages at a time (a THP host page, or with LIVEMIG_POSTCOPY_PLACE=frames a
 * 2 MiB frame of background 4 KiB pages, is assembled in a buffer first
 * and moved whole), and a
 * page already placed is never overwritten.  `received` (per target page,
 * set only after placement) is the truth both for faults and for the
 * bitmap sent on recovery; `requested` keeps each host page asked for
 * once, and is what is asked again after a reconnection.
 */
#ifndef LM_POSTCOPY_DEST_H
#define LM_POSTCOPY_DEST_H

#include <stdbool.h>
#include <stdint.h>

#include "channel/channel.h"
#include "channel/transport.h"
#include "livemig/engine.h"
#include "livemig/error.h"
#include "postcopy/postcopy.h"
#include "ram/ram_load.h"
#include "ram/ramblock.h"

/* What the destination's postcopy works on, handed in by the engine at
 * ADVISE; the counters outlive the lm_pc_dst they are given to. */
typedef struct lm_pc_dst_ctx {
    /* postcopy-blocktime, and the vCPU threads whose faults it counts
     * (as registered when postcopy starts). */
    bool blocktime;
    unsigned nvcpus;
    int vcpu_tids[LM_MAX_VCPUS];
    /* Counters the engine reports (atomics, added to): page requests
     * sent, bytes placed after the switch. */
    uint64_t *requests;
    uint64_t *bytes;
    lm_pc_hooks hooks;
} lm_pc_dst_ctx;

typedef struct lm_pc_dst lm_pc_dst;

/* On ADVISE.  ctx is copied.  blocks: the source's order (wire index ->
 * local block).  Fails when this host has no usable userfaultfd. */
int lm_pc_dst_new(const lm_pc_dst_ctx *ctx, lm_ram_block **blocks, size_t nblocks, uint32_t flags,
                  lm_pc_dst **out, lm_error *err);
/* Stops every thread, unregisters guest RAM, frees. */
void lm_pc_dst_free(lm_pc_dst *d);
bool lm_pc_dst_preempt(const lm_pc_dst *d);

/* One DISCARD command's body. */
int lm_pc_dst_discard(lm_pc_dst *d, const uint8_t *body, uint16_t len, lm_error *err);
/* LISTEN: drops every page not received, registers guest RAM, starts the
 * fault thread and routes the loader's records through placement. */
int lm_pc_dst_listen(lm_pc_dst *d, lm_ram_loader *l, lm_error *err);

/* The return path: main_ch's socket (dup'ed), or NULL while paused.  With
 * a channel, first sends the received bitmaps and RESUME_ACK when
 * `resume`, then asks again for every page requested and not placed. */
int lm_pc_dst_set_rp(lm_pc_dst *d, lm_channel *main_ch, bool resume, lm_error *err);
int lm_pc_dst_send_shut(lm_pc_dst *d, uint32_t status);
int lm_pc_dst_send_pong(lm_pc_dst *d, uint32_t value);

/* The preempt receiver: accepts the second connection on l. */
int lm_pc_dst_start_preempt(lm_pc_dst *d, lm_listener *l, lm_error *err);
void lm_pc_dst_stop_preempt(lm_pc_dst *d);
/* A connection broke: forget a half-assembled host page or held frame
 * (none of its pages is received: the source sends them again). */
void lm_pc_dst_reset_main(lm_pc_dst *d);

/* After EOF: places the frame the main channel holds (dest.c, frames),
 * then waits until every page is placed.  <0 when the preempt
 * channel failed or main_ch was shut down (migrate-pause, cancel). */
int lm_pc_dst_wait_all(lm_pc_dst *d, lm_channel *main_ch, lm_error *err);

/* query-migrate: blocktime so far. */
void lm_pc_dst_blocktime(lm_pc_dst *d, lm_info *out);

#endif
