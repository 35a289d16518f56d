/*
 * Multifd wire format (docs/stream-format.md §4b): the header each multifd
 * connection opens with, and the packets that follow.  Encoding and
 * checking only, no I/O, so that every rule about lengths from the wire
 * lives in one place and is unit-tested with hostile input.
 *
 *   hello  := be32 "LMMF", be32 version, be16 index, be16 channels, 16-byte id
 *   packet := u8 DATA, be32 flags, be16 nruns, be32 payload_len,
 *               nruns x (u8 kind, be16 block, be64 first, be32 count), payload
 *           | u8 SYNC, be64 seq
 *           | u8 END
 */
#ifndef LM_RAM_MULTIFD_WIRE_H
#define LM_RAM_MULTIFD_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "livemig/error.h"
#include "ram/ramblock.h"
#include "stream/format.h"

#define LM_MULTIFD_MAGIC 0x4c4d4d46u /* "LMMF" */
#define LM_MULTIFD_VERSION 1u
#define LM_MULTIFD_HELLO_LEN 28u
#define LM_MULTIFD_ID_LEN 16u
#define LM_MULTIFD_MAX_CHANNELS 64u

enum lm_multifd_packet {
    LM_MULTIFD_DATA = 0x01,
    LM_MULTIFD_SYNC = 0x02,
    LM_MULTIFD_END = 0x03,
};
#define LM_MULTIFD_DATA_HDR_LEN 11u   /* after the type byte: flags, nruns, payload_len */
#define LM_MULTIFD_RUN_LEN 15u        /* u8 kind, be16 block, be64 first, be32 count */
#define LM_MULTIFD_MAX_RUNS 256u
/* Data bytes one packet carries at most (before compression). */
#define LM_MULTIFD_MAX_PAYLOAD (8u << 20)
#define LM_MULTIFD_FLAG_ZSTD (1u << 0)
/* The packet ends with a be64 xxh3 (seeded with the hash of its header
 * and run table) of its payload: must match MULTIFD_SETUP's flag. */
#define LM_MULTIFD_FLAG_CSUM (1u << 1)
#define LM_MULTIFD_CSUM_LEN 8u

/* Compression named in MULTIFD_SETUP. */
enum lm_multifd_compression {
    LM_MULTIFD_COMP_NONE = 0,
    LM_MULTIFD_COMP_ZSTD = 1,
};

typedef struct lm_multifd_hello {
    uint16_t index;
    uint16_t channels;
    uint8_t id[LM_MULTIFD_ID_LEN];
} lm_multifd_hello;

void lm_multifd_hello_encode(const lm_multifd_hello *h, uint8_t out[LM_MULTIFD_HELLO_LEN]);
/* Checks magic, version, channel count and id against what MULTIFD_SETUP
 * announced, and index < channels. */
int lm_multifd_hello_parse(const uint8_t in[LM_MULTIFD_HELLO_LEN], uint16_t channels,
                           const uint8_t id[LM_MULTIFD_ID_LEN], lm_multifd_hello *out,
                           lm_error *err);

/* MULTIFD_SETUP command body (20 bytes). */
#define LM_MULTIFD_SETUP_LEN 20u
#define LM_MULTIFD_SETUP_CHECKSUM (1u << 0) /* flags: DATA packets carry checksums */
typedef struct lm_multifd_setup {
    uint16_t channels;
    uint8_t compression;
    uint8_t flags;       /* LM_MULTIFD_SETUP_* */
    uint8_t id[LM_MULTIFD_ID_LEN];
} lm_multifd_setup;
void lm_multifd_setup_encode(const lm_multifd_setup *s, uint8_t out[LM_MULTIFD_SETUP_LEN]);
int lm_multifd_setup_parse(const uint8_t *in, size_t len, lm_multifd_setup *out, lm_error *err);

typedef struct lm_multifd_data_hdr {
    uint32_t flags;
    uint16_t nruns;
    uint32_t payload_len; /* bytes after the run table */
} lm_multifd_data_hdr;

void lm_multifd_data_hdr_encode(const lm_multifd_data_hdr *h, uint8_t out[LM_MULTIFD_DATA_HDR_LEN]);
/* compression: what MULTIFD_SETUP announced; the flags must agree (but
 * for LM_MULTIFD_FLAG_CSUM, which the receiver checks against the setup). */
int lm_multifd_data_hdr_parse(const uint8_t in[LM_MULTIFD_DATA_HDR_LEN], uint8_t compression,
                              lm_multifd_data_hdr *out, lm_error *err);

/* One run of the table, checked against the destination's blocks. */
typedef struct lm_multifd_run {
    uint8_t kind; /* LM_RAM_PAGES or LM_RAM_ZERO */
    lm_ram_block *blk;
    uint64_t first;
    uint32_t count;
} lm_multifd_run;

void lm_multifd_run_encode(uint8_t out[LM_MULTIFD_RUN_LEN], uint8_t kind, uint16_t block,
                           uint64_t first, uint32_t count);
/* Parses and checks a run table: each kind known, each range inside its
 * block, the data bytes together at most LM_MULTIFD_MAX_PAYLOAD (returned
 * in *data_len); then the payload length: equal to the data bytes when
 * uncompressed, at most zstd's bound for them when compressed. */
int lm_multifd_runs_parse(const uint8_t *table, const lm_multifd_data_hdr *h,
                          lm_ram_block **blocks, size_t nblocks, lm_multifd_run *runs,
                          uint64_t *data_len, lm_error *err);

#endif
