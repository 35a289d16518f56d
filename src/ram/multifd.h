/*
 * Multifd: guest pages on N extra connections, each with its own thread
 * on both sides (docs/stream-format.md §4b, docs/architecture.md).
 *
 * Source: the migration thread claims dirty runs (lm_ram_save_claim),
 * gathers them into jobs of up to 128 runs / 2 MiB and hands each to an
 * idle sender thread, which detects zero pages (zero-page-detection
 * "multifd"), compresses (zstd) or not, and writes one packet straight
 * from guest memory (with zero-copy-send: MSG_ZEROCOPY, the kernel reads
 * the pages later).  At every dirty sync, lm_multifd_src_sync waits until
 * every sender has written its job and, with zero-copy-send, until the
 * kernel let go of every page, then puts a SYNC on every channel; the
 * caller then writes a MULTIFD_SYNC record on the main channel.
 *
 * Destination: receivers place packets straight into guest memory with
 * the checks of ram_load.c; at SYNC seq each receiver waits until the load
 * thread reached its MULTIFD_SYNC seq and every other receiver its SYNC,
 * so no page of pass n lands after the same page of pass n+1.
 */
#ifndef LM_RAM_MULTIFD_H
#define LM_RAM_MULTIFD_H

#include <stdbool.h>
#include <stdint.h>

#include "channel/ratelimit.h"
#include "channel/transport.h"
#include "common/threadlist.h"
#include "livemig/error.h"
#include "ram/multifd_wire.h"
#include "ram/ram_save.h"

/* zero-page-detection */
enum lm_zero_detection {
    LM_ZERO_NONE,    /* every page is sent as data */
    LM_ZERO_LEGACY,  /* the migration thread reads pages for zeros */
    LM_ZERO_MULTIFD, /* the sender threads do (default) */
};

typedef struct lm_multifd_src_cfg {
    unsigned channels;
    uint8_t compression;      /* enum lm_multifd_compression */
    int zstd_level;
    enum lm_zero_detection zero;
    bool zero_copy;           /* MSG_ZEROCOPY on the senders' sockets (tcp) */
    bool checksum;            /* DATA packets end with their xxh3 (not with zero_copy) */
    lm_ratelimit *rl;         /* shared with the main channel */
    const lm_uri *uri;
    bool (*should_abort)(void *opaque); /* a connect that waits asks this */
    void (*on_fail)(void *opaque);      /* a sender failed: wake the migration thread */
    void *opaque;
    lm_thread_list *threads;  /* optional: each sender lists itself there */
} lm_multifd_src_cfg;

typedef struct lm_multifd_src lm_multifd_src;

/* Connects every channel, sends its hello, starts the senders. */
int lm_multifd_src_start(const lm_multifd_src_cfg *cfg, lm_ram_saver *saver,
                         const uint8_t id[LM_MULTIFD_ID_LEN], lm_multifd_src **out, lm_error *err);
/* Migration thread: claims dirty pages at the pass cursor, about `budget`
 * bytes, and hands them to the senders. */
int lm_multifd_src_send(lm_multifd_src *mf, uint64_t budget, bool *pass_done, lm_error *err);
/* Migration thread: everything handed out is written; a SYNC follows on
 * every channel.  *seq is what the main channel's MULTIFD_SYNC must say.
 * Nothing to do (*seq = 0) when nothing was handed out since the last one. */
int lm_multifd_src_sync(lm_multifd_src *mf, uint64_t *seq, lm_error *err);
/* Migration thread, after the last sync: END on every channel, pending
 * zero-copy completions drained, senders stopped. */
int lm_multifd_src_finish(lm_multifd_src *mf, lm_error *err);
/* Any thread (cancel): wake every sender blocked in I/O. */
void lm_multifd_src_shutdown(lm_multifd_src *mf, int code, const char *why);
/* The failure that stuck first, if it came with a message (a sender's
 * own error, not a shutdown from outside): its code, err filled; else 0. */
int lm_multifd_src_error(lm_multifd_src *mf, lm_error *err);
void lm_multifd_src_free(lm_multifd_src *mf);
/* Bytes written on the multifd channels (any thread). */
uint64_t lm_multifd_src_bytes(const lm_multifd_src *mf);
/* zero-copy-send: flushes (one per channel at each sync) at which the
 * kernel had copied every send instead (dirty-sync-missed-zero-copy). */
uint64_t lm_multifd_src_zc_missed(const lm_multifd_src *mf);
/* zero-copy-send: MSG_ZEROCOPY sends so far, and how many of them the
 * kernel reported copied (any thread). */
void lm_multifd_src_zc_stats(const lm_multifd_src *mf, uint64_t *sends, uint64_t *copied);

typedef struct lm_multifd_dst lm_multifd_dst;

/* Accepts setup->channels connections on l (the main one is already
 * taken), checks their hellos and starts a receiver for each.  blocks: the
 * source's order.  A connection that does not send its hello within
 * handshake_ms (0: no limit) is dropped and the next one taken.  on_fail
 * wakes the load thread when a receiver fails; a receiver that fails while
 * others are still awaited also aborts l (the load fails with its error).
 * *out is set even on failure (free it). */
int lm_multifd_dst_start(lm_listener *l, const lm_multifd_setup *setup, lm_ram_block **blocks,
                         size_t nblocks, unsigned handshake_ms, void (*on_fail)(void *),
                         void *opaque, lm_multifd_dst **out, lm_error *err);
/* Load thread, at MULTIFD_SYNC seq: waits until every receiver has loaded
 * everything before its SYNC seq, then lets them go on. */
int lm_multifd_dst_sync(lm_multifd_dst *d, uint64_t seq, lm_error *err);
/* Load thread, at EOF or before postcopy's LISTEN: waits until every
 * channel has ended (END), i.e. everything sent on them is in guest RAM. */
int lm_multifd_dst_finish(lm_multifd_dst *d, lm_error *err);
/* The first receiver's failure, if any (its code; 0 when none). */
int lm_multifd_dst_error(lm_multifd_dst *d, lm_error *err);
/* Any thread (cancel): fails the receivers with code, wakes the load
 * thread where it waits for them and every receiver blocked in I/O. */
void lm_multifd_dst_cancel(lm_multifd_dst *d, int code, const char *why);
/* Stops the receivers (shuts their connections down and joins them). */
void lm_multifd_dst_stop(lm_multifd_dst *d);
/* Stops them if needed, and frees. */
void lm_multifd_dst_free(lm_multifd_dst *d);
/* Pages placed so far (any thread). */
void lm_multifd_dst_stats(const lm_multifd_dst *d, uint64_t *pages, uint64_t *zero,
                          uint64_t *bytes);

#endif
