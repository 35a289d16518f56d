/*
 * Integrity checksums of guest pages (docs/stream-format.md §4d): xxh3-64
 * from libxxhash.  A record's checksum is seeded with the hash of its own
 * header, so a page that lands in the wrong place fails as surely as a
 * flipped byte of data.
 */
#ifndef LM_STREAM_CHECKSUM_H
#define LM_STREAM_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/* XXH3_state_t as a complete type, so a state can live on the stack. */
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
#if defined(__x86_64__)
/* Debian's libxxhash picks SSE2, AVX2 or AVX-512 at run time through its
 * _dispatch entry points; this header maps the plain names onto them. */
#include <xxh_x86dispatch.h>
#endif

/* The seed of a record: the hash of its header bytes. */
static inline uint64_t lm_csum_seed(const void *hdr, size_t len)
{
    return XXH3_64bits(hdr, len);
}

/* One contiguous run of data under a seed. */
static inline uint64_t lm_csum(const void *data, size_t len, uint64_t seed)
{
    return XXH3_64bits_withSeed(data, len, seed);
}

/* One page's checksum in a table of them: seeded with its index, so a
 * page placed elsewhere fails too. */
static inline uint64_t lm_csum_page(const void *page, size_t page_size, uint64_t index)
{
    return XXH3_64bits_withSeed(page, page_size, index);
}

/* Data in pieces (a multifd packet's runs): reset, update, digest. */
typedef XXH3_state_t lm_csum_state;

static inline void lm_csum_begin(lm_csum_state *st, uint64_t seed)
{
    XXH3_INITSTATE(st); /* a state on the stack: its seed field must not be garbage */
    XXH3_64bits_reset_withSeed(st, seed);
}

static inline void lm_csum_update(lm_csum_state *st, const void *data, size_t len)
{
    XXH3_64bits_update(st, data, len);
}

static inline uint64_t lm_csum_end(const lm_csum_state *st)
{
    return XXH3_64bits_digest(st);
}

#endif
