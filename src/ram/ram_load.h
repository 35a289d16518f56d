/*
 * Destination side of RAM migration: RAM records in, guest pages placed.
 * Every block index, page index and count read from the wire is checked
 * against the registered blocks before a byte is written.
 */
#ifndef LM_RAM_RAM_LOAD_H
#define LM_RAM_RAM_LOAD_H

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
    /* Postcopy, once guest RAM is registered with userfaultfd: every
     * record (range already checked) goes to place() instead of being
     * written into guest memory, which must never be written directly. */
    int (*place)(void *opaque, uint8_t type, lm_ram_block *b, uint64_t first, uint32_t count,
                 lm_channel *ch, lm_error *err);
    void *place_opaque;
} lm_ram_loader;

/* Validates a RAM record's (block, first, count) against the blocks. */
int lm_ram_load_check_range(lm_ram_block **blocks, size_t nblocks, uint16_t bi, uint64_t first,
                            uint32_t count, lm_ram_block **out, lm_error *err);

int lm_ram_load_setup(lm_ram_loader *l, lm_ram_block **blocks, size_t nblocks, lm_error *err);
/* Reads RAM records up to and including LM_RAM_EOS. */
int lm_ram_load_section(lm_ram_loader *l, lm_channel *ch, lm_error *err);
void lm_ram_load_cleanup(lm_ram_loader *l);

#endif
