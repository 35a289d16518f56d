/*
 * Page bitmaps (src/common/bitmap.h): single bits, ranges across word
 * boundaries, searches at the edges, counting, draining, and concurrent
 * atomic setters.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/bitmap.h"

/* Reference check: every bit in [0, nbits) equals expect(bit). */
static uint64_t naive_count(const uint64_t *map, uint64_t nbits)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < nbits; i++) {
        n += lm_bitmap_test(map, i);
    }
    return n;
}

static void test_set_clear_test(void **state)
{
    (void)state;
    const uint64_t nbits = 200;
    uint64_t *m = lm_bitmap_new(nbits);
    assert_non_null(m);
    for (uint64_t i = 0; i < nbits; i++) {
        assert_false(lm_bitmap_test(m, i));
    }
    const uint64_t bits[] = { 0, 1, 63, 64, 65, 127, 128, 199 };
    for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
        lm_bitmap_set(m, bits[i]);
        assert_true(lm_bitmap_test(m, bits[i]));
    }
    assert_int_equal(lm_bitmap_count(m, nbits), 8);
    assert_false(lm_bitmap_test(m, 2));
    assert_false(lm_bitmap_test(m, 62));
    assert_false(lm_bitmap_test(m, 66));
    /* Setting twice is idempotent. */
    lm_bitmap_set(m, 64);
    assert_int_equal(lm_bitmap_count(m, nbits), 8);
    lm_bitmap_clear(m, 64);
    assert_false(lm_bitmap_test(m, 64));
    assert_true(lm_bitmap_test(m, 63));
    assert_true(lm_bitmap_test(m, 65));
    lm_bitmap_clear(m, 64); /* clearing a clear bit */
    assert_int_equal(lm_bitmap_count(m, nbits), 7);
    lm_bitmap_set_atomic(m, 100);
    lm_bitmap_set_atomic(m, 100);
    assert_true(lm_bitmap_test(m, 100));
    assert_int_equal(lm_bitmap_count(m, nbits), 8);
    lm_bitmap_free(m);

    /* A zero-bit map is still a valid (freeable) allocation. */
    uint64_t *z = lm_bitmap_new(0);
    assert_non_null(z);
    assert_int_equal(lm_bitmap_count(z, 0), 0);
    assert_int_equal(lm_bitmap_next_set(z, 0, 0), 0);
    assert_int_equal(lm_bitmap_next_clear(z, 0, 0), 0);
    lm_bitmap_free(z);
}

/* set_range / clear_range over many (start, len) pairs against a naive model. */
static void test_ranges(void **state)
{
    (void)state;
    const uint64_t nbits = 300;
    const uint64_t starts[] = { 0, 1, 5, 63, 64, 65, 100, 127, 128, 191, 192, 250, 299 };
    const uint64_t lens[] = { 0, 1, 2, 3, 59, 63, 64, 65, 100, 128, 129, 200 };
    uint64_t *m = lm_bitmap_new(nbits);
    assert_non_null(m);
    for (size_t si = 0; si < sizeof(starts) / sizeof(starts[0]); si++) {
        for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
            uint64_t s = starts[si], n = lens[li];
            if (s + n > nbits) {
                continue;
            }
            /* Set on an empty map. */
            memset(m, 0, LM_BITMAP_WORDS(nbits) * 8);
            lm_bitmap_set_range(m, s, n);
            for (uint64_t b = 0; b < nbits; b++) {
                bool want = b >= s && b < s + n;
                if (lm_bitmap_test(m, b) != want) {
                    fail_msg("set_range(%llu, %llu): bit %llu is %d",
                             (unsigned long long)s, (unsigned long long)n,
                             (unsigned long long)b, !want);
                }
            }
            /* Bits past nbits in the last word stay clear. */
            for (uint64_t b = nbits; b < LM_BITMAP_WORDS(nbits) * 64; b++) {
                assert_false(lm_bitmap_test(m, b));
            }
            assert_int_equal(lm_bitmap_count(m, nbits), n);

            /* The atomic variant agrees. */
            memset(m, 0, LM_BITMAP_WORDS(nbits) * 8);
            lm_bitmap_set_range_atomic(m, s, n);
            assert_int_equal(lm_bitmap_count(m, nbits), n);
            assert_int_equal(naive_count(m, nbits), n);
            if (n) {
                assert_true(lm_bitmap_test(m, s));
                assert_true(lm_bitmap_test(m, s + n - 1));
            }

            /* Clear on a full map. */
            lm_bitmap_set_range(m, 0, nbits);
            assert_int_equal(lm_bitmap_count(m, nbits), nbits);
            lm_bitmap_clear_range(m, s, n);
            for (uint64_t b = 0; b < nbits; b++) {
                bool want = !(b >= s && b < s + n);
                if (lm_bitmap_test(m, b) != want) {
                    fail_msg("clear_range(%llu, %llu): bit %llu is %d",
                             (unsigned long long)s, (unsigned long long)n,
                             (unsigned long long)b, !want);
                }
            }
            assert_int_equal(lm_bitmap_count(m, nbits), nbits - n);

            /* The atomic variant agrees. */
            lm_bitmap_set_range(m, 0, nbits);
            lm_bitmap_clear_range_atomic(m, s, n);
            assert_int_equal(lm_bitmap_count(m, nbits), nbits - n);
            assert_int_equal(naive_count(m, nbits), nbits - n);
            if (n) {
                assert_false(lm_bitmap_test(m, s));
                assert_false(lm_bitmap_test(m, s + n - 1));
            }
        }
    }
    /* Whole map, then clear all of it. */
    memset(m, 0, LM_BITMAP_WORDS(nbits) * 8);
    lm_bitmap_set_range(m, 0, nbits);
    assert_int_equal(lm_bitmap_count(m, nbits), nbits);
    assert_int_equal(naive_count(m, nbits), nbits);
    lm_bitmap_clear_range(m, 0, nbits);
    assert_int_equal(lm_bitmap_count(m, nbits), 0);
    lm_bitmap_free(m);

    /* Exactly whole words. */
    uint64_t *w = lm_bitmap_new(256);
    lm_bitmap_set_range(w, 0, 256);
    for (int i = 0; i < 4; i++) {
        assert_true(w[i] == ~0ull);
    }
    lm_bitmap_clear_range(w, 64, 128);
    assert_true(w[0] == ~0ull && w[1] == 0 && w[2] == 0 && w[3] == ~0ull);
    lm_bitmap_free(w);
}

