/* Hot groups of the uffd-wp dirty tracker (src/ram/dirty.h,
 * x-dirty-hot-groups): a group the guest keeps rewriting is left writable
 * between syncs, yet every page written between two syncs must still be
 * reported by the second one, with the behaviour on and off; a group that
 * cools down is protected again and then reports only what is written. */
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

static bool setup(struct fixture *f, bool hot)
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
    if (lm_dirty_tracker_start(LM_DIRTY_TRACKER_UFFD_WP, f->blocks, 1, &f->t, &err) < 0) {
        printf("uffd-wp tracking unavailable here (%s): skipped\n", err.msg);
        lm_ram_block_free(f->b);
        munmap(f->ram, (size_t)NPAGES * 4096);
        return false;
    }
    assert_int_equal(lm_dirty_tracker_set_hot_groups(f->t, hot, &err), 0);
    return true;
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hot_groups_on),
        cmocka_unit_test(test_hot_groups_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
