/*
 * Source side of RAM migration: dirty bitmaps in, RAM records out.
 *
 * The saver owns each block's `dirty` bitmap for the duration of a
 * migration.  Each pass the migration thread syncs the dirty log
 * (lm_ram_save_sync) and then sends dirty pages in budgeted slices
 * (lm_ram_save_send) until the pass is done.  Pages go on the wire straight
 * from guest memory (no copy); zero pages travel as a flag, and pages that
 * were never populated are known to be zero without being read.
 */
#ifndef LM_RAM_RAM_SAVE_H
#define LM_RAM_RAM_SAVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel/channel.h"
#include "livemig/error.h"
#include "ram/dirty.h"
#include "ram/ramblock.h"

typedef struct lm_ram_stats {
    uint64_t zero_pages;
    uint64_t normal_pages;
    uint64_t normal_bytes;
    uint64_t zero_skipped_reads; /* zero pages known without a read */
} lm_ram_stats;

typedef struct lm_ram_saver {
    lm_ram_block **blocks;
    size_t nblocks;
    lm_dirty_tracker *tracker;
    size_t cur_block;
    uint64_t cur_page;
    uint64_t dirty_bytes; /* bytes in dirty bitmaps (what a pass still has to send) */
    uint64_t total_bytes;
    lm_ram_stats stats;   /* updated by the sending thread; read with atomics */
    struct lm_ram_batch *batch; /* scratch iovecs for one writev */
    bool hint_on;         /* the never-populated hint is in use (no swap) */
    /* Records carry checksums (LM_CONFIG_CHECKSUM); set after setup.  Data
     * then goes from the mapping (hashed, then written while it is still in
     * the cache), never by sendfile. */
    bool checksum;
} lm_ram_saver;

/* Marks every page dirty, finds never-populated pages, starts tracking. */
int lm_ram_save_setup(lm_ram_saver *s, lm_ram_block **blocks, size_t nblocks,
                      enum lm_dirty_tracker_kind tracker_kind, lm_error *err);
/* Adds pages written since the last sync; returns the newly dirty bytes. */
int lm_ram_save_sync(lm_ram_saver *s, uint64_t *new_bytes, lm_error *err);
/* Sends dirty pages from the pass cursor, about `budget` bytes at most
 * (UINT64_MAX: until the pass ends).  *pass_done becomes true when the
 * cursor reached the end of guest RAM (and wraps to the start). */
int lm_ram_save_send(lm_ram_saver *s, lm_channel *ch, uint64_t budget, uint64_t *sent,
                     bool *pass_done, lm_error *err);
void lm_ram_save_cleanup(lm_ram_saver *s);
/* Postcopy, with the source guest stopped for good: takes the hint anew
 * from the page tables (and files).  It stays exact from then on, so every
 * sender, the page-request server included, sends those pages as zero
 * without reading them. */
void lm_ram_save_freeze_hint(lm_ram_saver *s);

/* Claims the next dirty run at the pass cursor, at most max_bytes (at
 * least one page): its dirty bits are cleared (a write from now on dirties
 * it again) and the cursor moves past it.  False at the end of guest RAM
 * (the cursor wraps: the pass is done). */
bool lm_ram_save_claim(lm_ram_saver *s, uint64_t max_bytes, lm_ram_block **blk,
                       uint64_t *p, uint64_t *q);

/* How a claimed run is split into zero and data runs. */
enum lm_zero_split {
    LM_SPLIT_READ,        /* migration thread: the never-populated hint, then read each page */
    LM_SPLIT_HINT,        /* migration thread: the hint only; the rest is data, unread */
    LM_SPLIT_NONE,        /* no detection: everything is data (the hint is dropped) */
    LM_SPLIT_READ_SHARED, /* any thread: read each page; the hint is not touched */
    LM_SPLIT_HINT_SHARED, /* any thread, hint frozen: the hint only, not touched */
};
/* A run of pages of one kind (LM_RAM_ZERO or LM_RAM_PAGES). */
typedef int (*lm_ram_run_fn)(void *opaque, uint8_t type, lm_ram_block *blk, uint64_t first,
                             uint32_t count);
/* Splits [p, q) of blk into runs of one kind (data runs at most 1 MiB)
 * and hands each to fn.  Every mode but READ_SHARED keeps the hint's
 * bookkeeping, so only the migration thread may use them. */
int lm_ram_save_split(lm_ram_saver *s, lm_ram_block *blk, uint64_t p, uint64_t q,
                      enum lm_zero_split how, lm_ram_run_fn fn, void *opaque);
/* The same, for a sender that sends the data runs by reference
 * (lm_channel_put_mem): an anonymous block's pages are read for zeros
 * through the kernel (process_vm_readv), never through this process's
 * mapping (ram_save.c says why). */
int lm_ram_save_split_probed(lm_ram_saver *s, lm_ram_block *blk, uint64_t p, uint64_t q,
                             enum lm_zero_split how, lm_ram_run_fn fn, void *opaque);
/* Counts pages sent (query-migrate's ram statistics); any thread. */
void lm_ram_save_count(lm_ram_saver *s, uint8_t type, const lm_ram_block *blk, uint64_t count);

/* Postcopy: several threads send (the migration thread, the preempt
 * sender), each with its own batch.  send_range queues pages [p, q) of
 * blk, which the caller has claimed from the dirty bitmap; the records go
 * out at the latest with lm_ram_batch_flush.  *wire_bytes grows by their
 * size on the wire (a zero run is a header only). */
struct lm_ram_batch *lm_ram_batch_new(void);
void lm_ram_batch_free(struct lm_ram_batch *b);
int lm_ram_save_send_range(lm_ram_saver *s, struct lm_ram_batch *b, lm_channel *ch,
                           lm_ram_block *blk, uint64_t p, uint64_t q, uint64_t *wire_bytes);
int lm_ram_batch_flush(struct lm_ram_batch *b, lm_channel *ch);

static inline uint64_t lm_ram_save_pending(const lm_ram_saver *s)
{
    return __atomic_load_n(&s->dirty_bytes, __ATOMIC_RELAXED);
}

#endif