static void test_next_set_clear(void **state)
{
    (void)state;
    const uint64_t nbits = 130; /* not a multiple of 64: 3 words, 2 bits in the last */
    uint64_t *m = lm_bitmap_new(nbits);
    assert_non_null(m);

    /* Empty map. */
    assert_int_equal(lm_bitmap_next_set(m, nbits, 0), nbits);
    assert_int_equal(lm_bitmap_next_set(m, nbits, 129), nbits);
    assert_int_equal(lm_bitmap_next_clear(m, nbits, 0), 0);
    assert_int_equal(lm_bitmap_next_clear(m, nbits, 64), 64);
    assert_int_equal(lm_bitmap_next_clear(m, nbits, 129), 129);
    /* from >= nbits. */
    assert_int_equal(lm_bitmap_next_set(m, nbits, nbits), nbits);
    assert_int_equal(lm_bitmap_next_set(m, nbits, nbits + 1000), nbits);
    assert_int_equal(lm_bitmap_next_clear(m, nbits, nbits), nbits);
    assert_int_equal(lm_bitmap_next_clear(m, nbits, UINT64_MAX), nbits);

    lm_bitmap_set(m, 0);
    lm_bitmap_set(m, 63);
    lm_bitmap_set(m, 64);
    lm_bitmap_set(m, 129);
    assert_int_equal(lm_bitmap_next_set(m, nbits, 0), 0);
    assert_int_equal(lm_bitmap_next_set(m, nbits, 1), 63);
    assert_int_equal(lm_bitmap_next_set(m, nbits, 63), 63);
    assert_int_equal(lm_bitmap_next_set(m, nbits, 64), 64);
    assert_int_equal(lm_bitmap_next_set(m, nbits, 65), 129);
    assert_int_equal(lm_bitmap_next_set(m, nbits, 129), 129);
    assert_int_equal(lm_bitmap_next_clear(m, nbits, 0), 1);
    assert_int_equal(lm_bitmap_next_clear(m, nbits, 63), 65);
    assert_int_equal(lm_bitmap_next_clear(m, nbits, 129), nbits);

    /* Bits beyond nbits in the last word are never reported. */
    lm_bitmap_clear(m, 129);
    m[2] |= 1ull << 5; /* bit 133: outside the map */
    assert_int_equal(lm_bitmap_next_set(m, nbits, 65), nbits);
    assert_int_equal(lm_bitmap_count(m, nbits), 3);

    /* Full map: no clear bit, even though the padding bits are clear. */
    memset(m, 0, LM_BITMAP_WORDS(nbits) * 8);
    lm_bitmap_set_range(m, 0, nbits);
    assert_int_equal(lm_bitmap_next_clear(m, nbits, 0), nbits);
    assert_int_equal(lm_bitmap_next_clear(m, nbits, 128), nbits);
    assert_int_equal(lm_bitmap_next_set(m, nbits, 128), 128);
    lm_bitmap_clear(m, 128);
    assert_int_equal(lm_bitmap_next_clear(m, nbits, 0), 128);
    assert_int_equal(lm_bitmap_next_set(m, nbits, 128), 129);

    /* Walk every set bit of a sparse pattern. */
    memset(m, 0, LM_BITMAP_WORDS(nbits) * 8);
    uint64_t expect = 0;
    for (uint64_t b = 3; b < nbits; b += 7) {
        lm_bitmap_set(m, b);
        expect++;
    }
    uint64_t seen = 0, prev = 0;
    for (uint64_t b = lm_bitmap_next_set(m, nbits, 0); b < nbits;
         b = lm_bitmap_next_set(m, nbits, b + 1)) {
        assert_int_equal(b % 7, 3);
        assert_true(seen == 0 || b > prev);
        prev = b;
        seen++;
    }
    assert_int_equal(seen, expect);
    lm_bitmap_free(m);

    /* nbits exactly a multiple of 64. */
    uint64_t *f = lm_bitmap_new(128);
    lm_bitmap_set_range(f, 0, 128);
    assert_int_equal(lm_bitmap_next_clear(f, 128, 0), 128);
    lm_bitmap_clear_range(f, 0, 128);
    assert_int_equal(lm_bitmap_next_set(f, 128, 0), 128);
    lm_bitmap_set(f, 127);
    assert_int_equal(lm_bitmap_next_set(f, 128, 0), 127);
    lm_bitmap_free(f);
}

