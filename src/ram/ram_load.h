/*
 * Destination side of RAM migration: RAM records in, guest pages placed.
 * Every block index, page index and count read from the wire is checked
 * against the registered blocks before a byte is written.
 */
#ifndef LM_RAM_RAM_LOAD_H
#define LM_RAM_RAM_LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel/channel.h"
#include "livemig/error.h"
#include "ram/ramblock.h"

typedef struct lm_ram_loader {
    lm_ram_block **blocks;
    size_t nblocks;
    uint64_t pages_loaded;
    uint64_t zero_pages;
    /* CONFIG said LM_CONFIG_CHECKSUM: PAGES and ZERO records carry a be64
     * xxh3 after their header (set after lm_ram_load_setup). */
    bool checksum;
    /* Postcopy, once guest RAM is registered with userfaultfd: every
     * record (range already checked) goes to place() instead of being
     * written into guest memory, which must never be written directly. */
    int (*place)(void *opaque, uint8_t type, lm_ram_block *b, uint64_t first, uint32_t count,
                 lm_channel *ch, lm_error *err);
    void *place_opaque;
    /* Multifd: a MULTIFD_SYNC record on the main channel waits here until
     * every receiver has loaded everything before its own SYNC. */
    int (*multifd_sync)(void *opaque, uint64_t seq, lm_error *err);
    void *multifd_opaque;
    /* Mapped-ram: a MAPPED_BLOCK record (type byte read) loads one block
     * from its fixed place in the file (ram/mapped_ram.h). */
    int (*mapped_block)(void *opaque, lm_channel *ch, lm_error *err);
    void *mapped_opaque;
    /* File-backed blocks: pages pass through here (allocated on first use). */
    uint8_t *scratch;
} lm_ram_loader;

/* Validates a RAM record's (block, first, count) against the blocks. */
int lm_ram_load_check_range(lm_ram_block **blocks, size_t nblocks, uint16_t bi, uint64_t first,
                            uint32_t count, lm_ram_block **out, lm_error *err);

/* Placing pages of a checked range straight into guest memory; any
 * thread, on pages no other thread places at the same time.
 * zero: a zero run (touches a fresh page only if this load wrote it). */
void lm_ram_load_zero(lm_ram_block *b, uint64_t first, uint32_t count);
/* data from a channel: count pages of ch into the block and marked; a
 * file-backed block (ram/filedest.h) gets them written into its file
 * through scratch (lm_ram_load_scratch_new(), one per thread), any other
 * straight into its mapping.  sums: the pages' be64 checksums, each page
 * judged as it lands (lm_ram_load_csum_result), or NULL. */
int lm_ram_load_data(lm_ram_block *b, uint64_t first, uint32_t count, lm_channel *ch,
                     uint8_t *scratch, const uint8_t *sums, lm_error *err);
/* A scratch buffer for lm_ram_load_data (free() it), or NULL. */
uint8_t *lm_ram_load_scratch_new(void);
/* data placed by other means (mapping only, not file-backed blocks):
 * returns where the bytes go; call _mark once they are there. */
void *lm_ram_load_data_begin(lm_ram_block *b, uint64_t first);
void lm_ram_load_mark(lm_ram_block *b, uint64_t first, uint32_t count);
/* The checksum of a record or packet covering [first, first+count)
 * matched (ok) or not; any thread.  A mismatch is held against the pages
 * until a later record of theirs matches: it fails the load at EOF. */
void lm_ram_load_csum_result(lm_ram_block *b, uint64_t first, uint32_t count, bool ok);

int lm_ram_load_setup(lm_ram_loader *l, lm_ram_block **blocks, size_t nblocks, lm_error *err);
/* Reads RAM records up to and including LM_RAM_EOS. */
int lm_ram_load_section(lm_ram_loader *l, lm_channel *ch, lm_error *err);
void lm_ram_load_cleanup(lm_ram_loader *l);
/* At the end of a precopy stream: every page of every block was settled
 * at least once (data, a zero record or run, a mapped-ram slot or hole).
 * Otherwise fails naming the block, its first missing range and how many
 * pages are missing in all.  Then, with checksums, no page's latest record
 * may have failed its checksum (naming the block and range likewise). */
int lm_ram_load_check_complete(const lm_ram_loader *l, lm_error *err);

#endif
