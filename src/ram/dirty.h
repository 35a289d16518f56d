/*
 * Dirty-page tracking: one small interface, two backends.
 *
 *   uffd-wp-async  userfaultfd write-protect in async mode; each sync is one
 *                  PAGEMAP_SCAN ioctl that returns the written pages and
 *                  write-protects them again (get-and-reprotect).  Default
 *                  where the kernel has it.
 *   manual         the embedder reports writes with lm_ram_mark_dirty() (as a
 *                  KVM VMM feeds its dirty ring).
 *   dirty-log      only the embedder's pull-style logs (lm_ram_set_dirty_log,
 *                  as a KVM VMM hands over KVM_GET_DIRTY_LOG).  Every kind
 *                  also pulls the logs of the blocks that have one.
 *
 * start() begins tracking (every page written after it is reported by a
 * later sync), sync() ORs the pages written since the last sync into each
 * block's `dirty` bitmap, stop() ends tracking.
 */
#ifndef LM_RAM_DIRTY_H
#define LM_RAM_DIRTY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "livemig/error.h"
#include "ram/ramblock.h"

typedef struct lm_dirty_tracker lm_dirty_tracker;

/* How pages written by the guest are found (x-dirty-tracker; its names are
 * in core/params.c). */
enum lm_dirty_tracker_kind {
    LM_DIRTY_TRACKER_AUTO,      /* "auto" */
    LM_DIRTY_TRACKER_UFFD_WP,   /* "uffd-wp" */
    LM_DIRTY_TRACKER_MANUAL,    /* "manual" */
    LM_DIRTY_TRACKER_DIRTY_LOG, /* "dirty-log" */
};

/* AUTO picks uffd-wp when the kernel supports it and falls back to manual
 * with a warning. */
int lm_dirty_tracker_start(enum lm_dirty_tracker_kind kind, lm_ram_block **blocks, size_t nblocks,
                           lm_dirty_tracker **out, lm_error *err);
/* Adds the pages written since the last sync to each block's dirty bitmap;
 * *newly counts pages that were not already dirty. */
int lm_dirty_tracker_sync(lm_dirty_tracker *t, uint64_t *newly, lm_error *err);
void lm_dirty_tracker_stop(lm_dirty_tracker *t);
/* Hot groups (x-dirty-hot-groups, uffd-wp only; a no-op for the other
 * kinds): 2 MiB groups the guest keeps rewriting are left writable between
 * syncs, their written pages reported at every sync, and protected again
 * every few syncs, so the guest stops paying a write fault per page per
 * pass there.  Off when a tracker starts. */
int lm_dirty_tracker_set_hot_groups(lm_dirty_tracker *t, bool on, lm_error *err);
/* Pages in groups the next sync leaves writable. */
uint64_t lm_dirty_tracker_hot_pages(const lm_dirty_tracker *t);
/* "uffd-wp-async", "manual" or "dirty-log" ("+dirty-log" when logs are
 * pulled beside the engine's own tracker). */
const char *lm_dirty_tracker_name(const lm_dirty_tracker *t);

/* Marks in each private block's `unpopulated` bitmap the pages that were
 * never populated (PAGEMAP_SCAN), so the sender knows they are zero without
 * reading them.  Best effort: returns 0 and marks nothing when the kernel
 * cannot tell. */
int lm_ram_find_unpopulated(lm_ram_block **blocks, size_t nblocks);

/* Marks dirty again every page in a block's `zero_unread` set (sent as zero
 * on the never-populated hint, without a read) that is present now. */
int lm_ram_requeue_populated(lm_ram_block **blocks, size_t nblocks, uint64_t *requeued,
                             lm_error *err);

/* Probe: does this kernel offer async write-protect + PAGEMAP_SCAN?
 * Fills err with what is missing. */
int lm_uffd_wp_async_probe(lm_error *err);

#endif