static void test_count(void **state)
{
    (void)state;
    const uint64_t nbits = 1000;
    uint64_t *m = lm_bitmap_new(nbits);
    uint64_t n = 0;
    for (uint64_t b = 0; b < nbits; b += 3) {
        lm_bitmap_set(m, b);
        n++;
    }
    assert_int_equal(lm_bitmap_count(m, nbits), n);
    assert_int_equal(naive_count(m, nbits), n);
    /* Counting a prefix that ends mid-word. */
    assert_int_equal(lm_bitmap_count(m, 10), 4);  /* 0 3 6 9 */
    assert_int_equal(lm_bitmap_count(m, 64), 22); /* 0..63 step 3 */
    assert_int_equal(lm_bitmap_count(m, 65), 22);
    assert_int_equal(lm_bitmap_count(m, 67), 23);
    assert_int_equal(lm_bitmap_count(m, 0), 0);
    lm_bitmap_free(m);
}

/* Runs counted word by word against a bit-by-bit walk, across word
 * boundaries and a last partial word. */
static void test_count_runs(void **state)
{
    (void)state;
    const uint64_t nbits = 300;
    uint64_t *m = lm_bitmap_new(nbits);
    assert_int_equal(lm_bitmap_count_runs(m, nbits), 0);
    lm_bitmap_set_range(m, 60, 10); /* one run over a word boundary */
    lm_bitmap_set(m, 5);
    lm_bitmap_set(m, 7);
    lm_bitmap_set_range(m, 127, 2); /* ends one word, starts the next */
    lm_bitmap_set_range(m, 290, 10); /* up to the last bit */
    assert_int_equal(lm_bitmap_count_runs(m, nbits), 5);
    /* A prefix that ends inside a run counts it; bits past nbits do not. */
    assert_int_equal(lm_bitmap_count_runs(m, 65), 3);
    assert_int_equal(lm_bitmap_count_runs(m, 6), 1);
    lm_bitmap_set_range(m, 0, nbits);
    assert_int_equal(lm_bitmap_count_runs(m, nbits), 1);
    for (uint64_t b = 0; b < nbits; b += 2) {
        lm_bitmap_clear(m, b);
    }
    assert_int_equal(lm_bitmap_count_runs(m, nbits), nbits / 2);
    lm_bitmap_free(m);
}

