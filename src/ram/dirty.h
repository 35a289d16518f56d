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
/* LM_DIRTY_PROTECT_ON_SEND (uffd-wp; the other kinds ignore it): a page is
 * write-protected when the sender claims it (lm_dirty_tracker_protect, just
 * before it is read), not at start nor at every sync.  A sync then reports
 * exactly the pages written since they were last sent, and a write to a
 * page still waiting to be sent costs the guest no fault: a guest writing
 * at random over its RAM pays about half the faults of protect-at-sync
 * (the pages it writes ahead of the sender), and no page is sent twice
 * for a write that came before its send in the same pass.  Only for a
 * sender that claims every dirty page before reading it: a page never
 * claimed stays writable and is reported by every sync. */
#define LM_DIRTY_PROTECT_ON_SEND 1u
int lm_dirty_tracker_start_flags(enum lm_dirty_tracker_kind kind, lm_ram_block **blocks,
                                 size_t nblocks, unsigned flags, lm_dirty_tracker **out, lm_error *err);
/* LM_DIRTY_PROTECT_ON_SEND: pages [p, q) of b are about to be read for
 * sending; write-protect them (except in hot groups, left writable).  A
 * no-op in the other modes. */
void lm_dirty_tracker_protect(lm_dirty_tracker *t, lm_ram_block *b, uint64_t p, uint64_t q);
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
/* The migration's review after each sync: retires hot groups for the rest
 * of this tracker's life (every group protected again at the next sync,
 * exact dirty sets from the one after) when `throttled` (auto-converge or
 * dirty-limit works on the guest: the remaining must show its effect), or
 * when what remains did not shrink for a few syncs (the last passes need
 * the exact set to fit the downtime limit; a hot group re-sends every page
 * written in it since it was last protected).  True when it retired them
 * now.  Hot groups help the guest in the long passes far from the end. */
bool lm_dirty_tracker_review_hot_groups(lm_dirty_tracker *t, bool throttled);
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
