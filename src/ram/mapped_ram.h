/*
 * Mapped-ram (QEMU's capability of that name): guest RAM saved to a file
 * with every page at a fixed offset, docs/stream-format.md §4c.
 *
 * For each RAM block the RAM START section carries one MAPPED_BLOCK
 * record; right after it in the file lie the block's bitmap of pages
 * present and, aligned to 1 MiB, its pages region (page i at
 * pages_offset + i * page_size); the stream goes on after the region.
 *
 * Source: the migration thread claims dirty runs as usual and either
 * writes them itself (no multifd) or hands them to N writer threads
 * (multifd-channels), which write with pwrite at the pages' slots, so a
 * page dirtied again overwrites its slot and the file never grows.  Zero
 * pages are not written; their bit is cleared.  The bitmaps are written
 * once, after the final pass.
 *
 * Destination: each MAPPED_BLOCK record is checked against the block and
 * the file, its bitmap read, and the present pages read with pread
 * straight into guest RAM by N threads (or the load thread alone), then
 * the stream resumes after the region.
 */
#ifndef LM_RAM_MAPPED_RAM_H
#define LM_RAM_MAPPED_RAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel/channel.h"
#include "channel/ratelimit.h"
#include "livemig/error.h"
#include "ram/ram_save.h"
#include "ram/ramblock.h"

#define LM_MAPPED_RAM_VERSION 1u
/* MAPPED_BLOCK version of a block with a checksum table (§4d): the table
 * lies right after the bitmap, one be64 per chunk of the pages region. */
#define LM_MAPPED_RAM_VERSION_CHECKSUM 2u
/* A chunk covers this many bytes of pages (one page if pages are larger). */
#define LM_MAPPED_RAM_CSUM_CHUNK (1ull << 20)
/* The pages region starts on this boundary (and on a page boundary). */
#define LM_MAPPED_RAM_ALIGN (1ull << 20)
/* MAPPED_BLOCK body: be16 block, be32 version, be32 page_size,
 * be64 bitmap_offset, be64 pages_offset. */
#define LM_MAPPED_RAM_RECORD_LEN 26u
/* Writer / reader threads at most (multifd-channels' range). */
#define LM_MAPPED_RAM_MAX_THREADS 64u

typedef struct lm_mapped_ram_src lm_mapped_ram_src;

typedef struct lm_mapped_ram_src_cfg {
    int fd;             /* the file the main channel writes (pwrite only: no shared offset) */
    unsigned threads;   /* 0: the migration thread writes the pages itself */
    bool zero_detect;   /* zero-page-detection is not "none" */
    bool checksum;      /* write a checksum table per block (version 2 records) */
    lm_ratelimit *rl;   /* max-bandwidth, shared with the main channel */
} lm_mapped_ram_src_cfg;

int lm_mapped_ram_src_new(const lm_mapped_ram_src_cfg *cfg, lm_ram_saver *saver,
                          lm_mapped_ram_src **out, lm_error *err);
/* Migration thread, inside the RAM START section: one MAPPED_BLOCK record
 * per block, each followed by a jump of the channel past the block's
 * bitmap and pages region. */
int lm_mapped_ram_src_layout(lm_mapped_ram_src *mr, lm_channel *ch, lm_error *err);
/* Migration thread: claims dirty pages at the pass cursor, about `budget`
 * bytes, and writes them at their slots (or hands them out). */
int lm_mapped_ram_src_send(lm_mapped_ram_src *mr, uint64_t budget, bool *pass_done,
                           lm_error *err);
/* Migration thread: every page handed out is in the file.  Called before
 * each dirty sync, so no page of one pass lands after the same page of
 * the next. */
int lm_mapped_ram_src_flush(lm_mapped_ram_src *mr, lm_error *err);
/* Migration thread, after the final pass: flush, then write the bitmaps. */
int lm_mapped_ram_src_finish(lm_mapped_ram_src *mr, lm_error *err);
/* Page bytes written to the file so far (any thread). */
uint64_t lm_mapped_ram_src_bytes(const lm_mapped_ram_src *mr);
/* Stops the writer threads (before the saver's bitmaps go). */
void lm_mapped_ram_src_free(lm_mapped_ram_src *mr);

typedef struct lm_mapped_ram_dst lm_mapped_ram_dst;

/* blocks: the source's order (CONFIG).  threads: readers per block (≥ 1;
 * 1 = the load thread reads alone).  checksum: CONFIG's flag; every block
 * has its table, checked chunk by chunk as it is loaded. */
int lm_mapped_ram_dst_new(lm_ram_block **blocks, size_t nblocks, unsigned threads, bool checksum,
                          lm_mapped_ram_dst **out, lm_error *err);
/* Load thread, after the MAPPED_BLOCK type byte: checks the record, loads
 * the block's present pages into guest RAM, moves the channel past the
 * region. */
int lm_mapped_ram_dst_load_block(lm_mapped_ram_dst *mr, lm_channel *ch, lm_error *err);
/* At the end of the stream: every block was described and loaded. */
int lm_mapped_ram_dst_check_complete(const lm_mapped_ram_dst *mr, lm_error *err);
void lm_mapped_ram_dst_stats(const lm_mapped_ram_dst *mr, uint64_t *pages, uint64_t *zero,
                             uint64_t *bytes);
void lm_mapped_ram_dst_free(lm_mapped_ram_dst *mr);

#endif
