/*
 * The configuration record (docs/stream-format.md): the stream's UUID and
 * flags and the list of RAM blocks, written by the source and checked by
 * the destination against its own blocks.  It lives with the RAM code
 * because it reads lm_ram_block; the rest of the framing is stream/stream.h
 * (which src/ram includes, so stream/ never includes ram/).
 */
#ifndef LM_RAM_STREAM_CONFIG_H
#define LM_RAM_STREAM_CONFIG_H

#include <stddef.h>

#include "channel/channel.h"
#include "livemig/error.h"
#include "ram/ramblock.h"
#include "stream/stream.h"

int lm_stream_write_config(lm_channel *ch, const lm_stream_config *cfg, lm_ram_block **blocks,
                           size_t nblocks);
/* Reads the configuration record body (after its type byte) and checks it
 * against this side's blocks; fills map[i] with the local block for the
 * source's block i (same names, sizes and page sizes required). */
int lm_stream_read_config(lm_channel *ch, lm_stream_config *cfg, lm_ram_block **blocks,
                          size_t nblocks, lm_ram_block **map, lm_error *err);

#endif
