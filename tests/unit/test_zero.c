/* Zero-page detection (src/ram/zero.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ram/zero.h"

static uint8_t *alloc_zero(size_t len)
{
    uint8_t *p = aligned_alloc(64, len);
    assert_non_null(p);
    memset(p, 0, len);
    return p;
}

static void check_size(size_t len)
{
    uint8_t *p = alloc_zero(len);
    assert_true(lm_buffer_is_zero(p, len));
    const size_t pos[] = { 0, 1, 7, 8, 56, 63, 64, 65, 127, 128, len / 2 - 1, len / 2,
                           len / 2 + 1, len - 65, len - 64, len - 9, len - 8, len - 2, len - 1 };
    for (size_t i = 0; i < sizeof(pos) / sizeof(pos[0]); i++) {
        if (pos[i] >= len) {
            continue; /* len - 65 etc. wrap for small buffers */
        }
        for (int v = 0; v < 3; v++) {
            static const uint8_t vals[] = { 0x01, 0x80, 0xff };
            p[pos[i]] = vals[v];
            if (lm_buffer_is_zero(p, len)) {
                fail_msg("len %zu: byte %zu = 0x%02x reported as zero", len, pos[i], vals[v]);
            }
            p[pos[i]] = 0;
        }
    }
    assert_true(lm_buffer_is_zero(p, len));
    /* A non-zero byte just past len does not count. */
    if (len >= 128) {
        p[len - 64] = 1;
        assert_true(lm_buffer_is_zero(p, len - 64));
        assert_false(lm_buffer_is_zero(p, len));
        p[len - 64] = 0;
    }
    free(p);
}

static void test_4k(void **state)
{
    (void)state;
    check_size(4096);
}

static void test_2m(void **state)
{
    (void)state;
    check_size(2u << 20);
}

static void test_small(void **state)
{
    (void)state;
    check_size(64);
    check_size(128);
    check_size(192);
}

/* Every byte position of a 4 KiB page. */
static void test_every_position_4k(void **state)
{
    (void)state;
    const size_t len = 4096;
    uint8_t *p = alloc_zero(len);
    for (size_t i = 0; i < len; i++) {
        p[i] = 0x10;
        if (lm_buffer_is_zero(p, len)) {
            fail_msg("byte %zu non-zero, reported as zero", i);
        }
        p[i] = 0;
    }
    assert_true(lm_buffer_is_zero(p, len));
    free(p);
}

/* A 2 MiB buffer mostly full of data. */
static void test_data(void **state)
{
    (void)state;
    const size_t len = 2u << 20;
    uint8_t *p = alloc_zero(len);
    memset(p, 0xa5, len);
    assert_false(lm_buffer_is_zero(p, len));
    memset(p, 0, len - 1);
    assert_false(lm_buffer_is_zero(p, len));
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_4k),
        cmocka_unit_test(test_2m),
        cmocka_unit_test(test_small),
        cmocka_unit_test(test_every_position_4k),
        cmocka_unit_test(test_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
