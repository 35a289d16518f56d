/* Hot groups of the uffd-wp dirty tracker (src/ram/dirty.h,
 * x-dirty-hot-groups): a group the guest keeps rewriting is left writable
 * between syncs, yet every page written between two syncs must still be
 * reported by the second one, with the behaviour on and off; a group that
 * cools down is protected again and then reports only what is written.
 * With LM_DIRTY_PROTECT_ON_SEND (pages protected when the sender claims
 * them), a simulated migration with a guest writing between the sender's
 * runs ends with the destination equal to RAM byte for byte, hot groups on
 * and off, and retired by the migration's review (stall, throttle). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "common/bitmap.h"
#include "ram/dirty.h"
#include "ram/ramblock.h"

#define GROUP 512u          /* pages per hot group (2 MiB) */
#define NGROUPS 4u
#define NPAGES (GROUP * NGROUPS)
#define ROUNDS 24

struct fixture {
    uint8_t *ram;
    lm_ram_block *b;
    lm_ram_block *blocks[1]; /* the tracker keeps this array, not a copy */
    lm_dirty_tracker *t;
};

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static bool setup_flags(struct fixture *f, bool hot, unsigned flags)
{
    f->ram = mmap(NULL, (size_t)NPAGES * 4096, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(f->ram != MAP_FAILED);
    for (uint64_t p = 0; p < NPAGES; p++) {
        f->ram[p * 4096] = 1; /* populated, as a running guest's RAM */
    }
    lm_error err = LM_ERROR_INIT;
    lm_ram_desc d = { .name = "ram0", .host = f->ram, .size = (uint64_t)NPAGES * 4096,
                      .page_size = 4096, .fd = -1 };
    assert_int_equal(lm_ram_block_new(&d, 0, &f->b, &err), 0);
    assert_int_equal(lm_ram_block_prepare_source(f->b, &err), 0);
    f->blocks[0] = f->b;
    if (lm_dirty_tracker_start_flags(LM_DIRTY_TRACKER_UFFD_WP, f->blocks, 1, flags, &f->t, &err) < 0) {
        printf("uffd-wp tracking unavailable here (%s): skipped\n", err.msg);
        lm_ram_block_free(f->b);
        munmap(f->ram, (size_t)NPAGES * 4096);
        return false;
    }
    assert_int_equal(lm_dirty_tracker_set_hot_groups(f->t, hot, &err), 0);
    return true;
}

static bool setup(struct fixture *f, bool hot)
{
    return setup_flags(f, hot, 0);
}

static void teardown(struct fixture *f)
{
    lm_dirty_tracker_stop(f->t);
    lm_ram_block_free(f->b);
    munmap(f->ram, (size_t)NPAGES * 4096);
}

static void write_page(struct fixture *f, uint64_t p, uint64_t *written)
{
    f->ram[p * 4096 + 64 + (rng() % 3000)] ^= 0x5a;
    lm_bitmap_set(written, p);
}

/* Each round writes: group 0 whole (hot soon), group 1 a few pages (never
 * dense), group 2 whole for the first 8 rounds and then nothing (cools
 * down), group 3 whole on even rounds only (never dense twice in a row). */
static void run_rounds(bool hot)
{
    struct fixture f;
    if (!setup(&f, hot)) {
        skip();
    }
    uint64_t *written = lm_bitmap_new(NPAGES);
    assert_non_null(written);
    uint64_t newly;
    lm_error err = LM_ERROR_INIT;
    uint64_t max_hot = 0;
    for (int r = 0; r < ROUNDS; r++) {
        lm_bitmap_clear_range(f.b->dirty, 0, NPAGES);
        lm_bitmap_clear_range(written, 0, NPAGES);
        for (uint64_t p = 0; p < GROUP; p++) {
            write_page(&f, p, written);
        }
        for (int k = 0; k < 5; k++) {
            write_page(&f, GROUP + rng() % GROUP, written);
        }
        if (r < 8) {
            for (uint64_t p = 2 * GROUP; p < 3 * GROUP; p++) {
                write_page(&f, p, written);
            }
        }
        if (r % 2 == 0) {
            for (uint64_t p = 3 * GROUP; p < 4 * GROUP; p++) {
                write_page(&f, p, written);
            }
        }
        assert_int_equal(lm_dirty_tracker_sync(f.t, &newly, &err), 0);
        /* Never a miss: every page written since the last sync is reported. */
        for (uint64_t p = 0; p < NPAGES; p++) {
            if (lm_bitmap_test(written, p) && !lm_bitmap_test(f.b->dirty, p)) {
                fail_msg("round %d (hot groups %s): page %llu written but not reported", r,
                         hot ? "on" : "off", (unsigned long long)p);
            }
        }
        /* Groups that were never hot report exactly what was written. */
        for (uint64_t p = GROUP; p < 2 * GROUP; p++) {
            assert_int_equal(lm_bitmap_test(f.b->dirty, p), lm_bitmap_test(written, p));
        }
        for (uint64_t p = 3 * GROUP; p < 4 * GROUP; p++) {
            assert_int_equal(lm_bitmap_test(f.b->dirty, p), lm_bitmap_test(written, p));
        }
        if (!hot) {
            for (uint64_t p = 0; p < NPAGES; p++) {
                assert_int_equal(lm_bitmap_test(f.b->dirty, p), lm_bitmap_test(written, p));
            }
        }
        uint64_t h = lm_dirty_tracker_hot_pages(f.t);
        max_hot = h > max_hot ? h : max_hot;
        if (r == ROUNDS - 1) {
            /* Group 2 cooled down 16 syncs ago: protected again since, so
             * it reports nothing now; group 0 is still rewritten. */
            for (uint64_t p = 2 * GROUP; p < 3 * GROUP; p++) {
                assert_false(lm_bitmap_test(f.b->dirty, p));
            }
        }
    }
    if (hot) {
        assert_true(max_hot >= 2 * GROUP); /* groups 0 and 2 went hot */
        /* Turning it off protects everything again: a clean sync later
         * reports only new writes. */
        assert_int_equal(lm_dirty_tracker_set_hot_groups(f.t, false, &err), 0);
        assert_int_equal(lm_dirty_tracker_sync(f.t, &newly, &err), 0);
        lm_bitmap_clear_range(f.b->dirty, 0, NPAGES);
        lm_bitmap_clear_range(written, 0, NPAGES);
        write_page(&f, 7, written);
        assert_int_equal(lm_dirty_tracker_sync(f.t, &newly, &err), 0);
        assert_int_equal(lm_bitmap_count(f.b->dirty, NPAGES), 1);
        assert_true(lm_bitmap_test(f.b->dirty, 7));
    } else {
        assert_int_equal(max_hot, 0);
    }
    lm_bitmap_free(written);
    teardown(&f);
}

static void test_hot_groups_on(void **state)
{
    (void)state;
    run_rounds(true);
}

static void test_hot_groups_off(void **state)
{
    (void)state;
    run_rounds(false);
}

/* A migration's sender with LM_DIRTY_PROTECT_ON_SEND: each pass claims the
 * dirty pages in runs (clear, protect, copy to the "destination") while
 * the guest writes at random between the runs, ahead of and behind the
 * sender; the migration's review runs after each sync.  After a last sync
 * with the guest stopped, the destination must equal RAM byte for byte, and
 * with hot groups off every sync must report every page written since it
 * was last sent and nothing that was not written since the last sync
 * (pages are protected a 2 MiB window at a time, so a page written just
 * before its send in the same pass may be reported). */
enum review { REVIEW_NONE, REVIEW_STALL, REVIEW_THROTTLE_AT_4 };

static void send_passes(bool hot, enum review review)
{
    struct fixture f;
    if (!setup_flags(&f, hot, LM_DIRTY_PROTECT_ON_SEND)) {
        skip();
    }
    uint8_t *dst = calloc(NPAGES, 4096);
    uint64_t *since_sent = lm_bitmap_new(NPAGES); /* written after its last send */
    uint64_t *since_sync = lm_bitmap_new(NPAGES); /* written since the last sync */
    assert_non_null(dst);
    assert_non_null(since_sent);
    assert_non_null(since_sync);
    lm_bitmap_set_range(f.b->dirty, 0, NPAGES); /* the first pass sends all */
    lm_error err = LM_ERROR_INIT;
    uint64_t newly;
    bool retired = false;
    for (int pass = 0; pass < ROUNDS; pass++) {
        bool last = pass == ROUNDS - 1; /* the guest is stopped */
        uint64_t p = 0;
        while ((p = lm_bitmap_next_set(f.b->dirty, NPAGES, p)) < NPAGES) {
            uint64_t q = lm_bitmap_next_clear(f.b->dirty, NPAGES, p);
            q = q - p > 96 ? p + 96 : q;
            lm_bitmap_clear_range(f.b->dirty, p, q - p);
            lm_dirty_tracker_protect(f.t, f.b, p, q);
            lm_bitmap_clear_range(since_sent, p, q - p);
            memcpy(dst + p * 4096, f.ram + p * 4096, (q - p) * 4096);
            /* The guest: group 0 rewritten densely (turns hot), the rest
             * at random, some of it ahead of the sender. */
            for (int k = 0; !last && k < 24; k++) {
                uint64_t w = k < 16 ? rng() % GROUP : rng() % NPAGES;
                f.ram[w * 4096 + 64 + rng() % 3000] ^= 0x5a;
                lm_bitmap_set(since_sent, w);
                lm_bitmap_set(since_sync, w);
            }
            p = q;
        }
        assert_int_equal(lm_dirty_tracker_sync(f.t, &newly, &err), 0);
        for (uint64_t pg = 0; pg < NPAGES; pg++) {
            if (lm_bitmap_test(since_sent, pg) && !lm_bitmap_test(f.b->dirty, pg)) {
                fail_msg("pass %d: page %llu written after it was sent but not reported", pass,
                         (unsigned long long)pg);
            }
            if (!hot && lm_bitmap_test(f.b->dirty, pg) && !lm_bitmap_test(since_sync, pg)) {
                fail_msg("pass %d: page %llu reported but not written since the last sync", pass,
                         (unsigned long long)pg);
            }
        }
        lm_bitmap_clear_range(since_sync, 0, NPAGES);
        if (review == REVIEW_STALL || (review == REVIEW_THROTTLE_AT_4 && pass >= 4 && !last)) {
            bool throttled = review == REVIEW_THROTTLE_AT_4 && pass >= 4;
            if (lm_dirty_tracker_review_hot_groups(f.t, throttled)) {
                assert_true(hot);
                assert_false(retired);
                retired = true;
                if (review == REVIEW_THROTTLE_AT_4) {
                    assert_int_equal(pass, 4);
                }
            }
        }
        if (retired) {
            assert_int_equal(lm_dirty_tracker_hot_pages(f.t), 0);
        }
        if (last) {
            /* The stop-copy: the rest goes, then the destination is RAM. */
            p = 0;
            while ((p = lm_bitmap_next_set(f.b->dirty, NPAGES, p)) < NPAGES) {
                memcpy(dst + p * 4096, f.ram + p * 4096, 4096);
                p++;
            }
        }
    }
    /* With hot groups on, group 0 is dense in every pass: it turned hot, and
     * (with a review) the remaining stopped shrinking, so it was retired. */
    if (hot && review != REVIEW_NONE) {
        assert_true(retired);
    }
    assert_memory_equal(dst, f.ram, (size_t)NPAGES * 4096);
    lm_bitmap_free(since_sent);
    lm_bitmap_free(since_sync);
    free(dst);
    teardown(&f);
}

static void test_protect_on_send(void **state)
{
    (void)state;
    send_passes(false, REVIEW_NONE);
}

static void test_protect_on_send_hot(void **state)
{
    (void)state;
    send_passes(true, REVIEW_NONE);
}

static void test_protect_on_send_hot_retired_stall(void **state)
{
    (void)state;
    send_passes(true, REVIEW_STALL);
}

static void test_protect_on_send_hot_retired_throttle(void **state)
{
    (void)state;
    send_passes(true, REVIEW_THROTTLE_AT_4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hot_groups_on),
        cmocka_unit_test(test_hot_groups_off),
        cmocka_unit_test(test_protect_on_send),
        cmocka_unit_test(test_protect_on_send_hot),
        cmocka_unit_test(test_protect_on_send_hot_retired_stall),
        cmocka_unit_test(test_protect_on_send_hot_retired_throttle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
