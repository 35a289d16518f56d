/*
 * A registered RAM block and the bitmaps the engine keeps for it.
 */
#ifndef LM_RAM_RAMBLOCK_H
#define LM_RAM_RAMBLOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "livemig/error.h"
#include "livemig/ram.h"

struct lm_ram_block {
    char name[LM_RAM_NAME_MAX];
    uint8_t *host;
    uint64_t size;
    uint32_t page_size;
    unsigned page_shift;
    unsigned flags;
    uint32_t idx;    /* position in the engine's block list = index on the wire */
    uint64_t npages;
    int fd;          /* backing file (LM_RAM_FD) or -1 */
    uint64_t fd_offset;

    /* Source: pages still to send in this migration (owned by the sender). */
    uint64_t *dirty;
    /* Source: pages found never populated at setup (zero without a read). */
    uint64_t *unpopulated;
    /* Source: pages sent as zero on that hint; requeued once they turn up
     * populated (see lm_ram_requeue_populated). */
    uint64_t *zero_unread;
    /* Source, postcopy: the hint was retaken with the guest stopped for
     * good (atomic): senders on any thread may trust it. */
    bool hint_frozen;
    /* Manual tracking: set by the embedder (atomically), drained by sync. */
    uint64_t *manual;
    int reporting;   /* atomic: the embedder should call lm_ram_mark_dirty */
    /* The embedder's pull-style dirty log, if it gave one. */
    const lm_dirty_log_ops *dlog_ops;
    void *dlog_opaque;
    bool dlog_active; /* between its start and stop, migration thread only */

    /* Destination: pages written by the loader (a fresh private page that
     * was never written is known to be zero). */
    uint64_t *received;
    /* Destination: pages whose latest record failed its checksum (set and
     * cleared atomically; a later record of a page that verifies clears
     * it: a live source sends a page again when it changed mid-send). */
    uint64_t *csum_bad;
    /* Destination: a load wrote into this block before (a failed earlier
     * attempt), so its pages can no longer be assumed zero. */
    bool dest_used;
    bool dest_fresh; /* private and never loaded into: untouched pages are zero */
    /* Destination: pages are written into the backing file, never through
     * the mapping (ram/filedest.h). */
    bool dest_file;
    /* Destination: writers of the backing file take turns here
     * (ram/filedest.c says why). */
    pthread_mutex_t dest_file_lock;
};

int lm_ram_block_new(const lm_ram_desc *desc, uint32_t idx, lm_ram_block **out, lm_error *err);
void lm_ram_block_free(lm_ram_block *b);
/* Allocate (or clear) the per-migration source / destination bitmaps. */
int lm_ram_block_prepare_source(lm_ram_block *b, lm_error *err);
int lm_ram_block_prepare_dest(lm_ram_block *b, lm_error *err);
void lm_ram_block_release_bitmaps(lm_ram_block *b);

static inline void *lm_ram_block_page(const lm_ram_block *b, uint64_t page)
{
    return b->host + (page << b->page_shift);
}

/* True when the pages can be sent from the backing file's page cache. */
static inline bool lm_ram_block_has_fd(const lm_ram_block *b)
{
    return b->fd >= 0;
}

/* True for private anonymous memory: absent from the page tables means zero. */
static inline bool lm_ram_block_is_private(const lm_ram_block *b)
{
    return !(b->flags & LM_RAM_SHARED);
}

#endif
