/*
 * The migration timeline's ring (core/history.h): bounded, newest kept,
 * oldest first, dropped records counted, reset per migration.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "core/history.h"

static void add_passes(lm_history *h, uint64_t first, uint64_t n)
{
    for (uint64_t i = first; i < first + n; i++) {
        lm_pass_record r = { .pass = i, .start_us = i * 10, .duration_us = 10, .pages_sent = i };
        lm_history_add(h, &r);
    }
}

static void test_ring_keeps_the_newest(void **state)
{
    (void)state;
    lm_history h;
    lm_history_init(&h);
    lm_pass_record *out = calloc(LM_HISTORY_MAX + 8, sizeof(*out));
    assert_non_null(out);
    lm_history_info info;
    /* Nothing before the first migration. */
    assert_int_equal(lm_history_read(&h, out, LM_HISTORY_MAX, &info), 0);

    assert_int_equal(lm_history_reset(&h, 1000000), 0);
    add_passes(&h, 1, 3);
    assert_int_equal(lm_history_read(&h, out, LM_HISTORY_MAX, &info), 3);
    assert_int_equal(out[0].pass, 1);
    assert_int_equal(out[2].pass, 3);
    assert_int_equal(info.dropped, 0);
    assert_int_equal(info.capacity, LM_HISTORY_MAX);

    /* Past the bound: the oldest go, counted, the order is kept. */
    add_passes(&h, 4, LM_HISTORY_MAX + 100 - 3);
    size_t n = lm_history_read(&h, out, LM_HISTORY_MAX + 8, &info);
    assert_int_equal(n, LM_HISTORY_MAX);
    assert_int_equal(info.dropped, 100);
    assert_int_equal(out[0].pass, 101);
    for (size_t i = 1; i < n; i++) {
        assert_int_equal(out[i].pass, out[i - 1].pass + 1);
    }
    assert_int_equal(out[n - 1].pass, LM_HISTORY_MAX + 100);
    /* A smaller buffer gets the newest. */
    assert_int_equal(lm_history_read(&h, out, 2, NULL), 2);
    assert_int_equal(out[0].pass, LM_HISTORY_MAX + 99);
    assert_int_equal(out[1].pass, LM_HISTORY_MAX + 100);

    /* The switchover and the end, in µs since the start. */
    lm_history_switchover(&h, 1000000 + 2500000);
    lm_history_end(&h, 1000000 + 3000000);
    lm_history_read(&h, out, 1, &info);
    assert_true(info.has_switchover && info.has_end);
    assert_int_equal(info.switchover_us, 2500);
    assert_int_equal(info.end_us, 3000);

    /* The next migration starts afresh. */
    assert_int_equal(lm_history_reset(&h, 9000000), 0);
    assert_int_equal(lm_history_read(&h, out, LM_HISTORY_MAX, &info), 0);
    assert_false(info.has_switchover || info.has_end);
    assert_int_equal(info.dropped, 0);
    add_passes(&h, 1, 1);
    assert_int_equal(lm_history_read(&h, out, LM_HISTORY_MAX, NULL), 1);
    assert_int_equal(out[0].pass, 1);

    free(out);
    lm_history_destroy(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ring_keeps_the_newest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
