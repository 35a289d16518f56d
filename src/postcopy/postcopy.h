/*
 * Postcopy, shared by both sides: the host page (the unit postcopy
 * discards, requests and places) and COMMAND records.
 *
 * A host page is the block's page, except for THP-backed anonymous blocks
 * whose pages are 4 KiB to precopy but are moved whole (2 MiB) by
 * postcopy, so a faulting vCPU waits for one request, not 512.
 *
 * Postcopy knows nothing of the engine that runs it: whoever starts it
 * (core/migration.c, core/incoming.c) hands in the lower layers' objects
 * it works on (source.h's lm_pc_src_ctx, dest.h's lm_pc_dst_ctx) and the
 * hooks below for what only the engine knows.
 */
#ifndef LM_POSTCOPY_POSTCOPY_H
#define LM_POSTCOPY_POSTCOPY_H

#include <stdbool.h>
#include <stdint.h>

#include "channel/channel.h"
#include "common/bitmap.h"
#include "ram/ramblock.h"
#include "stream/format.h"

#define LM_HUGE_2M (2u << 20)

/* Postcopy's calls into the engine that runs it.  Any of postcopy's
 * threads may call them, never with a lock of postcopy's held: they may
 * take the engine's own locks, and must not call back into postcopy. */
typedef struct lm_pc_hooks {
    /* migrate_cancel was asked: waits and connects give up. */
    bool (*cancelled)(void *opaque);
    /* A helper thread's connection failed (preempt, return path): fail
     * the main channel with code and why, so that the thread blocked on
     * it (the migration thread, the load thread) wakes up and sees it. */
    void (*wake_main)(void *opaque, int code, const char *why);
    /* The preempt connection is up (ch), or gone (NULL, before it is
     * closed): the engine shuts it down on migrate-pause, cancel, yank. */
    void (*preempt_channel)(void *opaque, lm_channel *ch);
    void *opaque;
} lm_pc_hooks;

/* Target pages per host page (a power of two). */
static inline uint64_t lm_pc_hp_pages(const lm_ram_block *b)
{
    if ((b->flags & LM_RAM_THP) && b->page_size < LM_HUGE_2M &&
        (uintptr_t)b->host % LM_HUGE_2M == 0 && b->size % LM_HUGE_2M == 0) {
        return LM_HUGE_2M >> b->page_shift;
    }
    return 1;
}

static inline uint64_t lm_pc_hp_bytes(const lm_ram_block *b)
{
    return lm_pc_hp_pages(b) << b->page_shift;
}

/* lm_stream_write_command (stream/stream.h), for postcopy's commands. */
int lm_pc_write_command(lm_channel *ch, uint16_t cmd, const void *body, uint16_t len);

/* The calling thread is on a fault's urgent path (the destination's fault
 * thread and preempt receiver, the source's return-path thread and preempt
 * sender): each of its wake-ups is short work a vCPU waits for.  It asks
 * the scheduler for a short time slice (Linux >= 6.12: sched_attr's
 * sched_runtime for SCHED_OTHER, no privilege needed; its nice value is
 * left alone), so that it preempts CPU-bound threads when it wakes (the
 * background stream, or other processes) instead of queueing behind their
 * slices: bench-postcopy-latency's per-phase timing showed a slow fault's
 * time going into those wake-ups.  Best effort: silently nothing on an
 * older kernel. */
void lm_pc_urgent_thread(const char *what);

/* Postcopy's bitmaps are shared between threads: the atomic family of
 * common/bitmap.h (the same one RAM loading uses on the same maps), under
 * the names postcopy's code calls it by. */
static inline bool lm_pc_test(const uint64_t *map, uint64_t bit)
{
    return lm_bitmap_test_atomic(map, bit);
}
/* Clears [first, first+n) and returns how many of those bits were set. */
static inline uint64_t lm_pc_clear_range(uint64_t *map, uint64_t first, uint64_t n)
{
    return lm_bitmap_clear_range_atomic(map, first, n);
}
/* Sets [first, first+n) and returns how many of those bits were clear. */
static inline uint64_t lm_pc_set_range(uint64_t *map, uint64_t first, uint64_t n)
{
    return lm_bitmap_set_range_atomic(map, first, n);
}
/* Every bit of [first, first+n) set? */
static inline bool lm_pc_all_set(const uint64_t *map, uint64_t first, uint64_t n)
{
    return lm_bitmap_all_set_atomic(map, first, n);
}
/* First set bit at or after `from`, or nbits if none. */
static inline uint64_t lm_pc_next_set(const uint64_t *map, uint64_t nbits, uint64_t from)
{
    return lm_bitmap_next_set_atomic(map, nbits, from);
}

#endif
