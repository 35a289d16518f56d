#include <stdlib.h>

#include "common/bitmap.h"

uint64_t *lm_bitmap_new(uint64_t nbits)
{
    return calloc(LM_BITMAP_WORDS(nbits) ? LM_BITMAP_WORDS(nbits) : 1, sizeof(uint64_t));
}

void lm_bitmap_free(uint64_t *map)
{
    free(map);
}

/* Apply op to every word touched by [start, start+n) with the right mask. */
#define FOR_EACH_WORD_MASK(start, n, body)                                       \
    do {                                                                         \
        uint64_t s_ = (start), e_ = (start) + (n);                               \
        while (s_ < e_) {                                                        \
            uint64_t w_ = s_ / 64, lo_ = s_ % 64;                                \
            uint64_t hi_ = (e_ - w_ * 64) >= 64 ? 64 : (e_ - w_ * 64);           \
            uint64_t mask = (hi_ == 64 ? ~0ull : ((1ull << hi_) - 1)) &          \
                            ~((1ull << lo_) - 1);                                \
            uint64_t word = w_;                                                  \
            body;                                                                \
            s_ = (w_ + 1) * 64;                                                  \
        }                                                                        \
    } while (0)

void lm_bitmap_set_range(uint64_t *map, uint64_t start, uint64_t n)
{
    FOR_EACH_WORD_MASK(start, n, map[word] |= mask);
}

void lm_bitmap_clear_range(uint64_t *map, uint64_t start, uint64_t n)
{
    FOR_EACH_WORD_MASK(start, n, map[word] &= ~mask);
}

/* Orders: see bitmap.h. */
uint64_t lm_bitmap_set_range_atomic(uint64_t *map, uint64_t start, uint64_t n)
{
    uint64_t changed = 0;
    FOR_EACH_WORD_MASK(start, n, {
        uint64_t old = __atomic_fetch_or(&map[word], mask, __ATOMIC_ACQ_REL);
        changed += (uint64_t)__builtin_popcountll(~old & mask);
    });
    return changed;
}

uint64_t lm_bitmap_clear_range_atomic(uint64_t *map, uint64_t start, uint64_t n)
{
    uint64_t changed = 0;
    FOR_EACH_WORD_MASK(start, n, {
        uint64_t old = __atomic_fetch_and(&map[word], ~mask, __ATOMIC_ACQ_REL);
        changed += (uint64_t)__builtin_popcountll(old & mask);
    });
    return changed;
}

bool lm_bitmap_all_set_atomic(const uint64_t *map, uint64_t start, uint64_t n)
{
    bool all = true;
    FOR_EACH_WORD_MASK(start, n, {
        if (all && (__atomic_load_n(&map[word], __ATOMIC_ACQUIRE) & mask) != mask) {
            all = false;
        }
    });
    return all;
}

/* A word of map: a plain read for a single owner, an acquire load where
 * other threads may set or clear bits meanwhile (orders: see bitmap.h). */
static inline uint64_t load_word(const uint64_t *map, uint64_t w, bool shared)
{
    return shared ? __atomic_load_n(&map[w], __ATOMIC_ACQUIRE) : map[w];
}

/* First bit at or after `from` whose value XOR flip is 1 (flip: 0 finds
 * set bits, ~0 finds clear ones), or nbits if none. */
static uint64_t find_bit(const uint64_t *map, uint64_t nbits, uint64_t from, uint64_t flip,
                         bool shared)
{
    if (from >= nbits) {
        return nbits;
    }
    uint64_t w = from / 64;
    uint64_t word = (load_word(map, w, shared) ^ flip) & (~0ull << (from % 64));
    uint64_t nwords = LM_BITMAP_WORDS(nbits);
    for (;;) {
        if (word) {
            uint64_t bit = w * 64 + (uint64_t)__builtin_ctzll(word);
            return bit < nbits ? bit : nbits;
        }
        if (++w >= nwords) {
            return nbits;
        }
        word = load_word(map, w, shared) ^ flip;
    }
}

uint64_t lm_bitmap_next_set(const uint64_t *map, uint64_t nbits, uint64_t from)
{
    return find_bit(map, nbits, from, 0, false);
}

uint64_t lm_bitmap_next_set_atomic(const uint64_t *map, uint64_t nbits, uint64_t from)
{
    return find_bit(map, nbits, from, 0, true);
}

uint64_t lm_bitmap_next_clear(const uint64_t *map, uint64_t nbits, uint64_t from)
{
    return find_bit(map, nbits, from, ~0ull, false);
}

uint64_t lm_bitmap_count(const uint64_t *map, uint64_t nbits)
{
    uint64_t n = 0, full = nbits / 64;
    for (uint64_t w = 0; w < full; w++) {
        n += (uint64_t)__builtin_popcountll(map[w]);
    }
    if (nbits % 64) {
        n += (uint64_t)__builtin_popcountll(map[full] & ((1ull << (nbits % 64)) - 1));
    }
    return n;
}

uint64_t lm_bitmap_count_runs(const uint64_t *map, uint64_t nbits)
{
    uint64_t runs = 0, carry = 0, nwords = LM_BITMAP_WORDS(nbits);
    for (uint64_t w = 0; w < nwords; w++) {
        uint64_t v = map[w];
        if (w == nwords - 1 && nbits % 64) {
            v &= (1ull << (nbits % 64)) - 1;
        }
        /* A run starts at each set bit whose lower neighbour is clear. */
        runs += (uint64_t)__builtin_popcountll(v & ~((v << 1) | carry));
        carry = v >> 63;
    }
    return runs;
}

uint64_t lm_bitmap_drain_into(uint64_t *dst, uint64_t *src, uint64_t nbits)
{
    uint64_t added = 0, nwords = LM_BITMAP_WORDS(nbits);
    for (uint64_t w = 0; w < nwords; w++) {
        if (!__atomic_load_n(&src[w], __ATOMIC_RELAXED)) {
            continue;
        }
        uint64_t bits = __atomic_exchange_n(&src[w], 0, __ATOMIC_ACQUIRE);
        added += (uint64_t)__builtin_popcountll(bits & ~dst[w]);
        dst[w] |= bits;
    }
    return added;
}
