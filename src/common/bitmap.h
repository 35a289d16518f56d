/*
 * Page bitmaps: one bit per page, in 64-bit words.
 *
 * The plain calls are for a single owner.  The *_atomic family is the one
 * way threads share a bitmap (a RAM block's received, dirty and present
 * maps, postcopy's request maps): any thread may set, clear, test or drain
 * bits of the same word at once.
 *
 * Memory orders: the bits hand pages between threads in both directions.
 * A thread that writes a page and then sets its bit publishes the page
 * (release); a thread that learns from a bit, or from the count a set or
 * clear returns, that a page is its to read or place acts on the page
 * afterwards (acquire).  So every read-modify-write here is ACQ_REL and
 * every test an ACQUIRE load.  (On x86-64 and arm64 an ACQ_REL RMW is the
 * same instruction as a RELEASE one: the stronger order costs nothing.)
 * The one exception is lm_bitmap_set_atomic's first, relaxed peek: a bit
 * already set needs no write, and a page written again after its bit was
 * drained finds the bit clear and takes the ACQ_REL path.
 */
#ifndef LM_COMMON_BITMAP_H
#define LM_COMMON_BITMAP_H

#include <stdbool.h>
#include <stdint.h>

#define LM_BITS_PER_WORD 64u
#define LM_BITMAP_WORDS(nbits) (((nbits) + LM_BITS_PER_WORD - 1) / LM_BITS_PER_WORD)

uint64_t *lm_bitmap_new(uint64_t nbits); /* zeroed; NULL on ENOMEM */
void lm_bitmap_free(uint64_t *map);

static inline bool lm_bitmap_test(const uint64_t *map, uint64_t bit)
{
    return (map[bit / 64] >> (bit % 64)) & 1;
}

static inline void lm_bitmap_set(uint64_t *map, uint64_t bit)
{
    map[bit / 64] |= 1ull << (bit % 64);
}

static inline void lm_bitmap_clear(uint64_t *map, uint64_t bit)
{
    map[bit / 64] &= ~(1ull << (bit % 64));
}

static inline void lm_bitmap_set_atomic(uint64_t *map, uint64_t bit)
{
    uint64_t mask = 1ull << (bit % 64);
    /* Skip the locked RMW when the bit is already set: the common case for
     * a page written again and again. */
    if (!(__atomic_load_n(&map[bit / 64], __ATOMIC_RELAXED) & mask)) {
        __atomic_fetch_or(&map[bit / 64], mask, __ATOMIC_ACQ_REL);
    }
}

static inline bool lm_bitmap_test_atomic(const uint64_t *map, uint64_t bit)
{
    return (__atomic_load_n(&map[bit / 64], __ATOMIC_ACQUIRE) >> (bit % 64)) & 1;
}

/* Set/clear bits [start, start+n). */
void lm_bitmap_set_range(uint64_t *map, uint64_t start, uint64_t n);
void lm_bitmap_clear_range(uint64_t *map, uint64_t start, uint64_t n);
/* Atomic variants: set / clear [start, start+n) and return how many of
 * those bits changed (were clear / were set). */
uint64_t lm_bitmap_set_range_atomic(uint64_t *map, uint64_t start, uint64_t n);
uint64_t lm_bitmap_clear_range_atomic(uint64_t *map, uint64_t start, uint64_t n);
/* Every bit of [start, start+n) set? */
bool lm_bitmap_all_set_atomic(const uint64_t *map, uint64_t start, uint64_t n);
/* First set bit at or after `from`, or nbits if none. */
uint64_t lm_bitmap_next_set(const uint64_t *map, uint64_t nbits, uint64_t from);
/* The same where other threads set or clear bits meanwhile: each word is
 * an acquire load (a bit that changes during the walk may be missed or
 * seen, as with any snapshot). */
uint64_t lm_bitmap_next_set_atomic(const uint64_t *map, uint64_t nbits, uint64_t from);
/* First clear bit at or after `from`, or nbits if none. */
uint64_t lm_bitmap_next_clear(const uint64_t *map, uint64_t nbits, uint64_t from);
uint64_t lm_bitmap_count(const uint64_t *map, uint64_t nbits);
/* Runs of set bits (maximal stretches of consecutive set bits). */
uint64_t lm_bitmap_count_runs(const uint64_t *map, uint64_t nbits);
/* dst |= src, atomically taking src's words (src ends cleared). Returns
 * the number of bits newly set in dst. */
uint64_t lm_bitmap_drain_into(uint64_t *dst, uint64_t *src, uint64_t nbits);

#endif