static void test_drain_into(void **state)
{
    (void)state;
    const uint64_t nbits = 200;
    uint64_t *dst = lm_bitmap_new(nbits);
    uint64_t *src = lm_bitmap_new(nbits);
    lm_bitmap_set(dst, 1);
    lm_bitmap_set(dst, 70);
    lm_bitmap_set(dst, 199);
    lm_bitmap_set(src, 1);   /* already in dst */
    lm_bitmap_set(src, 2);   /* new */
    lm_bitmap_set(src, 64);  /* new */
    lm_bitmap_set(src, 199); /* already in dst */
    lm_bitmap_set(src, 150); /* new */
    assert_int_equal(lm_bitmap_drain_into(dst, src, nbits), 3);
    assert_int_equal(lm_bitmap_count(src, nbits), 0);
    for (size_t w = 0; w < LM_BITMAP_WORDS(nbits); w++) {
        assert_true(src[w] == 0);
    }
    assert_int_equal(lm_bitmap_count(dst, nbits), 6);
    assert_true(lm_bitmap_test(dst, 1) && lm_bitmap_test(dst, 2) && lm_bitmap_test(dst, 64) &&
                lm_bitmap_test(dst, 70) && lm_bitmap_test(dst, 150) && lm_bitmap_test(dst, 199));
    /* Draining an empty source adds nothing. */
    assert_int_equal(lm_bitmap_drain_into(dst, src, nbits), 0);
    assert_int_equal(lm_bitmap_count(dst, nbits), 6);
    /* Draining the same bits again adds nothing new, still clears the source. */
    lm_bitmap_set_range(src, 0, nbits);
    assert_int_equal(lm_bitmap_drain_into(dst, src, nbits), nbits - 6);
    assert_int_equal(lm_bitmap_count(src, nbits), 0);
    assert_int_equal(lm_bitmap_count(dst, nbits), nbits);
    lm_bitmap_set_range(src, 10, 100);
    assert_int_equal(lm_bitmap_drain_into(dst, src, nbits), 0);
    assert_int_equal(lm_bitmap_count(src, nbits), 0);
    lm_bitmap_free(dst);
    lm_bitmap_free(src);
}

#define CONC_BITS (64u * 4096u)

typedef struct setter_arg {
    uint64_t *map;
    unsigned parity;
    bool use_range;
} setter_arg;

static void *setter(void *opaque)
{
    setter_arg *a = opaque;
    for (int round = 0; round < 4; round++) {
        for (uint64_t b = a->parity; b < CONC_BITS; b += 2) {
            if (a->use_range) {
                lm_bitmap_set_range_atomic(a->map, b, 1);
            } else {
                lm_bitmap_set_atomic(a->map, b);
            }
        }
    }
    return NULL;
}

/* Two threads set interleaved bits of the same words: no update is lost. */
static void test_set_atomic_concurrent(void **state)
{
    (void)state;
    for (int variant = 0; variant < 2; variant++) {
        for (int iter = 0; iter < 20; iter++) {
            uint64_t *m = lm_bitmap_new(CONC_BITS);
            assert_non_null(m);
            setter_arg a = { m, 0, variant == 1 }, b = { m, 1, variant == 1 };
            pthread_t ta, tb;
            assert_int_equal(pthread_create(&ta, NULL, setter, &a), 0);
            assert_int_equal(pthread_create(&tb, NULL, setter, &b), 0);
            pthread_join(ta, NULL);
            pthread_join(tb, NULL);
            assert_int_equal(lm_bitmap_count(m, CONC_BITS), CONC_BITS);
            assert_int_equal(lm_bitmap_next_clear(m, CONC_BITS, 0), CONC_BITS);
            lm_bitmap_free(m);
        }
    }
}

typedef struct drain_arg {
    uint64_t *src;
    uint64_t nbits;
} drain_arg;

static void *drain_setter(void *opaque)
{
    drain_arg *a = opaque;
    for (uint64_t b = 0; b < a->nbits; b++) {
        lm_bitmap_set_atomic(a->src, b);
    }
    return NULL;
}

/* A drainer racing an atomic setter: every bit set ends up in dst exactly
 * once (drain_into's count adds up to nbits). */
static void test_drain_concurrent(void **state)
{
    (void)state;
    const uint64_t nbits = 64 * 2048;
    uint64_t *src = lm_bitmap_new(nbits), *dst = lm_bitmap_new(nbits);
    drain_arg a = { src, nbits };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, drain_setter, &a), 0);
    uint64_t total = 0;
    for (int i = 0; i < 1000; i++) {
        total += lm_bitmap_drain_into(dst, src, nbits);
    }
    pthread_join(t, NULL);
    total += lm_bitmap_drain_into(dst, src, nbits);
    assert_int_equal(total, nbits);
    assert_int_equal(lm_bitmap_count(dst, nbits), nbits);
    assert_int_equal(lm_bitmap_count(src, nbits), 0);
    lm_bitmap_free(src);
    lm_bitmap_free(dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_clear_test),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_next_set_clear),
        cmocka_unit_test(test_count),
        cmocka_unit_test(test_count_runs),
        cmocka_unit_test(test_drain_into),
        cmocka_unit_test(test_set_atomic_concurrent),
        cmocka_unit_test(test_drain_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
